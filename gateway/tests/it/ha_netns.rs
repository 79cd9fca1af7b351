//! Interface mode for real: network namespaces made by the test (a bridge namespace, two
//! gateway namespaces, a client namespace, joined by veth pairs). The master adds the VIP to
//! its interface over netlink and announces it with gratuitous ARP; after `kill -9` the backup
//! takes the VIP and the client, which had learned the old master's MAC, reaches the new one.
//!
//! Needs root (CAP_NET_ADMIN) and iproute2's `ip`; skipped with a printed reason otherwise,
//! except under CI=true where not being able to run is a failure.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use service_kit::testkit::{ServerProcess, TestPki};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn can_run() -> Result<(), String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Err("not root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("iproute2's `ip` is not installed".into());
    }
    Ok(())
}

/// Namespaces and links; removed on drop.
struct Net {
    prefix: String,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn build() -> Net {
        let net = Net {
            prefix: format!("isha{}", std::process::id() % 100_000),
        };
        let br = net.ns("b");
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for (node, addr) in [
            ("g1", "10.77.0.11/24"),
            ("g2", "10.77.0.12/24"),
            ("c", "10.77.0.50/24"),
        ] {
            let ns = net.ns(node);
            ip(&["netns", "add", &ns]);
            let host_end = format!("v{node}");
            ip(&[
                "-n", &br, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &br, "link", "set", &host_end, "master", "br0"]);
            ip(&["-n", &br, "link", "set", &host_end, "up"]);
            ip(&["-n", &ns, "addr", "add", addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in ["g1", "g2", "c", "b"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(node)])
                .status();
        }
    }
}

fn config(node: u8, pki: &TestPki) -> String {
    let (me, peer, priority) = if node == 1 {
        ("10.77.0.11", "10.77.0.12", 150)
    } else {
        ("10.77.0.12", "10.77.0.11", 100)
    };
    format!(
        r#"
[runtime]
worker_threads = 1
watch_config = false
[admin]
listen = "0.0.0.0:9900"
[http]
listen = ["0.0.0.0:8080"]
[https]
listen = ["0.0.0.0:8443"]
cert = "{cert}"
key = "{key}"
[upstreams.app]
tls = false
servers = [{{ address = "127.0.0.1:9" }}]
[[routes]]
prefix = "/api"
upstream = "app"
[ha]
name = "gateway-{node}"
priority = {priority}
address = "{me}"
peers = ["{peer}:5405"]
advert_interval = "50ms"
secret = "netns-ha-test-secret-0123"
vip = "10.77.0.100/24"
vip_mode = "interface"
"#,
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
    )
}

/// Runs `work` on a thread inside network namespace `ns` (setns), with its own runtime.
fn in_netns<T: Send + 'static>(ns: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace fd kept open for the call.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        work()
    })
    .join()
    .unwrap()
}

/// From the client namespace: who answers `/-/ha` on the VIP (polled every 10 ms), and after
/// how long, giving up at `limit`.
fn who_answers(ns: &str, want: &'static str, limit: Duration) -> Duration {
    in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let started = Instant::now();
            loop {
                let got = service_kit::client::get(
                    "http://10.77.0.100:9900/-/ha",
                    None,
                    Duration::from_millis(200),
                )
                .await;
                if let Ok(resp) = got {
                    if resp
                        .json()
                        .ok()
                        .and_then(|v| v["name"].as_str().map(str::to_string))
                        .as_deref()
                        == Some(want)
                    {
                        return started.elapsed();
                    }
                }
                assert!(
                    started.elapsed() < limit,
                    "{want} not reached through the VIP within {limit:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    })
}

fn start(net: &Net, dir: &std::path::Path, node: u8, pki: &TestPki) -> ServerProcess {
    let path = dir.join(format!("gw{node}.toml"));
    std::fs::write(&path, config(node, pki)).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &net.ns(&format!("g{node}")),
        crate::util::GATEWAY,
        "--config",
    ])
    .arg(&path)
    .env("LOG_LEVEL", "info");
    ServerProcess::start(cmd)
}

