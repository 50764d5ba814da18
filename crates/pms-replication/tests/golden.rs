//! Golden files of the Raft formats: a log entry of every `Command` variant (and a blank and a
//! membership entry), every Raft metadata value, a snapshot blob and a stored snapshot, and the
//! RPC payloads (append entries and its answers, votes, leader transfer, snapshot meta, every
//! forwarded command and every command response), one file per value and format version in
//! `tests/golden/`. They were written once when their version was new and are committed; every
//! later build must decode each to the value built here, so a layout that moves without a new
//! format version (a field added to a command, an openraft upgrade) fails this test instead of
//! failing on a log an older release wrote or on a node of the previous release.
//!
//! Invariant: a golden file is never rewritten or deleted (`tests/golden/README.md`); the
//! generator below only writes files that do not exist yet, for the version this build writes.

use openraft::entry::RaftEntry;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Membership};
use pms_mailbox::{
    Binding, BindingChange, Command, CommandResponse, DedupKey, DigestAlgorithm, GroupCommand,
    NewMessage, SenderKey, SenderQuota, UserRecord,
};
use pms_replication::format::{self, Entry, LogId, RaftValue, StoredMembership, Vote};
use pms_replication::snapshot::{SnapshotBlob, StoredSnapshot};
use pms_replication::{LogCommand, TypeConfig, wire};
use pms_types::{FlowId, GroupId, Keyspace, MessageId, NodeId, UnixMillis, UserId, group_key};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};

type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
type TransferLeaderResponse = openraft::raft::TransferLeaderResponse<TypeConfig>;
type TransferLeaderError = openraft::raft::TransferLeaderError<TypeConfig>;

/// Decodes a golden file and compares it with the expected value.
type Check = Box<dyn Fn(&[u8]) -> Result<(), String>>;
/// Encodes the expected value as this build writes it.
type Encode = Box<dyn Fn() -> Vec<u8>>;

/// One golden file and how to check it.
struct Golden {
    /// `<name>.v<version>.bin`.
    file: String,
    /// The version in the file's header.
    version: u8,
    /// The encoding this build writes of the expected value, when `version` is the version
    /// this build writes (older versions are only read).
    encode_today: Option<Encode>,
    /// Decodes the file and compares with the expected value.
    check: Check,
}

fn compare<K: PartialEq + Debug>(decoded: K, expected: K) -> Result<(), String> {
    if decoded == expected {
        Ok(())
    } else {
        Err(format!("decoded {decoded:?}\n  expected {expected:?}"))
    }
}

/// A golden file of a Raft value in the version this build writes.
fn raft<T: RaftValue + PartialEq + Debug + Clone + 'static>(name: &str, value: T) -> Golden {
    let expected = value.clone();
    Golden {
        file: format!("{name}.v{}.bin", T::VERSION),
        version: T::VERSION,
        encode_today: Some(Box::new(move || format::encode(&value).expect("encodes"))),
        check: Box::new(move |bytes| {
            let decoded: T = format::decode(bytes).map_err(|error| error.to_string())?;
            compare(decoded, expected.clone())
        }),
    }
}

/// A golden file of an RPC payload in the version this build writes, compared through `key`
/// (some openraft RPC types have no `PartialEq`).
fn rpc<T, K>(name: &str, value: T, key: fn(&T) -> K) -> Golden
where
    T: Serialize + DeserializeOwned + Clone + 'static,
    K: PartialEq + Debug + 'static,
{
    let expected = value.clone();
    Golden {
        file: format!("rpc-{name}.v{}.bin", format::RPC_VERSION),
        version: format::RPC_VERSION,
        encode_today: Some(Box::new(move || {
            wire::encode("golden", &value).expect("encodes")
        })),
        check: Box::new(move |bytes| {
            let decoded: T = wire::decode("golden", bytes).map_err(|error| error.to_string())?;
            compare(key(&decoded), key(&expected))
        }),
    }
}

fn same<T: Clone>(value: &T) -> T {
    value.clone()
}

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("valid user name")
}

fn message_id(byte: u8) -> MessageId {
    MessageId::from_random_bytes([byte; 16])
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, node, index)
}

fn new_message(byte: u8) -> NewMessage {
    NewMessage {
        message_id: message_id(byte),
        recipient: user("bob"),
        sealed: vec![byte; 40],
        expires_at: UnixMillis(1_700_000_600_000),
        dedup_keys: vec![DedupKey([byte; 32]), DedupKey([byte.wrapping_add(1); 32])],
    }
}

