//! The one error type of pms-crypto.
//!
//! Invariant: variants carry the path, user or message id needed to debug a failure, and
//! never key material or plaintext.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in pms-crypto.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a key or certificate file failed.
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file we would create already exists; we never overwrite keys or certificates.
    #[error("refusing to overwrite existing {path}")]
    AlreadyExists { path: PathBuf },
    /// The master key file does not hold exactly 64 hex characters.
    #[error("master key file {path}: {reason}")]
    MasterKeyFormat { path: PathBuf, reason: String },
    /// A sealed record is shorter than version + nonce + tag.
    #[error("sealed record too short: {len} bytes, need at least {min}")]
    SealedTooShort { len: usize, min: usize },
    /// The record or wrapped key starts with a version byte this build does not know.
    #[error("unsupported {what} format version {version}")]
    UnsupportedVersion { what: &'static str, version: u8 },
    /// Authentication failed opening a record: wrong key, user, message id, or tampering.
    #[error("cannot open record of user {user:?} message {message_id:?}: authentication failed")]
    OpenFailed { user: String, message_id: String },
    /// A wrapped data key has the wrong length.
    #[error("wrapped data key of user {user:?} has {len} bytes, expected {expected}")]
    WrappedKeyLength {
        user: String,
        len: usize,
        expected: usize,
    },
    /// Authentication failed unwrapping a data key: wrong master key, user, or tampering.
    #[error("cannot unwrap data key of user {user:?}: authentication failed")]
    UnwrapFailed { user: String },
    /// Authentication failed opening an account's sealed credentials: wrong master key, user,
    /// or tampering.
    #[error("cannot open the credentials of user {user:?}: authentication failed")]
    CredentialsOpenFailed { user: String },
    /// A PEM file held no usable item of the expected kind, or was malformed.
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    /// Certificate generation (rcgen) failed.
    #[error("generating {what}")]
    CertGeneration {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// A host given for a node certificate is neither an IP address nor a DNS name.
    #[error("invalid host {host:?} for node certificate: {reason}")]
    InvalidHost { host: String, reason: String },
    /// A client name is not usable as a CN and file name component.
    #[error("invalid client name {name:?}: {reason}")]
    InvalidClientName { name: String, reason: String },
    /// Building a rustls configuration failed.
    #[error("building {what} TLS config")]
    Tls {
        what: &'static str,
        #[source]
        source: tokio_rustls::rustls::Error,
    },
    /// A certificate lifetime that is 0, beyond the maximum, or beyond the signing CA's expiry.
    #[error("invalid certificate lifetime of {days} days: {reason}")]
    InvalidLifetime { days: u32, reason: String },
    /// A certificate or key that must not replace the one in use: expired, not for this key,
    /// not signed by the cluster CA, or not a node certificate.
    #[error("{path}: {reason}")]
    CertificateRejected { path: PathBuf, reason: String },
    /// Building a client-certificate verifier failed (e.g. no usable CA certificate).
    #[error("building client certificate verifier from {path}: {reason}")]
    ClientVerifier { path: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
