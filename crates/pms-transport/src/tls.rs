//! Loads the certs dir (CockroachDB's layout: `ca.crt`, `node.crt`/`node.key`,
//! `client.<name>.crt`/`client.<name>.key`) into tonic TLS configurations, and checks who a peer
//! is. Invariant: servers always require a client certificate signed by `ca.crt`
//! (`client_auth_optional` stays false), and clients trust only `ca.crt`, never system roots.
//! Invariant: the gRPC port presents `node.crt`, never the public SIP listener's `sip.crt`; a
//! client presenting `sip.crt` is refused in the handshake (webpki requires the client-auth
//! usage, which a SIP certificate lacks) and, were it to get through, by the services' common
//! name checks (`node`, `admin`).
//! Invariant: the gRPC server does its own TLS ([`tls_incoming`]) with a rustls config whose
//! certificate is a [`ReloadableCertificate`], so a node that reloaded `node.crt` presents the
//! new one on the next connection; every handshake has a deadline and at most
//! [`GRPC_HANDSHAKES_IN_FLIGHT_MAX`] run at once, so slow clients cannot stall the port.
//! Invariant: node-to-node clients present the node certificate in use when their connection
//! is made (see `PeerClients`, which rebuilds its channels when the certificate changes).
//! Invariant: every gRPC client (node-to-node, admin) accepts a server only if its certificate
//! chains to `ca.crt`, names the host called, and has the common name `node`
//! ([`GrpcTlsConnector`]): no other certificate of the cluster CA stands in for a node.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures::Stream;
use hyper_util::rt::TokioIo;
use pms_crypto::{PemIdentity, ReloadableCertificate};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::server::TlsStream;
use tonic::transport::{Endpoint, Uri};

use crate::TransportError;

/// Most TLS handshakes the gRPC port runs at once; further connections wait in the listen
/// backlog until one finishes.
pub const GRPC_HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// Longest a TLS handshake on the gRPC port may take before the connection is dropped.
pub const GRPC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (EMFILE and friends) instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// The ALPN protocol gRPC speaks.
const ALPN_HTTP2: &[u8] = b"h2";

/// The client certificate name (and common name) the admin API accepts.
pub const ADMIN_CLIENT_NAME: &str = "admin";

