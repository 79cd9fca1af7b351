//! One interface to whatever runs the instances: Docker ([`docker`]) or local processes
//! ([`process`]). An engine observes and acts on single instances; everything that composes
//! those acts (`up`, `scale`, waiting for health, `status`, ...) is written once, above it, in
//! [`crate::ops`]. A third engine is one new module implementing [`Engine`].
//!
//! Engines find their instances by what they recorded when they created them (Docker labels,
//! the process runtime's launch records), never by the plan: `status` and `down` work even
//! when no plan can be built.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::plan::{Instance, Plan};
use crate::state::{FileBytes, StateError};
use crate::ui::Ui;

pub mod docker;
pub mod process;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Created,
    Restarting,
    Paused,
    Exited,
    Dead,
    Removing,
    Stopping,
    /// Planned but not there.
    Missing,
    /// Planned but its image or program is not available here.
    Unavailable,
    Unknown,
}

impl State {
    /// The word `status` shows (the same as in its JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Created => "created",
            State::Restarting => "restarting",
            State::Paused => "paused",
            State::Exited => "exited",
            State::Dead => "dead",
            State::Removing => "removing",
            State::Stopping => "stopping",
            State::Missing => "missing",
            State::Unavailable => "unavailable",
            State::Unknown => "unknown",
        }
    }
}

/// What its health probe says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Unhealthy,
    Starting,
    /// No probe (or not running).
    None,
}

impl Health {
    /// The word `status` shows (the same as in its JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Starting => "starting",
            Health::None => "none",
        }
    }
}

/// One instance as an engine found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub name: String,
    /// Role recorded at creation (`gateway`, the pool name, ...).
    pub role: String,
    pub state: State,
    /// The engine's own probe (Docker's HEALTHCHECK, the binary's `healthcheck`).
    pub health: Health,
    /// The spec fingerprint it was created with.
    pub spec: Option<String>,
    pub uptime: Option<Duration>,
}

/// What `prepare` found: images or programs substituted, and instances that cannot run here.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Instance → image to use instead of the plan's (a local build of Prometheus).
    pub images: BTreeMap<String, String>,
    /// Instance → why it is skipped.
    pub unavailable: BTreeMap<String, String>,
}

impl Prepared {
    /// Applies the substitutions to a plan.
    pub fn apply(&self, plan: &mut Plan) {
        for i in &mut plan.instances {
            if let Some(image) = self.images.get(&i.name) {
                i.image = image.clone();
            }
        }
    }
}

/// Whether `prepare` may build images (`up`) or only looks (every other command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepareMode {
    Build,
    Check,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "cannot reach Docker at {host}: {reason}: is the daemon running? (or --runtime process)"
    )]
    Unreachable { host: String, reason: String },
    #[error("docker: {0}")]
    Api(#[from] bollard::errors::Error),
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building image {tag}: {message}")]
    ImageBuild { tag: String, message: String },
    #[error("image {tag} is missing and there is no checkout to build it from (run devctl inside the repository)")]
    NoImage { tag: String },
    #[error("the process runtime runs the checkout's binaries: run devctl inside the repository")]
    NoCheckout,
    #[error("network {name} exists with subnet {found}, not {wanted}: run devctl down first")]
    NetworkSubnet {
        name: String,
        found: String,
        wanted: String,
    },
    #[error("cannot create network {name} ({subnet}): {source} (another network may use the subnet: `docker network ls`)")]
    NetworkCreate {
        name: String,
        subnet: String,
        source: bollard::errors::Error,
    },
    #[error("{instance}: no program to run ({why})")]
    NoProgram { instance: String, why: String },
    #[error("{instance} is not running")]
    NotRunning { instance: String },
    #[error("{instance}: cannot send {signal}: {source}")]
    Signal {
        instance: String,
        signal: String,
        source: nix::Error,
    },
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("no logs for {0:?}: no such instance has run")]
    NoLogs(String),
    #[error("{0}")]
    Registry(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// An instance's files resolved to bytes, with the fingerprints `converge` compares.
#[derive(Debug, Clone)]
pub struct Work<'a> {
    pub instance: &'a Instance,
    pub files: Vec<FileBytes>,
    pub spec: String,
}

