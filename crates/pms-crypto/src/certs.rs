//! Certificate authority and leaf certificates in a CockroachDB-style certs dir.
//!
//! Layout of a certs dir (all PEM):
//! - `ca.crt`, `ca.key`: the cluster CA (the key may be kept offline once leaves exist);
//! - `node.crt`, `node.key`: a node's certificate, CN `node`, usable as TLS server *and*
//!   client (nodes dial each other), SANs from the hosts given; the node's cluster identity,
//!   presented only on the gRPC port (Raft, forwarding, admin);
//! - `sip.crt`, `sip.key`: the certificate the public SIP TLS listener presents, server auth
//!   only, CN the first host. In production it comes from a public CA (copy the chain and key
//!   here under these names); [`create_sip`] signs one with the cluster CA for development.
//! - `client.<name>.crt`, `client.<name>.key`: a client certificate with CN `<name>`
//!   (`client.admin.*` authenticates `pmsctl` to the admin API).
//!
//! Invariants:
//! - Invariant: nothing is overwritten. Every file is created with `create_new`; a
//!   command whose outputs already exist fails with [`Error::AlreadyExists`] before
//!   writing anything.
//! - Invariant: private keys are written with mode 0600, certificates with 0644; the key
//!   is written before its certificate, so a present `.crt` always has its `.key`.
//! - Invariant: client names are restricted to `[A-Za-z0-9._-]` (no leading dot) so a
//!   name can never escape the certs dir.
//! - Invariant: a certificate's lifetime is 1 to [`LIFETIME_DAYS_MAX`] days, and a leaf never
//!   outlives the CA that signs it (a chain is only as valid as its shortest-lived link): a
//!   lifetime given in days that would is refused, the default one is cut at the CA's expiry.
//! - Invariant: `sip.crt` carries the server-auth usage only, never client auth, and never
//!   the common name `node`: the gRPC services require a client certificate with the
//!   client-auth usage and CN `node` (or `admin`), so the public SIP key cannot act as a node
//!   or an admin even though, in development, the cluster CA signed it.

use crate::error::{Error, Result};
use crate::keys::{PUBLIC_FILE_MODE, SECRET_FILE_MODE, write_new_file};
use rand::RngCore;
use rand::rngs::OsRng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// CA certificate file name inside a certs dir.
pub const CA_CERT_FILE: &str = "ca.crt";
/// CA private key file name inside a certs dir.
pub const CA_KEY_FILE: &str = "ca.key";
/// Node certificate file name inside a certs dir.
pub const NODE_CERT_FILE: &str = "node.crt";
/// Node private key file name inside a certs dir.
pub const NODE_KEY_FILE: &str = "node.key";
/// Common name of node certificates.
pub const NODE_COMMON_NAME: &str = "node";
/// SIP TLS certificate file name inside a certs dir (the public SIP listener's identity).
pub const SIP_CERT_FILE: &str = "sip.crt";
/// SIP TLS private key file name inside a certs dir.
pub const SIP_KEY_FILE: &str = "sip.key";
/// Name of the client certificate made by [`ensure_dev_certs`].
pub const ADMIN_CLIENT_NAME: &str = "admin";
/// Longest accepted client name.
pub const CLIENT_NAME_LENGTH_MAX: usize = 64;

/// Days a CA certificate is valid unless told otherwise (10 years).
pub const CA_LIFETIME_DAYS_DEFAULT: u32 = 10 * 365;
/// Days a node, SIP or client certificate is valid unless told otherwise (5 years, as
/// CockroachDB's node and client certificates), cut at the CA's expiry.
pub const LEAF_LIFETIME_DAYS_DEFAULT: u32 = 5 * 365;
/// Longest lifetime a certificate may be given (100 years): beyond it is a typo.
pub const LIFETIME_DAYS_MAX: u32 = 36_500;
/// Backdating of `not_before`, tolerating clocks that are somewhat behind.
const CLOCK_SKEW_ALLOWANCE_HOURS: i64 = 1;

