//! HTTP/2 upstream connections shared by the requests of one worker thread.
//!
//! Each worker keeps, per server, a short list of multiplexed connections. A request goes on
//! the first one with room (fill-first), and a new one is dialled only when all are full, one
//! dial at a time per worker. A connection has room while it carries fewer streams than the
//! server takes on one connection (its `SETTINGS_MAX_CONCURRENT_STREAMS`, known before the
//! connection is used: `upstream::handshake` waits for it) and fewer than the upstream's
//! `max_streams`, when set. Filling the first connections first lets the extra ones a burst
//! opened fall idle; an extra connection with no stream for `keepalive_timeout` is closed, by
//! the next checkout on its worker or by the gateway's sweep each second. The first one stays
//! (its pings keep it alive), so a quiet server costs one connection per worker.
//!
//! A server that takes as many streams as come (the `bench/proxies.sh` origin takes 1,024)
//! keeps one connection per worker: the benchmark measured extra connections costing req/s
//! there.
//!
//! The choice (`pick`, `keep`) is pure and tested with simulated time; `MuxSlot` applies it
//! under the slot's lock and dials.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{lock, Checkout, ConnectError, Http2Sender, Sender, Transport};

/// One worker's HTTP/2 connections to one server.
#[derive(Default)]
pub(super) struct MuxSlot {
    conns: Mutex<Vec<Shared>>,
    /// Held while dialling, so requests that find every connection full wait for one dial.
    dialling: tokio::sync::Mutex<()>,
}

struct Shared {
    sender: Http2Sender,
    /// The cache generation it was dialled in; an older one is not used after a reload.
    generation: u64,
    serial: u64,
    streams: Arc<AtomicUsize>,
    /// When a stream was last opened on it.
    last_used: Instant,
}

/// One stream in flight on a shared connection: the connection's count drops with it.
pub struct StreamCount(Arc<AtomicUsize>);

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Numbers shared connections, so a failed one is told from its replacement.
static SERIALS: AtomicU64 = AtomicU64::new(1);

/// What the choice sees of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Load {
    /// Open, and dialled in the current generation.
    usable: bool,
    streams: usize,
    /// Streams it takes: the server's limit, or the upstream's `max_streams` if lower.
    room: usize,
    idle_for: Duration,
}

/// The connection the next stream goes on: the first usable one with room. `None`: dial.
fn pick(loads: impl IntoIterator<Item = Load>) -> Option<usize> {
    loads
        .into_iter()
        .position(|l| l.usable && l.streams < l.room)
}

/// Whether the connection at `index` (among those kept so far) stays in the list: it is
/// usable, and it is the first one, or it carries a stream, or it was used within
/// `idle_timeout`.
fn keep(index: usize, load: Load, idle_timeout: Duration) -> bool {
    load.usable && (index == 0 || load.streams > 0 || load.idle_for < idle_timeout)
}

impl Shared {
    fn load(&self, now: Instant, generation: u64, room: usize) -> Load {
        Load {
            usable: self.generation == generation && !self.sender.is_closed(),
            streams: self.streams.load(Ordering::Relaxed),
            room,
            idle_for: now.saturating_duration_since(self.last_used),
        }
    }
}

/// Drops the connections `keep` does not keep; dropping the last sender closes one. `keep`
/// does not look at `room`, which takes the connection's lock in `h2`: it is read in the
/// `pick` pass only, which stops at the first connection with room.
fn retain_kept(conns: &mut Vec<Shared>, now: Instant, generation: u64, idle_timeout: Duration) {
    let mut kept = 0;
    conns.retain(|c| {
        let keep = keep(kept, c.load(now, generation, 0), idle_timeout);
        kept += usize::from(keep);
        keep
    });
}

impl MuxSlot {
    /// A stream on a connection with room, or on a new one.
    pub(super) async fn checkout(
        &self,
        transport: &Transport,
        addr: std::net::SocketAddr,
        generation: u64,
    ) -> Result<Checkout, ConnectError> {
        if let Some(checkout) = self.take(transport, generation) {
            return Ok(checkout);
        }
        let _dialling = self.dialling.lock().await;
        if let Some(checkout) = self.take(transport, generation) {
            return Ok(checkout);
        }
        // Boxed: the dial (TCP, TLS, the h2 handshake) is a large future and the cold path;
        // inline, every checkout's future would carry its size.
        let sender = Box::pin(transport.connect_http2(addr)).await?;
        Ok(self.adopt(sender, generation))
    }

    /// Adds a new connection to the list, with a first stream on it for the caller.
    pub(super) fn adopt(&self, sender: Http2Sender, generation: u64) -> Checkout {
        let serial = SERIALS.fetch_add(1, Ordering::Relaxed);
        let streams = Arc::new(AtomicUsize::new(1));
        lock(&self.conns).push(Shared {
            sender: sender.clone(),
            generation,
            serial,
            streams: streams.clone(),
            last_used: Instant::now(),
        });
        Checkout {
            sender: Sender::Http2(sender),
            reused: false,
            generation,
            serial,
            stream: Some(StreamCount(streams)),
        }
    }

