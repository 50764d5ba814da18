//! Tracing setup for `pmsd`: logs on stderr (human-readable, or one JSON object per line with
//! `--log-format json`, carrying `trace_id` and `span_id` inside a traced span), and — only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set — spans exported over OTLP/gRPC (tonic) with the
//! resource `service.name = "pmsd"`, `service.version` and `service.instance.id` (the node id).
//!
//! What is traced: the spans that declare an `otel.kind` field (a SIP transaction, the routing
//! and commit of its proposal, internal gRPC calls on both ends, a delivery attempt and the push
//! to the device), and events of PMS's own crates from `info` inside them. Spans without it
//! (a mailbox actor's lifetime, the expiry sweep every 200 ms, openraft's) are logged but never
//! exported, so an idle node exports nothing. Trace context crosses nodes as W3C
//! `traceparent`/`tracestate` in gRPC metadata (the global propagator set here).
//!
//! Invariant: without the endpoint variable nothing is exported, no exporter is built and no
//! network connection is attempted (with `--log-format json` a tracer provider without any
//! exporter still gives spans their ids).
//! Invariant: with it, [`init`] must run inside a tokio runtime (the tonic channel needs the
//! reactor); outside one it returns an error instead of panicking.
//! Invariant: spans are only guaranteed to leave the process once [`TelemetryGuard::shutdown`]
//! (or its `Drop`) has run: it flushes the batch processor and shuts the provider down. Both
//! block the calling thread until the export finishes (bounded by [`OTLP_EXPORT_TIMEOUT`]), so
//! call them on a multi-thread runtime or from `spawn_blocking`, never on a current-thread
//! runtime's only thread.

use std::time::Duration;

use std::sync::{Arc, OnceLock};

use anyhow::{Context as _, bail};
use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The variable that turns span export on (standard OpenTelemetry name), e.g.
/// `http://127.0.0.1:4317`.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `service.name` of the exported resource.
pub const SERVICE_NAME: &str = "pmsd";
/// Longest one OTLP export call may take (each retry included) before it is abandoned.
pub const OTLP_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The field a span declares to be exported (and to carry trace ids): OpenTelemetry's span kind.
pub const TRACED_SPAN_FIELD: &str = "otel.kind";

/// Keeps the span exporter alive; flushes and shuts it down on [`shutdown`](Self::shutdown) or drop.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    exporting: bool,
}

impl TelemetryGuard {
    /// Whether spans are being exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.exporting && self.tracer_provider.is_some()
    }

    /// Exports every span ended so far. Blocks (see the module invariants).
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "shutdown flushes in the binary; tests flush directly"
        )
    )]
    pub fn force_flush(&self) -> anyhow::Result<()> {
        if let Some(provider) = &self.tracer_provider {
            provider
                .force_flush()
                .map_err(|error| anyhow::anyhow!("flushing spans: {error}"))?;
        }
        Ok(())
    }

    /// Flushes and shuts the tracer provider down; later calls do nothing. Blocks (see the
    /// module invariants).
    pub fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(provider) = self.tracer_provider.take() {
            let flushed = provider.force_flush();
            let shut_down = provider.shutdown();
            flushed.map_err(|error| anyhow::anyhow!("flushing spans: {error}"))?;
            shut_down
                .map_err(|error| anyhow::anyhow!("shutting the tracer provider down: {error}"))?;
        }
        Ok(())
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            // The subscriber may already be gone; stderr is the one place left to say it.
            eprintln!("pmsd: telemetry shutdown: {error:#}");
        }
    }
}

/// Installs the global tracing subscriber: fmt to stderr filtered by `log_filter`
/// (`RUST_LOG` syntax), plus OTLP span export when [`OTLP_ENDPOINT_ENV`] is set and non-empty,
/// and the W3C trace-context propagator. `node` is the resource's `service.instance.id`.
/// Call once, inside the tokio runtime; keep the guard until exit.
pub fn init(log_filter: &str, format: LogFormat, node: u64) -> anyhow::Result<TelemetryGuard> {
    let endpoint = std::env::var(OTLP_ENDPOINT_ENV)
        .ok()
        .filter(|value| !value.trim().is_empty());
    let (dispatch, guard) = build_dispatch(
        log_filter,
        format,
        endpoint.as_deref(),
        node,
        std::io::stderr,
    )?;
    dispatch
        .try_init()
        .context("installing the global tracing subscriber")?;
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    if let Some(endpoint) = &endpoint {
        tracing::info!(%endpoint, "exporting spans over OTLP/gRPC");
    }
    Ok(guard)
}

