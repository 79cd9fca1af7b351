//! Gateway metrics (promtool-clean names, bounded labels: routes, upstreams and servers come
//! from the config, never from requests).
//!
//! Hot-path counters are resolved to handles once per config snapshot (see `runtime`), so a
//! request does no label hashing. Per-server gauges are refreshed from the pool state at
//! scrape time.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct GatewayMetrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub retries: IntCounterVec,
    /// Requests waiting in an upstream's queue for a server below `max_conns`.
    pub queued: IntGaugeVec,
    /// Requests the queue turned away: `full` (at its size) or `timeout`.
    pub queue_rejected: IntCounterVec,
    pub server_up: IntGaugeVec,
    pub server_active: IntGaugeVec,
    pub server_idle: IntGaugeVec,
    pub server_http2: IntGaugeVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_handshake_errors: IntCounter,
    pub reloads: IntCounterVec,
    pub last_reload_success: IntGauge,
    pub connections: IntGaugeVec,
    /// Open client connections per worker thread (thread per core); refreshed at scrape time.
    pub worker_connections: IntGaugeVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_clients: IntGauge,
    pub connections_refused: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_bytes: IntGauge,
    pub websockets: IntGauge,
    pub ha: crate::ha::node::HaMetrics,
    pub acme: crate::certs::acme::AcmeMetrics,
    pub ocsp: crate::certs::ocsp::OcspMetrics,
    /// `discover` lookups by upstream and result (`unchanged`, `changed`, `error`).
    pub dns_resolutions: IntCounterVec,
    /// Servers each discovering upstream has from DNS now.
    pub discovered_servers: IntGaugeVec,
}

