//! `devctl`: production's 2 + 5 + 5 layout on one machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};

use devctl::context::Context;
use devctl::engine::docker::DockerEngine;
use devctl::engine::process::ProcessEngine;
use devctl::engine::Engine;
use devctl::ops::Session;
use devctl::plan::RuntimeKind;
use devctl::state::Reissue;
use devctl::tokens::Subject;
use devctl::ui::Ui;

const EXAMPLES: &str = "\
Examples:
  devctl up                         # build, issue certificates, start everything, wait healthy
  devctl status                     # table of instances and the VIP holder (--json for scripts)
  devctl scale admin 6              # add admin-6, reload both gateways, Prometheus follows
  devctl kill gateway-1             # the VIP moves to gateway-2; `devctl start gateway-1`
  devctl token --role viewer        # a bearer token for the APIs (--client NAME: a customer)
  devctl alerts                     # what Alertmanager has firing, and since when
  devctl logs admin-1 customer-1 -f --tail 20
  devctl render --topology topology/production.toml --out /tmp/prod
  devctl up --runtime process       # the same plan as local processes on 127.0.x.y
  devctl down --volumes";

/// Runs the InsightSerenity platform (2 gateways with a VIP, 5 admin, 5 customer backends,
/// Prometheus, Grafana) on this machine, from a topology file.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// Topology file (default: topology/dev.toml of the checkout you are in).
    #[arg(long, global = true, env = "DEVCTL_TOPOLOGY")]
    topology: Option<PathBuf>,

    /// State dir: CA, certificates, secrets, scale, process runtime files (default: .devctl/
    /// in the checkout, else $XDG_STATE_HOME/devctl).
    #[arg(long, global = true, env = "DEVCTL_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// docker (default) or process; commands after `up` use the runtime `up` used.
    #[arg(long, global = true, value_enum, env = "DEVCTL_RUNTIME")]
    runtime: Option<Runtime>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Runtime {
    Docker,
    Process,
}

