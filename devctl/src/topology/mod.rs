//! The topology file: one TOML document describing a deployment (subnet, gateways and their
//! VIP, backend pools, routes, TLS names, edge ports, observability). Unknown keys are errors.
//!
//! `topology/dev.toml` is the laptop layout; `topology/production.toml` is the same layout with
//! production addresses. Everything devctl does starts from a validated [`Topology`]
//! ([`validate`] checks it; [`ipv4net`] is its network type).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use gateway_config::{
    AlgorithmName, Dur, HealthCheckConfig, RateLimitConfig, RateLimitSetting, UpstreamProtocol,
};
use serde::Deserialize;

mod ipv4net;
mod store;
mod validate;

pub use ipv4net::Ipv4Net;
pub use store::{Store, StoreKind};

/// How the master holds the VIP: the gateway config's own type.
pub use gateway_config::VipMode;

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("topology {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("topology: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> TopologyError {
    TopologyError::Invalid(message.into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Deployment name: part of the network name and of every label devctl sets.
    pub name: String,
    /// Prefix of container, network and volume names.
    #[serde(default = "default_project")]
    pub project: String,
    /// Every fixed address lives in this network.
    pub subnet: Ipv4Net,
    /// Where the container runtime may allocate addresses on its own (kept away from every
    /// fixed address and the VIP).
    pub dynamic_range: Ipv4Net,
    pub gateways: Gateways,
    /// The TCP forwarder in front of the VIP, for hosts that cannot reach the VIP (a laptop's
    /// Docker network). Production leaves it out: its public name points at the VIP.
    pub edge: Option<Edge>,
    pub tls: Tls,
    pub pools: Vec<Pool>,
    pub routes: Vec<Route>,
    pub prometheus: Observer,
    pub grafana: Observer,
    /// Where Prometheus sends alerts; absent: alerts are only evaluated.
    pub alertmanager: Option<Alertmanager>,
    /// Where the backends keep their data (SQLite when absent).
    #[serde(default)]
    pub store: Store,
    /// Container log rotation (Docker's json-file driver).
    #[serde(default)]
    pub logs: Logs,
    /// Edge policies every route gets unless it sets its own.
    #[serde(default)]
    pub defaults: Defaults,
    /// Process runtime: the /16 inside 127.0.0.0/8 the topology's addresses move to (the
    /// last two octets are kept: 172.28.2.10 → 127.0.2.10). Two deployments with different
    /// ranges run side by side on one machine.
    #[serde(default = "default_loopback")]
    pub loopback: Ipv4Net,
}

fn default_loopback() -> Ipv4Net {
    Ipv4Net {
        addr: std::net::Ipv4Addr::new(127, 0, 0, 0),
        prefix: 16,
    }
}

fn default_project() -> String {
    "insightserenity".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateways {
    pub count: usize,
    /// gateway-1's address; the others follow (.10, .11, ...).
    pub first_address: Ipv4Addr,
    /// VRRP priority of each gateway in order (1..=254); the highest is the preferred master.
    pub priorities: Vec<u8>,
    /// The floating address clients reach (held by the master).
    pub vip: Ipv4Addr,
    pub vip_prefix: u8,
    #[serde(default = "default_vip_mode")]
    pub vip_mode: VipMode,
    #[serde(default = "default_https_port")]
    pub https_port: u16,
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    /// Internal plain-HTTP admin port (/metrics, /-/healthy, /-/ha, /-/reload).
    #[serde(default = "default_admin_port")]
    pub admin_port: u16,
    /// The admin ports are published on 127.0.0.1 from this port on (gateway-1, gateway-2, ...)
    /// so devctl can read /-/ha on any engine (Docker Desktop included). 0: not published.
    #[serde(default)]
    pub admin_publish_port: u16,
    #[serde(default = "default_advert_port")]
    pub advert_port: u16,
    pub advert_interval: Dur,
    #[serde(default = "yes")]
    pub preempt: bool,
    pub preempt_delay: Option<Dur>,
    #[serde(default = "default_track_penalty")]
    pub track_penalty: u8,
    /// Proxy worker threads per gateway.
    pub worker_threads: Option<usize>,
}

fn default_vip_mode() -> VipMode {
    VipMode::Interface
}
fn default_https_port() -> u16 {
    443
}
fn default_http_port() -> u16 {
    80
}
fn default_admin_port() -> u16 {
    9900
}
fn default_advert_port() -> u16 {
    5405
}
fn default_track_penalty() -> u8 {
    60
}
fn yes() -> bool {
    true
}

/// The TCP forwarder in front of the VIP (a mode of the gateway binary): the host reaches the
/// platform through it on any engine, and it sends PROXY v2 so the gateways see client IPs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    pub address: Ipv4Addr,
    /// Host address the edge ports are published on.
    pub publish_address: Ipv4Addr,
    pub https_port: u16,
    pub http_port: u16,
    #[serde(default = "yes")]
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Public names every gateway certificate carries (and every leaf, for convenience).
    pub names: Vec<String>,
    pub ca_common_name: String,
    /// The public names' certificate from an ACME CA (the gateways order it for `names`)
    /// instead of devctl's CA. Absent: devctl's CA issues everything.
    #[serde(default)]
    pub acme: Option<TlsAcme>,
}

/// `[tls] acme = { directory, contact, ca }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsAcme {
    /// The CA's directory URL (Let's Encrypt: `gateway_config::LETS_ENCRYPT`).
    pub directory: String,
    #[serde(default)]
    pub contact: Vec<String>,
    /// A PEM bundle to trust for the directory's TLS (a local test CA in drills), relative
    /// to the topology file.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The bundle's text, read when the topology file is loaded.
    #[serde(skip)]
    pub ca_pem: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Pool name: upstream name in the gateway config, role label, instance name prefix.
    pub name: String,
    /// The binary (and image) its instances run.
    pub binary: String,
    pub instances: usize,
    /// `<name>-1`'s address; the others follow.
    pub first_address: Ipv4Addr,
    pub port: u16,
    /// `round_robin` or `least_conn` (`hash` needs a hash key the topology does not have).
    pub algorithm: AlgorithmName,
    /// Weight of each instance in order.
    #[serde(default = "default_weights")]
    pub weights: Vec<u32>,
    /// Weight of instances past the `weights` list (those `devctl scale` adds); 100, as the
    /// seed adds a server.
    #[serde(default = "default_scale_weight")]
    pub scale_weight: u32,
    #[serde(default = "one")]
    pub max_fails: u32,
    pub fail_timeout: Dur,
    #[serde(default)]
    pub max_conns: u32,
    pub keepalive: usize,
    pub keepalive_timeout: Option<Dur>,
    pub connect_timeout: Option<Dur>,
    pub read_timeout: Option<Dur>,
    pub tries: Option<u32>,
    /// `http1` (default, as the seed's `proxy_http_version 1.1`), `auto` (what each backend
    /// picks by ALPN) or `http2`: one multiplexed
    /// connection per gateway worker and instance (the backends negotiate h2 by ALPN), another
    /// once the backends' stream limit is in flight on it (the gateway follows the limit their
    /// SETTINGS announce, `service_kit::server::HTTP2_MAX_CONCURRENT_STREAMS`).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// The gateway's health check section as is (unset keys take the gateway's defaults).
    pub health_check: HealthCheckConfig,
    /// Pin clients to one instance with a signed cookie (WebSocket sessions).
    pub sticky: Option<Sticky>,
}

fn default_weights() -> Vec<u32> {
    vec![1]
}
fn default_scale_weight() -> u32 {
    100
}
fn one() -> u32 {
    1
}

/// Alertmanager: like Prometheus and Grafana, plus where notifications go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alertmanager {
    pub image: String,
    pub address: Ipv4Addr,
    pub port: u16,
    /// Published on the edge's publish address at this port (0: not published).
    pub publish_port: u16,
    /// A webhook that receives every notification (Slack, a pager bridge, a test listener).
    pub webhook: Option<String>,
}

