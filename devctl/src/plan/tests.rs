use super::*;

const DEV: &str = include_str!("../../../topology/dev.toml");
const PRODUCTION: &str = include_str!("../../../topology/production.toml");

fn options(runtime: RuntimeKind) -> PlanOptions {
    test_options(runtime)
}

fn plan(text: &str, runtime: RuntimeKind) -> Plan {
    Plan::build(&Topology::parse(text).unwrap(), &options(runtime)).unwrap()
}

fn text(instance: &Instance, path: &str) -> String {
    instance
        .files
        .iter()
        .find_map(|f| match (&f.source, f.path == path) {
            (FileSource::Text(t), true) => Some(t.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{} has no {path}", instance.name))
}

#[test]
fn instances_names_and_addresses() {
    let cases: &[(&str, RuntimeKind, &str, &str, u16)] = &[
        (DEV, RuntimeKind::Docker, "gateway-1", "172.28.1.10", 9900),
        (DEV, RuntimeKind::Docker, "gateway-2", "172.28.1.11", 9900),
        (DEV, RuntimeKind::Docker, "admin-1", "172.28.2.10", 3002),
        (DEV, RuntimeKind::Docker, "admin-5", "172.28.2.14", 3002),
        (DEV, RuntimeKind::Docker, "customer-1", "172.28.3.10", 3001),
        (DEV, RuntimeKind::Docker, "customer-5", "172.28.3.14", 3001),
        (DEV, RuntimeKind::Docker, "edge", "172.28.1.5", 8443),
        (DEV, RuntimeKind::Docker, "prometheus", "172.28.4.10", 9090),
        (DEV, RuntimeKind::Docker, "postgres", "172.28.5.10", 5432),
        (DEV, RuntimeKind::Process, "postgres", "127.0.5.10", 5432),
        (DEV, RuntimeKind::Process, "gateway-1", "127.0.1.10", 9900),
        (DEV, RuntimeKind::Process, "admin-3", "127.0.2.12", 3002),
        (DEV, RuntimeKind::Process, "customer-5", "127.0.3.14", 3001),
        (
            PRODUCTION,
            RuntimeKind::Docker,
            "gateway-2",
            "10.0.1.11",
            9900,
        ),
        (
            PRODUCTION,
            RuntimeKind::Docker,
            "admin-4",
            "10.0.2.13",
            3002,
        ),
        (
            PRODUCTION,
            RuntimeKind::Docker,
            "customer-2",
            "10.0.3.11",
            3001,
        ),
    ];
    for (topology, runtime, name, address, port) in cases {
        let p = plan(topology, *runtime);
        let i = p.instance(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(i.address.to_string(), *address, "{name}");
        assert_eq!(i.port, *port, "{name}");
    }
    let p = plan(DEV, RuntimeKind::Docker);
    let names: Vec<&str> = p.instances.iter().map(|i| i.name.as_str()).collect();
    // Gateways, the database, backends, edge, Prometheus, Grafana, Alertmanager.
    assert_eq!(names.len(), 2 + 1 + 5 + 5 + 4);
    assert_eq!(
        &names[..4],
        &["gateway-1", "gateway-2", "postgres", "admin-1"]
    );
    // Production's database is external: no instance.
    assert!(plan(PRODUCTION, RuntimeKind::Docker)
        .instance("postgres")
        .is_none());
    assert_eq!(p.vip.to_string(), "172.28.1.100");
    assert_eq!(
        plan(DEV, RuntimeKind::Process).vip.to_string(),
        "127.0.1.100"
    );
    assert_eq!(p.network.subnet, "172.28.0.0/16");
    assert_eq!(p.network.gateway.to_string(), "172.28.0.1");
    // The backends keep their data in the database; only it has a volume.
    assert_eq!(p.volumes, vec!["insightserenity-dev-postgres-data"]);
}

#[test]
fn backend_environment_and_files() {
    let cases: &[(RuntimeKind, &str, &str, &str)] = &[
        (
            RuntimeKind::Docker,
            "0.0.0.0",
            "/etc/insightserenity/tls/server.crt",
            "/data",
        ),
        (
            RuntimeKind::Process,
            "127.0.2.11",
            "/state/run/admin-2/tls/server.crt",
            "/state/data/admin",
        ),
    ];
    for (runtime, host, cert, data) in cases {
        let p = plan(DEV, *runtime);
        let i = p.instance("admin-2").unwrap();
        let env: BTreeMap<&str, &str> = i
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env["HOST"], *host);
        assert_eq!(env["PORT"], "3002");
        assert_eq!(env["TLS_CERT"], *cert);
        assert!(env["CLIENT_CA"].ends_with("tls/ca.crt"));
        assert_eq!(env["DATA_DIR"], *data);
        assert_eq!(env["INSTANCE_ID"], "admin-2");
        let db_host = if *runtime == RuntimeKind::Docker {
            "172.28.5.10"
        } else {
            "127.0.5.10"
        };
        assert_eq!(
            env["DATABASE_URL"],
            format!("postgres://insightserenity@{db_host}:5432/admin")
        );
        assert!(env["DATABASE_CA"].ends_with("tls/ca.crt"));
        assert!(env["DATABASE_PASSWORD_FILE"].ends_with("database/password"));
        let password = i
            .files
            .iter()
            .find(|f| f.path == "database/password")
            .unwrap();
        assert_eq!(
            password.source,
            FileSource::Secret("test-database-password".into())
        );
        // The secret never shows in the plan's JSON.
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("test-database-password"));
        assert_eq!(
            i.healthcheck.as_deref(),
            Some(&["healthcheck".to_string()][..])
        );
        assert_eq!(i.image, "insightserenity/admin-server:0.1.0");
    }
}

#[test]
fn certificates_carry_the_right_names() {
    let p = plan(DEV, RuntimeKind::Docker);
    let sans = |name: &str| {
        p.certificates
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cert {name}"))
            .sans
            .clone()
    };
    let cases: &[(&str, &[&str])] = &[
        (
            "gateway-1",
            &[
                "gateway-1",
                "insightserenity-dev-gateway-1",
                "gateway",
                "172.28.1.10",
                "172.28.1.100",
                "localhost",
                "127.0.0.1",
                "api.insightserenity.com",
            ],
        ),
        (
            "admin-4",
            &[
                "admin-4",
                "insightserenity-dev-admin-4",
                "admin",
                "172.28.2.13",
                "localhost",
            ],
        ),
        (
            "customer-1",
            &["customer", "172.28.3.10", "api.insightserenity.com"],
        ),
        ("gateway-client", &["gateway-client"]),
        ("prometheus", &["prometheus", "172.28.4.10"]),
        ("postgres", &["postgres", "172.28.5.10"]),
    ];
    for (name, expected) in cases {
        let got = sans(name);
        for san in *expected {
            assert!(got.iter().any(|g| g == san), "{name} lacks {san}: {got:?}");
        }
    }
    assert!(!sans("admin-4").contains(&"172.28.1.100".to_string()));
    assert_eq!(p.certificates.len(), 10 + 2 + 1 + 1 + 1);
}

/// A pool's `protocol` reaches its upstream in the gateway config; the default stays HTTP/1.1.
#[test]
fn a_pool_protocol_reaches_the_gateway_config() {
    use gateway_config::UpstreamProtocol;
    // The dev topology speaks HTTP/2 to both pools; the customer pool goes back to HTTP/1.1.
    let topology = DEV.replacen(
        "keepalive = 256\nkeepalive_timeout = \"60s\"\nprotocol = \"http2\"\n",
        "keepalive = 256\nkeepalive_timeout = \"60s\"\nprotocol = \"http1\"\n",
        1,
    );
    assert_ne!(
        topology, DEV,
        "the dev topology's customer pool has keepalive = 256 and protocol = \"http2\""
    );
    for (text_of, customer) in [
        (DEV, UpstreamProtocol::Http2),
        (topology.as_str(), UpstreamProtocol::Http1),
    ] {
        let p = plan(text_of, RuntimeKind::Docker);
        for g in p.gateways() {
            let parsed = ::gateway::config::parse(&text(g, "gateway.toml")).unwrap();
            assert_eq!(parsed.upstreams["customer"].protocol, customer);
            assert_eq!(parsed.upstreams["admin"].protocol, UpstreamProtocol::Http2);
            // HTTP/2: the gateway opens another connection once the backends' own stream
            // limit (their SETTINGS) is reached; the config sets no other.
            assert_eq!(parsed.upstreams["admin"].max_streams, None);
            assert_eq!(parsed.upstreams["customer"].max_streams, None);
        }
    }
}

/// The rendered configs parse with the gateway's own parser (what `gateway check` runs).
#[test]
fn rendered_gateway_configs_are_valid_gateway_configs() {
    for (topology, runtime) in [
        (DEV, RuntimeKind::Docker),
        (DEV, RuntimeKind::Process),
        (PRODUCTION, RuntimeKind::Docker),
    ] {
        let p = plan(topology, runtime);
        for g in p.gateways() {
            let config = text(g, "gateway.toml");
            let parsed = ::gateway::config::parse(&config)
                .unwrap_or_else(|e| panic!("{} ({runtime:?}): {e}\n{config}", g.name));
            assert_eq!(parsed.upstreams["admin"].servers.len(), 5);
            assert_eq!(parsed.upstreams["customer"].servers.len(), 5);
            assert_eq!(parsed.upstreams["admin"].keepalive, 128);
            assert_eq!(parsed.upstreams["customer"].keepalive, 256);
            assert!(parsed.upstreams["customer"].sticky.is_some());
            let weights: Vec<u32> = parsed.upstreams["admin"]
                .servers
                .iter()
                .map(|s| s.weight)
                .collect();
            assert_eq!(weights, vec![100, 100, 100, 75, 75]);
            // PROXY v2 from the edge where there is one; production has none (DNS → VIP).
            assert_eq!(parsed.client_ip.proxy_protocol, topology == DEV);
            // The topology's five routes and its three sealed internal paths.
            assert_eq!(parsed.routes.len(), 8);
            // The API routes are checked at the edge, for the right audience.
            let audience = |prefix: &str| {
                parsed
                    .routes
                    .iter()
                    .find(|r| r.prefix == prefix)
                    .and_then(|r| r.auth_jwt.as_ref())
                    .map(|a| a.audience.clone())
            };
            assert_eq!(audience("/api/v1/admin").as_deref(), Some("admin-server"));
            assert_eq!(audience("/api/v1").as_deref(), Some("customer-services"));
            assert_eq!(audience("/static/"), None);
            assert!(parsed.auth_jwt.is_some());
            let internal: Vec<&str> = parsed
                .routes
                .iter()
                .filter(|r| r.internal)
                .map(|r| r.prefix.as_str())
                .collect();
            assert_eq!(internal, ["/health", "/ready", "/metrics"]);
            // No policy holes: routes without their own limit inherit the default one.
            assert!(matches!(
                parsed.defaults.rate_limit,
                Some(gateway_config::RateLimitSetting::On(_))
            ));
            assert_eq!(parsed.limits.max_connections_per_ip, 256);
            let ha = parsed.ha.as_ref().expect("[ha]");
            assert_eq!(ha.name, g.name);
            assert_eq!(Some(ha.priority), g.priority);
            assert_eq!(ha.peers.len(), 1);
            assert!(parsed.upstream_tls.client_cert.is_some());
        }
    }
}

#[test]
fn gateway_config_details() {
    let cases: &[(&str, RuntimeKind, &str, &[&str])] = &[
        (
            DEV,
            RuntimeKind::Docker,
            "gateway-1",
            &[
                "listen = [\"0.0.0.0:443\"]",
                "listen = \"0.0.0.0:9900\"",
                "trusted_proxies = [\"172.28.1.5/32\"]",
                "address = \"172.28.2.14:3002\"\nweight = 75",
                "[routes.rate_limit]\nrate = 50\nper = \"1m\"\nburst = 50\n",
                "[routes.rate_limit]\nrate = 100\nper = \"1m\"\nburst = 100\n",
                "priority = 150",
                "peers = [\"172.28.1.11:5405\"]",
                "vip = \"172.28.1.100/16\"",
                "vip_mode = \"interface\"",
                "https_port = 8443",
                "algorithm = \"least_conn\"",
                "ca = \"/etc/insightserenity/tls/ca.crt\"",
            ],
        ),
        (
            DEV,
            RuntimeKind::Docker,
            "gateway-2",
            &[
                "priority = 100",
                "peers = [\"172.28.1.10:5405\"]",
                "address = \"172.28.1.11\"",
            ],
        ),
        (
            DEV,
            RuntimeKind::Process,
            "gateway-1",
            &[
                "listen = [\"127.0.1.100:8443\"]",
                "listen = [\"127.0.1.100:8080\"]",
                "listen = \"127.0.1.10:9900\"",
                "trusted_proxies = [\"127.0.0.1/32\"]",
                "vip_mode = \"bind\"",
                "address = \"127.0.2.10:3002\"",
                "cert = \"/state/run/gateway-1/tls/server.crt\"",
            ],
        ),
        (
            PRODUCTION,
            RuntimeKind::Docker,
            "gateway-1",
            &["https_port = 443", "vip = \"10.0.1.100/16\""],
        ),
    ];
    // No edge in production: nobody may vouch for client addresses, and no edge instance.
    let production = plan(PRODUCTION, RuntimeKind::Docker);
    assert!(production.instance("edge").is_none());
    let config = text(production.instance("gateway-1").unwrap(), "gateway.toml");
    assert!(!config.contains("trusted_proxies"), "{config}");
    assert_eq!(production.endpoints.https, "https://10.0.1.100:443");
    for (topology, runtime, name, needles) in cases {
        let p = plan(topology, *runtime);
        let config = text(p.instance(name).unwrap(), "gateway.toml");
        for needle in *needles {
            assert!(
                config.contains(needle),
                "{name} {runtime:?} lacks {needle:?}:\n{config}"
            );
        }
    }
    // Both gateways share the secrets (sticky pins and adverts survive a failover).
    let p = plan(DEV, RuntimeKind::Docker);
    for g in p.gateways() {
        let config = text(g, "gateway.toml");
        assert!(config.contains("test-ha-secret-of-32-bytes-xxxxxx"));
        assert!(config.contains("test-sticky-secret-of-32-bytes-xx"));
    }
}

#[test]
fn edge_forwards_to_the_vip_with_proxy_protocol() {
    let cases: &[(RuntimeKind, &[&str], usize)] = &[
        (
            RuntimeKind::Docker,
            &[
                "forward",
                "--map",
                "0.0.0.0:8443=172.28.1.100:443",
                "--map",
                "0.0.0.0:8080=172.28.1.100:80",
                "--proxy-protocol",
            ],
            2,
        ),
        (
            RuntimeKind::Process,
            &[
                "forward",
                "--map",
                "127.0.0.1:8443=127.0.1.100:8443",
                "--map",
                "127.0.0.1:8080=127.0.1.100:8080",
                "--proxy-protocol",
            ],
            0,
        ),
    ];
    for (runtime, args, published) in cases {
        let p = plan(DEV, *runtime);
        let edge = p.instance("edge").unwrap();
        assert_eq!(edge.args, *args);
        assert_eq!(edge.publish.len(), *published);
    }
    let p = plan(DEV, RuntimeKind::Docker);
    assert_eq!(p.endpoints.https, "https://127.0.0.1:8443");
    assert_eq!(p.endpoints.http, "http://127.0.0.1:8080");
    assert_eq!(p.endpoints.prometheus, "http://127.0.0.1:9090");
    assert_eq!(
        p.endpoints.gateway_admin,
        vec![
            ("gateway-1".to_string(), "http://127.0.0.1:9901".to_string()),
            ("gateway-2".to_string(), "http://127.0.0.1:9902".to_string())
        ]
    );
    let g = p.instance("gateway-1").unwrap();
    assert_eq!(g.cap_add, vec!["NET_ADMIN", "NET_RAW"]);
    assert_eq!(
        g.sysctls,
        vec![(
            "net.ipv4.conf.all.arp_announce".to_string(),
            "2".to_string()
        )],
        "ARP requests never name the VIP"
    );
    let process = plan(DEV, RuntimeKind::Process);
    let g = process.instance("gateway-1").unwrap();
    assert!(g.cap_add.is_empty());
    assert!(g.sysctls.is_empty());
}

#[test]
fn scale_adds_at_the_next_addresses_and_everything_follows() {
    let t = Topology::parse(DEV).unwrap();
    type Added<'a> = Option<(&'a str, &'a str)>;
    let cases: &[(&str, usize, Added)] = &[
        ("admin", 6, Some(("admin-6", "172.28.2.15"))),
        ("customer", 7, Some(("customer-7", "172.28.3.16"))),
        ("admin", 1, None),
    ];
    for (pool, n, added) in cases {
        let mut o = options(RuntimeKind::Docker);
        o.scale.insert(pool.to_string(), *n);
        let p = Plan::build(&t, &o).unwrap();
        assert_eq!(p.pools[*pool], *n);
        assert_eq!(p.instances.iter().filter(|i| i.role == *pool).count(), *n);
        if let Some((name, address)) = added {
            assert_eq!(p.instance(name).unwrap().address.to_string(), *address);
            for g in p.gateways() {
                let config = text(g, "gateway.toml");
                assert!(config.contains(address), "{} lacks {address}", g.name);
                ::gateway::config::parse(&config).unwrap();
            }
            let targets = &p
                .targets
                .iter()
                .find(|(f, _)| *f == format!("backend-{pool}.json"))
                .unwrap()
                .1;
            assert!(targets.contains(address) && targets.contains(name));
            // Instances past the weights list take the topology's scale_weight (100).
            if *pool == "admin" {
                let config = ::gateway::config::parse(&text(
                    p.instance("gateway-1").unwrap(),
                    "gateway.toml",
                ))
                .unwrap();
                let added = config.upstreams["admin"]
                    .servers
                    .iter()
                    .find(|s| s.address.to_string() == "172.28.2.15:3002")
                    .unwrap();
                assert_eq!(added.weight, 100);
            }
        }
    }
    // None, too many, far too many, an unknown pool.
    let bad: &[(&str, usize)] = &[("admin", 0), ("admin", 201), ("admin", 500), ("nope", 2)];
    for (pool, n) in bad {
        let mut o = options(RuntimeKind::Docker);
        o.scale.insert(pool.to_string(), *n);
        assert!(Plan::build(&t, &o).is_err(), "{pool} {n}");
    }
}

#[test]
fn prometheus_targets_name_every_instance() {
    let p = plan(DEV, RuntimeKind::Docker);
    let files: BTreeMap<&str, serde_json::Value> = p
        .targets
        .iter()
        .map(|(f, t)| (f.as_str(), serde_json::from_str(t).unwrap()))
        .collect();
    assert_eq!(
        files.keys().copied().collect::<Vec<_>>(),
        vec![
            "alertmanager.json",
            "backend-admin.json",
            "backend-customer.json",
            "gateway.json",
            "prometheus.json"
        ]
    );
    let cases: &[(&str, usize, &str, &str)] = &[
        ("gateway.json", 0, "172.28.1.10:9900", "gateway-1"),
        ("backend-admin.json", 4, "172.28.2.14:3002", "admin-5"),
        ("backend-customer.json", 0, "172.28.3.10:3001", "customer-1"),
        ("prometheus.json", 0, "172.28.4.10:9090", "prometheus"),
        ("alertmanager.json", 0, "172.28.4.12:9093", "alertmanager"),
    ];
    for (file, index, target, instance) in cases {
        let entry = &files[file][index];
        assert_eq!(entry["targets"][0], *target);
        assert_eq!(entry["labels"]["instance"], *instance);
    }
}

/// `compose/docker-compose.yml` is what `devctl compose` renders from `topology/dev.toml`.
#[test]
fn committed_compose_file_matches_the_topology() {
    let p = plan(DEV, RuntimeKind::Docker);
    let rendered = crate::compose::render(&p, "topology/dev.toml");
    let committed = include_str!("../../../compose/docker-compose.yml");
    assert!(
        rendered == committed,
        "compose/docker-compose.yml is out of date: run `cargo run -p devctl -- compose`"
    );
    for needle in [
        "ipv4_address: \"172.28.1.10\"",
        "ipv4_address: \"172.28.2.14\"",
        "ip_range: \"172.28.200.0/21\"",
        "- \"127.0.0.1:8443:8443\"",
        "- \"NET_ADMIN\"",
        "restart: \"on-failure\"",
        "- \"/usr/local/bin/admin-server\"",
        "- \"postgres-data:/var/lib/postgresql/data\"",
        "condition: \"service_healthy\"",
        "DATABASE_URL: \"postgres://insightserenity@172.28.5.10:5432/customer\"",
    ] {
        assert!(rendered.contains(needle), "compose lacks {needle}");
    }
}

#[test]
fn the_plan_is_deterministic() {
    let a = serde_json::to_string(&plan(DEV, RuntimeKind::Docker)).unwrap();
    let b = serde_json::to_string(&plan(DEV, RuntimeKind::Docker)).unwrap();
    assert_eq!(a, b);
}
