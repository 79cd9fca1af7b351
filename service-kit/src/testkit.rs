//! Helpers for integration tests across the workspace: a throwaway PKI on disk, client TLS
//! configs, and real server processes started and awaited by their "listening" log line.
//!
//! Servers are started with `--port 0`; the helper reads the bound address from the JSON log
//! instead of guessing free ports, so tests never race each other for ports.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::pki::{CertificateAuthority, LeafSpec};

/// A CA plus one server and one client certificate, written as PEM files under `dir`.
pub struct TestPki {
    pub ca: CertificateAuthority,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// `sans`: names and IPs the server certificate must cover.
    pub fn new(dir: &Path, sans: &[&str]) -> TestPki {
        crate::tls::install_default_provider();
        let ca = CertificateAuthority::generate("test ca").expect("CA");
        let server = ca
            .issue(&LeafSpec::new("server", sans))
            .expect("server cert");
        let client = ca
            .issue(&LeafSpec::new("client", &["client"]))
            .expect("client cert");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        TestPki {
            ca_cert: write("ca.crt", &ca.cert_pem),
            server_cert: write("server.crt", &server.cert_pem),
            server_key: write("server.key", &server.key_pem),
            client_cert: write("client.crt", &client.cert_pem),
            client_key: write("client.key", &client.key_pem),
            ca,
        }
    }

