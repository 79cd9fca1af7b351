//! The gateway's TOML configuration: schema, defaults and the validation that needs nothing
//! but the document. No I/O: the gateway reads the file (`gateway::config::load`) and adds the
//! checks that need its internals; devctl builds a [`Config`] and serializes it.
//!
//! Vocabulary follows NGINX where it has a word for the thing (weight, max_fails,
//! fail_timeout, max_conns, backup, down, keepalive, tries). Unknown keys are errors. Every
//! type serializes to TOML that parses back to an equal value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod access;
mod acme;
mod discover;
mod policy;
mod units;
pub use access::{allowed, AccessRule, Addresses};
pub use acme::{AcmeConfig, LETS_ENCRYPT};
pub use discover::{DiscoverConfig, DnsConfig};
pub use policy::{
    CacheConfig, ClientIpConfig, HstsConfig, LimitsConfig, PolicyConfig, RateLimitConfig,
    RateLimitSetting, RouteCacheConfig, SecurityHeadersConfig, StickyConfig,
};
pub use units::{any_contains, parse_duration, Cidr, Dur, Size};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

pub fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// Serialization leaves out what equals its default (the parser puts it back).
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Largest weight accepted; keeps weight arithmetic far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Shortest accepted HMAC secret (HA adverts, sticky cookies); shorter keys are too easy to
/// guess offline from one captured advert or cookie.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "is_default")]
    pub runtime: RuntimeConfig,
    pub admin: AdminConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConfig>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub upstream_tls: UpstreamTlsConfig,
    #[serde(default, skip_serializing_if = "is_default")]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub routes: Vec<RouteConfig>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub client_ip: ClientIpConfig,
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitsConfig,
    /// Policies every route gets unless it sets its own.
    #[serde(default, skip_serializing_if = "is_default")]
    pub defaults: PolicyConfig,
    #[serde(default, skip_serializing_if = "is_default")]
    pub cache: CacheConfig,
    /// Bearer-token checks at the edge (NGINX Plus `auth_jwt`): the public keys routes with
    /// `auth_jwt` verify against; the backends still verify (defence in depth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_jwt: Option<AuthJwtConfig>,
    /// The VRRP-style pair holding the VIP; applied at start (a reload keeps the running HA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaConfig>,
    /// Resolvers for upstreams that `discover` their servers.
    #[serde(default, skip_serializing_if = "is_default")]
    pub dns: DnsConfig,
}

/// How the master holds the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VipMode {
    /// Add the VIP to an interface (netlink) and announce it with gratuitous ARP. Needs
    /// CAP_NET_ADMIN and CAP_NET_RAW.
    Interface,
    /// Bind the HTTPS/HTTP listeners that name the VIP only while master (loopback, laptops).
    Bind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// This node's name in adverts, logs and `/-/ha`.
    pub name: String,
    /// 1..=254; the higher wins.
    pub priority: u8,
    /// Our unicast address: adverts are sent from it, and it breaks priority ties.
    pub address: std::net::IpAddr,
    /// UDP port for adverts.
    #[serde(default = "default_ha_port")]
    pub port: u16,
    /// The other node(s): `IP:port`.
    pub peers: Vec<SocketAddr>,
    #[serde(default = "default_advert_interval")]
    pub advert_interval: Dur,
    /// A higher-priority backup takes the VIP from a lower-priority master.
    #[serde(default = "yes")]
    pub preempt: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preempt_delay: Option<Dur>,
    /// Shared HMAC key for adverts (at least 16 bytes).
    pub secret: String,
    /// The floating address with its prefix, e.g. "172.28.1.100/16".
    pub vip: Cidr,
    pub vip_mode: VipMode,
    /// Interface mode: where the VIP goes (default: the interface holding `address`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Subtracted from the priority while this node cannot serve (no live upstream server).
    #[serde(default = "default_track_penalty")]
    pub track_penalty: u8,
}

