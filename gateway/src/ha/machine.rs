//! The VRRP state machine (RFC 5798 section 6.4), for unicast peers. Pure: no sockets, no
//! clocks; the caller passes `now` with every input and ticks at [`Machine::next_deadline`].
//!
//! Timing is integer microseconds, rounded down (see [`skew_time`]). The RFC counts in
//! centiseconds; microseconds keep the 100 ms default interval meaningful (skew is 60.9375 ms
//! at priority 100, which centiseconds would round to 60 ms).

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::advert::{Advert, PeerName};

/// Default advert interval: 100 ms, so a dead master is replaced in about 350 ms.
pub const DEFAULT_ADVERT_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest advert interval (the wire carries whole milliseconds).
pub const MIN_ADVERT_INTERVAL: Duration = Duration::from_millis(1);
/// Longest advert interval (the wire carries a `u16` of milliseconds).
pub const MAX_ADVERT_INTERVAL: Duration = Duration::from_millis(u16::MAX as u64);
/// Longest preempt delay; anything longer is almost certainly a unit mistake.
pub const MAX_PREEMPT_DELAY: Duration = Duration::from_secs(3600);
/// How long a stopping master keeps the VIP after the peer's first advert as master: the
/// peer's address change and gratuitous ARP take about a millisecond.
pub const HANDOVER_GRACE: Duration = Duration::from_millis(20);
/// How long a yielding master waits for its connections to finish before it hands over
/// anyway (the I/O layer usually reports [`Input::Quiet`] within milliseconds).
pub const YIELD_QUIET: Duration = Duration::from_secs(1);
/// How long a preempting backup waits for the master to yield (quiet, then a priority-0
/// advert) before it takes the VIP regardless (a peer that does not yield: an older version).
pub const YIELD_BOUND: Duration = Duration::from_secs(2);
/// Lowest configurable priority.
pub const MIN_PRIORITY: u8 = 1;
/// Highest configurable priority. 255 (RFC "address owner") is not used: neither gateway
/// owns the VIP, both must go through Backup so two starting nodes do not both grab it.
pub const MAX_PRIORITY: u8 = 254;

/// Where the machine is in the RFC 5798 life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Created, not started yet.
    Initialize,
    /// Listening for the master, ready to take over when it goes quiet.
    Backup,
    /// Holding the VIP and advertising.
    Master,
    /// Shut down; a `Start` input brings it back to Backup.
    Stopped,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Initialize => "initialize",
            Self::Backup => "backup",
            Self::Master => "master",
            Self::Stopped => "stopped",
        })
    }
}

/// Why a transition happened, for logs and per-reason counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `Start`: every node begins as Backup.
    Startup,
    /// Backup heard nothing (acceptable) for Master_Down_Interval.
    MasterDown,
    /// The master announced it is stopping (priority 0) and Skew_Time passed.
    MasterStopped,
    /// Backup with preempt on took over from a lower-priority master.
    Preempt,
    /// Master heard a peer that wins the election (higher priority, or equal priority and
    /// higher address).
    PeerWins,
    /// `Shutdown`.
    Shutdown,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Startup => "startup",
            Self::MasterDown => "master_down",
            Self::MasterStopped => "master_stopped",
            Self::Preempt => "preempt",
            Self::PeerWins => "peer_wins",
            Self::Shutdown => "shutdown",
        })
    }
}

/// A node of the pair as seen in adverts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerId {
    /// Advertised name.
    pub name: PeerName,
    /// Advertised primary address.
    pub addr: IpAddr,
}

/// Static settings of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Our name, as put in adverts.
    pub name: PeerName,
    /// Our primary address, as put in adverts; breaks priority ties.
    pub addr: IpAddr,
    /// Configured priority, [`MIN_PRIORITY`]..=[`MAX_PRIORITY`].
    pub priority: u8,
    /// How often a master advertises; whole milliseconds within
    /// [`MIN_ADVERT_INTERVAL`]..=[`MAX_ADVERT_INTERVAL`].
    pub advert_interval: Duration,
    /// Whether a Backup takes over from a lower-priority master (RFC Preempt_Mode).
    pub preempt: bool,
    /// With preempt on: how long we must have seen a lower-priority master before taking
    /// over, so a node that just came back does not grab the VIP while it is still warming
    /// up. Does not delay failover when the master actually goes quiet.
    pub preempt_delay: Option<Duration>,
    /// We are the only backup (a pair). Skew_Time exists to let the best of several backups
    /// answer a stopping master first; with one backup it only delays the handover, so a
    /// priority-0 advert makes us take over at once.
    pub sole_backup: bool,
}

