//! Edge-policy configuration: client addresses, connection and size limits, and the per-route
//! policies (rate limit, body size, security headers, cache, WebSocket) with their defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Cidr, Dur, Size};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per `per`.
    pub rate: u32,
    #[serde(default = "one_minute")]
    pub per: Dur,
    /// Requests a client may make at once before being limited (default: `rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimitConfig {
    /// Why this limit is unusable, if it is (rate, per and burst must be above zero).
    pub fn check(&self) -> Result<(), String> {
        if self.rate == 0 || self.per.0.is_zero() || self.burst == Some(0) {
            return Err("rate_limit needs rate, per and burst above zero".into());
        }
        Ok(())
    }
}

fn one_minute() -> Dur {
    Dur(Duration::from_secs(60))
}

/// HSTS as NGINX configurations usually spell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts: Option<HstsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_security_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_frame_options: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_content_type_options: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_xss_protection: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions_policy: Option<String>,
    /// Replaces upstream `Server` headers; empty removes it. `X-Powered-By` is always removed.
    #[serde(skip_serializing_if = "Option::is_none")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Per client IP; `rate_limit = false` on a route turns a default off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSetting>,
    /// NGINX's `allow` / `deny` in order (`["allow 10.0.0.0/8", "deny all"]`); a denied client
    /// gets 403.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Vec<crate::AccessRule>>,
    /// Clients exempt from the rate limit (health checkers, load drills).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_exempt: Option<Vec<Cidr>>,
    /// Largest request body (413 above it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_max_body_size: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_headers: Option<SecurityHeadersConfig>,
    /// A proxied WebSocket with no traffic either way for this long is closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket_idle_timeout: Option<Dur>,
}

/// `rate_limit = { ... }` or `rate_limit = false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RateLimitSetting {
    Off(bool),
    On(RateLimitConfig),
}

/// Cache settings of a route (e.g. `/static/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// Used when the upstream sends no `Cache-Control: max-age` (responses marked `private`,
    /// `no-store`, with `Set-Cookie` or `Vary: *` are never cached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Dur>,
    /// Larger responses pass through uncached.
    #[serde(default = "default_max_object")]
    pub max_object_size: Size,
}

impl Default for RouteCacheConfig {
    fn default() -> Self {
        RouteCacheConfig {
            ttl: None,
            max_object_size: default_max_object(),
        }
    }
}

fn default_max_object() -> Size {
    Size(1 << 20)
}

/// The shared in-memory cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    #[serde(default = "default_sticky_cookie")]
    pub cookie: String,
    /// HMAC key for the cookie (at least 16 bytes); keep it the same on both gateways.
    pub secret: String,
    /// Cookie lifetime; absent = a session cookie.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Dur>,
}

fn default_sticky_cookie() -> String {
    "is_sticky".to_string()
}
