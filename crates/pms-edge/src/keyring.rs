//! Unwrapped data keys of recent users, so that sealing and opening does not unwrap the key on
//! every message. Keys live only in memory; the cache is bounded and forgets a user on removal.
//!
//! Invariant: a key is cached only after it was unwrapped from the user's current record, and
//! used only while that record's wrapped key is the one it came from (a user removed and added
//! again never gets the old key); every node evicts a removed user's key when its replica of
//! the directory applies the removal (`pmsd` watches the applied entries), and the node that
//! served the removal before acknowledging it. `DataKey` zeroes its bytes when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pms_crypto::{DataKey, MasterKey};
use pms_mailbox::{ApplyError, Credentials, UserRecord};
use pms_types::UserId;
use pms_types::metrics::Metrics;

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Why an account's credentials could not be opened: the master key does not match the one
/// that sealed them, or the record is damaged.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Open(#[from] pms_crypto::Error),
    #[error(transparent)]
    Decode(#[from] ApplyError),
}

/// Most cached keys; the cache is cleared when full (simple and bounded).
pub const KEYRING_KEYS_MAX: usize = 65_536;

pub struct Keyring {
    master: MasterKey,
    keys: Mutex<HashMap<UserId, CachedKey>>,
    metrics: Arc<Metrics>,
}

/// An unwrapped key with the wrapped bytes it came from.
struct CachedKey {
    wrapped: Vec<u8>,
    key: Arc<DataKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").finish_non_exhaustive()
    }
}

impl Keyring {
    pub fn new(master: MasterKey, metrics: Arc<Metrics>) -> Self {
        Keyring {
            master,
            keys: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// The data key of `user`, unwrapping `wrapped` (from the user's record) on a miss.
    pub fn data_key(
        &self,
        user: &UserId,
        wrapped: &[u8],
    ) -> Result<Arc<DataKey>, pms_crypto::Error> {
        if let Some(cached) = self.lock().get(user)
            && cached.wrapped == wrapped
        {
            return Ok(cached.key.clone());
        }
        let key = Arc::new(pms_crypto::unwrap_data_key(
            &self.master,
            user.as_str(),
            wrapped,
        )?);
        let mut keys = self.lock();
        if keys.len() >= KEYRING_KEYS_MAX {
            keys.clear();
        }
        keys.insert(
            user.clone(),
            CachedKey {
                wrapped: wrapped.to_vec(),
                key: key.clone(),
            },
        );
        self.metrics.keyring_keys.set(gauge_value(keys.len()));
        Ok(key)
    }

    /// Opens the sealed digest credentials of a directory record. Not cached: opening is a
    /// few microseconds, and HA1 values (password equivalents) then live only as long as one
    /// authentication.
    pub fn credentials(&self, record: &UserRecord) -> Result<Credentials, CredentialsError> {
        let plain = pms_crypto::open_credentials(
            &self.master,
            record.user.as_str(),
            &record.sealed_credentials,
        )?;
        Ok(pms_mailbox::decode(pms_types::Keyspace::Users, &plain)?)
    }

    pub fn forget(&self, user: &UserId) {
        let mut keys = self.lock();
        keys.remove(user);
        self.metrics.keyring_keys.set(gauge_value(keys.len()));
    }

    /// Forgets every key (they are unwrapped again on use).
    pub fn clear(&self) {
        self.lock().clear();
        self.metrics.keyring_keys.set(0);
    }

    /// How many unwrapped keys are in memory (the `pms_keyring_keys` gauge).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, CachedKey>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
