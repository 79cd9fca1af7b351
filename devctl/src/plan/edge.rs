//! The edge forwarder (a mode of the gateway binary): the host's published ports relayed to
//! the VIP, with a PROXY v2 header so the gateways see client addresses.

use std::net::Ipv4Addr;

use super::{Builder, Kind, Part, Publish, CONFIG_DIR};

pub(crate) fn build(b: &Builder<'_>, vip: Ipv4Addr) -> Part {
    let t = b.t;
    let Some(e) = &t.edge else {
        return Part::default();
    };
    let gw_https = b.net.port(t.gateways.https_port);
    let gw_http = b.net.port(t.gateways.http_port);
    let listen = b.listen_ip(e.publish_address);
    let mut args = vec![
        "forward".to_string(),
        "--map".into(),
        format!("{listen}:{}={vip}:{gw_https}", e.https_port),
        "--map".into(),
        format!("{listen}:{}={vip}:{gw_http}", e.http_port),
    ];
    if e.proxy_protocol {
        args.push("--proxy-protocol".into());
    }
    let mut i = b.instance(Kind::Edge, "edge", "edge", b.net.addr(e.address));
    i.port = e.https_port;
    i.image = b.image("gateway");
    i.binary = "gateway".into();
    i.args = args;
    i.config_dir = b.config_dir("edge", CONFIG_DIR);
    if b.docker() {
        i.publish = [e.https_port, e.http_port]
            .into_iter()
            .map(|port| Publish {
                host_ip: e.publish_address,
                host_port: port,
                container_port: port,
            })
            .collect();
    }
    Part {
        instances: vec![i],
        certificates: Vec::new(),
    }
}