fn binding() -> Binding {
    Binding {
        user: user("bob"),
        key: "<urn:uuid:00000000-0000-0000-0000-000000000001>;reg-id=1".into(),
        contact: "<sips:bob@192.0.2.7:5061;transport=tls>".into(),
        flow: FlowId {
            node: NodeId(2),
            incarnation: 0x0123_4567_89ab_cdef,
            connection: 42,
        },
        over_tls: true,
        registered_at: UnixMillis(1_700_000_000_000),
        expires_at: UnixMillis(1_700_003_600_000),
    }
}

/// How many variants `Command` has; [`command_file_name`] must name each.
const COMMAND_VARIANTS: usize = 20;

/// The file name of a command's golden files. Exhaustive on purpose: a new `Command` variant
/// does not compile here until it has a name, a sample in [`sample_commands`] and golden files
/// (tests/golden/README.md: a new variant is either a new format version or, appended last and
/// proposed only once every member runs a release that reads it, part of the current one).
fn command_file_name(command: &Command) -> &'static str {
    match command {
        Command::ProvisionUser { .. } => "provision-user",
        Command::SetMessagingEnabled { .. } => "set-messaging-enabled",
        Command::SetDigestAlgorithms { .. } => "set-digest-algorithms",
        Command::RemoveUser { .. } => "remove-user",
        Command::Register { .. } => "register",
        Command::Bind { .. } => "bind",
        Command::Unbind { .. } => "unbind",
        Command::UnbindFlow { .. } => "unbind-flow",
        Command::UnbindAll { .. } => "unbind-all",
        Command::CheckMasterKey { .. } => "check-master-key",
        Command::UnbindStaleFlows { .. } => "unbind-stale-flows",
        Command::Enqueue { .. } => "enqueue",
        Command::MarkDelivered { .. } => "mark-delivered",
        Command::MarkFailed { .. } => "mark-failed",
        Command::Expire { .. } => "expire",
        Command::Prune { .. } => "prune",
        Command::ClearOutbox { .. } => "clear-outbox",
        Command::RecordClusterId { .. } => "record-cluster-id",
        Command::ChangeMasterKey { .. } => "change-master-key",
        Command::RewrapUser { .. } => "rewrap-user",
    }
}

/// One command of every variant, with every optional part present somewhere.
fn sample_commands() -> Vec<Command> {
    vec![
        Command::ProvisionUser {
            record: UserRecord {
                user: user("alice"),
                sealed_credentials: vec![0x5c; 72],
                digest_algorithms: vec![DigestAlgorithm::Sha256, DigestAlgorithm::Md5],
                messaging_enabled: true,
                wrapped_data_key: vec![0x7e; 72],
                created_at: UnixMillis(1_700_000_000_000),
            },
        },
        Command::SetMessagingEnabled {
            user: user("alice"),
            enabled: false,
        },
        Command::SetDigestAlgorithms {
            user: user("alice"),
            algorithms: vec![DigestAlgorithm::Md5],
            sealed_credentials: vec![0x5d; 60],
        },
        Command::RemoveUser {
            user: user("alice"),
        },
        Command::Register {
            user: user("bob"),
            changes: vec![
                BindingChange::Bind(binding()),
                BindingChange::Unbind {
                    key: "<sip:bob@192.0.2.8:5060>".into(),
                },
                BindingChange::UnbindAll,
            ],
            now: UnixMillis(1_700_000_000_000),
        },
        Command::Bind {
            binding: binding(),
            now: UnixMillis(1_700_000_000_000),
        },
        Command::Unbind {
            user: user("bob"),
            key: "<sip:bob@192.0.2.8:5060>".into(),
        },
        Command::UnbindFlow {
            user: user("bob"),
            key: "<sip:bob@192.0.2.8:5060>".into(),
            flow: FlowId {
                node: NodeId(3),
                incarnation: 77,
                connection: 9,
            },
        },
        Command::UnbindAll { user: user("bob") },
        Command::CheckMasterKey {
            fingerprint: "sha256:7f0c1d2e3f405162738495a6b7c8d9eaf0112233445566778899aabbccddeeff"
                .into(),
        },
        Command::UnbindStaleFlows {
            flow_node: NodeId(2),
            live_incarnation: 0x0123_4567_89ab_cdef,
        },
        Command::Enqueue {
            message: new_message(0x11),
            accepted_at: UnixMillis(1_700_000_000_123),
            notification: Some(new_message(0x12)),
            sender: Some(SenderQuota {
                key: SenderKey([0x33; 32]),
                queued_max: 100,
            }),
        },
        Command::MarkDelivered {
            recipient: user("bob"),
            seq: 7,
            message_id: message_id(0x11),
            at: UnixMillis(1_700_000_001_000),
            notification: Some(new_message(0x13)),
        },
        Command::MarkFailed {
            recipient: user("bob"),
            seq: 8,
            message_id: message_id(0x14),
            code: 488,
            at: UnixMillis(1_700_000_002_000),
            notification: None,
        },
        Command::Expire {
            recipient: user("bob"),
            seq: 9,
            message_id: message_id(0x15),
            at: UnixMillis(1_700_000_600_001),
            notification: Some(new_message(0x16)),
        },
        Command::Prune {
            now: UnixMillis(1_700_100_000_000),
            dedup_retention_ms: 86_400_000,
            status_retention_ms: 604_800_000,
        },
        Command::ClearOutbox {
            message_id: message_id(0x16),
        },
        Command::RecordClusterId {
            cluster_id: "5f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
        },
        Command::ChangeMasterKey {
            from: "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
            to: "sha256:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100".into(),
        },
        Command::RewrapUser {
            user: user("alice"),
            expected_wrapped_data_key: vec![0x4b; 61],
            wrapped_data_key: vec![0x4c; 61],
            sealed_credentials: vec![0x5d; 72],
        },
    ]
}

