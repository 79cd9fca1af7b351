//! admin-server over real TLS sockets with a real SQLite file: the binary is started as a
//! process, exactly as Docker and devctl will run it.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use service_kit::auth::{Claims, Role, SigningKey};
use service_kit::client::{self, Connection, Target};
use service_kit::testkit::{Backend, Postgres, ServerProcess, TestAuth, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_admin-server");

struct Fixture {
    /// Dropped (stopped) before `dir` is removed.
    pg: Option<Postgres>,
    dir: tempfile::TempDir,
    pki: TestPki,
    auth: TestAuth,
}

const AUD: &str = "admin-server";

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

    fn token(&self, role: Role) -> String {
        self.auth.staff(role, AUD)
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, instance: &str, extra: &[&str]) -> Command {
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
            .arg(self.data_dir())
            .args(["--drain-delay", "100ms"])
            .args(self.auth.args())
            .args(extra);
        if let Some(pg) = &self.pg {
            cmd.args(["--database-url", &pg.url()]);
        }
        cmd
    }

    fn start(&self, instance: &str) -> ServerProcess {
        ServerProcess::start(self.command(instance, &[]))
    }

    /// A connection carrying an admin token.
    async fn connect(&self, server: &ServerProcess) -> Connection {
        self.connect_as(server, &self.token(Role::Admin)).await
    }

    /// A connection carrying `token` (empty: none).
    async fn connect_as(&self, server: &ServerProcess, token: &str) -> Connection {
        let conn = connect_with(server, self.pki.client()).await.unwrap();
        if token.is_empty() {
            conn
        } else {
            conn.with_default_header("authorization", &TestAuth::bearer(token))
        }
    }
}

async fn connect_with(
    server: &ServerProcess,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Connection, client::ClientError> {
    let url = format!("https://localhost:{}", server.addr.port());
    let target = Target::from_url(&url, Some(tls)).await?;
    client::connect(&target).await
}

async fn json(conn: &mut Connection, method: Method, path: &str, body: &str) -> client::Response {
    conn.request(
        method,
        path,
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap()
}

/// Asserts the contract error shape and that it names the response's request id.
fn assert_error(resp: &client::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status.as_u16(), status, "body: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let body = resp.json().unwrap();
    let err = &body["error"];
    assert_eq!(err["status"], status);
    assert_eq!(err["code"], code, "{body}");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    let id = resp.header("x-request-id").expect("x-request-id header");
    assert_eq!(err["request_id"], id);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_policy_versions_alpn_and_identity_headers() {
    let fx = Fixture::new();
    let server = fx.start("admin-1");

    // TLS 1.0 and 1.1 ClientHellos get an alert, never a ServerHello.
    for legacy in [0x01u8, 0x02] {
        let reply = raw_client_hello(server.addr, legacy).await;
        assert_eq!(
            reply.first(),
            Some(&0x15),
            "TLS 1.{} got {reply:02x?}",
            legacy - 1
        );
    }

    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut conn = connect_with(&server, fx.pki.client_for_version(version))
            .await
            .unwrap();
        assert_eq!(conn.tls_version, Some(version.version));
        let resp = conn.get("/health").await.unwrap();
        assert_eq!(resp.status, StatusCode::OK);
    }

    let mut conn = fx.connect(&server).await;
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
    let resp = conn.get("/health").await.unwrap();
    assert_eq!(resp.version, http::Version::HTTP_2);
    assert_eq!(resp.header("x-served-by"), Some("admin-1"));
    let body = resp.json().unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], "admin-server");
    assert_eq!(body["instance"], "admin-1");
    assert!(body["uptime_seconds"].is_u64());

    // HTTP/1.1 when only it is offered; keep-alive reuses the connection.
    let mut h1 = connect_with(&server, fx.pki.client_with(&[b"http/1.1"], false))
        .await
        .unwrap();
    for _ in 0..3 {
        let resp = h1.get("/health").await.unwrap();
        assert_eq!(resp.version, http::Version::HTTP_11);
        assert_eq!(resp.status, StatusCode::OK);
    }
    let resp = h1.get("/ready").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json().unwrap()["ready"], true);
}

