//! A real DNS server for the tests: `pebble-challtestsrv`, whose management API sets the A
//! records it answers. Killed on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use service_kit::client::{connect, Target};

use super::{free_tcp_port, free_udp_port};

pub struct Dns {
    child: Child,
    /// Where it answers DNS (UDP and TCP).
    pub dns: SocketAddr,
    management: SocketAddr,
}

impl Dns {
    /// `None` (outside CI) when challtestsrv is not installed; under CI that fails the test.
    pub fn start() -> Option<Dns> {
        let program = service_kit::prereq::tool("pebble-challtestsrv", "apt-get install pebble")?;
        let port = free_udp_port("127.0.0.1");
        let dns: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1"))
            .parse()
            .unwrap();
        let child = Command::new(program)
            .args([
                "-dns01",
                &dns.to_string(),
                "-management",
                &management.to_string(),
            ])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(management).is_err() {
            assert!(Instant::now() < deadline, "challtestsrv did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Dns {
            child,
            dns,
            management,
        })
    }

    async fn post(&self, path: &str, body: String) {
        let target = Target::from_url(&format!("http://{}", self.management), None)
            .await
            .unwrap();
        let mut conn = connect(&target).await.unwrap();
        let r = conn
            .request(http::Method::POST, path, &[], body)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }

    /// Replaces the A records of `host`.
    pub async fn set_a(&self, host: &str, ips: &[&str]) {
        self.post("/clear-a", format!(r#"{{"host":"{host}."}}"#))
            .await;
        let list: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
        self.post(
            "/add-a",
            format!(r#"{{"host":"{host}.","addresses":[{}]}}"#, list.join(",")),
        )
        .await;
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.kill();
    }
}