/// How much log each container keeps before Docker rotates it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// Size of one log file (`10m`, `500k`).
    #[serde(default = "default_log_size")]
    pub max_size: String,
    /// Files kept per container, the current one included.
    #[serde(default = "default_log_files")]
    pub max_file: u32,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            max_size: default_log_size(),
            max_file: default_log_files(),
        }
    }
}

fn default_log_size() -> String {
    "10m".into()
}
fn default_log_files() -> u32 {
    3
}

/// What every route and client gets unless a route says otherwise.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// The rate limit routes inherit (`rate_limit = false` on a route opts out).
    pub rate_limit: Option<RateLimitConfig>,
    /// Open connections per client address at each gateway (NGINX limit_conn); 0: none.
    #[serde(default)]
    pub max_connections_per_ip: usize,
    /// The backends' own endpoints (probes and scrapes reach the servers directly): 404
    /// through the gateways.
    #[serde(default)]
    pub internal_paths: Vec<String>,
}

/// A pool's sticky sessions. Not the gateway's `StickyConfig`: the topology names the cookie
/// and its lifetime, while the HMAC secret comes from the state directory (`Secrets`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    pub cookie: String,
    pub max_age: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub prefix: String,
    pub pool: String,
    /// The gateway's rate limit as is (`per` defaults to 1m, `burst` to `rate`); unset takes
    /// `[defaults]`'s, `false` opts out.
    pub rate_limit: Option<RateLimitSetting>,
    pub read_timeout: Option<Dur>,
    /// Cache cacheable GET responses (static assets).
    #[serde(default)]
    pub cache: bool,
    /// The gateways check bearer tokens for the pool's service before forwarding (the
    /// backends check them again).
    #[serde(default)]
    pub auth: bool,
}