/// A minimal ClientHello offering only TLS 1.`minor - 1` (no supported_versions extension).
async fn raw_client_hello(addr: std::net::SocketAddr, minor: u8) -> Vec<u8> {
    let mut body = vec![0x03, minor];
    body.extend([7u8; 32]);
    body.push(0);
    let suites: [u16; 4] = [0xc013, 0xc014, 0x002f, 0x0035];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]);
    let mut handshake = vec![0x01];
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, minor];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&record).await.unwrap();
    let mut reply = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut reply))
        .await
        .unwrap()
        .unwrap_or(0);
    reply.truncate(n);
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate() {
    let fx = Fixture::new();
    let ca = fx.pki.ca_cert.to_str().unwrap().to_string();
    let server = ServerProcess::start(fx.command("admin-m", &["--client-ca", &ca]));

    let anonymous = async {
        let mut conn = connect_with(&server, fx.pki.client()).await?;
        conn.get("/health").await
    };
    assert!(
        anonymous.await.is_err(),
        "a client without a certificate was served"
    );

    let mut conn = connect_with(&server, fx.pki.client_with(&[b"h2"], true))
        .await
        .unwrap();
    assert_eq!(conn.get("/health").await.unwrap().status, StatusCode::OK);

    // The healthcheck presents the server's own certificate (valid for client auth too).
    let status = Command::new(BIN)
        .env_clear()
        .env("PORT", server.addr.port().to_string())
        .env("HOST", "127.0.0.1")
        .env("TLS_CERT", &fx.pki.server_cert)
        .env("TLS_KEY", &fx.pki.server_key)
        .env("CLIENT_CA", &fx.pki.ca_cert)
        .arg("healthcheck")
        .status()
        .unwrap();
    assert!(status.success());
}

service_kit::store_tests!(
    users_crud_across_two_replicas_sharing_one_database,
    roles_viewer_reads_operator_writes_admin_deletes_and_changes_roles,
);

