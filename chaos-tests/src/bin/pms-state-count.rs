//! `pms-state-count DB_DIR…`: the exact number of entries per keyspace in each `pmsd` store
//! (`<data-dir>/db`), read through RocksDB while the node runs. The state-size soak
//! (`scripts/state-soak`) prints it beside `pms_state_entries`, which is RocksDB's estimate:
//! that estimate counts every overwrite of a key in a memtable or an unmerged file as one more
//! entry and ignores range deletions (the Raft log's purge) until compaction, so on its own it
//! cannot show that keyspaces with rewritten keys stay bounded.
//!
//! Output: one line per store, `DB_DIR keyspace=count …` in `Keyspace::ALL` order. With
//! `--expiry` first, also one line per group of the expiry index (queued messages by expiry
//! time): `  group=G queued=N oldest=<time> newest=<time> first=<user>/<seq>`, to see whether
//! the expiry sweep keeps up (an oldest expiry far behind the clock means it does not).
//!
//! Invariants:
//! - Invariant: the stores are only read: each is opened as a RocksDB secondary instance
//!   (`RocksStore::open_read_only`) whose own files go to a temporary directory removed on exit.
//! - Invariant: exit code 0 when every store was counted, 2 otherwise (the others are still
//!   printed).

use std::path::Path;
use std::process::ExitCode;

use pms_storage::{RocksStore, Store as _};
use pms_types::Keyspace;

const EXIT_ERROR: u8 = 2;

/// Per group of the expiry index: entries, oldest and newest expiry, and the first entry.
fn expiry_by_group(store: &RocksStore) -> anyhow::Result<Vec<String>> {
    let entries = store
        .scan_prefix_all(Keyspace::Expiry, &[])
        .map_err(|fault| anyhow::anyhow!("scanning expiry: {}", fault.0))?;
    // Key: group (4 bytes) ++ expires_at (8, big-endian ms) ++ user ++ 0 ++ seq (8).
    let mut groups: std::collections::BTreeMap<u32, (usize, u64, u64, String)> =
        std::collections::BTreeMap::new();
    for (key, _) in &entries {
        let (Some(group), Some(at)) = (key.get(..4), key.get(4..12)) else {
            continue;
        };
        let group = u32::from_be_bytes(group.try_into()?);
        let at = u64::from_be_bytes(at.try_into()?);
        let first = match (
            key.get(12..key.len().saturating_sub(9)),
            key.last_chunk::<8>(),
        ) {
            (Some(user), Some(seq)) => format!(
                "{}/{}",
                String::from_utf8_lossy(user),
                u64::from_be_bytes(*seq)
            ),
            _ => "?".to_owned(),
        };
        let entry = groups.entry(group).or_insert((0, at, at, first));
        entry.0 += 1;
        entry.2 = entry.2.max(at);
    }
    Ok(groups
        .into_iter()
        .map(|(group, (queued, oldest, newest, first))| {
            let time = |ms| pms_types::time::rfc3339_millis(pms_types::UnixMillis(ms));
            format!(
                "  group={group} queued={queued} oldest={} newest={} first={first}",
                time(oldest),
                time(newest)
            )
        })
        .collect())
}

fn count(db_dir: &Path, expiry: bool) -> anyhow::Result<String> {
    let secondary = tempfile::tempdir()?;
    let store = RocksStore::open_read_only(db_dir, secondary.path())
        .map_err(|error| anyhow::anyhow!("opening {}: {error}", db_dir.display()))?;
    let mut line = db_dir.display().to_string();
    for keyspace in Keyspace::ALL {
        let entries = store
            .scan_prefix_all(keyspace, &[])
            .map_err(|fault| anyhow::anyhow!("scanning {}: {}", keyspace.name(), fault.0))?
            .len();
        line.push_str(&format!(" {}={entries}", keyspace.name()));
    }
    if expiry {
        for group in expiry_by_group(&store)? {
            line.push('\n');
            line.push_str(&group);
        }
    }
    Ok(line)
}

fn main() -> ExitCode {
    let mut dirs: Vec<String> = std::env::args().skip(1).collect();
    let expiry = dirs.first().is_some_and(|first| first == "--expiry");
    if expiry {
        dirs.remove(0);
    }
    if dirs.is_empty() {
        eprintln!("usage: pms-state-count [--expiry] DB_DIR…  (a pmsd store: <data-dir>/db)");
        return ExitCode::from(EXIT_ERROR);
    }
    let mut failed = false;
    for dir in &dirs {
        match count(Path::new(dir), expiry) {
            Ok(line) => println!("{line}"),
            Err(error) => {
                eprintln!("pms-state-count: {error:#}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    }
}