/// How long a new certificate is valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lifetime {
    /// [`CA_LIFETIME_DAYS_DEFAULT`] for a CA, [`LEAF_LIFETIME_DAYS_DEFAULT`] for the others,
    /// a leaf's cut at the expiry of its CA.
    #[default]
    Default,
    /// Exactly this many days from now, 1 to [`LIFETIME_DAYS_MAX`]; a leaf that would outlive
    /// its CA is refused.
    Days(u32),
}

impl Lifetime {
    /// Refuses 0 days and more than [`LIFETIME_DAYS_MAX`].
    ///
    /// # Errors
    /// [`Error::InvalidLifetime`] saying what is allowed.
    pub fn validate(self) -> Result<()> {
        match self {
            Lifetime::Days(0) => Err(Error::InvalidLifetime {
                days: 0,
                reason: "a certificate must be valid for at least 1 day".into(),
            }),
            Lifetime::Days(days) if days > LIFETIME_DAYS_MAX => Err(Error::InvalidLifetime {
                days,
                reason: format!(
                    "more than {LIFETIME_DAYS_MAX} days (100 years); rotate certificates instead"
                ),
            }),
            Lifetime::Default | Lifetime::Days(_) => Ok(()),
        }
    }
}

/// `client.<name>.crt`
#[must_use]
pub fn client_cert_file(name: &str) -> String {
    format!("client.{name}.crt")
}

/// `client.<name>.key`
#[must_use]
pub fn client_key_file(name: &str) -> String {
    format!("client.{name}.key")
}

/// Hosts used for a development node certificate: `127.0.0.1`, `localhost`, `::1`.
#[must_use]
pub fn default_dev_hosts() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into(), "::1".into()]
}

/// Creates `ca.crt` and `ca.key` in `certs_dir` (creating the directory), valid for
/// [`CA_LIFETIME_DAYS_DEFAULT`]. Refuses to overwrite an existing CA certificate or key.
pub fn create_ca(certs_dir: &Path) -> Result<()> {
    create_ca_with(certs_dir, Lifetime::Default)
}

/// [`create_ca`] valid for `lifetime`.
pub fn create_ca_with(certs_dir: &Path, lifetime: Lifetime) -> Result<()> {
    lifetime.validate()?;
    let days = match lifetime {
        Lifetime::Default => CA_LIFETIME_DAYS_DEFAULT,
        Lifetime::Days(days) => days,
    };
    let cert_path = certs_dir.join(CA_CERT_FILE);
    let key_path = certs_dir.join(CA_KEY_FILE);
    refuse_existing(&[&cert_path, &key_path])?;
    let key = generate_key_pair("CA key")?;
    let mut params = CertificateParams::default();
    // A random suffix keeps CAs of different clusters apart by name, so a certificate
    // from the wrong cluster fails as "unknown issuer" rather than "bad signature".
    let mut ca_id = [0u8; 4];
    OsRng.fill_bytes(&mut ca_id);
    params.distinguished_name = distinguished_name(&format!("PMS CA {}", hex::encode(ca_id)));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(
        &mut params,
        OffsetDateTime::now_utc() + Duration::days(i64::from(days)),
    );
    let cert = params
        .self_signed(&key)
        .map_err(|source| generation_error("CA certificate", source))?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key)
}

/// One SAN per host (IP SAN when it parses as an IP, `[v6]` accepted; DNS SAN otherwise); at
/// least one host.
fn subject_alt_names(hosts: &[String]) -> Result<Vec<SanType>> {
    if hosts.is_empty() {
        return Err(Error::InvalidHost {
            host: String::new(),
            reason: "at least one host is required".into(),
        });
    }
    hosts.iter().map(|host| parse_host(host)).collect()
}

/// Creates `node.crt`/`node.key`, signed by the CA in `certs_dir`: CN `node`, server and
/// client auth, one SAN per host (IP SAN when it parses as an IP, `[v6]` accepted; DNS
/// SAN otherwise).
pub fn create_node(certs_dir: &Path, hosts: &[String]) -> Result<()> {
    create_node_with(certs_dir, hosts, Lifetime::Default)
}