impl Config {
    /// RFC defaults: 100 ms interval, preempt on, no preempt delay.
    pub fn new(name: PeerName, addr: IpAddr, priority: u8) -> Self {
        Self {
            name,
            addr,
            priority,
            advert_interval: DEFAULT_ADVERT_INTERVAL,
            preempt: true,
            preempt_delay: None,
            sole_backup: false,
        }
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Priority 0 means "stopping" and 255 "address owner"; neither is configurable.
    #[error("priority {0} is outside {MIN_PRIORITY}..={MAX_PRIORITY}")]
    PriorityOutOfRange(u8),
    /// Interval zero, above 65535 ms, or not whole milliseconds.
    #[error("advert interval {0:?} must be whole milliseconds within 1 ms..=65535 ms")]
    BadInterval(Duration),
    /// Preempt delay above [`MAX_PREEMPT_DELAY`].
    #[error("preempt delay {0:?} is longer than {MAX_PREEMPT_DELAY:?}")]
    PreemptDelayTooLong(Duration),
}

/// Something that happened to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Leave Initialize/Stopped and start as Backup.
    Start,
    /// An advert from the peer, already authenticated and replay-checked by the codec.
    Advert(Advert),
    /// Time passed; due at [`Machine::next_deadline`]. Early or extra ticks are harmless.
    Tick,
    /// The current total tracking penalty (sum of failed tracked checks), not a delta, so a
    /// repeated or lost report cannot drift the priority. Penalty 0 restores full priority.
    Tracking {
        /// Subtracted from the configured priority; the result is clamped to 1..=254.
        penalty: u8,
    },
    /// The client connections [`Action::Quiesce`] asked to wind down have finished (or the
    /// I/O layer stopped waiting): a yielding master hands the VIP over now.
    Quiet,
    /// Stop. A backup stops at once. A master hands over before it lets go: it sends a
    /// priority-0 advert (one per interval) and keeps the VIP until the peer's advert says it
    /// has taken over, or until [`Machine::handover_bound`] passes (the peer is gone too), so
    /// there is no moment in which nobody answers on the VIP.
    Shutdown,
}

/// What the I/O layer must do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send one advert with this priority (build it with [`Machine::advert`]).
    SendAdvert {
        /// Our effective priority, or 0 when stopping.
        priority: u8,
    },
    /// Add the VIP and announce it (gratuitous ARP / unsolicited NA).
    AcquireVip,
    /// Remove the VIP.
    ReleaseVip,
    /// Keep the VIP but announce it no more (cancel pending gratuitous ARPs): a handover
    /// began, and an announcement after the peer's would pull its clients back here.
    StopAnnouncing,
    /// The VIP is about to move to the peer: wind client connections down (finish the request
    /// in hand, then close; new ones served one request each) and report [`Input::Quiet`]
    /// when none is left.
    Quiesce,
    /// The handover is over and we stay up as backup: serve client connections normally.
    Resume,
    /// The state changed; for logs and counters. Always the first action of its batch.
    Transition {
        /// Old state.
        from: State,
        /// New state.
        to: State,
        /// Why.
        reason: Reason,
    },
}

/// RFC 5798 Skew_Time, `(256 - priority) * interval / 256`, in whole microseconds rounded
/// down. Lower priorities wait longer, so the best backup answers first.
pub fn skew_time(priority: u8, interval: Duration) -> Duration {
    let interval_us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
    let skew_us = (256 - u64::from(priority)).saturating_mul(interval_us) / 256;
    Duration::from_micros(skew_us)
}

