//! Typed accessors and `response_to` on realistic softphone requests (REGISTER with RFC 5626
//! outbound Contact, MESSAGE with digest credentials), plus a full stream → parse →
//! authenticate → respond flow as the edge will run it.
//!
//! Invariant: these tests use only the public API other crates code against.

use pms_sip::digest::{self, Algorithm, DigestServer};
use pms_sip::framing::{Frame, StreamFramer};
use pms_sip::message::{Contact, Method, SipMessage, parse, response_to};
use pms_types::UnixMillis;
use pms_types::limits::{SIP_BODY_BYTES_MAX_DEFAULT, SIP_HEADER_BYTES_MAX_DEFAULT};

const REGISTER: &str = "REGISTER sip:pms.test SIP/2.0\r\n\
Via: SIP/2.0/TLS 192.0.2.10:49152;rport;branch=z9hG4bKreg1\r\n\
Via: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKproxy\r\n\
Max-Forwards: 70\r\n\
From: \"Alice \\\"A\\\"\" <sip:alice@pms.test>;tag=reg-tag\r\n\
To: Alice <sip:alice@pms.test>\r\n\
Call-ID: reg-call-1\r\n\
CSeq: 7 REGISTER\r\n\
Contact: <sip:alice@192.0.2.10:49152;transport=tls;ob>;expires=3600;+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\";reg-id=1, <sip:alice@198.51.100.1>;expires=0\r\n\
Expires: 600\r\n\
Content-Length: 0\r\n\r\n";

fn register() -> pms_sip::message::Request {
    match parse(REGISTER.as_bytes()) {
        Ok(SipMessage::Request(request)) => request,
        other => panic!("REGISTER should parse: {other:?}"),
    }
}

#[test]
fn register_accessors() {
    let request = register();
    assert_eq!(request.method, Method::Register);
    let from = request.from().expect("From");
    assert_eq!(from.display_name.as_deref(), Some("Alice \"A\""));
    assert_eq!(from.tag(), Some("reg-tag"));
    assert_eq!(from.uri.aor(), "sip:alice@pms.test");
    let to = request.to().expect("To");
    assert_eq!(to.display_name.as_deref(), Some("Alice"));
    assert_eq!(to.tag(), None);
    assert_eq!(request.call_id(), Ok("reg-call-1"));
    assert_eq!(request.cseq(), Ok((7, Method::Register)));
    assert_eq!(request.expires(), Some(600));
    assert_eq!(request.max_forwards(), Some(70));
    assert_eq!(request.via_branch().as_deref(), Some("z9hG4bKreg1"));
    let contacts = request.contacts().expect("Contacts");
    assert_eq!(contacts.len(), 2);
    assert_eq!(contacts[0].expires(), Some(3600));
    assert_eq!(
        contacts[0].sip_instance().as_deref(),
        Some("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6")
    );
    assert_eq!(contacts[0].reg_id(), Some(1));
    let uri = &contacts[0].name_addr().expect("address").uri;
    assert_eq!(uri.param("ob"), Some(None));
    assert_eq!(uri.port, Some(49152));
    assert_eq!(contacts[1].expires(), Some(0));
    assert_eq!(contacts[1].sip_instance(), None);
    assert_eq!(request.content_type(), None);
    assert_eq!(request.authorization("Authorization"), Ok(None));
}

#[test]
fn star_contact() {
    let raw = REGISTER.replace(
        "Contact: <sip:alice@192.0.2.10:49152;transport=tls;ob>;expires=3600;+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\";reg-id=1, <sip:alice@198.51.100.1>;expires=0",
        "Contact: *",
    );
    let Ok(SipMessage::Request(request)) = parse(raw.as_bytes()) else {
        panic!("star REGISTER parses");
    };
    assert_eq!(request.contacts(), Ok(vec![Contact::Star]));
}

#[test]
fn response_to_copies_dialog_headers_and_adds_tag() {
    let request = register();
    let response = response_to(&request, 200, "OK", "srv-tag");
    let bytes = response.to_bytes();
    let Ok(SipMessage::Response(parsed)) = parse(&bytes) else {
        panic!("response parses");
    };
    assert_eq!(parsed.status, 200);
    assert_eq!(
        parsed.headers.get_all("Via"),
        request.headers.get_all("Via"),
        "all Vias, in order"
    );
    assert_eq!(parsed.headers.get("From"), request.headers.get("From"));
    assert_eq!(parsed.to().expect("To").tag(), Some("srv-tag"));
    assert_eq!(parsed.call_id(), Ok("reg-call-1"));
    assert_eq!(parsed.cseq(), Ok((7, Method::Register)));
    assert!(parsed.body.is_empty());
    // A To that already has a tag keeps it; 100 Trying never gets one.
    let tagged = response_to(&parsed_request_with_to_tag(), 200, "OK", "other");
    assert_eq!(tagged.to().expect("To").tag(), Some("theirs"));
    let trying = response_to(&request, 100, "Trying", "srv-tag");
    assert_eq!(trying.to().expect("To").tag(), None);
}

fn parsed_request_with_to_tag() -> pms_sip::message::Request {
    let mut request = register();
    request.headers.set("To", "<sip:alice@pms.test>;tag=theirs");
    request
}

/// The edge's whole path: bytes in pieces → frame → parse → 401 → authenticated MESSAGE → 202.
#[test]
fn stream_to_authenticated_message() {
    let now = UnixMillis(1_700_000_000_000);
    let mut server = DigestServer::new("pms.test".to_string(), [3; 32], vec![Algorithm::Sha256]);
    let challenge_value = server.challenges(now, false).remove(0);
    let challenge = digest::parse_challenge(&challenge_value).expect("challenge");
    let credentials = digest::authorization(
        &challenge,
        "alice",
        "secret",
        "MESSAGE",
        "sip:bob@pms.test",
        "cn",
        1,
    );
    let body = "Grüße 👋🏽".as_bytes();
    let message = format!(
        "MESSAGE sip:bob@pms.test SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bKm\r\nFrom: <sip:alice@pms.test>;tag=x\r\nTo: <sip:bob@pms.test>\r\nCall-ID: m1\r\nCSeq: 2 MESSAGE\r\nAuthorization: {credentials}\r\nContent-Type: text/plain;charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut wire = message.into_bytes();
    wire.extend_from_slice(body);
    let mut framer = StreamFramer::new(SIP_HEADER_BYTES_MAX_DEFAULT, SIP_BODY_BYTES_MAX_DEFAULT);
    let mut frames = Vec::new();
    for chunk in wire.chunks(7) {
        framer.push(chunk);
        while let Some(frame) = framer.next_frame() {
            frames.push(frame.expect("valid stream"));
        }
    }
    let [Frame::Message(raw)] = frames.as_slice() else {
        panic!("exactly one message: {frames:?}");
    };
    let Ok(SipMessage::Request(request)) = parse(raw) else {
        panic!("parses");
    };
    assert_eq!(request.body, body);
    assert_eq!(
        request
            .content_type()
            .and_then(|content_type| content_type.charset())
            .as_deref(),
        Some("utf-8")
    );
    let credentials = request
        .authorization("authorization")
        .expect("valid credentials")
        .expect("present");
    let verified = server
        .verify(
            &credentials,
            request.method.as_str(),
            |algorithm| Some(digest::ha1(algorithm, "alice", "pms.test", "secret")),
            now,
        )
        .expect("authenticated");
    assert_eq!(verified.username, "alice");
    assert_eq!(response_to(&request, 202, "Accepted", "t").status, 202);
}
