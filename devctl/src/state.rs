//! The state dir: the CA (made once, reused), issued leaves, shared secrets, `scale`
//! overrides, Prometheus target files, and the process runtime's files, PIDs and logs.
//! Every file is written with a temp file + rename, so readers never see half a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::{CertSpec, FileSource, Instance, Plan, Secrets};

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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
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

#[derive(Debug, Serialize, Deserialize)]
struct SecretsFile {
    ha: String,
    sticky: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ScaleFile {
    /// deployment → pool → instances.
    #[serde(default)]
    deployments: BTreeMap<String, BTreeMap<String, usize>>,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

/// Issued certificate material, by `CertSpec::name`.
#[derive(Debug, Clone, Default)]
pub struct Certs {
    pub ca: String,
    pub leaves: BTreeMap<String, (String, String)>,
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

    /// The gateways' shared secrets: made once, then reused.
    pub fn secrets(&self) -> Result<Secrets, StateError> {
        let path = self.root.join("secrets.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let s: SecretsFile =
                    serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                Ok(Secrets {
                    ha: s.ha,
                    sticky: s.sticky,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let s = SecretsFile {
                    ha: random_hex(24)?,
                    sticky: random_hex(32)?,
                };
                let text = serde_json::to_vec_pretty(&s).map_err(|e| StateError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                write_atomic(&path, &text, true)?;
                Ok(Secrets {
                    ha: s.ha,
                    sticky: s.sticky,
                })
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn scale_file(&self) -> Result<ScaleFile, StateError> {
        let path = self.root.join("scale.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path,
                message: e.to_string(),
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

    pub fn set_scale(&self, deployment: &str, pool: &str, n: usize) -> Result<(), StateError> {
        let mut f = self.scale_file()?;
        f.deployments
            .entry(deployment.to_string())
            .or_default()
            .insert(pool.to_string(), n);
        let path = self.root.join("scale.json");
        let text = serde_json::to_vec_pretty(&f).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &text, false)
    }

    pub fn clear_scale(&self, deployment: &str) -> Result<(), StateError> {
        let mut f = self.scale_file()?;
        if f.deployments.remove(deployment).is_some() {
            let path = self.root.join("scale.json");
            let text = serde_json::to_vec_pretty(&f).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
            write_atomic(&path, &text, false)?;
        }
        Ok(())
    }

    /// Loads the CA (or makes it), and issues every leaf the plan names that is missing or
    /// whose names changed; `force` reissues every leaf (the CA stays).
    pub fn issue(&self, plan: &Plan, ca_name: &str, force: bool) -> Result<Certs, StateError> {
        use service_kit::pki::{CertificateAuthority, LeafSpec};
        let dir = self.certs_dir();
        let ca_crt = dir.join("ca.crt");
        let ca_key = dir.join("ca.key");
        let ca = match (
            std::fs::read_to_string(&ca_crt),
            std::fs::read_to_string(&ca_key),
        ) {
            (Ok(c), Ok(k)) => CertificateAuthority::from_pem(&c, &k)?,
            _ => {
                let ca = CertificateAuthority::generate(ca_name)?;
                write_atomic(&ca_key, ca.key_pem.as_bytes(), true)?;
                write_atomic(&ca_crt, ca.cert_pem.as_bytes(), false)?;
                ca
            }
        };
        let mut certs = Certs {
            ca: ca.cert_pem.clone(),
            leaves: BTreeMap::new(),
        };
        for spec in &plan.certificates {
            let (crt, key, names) = leaf_paths(&dir, spec);
            let wanted = spec.sans.join("\n");
            let current = (
                std::fs::read_to_string(&crt),
                std::fs::read_to_string(&key),
                std::fs::read_to_string(&names),
            );
            match current {
                (Ok(c), Ok(k), Ok(n)) if !force && n == wanted => {
                    certs.leaves.insert(spec.name.clone(), (c, k));
                }
                _ => {
                    let sans: Vec<&str> = spec.sans.iter().map(String::as_str).collect();
                    let issued = ca.issue(&LeafSpec::new(&spec.common_name, &sans))?;
                    write_atomic(&key, issued.key_pem.as_bytes(), true)?;
                    write_atomic(&crt, issued.cert_pem.as_bytes(), false)?;
                    write_atomic(&names, wanted.as_bytes(), false)?;
                    certs
                        .leaves
                        .insert(spec.name.clone(), (issued.cert_pem, issued.key_pem));
                }
            }
        }
        Ok(certs)
    }
}

fn leaf_paths(dir: &Path, spec: &CertSpec) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(format!("{}.crt", spec.name)),
        dir.join(format!("{}.key", spec.name)),
        dir.join(format!("{}.names", spec.name)),
    )
}

/// One file of an instance with its bytes: (path relative to config_dir, bytes, private).
pub type Materialized = Vec<(String, Vec<u8>, bool)>;

/// Resolves an instance's planned files to bytes.
pub fn materialize(instance: &Instance, certs: &Certs) -> Materialized {
    instance
        .files
        .iter()
        .map(|f| {
            let (bytes, private) = match &f.source {
                FileSource::Text(t) => (t.clone().into_bytes(), false),
                FileSource::CaCert => (certs.ca.clone().into_bytes(), false),
                FileSource::Cert(n) => (
                    certs
                        .leaves
                        .get(n)
                        .map(|(c, _)| c.clone())
                        .unwrap_or_default()
                        .into_bytes(),
                    false,
                ),
                FileSource::Key(n) => (
                    certs
                        .leaves
                        .get(n)
                        .map(|(_, k)| k.clone())
                        .unwrap_or_default()
                        .into_bytes(),
                    true,
                ),
            };
            (f.path.clone(), bytes, private)
        })
        .collect()
}

/// Writes Prometheus's file_sd files into `dir` (temp file + rename each) and removes
/// target files the plan no longer has.
pub fn write_targets(dir: &Path, plan: &Plan) -> Result<(), StateError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (name, text) in &plan.targets {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            write_atomic(&path, text.as_bytes(), false)?;
        }
    }
    let entries = std::fs::read_dir(dir).map_err(io(dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !plan.targets.iter().any(|(n, _)| *n == name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// `devctl render`: every instance's files under `out/<instance>/` (the layout the compose
/// file mounts) and Prometheus's targets under `out/prometheus/targets/`.
///
/// The files are bind-mounted into containers whose user is uid 65532: as root, devctl hands
/// them to that uid (keys stay 0600); otherwise keys are left readable (0644) so the
/// container can read them.
pub fn render_to(out: &Path, plan: &Plan, certs: &Certs) -> Result<Vec<PathBuf>, StateError> {
    let root = nix::unistd::geteuid().is_root();
    let mut written = Vec::new();
    for instance in &plan.instances {
        for (rel, bytes, private) in materialize(instance, certs) {
            let path = out.join(&instance.name).join(&rel);
            write_atomic(&path, &bytes, private && root)?;
            if root {
                hand_over(&out.join(&instance.name), &path)?;
            }
            written.push(path);
        }
    }
    let targets = out.join("prometheus").join("targets");
    write_targets(&targets, plan)?;
    for (name, _) in &plan.targets {
        written.push(targets.join(name));
    }
    Ok(written)
}

/// chown `path` and its parents up to `top` to the image user.
fn hand_over(top: &Path, path: &Path) -> Result<(), StateError> {
    let uid = Some(crate::plan::IMAGE_UID);
    for p in path.ancestors().take_while(|p| p.starts_with(top)) {
        std::os::unix::fs::chown(p, uid, uid).map_err(io(p))?;
    }
    Ok(())
}

/// SHA-256 of some byte strings, hex (labels that tell whether a container is current).
pub fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    ctx.finish()
        .as_ref()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
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
        state.set_scale("dev", "admin", 6).unwrap();
        assert_eq!(state.scale("dev").unwrap()["admin"], 6);
        assert!(state.scale("production").unwrap().is_empty());
        state.clear_scale("dev").unwrap();
        assert!(state.scale("dev").unwrap().is_empty());
        assert_ne!(
            hash_parts([&b"a"[..], b"bc"]),
            hash_parts([&b"ab"[..], b"c"])
        );
    }
}
