//! Guarantee 6 against someone holding a node's data dir (issue 8, items 1–4): what the files
//! hold is read both byte for byte (blocks are stored uncompressed) and through RocksDB itself
//! (every column family, the Raft log entries and the stored snapshot), and each scan first
//! proves on a control value that it can see what it looks for.
//!
//! - Removing a user shreds their key on every node of a cluster: no copy of the wrapped data
//!   key in any node's files (log, snapshot, SST, WAL), and the unwrapped key in no node's
//!   memory.
//! - Credentials are sealed: no HA1 value in any file, and only the HA1 values the account's
//!   policy allows are stored at all.
//! - A node with another master key than the cluster's refuses to start; a cluster member
//!   never generates a master key by itself.

mod common;

use std::time::Duration;

use common::{
    Cluster, Node, PASSWORD, files_containing, metric_value, process_memory_contains, stored_in,
    wait_until,
};
use pms_types::{GroupId, UserId};

/// How long every node has to finish its shred pass after a removal.
const SHRED_TIMEOUT: Duration = Duration::from_secs(60);

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("user name")
}

/// `user`'s record as stored in the directory of the node whose DB is `db_dir`.
fn directory_record(db_dir: &std::path::Path, name: &str) -> Option<pms_mailbox::UserRecord> {
    let (store, _secondary) = common::open_store_read_only(db_dir);
    pms_mailbox::query::user(&store, GroupId::DIRECTORY, &user(name)).expect("read user")
}

fn master_key(path: &std::path::Path) -> pms_crypto::MasterKey {
    pms_crypto::MasterKey::from_file(path).expect("master key")
}

#[test]
fn removing_a_user_shreds_their_key_from_every_node_files_and_memory() {
    let mut cluster = Cluster::start(3, &[]);
    let first = &cluster.nodes[0];
    first.add_user("alice");
    first.add_user("dave");
    // Messages to dave, sent through every node, so that each one unwraps dave's key.
    for (index, node) in cluster.nodes.iter().enumerate() {
        let (code, lines) = node.send("alice", "dave", &format!("for dave #{index}"), &[]);
        assert_eq!(code, 0, "{lines:?}");
    }
    cluster.wait_caught_up(Duration::from_secs(30));

    let record = directory_record(&cluster.nodes[0].data_dir().join("db"), "dave")
        .expect("dave is in the directory");
    let wrapped = record.wrapped_data_key.clone();
    assert_eq!(wrapped.len(), pms_crypto::WRAPPED_KEY_LEN);
    let data_key = pms_crypto::unwrap_data_key(
        &master_key(&cluster.shared.path().join("master.key")),
        "dave",
        &wrapped,
    )
    .expect("the wrapped key opens with the cluster's master key");
    let unwrapped = data_key.as_bytes().to_vec();

    // Controls: each scan sees the key where it is before the removal.
    for node in &cluster.nodes {
        let db = node.data_dir().join("db");
        let places = stored_in(&db, &wrapped);
        assert!(
            places.contains(&"users") && places.contains(&"raft_log"),
            "control: the wrapped key is in the users record and the log entry: {places:?}"
        );
        assert!(
            !files_containing(&node.data_dir(), &wrapped).is_empty(),
            "control: a byte scan of the files finds the wrapped key"
        );
        assert!(stored_in(&db, b"for dave").is_empty(), "bodies are sealed");
    }
    assert!(
        cluster
            .nodes
            .iter()
            .any(|node| process_memory_contains(node.pid(), &unwrapped)),
        "control: the unwrapped key is in some node's memory (keyring) before the removal"
    );

    let output = cluster.nodes[1].run_pmsctl(&["user", "remove", "dave"]);
    assert!(
        output.status.success(),
        "user remove: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for node in &cluster.nodes {
        wait_until("every node finished its shred pass", SHRED_TIMEOUT, || {
            metric_value(node.ports.http, "pms_shred_pending") == Some(0.0)
                && metric_value(node.ports.http, "pms_shred_passes_total")
                    .is_some_and(|passes| passes >= 1.0)
        });
        assert!(
            metric_value(node.ports.http, "pms_keyring_keys").is_some_and(|keys| keys <= 1.0),
            "at most alice's key stays cached"
        );
        assert!(
            !process_memory_contains(node.pid(), &unwrapped),
            "node {} still holds dave's unwrapped key in memory",
            node.grpc_address()
        );
    }
    // Alice still works: shredding is dave's alone.
    let (code, lines) = cluster.nodes[2].send("alice", "alice", "still here", &[]);
    assert_eq!(code, 0, "{lines:?}");

    for node in &mut cluster.nodes {
        assert!(node.terminate().success(), "clean stop");
    }
    for node in &cluster.nodes {
        let db = node.data_dir().join("db");
        assert_eq!(
            stored_in(&db, &wrapped),
            Vec::<&str>::new(),
            "dave's wrapped key is still stored (read through RocksDB) on {}",
            node.grpc_address()
        );
        assert_eq!(
            files_containing(&node.data_dir(), &wrapped),
            Vec::<std::path::PathBuf>::new(),
            "dave's wrapped key is still in a file of {}",
            node.grpc_address()
        );
        assert!(directory_record(&db, "dave").is_none());
    }
}

