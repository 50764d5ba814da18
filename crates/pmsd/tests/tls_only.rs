//! TLS end to end (issue 8, items 10 and 11), against a real `pmsd`:
//! - `--sip-tcp off --sip-udp off` leaves nothing listening on those ports while TLS serves;
//! - a message that arrived over TLS (and its IMDN) never goes out on a UDP flow: the sender
//!   gets 202, the recipient gets it once it registers over TLS, unless
//!   `--allow-plaintext-delivery`;
//! - the SIP TLS port presents `sip.crt`, not `node.crt`, and the internal gRPC service
//!   refuses a client authenticating with `sip.crt`; a dev certs dir without `sip.crt` gets one
//!   when it has the CA key, and a node refuses to start without either.

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Node, PASSWORD, pmsctl_cert};
use pms_sip::digest::{authorization, select_challenge};
use pms_sip::message::{Request, Response, SipMessage, parse, response_to};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

static UNIQUE: AtomicU64 = AtomicU64::new(1);

fn unique() -> u64 {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

/// A SIP device on one UDP socket (plaintext).
struct UdpPhone {
    socket: UdpSocket,
    server: SocketAddr,
}

impl UdpPhone {
    fn new(node: &Node) -> UdpPhone {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        socket
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        UdpPhone {
            socket,
            server: node.sip_tcp_addr(),
        }
    }

    fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).expect("send_to");
    }

    /// The next SIP message within the read timeout (keep-alives skipped).
    fn next_message(&self) -> Option<SipMessage> {
        let mut buffer = vec![0u8; 65_536];
        loop {
            match self.socket.recv(&mut buffer) {
                Ok(read) if buffer[..read].iter().all(|b| *b == b'\r' || *b == b'\n') => {}
                Ok(read) => return Some(parse(&buffer[..read]).expect("a SIP datagram")),
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return None;
                }
                Err(error) => panic!("recv: {error}"),
            }
        }
    }

    fn response(&self) -> Response {
        match self.next_message() {
            Some(SipMessage::Response(response)) => response,
            Some(SipMessage::Request(request)) => panic!("expected a response, got {request:?}"),
            None => panic!("no response within {READ_TIMEOUT:?}"),
        }
    }

    /// The MESSAGE requests already waiting in the socket (none is waited for): what the node
    /// sent on this plaintext flow so far.
    fn requests_received(&self) -> Vec<Request> {
        self.socket.set_nonblocking(true).expect("nonblocking");
        let mut requests = Vec::new();
        while let Some(message) = self.next_message() {
            if let SipMessage::Request(request) = message {
                requests.push(request);
            }
        }
        self.socket.set_nonblocking(false).expect("blocking");
        requests
    }

    fn next_request(&self) -> Request {
        loop {
            match self.next_message() {
                Some(SipMessage::Request(request)) => return request,
                Some(SipMessage::Response(_)) => {}
                None => panic!("no request within {READ_TIMEOUT:?}"),
            }
        }
    }

    fn answer(&self, request: &Request, status: u16) {
        self.send(&response_to(request, status, "OK", "device").to_bytes());
    }

    /// REGISTERs `user` from this socket (digest answered); asserts the 200.
    fn register(&self, user: &str) {
        let local = self.socket.local_addr().expect("addr");
        let call_id = format!("reg-{}", unique());
        let build = |cseq: u32, auth: Option<String>| {
            let mut text = format!(
                "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}-{cseq}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{user}@localhost>;tag=r{call_id}\r\nTo: <sip:{user}@localhost>\r\n\
                 Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
                 Contact: <sip:{user}@{local};transport=udp>\r\nExpires: 600\r\n"
            );
            if let Some(auth) = auth {
                text.push_str(&auth);
                text.push_str("\r\n");
            }
            text.push_str("Content-Length: 0\r\n\r\n");
            text.into_bytes()
        };
        self.send(&build(1, None));
        let challenge = self.response();
        assert_eq!(challenge.status, 401, "{challenge:?}");
        let parsed = select_challenge(challenge.headers.get_all("WWW-Authenticate"))
            .expect("a usable challenge");
        let value = authorization(
            &parsed,
            user,
            PASSWORD,
            "REGISTER",
            "sip:localhost",
            &format!("c{}", unique()),
            1,
        );
        self.send(&build(2, Some(format!("Authorization: {value}"))));
        let registered = self.response();
        assert_eq!(registered.status, 200, "{registered:?}");
    }
}

