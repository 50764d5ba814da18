//! In-process tests of `send` and `listen` against a tiny scripted SIP server on 127.0.0.1
//! (plain TCP, and TLS with the dev certificates of `pms-crypto`).
//!
//! The fake server uses `pms-sip`'s real framer, parser and digest server, so a passing test
//! means the UA's requests are what a PMS edge accepts. Synchronisation is by messages only
//! (each side waits for the other's bytes); the only clocks are the tests' overall timeouts.

use std::time::Duration;

use pms_sip::digest::ha1;
use pms_sip::{
    Algorithm, DigestServer, Frame, Method, Request, Response, SipMessage, StreamFramer,
    response_to,
};
use pms_types::UnixMillis;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{ListenOptions, SendOptions, SipTarget, TlsTrust, WaitFor};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse";
const REALM: &str = "localhost";
/// Digest time is frozen: the fake server's nonces never go stale mid-test.
const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
/// Upper bound on any one test; a hang fails instead of blocking the suite.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The server side of one connection: reads requests/responses with the real framer.
struct FakePeer<S> {
    stream: S,
    framer: StreamFramer,
    digest: DigestServer,
}

impl<S: AsyncRead + AsyncWrite + Unpin> FakePeer<S> {
    fn new(stream: S) -> Self {
        FakePeer {
            stream,
            framer: StreamFramer::new(16 * 1024, 64 * 1024),
            digest: DigestServer::new(
                REALM.into(),
                [9; 32],
                vec![Algorithm::Md5, Algorithm::Sha256],
            ),
        }
    }

    /// The next SIP message; keep-alive pings are answered and skipped.
    async fn next_message(&mut self) -> SipMessage {
        loop {
            match self.framer.next_frame() {
                Some(Ok(Frame::Message(bytes))) => {
                    return pms_sip::parse(&bytes).expect("UA sent a parsable message");
                }
                Some(Ok(Frame::KeepAlivePing)) => self.write(b"\r\n").await,
                Some(other) => panic!("unexpected frame from UA: {other:?}"),
                None => {
                    let mut chunk = [0u8; 4096];
                    let read = self.stream.read(&mut chunk).await.expect("read from UA");
                    assert!(read > 0, "UA closed the connection early");
                    self.framer.push(&chunk[..read]);
                }
            }
        }
    }

    /// Waits for the UA's CRLF pong (the framer may hold a lone CRLF back as half a ping).
    async fn expect_pong(&mut self) {
        loop {
            match self.framer.next_frame() {
                Some(Ok(Frame::KeepAlivePong)) => return,
                Some(other) => panic!("expected a pong, got {other:?}"),
                None if self.framer.take_lone_crlf() => return,
                None => {
                    let mut chunk = [0u8; 4096];
                    let read = self.stream.read(&mut chunk).await.expect("read from UA");
                    assert!(read > 0, "UA closed the connection early");
                    self.framer.push(&chunk[..read]);
                }
            }
        }
    }

    /// Challenges a REGISTER, checks the answer and accepts it for `expires_secs`.
    async fn accept_register(&mut self, expires_secs: u64) -> Request {
        let register = self.next_request().await;
        assert_eq!(register.method, Method::Register);
        self.challenge(&register, 401).await;
        let answered = self.next_request().await;
        assert_eq!(answered.call_id().ok(), register.call_id().ok());
        assert_eq!(
            answered.cseq().expect("CSeq").0,
            register.cseq().expect("CSeq").0 + 1
        );
        self.verify(&answered, "Authorization");
        let contacts = answered.contacts().expect("Contact");
        let contact = contacts.first().expect("one Contact");
        let mut ok = response_to(&answered, 200, "OK", "srvtag");
        ok.headers
            .push("Contact", format!("{contact};expires={expires_secs}"));
        self.write(&ok.to_bytes()).await;
        answered
    }

    async fn next_request(&mut self) -> Request {
        match self.next_message().await {
            SipMessage::Request(request) => request,
            SipMessage::Response(response) => panic!("expected a request, got {response:?}"),
        }
    }

