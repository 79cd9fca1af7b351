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
                database: "z".repeat(24),
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
        let variables: Vec<&str> = dash["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        let panels = dash["panels"].as_array().unwrap();
        assert!(panels.len() >= 6, "{name}");
        for p in panels {
            assert_eq!(p["datasource"]["uid"], uid, "{name}: {}", p["title"]);
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty());
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.is_empty());
                assert_eq!(t["datasource"]["uid"], uid);
                // Variables are defined; the end-to-end test runs exprs unsubstituted, so a
                // filtered query falls back to 0 there (and when a filter matches nothing).
                for used in expr.split('$').skip(1) {
                    let var: String = used
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(
                        variables.contains(&var.as_str()),
                        "{name}: ${var} in {expr}"
                    );
                    assert!(expr.contains("or on() vector(0)"), "{name}: {expr}");
                }
            }
            titles.push(p["title"].as_str().unwrap_or_default().to_string());
        }
    }
    for wanted in [
        "Requests per second",
        "Latency p50 / p95 / p99",
        "CPU",
        "resident memory",
        "file descriptors",
        "Certificate days left",
        "Targets up",
        "HA state",
        "Rejected HA adverts",
        "Cache hit ratio",
        "WebSocket",
        "Refused connections",
        "active requests, idle and HTTP/2 connections",
        "Build",
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

/// Every alert and recording rule is exercised by the promtool unit tests.
#[test]
fn every_rule_has_a_unit_test() {
    let rules = std::fs::read_to_string(repo().join("prometheus/rules/platform.yml")).unwrap();
    let tests = std::fs::read_to_string(repo().join("prometheus/tests/platform.test.yml")).unwrap();
    let mut names = 0;
    for line in rules.lines().map(str::trim) {
        if let Some(alert) = line.strip_prefix("- alert:") {
            let alert = alert.trim();
            names += 1;
            let cases = tests.matches(&format!("alertname: {alert}\n")).count();
            assert!(
                cases >= 2,
                "{alert}: a firing and a quiet case wanted, {cases} found"
            );
        } else if let Some(record) = line.strip_prefix("- record:") {
            let record = record.trim();
            names += 1;
            assert!(
                tests.contains(&format!("expr: {record}")),
                "{record}: no promql_expr_test"
            );
        }
    }
    assert!(names >= 20, "{names} rules");
}
