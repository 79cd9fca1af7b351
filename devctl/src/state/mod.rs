//! The state dir: the CA (made once, reused), issued leaves, shared secrets, `scale`
//! overrides, Prometheus target files, and the process runtime's files, PIDs and logs.
//! Every file is written whole with a temp file + rename, so readers never see half a file
//! and a failed command leaves the previous file as it was.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::Secrets;

mod certs;
mod files;

pub use certs::{Certs, Leaf, Reissue};
pub use files::{files_hash, hash_parts, materialize, render_to, write_targets, FileBytes};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("certificates: {0}")]
    Pki(#[from] service_kit::pki::PkiError),
    #[error("cannot generate random bytes")]
    Random,
    #[error("token signing key: {0}")]
    Auth(#[from] service_kit::auth::AuthError),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temp file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        let mut f = options.open(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn random_hex(bytes: usize) -> Result<String, StateError> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| StateError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn to_json<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct SecretsFile {
    ha: String,
    sticky: String,
    /// The database role's password (added later: absent in older state dirs, then made).
    #[serde(default)]
    database: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleFile {
    /// deployment → pool → instances.
    #[serde(default)]
    deployments: BTreeMap<String, BTreeMap<String, usize>>,
}

/// What `reset_scale` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleReset {
    /// There was nothing to reset.
    Unchanged,
    /// The deployment's overrides were removed.
    Cleared,
    /// The file could not be read as a scale file and was moved aside to this path.
    MovedAside(PathBuf),
}

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> StateDir {
        StateDir { root }
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.root.join("certs")
    }
    pub fn ca_path(&self) -> PathBuf {
        self.certs_dir().join("ca.crt")
    }
    pub fn targets_dir(&self) -> PathBuf {
        self.root.join("prometheus-targets")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn scale_path(&self) -> PathBuf {
        self.root.join("scale.json")
    }
    pub fn signing_key_path(&self) -> PathBuf {
        self.root.join("auth").join("signing.key")
    }

    /// The deployment's token signing key (Ed25519, PKCS#8): made once, then reused. Only
    /// its public half (the JWKS) goes to the services.
    pub fn signing_key(&self) -> Result<service_kit::auth::SigningKey, StateError> {
        use service_kit::auth::SigningKey;
        let path = self.signing_key_path();
        match std::fs::read_to_string(&path) {
            Ok(pem) => Ok(SigningKey::from_pem(&pem).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate()?;
                write_atomic(&path, key.to_pem().as_bytes(), true)?;
                Ok(key)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The deployment's shared secrets (gateways' HA and sticky keys, the database password):
    /// made once, then reused; one missing from an older file is made and saved.
    pub fn secrets(&self) -> Result<Secrets, StateError> {
        let path = self.secrets_path();
        let mut file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SecretsFile {
                ha: String::new(),
                sticky: String::new(),
                database: String::new(),
            },
            Err(e) => return Err(io(&path)(e)),
        };
        let mut changed = false;
        for (value, len) in [
            (&mut file.ha, 24),
            (&mut file.sticky, 32),
            (&mut file.database, 24),
        ] {
            if value.is_empty() {
                *value = random_hex(len)?;
                changed = true;
            }
        }
        if changed {
            write_atomic(&path, &to_json(&path, &file)?, true)?;
        }
        Ok(Secrets {
            ha: file.ha,
            sticky: file.sticky,
            database: file.database,
            jwks: self.jwks()?,
        })
    }

    /// Puts back the gateways' secrets from a backup's `secrets.json`; the database password
    /// stays (it is the one the running server's data knows).
    pub fn restore_secrets(&self, bytes: &[u8]) -> Result<(), StateError> {
        let path = self.secrets_path();
        let restored: SecretsFile =
            serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
                path: PathBuf::from("backup: secrets.json"),
                message: e.to_string(),
            })?;
        let current = self.secrets()?;
        let file = SecretsFile {
            ha: restored.ha,
            sticky: restored.sticky,
            database: current.database,
        };
        write_atomic(&path, &to_json(&path, &file)?, true)
    }

    /// Removes every leaf certificate (the CA stays), so the next issue makes new ones.
    pub fn forget_leaves(&self) -> Result<(), StateError> {
        let dir = self.certs_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name != "ca.crt" && name != "ca.key" {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }

    /// `images.json`: the digests `devctl images push` pinned.
    pub fn pins_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    /// The pinned digests (none when nothing was pushed).
    pub fn pins(&self) -> Result<crate::registry::Pins, StateError> {
        let path = self.pins_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    pub fn set_pins(&self, pins: &crate::registry::Pins) -> Result<(), StateError> {
        let path = self.pins_path();
        write_atomic(&path, &to_json(&path, pins)?, false)
    }

    pub fn secrets_path(&self) -> PathBuf {
        self.root.join("secrets.json")
    }

    /// The public keys services verify tokens with.
    fn jwks(&self) -> Result<String, StateError> {
        Ok(service_kit::auth::jwks_json(&[&self.signing_key()?]))
    }

    fn scale_file(&self) -> Result<ScaleFile, StateError> {
        let path = self.scale_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path,
                message: format!("not a scale file ({e})"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ScaleFile::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Pool sizes set by `devctl scale` for a deployment.
    pub fn scale(&self, deployment: &str) -> Result<BTreeMap<String, usize>, StateError> {
        Ok(self
            .scale_file()?
            .deployments
            .remove(deployment)
            .unwrap_or_default())
    }

    /// Replaces a deployment's overrides (an empty map removes its entry). Callers validate
    /// the overrides against the topology first: this writes what it is given.
    pub fn set_scale(
        &self,
        deployment: &str,
        overrides: &BTreeMap<String, usize>,
    ) -> Result<(), StateError> {
        let mut f = self.scale_file()?;
        if overrides.is_empty() {
            f.deployments.remove(deployment);
        } else {
            f.deployments
                .insert(deployment.to_string(), overrides.clone());
        }
        let path = self.scale_path();
        write_atomic(&path, &to_json(&path, &f)?, false)
    }

    /// `down`: the deployment goes back to the topology's pool sizes. A file that cannot be
    /// read is moved aside (other deployments' entries in it cannot be trusted either).
    pub fn reset_scale(&self, deployment: &str) -> Result<ScaleReset, StateError> {
        let path = self.scale_path();
        match self.scale_file() {
            Ok(f) if !f.deployments.contains_key(deployment) => Ok(ScaleReset::Unchanged),
            Ok(_) => {
                self.set_scale(deployment, &BTreeMap::new())?;
                Ok(ScaleReset::Cleared)
            }
            Err(StateError::Corrupt { .. }) => {
                let aside = self.root.join("scale.json.invalid");
                std::fs::rename(&path, &aside).map_err(io(&path))?;
                Ok(ScaleReset::MovedAside(aside))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_and_secrets_persist() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().to_path_buf());
        let a = state.secrets().unwrap();
        let b = state.secrets().unwrap();
        assert_eq!(a.ha, b.ha);
        assert!(a.ha.len() >= 32 && a.sticky.len() >= 32);
        assert_eq!(a.jwks, b.jwks, "the signing key is made once");
        assert!(
            a.jwks.contains("\"OKP\"") && a.jwks.contains("Ed25519"),
            "{}",
            a.jwks
        );
        assert!(!a.jwks.contains("\"d\""), "no private part in the JWKS");
        let six = BTreeMap::from([("admin".to_string(), 6)]);
        state.set_scale("dev", &six).unwrap();
        assert_eq!(state.scale("dev").unwrap()["admin"], 6);
        assert!(state.scale("production").unwrap().is_empty());
        assert_eq!(state.reset_scale("dev").unwrap(), ScaleReset::Cleared);
        assert!(state.scale("dev").unwrap().is_empty());
        assert_eq!(state.reset_scale("dev").unwrap(), ScaleReset::Unchanged);
    }

    #[test]
    fn an_unreadable_scale_file_is_named_and_moved_aside_on_reset() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().to_path_buf());
        std::fs::write(state.scale_path(), "{not json").unwrap();
        let err = state.scale("dev").unwrap_err().to_string();
        assert!(
            err.contains("scale.json") && err.contains("not a scale file"),
            "{err}"
        );
        let ScaleReset::MovedAside(aside) = state.reset_scale("dev").unwrap() else {
            panic!("not moved aside");
        };
        assert_eq!(std::fs::read_to_string(aside).unwrap(), "{not json");
        assert!(state.scale("dev").unwrap().is_empty());
    }
}
