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
use service_kit::auth::Role;
use service_kit::client::{self, Connection, Target};
use service_kit::testkit::{Backend, Postgres, ServerProcess, TestAuth, TestPki};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_customer-services");

service_kit::store_tests!(
    consultations_crud_and_validation,
    websocket_names_its_instance_and_carries_changes_from_other_replicas,
    customers_see_and_change_only_their_own_consultations,
    websocket_needs_a_token_and_customers_get_only_their_own_events,
);

struct Fixture {
    /// Dropped (stopped) before `dir` is removed.
    pg: Option<Postgres>,
    dir: tempfile::TempDir,
    pki: TestPki,
    auth: TestAuth,
}

const AUD: &str = "customer-services";

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(dir.path(), &["localhost", "127.0.0.1"]);
        let auth = TestAuth::new(dir.path());
        Fixture {
            pg: None,
            dir,
            pki,
            auth,
        }
    }

    /// A fixture whose servers use `backend`; `None` when PostgreSQL is missing (skipped).
    fn on(backend: Backend) -> Option<Fixture> {
        let mut fx = Fixture::new();
        if backend == Backend::Postgres {
            fx.pg = Some(Postgres::start(fx.dir.path())?);
        }
        Some(fx)
    }

    fn staff(&self, role: Role) -> String {
        self.auth.staff(role, AUD)
    }

    fn customer(&self, client: &str) -> String {
        self.auth.customer(client, AUD)
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
            .args(self.auth.args())
            .args(extra);
        if let Some(pg) = &self.pg {
            cmd.args(["--database-url", &pg.url()]);
        }
        ServerProcess::start(cmd)
    }

    /// A connection carrying a staff operator token.
    async fn connect(&self, server: &ServerProcess) -> Result<Connection, client::ClientError> {
        self.connect_as(server, &self.staff(Role::Operator)).await
    }

    /// A connection carrying `token` (empty: none).
    async fn connect_as(
        &self,
        server: &ServerProcess,
        token: &str,
    ) -> Result<Connection, client::ClientError> {
        let url = format!("https://localhost:{}", server.addr.port());
        let conn = client::connect(&Target::from_url(&url, Some(self.pki.client())).await?).await?;
        Ok(if token.is_empty() {
            conn
        } else {
            conn.with_default_header("authorization", &TestAuth::bearer(token))
        })
    }

    /// A WebSocket over TLS (HTTP/1.1 upgrade) to `path`, with a staff token in the header.
    async fn websocket(&self, server: &ServerProcess, path: &str) -> Ws {
        let request = self.ws_request(server, path, Some(&self.staff(Role::Viewer)));
        self.websocket_with(server, request).await.unwrap()
    }

    fn ws_request(
        &self,
        server: &ServerProcess,
        path: &str,
        token: Option<&str>,
    ) -> http::Request<()> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("wss://localhost:{}{path}", server.addr.port());
        let mut request = url.into_client_request().unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", TestAuth::bearer(token).parse().unwrap());
        }
        request
    }

    /// The upgrade's outcome: the socket, or the HTTP status it was refused with.
    async fn websocket_with(
        &self,
        server: &ServerProcess,
        request: http::Request<()>,
    ) -> Result<Ws, StatusCode> {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.pki.client_with(&[b"http/1.1"], false))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        match tokio_tungstenite::client_async(request, tls).await {
            Ok((ws, response)) => {
                assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
                Ok(ws)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status()),
            Err(e) => panic!("websocket: {e}"),
        }
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

