//! The `pmsctl cert` commands run as a process: `--lifetime-days` on the create commands, and
//! `cert list` (table and JSON lines) showing what expires soon. Checks exit codes, stdout and
//! one-line stderr errors.

use std::path::Path;
use std::process::Command;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn pmsctl(certs_dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_pmsctl"))
        .arg("--certs-dir")
        .arg(certs_dir)
        .args(args)
        .output()
        .expect("running pmsctl");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

fn succeeds(certs_dir: &Path, args: &[&str]) -> Output {
    let output = pmsctl(certs_dir, args);
    assert_eq!(output.code, 0, "pmsctl {args:?}: {}", output.stderr);
    output
}

#[test]
fn lifetime_days_sets_the_expiry_and_cert_list_marks_what_expires_soon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    succeeds(&certs, &["cert", "create-ca"]);
    succeeds(
        &certs,
        &[
            "cert",
            "create-node",
            "--lifetime-days",
            "400",
            "127.0.0.1",
            "localhost",
        ],
    );
    succeeds(
        &certs,
        &[
            "cert",
            "create-sip",
            "sip.example.net",
            "--lifetime-days",
            "2",
        ],
    );
    succeeds(&certs, &["cert", "create-client", "admin"]);

    let table = succeeds(&certs, &["cert", "list"]).stdout;
    let row = |file: &str| -> String {
        table
            .lines()
            .find(|line| line.starts_with(file))
            .unwrap_or_else(|| panic!("no row for {file}:\n{table}"))
            .to_owned()
    };
    assert!(table.starts_with("FILE"), "{table}");
    assert_eq!(table.lines().count(), 5, "{table}");
    let sip = row("sip.crt");
    assert!(sip.contains("sip.example.net"), "{table}");
    assert!(sip.contains("! expires within 30 days"), "{table}");
    let node = row("node.crt");
    assert!(node.contains("127.0.0.1,localhost"), "{table}");
    assert!(!node.contains('!'), "{table}");
    assert!(!row("ca.crt").contains('!'), "{table}");
    assert!(!row("client.admin.crt").contains('!'), "{table}");

    let json = succeeds(&certs, &["cert", "list", "--json"]).stdout;
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 4, "{json}");
    let by_file = |file: &str| {
        lines
            .iter()
            .find(|line| line["file"] == file)
            .unwrap_or_else(|| panic!("no {file} in {json}"))
    };
    let node = by_file("node.crt");
    let days = node["days_left"].as_i64().expect("days_left");
    assert!((398..=400).contains(&days), "{node}");
    assert_eq!(node["expires_soon"], false);
    let sip = by_file("sip.crt");
    assert!(sip["days_left"].as_i64().expect("days_left") <= 2, "{sip}");
    assert_eq!(sip["expires_soon"], true);
    assert_eq!(sip["issuer"], by_file("ca.crt")["subject"]);
}

#[test]
fn a_lifetime_of_zero_or_past_the_ca_is_refused_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    succeeds(&certs, &["cert", "create-ca", "--lifetime-days", "30"]);

    let zero = pmsctl(
        &certs,
        &["cert", "create-client", "ops", "--lifetime-days", "0"],
    );
    assert_eq!(zero.code, 2, "{}", zero.stderr);
    assert_eq!(zero.stderr.lines().count(), 1, "{:?}", zero.stderr);
    assert!(zero.stderr.contains("at least 1 day"), "{:?}", zero.stderr);
    assert!(!certs.join("client.ops.key").exists());

    let outliving = pmsctl(
        &certs,
        &["cert", "create-node", "--lifetime-days", "31", "localhost"],
    );
    assert_eq!(outliving.code, 2, "{}", outliving.stderr);
    assert_eq!(
        outliving.stderr.lines().count(),
        1,
        "{:?}",
        outliving.stderr
    );
    assert!(
        outliving.stderr.contains("cannot outlive it")
            && outliving.stderr.contains("at most 29 days"),
        "{:?}",
        outliving.stderr
    );
    assert!(!certs.join("node.key").exists());

    let negative = pmsctl(&certs, &["cert", "create-ca", "--lifetime-days", "-5"]);
    assert_eq!(negative.code, 2, "{}", negative.stderr);

    // The CA made with 30 days is itself flagged.
    let table = succeeds(&certs, &["cert", "list"]).stdout;
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("ca.crt") && line.contains("! expires within 30 days")),
        "{table}"
    );
}

#[test]
fn cert_list_fails_on_an_unreadable_file_after_listing_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    succeeds(&certs, &["cert", "create-ca"]);
    std::fs::write(certs.join("old.crt"), "not a certificate").expect("write");
    let output = pmsctl(&certs, &["cert", "list"]);
    assert_eq!(output.code, 1, "{}", output.stderr);
    assert!(
        output.stdout.lines().any(|line| line.starts_with("ca.crt")),
        "{}",
        output.stdout
    );
    assert!(
        output
            .stdout
            .lines()
            .any(|line| line.starts_with("old.crt") && line.contains("! cannot read")),
        "{}",
        output.stdout
    );
    assert_eq!(output.stderr.lines().count(), 1, "{:?}", output.stderr);
    assert!(
        output.stderr.contains("could not be read"),
        "{:?}",
        output.stderr
    );
}
