//! Signals and certificate rotation, on real `pmsd` processes: SIGHUP reloads `node.crt` and
//! `sip.crt` without a restart (new connections see the new certificates, the expiry metric
//! follows, a cluster keeps working), a broken replacement is refused and the old certificate
//! kept, and SIGTERM during start-up stops the process cleanly with status 0.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, Node, free_port, http_get, metric_value, pmsctl_cert, wait_until};
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

/// How long a clean stop may take after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The DER of the leaf certificate the TLS server at `address` presents to a new connection
/// made with `config` (which must trust it, for the name 127.0.0.1).
fn presented_certificate(address: SocketAddr, config: Arc<ClientConfig>) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .unwrap_or_else(|error| panic!("connect to {address}: {error}"));
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .expect("TLS handshake in time")
        .unwrap_or_else(|error| panic!("TLS handshake with {address}: {error}"));
        let (_, connection) = tls.get_ref();
        connection
            .peer_certificates()
            .and_then(|certs| certs.first())
            .expect("the server presented a certificate")
            .to_vec()
    })
}

/// The serial number of the certificate a new connection to the SIP TLS port sees.
fn sip_serial(node: &Node) -> String {
    let config = pms_crypto::client_config(&node.certs_dir().join("ca.crt")).expect("client");
    let address = SocketAddr::from(([127, 0, 0, 1], node.ports.sip_tls));
    serial_of_der(&presented_certificate(address, config))
}

/// The serial number of the certificate a new connection to the gRPC port sees (as the admin
/// client, since the port requires a client certificate).
fn grpc_serial(node: &Node) -> String {
    let config = pms_crypto::mtls_client_config(&node.certs_dir(), "admin").expect("client");
    let address = SocketAddr::from(([127, 0, 0, 1], node.ports.grpc));
    serial_of_der(&presented_certificate(address, config))
}

fn serial_of_der(der: &[u8]) -> String {
    pms_crypto::CertificateInfo::from_der(der)
        .expect("a certificate")
        .serial
}

fn file_info(path: &Path) -> pms_crypto::CertificateInfo {
    pms_crypto::read_certificate_info(path).expect("certificate file")
}

fn expiry_metric(node: &Node, file: &str) -> Option<f64> {
    metric_value(
        node.ports.http,
        &format!("pms_certificate_expiry_timestamp_seconds{{file=\"{file}\"}}"),
    )
}

fn signal(node: &Node, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &node.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name}");
}

fn is_ready(node: &Node) -> bool {
    http_get(node.ports.http, "/readyz").is_some_and(|(status, _)| status == 200)
}

/// How many times `needle` is in the node's log.
fn log_count(node: &Node, needle: &str) -> usize {
    node.log().matches(needle).count()
}

/// A certs dir with the cluster's CA (`ca.crt`, `ca.key` copied from `certs_dir`), where
/// `pmsctl` makes replacement certificates as an operator would on the CA host.
fn ca_host(certs_dir: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(certs_dir.join(file), dir.path().join(file)).expect("copy CA");
    }
    dir
}

/// Copies `name` from `from` into `to` as an operator would: a temporary name, then a rename,
/// so a reader never sees half a file.
fn install(from: &Path, to: &Path, name: &str) {
    let staged = to.join(format!(".{name}.new"));
    std::fs::copy(from.join(name), &staged).expect("copy");
    std::fs::rename(&staged, to.join(name)).expect("rename");
}

