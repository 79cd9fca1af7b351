//! DNS discovery against a real DNS server (`pebble-challtestsrv`, whose management API sets
//! the A records): servers join and leave the pool as the records change, under load with no
//! failed request, and a DNS server that goes away keeps the last good set.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::util::dns::Dns;
use crate::util::{Backend, Behaviour, Fixture};

const NAME: &str = "admin.discover.test";

async fn wait_for(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_follow_dns_under_load_and_survive_the_dns_server_going_away() {
    let Some(mut dns) = Dns::start() else {
        return;
    };
    let fx = Fixture::new();
    // Three servers on one port, as a headless Service's pods are.
    let first = Backend::start_at(
        "d1",
        &fx.pki,
        "127.0.0.11:0".parse().unwrap(),
        Behaviour::default(),
    )
    .await;
    let port = first.addr.port();
    let mut backends = vec![first];
    for (name, ip) in [("d2", "127.0.0.12"), ("d3", "127.0.0.13")] {
        let addr = format!("{ip}:{port}").parse().unwrap();
        backends.push(Backend::start_at(name, &fx.pki, addr, Behaviour::default()).await);
    }
    dns.set_a(NAME, &["127.0.0.11", "127.0.0.12"]).await;

    let body = format!(
        r#"
[dns]
resolvers = ["{resolver}"]

[upstreams.pool]
server_name = "localhost"
discover = {{ name = "{NAME}", port = {port}, interval = "200ms" }}

[[routes]]
prefix = "/"
upstream = "pool"
"#,
        resolver = dns.dns
    );
    let gw = Arc::new(fx.start_gateway(&body));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut conn = gw.connect().await;
    while backends[0].hits() == 0 || backends[1].hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "both discovered servers take traffic"
        );
        let _ = conn.get("/whoami").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backends[2].hits(), 0, "127.0.0.13 is not in DNS yet");

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (gw, stop, failures) = (gw.clone(), stop.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            let mut conn = gw.connect().await;
            while !stop.load(Ordering::SeqCst) {
                match conn.get("/whoami").await {
                    Ok(r) if r.status == StatusCode::OK => {}
                    other => {
                        eprintln!("failed request: {other:?}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }

    // .11 leaves, .13 joins.
    dns.set_a(NAME, &["127.0.0.12", "127.0.0.13"]).await;
    wait_for("the added server to take traffic", || {
        backends[2].hits() > 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = backends[0].hits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        backends[0].hits(),
        settled,
        "the removed server gets no new requests"
    );

    // The DNS server goes away: lookups fail (counted), the last good set keeps serving.
    dns.kill();
    let before = backends[1].hits() + backends[2].hits();
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let text = gw.admin_get("/metrics").await.text();
        if text.contains("gateway_dns_resolutions_total{result=\"error\",upstream=\"pool\"}") {
            break text;
        }
        assert!(Instant::now() < deadline, "no failed lookup counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(backends[1].hits() + backends[2].hits() > before + 20);
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no request failed");

    let line = |needle: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in metrics"))
            .to_string()
    };
    assert!(
        line("gateway_dns_resolutions_total{result=\"changed\",upstream=\"pool\"}").ends_with(" 2")
    );
    assert!(line("gateway_discovered_servers{upstream=\"pool\"}").ends_with(" 2"));
}
