//! Alertmanager and Grafana in the cluster, from the same plan instances as on Docker: each a
//! one-replica Deployment with its rendered files projected at its config directory, writable
//! scratch space in emptyDirs, and a Service. Grafana's datasource and Prometheus's alerting
//! name the in-cluster Services.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, VolumeMount};

use super::objects::{
    config_files, container_security, http_probe, named_port, pod_security, resources, service,
    single, Object,
};
use super::{Input, KubeError};
use crate::plan::{Instance, Kind};

/// A service's in-cluster URL.
pub fn url(name: &str, namespace: &str, port: u16) -> String {
    format!("http://{name}.{namespace}.svc.cluster.local:{port}")
}

struct Shape<'a> {
    /// The image's numeric user (Kubernetes verifies non-root only for numeric users).
    uid: i64,
    /// Writable directories (emptyDir), beside the read-only root.
    scratch: &'a [&'a str],
    health: &'a str,
    ready: &'a str,
    overrides: BTreeMap<String, String>,
}

fn workload(input: &Input<'_>, i: &Instance, shape: Shape<'_>) -> Result<Vec<Object>, KubeError> {
    let ns = input.namespace();
    let name = i.name.as_str();
    let (config_map, secret, mut volume) =
        config_files(input, name, name, i, name, &shape.overrides)?;
    volume.name = "config".into();
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: i.config_dir.clone(),
        read_only: Some(true),
        ..Default::default()
    }];
    let mut volumes = vec![volume];
    for (n, path) in shape.scratch.iter().enumerate() {
        let vol = format!("scratch-{n}");
        mounts.push(VolumeMount {
            name: vol.clone(),
            mount_path: (*path).into(),
            read_only: Some(false),
            ..Default::default()
        });
        volumes.push(super::objects::empty_dir(&vol));
    }
    let env: Vec<EnvVar> = i
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            // Listen on every address of the pod.
            value: Some(if k == "GF_SERVER_HTTP_ADDR" {
                "0.0.0.0".into()
            } else {
                v.clone()
            }),
            ..Default::default()
        })
        .collect();
    let args: Vec<String> = i
        .args
        .iter()
        .map(|a| match a.split_once("--web.listen-address=") {
            Some(("", _)) => format!("--web.listen-address=0.0.0.0:{}", i.port),
            _ => a.clone(),
        })
        .collect();
    let container = Container {
        name: name.into(),
        image: Some(i.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: (!args.is_empty()).then_some(args),
        env: (!env.is_empty()).then_some(env),
        ports: Some(named_port("http", i.port)),
        liveness_probe: Some(http_probe(shape.health, i.port, false, 10)),
        readiness_probe: Some(http_probe(shape.ready, i.port, false, 5)),
        resources: Some(resources("100m", "128Mi", "500m", "512Mi")),
        security_context: Some(container_security(false, &[])),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let deployment = single(
        name,
        ns,
        PodSpec {
            automount_service_account_token: Some(false),
            security_context: Some(pod_security(Some(shape.uid))),
            containers: vec![container],
            volumes: Some(volumes),
            ..Default::default()
        },
    );
    let service = service(name, ns, "http", i.port, false);
    Ok(vec![
        Object::ConfigMap(config_map),
        Object::Secret(secret),
        Object::Deployment(deployment),
        Object::Service(service),
    ])
}

pub(super) fn build(input: &Input<'_>) -> Result<Vec<Object>, KubeError> {
    let ns = input.namespace();
    let mut out = Vec::new();
    for i in &input.plan.instances {
        let shape = match i.kind {
            Kind::Alertmanager => Shape {
                uid: 65534,
                scratch: &["/alertmanager", "/tmp"],
                health: "/-/healthy",
                ready: "/-/ready",
                overrides: BTreeMap::new(),
            },
            Kind::Grafana => {
                let prom = &input.topology.prometheus;
                let datasource = crate::plan::assets::GRAFANA_DATASOURCE
                    .replace("http://prometheus:9090", &url("prometheus", ns, prom.port));
                Shape {
                    uid: 472,
                    scratch: &["/var/lib/grafana", "/tmp"],
                    health: "/api/health",
                    ready: "/api/health",
                    overrides: BTreeMap::from([(
                        "provisioning/datasources/prometheus.yml".to_string(),
                        datasource,
                    )]),
                }
            }
            _ => continue,
        };
        out.extend(workload(input, i, shape)?);
    }
    Ok(out)
}
