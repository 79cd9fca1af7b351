//! High availability for a gateway pair: the pure core of a VRRP-style protocol that moves
//! a floating VIP between two gateways, replacing keepalived.
//!
//! Two parts, neither doing I/O nor reading clocks:
//!
//! * [`Machine`] ([`machine`]): the RFC 5798 (VRRPv3) state machine, Initialize → Backup ⇄
//!   Master (plus Stopped), driven by [`Input`]s stamped with the caller's `now` and answering
//!   with [`Action`]s. The RFC mapping:
//!   * Priority, Skew_Time, Master_Down_Interval, Master_Adver_Interval (learned from the
//!     master's adverts while Backup), Preempt_Mode and the Adver/Master_Down timers are as
//!     in RFC 5798 section 6, in integer microseconds ([`skew_time`],
//!     [`master_down_interval`]).
//!   * Priority 0 adverts ("master stopping") make a backup take over after Skew_Time; a
//!     master answers them at once.
//!   * Elections: higher priority wins, then the higher address ([`std::net::IpAddr`] order,
//!     so any IPv6 sorts above any IPv4; then name, for a misconfigured pair sharing an
//!     address).
//!   * Differences: unicast to a peer instead of multicast; priority 255 (address owner) is
//!     not configurable, both nodes start as Backup; a master answers a worse master's advert
//!     immediately (the RFC discards it) so split-brain heals within one exchange;
//!     keepalived-style tracking penalties and preempt delay.
//! * The wire format ([`advert`]): [`encode`]/[`decode`] adverts authenticated with
//!   HMAC-SHA256 over a shared secret, and [`ReplayGuard`] rejecting replayed counters. RFC
//!   5798 has no authentication; unicast across a network needs it.
//!
//! The socket side (UDP send/receive, counters from the wall clock, timers from
//! [`Machine::next_deadline`]) and the VIP side (adding/removing the address, gratuitous
//! ARP/unsolicited NA, tracking checks) live in the I/O layer, not here. The expected loop:
//! decode → replay check → `Machine::handle(now, Input::Advert(..))`, and on each
//! [`Action::SendAdvert`] encode [`Machine::advert`] with the next counter.

pub mod advert;
pub mod machine;
pub mod node;
pub mod vip;

pub use advert::{
    decode, encode, Advert, AdvertError, AdvertKey, PeerName, PeerNameError, ReplayGuard,
};
pub use machine::{
    master_down_interval, skew_time, Action, Config, ConfigError, Input, Machine, PeerId, Reason,
    State,
};
