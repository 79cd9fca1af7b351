//! A local PostgreSQL image from the host's Debian packages, for machines where the
//! topology's image (`postgres:16`) is neither present nor pullable: the server and its
//! tools at their host paths with the libraries they link, the share and module directories,
//! `/bin/sh` (initdb runs the server through it) and an entrypoint that keeps the official
//! image's contract (`POSTGRES_USER`, `POSTGRES_PASSWORD_FILE`, `PGDATA`; the first start
//! initializes the data directory).

use std::path::{Path, PathBuf};

use super::{io_err, ImageError, RootFs};
use crate::plan::POSTGRES_UID;

/// The programs the image carries (devctl's provisioning, backup and restore use them).
const PROGRAMS: &[&str] = &[
    "postgres",
    "initdb",
    "pg_isready",
    "psql",
    "pg_dump",
    "pg_restore",
];

/// The entrypoint (run by the host's dash as `/bin/sh`).
const ENTRYPOINT: &str = r#"#!/bin/sh
# devctl's local PostgreSQL image: the official image's contract, reduced to what devctl uses.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb --pgdata="$PGDATA" --username="${POSTGRES_USER:-postgres}" \
        --pwfile="$POSTGRES_PASSWORD_FILE" --auth=scram-sha-256 \
        --encoding=UTF8 --locale=C >&2
fi
if [ "${1:-}" = postgres ]; then
    shift
fi
exec postgres "$@"
"#;

/// Where Debian keeps the version's share directory, from the bin directory
/// (`/usr/lib/postgresql/15/bin` → `/usr/share/postgresql/15`).
fn share_dir(bin: &Path) -> Option<PathBuf> {
    let version = bin.parent()?.file_name()?;
    Some(Path::new("/usr/share/postgresql").join(version))
}

/// The build context of the local PostgreSQL image from the host's `bin` directory.
pub fn context(bin: &Path) -> Result<(Vec<u8>, String), ImageError> {
    let lib = bin
        .parent()
        .map(|p| p.join("lib"))
        .ok_or_else(|| ImageError::Missing(bin.to_owned()))?;
    let share = share_dir(bin).ok_or_else(|| ImageError::Missing(bin.to_owned()))?;
    let mut fs = RootFs::new()?;
    let uid = POSTGRES_UID;
    let passwd = format!(
        "root:x:0:0:root:/:/sbin/nologin\npostgres:x:{uid}:{uid}:PostgreSQL:/var/lib/postgresql:/bin/sh\n"
    );
    fs.bytes("/etc/passwd", passwd.as_bytes(), 0o644)?;
    fs.bytes(
        "/etc/group",
        format!("root:x:0:\npostgres:x:{uid}:\n").as_bytes(),
        0o644,
    )?;
    // initdb runs the server through /bin/sh (the host's dash).
    fs.linked_as("/bin/sh", Path::new("/bin/sh"))?;
    for program in PROGRAMS {
        fs.linked(&bin.join(program))?;
    }
    for entry in std::fs::read_dir(&lib)
        .map_err(|source| ImageError::Io {
            path: lib.clone(),
            source,
        })?
        .flatten()
    {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // JIT modules link all of LLVM; the server runs with jit = off.
        if name.ends_with(".so") && !name.starts_with("llvmjit") {
            fs.linked(&path)?;
        }
    }
    fs.tree(&share)?;
    for zone in ["UTC", "GMT", "Etc/UTC", "Etc/GMT"] {
        let path = Path::new("/usr/share/zoneinfo").join(zone);
        if path.is_file() {
            fs.host(&path.to_string_lossy(), &path, 0o644)?;
        }
    }
    fs.bytes(
        "/usr/local/bin/docker-entrypoint.sh",
        ENTRYPOINT.as_bytes(),
        0o755,
    )?;
    let mut c = fs.c;
    c.dir("rootfs/tmp/", 0o1777).map_err(io_err)?;
    for dir in [
        "owned/",
        "owned/var/",
        "owned/var/lib/",
        "owned/var/lib/postgresql/",
        "owned/var/run/",
        "owned/var/run/postgresql/",
    ] {
        c.dir(dir, 0o755).map_err(io_err)?;
    }
    c.dir("owned/var/lib/postgresql/data/", 0o700)
        .map_err(io_err)?;
    c.line("COPY rootfs/ /");
    c.line(format!("COPY --chown={uid}:{uid} owned/ /"));
    c.line(format!(
        "ENV PATH={}:/usr/local/bin:/usr/bin:/bin PGDATA=/var/lib/postgresql/data TZ=UTC",
        bin.display()
    ));
    c.line(format!("USER {uid}:{uid}"));
    c.line("ENTRYPOINT [\"/usr/local/bin/docker-entrypoint.sh\"]");
    c.line("CMD [\"postgres\"]");
    c.finish().map_err(io_err)
}
