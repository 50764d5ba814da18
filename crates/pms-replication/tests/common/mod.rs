//! Helpers shared by the integration tests: sample commands, state dumps, a reference replay of
//! commands through `pms_mailbox::apply`, and entry builders for driving the adapters directly.

#![allow(dead_code)]

use openraft::entry::RaftEntry;
use openraft::vote::RaftLeaderIdExt;
use openraft::{Membership, RaftTypeConfig};
use pms_mailbox::{Command, GroupCommand, NewMessage, UserRecord};
use pms_replication::{LogCommand, TypeConfig};
use pms_storage::{MemoryStore, Store};
use pms_types::{GroupId, Keyspace, MessageId, UnixMillis, UserId};
use std::collections::BTreeSet;

pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;

pub fn user(name: &str) -> UserId {
    UserId::parse(name).expect("valid user name")
}

pub fn provision(name: &str) -> Command {
    Command::ProvisionUser {
        record: UserRecord {
            user: user(name),
            sealed_credentials: vec![0; 64],
            digest_algorithms: Vec::new(),
            messaging_enabled: true,
            wrapped_data_key: vec![7; 48],
            created_at: UnixMillis(1_000),
        },
    }
}

pub fn enqueue(recipient: &str, id_byte: u8) -> Command {
    Command::Enqueue {
        message: NewMessage {
            message_id: MessageId::from_random_bytes([id_byte; 16]),
            recipient: user(recipient),
            sealed: vec![id_byte; 64],
            expires_at: UnixMillis(1_000_000),
            dedup_keys: Vec::new(),
        },
        accepted_at: UnixMillis(2_000),
        notification: None,
        sender: None,
    }
}

/// A mix of commands that touch several keyspaces once `apply` is implemented.
pub fn sample_commands(round: u8) -> Vec<Command> {
    vec![
        provision(&format!("alice{round}")),
        provision(&format!("bob{round}")),
        Command::SetMessagingEnabled {
            user: user(&format!("bob{round}")),
            enabled: false,
        },
        enqueue(&format!("alice{round}"), round),
        provision(&format!("alice{round}")),
    ]
}

/// Every state entry of `group`, keyspace by keyspace.
pub fn dump_state(store: &dyn Store, group: GroupId) -> Vec<(Keyspace, Vec<u8>, Vec<u8>)> {
    let mut all = Vec::new();
    for keyspace in Keyspace::STATE {
        let entries = store
            .scan_prefix_all(keyspace, &group.key_prefix())
            .expect("scan state");
        all.extend(
            entries
                .into_iter()
                .map(|(key, value)| (keyspace, key, value)),
        );
    }
    all
}

/// The state a sequential replay of `commands` through `pms_mailbox::apply` produces: what
/// every replica must hold after applying them.
pub fn reference_state(group: GroupId, commands: &[Command]) -> Vec<(Keyspace, Vec<u8>, Vec<u8>)> {
    let reference = MemoryStore::new();
    for command in commands {
        let applied = pms_mailbox::apply(&reference, group, command).expect("reference apply");
        reference
            .write(&applied.mutations, false)
            .expect("reference write");
    }
    dump_state(&reference, group)
}

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(
        <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(term, 1),
        index,
    )
}

pub fn normal_entry(term: u64, index: u64, group: GroupId, command: Command) -> Entry {
    Entry::new_normal(
        log_id(term, index),
        LogCommand(GroupCommand { group, command }),
    )
}

pub fn membership_entry(term: u64, index: u64, voters: &[u64]) -> Entry {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    Entry::new_membership(
        log_id(term, index),
        Membership::new_with_defaults(vec![voters], []),
    )
}

/// Polls `condition` until it holds or `timeout` passes; a test helper for conditions that
/// have no notification of their own.
pub async fn wait_until(timeout: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
