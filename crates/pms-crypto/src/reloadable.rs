//! The certificates a running node replaces without a restart (on SIGHUP): `node.crt`/`node.key`
//! (the gRPC port and node-to-node calls) and `sip.crt`/`sip.key` (the SIP TLS listener).
//! Servers ask a [`ReloadableCertificate`] for the certificate at each handshake (it is their
//! rustls [`ResolvesServerCert`]); clients build new connections from
//! [`ReloadableCertificate::pem_identity`] and rebuild cached ones when
//! [`ReloadableCertificate::generation`] moves.
//!
//! Invariants:
//! - Invariant: a certificate and its key are swapped together (one `Arc<CertifiedKey>`), so no
//!   handshake pairs a new certificate with an old key; a handshake in progress keeps what it
//!   started with.
//! - Invariant: [`ReloadableCertificate::reload`] swaps in only a certificate that passes every
//!   check: both files read and parse, the key is the certificate's, it is valid now, and a
//!   node certificate has the common name `node` and chains to `ca.crt` with the client-auth
//!   usage (the other nodes refuse it otherwise). Anything else leaves the certificate in use
//!   untouched and names the file and the reason.
//! - Invariant: loading at start-up checks only that the files parse and belong together: an
//!   expiring certificate is for the operator to see (log, metric, `pmsctl cert list`), not a
//!   reason to refuse to start.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tokio_rustls::rustls::pki_types::UnixTime;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::certificate_info::{CertificateInfo, now_unix, rfc3339};
use crate::certs::{
    CA_CERT_FILE, NODE_CERT_FILE, NODE_COMMON_NAME, NODE_KEY_FILE, SIP_CERT_FILE, SIP_KEY_FILE,
};
use crate::error::{Error, Result};
use crate::tls::{
    PemIdentity, certs_from_pem, client_verifier, key_from_pem, load_identity, provider,
};

/// Which of the node's certificates a [`ReloadableCertificate`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateRole {
    /// `node.crt`/`node.key`: the cluster identity (gRPC server and client).
    Node,
    /// `sip.crt`/`sip.key`: the public SIP TLS listener's certificate.
    Sip,
}

impl CertificateRole {
    /// The certificate's file name in the certs dir.
    #[must_use]
    pub fn cert_file(self) -> &'static str {
        match self {
            CertificateRole::Node => NODE_CERT_FILE,
            CertificateRole::Sip => SIP_CERT_FILE,
        }
    }

    /// The key's file name in the certs dir.
    #[must_use]
    pub fn key_file(self) -> &'static str {
        match self {
            CertificateRole::Node => NODE_KEY_FILE,
            CertificateRole::Sip => SIP_KEY_FILE,
        }
    }
}

/// A certificate with its key, read from the certs dir.
struct InUse {
    certified: Arc<CertifiedKey>,
    pem: PemIdentity,
    info: CertificateInfo,
}

/// The outcome of a successful [`ReloadableCertificate::reload`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// The certificate now in use.
    pub info: CertificateInfo,
    /// Whether it differs from the one in use before (false: the files were unchanged).
    pub changed: bool,
}

/// One of the node's certificates, replaceable while servers and clients use it.
pub struct ReloadableCertificate {
    role: CertificateRole,
    certs_dir: PathBuf,
    in_use: RwLock<Arc<InUse>>,
    /// Moves on every swap, so clients know their cached connections show the old one.
    generation: AtomicU64,
}

impl ReloadableCertificate {
    /// Reads the certificate of `role` and its key from `certs_dir`.
    ///
    /// # Errors
    /// When either file cannot be read or parsed, or the key is not the certificate's.
    pub fn load(role: CertificateRole, certs_dir: &Path) -> Result<Self> {
        Ok(ReloadableCertificate {
            role,
            certs_dir: certs_dir.to_path_buf(),
            in_use: RwLock::new(Arc::new(read(role, certs_dir)?)),
            generation: AtomicU64::new(0),
        })
    }

