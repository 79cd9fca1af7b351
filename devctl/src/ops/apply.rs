//! Converging a deployment: fingerprints of what the plan wants, what the engine observes,
//! [`crate::converge::diff`] between them, then the schedule run step by step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;

use super::{OpsError, Session};
use crate::converge::{self, Action, Current, Desired, Stopped};
use crate::engine::{Engine, State, Work};
use crate::plan::Plan;
use crate::state::{files_hash, materialize, Certs};
use crate::ui::Ui;

/// How long a replaced instance may take to stop, and a removed one to drain.
const REPLACE_GRACE: Duration = Duration::from_secs(10);
const DRAIN_GRACE: Duration = Duration::from_secs(35);
/// How long a rolling replacement or a backend that gateways will name may take to be healthy.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for reloaded gateways to stop picking servers that are about to be removed.
const RELOAD_SETTLE: Duration = Duration::from_millis(500);

/// What a converge did, by action.
#[derive(Debug, Default)]
pub struct Report {
    pub by_action: BTreeMap<&'static str, Vec<String>>,
}

impl Report {
    fn add(&mut self, action: &Action) {
        let what = match action {
            Action::Create(_) => "created",
            Action::Replace(_) => "replaced (changed)",
            Action::Start(_) => "started",
            Action::Reload(_) => "reloaded (config changed)",
            Action::Refresh(_) => "config updated (stopped)",
            Action::Remove(_) => "removed",
            Action::WaitHealthy(_) | Action::Provision(_) => return,
        };
        if let Some(name) = action.name() {
            self.by_action
                .entry(what)
                .or_default()
                .push(name.to_string());
        }
    }

    /// Instances that are new (created) in this converge.
    pub fn created(&self) -> Vec<String> {
        self.by_action.get("created").cloned().unwrap_or_default()
    }

    pub fn removed(&self) -> Vec<String> {
        self.by_action.get("removed").cloned().unwrap_or_default()
    }

    pub fn print(&self, ui: &Ui) {
        if self.by_action.is_empty() {
            ui.step("everything already matches the plan");
        }
        for (what, names) in &self.by_action {
            ui.step(&format!("{what}: {}", names.join(" ")));
        }
    }
}

impl<E: Engine> Session<E> {
    /// Converges the engine to `plan` (less the `unavailable` instances, which are removed
    /// if they exist).
    pub async fn converge(
        &self,
        plan: &Plan,
        certs: &Certs,
        unavailable: &BTreeSet<String>,
        stopped: Stopped,
    ) -> Result<Report, OpsError> {
        let mut work: BTreeMap<String, Work<'_>> = BTreeMap::new();
        let mut desired = Vec::new();
        for i in plan
            .instances
            .iter()
            .filter(|i| !unavailable.contains(&i.name))
        {
            let files = materialize(i, certs);
            let spec = self.engine.fingerprint(plan, i, &files).await;
            desired.push(Desired {
                instance: i,
                spec: spec.clone(),
                config: i.reloads().then(|| files_hash(&files, true)),
            });
            work.insert(
                i.name.clone(),
                Work {
                    instance: i,
                    files,
                    spec,
                },
            );
        }
        let mut current = Vec::new();
        for o in self.engine.observe().await? {
            let config = match plan.instance(&o.name) {
                Some(i) if i.reloads() => self.engine.running_config(i).await,
                _ => None,
            };
            current.push(Current {
                name: o.name,
                running: o.state == State::Running,
                spec: o.spec,
                config,
            });
        }
        let schedule = converge::diff(&desired, &current, stopped);
        let mut report = Report::default();
        let mut reloaded = false;
        for step in schedule {
            if reloaded && step.iter().any(|a| matches!(a, Action::Remove(_))) {
                tokio::time::sleep(RELOAD_SETTLE).await;
            }
            reloaded |= step.iter().any(|a| matches!(a, Action::Reload(_)));
            let results: Vec<Result<(), OpsError>> = futures_util::stream::iter(&step)
                .map(|action| self.apply(plan, &work, action))
                .buffer_unordered(4)
                .collect()
                .await;
            for r in results {
                r?;
            }
            step.iter().for_each(|a| report.add(a));
        }
        Ok(report)
    }

    async fn apply(
        &self,
        plan: &Plan,
        work: &BTreeMap<String, Work<'_>>,
        action: &Action,
    ) -> Result<(), OpsError> {
        let work_for = |name: &str| work.get(name).ok_or_else(|| OpsError::unknown(name, plan));
        match action {
            Action::Create(name) => self.engine.create(plan, work_for(name)?).await?,
            Action::Replace(name) => {
                self.engine.remove(name, REPLACE_GRACE).await?;
                self.engine.create(plan, work_for(name)?).await?;
            }
            Action::Start(name) => self.engine.start(name).await?,
            Action::Reload(name) => {
                self.engine.write_config(work_for(name)?).await?;
                self.engine
                    .signal(name, nix::sys::signal::Signal::SIGHUP)
                    .await?;
            }
            Action::Refresh(name) => self.engine.write_config(work_for(name)?).await?,
            Action::WaitHealthy(names) => self.wait_healthy(plan, names, STEP_TIMEOUT).await?,
            Action::Provision(name) => self.provision(plan, name).await?,
            Action::Remove(name) => self.engine.remove(name, DRAIN_GRACE).await?,
        }
        Ok(())
    }
}
