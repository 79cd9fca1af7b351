//! Active health-check hysteresis: how many probe results in a row flip a server.
//!
//! One failed probe should not pull a server and one lucky probe should not bring a flapping
//! one back, so a server goes unhealthy after `fall` consecutive failures and healthy again
//! after `rise` consecutive successes (the `rise`/`fall` of HAProxy and NGINX Plus). The
//! caller runs the probes and feeds the result to [`super::Pool::set_healthy`].

/// A change of health verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The server became healthy again.
    Up,
    /// The server became unhealthy.
    Down,
}

/// Probe-result counter for one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Consecutive results that disagree with the current verdict.
    streak: u32,
}

impl HealthTracker {
    /// Starts healthy, so a fresh or reloaded server takes traffic before its first probe
    /// (passive accounting still protects it). `rise` and `fall` below 1 are treated as 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        Self::starting(rise, fall, true)
    }

    /// Starts with an explicit verdict, e.g. unhealthy to require `rise` good probes first.
    pub fn starting(rise: u32, fall: u32, healthy: bool) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy,
            streak: 0,
        }
    }

    /// Records one probe result; returns the transition it caused, if any.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        if ok == self.healthy {
            // Agreeing result: any run towards a flip is broken.
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.healthy = ok;
        Some(if ok { Transition::Up } else { Transition::Down })
    }

    /// Current verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Consecutive results so far towards the next flip.
    pub fn streak(&self) -> u32 {
        self.streak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use Transition::{Down, Up};
        // (rise, fall, start healthy, probes, transition after each probe, final verdict)
        type Case = (u32, u32, bool, &'static str, [Option<Transition>; 8], bool);
        let n = None;
        let cases: [Case; 9] = [
            (
                2,
                3,
                true,
                "xxx.....",
                [n, n, Some(Down), n, Some(Up), n, n, n],
                true,
            ),
            (2, 3, true, "xx.xx.xx", [n; 8], true),
            (
                2,
                3,
                true,
                "xxx..x..",
                [n, n, Some(Down), n, Some(Up), n, n, n],
                true,
            ),
            (
                2,
                3,
                true,
                "xxx.x.x.",
                [n, n, Some(Down), n, n, n, n, n],
                false,
            ),
            (
                1,
                1,
                true,
                "x.x.x.x.",
                [
                    Some(Down),
                    Some(Up),
                    Some(Down),
                    Some(Up),
                    Some(Down),
                    Some(Up),
                    Some(Down),
                    Some(Up),
                ],
                true,
            ),
            (
                3,
                2,
                false,
                "........",
                [n, n, Some(Up), n, n, n, n, n],
                true,
            ),
            (
                3,
                2,
                false,
                "..x...xx",
                [n, n, n, n, n, Some(Up), n, Some(Down)],
                false,
            ),
            (
                0,
                0,
                true,
                "x.......",
                [Some(Down), Some(Up), n, n, n, n, n, n],
                true,
            ),
            (2, 2, true, "........", [n; 8], true),
        ];
        for (rise, fall, start, probes, transitions, end) in cases {
            let mut tracker = HealthTracker::starting(rise, fall, start);
            for (i, (probe, expected)) in probes.chars().zip(transitions).enumerate() {
                let got = tracker.observe(probe == '.');
                assert_eq!(got, expected, "rise {rise} fall {fall} {probes} at {i}");
            }
            assert_eq!(
                tracker.is_healthy(),
                end,
                "rise {rise} fall {fall} {probes}"
            );
        }
    }

    #[test]
    fn new_starts_healthy_and_streak_resets() {
        let mut tracker = HealthTracker::new(2, 3);
        assert!(tracker.is_healthy());
        tracker.observe(false);
        tracker.observe(false);
        assert_eq!(tracker.streak(), 2);
        tracker.observe(true);
        assert_eq!(tracker.streak(), 0);
    }
}
