//! Simulated-time tests: `t0 + Duration` stands in for the clock, and [`Net`] wires two
//! machines together with zero-latency delivery.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn addr(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn name(s: &str) -> PeerName {
    PeerName::new(s).expect("valid name")
}

fn config(n: &str, last: u8, priority: u8) -> Config {
    Config::new(name(n), addr(last), priority)
}

fn machine(config: Config) -> Machine {
    Machine::new(config).expect("valid config")
}

fn started(config: Config, t0: Instant) -> Machine {
    let mut m = machine(config);
    m.handle(t0, Input::Start);
    m
}

/// Becomes master by hearing nothing for Master_Down_Interval; returns when.
fn started_master(config: Config, t0: Instant) -> (Machine, Instant) {
    let mut m = started(config, t0);
    let at = m.next_deadline().expect("backup deadline");
    m.handle(at, Input::Tick);
    assert_eq!(m.state(), State::Master);
    (m, at)
}

fn advert_with(n: &str, last: u8, priority: u8, interval: Duration) -> Input {
    Input::Advert(Advert {
        from_addr: addr(last),
        from_name: name(n),
        priority,
        interval,
    })
}

fn advert(n: &str, last: u8, priority: u8) -> Input {
    advert_with(n, last, priority, ms(100))
}

fn transition(from: State, to: State, reason: Reason) -> Action {
    Action::Transition { from, to, reason }
}

fn become_master(reason: Reason, priority: u8) -> Vec<Action> {
    vec![
        transition(State::Backup, State::Master, reason),
        Action::SendAdvert { priority },
        Action::AcquireVip,
    ]
}

/// A master that hears a better peer first winds its connections down (make-before-break).
fn step_down() -> Vec<Action> {
    vec![Action::Quiesce]
}

/// Drives a Backup that hears `peer` at each of `advert_times`, ticking at its deadlines,
/// until `end`; returns when and why it became master, if it did.
fn backup_hearing(
    m: &mut Machine,
    peer: &Input,
    advert_times: impl IntoIterator<Item = Instant>,
    end: Instant,
) -> Option<(Instant, Reason)> {
    let mut adverts = advert_times.into_iter().peekable();
    for _ in 0..100_000 {
        let tick = m.next_deadline().filter(|t| *t <= end);
        let next_advert = adverts.peek().copied().filter(|t| *t <= end);
        let (now, input) = match (tick, next_advert) {
            (None, None) => return None,
            (Some(t), Some(a)) if a < t => (adverts.next()?, peer.clone()),
            (None, Some(_)) => (adverts.next()?, peer.clone()),
            (Some(t), _) => (t, Input::Tick),
        };
        for action in m.handle(now, input) {
            if let Action::Transition {
                to: State::Master,
                reason,
                ..
            } = action
            {
                return Some((now, reason));
            }
        }
    }
    panic!("simulation did not settle");
}

/// `count` adverts every 100 ms starting at `first`.
fn every_100ms(first: Instant, count: u64) -> impl Iterator<Item = Instant> {
    (0..count).map(move |k| first + ms(100 * k))
}

#[test]
fn rfc_timing_in_whole_microseconds() {
    // (priority, interval, skew, master_down)
    let table = [
        (100, ms(100), us(60_937), us(360_937)), // 60.9375 ms rounded down
        (254, ms(100), us(781), us(300_781)),
        (1, ms(100), us(99_609), us(399_609)),
        (200, ms(100), us(21_875), us(321_875)),
        (100, ms(1000), us(609_375), us(3_609_375)),
        (100, ms(1), us(609), us(3_609)),
        (100, ms(65_535), us(39_935_390), us(236_540_390)),
    ];
    for (priority, interval, skew, down) in table {
        assert_eq!(
            skew_time(priority, interval),
            skew,
            "skew {priority} {interval:?}"
        );
        assert_eq!(
            master_down_interval(priority, interval),
            down,
            "down {priority}"
        );
    }
    let m = machine(config("a", 1, 100));
    assert_eq!(m.skew_time(), us(60_937));
    assert_eq!(m.master_down_interval(), us(360_937));
}

