//! Prometheus in the cluster: it finds the gateways and every backend pod with
//! `kubernetes_sd_configs` (a pod list/watch Role in the namespace), scrapes the backends over
//! mTLS (verifying each pool's Service name) and evaluates the same rules as on Docker.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::objects::{
    config_files, container_security, empty_dir, http_probe, meta, mount, named_port, pod_security,
    resources, service, single, Object, CONFIG_DIR,
};
use super::{service_fqdn, Input, KubeError};
use crate::plan::Kind;
use crate::yaml::Yaml;

const NAME: &str = "prometheus";

fn keep(label: &str, regex: &str) -> Yaml {
    Yaml::map()
        .with("source_labels", Yaml::strs([label]))
        .with("regex", regex)
        .with("action", "keep")
}

fn set(source: &str, target: &str) -> Yaml {
    Yaml::map()
        .with("source_labels", Yaml::strs([source]))
        .with("target_label", target)
}

fn fixed(target: &str, value: &str) -> Yaml {
    Yaml::map()
        .with("target_label", target)
        .with("replacement", value)
}

/// prometheus.yml for the cluster.
pub fn config(input: &Input<'_>) -> String {
    let ns = input.namespace();
    let sd = || {
        Yaml::Seq(vec![Yaml::map()
            .with("role", "pod")
            .with("namespaces", Yaml::map().with("names", Yaml::strs([ns])))])
    };
    let app = "__meta_kubernetes_pod_label_app_kubernetes_io_name";
    let admin_port = input.topology.gateways.admin_port;
    let mut jobs = vec![Yaml::map()
        .with("job_name", "gateway")
        .with("kubernetes_sd_configs", sd())
        .with(
            "relabel_configs",
            Yaml::Seq(vec![
                keep(app, "gateway"),
                Yaml::map()
                    .with("source_labels", Yaml::strs(["__meta_kubernetes_pod_ip"]))
                    .with("target_label", "__address__")
                    .with("replacement", format!("$1:{admin_port}")),
                set(
                    "__meta_kubernetes_pod_label_insightserenity_com_instance",
                    "instance",
                ),
                fixed("role", "gateway"),
            ]),
        )];
    for pool in &input.topology.pools {
        jobs.push(
            Yaml::map()
                .with("job_name", format!("backends-{}", pool.name))
                .with("scheme", "https")
                .with(
                    "tls_config",
                    Yaml::map()
                        .with("ca_file", format!("{CONFIG_DIR}/tls/ca.crt"))
                        .with("cert_file", format!("{CONFIG_DIR}/tls/client.crt"))
                        .with("key_file", format!("{CONFIG_DIR}/tls/client.key"))
                        .with("server_name", service_fqdn(&pool.name, ns)),
                )
                .with("kubernetes_sd_configs", sd())
                .with(
                    "relabel_configs",
                    Yaml::Seq(vec![
                        keep(app, &pool.name),
                        keep("__meta_kubernetes_pod_container_port_name", "https"),
                        set("__meta_kubernetes_pod_name", "instance"),
                        fixed("role", &pool.name),
                        // The rules and dashboards know the backends as one job.
                        fixed("job", "backends"),
                    ]),
                ),
        );
    }
    jobs.push(Yaml::map().with("job_name", NAME).with(
        "static_configs",
        Yaml::Seq(vec![Yaml::map().with(
            "targets",
            Yaml::strs([format!("localhost:{}", input.topology.prometheus.port)]),
        )]),
    ));
    let mut doc = Yaml::map()
        .with(
            "global",
            Yaml::map()
                .with("scrape_interval", "15s")
                .with("scrape_timeout", "10s")
                .with("evaluation_interval", "15s")
                .with("external_labels", Yaml::map().with("platform", ns)),
        )
        .with(
            "rule_files",
            Yaml::strs([format!("{CONFIG_DIR}/rules/*.yml")]),
        )
        .with("scrape_configs", Yaml::Seq(jobs));
    if let Some(alerting) = alerting(input) {
        doc.insert("alerting", alerting);
    }
    doc.render()
}

/// Alerts go to the in-cluster Alertmanager when the topology has one.
fn alerting(input: &Input<'_>) -> Option<Yaml> {
    let am = input.topology.alertmanager.as_ref()?;
    let target = format!(
        "alertmanager.{}.svc.cluster.local:{}",
        input.namespace(),
        am.port
    );
    Some(Yaml::map().with(
        "alertmanagers",
        Yaml::Seq(vec![Yaml::map().with(
            "static_configs",
            Yaml::Seq(vec![Yaml::map().with("targets", Yaml::strs([target]))]),
        )]),
    ))
}

fn to_value<T: serde::Serialize>(name: &str, v: &T) -> Result<serde_json::Value, KubeError> {
    serde_json::to_value(v).map_err(|e| KubeError::Serialize(name.into(), e.to_string()))
}

pub(super) fn build(input: &Input<'_>) -> Result<Vec<Object>, KubeError> {
    let ns = input.namespace();
    let instance = input
        .plan
        .instances
        .iter()
        .find(|i| i.kind == Kind::Prometheus)
        .ok_or_else(|| KubeError::Missing("Prometheus".into()))?;
    let overrides = BTreeMap::from([("prometheus.yml".to_string(), config(input))]);
    let (config_map, secret, volume) = config_files(input, NAME, NAME, instance, NAME, &overrides)?;
    let port = input.topology.prometheus.port;
    let account = ServiceAccount {
        metadata: meta(NAME, NAME, ns),
        ..Default::default()
    };
    let role = Role {
        metadata: meta(NAME, NAME, ns),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: meta(NAME, NAME, ns),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: NAME.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: NAME.into(),
            namespace: Some(ns.into()),
            ..Default::default()
        }]),
    };
    let container = Container {
        name: NAME.into(),
        image: Some(instance.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec![
            format!("--config.file={CONFIG_DIR}/prometheus.yml"),
            "--storage.tsdb.path=/prometheus".into(),
            "--storage.tsdb.retention.time=15d".into(),
            format!("--web.listen-address=0.0.0.0:{port}"),
        ]),
        ports: Some(named_port("http", port)),
        liveness_probe: Some(http_probe("/-/healthy", port, false, 10)),
        readiness_probe: Some(http_probe("/-/ready", port, false, 5)),
        resources: Some(resources("250m", "512Mi", "1", "2Gi")),
        security_context: Some(container_security(false, &[])),
        volume_mounts: Some(vec![
            mount("config", CONFIG_DIR, true),
            mount("data", "/prometheus", false),
        ]),
        ..Default::default()
    };
    let deployment = single(
        NAME,
        ns,
        PodSpec {
            service_account_name: Some(NAME.into()),
            security_context: Some(pod_security(Some(65534))),
            containers: vec![container],
            volumes: Some(vec![volume, empty_dir("data")]),
            ..Default::default()
        },
    );
    let service = service(NAME, ns, "http", port, false);
    Ok(vec![
        Object::Other(
            "ServiceAccount".into(),
            NAME.into(),
            to_value(NAME, &account)?,
        ),
        Object::Other("Role".into(), NAME.into(), to_value(NAME, &role)?),
        Object::Other("RoleBinding".into(), NAME.into(), to_value(NAME, &binding)?),
        Object::ConfigMap(config_map),
        Object::Secret(secret),
        Object::Deployment(deployment),
        Object::Service(service),
    ])
}
