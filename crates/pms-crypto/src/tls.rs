//! rustls configurations built from a certs dir, PEM identities for tonic, and reading
//! the common name of a peer certificate.
//!
//! Invariants:
//! - Invariant: every config is built with `builder_with_provider` and the ring provider,
//!   so no process-level `CryptoProvider` needs installing and aws-lc-rs is never used.
//! - Invariant: only TLS 1.3 and 1.2 are offered.
//! - Invariant: server-side mutual TLS accepts only client certificates chaining to the
//!   certs dir's `ca.crt`; the only config that skips server verification is
//!   [`insecure_client_config`], which still verifies the handshake signatures.
//! - Invariant: private-key PEM held in a [`PemIdentity`] is zeroized on drop.
//! - Invariant: the public SIP listener presents `sip.crt`/`sip.key` and nothing else; the
//!   node's cluster identity (`node.crt`/`node.key`) is presented only by the mutual-TLS
//!   configurations (the gRPC port and node-to-node calls).
//! - Invariant: servers present their certificate through a [`ReloadableCertificate`], so a
//!   replaced `node.crt` or `sip.crt` is what the next handshake shows; a handshake in
//!   progress keeps the certificate and key it started with.

use crate::certs::{
    CA_CERT_FILE, NODE_CERT_FILE, NODE_COMMON_NAME, NODE_KEY_FILE, client_cert_file,
    client_key_file, validate_client_name,
};
use crate::error::{Error, Result};
use crate::reloadable::{CertificateRole, ReloadableCertificate};
use std::fmt;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};
use zeroize::Zeroize;

const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and private key in PEM, as tonic's `Identity::from_pem` takes them.
#[derive(Clone)]
pub struct PemIdentity {
    /// Certificate chain, PEM.
    pub cert: String,
    /// Private key, PEM (zeroized on drop).
    pub key: String,
}

impl Drop for PemIdentity {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl fmt::Debug for PemIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemIdentity")
            .field("cert_len", &self.cert.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The node's identity (`node.crt`, `node.key`), checked to parse.
pub fn load_node_identity(certs_dir: &Path) -> Result<PemIdentity> {
    load_identity(
        &certs_dir.join(NODE_CERT_FILE),
        &certs_dir.join(NODE_KEY_FILE),
    )
}

/// A client's identity (`client.<name>.crt`, `client.<name>.key`), checked to parse.
pub fn load_client_identity(certs_dir: &Path, name: &str) -> Result<PemIdentity> {
    validate_client_name(name)?;
    load_identity(
        &certs_dir.join(client_cert_file(name)),
        &certs_dir.join(client_key_file(name)),
    )
}

/// The CA certificate PEM (`ca.crt`), checked to hold at least one certificate.
pub fn load_ca_pem(certs_dir: &Path) -> Result<String> {
    let path = certs_dir.join(CA_CERT_FILE);
    let pem = read_text(&path)?;
    certs_from_pem(&path, pem.as_bytes())?;
    Ok(pem)
}

/// SIP over TLS server: presents `sip.crt` (its whole chain, as a public CA issues it) with
/// `sip.key`, asks for no client certificate. Never `node.crt`: the public port must not hold
/// the key that authenticates a node to the cluster.
pub fn sip_server_config(certs_dir: &Path) -> Result<Arc<ServerConfig>> {
    sip_server_config_with(Arc::new(ReloadableCertificate::load(
        CertificateRole::Sip,
        certs_dir,
    )?))
}

/// [`sip_server_config`] presenting whatever `certificate` holds at each handshake (a node
/// reloads it on SIGHUP).
pub fn sip_server_config_with(
    certificate: Arc<ReloadableCertificate>,
) -> Result<Arc<ServerConfig>> {
    debug_assert_eq!(certificate.role(), CertificateRole::Sip);
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| tls_error("SIP server", source))?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    Ok(Arc::new(config))
}

/// Mutual-TLS server (node-to-node, admin API): presents `node.crt` and requires a
/// client certificate signed by `ca.crt`.
pub fn mtls_server_config(certs_dir: &Path) -> Result<Arc<ServerConfig>> {
    // The CA first: a certs dir without a usable CA is reported as such.
    let verifier = client_verifier(certs_dir)?;
    let certificate = ReloadableCertificate::load(CertificateRole::Node, certs_dir)?;
    mtls_server_config_from(verifier, Arc::new(certificate))
}

/// [`mtls_server_config`] presenting whatever `certificate` holds at each handshake (a node
/// reloads it on SIGHUP); client certificates are verified against `ca.crt` as read now.
pub fn mtls_server_config_with(
    certs_dir: &Path,
    certificate: Arc<ReloadableCertificate>,
) -> Result<Arc<ServerConfig>> {
    mtls_server_config_from(client_verifier(certs_dir)?, certificate)
}

fn mtls_server_config_from(
    verifier: Arc<dyn ClientCertVerifier>,
    certificate: Arc<ReloadableCertificate>,
) -> Result<Arc<ServerConfig>> {
    debug_assert_eq!(certificate.role(), CertificateRole::Node);
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| tls_error("mutual-TLS server", source))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    Ok(Arc::new(config))
}

/// Accepts client certificates that chain to the certs dir's `ca.crt` and carry the
/// client-auth usage.
pub(crate) fn client_verifier(certs_dir: &Path) -> Result<Arc<dyn ClientCertVerifier>> {
    let ca_path = certs_dir.join(CA_CERT_FILE);
    let roots = root_store(&ca_path)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|source| Error::ClientVerifier {
            path: ca_path,
            reason: source.to_string(),
        })
}