#[test]
fn sighup_presents_new_node_and_sip_certificates_and_the_cluster_keeps_working() {
    let mut cluster = Cluster::start(2, &["--mailbox-groups", "2"]);
    let certs = cluster.nodes[0].certs_dir();
    let old_node = file_info(&certs.join("node.crt"));
    let old_sip = file_info(&certs.join("sip.crt"));
    let one = &cluster.nodes[0];
    assert_eq!(grpc_serial(one), old_node.serial);
    assert_eq!(sip_serial(one), old_sip.serial);
    #[allow(clippy::cast_precision_loss)]
    let old_node_expiry = old_node.not_after_unix as f64;
    assert_eq!(expiry_metric(one, "node.crt"), Some(old_node_expiry));

    // New certificates from the same CA with another lifetime, installed in the certs dir.
    let ca = ca_host(&certs);
    pmsctl_cert(
        ca.path(),
        &[
            "create-node",
            "--lifetime-days",
            "40",
            "127.0.0.1",
            "localhost",
        ],
    );
    pmsctl_cert(
        ca.path(),
        &[
            "create-sip",
            "--lifetime-days",
            "50",
            "127.0.0.1",
            "localhost",
        ],
    );
    for file in ["node.key", "node.crt", "sip.key", "sip.crt"] {
        install(ca.path(), &certs, file);
    }
    let new_node = file_info(&certs.join("node.crt"));
    let new_sip = file_info(&certs.join("sip.crt"));
    assert_ne!(new_node.serial, old_node.serial);
    assert_ne!(new_node.not_after_unix, old_node.not_after_unix);

    // Nothing changes before the signal: the files are read on SIGHUP only.
    assert_eq!(grpc_serial(one), old_node.serial);

    signal(one, "HUP");
    wait_until("node 1 logs the reload", Duration::from_secs(10), || {
        log_count(one, "reloaded certificates") == 1
    });
    let log = one.log();
    assert!(log.contains("SIGHUP received"), "{log}");
    assert!(
        log.contains(&new_node.serial),
        "the reload log names the new node.crt: {log}"
    );
    assert!(
        log.contains(&new_sip.serial),
        "the reload log names the new sip.crt: {log}"
    );
    assert!(is_ready(one), "node 1 still serves after SIGHUP");
    assert_eq!(grpc_serial(one), new_node.serial);
    assert_eq!(sip_serial(one), new_sip.serial);
    #[allow(clippy::cast_precision_loss)]
    let (node_expiry, sip_expiry) = (
        new_node.not_after_unix as f64,
        new_sip.not_after_unix as f64,
    );
    assert_eq!(expiry_metric(one, "node.crt"), Some(node_expiry));
    assert_eq!(expiry_metric(one, "sip.crt"), Some(sip_expiry));
    assert!(expiry_metric(one, "ca.crt").is_some());
    // Node 2 had no SIGHUP: it still presents the certificate it loaded.
    assert_eq!(grpc_serial(&cluster.nodes[1]), old_node.serial);

    // Node 2 restarted connects afresh to node 1 (which presents the new node.crt) and node 1
    // makes new channels to it (presenting the new one as client): both must be accepted for
    // node 2 to become ready, since every write needs both nodes.
    assert!(cluster.nodes[1].terminate().success());
    cluster.nodes[1].spawn();
    assert_eq!(grpc_serial(&cluster.nodes[1]), new_node.serial);
    let [one, two] = [&cluster.nodes[0], &cluster.nodes[1]];
    one.add_user("alice");
    two.add_user("bob");
    let (code, lines) = one.send("alice", "bob", "after rotation 🔑", &[]);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.last().expect("a status")["code"], 202, "{lines:?}");
    let (code, received) = two.receive("bob", 1, 30);
    assert_eq!(code, 0, "{received:?}");
    assert_eq!(received[0]["body"], "after rotation 🔑");
}

