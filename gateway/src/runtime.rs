//! A config snapshot ready to serve: router, upstreams with their transports, the TLS
//! acceptor, and metric handles resolved once. Requests read the current snapshot through an
//! `ArcSwap` without locking; a reload builds a new one and swaps it whole.
//!
//! Building does every fallible step (reading certificates, CA, client identity) before it
//! touches the shared upstream state, so a bad config changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, IntCounter};
use rustls_pki_types::ServerName;
use service_kit::tls::{self, TlsError};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::certs::{CertSource, Installed, ServerCerts};
use crate::config::{
    Config, HashKey, HealthCheckConfig, HttpsConfig, UpstreamConfig, UpstreamConfigExt,
};
use crate::metrics::{GatewayMetrics, CODE_CLASSES};
use crate::policy::cache::ResponseCache;
use crate::policy::headers::SecurityHeaders;
use crate::policy::sticky::StickyCookie;
use crate::policy::RoutePolicy;
use crate::routing::{Route, Router};
use crate::upstream::{TlsConnectors, Transport, UpstreamShared};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("[https]: {0}")]
    ServerTls(TlsError),
    #[error("[https]: {0}")]
    Certificate(#[from] crate::certs::CertError),
    #[error("[upstream_tls]: {0}")]
    UpstreamTls(TlsError),
    #[error("upstream {upstream}: invalid server_name {name:?}")]
    ServerName { upstream: String, name: String },
    #[error("[auth_jwt]: {0}")]
    AuthJwt(service_kit::auth::AuthError),
}

/// Counters of one route, resolved once per snapshot.
pub struct RouteMetrics {
    pub codes: [IntCounter; 5],
    pub duration: Histogram,
}

impl RouteMetrics {
    pub fn new(metrics: &GatewayMetrics, label: &str) -> Self {
        RouteMetrics {
            codes: CODE_CLASSES.map(|c| metrics.requests.with_label_values(&[label, c])),
            duration: metrics.duration.with_label_values(&[label]),
        }
    }

