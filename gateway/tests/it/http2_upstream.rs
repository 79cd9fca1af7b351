//! `protocol = "http2"` upstreams: every request in flight shares one connection per worker
//! thread and server (TLS with ALPN h2, or plain h2 with prior knowledge); a connection the
//! server dropped costs no request; WebSocket upgrades still dial HTTP/1.1.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::SinkExt;
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

use crate::policies::{next_text, websocket};
use crate::util::{poll_until, Backend, Behaviour, Fixture};

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

/// The HTTP version each server saw, by `x-served-by`, over 8 requests.
async fn versions_seen(gw: &crate::util::Gateway) -> std::collections::BTreeMap<String, String> {
    let mut seen = std::collections::BTreeMap::new();
    let mut conn = gw.connect().await;
    for _ in 0..8 {
        let resp = conn.get("/api/headers").await.unwrap();
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        let by = resp.header("x-served-by").unwrap_or_default().to_string();
        let json = resp.json().unwrap();
        seen.insert(by, json["version"].as_str().unwrap_or_default().to_string());
    }
    seen
}

/// `protocol = "auto"`: each server picks in the TLS handshake. One that picks h2 shares
/// connections like `http2`, one that only speaks HTTP/1.1 gets HTTP/1.1, and a server that
/// comes back without h2 is asked again instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_upstreams_speak_what_each_server_picks() {
    let fx = Fixture::new();
    let h2 = Backend::start("h2", &fx.pki).await;
    let http1_only = Behaviour {
        http1_only: true,
        ..Behaviour::default()
    };
    let h1 = Backend::start_with("h1", &fx.pki, http1_only.clone()).await;
    let gw = fx.start_gateway(&format!(
        "[upstreams.pool]\nprotocol = \"auto\"\nalgorithm = \"round_robin\"\n\
         servers = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"pool\"\n",
        h2.addr, h1.addr
    ));
    let seen = versions_seen(&gw).await;
    assert_eq!(
        seen.get("h2").map(String::as_str),
        Some("HTTP/2.0"),
        "{seen:?}"
    );
    assert_eq!(
        seen.get("h1").map(String::as_str),
        Some("HTTP/1.1"),
        "{seen:?}"
    );
    // `/-/upstreams` says what each server picked.
    let status = gw.admin_get("/-/upstreams").await.json().unwrap();
    let pool = &status["upstreams"]["pool"];
    assert_eq!(pool["protocol"], "auto", "{status}");
    let picked = |addr: std::net::SocketAddr| {
        let servers = pool["servers"].as_array().cloned().unwrap_or_default();
        servers
            .iter()
            .find(|s| s["server"] == addr.to_string())
            .map(|s| s["picked_protocol"].clone())
    };
    assert_eq!(picked(h2.addr), Some("http2".into()), "{status}");
    assert_eq!(picked(h1.addr), Some("http1".into()), "{status}");

    // Under load the h2 server keeps one shared connection per worker; the HTTP/1.1 one
    // gets a connection per request in flight.
    let before = h2.accepted.load(Ordering::SeqCst);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let mut conn = gw.connect().await;
        tasks.spawn(async move {
            for _ in 0..REQUESTS {
                let resp = conn.get("/whoami").await.unwrap();
                assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let h2_conns = h2.accepted.load(Ordering::SeqCst);
    assert!(
        h2_conns <= before + 2,
        "{before} then {h2_conns} connections"
    );
    assert!(h1.accepted.load(Ordering::SeqCst) > 2);

    // The h2 server comes back speaking HTTP/1.1 only: no request fails, and it is spoken
    // to in HTTP/1.1.
    h2.kill();
    let back = Backend::start_at("h2", &fx.pki, h2.addr, http1_only).await;
    let seen = versions_seen(&gw).await;
    assert_eq!(
        seen.get("h2").map(String::as_str),
        Some("HTTP/1.1"),
        "{seen:?}"
    );
    assert!(back.accepted.load(Ordering::SeqCst) >= 1);
}

/// A server that shuts down cleanly while requests are in flight (hyper's graceful shutdown:
/// GOAWAY on HTTP/2, `Connection: close` on HTTP/1.1, then no more connections) costs no
/// request: what it started it answers, what it never saw goes to the other server. Over
/// HTTP/2 that holds for POSTs too (a stream above the GOAWAY's last one was provably not
/// processed and goes again, body included). Over HTTP/1.1 only for requests that may be
/// replayed: a server closing a connection it thinks idle while our request sits unread in
/// its socket looks, from the gateway, like one that failed mid-request (RFC 9112 §9.3.1),
/// so a POST there would be a 502 in any proxy; the HTTP/1.1 run sends GETs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_draining_mid_load_costs_no_request() {
    const PER_CLIENT: usize = 12;
    for protocol in ["http2", "http1"] {
        let fx = Fixture::new();
        let behaviour = Behaviour::delayed(Duration::from_millis(100));
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
            let protocol = protocol.to_string();
            tasks.spawn(async move {
                let mut failures = Vec::new();
                for i in 0..PER_CLIENT {
                    let method = if protocol == "http1" || (client + i) % 2 == 0 {
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

/// Once a connection carries as many streams as the server takes (its
/// SETTINGS_MAX_CONCURRENT_STREAMS, here 4), a worker opens another to the same server
/// instead of queueing behind the limit; once the burst is over the extra connections close
/// after `keepalive_timeout` and one per worker is left. No `max_streams` in the config: the
/// server's own limit is the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_connection_makes_room_on_another() {
    spreads_past_a_full_connection("").await;
}

/// The same with `max_streams` below the server's limit: the lower one counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_below_the_servers_limit_counts() {
    spreads_past_a_full_connection("max_streams = 4\n").await;
}

async fn spreads_past_a_full_connection(max_streams: &str) {
    const MAX: usize = 4;
    let fx = Fixture::new();
    let behaviour = Behaviour {
        delay: Duration::from_millis(200),
        // With a config limit of 4 the server takes more, so only the config's can count.
        max_streams: Some(if max_streams.is_empty() { MAX } else { 100 } as u32),
        ..Behaviour::default()
    };
    let backend = Backend::start_with("b0", &fx.pki, behaviour).await;
    let gw = fx.start_gateway(&format!(
        "[upstreams.pool]\nprotocol = \"http2\"\n{max_streams}keepalive_timeout = \"1s\"\n\
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
    // (queued behind 4 streams, the last would wait 6 delays). A cold gateway: each worker's
    // first connection learns the server's limit before it takes a stream.
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

    // Idle past keepalive_timeout, with no request to notice: the gateway's sweep closes the
    // extra ones within a second more, and the server sees them close. The first of each
    // worker stays.
    let swept = poll_until(Duration::from_secs(4), || async {
        (1..=2).contains(&open().await) && backend.open.load(Ordering::SeqCst) <= 2
    })
    .await;
    assert!(
        swept,
        "{} connections kept, {} open at the server",
        open().await,
        backend.open.load(Ordering::SeqCst)
    );

    // Requests still go (16 connections, so that both workers take one whichever way they
    // are spread), on the connections kept.
    for _ in 0..16 {
        let mut conn = gw.connect().await;
        assert_eq!(conn.get("/whoami").await.unwrap().status, StatusCode::OK);
    }
    let left = open().await;
    assert!((1..=2).contains(&left), "{left} connections left");
}

/// A plain-text HTTP/2 server (prior knowledge) on loopback that runs `stream` on each
/// stream it accepts, on every connection.
async fn h2_server<F, Fut>(stream: F) -> std::net::SocketAddr
where
    F: Fn(http::Request<h2::RecvStream>, h2::server::SendResponse<bytes::Bytes>) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = std::sync::Arc::new(stream);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let stream = stream.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((request, respond))) = conn.accept().await {
                    tokio::spawn(stream(request, respond));
                }
            });
        }
    });
    addr
}