#[test]
fn config_is_validated() {
    type Edit = fn(&mut Config);
    let with = |f: Edit| {
        let mut c = config("a", 1, 100);
        f(&mut c);
        Machine::new(c).map(|_| ())
    };
    let table: [(Edit, Result<(), ConfigError>); 9] = [
        (|_| {}, Ok(())),
        (|c| c.priority = 0, Err(ConfigError::PriorityOutOfRange(0))),
        (
            |c| c.priority = 255,
            Err(ConfigError::PriorityOutOfRange(255)),
        ),
        (|c| c.priority = 254, Ok(())),
        (
            |c| c.advert_interval = Duration::ZERO,
            Err(ConfigError::BadInterval(Duration::ZERO)),
        ),
        (
            |c| c.advert_interval = ms(65_536),
            Err(ConfigError::BadInterval(ms(65_536))),
        ),
        (
            |c| c.advert_interval = us(1_500),
            Err(ConfigError::BadInterval(us(1_500))),
        ),
        (
            |c| c.preempt_delay = Some(Duration::from_secs(3601)),
            Err(ConfigError::PreemptDelayTooLong(Duration::from_secs(3601))),
        ),
        (|c| c.preempt_delay = Some(MAX_PREEMPT_DELAY), Ok(())),
    ];
    for (i, (edit, expected)) in table.into_iter().enumerate() {
        assert_eq!(with(edit), expected, "row {i}");
    }
}

#[test]
fn startup_goes_backup_then_master_after_exact_master_down() {
    let t0 = Instant::now();
    let mut m = machine(config("a", 1, 100));
    assert_eq!(m.state(), State::Initialize);
    assert_eq!(m.next_deadline(), None);
    assert_eq!(
        m.handle(t0, Input::Start),
        vec![transition(
            State::Initialize,
            State::Backup,
            Reason::Startup
        )]
    );
    assert_eq!(m.state(), State::Backup);
    assert_eq!(m.current_master(), None);
    assert_eq!(m.next_deadline(), Some(t0 + us(360_937)));
    assert!(m.handle(t0 + us(360_936), Input::Tick).is_empty());
    assert_eq!(
        m.handle(t0 + us(360_937), Input::Tick),
        become_master(Reason::MasterDown, 100)
    );
    assert_eq!(m.next_deadline(), Some(t0 + us(460_937)));
    assert_eq!(m.current_master().map(|p| &p.name), Some(&name("a")));
    assert!(
        m.handle(t0, Input::Start).is_empty(),
        "Start while running is a no-op"
    );
}

#[test]
fn master_advertises_every_interval_without_catch_up_bursts() {
    let t0 = Instant::now();
    let (mut m, became) = started_master(config("a", 1, 100), t0);
    for k in 1..=10 {
        let due = became + ms(100 * k);
        assert_eq!(m.next_deadline(), Some(due));
        assert!(
            m.handle(due - us(1), Input::Tick).is_empty(),
            "early tick {k}"
        );
        assert_eq!(
            m.handle(due, Input::Tick),
            vec![Action::SendAdvert { priority: 100 }]
        );
        assert!(m.handle(due, Input::Tick).is_empty(), "duplicate tick {k}");
    }
    // A tick 2.5 intervals late sends one advert and restarts the cadence from then.
    let late = became + ms(1000) + ms(350);
    assert_eq!(
        m.handle(late, Input::Tick),
        vec![Action::SendAdvert { priority: 100 }]
    );
    assert_eq!(m.next_deadline(), Some(late + ms(100)));
}

#[test]
fn backup_preemption_table() {
    let t0 = Instant::now();
    // (own priority, master's priority, own preempt, expected takeover)
    let table = [
        // It asks at its first master-down expiry (321.875 ms); this master never yields (an
        // older peer), so it takes the VIP YIELD_BOUND later.
        (200, 100, true, Some((us(2_321_875), Reason::Preempt))),
        (200, 100, false, None),
        (100, 200, true, None),
        (100, 100, true, None),
        (100, 100, false, None),
        (100, 200, false, None),
    ];
    for (own, theirs, preempt, expected) in table {
        let mut c = config("b", 2, own);
        c.preempt = preempt;
        let mut m = started(c, t0);
        let peer = advert("a", 1, theirs);
        let got = backup_hearing(&mut m, &peer, every_100ms(t0 + ms(10), 30), t0 + ms(3000));
        assert_eq!(
            got,
            expected.map(|(d, r)| (t0 + d, r)),
            "own {own} theirs {theirs} preempt {preempt}"
        );
        if expected.is_none() {
            assert_eq!(m.state(), State::Backup);
            assert_eq!(m.current_master().map(|p| p.addr), Some(addr(1)));
        }
    }
}