/// [`create_node`] valid for `lifetime`.
pub fn create_node_with(certs_dir: &Path, hosts: &[String], lifetime: Lifetime) -> Result<()> {
    let subject_alt_names = subject_alt_names(hosts)?;
    create_leaf(
        certs_dir,
        NODE_CERT_FILE,
        NODE_KEY_FILE,
        NODE_COMMON_NAME,
        subject_alt_names,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        lifetime,
    )
}

/// Creates `sip.crt`/`sip.key`, signed by the CA in `certs_dir` (development; production
/// uses a certificate from a public CA): server auth only, CN the first host that is not
/// `node`, one SAN per host as for [`create_node`]. Phones verify it against `ca.crt` and
/// the name they dial; the gRPC port never accepts it (no client auth, CN not `node`).
pub fn create_sip(certs_dir: &Path, hosts: &[String]) -> Result<()> {
    create_sip_with(certs_dir, hosts, Lifetime::Default)
}

/// [`create_sip`] valid for `lifetime`.
pub fn create_sip_with(certs_dir: &Path, hosts: &[String], lifetime: Lifetime) -> Result<()> {
    let subject_alt_names = subject_alt_names(hosts)?;
    let common_name = hosts
        .iter()
        .map(|host| host.trim())
        .find(|host| !host.eq_ignore_ascii_case(NODE_COMMON_NAME))
        .unwrap_or("sip");
    create_leaf(
        certs_dir,
        SIP_CERT_FILE,
        SIP_KEY_FILE,
        common_name,
        subject_alt_names,
        vec![ExtendedKeyUsagePurpose::ServerAuth],
        lifetime,
    )
}

/// Creates `client.<name>.crt`/`.key`, signed by the CA in `certs_dir`: CN `name`,
/// client auth only.
pub fn create_client(certs_dir: &Path, name: &str) -> Result<()> {
    create_client_with(certs_dir, name, Lifetime::Default)
}

/// [`create_client`] valid for `lifetime`.
pub fn create_client_with(certs_dir: &Path, name: &str, lifetime: Lifetime) -> Result<()> {
    validate_client_name(name)?;
    create_leaf(
        certs_dir,
        &client_cert_file(name),
        &client_key_file(name),
        name,
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        lifetime,
    )
}

/// Development bootstrap. When `ca.crt` is missing, creates the CA; then, if the CA key
/// is present, creates whichever of the node certificate, the SIP certificate (both for
/// `hosts`, or [`default_dev_hosts`] when empty) and `client.admin` certificate is missing.
/// Returns whether anything was created.
pub fn ensure_dev_certs(certs_dir: &Path, hosts: &[String]) -> Result<bool> {
    let mut created = false;
    if !certs_dir.join(CA_CERT_FILE).exists() {
        create_ca(certs_dir)?;
        created = true;
    }
    if !certs_dir.join(CA_KEY_FILE).exists() {
        // A CA kept offline: the operator manages leaves by hand.
        return Ok(created);
    }
    let defaults;
    let hosts = if hosts.is_empty() {
        defaults = default_dev_hosts();
        &defaults
    } else {
        hosts
    };
    if !certs_dir.join(NODE_CERT_FILE).exists() {
        create_node(certs_dir, hosts)?;
        created = true;
    }
    created |= ensure_dev_sip_cert(certs_dir, hosts)?;
    if !certs_dir.join(client_cert_file(ADMIN_CLIENT_NAME)).exists() {
        create_client(certs_dir, ADMIN_CLIENT_NAME)?;
        created = true;
    }
    Ok(created)
}

/// Creates `sip.crt`/`sip.key` for `hosts` (or [`default_dev_hosts`]) when `sip.crt` is
/// missing and the CA key is present (a development certs dir made before the SIP listener
/// had its own certificate). Returns whether it created them. Another process sharing the
/// certs dir may create them at the same moment; its files are kept.
pub fn ensure_dev_sip_cert(certs_dir: &Path, hosts: &[String]) -> Result<bool> {
    if certs_dir.join(SIP_CERT_FILE).exists() || !certs_dir.join(CA_KEY_FILE).exists() {
        return Ok(false);
    }
    let defaults;
    let hosts = if hosts.is_empty() {
        defaults = default_dev_hosts();
        &defaults
    } else {
        hosts
    };
    match create_sip(certs_dir, hosts) {
        Ok(()) => Ok(true),
        Err(Error::AlreadyExists { .. }) => Ok(false),
        Err(error) => Err(error),
    }
}

