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
