//! SIPp scenarios (`tests/sipp/*.xml`) against a real `pmsd`, over TCP (`-t t1`) and UDP
//! (`-t u1`): REGISTER with digest auth (401 → 200), MESSAGE to an offline recipient
//! (never registered, and registered on a TCP connection that has since closed: 407 → 202, then
//! delivered to `pmsctl listen`), and refused requests with their exact status codes (483, 405
//! with Allow, 400, 413, 415 with Accept, 404, 403, 423 with Min-Expires, OPTIONS 200).
//!
//! Each scenario is one SIPp call (`-m 1`); SIPp exits 0 only when every call succeeded, and a
//! missing or unexpected response fails the call (`-timeout 20s -timeout_error`, per-recv
//! timeouts of 10 s). On failure the test prints SIPp's error and message traces.
//!
//! SIPp 3.6.1 computes MD5 digests only and answers only the first challenge, so the nodes here
//! run with `--digest-algorithms md5`. Its digest `uri` is set to each scenario's Request-URI
//! with `-auth_uri` (PMS checks that they match).
//! They also run with `--sip-body-bytes-max 1024` for the 413 scenario.
//!
//! A missing `sipp` fails every test here: the README's test command installs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Node, PASSWORD};

const DOMAIN: &str = "localhost";
/// Never provisioned (field2 of the injection file).
const NOBODY: &str = "nobody";

/// SIPp must be installed (the README's test command installs `sip-tester`): a missing tool
/// fails the test instead of passing it.
fn require_sipp() {
    let found = Command::new("sipp")
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok(),
        "`sipp` is not installed (apt-get install sip-tester; the README's test command does this): {found:?}"
    );
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    fn flag(self) -> &'static str {
        match self {
            Transport::Tcp => "t1",
            Transport::Udp => "u1",
        }
    }
}

fn sipp_node() -> Node {
    Node::start_with(
        ["--digest-algorithms", "md5", "--sip-body-bytes-max", "1024"]
            .iter()
            .map(|arg| arg.to_string())
            .collect(),
    )
}

/// The digest `uri` for a scenario's authenticated request: its Request-URI (RFC 7616 §3.4.6;
/// PMS refuses credentials computed for another URI). SIPp 3.6.1 would put
/// `sip:remote_ip:remote_port` there; `-auth_uri` (without the `sip:`, which SIPp adds) sets
/// it. Read from the scenario's first REGISTER or MESSAGE line, with the injected fields.
fn auth_uri(file: &str, user: &str, peer: &str) -> String {
    let text = std::fs::read_to_string(scenario(file)).expect("reading the scenario");
    let template = text
        .lines()
        .map(str::trim)
        .find_map(|line| {
            ["REGISTER ", "MESSAGE "]
                .iter()
                .find_map(|method| line.strip_prefix(method))
                .filter(|rest| rest.ends_with(" SIP/2.0"))
                .and_then(|rest| rest.split(' ').next())
        })
        .unwrap_or("[domain]");
    template
        .trim_start_matches("sip:")
        .replace("[field0]", user)
        .replace("[field1]", peer)
        .replace("[field2]", NOBODY)
        .replace("[domain]", DOMAIN)
}

