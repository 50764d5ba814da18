//! End-to-end behaviour of one real `pmsd` process over real sockets, driven by the real
//! `pmsctl` user agent over TLS: offline store and delivery, the online path, dedup, expiry with
//! IMDN, IMDN delivered, ordering, crash recovery, no plaintext at rest, drain on SIGTERM,
//! metrics.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Node, PASSWORD, files_under, http_get};
use serde_json::Value;

fn status_of(lines: &[Value], status: &str) -> Option<Value> {
    lines.iter().find(|line| line["status"] == status).cloned()
}

fn bodies(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|message| message["body"].as_str().map(str::to_string))
        .collect()
}

fn node_with_alice_and_bob() -> Node {
    let node = Node::start();
    node.add_user("alice");
    node.add_user("bob");
    node
}

#[test]
fn offline_message_is_stored_then_delivered_byte_for_byte_over_tls() {
    let node = node_with_alice_and_bob();
    let text = "Ciao 😀 — grüße, 東京 offline-delivery";
    let (code, lines) = node.send("alice", "bob", text, &[]);
    assert_eq!(code, 0, "send: {lines:?}");
    assert_eq!(lines[0]["status"], "sending");
    let enqueued = status_of(&lines, "enqueued").expect("enqueued line");
    assert_eq!(enqueued["code"], 202);
    let message_id = enqueued["message_id"]
        .as_str()
        .expect("message id")
        .to_string();

    let (code, messages) = node.receive("bob", 1, 30);
    assert_eq!(code, 0, "listen: {messages:?}");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["body"].as_str(), Some(text));
    assert_eq!(messages[0]["from"], "sip:alice@localhost");
    assert_eq!(messages[0]["to"], "sip:bob@localhost");
    assert!(
        messages[0]["content_type"]
            .as_str()
            .unwrap_or_default()
            .starts_with("text/plain")
    );

    // The device's 200 is committed as delivered right after it is sent: wait for the commit.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let output = node.run_pmsctl(&["message", "status", &message_id]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let status: Value = serde_json::from_slice(&output.stdout).expect("status json");
        if status["status"] != "enqueued" || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["status"], "delivered");
    assert_eq!(status["recipient"], "bob");
}

#[test]
fn online_recipient_gets_it_within_the_window_and_the_sender_gets_200() {
    let node = node_with_alice_and_bob();
    let mut bob = node.listen("bob", 1, 30);
    bob.wait_for_stderr(Duration::from_secs(20), "registered");
    let (code, lines) = node.send("alice", "bob", "are you there? 👋", &[]);
    assert_eq!(code, 0, "{lines:?}");
    let delivered = status_of(&lines, "delivered").expect("200 means delivered");
    assert_eq!(delivered["code"], 200);
    let (code, messages) = bob.finish();
    assert_eq!(code, 0);
    assert_eq!(bodies(&messages), vec!["are you there? 👋"]);
}

#[test]
fn expired_message_is_never_delivered_and_the_sender_gets_a_failed_imdn() {
    let node = node_with_alice_and_bob();
    let (code, lines) = node.send(
        "alice",
        "bob",
        "too late",
        &["--expires", "1", "--wait", "delivered", "--timeout", "30"],
    );
    assert_eq!(code, 1, "expiry is reported as an error: {lines:?}");
    let enqueued = status_of(&lines, "enqueued").expect("enqueued first");
    let error = status_of(&lines, "error").expect("error line from the IMDN");
    assert_eq!(error["reason"], "failed", "{error}");
    let message_id = enqueued["message_id"].as_str().expect("id").to_string();
    let output = node.run_pmsctl(&["message", "status", &message_id]);
    let status: Value = serde_json::from_slice(&output.stdout).expect("status json");
    assert_eq!(status["status"], "expired");
    // Bob comes online afterwards: nothing is delivered.
    let mut bob = node.listen("bob", 1, 3);
    bob.wait_for_stderr(Duration::from_secs(20), "registered");
    let (code, messages) = bob.finish();
    assert_eq!(code, 4, "nothing must arrive: {messages:?}");
    assert!(bodies(&messages).is_empty());
}