fn default_ha_port() -> u16 {
    5405
}
fn default_advert_interval() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_track_penalty() -> u8 {
    60
}

/// The proxy's threading model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeModel {
    /// One single-threaded event loop per worker thread, each accepting, serving and keeping
    /// its own upstream connections (NGINX's model): a request never changes threads.
    #[default]
    ThreadPerCore,
    /// One work-stealing tokio runtime shared by all workers: an idle worker takes over a busy
    /// one's tasks, at the cost of cross-thread hand-offs on every request.
    WorkStealing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads for the proxy (default: one per core). Read at start only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// How the workers run (default `thread_per_core`). Read at start only.
    #[serde(default)]
    pub model: RuntimeModel,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout: Option<Dur>,
    /// Poll the config file (and certificates) for changes and reload on change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_config: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Internal plain-HTTP listener: /metrics, /-/healthy, /-/ready, /-/upstreams, /-/reload.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsConfig {
    pub listen: Vec<SocketAddr>,
    /// Certificate chain (PEM), re-read on every reload. Not with `acme`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Certificates from an ACME CA instead of `cert`/`key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeConfig>,
    /// Staple OCSP responses when the certificate names a responder (NGINX `ssl_stapling`).
    #[serde(default = "yes")]
    pub ocsp_stapling: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: Vec<SocketAddr>,
    /// Port written in redirects to HTTPS (omitted from the URL when 443).
    #[serde(default = "default_https_port")]
    pub https_port: u16,
    /// Directory served at /.well-known/acme-challenge/ (HTTP-01 challenges).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_challenge_dir: Option<PathBuf>,
}

fn default_https_port() -> u16 {
    443
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// CA bundle that upstream certificates must chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate presented to upstreams (mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

/// `protocol`: how requests travel to an upstream's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1: one connection per request in flight, idle ones kept (`keepalive`).
    #[default]
    Http1,
    /// HTTP/2: multiplexed connections shared per worker thread and server, another one
    /// opened when one carries as many streams as the server takes (or `max_streams`) (ALPN
    /// `h2` over TLS, prior knowledge in plain text). WebSocket upgrades still go over HTTP/1.1.
    Http2,
    /// TLS only: the gateway offers `h2` and `http/1.1` and each server picks (ALPN, what
    /// HAProxy's `alpn h2,http/1.1` does); a server that picked `h2` is then dialled as
    /// `http2`, one that picked `http/1.1` as `http1`, until a new connection says otherwise.
    Auto,
}

