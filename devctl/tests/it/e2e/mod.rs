//! End to end with the real binaries: `devctl up` on the Docker engine (and the same flow on
//! the process runtime), status, HTTPS through the edge to both pools, `scale`, Prometheus and
//! the dashboards' queries on live data, gateway failover, `down`.
//!
//! Each test runs the dev topology under its own deployment name, ports and state dir, so a
//! developer's running `devctl up` is left alone. In CI (CI set) the Docker test fails when
//! the engine is unreachable; elsewhere it is skipped with a note.

use std::path::{Path, PathBuf};

use crate::repo;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Env {
    name: String,
    _dir: tempfile::TempDir,
    topology: PathBuf,
    state: PathBuf,
    runtime: &'static str,
    https: String,
    prometheus: String,
    token: std::sync::OnceLock<String>,
}

impl Env {
    /// The dev topology renamed and moved to its own subnet and host ports.
    fn new(runtime: &'static str, name: &str, subnet: &str, port_base: u16) -> Env {
        let dir = tempfile::tempdir().unwrap();
        // Traversable by the user the database runs as when the test runs as root.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let text = std::fs::read_to_string(repo().join("topology/dev.toml")).unwrap();
        let p = |n: u16| (port_base + n).to_string();
        // Its own loopback range for the process runtime, so a developer's running stack
        // (127.0.x.y) is left alone.
        let text = text
            .replace(
                "name = \"dev\"",
                &format!("name = \"{name}\"\nloopback = \"127.77.0.0/16\""),
            )
            .replace("172.28.", &format!("{subnet}."))
            .replace("https_port = 8443", &format!("https_port = {}", p(443)))
            .replace("http_port = 8080", &format!("http_port = {}", p(80)))
            .replace(
                "admin_publish_port = 9901",
                &format!("admin_publish_port = {}", p(901)),
            )
            .replace("publish_port = 9090", &format!("publish_port = {}", p(90)))
            .replace("publish_port = 3000", &format!("publish_port = {}", p(30)))
            .replace("publish_port = 9093", &format!("publish_port = {}", p(93)))
            .replace("publish_port = 5432", &format!("publish_port = {}", p(54)));
        let topology = dir.path().join("topology.toml");
        std::fs::write(&topology, text).unwrap();
        let state = dir.path().join("state");
        let prometheus = if runtime == "docker" {
            format!("http://127.0.0.1:{}", p(90))
        } else {
            "http://127.77.4.10:9090".to_string()
        };
        Env {
            name: name.to_string(),
            https: format!("https://127.0.0.1:{}", p(443)),
            prometheus,
            _dir: dir,
            topology,
            state,
            runtime,
            token: std::sync::OnceLock::new(),
        }
    }

    /// The same layout keeping its data in SQLite, with 2 replicas per pool.
    fn on_sqlite(self) -> Env {
        let text = std::fs::read_to_string(&self.topology).unwrap();
        let address = text
            .lines()
            .find(|l| l.starts_with("address = ") && l.contains(".5.10"))
            .unwrap()
            .to_string();
        let text = text
            .replace("kind = \"postgres\"", "kind = \"sqlite\"")
            .replace(&format!("{address}\n"), "")
            .replace("instances = 5", "instances = 2")
            .replace("weights = [100, 100, 100, 75, 75]", "weights = [100, 100]");
        std::fs::write(&self.topology, text).unwrap();
        self
    }

    fn deployment(&self) -> &str {
        &self.name
    }

