//! `pmsctl` as scripts use it, run as a process: exit codes (0 success, 1 failure, 2 usage
//! error, 3 degraded cluster), `--json` on every command, `PMS_ADMIN` and `PMS_CERTS_DIR`
//! standing in for the flags and named in errors, shell completion, and error lines that do not
//! repeat themselves. The admin API is a real `pms_transport::AdminServer` over mutual TLS on
//! 127.0.0.1 with an in-memory backend; certificates are made by `pmsctl cert …`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{FakeBackend, KNOWN_MESSAGE_ID, Output, serve};
use pms_types::UserId;

/// Runs pmsctl with `args` and exactly the `PMS_*` variables in `env` (none inherited).
async fn pmsctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pmsctl"));
    command.args(args);
    for variable in ["PMS_ADMIN", "PMS_CERTS_DIR", "PMS_PASSWORD"] {
        command.env_remove(variable);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.unwrap();
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Every line of `text` parsed as a JSON object.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

/// A certs dir with a CA, a node certificate for 127.0.0.1 and the admin client certificate.
async fn make_certs(certs: &Path) {
    let certs = certs.to_str().unwrap();
    for args in [
        &["cert", "create-ca"][..],
        &["cert", "create-node", "127.0.0.1"][..],
        &["cert", "create-client", "admin"][..],
    ] {
        let output = pmsctl(&[&["--certs-dir", certs], args].concat(), &[]).await;
        assert_eq!(output.code, 0, "{args:?}: {}", output.stderr);
    }
}

#[tokio::test]
async fn usage_errors_and_invalid_arguments_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().to_str().unwrap();
    let nowhere = "127.0.0.1:1";
    for args in [
        // clap's own errors.
        &["user", "add", "alice", "--pasword", "x"][..],
        &["cluster", "frobnicate"][..],
        &["completion", "tcsh"][..],
        // Arguments refused after parsing, before connecting.
        &["user", "remove", "not a name"][..],
        &["message", "status", ""][..],
        &["cluster", "add-node", "0", "127.0.0.1:5"][..],
        &["cluster", "add-node", "4", "no-port"][..],
        &["cert", "create-client", "../escape"][..],
        &["cert", "create-ca", "--lifetime-days", "0"][..],
        &["--admin", "nonsense", "user", "list"][..],
    ] {
        let output = pmsctl(
            &[&["--certs-dir", certs, "--admin", nowhere], args].concat(),
            &[],
        )
        .await;
        assert_eq!(output.code, 2, "{args:?}: {}", output.stderr);
        assert_eq!(
            output.stderr.lines().count(),
            1,
            "{args:?}: {}",
            output.stderr
        );
        assert!(output.stdout.is_empty(), "{args:?}: {}", output.stdout);
    }

    // With --json the error is a JSON object on stderr, whatever kind it is.
    for args in [
        &["--json", "user", "add", "alice", "--pasword", "x"][..],
        &["--json", "user", "remove", "not a name"][..],
    ] {
        let output = pmsctl(
            &[&["--certs-dir", certs, "--admin", nowhere], args].concat(),
            &[],
        )
        .await;
        assert_eq!(output.code, 2, "{args:?}: {}", output.stderr);
        let error = json_lines(&output.stderr);
        assert_eq!(error.len(), 1, "{}", output.stderr);
        assert!(error[0]["error"].is_string(), "{}", output.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_cluster_status_exits_3_after_printing_the_status() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path()).await;
    let certs = dir.path().to_str().unwrap();
    let backend = Arc::new(FakeBackend::default());
    let common::Served {
        admin, stop: _stop, ..
    } = serve(dir.path(), backend.clone()).await;
    let base = ["--certs-dir", certs, "--admin", &admin];

    let whole = pmsctl(&[&base[..], &["cluster", "status", "--json"]].concat(), &[]).await;
    assert_eq!(whole.code, 0, "{}", whole.stderr);
    let status = json_lines(&whole.stdout);
    assert_eq!(status[0]["degraded"], serde_json::json!([]));

    backend.node_2_down.store(true, Ordering::SeqCst);
    let degraded = pmsctl(&[&base[..], &["cluster", "status", "--json"]].concat(), &[]).await;
    assert_eq!(degraded.code, 3, "{}", degraded.stderr);
    let status = json_lines(&degraded.stdout);
    assert_eq!(
        status[0]["degraded"],
        serde_json::json!(["node 2 unreachable (connection refused)"])
    );
    let error = json_lines(&degraded.stderr);
    assert!(
        error[0]["error"]
            .as_str()
            .is_some_and(|text| text.contains("cluster degraded: node 2 unreachable")),
        "{}",
        degraded.stderr
    );

    let table = pmsctl(&[&base[..], &["cluster", "status"]].concat(), &[]).await;
    assert_eq!(table.code, 3, "{}", table.stderr);
    assert!(
        table.stdout.contains("unreachable: connection refused"),
        "{}",
        table.stdout
    );
    assert!(
        table.stderr.starts_with("pmsctl: error: "),
        "{}",
        table.stderr
    );
    assert!(
        table.stderr.contains("cluster degraded"),
        "{}",
        table.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_prints_one_object_per_line_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let certs_path = dir.path().join("certs");
    let certs = certs_path.to_str().unwrap();
    let made = [
        &["cert", "create-ca"][..],
        &["cert", "create-node", "127.0.0.1", "localhost"][..],
        &["cert", "create-sip", "localhost"][..],
        &["cert", "create-client", "admin"][..],
    ];
    for args in made {
        let output = pmsctl(&[&["--json", "--certs-dir", certs], args].concat(), &[]).await;
        assert_eq!(output.code, 0, "{args:?}: {}", output.stderr);
        let lines = json_lines(&output.stdout);
        assert_eq!(lines.len(), 1, "{args:?}: {}", output.stdout);
        assert_eq!(lines[0]["command"], args[..2].join(" "), "{args:?}");
    }
    let key = dir.path().join("master.key");
    let output = pmsctl(
        &["--json", "cert", "create-master-key", key.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(json_lines(&output.stdout)[0]["path"], key.to_str().unwrap());
    let listed = pmsctl(&["--certs-dir", certs, "cert", "list", "--json"], &[]).await;
    assert_eq!(json_lines(&listed.stdout).len(), 4, "{}", listed.stdout);

    let backend = Arc::new(FakeBackend::default());
    let common::Served {
        admin, stop: _stop, ..
    } = serve(&certs_path, backend).await;
    let base = ["--certs-dir", certs, "--admin", &admin, "--json"];
    let expected = [
        (
            &["user", "add", "alice", "--password", "pw"][..],
            serde_json::json!({"command": "user add", "user": "alice",
                "messaging_enabled": true, "digest_algorithms": []}),
        ),
        (
            &["user", "disable", "alice"][..],
            serde_json::json!({"command": "user disable", "user": "alice",
                "messaging_enabled": false}),
        ),
        (
            &["user", "enable", "alice"][..],
            serde_json::json!({"command": "user enable", "user": "alice",
                "messaging_enabled": true}),
        ),
        (
            &[
                "user",
                "set-digest",
                "alice",
                "md5,sha256",
                "--password",
                "pw",
            ][..],
            serde_json::json!({"command": "user set-digest", "user": "alice",
                "digest_algorithms": ["md5", "sha256"]}),
        ),
        (
            &["user", "list"][..],
            serde_json::json!({"user": "alice", "messaging_enabled": true,
                "digest_algorithms": []}),
        ),
        (
            &["user", "remove", "alice"][..],
            serde_json::json!({"command": "user remove", "user": "alice"}),
        ),
        (
            &["message", "status", KNOWN_MESSAGE_ID][..],
            serde_json::json!({"message_id": KNOWN_MESSAGE_ID, "status": "delivered",
                "recipient": "bob", "enqueued_at": "2023-11-14T22:13:20.000Z",
                "updated_at": "2023-11-14T22:13:20.250Z"}),
        ),
        (
            &["cluster", "add-node", "4", "127.0.0.4:50051"][..],
            serde_json::json!({"command": "cluster add-node", "node": 4,
                "address": "127.0.0.4:50051"}),
        ),
        (
            &["cluster", "remove-node", "4"][..],
            serde_json::json!({"command": "cluster remove-node", "node": 4}),
        ),
        (
            &["cluster", "rotate-master-key"][..],
            serde_json::json!({"command": "cluster rotate-master-key", "from": "aaaa",
                "to": "bbbb", "accounts_rewrapped": 2}),
        ),
    ];
    for (args, line) in expected {
        let output = pmsctl(&[&base[..], args].concat(), &[]).await;
        assert_eq!(output.code, 0, "{args:?}: {}", output.stderr);
        assert_eq!(json_lines(&output.stdout), [line], "{args:?}");
    }
    let status = pmsctl(&[&base[..], &["cluster", "status"]].concat(), &[]).await;
    assert_eq!(json_lines(&status.stdout)[0]["reporting_node"], 1);

    // restore: a backup directory as `pmsctl backup` leaves it.
    let backup = dir.path().join("backup");
    std::fs::create_dir_all(backup.join("db")).unwrap();
    std::fs::write(backup.join("db").join("CURRENT"), "MANIFEST-000001\n").unwrap();
    std::fs::write(backup.join("mailbox-groups"), "4\n").unwrap();
    std::fs::write(
        backup.join("backup.json"),
        r#"{"node": 2, "master_key_fingerprint": "cafe"}"#,
    )
    .unwrap();
    let data_dir = dir.path().join("restored");
    let restored = pmsctl(
        &[
            "--json",
            "restore",
            backup.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert_eq!(
        json_lines(&restored.stdout),
        [serde_json::json!({"command": "restore", "node": 2,
            "data_dir": data_dir.to_str().unwrap(), "master_key_fingerprint": "cafe"})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pms_admin_and_pms_certs_dir_stand_in_for_the_flags_and_are_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path()).await;
    let certs = dir.path().to_str().unwrap();
    let backend = Arc::new(FakeBackend::default());
    let common::Served {
        admin, stop: _stop, ..
    } = serve(dir.path(), backend.clone()).await;

    let env = [("PMS_ADMIN", admin.as_str()), ("PMS_CERTS_DIR", certs)];
    let added = pmsctl(&["user", "add", "carol", "--password", "pw"], &env).await;
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert!(
        backend
            .users
            .lock()
            .unwrap()
            .contains_key(&UserId::parse("carol").unwrap())
    );

    // A flag wins over its variable.
    let flagged = pmsctl(
        &["--admin", &admin, "user", "list", "--json"],
        &[("PMS_ADMIN", "nonsense"), ("PMS_CERTS_DIR", certs)],
    )
    .await;
    assert_eq!(flagged.code, 0, "{}", flagged.stderr);

    let bad_admin = pmsctl(
        &["user", "list"],
        &[("PMS_ADMIN", "nonsense"), ("PMS_CERTS_DIR", certs)],
    )
    .await;
    assert_eq!(bad_admin.code, 2, "{}", bad_admin.stderr);
    assert!(
        bad_admin
            .stderr
            .starts_with("pmsctl: error: PMS_ADMIN=nonsense: not HOST:PORT"),
        "{}",
        bad_admin.stderr
    );

    let missing = dir.path().join("no-such-certs");
    let bad_certs = pmsctl(
        &["user", "list"],
        &[
            ("PMS_ADMIN", admin.as_str()),
            ("PMS_CERTS_DIR", missing.to_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(bad_certs.code, 1, "{}", bad_certs.stderr);
    assert!(
        bad_certs.stderr.contains("PMS_CERTS_DIR"),
        "{}",
        bad_certs.stderr
    );
    assert!(
        !bad_certs.stderr.contains("--certs-dir"),
        "{}",
        bad_certs.stderr
    );

    // The admin address from the variable is named where the connection failed.
    let closed = closed_port();
    let refused = pmsctl(
        &["user", "list"],
        &[("PMS_ADMIN", closed.as_str()), ("PMS_CERTS_DIR", certs)],
    )
    .await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains(&format!("{closed} (from PMS_ADMIN)")),
        "{}",
        refused.stderr
    );
}

#[tokio::test]
async fn completion_scripts_for_bash_zsh_and_fish_know_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let output = pmsctl(&["completion", shell], &[]).await;
        assert_eq!(output.code, 0, "{shell}: {}", output.stderr);
        for word in [
            "user",
            "cluster",
            "rotate-master-key",
            "create-ca",
            "--certs-dir",
        ] {
            assert!(
                output.stdout.contains(word),
                "{shell} completion lacks {word}"
            );
        }
    }
}

/// An address on 127.0.0.1 where nothing listens (a port just released).
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

#[tokio::test]
async fn a_refused_connection_is_one_line_that_repeats_no_phrase() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path()).await;
    let certs = dir.path().to_str().unwrap();
    let closed = closed_port();
    let output = pmsctl(
        &["--certs-dir", certs, "--admin", &closed, "user", "list"],
        &[],
    )
    .await;
    assert_eq!(output.code, 1, "{}", output.stderr);
    assert_eq!(output.stderr.lines().count(), 1, "{}", output.stderr);
    let line = output.stderr.trim_end().to_lowercase();
    assert!(line.contains("refused"), "{line}");
    let phrases: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (index, phrase) in phrases.iter().enumerate() {
        assert!(
            !phrases[index + 1..].contains(phrase),
            "{phrase:?} is printed twice: {line}"
        );
    }
}
