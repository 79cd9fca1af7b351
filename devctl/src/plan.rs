//! The plan: everything a runtime needs to run a topology, as pure data. Instances with their
//! addresses, commands, environment and files; the certificates to issue; the gateway configs;
//! Prometheus's target files. No I/O: certificates are named here and issued by the caller.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::gateway_toml;
use crate::topology::{Ipv4Net, Topology, VipMode};

/// Label keys devctl puts on every object it creates (and the only ones `down` removes).
pub const LABEL_MANAGED: &str = "io.insightserenity.managed";
pub const LABEL_DEPLOYMENT: &str = "io.insightserenity.deployment";
pub const LABEL_ROLE: &str = "io.insightserenity.role";
pub const LABEL_INSTANCE: &str = "io.insightserenity.instance";
/// Hash of what needs a new container when it changes (image, command, env, certificates).
pub const LABEL_SPEC_HASH: &str = "io.insightserenity.spec-hash";
/// Hash of the files a running instance reloads in place (the gateway config).
pub const LABEL_CONFIG_HASH: &str = "io.insightserenity.config-hash";

/// Where our binaries live inside their images.
pub const BIN_DIR: &str = "/usr/local/bin";
/// Where an instance's config and certificates are uploaded inside its container.
pub const CONFIG_DIR: &str = "/etc/insightserenity";
/// Non-root user of our scratch images.
pub const IMAGE_UID: u32 = 65532;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    Docker,
    Process,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Process => "process",
        }
    }
}

/// Shared secrets the gateways need (made once, kept in the state dir).
#[derive(Debug, Clone)]
pub struct Secrets {
    pub ha: String,
    pub sticky: String,
}

#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub runtime: RuntimeKind,
    /// Instance counts set by `devctl scale`, over the topology's.
    pub scale: BTreeMap<String, usize>,
    pub secrets: Secrets,
    /// Process runtime: instance files go to `<state_dir>/run/<name>/`, data to
    /// `<state_dir>/data/<pool>/`. Unused by the Docker runtime.
    pub state_dir: PathBuf,
    /// Image tag.
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Gateway,
    Backend,
    Edge,
    Prometheus,
    Grafana,
}

