//! The ACME storage directory, shared by the gateways of a pair (a shared volume, NFS):
//!
//! ```text
//! account.json      the ACME account (directory URL + credentials), 0600
//! certificate.pem   private key + chain of the current certificate, one file, 0600
//! order.json        the order in progress (URL, domains), so a node taking over resumes it
//! order-key.pem     the key the in-progress order's CSR carries
//! challenges/TOKEN  HTTP-01 key authorizations, served by every node's [http] listener
//! lease.json        who may order now, until when
//! ```
//!
//! Every file is replaced by rename, so a reader sees the old or the new file, never half.
//! The lease makes an order happen once per pair: a node orders only while it holds an
//! unexpired lease, renewing it as it goes; a node that died holding it loses it at expiry.

use std::io::Write;
use std::path::{Path, PathBuf};

use instant_acme::AccountCredentials;
use serde::{Deserialize, Serialize};

use super::{CertSource, Installed};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("acme storage {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("acme storage {path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Who holds the order lease, until when (unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub expires_ms: i64,
}

/// Whether `me` may take (or keep) the lease at `now_ms`: `Err` names the live holder.
pub fn may_take(existing: Option<&Lease>, me: &str, now_ms: i64) -> Result<(), String> {
    match existing {
        Some(lease) if lease.holder != me && lease.expires_ms > now_ms => Err(lease.holder.clone()),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOrder {
    pub url: String,
    pub domains: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

#[derive(Debug, Clone)]
pub struct Storage {
    dir: PathBuf,
}

impl Storage {
    /// Opens (creating when missing, owner-only) the directory and its `challenges/`.
    pub fn open(dir: &Path) -> Result<Storage, StorageError> {
        let challenges = dir.join("challenges");
        std::fs::create_dir_all(&challenges).map_err(io(&challenges))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        Ok(Storage {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `bytes` to `name` by rename (owner-only).
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let path = self.path(name);
        // Next to the target (same directory, same file system: the rename is atomic).
        let file = path
            .file_name()
            .map_or_else(Default::default, |f| f.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{file}.{}.{}", std::process::id(), uuid_like()));
        let result = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io(&path))
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.read(name)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StorageError::Corrupt {
                path: self.path(name),
                detail: e.to_string(),
            })
    }

    fn remove(&self, name: &str) -> Result<(), StorageError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// The stored account, if it was made with `directory`.
    pub fn account(&self, directory: &str) -> Result<Option<AccountCredentials>, StorageError> {
        Ok(self
            .read_json::<StoredAccount>("account.json")?
            .filter(|a| a.directory == directory)
            .map(|a| a.credentials))
    }

    pub fn save_account(
        &self,
        directory: &str,
        credentials: AccountCredentials,
    ) -> Result<(), StorageError> {
        let stored = StoredAccount {
            directory: directory.to_owned(),
            credentials,
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| StorageError::Corrupt {
            path: self.path("account.json"),
            detail: e.to_string(),
        })?;
        self.write("account.json", &json)
    }

    /// The stored certificate; a file that does not parse (or whose key does not match) is
    /// an error the caller logs, and is treated like no certificate.
    pub fn certificate(&self) -> Result<Option<Installed>, StorageError> {
        let Some(pem) = self.read("certificate.pem")? else {
            return Ok(None);
        };
        Installed::from_pem(&pem, &pem, CertSource::Acme, "certificate.pem")
            .map(Some)
            .map_err(|e| StorageError::Corrupt {
                path: self.path("certificate.pem"),
                detail: e.to_string(),
            })
    }

    /// Stores key and chain in one file, in one rename.
    pub fn save_certificate(&self, key_pem: &str, chain_pem: &str) -> Result<(), StorageError> {
        let mut pem = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
        pem.push_str(key_pem.trim_end());
        pem.push('\n');
        pem.push_str(chain_pem);
        self.write("certificate.pem", pem.as_bytes())
    }

    /// Modification time of the stored certificate, to notice a peer's renewal cheaply.
    pub fn certificate_mtime(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.path("certificate.pem"))
            .and_then(|m| m.modified())
            .ok()
    }

    pub fn pending_order(&self) -> Result<Option<PendingOrder>, StorageError> {
        self.read_json("order.json")
    }

    pub fn save_order(&self, order: &PendingOrder) -> Result<(), StorageError> {
        let json = serde_json::to_vec(order).map_err(|e| StorageError::Corrupt {
            path: self.path("order.json"),
            detail: e.to_string(),
        })?;
        self.write("order.json", &json)
    }

    /// The in-progress order's key, created on first use.
    pub fn order_key(&self) -> Result<String, StorageError> {
        if let Some(pem) = self.read("order-key.pem")? {
            if let Ok(pem) = String::from_utf8(pem) {
                if rcgen::KeyPair::from_pem(&pem).is_ok() {
                    return Ok(pem);
                }
            }
        }
        let key = rcgen::KeyPair::generate().map_err(|e| StorageError::Corrupt {
            path: self.path("order-key.pem"),
            detail: e.to_string(),
        })?;
        let pem = key.serialize_pem();
        self.write("order-key.pem", pem.as_bytes())?;
        Ok(pem)
    }

    /// Forgets the finished (or abandoned) order: its URL, key and challenge files.
    pub fn clear_order(&self) -> Result<(), StorageError> {
        self.remove("order.json")?;
        self.remove("order-key.pem")?;
        let dir = self.path("challenges");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Publishes an HTTP-01 key authorization under its token.
    pub fn write_challenge(
        &self,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), StorageError> {
        if !crate::redirect::valid_token(token) {
            return Err(StorageError::Corrupt {
                path: self.path("challenges"),
                detail: format!("the CA sent an unusable token {token:?}"),
            });
        }
        self.write(&format!("challenges/{token}"), key_authorization.as_bytes())
    }

    /// Takes or renews the order lease for `ttl_ms`; `Err(holder)` when another node holds
    /// it. After writing, the file is read back: of two nodes racing for an expired lease,
    /// the one whose rename landed last keeps it and the other sees that.
    pub fn try_lease(
        &self,
        me: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Result<(), String>, StorageError> {
        let existing: Option<Lease> = self.read_json("lease.json").unwrap_or(None);
        if let Err(holder) = may_take(existing.as_ref(), me, now_ms) {
            return Ok(Err(holder));
        }
        let lease = Lease {
            holder: me.to_owned(),
            expires_ms: now_ms + ttl_ms,
        };
        let json = serde_json::to_vec(&lease).map_err(|e| StorageError::Corrupt {
            path: self.path("lease.json"),
            detail: e.to_string(),
        })?;
        self.write("lease.json", &json)?;
        match self.read_json::<Lease>("lease.json")? {
            Some(now) if now.holder == me => Ok(Ok(())),
            Some(now) => Ok(Err(now.holder)),
            None => Ok(Err("nobody (the lease vanished)".into())),
        }
    }

    /// Gives the lease up if `me` holds it.
    pub fn release_lease(&self, me: &str) -> Result<(), StorageError> {
        match self.read_json::<Lease>("lease.json") {
            Ok(Some(lease)) if lease.holder == me => self.remove("lease.json"),
            _ => Ok(()),
        }
    }
}

/// A short random suffix for temporary files.
fn uuid_like() -> String {
    let mut bytes = [0u8; 6];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_lease_of_another_node_blocks_an_expired_one_does_not() {
        let lease = Lease {
            holder: "gateway-1".into(),
            expires_ms: 10_000,
        };
        assert_eq!(may_take(None, "gateway-2", 0), Ok(()));
        assert_eq!(
            may_take(Some(&lease), "gateway-2", 9_999),
            Err("gateway-1".into())
        );
        assert_eq!(may_take(Some(&lease), "gateway-2", 10_000), Ok(()));
        assert_eq!(may_take(Some(&lease), "gateway-1", 5_000), Ok(()));
    }

    #[test]
    fn the_lease_is_taken_once_renewed_by_its_holder_and_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Storage::open(dir.path()).expect("open");
        let b = Storage::open(dir.path()).expect("open");
        assert_eq!(a.try_lease("a", 0, 1000).expect("io"), Ok(()));
        assert_eq!(b.try_lease("b", 500, 1000).expect("io"), Err("a".into()));
        assert_eq!(a.try_lease("a", 900, 1000).expect("io"), Ok(()));
        assert_eq!(b.try_lease("b", 1500, 1000).expect("io"), Err("a".into()));
        // The holder died: at expiry the other node takes over.
        assert_eq!(b.try_lease("b", 1900, 1000).expect("io"), Ok(()));
        b.release_lease("a").expect("io");
        assert_eq!(a.try_lease("a", 2000, 1000).expect("io"), Err("b".into()));
        b.release_lease("b").expect("io");
        assert_eq!(a.try_lease("a", 2000, 1000).expect("io"), Ok(()));
    }

    #[test]
    fn files_are_private_and_a_bad_certificate_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path()).expect("open");
        s.save_certificate("not a key", "not a chain")
            .expect("write");
        assert!(s.certificate().is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("certificate.pem"))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let key = s.order_key().expect("key");
        assert_eq!(s.order_key().expect("same key"), key);
        s.write_challenge("tok-en_1", "tok-en_1.thumb")
            .expect("challenge");
        assert!(s.write_challenge("../x", "y").is_err());
        s.clear_order().expect("clear");
        assert!(std::fs::read_dir(dir.path().join("challenges"))
            .expect("dir")
            .next()
            .is_none());
        assert_ne!(s.order_key().expect("a new key"), key);
    }
}