/// A command run beside an instance ([`Engine::exec`]).
#[derive(Debug, Clone)]
pub struct Exec<'a> {
    /// The program (on the container's PATH, or found next to the instance's program on the
    /// host) and its arguments; `{input}` is replaced by the path of `input`'s bytes.
    pub argv: Vec<String>,
    /// Extra environment (passwords go here, never into `argv`).
    pub env: Vec<(String, String)>,
    /// Bytes the command reads from a file.
    pub input: Option<&'a [u8]>,
}

/// What it printed and how it ended.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// The placeholder in [`Exec::argv`] for the input file's path.
pub const INPUT: &str = "{input}";

/// Which logs `devctl logs` prints.
#[derive(Debug, Clone, Copy)]
pub struct LogQuery<'a> {
    /// Instance names; all when empty.
    pub names: &'a [String],
    /// Keep streaming new lines until interrupted.
    pub follow: bool,
    /// Only the last lines of each.
    pub tail: Option<usize>,
}

/// What runs instances. Every method acts on one deployment (the engine was made for it).
#[allow(async_fn_in_trait)] // used through generics only, never as `dyn` or across threads
pub trait Engine {
    /// `docker` or `process` (status JSON's `runtime`).
    fn name(&self) -> &'static str;

    /// Makes the plan's images or programs available (`Build`: may build them), and says
    /// which instances cannot run here and why.
    async fn prepare(&self, plan: &Plan, ui: &Ui, mode: PrepareMode) -> Result<Prepared>;

    /// Shared infrastructure before any instance: network and volumes.
    async fn ensure_shared(&self, plan: &Plan) -> Result<()>;

    /// Where Prometheus reads its file_sd target files from.
    fn targets_dir(&self, plan: &Plan) -> PathBuf;

    /// Fingerprint of everything about `instance` that needs a new instance when it changes
    /// (its definition, the image or program it runs, its files that are not reloadable).
    async fn fingerprint(&self, plan: &Plan, instance: &Instance, files: &[FileBytes]) -> String;

    /// Every instance of the deployment that exists.
    async fn observe(&self) -> Result<Vec<Observed>>;

    /// One instance (None: it does not exist).
    async fn observe_one(&self, name: &str) -> Option<Observed>;

    /// Fingerprint of the reloadable files the instance runs with now (None: unknown).
    async fn running_config(&self, instance: &Instance) -> Option<String>;

    async fn create(&self, plan: &Plan, work: &Work<'_>) -> Result<()>;

    /// Writes its reloadable files (a running instance is then told with SIGHUP; a stopped
    /// one reads them when it starts).
    async fn write_config(&self, work: &Work<'_>) -> Result<()>;

    /// Starts an instance that exists but is stopped.
    async fn start(&self, name: &str) -> Result<()>;

    /// Stops it on purpose (it is not restarted by the engine), waiting up to `grace` for
    /// it to drain and exit.
    async fn stop(&self, name: &str, grace: Duration) -> Result<()>;

    /// Stops (with `grace`) and removes it.
    async fn remove(&self, name: &str, grace: Duration) -> Result<()>;

    /// Sends a signal. SIGKILL, SIGTERM, SIGINT and SIGQUIT mark it stopped on purpose.
    async fn signal(&self, name: &str, signal: nix::sys::signal::Signal) -> Result<()>;

    /// Runs a command beside a running instance: in its container (as its user), or on the
    /// host for a process. Fails only when it cannot be run; its exit code is in the output.
    async fn exec(&self, instance: &Instance, exec: &Exec<'_>) -> Result<ExecOutput>;

    /// Its last `n` log lines.
    async fn last_logs(&self, name: &str, n: usize) -> Vec<String>;

    /// Prints the asked instances' logs, merged and prefixed.
    async fn logs(&self, ui: &Ui, query: &LogQuery<'_>) -> Result<()>;

    /// Removes every instance and shared object of the deployment (volumes and data with
    /// `volumes`, our images with `images`); returns what it removed.
    async fn down(&self, volumes: bool, images: bool) -> Result<Vec<String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_the_json_words() {
        for s in [
            State::Running,
            State::Created,
            State::Restarting,
            State::Paused,
            State::Exited,
            State::Dead,
            State::Removing,
            State::Stopping,
            State::Missing,
            State::Unavailable,
            State::Unknown,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for h in [
            Health::Healthy,
            Health::Unhealthy,
            Health::Starting,
            Health::None,
        ] {
            assert_eq!(serde_json::to_value(h).unwrap(), h.as_str());
        }
    }
}