/// RFC 5798 Master_Down_Interval, `3 * interval + skew`, in whole microseconds (the skew is
/// rounded down). Priority 100 and 100 ms give 300 000 + 60 937 = 360 937 us.
pub fn master_down_interval(priority: u8, interval: Duration) -> Duration {
    let interval_us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
    let skew_us = u64::try_from(skew_time(priority, interval).as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(interval_us.saturating_mul(3).saturating_add(skew_us))
}

/// [`master_down_interval`], or 3 intervals for a sole backup (no other backup to let go
/// first).
fn master_down_for(sole_backup: bool, priority: u8, interval: Duration) -> Duration {
    if sole_backup {
        interval.saturating_mul(3)
    } else {
        master_down_interval(priority, interval)
    }
}

/// One node of the HA pair.
///
/// Feed every [`Input`] to [`Machine::handle`] and carry out the returned [`Action`]s in
/// order; call [`Machine::next_deadline`] after each call and deliver `Tick` then.
///
/// Tracking relies on the peer preempting, as in keepalived: a master whose effective
/// priority drops keeps the VIP and advertises the lower priority at once; it steps down
/// only when it hears a better peer, which happens when that peer, with preempt on, stops
/// deferring, times out and becomes master. With preempt off on the peer, a penalized
/// master stays master.
#[derive(Debug, Clone)]
pub struct Machine {
    config: Config,
    /// Us, as [`Machine::current_master`] reports when we are master.
    me: PeerId,
    phase: Phase,
    penalty: u8,
    /// RFC Master_Adver_Interval: learned from the master's adverts while Backup.
    master_adver_interval: Duration,
    master: Believed,
}

#[derive(Debug, Clone)]
enum Phase {
    Initialize,
    Stopped,
    Backup(Backup),
    Master {
        advert_at: Instant,
    },
    /// A better peer asked for the VIP: still master (adverts as usual), connections winding
    /// down until [`Input::Quiet`] or `quiet_by`.
    Yielding {
        advert_at: Instant,
        quiet_by: Instant,
    },
    /// Handing over: priority-0 adverts sent, VIP still held until `release_at` (soon after
    /// the peer announces itself master); then `then`.
    Resigning {
        advert_at: Instant,
        release_at: Instant,
        then: Then,
        /// The peer that announced itself master meanwhile.
        taker: Option<PeerId>,
    },
}

/// Where a handover ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// `Shutdown`: stopped.
    Stop,
    /// A better peer took over: backup.
    Backup,
}

#[derive(Debug, Clone)]
struct Backup {
    master_down_at: Instant,
    /// The last acceptable advert had priority 0.
    master_stopped: bool,
    /// Set while we ignore a lower-priority master in order to preempt it.
    preempting: Option<Preempting>,
    /// The master stopped because we asked for the VIP (the takeover counts as preemption).
    yielded: bool,
}

#[derive(Debug, Clone, Copy)]
struct Preempting {
    /// First advert from the lower-priority master; the preempt delay counts from here.
    since: Instant,
    /// Its latest advert: if it goes quiet for Master_Down_Interval it is dead, and the
    /// preempt delay no longer applies.
    last_heard: Instant,
    priority: u8,
    interval: Duration,
    /// When we first asked the master to yield (an advert with our priority), and when to
    /// ask again.
    asked: Option<(Instant, Instant)>,
}

#[derive(Debug, Clone)]
enum Believed {
    Unknown,
    Me,
    Peer(PeerId),
}