    async fn next_response(&mut self) -> Response {
        match self.next_message().await {
            SipMessage::Response(response) => response,
            SipMessage::Request(request) => panic!("expected a response, got {request:?}"),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to UA");
        self.stream.flush().await.expect("flush to UA");
    }

    async fn respond(&mut self, request: &Request, status: u16, reason: &str) -> Response {
        let response = response_to(request, status, reason, "srvtag");
        self.write(&response.to_bytes()).await;
        response
    }

    /// Answers `request` with a challenge (401 or 407) offering SHA-256 and MD5.
    async fn challenge(&mut self, request: &Request, status: u16) {
        let mut response = response_to(request, status, "Authentication Required", "srvtag");
        let header = if status == 401 {
            "WWW-Authenticate"
        } else {
            "Proxy-Authenticate"
        };
        for challenge in self.digest.challenges(NOW, false) {
            response.headers.push(header, challenge);
        }
        self.write(&response.to_bytes()).await;
    }

    /// Verifies the credentials in `header` and returns the algorithm the UA chose.
    fn verify(&mut self, request: &Request, header: &str) -> Algorithm {
        let credentials = request
            .authorization(header)
            .expect("credentials parse")
            .expect("credentials present");
        assert_eq!(credentials.username, USER);
        assert_eq!(
            credentials.uri, request.uri,
            "digest uri is the Request-URI"
        );
        self.digest
            .verify(
                &credentials,
                request.method.as_str(),
                |algorithm| Some(ha1(algorithm, USER, REALM, PASSWORD)),
                NOW,
            )
            .expect("digest verifies")
            .algorithm
    }
}

fn target(server: String, trust: TlsTrust) -> SipTarget {
    SipTarget {
        server,
        trust,
        domain: "localhost".into(),
    }
}

fn send_options(target: SipTarget, wait: WaitFor, timeout_secs: u64) -> SendOptions {
    SendOptions {
        target,
        user: USER.into(),
        password: PASSWORD.into(),
        to: "bob".into(),
        text: "Grüße 👋🏽".into(),
        content_type: "text/plain;charset=UTF-8".into(),
        expires_secs: Some(3600),
        wait,
        timeout_secs,
    }
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    std::str::from_utf8(out)
        .expect("output is UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local addr").to_string();
    (listener, address)
}

#[tokio::test]
async fn send_answers_407_with_sha256_then_reports_enqueued() {
    let (listener, address) = bind().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut peer = FakePeer::new(stream);

        let first = peer.next_request().await;
        assert_eq!(first.method, Method::Message);
        assert_eq!(first.uri, "sip:bob@localhost");
        assert_eq!(first.cseq().expect("CSeq"), (1, Method::Message));
        assert_eq!(first.max_forwards(), Some(70));
        assert_eq!(first.expires(), Some(3600));
        assert_eq!(
            first.headers.get("Disposition-Notification"),
            Some("positive-delivery, negative-delivery")
        );
        assert!(first.headers.get("Date").is_some());
        let via = first.headers.get("Via").expect("Via");
        assert!(via.starts_with("SIP/2.0/TCP 127.0.0.1:"), "{via}");
        assert!(
            via.contains(";branch=z9hG4bK") && via.ends_with(";rport"),
            "{via}"
        );
        let from = first.from().expect("From");
        assert_eq!(from.uri.to_string(), "sip:alice@localhost");
        assert!(from.tag().is_some());
        assert_eq!(first.body, "Grüße 👋🏽".as_bytes());
        peer.challenge(&first, 407).await;

        let second = peer.next_request().await;
        assert_eq!(second.cseq().expect("CSeq"), (2, Method::Message));
        assert_eq!(second.call_id().ok(), first.call_id().ok());
        assert_eq!(second.from().expect("From").tag(), from.tag());
        assert_eq!(
            second.headers.get("imdn.Message-ID"),
            first.headers.get("imdn.Message-ID")
        );
        assert_ne!(second.via_branch(), first.via_branch(), "new transaction");
        assert_eq!(
            peer.verify(&second, "Proxy-Authorization"),
            Algorithm::Sha256
        );
        let mut accepted = response_to(&second, 202, "Accepted", "srvtag");
        accepted.headers.push("X-PMS-Message-ID", "srv-42");
        peer.write(&accepted.to_bytes()).await;
        first
            .headers
            .get("imdn.Message-ID")
            .expect("imdn.Message-ID")
            .to_owned()
    });

    let mut out = Vec::new();
    let options = send_options(target(address, TlsTrust::PlainTcp), WaitFor::Enqueued, 10);
    let code = tokio::time::timeout(TEST_TIMEOUT, super::send(options, &mut out))
        .await
        .expect("send finishes");
    let imdn_id = server.await.expect("server script passed");

    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
    let lines = json_lines(&out);
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"status": "sending", "to": "sip:bob@localhost", "imdn_message_id": imdn_id}),
            serde_json::json!({"status": "enqueued", "message_id": "srv-42", "code": 202}),
        ]
    );
}

