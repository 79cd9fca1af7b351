//! Static release binaries and the `FROM scratch` build contexts of our images, made in
//! memory as tar archives: the binary, an /etc/passwd line for the non-root user, and the
//! directories it writes to, owned by that user.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::plan::IMAGE_UID;

pub mod postgres;

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Our binaries, built together.
pub const BINARIES: &[&str] = &["gateway", "admin-server", "customer-services"];
/// Crates whose sources the binaries are built from.
const SOURCES: &[&str] = &[
    "service-kit",
    "admin-server",
    "customer-services",
    "gateway",
    "gateway-config",
    "Cargo.lock",
    "Cargo.toml",
];

pub const LABEL_CONTEXT_HASH: &str = "io.insightserenity.context-hash";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cargo build failed ({status}); last lines:\n{tail}")]
    Build { status: String, tail: String },
    #[error(
        "cannot run cargo: {0} (is Rust installed? or pass --no-build with binaries in place)"
    )]
    Cargo(std::io::Error),
    #[error("{0} is missing: build the static binaries first (devctl up without --no-build)")]
    Missing(PathBuf),
}

pub fn release_dir(repo: &Path) -> PathBuf {
    repo.join("target").join(TARGET).join("release")
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    let mut newest = meta.modified().ok();
    for entry in std::fs::read_dir(path).ok()?.flatten() {
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if let Some(t) = newest_mtime(&entry.path()) {
            newest = Some(newest.map_or(t, |n| n.max(t)));
        }
    }
    newest
}

/// True when every binary exists and is newer than every source file it is built from.
pub fn binaries_up_to_date(repo: &Path) -> bool {
    let dir = release_dir(repo);
    let oldest_binary = BINARIES
        .iter()
        .map(|b| {
            std::fs::metadata(dir.join(b))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect::<Option<Vec<_>>>()
        .and_then(|v| v.into_iter().min());
    let Some(oldest_binary) = oldest_binary else {
        return false;
    };
    let newest_source = SOURCES
        .iter()
        .filter_map(|s| newest_mtime(&repo.join(s)))
        .max();
    newest_source.is_some_and(|s| s <= oldest_binary)
}

/// An in-memory `docker build` context.
pub struct Context {
    builder: tar::Builder<Vec<u8>>,
    dockerfile: Vec<String>,
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl Context {
    pub fn new() -> Context {
        Context {
            builder: tar::Builder::new(Vec::new()),
            dockerfile: vec!["FROM scratch".into()],
        }
    }

    fn header(path: &str, size: u64, mode: u32, dir: bool) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        let _ = h.set_path(path);
        h.set_cksum();
        h
    }

    /// A file under the context root.
    pub fn file(&mut self, path: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
        let mut h = Context::header(path, bytes.len() as u64, mode, false);
        self.builder.append_data(&mut h, path, bytes)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> std::io::Result<()> {
        let mut h = Context::header(path, 0, mode, true);
        self.builder.append_data(&mut h, path, std::io::empty())
    }

    pub fn line(&mut self, line: impl Into<String>) {
        self.dockerfile.push(line.into());
    }

    /// The tar (with its Dockerfile) and a hash of it (label that says the image is current).
    pub fn finish(mut self) -> std::io::Result<(Vec<u8>, String)> {
        let dockerfile = self.dockerfile.join("\n") + "\n";
        self.file("Dockerfile", dockerfile.as_bytes(), 0o644)?;
        let bytes = self.builder.into_inner()?;
        let hash = crate::state::hash_parts([bytes.as_slice()]);
        Ok((bytes, hash))
    }
}

fn passwd() -> (String, String) {
    (
        format!("root:x:0:0:root:/:/sbin/nologin\nnonroot:x:{IMAGE_UID}:{IMAGE_UID}:nonroot:/nonexistent:/sbin/nologin\n"),
        format!("root:x:0:\nnonroot:x:{IMAGE_UID}:\n"),
    )
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    if !path.is_file() {
        return Err(ImageError::Missing(path.to_owned()));
    }
    std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_owned(),
        source,
    })
}

fn io_err(e: std::io::Error) -> ImageError {
    ImageError::Io {
        path: PathBuf::from("<build context>"),
        source: e,
    }
}

/// The context of one of our images: `/usr/local/bin/<binary>`, the user, `/data` and `/tmp`.
pub fn our_context(binary: &str, binary_path: &Path) -> Result<(Vec<u8>, String), ImageError> {
    let bytes = read(binary_path)?;
    let (passwd, group) = passwd();
    let mut c = Context::new();
    c.dir("rootfs/", 0o755).map_err(io_err)?;
    c.dir("rootfs/etc/", 0o755).map_err(io_err)?;
    c.file("rootfs/etc/passwd", passwd.as_bytes(), 0o644)
        .map_err(io_err)?;
    c.file("rootfs/etc/group", group.as_bytes(), 0o644)
        .map_err(io_err)?;
    c.dir("rootfs/usr/local/bin/", 0o755).map_err(io_err)?;
    c.file(&format!("rootfs/usr/local/bin/{binary}"), &bytes, 0o755)
        .map_err(io_err)?;
    c.dir("rootfs/tmp/", 0o1777).map_err(io_err)?;
    c.dir("owned/", 0o755).map_err(io_err)?;
    c.dir("owned/data/", 0o750).map_err(io_err)?;
    c.line("COPY rootfs/ /");
    c.line(format!("COPY --chown={IMAGE_UID}:{IMAGE_UID} owned/ /"));
    c.line(format!("USER {IMAGE_UID}:{IMAGE_UID}"));
    c.line(format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]"));
    c.finish().map_err(io_err)
}

/// Shared libraries a dynamic executable loads (from `ldd`), as (path, real file).
pub fn shared_libraries(binary: &Path) -> Vec<(String, PathBuf)> {
    let Ok(out) = std::process::Command::new("ldd").arg(binary).output() else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let real = std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
            libs.push((p.to_string(), real));
        }
    }
    libs
}

