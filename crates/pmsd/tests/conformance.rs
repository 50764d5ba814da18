//! RFC 3261 / 3428 / 3581 / 5438 / 5626 / 7616 MUSTs, each checked on raw sockets against a
//! real `pmsd`, with the exact status line and headers a phone would see:
//! retransmissions absorbed (100 Trying while pending, the same final answer after), 420 with
//! `Unsupported`, `received`/`rport`, the digest `uri`, a short UDP datagram, a REGISTER for
//! another domain, a From without a tag, OPTIONS capabilities, `Require: outbound` with
//! `Flow-Timer` and counted keep-alives, a closed flow that is offline at once,
//! `Content-Encoding` kept byte for byte (415 with `Accept-Encoding` for unknown codings), and
//! IMDNs requested inside CPIM answered inside CPIM.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Node, PASSWORD, wait_until};
use pms_sip::digest::{authorization, select_challenge};
use pms_sip::framing::{Frame, StreamFramer};
use pms_sip::message::{Request, Response, SipMessage, parse, response_to};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

static UNIQUE: AtomicU64 = AtomicU64::new(1);

fn unique() -> u64 {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

/// A phone on one TCP connection or one UDP socket.
struct Phone {
    transport: PhoneTransport,
    framer: StreamFramer,
    pending: Vec<SipMessage>,
}

enum PhoneTransport {
    Tcp(TcpStream),
    Udp(UdpSocket, SocketAddr),
}

impl Phone {
    fn tcp(node: &Node) -> Phone {
        let stream = TcpStream::connect(node.sip_tcp_addr()).expect("connect");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        Phone {
            transport: PhoneTransport::Tcp(stream),
            framer: StreamFramer::new(64 * 1024, 64 * 1024),
            pending: Vec::new(),
        }
    }

    fn udp(node: &Node) -> Phone {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        socket
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        Phone {
            transport: PhoneTransport::Udp(socket, node.sip_tcp_addr()),
            framer: StreamFramer::new(64 * 1024, 64 * 1024),
            pending: Vec::new(),
        }
    }

    fn transport_token(&self) -> &'static str {
        match self.transport {
            PhoneTransport::Tcp(_) => "TCP",
            PhoneTransport::Udp(..) => "UDP",
        }
    }

    fn local(&self) -> SocketAddr {
        match &self.transport {
            PhoneTransport::Tcp(stream) => stream.local_addr().expect("addr"),
            PhoneTransport::Udp(socket, _) => socket.local_addr().expect("addr"),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        match &mut self.transport {
            PhoneTransport::Tcp(stream) => stream.write_all(bytes).expect("write"),
            PhoneTransport::Udp(socket, server) => {
                socket.send_to(bytes, *server).expect("send_to");
            }
        }
    }

    /// Raw bytes from the server (one datagram, or what the stream had); `None` on timeout.
    fn read_raw(&mut self) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; 65_536];
        let read = match &mut self.transport {
            PhoneTransport::Tcp(stream) => stream.read(&mut buffer),
            PhoneTransport::Udp(socket, _) => socket.recv(&mut buffer),
        };
        match read {
            Ok(0) => panic!("server closed the connection"),
            Ok(read) => Some(buffer[..read].to_vec()),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                None
            }
            Err(error) => panic!("read: {error}"),
        }
    }

    /// The next SIP message (keep-alives skipped); `None` when nothing came in time.
    fn next_message(&mut self) -> Option<SipMessage> {
        if !self.pending.is_empty() {
            return Some(self.pending.remove(0));
        }
        loop {
            if let PhoneTransport::Udp(..) = self.transport {
                let bytes = self.read_raw()?;
                if bytes.iter().all(|byte| *byte == b'\r' || *byte == b'\n') {
                    continue;
                }
                return Some(parse(&bytes).expect("a SIP datagram"));
            }
            while let Some(frame) = self.framer.next_frame() {
                if let Frame::Message(bytes) = frame.expect("framing") {
                    return Some(parse(&bytes).expect("a SIP message"));
                }
            }
            let bytes = self.read_raw()?;
            self.framer.push(&bytes);
        }
    }

    /// The next message that `wanted` accepts; others that arrive meanwhile are kept, in
    /// order, for later calls.
    fn next_where(&mut self, what: &str, wanted: fn(&SipMessage) -> bool) -> SipMessage {
        let mut skipped = Vec::new();
        let found = loop {
            match self.next_message() {
                Some(message) if wanted(&message) => break message,
                Some(other) => skipped.push(other),
                None => panic!("no {what} within {READ_TIMEOUT:?}"),
            }
        };
        self.pending.extend(skipped);
        found
    }

    fn response(&mut self) -> Response {
        match self.next_where("response", |message| {
            matches!(message, SipMessage::Response(_))
        }) {
            SipMessage::Response(response) => response,
            SipMessage::Request(_) => unreachable!("filtered"),
        }
    }

    fn next_request(&mut self) -> Request {
        match self.next_where("request", |message| {
            matches!(message, SipMessage::Request(_))
        }) {
            SipMessage::Request(request) => request,
            SipMessage::Response(_) => unreachable!("filtered"),
        }
    }

    fn exchange(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.response()
    }

    fn answer(&mut self, request: &Request, status: u16) {
        let response = response_to(request, status, "OK", "device");
        self.send(&response.to_bytes());
    }

    fn via(&self, branch: &str) -> String {
        format!(
            "Via: SIP/2.0/{} {};branch=z9hG4bK{branch}",
            self.transport_token(),
            self.local()
        )
    }
}