impl UpstreamProtocol {
    pub fn is_http1(&self) -> bool {
        *self == UpstreamProtocol::Http1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmName {
    #[default]
    RoundRobin,
    LeastConn,
    Hash,
}

impl AlgorithmName {
    pub fn as_str(self) -> &'static str {
        match self {
            AlgorithmName::RoundRobin => "round_robin",
            AlgorithmName::LeastConn => "least_conn",
            AlgorithmName::Hash => "hash",
        }
    }
}

/// What `hash` balancing hashes: `"client_ip"`, `"header:NAME"` or `"cookie:NAME"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

impl Serialize for HashKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        if raw == "client_ip" {
            return Ok(HashKey::ClientIp);
        }
        if let Some(name) = raw.strip_prefix("header:") {
            return http::HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| serde::de::Error::custom(format!("invalid header name {name:?}")));
        }
        if let Some(name) = raw.strip_prefix("cookie:") {
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'=' && b != b';')
            {
                return Ok(HashKey::Cookie(name.to_string()));
            }
            return Err(serde::de::Error::custom(format!(
                "invalid cookie name {name:?}"
            )));
        }
        Err(serde::de::Error::custom(format!(
            "invalid hash_key {raw:?}: use client_ip, header:NAME or cookie:NAME"
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default)]
    pub algorithm: AlgorithmName,
    /// Required with `algorithm = "hash"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<HashKey>,
    /// `hash` only: ketama consistent hashing (default) or NGINX's plain modulo hash.
    #[serde(default = "yes")]
    pub consistent: bool,
    /// Idle keep-alive connections cached for this pool by each worker thread (NGINX
    /// `keepalive`, which is per worker process too).
    #[serde(default = "default_keepalive")]
    pub keepalive: usize,
    /// Idle keep-alive connections older than this are closed (NGINX `keepalive_timeout`).
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Dur,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Time to wait for the response head (NGINX `proxy_read_timeout` for the first byte).
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Dur,
    /// Servers tried per request (NGINX `proxy_next_upstream_tries`; default: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
    /// Bound on the time spent trying servers (NGINX `proxy_next_upstream_timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_upstream_timeout: Option<Dur>,
    /// Speak TLS to the servers (default true: the backends are HTTPS).
    #[serde(default = "yes")]
    pub tls: bool,
    /// The HTTP version spoken to the servers (default `http1`).
    #[serde(default, skip_serializing_if = "UpstreamProtocol::is_http1")]
    pub protocol: UpstreamProtocol,
    /// `http2` only: streams in flight on one connection before a worker opens another to the
    /// same server, when lower than the server's own limit. By default a connection takes
    /// what the server's `SETTINGS_MAX_CONCURRENT_STREAMS` allows (NGINX 128, hyper 200, Go
    /// 250; unlimited when it names none): one connection per worker and server until that
    /// many are in flight. Lower it to spread a worker's streams over more connections; more
    /// connections cost throughput when the server would take the streams on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u32>,
    /// Name verified in the servers' certificates (default: each server's IP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Pin clients to a server with a signed cookie (WebSocket sessions included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyConfig>,
    /// Fixed servers (may be empty when `discover` finds them).
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
    /// Servers found by DNS, beside the fixed ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discover: Option<DiscoverConfig>,
    /// Requests that find every server at its `max_conns` wait here for a free one instead of
    /// failing (NGINX Plus `queue`, HAProxy's server queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueConfig>,
}

/// `queue = { size = 512, timeout = "5s" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Requests waiting at most; one more is answered 503 at once.
    pub size: usize,
    /// How long a request waits for a server; then 503.
    #[serde(default = "default_queue_timeout")]
    pub timeout: Dur,
}

fn default_queue_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

fn yes() -> bool {
    true
}
fn default_keepalive() -> usize {
    32
}

fn default_keepalive_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_read_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "default_hc_path")]
    pub path: String,
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    #[serde(default = "default_hc_timeout")]
    pub timeout: Dur,
    /// Consecutive successes that bring a server back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take a server out.
    #[serde(default = "default_fall")]
    pub fall: u32,
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
}

fn default_hc_path() -> String {
    "/health".into()
}
fn default_hc_interval() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_hc_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_expect_status() -> u16 {
    200
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `IP:port` of the server.
    pub address: SocketAddr,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default = "one")]
    pub max_fails: u32,
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: Dur,
    /// Concurrent requests allowed to this server; 0 = unlimited.
    #[serde(default, skip_serializing_if = "is_default")]
    pub max_conns: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub backup: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub down: bool,
}

fn one() -> u32 {
    1
}
fn default_fail_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, matched on segment boundaries after normalization, ASCII case-insensitively.
    pub prefix: String,
    /// Only for requests to this host (default: any host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub upstream: String,
    /// Overrides the upstream's `read_timeout` for this route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<Dur>,
    /// This route's policies, over `[defaults]`.
    #[serde(flatten)]
    pub policy: PolicyConfig,
    /// Cache cacheable GET responses of this route in memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<RouteCacheConfig>,
    /// NGINX's `internal`: the path exists only for the platform itself (health checks and
    /// scrapes go to the servers directly); clients get 404.
    #[serde(default, skip_serializing_if = "is_default")]
    pub internal: bool,
    /// Where the upstream's sticky cookie applies on this route: unset, only to WebSocket
    /// upgrades (a tunnel must reach the replica that holds its session); `true`, every
    /// request; `false`, never. Elsewhere requests are balanced freely.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<bool>,
    /// Reject requests without a valid bearer token for this audience before they cost a
    /// backend anything (401 JSON with `WWW-Authenticate`). Needs `[auth_jwt]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_jwt: Option<RouteAuthJwt>,
}

