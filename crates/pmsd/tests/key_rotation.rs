//! Master-key rotation on a running cluster (issue 9 item 8), as docs/operations.md tells an
//! operator to do it: restart every node, one at a time, with the new key as
//! `--master-key-file` and the old one as `--previous-master-key-file`; run `pmsctl cluster
//! rotate-master-key`; wait for every node's shred pass; restart every node with the new key
//! alone. No message is lost, and afterwards no data dir holds an account key that opens with
//! the old master key.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, Node, files_containing, metric_value, wait_until};
use pms_crypto::MasterKey;

/// Every account's wrapped data key in the node's directory replica (read-only, while it runs).
fn wrapped_keys(node: &Node) -> Vec<(String, Vec<u8>)> {
    let (store, _secondary) = common::open_store_read_only(&node.data_dir().join("db"));
    let users = pms_mailbox::query::users(&store, pms_types::GroupId::DIRECTORY, None, 1_000)
        .expect("read the directory");
    users
        .into_iter()
        .map(|record| (record.user.to_string(), record.wrapped_data_key))
        .collect()
}

/// The node's arguments with `--master-key-file key` and, if given, the previous key.
fn with_keys(node: &mut Node, key: &Path, previous: Option<&Path>) {
    let mut args = Vec::new();
    let mut given = node.extra_args.iter();
    while let Some(arg) = given.next() {
        if arg == "--master-key-file" || arg == "--previous-master-key-file" {
            given.next();
        } else {
            args.push(arg.clone());
        }
    }
    args.extend(["--master-key-file".to_owned(), key.display().to_string()]);
    if let Some(previous) = previous {
        args.extend([
            "--previous-master-key-file".to_owned(),
            previous.display().to_string(),
        ]);
    }
    node.extra_args = args;
}

fn restart(node: &mut Node, key: &Path, previous: Option<&Path>) {
    node.terminate();
    with_keys(node, key, previous);
    node.spawn_process();
    node.wait_ready(Duration::from_secs(90));
}

fn rotate(node: &Node) -> (bool, String) {
    let output = node.run_pmsctl(&["cluster", "rotate-master-key"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[test]
fn the_master_key_rotates_online_and_the_old_key_opens_nothing_afterwards() {
    let mut cluster = Cluster::start(3, &[]);
    let shared: PathBuf = cluster.shared.path().to_path_buf();
    let old_path = shared.join("master.key");
    let new_path = shared.join("new.key");
    let old = MasterKey::from_file(&old_path).expect("old key");
    cluster.nodes[0].add_user("alice");
    cluster.nodes[0].add_user("bob");
    let (code, _) = cluster.nodes[1].send("alice", "bob", "sealed before the rotation", &[]);
    assert_eq!(code, 0, "queued for bob");

    // Nothing to rotate to: refused with what to do.
    let (ok, said) = rotate(&cluster.nodes[0]);
    assert!(!ok && said.contains("nothing to rotate to"), "{said}");

    let before = wrapped_keys(&cluster.nodes[0]);
    assert_eq!(before.len(), 2, "{before:?}");
    for (user, wrapped) in &before {
        assert!(
            pms_crypto::unwrap_data_key(&old, user, wrapped).is_ok(),
            "control: {user}'s key opens with the old master key"
        );
        assert!(
            !files_containing(&cluster.nodes[0].data_dir(), wrapped).is_empty(),
            "control: {user}'s wrapped key is found byte for byte in the data dir"
        );
    }

    // Every node gets the new key, the cluster's old one beside it; the cluster keeps serving.
    let new = MasterKey::write_new(&new_path).expect("new key");
    for index in 0..3 {
        if index == 1 {
            let (ok, said) = rotate(&cluster.nodes[0]);
            assert!(
                !ok && said.contains("node 2 has not loaded the new master key"),
                "a rotation waits for every member: {said}"
            );
        }
        restart(&mut cluster.nodes[index], &new_path, Some(&old_path));
    }
    let (code, _) = cluster.nodes[2].send("alice", "bob", "sealed while both keys are loaded", &[]);
    assert_eq!(code, 0);

    let passes_before: Vec<f64> = cluster
        .nodes
        .iter()
        .map(|node| metric_value(node.ports.http, "pms_shred_passes_total").unwrap_or(0.0))
        .collect();
    let (ok, said) = rotate(&cluster.nodes[1]);
    assert!(ok && said.contains("2 accounts rewrapped"), "{said}");
    assert!(said.contains(&old.fingerprint()) && said.contains(&new.fingerprint()));
    // Run again (an operator unsure it finished): nothing left, no harm.
    let (ok, said) = rotate(&cluster.nodes[0]);
    assert!(ok && said.contains("0 accounts rewrapped"), "{said}");

    // Every node shreds the old wrapped keys.
    for (node, before) in cluster.nodes.iter().zip(&passes_before) {
        wait_until(
            "the shred pass after the rotation",
            Duration::from_secs(60),
            || {
                metric_value(node.ports.http, "pms_shred_pending") == Some(0.0)
                    && metric_value(node.ports.http, "pms_shred_passes_total")
                        .is_some_and(|passes| passes > *before)
            },
        );
    }
    for node in &cluster.nodes {
        let after = wrapped_keys(node);
        assert_eq!(after.len(), 2);
        for (user, wrapped) in &after {
            assert!(pms_crypto::unwrap_data_key(&new, user, wrapped).is_ok());
            assert!(
                pms_crypto::unwrap_data_key(&old, user, wrapped).is_err(),
                "{user}'s key still opens with the old master key"
            );
        }
        for (user, wrapped) in &before {
            assert_eq!(
                files_containing(&node.data_dir(), wrapped),
                Vec::<PathBuf>::new(),
                "{user}'s old wrapped key is still in the data dir"
            );
        }
    }

    // The old key retires: every node restarts with the new key alone.
    for index in 0..3 {
        restart(&mut cluster.nodes[index], &new_path, None);
    }
    let (code, received) = cluster.nodes[2].receive("bob", 2, 30);
    assert_eq!(code, 0, "{received:?}");
    let mut bodies: Vec<String> = received
        .iter()
        .map(|line| line["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            "sealed before the rotation",
            "sealed while both keys are loaded"
        ]
    );

    // A node given the old key alone is refused, saying what to do.
    let node = &mut cluster.nodes[0];
    node.terminate();
    with_keys(node, &old_path, None);
    node.spawn_process();
    let status = node.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = node.log();
    assert!(
        log.contains("is not this cluster's") && log.contains(&new.fingerprint()),
        "{log}"
    );
}