/// A request with the usual headers; `extra` lines go before Content-Length.
#[allow(clippy::too_many_arguments)] // each header a test varies is an argument, named at the call
fn request(
    method: &str,
    uri: &str,
    via: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    extra: &[String],
    body: &[u8],
) -> Vec<u8> {
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

/// The fixed headers of one client transaction; each attempt (the first, then the one answering
/// the challenge) gets its own Via branch and CSeq.
struct Transaction<'a> {
    method: &'a str,
    uri: &'a str,
    from: &'a str,
    to: &'a str,
    call_id: &'a str,
    extra: &'a [String],
}

impl Transaction<'_> {
    /// Attempt `cseq` on `phone`, with the credentials line `auth` when answering a challenge.
    fn attempt(&self, phone: &Phone, cseq: u32, auth: Option<String>, body: &[u8]) -> Vec<u8> {
        let mut lines = self.extra.to_vec();
        lines.extend(auth);
        request(
            self.method,
            self.uri,
            &phone.via(&format!("{}-{cseq}", self.call_id)),
            self.from,
            self.to,
            self.call_id,
            cseq,
            &lines,
            body,
        )
    }
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
        &format!("c{}", unique()),
        1,
    );
    format!("{credentials_header}: {value}")
}

/// REGISTERs `user`'s device on `phone` (with RFC 5626 instance and reg-id, and
/// `Supported: outbound` when `outbound`); returns the 200.
fn register(phone: &mut Phone, user: &str, outbound: bool) -> Response {
    let local = phone.local();
    let mut extra = vec![
        format!(
            "Contact: <sip:{user}@{local};transport={}>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-{:012}>\";reg-id=1",
            phone.transport_token().to_ascii_lowercase(),
            unique()
        ),
        "Expires: 600".to_string(),
    ];
    if outbound {
        extra.push("Supported: outbound, path".to_string());
    }
    let registered = register_with(phone, user, &extra);
    assert_eq!(registered.status, 200, "{registered:?}");
    registered
}

/// A REGISTER of `user` on `phone` with the `extra` header lines: the 401 is answered with
/// credentials; returns the final answer.
fn register_with(phone: &mut Phone, user: &str, extra: &[String]) -> Response {
    let call_id = format!("reg-{}", unique());
    let from = format!("<sip:{user}@localhost>;tag=r{}", unique());
    let to = format!("<sip:{user}@localhost>");
    let transaction = Transaction {
        method: "REGISTER",
        uri: "sip:localhost",
        from: &from,
        to: &to,
        call_id: &call_id,
        extra,
    };
    let build = |phone: &Phone, cseq: u32, auth: Option<String>| {
        transaction.attempt(phone, cseq, auth, b"")
    };
    let challenge = phone.exchange(&build(phone, 1, None));
    assert_eq!(challenge.status, 401, "{challenge:?}");
    let auth = credentials(&challenge, user, "REGISTER", "sip:localhost");
    phone.exchange(&build(phone, 2, Some(auth)))
}

/// A MESSAGE from alice to bob on `phone`: the challenge is answered; returns the second
/// request's bytes (to retransmit) and its answer.
fn message(
    phone: &mut Phone,
    extra: &[String],
    body: &[u8],
    digest_uri: Option<&str>,
) -> (Vec<u8>, Response) {
    let call_id = format!("msg-{}", unique());
    let from = format!("<sip:alice@localhost>;tag=m{}", unique());
    let transaction = Transaction {
        method: "MESSAGE",
        uri: "sip:bob@localhost",
        from: &from,
        to: "<sip:bob@localhost>",
        call_id: &call_id,
        extra,
    };
    let build = |phone: &Phone, cseq: u32, auth: Option<String>| {
        transaction.attempt(phone, cseq, auth, body)
    };
    let challenge = phone.exchange(&build(phone, 1, None));
    if challenge.status != 407 {
        return (Vec::new(), challenge);
    }
    let auth = credentials(
        &challenge,
        "alice",
        "MESSAGE",
        digest_uri.unwrap_or("sip:bob@localhost"),
    );
    let bytes = build(phone, 2, Some(auth));
    let answer = phone.exchange(&bytes);
    (bytes, answer)
}

