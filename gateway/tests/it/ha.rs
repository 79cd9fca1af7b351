//! The HA pair on loopback in bind mode: two real gateway processes share VIP 127.0.1.100;
//! the master binds the HTTPS listener on it. Failover on kill -9 and on SIGTERM, preemption,
//! forged and replayed adverts, and a healed partition.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{free_tcp_port, free_udp_port, servers, Backend, Fixture};
use gateway::ha::{encode, Advert, AdvertKey, PeerName};
use http::StatusCode;
use service_kit::client::{self, Target};
use service_kit::testkit::ServerProcess;

const VIP: &str = "127.0.1.100";
const SECRET: &str = "ha-test-secret-0123456789";

struct Pair {
    fx: Fixture,
    https_port: u16,
    ha_ports: [u16; 2],
    _backend: Backend,
    upstreams: String,
}

impl Pair {
    async fn new() -> Pair {
        let fx = Fixture::new();
        let backend = Backend::start("app-1", &fx.pki).await;
        let upstreams = format!(
            "[upstreams.app]\nservers = [{}]\n[[routes]]\nprefix = \"/\"\nupstream = \"app\"\n",
            servers(&[&backend], "")
        );
        Pair {
            https_port: free_tcp_port(VIP),
            ha_ports: [free_udp_port("127.0.1.10"), free_udp_port("127.0.1.11")],
            _backend: backend,
            upstreams,
            fx,
        }
    }

    fn config(&self, node: usize, priority: u8, preempt: bool) -> String {
        let me = ["127.0.1.10", "127.0.1.11"][node];
        let peer = ["127.0.1.11", "127.0.1.10"][node];
        format!(
            r#"
[runtime]
worker_threads = 1
watch_config = false
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[https]
listen = ["{VIP}:{port}"]
cert = "{cert}"
key = "{key}"
[upstream_tls]
ca = "{ca}"
[ha]
name = "gateway-{n}"
priority = {priority}
address = "{me}"
port = {my_port}
peers = ["{peer}:{peer_port}"]
advert_interval = "50ms"
preempt = {preempt}
secret = "{SECRET}"
vip = "{VIP}/32"
vip_mode = "bind"
{upstreams}"#,
            port = self.https_port,
            cert = self.fx.pki.server_cert.display(),
            key = self.fx.pki.server_key.display(),
            ca = self.fx.pki.ca_cert.display(),
            n = node + 1,
            my_port = self.ha_ports[node],
            peer_port = self.ha_ports[1 - node],
            upstreams = self.upstreams,
        )
    }

    fn start(&self, node: usize, priority: u8, preempt: bool) -> Node {
        let path = self.fx.path(&format!("gateway-{}.toml", node + 1));
        std::fs::write(&path, self.config(node, priority, preempt)).unwrap();
        let mut cmd = Command::new(crate::util::GATEWAY);
        cmd.env_clear()
            .env("GATEWAY_HA_TEST_HOOKS", "1")
            .arg("--config")
            .arg(&path);
        let process = ServerProcess::start(cmd);
        let admin = process.listener_addr("admin");
        Node { process, admin }
    }

    /// One request through the VIP on a fresh connection.
    async fn via_vip(&self) -> Result<client::Response, client::ClientError> {
        let target = Target {
            addr: SocketAddr::new(VIP.parse().unwrap(), self.https_port),
            authority: format!("localhost:{}", self.https_port),
            tls: Some((self.fx.pki.client(), "localhost".try_into().unwrap())),
            bind: None,
        };
        tokio::time::timeout(Duration::from_secs(2), async {
            client::connect(&target).await?.get("/whoami").await
        })
        .await
        .unwrap_or(Err(client::ClientError::Timeout(Duration::from_secs(2))))
    }