/// Builds the subscriber without installing it (tests install it per thread), writing logs to
/// `writer`.
fn build_dispatch<W>(
    log_filter: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    node: u64,
    writer: W,
) -> anyhow::Result<(Dispatch, TelemetryGuard)>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(log_filter)
        .map_err(|error| anyhow::anyhow!("invalid log filter {log_filter:?}: {error}"))?;
    let resource = Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", node.to_string()),
        ])
        .build();
    let tracer_provider = match (otlp_endpoint, format) {
        (Some(endpoint), _) => Some(build_tracer_provider(endpoint, resource)?),
        // Ids for the JSON lines; nothing leaves the process.
        (None, LogFormat::Json) => {
            Some(SdkTracerProvider::builder().with_resource(resource).build())
        }
        (None, LogFormat::Text) => None,
    };
    let otel_layer = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SERVICE_NAME))
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                if metadata.is_span() {
                    metadata.fields().field(TRACED_SPAN_FIELD).is_some()
                } else {
                    *metadata.level() <= tracing::Level::INFO
                        && metadata.target().starts_with("pms")
                }
            }))
    });
    let dispatch_cell: Arc<OnceLock<WeakDispatch>> = Arc::new(OnceLock::new());
    let fmt_layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt_layer = match format {
        LogFormat::Text => fmt_layer
            // Colour codes only on a terminal, never in a log file.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => fmt_layer
            .json()
            .event_format(JsonWithTraceIds {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true),
                dispatch: dispatch_cell.clone(),
            })
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer);
    let dispatch = Dispatch::new(subscriber);
    let _ = dispatch_cell.set(dispatch.downgrade());
    Ok((
        dispatch,
        TelemetryGuard {
            tracer_provider,
            exporting: otlp_endpoint.is_some(),
        },
    ))
}

/// tracing-subscriber's JSON line, plus `trace_id` and `span_id` of the innermost traced span
/// the event is in (the W3C hex forms, as exported).
struct JsonWithTraceIds {
    inner: Format<Json>,
    /// The subscriber this formatter is part of (set once it is built): the OpenTelemetry
    /// context of a span is read through it. Weak, so the subscriber does not keep itself.
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl JsonWithTraceIds {
    fn trace_ids<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
    where
        S: Subscriber + for<'lookup> LookupSpan<'lookup>,
        N: for<'writer> FormatFields<'writer> + 'static,
    {
        let dispatch = self.dispatch.get()?.upgrade()?;
        let scope = ctx.event_scope()?;
        for span in scope {
            let Some(context) = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)
            else {
                continue;
            };
            let span_context = context.span().span_context().clone();
            if span_context.is_valid() {
                return Some((
                    span_context.trace_id().to_string(),
                    span_context.span_id().to_string(),
                ));
            }
        }
        None
    }
}

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let object = line.trim_end().strip_suffix('}');
        match (self.trace_ids(ctx), object) {
            (Some((trace_id, span_id)), Some(object)) if !object.trim_end().ends_with('{') => {
                writeln!(
                    writer,
                    "{object},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
                )
            }
            _ => writer.write_str(&line),
        }
    }
}