/// An image's root filesystem under `rootfs/` of a context: files with their parent
/// directories (added once), host executables with the libraries they link.
pub(crate) struct RootFs {
    pub(crate) c: Context,
    /// Directories added, and files (`file:PATH`) so a shared library goes in once.
    added: std::collections::BTreeSet<String>,
}

impl RootFs {
    pub(crate) fn new() -> Result<RootFs, ImageError> {
        let mut c = Context::new();
        c.dir("rootfs/", 0o755).map_err(io_err)?;
        Ok(RootFs {
            c,
            added: Default::default(),
        })
    }

    fn parents(&mut self, path: &str) -> std::io::Result<()> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut acc = String::from("rootfs");
        for part in &parts[..parts.len().saturating_sub(1)] {
            acc = format!("{acc}/{part}");
            if self.added.insert(acc.clone()) {
                self.c.dir(&format!("{acc}/"), 0o755)?;
            }
        }
        Ok(())
    }

    /// `bytes` at `path` in the image (a path already added is kept).
    pub(crate) fn bytes(&mut self, path: &str, bytes: &[u8], mode: u32) -> Result<(), ImageError> {
        if !self.added.insert(format!("file:{path}")) {
            return Ok(());
        }
        self.parents(path).map_err(io_err)?;
        self.c
            .file(&format!("rootfs{path}"), bytes, mode)
            .map_err(io_err)
    }

    /// The host file `real` at `path` in the image.
    pub(crate) fn host(&mut self, path: &str, real: &Path, mode: u32) -> Result<(), ImageError> {
        let bytes = read(real)?;
        self.bytes(path, &bytes, mode)
    }

    /// A host executable (or module) at `path` in the image, and every library it links at
    /// its own path.
    pub(crate) fn linked_as(&mut self, path: &str, real: &Path) -> Result<(), ImageError> {
        self.host(path, real, 0o755)?;
        for (lib, lib_real) in shared_libraries(real) {
            self.host(&lib, &lib_real, 0o755)?;
        }
        Ok(())
    }

    /// A host executable at its own path, with its libraries.
    pub(crate) fn linked(&mut self, path: &Path) -> Result<(), ImageError> {
        self.linked_as(&path.to_string_lossy(), path)
    }

    /// Every regular file under a host directory, at the same paths.
    pub(crate) fn tree(&mut self, dir: &Path) -> Result<(), ImageError> {
        let entries = std::fs::read_dir(dir).map_err(|source| ImageError::Io {
            path: dir.to_owned(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                self.tree(&path)?;
            } else if meta.is_file() {
                self.host(&path.to_string_lossy(), &path, 0o644)?;
            }
        }
        Ok(())
    }
}

