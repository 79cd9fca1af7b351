//! The process runtime: the same plan as local processes on loopback addresses (127.0.1.10,
//! 127.0.2.10, ...; the VIP 127.0.1.100 in bind mode), unprivileged ports, files, PIDs and
//! logs in the state dir. For machines without Docker and for fast tests.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;

use crate::context::Context;
use crate::images;
use crate::plan::{Instance, Kind, Plan, RuntimeKind};
use crate::state::{self, Certs};
use crate::status::{ServiceStatus, Status, VipStatus};
use crate::ui::Ui;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Context(#[from] crate::context::ContextError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Image(#[from] images::ImageError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

type Result<T> = std::result::Result<T, ProcessError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProcessError + '_ {
    move |source| ProcessError::Io {
        path: path.to_owned(),
        source,
    }
}

pub struct ProcessRuntime {
    pub ctx: Context,
    pub plan: Plan,
    pub ui: Ui,
    /// Program of each instance kind that is not one of our binaries (None: skipped).
    prometheus: Option<PathBuf>,
    grafana: Option<PathBuf>,
}

impl ProcessRuntime {
    pub fn new(ctx: Context, ui: Ui) -> Result<ProcessRuntime> {
        let plan = ctx.plan(RuntimeKind::Process)?;
        Ok(ProcessRuntime {
            ctx,
            plan,
            ui,
            prometheus: images::host_binary("prometheus"),
            grafana: images::host_binary("grafana-server")
                .or_else(|| images::host_binary("grafana")),
        })
    }

    fn pid_path(&self, name: &str) -> PathBuf {
        self.ctx.state.run_dir().join(format!("{name}.pid"))
    }

    /// Present while an instance was stopped on purpose (`kill`, `down`, scale-down): its
    /// supervisor does not restart it.
    fn stop_path(&self, name: &str) -> PathBuf {
        self.ctx.state.run_dir().join(format!("{name}.stopped"))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.ctx.state.logs_dir().join(format!("{name}.log"))
    }

    fn program(&self, i: &Instance) -> Option<PathBuf> {
        match i.kind {
            Kind::Prometheus => self.prometheus.clone(),
            Kind::Grafana => self.grafana.clone(),
            _ => {
                let repo = self.ctx.repo.as_ref()?;
                Some(images::release_dir(repo).join(&i.binary))
            }
        }
    }

    fn available(&self, i: &Instance) -> bool {
        self.program(i).is_some_and(|p| p.is_file())
    }

