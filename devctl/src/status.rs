//! `devctl status`: the stable JSON contract and the table, shared by both runtimes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::engine::{Health, State};
use crate::plan::Plan;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub role: String,
    pub address: String,
    /// running, exited, created, restarting, missing, unavailable, ...
    pub state: State,
    /// healthy, unhealthy, starting, none
    pub health: Health,
    #[serde(skip)]
    pub uptime: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VipStatus {
    pub address: String,
    pub holder: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    pub runtime: String,
    pub services: Vec<ServiceStatus>,
    pub vip: VipStatus,
    /// https, http, prometheus, grafana: absent when unavailable.
    pub endpoints: BTreeMap<String, String>,
    pub ca: String,
}

impl Status {
    pub fn healthy(&self, name: &str) -> bool {
        self.services
            .iter()
            .any(|s| s.name == name && s.state == State::Running && s.health == Health::Healthy)
    }
}

/// Asks each gateway's admin port for `/-/ha` and returns the master's name.
pub async fn vip_holder(plan: &Plan) -> Option<String> {
    let mut masters = Vec::new();
    for (name, url) in &plan.endpoints.gateway_admin {
        if let Some(ha) = gateway_ha(url).await {
            let master = ha.get("state").and_then(|s| s.as_str()) == Some("master");
            let held = ha
                .get("vip_held")
                .and_then(|v| v.as_bool())
                .unwrap_or(master);
            if master && held {
                masters.push(name.clone());
            }
        }
    }
    // Two masters is split brain: report the first, the table shows both states.
    masters.into_iter().next()
}

/// `GET <admin>/-/ha` as JSON.
pub async fn gateway_ha(admin_url: &str) -> Option<serde_json::Value> {
    let url = format!("{admin_url}/-/ha");
    let response = service_kit::client::get(&url, None, Duration::from_secs(2))
        .await
        .ok()?;
    if !response.status.is_success() {
        return None;
    }
    response.json().ok()
}

fn uptime_text(d: Option<Duration>) -> String {
    let Some(d) = d else {
        return "-".into();
    };
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The human table.
pub fn table(status: &Status, color: bool) -> String {
    let paint = |text: &str, code: &str| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    let header = format!(
        "{:<14} {:<11} {:<22} {:<12} {:<10} {:>8}\n",
        "NAME", "ROLE", "ADDRESS", "STATE", "HEALTH", "UPTIME"
    );
    out.push_str(&header);
    for s in &status.services {
        let health_code = match s.health {
            Health::Healthy => "32",
            Health::Starting | Health::None => "33",
            Health::Unhealthy => "31",
        };
        let vip = if status.vip.holder.as_deref() == Some(s.name.as_str()) {
            "  <- VIP"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:<14} {:<11} {:<22} {:<12} {} {:>8}{vip}\n",
            s.name,
            s.role,
            s.address,
            s.state.as_str(),
            paint(&format!("{:<10}", s.health.as_str()), health_code),
            uptime_text(s.uptime),
        ));
    }
    out.push_str(&format!(
        "\nVIP {} held by {}\n",
        status.vip.address,
        status.vip.holder.as_deref().unwrap_or("nobody")
    ));
    for (k, v) in &status.endpoints {
        out.push_str(&format!("{k:<11} {v}\n"));
    }
    out.push_str(&format!("{:<11} {}\n", "ca", status.ca));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_contract() {
        let status = Status {
            runtime: "docker".into(),
            services: vec![ServiceStatus {
                name: "admin-1".into(),
                role: "admin".into(),
                address: "172.28.2.10:3002".into(),
                state: State::Running,
                health: Health::Healthy,
                uptime: Some(Duration::from_secs(61)),
            }],
            vip: VipStatus {
                address: "172.28.1.100".into(),
                holder: Some("gateway-1".into()),
            },
            endpoints: [("https".to_string(), "https://127.0.0.1:8443".to_string())]
                .into_iter()
                .collect(),
            ca: "/s/certs/ca.crt".into(),
        };
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            r#"{"runtime":"docker","services":[{"name":"admin-1","role":"admin","address":"172.28.2.10:3002","state":"running","health":"healthy"}],"vip":{"address":"172.28.1.100","holder":"gateway-1"},"endpoints":{"https":"https://127.0.0.1:8443"},"ca":"/s/certs/ca.crt"}"#
        );
        let t = table(&status, false);
        assert!(t.contains("admin-1") && t.contains("1m01s") && t.contains("held by gateway-1"));
        assert!(status.healthy("admin-1") && !status.healthy("admin-2"));
    }
}
