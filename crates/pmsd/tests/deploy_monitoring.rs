//! The monitoring kit in `deploy/monitoring/` (issue 10), checked against Prometheus's own tool
//! and against what a running `pmsd` exports: `promtool check rules` accepts the alert rules,
//! `promtool test rules` passes their unit tests (each alert fires on one series and stays quiet
//! on another), every query of the Grafana dashboard parses as PromQL, the dashboard has a
//! titled row for each concern the on-call engineer looks at and a title on every panel, and
//! every `pms_…` and `process_…` metric the dashboard, the rules or their tests name is one a
//! three-node cluster really serves on `/metrics`, so a renamed metric cannot leave a silent
//! panel or a dead alert. Three nodes, not one: follower lag exists only on a group's leader
//! that has followers, and the per-group Raft metrics the kit reads must carry a `group` label
//! in real samples.
//!
//! A missing `promtool` fails the tests here: the README's test command
//! (`scripts/install-packages test`) installs the `prometheus` package, which holds it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The dashboard's rows, one per concern, in order (deploy/monitoring/README.md explains each).
const DASHBOARD_ROWS: &[&str] = &[
    "SIP traffic and errors",
    "Store and delivery",
    "Queue depth",
    "Raft",
    "Storage",
    "Connections",
    "Certificates",
    "Process and build",
];

/// The alerts the issue asks for, each by the name the rule file gives it.
const ALERTS: &[&str] = &[
    "PmsNodeDown",
    "PmsQuorumLost",
    "PmsNoLeader",
    "PmsCommitLatencyHigh",
    "PmsQueueGrowing",
    "PmsDeliveriesFailing",
    "PmsCertificateExpiringSoon",
    "PmsCertificateExpiring",
    "PmsDiskFilling",
    "PmsDiskAlmostFull",
    "PmsLeaderChangesFrequent",
    "PmsFollowerLagging",
];

/// Per-group gauges a running cluster sets for every group (`group` label, "0" the directory):
/// the exported-names check also wants a real sample of each one the kit names, with its
/// `group` label. `pms_raft_follower_lag_entries` has one only on a group's leader with
/// followers (crates/pmsd/src/node_metrics.rs, `report_group`), hence the three-node cluster.
/// Not here: `pms_raft_leader_changes_total`, a counter whose series appears at the first change
/// a node sees (on a fresh cluster, the first election); the test waits for its name like any
/// other.
const PER_GROUP_GAUGES: &[&str] = &[
    "pms_queue_depth",
    "pms_raft_term",
    "pms_raft_leader",
    "pms_raft_is_leader",
    "pms_raft_last_log_index",
    "pms_raft_applied_index",
    "pms_raft_follower_lag_entries",
];

/// How long the cluster may take to report every name and per-group series the kit reads
/// (queue depth is refreshed every 5 s; follower lag appears once a leader has seen its
/// followers; a leader-change series at the first change a node sees).
const PER_GROUP_SERIES_DEADLINE: Duration = Duration::from_secs(60);

/// Grafana's variables in the dashboard's queries, and what stands for them when promtool
/// parses the queries.
const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "5m"),
    ("$job", "pms"),
    ("$instance", ".*"),
];

fn repository_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn read(relative: &str) -> String {
    let path = repository_file(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// Runs `promtool` with `args` in `dir`; a missing promtool fails the test with what to install.
fn promtool(dir: &Path, args: &[&str]) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run promtool ({error}): install it with `scripts/install-packages test` (Debian package prometheus)"
            )
        })
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/monitoring/pms-dashboard.json"))
        .expect("deploy/monitoring/pms-dashboard.json is not JSON")
}

fn panels(dashboard: &serde_json::Value) -> &Vec<serde_json::Value> {
    dashboard["panels"]
        .as_array()
        .expect("the dashboard has a panels list")
}

/// Every PromQL query of the dashboard's panels, with the title of its panel.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    panels(dashboard)
        .iter()
        .filter(|panel| panel["type"] != "row")
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |target| {
                    target["expr"]
                        .as_str()
                        .map(|expr| (title.clone(), expr.to_owned()))
                })
        })
        .collect()
}

/// Prefixes of the metric names the kit must find on `/metrics`: PMS's own and the standard
/// `process_*` ones pmsd serves.
const CHECKED_PREFIXES: &[&str] = &["pms_", "process_"];

