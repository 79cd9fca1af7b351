//! The topology file: one TOML document describing a deployment (subnet, gateways and their
//! VIP, backend pools, routes, TLS names, edge ports, observability). Unknown keys are errors.
//!
//! `topology/dev.toml` is the laptop layout; `topology/production.toml` is the same layout with
//! production addresses. Everything devctl does starts from a validated [`Topology`].

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use gateway_config::{AlgorithmName, Dur, HealthCheckConfig, RateLimitConfig, RateLimitSetting};
use serde::{Deserialize, Deserializer};

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

/// An IPv4 network written `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    pub fn contains_net(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.network())
    }

    /// The first host address (Docker puts the bridge gateway there).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()).wrapping_add(1))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        let (addr, prefix) = raw
            .split_once('/')
            .ok_or_else(|| format!("invalid network {raw:?}: write a.b.c.d/len"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("invalid network {raw:?}: bad address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("invalid network {raw:?}: prefix must be 0..=32"))?;
        Ok(Ipv4Net { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
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
    pub edge: Edge,
    pub tls: Tls,
    pub pools: Vec<Pool>,
    pub routes: Vec<Route>,
    pub prometheus: Observer,
    pub grafana: Observer,
    /// Where Prometheus sends alerts; absent: alerts are only evaluated.
    pub alertmanager: Option<Alertmanager>,
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
        Topology::parse(&text).map_err(|e| match e {
            TopologyError::Parse { message, .. } => TopologyError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
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

    pub fn gateway_addresses(&self) -> Vec<Ipv4Addr> {
        (0..self.gateways.count)
            .filter_map(|i| Topology::nth(self.gateways.first_address, i))
            .collect()
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !name_ok(&self.name) || !name_ok(&self.project) {
            return Err(invalid("name and project: use a-z, 0-9 and '-'"));
        }
        let [a, _, c, d] = self.loopback.addr.octets();
        if a != 127 || self.loopback.prefix != 16 || c != 0 || d != 0 {
            return Err(invalid(format!(
                "loopback {} must be a /16 inside 127.0.0.0/8, e.g. 127.0.0.0/16",
                self.loopback
            )));
        }
        if self.subnet.prefix > 24 {
            return Err(invalid(format!("subnet {} is too small", self.subnet)));
        }
        if !self.subnet.contains_net(&self.dynamic_range) {
            return Err(invalid(format!(
                "dynamic_range {} is not inside subnet {}",
                self.dynamic_range, self.subnet
            )));
        }
        let g = &self.gateways;
        if g.count == 0 || g.count > 8 {
            return Err(invalid("gateways.count must be 1..=8"));
        }
        if g.priorities.len() != g.count {
            return Err(invalid(format!(
                "gateways.priorities has {} entries for {} gateways",
                g.priorities.len(),
                g.count
            )));
        }
        if g.priorities.iter().any(|p| *p == 0 || *p == 255) {
            return Err(invalid("gateway priorities must be 1..=254"));
        }
        if g.vip_prefix == 0 || g.vip_prefix > 32 {
            return Err(invalid("gateways.vip_prefix must be 1..=32"));
        }
        if g.advert_interval.0.is_zero() {
            return Err(invalid("gateways.advert_interval must be above zero"));
        }
        let mut fixed: Vec<(String, Ipv4Addr)> = Vec::new();
        for (i, addr) in self.gateway_addresses().into_iter().enumerate() {
            fixed.push((format!("gateway-{}", i + 1), addr));
        }
        fixed.push(("the VIP".into(), g.vip));
        fixed.push(("the edge".into(), self.edge.address));
        fixed.push(("prometheus".into(), self.prometheus.address));
        fixed.push(("grafana".into(), self.grafana.address));
        if let Some(am) = &self.alertmanager {
            fixed.push(("alertmanager".into(), am.address));
            if let Some(hook) = &am.webhook {
                if !(hook.starts_with("http://") || hook.starts_with("https://")) {
                    return Err(invalid(format!(
                        "alertmanager.webhook {hook:?} must be an http(s) URL"
                    )));
                }
            }
        }
        let size_ok = {
            let l = &self.logs.max_size;
            let digits = l.trim_end_matches(['k', 'm', 'g']);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && digits != "0"
        };
        if !size_ok || self.logs.max_file == 0 {
            return Err(invalid(
                "logs: max_size is a size such as 10m, 500k or 1g, max_file at least 1",
            ));
        }
        if self.pools.is_empty() {
            return Err(invalid("define at least one [[pools]]"));
        }
        let mut pool_names = BTreeSet::new();
        for pool in &self.pools {
            if !name_ok(&pool.name) || pool.name == "gateway" || pool.name == "edge" {
                return Err(invalid(format!(
                    "pool name {:?}: use a-z, 0-9, '-' (not gateway or edge)",
                    pool.name
                )));
            }
            if !pool_names.insert(pool.name.as_str()) {
                return Err(invalid(format!("pool {} is defined twice", pool.name)));
            }
            if pool.instances == 0 {
                return Err(invalid(format!(
                    "pool {}: instances must be >= 1",
                    pool.name
                )));
            }
            if pool.weights.is_empty() || pool.weights.contains(&0) {
                return Err(invalid(format!(
                    "pool {}: weights must be a non-empty list of positive numbers",
                    pool.name
                )));
            }
            if pool.weights.len() > pool.instances {
                return Err(invalid(format!(
                    "pool {}: {} weights for {} instances",
                    pool.name,
                    pool.weights.len(),
                    pool.instances
                )));
            }
            if pool.algorithm == AlgorithmName::Hash {
                return Err(invalid(format!(
                    "pool {}: algorithm must be round_robin or least_conn",
                    pool.name
                )));
            }
            pool.health_check
                .check()
                .map_err(|e| invalid(format!("pool {}: {e}", pool.name)))?;
            for (i, addr) in Topology::pool_addresses(pool, pool.instances)
                .into_iter()
                .enumerate()
            {
                fixed.push((format!("{}-{}", pool.name, i + 1), addr));
            }
        }
        let mut seen: Vec<(String, Ipv4Addr)> = Vec::new();
        for (who, addr) in &fixed {
            if !self.subnet.contains(*addr) {
                return Err(invalid(format!(
                    "{who}'s address {addr} is outside subnet {}",
                    self.subnet
                )));
            }
            if self.dynamic_range.contains(*addr) {
                return Err(invalid(format!(
                    "{who}'s address {addr} is inside dynamic_range {}",
                    self.dynamic_range
                )));
            }
            if *addr == self.subnet.network() || *addr == self.subnet.first_host() {
                return Err(invalid(format!(
                    "{who}'s address {addr} is the network or its bridge gateway"
                )));
            }
            if let Some((other, _)) = seen.iter().find(|(_, a)| a == addr) {
                return Err(invalid(format!("{who} and {other} share address {addr}")));
            }
            seen.push((who.clone(), *addr));
        }
        if self.routes.is_empty() {
            return Err(invalid("define at least one [[routes]]"));
        }
        let mut prefixes = BTreeSet::new();
        for route in &self.routes {
            if !route.prefix.starts_with('/') {
                return Err(invalid(format!(
                    "route {:?} must start with /",
                    route.prefix
                )));
            }
            if !pool_names.contains(route.pool.as_str()) {
                return Err(invalid(format!(
                    "route {:?} names unknown pool {:?}",
                    route.prefix, route.pool
                )));
            }
            if !prefixes.insert(route.prefix.as_str()) {
                return Err(invalid(format!(
                    "route {:?} is defined twice",
                    route.prefix
                )));
            }
            match &route.rate_limit {
                Some(RateLimitSetting::On(rl)) => rl
                    .check()
                    .map_err(|e| invalid(format!("route {:?}: {e}", route.prefix)))?,
                Some(RateLimitSetting::Off(true)) => {
                    return Err(invalid(format!(
                        "route {:?}: write rate_limit = false or a {{ rate, per, burst }} table",
                        route.prefix
                    )))
                }
                _ => {}
            }
        }
        if let Some(rl) = &self.defaults.rate_limit {
            rl.check().map_err(|e| invalid(format!("defaults: {e}")))?;
        }
        for path in &self.defaults.internal_paths {
            if !path.starts_with('/') || path == "/" {
                return Err(invalid(format!(
                    "defaults.internal_paths: {path:?} must start with / and not be /"
                )));
            }
            if prefixes.contains(path.as_str()) {
                return Err(invalid(format!(
                    "defaults.internal_paths: {path:?} is also a route"
                )));
            }
        }
        if self.pools.iter().any(|p| p.scale_weight == 0) {
            return Err(invalid("scale_weight must be above zero"));
        }
        if self.tls.names.is_empty() {
            return Err(invalid("tls.names must name at least one host"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = include_str!("../../topology/dev.toml");
    const PRODUCTION: &str = include_str!("../../topology/production.toml");

    #[test]
    fn the_committed_topologies_parse_and_follow_the_numbering() {
        for (text, subnet, net) in [
            (DEV, "172.28.0.0/16", "172.28"),
            (PRODUCTION, "10.0.0.0/16", "10.0"),
        ] {
            let t = Topology::parse(text).unwrap();
            assert_eq!(t.subnet.to_string(), subnet);
            assert_eq!(
                t.gateway_addresses(),
                vec![
                    format!("{net}.1.10").parse::<Ipv4Addr>().unwrap(),
                    format!("{net}.1.11").parse().unwrap()
                ]
            );
            assert_eq!(t.gateways.vip.to_string(), format!("{net}.1.100"));
            assert_eq!(t.gateways.priorities, vec![150, 100]);
            let admin = t.pool("admin").unwrap();
            assert_eq!(admin.instances, 5);
            assert_eq!(admin.port, 3002);
            assert_eq!(admin.weights, vec![100, 100, 100, 75, 75]);
            assert_eq!(admin.algorithm, AlgorithmName::RoundRobin);
            assert_eq!(admin.keepalive, 128);
            assert_eq!(admin.first_address.to_string(), format!("{net}.2.10"));
            let customer = t.pool("customer").unwrap();
            assert_eq!(customer.instances, 5);
            assert_eq!(customer.port, 3001);
            assert_eq!(customer.algorithm, AlgorithmName::LeastConn);
            assert_eq!(customer.keepalive, 256);
            assert!(customer.sticky.is_some());
            assert_eq!(customer.first_address.to_string(), format!("{net}.3.10"));
            let limits: Vec<_> = t
                .routes
                .iter()
                .filter_map(|r| match &r.rate_limit {
                    Some(RateLimitSetting::On(l)) => Some((r.pool.as_str(), l.rate)),
                    _ => None,
                })
                .collect();
            assert!(limits.contains(&("admin", 50)));
            assert!(limits.contains(&("customer", 100)));
            assert!(t.tls.names.contains(&"api.insightserenity.com".to_string()));
        }
    }

    fn with(text: &str, from: &str, to: &str) -> Result<Topology, TopologyError> {
        assert!(text.contains(from), "fixture lacks {from:?}");
        Topology::parse(&text.replacen(from, to, 1))
    }

    #[test]
    fn mistakes_are_one_line_reasons() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "name = \"dev\"",
                "name = \"dev\"\nbogus = 1",
                "unknown field",
            ),
            (
                "subnet = \"172.28.0.0/16\"",
                "subnet = \"172.28.0.0/33\"",
                "prefix",
            ),
            (
                "priorities = [150, 100]",
                "priorities = [150]",
                "priorities has 1",
            ),
            (
                "priorities = [150, 100]",
                "priorities = [255, 100]",
                "1..=254",
            ),
            (
                "vip = \"172.28.1.100\"",
                "vip = \"172.28.1.11\"",
                "share address",
            ),
            (
                "vip = \"172.28.1.100\"",
                "vip = \"10.0.1.100\"",
                "outside subnet",
            ),
            (
                "dynamic_range = \"172.28.200.0/21\"",
                "dynamic_range = \"172.28.0.0/22\"",
                "inside dynamic_range",
            ),
            (
                "weights = [100, 100, 100, 75, 75]",
                "weights = [100, 0]",
                "positive",
            ),
            ("pool = \"admin\"", "pool = \"nope\"", "unknown pool"),
            (
                "advert_interval = \"100ms\"",
                "advert_interval = \"soon\"",
                "duration",
            ),
        ];
        for (from, to, reason) in cases {
            let err = with(DEV, from, to).unwrap_err().to_string();
            assert!(err.contains(reason), "{from} -> {to}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn networks() {
        let net: Ipv4Net = "172.28.0.0/16".parse().unwrap();
        assert!(net.contains("172.28.255.1".parse().unwrap()));
        assert!(!net.contains("172.29.0.1".parse().unwrap()));
        assert_eq!(net.first_host().to_string(), "172.28.0.1");
        assert!(net.contains_net(&"172.28.200.0/21".parse().unwrap()));
        assert!(!net.contains_net(&"172.0.0.0/8".parse().unwrap()));
        assert!("172.28.0.0".parse::<Ipv4Net>().is_err());
    }
}
