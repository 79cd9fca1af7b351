//! Helpers for the gateway's integration tests: in-test HTTPS backends that can be killed
//! like a crashed process, the real gateway binary started on a generated config, and an
//! HTTPS client.

#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use service_kit::client::{self, Connection, Target};
use service_kit::testkit::{ServerProcess, TestPki};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub mod dns;

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

/// A TCP port free on `ip` now.
pub fn free_tcp_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port free on `ip` now.
pub fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(dir.path(), &["localhost", "127.0.0.1"]);
        Fixture { dir, pki }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The common head of a test config: listeners on ephemeral ports, TLS files.
    pub fn config_head(&self) -> String {
        format!(
            r#"
[runtime]
worker_threads = 2
shutdown_timeout = "10s"
watch_config = false

[admin]
listen = "127.0.0.1:0"

[https]
listen = ["127.0.0.1:0"]
cert = "{cert}"
key = "{key}"

[http]
listen = ["127.0.0.1:0"]
https_port = 8443
acme_challenge_dir = "{acme}"

[upstream_tls]
ca = "{ca}"
"#,
            cert = self.pki.server_cert.display(),
            key = self.pki.server_key.display(),
            ca = self.pki.ca_cert.display(),
            acme = self.path("acme").display(),
        )
    }

    pub fn write_config(&self, body: &str) -> PathBuf {
        let path = self.path("gateway.toml");
        std::fs::write(&path, format!("{}{}", self.config_head(), body)).unwrap();
        path
    }

    pub fn start_gateway(&self, body: &str) -> Gateway {
        let config = self.write_config(body);
        self.launch(config)
    }

    /// Like `start_gateway`, with `[runtime] model` set.
    pub fn start_gateway_with_model(&self, model: &str, body: &str) -> Gateway {
        let head = self.config_head().replacen(
            "worker_threads = 2\n",
            &format!("worker_threads = 2\nmodel = \"{model}\"\n"),
            1,
        );
        let path = self.path("gateway.toml");
        std::fs::write(&path, format!("{head}{body}")).unwrap();
        self.launch(path)
    }

    fn launch(&self, config: PathBuf) -> Gateway {
        let mut cmd = Command::new(GATEWAY);
        cmd.env_clear().arg("--config").arg(&config);
        let process = ServerProcess::start(cmd);
        let https = process.listener_addr("https");
        let http = process.listener_addr("http");
        let admin = process.listener_addr("admin");
        Gateway {
            process,
            https,
            http,
            admin,
            config,
            tls: self.pki.client(),
        }
    }
}