/// `[auth_jwt]`: where the verifying keys are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthJwtConfig {
    /// A JWKS file of Ed25519 (OKP) public keys with `kid`s, re-read when it changes.
    pub jwks: PathBuf,
}

/// A route's token check: tokens must name this audience (the service behind the route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthJwt {
    pub audience: String,
}

impl UpstreamConfig {
    /// A pool of `servers` with every other setting at its default.
    pub fn new(servers: Vec<ServerConfig>) -> UpstreamConfig {
        UpstreamConfig {
            algorithm: AlgorithmName::default(),
            hash_key: None,
            consistent: yes(),
            keepalive: default_keepalive(),
            keepalive_timeout: default_keepalive_timeout(),
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            tries: None,
            next_upstream_timeout: None,
            tls: yes(),
            protocol: UpstreamProtocol::default(),
            max_streams: None,
            server_name: None,
            health_check: None,
            sticky: None,
            servers,
            discover: None,
            queue: None,
        }
    }
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: default_hc_path(),
            interval: default_hc_interval(),
            timeout: default_hc_timeout(),
            rise: default_rise(),
            fall: default_fall(),
            expect_status: default_expect_status(),
        }
    }
}

impl HealthCheckConfig {
    /// Why this health check is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        if !self.path.starts_with('/') {
            return Err("health_check path must start with /".into());
        }
        if self.rise == 0 || self.fall == 0 {
            return Err("health_check rise and fall must be at least 1".into());
        }
        if !(100..=599).contains(&self.expect_status) {
            return Err("health_check expect_status must be an HTTP status".into());
        }
        if self.interval.0.is_zero() || self.timeout.0.is_zero() {
            return Err("health_check interval and timeout must be positive".into());
        }
        Ok(())
    }
}

impl ServerConfig {
    /// A server at `address` with every other setting at its default.
    pub fn new(address: SocketAddr) -> ServerConfig {
        ServerConfig {
            address,
            weight: one(),
            max_fails: one(),
            fail_timeout: default_fail_timeout(),
            max_conns: 0,
            backup: false,
            down: false,
        }
    }
}

