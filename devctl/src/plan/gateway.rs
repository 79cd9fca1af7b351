//! The gateway pair: each gateway's config (rendered by [`crate::gateway_toml`]), its
//! certificates (the public names and the VIP included), the shared upstream client
//! certificate, and where devctl reads each one's admin port.

use std::net::Ipv4Addr;

use super::{join, leaf, leaf_sans, Builder, FileSource, Kind, Part, PlannedFile, Publish};
use super::{RuntimeKind, CONFIG_DIR};
use crate::gateway_toml::{self, Upstream};
use crate::topology::VipMode;

/// The plan's view of one gateway, as the config renderer needs it.
#[derive(Debug, Clone)]
pub struct GatewayView {
    pub name: String,
    pub address: Ipv4Addr,
    pub priority: u8,
    pub peers: Vec<Ipv4Addr>,
    pub config_dir: String,
}

/// The gateways' instances and certificates, and `(name, admin URL)` of each.
pub(crate) fn build(
    b: &Builder<'_>,
    upstreams: &[Upstream<'_>],
    vip: Ipv4Addr,
) -> (Part, Vec<(String, String)>) {
    let t = b.t;
    let g = &t.gateways;
    let docker = b.docker();
    let addresses: Vec<Ipv4Addr> = t
        .gateway_addresses()
        .into_iter()
        .map(|a| b.net.addr(a))
        .collect();
    // The edge's connections come from its own address in a container, from 127.0.0.1 on
    // loopback (the kernel picks the primary loopback address as the source).
    let edge_source = t.edge.as_ref().map(|e| {
        if docker {
            b.net.addr(e.address)
        } else {
            Ipv4Addr::LOCALHOST
        }
    });
    let interface_mode = docker && g.vip_mode == VipMode::Interface;
    let mut part = Part::default();
    part.certificates
        .push(leaf("gateway-client", vec!["gateway-client".into()]));
    let mut admin = Vec::new();
    // One ACME storage for the pair: a volume both containers mount, or one host directory.
    let acme_storage = b.data_dir("gateway-acme", "/data/acme");
    for (i, address) in addresses.iter().copied().enumerate() {
        let name = format!("gateway-{}", i + 1);
        let dir = b.config_dir(&name, CONFIG_DIR);
        let priority = g.priorities.get(i).copied().unwrap_or(100);
        let view = GatewayView {
            name: name.clone(),
            address,
            priority,
            peers: addresses
                .iter()
                .copied()
                .filter(|a| *a != address)
                .collect(),
            config_dir: dir.clone(),
        };
        let config = gateway_toml::render(&gateway_toml::Input {
            topology: t,
            net: &b.net,
            gateway: &view,
            upstreams,
            vip,
            edge_source,
            secrets: &b.options.secrets,
            acme_storage: &acme_storage,
        });
        part.certificates.push(leaf(
            &name,
            leaf_sans(
                &[&name, &b.container(&name), "gateway"],
                address,
                &t.tls.names,
                Some(vip),
            ),
        ));
        let publish_port = g
            .admin_publish_port
            .checked_add(u16::try_from(i).unwrap_or(0))
            .filter(|_| g.admin_publish_port != 0);
        admin.push((
            name.clone(),
            match (docker, publish_port) {
                (true, Some(p)) => format!("http://127.0.0.1:{p}"),
                _ => format!("http://{address}:{}", g.admin_port),
            },
        ));
        let config_path = join(&dir, "gateway.toml");
        let mut inst = b.instance(Kind::Gateway, &name, "gateway", address);
        inst.port = g.admin_port;
        inst.image = b.image("gateway");
        inst.binary = "gateway".into();
        inst.args = vec!["--config".into(), config_path.clone()];
        inst.config_dir = dir;
        inst.files = vec![
            PlannedFile::reloadable("gateway.toml", FileSource::Text(config)),
            PlannedFile::fixed("tls/ca.crt", FileSource::CaCert),
            PlannedFile::fixed("tls/server.crt", FileSource::Cert(name.clone())),
            PlannedFile::fixed("tls/server.key", FileSource::Key(name.clone())),
            PlannedFile::fixed("tls/client.crt", FileSource::Cert("gateway-client".into())),
            PlannedFile::fixed("tls/client.key", FileSource::Key("gateway-client".into())),
            // The public token keys `auth_jwt` routes check (a rotation is a reload).
            PlannedFile::reloadable(
                "auth/jwks.json",
                FileSource::Text(b.options.secrets.jwks.clone()),
            ),
        ];
        if let Some(acme) = &t.tls.acme {
            if let Some(pem) = &acme.ca_pem {
                inst.files.push(PlannedFile::fixed(
                    gateway_toml::ACME_CA_FILE,
                    FileSource::Text(pem.clone()),
                ));
            }
            // The image's /data belongs to the gateway's user; a new volume copies that.
            inst.volume = docker.then(|| (format!("{}-gateway-acme", b.prefix()), "/data".into()));
        }
        inst.healthcheck = Some(vec!["healthcheck".into(), "--config".into(), config_path]);
        if interface_mode {
            inst.cap_add = vec!["NET_ADMIN".into(), "NET_RAW".into()];
            inst.user = Some("0:0".into());
            // ARP requests from the VIP holder name its own address, never the VIP: during a
            // handover both gateways hold the VIP for a moment, and a request naming it would
            // point the neighbours back at the one letting go (keepalived's usual advice).
            inst.sysctls = vec![("net.ipv4.conf.all.arp_announce".into(), "2".into())];
        }
        if let (RuntimeKind::Docker, Some(p)) = (b.options.runtime, publish_port) {
            inst.publish = vec![Publish {
                host_ip: Ipv4Addr::LOCALHOST,
                host_port: p,
                container_port: g.admin_port,
            }];
        }
        inst.aliases.push("gateway".into());
        inst.priority = Some(priority);
        part.instances.push(inst);
    }
    (part, admin)
}
