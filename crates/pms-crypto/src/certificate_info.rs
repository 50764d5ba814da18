//! What an operator needs to know about a certificate file: whose it is (subject, SANs,
//! issuer) and when it stops working (not-before, not-after, days left). `pmsctl cert list`
//! prints it, and `pmsd` logs it and exports the expiry as a metric.
//!
//! Invariant: reading never fails on an odd but valid certificate (no CN, no SANs, names that
//! are not UTF-8): what cannot be shown as text is shown as the DER-derived form x509-parser
//! gives, never dropped silently; only a file that is not a certificate at all is an error.

use std::net::IpAddr;
use std::path::Path;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::x509::X509Name;

use crate::error::{Error, Result};

/// Seconds in a day, for days-left arithmetic.
const SECONDS_PER_DAY: i64 = 86_400;
/// A certificate that expires within this many days is flagged (`pmsctl cert list`, the
/// start-up log of `pmsd`).
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// The facts about one certificate (the leaf, the first in its file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's common name, or the whole subject name when it has none.
    pub subject: String,
    /// DNS names and IP addresses the certificate is valid for.
    pub subject_alt_names: Vec<String>,
    /// The issuer's common name, or the whole issuer name when it has none.
    pub issuer: String,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// Start of validity, Unix seconds.
    pub not_before_unix: i64,
    /// End of validity, Unix seconds.
    pub not_after_unix: i64,
    /// Certificates in the file (the leaf and any intermediates after it).
    pub chain_length: usize,
}

impl CertificateInfo {
    /// Reads the facts from one DER certificate.
    ///
    /// # Errors
    /// When `der` is not an X.509 certificate; the reason says what did not parse.
    pub fn from_der(der: &[u8]) -> std::result::Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|error| format!("not an X.509 certificate: {error}"))?;
        let subject_alt_names = match cert.subject_alternative_name() {
            Ok(Some(extension)) => extension
                .value
                .general_names
                .iter()
                .map(general_name_text)
                .collect(),
            Ok(None) => Vec::new(),
            Err(error) => vec![format!("(unreadable: {error})")],
        };
        Ok(CertificateInfo {
            subject: name_text(cert.subject()),
            subject_alt_names,
            issuer: name_text(cert.issuer()),
            serial: hex::encode(cert.raw_serial()),
            not_before_unix: cert.validity().not_before.timestamp(),
            not_after_unix: cert.validity().not_after.timestamp(),
            chain_length: 1,
        })
    }

    /// Whole days from `now_unix` until the certificate expires, rounded down: 0 on its
    /// last day, negative once expired.
    #[must_use]
    pub fn days_left(&self, now_unix: i64) -> i64 {
        (self.not_after_unix - now_unix).div_euclid(SECONDS_PER_DAY)
    }

    /// Whether the certificate is valid at `now_unix` (inside not-before..=not-after).
    #[must_use]
    pub fn is_valid_at(&self, now_unix: i64) -> bool {
        self.not_before_unix <= now_unix && now_unix <= self.not_after_unix
    }

    /// Whether the certificate has expired at `now_unix` or will within
    /// [`EXPIRY_WARNING_DAYS`] (a certificate made for 30 days is flagged from the start).
    #[must_use]
    pub fn expires_soon(&self, now_unix: i64) -> bool {
        self.not_after_unix - now_unix <= EXPIRY_WARNING_DAYS * SECONDS_PER_DAY
    }
}

/// The leaf (first) certificate of the PEM file at `path`, with the length of its chain.
///
/// # Errors
/// When the file cannot be read, holds no certificate, or its first certificate does not parse.
pub fn read_certificate_info(path: &Path) -> Result<CertificateInfo> {
    let pem = std::fs::read(path).map_err(|source| Error::io("reading", path, source))?;
    let certs = crate::tls::certs_from_pem(path, &pem)?;
    let leaf = certs.first().ok_or_else(|| Error::Pem {
        path: path.to_path_buf(),
        reason: "no CERTIFICATE block found".into(),
    })?;
    let mut info = CertificateInfo::from_der(leaf.as_ref()).map_err(|reason| Error::Pem {
        path: path.to_path_buf(),
        reason,
    })?;
    info.chain_length = certs.len();
    Ok(info)
}

/// `unix` seconds as RFC 3339 in UTC (`2026-05-01T12:00:00Z`); the number itself when it is
/// outside what RFC 3339 can write.
#[must_use]
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix} (Unix seconds)"))
}

/// Now, in Unix seconds (0 if the clock is before 1970).
#[must_use]
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

fn name_text(name: &X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|common_name| common_name.as_str().ok())
        .map_or_else(|| name.to_string(), str::to_owned)
}

fn general_name_text(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(dns) => (*dns).to_owned(),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes).map_or_else(
                |_| format!("{name}"),
                |octets| IpAddr::from(octets).to_string(),
            ),
            16 => <[u8; 16]>::try_from(*bytes).map_or_else(
                |_| format!("{name}"),
                |octets| IpAddr::from(octets).to_string(),
            ),
            _ => format!("{name}"),
        },
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_subject_sans_issuer_and_validity_of_a_node_certificate() {
        let dir = tempfile::tempdir().unwrap();
        crate::create_ca(dir.path()).unwrap();
        crate::certs::create_node_with(
            dir.path(),
            &["127.0.0.1".into(), "pms-1.example.net".into(), "::1".into()],
            crate::Lifetime::Days(2),
        )
        .unwrap();
        let ca = read_certificate_info(&dir.path().join(crate::CA_CERT_FILE)).unwrap();
        let node = read_certificate_info(&dir.path().join(crate::NODE_CERT_FILE)).unwrap();
        assert!(ca.subject.starts_with("PMS CA "), "{ca:?}");
        assert_eq!(ca.issuer, ca.subject);
        assert_eq!(node.subject, "node");
        assert_eq!(node.issuer, ca.subject);
        assert_eq!(
            node.subject_alt_names,
            ["127.0.0.1", "pms-1.example.net", "::1"]
        );
        assert_eq!(node.chain_length, 1);
        let now = now_unix();
        assert!(node.is_valid_at(now));
        // A second after it was made (not-before is backdated by an hour): one whole day left.
        assert_eq!(node.days_left(node.not_before_unix + 3600 + 1), 1);
        assert!(node.expires_soon(now));
        assert!(!ca.expires_soon(now));
        assert_eq!(node.days_left(node.not_after_unix + 1), -1);
        assert!(!node.is_valid_at(node.not_after_unix + 1));
    }

    #[test]
    fn a_file_without_a_certificate_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.crt");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = read_certificate_info(&path).unwrap_err().to_string();
        assert!(error.contains("broken.crt"), "{error}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&path, garbage).unwrap();
        let error = read_certificate_info(&path).unwrap_err().to_string();
        assert!(error.contains("not an X.509 certificate"), "{error}");
    }

    #[test]
    fn rfc3339_is_utc_with_z() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
    }
}
