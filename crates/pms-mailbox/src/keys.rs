//! Key encodings for the state machine's keyspaces.
//!
//! Invariant: every key starts with the owning group's 4-byte prefix, and a user name inside a
//! key is followed by a 0 byte, so that one user's prefix never matches another user's keys
//! (`bob` vs `bobby`). User names cannot contain 0 (see `UserId::parse`).

use pms_types::{GroupId, MessageId, UnixMillis, UserId, group_key};

use crate::{DedupKey, SenderKey};

const USER_END: &[u8] = &[0];

pub fn user(group: GroupId, user: &UserId) -> Vec<u8> {
    group_key(group, &[user.as_str().as_bytes()])
}

/// Prefix of all users of a group (for listing).
pub fn users_prefix(group: GroupId) -> Vec<u8> {
    group_key(group, &[])
}

/// Prefix of one user's entries in `Bindings` and `Messages`.
pub fn user_prefix(group: GroupId, user: &UserId) -> Vec<u8> {
    group_key(group, &[user.as_str().as_bytes(), USER_END])
}

pub fn binding(group: GroupId, user: &UserId, binding_key: &str) -> Vec<u8> {
    group_key(
        group,
        &[user.as_str().as_bytes(), USER_END, binding_key.as_bytes()],
    )
}

pub fn message(group: GroupId, user: &UserId, seq: u64) -> Vec<u8> {
    group_key(
        group,
        &[user.as_str().as_bytes(), USER_END, &seq.to_be_bytes()],
    )
}

pub fn mailbox_meta(group: GroupId, user: &UserId) -> Vec<u8> {
    group_key(group, &[user.as_str().as_bytes()])
}

/// The count of messages `sender` has queued for `user` (`Keyspace::SenderCounts`); under
/// [`user_prefix`], so a user's counts go with the user.
pub fn sender_count(group: GroupId, user: &UserId, sender: &SenderKey) -> Vec<u8> {
    group_key(group, &[user.as_str().as_bytes(), USER_END, &sender.0])
}

/// The cluster's identity (`Keyspace::Cluster`), recorded once at bootstrap.
pub fn cluster_id(group: GroupId) -> Vec<u8> {
    group_key(group, &[b"cluster-id"])
}

/// The master key's fingerprint (`Keyspace::Cluster`).
pub fn master_key_fingerprint(group: GroupId) -> Vec<u8> {
    group_key(group, &[b"master-key-fingerprint"])
}

pub fn dedup(group: GroupId, key: &DedupKey) -> Vec<u8> {
    group_key(group, &[&key.0])
}

pub fn outbox(group: GroupId, message_id: &MessageId) -> Vec<u8> {
    group_key(group, &[message_id.as_str().as_bytes()])
}

pub fn expiry(group: GroupId, expires_at: UnixMillis, user: &UserId, seq: u64) -> Vec<u8> {
    group_key(
        group,
        &[
            &expires_at.0.to_be_bytes(),
            user.as_str().as_bytes(),
            USER_END,
            &seq.to_be_bytes(),
        ],
    )
}

/// Decodes an expiry key back into (expires_at, user, seq).
pub fn parse_expiry(group: GroupId, key: &[u8]) -> Option<(UnixMillis, UserId, u64)> {
    let rest = key.strip_prefix(&group.key_prefix())?;
    let (at, rest) = rest.split_at_checked(8)?;
    let (user, seq) = rest.split_at_checked(rest.len().checked_sub(9)?)?;
    let (end, seq) = seq.split_at_checked(1)?;
    if end != USER_END {
        return None;
    }
    let user = UserId::parse(std::str::from_utf8(user).ok()?).ok()?;
    Some((
        UnixMillis(u64::from_be_bytes(at.try_into().ok()?)),
        user,
        u64::from_be_bytes(seq.try_into().ok()?),
    ))
}

pub fn status(group: GroupId, message_id: &MessageId) -> Vec<u8> {
    group_key(group, &[message_id.as_str().as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_users_prefix_does_not_cover_a_longer_name() {
        let group = GroupId(1);
        let bob = UserId::parse("bob").unwrap();
        let bobby = UserId::parse("bobby").unwrap();
        assert!(!message(group, &bobby, 1).starts_with(&user_prefix(group, &bob)));
        assert!(message(group, &bob, 1).starts_with(&user_prefix(group, &bob)));
    }

    #[test]
    fn expiry_keys_round_trip_and_sort_by_time() {
        let group = GroupId(3);
        let bob = UserId::parse("bob").unwrap();
        let key = expiry(group, UnixMillis(42), &bob, 7);
        assert_eq!(
            parse_expiry(group, &key),
            Some((UnixMillis(42), bob.clone(), 7))
        );
        assert!(expiry(group, UnixMillis(41), &bob, 9) < key);
        assert_eq!(parse_expiry(GroupId(4), &key), None);
    }
}
