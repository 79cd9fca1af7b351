//! ACME against a real CA: Debian's `pebble`, with `pebble-challtestsrv` as the DNS server it
//! resolves the test domain through (to the gateway's loopback address, or the pair's VIP).
//! First issuance, renewal of short-lived certificates with a hot swap under load (no failed
//! request), the CA going away (backoff, the old certificate keeps serving), and an order
//! across a failover of an HA pair sharing one storage directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use rustls_pki_types::{CertificateDer, ServerName};
use service_kit::client::{self, Target};
use service_kit::testkit::{ServerProcess, TestPki};

use crate::util::dns::Dns;
use crate::util::{free_tcp_port, free_udp_port, servers, Backend, Fixture, GATEWAY};

const DOMAIN: &str = "api.acme.test";

fn wait_port(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pebble and its DNS server; killed on drop.
struct Ca {
    pebble: Option<Child>,
    dns: Dns,
    listen: SocketAddr,
    directory: String,
    management: SocketAddr,
    pki_client: Arc<rustls::ClientConfig>,
    config: PathBuf,
    env: Vec<(&'static str, String)>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Ca {
    /// `validity`: lifetime of the certificates issued; `http_port`: where HTTP-01 is
    /// checked; `answer`: the address DOMAIN resolves to; `running`: start pebble now.
    async fn start(
        pki: &TestPki,
        dir: &Path,
        validity: Duration,
        http_port: u16,
        answer: &str,
        env: Vec<(&'static str, String)>,
        running: bool,
    ) -> Option<Ca> {
        service_kit::prereq::tool("pebble", "apt-get install pebble")?;
        let dns = Dns::start()?;
        dns.set_a(DOMAIN, &[answer]).await;
        let listen = loopback(free_tcp_port("127.0.0.1"));
        let management = loopback(free_tcp_port("127.0.0.1"));
        let config = dir.join("pebble.json");
        std::fs::write(
            &config,
            serde_json::json!({"pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": pki.server_cert,
                "privateKey": pki.server_key,
                "httpPort": http_port,
                "tlsPort": free_tcp_port("127.0.0.1"),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity.as_secs(),
            }})
            .to_string(),
        )
        .unwrap();
        let mut ca = Ca {
            pebble: None,
            dns,
            listen,
            directory: format!("https://localhost:{}/dir", listen.port()),
            management,
            pki_client: pki.client(),
            config,
            env,
        };
        if running {
            ca.start_pebble();
        }
        Some(ca)
    }

    fn start_pebble(&mut self) {
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&self.config)
            .arg("-dnsserver")
            .arg(self.dns.dns.to_string())
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.pebble = Some(cmd.spawn().unwrap());
        wait_port(self.listen, "pebble");
    }

    /// Pebble's root (changes with every pebble start).
    async fn root(&self) -> CertificateDer<'static> {
        let target = Target::from_url(
            &format!("https://localhost:{}", self.management.port()),
            Some(self.pki_client.clone()),
        )
        .await
        .unwrap();
        let r = client::connect(&target)
            .await
            .unwrap()
            .get("/roots/0")
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(&r.body).unwrap()
    }

    fn stop_pebble(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        self.stop_pebble();
    }
}

/// A client trusting only `root`, asking for `DOMAIN`.
fn trusting(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The serial of the certificate `addr` serves for `DOMAIN`, if it chains to `root`.
async fn served_serial(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Option<String> {
    // A full handshake: a resumed session reports the certificate of the session it resumes.
    let mut tls = (*tls).clone();
    tls.resumption = rustls::client::Resumption::disabled();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(DOMAIN).unwrap(), tcp)
        .await
        .ok()?;
    let leaf = stream.get_ref().1.peer_certificates()?.first()?.clone();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.raw_serial_as_string())
}

async fn until<T>(what: &str, limit: Duration, f: impl AsyncFnMut() -> Option<T>) -> T {
    until_or(what, limit, f, String::new).await
}

