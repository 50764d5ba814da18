//! pms-crypto: the only PMS crate that touches a cipher or a private key.
//!
//! It does three jobs:
//! - [`keys`]: the cluster [`MasterKey`] (and its key file) and per-user [`DataKey`]s;
//! - [`seal`]: sealing/opening message records and wrapping/unwrapping data keys with
//!   XChaCha20-Poly1305 (guarantee 6: plaintext never touches disk), plus [`dedup_hash`];
//! - [`certs`] and [`tls`]: a CockroachDB-style certs dir (CA, node, SIP and client
//!   certificates) and the rustls configurations built from it (guarantee 7: nodes talk
//!   over mutually authenticated TLS); [`reloadable`]: the node and SIP certificates a
//!   running node replaces on SIGHUP; [`certificate_info`]: subject, SANs and expiry of a
//!   certificate file.
//!
//! ```
//! use pms_crypto::{DataKey, MasterKey, open, seal, unwrap_data_key, wrap_data_key};
//! let master = MasterKey::generate();
//! let key = DataKey::generate();
//! let wrapped = wrap_data_key(&master, "alice", &key); // stored in the directory group
//! let sealed = seal(&key, "alice", "msg-1", "hi 👋".as_bytes()); // stored in the mailbox
//! let key = unwrap_data_key(&master, "alice", &wrapped).unwrap();
//! assert_eq!(open(&key, "alice", "msg-1", &sealed).unwrap(), "hi 👋".as_bytes());
//! assert!(open(&key, "bob", "msg-1", &sealed).is_err());
//! ```
//!
//! Invariants kept by this crate:
//! - Invariant: key material (master keys, data keys, private-key PEM) is zeroized on drop
//!   and never printed by `Debug`.
//! - Invariant: every ciphertext is bound by its associated data to the format version,
//!   the owning user and (for records) the message id, so a record cannot be moved to
//!   another user or message without failing to open.
//! - Invariant: nothing here panics on input read from disk or the network; failures are
//!   [`Error`] values.
//! - Invariant: rustls is always used with the ring provider passed explicitly, so no
//!   process-wide provider has to be installed.

pub mod certificate_info;
pub mod certs;
mod error;
pub mod keys;
pub mod reloadable;
pub mod seal;
pub mod tls;

pub use certificate_info::{
    CertificateInfo, EXPIRY_WARNING_DAYS, now_unix, read_certificate_info, rfc3339,
};
pub use certs::{
    ADMIN_CLIENT_NAME, CA_CERT_FILE, CA_KEY_FILE, CA_LIFETIME_DAYS_DEFAULT,
    LEAF_LIFETIME_DAYS_DEFAULT, LIFETIME_DAYS_MAX, Lifetime, NODE_CERT_FILE, NODE_COMMON_NAME,
    NODE_KEY_FILE, SIP_CERT_FILE, SIP_KEY_FILE, client_cert_file, client_key_file, create_ca,
    create_ca_with, create_client, create_client_with, create_node, create_node_with, create_sip,
    create_sip_with, default_dev_hosts, ensure_dev_certs, ensure_dev_sip_cert,
};
pub use error::{Error, Result};
pub use keys::{DataKey, KEY_LEN, MASTER_KEY_FILE_LENGTH_MAX, MasterKey, permissions_too_open};
pub use reloadable::{CertificateRole, ReloadableCertificate, Reloaded};
pub use seal::{
    CREDENTIALS_FORMAT_VERSION, SEAL_FORMAT_VERSION, SEAL_OVERHEAD, WRAP_FORMAT_VERSION,
    WRAPPED_KEY_LEN, dedup_hash, open, open_credentials, rewrap_data_key, seal, seal_credentials,
    unwrap_data_key, wrap_data_key,
};
pub use tls::{
    PemIdentity, client_config, grpc_client_config, insecure_client_config, load_ca_pem,
    load_client_identity, load_node_identity, mtls_client_config, mtls_server_config,
    mtls_server_config_with, node_mtls_client_config, peer_common_name, sip_server_config,
    sip_server_config_with,
};
/// Plaintext that zeroes itself when dropped (opened credentials).
pub use zeroize::Zeroizing;
