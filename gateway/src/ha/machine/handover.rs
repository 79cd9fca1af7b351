//! Planned moves of the VIP, make-before-break: a stopping master resigns (priority-0 adverts,
//! the VIP kept until the peer has it), and a master asked by a better peer first winds its
//! connections down (`Quiesce` ... `Quiet`) and then resigns the same way, ending as backup.

use std::time::Instant;

use super::{later, Action, Backup, Believed, Machine, PeerId, Phase, Reason, State, Then};

impl Machine {
    pub(super) fn on_quiet(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Phase::Yielding { .. } = self.phase {
            self.resign(now, Then::Backup, out);
        }
    }

    pub(super) fn on_shutdown(&mut self, now: Instant, out: &mut Vec<Action>) {
        let from = self.state();
        match &mut self.phase {
            Phase::Stopped => {}
            Phase::Resigning { then, .. } => *then = Then::Stop,
            Phase::Master { .. } | Phase::Yielding { .. } => self.resign(now, Then::Stop, out),
            Phase::Initialize | Phase::Backup(_) => {
                out.push(Action::Transition {
                    from,
                    to: State::Stopped,
                    reason: Reason::Shutdown,
                });
                self.phase = Phase::Stopped;
                self.master = Believed::Unknown;
            }
        }
    }

    /// Start handing the VIP over: priority-0 adverts, VIP kept until the peer has it.
    pub(super) fn resign(&mut self, now: Instant, then: Then, out: &mut Vec<Action>) {
        self.phase = Phase::Resigning {
            advert_at: later(now, self.config.advert_interval),
            release_at: later(now, self.handover_bound()),
            then,
            taker: None,
        };
        out.push(Action::StopAnnouncing);
        out.push(Action::SendAdvert { priority: 0 });
    }

    /// The end of a handover: the VIP goes; we stop, or stay up as backup.
    pub(super) fn release(
        &mut self,
        now: Instant,
        then: Then,
        taker: Option<PeerId>,
        out: &mut Vec<Action>,
    ) {
        let (to, reason) = match then {
            Then::Stop => (State::Stopped, Reason::Shutdown),
            Then::Backup => (State::Backup, Reason::PeerWins),
        };
        out.push(Action::Transition {
            from: State::Master,
            to,
            reason,
        });
        out.push(Action::ReleaseVip);
        self.master = match (then, taker) {
            (Then::Backup, Some(peer)) => Believed::Peer(peer),
            _ => Believed::Unknown,
        };
        self.phase = match then {
            Then::Stop => Phase::Stopped,
            Then::Backup => {
                out.push(Action::Resume);
                Phase::Backup(Backup {
                    master_down_at: later(now, self.master_down_interval()),
                    master_stopped: false,
                    preempting: None,
                    yielded: false,
                })
            }
        };
    }
}
