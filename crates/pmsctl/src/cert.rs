//! `pmsctl cert create-ca | create-node HOST... | create-sip HOST... | create-client NAME |
//! create-master-key FILE | list`: makes the certificates of a CockroachDB-style certs dir
//! (`ca.crt`, `node.crt`/`node.key`, `sip.crt`/`sip.key`, `client.<name>.crt`/`.key`) through
//! `pms-crypto`, the only crate that generates keys, and lists what is there and when it
//! expires. `create-sip` signs the SIP listener's certificate with the cluster CA, for
//! development; production uses one from a public CA.
//!
//! Invariant: names, hosts and lifetimes are validated before anything is written, so a bad
//! argument never leaves a half-made certs dir; a client name becomes part of a file name, so it
//! is restricted to `[a-z0-9._-]` and cannot start with a dot.
//! Invariant: `list` only reads; it shows every `*.crt` file, one it cannot read as an error row
//! (and then fails), and marks each certificate that expires within
//! [`pms_crypto::EXPIRY_WARNING_DAYS`] days or already expired.

use std::io::Write;

use crate::output::report;
use std::path::{Path, PathBuf};

use pms_crypto::{CertificateInfo, Lifetime, rfc3339};
use serde::Serialize;

/// Longest client name (it is the certificate's common name and part of a file name).
pub const CLIENT_NAME_BYTES_MAX: usize = 64;
/// Longest host name or address on a node certificate.
pub const HOST_BYTES_MAX: usize = 253;
/// Most hosts on one node certificate.
pub const NODE_HOSTS_MAX: usize = 64;

/// One `pmsctl cert` subcommand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertCommand {
    /// A new cluster CA (`ca.crt`, `ca.key`), valid for `lifetime_days` (default 10 years).
    CreateCa { lifetime_days: Option<u32> },
    /// A node certificate valid for these host names and IP addresses (its SANs).
    CreateNode {
        hosts: Vec<String>,
        lifetime_days: Option<u32>,
    },
    /// The SIP TLS listener's certificate (server auth only) for the names phones dial.
    CreateSip {
        hosts: Vec<String>,
        lifetime_days: Option<u32>,
    },
    /// A client certificate whose common name is `name` (`admin` for the admin API).
    CreateClient {
        name: String,
        lifetime_days: Option<u32>,
    },
    /// A new cluster master key file (mode 0600), to copy to every node's
    /// `--master-key-file` before they first start; never kept beside the data.
    CreateMasterKey { path: PathBuf },
    /// Every certificate in the certs dir with its subject, SANs, issuer and validity: a
    /// table, or JSON lines.
    List { json: bool },
}

