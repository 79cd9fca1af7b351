//! The Docker engine (bollard): a labelled network with the topology's subnet, one volume per
//! pool, containers at fixed addresses with their config and certificates uploaded, the spec
//! fingerprint kept in a label. [`spec`] says what a container is, [`images`] where its image
//! comes from, [`logs`] reads its output.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{
    ContainerInspectResponse, Ipam, IpamConfig, NetworkCreateRequest, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};

use super::{Engine, EngineError, LogQuery, Observed, PrepareMode, Prepared, Result, State, Work};
use crate::plan::{Instance, Plan, LABEL_INSTANCE, LABEL_ROLE, LABEL_SPEC_HASH};
use crate::state::{files_hash, hash_parts, FileBytes, StateDir};
use crate::ui::Ui;

mod exec;
mod images;
mod logs;
mod registry;
pub mod spec;

pub use images::LABEL_IMAGE;

fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// Connects and negotiates the API version, within a few seconds.
pub async fn connect() -> Result<Docker> {
    let unreachable = |reason: String| EngineError::Unreachable {
        host: docker_host(),
        reason,
    };
    let docker = Docker::connect_with_local_defaults().map_err(|e| unreachable(e.to_string()))?;
    let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
        .await
        .map_err(|_| unreachable("no answer within 5s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::time::timeout(Duration::from_secs(5), docker.ping())
        .await
        .map_err(|_| unreachable("no answer within 5s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// One of our containers: the instance it runs and its container name.
struct Ours {
    instance: String,
    container: String,
}

pub struct DockerEngine {
    docker: Docker,
    /// `<project>-<deployment>`: the prefix of every container, network and volume name.
    prefix: String,
    deployment: String,
    state: StateDir,
    /// The checkout our images are built from, if any.
    repo: Option<PathBuf>,
}

impl DockerEngine {
    pub async fn connect(
        project: &str,
        deployment: &str,
        state: StateDir,
        repo: Option<PathBuf>,
    ) -> Result<DockerEngine> {
        Ok(DockerEngine {
            docker: connect().await?,
            prefix: format!("{project}-{deployment}"),
            deployment: deployment.to_string(),
            state,
            repo,
        })
    }

    fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn label_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            crate::plan::labels(&self.deployment)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        )])
    }

    async fn ours(&self) -> Result<Vec<Ours>> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&self.label_filter())
            .build();
        let list = self.docker.list_containers(Some(options)).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let instance = c.labels.as_ref()?.get(LABEL_INSTANCE)?.clone();
                let container = c
                    .names?
                    .into_iter()
                    .next()?
                    .trim_start_matches('/')
                    .to_string();
                Some(Ours {
                    instance,
                    container,
                })
            })
            .collect())
    }

    async fn inspect(&self, container: &str) -> Option<ContainerInspectResponse> {
        self.docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
    }

    fn observed(name: &str, c: &ContainerInspectResponse) -> Observed {
        let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
        let label = |key: &str| labels.and_then(|l| l.get(key).cloned());
        let (state, health) = spec::container_state(c);
        let uptime = (state == State::Running)
            .then(|| {
                c.state
                    .as_ref()
                    .and_then(|s| s.started_at.as_deref())
                    .and_then(spec::uptime_since)
            })
            .flatten();
        Observed {
            name: label(LABEL_INSTANCE).unwrap_or_else(|| name.to_string()),
            role: label(LABEL_ROLE).unwrap_or_else(|| "-".into()),
            state,
            health,
            spec: label(LABEL_SPEC_HASH),
            uptime,
        }
    }

    async fn upload(&self, i: &Instance, files: &[&FileBytes]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let user = self.image_user(&i.image).await;
        let tar =
            spec::files_tar(&i.config_dir, files, spec::owner_uid(i, &user)).map_err(|source| {
                EngineError::Io {
                    path: PathBuf::from(&i.config_dir),
                    source,
                }
            })?;
        let options = UploadToContainerOptionsBuilder::default().path("/").build();
        self.docker
            .upload_to_container(
                &i.container_name,
                Some(options),
                bollard::body_full(tar.into()),
            )
            .await?;
        Ok(())
    }

    /// Current content of a file in a container (None when absent).
    async fn read_file(&self, container: &str, path: &str) -> Option<Vec<u8>> {
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let bytes: Vec<u8> = self
            .docker
            .download_from_container(container, Some(options))
            .try_fold(Vec::new(), |mut acc, chunk| async move {
                acc.extend_from_slice(&chunk);
                Ok(acc)
            })
            .await
            .ok()?;
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut entry = archive.entries().ok()?.next()?.ok()?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut out).ok()?;
        Some(out)
    }

    async fn ensure_network(&self, plan: &Plan) -> Result<()> {
        let n = &plan.network;
        match self
            .docker
            .inspect_network(
                &n.name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(existing) => {
                let subnet = existing
                    .ipam
                    .and_then(|i| i.config)
                    .and_then(|c| c.into_iter().next())
                    .and_then(|c| c.subnet);
                if subnet.as_deref() != Some(n.subnet.as_str()) {
                    return Err(EngineError::NetworkSubnet {
                        name: n.name.clone(),
                        found: subnet.unwrap_or_else(|| "none".into()),
                        wanted: n.subnet.clone(),
                    });
                }
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                let labels: HashMap<String, String> = plan.labels().into_iter().collect();
                self.docker
                    .create_network(NetworkCreateRequest {
                        name: n.name.clone(),
                        driver: Some("bridge".into()),
                        ipam: Some(Ipam {
                            driver: Some("default".into()),
                            config: Some(vec![IpamConfig {
                                subnet: Some(n.subnet.clone()),
                                ip_range: Some(n.ip_range.clone()),
                                gateway: Some(n.gateway.to_string()),
                                auxiliary_addresses: None,
                            }]),
                            options: None,
                        }),
                        labels: Some(labels),
                        ..Default::default()
                    })
                    .await
                    .map_err(|source| EngineError::NetworkCreate {
                        name: n.name.clone(),
                        subnet: n.subnet.clone(),
                        source,
                    })?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Engine for DockerEngine {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn prepare(&self, plan: &Plan, ui: &Ui, mode: PrepareMode) -> Result<Prepared> {
        self.prepare_images(plan, ui, mode).await
    }

    async fn ensure_shared(&self, plan: &Plan) -> Result<()> {
        self.ensure_network(plan).await?;
        let labels: HashMap<String, String> = plan.labels().into_iter().collect();
        for v in &plan.volumes {
            self.docker
                .create_volume(VolumeCreateRequest {
                    name: Some(v.clone()),
                    labels: Some(labels.clone()),
                    ..Default::default()
                })
                .await?;
        }
        Ok(())
    }

    fn targets_dir(&self, _plan: &Plan) -> PathBuf {
        self.state.targets_dir()
    }

    /// The container body, the image ID, and every file that is not reloaded in place.
    async fn fingerprint(&self, plan: &Plan, i: &Instance, files: &[FileBytes]) -> String {
        // Through a Value: its maps are sorted, so the hash does not depend on HashMap order.
        let body = serde_json::to_value(spec::body(plan, i, &self.state.targets_dir()))
            .and_then(|v| serde_json::to_vec(&v))
            .unwrap_or_default();
        let image_id = self.image_id(&i.image).await.unwrap_or_default();
        let fixed = files_hash(files, false);
        hash_parts([body.as_slice(), image_id.as_bytes(), fixed.as_bytes()])
    }

    async fn observe(&self) -> Result<Vec<Observed>> {
        let ours = self.ours().await?;
        let found = futures_util::future::join_all(ours.iter().map(|o| async move {
            self.inspect(&o.container)
                .await
                .map(|c| Self::observed(&o.instance, &c))
        }))
        .await;
        Ok(found.into_iter().flatten().collect())
    }

    async fn observe_one(&self, name: &str) -> Option<Observed> {
        let c = self.inspect(&self.container(name)).await?;
        Some(Self::observed(name, &c))
    }

    async fn running_config(&self, i: &Instance) -> Option<String> {
        let mut files = Vec::new();
        for f in i.files.iter().filter(|f| f.reloadable) {
            let path = format!("{}/{}", i.config_dir, f.path);
            files.push(FileBytes {
                path: f.path.clone(),
                bytes: self.read_file(&i.container_name, &path).await?,
                private: false,
                reloadable: true,
            });
        }
        Some(files_hash(&files, true))
    }

    async fn create(&self, plan: &Plan, work: &Work<'_>) -> Result<()> {
        let i = work.instance;
        let mut body = spec::body(plan, i, &self.state.targets_dir());
        if let Some(labels) = body.labels.as_mut() {
            labels.insert(LABEL_SPEC_HASH.into(), work.spec.clone());
        }
        let options = CreateContainerOptionsBuilder::default()
            .name(&i.container_name)
            .build();
        self.docker.create_container(Some(options), body).await?;
        self.upload(i, &work.files.iter().collect::<Vec<_>>())
            .await?;
        self.start(&i.name).await
    }

    async fn write_config(&self, work: &Work<'_>) -> Result<()> {
        let reloadable: Vec<&FileBytes> = work.files.iter().filter(|f| f.reloadable).collect();
        self.upload(work.instance, &reloadable).await
    }

    async fn start(&self, name: &str) -> Result<()> {
        self.docker
            .start_container(
                &self.container(name),
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await?;
        Ok(())
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        match self
            .docker
            .stop_container(
                &self.container(name),
                Some(StopContainerOptionsBuilder::default().t(t).build()),
            )
            .await
        {
            Err(e) if is_not_found(&e) => Err(EngineError::NotRunning {
                instance: name.to_string(),
            }),
            other => Ok(other?),
        }
    }

    async fn remove(&self, name: &str, grace: Duration) -> Result<()> {
        remove_container(&self.docker, &self.container(name), grace).await
    }

    async fn signal(&self, name: &str, signal: nix::sys::signal::Signal) -> Result<()> {
        self.docker
            .kill_container(
                &self.container(name),
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal(signal.as_str())
                        .build(),
                ),
            )
            .await?;
        Ok(())
    }

    async fn exec(&self, instance: &Instance, exec: &super::Exec<'_>) -> Result<super::ExecOutput> {
        self.exec_in(instance, exec).await
    }

    async fn last_logs(&self, name: &str, n: usize) -> Vec<String> {
        self.tail(name, n).await
    }

    async fn logs(&self, ui: &Ui, query: &LogQuery<'_>) -> Result<()> {
        self.print_logs(ui, query).await
    }

    /// Every container, network and (with `volumes`) volume carrying our labels; with
    /// `images`, our images too. Needs no plan.
    async fn down(&self, volumes: bool, images: bool) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let ours = self.ours().await?;
        let results: Vec<Result<String>> = futures_util::stream::iter(ours)
            .map(|o| async move {
                remove_container(&self.docker, &o.container, Duration::from_secs(5)).await?;
                Ok(format!("container {}", o.container))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            removed.push(r?);
        }
        let filters = self.label_filter();
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        for name in networks.into_iter().filter_map(|n| n.name) {
            self.docker.remove_network(&name).await?;
            removed.push(format!("network {name}"));
        }
        if volumes {
            let list = self
                .docker
                .list_volumes(Some(
                    ListVolumesOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                ))
                .await?;
            for v in list.volumes.unwrap_or_default() {
                self.docker
                    .remove_volume(
                        &v.name,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await?;
                removed.push(format!("volume {}", v.name));
            }
        }
        if images {
            removed.extend(self.remove_images().await?);
        }
        Ok(removed)
    }
}

/// Stops (SIGTERM, then SIGKILL after `grace`) and removes a container; absent is fine.
async fn remove_container(docker: &Docker, container: &str, grace: Duration) -> Result<()> {
    let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
    let _ = docker
        .stop_container(
            container,
            Some(StopContainerOptionsBuilder::default().t(t).build()),
        )
        .await;
    match docker
        .remove_container(
            container,
            Some(
                RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
