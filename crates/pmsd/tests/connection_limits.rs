//! Unauthenticated connections and UDP peers are cheap and short-lived (issue 8, items 5 and 6),
//! checked against a real `pmsd` on raw loopback sockets: idle TCP connections and TLS
//! connections that never finish (or never start) a handshake beyond the per-source cap are
//! closed at once while clients from other sources and devices registered before the flood are
//! served; unauthenticated connections are closed at the deadline while authenticated ones
//! stay; a full unauthenticated pool closes its oldest connection to admit a new client; and a
//! flood of one-datagram UDP peers (more than the old 20,000-peer table) neither keeps a new
//! UDP REGISTER from its answer nor grows the unauthenticated UDP state past its bound.
//!
//! Sources other than 127.0.0.1 are other loopback addresses (the client socket is bound to
//! 127.0.0.x before it connects).

mod common;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Node, PASSWORD, connect_from, wait_until};
use pms_sip::digest::{authorization, select_challenge};
use pms_sip::framing::{Frame, StreamFramer};
use pms_sip::message::{Request, Response, SipMessage, parse, response_to};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConnection, StreamOwned};

/// Longest wait for one answer or one expected close.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The node's defaults (`pms_types::limits`) the default-flag tests rely on.
const PER_SOURCE_MAX_DEFAULT: usize = 32;
const UNAUTHENTICATED_MAX_DEFAULT: usize = 1_024;
/// More one-datagram UDP peers than the old session table held (`CONNECTIONS_MAX`, 20,000).
const UDP_FLOOD_PEERS: usize = 21_000;
/// Flood datagrams sent between two probes (the probe's answer shows the node read them all,
/// so the kernel's receive buffer does not drop the flood).
const UDP_FLOOD_BATCH: usize = 50;
/// Peers the old UDP session table held (`pms_types::limits::CONNECTIONS_MAX`).
const OLD_UDP_PEERS_MAX: usize = 20_000;

static UNIQUE: AtomicU64 = AtomicU64::new(1);

fn unique() -> u64 {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

fn loopback(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn tls_port(node: &Node) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.ports.sip_tls))
}

/// The UDP listener shares the TCP listener's port (see `common::Node`).
fn udp_port(node: &Node) -> SocketAddr {
    node.sip_tcp_addr()
}

/// What the server did with an idle connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Open,
    Closed,
}

/// Whether the server closed `stream` (EOF or reset), without waiting.
fn seen(stream: &mut TcpStream) -> Seen {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buffer = [0u8; 4096];
    let seen = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break Seen::Closed,
            // A TLS alert or stray bytes: keep reading until the close.
            Ok(_) => continue,
            Err(error) if error.kind() == ErrorKind::WouldBlock => break Seen::Open,
            Err(_) => break Seen::Closed,
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    seen
}