    /// Polls the VIP every 10 ms until a request succeeds; returns how long that took.
    async fn until_served(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if matches!(self.via_vip().await, Ok(r) if r.status == StatusCode::OK) {
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "VIP not served within {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

struct Node {
    process: ServerProcess,
    admin: SocketAddr,
}

impl Node {
    async fn ha(&self) -> serde_json::Value {
        client::get(
            &format!("http://{}/-/ha", self.admin),
            None,
            Duration::from_secs(2),
        )
        .await
        .unwrap()
        .json()
        .unwrap()
    }

    async fn state(&self) -> String {
        self.ha().await["state"].as_str().unwrap_or("").to_string()
    }

    async fn wait_state(&self, want: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.state().await == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "not {want} within {limit:?}: {}",
                self.ha().await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn kill9(&mut self) {
        Command::new("kill")
            .args(["-9", &self.process.pid().to_string()])
            .status()
            .unwrap();
        self.process
            .wait_exit(Duration::from_secs(5))
            .expect("killed");
    }

    async fn post(&self, path: &str) -> client::Response {
        let target = Target::from_url(&format!("http://{}", self.admin), None)
            .await
            .unwrap();
        client::connect(&target)
            .await
            .unwrap()
            .request(http::Method::POST, path, &[], bytes::Bytes::new())
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_fails_over_and_preemption_takes_the_vip_back() {
    let pair = Pair::new().await;
    let mut gw1 = pair.start(0, 150, true);
    gw1.wait_state("master", Duration::from_secs(5)).await;
    let gw2 = pair.start(1, 100, true);
    gw2.wait_state("backup", Duration::from_secs(5)).await;
    pair.until_served(Duration::from_secs(5)).await;
    let ha = gw1.ha().await;
    assert_eq!(ha["vip_held"], true);
    assert_eq!(ha["master"], "gateway-1");
    let deadline = Instant::now() + Duration::from_secs(2);
    while gw2.ha().await["master"] != "gateway-1" {
        assert!(
            Instant::now() < deadline,
            "the backup never named the master"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    gw1.kill9();
    let gap = pair.until_served(Duration::from_secs(5)).await;
    assert_eq!(gw2.state().await, "master");
    eprintln!("failover gap after kill -9 (bind mode): {gap:?}");
    assert!(gap < Duration::from_secs(2), "gap {gap:?}");

    // The old master comes back: with preempt it takes the VIP back.
    let gw1 = pair.start(0, 150, true);
    gw1.wait_state("master", Duration::from_secs(5)).await;
    gw2.wait_state("backup", Duration::from_secs(5)).await;
    pair.until_served(Duration::from_secs(5)).await;
    let transitions = gw2.ha().await["transitions"].as_array().unwrap().len();
    assert!(transitions >= 3, "init→backup→master→backup expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_preempt_the_returning_node_stays_backup() {
    let pair = Pair::new().await;
    let mut gw1 = pair.start(0, 150, false);
    gw1.wait_state("master", Duration::from_secs(5)).await;
    let gw2 = pair.start(1, 100, false);
    gw2.wait_state("backup", Duration::from_secs(5)).await;
    gw1.kill9();
    gw2.wait_state("master", Duration::from_secs(5)).await;
    let gw1 = pair.start(0, 150, false);
    gw1.wait_state("backup", Duration::from_secs(5)).await;
    // It stays backup while the current master keeps advertising.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(gw1.state().await, "backup");
    assert_eq!(gw2.state().await, "master");
    pair.until_served(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_hands_over_with_a_priority_zero_advert() {
    let pair = Pair::new().await;
    let mut gw1 = pair.start(0, 150, true);
    gw1.wait_state("master", Duration::from_secs(5)).await;
    let gw2 = pair.start(1, 100, true);
    gw2.wait_state("backup", Duration::from_secs(5)).await;
    pair.until_served(Duration::from_secs(5)).await;

    let stopped = Instant::now();
    gw1.process.terminate();
    // gateway-1 keeps serving while its connections finish; then gateway-2 takes over.
    gw2.wait_state("master", Duration::from_secs(3)).await;
    let gap = pair.until_served(Duration::from_secs(5)).await;
    let taken = stopped.elapsed();
    eprintln!("failover gap after SIGTERM (bind mode): {gap:?}");
    // The stopping master handed over (priority 0): the backup did not wait for it to go
    // quiet. Its connections finish first (at most 1 s), so the whole stop is bounded too.
    let ha = gw2.ha().await;
    let last = ha["transitions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["reason"], "master_stopped", "{ha}");
    assert!(taken < Duration::from_millis(1500), "took {taken:?}");
    assert_eq!(
        gw1.process
            .wait_exit(Duration::from_secs(10))
            .unwrap()
            .code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_adverts_change_nothing() {
    let pair = Pair::new().await;
    let gw1 = pair.start(0, 150, true);
    gw1.wait_state("master", Duration::from_secs(5)).await;
    let gw2 = pair.start(1, 100, true);
    gw2.wait_state("backup", Duration::from_secs(5)).await;

    let socket = std::net::UdpSocket::bind("127.0.1.12:0").unwrap();
    let target = SocketAddr::new("127.0.1.10".parse().unwrap(), pair.ha_ports[0]);
    let advert = |name: &str, priority: u8| Advert {
        from_addr: "127.0.1.12".parse::<IpAddr>().unwrap(),
        from_name: PeerName::new(name).unwrap(),
        priority,
        interval: Duration::from_millis(100),
    };
    // Forged: a priority-254 claim signed with the wrong secret.
    let wrong = AdvertKey::new(b"not-the-shared-secret-at-all").unwrap();
    for i in 0..20u64 {
        socket
            .send_to(
                &encode(&advert("intruder", 254), 10_000_000_000_000_000 + i, &wrong),
                target,
            )
            .unwrap();
    }
    // Replayed: correctly signed (as if captured earlier) but with an old counter.
    let right = AdvertKey::new(SECRET.as_bytes()).unwrap();
    for i in 0..20u64 {
        socket
            .send_to(&encode(&advert("gateway-2", 254), 1 + i, &right), target)
            .unwrap();
    }
    // Garbage.
    socket.send_to(b"hello", target).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw1.state().await, "master");
    assert_eq!(gw2.state().await, "backup");
    let ha = gw1.ha().await;
    assert!(ha["adverts_rejected"].as_u64().unwrap() >= 41, "{ha}");
    let metrics = client::get(
        &format!("http://{}/metrics", gw1.admin),
        None,
        Duration::from_secs(2),
    )
    .await
    .unwrap()
    .text();
    assert!(
        metrics.contains(r#"gateway_ha_adverts_rejected_total{reason="invalid"} 21"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_ha_adverts_rejected_total{reason="replayed"} 20"#),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_ha_master 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_makes_two_masters_and_healing_leaves_one() {
    let pair = Pair::new().await;
    let gw1 = pair.start(0, 150, true);
    gw1.wait_state("master", Duration::from_secs(5)).await;
    let gw2 = pair.start(1, 100, true);
    gw2.wait_state("backup", Duration::from_secs(5)).await;

    assert_eq!(
        gw1.post("/-/ha/drop-adverts?enabled=true").await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw2.post("/-/ha/drop-adverts?enabled=true").await.status,
        StatusCode::OK
    );
    gw2.wait_state("master", Duration::from_secs(3)).await;
    assert_eq!(
        gw1.state().await,
        "master",
        "both are master while partitioned"
    );

    gw1.post("/-/ha/drop-adverts?enabled=false").await;
    gw2.post("/-/ha/drop-adverts?enabled=false").await;
    let healed = gw2.wait_state("backup", Duration::from_secs(2)).await;
    eprintln!("partition healed in {healed:?}");
    assert_eq!(gw1.state().await, "master");
    pair.until_served(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_failover_while_the_machine_is_saturated() {
    let pair = std::sync::Arc::new(Pair::new().await);
    let gw1 = pair.start(0, 150, true);
    gw1.wait_state("master", Duration::from_secs(5)).await;
    let gw2 = pair.start(1, 100, true);
    gw2.wait_state("backup", Duration::from_secs(5)).await;
    let before = gw2.ha().await["transitions"].as_array().unwrap().len();

    // Both cores busy: spinning threads plus request loops through the VIP.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    let mut loads = Vec::new();
    for _ in 0..4 {
        let (pair, stop) = (pair.clone(), stop.clone());
        loads.push(tokio::spawn(async move {
            let mut served = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if pair.via_vip().await.is_ok() {
                    served += 1;
                }
            }
            served
        }));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for l in loads {
        served += l.await.unwrap();
    }
    for s in spinners {
        s.join().unwrap();
    }
    assert!(served > 0);
    assert_eq!(gw1.state().await, "master");
    assert_eq!(gw2.state().await, "backup");
    let after = gw2.ha().await["transitions"].as_array().unwrap().len();
    assert_eq!(
        before,
        after,
        "the backup changed state under load: {}",
        gw2.ha().await
    );
}
