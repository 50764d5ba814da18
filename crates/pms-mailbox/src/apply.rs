//! `apply`: one command in, mutations and a response out.
//!
//! Invariant: deterministic — reads only through `StateRead`, no clock, no randomness.
//! Invariant: business refusals change nothing (empty mutations) and are reported in the response.

use std::collections::BTreeMap;

use pms_types::limits::{APPLY_BATCH_MAX, BINDINGS_PER_USER_MAX, MAILBOX_MESSAGES_MAX};
use pms_types::{GroupId, KeyValue, Keyspace, MessageId, Mutation, StateRead, UnixMillis, UserId};

use crate::{
    ApplyError, Binding, Command, CommandResponse, DedupEntry, MailboxMeta, MessageState,
    MessageStatus, NewMessage, OutboxEntry, QueuedMessage, SenderKey, SenderQuota, UserRecord,
    decode, encode, keys,
};

/// The effects of applying one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub mutations: Vec<Mutation>,
    pub response: CommandResponse,
}

/// Applies `command` to the state of `group` as read through `state`.
pub fn apply(
    state: &impl StateRead,
    group: GroupId,
    command: &Command,
) -> Result<Applied, ApplyError> {
    let mut tx = Transaction {
        state,
        group,
        pending: BTreeMap::new(),
        mutations: Vec::new(),
    };
    let response = match command {
        Command::ProvisionUser { record } => tx.provision_user(record)?,
        Command::SetMessagingEnabled { user, enabled } => {
            tx.set_messaging_enabled(user, *enabled)?
        }
        Command::SetDigestAlgorithms {
            user,
            algorithms,
            sealed_credentials,
        } => tx.set_digest_algorithms(user, algorithms, sealed_credentials)?,
        Command::RemoveUser { user } => tx.remove_user(user)?,
        Command::Bind { binding, now } => tx.bind(binding, *now)?,
        Command::Register { user, changes, now } => tx.register(user, changes, *now)?,
        Command::Unbind { user, key } => {
            let binding_key = keys::binding(group, user, key);
            if tx.get(Keyspace::Bindings, &binding_key)?.is_some() {
                tx.delete(Keyspace::Bindings, binding_key);
            }
            CommandResponse::Done
        }
        Command::UnbindFlow { user, key, flow } => {
            let binding_key = keys::binding(group, user, key);
            if let Some(value) = tx.get(Keyspace::Bindings, &binding_key)? {
                let binding: Binding = decode(Keyspace::Bindings, &value)?;
                // Invariant: only the binding still on the closed flow goes; a device that
                // registered again on a new flow meanwhile keeps its new binding.
                if binding.flow == *flow {
                    tx.delete(Keyspace::Bindings, binding_key);
                }
            }
            CommandResponse::Done
        }
        Command::UnbindAll { user } => {
            for (key, _) in tx.scan_all(Keyspace::Bindings, &keys::user_prefix(group, user))? {
                tx.delete(Keyspace::Bindings, key);
            }
            CommandResponse::Done
        }
        Command::UnbindStaleFlows {
            flow_node,
            live_incarnation,
        } => {
            for (key, value) in tx.scan_all(Keyspace::Bindings, &keys::users_prefix(group))? {
                let binding: Binding = decode(Keyspace::Bindings, &value)?;
                if binding.flow.node == *flow_node && binding.flow.incarnation != *live_incarnation
                {
                    tx.delete(Keyspace::Bindings, key);
                }
            }
            CommandResponse::Done
        }
        Command::Enqueue {
            message,
            accepted_at,
            notification,
            sender,
        } => {
            let response = tx.enqueue(message, *accepted_at, sender.as_ref())?;
            if let (
                CommandResponse::Enqueued {
                    duplicate: false, ..
                },
                Some(notification),
            ) = (&response, notification)
            {
                // Dropped silently when it cannot be queued: the sender's state must not
                // refuse the recipient's message.
                tx.queue_notification(notification, *accepted_at)?;
            }
            response
        }
        Command::MarkDelivered {
            recipient,
            seq,
            message_id,
            at,
            notification,
        } => tx.finish(
            recipient,
            *seq,
            message_id,
            *at,
            MessageState::Delivered,
            notification.as_ref(),
        )?,
        Command::MarkFailed {
            recipient,
            seq,
            message_id,
            code,
            at,
            notification,
        } => tx.finish(
            recipient,
            *seq,
            message_id,
            *at,
            MessageState::Failed { code: *code },
            notification.as_ref(),
        )?,
        Command::Expire {
            recipient,
            seq,
            message_id,
            at,
            notification,
        } => tx.finish(
            recipient,
            *seq,
            message_id,
            *at,
            MessageState::Expired,
            notification.as_ref(),
        )?,
        Command::Prune {
            now,
            dedup_retention_ms,
            status_retention_ms,
        } => tx.prune(*now, *dedup_retention_ms, *status_retention_ms)?,
        Command::CheckMasterKey { fingerprint } => tx.check_master_key(fingerprint)?,
        Command::RecordClusterId { cluster_id } => tx.record_cluster_id(cluster_id)?,
        Command::ChangeMasterKey { from, to } => tx.change_master_key(from, to)?,
        Command::RewrapUser {
            user,
            expected_wrapped_data_key,
            wrapped_data_key,
            sealed_credentials,
        } => tx.rewrap_user(
            user,
            expected_wrapped_data_key,
            wrapped_data_key,
            sealed_credentials,
        )?,
        Command::ClearOutbox { message_id } => {
            let key = keys::outbox(group, message_id);
            if tx.get(Keyspace::Outbox, &key)?.is_some() {
                tx.delete(Keyspace::Outbox, key);
            }
            CommandResponse::Done
        }
    };
    Ok(Applied {
        mutations: tx.mutations,
        response,
    })
}