fn node_with(extra: &[&str]) -> Node {
    let node = Node::start_with(extra.iter().map(|arg| (*arg).to_owned()).collect());
    node.add_user("alice");
    node.add_user("bob");
    node
}

/// The `status`/`code` line `pmsctl send` ended with.
fn final_status(lines: &[serde_json::Value]) -> (String, i64) {
    let last = lines
        .iter()
        .rev()
        .find(|line| line.get("code").is_some())
        .unwrap_or_else(|| panic!("no final status in {lines:?}"));
    (
        last["status"].as_str().unwrap_or_default().to_owned(),
        last["code"].as_i64().unwrap_or_default(),
    )
}

#[test]
fn with_tcp_and_udp_off_only_tls_listens_and_serves() {
    let node = node_with(&["--sip-tcp", "off", "--sip-udp", "off"]);
    let plaintext = node.sip_tcp_addr();
    let refused = TcpStream::connect_timeout(&plaintext, Duration::from_secs(2));
    assert!(
        refused.is_err(),
        "something accepts TCP on the plaintext SIP port {plaintext}"
    );
    // A UDP request to the port gets no SIP answer (the kernel's port-unreachable shows as a
    // refused receive on a connected socket).
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(plaintext).expect("connect udp");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let options = format!(
        "OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKoff\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=o\r\nTo: <sip:localhost>\r\n\
         Call-ID: off-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        socket.local_addr().expect("addr")
    );
    let _ = socket.send(options.as_bytes());
    let mut buffer = [0u8; 4096];
    match socket.recv(&mut buffer) {
        Ok(read) => panic!(
            "the UDP port answered: {}",
            String::from_utf8_lossy(&buffer[..read])
        ),
        Err(error) => assert!(
            matches!(
                error.kind(),
                ErrorKind::ConnectionRefused | ErrorKind::WouldBlock | ErrorKind::TimedOut
            ),
            "{error}"
        ),
    }
    assert!(
        node.log().contains("SIP over TLS only"),
        "the log does not say which listeners run:\n{}",
        node.log()
    );

    // TLS serves a REGISTER (bob listens) and a MESSAGE (alice sends).
    let mut bob = node.listen("bob", 1, 30);
    bob.wait_for_stderr(Duration::from_secs(20), "registered");
    let (code, lines) = node.send("alice", "bob", "over TLS only 🔒", &[]);
    assert_eq!(code, 0, "{lines:?}\n{}", node.log());
    let (code, messages) = bob.finish();
    assert_eq!(code, 0, "{messages:?}");
    assert_eq!(messages[0]["body"], "over TLS only 🔒", "{messages:?}");
}

#[test]
fn a_message_received_over_tls_and_its_report_never_travel_over_udp() {
    let node = node_with(&[]);
    let bob_udp = UdpPhone::new(&node);
    bob_udp.register("bob");
    let alice_udp = UdpPhone::new(&node);
    alice_udp.register("alice");

    // bob's only device is on UDP: the message waits, and alice hears 202 (not 200).
    let (code, lines) = node.send("alice", "bob", "secret over TLS", &[]);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(
        final_status(&lines),
        ("enqueued".to_owned(), 202),
        "{lines:?}"
    );

    // alice also registers over TLS, then refreshes her UDP device, which makes it her newest
    // binding: the one delivery would try first if the transport did not matter.
    let mut alice_tls = node.listen("alice", 1, 30);
    alice_tls.wait_for_stderr(Duration::from_secs(20), "registered");
    alice_udp.register("alice");

    // bob registers over TLS and gets the message there.
    let (code, messages) = node.receive("bob", 1, 30);
    assert_eq!(code, 0, "{messages:?}\n{}", node.log());
    assert_eq!(messages[0]["body"], "secret over TLS", "{messages:?}");
    // Anything sent on bob's UDP flow went out before his TLS registration took it.
    let leaked = bob_udp.requests_received();
    assert!(
        leaked.is_empty(),
        "a message that arrived over TLS was sent over UDP: {leaked:?}"
    );

    // The delivered report for alice follows the same rule: her TLS flow, not the newer UDP.
    let (code, reports) = alice_tls.finish();
    assert_eq!(code, 0, "{reports:?}\n{}", node.log());
    let report = serde_json::to_string(&reports).unwrap_or_default();
    assert!(
        report.contains("imdn") && report.contains("delivered"),
        "{reports:?}"
    );
    let leaked = alice_udp.requests_received();
    assert!(
        leaked.is_empty(),
        "the report on a TLS message was sent over UDP: {leaked:?}"
    );
}

