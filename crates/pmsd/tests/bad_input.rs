//! Hostile and malformed SIP over raw TCP against a real `pmsd` (guarantee 8: bad input gets a
//! clear SIP error, never a crash; guarantee 7: no one gets in where they don't belong).
//!
//! Three tables, each case on a fresh connection, with exact expected outcomes:
//! - framing and parsing (no authentication involved): missing/invalid/contradictory
//!   Content-Length (400, then the connection closes), oversized header block, oversized body
//!   (413, body skipped, connection still usable), garbage bytes, non-UTF-8 and NUL in the head,
//!   folded and compact headers (accepted), duplicate or missing mandatory headers, CSeq method
//!   mismatch, invalid URIs, tel: URI (416), foreign domain (404), Max-Forwards 0 (483),
//!   unknown method (405 with Allow), unsupported SIP version (505), unsolicited responses;
//! - digest authentication: wrong password, username ≠ From/To, forged nonce, unknown user,
//!   unsupported algorithm, malformed credentials, REGISTER checks (423 with Min-Expires);
//! - bodies: empty (400), unsupported or missing type (415 with Accept), malformed CPIM (400);
//!
//! plus sequences: replayed nonce count, a retransmission stored once, CRLF keep-alive, a
//! truncated body followed by a client close. After every case that leaves the connection open,
//! an OPTIONS probe on the same connection must be the next thing answered (so a stray extra
//! response, or a dead connection, is caught). At the end a normal authenticated MESSAGE on a
//! new connection still gets 202 and `/readyz` answers 200.
//!
//! Digest responses are computed with `pms_sip::digest` (SHA-256, the node's first offer).
//! Every wait is a socket read with a timeout; there are no sleeps.

mod common;

/// A multi-step case: runs against the node, `Err` says what went wrong.
type Sequence = fn(&Node) -> Result<(), String>;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Node, PASSWORD};
use pms_sip::digest::{authorization, select_challenge};
use pms_sip::message::{Response, SipMessage, parse};

const DOMAIN: &str = "localhost";
const BODY_BYTES_MAX: usize = 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

static UNIQUE: AtomicU64 = AtomicU64::new(1);

fn unique() -> u64 {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// A raw SIP connection.

struct Conn {
    stream: TcpStream,
    buffer: Vec<u8>,
}

#[derive(Debug)]
enum ReadEnd {
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing complete within the read timeout.
    TimedOut,
    /// Bytes that are not a SIP response (shown through `Debug` in failure messages).
    Garbage(#[allow(dead_code)] String),
}

impl Conn {
    fn open(node: &Node) -> Conn {
        let stream = TcpStream::connect_timeout(&node.sip_tcp_addr(), Duration::from_secs(5))
            .expect("connect to SIP TCP");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buffer: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        // A write error means the server already closed; the read that follows reports it.
        let _ = self.stream.write_all(bytes);
    }

    /// Reads more bytes; `Err` on EOF, reset or timeout.
    fn fill(&mut self) -> Result<(), ReadEnd> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(ReadEnd::Closed),
            Ok(read) => {
                self.buffer.extend_from_slice(&chunk[..read]);
                Ok(())
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(ReadEnd::TimedOut)
            }
            Err(_) => Err(ReadEnd::Closed),
        }
    }

    /// The next SIP response (CRLF keep-alive pongs before it are skipped).
    fn response(&mut self) -> Result<Response, ReadEnd> {
        loop {
            while self.buffer.starts_with(b"\r\n") {
                self.buffer.drain(..2);
            }
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head_len = end + 4;
                let body_len = match pms_sip::framing::content_length(&self.buffer[..head_len]) {
                    Ok(length) => length.unwrap_or(0),
                    Err(value) => {
                        return Err(ReadEnd::Garbage(format!("bad Content-Length {value:?}")));
                    }
                };
                if self.buffer.len() >= head_len + body_len {
                    let bytes: Vec<u8> = self.buffer.drain(..head_len + body_len).collect();
                    return match parse(&bytes) {
                        Ok(SipMessage::Response(response)) => Ok(response),
                        Ok(SipMessage::Request(request)) => Err(ReadEnd::Garbage(format!(
                            "a request from the server: {}",
                            request.method.as_str()
                        ))),
                        // An error response echoes the request's broken headers (e.g. two
                        // Call-IDs), so it need not parse strictly: read it leniently.
                        Err(error) => lenient_response(&bytes).ok_or_else(|| {
                            ReadEnd::Garbage(format!(
                                "{error}: {:?}",
                                String::from_utf8_lossy(&bytes)
                            ))
                        }),
                    };
                }
            }
            self.fill()?;
        }
    }

    /// Waits for the server to close the connection; any non-CRLF byte before that is an error.
    fn closed_without_response(&mut self) -> Result<(), String> {
        loop {
            self.buffer.retain(|byte| *byte != b'\r' && *byte != b'\n');
            if !self.buffer.is_empty() {
                return Err(format!(
                    "unexpected bytes before close: {:?}",
                    String::from_utf8_lossy(&self.buffer)
                ));
            }
            match self.fill() {
                Ok(()) => {}
                Err(ReadEnd::Closed) => return Ok(()),
                Err(other) => return Err(format!("connection not closed: {other:?}")),
            }
        }
    }

    /// Sends an OPTIONS and requires its 200 to be the next response: the connection is alive
    /// and nothing else was answered in between.
    fn probe(&mut self) -> Result<(), String> {
        let call_id = format!("probe-{}", unique());
        self.send(&options(&call_id));
        match self.response() {
            Ok(response)
                if response.status == 200
                    && response.headers.get("Call-ID") == Some(call_id.as_str()) =>
            {
                Ok(())
            }
            Ok(response) => Err(format!(
                "probe OPTIONS: expected its 200, got {} {} (Call-ID {:?})",
                response.status,
                response.reason,
                response.headers.get("Call-ID")
            )),
            Err(end) => Err(format!("probe OPTIONS got no answer: {end:?}")),
        }
    }
}