    fn devctl(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_devctl"))
            .current_dir(repo())
            .arg("--topology")
            .arg(&self.topology)
            .arg("--state-dir")
            .arg(&self.state)
            .args(["--runtime", self.runtime])
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("run devctl");
        eprintln!(
            "$ devctl {} -> {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.devctl(args);
        assert!(out.status.success(), "devctl {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An admin token from `devctl token` (one per test: it lives an hour).
    fn token(&self) -> &str {
        self.token
            .get_or_init(|| self.ok(&["token", "--role", "admin"]).trim().to_string())
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    fn tls(&self) -> Arc<rustls::ClientConfig> {
        let roots = service_kit::tls::root_store(&self.state.join("certs/ca.crt"), "CA").unwrap();
        Arc::new(service_kit::tls::client_config(roots, None, &[b"http/1.1"]).unwrap())
    }
}

/// Stops everything the test started, whatever happened.
struct Down<'a>(&'a Env);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self.0.devctl(&["down", "--volumes"]);
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// GET through the edge with an admin token: (status, X-Served-By).
fn get(env: &Env, path: &str) -> Option<(u16, String)> {
    get_as(env, path, Some(env.token()))
}

/// GET through the edge with a token or none: (status, X-Served-By).
fn get_as(env: &Env, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    use service_kit::client::{connect, Target};
    let tls = env.tls();
    let bearer = token.map(|t| format!("Bearer {t}"));
    block_on(async move {
        let work = async {
            let target = Target::from_url(&env.https, Some(tls)).await.ok()?;
            let mut conn = connect(&target).await.ok()?;
            if let Some(b) = &bearer {
                conn = conn.with_default_header("authorization", b);
            }
            conn.get(path).await.ok()
        };
        let r = tokio::time::timeout(Duration::from_secs(5), work)
            .await
            .ok()??;
        Some((
            r.status.as_u16(),
            r.header("x-served-by").unwrap_or_default().to_string(),
        ))
    })
}

/// A request through the edge with an admin token: (status, JSON body, X-Served-By).
fn call(env: &Env, method: http::Method, path: &str, body: &str) -> Option<(u16, Value, String)> {
    use service_kit::client::{connect, Target};
    let tls = env.tls();
    let bearer = format!("Bearer {}", env.token());
    let body = body.to_string();
    block_on(async move {
        let work = async {
            let target = Target::from_url(&env.https, Some(tls)).await.ok()?;
            let mut conn = connect(&target).await.ok()?;
            let headers = [
                ("authorization", bearer.as_str()),
                ("content-type", "application/json"),
            ];
            conn.request(method, path, &headers, body).await.ok()
        };
        let r = tokio::time::timeout(Duration::from_secs(5), work)
            .await
            .ok()??;
        Some((
            r.status.as_u16(),
            r.json().unwrap_or(Value::Null),
            r.header("x-served-by").unwrap_or_default().to_string(),
        ))
    })
}

/// One database behind every replica: a user created through one admin replica is read
/// through the others; `backup` holds it, and `restore` brings it back after a delete.
fn store_drill(env: &Env) {
    use http::Method;
    let email = format!("store-drill-{}@example.com", std::process::id());
    let body = format!(r#"{{"email":"{email}","name":"Store Drill","role":"viewer"}}"#);
    let (code, user, created_by) =
        call(env, Method::POST, "/api/v1/admin/users", &body).expect("create a user");
    assert_eq!(code, 201, "{user}");
    let path = format!("/api/v1/admin/users/{}", user["id"]);
    let mut readers = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (code, got, by) = call(env, Method::GET, &path, "").expect("read the user");
        assert_eq!(
            (code, got["email"].as_str()),
            (200, Some(email.as_str())),
            "{by}"
        );
        readers.insert(by);
    }
    readers.remove(&created_by);
    assert!(
        !readers.is_empty(),
        "other replicas read what {created_by} wrote"
    );

    let archive = env.state.parent().unwrap().join("backup.tar");
    let archive_text = archive.to_string_lossy().into_owned();
    env.ok(&["backup", "--out", &archive_text]);
    assert!(std::fs::metadata(&archive).unwrap().len() > 1000);
    let (code, _, _) = call(env, Method::DELETE, &path, "").expect("delete the user");
    assert_eq!(code, 204);
    assert_eq!(call(env, Method::GET, &path, "").map(|r| r.0), Some(404));

    env.ok(&["restore", &archive_text]);
    let (code, got, _) = call(env, Method::GET, &path, "").expect("read it again");
    assert_eq!((code, got["email"].as_str()), (200, Some(email.as_str())));

    // A file that is not a backup is refused in one line; nothing changes.
    let bogus = env.state.parent().unwrap().join("not-a-backup.tar");
    std::fs::write(&bogus, b"nope").unwrap();
    let out = env.devctl(&["restore", &bogus.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a devctl backup"), "{stderr}");
    assert_eq!(call(env, Method::GET, &path, "").map(|r| r.0), Some(200));
}

fn http_json(url: &str) -> Option<Value> {
    let url = url.to_string();
    block_on(async move {
        let r = service_kit::client::get(&url, None, Duration::from_secs(5))
            .await
            .ok()?;
        r.json().ok()
    })
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn prom_query(env: &Env, q: &str) -> Vec<Value> {
    http_json(&format!(
        "{}/api/v1/query?query={}",
        env.prometheus,
        encode(q)
    ))
    .and_then(|v| v["data"]["result"].as_array().cloned())
    .unwrap_or_default()
}

fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            eprintln!("{what}: after {:.1?}", start.elapsed());
            return v;
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn vip_holder(env: &Env) -> Option<String> {
    env.status()["vip"]["holder"].as_str().map(str::to_string)
}

/// Kills an instance's process behind devctl's back (as a crash would).
fn crash(env: &Env, name: &str) {
    let pid: i32 = if env.runtime == "docker" {
        block_on(async {
            let docker = devctl::engine::docker::connect().await.unwrap();
            let container = format!("insightserenity-{}-{name}", env.deployment());
            docker
                .inspect_container(
                    &container,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .unwrap()
                .state
                .and_then(|s| s.pid)
                .unwrap()
        })
        .try_into()
        .unwrap()
    } else {
        std::fs::read_to_string(env.state.join(format!("run/{name}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eprintln!("crashed {name} (pid {pid})");
}

fn flow(env: &Env, docker: bool) {
    let _down = Down(env);
    let started = Instant::now();
    env.ok(&["up", "--timeout", "240s"]);
    eprintln!("up: {:.1?}", started.elapsed());

    // Mistyped `scale` commands fail with one line and change nothing.
    let state_before = snapshot(&env.state);
    for args in [
        ["scale", "nope", "3"],
        ["scale", "admin", "0"],
        ["scale", "admin", "300"],
    ] {
        let out = env.devctl(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1
        );
        assert_eq!(snapshot(&env.state), state_before, "{args:?}");
    }

    // A second `up` converges to the same state: nothing to do, and quickly.
    let started = Instant::now();
    let out = env.devctl(&["up", "--timeout", "60s"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("everything already matches the plan"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // 12 healthy instances and a VIP holder.
    let status = env.status();
    assert_eq!(status["runtime"], env.runtime);
    let core: Vec<&Value> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| matches!(s["role"].as_str(), Some("gateway" | "admin" | "customer")))
        .collect();
    assert_eq!(core.len(), 12, "{status}");
    let database = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "postgres")
        .unwrap_or_else(|| panic!("postgres in status: {status}"));
    assert_eq!(
        (&database["state"], &database["health"]),
        (&Value::from("running"), &Value::from("healthy")),
        "{database}"
    );
    for s in &core {
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(s["health"], "healthy", "{s}");
    }
    assert_eq!(status["endpoints"]["https"], env.https.as_str());
    assert!(status["ca"].as_str().unwrap().ends_with("ca.crt"));
    let holder = eventually("VIP holder", Duration::from_secs(10), || vip_holder(env));
    assert_eq!(holder, "gateway-1", "the higher priority holds the VIP");

    // Without a token the APIs answer 401; the backends' own endpoints are 404 from outside.
    assert_eq!(
        get_as(env, "/api/v1/consultations", None).map(|(c, _)| c),
        Some(401)
    );
    for path in ["/metrics", "/ready", "/health", "/metrics/x"] {
        assert_eq!(get(env, path).map(|(c, _)| c), Some(404), "{path}");
    }

    // HTTPS through the edge reaches both pools.
    let mut admins = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (code, by) = get(env, "/api/v1/admin/health").expect("admin through the edge");
        assert_eq!(code, 200);
        assert!(by.starts_with("admin-"), "{by}");
        admins.insert(by);
    }
    assert!(admins.len() >= 3, "round robin spreads: {admins:?}");
    let (code, by) = get(env, "/api/v1/consultations").expect("customer through the edge");
    assert_eq!(code, 200);
    assert!(by.starts_with("customer-"), "{by}");

    store_drill(env);

    // scale admin 6: admin-6 serves traffic and Prometheus scrapes it.
    let t = Instant::now();
    env.ok(&["scale", "admin", "6"]);
    eventually(
        "admin-6 serves through the edge",
        Duration::from_secs(15),
        || {
            get(env, "/api/v1/admin/health")
                .filter(|(c, by)| *c == 200 && by == "admin-6")
                .map(|_| ())
        },
    );
    eprintln!("scale admin 6 -> served by admin-6: {:.1?}", t.elapsed());
    let prometheus_up = env.status()["endpoints"]["prometheus"].is_string();
    if docker || prometheus_up {
        assert!(
            prometheus_up,
            "Prometheus runs (built from the host's binary)"
        );
        eventually(
            "Prometheus scrapes admin-6",
            Duration::from_secs(40),
            || {
                prom_query(env, "up{instance=\"admin-6\"} == 1")
                    .first()
                    .map(|_| ())
            },
        );
        // Every dashboard panel's query returns data from the live topology.
        for _ in 0..20 {
            let _ = get(env, "/api/v1/consultations");
            let _ = get(env, "/static/app.css");
        }
        std::thread::sleep(Duration::from_secs(12));
        let mut empty = Vec::new();
        for name in ["gateway-overview.json", "backends.json"] {
            let text =
                std::fs::read_to_string(repo().join("grafana/dashboards").join(name)).unwrap();
            let dash: Value = serde_json::from_str(&text).unwrap();
            for panel in dash["panels"].as_array().unwrap() {
                for target in panel["targets"].as_array().unwrap() {
                    let expr = target["expr"].as_str().unwrap();
                    if prom_query(env, expr).is_empty() {
                        empty.push(format!("{name}: {}: {expr}", panel["title"]));
                    }
                }
            }
        }
        assert!(
            empty.is_empty(),
            "panels without data:\n{}",
            empty.join("\n")
        );
        // `open` prints the URL of what runs (no display here).
        let out = Command::new(env!("CARGO_BIN_EXE_devctl"))
            .current_dir(repo())
            .arg("--topology")
            .arg(&env.topology)
            .arg("--state-dir")
            .arg(&env.state)
            .args(["--runtime", env.runtime, "open", "prometheus"])
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            env.prometheus,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        alert_drill(env);
    } else {
        eprintln!("note: no prometheus binary on PATH: the process runtime skips Prometheus");
    }

    // kill gateway-1: the VIP moves to gateway-2 and the edge keeps serving.
    env.ok(&["kill", "gateway-1"]);
    let t = Instant::now();
    eventually("VIP on gateway-2", Duration::from_secs(10), || {
        (vip_holder(env).as_deref() == Some("gateway-2")).then_some(())
    });
    eventually(
        "requests through the edge after failover",
        Duration::from_secs(10),
        || {
            get(env, "/api/v1/consultations")
                .filter(|(c, _)| *c == 200)
                .map(|_| ())
        },
    );
    eprintln!("failover to serving: {:.1?}", t.elapsed());
    for _ in 0..5 {
        assert_eq!(get(env, "/api/v1/consultations").map(|(c, _)| c), Some(200));
    }
    let status = env.status();
    let g1 = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "gateway-1")
        .unwrap()
        .clone();
    assert_ne!(g1["state"], "running", "a killed instance stays down: {g1}");

    // A crash (not `devctl kill`) brings the instance back by itself.
    crash(env, "admin-3");
    eventually(
        "admin-3 back after a crash",
        Duration::from_secs(30),
        || {
            let status = env.status();
            status["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| {
                    s["name"] == "admin-3" && s["state"] == "running" && s["health"] == "healthy"
                })
                .then_some(())
        },
    );

    // start gateway-1: it comes back and, with preemption, takes the VIP again.
    env.ok(&["start", "gateway-1"]);
    eventually("VIP back on gateway-1", Duration::from_secs(30), || {
        (vip_holder(env).as_deref() == Some("gateway-1")).then_some(())
    });

    // down leaves nothing of ours.
    env.ok(&["down", "--volumes"]);
    let status = env.status();
    assert!(
        status["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] != "running"),
        "{status}"
    );
}

/// A backend that dies is alerted: the alert reaches Alertmanager within 2 minutes and
/// `devctl alerts` shows it; started again, it serves.
fn alert_drill(env: &Env) {
    if !env.status()["endpoints"]["alertmanager"].is_string() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs Alertmanager (Debian's prometheus-alertmanager)"
        );
        eprintln!("note: no Alertmanager here: the alert drill is skipped");
        return;
    }
    env.ok(&["kill", "admin-2"]);
    let t = Instant::now();
    eventually(
        "InstanceDown for admin-2 at Alertmanager",
        Duration::from_secs(120),
        || {
            let out = env.devctl(&["alerts", "--json"]);
            let alerts: Value = serde_json::from_slice(&out.stdout).ok()?;
            alerts
                .as_array()?
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == "InstanceDown"
                        && a["labels"]["instance"] == "admin-2"
                })
                .then_some(())
        },
    );
    eprintln!(
        "admin-2 killed -> alert at Alertmanager: {:.1?}",
        t.elapsed()
    );
    let table = env.ok(&["alerts"]);
    assert!(
        table.contains("InstanceDown") && table.contains("admin-2"),
        "{table}"
    );
    env.ok(&["start", "admin-2"]);

    // Both gateways down: nobody holds the VIP, and that is alerted although no gateway
    // series are left to say so.
    env.ok(&["kill", "gateway-1"]);
    env.ok(&["kill", "gateway-2"]);
    let t = Instant::now();
    eventually(
        "NoVipHolder at Alertmanager",
        Duration::from_secs(120),
        || {
            let out = env.devctl(&["alerts", "--json"]);
            let alerts: Value = serde_json::from_slice(&out.stdout).ok()?;
            alerts
                .as_array()?
                .iter()
                .any(|a| a["labels"]["alertname"] == "NoVipHolder")
                .then_some(())
        },
    );
    eprintln!("both gateways down -> NoVipHolder: {:.1?}", t.elapsed());
    env.ok(&["start", "gateway-2"]);
    env.ok(&["start", "gateway-1"]);
    eventually("VIP back on gateway-1", Duration::from_secs(30), || {
        (vip_holder(env).as_deref() == Some("gateway-1")).then_some(())
    });
}

/// The state dir's files that say what the deployment is (not logs or PIDs, which a running
/// stack changes by itself).
fn snapshot(state: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for name in ["scale.json", "secrets.json", "runtime"] {
        if let Ok(bytes) = std::fs::read(state.join(name)) {
            files.push((name.to_string(), bytes));
        }
    }
    let certs = state.join("certs");
    let mut entries: Vec<_> = std::fs::read_dir(&certs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        files.push((
            path.display().to_string(),
            std::fs::read(&path).unwrap_or_default(),
        ));
    }
    files
}

/// A hand-broken scale file on a running stack: `status` names it and still shows what
/// runs, `down` removes everything, and `up` after `down` works.
fn broken_state_dir(env: &Env) {
    let _down = Down(env);
    env.ok(&["up", "--timeout", "240s"]);
    std::fs::write(env.state.join("scale.json"), "{\"deployments\": {\"oops\"").unwrap();
    let out = env.devctl(&["status", "--json"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scale.json"), "{stderr}");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let running = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "running")
        .count();
    assert!(running >= 12, "status still shows what runs: {status}");
    env.ok(&["down"]);
    env.ok(&["up", "--timeout", "240s"]);
    assert_eq!(get(env, "/api/v1/admin/health").map(|(c, _)| c), Some(200));
}

#[test]
fn docker_runtime_end_to_end() {
    let reachable = block_on(devctl::engine::docker::connect()).map_err(|e| e.to_string());
    if !service_kit::prereq::require(reachable.map(|_| ()), "start the Docker engine") {
        return;
    }
    let env = Env::new("docker", "e2e", "172.29", 23000);
    flow(&env, true);
    // Nothing labelled for this deployment is left: containers, networks, volumes.
    let left = block_on(async {
        use bollard::query_parameters::{
            ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
        };
        let docker = devctl::engine::docker::connect().await.unwrap();
        let filters = std::collections::HashMap::from([(
            "label".to_string(),
            vec![
                "io.insightserenity.managed=true".to_string(),
                "io.insightserenity.deployment=e2e".to_string(),
            ],
        )]);
        let containers = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap()
            .len();
        let networks = docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap()
            .len();
        let volumes = docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap()
            .volumes
            .unwrap_or_default()
            .len();
        (containers, networks, volumes)
    });
    assert_eq!(left, (0, 0, 0), "(containers, networks, volumes) left");
}

/// A topology on SQLite: the pool's replicas share one file; `backup` copies it through a
/// running replica (SQLite's online backup) and `restore` puts it back.
#[test]
fn process_runtime_on_sqlite_backs_up_and_restores() {
    let env = Env::new("process", "e2e-sqlite", "172.28", 25000).on_sqlite();
    let _down = Down(&env);
    env.ok(&["up", "--timeout", "120s"]);
    let status = env.status();
    let names: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(!names.contains(&"postgres"), "{names:?}");
    store_drill(&env);
}

#[test]
fn process_runtime_end_to_end() {
    let env = Env::new("process", "e2e-process", "172.28", 24000);
    flow(&env, false);
    broken_state_dir(&env);
}

mod registry;
