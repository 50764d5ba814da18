//! Read-side queries over the applied state: what the edge, the mailbox actors and the admin
//! API read. Reads see only committed-and-applied state.

use pms_types::limits::APPLY_BATCH_MAX;
use pms_types::{GroupId, Keyspace, MessageId, StateRead, UnixMillis, UserId};

use crate::{
    ApplyError, Binding, MailboxMeta, MessageStatus, OutboxEntry, QueuedMessage, UserRecord,
    decode, keys,
};

pub fn user(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
    user: &UserId,
) -> Result<Option<UserRecord>, ApplyError> {
    state
        .get(Keyspace::Users, &keys::user(group, user))?
        .map(|bytes| decode(Keyspace::Users, &bytes))
        .transpose()
}

/// Users in name order, starting after `after` (exclusive), at most `limit`.
pub fn users(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
    after: Option<&UserId>,
    limit: usize,
) -> Result<Vec<UserRecord>, ApplyError> {
    let prefix = keys::users_prefix(group);
    let start = match after {
        Some(user) => {
            let mut key = keys::user(group, user);
            key.push(0);
            key
        }
        None => prefix.clone(),
    };
    state
        .scan_prefix(Keyspace::Users, &prefix, &start, limit)?
        .iter()
        .map(|(_, value)| decode(Keyspace::Users, value))
        .collect()
}

/// The user's bindings that have not expired at `now`.
pub fn bindings(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
    user: &UserId,
    now: UnixMillis,
) -> Result<Vec<Binding>, ApplyError> {
    let prefix = keys::user_prefix(group, user);
    let mut live = Vec::new();
    for (_, value) in state.scan_prefix(Keyspace::Bindings, &prefix, &prefix, APPLY_BATCH_MAX)? {
        let binding: Binding = decode(Keyspace::Bindings, &value)?;
        if binding.expires_at > now {
            live.push(binding);
        }
    }
    Ok(live)
}

/// The user's queue in delivery order, from `from_seq` (inclusive), at most `limit`.
pub fn queue(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
    user: &UserId,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<QueuedMessage>, ApplyError> {
    let prefix = keys::user_prefix(group, user);
    let start = keys::message(group, user, from_seq);
    state
        .scan_prefix(Keyspace::Messages, &prefix, &start, limit)?
        .iter()
        .map(|(_, value)| decode(Keyspace::Messages, value))
        .collect()
}

pub fn mailbox_meta(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
    user: &UserId,
) -> Result<MailboxMeta, ApplyError> {
    Ok(state
        .get(Keyspace::MailboxMeta, &keys::mailbox_meta(group, user))?
        .map(|bytes| decode(Keyspace::MailboxMeta, &bytes))
        .transpose()?
        .unwrap_or_default())
}

pub fn message_status(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
    message_id: &MessageId,
) -> Result<Option<MessageStatus>, ApplyError> {
    state
        .get(Keyspace::Status, &keys::status(group, message_id))?
        .map(|bytes| decode(Keyspace::Status, &bytes))
        .transpose()
}

/// Queued messages whose validity ends at or before `now`, earliest first, at most `limit`:
/// `(expires_at, recipient, seq)`.
pub fn expiring(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
    now: UnixMillis,
    limit: usize,
) -> Result<Vec<(UnixMillis, UserId, u64)>, ApplyError> {
    Ok(next_expiries(state, group, limit)?
        .into_iter()
        .take_while(|(expires_at, _, _)| *expires_at <= now)
        .collect())
}

/// The earliest `limit` entries of the expiry index.
pub fn next_expiries(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
    limit: usize,
) -> Result<Vec<(UnixMillis, UserId, u64)>, ApplyError> {
    let prefix = pms_types::group_key(group, &[]);
    let mut found = Vec::new();
    for (key, _) in state.scan_prefix(Keyspace::Expiry, &prefix, &prefix, limit)? {
        let parsed = keys::parse_expiry(group, &key).ok_or_else(|| ApplyError::CorruptRecord {
            keyspace: Keyspace::Expiry.name(),
            detail: format!("undecodable key {key:?}"),
        })?;
        found.push(parsed);
    }
    Ok(found)
}

/// Total queued messages of a group (sums the per-user counters).
pub fn queue_depth(state: &(impl StateRead + ?Sized), group: GroupId) -> Result<u64, ApplyError> {
    let prefix = pms_types::group_key(group, &[]);
    let mut total = 0;
    let mut start = prefix.clone();
    loop {
        let page = state.scan_prefix(Keyspace::MailboxMeta, &prefix, &start, APPLY_BATCH_MAX)?;
        for (_, value) in &page {
            let meta: MailboxMeta = decode(Keyspace::MailboxMeta, value)?;
            total += meta.queued;
        }
        match page.last() {
            Some((last, _)) if page.len() == APPLY_BATCH_MAX => {
                start = last.clone();
                start.push(0);
            }
            _ => return Ok(total),
        }
    }
}

/// Users of `group` with at least one queued message, in user-name order after `after`
/// (exclusive), at most `limit`. Used to resume delivery after a leader change.
pub fn users_with_queue(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
    after: Option<&UserId>,
    limit: usize,
) -> Result<Vec<UserId>, ApplyError> {
    let prefix = pms_types::group_key(group, &[]);
    let mut start = match after {
        Some(user) => {
            let mut key = keys::mailbox_meta(group, user);
            key.push(0);
            key
        }
        None => prefix.clone(),
    };
    let mut found = Vec::new();
    loop {
        let page = state.scan_prefix(Keyspace::MailboxMeta, &prefix, &start, APPLY_BATCH_MAX)?;
        for (key, value) in &page {
            let meta: MailboxMeta = decode(Keyspace::MailboxMeta, value)?;
            if meta.queued == 0 {
                continue;
            }
            let name = key
                .get(prefix.len()..)
                .and_then(|name| std::str::from_utf8(name).ok())
                .and_then(|name| UserId::parse(name).ok())
                .ok_or_else(|| ApplyError::CorruptRecord {
                    keyspace: Keyspace::MailboxMeta.name(),
                    detail: format!("undecodable key {key:?}"),
                })?;
            found.push(name);
            if found.len() >= limit {
                return Ok(found);
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == APPLY_BATCH_MAX => {
                start = last.clone();
                start.push(0);
            }
            _ => return Ok(found),
        }
    }
}

/// IMDNs of `group` waiting to be queued in another group, at most `limit`.
pub fn outbox(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
    limit: usize,
) -> Result<Vec<OutboxEntry>, ApplyError> {
    let prefix = pms_types::group_key(group, &[]);
    state
        .scan_prefix(Keyspace::Outbox, &prefix, &prefix, limit)?
        .iter()
        .map(|(_, value)| decode(Keyspace::Outbox, value))
        .collect()
}

/// The fingerprint of the cluster's master key recorded in `group` (`CheckMasterKey`,
/// `ChangeMasterKey`), if any.
pub fn master_key_fingerprint(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
) -> Result<Option<String>, ApplyError> {
    state
        .get(Keyspace::Cluster, &keys::master_key_fingerprint(group))?
        .map(|bytes| decode(Keyspace::Cluster, &bytes))
        .transpose()
}

/// The cluster's identity recorded in the directory (`RecordClusterId`), if any.
pub fn cluster_id(
    state: &(impl StateRead + ?Sized),
    group: GroupId,
) -> Result<Option<String>, ApplyError> {
    state
        .get(Keyspace::Cluster, &keys::cluster_id(group))?
        .map(|bytes| decode(Keyspace::Cluster, &bytes))
        .transpose()
}
