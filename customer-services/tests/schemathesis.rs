//! schemathesis against a running customer-services: requests generated from the served
//! OpenAPI document, with a staff admin token; no 5xx and no response outside the document allowed.

use std::process::Command;

use service_kit::auth::Role;
use service_kit::testkit::{Schemathesis, ServerProcess, TestAuth, TestPki, SCHEMATHESIS_HINT};

const BIN: &str = env!("CARGO_BIN_EXE_customer-services");

#[test]
fn schemathesis_finds_no_server_errors_or_schema_violations() {
    let Some(st) = service_kit::prereq::tool("st", SCHEMATHESIS_HINT) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path(), &["localhost", "127.0.0.1"]);
    let auth = TestAuth::new(dir.path());
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .args(["--host", "127.0.0.1", "--port", "0", "--instance-id", "st"])
        .arg("--tls-cert")
        .arg(&pki.server_cert)
        .arg("--tls-key")
        .arg(&pki.server_key)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        // Reports sleep for their duration: keep generated ones short (longer asks are a 422).
        .args(["--report-duration", "0s", "--report-max-duration", "50ms"])
        .args(auth.args());
    let server = ServerProcess::start(cmd);
    let base = format!("https://localhost:{}", server.addr.port());
    let token = auth.staff(Role::Admin, "customer-services");
    service_kit::testkit::schemathesis(&Schemathesis {
        st: &st,
        schema_url: format!("{base}{}", customer_services::openapi::PATH),
        base_url: base,
        token: &token,
        ca_cert: &pki.ca_cert,
        scratch: dir.path(),
    });
}
