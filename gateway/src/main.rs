//! `gateway`: run the proxy, check a config (`nginx -t`), or probe the admin port.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// mimalloc: per-thread free lists suit a proxy's many short-lived, same-sized allocations
/// (headers, buffers) better than glibc's malloc; measured in bench/PROFILE.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use gateway::config::RuntimeModel;
use gateway::server::Gateway;
use gateway::workers::Workers;

/// InsightSerenity gateway: TLS-terminating reverse proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML; see gateway.example.toml).
    #[arg(
        long,
        short,
        env = "GATEWAY_CONFIG",
        default_value = "/etc/gateway/gateway.toml",
        global = true
    )]
    config: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration (certificates included) and exit 0, or 1 with the reason.
    Check,
    /// Probe the admin port's /-/healthy and exit 0 when healthy (Docker HEALTHCHECK).
    Healthcheck {
        /// URL to probe (default: the config's admin listener).
        #[arg(long)]
        url: Option<String>,
    },
    /// Relay TCP from published ports to the VIP (the edge forwarder), e.g.
    /// `gateway forward --map 0.0.0.0:8443=172.28.1.100:443 --proxy-protocol`.
    Forward {
        /// LISTEN=TARGET; repeat for several ports.
        #[arg(long = "map", required = true)]
        maps: Vec<gateway::forward::Mapping>,
        /// Prefix each connection with a PROXY v2 header carrying the client's address.
        #[arg(long)]
        proxy_protocol: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    service_kit::tls::install_default_provider();
    match cli.command {
        Some(Command::Check) => check(&cli.config),
        Some(Command::Healthcheck { url }) => healthcheck(&cli.config, url),
        Some(Command::Forward {
            maps,
            proxy_protocol,
        }) => forward(maps, proxy_protocol),
        None => run(&cli.config),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let result = gateway::config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let metrics = gateway::metrics::GatewayMetrics::new().map_err(|e| e.to_string())?;
            gateway::runtime::Snapshot::build(config, None, &metrics)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(()) => {
            println!("gateway: configuration {} is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::from(1)
        }
    }
}

fn forward(maps: Vec<gateway::forward::Mapping>, proxy_protocol: bool) -> ExitCode {
    service_kit::telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        tokio::select! {
            result = gateway::forward::run(maps, proxy_protocol) => match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            },
            () = service_kit::server::shutdown_signal() => ExitCode::SUCCESS,
        }
    })
}

fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
}

fn healthcheck(path: &std::path::Path, url: Option<String>) -> ExitCode {
    let url = match url {
        Some(url) => url,
        None => match gateway::config::load(path) {
            Ok(config) => {
                let mut addr = config.admin.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}/-/healthy")
            }
            Err(e) => {
                eprintln!("healthcheck: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let Some(rt) = current_thread_runtime() else {
        return ExitCode::from(1);
    };
    match rt.block_on(service_kit::client::get(&url, None, Duration::from_secs(5))) {
        Ok(r) if r.status.is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("healthcheck: {url} answered {}", r.status);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    // Read the config once up front for the runtime's shape; Gateway::start reads it again.
    let config = match gateway::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = config.runtime.worker_threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n.max(1),
    );
    // Thread per core: the workers serve clients; this thread's runtime runs the rest (admin
    // API, health checks, reloads, HA). Work stealing: one runtime does everything.
    let (runtime, workers) = match config.runtime.model {
        RuntimeModel::ThreadPerCore => {
            let workers = match Workers::start(threads) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("error: cannot start the worker threads: {e}");
                    return ExitCode::from(1);
                }
            };
            (
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build(),
                Some(workers),
            )
        }
        RuntimeModel::WorkStealing => (
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build(),
            None,
        ),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    service_kit::telemetry::init();
    let handles = workers.as_ref().map_or_else(Vec::new, Workers::handles);
    let code = runtime.block_on(async move {
        let gateway = match Gateway::start(path, handles).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(if e.is_config() { 2 } else { 1 });
            }
        };
        let admin_addr = config.admin.listen;
        let admin = match gateway::server::bind(admin_addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        let admin_addr = admin.local_addr().unwrap_or(admin_addr);
        tracing::info!(listener = "admin", addr = %admin_addr, "listening");
        let admin_app = gateway::admin::router(gateway.clone());
        let admin_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(admin, admin_app).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        tokio::spawn(reload_on_sighup(gateway.clone()));
        if config.runtime.watch_config.unwrap_or(true) {
            tokio::spawn(watch_files(gateway.clone()));
        }
        service_kit::server::shutdown_signal().await;
        let timeout = gateway
            .snapshot
            .load()
            .config
            .runtime
            .shutdown_timeout
            .map_or(Duration::from_secs(30), |d| d.0);
        let clean = gateway.shutdown(timeout).await;
        admin_task.abort();
        if clean {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    });
    // Past the drain: whatever the workers still hold is cut.
    drop(workers);
    code
}

async fn reload_on_sighup(gateway: Arc<Gateway>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; reload with POST /-/reload");
        return;
    };
    while hup.recv().await.is_some() {
        let _ = gateway.reload("SIGHUP").await;
    }
}

/// Polls the config file and the certificates it names; a change triggers a reload.
async fn watch_files(gateway: Arc<Gateway>) {
    let mut seen = gateway.watched_fingerprint();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let now = gateway.watched_fingerprint();
        if now != seen {
            let _ = gateway.reload("file change").await;
            seen = gateway.watched_fingerprint();
        }
    }
}