/// How many variants `CommandResponse` has; [`response_file_name`] must name each.
const RESPONSE_VARIANTS: usize = 13;

/// The file name of a command response's golden file (exhaustive, as [`command_file_name`]).
fn response_file_name(response: &CommandResponse) -> &'static str {
    match response {
        CommandResponse::Done => "done",
        CommandResponse::UserExists { .. } => "user-exists",
        CommandResponse::UnknownUser { .. } => "unknown-user",
        CommandResponse::Enqueued { .. } => "enqueued",
        CommandResponse::MailboxFull { .. } => "mailbox-full",
        CommandResponse::SenderQueueFull { .. } => "sender-queue-full",
        CommandResponse::TooManyBindings { .. } => "too-many-bindings",
        CommandResponse::NotQueued { .. } => "not-queued",
        CommandResponse::NotYetExpired { .. } => "not-yet-expired",
        CommandResponse::Pruned { .. } => "pruned",
        CommandResponse::MasterKeyMismatch { .. } => "master-key-mismatch",
        CommandResponse::ClusterId { .. } => "cluster-id",
        CommandResponse::RecordChanged { .. } => "record-changed",
    }
}

fn sample_responses() -> Vec<CommandResponse> {
    vec![
        CommandResponse::Done,
        CommandResponse::UserExists {
            user: user("alice"),
        },
        CommandResponse::UnknownUser {
            user: user("carol"),
        },
        CommandResponse::Enqueued {
            message_id: message_id(0x11),
            seq: 7,
            duplicate: true,
        },
        CommandResponse::MailboxFull { user: user("bob") },
        CommandResponse::SenderQueueFull {
            user: user("bob"),
            queued_max: 100,
        },
        CommandResponse::TooManyBindings { user: user("bob") },
        CommandResponse::NotQueued {
            message_id: message_id(0x11),
        },
        CommandResponse::NotYetExpired {
            message_id: message_id(0x11),
            expires_at: UnixMillis(1_700_000_600_000),
        },
        CommandResponse::Pruned {
            dedup_entries: 12,
            statuses: 34,
            more: true,
        },
        CommandResponse::MasterKeyMismatch {
            recorded: "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
                .into(),
        },
        CommandResponse::ClusterId {
            cluster_id: "5f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
        },
        CommandResponse::RecordChanged {
            user: user("alice"),
        },
    ]
}

fn membership() -> Membership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> = [
        (1, BasicNode::new("10.0.0.1:5105")),
        (2, BasicNode::new("10.0.0.2:5105")),
        (3, BasicNode::new("10.0.0.3:5105")),
        (4, BasicNode::new("10.0.0.4:5105")),
    ]
    .into();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).expect("node 4 is a learner")
}

fn normal_entry(index: u64, command: Command) -> Entry {
    Entry::new_normal(
        log_id(4, 1, index),
        LogCommand(GroupCommand {
            group: GroupId(3),
            command,
        }),
    )
}

fn stored_membership() -> StoredMembership {
    StoredMembership::new(Some(log_id(2, 1, 5)), membership())
}

