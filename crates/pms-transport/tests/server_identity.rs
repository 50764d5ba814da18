//! Node-to-node and admin clients accept a gRPC server only if its certificate is a node's:
//! another certificate the cluster CA signed (`sip.crt` of a development setup, whose key may
//! sit on a public-facing SIP front end) names the right host and chains to `ca.crt`, yet must
//! not stand in for a node. Real TLS on loopback, against a server that counts the handshakes
//! its clients complete.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pms_transport::{AdminClient, PeerClients};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A TLS server on loopback presenting `config`'s certificate; counts the handshakes that
/// complete (it speaks no gRPC after that: the handshake is what the test looks at).
async fn counting_server(config: Arc<ServerConfig>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let acceptor = TlsAcceptor::from(config);
    let completed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&completed);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(stream) = acceptor.accept(tcp).await {
                // Counted before the connection closes, so a client that saw it close sees
                // the count.
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        }
    });
    (address, completed)
}

/// An error with its causes, as an operator reads them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    pms_crypto::ensure_dev_certs(dir.path(), &[]).expect("certs");
    dir
}

async fn node_status_error(certs: &Path, address: &str) -> String {
    let peers = PeerClients::new(certs).expect("peers");
    match peers.node_status(address, CALL_TIMEOUT).await {
        Ok(status) => panic!("node status from a server that is no node: {status:?}"),
        Err(error) => chain(&error),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_presenting_the_sip_certificate_is_no_node() {
    let dir = certs();
    let sip = pms_crypto::sip_server_config(dir.path()).expect("sip server config");
    let (address, completed) = counting_server(sip).await;

    let said = node_status_error(dir.path(), &address).await;
    assert!(said.contains("not a node's"), "{said}");
    let said = match AdminClient::connect(&address, dir.path()).await {
        Ok(_) => panic!("the admin client connected to a server that is no node"),
        Err(error) => chain(&error),
    };
    assert!(said.contains("not a node's"), "{said}");
    assert_eq!(
        completed.load(Ordering::SeqCst),
        0,
        "a client finished a handshake with the SIP certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_presenting_the_node_certificate_gets_its_handshakes() {
    // The control: the same clients complete their handshakes with a node's certificate (the
    // call then fails, since this server speaks no gRPC).
    let dir = certs();
    let node = pms_crypto::mtls_server_config(dir.path()).expect("node server config");
    let (address, completed) = counting_server(node).await;

    let said = node_status_error(dir.path(), &address).await;
    assert!(!said.contains("not a node's"), "{said}");
    assert!(
        completed.load(Ordering::SeqCst) >= 1,
        "no handshake completed with the node certificate: {said}"
    );
}
