//! Renders one gateway's TOML config (the format of `gateway/gateway.example.toml`) from the
//! topology and the plan's addresses: [`build`] makes a [`gateway_config::Config`] value,
//! [`render`] serializes it. Pure; a test parses the text with the gateway's own parser.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use gateway_config::{
    AcmeConfig, AdminConfig, AuthJwtConfig, Cidr, ClientIpConfig, Config, HaConfig, HttpConfig,
    HttpsConfig, LimitsConfig, PolicyConfig, RateLimitSetting, RouteAuthJwt, RouteCacheConfig,
    RouteConfig, RuntimeConfig, ServerConfig, StickyConfig, UpstreamConfig, UpstreamTlsConfig,
};

use crate::plan::{GatewayView, Net, RuntimeKind, Secrets};
use crate::topology::{Pool, Topology, VipMode};

pub struct Server {
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
}

pub struct Upstream<'a> {
    pub pool: &'a Pool,
    pub servers: Vec<Server>,
}

pub struct Input<'a> {
    pub topology: &'a Topology,
    pub net: &'a Net,
    pub gateway: &'a GatewayView,
    pub upstreams: &'a [Upstream<'a>],
    pub vip: Ipv4Addr,
    /// Where the edge's connections come from (trusted for PROXY v2).
    /// Where the edge forwarder's connections come from (None: no edge).
    pub edge_source: Option<Ipv4Addr>,
    pub secrets: &'a Secrets,
    /// The pair's shared ACME storage directory (used when the topology has `[tls] acme`).
    pub acme_storage: &'a str,
}

/// Where a drill's ACME CA bundle goes in a gateway's config directory.
pub const ACME_CA_FILE: &str = "tls/acme-ca.crt";

fn path(dir: &str, rel: &str) -> PathBuf {
    PathBuf::from(format!("{}/{rel}", dir.trim_end_matches('/')))
}

