//! Loads the certs dir (CockroachDB's layout: `ca.crt`, `node.crt`/`node.key`,
//! `client.<name>.crt`/`client.<name>.key`) into tonic TLS configurations, and checks who a peer
//! is. Invariant: servers always require a client certificate signed by `ca.crt`
//! (`client_auth_optional` stays false), and clients trust only `ca.crt`, never system roots.
//! Invariant: the gRPC port presents `node.crt`, never the public SIP listener's `sip.crt`; a
//! client presenting `sip.crt` is refused in the handshake (webpki requires the client-auth
//! usage, which a SIP certificate lacks) and, were it to get through, by the services' common
//! name checks (`node`, `admin`).

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::TransportError;

/// The client certificate name (and common name) the admin API accepts.
pub const ADMIN_CLIENT_NAME: &str = "admin";

fn certificates_error(certs_dir: &Path, reason: impl std::fmt::Display) -> TransportError {
    TransportError::Certificates {
        certs_dir: certs_dir.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn load_ca(certs_dir: &Path) -> Result<Certificate, TransportError> {
    let ca_pem =
        pms_crypto::load_ca_pem(certs_dir).map_err(|e| certificates_error(certs_dir, e))?;
    Ok(Certificate::from_pem(ca_pem))
}

/// The TLS configuration of a node's gRPC server: identity `node.crt`/`node.key`, client
/// certificates required and verified against `ca.crt`. Shared by every service on the node's
/// gRPC port; each service checks the peer's common name itself.
pub fn server_tls_config(certs_dir: &Path) -> Result<ServerTlsConfig, TransportError> {
    let identity =
        pms_crypto::load_node_identity(certs_dir).map_err(|e| certificates_error(certs_dir, e))?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(&identity.cert, &identity.key))
        .client_ca_root(load_ca(certs_dir)?)
        .client_auth_optional(false))
}

/// The TLS configuration of a client presenting `client.<client_name>.crt` and trusting only
/// `ca.crt`. `server_name` must match a SAN of the server's node certificate.
pub(crate) fn client_tls_config(
    certs_dir: &Path,
    client_name: &str,
    server_name: &str,
) -> Result<ClientTlsConfig, TransportError> {
    let identity = pms_crypto::load_client_identity(certs_dir, client_name)
        .map_err(|e| certificates_error(certs_dir, e))?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(load_ca(certs_dir)?)
        .identity(Identity::from_pem(&identity.cert, &identity.key))
        .domain_name(server_name))
}

/// The TLS configuration of a node calling another node: it presents `node.crt`/`node.key`
/// (which carries the client-auth usage) and trusts only `ca.crt`.
pub(crate) fn node_client_tls_config(
    certs_dir: &Path,
    server_name: &str,
) -> Result<ClientTlsConfig, TransportError> {
    let identity =
        pms_crypto::load_node_identity(certs_dir).map_err(|e| certificates_error(certs_dir, e))?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(load_ca(certs_dir)?)
        .identity(Identity::from_pem(&identity.cert, &identity.key))
        .domain_name(server_name))
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