#[tokio::test]
async fn send_prints_error_and_exits_1_on_a_final_error_response() {
    let (listener, address) = bind().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut peer = FakePeer::new(stream);
        let request = peer.next_request().await;
        peer.respond(&request, 403, "Secure Messaging Not Enabled")
            .await;
    });
    let mut out = Vec::new();
    let options = send_options(target(address, TlsTrust::PlainTcp), WaitFor::Enqueued, 10);
    let code = tokio::time::timeout(TEST_TIMEOUT, super::send(options, &mut out))
        .await
        .expect("send finishes");
    server.await.expect("server script passed");
    assert_eq!(code, 1);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[1],
        serde_json::json!({"status": "error", "code": 403, "reason": "Secure Messaging Not Enabled"})
    );
}

#[tokio::test]
async fn send_times_out_with_exit_2_when_the_server_never_answers() {
    let (listener, address) = bind().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut peer = FakePeer::new(stream);
        let _request = peer.next_request().await;
        // Keep the connection open without answering until the UA gives up and closes it.
        let mut rest = Vec::new();
        let _ = peer.stream.read_to_end(&mut rest).await;
    });
    let mut out = Vec::new();
    let options = send_options(target(address, TlsTrust::PlainTcp), WaitFor::Enqueued, 1);
    let code = tokio::time::timeout(TEST_TIMEOUT, super::send(options, &mut out))
        .await
        .expect("send finishes");
    assert_eq!(code, 4, "a timeout exits 4");
    assert_eq!(
        json_lines(&out).last(),
        Some(&serde_json::json!({"status": "timeout"}))
    );
    server.await.expect("server saw the close");
}

#[tokio::test]
async fn send_over_tls_waits_for_the_delivery_report() {
    let certs = tempfile::tempdir().expect("temp dir");
    pms_crypto::ensure_dev_certs(certs.path(), &[]).expect("dev certs");
    let acceptor = tokio_rustls::TlsAcceptor::from(
        pms_crypto::sip_server_config(certs.path()).expect("config"),
    );
    let (listener, address) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let stream = acceptor.accept(tcp).await.expect("TLS handshake");
        let mut peer = FakePeer::new(stream);

        let message = peer.next_request().await;
        let via = message.headers.get("Via").expect("Via");
        assert!(via.starts_with("SIP/2.0/TLS "), "{via}");
        let imdn_id = message
            .headers
            .get("imdn.Message-ID")
            .expect("imdn.Message-ID")
            .to_owned();
        peer.respond(&message, 202, "Accepted").await;

        let register = peer.next_request().await;
        assert_eq!(register.method, Method::Register);
        assert_eq!(register.uri, "sip:localhost");
        peer.challenge(&register, 401).await;
        let register = peer.next_request().await;
        assert_eq!(register.cseq().expect("CSeq").0, 2);
        peer.verify(&register, "Authorization");
        let contacts = register.contacts().expect("Contact");
        let contact = contacts.first().expect("one Contact");
        assert!(
            contact
                .sip_instance()
                .is_some_and(|urn| urn.starts_with("urn:uuid:"))
        );
        assert_eq!(contact.reg_id(), Some(1));
        let mut ok = response_to(&register, 200, "OK", "srvtag");
        ok.headers.push("Contact", format!("{contact};expires=600"));
        peer.write(&ok.to_bytes()).await;

        // A report about another message first: answered, not taken for ours.
        for (id, status) in [("someone-else", "failed"), (imdn_id.as_str(), "delivered")] {
            let mut report = Request::new(Method::Message, "sip:alice@127.0.0.1");
            report
                .headers
                .push("Via", "SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKsrv1");
            report.headers.push("From", "<sip:bob@localhost>;tag=imdn1");
            report.headers.push("To", "<sip:alice@localhost>");
            report.headers.push("Call-ID", format!("imdn-{id}"));
            report.headers.push("CSeq", "1 MESSAGE");
            report.headers.push("Content-Type", "message/imdn+xml");
            report.body = pms_sip::imdn::build_imdn(
                id,
                "2024-01-01T00:00:00Z",
                "sip:bob@localhost",
                "sip:bob@localhost",
                if status == "failed" {
                    pms_sip::ImdnStatus::Failed
                } else {
                    pms_sip::ImdnStatus::Delivered
                },
            )
            .into_bytes();
            peer.write(&report.to_bytes()).await;
            let answer = peer.next_response().await;
            assert_eq!(answer.status, 200);
            assert!(answer.to().expect("To").tag().is_some(), "To-tag added");
        }
        imdn_id
    });

    let mut out = Vec::new();
    let trust = TlsTrust::CaFile(certs.path().join("ca.crt"));
    let options = send_options(target(address, trust), WaitFor::Delivered, 10);
    let code = tokio::time::timeout(TEST_TIMEOUT, super::send(options, &mut out))
        .await
        .expect("send finishes");
    let imdn_id = server.await.expect("server script passed");
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[1],
        serde_json::json!({"status": "enqueued", "message_id": imdn_id, "code": 202})
    );
    assert_eq!(
        lines[2],
        serde_json::json!({"status": "delivered", "message_id": imdn_id})
    );
}