    /// Reads the files again and, if they pass every check (see the module invariants), uses
    /// them from the next handshake on.
    ///
    /// # Errors
    /// Why the files cannot replace the certificate in use, naming the file; the certificate
    /// in use is then unchanged.
    pub fn reload(&self) -> Result<Reloaded> {
        let candidate = read(self.role, &self.certs_dir)?;
        self.check(&candidate)?;
        let info = candidate.info.clone();
        let mut in_use = self.in_use.write().unwrap_or_else(PoisonError::into_inner);
        let changed = in_use.certified.cert != candidate.certified.cert;
        if changed {
            *in_use = Arc::new(candidate);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(Reloaded { info, changed })
    }

    /// Which certificate this is.
    #[must_use]
    pub fn role(&self) -> CertificateRole {
        self.role
    }

    /// The certificate file's path.
    #[must_use]
    pub fn cert_path(&self) -> PathBuf {
        self.certs_dir.join(self.role.cert_file())
    }

    /// Subject, SANs and validity of the certificate in use.
    #[must_use]
    pub fn info(&self) -> CertificateInfo {
        self.current().info.clone()
    }

    /// The certificate in use and its key as PEM, for clients (tonic) that take an identity.
    #[must_use]
    pub fn pem_identity(&self) -> PemIdentity {
        self.current().pem.clone()
    }

    /// How many times the certificate in use was replaced.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> Arc<InUse> {
        Arc::clone(&self.in_use.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// What a replacement must pass beyond parsing (see the module invariants).
    fn check(&self, candidate: &InUse) -> Result<()> {
        let cert_path = self.cert_path();
        let rejected = |reason: String| Error::CertificateRejected {
            path: cert_path.clone(),
            reason,
        };
        let now = now_unix();
        let info = &candidate.info;
        if now > info.not_after_unix {
            return Err(rejected(format!(
                "expired on {}: put a current certificate there",
                rfc3339(info.not_after_unix)
            )));
        }
        if now < info.not_before_unix {
            return Err(rejected(format!(
                "not valid before {}: is this host's clock right?",
                rfc3339(info.not_before_unix)
            )));
        }
        if self.role != CertificateRole::Node {
            return Ok(());
        }
        let leaf = candidate
            .certified
            .cert
            .first()
            .ok_or_else(|| rejected("holds no certificate".into()))?;
        let common_name = crate::tls::peer_common_name(leaf.as_ref());
        if common_name.as_deref() != Some(NODE_COMMON_NAME) {
            return Err(rejected(format!(
                "has common name {common_name:?}, not {NODE_COMMON_NAME:?}: the other nodes accept only node certificates (make one with `pmsctl cert create-node`)"
            )));
        }
        let ca_path = self.certs_dir.join(CA_CERT_FILE);
        let verifier = client_verifier(&self.certs_dir)?;
        verifier
            .verify_client_cert(leaf, &candidate.certified.cert[1..], UnixTime::now())
            .map_err(|error| {
                rejected(format!(
                    "not accepted by the cluster CA {}: {error}; the other nodes would refuse it (sign it with the cluster's ca.key: `pmsctl cert create-node`)",
                    ca_path.display()
                ))
            })?;
        Ok(())
    }
}

impl fmt::Debug for ReloadableCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCertificate")
            .field("role", &self.role)
            .field("certs_dir", &self.certs_dir)
            .field("info", &self.current().info)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadableCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current().certified))
    }
}