/// An image of a program from the host (Debian's Prometheus or Alertmanager) with the
/// libraries it links: installed as `/usr/bin/<name>`, run as the image user in `data_dir`.
pub fn host_program_context(
    binary: &Path,
    name: &str,
    data_dir: &str,
    extra_files: &[&str],
) -> Result<(Vec<u8>, String), ImageError> {
    let (passwd, group) = passwd();
    let program = format!("/usr/bin/{name}");
    let mut fs = RootFs::new()?;
    fs.bytes("/etc/passwd", passwd.as_bytes(), 0o644)?;
    fs.bytes("/etc/group", group.as_bytes(), 0o644)?;
    fs.linked_as(&program, binary)?;
    // Files the program reads at run time (Debian's Alertmanager: its notification
    // templates), copied when the host has them.
    for path in extra_files.iter().filter(|p| Path::new(p).is_file()) {
        fs.host(path, Path::new(path), 0o644)?;
    }
    let mut c = fs.c;
    c.dir("rootfs/tmp/", 0o1777).map_err(io_err)?;
    let data = data_dir.trim_matches('/');
    c.dir("owned/", 0o755).map_err(io_err)?;
    c.dir(&format!("owned/{data}/"), 0o755).map_err(io_err)?;
    c.line("COPY rootfs/ /");
    c.line(format!("COPY --chown={IMAGE_UID}:{IMAGE_UID} owned/ /"));
    c.line(format!("USER {IMAGE_UID}:{IMAGE_UID}"));
    c.line(format!("WORKDIR /{data}"));
    c.line(format!("ENTRYPOINT [\"{program}\"]"));
    c.finish().map_err(io_err)
}

/// A program on PATH.
pub fn host_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The directory of the host's PostgreSQL server programs: the one holding `postgres` on PATH,
/// else Debian's newest `/usr/lib/postgresql/<version>/bin`.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let on_path = host_binary("postgres")
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.parent().map(Path::to_path_buf));
    on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|e| {
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("postgres").is_file().then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    })
}

/// One of the host's PostgreSQL programs (`postgres`, `initdb`, `pg_isready`, `pg_dump`...),
/// from the server's directory so versions match.
pub fn postgres_tool(name: &str) -> Option<PathBuf> {
    postgres_bin_dir()
        .map(|d| d.join(name))
        .filter(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_hold_the_binary_the_user_and_a_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("admin-server");
        std::fs::write(&bin, b"\x7fELF fake").unwrap();
        let (tar_bytes, hash) = our_context("admin-server", &bin).unwrap();
        let (_, again) = our_context("admin-server", &bin).unwrap();
        assert_eq!(hash, again, "contexts are reproducible");
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut files = std::collections::BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mode = entry.header().mode().unwrap();
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut entry, &mut text);
            files.insert(path, (mode, text));
        }
        assert_eq!(files["rootfs/usr/local/bin/admin-server"].0, 0o755);
        assert!(files["rootfs/etc/passwd"].1.contains(":65532:65532:"));
        assert!(files.contains_key("owned/data/"));
        let dockerfile = &files["Dockerfile"].1;
        assert!(dockerfile.starts_with("FROM scratch\n"));
        assert!(dockerfile.contains("USER 65532:65532"));
        assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/admin-server\"]"));
        assert!(our_context("x", &dir.path().join("missing")).is_err());
    }
}
