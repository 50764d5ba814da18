//! Sealing message records under a user's [`DataKey`], wrapping data keys under the
//! [`MasterKey`] (both XChaCha20-Poly1305), and the dedup hash for retransmissions.
//!
//! Sealed record format (version 1):
//! `version (1 byte) || nonce (24 random bytes) || ciphertext || tag (16 bytes)`;
//! associated data = `"pms/seal" || version || len(user) || user || len(message_id) || message_id`.
//!
//! Wrapped data key format (version 1), always [`WRAPPED_KEY_LEN`] bytes:
//! `version (1 byte) || nonce (24 random bytes) || encrypted key (32) || tag (16)`;
//! associated data = `"pms/data-key-wrap" || version || len(user) || user`.
//!
//! Invariants:
//! - Invariant: lengths in associated data and in [`dedup_hash`] are 8-byte big-endian
//!   prefixes, so ("ab", "c") and ("a", "bc") never collide.
//! - Invariant: every seal and wrap draws a fresh 192-bit random nonce; with `XChaCha20`
//!   random nonces never realistically repeat under one key.
//! - Invariant: opening checks version, length and tag before returning any byte; a
//!   failure reveals nothing but the ids needed to debug it.

use crate::error::{Error, Result};
use crate::keys::{DataKey, KEY_LEN, MasterKey};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Version byte of sealed records written by this build.
pub const SEAL_FORMAT_VERSION: u8 = 1;
/// Version byte of wrapped data keys written by this build.
pub const WRAP_FORMAT_VERSION: u8 = 1;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;
/// Bytes a sealed record adds to its plaintext (version + nonce + tag).
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Exact length of a wrapped data key.
pub const WRAPPED_KEY_LEN: usize = HEADER_LEN + KEY_LEN + TAG_LEN;

const SEAL_DOMAIN: &[u8] = b"pms/seal";
const CREDENTIALS_DOMAIN: &[u8] = b"pms/credentials";
/// The format version byte of sealed credentials.
pub const CREDENTIALS_FORMAT_VERSION: u8 = 1;
/// The purpose under which the credentials key is derived from the master key.
const CREDENTIALS_KEY_PURPOSE: &str = "credentials-seal";
const WRAP_DOMAIN: &[u8] = b"pms/data-key-wrap";

fn cipher(key: &[u8; KEY_LEN]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&(*key).into())
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

fn push_prefixed(out: &mut Vec<u8>, part: &[u8]) {
    // usize -> u64 is lossless on every supported target.
    out.extend_from_slice(&(part.len() as u64).to_be_bytes());
    out.extend_from_slice(part);
}

fn associated_data(domain: &[u8], version: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(
        domain.len() + 1 + parts.iter().map(|part| 8 + part.len()).sum::<usize>(),
    );
    aad.extend_from_slice(domain);
    aad.push(version);
    for part in parts {
        push_prefixed(&mut aad, part);
    }
    aad
}

/// Encrypts `plaintext` under `key` with a fresh nonce and `aad`, returning
/// `version || nonce || ciphertext || tag`.
fn encrypt(key: &[u8; KEY_LEN], version: u8, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = random_nonce();
    let ciphertext = cipher(key)
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // Invariant: XChaCha20-Poly1305 only refuses plaintexts over 256 GiB, far beyond
        // anything PMS holds in memory (bodies are capped in pms-types limits).
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    out.push(version);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// Splits and authenticates `version || nonce || ciphertext || tag`. `None` when the tag
/// does not verify; the caller has already checked length and version.
fn decrypt(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let nonce_bytes: [u8; NONCE_LEN] = sealed.get(1..HEADER_LEN)?.try_into().ok()?;
    let ciphertext = sealed.get(HEADER_LEN..)?;
    cipher(key)
        .decrypt(
            &XNonce::from(nonce_bytes),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

/// Seals one record (body, content type, sender...) of `user`'s message `message_id`.
/// Two seals of the same input differ (random nonce).
#[must_use]
pub fn seal(key: &DataKey, user: &str, message_id: &str, plaintext: &[u8]) -> Vec<u8> {
    let aad = associated_data(
        SEAL_DOMAIN,
        SEAL_FORMAT_VERSION,
        &[user.as_bytes(), message_id.as_bytes()],
    );
    encrypt(key.as_bytes(), SEAL_FORMAT_VERSION, &aad, plaintext)
}

/// Opens a record made by [`seal`] with the same key, user and message id.
pub fn open(key: &DataKey, user: &str, message_id: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(Error::SealedTooShort {
            len: sealed.len(),
            min: SEAL_OVERHEAD,
        });
    }
    let version = sealed[0];
    if version != SEAL_FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "sealed record",
            version,
        });
    }
    let aad = associated_data(
        SEAL_DOMAIN,
        version,
        &[user.as_bytes(), message_id.as_bytes()],
    );
    decrypt(key.as_bytes(), &aad, sealed).ok_or_else(|| Error::OpenFailed {
        user: user.to_string(),
        message_id: message_id.to_string(),
    })
}

