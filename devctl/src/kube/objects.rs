//! The typed objects: one builder per workload, shared pod-spec pieces (config volume,
//! probes, security contexts, resources) in small functions.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapProjection, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, Namespace,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodAffinityTerm, PodAntiAffinity, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    Secret, SecretKeySelector, SecretProjection, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{service_fqdn, Input, KubeError};
use crate::plan::{FileSource, Instance, Kind};

/// The gateway pair's shared ACME storage claim.
const ACME_CLAIM: &str = "gateway-acme";

/// Where every workload's files are mounted (the same path as in its container on Docker).
pub const CONFIG_DIR: &str = "/etc/insightserenity";
const LABEL_APP: &str = "app.kubernetes.io/name";
const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// The Secret holding each pool's database URL (key: the pool).
pub const DATABASE_URL_SECRET: &str = "database-url";
/// The node label that places gateway-N on its edge node.
pub const GATEWAY_NODE_LABEL: &str = "insightserenity.com/gateway";

/// One object of the base.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Service(Service),
    StatefulSet(StatefulSet),
    Deployment(Deployment),
    Pdb(PodDisruptionBudget),
    Pvc(PersistentVolumeClaim),
    NetworkPolicy(NetworkPolicy),
    Other(String, String, serde_json::Value),
}

impl Object {
    pub fn kind(&self) -> &str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Service(_) => "Service",
            Object::StatefulSet(_) => "StatefulSet",
            Object::Deployment(_) => "Deployment",
            Object::Pdb(_) => "PodDisruptionBudget",
            Object::Pvc(_) => "PersistentVolumeClaim",
            Object::NetworkPolicy(_) => "NetworkPolicy",
            Object::Other(kind, _, _) => kind,
        }
    }

    fn meta(&self) -> Option<&ObjectMeta> {
        Some(match self {
            Object::Namespace(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::StatefulSet(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::Pdb(o) => &o.metadata,
            Object::Pvc(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Other(..) => return None,
        })
    }

    pub fn name(&self) -> String {
        match self {
            Object::Other(_, name, _) => name.clone(),
            _ => self.meta().and_then(|m| m.name.clone()).unwrap_or_default(),
        }
    }

    pub fn to_json(&self) -> Result<serde_json::Value, KubeError> {
        let err = |e: serde_json::Error| KubeError::Serialize(self.name(), e.to_string());
        match self {
            Object::Namespace(o) => serde_json::to_value(o).map_err(err),
            Object::ConfigMap(o) => serde_json::to_value(o).map_err(err),
            Object::Secret(o) => serde_json::to_value(o).map_err(err),
            Object::Service(o) => serde_json::to_value(o).map_err(err),
            Object::StatefulSet(o) => serde_json::to_value(o).map_err(err),
            Object::Deployment(o) => serde_json::to_value(o).map_err(err),
            Object::Pdb(o) => serde_json::to_value(o).map_err(err),
            Object::Pvc(o) => serde_json::to_value(o).map_err(err),
            Object::NetworkPolicy(o) => serde_json::to_value(o).map_err(err),
            Object::Other(_, _, v) => Ok(v.clone()),
        }
    }
}

pub(super) fn labels(app: &str, part_of: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP.to_string(), app.to_string()),
        (LABEL_PART_OF.to_string(), part_of.to_string()),
    ])
}

pub(super) fn meta(name: &str, app: &str, part_of: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(labels(app, part_of)),
        ..Default::default()
    }
}

pub(super) fn selector(app: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(LABEL_APP.to_string(), app.to_string())])),
        ..Default::default()
    }
}

fn key_of(path: &str) -> String {
    path.replace('/', "_")
}

