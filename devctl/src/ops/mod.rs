//! The commands, written once for every engine: `up`, `scale`, `kill`, `start`, `restart`,
//! `status`, `logs`, `down`. Each validates what it is given against the topology and the
//! plan it would produce before it changes anything (state files included).
//!
//! [`apply`] runs the converge step, [`health`] waits for instances to be ready, [`status`]
//! joins the plan with what the engine observes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::build::{self, LastBuild};
use crate::context::{Context, ContextError};
use crate::converge::Stopped;
use crate::engine::{Engine, EngineError, LogQuery, PrepareMode, Prepared};
use crate::images;
use crate::plan::{Plan, RuntimeKind};
use crate::state::{Reissue, ScaleReset, StateError};
use crate::status::Status;
use crate::ui::Ui;

mod apply;
mod health;
mod status;
mod store;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Image(#[from] images::ImageError),
    #[error("no instance {name:?}; known: {known}")]
    UnknownInstance { name: String, known: String },
    #[error("unknown signal {0:?}: name one such as SIGTERM, SIGKILL, SIGHUP")]
    UnknownSignal(String),
    #[error("not healthy after {timeout:?}: {pending}{report}")]
    NotHealthy {
        timeout: Duration,
        pending: String,
        report: String,
    },
    #[error("the build stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("store: {0}")]
    Store(String),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}