impl Config {
    /// Parses a config document and runs every check that needs nothing but the document.
    /// The gateway adds the checks that need its internals (`gateway::config::parse`).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.https.is_none() && self.http.is_none() {
            return Err(invalid("define at least one of [https] and [http]"));
        }
        let mut addrs = BTreeSet::new();
        addrs.insert(self.admin.listen);
        for addr in self
            .https
            .iter()
            .flat_map(|h| &h.listen)
            .chain(self.http.iter().flat_map(|h| &h.listen))
        {
            // Port 0 (an ephemeral port, used by tests) never collides.
            if addr.port() != 0 && !addrs.insert(*addr) {
                return Err(invalid(format!("listen address {addr} is used twice")));
            }
        }
        if let Some(https) = &self.https {
            if https.listen.is_empty() {
                return Err(invalid("[https] listen must name at least one address"));
            }
            match (&https.cert, &https.key, &https.acme) {
                (Some(_), Some(_), None) => {}
                (None, None, Some(acme)) => {
                    acme.check()
                        .map_err(|e| invalid(format!("[https.acme] {e}")))?;
                    if self.http.is_none() {
                        return Err(invalid(
                            "[https.acme] needs an [http] listener (port 80) for HTTP-01 challenges",
                        ));
                    }
                }
                (_, _, Some(_)) => {
                    return Err(invalid("[https] takes either cert + key or acme, not both"))
                }
                _ => return Err(invalid("[https] needs cert and key (or acme)")),
            }
        }
        if let Some(http) = &self.http {
            if http.listen.is_empty() {
                return Err(invalid("[http] listen must name at least one address"));
            }
        }
        match (
            &self.upstream_tls.client_cert,
            &self.upstream_tls.client_key,
        ) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "[upstream_tls] client_cert and client_key go together",
                ))
            }
            _ => {}
        }
        if self.upstreams.is_empty() {
            return Err(invalid("define at least one [upstreams.NAME]"));
        }
        for (name, upstream) in &self.upstreams {
            upstream.validate(name, &self.upstream_tls)?;
        }
        let mut seen = BTreeSet::new();
        for route in &self.routes {
            if !route.prefix.starts_with('/') {
                return Err(invalid(format!(
                    "route prefix {:?} must start with /",
                    route.prefix
                )));
            }
            if !self.upstreams.contains_key(&route.upstream) {
                return Err(invalid(format!(
                    "route {:?} names unknown upstream {:?}",
                    route.prefix, route.upstream
                )));
            }
            let key = (
                route.host.as_deref().map(str::to_ascii_lowercase),
                route.prefix.to_ascii_lowercase(),
            );
            if !seen.insert(key) {
                return Err(invalid(format!(
                    "route {:?} is defined twice",
                    route.prefix
                )));
            }
        }
        if self.routes.is_empty() {
            return Err(invalid("define at least one [[routes]]"));
        }
        validate_policy("[defaults]", &self.defaults)?;
        for route in &self.routes {
            validate_policy(&format!("route {:?}", route.prefix), &route.policy)?;
        }
        for route in self.routes.iter().filter(|r| r.auth_jwt.is_some()) {
            if self.auth_jwt.is_none() {
                return Err(invalid(format!(
                    "route {:?}: auth_jwt needs [auth_jwt] jwks (the public keys)",
                    route.prefix
                )));
            }
            if route
                .auth_jwt
                .as_ref()
                .is_some_and(|a| a.audience.is_empty())
            {
                return Err(invalid(format!(
                    "route {:?}: auth_jwt audience must not be empty",
                    route.prefix
                )));
            }
        }
        if let Some(ha) = &self.ha {
            ha.validate()?;
        }
        if self.client_ip.proxy_protocol && self.client_ip.trusted_proxies.is_empty() {
            return Err(invalid(
                "[client_ip] proxy_protocol needs trusted_proxies (who may send it)",
            ));
        }
        Ok(())
    }

    /// Every file a reload re-reads: watched for changes when `watch_config` is on.
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(https) = &self.https {
            files.extend(https.cert.iter().chain(&https.key).cloned());
        }
        let tls = &self.upstream_tls;
        files.extend(
            tls.ca
                .iter()
                .chain(&tls.client_cert)
                .chain(&tls.client_key)
                .cloned(),
        );
        files
    }
}

impl HaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=254).contains(&self.priority) {
            return Err(invalid("[ha] priority must be 1..=254"));
        }
        if self.secret.len() < MIN_SECRET_LEN {
            return Err(invalid(format!(
                "[ha] secret must be at least {MIN_SECRET_LEN} bytes"
            )));
        }
        if self.peers.is_empty() {
            return Err(invalid("[ha] peers must name the other gateway"));
        }
        let ms = self.advert_interval.0.as_millis();
        if !(1..=65_535).contains(&ms)
            || !self.advert_interval.0.subsec_micros().is_multiple_of(1000)
        {
            return Err(invalid(
                "[ha] advert_interval must be whole milliseconds between 1ms and 65535ms",
            ));
        }
        if self.vip.addr.is_ipv6() != self.address.is_ipv6() {
            return Err(invalid("[ha] vip and address must be the same IP family"));
        }
        Ok(())
    }
}

