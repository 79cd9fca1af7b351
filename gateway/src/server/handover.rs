//! Handing the VIP over, make-before-break: the planned stop (`Gateway::shutdown`) and the
//! gateway as the HA node sees it (`HaHost`: wind connections down, tell when the VIP may
//! move, reopen the listeners once a yield is over). See ARCHITECTURE.md, "gateway::ha".

use std::sync::Mutex;
use std::time::Duration;

use super::{lock, Gateway};

/// How long a stopping VIP holder waits for its open connections to finish before it hands
/// the VIP over (long-lived ones, such as WebSocket tunnels, are cut after the handover).
const HANDOVER_QUIET: Duration = Duration::from_secs(1);

/// How long connections may finish while the listeners still accept, before they close for
/// the handover: under steady traffic there is always a connection open, and closing the
/// listeners is what lets the last ones finish.
const QUIET_WHILE_ACCEPTING: Duration = Duration::from_millis(100);

/// How long a former VIP holder (interface mode) waits for connections still open after
/// the VIP moved: their clients' packets go to the peer now.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(1);

/// The gateway as the HA node sees it.
pub(super) struct HaHost {
    pub(super) gateway: std::sync::Weak<Gateway>,
    /// The control runtime, where listeners are opened again after a handover.
    pub(super) runtime: tokio::runtime::Handle,
    /// Listeners closed for a handover: their accept loops, until the handover ends.
    pub(super) paused: Mutex<Option<Vec<tokio::task::JoinHandle<()>>>>,
    /// When the current quiescing began.
    pub(super) quiescing_since: Mutex<Option<std::time::Instant>>,
}

impl crate::ha::node::Host for HaHost {
    fn can_serve(&self) -> bool {
        self.gateway.upgrade().is_none_or(|g| g.can_serve())
    }

    fn quiesce(&self, on: bool) {
        let Some(gateway) = self.gateway.upgrade() else {
            return;
        };
        if on {
            *lock(&self.quiescing_since) = Some(std::time::Instant::now());
            gateway.drain.begin();
            return;
        }
        *lock(&self.quiescing_since) = None;
        // A shutdown's drain is not undone, nor are its listeners reopened.
        if gateway.lifecycle.is_draining() {
            return;
        }
        gateway.drain.end();
        if lock(&self.paused).take().is_some() {
            self.runtime.spawn(async move {
                if let Err(e) = gateway.reconcile_vip_listeners() {
                    tracing::error!(error = %e, "could not reopen the listeners after a handover");
                }
            });
        }
    }

    /// As a shutdown does: connections finish while the listeners still accept (one request
    /// each, for `QUIET_WHILE_ACCEPTING` at most), then the listeners close (a SYN is refused
    /// and the edge tries again, rather than accepted into a connection the move would cut),
    /// then the rest finish.
    fn quiet(&self) -> bool {
        let Some(gateway) = self.gateway.upgrade() else {
            return true;
        };
        let mut paused = lock(&self.paused);
        match paused.as_ref() {
            None => {
                let accepting_for = lock(&self.quiescing_since).map(|t| t.elapsed());
                if gateway.drain.open() > 0
                    && accepting_for.is_some_and(|d| d < QUIET_WHILE_ACCEPTING)
                {
                    return false;
                }
                *paused = Some(gateway.pause_listeners());
                false
            }
            // An accept loop may take one more connection until it has finished.
            Some(loops) => loops.iter().all(|l| l.is_finished()) && gateway.drain.open() == 0,
        }
    }
}

impl Gateway {
    /// The planned stop, make-before-break. Readiness flips and every connection is told to
    /// finish the request in hand and close (new ones are still accepted, one request each).
    /// A VIP holder then waits for its connections to finish, closes its listeners (a SYN is
    /// refused rather than accepted into a connection the VIP move would reset: a refused
    /// connect carries no request and is safe to retry, as the edge does), waits for the few
    /// accepted meanwhile, and hands the VIP over, keeping it until the peer has it. Then
    /// whatever is left drains (up to `timeout`).
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        let ha = lock(&self.ha).take();
        self.lifecycle.begin_drain();
        self.drain.begin();
        let mut deadline = tokio::time::Instant::now() + timeout;
        if let Some(ha) = ha {
            if lock(&ha.status).vip_held {
                let now = tokio::time::Instant::now();
                let quiet = now + HANDOVER_QUIET.min(timeout);
                self.quiet_until(quiet.min(now + QUIET_WHILE_ACCEPTING))
                    .await;
                let loops = self.pause_listeners();
                let _ = tokio::time::timeout_at(quiet, futures_util::future::join_all(loops)).await;
                self.quiet_until(quiet).await;
                ha.shutdown().await;
                // With the VIP on an interface, clients' packets now reach the peer: a
                // connection still open here (a handshake that started in the last
                // milliseconds) can never finish, so it is not waited for long.
                let interface = self.vip_bind.is_none();
                if interface {
                    deadline = deadline.min(tokio::time::Instant::now() + UNREACHABLE_GRACE);
                }
            } else {
                ha.shutdown().await;
            }
        }
        self.close_listeners();
        *lock(&self.health) = None;
        tracing::info!(
            connections = self.drain.open(),
            "listeners closed; draining in-flight requests"
        );
        match tokio::time::timeout_at(deadline, self.drain.finished()).await {
            Ok(()) => {
                tracing::info!("drained cleanly");
                true
            }
            Err(_) => {
                tracing::warn!("shutdown timeout passed with requests in flight");
                false
            }
        }
    }

    /// Closes every listener and forgets it, so a later reconcile opens it again; returns the
    /// accept loops, which may still take a connection until they have finished.
    fn pause_listeners(&self) -> Vec<tokio::task::JoinHandle<()>> {
        lock(&self.listeners)
            .drain()
            .map(|(_, handle)| {
                let _ = handle.stop.send(true);
                handle.task
            })
            .collect()
    }

    fn close_listeners(&self) {
        for handle in lock(&self.listeners).values() {
            let _ = handle.stop.send(true);
        }
    }

    /// Waits until no client connection is open, or `deadline`.
    async fn quiet_until(&self, deadline: tokio::time::Instant) {
        let quiet = async {
            while self.drain.open() > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, quiet).await;
    }
}