pub struct Gateway {
    pub process: ServerProcess,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Gateway {
    pub async fn connect(&self) -> Connection {
        self.connect_with(self.tls.clone()).await
    }

    pub async fn connect_with(&self, tls: Arc<rustls::ClientConfig>) -> Connection {
        let url = format!("https://localhost:{}", self.https.port());
        client::connect(&Target::from_url(&url, Some(tls)).await.unwrap())
            .await
            .unwrap()
    }

    /// A fresh HTTP/1.1-only connection.
    pub async fn connect_h1(&self, pki: &TestPki) -> Connection {
        self.connect_with(pki.client_with(&[b"http/1.1"], false))
            .await
    }

    pub async fn admin_get(&self, path: &str) -> client::Response {
        client::get(
            &format!("http://{}{path}", self.admin),
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap()
    }

    pub async fn reload(&self) -> client::Response {
        let target = Target::from_url(&format!("http://{}", self.admin), None)
            .await
            .unwrap();
        let mut conn = client::connect(&target).await.unwrap();
        conn.request(http::Method::POST, "/-/reload", &[], Bytes::new())
            .await
            .unwrap()
    }

    /// `/-/upstreams` state of one server: (state, fails, active).
    pub async fn server_state(&self, upstream: &str, server: SocketAddr) -> (String, u64, u64) {
        let v = self.admin_get("/-/upstreams").await.json().unwrap();
        let servers = v["upstreams"][upstream]["servers"]
            .as_array()
            .unwrap()
            .clone();
        let s = servers
            .iter()
            .find(|s| s["server"] == server.to_string())
            .unwrap_or_else(|| panic!("{server} not in {v}"));
        (
            s["state"].as_str().unwrap().to_string(),
            s["fails"].as_u64().unwrap(),
            s["active"].as_u64().unwrap(),
        )
    }
}

/// An in-test HTTPS backend. `kill` aborts its listener and every open connection at once,
/// like a crashed process; `start_at` brings one back on the same address.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// TCP connections open now (accepted, not yet closed by either side).
    pub open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    drain: tokio::sync::watch::Sender<bool>,
}

#[derive(Clone, Default)]
pub struct Behaviour {
    /// Delay added to every `/whoami`.
    pub delay: Duration,
    /// Plain text instead of TLS (HTTP/1.1 or h2 with prior knowledge).
    pub plain: bool,
    /// TLS that offers only `http/1.1` by ALPN (no h2).
    pub http1_only: bool,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` (hyper's default otherwise).
    pub max_streams: Option<u32>,
}

impl Behaviour {
    /// Answers `/whoami` after `delay`, otherwise the defaults.
    pub fn delayed(delay: Duration) -> Self {
        Behaviour {
            delay,
            ..Behaviour::default()
        }
    }
}

impl Backend {
    pub async fn start(name: &str, pki: &TestPki) -> Backend {
        Self::start_at(
            name,
            pki,
            "127.0.0.1:0".parse().unwrap(),
            Behaviour::default(),
        )
        .await
    }

    pub async fn start_with(name: &str, pki: &TestPki, behaviour: Behaviour) -> Backend {
        Self::start_at(name, pki, "127.0.0.1:0".parse().unwrap(), behaviour).await
    }

    pub async fn start_at(
        name: &str,
        pki: &TestPki,
        addr: SocketAddr,
        behaviour: Behaviour,
    ) -> Backend {
        let tls = service_kit::tls::server_config(&service_kit::tls::ServerTlsFiles {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: None,
        })
        .unwrap();
        let tls = if behaviour.http1_only {
            let mut only = (*tls).clone();
            only.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(only)
        } else {
            tls
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let listener = bind_retry(addr).await;
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let name = name.to_string();
        let (drain, draining) = tokio::sync::watch::channel(false);
        let task = {
            let (name, hits, accepted, open) =
                (name.clone(), hits.clone(), accepted.clone(), open.clone());
            let mut stop = draining.clone();
            tokio::spawn(async move {
                let mut conns = JoinSet::new();
                loop {
                    tokio::select! {
                        Ok((stream, _)) = listener.accept() => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            let acceptor = acceptor.clone();
                            let (name, hits, behaviour) = (name.clone(), hits.clone(), behaviour.clone());
                            let draining = draining.clone();
                            let open = OpenGuard::new(open.clone());
                            conns.spawn(async move {
                                let _open = open;
                                if behaviour.plain {
                                    serve(TokioIo::new(stream), (name, hits, behaviour), draining).await;
                                    return;
                                }
                                let Ok(tls) = acceptor.accept(stream).await else { return };
                                serve(TokioIo::new(tls), (name, hits, behaviour), draining).await;
                            });
                        }
                        _ = stop.wait_for(|d| *d) => break,
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    }
                }
                // Draining: no new connections; the open ones finish what they started.
                drop(listener);
                while conns.join_next().await.is_some() {}
            })
        };
        Backend {
            name,
            addr,
            hits,
            accepted,
            open,
            task,
            drain,
        }
    }

    pub fn kill(&self) {
        self.task.abort();
    }

    /// A clean shutdown, as hyper-based servers do it: the listener closes, every connection
    /// finishes the requests it has (HTTP/2: GOAWAY naming the last stream it will answer;
    /// HTTP/1.1: `Connection: close` on the response in flight) and closes.
    pub fn drain(&self) {
        self.drain.send_replace(true);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Polls `check` every 50 ms until it holds or `within` has passed; whether it held.
pub async fn poll_until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts a connection open until dropped (when its task ends, whoever closed it).
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection until it ends, or until `draining` turns true: then gracefully.
async fn serve<I>(
    io: I,
    (name, hits, behaviour): (String, Arc<AtomicUsize>, Behaviour),
    mut draining: tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Some(max) = behaviour.max_streams {
        builder.http2().max_concurrent_streams(max);
    }
    let service = hyper::service::service_fn(move |req| {
        handle(req, name.clone(), hits.clone(), behaviour.clone())
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = draining.wait_for(|d| *d) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Binding the address a killed backend just released can race its teardown.
async fn bind_retry(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot bind {addr}");
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, name: &str, body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert("x-served-by", name.parse().unwrap());
    r
}

async fn handle(
    req: Request<Incoming>,
    name: String,
    hits: Arc<AtomicUsize>,
    behaviour: Behaviour,
) -> Result<Response<BoxBody>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    // Routes may sit under any prefix (`/api/v1/headers` is `headers`).
    let all: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let start = all
        .iter()
        .position(|s| {
            matches!(
                *s,
                "health" | "slow" | "status" | "headers" | "upload" | "download" | "ws" | "static"
            )
        })
        .unwrap_or(all.len());
    let segments = &all[start..];
    let response = match segments {
        ["health"] => full(StatusCode::OK, &name, "ok"),
        ["ws", ..] => return Ok(websocket_echo(req, name)),
        ["static", rest @ ..] => {
            let private = rest.first() == Some(&"private");
            let mut r = full(
                StatusCode::OK,
                &name,
                format!("asset {} from {name}", rest.join("/")),
            );
            let cc = if private {
                "private, max-age=60"
            } else {
                "public, max-age=60"
            };
            r.headers_mut().insert("cache-control", cc.parse().unwrap());
            r.headers_mut()
                .insert("server", "TestBackend/1.0".parse().unwrap());
            r.headers_mut()
                .insert("x-powered-by", "tests".parse().unwrap());
            r
        }
        ["slow", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            full(StatusCode::OK, &name, name.clone())
        }
        ["status", code] => full(
            StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap(),
            &name,
            name.clone(),
        ),
        ["headers"] => {
            let map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            let body = serde_json::json!({"headers": map, "uri": req.uri().to_string(), "version": format!("{:?}", req.version())});
            full(StatusCode::OK, &name, body.to_string())
        }
        ["upload"] => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            full(StatusCode::OK, &name, total.to_string())
        }
        ["download", bytes] => {
            let total: u64 = bytes.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(0u64, move |sent| {
                let chunk = chunk.clone();
                async move {
                    if sent >= total {
                        return None;
                    }
                    let n = (total - sent).min(chunk.len() as u64);
                    Some((
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))),
                        sent + n,
                    ))
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut().insert("x-served-by", name.parse().unwrap());
            r
        }
        _ => {
            if !behaviour.delay.is_zero() {
                tokio::time::sleep(behaviour.delay).await;
            }
            full(StatusCode::OK, &name, name.clone())
        }
    };
    Ok(response)
}

/// Accepts a WebSocket upgrade; the first message names the backend, then it echoes.
fn websocket_echo(mut req: Request<Incoming>, name: String) -> Response<BoxBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return full(StatusCode::BAD_REQUEST, &name, "not a websocket request");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let who = name.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        if ws
            .send(Message::Text(format!("hello from {who}").into()))
            .await
            .is_err()
        {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) if ws.send(Message::Text(t.clone())).await.is_err() => return,
                Message::Close(_) => return,
                _ => {}
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("connection", "Upgrade".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        derive_accept_key(key.as_bytes()).parse().unwrap(),
    );
    h.insert("x-served-by", name.parse().unwrap());
    r
}

/// `[[upstreams.NAME.servers]]` lines for `backends` with the given weights.
pub fn servers(backends: &[&Backend], extra: &str) -> String {
    backends
        .iter()
        .map(|b| format!("{{ address = \"{}\"{extra} }}", b.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

/// RSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