    /// Drops the connections not worth keeping, then opens a stream on the one `pick` names.
    fn take(&self, transport: &Transport, generation: u64) -> Option<Checkout> {
        let now = Instant::now();
        let mut conns = lock(&self.conns);
        retain_kept(&mut conns, now, generation, transport.keepalive_timeout);
        let room = |c: &Shared| c.sender.max_streams().min(transport.max_streams);
        let chosen = pick(conns.iter().map(|c| c.load(now, generation, room(c))))?;
        let c = &mut conns[chosen];
        c.last_used = now;
        c.streams.fetch_add(1, Ordering::Relaxed);
        Some(Checkout {
            sender: Sender::Http2(c.sender.clone()),
            reused: true,
            generation,
            serial: c.serial,
            stream: Some(StreamCount(c.streams.clone())),
        })
    }

    /// Closes the connections `keep` lets go (extra ones idle past `idle_timeout`, closed or
    /// outdated ones) without waiting for a request to find them: the gateway runs this
    /// every second (`server::close_idle_upstream_connections`).
    pub(super) fn close_idle(&self, idle_timeout: Duration, generation: u64) {
        retain_kept(
            &mut lock(&self.conns),
            Instant::now(),
            generation,
            idle_timeout,
        );
    }

    /// Forgets the connection numbered `serial`, if this slot holds it.
    pub(super) fn forget(&self, serial: u64) {
        lock(&self.conns).retain(|c| c.serial != serial);
    }

    /// Closes every connection (a reload).
    pub(super) fn clear(&self) {
        lock(&self.conns).clear();
    }

    /// Open connections.
    pub(super) fn len(&self) -> usize {
        lock(&self.conns).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    fn load(streams: usize, idle_secs: u64) -> Load {
        Load {
            usable: true,
            streams,
            room: 100,
            idle_for: Duration::from_secs(idle_secs),
        }
    }

    #[test]
    fn streams_fill_the_first_connection_with_room() {
        assert_eq!(pick([]), None);
        assert_eq!(pick([load(0, 0)]), Some(0));
        assert_eq!(pick([load(99, 0), load(0, 0)]), Some(0));
        assert_eq!(pick([load(100, 0), load(3, 0)]), Some(1));
        assert_eq!(pick([load(100, 0), load(100, 0)]), None);
        let closed = Load {
            usable: false,
            ..load(0, 0)
        };
        assert_eq!(pick([closed, load(100, 0)]), None);
        assert_eq!(pick([closed, load(5, 0)]), Some(1));
    }

    #[test]
    fn each_connection_has_the_room_its_server_gave_it() {
        // A server that lowered its limit on the first connection (a later SETTINGS) sends
        // streams to the second; one that raised it takes more on the first.
        let lowered = Load {
            room: 10,
            ..load(10, 0)
        };
        assert_eq!(pick([lowered, load(50, 0)]), Some(1));
        let raised = Load {
            room: 1_000,
            ..load(100, 0)
        };
        assert_eq!(pick([raised, load(0, 0)]), Some(0));
        // A server that takes no stream at the moment (limit 0) gets none.
        let none = Load {
            room: 0,
            ..load(0, 0)
        };
        assert_eq!(pick([none]), None);
    }

    #[test]
    fn extra_connections_close_after_idling_the_first_never_does() {
        // The first stays however long it idles.
        assert!(keep(0, load(0, 3_600), IDLE));
        // An extra one stays while it carries streams or was used lately.
        assert!(keep(1, load(1, 3_600), IDLE));
        assert!(keep(1, load(0, 59), IDLE));
        assert!(!keep(1, load(0, 60), IDLE));
        // A closed or outdated one goes, whatever its place.
        let closed = Load {
            usable: false,
            ..load(7, 0)
        };
        assert!(!keep(0, closed, IDLE));
    }

    #[test]
    fn a_burst_spreads_then_shrinks_back_to_one_connection() {
        // Simulated: 250 streams at once with room for 100 per connection need 3
        // connections; once the burst is over and the idle timeout passed, one is left.
        let mut conns: Vec<Load> = Vec::new();
        for _ in 0..250 {
            match pick(conns.iter().copied()) {
                Some(i) => conns[i].streams += 1,
                None => conns.push(load(1, 0)),
            }
        }
        assert_eq!(
            conns.iter().map(|c| c.streams).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        for c in &mut conns {
            *c = load(0, 61);
        }
        let mut kept = 0;
        conns.retain(|c| {
            let k = keep(kept, *c, IDLE);
            kept += usize::from(k);
            k
        });
        assert_eq!(conns.len(), 1);
    }
}
