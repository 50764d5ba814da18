//! What `pmsd` writes to stderr (issue 10, logs): with `--log-format json`, one JSON object per
//! line; with the default filter, openraft's internals only from `warn` (they were most of the
//! start-up lines, state dumps of about 1.5 KB each).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, http_get, wait_until};

#[test]
fn json_logs_are_one_object_per_line_and_openraft_is_quiet_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("pmsd.log");
    let http = free_port();
    let sip = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pmsd"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--sip-tls", &format!("127.0.0.1:{}", free_port())])
        .args(["--sip-tcp", &format!("127.0.0.1:{sip}")])
        .args(["--sip-udp", &format!("127.0.0.1:{sip}")])
        .args(["--grpc", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--log-format", "json"])
        .env_remove("PMS_LOG")
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("spawning pmsd");
    wait_until("pmsd ready", Duration::from_secs(60), || {
        http_get(http, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(child.wait().expect("wait").success());

    let log = std::fs::read_to_string(&log_path).expect("read log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not a JSON object per line ({error}): {line}"))
        })
        .collect();
    assert!(lines.len() >= 5, "{log}");
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line[key].is_string(), "{key} missing: {line}");
        }
    }
    assert!(
        lines.iter().any(|line| line["message"] == "pmsd ready"),
        "{log}"
    );
    // openraft logs from warn only (a warning or error would still show).
    let chatty: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| {
            line["target"]
                .as_str()
                .is_some_and(|target| target.starts_with("openraft"))
                && matches!(line["level"].as_str(), Some("INFO" | "DEBUG" | "TRACE"))
        })
        .collect();
    assert!(chatty.is_empty(), "{chatty:?}");
}

/// With `--log-format json` an event inside a traced span (here a SIP transaction) carries the
/// span's OpenTelemetry ids, even with no exporter configured; one outside any span carries none.
#[test]
fn json_lines_inside_a_span_carry_trace_and_span_ids() {
    let node = common::Node::start_with(vec!["--log-format".into(), "json".into()]);
    node.add_user("alice");
    let mut source = common::SipSource::connect([127, 0, 0, 1], node.sip_tcp_addr());
    let answer = source.register("alice", "not the password");
    assert!(
        matches!(answer.status, 401 | 403),
        "a wrong password is refused: {}",
        answer.status
    );
    let is_hex = |value: &serde_json::Value, digits: usize| {
        value.as_str().is_some_and(|text| {
            text.len() == digits
                && text.bytes().all(|byte| byte.is_ascii_hexdigit())
                && text.bytes().any(|byte| byte != b'0')
        })
    };
    let mut inside = None;
    wait_until("the digest failure logged", Duration::from_secs(30), || {
        inside = node.log().lines().find_map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).ok()?;
            (line["message"] == "digest verification failed").then_some(line)
        });
        inside.is_some()
    });
    let inside = inside.expect("found");
    assert_eq!(inside["span"]["name"], "sip_transaction", "{inside}");
    assert!(is_hex(&inside["trace_id"], 32), "{inside}");
    assert!(is_hex(&inside["span_id"], 16), "{inside}");
    let log = node.log();
    let ready: serde_json::Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "pmsd ready")
        .expect("ready line");
    assert!(ready.get("trace_id").is_none(), "{ready}");
    assert!(ready.get("span_id").is_none(), "{ready}");
}