/// Where a file's bytes come from: text rendered here, or a certificate the caller issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FileSource {
    Text(String),
    CaCert,
    Cert(String),
    Key(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedFile {
    /// Relative to the instance's `config_dir`.
    pub path: String,
    pub source: FileSource,
    /// Reloaded in place (gateway config): a change is uploaded and reloaded, not replaced.
    pub reloadable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Publish {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// `gateway-1`, `admin-3`, `edge`, `prometheus`.
    pub name: String,
    pub kind: Kind,
    /// `gateway`, the pool name, `edge`, `prometheus`, `grafana`.
    pub role: String,
    pub container_name: String,
    pub address: Ipv4Addr,
    /// The port shown in status (HTTPS for backends, admin for gateways).
    pub port: u16,
    /// Image reference (ours: `insightserenity/<binary>:<version>`).
    pub image: String,
    /// The program: one of our binaries, or `prometheus` / `grafana`.
    pub binary: String,
    /// Arguments after the program.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Absolute directory the files go to (in the container, or on the host for processes).
    pub config_dir: String,
    pub files: Vec<PlannedFile>,
    /// Arguments of the health probe (run as `<binary> <args>`); None: no probe.
    pub healthcheck: Option<Vec<String>>,
    pub cap_add: Vec<String>,
    pub publish: Vec<Publish>,
    /// Named volume and mount point (the pool's shared SQLite directory).
    pub volume: Option<(String, String)>,
    pub aliases: Vec<String>,
    /// VRRP priority (gateways).
    pub priority: Option<u8>,
    /// User to run as instead of the image's (gateways in interface mode: root, because
    /// Docker gives a non-root user no effective capabilities, NET_ADMIN included).
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSpec {
    /// File stem in the state dir's `certs/`.
    pub name: String,
    pub common_name: String,
    pub sans: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkPlan {
    pub name: String,
    pub subnet: String,
    pub ip_range: String,
    pub gateway: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    pub https: String,
    pub http: String,
    pub prometheus: String,
    pub grafana: String,
    /// Where devctl reads each gateway's admin port (`/-/ha`, `/-/upstreams`, reload).
    pub gateway_admin: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub runtime: RuntimeKind,
    pub deployment: String,
    pub project: String,
    pub version: String,
    pub network: NetworkPlan,
    pub volumes: Vec<String>,
    pub instances: Vec<Instance>,
    pub certificates: Vec<CertSpec>,
    /// Prometheus file_sd files: (file name, JSON).
    pub targets: Vec<(String, String)>,
    pub vip: Ipv4Addr,
    pub endpoints: Endpoints,
    /// Instance count of each pool.
    pub pools: BTreeMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    #[error(
        "pool {pool}: {count} instances do not fit (1..=200, addresses in the subnet, no clash)"
    )]
    BadScale { pool: String, count: usize },
}

/// The static Prometheus and Grafana files shipped in this repository (and in the binary).
pub mod assets {
    pub const PROMETHEUS_YML: &str = include_str!("../../prometheus/prometheus.yml");
    pub const PROMETHEUS_RULES: &[(&str, &str)] = &[(
        "platform.yml",
        include_str!("../../prometheus/rules/platform.yml"),
    )];
    pub const GRAFANA_DATASOURCE: &str =
        include_str!("../../grafana/provisioning/datasources/prometheus.yml");
    pub const GRAFANA_PROVIDER: &str =
        include_str!("../../grafana/provisioning/dashboards/provider.yml");
    pub const GRAFANA_DASHBOARDS: &[(&str, &str)] = &[
        (
            "gateway-overview.json",
            include_str!("../../grafana/dashboards/gateway-overview.json"),
        ),
        (
            "backends.json",
            include_str!("../../grafana/dashboards/backends.json"),
        ),
    ];
}

/// Maps a topology address into the loopback range for the process runtime: the last two
/// octets are kept (172.28.2.10 → 127.0.2.10), so the numbering reads the same.
pub fn loopback(addr: Ipv4Addr) -> Ipv4Addr {
    let [_, _, c, d] = addr.octets();
    Ipv4Addr::new(127, 0, c, d)
}

/// Privileged ports move up by 8000 in the process runtime (443 → 8443, 80 → 8080).
pub fn unprivileged(port: u16) -> u16 {
    if port < 1024 {
        port + 8000
    } else {
        port
    }
}

fn join(dir: &str, rel: &str) -> String {
    if rel.is_empty() {
        dir.to_string()
    } else {
        format!("{}/{rel}", dir.trim_end_matches('/'))
    }
}

fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The plan's view of one gateway, as the config renderer needs it.
#[derive(Debug, Clone)]
pub struct GatewayView {
    pub name: String,
    pub address: Ipv4Addr,
    pub priority: u8,
    pub peers: Vec<Ipv4Addr>,
    pub config_dir: String,
}

/// Addresses and ports after the runtime's mapping.
#[derive(Debug, Clone)]
pub struct Net {
    pub runtime: RuntimeKind,
}

impl Net {
    pub fn addr(&self, a: Ipv4Addr) -> Ipv4Addr {
        match self.runtime {
            RuntimeKind::Docker => a,
            RuntimeKind::Process => loopback(a),
        }
    }
    pub fn port(&self, p: u16) -> u16 {
        match self.runtime {
            RuntimeKind::Docker => p,
            RuntimeKind::Process => unprivileged(p),
        }
    }
}

impl Plan {
    pub fn build(topology: &Topology, options: &PlanOptions) -> Result<Plan, PlanError> {
        let net = Net {
            runtime: options.runtime,
        };
        let t = topology;
        let docker = options.runtime == RuntimeKind::Docker;
        let prefix = format!("{}-{}", t.project, t.name);
        let container = |name: &str| format!("{prefix}-{name}");
        let image = |binary: &str| format!("{}/{binary}:{}", t.project, options.version);
        let config_dir = |name: &str| -> String {
            if docker {
                CONFIG_DIR.to_string()
            } else {
                path_text(&options.state_dir.join("run").join(name))
            }
        };

        // Pool sizes: topology, then `scale`.
        let mut pools = BTreeMap::new();
        for pool in &t.pools {
            pools.insert(pool.name.clone(), pool.instances);
        }
        for (name, count) in &options.scale {
            if !pools.contains_key(name) {
                return Err(PlanError::UnknownPool(name.clone()));
            }
            pools.insert(name.clone(), *count);
        }
        check_scale(t, &pools)?;

        let vip = net.addr(t.gateways.vip);
        let tls_names: Vec<String> = t.tls.names.clone();
        let mut instances = Vec::new();
        let mut certificates = Vec::new();

        // Backends.
        let mut upstreams = Vec::new();
        for pool in &t.pools {
            let count = pools.get(&pool.name).copied().unwrap_or(pool.instances);
            let port = pool.port;
            let mut servers = Vec::new();
            for (i, addr) in Topology::pool_addresses(pool, count)
                .into_iter()
                .enumerate()
            {
                let name = format!("{}-{}", pool.name, i + 1);
                let address = net.addr(addr);
                let dir = config_dir(&name);
                let data_dir = if docker {
                    "/data".to_string()
                } else {
                    path_text(&options.state_dir.join("data").join(&pool.name))
                };
                let weight = pool
                    .weights
                    .get(i)
                    .or(pool.weights.last())
                    .copied()
                    .unwrap_or(1);
                servers.push(gateway_toml::Server {
                    address,
                    port,
                    weight,
                });
                let sans = leaf_sans(
                    &[&name, &container(&name), &pool.name],
                    address,
                    &tls_names,
                    None,
                );
                certificates.push(CertSpec {
                    name: name.clone(),
                    common_name: name.clone(),
                    sans,
                });
                let host = if docker {
                    "0.0.0.0".to_string()
                } else {
                    address.to_string()
                };
                instances.push(Instance {
                    name: name.clone(),
                    kind: Kind::Backend,
                    role: pool.name.clone(),
                    container_name: container(&name),
                    address,
                    port,
                    image: image(&pool.binary),
                    binary: pool.binary.clone(),
                    args: Vec::new(),
                    env: vec![
                        ("HOST".into(), host),
                        ("PORT".into(), port.to_string()),
                        ("TLS_CERT".into(), join(&dir, "tls/server.crt")),
                        ("TLS_KEY".into(), join(&dir, "tls/server.key")),
                        ("CLIENT_CA".into(), join(&dir, "tls/ca.crt")),
                        ("DATA_DIR".into(), data_dir),
                        ("INSTANCE_ID".into(), name.clone()),
                    ],
                    config_dir: dir,
                    files: vec![
                        file("tls/ca.crt", FileSource::CaCert),
                        file("tls/server.crt", FileSource::Cert(name.clone())),
                        file("tls/server.key", FileSource::Key(name.clone())),
                    ],
                    healthcheck: Some(vec!["healthcheck".into()]),
                    cap_add: Vec::new(),
                    publish: Vec::new(),
                    volume: docker
                        .then(|| (format!("{prefix}-{}-data", pool.name), "/data".into())),
                    aliases: vec![name.clone(), pool.name.clone()],
                    priority: None,
                    user: None,
                });
            }
            upstreams.push(gateway_toml::Upstream { pool, servers });
        }

        // Gateways.
        let gateway_addrs: Vec<Ipv4Addr> = t
            .gateway_addresses()
            .into_iter()
            .map(|a| net.addr(a))
            .collect();
        let edge_addr = net.addr(t.edge.address);
        // The edge's connections come from its own address in a container, from 127.0.0.1 on
        // loopback (the kernel picks the primary loopback address as the source).
        let edge_source = if docker {
            edge_addr
        } else {
            Ipv4Addr::LOCALHOST
        };
        certificates.push(CertSpec {
            name: "gateway-client".into(),
            common_name: "gateway-client".into(),
            sans: vec!["gateway-client".into()],
        });
        let mut gateway_admin = Vec::new();
        let mut gateway_instances = Vec::new();
        for (i, address) in gateway_addrs.iter().copied().enumerate() {
            let name = format!("gateway-{}", i + 1);
            let dir = config_dir(&name);
            let priority = t.gateways.priorities.get(i).copied().unwrap_or(100);
            let view = GatewayView {
                name: name.clone(),
                address,
                priority,
                peers: gateway_addrs
                    .iter()
                    .copied()
                    .filter(|a| *a != address)
                    .collect(),
                config_dir: dir.clone(),
            };
            let config = gateway_toml::render(&gateway_toml::Input {
                topology: t,
                net: &net,
                gateway: &view,
                upstreams: &upstreams,
                vip,
                edge_source,
                secrets: &options.secrets,
            });
            certificates.push(CertSpec {
                name: name.clone(),
                common_name: name.clone(),
                sans: leaf_sans(
                    &[&name, &container(&name), "gateway"],
                    address,
                    &tls_names,
                    Some(vip),
                ),
            });
            let admin_port = t.gateways.admin_port;
            let publish_port = t
                .gateways
                .admin_publish_port
                .checked_add(u16::try_from(i).unwrap_or(0))
                .filter(|_| t.gateways.admin_publish_port != 0);
            let admin_url = match (docker, publish_port) {
                (true, Some(p)) => format!("http://127.0.0.1:{p}"),
                _ => format!("http://{address}:{admin_port}"),
            };
            gateway_admin.push((name.clone(), admin_url));
            let config_path = join(&dir, "gateway.toml");
            gateway_instances.push(Instance {
                name: name.clone(),
                kind: Kind::Gateway,
                role: "gateway".into(),
                container_name: container(&name),
                address,
                port: admin_port,
                image: image("gateway"),
                binary: "gateway".into(),
                args: vec!["--config".into(), config_path.clone()],
                env: Vec::new(),
                config_dir: dir,
                files: vec![
                    PlannedFile {
                        path: "gateway.toml".into(),
                        source: FileSource::Text(config),
                        reloadable: true,
                    },
                    file("tls/ca.crt", FileSource::CaCert),
                    file("tls/server.crt", FileSource::Cert(name.clone())),
                    file("tls/server.key", FileSource::Key(name.clone())),
                    file("tls/client.crt", FileSource::Cert("gateway-client".into())),
                    file("tls/client.key", FileSource::Key("gateway-client".into())),
                ],
                healthcheck: Some(vec!["healthcheck".into(), "--config".into(), config_path]),
                cap_add: if docker && t.gateways.vip_mode == VipMode::Interface {
                    vec!["NET_ADMIN".into(), "NET_RAW".into()]
                } else {
                    Vec::new()
                },
                publish: match (docker, publish_port) {
                    (true, Some(p)) => vec![Publish {
                        host_ip: Ipv4Addr::LOCALHOST,
                        host_port: p,
                        container_port: admin_port,
                    }],
                    _ => Vec::new(),
                },
                volume: None,
                aliases: vec![name.clone(), "gateway".into()],
                priority: Some(priority),
                user: (docker && t.gateways.vip_mode == VipMode::Interface).then(|| "0:0".into()),
            });
        }
        // Gateways first: they are what everything else is reached through.
        instances.splice(0..0, gateway_instances);

        // Edge forwarder.
        let edge_https = t.edge.https_port;
        let edge_http = t.edge.http_port;
        let gw_https = net.port(t.gateways.https_port);
        let gw_http = net.port(t.gateways.http_port);
        let publish_ip = t.edge.publish_address;
        let listen_ip = if docker {
            Ipv4Addr::UNSPECIFIED
        } else {
            publish_ip
        };
        let mut edge_args = vec![
            "forward".to_string(),
            "--map".into(),
            format!("{listen_ip}:{edge_https}={vip}:{gw_https}"),
            "--map".into(),
            format!("{listen_ip}:{edge_http}={vip}:{gw_http}"),
        ];
        if t.edge.proxy_protocol {
            edge_args.push("--proxy-protocol".into());
        }
        instances.push(Instance {
            name: "edge".into(),
            kind: Kind::Edge,
            role: "edge".into(),
            container_name: container("edge"),
            address: edge_addr,
            port: edge_https,
            image: image("gateway"),
            binary: "gateway".into(),
            args: edge_args,
            env: Vec::new(),
            config_dir: config_dir("edge"),
            files: Vec::new(),
            healthcheck: None,
            cap_add: Vec::new(),
            publish: if docker {
                vec![
                    Publish {
                        host_ip: publish_ip,
                        host_port: edge_https,
                        container_port: edge_https,
                    },
                    Publish {
                        host_ip: publish_ip,
                        host_port: edge_http,
                        container_port: edge_http,
                    },
                ]
            } else {
                Vec::new()
            },
            volume: None,
            aliases: vec!["edge".into()],
            priority: None,
            user: None,
        });

        // Prometheus.
        let prom = &t.prometheus;
        let prom_addr = net.addr(prom.address);
        let prom_dir = if docker {
            "/etc/prometheus".to_string()
        } else {
            config_dir("prometheus")
        };
        certificates.push(CertSpec {
            name: "prometheus".into(),
            common_name: "prometheus".into(),
            sans: leaf_sans(
                &["prometheus", &container("prometheus")],
                prom_addr,
                &[],
                None,
            ),
        });
        let mut prom_files = vec![
            PlannedFile {
                path: "prometheus.yml".into(),
                source: FileSource::Text(assets::PROMETHEUS_YML.into()),
                reloadable: false,
            },
            file("tls/ca.crt", FileSource::CaCert),
            file("tls/client.crt", FileSource::Cert("prometheus".into())),
            file("tls/client.key", FileSource::Key("prometheus".into())),
        ];
        for (rule_file, text) in assets::PROMETHEUS_RULES {
            prom_files.push(file(
                &format!("rules/{rule_file}"),
                FileSource::Text((*text).into()),
            ));
        }
        let prom_listen = if docker {
            format!("0.0.0.0:{}", prom.port)
        } else {
            format!("{prom_addr}:{}", prom.port)
        };
        let storage = if docker {
            "/prometheus".to_string()
        } else {
            path_text(&options.state_dir.join("data").join("prometheus"))
        };
        instances.push(Instance {
            name: "prometheus".into(),
            kind: Kind::Prometheus,
            role: "prometheus".into(),
            container_name: container("prometheus"),
            address: prom_addr,
            port: prom.port,
            image: prom.image.clone(),
            binary: "prometheus".into(),
            args: vec![
                format!("--config.file={}", join(&prom_dir, "prometheus.yml")),
                format!("--storage.tsdb.path={storage}"),
                format!("--web.listen-address={prom_listen}"),
                "--web.enable-lifecycle".into(),
                "--storage.tsdb.retention.time=2d".into(),
            ],
            env: Vec::new(),
            config_dir: prom_dir,
            files: prom_files,
            healthcheck: None,
            cap_add: Vec::new(),
            publish: publish_one(docker, publish_ip, prom.publish_port, prom.port),
            volume: None,
            aliases: vec!["prometheus".into()],
            priority: None,
            user: None,
        });

        // Grafana.
        let graf = &t.grafana;
        let graf_addr = net.addr(graf.address);
        let graf_dir = if docker {
            "/etc/grafana".to_string()
        } else {
            config_dir("grafana")
        };
        let mut graf_files = vec![
            file(
                "provisioning/datasources/prometheus.yml",
                FileSource::Text(assets::GRAFANA_DATASOURCE.replace(
                    "http://prometheus:9090",
                    &format!("http://{prom_addr}:{}", prom.port),
                )),
            ),
            file(
                "provisioning/dashboards/provider.yml",
                FileSource::Text(
                    assets::GRAFANA_PROVIDER
                        .replace("/etc/grafana/dashboards", &join(&graf_dir, "dashboards")),
                ),
            ),
        ];
        for (name, text) in assets::GRAFANA_DASHBOARDS {
            graf_files.push(file(
                &format!("dashboards/{name}"),
                FileSource::Text((*text).into()),
            ));
        }
        instances.push(Instance {
            name: "grafana".into(),
            kind: Kind::Grafana,
            role: "grafana".into(),
            container_name: container("grafana"),
            address: graf_addr,
            port: graf.port,
            image: graf.image.clone(),
            binary: "grafana".into(),
            args: Vec::new(),
            env: vec![
                (
                    "GF_SERVER_HTTP_ADDR".into(),
                    if docker {
                        "0.0.0.0".into()
                    } else {
                        graf_addr.to_string()
                    },
                ),
                ("GF_SERVER_HTTP_PORT".into(), graf.port.to_string()),
                (
                    "GF_PATHS_PROVISIONING".into(),
                    join(&graf_dir, "provisioning"),
                ),
                ("GF_AUTH_ANONYMOUS_ENABLED".into(), "true".into()),
                ("GF_AUTH_ANONYMOUS_ORG_ROLE".into(), "Viewer".into()),
                ("GF_ANALYTICS_REPORTING_ENABLED".into(), "false".into()),
                ("GF_ANALYTICS_CHECK_FOR_UPDATES".into(), "false".into()),
            ],
            config_dir: graf_dir,
            files: graf_files,
            healthcheck: None,
            cap_add: Vec::new(),
            publish: publish_one(docker, publish_ip, graf.publish_port, graf.port),
            volume: None,
            aliases: vec!["grafana".into()],
            priority: None,
            user: None,
        });

        let targets = prometheus_targets(&instances, t.gateways.admin_port);

        let host_of = |port: u16, addr: Ipv4Addr, publish: u16| {
            if docker && publish != 0 {
                format!("{publish_ip}:{publish}")
            } else {
                format!("{addr}:{port}")
            }
        };
        let edge_host = if publish_ip.is_unspecified() {
            Ipv4Addr::LOCALHOST
        } else {
            publish_ip
        };
        let endpoints = Endpoints {
            https: format!("https://{edge_host}:{edge_https}"),
            http: format!("http://{edge_host}:{edge_http}"),
            prometheus: format!(
                "http://{}",
                host_of(prom.port, prom_addr, prom.publish_port)
            ),
            grafana: format!(
                "http://{}",
                host_of(graf.port, graf_addr, graf.publish_port)
            ),
            gateway_admin,
        };

        let mut volumes: Vec<String> = instances
            .iter()
            .filter_map(|i| i.volume.as_ref().map(|(v, _)| v.clone()))
            .collect();
        volumes.dedup();

        Ok(Plan {
            runtime: options.runtime,
            deployment: t.name.clone(),
            project: t.project.clone(),
            version: options.version.clone(),
            network: NetworkPlan {
                name: prefix.clone(),
                subnet: t.subnet.to_string(),
                ip_range: t.dynamic_range.to_string(),
                gateway: t.subnet.first_host(),
            },
            volumes,
            instances,
            certificates,
            targets,
            vip,
            endpoints,
            pools,
        })
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }

    pub fn gateways(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| i.kind == Kind::Gateway)
    }

    /// Labels every object of this deployment carries.
    pub fn labels(&self) -> Vec<(String, String)> {
        vec![
            (LABEL_MANAGED.into(), "true".into()),
            (LABEL_DEPLOYMENT.into(), self.deployment.clone()),
        ]
    }
}

fn publish_one(docker: bool, ip: Ipv4Addr, host_port: u16, port: u16) -> Vec<Publish> {
    if docker && host_port != 0 {
        vec![Publish {
            host_ip: ip,
            host_port,
            container_port: port,
        }]
    } else {
        Vec::new()
    }
}

fn file(path: &str, source: FileSource) -> PlannedFile {
    PlannedFile {
        path: path.into(),
        source,
        reloadable: false,
    }
}

/// SANs of a leaf: its names, its address, the VIP (gateways), loopback, the public names.
fn leaf_sans(
    names: &[&str],
    address: Ipv4Addr,
    public: &[String],
    vip: Option<Ipv4Addr>,
) -> Vec<String> {
    let mut sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    sans.push(address.to_string());
    if let Some(vip) = vip {
        sans.push(vip.to_string());
    }
    sans.push("localhost".into());
    sans.push("127.0.0.1".into());
    sans.extend(public.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

fn check_scale(t: &Topology, pools: &BTreeMap<String, usize>) -> Result<(), PlanError> {
    // Every fixed address other than this pool's must stay clear of its grown range.
    for pool in &t.pools {
        let count = pools.get(&pool.name).copied().unwrap_or(pool.instances);
        let bad = || PlanError::BadScale {
            pool: pool.name.clone(),
            count,
        };
        if count == 0 || count > 200 {
            return Err(bad());
        }
        let mine = Topology::pool_addresses(pool, count);
        if mine.len() != count {
            return Err(bad());
        }
        let mut others: Vec<Ipv4Addr> = t.gateway_addresses();
        others.extend([
            t.gateways.vip,
            t.edge.address,
            t.prometheus.address,
            t.grafana.address,
        ]);
        for other in t.pools.iter().filter(|p| p.name != pool.name) {
            let n = pools.get(&other.name).copied().unwrap_or(other.instances);
            others.extend(Topology::pool_addresses(other, n));
        }
        let subnet: Ipv4Net = t.subnet;
        if mine
            .iter()
            .any(|a| !subnet.contains(*a) || t.dynamic_range.contains(*a) || others.contains(a))
        {
            return Err(bad());
        }
    }
    Ok(())
}

/// Prometheus file_sd files: one per role, one entry per instance labelled with its name.
fn prometheus_targets(instances: &[Instance], admin_port: u16) -> Vec<(String, String)> {
    let mut by_role: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for i in instances {
        let port = match i.kind {
            Kind::Gateway => admin_port,
            Kind::Backend => i.port,
            _ => continue,
        };
        by_role
            .entry(i.role.clone())
            .or_default()
            .push(serde_json::json!({
                "targets": [format!("{}:{port}", i.address)],
                "labels": {"instance": i.name, "role": i.role},
            }));
    }
    by_role
        .into_iter()
        .map(|(role, entries)| {
            let text = serde_json::to_string_pretty(&entries).unwrap_or_else(|_| "[]".into());
            let file = if role == "gateway" {
                "gateway.json".to_string()
            } else {
                format!("backend-{role}.json")
            };
            (file, format!("{text}\n"))
        })
        .collect()
}

#[cfg(test)]
mod tests;