pub(crate) fn validate_client_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty".to_string())
    } else if name.len() > CLIENT_NAME_LENGTH_MAX {
        Some(format!("longer than {CLIENT_NAME_LENGTH_MAX} bytes"))
    } else if name.starts_with('.') {
        Some("starts with '.'".to_string())
    } else if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
    {
        Some("only ASCII letters, digits, '.', '_' and '-' are allowed".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidClientName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn parse_host(host: &str) -> Result<SanType> {
    let trimmed = host.trim();
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(trimmed);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |reason: &str| Error::InvalidHost {
        host: host.to_string(),
        reason: reason.to_string(),
    };
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(invalid("a DNS name must be 1 to 253 characters"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let mut labels = trimmed.split('.');
    let first_ok = labels
        .next()
        .is_some_and(|first| first == "*" || label_ok(first));
    if !first_ok || !labels.all(label_ok) {
        return Err(invalid("not an IP address or a valid DNS name"));
    }
    let name = trimmed
        .to_string()
        .try_into()
        .map_err(|_| invalid("not ASCII"))?;
    Ok(SanType::DnsName(name))
}

fn create_leaf(
    certs_dir: &Path,
    cert_file: &str,
    key_file: &str,
    common_name: &str,
    subject_alt_names: Vec<SanType>,
    extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    lifetime: Lifetime,
) -> Result<()> {
    lifetime.validate()?;
    let cert_path = certs_dir.join(cert_file);
    let key_path = certs_dir.join(key_file);
    refuse_existing(&[&cert_path, &key_path])?;
    let issuer = load_issuer(certs_dir)?;
    let not_after = leaf_not_after(certs_dir, lifetime)?;
    let key = generate_key_pair(key_file)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.subject_alt_names = subject_alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = extended_key_usages;
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, not_after);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| generation_error(cert_file, source))?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key)
}

/// When a leaf made now for `lifetime` expires: never after the CA in `certs_dir`.
fn leaf_not_after(certs_dir: &Path, lifetime: Lifetime) -> Result<OffsetDateTime> {
    let ca_path = certs_dir.join(CA_CERT_FILE);
    let ca = crate::certificate_info::read_certificate_info(&ca_path)?;
    let ca_not_after =
        OffsetDateTime::from_unix_timestamp(ca.not_after_unix).map_err(|_| Error::Pem {
            path: ca_path.clone(),
            reason: format!("expiry {} out of range", ca.not_after_unix),
        })?;
    let now = OffsetDateTime::now_utc();
    if ca_not_after <= now {
        return Err(Error::InvalidLifetime {
            days: match lifetime {
                Lifetime::Default => LEAF_LIFETIME_DAYS_DEFAULT,
                Lifetime::Days(days) => days,
            },
            reason: format!(
                "the CA {} expired on {}: make a new CA (`pmsctl cert create-ca` in another certs dir) and sign new certificates with it",
                ca_path.display(),
                crate::certificate_info::rfc3339(ca.not_after_unix)
            ),
        });
    }
    match lifetime {
        Lifetime::Default => {
            Ok((now + Duration::days(i64::from(LEAF_LIFETIME_DAYS_DEFAULT))).min(ca_not_after))
        }
        Lifetime::Days(days) => {
            let not_after = now + Duration::days(i64::from(days));
            if not_after > ca_not_after {
                let days_max = (ca_not_after - now).whole_days();
                return Err(Error::InvalidLifetime {
                    days,
                    reason: format!(
                        "the CA {} expires on {}, and a certificate it signs cannot outlive it: give at most {days_max} days, or make a new CA",
                        ca_path.display(),
                        crate::certificate_info::rfc3339(ca.not_after_unix)
                    ),
                });
            }
            Ok(not_after)
        }
    }
}

fn load_issuer(certs_dir: &Path) -> Result<Issuer<'static, KeyPair>> {
    let cert_path = certs_dir.join(CA_CERT_FILE);
    let key_path = certs_dir.join(CA_KEY_FILE);
    let key_pem = Zeroizing::new(
        fs::read_to_string(&key_path).map_err(|source| Error::io("reading", &key_path, source))?,
    );
    let key = KeyPair::from_pem(&key_pem).map_err(|source| Error::Pem {
        path: key_path.clone(),
        reason: format!("not a usable private key: {source}"),
    })?;
    let cert_pem = fs::read_to_string(&cert_path)
        .map_err(|source| Error::io("reading", &cert_path, source))?;
    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| Error::Pem {
        path: cert_path,
        reason: format!("not a usable CA certificate: {source}"),
    })
}

