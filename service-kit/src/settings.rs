//! Command-line settings shared by the backends, each with an environment equivalent.
//!
//! Parsing (clap) does no I/O; [`ServerArgs::resolve`] then checks what the process needs
//! before it serves (readable certificates, a valid address, a writable data directory) so a
//! misconfiguration is one clear line and exit code 2, not a failure on the first request.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::server::ServeOptions;
use crate::tls::{self, ServerTlsFiles};

/// Exit code for a configuration the process refuses to start with.
pub const EXIT_CONFIG: i32 = 2;

#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Certificate chain (PEM) presented to clients.
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of the certificate.
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA bundle (PEM): when set, clients must present a certificate signed by it (mTLS).
    #[arg(long, env = "CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// Serve plain HTTP instead of HTTPS (never in production).
    #[arg(long, env = "PLAIN_HTTP")]
    pub plain_http: bool,

    /// Directory holding the SQLite database (shared by all replicas of a service).
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Name reported in `X-Served-By`, logs and metrics. Default: the hostname.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// After SIGTERM, how long `/ready` answers 503 before the listener closes.
    #[arg(long, env = "DRAIN_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// After the listener closes, how long in-flight requests may take to finish.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// JWKS file (Ed25519 public keys with `kid`) that verifies bearer tokens on `/api/v1/...`.
    /// Re-read when it changes. Required unless `--no-auth`.
    #[arg(long, env = "AUTH_JWKS")]
    pub auth_jwks: Option<PathBuf>,

    /// Serve `/api/v1/...` without any token check (local experiments only; warned at start).
    #[arg(long, env = "NO_AUTH")]
    pub no_auth: bool,

    /// Where the data lives: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB` (default: the
    /// service's SQLite file in `--data-dir`).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// PEM CA for TLS to the PostgreSQL server (verify-full: certificate and host name).
    #[arg(long, env = "DATABASE_CA")]
    pub database_ca: Option<PathBuf>,

    /// File holding the PostgreSQL password (kept out of the URL, the environment and logs).
    #[arg(long, env = "DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,

    /// PostgreSQL connections per process.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 10)]
    pub database_pool_size: u32,
}

/// The raw `--database-*` flags; a service interprets them with
/// `service_kit::store::Database::parse` (feature `sqlite`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseArgs {
    pub url: Option<String>,
    pub ca: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub pool_size: u32,
}

/// How requests to the API routes are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSetting {
    /// Bearer tokens verified against the public keys in this JWKS file.
    Jwks(PathBuf),
    /// `--no-auth`: every request is treated as an admin (never in production).
    Disabled,
}

/// Settings checked against the machine: ready to bind and serve.
pub struct ResolvedServer {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub data_dir: PathBuf,
    pub instance_id: String,
    pub serve: ServeOptions,
    pub auth: AuthSetting,
    pub database: DatabaseArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid --host {0:?}: expected an IP address such as 0.0.0.0 or 127.0.0.1")]
    Host(String),
    #[error("--{0} is required for HTTPS (or pass --plain-http to serve plain HTTP)")]
    MissingTls(&'static str),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("data dir {path} is not writable: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid --instance-id {0:?}: use letters, digits, '-', '_' or '.'")]
    InstanceId(String),
    #[error("no token keys: pass --auth-jwks PATH (env AUTH_JWKS), or --no-auth (env NO_AUTH=true) to serve the API without authentication")]
    NoAuthKeys,
    #[error("--auth-jwks and --no-auth contradict each other: pass one of them")]
    AuthConflict,
}

impl ServerArgs {
    /// The `--database-*` flags as given.
    pub fn database_args(&self) -> DatabaseArgs {
        DatabaseArgs {
            url: self.database_url.clone(),
            ca: self.database_ca.clone(),
            password_file: self.database_password_file.clone(),
            pool_size: self.database_pool_size,
        }
    }

    pub fn resolve(&self, port: u16) -> Result<ResolvedServer, SettingsError> {
        let ip: IpAddr = self
            .host
            .parse()
            .map_err(|_| SettingsError::Host(self.host.clone()))?;
        let tls = if self.plain_http {
            None
        } else {
            let cert = self
                .tls_cert
                .clone()
                .ok_or(SettingsError::MissingTls("tls-cert"))?;
            let key = self
                .tls_key
                .clone()
                .ok_or(SettingsError::MissingTls("tls-key"))?;
            Some(tls::server_config(&ServerTlsFiles {
                cert,
                key,
                client_ca: self.client_ca.clone(),
            })?)
        };
        check_writable(&self.data_dir)?;
        let instance_id = match &self.instance_id {
            Some(id) => id.clone(),
            None => hostname(),
        };
        let valid_id = !instance_id.is_empty()
            && instance_id.len() <= 64
            && instance_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid_id {
            return Err(SettingsError::InstanceId(instance_id));
        }
        let auth = match (&self.auth_jwks, self.no_auth) {
            (Some(_), true) => return Err(SettingsError::AuthConflict),
            (Some(path), false) => AuthSetting::Jwks(path.clone()),
            (None, true) => AuthSetting::Disabled,
            (None, false) => return Err(SettingsError::NoAuthKeys),
        };
        Ok(ResolvedServer {
            addr: SocketAddr::new(ip, port),
            tls,
            data_dir: self.data_dir.clone(),
            instance_id,
            serve: ServeOptions {
                drain_delay: self.drain_delay,
                shutdown_timeout: self.shutdown_timeout,
                ..ServeOptions::default()
            },
            auth,
            database: self.database_args(),
        })
    }
}

fn check_writable(dir: &std::path::Path) -> Result<(), SettingsError> {
    let err = |source| SettingsError::DataDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(err)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The kernel's hostname (a container's name under Docker), without libc.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Durations as `500ms`, `5s`, `2m`, or a bare number of seconds (the gateway config's parser).
pub use gateway_config::parse_duration;