async fn users_crud_across_two_replicas_sharing_one_database(backend: Backend) {
    let Some(fx) = Fixture::on(backend) else {
        return;
    };
    let a = fx.start("admin-a");
    let b = fx.start("admin-b");
    let mut ca = fx.connect(&a).await;
    let mut cb = fx.connect(&b).await;

    let created = json(
        &mut ca,
        Method::POST,
        "/api/v1/admin/users",
        r#"{"email":"Ada@Example.com","name":" Ada Lovelace ","role":"admin"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let user = created.json().unwrap();
    let id = user["id"].as_i64().unwrap();
    assert_eq!(user["name"], "Ada Lovelace");
    assert_eq!(
        created.header("location"),
        Some(format!("/api/v1/admin/users/{id}").as_str())
    );

    let path = format!("/api/v1/admin/users/{id}");
    let read = cb.get(&path).await.unwrap();
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.header("x-served-by"), Some("admin-b"));
    assert_eq!(read.json().unwrap()["email"], "Ada@Example.com");

    let updated = json(&mut cb, Method::PATCH, &path, r#"{"role":"viewer"}"#).await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(
        ca.get(&path).await.unwrap().json().unwrap()["role"],
        "viewer"
    );

    // Email uniqueness ignores case, on either replica.
    let dup = json(
        &mut cb,
        Method::POST,
        "/api/v1/admin/users",
        r#"{"email":"ada@example.com","name":"Other","role":"viewer"}"#,
    )
    .await;
    assert_error(&dup, 409, "conflict");

    // Concurrent writes from both replicas lose nothing.
    let mut tasks = Vec::new();
    for (server, prefix) in [(&a, "a"), (&b, "b")] {
        for worker in 0..4 {
            let tls = fx.pki.client();
            let port = server.addr.port();
            let bearer = TestAuth::bearer(&fx.token(Role::Operator));
            tasks.push(tokio::spawn(async move {
                let target = Target::from_url(&format!("https://localhost:{port}"), Some(tls))
                    .await
                    .unwrap();
                let mut conn = client::connect(&target)
                    .await
                    .unwrap()
                    .with_default_header("authorization", &bearer);
                for i in 0..10 {
                    let body = format!(
                        r#"{{"email":"{prefix}{worker}-{i}@load.test","name":"n","role":"support"}}"#
                    );
                    let resp = json(&mut conn, Method::POST, "/api/v1/admin/users", &body).await;
                    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let page = ca
        .get("/api/v1/admin/users?role=support&limit=100")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["total"], 80);
    assert_eq!(page["items"].as_array().unwrap().len(), 80);
    let second = cb
        .get("/api/v1/admin/users?limit=30&offset=60&role=support")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(second["items"].as_array().unwrap().len(), 20);

    let stats = cb.get("/api/v1/admin/stats").await.unwrap().json().unwrap();
    assert_eq!(stats["users"]["total"], 81);
    assert_eq!(stats["users"]["by_role"]["support"], 80);
    assert_eq!(stats["users"]["by_role"]["viewer"], 1);

    let deleted = ca
        .request(Method::DELETE, &path, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_error(&cb.get(&path).await.unwrap(), 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_errors_with_the_request_id() {
    let fx = Fixture::new();
    let server = fx.start("admin-1");
    let mut conn = fx.connect(&server).await;
    let users = "/api/v1/admin/users";

    type Case<'a> = (Method, &'a str, &'a str, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            users,
            "{not json",
            400,
            "malformed_json",
            None,
        ),
        (
            Method::POST,
            users,
            r#"{"email":"a@b.co","name":"A"}"#,
            422,
            "validation_failed",
            Some("role"),
        ),
        (
            Method::POST,
            users,
            r#"{"email":"a@b.co","name":"A","role":"admin","x":1}"#,
            422,
            "validation_failed",
            Some("x"),
        ),
        (
            Method::POST,
            users,
            r#"{"email":"nope","name":"A","role":"admin"}"#,
            422,
            "validation_failed",
            Some("email"),
        ),
        (
            Method::POST,
            users,
            r#"{"email":"a@b.co","name":"","role":"admin"}"#,
            422,
            "validation_failed",
            Some("name"),
        ),
        (
            Method::POST,
            users,
            r#"{"email":"a@b.co","name":"A","role":"root"}"#,
            422,
            "validation_failed",
            Some("role"),
        ),
        (
            Method::POST,
            users,
            r#"{"email":7,"name":"A","role":"admin"}"#,
            422,
            "validation_failed",
            Some("email"),
        ),
        (
            Method::PATCH,
            "/api/v1/admin/users/1",
            "{}",
            422,
            "validation_failed",
            Some("body"),
        ),
        (
            Method::GET,
            "/api/v1/admin/users/999",
            "",
            404,
            "not_found",
            None,
        ),
        (
            Method::GET,
            "/api/v1/admin/users/abc",
            "",
            400,
            "bad_request",
            None,
        ),
        (
            Method::GET,
            "/api/v1/admin/users?limit=0",
            "",
            422,
            "validation_failed",
            Some("limit"),
        ),
        (
            Method::GET,
            "/api/v1/admin/users?page=2",
            "",
            400,
            "bad_request",
            None,
        ),
        (Method::GET, "/no/such/route", "", 404, "not_found", None),
        (
            Method::DELETE,
            "/api/v1/admin/users/999",
            "",
            404,
            "not_found",
            None,
        ),
    ];
    for (method, path, body, status, code, field) in cases {
        let resp = json(&mut conn, method.clone(), path, body).await;
        let err = assert_error(&resp, status, code);
        assert_eq!(
            err["error"]["field"].as_str(),
            field,
            "{method} {path} {body}"
        );
    }

    let wrong_type = conn
        .request(
            Method::POST,
            users,
            &[("content-type", "text/plain")],
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    assert_error(&wrong_type, 415, "unsupported_media_type");

    let huge = format!(
        r#"{{"email":"a@b.co","name":"{}","role":"admin"}}"#,
        "x".repeat(1 << 20)
    );
    assert_error(
        &json(&mut conn, Method::POST, users, &huge).await,
        413,
        "payload_too_large",
    );

    // Request ids: a well-formed one is kept, anything else is replaced.
    let kept = conn
        .request(
            Method::GET,
            "/nope",
            &[("x-request-id", "trace-42.a:b_c")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(kept.header("x-request-id"), Some("trace-42.a:b_c"));
    assert_eq!(
        kept.json().unwrap()["error"]["request_id"],
        "trace-42.a:b_c"
    );
    let replaced = conn
        .request(
            Method::GET,
            "/health",
            &[("x-request-id", "bad id with spaces")],
            Bytes::new(),
        )
        .await
        .unwrap();
    let id = replaced.header("x-request-id").unwrap();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(id.len(), 36);

    // The process survived all of it.
    assert_eq!(conn.get("/health").await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_promtool_clean_and_count_requests() {
    let fx = Fixture::new();
    let server = fx.start("admin-1");
    let mut conn = fx.connect(&server).await;
    for _ in 0..3 {
        conn.get("/api/v1/admin/users/1").await.unwrap();
    }
    conn.get("/missing").await.unwrap();
    let text = conn.get("/metrics").await.unwrap().text();
    assert!(text.contains(
        r#"http_requests_total{method="GET",route="/api/v1/admin/users/{id}",status="404"} 3"#
    ));
    assert!(text.contains(r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#));
    assert!(text.contains(r#"build_info{service="admin-server",version=""#));
    assert!(text.contains("process_resident_memory_bytes"));
    service_kit::testkit::promtool_check(&text, fx.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_subcommand_reports_health() {
    let fx = Fixture::new();
    let server = fx.start("admin-1");
    let url = format!("https://127.0.0.1:{}/health", server.addr.port());
    let ok = Command::new(BIN)
        .env_clear()
        .args(["healthcheck", "--url", &url])
        .status()
        .unwrap();
    assert_eq!(ok.code(), Some(0));

    drop(server);
    let down = Command::new(BIN)
        .env_clear()
        .args(["healthcheck", "--url", &url, "--timeout", "2s"])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("healthcheck"));
}

#[test]
fn misconfiguration_is_one_line_and_exit_code_2() {
    let fx = Fixture::new();
    let cert = fx.pki.server_cert.to_str().unwrap().to_string();
    let key = fx.pki.server_key.to_str().unwrap().to_string();
    let data = fx.data_dir().to_str().unwrap().to_string();
    let blocker = fx.dir.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let under_file = blocker.join("data").to_str().unwrap().to_string();
    let missing_jwks = fx
        .dir
        .path()
        .join("none.json")
        .to_str()
        .unwrap()
        .to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--data-dir", &data], "--tls-cert is required"),
        (
            vec![
                "--tls-cert",
                "/nonexistent.crt",
                "--tls-key",
                &key,
                "--data-dir",
                &data,
            ],
            "cannot read TLS certificate /nonexistent.crt",
        ),
        (
            vec!["--tls-cert", &key, "--tls-key", &key, "--data-dir", &data],
            "holds no PEM certificate",
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &cert, "--data-dir", &data],
            "holds no PEM private key",
        ),
        (
            vec!["--plain-http", "--host", "not-an-ip", "--data-dir", &data],
            "invalid --host",
        ),
        (
            vec!["--plain-http", "--data-dir", &under_file],
            "is not writable",
        ),
        (
            vec!["--plain-http", "--port", "70000"],
            "invalid value '70000'",
        ),
        (vec!["--plain-http", "--data-dir", &data], "no token keys"),
        (
            vec![
                "--plain-http",
                "--data-dir",
                &data,
                "--auth-jwks",
                &missing_jwks,
            ],
            "cannot read JWKS",
        ),
        (
            vec!["--plain-http", "--data-dir", &data, "--auth-jwks", &cert],
            "not a JWKS",
        ),
        (
            vec![
                "--plain-http",
                "--data-dir",
                &data,
                "--auth-jwks",
                &cert,
                "--no-auth",
            ],
            "contradict",
        ),
    ];
    for (args, expected) in cases {
        let out = Command::new(BIN).env_clear().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        if !expected.starts_with("invalid value") {
            assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        }
    }
}

/// A token with every part chosen by the test (for alg `none` and hand-made headers).
fn raw_token(header: serde_json::Value, claims: serde_json::Value, signature: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!("{}.{}.{signature}", b64(header), b64(claims))
}

fn assert_challenge(resp: &client::Response, error: Option<&str>) {
    let challenge = resp
        .header("www-authenticate")
        .expect("WWW-Authenticate header");
    assert!(
        challenge.starts_with("Bearer realm=\"admin-server\""),
        "{challenge}"
    );
    match error {
        Some(error) => assert!(
            challenge.contains(&format!("error=\"{error}\"")),
            "{challenge}"
        ),
        None => assert!(!challenge.contains("error="), "{challenge}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_needs_a_valid_token_and_health_does_not() {
    let fx = Fixture::new();
    let server = fx.start("admin-1");

    let mut anonymous = fx.connect_as(&server, "").await;
    for path in ["/health", "/ready", "/metrics"] {
        let resp = anonymous.get(path).await.unwrap();
        assert_eq!(resp.status, StatusCode::OK, "{path}");
    }
    for (method, path) in [
        (Method::GET, "/api/v1/admin/health"),
        (Method::GET, "/api/v1/admin/users"),
        (Method::GET, "/api/v1/admin/users/1"),
        (Method::GET, "/api/v1/admin/stats"),
        (Method::POST, "/api/v1/admin/users"),
        (Method::PATCH, "/api/v1/admin/users/1"),
        (Method::DELETE, "/api/v1/admin/users/1"),
    ] {
        let resp = json(&mut anonymous, method.clone(), path, "{}").await;
        assert_error(&resp, 401, "unauthorized");
        assert_challenge(&resp, None);
    }
    // Another scheme is no bearer credential at all.
    let basic = anonymous
        .request(
            Method::GET,
            "/api/v1/admin/users",
            &[("authorization", "Basic YTpi")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_error(&basic, 401, "unauthorized");
    assert_challenge(&basic, None);

    let stranger = SigningKey::generate().unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let admin = Claims::staff("a", Role::Admin, &[AUD], hour);
    let expired = Claims {
        exp: admin.exp - 2 * 3600,
        ..admin.clone()
    };
    let claims_json = serde_json::to_value(&admin).unwrap();
    let cases = [
        (
            service_kit::auth::sign(&expired, &fx.auth.key).unwrap(),
            "expired",
        ),
        (
            service_kit::auth::sign(&admin, &stranger).unwrap(),
            "unknown key",
        ),
        (
            service_kit::auth::sign(
                &Claims::staff("a", Role::Admin, &["customer-services"], hour),
                &fx.auth.key,
            )
            .unwrap(),
            "aud",
        ),
        (
            raw_token(
                serde_json::json!({"alg": "none", "typ": "JWT", "kid": fx.auth.key.kid()}),
                claims_json.clone(),
                "",
            ),
            "malformed",
        ),
        (
            // Our kid, but signed by another key.
            {
                let real = service_kit::auth::sign(&admin, &stranger).unwrap();
                let signature = real.rsplit('.').next().unwrap().to_string();
                raw_token(
                    serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": fx.auth.key.kid()}),
                    claims_json.clone(),
                    &signature,
                )
            },
            "signature",
        ),
        ("not-a-jwt".to_string(), "malformed"),
        ("a.b.c".to_string(), "malformed"),
    ];
    for (token, why) in cases {
        let mut conn = fx.connect_as(&server, &token).await;
        let resp = conn.get("/api/v1/admin/users").await.unwrap();
        let body = assert_error(&resp, 401, "unauthorized");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{why}: {body}"
        );
        assert_challenge(&resp, Some("invalid_token"));
        // Never echoed back or logged.
        assert!(!resp.text().contains(&token), "{why}");
    }
    let log = server.output().join("\n");
    assert!(!log.contains(&service_kit::auth::sign(&admin, &stranger).unwrap()[..40]));
    assert!(!log.contains(&fx.token(Role::Admin)[..40]));
}

async fn roles_viewer_reads_operator_writes_admin_deletes_and_changes_roles(backend: Backend) {
    let Some(fx) = Fixture::on(backend) else {
        return;
    };
    let server = fx.start("admin-1");
    let mut viewer = fx.connect_as(&server, &fx.token(Role::Viewer)).await;
    let mut support = fx.connect_as(&server, &fx.token(Role::Support)).await;
    let mut operator = fx.connect_as(&server, &fx.token(Role::Operator)).await;
    let mut admin = fx.connect(&server).await;
    let mut customer = fx.connect_as(&server, &fx.auth.customer("Acme", AUD)).await;

    let body = r#"{"email":"op@example.com","name":"Op","role":"support"}"#;
    for conn in [&mut viewer, &mut support, &mut customer] {
        let resp = json(conn, Method::POST, "/api/v1/admin/users", body).await;
        assert_error(&resp, 403, "forbidden");
        assert_challenge(&resp, Some("insufficient_scope"));
    }
    let created = json(&mut operator, Method::POST, "/api/v1/admin/users", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let id = created.json().unwrap()["id"].as_i64().unwrap();
    let path = format!("/api/v1/admin/users/{id}");
    // Operators cannot mint admins.
    let admin_body = r#"{"email":"root@example.com","name":"Root","role":"admin"}"#;
    let resp = json(
        &mut operator,
        Method::POST,
        "/api/v1/admin/users",
        admin_body,
    )
    .await;
    assert_error(&resp, 403, "forbidden");

    for conn in [&mut viewer, &mut support, &mut operator] {
        for p in [path.as_str(), "/api/v1/admin/users", "/api/v1/admin/stats"] {
            assert_eq!(conn.get(p).await.unwrap().status, StatusCode::OK, "{p}");
        }
    }
    assert_error(&customer.get(&path).await.unwrap(), 403, "forbidden");

    // Operators update names, not roles; viewers and support update nothing.
    for conn in [&mut viewer, &mut support] {
        let resp = json(conn, Method::PATCH, &path, r#"{"name":"X"}"#).await;
        assert_error(&resp, 403, "forbidden");
    }
    let renamed = json(&mut operator, Method::PATCH, &path, r#"{"name":"Opal"}"#).await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text());
    let promote = json(
        &mut operator,
        Method::PATCH,
        &path,
        r#"{"role":"operator"}"#,
    )
    .await;
    assert_error(&promote, 403, "forbidden");
    let promoted = json(&mut admin, Method::PATCH, &path, r#"{"role":"operator"}"#).await;
    assert_eq!(promoted.json().unwrap()["role"], "operator");

    // Only admins delete.
    for conn in [&mut viewer, &mut support, &mut operator] {
        let resp = conn
            .request(Method::DELETE, &path, &[], Bytes::new())
            .await
            .unwrap();
        assert_error(&resp, 403, "forbidden");
    }
    let deleted = admin
        .request(Method::DELETE, &path, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_jwks_is_picked_up_without_restart() {
    let fx = Fixture::new();
    let server = fx.start("admin-1");
    let new_key = SigningKey::generate().unwrap();
    let claims = Claims::staff(
        "a",
        Role::Viewer,
        &[AUD],
        std::time::Duration::from_secs(600),
    );
    let new_token = service_kit::auth::sign(&claims, &new_key).unwrap();
    let old_token = fx.token(Role::Viewer);
    let mut conn = fx.connect_as(&server, &new_token).await;
    assert_eq!(
        conn.get("/api/v1/admin/users").await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );

    // Rotation: both keys listed; tokens of either kid pass.
    service_kit::auth::write_jwks(&fx.auth.jwks, &[&fx.auth.key, &new_key]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status = conn.get("/api/v1/admin/users").await.unwrap().status;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new key never accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut old = fx.connect_as(&server, &old_token).await;
    assert_eq!(
        old.get("/api/v1/admin/users").await.unwrap().status,
        StatusCode::OK
    );

    // A broken rewrite keeps the last good key set.
    std::fs::write(&fx.auth.jwks, "{\"keys\": [").unwrap();
    assert!(server.wait_for_output(
        "keeping the previous key set",
        std::time::Duration::from_secs(15)
    ));
    assert_eq!(
        conn.get("/api/v1/admin/users").await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_serves_without_tokens_and_warns() {
    let fx = Fixture::new();
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("NO_AUTH", "true")
        .args(["--plain-http", "--host", "127.0.0.1", "--port", "0"])
        .arg("--data-dir")
        .arg(fx.data_dir());
    let server = ServerProcess::start(cmd);
    assert!(server.wait_for_output(
        "authentication is DISABLED",
        std::time::Duration::from_secs(5)
    ));
    let resp = client::get(
        &format!("http://127.0.0.1:{}/api/v1/admin/users", server.addr.port()),
        None::<Arc<rustls::ClientConfig>>,
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
}

/// The database-away drill: PostgreSQL stops under load, then comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_means_503s_then_service_resumes_by_itself() {
    let Some(mut fx) = Fixture::on(Backend::Postgres) else {
        return;
    };
    let server = fx.start("admin-drill");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let tls = fx.pki.client();
        let port = server.addr.port();
        let bearer = TestAuth::bearer(&fx.token(Role::Operator));
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let target = Target::from_url(&format!("https://localhost:{port}"), Some(tls))
                .await
                .unwrap();
            let mut conn = client::connect(&target)
                .await
                .unwrap()
                .with_default_header("authorization", &bearer);
            let (mut acked, mut refused) = (Vec::new(), 0);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = format!(
                    r#"{{"email":"w{worker}-{i}@drill.test","name":"n","role":"support"}}"#
                );
                let resp = json(&mut conn, Method::POST, "/api/v1/admin/users", &body).await;
                if resp.status == StatusCode::CREATED {
                    acked.push(resp.json().unwrap()["id"].as_i64().unwrap());
                } else {
                    assert_error(&resp, 503, "store_unavailable");
                    refused += 1;
                }
            }
            (acked, refused)
        }));
    }
    let mut probe = fx.connect(&server).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pg = fx.pg.as_mut().unwrap();
    tokio::task::block_in_place(|| pg.stop());
    let stopped = std::time::Instant::now();
    let ready = probe.get("/ready").await.unwrap();
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text()
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(4),
        "{:?}",
        stopped.elapsed()
    );
    let body = ready.json().unwrap();
    assert!(body["checks"].to_string().contains("postgres"), "{body}");
    let read = probe.get("/api/v1/admin/users").await.unwrap();
    assert_error(&read, 503, "store_unavailable");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let pg = fx.pg.as_mut().unwrap();
    tokio::task::block_in_place(|| pg.restart());
    let restarted = std::time::Instant::now();
    loop {
        let resp = probe.get("/api/v1/admin/stats").await.unwrap();
        if resp.status == StatusCode::OK
            && probe.get("/ready").await.unwrap().status == StatusCode::OK
        {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "no 200 within 5 s: {}",
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut refused) = (Vec::new(), 0);
    for t in tasks {
        let (a, r) = t.await.unwrap();
        acked.extend(a);
        refused += r;
    }
    assert!(refused > 0, "the outage refused nothing");
    let pg = fx.pg.as_ref().unwrap();
    let committed: Vec<i64> = pg
        .query("SELECT id FROM users ORDER BY id")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    acked.sort_unstable();
    // Every acknowledged create is committed, and nothing else was.
    assert_eq!(committed, acked, "refused during the outage: {refused}");
    let output = server.output().join("\n");
    assert!(!output.contains("panicked"), "{output}");
}

/// `--database-ca` and `--database-password-file`: the connection is TLS, verified against
/// the CA (the URL's 127.0.0.1 against the certificate's IP), and logs in with the file's
/// password; a wrong password stops the start with the server's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_verified_tls_with_a_password_file() {
    let fx = Fixture::new();
    let Some(pg) = Postgres::start(fx.dir.path()) else {
        return;
    };
    tokio::task::block_in_place(|| pg.require_tls_and_password(&fx.pki, "app_user", "s3cret-pw"));
    let url = format!("postgres://app_user@127.0.0.1:{}/app", pg.port);
    let ca = fx.pki.ca_cert.to_string_lossy().into_owned();
    let password = fx.dir.path().join("db-password");
    std::fs::write(&password, "s3cret-pw\n").unwrap();
    let password = password.to_string_lossy().into_owned();
    let flags = [
        "--database-url",
        url.as_str(),
        "--database-ca",
        ca.as_str(),
        "--database-password-file",
        password.as_str(),
    ];
    let server = ServerProcess::start(fx.command("admin-tls", &flags));
    let mut conn = fx.connect(&server).await;
    let body = r#"{"email":"tls@example.com","name":"Over TLS","role":"viewer"}"#;
    let created = json(&mut conn, Method::POST, "/api/v1/admin/users", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let encrypted = tokio::task::block_in_place(|| {
        pg.query(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'app_user'",
        )
    });
    assert_eq!(encrypted, "t", "every app_user session is TLS");
    assert!(
        !server.output().join("\n").contains("s3cret-pw"),
        "the password never reaches the logs"
    );
    drop(server);

    std::fs::write(&password, "wr0ng-pa55").unwrap();
    let out = tokio::task::block_in_place(|| {
        let mut cmd = fx.command("admin-bad-password", &flags);
        cmd.output().unwrap()
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("wr0ng-pa55"), "{stderr}");
}

/// `backup-store` copies the live SQLite store while a replica serves; `restore-store` puts
/// the copy back under the running replica, which serves the restored data; neither accepts
/// a PostgreSQL URL or a file that is not a database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_and_restore_under_a_running_replica() {
    let fx = Fixture::new();
    let server = fx.start("admin-backup");
    let mut conn = fx.connect(&server).await;
    let body = r#"{"email":"kept@example.com","name":"Kept","role":"viewer"}"#;
    let created = json(&mut conn, Method::POST, "/api/v1/admin/users", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let path = format!("/api/v1/admin/users/{}", created.json().unwrap()["id"]);

    let run = |args: &[&str]| {
        tokio::task::block_in_place(|| {
            let mut cmd = Command::new(BIN);
            cmd.env_clear()
                .arg("--data-dir")
                .arg(fx.data_dir())
                .args(args)
                .output()
                .unwrap()
        })
    };
    let copy = run(&["backup-store"]);
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    assert!(copy.stdout.starts_with(b"SQLite format 3\0"));
    let file = fx.dir.path().join("copy.sqlite");
    std::fs::write(&file, &copy.stdout).unwrap();

    let deleted = json(&mut conn, Method::DELETE, &path, "").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(conn.get(&path).await.unwrap().status, StatusCode::NOT_FOUND);

    let restored = run(&["restore-store", "--from", &file.to_string_lossy()]);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let back = conn.get(&path).await.unwrap();
    assert_eq!(back.status, StatusCode::OK, "{}", back.text());
    assert_eq!(back.json().unwrap()["email"], "kept@example.com");

    // Bad input: a file that is not a database, a PostgreSQL store.
    let junk = fx.dir.path().join("junk");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let refused = run(&["restore-store", "--from", &junk.to_string_lossy()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("error:"));
    assert_eq!(conn.get(&path).await.unwrap().status, StatusCode::OK);
    let pg = run(&[
        "--database-url",
        "postgres://u@127.0.0.1:1/x",
        "backup-store",
    ]);
    assert_eq!(pg.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&pg.stderr).contains("pg_dump"));
}
