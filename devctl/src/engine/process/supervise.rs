//! `devctl supervise` (hidden): the parent of each process the process runtime starts. It
//! writes the child's PID and restarts it after a failure, like a container's on-failure
//! restart policy, unless devctl stopped it on purpose (the stop file exists).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::state;

/// Runs `program`, writes its PID to `pid_file`, and restarts it after a failure (non-zero
/// exit or a signal) unless `stop_file` exists. A clean exit (0, e.g. after draining on
/// SIGTERM) ends supervision. Returns the exit code for the supervisor itself.
/// With `user`, the program runs as that uid:gid.
pub fn supervise(
    pid_file: &Path,
    stop_file: &Path,
    user: Option<(u32, u32)>,
    program: &Path,
    args: &[String],
) -> i32 {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        let mut cmd = std::process::Command::new(program);
        cmd.args(args);
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("devctl supervise: cannot start {}: {e}", program.display());
                return 1;
            }
        };
        if let Err(e) = state::write_atomic(pid_file, child.id().to_string().as_bytes(), false) {
            eprintln!("devctl supervise: {e}");
        }
        let status = match child.wait() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("devctl supervise: {e}");
                return 1;
            }
        };
        if stop_file.exists() || status.success() {
            return 0;
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        eprintln!(
            "devctl supervise: {} {status}; restarting in {backoff:?}",
            program.display()
        );
        std::thread::sleep(backoff);
        if stop_file.exists() {
            return 0;
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Whether a process is a zombie (exited, not yet reaped): not alive for our purposes.
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        == Some('Z')
}
