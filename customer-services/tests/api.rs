//! customer-services over real TLS with a real SQLite file, run as a process: consultations,
//! the slow report, the cross-replica WebSocket feed and graceful drain on SIGTERM.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use rustls_pki_types::ServerName;
use service_kit::client::{self, Connection, Target};
use service_kit::testkit::{ServerProcess, TestPki};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_customer-services");

struct Fixture {
    dir: tempfile::TempDir,
    pki: TestPki,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(dir.path(), &["localhost", "127.0.0.1"]);
        Fixture { dir, pki }
    }

    fn start(&self, instance: &str, extra: &[&str]) -> ServerProcess {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--instance-id",
                instance,
            ])
            .arg("--tls-cert")
            .arg(&self.pki.server_cert)
            .arg("--tls-key")
            .arg(&self.pki.server_key)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--notify-poll", "50ms"])
            .args(extra);
        ServerProcess::start(cmd)
    }

    async fn connect(&self, server: &ServerProcess) -> Result<Connection, client::ClientError> {
        let url = format!("https://localhost:{}", server.addr.port());
        client::connect(&Target::from_url(&url, Some(self.pki.client())).await?).await
    }

    /// A WebSocket over TLS (HTTP/1.1 upgrade) to `path`.
    async fn websocket(
        &self,
        server: &ServerProcess,
        path: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>
    {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.pki.client_with(&[b"http/1.1"], false))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let url = format!("wss://localhost:{}{path}", server.addr.port());
        let (ws, response) = tokio_tungstenite::client_async(url, tls).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        ws
    }
}

