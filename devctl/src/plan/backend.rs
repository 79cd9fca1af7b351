//! Backend pools: `<pool>-N` instances of the pool's binary over HTTPS with mTLS, one shared
//! data volume per pool, and the upstream servers the gateways balance over.

use std::collections::BTreeMap;

use super::{join, leaf, leaf_sans, Builder, FileSource, Kind, Part, PlannedFile, CONFIG_DIR};
use crate::gateway_toml::{Server, Upstream};
use crate::topology::{StoreKind, Topology};

pub(crate) fn build<'t>(
    b: &Builder<'t>,
    pools: &BTreeMap<String, usize>,
) -> (Part, Vec<Upstream<'t>>) {
    let t = b.t;
    let mut part = Part::default();
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
            let address = b.net.addr(addr);
            let dir = b.config_dir(&name, CONFIG_DIR);
            let weight = pool.weights.get(i).copied().unwrap_or(pool.scale_weight);
            servers.push(Server {
                address,
                port,
                weight,
            });
            part.certificates.push(leaf(
                &name,
                leaf_sans(
                    &[&name, &b.container(&name), &pool.name],
                    address,
                    &t.tls.names,
                    None,
                ),
            ));
            let mut i = b.instance(Kind::Backend, &name, &pool.name, address);
            i.port = port;
            i.image = b.image(&pool.binary);
            i.binary = pool.binary.clone();
            let (store_env, store_files) = super::store::backend_env(b, &pool.name, &dir);
            i.env = vec![
                ("HOST".into(), b.listen_ip(address).to_string()),
                ("PORT".into(), port.to_string()),
                ("TLS_CERT".into(), join(&dir, "tls/server.crt")),
                ("TLS_KEY".into(), join(&dir, "tls/server.key")),
                ("CLIENT_CA".into(), join(&dir, "tls/ca.crt")),
                ("DATA_DIR".into(), b.data_dir(&pool.name, "/data")),
                ("INSTANCE_ID".into(), name.clone()),
                ("AUTH_JWKS".into(), join(&dir, "auth/jwks.json")),
            ];
            i.env.extend(store_env);
            i.config_dir = dir;
            i.files = vec![
                PlannedFile::fixed("tls/ca.crt", FileSource::CaCert),
                PlannedFile::fixed("tls/server.crt", FileSource::Cert(name.clone())),
                PlannedFile::fixed("tls/server.key", FileSource::Key(name.clone())),
                PlannedFile::fixed(
                    "auth/jwks.json",
                    FileSource::Text(b.options.secrets.jwks.clone()),
                ),
            ];
            i.files.extend(store_files);
            i.healthcheck = Some(vec!["healthcheck".into()]);
            // The pool's shared SQLite file lives in a volume; a database server needs none.
            i.volume = (b.docker() && t.store.kind == StoreKind::Sqlite)
                .then(|| (format!("{}-{}-data", b.prefix(), pool.name), "/data".into()));
            i.aliases.push(pool.name.clone());
            part.instances.push(i);
        }
        upstreams.push(Upstream { pool, servers });
    }
    (part, upstreams)
}