impl From<Runtime> for RuntimeKind {
    fn from(r: Runtime) -> RuntimeKind {
        match r {
            Runtime::Docker => RuntimeKind::Docker,
            Runtime::Process => RuntimeKind::Process,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OpenTarget {
    Grafana,
    Prometheus,
    Alertmanager,
    Gateway,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, issue certificates, create or converge everything, wait until healthy.
    #[command(after_help = "Example: devctl up --timeout 3m")]
    Up {
        /// Use the binaries and images as they are.
        #[arg(long)]
        no_build: bool,
        /// How long to wait for every instance to become healthy.
        #[arg(long, default_value = "120s", value_parser = service_kit::settings::parse_duration)]
        timeout: Duration,
    },
    /// Every instance's state and health, and which gateway holds the VIP.
    #[command(after_help = "Example: devctl status --json | jq .vip.holder")]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Set a pool's instance count; the gateways hot-reload, Prometheus follows.
    #[command(after_help = "Example: devctl scale admin 6")]
    Scale {
        pool: String,
        count: usize,
        #[arg(long, default_value = "60s", value_parser = service_kit::settings::parse_duration)]
        timeout: Duration,
    },
    /// Send a signal (default SIGKILL); the instance stays down until `devctl start`.
    #[command(after_help = "Example: devctl kill gateway-1 --signal SIGTERM")]
    Kill {
        name: String,
        #[arg(long, default_value = "SIGKILL")]
        signal: String,
    },
    /// Start an instance stopped by `kill`.
    Start { name: String },
    /// Restart an instance (SIGTERM, drain, start).
    Restart { name: String },
    /// Merged logs, prefixed with the instance name.
    #[command(after_help = "Example: devctl logs gateway-1 gateway-2 -f --tail 50")]
    Logs {
        names: Vec<String>,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Open Grafana, Prometheus or the gateway in a browser (or print the URL).
    Open { target: OpenTarget },
    /// (Re)issue every leaf certificate from the CA (made once, kept); --trust installs the CA.
    Certs {
        #[arg(long)]
        trust: bool,
    },
    /// Remove every container and network with our labels (and volumes with --volumes).
    Down {
        #[arg(long)]
        volumes: bool,
        /// Also remove our images.
        #[arg(long)]
        images: bool,
    },
    /// Render compose/docker-compose.yml from the topology.
    Compose {
        /// Output file (default: compose/docker-compose.yml in the checkout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Alerts firing now, from Alertmanager (what, about which instance, since when).
    #[command(after_help = "Example: devctl alerts --json | jq '.[].labels.alertname'")]
    Alerts {
        #[arg(long)]
        json: bool,
    },
    /// Print a bearer token for the running stack's APIs (staff role, or a customer).
    #[command(
        after_help = "Examples:\n  curl -H \"Authorization: Bearer $(devctl token --role viewer)\" ...\n  devctl token --client acme --ttl 15m"
    )]
    Token {
        /// admin, operator, support or viewer (default admin).
        #[arg(long, conflicts_with = "client", value_parser = parse_role)]
        role: Option<service_kit::auth::Role>,
        /// A customer token for this client (it sees only its own consultations).
        #[arg(long)]
        client: Option<String>,
        /// How long the token is valid (at most 30 days).
        #[arg(long, default_value = "1h", value_parser = service_kit::settings::parse_duration)]
        ttl: Duration,
    },
    /// Dump each pool's database and the state dir's CA, signing key and secrets into one file.
    #[command(
        after_help = "Example: devctl backup --out backups/dev.tar && devctl restore backups/dev.tar"
    )]
    Backup {
        /// Where to write the archive (default: .devctl/backups/<deployment>-<unix time>.tar).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Put a backup's databases back into the running stack (each in one transaction).
    Restore {
        file: PathBuf,
        /// Also restore the CA, token signing key and gateway secrets (then `devctl up`).
        #[arg(long)]
        state: bool,
    },
    /// Our images out of (and into) this engine: push to a registry, save, load.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Runs one process of the process runtime and restarts it when it fails (internal).
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        pid_file: PathBuf,
        #[arg(long)]
        stop_file: PathBuf,
        /// Run the program as this uid:gid (a database started by root).
        #[arg(long, value_parser = parse_user)]
        user: Option<(u32, u32)>,
        program: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write every instance's files (gateway configs, certificates, Prometheus config and
    /// targets) to a directory without starting anything.
    #[command(
        after_help = "Example: devctl render --topology topology/production.toml --out /tmp/prod"
    )]
    Render {
        #[arg(long)]
        out: PathBuf,
        /// `files`: each instance's files; `kubernetes`: a kustomize base and overlays.
        #[arg(long, value_enum, default_value = "files")]
        target: RenderTarget,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RenderTarget {
    Files,
    Kubernetes,
}

#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// Tag our images under REGISTRY[/PREFIX], push them (credentials from your Docker
    /// config) and pin their digests in the state dir (`images.json`; `render` and `up` use
    /// them).
    #[command(after_help = "Example: devctl images push registry.example.com/insightserenity")]
    Push { registry: String },
    /// Write our images to an archive for a host without a registry.
    Save { file: PathBuf },
    /// Load an archive written by `images save` (or `docker save`).
    Load { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Supervise {
        pid_file,
        stop_file,
        user,
        program,
        args,
    } = &cli.command
    {
        let code = devctl::engine::process::supervise(pid_file, stop_file, *user, program, args);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    service_kit::tls::install_default_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("devctl: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut text = format!("{e}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !text.contains(&c) {
                    text.push_str(&format!(": {c}"));
                }
            }
            eprintln!("devctl: {text}");
            ExitCode::from(1)
        }
    }
}

fn pick_runtime(cli_runtime: Option<Runtime>, ctx: &Context) -> RuntimeKind {
    cli_runtime
        .map(RuntimeKind::from)
        .or_else(|| ctx.recorded_runtime())
        .unwrap_or(RuntimeKind::Docker)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Context::load(cli.topology.as_deref(), cli.state_dir.as_deref())?;
    let json_status = matches!(cli.command, Command::Status { json: true });
    let ui = Ui::detect(json_status);
    let kind = pick_runtime(cli.runtime, &ctx);
    match cli.command {
        Command::Compose { out } => return compose(&ctx, out.as_deref()),
        Command::Render {
            out,
            target: RenderTarget::Files,
        } => return render(&ctx, &out, cli.runtime),
        Command::Render {
            out,
            target: RenderTarget::Kubernetes,
        } => return render_kubernetes(&ctx, &out),
        Command::Certs { trust } => return certs(&ctx, trust, kind),
        Command::Alerts { json } => {
            let plan = ctx.plan(kind)?;
            let url = plan
                .endpoints
                .alertmanager
                .ok_or(devctl::alerts::AlertsError::NoAlertmanager)?;
            let alerts = devctl::alerts::firing(&url).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&alerts)?);
            } else {
                print!("{}", devctl::alerts::table(&alerts));
            }
            return Ok(());
        }
        Command::Token { role, client, ttl } => {
            let subject = match client {
                Some(client) => Subject::Customer(client),
                None => Subject::Staff(role.unwrap_or(service_kit::auth::Role::Admin)),
            };
            println!("{}", devctl::tokens::issue(&ctx.state, &subject, ttl)?);
            return Ok(());
        }
        Command::Supervise { .. } => return Ok(()),
        Command::Images(command) => return images(&ctx, &ui, command).await,
        _ => {}
    }
    let project = ctx.topology.project.clone();
    let deployment = ctx.topology.name.clone();
    let (state, repo) = (ctx.state.clone(), ctx.repo.clone());
    match kind {
        RuntimeKind::Docker => {
            match DockerEngine::connect(&project, &deployment, state, repo).await {
                Ok(engine) => execute(Session::new(engine, ctx, ui, kind), cli.command).await,
                // A laptop without a Docker engine still gets the platform, as processes.
                Err(e) if matches!(cli.command, Command::Up { .. }) && cli.runtime.is_none() => {
                    ui.warn(&format!("{e}; using the process runtime instead"));
                    let engine = ProcessEngine::new(ctx.state.clone(), ctx.repo.clone());
                    let kind = RuntimeKind::Process;
                    execute(Session::new(engine, ctx, ui, kind), cli.command).await
                }
                Err(e) => Err(e.into()),
            }
        }
        RuntimeKind::Process => {
            let engine = ProcessEngine::new(state, repo);
            execute(Session::new(engine, ctx, ui, kind), cli.command).await
        }
    }
}