/// Every `pms_[a-z_]+` and `process_[a-z_]+` word in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    for prefix in CHECKED_PREFIXES {
        let mut start = 0;
        while let Some(found) = text[start..].find(prefix) {
            let begin = start + found;
            let preceded_by_word =
                begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_');
            let mut end = begin + prefix.len();
            while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
                end += 1;
            }
            if !preceded_by_word && end > begin + prefix.len() {
                names.insert(text[begin..end].to_owned());
            }
            start = end;
        }
    }
    names
}

/// What one `/metrics` exposition (Prometheus text 0.0.4) shows: the names from `# TYPE` lines
/// (histogram bases) and from samples (their _bucket/_sum/_count),
/// and the names of samples that carry a `group` label.
fn exposition_names(body: &str, exported: &mut BTreeSet<String>, grouped: &mut BTreeSet<String>) {
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            exported.extend(rest.split(' ').next().map(str::to_owned));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some(name) = line
            .split(['{', ' '])
            .next()
            .filter(|name| !name.is_empty())
        else {
            continue;
        };
        exported.insert(name.to_owned());
        let labels = line[name.len()..]
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
            .map_or("", |(labels, _)| labels);
        if labels.starts_with("group=\"") || labels.contains(",group=\"") {
            grouped.insert(name.to_owned());
        }
    }
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_unit_tests_pass() {
    let dir = repository_file("deploy/monitoring");
    assert_success(
        &promtool(&dir, &["check", "rules", "pms-alerts.yml"]),
        "promtool check rules deploy/monitoring/pms-alerts.yml",
    );
    assert_success(
        &promtool(&dir, &["test", "rules", "pms-alerts.test.yml"]),
        "promtool test rules deploy/monitoring/pms-alerts.test.yml",
    );
    let rules = read("deploy/monitoring/pms-alerts.yml");
    let tests = read("deploy/monitoring/pms-alerts.test.yml");
    for alert in ALERTS {
        assert!(
            rules.contains(&format!("- alert: {alert}\n")),
            "deploy/monitoring/pms-alerts.yml has no alert {alert}"
        );
        // promtool passes a test file that never evaluates an alert: each alert must be
        // expected to fire somewhere and expected quiet somewhere.
        let expected = |fires: bool| {
            tests.split("- eval_time:").any(|eval| {
                eval.contains(&format!("alertname: {alert}\n"))
                    && eval.contains("exp_alerts: []") != fires
            })
        };
        assert!(expected(true), "no unit test fires {alert}");
        assert!(expected(false), "no unit test keeps {alert} quiet");
    }
    assert_eq!(
        rules.matches("- alert: ").count(),
        ALERTS.len(),
        "an alert in deploy/monitoring/pms-alerts.yml is not listed in ALERTS here"
    );
    assert_eq!(
        rules.matches("severity: ").count(),
        ALERTS.len(),
        "every alert needs a severity label"
    );
    assert_eq!(
        rules.matches("runbook: \"docs/operations.md#").count(),
        ALERTS.len(),
        "every alert needs a runbook annotation naming a docs/operations.md section"
    );
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_runbook_is_a_section_of_the_operations_guide() {
    let rules = read("deploy/monitoring/pms-alerts.yml");
    let operations = read("docs/operations.md");
    let anchors: BTreeSet<String> = operations
        .lines()
        .filter_map(|line| line.strip_prefix("## ").or(line.strip_prefix("### ")))
        .map(heading_anchor)
        .collect();
    let runbooks: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("runbook: \"docs/operations.md#"))
        .map(|rest| rest.trim_end_matches('"'))
        .collect();
    assert_eq!(runbooks.len(), ALERTS.len(), "one runbook per alert");
    for runbook in runbooks {
        assert!(
            anchors.contains(runbook),
            "runbook docs/operations.md#{runbook} is no section of docs/operations.md; sections: {anchors:?}"
        );
    }
}

