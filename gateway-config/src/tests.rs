use std::fmt::Debug;

use serde::de::DeserializeOwned;

use super::*;

const EXAMPLE: &str = include_str!("../../gateway/gateway.example.toml");

/// Every optional section and key set, so a round trip covers them all.
const EVERYTHING: &str = r#"
[runtime]
worker_threads = 4
model = "work_stealing"
shutdown_timeout = "30s"
watch_config = true

[admin]
listen = "127.0.0.1:9900"

[https]
listen = ["0.0.0.0:8443", "[::]:8443"]
cert = "/etc/gw/server.crt"
key = "/etc/gw/server.key"

[http]
listen = ["0.0.0.0:8080"]
https_port = 8443
acme_challenge_dir = "/var/acme"

[upstream_tls]
ca = "/etc/gw/ca.crt"
client_cert = "/etc/gw/client.crt"
client_key = "/etc/gw/client.key"

[upstreams.app]
algorithm = "hash"
hash_key = "header:X-Tenant"
consistent = false
keepalive = 8
keepalive_timeout = "90s"
connect_timeout = "1500ms"
read_timeout = "2m"
tries = 2
next_upstream_timeout = "5s"
server_name = "app.internal"
health_check = { path = "/ready", interval = "1s", timeout = "250ms", rise = 1, fall = 2, expect_status = 204 }
sticky = { cookie = "pin", secret = "0123456789abcdef0123", max_age = "12h" }
servers = [
  { address = "10.0.0.1:3000", weight = 5, max_fails = 2, fail_timeout = "30s", max_conns = 10 },
  { address = "10.0.0.2:3000", backup = true, down = true },
]

[upstreams.other]
algorithm = "hash"
hash_key = "cookie:session"
tls = false
protocol = "http2"
max_streams = 128
servers = [{ address = "10.0.1.1:3000" }]

[[routes]]
prefix = "/api"
host = "api.example.com"
upstream = "app"
read_timeout = "10s"
rate_limit = { rate = 50, per = "1m", burst = 60 }
rate_limit_exempt = ["10.0.0.0/8", "192.168.1.7"]
client_max_body_size = "2m"
websocket_idle_timeout = "1h"
cache = { ttl = "5m", max_object_size = "512k" }
security_headers = { server = "", x_frame_options = "DENY", hsts = { max_age = 600, include_subdomains = true, preload = true } }

[[routes]]
prefix = "/"
upstream = "other"
rate_limit = false

[client_ip]
trusted_proxies = ["10.0.0.5/32", "fd00::/8"]
proxy_protocol = true

[limits]
max_connections = 100
max_connections_per_ip = 10
max_header_bytes = "32k"
max_headers = 50
max_uri_length = 4096
header_read_timeout = "5s"
keepalive_timeout = "30s"
h2_max_concurrent_streams = 64

[defaults]
rate_limit = { rate = 10 }
client_max_body_size = 1000
security_headers = { content_security_policy = "default-src 'self'", x_content_type_options = "nosniff", x_xss_protection = "0", referrer_policy = "no-referrer", permissions_policy = "camera=()" }

[cache]
max_size = "1g"

[ha]
name = "gw-1"
priority = 150
address = "10.0.1.10"
port = 5406
peers = ["10.0.1.11:5406"]
advert_interval = "100ms"
preempt = false
preempt_delay = "3s"
secret = "a-secret-of-at-least-16-bytes"
vip = "10.0.1.100/16"
vip_mode = "bind"
interface = "eth0"
track_penalty = 40
"#;

/// `value` serialized inside a one-key table (TOML documents are tables).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Wrap<T> {
    v: T,
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T) {
    let text = toml::to_string(&Wrap { v: &value }).unwrap();
    let back: Wrap<T> = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(back.v, value, "{text}");
}

#[test]
fn the_documented_example_parses_and_round_trips() {
    let config = Config::parse(EXAMPLE).unwrap();
    assert_eq!(config.upstreams["admin"].keepalive, 128);
    assert_eq!(config.routes.len(), 7);
    let text = toml::to_string(&config).unwrap();
    assert_eq!(Config::parse(&text).unwrap(), config, "{text}");
}

#[test]
fn every_section_round_trips() {
    let config = Config::parse(EVERYTHING).unwrap();
    assert_eq!(config.runtime.model, RuntimeModel::WorkStealing);
    assert_eq!(config.upstreams["other"].protocol, UpstreamProtocol::Http2);
    assert_eq!(config.upstreams["other"].max_streams, Some(128));
    assert_eq!(
        config.upstreams["app"].hash_key,
        Some(HashKey::Header(http::HeaderName::from_static("x-tenant")))
    );
    let text = toml::to_string(&config).unwrap();
    assert_eq!(Config::parse(&text).unwrap(), config, "{text}");
    // Sections on their own, and the defaults of everything that has them.
    round_trip(config.runtime.clone());
    round_trip(config.admin.clone());
    round_trip(config.https.clone());
    round_trip(config.http.clone());
    round_trip(config.upstream_tls.clone());
    round_trip(config.upstreams.clone());
    round_trip(config.routes.clone());
    round_trip(config.client_ip.clone());
    round_trip(config.limits.clone());
    round_trip(config.defaults.clone());
    round_trip(config.cache.clone());
    round_trip(config.ha.clone());
    round_trip(RuntimeConfig::default());
    round_trip(UpstreamTlsConfig::default());
    round_trip(ClientIpConfig::default());
    round_trip(LimitsConfig::default());
    round_trip(PolicyConfig::default());
    round_trip(CacheConfig::default());
    round_trip(RouteCacheConfig::default());
    round_trip(HealthCheckConfig::default());
    round_trip(SecurityHeadersConfig::default());
    round_trip(UpstreamConfig::new(vec![ServerConfig::new(
        "10.0.0.1:80".parse().unwrap(),
    )]));
}

