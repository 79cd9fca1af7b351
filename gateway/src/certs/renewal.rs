//! When to order (pure): a certificate is renewed when a third of its lifetime is left, or
//! earlier when the CA's renewal information (RFC 9773) opens its window sooner; failed
//! orders back off exponentially. Times are unix seconds passed in.

use std::time::Duration;

/// What the manager knows about the certificate it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// An ACME-issued certificate (false: a self-signed stand-in).
    pub issued: bool,
    pub not_before: i64,
    pub not_after: i64,
    /// It names exactly the configured domains.
    pub covers_domains: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Order now, for this reason.
    Now(&'static str),
    /// Nothing to do before this time.
    At(i64),
}

/// A third of the lifetime before not-after (Let's Encrypt's 90 days: renewed at 60).
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    not_after - lifetime / 3
}

/// Whether to order at `now`; `ari_start` is the start of the CA's suggested window, if it
/// offers one.
pub fn due(served: Option<&Served>, now: i64, ari_start: Option<i64>) -> Due {
    let Some(served) = served else {
        return Due::Now("no certificate");
    };
    if !served.issued {
        return Due::Now("serving a self-signed stand-in");
    }
    if !served.covers_domains {
        return Due::Now("the domains changed");
    }
    let at = match ari_start {
        Some(start) => start.min(renew_at(served.not_before, served.not_after)),
        None => renew_at(served.not_before, served.not_after),
    };
    if now >= at {
        Due::Now("renewal time")
    } else {
        Due::At(at)
    }
}

/// Exponential backoff after failed orders: `initial`, doubled per failure, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub fn fail(&mut self) -> Duration {
        let wait = self
            .initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    pub fn succeed(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(not_before: i64, not_after: i64) -> Served {
        Served {
            issued: true,
            not_before,
            not_after,
            covers_domains: true,
        }
    }

    #[test]
    fn ninety_days_renew_at_sixty() {
        let day = 86_400;
        assert_eq!(renew_at(0, 90 * day), 60 * day);
        assert_eq!(
            due(Some(&issued(0, 90 * day)), 59 * day, None),
            Due::At(60 * day)
        );
        assert_eq!(
            due(Some(&issued(0, 90 * day)), 60 * day, None),
            Due::Now("renewal time")
        );
    }

    #[test]
    fn short_lived_certificates_renew_with_a_third_left() {
        assert_eq!(due(Some(&issued(1000, 1030)), 1019, None), Due::At(1020));
        assert_eq!(
            due(Some(&issued(1000, 1030)), 1020, None),
            Due::Now("renewal time")
        );
    }

    #[test]
    fn nothing_or_a_stand_in_or_other_names_order_at_once() {
        assert_eq!(due(None, 0, None), Due::Now("no certificate"));
        let mut s = issued(0, 1000);
        s.issued = false;
        assert!(matches!(due(Some(&s), 0, None), Due::Now(_)));
        let mut s = issued(0, 1000);
        s.covers_domains = false;
        assert_eq!(due(Some(&s), 0, None), Due::Now("the domains changed"));
    }

    #[test]
    fn the_cas_window_can_only_bring_renewal_forward() {
        let s = issued(0, 900);
        assert_eq!(due(Some(&s), 0, Some(100)), Due::At(100));
        assert_eq!(due(Some(&s), 100, Some(100)), Due::Now("renewal time"));
        assert_eq!(due(Some(&s), 0, Some(800)), Due::At(600));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let waits: Vec<u64> = (0..5).map(|_| b.fail().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(b.failures(), 5);
        b.succeed();
        assert_eq!(b.fail(), Duration::from_secs(1));
        // Far past the cap nothing overflows.
        for _ in 0..100 {
            b.fail();
        }
        assert_eq!(b.fail(), Duration::from_secs(5));
    }
}