#[test]
fn master_election_table() {
    // Own: priority 100 at 10.0.0.5. (peer priority, peer address, expected actions)
    // Answered at once, and the VIP announced again (the other may have taken it).
    let answer = vec![Action::SendAdvert { priority: 100 }, Action::AcquireVip];
    let table = [
        (101, 1, step_down()),
        (254, 1, step_down()),
        (100, 6, step_down()),    // tie, higher address wins
        (100, 4, answer.clone()), // tie, lower address: assert ourselves
        (99, 9, answer.clone()),  // worse master: answer at once
        (0, 9, answer.clone()),   // stopping peer: answer, stay master
        (255, 9, step_down()),    // an "owner" still wins
    ];
    for (priority, last, expected) in table {
        let t0 = Instant::now();
        let (mut m, became) = started_master(config("me", 5, 100), t0);
        let now = became + ms(30);
        assert_eq!(
            m.handle(now, advert("peer", last, priority)),
            expected,
            "peer {priority} at .{last}"
        );
        if expected == answer {
            assert_eq!(m.state(), State::Master);
            assert_eq!(m.next_deadline(), Some(now + ms(100)), "advert timer reset");
        } else {
            // Still master while connections wind down, then the handover: a priority-0
            // advert, the VIP kept until the peer announces itself (plus the grace).
            assert_eq!(m.state(), State::Master);
            assert!(m.is_yielding());
            assert_eq!(m.next_deadline(), Some(became + ms(100)), "adverts go on");
            assert_eq!(
                m.handle(now + ms(3), Input::Quiet),
                vec![Action::StopAnnouncing, Action::SendAdvert { priority: 0 }]
            );
            assert!(m
                .handle(now + ms(4), advert("peer", last, priority))
                .is_empty());
            assert_eq!(m.next_deadline(), Some(now + ms(24)));
            assert_eq!(
                m.handle(now + ms(24), Input::Tick),
                vec![
                    transition(State::Master, State::Backup, Reason::PeerWins),
                    Action::ReleaseVip,
                    Action::Resume,
                ]
            );
            assert_eq!(m.state(), State::Backup);
            assert_eq!(m.next_deadline(), Some(now + ms(24) + us(360_937)));
        }
    }
}

#[test]
fn backup_defers_to_equal_priority_whatever_the_address() {
    // RFC 5798 6.4.2: a backup only compares priorities; addresses break ties between masters.
    let t0 = Instant::now();
    let mut m = started(config("b", 9, 100), t0);
    assert!(m.handle(t0 + ms(50), advert("a", 1, 100)).is_empty());
    assert_eq!(m.next_deadline(), Some(t0 + ms(50) + us(360_937)));
    assert_eq!(m.state(), State::Backup);
}

#[test]
fn priority_zero_advert_means_takeover_after_skew_only() {
    let t0 = Instant::now();
    let mut m = started(config("b", 2, 100), t0);
    m.handle(t0 + ms(50), advert("a", 1, 200));
    assert_eq!(m.current_master().map(|p| p.addr), Some(addr(1)));
    let stop = t0 + ms(100);
    assert!(m.handle(stop, advert("a", 1, 0)).is_empty());
    assert_eq!(m.current_master(), None);
    assert_eq!(m.next_deadline(), Some(stop + us(60_937)));
    assert!(m.handle(stop + us(60_936), Input::Tick).is_empty());
    assert_eq!(
        m.handle(stop + us(60_937), Input::Tick),
        become_master(Reason::MasterStopped, 100)
    );
}

#[test]
fn a_sole_backup_takes_over_from_a_stopping_master_at_once() {
    let t0 = Instant::now();
    let mut cfg = config("b", 2, 100);
    cfg.sole_backup = true;
    let mut m = started(cfg, t0);
    m.handle(t0 + ms(50), advert("a", 1, 200));
    let stop = t0 + ms(100);
    assert!(m.handle(stop, advert("a", 1, 0)).is_empty());
    assert_eq!(m.next_deadline(), Some(stop));
    assert_eq!(
        m.handle(stop, Input::Tick),
        become_master(Reason::MasterStopped, 100)
    );
}