/// A response whose status line is valid but whose headers may not be (`name: value` lines are
/// kept as they are).
fn lenient_response(bytes: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.splitn(3, ' ');
    if start.next()? != "SIP/2.0" {
        return None;
    }
    let status = start.next()?.parse().ok()?;
    let reason = start.next().unwrap_or_default().to_string();
    let mut headers = pms_sip::message::Headers::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.push(name.trim(), value.trim());
    }
    Some(Response {
        status,
        reason,
        headers,
        body: body.as_bytes().to_vec(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

// ---------------------------------------------------------------------------------------------
// Building requests.

fn via() -> String {
    format!(
        "Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-bad-{}",
        unique()
    )
}

/// The usual header lines of a request (`Via`, `Max-Forwards`, `From`, `To`, `Call-ID`, `CSeq`).
fn standard(
    method: &str,
    uri: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
) -> Vec<String> {
    vec![
        format!("{method} {uri} SIP/2.0"),
        via(),
        "Max-Forwards: 70".into(),
        format!("From: <sip:{from}@{DOMAIN}>;tag=f{}", unique()),
        format!("To: <sip:{to}@{DOMAIN}>"),
        format!("Call-ID: {call_id}"),
        format!("CSeq: {cseq} {method}"),
    ]
}

/// Head lines and body, with a correct Content-Length.
fn with_body(lines: &[String], body: &[u8]) -> Vec<u8> {
    let mut bytes = lines.join("\r\n").into_bytes();
    bytes.extend_from_slice(format!("\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// Head lines exactly as given (the caller supplies any Content-Length), then the body.
fn verbatim(lines: &[String], body: &[u8]) -> Vec<u8> {
    let mut bytes = lines.join("\r\n").into_bytes();
    bytes.extend_from_slice(b"\r\n\r\n");
    bytes.extend_from_slice(body);
    bytes
}

fn call_id() -> String {
    format!("bad-input-{}@127.0.0.1", unique())
}

fn options(call_id: &str) -> Vec<u8> {
    with_body(
        &standard(
            "OPTIONS",
            &format!("sip:{DOMAIN}"),
            "alice",
            "alice",
            call_id,
            1,
        ),
        b"",
    )
}

/// `lines` with the line starting with `prefix` replaced by `replacement` (or removed).
fn replace(mut lines: Vec<String>, prefix: &str, replacement: Option<&str>) -> Vec<String> {
    let index = lines
        .iter()
        .position(|line| line.starts_with(prefix))
        .expect("line to replace");
    match replacement {
        Some(text) => lines[index] = text.to_string(),
        None => {
            lines.remove(index);
        }
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// Expectations.

#[derive(Clone, Debug)]
enum Expect {
    /// This status; the connection stays usable (probed).
    Status(u16),
    /// This status with `header` containing `text`; the connection stays usable.
    StatusWith(u16, &'static str, &'static str),
    /// This status, then the server closes the connection.
    StatusThenClose(u16),
    /// No response at all; the connection stays usable.
    Silence,
    /// The server closes the connection without a response.
    CloseWithoutResponse,
}

fn check(conn: &mut Conn, expect: &Expect) -> Result<(), String> {
    let expect_status = |conn: &mut Conn, status: u16| -> Result<Response, String> {
        match conn.response() {
            Ok(response) if response.status == status => Ok(response),
            Ok(response) => Err(format!(
                "expected {status}, got {} {}",
                response.status, response.reason
            )),
            Err(end) => Err(format!("expected {status}, got no response: {end:?}")),
        }
    };
    match expect {
        Expect::Status(status) => {
            expect_status(conn, *status)?;
            conn.probe()
        }
        Expect::StatusWith(status, header, text) => {
            let response = expect_status(conn, *status)?;
            match response.headers.get(header) {
                Some(value) if value.contains(text) => conn.probe(),
                other => Err(format!(
                    "{status} has {header}: {other:?}, expected it to contain {text:?}"
                )),
            }
        }
        Expect::StatusThenClose(status) => {
            expect_status(conn, *status)?;
            conn.closed_without_response()
        }
        Expect::Silence => conn.probe(),
        Expect::CloseWithoutResponse => conn.closed_without_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Digest authentication.

#[derive(Clone, Debug)]
enum Tamper {
    None,
    WrongPassword,
    /// Credentials of another user (with the right password).
    Username(&'static str),
    /// A nonce the server never issued (one hex digit changed: the MAC no longer matches).
    ForgedNonce,
    /// `algorithm=SHA-512-256`, which PMS does not support.
    UnsupportedAlgorithm,
    /// Not a parsable digest credentials value.
    Malformed,
}

/// Sends `build(1, None)`; if the answer is a 401/407 challenge, sends `build(2, Some(line))`
/// with credentials for `user` (tampered as asked) and returns that answer.
fn authenticated(
    conn: &mut Conn,
    method: &str,
    uri: &str,
    user: &str,
    tamper: &Tamper,
    build: &dyn Fn(u32, Option<String>) -> Vec<u8>,
) -> Result<Response, String> {
    conn.send(&build(1, None));
    let first = conn
        .response()
        .map_err(|end| format!("no answer to the unauthenticated request: {end:?}"))?;
    let (challenge_header, credentials_header) = match first.status {
        401 => ("WWW-Authenticate", "Authorization"),
        407 => ("Proxy-Authenticate", "Proxy-Authorization"),
        _ => return Ok(first),
    };
    let mut challenge =
        select_challenge(first.headers.get_all(challenge_header)).ok_or_else(|| {
            format!(
                "{} without a usable challenge: {:?}",
                first.status, first.headers
            )
        })?;
    let (user, password) = match tamper {
        Tamper::WrongPassword => (user, "not the password"),
        Tamper::Username(other) => (*other, PASSWORD),
        _ => (user, PASSWORD),
    };
    if let Tamper::ForgedNonce = tamper {
        let mut nonce = challenge.nonce.into_bytes();
        nonce[0] = if nonce[0] == b'0' { b'1' } else { b'0' };
        challenge.nonce = String::from_utf8(nonce).expect("hex nonce");
    }
    let cnonce = format!("c{}", unique());
    let mut value = authorization(&challenge, user, password, method, uri, &cnonce, 1);
    match tamper {
        Tamper::UnsupportedAlgorithm => {
            value = value.replace(
                &format!("algorithm={}", challenge.algorithm.as_str()),
                "algorithm=SHA-512-256",
            )
        }
        Tamper::Malformed => value = "Digest username=\"alice\", realm=".to_string(),
        _ => {}
    }
    conn.send(&build(2, Some(format!("{credentials_header}: {value}"))));
    conn.response()
        .map_err(|end| format!("no answer to the authenticated request: {end:?}"))
}

/// A MESSAGE builder for [`authenticated`]: one Call-ID and From tag for both attempts.
fn message_builder(
    from: &str,
    to: &str,
    extra: Vec<String>,
    body: Vec<u8>,
) -> impl Fn(u32, Option<String>) -> Vec<u8> {
    let call_id = call_id();
    let from_line = format!("From: <sip:{from}@{DOMAIN}>;tag=f{}", unique());
    let to = to.to_string();
    move |cseq, auth| {
        let mut lines = standard(
            "MESSAGE",
            &format!("sip:{to}@{DOMAIN}"),
            "x",
            &to,
            &call_id,
            cseq,
        );
        lines = replace(lines, "From:", Some(&from_line));
        lines.extend(auth);
        lines.extend(extra.iter().cloned());
        with_body(&lines, &body)
    }
}

fn register_builder(user: &str, extra: Vec<String>) -> impl Fn(u32, Option<String>) -> Vec<u8> {
    let call_id = call_id();
    let user = user.to_string();
    move |cseq, auth| {
        let mut lines = standard(
            "REGISTER",
            &format!("sip:{DOMAIN}"),
            &user,
            &user,
            &call_id,
            cseq,
        );
        lines.extend(auth);
        lines.extend(extra.iter().cloned());
        with_body(&lines, b"")
    }
}

struct AuthCase {
    name: &'static str,
    method: &'static str,
    /// The user whose credentials are sent.
    user: &'static str,
    tamper: Tamper,
    build: Box<dyn Fn(u32, Option<String>) -> Vec<u8>>,
    expect: Expect,
}

/// The Request-URI of a request's bytes (the second token of its first line).
fn request_uri_of(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.split("\r\n").next()?;
    line.split(' ').nth(1).map(str::to_string)
}

fn uri_of(method: &str) -> String {
    match method {
        "REGISTER" => format!("sip:{DOMAIN}"),
        _ => format!("sip:bob@{DOMAIN}"),
    }
}

fn text(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|line| line.to_string()).collect()
}

fn auth_cases() -> Vec<AuthCase> {
    let plain = || text(&["Content-Type: text/plain;charset=UTF-8"]);
    let contact = |user: &str, expires: &str| {
        text(&[
            &format!("Contact: <sip:{user}@127.0.0.1:5999;transport=tcp>"),
            expires,
        ])
    };
    vec![
        AuthCase {
            name: "authenticated MESSAGE (SHA-256 digest) → 202 with X-PMS-Message-ID",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::None,
            build: Box::new(message_builder(
                "alice",
                "bob",
                plain(),
                "hello 👋".as_bytes().to_vec(),
            )),
            expect: Expect::StatusWith(202, "X-PMS-Message-ID", ""),
        },
        AuthCase {
            name: "MESSAGE with compact headers (c:, and v/f/t/i/l on the first line set) → 202",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::None,
            build: Box::new(move |cseq, auth| {
                let call_id = "compact-message@127.0.0.1";
                let mut lines = vec![
                    format!("MESSAGE sip:bob@{DOMAIN} SIP/2.0"),
                    format!("v: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-compact-{cseq}"),
                    "f: <sip:alice@localhost>;tag=compact".into(),
                    "t: <sip:bob@localhost>".into(),
                    format!("i: {call_id}"),
                    format!("CSeq: {cseq} MESSAGE"),
                    "c: text/plain".into(),
                ];
                lines.extend(auth);
                let body = b"compact";
                lines.push(format!("l: {}", body.len()));
                verbatim(&lines, body)
            }),
            expect: Expect::Status(202),
        },
        AuthCase {
            name: "MESSAGE with a wrong password → 403",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::WrongPassword,
            build: Box::new(message_builder("alice", "bob", plain(), b"x".to_vec())),
            expect: Expect::Status(403),
        },
        AuthCase {
            name: "MESSAGE authenticated as alice with From bob → 403",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::None,
            build: Box::new(message_builder("bob", "bob", plain(), b"spoof".to_vec())),
            expect: Expect::Status(403),
        },
        AuthCase {
            name: "MESSAGE with digest username bob (right password) and From alice → 403",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::Username("bob"),
            build: Box::new(message_builder("alice", "bob", plain(), b"spoof".to_vec())),
            expect: Expect::Status(403),
        },
        AuthCase {
            name: "MESSAGE with a forged nonce → 407 re-challenge with stale=true",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::ForgedNonce,
            build: Box::new(message_builder("alice", "bob", plain(), b"x".to_vec())),
            expect: Expect::StatusWith(407, "Proxy-Authenticate", "stale=true"),
        },
        AuthCase {
            name: "MESSAGE from a user that does not exist (mallory) → 403",
            method: "MESSAGE",
            user: "mallory",
            tamper: Tamper::None,
            build: Box::new(message_builder("mallory", "bob", plain(), b"x".to_vec())),
            expect: Expect::Status(403),
        },
        AuthCase {
            name: "MESSAGE with credentials for an unsupported algorithm → 407 re-challenge",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::UnsupportedAlgorithm,
            build: Box::new(message_builder("alice", "bob", plain(), b"x".to_vec())),
            expect: Expect::StatusWith(407, "Proxy-Authenticate", "Digest"),
        },
        AuthCase {
            name: "MESSAGE with malformed digest credentials → 400",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::Malformed,
            build: Box::new(message_builder("alice", "bob", plain(), b"x".to_vec())),
            expect: Expect::Status(400),
        },
        AuthCase {
            name: "MESSAGE to a user that does not exist, after auth → 404",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::None,
            build: Box::new(message_builder("alice", "nobody", plain(), b"x".to_vec())),
            expect: Expect::Status(404),
        },
        AuthCase {
            name: "MESSAGE with an empty body → 400",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::None,
            build: Box::new(message_builder("alice", "bob", plain(), Vec::new())),
            expect: Expect::Status(400),
        },
        AuthCase {
            name: "MESSAGE with Content-Type application/octet-stream → 415 with Accept",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::None,
            build: Box::new(message_builder(
                "alice",
                "bob",
                text(&["Content-Type: application/octet-stream"]),
                b"\x00\x01".to_vec(),
            )),
            expect: Expect::StatusWith(415, "Accept", "text/plain"),
        },
        AuthCase {
            name: "MESSAGE without Content-Type → 415 with Accept",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::None,
            build: Box::new(message_builder(
                "alice",
                "bob",
                Vec::new(),
                b"untyped".to_vec(),
            )),
            expect: Expect::StatusWith(415, "Accept", "text/plain"),
        },
        AuthCase {
            name: "MESSAGE with a malformed message/cpim body → 400",
            method: "MESSAGE",
            user: "alice",
            tamper: Tamper::None,
            build: Box::new(message_builder(
                "alice",
                "bob",
                text(&["Content-Type: message/cpim"]),
                b"this is not CPIM".to_vec(),
            )),
            expect: Expect::Status(400),
        },
        AuthCase {
            name: "REGISTER with Expires: 10 → 423 with Min-Expires: 60",
            method: "REGISTER",
            user: "alice",
            tamper: Tamper::None,
            build: Box::new(register_builder("alice", contact("alice", "Expires: 10"))),
            expect: Expect::StatusWith(423, "Min-Expires", "60"),
        },
        AuthCase {
            name: "REGISTER for alice with bob's credentials → 403",
            method: "REGISTER",
            user: "alice",
            tamper: Tamper::Username("bob"),
            build: Box::new(register_builder("alice", contact("alice", "Expires: 600"))),
            expect: Expect::Status(403),
        },
        AuthCase {
            name: "REGISTER with a forged nonce → 401 re-challenge with stale=true",
            method: "REGISTER",
            user: "alice",
            tamper: Tamper::ForgedNonce,
            build: Box::new(register_builder("alice", contact("alice", "Expires: 600"))),
            expect: Expect::StatusWith(401, "WWW-Authenticate", "stale=true"),
        },
        AuthCase {
            name: "REGISTER with a wrong password → 403",
            method: "REGISTER",
            user: "alice",
            tamper: Tamper::WrongPassword,
            build: Box::new(register_builder("alice", contact("alice", "Expires: 600"))),
            expect: Expect::Status(403),
        },
        AuthCase {
            name: "REGISTER Contact: * with Expires: 600 → 400",
            method: "REGISTER",
            user: "alice",
            tamper: Tamper::None,
            build: Box::new(register_builder(
                "alice",
                text(&["Contact: *", "Expires: 600"]),
            )),
            expect: Expect::Status(400),
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Framing and parsing cases (no authentication).

/// Runs the raw cases selected by `keep`, each on a fresh connection; returns (count, failures).
fn run_raw_cases(node: &Node, keep: impl Fn(&str) -> bool) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, bytes, expect) in raw_cases() {
        if !keep(name) {
            continue;
        }
        count += 1;
        let mut conn = Conn::open(node);
        conn.send(&bytes);
        if let Err(error) = check(&mut conn, &expect) {
            failures.push(format!("[raw] {name}: {error}"));
        }
    }
    (count, failures)
}

fn raw_cases() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let msg = |to: &str| {
        standard(
            "MESSAGE",
            &format!("sip:{to}@{DOMAIN}"),
            "alice",
            to,
            &call_id(),
            1,
        )
    };
    let plain = "Content-Type: text/plain".to_string();
    let with = |mut lines: Vec<String>, extra: &[&str]| {
        lines.extend(extra.iter().map(|line| line.to_string()));
        lines
    };
    let long_header = format!("Subject: {}", "x".repeat(20 * 1024));
    let many_headers: Vec<String> = (0..140)
        .map(|index| format!("X-Filler-{index}: {index}"))
        .collect();
    let mut non_utf8 = with_body(
        &with(
            msg("bob"),
            &["Content-Type: text/plain", "Subject: caf\u{e9}"],
        ),
        b"hi",
    );
    // Replace the UTF-8 "é" (C3 A9) with a lone Latin-1 byte E9 and a stray FF.
    let position = find(&non_utf8, "caf\u{e9}".as_bytes()).expect("subject") + 3;
    non_utf8.splice(position..position + 2, [0xE9, 0xFF]);
    vec![
        (
            "OPTIONS → 200 with Allow and Accept",
            options(&call_id()),
            Expect::StatusWith(200, "Allow", "MESSAGE"),
        ),
        (
            "MESSAGE without Content-Length on TCP → 400, then close",
            verbatim(&with(msg("bob"), &["Content-Type: text/plain"]), b""),
            Expect::StatusThenClose(400),
        ),
        (
            "non-numeric Content-Length → 400, then close",
            verbatim(
                &with(
                    msg("bob"),
                    &["Content-Type: text/plain", "Content-Length: twelve"],
                ),
                b"",
            ),
            Expect::StatusThenClose(400),
        ),
        (
            "two different Content-Length headers → 400, then close",
            verbatim(
                &with(
                    msg("bob"),
                    &[
                        "Content-Type: text/plain",
                        "Content-Length: 2",
                        "Content-Length: 3",
                    ],
                ),
                b"hi",
            ),
            Expect::StatusThenClose(400),
        ),
        (
            "Content-Length above the hard limit (16 × body limit) → 400, then close",
            verbatim(
                &with(
                    msg("bob"),
                    &["Content-Type: text/plain", "Content-Length: 99999999"],
                ),
                b"hi",
            ),
            Expect::StatusThenClose(400),
        ),
        (
            "2000-byte body over the 1024-byte limit → 413, body skipped, connection usable",
            with_body(
                &with(msg("bob"), &["Content-Type: text/plain"]),
                &[b'a'; 2000],
            ),
            Expect::Status(413),
        ),
        (
            "20 KiB header block → 400, then close",
            with_body(
                &with(msg("bob"), &["Content-Type: text/plain", &long_header]),
                b"hi",
            ),
            Expect::StatusThenClose(400),
        ),
        (
            "more than 128 headers → 400",
            with_body(&[msg("bob"), many_headers].concat(), b""),
            Expect::Status(400),
        ),
        (
            "binary garbage ending in CRLFCRLF → closed without a response",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\xff\xfe\x00\r\n\r\n".to_vec(),
            Expect::CloseWithoutResponse,
        ),
        (
            "text that is not SIP, with Content-Length: 0 → ignored, connection usable",
            b"HELLO WORLD\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Expect::Silence,
        ),
        (
            "non-UTF-8 bytes in a header value → 400",
            non_utf8,
            Expect::Status(400),
        ),
        (
            "NUL byte in a header value → 400",
            with_body(
                &with(msg("bob"), &["Content-Type: text/plain", "Subject: a\0b"]),
                b"hi",
            ),
            Expect::Status(400),
        ),
        (
            "header line without a colon → 400",
            with_body(&with(msg("bob"), &["this line has no colon"]), b""),
            Expect::Status(400),
        ),
        (
            "folded From header (continuation line) → accepted: 200 to OPTIONS",
            with_body(
                &replace(
                    standard(
                        "OPTIONS",
                        &format!("sip:{DOMAIN}"),
                        "alice",
                        "alice",
                        &call_id(),
                        1,
                    ),
                    "From:",
                    Some("From: \"Alice\"\r\n\t <sip:alice@localhost>;tag=folded"),
                ),
                b"",
            ),
            Expect::Status(200),
        ),
        (
            "compact header names v/f/t/i/l → accepted: 200 to OPTIONS",
            verbatim(
                &text(&[
                    &format!("OPTIONS sip:{DOMAIN} SIP/2.0"),
                    "v: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-compact-options",
                    "f: <sip:alice@localhost>;tag=c1",
                    "t: <sip:alice@localhost>",
                    &format!("i: {}", call_id()),
                    "CSeq: 1 OPTIONS",
                    "l: 0",
                ]),
                b"",
            ),
            Expect::Status(200),
        ),
        (
            "two Call-ID headers → 400",
            with_body(
                &with(msg("bob"), &["Call-ID: second@127.0.0.1", &plain]),
                b"hi",
            ),
            Expect::Status(400),
        ),
        (
            "missing Call-ID → 400",
            with_body(
                &with(replace(msg("bob"), "Call-ID:", None), &[&plain]),
                b"hi",
            ),
            Expect::Status(400),
        ),
        (
            "missing From → 400",
            with_body(&with(replace(msg("bob"), "From:", None), &[&plain]), b"hi"),
            Expect::Status(400),
        ),
        (
            "missing Via → no response (nowhere to send it), connection usable",
            with_body(&with(replace(msg("bob"), "Via:", None), &[&plain]), b"hi"),
            Expect::Silence,
        ),
        (
            "CSeq method mismatch (MESSAGE with CSeq: 1 OPTIONS) → 400",
            with_body(
                &with(
                    replace(msg("bob"), "CSeq:", Some("CSeq: 1 OPTIONS")),
                    &[&plain],
                ),
                b"hi",
            ),
            Expect::Status(400),
        ),
        (
            "non-numeric CSeq → 400",
            with_body(
                &with(
                    replace(msg("bob"), "CSeq:", Some("CSeq: one MESSAGE")),
                    &[&plain],
                ),
                b"hi",
            ),
            Expect::Status(400),
        ),
        (
            "Request-URI without a scheme → 400",
            with_body(
                &with(
                    replace(msg("bob"), "MESSAGE ", Some("MESSAGE bob SIP/2.0")),
                    &[&plain],
                ),
                b"hi",
            ),
            Expect::Status(400),
        ),
        (
            "Request-URI with a forbidden character in the host → 400",
            with_body(
                &with(
                    replace(
                        msg("bob"),
                        "MESSAGE ",
                        Some("MESSAGE sip:bob@local<host SIP/2.0"),
                    ),
                    &[&plain],
                ),
                b"hi",
            ),
            Expect::Status(400),
        ),
        (
            "tel: Request-URI → 416 Unsupported URI Scheme",
            with_body(
                &with(
                    replace(
                        msg("bob"),
                        "MESSAGE ",
                        Some("MESSAGE tel:+15551234567 SIP/2.0"),
                    ),
                    &[&plain],
                ),
                b"hi",
            ),
            Expect::Status(416),
        ),
        (
            "Request-URI in another domain → 404",
            with_body(
                &with(
                    replace(
                        msg("bob"),
                        "MESSAGE ",
                        Some("MESSAGE sip:bob@example.com SIP/2.0"),
                    ),
                    &[&plain],
                ),
                b"hi",
            ),
            Expect::Status(404),
        ),
        (
            "Max-Forwards: 0 → 483",
            with_body(
                &with(
                    replace(msg("bob"), "Max-Forwards:", Some("Max-Forwards: 0")),
                    &[&plain],
                ),
                b"hi",
            ),
            Expect::Status(483),
        ),
        (
            "SUBSCRIBE → 405 with Allow",
            with_body(
                &with(
                    standard(
                        "SUBSCRIBE",
                        &format!("sip:bob@{DOMAIN}"),
                        "alice",
                        "bob",
                        &call_id(),
                        1,
                    ),
                    &["Event: presence"],
                ),
                b"",
            ),
            Expect::StatusWith(405, "Allow", "MESSAGE"),
        ),
        (
            "INVITE → 405 with Allow",
            with_body(
                &standard(
                    "INVITE",
                    &format!("sip:bob@{DOMAIN}"),
                    "alice",
                    "bob",
                    &call_id(),
                    1,
                ),
                b"",
            ),
            Expect::StatusWith(405, "Allow", "REGISTER"),
        ),
        (
            "request line with SIP/3.0 → 505 Version Not Supported",
            with_body(
                &with(
                    replace(
                        msg("bob"),
                        "MESSAGE ",
                        Some("MESSAGE sip:bob@localhost SIP/3.0"),
                    ),
                    &[&plain],
                ),
                b"hi",
            ),
            Expect::Status(505),
        ),
        (
            "unsolicited response → ignored, connection usable",
            with_body(
                &text(&[
                    "SIP/2.0 200 OK",
                    "Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-unsolicited",
                    "From: <sip:alice@localhost>;tag=u1",
                    "To: <sip:bob@localhost>;tag=u2",
                    "Call-ID: unsolicited@127.0.0.1",
                    "CSeq: 1 MESSAGE",
                ]),
                b"",
            ),
            Expect::Silence,
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Sequences that do not fit one request/one answer.

/// Same nonce and nc = 1 used for a second, different MESSAGE: a replay, refused (403; a 407
/// re-challenge is also acceptable).
fn replayed_nonce_count(node: &Node) -> Result<(), String> {
    let mut conn = Conn::open(node);
    let uri = uri_of("MESSAGE");
    let first = message_builder(
        "alice",
        "bob",
        text(&["Content-Type: text/plain"]),
        b"first".to_vec(),
    );
    conn.send(&first(1, None));
    let challenge_response = conn.response().map_err(|end| format!("no 407: {end:?}"))?;
    let challenge = select_challenge(challenge_response.headers.get_all("Proxy-Authenticate"))
        .ok_or_else(|| {
            format!(
                "expected a 407 challenge, got {}",
                challenge_response.status
            )
        })?;
    let credentials = authorization(
        &challenge,
        "alice",
        PASSWORD,
        "MESSAGE",
        &uri,
        "replayed-cnonce",
        1,
    );
    conn.send(&first(
        2,
        Some(format!("Proxy-Authorization: {credentials}")),
    ));
    let accepted = conn
        .response()
        .map_err(|end| format!("no answer to the first MESSAGE: {end:?}"))?;
    if accepted.status != 202 {
        return Err(format!(
            "first MESSAGE: expected 202, got {} {}",
            accepted.status, accepted.reason
        ));
    }
    let second = message_builder(
        "alice",
        "bob",
        text(&["Content-Type: text/plain"]),
        b"replayed".to_vec(),
    );
    conn.send(&second(
        1,
        Some(format!("Proxy-Authorization: {credentials}")),
    ));
    let replayed = conn
        .response()
        .map_err(|end| format!("no answer to the replay: {end:?}"))?;
    if replayed.status != 403 && replayed.status != 407 {
        return Err(format!(
            "replayed nc: expected 403 (or 407), got {} {}",
            replayed.status, replayed.reason
        ));
    }
    conn.probe()
}

/// A client retry of the same transaction (same Call-ID, CSeq and From tag) with fresh
/// credentials (nc = 2) is answered 202 with the same X-PMS-Message-ID (stored once).
fn retransmission_is_stored_once(node: &Node) -> Result<(), String> {
    let mut conn = Conn::open(node);
    let uri = uri_of("MESSAGE");
    let build = message_builder(
        "alice",
        "bob",
        text(&["Content-Type: text/plain"]),
        b"once".to_vec(),
    );
    conn.send(&build(1, None));
    let challenge_response = conn.response().map_err(|end| format!("no 407: {end:?}"))?;
    let challenge = select_challenge(challenge_response.headers.get_all("Proxy-Authenticate"))
        .ok_or_else(|| {
            format!(
                "expected a 407 challenge, got {}",
                challenge_response.status
            )
        })?;
    let mut ids = Vec::new();
    for nc in 1..=2 {
        let credentials = authorization(
            &challenge,
            "alice",
            PASSWORD,
            "MESSAGE",
            &uri,
            "retry-cnonce",
            nc,
        );
        conn.send(&build(
            2,
            Some(format!("Proxy-Authorization: {credentials}")),
        ));
        let response = conn
            .response()
            .map_err(|end| format!("no answer to attempt {nc}: {end:?}"))?;
        if response.status != 202 {
            return Err(format!(
                "attempt {nc}: expected 202, got {} {}",
                response.status, response.reason
            ));
        }
        ids.push(response.headers.get("X-PMS-Message-ID").map(str::to_string));
    }
    if ids[0].is_none() || ids[0] != ids[1] {
        return Err(format!(
            "a retry must get the same X-PMS-Message-ID, got {ids:?}"
        ));
    }
    Ok(())
}

/// RFC 5626 keep-alive: CRLFCRLF is answered with CRLF, and the connection stays usable.
fn crlf_keep_alive(node: &Node) -> Result<(), String> {
    let mut conn = Conn::open(node);
    conn.send(b"\r\n\r\n");
    while conn.buffer.len() < 2 {
        conn.fill().map_err(|end| format!("no pong: {end:?}"))?;
    }
    if !conn.buffer.starts_with(b"\r\n") {
        return Err(format!(
            "pong is not CRLF: {:?}",
            String::from_utf8_lossy(&conn.buffer)
        ));
    }
    conn.buffer.drain(..2);
    conn.probe()
}

/// A body shorter than its Content-Length, then the client closes its side: no response (the
/// request never completed), and the server closes too.
fn truncated_body_then_close(node: &Node) -> Result<(), String> {
    let mut conn = Conn::open(node);
    let mut lines = standard(
        "MESSAGE",
        &format!("sip:bob@{DOMAIN}"),
        "alice",
        "bob",
        &call_id(),
        1,
    );
    lines.push("Content-Type: text/plain".into());
    lines.push("Content-Length: 100".into());
    conn.send(&verbatim(&lines, b"only ten b"));
    conn.stream
        .shutdown(Shutdown::Write)
        .map_err(|error| format!("shutdown: {error}"))?;
    conn.closed_without_response()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn hostile_and_malformed_requests_get_exact_answers_and_the_node_survives() {
    let node = Node::start_with(vec![
        "--sip-body-bytes-max".into(),
        BODY_BYTES_MAX.to_string(),
    ]);
    node.add_user("alice");
    node.add_user("bob");

    let (mut count, mut failures) = run_raw_cases(&node, |_| true);
    for case in auth_cases() {
        count += 1;
        let mut conn = Conn::open(&node);
        // The digest uri is the Request-URI of the request being sent (RFC 7616 §3.4.6).
        let uri = request_uri_of(&(case.build)(1, None)).unwrap_or_else(|| uri_of(case.method));
        let outcome = authenticated(
            &mut conn,
            case.method,
            &uri,
            case.user,
            &case.tamper,
            &*case.build,
        )
        .and_then(|response| {
            // Put the response back in front of the checker by checking it directly.
            let status_ok = |status: u16| {
                if response.status == status {
                    Ok(())
                } else {
                    Err(format!(
                        "expected {status}, got {} {}",
                        response.status, response.reason
                    ))
                }
            };
            match &case.expect {
                Expect::Status(status) => status_ok(*status).and_then(|()| conn.probe()),
                Expect::StatusWith(status, header, text) => {
                    status_ok(*status).and_then(|()| match response.headers.get(header) {
                        Some(value) if value.contains(text) => conn.probe(),
                        other => Err(format!(
                            "{status} has {header}: {other:?}, expected it to contain {text:?}"
                        )),
                    })
                }
                other => Err(format!(
                    "unsupported expectation {other:?} for an authenticated case"
                )),
            }
        });
        if let Err(error) = outcome {
            failures.push(format!("[auth] {}: {error}", case.name));
        }
    }
    let sequences: [(&str, Sequence); 4] = [
        ("replayed nonce count → 403", replayed_nonce_count),
        (
            "retransmission stored once (same X-PMS-Message-ID)",
            retransmission_is_stored_once,
        ),
        ("CRLF keep-alive ping → CRLF pong", crlf_keep_alive),
        (
            "Content-Length larger than the data, then client close → closed without a response",
            truncated_body_then_close,
        ),
    ];
    for (name, run) in sequences {
        count += 1;
        if let Err(error) = run(&node) {
            failures.push(format!("[sequence] {name}: {error}"));
        }
    }
    assert!(
        count >= 25,
        "the table must keep at least 25 cases, has {count}"
    );

    // After all of this, a normal authenticated MESSAGE on a new connection still gets 202.
    let mut conn = Conn::open(&node);
    let build = message_builder(
        "alice",
        "bob",
        text(&["Content-Type: text/plain;charset=UTF-8"]),
        "still here ✓".as_bytes().to_vec(),
    );
    match authenticated(
        &mut conn,
        "MESSAGE",
        &uri_of("MESSAGE"),
        "alice",
        &Tamper::None,
        &build,
    ) {
        Ok(response)
            if response.status == 202 && response.headers.get("X-PMS-Message-ID").is_some() => {}
        Ok(response) => failures.push(format!(
            "[final] normal MESSAGE: expected 202 with X-PMS-Message-ID, got {} {}",
            response.status, response.reason
        )),
        Err(error) => failures.push(format!("[final] normal MESSAGE: {error}")),
    }
    let ready = common::http_get(node.ports.http, "/readyz");
    if ready.as_ref().is_none_or(|(status, _)| *status != 200) {
        failures.push(format!("[final] /readyz: expected 200, got {ready:?}"));
    }

    assert!(
        failures.is_empty(),
        "{} of {count} bad-input cases failed:\n{}\n--- pmsd log (tail) ---\n{}",
        failures.len(),
        failures.join("\n"),
        tail(&node.log(), 80)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