fn snapshot_blob() -> SnapshotBlob {
    let group = GroupId(3);
    SnapshotBlob {
        group,
        entries: Keyspace::STATE
            .iter()
            .enumerate()
            .map(|(position, keyspace)| {
                let byte = u8::try_from(position).expect("few keyspaces");
                (
                    *keyspace,
                    group_key(group, &[b"key-", &[byte]]),
                    // Stored values are opaque to a snapshot: it carries them verbatim.
                    pms_mailbox::encode(&u64::from(byte)),
                )
            })
            .collect(),
    }
}

fn snapshot_meta() -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(log_id(4, 1, 120)),
        last_membership: stored_membership(),
    }
}

fn append_entries() -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(4, 1),
        prev_log_id: Some(log_id(4, 1, 9)),
        entries: vec![
            Entry::new_blank(log_id(4, 1, 10)),
            Entry::new_membership(log_id(4, 1, 11), membership()),
            normal_entry(12, sample_commands()[11].clone()),
            normal_entry(13, sample_commands()[12].clone()),
        ],
        leader_commit: Some(log_id(4, 1, 10)),
    }
}

type AppendEntriesKey = (Vote, Option<LogId>, Vec<Entry>, Option<LogId>);

fn append_entries_key(request: &AppendEntriesRequest<TypeConfig>) -> AppendEntriesKey {
    (
        request.vote,
        request.prev_log_id,
        request.entries.clone(),
        request.leader_commit,
    )
}