fn build_tracer_provider(endpoint: &str, resource: Resource) -> anyhow::Result<SdkTracerProvider> {
    if tokio::runtime::Handle::try_current().is_err() {
        bail!(
            "{OTLP_ENDPOINT_ENV} is set: telemetry::init must be called inside the tokio runtime"
        );
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(OTLP_EXPORT_TIMEOUT)
        .build()
        .with_context(|| format!("building the OTLP span exporter for {endpoint:?}"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn without_endpoint_nothing_is_exported_and_no_runtime_is_needed() {
        let (dispatch, mut guard) =
            build_dispatch("info", LogFormat::Text, None, 1, std::io::stderr).expect("builds");
        assert!(!guard.is_exporting());
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!("unexported").in_scope(|| tracing::info!("logged to stderr"));
        });
        guard.force_flush().expect("nothing to flush");
        guard.shutdown().expect("nothing to shut down");
    }

    #[test]
    fn init_installs_the_global_subscriber_once() {
        // OTEL_EXPORTER_OTLP_ENDPOINT is not set in the test environment; if it is, this test
        // would need a runtime and an exporter, which the next tests cover.
        if std::env::var_os(OTLP_ENDPOINT_ENV).is_some() {
            println!("note: {OTLP_ENDPOINT_ENV} is set; skipping the global init test");
            return;
        }
        let guard = init("warn", LogFormat::Text, 1).expect("first init succeeds");
        assert!(!guard.is_exporting());
        let error =
            init("warn", LogFormat::Text, 1).expect_err("a second global subscriber is refused");
        assert!(
            format!("{error:#}").contains("global tracing subscriber"),
            "{error:#}"
        );
    }

    #[test]
    fn bad_filter_and_missing_runtime_are_errors() {
        let Err(error) = build_dispatch("info,=[[[", LogFormat::Text, None, 1, std::io::stderr)
        else {
            panic!("invalid filter accepted");
        };
        assert!(
            format!("{error:#}").contains("invalid log filter"),
            "{error:#}"
        );
        let Err(error) = build_dispatch(
            "info",
            LogFormat::Text,
            Some("http://127.0.0.1:4317"),
            1,
            std::io::stderr,
        ) else {
            panic!("a dispatch exporting without a runtime was built");
        };
        assert!(
            format!("{error:#}").contains("inside the tokio runtime"),
            "{error:#}"
        );
    }

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_ids_of_the_traced_span_they_are_in() {
        let captured = Captured::default();
        let writer = captured.clone();
        let (dispatch, guard) =
            build_dispatch("info", LogFormat::Json, None, 1, move || writer.clone())
                .expect("builds without a runtime");
        assert!(!guard.is_exporting(), "ids only, no exporter");
        let (outer_ids, inner_ids) = tracing::dispatcher::with_default(&dispatch, || {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            tracing::info!("outside any span");
            let traced = tracing::info_span!("traced", otel.kind = "server");
            let ids = |span: &tracing::Span| {
                let context = span.context();
                let span_context = context.span().span_context().clone();
                (
                    span_context.trace_id().to_string(),
                    span_context.span_id().to_string(),
                )
            };
            traced.in_scope(|| {
                tracing::info!("in the traced span");
                // An untraced span inside: its events carry the traced span's ids.
                tracing::info_span!("untraced").in_scope(|| tracing::info!("nested"));
                let child = tracing::info_span!("child", otel.kind = "internal");
                child.in_scope(|| tracing::info!("in the child"));
                (ids(&traced), ids(&child))
            })
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"))
            })
            .collect();
        let line = |message: &str| {
            lines
                .iter()
                .find(|line| line["message"] == message)
                .unwrap_or_else(|| panic!("no line {message:?} in {text}"))
                .clone()
        };
        let outside = line("outside any span");
        assert!(outside.get("trace_id").is_none(), "{outside}");
        for message in ["in the traced span", "nested"] {
            let inside = line(message);
            assert_eq!(inside["trace_id"], outer_ids.0.as_str(), "{inside}");
            assert_eq!(inside["span_id"], outer_ids.1.as_str(), "{inside}");
        }
        let child = line("in the child");
        assert_eq!(
            child["trace_id"],
            outer_ids.0.as_str(),
            "same trace: {child}"
        );
        assert_eq!(child["span_id"], inner_ids.1.as_str(), "{child}");
        assert_ne!(inner_ids.1, outer_ids.1);
        assert_eq!(outer_ids.0.len(), 32);
        assert_eq!(outer_ids.1.len(), 16);
    }

    /// Largest HTTP/2 frame payload the fake collector accepts, and most bytes it reads.
    const FRAME_BYTES_MAX: usize = 1 << 20;
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const ACK: u8 = 0x1;

    async fn write_frame(
        stream: &mut TcpStream,
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: &[u8],
    ) {
        let length = u32::try_from(payload.len())
            .expect("small frame")
            .to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags];
        frame.extend_from_slice(&stream_id.to_be_bytes());
        frame.extend_from_slice(payload);
        stream.write_all(&frame).await.expect("write frame");
    }

    /// A minimal OTLP/gRPC collector speaking just enough HTTP/2 (no HPACK decoding: the
    /// request body is protobuf, in which strings appear verbatim). Answers one Export call with
    /// an empty `ExportTraceServiceResponse` and returns the request body.
    async fn collect_one_export(listener: TcpListener) -> Vec<u8> {
        let (mut stream, _) = listener.accept().await.expect("exporter connects");
        let mut preface = [0u8; 24];
        stream.read_exact(&mut preface).await.expect("read preface");
        assert_eq!(
            &preface[..],
            H2_PREFACE,
            "the exporter speaks HTTP/2 (gRPC)"
        );
        write_frame(&mut stream, SETTINGS, 0, 0, &[]).await;
        let mut body = Vec::new();
        let mut answered = false;
        loop {
            let mut header = [0u8; 9];
            if let Err(error) = stream.read_exact(&mut header).await {
                // Once answered, the exporter closing its connection ends the exchange.
                // Closing first would reset the connection under the unread response.
                assert!(
                    answered,
                    "connection ended before the export completed: {error}"
                );
                return body;
            }
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            assert!(
                length <= FRAME_BYTES_MAX && body.len() <= FRAME_BYTES_MAX,
                "frame too large"
            );
            let (kind, flags) = (header[3], header[4]);
            let stream_id =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; length];
            stream
                .read_exact(&mut payload)
                .await
                .expect("read frame payload");
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    write_frame(&mut stream, SETTINGS, ACK, 0, &[]).await;
                }
                PING if flags & ACK == 0 => write_frame(&mut stream, PING, ACK, 0, &payload).await,
                DATA if !answered => {
                    body.extend_from_slice(&payload);
                    if flags & END_STREAM != 0 {
                        answered = true;
                        // :status 200 (static index 8); content-type (static name 31) literal.
                        let mut headers = vec![0x88, 0x0f, 0x10, 16];
                        headers.extend_from_slice(b"application/grpc");
                        write_frame(&mut stream, HEADERS, END_HEADERS, stream_id, &headers).await;
                        // One gRPC message: uncompressed, zero-length (an empty response).
                        write_frame(&mut stream, DATA, 0, stream_id, &[0, 0, 0, 0, 0]).await;
                        let mut trailers = vec![0x00, 11];
                        trailers.extend_from_slice(b"grpc-status");
                        trailers.extend_from_slice(&[1, b'0']);
                        let flags = END_HEADERS | END_STREAM;
                        write_frame(&mut stream, HEADERS, flags, stream_id, &trailers).await;
                    }
                }
                _ => {}
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_reach_an_otlp_collector() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("local addr"));
        let collector = tokio::spawn(collect_one_export(listener));

        let (dispatch, mut guard) =
            build_dispatch("info", LogFormat::Text, Some(&endpoint), 7, std::io::stderr)
                .expect("builds");
        assert!(guard.is_exporting());
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!("pms-test-span", otel.kind = "internal", user = "alice").in_scope(
                || {
                    tracing::info!("inside the exported span");
                },
            );
            // No `otel.kind`: logged, never exported.
            tracing::info_span!("pms-untraced-span").in_scope(|| tracing::info!("not exported"));
        });
        // Flushing blocks until the collector answered; keep it off the runtime's workers.
        let flushed = tokio::task::spawn_blocking(move || {
            let result = guard.shutdown();
            (guard, result)
        });
        let body = tokio::time::timeout(Duration::from_secs(30), collector)
            .await
            .expect("the collector received an export before the deadline")
            .expect("collector task");
        let (guard, result) = flushed.await.expect("shutdown task");
        result.expect("export acknowledged and provider shut down");
        assert!(!guard.is_exporting());

        let contains = |needle: &[u8]| body.windows(needle.len()).any(|window| window == needle);
        assert!(contains(b"pms-test-span"), "span name exported");
        assert!(
            contains(b"service.name") && contains(b"pmsd"),
            "resource exported"
        );
        assert!(contains(b"alice"), "span attribute exported");
        assert!(
            !contains(b"pms-untraced-span"),
            "a span without otel.kind is not exported"
        );
        assert!(
            contains(b"service.version") && contains(env!("CARGO_PKG_VERSION").as_bytes()),
            "service.version exported"
        );
        assert!(
            contains(b"service.instance.id"),
            "service.instance.id exported"
        );
    }
}