#[test]
fn a_sole_backup_declares_the_master_down_after_three_intervals_without_skew() {
    let t0 = Instant::now();
    let mut cfg = config("b", 2, 100);
    cfg.advert_interval = ms(50);
    cfg.sole_backup = true;
    let mut m = started(cfg.clone(), t0);
    assert_eq!(m.master_down_interval(), ms(150));
    m.handle(t0 + ms(10), advert_with("a", 1, 200, ms(50)));
    assert_eq!(m.next_deadline(), Some(t0 + ms(160)));
    // With other backups the RFC's skew stays: 150 ms + (256 - 100) x 50 ms / 256.
    cfg.sole_backup = false;
    let m = started(cfg, t0);
    assert_eq!(m.master_down_interval(), us(180_468));
}

#[test]
fn backup_learns_the_masters_interval() {
    let t0 = Instant::now();
    let mut m = started(config("b", 2, 100), t0);
    m.handle(t0, advert_with("a", 1, 200, ms(1000)));
    assert_eq!(m.master_adver_interval(), ms(1000));
    assert_eq!(m.next_deadline(), Some(t0 + us(3_609_375)));
    // A zero interval from a buggy peer is clamped, not trusted.
    m.handle(t0, advert_with("a", 1, 200, Duration::ZERO));
    assert_eq!(m.master_adver_interval(), ms(1));
    assert_eq!(m.next_deadline(), Some(t0 + us(3_609)));
    // Our own adverts still use our configured interval.
    assert_eq!(m.advert(100).interval, ms(100));
}

#[test]
fn preempt_delay_is_honoured_but_never_delays_failover() {
    let t0 = Instant::now();
    let mut c = config("b", 2, 200);
    c.preempt_delay = Some(ms(1000));
    let peer = advert("a", 1, 100);
    // (adverts from the lower master, expected takeover)
    let table = [
        // Keeps advertising: ask 1 s after first seeing it (at 10 ms), not at 321.875; it
        // never yields, so take over YIELD_BOUND after asking.
        (40, Some((ms(3010), Reason::Preempt))),
        // Goes quiet after its advert at 510 ms: it is dead at 510 ms + 321.875 ms.
        (6, Some((us(831_875), Reason::MasterDown))),
    ];
    for (count, expected) in table {
        let mut m = started(c.clone(), t0);
        let got = backup_hearing(
            &mut m,
            &peer,
            every_100ms(t0 + ms(10), count),
            t0 + ms(4000),
        );
        assert_eq!(got, expected.map(|(d, r)| (t0 + d, r)), "{count} adverts");
    }
    // Without a delay the same node asks at its first master-down expiry.
    let mut m = started(config("b", 2, 200), t0);
    let got = backup_hearing(&mut m, &peer, every_100ms(t0 + ms(10), 30), t0 + ms(3000));
    assert_eq!(got, Some((t0 + us(2_321_875), Reason::Preempt)));
}

#[test]
fn tracking_penalty_is_clamped_and_absolute() {
    let t0 = Instant::now();
    let mut m = machine(config("a", 1, 100));
    // (total penalty, effective priority)
    for (penalty, effective) in [(0, 100), (30, 70), (30, 70), (99, 1), (255, 1), (0, 100)] {
        assert!(m.handle(t0, Input::Tracking { penalty }).is_empty());
        assert_eq!(m.effective_priority(), effective, "penalty {penalty}");
    }
    m.handle(t0, Input::Tracking { penalty: 40 });
    m.handle(t0, Input::Start);
    let became = m.next_deadline().expect("deadline");
    // Skew is computed from the effective priority (60): (196 * 100 ms) / 256.
    assert_eq!(became, t0 + us(376_562));
    assert_eq!(
        m.handle(became, Input::Tick),
        become_master(Reason::MasterDown, 60)
    );
    // A change while master is advertised at once; no change, no advert.
    let now = became + ms(20);
    assert_eq!(
        m.handle(now, Input::Tracking { penalty: 10 }),
        vec![Action::SendAdvert { priority: 90 }]
    );
    assert_eq!(m.next_deadline(), Some(now + ms(100)));
    assert!(m.handle(now, Input::Tracking { penalty: 10 }).is_empty());
}

