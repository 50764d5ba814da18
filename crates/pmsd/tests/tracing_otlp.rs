//! One trace per message across nodes (issue 10): a 3-node cluster exports its spans over
//! OTLP/gRPC to a receiver (`otlp_receiver.py`, PyPI `grpcio` + `opentelemetry-proto`, installed
//! by `scripts/install-packages test`). A MESSAGE accepted on one node, for a recipient whose
//! mailbox group is led by a second node and whose device is registered on the third, is one
//! trace from the SIP transaction to the push; and an idle cluster exports no span.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Cluster;
use serde_json::Value;

/// Sync window long enough that a device on another node answers inside it on a slow machine.
const CLUSTER_ARGS: &[&str] = &["--sync-window-ms", "5000"];
/// How long the cluster is watched while idle (the expiry tick is 200 ms: 15 ticks).
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// Longest wait for spans to arrive (the batch processor exports every 200 ms here).
const SPANS_DEADLINE: Duration = Duration::from_secs(60);
/// OTLP span kinds.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;

/// The Python with grpcio and opentelemetry-proto: the virtual environment
/// `scripts/install-packages test` makes (`PMS_OTLP_TOOLS`, default `/opt/pms-otlp-tools`), or
/// else `python3` (the receiver says which install step is missing when it lacks them).
fn python() -> PathBuf {
    let tools = std::env::var_os("PMS_OTLP_TOOLS")
        .map_or_else(|| PathBuf::from("/opt/pms-otlp-tools"), PathBuf::from);
    let venv = tools.join("bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// The receiver process; killed when dropped.
struct Receiver {
    child: Child,
    spans: PathBuf,
    port: u16,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp_receiver.py");
        let spans = dir.join("spans.jsonl");
        let mut child = Command::new(python())
            .arg(&script)
            .arg(&spans)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the OTLP receiver (scripts/install-packages test)");
        let stdout = child.stdout.take().expect("stdout piped");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_default();
        let Some(port) = line
            .strip_prefix("listening ")
            .and_then(|port| port.trim().parse().ok())
        else {
            let _ = child.kill();
            let output = child.wait_with_output().expect("receiver output");
            panic!(
                "the OTLP receiver did not start (needs PyPI grpcio and opentelemetry-proto: \
                 scripts/install-packages test): {line:?} {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        Receiver { child, spans, port }
    }

    /// Every span received so far (a line being written is skipped until it is complete).
    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.spans).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ns() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos(),
    )
    .expect("nanoseconds fit")
}

fn instance(span: &Value) -> String {
    span["resource"]["service.instance.id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn name(span: &Value) -> &str {
    span["name"].as_str().unwrap_or_default()
}

/// The spans of `trace_id`, by node id (service.instance.id).
fn trace_by_node(spans: &[Value], trace_id: &str) -> BTreeMap<String, Vec<Value>> {
    let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for span in spans.iter().filter(|span| span["trace_id"] == trace_id) {
        by_node
            .entry(instance(span))
            .or_default()
            .push(span.clone());
    }
    by_node
}

fn has(spans: Option<&Vec<Value>>, wanted: &str) -> bool {
    spans.is_some_and(|spans| spans.iter().any(|span| name(span) == wanted))
}

#[test]
fn a_message_is_one_trace_across_three_nodes_and_idle_nodes_export_nothing() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(dir.path());
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let cluster = Cluster::start_with_env(
        3,
        CLUSTER_ARGS,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    cluster.nodes[0].add_user("alice");
    cluster.nodes[0].add_user("bob");

    // Bob's mailbox group is led by its preferred leader (the voter at position group mod 3:
    // `pmsd` spreads leadership so) once the cluster settled; the device registers on the
    // next node and Alice sends through the third.
    let bob = pms_types::UserId::parse("bob").expect("valid user");
    let group = pms_types::mailbox_group_for(&bob, 8).0;
    let leader = usize::try_from(group % 3).expect("index");
    common::wait_until(
        "bob's group led by its preferred leader",
        Duration::from_secs(60),
        || cluster.leader_index(group, Duration::from_secs(30)) == leader,
    );
    let flow_node = (leader + 1) % 3;
    let accept_node = (leader + 2) % 3;
    let id_of = |index: usize| (index + 1).to_string();
    let mut listener = cluster.nodes[flow_node].listen("bob", 1, 120);
    listener.wait_for_stderr(Duration::from_secs(30), "registered");
    cluster.wait_caught_up(Duration::from_secs(30));

    // Idle: nothing happens for a while. Whatever a node exports from this window must have
    // arrived before the spans of the message sent after it (each node exports in end order).
    let idle_from = now_ns();
    std::thread::sleep(IDLE_WINDOW);
    let idle_until = now_ns();

    let sent_at = Instant::now();
    let (code, lines) =
        cluster.nodes[accept_node].send("alice", "bob", "one trace, three nodes", &[]);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.last().expect("a result")["code"], 200, "{lines:?}");
    let (code, received) = listener.finish();
    assert_eq!(code, 0, "{received:?}");

    // The accepting node's SIP transaction span names the trace; wait until the leader's
    // delivery and the flow node's push arrived in it, and every span's parent is in it.
    let (accept, leading, flow) = (id_of(accept_node), id_of(leader), id_of(flow_node));
    let deadline = Instant::now() + SPANS_DEADLINE;
    let (spans, trace_id) = loop {
        let spans = receiver.spans();
        // The transaction that accepted the message (the first, answered 407, has no id).
        let transaction = spans.iter().find(|span| {
            name(span) == "SIP MESSAGE"
                && instance(span) == accept
                && span["attributes"]["messaging.message.id"].is_string()
                && span["start_ns"].as_u64() > Some(idle_until)
        });
        if let Some(transaction) = transaction {
            let trace_id = transaction["trace_id"]
                .as_str()
                .expect("trace id")
                .to_owned();
            let by_node = trace_by_node(&spans, &trace_id);
            let ids: BTreeSet<&str> = spans
                .iter()
                .filter(|span| span["trace_id"] == trace_id.as_str())
                .filter_map(|span| span["span_id"].as_str())
                .collect();
            let connected = spans
                .iter()
                .filter(|span| span["trace_id"] == trace_id.as_str())
                .all(|span| {
                    let parent = span["parent_span_id"].as_str().unwrap_or_default();
                    parent.is_empty() || ids.contains(parent)
                });
            if connected
                && has(by_node.get(&leading), "delivery_attempt")
                && has(by_node.get(&flow), "SIP MESSAGE push")
            {
                break (spans, trace_id);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete trace from node {accept} through {leading} to {flow} in time; spans \
             (trace, span, parent, node, name):\n{}",
            spans
                .iter()
                .map(|span| format!(
                    "{} {} {} {} {}",
                    span["trace_id"].as_str().unwrap_or_default(),
                    span["span_id"].as_str().unwrap_or_default(),
                    span["parent_span_id"].as_str().unwrap_or_default(),
                    instance(span),
                    name(span)
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let by_node = trace_by_node(&spans, &trace_id);
    let names = |node: &str| -> Vec<String> {
        by_node
            .get(node)
            .into_iter()
            .flatten()
            .map(|span| name(span).to_owned())
            .collect()
    };
    println!(
        "trace {trace_id}: accept node {accept}: {:?}; leader {leading}: {:?}; flow node {flow}: {:?}",
        names(&accept),
        names(&leading),
        names(&flow)
    );
    assert_eq!(
        by_node.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([accept.clone(), leading.clone(), flow.clone()]),
        "the trace spans exactly the three nodes"
    );
    let trace: Vec<&Value> = by_node.values().flatten().collect();
    // One root: the SIP transaction on the accepting node; everything else is its descendant.
    let roots: Vec<&&Value> = trace
        .iter()
        .filter(|span| {
            span["parent_span_id"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        })
        .collect();
    assert_eq!(roots.len(), 1, "one root span: {roots:?}");
    let root = roots[0];
    assert_eq!(name(root), "SIP MESSAGE");
    assert_eq!(instance(root), accept);
    assert_eq!(root["kind"], KIND_SERVER);
    let attributes = &root["attributes"];
    assert_eq!(attributes["sip.method"], "MESSAGE", "{root}");
    assert_eq!(attributes["network.protocol.name"], "sip", "{root}");
    assert_eq!(attributes["network.transport"], "tcp", "{root}");
    assert_eq!(attributes["network.peer.address"], "127.0.0.1", "{root}");
    assert!(attributes["network.peer.port"].is_i64(), "{root}");
    let message_id = attributes["messaging.message.id"]
        .as_str()
        .expect("message id on the transaction span");
    assert_eq!(message_id.len(), 32, "{root}");
    for span in &trace {
        assert_eq!(span["resource"]["service.name"], "pmsd", "{span}");
        assert_eq!(
            span["resource"]["service.version"],
            env!("CARGO_PKG_VERSION"),
            "{span}"
        );
    }
    // The gRPC hops on both ends, with the RPC semantic conventions.
    let rpc = |node: &str, method: &str, kind: u64| {
        let full = format!("pms.internal.v1.Internal/{method}");
        let span = by_node[node]
            .iter()
            .find(|span| name(span) == full && span["kind"] == kind)
            .unwrap_or_else(|| panic!("no {full} span of kind {kind} on node {node}"));
        assert_eq!(span["attributes"]["rpc.system"], "grpc", "{span}");
        assert_eq!(
            span["attributes"]["rpc.service"], "pms.internal.v1.Internal",
            "{span}"
        );
        assert_eq!(span["attributes"]["rpc.method"], method, "{span}");
        if kind == KIND_CLIENT {
            assert_eq!(span["attributes"]["server.address"], "127.0.0.1", "{span}");
            assert!(span["attributes"]["server.port"].is_i64(), "{span}");
        } else {
            assert_eq!(
                span["attributes"]["network.peer.address"], "127.0.0.1",
                "{span}"
            );
            assert!(span["attributes"]["network.peer.port"].is_i64(), "{span}");
        }
        span.clone()
    };
    let propose_client = rpc(&accept, "Propose", KIND_CLIENT);
    let propose_server = rpc(&leading, "Propose", KIND_SERVER);
    assert_eq!(
        propose_server["parent_span_id"], propose_client["span_id"],
        "the leader's Propose is a child of the accepting node's call"
    );
    assert!(has(by_node.get(&accept), "cluster_propose"));
    assert!(has(by_node.get(&leading), "raft_commit"));
    let deliver_client = rpc(&leading, "Deliver", KIND_CLIENT);
    let deliver_server = rpc(&flow, "Deliver", KIND_SERVER);
    assert_eq!(deliver_server["parent_span_id"], deliver_client["span_id"]);
    // The delivery is a child of the leader's commit of the Enqueue, with a link to it.
    let commit = by_node[&leading]
        .iter()
        .find(|span| name(span) == "raft_commit")
        .expect("commit span");
    assert_eq!(commit["attributes"]["pms.command"], "Enqueue", "{commit}");
    let attempt = by_node[&leading]
        .iter()
        .find(|span| name(span) == "delivery_attempt")
        .expect("delivery span");
    assert_eq!(attempt["parent_span_id"], commit["span_id"], "{attempt}");
    assert!(
        attempt["links"].as_array().is_some_and(|links| links
            .iter()
            .any(|link| link["span_id"] == commit["span_id"])),
        "{attempt}"
    );
    assert_eq!(attempt["attributes"]["message_id"], message_id, "{attempt}");
    let push = by_node[&flow]
        .iter()
        .find(|span| name(span) == "SIP MESSAGE push")
        .expect("push span");
    assert_eq!(push["kind"], KIND_CLIENT);
    assert_eq!(push["attributes"]["sip.status_code"], 200, "{push}");

    // Idle nodes exported nothing: no span (root or not) started inside the idle window, and
    // the message's spans, exported after anything from the window, are in.
    let during_idle: Vec<&Value> = spans
        .iter()
        .filter(|span| {
            span["start_ns"]
                .as_u64()
                .is_some_and(|start| (idle_from..idle_until).contains(&start))
        })
        .collect();
    assert!(
        during_idle.is_empty(),
        "spans exported by an idle cluster: {during_idle:?}"
    );
    println!(
        "spans received: {}; message to complete trace: {:?}; test: {:?}",
        spans.len(),
        sent_at.elapsed(),
        started.elapsed()
    );
}