/// Reads through pending writes so that one command sees its own earlier effects.
struct Transaction<'s, S: StateRead> {
    state: &'s S,
    group: GroupId,
    pending: BTreeMap<(Keyspace, Vec<u8>), Option<Vec<u8>>>,
    mutations: Vec<Mutation>,
}

impl<S: StateRead> Transaction<'_, S> {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, ApplyError> {
        if let Some(pending) = self.pending.get(&(keyspace, key.to_vec())) {
            return Ok(pending.clone());
        }
        Ok(self.state.get(keyspace, key)?)
    }

    fn get_record<T: crate::Record>(
        &self,
        keyspace: Keyspace,
        key: &[u8],
    ) -> Result<Option<T>, ApplyError> {
        self.get(keyspace, key)?
            .map(|bytes| decode(keyspace, &bytes))
            .transpose()
    }

    fn put<T: crate::Record>(&mut self, keyspace: Keyspace, key: Vec<u8>, value: &T) {
        let value = encode(value);
        self.pending
            .insert((keyspace, key.clone()), Some(value.clone()));
        self.mutations.push(Mutation::Put {
            keyspace,
            key,
            value,
        });
    }

    fn delete(&mut self, keyspace: Keyspace, key: Vec<u8>) {
        self.pending.insert((keyspace, key.clone()), None);
        self.mutations.push(Mutation::Delete { keyspace, key });
    }

    /// Every stored entry under `prefix`, in pages. Does not see this command's pending writes:
    /// callers scan before they write under the same prefix.
    fn scan_all(&self, keyspace: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, ApplyError> {
        let mut entries = Vec::new();
        let mut start = prefix.to_vec();
        loop {
            let page = self
                .state
                .scan_prefix(keyspace, prefix, &start, APPLY_BATCH_MAX)?;
            let full = page.len() == APPLY_BATCH_MAX;
            if let Some((last, _)) = page.last() {
                start = last.clone();
                start.push(0);
            }
            entries.extend(page);
            if !full {
                return Ok(entries);
            }
        }
    }

    fn user(&self, user: &UserId) -> Result<Option<UserRecord>, ApplyError> {
        self.get_record(Keyspace::Users, &keys::user(self.group, user))
    }

    fn provision_user(&mut self, record: &UserRecord) -> Result<CommandResponse, ApplyError> {
        if self.user(&record.user)?.is_some() {
            return Ok(CommandResponse::UserExists {
                user: record.user.clone(),
            });
        }
        self.put(
            Keyspace::Users,
            keys::user(self.group, &record.user),
            record,
        );
        Ok(CommandResponse::Done)
    }

    fn set_messaging_enabled(
        &mut self,
        user: &UserId,
        enabled: bool,
    ) -> Result<CommandResponse, ApplyError> {
        let Some(mut record) = self.user(user)? else {
            return Ok(CommandResponse::UnknownUser { user: user.clone() });
        };
        record.messaging_enabled = enabled;
        self.put(Keyspace::Users, keys::user(self.group, user), &record);
        Ok(CommandResponse::Done)
    }

    fn set_digest_algorithms(
        &mut self,
        user: &UserId,
        algorithms: &[crate::DigestAlgorithm],
        sealed_credentials: &[u8],
    ) -> Result<CommandResponse, ApplyError> {
        let Some(mut record) = self.user(user)? else {
            return Ok(CommandResponse::UnknownUser { user: user.clone() });
        };
        record.digest_algorithms = algorithms.to_vec();
        record.sealed_credentials = sealed_credentials.to_vec();
        self.put(Keyspace::Users, keys::user(self.group, user), &record);
        Ok(CommandResponse::Done)
    }

    fn remove_user(&mut self, user: &UserId) -> Result<CommandResponse, ApplyError> {
        if self.user(user)?.is_none() {
            return Ok(CommandResponse::UnknownUser { user: user.clone() });
        }
        // Invariant: the wrapped data key goes first, so a crash can never leave readable
        // messages of a removed user (crypto-shredding).
        self.delete(Keyspace::Users, keys::user(self.group, user));
        let prefix = keys::user_prefix(self.group, user);
        for (key, _) in self.scan_all(Keyspace::Bindings, &prefix)? {
            self.delete(Keyspace::Bindings, key);
        }
        for (key, value) in self.scan_all(Keyspace::Messages, &prefix)? {
            let message: QueuedMessage = decode(Keyspace::Messages, &value)?;
            self.delete(
                Keyspace::Expiry,
                keys::expiry(self.group, message.expires_at, user, message.seq),
            );
            self.delete(
                Keyspace::Status,
                keys::status(self.group, &message.message_id),
            );
            self.delete(Keyspace::Messages, key);
        }
        self.delete(Keyspace::MailboxMeta, keys::mailbox_meta(self.group, user));
        for (key, _) in self.scan_all(Keyspace::SenderCounts, &prefix)? {
            self.delete(Keyspace::SenderCounts, key);
        }
        Ok(CommandResponse::Done)
    }

    fn register(
        &mut self,
        user: &UserId,
        changes: &[crate::BindingChange],
        now: UnixMillis,
    ) -> Result<CommandResponse, ApplyError> {
        if self.user(user)?.is_none() {
            return Ok(CommandResponse::UnknownUser { user: user.clone() });
        }
        let mut existing = BTreeMap::new();
        for (key, value) in
            self.scan_all(Keyspace::Bindings, &keys::user_prefix(self.group, user))?
        {
            let binding: Binding = decode(Keyspace::Bindings, &value)?;
            existing.insert(key, binding);
        }
        let mut result: BTreeMap<String, Binding> = existing
            .values()
            .filter(|binding| binding.expires_at > now)
            .map(|binding| (binding.key.clone(), binding.clone()))
            .collect();
        for change in changes {
            match change {
                crate::BindingChange::Bind(binding) => {
                    result.insert(binding.key.clone(), binding.clone());
                }
                crate::BindingChange::Unbind { key } => {
                    result.remove(key);
                }
                crate::BindingChange::UnbindAll => result.clear(),
            }
        }
        // Invariant: a refused REGISTER changes nothing (no mutation before this check).
        if result.len() > BINDINGS_PER_USER_MAX {
            return Ok(CommandResponse::TooManyBindings { user: user.clone() });
        }
        for (storage_key, binding) in &existing {
            if result.get(&binding.key) != Some(binding) {
                self.delete(Keyspace::Bindings, storage_key.clone());
            }
        }
        for binding in result.values() {
            let storage_key = keys::binding(self.group, user, &binding.key);
            if existing.get(&storage_key) != Some(binding) {
                self.put(Keyspace::Bindings, storage_key, binding);
            }
        }
        Ok(CommandResponse::Done)
    }

    fn bind(&mut self, binding: &Binding, now: UnixMillis) -> Result<CommandResponse, ApplyError> {
        if self.user(&binding.user)?.is_none() {
            return Ok(CommandResponse::UnknownUser {
                user: binding.user.clone(),
            });
        }
        let mut kept = 0;
        let mut stale = Vec::new();
        for (key, value) in self.scan_all(
            Keyspace::Bindings,
            &keys::user_prefix(self.group, &binding.user),
        )? {
            let existing: Binding = decode(Keyspace::Bindings, &value)?;
            if existing.key == binding.key {
                continue;
            }
            if existing.expires_at <= now {
                stale.push(key);
            } else {
                kept += 1;
            }
        }
        if kept >= BINDINGS_PER_USER_MAX {
            return Ok(CommandResponse::TooManyBindings {
                user: binding.user.clone(),
            });
        }
        for key in stale {
            self.delete(Keyspace::Bindings, key);
        }
        self.put(
            Keyspace::Bindings,
            keys::binding(self.group, &binding.user, &binding.key),
            binding,
        );
        Ok(CommandResponse::Done)
    }

    /// Queues `message` unless it is known (dedup key or id: the first answer again), its
    /// recipient is unknown, the sender's quota there is used up, or the mailbox is full.
    /// Invariant: a refusal changes nothing; a queued message with a `sender` is counted in
    /// `SenderCounts` exactly while it is queued.
    fn enqueue(
        &mut self,
        message: &NewMessage,
        accepted_at: UnixMillis,
        sender: Option<&SenderQuota>,
    ) -> Result<CommandResponse, ApplyError> {
        for dedup_key in &message.dedup_keys {
            let found: Option<DedupEntry> =
                self.get_record(Keyspace::Dedup, &keys::dedup(self.group, dedup_key))?;
            if let Some(entry) = found {
                return Ok(CommandResponse::Enqueued {
                    message_id: entry.message_id,
                    seq: entry.seq,
                    duplicate: true,
                });
            }
        }
        // A proposal retried by the leader after an unknown outcome carries the same id.
        let status_key = keys::status(self.group, &message.message_id);
        if let Some(status) = self.get_record::<MessageStatus>(Keyspace::Status, &status_key)? {
            let seq = self.find_seq(&status)?;
            return Ok(CommandResponse::Enqueued {
                message_id: status.message_id,
                seq,
                duplicate: true,
            });
        }
        if self.user(&message.recipient)?.is_none() {
            return Ok(CommandResponse::UnknownUser {
                user: message.recipient.clone(),
            });
        }
        // The sender over its own quota learns that first: the mailbox is not full for others.
        let sender_count = match sender {
            Some(quota) => {
                let key = keys::sender_count(self.group, &message.recipient, &quota.key);
                let count: u64 = self
                    .get_record(Keyspace::SenderCounts, &key)?
                    .unwrap_or_default();
                if count >= quota.queued_max {
                    return Ok(CommandResponse::SenderQueueFull {
                        user: message.recipient.clone(),
                        queued_max: quota.queued_max,
                    });
                }
                Some((key, count))
            }
            None => None,
        };
        let meta_key = keys::mailbox_meta(self.group, &message.recipient);
        let mut meta: MailboxMeta = self
            .get_record(Keyspace::MailboxMeta, &meta_key)?
            .unwrap_or_default();
        if meta.queued >= MAILBOX_MESSAGES_MAX as u64 {
            return Ok(CommandResponse::MailboxFull {
                user: message.recipient.clone(),
            });
        }
        let seq = meta.next_seq;
        meta.next_seq += 1;
        meta.queued += 1;
        self.put(Keyspace::MailboxMeta, meta_key, &meta);
        if let Some((key, count)) = sender_count {
            self.put(Keyspace::SenderCounts, key, &(count + 1));
        }
        let queued = QueuedMessage {
            seq,
            message_id: message.message_id.clone(),
            recipient: message.recipient.clone(),
            sealed: message.sealed.clone(),
            enqueued_at: accepted_at,
            expires_at: message.expires_at,
            dedup_keys: message.dedup_keys.clone(),
            sender: sender.map(|quota| quota.key),
        };
        self.put(
            Keyspace::Messages,
            keys::message(self.group, &message.recipient, seq),
            &queued,
        );
        self.put(
            Keyspace::Expiry,
            keys::expiry(self.group, message.expires_at, &message.recipient, seq),
            &(),
        );
        let status = MessageStatus {
            message_id: message.message_id.clone(),
            recipient: message.recipient.clone(),
            state: MessageState::Queued,
            enqueued_at: accepted_at,
            updated_at: accepted_at,
        };
        self.put(Keyspace::Status, status_key, &status);
        let entry = DedupEntry {
            message_id: message.message_id.clone(),
            recipient: message.recipient.clone(),
            seq,
            expires_at: message.expires_at,
        };
        for dedup_key in &message.dedup_keys {
            self.put(Keyspace::Dedup, keys::dedup(self.group, dedup_key), &entry);
        }
        Ok(CommandResponse::Enqueued {
            message_id: message.message_id.clone(),
            seq,
            duplicate: false,
        })
    }

    /// The queue position of a message known by status (0 when it already left the queue).
    fn find_seq(&self, status: &MessageStatus) -> Result<u64, ApplyError> {
        for (_, value) in self.scan_all(
            Keyspace::Messages,
            &keys::user_prefix(self.group, &status.recipient),
        )? {
            let queued: QueuedMessage = decode(Keyspace::Messages, &value)?;
            if queued.message_id == status.message_id {
                return Ok(queued.seq);
            }
        }
        Ok(0)
    }

    /// Queues an IMDN for its recipient (the original sender) in this group when the sender's
    /// mailbox is here, else keeps it in the outbox until the leader has queued it in the
    /// sender's group (and committed `ClearOutbox` here).
    fn queue_notification(
        &mut self,
        notification: &NewMessage,
        accepted_at: UnixMillis,
    ) -> Result<(), ApplyError> {
        if self.user(&notification.recipient)?.is_some() {
            // Invariant: IMDNs PMS generates count against no sender's quota.
            self.enqueue(notification, accepted_at, None)?;
        } else {
            self.put(
                Keyspace::Outbox,
                keys::outbox(self.group, &notification.message_id),
                &OutboxEntry {
                    message: notification.clone(),
                    accepted_at,
                },
            );
        }
        Ok(())
    }

    /// Removes a queued message with its final state, and queues the notification if any.
    fn finish(
        &mut self,
        recipient: &UserId,
        seq: u64,
        message_id: &MessageId,
        at: UnixMillis,
        state: MessageState,
        notification: Option<&NewMessage>,
    ) -> Result<CommandResponse, ApplyError> {
        let message_key = keys::message(self.group, recipient, seq);
        let queued: Option<QueuedMessage> = self.get_record(Keyspace::Messages, &message_key)?;
        let Some(queued) = queued.filter(|queued| &queued.message_id == message_id) else {
            return Ok(CommandResponse::NotQueued {
                message_id: message_id.clone(),
            });
        };
        if state == MessageState::Expired && at < queued.expires_at {
            return Ok(CommandResponse::NotYetExpired {
                message_id: message_id.clone(),
                expires_at: queued.expires_at,
            });
        }
        self.delete(Keyspace::Messages, message_key);
        self.delete(
            Keyspace::Expiry,
            keys::expiry(self.group, queued.expires_at, recipient, seq),
        );
        let meta_key = keys::mailbox_meta(self.group, recipient);
        let mut meta: MailboxMeta = self
            .get_record(Keyspace::MailboxMeta, &meta_key)?
            .unwrap_or_default();
        assert!(
            meta.queued > 0,
            "Invariant: a queued message is counted in its mailbox meta"
        );
        meta.queued -= 1;
        self.put(Keyspace::MailboxMeta, meta_key, &meta);
        if let Some(sender) = &queued.sender {
            self.uncount_sender(recipient, sender)?;
        }
        let status = MessageStatus {
            message_id: message_id.clone(),
            recipient: recipient.clone(),
            state,
            enqueued_at: queued.enqueued_at,
            updated_at: at,
        };
        self.put(
            Keyspace::Status,
            keys::status(self.group, message_id),
            &status,
        );
        if let Some(notification) = notification {
            // A notification that cannot be queued (unknown sender, full mailbox) is dropped:
            // the sender's own state must not block the recipient's queue.
            self.queue_notification(notification, at)?;
        }
        Ok(CommandResponse::Done)
    }

    /// One message of `sender` left `recipient`'s queue: its count goes down (and its entry
    /// goes at zero, so the keyspace holds only senders with queued messages).
    fn uncount_sender(&mut self, recipient: &UserId, sender: &SenderKey) -> Result<(), ApplyError> {
        let key = keys::sender_count(self.group, recipient, sender);
        let count: u64 = self
            .get_record(Keyspace::SenderCounts, &key)?
            .unwrap_or_default();
        assert!(
            count > 0,
            "Invariant: a queued message with a sender is counted in SenderCounts"
        );
        if count == 1 {
            self.delete(Keyspace::SenderCounts, key);
        } else {
            self.put(Keyspace::SenderCounts, key, &(count - 1));
        }
        Ok(())
    }

    /// Records the cluster id when none is, and answers with the recorded one.
    fn record_cluster_id(&mut self, cluster_id: &str) -> Result<CommandResponse, ApplyError> {
        let key = keys::cluster_id(self.group);
        let cluster_id = match self.get_record::<String>(Keyspace::Cluster, &key)? {
            Some(recorded) => recorded,
            None => {
                self.put(Keyspace::Cluster, key, &cluster_id.to_owned());
                cluster_id.to_owned()
            }
        };
        Ok(CommandResponse::ClusterId { cluster_id })
    }

    fn check_master_key(&mut self, fingerprint: &str) -> Result<CommandResponse, ApplyError> {
        let key = keys::master_key_fingerprint(self.group);
        match self.get_record::<String>(Keyspace::Cluster, &key)? {
            Some(recorded) if recorded != fingerprint => {
                Ok(CommandResponse::MasterKeyMismatch { recorded })
            }
            Some(_) => Ok(CommandResponse::Done),
            None => {
                self.put(Keyspace::Cluster, key, &fingerprint.to_owned());
                Ok(CommandResponse::Done)
            }
        }
    }

    fn change_master_key(&mut self, from: &str, to: &str) -> Result<CommandResponse, ApplyError> {
        let key = keys::master_key_fingerprint(self.group);
        match self.get_record::<String>(Keyspace::Cluster, &key)? {
            Some(recorded) if recorded == to => Ok(CommandResponse::Done),
            Some(recorded) if recorded != from => {
                Ok(CommandResponse::MasterKeyMismatch { recorded })
            }
            _ => {
                self.put(Keyspace::Cluster, key, &to.to_owned());
                Ok(CommandResponse::Done)
            }
        }
    }

    fn rewrap_user(
        &mut self,
        user: &UserId,
        expected_wrapped_data_key: &[u8],
        wrapped_data_key: &[u8],
        sealed_credentials: &[u8],
    ) -> Result<CommandResponse, ApplyError> {
        let Some(mut record) = self.user(user)? else {
            return Ok(CommandResponse::UnknownUser { user: user.clone() });
        };
        if record.wrapped_data_key != expected_wrapped_data_key {
            return Ok(CommandResponse::RecordChanged { user: user.clone() });
        }
        record.wrapped_data_key = wrapped_data_key.to_vec();
        record.sealed_credentials = sealed_credentials.to_vec();
        self.put(Keyspace::Users, keys::user(self.group, user), &record);
        Ok(CommandResponse::Done)
    }

    /// Forgets dedup entries past their retention and final statuses older than `before`, at
    /// most `APPLY_BATCH_MAX` of each per command (the leader proposes again while work remains).
    fn prune(
        &mut self,
        now: UnixMillis,
        dedup_retention_ms: u64,
        status_retention_ms: u64,
    ) -> Result<CommandResponse, ApplyError> {
        let prefix = pms_types::group_key(self.group, &[]);
        let mut more = false;
        let mut dedup_entries = 0u64;
        for (key, value) in self.scan_all(Keyspace::Dedup, &prefix)? {
            let entry: DedupEntry = decode(Keyspace::Dedup, &value)?;
            if entry.expires_at.saturating_add_ms(dedup_retention_ms) < now {
                if dedup_entries == APPLY_BATCH_MAX as u64 {
                    more = true;
                    break;
                }
                self.delete(Keyspace::Dedup, key);
                dedup_entries += 1;
            }
        }
        let mut statuses = 0u64;
        for (key, value) in self.scan_all(Keyspace::Status, &prefix)? {
            let status: MessageStatus = decode(Keyspace::Status, &value)?;
            if status.state != MessageState::Queued
                && status.updated_at.saturating_add_ms(status_retention_ms) < now
            {
                if statuses == APPLY_BATCH_MAX as u64 {
                    more = true;
                    break;
                }
                self.delete(Keyspace::Status, key);
                statuses += 1;
            }
        }
        Ok(CommandResponse::Pruned {
            dedup_entries,
            statuses,
            more,
        })
    }
}
