//! The command line's contract: exit codes, one-line errors with a hint, `compose` output
//! that docker-compose accepts, `render` for production.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn devctl(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_devctl"))
        .current_dir(repo())
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1_with_one_line_and_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = devctl(dir.path(), &["scale", "admin"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = devctl(dir.path(), &["bogus"], &[]);
    assert_eq!(out.status.code(), Some(2));

    let out = devctl(
        dir.path(),
        &["--runtime", "docker", "status"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot reach Docker at unix:///nonexistent/docker.sock")
            && stderr.contains("(or --runtime process)"),
        "{stderr}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n").unwrap();
    let out = devctl(
        dir.path(),
        &["--topology", bad.to_str().unwrap(), "status"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("devctl: topology "), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let out = devctl(dir.path(), &["--help"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"));
}

#[test]
fn render_writes_production_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = devctl(
        &dir.path().join("state"),
        &[
            "--topology",
            "topology/production.toml",
            "render",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(out_dir.join("gateway-1/gateway.toml")).unwrap();
    assert!(config.contains("address = \"10.0.2.10:3002\""));
    assert!(config.contains("vip = \"10.0.1.100/16\""));
    for f in [
        "gateway-2/tls/server.crt",
        "admin-5/tls/server.key",
        "customer-1/tls/ca.crt",
        "prometheus/prometheus.yml",
        "prometheus/rules/platform.yml",
        "prometheus/targets/backend-customer.json",
        "grafana/dashboards/gateway-overview.json",
    ] {
        assert!(out_dir.join(f).is_file(), "{f}");
    }
    let targets = std::fs::read_to_string(out_dir.join("prometheus/targets/gateway.json")).unwrap();
    assert!(targets.contains("10.0.1.11:9900"));
}

/// What CI runs on the committed compose file: docker-compose must accept it.
#[test]
fn docker_compose_accepts_the_committed_file() {
    let found = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "docker-compose is missing in CI"
        );
        eprintln!("skipped: docker-compose not found");
        return;
    }
    let out = Command::new("docker-compose")
        .current_dir(repo().join("compose"))
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