/// Polls `streams` until at least `closed` of them are closed (or `timeout` passes); returns
/// what each looked like then.
fn wait_closed(streams: &mut [TcpStream], closed: usize, timeout: Duration) -> Vec<Seen> {
    let deadline = Instant::now() + timeout;
    loop {
        let states: Vec<Seen> = streams.iter_mut().map(seen).collect();
        let count = states
            .iter()
            .filter(|state| **state == Seen::Closed)
            .count();
        if count >= closed || Instant::now() > deadline {
            return states;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `stream` until the server closes it; panics if it is still open after `timeout`.
fn read_until_closed(stream: &mut TcpStream, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        assert!(
            Instant::now() < deadline,
            "{what} still open after {timeout:?}"
        );
    }
}

/// The first bytes of a TLS ClientHello record that announces more than it sends: a handshake
/// started and never finished.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];

/// A phone on one TCP or TLS connection or one UDP socket, from a chosen loopback source.
struct Phone {
    link: Link,
    local: SocketAddr,
    framer: StreamFramer,
    pending: VecDeque<SipMessage>,
}

enum Link {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Udp(UdpSocket, SocketAddr),
}

impl Phone {
    fn new(link: Link, local: SocketAddr) -> Phone {
        Phone {
            link,
            local,
            framer: StreamFramer::new(64 * 1024, 64 * 1024),
            pending: VecDeque::new(),
        }
    }

    fn tcp_from(source: Ipv4Addr, node: &Node) -> Phone {
        let stream = connect_from(source, node.sip_tcp_addr());
        let local = stream.local_addr().expect("addr");
        Phone::new(Link::Tcp(stream), local)
    }

    fn tls_from(source: Ipv4Addr, node: &Node) -> Phone {
        let stream = connect_from(source, tls_port(node));
        let local = stream.local_addr().expect("addr");
        let name = ServerName::try_from("localhost").expect("server name");
        let connection =
            ClientConnection::new(pms_crypto::insecure_client_config(), name).expect("client");
        let mut tls = StreamOwned::new(connection, stream);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        Phone::new(Link::Tls(Box::new(tls)), local)
    }

    fn udp_from(source: Ipv4Addr, node: &Node) -> Phone {
        let socket = UdpSocket::bind(SocketAddr::from((source, 0))).expect("bind udp");
        socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let local = socket.local_addr().expect("addr");
        Phone::new(Link::Udp(socket, udp_port(node)), local)
    }

    fn transport(&self) -> &'static str {
        match self.link {
            Link::Tcp(_) => "TCP",
            Link::Tls(_) => "TLS",
            Link::Udp(..) => "UDP",
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        match &mut self.link {
            Link::Tcp(stream) => stream.write_all(bytes).expect("write"),
            Link::Tls(stream) => {
                stream.write_all(bytes).expect("write");
                stream.flush().expect("flush");
            }
            Link::Udp(socket, server) => {
                socket.send_to(bytes, *server).expect("send_to");
            }
        }
    }

    /// The next SIP message (keep-alives skipped); panics when none comes in time.
    fn next_message(&mut self) -> SipMessage {
        if let Some(message) = self.pending.pop_front() {
            return message;
        }
        let mut buffer = vec![0u8; 65_536];
        loop {
            if let Link::Udp(socket, _) = &self.link {
                let read = socket
                    .recv(&mut buffer)
                    .unwrap_or_else(|error| panic!("no datagram within {IO_TIMEOUT:?}: {error}"));
                let bytes = &buffer[..read];
                if bytes.iter().all(|byte| matches!(byte, b'\r' | b'\n')) {
                    continue;
                }
                return parse(bytes).expect("a SIP datagram");
            }
            while let Some(frame) = self.framer.next_frame() {
                if let Frame::Message(bytes) = frame.expect("framing") {
                    return parse(&bytes).expect("a SIP message");
                }
            }
            let read = match &mut self.link {
                Link::Tcp(stream) => stream.read(&mut buffer),
                Link::Tls(stream) => stream.read(&mut buffer),
                Link::Udp(..) => unreachable!("handled above"),
            };
            match read {
                Ok(0) => panic!("the server closed the {} connection", self.transport()),
                Ok(read) => self.framer.push(&buffer[..read]),
                Err(error) => panic!("no message within {IO_TIMEOUT:?}: {error}"),
            }
        }
    }

    fn response(&mut self) -> Response {
        let mut skipped = Vec::new();
        let response = loop {
            match self.next_message() {
                SipMessage::Response(response) => break response,
                request => skipped.push(request),
            }
        };
        self.pending.extend(skipped);
        response
    }

    fn next_request(&mut self) -> Request {
        let mut skipped = Vec::new();
        let request = loop {
            match self.next_message() {
                SipMessage::Request(request) => break request,
                response => skipped.push(response),
            }
        };
        self.pending.extend(skipped);
        request
    }

    fn exchange(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.response()
    }

    /// Sends a request over UDP until an answer comes (RFC 3261 Timer E, at a fixed 500 ms):
    /// the node's receive buffer may have dropped it.
    fn exchange_retransmitting(&mut self, bytes: &[u8]) -> Response {
        let Link::Udp(socket, server) = &self.link else {
            panic!("retransmission is for UDP");
        };
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("read timeout");
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut buffer = vec![0u8; 65_536];
        let answer = loop {
            assert!(Instant::now() < deadline, "no answer within {IO_TIMEOUT:?}");
            socket.send_to(bytes, *server).expect("send_to");
            if let Ok(read) = socket.recv(&mut buffer)
                && let Ok(SipMessage::Response(response)) = parse(&buffer[..read])
            {
                break response;
            }
        };
        socket
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        answer
    }

    fn via(&self) -> String {
        format!(
            "Via: SIP/2.0/{} {};branch=z9hG4bK{}",
            self.transport(),
            self.local,
            unique()
        )
    }
}

/// A request with the usual headers; `extra` lines go before Content-Length.
fn request(
    method: &str,
    uri: &str,
    phone: &Phone,
    from: &str,
    to: &str,
    extra: &[String],
) -> Vec<u8> {
    request_with(
        method,
        uri,
        &phone.via(),
        from,
        to,
        &format!("c{}", unique()),
        extra,
        b"",
    )
}

#[allow(clippy::too_many_arguments)] // each header is an argument, named at the call
fn request_with(
    method: &str,
    uri: &str,
    via: &str,
    from: &str,
    to: &str,
    call_id: &str,
    extra: &[String],
    body: &[u8],
) -> Vec<u8> {
    let cseq = unique();
    let mut text = format!(
        "{method} {uri} SIP/2.0\r\n{via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
    );
    for line in extra {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The credentials line answering `challenge` (a 401/407) for `user` and `uri`.
fn credentials(challenge: &Response, user: &str, method: &str, uri: &str) -> String {
    let (challenge_header, credentials_header) = if challenge.status == 401 {
        ("WWW-Authenticate", "Authorization")
    } else {
        ("Proxy-Authenticate", "Proxy-Authorization")
    };
    let parsed = select_challenge(challenge.headers.get_all(challenge_header))
        .unwrap_or_else(|| panic!("no usable challenge in {challenge:?}"));
    let value = authorization(
        &parsed,
        user,
        PASSWORD,
        method,
        uri,
        &format!("n{}", unique()),
        1,
    );
    format!("{credentials_header}: {value}")
}

/// REGISTERs a device of `user` on `phone` (401, then credentials); returns the final answer.
fn register(phone: &mut Phone, user: &str) -> Response {
    let from = format!("<sip:{user}@localhost>;tag=r{}", unique());
    let to = format!("<sip:{user}@localhost>");
    let call_id = format!("reg-{}", unique());
    let mut extra = vec![
        format!(
            "Contact: <sip:{user}@{};transport={}>",
            phone.local,
            phone.transport().to_ascii_lowercase()
        ),
        "Expires: 600".to_owned(),
    ];
    let first = request_with(
        "REGISTER",
        "sip:localhost",
        &phone.via(),
        &from,
        &to,
        &call_id,
        &extra,
        b"",
    );
    let challenge = phone.exchange(&first);
    assert_eq!(challenge.status, 401, "{challenge:?}");
    extra.push(credentials(&challenge, user, "REGISTER", "sip:localhost"));
    let second = request_with(
        "REGISTER",
        "sip:localhost",
        &phone.via(),
        &from,
        &to,
        &call_id,
        &extra,
        b"",
    );
    phone.exchange(&second)
}

fn registered(phone: &mut Phone, user: &str) {
    let answer = register(phone, user);
    assert_eq!(answer.status, 200, "REGISTER of {user}: {answer:?}");
}

/// `from` sends `text` to `to`, whose device on `device` answers 200; returns the sender's
/// final answer after checking the device got the text.
fn message_through(sender: &mut Phone, from: &str, to: &str, device: &mut Phone, text: &str) {
    let from_header = format!("<sip:{from}@localhost>;tag=m{}", unique());
    let to_header = format!("<sip:{to}@localhost>");
    let uri = format!("sip:{to}@localhost");
    let call_id = format!("msg-{}", unique());
    let mut extra = vec!["Content-Type: text/plain;charset=UTF-8".to_owned()];
    let build = |phone: &Phone, extra: &[String]| {
        request_with(
            "MESSAGE",
            &uri,
            &phone.via(),
            &from_header,
            &to_header,
            &call_id,
            extra,
            text.as_bytes(),
        )
    };
    let challenge = sender.exchange(&build(sender, &extra));
    assert_eq!(challenge.status, 407, "{challenge:?}");
    extra.push(credentials(&challenge, from, "MESSAGE", &uri));
    sender.send(&build(sender, &extra));
    let delivered = device.next_request();
    assert_eq!(delivered.method.as_str(), "MESSAGE");
    assert_eq!(delivered.body, text.as_bytes(), "{delivered:?}");
    device.send(&response_to(&delivered, 200, "OK", "device").to_bytes());
    let answer = sender.response();
    assert!(
        matches!(answer.status, 200 | 202),
        "MESSAGE {from} → {to}: {answer:?}"
    );
}

fn node_with(extra: &[&str]) -> Node {
    let node = Node::start_with(extra.iter().map(|arg| (*arg).to_owned()).collect());
    node.add_user("alice");
    node.add_user("bob");
    node
}

fn metric(node: &Node, line_prefix: &str) -> Option<f64> {
    let (_, body) = common::http_get(node.ports.http, "/metrics")?;
    body.lines()
        .find(|line| line.starts_with(line_prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Indices of the entries of `states` that are `Seen::Closed`.
fn closed_indices(states: &[Seen]) -> Vec<usize> {
    states
        .iter()
        .enumerate()
        .filter(|(_, state)| **state == Seen::Closed)
        .map(|(index, _)| index)
        .collect()
}

#[test]
fn idle_connections_beyond_the_per_source_cap_are_closed_and_everyone_else_is_served() {
    let node = node_with(&[]);
    // bob's device registered (over TLS, from its own address) before the flood.
    let mut bob = Phone::tls_from(loopback(3), &node);
    registered(&mut bob, "bob");

    let surplus = 8;
    let flood = PER_SOURCE_MAX_DEFAULT + surplus;
    let attacker = loopback(1);
    let mut idle_tcp: Vec<TcpStream> = (0..flood)
        .map(|_| connect_from(attacker, node.sip_tcp_addr()))
        .collect();
    // On the TLS port: connections that never start a handshake, and ones that start it and
    // never finish, alternately.
    let mut idle_tls: Vec<TcpStream> = (0..flood)
        .map(|index| {
            let mut stream = connect_from(attacker, tls_port(&node));
            if index % 2 == 1 {
                stream.write_all(PARTIAL_CLIENT_HELLO).expect("write");
            }
            stream
        })
        .collect();
    for (what, streams) in [("TCP", &mut idle_tcp), ("TLS", &mut idle_tls)] {
        let states = wait_closed(streams, surplus, IO_TIMEOUT);
        assert_eq!(
            closed_indices(&states),
            (PER_SOURCE_MAX_DEFAULT..flood).collect::<Vec<_>>(),
            "{what}: the connections beyond the per-source cap are closed at once, the others \
             wait for their deadline"
        );
    }

    // Another source is served over TCP and TLS, and reaches bob's device on its flow.
    let mut alice_tcp = Phone::tcp_from(loopback(2), &node);
    registered(&mut alice_tcp, "alice");
    let mut alice_tls = Phone::tls_from(loopback(2), &node);
    registered(&mut alice_tls, "alice");
    message_through(
        &mut alice_tls,
        "alice",
        "bob",
        &mut bob,
        "through the flood",
    );

    // The connections within the cap were not closed before their deadline (default 32 s).
    for (what, streams) in [("TCP", &mut idle_tcp), ("TLS", &mut idle_tls)] {
        let states: Vec<Seen> = streams
            .iter_mut()
            .take(PER_SOURCE_MAX_DEFAULT)
            .map(seen)
            .collect();
        assert!(
            closed_indices(&states).is_empty(),
            "{what}: within the cap, closed: {:?}",
            closed_indices(&states)
        );
    }
    let refused = metric(
        &node,
        "pms_connections_refused_total{reason=\"per_source\"}",
    );
    assert_eq!(refused, Some(2.0 * surplus as f64));
}

#[test]
fn unauthenticated_connections_are_closed_at_the_deadline_and_authenticated_ones_stay() {
    let node = node_with(&["--sip-unauthenticated-timeout-secs", "2"]);
    node.add_user("carol");
    let mut bob = Phone::tls_from(loopback(3), &node);
    registered(&mut bob, "bob");
    let mut carol = Phone::udp_from(loopback(3), &node);
    registered(&mut carol, "carol");

    let attacker = loopback(1);
    let mut idle_tcp = connect_from(attacker, node.sip_tcp_addr());
    let mut idle_tls = connect_from(attacker, tls_port(&node));
    let mut half_handshake = connect_from(attacker, tls_port(&node));
    half_handshake
        .write_all(PARTIAL_CLIENT_HELLO)
        .expect("write");
    // A finished handshake, then nothing.
    let tls_no_request = Phone::tls_from(attacker, &node);
    // Requests that authenticate nobody: an OPTIONS (answered) and a REGISTER without
    // credentials (challenged).
    let mut options = Phone::tcp_from(attacker, &node);
    let answer = options.exchange(&request(
        "OPTIONS",
        "sip:localhost",
        &options,
        &format!("<sip:probe@localhost>;tag=o{}", unique()),
        "<sip:localhost>",
        &[],
    ));
    assert_eq!(answer.status, 200, "{answer:?}");
    let mut challenged = Phone::tcp_from(attacker, &node);
    let answer = challenged.exchange(&request(
        "REGISTER",
        "sip:localhost",
        &challenged,
        &format!("<sip:alice@localhost>;tag=r{}", unique()),
        "<sip:alice@localhost>",
        &["Contact: <sip:alice@127.0.0.1:5999>".to_owned()],
    ));
    assert_eq!(answer.status, 401, "{answer:?}");
    let mut udp_options = Phone::udp_from(attacker, &node);
    let answer = udp_options.exchange(&request(
        "OPTIONS",
        "sip:localhost",
        &udp_options,
        &format!("<sip:probe@localhost>;tag=o{}", unique()),
        "<sip:localhost>",
        &[],
    ));
    assert_eq!(answer.status, 200, "{answer:?}");

    let generous = Duration::from_secs(20);
    read_until_closed(&mut idle_tcp, "an idle TCP connection", generous);
    read_until_closed(
        &mut idle_tls,
        "a TLS connection without a handshake",
        generous,
    );
    read_until_closed(&mut half_handshake, "a half TLS handshake", generous);
    let Link::Tls(mut tls) = tls_no_request.link else {
        unreachable!("a TLS phone")
    };
    read_until_closed(
        &mut tls.sock,
        "a TLS connection without a request",
        generous,
    );
    let Link::Tcp(mut stream) = options.link else {
        unreachable!("a TCP phone")
    };
    read_until_closed(&mut stream, "a connection that only sent OPTIONS", generous);
    let Link::Tcp(mut stream) = challenged.link else {
        unreachable!("a TCP phone")
    };
    read_until_closed(
        &mut stream,
        "a connection that was only challenged",
        generous,
    );
    wait_until(
        "the unauthenticated UDP peer to be closed",
        generous,
        || metric(&node, "pms_connections_unauthenticated{transport=\"udp\"}") == Some(0.0),
    );
    for transport in ["tls", "tcp"] {
        wait_until(
            &format!("no unauthenticated {transport} connection"),
            IO_TIMEOUT,
            || {
                metric(
                    &node,
                    &format!("pms_connections_unauthenticated{{transport=\"{transport}\"}}"),
                ) == Some(0.0)
            },
        );
    }
    assert!(
        metric(
            &node,
            "pms_connections_refused_total{reason=\"unauthenticated_timeout\"}"
        )
        .is_some_and(|closed| closed >= 7.0),
        "every unauthenticated flow counted"
    );

    // The authenticated flows outlived the deadline: messages still reach bob's TLS device
    // and carol's UDP device.
    let mut alice = Phone::tls_from(loopback(2), &node);
    message_through(&mut alice, "alice", "bob", &mut bob, "after the deadline");
    let mut alice_udp = Phone::udp_from(loopback(2), &node);
    message_through(
        &mut alice_udp,
        "alice",
        "carol",
        &mut carol,
        "after the deadline, UDP",
    );
}

#[test]
fn a_full_unauthenticated_pool_closes_its_oldest_connection_for_a_new_client() {
    let unauthenticated_max = 8;
    let per_source_max = 4;
    let node = node_with(&[
        "--sip-unauthenticated-max",
        &unauthenticated_max.to_string(),
        "--sip-unauthenticated-per-source-max",
        &per_source_max.to_string(),
    ]);
    for (what, server) in [("TCP", node.sip_tcp_addr()), ("TLS", tls_port(&node))] {
        // 12 idle connections from three sources, oldest first: the first 4 make room.
        let mut idle: Vec<TcpStream> = (1..=3)
            .flat_map(|source| (0..per_source_max).map(move |_| loopback(source)))
            .map(|source| connect_from(source, server))
            .collect();
        let oldest_left = idle.len() - unauthenticated_max;
        let states = wait_closed(&mut idle, oldest_left, IO_TIMEOUT);
        assert_eq!(
            closed_indices(&states),
            (0..oldest_left).collect::<Vec<_>>(),
            "{what}: the oldest unauthenticated connections are closed first"
        );
        // A new client still gets in (closing the oldest idle one), and is served.
        let mut alice = if what == "TCP" {
            Phone::tcp_from(loopback(4), &node)
        } else {
            Phone::tls_from(loopback(4), &node)
        };
        registered(&mut alice, "alice");
        let states = wait_closed(&mut idle, oldest_left + 1, IO_TIMEOUT);
        assert_eq!(
            closed_indices(&states),
            (0..=oldest_left).collect::<Vec<_>>(),
            "{what}: the new client took the place of the oldest idle connection"
        );
    }
    assert!(
        metric(
            &node,
            "pms_connections_refused_total{reason=\"unauthenticated_max\"}"
        )
        .is_some_and(|evicted| evicted >= 10.0)
    );
}

/// The source of the `index`th flood datagram: a loopback address no other one uses
/// (127.1.0.1, 127.1.0.2, …), any port.
fn flood_source(index: usize) -> SocketAddr {
    let host = u32::from(Ipv4Addr::new(127, 1, 0, 0)) + u32::try_from(index).expect("index") + 1;
    SocketAddr::from((Ipv4Addr::from(host), 0))
}

#[test]
fn a_flood_of_one_datagram_udp_peers_neither_locks_out_a_new_register_nor_grows_state() {
    let node = node_with(&[]);
    // bob's UDP device registered before the flood.
    let mut bob = Phone::udp_from(loopback(3), &node);
    registered(&mut bob, "bob");
    let server = udp_port(&node);

    let mut probe = Phone::udp_from(loopback(1), &node);
    let answered_200 = || {
        metric(
            &node,
            "pms_sip_requests_total{method=\"OPTIONS\",status=\"200\"}",
        )
        .unwrap_or(0.0)
    };
    let answered_before = answered_200();
    let mut probes = 0;
    let mut sent = 0;
    while sent < UDP_FLOOD_PEERS {
        for _ in 0..UDP_FLOOD_BATCH {
            // A fresh socket per datagram on an address of its own (ports alone repeat as
            // the kernel reuses them), closed after sending, as a spoofing attacker's packets
            // would look.
            let socket = UdpSocket::bind(flood_source(sent)).expect("bind");
            let bytes = request_with(
                "OPTIONS",
                "sip:localhost",
                &format!(
                    "Via: SIP/2.0/UDP {};branch=z9hG4bKflood{sent}",
                    socket.local_addr().expect("addr")
                ),
                &format!("<sip:flood@localhost>;tag=f{sent}"),
                "<sip:localhost>",
                &format!("flood-{sent}"),
                &[],
                b"",
            );
            socket.send_to(&bytes, server).expect("send");
            sent += 1;
        }
        let options = request(
            "OPTIONS",
            "sip:localhost",
            &probe,
            &format!("<sip:probe@localhost>;tag=p{}", unique()),
            "<sip:localhost>",
            &[],
        );
        let answer = probe.exchange_retransmitting(&options);
        assert_eq!(answer.status, 200, "after {sent} datagrams: {answer:?}");
        probes += 1;
    }

    // A new UDP device gets its 401 and its 200.
    let mut alice = Phone::udp_from(loopback(2), &node);
    registered(&mut alice, "alice");
    // The node did see (and answer) more new peers than the old table could hold.
    let flood_answered = answered_200() - answered_before - f64::from(probes);
    assert!(
        flood_answered > OLD_UDP_PEERS_MAX as f64,
        "flood OPTIONS answered: {flood_answered}"
    );
    let unauthenticated = metric(&node, "pms_connections_unauthenticated{transport=\"udp\"}");
    assert!(
        unauthenticated.is_some_and(|peers| peers <= UNAUTHENTICATED_MAX_DEFAULT as f64),
        "unauthenticated UDP peers: {unauthenticated:?}"
    );
    // Every UDP session: bob's, and at most the unauthenticated pool (alice's and the
    // probe's included); closed ones stop as their `Close` is handled.
    wait_until("UDP sessions within their bound", IO_TIMEOUT, || {
        metric(&node, "pms_connections_open{transport=\"udp\"}")
            .is_some_and(|peers| peers <= (UNAUTHENTICATED_MAX_DEFAULT + 1) as f64)
    });
    // bob's device, authenticated before the flood, still receives on its flow.
    message_through(&mut alice, "alice", "bob", &mut bob, "after the UDP flood");
}
