//! `PeerClients` present the node certificate in use: once it is reloaded (SIGHUP in `pmsd`),
//! the next call to a peer connects anew and shows the new certificate, on real TLS over
//! loopback, to a server that records each client certificate it sees.

use std::sync::Arc;
use std::time::Duration;

use pms_crypto::{CertificateRole, ReloadableCertificate};
use pms_transport::PeerClients;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// Serial numbers of the client certificates presented to a mutual-TLS server on loopback
/// (it completes the handshake, then drops the connection: it speaks no gRPC).
async fn recording_server(certs_dir: &std::path::Path) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let acceptor = TlsAcceptor::from(pms_crypto::mtls_server_config(certs_dir).expect("config"));
    let (seen, serials) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let serial = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|leaf| pms_crypto::CertificateInfo::from_der(leaf).ok())
                    .map(|info| info.serial);
                if let Some(serial) = serial {
                    let _ = seen.send(serial).await;
                }
            });
        }
    });
    (address, serials)
}

/// Calls the peer until it has seen a client certificate with `serial`, or fails the test.
async fn wait_for_serial(
    peers: &PeerClients,
    address: &str,
    serials: &mut mpsc::Receiver<String>,
    serial: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        // Fails after the handshake (the server speaks no gRPC); the handshake is the point.
        let _ = peers.node_status(address, Duration::from_secs(2)).await;
        while let Ok(presented) = serials.try_recv() {
            let found = presented == serial;
            seen.push(presented);
            if found {
                return seen;
            }
        }
    }
    panic!("the peer never saw certificate {serial}; it saw {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_a_reload_present_the_new_node_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path();
    pms_crypto::ensure_dev_certs(certs, &[]).expect("certs");
    let (address, mut serials) = recording_server(certs).await;

    let node = Arc::new(
        ReloadableCertificate::load(CertificateRole::Node, certs).expect("node certificate"),
    );
    let peers = PeerClients::new(certs)
        .expect("peers")
        .with_node_certificate(node.clone());
    let old = node.info().serial;
    let before = wait_for_serial(&peers, &address, &mut serials, &old).await;
    assert!(before.iter().all(|serial| *serial == old), "{before:?}");

    // A new node certificate from the same CA, installed and reloaded.
    let ca_host = tempfile::tempdir().expect("tempdir");
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(certs.join(file), ca_host.path().join(file)).expect("copy CA");
    }
    pms_crypto::create_node_with(
        ca_host.path(),
        &["127.0.0.1".into()],
        pms_crypto::Lifetime::Days(10),
    )
    .expect("new node certificate");
    for file in ["node.key", "node.crt"] {
        std::fs::copy(ca_host.path().join(file), certs.join(file)).expect("install");
    }
    let reloaded = node.reload().expect("reload");
    assert!(reloaded.changed);
    assert_ne!(reloaded.info.serial, old);

    let after = wait_for_serial(&peers, &address, &mut serials, &reloaded.info.serial).await;
    assert_eq!(after.last(), Some(&reloaded.info.serial), "{after:?}");
}