#[test]
fn tracking_drop_below_the_master_cancels_a_pending_preemption() {
    let t0 = Instant::now();
    let mut c = config("b", 2, 200);
    c.preempt_delay = Some(ms(1000));
    let mut m = started(c, t0);
    let peer = advert("a", 1, 100);
    assert_eq!(
        backup_hearing(&mut m, &peer, every_100ms(t0 + ms(10), 5), t0 + ms(450)),
        None
    );
    // Last advert at 410 ms. Now we are worse (50 < 100): defer from that advert on.
    assert!(m
        .handle(t0 + ms(450), Input::Tracking { penalty: 150 })
        .is_empty());
    assert_eq!(
        m.next_deadline(),
        Some(t0 + ms(410) + master_down_interval(50, ms(100)))
    );
    assert_eq!(
        backup_hearing(&mut m, &peer, every_100ms(t0 + ms(510), 30), t0 + ms(3000)),
        None
    );
}

#[test]
fn own_adverts_looped_back_are_ignored() {
    let t0 = Instant::now();
    let (mut m, became) = started_master(config("a", 1, 100), t0);
    assert!(m.handle(became, advert("a", 1, 100)).is_empty());
    assert!(m.handle(became, advert("a", 1, 0)).is_empty());
    assert_eq!(m.state(), State::Master);
    // Same address, different name: a misconfigured peer, ordered by name.
    assert_eq!(m.handle(became, advert("b", 1, 100)), step_down());
}

#[test]
fn shutdown_hands_over_and_restart_works() {
    let t0 = Instant::now();
    let (mut m, became) = started_master(config("a", 1, 100), t0);
    // A master keeps the VIP while it hands over: a priority-0 advert, repeated each
    // interval, until the peer announces itself; its own announcements stop, so a late
    // one cannot pull clients back once the peer has the VIP.
    assert_eq!(
        m.handle(became, Input::Shutdown),
        vec![Action::StopAnnouncing, Action::SendAdvert { priority: 0 }]
    );
    assert_eq!(m.state(), State::Master);
    assert!(m.is_resigning());
    assert!(m.handle(became, Input::Shutdown).is_empty(), "one handover");
    assert_eq!(m.next_deadline(), Some(became + ms(100)));
    assert_eq!(
        m.handle(became + ms(100), Input::Tick),
        vec![Action::SendAdvert { priority: 0 }]
    );
    assert!(
        m.handle(became + ms(120), Input::Tracking { penalty: 10 })
            .is_empty(),
        "tracking does not interrupt a handover"
    );
    m.handle(became + ms(121), Input::Tracking { penalty: 0 });
    assert!(
        m.handle(became + ms(130), advert("b", 2, 0)).is_empty(),
        "a peer that is stopping too has not taken over"
    );
    // The peer took over: the VIP goes a moment later (its address change and ARP).
    assert!(m.handle(became + ms(150), advert("b", 2, 50)).is_empty());
    assert_eq!(m.next_deadline(), Some(became + ms(170)));
    assert_eq!(
        m.handle(became + ms(170), Input::Tick),
        vec![
            transition(State::Master, State::Stopped, Reason::Shutdown),
            Action::ReleaseVip,
        ]
    );
    assert_eq!(m.state(), State::Stopped);
    assert_eq!(m.next_deadline(), None);
    assert_eq!(m.current_master(), None);
    assert!(m.handle(became, Input::Shutdown).is_empty());
    assert!(m.handle(became, Input::Tick).is_empty());
    assert!(m.handle(became, advert("b", 2, 200)).is_empty());

    let restart = became + ms(500);
    assert_eq!(
        m.handle(restart, Input::Start),
        vec![transition(State::Stopped, State::Backup, Reason::Startup)]
    );
    assert_eq!(m.next_deadline(), Some(restart + us(360_937)));

    // A backup has no VIP to release.
    assert_eq!(
        m.handle(restart, Input::Shutdown),
        vec![transition(State::Backup, State::Stopped, Reason::Shutdown)]
    );
    let mut fresh = machine(config("c", 3, 100));
    assert!(fresh.handle(t0, Input::Tick).is_empty());
    assert!(fresh.handle(t0, advert("a", 1, 100)).is_empty());
    assert_eq!(
        fresh.handle(t0, Input::Shutdown),
        vec![transition(
            State::Initialize,
            State::Stopped,
            Reason::Shutdown
        )]
    );
}

