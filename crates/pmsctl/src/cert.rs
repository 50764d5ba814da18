//! `pmsctl cert create-ca | create-node HOST... | create-sip HOST... | create-client NAME |
//! create-master-key FILE`: makes the certificates of a CockroachDB-style certs dir
//! (`ca.crt`, `node.crt`/`node.key`, `sip.crt`/`sip.key`, `client.<name>.crt`/`.key`) through
//! `pms-crypto`, the only crate that generates keys. `create-sip` signs the SIP listener's
//! certificate with the cluster CA, for development; production uses one from a public CA.
//!
//! Invariant: names and hosts are validated before anything is written, so a bad argument never
//! leaves a half-made certs dir; a client name becomes part of a file name, so it is restricted
//! to `[a-z0-9._-]` and cannot start with a dot.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Longest client name (it is the certificate's common name and part of a file name).
pub const CLIENT_NAME_BYTES_MAX: usize = 64;
/// Longest host name or address on a node certificate.
pub const HOST_BYTES_MAX: usize = 253;
/// Most hosts on one node certificate.
pub const NODE_HOSTS_MAX: usize = 64;

/// One `pmsctl cert` subcommand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertCommand {
    /// A new cluster CA (`ca.crt`, `ca.key`).
    CreateCa,
    /// A node certificate valid for these host names and IP addresses (its SANs).
    CreateNode { hosts: Vec<String> },
    /// The SIP TLS listener's certificate (server auth only) for the names phones dial.
    CreateSip { hosts: Vec<String> },
    /// A client certificate whose common name is `name` (`admin` for the admin API).
    CreateClient { name: String },
    /// A new cluster master key file (mode 0600), to copy to every node's
    /// `--master-key-file` before they first start; never kept beside the data.
    CreateMasterKey { path: PathBuf },
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

/// Runs one cert command against `certs_dir` (created if missing) and reports to `out`.
pub fn run(certs_dir: &Path, command: &CertCommand, out: &mut dyn Write) -> Result<(), CertError> {
    if let CertCommand::CreateMasterKey { path } = command {
        pms_crypto::MasterKey::write_new(path)?;
        writeln!(out, "created master key {}", path.display())?;
        return Ok(());
    }
    match command {
        CertCommand::CreateCa | CertCommand::CreateMasterKey { .. } => {}
        CertCommand::CreateNode { hosts } | CertCommand::CreateSip { hosts } => {
            validate_hosts(hosts)?
        }
        CertCommand::CreateClient { name } => validate_client_name(name)?,
    }
    std::fs::create_dir_all(certs_dir).map_err(|source| CertError::CreateDir {
        certs_dir: certs_dir.to_path_buf(),
        source,
    })?;
    match command {
        CertCommand::CreateCa => {
            pms_crypto::create_ca(certs_dir)?;
            writeln!(out, "created CA in {}", certs_dir.display())?;
        }
        CertCommand::CreateNode { hosts } => {
            pms_crypto::create_node(certs_dir, hosts)?;
            writeln!(
                out,
                "created node certificate for {} in {}",
                hosts.join(", "),
                certs_dir.display()
            )?;
        }
        CertCommand::CreateSip { hosts } => {
            pms_crypto::create_sip(certs_dir, hosts)?;
            writeln!(
                out,
                "created SIP certificate for {} in {} (signed by the cluster CA: for development; in production use a certificate from a public CA as sip.crt/sip.key)",
                hosts.join(", "),
                certs_dir.display()
            )?;
        }
        CertCommand::CreateClient { name } => {
            pms_crypto::create_client(certs_dir, name)?;
            writeln!(
                out,
                "created client certificate {name:?} in {}",
                certs_dir.display()
            )?;
        }
        CertCommand::CreateMasterKey { .. } => {}
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

    #[test]
    fn a_refused_name_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let certs_dir = dir.path().join("certs");
        let command = CertCommand::CreateClient {
            name: "../x".into(),
        };
        assert!(run(&certs_dir, &command, &mut Vec::new()).is_err());
        assert!(!certs_dir.exists());
    }
}