#[test]
fn value_types_round_trip() {
    for key in [
        HashKey::ClientIp,
        HashKey::Header(http::HeaderName::from_static("x-user")),
        HashKey::Cookie("sid".into()),
    ] {
        round_trip(key);
    }
    for name in [
        AlgorithmName::RoundRobin,
        AlgorithmName::LeastConn,
        AlgorithmName::Hash,
    ] {
        round_trip(name);
    }
    round_trip(VipMode::Interface);
    round_trip(VipMode::Bind);
    round_trip(RuntimeModel::ThreadPerCore);
    round_trip(RateLimitSetting::Off(false));
    round_trip(RateLimitSetting::On(RateLimitConfig {
        rate: 5,
        per: Dur(Duration::from_secs(1)),
        burst: None,
    }));
    for raw in ["10.0.0.0/8", "172.28.1.5", "::1", "fd00::/8", "0.0.0.0/0"] {
        round_trip(Cidr::parse(raw).unwrap());
    }
    for n in [0, 1, 100, 1023, 1024, 16 << 10, 3 << 20, 5 << 30, u64::MAX] {
        round_trip(Size(n));
    }
    for d in [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_millis(100),
        Duration::from_millis(1500),
        Duration::from_secs(30),
        Duration::from_secs(60),
        Duration::from_secs(90),
        Duration::from_secs(12 * 3600),
        Duration::from_micros(1500),
        Duration::from_nanos(1),
        Duration::from_nanos(123_456_789),
    ] {
        round_trip(Dur(d));
    }
}

#[test]
fn values_are_written_in_the_largest_whole_unit() {
    let durations = [
        (Duration::from_millis(100), "100ms"),
        (Duration::from_secs(30), "30s"),
        (Duration::from_secs(60), "1m"),
        (Duration::from_secs(90), "90s"),
        (Duration::from_secs(12 * 3600), "12h"),
        (Duration::ZERO, "0s"),
        (Duration::from_micros(1500), "0.0015s"),
    ];
    for (d, text) in durations {
        assert_eq!(Dur(d).to_string(), text);
    }
    let sizes = [(1 << 20, "1m"), (16 << 10, "16k"), (100, "100"), (0, "0")];
    for (n, text) in sizes {
        assert_eq!(Size(n).to_string(), text);
    }
    assert_eq!(
        Cidr::parse("172.28.1.5").unwrap().to_string(),
        "172.28.1.5/32"
    );
}

#[test]
fn durations() {
    let cases = [
        ("500ms", Some(500)),
        ("5s", Some(5000)),
        ("5", Some(5000)),
        ("1.5s", Some(1500)),
        ("2m", Some(120_000)),
        ("12h", Some(12 * 3_600_000)),
        ("", None),
        ("s", None),
        ("5 parsecs", None),
        ("-1s", None),
    ];
    for (raw, want) in cases {
        assert_eq!(
            parse_duration(raw).ok().map(|d| d.as_millis()),
            want,
            "{raw:?}"
        );
    }
}

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

#[test]
fn checks_without_gateway_internals_happen_here() {
    let base = EVERYTHING.replace(
        "secret = \"a-secret-of-at-least-16-bytes\"",
        "secret = \"short\"",
    );
    let err = Config::parse(&base).unwrap_err().to_string();
    assert!(err.contains("at least 16 bytes"), "{err}");
    let err = Config::parse(&EVERYTHING.replace("rate = 10", "rate = 0"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "config: [defaults]: rate_limit needs rate, per and burst above zero"
    );
    let err = Config::parse(&EVERYTHING.replace("fall = 2", "fall = 0"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "config: upstream app: health_check rise and fall must be at least 1"
    );
    let err = Config::parse(&EVERYTHING.replace("max_streams = 128", "max_streams = 0"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "config: upstream other: max_streams must be at least 1"
    );
    let err = Config::parse(&EVERYTHING.replace("protocol = \"http2\"", "protocol = \"auto\""))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "config: upstream other: protocol = \"auto\" needs tls = true (the servers pick the \
         protocol in the TLS handshake; in plain text set http1 or http2)"
    );
    let auto = EVERYTHING
        .replace("protocol = \"http2\"", "protocol = \"auto\"")
        .replace("tls = false\n", "");
    let config = Config::parse(&auto).unwrap();
    assert_eq!(config.upstreams["other"].protocol, UpstreamProtocol::Auto);
}
