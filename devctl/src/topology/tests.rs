use super::*;

const DEV: &str = include_str!("../../../topology/dev.toml");
const PRODUCTION: &str = include_str!("../../../topology/production.toml");

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
            "advert_interval = \"50ms\"",
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
