//! The store: with `[store] kind = "postgres"` and an address, the `postgres` instance (the
//! topology's image, or a local build of the host's PostgreSQL; the host's `postgres` in the
//! process runtime) with TLS from devctl's CA, its password from the state dir, and data in a
//! named volume; and, for every store kind, what the backends are told (`DATABASE_*`).

use std::net::Ipv4Addr;

use serde::Serialize;

use super::{join, leaf, leaf_sans, Builder, FileSource, Kind, Part, PlannedFile};
use crate::topology::StoreKind;

/// The database instance's name.
pub const DATABASE_INSTANCE: &str = "postgres";
/// Where PostgreSQL keeps its data in its container (the official image's `PGDATA`).
const PGDATA: &str = "/var/lib/postgresql/data";
/// The uid and gid the server runs as in its container: the official image's `postgres` user
/// (devctl's local image uses the same).
pub const POSTGRES_UID: u32 = 999;

/// The deployment's store as the commands that work on it (`backup`, `restore`, database
/// provisioning) see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Database {
    pub kind: StoreKind,
    /// The instance devctl runs (None: SQLite, or an external server).
    pub instance: Option<String>,
    /// The role the backends log in as.
    pub user: String,
    /// Where tools run next to the server reach it: (host, port).
    pub local: (String, u16),
    /// Pool → database name (each pool has its own database).
    pub databases: Vec<(String, String)>,
}

pub(crate) fn database(b: &Builder<'_>) -> Database {
    let store = &b.t.store;
    let address = store.instance_address().map(|a| b.net.addr(a));
    let local_host = match address {
        Some(a) if !b.docker() => a.to_string(),
        _ => "127.0.0.1".into(),
    };
    Database {
        kind: store.kind,
        instance: address.map(|_| DATABASE_INSTANCE.to_string()),
        user: store.user.clone(),
        local: (local_host, store.port),
        databases: b
            .t
            .pools
            .iter()
            .map(|p| (p.name.clone(), p.name.clone()))
            .collect(),
    }
}

/// What a backend of `pool` is told about its store (`DATABASE_*`), and the files it needs.
pub(crate) fn backend_env(
    b: &Builder<'_>,
    pool: &str,
    dir: &str,
) -> (Vec<(String, String)>, Vec<PlannedFile>) {
    let store = &b.t.store;
    if store.kind == StoreKind::Sqlite {
        return (Vec::new(), Vec::new());
    }
    let size = (
        "DATABASE_POOL_SIZE".to_string(),
        store.pool_size.to_string(),
    );
    if let Some(url) = &store.url {
        // An external server: the deployment supplies the password and its CA.
        let url = format!("{}/{pool}", url.trim_end_matches('/'));
        return (vec![("DATABASE_URL".into(), url), size], Vec::new());
    }
    let Some(address) = store.instance_address().map(|a| b.net.addr(a)) else {
        return (Vec::new(), Vec::new());
    };
    let url = format!("postgres://{}@{address}:{}/{pool}", store.user, store.port);
    (
        vec![
            ("DATABASE_URL".into(), url),
            ("DATABASE_CA".into(), join(dir, "tls/ca.crt")),
            (
                "DATABASE_PASSWORD_FILE".into(),
                join(dir, "database/password"),
            ),
            size,
        ],
        vec![PlannedFile::fixed(
            "database/password",
            FileSource::Secret(b.options.secrets.database.clone()),
        )],
    )
}

/// `pg_hba.conf`: every connection authenticates with a SCRAM password; over the network
/// only with TLS.
fn pg_hba() -> String {
    [
        "# devctl: passwords everywhere, TLS over the network.",
        "local all all scram-sha-256",
        "host all all 127.0.0.1/32 scram-sha-256",
        "hostssl all all 0.0.0.0/0 scram-sha-256",
        "",
    ]
    .join("\n")
}