/// Client trusting the CA certificates in `ca_file`, presenting no certificate.
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>> {
    let roots = root_store(ca_file)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| tls_error("client", source))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Mutual-TLS client: trusts `ca.crt`, presents `client.<client_name>.crt`.
pub fn mtls_client_config(certs_dir: &Path, client_name: &str) -> Result<Arc<ClientConfig>> {
    validate_client_name(client_name)?;
    mtls_client_config_from(
        certs_dir,
        &certs_dir.join(client_cert_file(client_name)),
        &certs_dir.join(client_key_file(client_name)),
    )
}

/// Mutual-TLS client for node-to-node calls: trusts `ca.crt`, presents `node.crt`.
pub fn node_mtls_client_config(certs_dir: &Path) -> Result<Arc<ClientConfig>> {
    mtls_client_config_from(
        certs_dir,
        &certs_dir.join(NODE_CERT_FILE),
        &certs_dir.join(NODE_KEY_FILE),
    )
}

fn mtls_client_config_from(
    certs_dir: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ClientConfig>> {
    let roots = root_store(&certs_dir.join(CA_CERT_FILE))?;
    let (certs, key) = load_pair(cert_path, key_path)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| tls_error("mutual-TLS client", source))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|source| tls_error("mutual-TLS client", source))?;
    Ok(Arc::new(config))
}

/// Mutual-TLS client of the gRPC port (node-to-node calls, admin clients): trusts `ca.crt`,
/// presents `identity`, offers HTTP/2 (ALPN `h2`), and accepts a server only if its
/// certificate is a node's (common name `node`, besides chain and name), so that no other
/// certificate the cluster CA signed (`sip.crt` of a development setup, an admin's) can stand
/// in for a node.
pub fn grpc_client_config(certs_dir: &Path, identity: &PemIdentity) -> Result<Arc<ClientConfig>> {
    let ca_path = certs_dir.join(CA_CERT_FILE);
    let roots = Arc::new(root_store(&ca_path)?);
    let chain = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|source| Error::Pem {
            path: ca_path,
            reason: format!("unusable CA certificate: {source}"),
        })?;
    let source = Path::new("the client certificate in use");
    let certs = certs_from_pem(source, identity.cert.as_bytes())?;
    let key = key_from_pem(source, identity.key.as_bytes())?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| tls_error("gRPC client", source))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeServerVerifier { chain }))
        .with_client_auth_cert(certs, key)
        .map_err(|source| tls_error("gRPC client", source))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The CA's chain and name checks, then the node common name.
#[derive(Debug)]
struct NodeServerVerifier {
    chain: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match peer_common_name(end_entity.as_ref()) {
            Some(name) if name == NODE_COMMON_NAME => Ok(verified),
            other => Err(rustls::Error::General(format!(
                "the server's certificate is not a node's (common name {:?}, expected {NODE_COMMON_NAME:?}): the cluster CA signed it for another use",
                other.unwrap_or_default()
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// **Development only** (`--insecure`): a client that accepts any server certificate,
/// for any name, from anyone. It still checks the handshake signatures, but offers no
/// protection against an active attacker. Never use it between nodes.
///
/// # Panics
///
/// Never: the ring provider supports both protocol versions requested.
#[must_use]
pub fn insecure_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyServerCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        // Invariant: the ring provider supports both listed versions; this cannot fail.
        .expect("ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// The subject common name of a DER certificate (e.g. rustls' `peer_certificates()[0]`),
/// or `None` when the certificate does not parse or has no UTF-8 CN.
pub fn peer_common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let common_name = cert.subject().iter_common_name().next()?;
    common_name.as_str().ok().map(str::to_string)
}

#[derive(Debug)]
struct AcceptAnyServerCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

pub(crate) fn tls_error(what: &'static str, source: rustls::Error) -> Error {
    Error::Tls { what, source }
}

pub(crate) fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::io("reading", path, source))
}

pub(crate) fn certs_from_pem(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let mut reader = pem;
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            path: path.to_path_buf(),
            reason: format!("malformed PEM: {source}"),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

pub(crate) fn key_from_pem(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    let mut reader = pem;
    match rustls_pemfile::private_key(&mut reader) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(Error::Pem {
            path: path.to_path_buf(),
            reason: "no PRIVATE KEY block found".into(),
        }),
        Err(source) => Err(Error::Pem {
            path: path.to_path_buf(),
            reason: format!("malformed PEM: {source}"),
        }),
    }
}

fn load_pair(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let identity = load_identity(cert_path, key_path)?;
    let certs = certs_from_pem(cert_path, identity.cert.as_bytes())?;
    let key = key_from_pem(key_path, identity.key.as_bytes())?;
    Ok((certs, key))
}

pub(crate) fn load_identity(cert_path: &Path, key_path: &Path) -> Result<PemIdentity> {
    let identity = PemIdentity {
        cert: read_text(cert_path)?,
        key: read_text(key_path)?,
    };
    certs_from_pem(cert_path, identity.cert.as_bytes())?;
    key_from_pem(key_path, identity.key.as_bytes())?;
    Ok(identity)
}

fn root_store(ca_path: &Path) -> Result<RootCertStore> {
    let pem = read_text(ca_path)?;
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_path, pem.as_bytes())? {
        roots.add(cert).map_err(|source| Error::Pem {
            path: ca_path.to_path_buf(),
            reason: format!("unusable CA certificate: {source}"),
        })?;
    }
    Ok(roots)
}
