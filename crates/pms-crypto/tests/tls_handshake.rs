//! Real TLS handshakes over in-memory duplex pipes between configs built by pms-crypto
//! from freshly generated certs dirs.
//!
//! Invariants checked: mutual TLS admits exactly the clients whose certificate chains to
//! the server's CA and reports their CN; server certificates verify against `ca.crt` for
//! both DNS and IP names; TLS 1.2 and 1.3 both work; `--insecure` only skips
//! certificate verification.

use pms_crypto::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What each side saw. `Ok` only when the handshake finished and one request/response
/// round trip succeeded.
struct Outcome {
    server: Result<Option<String>, String>,
    client: Result<(), String>,
}

async fn exchange(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &str) -> Outcome {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let server_side = async move {
        let mut stream = TlsAcceptor::from(server)
            .accept(server_io)
            .await
            .map_err(|error| error.to_string())?;
        let peer_cn = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| peer_common_name(cert));
        let mut request = [0u8; 4];
        stream
            .read_exact(&mut request)
            .await
            .map_err(|error| error.to_string())?;
        assert_eq!(&request, b"ping");
        stream
            .write_all(b"pong")
            .await
            .map_err(|error| error.to_string())?;
        stream.shutdown().await.map_err(|error| error.to_string())?;
        Ok(peer_cn)
    };
    let client_side = async move {
        let mut stream = TlsConnector::from(client)
            .connect(server_name, client_io)
            .await
            .map_err(|error| error.to_string())?;
        stream
            .write_all(b"ping")
            .await
            .map_err(|error| error.to_string())?;
        stream.flush().await.map_err(|error| error.to_string())?;
        let mut response = [0u8; 4];
        stream
            .read_exact(&mut response)
            .await
            .map_err(|error| error.to_string())?;
        if &response != b"pong" {
            return Err(format!("unexpected response {response:?}"));
        }
        Ok(())
    };
    let (server, client) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("handshake test must not hang");
    Outcome { server, client }
}

fn dev_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    assert!(ensure_dev_certs(dir.path(), &[]).unwrap());
    dir
}

/// A certs dir trusting `trusted`'s CA but holding `foreign`'s `client.admin` identity.
fn mixed_certs(trusted: &Path, foreign: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(trusted.join("ca.crt"), dir.path().join("ca.crt")).unwrap();
    for file in ["client.admin.crt", "client.admin.key"] {
        std::fs::copy(foreign.join(file), dir.path().join(file)).unwrap();
    }
    dir
}

#[tokio::test]
async fn mutual_tls_admits_admin_client_and_reports_its_common_name() {
    let certs = dev_certs();
    let outcome = exchange(
        mtls_server_config(certs.path()).unwrap(),
        mtls_client_config(certs.path(), "admin").unwrap(),
        "localhost",
    )
    .await;
    assert_eq!(outcome.client, Ok(()));
    assert_eq!(outcome.server, Ok(Some("admin".to_string())));
}

#[tokio::test]
async fn mutual_tls_admits_other_nodes_with_common_name_node() {
    let certs = dev_certs();
    let outcome = exchange(
        mtls_server_config(certs.path()).unwrap(),
        node_mtls_client_config(certs.path()).unwrap(),
        "127.0.0.1",
    )
    .await;
    assert_eq!(outcome.client, Ok(()));
    assert_eq!(outcome.server, Ok(Some("node".to_string())));
}

#[tokio::test]
async fn mutual_tls_rejects_client_certificate_from_another_ca() {
    let certs = dev_certs();
    let other = dev_certs();
    let mixed = mixed_certs(certs.path(), other.path());
    let outcome = exchange(
        mtls_server_config(certs.path()).unwrap(),
        mtls_client_config(mixed.path(), "admin").unwrap(),
        "localhost",
    )
    .await;
    let error = outcome
        .server
        .expect_err("server accepted a foreign client certificate");
    assert!(
        error.contains("UnknownIssuer") || error.contains("issuer"),
        "{error}"
    );
    assert!(outcome.client.is_err());
}