#[test]
fn a_broken_replacement_is_refused_and_the_certificate_in_use_kept() {
    let mut node = Node::start();
    let certs = node.certs_dir();
    let old_node = file_info(&certs.join("node.crt"));
    let old_sip = file_info(&certs.join("sip.crt"));

    // Garbage instead of node.crt.
    std::fs::write(
        certs.join("node.crt"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n",
    )
    .unwrap();
    signal(&node, "HUP");
    wait_until("the refusal in the log", Duration::from_secs(10), || {
        log_count(&node, "cannot reload node.crt") == 1
    });
    assert!(is_ready(&node), "pmsd must survive SIGHUP: {}", node.log());
    assert_eq!(grpc_serial(&node), old_node.serial);
    assert_eq!(sip_serial(&node), old_sip.serial);
    #[allow(clippy::cast_precision_loss)]
    let old_expiry = old_node.not_after_unix as f64;
    assert_eq!(expiry_metric(&node, "node.crt"), Some(old_expiry));
    let log = node.log();
    let refusal = log
        .lines()
        .find(|line| line.contains("cannot reload node.crt"))
        .expect("refusal line");
    assert!(
        refusal.contains("ERROR")
            && refusal.contains(&certs.join("node.crt").display().to_string()),
        "the error names the file: {refusal}"
    );
    assert!(
        refusal.contains(&old_node.serial),
        "and the certificate kept: {refusal}"
    );

    // A well-formed node certificate of another CA: the other nodes would refuse it.
    let foreign = tempfile::tempdir().unwrap();
    pms_crypto::ensure_dev_certs(foreign.path(), &[]).unwrap();
    install(foreign.path(), &certs, "node.key");
    install(foreign.path(), &certs, "node.crt");
    signal(&node, "HUP");
    wait_until("the second refusal", Duration::from_secs(10), || {
        log_count(&node, "cannot reload node.crt") == 2
    });
    assert!(
        node.log().contains("not accepted by the cluster CA"),
        "{}",
        node.log()
    );
    assert!(is_ready(&node));
    assert_eq!(grpc_serial(&node), old_node.serial);

    // Fixed: a good certificate is taken at the next SIGHUP.
    let ca = ca_host(&certs);
    pmsctl_cert(
        ca.path(),
        &["create-node", "--lifetime-days", "20", "127.0.0.1"],
    );
    install(ca.path(), &certs, "node.key");
    install(ca.path(), &certs, "node.crt");
    let fixed = file_info(&certs.join("node.crt"));
    signal(&node, "HUP");
    wait_until("the reload", Duration::from_secs(10), || {
        node.log()
            .lines()
            .any(|line| line.contains("reloaded certificates") && line.contains(&fixed.serial))
    });
    assert_eq!(grpc_serial(&node), fixed.serial);
    #[allow(clippy::cast_precision_loss)]
    let fixed_expiry = fixed.not_after_unix as f64;
    assert_eq!(expiry_metric(&node, "node.crt"), Some(fixed_expiry));
    // The node with its new certificate still answers the admin API (pmsctl verifies it).
    node.add_user("carol");
    assert!(node.terminate().success());
}

#[test]
fn sigterm_right_after_start_stops_cleanly_with_status_0() {
    // A development node: certificates made in its own data dir.
    let mut node = Node::prepared(Vec::new(), std::path::PathBuf::new());
    node.shared_certs_dir = None;
    node.spawn_process();
    wait_until("pmsd to start logging", Duration::from_secs(10), || {
        node.log().contains("telemetry ready")
    });
    signal(&node, "TERM");
    let status = node.wait_exit(STOP_TIMEOUT);
    let log = node.log();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
}

/// Node 1 of a 3-node `--peers` cluster whose other members never start, spawned and waiting
/// for a leader (it never serves). Keep the returned dir (certs, master key) alive with it.
fn lone_member_of_three() -> (tempfile::TempDir, Node) {
    let shared = tempfile::tempdir().unwrap();
    let certs = shared.path().join("certs");
    common::loopback_certs(&certs);
    let master_key = shared.path().join("master.key");
    pms_crypto::MasterKey::write_new(&master_key).unwrap();
    let mut node = Node::prepared(Vec::new(), certs.clone());
    let peers = format!(
        "1={},2=127.0.0.1:{},3=127.0.0.1:{}",
        node.grpc_address(),
        free_port(),
        free_port()
    );
    node.extra_args = [
        "--node-id",
        "1",
        "--certs-dir",
        &certs.display().to_string(),
        "--master-key-file",
        &master_key.display().to_string(),
        "--peers",
        &peers,
    ]
    .map(str::to_owned)
    .to_vec();
    node.spawn_process();
    wait_until(
        "node 1 to wait for a leader",
        Duration::from_secs(30),
        || node.log().contains("waiting for a Raft leader"),
    );
    (shared, node)
}

#[test]
fn sigterm_while_waiting_for_the_other_nodes_stops_cleanly_with_status_0() {
    let (_shared, mut node) = lone_member_of_three();
    signal(&node, "TERM");
    let status = node.wait_exit(STOP_TIMEOUT);
    let log = node.log();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
}

#[test]
fn sighup_before_the_node_serves_does_not_kill_it() {
    let (_shared, mut node) = lone_member_of_three();
    signal(&node, "HUP");
    wait_until("the reload", Duration::from_secs(10), || {
        node.log().contains("reloaded certificates")
    });
    // Still running: SIGTERM now ends it cleanly (a process SIGHUP killed could not exit 0).
    signal(&node, "TERM");
    let status = node.wait_exit(STOP_TIMEOUT);
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log()
    );
}
