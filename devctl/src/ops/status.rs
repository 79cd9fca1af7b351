//! `devctl status`, the same for every engine: the plan's instances in plan order with what
//! the engine observes of them, then anything of ours the plan does not name. Without a plan
//! (an invalid state dir) it still shows everything that runs.

use std::collections::{BTreeMap, BTreeSet};

use super::health::probe;
use super::Session;
use crate::engine::{Engine, EngineError, Health, Observed, State};
use crate::plan::Plan;
use crate::status::{ServiceStatus, Status, VipStatus};

impl<E: Engine> Session<E> {
    pub async fn status(
        &self,
        plan: Option<&Plan>,
        unavailable: &BTreeSet<String>,
    ) -> Result<Status, EngineError> {
        let mut observed: BTreeMap<String, Observed> = self
            .engine
            .observe()
            .await?
            .into_iter()
            .map(|o| (o.name.clone(), o))
            .collect();
        let mut services = Vec::new();
        for i in plan.iter().flat_map(|p| &p.instances) {
            let (state, health, uptime) = match observed.remove(&i.name) {
                Some(o) => {
                    let mut health = o.health;
                    if o.state == State::Running && health == Health::None {
                        if let Some(plan) = plan {
                            health = probe(plan, i).await;
                        }
                    }
                    (o.state, health, o.uptime)
                }
                None if unavailable.contains(&i.name) => (State::Unavailable, Health::None, None),
                None => (State::Missing, Health::None, None),
            };
            services.push(ServiceStatus {
                name: i.name.clone(),
                role: i.role.clone(),
                address: i.endpoint(),
                state,
                health,
                uptime,
            });
        }
        for o in observed.into_values() {
            services.push(ServiceStatus {
                name: o.name,
                role: o.role,
                address: "-".into(),
                state: o.state,
                health: o.health,
                uptime: o.uptime,
            });
        }
        let running: BTreeSet<&str> = services
            .iter()
            .filter(|s| s.state == State::Running)
            .map(|s| s.name.as_str())
            .collect();
        let mut endpoints = BTreeMap::new();
        let (holder, vip) = match plan {
            Some(plan) => {
                let e = &plan.endpoints;
                // Through the edge, or straight to the VIP where there is no edge.
                let reachable = match plan.instance("edge") {
                    Some(_) => running.contains("edge"),
                    None => plan.gateways().any(|g| running.contains(g.name.as_str())),
                };
                if reachable {
                    endpoints.insert("https".into(), e.https.clone());
                    endpoints.insert("http".into(), e.http.clone());
                }
                for (name, url) in [
                    ("prometheus", Some(&e.prometheus)),
                    ("grafana", Some(&e.grafana)),
                    ("alertmanager", e.alertmanager.as_ref()),
                    ("postgres", e.database.as_ref()),
                ] {
                    if let (true, Some(url)) = (running.contains(name), url) {
                        endpoints.insert(name.to_string(), url.clone());
                    }
                }
                (crate::status::vip_holder(plan).await, plan.vip.to_string())
            }
            None => (None, "-".into()),
        };
        Ok(Status {
            runtime: self.engine.name().into(),
            services,
            vip: VipStatus {
                address: vip,
                holder,
            },
            endpoints,
            ca: self.ctx.state.ca_path().to_string_lossy().into_owned(),
        })
    }
}