    pub fn observe(&self, status: u16, elapsed: Duration) {
        self.codes[crate::metrics::code_class(status)].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

pub struct RouteTarget {
    /// The route's prefix, as written in the config: its metrics label.
    pub label: String,
    pub upstream: Arc<UpstreamRuntime>,
    pub read_timeout: Duration,
    pub metrics: RouteMetrics,
    pub policy: RoutePolicy,
}

pub struct UpstreamRuntime {
    pub shared: Arc<UpstreamShared>,
    pub transport: Transport,
    /// Servers tried per request at most.
    pub tries: Option<usize>,
    pub next_upstream_timeout: Option<Duration>,
    pub hash_key: Option<HashKey>,
    pub health_check: Option<HealthCheckConfig>,
    pub retries: IntCounter,
    pub sticky: Option<StickyCookie>,
    /// `queue`: how many requests may wait for a server below `max_conns`, and how long.
    pub queue: Option<gateway_config::QueueConfig>,
    pub queued: prometheus::IntGauge,
    pub queue_full: IntCounter,
    pub queue_timeout: IntCounter,
}

pub struct Snapshot {
    pub config: Config,
    pub router: Router<RouteTarget>,
    pub upstreams: HashMap<String, Arc<UpstreamRuntime>>,
    pub tls_acceptor: Option<TlsAcceptor>,
    /// The HTTPS certificate slot, shared by every snapshot (ACME and OCSP update it).
    pub certs: Arc<ServerCerts>,
    /// For requests that match no route and for errors outside any route.
    pub unrouted: RouteMetrics,
    pub redirect_metrics: RouteMetrics,
    /// `[defaults]` security headers, for responses outside any route.
    pub default_headers: Arc<SecurityHeaders>,
    /// The response cache, when some route uses it; kept across reloads of the same size.
    pub cache: Option<Arc<ResponseCache>>,
}

impl Snapshot {
    /// Builds a snapshot; upstream state of `previous` carries over for upstreams that stay.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        metrics: &GatewayMetrics,
    ) -> Result<Snapshot, BuildError> {
        let certs = previous.map_or_else(Default::default, |p| p.certs.clone());
        let (tls_acceptor, to_install) = match &config.https {
            Some(https) => (
                Some(acceptor(certs.clone())),
                server_certificate(https, &certs)?,
            ),
            None => (None, None),
        };
        let connector = upstream_connector(&config)?;
        let verifiers = token_verifiers(&config)?;
        // tls_certificate_not_after_seconds: `server_config` and `upstream_connector` set the
        // certificates loaded; a reload that stops using one drops its series.
        if config.https.is_none() {
            service_kit::metrics::forget_certificate("server");
        }
        if connector.is_none() || config.upstream_tls.client_cert.is_none() {
            service_kit::metrics::forget_certificate(UPSTREAM_CLIENT_CERT);
        }

        // Everything fallible is done; from here on shared state is updated.
        if let Some(installed) = to_install {
            certs.install(installed);
        }
        let mut upstreams = HashMap::new();
        for (name, upstream) in &config.upstreams {
            let transport = transport(name, upstream, connector.clone())?;
            upstreams.insert(name.clone(), (upstream, transport));
        }
        let upstreams: HashMap<String, Arc<UpstreamRuntime>> = upstreams
            .into_iter()
            .map(|(name, (upstream, transport))| {
                let algorithm = upstream.balance_algorithm();
                let specs = upstream.server_specs();
                let shared = match previous.and_then(|p| p.upstreams.get(&name)) {
                    Some(old) => {
                        old.shared.reconfigure(algorithm, specs, metrics);
                        old.shared.clone()
                    }
                    None => UpstreamShared::new(&name, algorithm, specs, metrics),
                };
                let runtime = UpstreamRuntime {
                    shared,
                    transport,
                    tries: upstream.tries.map(|t| t as usize),
                    next_upstream_timeout: upstream.next_upstream_timeout.map(|d| d.0),
                    hash_key: upstream.hash_key.clone(),
                    health_check: upstream.health_check.clone(),
                    retries: metrics.retries.with_label_values(&[&name]),
                    sticky: upstream
                        .sticky
                        .as_ref()
                        .map(|s| StickyCookie::new(&s.cookie, &s.secret, s.max_age.map(|d| d.0))),
                    queue: upstream.queue,
                    queued: metrics.queued.with_label_values(&[&name]),
                    queue_full: metrics.queue_rejected.with_label_values(&[&name, "full"]),
                    queue_timeout: metrics
                        .queue_rejected
                        .with_label_values(&[&name, "timeout"]),
                };
                (name, Arc::new(runtime))
            })
            .collect();

        if let Some(previous) = previous {
            for (name, old) in &previous.upstreams {
                if !upstreams.contains_key(name) {
                    old.shared.retire();
                }
            }
        }

        let routes = config
            .routes
            .iter()
            .filter_map(|r| {
                let upstream = upstreams.get(&r.upstream)?.clone();
                let pool_timeout = config.upstreams.get(&r.upstream)?.read_timeout.0;
                let previous_policy = previous.and_then(|p| {
                    p.router
                        .routes()
                        .iter()
                        .find(|old| {
                            old.prefix == r.prefix
                                && old.host == r.host.as_ref().map(|h| h.to_ascii_lowercase())
                        })
                        .map(|old| &old.target.policy)
                });
                let mut policy =
                    RoutePolicy::resolve(&config.defaults, r, previous_policy, metrics);
                policy.auth = r
                    .auth_jwt
                    .as_ref()
                    .and_then(|a| verifiers.get(&a.audience).cloned());
                Some(Route {
                    host: r.host.clone(),
                    prefix: r.prefix.clone(),
                    target: RouteTarget {
                        label: r.prefix.clone(),
                        upstream,
                        read_timeout: r.read_timeout.map_or(pool_timeout, |d| d.0),
                        metrics: RouteMetrics::new(metrics, &r.prefix),
                        policy,
                    },
                })
            })
            .collect();

        let cache = if config.routes.iter().any(|r| r.cache.is_some()) {
            let size = config.cache.max_size.0;
            Some(
                previous
                    .and_then(|p| p.cache.clone())
                    .filter(|_| previous.is_some_and(|p| p.config.cache.max_size.0 == size))
                    .unwrap_or_else(|| Arc::new(ResponseCache::new(size))),
            )
        } else {
            None
        };

        Ok(Snapshot {
            default_headers: Arc::new(RoutePolicy::default_headers(&config.defaults)),
            cache,
            router: Router::new(routes),
            upstreams,
            tls_acceptor,
            certs,
            unrouted: RouteMetrics::new(metrics, "none"),
            redirect_metrics: RouteMetrics::new(metrics, "redirect"),
            config,
        })
    }
}

/// Session resumption state, one per process so that reloads (which build a new acceptor)
/// keep it: a stateless ticket encrypter whose key rotates every 6 hours (the previous key
/// still decrypts), and a cache for TLS 1.2 clients that resume by session id.
struct Resumption {
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    cache: Arc<dyn rustls::server::StoresServerSessions>,
}

/// Sessions the id cache keeps (about 0.5 KB each).
const SESSION_CACHE: usize = 16_384;

fn resumption() -> &'static Resumption {
    static RESUMPTION: std::sync::OnceLock<Resumption> = std::sync::OnceLock::new();
    RESUMPTION.get_or_init(|| Resumption {
        ticketer: match rustls::crypto::aws_lc_rs::Ticketer::new() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "TLS session tickets are off (no randomness for a ticket key)");
                None
            }
        },
        cache: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE),
    })
}