#[test]
fn dashboard_has_a_row_per_concern_and_every_query_parses() {
    let dashboard = dashboard();
    assert!(
        dashboard["templating"]["list"]
            .as_array()
            .is_some_and(|variables| variables
                .iter()
                .any(|v| v["name"] == "datasource" && v["query"] == "prometheus")),
        "the dashboard needs a Prometheus `datasource` variable"
    );
    let rows: Vec<&str> = panels(&dashboard)
        .iter()
        .filter(|panel| panel["type"] == "row")
        .filter_map(|panel| panel["title"].as_str())
        .collect();
    assert_eq!(rows, DASHBOARD_ROWS, "the dashboard's rows");
    let mut row_sizes = vec![0_usize; DASHBOARD_ROWS.len()];
    let mut row = None;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.trim().is_empty(), "a panel has no title: {panel}");
        if panel["type"] == "row" {
            row = Some(row.map_or(0, |index| index + 1));
            continue;
        }
        let index = row.unwrap_or_else(|| panic!("panel {title:?} is above the first row"));
        row_sizes[index] += 1;
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?} must use the datasource variable"
        );
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {title:?} has no query"
        );
    }
    for (name, size) in DASHBOARD_ROWS.iter().zip(row_sizes) {
        assert!(size > 0, "row {name:?} has no panels");
    }

    // promtool parses every query, wrapped as a recording rule.
    let queries = dashboard_queries(&dashboard);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, (_, expr)) in queries.iter().enumerate() {
        let mut expr = expr.clone();
        for (variable, value) in GRAFANA_VARIABLES {
            expr = expr.replace(variable, value);
        }
        let quoted = serde_json::to_string(&expr).expect("a string serialises");
        rules.push_str(&format!(
            "      - record: dashboard_query_{index}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("dashboard-queries.yml"), &rules).expect("write rules");
    assert_success(
        &promtool(dir.path(), &["check", "rules", "dashboard-queries.yml"]),
        &format!("promtool parsing the dashboard's queries:\n{rules}"),
    );
}

#[test]
fn every_metric_the_kit_names_is_one_pmsd_exports() {
    let dashboard = dashboard();
    let mut named: Vec<(String, &str)> = Vec::new();
    for (title, expr) in dashboard_queries(&dashboard) {
        named.extend(
            metric_names(&expr)
                .into_iter()
                .map(|name| (name, "dashboard")),
        );
        assert!(
            CHECKED_PREFIXES.iter().any(|prefix| expr.contains(prefix)) || expr.contains("up{"),
            "dashboard panel {title:?} queries neither a PMS or process metric nor up: {expr}"
        );
    }
    let rules = read("deploy/monitoring/pms-alerts.yml");
    let tests = read("deploy/monitoring/pms-alerts.test.yml");
    named.extend(
        metric_names(&rules)
            .into_iter()
            .map(|name| (name, "pms-alerts.yml")),
    );
    named.extend(
        metric_names(&tests)
            .into_iter()
            .map(|name| (name, "pms-alerts.test.yml")),
    );
    assert!(named.len() > 10, "too few metric names found: {named:?}");

    let cluster = common::Cluster::start(3, &[]);
    // Traffic, so that the metrics whose series appear with their first use (requests by
    // method and status) have one: `prometheus-client` writes no family without a series.
    let entry = &cluster.nodes[0];
    entry.add_user("alice");
    entry.add_user("bob");
    let (code, lines) = entry.send("alice", "bob", "hello from deploy_monitoring", &[]);
    assert_eq!(code, 0, "pmsctl send: {lines:?}");
    let wanted_grouped: Vec<&str> = PER_GROUP_GAUGES
        .iter()
        .copied()
        .filter(|gauge| named.iter().any(|(name, _)| name == gauge))
        .collect();
    // Poll every node until every name the kit reads and the per-group series exist (or the
    // deadline passes; the assertions below then say what is missing).
    let deadline = Instant::now() + PER_GROUP_SERIES_DEADLINE;
    let (exported, grouped) = loop {
        let (mut exported, mut grouped) = (BTreeSet::new(), BTreeSet::new());
        for node in &cluster.nodes {
            let (status, body) =
                common::http_get(node.ports.http, "/metrics").expect("GET /metrics");
            assert_eq!(status, 200, "{body}");
            assert!(
                body.contains("\npms_messages_accepted_total "),
                "/metrics does not look like pmsd's: {body}"
            );
            exposition_names(&body, &mut exported, &mut grouped);
        }
        let complete = named.iter().all(|(name, _)| exported.contains(name))
            && wanted_grouped.iter().all(|name| grouped.contains(*name));
        if complete || Instant::now() >= deadline {
            break (exported, grouped);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let missing: Vec<String> = named
        .iter()
        .filter(|(name, _)| !exported.contains(name))
        .map(|(name, file)| format!("{name} (in {file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/monitoring names metrics a three-node cluster does not export: {missing:?}; exported: {exported:?}"
    );
    let ungrouped: Vec<&&str> = wanted_grouped
        .iter()
        .filter(|name| !grouped.contains(**name))
        .collect();
    assert!(
        ungrouped.is_empty(),
        "no node of a three-node cluster served a sample with a group label, within {PER_GROUP_SERIES_DEADLINE:?}, of {ungrouped:?}; samples with a group label: {grouped:?}"
    );
}