impl Machine {
    /// Validates `config`; the machine starts in [`State::Initialize`].
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&config.priority) {
            return Err(ConfigError::PriorityOutOfRange(config.priority));
        }
        let interval = config.advert_interval;
        if !(MIN_ADVERT_INTERVAL..=MAX_ADVERT_INTERVAL).contains(&interval)
            || interval.as_nanos() != interval.as_millis() * 1_000_000
        {
            return Err(ConfigError::BadInterval(interval));
        }
        if let Some(delay) = config.preempt_delay.filter(|d| *d > MAX_PREEMPT_DELAY) {
            return Err(ConfigError::PreemptDelayTooLong(delay));
        }
        Ok(Self {
            me: PeerId {
                name: config.name.clone(),
                addr: config.addr,
            },
            master_adver_interval: config.advert_interval,
            config,
            phase: Phase::Initialize,
            penalty: 0,
            master: Believed::Unknown,
        })
    }

    /// Applies one input at time `now` and returns what the I/O layer must do, in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Start => self.on_start(now, &mut out),
            Input::Advert(advert) => self.on_advert(now, advert, &mut out),
            Input::Tick => self.on_tick(now, &mut out),
            Input::Tracking { penalty } => self.on_tracking(now, penalty, &mut out),
            Input::Quiet => self.on_quiet(now, &mut out),
            Input::Shutdown => self.on_shutdown(now, &mut out),
        }
        out
    }

    /// Current state.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Initialize => State::Initialize,
            Phase::Stopped => State::Stopped,
            Phase::Backup(_) => State::Backup,
            // Still the VIP holder while it hands over.
            Phase::Master { .. } | Phase::Yielding { .. } | Phase::Resigning { .. } => {
                State::Master
            }
        }
    }

    /// Whether a `Shutdown` is waiting for the peer to take over (the VIP is still held).
    pub fn is_resigning(&self) -> bool {
        matches!(self.phase, Phase::Resigning { .. })
    }

    /// Whether a better peer asked for the VIP and we are winding connections down for it.
    pub fn is_yielding(&self) -> bool {
        matches!(self.phase, Phase::Yielding { .. })
    }

    /// The longest a stopping master keeps the VIP waiting for the peer to take over: three
    /// priority-0 adverts plus the longest Skew_Time a backup could wait.
    pub fn handover_bound(&self) -> Duration {
        master_down_interval(MIN_PRIORITY, self.config.advert_interval)
    }

    /// Configured priority minus the tracking penalty, clamped to 1..=254: a penalized node
    /// still takes over when it is the only one left.
    pub fn effective_priority(&self) -> u8 {
        self.config
            .priority
            .saturating_sub(self.penalty)
            .clamp(MIN_PRIORITY, MAX_PRIORITY)
    }

    /// Who we believe holds the VIP: ourselves when Master; in Backup the sender of the
    /// latest advert (even a lower-priority one we are about to preempt); `None` before the
    /// first advert, after a priority-0 advert, and when not running.
    pub fn current_master(&self) -> Option<&PeerId> {
        match &self.master {
            Believed::Unknown => None,
            Believed::Me => Some(&self.me),
            Believed::Peer(peer) => Some(peer),
        }
    }

    /// When to deliver the next `Tick`: the next advert in Master; master-down expiry (or
    /// the end of the preempt delay) in Backup; `None` when not running.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Initialize | Phase::Stopped => None,
            Phase::Master { advert_at } => Some(*advert_at),
            Phase::Yielding {
                advert_at,
                quiet_by,
            } => Some((*advert_at).min(*quiet_by)),
            Phase::Resigning {
                advert_at,
                release_at,
                ..
            } => Some((*advert_at).min(*release_at)),
            Phase::Backup(b) => match (b.preempting, self.config.preempt_delay) {
                (
                    Some(Preempting {
                        asked: Some((asked, ask_at)),
                        last_heard,
                        ..
                    }),
                    _,
                ) => {
                    let dead_at = later(last_heard, self.master_down_interval());
                    let seize_at = later(asked, YIELD_BOUND);
                    Some(b.master_down_at.max(ask_at.min(dead_at).min(seize_at)))
                }
                (Some(p), Some(delay)) => {
                    let preempt_at = later(p.since, delay);
                    let dead_at = later(p.last_heard, self.master_down_interval());
                    Some(b.master_down_at.max(preempt_at.min(dead_at)))
                }
                _ => Some(b.master_down_at),
            },
        }
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// RFC Master_Adver_Interval: the master's advertised interval (our own until learned).
    pub fn master_adver_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// RFC Skew_Time for our effective priority and the master's interval.
    pub fn skew_time(&self) -> Duration {
        skew_time(self.effective_priority(), self.master_adver_interval)
    }

    /// RFC Master_Down_Interval for our effective priority and the master's interval. A sole
    /// backup waits 3 intervals without the skew: Skew_Time exists so the best of several
    /// backups answers first, and with one it only lengthens every failover.
    pub fn master_down_interval(&self) -> Duration {
        master_down_for(
            self.config.sole_backup,
            self.effective_priority(),
            self.master_adver_interval,
        )
    }

    /// Our advert at `priority`, ready for [`super::encode`].
    pub fn advert(&self, priority: u8) -> Advert {
        Advert {
            from_addr: self.config.addr,
            from_name: self.config.name.clone(),
            priority,
            interval: self.config.advert_interval,
        }
    }

    fn on_start(&mut self, now: Instant, out: &mut Vec<Action>) {
        let from = self.state();
        if !matches!(from, State::Initialize | State::Stopped) {
            return;
        }
        self.master_adver_interval = self.config.advert_interval;
        self.master = Believed::Unknown;
        self.phase = Phase::Backup(Backup {
            master_down_at: later(now, self.master_down_interval()),
            master_stopped: false,
            preempting: None,
            yielded: false,
        });
        out.push(Action::Transition {
            from,
            to: State::Backup,
            reason: Reason::Startup,
        });
    }

    fn on_advert(&mut self, now: Instant, advert: Advert, out: &mut Vec<Action>) {
        if advert.from_name == self.me.name && advert.from_addr == self.me.addr {
            return; // Our own advert looped back.
        }
        let ours = self.effective_priority();
        let preempt = self.config.preempt;
        let peer = PeerId {
            name: advert.from_name,
            addr: advert.from_addr,
        };
        match &mut self.phase {
            Phase::Initialize | Phase::Stopped => {}
            Phase::Yielding { .. } => {
                if advert.priority == 0 {
                    // The peer that asked is stopping itself: stay master.
                    self.phase = Phase::Master {
                        advert_at: later(now, self.config.advert_interval),
                    };
                    out.push(Action::SendAdvert { priority: ours });
                    out.push(Action::Resume);
                }
            }
            Phase::Resigning {
                release_at, taker, ..
            } => {
                // The peer advertises as master. It sends that advert just before it adds the
                // VIP and announces it, so let go a moment later: a client's SYN in between
                // still finds an address here instead of being dropped.
                if advert.priority != 0 {
                    let grace = HANDOVER_GRACE.min(self.config.advert_interval);
                    *release_at = (*release_at).min(later(now, grace));
                    *taker = Some(peer);
                }
            }
            Phase::Backup(b) => {
                if advert.priority == 0 {
                    // The master is stopping: take over after Skew_Time only, so the best
                    // backup goes first.
                    let wait = if self.config.sole_backup {
                        Duration::ZERO
                    } else {
                        skew_time(ours, self.master_adver_interval)
                    };
                    b.master_down_at = later(now, wait);
                    b.master_stopped = true;
                    b.yielded = b.preempting.is_some_and(|p| p.asked.is_some());
                    b.preempting = None;
                    self.master = Believed::Unknown;
                } else if !preempt || advert.priority >= ours {
                    self.master_adver_interval = clamp_interval(advert.interval);
                    b.master_down_at = later(
                        now,
                        master_down_for(self.config.sole_backup, ours, self.master_adver_interval),
                    );
                    b.master_stopped = false;
                    b.yielded = false;
                    b.preempting = None;
                    self.master = Believed::Peer(peer);
                } else {
                    // A worse master: let the master-down timer run out (RFC: discard).
                    let p = b.preempting.get_or_insert(Preempting {
                        since: now,
                        last_heard: now,
                        priority: advert.priority,
                        interval: advert.interval,
                        asked: None,
                    });
                    p.last_heard = now;
                    p.priority = advert.priority;
                    p.interval = advert.interval;
                    self.master = Believed::Peer(peer);
                }
            }
            Phase::Master { advert_at } => {
                let peer_wins =
                    (advert.priority, peer.addr, &peer.name) > (ours, self.me.addr, &self.me.name);
                if advert.priority != 0 && peer_wins {
                    // Make-before-break: keep the VIP and keep advertising while connections
                    // wind down, then hand over as a stopping master does.
                    self.master_adver_interval = clamp_interval(advert.interval);
                    self.phase = Phase::Yielding {
                        advert_at: *advert_at,
                        quiet_by: later(now, YIELD_QUIET),
                    };
                    out.push(Action::Quiesce);
                } else {
                    // A stopping peer, or a worse one that thinks it is master: assert
                    // ourselves now rather than at the next interval, so dual masters
                    // resolve within one exchange, and announce the VIP again: the other
                    // may have taken it over (a split brain, a peer that came up without
                    // hearing us), and neighbours follow the last announcement.
                    *advert_at = later(now, self.config.advert_interval);
                    out.push(Action::SendAdvert { priority: ours });
                    out.push(Action::AcquireVip);
                }
            }
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let ours = self.effective_priority();
        let interval = self.config.advert_interval;
        let master_down = self.master_down_interval();
        match &mut self.phase {
            Phase::Initialize | Phase::Stopped => {}
            Phase::Yielding {
                advert_at,
                quiet_by,
            } => {
                if now >= *quiet_by {
                    self.on_quiet(now, out);
                } else if now >= *advert_at {
                    *advert_at = later(now, interval);
                    out.push(Action::SendAdvert { priority: ours });
                }
            }
            Phase::Resigning {
                advert_at,
                release_at,
                then,
                taker,
            } => {
                if now >= *release_at {
                    let (then, taker) = (*then, taker.take());
                    self.release(now, then, taker, out);
                } else if now >= *advert_at {
                    // Repeated, so one lost datagram does not stretch the handover.
                    *advert_at = later(now, interval);
                    out.push(Action::SendAdvert { priority: 0 });
                }
            }
            Phase::Master { advert_at } => {
                if now >= *advert_at {
                    // Keep the cadence, but after a late tick restart from now rather than
                    // sending a burst to catch up.
                    let next = later(*advert_at, interval);
                    *advert_at = if next > now {
                        next
                    } else {
                        later(now, interval)
                    };
                    out.push(Action::SendAdvert { priority: ours });
                }
            }
            Phase::Backup(b) => {
                if now < b.master_down_at {
                    return;
                }
                let reason = match &mut b.preempting {
                    None if b.master_stopped && b.yielded => Some(Reason::Preempt),
                    None if b.master_stopped => Some(Reason::MasterStopped),
                    None => Some(Reason::MasterDown),
                    Some(p) if now >= later(p.last_heard, master_down) => Some(Reason::MasterDown),
                    Some(p) => match (self.config.preempt_delay, p.asked) {
                        (Some(delay), None) if now < later(p.since, delay) => None,
                        // Ask the master to yield: it winds its connections down and hands
                        // the VIP over with a priority-0 advert (make-before-break).
                        (_, None) => {
                            p.asked = Some((now, later(now, interval)));
                            out.push(Action::SendAdvert { priority: ours });
                            None
                        }
                        // It does not yield: take the VIP regardless.
                        (_, Some((asked, _))) if now >= later(asked, YIELD_BOUND) => {
                            Some(Reason::Preempt)
                        }
                        (_, Some((asked, ask_at))) => {
                            if now >= ask_at {
                                // Asked again, so one lost datagram does not cost the bound.
                                p.asked = Some((asked, later(now, interval)));
                                out.push(Action::SendAdvert { priority: ours });
                            }
                            None
                        }
                    },
                };
                if let Some(reason) = reason {
                    self.phase = Phase::Master {
                        advert_at: later(now, interval),
                    };
                    self.master = Believed::Me;
                    out.push(Action::Transition {
                        from: State::Backup,
                        to: State::Master,
                        reason,
                    });
                    out.push(Action::SendAdvert { priority: ours });
                    out.push(Action::AcquireVip);
                }
            }
        }
    }

    fn on_tracking(&mut self, now: Instant, penalty: u8, out: &mut Vec<Action>) {
        let before = self.effective_priority();
        self.penalty = penalty;
        let ours = self.effective_priority();
        if ours == before {
            return;
        }
        match &mut self.phase {
            Phase::Initialize
            | Phase::Stopped
            | Phase::Yielding { .. }
            | Phase::Resigning { .. } => {}
            Phase::Master { advert_at } => {
                // Tell the peer at once so a preempting backup can start taking over.
                *advert_at = later(now, self.config.advert_interval);
                out.push(Action::SendAdvert { priority: ours });
            }
            Phase::Backup(b) => {
                if let Some(p) = b.preempting.filter(|p| p.priority >= ours) {
                    // The master we meant to preempt is no longer worse than us: treat its
                    // last advert as if it had been acceptable all along.
                    self.master_adver_interval = clamp_interval(p.interval);
                    b.master_down_at = later(
                        p.last_heard,
                        master_down_for(self.config.sole_backup, ours, self.master_adver_interval),
                    );
                    b.preempting = None;
                }
            }
        }
    }
}

/// `t + d` without a panic path. Every duration here is bounded (intervals by 65.535 s,
/// delays by an hour), so overflow cannot happen with a real `Instant`; if it somehow did,
/// the deadline fires early rather than the process aborting.
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

/// Learned intervals come from the peer; keep them in the range we could configure, so a
/// buggy peer's 0 ms cannot make us declare it dead instantly.
fn clamp_interval(interval: Duration) -> Duration {
    interval.clamp(MIN_ADVERT_INTERVAL, MAX_ADVERT_INTERVAL)
}

mod handover;

#[cfg(test)]
mod tests;