fn generate_key_pair(what: &str) -> Result<KeyPair> {
    // ECDSA P-256 with SHA-256: supported by rustls/webpki, tonic and common SIP stacks.
    KeyPair::generate().map_err(|source| generation_error(what, source))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "PMS");
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, not_after: OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(CLOCK_SKEW_ALLOWANCE_HOURS);
    params.not_after = not_after;
    let mut serial = [0u8; 16];
    OsRng.fill_bytes(&mut serial);
    // Positive and of full length when DER-encoded.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

fn generation_error(what: &str, source: rcgen::Error) -> Error {
    Error::CertGeneration {
        what: what.to_string(),
        source,
    }
}

fn refuse_existing(paths: &[&PathBuf]) -> Result<()> {
    match paths.iter().find(|path| path.exists()) {
        Some(path) => Err(Error::AlreadyExists {
            path: (*path).clone(),
        }),
        None => Ok(()),
    }
}

fn write_pair(cert_path: &Path, cert_pem: &str, key_path: &Path, key: &KeyPair) -> Result<()> {
    let key_pem = Zeroizing::new(key.serialize_pem());
    write_new_file(key_path, key_pem.as_bytes(), SECRET_FILE_MODE)?;
    write_new_file(cert_path, cert_pem.as_bytes(), PUBLIC_FILE_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn read_cert(path: &Path) -> Vec<u8> {
        let pem = fs::read(path).unwrap();
        let mut reader = pem.as_slice();
        rustls_pemfile::certs(&mut reader)
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn creates_ca_node_and_client_with_expected_fields() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path()).unwrap();
        create_node(
            dir.path(),
            &[
                "10.0.0.7".into(),
                "pms-1.example.net".into(),
                "[::1]".into(),
            ],
        )
        .unwrap();
        create_client(dir.path(), "admin").unwrap();

        let ca_der = read_cert(&dir.path().join(CA_CERT_FILE));
        let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
        assert!(ca.is_ca());

        let node_der = read_cert(&dir.path().join(NODE_CERT_FILE));
        let (_, node) = parse_x509_certificate(&node_der).unwrap();
        assert_eq!(crate::peer_common_name(&node_der).as_deref(), Some("node"));
        assert_eq!(node.issuer(), ca.subject());
        assert!(!node.is_ca());
        let eku = node.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let sans = &node
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        let ip4 = GeneralName::IPAddress(&[10, 0, 0, 7]);
        let mut ip6 = [0u8; 16];
        ip6[15] = 1;
        assert!(sans.contains(&ip4), "{sans:?}");
        assert!(sans.contains(&GeneralName::IPAddress(&ip6)), "{sans:?}");
        assert!(
            sans.contains(&GeneralName::DNSName("pms-1.example.net")),
            "{sans:?}"
        );
        assert_eq!(sans.len(), 3);

        create_sip(dir.path(), &["sip.example.net".into(), "10.0.0.7".into()]).unwrap();
        let sip_der = read_cert(&dir.path().join(SIP_CERT_FILE));
        let (_, sip) = parse_x509_certificate(&sip_der).unwrap();
        assert_eq!(
            crate::peer_common_name(&sip_der).as_deref(),
            Some("sip.example.net")
        );
        assert_eq!(sip.issuer(), ca.subject());
        assert!(!sip.is_ca());
        let eku = sip.extended_key_usage().unwrap().unwrap().value;
        assert!(
            eku.server_auth && !eku.client_auth,
            "a SIP certificate must not authenticate clients"
        );
        let sans = &sip
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert!(sans.contains(&GeneralName::DNSName("sip.example.net")));
        assert!(sans.contains(&ip4));
        assert_ne!(sip_der, node_der);

        let client_der = read_cert(&dir.path().join("client.admin.crt"));
        let (_, client) = parse_x509_certificate(&client_der).unwrap();
        assert_eq!(
            crate::peer_common_name(&client_der).as_deref(),
            Some("admin")
        );
        let eku = client.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(client.issuer(), ca.subject());
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_0600_and_certificates_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_dev_certs(dir.path(), &[]).unwrap());
        let mode = |name: &str| {
            fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        for key in [CA_KEY_FILE, NODE_KEY_FILE, SIP_KEY_FILE, "client.admin.key"] {
            assert_eq!(mode(key), 0o600, "{key}");
        }
        for cert in [
            CA_CERT_FILE,
            NODE_CERT_FILE,
            SIP_CERT_FILE,
            "client.admin.crt",
        ] {
            assert_eq!(mode(cert), 0o644, "{cert}");
        }
    }

    #[test]
    fn refuses_to_overwrite_existing_ca_and_leaves() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path()).unwrap();
        let before = fs::read(dir.path().join(CA_CERT_FILE)).unwrap();
        let key_before = fs::read(dir.path().join(CA_KEY_FILE)).unwrap();
        assert!(matches!(
            create_ca(dir.path()),
            Err(Error::AlreadyExists { .. })
        ));
        assert_eq!(fs::read(dir.path().join(CA_CERT_FILE)).unwrap(), before);
        assert_eq!(fs::read(dir.path().join(CA_KEY_FILE)).unwrap(), key_before);

        create_node(dir.path(), &["localhost".into()]).unwrap();
        assert!(matches!(
            create_node(dir.path(), &["localhost".into()]),
            Err(Error::AlreadyExists { .. })
        ));
        create_sip(dir.path(), &["localhost".into()]).unwrap();
        assert!(matches!(
            create_sip(dir.path(), &["localhost".into()]),
            Err(Error::AlreadyExists { .. })
        ));
        create_client(dir.path(), "ops").unwrap();
        assert!(matches!(
            create_client(dir.path(), "ops"),
            Err(Error::AlreadyExists { .. })
        ));
    }

    #[test]
    fn leaf_without_ca_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let error = create_client(dir.path(), "admin").unwrap_err();
        assert!(matches!(error, Error::Io { .. }), "{error}");
        assert!(!dir.path().join("client.admin.key").exists());
    }

    #[test]
    fn rejects_bad_client_names_and_hosts() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path()).unwrap();
        for name in ["", "../evil", "a/b", ".hidden", "sp ace", &"x".repeat(65)] {
            assert!(
                matches!(
                    create_client(dir.path(), name),
                    Err(Error::InvalidClientName { .. })
                ),
                "{name:?}"
            );
        }
        for host in ["", "bad host", "-lead.example", "a..b", "ünï.example"] {
            assert!(
                matches!(
                    create_node(dir.path(), &[host.to_string()]),
                    Err(Error::InvalidHost { .. })
                ),
                "{host:?}"
            );
        }
        assert!(matches!(
            create_node(dir.path(), &[]),
            Err(Error::InvalidHost { .. })
        ));
        assert!(!dir.path().join(NODE_KEY_FILE).exists());
    }

    #[test]
    fn lifetimes_of_zero_or_beyond_the_maximum_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        for lifetime in [Lifetime::Days(0), Lifetime::Days(LIFETIME_DAYS_MAX + 1)] {
            let error = create_ca_with(dir.path(), lifetime).unwrap_err();
            assert!(matches!(error, Error::InvalidLifetime { .. }), "{error}");
            assert!(!dir.path().join(CA_KEY_FILE).exists());
        }
        create_ca_with(dir.path(), Lifetime::Days(LIFETIME_DAYS_MAX)).unwrap();
        let error = create_client_with(dir.path(), "ops", Lifetime::Days(0)).unwrap_err();
        assert!(error.to_string().contains("at least 1 day"), "{error}");
        assert!(!dir.path().join("client.ops.key").exists());
    }

    #[test]
    fn a_leaf_never_outlives_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        create_ca_with(dir.path(), Lifetime::Days(10)).unwrap();
        let ca = crate::read_certificate_info(&dir.path().join(CA_CERT_FILE)).unwrap();
        // A second after it was made (not-before is backdated by the clock skew allowance).
        let made = |info: &crate::CertificateInfo| {
            info.not_before_unix + CLOCK_SKEW_ALLOWANCE_HOURS * 3600 + 1
        };
        assert_eq!(ca.days_left(made(&ca)), 9);

        let error =
            create_node_with(dir.path(), &["localhost".into()], Lifetime::Days(11)).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("cannot outlive it") && text.contains("at most 9 days"),
            "{text}"
        );
        assert!(!dir.path().join(NODE_KEY_FILE).exists());

        create_sip_with(dir.path(), &["localhost".into()], Lifetime::Days(3)).unwrap();
        let sip = crate::read_certificate_info(&dir.path().join(SIP_CERT_FILE)).unwrap();
        assert_eq!(sip.days_left(made(&sip)), 2);

        // The default (5 years) is cut at the CA's expiry instead of refused.
        create_node(dir.path(), &["localhost".into()]).unwrap();
        let node = crate::read_certificate_info(&dir.path().join(NODE_CERT_FILE)).unwrap();
        assert!(node.not_after_unix <= ca.not_after_unix, "{node:?} {ca:?}");
        assert!(
            node.not_after_unix >= ca.not_after_unix - 60,
            "{node:?} {ca:?}"
        );
    }

    #[test]
    fn ensure_dev_certs_creates_once_and_fills_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        assert!(ensure_dev_certs(&certs, &[]).unwrap());
        let node_before = fs::read(certs.join(NODE_CERT_FILE)).unwrap();
        assert!(!ensure_dev_certs(&certs, &[]).unwrap());
        assert_eq!(fs::read(certs.join(NODE_CERT_FILE)).unwrap(), node_before);

        fs::remove_file(certs.join("client.admin.crt")).unwrap();
        fs::remove_file(certs.join("client.admin.key")).unwrap();
        assert!(ensure_dev_certs(&certs, &[]).unwrap());
        assert!(certs.join("client.admin.crt").exists());
        assert_eq!(fs::read(certs.join(NODE_CERT_FILE)).unwrap(), node_before);

        // A dev certs dir from before the SIP certificate existed gets one; node.crt stays.
        fs::remove_file(certs.join(SIP_CERT_FILE)).unwrap();
        fs::remove_file(certs.join(SIP_KEY_FILE)).unwrap();
        assert!(ensure_dev_sip_cert(&certs, &[]).unwrap());
        assert!(certs.join(SIP_KEY_FILE).exists());
        assert!(!ensure_dev_sip_cert(&certs, &[]).unwrap());
        assert_eq!(fs::read(certs.join(NODE_CERT_FILE)).unwrap(), node_before);

        // CA key kept offline: nothing to sign with, nothing created, no error.
        fs::remove_file(certs.join(CA_KEY_FILE)).unwrap();
        fs::remove_file(certs.join(NODE_CERT_FILE)).unwrap();
        fs::remove_file(certs.join(SIP_CERT_FILE)).unwrap();
        assert!(!ensure_dev_certs(&certs, &[]).unwrap());
        assert!(!ensure_dev_sip_cert(&certs, &[]).unwrap());
        assert!(!certs.join(SIP_CERT_FILE).exists());
    }
}