fn socket(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// The gateway config for `input.gateway`.
pub fn build(input: &Input<'_>) -> Config {
    let t = input.topology;
    let g = &t.gateways;
    let net = input.net;
    let gw = input.gateway;
    let docker = net.runtime == RuntimeKind::Docker;
    // In a container the gateway listens on every address (its own and, in interface mode,
    // the VIP once it holds it); on loopback it binds the VIP, only while master.
    let vip_mode = if docker { g.vip_mode } else { VipMode::Bind };
    let listen_ip = match vip_mode {
        VipMode::Interface => Ipv4Addr::UNSPECIFIED,
        VipMode::Bind => input.vip,
    };
    let admin_ip = if docker {
        Ipv4Addr::UNSPECIFIED
    } else {
        gw.address
    };
    let upstreams = input
        .upstreams
        .iter()
        .map(|up| (up.pool.name.clone(), upstream(up, input.secrets)))
        .collect();
    let routes = t
        .routes
        .iter()
        .map(|route| RouteConfig {
            prefix: route.prefix.clone(),
            host: None,
            upstream: route.pool.clone(),
            read_timeout: route.read_timeout,
            policy: PolicyConfig {
                rate_limit: route.rate_limit,
                ..PolicyConfig::default()
            },
            cache: route.cache.then(RouteCacheConfig::default),
            internal: false,
            sticky: None,
            auth_jwt: route.auth.then(|| RouteAuthJwt {
                audience: t
                    .pool(&route.pool)
                    .map(|p| p.binary.clone())
                    .unwrap_or_default(),
            }),
        })
        .chain(internal_routes(t))
        .collect();
    Config {
        runtime: RuntimeConfig {
            worker_threads: g.worker_threads,
            shutdown_timeout: Some(gateway_config::Dur(std::time::Duration::from_secs(30))),
            // devctl reloads explicitly (SIGHUP after an upload) so a half-written file is
            // never read.
            watch_config: Some(false),
            ..RuntimeConfig::default()
        },
        admin: AdminConfig {
            listen: socket(admin_ip, g.admin_port),
        },
        https: Some(match &t.tls.acme {
            None => HttpsConfig {
                listen: vec![socket(listen_ip, net.port(g.https_port))],
                cert: Some(path(&gw.config_dir, "tls/server.crt")),
                key: Some(path(&gw.config_dir, "tls/server.key")),
                acme: None,
                ocsp_stapling: true,
            },
            // The public names from the ACME CA, ordered by the VIP holder into storage both
            // gateways share.
            Some(acme) => HttpsConfig {
                listen: vec![socket(listen_ip, net.port(g.https_port))],
                cert: None,
                key: None,
                acme: Some(AcmeConfig {
                    ca: acme
                        .ca_pem
                        .as_ref()
                        .map(|_| path(&gw.config_dir, ACME_CA_FILE)),
                    ..AcmeConfig::new(
                        acme.directory.clone(),
                        acme.contact.clone(),
                        t.tls.names.clone(),
                        PathBuf::from(input.acme_storage),
                    )
                }),
                ocsp_stapling: true,
            },
        }),
        http: Some(HttpConfig {
            listen: vec![socket(listen_ip, net.port(g.http_port))],
            // Redirects name the port clients use: the edge's.
            https_port: t.edge.as_ref().map_or(g.https_port, |e| e.https_port),
            acme_challenge_dir: None,
        }),
        upstream_tls: UpstreamTlsConfig {
            ca: Some(path(&gw.config_dir, "tls/ca.crt")),
            client_cert: Some(path(&gw.config_dir, "tls/client.crt")),
            client_key: Some(path(&gw.config_dir, "tls/client.key")),
        },
        upstreams,
        routes,
        // Only the edge forwarder may vouch for client addresses (PROXY v2).
        client_ip: ClientIpConfig {
            trusted_proxies: input
                .edge_source
                .map(|addr| Cidr {
                    addr: addr.into(),
                    prefix: 32,
                })
                .into_iter()
                .collect(),
            proxy_protocol: t.edge.as_ref().is_some_and(|e| e.proxy_protocol),
        },
        limits: LimitsConfig {
            max_connections_per_ip: t.defaults.max_connections_per_ip,
            ..LimitsConfig::default()
        },
        defaults: PolicyConfig {
            rate_limit: t.defaults.rate_limit.map(RateLimitSetting::On),
            ..PolicyConfig::default()
        },
        cache: Default::default(),
        auth_jwt: t.routes.iter().any(|r| r.auth).then(|| AuthJwtConfig {
            jwks: path(&gw.config_dir, "auth/jwks.json"),
        }),
        ha: Some(HaConfig {
            name: gw.name.clone(),
            priority: gw.priority,
            address: gw.address.into(),
            port: g.advert_port,
            peers: gw.peers.iter().map(|p| socket(*p, g.advert_port)).collect(),
            advert_interval: g.advert_interval,
            preempt: g.preempt,
            preempt_delay: g.preempt_delay,
            secret: input.secrets.ha.clone(),
            vip: Cidr {
                addr: input.vip.into(),
                prefix: if docker { g.vip_prefix } else { 8 },
            },
            vip_mode,
            interface: None,
            track_penalty: g.track_penalty,
        }),
        dns: Default::default(),
    }
}

fn upstream(up: &Upstream<'_>, secrets: &Secrets) -> UpstreamConfig {
    let p = up.pool;
    let servers = up
        .servers
        .iter()
        .map(|s| ServerConfig {
            weight: s.weight,
            max_fails: p.max_fails,
            fail_timeout: p.fail_timeout,
            max_conns: p.max_conns,
            ..ServerConfig::new(socket(s.address, s.port))
        })
        .collect();
    let mut config = UpstreamConfig::new(servers);
    config.algorithm = p.algorithm;
    config.keepalive = p.keepalive;
    config.keepalive_timeout = p.keepalive_timeout.unwrap_or(config.keepalive_timeout);
    config.connect_timeout = p.connect_timeout.unwrap_or(config.connect_timeout);
    config.read_timeout = p.read_timeout.unwrap_or(config.read_timeout);
    config.tries = p.tries;
    config.protocol = p.protocol;
    config.health_check = Some(p.health_check.clone());
    config.sticky = p.sticky.as_ref().map(|sticky| StickyConfig {
        cookie: sticky.cookie.clone(),
        secret: secrets.sticky.clone(),
        max_age: Some(sticky.max_age),
    });
    config
}

/// The gateway's config file: [`build`] serialized, under a do-not-edit header.
pub fn render(input: &Input<'_>) -> String {
    let header = format!(
        "# {name}: rendered by devctl from the {deployment} topology. Do not edit: change the\n\
         # topology and run `devctl up` (or `devctl render`).\n\n",
        name = input.gateway.name,
        deployment = input.topology.name
    );
    // A `Config` built above always serializes (string keys, UTF-8 paths, small numbers);
    // were it ever to fail, the file says why and the gateway refuses it (no [admin]).
    match toml::to_string(&build(input)) {
        Ok(body) => header + &body,
        Err(e) => format!("{header}# devctl could not serialize this config: {e}\n"),
    }
}

/// The backends' own endpoints, sealed at the edge: one internal route per path (the gateway
/// answers 404 and never forwards it, so its upstream is only nominal: the catch-all's).
fn internal_routes(t: &Topology) -> impl Iterator<Item = RouteConfig> + '_ {
    let owner = t
        .routes
        .iter()
        .find(|r| r.prefix == "/")
        .or(t.routes.first());
    t.defaults.internal_paths.iter().filter_map(move |path| {
        let owner = owner?;
        Some(RouteConfig {
            prefix: path.clone(),
            host: None,
            upstream: owner.pool.clone(),
            read_timeout: None,
            policy: PolicyConfig::default(),
            cache: None,
            internal: true,
            sticky: None,
            auth_jwt: None,
        })
    })
}
