//! The `pmsctl` binary, run as a process, against an admin API served over real mutual TLS on
//! 127.0.0.1 by `pms_transport::AdminServer` with an in-memory backend. Certificates are made by
//! `pmsctl cert …` itself. Checks exit codes, stdout formats and one-line stderr errors.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{FakeBackend, KNOWN_MESSAGE_ID, Output, Served, serve};
use pms_types::UserId;

async fn pmsctl(
    certs_dir: &Path,
    admin: &str,
    args: &[&str],
    password_env: Option<&str>,
) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pmsctl"));
    command
        .arg("--certs-dir")
        .arg(certs_dir)
        .arg("--admin")
        .arg(admin)
        .args(args)
        .env_remove("PMS_PASSWORD");
    if let Some(password) = password_env {
        command.env("PMS_PASSWORD", password);
    }
    let output = command.output().await.unwrap();
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn assert_one_line_error(output: &Output, needle: &str) {
    assert_one_line_error_exiting(output, 1, needle);
}

/// A usage error: one line on stderr, exit status 2.
fn assert_usage_error(output: &Output, needle: &str) {
    assert_one_line_error_exiting(output, 2, needle);
}

fn assert_one_line_error_exiting(output: &Output, code: i32, needle: &str) {
    assert_eq!(output.code, code, "stderr: {}", output.stderr);
    assert_eq!(
        output.stderr.lines().count(),
        1,
        "stderr: {:?}",
        output.stderr
    );
    assert!(
        output.stderr.contains(needle),
        "stderr: {:?}",
        output.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmsctl_makes_certificates_and_administers_users_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let nowhere = "127.0.0.1:1";

    for args in [
        &["cert", "create-ca"][..],
        &["cert", "create-node", "127.0.0.1", "localhost", "::1"][..],
        &["cert", "create-client", "admin"][..],
    ] {
        let output = pmsctl(&certs, nowhere, args, None).await;
        assert_eq!(output.code, 0, "{args:?}: {}", output.stderr);
    }
    for file in [
        "ca.crt",
        "node.crt",
        "node.key",
        "client.admin.crt",
        "client.admin.key",
    ] {
        assert!(certs.join(file).is_file(), "{file} missing");
    }
    let refused = pmsctl(&certs, nowhere, &["cert", "create-client", "../x"], None).await;
    assert_usage_error(&refused, "invalid client name");

    let backend = Arc::new(FakeBackend::default());
    let Served {
        admin,
        stop,
        serving,
    } = serve(&certs, backend.clone()).await;

    let added = pmsctl(
        &certs,
        &admin,
        &["user", "add", "alice", "--password", "pw"],
        None,
    )
    .await;
    assert_eq!(added.code, 0, "{}", added.stderr);
    // The password from the environment, and an account created disabled.
    let added = pmsctl(
        &certs,
        &admin,
        &["user", "add", "bob", "--disabled"],
        Some("pw"),
    )
    .await;
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert_eq!(
        *backend.users.lock().unwrap(),
        BTreeMap::from([
            (UserId::parse("alice").unwrap(), true),
            (UserId::parse("bob").unwrap(), false),
        ])
    );
    let again = pmsctl(
        &certs,
        &admin,
        &["user", "add", "alice", "--password", "pw"],
        None,
    )
    .await;
    assert_one_line_error(&again, "already exists");
    let no_password = pmsctl(&certs, &admin, &["user", "add", "carol"], None).await;
    assert_usage_error(&no_password, "--password");

    let listed = pmsctl(&certs, &admin, &["user", "list", "--json"], None).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let lines: Vec<serde_json::Value> = listed
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({"user": "alice", "messaging_enabled": true, "digest_algorithms": []}),
            serde_json::json!({"user": "bob", "messaging_enabled": false, "digest_algorithms": []}),
        ]
    );

    for args in [
        &["user", "enable", "bob"][..],
        &["user", "disable", "alice"][..],
    ] {
        let output = pmsctl(&certs, &admin, args, None).await;
        assert_eq!(output.code, 0, "{args:?}: {}", output.stderr);
    }
    let table = pmsctl(&certs, &admin, &["user", "list"], None).await;
    let rows: Vec<Vec<&str>> = table
        .stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["USER", "MESSAGING", "DIGEST"],
            vec!["alice", "disabled", "default"],
            vec!["bob", "enabled", "default"]
        ]
    );

    let removed = pmsctl(&certs, &admin, &["user", "remove", "alice"], None).await;
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    let missing = pmsctl(&certs, &admin, &["user", "remove", "alice"], None).await;
    assert_one_line_error(&missing, "not found");

    let status = pmsctl(
        &certs,
        &admin,
        &["message", "status", KNOWN_MESSAGE_ID],
        None,
    )
    .await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(
        status,
        serde_json::json!({
            "message_id": KNOWN_MESSAGE_ID,
            "status": "delivered",
            "recipient": "bob",
            "enqueued_at": "2023-11-14T22:13:20.000Z",
            "updated_at": "2023-11-14T22:13:20.250Z",
        })
    );
    let unknown = pmsctl(&certs, &admin, &["message", "status", "ffff"], None).await;
    assert_one_line_error(&unknown, "not found");

    let cluster = pmsctl(&certs, &admin, &["cluster", "status", "--json"], None).await;
    assert_eq!(cluster.code, 0, "{}", cluster.stderr);
    let cluster: serde_json::Value = serde_json::from_str(cluster.stdout.trim()).unwrap();
    assert_eq!(cluster["nodes"][0]["groups"][0]["role"], "leader");
    assert_eq!(cluster["nodes"][0]["groups"][0]["last_applied_index"], 12);

    let _ = stop.send(());
    serving.await.unwrap().unwrap();

    let down = pmsctl(&certs, &admin, &["user", "list"], None).await;
    assert_one_line_error(&down, "admin API at");
}

#[tokio::test]
async fn usage_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = pmsctl(dir.path(), "127.0.0.1:1", &["user", "frobnicate"], None).await;
    assert_usage_error(&output, "frobnicate");
    let output = pmsctl(
        dir.path(),
        "127.0.0.1:1",
        &[
            "send",
            "--user",
            "a",
            "--password",
            "p",
            "--to",
            "b",
            "--ca",
            "x",
            "--insecure",
            "hi",
        ],
        None,
    )
    .await;
    assert_usage_error(&output, "--insecure");
}
