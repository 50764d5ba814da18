//! Golden files of the record formats: one encoding of every record kind (and of each variant
//! of the enums inside them) per format version, in `tests/golden/`, written once when the
//! version was new and committed. Every later build must decode each file to the value built
//! here, so a release that moves a record's layout without a new version fails this test
//! instead of failing to read a data dir that an older release wrote.
//!
//! Invariant: a golden file is never rewritten or deleted (`tests/golden/README.md`); the
//! generator below only writes files that do not exist yet, for the version this build writes.

use pms_mailbox::format::{self, FormatError, Record};
use pms_mailbox::{
    Binding, Credentials, DedupEntry, DedupKey, DigestAlgorithm, MailboxMeta, MessagePayload,
    MessageState, MessageStatus, NewMessage, OutboxEntry, QueuedMessage, SenderKey, UserRecord,
};
use pms_types::{FlowId, MessageId, NodeId, UnixMillis, UserId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

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

/// A golden file of `value` in the version this build writes.
fn golden<T: Record + PartialEq + Debug + Clone + 'static>(name: &str, value: T) -> Golden {
    golden_of_version(name, T::VERSION, value)
}

/// A golden file of `version` that must decode to `value` (of the type this build has, so an
/// older version's file names the converted value).
fn golden_of_version<T: Record + PartialEq + Debug + Clone + 'static>(
    name: &str,
    version: u8,
    value: T,
) -> Golden {
    let expected = value.clone();
    Golden {
        file: format!("{name}.v{version}.bin"),
        version,
        encode_today: (version == T::VERSION)
            .then(|| Box::new(move || pms_mailbox::encode(&value)) as Encode),
        check: Box::new(move |bytes| {
            let decoded: T = format::decode_record(bytes).map_err(|error| error.to_string())?;
            if decoded == expected {
                Ok(())
            } else {
                Err(format!("decoded {decoded:?}\n  expected {expected:?}"))
            }
        }),
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("valid user name")
}

fn message_id(byte: u8) -> MessageId {
    MessageId::from_random_bytes([byte; 16])
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

fn queued_message() -> QueuedMessage {
    QueuedMessage {
        seq: 7,
        message_id: message_id(0x11),
        recipient: user("bob"),
        sealed: vec![0xa5; 48],
        enqueued_at: UnixMillis(1_700_000_000_123),
        expires_at: UnixMillis(1_700_000_600_000),
        dedup_keys: vec![DedupKey([0x22; 32])],
        sender: Some(SenderKey([0x33; 32])),
    }
}

fn message_status(state: MessageState) -> MessageStatus {
    MessageStatus {
        message_id: message_id(0x11),
        recipient: user("bob"),
        state,
        enqueued_at: UnixMillis(1_700_000_000_123),
        updated_at: UnixMillis(1_700_000_001_000),
    }
}

/// Every golden file of this crate, with its expected value.
fn goldens() -> Vec<Golden> {
    vec![
        golden(
            "user-record",
            UserRecord {
                user: user("alice"),
                sealed_credentials: vec![0x5c; 72],
                digest_algorithms: vec![DigestAlgorithm::Sha256, DigestAlgorithm::Md5],
                messaging_enabled: true,
                wrapped_data_key: vec![0x7e; 72],
                created_at: UnixMillis(1_700_000_000_000),
            },
        ),
        golden(
            "user-record-mailbox-copy",
            UserRecord {
                user: user("alice"),
                sealed_credentials: Vec::new(),
                digest_algorithms: Vec::new(),
                messaging_enabled: false,
                wrapped_data_key: Vec::new(),
                created_at: UnixMillis(1_700_000_000_000),
            },
        ),
        golden("binding", binding()),
        golden("queued-message", queued_message()),
        golden(
            "queued-message-without-sender",
            QueuedMessage {
                sender: None,
                ..queued_message()
            },
        ),
        golden(
            "message-status-queued",
            message_status(MessageState::Queued),
        ),
        golden(
            "message-status-delivered",
            message_status(MessageState::Delivered),
        ),
        golden(
            "message-status-expired",
            message_status(MessageState::Expired),
        ),
        golden(
            "message-status-failed",
            message_status(MessageState::Failed { code: 488 }),
        ),
        golden(
            "dedup-entry",
            DedupEntry {
                message_id: message_id(0x11),
                recipient: user("bob"),
                seq: 7,
                expires_at: UnixMillis(1_700_000_600_000),
            },
        ),
        golden(
            "mailbox-meta",
            MailboxMeta {
                next_seq: 8,
                queued: 3,
            },
        ),
        golden(
            "outbox-entry",
            OutboxEntry {
                message: new_message(0x44),
                accepted_at: UnixMillis(1_700_000_000_456),
            },
        ),
        golden("sender-count", 5u64),
        golden("expiry-marker", ()),
        golden(
            "cluster-fact",
            String::from("sha256:7f0c1d2e3f405162738495a6b7c8d9eaf0112233445566778899aabbccddeeff"),
        ),
        golden(
            "credentials",
            Credentials {
                realm: "example.com".into(),
                ha1_md5: Some("939e7578ed9e3c518a452acee763bce9".into()),
                ha1_sha256: Some(
                    "b7a8f8d1a0f2f6e5f4b9b0f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b".into(),
                ),
            },
        ),
        golden(
            "credentials-md5-only",
            Credentials {
                realm: "example.com".into(),
                ha1_md5: Some("939e7578ed9e3c518a452acee763bce9".into()),
                ha1_sha256: None,
            },
        ),
        golden(
            "message-payload",
            MessagePayload {
                from: "sip:alice@example.com".into(),
                to: "sip:bob@example.com".into(),
                content_type: "text/plain;charset=UTF-8".into(),
                body: "Hello, Bob! \u{1f44b}".as_bytes().to_vec(),
                date: "Tue, 14 Nov 2023 22:13:20 GMT".into(),
                imdn_message_id: Some("34jk324j".into()),
                disposition_notification: Some("positive-delivery, negative-delivery".into()),
                notification_in_cpim: true,
                content_encoding: Some("gzip".into()),
                received_over_tls: true,
            },
        ),
        golden(
            "message-payload-minimal",
            MessagePayload {
                from: "sip:alice@example.com".into(),
                to: "sip:bob@example.com".into(),
                content_type: "text/plain".into(),
                body: Vec::new(),
                date: "Tue, 14 Nov 2023 22:13:20 GMT".into(),
                imdn_message_id: None,
                disposition_notification: None,
                notification_in_cpim: false,
                content_encoding: None,
                received_over_tls: false,
            },
        ),
    ]
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
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
/// once, after adding a new version or a new record kind:
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

/// What a later release's `QueuedMessage` might be: one field more, version 2. Today's struct
/// plays the frozen `QueuedMessageV1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct QueuedMessageNext {
    seq: u64,
    message_id: MessageId,
    recipient: UserId,
    sealed: Vec<u8>,
    enqueued_at: UnixMillis,
    expires_at: UnixMillis,
    dedup_keys: Vec<DedupKey>,
    sender: Option<SenderKey>,
    priority: u8,
}

impl Record for QueuedMessageNext {
    const KIND: u8 = b'Q';
    const NAME: &'static str = "queued message";
    const VERSION: u8 = 2;

    fn decode_body(version: u8, body: &[u8]) -> Result<Self, FormatError> {
        match version {
            1 => {
                let v1: QueuedMessage = format::decode_body_as(Self::NAME, version, body)?;
                Ok(QueuedMessageNext {
                    seq: v1.seq,
                    message_id: v1.message_id,
                    recipient: v1.recipient,
                    sealed: v1.sealed,
                    enqueued_at: v1.enqueued_at,
                    expires_at: v1.expires_at,
                    dedup_keys: v1.dedup_keys,
                    sender: v1.sender,
                    priority: 0,
                })
            }
            2 => format::decode_body_as(Self::NAME, version, body),
            _ => Err(FormatError::unreadable_version(
                Self::NAME,
                version,
                Self::VERSION,
            )),
        }
    }
}

/// The upgrade path works both ways round: a release that adds a field reads today's bytes, and
/// today's build refuses that release's bytes by their version instead of misreading them.
#[test]
fn a_later_release_reads_todays_records_and_today_refuses_its_records() {
    let today = std::fs::read(golden_dir().join("queued-message.v1.bin")).expect("golden file");
    let later: QueuedMessageNext = format::decode_record(&today).expect("v1 converts");
    let expected = queued_message();
    assert_eq!(
        (later.seq, &later.message_id, &later.sealed, later.sender),
        (
            expected.seq,
            &expected.message_id,
            &expected.sealed,
            expected.sender
        )
    );
    assert_eq!(later.priority, 0);

    let written_later = format::encode_record(&QueuedMessageNext {
        priority: 9,
        ..later
    });
    assert_eq!(
        pms_mailbox::decode::<QueuedMessage>(pms_types::Keyspace::Messages, &written_later)
            .expect_err("today's build must not read version 2")
            .to_string(),
        "stored record under messages cannot be read: queued message format version 2 is newer than this build reads (up to 1): it was written by a newer PMS release; upgrade this node"
    );
}
