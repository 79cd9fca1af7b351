//! The process engine: the same plan as local processes on loopback addresses (127.0.1.10,
//! 127.0.2.10, ...; the VIP 127.0.1.100 in bind mode), unprivileged ports, files, PIDs and
//! logs in the state dir. For machines without Docker and for fast tests.
//!
//! Each instance runs under a `devctl supervise` parent ([`supervise`]) in its own process
//! group, so it outlives devctl. What the engine started is recorded in `run/<name>.json`
//! (program, arguments, environment, probe, spec fingerprint): like Docker's labels, the
//! record lets `status`, `start` and `down` work without a plan.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{
    Engine, EngineError, Health, LogQuery, Observed, PrepareMode, Prepared, Result, State, Work,
};
use crate::images;
use crate::plan::{Instance, Kind, Plan};
use crate::state::{self, files_hash, hash_parts, FileBytes, StateDir};
use crate::ui::Ui;

mod database;
mod supervise;

use supervise::is_zombie;
pub use supervise::supervise;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What was started for an instance (`run/<name>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Launch {
    role: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The full probe command line (program first), if it has one.
    probe: Option<Vec<String>>,
    /// uid:gid it runs as when not devctl's own (the database, when devctl runs as root).
    #[serde(default)]
    user: Option<(u32, u32)>,
    spec: String,
    config_dir: String,
}

pub struct ProcessEngine {
    state: StateDir,
    repo: Option<PathBuf>,
}

impl ProcessEngine {
    pub fn new(state: StateDir, repo: Option<PathBuf>) -> ProcessEngine {
        ProcessEngine { state, repo }
    }

    fn pid_path(&self, name: &str) -> PathBuf {
        self.state.run_dir().join(format!("{name}.pid"))
    }

    /// Present while an instance was stopped on purpose (`kill`, `down`, scale-down): its
    /// supervisor does not restart it.
    fn stop_path(&self, name: &str) -> PathBuf {
        self.state.run_dir().join(format!("{name}.stopped"))
    }

    fn launch_path(&self, name: &str) -> PathBuf {
        self.state.run_dir().join(format!("{name}.json"))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.state.logs_dir().join(format!("{name}.log"))
    }

    /// The program an instance runs here: ours from the checkout, the others from PATH.
    fn program(&self, i: &Instance) -> std::result::Result<PathBuf, String> {
        let found = match i.kind {
            Kind::Prometheus => images::host_binary("prometheus")
                .ok_or("no `prometheus` on PATH (Debian: apt-get install prometheus)"),
            Kind::Alertmanager => images::host_binary("prometheus-alertmanager")
                .or_else(|| images::host_binary("alertmanager"))
                .ok_or("no `prometheus-alertmanager` on PATH (Debian: apt-get install prometheus-alertmanager)"),
            Kind::Grafana => images::host_binary("grafana-server")
                .or_else(|| images::host_binary("grafana"))
                .ok_or("no grafana-server on PATH"),
            Kind::Database => return database::server(),
            _ => self
                .repo
                .as_ref()
                .map(|r| images::release_dir(r).join(&i.binary))
                .filter(|p| p.is_file())
                .ok_or("binary missing (run without --no-build)"),
        };
        found.map_err(str::to_string)
    }

    fn launch(&self, name: &str) -> Option<Launch> {
        let bytes = std::fs::read(self.launch_path(name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Names of every instance with a launch record.
    fn recorded(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.state.run_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json").map(str::to_string)
            })
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    /// The PID of a live instance (checked against /proc so a reused PID is not ours).
    fn pid(&self, name: &str, launch: &Launch) -> Option<i32> {
        let text = std::fs::read_to_string(self.pid_path(name)).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        if is_zombie(pid) {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        (String::from_utf8_lossy(first) == launch.program.to_string_lossy()).then_some(pid)
    }

    async fn probe(&self, launch: &Launch) -> Health {
        let Some((program, args)) = launch.probe.as_ref().and_then(|p| p.split_first()) else {
            return Health::None;
        };
        let status = tokio::process::Command::new(program)
            .args(args)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        match status {
            Ok(s) if s.success() => Health::Healthy,
            _ => Health::Unhealthy,
        }
    }

    async fn observe_launch(&self, name: &str, launch: &Launch) -> Observed {
        let pid = self.pid(name, launch);
        let (state, health) = match pid {
            Some(_) => (State::Running, self.probe(launch).await),
            None => (State::Exited, Health::None),
        };
        Observed {
            name: name.to_string(),
            role: launch.role.clone(),
            state,
            health,
            spec: Some(launch.spec.clone()),
            uptime: pid.and_then(process_uptime),
        }
    }

    fn write_files(&self, config_dir: &str, files: &[&FileBytes]) -> Result<()> {
        for f in files {
            let path = Path::new(config_dir).join(&f.path);
            if std::fs::read(&path).ok().as_deref() != Some(f.bytes.as_slice()) {
                state::write_atomic(&path, &f.bytes, f.private)?;
            }
        }
        Ok(())
    }

    fn spawn(&self, name: &str, launch: &Launch) -> Result<()> {
        if let Some((_, data)) = launch.env.iter().find(|(k, _)| k == "DATA_DIR") {
            std::fs::create_dir_all(data).map_err(io(Path::new(data)))?;
        }
        for arg in &launch.args {
            if let Some(data) = arg.strip_prefix("--storage.tsdb.path=") {
                std::fs::create_dir_all(data).map_err(io(Path::new(data)))?;
            }
        }
        let log = self.log_path(name);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(&log))?;
        let err = out.try_clone().map_err(io(&log))?;
        let stop = self.stop_path(name);
        let _ = std::fs::remove_file(&stop);
        let _ = std::fs::remove_file(self.pid_path(name));
        let exe = std::env::current_exe().map_err(io(Path::new("devctl")))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("supervise")
            .arg("--pid-file")
            .arg(self.pid_path(name))
            .arg("--stop-file")
            .arg(&stop);
        if let Some((uid, gid)) = launch.user {
            cmd.arg("--user").arg(format!("{uid}:{gid}"));
        }
        cmd.arg("--")
            .arg(&launch.program)
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.state.root)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        // Its own process group: it outlives devctl and ignores devctl's Ctrl-C.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn().map_err(io(&exe))?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; marks it stopped on purpose first.
    async fn stop_pid(&self, name: &str, grace: Duration) {
        let _ = state::write_atomic(&self.stop_path(name), b"stopped by devctl\n", false);
        let path = self.pid_path(name);
        let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        else {
            return;
        };
        let pid = Pid::from_raw(pid);
        if send_signal(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline
                && send_signal(pid, None).is_ok()
                && !is_zombie(pid.as_raw())
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = send_signal(pid, Signal::SIGKILL);
        }
    }

    fn running_launch(&self, name: &str) -> Result<(Launch, i32)> {
        let not_running = || EngineError::NotRunning {
            instance: name.to_string(),
        };
        let launch = self.launch(name).ok_or_else(not_running)?;
        let pid = self.pid(name, &launch).ok_or_else(not_running)?;
        Ok((launch, pid))
    }
}

impl Engine for ProcessEngine {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn prepare(&self, plan: &Plan, _ui: &Ui, mode: PrepareMode) -> Result<Prepared> {
        if mode == PrepareMode::Build && self.repo.is_none() {
            return Err(EngineError::NoCheckout);
        }
        let mut prepared = Prepared::default();
        for i in &plan.instances {
            if let Err(why) = self.program(i) {
                prepared.unavailable.insert(i.name.clone(), why);
            }
        }
        Ok(prepared)
    }

    async fn ensure_shared(&self, _plan: &Plan) -> Result<()> {
        let run = self.state.run_dir();
        std::fs::create_dir_all(&run).map_err(io(&run))
    }

    fn targets_dir(&self, plan: &Plan) -> PathBuf {
        plan.instances
            .iter()
            .find(|i| i.kind == Kind::Prometheus)
            .map(|p| Path::new(&p.config_dir).join("targets"))
            .unwrap_or_else(|| self.state.targets_dir())
    }

    /// The program (path and modification time), arguments, environment and the files that
    /// are not reloaded in place.
    async fn fingerprint(&self, _plan: &Plan, i: &Instance, files: &[FileBytes]) -> String {
        let program = self.program(i).unwrap_or_default();
        let mtime = std::fs::metadata(&program)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_default();
        let definition = serde_json::to_vec(&(&i.args, &i.env, &i.healthcheck, &i.config_dir))
            .unwrap_or_default();
        let fixed = files_hash(files, false);
        hash_parts([
            program.to_string_lossy().as_bytes(),
            mtime.as_bytes(),
            definition.as_slice(),
            fixed.as_bytes(),
        ])
    }

    async fn observe(&self) -> Result<Vec<Observed>> {
        let names = self.recorded();
        let found = futures_util::future::join_all(names.iter().map(|name| async move {
            let launch = self.launch(name)?;
            Some(self.observe_launch(name, &launch).await)
        }))
        .await;
        Ok(found.into_iter().flatten().collect())
    }

    async fn observe_one(&self, name: &str) -> Option<Observed> {
        let launch = self.launch(name)?;
        Some(self.observe_launch(name, &launch).await)
    }

    async fn running_config(&self, i: &Instance) -> Option<String> {
        let mut files = Vec::new();
        for f in i.files.iter().filter(|f| f.reloadable) {
            files.push(FileBytes {
                path: f.path.clone(),
                bytes: std::fs::read(Path::new(&i.config_dir).join(&f.path)).ok()?,
                private: false,
                reloadable: true,
            });
        }
        Some(files_hash(&files, true))
    }

    async fn create(&self, _plan: &Plan, work: &Work<'_>) -> Result<()> {
        let i = work.instance;
        let program = self.program(i).map_err(|why| EngineError::NoProgram {
            instance: i.name.clone(),
            why,
        })?;
        self.write_files(&i.config_dir, &work.files.iter().collect::<Vec<_>>())?;
        let user = database::run_as(i);
        if i.kind == Kind::Database {
            self.init_database(i, user)?;
        }
        let probe_program = match &i.probe_program {
            Some(name) => database::tool(name).ok_or_else(|| EngineError::NoProgram {
                instance: i.name.clone(),
                why: format!("no `{name}` on this host for its health probe"),
            })?,
            None => program.clone(),
        };
        let probe = i.healthcheck.as_ref().map(|args| {
            let mut argv = vec![probe_program.to_string_lossy().into_owned()];
            argv.extend(args.iter().cloned());
            if i.kind == Kind::Backend {
                argv.extend(["--timeout".to_string(), "2s".to_string()]);
            }
            argv
        });
        let launch = Launch {
            role: i.role.clone(),
            program,
            args: i.args.clone(),
            env: i.env.clone(),
            probe,
            user,
            spec: work.spec.clone(),
            config_dir: i.config_dir.clone(),
        };
        let path = self.launch_path(&i.name);
        let text = serde_json::to_vec_pretty(&launch).map_err(|e| EngineError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        state::write_atomic(&path, &text, false)?;
        self.spawn(&i.name, &launch)
    }

    async fn write_config(&self, work: &Work<'_>) -> Result<()> {
        let reloadable: Vec<&FileBytes> = work.files.iter().filter(|f| f.reloadable).collect();
        self.write_files(&work.instance.config_dir, &reloadable)
    }

    async fn start(&self, name: &str) -> Result<()> {
        let launch = self.launch(name).ok_or_else(|| EngineError::NotRunning {
            instance: name.to_string(),
        })?;
        if self.pid(name, &launch).is_some() {
            return Ok(());
        }
        self.spawn(name, &launch)
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        self.running_launch(name)?;
        self.stop_pid(name, grace).await;
        Ok(())
    }

    async fn remove(&self, name: &str, grace: Duration) -> Result<()> {
        self.stop_pid(name, grace).await;
        if let Some(launch) = self.launch(name) {
            let dir = Path::new(&launch.config_dir);
            if dir.starts_with(self.state.run_dir()) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        for path in [
            self.pid_path(name),
            self.launch_path(name),
            self.stop_path(name),
        ] {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    async fn signal(&self, name: &str, signal: Signal) -> Result<()> {
        let (_, pid) = self.running_launch(name)?;
        if matches!(
            signal,
            Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT
        ) {
            state::write_atomic(&self.stop_path(name), b"stopped by devctl\n", false)?;
        }
        send_signal(Pid::from_raw(pid), signal).map_err(|source| EngineError::Signal {
            instance: name.to_string(),
            signal: signal.as_str().to_string(),
            source,
        })
    }

    async fn exec(&self, instance: &Instance, exec: &super::Exec<'_>) -> Result<super::ExecOutput> {
        self.running_launch(&instance.name)?;
        self.exec_host(instance, exec).await
    }

    async fn last_logs(&self, name: &str, n: usize) -> Vec<String> {
        tail_lines(&self.log_path(name), n)
    }

    async fn logs(&self, ui: &Ui, query: &LogQuery<'_>) -> Result<()> {
        let LogQuery {
            names,
            follow,
            tail,
        } = *query;
        let selected: Vec<String> = self
            .recorded()
            .into_iter()
            .filter(|n| names.is_empty() || names.contains(n))
            .filter(|n| self.log_path(n).exists())
            .collect();
        if selected.is_empty() {
            return Err(EngineError::NoLogs(names.join(" ")));
        }
        let width = selected.iter().map(String::len).max().unwrap_or(8);
        let mut offsets = Vec::new();
        for (n, name) in selected.iter().enumerate() {
            let path = self.log_path(name);
            for line in tail_lines(&path, tail.unwrap_or(usize::MAX)) {
                println!("{}", ui.prefixed(n, name, width, &line));
            }
            offsets.push(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
        }
        if !follow {
            return Ok(());
        }
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            for (n, name) in selected.iter().enumerate() {
                for line in read_new_lines(&self.log_path(name), &mut offsets[n]) {
                    println!("{}", ui.prefixed(n, name, width, &line));
                }
            }
        }
    }

    /// Stops every recorded process (SIGTERM, then SIGKILL after 10 s); with `volumes` the
    /// data directories go too. Needs no plan.
    async fn down(&self, volumes: bool, _images: bool) -> Result<Vec<String>> {
        let names = self.recorded();
        futures_util::future::join_all(
            names
                .iter()
                .map(|n| self.remove(n, Duration::from_secs(10))),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
        let mut removed: Vec<String> = names.into_iter().map(|n| format!("process {n}")).collect();
        if volumes {
            let data = self.state.root.join("data");
            if data.exists() {
                std::fs::remove_dir_all(&data).map_err(io(&data))?;
                removed.push(format!("data {}", data.display()));
            }
        }
        Ok(removed)
    }
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

/// Complete lines appended to `path` since `offset` (which advances past them).
fn read_new_lines(path: &Path, offset: &mut u64) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len < *offset {
        *offset = 0;
    }
    if len == *offset || f.seek(SeekFrom::Start(*offset)).is_err() {
        return Vec::new();
    }
    let mut buf = String::new();
    if f.read_to_string(&mut buf).is_err() {
        return Vec::new();
    }
    // Keep a partial last line for the next round.
    let complete = buf.rfind('\n').map_or(0, |p| p + 1);
    *offset += complete as u64;
    buf[..complete].lines().map(str::to_string).collect()
}