/// Why a `pmsctl cert` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("invalid client name {name:?}: {reason}")]
    InvalidClientName { name: String, reason: &'static str },
    #[error("invalid host {host:?}: {reason}")]
    InvalidHost { host: String, reason: &'static str },
    #[error("cannot create certs dir {}", certs_dir.display())]
    CreateDir {
        certs_dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read certs dir {}", certs_dir.display())]
    ReadDir {
        certs_dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{unreadable} certificate file(s) in {} could not be read (see the rows above)",
        certs_dir.display()
    )]
    Unreadable {
        certs_dir: PathBuf,
        unreadable: usize,
    },
    #[error(transparent)]
    Crypto(#[from] pms_crypto::Error),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Accepts `[a-z0-9._-]{1,64}` not starting with `.`.
pub fn validate_client_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason| CertError::InvalidClientName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > CLIENT_NAME_BYTES_MAX {
        return Err(invalid("longer than 64 bytes"));
    }
    if name.starts_with('.') {
        return Err(invalid("starts with a dot"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid("allowed are a-z 0-9 . _ -"));
    }
    Ok(())
}

/// Accepts a DNS name or an IP address (IPv6 without brackets).
pub fn validate_hosts(hosts: &[String]) -> Result<(), CertError> {
    let invalid = |host: &str, reason| CertError::InvalidHost {
        host: host.to_owned(),
        reason,
    };
    if hosts.is_empty() {
        return Err(invalid("", "give at least one host name or address"));
    }
    if hosts.len() > NODE_HOSTS_MAX {
        return Err(invalid(&hosts[NODE_HOSTS_MAX], "more than 64 hosts"));
    }
    for host in hosts {
        if host.is_empty() || host.len() > HOST_BYTES_MAX {
            return Err(invalid(host, "must be 1..=253 bytes"));
        }
        if host.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'*'))
        {
            return Err(invalid(host, "not an IP address or DNS name"));
        }
    }
    Ok(())
}

/// The lifetime `--lifetime-days` asks for (the kind's default when absent), checked.
fn lifetime(days: Option<u32>) -> Result<Lifetime, CertError> {
    let lifetime = days.map_or(Lifetime::Default, Lifetime::Days);
    lifetime.validate()?;
    Ok(lifetime)
}

/// Runs one cert command against `certs_dir` (created if missing, except by `list`) and
/// reports to `out`: sentences and tables, or one JSON object per line when `json` is set
/// (`List { json: true }` also selects JSON).
pub fn run(
    certs_dir: &Path,
    command: &CertCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CertError> {
    let dir = certs_dir.display().to_string();
    match command {
        CertCommand::CreateMasterKey { path } => {
            pms_crypto::MasterKey::write_new(path)?;
            report(
                out,
                json,
                &serde_json::json!({"command": "cert create-master-key",
                    "path": path.display().to_string()}),
                format_args!("created master key {}", path.display()),
            )?;
            return Ok(());
        }
        CertCommand::List { json: list_json } => {
            return list(certs_dir, json || *list_json, pms_crypto::now_unix(), out);
        }
        CertCommand::CreateCa { lifetime_days } => {
            lifetime(*lifetime_days)?;
        }
        CertCommand::CreateNode {
            hosts,
            lifetime_days,
        }
        | CertCommand::CreateSip {
            hosts,
            lifetime_days,
        } => {
            validate_hosts(hosts)?;
            lifetime(*lifetime_days)?;
        }
        CertCommand::CreateClient {
            name,
            lifetime_days,
        } => {
            validate_client_name(name)?;
            lifetime(*lifetime_days)?;
        }
    }
    std::fs::create_dir_all(certs_dir).map_err(|source| CertError::CreateDir {
        certs_dir: certs_dir.to_path_buf(),
        source,
    })?;
    match command {
        CertCommand::CreateCa { lifetime_days } => {
            pms_crypto::create_ca_with(certs_dir, lifetime(*lifetime_days)?)?;
            report(
                out,
                json,
                &serde_json::json!({"command": "cert create-ca", "certs_dir": dir}),
                format_args!("created CA in {dir}"),
            )?;
        }
        CertCommand::CreateNode {
            hosts,
            lifetime_days,
        } => {
            pms_crypto::create_node_with(certs_dir, hosts, lifetime(*lifetime_days)?)?;
            report(
                out,
                json,
                &serde_json::json!({"command": "cert create-node", "certs_dir": dir,
                    "hosts": hosts}),
                format_args!("created node certificate for {} in {dir}", hosts.join(", ")),
            )?;
        }
        CertCommand::CreateSip {
            hosts,
            lifetime_days,
        } => {
            pms_crypto::create_sip_with(certs_dir, hosts, lifetime(*lifetime_days)?)?;
            report(
                out,
                json,
                &serde_json::json!({"command": "cert create-sip", "certs_dir": dir,
                    "hosts": hosts}),
                format_args!(
                    "created SIP certificate for {} in {dir} (signed by the cluster CA: for development; in production use a certificate from a public CA as sip.crt/sip.key)",
                    hosts.join(", ")
                ),
            )?;
        }
        CertCommand::CreateClient {
            name,
            lifetime_days,
        } => {
            pms_crypto::create_client_with(certs_dir, name, lifetime(*lifetime_days)?)?;
            report(
                out,
                json,
                &serde_json::json!({"command": "cert create-client", "certs_dir": dir,
                    "name": name}),
                format_args!("created client certificate {name:?} in {dir}"),
            )?;
        }
        CertCommand::CreateMasterKey { .. } | CertCommand::List { .. } => {}
    }
    Ok(())
}

/// One row of `pmsctl cert list --json`.
#[derive(Serialize)]
struct CertificateLine<'a> {
    file: &'a str,
    subject: &'a str,
    subject_alt_names: &'a [String],
    issuer: &'a str,
    serial: &'a str,
    not_before: String,
    not_after: String,
    not_after_unix: i64,
    days_left: i64,
    /// Expires within the warning window, or already expired.
    expires_soon: bool,
    expired: bool,
    /// Certificates in the file: the leaf first, then any intermediates.
    chain_length: usize,
}

/// A `*.crt` file that could not be read, as a JSON line.
#[derive(Serialize)]
struct UnreadableLine<'a> {
    file: &'a str,
    error: &'a str,
}

