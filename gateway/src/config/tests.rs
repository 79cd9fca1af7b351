use std::time::Duration;

use super::*;

const EXAMPLE: &str = include_str!("../../gateway.example.toml");

const MINIMAL: &str = r#"
[admin]
listen = "127.0.0.1:9900"
[http]
listen = ["127.0.0.1:8080"]
[upstreams.app]
tls = false
servers = [{ address = "127.0.0.1:3000" }]
[[routes]]
prefix = "/"
upstream = "app"
"#;

#[test]
fn the_documented_example_parses() {
    let config = parse(EXAMPLE).unwrap();
    let admin = &config.upstreams["admin"];
    assert_eq!(admin.algorithm, AlgorithmName::RoundRobin);
    assert_eq!(admin.keepalive, 128);
    let weights: Vec<u32> = admin.servers.iter().map(|s| s.weight).collect();
    assert_eq!(weights, [100, 100, 100, 75, 75]);
    assert_eq!(admin.servers[0].fail_timeout, Dur(Duration::from_secs(30)));
    assert_eq!(
        config.upstreams["customer"].algorithm,
        AlgorithmName::LeastConn
    );
    assert_eq!(config.upstreams["customer"].keepalive, 256);
    assert_eq!(config.routes.len(), 7);
    let by_prefix = |p: &str| config.routes.iter().find(|r| r.prefix == p).unwrap();
    assert!(by_prefix("/metrics").internal);
    assert_eq!(by_prefix("/api/v1/notifications").sticky, Some(true));
    assert_eq!(
        by_prefix("/api/v1/internal")
            .policy
            .access
            .as_ref()
            .map(Vec::len),
        Some(3)
    );
    assert!(config.client_ip.proxy_protocol);
    assert!(config.upstreams["customer"].sticky.is_some());
    let ha = config.ha.as_ref().unwrap();
    assert_eq!((ha.priority, ha.vip_mode), (150, VipMode::Interface));
    assert_eq!(ha.vip, Cidr::parse("10.0.1.100/16").unwrap());
    assert_eq!(config.referenced_files().len(), 5);
}

#[test]
fn defaults_follow_nginx() {
    let config = parse(MINIMAL).unwrap();
    let server = &config.upstreams["app"].servers[0];
    assert_eq!(
        (server.weight, server.max_fails, server.max_conns),
        (1, 1, 0)
    );
    assert_eq!(server.fail_timeout.0, Duration::from_secs(10));
    assert!(!server.backup && !server.down);
}

fn error_of(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn invalid_configs_are_refused_with_the_reason() {
    let cases: Vec<(String, &str)> = vec![
        (
            MINIMAL.replace("[admin]", "[admin]\nbogus = 1"),
            "unknown field `bogus`",
        ),
        (
            MINIMAL.replace("tls = false", "tls = false\nweight = 3"),
            "unknown field `weight`",
        ),
        (
            MINIMAL.replace("upstream = \"app\"", "upstream = \"nope\""),
            "unknown upstream \"nope\"",
        ),
        (
            MINIMAL.replace("prefix = \"/\"", "prefix = \"api\""),
            "must start with /",
        ),
        (
            MINIMAL.replace("prefix = \"/\"", "prefix = \"/a//b\""),
            "not in normal form",
        ),
        (
            MINIMAL.replace("127.0.0.1:3000\" }", "127.0.0.1:3000\", weight = 0 }"),
            "weight must be",
        ),
        (
            MINIMAL.replace("127.0.0.1:3000\" }", "127.0.0.1:3000\", backup = true }"),
            "not a backup",
        ),
        (
            MINIMAL.replace(
                "{ address = \"127.0.0.1:3000\" }",
                "{ address = \"127.0.0.1:3000\" }, { address = \"127.0.0.1:3000\" }",
            ),
            "listed twice",
        ),
        (
            MINIMAL.replace("127.0.0.1:3000", "backend:3000"),
            "invalid socket address",
        ),
        (
            MINIMAL.replace("tls = false", "algorithm = \"hash\"\ntls = false"),
            "needs hash_key",
        ),
        (
            MINIMAL.replace(
                "tls = false",
                "algorithm = \"hash\"\nhash_key = \"shoe:size\"\ntls = false",
            ),
            "invalid hash_key",
        ),
        (
            MINIMAL.replace("tls = false", "algorithm = \"fastest\"\ntls = false"),
            "unknown variant `fastest`",
        ),
        (
            MINIMAL.replace("tls = false\n", ""),
            "needs [upstream_tls] ca",
        ),
        (
            MINIMAL.replace("tls = false", "tls = false\ntries = 0"),
            "tries must be at least 1",
        ),
        (
            MINIMAL.replace("tls = false", "tls = false\nread_timeout = \"soon\""),
            "invalid duration",
        ),
        (
            MINIMAL.replace("127.0.0.1:8080", "127.0.0.1:9900"),
            "used twice",
        ),
        (
            MINIMAL.replace("[http]\nlisten = [\"127.0.0.1:8080\"]", ""),
            "at least one of [https] and [http]",
        ),
        (
            format!("{MINIMAL}\n[[routes]]\nprefix = \"/\"\nupstream = \"app\"\n"),
            "defined twice",
        ),
        ("admin = 3".to_string(), "invalid type"),
        ("[admin".to_string(), "config"),
    ];
    for (text, expected) in cases {
        let err = error_of(&text);
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        assert!(!err.contains('\n'), "one line: {err:?}");
    }
}

#[test]
fn route_policies_parse_and_unknown_route_keys_are_refused() {
    let with_policy = MINIMAL.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nrate_limit = { rate = 50, per = \"1m\", burst = 50 }\nclient_max_body_size = \"2m\"\nrate_limit_exempt = [\"10.0.0.0/8\"]\n",
    );
    let config = parse(&with_policy).unwrap();
    let route = &config.routes[0];
    assert_eq!(
        route.policy.rate_limit,
        Some(RateLimitSetting::On(RateLimitConfig {
            rate: 50,
            per: Dur(Duration::from_secs(60)),
            burst: Some(50)
        }))
    );
    assert_eq!(route.policy.client_max_body_size, Some(Size(2 << 20)));
    let off = MINIMAL.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nrate_limit = false\n",
    );
    assert_eq!(
        parse(&off).unwrap().routes[0].policy.rate_limit,
        Some(RateLimitSetting::Off(false))
    );
    let unknown = MINIMAL.replace("upstream = \"app\"\n", "upstream = \"app\"\nbogus = 1\n");
    assert!(
        error_of(&unknown).contains("bogus"),
        "{}",
        error_of(&unknown)
    );
}
