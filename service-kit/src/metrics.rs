//! Prometheus metrics: one registry per process, standard HTTP metrics, build info.
//!
//! Names follow Prometheus conventions (base units, `_total` counters) so `promtool check
//! metrics` is clean. Route labels are axum's matched route templates, never raw paths, to
//! keep cardinality bounded.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds, from 1 ms to the seed's 5 s report and beyond.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
}

/// The process registry with the HTTP metrics and build info already registered.
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
}

impl Metrics {
    /// `service` and `version` label the `build_info` gauge.
    pub fn new(service: &str, version: &str) -> Result<Self, prometheus::Error> {
        let registry = base_registry(service, version)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests served, by method, route and status.",
            ),
            &["method", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from request head to response head, by method and route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route"],
        )?;
        let in_flight = IntGauge::new(
            "http_requests_in_flight",
            "HTTP requests currently being served.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(Metrics {
            registry,
            http: HttpMetrics {
                requests,
                duration,
                in_flight,
            },
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format of everything registered.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// A registry holding `build_info{service,version}`, the certificate expiry gauge and the
/// process collector (CPU, RSS, fds).
pub fn base_registry(service: &str, version: &str) -> Result<Registry, prometheus::Error> {
    let registry = Registry::new();
    registry.register(Box::new(CertificateExpiry::new()?))?;
    let build_info = IntGaugeVec::new(
        Opts::new("build_info", "Always 1; labels name the running build."),
        &["service", "version"],
    )?;
    build_info.with_label_values(&[service, version]).set(1);
    registry.register(Box::new(build_info))?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(registry)
}

/// Not-after (unix seconds) of the certificates this process serves or presents, by role
/// (`server`, `upstream_client`). Process-wide because the TLS loaders (`crate::tls`) set it
/// wherever a certificate is loaded or reloaded; every registry from `base_registry` exports it.
static CERTIFICATES: Mutex<BTreeMap<&'static str, i64>> = Mutex::new(BTreeMap::new());

const CERTIFICATE_METRIC: &str = "tls_certificate_not_after_seconds";
const CERTIFICATE_HELP: &str = "Unix time after which the certificate is no longer valid, by role.";

/// Sets `tls_certificate_not_after_seconds{certificate}`.
pub fn set_certificate_not_after(certificate: &'static str, unix_seconds: i64) {
    let mut map = CERTIFICATES.lock().unwrap_or_else(|p| p.into_inner());
    map.insert(certificate, unix_seconds);
}

/// Drops the series of a certificate the process no longer uses (a reload removed it).
pub fn forget_certificate(certificate: &'static str) {
    let mut map = CERTIFICATES.lock().unwrap_or_else(|p| p.into_inner());
    map.remove(certificate);
}

/// Exports `CERTIFICATES` at scrape time.
struct CertificateExpiry {
    desc: Desc,
}

impl CertificateExpiry {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(CertificateExpiry {
            desc: Desc::new(
                CERTIFICATE_METRIC.into(),
                CERTIFICATE_HELP.into(),
                vec!["certificate".into()],
                Default::default(),
            )?,
        })
    }
}

impl Collector for CertificateExpiry {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(gauge) = IntGaugeVec::new(
            Opts::new(CERTIFICATE_METRIC, CERTIFICATE_HELP),
            &["certificate"],
        ) else {
            return Vec::new();
        };
        let map = CERTIFICATES.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return Vec::new();
        }
        for (certificate, at) in map.iter() {
            gauge.with_label_values(&[*certificate]).set(*at);
        }
        gauge.collect()
    }
}

/// The text exposition format of everything in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::with_capacity(8 * 1024);
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(out).unwrap_or_default()
}

impl HttpMetrics {
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    pub fn observe(&self, method: &http::Method, route: &str, status: u16, elapsed: Duration) {
        let method = method_label(method);
        let status = status.to_string();
        self.requests
            .with_label_values(&[method, route, status.as_str()])
            .inc();
        self.duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }
}

/// Decrements the in-flight gauge when the request ends, even if its future is dropped.
pub struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Standard methods keep their name; anything else is one bucket so clients cannot grow the
/// label set.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_standard_metrics() {
        let m = Metrics::new("test-svc", "1.2.3").unwrap();
        {
            let _g = m.http.start();
            m.http
                .observe(&http::Method::GET, "/health", 200, Duration::from_millis(3));
        }
        m.http.observe(
            &http::Method::from_bytes(b"BREW").unwrap(),
            "unmatched",
            404,
            Duration::from_millis(1),
        );
        let text = m.render();
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="/health",status="200"} 1"#)
        );
        assert!(text
            .contains(r#"http_requests_total{method="OTHER",route="unmatched",status="404"} 1"#));
        assert!(text.contains(r#"build_info{service="test-svc",version="1.2.3"} 1"#));
        assert!(text.contains("http_requests_in_flight 0"));
        assert!(text.contains("http_request_duration_seconds_bucket"));
    }
}
