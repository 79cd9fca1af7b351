//! The start-up sequence every backend shares, so each `main` only parses flags and builds
//! its routes: resolve settings, init logs, build the app, bind, serve until SIGTERM, drain.
//!
//! Failures carry their exit code: 2 for configuration the process refuses (bad flag values,
//! unreadable certificates, unwritable data dir), 1 for everything else.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::health::Lifecycle;
use crate::http::{instrument, HttpContext};
use crate::metrics::Metrics;
use crate::server::{self, Drained};
use crate::settings::{AuthSetting, ServerArgs, EXIT_CONFIG};

/// Names the service in logs, metrics and `/health`.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInfo {
    pub name: &'static str,
    pub version: &'static str,
    /// The SQLite file's name in `--data-dir` when no `--database-url` names another.
    pub store_file: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

impl BootError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BootError::Config(_) => EXIT_CONFIG,
            BootError::Runtime(_) => 1,
        }
    }
}

/// Everything a service needs to build its routes.
pub struct AppContext {
    pub info: ServiceInfo,
    pub instance_id: String,
    pub data_dir: std::path::PathBuf,
    pub lifecycle: Lifecycle,
    pub metrics: Arc<Metrics>,
    /// How the API routes authenticate (`--auth-jwks` or `--no-auth`); a service loads it
    /// with `service_kit::auth::Auth::start` (feature `auth`).
    pub auth: AuthSetting,
    /// `--database-url`, `--database-ca`, `--database-pool-size`.
    pub database: crate::settings::DatabaseArgs,
}

/// Runs a service to completion.
pub async fn run<B, Fut>(
    info: ServiceInfo,
    args: &ServerArgs,
    port: u16,
    build: B,
) -> Result<Drained, BootError>
where
    B: FnOnce(AppContext) -> Fut,
    Fut: Future<Output = Result<Router, BootError>>,
{
    crate::tls::install_default_provider();
    let settings = args
        .resolve(port)
        .map_err(|e| BootError::Config(e.to_string()))?;
    crate::telemetry::init();
    if settings.auth == AuthSetting::Disabled {
        tracing::warn!(
            service = info.name,
            "authentication is DISABLED (--no-auth): every API request is served as an admin without a token; never run this way in production"
        );
    }
    let metrics = Arc::new(
        Metrics::new(info.name, info.version)
            .map_err(|e| BootError::Runtime(format!("metrics registry: {e}")))?,
    );
    let lifecycle = Lifecycle::new();
    let routes = build(AppContext {
        info,
        instance_id: settings.instance_id.clone(),
        data_dir: settings.data_dir.clone(),
        lifecycle: lifecycle.clone(),
        metrics: metrics.clone(),
        auth: settings.auth.clone(),
        database: settings.database.clone(),
    })
    .await?;
    let app = instrument(
        routes,
        Arc::new(HttpContext::new(metrics, &settings.instance_id)),
    );

    let listener = TcpListener::bind(settings.addr)
        .await
        .map_err(|e| BootError::Runtime(format!("cannot listen on {}: {e}", settings.addr)))?;
    let tls = settings.tls.clone().map(TlsAcceptor::from);
    let local_addr = listener.local_addr().unwrap_or(settings.addr);
    tracing::info!(
        service = info.name,
        version = info.version,
        instance = %settings.instance_id,
        addr = %local_addr,
        tls = tls.is_some(),
        "listening"
    );
    let drained = server::serve(
        listener,
        tls,
        app,
        lifecycle,
        server::shutdown_signal(),
        settings.serve.clone(),
    )
    .await;
    Ok(drained)
}

/// Flags of the `healthcheck` subcommand that Docker's HEALTHCHECK runs in a scratch image.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// URL to probe. Default: this service's own `/health` on its configured port.
    #[arg(long)]
    pub url: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "5s", value_parser = crate::settings::parse_duration)]
    pub timeout: Duration,
}

/// Probes the service's `/health`; true when it answers 200.
///
/// Under mTLS the probe presents the server's own certificate (devctl issues leaves valid for
/// client auth too); the server certificate itself is not verified since the probe only asks
/// whether the local listener answers.
pub async fn healthcheck(args: &HealthcheckArgs, server: &ServerArgs, port: u16) -> bool {
    crate::tls::install_default_provider();
    let url = args.url.clone().unwrap_or_else(|| {
        let scheme = if server.plain_http { "http" } else { "https" };
        let host = match server.host.parse::<std::net::IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => server.host.clone(),
            _ => "127.0.0.1".to_string(),
        };
        format!("{scheme}://{host}:{port}/health")
    });
    let identity = match (&server.tls_cert, &server.tls_key) {
        (Some(cert), Some(key)) => crate::tls::load_certs(cert, "TLS certificate")
            .ok()
            .zip(crate::tls::load_key(key).ok()),
        _ => None,
    };
    let tls = match crate::tls::insecure_client_config(identity) {
        Ok(config) => Arc::new(config),
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return false;
        }
    };
    match crate::client::get(&url, Some(tls), args.timeout).await {
        Ok(response) if response.status.is_success() => true,
        Ok(response) => {
            eprintln!("healthcheck: {url} answered {}", response.status);
            false
        }
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            false
        }
    }
}

