//! W3C trace context (`traceparent`, `tracestate`) on internal calls, and the spans of those
//! calls with OpenTelemetry's RPC semantic-convention attributes (`rpc.system`, `rpc.service`,
//! `rpc.method`, `server.address`, `network.peer.address`).
//!
//! Invariant: an outgoing call carries the context of the span it is made under only when that
//! span belongs to a trace (an OpenTelemetry span with a valid context); Raft traffic, which
//! runs under no exported span, carries none and starts no trace.
//! Invariant: the propagator is the process's global one (`pmsd` installs the W3C
//! `TraceContextPropagator`); without it (tests, other embedders) nothing is injected or
//! extracted.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// `rpc.service` of the internal service (its protobuf full name).
pub const RPC_SERVICE: &str = "pms.internal.v1.Internal";

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Adds the current span's trace context to `metadata`, when the span is part of a trace.
pub(crate) fn inject_current(metadata: &mut MetadataMap) {
    let context = Span::current().context();
    if !context.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// The span of an outgoing internal call to `address` (`HOST:PORT`).
pub(crate) fn client_span(method: &'static str, address: &str) -> Span {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
    // OpenTelemetry's `server.port` is an integer; tracing-opentelemetry exports `u64` as text.
    let port = port.parse::<i64>().ok();
    tracing::info_span!(
        "grpc_client",
        otel.name = %format!("{RPC_SERVICE}/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = RPC_SERVICE,
        rpc.method = method,
        server.address = host,
        server.port = port,
    )
}

/// The span of an incoming internal call, child of the caller's span when the call carries a
/// trace context.
pub(crate) fn server_span(
    method: &'static str,
    metadata: &MetadataMap,
    peer: Option<std::net::SocketAddr>,
) -> Span {
    let span = tracing::info_span!(
        "grpc_server",
        otel.name = %format!("{RPC_SERVICE}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = RPC_SERVICE,
        rpc.method = method,
        network.peer.address = tracing::field::Empty,
        network.peer.port = tracing::field::Empty,
    );
    if let Some(peer) = peer {
        span.record("network.peer.address", peer.ip().to_string());
        span.record("network.peer.port", i64::from(peer.port()));
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(metadata))
    });
    if parent.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer, where there is no trace to join.
        let _ = span.set_parent(parent);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_carries_traceparent_both_ways() {
        let mut metadata = MetadataMap::new();
        MetadataInjector(&mut metadata).set(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        );
        let extractor = MetadataExtractor(&metadata);
        assert_eq!(
            extractor.get("traceparent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(extractor.keys(), vec!["traceparent"]);
        // Without a span in a trace, nothing is added.
        let mut empty = MetadataMap::new();
        inject_current(&mut empty);
        assert!(empty.is_empty());
    }
}
