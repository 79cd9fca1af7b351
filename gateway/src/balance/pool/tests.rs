use std::time::Duration;

use super::super::testutil::{t0, weighted};
use super::super::PeerState;
use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn two() -> Vec<ServerSpec> {
    vec![ServerSpec::new("a"), ServerSpec::new("b")]
}

fn state_of(pool: &Pool, now: Instant, key: &str) -> PeerState {
    pool.snapshot(now)
        .into_iter()
        .find(|p| p.key == key)
        .unwrap()
        .state
}

#[test]
fn select_counts_and_release_uncounts() {
    let t0 = t0();
    let mut pool = Pool::new(Algorithm::RoundRobin, two());
    let a = pool.select(t0, &mut Attempt::new(), None).unwrap();
    let b = pool.select(t0, &mut Attempt::new(), None).unwrap();
    let a2 = pool.select(t0, &mut Attempt::new(), None).unwrap();
    let conns = |pool: &Pool| {
        pool.snapshot(t0)
            .iter()
            .map(|p| p.conns)
            .collect::<Vec<_>>()
    };
    assert_eq!(conns(&pool), [2, 1]);
    assert!(pool.release(a, t0, Outcome::Success));
    assert!(pool.release(b, t0, Outcome::Success));
    assert!(pool.release(a2, t0, Outcome::Success));
    assert_eq!(conns(&pool), [0, 0]);
    // A double release cannot underflow.
    assert!(pool.release(a, t0, Outcome::Success));
    assert_eq!(conns(&pool), [0, 0]);
}

#[test]
fn failed_peer_is_skipped_then_probed_once_after_fail_timeout() {
    let t0 = t0();
    let mut pool = Pool::new(Algorithm::RoundRobin, two());
    let a = pool.select(t0, &mut Attempt::new(), None).unwrap();
    assert_eq!(pool.key(a), Some("a"));
    pool.release(a, t0, Outcome::Failure);
    assert_eq!(
        state_of(&pool, t0, "a"),
        PeerState::Failed {
            until: t0 + secs(10)
        }
    );

    // Inside the window (inclusive at 10 s, like NGINX's `<=`) only b is used.
    for at in [1, 5, 10] {
        let now = t0 + secs(at);
        for _ in 0..4 {
            let id = pool.select(now, &mut Attempt::new(), None).unwrap();
            assert_eq!(pool.key(id), Some("b"), "at {at}s");
            pool.release(id, now, Outcome::Success);
        }
    }

    // After the window exactly one request probes a while it is in flight.
    let now = t0 + secs(11);
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(pool.select(now, &mut Attempt::new(), None).unwrap());
    }
    let probes: Vec<PeerId> = held
        .iter()
        .copied()
        .filter(|&id| pool.key(id) == Some("a"))
        .collect();
    assert_eq!(probes.len(), 1, "one probe at a time");
    for id in held {
        pool.release(id, now, Outcome::Success);
    }
    // The probe succeeded: fails reset, a is back.
    assert_eq!(state_of(&pool, now, "a"), PeerState::Up);
    assert_eq!(pool.snapshot(now)[0].fails, 0);
}

#[test]
fn failed_probe_keeps_peer_out_for_another_window() {
    let t0 = t0();
    let mut pool = Pool::new(Algorithm::RoundRobin, two());
    let a = pool.select(t0, &mut Attempt::new(), None).unwrap();
    pool.release(a, t0, Outcome::Failure);
    let now = t0 + secs(11);
    let probe = loop {
        let id = pool.select(now, &mut Attempt::new(), None).unwrap();
        if pool.key(id) == Some("a") {
            break id;
        }
        pool.release(id, now, Outcome::Success);
    };
    pool.release(probe, now, Outcome::Failure);
    assert_eq!(pool.snapshot(now)[0].fails, 2);
    assert_eq!(
        state_of(&pool, now + secs(10), "a"),
        PeerState::Failed {
            until: now + secs(10)
        }
    );
    assert_eq!(state_of(&pool, now + secs(11), "a"), PeerState::Up);
}

