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
    /// Whether draining had begun when this connection was accepted.
    pub fn late(&self) -> bool {
        *self.rx.borrow()
    }

    /// Runs `conn` to its end, winding it down (`wind_down`, its graceful shutdown) once
    /// draining begins. A connection accepted after that (`late`) is wound down once it has
    /// answered a request (`answered` fires): winding an h2 connection down before its first
    /// stream arrives would refuse that stream.
    pub async fn watch<C: Future>(
        mut self,
        conn: C,
        wind_down: impl FnOnce(Pin<&mut C>),
        answered: &tokio::sync::Notify,
    ) -> C::Output {
        let mut conn = std::pin::pin!(conn);
        let mut wind_down = Some(wind_down);
        let mut waiting_for_answer = self.late();
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
    async fn connections_are_asked_to_finish_also_when_they_arrive_after_the_signal() {
        let drain = Drain::default();
        let answered = std::sync::Arc::new(tokio::sync::Notify::new());
        let watcher = drain.watcher();
        assert!(!watcher.late());
        let a = answered.clone();
        let early = tokio::spawn(async move { watcher.watch(Conn::default(), ask, &a).await });
        tokio::task::yield_now().await;
        assert_eq!(drain.open(), 1);
        drain.begin();
        // Polled before the signal and when woken by it, then asked and polled to its end,
        // without having answered anything.
        assert_eq!(early.await.unwrap(), 3);

        // A late one is asked only once it has answered a request.
        let watcher = drain.watcher();
        assert!(watcher.late());
        let a = answered.clone();
        let late = tokio::spawn(async move { watcher.watch(Conn::default(), ask, &a).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!late.is_finished(), "not asked before its first answer");
        answered.notify_one();
        assert!(late.await.unwrap() >= 2);
        assert_eq!(drain.open(), 0);
        tokio::time::timeout(std::time::Duration::from_secs(1), drain.finished())
            .await
            .unwrap();
    }
}