/// Like `until`, with `context()` (the gateways' logs) in the failure message.
async fn until_or<T>(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn admin_text(admin: SocketAddr, path: &str) -> String {
    let target = Target::from_url(&format!("http://{admin}"), None)
        .await
        .unwrap();
    client::connect(&target)
        .await
        .unwrap()
        .get(path)
        .await
        .unwrap()
        .text()
}

fn acme_section(ca: &Ca, fx: &Fixture, storage: &Path) -> String {
    format!(
        r#"[https.acme]
directory = "{dir}"
contact = ["mailto:ops@acme.test"]
domains = ["{DOMAIN}"]
storage = "{storage}"
ca = "{ca}"
retry_initial = "1s"
retry_max = "8s"
"#,
        dir = ca.directory,
        storage = storage.display(),
        ca = fx.pki.ca_cert.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_renews_under_load_and_keeps_serving_while_the_ca_is_down() {
    let fx = Fixture::new();
    let http_port = free_tcp_port("127.0.0.1");
    let Some(mut ca) = Ca::start(
        &fx.pki,
        fx.dir.path(),
        Duration::from_secs(24),
        http_port,
        "127.0.0.1",
        vec![("PEBBLE_VA_NOSLEEP", "1".into())],
        true,
    )
    .await
    else {
        return;
    };
    let backend = Backend::start("app-1", &fx.pki).await;
    let storage = fx.path("acme-storage");
    let config = fx.path("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[runtime]
worker_threads = 2
watch_config = false
[admin]
listen = "127.0.0.1:0"
[https]
listen = ["127.0.0.1:0"]
{acme}
[http]
listen = ["127.0.0.1:{http_port}"]
[upstream_tls]
ca = "{upstream_ca}"
[upstreams.app]
servers = [{servers}]
[[routes]]
prefix = "/"
upstream = "app"
"#,
            acme = acme_section(&ca, &fx, &storage),
            upstream_ca = fx.pki.ca_cert.display(),
            servers = servers(&[&backend], ""),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(GATEWAY);
    cmd.env_clear().arg("--config").arg(&config);
    let gw = ServerProcess::start(cmd);
    let https = gw.listener_addr("https");
    let admin = gw.listener_addr("admin");

    // Until the CA has issued, a stand-in is served and /-/ready says so.
    let started = Instant::now();
    let root = ca.root().await;
    let tls = trusting(&root);
    let first = until_or(
        "the first ACME certificate",
        Duration::from_secs(60),
        async || served_serial(https, tls.clone()).await,
        || gw.output().join("\n"),
    )
    .await;
    println!("first issuance took {:?}", started.elapsed());
    let ready = admin_text(admin, "/-/ready").await;
    assert!(ready.contains(r#""certificate":"acme""#), "{ready}");
    assert!(storage.join("certificate.pem").exists());

    // Load on new and kept connections while the 24 s certificate renews (at 16 s).
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for fresh in [false, true, true] {
        let (stop, failures, served, tls) =
            (stop.clone(), failures.clone(), served.clone(), tls.clone());
        load.push(tokio::spawn(async move {
            let target = Target {
                addr: https,
                authority: DOMAIN.into(),
                tls: Some((tls, ServerName::try_from(DOMAIN).unwrap().to_owned())),
                bind: None,
            };
            let mut conn = None;
            while !stop.load(Ordering::SeqCst) {
                if conn.is_none() || fresh {
                    conn = client::connect(&target).await.ok();
                }
                let ok = match conn.as_mut() {
                    Some(c) => {
                        matches!(c.get("/whoami").await, Ok(r) if r.status == StatusCode::OK)
                    }
                    None => false,
                };
                if ok {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.fetch_add(1, Ordering::SeqCst);
                    conn = None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let renewed = until_or(
        "the renewal",
        Duration::from_secs(45),
        async || {
            served_serial(https, tls.clone())
                .await
                .filter(|s| *s != first)
        },
        || gw.output().join("\n"),
    )
    .await;
    // A second of load on the new certificate, then the count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (
        served.load(Ordering::SeqCst),
        failures.load(Ordering::SeqCst),
    );
    println!("renewed {first} -> {renewed}: {ok} requests served, {failed} failed during the swap");
    assert!(ok > 100, "the load ran ({ok})");
    assert_eq!(failed, 0, "no request fails across the hot swap");
    let metrics = admin_text(admin, "/metrics").await;
    assert!(
        metric(&metrics, "gateway_acme_orders_total{result=\"success\"}") >= 2.0,
        "{metrics}"
    );

    // The CA goes away: the next renewal fails and backs off (1 s, 2 s, 4 s ...), and the
    // certificate in hand keeps serving.
    ca.stop_pebble();
    let failed_orders = until("failed renewals", Duration::from_secs(40), async || {
        let text = admin_text(admin, "/metrics").await;
        let n = metric(&text, "gateway_acme_consecutive_failures");
        (n >= 3.0).then_some(n)
    })
    .await;
    let still = served_serial(https, tls.clone()).await;
    assert_eq!(
        still.as_deref(),
        Some(renewed.as_str()),
        "the old certificate keeps serving"
    );
    let text = admin_text(admin, "/metrics").await;
    assert!(metric(&text, "gateway_acme_orders_total{result=\"error\"}") >= failed_orders);
    assert!(gw.output().iter().any(|l| l.contains("ACME order failed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_orders_once_and_an_order_survives_the_masters_death() {
    const VIP: &str = "127.0.2.100";
    let fx = Fixture::new();
    let http_port = free_tcp_port(VIP);
    let Some(mut ca) = Ca::start(
        &fx.pki,
        fx.dir.path(),
        Duration::from_secs(3600),
        http_port,
        VIP,
        // The CA validates 0-7 s after the challenge is ready: the master dies in between.
        vec![("PEBBLE_VA_SLEEPTIME", "8".into())],
        // Not yet: the pair settles (master and backup) before anyone can order.
        false,
    )
    .await
    else {
        return;
    };
    let backend = Backend::start("app-1", &fx.pki).await;
    let storage = fx.path("shared-acme");
    let https_port = free_tcp_port(VIP);
    let ha_ports = [free_udp_port("127.0.2.10"), free_udp_port("127.0.2.11")];
    let acme = acme_section(&ca, &fx, &storage);
    let start = |node: usize| {
        let me = ["127.0.2.10", "127.0.2.11"][node];
        let peer = ["127.0.2.11", "127.0.2.10"][node];
        let path = fx.path(&format!("gateway-{}.toml", node + 1));
        std::fs::write(
            &path,
            format!(
                r#"
[runtime]
worker_threads = 1
watch_config = false
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[https]
listen = ["{VIP}:{https_port}"]
{acme}
[http]
listen = ["{VIP}:{http_port}"]
[upstream_tls]
ca = "{upstream_ca}"
[ha]
name = "gateway-{n}"
priority = {priority}
address = "{me}"
port = {my_port}
peers = ["{peer}:{peer_port}"]
advert_interval = "100ms"
secret = "acme-pair-secret-0123456789"
vip = "{VIP}/32"
vip_mode = "bind"
[upstreams.app]
servers = [{servers}]
[[routes]]
prefix = "/"
upstream = "app"
"#,
                upstream_ca = fx.pki.ca_cert.display(),
                n = node + 1,
                priority = [150, 100][node],
                my_port = ha_ports[node],
                peer_port = ha_ports[1 - node],
                servers = servers(&[&backend], ""),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(GATEWAY);
        cmd.env_clear().arg("--config").arg(&path);
        ServerProcess::start(cmd)
    };

    // The pair settles: gateway-1 (the preferred master) holds the VIP and alone may order;
    // it fails while the CA is away. Then the CA comes up and gateway-1 orders.
    let g1 = start(0);
    let g1_admin = g1.listener_addr("admin");
    let g2 = start(1);
    let g2_admin = g2.listener_addr("admin");
    until("gateway-2 as backup", Duration::from_secs(20), async || {
        admin_text(g2_admin, "/-/ha")
            .await
            .contains(r#""state":"backup""#)
            .then_some(())
    })
    .await;
    until(
        "gateway-1 failing to reach the CA",
        Duration::from_secs(20),
        async || {
            let text = admin_text(g1_admin, "/metrics").await;
            (metric(&text, "gateway_acme_orders_total{result=\"error\"}") >= 1.0).then_some(())
        },
    )
    .await;
    let text = admin_text(g2_admin, "/metrics").await;
    assert_eq!(
        metric(&text, "gateway_acme_last_attempt_timestamp_seconds"),
        0.0,
        "the backup does not order"
    );
    ca.start_pebble();
    let lease = storage.join("lease.json");
    until(
        "gateway-1 to hold the order lease",
        Duration::from_secs(20),
        async || {
            std::fs::read_to_string(&lease)
                .ok()
                .filter(|l| l.contains("gateway-1"))
        },
    )
    .await;
    // The moment the challenge is published (the CA is told right after), the master dies.
    until("the challenge file", Duration::from_secs(30), async || {
        std::fs::read_dir(storage.join("challenges"))
            .ok()?
            .next()
            .map(|_| ())
    })
    .await;
    let status = Command::new("kill")
        .args(["-KILL", &g1.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed = Instant::now();

    // gateway-2 takes the VIP, answers the challenge from the shared storage, takes the
    // lease when gateway-1's expires, and finishes the order.
    let root = ca.root().await;
    let tls = trusting(&root);
    let https: SocketAddr = format!("{VIP}:{https_port}").parse().unwrap();
    let serial = until(
        "a certificate through the VIP",
        Duration::from_secs(90),
        async || served_serial(https, tls.clone()).await,
    )
    .await;
    println!(
        "certificate served by gateway-2 {:?} after gateway-1 died",
        killed.elapsed()
    );
    let resumed = g2
        .output()
        .iter()
        .any(|l| l.contains("resuming the stored ACME order"));
    println!("gateway-2 resumed gateway-1's order: {resumed}");
    for line in g2.output().iter().filter(|l| {
        l.contains("ACME")
            || l.contains("order")
            || l.contains("aster")
            || l.contains("listen")
            || l.contains("VIP")
    }) {
        println!("gateway-2: {line}");
    }
    let text = admin_text(g2_admin, "/metrics").await;
    assert!(
        metric(&text, "gateway_acme_orders_total{result=\"success\"}") >= 1.0,
        "{text}"
    );

    // gateway-1 comes back: it adopts the stored certificate without an order of its own,
    // and preempts back; the pair serves one certificate.
    drop(g1);
    let _ = g1_admin;
    let g1 = start(0);
    let g1_admin = g1.listener_addr("admin");
    until(
        "gateway-1 serving the stored certificate",
        Duration::from_secs(20),
        async || {
            admin_text(g1_admin, "/-/ready")
                .await
                .contains(r#""certificate":"acme""#)
                .then_some(())
        },
    )
    .await;
    let text = admin_text(g1_admin, "/metrics").await;
    assert_eq!(
        metric(&text, "gateway_acme_orders_total{result=\"success\"}"),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "gateway_acme_last_attempt_timestamp_seconds"),
        0.0
    );
    // gateway-1 preempts back: the certificate through the VIP is then gateway-1's.
    until(
        "gateway-1 to take the VIP back",
        Duration::from_secs(20),
        async || {
            admin_text(g1_admin, "/-/ha")
                .await
                .contains(r#""state":"master""#)
                .then_some(())
        },
    )
    .await;
    let after = until(
        "the VIP served again",
        Duration::from_secs(20),
        async || served_serial(https, tls.clone()).await,
    )
    .await;
    assert_eq!(after, serial, "both gateways serve the same certificate");
}
