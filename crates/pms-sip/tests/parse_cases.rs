//! Table-driven parse cases: each raw message is parsed and rendered into a small summary that
//! is compared with an `expect-test` snapshot (run with `UPDATE_EXPECT=1` to refresh after a
//! deliberate change, then review the diff).
//!
//! Invariant: every case here documents one accepted or rejected input shape; rejected inputs
//! must show the 400 reason phrase the edge will send.

use expect_test::{Expect, expect};
use pms_sip::message::{SipMessage, parse};

fn render(raw: &str) -> String {
    render_bytes(raw.replace('\n', "\r\n").as_bytes())
}

fn render_bytes(raw: &[u8]) -> String {
    match parse(raw) {
        Err(error) => format!("error: {} ({error})", error.reason()),
        Ok(message) => {
            let mut out = match &message {
                SipMessage::Request(request) => {
                    format!("request {} {}\n", request.method, request.uri)
                }
                SipMessage::Response(response) => {
                    format!("response {} {:?}\n", response.status, response.reason)
                }
            };
            for (name, value) in message.headers().iter() {
                out.push_str(&format!("  {name}: {value}\n"));
            }
            out.push_str(&format!(
                "  body {:?}",
                String::from_utf8_lossy(message.body())
            ));
            out
        }
    }
}

fn check(raw: &str, expected: Expect) {
    expected.assert_eq(&render(raw));
}

const BASE: &str = "Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK776\nFrom: <sip:alice@pms.test>;tag=a1\nTo: <sip:bob@pms.test>\nCall-ID: c1@host\n";

