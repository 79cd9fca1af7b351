//! HTTP/2 keep-alive pings, for either side of the gateway: a PING every `interval`, and
//! the connection declared dead when one goes unanswered for `timeout`. Polled from the task
//! that drives the connection, next to it (`server::h2` for clients, `upstream::drive` for
//! upstream servers).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub struct KeepAlive {
    ping: h2::PingPong,
    interval: Duration,
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    awaiting_pong: bool,
}

impl KeepAlive {
    pub fn new(ping: h2::PingPong, interval: Duration, timeout: Duration) -> Self {
        KeepAlive {
            ping,
            interval,
            timeout,
            timer: Box::pin(tokio::time::sleep(interval)),
            awaiting_pong: false,
        }
    }

    /// Sends the pings that are due and reads their answers; true once one went unanswered
    /// for `timeout`.
    pub fn poll_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.awaiting_pong {
                if let Poll::Ready(Ok(_)) = self.ping.poll_pong(cx) {
                    self.awaiting_pong = false;
                    self.restart(self.interval);
                }
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.awaiting_pong {
                return true;
            }
            if self.ping.send_ping(h2::Ping::opaque()).is_err() {
                // The connection is closing.
                return false;
            }
            self.awaiting_pong = true;
            self.restart(self.timeout);
        }
    }

    fn restart(&mut self, after: Duration) {
        let next = tokio::time::Instant::now() + after;
        self.timer.as_mut().reset(next);
    }
}
