//! NGINX's `least_conn`: fewest active connections relative to weight.
//!
//! Compared by cross-multiplication (`conns_i * weight_best < conns_best * weight_i`) so no
//! division or rounding is involved; when several peers tie, smooth round-robin among just
//! those peers breaks the tie so equal servers still rotate in weight proportion.

use std::time::Instant;

use super::attempt::TriedSet;
use super::peer::Peer;
use super::round_robin::smooth_pick;

/// Least-connections pick over one set (primary or backup).
pub(crate) fn pick(peers: &mut [Peer], tried: &TriedSet, now: Instant) -> Option<usize> {
    // (index, conns, weight) of the best so far; u32 * u32 always fits in u64.
    let mut best: Option<(usize, u64, u64)> = None;
    let mut many = false;
    for (index, peer) in peers.iter().enumerate() {
        if tried.contains(index) || !peer.is_available(now) {
            continue;
        }
        let (conns, weight) = (u64::from(peer.conns), u64::from(peer.weight));
        match best {
            Some((_, best_conns, best_weight)) if conns * best_weight >= best_conns * weight => {
                if conns * best_weight == best_conns * weight {
                    many = true;
                }
            }
            _ => {
                best = Some((index, conns, weight));
                many = false;
            }
        }
    }
    let (first, best_conns, best_weight) = best?;
    if !many {
        // NGINX subtracts a zero total here: weights are left untouched.
        return Some(first);
    }
    // NGINX walks from the first best onwards; earlier peers were worse or ineligible.
    smooth_pick(peers, |index, peer| {
        index >= first
            && !tried.contains(index)
            && peer.is_available(now)
            && u64::from(peer.conns) * best_weight == best_conns * u64::from(peer.weight)
    })
    .or(Some(first))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{names, pool_of, run, t0, weighted};
    use super::super::{Algorithm, Attempt, Outcome, ServerSpec};

    #[test]
    fn busy_peer_gets_fewer_picks() {
        let t0 = t0();
        let mut pool = pool_of(
            Algorithm::LeastConn,
            weighted(&[("a", 1), ("b", 1), ("c", 1)]),
        );
        // A long request stays parked on a.
        let long = pool.select(t0, &mut Attempt::new(), None).unwrap();
        assert_eq!(pool.key(long), Some("a"));
        assert_eq!(pool.snapshot(t0)[0].conns, 1);
        // Short requests avoid a entirely and rotate over b and c.
        let ids = run(&mut pool, 10);
        let seq = names(&pool, &ids);
        assert_eq!(seq, "bcbcbcbcbc");
        // Once a drains below the others it is preferred again.
        pool.force_conns("a", 0);
        pool.force_conns("b", 1);
        pool.force_conns("c", 1);
        let id = pool.select(t0, &mut Attempt::new(), None).unwrap();
        assert_eq!(pool.key(id), Some("a"));
    }

    #[test]
    fn concurrent_requests_spread_by_weight() {
        let t0 = t0();
        let mut pool = pool_of(Algorithm::LeastConn, weighted(&[("a", 2), ("b", 1)]));
        for _ in 0..6 {
            pool.select(t0, &mut Attempt::new(), None).unwrap();
        }
        let snap = pool.snapshot(t0);
        assert_eq!((snap[0].conns, snap[1].conns), (4, 2));
    }

    #[test]
    fn ties_rotate_by_weight() {
        // (weights, sequence with every request released at once so all conns stay 0)
        let cases: [(&[(&str, u32)], &str); 3] = [
            (&[("a", 1), ("b", 1), ("c", 1)], "abcabc"),
            (&[("a", 3), ("b", 1)], "aabaaaba"),
            (&[("a", 5), ("b", 1), ("c", 1)], "aabacaa"),
        ];
        for (weights, expected) in cases {
            let mut pool = pool_of(Algorithm::LeastConn, weighted(weights));
            let ids = run(&mut pool, expected.len());
            let seq = names(&pool, &ids);
            assert_eq!(seq, expected, "{weights:?}");
        }
    }

    #[test]
    fn ratio_comparison_table() {
        // (a weight, a held conns, b weight, b held conns, expected pick)
        let cases = [
            (1, 1, 1, 0, "b"),
            (2, 1, 1, 0, "b"),
            (2, 1, 1, 1, "a"),
            (3, 2, 1, 1, "a"),
            (1, 2, 3, 5, "b"),
            (1, 1, 3, 4, "a"),
            (1, 0, 1, 0, "a"),
        ];
        let t0 = t0();
        for (wa, ca, wb, cb, expected) in cases {
            let specs = vec![
                ServerSpec::new("a").with_weight(wa),
                ServerSpec::new("b").with_weight(wb),
            ];
            let mut pool = pool_of(Algorithm::LeastConn, specs);
            pool.force_conns("a", ca);
            pool.force_conns("b", cb);
            let id = pool.select(t0, &mut Attempt::new(), None).unwrap();
            assert_eq!(pool.key(id), Some(expected), "a {wa}/{ca} b {wb}/{cb}");
        }
    }

    #[test]
    fn respects_max_conns_down_and_failures() {
        let t0 = t0();
        let specs = vec![
            ServerSpec::new("a").with_max_conns(1),
            ServerSpec::new("b").with_down(true),
            ServerSpec::new("c"),
            ServerSpec::new("d"),
        ];
        let mut pool = pool_of(Algorithm::LeastConn, specs);
        let a = pool.select(t0, &mut Attempt::new(), None).unwrap();
        assert_eq!(pool.key(a), Some("a"));
        let d = {
            let c = pool.select(t0, &mut Attempt::new(), None).unwrap();
            assert_eq!(pool.key(c), Some("c"));
            pool.release(c, t0, Outcome::Failure);
            pool.select(t0, &mut Attempt::new(), None).unwrap()
        };
        assert_eq!(pool.key(d), Some("d"), "a full, b down, c failed");
        let mut attempt = Attempt::new();
        let again = pool.select(t0, &mut attempt, None).unwrap();
        assert_eq!(
            pool.key(again),
            Some("d"),
            "d is busier but the only one left"
        );
        assert_eq!(
            pool.select(t0, &mut attempt, None),
            None,
            "nothing else left"
        );
    }

    #[test]
    fn retries_skip_tried_peers() {
        let t0 = t0();
        let mut pool = pool_of(
            Algorithm::LeastConn,
            weighted(&[("a", 1), ("b", 1), ("c", 1)]),
        );
        let mut attempt = Attempt::new();
        let mut seen = Vec::new();
        while let Some(id) = pool.select(t0, &mut attempt, None) {
            pool.release(id, t0, Outcome::Failure);
            seen.push(pool.key(id).unwrap().to_owned());
        }
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
    }
}