/// Two machines with zero-latency delivery, and a switch to partition them.
struct Net {
    nodes: [Machine; 2],
    connected: bool,
    now: Instant,
    /// Every action, with when and by whom.
    log: Vec<(Instant, usize, Action)>,
}

impl Net {
    fn new(a: Config, b: Config, t0: Instant) -> Self {
        let mut net = Self {
            nodes: [machine(a), machine(b)],
            connected: true,
            now: t0,
            log: Vec::new(),
        };
        for i in 0..2 {
            net.input(i, Input::Start);
        }
        net
    }

    fn input(&mut self, node: usize, input: Input) {
        let mut queue: VecDeque<(usize, Input)> = VecDeque::from([(node, input)]);
        while let Some((node, input)) = queue.pop_front() {
            assert!(self.log.len() < 100_000, "advert storm");
            for action in self.nodes[node].handle(self.now, input) {
                self.log.push((self.now, node, action));
                if action == Action::Quiesce {
                    // Connections finish at once here.
                    queue.push_back((node, Input::Quiet));
                }
                if let Action::SendAdvert { priority } = action {
                    if self.connected {
                        queue.push_back((
                            1 - node,
                            Input::Advert(self.nodes[node].advert(priority)),
                        ));
                    }
                }
            }
        }
    }

    fn run_until(&mut self, end: Instant) {
        while let Some(t) = self.nodes.iter().filter_map(Machine::next_deadline).min() {
            if t > end {
                break;
            }
            self.now = t;
            for i in 0..2 {
                if self.nodes[i].next_deadline().is_some_and(|d| d <= t) {
                    self.input(i, Input::Tick);
                }
            }
        }
        self.now = end;
    }

    fn states(&self) -> [State; 2] {
        [self.nodes[0].state(), self.nodes[1].state()]
    }

    fn adverts_since(&self, since: Instant) -> usize {
        self.log
            .iter()
            .filter(|(t, _, a)| *t >= since && matches!(a, Action::SendAdvert { .. }))
            .count()
    }
}

#[test]
fn partition_makes_two_masters_and_healing_leaves_exactly_one() {
    use State::{Backup, Master};
    let t0 = Instant::now();
    // (priority a, priority b, master before the partition, master after healing)
    let table = [
        (150, 100, [Master, Backup], [Master, Backup]),
        (100, 150, [Backup, Master], [Backup, Master]),
        // Equal: a's timer fires first in the simulation; after healing b's address wins.
        (100, 100, [Master, Backup], [Backup, Master]),
    ];
    for (pa, pb, before, after) in table {
        let mut net = Net::new(config("a", 1, pa), config("b", 2, pb), t0);
        net.run_until(t0 + ms(1000));
        assert_eq!(net.states(), before, "{pa}/{pb} before");

        net.connected = false;
        net.run_until(t0 + ms(2000));
        assert_eq!(net.states(), [Master, Master], "{pa}/{pb} partitioned");

        net.connected = true;
        let healed = net.now;
        // Run until the first advert after healing has been sent and answered.
        let first = net
            .nodes
            .iter()
            .filter_map(Machine::next_deadline)
            .min()
            .expect("masters have deadlines");
        // The worse one yields: its connections wind down (at once here), a priority-0
        // advert, the winner's answer, and the VIP goes HANDOVER_GRACE later.
        net.run_until(first + HANDOVER_GRACE);
        assert_eq!(net.states(), after, "{pa}/{pb} healed");
        assert!(
            net.adverts_since(healed) <= 4,
            "{pa}/{pb}: an advert and its answer, the loser's priority 0 and its answer, got {}",
            net.adverts_since(healed)
        );
        let winner = usize::from(after[1] == Master);
        let loser = &net.nodes[1 - winner];
        assert_eq!(
            loser.current_master().map(|p| p.addr),
            Some(net.nodes[winner].config().addr)
        );
        net.run_until(t0 + ms(5000));
        assert_eq!(net.states(), after, "{pa}/{pb} stable");
    }
}

