//! Client connections and the signal that winds them down.
//!
//! Unlike hyper-util's `GracefulShutdown`, the signal is a state, not a one-off event: a
//! connection accepted after draining began is told at once, so a gateway handing the VIP
//! over keeps accepting (nothing is refused while the peer takes over) and serves each new
//! connection one request (HTTP/1.1 without keep-alive; h2 with GOAWAY), and clients come
//! back to the new master.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

/// The gateway side: begin draining, count and await open connections.
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// Held by one client connection for its whole life.
pub struct Watcher {
    rx: watch::Receiver<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            tx: watch::Sender::new(false),
        }
    }
}

impl Drain {
    /// A watcher for a connection just accepted.
    pub fn watcher(&self) -> Watcher {
        Watcher {
            rx: self.tx.subscribe(),
        }
    }

    /// From now on every connection finishes the request in hand and closes, and each one
    /// accepted later serves one request.
    pub fn begin(&self) {
        self.tx.send_replace(true);
    }

    /// Ends a drain that was not a shutdown (the VIP moved away and this gateway stays up as
    /// backup): connections accepted from now on are served normally. Those already told to
    /// close still close.
    pub fn end(&self) {
        self.tx.send_replace(false);
    }

    /// Connections still open.
    pub fn open(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Resolves once every connection has closed.
    pub async fn finished(&self) {
        self.tx.closed().await;
    }
}

impl Watcher {
    /// Runs `conn` to its end, winding it down (`wind_down`, its graceful shutdown) once
    /// draining has begun and it has answered a request (`answered` fired at least once).
    /// A connection that has answered nothing yet is still in its handshake or waiting for
    /// its first request: winding an h2 connection down then drops it (hyper closes a
    /// handshaking h2 connection at once) or refuses the stream that was on its way.
    pub async fn watch<C: Future>(
        mut self,
        conn: C,
        wind_down: impl FnOnce(Pin<&mut C>),
        answered: &tokio::sync::Notify,
    ) -> C::Output {
        let mut conn = std::pin::pin!(conn);
        let mut wind_down = Some(wind_down);
        let mut waiting_for_answer = true;
        loop {
            tokio::select! {
                biased;
                out = conn.as_mut() => return out,
                () = answered.notified(), if waiting_for_answer => waiting_for_answer = false,
                _ = self.rx.wait_for(|draining| *draining),
                    if wind_down.is_some() && !waiting_for_answer =>
                {
                    if let Some(f) = wind_down.take() {
                        f(conn.as_mut());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};

    /// A connection that ends once asked to and polled again.
    #[derive(Default)]
    struct Conn {
        asked: bool,
        polls: usize,
    }

    impl Future for Conn {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.asked {
                Poll::Ready(self.polls)
            } else {
                Poll::Pending
            }
        }
    }

    fn ask(mut conn: Pin<&mut Conn>) {
        conn.asked = true;
    }

    #[tokio::test]
    async fn connections_wind_down_once_draining_and_once_they_have_answered() {
        let drain = Drain::default();
        let answered = std::sync::Arc::new(tokio::sync::Notify::new());

        // Answered before the drain: wound down as soon as it begins.
        let watcher = drain.watcher();
        let a = answered.clone();
        let busy = tokio::spawn(async move { watcher.watch(Conn::default(), ask, &a).await });
        answered.notify_one();
        tokio::task::yield_now().await;
        assert_eq!(drain.open(), 1);
        assert!(!busy.is_finished(), "not before the drain");
        drain.begin();
        assert!(busy.await.unwrap() >= 2);

        // Nothing answered yet (a handshake, or a request on its way), or accepted after
        // the drain began: wound down only once it has answered.
        let fresh = std::sync::Arc::new(tokio::sync::Notify::new());
        let watcher = drain.watcher();
        let f = fresh.clone();
        let late = tokio::spawn(async move { watcher.watch(Conn::default(), ask, &f).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!late.is_finished(), "not before its first answer");
        fresh.notify_one();
        assert!(late.await.unwrap() >= 2);
        assert_eq!(drain.open(), 0);
        tokio::time::timeout(std::time::Duration::from_secs(1), drain.finished())
            .await
            .unwrap();

        // A drain that ends (the VIP moved away, this gateway stays up): new connections
        // are served normally.
        drain.end();
        let watcher = drain.watcher();
        let g = fresh.clone();
        let normal = tokio::spawn(async move { watcher.watch(Conn::default(), ask, &g).await });
        fresh.notify_one();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!normal.is_finished(), "not wound down");
        normal.abort();
    }
}