/// Wraps `user`'s data key under the master key, for storage. Always
/// [`WRAPPED_KEY_LEN`] bytes.
#[must_use]
pub fn wrap_data_key(master: &MasterKey, user: &str, key: &DataKey) -> Vec<u8> {
    let aad = associated_data(WRAP_DOMAIN, WRAP_FORMAT_VERSION, &[user.as_bytes()]);
    encrypt(master.as_bytes(), WRAP_FORMAT_VERSION, &aad, key.as_bytes())
}

/// Unwraps a data key made by [`wrap_data_key`] for the same user and master key.
pub fn unwrap_data_key(master: &MasterKey, user: &str, wrapped: &[u8]) -> Result<DataKey> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return Err(Error::WrappedKeyLength {
            user: user.to_string(),
            len: wrapped.len(),
            expected: WRAPPED_KEY_LEN,
        });
    }
    let version = wrapped[0];
    if version != WRAP_FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "wrapped data key",
            version,
        });
    }
    let aad = associated_data(WRAP_DOMAIN, version, &[user.as_bytes()]);
    let plain = Zeroizing::new(decrypt(master.as_bytes(), &aad, wrapped).ok_or_else(|| {
        Error::UnwrapFailed {
            user: user.to_string(),
        }
    })?);
    let bytes: [u8; KEY_LEN] = plain
        .as_slice()
        .try_into()
        .map_err(|_| Error::UnwrapFailed {
            user: user.to_string(),
        })?;
    Ok(DataKey::from_bytes(bytes))
}

/// Seals an account's digest credentials (HA1 values: password equivalents) for storage,
/// under a key derived from the master key and bound to `user`. Like a wrapped data key, the
/// result is useless without the master key.
#[must_use]
pub fn seal_credentials(master: &MasterKey, user: &str, plaintext: &[u8]) -> Vec<u8> {
    let key = Zeroizing::new(master.derive_secret(CREDENTIALS_KEY_PURPOSE));
    let aad = associated_data(
        CREDENTIALS_DOMAIN,
        CREDENTIALS_FORMAT_VERSION,
        &[user.as_bytes()],
    );
    encrypt(&key, CREDENTIALS_FORMAT_VERSION, &aad, plaintext)
}

/// Opens credentials made by [`seal_credentials`] for the same user and master key. The
/// plaintext is zeroed when dropped.
pub fn open_credentials(
    master: &MasterKey,
    user: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(Error::SealedTooShort {
            len: sealed.len(),
            min: SEAL_OVERHEAD,
        });
    }
    let version = sealed[0];
    if version != CREDENTIALS_FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "sealed credentials",
            version,
        });
    }
    let key = Zeroizing::new(master.derive_secret(CREDENTIALS_KEY_PURPOSE));
    let aad = associated_data(CREDENTIALS_DOMAIN, version, &[user.as_bytes()]);
    decrypt(&key, &aad, sealed)
        .map(Zeroizing::new)
        .ok_or_else(|| Error::CredentialsOpenFailed {
            user: user.to_string(),
        })
}

/// Master-key rotation: unwraps with `old` and wraps again with `new`.
pub fn rewrap_data_key(
    old: &MasterKey,
    new: &MasterKey,
    user: &str,
    wrapped: &[u8],
) -> Result<Vec<u8>> {
    let key = unwrap_data_key(old, user, wrapped)?;
    Ok(wrap_data_key(new, user, &key))
}

