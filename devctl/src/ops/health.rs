//! Health, the same for every engine: an instance is ready when it runs and its probe says
//! healthy. Instances the engine does not probe are probed here: Prometheus's `/-/ready`,
//! the edge's listener; the rest count as ready once running.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{OpsError, Session};
use crate::engine::{Engine, Health, State};
use crate::plan::{Instance, Kind, Plan};

/// A probe for what the engine does not probe itself.
pub(super) async fn probe(plan: &Plan, i: &Instance) -> Health {
    match i.kind {
        Kind::Prometheus => ready(&plan.endpoints.prometheus).await,
        Kind::Alertmanager => match &plan.endpoints.alertmanager {
            Some(url) => ready(url).await,
            None => Health::None,
        },
        Kind::Edge => {
            let addr = plan
                .endpoints
                .https
                .trim_start_matches("https://")
                .to_string();
            match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                .await
            {
                Ok(Ok(_)) => Health::Healthy,
                _ => Health::Unhealthy,
            }
        }
        _ => Health::None,
    }
}

/// `GET <base>/-/ready` (Prometheus and Alertmanager).
async fn ready(base: &str) -> Health {
    let url = format!("{base}/-/ready");
    match service_kit::client::get(&url, None, Duration::from_secs(1)).await {
        Ok(r) if r.status.is_success() => Health::Healthy,
        _ => Health::Unhealthy,
    }
}

impl<E: Engine> Session<E> {
    /// Running, and healthy by the engine's probe or ours.
    async fn ready(&self, plan: &Plan, i: &Instance) -> bool {
        let Some(o) = self.engine.observe_one(&i.name).await else {
            return false;
        };
        if o.state != State::Running {
            return false;
        }
        if i.healthcheck.is_some() {
            return o.health == Health::Healthy;
        }
        matches!(probe(plan, i).await, Health::Healthy | Health::None)
    }

    /// Waits until every named instance is ready. On timeout: what is not, with its state
    /// and last log lines.
    pub async fn wait_healthy(
        &self,
        plan: &Plan,
        names: &[String],
        timeout: Duration,
    ) -> Result<(), OpsError> {
        let targets: Vec<&Instance> = plan
            .instances
            .iter()
            .filter(|i| names.contains(&i.name))
            .collect();
        let mut progress = self.ui.progress(targets.len() as u64, "healthy");
        let started = Instant::now();
        let mut done: BTreeMap<String, Duration> = BTreeMap::new();
        loop {
            let pending: Vec<&Instance> = targets
                .iter()
                .copied()
                .filter(|i| !done.contains_key(&i.name))
                .collect();
            let checks = futures_util::future::join_all(
                pending
                    .iter()
                    .map(|i| async move { (i.name.clone(), self.ready(plan, i).await) }),
            )
            .await;
            for (name, ready) in checks {
                if ready {
                    progress.advance(&name, started.elapsed());
                    done.insert(name, started.elapsed());
                }
            }
            let pending: Vec<&str> = targets
                .iter()
                .filter(|i| !done.contains_key(&i.name))
                .map(|i| i.name.as_str())
                .collect();
            if pending.is_empty() {
                progress.finish();
                return Ok(());
            }
            progress.message(&format!("waiting for {}", pending.join(" ")));
            if started.elapsed() > timeout {
                progress.finish();
                let mut report = String::new();
                for name in &pending {
                    let (state, health) = match self.engine.observe_one(name).await {
                        Some(o) => (o.state, o.health),
                        None => (State::Missing, Health::None),
                    };
                    report.push_str(&format!(
                        "\n  {name}: {}, {}; last log lines:",
                        state.as_str(),
                        health.as_str()
                    ));
                    for line in self.engine.last_logs(name, 8).await {
                        report.push_str(&format!("\n    {line}"));
                    }
                }
                return Err(OpsError::NotHealthy {
                    timeout,
                    pending: pending.join(", "),
                    report,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