/// An instance's files as a ConfigMap (text) and a Secret (certificates, keys, secrets), and
/// the projected volume that puts both back at their paths under [`CONFIG_DIR`].
/// `leaf` renames the instance's own certificate (pods of a StatefulSet share one).
pub(super) fn config_files(
    input: &Input<'_>,
    name: &str,
    app: &str,
    instance: &Instance,
    leaf: &str,
    text_override: &BTreeMap<String, String>,
) -> Result<(ConfigMap, Secret, Volume), KubeError> {
    let ns = input.namespace();
    let mut data = BTreeMap::new();
    let mut secret = BTreeMap::new();
    let mut config_items = Vec::new();
    let mut secret_items = Vec::new();
    for f in &instance.files {
        let key = key_of(&f.path);
        let item = KeyToPath {
            key: key.clone(),
            path: f.path.clone(),
            mode: None,
        };
        match &f.source {
            FileSource::Text(t) => {
                let text = text_override.get(&f.path).unwrap_or(t);
                data.insert(key, text.clone());
                config_items.push(item);
            }
            source => {
                // The instance's own leaf is `leaf` here (a StatefulSet's pods share one);
                // another (the gateways' client certificate) keeps its name.
                let leaf_of = |n: &str| {
                    let name = if n == instance.name { leaf } else { n };
                    input
                        .certs
                        .leaves
                        .get(name)
                        .ok_or_else(|| KubeError::Missing(format!("certificate {name}")))
                };
                let text = match source {
                    FileSource::CaCert => input.certs.ca.clone(),
                    FileSource::Cert(n) => leaf_of(n)?.cert.clone(),
                    FileSource::Key(n) => leaf_of(n)?.key.clone(),
                    FileSource::Secret(s) => s.clone(),
                    FileSource::Text(_) => String::new(),
                };
                secret.insert(key, text);
                secret_items.push(item);
            }
        }
    }
    let config_map = ConfigMap {
        metadata: meta(&format!("{name}-config"), app, ns),
        data: Some(data),
        ..Default::default()
    };
    let secret_obj = Secret {
        metadata: meta(&format!("{name}-files"), app, ns),
        string_data: Some(secret),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let volume = Volume {
        name: "config".into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: format!("{name}-config"),
                        items: Some(config_items),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    secret: Some(SecretProjection {
                        name: format!("{name}-files"),
                        items: Some(secret_items),
                        optional: None,
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    };
    Ok((config_map, secret_obj, volume))
}

pub(super) fn quantity(q: &str) -> Quantity {
    Quantity(q.to_string())
}

pub(super) fn resources(
    cpu: &str,
    memory: &str,
    cpu_limit: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), quantity(cpu)),
            ("memory".to_string(), quantity(memory)),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_string(), quantity(cpu_limit)),
            ("memory".to_string(), quantity(memory_limit)),
        ])),
        ..Default::default()
    }
}

pub(super) fn http_probe(path: &str, port: u16, https: bool, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(port)),
            scheme: Some(if https { "HTTPS" } else { "HTTP" }.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// Non-root, read-only root filesystem, no privilege escalation, every capability dropped
/// (`add`: the few a workload needs).
pub(super) fn container_security(run_as_root: bool, add: &[&str]) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(!run_as_root),
        run_as_user: run_as_root.then_some(0),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: (!add.is_empty()).then(|| add.iter().map(|c| c.to_string()).collect()),
        }),
        ..Default::default()
    }
}