/// Each pool's database, for images that run SQL files on their first start (compose).
fn create_databases(b: &Builder<'_>) -> String {
    b.t.pools
        .iter()
        .map(|p| format!("CREATE DATABASE \"{}\";\n", p.name.replace('"', "\"\"")))
        .collect()
}

/// The `postgres` instance, when the topology runs one.
pub(crate) fn build(b: &Builder<'_>) -> Part {
    let store = &b.t.store;
    let Some(address) = store.instance_address().map(|a| b.net.addr(a)) else {
        return Part::default();
    };
    let name = DATABASE_INSTANCE;
    let dir = b.config_dir(name, "/etc/postgresql/insightserenity");
    let data = b.data_dir(name, PGDATA);
    let mut args: Vec<String> = Vec::new();
    if b.docker() {
        // The image's entrypoint initializes the data directory, then runs the server.
        args.push("postgres".into());
    }
    let listen = if b.docker() {
        "*".to_string()
    } else {
        address.to_string()
    };
    for (key, value) in [
        ("listen_addresses", listen),
        ("port", store.port.to_string()),
        ("hba_file", join(&dir, "pg_hba.conf")),
        ("ssl", "on".into()),
        ("ssl_cert_file", join(&dir, "tls/server.crt")),
        ("ssl_key_file", join(&dir, "tls/server.key")),
        ("ssl_min_protocol_version", "TLSv1.2".into()),
        ("password_encryption", "scram-sha-256".into()),
        // Every replica's pool, with room for `scale` and the tools.
        ("max_connections", "300".into()),
        ("log_min_messages", "warning".into()),
        ("log_connections", "off".into()),
        // devctl's local image carries no LLVM.
        ("jit", "off".into()),
    ] {
        args.push("-c".into());
        args.push(format!("{key}={value}"));
    }
    if !b.docker() {
        // No socket file: clients use TCP, like in a container.
        args.push("-c".into());
        args.push("unix_socket_directories=".into());
    }
    let mut i = b.instance(Kind::Database, name, name, address);
    i.port = store.port;
    i.image = store.image.clone();
    i.binary = "postgres".into();
    i.args = args;
    i.env = vec![
        ("POSTGRES_USER".into(), store.user.clone()),
        ("POSTGRES_PASSWORD_FILE".into(), join(&dir, "password")),
        ("PGDATA".into(), data),
    ];
    i.config_dir = dir;
    i.files = vec![
        PlannedFile::fixed("pg_hba.conf", FileSource::Text(pg_hba())),
        PlannedFile::fixed(
            "password",
            FileSource::Secret(b.options.secrets.database.clone()),
        ),
        PlannedFile::fixed(
            "initdb/10-databases.sql",
            FileSource::Text(create_databases(b)),
        ),
        PlannedFile::fixed("tls/ca.crt", FileSource::CaCert),
        PlannedFile::fixed("tls/server.crt", FileSource::Cert(name.into())),
        PlannedFile::fixed("tls/server.key", FileSource::Key(name.into())),
    ];
    let probe_host = if b.docker() {
        Ipv4Addr::LOCALHOST
    } else {
        address
    };
    i.healthcheck = Some(vec![
        "-q".into(),
        "-h".into(),
        probe_host.to_string(),
        "-p".into(),
        store.port.to_string(),
        "-U".into(),
        store.user.clone(),
        "-d".into(),
        "postgres".into(),
    ]);
    i.probe_program = Some("pg_isready".into());
    if b.docker() {
        i.user = Some(format!("{POSTGRES_UID}:{POSTGRES_UID}"));
        i.volume = Some((format!("{}-{name}-data", b.prefix()), PGDATA.into()));
    }
    i.publish = b.publish(b.t.publish_address(), store.publish_port, store.port);
    Part {
        certificates: vec![leaf(
            name,
            leaf_sans(&[name, &b.container(name)], address, &[], None),
        )],
        instances: vec![i],
    }
}
