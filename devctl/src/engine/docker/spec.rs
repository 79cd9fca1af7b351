//! What Docker is told about an instance: the container body (image, command, env, user,
//! labels, health check, ports, mounts, fixed address), the tar of its files, and how
//! Docker's view of a container maps to our [`State`] and [`Health`].

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointIpamConfig,
    EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig, HostConfigLogConfig, Mount,
    MountType, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};

use crate::compose::{HEALTH_INTERVAL_S, HEALTH_RETRIES, HEALTH_START_PERIOD_S, HEALTH_TIMEOUT_S};
use crate::engine::{Health, State};
use crate::plan::{Instance, Kind, Plan, IMAGE_UID, LABEL_INSTANCE, LABEL_ROLE};
use crate::state::FileBytes;

fn secs_ns(s: u64) -> i64 {
    i64::try_from(Duration::from_secs(s).as_nanos()).unwrap_or(i64::MAX)
}

/// The container body (without the spec-hash label, which is computed over it).
pub fn body(plan: &Plan, i: &Instance, targets_dir: &Path) -> ContainerCreateBody {
    let mut labels: HashMap<String, String> = plan.labels().into_iter().collect();
    labels.insert(LABEL_ROLE.into(), i.role.clone());
    labels.insert(LABEL_INSTANCE.into(), i.name.clone());
    let healthcheck = i.container_probe().map(|probe| {
        let mut test = vec!["CMD".to_string()];
        test.extend(probe);
        HealthConfig {
            test: Some(test),
            interval: Some(secs_ns(HEALTH_INTERVAL_S)),
            timeout: Some(secs_ns(HEALTH_TIMEOUT_S)),
            retries: Some(HEALTH_RETRIES),
            start_period: Some(secs_ns(HEALTH_START_PERIOD_S)),
            start_interval: None,
        }
    });
    let mut port_bindings = HashMap::new();
    let mut exposed = Vec::new();
    for p in &i.publish {
        let key = format!("{}/tcp", p.container_port);
        exposed.push(key.clone());
        port_bindings.insert(
            key,
            Some(vec![PortBinding {
                host_ip: Some(p.host_ip.to_string()),
                host_port: Some(p.host_port.to_string()),
            }]),
        );
    }
    let mut mounts = Vec::new();
    if let Some((volume, path)) = &i.volume {
        mounts.push(Mount {
            target: Some(path.clone()),
            source: Some(volume.clone()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        });
    }
    if i.kind == Kind::Prometheus {
        mounts.push(Mount {
            target: Some(format!("{}/targets", i.config_dir)),
            source: Some(targets_dir.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let ours = matches!(i.kind, Kind::Gateway | Kind::Backend | Kind::Edge);
    ContainerCreateBody {
        hostname: Some(i.name.clone()),
        image: Some(i.image.clone()),
        cmd: Some(i.args.clone()),
        env: Some(i.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        user: i.user.clone(),
        labels: Some(labels),
        healthcheck,
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            cap_add: (!i.cap_add.is_empty()).then(|| i.cap_add.clone()),
            sysctls: (!i.sysctls.is_empty()).then(|| i.sysctls.iter().cloned().collect()),
            restart_policy: Some(RestartPolicy {
                name: Some(if ours {
                    RestartPolicyNameEnum::ON_FAILURE
                } else {
                    RestartPolicyNameEnum::UNLESS_STOPPED
                }),
                maximum_retry_count: None,
            }),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            mounts: (!mounts.is_empty()).then_some(mounts),
            // Logs rotate instead of filling the disk; `devctl logs` reads the live file.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), plan.logs.max_size.clone()),
                    ("max-file".to_string(), plan.logs.max_file.to_string()),
                ])),
            }),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                plan.network.name.clone(),
                EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig {
                        ipv4_address: Some(i.address.to_string()),
                        ..Default::default()
                    }),
                    aliases: Some(i.aliases.clone()),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

/// The uid that owns uploaded files: the instance's user, else the image's.
pub fn owner_uid(instance: &Instance, image_user: &str) -> u64 {
    if let Some(u) = &instance.user {
        return u
            .split(':')
            .next()
            .and_then(|u| u.parse().ok())
            .unwrap_or(0);
    }
    match image_user.split(':').next().unwrap_or("") {
        "" | "root" => 0,
        "nobody" => 65534,
        u => u.parse().unwrap_or(u64::from(IMAGE_UID)),
    }
}

/// A tar of an instance's files at their absolute paths, owned by `uid`.
pub fn files_tar(config_dir: &str, files: &[&FileBytes], uid: u64) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let full = format!("{}/{}", config_dir.trim_end_matches('/'), f.path);
        let full = full.trim_start_matches('/').to_string();
        let parts: Vec<&str> = full.split('/').collect();
        let mut acc = String::new();
        for part in &parts[..parts.len().saturating_sub(1)] {
            acc = if acc.is_empty() {
                part.to_string()
            } else {
                format!("{acc}/{part}")
            };
            if dirs.insert(acc.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_uid(uid);
                h.set_gid(uid);
                h.set_size(0);
                h.set_mtime(0);
                b.append_data(&mut h, format!("{acc}/"), std::io::empty())?;
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(if f.private { 0o600 } else { 0o644 });
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(f.bytes.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, &full, f.bytes.as_slice())?;
    }
    b.into_inner()
}

/// Docker's state and health of a container, in our terms.
pub fn container_state(c: &ContainerInspectResponse) -> (State, Health) {
    let state = c
        .state
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| match s {
            ContainerStateStatusEnum::RUNNING => State::Running,
            ContainerStateStatusEnum::CREATED => State::Created,
            ContainerStateStatusEnum::RESTARTING => State::Restarting,
            ContainerStateStatusEnum::PAUSED => State::Paused,
            ContainerStateStatusEnum::EXITED => State::Exited,
            ContainerStateStatusEnum::DEAD => State::Dead,
            ContainerStateStatusEnum::REMOVING => State::Removing,
            ContainerStateStatusEnum::STOPPING => State::Stopping,
            ContainerStateStatusEnum::EMPTY => State::Unknown,
        })
        .unwrap_or(State::Unknown);
    let health = c
        .state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .map(|h| match h {
            HealthStatusEnum::HEALTHY => Health::Healthy,
            HealthStatusEnum::UNHEALTHY => Health::Unhealthy,
            HealthStatusEnum::STARTING => Health::Starting,
            HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => Health::None,
        })
        .unwrap_or(Health::None);
    (state, health)
}

/// How long ago an RFC 3339 instant was.
pub fn uptime_since(started_at: &str) -> Option<Duration> {
    let t = time::OffsetDateTime::parse(started_at, &time::format_description::well_known::Rfc3339)
        .ok()?;
    let d = time::OffsetDateTime::now_utc() - t;
    d.try_into().ok()
}
