//! Per-client request rate limits: a GCRA token bucket (governor) per client IP and route,
//! with the numbers clients see in `X-RateLimit-*` and `Retry-After`.
//!
//! Buckets of clients that went quiet are dropped by [`RateLimiter::forget_idle`] (run
//! periodically), so memory follows the number of recently active clients, not all clients
//! ever seen.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::Quota;

use crate::config::RateLimitConfig;

type Keyed<C> =
    governor::RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, StateInformationMiddleware>;

/// The outcome for one request, with what the response headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        limit: u32,
        remaining: u32,
        /// Seconds until the bucket is full again.
        reset: u64,
    },
    Limited {
        limit: u32,
        /// Seconds until one more request is allowed (at least 1).
        retry_after: u64,
        reset: u64,
    },
}

pub struct RateLimiter<C: Clock = DefaultClock> {
    limiter: Keyed<C>,
    clock: C,
    config: RateLimitConfig,
    burst: u32,
    /// Time for one request's worth of capacity to come back.
    replenish: Duration,
}

fn quota(config: &RateLimitConfig) -> (Quota, u32, Duration) {
    let rate = config.rate.max(1);
    let burst = config.burst.unwrap_or(rate).max(1);
    let replenish = (config.per.0 / rate).max(Duration::from_nanos(1));
    let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(replenish)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst_nz);
    (quota, burst, replenish)
}

impl RateLimiter<DefaultClock> {
    pub fn new(config: RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    pub fn with_clock(config: RateLimitConfig, clock: C) -> Self {
        let (quota, burst, replenish) = quota(&config);
        let limiter = governor::RateLimiter::dashmap_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        RateLimiter {
            limiter,
            clock,
            config,
            burst,
            replenish,
        }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    fn seconds(d: Duration) -> u64 {
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }

    /// Takes one request from `client`'s bucket.
    pub fn check(&self, client: IpAddr) -> Decision {
        let limit = self.burst;
        match self.limiter.check_key(&client) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let missing = limit.saturating_sub(remaining);
                Decision::Allowed {
                    limit,
                    remaining,
                    reset: Self::seconds(self.replenish * missing),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision::Limited {
                    limit,
                    retry_after: Self::seconds(wait).max(1),
                    reset: Self::seconds(self.replenish * limit),
                }
            }
        }
    }

    /// Drops buckets that have refilled completely (their clients went quiet).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Clients currently tracked.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::config::Dur;

    fn limiter(rate: u32, burst: u32) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let config = RateLimitConfig {
            rate,
            per: Dur(Duration::from_secs(60)),
            burst: Some(burst),
        };
        (RateLimiter::with_clock(config, clock.clone()), clock)
    }

    #[test]
    fn burst_then_limited_then_refilled() {
        let (rl, clock) = limiter(50, 50);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..50 {
            match rl.check(a) {
                Decision::Allowed {
                    limit, remaining, ..
                } => {
                    assert_eq!(limit, 50);
                    assert_eq!(remaining, 49 - i);
                }
                other => panic!("request {i}: {other:?}"),
            }
        }
        // 50/minute: one request's capacity returns every 1.2 s.
        assert_eq!(
            rl.check(a),
            Decision::Limited {
                limit: 50,
                retry_after: 2,
                reset: 60
            }
        );
        // Another client is unaffected.
        assert!(matches!(
            rl.check("192.0.2.2".parse().unwrap()),
            Decision::Allowed { remaining: 49, .. }
        ));
        clock.advance(Duration::from_millis(1200));
        assert!(matches!(
            rl.check(a),
            Decision::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(rl.check(a), Decision::Limited { .. }));
        // Once the bucket has refilled completely it can be forgotten.
        clock.advance(Duration::from_secs(65));
        rl.forget_idle();
        assert_eq!(rl.tracked(), 0);
        assert!(matches!(
            rl.check(a),
            Decision::Allowed { remaining: 49, .. }
        ));
    }

    #[test]
    fn reset_counts_the_missing_capacity() {
        let (rl, _) = limiter(60, 10);
        let a: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(
            rl.check(a),
            Decision::Allowed {
                limit: 10,
                remaining: 9,
                reset: 1
            }
        );
        assert_eq!(
            rl.check(a),
            Decision::Allowed {
                limit: 10,
                remaining: 8,
                reset: 2
            }
        );
    }
}