#[test]
fn fails_accumulate_up_to_max_fails_within_the_window() {
    let t0 = t0();
    let specs = vec![ServerSpec::new("a").with_max_fails(3), ServerSpec::new("b")];
    let mut pool = Pool::new(Algorithm::RoundRobin, specs);
    // (time offset, expected state of a after one more failure)
    let steps = [
        (0, PeerState::Up),
        (2, PeerState::Up),
        (
            4,
            PeerState::Failed {
                until: t0 + secs(14),
            },
        ),
    ];
    for (at, expected) in steps {
        let now = t0 + secs(at);
        let id = loop {
            let id = pool.select(now, &mut Attempt::new(), None).unwrap();
            if pool.key(id) == Some("a") {
                break id;
            }
            pool.release(id, now, Outcome::Success);
        };
        pool.release(id, now, Outcome::Failure);
        assert_eq!(
            state_of(&pool, now, "a"),
            expected,
            "after failure at {at}s"
        );
    }
}

#[test]
fn max_fails_zero_disables_accounting() {
    let t0 = t0();
    let specs = vec![ServerSpec::new("a").with_max_fails(0), ServerSpec::new("b")];
    let mut pool = Pool::new(Algorithm::RoundRobin, specs);
    for _ in 0..10 {
        let mut attempt = Attempt::new();
        let id = pool.select(t0, &mut attempt, None).unwrap();
        pool.release(id, t0, Outcome::Failure);
    }
    assert_eq!(state_of(&pool, t0, "a"), PeerState::Up);
    assert_eq!(pool.snapshot(t0)[0].effective_weight, 1);
}

#[test]
fn retries_never_repeat_a_server() {
    let t0 = t0();
    let mut pool = Pool::new(
        Algorithm::RoundRobin,
        weighted(&[("a", 5), ("b", 1), ("c", 1)]),
    );
    let mut attempt = Attempt::new();
    let mut keys = Vec::new();
    while let Some(id) = pool.select(t0, &mut attempt, None) {
        pool.release(id, t0, Outcome::Success);
        keys.push(pool.key(id).unwrap().to_owned());
    }
    assert_eq!(keys, ["a", "b", "c"]);
    assert_eq!(attempt.tried_count(), 3);
}

#[test]
fn backups_only_when_no_primary_is_usable() {
    let t0 = t0();
    let specs = vec![
        ServerSpec::new("a"),
        ServerSpec::new("b"),
        ServerSpec::new("x").with_backup(true),
        ServerSpec::new("y").with_backup(true),
    ];
    for algorithm in [Algorithm::RoundRobin, Algorithm::LeastConn] {
        let mut pool = Pool::new(algorithm, specs.clone());
        assert!(!pool.is_single());
        for _ in 0..6 {
            let id = pool.select(t0, &mut Attempt::new(), None).unwrap();
            assert!(!id.is_backup(), "{algorithm:?}");
            pool.release(id, t0, Outcome::Success);
        }
        // A request whose tries exhaust the primaries moves on to the backups.
        let mut attempt = Attempt::new();
        for expected_backup in [false, false, true, true] {
            let id = pool.select(t0, &mut attempt, None).unwrap();
            assert_eq!(id.is_backup(), expected_backup, "{algorithm:?}");
            pool.release(id, t0, Outcome::Success);
        }
        assert!(attempt.in_backup());
        assert_eq!(pool.select(t0, &mut attempt, None), None, "{algorithm:?}");

        // With every primary unhealthy, new requests start on the backups.
        pool.set_healthy("a", false);
        pool.set_healthy("b", false);
        let mut seq = String::new();
        for _ in 0..4 {
            let id = pool.select(t0, &mut Attempt::new(), None).unwrap();
            assert!(id.is_backup());
            pool.release(id, t0, Outcome::Success);
            seq.push_str(pool.key(id).unwrap());
        }
        assert!(seq == "xyxy" || seq == "yxyx", "{algorithm:?}: {seq}");
    }
}

#[test]
fn all_unavailable_returns_none_and_keeps_fails() {
    // Current NGINX no longer resets `fails` when every peer is out (older versions did
    // "for quick recovery"): the servers stay out until their own fail_timeout.
    let t0 = t0();
    let mut pool = Pool::new(Algorithm::RoundRobin, two());
    for _ in 0..2 {
        let id = pool.select(t0, &mut Attempt::new(), None).unwrap();
        pool.release(id, t0, Outcome::Failure);
    }
    for at in [1, 5, 10] {
        let now = t0 + secs(at);
        assert_eq!(
            pool.select(now, &mut Attempt::new(), None),
            None,
            "at {at}s"
        );
        assert!(pool.snapshot(now).iter().all(|p| p.fails == 1));
    }
    assert!(pool
        .select(t0 + secs(11), &mut Attempt::new(), None)
        .is_some());
}