/// Runs one scenario as one call: `user` is field0 of the injection file and the digest
/// username (`-au`), `peer` field1, a user that does not exist field2; `password` is the digest
/// password (`-ap`). SIPp 3.6.1 cannot take `[fieldN]` inside `[authentication ...]` (it
/// expands the field first and breaks the keyword), hence `-au`/`-ap`.
/// `Err` carries SIPp's output and traces.
fn run_sipp(
    node: &Node,
    file: &str,
    transport: Transport,
    user: &str,
    peer: &str,
    password: &str,
) -> Result<(), String> {
    let work = tempfile::tempdir().expect("tempdir");
    let csv = work.path().join("users.csv");
    std::fs::write(&csv, format!("SEQUENTIAL\n{user};{peer};{NOBODY};\n"))
        .expect("writing injection file");
    let local_port = common::free_port();
    let output = Command::new("sipp")
        .current_dir(work.path())
        .arg(format!("127.0.0.1:{}", node.ports.sip_tcp))
        .arg("-sf")
        .arg(scenario(file))
        .arg("-inf")
        .arg(&csv)
        .args(["-key", "domain", DOMAIN, "-au", user, "-ap", password])
        .args(["-auth_uri", &auth_uri(file, user, peer)])
        .args([
            "-t",
            transport.flag(),
            "-m",
            "1",
            "-timeout",
            "20s",
            "-timeout_error",
        ])
        // -nd: no BYE/CANCEL of SIPp's own when a call fails.
        .args(["-trace_err", "-trace_msg", "-nostdin", "-nd"])
        .args(["-i", "127.0.0.1", "-p", &local_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("running sipp");
    if output.status.success() {
        return Ok(());
    }
    let mut report = format!(
        "sipp {file} over {transport:?} exited with {}\nstderr: {}\n",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for path in common::files_under(work.path()) {
        if path.extension().is_some_and(|ext| ext == "log") {
            report.push_str(&format!(
                "--- {} ---\n{}\n",
                path.file_name().unwrap_or_default().to_string_lossy(),
                std::fs::read_to_string(&path).unwrap_or_default()
            ));
        }
    }
    Err(report)
}

fn expect_ok(node: &Node, file: &str, transport: Transport, user: &str, peer: &str) {
    if let Err(report) = run_sipp(node, file, transport, user, peer, PASSWORD) {
        panic!("{report}\n--- pmsd log ---\n{}", node.log());
    }
}

fn register_with_digest_auth(transport: Transport) {
    require_sipp();
    let node = sipp_node();
    node.add_user("alice");
    expect_ok(&node, "register_auth.xml", transport, "alice", "bob");
}

#[test]
fn register_with_digest_auth_tcp() {
    register_with_digest_auth(Transport::Tcp);
}

#[test]
fn register_with_digest_auth_udp() {
    register_with_digest_auth(Transport::Udp);
}

fn message_to_never_registered_user(transport: Transport) {
    require_sipp();
    let node = sipp_node();
    node.add_user("alice");
    node.add_user("bob");
    expect_ok(&node, "message_offline.xml", transport, "alice", "bob");
}

#[test]
fn message_to_never_registered_user_tcp() {
    message_to_never_registered_user(Transport::Tcp);
}

#[test]
fn message_to_never_registered_user_udp() {
    message_to_never_registered_user(Transport::Udp);
}

/// bob registers over TCP with SIPp, which then exits (the connection closes); alice's MESSAGE
/// is stored (202), and bob gets it when he comes back with `pmsctl listen`.
#[test]
fn message_to_registered_but_disconnected_user_is_stored_then_delivered() {
    require_sipp();
    let node = sipp_node();
    node.add_user("alice");
    node.add_user("bob");
    expect_ok(&node, "register_auth.xml", Transport::Tcp, "bob", "alice");
    expect_ok(&node, "message_offline.xml", Transport::Tcp, "alice", "bob");
    let (code, messages) = node.receive("bob", 1, 30);
    assert_eq!(
        code,
        0,
        "pmsctl listen failed; got {messages:?}\n--- pmsd log ---\n{}",
        node.log()
    );
    let text = serde_json::to_string(&messages).unwrap_or_default();
    assert!(
        text.contains("Grüße aus Köln 👋 (SIPp offline test)"),
        "bob did not receive alice's stored MESSAGE byte for byte: {messages:?}"
    );
}

/// (scenario, what it checks, digest password). Every scenario encodes its exact expected
/// status code.
const REFUSALS: &[(&str, &str, &str)] = &[
    (
        "options.xml",
        "OPTIONS → 200 with Allow and Accept",
        PASSWORD,
    ),
    ("max_forwards_zero.xml", "Max-Forwards: 0 → 483", PASSWORD),
    (
        "method_not_allowed.xml",
        "SUBSCRIBE and INFO → 405 with Allow",
        PASSWORD,
    ),
    (
        "bad_uri.xml",
        "Request-URI without a scheme → 400",
        PASSWORD,
    ),
    (
        "too_large.xml",
        "1300-byte body over a 1024-byte limit → 413, then OPTIONS → 200",
        PASSWORD,
    ),
    (
        "unsupported_type.xml",
        "application/octet-stream → 407, then 415 with Accept",
        PASSWORD,
    ),
    (
        "unknown_user.xml",
        "MESSAGE to a user that does not exist → 407, then 404",
        PASSWORD,
    ),
    (
        "wrong_from.xml",
        "From another user than the authenticated one → 407, then 403",
        PASSWORD,
    ),
    (
        "register_too_brief.xml",
        "REGISTER Expires: 10 → 401, then 423 with Min-Expires: 60",
        PASSWORD,
    ),
    (
        "register_wrong_password.xml",
        "REGISTER with a wrong password → 401, then 403",
        "not-the-password",
    ),
];

fn refusals(transport: Transport) {
    require_sipp();
    let node = sipp_node();
    node.add_user("alice");
    node.add_user("bob");
    let failures: Vec<String> = REFUSALS
        .iter()
        .filter_map(|(file, what, password)| {
            run_sipp(&node, file, transport, "alice", "bob", password)
                .err()
                .map(|report| format!("=== {what} ===\n{report}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} refusal scenarios failed over {transport:?}:\n{}\n--- pmsd log ---\n{}",
        failures.len(),
        REFUSALS.len(),
        failures.join("\n"),
        node.log()
    );
    // After all of it the node still serves a normal authenticated MESSAGE.
    expect_ok(&node, "message_offline.xml", transport, "alice", "bob");
}

#[test]
fn refusals_tcp() {
    refusals(Transport::Tcp);
}

#[test]
fn refusals_udp() {
    refusals(Transport::Udp);
}