/// The HTTPS acceptor: TLS 1.2 + 1.3, ALPN h2 then http/1.1, the certificate from the
/// shared slot at each handshake, and resumption (tickets, or a session id) so a returning
/// client skips the full handshake, across reloads too.
fn acceptor(certs: Arc<ServerCerts>) -> TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_protocol_versions(tls::PROTOCOL_VERSIONS)
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let resumption = resumption();
    config.session_storage = resumption.cache.clone();
    if let Some(ticketer) = &resumption.ticketer {
        config.ticketer = ticketer.clone();
    }
    TlsAcceptor::from(Arc::new(config))
}

/// What the slot should serve under this `[https]`, when that differs from what it serves:
/// the files (re-read on every reload), or under ACME the stored certificate or a stand-in
/// (kept as it is when the manager already serves one for these domains).
fn server_certificate(
    https: &HttpsConfig,
    certs: &ServerCerts,
) -> Result<Option<Installed>, BuildError> {
    match (&https.cert, &https.key, &https.acme) {
        (Some(cert), Some(key), _) => {
            let chain = tls::load_certs(cert, "TLS certificate").map_err(BuildError::ServerTls)?;
            let key = tls::load_key(key).map_err(BuildError::ServerTls)?;
            let what = cert.display().to_string();
            Ok(Some(Installed::new(chain, key, CertSource::Files, &what)?))
        }
        (_, _, Some(acme)) => match certs.current() {
            Some(now) if now.source != CertSource::Files && now.covers(&acme.domains) => Ok(None),
            _ => Ok(Some(crate::certs::acme::initial(acme)?)),
        },
        _ => Err(BuildError::ServerTls(TlsError::Config(
            rustls::Error::General("no certificate: set cert and key, or acme".into()),
        ))),
    }
}

/// `certificate` label of the upstream client certificate's expiry.
const UPSTREAM_CLIENT_CERT: &str = "upstream_client";

fn upstream_connector(config: &Config) -> Result<Option<TlsConnectors>, BuildError> {
    let settings = &config.upstream_tls;
    let Some(ca) = &settings.ca else {
        return Ok(None);
    };
    let roots = tls::root_store(ca, "upstream CA").map_err(BuildError::UpstreamTls)?;
    let identity = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let certs =
                tls::load_certs(cert, "client certificate").map_err(BuildError::UpstreamTls)?;
            tls::record_not_after(UPSTREAM_CLIENT_CERT, &certs);
            Some((certs, tls::load_key(key).map_err(BuildError::UpstreamTls)?))
        }
        _ => None,
    };
    let mut http1 =
        tls::client_config(roots, identity, &[b"http/1.1"]).map_err(BuildError::UpstreamTls)?;
    http1.resumption = rustls::client::Resumption::in_memory_sessions(1024);
    let mut http2 = http1.clone();
    http2.alpn_protocols = vec![b"h2".to_vec()];
    // Sessions are resumed with the ALPN they were made with: one store per offer.
    http2.resumption = rustls::client::Resumption::in_memory_sessions(1024);
    let mut either = http1.clone();
    either.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    either.resumption = rustls::client::Resumption::in_memory_sessions(1024);
    Ok(Some(TlsConnectors {
        http1: TlsConnector::from(Arc::new(http1)),
        http2: TlsConnector::from(Arc::new(http2)),
        either: TlsConnector::from(Arc::new(either)),
    }))
}

fn transport(
    name: &str,
    upstream: &UpstreamConfig,
    connector: Option<TlsConnectors>,
) -> Result<Transport, BuildError> {
    let server_name = match &upstream.server_name {
        Some(n) => Some(
            ServerName::try_from(n.clone()).map_err(|_| BuildError::ServerName {
                upstream: name.to_string(),
                name: n.clone(),
            })?,
        ),
        None => None,
    };
    Ok(Transport {
        tls: if upstream.tls { connector } else { None },
        server_name,
        connect_timeout: upstream.connect_timeout.0,
        keepalive: upstream.keepalive,
        keepalive_timeout: upstream.keepalive_timeout.0,
        protocol: upstream.protocol,
        max_streams: upstream
            .max_streams
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX)),
    })
}

/// One token verifier per audience that a route checks (each polls the JWKS for changes).
fn token_verifiers(
    config: &Config,
) -> Result<HashMap<String, service_kit::auth::Auth>, BuildError> {
    use service_kit::auth::Auth;
    use service_kit::settings::AuthSetting;
    let mut verifiers = HashMap::new();
    let Some(keys) = &config.auth_jwt else {
        return Ok(verifiers);
    };
    for audience in config
        .routes
        .iter()
        .filter_map(|r| r.auth_jwt.as_ref().map(|a| &a.audience))
    {
        if !verifiers.contains_key(audience) {
            let auth = Auth::start(&AuthSetting::Jwks(keys.jwks.clone()), audience)
                .map_err(BuildError::AuthJwt)?;
            verifiers.insert(audience.clone(), auth);
        }
    }
    Ok(verifiers)
}
