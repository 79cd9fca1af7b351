//! The backup archive `devctl backup` writes and `devctl restore` reads: a tar holding
//! `backup.json` (what it is), one dump per pool under `stores/` (PostgreSQL's custom format)
//! and the state dir's CA, token signing key and shared secrets under `state/`. Pure: bytes
//! in, bytes out.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::topology::StoreKind;

/// The archive format this devctl writes and reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub deployment: String,
    pub store: StoreKind,
    /// Unix seconds.
    pub created: u64,
    /// Pool → database name, in the order dumped.
    pub databases: Vec<(String, String)>,
    /// The devctl that wrote it.
    pub devctl: String,
}

/// An archive in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub manifest: Manifest,
    /// Pool → its store's dump.
    pub stores: BTreeMap<String, Vec<u8>>,
    /// Path relative to the state dir → bytes.
    pub state: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a devctl backup: {0}")]
    NotABackup(String),
    #[error("backup format {found} is not one this devctl reads ({FORMAT}): use the devctl that wrote it")]
    Format { found: u32 },
    #[error("the backup has no dump for pool {0} that its manifest names")]
    MissingDump(String),
    #[error("reading the archive: {0}")]
    Io(#[from] std::io::Error),
}

fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, bytes)
}

/// A relative path with no `..`, no root and nothing odd in it.
fn safe(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_'))
}

impl Backup {
    pub fn to_tar(&self) -> Result<Vec<u8>, BackupError> {
        let mut b = tar::Builder::new(Vec::new());
        let manifest = serde_json::to_vec_pretty(&self.manifest)
            .map_err(|e| BackupError::NotABackup(e.to_string()))?;
        append(&mut b, "backup.json", &manifest)?;
        for (pool, bytes) in &self.stores {
            append(&mut b, &format!("stores/{pool}.dump"), bytes)?;
        }
        for (path, bytes) in &self.state {
            append(&mut b, &format!("state/{path}"), bytes)?;
        }
        Ok(b.into_inner()?)
    }

    pub fn from_tar(bytes: &[u8]) -> Result<Backup, BackupError> {
        let mut archive = tar::Archive::new(bytes);
        let mut manifest = None;
        let mut stores = BTreeMap::new();
        let mut state = BTreeMap::new();
        let entries = archive
            .entries()
            .map_err(|e| BackupError::NotABackup(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| BackupError::NotABackup(e.to_string()))?;
            let path = entry.path()?.to_string_lossy().into_owned();
            if !safe(&path) {
                return Err(BackupError::NotABackup(format!("unsafe path {path:?}")));
            }
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            if path == "backup.json" {
                let m: Manifest = serde_json::from_slice(&data)
                    .map_err(|e| BackupError::NotABackup(format!("backup.json: {e}")))?;
                manifest = Some(m);
            } else if let Some(pool) = path
                .strip_prefix("stores/")
                .and_then(|p| p.strip_suffix(".dump"))
            {
                stores.insert(pool.to_string(), data);
            } else if let Some(rel) = path.strip_prefix("state/") {
                state.insert(rel.to_string(), data);
            }
        }
        let manifest = manifest.ok_or_else(|| BackupError::NotABackup("no backup.json".into()))?;
        if manifest.format != FORMAT {
            return Err(BackupError::Format {
                found: manifest.format,
            });
        }
        for (pool, _) in &manifest.databases {
            if !stores.contains_key(pool) {
                return Err(BackupError::MissingDump(pool.clone()));
            }
        }
        Ok(Backup {
            manifest,
            stores,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Backup {
        Backup {
            manifest: Manifest {
                format: FORMAT,
                deployment: "dev".into(),
                store: StoreKind::Postgres,
                created: 1,
                databases: vec![("admin".into(), "admin".into())],
                devctl: "0.1.0".into(),
            },
            stores: BTreeMap::from([("admin".into(), b"PGDMP...".to_vec())]),
            state: BTreeMap::from([("certs/ca.crt".into(), b"-----BEGIN".to_vec())]),
        }
    }

    #[test]
    fn an_archive_reads_back_as_written() {
        let b = sample();
        assert_eq!(Backup::from_tar(&b.to_tar().unwrap()).unwrap(), b);
    }

    #[test]
    fn bad_archives_are_refused_with_the_reason() {
        let err = Backup::from_tar(b"not a tar at all")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a devctl backup"), "{err}");

        let mut b = sample();
        b.manifest.format = 99;
        let err = Backup::from_tar(&b.to_tar().unwrap()).unwrap_err();
        assert!(matches!(err, BackupError::Format { found: 99 }), "{err}");

        let mut b = sample();
        b.stores.clear();
        let err = Backup::from_tar(&b.to_tar().unwrap()).unwrap_err();
        assert!(
            matches!(err, BackupError::MissingDump(ref p) if p == "admin"),
            "{err}"
        );
    }

    #[test]
    fn only_plain_relative_paths_are_read() {
        for ok in ["backup.json", "stores/admin.dump", "state/certs/ca.crt"] {
            assert!(safe(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "state/../x",
            "a//b",
            "./a",
            "a b",
            "state/\\x",
        ] {
            assert!(!safe(bad), "{bad}");
        }
    }
}
