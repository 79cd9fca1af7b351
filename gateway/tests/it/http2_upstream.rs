//! `protocol = "http2"` upstreams: every request in flight shares one connection per worker
//! thread and server (TLS with ALPN h2, or plain h2 with prior knowledge); a connection the
//! server dropped costs no request; WebSocket upgrades still dial HTTP/1.1.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::SinkExt;
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

use crate::policies::{next_text, websocket};
use crate::util::{Backend, Behaviour, Fixture};

const CLIENTS: usize = 16;
const REQUESTS: usize = 20;

fn config(backend: &Backend, tls: bool) -> String {
    format!(
        "[upstreams.pool]\nprotocol = \"http2\"\ntls = {tls}\nservers = [{{ address = \"{}\" }}]\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"pool\"\n",
        backend.addr
    )
}

/// `CLIENTS` connections each sending `REQUESTS` requests one after another, all at once.
async fn load(gw: &crate::util::Gateway) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let mut conn = gw.connect().await;
        tasks.spawn(async move {
            let mut ok = 0;
            for _ in 0..REQUESTS {
                let resp = conn.get("/whoami").await.unwrap();
                assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
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
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_multiplex_one_connection_per_worker() {
    for tls in [true, false] {
        let fx = Fixture::new();
        let behaviour = Behaviour {
            plain: !tls,
            ..Behaviour::default()
        };
        let backend = Backend::start_with("b0", &fx.pki, behaviour.clone()).await;
        let gw = fx.start_gateway(&config(&backend, tls));

        // The server sees HTTP/2, the client's Host as the authority, the gateway's headers.
        let mut conn = gw.connect().await;
        let resp = conn.get("/api/headers?x=1").await.unwrap();
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        let seen = resp.json().unwrap();
        assert_eq!(seen["version"], "HTTP/2.0", "tls={tls}: {seen}");
        let scheme = if tls { "https" } else { "http" };
        let uri = seen["uri"].as_str().unwrap();
        assert!(
            uri.starts_with(&format!("{scheme}://localhost:")) && uri.ends_with("/api/headers?x=1"),
            "tls={tls}: {uri}"
        );
        assert!(seen["headers"].get("x-forwarded-for").is_some(), "{seen}");
        assert!(seen["headers"].get("x-request-id").is_some(), "{seen}");
        assert!(seen["headers"].get("host").is_none(), "{seen}");

        assert_eq!(load(&gw).await, CLIENTS * REQUESTS);
        // One shared connection per worker thread (2), where HTTP/1.1 opens one per request
        // in flight (up to 16 here).
        let accepted = backend.accepted.load(Ordering::SeqCst);
        assert!(
            (1..=2).contains(&accepted),
            "tls={tls}: {accepted} connections for {} requests",
            CLIENTS * REQUESTS + 1
        );

        // The server goes away and comes back: the dead connection is replaced, no request
        // fails.
        backend.kill();
        let back = Backend::start_at("b0", &fx.pki, backend.addr, behaviour).await;
        assert_eq!(load(&gw).await, CLIENTS * REQUESTS);
        let accepted = back.accepted.load(Ordering::SeqCst);
        assert!(
            (1..=2).contains(&accepted),
            "tls={tls}: {accepted} after the restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_to_http2_upstreams_go_over_http1() {
    let fx = Fixture::new();
    let backend = Backend::start("b0", &fx.pki).await;
    let gw = fx.start_gateway(&config(&backend, true));
    let (mut ws, _) = websocket(&gw, &fx.pki, None).await;
    assert_eq!(next_text(&mut ws).await, "hello from b0");
    ws.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_h2_is_a_clear_bad_gateway() {
    let fx = Fixture::new();
    let behaviour = Behaviour {
        http1_only: true,
        ..Behaviour::default()
    };
    let backend = Backend::start_with("b0", &fx.pki, behaviour).await;
    let gw = fx.start_gateway(&config(&backend, true));
    let mut conn = gw.connect().await;
    let resp = conn.get("/whoami").await.unwrap();
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{}", resp.text());
    let body = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "bad_gateway", "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");
    // The log names the cause and the fix.
    assert!(
        gw.process
            .wait_for_output("did not agree to HTTP/2", Duration::from_secs(5)),
        "{:?}",
        gw.process.output()
    );
    assert!(gw
        .process
        .output()
        .iter()
        .any(|l| l.contains("did not agree to HTTP/2") && l.contains("set protocol")));
}

/// A server that shuts down cleanly while requests are in flight (hyper's graceful shutdown:
/// GOAWAY on HTTP/2, `Connection: close` on HTTP/1.1, then no more connections) costs no
/// request, a POST included: what it started it answers, what it never saw goes to the other
/// server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_draining_mid_load_costs_no_request() {
    const PER_CLIENT: usize = 12;
    for protocol in ["http2", "http1"] {
        let fx = Fixture::new();
        let behaviour = Behaviour {
            delay: Duration::from_millis(100),
            ..Behaviour::default()
        };
        let b0 = Backend::start_with("b0", &fx.pki, behaviour.clone()).await;
        let b1 = Backend::start_with("b1", &fx.pki, behaviour).await;
        let gw = fx.start_gateway(&format!(
            "[upstreams.pool]\nprotocol = \"{protocol}\"\ntls = true\n\
             servers = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"pool\"\n",
            b0.addr, b1.addr
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..CLIENTS {
            let mut conn = gw.connect().await;
            tasks.spawn(async move {
                let mut failures = Vec::new();
                for i in 0..PER_CLIENT {
                    let method = if (client + i) % 2 == 0 {
                        http::Method::GET
                    } else {
                        http::Method::POST
                    };
                    // A GET without a body, as GETs are: replayable, it may go to the
                    // other server when b0 closes the connection it was written to.
                    let body = if method == http::Method::POST {
                        "payload"
                    } else {
                        ""
                    };
                    let resp = conn
                        .request(method.clone(), "/whoami", &[], body)
                        .await
                        .unwrap();
                    if resp.status != StatusCode::OK {
                        failures.push(format!("{method} {}: {}", resp.status, resp.text()));
                    }
                }
                failures
            });
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
        let before = b0.hits();
        b0.drain();
        let mut failures = Vec::new();
        while let Some(done) = tasks.join_next().await {
            failures.extend(done.unwrap());
        }
        let warnings: Vec<String> = gw
            .process
            .output()
            .into_iter()
            .filter(|l| l.contains("WARN"))
            .collect();
        assert!(
            failures.is_empty(),
            "{protocol}: {failures:?} {warnings:#?}"
        );
        assert!(before > 0, "{protocol}: b0 served nothing before the drain");
        assert!(
            b1.hits() > CLIENTS * PER_CLIENT / 2,
            "{protocol}: b1 {}",
            b1.hits()
        );
    }
}

/// Past `max_streams` streams in flight on a connection a worker opens another to the same
/// server, instead of queueing behind the server's stream limit; once the burst is over the
/// extra connections close after `keepalive_timeout` and one per worker is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_connection_makes_room_on_another() {
    const MAX: usize = 4;
    let fx = Fixture::new();
    let behaviour = Behaviour {
        delay: Duration::from_millis(200),
        max_streams: Some(MAX as u32),
        ..Behaviour::default()
    };
    let backend = Backend::start_with("b0", &fx.pki, behaviour).await;
    let gw = fx.start_gateway(&format!(
        "[upstreams.pool]\nprotocol = \"http2\"\nmax_streams = {MAX}\nkeepalive_timeout = \"1s\"\n\
         servers = [{{ address = \"{}\" }}]\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"pool\"\n",
        backend.addr
    ));
    let open = || async {
        let text = gw.admin_get("/metrics").await.text();
        text.lines()
            .filter(|l| l.starts_with("gateway_upstream_http2_connections{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
            .sum::<usize>()
    };

    // 24 requests at once, 200 ms each, on 2 workers with room for 4 streams per connection:
    // at least 24 / 4 = 6 connections, and every request answered within about one delay
    // (queued behind 4 streams, the last would wait 6 delays).
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(gw.connect().await);
    }
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in clients {
        tasks.spawn(async move { conn.get("/whoami").await.unwrap().status });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let took = started.elapsed();
    let accepted = backend.accepted.load(Ordering::SeqCst);
    assert!(accepted >= 24 / MAX, "{accepted} connections");
    assert!(took < Duration::from_millis(900), "took {took:?}");
    assert_eq!(open().await, accepted);

    // Idle past keepalive_timeout: the next request on each worker closes its extra ones.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    for _ in 0..4 {
        let mut conn = gw.connect().await;
        assert_eq!(conn.get("/whoami").await.unwrap().status, StatusCode::OK);
    }
    let left = open().await;
    assert!((1..=2).contains(&left), "{left} connections left");
}