#[test]
fn single_peer_is_never_failed_and_never_retried() {
    let t0 = t0();
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::LeastConn,
        Algorithm::Hash { consistent: false },
        Algorithm::Hash { consistent: true },
    ] {
        let mut pool = Pool::new(algorithm, vec![ServerSpec::new("only:80")]);
        assert!(pool.is_single());
        for _ in 0..5 {
            let mut attempt = Attempt::new();
            let id = pool.select(t0, &mut attempt, Some(b"k")).unwrap();
            pool.release(id, t0, Outcome::Failure);
            // NGINX sets tries to 0 for a lone server: no second try.
            assert_eq!(
                pool.select(t0, &mut attempt, Some(b"k")),
                None,
                "{algorithm:?}"
            );
        }
        let snap = &pool.snapshot(t0)[0];
        assert_eq!(snap.fails, 0, "{algorithm:?}");
        assert_eq!(snap.effective_weight, 1);
        assert_eq!(snap.state, PeerState::Up);
        assert_eq!(snap.conns, 0);
    }
}

#[test]
fn single_peer_still_honours_down_health_and_max_conns() {
    let t0 = t0();
    let mut pool = Pool::new(
        Algorithm::RoundRobin,
        vec![ServerSpec::new("only:80").with_max_conns(1)],
    );
    let held = pool.select(t0, &mut Attempt::new(), None).unwrap();
    assert_eq!(pool.select(t0, &mut Attempt::new(), None), None, "full");
    pool.release(held, t0, Outcome::Success);
    pool.set_healthy("only:80", false);
    assert_eq!(
        pool.select(t0, &mut Attempt::new(), None),
        None,
        "unhealthy"
    );
    pool.set_healthy("only:80", true);
    pool.set_down("only:80", true);
    assert_eq!(pool.select(t0, &mut Attempt::new(), None), None, "down");
}

#[test]
fn one_primary_with_a_backup_is_not_single() {
    let t0 = t0();
    let specs = vec![ServerSpec::new("a"), ServerSpec::new("z").with_backup(true)];
    let mut pool = Pool::new(Algorithm::RoundRobin, specs);
    assert!(!pool.is_single());
    let a = pool.select(t0, &mut Attempt::new(), None).unwrap();
    pool.release(a, t0, Outcome::Failure);
    let id = pool.select(t0, &mut Attempt::new(), None).unwrap();
    assert_eq!(pool.key(id), Some("z"), "the failed primary is skipped");
}

#[test]
fn empty_pool_selects_nothing() {
    let t0 = t0();
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::LeastConn,
        Algorithm::Hash { consistent: false },
        Algorithm::Hash { consistent: true },
    ] {
        let mut pool = Pool::new(algorithm, Vec::new());
        assert!(pool.is_empty());
        assert_eq!(pool.select(t0, &mut Attempt::new(), Some(b"k")), None);
        assert_eq!(pool.default_tries(), 0);
    }
}

#[test]
fn only_backups_still_serve() {
    let t0 = t0();
    let specs = vec![ServerSpec::new("z:1").with_backup(true)];
    for algorithm in [Algorithm::RoundRobin, Algorithm::Hash { consistent: true }] {
        let mut pool = Pool::new(algorithm, specs.clone());
        let id = pool.select(t0, &mut Attempt::new(), Some(b"k")).unwrap();
        assert!(id.is_backup());
    }
}

#[test]
fn default_tries_counts_non_down_servers() {
    let specs = vec![
        ServerSpec::new("a"),
        ServerSpec::new("b").with_down(true),
        ServerSpec::new("c"),
        ServerSpec::new("z").with_backup(true),
    ];
    let mut pool = Pool::new(Algorithm::RoundRobin, specs);
    pool.set_healthy("a", false);
    assert_eq!(pool.default_tries(), 3);
    assert_eq!(pool.len(), 4);
}

