use std::time::{Duration, Instant};

use super::*;

fn pool() -> Pool {
    Pool::new(
        Algorithm::LeastConn,
        ["a", "b", "c"].map(|k| ServerSpec::new(k).with_fail_timeout(Duration::from_secs(10))),
    )
}

#[test]
fn a_pin_is_honoured_while_its_server_can_serve() {
    let t0 = Instant::now();
    let mut p = pool();
    for _ in 0..5 {
        let id = p.select_pinned(t0, &mut Attempt::new(), "b").unwrap();
        assert_eq!(p.key(id), Some("b"));
    }
    // Pinned requests count as connections (least_conn sees them).
    assert_eq!(p.snapshot(t0)[1].conns, 5);
    assert!(p.select_pinned(t0, &mut Attempt::new(), "gone").is_none());
}

#[test]
fn a_failed_down_or_tried_pin_falls_back() {
    let t0 = Instant::now();
    let mut p = pool();
    let id = p.select_pinned(t0, &mut Attempt::new(), "a").unwrap();
    p.release(id, t0, Outcome::Failure);
    assert!(
        p.select_pinned(t0, &mut Attempt::new(), "a").is_none(),
        "failed"
    );
    assert!(p
        .select_pinned(t0 + Duration::from_secs(11), &mut Attempt::new(), "a")
        .is_some());
    p.set_down("c", true);
    assert!(
        p.select_pinned(t0, &mut Attempt::new(), "c").is_none(),
        "down"
    );
    // Past a's probe window, with c down and b already tried, a is what is left.
    let t1 = t0 + Duration::from_secs(30);
    let mut attempt = Attempt::new();
    let first = p.select_pinned(t1, &mut attempt, "b").unwrap();
    assert!(p.select_pinned(t1, &mut attempt, "b").is_none(), "tried");
    let other = p.select(t1, &mut attempt, None).unwrap();
    assert_ne!(p.key(other), p.key(first));
}