impl OpsError {
    fn unknown(name: &str, plan: &Plan) -> OpsError {
        OpsError::UnknownInstance {
            name: name.to_string(),
            known: plan
                .instances
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Parses `SIGTERM`, `TERM`, `sigterm`.
pub fn parse_signal(raw: &str) -> Result<Signal, OpsError> {
    let upper = raw.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse()
        .map_err(|_| OpsError::UnknownSignal(raw.to_string()))
}

/// A command's context: the engine, the deployment's context, the output.
pub struct Session<E: Engine> {
    pub engine: E,
    pub ctx: Context,
    pub ui: Ui,
    pub runtime: RuntimeKind,
}

impl<E: Engine> Session<E> {
    pub fn new(engine: E, ctx: Context, ui: Ui, runtime: RuntimeKind) -> Session<E> {
        Session {
            engine,
            ctx,
            ui,
            runtime,
        }
    }

    /// The plan with what this engine can run here (`Check`: nothing is built).
    async fn prepared_plan(&self, mode: PrepareMode) -> Result<(Plan, Prepared), OpsError> {
        let mut plan = self.ctx.plan(self.runtime)?;
        let prepared = self.engine.prepare(&plan, &self.ui, mode).await?;
        prepared.apply(&mut plan);
        Ok((plan, prepared))
    }

    /// The static release build, when the checkout's sources are newer than the binaries.
    async fn build_binaries(&self) -> Result<(), OpsError> {
        let Some(repo) = self.ctx.repo.clone() else {
            return Ok(());
        };
        if images::binaries_up_to_date(&repo) {
            return Ok(());
        }
        let record = self.ctx.state.root.join("last-build.json");
        let last = LastBuild::load(&record);
        let hint = match last {
            Some(l) => format!(
                "; the last build compiled {} units in {:.0?}",
                l.compiled,
                l.took()
            ),
            None => "; a first build takes several minutes".into(),
        };
        self.ui.step(&format!(
            "building static release binaries (cargo build --release, crt-static; log: {}){hint}",
            self.ctx.state.logs_dir().join("cargo-build.log").display()
        ));
        let estimate = last.map_or_else(|| lock_packages(&repo), |l| l.units);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let log = self.ctx.state.logs_dir().join("cargo-build.log");
        let task = tokio::task::spawn_blocking(move || {
            build::build_binaries(&repo, &log, |unit| {
                let _ = tx.send(unit.name.clone());
            })
        });
        let mut counter = self.ui.counter(estimate, "units built");
        let mut done = 0;
        while let Some(name) = rx.recv().await {
            done += 1;
            counter.set(done, &name);
        }
        counter.finish();
        let stats = task.await??;
        if let Ok(text) = serde_json::to_vec(&stats) {
            crate::state::write_atomic(&record, &text, false)?;
        }
        self.ui.done(&format!(
            "binaries built in {:.1?} ({} of {} units compiled)",
            stats.took(),
            stats.compiled,
            stats.units
        ));
        Ok(())
    }

    /// Certificates, Prometheus's targets, shared objects, then the converge step.
    async fn converge_to(
        &self,
        plan: &Plan,
        unavailable: &BTreeSet<String>,
        stopped: Stopped,
    ) -> Result<apply::Report, OpsError> {
        let certs = self.ctx.state.issue(
            plan,
            &self.ctx.topology.tls.ca_common_name,
            Reissue::Changed,
        )?;
        crate::state::write_targets(&self.engine.targets_dir(plan), plan)?;
        self.engine.ensure_shared(plan).await?;
        self.converge(plan, &certs, unavailable, stopped).await
    }

    /// `devctl up`: build, issue certificates, converge, wait until healthy.
    pub async fn up(&self, build: bool, timeout: Duration) -> Result<(Status, Plan), OpsError> {
        let started = Instant::now();
        // Validates the state dir before anything is built or started.
        self.ctx.plan(self.runtime)?;
        if build {
            self.build_binaries().await?;
        }
        let (plan, prepared) = self.prepared_plan(PrepareMode::Build).await?;
        for (name, why) in &prepared.unavailable {
            self.ui.warn(&format!("{name}: skipped: {why}"));
        }
        let unavailable: BTreeSet<String> = prepared.unavailable.keys().cloned().collect();
        let report = self
            .converge_to(&plan, &unavailable, Stopped::Start)
            .await?;
        report.print(&self.ui);
        let wanted: Vec<String> = plan
            .instances
            .iter()
            .map(|i| i.name.clone())
            .filter(|n| !unavailable.contains(n))
            .collect();
        self.wait_healthy(&plan, &wanted, timeout).await?;
        let status = self.status(Some(&plan), &unavailable).await?;
        self.ui.done(&format!(
            "{} instances up in {:.1?}",
            status
                .services
                .iter()
                .filter(|s| s.state == crate::engine::State::Running)
                .count(),
            started.elapsed()
        ));
        Ok((status, plan))
    }

    /// `devctl status`. An invalid state dir is reported in one line; what runs is still
    /// shown.
    pub async fn show_status(&self) -> Result<Status, OpsError> {
        match self.prepared_plan(PrepareMode::Check).await {
            Ok((plan, prepared)) => {
                let unavailable = prepared.unavailable.keys().cloned().collect();
                Ok(self.status(Some(&plan), &unavailable).await?)
            }
            Err(OpsError::Context(e)) => {
                self.ui.warn(&format!("{e}"));
                Ok(self.status(None, &BTreeSet::new()).await?)
            }
            Err(e) => Err(e),
        }
    }

    /// `devctl scale POOL N`: validated against the topology and the plan first, saved, then
    /// converged (new instances healthy before the gateways reload; removed ones leave the
    /// gateways before they stop). Instances stopped with `kill` stay stopped.
    pub async fn scale(&self, pool: &str, n: usize, timeout: Duration) -> Result<(), OpsError> {
        let deployment = self.ctx.topology.name.clone();
        let current = self.ctx.plan(self.runtime)?;
        let mut overrides = self.ctx.state.scale(&deployment)?;
        overrides.insert(pool.to_string(), n);
        // Only sizes that differ from the topology's are kept.
        overrides.retain(|p, n| self.ctx.topology.pool(p).map(|t| t.instances) != Some(*n));
        let plan = self.ctx.plan_with(self.runtime, overrides.clone())?;
        self.ctx.state.set_scale(&deployment, &overrides)?;
        if self.engine.observe().await?.is_empty() {
            self.ui.done(&format!(
                "{pool}: {n} instances (saved; nothing runs: `devctl up` starts them)"
            ));
            return Ok(());
        }
        let (plan, prepared) = {
            let mut plan = plan;
            let prepared = self
                .engine
                .prepare(&plan, &self.ui, PrepareMode::Check)
                .await?;
            prepared.apply(&mut plan);
            (plan, prepared)
        };
        let unavailable: BTreeSet<String> = prepared.unavailable.keys().cloned().collect();
        let report = self.converge_to(&plan, &unavailable, Stopped::Keep).await?;
        let added = report.created();
        if !added.is_empty() {
            self.wait_healthy(&plan, &added, timeout).await?;
        }
        let removed = report.removed();
        let before = current.pools.get(pool).copied().unwrap_or(0);
        self.ui.done(&format!(
            "{pool}: {before} -> {n} instances (added: {}; removed: {})",
            list_or_dash(&added),
            list_or_dash(&removed)
        ));
        Ok(())
    }

    /// The plan when one can be made; instance names are checked against it, else against
    /// what the engine observes.
    async fn check_instance(&self, name: &str) -> Result<Option<Plan>, OpsError> {
        match self.ctx.plan(self.runtime) {
            Ok(plan) => {
                if plan.instance(name).is_none() {
                    return Err(OpsError::unknown(name, &plan));
                }
                Ok(Some(plan))
            }
            Err(_) => {
                let observed = self.engine.observe().await?;
                if observed.iter().any(|o| o.name == name) {
                    Ok(None)
                } else {
                    Err(OpsError::UnknownInstance {
                        name: name.to_string(),
                        known: observed
                            .iter()
                            .map(|o| o.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            }
        }
    }

    /// `devctl kill NAME`: the signal is parsed before anything is sent.
    pub async fn kill(&self, name: &str, signal: &str) -> Result<(), OpsError> {
        let signal = parse_signal(signal)?;
        self.check_instance(name).await?;
        Ok(self.engine.signal(name, signal).await?)
    }

    /// `devctl start NAME`: starts it and waits until it is healthy.
    pub async fn start(&self, name: &str) -> Result<(), OpsError> {
        let plan = self.check_instance(name).await?;
        self.engine.start(name).await?;
        if let Some(plan) = plan {
            self.wait_healthy(&plan, &[name.to_string()], Duration::from_secs(60))
                .await?;
        }
        Ok(())
    }

    /// `devctl restart NAME`: SIGTERM (it drains), start, healthy.
    pub async fn restart(&self, name: &str) -> Result<(), OpsError> {
        self.check_instance(name).await?;
        self.engine.stop(name, Duration::from_secs(35)).await?;
        self.start(name).await
    }

    pub async fn logs(&self, query: &LogQuery<'_>) -> Result<(), OpsError> {
        Ok(self.engine.logs(&self.ui, query).await?)
    }

    /// `devctl down`: removes everything with our labels (no plan needed) and resets the
    /// deployment's `scale` sizes to the topology's.
    pub async fn down(&self, volumes: bool, images: bool) -> Result<Vec<String>, OpsError> {
        let removed = self.engine.down(volumes, images).await?;
        match self.ctx.state.reset_scale(&self.ctx.topology.name)? {
            ScaleReset::Unchanged => {}
            ScaleReset::Cleared => self.ui.step("pool sizes reset to the topology's"),
            ScaleReset::MovedAside(path) => self.ui.warn(&format!(
                "{} could not be read; moved aside to {}",
                self.ctx.state.scale_path().display(),
                path.display()
            )),
        }
        Ok(removed)
    }
}

fn list_or_dash(names: &[String]) -> String {
    if names.is_empty() {
        "-".into()
    } else {
        names.join(" ")
    }
}

/// An estimate of a cold build's size: the packages in Cargo.lock.
fn lock_packages(repo: &std::path::Path) -> u64 {
    std::fs::read_to_string(repo.join("Cargo.lock"))
        .map(|t| t.matches("[[package]]").count() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_with_or_without_their_prefix() {
        for (raw, want) in [
            ("SIGKILL", Some(Signal::SIGKILL)),
            ("term", Some(Signal::SIGTERM)),
            ("SigHup", Some(Signal::SIGHUP)),
            ("SIGNOPE", None),
            ("", None),
        ] {
            assert_eq!(parse_signal(raw).ok(), want, "{raw}");
        }
    }
}