#[tokio::test]
async fn mutual_tls_rejects_client_without_certificate() {
    let certs = dev_certs();
    let outcome = exchange(
        mtls_server_config(certs.path()).unwrap(),
        client_config(&certs.path().join("ca.crt")).unwrap(),
        "localhost",
    )
    .await;
    assert!(outcome.server.is_err());
    assert!(outcome.client.is_err());
}

#[tokio::test]
async fn sip_server_verifies_against_ca_by_dns_and_ip_name() {
    let certs = dev_certs();
    for name in ["localhost", "127.0.0.1", "::1"] {
        let outcome = exchange(
            sip_server_config(certs.path()).unwrap(),
            client_config(&certs.path().join("ca.crt")).unwrap(),
            name,
        )
        .await;
        assert_eq!(outcome.client, Ok(()), "{name}");
        assert_eq!(
            outcome.server,
            Ok(None),
            "{name}: no client certificate expected"
        );
    }
}

#[tokio::test]
async fn client_rejects_server_name_not_in_certificate_or_unknown_ca() {
    let certs = dev_certs();
    let wrong_name = exchange(
        sip_server_config(certs.path()).unwrap(),
        client_config(&certs.path().join("ca.crt")).unwrap(),
        "pms.example.com",
    )
    .await;
    assert!(wrong_name.client.is_err());
    assert!(wrong_name.server.is_err());

    let other = dev_certs();
    let wrong_ca = exchange(
        sip_server_config(certs.path()).unwrap(),
        client_config(&other.path().join("ca.crt")).unwrap(),
        "localhost",
    )
    .await;
    let error = wrong_ca
        .client
        .expect_err("client trusted a server from another CA");
    assert!(error.contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn insecure_client_accepts_any_server_certificate() {
    let certs = dev_certs();
    let outcome = exchange(
        sip_server_config(certs.path()).unwrap(),
        insecure_client_config(),
        "not-in-the-certificate.example",
    )
    .await;
    assert_eq!(outcome.client, Ok(()));
    assert_eq!(outcome.server, Ok(None));
}

#[tokio::test]
async fn sip_server_speaks_tls_1_2_as_well_as_1_3() {
    let certs = dev_certs();
    let ca = load_ca_pem(certs.path()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls12_only =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let outcome = exchange(
        sip_server_config(certs.path()).unwrap(),
        Arc::new(tls12_only),
        "localhost",
    )
    .await;
    assert_eq!(outcome.client, Ok(()));
}

#[test]
fn pem_identities_load_from_the_certs_dir() {
    let certs = dev_certs();
    let node = load_node_identity(certs.path()).unwrap();
    assert_eq!(
        node.cert,
        std::fs::read_to_string(certs.path().join("node.crt")).unwrap()
    );
    assert!(node.key.contains("PRIVATE KEY"));
    assert!(!format!("{node:?}").contains("PRIVATE KEY"));
    let admin = load_client_identity(certs.path(), "admin").unwrap();
    assert!(admin.cert.contains("BEGIN CERTIFICATE"));
    assert!(
        load_ca_pem(certs.path())
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(matches!(
        load_client_identity(certs.path(), "nobody"),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        load_client_identity(certs.path(), "../node"),
        Err(Error::InvalidClientName { .. })
    ));
}

#[test]
fn configs_report_missing_or_garbage_files() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        sip_server_config(dir.path()),
        Err(Error::Io { .. })
    ));
    std::fs::write(dir.path().join("ca.crt"), "not a certificate").unwrap();
    assert!(matches!(
        client_config(&dir.path().join("ca.crt")),
        Err(Error::Pem { .. })
    ));
    assert!(matches!(
        mtls_server_config(dir.path()),
        Err(Error::Pem { .. })
    ));
    assert_eq!(peer_common_name(b"garbage"), None);
    assert_eq!(peer_common_name(&[]), None);
}