#[test]
fn tracking_penalty_lets_the_preempting_peer_take_over() {
    let t0 = Instant::now();
    let mut net = Net::new(config("a", 1, 150), config("b", 2, 100), t0);
    net.run_until(t0 + ms(1000));
    assert_eq!(net.states(), [State::Master, State::Backup]);
    // a became master at 341.406 ms and advertised every 100 ms: last one at 941.406 ms.
    net.input(0, Input::Tracking { penalty: 60 });
    assert_eq!(net.nodes[0].effective_priority(), 90);
    assert_eq!(
        net.nodes[0].state(),
        State::Master,
        "the master does not step down alone"
    );
    net.run_until(t0 + ms(2000));
    assert_eq!(net.states(), [State::Backup, State::Master]);
    let takeovers: Vec<_> = net
        .log
        .iter()
        .filter(|(_, _, a)| {
            matches!(
                a,
                Action::Transition {
                    to: State::Master,
                    ..
                }
            )
        })
        .map(|(t, node, a)| (*t, *node, *a))
        .collect();
    // b asks at its master-down expiry; a yields at once (its connections finish at once
    // here) with a priority-0 advert; b takes over after its skew (60.937 ms).
    assert_eq!(
        takeovers.last(),
        Some(&(
            t0 + us(941_406 + 360_937 + 60_937),
            1,
            transition(State::Backup, State::Master, Reason::Preempt)
        ))
    );

    // Penalty cleared: a is better again and preempts back.
    net.input(0, Input::Tracking { penalty: 0 });
    net.run_until(t0 + ms(3000));
    assert_eq!(net.states(), [State::Master, State::Backup]);
}

#[test]
fn tracking_without_peer_preemption_keeps_the_penalized_master() {
    let t0 = Instant::now();
    let mut b = config("b", 2, 100);
    b.preempt = false;
    let mut net = Net::new(config("a", 1, 150), b, t0);
    net.run_until(t0 + ms(1000));
    net.input(0, Input::Tracking { penalty: 100 });
    net.run_until(t0 + ms(3000));
    assert_eq!(net.states(), [State::Master, State::Backup]);
}

#[test]
fn clean_shutdown_hands_over_after_skew_with_no_moment_without_a_holder() {
    let t0 = Instant::now();
    let mut net = Net::new(config("a", 1, 150), config("b", 2, 100), t0);
    net.run_until(t0 + ms(1000));
    let stop = net.now;
    net.input(0, Input::Shutdown);
    assert_eq!(net.states(), [State::Master, State::Backup]);
    assert_eq!(net.nodes[1].next_deadline(), Some(stop + us(60_937)));
    net.run_until(t0 + ms(1100));
    assert_eq!(net.states(), [State::Stopped, State::Master]);
    let at = |node: usize, wanted: Action| {
        net.log
            .iter()
            .position(|(t, n, a)| *t >= stop && *n == node && *a == wanted)
            .map(|i| (net.log[i].0, i))
            .expect("action logged")
    };
    let (acquired, acquire_index) = at(1, Action::AcquireVip);
    let (released, release_index) = at(0, Action::ReleaseVip);
    // a lets go 20 ms after b's first advert as master, which b sends as it takes the VIP:
    // the two hold it together for a moment, nobody holds it never.
    assert_eq!(acquired, stop + us(60_937));
    assert_eq!(released, acquired + HANDOVER_GRACE);
    assert!(release_index > acquire_index);
}

#[test]
fn a_stopping_master_with_nobody_to_take_over_lets_go_after_the_bound() {
    let t0 = Instant::now();
    let (mut m, became) = started_master(config("a", 1, 100), t0);
    assert_eq!(m.handover_bound(), us(399_609));
    m.handle(became, Input::Shutdown);
    let mut sent = 1;
    let mut released = None;
    while let Some(t) = m.next_deadline() {
        for action in m.handle(t, Input::Tick) {
            match action {
                Action::SendAdvert { priority: 0 } => sent += 1,
                Action::ReleaseVip => released = Some(t),
                _ => {}
            }
        }
    }
    assert_eq!(released, Some(became + us(399_609)));
    assert_eq!(sent, 4, "at 0, 100, 200 and 300 ms");
    assert_eq!(m.state(), State::Stopped);
}