/// Every engine command, once.
async fn execute<E: Engine>(s: Session<E>, command: Command) -> anyhow::Result<()> {
    let ui = s.ui;
    match command {
        Command::Up { no_build, timeout } => {
            let (status, plan) = s.up(!no_build, timeout).await?;
            s.ctx.record_runtime(s.runtime)?;
            print!("{}", devctl::summary::text(&status, &plan));
        }
        Command::Status { json } => {
            let status = s.show_status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", devctl::status::table(&status, ui.color));
            }
        }
        Command::Scale {
            pool,
            count,
            timeout,
        } => s.scale(&pool, count, timeout).await?,
        Command::Kill { name, signal } => {
            s.kill(&name, &signal).await?;
            ui.done(&format!("{name}: sent {signal}"));
        }
        Command::Start { name } => {
            s.start(&name).await?;
            ui.done(&format!("{name}: started"));
        }
        Command::Restart { name } => {
            s.restart(&name).await?;
            ui.done(&format!("{name}: restarted"));
        }
        Command::Logs {
            names,
            follow,
            tail,
        } => {
            s.logs(&devctl::engine::LogQuery {
                names: &names,
                follow,
                tail,
            })
            .await?
        }
        Command::Open { target } => open(&s.show_status().await?, target)?,
        Command::Backup { out } => {
            let out = out.unwrap_or_else(|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                s.ctx
                    .state
                    .root
                    .join("backups")
                    .join(format!("{}-{now}.tar", s.ctx.topology.name))
            });
            let manifest = s.backup(&out).await?;
            ui.done(&format!(
                "backup of {} ({} databases, CA and secrets) written to {}",
                manifest.deployment,
                manifest.databases.len(),
                out.display()
            ));
        }
        Command::Restore { file, state } => {
            let manifest = s.restore(&file, state).await?;
            ui.done(&format!(
                "restored {} databases of {} from {}",
                manifest.databases.len(),
                manifest.deployment,
                file.display()
            ));
        }
        Command::Down { volumes, images } => {
            let removed = s.down(volumes, images).await?;
            for r in &removed {
                ui.step(&format!("removed {r}"));
            }
            ui.done(&format!("{} objects removed", removed.len()));
        }
        Command::Compose { .. }
        | Command::Render { .. }
        | Command::Certs { .. }
        | Command::Token { .. }
        | Command::Alerts { .. }
        | Command::Images(_)
        | Command::Supervise { .. } => {}
    }
    Ok(())
}

