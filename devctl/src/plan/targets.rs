//! What the plan derives from its instances: Prometheus's file_sd target files (scrape
//! targets, and Alertmanager for alerting) and the
//! endpoints printed by `up` and `status`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::{Builder, Endpoints, Instance, Kind};

/// Prometheus file_sd files: one per role, one entry per instance labelled with its name.
pub(crate) fn prometheus_targets(instances: &[Instance], admin_port: u16) -> Vec<(String, String)> {
    let mut by_role: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for i in instances {
        let port = match i.kind {
            Kind::Gateway => admin_port,
            Kind::Backend | Kind::Prometheus | Kind::Alertmanager => i.port,
            // The database has no exporter: the backends' store metrics and alerts cover it.
            Kind::Edge | Kind::Grafana | Kind::Database => continue,
        };
        by_role
            .entry(i.role.clone())
            .or_default()
            .push(serde_json::json!({
                "targets": [format!("{}:{port}", i.address)],
                "labels": {"instance": i.name, "role": i.role},
            }));
    }
    by_role
        .into_iter()
        .map(|(role, entries)| {
            let text = serde_json::to_string_pretty(&entries).unwrap_or_else(|_| "[]".into());
            let file = match role.as_str() {
                "gateway" | "prometheus" | "alertmanager" => format!("{role}.json"),
                _ => format!("backend-{role}.json"),
            };
            (file, format!("{text}\n"))
        })
        .collect()
}

/// Where the host reaches the edge, Prometheus, Grafana and each gateway's admin port.
pub(crate) fn endpoints(b: &Builder<'_>, gateway_admin: Vec<(String, String)>) -> Endpoints {
    let t = b.t;
    let publish_ip = t.publish_address();
    let host_of = |port: u16, addr: Ipv4Addr, publish: u16| {
        if b.docker() && publish != 0 {
            format!("{publish_ip}:{publish}")
        } else {
            format!("{}:{port}", b.net.addr(addr))
        }
    };
    let edge_host = if publish_ip.is_unspecified() {
        Ipv4Addr::LOCALHOST
    } else {
        publish_ip
    };
    let (prom, graf) = (&t.prometheus, &t.grafana);
    Endpoints {
        https: match &t.edge {
            Some(e) => format!("https://{edge_host}:{}", e.https_port),
            None => format!(
                "https://{}:{}",
                b.net.addr(t.gateways.vip),
                b.net.port(t.gateways.https_port)
            ),
        },
        http: match &t.edge {
            Some(e) => format!("http://{edge_host}:{}", e.http_port),
            None => format!(
                "http://{}:{}",
                b.net.addr(t.gateways.vip),
                b.net.port(t.gateways.http_port)
            ),
        },
        prometheus: format!(
            "http://{}",
            host_of(prom.port, prom.address, prom.publish_port)
        ),
        grafana: format!(
            "http://{}",
            host_of(graf.port, graf.address, graf.publish_port)
        ),
        alertmanager: t
            .alertmanager
            .as_ref()
            .map(|a| format!("http://{}", host_of(a.port, a.address, a.publish_port))),
        database: t.store.instance_address().map(|addr| {
            format!(
                "postgres://{}@{}/",
                t.store.user,
                host_of(t.store.port, addr, t.store.publish_port)
            )
        }),
        gateway_admin,
    }
}
