//! Liveness and readiness state shared by a server's handlers and its accept loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

/// Whether the process is draining, and since when it runs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    draining: Arc<AtomicBool>,
    started: Instant,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle {
            draining: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
        }
    }

    /// Flips readiness to "not ready"; the accept loop calls this on SIGTERM.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

/// The `/health` body: the process is up and answering.
#[derive(Debug, Serialize)]
pub struct Liveness<'a> {
    pub status: &'static str,
    pub service: &'a str,
    pub instance: &'a str,
    pub version: &'a str,
    pub uptime_seconds: u64,
}

/// The `/ready` body; `ready == false` goes out with status 503.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: &'static str,
    pub ready: bool,
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Readiness {
    /// Ready only when not draining and every check passes.
    pub fn evaluate(lifecycle: &Lifecycle, mut checks: Vec<Check>) -> Self {
        checks.insert(
            0,
            Check {
                name: "accepting",
                ok: !lifecycle.is_draining(),
                detail: lifecycle.is_draining().then(|| "draining".to_string()),
            },
        );
        let ready = checks.iter().all(|c| c.ok);
        Readiness {
            status: if ready { "ready" } else { "not_ready" },
            ready,
            checks,
        }
    }
}
