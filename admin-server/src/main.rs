//! `admin-server`: flags, then [`admin_server::build`] under the shared boot sequence.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use service_kit::boot::{self, HealthcheckArgs};
use service_kit::settings::ServerArgs;

/// InsightSerenity admin API over HTTPS (TLS 1.2/1.3, HTTP/1.1 and h2).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 3002)]
    port: u16,

    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Probe this service's /health and exit 0 when healthy, 1 otherwise (Docker HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        match &cli.command {
            Some(Command::Healthcheck(args)) => {
                if boot::healthcheck(args, &cli.server, cli.port).await {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            None => match boot::run(admin_server::INFO, &cli.server, cli.port, admin_server::build).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            },
        }
    })
}
