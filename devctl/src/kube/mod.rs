//! `devctl render --target kubernetes`: the topology as a kustomize base plus `dev` and
//! `production` overlays, built from typed Kubernetes objects (k8s-openapi) and written as
//! YAML. Pure: the plan, its certificates and the pinned digests in, files out.
//!
//! The shape (`objects`): each pool a StatefulSet behind a headless Service (the gateways
//! find its pods by DNS: `discover`), the gateway pair as two one-replica Deployments on the
//! two edge nodes (host network, NET_ADMIN + NET_RAW only, the same `[ha]` as on VMs),
//! Prometheus discovering pods with `kubernetes_sd_configs`, PodDisruptionBudgets and
//! NetworkPolicies (backends accept only the gateways' nodes and Prometheus). The database is
//! external: a `database` Secret the operator creates holds its password and CA.

use std::collections::BTreeMap;

use crate::plan::{CertSpec, Plan};
use crate::registry::Pins;
use crate::state::Certs;
use crate::topology::Topology;
use crate::yaml::Yaml;

mod objects;
mod observers;
mod prometheus;

pub use objects::{Object, CONFIG_DIR, GATEWAY_NODE_LABEL};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("gateway config of {0}: {1}")]
    GatewayConfig(String, String),
    #[error("serializing {0}: {1}")]
    Serialize(String, String),
    #[error("the plan has no {0}")]
    Missing(String),
}

/// What the manifests are rendered from.
pub struct Input<'a> {
    pub topology: &'a Topology,
    pub plan: &'a Plan,
    pub certs: &'a Certs,
    pub pins: &'a Pins,
}

impl Input<'_> {
    pub fn namespace(&self) -> &str {
        &self.topology.project
    }
}

/// A pool's headless Service name inside the cluster.
pub fn service_fqdn(pool: &str, namespace: &str) -> String {
    format!("{pool}.{namespace}.svc.cluster.local")
}

/// The leaves the cluster needs beyond the plan's: one per pool, for every pod of its
/// StatefulSet (the gateways verify the Service name).
pub fn certificates(topology: &Topology) -> Vec<CertSpec> {
    let ns = &topology.project;
    topology
        .pools
        .iter()
        .map(|p| CertSpec {
            name: format!("k8s-{}", p.name),
            common_name: p.name.clone(),
            sans: vec![
                p.name.clone(),
                format!("{}.{ns}", p.name),
                format!("{}.{ns}.svc", p.name),
                service_fqdn(&p.name, ns),
                format!("*.{}", service_fqdn(&p.name, ns)),
                "localhost".into(),
                "127.0.0.1".into(),
            ],
        })
        .collect()
}

/// Every file: `base/*.yaml` with its `kustomization.yaml`, and the two overlays.
pub fn render(input: &Input<'_>) -> Result<Vec<(String, String)>, KubeError> {
    let objects = objects::build(input)?;
    let mut files = Vec::new();
    let mut resources = Vec::new();
    for object in &objects {
        let file = format!("{}-{}.yaml", object.kind().to_lowercase(), object.name());
        let value = object.to_json()?;
        files.push((format!("base/{file}"), Yaml::from_json(&value).render()));
        resources.push(file);
    }
    files.push((
        "base/kustomization.yaml".into(),
        Yaml::map()
            .with("apiVersion", "kustomize.config.k8s.io/v1beta1")
            .with("kind", "Kustomization")
            .with("namespace", input.namespace())
            .with("resources", Yaml::strs(resources))
            .render(),
    ));
    files.push((
        "overlays/production/kustomization.yaml".into(),
        overlay(input, true),
    ));
    files.push((
        "overlays/dev/kustomization.yaml".into(),
        overlay(input, false),
    ));
    Ok(files)
}

/// An overlay: production pins our images by digest (when `images push` pinned them); dev
/// runs the tags with two replicas per pool (same namespace: the gateways' and Prometheus's
/// Service names are in their configs).
fn overlay(input: &Input<'_>, production: bool) -> String {
    let mut doc = Yaml::map()
        .with("apiVersion", "kustomize.config.k8s.io/v1beta1")
        .with("kind", "Kustomization")
        .with("resources", Yaml::strs(["../../base"]));
    let ours: BTreeMap<&str, &str> = input
        .plan
        .instances
        .iter()
        .filter(|i| i.image.starts_with(&format!("{}/", input.plan.project)))
        .map(|i| (i.image.as_str(), i.binary.as_str()))
        .collect();
    if production {
        let mut images = Vec::new();
        for tag in ours.keys() {
            let name = tag.rsplit_once(':').map_or(*tag, |(n, _)| n);
            if let Some((repo, digest)) = input.pins.get(tag).and_then(|p| p.split_once('@')) {
                images.push(
                    Yaml::map()
                        .with("name", name)
                        .with("newName", repo)
                        .with("digest", digest),
                );
            }
        }
        if !images.is_empty() {
            doc.insert("images", Yaml::Seq(images));
        }
    } else {
        doc.insert(
            "replicas",
            Yaml::Seq(
                input
                    .topology
                    .pools
                    .iter()
                    .map(|p| {
                        Yaml::map()
                            .with("name", p.name.as_str())
                            .with("count", Yaml::Int(2))
                    })
                    .collect(),
            ),
        );
    }
    doc.render()
}

#[cfg(test)]
mod tests;