#[test]
fn good_message_request_with_emoji_body() {
    check(
        &format!(
            "MESSAGE sip:bob@pms.test SIP/2.0\n{BASE}CSeq: 1 MESSAGE\nMax-Forwards: 70\nContent-Type: text/plain;charset=UTF-8\nContent-Length: 9\n\nhi 😀 !"
        ),
        expect![[r#"
            request MESSAGE sip:bob@pms.test
              Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK776
              From: <sip:alice@pms.test>;tag=a1
              To: <sip:bob@pms.test>
              Call-ID: c1@host
              CSeq: 1 MESSAGE
              Max-Forwards: 70
              Content-Type: text/plain;charset=UTF-8
              body "hi 😀 !""#]],
    );
}

#[test]
fn folded_headers_and_spaced_colons() {
    check(
        &format!(
            "REGISTER sip:pms.test SIP/2.0\n{BASE}CSeq : 2\n  REGISTER\nContact: <sip:alice@192.0.2.1:5061>\n\t;expires=600\nSubject   :   hello\n   world  \n\n"
        ),
        expect![[r#"
            request REGISTER sip:pms.test
              Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK776
              From: <sip:alice@pms.test>;tag=a1
              To: <sip:bob@pms.test>
              Call-ID: c1@host
              CSeq: 2 REGISTER
              Contact: <sip:alice@192.0.2.1:5061> ;expires=600
              Subject: hello world
              body """#]],
    );
}

#[test]
fn compact_forms_are_expanded() {
    check(
        "MESSAGE sip:bob@pms.test SIP/2.0\nv: SIP/2.0/UDP h;branch=z9hG4bKx\nf: <sip:alice@pms.test>;tag=1\nt: sip:bob@pms.test\ni: abc\nCSeq: 9 MESSAGE\nc: text/plain\nm: <sip:a@h>\nk: path\no: x\nl: 2\n\nok",
        expect![[r#"
            request MESSAGE sip:bob@pms.test
              Via: SIP/2.0/UDP h;branch=z9hG4bKx
              From: <sip:alice@pms.test>;tag=1
              To: sip:bob@pms.test
              Call-ID: abc
              CSeq: 9 MESSAGE
              Content-Type: text/plain
              Contact: <sip:a@h>
              Supported: path
              Event: x
              body "ok""#]],
    );
}

#[test]
fn response_with_multi_word_reason() {
    check(
        &format!(
            "SIP/2.0 401 Unauthorized Here\n{BASE}CSeq: 1 REGISTER\nWWW-Authenticate: Digest realm=\"x\", nonce=\"n\"\n\n"
        ),
        expect![[r#"
            response 401 "Unauthorized Here"
              Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK776
              From: <sip:alice@pms.test>;tag=a1
              To: <sip:bob@pms.test>
              Call-ID: c1@host
              CSeq: 1 REGISTER
              WWW-Authenticate: Digest realm="x", nonce="n"
              body """#]],
    );
}

#[test]
fn missing_mandatory_headers() {
    let cases = [
        (
            "Via",
            expect![[r#"error: Missing Via header (missing Via header)"#]],
        ),
        (
            "From",
            expect![[r#"error: Missing From header (missing From header)"#]],
        ),
        (
            "To",
            expect![[r#"error: Missing To header (missing To header)"#]],
        ),
        (
            "Call-ID",
            expect![[r#"error: Missing Call-ID header (missing Call-ID header)"#]],
        ),
        (
            "CSeq",
            expect![[r#"error: Missing CSeq header (missing CSeq header)"#]],
        ),
    ];
    let full = format!("{BASE}CSeq: 1 MESSAGE\n");
    for (missing, expected) in cases {
        let headers: String = full
            .lines()
            .filter(|line| !line.starts_with(&format!("{missing}:")))
            .map(|line| format!("{line}\n"))
            .collect();
        check(&format!("MESSAGE sip:b@x SIP/2.0\n{headers}\n"), expected);
    }
}

#[test]
fn bad_cseq() {
    let cases = [
        (
            "CSeq: 1 REGISTER",
            expect![[
                r#"error: CSeq method does not match request method (CSeq method REGISTER does not match request method MESSAGE)"#
            ]],
        ),
        (
            "CSeq: MESSAGE",
            expect![[
                r#"error: Bad CSeq header: expected number and method (invalid CSeq header "MESSAGE": expected number and method)"#
            ]],
        ),
        (
            "CSeq: 99999999999 MESSAGE",
            expect![[
                r#"error: Bad CSeq header: sequence number is not a 32-bit number (invalid CSeq header "99999999999 MESSAGE": sequence number is not a 32-bit number)"#
            ]],
        ),
        (
            "CSeq: -1 MESSAGE",
            expect![[
                r#"error: Bad CSeq header: sequence number is not a 32-bit number (invalid CSeq header "-1 MESSAGE": sequence number is not a 32-bit number)"#
            ]],
        ),
        (
            "CSeq: 1 MESSAGE\nCSeq: 2 MESSAGE",
            expect![[r#"error: Duplicate CSeq header (more than one CSeq header)"#]],
        ),
    ];
    for (cseq, expected) in cases {
        check(
            &format!("MESSAGE sip:b@x SIP/2.0\n{BASE}{cseq}\n\n"),
            expected,
        );
    }
}

#[test]
fn bad_start_lines() {
    let cases = [
        (
            "MESSAGE sip:b@x",
            expect![[r#"error: Malformed start line (invalid start line "MESSAGE sip:b@x")"#]],
        ),
        (
            "MESSAGE  sip:b@x SIP/2.0",
            expect![[
                r#"error: Malformed start line (invalid start line "MESSAGE  sip:b@x SIP/2.0")"#
            ]],
        ),
        (
            "MESSAGE sip:b@x SIP/3.0",
            expect![[r#"error: Unsupported SIP version (unsupported SIP version "SIP/3.0")"#]],
        ),
        (
            "MESS@GE sip:b@x SIP/2.0",
            expect![[
                r#"error: Malformed start line (invalid start line "MESS@GE sip:b@x SIP/2.0")"#
            ]],
        ),
        (
            "MESSAGE bob SIP/2.0",
            expect![[
                r#"error: Bad URI: not an absolute URI (invalid URI "bob": not an absolute URI)"#
            ]],
        ),
        (
            "SIP/2.0 2000 OK",
            expect![[r#"error: Malformed status code (invalid status code "2000")"#]],
        ),
        (
            "SIP/2.0 099 Low",
            expect![[r#"error: Malformed status code (invalid status code "099")"#]],
        ),
        (
            "",
            expect![[r#"error: Malformed start line (invalid start line "")"#]],
        ),
    ];
    for (line, expected) in cases {
        check(&format!("{line}\n{BASE}CSeq: 1 MESSAGE\n\n"), expected);
    }
}

#[test]
fn bad_headers_and_head_shapes() {
    check(
        &format!("MESSAGE sip:b@x SIP/2.0\n{BASE}CSeq: 1 MESSAGE\nNo colon here\n\n"),
        expect![[r#"error: Malformed header line 7 (invalid header line 7: "No colon here")"#]],
    );
    check(
        &format!("MESSAGE sip:b@x SIP/2.0\n  folded-first\n{BASE}CSeq: 1 MESSAGE\n\n"),
        expect![[r#"error: Malformed header line 2 (invalid header line 2: "  folded-first")"#]],
    );
    check(
        &format!("MESSAGE sip:b@x SIP/2.0\n{BASE}CSeq: 1 MESSAGE\nFrom: <sip:x@y>\n\n"),
        expect![[r#"error: Duplicate From header (more than one From header)"#]],
    );
    check(
        &format!("MESSAGE sip:b@x SIP/2.0\n{BASE}CSeq: 1 MESSAGE\nContent-Length: 5\n\nabc"),
        expect![[
            r#"error: Content-Length does not match body (Content-Length 5 does not match the 3-byte body)"#
        ]],
    );
    check(
        "MESSAGE sip:b@x SIP/2.0\nVia: SIP/2.0/UDP h\nFrom: alice\nTo: <sip:b@x>\nCall-ID: 1\nCSeq: 1 MESSAGE\n\n",
        expect![[
            r#"error: Bad From header: not a name-addr (invalid From header "alice": not a name-addr)"#
        ]],
    );
    check(
        &format!("MESSAGE sip:b@x SIP/2.0\n{BASE}CSeq: 1 MESSAGE\nExpires: soon\n\n"),
        expect![[
            r#"error: Bad Expires header: not a number of seconds (invalid Expires header "soon": not a number of seconds)"#
        ]],
    );
    check(
        &format!("MESSAGE sip:b@x SIP/2.0\n{BASE}CSeq: 1 MESSAGE"),
        expect![[
            r#"error: Incomplete header block (message has no end of header block (CRLFCRLF))"#
        ]],
    );
    let many: String = (0..200).map(|index| format!("X-{index}: v\n")).collect();
    check(
        &format!("MESSAGE sip:b@x SIP/2.0\n{BASE}CSeq: 1 MESSAGE\n{many}\n"),
        expect![[r#"error: More than 128 headers (more than 128 headers)"#]],
    );
}

/// Found by the rsip differential oracle (`tests/rsip_oracle.rs`): parameter values that no
/// SIP grammar allows used to be accepted, and a stray quote in a Via branch made the rest of
/// the Via list part of the "branch".
#[test]
fn malformed_parameters() {
    let base = "From: <sip:alice@pms.test>;tag=a1\nTo: <sip:bob@pms.test>\nCall-ID: c1@host\nCSeq: 1 MESSAGE\n";
    check(
        &format!(
            "MESSAGE sip:b@x SIP/2.0\nVia: SIP/2.0/TLS h;branch=z9\"hG4bK1, SIP/2.0/UDP g;branch=z9hG4bK2\n{base}\n"
        ),
        expect![[
            r#"error: Bad Via header: bad parameter (invalid Via header "SIP/2.0/TLS h;branch=z9\"hG4bK1, SIP/2.0/UDP g;branch=z9hG4bK2": bad parameter)"#
        ]],
    );
    check(
        &format!("MESSAGE sip:b@x SIP/2.0\nVia: SIP/2.0/TLS h;;branch=z9hG4bK1\n{base}\n"),
        expect![[
            r#"error: Bad Via header: bad parameter (invalid Via header "SIP/2.0/TLS h;;branch=z9hG4bK1": bad parameter)"#
        ]],
    );
    check(
        &format!(
            "MESSAGE sip:b@x SIP/2.0\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\n{}\n",
            base.replace("tag=a1", "tag=a1 junk")
        ),
        expect![[
            r#"error: Bad From header: not a name-addr (invalid From header "<sip:alice@pms.test>;tag=a1 junk": not a name-addr)"#
        ]],
    );
    // The Request-URI is checked when read (a non-SIP one gets 416): a trailing `;` is refused.
    assert!(pms_sip::message::SipUri::parse("sip:b@x;").is_err());
    // Whitespace around `;` and `=` is allowed (RFC 3261 SEMI, EQUAL), and so are quoted values.
    check(
        &format!(
            "MESSAGE sip:b@x SIP/2.0\nVia: SIP/2.0/TLS h ; branch = z9hG4bK1 ;x=\"a b\"\n{base}\n"
        ),
        expect![[r#"
            request MESSAGE sip:b@x
              Via: SIP/2.0/TLS h ; branch = z9hG4bK1 ;x="a b"
              From: <sip:alice@pms.test>;tag=a1
              To: <sip:bob@pms.test>
              Call-ID: c1@host
              CSeq: 1 MESSAGE
              body """#]],
    );
    let spaced = parse(
        format!("MESSAGE sip:b@x SIP/2.0\nVia: SIP/2.0/TLS h ; branch = z9hG4bK1\n{base}\n")
            .replace('\n', "\r\n")
            .as_bytes(),
    )
    .expect("valid");
    assert_eq!(spaced.headers().via_branch().as_deref(), Some("z9hG4bK1"));
}

#[test]
fn control_characters_and_non_utf8_head() {
    expect![
        "error: Header block is not valid UTF-8 (header block is not UTF-8 (valid up to byte 54))"
    ]
    .assert_eq(&render_bytes(
        b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nSubject: \xff\xfe\r\n\r\n",
    ));
    expect![[r#"error: Malformed header line 3 (invalid header line 3: "Subject: a?b")"#]]
        .assert_eq(&render_bytes(
            b"MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nSubject: a\nb\r\n\r\n",
        ));
    // Non-UTF-8 bytes in the body are fine: the body is opaque.
    let mut raw = format!(
        "MESSAGE sip:b@x SIP/2.0\r\n{}CSeq: 1 MESSAGE\r\n\r\n",
        BASE.replace('\n', "\r\n")
    )
    .into_bytes();
    raw.extend_from_slice(&[0xff, 0x00, 0xfe]);
    let message = parse(&raw).expect("binary body is accepted");
    assert_eq!(message.body(), &[0xff, 0x00, 0xfe]);
}