#[tokio::test]
async fn listen_registers_and_prints_pipelined_messages_exactly() {
    let bodies = ["first 👋🏽 Grüße \"quoted\"\r\nline two", "second 🚀"];
    let (listener, address) = bind().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut peer = FakePeer::new(stream);

        let register = peer.next_request().await;
        assert_eq!(register.method, Method::Register);
        assert_eq!(register.expires(), Some(600));
        peer.challenge(&register, 401).await;
        let register = peer.next_request().await;
        assert_eq!(peer.verify(&register, "Authorization"), Algorithm::Sha256);
        let contact = register.contacts().expect("Contact");
        let contact = contact.first().expect("one Contact");
        let contact_uri = contact.name_addr().expect("name-addr").uri.to_string();
        assert!(contact_uri.ends_with(";transport=tcp"), "{contact_uri}");
        let mut ok = response_to(&register, 200, "OK", "srvtag");
        ok.headers.push("Contact", format!("{contact};expires=600"));
        peer.write(&ok.to_bytes()).await;

        // Routine requests a device must answer, and an RFC 5626 ping.
        peer.write(b"\r\n\r\n").await;
        peer.expect_pong().await;
        let mut options = Request::new(Method::Options, contact_uri.clone());
        options
            .headers
            .push("Via", "SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKopt");
        options.headers.push("From", "<sip:localhost>;tag=o1");
        options.headers.push("To", "<sip:alice@localhost>");
        options.headers.push("Call-ID", "options-1");
        options.headers.push("CSeq", "1 OPTIONS");
        peer.write(&options.to_bytes()).await;
        assert_eq!(peer.next_response().await.status, 200);
        let mut unknown = options.clone();
        unknown.method = Method::Other("FROB".into());
        unknown.headers.set("CSeq", "2 FROB");
        peer.write(&unknown.to_bytes()).await;
        assert_eq!(peer.next_response().await.status, 501);

        // Two MESSAGEs in one write: the UA must frame them by Content-Length.
        let mut pipelined = Vec::new();
        for (index, body) in bodies.iter().enumerate() {
            let mut message = Request::new(Method::Message, contact_uri.clone());
            message.headers.push(
                "Via",
                format!("SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKm{index}"),
            );
            message
                .headers
                .push("From", format!("\"Bob\" <sip:bob@localhost>;tag=b{index}"));
            message.headers.push("To", "<sip:alice@localhost>");
            message.headers.push("Call-ID", format!("message-{index}"));
            message.headers.push("CSeq", "1 MESSAGE");
            message
                .headers
                .push("Date", "Mon, 01 Jan 2024 00:00:00 GMT");
            message
                .headers
                .push("Content-Type", "text/plain;charset=UTF-8");
            message
                .headers
                .push("imdn.Message-ID", format!("id-{index}"));
            message.body = body.as_bytes().to_vec();
            pipelined.extend_from_slice(&message.to_bytes());
        }
        peer.write(&pipelined).await;
        for index in 0..2 {
            let answer = peer.next_response().await;
            assert_eq!(answer.status, 200);
            assert_eq!(
                answer.call_id().ok(),
                Some(format!("message-{index}").as_str())
            );
            assert!(answer.to().expect("To").tag().is_some(), "To-tag added");
        }
    });

    let mut out = Vec::new();
    let options = ListenOptions {
        target: target(address, TlsTrust::PlainTcp),
        user: USER.into(),
        password: PASSWORD.into(),
        count: Some(2),
        timeout_secs: Some(10),
    };
    let code = tokio::time::timeout(TEST_TIMEOUT, super::listen(options, &mut out))
        .await
        .expect("listen finishes");
    server.await.expect("server script passed");
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (index, (line, body)) in lines.iter().zip(bodies).enumerate() {
        assert_eq!(
            line,
            &serde_json::json!({
                "from": "sip:bob@localhost",
                "to": "sip:alice@localhost",
                "content_type": "text/plain;charset=UTF-8",
                "body": body,
                "message_id": format!("id-{index}"),
                "date": "Mon, 01 Jan 2024 00:00:00 GMT",
            })
        );
    }
}