/// The HA1 value (`H(user:realm:password)`) in hex, as a digest server compares it.
fn ha1(algorithm: pms_sip::digest::Algorithm, name: &str) -> String {
    pms_sip::digest::ha1(algorithm, name, "localhost", PASSWORD)
}

#[test]
fn credentials_are_sealed_and_hold_only_the_allowed_algorithms() {
    use pms_sip::digest::Algorithm;
    let mut node = Node::start();
    node.add_user("alice");
    let output = node.run_pmsctl(&[
        "user",
        "add",
        "carol",
        "--password",
        PASSWORD,
        "--digest-algorithms",
        "sha256",
    ]);
    assert!(output.status.success());
    // The sealed credentials still authenticate (pmsctl answers SHA-256 challenges).
    let (code, lines) = node.send("carol", "alice", "sealed but usable", &[]);
    assert_eq!(code, 0, "{lines:?}");
    // Narrowing keeps what remains allowed; widening needs the password again.
    let narrowed = node.run_pmsctl(&["user", "set-digest", "alice", "sha256"]);
    assert!(narrowed.status.success());
    let widened = node.run_pmsctl(&["user", "set-digest", "carol", "sha256,md5"]);
    assert!(!widened.status.success(), "no MD5 HA1 is stored for carol");
    let said = String::from_utf8_lossy(&widened.stderr);
    assert!(said.contains("--password"), "says what to do: {said}");
    assert!(node.terminate().success());

    let db = node.data_dir().join("db");
    let carol = directory_record(&db, "carol").expect("carol");
    let alice = directory_record(&db, "alice").expect("alice");
    // Control: the scans find what is stored in clear by design (the account names).
    assert!(stored_in(&db, b"carol").contains(&"users"));
    assert!(!files_containing(&node.data_dir(), b"carol").is_empty());
    for name in ["alice", "carol"] {
        for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
            let value = ha1(algorithm, name);
            assert_eq!(
                stored_in(&db, value.as_bytes()),
                Vec::<&str>::new(),
                "{name}'s {algorithm:?} HA1 is stored readable"
            );
            assert_eq!(
                files_containing(&node.data_dir(), value.as_bytes()),
                Vec::<std::path::PathBuf>::new(),
                "{name}'s {algorithm:?} HA1 is in a file"
            );
        }
    }
    // What is sealed holds only the allowed algorithms.
    let master = master_key(&node.data_dir().join("master.key"));
    let open = |record: &pms_mailbox::UserRecord| -> pms_mailbox::Credentials {
        let plain =
            pms_crypto::open_credentials(&master, record.user.as_str(), &record.sealed_credentials)
                .expect("credentials open with the node's master key");
        pms_mailbox::decode(pms_types::Keyspace::Users, &plain).expect("credentials")
    };
    let carol = open(&carol);
    assert_eq!(
        carol.ha1_md5, None,
        "no MD5 HA1 under a SHA-256-only policy"
    );
    assert_eq!(carol.ha1_sha256, Some(ha1(Algorithm::Sha256, "carol")));
    let alice = open(&alice);
    assert_eq!(alice.ha1_md5, None, "narrowing dropped the MD5 HA1");
    assert_eq!(alice.ha1_sha256, Some(ha1(Algorithm::Sha256, "alice")));
}

#[test]
fn a_node_with_another_master_key_refuses_to_join_the_cluster() {
    let mut cluster = Cluster::start(3, &[]);
    let node = &mut cluster.nodes[2];
    assert!(node.terminate().success());
    // A member without its key file never makes one up.
    let missing = cluster.shared.path().join("missing.key");
    set_master_key_file(node, &missing);
    node.spawn_process();
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(!missing.exists(), "a cluster member generated a master key");
    assert!(
        node.log()
            .contains("every node of a cluster needs the same master key"),
        "{}",
        node.log()
    );
    // Another key: refused once the cluster's fingerprint is read.
    let other = cluster.shared.path().join("other.key");
    pms_crypto::MasterKey::write_new(&other).expect("other key");
    set_master_key_file(node, &other);
    node.spawn_process();
    let status = node.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = node.log();
    assert!(
        log.contains("is not this cluster's (fingerprint"),
        "says why: {log}"
    );
    // With the right key it serves again.
    set_master_key_file(node, &cluster.shared.path().join("master.key"));
    node.spawn();
}

fn set_master_key_file(node: &mut Node, path: &std::path::Path) {
    let index = node
        .extra_args
        .iter()
        .position(|arg| arg == "--master-key-file")
        .expect("cluster nodes name their key file");
    node.extra_args[index + 1] = path.display().to_string();
}