/// The command line every backend shares, plus its own `extra` flags.
#[derive(Debug, clap::Parser)]
pub struct ServiceCli<E: clap::Args> {
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,

    /// Port to listen on.
    #[arg(long, env = "PORT")]
    pub port: u16,

    #[command(flatten)]
    pub server: ServerArgs,

    #[command(flatten)]
    pub extra: E,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Probe this service's /health; exit 0 when healthy, 1 otherwise (Docker HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
    /// Write a consistent copy of this service's SQLite store to stdout while it serves
    /// (SQLite's online backup; `devctl backup`).
    #[cfg(feature = "sqlite")]
    BackupStore,
    /// Replace the content of this service's SQLite store with a copy `backup-store` wrote
    /// (`devctl restore`); running replicas see it on their next transaction.
    #[cfg(feature = "sqlite")]
    RestoreStore {
        #[arg(long)]
        from: std::path::PathBuf,
    },
}

/// The store a service's flags name, with its metrics registered in the service's registry.
#[cfg(feature = "sqlite")]
pub fn store_target(
    ctx: &AppContext,
) -> Result<(crate::store::StoreTarget, crate::store::StoreMetrics), BootError> {
    let target = crate::store::Database::parse(&ctx.database)
        .map_err(BootError::Config)?
        .target(&ctx.data_dir, ctx.info.store_file);
    let metrics = crate::store::StoreMetrics::register(ctx.metrics.registry(), target.label())
        .map_err(|e| BootError::Runtime(e.to_string()))?;
    Ok((target, metrics))
}

/// The SQLite file this service's flags name, or why there is none.
#[cfg(feature = "sqlite")]
fn sqlite_file(info: &ServiceInfo, server: &ServerArgs) -> Result<std::path::PathBuf, String> {
    match crate::store::Database::parse(&server.database_args())?
        .target(&server.data_dir, info.store_file)
    {
        crate::store::StoreTarget::Sqlite(path) => Ok(path),
        crate::store::StoreTarget::Postgres(_) => {
            Err("the store is PostgreSQL: back it up with pg_dump (devctl backup does)".into())
        }
    }
}

#[cfg(feature = "sqlite")]
fn store_command(info: &ServiceInfo, server: &ServerArgs, command: &ServiceCommand) -> u8 {
    use std::io::Write;
    let result = sqlite_file(info, server).and_then(|file| match command {
        ServiceCommand::BackupStore => {
            let bytes = crate::sqlite::backup_bytes(&file).map_err(|e| e.to_string())?;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| format!("writing the copy: {e}"))
        }
        ServiceCommand::RestoreStore { from } => {
            crate::sqlite::restore_from(&file, from).map_err(|e| e.to_string())
        }
        ServiceCommand::Healthcheck(_) => Ok(()),
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// A backend's whole `main`: parse flags (with `default_port`), then either probe
/// (`healthcheck`) or run until SIGTERM. Returns the process exit code.
pub fn main<E, B, Fut>(
    info: ServiceInfo,
    about: &'static str,
    default_port: u16,
    build: B,
) -> std::process::ExitCode
where
    E: clap::Args + Send,
    B: FnOnce(AppContext, E) -> Fut,
    Fut: Future<Output = Result<Router, BootError>>,
{
    use clap::{CommandFactory, FromArgMatches};
    let command = ServiceCli::<E>::command()
        .name(info.name)
        .version(info.version)
        .about(about)
        .mut_arg("port", |a| {
            a.default_value(default_port.to_string()).required(false)
        });
    let cli = match ServiceCli::<E>::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Some(ServiceCommand::Healthcheck(args)) => {
                if healthcheck(&args, &cli.server, cli.port).await {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::from(1)
                }
            }
            #[cfg(feature = "sqlite")]
            Some(command) => {
                std::process::ExitCode::from(store_command(&info, &cli.server, &command))
            }
            None => {
                let extra = cli.extra;
                match run(info, &cli.server, cli.port, move |ctx| build(ctx, extra)).await {
                    Ok(_) => std::process::ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        std::process::ExitCode::from(e.exit_code() as u8)
                    }
                }
            }
        }
    })
}

/// For services without flags of their own.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct NoExtraArgs {}
