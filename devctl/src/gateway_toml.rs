//! Renders one gateway's TOML config (the format of `gateway/gateway.example.toml`) from the
//! topology and the plan's addresses. Pure text; a test parses it with the gateway's own parser.

use std::fmt::Write;
use std::net::Ipv4Addr;

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
    pub edge_source: Ipv4Addr,
    pub secrets: &'a Secrets,
}

/// A TOML basic string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn path(dir: &str, rel: &str) -> String {
    q(&format!("{}/{rel}", dir.trim_end_matches('/')))
}

pub fn render(input: &Input<'_>) -> String {
    let t = input.topology;
    let g = &t.gateways;
    let net = input.net;
    let gw = input.gateway;
    let docker = net.runtime == RuntimeKind::Docker;
    let https_port = net.port(g.https_port);
    let http_port = net.port(g.http_port);
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
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# {name}: rendered by devctl from the {deployment} topology. Do not edit: change the\n\
         # topology and run `devctl up` (or `devctl render`).\n",
        name = gw.name,
        deployment = t.name
    );
    let _ = writeln!(w, "[runtime]");
    if let Some(threads) = g.worker_threads {
        let _ = writeln!(w, "worker_threads = {threads}");
    }
    let _ = writeln!(w, "shutdown_timeout = \"30s\"");
    // devctl reloads explicitly (SIGHUP after an upload) so a half-written file is never read.
    let _ = writeln!(w, "watch_config = false\n");

    let _ = writeln!(
        w,
        "[admin]\nlisten = {}\n",
        q(&format!("{admin_ip}:{}", g.admin_port))
    );

    let _ = writeln!(
        w,
        "[https]\nlisten = [{}]\ncert = {}\nkey = {}\n",
        q(&format!("{listen_ip}:{https_port}")),
        path(&gw.config_dir, "tls/server.crt"),
        path(&gw.config_dir, "tls/server.key"),
    );
    let _ = writeln!(
        w,
        "[http]\nlisten = [{}]\n# Redirects name the port clients use: the edge's.\nhttps_port = {}\n",
        q(&format!("{listen_ip}:{http_port}")),
        t.edge.https_port
    );

    let _ = writeln!(
        w,
        "[client_ip]\n# Only the edge forwarder may vouch for client addresses (PROXY v2).\n\
         trusted_proxies = [{}]\nproxy_protocol = {}\n",
        q(&format!("{}/32", input.edge_source)),
        t.edge.proxy_protocol
    );

    let _ = writeln!(
        w,
        "[upstream_tls]\nca = {}\nclient_cert = {}\nclient_key = {}\n",
        path(&gw.config_dir, "tls/ca.crt"),
        path(&gw.config_dir, "tls/client.crt"),
        path(&gw.config_dir, "tls/client.key"),
    );

    for up in input.upstreams {
        let p = up.pool;
        let _ = writeln!(w, "[upstreams.{}]", p.name);
        let _ = writeln!(w, "algorithm = {}", q(p.algorithm.as_str()));
        let _ = writeln!(w, "keepalive = {}", p.keepalive);
        for (key, value) in [
            ("keepalive_timeout", &p.keepalive_timeout),
            ("connect_timeout", &p.connect_timeout),
            ("read_timeout", &p.read_timeout),
        ] {
            if let Some(d) = value {
                let _ = writeln!(w, "{key} = {}", q(&d.0));
            }
        }
        if let Some(tries) = p.tries {
            let _ = writeln!(w, "tries = {tries}");
        }
        let _ = writeln!(w);
        let hc = &p.health_check;
        let _ = writeln!(
            w,
            "[upstreams.{}.health_check]\npath = {}\ninterval = {}\ntimeout = {}\nrise = {}\nfall = {}\n",
            p.name,
            q(&hc.path),
            q(&hc.interval.0),
            q(&hc.timeout.0),
            hc.rise,
            hc.fall
        );
        if let Some(sticky) = &p.sticky {
            let _ = writeln!(
                w,
                "[upstreams.{}.sticky]\ncookie = {}\nsecret = {}\nmax_age = {}\n",
                p.name,
                q(&sticky.cookie),
                q(&input.secrets.sticky),
                q(&sticky.max_age.0)
            );
        }
        for s in &up.servers {
            let _ = writeln!(
                w,
                "[[upstreams.{}.servers]]\naddress = {}\nweight = {}\nmax_fails = {}\nfail_timeout = {}\nmax_conns = {}\n",
                p.name,
                q(&format!("{}:{}", s.address, s.port)),
                s.weight,
                p.max_fails,
                q(&p.fail_timeout.0),
                p.max_conns
            );
        }
    }

    for route in &t.routes {
        let _ = writeln!(
            w,
            "[[routes]]\nprefix = {}\nupstream = {}",
            q(&route.prefix),
            q(&route.pool)
        );
        if let Some(rl) = &route.rate_limit {
            let _ = writeln!(
                w,
                "rate_limit = {{ rate = {}, per = {}, burst = {} }}",
                rl.rate,
                q(&rl.per.0),
                rl.burst
            );
        }
        if let Some(d) = &route.read_timeout {
            let _ = writeln!(w, "read_timeout = {}", q(&d.0));
        }
        if route.cache {
            let _ = writeln!(w, "cache = {{ max_object_size = \"1m\" }}");
        }
        let _ = writeln!(w);
    }

    let peers: Vec<String> = gw
        .peers
        .iter()
        .map(|p| q(&format!("{p}:{}", g.advert_port)))
        .collect();
    let vip_prefix = if docker { g.vip_prefix } else { 8 };
    let _ = writeln!(w, "[ha]");
    let _ = writeln!(w, "name = {}", q(&gw.name));
    let _ = writeln!(w, "priority = {}", gw.priority);
    let _ = writeln!(w, "address = {}", q(&gw.address.to_string()));
    let _ = writeln!(w, "port = {}", g.advert_port);
    let _ = writeln!(w, "peers = [{}]", peers.join(", "));
    let _ = writeln!(w, "advert_interval = {}", q(&g.advert_interval.0));
    let _ = writeln!(w, "preempt = {}", g.preempt);
    if let Some(d) = &g.preempt_delay {
        let _ = writeln!(w, "preempt_delay = {}", q(&d.0));
    }
    let _ = writeln!(w, "secret = {}", q(&input.secrets.ha));
    let _ = writeln!(w, "vip = {}", q(&format!("{}/{vip_prefix}", input.vip)));
    let _ = writeln!(w, "vip_mode = {}", q(vip_mode.as_str()));
    let _ = writeln!(w, "track_penalty = {}", g.track_penalty);
    out
}
