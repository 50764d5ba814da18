//! Key material: the cluster [`MasterKey`] with its key file, and per-user [`DataKey`]s.
//!
//! The master key wraps data keys (see [`crate::seal`]); it must never be stored beside
//! the data (guarantee 6), so it lives in its own file, by default outside the `RocksDB`
//! directory. The file holds 64 hex characters and an optional trailing newline.
//!
//! Invariants:
//! - Invariant: key bytes are zeroized on drop, and so is every transient copy
//!   (hex text read from or written to the key file).
//! - Invariant: `Debug` never prints key bytes.
//! - Invariant: a key file is created with mode 0600 and never overwritten
//!   (`create_new`), so a second `write_new` cannot destroy the key that wraps every
//!   stored data key.

use crate::error::{Error, Result};
use rand::RngCore;
use rand::rngs::OsRng;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

/// Length in bytes of master and data keys.
pub const KEY_LEN: usize = 32;
/// Largest master key file accepted: hex, newline and some whitespace slack.
pub const MASTER_KEY_FILE_LENGTH_MAX: usize = 256;

/// Mode of files holding secrets (key files, private keys).
pub(crate) const SECRET_FILE_MODE: u32 = 0o600;
/// Mode of public files (certificates).
pub(crate) const PUBLIC_FILE_MODE: u32 = 0o644;

/// The cluster master key: wraps every user's [`DataKey`].
pub struct MasterKey([u8; KEY_LEN]);

/// A per-user data key: seals that user's records. Stored only wrapped by the
/// [`MasterKey`]; deleting the wrapped key crypto-shreds the user's messages.
pub struct DataKey([u8; KEY_LEN]);

