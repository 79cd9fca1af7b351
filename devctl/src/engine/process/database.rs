//! The database server as a process: the host's PostgreSQL programs (from one directory, so
//! versions match), its data directory initialized with `initdb` before the first start, and
//! its tools run on the host for provisioning, backup and restore.

use std::path::{Path, PathBuf};

use super::{io, ProcessEngine};
use crate::engine::{EngineError, Exec, ExecOutput, Result, INPUT};
use crate::images;
use crate::plan::Instance;
use crate::state;

const MISSING: &str =
    "no PostgreSQL server on this host (Debian: apt-get install postgresql; devctl runs /usr/lib/postgresql/<version>/bin/postgres)";

/// The server program.
pub(super) fn server() -> std::result::Result<PathBuf, String> {
    images::postgres_tool("postgres").ok_or_else(|| MISSING.to_string())
}

/// A tool by name: PostgreSQL's from the server's directory, anything else from PATH.
pub(super) fn tool(name: &str) -> Option<PathBuf> {
    images::postgres_tool(name).or_else(|| images::host_binary(name))
}

/// The user the database runs as when devctl runs as root (PostgreSQL refuses root):
/// `nobody`. None otherwise (it runs as the caller, like every other instance).
pub(super) fn run_as(i: &Instance) -> Option<(u32, u32)> {
    if i.kind != crate::plan::Kind::Database || !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("nobody").ok().flatten()?;
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// Hands a directory tree to `user` (the data and config directories of a database that
/// does not run as devctl's user).
fn give(dir: &Path, user: (u32, u32)) -> Result<()> {
    let (uid, gid) = user;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io(dir))?;
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            give(&entry.path(), user)?;
        }
    }
    Ok(())
}

fn env_of<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl ProcessEngine {
    /// `initdb` into `PGDATA` unless it holds a cluster: the role `POSTGRES_USER` with the
    /// password in `POSTGRES_PASSWORD_FILE`, SCRAM authentication.
    /// With `user` (devctl runs as root), the data and config directories are that user's
    /// and initdb runs as it.
    pub(super) fn init_database(&self, i: &Instance, user: Option<(u32, u32)>) -> Result<()> {
        let (Some(data), Some(role), Some(password)) = (
            env_of(i, "PGDATA"),
            env_of(i, "POSTGRES_USER"),
            env_of(i, "POSTGRES_PASSWORD_FILE"),
        ) else {
            return Err(EngineError::NoProgram {
                instance: i.name.clone(),
                why: "PGDATA, POSTGRES_USER and POSTGRES_PASSWORD_FILE must be set".into(),
            });
        };
        if let Some(user) = user {
            std::fs::create_dir_all(data).map_err(io(Path::new(data)))?;
            give(Path::new(data), user)?;
            give(Path::new(&i.config_dir), user)?;
        }
        if Path::new(data).join("PG_VERSION").is_file() {
            return Ok(());
        }
        let initdb = tool("initdb").ok_or_else(|| EngineError::NoProgram {
            instance: i.name.clone(),
            why: MISSING.into(),
        })?;
        let log = self.log_path(&i.name);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut cmd = std::process::Command::new(&initdb);
        cmd.args(["--pgdata", data, "--username", role])
            .arg(format!("--pwfile={password}"))
            .args(["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"]);
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().map_err(io(&initdb))?;
        let mut text = out.stdout;
        text.extend_from_slice(&out.stderr);
        let _ = std::fs::write(&log, &text);
        if !out.status.success() {
            return Err(EngineError::NoProgram {
                instance: i.name.clone(),
                why: format!(
                    "initdb failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&text).trim()
                ),
            });
        }
        Ok(())
    }

    pub(super) async fn exec_host(&self, i: &Instance, exec: &Exec<'_>) -> Result<ExecOutput> {
        let Some((program, args)) = exec.argv.split_first() else {
            return Err(EngineError::NoProgram {
                instance: i.name.clone(),
                why: "empty command".into(),
            });
        };
        // The instance's own program runs with its environment (a backend's `backup-store`
        // finds its store the way the server does); other tools come from the host.
        let (program, base_env) = if *program == i.binary && i.kind != crate::plan::Kind::Database {
            let own = self.program(i).map_err(|why| EngineError::NoProgram {
                instance: i.name.clone(),
                why,
            })?;
            (own, i.env.clone())
        } else {
            let found = tool(program).ok_or_else(|| EngineError::NoProgram {
                instance: i.name.clone(),
                why: format!("no `{program}` on this host"),
            })?;
            (found, Vec::new())
        };
        let mut args = args.to_vec();
        let mut input_path = None;
        if let Some(bytes) = exec.input {
            let path =
                self.state
                    .run_dir()
                    .join(format!(".input-{}-{}", i.name, std::process::id()));
            state::write_atomic(&path, bytes, true)?;
            let text = path.to_string_lossy().into_owned();
            for arg in &mut args {
                *arg = arg.replace(INPUT, &text);
            }
            input_path = Some(path);
        }
        let out = tokio::process::Command::new(&program)
            .args(&args)
            .envs(base_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(exec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        if let Some(path) = input_path {
            let _ = std::fs::remove_file(path);
        }
        let out = out.map_err(io(&program))?;
        Ok(ExecOutput {
            code: out.status.code().map_or(-1, i64::from),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