async fn post_json(conn: &mut Connection, path: &str, body: &str) -> client::Response {
    conn.request(
        Method::POST,
        path,
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a WebSocket message within 10 s")
            .expect("stream open")
            .expect("valid frame");
        match msg {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consultations_crud_and_validation() {
    let fx = Fixture::new();
    let server = fx.start("customer-1", &[]);
    let mut conn = fx.connect(&server).await.unwrap();

    let created = post_json(
        &mut conn,
        "/api/v1/consultations",
        r#"{"client":"Acme","topic":"Onboarding","scheduled_at":"2099-01-15T10:30:00+01:00"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.header("x-served-by"), Some("customer-1"));
    let c = created.json().unwrap();
    assert_eq!(c["status"], "scheduled");
    assert_eq!(c["scheduled_at"], "2099-01-15T09:30:00Z");
    let path = format!("/api/v1/consultations/{}", c["id"]);

    let patched = conn
        .request(
            Method::PATCH,
            &path,
            &[("content-type", "application/json")],
            Bytes::from_static(br#"{"status":"completed"}"#),
        )
        .await
        .unwrap();
    assert_eq!(patched.json().unwrap()["status"], "completed");
    let page = conn
        .get("/api/v1/consultations?status=completed")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["topic"], "Onboarding");

    let cases = [
        (
            r#"{"client":"A","topic":"T","scheduled_at":"next tuesday"}"#,
            "scheduled_at",
        ),
        (
            r#"{"client":"","topic":"T","scheduled_at":"2099-01-01T00:00:00Z"}"#,
            "client",
        ),
        (
            r#"{"client":"A","scheduled_at":"2099-01-01T00:00:00Z"}"#,
            "topic",
        ),
        (
            r#"{"client":"A","topic":"T","scheduled_at":"2099-01-01T00:00:00Z","status":"lost"}"#,
            "status",
        ),
        (
            r#"{"client":"A","topic":"T","scheduled_at":"2099-01-01T00:00:00Z","room":1}"#,
            "room",
        ),
    ];
    for (body, field) in cases {
        let resp = post_json(&mut conn, "/api/v1/consultations", body).await;
        assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let err = resp.json().unwrap();
        assert_eq!(err["error"]["field"], field, "{body}");
        assert_eq!(
            err["error"]["request_id"],
            resp.header("x-request-id").unwrap()
        );
    }
    let bad_report = post_json(&mut conn, "/api/v1/reports", r#"{"duration_ms":999999}"#).await;
    assert_eq!(bad_report.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_report.json().unwrap()["error"]["field"], "duration_ms");

    let report = post_json(&mut conn, "/api/v1/reports", r#"{"duration_ms":50}"#).await;
    assert_eq!(report.status, StatusCode::OK);
    let report = report.json().unwrap();
    assert_eq!(report["report"]["generated_by"], "customer-1");
    assert_eq!(
        report["report"]["consultations"]["by_status"]["completed"],
        1
    );

    let not_ws = conn.get("/api/v1/notifications").await.unwrap();
    assert!(not_ws.status.is_client_error());
    assert_eq!(
        not_ws.json().unwrap()["error"]["code"],
        "websocket_required"
    );

    let deleted = conn
        .request(Method::DELETE, &path, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(conn.get(&path).await.unwrap().status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_names_its_instance_and_carries_changes_from_other_replicas() {
    let fx = Fixture::new();
    let a = fx.start("customer-a", &["--drain-delay", "100ms"]);
    let b = fx.start("customer-b", &[]);

    let mut ws = fx.websocket(&a, "/api/v1/notifications").await;
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["instance"], "customer-a");

    // A change made through replica b reaches a subscriber of replica a.
    let mut cb = fx.connect(&b).await.unwrap();
    let created = post_json(
        &mut cb,
        "/api/v1/consultations",
        r#"{"client":"Zed","topic":"Renewal","scheduled_at":"2099-03-01T12:00:00Z"}"#,
    )
    .await;
    let id = created.json().unwrap()["id"].as_i64().unwrap();
    let event = next_json(&mut ws).await;
    assert_eq!(event["type"], "consultation.created");
    assert_eq!(event["consultation_id"], id);
    assert_eq!(event["status"], "scheduled");

    ws.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Message::Text("pong".into())
    );

    // Draining closes the socket with 1001 (going away).
    a.terminate();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(
        close.map(|f| u16::from(f.code)),
        Some(1001),
        "close code should be going-away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_report_then_exits_zero() {
    let fx = Fixture::new();
    let mut server = fx.start("customer-1", &["--drain-delay", "1s"]);
    let mut report_conn = fx.connect(&server).await.unwrap();
    let mut probe = fx.connect(&server).await.unwrap();

    let report = tokio::spawn(async move {
        let started = Instant::now();
        let resp = post_json(
            &mut report_conn,
            "/api/v1/reports",
            r#"{"duration_ms":2500}"#,
        )
        .await;
        (resp, started.elapsed())
    });
    // Wait until the report is in flight (the metrics request itself is the other one).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = probe.get("/metrics").await.unwrap().text();
        if metrics.contains("http_requests_in_flight 2") {
            break;
        }
        assert!(Instant::now() < deadline, "report never became in-flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.terminate();
    // Readiness flips first, while the listener still accepts for the drain delay.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut fresh = fx
            .connect(&server)
            .await
            .expect("accepting during drain delay");
        let ready = fresh.get("/ready").await.unwrap();
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(ready.json().unwrap()["ready"], false);
            break;
        }
        assert!(Instant::now() < deadline, "/ready never answered 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Then new connections are refused while the report is still running.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(server.addr).await {
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
                break;
            }
            Ok(_) => {
                assert!(Instant::now() < deadline, "listener never closed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(
        !report.is_finished(),
        "the report should still be in flight"
    );

    let (resp, took) = report.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.json().unwrap()["report"]["duration_ms"], 2500);
    assert!(took >= Duration::from_millis(2500));

    let status = server.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0));
    assert!(server.wait_for_output("drained cleanly", Duration::from_secs(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_plain_http_mode() {
    let fx = Fixture::new();
    let server = fx.start("customer-1", &[]);
    let mut conn = fx.connect(&server).await.unwrap();
    assert!(conn.is_h2());
    // Several concurrent streams on one h2 connection.
    let resp = conn.get("/api/v1/consultations").await.unwrap();
    assert_eq!(resp.version, http::Version::HTTP_2);
    assert_eq!(resp.json().unwrap()["total"], 0);

    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .args(["--plain-http", "--host", "127.0.0.1", "--port", "0"])
        .arg("--data-dir")
        .arg(fx.dir.path().join("plain"));
    let plain = ServerProcess::start(cmd);
    let resp = client::get(
        &format!("http://127.0.0.1:{}/health", plain.addr.port()),
        None::<Arc<rustls::ClientConfig>>,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    // Instance id defaults to the hostname.
    assert!(!resp.header("x-served-by").unwrap_or_default().is_empty());
}
