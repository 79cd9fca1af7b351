//! The committed Prometheus and Grafana files: promtool accepts the config and the rules, the
//! rule unit tests pass, and every dashboard panel queries our pinned datasource.

use std::path::PathBuf;

use crate::repo;
use std::process::Command;

use devctl::plan::{Plan, PlanOptions, RuntimeKind, Secrets};
use devctl::state::{self, StateDir};
use devctl::topology::Topology;

/// promtool, or None when it is absent outside CI (in CI its absence fails the test).
fn promtool() -> Option<PathBuf> {
    service_kit::prereq::tool(
        "promtool",
        "scripts/test.sh installs Debian's prometheus package",
    )
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_rules_and_their_unit_tests_pass() {
    let Some(promtool) = promtool() else { return };
    let rules = repo().join("prometheus/rules/platform.yml");
    let out = run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules));
    assert!(out.contains("SUCCESS"), "{out}");
    run(Command::new(&promtool)
        .arg("test")
        .arg("rules")
        .arg(repo().join("prometheus/tests/platform.test.yml")));
}

#[test]
fn promtool_accepts_the_config_as_devctl_lays_it_out() {
    let Some(promtool) = promtool() else { return };
    let topology = Topology::load(&repo().join("topology/dev.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan::build(
        &topology,
        &PlanOptions {
            runtime: RuntimeKind::Docker,
            scale: Default::default(),
            secrets: Secrets {
                ha: "x".repeat(32),
                sticky: "y".repeat(32),
                jwks: r#"{"keys":[]}"#.into(),
            },
            state_dir: dir.path().to_path_buf(),
            version: "0".into(),
        },
    )
    .unwrap();
    let certs = StateDir::new(dir.path().join("state"))
        .issue(&plan, "test CA", devctl::state::Reissue::Changed)
        .unwrap();
    let out = dir.path().join("render");
    state::render_to(&out, &plan, &certs).unwrap();
    let config = out.join("prometheus/prometheus.yml");
    assert!(out.join("prometheus/targets/backend-admin.json").is_file());
    let text = run(Command::new(&promtool)
        .arg("check")
        .arg("config")
        .arg(&config));
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn dashboards_use_the_provisioned_datasource() {
    let provisioning =
        std::fs::read_to_string(repo().join("grafana/provisioning/datasources/prometheus.yml"))
            .unwrap();
    let uid = provisioning
        .lines()
        .find_map(|l| l.trim().strip_prefix("uid:"))
        .map(str::trim)
        .expect("pinned uid");
    let mut titles = Vec::new();
    for name in ["gateway-overview.json", "backends.json"] {
        let text = std::fs::read_to_string(repo().join("grafana/dashboards").join(name)).unwrap();
        let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
        let panels = dash["panels"].as_array().unwrap();
        assert!(panels.len() >= 6, "{name}");
        for p in panels {
            assert_eq!(p["datasource"]["uid"], uid, "{name}: {}", p["title"]);
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty());
            for t in targets {
                assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
                assert_eq!(t["datasource"]["uid"], uid);
            }
            titles.push(p["title"].as_str().unwrap_or_default().to_string());
        }
    }
    for wanted in [
        "Requests per second",
        "p99",
        "5xx",
        "upstream server",
        "up",
        "Retries",
        "Rate-limited",
        "VIP holder",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel about {wanted}: {titles:?}"
        );
    }
}
