//! The Docker runtime (bollard): images built from in-memory contexts, a labelled network with
//! the topology's subnet, one volume per pool, containers at fixed addresses with their config
//! and certificates uploaded, convergence by hash labels, and the day-2 commands.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointIpamConfig,
    EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig, Ipam, IpamConfig, Mount,
    MountType, NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, RestartContainerOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{StreamExt, TryStreamExt};

use crate::compose::{HEALTH_INTERVAL_S, HEALTH_RETRIES, HEALTH_START_PERIOD_S, HEALTH_TIMEOUT_S};
use crate::context::{Context, VERSION};
use crate::images::{self, LABEL_CONTEXT_HASH};
use crate::plan::{
    Instance, Kind, Plan, RuntimeKind, BIN_DIR, IMAGE_UID, LABEL_DEPLOYMENT, LABEL_INSTANCE,
    LABEL_MANAGED, LABEL_ROLE, LABEL_SPEC_HASH,
};
use crate::state::{self, Certs};
use crate::status::{ServiceStatus, Status, VipStatus};
use crate::ui::Ui;

/// Label on our images (not `managed`: images are build artefacts `down` keeps).
pub const LABEL_IMAGE: &str = "io.insightserenity.image";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach Docker at {host}: {reason}: is the daemon running? (or --runtime process)"
    )]
    Unreachable { host: String, reason: String },
    #[error("docker: {0}")]
    Api(#[from] bollard::errors::Error),
    #[error(transparent)]
    Image(#[from] images::ImageError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Context(#[from] crate::context::ContextError),
    #[error("{0}")]
    Other(String),
}

type Result<T> = std::result::Result<T, DockerError>;

fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// Connects and negotiates the API version, within a few seconds.
pub async fn connect() -> Result<Docker> {
    let unreachable = |reason: String| DockerError::Unreachable {
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

fn secs_ns(s: u64) -> i64 {
    i64::try_from(Duration::from_secs(s).as_nanos()).unwrap_or(i64::MAX)
}

fn label_filter(plan: &Plan) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_DEPLOYMENT}={}", plan.deployment),
        ],
    )])
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

fn run_user(instance: &Instance) -> Option<String> {
    instance.user.clone()
}

fn owner_uid(instance: &Instance, image_user: &str) -> u64 {
    if let Some(u) = run_user(instance) {
        return u
            .split(':')
            .next()
            .and_then(|u| u.parse().ok())
            .unwrap_or(0);
    }
    let user = image_user.split(':').next().unwrap_or("");
    match user {
        "" | "root" => 0,
        "nobody" => 65534,
        u => u.parse().unwrap_or(u64::from(IMAGE_UID)),
    }
}

/// A tar of an instance's files at their absolute paths, owned by `uid`.
fn files_tar(instance: &Instance, files: &state::Materialized, uid: u64) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    let io = |e: std::io::Error| DockerError::Other(format!("building upload: {e}"));
    for (rel, bytes, private) in files {
        let full = format!("{}/{rel}", instance.config_dir.trim_end_matches('/'));
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
                b.append_data(&mut h, format!("{acc}/"), std::io::empty())
                    .map_err(io)?;
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(if *private { 0o600 } else { 0o644 });
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, &full, bytes.as_slice()).map_err(io)?;
    }
    b.into_inner().map_err(io)
}

/// What a runtime session knows: the engine, the context, the plan and issued certificates.
pub struct DockerRuntime {
    pub docker: Docker,
    pub ctx: Context,
    pub plan: Plan,
    pub ui: Ui,
    /// Instances whose image is not available (skipped, shown as unavailable).
    pub unavailable: BTreeMap<String, String>,
}

pub struct UpOptions {
    pub build: bool,
    pub timeout: Duration,
}

impl DockerRuntime {
    pub async fn new(ctx: Context, ui: Ui) -> Result<DockerRuntime> {
        let docker = connect().await?;
        let plan = ctx.plan(RuntimeKind::Docker)?;
        Ok(DockerRuntime {
            docker,
            ctx,
            plan,
            ui,
            unavailable: BTreeMap::new(),
        })
    }

