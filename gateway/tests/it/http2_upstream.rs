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
