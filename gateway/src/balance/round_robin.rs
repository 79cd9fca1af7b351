//! NGINX's smooth weighted round-robin (`ngx_http_upstream_get_peer`).
//!
//! Every eligible peer gains its effective weight, the highest accumulator wins and pays back
//! the round's total. This spreads a 5:1:1 split as `a a b a c a a` instead of bursts, and
//! the `effective_weight += 1` per round is how a penalised server eases back in.

use std::time::Instant;

use super::attempt::TriedSet;
use super::peer::Peer;

/// One smooth-WRR round over the peers `eligible` accepts; returns the winner's index.
///
/// Ties go to the lowest index (NGINX compares with a strict `>`). Used as is by
/// round-robin, and restricted to tied or same-server peers by least-conn and consistent hash.
pub(crate) fn smooth_pick(
    peers: &mut [Peer],
    mut eligible: impl FnMut(usize, &Peer) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, i64)> = None;
    let mut total: i64 = 0;
    for (index, peer) in peers.iter_mut().enumerate() {
        if !eligible(index, peer) {
            continue;
        }
        peer.current_weight = peer.current_weight.saturating_add(peer.effective_weight);
        total = total.saturating_add(peer.effective_weight);
        if peer.effective_weight < i64::from(peer.weight) {
            peer.effective_weight += 1;
        }
        if best.is_none_or(|(_, current)| peer.current_weight > current) {
            best = Some((index, peer.current_weight));
        }
    }
    let (index, _) = best?;
    if let Some(peer) = peers.get_mut(index) {
        peer.current_weight = peer.current_weight.saturating_sub(total);
    }
    Some(index)
}

/// Round-robin over one set (primary or backup), skipping tried and unavailable peers.
pub(crate) fn pick(peers: &mut [Peer], tried: &TriedSet, now: Instant) -> Option<usize> {
    smooth_pick(peers, |index, peer| {
        !tried.contains(index) && peer.is_available(now)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testutil::{names, pool_of, run, t0, weighted};
    use super::super::{Algorithm, Attempt, Outcome, Pool, ServerSpec};

    #[test]
    fn classic_five_one_one_sequence() {
        let mut pool = pool_of(
            Algorithm::RoundRobin,
            weighted(&[("a", 5), ("b", 1), ("c", 1)]),
        );
        let ids = run(&mut pool, 14);
        let seq = names(&pool, &ids);
        assert_eq!(seq, "aabacaa".repeat(2));
    }

    #[test]
    fn equal_weights_rotate_in_order() {
        let mut pool = pool_of(
            Algorithm::RoundRobin,
            weighted(&[("a", 1), ("b", 1), ("c", 1)]),
        );
        let ids = run(&mut pool, 9);
        let seq = names(&pool, &ids);
        assert_eq!(seq, "abcabcabc");
    }

    #[test]
    fn table_of_small_weight_patterns() {
        // (weights, one full cycle)
        let cases: [(&[(&str, u32)], &str); 4] = [
            (&[("a", 2), ("b", 1)], "aba"),
            (&[("a", 3), ("b", 1)], "aaba"),
            (&[("a", 1), ("b", 2)], "bab"),
            (&[("a", 4), ("b", 2), ("c", 1)], "abacaba"),
        ];
        for (weights, cycle) in cases {
            let mut pool = pool_of(Algorithm::RoundRobin, weighted(weights));
            let n = cycle.len() * 3;
            let ids = run(&mut pool, n);
            let seq = names(&pool, &ids);
            assert_eq!(seq, cycle.repeat(3), "{weights:?}");
        }
    }

    #[test]
    fn weights_100_100_100_75_75_are_exact_periodic_and_burst_free() {
        let weights = [("a", 100), ("b", 100), ("c", 100), ("d", 75), ("e", 75)];
        let mut pool = pool_of(Algorithm::RoundRobin, weighted(&weights));
        let picks = run(&mut pool, 450 * 3);
        let seq: Vec<usize> = picks.iter().map(|id| id.index()).collect();
        for cycle in seq.chunks(450) {
            let mut counts = [0u32; 5];
            for &i in cycle {
                counts[i] += 1;
            }
            assert_eq!(counts, [100, 100, 100, 75, 75]);
        }
        assert_eq!(seq[..450], seq[450..900], "period 450");
        assert_eq!(seq[..450], seq[900..], "period 450");
        let longest_run = seq
            .chunk_by(|a, b| a == b)
            .map(<[usize]>::len)
            .max()
            .unwrap();
        assert!(longest_run <= 2, "burst of {longest_run}");
        // After a whole cycle the accumulators are back to zero, which is why it repeats.
        assert!(pool.snapshot(t0()).iter().all(|p| p.current_weight == 0));
    }

    #[test]
    fn skips_down_unhealthy_full_and_tried() {
        let t0 = t0();
        let specs = vec![
            ServerSpec::new("a").with_down(true),
            ServerSpec::new("b"),
            ServerSpec::new("c").with_max_conns(1),
            ServerSpec::new("d"),
        ];
        let mut pool = pool_of(Algorithm::RoundRobin, specs);
        assert_eq!(pool.set_healthy("d", false), 1);
        let held = pool.select(t0, &mut Attempt::new(), None).unwrap();
        assert_eq!(pool.key(held), Some("b"));
        let held_c = pool.select(t0, &mut Attempt::new(), None).unwrap();
        assert_eq!(pool.key(held_c), Some("c"));
        // c is full now and b is the only one left.
        let mut attempt = Attempt::new();
        let first = pool.select(t0, &mut attempt, None).unwrap();
        assert_eq!(pool.key(first), Some("b"));
        assert_eq!(pool.select(t0, &mut attempt, None), None, "b already tried");
        pool.release(held_c, t0, Outcome::Success);
        let c = pool.select(t0, &mut attempt, None).unwrap();
        assert_eq!(pool.key(c), Some("c"));
    }

    #[test]
    fn effective_weight_recovers_one_per_round() {
        let t0 = t0();
        let specs = vec![
            ServerSpec::new("a").with_weight(10).with_max_fails(2),
            ServerSpec::new("b").with_weight(10).with_max_fails(2),
        ];
        let mut pool = pool_of(Algorithm::RoundRobin, specs);
        let id = pool.select(t0, &mut Attempt::new(), None).unwrap();
        pool.release(id, t0, Outcome::Failure);
        let eff = |pool: &Pool| pool.snapshot(t0)[id.index()].effective_weight;
        assert_eq!(eff(&pool), 5);
        // Still below max_fails, so it stays eligible and heals by one per round.
        for expected in 6..=10 {
            let other = pool.select(t0, &mut Attempt::new(), None).unwrap();
            pool.release(other, t0, Outcome::Success);
            assert_eq!(eff(&pool), expected);
        }
        let other = pool.select(t0, &mut Attempt::new(), None).unwrap();
        pool.release(other, t0 + Duration::from_secs(1), Outcome::Success);
        assert_eq!(eff(&pool), 10, "capped at weight");
    }
}
