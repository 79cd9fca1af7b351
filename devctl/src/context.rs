//! What every command starts from: the topology, the state dir, and the plan for a runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::plan::{Plan, PlanOptions, RuntimeKind};
use crate::state::StateDir;
use crate::topology::Topology;

/// The version our images are tagged with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(transparent)]
    Topology(#[from] crate::topology::TopologyError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error("no topology file given and no topology/dev.toml above {0}: pass --topology FILE")]
    NoTopology(PathBuf),
    #[error("{path}: {problem}; fix or delete that entry, or run `devctl down` (it resets scale)")]
    BadScaleFile { path: PathBuf, problem: String },
}

#[derive(Debug, Clone)]
pub struct Context {
    pub topology: Topology,
    pub topology_path: PathBuf,
    pub state: StateDir,
    /// The repository checkout devctl runs in (where `cargo build` works), if any.
    pub repo: Option<PathBuf>,
}

/// The nearest directory at or above `start` holding `topology/dev.toml` and `Cargo.toml`.
pub fn find_repo(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| d.join("topology/dev.toml").is_file() && d.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
}

/// `$XDG_STATE_HOME/devctl` or `~/.local/state/devctl`.
fn user_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("devctl");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/devctl");
    }
    PathBuf::from(".devctl")
}

impl Context {
    pub fn load(
        topology: Option<&Path>,
        state_dir: Option<&Path>,
    ) -> Result<Context, ContextError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let repo = find_repo(&cwd);
        let topology_path = match (topology, &repo) {
            (Some(p), _) => p.to_path_buf(),
            (None, Some(r)) => r.join("topology/dev.toml"),
            (None, None) => return Err(ContextError::NoTopology(cwd)),
        };
        let topology = Topology::load(&topology_path)?;
        let root = match (state_dir, &repo) {
            (Some(p), _) => p.to_path_buf(),
            (None, Some(r)) => r.join(".devctl"),
            (None, None) => user_state_dir(),
        };
        let root = if root.is_absolute() {
            root
        } else {
            cwd.join(root)
        };
        Ok(Context {
            topology,
            topology_path,
            state: StateDir::new(root),
            repo,
        })
    }

    /// The plan with the pool sizes `devctl scale` saved. A saved size the topology does
    /// not allow (edited by hand, a pool since removed) names the file and the entry.
    pub fn plan(&self, runtime: RuntimeKind) -> Result<Plan, ContextError> {
        let path = self.state.scale_path();
        let scale = self.state.scale(&self.topology.name).map_err(|e| match e {
            crate::state::StateError::Corrupt { path, message } => ContextError::BadScaleFile {
                path,
                problem: message,
            },
            other => other.into(),
        })?;
        self.plan_with(runtime, scale).map_err(|e| match e {
            ContextError::Plan(p) => ContextError::BadScaleFile {
                path,
                problem: format!("deployment {:?}: {p}", self.topology.name),
            },
            other => other,
        })
    }

    /// The plan with these pool sizes over the topology's (what `scale` validates with).
    pub fn plan_with(
        &self,
        runtime: RuntimeKind,
        scale: BTreeMap<String, usize>,
    ) -> Result<Plan, ContextError> {
        let options = PlanOptions {
            runtime,
            scale,
            secrets: self.state.secrets()?,
            state_dir: self.state.root.clone(),
            version: VERSION.to_string(),
        };
        Ok(Plan::build(&self.topology, &options)?)
    }

    /// The runtime a deployment was last brought up with (`state/runtime`), if any.
    pub fn recorded_runtime(&self) -> Option<RuntimeKind> {
        let text = std::fs::read_to_string(self.state.root.join("runtime")).ok()?;
        match text.trim() {
            "docker" => Some(RuntimeKind::Docker),
            "process" => Some(RuntimeKind::Process),
            _ => None,
        }
    }

    pub fn record_runtime(&self, runtime: RuntimeKind) -> Result<(), ContextError> {
        crate::state::write_atomic(
            &self.state.root.join("runtime"),
            runtime.as_str().as_bytes(),
            false,
        )?;
        Ok(())
    }
}