#[test]
fn interface_mode_moves_the_vip_and_the_client_follows() {
    if !service_kit::prereq::require(can_run(), "run as root with iproute2 installed") {
        return;
    }
    let net = Net::build();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["localhost", "127.0.0.1"]);
    let mut gw1 = start(&net, dir.path(), 1, &pki);
    let gw2 = start(&net, dir.path(), 2, &pki);
    who_answers(&net.ns("c"), "gateway-1", Duration::from_secs(5));

    // The VIP is on gateway-1's interface and nowhere else.
    let addrs = |ns: &str| {
        String::from_utf8(
            Command::new("ip")
                .args(["-n", ns, "-4", "addr", "show", "dev", "eth0"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    assert!(addrs(&net.ns("g1")).contains("10.77.0.100/24"));
    // Both name their own address in ARP requests, never the VIP (set by the gateways).
    for g in ["g1", "g2"] {
        let announce = Command::new("ip")
            .args(["netns", "exec", &net.ns(g), "cat"])
            .arg("/proc/sys/net/ipv4/conf/eth0/arp_announce")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&announce.stdout).trim(), "2", "{g}");
    }
    assert!(!addrs(&net.ns("g2")).contains("10.77.0.100"));

    Command::new("kill")
        .args(["-9", &gw1.pid().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let gap = who_answers(&net.ns("c"), "gateway-2", Duration::from_secs(5));
    eprintln!(
        "failover gap after kill -9 (interface mode): {:?}",
        started.elapsed().max(gap)
    );
    assert!(gap < Duration::from_secs(3), "gap {gap:?}");
    assert!(addrs(&net.ns("g2")).contains("10.77.0.100/24"));
    assert!(gw2.wait_for_output("VIP acquired", Duration::from_secs(1)));
    let _ = gw1.wait_exit(Duration::from_secs(5));
}

/// Planned handovers while clients keep opening connections through an edge forwarder
/// (devctl's layout) to the VIP, and no request fails. A stop of the master (SIGTERM): it lets
/// its connections finish, refuses new ones (the edge tries again) and hands over, keeping the
/// VIP until the peer announces it. Then preemption back: the returning gateway-1 asks,
/// gateway-2 winds its connections down and yields the same way.
#[test]
fn planned_handovers_stop_and_preemption_back_fail_no_request() {
    if !service_kit::prereq::require(can_run(), "run as root with iproute2 installed") {
        return;
    }
    let net = Net::build();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path(), &["localhost", "127.0.0.1"]);
    let mut gw1 = start(&net, dir.path(), 1, &pki);
    let gw2 = start(&net, dir.path(), 2, &pki);
    who_answers(&net.ns("c"), "gateway-1", Duration::from_secs(5));
    let mut edge = Command::new("ip");
    edge.args([
        "netns",
        "exec",
        &net.ns("c"),
        crate::util::GATEWAY,
        "forward",
        "--map",
        "127.0.0.1:18443=10.77.0.100:8443",
    ])
    .env("LOG_LEVEL", "info");
    let edge = ServerProcess::start(edge);
    let tls = pki.client();
    let probe = tls.clone();
    in_netns(&net.ns("c"), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let started = Instant::now();
            while service_kit::client::get(
                "https://127.0.0.1:18443/api/x",
                Some(probe.clone()),
                Duration::from_secs(1),
            )
            .await
            .is_err()
            {
                assert!(started.elapsed() < Duration::from_secs(5), "edge not up");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = (0..4)
        .map(|_| {
            let (ns, stop, tls) = (net.ns("c"), stop.clone(), tls.clone());
            std::thread::spawn(move || {
                in_netns(&ns, move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let (mut ok, mut failed) = (0u32, Vec::new());
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            // A fresh connection per request.
                            match service_kit::client::get(
                                "https://127.0.0.1:18443/api/x",
                                Some(tls.clone()),
                                Duration::from_secs(2),
                            )
                            .await
                            {
                                Ok(_) => ok += 1,
                                Err(e) => failed.push((Instant::now(), format!("{e:?}"))),
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        (ok, failed)
                    })
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    Command::new("kill")
        .args(["-TERM", &gw1.pid().to_string()])
        .status()
        .unwrap();
    assert!(
        gw1.wait_exit(Duration::from_secs(10)).is_some(),
        "gateway-1 exits: {}",
        gw1.output().join("\n")
    );
    eprintln!(
        "gateway-1 drained and handed over in {:?}",
        stopped.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    who_answers(&net.ns("c"), "gateway-2", Duration::from_millis(500));

    let back = Instant::now();
    let _gw1 = start(&net, dir.path(), 1, &pki);
    who_answers(&net.ns("c"), "gateway-1", Duration::from_secs(10));
    eprintln!("gateway-1 back and master after {:?}", back.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for p in pollers {
        let (o, f) = p.join().unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "planned stop and preemption back: {ok} requests served, {} failed",
        failed.len()
    );
    let failed: Vec<String> = failed
        .into_iter()
        .map(|(at, e)| {
            let phase = if at < back { "stop" } else { "preemption" };
            let since = at.duration_since(if at < back { stopped } else { back });
            format!("{e} ({phase}, +{since:?})")
        })
        .collect();
    assert!(ok > 100, "the clients kept going: {ok}");
    let said = |p: &ServerProcess| {
        p.output()
            .into_iter()
            .filter(|l| {
                !l.contains("\"message\":\"request\"") && !l.contains("upstream connect failed")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        failed.is_empty(),
        "failed requests: {failed:?}\ngateway-1 (stopped) said:\n{}\ngateway-2 said:\n{}\nthe edge said:\n{}",
        said(&gw1),
        said(&gw2),
        said(&edge),
    );
}