/// Reads, parses and pairs the certificate of `role` and its key.
fn read(role: CertificateRole, certs_dir: &Path) -> Result<InUse> {
    let cert_path = certs_dir.join(role.cert_file());
    let key_path = certs_dir.join(role.key_file());
    let pem = load_identity(&cert_path, &key_path)?;
    let certs = certs_from_pem(&cert_path, pem.cert.as_bytes())?;
    let key = key_from_pem(&key_path, pem.key.as_bytes())?;
    let leaf = certs.first().ok_or_else(|| Error::Pem {
        path: cert_path.clone(),
        reason: "no CERTIFICATE block found".into(),
    })?;
    let mut info = CertificateInfo::from_der(leaf.as_ref()).map_err(|reason| Error::Pem {
        path: cert_path.clone(),
        reason,
    })?;
    info.chain_length = certs.len();
    let certified = CertifiedKey::from_der(certs, key, &provider()).map_err(|error| {
        Error::CertificateRejected {
            path: key_path.clone(),
            reason: format!("cannot be used with {}: {error}", cert_path.display()),
        }
    })?;
    Ok(InUse {
        certified: Arc::new(certified),
        pem,
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replace(dir: &Path, from: &Path, cert: &str, key: &str) {
        std::fs::copy(from.join(cert), dir.join(cert)).unwrap();
        std::fs::copy(from.join(key), dir.join(key)).unwrap();
    }

    /// A second certs dir with the same CA (`ca.crt`, `ca.key` copied) and no leaves yet.
    fn same_ca(dir: &Path) -> tempfile::TempDir {
        let other = tempfile::tempdir().unwrap();
        for file in [CA_CERT_FILE, crate::CA_KEY_FILE] {
            std::fs::copy(dir.join(file), other.path().join(file)).unwrap();
        }
        other
    }

    #[test]
    fn reload_swaps_a_good_certificate_and_keeps_the_old_one_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        crate::ensure_dev_certs(dir.path(), &[]).unwrap();
        let node = ReloadableCertificate::load(CertificateRole::Node, dir.path()).unwrap();
        let first = node.info();

        // Unchanged files: nothing moves.
        let same = node.reload().unwrap();
        assert!(!same.changed);
        assert_eq!(node.generation(), 0);

        // A new node certificate from the same CA, two days long.
        let fresh = same_ca(dir.path());
        crate::create_node_with(
            fresh.path(),
            &["localhost".into()],
            crate::Lifetime::Days(2),
        )
        .unwrap();
        replace(dir.path(), fresh.path(), NODE_CERT_FILE, NODE_KEY_FILE);
        let reloaded = node.reload().unwrap();
        assert!(reloaded.changed);
        assert_ne!(reloaded.info.serial, first.serial);
        assert_eq!(node.info(), reloaded.info);
        assert_eq!(node.generation(), 1);
        assert!(node.pem_identity().cert.contains("BEGIN CERTIFICATE"));

        // A broken file: refused, naming it; the certificate in use stays.
        std::fs::write(dir.path().join(NODE_CERT_FILE), "garbage").unwrap();
        let error = node.reload().unwrap_err().to_string();
        assert!(error.contains(NODE_CERT_FILE), "{error}");
        assert_eq!(node.info(), reloaded.info);
        assert_eq!(node.generation(), 1);
    }

    #[test]
    fn reload_refuses_a_key_of_another_certificate() {
        let dir = tempfile::tempdir().unwrap();
        crate::ensure_dev_certs(dir.path(), &[]).unwrap();
        let sip = ReloadableCertificate::load(CertificateRole::Sip, dir.path()).unwrap();
        let before = sip.info();
        let fresh = same_ca(dir.path());
        crate::create_sip(fresh.path(), &["localhost".into()]).unwrap();
        std::fs::copy(
            fresh.path().join(SIP_CERT_FILE),
            dir.path().join(SIP_CERT_FILE),
        )
        .unwrap();
        let error = sip.reload().unwrap_err().to_string();
        assert!(
            error.contains(SIP_KEY_FILE) && error.contains("cannot be used with"),
            "{error}"
        );
        assert_eq!(sip.info(), before);
    }

    #[test]
    fn reload_refuses_a_node_certificate_of_another_ca_or_name() {
        let dir = tempfile::tempdir().unwrap();
        crate::ensure_dev_certs(dir.path(), &[]).unwrap();
        let node = ReloadableCertificate::load(CertificateRole::Node, dir.path()).unwrap();
        let before = node.info();

        let foreign = tempfile::tempdir().unwrap();
        crate::ensure_dev_certs(foreign.path(), &[]).unwrap();
        replace(dir.path(), foreign.path(), NODE_CERT_FILE, NODE_KEY_FILE);
        let error = node.reload().unwrap_err().to_string();
        assert!(error.contains("not accepted by the cluster CA"), "{error}");
        assert_eq!(node.info(), before);

        // The SIP certificate of the same CA is not a node certificate.
        std::fs::copy(
            dir.path().join(SIP_CERT_FILE),
            dir.path().join(NODE_CERT_FILE),
        )
        .unwrap();
        std::fs::copy(
            dir.path().join(SIP_KEY_FILE),
            dir.path().join(NODE_KEY_FILE),
        )
        .unwrap();
        let error = node.reload().unwrap_err().to_string();
        assert!(error.contains("common name"), "{error}");
        assert_eq!(node.info(), before);
    }
}