impl GatewayMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = service_kit::metrics::base_registry("gateway", env!("CARGO_PKG_VERSION"))?;
        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_requests_total",
                "Requests answered, by route and status class.",
            ),
            &["route", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Time from request head to response head, by route.",
            )
            .buckets(service_kit::metrics::LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_requests_total",
                "Tries sent to upstream servers, by outcome.",
            ),
            &["upstream", "server", "outcome"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_retries_total",
                "Requests passed to a next server after a failed try.",
            ),
            &["upstream"],
        )?;
        let queued = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_queued_requests",
                "Requests waiting for a server below max_conns (upstream queue).",
            ),
            &["upstream"],
        )?;
        let queue_rejected = IntCounterVec::new(
            Opts::new(
                "gateway_upstream_queue_rejected_total",
                "Requests answered 503 by the upstream queue, by reason (full, timeout).",
            ),
            &["upstream", "reason"],
        )?;
        let server_up = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_server_up",
                "1 when the server can be picked (not down, failed or unhealthy).",
            ),
            &["upstream", "server"],
        )?;
        let server_active = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_active_requests",
                "Requests in flight to the server.",
            ),
            &["upstream", "server"],
        )?;
        let server_idle = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_idle_connections",
                "Idle keep-alive connections cached for the server.",
            ),
            &["upstream", "server"],
        )?;
        let server_http2 = IntGaugeVec::new(
            Opts::new(
                "gateway_upstream_http2_connections",
                "Open HTTP/2 connections to the server, shared by the requests in flight (protocol = \"http2\").",
            ),
            &["upstream", "server"],
        )?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "gateway_tls_handshakes_total",
                "Completed client TLS handshakes, by protocol version.",
            ),
            &["version"],
        )?;
        let tls_handshake_errors = IntCounter::new(
            "gateway_tls_handshake_errors_total",
            "Client TLS handshakes that failed or timed out.",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "gateway_config_reloads_total",
                "Configuration reloads, by result.",
            ),
            &["result"],
        )?;
        let dns_resolutions = IntCounterVec::new(
            Opts::new(
                "gateway_dns_resolutions_total",
                "DNS lookups of discovering upstreams, by result (unchanged, changed, error: the last good set stays).",
            ),
            &["upstream", "result"],
        )?;
        let discovered_servers = IntGaugeVec::new(
            Opts::new(
                "gateway_discovered_servers",
                "Servers a discovering upstream has from DNS.",
            ),
            &["upstream"],
        )?;
        let last_reload_success = IntGauge::new(
            "gateway_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        )?;
        let connections = IntGaugeVec::new(
            Opts::new(
                "gateway_client_connections",
                "Open client connections, by listener kind.",
            ),
            &["listener"],
        )?;
        let worker_connections = IntGaugeVec::new(
            Opts::new(
                "gateway_worker_client_connections",
                "Open client connections served by each worker thread (thread per core).",
            ),
            &["worker"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "gateway_rate_limited_requests_total",
                "Requests refused with 429 by a route's rate limit.",
            ),
            &["route"],
        )?;
        let rate_limit_clients = IntGauge::new(
            "gateway_rate_limit_tracked_clients",
            "Client buckets currently held by all rate limiters.",
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "gateway_connections_refused_total",
                "Client connections closed at accept, by reason.",
            ),
            &["reason"],
        )?;
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "gateway_cache_requests_total",
                "Cacheable-route requests, by cache result.",
            ),
            &["result"],
        )?;
        let cache_bytes = IntGauge::new(
            "gateway_cache_size_bytes",
            "Bytes held by the response cache.",
        )?;
        let websockets = IntGauge::new("gateway_websocket_tunnels", "Open WebSocket tunnels.")?;
        let ha = crate::ha::node::HaMetrics {
            master: IntGauge::new(
                "gateway_ha_master",
                "1 while this gateway is the HA master.",
            )?,
            vip_held: IntGauge::new("gateway_ha_vip_held", "1 while this gateway holds the VIP.")?,
            effective_priority: IntGauge::new(
                "gateway_ha_effective_priority",
                "HA priority after tracking penalties.",
            )?,
            transitions: IntCounterVec::new(
                Opts::new(
                    "gateway_ha_transitions_total",
                    "HA state transitions, by the state entered.",
                ),
                &["state"],
            )?,
            sent: IntCounter::new("gateway_ha_adverts_sent_total", "HA adverts sent.")?,
            received: IntCounter::new(
                "gateway_ha_adverts_received_total",
                "Authenticated HA adverts received.",
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "gateway_ha_adverts_rejected_total",
                    "HA adverts dropped, by reason (invalid: bad tag or format; replayed).",
                ),
                &["reason"],
            )?,
        };
        for c in [
            Box::new(ha.master.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ha.vip_held.clone()),
            Box::new(ha.effective_priority.clone()),
            Box::new(ha.transitions.clone()),
            Box::new(ha.sent.clone()),
            Box::new(ha.received.clone()),
            Box::new(ha.rejected.clone()),
        ] {
            registry.register(c)?;
        }
        for c in [
            Box::new(rate_limited.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rate_limit_clients.clone()),
            Box::new(connections_refused.clone()),
            Box::new(cache_requests.clone()),
            Box::new(cache_bytes.clone()),
            Box::new(websockets.clone()),
        ] {
            registry.register(c)?;
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(upstream_requests.clone()),
            Box::new(retries.clone()),
            Box::new(queued.clone()),
            Box::new(queue_rejected.clone()),
            Box::new(server_up.clone()),
            Box::new(server_active.clone()),
            Box::new(server_idle.clone()),
            Box::new(server_http2.clone()),
            Box::new(tls_handshakes.clone()),
            Box::new(tls_handshake_errors.clone()),
            Box::new(reloads.clone()),
            Box::new(dns_resolutions.clone()),
            Box::new(discovered_servers.clone()),
            Box::new(last_reload_success.clone()),
            Box::new(connections.clone()),
            Box::new(worker_connections.clone()),
        ] {
            registry.register(c)?;
        }
        let acme = crate::certs::acme::AcmeMetrics::register(&registry)?;
        let ocsp = crate::certs::ocsp::OcspMetrics::register(&registry)?;
        Ok(GatewayMetrics {
            acme,
            ocsp,
            registry,
            requests,
            duration,
            upstream_requests,
            retries,
            queued,
            queue_rejected,
            server_up,
            server_active,
            server_idle,
            server_http2,
            tls_handshakes,
            tls_handshake_errors,
            reloads,
            dns_resolutions,
            discovered_servers,
            last_reload_success,
            connections,
            worker_connections,
            rate_limited,
            rate_limit_clients,
            connections_refused,
            cache_requests,
            cache_bytes,
            websockets,
            ha,
        })
    }
}

/// `2xx`-style class label of a status code.
pub fn code_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Outcome labels of `gateway_upstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    Ok,
    Http5xx,
    ConnectError,
    Timeout,
    Error,
    /// An HTTP/2 server refused the stream unprocessed (REFUSED_STREAM, or above its GOAWAY's
    /// last stream): the request went to another server. Not an error: servers recycling
    /// or draining connections do it while well.
    Refused,
}

impl TryOutcome {
    pub const ALL: [TryOutcome; 6] = [
        TryOutcome::Ok,
        TryOutcome::Http5xx,
        TryOutcome::ConnectError,
        TryOutcome::Timeout,
        TryOutcome::Error,
        TryOutcome::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TryOutcome::Ok => "ok",
            TryOutcome::Http5xx => "http_5xx",
            TryOutcome::ConnectError => "connect_error",
            TryOutcome::Timeout => "timeout",
            TryOutcome::Error => "error",
            TryOutcome::Refused => "refused",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}
