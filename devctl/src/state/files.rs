//! Files derived from a plan: each instance's files resolved to bytes, Prometheus's target
//! files, `devctl render`'s output tree, and the content hashes that say what changed.

use std::path::{Path, PathBuf};

use super::{io, write_atomic, Certs, StateError};
use crate::plan::{FileSource, Instance, Plan};

/// One of an instance's files with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBytes {
    /// Relative to the instance's `config_dir`.
    pub path: String,
    pub bytes: Vec<u8>,
    /// A key: readable by its owner only.
    pub private: bool,
    /// Re-read by the running instance on SIGHUP.
    pub reloadable: bool,
}

/// Resolves an instance's planned files to bytes.
pub fn materialize(instance: &Instance, certs: &Certs) -> Vec<FileBytes> {
    instance
        .files
        .iter()
        .map(|f| {
            let leaf = |name: &str| certs.leaves.get(name);
            let (bytes, private) = match &f.source {
                FileSource::Text(t) => (t.clone().into_bytes(), false),
                FileSource::Secret(t) => (t.clone().into_bytes(), true),
                FileSource::CaCert => (certs.ca.clone().into_bytes(), false),
                FileSource::Cert(n) => (
                    leaf(n)
                        .map(|l| l.cert.clone())
                        .unwrap_or_default()
                        .into_bytes(),
                    false,
                ),
                FileSource::Key(n) => (
                    leaf(n)
                        .map(|l| l.key.clone())
                        .unwrap_or_default()
                        .into_bytes(),
                    true,
                ),
            };
            FileBytes {
                path: f.path.clone(),
                bytes,
                private,
                reloadable: f.reloadable,
            }
        })
        .collect()
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

/// Hash of the files selected by `reloadable` (paths and bytes).
pub fn files_hash(files: &[FileBytes], reloadable: bool) -> String {
    hash_parts(
        files
            .iter()
            .filter(|f| f.reloadable == reloadable)
            .flat_map(|f| [f.path.as_bytes(), f.bytes.as_slice()]),
    )
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
        for f in materialize(instance, certs) {
            let path = out.join(&instance.name).join(&f.path);
            write_atomic(&path, &f.bytes, f.private && root)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_separate_their_parts() {
        assert_ne!(
            hash_parts([&b"a"[..], b"bc"]),
            hash_parts([&b"ab"[..], b"c"])
        );
        let file = |path: &str, reloadable: bool| FileBytes {
            path: path.into(),
            bytes: b"x".to_vec(),
            private: false,
            reloadable,
        };
        let files = [file("gateway.toml", true), file("tls/ca.crt", false)];
        assert_ne!(files_hash(&files, true), files_hash(&files, false));
        assert_eq!(
            files_hash(&files[..1], true),
            files_hash(&files, true),
            "only the selected files count"
        );
    }
}