/// Prometheus or Grafana.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observer {
    pub image: String,
    pub address: Ipv4Addr,
    pub port: u16,
    /// Published on the edge's publish address at this port (0: not published).
    pub publish_port: u16,
}

impl Topology {
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut topology = Topology::parse(&text).map_err(|e| match e {
            TopologyError::Parse { message, .. } => TopologyError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        if let Some(acme) = &mut topology.tls.acme {
            if let Some(ca) = &acme.ca {
                let ca = path.parent().unwrap_or(Path::new(".")).join(ca);
                acme.ca_pem = Some(
                    std::fs::read_to_string(&ca)
                        .map_err(|source| TopologyError::Read { path: ca, source })?,
                );
            }
        }
        Ok(topology)
    }

    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let topology: Topology = toml::from_str(text).map_err(|e| TopologyError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        topology.validate()?;
        Ok(topology)
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Address of the `index`-th (0-based) member of a numbered group.
    pub fn nth(first: Ipv4Addr, index: usize) -> Option<Ipv4Addr> {
        u32::from(first)
            .checked_add(u32::try_from(index).ok()?)
            .map(Ipv4Addr::from)
    }

    /// The fixed addresses a pool of `instances` would use.
    pub fn pool_addresses(pool: &Pool, instances: usize) -> Vec<Ipv4Addr> {
        (0..instances)
            .filter_map(|i| Topology::nth(pool.first_address, i))
            .collect()
    }

    /// Host address ports are published on: the edge's, else 127.0.0.1.
    pub fn publish_address(&self) -> Ipv4Addr {
        self.edge
            .as_ref()
            .map_or(Ipv4Addr::LOCALHOST, |e| e.publish_address)
    }

    pub fn gateway_addresses(&self) -> Vec<Ipv4Addr> {
        (0..self.gateways.count)
            .filter_map(|i| Topology::nth(self.gateways.first_address, i))
            .collect()
    }
}

#[cfg(test)]
mod tests;
