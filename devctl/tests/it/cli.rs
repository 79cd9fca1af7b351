//! The command line's contract: exit codes, one-line errors with a hint, `compose` output
//! that docker-compose accepts, `render` for production.

use std::path::{Path, PathBuf};

use crate::repo;
use std::process::{Command, Output};

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
    let render = || {
        devctl(
            &dir.path().join("state"),
            &[
                "--topology",
                "topology/production.toml",
                "render",
                "--out",
                out_dir.to_str().unwrap(),
            ],
            &[],
        )
    };
    let out = render();
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
    // Production's database is external: no postgres instance; the backends name it.
    assert!(!out_dir.join("postgres").exists());
    // What each instance runs: by tag until `images push` pins digests, then by digest.
    let images: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("images.json")).unwrap()).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        images["admin-3"],
        format!("insightserenity/admin-server:{version}")
    );
    let pinned = "registry.example.com/is/admin-server@sha256:0123";
    std::fs::write(
        dir.path().join("state/images.json"),
        format!(r#"{{"images": {{"insightserenity/admin-server:{version}": "{pinned}"}}}}"#),
    )
    .unwrap();
    assert!(render().status.success());
    let images: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("images.json")).unwrap()).unwrap();
    assert_eq!(images["admin-3"], pinned);
    assert_eq!(images["prometheus"], "prom/prometheus:v2.53.0");
}

/// What CI runs on the committed compose file: docker-compose must accept it.
#[test]
fn docker_compose_accepts_the_committed_file() {
    if service_kit::prereq::tool("docker-compose", "apt-get install docker-compose").is_none() {
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

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

/// A mistyped `scale` exits 1 with one line that says why, and changes nothing on disk.
#[test]
fn a_bad_scale_changes_nothing_and_leaves_devctl_usable() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let process = ["--runtime", "process"];
    // A first valid scale with nothing running is saved for the next `up`.
    let out = devctl(
        &state,
        &[&process[..], &["scale", "admin", "6"]].concat(),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = snapshot(&state);
    assert!(!before.is_empty());
    let cases: &[(&[&str], &str)] = &[
        (
            &["scale", "nope", "3"],
            "unknown pool \"nope\" (pools: admin, customer)",
        ),
        (
            &["scale", "admin", "0"],
            "pool admin: 0 instances do not fit (a pool has 1..=200)",
        ),
        (
            &["scale", "admin", "300"],
            "pool admin: 300 instances do not fit (a pool has 1..=200)",
        ),
    ];
    for (args, reason) in cases {
        let out = devctl(&state, &[&process[..], args].concat(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert_eq!(snapshot(&state), before, "{args:?} changed the state dir");
        let status = devctl(&state, &[&process[..], &["status", "--json"]].concat(), &[]);
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let admins = json["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["role"] == "admin")
            .count();
        assert_eq!(admins, 6, "the saved size still holds");
    }
}

/// A state dir broken by hand: `status` names the file and the entry and still shows what
/// runs, `down` repairs it.
#[test]
fn a_broken_scale_file_is_named_and_down_repairs_it() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"deployments":{"dev":{"nope":3}}}"#,
            "unknown pool \"nope\"",
        ),
        (
            r#"{"deployments":{"dev":{"admin":0}}}"#,
            "pool admin: 0 instances do not fit",
        ),
        ("{not json", "not a scale file"),
    ];
    for (text, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("scale.json"), text).unwrap();
        let process = ["--runtime", "process"];
        let out = devctl(&state, &[&process[..], &["status"]].concat(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}: {stderr}");
        assert!(
            stderr.contains("scale.json") && stderr.contains(reason),
            "{text}: {stderr}"
        );
        assert!(stderr.contains("devctl down"), "a hint: {stderr}");
        // Commands that need the plan fail with the same one line.
        let out = devctl(&state, &[&process[..], &["up", "--no-build"]].concat(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(reason), "{text}: {stderr}");
        // `down` needs no plan, and resets the sizes.
        let out = devctl(&state, &[&process[..], &["down"]].concat(), &[]);
        assert!(
            out.status.success(),
            "{text}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = devctl(&state, &[&process[..], &["status"]].concat(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("scale.json"),
            "{stderr}"
        );
    }
}

/// `open` never prints a URL for something that is not running.
#[test]
fn open_names_only_what_runs() {
    let dir = tempfile::tempdir().unwrap();
    for target in ["grafana", "prometheus", "alertmanager", "gateway"] {
        let out = devctl(
            &dir.path().join("state"),
            &["--runtime", "process", "open", target],
            &[("DISPLAY", "")],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{target}: {stderr}");
        assert!(out.stdout.is_empty(), "{target}: no URL printed");
        assert!(stderr.contains("is not running here"), "{target}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
