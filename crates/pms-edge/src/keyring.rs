//! Unwrapped data keys of recent users, so that sealing and opening does not unwrap the key on
//! every message. Keys live only in memory; the cache is bounded and forgets a user on removal.
//!
//! Invariant: a key is cached only after it was unwrapped from the user's current record, and
//! used only while that record's wrapped key is the one it came from (a user removed and added
//! again never gets the old key); every node evicts a removed user's key when its replica of
//! the directory applies the removal (`pmsd` watches the applied entries), and the node that
//! served the removal before acknowledging it. `DataKey` zeroes its bytes when dropped.
//!
//! Master keys (issue 9 item 8, rotation): the keyring holds the node's current key
//! (`--master-key-file`) and, during a rotation, the previous one
//! (`--previous-master-key-file`). The *active* key — the one the cluster records — wraps and
//! seals; opening tries the active key first, then the other. The active key changes when the
//! directory applies `ChangeMasterKey` ([`Keyring::activate`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

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
    /// `--master-key-file`: what a rotation moves the cluster to.
    current: Arc<MasterKey>,
    /// `--previous-master-key-file`, during a rotation.
    previous: Option<Arc<MasterKey>>,
    /// The cluster's key: `current` or `previous`.
    active: RwLock<Arc<MasterKey>>,
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
        let current = Arc::new(master);
        Keyring {
            active: RwLock::new(current.clone()),
            current,
            previous: None,
            keys: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Also holds `previous` (a rotation's old key), to open what it wrapped or sealed.
    #[must_use]
    pub fn with_previous(mut self, previous: MasterKey) -> Self {
        self.previous = Some(Arc::new(previous));
        self
    }

    /// The active master key: the cluster's, which wraps new data keys and seals credentials.
    pub fn master(&self) -> Arc<MasterKey> {
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key of `--master-key-file` (the one a rotation moves the cluster to).
    pub fn current(&self) -> &Arc<MasterKey> {
        &self.current
    }

    /// The key of `--previous-master-key-file`, if one was given.
    pub fn previous(&self) -> Option<&Arc<MasterKey>> {
        self.previous.as_ref()
    }

    /// Makes the loaded key with `fingerprint` the active one; `false` when no loaded key has
    /// it (the node then keeps its active key, and cannot open what the other one wraps).
    pub fn activate(&self, fingerprint: &str) -> bool {
        let Some(key) = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|key| key.fingerprint() == fingerprint)
        else {
            return false;
        };
        *self.active.write().unwrap_or_else(PoisonError::into_inner) = key.clone();
        true
    }

    /// The loaded keys, the active one first.
    fn candidates(&self) -> Vec<Arc<MasterKey>> {
        let active = self.master();
        let mut keys = vec![active.clone()];
        keys.extend(
            std::iter::once(&self.current)
                .chain(self.previous.as_ref())
                .filter(|key| !Arc::ptr_eq(key, &active))
                .cloned(),
        );
        keys
    }

    /// Unwraps `user`'s data key with whichever loaded key wrapped it (not cached).
    pub fn unwrap_any(&self, user: &UserId, wrapped: &[u8]) -> Result<DataKey, pms_crypto::Error> {
        let mut last_error = None;
        for master in self.candidates() {
            match pms_crypto::unwrap_data_key(&master, user.as_str(), wrapped) {
                Ok(key) => return Ok(key),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(pms_crypto::Error::UnwrapFailed {
            user: user.to_string(),
        }))
    }

    /// Opens `user`'s sealed credentials with whichever loaded key sealed them: the plaintext.
    pub fn open_credentials_any(
        &self,
        user: &UserId,
        sealed: &[u8],
    ) -> Result<pms_crypto::Zeroizing<Vec<u8>>, pms_crypto::Error> {
        let mut last_error = None;
        for master in self.candidates() {
            match pms_crypto::open_credentials(&master, user.as_str(), sealed) {
                Ok(plain) => return Ok(plain),
                Err(error) => last_error = Some(error),
            }
        }
        Err(
            last_error.unwrap_or(pms_crypto::Error::CredentialsOpenFailed {
                user: user.to_string(),
            }),
        )
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
        let key = Arc::new(self.unwrap_any(user, wrapped)?);
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
        let plain = self.open_credentials_any(&record.user, &record.sealed_credentials)?;
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