#[tokio::test]
async fn listen_refreshes_its_registration_before_it_expires() {
    let (listener, address) = bind().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut peer = FakePeer::new(stream);
        // Granting 2 s makes the UA refresh after 1 s: the wait is for its bytes, not a sleep.
        let first = peer.accept_register(2).await;
        let refreshed = peer.accept_register(600).await;
        assert_eq!(
            refreshed.call_id().ok(),
            first.call_id().ok(),
            "same registration"
        );
        assert!(refreshed.cseq().expect("CSeq").0 > first.cseq().expect("CSeq").0);
        assert_eq!(
            refreshed.contacts().expect("Contact")[0].sip_instance(),
            first.contacts().expect("Contact")[0].sip_instance(),
            "same instance id"
        );
        let mut message = Request::new(Method::Message, "sip:alice@127.0.0.1");
        message
            .headers
            .push("Via", "SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKr1");
        message.headers.push("From", "<sip:bob@localhost>;tag=r1");
        message.headers.push("To", "<sip:alice@localhost>");
        message.headers.push("Call-ID", "after-refresh");
        message.headers.push("CSeq", "7 MESSAGE");
        message
            .headers
            .push("Content-Type", "application/octet-stream");
        message.headers.push("X-PMS-Message-ID", "srv-7");
        message.body = vec![0xff, 0xfe, 0x00];
        peer.write(&message.to_bytes()).await;
        assert_eq!(peer.next_response().await.status, 200);
    });
    let mut out = Vec::new();
    let options = ListenOptions {
        target: target(address, TlsTrust::PlainTcp),
        user: USER.into(),
        password: PASSWORD.into(),
        count: Some(1),
        timeout_secs: Some(15),
    };
    let code = tokio::time::timeout(TEST_TIMEOUT, super::listen(options, &mut out))
        .await
        .expect("listen finishes");
    server.await.expect("server script passed");
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
    assert_eq!(
        json_lines(&out),
        vec![serde_json::json!({
            "from": "sip:bob@localhost",
            "to": "sip:alice@localhost",
            "content_type": "application/octet-stream",
            "body_base64": "//4A",
            "message_id": "srv-7",
            "date": null,
        })]
    );
}

#[tokio::test]
async fn send_reports_a_negative_imdn_as_error() {
    let (listener, address) = bind().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut peer = FakePeer::new(stream);
        let message = peer.next_request().await;
        let imdn_id = message
            .headers
            .get("imdn.Message-ID")
            .expect("imdn.Message-ID")
            .to_owned();
        let mut accepted = response_to(&message, 202, "Accepted", "srvtag");
        accepted.headers.push("X-PMS-Message-ID", "srv-9");
        peer.write(&accepted.to_bytes()).await;
        peer.accept_register(600).await;
        let mut report = Request::new(Method::Message, "sip:alice@127.0.0.1");
        report
            .headers
            .push("Via", "SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKn1");
        report.headers.push("From", "<sip:bob@localhost>;tag=n1");
        report.headers.push("To", "<sip:alice@localhost>");
        report.headers.push("Call-ID", "imdn-failed");
        report.headers.push("CSeq", "1 MESSAGE");
        report.headers.push("Content-Type", "message/imdn+xml");
        report.body = pms_sip::imdn::build_imdn(
            &imdn_id,
            "2024-01-01T00:00:00Z",
            "sip:bob@localhost",
            "sip:bob@localhost",
            pms_sip::ImdnStatus::Failed,
        )
        .into_bytes();
        peer.write(&report.to_bytes()).await;
        assert_eq!(peer.next_response().await.status, 200);
    });
    let mut out = Vec::new();
    let options = send_options(target(address, TlsTrust::PlainTcp), WaitFor::Delivered, 10);
    let code = tokio::time::timeout(TEST_TIMEOUT, super::send(options, &mut out))
        .await
        .expect("send finishes");
    server.await.expect("server script passed");
    assert_eq!(code, 1, "{}", String::from_utf8_lossy(&out));
    assert_eq!(
        json_lines(&out).last(),
        Some(&serde_json::json!({"status": "error", "message_id": "srv-9", "reason": "failed"}))
    );
}