async fn images(ctx: &Context, ui: &Ui, command: ImagesCommand) -> anyhow::Result<()> {
    let plan = ctx.plan(RuntimeKind::Docker)?;
    let engine = DockerEngine::connect(
        &ctx.topology.project,
        &ctx.topology.name,
        ctx.state.clone(),
        ctx.repo.clone(),
    )
    .await?;
    let tags: Vec<String> = devctl::images::BINARIES
        .iter()
        .map(|b| format!("{}/{b}:{}", plan.project, plan.version))
        .collect();
    match command {
        ImagesCommand::Push { registry } => {
            let target = devctl::registry::Target::parse(&registry)?;
            engine.ensure_ours(&plan, ui).await?;
            let pins = engine.push_images(&tags, &target, ui).await?;
            ctx.state.set_pins(&pins)?;
            ui.done(&format!(
                "{} images pushed to {registry}; digests pinned in {}",
                pins.images.len(),
                ctx.state.pins_path().display()
            ));
        }
        ImagesCommand::Save { file } => {
            engine.ensure_ours(&plan, ui).await?;
            let size = engine.save_images(&tags, &file).await?;
            ui.done(&format!(
                "{} images saved to {} ({:.1} MB)",
                tags.len(),
                file.display(),
                size as f64 / 1e6
            ));
        }
        ImagesCommand::Load { file } => {
            for line in engine.load_images(&file).await? {
                ui.step(&line);
            }
            ui.done(&format!("loaded {}", file.display()));
        }
    }
    Ok(())
}

fn parse_user(raw: &str) -> Result<(u32, u32), String> {
    let (u, g) = raw.split_once(':').ok_or("expected UID:GID")?;
    Ok((
        u.parse().map_err(|_| "bad uid")?,
        g.parse().map_err(|_| "bad gid")?,
    ))
}

fn parse_role(raw: &str) -> Result<service_kit::auth::Role, String> {
    raw.parse()
        .map_err(|e: service_kit::auth::AuthError| e.to_string())
}

fn compose(ctx: &Context, out: Option<&Path>) -> anyhow::Result<()> {
    // The committed file holds the topology's own instance counts, not `scale` overrides.
    let plan = ctx.plan_with(RuntimeKind::Docker, Default::default())?;
    let rel = ctx
        .repo
        .as_ref()
        .and_then(|r| ctx.topology_path.strip_prefix(r).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| ctx.topology_path.to_string_lossy().into_owned());
    let text = devctl::compose::render(&plan, &rel);
    let out = match (out, &ctx.repo) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(r)) => r.join("compose/docker-compose.yml"),
        (None, None) => bail!("no checkout found: pass --out FILE"),
    };
    devctl::state::write_atomic(&out, text.as_bytes(), false)?;
    println!("{}", out.display());
    Ok(())
}

