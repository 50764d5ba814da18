//! Feed one command, assert the exact effects (openraft engine-test style).

use std::collections::BTreeMap;

use pms_types::{
    FlowId, GroupId, Keyspace, MessageId, Mutation, NodeId, StateRead, StorageFault, UnixMillis,
    UserId,
};

use crate::{
    Applied, Binding, BindingChange, Command, CommandResponse, DedupKey, DigestAlgorithm,
    MessageState, NewMessage, UserRecord, apply, query,
};

/// A minimal in-memory state for unit tests only.
#[derive(Default)]
struct MemoryState {
    entries: BTreeMap<(Keyspace, Vec<u8>), Vec<u8>>,
}

impl StateRead for MemoryState {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageFault> {
        Ok(self.entries.get(&(keyspace, key.to_vec())).cloned())
    }

    fn scan_prefix(
        &self,
        keyspace: Keyspace,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<pms_types::KeyValue>, StorageFault> {
        let start = if start.is_empty() { prefix } else { start };
        Ok(self
            .entries
            .range((keyspace, start.to_vec())..)
            .take_while(|((ks, key), _)| *ks == keyspace && key.starts_with(prefix))
            .take(limit)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }
}

const GROUP: GroupId = GroupId(1);

impl MemoryState {
    fn run(&mut self, command: Command) -> Applied {
        let applied = apply(self, GROUP, &command).expect("apply");
        for mutation in &applied.mutations {
            match mutation {
                Mutation::Put {
                    keyspace,
                    key,
                    value,
                } => {
                    self.entries.insert((*keyspace, key.clone()), value.clone());
                }
                Mutation::Delete { keyspace, key } => {
                    self.entries.remove(&(*keyspace, key.clone()));
                }
            }
        }
        applied
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn provision(name: &str) -> Command {
    Command::ProvisionUser {
        record: UserRecord {
            user: user(name),
            sealed_credentials: vec![5; 40],
            digest_algorithms: Vec::new(),
            messaging_enabled: true,
            wrapped_data_key: vec![7; 72],
            created_at: UnixMillis(1),
        },
    }
}

fn message(id: u8, to: &str, expires_at: u64, dedup: u8) -> NewMessage {
    NewMessage {
        message_id: MessageId::from_random_bytes([id; 16]),
        recipient: user(to),
        sealed: vec![id; 40],
        expires_at: UnixMillis(expires_at),
        dedup_keys: vec![DedupKey([dedup; 32])],
    }
}

fn with_alice_and_bob() -> MemoryState {
    let mut state = MemoryState::default();
    assert_eq!(
        state.run(provision("alice")).response,
        CommandResponse::Done
    );
    assert_eq!(state.run(provision("bob")).response, CommandResponse::Done);
    state
}

#[test]
fn provisioning_twice_is_refused_without_effects() {
    let mut state = with_alice_and_bob();
    let applied = state.run(provision("alice"));
    assert_eq!(
        applied.response,
        CommandResponse::UserExists {
            user: user("alice")
        }
    );
    assert!(applied.mutations.is_empty());
}

#[test]
fn enqueue_assigns_sequence_numbers_in_order() {
    let mut state = with_alice_and_bob();
    for (index, id) in [1u8, 2, 3].into_iter().enumerate() {
        let applied = state.run(Command::Enqueue {
            message: message(id, "bob", 100, id),
            accepted_at: UnixMillis(10),
            notification: None,
            sender: None,
        });
        assert_eq!(
            applied.response,
            CommandResponse::Enqueued {
                message_id: MessageId::from_random_bytes([id; 16]),
                seq: index as u64,
                duplicate: false
            }
        );
    }
    let queue = query::queue(&state, GROUP, &user("bob"), 0, 10).unwrap();
    assert_eq!(
        queue.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        query::mailbox_meta(&state, GROUP, &user("bob"))
            .unwrap()
            .queued,
        3
    );
    assert_eq!(query::queue_depth(&state, GROUP).unwrap(), 3);
}

#[test]
fn a_retransmission_is_stored_once() {
    let mut state = with_alice_and_bob();
    state.run(Command::Enqueue {
        message: message(1, "bob", 100, 9),
        accepted_at: UnixMillis(10),
        notification: None,
        sender: None,
    });
    // Same dedup key, new server id (a retransmission that reached the leader again).
    let applied = state.run(Command::Enqueue {
        message: message(2, "bob", 100, 9),
        accepted_at: UnixMillis(11),
        notification: None,
        sender: None,
    });
    assert_eq!(
        applied.response,
        CommandResponse::Enqueued {
            message_id: MessageId::from_random_bytes([1; 16]),
            seq: 0,
            duplicate: true
        }
    );
    assert!(applied.mutations.is_empty());
    // Same server id (a proposal retried after an unknown outcome).
    let applied = state.run(Command::Enqueue {
        message: message(1, "bob", 100, 8),
        accepted_at: UnixMillis(12),
        notification: None,
        sender: None,
    });
    assert!(matches!(
        applied.response,
        CommandResponse::Enqueued {
            duplicate: true,
            seq: 0,
            ..
        }
    ));
    assert_eq!(
        query::queue(&state, GROUP, &user("bob"), 0, 10)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_stored_notification_is_queued_with_a_new_message_only() {
    let mut state = with_alice_and_bob();
    let stored = Some(message(70, "alice", 300, 70));
    state.run(Command::Enqueue {
        message: message(1, "bob", 100, 1),
        accepted_at: UnixMillis(10),
        notification: stored.clone(),
        sender: None,
    });
    assert_eq!(
        query::queue(&state, GROUP, &user("alice"), 0, 10)
            .unwrap()
            .len(),
        1
    );
    // The retry of the same request queues neither the message nor a second notification.
    state.run(Command::Enqueue {
        message: message(2, "bob", 100, 1),
        accepted_at: UnixMillis(11),
        notification: Some(message(71, "alice", 300, 71)),
        sender: None,
    });
    assert_eq!(
        query::queue(&state, GROUP, &user("alice"), 0, 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        query::queue(&state, GROUP, &user("bob"), 0, 10)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn enqueue_to_an_unknown_user_changes_nothing() {
    let mut state = with_alice_and_bob();
    let applied = state.run(Command::Enqueue {
        message: message(1, "carol", 100, 1),
        accepted_at: UnixMillis(10),
        notification: None,
        sender: None,
    });
    assert_eq!(
        applied.response,
        CommandResponse::UnknownUser {
            user: user("carol")
        }
    );
    assert!(applied.mutations.is_empty());
}

#[test]
fn delivered_leaves_the_queue_and_queues_the_notification() {
    let mut state = with_alice_and_bob();
    state.run(Command::Enqueue {
        message: message(1, "bob", 100, 1),
        accepted_at: UnixMillis(10),
        notification: None,
        sender: None,
    });
    let id = MessageId::from_random_bytes([1; 16]);
    let applied = state.run(Command::MarkDelivered {
        recipient: user("bob"),
        seq: 0,
        message_id: id.clone(),
        at: UnixMillis(20),
        notification: Some(message(50, "alice", 200, 50)),
    });
    assert_eq!(applied.response, CommandResponse::Done);
    assert!(
        query::queue(&state, GROUP, &user("bob"), 0, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        query::queue(&state, GROUP, &user("alice"), 0, 10)
            .unwrap()
            .len(),
        1
    );
    let status = query::message_status(&state, GROUP, &id).unwrap().unwrap();
    assert_eq!(status.state, MessageState::Delivered);
    assert_eq!(status.updated_at, UnixMillis(20));
    assert!(
        query::next_expiries(&state, GROUP, 10)
            .unwrap()
            .iter()
            .all(|(_, u, _)| u.as_str() == "alice")
    );
    // A second MarkDelivered (redelivery after failover) changes nothing, queues no second IMDN.
    let again = state.run(Command::MarkDelivered {
        recipient: user("bob"),
        seq: 0,
        message_id: id.clone(),
        at: UnixMillis(21),
        notification: Some(message(51, "alice", 200, 51)),
    });
    assert_eq!(
        again.response,
        CommandResponse::NotQueued { message_id: id }
    );
    assert!(again.mutations.is_empty());
    assert_eq!(
        query::queue(&state, GROUP, &user("alice"), 0, 10)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn expire_is_refused_before_the_validity_ends() {
    let mut state = with_alice_and_bob();
    state.run(Command::Enqueue {
        message: message(1, "bob", 100, 1),
        accepted_at: UnixMillis(10),
        notification: None,
        sender: None,
    });
    let id = MessageId::from_random_bytes([1; 16]);
    let early = state.run(Command::Expire {
        recipient: user("bob"),
        seq: 0,
        message_id: id.clone(),
        at: UnixMillis(99),
        notification: None,
    });
    assert_eq!(
        early.response,
        CommandResponse::NotYetExpired {
            message_id: id.clone(),
            expires_at: UnixMillis(100)
        }
    );
    assert!(early.mutations.is_empty());
    assert_eq!(
        query::expiring(&state, GROUP, UnixMillis(99), 10).unwrap(),
        vec![]
    );
    assert_eq!(
        query::expiring(&state, GROUP, UnixMillis(100), 10).unwrap(),
        vec![(UnixMillis(100), user("bob"), 0)]
    );
    let expired = state.run(Command::Expire {
        recipient: user("bob"),
        seq: 0,
        message_id: id.clone(),
        at: UnixMillis(100),
        notification: Some(message(60, "alice", 300, 60)),
    });
    assert_eq!(expired.response, CommandResponse::Done);
    assert_eq!(
        query::message_status(&state, GROUP, &id)
            .unwrap()
            .unwrap()
            .state,
        MessageState::Expired
    );
    assert!(
        query::queue(&state, GROUP, &user("bob"), 0, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        query::queue(&state, GROUP, &user("alice"), 0, 10)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn failed_records_the_device_status_code() {
    let mut state = with_alice_and_bob();
    state.run(Command::Enqueue {
        message: message(1, "bob", 100, 1),
        accepted_at: UnixMillis(10),
        notification: None,
        sender: None,
    });
    let id = MessageId::from_random_bytes([1; 16]);
    state.run(Command::MarkFailed {
        recipient: user("bob"),
        seq: 0,
        message_id: id.clone(),
        code: 415,
        at: UnixMillis(11),
        notification: None,
    });
    assert_eq!(
        query::message_status(&state, GROUP, &id)
            .unwrap()
            .unwrap()
            .state,
        MessageState::Failed { code: 415 }
    );
}

fn binding(key: &str, expires_at: u64) -> Binding {
    Binding {
        user: user("bob"),
        key: key.into(),
        contact: format!("sip:bob@{key}"),
        flow: FlowId {
            node: NodeId(1),
            incarnation: 5,
            connection: 1,
        },
        over_tls: true,
        registered_at: UnixMillis(1),
        expires_at: UnixMillis(expires_at),
    }
}

#[test]
fn bind_replaces_the_same_key_and_drops_expired_bindings() {
    let mut state = with_alice_and_bob();
    state.run(Command::Bind {
        binding: binding("phone", 100),
        now: UnixMillis(1),
    });
    state.run(Command::Bind {
        binding: binding("laptop", 50),
        now: UnixMillis(1),
    });
    let mut newer = binding("phone", 200);
    newer.flow.connection = 2;
    state.run(Command::Bind {
        binding: newer.clone(),
        now: UnixMillis(60),
    });
    let live = query::bindings(&state, GROUP, &user("bob"), UnixMillis(60)).unwrap();
    assert_eq!(live, vec![newer]);
    // The expired laptop binding was removed from storage, not just filtered.
    assert_eq!(
        query::bindings(&state, GROUP, &user("bob"), UnixMillis(0))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_register_applies_whole_or_not_at_all() {
    let mut state = with_alice_and_bob();
    let kept = binding("phone", 100);
    state.run(Command::Bind {
        binding: kept.clone(),
        now: UnixMillis(1),
    });
    // More devices than allowed in one REGISTER: refused, and nothing of it is applied.
    let too_many: Vec<BindingChange> = std::iter::once(BindingChange::UnbindAll)
        .chain(
            (0..=pms_types::limits::BINDINGS_PER_USER_MAX)
                .map(|n| BindingChange::Bind(binding(&format!("d{n}"), 100))),
        )
        .collect();
    let refused = state.run(Command::Register {
        user: user("bob"),
        changes: too_many,
        now: UnixMillis(2),
    });
    assert_eq!(
        refused.response,
        CommandResponse::TooManyBindings { user: user("bob") }
    );
    assert!(refused.mutations.is_empty(), "{:?}", refused.mutations);
    assert_eq!(
        query::bindings(&state, GROUP, &user("bob"), UnixMillis(2)).unwrap(),
        vec![kept.clone()]
    );
    // Unbind one, bind two, in one command.
    let applied = state.run(Command::Register {
        user: user("bob"),
        changes: vec![
            BindingChange::Unbind {
                key: "phone".into(),
            },
            BindingChange::Bind(binding("laptop", 100)),
            BindingChange::Bind(binding("tablet", 100)),
        ],
        now: UnixMillis(2),
    });
    assert_eq!(applied.response, CommandResponse::Done);
    let keys: Vec<String> = query::bindings(&state, GROUP, &user("bob"), UnixMillis(2))
        .unwrap()
        .into_iter()
        .map(|binding| binding.key)
        .collect();
    assert_eq!(keys, ["laptop", "tablet"]);
    let unknown = state.run(Command::Register {
        user: user("carol"),
        changes: vec![BindingChange::UnbindAll],
        now: UnixMillis(2),
    });
    assert_eq!(
        unknown.response,
        CommandResponse::UnknownUser {
            user: user("carol")
        }
    );
}

#[test]
fn a_closed_flow_unbinds_only_the_binding_still_on_it() {
    let mut state = with_alice_and_bob();
    let old = binding("phone", 100);
    state.run(Command::Bind {
        binding: old.clone(),
        now: UnixMillis(1),
    });
    let mut moved = binding("phone", 100);
    moved.flow.connection = 9;
    state.run(Command::Bind {
        binding: moved.clone(),
        now: UnixMillis(2),
    });
    // The old flow closes after the device already registered on a new one: nothing goes.
    state.run(Command::UnbindFlow {
        user: user("bob"),
        key: "phone".into(),
        flow: old.flow,
    });
    let live = query::bindings(&state, GROUP, &user("bob"), UnixMillis(3)).unwrap();
    assert_eq!(live, vec![moved.clone()]);
    state.run(Command::UnbindFlow {
        user: user("bob"),
        key: "phone".into(),
        flow: moved.flow,
    });
    assert!(
        query::bindings(&state, GROUP, &user("bob"), UnixMillis(3))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn stale_flows_of_an_earlier_incarnation_are_unbound() {
    let mut state = with_alice_and_bob();
    state.run(Command::Bind {
        binding: binding("phone", 100),
        now: UnixMillis(1),
    });
    state.run(Command::UnbindStaleFlows {
        flow_node: NodeId(1),
        live_incarnation: 5,
    });
    assert_eq!(
        query::bindings(&state, GROUP, &user("bob"), UnixMillis(2))
            .unwrap()
            .len(),
        1
    );
    state.run(Command::UnbindStaleFlows {
        flow_node: NodeId(1),
        live_incarnation: 6,
    });
    assert!(
        query::bindings(&state, GROUP, &user("bob"), UnixMillis(2))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn remove_user_deletes_the_wrapped_key_first_and_everything_else() {
    let mut state = with_alice_and_bob();
    state.run(Command::Enqueue {
        message: message(1, "bob", 100, 1),
        accepted_at: UnixMillis(10),
        notification: None,
        sender: None,
    });
    state.run(Command::Bind {
        binding: binding("phone", 100),
        now: UnixMillis(1),
    });
    let applied = state.run(Command::RemoveUser { user: user("bob") });
    assert!(matches!(
        &applied.mutations[0],
        Mutation::Delete {
            keyspace: Keyspace::Users,
            ..
        }
    ));
    assert!(query::user(&state, GROUP, &user("bob")).unwrap().is_none());
    assert!(
        query::queue(&state, GROUP, &user("bob"), 0, 10)
            .unwrap()
            .is_empty()
    );
    assert!(query::next_expiries(&state, GROUP, 10).unwrap().is_empty());
    let left: Vec<_> = state
        .entries
        .keys()
        .filter(|(ks, _)| *ks != Keyspace::Users && *ks != Keyspace::Dedup)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_account_digest_policy_is_set_and_kept() {
    let mut state = with_alice_and_bob();
    let policy = vec![DigestAlgorithm::Md5, DigestAlgorithm::Sha256];
    let applied = state.run(Command::SetDigestAlgorithms {
        user: user("bob"),
        algorithms: policy.clone(),
        sealed_credentials: vec![6; 48],
    });
    assert_eq!(applied.response, CommandResponse::Done);
    let record = query::user(&state, GROUP, &user("bob")).unwrap().unwrap();
    assert_eq!(record.digest_algorithms, policy);
    assert_eq!(
        record.sealed_credentials,
        vec![6; 48],
        "credentials follow the policy"
    );
    assert!(record.messaging_enabled, "nothing else changed");
    assert_eq!(record.wrapped_data_key, vec![7; 72], "nothing else changed");
    let unknown = state.run(Command::SetDigestAlgorithms {
        user: user("carol"),
        algorithms: vec![DigestAlgorithm::Md5],
        sealed_credentials: vec![6; 48],
    });
    assert_eq!(
        unknown.response,
        CommandResponse::UnknownUser {
            user: user("carol")
        }
    );
    assert_eq!(
        DigestAlgorithm::parse_list("MD5, sha-256"),
        Ok(vec![DigestAlgorithm::Md5, DigestAlgorithm::Sha256])
    );
    for bad in ["", "md5,md5", "sha1"] {
        assert!(DigestAlgorithm::parse_list(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn messaging_can_be_disabled_and_enabled() {
    let mut state = with_alice_and_bob();
    state.run(Command::SetMessagingEnabled {
        user: user("bob"),
        enabled: false,
    });
    assert!(
        !query::user(&state, GROUP, &user("bob"))
            .unwrap()
            .unwrap()
            .messaging_enabled
    );
    let unknown = state.run(Command::SetMessagingEnabled {
        user: user("carol"),
        enabled: true,
    });
    assert_eq!(
        unknown.response,
        CommandResponse::UnknownUser {
            user: user("carol")
        }
    );
}

#[test]
fn prune_forgets_old_dedup_entries_and_final_statuses_only() {
    let mut state = with_alice_and_bob();
    state.run(Command::Enqueue {
        message: message(1, "bob", 100, 1),
        accepted_at: UnixMillis(10),
        notification: None,
        sender: None,
    });
    state.run(Command::Enqueue {
        message: message(2, "bob", 100, 2),
        accepted_at: UnixMillis(10),
        notification: None,
        sender: None,
    });
    let id = MessageId::from_random_bytes([1; 16]);
    state.run(Command::MarkDelivered {
        recipient: user("bob"),
        seq: 0,
        message_id: id.clone(),
        at: UnixMillis(20),
        notification: None,
    });
    // Not yet: the message expires at 100, and both retentions are 1,000 ms.
    let early = state.run(Command::Prune {
        now: UnixMillis(1_000),
        dedup_retention_ms: 1_000,
        status_retention_ms: 1_000,
    });
    assert_eq!(
        early.response,
        CommandResponse::Pruned {
            dedup_entries: 0,
            statuses: 0,
            more: false
        }
    );
    assert!(query::message_status(&state, GROUP, &id).unwrap().is_some());
    let pruned = state.run(Command::Prune {
        now: UnixMillis(2_000),
        dedup_retention_ms: 1_000,
        status_retention_ms: 1_000,
    });
    assert!(
        matches!(
            pruned.response,
            CommandResponse::Pruned {
                dedup_entries: 1..,
                statuses: 1,
                more: false
            }
        ),
        "{:?}",
        pruned.response
    );
    assert!(query::message_status(&state, GROUP, &id).unwrap().is_none());
    let queued = MessageId::from_random_bytes([2; 16]);
    assert!(
        query::message_status(&state, GROUP, &queued)
            .unwrap()
            .is_some()
    );
    assert!(!state.entries.keys().any(|(ks, _)| *ks == Keyspace::Dedup));
}

#[test]
fn listing_users_pages_by_name() {
    let state = with_alice_and_bob();
    let all = query::users(&state, GROUP, None, 10).unwrap();
    assert_eq!(
        all.iter().map(|u| u.user.as_str()).collect::<Vec<_>>(),
        vec!["alice", "bob"]
    );
    let after = query::users(&state, GROUP, Some(&user("alice")), 10).unwrap();
    assert_eq!(after.len(), 1);
}

#[test]
fn users_with_queue_lists_only_users_with_queued_messages() {
    let mut state = with_alice_and_bob();
    state.run(provision("carol"));
    assert!(
        query::users_with_queue(&state, GROUP, None, 10)
            .unwrap()
            .is_empty()
    );
    for (id, to) in [(1u8, "bob"), (2, "carol"), (3, "carol")] {
        state.run(Command::Enqueue {
            message: message(id, to, 100, id),
            accepted_at: UnixMillis(10),
            notification: None,
            sender: None,
        });
    }
    assert_eq!(
        query::users_with_queue(&state, GROUP, None, 10).unwrap(),
        vec![user("bob"), user("carol")]
    );
    // Paging: after bob comes carol; a limit of one stops at bob.
    assert_eq!(
        query::users_with_queue(&state, GROUP, Some(&user("bob")), 10).unwrap(),
        vec![user("carol")]
    );
    assert_eq!(
        query::users_with_queue(&state, GROUP, None, 1).unwrap(),
        vec![user("bob")]
    );
    // Once bob's only message is delivered he drops out.
    state.run(Command::MarkDelivered {
        recipient: user("bob"),
        seq: 0,
        message_id: MessageId::from_random_bytes([1; 16]),
        at: UnixMillis(20),
        notification: None,
    });
    assert_eq!(
        query::users_with_queue(&state, GROUP, None, 10).unwrap(),
        vec![user("carol")]
    );
}

#[test]
fn a_notification_for_a_sender_of_another_group_waits_in_the_outbox() {
    // Only bob's mailbox is in this group; alice's is elsewhere.
    let mut state = MemoryState::default();
    state.run(provision("bob"));
    state.run(Command::Enqueue {
        message: message(1, "bob", 100, 1),
        accepted_at: UnixMillis(10),
        notification: None,
        sender: None,
    });
    let applied = state.run(Command::MarkDelivered {
        recipient: user("bob"),
        seq: 0,
        message_id: MessageId::from_random_bytes([1; 16]),
        at: UnixMillis(20),
        notification: Some(message(50, "alice", 200, 50)),
    });
    assert_eq!(applied.response, CommandResponse::Done);
    // Not queued here (alice has no mailbox in this group) but kept for forwarding.
    assert!(
        query::queue(&state, GROUP, &user("alice"), 0, 10)
            .unwrap()
            .is_empty()
    );
    let outbox = query::outbox(&state, GROUP, 10).unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].message, message(50, "alice", 200, 50));
    assert_eq!(outbox[0].accepted_at, UnixMillis(20));
    // Once forwarded, clearing it empties the outbox; clearing again changes nothing.
    let id = MessageId::from_random_bytes([50; 16]);
    let cleared = state.run(Command::ClearOutbox {
        message_id: id.clone(),
    });
    assert_eq!(cleared.response, CommandResponse::Done);
    assert!(query::outbox(&state, GROUP, 10).unwrap().is_empty());
    let again = state.run(Command::ClearOutbox { message_id: id });
    assert!(again.mutations.is_empty());
}

/// Issue 8 item 13: what one sender may queue for one recipient.
mod sender_quota {
    use super::*;
    use crate::{SenderKey, SenderQuota, keys};

    fn quota(sender: u8, queued_max: u64) -> Option<SenderQuota> {
        Some(SenderQuota {
            key: SenderKey([sender; 32]),
            queued_max,
        })
    }

    fn from(sender: u8, queued_max: u64, id: u8, to: &str) -> Command {
        Command::Enqueue {
            message: message(id, to, 100, id),
            accepted_at: UnixMillis(10),
            notification: None,
            sender: quota(sender, queued_max),
        }
    }

    /// What `SenderCounts` holds for `sender` in `recipient`'s mailbox (`None`: no entry).
    fn count(state: &MemoryState, recipient: &str, sender: u8) -> Option<u64> {
        let key = keys::sender_count(GROUP, &user(recipient), &SenderKey([sender; 32]));
        state
            .entries
            .get(&(Keyspace::SenderCounts, key))
            .map(|bytes| crate::decode(Keyspace::SenderCounts, bytes).unwrap())
    }

    fn queued(state: &MemoryState, recipient: &str) -> usize {
        query::queue(state, GROUP, &user(recipient), 0, 100)
            .unwrap()
            .len()
    }

    #[test]
    fn a_sender_over_its_quota_is_refused_without_effects_and_others_still_queue() {
        let mut state = with_alice_and_bob();
        for id in [1, 2] {
            let applied = state.run(from(0xa, 2, id, "bob"));
            assert!(matches!(
                applied.response,
                CommandResponse::Enqueued {
                    duplicate: false,
                    ..
                }
            ));
        }
        assert_eq!(count(&state, "bob", 0xa), Some(2));
        let refused = state.run(from(0xa, 2, 3, "bob"));
        assert_eq!(
            refused.response,
            CommandResponse::SenderQueueFull {
                user: user("bob"),
                queued_max: 2
            }
        );
        assert!(refused.mutations.is_empty());
        // Another sender is not affected, nor is the same sender writing to someone else.
        assert!(matches!(
            state.run(from(0xc, 2, 4, "bob")).response,
            CommandResponse::Enqueued { .. }
        ));
        assert!(matches!(
            state.run(from(0xa, 2, 5, "alice")).response,
            CommandResponse::Enqueued { .. }
        ));
        assert_eq!(queued(&state, "bob"), 3);
        assert_eq!(count(&state, "bob", 0xa), Some(2));
        assert_eq!(count(&state, "bob", 0xc), Some(1));
        assert_eq!(count(&state, "alice", 0xa), Some(1));
        // The key stays with the queued message, the sender itself nowhere in clear.
        let head = &query::queue(&state, GROUP, &user("bob"), 0, 1).unwrap()[0];
        assert_eq!(head.sender, Some(SenderKey([0xa; 32])));
    }

    #[test]
    fn a_retransmission_over_the_quota_gets_its_first_answer() {
        let mut state = with_alice_and_bob();
        state.run(from(0xa, 1, 1, "bob"));
        let again = state.run(from(0xa, 1, 1, "bob"));
        assert!(matches!(
            again.response,
            CommandResponse::Enqueued {
                duplicate: true,
                ..
            }
        ));
        assert!(again.mutations.is_empty());
    }

    #[test]
    fn the_count_goes_down_when_a_message_is_delivered_fails_or_expires() {
        let mut state = with_alice_and_bob();
        for id in [1, 2, 3] {
            state.run(from(0xa, 3, id, "bob"));
        }
        assert_eq!(count(&state, "bob", 0xa), Some(3));
        let outcomes = [
            Command::MarkDelivered {
                recipient: user("bob"),
                seq: 0,
                message_id: MessageId::from_random_bytes([1; 16]),
                at: UnixMillis(20),
                notification: None,
            },
            Command::MarkFailed {
                recipient: user("bob"),
                seq: 1,
                message_id: MessageId::from_random_bytes([2; 16]),
                code: 488,
                at: UnixMillis(20),
                notification: None,
            },
            Command::Expire {
                recipient: user("bob"),
                seq: 2,
                message_id: MessageId::from_random_bytes([3; 16]),
                at: UnixMillis(100),
                notification: None,
            },
        ];
        for (left, outcome) in outcomes.into_iter().enumerate() {
            assert_eq!(state.run(outcome).response, CommandResponse::Done);
            let expected = 2 - left as u64;
            assert_eq!(
                count(&state, "bob", 0xa),
                (expected > 0).then_some(expected),
                "the last one leaves no entry behind"
            );
        }
        // The freed quota takes new messages again.
        assert!(matches!(
            state.run(from(0xa, 1, 4, "bob")).response,
            CommandResponse::Enqueued {
                duplicate: false,
                ..
            }
        ));
    }

    #[test]
    fn removing_the_recipient_forgets_its_sender_counts() {
        let mut state = with_alice_and_bob();
        state.run(from(0xa, 5, 1, "bob"));
        state.run(from(0xa, 5, 2, "alice"));
        assert_eq!(
            state
                .run(Command::RemoveUser { user: user("bob") })
                .response,
            CommandResponse::Done
        );
        assert_eq!(count(&state, "bob", 0xa), None);
        assert_eq!(count(&state, "alice", 0xa), Some(1));
    }

    #[test]
    fn imdns_pms_generates_count_against_no_sender() {
        let mut state = with_alice_and_bob();
        // bob's message to alice asks for a `stored` report, queued for bob in the same entry.
        state.run(Command::Enqueue {
            message: message(1, "alice", 100, 1),
            accepted_at: UnixMillis(10),
            notification: Some(message(70, "bob", 300, 70)),
            sender: quota(0xb, 1),
        });
        let reports = query::queue(&state, GROUP, &user("bob"), 0, 10).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].sender, None);
        let counted: Vec<_> = state
            .entries
            .keys()
            .filter(|(keyspace, _)| *keyspace == Keyspace::SenderCounts)
            .collect();
        assert_eq!(counted.len(), 1, "only bob's message to alice is counted");
        // The report leaves bob's queue without touching any count.
        assert_eq!(
            state
                .run(Command::MarkDelivered {
                    recipient: user("bob"),
                    seq: 0,
                    message_id: MessageId::from_random_bytes([70; 16]),
                    at: UnixMillis(20),
                    notification: None,
                })
                .response,
            CommandResponse::Done
        );
        assert_eq!(count(&state, "alice", 0xb), Some(1));
    }
}

#[test]
fn the_first_master_key_fingerprint_is_recorded_and_another_is_refused() {
    let mut state = MemoryState::default();
    let first = state.run(Command::CheckMasterKey {
        fingerprint: "aaaa".into(),
    });
    assert_eq!(first.response, CommandResponse::Done);
    assert_eq!(first.mutations.len(), 1, "recorded");
    let same = state.run(Command::CheckMasterKey {
        fingerprint: "aaaa".into(),
    });
    assert_eq!(same.response, CommandResponse::Done);
    assert!(same.mutations.is_empty());
    let other = state.run(Command::CheckMasterKey {
        fingerprint: "bbbb".into(),
    });
    assert_eq!(
        other.response,
        CommandResponse::MasterKeyMismatch {
            recorded: "aaaa".into()
        }
    );
    assert!(other.mutations.is_empty(), "a mismatch changes nothing");
}