    async fn image_label(&self, image: &str, label: &str) -> Option<Option<String>> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Some(
                i.config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(label).cloned()),
            ),
            Err(_) => None,
        }
    }

    async fn image_user(&self, image: &str) -> String {
        self.docker
            .inspect_image(image)
            .await
            .ok()
            .and_then(|i| i.config)
            .and_then(|c| c.user)
            .unwrap_or_default()
    }

    async fn image_id(&self, image: &str) -> Option<String> {
        self.docker
            .inspect_image(image)
            .await
            .ok()
            .and_then(|i| i.id)
    }

    /// Builds `tag` from an in-memory context unless an image with the same context exists.
    async fn build_image(&self, tag: &str, role: &str, context: (Vec<u8>, String)) -> Result<bool> {
        let (tar, hash) = context;
        if self.image_label(tag, LABEL_CONTEXT_HASH).await == Some(Some(hash.clone())) {
            return Ok(false);
        }
        let labels = HashMap::from([
            (LABEL_IMAGE.to_string(), "true".to_string()),
            (LABEL_ROLE.to_string(), role.to_string()),
            (LABEL_CONTEXT_HASH.to_string(), hash),
        ]);
        let options = BuildImageOptionsBuilder::default()
            .t(tag)
            .rm(true)
            .forcerm(true)
            .labels(&labels)
            .build();
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        let mut log = Vec::new();
        while let Some(item) = stream.next().await {
            let info = item?;
            if let Some(s) = info.stream {
                log.push(s);
            }
            if let Some(detail) = info.error_detail {
                return Err(DockerError::Other(format!(
                    "building {tag}: {}",
                    detail.message.unwrap_or_default()
                )));
            }
        }
        Ok(true)
    }

    /// Step 1-2 and 7 of `up`: binaries, our images, Prometheus and Grafana images.
    pub async fn ensure_images(&mut self, build: bool) -> Result<()> {
        let repo = self.ctx.repo.clone();
        if let Some(repo) = &repo {
            if build && !images::binaries_up_to_date(repo) {
                let started = Instant::now();
                self.ui
                    .step("building static release binaries (cargo build --release, crt-static)");
                let log = self.ctx.state.logs_dir().join("cargo-build.log");
                let repo2 = repo.clone();
                tokio::task::spawn_blocking(move || images::build_binaries(&repo2, &log))
                    .await
                    .map_err(|e| DockerError::Other(e.to_string()))??;
                self.ui
                    .done(&format!("binaries built in {:.1?}", started.elapsed()));
            }
        }
        for binary in images::BINARIES {
            let tag = format!("{}/{binary}:{VERSION}", self.plan.project);
            match &repo {
                Some(repo) if images::release_dir(repo).join(binary).is_file() => {
                    let path = images::release_dir(repo).join(binary);
                    let context =
                        tokio::task::spawn_blocking(move || images::our_context(binary, &path))
                            .await
                            .map_err(|e| DockerError::Other(e.to_string()))??;
                    let started = Instant::now();
                    if self.build_image(&tag, binary, context).await? {
                        self.ui
                            .done(&format!("image {tag} built in {:.1?}", started.elapsed()));
                    }
                }
                _ => {
                    if self.image_id(&tag).await.is_none() {
                        return Err(DockerError::Other(format!(
                            "image {tag} is missing and there is no checkout to build it from (run devctl up inside the repository)"
                        )));
                    }
                }
            }
        }
        // Prometheus: the topology's image, else a local image from the host's binary.
        if let Some(prom) = self
            .plan
            .instances
            .iter()
            .find(|i| i.kind == Kind::Prometheus)
        {
            let wanted = prom.image.clone();
            if self.image_id(&wanted).await.is_none() {
                match images::host_binary("prometheus") {
                    Some(path) => {
                        let tag = format!("{}/prometheus:local", self.plan.project);
                        let context =
                            tokio::task::spawn_blocking(move || images::prometheus_context(&path))
                                .await
                                .map_err(|e| DockerError::Other(e.to_string()))??;
                        if self.build_image(&tag, "prometheus", context).await? {
                            self.ui.done(&format!(
                                "image {tag} built from the host's prometheus binary ({wanted} is not available here)"
                            ));
                        }
                        for i in &mut self.plan.instances {
                            if i.kind == Kind::Prometheus {
                                i.image = tag.clone();
                            }
                        }
                    }
                    None => {
                        self.ui.warn(&format!(
                            "prometheus: image {wanted} is not available and cannot be pulled here; install Debian's `prometheus` package (devctl then builds a local image) or `docker load` it; skipping"
                        ));
                        self.unavailable.insert("prometheus".into(), wanted);
                    }
                }
            }
        }
        if let Some(graf) = self.plan.instances.iter().find(|i| i.kind == Kind::Grafana) {
            if self.image_id(&graf.image).await.is_none() {
                self.ui.warn(&format!(
                    "grafana: image {} is not available and cannot be pulled here (`docker load` it to enable Grafana); skipping",
                    graf.image
                ));
                self.unavailable
                    .insert("grafana".into(), graf.image.clone());
            }
        }
        Ok(())
    }

    fn certs(&self) -> Result<Certs> {
        Ok(self
            .ctx
            .state
            .issue(&self.plan, &self.ctx.topology.tls.ca_common_name, false)?)
    }

    async fn ensure_network(&self) -> Result<()> {
        let n = &self.plan.network;
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
                    return Err(DockerError::Other(format!(
                        "network {} exists with subnet {:?}, not {}: run devctl down first",
                        n.name, subnet, n.subnet
                    )));
                }
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                let labels: HashMap<String, String> = self.plan.labels().into_iter().collect();
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
                    .map_err(|e| {
                        DockerError::Other(format!(
                            "cannot create network {} ({}): {e} (another network may use the subnet: `docker network ls`)",
                            n.name, n.subnet
                        ))
                    })?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn ensure_volumes(&self) -> Result<()> {
        let labels: HashMap<String, String> = self.plan.labels().into_iter().collect();
        for v in &self.plan.volumes {
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

    fn body(&self, i: &Instance) -> ContainerCreateBody {
        let mut labels: HashMap<String, String> = self.plan.labels().into_iter().collect();
        labels.insert(LABEL_ROLE.into(), i.role.clone());
        labels.insert(LABEL_INSTANCE.into(), i.name.clone());
        let healthcheck = i.healthcheck.as_ref().map(|args| {
            let mut test = vec!["CMD".to_string(), format!("{BIN_DIR}/{}", i.binary)];
            test.extend(args.iter().cloned());
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
                source: Some(self.ctx.state.targets_dir().to_string_lossy().into_owned()),
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
            user: run_user(i),
            labels: Some(labels),
            healthcheck,
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(HostConfig {
                cap_add: (!i.cap_add.is_empty()).then(|| i.cap_add.clone()),
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
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.plan.network.name.clone(),
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

    /// The hash that decides replacement: the container body, the image ID, and every file
    /// that is not reloaded in place.
    async fn spec_hash(&self, i: &Instance, files: &state::Materialized) -> String {
        // Through a Value: its maps are sorted, so the hash does not depend on HashMap order.
        let body = serde_json::to_value(self.body(i))
            .and_then(|v| serde_json::to_vec(&v))
            .unwrap_or_default();
        let image_id = self.image_id(&i.image).await.unwrap_or_default();
        let mut parts: Vec<Vec<u8>> = vec![body, image_id.into_bytes()];
        for (rel, bytes, _) in files {
            let reloadable = i.files.iter().any(|f| f.path == *rel && f.reloadable);
            if !reloadable {
                parts.push(rel.clone().into_bytes());
                parts.push(bytes.clone());
            }
        }
        state::hash_parts(parts.iter().map(Vec::as_slice))
    }

    async fn inspect(&self, name: &str) -> Option<ContainerInspectResponse> {
        self.docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
    }

    async fn upload(&self, i: &Instance, files: &state::Materialized) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let user = self.image_user(&i.image).await;
        let tar = files_tar(i, files, owner_uid(i, &user))?;
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

    async fn create(&self, i: &Instance, files: &state::Materialized, hash: &str) -> Result<()> {
        let mut body = self.body(i);
        if let Some(labels) = body.labels.as_mut() {
            labels.insert(LABEL_SPEC_HASH.into(), hash.to_string());
        }
        let options = CreateContainerOptionsBuilder::default()
            .name(&i.container_name)
            .build();
        self.docker.create_container(Some(options), body).await?;
        self.upload(i, files).await?;
        self.docker
            .start_container(
                &i.container_name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await?;
        Ok(())
    }

    async fn stop_and_remove(&self, container: &str, grace: i32) -> Result<()> {
        let _ = self
            .docker
            .stop_container(
                container,
                Some(StopContainerOptionsBuilder::default().t(grace).build()),
            )
            .await;
        match self
            .docker
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

    /// Uploads changed reloadable files (the gateway config) and reloads with SIGHUP.
    /// Returns whether anything changed.
    async fn reload_if_changed(&self, i: &Instance, files: &state::Materialized) -> Result<bool> {
        let changed: state::Materialized = {
            let mut v = Vec::new();
            for (rel, bytes, private) in files {
                if !i.files.iter().any(|f| f.path == *rel && f.reloadable) {
                    continue;
                }
                let path = format!("{}/{rel}", i.config_dir);
                if self.read_file(&i.container_name, &path).await.as_deref() != Some(bytes) {
                    v.push((rel.clone(), bytes.clone(), *private));
                }
            }
            v
        };
        if changed.is_empty() {
            return Ok(false);
        }
        self.upload(i, &changed).await?;
        self.docker
            .kill_container(
                &i.container_name,
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal("SIGHUP")
                        .build(),
                ),
            )
            .await?;
        Ok(true)
    }

    async fn our_containers(&self) -> Result<Vec<(String, String, String)>> {
        // (instance, container name, id)
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&label_filter(&self.plan))
            .build();
        let list = self.docker.list_containers(Some(options)).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                let instance = labels.get(LABEL_INSTANCE)?.clone();
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())?;
                Some((instance, name, c.id.unwrap_or_default()))
            })
            .collect())
    }

    /// Converges containers to the plan. `only`: restrict creation to these instances.
    async fn converge(&self, certs: &Certs) -> Result<ConvergeReport> {
        let mut report = ConvergeReport::default();
        let existing = self.our_containers().await?;
        // New or replaced instances first (backends before gateways, so a gateway reload
        // never names a server that is not there yet), then reloads, then removals.
        let order = |k: Kind| match k {
            Kind::Backend => 0,
            Kind::Gateway => 1,
            Kind::Edge => 2,
            Kind::Prometheus => 3,
            Kind::Grafana => 4,
        };
        let mut instances: Vec<&Instance> = self
            .plan
            .instances
            .iter()
            .filter(|i| !self.unavailable.contains_key(&i.name))
            .collect();
        instances.sort_by_key(|i| order(i.kind));
        let mut to_create = Vec::new();
        for i in instances {
            let files = state::materialize(i, certs);
            let hash = self.spec_hash(i, &files).await;
            match self.inspect(&i.container_name).await {
                None => to_create.push((i, files, hash, false)),
                Some(c) => {
                    let current = c
                        .config
                        .as_ref()
                        .and_then(|c| c.labels.as_ref())
                        .and_then(|l| l.get(LABEL_SPEC_HASH))
                        .cloned();
                    if current.as_deref() != Some(hash.as_str()) {
                        to_create.push((i, files, hash, true));
                        continue;
                    }
                    let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                    if !running {
                        self.docker
                            .start_container(
                                &i.container_name,
                                None::<bollard::query_parameters::StartContainerOptions>,
                            )
                            .await?;
                        report.started.push(i.name.clone());
                    }
                    if self.reload_if_changed(i, &files).await? {
                        report.reloaded.push(i.name.clone());
                    }
                }
            }
        }
        // Gateways being replaced go one at a time, each healthy before the next, so the
        // pair keeps the VIP; everything else is created in parallel, a few at a time.
        let (rolling, to_create): (Vec<_>, Vec<_>) = to_create
            .into_iter()
            .partition(|(i, _, _, replace)| *replace && i.kind == Kind::Gateway);
        for (i, files, hash, _) in rolling {
            self.stop_and_remove(&i.container_name, 10).await?;
            self.create(i, &files, &hash).await?;
            self.wait_healthy(Duration::from_secs(60), Some(std::slice::from_ref(&i.name)))
                .await?;
            report.replaced.push(i.name.clone());
        }
        let results: Vec<Result<(String, bool)>> = futures_util::stream::iter(to_create)
            .map(|(i, files, hash, replace)| async move {
                if replace {
                    self.stop_and_remove(&i.container_name, 10).await?;
                }
                self.create(i, &files, &hash).await?;
                Ok((i.name.clone(), replace))
            })
            .buffer_unordered(4)
            .collect()
            .await;
        for r in results {
            let (name, replaced) = r?;
            if replaced {
                report.replaced.push(name);
            } else {
                report.created.push(name);
            }
        }
        // Extra containers (scaled down, or gone from the topology).
        let extra: Vec<(String, String)> = existing
            .into_iter()
            .filter(|(instance, _, _)| {
                self.plan.instance(instance).is_none() || self.unavailable.contains_key(instance)
            })
            .map(|(instance, name, _)| (instance, name))
            .collect();
        let removed: Vec<Result<String>> = futures_util::stream::iter(extra)
            .map(|(instance, name)| async move {
                self.stop_and_remove(&name, 35).await?;
                Ok(instance)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for r in removed {
            report.removed.push(r?);
        }
        Ok(report)
    }

    /// `devctl up`.
    pub async fn up(&mut self, options: &UpOptions) -> Result<Status> {
        let started = Instant::now();
        self.ensure_images(options.build).await?;
        let certs = self.certs()?;
        state::write_targets(&self.ctx.state.targets_dir(), &self.plan)?;
        self.ensure_network().await?;
        self.ensure_volumes().await?;
        let report = self.converge(&certs).await?;
        report.print(&self.ui);
        self.wait_healthy(options.timeout, None).await?;
        let status = self.status().await?;
        self.ui.done(&format!(
            "{} instances up in {:.1?}",
            status
                .services
                .iter()
                .filter(|s| s.state == "running")
                .count(),
            started.elapsed()
        ));
        Ok(status)
    }

    fn needs_wait(&self) -> Vec<&Instance> {
        self.plan
            .instances
            .iter()
            .filter(|i| !self.unavailable.contains_key(&i.name))
            .collect()
    }

    /// Waits until every instance (or `only`) is healthy (running, for those without a
    /// probe; Prometheus answering /-/ready). On timeout: what is not, with its last logs.
    pub async fn wait_healthy(&self, timeout: Duration, only: Option<&[String]>) -> Result<()> {
        let targets: Vec<&Instance> = self
            .needs_wait()
            .into_iter()
            .filter(|i| only.is_none_or(|o| o.contains(&i.name)))
            .collect();
        let mut progress = self.ui.progress(targets.len() as u64, "healthy");
        let started = Instant::now();
        let mut done: BTreeMap<String, Duration> = BTreeMap::new();
        loop {
            for i in &targets {
                if done.contains_key(&i.name) {
                    continue;
                }
                if self.instance_ready(i).await {
                    done.insert(i.name.clone(), started.elapsed());
                    progress.advance(&i.name, started.elapsed());
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
                    let Some(i) = self.plan.instance(name) else {
                        continue;
                    };
                    let (state, health) = match self.inspect(&i.container_name).await {
                        Some(c) => container_state(&c),
                        None => ("missing".into(), "none".into()),
                    };
                    report.push_str(&format!("\n  {name}: {state}, {health}; last log lines:"));
                    for line in self.last_logs(&i.container_name, 8).await {
                        report.push_str(&format!("\n    {line}"));
                    }
                }
                return Err(DockerError::Other(format!(
                    "not healthy after {timeout:?}: {}{report}",
                    pending.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Health of an instance Docker does not probe: Prometheus's /-/ready, the edge's port.
    async fn probe(&self, i: &Instance) -> &'static str {
        match i.kind {
            Kind::Prometheus => {
                let url = format!("{}/-/ready", self.plan.endpoints.prometheus);
                match service_kit::client::get(&url, None, Duration::from_secs(1)).await {
                    Ok(r) if r.status.is_success() => "healthy",
                    _ => "unhealthy",
                }
            }
            Kind::Edge => {
                let addr = self
                    .plan
                    .endpoints
                    .https
                    .trim_start_matches("https://")
                    .to_string();
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(_)) => "healthy",
                    _ => "unhealthy",
                }
            }
            _ => "none",
        }
    }

    async fn instance_ready(&self, i: &Instance) -> bool {
        let Some(c) = self.inspect(&i.container_name).await else {
            return false;
        };
        let (state, health) = container_state(&c);
        if state != "running" {
            return false;
        }
        if i.healthcheck.is_some() {
            return health == "healthy";
        }
        matches!(self.probe(i).await, "healthy" | "none")
    }

    async fn last_logs(&self, container: &str, n: usize) -> Vec<String> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&n.to_string())
            .build();
        let chunks: Vec<_> = self
            .docker
            .logs(container, Some(options))
            .take(200)
            .collect()
            .await;
        chunks
            .into_iter()
            .filter_map(|c| c.ok())
            .flat_map(|c| {
                String::from_utf8_lossy(&c.into_bytes())
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `devctl status`.
    pub async fn status(&self) -> Result<Status> {
        let existing = self.our_containers().await?;
        let mut services = Vec::new();
        let mut running: BTreeMap<String, bool> = BTreeMap::new();
        let mut names: Vec<(String, String, String, Option<String>)> = self
            .plan
            .instances
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    i.role.clone(),
                    format!("{}:{}", i.address, i.port),
                    Some(i.container_name.clone()),
                )
            })
            .collect();
        for (instance, container, _) in &existing {
            if self.plan.instance(instance).is_none() {
                names.push((
                    instance.clone(),
                    "-".into(),
                    "-".into(),
                    Some(container.clone()),
                ));
            }
        }
        for (name, role, address, container) in names {
            let inspected = match &container {
                Some(c) if existing.iter().any(|(_, n, _)| n == c) => self.inspect(c).await,
                _ => None,
            };
            let (state, health, uptime, role) = match &inspected {
                Some(c) => {
                    let (s, mut h) = container_state(c);
                    if s == "running" && h == "none" {
                        if let Some(i) = self.plan.instance(&name) {
                            h = self.probe(i).await.to_string();
                        }
                    }
                    let role = c
                        .config
                        .as_ref()
                        .and_then(|c| c.labels.as_ref())
                        .and_then(|l| l.get(LABEL_ROLE).cloned())
                        .unwrap_or(role);
                    let uptime = (s == "running")
                        .then(|| {
                            c.state
                                .as_ref()
                                .and_then(|st| st.started_at.as_deref())
                                .and_then(uptime_since)
                        })
                        .flatten();
                    (s, h, uptime, role)
                }
                None if self.unavailable.contains_key(&name) => {
                    ("unavailable".into(), "none".into(), None, role)
                }
                None => ("missing".into(), "none".into(), None, role),
            };
            running.insert(name.clone(), state == "running");
            services.push(ServiceStatus {
                name,
                role,
                address,
                state,
                health,
                uptime,
            });
        }
        let holder = crate::status::vip_holder(&self.plan).await;
        let mut endpoints = BTreeMap::new();
        if running.get("edge").copied().unwrap_or(false) {
            endpoints.insert("https".into(), self.plan.endpoints.https.clone());
            endpoints.insert("http".into(), self.plan.endpoints.http.clone());
        }
        if running.get("prometheus").copied().unwrap_or(false) {
            endpoints.insert("prometheus".into(), self.plan.endpoints.prometheus.clone());
        }
        if running.get("grafana").copied().unwrap_or(false) {
            endpoints.insert("grafana".into(), self.plan.endpoints.grafana.clone());
        }
        Ok(Status {
            runtime: "docker".into(),
            services,
            vip: VipStatus {
                address: self.plan.vip.to_string(),
                holder,
            },
            endpoints,
            ca: self.ctx.state.ca_path().to_string_lossy().into_owned(),
        })
    }

    fn container_of(&self, name: &str) -> Result<String> {
        self.plan
            .instance(name)
            .map(|i| i.container_name.clone())
            .ok_or_else(|| {
                DockerError::Other(format!(
                    "no instance {name:?}; known: {}",
                    self.plan
                        .instances
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    pub async fn kill(&self, name: &str, signal: &str) -> Result<()> {
        let c = self.container_of(name)?;
        self.docker
            .kill_container(
                &c,
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal(signal)
                        .build(),
                ),
            )
            .await?;
        Ok(())
    }

    pub async fn start(&self, name: &str) -> Result<()> {
        let c = self.container_of(name)?;
        self.docker
            .start_container(&c, None::<bollard::query_parameters::StartContainerOptions>)
            .await?;
        Ok(())
    }

    pub async fn restart(&self, name: &str) -> Result<()> {
        let c = self.container_of(name)?;
        self.docker
            .restart_container(
                &c,
                Some(RestartContainerOptionsBuilder::default().t(35).build()),
            )
            .await?;
        Ok(())
    }

    /// `devctl scale`: new instances first (healthy), then the gateways reload and Prometheus
    /// follows; removed instances leave the gateways before they are stopped (drained).
    pub async fn scale(&mut self, pool: &str, n: usize, timeout: Duration) -> Result<()> {
        let before: Vec<String> = self.plan.instances.iter().map(|i| i.name.clone()).collect();
        self.ctx.state.set_scale(&self.ctx.topology.name, pool, n)?;
        self.plan = self.ctx.plan(RuntimeKind::Docker)?;
        let certs = self.certs()?;
        let added: Vec<&Instance> = self
            .plan
            .instances
            .iter()
            .filter(|i| !before.contains(&i.name))
            .collect();
        for i in &added {
            let files = state::materialize(i, &certs);
            let hash = self.spec_hash(i, &files).await;
            if self.inspect(&i.container_name).await.is_some() {
                self.stop_and_remove(&i.container_name, 5).await?;
            }
            self.create(i, &files, &hash).await?;
        }
        let added_names: Vec<String> = added.iter().map(|i| i.name.clone()).collect();
        if !added_names.is_empty() {
            self.wait_healthy(timeout, Some(&added_names)).await?;
        }
        for g in self.plan.gateways() {
            let files = state::materialize(g, &certs);
            self.reload_if_changed(g, &files).await?;
        }
        state::write_targets(&self.ctx.state.targets_dir(), &self.plan)?;
        // Removed: out of the gateways now; give the reload a moment, then SIGTERM (drain).
        let removed: Vec<(String, String)> = self
            .our_containers()
            .await?
            .into_iter()
            .filter(|(instance, _, _)| self.plan.instance(instance).is_none())
            .map(|(instance, name, _)| (instance, name))
            .collect();
        if !removed.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let results: Vec<Result<()>> = futures_util::stream::iter(removed.iter())
                .map(|(_, c)| self.stop_and_remove(c, 35))
                .buffer_unordered(8)
                .collect()
                .await;
            for r in results {
                r?;
            }
        }
        self.ui.done(&format!(
            "{pool}: {n} instances{}{}",
            if added_names.is_empty() {
                String::new()
            } else {
                format!(", added {}", added_names.join(" "))
            },
            if removed.is_empty() {
                String::new()
            } else {
                format!(
                    ", removed {}",
                    removed
                        .iter()
                        .map(|(i, _)| i.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
        ));
        Ok(())
    }

    /// `devctl logs`: merged, prefixed, coloured; `follow` streams until interrupted.
    pub async fn logs(&self, names: &[String], follow: bool, tail: Option<usize>) -> Result<()> {
        let existing = self.our_containers().await?;
        let selected: Vec<(String, String)> = existing
            .into_iter()
            .filter(|(i, _, _)| names.is_empty() || names.contains(i))
            .map(|(i, c, _)| (i, c))
            .collect();
        if selected.is_empty() {
            return Err(DockerError::Other("no such running instances".into()));
        }
        let width = selected.iter().map(|(i, _)| i.len()).max().unwrap_or(8);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, String, String)>(1024);
        for (n, (instance, container)) in selected.iter().enumerate() {
            let mut builder = LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .timestamps(true)
                .follow(follow);
            builder = builder.tail(&tail.map_or_else(|| "all".to_string(), |t| t.to_string()));
            let options = builder.build();
            let mut stream = self.docker.logs(container, Some(options));
            let tx = tx.clone();
            let instance = instance.clone();
            tokio::spawn(async move {
                while let Some(Ok(chunk)) = stream.next().await {
                    for line in String::from_utf8_lossy(&chunk.into_bytes()).lines() {
                        if tx
                            .send((n, instance.clone(), line.to_string()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);
        if follow {
            while let Some((n, instance, line)) = rx.recv().await {
                let text = line.split_once(' ').map_or(line.as_str(), |(_, l)| l);
                println!("{}", self.ui.prefixed(n, &instance, width, text));
            }
        } else {
            let mut all = Vec::new();
            while let Some(item) = rx.recv().await {
                all.push(item);
            }
            all.sort_by(|a, b| a.2.cmp(&b.2));
            for (n, instance, line) in all {
                let text = line.split_once(' ').map_or(line.as_str(), |(_, l)| l);
                println!("{}", self.ui.prefixed(n, &instance, width, text));
            }
        }
        Ok(())
    }

    /// `devctl down`: every container, network and (with `volumes`) volume carrying our
    /// labels; with `images`, our images too.
    pub async fn down(&self, volumes: bool, images: bool) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&label_filter(&self.plan))
            .build();
        let containers = self.docker.list_containers(Some(options)).await?;
        let ids: Vec<(String, String)> = containers
            .into_iter()
            .filter_map(|c| {
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default();
                Some((c.id?, name.trim_start_matches('/').to_string()))
            })
            .collect();
        let results: Vec<Result<String>> = futures_util::stream::iter(ids)
            .map(|(id, name)| async move {
                self.stop_and_remove(&id, 5).await?;
                Ok(format!("container {name}"))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            removed.push(r?);
        }
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&label_filter(&self.plan))
                    .build(),
            ))
            .await?;
        for n in networks {
            if let Some(name) = n.name {
                self.docker.remove_network(&name).await?;
                removed.push(format!("network {name}"));
            }
        }
        if volumes {
            let list = self
                .docker
                .list_volumes(Some(
                    ListVolumesOptionsBuilder::default()
                        .filters(&label_filter(&self.plan))
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
            let filters =
                HashMap::from([("label".to_string(), vec![format!("{LABEL_IMAGE}=true")])]);
            let list = self
                .docker
                .list_images(Some(
                    ListImagesOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                ))
                .await?;
            for image in list {
                for tag in image.repo_tags {
                    let _ = self
                        .docker
                        .remove_image(
                            &tag,
                            Some(RemoveImageOptionsBuilder::default().force(true).build()),
                            None,
                        )
                        .await;
                    removed.push(format!("image {tag}"));
                }
            }
        }
        Ok(removed)
    }
}

#[derive(Debug, Default)]
pub struct ConvergeReport {
    pub created: Vec<String>,
    pub replaced: Vec<String>,
    pub reloaded: Vec<String>,
    pub started: Vec<String>,
    pub removed: Vec<String>,
}

impl ConvergeReport {
    fn print(&self, ui: &Ui) {
        for (what, list) in [
            ("created", &self.created),
            ("replaced (changed)", &self.replaced),
            ("reloaded (config changed)", &self.reloaded),
            ("started", &self.started),
            ("removed", &self.removed),
        ] {
            if !list.is_empty() {
                ui.step(&format!("{what}: {}", list.join(" ")));
            }
        }
        if self.created.is_empty()
            && self.replaced.is_empty()
            && self.reloaded.is_empty()
            && self.started.is_empty()
            && self.removed.is_empty()
        {
            ui.step("everything already matches the plan");
        }
    }
}

fn container_state(c: &ContainerInspectResponse) -> (String, String) {
    let state = c
        .state
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| match s {
            ContainerStateStatusEnum::RUNNING => "running",
            ContainerStateStatusEnum::CREATED => "created",
            ContainerStateStatusEnum::RESTARTING => "restarting",
            ContainerStateStatusEnum::PAUSED => "paused",
            ContainerStateStatusEnum::EXITED => "exited",
            ContainerStateStatusEnum::DEAD => "dead",
            ContainerStateStatusEnum::REMOVING => "removing",
            ContainerStateStatusEnum::STOPPING => "stopping",
            ContainerStateStatusEnum::EMPTY => "unknown",
        })
        .unwrap_or("unknown")
        .to_string();
    let health = c
        .state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .map(|h| match h {
            HealthStatusEnum::HEALTHY => "healthy",
            HealthStatusEnum::UNHEALTHY => "unhealthy",
            HealthStatusEnum::STARTING => "starting",
            HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => "none",
        })
        .unwrap_or("none")
        .to_string();
    (state, health)
}

fn uptime_since(started_at: &str) -> Option<Duration> {
    let t = time::OffsetDateTime::parse(started_at, &time::format_description::well_known::Rfc3339)
        .ok()?;
    let d = time::OffsetDateTime::now_utc() - t;
    d.try_into().ok()
}

impl DockerRuntime {
    /// For commands other than `up`: which optional images are missing (status shows them as
    /// unavailable), and the local Prometheus image when the topology's is absent.
    pub async fn mark_unavailable(&mut self) {
        let local_prom = format!("{}/prometheus:local", self.plan.project);
        let mut changes = Vec::new();
        for i in &self.plan.instances {
            if !matches!(i.kind, Kind::Prometheus | Kind::Grafana) {
                continue;
            }
            if self.image_id(&i.image).await.is_some() {
                continue;
            }
            if i.kind == Kind::Prometheus && self.image_id(&local_prom).await.is_some() {
                changes.push((i.name.clone(), Some(local_prom.clone())));
            } else {
                changes.push((i.name.clone(), None));
            }
        }
        for (name, image) in changes {
            match image {
                Some(image) => {
                    for i in &mut self.plan.instances {
                        if i.name == name {
                            i.image = image.clone();
                        }
                    }
                }
                None => {
                    self.unavailable.insert(name, String::new());
                }
            }
        }
    }
}