    fn identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            crate::tls::load_certs(&self.client_cert, "client cert").expect("client cert"),
            crate::tls::load_key(&self.client_key).expect("client key"),
        )
    }

    /// A client trusting this CA; ALPN h2 + http/1.1.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client_with(&[b"h2", b"http/1.1"], false)
    }

    /// A client trusting this CA with the given ALPN list, optionally presenting the client cert.
    pub fn client_with(&self, alpn: &[&[u8]], with_client_cert: bool) -> Arc<ClientConfig> {
        let roots = crate::tls::root_store(&self.ca_cert, "CA").expect("roots");
        let identity = with_client_cert.then(|| self.identity());
        Arc::new(crate::tls::client_config(roots, identity, alpn).expect("client config"))
    }

    /// A client limited to one TLS version.
    pub fn client_for_version(
        &self,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Arc<ClientConfig> {
        let roots = crate::tls::root_store(&self.ca_cert, "CA").expect("roots");
        let mut config = ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A token key for tests: its JWKS written under `dir` (pass [`TestAuth::jwks`] as
/// `--auth-jwks`) and helpers to mint tokens.
pub struct TestAuth {
    pub key: crate::auth::SigningKey,
    pub jwks: PathBuf,
}

impl TestAuth {
    pub fn new(dir: &Path) -> TestAuth {
        let key = crate::auth::SigningKey::generate().expect("token key");
        let jwks = dir.join("jwks.json");
        crate::auth::write_jwks(&jwks, &[&key]).expect("write JWKS");
        TestAuth { key, jwks }
    }

    /// `--auth-jwks <path>` as arguments.
    pub fn args(&self) -> [String; 2] {
        ["--auth-jwks".to_string(), self.jwks.display().to_string()]
    }

    /// A staff token with `role` for `audience`, valid for an hour.
    pub fn staff(&self, role: crate::auth::Role, audience: &str) -> String {
        let claims = crate::auth::Claims::staff(
            format!("test-{role}"),
            role,
            &[audience],
            Duration::from_secs(3600),
        );
        crate::auth::sign(&claims, &self.key).expect("sign")
    }

    /// A customer token for `client` and `audience`, valid for an hour.
    pub fn customer(&self, client: &str, audience: &str) -> String {
        let claims = crate::auth::Claims::customer(
            format!("test-{client}"),
            client,
            &[audience],
            Duration::from_secs(3600),
        );
        crate::auth::sign(&claims, &self.key).expect("sign")
    }

    /// `Bearer <token>`.
    pub fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }
}

/// A server process under test; killed on drop.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// How long a server may take to log that it is listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

impl ServerProcess {
    /// Starts `command` (stdout piped) and waits for its `"listening"` log line.
    pub fn start(mut command: Command) -> ServerProcess {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v["message"] == "listening" {
                            if let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok()) {
                                let _ = tx.send(Ok::<SocketAddr, String>(addr));
                            }
                        }
                    }
                    log.lock().expect("log lock").push(line);
                }
                let _ = tx.send(Err("server output closed".to_string()));
            });
        }
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(addr)) => addr,
            other => {
                let _ = child.kill();
                panic!(
                    "server did not start ({other:?}); output:\n{}",
                    log.lock().expect("log lock").join("\n")
                );
            }
        };
        ServerProcess { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines the process printed so far (stdout and stderr).
    pub fn output(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The address logged by a `"listening"` line whose `listener` field is `listener`
    /// (the gateway logs one per listener), waiting up to [`START_TIMEOUT`].
    pub fn listener_addr(&self, listener: &str) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let found = self.output().iter().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["message"] == "listening" && v["listener"] == listener)
                    .then(|| v["addr"].as_str()?.parse().ok())?
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no {listener} listener logged; output:\n{}",
                self.output().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until some output line contains `needle`.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `promtool check metrics` on an exposition text and asserts it is clean. Without
/// promtool the check is skipped with a note, except under CI where that is a failure.
pub fn promtool_check(text: &str, scratch: &Path) {
    let Some(promtool) = crate::prereq::tool("promtool", "apt-get install prometheus") else {
        return;
    };
    let file = scratch.join("metrics.txt");
    std::fs::write(&file, text).expect("write metrics");
    let out = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open metrics"))
        .output()
        .expect("run promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

/// How to get schemathesis's `st`, for `prereq::tool`.
pub const SCHEMATHESIS_HINT: &str = "pip install schemathesis (scripts/test.sh does)";

/// What [`schemathesis`] needs to test a running backend.
pub struct Schemathesis<'a> {
    /// The `st` program: `prereq::tool("st", SCHEMATHESIS_HINT)`.
    pub st: &'a Path,
    /// The served document's URL (fetched with the token).
    pub schema_url: String,
    /// Base URL the operations' paths are appended to.
    pub base_url: String,
    /// A bearer token sent with every request.
    pub token: &'a str,
    /// CA that signed the server's certificate.
    pub ca_cert: &'a Path,
    /// Scratch directory (the run's working directory).
    pub scratch: &'a Path,
}

/// Runs schemathesis (PyPI) against a running backend: every documented operation, bounded
/// (25 examples per operation, one worker, a fixed seed), with the checks `not_a_server_error`
/// and `response_schema_conformance`. Asserts a clean run and prints schemathesis's report
/// otherwise. `ST_ARGS` (whitespace-separated) adds arguments;
/// later ones win, so it can deepen a run by hand.
pub fn schemathesis(run: &Schemathesis<'_>) {
    let mut command = Command::new(run.st);
    command
        .current_dir(run.scratch)
        .arg("run")
        .arg(&run.schema_url)
        .args(["--url", &run.base_url])
        .args(["-H", &format!("Authorization: Bearer {}", run.token)])
        .arg("--tls-verify")
        .arg(run.ca_cert)
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            "25",
            // One worker: hypothesis describing strategies from several threads trips a
            // CPython 3.11 AST bug ("recursion depth mismatch").
            "--workers",
            "1",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--no-color",
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .stdin(Stdio::null());
    // A deeper run by hand, e.g. ST_ARGS="--max-examples 500 --seed 7 --checks all".
    if let Ok(extra) = std::env::var("ST_ARGS") {
        command.args(extra.split_whitespace());
    }
    let out = command.output().expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    eprintln!("{report}");
}

/// Which store a test runs on; every store test runs on both (see [`store_tests!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database a test's servers use: nothing to pass for SQLite (the file in `--data-dir`),
/// a fresh database on a private PostgreSQL server otherwise.
pub struct TestDatabase {
    pub postgres: Option<Postgres>,
}

impl TestDatabase {
    /// `None` when the backend is PostgreSQL and it is missing outside CI (the test is skipped).
    pub fn start(backend: Backend, dir: &Path) -> Option<TestDatabase> {
        match backend {
            Backend::Sqlite => Some(TestDatabase { postgres: None }),
            Backend::Postgres => Some(TestDatabase {
                postgres: Some(Postgres::start(dir)?),
            }),
        }
    }

    /// Flags for a backend process (`--database-url ...`), empty for SQLite.
    pub fn args(&self) -> Vec<String> {
        match &self.postgres {
            Some(pg) => vec!["--database-url".into(), pg.url()],
            None => Vec::new(),
        }
    }
}

/// Generates `NAME_sqlite` and `NAME_postgres` tests from `async fn NAME(backend: Backend)`.
#[macro_export]
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::testkit::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::testkit::Backend::Postgres).await
                }
            }
        )*
    };
}

