//! The data dir's identity file (`<data-dir>/identity`): which node of which cluster this data
//! dir belongs to (issue 9 item 2).
//!
//! ```text
//! node-id = 1
//! cluster-id = 5f0c…   (32 hex digits; absent until the cluster id is known)
//! ```
//!
//! Invariant: the node id is written at the data dir's first start and never changes; a start
//! with another `--node-id` is refused before anything is opened. The cluster id is written
//! once, when this node first learns it from the directory (bootstrap, or after `add-node`),
//! and a directory that records another id is refused.
//! Invariant: the file is replaced atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves the old or the new content, never a torn one.
//! Invariant: a data dir from before identity files adopts `--node-id` and the cluster id its
//! directory replica recorded (if any).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use pms_types::NodeId;

/// The identity file's name in the data dir.
pub const IDENTITY_FILE: &str = "identity";
/// Largest identity file read (it holds two short lines).
const IDENTITY_FILE_BYTES_MAX: u64 = 4 * 1024;

/// What the identity file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDirIdentity {
    pub node_id: NodeId,
    pub cluster_id: Option<String>,
}

impl DataDirIdentity {
    fn render(&self) -> String {
        let mut text = format!(
            "# Which node of which PMS cluster this data dir belongs to. Do not edit or copy.\nnode-id = {}\n",
            self.node_id
        );
        if let Some(cluster) = &self.cluster_id {
            text.push_str(&format!("cluster-id = {cluster}\n"));
        }
        text
    }

    fn parse(path: &Path, text: &str) -> anyhow::Result<Self> {
        let mut node_id = None;
        let mut cluster_id = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .map(|(key, value)| (key.trim(), value.trim()))
                .with_context(|| format!("{}: unreadable line {line:?}", path.display()))?;
            match key {
                "node-id" => {
                    node_id = Some(NodeId(value.parse().with_context(|| {
                        format!("{}: node-id {value:?} is not a number", path.display())
                    })?));
                }
                "cluster-id" if pms_transport::internal::identity::is_valid_cluster_id(value) => {
                    cluster_id = Some(value.to_owned());
                }
                _ => anyhow::bail!("{}: unexpected line {line:?}", path.display()),
            }
        }
        Ok(DataDirIdentity {
            node_id: node_id.with_context(|| format!("{}: no node-id line", path.display()))?,
            cluster_id,
        })
    }
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE)
}

/// Reads the identity file, `None` when the data dir has none yet.
pub fn read(data_dir: &Path) -> anyhow::Result<Option<DataDirIdentity>> {
    let path = path(data_dir);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, IDENTITY_FILE_BYTES_MAX),
        &mut text,
    )
    .with_context(|| format!("reading {}", path.display()))?;
    DataDirIdentity::parse(&path, &text).map(Some)
}

/// Writes the identity file atomically and durably.
pub fn write(data_dir: &Path, identity: &DataDirIdentity) -> anyhow::Result<()> {
    let path = path(data_dir);
    let temporary = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(identity.render().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Checks the data dir belongs to `node_id` (writing the file at the first start) and returns
/// the cluster id it records, if any.
pub fn check_node(data_dir: &Path, node_id: NodeId) -> anyhow::Result<Option<String>> {
    match read(data_dir)? {
        Some(identity) if identity.node_id != node_id => {
            let cluster = identity.cluster_id.as_deref().unwrap_or("(not yet known)");
            anyhow::bail!(
                "this data dir ({}) belongs to node {} of cluster {cluster}, not to node {node_id}: start it with --node-id {}, or use another --data-dir for node {node_id}",
                data_dir.display(),
                identity.node_id,
                identity.node_id,
            );
        }
        Some(identity) => Ok(identity.cluster_id),
        None => {
            write(
                data_dir,
                &DataDirIdentity {
                    node_id,
                    cluster_id: None,
                },
            )?;
            Ok(None)
        }
    }
}

/// Records `cluster_id` in the data dir, or refuses when the data dir records another.
pub fn record_cluster(data_dir: &Path, node_id: NodeId, cluster_id: &str) -> anyhow::Result<()> {
    let recorded = read(data_dir)?.and_then(|identity| identity.cluster_id);
    match recorded {
        Some(recorded) if recorded == cluster_id => Ok(()),
        Some(recorded) => anyhow::bail!(
            "this data dir ({}) belongs to cluster {recorded}, but the cluster it reached is {cluster_id}: a data dir cannot move between clusters. Start this node with the --peers of its own cluster, or with a fresh --data-dir and --join to add it to cluster {cluster_id}",
            data_dir.display()
        ),
        None => write(
            data_dir,
            &DataDirIdentity {
                node_id,
                cluster_id: Some(cluster_id.to_owned()),
            },
        ),
    }
}

/// A new random cluster id: 128 bits as 32 hex digits.
pub fn new_cluster_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_records_the_node_and_another_node_id_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            check_node(dir.path(), NodeId(1)).expect("first start"),
            None
        );
        let cluster = new_cluster_id();
        assert_eq!(cluster.len(), 32);
        record_cluster(dir.path(), NodeId(1), &cluster).expect("record");
        assert_eq!(
            check_node(dir.path(), NodeId(1)).expect("same node"),
            Some(cluster.clone())
        );
        let refused = check_node(dir.path(), NodeId(2)).expect_err("another node id");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("belongs to node 1 of cluster {cluster}"))
                && message.contains("--node-id 1"),
            "{message}"
        );
        let other =
            record_cluster(dir.path(), NodeId(1), &new_cluster_id()).expect_err("another cluster");
        assert!(other.to_string().contains("cannot move between clusters"));
    }
}