fn random_key() -> [u8; KEY_LEN] {
    let mut bytes = [0u8; KEY_LEN];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

impl MasterKey {
    /// A fresh random master key from the operating system's CSPRNG.
    #[must_use]
    pub fn generate() -> Self {
        MasterKey(random_key())
    }

    /// A 32-byte secret for `purpose`, derived from the master key (SHA-256 over a
    /// domain-separated input), so that every node of a cluster derives the same one and none
    /// has to be stored. Different purposes give unrelated secrets.
    #[must_use]
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"pms-derive-v1\0");
        hasher.update(purpose.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.0);
        hasher.finalize().into()
    }

    /// A short public name of this key (32 hex digits of a derived hash): nodes compare it to
    /// find out whether they hold the same master key, without revealing the key.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.derive_secret("fingerprint")[..16])
    }

    /// A master key from raw bytes (tests, external key-management backends).
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MasterKey(bytes)
    }

    /// Parses 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if text.len() != KEY_LEN * 2 {
            return Err(format!(
                "expected {} hex characters, found {}",
                KEY_LEN * 2,
                text.len()
            ));
        }
        let mut bytes = [0u8; KEY_LEN];
        match hex::decode_to_slice(text, &mut bytes) {
            Ok(()) => Ok(MasterKey(bytes)),
            Err(error) => {
                bytes.zeroize();
                Err(format!("not hex: {error}"))
            }
        }
    }

    /// Reads a master key file: 64 hex characters and an optional newline.
    ///
    /// This does not refuse a file readable by group or others (secret mounts are often
    /// 0644); callers should check [`permissions_too_open`] and warn loudly.
    pub fn from_file(path: &Path) -> Result<Self> {
        use std::io::Read;
        let file = fs::File::open(path).map_err(|source| Error::io("opening", path, source))?;
        let mut raw = Zeroizing::new(Vec::with_capacity(MASTER_KEY_FILE_LENGTH_MAX));
        // Bounded read: one byte over the limit is enough to reject the file.
        file.take(MASTER_KEY_FILE_LENGTH_MAX as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(|source| Error::io("reading", path, source))?;
        let invalid = |reason: String| Error::MasterKeyFormat {
            path: path.to_path_buf(),
            reason,
        };
        if raw.len() > MASTER_KEY_FILE_LENGTH_MAX {
            return Err(invalid(format!(
                "file larger than {MASTER_KEY_FILE_LENGTH_MAX} bytes"
            )));
        }
        let text = std::str::from_utf8(&raw).map_err(|_| invalid("not UTF-8 text".into()))?;
        MasterKey::from_hex(text).map_err(|reason| Error::MasterKeyFormat {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Generates a key and writes it to a new file with mode 0600 (creating missing
    /// parent directories). Refuses to overwrite an existing file.
    pub fn write_new(path: &Path) -> Result<Self> {
        let key = MasterKey::generate();
        let mut text = Zeroizing::new(hex::encode(key.0));
        text.push('\n');
        write_new_file(path, text.as_bytes(), SECRET_FILE_MODE)?;
        Ok(key)
    }

    /// Reads the key file if it exists, otherwise creates it. The flag is `true` when
    /// the key was created (callers should warn that a new key was generated).
    pub fn load_or_create(path: &Path) -> Result<(Self, bool)> {
        if path.exists() {
            return Ok((MasterKey::from_file(path)?, false));
        }
        match MasterKey::write_new(path) {
            Ok(key) => Ok((key, true)),
            // Lost a race with another creator: use the key it wrote.
            Err(Error::AlreadyExists { .. }) => Ok((MasterKey::from_file(path)?, false)),
            Err(error) => Err(error),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl DataKey {
    /// A fresh random data key from the operating system's CSPRNG.
    #[must_use]
    pub fn generate() -> Self {
        DataKey(random_key())
    }

    /// A data key from raw bytes (tests, after unwrapping).
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        DataKey(bytes)
    }

    /// The raw key, for audits that look for it where it must not be (a process's memory
    /// after the account was removed). Never store or log it.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// True when the file at `path` is readable or writable by group or others
/// (any of mode bits 0o077). False when it is private or cannot be inspected.
#[must_use]
pub fn permissions_too_open(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match fs::metadata(path) {
            Ok(metadata) => metadata.permissions().mode() & 0o077 != 0,
            Err(_) => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Creates `path` (and missing parents) with `mode`, writes `contents` and syncs it.
/// Fails with [`Error::AlreadyExists`] rather than overwrite.
pub(crate) fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        fs::create_dir_all(parent)
            .map_err(|source| Error::io("creating directory", parent, source))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            Error::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            Error::io("creating", path, source)
        }
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| Error::io("writing", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_new_then_from_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let written = MasterKey::write_new(&path).unwrap();
        let read = MasterKey::from_file(&path).unwrap();
        assert_eq!(written.as_bytes(), read.as_bytes());
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(!permissions_too_open(&path));
    }

    #[test]
    fn write_new_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let first = MasterKey::write_new(&path).unwrap();
        let error = MasterKey::write_new(&path).unwrap_err();
        assert!(matches!(error, Error::AlreadyExists { .. }), "{error}");
        assert_eq!(
            MasterKey::from_file(&path).unwrap().as_bytes(),
            first.as_bytes()
        );
    }

    #[test]
    fn load_or_create_creates_once_then_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (created_key, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let (loaded_key, created_again) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created_again);
        assert_eq!(created_key.as_bytes(), loaded_key.as_bytes());
    }

    #[test]
    fn from_file_accepts_hex_with_or_without_newline() {
        let dir = tempfile::tempdir().unwrap();
        let hex_text = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        for (name, contents) in [
            ("plain", hex_text.to_string()),
            ("lf", format!("{hex_text}\n")),
            ("crlf", format!("{hex_text}\r\n")),
        ] {
            let path = dir.path().join(name);
            fs::write(&path, contents).unwrap();
            let key = MasterKey::from_file(&path).unwrap();
            assert_eq!(key.as_bytes()[0], 0x00);
            assert_eq!(key.as_bytes()[31], 0xff);
        }
    }

    #[test]
    fn from_file_rejects_bad_contents() {
        let dir = tempfile::tempdir().unwrap();
        for (name, contents) in [
            ("short", "0011".to_string()),
            ("long", "0".repeat(66)),
            ("nothex", "zz".repeat(32)),
            ("empty", String::new()),
            (
                "two-lines",
                format!("{}\n{}\n", "ab".repeat(16), "cd".repeat(16)),
            ),
            ("huge", format!("{}{}", "ab".repeat(32), " ".repeat(300))),
        ] {
            let path = dir.path().join(name);
            fs::write(&path, contents).unwrap();
            let error = MasterKey::from_file(&path).unwrap_err();
            assert!(
                matches!(error, Error::MasterKeyFormat { .. }),
                "{name}: {error}"
            );
        }
        let path = dir.path().join("binary");
        fs::write(&path, [0xffu8; 64]).unwrap();
        let error = MasterKey::from_file(&path).unwrap_err();
        assert!(matches!(error, Error::MasterKeyFormat { .. }), "{error}");
        let missing = MasterKey::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(missing, Error::Io { .. }), "{missing}");
    }

    #[cfg(unix)]
    #[test]
    fn permissions_too_open_detects_group_and_other_bits() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::write_new(&path).unwrap();
        for (mode, too_open) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(permissions_too_open(&path), too_open, "mode {mode:o}");
        }
        assert!(!permissions_too_open(&dir.path().join("missing")));
    }

    #[test]
    fn generated_keys_differ_and_debug_is_redacted() {
        let first = DataKey::generate();
        let second = DataKey::generate();
        assert_ne!(first.as_bytes(), second.as_bytes());
        assert_eq!(format!("{first:?}"), "DataKey(<redacted>)");
        assert_eq!(
            format!("{:?}", MasterKey::generate()),
            "MasterKey(<redacted>)"
        );
    }
}