/// Lists every `*.crt` in `certs_dir` (sorted by name) as seen at `now_unix`: a table, or one
/// JSON object per line. Fails after listing when a file could not be read.
pub fn list(
    certs_dir: &Path,
    json: bool,
    now_unix: i64,
    out: &mut dyn Write,
) -> Result<(), CertError> {
    let read_dir_error = |source| CertError::ReadDir {
        certs_dir: certs_dir.to_path_buf(),
        source,
    };
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(certs_dir).map_err(read_dir_error)? {
        let path = entry.map_err(read_dir_error)?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if name.ends_with(".crt") && path.is_file() {
            files.push((name.to_owned(), path));
        }
    }
    files.sort();
    let rows: Vec<(String, Result<CertificateInfo, String>)> = files
        .into_iter()
        .map(|(name, path)| {
            let info = pms_crypto::read_certificate_info(&path).map_err(|error| {
                // The path is in the row already; keep the reason.
                match error {
                    pms_crypto::Error::Pem { reason, .. } => reason,
                    other => {
                        let mut text = other.to_string();
                        let mut cause = std::error::Error::source(&other);
                        while let Some(source) = cause {
                            text.push_str(&format!(": {source}"));
                            cause = source.source();
                        }
                        text
                    }
                }
            });
            (name, info)
        })
        .collect();
    let unreadable = rows.iter().filter(|(_, info)| info.is_err()).count();
    if json {
        for (file, info) in &rows {
            match info {
                Ok(info) => serde_json::to_writer(
                    &mut *out,
                    &CertificateLine {
                        file,
                        subject: &info.subject,
                        subject_alt_names: &info.subject_alt_names,
                        issuer: &info.issuer,
                        serial: &info.serial,
                        not_before: rfc3339(info.not_before_unix),
                        not_after: rfc3339(info.not_after_unix),
                        not_after_unix: info.not_after_unix,
                        days_left: info.days_left(now_unix),
                        expires_soon: info.expires_soon(now_unix),
                        expired: info.days_left(now_unix) < 0,
                        chain_length: info.chain_length,
                    },
                )
                .map_err(std::io::Error::from)?,
                Err(error) => serde_json::to_writer(&mut *out, &UnreadableLine { file, error })
                    .map_err(std::io::Error::from)?,
            }
            writeln!(out)?;
        }
    } else {
        write_table(&rows, now_unix, out)?;
        if rows.is_empty() {
            writeln!(out, "(no *.crt files in {})", certs_dir.display())?;
        }
    }
    if unreadable > 0 {
        return Err(CertError::Unreadable {
            certs_dir: certs_dir.to_path_buf(),
            unreadable,
        });
    }
    Ok(())
}

