//! The plan: everything an engine needs to run a topology, as pure data. Instances with their
//! addresses, commands, environment and files; the certificates to issue; the gateway configs;
//! Prometheus's target files. No I/O: certificates are named here and issued by the caller.
//!
//! `Plan::build` composes one builder per instance kind ([`backend`], [`gateway`], [`edge`],
//! [`observers`]); [`net`] maps topology addresses and ports to the engine's, [`scale`] checks
//! pool sizes. A new instance kind is one more module with a function that returns its
//! instances and certificates.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::topology::Topology;

pub mod assets;
mod backend;
mod edge;
mod gateway;
pub mod net;
mod observers;
mod scale;
mod store;
mod targets;

pub use gateway::GatewayView;
pub use net::{loopback, unprivileged, Net};
pub use store::{Database, DATABASE_INSTANCE, POSTGRES_UID};

/// Label keys devctl puts on every object it creates (and the only ones `down` removes).
pub const LABEL_MANAGED: &str = "io.insightserenity.managed";
pub const LABEL_DEPLOYMENT: &str = "io.insightserenity.deployment";
pub const LABEL_ROLE: &str = "io.insightserenity.role";
pub const LABEL_INSTANCE: &str = "io.insightserenity.instance";
/// Hash of what needs a new container when it changes (image, command, env, certificates).
pub const LABEL_SPEC_HASH: &str = "io.insightserenity.spec-hash";

/// Where our binaries live inside their images.
pub const BIN_DIR: &str = "/usr/local/bin";
/// Where an instance's config and certificates are uploaded inside its container.
pub const CONFIG_DIR: &str = "/etc/insightserenity";
/// Non-root user of our scratch images.
pub const IMAGE_UID: u32 = 65532;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    Docker,
    Process,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Process => "process",
        }
    }
}

/// Shared secrets the gateways need (made once, kept in the state dir).
#[derive(Debug, Clone)]
pub struct Secrets {
    pub ha: String,
    pub sticky: String,
    /// The password of the database role the backends log in as.
    pub database: String,
    /// The public keys (JWKS) that verify the deployment's bearer tokens.
    pub jwks: String,
}

#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub runtime: RuntimeKind,
    /// Instance counts set by `devctl scale`, over the topology's.
    pub scale: BTreeMap<String, usize>,
    pub secrets: Secrets,
    /// Process runtime: instance files go to `<state_dir>/run/<name>/`, data to
    /// `<state_dir>/data/<pool>/`. Unused by the Docker runtime.
    pub state_dir: PathBuf,
    /// Image tag.
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Gateway,
    Backend,
    Edge,
    Prometheus,
    Grafana,
    Alertmanager,
    /// The PostgreSQL server the pools keep their data in.
    Database,
}

/// Where a file's bytes come from: text rendered here, or a certificate the caller issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FileSource {
    Text(String),
    /// A secret from the state dir: written private (0600), never shown.
    Secret(#[serde(serialize_with = "redacted")] String),
    CaCert,
    Cert(String),
    Key(String),
}

fn redacted<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<secret>")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedFile {
    /// Relative to the instance's `config_dir`.
    pub path: String,
    pub source: FileSource,
    /// Reloaded in place (gateway config): a change is uploaded and reloaded, not replaced.
    pub reloadable: bool,
}

impl PlannedFile {
    /// A file that needs a new instance when it changes.
    pub fn fixed(path: &str, source: FileSource) -> PlannedFile {
        PlannedFile {
            path: path.into(),
            source,
            reloadable: false,
        }
    }

