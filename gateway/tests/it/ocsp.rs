//! OCSP stapling against `openssl ocsp` as the responder: the gateway fetches and staples
//! the response (`openssl s_client -status` sees it), and a responder that goes away neither
//! removes the still-valid staple nor slows handshakes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use service_kit::client::{self, Target};
use service_kit::testkit::ServerProcess;

use crate::util::{free_tcp_port, servers, Backend, Fixture, GATEWAY};

/// Runs `openssl ARGS` (words split on spaces) in `dir`; its stdout.
fn openssl(dir: &Path, args: &str) -> String {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA, a leaf naming the responder at `port`, and the responder's index.
fn pki(dir: &Path, port: u16) {
    for key in ["ca.key", "leaf.key"] {
        openssl(
            dir,
            &format!("ecparam -name prime256v1 -genkey -noout -out {key}"),
        );
    }
    openssl(
        dir,
        "req -x509 -new -key ca.key -subj /CN=ocsp-test-ca -days 30 -out ca.crt",
    );
    openssl(
        dir,
        "req -new -key leaf.key -subj /CN=localhost -out leaf.csr",
    );
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName=DNS:localhost\nauthorityInfoAccess=OCSP;URI:http://127.0.0.1:{port}\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        "x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
         -extfile ext.cnf -out leaf.crt",
    );
    let leaf = std::fs::read_to_string(dir.join("leaf.crt")).unwrap();
    let ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    std::fs::write(dir.join("chain.crt"), format!("{leaf}{ca}")).unwrap();
    let serial = openssl(dir, "x509 -in leaf.crt -noout -serial");
    let serial = serial.trim().trim_start_matches("serial=");
    std::fs::write(
        dir.join("index.txt"),
        format!("V\t351231000000Z\t\t{serial}\tunknown\t/CN=localhost\n"),
    )
    .unwrap();
}

/// The responder process, killed on drop (also when the test fails).
struct Responder(Child);

impl Responder {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn responder(dir: &Path, port: u16) -> Responder {
    // Ready when it says so: a probe connection would stall it (it serves one connection
    // at a time and waits on an empty one).
    let log = dir.join("responder.log");
    let child = Command::new("openssl")
        .current_dir(dir)
        .args(["ocsp", "-index", "index.txt", "-port", &port.to_string()])
        .args(["-rsigner", "ca.crt", "-rkey", "ca.key", "-CA", "ca.crt"])
        .args(["-nmin", "5", "-ignore_err"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("waiting for OCSP client connections")
    {
        assert!(Instant::now() < deadline, "openssl ocsp did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Responder(child)
}

/// What `openssl s_client -status` says about the staple.
fn s_client_status(addr: SocketAddr) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            "-status",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Median time of `n` full TLS handshakes.
async fn handshake_median(addr: SocketAddr, ca: &Path, n: usize) -> Duration {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    times[n / 2]
}

async fn metrics(admin: SocketAddr) -> String {
    let target = Target::from_url(&format!("http://{admin}"), None)
        .await
        .unwrap();
    client::connect(&target)
        .await
        .unwrap()
        .get("/metrics")
        .await
        .unwrap()
        .text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staples_the_responders_answer_and_survives_the_responder_going_away() {
    if service_kit::prereq::tool("openssl", "apt-get install openssl").is_none() {
        return;
    }
    let fx = Fixture::new();
    let dir = fx.path("ocsp");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_tcp_port("127.0.0.1");
    pki(&dir, port);
    let mut ocsp = responder(&dir, port);
    let backend = Backend::start("app-1", &fx.pki).await;
    let config = fx.path("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[runtime]\nworker_threads = 1\nwatch_config = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [https]\nlisten = [\"127.0.0.1:0\"]\ncert = \"{}\"\nkey = \"{}\"\n\
             [upstream_tls]\nca = \"{}\"\n[upstreams.app]\nservers = [{}]\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"app\"\n",
            dir.join("chain.crt").display(),
            dir.join("leaf.key").display(),
            fx.pki.ca_cert.display(),
            servers(&[&backend], ""),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(GATEWAY);
    cmd.env_clear().arg("--config").arg(&config);
    let gw = ServerProcess::start(cmd);
    let https = gw.listener_addr("https");
    let admin = gw.listener_addr("admin");

    let deadline = Instant::now() + Duration::from_secs(20);
    while !metrics(admin).await.contains("\ngateway_ocsp_stapled 1") {
        assert!(
            Instant::now() < deadline,
            "no staple; output:\n{}",
            gw.output().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = s_client_status(https);
    assert!(
        status.contains("OCSP Response Status: successful"),
        "{status}\n{}",
        gw.output().join("\n")
    );
    assert!(status.contains("Cert Status: good"), "{status}");
    let text = metrics(admin).await;
    assert!(
        text.contains("gateway_ocsp_fetches_total{result=\"success\"} 1"),
        "{text}"
    );

    let ca = dir.join("ca.crt");
    let with_responder = handshake_median(https, &ca, 30).await;
    ocsp.stop();
    let without_responder = handshake_median(https, &ca, 30).await;
    println!(
        "median handshake: {with_responder:?} with the responder, {without_responder:?} without"
    );
    assert!(
        without_responder < with_responder * 3 + Duration::from_millis(20),
        "handshakes do not wait for the responder"
    );
    let status = s_client_status(https);
    assert!(
        status.contains("Cert Status: good"),
        "the last good staple stays: {status}"
    );
}
