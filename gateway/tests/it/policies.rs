//! Edge policies through the real gateway over TLS: rate limits and client identity (PROXY
//! protocol, trusted X-Forwarded-For), connection and size limits, security headers,
//! sticky sessions and WebSocket tunnels, the static-asset cache.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::util::{servers, Backend, Fixture, Gateway};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway::policy::proxy_protocol;
use http::{Method, StatusCode};
use rustls_pki_types::ServerName;
use service_kit::client::{self, Connection, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn connect_from(gw: &Gateway, from: &str) -> Connection {
    let url = format!("https://localhost:{}", gw.https.port());
    let target = Target::from_url(&url, Some(gw.tls.clone()))
        .await
        .unwrap()
        .from_ip(ip(from));
    client::connect(&target).await.unwrap()
}

fn assert_security_headers(resp: &client::Response, https: bool) {
    for h in [
        "content-security-policy",
        "x-frame-options",
        "x-content-type-options",
        "x-xss-protection",
        "referrer-policy",
        "permissions-policy",
    ] {
        assert!(resp.header(h).is_some(), "{h} missing on {}", resp.status);
    }
    assert_eq!(
        resp.header("strict-transport-security").is_some(),
        https,
        "HSTS on {}",
        resp.status
    );
    assert!(resp.header("x-powered-by").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_client_and_route_cannot_be_dodged() {
    let fx = Fixture::new();
    let admin = Backend::start("admin-1", &fx.pki).await;
    let customer = Backend::start("customer-1", &fx.pki).await;
    let gw = fx.start_gateway(&format!(
        r#"
[client_ip]
trusted_proxies = ["127.0.0.3/32"]

[upstreams.admin]
servers = [{admin}]
[upstreams.customer]
servers = [{customer}]

[[routes]]
prefix = "/api/v1/admin"
upstream = "admin"
rate_limit = {{ rate = 50, per = "1m", burst = 50 }}

[[routes]]
prefix = "/"
upstream = "customer"
rate_limit = {{ rate = 100, per = "1m", burst = 100 }}
rate_limit_exempt = ["127.0.0.4/32"]
"#,
        admin = servers(&[&admin], ""),
        customer = servers(&[&customer], ""),
    ));

    let mut a = connect_from(&gw, "127.0.0.1").await;
    for i in 0..50 {
        let resp = a.get("/api/v1/admin/users").await.unwrap();
        assert_eq!(resp.status, StatusCode::OK, "request {i}");
        assert_eq!(resp.header("x-ratelimit-limit"), Some("50"));
        assert_eq!(
            resp.header("x-ratelimit-remaining"),
            Some((49 - i).to_string().as_str())
        );
    }
    let limited = a.get("/api/v1/admin/users").await.unwrap();
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let body = limited.json().unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        body["error"]["request_id"],
        limited.header("x-request-id").unwrap()
    );
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert!(limited.header("x-ratelimit-reset").is_some());
    assert_security_headers(&limited, true);
    assert_eq!(
        admin.hits(),
        50,
        "the limited request never reached the backend"
    );

    // The other route has its own budget; the limited client is still served there.
    assert_eq!(
        a.get("/api/v1/consultations").await.unwrap().status,
        StatusCode::OK
    );

    // Spelling tricks reach the same route and the same bucket.
    for trick in [
        "//api/v1/admin/users",
        "/./api/v1/admin/users",
        "/api/v1/x/../admin/users",
        "/api/v1/%2e%2e/v1/admin/users",
        "/API/V1/ADMIN/users",
        "/api/v1/%61dmin/users",
    ] {
        let resp = a.get(trick).await.unwrap();
        assert_eq!(
            resp.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{trick} dodged the limit"
        );
    }
    // A spoofed X-Forwarded-For from an untrusted peer does not buy a fresh bucket.
    let spoofed = a
        .request(
            Method::GET,
            "/api/v1/admin/users",
            &[("x-forwarded-for", "198.51.100.77")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(spoofed.status, StatusCode::TOO_MANY_REQUESTS);

    // Another client is unaffected.
    let mut b = connect_from(&gw, "127.0.0.2").await;
    assert_eq!(
        b.get("/api/v1/admin/users").await.unwrap().status,
        StatusCode::OK
    );

    // A trusted proxy's X-Forwarded-For names the client: its own bucket, and the backend sees it.
    let mut proxy = connect_from(&gw, "127.0.0.3").await;
    let resp = proxy
        .request(
            Method::GET,
            "/api/v1/admin/headers",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.9")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-ratelimit-remaining"), Some("49"));
    assert_eq!(resp.json().unwrap()["headers"]["x-real-ip"], "198.51.100.9");

    // Exempt clients are never limited.
    let mut exempt = connect_from(&gw, "127.0.0.4").await;
    for _ in 0..120 {
        assert_eq!(
            exempt.get("/api/v1/consultations").await.unwrap().status,
            StatusCode::OK
        );
    }

    let metrics = gw.admin_get("/metrics").await.text();
    assert!(
        metrics.contains(r#"gateway_rate_limited_requests_total{route="/api/v1/admin"} 8"#),
        "{metrics}"
    );
}

/// A TLS connection over `tcp`, after optionally writing raw bytes (a PROXY header) first.
async fn tls_after(
    gw: &Gateway,
    from: &str,
    preface: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut tcp = client::open_tcp(gw.https, Some(ip(from))).await?;
    tcp.write_all(preface).await?;
    let connector = tokio_rustls::TlsConnector::from(gw.tls.clone());
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

async fn raw_get(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    path: &str,
) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_only_from_trusted_peers_and_connection_limits() {
    let fx = Fixture::new();
    let b = Backend::start("pp-1", &fx.pki).await;
    let gw = fx.start_gateway(&format!(
        r#"
[client_ip]
trusted_proxies = ["127.0.0.3/32"]
proxy_protocol = true

[limits]
max_connections_per_ip = 2
header_read_timeout = "700ms"

[upstreams.pool]
servers = [{}]
[[routes]]
prefix = "/"
upstream = "pool"
"#,
        servers(&[&b], "")
    ));
    // ALPN http/1.1 so a raw HTTP/1.1 request can follow the handshake.
    let gw = Gateway {
        tls: fx.pki.client_with(&[b"http/1.1"], false),
        ..gw
    };
    let source: SocketAddr = "203.0.113.50:40000".parse().unwrap();
    let header = proxy_protocol::encode(source, gw.https);

    // From the trusted edge: the PROXY source is the client.
    let mut tls = tls_after(&gw, "127.0.0.3", &header).await.unwrap();
    let reply = raw_get(&mut tls, "/headers").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"x-real-ip\":\"203.0.113.50\""), "{reply}");
    assert!(
        reply.contains("\"x-forwarded-for\":\"203.0.113.50\""),
        "{reply}"
    );

    // From anyone else a PROXY header is refused: the connection is closed.
    assert!(tls_after(&gw, "127.0.0.1", &header).await.is_err());
    // Without one, ordinary clients are served.
    let mut plain = tls_after(&gw, "127.0.0.1", b"").await.unwrap();
    assert!(raw_get(&mut plain, "/whoami")
        .await
        .starts_with("HTTP/1.1 200"));

    // Per-IP connection limit: the third concurrent connection from one client is refused.
    let mut first = connect_from(&gw, "127.0.0.5").await;
    let mut second = connect_from(&gw, "127.0.0.5").await;
    assert_eq!(first.get("/whoami").await.unwrap().status, StatusCode::OK);
    assert_eq!(second.get("/whoami").await.unwrap().status, StatusCode::OK);
    let url = format!("https://localhost:{}", gw.https.port());
    let third = async {
        let target = Target::from_url(&url, Some(gw.tls.clone()))
            .await
            .unwrap()
            .from_ip(ip("127.0.0.5"));
        client::connect(&target).await?.get("/whoami").await
    };
    assert!(
        third.await.is_err(),
        "a third connection from one IP was served"
    );
    // Another IP is fine.
    assert_eq!(
        connect_from(&gw, "127.0.0.6")
            .await
            .get("/whoami")
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );

    // Slowloris: a request head that never completes is cut off after header_read_timeout.
    let mut slow = client::open_tcp(gw.http, Some(ip("127.0.0.7")))
        .await
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(_)) | Ok(Err(_))),
        "connection not closed within 5 s"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    let metrics = gw.admin_get("/metrics").await.text();
    assert!(
        metrics
            .contains(r#"gateway_connections_refused_total{reason="untrusted_proxy_protocol"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_connections_refused_total{reason="max_connections_per_ip"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_and_security_headers_everywhere() {
    let fx = Fixture::new();
    let b = Backend::start("s-1", &fx.pki).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = fx.start_gateway(&format!(
        r#"
[limits]
max_headers = 50
max_header_bytes = "8k"
max_uri_length = 2048

[defaults]
client_max_body_size = "1k"

[upstreams.pool]
servers = [{}]
[upstreams.dead]
servers = [{{ address = "{dead}" }}]
[[routes]]
prefix = "/dead"
upstream = "dead"
[[routes]]
prefix = "/framed"
upstream = "pool"
security_headers = {{ x_frame_options = "SAMEORIGIN", server = "insightserenity" }}
[[routes]]
prefix = "/api"
upstream = "pool"
rate_limit = {{ rate = 1, per = "1m", burst = 1 }}
"#,
        servers(&[&b], "")
    ));
    let mut conn = gw.connect_h1(&fx.pki).await;

    let big = conn
        .request(
            Method::POST,
            "/framed/upload",
            &[],
            Bytes::from(vec![b'x'; 2048]),
        )
        .await
        .unwrap();
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.json().unwrap()["error"]["code"], "payload_too_large");
    assert_eq!(
        b.hits(),
        0,
        "an oversized declared body never reaches the backend"
    );
    let small = conn
        .request(
            Method::POST,
            "/framed/upload",
            &[],
            Bytes::from(vec![b'x'; 512]),
        )
        .await
        .unwrap();
    assert_eq!(small.text(), "512");

    // A chunked body (no Content-Length) is cut off while streaming.
    let mut tls = {
        let tcp = client::open_tcp(gw.https, None).await.unwrap();
        tokio_rustls::TlsConnector::from(fx.pki.client_with(&[b"http/1.1"], false))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    };
    let mut request =
        b"POST /framed/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"400\r\n");
        request.extend_from_slice(&[b'c'; 0x400]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    tls.write_all(&request).await.unwrap();
    let mut reply = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("payload_too_large"), "{reply}");

    let long_uri = format!("/framed/{}", "a".repeat(3000));
    let resp = conn.get(&long_uri).await.unwrap();
    assert_eq!(resp.status, StatusCode::URI_TOO_LONG);
    assert_eq!(resp.json().unwrap()["error"]["code"], "uri_too_long");
    let many: Vec<(String, String)> = (0..60)
        .map(|i| (format!("x-h{i}"), "v".to_string()))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let resp = conn
        .request(Method::GET, "/framed/x", &refs, Bytes::new())
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(resp.json().unwrap()["error"]["code"], "headers_too_large");
    let fat = "v".repeat(9000);
    let resp = conn
        .request(Method::GET, "/framed/x", &[("x-fat", &fat)], Bytes::new())
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // Security headers on 200, 404, 429, 502, and the 301 (without HSTS).
    let ok = conn.get("/framed/static/app.css").await.unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    assert_security_headers(&ok, true);
    assert_eq!(
        ok.header("x-frame-options"),
        Some("SAMEORIGIN"),
        "route override"
    );
    assert_eq!(
        ok.header("server"),
        Some("insightserenity"),
        "upstream Server replaced"
    );
    let not_found = conn.get("/nowhere").await.unwrap();
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    assert_security_headers(&not_found, true);
    assert_eq!(not_found.header("x-frame-options"), Some("DENY"));
    conn.get("/api/x").await.unwrap();
    let limited = conn.get("/api/x").await.unwrap();
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_security_headers(&limited, true);
    let bad_gateway = conn.get("/dead/x").await.unwrap();
    assert_eq!(bad_gateway.status, StatusCode::BAD_GATEWAY);
    assert_security_headers(&bad_gateway, true);
    let target = Target::from_url(&format!("http://127.0.0.1:{}", gw.http.port()), None)
        .await
        .unwrap();
    let redirect = client::connect(&target)
        .await
        .unwrap()
        .get("/a")
        .await
        .unwrap();
    assert_eq!(redirect.status, StatusCode::MOVED_PERMANENTLY);
    assert_security_headers(&redirect, false);
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

pub(crate) async fn websocket(
    gw: &Gateway,
    pki: &service_kit::testkit::TestPki,
    cookie: Option<&str>,
) -> (Ws, Option<String>) {
    let tcp = client::open_tcp(gw.https, None).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_with(&[b"http/1.1"], false))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "wss://localhost:{}/ws/notifications",
            gw.https.port()
        ))
        .unwrap();
    if let Some(c) = cookie {
        request.headers_mut().insert("cookie", c.parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_string());
    (ws, set_cookie)
}

pub(crate) async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_and_websockets() {
    let fx = Fixture::new();
    let b0 = Backend::start("c0", &fx.pki).await;
    let b1 = Backend::start("c1", &fx.pki).await;
    let b2 = Backend::start("c2", &fx.pki).await;
    let config = |list: &str| {
        format!(
            r#"
[upstreams.customer]
algorithm = "least_conn"
sticky = {{ cookie = "is_sticky", secret = "0123456789abcdef0123" }}
servers = [{list}]
[[routes]]
prefix = "/"
upstream = "customer"
sticky = true
[[routes]]
prefix = "/balanced"
upstream = "customer"
"#
        )
    };
    let gw = fx.start_gateway(&config(&servers(
        &[&b0, &b1, &b2],
        ", max_fails = 1, fail_timeout = \"30s\"",
    )));
    let mut conn = gw.connect().await;

    let first = conn.get("/whoami").await.unwrap();
    let set = first.header("set-cookie").unwrap().to_string();
    assert!(
        set.starts_with("is_sticky=") && set.contains("HttpOnly") && set.contains("Secure"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let home = first.header("x-served-by").unwrap().to_string();
    for _ in 0..100 {
        let r = conn
            .request(Method::GET, "/whoami", &[("cookie", &cookie)], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.header("x-served-by"), Some(home.as_str()));
        assert!(
            r.header("set-cookie").is_none(),
            "a valid pin is not re-set"
        );
    }

    // A route that does not opt in neither pins nor sets the cookie (only WebSocket upgrades
    // would): least_conn keeps balancing clients that carry a pin.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let r = conn
            .request(
                Method::GET,
                "/balanced/whoami",
                &[("cookie", &cookie)],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert!(r.header("set-cookie").is_none());
        seen.insert(r.header("x-served-by").unwrap().to_string());
    }
    assert!(seen.len() >= 2, "balanced despite the pin: {seen:?}");

    // A tampered cookie is ignored: a fresh pick and a new cookie.
    let value = cookie.trim_start_matches("is_sticky=");
    let (server_hex, tag) = value.split_once('.').unwrap();
    let other_backend = [&b0, &b1, &b2]
        .into_iter()
        .find(|b| b.name != home)
        .unwrap();
    let forged_server: String = other_backend
        .addr
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_ne!(forged_server, server_hex);
    let forged = format!("is_sticky={forged_server}.{tag}");
    let r = conn
        .request(Method::GET, "/whoami", &[("cookie", &forged)], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.header("set-cookie").is_some(),
        "tampered cookie must be replaced"
    );

    // The WebSocket upgrade honours the pin; messages flow both ways.
    let (mut ws, _) = websocket(&gw, &fx.pki, Some(&cookie)).await;
    assert_eq!(next_text(&mut ws).await, format!("hello from {home}"));
    ws.send(Message::Text("ping-1".into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "ping-1");

    // A reload that keeps the server keeps the WebSocket open.
    let all = servers(&[&b0, &b1, &b2], ", max_fails = 1, fail_timeout = \"30s\"");
    std::fs::write(
        &gw.config,
        fx.config_head() + &config(&all).replace("least_conn", "round_robin"),
    )
    .unwrap();
    assert_eq!(gw.reload().await.status, StatusCode::OK);
    ws.send(Message::Text("after-reload".into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "after-reload");

    // The pinned server dies: the client is re-pinned elsewhere.
    let pinned = [&b0, &b1, &b2]
        .into_iter()
        .find(|b| b.name == home)
        .unwrap();
    pinned.kill();
    let r = conn
        .request(Method::GET, "/whoami", &[("cookie", &cookie)], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(r.header("x-served-by"), Some(home.as_str()));
    let repinned = r.header("set-cookie").expect("re-pinned").to_string();
    assert_ne!(repinned.split(';').next().unwrap(), cookie);

    // A WebSocket to a server that a reload removes is closed with 1001.
    let survivor = r.header("x-served-by").unwrap().to_string();
    let new_cookie = repinned.split(';').next().unwrap().to_string();
    let (mut ws2, _) = websocket(&gw, &fx.pki, Some(&new_cookie)).await;
    assert_eq!(next_text(&mut ws2).await, format!("hello from {survivor}"));
    let remaining: Vec<&Backend> = [&b0, &b1, &b2]
        .into_iter()
        .filter(|b| b.name != survivor)
        .collect();
    std::fs::write(
        &gw.config,
        fx.config_head() + &config(&servers(&remaining, "")),
    )
    .unwrap();
    assert_eq!(gw.reload().await.status, StatusCode::OK);
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws2.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_assets_are_cached_within_the_memory_bound() {
    let fx = Fixture::new();
    let b = Backend::start("static-1", &fx.pki).await;
    let gw = fx.start_gateway(&format!(
        r#"
[cache]
max_size = "1m"
[upstreams.pool]
servers = [{}]
[[routes]]
prefix = "/static/"
upstream = "pool"
cache = {{ max_object_size = "64k" }}
[[routes]]
prefix = "/"
upstream = "pool"
"#,
        servers(&[&b], "")
    ));
    let mut conn = gw.connect().await;
    let miss = conn.get("/static/app.css").await.unwrap();
    assert_eq!(miss.header("x-cache"), Some("MISS"), "{:?}", miss.headers);
    let hits_after_miss = b.hits();
    let hit = conn.get("/static/app.css").await.unwrap();
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert!(hit.header("age").is_some());
    assert_eq!(hit.body, miss.body);
    assert_eq!(hit.header("x-served-by"), Some("static-1"));
    assert_ne!(hit.header("x-request-id"), miss.header("x-request-id"));
    assert_eq!(
        b.hits(),
        hits_after_miss,
        "a hit must not reach the backend"
    );
    assert_security_headers(&hit, true);
    assert!(hit.header("server").is_none() && hit.header("x-powered-by").is_none());

    // Private responses are never cached.
    for _ in 0..3 {
        let r = conn.get("/static/private/app.css").await.unwrap();
        assert_eq!(r.header("x-cache"), Some("MISS"));
    }
    assert_eq!(b.hits(), hits_after_miss + 3);
    // Routes without a cache do not cache.
    let before = b.hits();
    conn.get("/other/static/app.css").await.unwrap();
    conn.get("/other/static/app.css").await.unwrap();
    assert_eq!(b.hits(), before + 2);

    // Many distinct assets: the cache stays under its byte bound.
    for i in 0..400 {
        conn.get(&format!("/static/file-{i}.js?{}", "p".repeat(4000)))
            .await
            .unwrap();
    }
    let metrics = gw.admin_get("/metrics").await.text();
    let size: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_cache_size_bytes "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(size > 0 && size <= 1 << 20, "cache holds {size} bytes");
    assert!(
        metrics.contains(r#"gateway_cache_requests_total{result="hit"} 1"#),
        "{metrics}"
    );
}

/// NGINX's `internal` and `allow`/`deny`: internal paths are 404 to clients, denied
/// addresses get 403, both as JSON errors with the request id and security headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_and_access_rules() {
    let fx = Fixture::new();
    let b0 = Backend::start("b0", &fx.pki).await;
    let gw = fx.start_gateway(&format!(
        r#"
[upstreams.app]
servers = [{}]
[[routes]]
prefix = "/"
upstream = "app"
[[routes]]
prefix = "/metrics"
upstream = "app"
internal = true
[[routes]]
prefix = "/closed"
upstream = "app"
access = ["deny all"]
[[routes]]
prefix = "/local"
upstream = "app"
access = ["deny 127.0.0.2", "allow 127.0.0.0/8", "deny all"]
"#,
        servers(&[&b0], "")
    ));
    let mut conn = gw.connect().await;
    let cases: &[(&str, StatusCode, Option<&str>)] = &[
        ("/whoami", StatusCode::OK, None),
        ("/metrics", StatusCode::NOT_FOUND, Some("no_route")),
        ("/metrics/anything", StatusCode::NOT_FOUND, Some("no_route")),
        ("/METRICS", StatusCode::NOT_FOUND, Some("no_route")),
        ("/closed/x", StatusCode::FORBIDDEN, Some("forbidden")),
        ("/local/whoami", StatusCode::OK, None),
    ];
    for (path, status, code) in cases {
        let r = conn.get(path).await.unwrap();
        assert_eq!(r.status, *status, "{path}");
        if let Some(code) = code {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["error"]["code"], *code, "{path}");
            assert_eq!(
                body["error"]["request_id"].as_str(),
                r.header("x-request-id"),
                "{path}"
            );
            assert_eq!(
                r.header("x-content-type-options"),
                Some("nosniff"),
                "{path}"
            );
            assert!(
                r.header("x-served-by").is_none(),
                "{path} reached a backend"
            );
        }
    }
}

fn assert_json_error_with_id(resp: &client::Response, status: StatusCode, code: &str) {
    assert_eq!(resp.status, status, "{}", resp.text());
    let json = resp.json().unwrap();
    assert_eq!(json["error"]["status"], status.as_u16());
    assert_eq!(json["error"]["code"], code);
    let id = resp.header("x-request-id").expect("X-Request-ID");
    assert_eq!(json["error"]["request_id"], id);
    assert_security_headers(resp, true);
}

/// Writes `head` and a `len`-byte body over a fresh HTTP/1.1 TLS connection, the whole body
/// before reading anything (as Python's http.client does), then reads the reply.
async fn post_all_then_read(
    addr: SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
    len: usize,
) -> String {
    let tcp = client::open_tcp(addr, None).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        if let Err(e) = stream.write_all(&chunk[..n]).await {
            return format!("write failed after {sent} bytes: {e}");
        }
        sent += n;
    }
    let _ = stream.flush().await;
    let mut reply = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await {
        Ok(Ok(_)) => String::from_utf8_lossy(&reply).into_owned(),
        Ok(Err(e)) if !reply.is_empty() => {
            String::from_utf8_lossy(&reply).into_owned() + &format!(" (then {e})")
        }
        Ok(Err(e)) => format!("read failed: {e}"),
        Err(_) => "read timed out".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_at_the_protocol_edges_are_json() {
    let fx = Fixture::new();
    let b = Backend::start("edge-1", &fx.pki).await;
    let gw = fx.start_gateway(&format!(
        r#"
[defaults]
client_max_body_size = "1m"

[upstreams.pool]
servers = [{}]
[[routes]]
prefix = "/"
upstream = "pool"
"#,
        servers(&[&b], "")
    ));
    let fat = "v".repeat(70 * 1024);

    // A 70 KB head is past hyper's default header limits: still our JSON 431, both protocols.
    let mut h1 = gw.connect_h1(&fx.pki).await;
    assert!(!h1.is_h2());
    let resp = h1
        .request(Method::GET, "/whoami", &[("x-fat", &fat)], Bytes::new())
        .await
        .unwrap();
    assert_json_error_with_id(
        &resp,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    );
    let mut h2 = gw.connect().await;
    assert!(h2.is_h2());
    let resp = h2
        .request(Method::GET, "/whoami", &[("x-fat", &fat)], Bytes::new())
        .await
        .unwrap();
    assert_json_error_with_id(
        &resp,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    );

    // h2: a 64 MiB body gets the JSON 413, the stream ends without an error reset and the
    // connection keeps serving.
    let started = Instant::now();
    let resp = h2
        .request(
            Method::POST,
            "/upload",
            &[],
            Bytes::from(vec![b'x'; 64 << 20]),
        )
        .await
        .unwrap();
    assert_json_error_with_id(&resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(h2.get("/whoami").await.unwrap().status, StatusCode::OK);
    assert_eq!(b.hits(), 1, "neither oversized request reached the backend");

    // HTTP/1.1: a client that writes its whole body before reading reads the 413 (the
    // gateway lingers instead of resetting the connection), 40 times out of 40.
    let tls = fx.pki.client_with(&[b"http/1.1"], false);
    let started = Instant::now();
    let mut tries = tokio::task::JoinSet::new();
    for i in 0..40usize {
        let (addr, tls) = (gw.https, tls.clone());
        let len = if i % 10 == 9 { 16 << 20 } else { 2 << 20 };
        tries.spawn(async move { (len, post_all_then_read(addr, tls, len).await) });
        if tries.len() >= 4 {
            let (len, reply) = tries.join_next().await.unwrap().unwrap();
            assert_lingered_413(len, &reply);
        }
    }
    while let Some(done) = tries.join_next().await {
        let (len, reply) = done.unwrap();
        assert_lingered_413(len, &reply);
    }
    eprintln!("40 early 413s over HTTP/1.1 in {:?}", started.elapsed());
}

fn assert_lingered_413(len: usize, reply: &str) {
    assert!(reply.starts_with("HTTP/1.1 413"), "{len} bytes: {reply}");
    assert!(reply.contains("\"payload_too_large\""), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("x-request-id:"),
        "{reply}"
    );
}

/// NGINX Plus' `auth_jwt`: a route checks bearer tokens against the JWKS before the request
/// costs a backend anything; bad tokens get 401 JSON with an RFC 6750 challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_check_bearer_tokens_before_the_backend() {
    use service_kit::auth::{sign, Claims, Role, SigningKey};
    use service_kit::testkit::TestAuth;
    let fx = Fixture::new();
    let auth = TestAuth::new(fx.dir.path());
    let b0 = Backend::start("b0", &fx.pki).await;
    let gw = fx.start_gateway(&format!(
        r#"
[auth_jwt]
jwks = "{}"
[upstreams.app]
servers = [{}]
[[routes]]
prefix = "/"
upstream = "app"
[[routes]]
prefix = "/api"
upstream = "app"
auth_jwt = {{ audience = "admin-server" }}
"#,
        auth.jwks.display(),
        servers(&[&b0], "")
    ));
    let mut conn = gw.connect().await;
    let stranger = SigningKey::generate().unwrap();
    let expired = sign(
        &Claims {
            exp: 1,
            ..Claims::staff("x", Role::Admin, &["admin-server"], Duration::from_secs(60))
        },
        &auth.key,
    )
    .unwrap();
    let alg_none = {
        let good = auth.staff(Role::Admin, "admin-server");
        let mut parts = good.split('.');
        let (_, payload) = (parts.next(), parts.next().unwrap());
        // {"alg":"none","typ":"JWT"}
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
    };
    let cases: Vec<(String, Option<String>, StatusCode)> = vec![
        ("no token".into(), None, StatusCode::UNAUTHORIZED),
        (
            "valid".into(),
            Some(auth.staff(Role::Viewer, "admin-server")),
            StatusCode::OK,
        ),
        (
            "wrong audience".into(),
            Some(auth.staff(Role::Admin, "customer-services")),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "another key".into(),
            Some(
                sign(
                    &Claims::staff("x", Role::Admin, &["admin-server"], Duration::from_secs(60)),
                    &stranger,
                )
                .unwrap(),
            ),
            StatusCode::UNAUTHORIZED,
        ),
        ("expired".into(), Some(expired), StatusCode::UNAUTHORIZED),
        ("alg none".into(), Some(alg_none), StatusCode::UNAUTHORIZED),
        (
            "garbage".into(),
            Some("not.a.token".into()),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (what, token, status) in &cases {
        let bearer = token.as_ref().map(|t| TestAuth::bearer(t));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        let r = conn
            .request(Method::GET, "/api/whoami", &headers, Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, *status, "{what}");
        if *status == StatusCode::UNAUTHORIZED {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{what}");
            assert!(body["error"]["request_id"].is_string(), "{what}");
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer realm=\"admin-server\""),
                "{what}: {challenge}"
            );
            assert!(
                r.header("x-served-by").is_none(),
                "{what} reached a backend"
            );
        }
    }
    // Routes without the check are untouched.
    assert_eq!(conn.get("/whoami").await.unwrap().status, StatusCode::OK);
}
