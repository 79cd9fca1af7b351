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

fn env_of<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl ProcessEngine {
    /// `initdb` into `PGDATA` unless it holds a cluster: the role `POSTGRES_USER` with the
    /// password in `POSTGRES_PASSWORD_FILE`, SCRAM authentication.
    pub(super) fn init_database(&self, i: &Instance) -> Result<()> {
        let (Some(data), Some(user), Some(password)) = (
            env_of(i, "PGDATA"),
            env_of(i, "POSTGRES_USER"),
            env_of(i, "POSTGRES_PASSWORD_FILE"),
        ) else {
            return Err(EngineError::NoProgram {
                instance: i.name.clone(),
                why: "PGDATA, POSTGRES_USER and POSTGRES_PASSWORD_FILE must be set".into(),
            });
        };
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
        let out = std::process::Command::new(&initdb)
            .args(["--pgdata", data, "--username", user])
            .arg(format!("--pwfile={password}"))
            .args(["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"])
            .output()
            .map_err(io(&initdb))?;
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
        let program = tool(program).ok_or_else(|| EngineError::NoProgram {
            instance: i.name.clone(),
            why: format!("no `{program}` on this host"),
        })?;
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
