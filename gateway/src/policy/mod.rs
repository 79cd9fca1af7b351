//! Edge policies: who the client is, rate limits, connection and size limits, security
//! headers, sticky sessions, WebSocket tunnels, the static-asset cache.
//!
//! Decisions that are pure (client IP resolution, PROXY header parsing, cacheability, cookie
//! signing, header sets) are unit-tested here; the proxy and the accept loop apply them.

pub mod cache;
pub mod client_ip;
pub mod conn_limit;
pub mod headers;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod sticky;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use crate::config::{AccessRule, Cidr, PolicyConfig, RateLimitSetting, RouteConfig};
use crate::metrics::GatewayMetrics;
use headers::SecurityHeaders;
use rate_limit::RateLimiter;

/// NGINX's default `client_max_body_size`.
pub const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// A WebSocket with no traffic for this long is closed, unless configured otherwise.
pub const DEFAULT_WEBSOCKET_IDLE: Duration = Duration::from_secs(3600);

/// Cache settings of a route.
#[derive(Debug, Clone, Copy)]
pub struct RouteCache {
    pub ttl: Option<Duration>,
    pub max_object: u64,
}

/// Why a client may not use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An internal route: answered as if it did not exist (404).
    Internal,
    /// An `access` rule denies the client (403).
    Denied,
}

/// Where an upstream's sticky cookie applies on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyScope {
    /// Only WebSocket upgrades (the default): a tunnel reaches the replica holding its
    /// session, everything else is balanced freely.
    WebSocket,
    Always,
    Never,
}

impl StickyScope {
    pub fn from_setting(setting: Option<bool>) -> StickyScope {
        match setting {
            None => StickyScope::WebSocket,
            Some(true) => StickyScope::Always,
            Some(false) => StickyScope::Never,
        }
    }

    /// Whether a request (a WebSocket upgrade or not) is pinned and may be given a pin.
    pub fn applies(self, websocket: bool) -> bool {
        match self {
            StickyScope::WebSocket => websocket,
            StickyScope::Always => true,
            StickyScope::Never => false,
        }
    }
}

/// A route's policies, resolved over `[defaults]` and the built-in security headers.
pub struct RoutePolicy {
    /// Requests need a valid bearer token for this verifier's audience (set by the snapshot,
    /// which loads the keys).
    pub auth: Option<service_kit::auth::Auth>,
    /// Clients get 404 (NGINX `internal`).
    pub internal: bool,
    /// `allow` / `deny` in order; a denied client gets 403.
    pub access: Vec<AccessRule>,
    pub sticky: StickyScope,
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub exempt: Vec<Cidr>,
    pub max_body: u64,
    pub headers: Arc<SecurityHeaders>,
    pub websocket_idle: Duration,
    pub cache: Option<RouteCache>,
    pub rate_limited: IntCounter,
}

impl RoutePolicy {
    /// `previous` is the same route in the last snapshot: its rate-limit buckets are kept when
    /// the limit did not change, so a reload does not hand every client a fresh bucket.
    pub fn resolve(
        defaults: &PolicyConfig,
        route: &RouteConfig,
        previous: Option<&RoutePolicy>,
        metrics: &GatewayMetrics,
    ) -> RoutePolicy {
        let own = &route.policy;
        let rate_limit = match own.rate_limit.or(defaults.rate_limit) {
            Some(RateLimitSetting::On(config)) => Some(
                previous
                    .and_then(|p| p.rate_limit.clone())
                    .filter(|rl| *rl.config() == config)
                    .unwrap_or_else(|| Arc::new(RateLimiter::new(config))),
            ),
            _ => None,
        };
        let header_config = own.security_headers.clone().unwrap_or_default().over(
            &defaults
                .security_headers
                .clone()
                .unwrap_or_default()
                .over(&headers::builtin()),
        );
        RoutePolicy {
            auth: None,
            internal: route.internal,
            access: own
                .access
                .clone()
                .or_else(|| defaults.access.clone())
                .unwrap_or_default(),
            sticky: StickyScope::from_setting(route.sticky),
            rate_limit,
            exempt: own
                .rate_limit_exempt
                .clone()
                .or_else(|| defaults.rate_limit_exempt.clone())
                .unwrap_or_default(),
            max_body: own
                .client_max_body_size
                .or(defaults.client_max_body_size)
                .map_or(DEFAULT_MAX_BODY, |s| s.0),
            headers: Arc::new(SecurityHeaders::new(&header_config)),
            websocket_idle: own
                .websocket_idle_timeout
                .or(defaults.websocket_idle_timeout)
                .map_or(DEFAULT_WEBSOCKET_IDLE, |d| d.0),
            cache: route.cache.as_ref().map(|c| RouteCache {
                ttl: c.ttl.map(|d| d.0),
                max_object: c.max_object_size.0,
            }),
            rate_limited: metrics.rate_limited.with_label_values(&[&route.prefix]),
        }
    }

    /// Whether this client may use the route at all: Err is the answer it gets instead.
    pub fn admit(&self, client: std::net::IpAddr) -> Result<(), Refusal> {
        if self.internal {
            return Err(Refusal::Internal);
        }
        if !crate::config::allowed(&self.access, client) {
            return Err(Refusal::Denied);
        }
        Ok(())
    }

    /// Headers for responses outside any route (redirects, unrouted errors): `[defaults]`.
    pub fn default_headers(defaults: &PolicyConfig) -> SecurityHeaders {
        SecurityHeaders::new(
            &defaults
                .security_headers
                .clone()
                .unwrap_or_default()
                .over(&headers::builtin()),
        )
    }
}