fn certificates_error(certs_dir: &Path, reason: impl std::fmt::Display) -> TransportError {
    TransportError::Certificates {
        certs_dir: certs_dir.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The TLS configuration of a node's gRPC server: it presents the node certificate `node`
/// holds at each handshake (`node.crt`/`node.key`, replaced on reload), requires client
/// certificates and verifies them against `ca.crt`, and speaks HTTP/2 (ALPN `h2`). Shared by
/// every service on the node's gRPC port; each service checks the peer's common name itself.
pub fn server_tls_config(
    certs_dir: &Path,
    node: Arc<ReloadableCertificate>,
) -> Result<Arc<ServerConfig>, TransportError> {
    let config = pms_crypto::mtls_server_config_with(certs_dir, node)
        .map_err(|e| certificates_error(certs_dir, e))?;
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![ALPN_HTTP2.to_vec()];
    Ok(Arc::new(config))
}

/// The node certificate in `certs_dir`, for a server or client that does not reload it.
pub(crate) fn load_node_certificate(
    certs_dir: &Path,
) -> Result<Arc<ReloadableCertificate>, TransportError> {
    pms_crypto::ReloadableCertificate::load(pms_crypto::CertificateRole::Node, certs_dir)
        .map(Arc::new)
        .map_err(|e| certificates_error(certs_dir, e))
}

/// The TLS connections of `listener`, handshaken with `config`, for tonic's
/// `serve_with_incoming*` (its `Connected` impl for rustls streams keeps
/// `Request::peer_certs` working). Handshakes run concurrently, each bounded by
/// [`GRPC_HANDSHAKE_TIMEOUT`], at most [`GRPC_HANDSHAKES_IN_FLIGHT_MAX`] at once; a failed one
/// drops its connection and is logged at debug level (rustls refused the peer).
pub(crate) fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    metrics: Option<Arc<pms_types::metrics::Metrics>>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send {
    let acceptor = TlsAcceptor::from(config);
    let handshakes: JoinSet<Option<TlsStream<TcpStream>>> = JoinSet::new();
    futures::stream::unfold(
        (listener, acceptor, handshakes, metrics),
        |(listener, acceptor, mut handshakes, metrics)| async move {
            loop {
                tokio::select! {
                    accepted = listener.accept(), if handshakes.len() < GRPC_HANDSHAKES_IN_FLIGHT_MAX => {
                        match accepted {
                            Ok((stream, peer)) => {
                                let _ = stream.set_nodelay(true);
                                let acceptor = acceptor.clone();
                                let metrics = metrics.clone();
                                handshakes.spawn(async move {
                                    let (result, stream) = match tokio::time::timeout(GRPC_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                        Ok(Ok(stream)) => ("ok", Some(stream)),
                                        Ok(Err(error)) => {
                                            tracing::debug!(%peer, %error, "gRPC TLS handshake failed");
                                            ("failed", None)
                                        }
                                        Err(_) => {
                                            tracing::debug!(%peer, "gRPC TLS handshake timed out");
                                            ("timeout", None)
                                        }
                                    };
                                    if let Some(metrics) = &metrics {
                                        metrics.tls_handshakes_total.with(["grpc", result]).inc();
                                    }
                                    stream
                                });
                            }
                            Err(error) => {
                                tracing::warn!(%error, "gRPC accept failed");
                                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                            }
                        }
                    }
                    Some(done) = handshakes.join_next() => {
                        if let Ok(Some(stream)) = done {
                            return Some((Ok(stream), (listener, acceptor, handshakes, metrics)));
                        }
                    }
                }
            }
        },
    )
}

/// A gRPC endpoint for `address` (`HOST:PORT`) whose connections [`GrpcTlsConnector`] makes:
/// the endpoint itself speaks plain `http://` to the connector, which does TCP and TLS.
pub(crate) fn grpc_endpoint(address: &str) -> Result<Endpoint, TransportError> {
    Endpoint::from_shared(format!("http://{address}")).map_err(|source| TransportError::Connect {
        address: address.to_owned(),
        source,
    })
}

/// Makes the connections of a gRPC channel: TCP (no delay), then TLS with
/// [`pms_crypto::grpc_client_config`], which presents this side's certificate, trusts only
/// `ca.crt` and accepts only a node's certificate (tonic's own TLS cannot check the common
/// name). The endpoint's connect timeout bounds both steps.
#[derive(Clone)]
pub(crate) struct GrpcTlsConnector {
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl GrpcTlsConnector {
    /// For a client presenting `identity` to the server at `address`, whose certificate must
    /// name its host.
    pub(crate) fn new(
        certs_dir: &Path,
        identity: &PemIdentity,
        address: &str,
    ) -> Result<Self, TransportError> {
        let host = host_of(address)?;
        let server_name =
            ServerName::try_from(host.to_owned()).map_err(|_| TransportError::InvalidAddress {
                address: address.to_owned(),
                reason: "the host is not a DNS name or an IP address".to_owned(),
            })?;
        let config = pms_crypto::grpc_client_config(certs_dir, identity)
            .map_err(|error| certificates_error(certs_dir, error))?;
        Ok(GrpcTlsConnector {
            tls: tokio_rustls::TlsConnector::from(config),
            server_name,
        })
    }
}

impl tower_service::Service<Uri> for GrpcTlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| std::io::Error::other(format!("no HOST:PORT in {uri}")))?;
            let tcp = TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.tls.connect(connector.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// The common name of the verified peer certificate of a request, if there is one.
pub(crate) fn peer_common_name<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    pms_crypto::peer_common_name(leaf.as_ref())
}

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6) and returns the host without brackets, which is
/// what the server certificate's SAN must match.
pub(crate) fn host_of(address: &str) -> Result<&str, TransportError> {
    let invalid = |reason: &str| TransportError::InvalidAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected HOST:PORT"))?;
    port.parse::<u16>()
        .map_err(|_| invalid("port is not a number in 0..=65535"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(invalid("empty host"));
    }
    if host.contains(':') && !address.starts_with('[') {
        return Err(invalid("write IPv6 addresses as [ADDRESS]:PORT"));
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_splits_names_v4_and_bracketed_v6() {
        assert_eq!(host_of("127.0.0.1:50051").unwrap(), "127.0.0.1");
        assert_eq!(host_of("localhost:1").unwrap(), "localhost");
        assert_eq!(host_of("[::1]:50051").unwrap(), "::1");
        assert!(host_of("::1:50051").is_err());
        assert!(host_of("localhost").is_err());
        assert!(host_of("localhost:http").is_err());
        assert!(host_of(":50051").is_err());
    }
}
