//! Unwrapped data keys of recent users, so that sealing and opening does not unwrap the key on
//! every message. Keys live only in memory; the cache is bounded and forgets a user on removal.
//!
//! Invariant: a key is cached only after it was unwrapped from the user's current record; a
//! removed user's key is evicted before the removal is acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pms_crypto::{DataKey, MasterKey};
use pms_types::UserId;

/// Most cached keys; the cache is cleared when full (simple and bounded).
pub const KEYRING_KEYS_MAX: usize = 65_536;

pub struct Keyring {
    master: MasterKey,
    keys: Mutex<HashMap<UserId, Arc<DataKey>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").finish_non_exhaustive()
    }
}

impl Keyring {
    pub fn new(master: MasterKey) -> Self {
        Keyring {
            master,
            keys: Mutex::new(HashMap::new()),
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
        if let Some(key) = self.lock().get(user) {
            return Ok(key.clone());
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
        keys.insert(user.clone(), key.clone());
        Ok(key)
    }

    pub fn forget(&self, user: &UserId) {
        self.lock().remove(user);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Arc<DataKey>>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
