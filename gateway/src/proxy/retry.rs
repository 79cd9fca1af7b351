//! When a request goes to the next upstream server (pure; NGINX's `proxy_next_upstream` with
//! `error timeout http_502 http_503 http_504`, `proxy_next_upstream_tries` and
//! `proxy_next_upstream_timeout`).
//!
//! The rules:
//! - A try is started only while fewer than `max_tries` were made and the deadline has not
//!   passed.
//! - A failure before anything reached the server (connect error, a request hyper handed
//!   back unsent) may go to the next server, whatever the method: nothing was sent. So may a
//!   request an HTTP/2 server refused unprocessed (REFUSED_STREAM, above its GOAWAY's last
//!   stream), when its body could be recorded: what was sent was never acted on.
//! - After something was sent (a timeout, a connection that broke mid-exchange, a 502-504
//!   answer) only a replayable request goes again: an idempotent method whose body was
//!   complete before the first try (a streamed body cannot be sent twice).
//! - A 502-504 answer that may not go again is delivered to the client as it is.

use std::time::Instant;

/// The retry rules for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_tries: usize,
    pub deadline: Option<Instant>,
    /// Idempotent method and a body held whole (or none): safe to send again.
    pub replayable: bool,
    /// The upstream may say when it did not process a request (HTTP/2, or `auto`, which may
    /// pick it): any request may then go again, so its head is kept for that.
    pub refusable: bool,
}

/// How a try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryFailure {
    /// No connection to the server.
    Connect,
    /// hyper gave the request back: it never reached the server.
    NotSent,
    /// No response head within the read timeout.
    Timeout,
    /// The request was (perhaps partly) sent, then the connection failed.
    SentThenFailed,
    /// The server answered 502, 503 or 504.
    BadStatus,
}

/// What to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try the next server (if `may_start` allows another try).
    Retry,
    /// Give up with the last error.
    Stop,
    /// Give the server's 5xx answer to the client.
    Deliver,
}

impl RetryPolicy {
    /// Whether another try may start after `tries` tries.
    pub fn may_start(&self, tries: usize, now: Instant) -> bool {
        tries < self.max_tries && self.deadline.is_none_or(|d| now < d)
    }

    /// Whether try number `tries` (counting it) may be followed by another one that needs
    /// the request again: the headers are then cloned instead of moved into the try.
    pub fn keep_copy(&self, tries: usize) -> bool {
        (self.replayable || self.refusable) && tries < self.max_tries
    }

    /// What follows a failed try, `tries` tries made so far (this one included).
    pub fn after(&self, failure: TryFailure, tries: usize, now: Instant) -> Next {
        match failure {
            TryFailure::Connect | TryFailure::NotSent => Next::Retry,
            TryFailure::Timeout | TryFailure::SentThenFailed if self.replayable => Next::Retry,
            TryFailure::Timeout | TryFailure::SentThenFailed => Next::Stop,
            TryFailure::BadStatus if self.replayable && self.may_start(tries, now) => Next::Retry,
            TryFailure::BadStatus => Next::Deliver,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use TryFailure::*;

    fn policy(max_tries: usize, replayable: bool) -> RetryPolicy {
        RetryPolicy {
            max_tries,
            deadline: None,
            replayable,
            refusable: false,
        }
    }

    #[test]
    fn what_follows_each_failure() {
        let now = Instant::now();
        // (failure, replayable, tries made, max tries) -> next
        let table = [
            (Connect, false, 1, 3, Next::Retry),
            (NotSent, false, 1, 3, Next::Retry),
            (Timeout, true, 1, 3, Next::Retry),
            (Timeout, false, 1, 3, Next::Stop),
            (SentThenFailed, true, 1, 3, Next::Retry),
            (SentThenFailed, false, 1, 3, Next::Stop),
            (BadStatus, true, 1, 3, Next::Retry),
            (BadStatus, true, 3, 3, Next::Deliver),
            (BadStatus, false, 1, 3, Next::Deliver),
        ];
        for (failure, replayable, tries, max, want) in table {
            assert_eq!(
                policy(max, replayable).after(failure, tries, now),
                want,
                "{failure:?} replayable={replayable} {tries}/{max}"
            );
        }
    }

    #[test]
    fn tries_and_the_deadline_bound_every_retry() {
        let now = Instant::now();
        let p = policy(2, true);
        assert!(p.may_start(0, now));
        assert!(p.may_start(1, now));
        assert!(!p.may_start(2, now));
        let timed = RetryPolicy {
            deadline: Some(now + Duration::from_secs(1)),
            ..p
        };
        assert!(timed.may_start(1, now));
        assert!(!timed.may_start(1, now + Duration::from_secs(1)));
        // Past the deadline a 502 is delivered rather than retried.
        assert_eq!(
            timed.after(BadStatus, 1, now + Duration::from_secs(2)),
            Next::Deliver
        );
    }

    #[test]
    fn headers_are_copied_only_when_a_retry_could_use_them() {
        let p = policy(3, true);
        assert!(p.keep_copy(1));
        assert!(p.keep_copy(2));
        assert!(!p.keep_copy(3), "the last try takes the headers");
        assert!(
            !policy(3, false).keep_copy(1),
            "a streamed body is never resent"
        );
        let refusable = RetryPolicy {
            refusable: true,
            ..policy(3, false)
        };
        assert!(refusable.keep_copy(1), "HTTP/2 may refuse it unprocessed");
        assert!(!refusable.keep_copy(3));
    }
}