fn node_with(extra: &[&str]) -> Node {
    let node = Node::start_with(extra.iter().map(|arg| arg.to_string()).collect());
    node.add_user("alice");
    node.add_user("bob");
    node
}

fn status_line(response: &Response) -> String {
    format!("{} {}", response.status, response.reason)
}

fn metric(node: &Node, line_prefix: &str) -> Option<f64> {
    let (_, body) = common::http_get(node.ports.http, "/metrics")?;
    body.lines()
        .find(|line| line.starts_with(line_prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn a_retransmitted_message_gets_100_while_pending_and_the_same_answer_after() {
    let node = node_with(&["--sync-window-ms", "8000"]);
    let mut bob = Phone::tcp(&node);
    register(&mut bob, "bob", false);
    let mut alice = Phone::udp(&node);
    let (bytes, first) = {
        // The MESSAGE's final answer waits for bob's device (the synchronous window).
        let call_id = format!("retx-{}", unique());
        let from = format!("<sip:alice@localhost>;tag=m{}", unique());
        let build = |cseq: u32, auth: Option<String>, via: &str| {
            let mut lines = vec!["Content-Type: text/plain;charset=UTF-8".to_string()];
            lines.extend(auth);
            request(
                "MESSAGE",
                "sip:bob@localhost",
                via,
                &from,
                "<sip:bob@localhost>",
                &call_id,
                cseq,
                &lines,
                "retransmitted 😀".as_bytes(),
            )
        };
        let challenge = alice.exchange(&build(1, None, &alice.via("retx-1")));
        assert_eq!(challenge.status, 407);
        let auth = credentials(&challenge, "alice", "MESSAGE", "sip:bob@localhost");
        let bytes = build(2, Some(auth), &alice.via("retx-2"));
        alice.send(&bytes);
        // bob's device gets it and does not answer yet; alice's UDP stack retransmits.
        let delivered = bob.next_request();
        alice.send(&bytes);
        let trying = alice.response();
        assert_eq!(status_line(&trying), "100 Trying", "{trying:?}");
        bob.answer(&delivered, 200);
        (bytes, alice.response())
    };
    assert_eq!(status_line(&first), "200 OK", "{first:?}");
    alice.send(&bytes);
    let replayed = alice.response();
    assert_eq!(
        (
            status_line(&replayed),
            replayed.headers.get("X-PMS-Message-ID")
        ),
        (status_line(&first), first.headers.get("X-PMS-Message-ID")),
        "a retransmission after the final answer gets the same answer, not 403"
    );
}

#[test]
fn unknown_require_option_tags_get_420_with_unsupported() {
    let node = node_with(&[]);
    for transport in ["tcp", "udp"] {
        let mut phone = if transport == "tcp" {
            Phone::tcp(&node)
        } else {
            Phone::udp(&node)
        };
        for method in ["OPTIONS", "MESSAGE"] {
            let answer = phone.exchange(&request(
                method,
                "sip:bob@localhost",
                &phone.via(&format!("req{}", unique())),
                "<sip:alice@localhost>;tag=a1",
                "<sip:bob@localhost>",
                &format!("req-{}", unique()),
                1,
                &[
                    "Require: 100rel, outbound, x-nonsense".to_string(),
                    "Content-Type: text/plain".to_string(),
                ],
                b"hi",
            ));
            assert_eq!(
                status_line(&answer),
                "420 Bad Extension",
                "{method} {answer:?}"
            );
            assert_eq!(
                answer.headers.get("Unsupported"),
                Some("100rel, x-nonsense"),
                "{method}"
            );
        }
    }
}

#[test]
fn responses_carry_received_and_rport_in_the_top_via() {
    let node = node_with(&[]);
    let mut phone = Phone::udp(&node);
    let local = phone.local();
    let answer = phone.exchange(&request(
        "OPTIONS",
        "sip:localhost",
        "Via: SIP/2.0/UDP phone.invalid:5070;rport;branch=z9hG4bKrport1",
        "<sip:alice@localhost>;tag=a1",
        "<sip:localhost>",
        "rport-1",
        1,
        &[],
        b"",
    ));
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers.get("Via"),
        Some(
            format!(
                "SIP/2.0/UDP phone.invalid:5070;rport={};branch=z9hG4bKrport1;received=127.0.0.1",
                local.port()
            )
            .as_str()
        )
    );
    let mut tcp = Phone::tcp(&node);
    let answer = tcp.exchange(&request(
        "OPTIONS",
        "sip:localhost",
        "Via: SIP/2.0/TCP 192.0.2.9:5070;branch=z9hG4bKrecv1",
        "<sip:alice@localhost>;tag=a1",
        "<sip:localhost>",
        "received-1",
        1,
        &[],
        b"",
    ));
    assert_eq!(
        answer.headers.get("Via"),
        Some("SIP/2.0/TCP 192.0.2.9:5070;branch=z9hG4bKrecv1;received=127.0.0.1")
    );
}

#[test]
fn credentials_computed_for_another_uri_are_refused() {
    let node = node_with(&[]);
    let mut phone = Phone::tcp(&node);
    let (_, answer) = message(
        &mut phone,
        &["Content-Type: text/plain".to_string()],
        b"digest for another uri",
        Some("sip:carol@localhost"),
    );
    assert_eq!(
        status_line(&answer),
        "400 Digest uri does not match the Request-URI"
    );
    // The same credentials for the right URI are accepted.
    let (_, answer) = message(
        &mut phone,
        &["Content-Type: text/plain".to_string()],
        b"digest for the Request-URI",
        None,
    );
    assert_eq!(answer.status, 202, "{answer:?}");
}

#[test]
fn a_udp_datagram_shorter_than_its_content_length_gets_400() {
    let node = node_with(&[]);
    let mut phone = Phone::udp(&node);
    let mut bytes = request(
        "MESSAGE",
        "sip:bob@localhost",
        &phone.via("short1"),
        "<sip:alice@localhost>;tag=a1",
        "<sip:bob@localhost>",
        "short-1",
        1,
        &["Content-Type: text/plain".to_string()],
        b"only ten b",
    );
    let text = String::from_utf8(bytes.clone()).unwrap();
    bytes = text
        .replace("Content-Length: 10", "Content-Length: 100")
        .into_bytes();
    let answer = phone.exchange(&bytes);
    assert_eq!(
        status_line(&answer),
        "400 Content-Length exceeds the datagram"
    );
    assert_eq!(answer.headers.get("Call-ID"), Some("short-1"));
}

#[test]
fn a_register_for_another_domain_or_without_from_tag_is_refused_and_changes_nothing() {
    let node = node_with(&[]);
    let mut bob = Phone::tcp(&node);
    register(&mut bob, "bob", false);
    let mut intruder = Phone::tcp(&node);
    let answer = intruder.exchange(&request(
        "REGISTER",
        "sip:example.org",
        &intruder.via("dom1"),
        "<sip:bob@localhost>;tag=d1",
        "<sip:bob@localhost>",
        "dom-1",
        1,
        &["Contact: *".to_string(), "Expires: 0".to_string()],
        b"",
    ));
    assert_eq!(
        status_line(&answer),
        "404 Domain example.org is not served here"
    );
    for method in ["OPTIONS", "REGISTER", "MESSAGE"] {
        let answer = intruder.exchange(&request(
            method,
            "sip:bob@localhost",
            &intruder.via(&format!("notag{}", unique())),
            "<sip:bob@localhost>",
            "<sip:bob@localhost>",
            &format!("notag-{}", unique()),
            1,
            &["Content-Type: text/plain".to_string()],
            b"x",
        ));
        assert_eq!(
            status_line(&answer),
            "400 From header has no tag",
            "{method}"
        );
    }
    // bob's binding is still there: a message reaches his device.
    let mut alice = Phone::tcp(&node);
    let (_, answer) = message(
        &mut alice,
        &["Content-Type: text/plain".to_string()],
        b"still registered",
        None,
    );
    let delivered = bob.next_request();
    assert_eq!(delivered.body, b"still registered");
    bob.answer(&delivered, 200);
    assert!(matches!(answer.status, 200 | 202), "{answer:?}");
}

#[test]
fn options_lists_methods_types_encodings_and_option_tags() {
    let node = node_with(&[]);
    let mut phone = Phone::tcp(&node);
    let answer = phone.exchange(&request(
        "OPTIONS",
        "sip:localhost",
        &phone.via("opt1"),
        "<sip:alice@localhost>;tag=o1",
        "<sip:localhost>",
        "opt-1",
        1,
        &[],
        b"",
    ));
    assert_eq!(status_line(&answer), "200 OK");
    assert_eq!(
        answer.headers.get("Allow"),
        Some("REGISTER, MESSAGE, OPTIONS")
    );
    assert_eq!(
        answer.headers.get("Accept"),
        Some("text/plain, message/cpim, message/imdn+xml")
    );
    assert_eq!(
        answer.headers.get("Accept-Encoding"),
        Some("identity, deflate, gzip")
    );
    assert_eq!(answer.headers.get("Supported"), Some("outbound"));
}

#[test]
fn an_outbound_registration_gets_require_outbound_and_its_keep_alives_are_answered() {
    let node = node_with(&["--flow-timer-secs", "25"]);
    let mut plain = Phone::tcp(&node);
    let registered = register(&mut plain, "alice", false);
    assert_eq!(registered.headers.get("Require"), None);
    assert_eq!(registered.headers.get("Flow-Timer"), None);
    let mut phone = Phone::tcp(&node);
    let registered = register(&mut phone, "bob", true);
    assert_eq!(registered.headers.get("Require"), Some("outbound"));
    assert_eq!(registered.headers.get("Flow-Timer"), Some("25"));
    let before = metric(&node, "pms_sip_keepalives_total{transport=\"tcp\"}").unwrap_or(0.0);
    phone.send(b"\r\n\r\n");
    assert_eq!(phone.read_raw().as_deref(), Some(&b"\r\n"[..]), "pong");
    let after = metric(&node, "pms_sip_keepalives_total{transport=\"tcp\"}");
    assert_eq!(after, Some(before + 1.0));
}

#[test]
fn a_device_whose_connection_closed_is_offline_at_once() {
    // A window far longer than the read timeout: waiting for a dead flow would fail the read.
    let node = node_with(&["--sync-window-ms", "30000"]);
    let mut bob = Phone::tcp(&node);
    register(&mut bob, "bob", false);
    drop(bob);
    wait_until(
        "bob's connection to close on the node",
        READ_TIMEOUT,
        || metric(&node, "pms_connections_open{transport=\"tcp\"}") == Some(0.0),
    );
    let mut alice = Phone::tcp(&node);
    let (_, answer) = message(
        &mut alice,
        &["Content-Type: text/plain".to_string()],
        b"bob's phone went away",
        None,
    );
    assert_eq!(status_line(&answer), "202 Accepted");
}

#[test]
fn content_encodings_are_kept_byte_for_byte_and_unknown_ones_get_415() {
    let node = node_with(&[]);
    let mut alice = Phone::tcp(&node);
    let (_, refused) = message(
        &mut alice,
        &[
            "Content-Type: text/plain".to_string(),
            "Content-Encoding: br".to_string(),
        ],
        b"\x0b\x02\x80hi\x03",
        None,
    );
    assert_eq!(status_line(&refused), "415 Unsupported Content-Encoding");
    assert_eq!(
        refused.headers.get("Accept-Encoding"),
        Some("identity, deflate, gzip")
    );
    let text = "Grüße, compressed 😀".repeat(4);
    let deflated = pms_sip::encoding::deflate(text.as_bytes());
    let (_, stored) = message(
        &mut alice,
        &[
            "Content-Type: text/plain;charset=UTF-8".to_string(),
            "Content-Encoding: deflate".to_string(),
        ],
        &deflated,
        None,
    );
    assert_eq!(status_line(&stored), "202 Accepted");
    // A CPIM body that is deflated (as liblinphone sends its reports) is read, not refused.
    let cpim = pms_sip::imdn::build_cpim(
        &[
            ("From", "<sip:alice@localhost>"),
            ("To", "<sip:bob@localhost>"),
            ("NS", "imdn <urn:ietf:params:imdn>"),
            ("imdn.Message-ID", "deflated-cpim-1"),
        ],
        "text/plain;charset=UTF-8",
        "inside deflated CPIM".as_bytes(),
    );
    let (_, cpim_stored) = message(
        &mut alice,
        &[
            "Content-Type: message/cpim".to_string(),
            "Content-Encoding: gzip".to_string(),
        ],
        &pms_sip::encoding::gzip(&cpim),
        None,
    );
    assert_eq!(status_line(&cpim_stored), "202 Accepted");
    let mut bob = Phone::tcp(&node);
    register(&mut bob, "bob", false);
    let first = bob.next_request();
    assert_eq!(first.headers.get("Content-Encoding"), Some("deflate"));
    assert_eq!(
        first.headers.get("Content-Type"),
        Some("text/plain;charset=UTF-8")
    );
    assert_eq!(
        first.body, deflated,
        "delivered byte for byte, still deflated"
    );
    bob.answer(&first, 200);
    let second = bob.next_request();
    assert_eq!(second.headers.get("Content-Encoding"), Some("gzip"));
    assert_eq!(
        pms_sip::encoding::decoded_body(&second)
            .expect("gzip")
            .as_ref(),
        &cpim[..]
    );
    bob.answer(&second, 200);
}

#[test]
fn an_imdn_requested_inside_cpim_is_answered_inside_cpim() {
    let node = node_with(&[]);
    let mut alice_device = Phone::tcp(&node);
    register(&mut alice_device, "alice", false);
    let cpim = pms_sip::imdn::build_cpim(
        &[
            ("From", "<sip:alice@localhost>"),
            ("To", "<sip:bob@localhost>"),
            ("DateTime", "2026-12-01T06:00:00Z"),
            ("NS", "imdn <urn:ietf:params:imdn>"),
            ("imdn.Message-ID", "cpim-imdn-1"),
            (
                "imdn.Disposition-Notification",
                "positive-delivery, negative-delivery, display",
            ),
        ],
        "text/plain;charset=UTF-8",
        "report back in CPIM 😀".as_bytes(),
    );
    let mut alice = Phone::tcp(&node);
    let (_, stored) = message(
        &mut alice,
        &["Content-Type: message/cpim".to_string()],
        &cpim,
        None,
    );
    assert_eq!(status_line(&stored), "202 Accepted");
    let mut bob = Phone::tcp(&node);
    register(&mut bob, "bob", false);
    let delivered = bob.next_request();
    assert_eq!(delivered.body, cpim, "the CPIM body arrives byte for byte");
    assert_eq!(
        delivered.headers.get("Disposition-Notification"),
        None,
        "the request is inside the CPIM body, not repeated as a SIP header"
    );
    bob.answer(&delivered, 200);
    let report = alice_device.next_request();
    alice_device.answer(&report, 200);
    assert_eq!(report.headers.get("Content-Type"), Some("message/cpim"));
    assert_eq!(report.headers.get("Disposition-Notification"), None);
    let wrapper = pms_sip::imdn::parse_cpim(&report.body).expect("CPIM");
    assert_eq!(wrapper.header("From"), Some("<sip:bob@localhost>"));
    assert_eq!(wrapper.header("To"), Some("<sip:alice@localhost>"));
    assert_eq!(wrapper.content_type, "message/imdn+xml");
    assert!(
        wrapper
            .content_headers
            .iter()
            .any(|(name, value)| name == "Content-Disposition" && value == "notification"),
        "{wrapper:?}"
    );
    let imdn = pms_sip::imdn::imdn_report(&report).expect("an IMDN");
    assert_eq!(imdn.message_id, "cpim-imdn-1");
    assert_eq!(imdn.status, pms_sip::ImdnStatus::Delivered);
    // bob's display notification (deflated CPIM, as liblinphone sends it) reaches alice.
    let display = pms_sip::imdn::build_cpim_imdn(
        "sip:bob@localhost",
        "sip:alice@localhost",
        "2026-12-01T06:00:01Z",
        "display-1",
        &pms_sip::imdn::build_imdn(
            "cpim-imdn-1",
            "2026-12-01T06:00:01Z",
            "sip:bob@localhost",
            "sip:bob@localhost",
            pms_sip::ImdnStatus::Displayed,
        ),
    );
    let call_id = format!("display-{}", unique());
    let from = format!("<sip:bob@localhost>;tag=b{}", unique());
    let build = |phone: &Phone, cseq: u32, auth: Option<String>| {
        let mut lines = vec![
            "Content-Type: message/cpim".to_string(),
            "Content-Encoding: deflate".to_string(),
        ];
        lines.extend(auth);
        request(
            "MESSAGE",
            "sip:alice@localhost",
            &phone.via(&format!("{call_id}-{cseq}")),
            &from,
            "<sip:alice@localhost>",
            &call_id,
            cseq,
            &lines,
            &pms_sip::encoding::deflate(&display),
        )
    };
    let challenge = bob.exchange(&build(&bob, 1, None));
    let auth = credentials(&challenge, "bob", "MESSAGE", "sip:alice@localhost");
    let sent = bob.exchange(&build(&bob, 2, Some(auth)));
    assert!(matches!(sent.status, 200 | 202), "{sent:?}");
    let shown = alice_device.next_request();
    alice_device.answer(&shown, 200);
    let shown = pms_sip::imdn::imdn_report(&shown).expect("the display notification");
    assert_eq!(
        (shown.message_id.as_str(), shown.status),
        ("cpim-imdn-1", pms_sip::ImdnStatus::Displayed)
    );
}

/// The algorithms of the `WWW-Authenticate` challenges a REGISTER for `user` gets, in order.
fn offered_algorithms(phone: &mut Phone, user: &str) -> Vec<String> {
    let challenge = phone.exchange(&request(
        "REGISTER",
        "sip:localhost",
        &phone.via(&format!("pol{}", unique())),
        &format!("<sip:{user}@localhost>;tag=p{}", unique()),
        &format!("<sip:{user}@localhost>"),
        &format!("pol-{}", unique()),
        1,
        &[format!("Contact: <sip:{user}@{}>", phone.local())],
        b"",
    ));
    assert_eq!(challenge.status, 401, "{challenge:?}");
    challenge
        .headers
        .get_all("WWW-Authenticate")
        .iter()
        .map(|value| {
            pms_sip::digest::parse_challenge(value)
                .expect("challenge parses")
                .algorithm
                .as_str()
                .to_string()
        })
        .collect()
}

#[test]
fn an_account_digest_policy_orders_its_challenges_and_can_be_changed() {
    let node = node_with(&[]);
    let added = node.run_pmsctl(&[
        "user",
        "add",
        "carol",
        "--password",
        PASSWORD,
        "--digest-algorithms",
        "md5,sha256",
    ]);
    assert!(added.status.success(), "{added:?}");
    let mut phone = Phone::tcp(&node);
    assert_eq!(offered_algorithms(&mut phone, "carol"), ["MD5", "SHA-256"]);
    assert_eq!(
        offered_algorithms(&mut phone, "alice"),
        ["SHA-256", "MD5"],
        "other accounts keep the node's policy"
    );
    assert_eq!(
        offered_algorithms(&mut phone, "nobody"),
        ["SHA-256", "MD5"],
        "an unknown user gets the node's policy, like everyone else"
    );
    let listed = node.run_pmsctl(&["user", "list", "--json"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains(
            r#"{"user":"carol","messaging_enabled":true,"digest_algorithms":["md5","sha256"]}"#
        ),
        "{listed}"
    );
    let changed = node.run_pmsctl(&["user", "set-digest", "carol", "sha256"]);
    assert_eq!(
        String::from_utf8_lossy(&changed.stdout),
        "digest algorithms of user carol: sha256\n"
    );
    assert_eq!(offered_algorithms(&mut phone, "carol"), ["SHA-256"]);
    // An MD5 answer is no longer accepted for carol: she is challenged again, with SHA-256.
    let call_id = format!("md5-{}", unique());
    let from = format!("<sip:carol@localhost>;tag=c{}", unique());
    let transaction = Transaction {
        method: "REGISTER",
        uri: "sip:localhost",
        from: &from,
        to: "<sip:carol@localhost>",
        call_id: &call_id,
        extra: &[format!("Contact: <sip:carol@{}>", phone.local())],
    };
    let build = |phone: &Phone, cseq: u32, auth: Option<String>| {
        transaction.attempt(phone, cseq, auth, b"")
    };
    let challenge = phone.exchange(&build(&phone, 1, None));
    let sha = pms_sip::digest::parse_challenge(
        challenge
            .headers
            .get("WWW-Authenticate")
            .expect("challenge"),
    )
    .expect("parses");
    let md5_answer = authorization(
        &sha,
        "carol",
        PASSWORD,
        "REGISTER",
        "sip:localhost",
        "c-md5",
        1,
    )
    .replace("algorithm=SHA-256", "algorithm=MD5");
    let refused = phone.exchange(&build(
        &phone,
        2,
        Some(format!("Authorization: {md5_answer}")),
    ));
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.headers.get_all("WWW-Authenticate").len(), 1);
    // Only the HA1 values a policy allows are stored: allowing MD5 again needs the password.
    let without_password = node.run_pmsctl(&["user", "set-digest", "carol", "default"]);
    assert!(!without_password.status.success());
    assert!(
        String::from_utf8_lossy(&without_password.stderr).contains("--password"),
        "{without_password:?}"
    );
    let reset = node.run_pmsctl(&[
        "user",
        "set-digest",
        "carol",
        "default",
        "--password",
        PASSWORD,
    ]);
    assert!(reset.status.success(), "{reset:?}");
    assert_eq!(offered_algorithms(&mut phone, "carol"), ["SHA-256", "MD5"]);
    let bad = node.run_pmsctl(&["user", "set-digest", "carol", "sha1"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown algorithm \"sha1\""),
        "{bad:?}"
    );
}

/// A REGISTER of `user` on `phone` with `contacts` Contact headers (each its own device).
fn register_many(phone: &mut Phone, user: &str, contacts: usize) -> Response {
    let local = phone.local();
    let mut extra: Vec<String> = (0..contacts)
        .map(|n| format!("Contact: <sip:{user}-{n}@{local};transport=tcp>"))
        .collect();
    extra.push("Expires: 600".to_string());
    register_with(phone, user, &extra)
}

#[test]
fn a_register_is_one_commit_applied_whole_or_not_at_all() {
    let node = node_with(&[]);
    let commits = || metric(&node, "pms_raft_commit_latency_seconds_count").expect("metric");
    let mut phone = Phone::tcp(&node);
    let before = commits();
    let registered = register_many(&mut phone, "bob", 10);
    assert_eq!(registered.status, 200, "{registered:?}");
    assert_eq!(registered.headers.get_all("Contact").len(), 10);
    assert_eq!(commits(), before + 1.0, "ten Contacts, one Raft commit");
    // Seventeen devices exceed the per-user maximum (16): refused as a whole.
    let refused = register_many(&mut phone, "bob", 17);
    assert_eq!(status_line(&refused), "403 Too many registered devices");
    let again = register_many(&mut phone, "bob", 10);
    assert_eq!(
        again.headers.get_all("Contact").len(),
        10,
        "none of the refused REGISTER's bindings were kept: {again:?}"
    );
}

#[test]
fn a_nonce_from_before_a_restart_is_re_challenged_as_stale() {
    let mut node = node_with(&[]);
    let mut phone = Phone::tcp(&node);
    let contact = vec![format!("Contact: <sip:bob@{}>", phone.local())];
    let call_id = format!("stale-{}", unique());
    let transaction = Transaction {
        method: "REGISTER",
        uri: "sip:localhost",
        from: "<sip:bob@localhost>;tag=stale",
        to: "<sip:bob@localhost>",
        call_id: &call_id,
        extra: &contact,
    };
    let build = |phone: &Phone, cseq: u32, auth: Option<String>| {
        transaction.attempt(phone, cseq, auth, b"")
    };
    let challenge = phone.exchange(&build(&phone, 1, None));
    let parsed =
        select_challenge(challenge.headers.get_all("WWW-Authenticate")).expect("challenge");
    let answer = |nc: u32| {
        format!(
            "Authorization: {}",
            authorization(
                &parsed,
                "bob",
                PASSWORD,
                "REGISTER",
                "sip:localhost",
                "c-stale",
                nc
            )
        )
    };
    let registered = phone.exchange(&build(&phone, 2, Some(answer(1))));
    assert_eq!(registered.status, 200, "{registered:?}");
    drop(phone);
    assert_eq!(node.terminate().code(), Some(0));
    node.spawn();
    // The phone reconnects and reuses its nonce (next nonce count), as phones do.
    let mut phone = Phone::tcp(&node);
    let again = phone.exchange(&build(&phone, 3, Some(answer(2))));
    assert_eq!(status_line(&again), "401 Unauthorized", "{again:?}");
    let stale = select_challenge(again.headers.get_all("WWW-Authenticate")).expect("challenge");
    assert!(stale.stale, "re-challenged with stale=true: {again:?}");
    let fresh = format!(
        "Authorization: {}",
        authorization(
            &stale,
            "bob",
            PASSWORD,
            "REGISTER",
            "sip:localhost",
            "c-fresh",
            1
        )
    );
    let registered = phone.exchange(&build(&phone, 4, Some(fresh)));
    assert_eq!(registered.status, 200, "{registered:?}");
}

/// A phone that fails over to another node of the cluster and reuses its nonce is
/// re-challenged with `stale=true` (RFC 7616 §3.3), not refused: every node verifies the nonces
/// of every other (their MAC key derives from the cluster's master key), and a nonce whose
/// replay state another node holds is stale here. Its fresh answer then registers.
#[test]
fn a_nonce_from_another_node_of_the_cluster_is_re_challenged_as_stale() {
    let cluster = common::Cluster::start(3, &[]);
    cluster.nodes[0].add_user("bob");
    let mut phone = Phone::tcp(&cluster.nodes[0]);
    let contact = vec![format!("Contact: <sip:bob@{}>", phone.local())];
    let call_id = format!("failover-{}", unique());
    let transaction = Transaction {
        method: "REGISTER",
        uri: "sip:localhost",
        from: "<sip:bob@localhost>;tag=failover",
        to: "<sip:bob@localhost>",
        call_id: &call_id,
        extra: &contact,
    };
    let build = |phone: &Phone, cseq: u32, auth: Option<String>| {
        transaction.attempt(phone, cseq, auth, b"")
    };
    let answer = |challenge: &pms_sip::digest::Challenge, nonce_count: u32| {
        format!(
            "Authorization: {}",
            authorization(
                challenge,
                "bob",
                PASSWORD,
                "REGISTER",
                "sip:localhost",
                "c-failover",
                nonce_count
            )
        )
    };
    let challenge = phone.exchange(&build(&phone, 1, None));
    let first = select_challenge(challenge.headers.get_all("WWW-Authenticate")).expect("challenge");
    let registered = phone.exchange(&build(&phone, 2, Some(answer(&first, 1))));
    assert_eq!(registered.status, 200, "{registered:?}");
    for node in &cluster.nodes[1..] {
        let mut phone = Phone::tcp(node);
        let again = phone.exchange(&build(&phone, 3, Some(answer(&first, 2))));
        assert_eq!(status_line(&again), "401 Unauthorized", "{again:?}");
        let stale = select_challenge(again.headers.get_all("WWW-Authenticate")).expect("challenge");
        assert!(stale.stale, "re-challenged with stale=true: {again:?}");
        let registered = phone.exchange(&build(&phone, 4, Some(answer(&stale, 1))));
        assert_eq!(registered.status, 200, "{registered:?}");
    }
}