#[test]
fn delivered_imdn_reaches_a_sender_that_waits_for_it() {
    let node = node_with_alice_and_bob();
    let child = node
        .pmsctl()
        .args([
            "send",
            "--server",
            &node.sip_tls(),
            "--user",
            "alice",
            "--password",
            PASSWORD,
            "--to",
            "bob",
        ])
        .args([
            "--wait",
            "delivered",
            "--timeout",
            "40",
            "--",
            "tell me when you read this",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn send");
    let mut alice = common::Listener::new(child);
    alice.wait_for(Duration::from_secs(20), |line| line["status"] == "enqueued");
    let (code, messages) = node.receive("bob", 1, 30);
    assert_eq!(code, 0);
    assert_eq!(bodies(&messages), vec!["tell me when you read this"]);
    let (code, lines) = alice.finish();
    assert_eq!(code, 0, "alice learns of the delivery: {lines:?}");
    assert!(status_of(&lines, "delivered").is_some(), "{lines:?}");
}

#[test]
fn twenty_queued_messages_arrive_in_order() {
    let node = node_with_alice_and_bob();
    let sent: Vec<String> = (1..=20).map(|n| format!("ordered #{n:02}")).collect();
    for text in &sent {
        let (code, lines) = node.send("alice", "bob", text, &[]);
        assert_eq!(code, 0, "{lines:?}");
    }
    let (code, messages) = node.receive("bob", 20, 60);
    assert_eq!(code, 0, "{messages:?}");
    assert_eq!(bodies(&messages), sent);
}

/// A raw SIP client over TCP, to control transactions and flows exactly.
struct RawClient {
    stream: TcpStream,
    framer: pms_sip::framing::StreamFramer,
}

impl RawClient {
    fn connect(node: &Node) -> Self {
        let stream = TcpStream::connect(node.sip_tcp_addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        RawClient {
            stream,
            framer: pms_sip::framing::StreamFramer::new(64 * 1024, 64 * 1024),
        }
    }

    /// The next SIP message from the server (keep-alives skipped).
    fn next_message(&mut self) -> pms_sip::message::SipMessage {
        let mut buffer = [0u8; 8192];
        loop {
            while let Some(frame) = self.framer.next_frame() {
                if let pms_sip::framing::Frame::Message(bytes) = frame.expect("framing") {
                    return pms_sip::message::parse(&bytes).expect("parse");
                }
            }
            let read = self.stream.read(&mut buffer).expect("read");
            assert!(read > 0, "server closed the connection");
            self.framer.push(&buffer[..read]);
        }
    }

    /// Sends `request` and returns the first response (requests meanwhile are not expected).
    fn exchange(&mut self, request: &[u8]) -> pms_sip::message::Response {
        self.stream.write_all(request).expect("write");
        loop {
            if let pms_sip::message::SipMessage::Response(response) = self.next_message() {
                return response;
            }
        }
    }

    fn next_request(&mut self) -> pms_sip::message::Request {
        loop {
            if let pms_sip::message::SipMessage::Request(request) = self.next_message() {
                return request;
            }
        }
    }

    fn answer(&mut self, request: &pms_sip::message::Request, status: u16) {
        let response = pms_sip::message::response_to(request, status, "OK", "device");
        self.stream.write_all(&response.to_bytes()).expect("write");
    }
}

fn register_request(call_id: &str, cseq: u32, authorization: Option<&str>) -> Vec<u8> {
    let mut request = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK{call_id}{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=reg\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:bob@127.0.0.1:5999;transport=tcp>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00000000b0b1>\";reg-id=1\r\n\
         Expires: 600\r\n"
    );
    if let Some(authorization) = authorization {
        request.push_str(&format!("Authorization: {authorization}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    request.into_bytes()
}

/// REGISTERs bob's one device (same instance id every time) on `client`'s connection.
fn register_bob(client: &mut RawClient, call_id: &str) -> pms_sip::message::Response {
    let challenge = client.exchange(&register_request(call_id, 1, None));
    assert_eq!(challenge.status, 401);
    let challenge =
        pms_sip::digest::select_challenge(challenge.headers.get_all("WWW-Authenticate"))
            .expect("challenge");
    let authorization = pms_sip::digest::authorization(
        &challenge,
        "bob",
        PASSWORD,
        "REGISTER",
        "sip:localhost",
        "cnonce-reg",
        1,
    );
    client.exchange(&register_request(call_id, 2, Some(&authorization)))
}

#[test]
fn a_device_registering_again_on_a_new_connection_replaces_its_flow() {
    // The device is on plain TCP and alice sends over TLS: the policy must allow that.
    let node = Node::start_with(vec!["--allow-plaintext-delivery".into()]);
    node.add_user("alice");
    node.add_user("bob");
    let mut old = RawClient::connect(&node);
    assert_eq!(register_bob(&mut old, "reg-old").status, 200);
    let mut new = RawClient::connect(&node);
    let registered = register_bob(&mut new, "reg-new");
    assert_eq!(registered.status, 200);
    assert_eq!(
        registered.headers.get_all("Contact").len(),
        1,
        "one device keeps one binding: {registered:?}"
    );
    let (code, lines) = node.send("alice", "bob", "to the newest flow", &[]);
    assert_eq!(code, 0, "{lines:?}");
    let delivered = new.next_request();
    assert_eq!(delivered.body, "to the newest flow".as_bytes());
    assert!(
        delivered.headers.get("Contact").is_none(),
        "RFC 3428: no Contact"
    );
    assert!(delivered.headers.get("X-PMS-Message-ID").is_some());
    new.answer(&delivered, 200);
}

fn message_request(
    branch: &str,
    call_id: &str,
    cseq: u32,
    authorization: Option<&str>,
    body: &str,
) -> Vec<u8> {
    let mut request = format!(
        "MESSAGE sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=fixedtag\r\nTo: <sip:bob@localhost>\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} MESSAGE\r\nContent-Type: text/plain;charset=UTF-8\r\n"
    );
    if let Some(authorization) = authorization {
        request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    request.into_bytes()
}

/// Sends the MESSAGE on a new connection, answering the digest challenge.
fn send_authenticated(
    node: &Node,
    branch: &str,
    call_id: &str,
    body: &str,
) -> pms_sip::message::Response {
    let mut client = RawClient::connect(node);
    let challenge = client.exchange(&message_request(
        &format!("{branch}a"),
        call_id,
        1,
        None,
        body,
    ));
    assert_eq!(challenge.status, 407);
    let challenge =
        pms_sip::digest::select_challenge(challenge.headers.get_all("Proxy-Authenticate"))
            .expect("challenge");
    let authorization = pms_sip::digest::authorization(
        &challenge,
        "alice",
        PASSWORD,
        "MESSAGE",
        "sip:bob@localhost",
        "cnonce1",
        1,
    );
    client.exchange(&message_request(
        branch,
        call_id,
        2,
        Some(&authorization),
        body,
    ))
}

#[test]
fn a_retried_message_is_answered_the_same_and_stored_once() {
    let node = node_with_alice_and_bob();
    let first = send_authenticated(&node, "first", "dedup-1", "only once");
    assert_eq!(first.status, 202, "{first:?}");
    // The client did not get the answer and retries the same request (same From tag, Call-ID
    // and CSeq) on a new connection, as a new transaction: Raft-level dedup must catch it.
    let retry = send_authenticated(&node, "retry", "dedup-1", "only once");
    assert_eq!(retry.status, 202, "{retry:?}");
    assert!(first.headers.get("X-PMS-Message-ID").is_some());
    assert_eq!(
        first.headers.get("X-PMS-Message-ID"),
        retry.headers.get("X-PMS-Message-ID")
    );
    let (code, messages) = node.receive("bob", 2, 3);
    assert_eq!(code, 4, "exactly one message, so waiting for two times out");
    assert_eq!(bodies(&messages), vec!["only once"]);
}

#[test]
fn kill_9_loses_none_of_100_queued_messages() {
    let mut node = node_with_alice_and_bob();
    let sent: Vec<String> = (1..=100).map(|n| format!("survivor {n:03} 💾")).collect();
    for text in &sent {
        let (code, lines) = node.send("alice", "bob", text, &[]);
        assert_eq!(code, 0, "{lines:?}");
    }
    node.kill();
    node.spawn();
    let (code, messages) = node.receive("bob", 100, 90);
    assert_eq!(code, 0, "all 100 after the crash: got {}", messages.len());
    assert_eq!(bodies(&messages), sent);
}

#[test]
fn no_plaintext_marker_in_any_file_of_the_data_dir() {
    let mut node = node_with_alice_and_bob();
    let marker = "PLAINTEXT-MARKER-7f3a9c1e";
    let mut message_ids = Vec::new();
    for n in 0..20 {
        let (code, lines) = node.send("alice", "bob", &format!("{marker} #{n}"), &[]);
        assert_eq!(code, 0, "{lines:?}");
        message_ids.extend(
            lines
                .iter()
                .filter_map(|line| line["message_id"].as_str().map(str::to_owned)),
        );
    }
    // Deliver half so that delivered, queued and IMDN records all exist.
    let (code, _) = node.receive("bob", 10, 30);
    assert_eq!(code, 0);
    // A clean stop flushes memtables to SST files; then scan everything, WAL and logs included.
    assert!(node.terminate().success());
    let data_dir = node.data_dir();
    let db = data_dir.join("db");
    // Control: both scans see what is stored in clear by design (message ids key the status
    // records), and the byte scan sees it inside an SST file: blocks are not compressed.
    let message_id = message_ids.first().expect("a message id was printed");
    assert!(
        common::stored_in(&db, message_id.as_bytes()).contains(&"status"),
        "control: the RocksDB scan finds a message id"
    );
    let holders = common::files_containing(&data_dir, message_id.as_bytes());
    assert!(
        holders
            .iter()
            .any(|file| file.extension().is_some_and(|ext| ext == "sst")),
        "control: the byte scan finds a message id in an SST file: {holders:?}"
    );
    assert_eq!(
        common::stored_in(&db, marker.as_bytes()),
        Vec::<&str>::new(),
        "plaintext marker stored (read through RocksDB: every column family, log, snapshot)"
    );
    assert_eq!(
        common::files_containing(&data_dir, marker.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "plaintext marker in a file of the data dir"
    );
}

#[test]
fn sigterm_drains_and_exits_zero_and_a_restart_keeps_the_users() {
    let mut node = node_with_alice_and_bob();
    let status = node.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log()
    );
    node.spawn();
    let output = node.run_pmsctl(&["user", "list", "--json"]);
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        listed.contains("alice") && listed.contains("bob"),
        "{listed}"
    );
}

#[test]
fn metrics_count_what_happened_and_pass_promtool() {
    let node = node_with_alice_and_bob();
    let (code, _) = node.send("alice", "bob", "count me", &[]);
    assert_eq!(code, 0);
    let (status, metrics) = http_get(node.ports.http, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("pms_messages_accepted_total 1"),
        "{metrics}"
    );
    // The 202 (answered at once: Bob has no device) must be counted exactly once.
    assert!(
        metrics.contains("pms_sip_requests_total{method=\"MESSAGE\",status=\"202\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pms_raft_commit_latency_seconds_bucket"),
        "{metrics}"
    );
    assert_eq!(
        http_get(node.ports.http, "/livez").map(|(status, _)| status),
        Some(200)
    );
    common::promtool_check_metrics(&metrics);
}

/// `pmsctl send` from `route.0` to `route.1` ends in an error with `code` and a reason that
/// contains `reason_part`.
fn assert_refused(node: &Node, route: (&str, &str), code: u16, reason_part: &str) {
    let (exit, lines) = node.send(route.0, route.1, "refused", &[]);
    assert_eq!(exit, 1, "{lines:?}");
    let error = status_of(&lines, "error").expect("error line");
    assert_eq!(error["code"], code, "{error}");
    let reason = error["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(reason_part),
        "reason {reason:?} should name {reason_part:?}"
    );
}

#[test]
fn accounts_without_secure_messaging_are_refused_before_anything_is_stored() {
    let node = node_with_alice_and_bob();
    let disable = node.run_pmsctl(&["user", "disable", "bob"]);
    assert!(
        disable.status.success(),
        "{}",
        String::from_utf8_lossy(&disable.stderr)
    );
    assert_refused(&node, ("alice", "bob"), 403, "recipient bob");
    assert_refused(&node, ("bob", "alice"), 403, "sender bob");
    assert_refused(&node, ("alice", "nobody"), 404, "nobody");
    // Enabled again, bob receives only what was sent after: nothing was stored while disabled.
    let enable = node.run_pmsctl(&["user", "enable", "bob"]);
    assert!(enable.status.success());
    let (code, _) = node.send("alice", "bob", "now it works", &[]);
    assert_eq!(code, 0);
    let (code, messages) = node.receive("bob", 1, 30);
    assert_eq!(code, 0);
    assert_eq!(bodies(&messages), vec!["now it works"]);
}

/// Guarantee 6 on the host: nothing the node writes (RocksDB files, WAL, certificates, master
/// key) is readable by group or others, and a shared master key file that is refuses the start.
#[test]
fn the_data_dir_is_private_and_a_readable_master_key_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut node = node_with_alice_and_bob();
    let (code, _) = node.send("alice", "bob", "private at rest", &[]);
    assert_eq!(code, 0);
    assert_eq!(node.terminate().code(), Some(0));
    let data_dir = node.data_dir();
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&data_dir), 0o700, "data dir");
    let files = files_under(&data_dir);
    assert!(files.len() > 5, "RocksDB, certs and key files: {files:?}");
    let open: Vec<String> = files
        .iter()
        .filter(|path| mode(path) & 0o077 != 0)
        .map(|path| format!("{} {:o}", path.display(), mode(path)))
        .collect();
    assert!(open.is_empty(), "readable by group or others: {open:?}");

    let key = data_dir.join("master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    node.spawn_process();
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = node.log();
    assert!(
        log.contains(&format!(
            "master key file {} is readable by group or others: make it private with `chmod 600",
            key.display()
        )),
        "{log}"
    );
}