/// SHA-256 over the 8-byte big-endian length-prefixed `parts`: a stable key for
/// recognising retransmissions (e.g. sender, Call-ID, `CSeq`).
#[must_use]
pub fn dedup_hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "alice";
    const MESSAGE: &str = "msg-0001";

    #[test]
    fn open_seal_round_trips_text_emoji_empty_and_binary() {
        let key = DataKey::generate();
        let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        for plaintext in [
            b"hello".as_slice(),
            "héllo 👋🏽 👨‍👩‍👧 ✓".as_bytes(),
            b"",
            &binary,
        ] {
            let sealed = seal(&key, USER, MESSAGE, plaintext);
            assert_eq!(sealed.len(), plaintext.len() + SEAL_OVERHEAD);
            assert_eq!(sealed[0], SEAL_FORMAT_VERSION);
            assert_eq!(open(&key, USER, MESSAGE, &sealed).unwrap(), plaintext);
        }
    }

    #[test]
    fn credentials_open_only_with_the_same_master_key_and_user() {
        let master = MasterKey::generate();
        let plaintext = b"ha1-sha256=0123456789abcdef";
        let sealed = seal_credentials(&master, USER, plaintext);
        assert_eq!(sealed[0], CREDENTIALS_FORMAT_VERSION);
        assert!(!sealed.windows(8).any(|window| window == &plaintext[..8]));
        assert_eq!(
            open_credentials(&master, USER, &sealed).unwrap().as_slice(),
            plaintext
        );
        assert!(open_credentials(&master, "mallory", &sealed).is_err());
        assert!(open_credentials(&MasterKey::generate(), USER, &sealed).is_err());
        // A sealed message record is not credentials, even under a key derived the same way.
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(open_credentials(&master, USER, &tampered).is_err());
    }

    #[test]
    fn fingerprints_tell_master_keys_apart_without_revealing_them() {
        let master = MasterKey::from_bytes([7; KEY_LEN]);
        let same = MasterKey::from_bytes([7; KEY_LEN]);
        assert_eq!(master.fingerprint(), same.fingerprint());
        assert_eq!(master.fingerprint().len(), 32);
        assert_ne!(master.fingerprint(), MasterKey::generate().fingerprint());
        assert!(!master.fingerprint().contains(&hex::encode([7u8; 4])));
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext() {
        let key = DataKey::generate();
        let plaintext = b"a secret that must never reach disk in clear";
        let sealed = seal(&key, USER, MESSAGE, plaintext);
        assert!(!sealed.windows(8).any(|window| window == &plaintext[..8]));
    }

    #[test]
    fn every_flipped_byte_fails_to_open() {
        let key = DataKey::generate();
        let sealed = seal(&key, USER, MESSAGE, "bonjour 🌍".as_bytes());
        for index in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut tampered = sealed.clone();
                tampered[index] ^= bit;
                let result = open(&key, USER, MESSAGE, &tampered);
                assert!(result.is_err(), "flip {bit:#x} at byte {index} opened");
            }
        }
        // The version byte fails with its own variant; others fail authentication.
        let mut bad_version = sealed.clone();
        bad_version[0] ^= 1;
        assert!(matches!(
            open(&key, USER, MESSAGE, &bad_version),
            Err(Error::UnsupportedVersion { version: 0, .. })
        ));
        let mut bad_tag = sealed.clone();
        *bad_tag.last_mut().unwrap() ^= 1;
        assert!(matches!(
            open(&key, USER, MESSAGE, &bad_tag),
            Err(Error::OpenFailed { ref user, ref message_id }) if user == USER && message_id == MESSAGE
        ));
    }

    #[test]
    fn truncated_or_extended_records_fail() {
        let key = DataKey::generate();
        let sealed = seal(&key, USER, MESSAGE, b"x");
        for len in 0..sealed.len() {
            assert!(
                open(&key, USER, MESSAGE, &sealed[..len]).is_err(),
                "len {len}"
            );
        }
        let mut extended = sealed.clone();
        extended.push(0);
        assert!(open(&key, USER, MESSAGE, &extended).is_err());
        assert!(matches!(
            open(&key, USER, MESSAGE, &[]),
            Err(Error::SealedTooShort { len: 0, .. })
        ));
    }

    #[test]
    fn wrong_user_message_id_or_key_fails() {
        let key = DataKey::generate();
        let sealed = seal(&key, USER, MESSAGE, b"payload");
        assert!(open(&key, "bob", MESSAGE, &sealed).is_err());
        assert!(open(&key, USER, "msg-0002", &sealed).is_err());
        assert!(open(&DataKey::generate(), USER, MESSAGE, &sealed).is_err());
        assert!(open(&key, USER, MESSAGE, &sealed).is_ok());
    }

    #[test]
    fn length_prefixing_separates_user_and_message_id() {
        let key = DataKey::generate();
        let sealed = seal(&key, "ab", "c", b"payload");
        assert!(open(&key, "a", "bc", &sealed).is_err());
        assert!(open(&key, "abc", "", &sealed).is_err());
        assert!(open(&key, "ab", "c", &sealed).is_ok());
        assert_ne!(dedup_hash(&[b"ab", b"c"]), dedup_hash(&[b"a", b"bc"]));
        assert_ne!(dedup_hash(&[b"abc"]), dedup_hash(&[b"abc", b""]));
    }

    #[test]
    fn two_seals_of_the_same_plaintext_differ() {
        let key = DataKey::generate();
        let first = seal(&key, USER, MESSAGE, b"same");
        let second = seal(&key, USER, MESSAGE, b"same");
        assert_ne!(first, second);
        assert_ne!(first[1..HEADER_LEN], second[1..HEADER_LEN], "nonces repeat");
    }

    #[test]
    fn wrapped_key_round_trips_and_still_opens_records() {
        let master = MasterKey::generate();
        let key = DataKey::generate();
        let sealed = seal(&key, USER, MESSAGE, b"kept across restarts");
        let wrapped = wrap_data_key(&master, USER, &key);
        assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
        assert_ne!(wrap_data_key(&master, USER, &key), wrapped);
        let unwrapped = unwrap_data_key(&master, USER, &wrapped).unwrap();
        assert_eq!(unwrapped.as_bytes(), key.as_bytes());
        assert_eq!(
            open(&unwrapped, USER, MESSAGE, &sealed).unwrap(),
            b"kept across restarts"
        );
    }

    #[test]
    fn wrapped_key_fails_with_wrong_master_user_or_tampering() {
        let master = MasterKey::generate();
        let wrapped = wrap_data_key(&master, USER, &DataKey::generate());
        assert!(matches!(
            unwrap_data_key(&MasterKey::generate(), USER, &wrapped),
            Err(Error::UnwrapFailed { .. })
        ));
        assert!(matches!(
            unwrap_data_key(&master, "bob", &wrapped),
            Err(Error::UnwrapFailed { ref user }) if user == "bob"
        ));
        for index in 0..wrapped.len() {
            let mut tampered = wrapped.clone();
            tampered[index] ^= 0x04;
            assert!(
                unwrap_data_key(&master, USER, &tampered).is_err(),
                "byte {index}"
            );
        }
        assert!(matches!(
            unwrap_data_key(&master, USER, &wrapped[..WRAPPED_KEY_LEN - 1]),
            Err(Error::WrappedKeyLength { .. })
        ));
    }

    #[test]
    fn sealed_record_cannot_be_unwrapped_as_key_and_vice_versa() {
        // Domain separation: the same 32-byte secret used as both master and data key
        // still cannot confuse a wrapped key with a sealed record.
        let bytes = [7u8; KEY_LEN];
        let master = MasterKey::from_bytes(bytes);
        let data = DataKey::from_bytes(bytes);
        let sealed = seal(&data, USER, "", &[9u8; KEY_LEN]);
        assert_eq!(sealed.len(), WRAPPED_KEY_LEN);
        assert!(unwrap_data_key(&master, USER, &sealed).is_err());
        let wrapped = wrap_data_key(&master, USER, &data);
        assert!(open(&data, USER, "", &wrapped).is_err());
    }

    #[test]
    fn rewrap_moves_a_key_to_a_new_master() {
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        let key = DataKey::generate();
        let rewrapped =
            rewrap_data_key(&old, &new, USER, &wrap_data_key(&old, USER, &key)).unwrap();
        assert_eq!(
            unwrap_data_key(&new, USER, &rewrapped).unwrap().as_bytes(),
            key.as_bytes()
        );
        assert!(unwrap_data_key(&old, USER, &rewrapped).is_err());
    }

    #[test]
    fn dedup_hash_is_sha256_of_length_prefixed_parts() {
        let mut expected_input = Vec::new();
        expected_input.extend_from_slice(&3u64.to_be_bytes());
        expected_input.extend_from_slice(b"abc");
        expected_input.extend_from_slice(&0u64.to_be_bytes());
        let expected: [u8; 32] = Sha256::digest(&expected_input).into();
        assert_eq!(dedup_hash(&[b"abc", b""]), expected);
        assert_eq!(dedup_hash(&[b"abc", b""]), dedup_hash(&[b"abc", b""]));
        assert_ne!(dedup_hash(&[]), dedup_hash(&[b""]));
    }

    proptest::proptest! {
        #[test]
        fn open_inverts_seal_for_any_input(
            user in ".{0,40}",
            message_id in ".{0,40}",
            plaintext in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
        ) {
            let key = DataKey::generate();
            let sealed = seal(&key, &user, &message_id, &plaintext);
            proptest::prop_assert_eq!(open(&key, &user, &message_id, &sealed).unwrap(), plaintext);
            let other_user = format!("{user}x");
            proptest::prop_assert!(open(&key, &other_user, &message_id, &sealed).is_err());
        }

        #[test]
        fn open_never_panics_on_arbitrary_bytes(
            sealed in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let key = DataKey::generate();
            proptest::prop_assert!(open(&key, "u", "m", &sealed).is_err());
            proptest::prop_assert!(unwrap_data_key(&MasterKey::generate(), "u", &sealed).is_err());
        }
    }

    #[test]
    fn error_is_send_sync_static() {
        fn assert_bounds<T: Send + Sync + 'static + std::error::Error>() {}
        assert_bounds::<Error>();
    }
}