#[test]
fn the_plaintext_delivery_policy_lets_a_tls_message_reach_a_udp_device() {
    let node = node_with(&["--allow-plaintext-delivery"]);
    let bob_udp = UdpPhone::new(&node);
    bob_udp.register("bob");
    let device = std::thread::spawn(move || {
        let request = bob_udp.next_request();
        bob_udp.answer(&request, 200);
        request
    });
    let (code, lines) = node.send("alice", "bob", "allowed in clear", &[]);
    assert_eq!(code, 0, "{lines:?}");
    let request = device.join().expect("device thread");
    assert_eq!(request.body, b"allowed in clear");
    assert!(
        node.log().contains("--allow-plaintext-delivery"),
        "the policy is not logged"
    );
}

fn pem_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The leaf certificate the SIP TLS listener presents (verified against the node's CA for
/// the name `localhost`).
fn presented_sip_certificate(node: &Node) -> CertificateDer<'static> {
    let config = pms_crypto::client_config(&node.certs_dir().join("ca.crt")).expect("ca.crt");
    let name = ServerName::try_from("localhost").expect("name");
    let mut connection = rustls::ClientConnection::new(config, name).expect("client");
    let mut stream = TcpStream::connect(node.sip_tls()).expect("connect TLS port");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    while connection.is_handshaking() {
        connection
            .complete_io(&mut stream)
            .expect("TLS handshake with the SIP port (verified against ca.crt)");
    }
    connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

/// Asks the node at `address` for its status with the identity `node.crt`/`node.key` of
/// `certs_dir`, as a peer node would.
fn node_status_with(certs_dir: &Path, address: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let peers = pms_transport::PeerClients::new(certs_dir).map_err(|e| e.to_string())?;
        peers
            .node_status(address, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    })
}

#[test]
fn the_sip_port_shows_sip_crt_and_the_cluster_refuses_it_as_a_node() {
    let node = node_with(&[]);
    let certs = node.certs_dir();
    let sip = pem_cert(&certs.join("sip.crt"));
    let node_cert = pem_cert(&certs.join("node.crt"));
    assert_ne!(sip, node_cert);
    let presented = presented_sip_certificate(&node);
    assert!(
        presented == sip,
        "the SIP TLS port does not present sip.crt"
    );
    assert!(presented != node_cert, "the SIP TLS port presents node.crt");

    // The node's own identity is accepted by the internal service…
    let address = node.grpc_address();
    node_status_with(&certs, &address).expect("node.crt is a node's identity");
    // …the public SIP certificate and key are not, though the same CA signed them.
    let impostor = tempfile::tempdir().expect("tempdir");
    for (from, to) in [
        ("ca.crt", "ca.crt"),
        ("sip.crt", "node.crt"),
        ("sip.key", "node.key"),
    ] {
        std::fs::copy(certs.join(from), impostor.path().join(to)).expect("copy");
    }
    let refused = node_status_with(impostor.path(), &address);
    assert!(
        refused.is_err(),
        "the internal service accepted a client authenticating with sip.crt"
    );
}

#[test]
fn a_dev_certs_dir_without_sip_crt_gets_one_and_without_the_ca_key_the_node_refuses() {
    let shared = tempfile::tempdir().expect("tempdir");
    let certs = shared.path().join("certs");
    pmsctl_cert(&certs, &["create-ca"]);
    pmsctl_cert(&certs, &["create-node", "127.0.0.1", "localhost"]);
    pmsctl_cert(&certs, &["create-client", "admin"]);

    // An existing development dir (CA key present): sip.crt is made, with a warning.
    let certs_flag = vec!["--certs-dir".to_owned(), certs.display().to_string()];
    let mut node = Node::prepared(certs_flag.clone(), certs.clone());
    node.spawn();
    assert!(certs.join("sip.crt").exists() && certs.join("sip.key").exists());
    assert!(node.log().contains("no sip.crt"), "{}", node.log());
    assert!(presented_sip_certificate(&node) == pem_cert(&certs.join("sip.crt")));
    node.terminate();

    // Without sip.crt and without the CA key to make one: a clear refusal.
    for file in ["sip.crt", "sip.key", "ca.key"] {
        std::fs::remove_file(certs.join(file)).expect("remove");
    }
    let mut node = Node::prepared(certs_flag, certs.clone());
    node.spawn_process();
    let status = node.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = node.log();
    assert!(
        log.contains("sip.crt") && log.contains("pmsctl cert create-sip"),
        "the refusal does not say what to do:\n{log}"
    );
}