fn validate_policy(place: &str, policy: &PolicyConfig) -> Result<(), ConfigError> {
    if let Some(RateLimitSetting::On(rl)) = policy.rate_limit {
        rl.check().map_err(|e| invalid(format!("{place}: {e}")))?;
    }
    if let Some(RateLimitSetting::Off(true)) = policy.rate_limit {
        return Err(invalid(format!(
            "{place}: write rate_limit = false or a {{ rate, per, burst }} table"
        )));
    }
    if let Some(headers) = &policy.security_headers {
        let values = [
            &headers.content_security_policy,
            &headers.x_frame_options,
            &headers.x_content_type_options,
            &headers.x_xss_protection,
            &headers.referrer_policy,
            &headers.permissions_policy,
            &headers.server,
        ];
        if values
            .iter()
            .filter_map(|v| v.as_deref())
            .any(|v| http::HeaderValue::from_str(v).is_err())
        {
            return Err(invalid(format!(
                "{place}: security header values must be visible ASCII"
            )));
        }
    }
    Ok(())
}

impl UpstreamConfig {
    fn validate(&self, name: &str, tls: &UpstreamTlsConfig) -> Result<(), ConfigError> {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(invalid(format!(
                "upstream name {name:?}: use letters, digits, '-' and '_'"
            )));
        }
        if let Some(discover) = &self.discover {
            discover
                .check()
                .map_err(|e| invalid(format!("upstream {name}: {e}")))?;
        } else if self.servers.iter().all(|s| s.backup) {
            return Err(invalid(format!(
                "upstream {name}: needs at least one server that is not a backup (or discover)"
            )));
        }
        if self.protocol == UpstreamProtocol::Auto && !self.tls {
            return Err(invalid(format!(
                "upstream {name}: protocol = \"auto\" needs tls = true (the servers pick the \
                 protocol in the TLS handshake; in plain text set http1 or http2)"
            )));
        }
        if self.max_streams == Some(0) {
            return Err(invalid(format!(
                "upstream {name}: max_streams must be at least 1"
            )));
        }
        let mut addrs = BTreeSet::new();
        for server in &self.servers {
            if !addrs.insert(server.address) {
                return Err(invalid(format!(
                    "upstream {name}: server {} is listed twice",
                    server.address
                )));
            }
            if server.weight == 0 || server.weight > MAX_WEIGHT {
                return Err(invalid(format!(
                    "upstream {name}: server {} weight must be 1..={MAX_WEIGHT}",
                    server.address
                )));
            }
        }
        if let Some(queue) = &self.queue {
            if queue.size == 0 || queue.timeout.0.is_zero() {
                return Err(invalid(format!(
                    "upstream {name}: queue size and timeout must be above zero"
                )));
            }
            if self.servers.iter().all(|s| s.max_conns == 0) && self.discover.is_none() {
                return Err(invalid(format!(
                    "upstream {name}: a queue needs servers with max_conns (nothing would ever wait)"
                )));
            }
        }
        if self.algorithm == AlgorithmName::Hash && self.hash_key.is_none() {
            return Err(invalid(format!(
                "upstream {name}: algorithm = \"hash\" needs hash_key"
            )));
        }
        if self.algorithm != AlgorithmName::Hash && self.hash_key.is_some() {
            return Err(invalid(format!(
                "upstream {name}: hash_key only applies to algorithm = \"hash\""
            )));
        }
        if self.tries == Some(0) {
            return Err(invalid(format!(
                "upstream {name}: tries must be at least 1"
            )));
        }
        if self.tls && tls.ca.is_none() {
            return Err(invalid(format!(
                "upstream {name}: tls = true needs [upstream_tls] ca to verify servers"
            )));
        }
        if let Some(sticky) = &self.sticky {
            if sticky.secret.len() < MIN_SECRET_LEN {
                return Err(invalid(format!(
                    "upstream {name}: sticky secret must be at least {MIN_SECRET_LEN} bytes"
                )));
            }
            let cookie_ok = !sticky.cookie.is_empty()
                && sticky
                    .cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !cookie_ok {
                return Err(invalid(format!(
                    "upstream {name}: sticky cookie name must be letters, digits, '-' or '_'"
                )));
            }
        }
        if let Some(hc) = &self.health_check {
            hc.check()
                .map_err(|e| invalid(format!("upstream {name}: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