fn render(ctx: &Context, out: &Path, runtime: Option<Runtime>) -> anyhow::Result<()> {
    let kind = runtime
        .map(RuntimeKind::from)
        .unwrap_or(RuntimeKind::Docker);
    let plan = ctx.plan(kind)?;
    let certs = ctx
        .state
        .issue(&plan, &ctx.topology.tls.ca_common_name, Reissue::Changed)
        .context("issuing certificates")?;
    let written = devctl::state::render_to(out, &plan, &certs)?;
    // What each instance runs: our images by the digest `images push` pinned, when pinned.
    let pins = ctx.state.pins()?;
    let images: std::collections::BTreeMap<&str, &str> = plan
        .instances
        .iter()
        .map(|i| (i.name.as_str(), pins.get(&i.image).unwrap_or(&i.image)))
        .collect();
    devctl::state::write_atomic(
        &out.join("images.json"),
        &serde_json::to_vec_pretty(&images)?,
        false,
    )?;
    if pins.images.is_empty() {
        ui_note("images.json names our images by tag: `devctl images push REGISTRY` pins them by digest");
    }
    println!(
        "wrote {} files for {} instances to {} (CA: {})",
        written.len() + 1,
        plan.instances.len(),
        out.display(),
        ctx.state.ca_path().display()
    );
    Ok(())
}

fn render_kubernetes(ctx: &Context, out: &Path) -> anyhow::Result<()> {
    let plan = ctx.plan(RuntimeKind::Docker)?;
    // The plan's leaves plus one per pool for its StatefulSet's pods.
    let mut with_pods = plan.clone();
    with_pods
        .certificates
        .extend(devctl::kube::certificates(&ctx.topology));
    let certs = ctx
        .state
        .issue(
            &with_pods,
            &ctx.topology.tls.ca_common_name,
            Reissue::Changed,
        )
        .context("issuing certificates")?;
    let pins = ctx.state.pins()?;
    let files = devctl::kube::render(&devctl::kube::Input {
        topology: &ctx.topology,
        plan: &plan,
        certs: &certs,
        pins: &pins,
    })?;
    for (rel, text) in &files {
        // Secrets hold private keys: readable by the owner only.
        let private = rel.contains("/secret-");
        devctl::state::write_atomic(&out.join(rel), text.as_bytes(), private)?;
    }
    if pins.images.is_empty() {
        ui_note("our images are named by tag: `devctl images push REGISTRY` pins them by digest in the production overlay");
    }
    println!(
        "wrote {} files to {} (kubectl apply -k {}/overlays/production); before applying: label the edge nodes ({}=gateway-N) and create the `database` Secret (keys password, ca.crt)",
        files.len(),
        out.display(),
        out.display(),
        devctl::kube::GATEWAY_NODE_LABEL
    );
    Ok(())
}

fn ui_note(text: &str) {
    eprintln!("note: {text}");
}

fn certs(ctx: &Context, trust: bool, kind: RuntimeKind) -> anyhow::Result<()> {
    let plan = ctx.plan(kind)?;
    if !trust {
        ctx.state
            .issue(&plan, &ctx.topology.tls.ca_common_name, Reissue::All)?;
        println!(
            "issued {} leaf certificates in {} (CA kept: {}); `devctl up` rolls them out",
            plan.certificates.len(),
            ctx.state.certs_dir().display(),
            ctx.state.ca_path().display()
        );
        return Ok(());
    }
    ctx.state
        .issue(&plan, &ctx.topology.tls.ca_common_name, Reissue::Changed)?;
    Ok(devctl::trust::install(
        &ctx.state.ca_path(),
        &ctx.topology.name,
    )?)
}

/// Opens what runs: the URL comes from `status`'s endpoints, which list only running services.
fn open(status: &devctl::status::Status, target: OpenTarget) -> anyhow::Result<()> {
    let key = match target {
        OpenTarget::Grafana => "grafana",
        OpenTarget::Prometheus => "prometheus",
        OpenTarget::Alertmanager => "alertmanager",
        OpenTarget::Gateway => "https",
    };
    let Some(url) = status.endpoints.get(key).cloned() else {
        bail!("{key} is not running here (`devctl status` shows what runs; `devctl up` starts it)");
    };
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let has_display = cfg!(target_os = "macos")
        || std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if has_display {
        if let Ok(status) = std::process::Command::new(opener)
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
        {
            if status.success() {
                println!("opened {url}");
                return Ok(());
            }
        }
    }
    println!("{url}");
    Ok(())
}
