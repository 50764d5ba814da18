//! `pmsctl backup DIR` and `pmsctl restore BACKUP --data-dir DIR`.
//!
//! A backup is the directory a node streams (`Admin.Backup`): `db/` (a RocksDB checkpoint of
//! the node's replicas of every group, taken after it applied everything each group had
//! committed when the call began), `mailbox-groups`, and `backup.json` (the node, the time, the
//! mailbox group count and the master key's fingerprint). Messages in it stay sealed: it is as
//! safe as a data dir, and as useless without the cluster's master key.
//!
//! Restore copies a backup into a new data dir; `pmsd --force-new-cluster` then starts it as a
//! one-node cluster, and other nodes join with `pmsctl cluster add-node`.
//!
//! Invariant: neither command writes into a directory that holds anything: a backup never
//! overwrites a backup, and a restore never mixes with a data dir in use.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};
use pms_transport::AdminClient;

use crate::output::report;

/// The manifest a backup carries.
pub const MANIFEST_FILE: &str = "backup.json";

/// Streams a backup of the node at `admin_address` into `dir` (created; must be absent or
/// empty), and says what it wrote: a sentence, or one JSON line when `json` is set.
pub async fn backup(
    admin_address: &str,
    certs_dir: &Path,
    dir: &Path,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    ensure_empty(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let client = AdminClient::connect(admin_address, certs_dir).await?;
    let (files, bytes) = client.backup(dir).await?;
    let manifest = read_manifest(dir)?;
    report(
        out,
        json,
        &serde_json::json!({"command": "backup", "node": manifest["node"],
            "dir": dir.display().to_string(), "files": files, "bytes": bytes,
            "master_key_fingerprint": manifest["master_key_fingerprint"]}),
        format_args!(
            "backup of node {} written to {}: {files} files, {bytes} bytes (master key fingerprint {})",
            manifest["node"],
            dir.display(),
            manifest["master_key_fingerprint"].as_str().unwrap_or("?"),
        ),
    )?;
    Ok(())
}

/// Copies the backup in `backup` into the new data dir `data_dir` (absent or empty), and says
/// what to do next: a sentence, or one JSON line when `json` is set.
pub fn restore(
    backup: &Path,
    data_dir: &Path,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let manifest = read_manifest(backup)?;
    ensure!(
        backup.join("db").join("CURRENT").exists(),
        "{} holds no RocksDB checkpoint (db/CURRENT): is it a `pmsctl backup` directory?",
        backup.display()
    );
    ensure_empty(data_dir)?;
    copy_tree(&backup.join("db"), &data_dir.join("db"))?;
    std::fs::copy(
        backup.join("mailbox-groups"),
        data_dir.join("mailbox-groups"),
    )
    .context("copying mailbox-groups")?;
    set_private(data_dir)?;
    report(
        out,
        json,
        &serde_json::json!({"command": "restore", "node": manifest["node"],
            "data_dir": data_dir.display().to_string(),
            "master_key_fingerprint": manifest["master_key_fingerprint"]}),
        format_args!(
            "restored the backup of node {} into {}. Start it as a one-node cluster with the cluster's master key (fingerprint {}): pmsd --data-dir {} --force-new-cluster --node-id N --master-key-file FILE ...; then add the other nodes with `pmsctl cluster add-node`.",
            manifest["node"],
            data_dir.display(),
            manifest["master_key_fingerprint"].as_str().unwrap_or("?"),
            data_dir.display(),
        ),
    )?;
    Ok(())
}

fn read_manifest(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is it a `pmsctl backup` directory?)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn ensure_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: give a new directory (nothing is overwritten)",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("reading {}", dir.display())),
    }
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The data dir is the node's alone, like the one `pmsd` creates.
fn set_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}
