//! Edge-policy configuration: client addresses, connection and size limits, and the per-route
//! policies (rate limit, body size, security headers, cache, WebSocket) with their defaults.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::Dur;

/// A byte size written as `"1m"`, `"512k"`, `"2g"`, `"100"` (bytes) or a bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(raw: &str) -> Result<Size, String> {
        let raw = raw.trim();
        let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
        let (digits, unit) = raw.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size {raw:?}: expected e.g. 512k, 1m, 2g"))?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "invalid size unit {other:?} in {raw:?}: use k, m or g"
                ))
            }
        };
        n.checked_mul(factor)
            .map(Size)
            .ok_or_else(|| format!("size {raw:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Bytes(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => Size::parse(&s).map_err(serde::de::Error::custom),
            Raw::Bytes(n) => Ok(Size(n)),
        }
    }
}

/// An address block such as `10.0.0.0/8` or `172.28.1.5` (a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(raw: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match raw.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (raw, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("invalid address block {raw:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix length in {raw:?}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` lies in this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cidr::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Whether `ip` lies in any of `blocks`.
pub fn any_contains(blocks: &[Cidr], ip: IpAddr) -> bool {
    blocks.iter().any(|b| b.contains(ip))
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClientIpConfig {
    /// Peers whose PROXY protocol header and X-Forwarded-For are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Accept PROXY protocol v2 from trusted peers on the HTTPS and HTTP listeners. A PROXY
    /// header from any other peer closes the connection.
    #[serde(default)]
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open client connections in total (NGINX worker_connections); 0 = no limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open client connections per client IP (NGINX limit_conn); 0 = no limit.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Bytes of request head (request line + headers) allowed; more is 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Size,
    /// Header fields allowed; more is 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Request target length allowed; longer is 414.
    #[serde(default = "default_max_uri_length")]
    pub max_uri_length: usize,
    /// A client must send a complete request head within this time (slowloris).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// Idle HTTP/1.1 keep-alive and h2 connections are closed after this.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Dur,
    /// Concurrent streams per h2 connection.
    #[serde(default = "default_h2_streams")]
    pub h2_max_concurrent_streams: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_uri_length: default_max_uri_length(),
            header_read_timeout: default_header_read_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            h2_max_concurrent_streams: default_h2_streams(),
        }
    }
}

fn default_max_connections() -> usize {
    20_000
}
fn default_max_connections_per_ip() -> usize {
    0
}
fn default_max_header_bytes() -> Size {
    Size(16 << 10)
}
fn default_max_headers() -> usize {
    100
}
fn default_max_uri_length() -> usize {
    8192
}
fn default_header_read_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_keepalive_timeout() -> Dur {
    Dur(Duration::from_secs(75))
}
fn default_h2_streams() -> u32 {
    128
}

/// `rate = 50, per = "1m", burst = 50`: a token bucket (GCRA) per client IP and route.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per `per`.
    pub rate: u32,
    #[serde(default = "one_minute")]
    pub per: Dur,
    /// Requests a client may make at once before being limited (default: `rate`).
    pub burst: Option<u32>,
}

fn one_minute() -> Dur {
    Dur(Duration::from_secs(60))
}

/// HSTS as NGINX configurations usually spell it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    #[serde(default = "one_year")]
    pub max_age: u64,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

fn one_year() -> u64 {
    31_536_000
}

/// Security headers; every field left out keeps the default (or the `[defaults]` value).
/// An empty string removes that header.
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    pub hsts: Option<HstsConfig>,
    pub content_security_policy: Option<String>,
    pub x_frame_options: Option<String>,
    pub x_content_type_options: Option<String>,
    pub x_xss_protection: Option<String>,
    pub referrer_policy: Option<String>,
    pub permissions_policy: Option<String>,
    /// Replaces upstream `Server` headers; empty removes it. `X-Powered-By` is always removed.
    pub server: Option<String>,
}

impl SecurityHeadersConfig {
    /// `self` with unset fields taken from `base`.
    pub fn over(&self, base: &SecurityHeadersConfig) -> SecurityHeadersConfig {
        SecurityHeadersConfig {
            hsts: self.hsts.clone().or_else(|| base.hsts.clone()),
            content_security_policy: self
                .content_security_policy
                .clone()
                .or_else(|| base.content_security_policy.clone()),
            x_frame_options: self
                .x_frame_options
                .clone()
                .or_else(|| base.x_frame_options.clone()),
            x_content_type_options: self
                .x_content_type_options
                .clone()
                .or_else(|| base.x_content_type_options.clone()),
            x_xss_protection: self
                .x_xss_protection
                .clone()
                .or_else(|| base.x_xss_protection.clone()),
            referrer_policy: self
                .referrer_policy
                .clone()
                .or_else(|| base.referrer_policy.clone()),
            permissions_policy: self
                .permissions_policy
                .clone()
                .or_else(|| base.permissions_policy.clone()),
            server: self.server.clone().or_else(|| base.server.clone()),
        }
    }
}

/// Policies of a route; `[defaults]` gives them to every route that does not set its own.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Per client IP; `rate_limit = false` on a route turns a default off.
    pub rate_limit: Option<RateLimitSetting>,
    /// Clients exempt from the rate limit (health checkers, load drills).
    pub rate_limit_exempt: Option<Vec<Cidr>>,
    /// Largest request body (413 above it).
    pub client_max_body_size: Option<Size>,
    pub security_headers: Option<SecurityHeadersConfig>,
    /// A proxied WebSocket with no traffic either way for this long is closed.
    pub websocket_idle_timeout: Option<Dur>,
}

/// `rate_limit = { ... }` or `rate_limit = false`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RateLimitSetting {
    Off(bool),
    On(RateLimitConfig),
}

/// Cache settings of a route (e.g. `/static/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// Used when the upstream sends no `Cache-Control: max-age` (responses marked `private`,
    /// `no-store`, with `Set-Cookie` or `Vary: *` are never cached).
    pub ttl: Option<Dur>,
    /// Larger responses pass through uncached.
    #[serde(default = "default_max_object")]
    pub max_object_size: Size,
}

fn default_max_object() -> Size {
    Size(1 << 20)
}

/// The shared in-memory cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Bytes of cached bodies and headers kept at most.
    #[serde(default = "default_cache_size")]
    pub max_size: Size,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: default_cache_size(),
        }
    }
}

fn default_cache_size() -> Size {
    Size(64 << 20)
}

/// Pins a client to a server with a signed cookie set by the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    #[serde(default = "default_sticky_cookie")]
    pub cookie: String,
    /// HMAC key for the cookie (at least 16 bytes); keep it the same on both gateways.
    pub secret: String,
    /// Cookie lifetime; absent = a session cookie.
    pub max_age: Option<Dur>,
}

fn default_sticky_cookie() -> String {
    "is_sticky".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases = [
            ("1m", Some(1 << 20)),
            ("512k", Some(512 << 10)),
            ("2G", Some(2 << 30)),
            ("100", Some(100)),
            ("1.5m", None),
            ("lots", None),
            ("1t", None),
        ];
        for (raw, want) in cases {
            assert_eq!(Size::parse(raw).ok().map(|s| s.0), want, "{raw}");
        }
    }

    #[test]
    fn cidrs() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let host = Cidr::parse("172.28.1.5").unwrap();
        assert!(host.contains("172.28.1.5".parse().unwrap()));
        assert!(!host.contains("172.28.1.6".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::/0")
            .unwrap()
            .contains("::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::1/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