async fn consultations_crud_and_validation(backend: Backend) {
    let Some(fx) = Fixture::on(backend) else {
        return;
    };
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

async fn websocket_names_its_instance_and_carries_changes_from_other_replicas(backend: Backend) {
    let Some(fx) = Fixture::on(backend) else {
        return;
    };
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
            // A connection queued in the backlog as the listener closed is reset; the next
            // one must be refused.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                assert!(Instant::now() < deadline, "listener never closed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
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
        .args(fx.auth.args())
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

async fn send(conn: &mut Connection, method: Method, path: &str, body: &str) -> client::Response {
    conn.request(
        method,
        path,
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap()
}

fn assert_error(resp: &client::Response, status: u16, code: &str) {
    assert_eq!(resp.status.as_u16(), status, "{}", resp.text());
    let body = resp.json().unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(
        body["error"]["request_id"],
        resp.header("x-request-id").unwrap()
    );
}

async fn customers_see_and_change_only_their_own_consultations(backend: Backend) {
    let Some(fx) = Fixture::on(backend) else {
        return;
    };
    let server = fx.start("customer-1", &[]);
    let mut staff = fx.connect(&server).await.unwrap();
    let mut viewer = fx
        .connect_as(&server, &fx.staff(Role::Viewer))
        .await
        .unwrap();
    let mut acme = fx.connect_as(&server, &fx.customer("Acme")).await.unwrap();
    let mut zed = fx.connect_as(&server, &fx.customer("Zed")).await.unwrap();
    let mut nobody = fx.connect_as(&server, "").await.unwrap();

    let resp = nobody.get("/api/v1/consultations").await.unwrap();
    assert_error(&resp, 401, "unauthorized");
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Bearer realm=\"customer-services\"")
    );
    assert_eq!(
        nobody.get("/api/v1/health").await.unwrap().status,
        StatusCode::UNAUTHORIZED,
        "the API's health alias is API too"
    );
    let wrong_aud = fx
        .connect_as(&server, &fx.auth.staff(Role::Admin, "admin-server"))
        .await
        .unwrap()
        .get("/api/v1/consultations")
        .await
        .unwrap();
    assert_error(&wrong_aud, 401, "unauthorized");

    let body = |client: &str| {
        format!(r#"{{"client":"{client}","topic":"T","scheduled_at":"2099-01-01T00:00:00Z"}}"#)
    };
    let own = send(
        &mut acme,
        Method::POST,
        "/api/v1/consultations",
        &body("Acme"),
    )
    .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.text());
    let acme_id = own.json().unwrap()["id"].as_i64().unwrap();
    let theirs = send(
        &mut staff,
        Method::POST,
        "/api/v1/consultations",
        &body("Zed"),
    )
    .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    let zed_id = theirs.json().unwrap()["id"].as_i64().unwrap();
    // A customer cannot create for another client; a viewer cannot write at all.
    let forged = send(
        &mut acme,
        Method::POST,
        "/api/v1/consultations",
        &body("Zed"),
    )
    .await;
    assert_error(&forged, 403, "forbidden");
    assert!(forged
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
    let resp = send(
        &mut viewer,
        Method::POST,
        "/api/v1/consultations",
        &body("Zed"),
    )
    .await;
    assert_error(&resp, 403, "forbidden");

    // Lists: customers see their own, staff everything.
    let page = acme
        .get("/api/v1/consultations")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"], acme_id);
    let page = zed
        .get("/api/v1/consultations")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["client"], "Zed");
    let page = viewer
        .get("/api/v1/consultations")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["total"], 2);

    // Another client's consultation does not exist for a customer (404), for every verb.
    let zed_path = format!("/api/v1/consultations/{zed_id}");
    assert_error(&acme.get(&zed_path).await.unwrap(), 404, "not_found");
    let resp = send(&mut acme, Method::PATCH, &zed_path, r#"{"topic":"mine"}"#).await;
    assert_error(&resp, 404, "not_found");
    let resp = send(&mut acme, Method::DELETE, &zed_path, "").await;
    assert_error(&resp, 404, "not_found");
    assert_eq!(zed.get(&zed_path).await.unwrap().status, StatusCode::OK);
    assert_eq!(viewer.get(&zed_path).await.unwrap().status, StatusCode::OK);

    // Its own: read, update (not handing it to another client), delete.
    let acme_path = format!("/api/v1/consultations/{acme_id}");
    assert_eq!(acme.get(&acme_path).await.unwrap().status, StatusCode::OK);
    let resp = send(&mut acme, Method::PATCH, &acme_path, r#"{"client":"Zed"}"#).await;
    assert_error(&resp, 403, "forbidden");
    let resp = send(
        &mut acme,
        Method::PATCH,
        &acme_path,
        r#"{"status":"cancelled"}"#,
    )
    .await;
    assert_eq!(resp.json().unwrap()["status"], "cancelled");

    // Reports aggregate every client: staff only.
    let resp = send(
        &mut acme,
        Method::POST,
        "/api/v1/reports",
        r#"{"duration_ms":1}"#,
    )
    .await;
    assert_error(&resp, 403, "forbidden");
    let resp = send(
        &mut viewer,
        Method::POST,
        "/api/v1/reports",
        r#"{"duration_ms":1}"#,
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);

    // Deletes: customers their own, viewers and support nothing, operators anything.
    let mut support = fx
        .connect_as(&server, &fx.staff(Role::Support))
        .await
        .unwrap();
    assert_error(
        &send(&mut support, Method::DELETE, &zed_path, "").await,
        403,
        "forbidden",
    );
    assert_error(
        &send(&mut viewer, Method::DELETE, &zed_path, "").await,
        403,
        "forbidden",
    );
    let resp = send(
        &mut support,
        Method::PATCH,
        &zed_path,
        r#"{"topic":"Help"}"#,
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let resp = send(&mut acme, Method::DELETE, &acme_path, "").await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    let resp = send(&mut staff, Method::DELETE, &zed_path, "").await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
}

async fn websocket_needs_a_token_and_customers_get_only_their_own_events(backend: Backend) {
    let Some(fx) = Fixture::on(backend) else {
        return;
    };
    let server = fx.start("customer-1", &[]);
    let path = "/api/v1/notifications";

    let refused = fx
        .websocket_with(&server, fx.ws_request(&server, path, None))
        .await
        .err();
    assert_eq!(refused, Some(StatusCode::UNAUTHORIZED));
    let refused = fx
        .websocket_with(
            &server,
            fx.ws_request(&server, "/api/v1/notifications?access_token=x.y.z", None),
        )
        .await
        .err();
    assert_eq!(refused, Some(StatusCode::UNAUTHORIZED));

    // Browsers: the token in the access_token query parameter.
    let acme_path = format!("{path}?access_token={}", fx.customer("Acme"));
    let mut acme = fx
        .websocket_with(&server, fx.ws_request(&server, &acme_path, None))
        .await
        .unwrap();
    // Others: Authorization: Bearer.
    let mut zed = fx
        .websocket_with(
            &server,
            fx.ws_request(&server, path, Some(&fx.customer("Zed"))),
        )
        .await
        .unwrap();
    let mut staff = fx.websocket(&server, path).await;
    for ws in [&mut acme, &mut zed, &mut staff] {
        assert_eq!(next_json(ws).await["type"], "hello");
    }

    let mut conn = fx.connect(&server).await.unwrap();
    let mut ids = Vec::new();
    for client in ["Zed", "Acme", "Zed"] {
        let body =
            format!(r#"{{"client":"{client}","topic":"T","scheduled_at":"2099-01-01T00:00:00Z"}}"#);
        let resp = post_json(&mut conn, "/api/v1/consultations", &body).await;
        ids.push(resp.json().unwrap()["id"].as_i64().unwrap());
    }
    // Staff see all three, in order.
    for id in &ids {
        assert_eq!(next_json(&mut staff).await["consultation_id"], *id);
    }
    // Acme sees only its own; the Zed events never arrive before it.
    assert_eq!(next_json(&mut acme).await["consultation_id"], ids[1]);
    assert_eq!(next_json(&mut zed).await["consultation_id"], ids[0]);
    assert_eq!(next_json(&mut zed).await["consultation_id"], ids[2]);

    // Moving a consultation from Acme to Zed: both hear about it; then only Zed.
    let moved = conn
        .request(
            Method::PATCH,
            &format!("/api/v1/consultations/{}", ids[1]),
            &[("content-type", "application/json")],
            Bytes::from_static(br#"{"client":"Zed"}"#),
        )
        .await
        .unwrap();
    assert_eq!(moved.status, StatusCode::OK);
    assert_eq!(next_json(&mut acme).await["consultation_id"], ids[1]);
    assert_eq!(next_json(&mut zed).await["consultation_id"], ids[1]);
    let deleted = conn
        .request(
            Method::DELETE,
            &format!("/api/v1/consultations/{}", ids[0]),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let event = next_json(&mut zed).await;
    assert_eq!(event["type"], "consultation.deleted");
    assert_eq!(event["consultation_id"], ids[0]);
    // Acme got nothing more: a ping is answered before any other message.
    acme.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), acme.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Message::Text("pong".into())
    );
}

#[test]
fn starting_without_keys_is_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .args(["--plain-http", "--host", "127.0.0.1", "--port", "0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--auth-jwks"), "{stderr}");
}