/// The human-readable `cert list`: aligned columns, then a mark on each certificate that
/// expires within the warning window (`! expires soon`) or already did (`! EXPIRED`).
fn write_table(
    rows: &[(String, Result<CertificateInfo, String>)],
    now_unix: i64,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    const HEADER: [&str; 7] = [
        "FILE",
        "SUBJECT",
        "SANS",
        "ISSUER",
        "NOT BEFORE",
        "NOT AFTER",
        "DAYS LEFT",
    ];
    let cells: Vec<([String; 7], String)> = rows
        .iter()
        .map(|(file, info)| match info {
            Ok(info) => {
                let days_left = info.days_left(now_unix);
                let mark = if days_left < 0 {
                    "! EXPIRED".to_owned()
                } else if info.expires_soon(now_unix) {
                    format!("! expires within {} days", pms_crypto::EXPIRY_WARNING_DAYS)
                } else {
                    String::new()
                };
                let sans = if info.subject_alt_names.is_empty() {
                    "-".to_owned()
                } else {
                    info.subject_alt_names.join(",")
                };
                (
                    [
                        file.clone(),
                        info.subject.clone(),
                        sans,
                        info.issuer.clone(),
                        rfc3339(info.not_before_unix),
                        rfc3339(info.not_after_unix),
                        days_left.to_string(),
                    ],
                    mark,
                )
            }
            Err(error) => (
                [
                    file.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ],
                format!("! cannot read: {error}"),
            ),
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for (row, _) in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |row: &[String], mark: &str, out: &mut dyn Write| -> std::io::Result<()> {
        let mut text = String::new();
        for (index, (cell, width)) in row.iter().zip(widths).enumerate() {
            if index + 1 == row.len() {
                // Days left: right-aligned numbers.
                text.push_str(&format!("{cell:>width$}"));
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        if !mark.is_empty() {
            text.push_str("  ");
            text.push_str(mark);
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&HEADER.map(str::to_owned), "", &mut *out)?;
    for (row, mark) in &cells {
        line(row, mark, &mut *out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_that_could_escape_the_certs_dir_are_refused() {
        for name in ["admin", "node-2", "ops.team_1"] {
            validate_client_name(name).unwrap();
        }
        for name in [
            "",
            "../admin",
            "a/b",
            ".hidden",
            "Admin",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(validate_client_name(name).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn hosts_are_names_or_addresses() {
        let ok = |hosts: &[&str]| {
            validate_hosts(&hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        };
        ok(&[
            "127.0.0.1",
            "localhost",
            "::1",
            "pms-0.pms.svc.cluster.local",
        ])
        .unwrap();
        assert!(ok(&[]).is_err());
        assert!(ok(&["bad host"]).is_err());
        assert!(ok(&["a/b"]).is_err());
    }

    fn make(certs_dir: &Path, command: CertCommand) {
        run(certs_dir, &command, false, &mut Vec::new()).unwrap();
    }

    #[test]
    fn a_lifetime_of_zero_days_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let certs_dir = dir.path().join("certs");
        for (days, reason) in [(0, "at least 1 day"), (40_000, "more than 36500 days")] {
            let command = CertCommand::CreateCa {
                lifetime_days: Some(days),
            };
            let error = run(&certs_dir, &command, false, &mut Vec::new())
                .unwrap_err()
                .to_string();
            assert!(error.contains(reason), "{days}: {error}");
            assert!(!certs_dir.exists());
        }
    }

    #[test]
    fn list_shows_every_certificate_and_marks_the_ones_expiring_soon() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path();
        make(
            certs,
            CertCommand::CreateCa {
                lifetime_days: None,
            },
        );
        make(
            certs,
            CertCommand::CreateNode {
                hosts: vec!["127.0.0.1".into(), "pms-1.example.net".into()],
                lifetime_days: Some(365),
            },
        );
        make(
            certs,
            CertCommand::CreateSip {
                hosts: vec!["sip.example.net".into()],
                lifetime_days: Some(2),
            },
        );
        let now = pms_crypto::now_unix();
        let mut table = Vec::new();
        list(certs, false, now, &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("FILE"), "{table}");
        let row = |file: &str| {
            *lines
                .iter()
                .find(|line| line.starts_with(file))
                .unwrap_or_else(|| panic!("no row for {file}: {table}"))
        };
        assert!(row("ca.crt").contains("PMS CA "), "{table}");
        assert!(!row("ca.crt").contains('!'), "{table}");
        let node = row("node.crt");
        assert!(
            node.contains(" node ") && node.contains("127.0.0.1,pms-1.example.net"),
            "{table}"
        );
        assert!(!node.contains('!'), "{table}");
        let sip = row("sip.crt");
        assert!(sip.contains("sip.example.net"), "{table}");
        assert!(sip.ends_with("! expires within 30 days"), "{table}");

        // Seen a year on, everything but the CA has expired.
        let mut later = Vec::new();
        list(certs, false, now + 366 * 86_400, &mut later).unwrap();
        let later = String::from_utf8(later).unwrap();
        assert_eq!(later.matches("! EXPIRED").count(), 2, "{later}");

        let mut json = Vec::new();
        list(certs, true, now, &mut json).unwrap();
        let json: Vec<serde_json::Value> = String::from_utf8(json)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(json.len(), 3);
        let sip = json.iter().find(|line| line["file"] == "sip.crt").unwrap();
        assert_eq!(sip["subject"], "sip.example.net");
        assert_eq!(sip["subject_alt_names"][0], "sip.example.net");
        assert_eq!(sip["expires_soon"], true);
        assert_eq!(sip["expired"], false);
        assert!(sip["days_left"].as_i64().unwrap() <= 2);
        assert!(sip["not_after"].as_str().unwrap().ends_with('Z'));
        let node = json.iter().find(|line| line["file"] == "node.crt").unwrap();
        assert_eq!(node["expires_soon"], false);
        assert_eq!(node["issuer"], json[0]["subject"]);
    }

    #[test]
    fn list_reports_an_unreadable_file_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path();
        make(
            certs,
            CertCommand::CreateCa {
                lifetime_days: None,
            },
        );
        std::fs::write(certs.join("broken.crt"), "not a certificate").unwrap();
        let mut table = Vec::new();
        let error = list(certs, false, pms_crypto::now_unix(), &mut table).unwrap_err();
        assert!(
            matches!(error, CertError::Unreadable { unreadable: 1, .. }),
            "{error}"
        );
        let table = String::from_utf8(table).unwrap();
        assert!(
            table
                .lines()
                .any(|line| line.starts_with("broken.crt") && line.contains("! cannot read")),
            "{table}"
        );
        assert!(
            table.lines().any(|line| line.starts_with("ca.crt")),
            "{table}"
        );

        let missing = certs.join("nowhere");
        let error = list(&missing, false, 0, &mut Vec::new()).unwrap_err();
        assert!(
            error.to_string().contains("cannot read certs dir"),
            "{error}"
        );
    }

    #[test]
    fn a_refused_name_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let certs_dir = dir.path().join("certs");
        let command = CertCommand::CreateClient {
            name: "../x".into(),
            lifetime_days: None,
        };
        assert!(run(&certs_dir, &command, false, &mut Vec::new()).is_err());
        assert!(!certs_dir.exists());
    }
}
