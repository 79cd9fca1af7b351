//! The gateway binary end to end: real TLS on both sides, in-test HTTPS backends, the real
//! admin API. Balancing order, failover, error shapes, forwarding, reload and large bodies.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::{poll_until, servers, Backend, Behaviour, Fixture, GATEWAY};
use bytes::Bytes;
use gateway::balance::{Algorithm, Attempt, Outcome, Pool, ServerSpec};
use http::{Method, StatusCode};
use service_kit::client;

fn route(prefix: &str, upstream: &str) -> String {
    format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n")
}

fn assert_json_error(resp: &client::Response, status: u16, code: &str) {
    assert_eq!(resp.status.as_u16(), status, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v = resp.json().unwrap();
    assert_eq!(v["error"]["status"], status);
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(
        v["error"]["request_id"],
        resp.header("x-request-id").unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_nginx_smooth_order() {
    let fx = Fixture::new();
    let weights = [100u32, 100, 100, 75, 75];
    let mut backends = Vec::new();
    for i in 0..5 {
        backends.push(Backend::start(&format!("b{i}"), &fx.pki).await);
    }
    let list: Vec<String> = backends
        .iter()
        .zip(weights)
        .map(|(b, w)| format!("{{ address = \"{}\", weight = {w} }}", b.addr))
        .collect();
    let gw = fx.start_gateway(&format!(
        "[upstreams.admin]\nservers = [{}]\n{}",
        list.join(", "),
        route("/", "admin")
    ));

    // The sequence NGINX's algorithm gives, from the pure implementation.
    let mut pool = Pool::new(
        Algorithm::RoundRobin,
        (0..5).map(|i| ServerSpec::new(format!("b{i}")).with_weight(weights[i])),
    );
    let now = Instant::now();
    let expected: Vec<String> = (0..450)
        .map(|_| {
            let id = pool.select(now, &mut Attempt::new(), None).unwrap();
            let key = pool.key(id).unwrap().to_string();
            pool.release(id, now, Outcome::Success);
            key
        })
        .collect();

    let mut conn = gw.connect().await;
    let mut observed = Vec::new();
    for _ in 0..450 {
        let resp = conn.get("/whoami").await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        observed.push(resp.header("x-served-by").unwrap().to_string());
    }
    assert_eq!(observed, expected);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for name in &observed {
        *counts.entry(name).or_default() += 1;
    }
    for (i, w) in weights.iter().enumerate() {
        assert_eq!(counts[format!("b{i}").as_str()], *w as usize);
    }
    // No bursts: never more than two in a row on one server.
    assert!(observed.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_fewer_requests_to_a_slow_server() {
    let fx = Fixture::new();
    let slow = Backend::start_with(
        "slow",
        &fx.pki,
        Behaviour::delayed(Duration::from_millis(250)),
    )
    .await;
    let fast = Backend::start("fast", &fx.pki).await;
    let gw = Arc::new(fx.start_gateway(&format!(
        "[upstreams.customer]\nalgorithm = \"least_conn\"\nservers = [{}]\n{}",
        servers(&[&slow, &fast], ""),
        route("/", "customer")
    )));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = gw.connect().await;
            for _ in 0..6 {
                assert_eq!(conn.get("/work").await.unwrap().status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(slow.hits() + fast.hits(), 48);
    assert!(
        fast.hits() >= 3 * slow.hits(),
        "fast {} vs slow {}",
        fast.hits(),
        slow.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keeps_a_client_on_one_server() {
    let fx = Fixture::new();
    let mut backends = Vec::new();
    for i in 0..4 {
        backends.push(Backend::start(&format!("h{i}"), &fx.pki).await);
    }
    let refs: Vec<&Backend> = backends.iter().collect();
    let gw = fx.start_gateway(&format!(
        "[upstreams.sticky]\nalgorithm = \"hash\"\nhash_key = \"header:x-user\"\nservers = [{}]\n{}",
        servers(&refs, ""),
        route("/", "sticky")
    ));
    let mut conn = gw.connect().await;
    let mut homes = HashMap::new();
    for user in (0..12).map(|i| format!("user-{i}")) {
        for _ in 0..10 {
            let resp = conn
                .request(Method::GET, "/whoami", &[("x-user", &user)], Bytes::new())
                .await
                .unwrap();
            let served = resp.header("x-served-by").unwrap().to_string();
            let home = homes.entry(user.clone()).or_insert_with(|| served.clone());
            assert_eq!(*home, served, "{user} moved");
        }
    }
    let distinct: std::collections::HashSet<_> = homes.values().collect();
    assert!(distinct.len() >= 2, "12 users all on one server: {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_costs_no_request_and_comes_back() {
    let fx = Fixture::new();
    let b0 = Backend::start("k0", &fx.pki).await;
    let b1 = Backend::start("k1", &fx.pki).await;
    let b2 = Backend::start("k2", &fx.pki).await;
    let gw = fx.start_gateway(&format!(
        "[upstreams.pool]\nkeepalive = 16\nservers = [{}]\n{}",
        servers(&[&b0, &b1, &b2], ", max_fails = 1, fail_timeout = \"1s\""),
        route("/", "pool")
    ));
    let mut conn = gw.connect().await;
    for i in 0..150 {
        if i == 40 {
            b1.kill();
        }
        let resp = conn.get("/whoami").await.unwrap();
        assert_eq!(resp.status, StatusCode::OK, "request {i}: {}", resp.text());
    }
    let (state, fails, _) = gw.server_state("pool", b1.addr).await;
    assert!(
        state == "failed" || fails >= 1,
        "state {state}, fails {fails}"
    );

    // Back on the same address: after fail_timeout one probe request goes through, succeeds,
    // and the server is in rotation again.
    let b1 = Backend::start_at("k1-again", &fx.pki, b1.addr, Behaviour::default()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b1.hits() == 0 {
        assert!(Instant::now() < deadline, "k1 never came back");
        assert_eq!(conn.get("/whoami").await.unwrap().status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (state, fails, _) = gw.server_state("pool", b1.addr).await;
    assert_eq!((state.as_str(), fails), ("up", 0));

    // Everything down: the first request tries every server (502), then none is left (503).
    b0.kill();
    b1.kill();
    b2.kill();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = conn.get("/whoami").await.unwrap();
        statuses.push(resp.status.as_u16());
        match resp.status.as_u16() {
            502 => assert_json_error(&resp, 502, "bad_gateway"),
            503 => assert_json_error(&resp, 503, "no_live_upstream"),
            other => panic!("unexpected {other}: {}", resp.text()),
        }
    }
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_forwarding_and_every_error_as_json() {
    let fx = Fixture::new();
    let admin = Backend::start("admin-1", &fx.pki).await;
    let customer = Backend::start("customer-1", &fx.pki).await;
    let slow = Backend::start("slow-1", &fx.pki).await;
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::create_dir_all(fx.path("acme")).unwrap();
    std::fs::write(fx.path("acme").join("tok-123_x"), "challenge-content").unwrap();
    let gw = fx.start_gateway(&format!(
        r#"
[upstreams.admin]
servers = [{{ address = "{admin}" }}]
[upstreams.customer]
algorithm = "least_conn"
servers = [{{ address = "{customer}" }}]
[upstreams.slow]
tries = 1
read_timeout = "300ms"
servers = [{{ address = "{slow}" }}]
[upstreams.dead]
servers = [{{ address = "{dead_port}" }}]
[upstreams.off]
servers = [{{ address = "{customer}", down = true }}]
[[routes]]
prefix = "/api/v1/admin"
upstream = "admin"
[[routes]]
prefix = "/"
host = "customer.local"
upstream = "customer"
[[routes]]
prefix = "/api/v1"
upstream = "customer"
[[routes]]
prefix = "/slow"
upstream = "slow"
[[routes]]
prefix = "/dead"
upstream = "dead"
[[routes]]
prefix = "/off"
upstream = "off"
"#,
        admin = admin.addr,
        customer = customer.addr,
        slow = slow.addr,
    ));

    let mut h2 = gw.connect().await;
    assert!(h2.is_h2());
    let served = |r: &client::Response| r.header("x-served-by").unwrap_or("-").to_string();

    // Longest prefix, after normalization, case-insensitively.
    for (path, want) in [
        ("/api/v1/admin/users", "admin-1"),
        ("/api/v1/x/../admin/users", "admin-1"),
        ("/api/v1//admin/./users", "admin-1"),
        ("/api/v1/%61dmin/users", "admin-1"),
        ("/api/v1/%2e%2e/v1/admin/users", "admin-1"),
        ("/API/V1/ADMIN/users", "admin-1"),
        ("/api/v1/administrator", "customer-1"),
        ("/api/v1/consultations", "customer-1"),
    ] {
        let resp = h2.get(path).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK, "{path}");
        assert_eq!(resp.version, http::Version::HTTP_2);
        assert_eq!(served(&resp), want, "{path}");
    }
    let by_host = h2
        .request(
            Method::GET,
            "/anything",
            &[("host", "customer.local")],
            Bytes::new(),
        )
        .await;
    // h2 carries the host in :authority; use HTTP/1.1 for a Host-routed request.
    drop(by_host);
    let mut h1 = gw.connect_h1(&fx.pki).await;
    let resp = h1
        .request(
            Method::GET,
            "/anything",
            &[("host", "customer.local")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(served(&resp), "customer-1");

    // Forwarding headers and request ids, as the backend saw them.
    let resp = h2
        .request(
            Method::GET,
            "/api/v1/admin/../headers",
            &[
                ("x-request-id", "trace-7"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
            Bytes::new(),
        )
        .await;
    let resp = resp.unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.header("x-request-id"), Some("trace-7"));
    let seen = resp.json().unwrap();
    let h = &seen["headers"];
    assert_eq!(h["x-request-id"], "trace-7");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["host"], format!("localhost:{}", gw.https.port()));
    assert_eq!(
        h["x-forwarded-host"],
        format!("localhost:{}", gw.https.port())
    );
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["uri"], "/api/v1/headers");

    let resp = h2
        .request(
            Method::GET,
            "/api/v1/headers",
            &[("x-request-id", "bad id!")],
            Bytes::new(),
        )
        .await
        .unwrap();
    let id = resp.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(resp.json().unwrap()["headers"]["x-request-id"], id);

    // Each error, as JSON with the request id.
    assert_json_error(&h2.get("/api%2Fv1/admin").await.unwrap(), 400, "bad_path");
    assert_json_error(&h2.get("/a/../../etc").await.unwrap(), 400, "bad_path");
    assert_json_error(&h2.get("/nowhere").await.unwrap(), 404, "no_route");
    assert_json_error(&h2.get("/dead/x").await.unwrap(), 502, "bad_gateway");
    assert_json_error(&h2.get("/off/x").await.unwrap(), 503, "no_live_upstream");
    assert_json_error(
        &h2.get("/slow/2000").await.unwrap(),
        504,
        "upstream_timeout",
    );
    // An upstream's own error passes through untouched.
    let passed = h2.get("/api/v1/status/418").await.unwrap();
    assert_eq!(passed.status.as_u16(), 418);
    assert_eq!(served(&passed), "customer-1");

    // Plain HTTP: 301 to HTTPS with host, path and query; ACME challenges served.
    let base = format!("http://127.0.0.1:{}", gw.http.port());
    let target = client::Target::from_url(&base, None).await.unwrap();
    let mut plain = client::connect(&target).await.unwrap();
    let resp = plain
        .request(
            Method::GET,
            "/api/v1/x?q=1&r=2",
            &[("host", "api.insightserenity.com:8080")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        resp.header("location"),
        Some("https://api.insightserenity.com:8443/api/v1/x?q=1&r=2")
    );
    let resp = plain
        .get("/.well-known/acme-challenge/tok-123_x")
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), "challenge-content");
    assert_json_error(
        &plain
            .get("/.well-known/acme-challenge/missing")
            .await
            .unwrap(),
        404,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_nothing_and_bad_configs_are_refused() {
    let fx = Fixture::new();
    let b0 = Backend::start("r0", &fx.pki).await;
    let b1 = Backend::start("r1", &fx.pki).await;
    let b2 = Backend::start("r2", &fx.pki).await;
    let config = |list: &str, extra: &str| {
        format!(
            "[upstreams.pool]\nservers = [{list}]\n{}{extra}",
            route("/", "pool")
        )
    };
    let gw = Arc::new(fx.start_gateway(&config(&servers(&[&b0, &b1], ""), "")));

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (gw, stop, failures, done) = (gw.clone(), stop.clone(), failures.clone(), done.clone());
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
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let wait_for = |pred: &dyn Fn() -> bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !pred() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Add a server through the admin API.
    fx.write_config(&config(&servers(&[&b0, &b1, &b2], ""), ""));
    let resp = gw.reload().await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    wait_for(&|| b2.hits() > 20, "the added server to take traffic");

    // A bad config is refused with the reason; the old one keeps serving.
    std::fs::write(&gw.config, "this is = not [valid").unwrap();
    let resp = gw.reload().await;
    assert_json_error(&resp, 400, "config_rejected");
    let before = done.load(Ordering::SeqCst);
    wait_for(
        &|| done.load(Ordering::SeqCst) > before + 50,
        "traffic after a rejected reload",
    );

    // Remove a server with SIGHUP; a new listener appears without disturbing existing ones.
    let head = fx.config_head().replace(
        "listen = [\"127.0.0.1:0\"]\ncert",
        "listen = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\ncert",
    );
    assert!(head.contains("127.0.0.2:0"));
    std::fs::write(&gw.config, head + &config(&servers(&[&b1, &b2], ""), "")).unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &gw.process.pid().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(gw
        .process
        .wait_for_output("127.0.0.2:", Duration::from_secs(10)));
    let settled = b0.hits();
    std::thread::sleep(Duration::from_millis(300));
    let after = b0.hits();
    wait_for(
        &|| b1.hits() > 0 && b2.hits() > after,
        "traffic on the remaining servers",
    );
    assert!(after - settled <= 3, "removed server still gets traffic");
    let second = gw
        .process
        .output()
        .iter()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let addr = v["addr"].as_str()?;
            addr.starts_with("127.0.0.2:")
                .then(|| addr.parse::<std::net::SocketAddr>().ok())?
        })
        .unwrap();
    let url = format!("https://localhost:{}", second.port());
    let target = client::Target {
        addr: second,
        authority: url.trim_start_matches("https://").to_string(),
        tls: Some((fx.pki.client(), "localhost".try_into().unwrap())),
        bind: None,
    };
    let mut on_second = client::connect(&target).await.unwrap();
    assert_eq!(
        on_second.get("/whoami").await.unwrap().status,
        StatusCode::OK
    );

    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
    assert!(done.load(Ordering::SeqCst) > 100);
    let metrics = gw.admin_get("/metrics").await.text();
    assert!(metrics.contains(r#"gateway_config_reloads_total{result="failure"} 1"#));
    assert!(metrics.contains(r#"gateway_config_reloads_total{result="success"} 3"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_bounded_memory() {
    let fx = Fixture::new();
    let b = Backend::start("big", &fx.pki).await;
    let gw = fx.start_gateway(&format!(
        "[upstreams.pool]\nread_timeout = \"120s\"\nservers = [{}]\n{}client_max_body_size = \"1g\"\n",
        servers(&[&b], ""),
        route("/", "pool")
    ));
    let pid = gw.process.pid();
    let mut conn = gw.connect_h1(&fx.pki).await;
    assert_eq!(conn.get("/whoami").await.unwrap().status, StatusCode::OK);
    let baseline = crate::util::rss_kib(pid);

    const SIZE: usize = 256 << 20;
    let resp = conn
        .request(Method::GET, &format!("/download/{SIZE}"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(resp.body.len(), SIZE);
    let body = Bytes::from(vec![b'u'; SIZE]);
    let resp = conn
        .request(Method::POST, "/upload", &[], body)
        .await
        .unwrap();
    assert_eq!(resp.text(), SIZE.to_string());
    let grown = crate::util::rss_kib(pid).saturating_sub(baseline);
    assert!(
        grown < 48 * 1024,
        "gateway RSS grew by {grown} KiB while streaming 2 x 256 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_metrics_and_graceful_stop() {
    let fx = Fixture::new();
    let b = Backend::start("m1", &fx.pki).await;
    let mut gw = fx.start_gateway(&format!(
        "[upstreams.pool]\nservers = [{}]\n[upstreams.pool.health_check]\npath = \"/health\"\ninterval = \"200ms\"\n{}",
        servers(&[&b], ""),
        route("/", "pool")
    ));
    assert_eq!(gw.admin_get("/-/healthy").await.status, StatusCode::OK);
    assert_eq!(gw.admin_get("/-/ready").await.status, StatusCode::OK);
    let ups = gw.admin_get("/-/upstreams").await.json().unwrap();
    assert_eq!(ups["upstreams"]["pool"]["algorithm"], "round_robin");
    assert_eq!(ups["upstreams"]["pool"]["servers"][0]["state"], "up");
    assert_eq!(gw.admin_get("/-/nope").await.status, StatusCode::NOT_FOUND);

    let mut conn = gw.connect().await;
    for _ in 0..5 {
        conn.get("/whoami").await.unwrap();
    }
    let text = gw.admin_get("/metrics").await.text();
    for needle in [
        r#"gateway_requests_total{code="2xx",route="/"} 5"#,
        r#"gateway_upstream_requests_total{outcome="ok",server=""#,
        r#"gateway_upstream_server_up{server=""#,
        r#"gateway_tls_handshakes_total{version="TLSv1.3"}"#,
        "gateway_request_duration_seconds_bucket",
        r#"build_info{service="gateway""#,
        r#"tls_certificate_not_after_seconds{certificate="server"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    service_kit::testkit::promtool_check(&text, fx.dir.path());

    // Health checks probe the backend.
    let deadline = Instant::now() + Duration::from_secs(5);
    let start_hits = b.hits();
    while b.hits() < start_hits + 3 {
        assert!(Instant::now() < deadline, "no health probes seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM: an in-flight request completes, then the process exits 0.
    let slow = tokio::spawn(async move { conn.get("/slow/1500").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.process.terminate();
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    let status = gw.process.wait_exit(Duration::from_secs(15)).expect("exit");
    assert_eq!(status.code(), Some(0));
    assert!(gw
        .process
        .wait_for_output("drained cleanly", Duration::from_secs(1)));
}

#[test]
fn check_command_and_start_errors() {
    let fx = Fixture::new();
    let good = fx.write_config(&format!(
        "[upstreams.pool]\nservers = [{{ address = \"127.0.0.1:9\" }}]\n{}",
        route("/", "pool")
    ));
    let out = Command::new(GATEWAY)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));

    let text = std::fs::read_to_string(&good).unwrap();
    let cases = [
        (
            text.replace("[admin]", "[admin]\ncolour = \"blue\""),
            "unknown field `colour`",
        ),
        (
            text.replace(
                &fx.pki.server_cert.display().to_string(),
                "/nonexistent.crt",
            ),
            "cannot read TLS certificate /nonexistent.crt",
        ),
        (
            text.replace("upstream = \"pool\"", "upstream = \"ghost\""),
            "unknown upstream",
        ),
    ];
    for (bad, expected) in cases {
        std::fs::write(&good, &bad).unwrap();
        let out = Command::new(GATEWAY)
            .args(["check", "--config"])
            .arg(&good)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1);
        // Starting with it is refused too, with exit code 2.
        let out = Command::new(GATEWAY)
            .env_clear()
            .arg("--config")
            .arg(&good)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(GATEWAY)
        .args(["healthcheck", "--url", "http://127.0.0.1:9/-/healthy"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saving_the_config_file_reloads_it() {
    let fx = Fixture::new();
    let b0 = Backend::start("w0", &fx.pki).await;
    let b1 = Backend::start("w1", &fx.pki).await;
    let body = |list: &str| {
        format!(
            "[upstreams.pool]\nservers = [{list}]\n{}",
            route("/", "pool")
        )
    };
    let gw = fx.start_gateway(&body(&servers(&[&b0], "")));
    // The fixture turns polling off; turn it on and start over with the same file.
    let text = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace("watch_config = false", "watch_config = true");
    drop(gw);
    std::fs::write(fx.path("gateway.toml"), &text).unwrap();
    let mut cmd = Command::new(GATEWAY);
    cmd.env_clear().arg("--config").arg(fx.path("gateway.toml"));
    let process = service_kit::testkit::ServerProcess::start(cmd);
    let https = process.listener_addr("https");
    let url = format!("https://localhost:{}", https.port());
    let mut conn = client::connect(
        &client::Target::from_url(&url, Some(fx.pki.client()))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        conn.get("/whoami").await.unwrap().header("x-served-by"),
        Some("w0")
    );

    std::fs::write(
        fx.path("gateway.toml"),
        text.replace(&b0.addr.to_string(), &b1.addr.to_string()),
    )
    .unwrap();
    assert!(
        process.wait_for_output("file change", Duration::from_secs(10)),
        "no reload on save"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if conn.get("/whoami").await.unwrap().header("x-served-by") == Some("w1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the saved config never took effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = process.output();
    let access = lines
        .iter()
        .find(|l| l.contains("\"message\":\"request\""))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(access).unwrap();
    for field in [
        "request_id",
        "client",
        "method",
        "path",
        "status",
        "bytes",
        "duration_ms",
        "upstream",
        "upstream_status",
        "tries",
    ] {
        assert!(!v[field].is_null(), "access log lacks {field}: {access}");
    }
}

/// Both threading models serve concurrent clients and keep upstream connections alive; with
/// thread per core the worker threads exist and each reuses the connections it dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_runtime_models_serve_and_reuse_upstream_connections() {
    for model in ["thread_per_core", "work_stealing"] {
        let fx = Fixture::new();
        let backend = Backend::start("b0", &fx.pki).await;
        let gw = fx.start_gateway_with_model(
            model,
            &format!(
                "[upstreams.pool]\nkeepalive = 64\nservers = [{{ address = \"{}\" }}]\n{}",
                backend.addr,
                route("/", "pool")
            ),
        );
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", gw.process.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .collect();
        let workers = threads
            .iter()
            .filter(|t| t.starts_with("gateway-worke"))
            .count();
        assert_eq!(
            workers,
            if model == "thread_per_core" { 2 } else { 0 },
            "{model}: threads {threads:?}"
        );

        const CLIENTS: usize = 16;
        const REQUESTS: usize = 25;
        let mut conns = Vec::new();
        for _ in 0..CLIENTS {
            let mut conn = gw.connect().await;
            assert_eq!(conn.get("/whoami").await.unwrap().status, StatusCode::OK);
            conns.push(conn);
        }
        // Open connections are spread evenly over the workers.
        let metrics = gw.admin_get("/metrics").await.text();
        let per_worker: Vec<u64> = metrics
            .lines()
            .filter(|l| l.starts_with("gateway_worker_client_connections{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        if model == "thread_per_core" {
            assert_eq!(per_worker, [8, 8], "{metrics}");
        } else {
            assert!(per_worker.is_empty(), "{per_worker:?}");
        }
        let mut tasks = tokio::task::JoinSet::new();
        for mut conn in conns {
            tasks.spawn(async move {
                let mut ok = 0;
                for _ in 0..REQUESTS {
                    let resp = conn.get("/whoami").await.unwrap();
                    assert_eq!(resp.status, StatusCode::OK);
                    assert_eq!(resp.header("x-served-by"), Some("b0"));
                    ok += 1;
                }
                ok
            });
        }
        let mut served = 0;
        while let Some(done) = tasks.join_next().await {
            served += done.unwrap();
        }
        assert_eq!(served, CLIENTS * REQUESTS, "{model}");
        assert_eq!(backend.hits(), CLIENTS * (REQUESTS + 1), "{model}");
        // At most CLIENTS requests are in flight at once; each worker keeps its own idle
        // connections, so at most 2 × CLIENTS connections were ever needed.
        let accepted = backend.accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=2 * CLIENTS).contains(&accepted),
            "{model}: {accepted} upstream connections for {served} requests"
        );
        let upstreams = gw.admin_get("/-/upstreams").await.json().unwrap();
        let idle = upstreams["upstreams"]["pool"]["servers"][0]["idle"]
            .as_u64()
            .unwrap();
        assert!(
            (1..=accepted as u64).contains(&idle),
            "{model}: {idle} idle of {accepted}: {upstreams}"
        );
    }
}

/// A returning client resumes its TLS session (TLS 1.3 tickets, TLS 1.2 tickets) instead of
/// a full handshake, also after a reload, which builds a new acceptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume_across_connections_and_reloads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = Fixture::new();
    let b = Backend::start("resume-1", &fx.pki).await;
    let gw = fx.start_gateway(&format!(
        "[upstreams.pool]\nservers = [{}]\n{}",
        servers(&[&b], ""),
        route("/", "pool")
    ));
    // One GET per connection; the client reads to the end, so it sees TLS 1.3's tickets.
    let handshake = |tls: Arc<rustls::ClientConfig>| {
        let addr = gw.https;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut stream = tokio_rustls::TlsConnector::from(tls)
                .connect(
                    rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                )
                .await
                .unwrap();
            let kind = stream.get_ref().1.handshake_kind();
            stream
                .write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ = stream.read_to_end(&mut out).await;
            assert!(
                out.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&out)
            );
            kind
        }
    };
    use rustls::HandshakeKind::{Full, Resumed};
    for (label, tls) in [
        (
            "TLS 1.3",
            fx.pki.client_for_version(&rustls::version::TLS13),
        ),
        (
            "TLS 1.2",
            fx.pki.client_for_version(&rustls::version::TLS12),
        ),
    ] {
        assert_eq!(handshake(tls.clone()).await, Some(Full), "{label}: first");
        assert_eq!(
            handshake(tls.clone()).await,
            Some(Resumed),
            "{label}: second"
        );
        assert_eq!(gw.reload().await.status, StatusCode::OK);
        assert_eq!(
            handshake(tls.clone()).await,
            Some(Resumed),
            "{label}: after a reload"
        );
    }
}

/// Every server at `max_conns`: with a `queue`, requests wait for a free server instead of
/// failing, the server never sees more than `max_conns` at once, and what cannot wait (the
/// queue full, or no server freed in time) gets a JSON 503 saying which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_queue_holds_requests_while_every_server_is_busy() {
    use crate::util::Behaviour;
    let fx = Fixture::new();
    let b = Backend::start_with(
        "queue-1",
        &fx.pki,
        Behaviour::delayed(Duration::from_millis(200)),
    )
    .await;
    let gw = fx.start_gateway(&format!(
        "[upstreams.pool]\nqueue = {{ size = 3, timeout = \"3s\" }}\nservers = [{}]\n{}",
        servers(&[&b], ", max_conns = 1"),
        route("/", "pool")
    ));
    // 4 at once: one served, three queued, each served in turn.
    let started = Instant::now();
    let mut requests = Vec::new();
    for _ in 0..4 {
        let mut conn = gw.connect().await;
        requests.push(tokio::spawn(
            async move { conn.get("/whoami").await.unwrap() },
        ));
    }
    let mut statuses = Vec::new();
    for r in requests {
        statuses.push(r.await.unwrap().status.as_u16());
    }
    let took = started.elapsed();
    assert_eq!(statuses, [200, 200, 200, 200], "all queued and served");
    assert!(
        took >= Duration::from_millis(750),
        "one at a time: {took:?}"
    );
    let metrics = gw.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("gateway_upstream_queued_requests{upstream=\"pool\"} 0"),
        "the queue is empty again"
    );

    // First come, first served: requests that arrive 20 ms apart while the server is busy
    // are answered in the order they came.
    let mut requests = Vec::new();
    for i in 0..4 {
        let mut conn = gw.connect().await;
        requests.push(tokio::spawn(async move {
            let resp = conn.get("/whoami").await.unwrap();
            (Instant::now(), i, resp.status.as_u16())
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answered = Vec::new();
    for r in requests {
        answered.push(r.await.unwrap());
    }
    answered.sort();
    let order: Vec<_> = answered
        .iter()
        .map(|(_, i, status)| (*i, *status))
        .collect();
    assert_eq!(
        order,
        [(0, 200), (1, 200), (2, 200), (3, 200)],
        "arrival order"
    );

    // 6 at once: one served, three queued, two turned away at once (the queue is full).
    let mut requests = Vec::new();
    for _ in 0..6 {
        let mut conn = gw.connect().await;
        requests.push(tokio::spawn(
            async move { conn.get("/whoami").await.unwrap() },
        ));
    }
    let mut full = 0;
    for r in requests {
        let resp = r.await.unwrap();
        if resp.status.as_u16() == 503 {
            assert_json_error(&resp, 503, "upstream_queue_full");
            full += 1;
        } else {
            assert_eq!(resp.status.as_u16(), 200);
        }
    }
    assert_eq!(full, 2);

    // A queue timeout shorter than a request: the waiting one gives up with 503.
    std::fs::write(
        &gw.config,
        format!(
            "{}[upstreams.pool]\nqueue = {{ size = 3, timeout = \"50ms\" }}\nservers = [{}]\n{}",
            fx.config_head(),
            servers(&[&b], ", max_conns = 1"),
            route("/", "pool")
        ),
    )
    .unwrap();
    assert_eq!(gw.reload().await.status, StatusCode::OK);
    let mut first = gw.connect().await;
    let busy = tokio::spawn(async move { first.get("/whoami").await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = gw.connect().await;
    let waited = second.get("/whoami").await.unwrap();
    assert_json_error(&waited, 503, "upstream_queue_timeout");
    assert_eq!(busy.await.unwrap().status.as_u16(), 200);
    let metrics = gw.admin_get("/metrics").await.text();
    assert!(metrics
        .contains("gateway_upstream_queue_rejected_total{reason=\"timeout\",upstream=\"pool\"} 1"));
    assert!(metrics
        .contains("gateway_upstream_queue_rejected_total{reason=\"full\",upstream=\"pool\"} 2"));
}

/// Idle HTTP/1.1 upstream connections close once they idled for `keepalive_timeout`, even
/// when no request comes to find them stale: the server sees them close, and the next
/// request dials anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_after_keepalive_timeout_without_traffic() {
    const CLIENTS: usize = 8;
    let fx = Fixture::new();
    let backend = Backend::start_with(
        "b0",
        &fx.pki,
        Behaviour::delayed(Duration::from_millis(200)),
    )
    .await;
    let gw = fx.start_gateway(&format!(
        "[upstreams.pool]\nkeepalive = 64\nkeepalive_timeout = \"1s\"\n\
         servers = [{{ address = \"{}\" }}]\n{}",
        backend.addr,
        route("/", "pool")
    ));
    let idle = || async {
        gw.admin_get("/-/upstreams").await.json().unwrap()["upstreams"]["pool"]["servers"][0]
            ["idle"]
            .as_u64()
            .unwrap()
    };

    // 8 requests at once, 200 ms each: one upstream connection each, idle afterwards.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let mut conn = gw.connect().await;
        tasks.spawn(async move { conn.get("/whoami").await.unwrap().status });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let idled_at = Instant::now();
    let accepted = backend.accepted.load(Ordering::SeqCst);
    assert!(accepted >= 2, "{accepted} upstream connections");
    assert_eq!(idle().await, accepted as u64);
    assert_eq!(backend.open.load(Ordering::SeqCst), accepted);

    // No request comes. Within a second past the timeout every one is closed, not before.
    let closed = poll_until(Duration::from_secs(4), || async {
        backend.open.load(Ordering::SeqCst) == 0 && idle().await == 0
    })
    .await;
    assert!(
        closed,
        "{} open at the server, {} idle in the gateway",
        backend.open.load(Ordering::SeqCst),
        idle().await
    );
    // Not closed at once. The timeout counts from each connection's last use, a little
    // before `idled_at` (more so on a loaded machine).
    let after = idled_at.elapsed();
    assert!(
        after >= Duration::from_millis(500),
        "closed after {after:?}"
    );

    let mut conn = gw.connect().await;
    assert_eq!(conn.get("/whoami").await.unwrap().status, StatusCode::OK);
    assert_eq!(backend.accepted.load(Ordering::SeqCst), accepted + 1);
}