/// An `h2_server` that refuses its first stream with REFUSED_STREAM once it has read the
/// whole request body, and echoes the body of every other one. The count is of the streams
/// it saw.
async fn refusing_server(
    refuse_first: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let streams = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = streams.clone();
    let addr = h2_server(move |request, mut respond| {
        let number = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut body = request.into_body();
            let mut echoed = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                echoed.extend_from_slice(&chunk);
            }
            if refuse_first && number == 0 {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                return;
            }
            let response = http::Response::new(());
            if let Ok(mut send) = respond.send_response(response, false) {
                let _ = send.send_data(echoed.into(), true);
            }
        }
    })
    .await;
    (addr, streams)
}

/// A stream the server refused unprocessed (REFUSED_STREAM, or above the last stream a
/// GOAWAY names) may go again whatever its method: a POST's body, already sent, is sent
/// again from what the gateway recorded, to the other server. The refusal does not count
/// against the server (passive health).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_goes_again_with_its_body() {
    let fx = Fixture::new();
    let (refusing, refusing_streams) = refusing_server(true).await;
    let (answering, answering_streams) = refusing_server(false).await;
    let gw = fx.start_gateway(&format!(
        "[upstreams.pool]\nprotocol = \"http2\"\ntls = false\nalgorithm = \"round_robin\"\n\
         servers = [{{ address = \"{refusing}\" }}, {{ address = \"{answering}\" }}]\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"pool\"\n"
    ));
    let payload = "a body the refused stream had already sent ".repeat(100);
    let mut conn = gw.connect().await;
    let mut answered = 0;
    for _ in 0..4 {
        let resp = conn
            .request(http::Method::POST, "/orders", &[], payload.clone())
            .await
            .unwrap();
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "{} {:#?}",
            resp.text(),
            gw.process.output()
        );
        assert_eq!(resp.text(), payload, "the body went again whole");
        answered += 1;
    }
    assert_eq!(answered, 4);
    // A refusal is no failure for passive health: the server still gets its turn.
    assert!(
        refusing_streams.load(Ordering::SeqCst) >= 2,
        "the refusing server was taken out: {}",
        refusing_streams.load(Ordering::SeqCst)
    );
    // The refused one plus every answered one: nothing was sent twice to be processed.
    assert_eq!(
        refusing_streams.load(Ordering::SeqCst) - 1 + answering_streams.load(Ordering::SeqCst),
        4
    );
    // Counted as a refusal, not as an error (the error ratio leaves it out).
    let metrics = gw.admin_get("/metrics").await.text();
    let tries = |outcome: &str| {
        let label = format!("outcome=\"{outcome}\"");
        metrics
            .lines()
            .filter(|l| l.starts_with("gateway_upstream_requests_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert_eq!((tries("refused"), tries("error"), tries("ok")), (1, 0, 4));
}

/// An `h2_server` that answers each stream after 5 s, unless the stream is reset first:
/// the count is of those.
async fn slow_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = cancelled.clone();
    let addr = h2_server(move |_, mut respond| {
        let count = count.clone();
        async move {
            let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
            tokio::select! {
                _ = reset => {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    let _ = respond.send_response(http::Response::new(()), true);
                }
            }
        }
    })
    .await;
    (addr, cancelled)
}

/// An h2 client that gives up on a request (RST_STREAM) cancels it upstream at once: the
/// gateway drops the request's handler, and with it the upstream stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_cancels_the_upstream_request() {
    let fx = Fixture::new();
    let (slow, cancelled) = slow_server().await;
    let gw = fx.start_gateway(&format!(
        "[upstreams.pool]\nprotocol = \"http2\"\ntls = false\n\
         servers = [{{ address = \"{slow}\" }}]\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"pool\"\n"
    ));
    let mut conn = gw.connect().await;
    let gave_up = tokio::time::timeout(Duration::from_millis(300), conn.get("/slow")).await;
    assert!(gave_up.is_err(), "the slow server answered: {gave_up:?}");
    let started = std::time::Instant::now();
    while cancelled.load(Ordering::SeqCst) == 0 && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        1,
        "the upstream stream outlived the client's"
    );
}
