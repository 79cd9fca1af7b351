//! The static release build of our binaries (`cargo build --release`, crt-static), with its
//! progress: cargo's JSON messages name every compiled unit, counted against the size of the
//! last build (kept in the state dir with how long it took), so a cold build that takes
//! minutes shows how far along it is.

use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::images::{ImageError, BINARIES, TARGET};

/// What the last build did (`<state>/last-build.json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LastBuild {
    /// Units cargo reported (fresh or compiled): the full size of the build.
    pub units: u64,
    /// Units it actually compiled.
    pub compiled: u64,
    pub seconds: f64,
}

impl LastBuild {
    pub fn load(path: &Path) -> Option<LastBuild> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub fn took(&self) -> Duration {
        Duration::from_secs_f64(self.seconds.max(0.0))
    }
}

/// One line of cargo's `--message-format json` output, reduced to what we count.
#[derive(Debug, Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    fresh: bool,
    target: Option<MessageTarget>,
}

#[derive(Debug, Deserialize)]
struct MessageTarget {
    name: String,
}

/// A unit cargo finished: its name and whether it was already built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub fresh: bool,
}

/// Reads one line of cargo's JSON output: Some for a finished unit.
pub fn parse_unit(line: &str) -> Option<Unit> {
    let m: Message = serde_json::from_str(line).ok()?;
    (m.reason == "compiler-artifact").then(|| Unit {
        name: m.target.map(|t| t.name).unwrap_or_default(),
        fresh: m.fresh,
    })
}

/// Runs the build; `on_unit` sees every finished unit. Cargo's own output (progress lines,
/// warnings, errors) goes to `log`; a failure returns its last lines.
pub fn build_binaries(
    repo: &Path,
    log: &Path,
    mut on_unit: impl FnMut(&Unit),
) -> Result<LastBuild, ImageError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ImageError::Io { path, source }
    };
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let err = std::fs::File::create(log).map_err(io(log))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(repo)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "--target", TARGET])
        .arg("--message-format=json-render-diagnostics");
    for b in BINARIES {
        cmd.args(["-p", b]);
    }
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(err)
        .stdin(Stdio::null())
        .spawn()
        .map_err(ImageError::Cargo)?;
    let mut stats = LastBuild::default();
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(unit) = parse_unit(&line) {
                stats.units += 1;
                stats.compiled += u64::from(!unit.fresh);
                on_unit(&unit);
            }
        }
    }
    let status = child.wait().map_err(ImageError::Cargo)?;
    stats.seconds = started.elapsed().as_secs_f64();
    if status.success() {
        return Ok(stats);
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    Err(ImageError::Build {
        status: status.to_string(),
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_messages_count_units() {
        let cases: &[(&str, Option<Unit>)] = &[
            (
                r#"{"reason":"compiler-artifact","package_id":"x","target":{"name":"tokio","kind":["lib"]},"fresh":false}"#,
                Some(Unit {
                    name: "tokio".into(),
                    fresh: false,
                }),
            ),
            (
                r#"{"reason":"compiler-artifact","target":{"name":"serde"},"fresh":true}"#,
                Some(Unit {
                    name: "serde".into(),
                    fresh: true,
                }),
            ),
            (r#"{"reason":"build-script-executed"}"#, None),
            (r#"{"reason":"build-finished","success":true}"#, None),
            ("   Compiling tokio v1.0", None),
        ];
        for (line, want) in cases {
            assert_eq!(&parse_unit(line), want, "{line}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last-build.json");
        let last = LastBuild {
            units: 350,
            compiled: 12,
            seconds: 421.5,
        };
        std::fs::write(&path, serde_json::to_vec(&last).unwrap()).unwrap();
        assert_eq!(LastBuild::load(&path), Some(last));
        assert_eq!(last.took().as_secs(), 421);
    }
}