#[test]
fn huge_weights_do_not_overflow() {
    let t0 = t0();
    let specs = weighted(&[("a", u32::MAX), ("b", u32::MAX), ("c", 1)]);
    for algorithm in [Algorithm::RoundRobin, Algorithm::LeastConn] {
        let mut pool = Pool::new(algorithm, specs.clone());
        for i in 0..300 {
            let now = t0 + secs(i);
            if let Some(id) = pool.select(now, &mut Attempt::new(), None) {
                let outcome = if i % 7 == 0 {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                pool.release(id, now, outcome);
            }
        }
        assert!(pool.snapshot(t0).iter().all(|p| p.effective_weight >= 0));
    }
}

#[test]
fn snapshot_states() {
    let t0 = t0();
    let specs = vec![
        ServerSpec::new("up"),
        ServerSpec::new("down").with_down(true),
        ServerSpec::new("sick"),
        ServerSpec::new("failed"),
        ServerSpec::new("full").with_max_conns(1),
        ServerSpec::new("spare").with_backup(true),
    ];
    let mut pool = Pool::new(Algorithm::RoundRobin, specs);
    pool.set_healthy("sick", false);
    let mut attempt = Attempt::new();
    // Tries go up, failed, full (down and sick are skipped); fail the second one.
    let first = pool.select(t0, &mut attempt, None).unwrap();
    assert_eq!(pool.key(first), Some("up"));
    pool.release(first, t0, Outcome::Success);
    let second = pool.select(t0, &mut attempt, None).unwrap();
    assert_eq!(pool.key(second), Some("failed"));
    pool.release(second, t0, Outcome::Failure);
    let third = pool.select(t0, &mut attempt, None).unwrap();
    assert_eq!(pool.key(third), Some("full"));

    let now = t0 + secs(3);
    let expected = [
        ("up", false, PeerState::Up),
        ("down", false, PeerState::Down),
        ("sick", false, PeerState::Unhealthy),
        (
            "failed",
            false,
            PeerState::Failed {
                until: t0 + secs(10),
            },
        ),
        ("full", false, PeerState::Full),
        ("spare", true, PeerState::Up),
    ];
    let snap = pool.snapshot(now);
    assert_eq!(snap.len(), expected.len());
    for (peer, (key, backup, state)) in snap.iter().zip(expected) {
        assert_eq!(peer.key, key);
        assert_eq!(peer.backup, backup, "{key}");
        assert_eq!(peer.state, state, "{key}");
        assert_eq!(peer.id.is_backup(), backup);
        assert_eq!(pool.key(peer.id), Some(key));
    }
    let failed = &snap[3];
    assert_eq!((failed.fails, failed.effective_weight), (1, 0));
    assert_eq!(failed.accessed, Some(t0));
    assert_eq!(snap[4].conns, 1);
    assert_eq!(snap[5].index, 0);
    assert_eq!(
        state_of(&pool, t0 + secs(11), "failed"),
        PeerState::Up,
        "window over"
    );
}

#[test]
fn reload_carries_state_by_key() {
    let t0 = t0();
    let old_specs = vec![
        ServerSpec::new("10.0.2.10:3002").with_weight(2),
        ServerSpec::new("10.0.2.11:3002"),
        ServerSpec::new("10.0.2.12:3002"),
    ];
    let mut old = Pool::new(Algorithm::LeastConn, old_specs);
    // .10 fails, .11 keeps two requests in flight, .12 just served one.
    let ten = old.select(t0, &mut Attempt::new(), None).unwrap();
    assert_eq!(old.key(ten), Some("10.0.2.10:3002"));
    old.release(ten, t0, Outcome::Failure);
    let in_flight: Vec<PeerId> = (0..2)
        .map(|_| old.select(t0, &mut Attempt::new(), None).unwrap())
        .collect();
    assert!(in_flight
        .iter()
        .all(|&id| old.key(id) == Some("10.0.2.11:3002") || old.key(id) == Some("10.0.2.12:3002")));
    let eleven_conns = old.snapshot(t0)[1].conns;
    old.set_healthy("10.0.2.12:3002", false);

    let new_specs = vec![
        ServerSpec::new("10.0.2.13:3002"),
        ServerSpec::new("10.0.2.11:3002"),
        ServerSpec::new("10.0.2.10:3002").with_weight(4),
    ];
    let mut new = Pool::reloaded(&old, Algorithm::RoundRobin, new_specs);
    assert_eq!(new.algorithm(), Algorithm::RoundRobin);
    let snap = new.snapshot(t0 + secs(1));
    let by_key = |key: &str| snap.iter().find(|p| p.key == key).unwrap().clone();

    let ten_now = by_key("10.0.2.10:3002");
    assert_eq!(ten_now.fails, 1);
    assert_eq!(ten_now.checked, Some(t0));
    assert_eq!(ten_now.accessed, Some(t0));
    assert_eq!(ten_now.weight, 4);
    // Penalty of 2 (weight 2 / max_fails 1) carried onto the new weight 4.
    assert_eq!(ten_now.effective_weight, 2);
    assert_eq!(
        ten_now.state,
        PeerState::Failed {
            until: t0 + secs(10)
        }
    );
    assert_eq!(ten_now.index, 2);

    assert_eq!(by_key("10.0.2.11:3002").conns, eleven_conns);
    let fresh = by_key("10.0.2.13:3002");
    assert_eq!((fresh.fails, fresh.conns, fresh.checked), (0, 0, None));
    assert!(snap.iter().all(|p| p.key != "10.0.2.12:3002"));
    assert!(snap.iter().all(|p| p.current_weight == 0));

    // Requests that started on the old pool finish on the new one.
    for id in in_flight {
        let carried = old.key(id) == Some("10.0.2.11:3002");
        assert_eq!(new.release(id, t0, Outcome::Success), carried);
        // The old pool object also still accepts it.
        assert!(old.release(id, t0, Outcome::Success));
    }
    assert_eq!(new.snapshot(t0)[1].conns, 0);

    // New servers get serials that do not collide with anything the old pool issued.
    let fresh_id = new.snapshot(t0)[0].id;
    assert!(old.key(fresh_id).is_none());
}

#[test]
fn reload_carries_health_mark_and_handles_duplicate_keys() {
    let t0 = t0();
    let specs = vec![
        ServerSpec::new("dup:1"),
        ServerSpec::new("dup:1"),
        ServerSpec::new("other:1"),
    ];
    let mut old = Pool::new(Algorithm::RoundRobin, specs.clone());
    assert_eq!(old.set_healthy("dup:1", false), 2);
    let held = old.select(t0, &mut Attempt::new(), None).unwrap();
    assert_eq!(old.key(held), Some("other:1"));
    let new = Pool::reloaded(&old, Algorithm::RoundRobin, specs);
    let snap = new.snapshot(t0);
    assert_eq!(snap[0].state, PeerState::Unhealthy);
    assert_eq!(snap[1].state, PeerState::Unhealthy);
    assert_eq!(snap[2].conns, 1);
    let serials: Vec<u64> = snap.iter().map(|p| p.id.serial()).collect();
    assert_eq!(serials, [0, 1, 2]);
}

#[test]
fn reload_chains_across_generations() {
    let t0 = t0();
    let mut gen1 = Pool::new(Algorithm::RoundRobin, two());
    let id = gen1.select(t0, &mut Attempt::new(), None).unwrap();
    let gen2 = Pool::reloaded(
        &gen1,
        Algorithm::RoundRobin,
        vec![ServerSpec::new("b"), ServerSpec::new("a")],
    );
    let mut gen3 = Pool::reloaded(
        &gen2,
        Algorithm::LeastConn,
        vec![ServerSpec::new("c"), ServerSpec::new("a")],
    );
    assert_eq!(gen3.snapshot(t0)[1].conns, 1);
    assert!(gen3.release(id, t0, Outcome::Success));
    assert_eq!(gen3.snapshot(t0)[1].conns, 0);
    assert!(gen1.release(id, t0, Outcome::Success));
}

#[test]
fn release_of_unknown_id_is_ignored() {
    let t0 = t0();
    let mut pool = Pool::new(Algorithm::RoundRobin, two());
    let stranger = PeerId {
        backup: true,
        index: 7,
        serial: 99,
    };
    assert!(!pool.release(stranger, t0, Outcome::Failure));
    assert_eq!(pool.key(stranger), None);
    assert!(pool.snapshot(t0).iter().all(|p| p.fails == 0));
}