/// A private PostgreSQL server for one test: `initdb` into `dir/pg` (as `nobody` when the test
/// runs as root: postgres refuses root), a free port on 127.0.0.1, one database `app`;
/// stopped on drop.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Postgres {
    /// Starts the server, or `None` (after `prereq::require`: skipped outside CI, a failure
    /// under CI) when PostgreSQL is not installed.
    pub fn start(dir: &Path) -> Option<Postgres> {
        let bin = postgres_bin();
        let found = bin
            .as_ref()
            .map(|_| ())
            .ok_or_else(|| "PostgreSQL (initdb, postgres) is not installed".to_string());
        if !crate::prereq::require(found, "apt-get install postgresql") {
            return None;
        }
        let bin = bin?;
        let user = running_as_root().then(nobody);
        let data = dir.join("pg");
        std::fs::create_dir_all(&data).expect("pg dir");
        if let Some((uid, gid)) = user {
            use std::os::unix::fs::PermissionsExt;
            // The test's temporary directory must be traversable by the server's user.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).expect("chown pg dir");
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut initdb, user);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut pg = Postgres {
            bin,
            data,
            port,
            user,
            child: None,
        };
        pg.start_server();
        let status = Command::new(pg.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", "postgres", "-q", "-c", "CREATE DATABASE app"])
            .status()
            .expect("psql");
        assert!(status.success(), "CREATE DATABASE failed");
        Some(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/app`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/app", self.port)
    }

    /// Runs one SQL statement in `app` and returns psql's unaligned output.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "app", "-q", "-A", "-t", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Makes `role` (password `password`, owner of `app`) reach `app` only over TLS with a
    /// SCRAM password, the server presenting `pki`'s server certificate; the superuser keeps
    /// its trusted local access for [`Postgres::query`].
    pub fn require_tls_and_password(&self, pki: &TestPki, role: &str, password: &str) {
        self.query(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}'; ALTER DATABASE app OWNER TO {role}"
        ));
        let copy = |from: &Path, name: &str| {
            let to = self.data.join(name);
            std::fs::copy(from, &to).expect("copy TLS file");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown");
            }
        };
        copy(&pki.server_cert, "server.crt");
        copy(&pki.server_key, "server.key");
        let hba = self.data.join("pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "hostssl app {role} 127.0.0.1/32 scram-sha-256\nhost all postgres 127.0.0.1/32 trust\nlocal all all trust\n"
            ),
        )
        .expect("write pg_hba.conf");
        self.query("ALTER SYSTEM SET ssl = on");
        self.query("SELECT pg_reload_conf()");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.query("SHOW ssl") != "on" {
            assert!(Instant::now() < deadline, "ssl did not turn on");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: open sessions are cut).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }

    fn start_server(&mut self) {
        let log = self.data.with_file_name("pg.log");
        let log_file = std::fs::File::create(&log).expect("pg log");
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log_file);
        as_user(&mut cmd, self.user);
        self.child = Some(cmd.spawn().expect("spawn postgres"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("ready to accept connections") {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("postgres exited ({status}): {text}");
            }
            assert!(Instant::now() < deadline, "postgres did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
        .collect();
    // Highest major version last ("9" < "10" as strings, so compare numerically).
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `nobody`'s uid and gid from /etc/passwd (65534 when absent).
fn nobody() -> (u32, u32) {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.first() == Some(&"nobody"))
                    .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))?
            })
        })
        .unwrap_or((65534, 65534))
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
}