    /// The PID of a live instance (checked against /proc so a reused PID is not ours).
    fn pid(&self, name: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.pid_path(name)).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // A zombie is not alive.
        let state = stat
            .rsplit_once(')')
            .map(|(_, s)| s.trim_start().chars().next());
        if state == Some(Some('Z')) {
            return None;
        }
        let i = self.plan.instance(name);
        let program = i.and_then(|i| self.program(i))?;
        let prog = program.to_string_lossy();
        let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        (String::from_utf8_lossy(first) == prog).then_some(pid)
    }

    fn write_files(&self, i: &Instance, certs: &Certs) -> Result<bool> {
        let mut changed = false;
        for (rel, bytes, private) in state::materialize(i, certs) {
            let path = Path::new(&i.config_dir).join(&rel);
            if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
                state::write_atomic(&path, &bytes, private)?;
                changed = true;
            }
        }
        if i.kind == Kind::Prometheus {
            state::write_targets(&Path::new(&i.config_dir).join("targets"), &self.plan)?;
        }
        Ok(changed)
    }

    fn spawn(&self, i: &Instance) -> Result<()> {
        let Some(program) = self.program(i) else {
            return Err(ProcessError::Other(format!("{}: no program", i.name)));
        };
        if let Some((_, data)) = i.env.iter().find(|(k, _)| k == "DATA_DIR") {
            std::fs::create_dir_all(data).map_err(io(Path::new(data)))?;
        }
        if i.kind == Kind::Prometheus {
            let data = self.ctx.state.root.join("data/prometheus");
            std::fs::create_dir_all(&data).map_err(io(&data))?;
        }
        let log = self.log_path(&i.name);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(&log))?;
        let err = out.try_clone().map_err(io(&log))?;
        let stop = self.stop_path(&i.name);
        let _ = std::fs::remove_file(&stop);
        let _ = std::fs::remove_file(self.pid_path(&i.name));
        // A supervisor (this binary) runs the program and restarts it when it fails by itself,
        // like the containers' on-failure restart policy.
        let exe = std::env::current_exe().map_err(io(Path::new("devctl")))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("supervise")
            .arg("--pid-file")
            .arg(self.pid_path(&i.name))
            .arg("--stop-file")
            .arg(&stop)
            .arg("--")
            .arg(&program)
            .args(&i.args)
            .envs(i.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.ctx.state.root)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        // Its own process group: it outlives devctl and ignores devctl's Ctrl-C.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn().map_err(io(&exe))?;
        Ok(())
    }

    /// Health as the Docker runtime sees it: the binary's own `healthcheck`, Prometheus's
    /// /-/ready, the edge's listener.
    async fn health(&self, i: &Instance) -> &'static str {
        if self.pid(&i.name).is_none() {
            return "none";
        }
        match (i.kind, &i.healthcheck) {
            (_, Some(args)) => {
                let Some(program) = self.program(i) else {
                    return "none";
                };
                let status = tokio::process::Command::new(program)
                    .args(args)
                    .args(
                        ["--timeout", "2s"]
                            .iter()
                            .filter(|_| i.kind == Kind::Backend),
                    )
                    .envs(i.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .await;
                match status {
                    Ok(s) if s.success() => "healthy",
                    _ => "unhealthy",
                }
            }
            (Kind::Prometheus, None) => {
                let url = format!("{}/-/ready", self.plan.endpoints.prometheus);
                match service_kit::client::get(&url, None, Duration::from_secs(1)).await {
                    Ok(r) if r.status.is_success() => "healthy",
                    _ => "unhealthy",
                }
            }
            (Kind::Edge, None) => {
                let addr: Option<SocketAddr> = self
                    .plan
                    .endpoints
                    .https
                    .trim_start_matches("https://")
                    .parse()
                    .ok();
                match addr {
                    Some(a) => match tokio::net::TcpStream::connect(a).await {
                        Ok(_) => "healthy",
                        Err(_) => "unhealthy",
                    },
                    None => "none",
                }
            }
            _ => "none",
        }
    }

    fn certs(&self) -> Result<Certs> {
        Ok(self
            .ctx
            .state
            .issue(&self.plan, &self.ctx.topology.tls.ca_common_name, false)?)
    }

    fn reload(&self, name: &str) {
        if let Some(pid) = self.pid(name) {
            let _ = send_signal(Pid::from_raw(pid), Signal::SIGHUP);
        }
    }

    pub async fn up(&mut self, build: bool, timeout: Duration) -> Result<Status> {
        let started = Instant::now();
        let Some(repo) = self.ctx.repo.clone() else {
            return Err(ProcessError::Other(
                "the process runtime runs the checkout's binaries: run devctl inside the repository".into(),
            ));
        };
        if build && !images::binaries_up_to_date(&repo) {
            self.ui
                .step("building static release binaries (cargo build --release, crt-static)");
            let log = self.ctx.state.logs_dir().join("cargo-build.log");
            let t = Instant::now();
            tokio::task::spawn_blocking(move || images::build_binaries(&repo, &log))
                .await
                .map_err(|e| ProcessError::Other(e.to_string()))??;
            self.ui
                .done(&format!("binaries built in {:.1?}", t.elapsed()));
        }
        let certs = self.certs()?;
        let mut report: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for i in &self.plan.instances {
            if !self.available(i) {
                let why = match i.kind {
                    Kind::Prometheus => {
                        "no `prometheus` on PATH (Debian: apt-get install prometheus)"
                    }
                    Kind::Grafana => "no grafana-server on PATH",
                    _ => "binary missing (run without --no-build)",
                };
                self.ui.warn(&format!("{}: skipped: {why}", i.name));
                continue;
            }
            let changed = self.write_files(i, &certs)?;
            match self.pid(&i.name) {
                None => {
                    self.spawn(i)?;
                    report.entry("started").or_default().push(i.name.clone());
                }
                Some(_) if changed && i.kind == Kind::Gateway => {
                    self.reload(&i.name);
                    report.entry("reloaded").or_default().push(i.name.clone());
                }
                Some(pid) if changed => {
                    let _ = state::write_atomic(&self.stop_path(&i.name), b"restart\n", false);
                    let _ = send_signal(Pid::from_raw(pid), Signal::SIGTERM);
                    self.wait_exit(&i.name, Duration::from_secs(35)).await;
                    self.spawn(i)?;
                    report.entry("restarted").or_default().push(i.name.clone());
                }
                Some(_) => {}
            }
        }
        // Extra instances (scaled down earlier, or gone from the topology).
        for name in self.extra_instances() {
            self.stop_pidfile(&name, Duration::from_secs(35)).await;
            report.entry("removed").or_default().push(name);
        }
        if report.is_empty() {
            self.ui.step("everything already matches the plan");
        }
        for (what, names) in &report {
            self.ui.step(&format!("{what}: {}", names.join(" ")));
        }
        self.wait_healthy(timeout, None).await?;
        let status = self.status().await;
        self.ui.done(&format!("up in {:.1?}", started.elapsed()));
        Ok(status)
    }

    /// PID files of instances the plan no longer has.
    fn extra_instances(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.ctx.state.run_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let name = name.strip_suffix(".pid")?.to_string();
                self.plan.instance(&name).is_none().then_some(name)
            })
            .collect()
    }

    async fn stop_pidfile(&self, name: &str, grace: Duration) {
        let _ = state::write_atomic(&self.stop_path(name), b"stopped by devctl\n", false);
        let path = self.pid_path(name);
        if let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            let pid = Pid::from_raw(pid);
            if send_signal(pid, Signal::SIGTERM).is_ok() {
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && send_signal(pid, None).is_ok() {
                    if is_zombie(pid.as_raw()) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = send_signal(pid, Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(path);
    }

    pub async fn wait_exit(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.pid(name).is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_healthy(&self, timeout: Duration, only: Option<&[String]>) -> Result<()> {
        let targets: Vec<&Instance> = self
            .plan
            .instances
            .iter()
            .filter(|i| self.available(i))
            .filter(|i| only.is_none_or(|o| o.contains(&i.name)))
            .collect();
        let mut progress = self.ui.progress(targets.len() as u64, "healthy");
        let started = Instant::now();
        let mut done = BTreeMap::new();
        loop {
            let checks = futures_util::future::join_all(
                targets
                    .iter()
                    .filter(|i| !done.contains_key(&i.name))
                    .map(|i| async move { (i.name.clone(), self.health(i).await) }),
            )
            .await;
            for (name, health) in checks {
                if health == "healthy" {
                    progress.advance(&name, started.elapsed());
                    done.insert(name, started.elapsed());
                }
            }
            let pending: Vec<&str> = targets
                .iter()
                .filter(|i| !done.contains_key(&i.name))
                .map(|i| i.name.as_str())
                .collect();
            if pending.is_empty() {
                progress.finish();
                return Ok(());
            }
            progress.message(&format!("waiting for {}", pending.join(" ")));
            if started.elapsed() > timeout {
                progress.finish();
                let mut report = String::new();
                for name in &pending {
                    let state = if self.pid(name).is_some() {
                        "running"
                    } else {
                        "exited"
                    };
                    report.push_str(&format!("\n  {name}: {state}; last log lines:"));
                    for line in tail_lines(&self.log_path(name), 8) {
                        report.push_str(&format!("\n    {line}"));
                    }
                }
                return Err(ProcessError::Other(format!(
                    "not healthy after {timeout:?}: {}{report}",
                    pending.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn status(&self) -> Status {
        let mut services = Vec::new();
        let mut running = BTreeMap::new();
        for i in &self.plan.instances {
            let (state, health, uptime) = if !self.available(i) {
                ("unavailable".to_string(), "none".to_string(), None)
            } else if let Some(pid) = self.pid(&i.name) {
                (
                    "running".to_string(),
                    self.health(i).await.to_string(),
                    process_uptime(pid),
                )
            } else if self.pid_path(&i.name).exists() {
                ("exited".to_string(), "none".to_string(), None)
            } else {
                ("missing".to_string(), "none".to_string(), None)
            };
            running.insert(i.name.clone(), state == "running");
            services.push(ServiceStatus {
                name: i.name.clone(),
                role: i.role.clone(),
                address: format!("{}:{}", i.address, i.port),
                state,
                health,
                uptime,
            });
        }
        let holder = crate::status::vip_holder(&self.plan).await;
        let mut endpoints = BTreeMap::new();
        if running.get("edge").copied().unwrap_or(false) {
            endpoints.insert("https".into(), self.plan.endpoints.https.clone());
            endpoints.insert("http".into(), self.plan.endpoints.http.clone());
        }
        for name in ["prometheus", "grafana"] {
            if running.get(name).copied().unwrap_or(false) {
                let url = if name == "prometheus" {
                    &self.plan.endpoints.prometheus
                } else {
                    &self.plan.endpoints.grafana
                };
                endpoints.insert(name.to_string(), url.clone());
            }
        }
        Status {
            runtime: "process".into(),
            services,
            vip: VipStatus {
                address: self.plan.vip.to_string(),
                holder,
            },
            endpoints,
            ca: self.ctx.state.ca_path().to_string_lossy().into_owned(),
        }
    }

    fn instance(&self, name: &str) -> Result<&Instance> {
        self.plan
            .instance(name)
            .ok_or_else(|| ProcessError::Other(format!("no instance {name:?}")))
    }

    pub fn kill(&self, name: &str, signal: &str) -> Result<()> {
        self.instance(name)?;
        let sig: Signal = signal
            .parse()
            .or_else(|_| format!("SIG{signal}").parse())
            .map_err(|_| ProcessError::Other(format!("unknown signal {signal:?}")))?;
        let pid = self
            .pid(name)
            .ok_or_else(|| ProcessError::Other(format!("{name} is not running")))?;
        if matches!(
            sig,
            Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT
        ) {
            state::write_atomic(&self.stop_path(name), b"stopped by devctl\n", false)?;
        }
        send_signal(Pid::from_raw(pid), sig)
            .map_err(|e| ProcessError::Other(format!("{name}: {e}")))?;
        Ok(())
    }

    pub async fn start(&self, name: &str) -> Result<()> {
        let i = self.instance(name)?;
        if self.pid(name).is_some() {
            return Ok(());
        }
        let certs = self.certs()?;
        self.write_files(i, &certs)?;
        self.spawn(i)?;
        self.wait_healthy(Duration::from_secs(60), Some(&[name.to_string()]))
            .await
    }

    pub async fn scale(&mut self, pool: &str, n: usize, timeout: Duration) -> Result<()> {
        self.ctx.state.set_scale(&self.ctx.topology.name, pool, n)?;
        let before: Vec<String> = self.plan.instances.iter().map(|i| i.name.clone()).collect();
        self.plan = self.ctx.plan(RuntimeKind::Process)?;
        let certs = self.certs()?;
        let added: Vec<String> = self
            .plan
            .instances
            .iter()
            .filter(|i| !before.contains(&i.name))
            .map(|i| i.name.clone())
            .collect();
        for name in &added {
            let i = self.instance(name)?;
            self.write_files(i, &certs)?;
            self.spawn(i)?;
        }
        if !added.is_empty() {
            self.wait_healthy(timeout, Some(&added)).await?;
        }
        for g in self.plan.gateways() {
            if self.write_files(g, &certs)? {
                self.reload(&g.name);
            }
        }
        if let Some(p) = self.plan.instance("prometheus") {
            state::write_targets(&Path::new(&p.config_dir).join("targets"), &self.plan)?;
        }
        let extra = self.extra_instances();
        if !extra.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for name in &extra {
                self.stop_pidfile(name, Duration::from_secs(35)).await;
            }
        }
        self.ui.done(&format!(
            "{pool}: {n} instances (added: {}; removed: {})",
            if added.is_empty() {
                "-".into()
            } else {
                added.join(" ")
            },
            if extra.is_empty() {
                "-".into()
            } else {
                extra.join(" ")
            }
        ));
        Ok(())
    }

    pub async fn logs(&self, names: &[String], follow: bool, tail: Option<usize>) -> Result<()> {
        let selected: Vec<String> = self
            .plan
            .instances
            .iter()
            .map(|i| i.name.clone())
            .filter(|n| names.is_empty() || names.contains(n))
            .filter(|n| self.log_path(n).exists())
            .collect();
        if selected.is_empty() {
            return Err(ProcessError::Other("no logs for those instances".into()));
        }
        let width = selected.iter().map(String::len).max().unwrap_or(8);
        let mut offsets = Vec::new();
        for (n, name) in selected.iter().enumerate() {
            let path = self.log_path(name);
            let lines = tail_lines(&path, tail.unwrap_or(usize::MAX));
            for line in lines {
                println!("{}", self.ui.prefixed(n, name, width, &line));
            }
            offsets.push(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
        }
        if !follow {
            return Ok(());
        }
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            for (n, name) in selected.iter().enumerate() {
                let path = self.log_path(name);
                let Ok(mut f) = std::fs::File::open(&path) else {
                    continue;
                };
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len < offsets[n] {
                    offsets[n] = 0;
                }
                if len == offsets[n] || f.seek(SeekFrom::Start(offsets[n])).is_err() {
                    continue;
                }
                let mut buf = String::new();
                if f.read_to_string(&mut buf).is_ok() {
                    // Keep a partial last line for the next round.
                    let complete = buf.rfind('\n').map_or(0, |p| p + 1);
                    for line in buf[..complete].lines() {
                        println!("{}", self.ui.prefixed(n, name, width, line));
                    }
                    offsets[n] += complete as u64;
                }
            }
        }
    }

    /// Stops every process of the deployment (SIGTERM, then SIGKILL after 10 s).
    pub async fn down(&self, volumes: bool) -> Result<usize> {
        let mut names: Vec<String> = self.plan.instances.iter().map(|i| i.name.clone()).collect();
        names.extend(self.extra_instances());
        let running: Vec<String> = names
            .into_iter()
            .filter(|n| self.pid_path(n).exists())
            .collect();
        let count = running.iter().filter(|n| self.pid(n).is_some()).count();
        futures_util::future::join_all(
            running
                .iter()
                .map(|n| self.stop_pidfile(n, Duration::from_secs(10))),
        )
        .await;
        if volumes {
            let data = self.ctx.state.root.join("data");
            let _ = std::fs::remove_dir_all(&data);
        }
        Ok(count)
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        == Some('Z')
}

fn process_uptime(pid: i32) -> Option<Duration> {
    let meta = std::fs::metadata(format!("/proc/{pid}")).ok()?;
    meta.modified().ok()?.elapsed().ok()
}

fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `devctl supervise` (hidden): runs `program`, writes its PID to `pid_file`, and restarts
/// it after a failure (non-zero exit or a signal) unless `stop_file` exists (devctl stopped
/// it on purpose). A clean exit (0, e.g. after draining on SIGTERM) ends supervision.
pub fn supervise(pid_file: &Path, stop_file: &Path, program: &Path, args: &[String]) -> i32 {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        let mut child = match std::process::Command::new(program).args(args).spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("devctl supervise: cannot start {}: {e}", program.display());
                return 1;
            }
        };
        if let Err(e) = state::write_atomic(pid_file, child.id().to_string().as_bytes(), false) {
            eprintln!("devctl supervise: {e}");
        }
        let status = match child.wait() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("devctl supervise: {e}");
                return 1;
            }
        };
        if stop_file.exists() || status.success() {
            return 0;
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        eprintln!(
            "devctl supervise: {} {status}; restarting in {backoff:?}",
            program.display()
        );
        std::thread::sleep(backoff);
        if stop_file.exists() {
            return 0;
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