    /// A file the running instance re-reads on SIGHUP.
    pub fn reloadable(path: &str, source: FileSource) -> PlannedFile {
        PlannedFile {
            path: path.into(),
            source,
            reloadable: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Publish {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// `gateway-1`, `admin-3`, `edge`, `prometheus`.
    pub name: String,
    pub kind: Kind,
    /// `gateway`, the pool name, `edge`, `prometheus`, `grafana`.
    pub role: String,
    pub container_name: String,
    pub address: Ipv4Addr,
    /// The port shown in status (HTTPS for backends, admin for gateways).
    pub port: u16,
    /// Image reference (ours: `insightserenity/<binary>:<version>`).
    pub image: String,
    /// The program: one of our binaries, or `prometheus` / `grafana`.
    pub binary: String,
    /// Arguments after the program.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Absolute directory the files go to (in the container, or on the host for processes).
    pub config_dir: String,
    pub files: Vec<PlannedFile>,
    /// Arguments of the health probe (run as `<binary> <args>`, or `<probe_program> <args>`);
    /// None: no probe.
    pub healthcheck: Option<Vec<String>>,
    /// The probe's program when it is not the instance's binary (found on the image's PATH,
    /// or next to the program on the host).
    pub probe_program: Option<String>,
    pub cap_add: Vec<String>,
    /// Namespaced kernel parameters set in the container (Docker's `--sysctl`).
    pub sysctls: Vec<(String, String)>,
    pub publish: Vec<Publish>,
    /// Named volume and mount point (the pool's shared SQLite directory).
    pub volume: Option<(String, String)>,
    pub aliases: Vec<String>,
    /// VRRP priority (gateways).
    pub priority: Option<u8>,
    /// User to run as instead of the image's (gateways in interface mode: root, because
    /// Docker gives a non-root user no effective capabilities, NET_ADMIN included).
    pub user: Option<String>,
}

impl Instance {
    /// The address shown in status: `address:port`.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    /// The health probe as a container runs it: its program (ours in [`BIN_DIR`], another on
    /// the image's PATH) and arguments.
    pub fn container_probe(&self) -> Option<Vec<String>> {
        let args = self.healthcheck.as_ref()?;
        let program = match &self.probe_program {
            Some(p) => p.clone(),
            None => format!("{BIN_DIR}/{}", self.binary),
        };
        Some(
            std::iter::once(program)
                .chain(args.iter().cloned())
                .collect(),
        )
    }

    /// Whether any of its files is reloaded in place.
    pub fn reloads(&self) -> bool {
        self.files.iter().any(|f| f.reloadable)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSpec {
    /// File stem in the state dir's `certs/`.
    pub name: String,
    pub common_name: String,
    pub sans: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkPlan {
    pub name: String,
    pub subnet: String,
    pub ip_range: String,
    pub gateway: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    pub https: String,
    pub http: String,
    pub prometheus: String,
    pub grafana: String,
    /// Alertmanager's API (`devctl alerts`), when the topology has one.
    pub alertmanager: Option<String>,
    /// The database devctl runs, as the host reaches it (`psql` with the password from the
    /// state dir's secrets.json).
    pub database: Option<String>,
    /// Where devctl reads each gateway's admin port (`/-/ha`, `/-/upstreams`, reload).
    pub gateway_admin: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub runtime: RuntimeKind,
    pub deployment: String,
    pub project: String,
    pub version: String,
    pub network: NetworkPlan,
    pub volumes: Vec<String>,
    pub instances: Vec<Instance>,
    pub certificates: Vec<CertSpec>,
    /// Prometheus file_sd files: (file name, JSON).
    pub targets: Vec<(String, String)>,
    pub vip: Ipv4Addr,
    pub endpoints: Endpoints,
    /// Instance count of each pool.
    pub pools: BTreeMap<String, usize>,
    /// The backends' store (the database instance, each pool's database).
    pub store: Database,
    /// Container log rotation.
    pub logs: crate::topology::Logs,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("unknown pool {pool:?} (pools: {known})")]
    UnknownPool { pool: String, known: String },
    #[error("pool {pool}: {count} instances do not fit ({reason})")]
    BadScale {
        pool: String,
        count: usize,
        reason: String,
    },
}

/// What every kind's builder shares: the topology, the options and the runtime's mapping.
pub(crate) struct Builder<'a> {
    pub t: &'a Topology,
    pub options: &'a PlanOptions,
    pub net: Net,
}

impl Builder<'_> {
    pub fn docker(&self) -> bool {
        self.options.runtime == RuntimeKind::Docker
    }

    pub fn prefix(&self) -> String {
        format!("{}-{}", self.t.project, self.t.name)
    }

    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix())
    }

    pub fn image(&self, binary: &str) -> String {
        format!("{}/{binary}:{}", self.t.project, self.options.version)
    }

    /// Where an instance's files go: a fixed directory in its container, or its own
    /// directory under the state dir's `run/` for a process.
    pub fn config_dir(&self, name: &str, in_container: &str) -> String {
        if self.docker() {
            in_container.to_string()
        } else {
            path_text(&self.options.state_dir.join("run").join(name))
        }
    }

    /// Where a process keeps data that a container keeps in a volume.
    pub fn data_dir(&self, name: &str, in_container: &str) -> String {
        if self.docker() {
            in_container.to_string()
        } else {
            path_text(&self.options.state_dir.join("data").join(name))
        }
    }

    /// The address a server listens on: every address in a container, its own on loopback.
    pub fn listen_ip(&self, own: Ipv4Addr) -> Ipv4Addr {
        if self.docker() {
            Ipv4Addr::UNSPECIFIED
        } else {
            own
        }
    }

    /// An instance with every optional part empty.
    pub fn instance(&self, kind: Kind, name: &str, role: &str, address: Ipv4Addr) -> Instance {
        Instance {
            name: name.to_string(),
            kind,
            role: role.to_string(),
            container_name: self.container(name),
            address,
            port: 0,
            image: String::new(),
            binary: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            config_dir: String::new(),
            files: Vec::new(),
            healthcheck: None,
            probe_program: None,
            cap_add: Vec::new(),
            sysctls: Vec::new(),
            publish: Vec::new(),
            volume: None,
            aliases: vec![name.to_string()],
            priority: None,
            user: None,
        }
    }

    /// Published on the host only by Docker, and only when `host_port` is set.
    pub fn publish(&self, ip: Ipv4Addr, host_port: u16, port: u16) -> Vec<Publish> {
        if self.docker() && host_port != 0 {
            vec![Publish {
                host_ip: ip,
                host_port,
                container_port: port,
            }]
        } else {
            Vec::new()
        }
    }
}

/// One kind's share of the plan.
#[derive(Debug, Default)]
pub(crate) struct Part {
    pub instances: Vec<Instance>,
    pub certificates: Vec<CertSpec>,
}

impl Plan {
    pub fn build(topology: &Topology, options: &PlanOptions) -> Result<Plan, PlanError> {
        let b = Builder {
            t: topology,
            options,
            net: Net {
                runtime: options.runtime,
                loopback: topology.loopback,
            },
        };
        let t = topology;
        let pools = scale::pool_sizes(t, &options.scale)?;
        let vip = b.net.addr(t.gateways.vip);

        let (backends, upstreams) = backend::build(&b, &pools);
        let (gateways, gateway_admin) = gateway::build(&b, &upstreams, vip);
        let edge = edge::build(&b, vip);
        let observers = observers::build(&b);
        let database = store::build(&b);

        // Gateways first: they are what everything else is reached through.
        let mut instances = Vec::new();
        let mut certificates = Vec::new();
        for part in [gateways, database, backends, edge, observers] {
            instances.extend(part.instances);
            certificates.extend(part.certificates);
        }
        let targets = targets::prometheus_targets(&instances, t.gateways.admin_port);
        let endpoints = targets::endpoints(&b, gateway_admin);
        let mut volumes: Vec<String> = instances
            .iter()
            .filter_map(|i| i.volume.as_ref().map(|(v, _)| v.clone()))
            .collect();
        volumes.dedup();

        Ok(Plan {
            runtime: options.runtime,
            deployment: t.name.clone(),
            project: t.project.clone(),
            version: options.version.clone(),
            network: NetworkPlan {
                name: b.prefix(),
                subnet: t.subnet.to_string(),
                ip_range: t.dynamic_range.to_string(),
                gateway: t.subnet.first_host(),
            },
            volumes,
            instances,
            certificates,
            targets,
            vip,
            endpoints,
            pools,
            store: store::database(&b),
            logs: t.logs.clone(),
        })
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }

    pub fn gateways(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| i.kind == Kind::Gateway)
    }

    /// Labels every object of this deployment carries.
    pub fn labels(&self) -> Vec<(String, String)> {
        labels(&self.deployment)
    }
}

/// Labels every object of a deployment carries (also what `down` selects by).
pub fn labels(deployment: &str) -> Vec<(String, String)> {
    vec![
        (LABEL_MANAGED.into(), "true".into()),
        (LABEL_DEPLOYMENT.into(), deployment.to_string()),
    ]
}

pub(crate) fn join(dir: &str, rel: &str) -> String {
    if rel.is_empty() {
        dir.to_string()
    } else {
        format!("{}/{rel}", dir.trim_end_matches('/'))
    }
}

fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// SANs of a leaf: its names, its address, the VIP (gateways), loopback, the public names.
pub(crate) fn leaf_sans(
    names: &[&str],
    address: Ipv4Addr,
    public: &[String],
    vip: Option<Ipv4Addr>,
) -> Vec<String> {
    let mut sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    sans.push(address.to_string());
    if let Some(vip) = vip {
        sans.push(vip.to_string());
    }
    sans.push("localhost".into());
    sans.push("127.0.0.1".into());
    sans.extend(public.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

/// A leaf named after its instance.
pub(crate) fn leaf(name: &str, sans: Vec<String>) -> CertSpec {
    CertSpec {
        name: name.to_string(),
        common_name: name.to_string(),
        sans,
    }
}

/// Options with fixed test secrets (for tests across the crate).
#[cfg(test)]
pub(crate) fn test_options(runtime: RuntimeKind) -> PlanOptions {
    PlanOptions {
        runtime,
        scale: BTreeMap::new(),
        secrets: Secrets {
            ha: "test-ha-secret-of-32-bytes-xxxxxx".into(),
            sticky: "test-sticky-secret-of-32-bytes-xx".into(),
            database: "test-database-password".into(),
            jwks: r#"{"keys":[]}"#.into(),
        },
        state_dir: PathBuf::from("/state"),
        version: "0.1.0".into(),
    }
}

#[cfg(test)]
mod tests;