pub(super) fn pod_security(uid: Option<i64>) -> PodSecurityContext {
    PodSecurityContext {
        run_as_user: uid,
        run_as_group: uid,
        fs_group: uid,
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// A Service in front of `app`'s pods on `port` (named `port_name`); headless for a
/// StatefulSet, whose pods the gateways find one by one.
pub(super) fn service(
    app: &str,
    namespace: &str,
    port_name: &str,
    port: u16,
    headless: bool,
) -> Service {
    Service {
        metadata: meta(app, app, namespace),
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".into()),
            selector: selector(app).match_labels,
            ports: Some(vec![ServicePort {
                name: Some(port_name.into()),
                port: i32::from(port),
                target_port: Some(IntOrString::String(port_name.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container port with its name (what probes, Services and scrapes refer to).
pub(super) fn named_port(name: &str, port: u16) -> Vec<ContainerPort> {
    vec![ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..Default::default()
    }]
}

/// A one-replica Deployment of `app` running `pod`.
pub(super) fn single(app: &str, namespace: &str, pod: PodSpec) -> Deployment {
    Deployment {
        metadata: meta(app, app, namespace),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: selector(app),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(app, namespace)),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

/// Our image, by the digest `images push` pinned when there is one.
pub(super) fn image_of(input: &Input<'_>, i: &Instance) -> String {
    input.pins.get(&i.image).unwrap_or(&i.image).to_string()
}

/// Every object of the base.
pub(super) fn build(input: &Input<'_>) -> Result<Vec<Object>, KubeError> {
    let ns = input.namespace();
    let mut out = vec![Object::Namespace(Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_string()),
            labels: Some(BTreeMap::from([
                (LABEL_PART_OF.to_string(), ns.to_string()),
                // Pod Security admission: the namespace holds privileged gateways.
                (
                    "pod-security.kubernetes.io/enforce".to_string(),
                    "privileged".to_string(),
                ),
            ])),
            ..Default::default()
        },
        ..Default::default()
    })];
    for pool in &input.topology.pools {
        out.extend(backend(input, &pool.name)?);
    }
    // Each pool's database URL, as the topology names it (no password: that is the
    // `database` Secret's).
    let urls: BTreeMap<String, String> = input
        .plan
        .instances
        .iter()
        .filter(|i| i.kind == Kind::Backend)
        .filter_map(|i| {
            let url = i.env.iter().find(|(k, _)| k == "DATABASE_URL")?;
            Some((i.role.clone(), url.1.clone()))
        })
        .collect();
    if !urls.is_empty() {
        out.push(Object::Secret(Secret {
            metadata: meta(DATABASE_URL_SECRET, "database", ns),
            string_data: Some(urls),
            type_: Some("Opaque".into()),
            ..Default::default()
        }));
    }
    out.extend(gateways(input)?);
    out.extend(super::prometheus::build(input)?);
    out.extend(super::observers::build(input)?);
    out.extend(network_policies(input));
    Ok(out)
}

/// A pool: StatefulSet, headless Service, PodDisruptionBudget, its files.
fn backend(input: &Input<'_>, pool: &str) -> Result<Vec<Object>, KubeError> {
    let ns = input.namespace();
    let topo = input
        .topology
        .pool(pool)
        .ok_or_else(|| KubeError::Missing(format!("pool {pool}")))?;
    let first = input
        .plan
        .instances
        .iter()
        .find(|i| i.kind == Kind::Backend && i.role == pool)
        .ok_or_else(|| KubeError::Missing(format!("instance of {pool}")))?;
    let (config_map, secret, config_volume) = config_files(
        input,
        pool,
        pool,
        first,
        &format!("k8s-{pool}"),
        &BTreeMap::new(),
    )?;
    let mut env: Vec<EnvVar> = first
        .env
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "HOST" | "INSTANCE_ID" | "DATA_DIR"))
        .map(|(k, v)| match k.as_str() {
            // The database's address is a Secret's (the operator may put credentials in it).
            "DATABASE_URL" => EnvVar {
                name: k.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: DATABASE_URL_SECRET.into(),
                        key: pool.into(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            _ => EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                ..Default::default()
            },
        })
        .collect();
    env.push(EnvVar {
        name: "HOST".into(),
        value: Some("0.0.0.0".into()),
        ..Default::default()
    });
    env.push(EnvVar {
        name: "DATA_DIR".into(),
        value: Some("/data".into()),
        ..Default::default()
    });
    env.push(EnvVar {
        name: "INSTANCE_ID".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                api_version: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut mounts = vec![
        mount("config", CONFIG_DIR, true),
        mount("data", "/data", false),
        mount("tmp", "/tmp", false),
    ];
    let mut volumes = vec![config_volume, empty_dir("data"), empty_dir("tmp")];
    // An external database: its password and CA come from the `database` Secret.
    if env.iter().any(|e| e.name == "DATABASE_URL")
        && !env.iter().any(|e| e.name == "DATABASE_PASSWORD_FILE")
    {
        for (name, file) in [
            ("DATABASE_PASSWORD_FILE", "password"),
            ("DATABASE_CA", "ca.crt"),
        ] {
            env.push(EnvVar {
                name: name.into(),
                value: Some(format!("/etc/database/{file}")),
                ..Default::default()
            });
        }
        mounts.push(mount("database", "/etc/database", true));
        volumes.push(Volume {
            name: "database".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("database".into()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: pool.into(),
        image: Some(image_of(input, first)),
        image_pull_policy: Some("IfNotPresent".into()),
        env: Some(env),
        ports: Some(named_port("https", topo.port)),
        liveness_probe: Some(http_probe("/health", topo.port, true, 10)),
        readiness_probe: Some(http_probe("/ready", topo.port, true, 2)),
        resources: Some(resources("250m", "128Mi", "1", "512Mi")),
        security_context: Some(container_security(false, &[])),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let statefulset = StatefulSet {
        metadata: meta(pool, pool, ns),
        spec: Some(StatefulSetSpec {
            service_name: Some(pool.into()),
            replicas: Some(i32::try_from(topo.instances).unwrap_or(i32::MAX)),
            pod_management_policy: Some("Parallel".into()),
            selector: selector(pool),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(pool, ns)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(40),
                    security_context: Some(pod_security(Some(i64::from(crate::plan::IMAGE_UID)))),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = service(pool, ns, "https", topo.port, true);
    let pdb = PodDisruptionBudget {
        metadata: meta(pool, pool, ns),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(pool)),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(vec![
        Object::ConfigMap(config_map),
        Object::Secret(secret),
        Object::Service(service),
        Object::StatefulSet(statefulset),
        Object::Pdb(pdb),
    ])
}

/// The gateways' config for the cluster: each upstream finds its servers by the pool's
/// headless Service (so `kubectl scale` is all it takes) and verifies that name.
fn gateway_toml(input: &Input<'_>, text: &str, name: &str) -> Result<String, KubeError> {
    let mut config = gateway_config::Config::parse(text)
        .map_err(|e| KubeError::GatewayConfig(name.into(), e.to_string()))?;
    let ns = input.namespace();
    for (pool, upstream) in &mut config.upstreams {
        let Some(topo) = input.topology.pool(pool) else {
            continue;
        };
        let fqdn = service_fqdn(pool, ns);
        upstream.servers.clear();
        upstream.server_name = Some(fqdn.clone());
        upstream.discover = Some(gateway_config::DiscoverConfig {
            name: fqdn,
            port: topo.port,
            interval: gateway_config::Dur(std::time::Duration::from_secs(5)),
            weight: topo.scale_weight,
            max_fails: topo.max_fails,
            fail_timeout: topo.fail_timeout,
            max_conns: topo.max_conns,
        });
    }
    if let Some(acme) = config.https.as_mut().and_then(|h| h.acme.as_mut()) {
        acme.storage = "/data/acme".into();
    }
    toml::to_string(&config).map_err(|e| KubeError::GatewayConfig(name.into(), e.to_string()))
}

/// gateway-N: a one-replica Deployment on the node labelled for it, host network (the VIP is
/// the node network's), NET_ADMIN + NET_RAW only.
fn gateways(input: &Input<'_>) -> Result<Vec<Object>, KubeError> {
    let ns = input.namespace();
    let mut out = Vec::new();
    // Under `[tls] acme` the pair shares one ACME storage (account, certificate, challenges,
    // order lease): a ReadWriteMany claim both gateway pods mount.
    let acme = input.topology.tls.acme.is_some();
    if acme {
        out.push(Object::Pvc(PersistentVolumeClaim {
            metadata: meta(ACME_CLAIM, "gateway", ns),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteMany".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity("64Mi".into()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }));
    }
    for g in input.plan.gateways() {
        let text = g
            .files
            .iter()
            .find_map(|f| match &f.source {
                FileSource::Text(t) if f.path == "gateway.toml" => Some(t.clone()),
                _ => None,
            })
            .ok_or_else(|| KubeError::Missing(format!("{}'s gateway.toml", g.name)))?;
        let overrides = BTreeMap::from([(
            "gateway.toml".to_string(),
            gateway_toml(input, &text, &g.name)?,
        )]);
        let (config_map, secret, volume) =
            config_files(input, &g.name, "gateway", g, &g.name, &overrides)?;
        let admin = input.topology.gateways.admin_port;
        let container = Container {
            name: "gateway".into(),
            image: Some(image_of(input, g)),
            image_pull_policy: Some("IfNotPresent".into()),
            args: Some(g.args.clone()),
            liveness_probe: Some(http_probe("/-/healthy", admin, false, 5)),
            readiness_probe: Some(http_probe("/-/ready", admin, false, 2)),
            resources: Some(resources("500m", "128Mi", "2", "512Mi")),
            security_context: Some(container_security(true, &["NET_ADMIN", "NET_RAW"])),
            volume_mounts: Some(
                [
                    mount("config", CONFIG_DIR, true),
                    mount("tmp", "/tmp", false),
                ]
                .into_iter()
                .chain(acme.then(|| mount("acme", "/data/acme", false)))
                .collect(),
            ),
            ..Default::default()
        };
        let mut volumes = vec![volume, empty_dir("tmp")];
        if acme {
            volumes.push(Volume {
                name: "acme".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: ACME_CLAIM.into(),
                    read_only: Some(false),
                }),
                ..Default::default()
            });
        }
        let mut template_labels = labels("gateway", ns);
        template_labels.insert("insightserenity.com/instance".into(), g.name.clone());
        let deployment = Deployment {
            metadata: meta(&g.name, "gateway", ns),
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                // Two pods of one gateway would fight over the host's ports.
                strategy: Some(DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    ..Default::default()
                }),
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "insightserenity.com/instance".to_string(),
                        g.name.clone(),
                    )])),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(template_labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        host_network: Some(true),
                        dns_policy: Some("ClusterFirstWithHostNet".into()),
                        node_selector: Some(BTreeMap::from([(
                            GATEWAY_NODE_LABEL.to_string(),
                            g.name.clone(),
                        )])),
                        affinity: Some(Affinity {
                            pod_anti_affinity: Some(PodAntiAffinity {
                                required_during_scheduling_ignored_during_execution: Some(vec![
                                    PodAffinityTerm {
                                        label_selector: Some(selector("gateway")),
                                        topology_key: "kubernetes.io/hostname".into(),
                                        ..Default::default()
                                    },
                                ]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        automount_service_account_token: Some(false),
                        termination_grace_period_seconds: Some(40),
                        security_context: Some(pod_security(None)),
                        containers: vec![container],
                        volumes: Some(volumes),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        out.push(Object::ConfigMap(config_map));
        out.push(Object::Secret(secret));
        out.push(Object::Deployment(deployment));
    }
    out.push(Object::Pdb(PodDisruptionBudget {
        metadata: meta("gateway", "gateway", ns),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector("gateway")),
            ..Default::default()
        }),
        ..Default::default()
    }));
    Ok(out)
}

/// Nothing gets in unless allowed: backends from the gateways' nodes (host network: their
/// addresses) and Prometheus; Prometheus from the namespace.
fn network_policies(input: &Input<'_>) -> Vec<Object> {
    let ns = input.namespace();
    let mut out = vec![Object::NetworkPolicy(NetworkPolicy {
        metadata: meta("default-deny-ingress", "policy", ns),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ..Default::default()
        }),
    })];
    let gateway_nodes: Vec<NetworkPolicyPeer> = input
        .topology
        .gateway_addresses()
        .into_iter()
        .map(|a| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: format!("{a}/32"),
                except: None,
            }),
            ..Default::default()
        })
        .collect();
    for pool in &input.topology.pools {
        let mut from = gateway_nodes.clone();
        from.push(NetworkPolicyPeer {
            pod_selector: Some(selector("prometheus")),
            ..Default::default()
        });
        out.push(Object::NetworkPolicy(NetworkPolicy {
            metadata: meta(&format!("{}-ingress", pool.name), &pool.name, ns),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(selector(&pool.name)),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(from),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(i32::from(pool.port))),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                }]),
                ..Default::default()
            }),
        }));
    }
    // Alertmanager hears from Prometheus; Grafana from the namespace (an ingress or
    // `kubectl port-forward` in front).
    let prometheus_pods = NetworkPolicyPeer {
        pod_selector: Some(selector("prometheus")),
        ..Default::default()
    };
    let namespace_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..Default::default()
    };
    for i in &input.plan.instances {
        let from = match i.kind {
            Kind::Alertmanager => prometheus_pods.clone(),
            Kind::Grafana => namespace_pods.clone(),
            _ => continue,
        };
        out.push(Object::NetworkPolicy(NetworkPolicy {
            metadata: meta(&format!("{}-ingress", i.name), &i.name, ns),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(selector(&i.name)),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![from]),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(i32::from(i.port))),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                }]),
                ..Default::default()
            }),
        }));
    }
    out.push(Object::NetworkPolicy(NetworkPolicy {
        metadata: meta("prometheus-ingress", "prometheus", ns),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector("prometheus")),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector::default()),
                    ..Default::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(input.topology.prometheus.port))),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }));
    out
}