/// Every golden file of this crate, with its expected value.
fn goldens() -> Vec<Golden> {
    let mut goldens = vec![
        raft("log-entry-blank", Entry::new_blank(log_id(4, 1, 10))),
        raft(
            "log-entry-membership",
            Entry::new_membership(log_id(4, 1, 11), membership()),
        ),
    ];
    for (position, command) in sample_commands().into_iter().enumerate() {
        let name = command_file_name(&command);
        let index = 100 + u64::try_from(position).expect("few commands");
        goldens.push(rpc(&format!("command-{name}"), command.clone(), same));
        goldens.push(raft(
            &format!("log-entry-{name}"),
            normal_entry(index, command),
        ));
    }
    for response in sample_responses() {
        let name = response_file_name(&response);
        goldens.push(rpc(&format!("command-response-{name}"), response, same));
    }
    goldens.extend([
        raft("vote", Vote::new(5, 2)),
        raft("vote-committed", Vote::new_committed(4, 1)),
        raft("log-id", log_id(4, 1, 120)),
        raft("optional-log-id-some", Some(log_id(4, 1, 120))),
        raft("optional-log-id-none", None::<LogId>),
        raft("membership", stored_membership()),
        raft("snapshot-blob", snapshot_blob()),
        raft(
            "stored-snapshot",
            StoredSnapshot {
                meta: snapshot_meta(),
                data: format::encode(&snapshot_blob()).expect("encodes"),
            },
        ),
        rpc("append-entries", append_entries(), append_entries_key),
        rpc(
            "append-entries-heartbeat",
            AppendEntriesRequest::<TypeConfig> {
                vote: Vote::new_committed(4, 1),
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            },
            append_entries_key,
        ),
        rpc(
            "append-entries-response-success",
            AppendEntriesResponse::<TypeConfig>::Success,
            same,
        ),
        rpc(
            "append-entries-response-partial-success",
            AppendEntriesResponse::<TypeConfig>::PartialSuccess(Some(log_id(4, 1, 12))),
            same,
        ),
        rpc(
            "append-entries-response-conflict",
            AppendEntriesResponse::<TypeConfig>::Conflict,
            same,
        ),
        rpc(
            "append-entries-response-higher-vote",
            AppendEntriesResponse::<TypeConfig>::HigherVote(Vote::new(6, 3)),
            same,
        ),
        rpc(
            "vote-request",
            VoteRequest::<TypeConfig> {
                vote: Vote::new(5, 2),
                last_log_id: Some(log_id(4, 1, 13)),
                leadership_transfer: true,
            },
            same,
        ),
        rpc(
            "vote-response",
            VoteResponse::<TypeConfig>::new(Vote::new(5, 2), Some(log_id(4, 1, 13)), true),
            same,
        ),
        rpc(
            "transfer-leader-request",
            TransferLeaderRequest::<TypeConfig>::new(
                Vote::new_committed(4, 1),
                2,
                Some(log_id(4, 1, 13)),
            ),
            same,
        ),
        rpc(
            "transfer-leader-response-ok",
            TransferLeaderResponse::Ok(()),
            same,
        ),
        rpc(
            "transfer-leader-response-vote-changed",
            TransferLeaderResponse::Err(TransferLeaderError::VoteChanged {
                expected: Vote::new_committed(4, 1),
                actual: Vote::new(5, 2),
            }),
            same,
        ),
        rpc(
            "transfer-leader-response-log-not-flushed",
            TransferLeaderResponse::Err(TransferLeaderError::LogNotFlushed {
                expected: Some(log_id(4, 1, 13)),
                actual: None,
            }),
            same,
        ),
        rpc("snapshot-vote", Vote::new_committed(4, 1), same),
        rpc("snapshot-meta", snapshot_meta(), same),
        rpc(
            "snapshot-response",
            SnapshotResponse::<TypeConfig>::new(Vote::new_committed(4, 1)),
            same,
        ),
    ]);
    goldens
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn every_variant_has_a_sample() {
    let commands: BTreeSet<&str> = sample_commands().iter().map(command_file_name).collect();
    assert_eq!(
        commands.len(),
        COMMAND_VARIANTS,
        "one sample per Command variant"
    );
    let responses: BTreeSet<&str> = sample_responses().iter().map(response_file_name).collect();
    assert_eq!(
        responses.len(),
        RESPONSE_VARIANTS,
        "one sample per CommandResponse variant"
    );
}

#[test]
fn every_golden_file_decodes_to_its_value() {
    let dir = golden_dir();
    let goldens = goldens();
    let mut failures = Vec::new();
    for golden in &goldens {
        let path = dir.join(&golden.file);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) => {
                failures.push(format!(
                    "{}: cannot read ({error}); a golden file is written once, when its version is new (tests/golden/README.md)",
                    golden.file
                ));
                continue;
            }
        };
        if bytes.get(2) != Some(&golden.version) {
            failures.push(format!(
                "{}: header holds version {:?}, the name says {}",
                golden.file,
                bytes.get(2),
                golden.version
            ));
        }
        if let Err(error) = (golden.check)(&bytes) {
            failures.push(format!("{}: {error}", golden.file));
        }
        if let Some(encode_today) = &golden.encode_today
            && encode_today() != bytes
        {
            failures.push(format!(
                "{}: this build writes version {} differently from the golden file: a released layout moved; make the change a new version instead (tests/golden/README.md)",
                golden.file, golden.version
            ));
        }
    }
    let listed: BTreeSet<&str> = goldens.iter().map(|golden| golden.file.as_str()).collect();
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".bin") && !listed.contains(name.as_ref()) {
            failures.push(format!(
                "{name}: a golden file no test checks (a version's files stay checked forever)"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Writes the golden files of versions this build writes that have none yet. Run on purpose,
/// once, after adding a new version or a new kind:
/// `cargo test --workspace --test golden -- --ignored write_new_golden_files`.
#[test]
#[ignore = "writes golden files for new versions only; see tests/golden/README.md"]
fn write_new_golden_files() {
    let dir = golden_dir();
    for golden in goldens() {
        let Some(encode_today) = golden.encode_today else {
            continue;
        };
        let path = dir.join(&golden.file);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                std::io::Write::write_all(&mut file, &encode_today()).expect("write golden file");
                println!("wrote {}", path.display());
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => panic!("{}: {error}", path.display()),
        }
    }
}

/// A node of this release that receives a log entry or an RPC of a newer format version refuses
/// it by that version instead of misreading it.
#[test]
fn newer_versions_are_refused_by_number() {
    let dir = golden_dir();
    let mut entry = std::fs::read(dir.join("log-entry-enqueue.v1.bin")).expect("golden file");
    entry[2] = 2;
    assert_eq!(
        format::decode::<Entry>(&entry)
            .expect_err("version 2 is not read")
            .to_string(),
        "log entry format version 2 is newer than this build reads (up to 1): it was written by a newer PMS release; upgrade this node"
    );
    let mut payload = std::fs::read(dir.join("rpc-append-entries.v1.bin")).expect("golden file");
    payload[2] = 2;
    let Err(error) = wire::decode::<AppendEntriesRequest<TypeConfig>>("append entries", &payload)
    else {
        panic!("version 2 must not be read");
    };
    assert_eq!(
        error.to_string(),
        "cannot decode append entries: append entries format version 2 is newer than this build reads (up to 1): it was written by a newer PMS release; upgrade this node"
    );
}
