//! NGINX's `hash $key` and `hash $key consistent` (`ngx_http_upstream_hash_module.c`).
//!
//! Both use NGINX's exact hash functions so that a key lands on the same server as it would
//! behind NGINX with the same server names and weights:
//!
//! * plain: `w = Σ ((crc32([rehash] key) >> 16) & 0x7fff) mod total_weight`, walked over the
//!   weights (Cache::Memcached compatible); each miss re-hashes with a decimal prefix.
//! * consistent: a ketama ring of `160 * weight` points per server, point `j` being
//!   `crc32(host \0 port prev_hash_le)` (Cache::Memcached::Fast compatible); the request
//!   starts at the first point `>= crc32(key)` and walks clockwise past unusable servers.
//!
//! After more than 20 misses both give up and fall back to round-robin, which also reaches
//! the backup servers.

use std::time::Instant;

use super::attempt::{HashCursor, TriedSet};
use super::peer::Peer;
use super::round_robin::smooth_pick;

/// Misses after which NGINX stops hashing and uses round-robin (`hp->tries > 20`).
pub(crate) const MAX_HASH_TRIES: u32 = 20;
/// Ring points per unit of weight (NGINX: `peer->weight * 160`).
pub(crate) const POINTS_PER_WEIGHT: u32 = 160;
/// Weight above which a server gets no more ring points, so a typo like `weight=4000000000`
/// cannot allocate gigabytes; round-robin and least-conn still use the full weight.
pub(crate) const MAX_RING_WEIGHT: u32 = 1000;

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
}

/// Streaming CRC-32 (IEEE, as `ngx_crc32_*`); streaming matters because ring points extend
/// a shared `host\0port` prefix state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crc32(u32);

impl Crc32 {
    pub(crate) const fn new() -> Self {
        Self(0xFFFF_FFFF)
    }

    #[must_use]
    pub(crate) fn update(mut self, bytes: &[u8]) -> Self {
        for &byte in bytes {
            // A u8 index into a 256-entry table cannot be out of bounds.
            self.0 = CRC_TABLE[usize::from((self.0 as u8) ^ byte)] ^ (self.0 >> 8);
        }
        self
    }

    pub(crate) fn finish(self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
    }
}

pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    Crc32::new().update(bytes).finish()
}

/// One ring point: a hash and the server group (same key) it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Point {
    pub(crate) hash: u32,
    pub(crate) group: usize,
}

/// Splits a server key the way NGINX does before hashing: `unix:` paths have no port,
/// otherwise a trailing `:digits` is the port.
pub(crate) fn split_server(key: &str) -> (&[u8], &[u8]) {
    let bytes = key.as_bytes();
    if let (Some(scheme), Some(path)) = (bytes.get(..5), bytes.get(5..)) {
        if scheme.eq_ignore_ascii_case(b"unix:") {
            return (path, &[]);
        }
    }
    if let Some(colon) = bytes.iter().rposition(|b| !b.is_ascii_digit()) {
        if bytes.get(colon) == Some(&b':') {
            if let (Some(host), Some(port)) = (bytes.get(..colon), bytes.get(colon + 1..)) {
                return (host, port);
            }
        }
    }
    (bytes, &[])
}

/// Builds the sorted, de-duplicated ring for the primary peers.
pub(crate) fn build_ring(peers: &[Peer]) -> Vec<Point> {
    let mut points = Vec::new();
    for peer in peers {
        let (host, port) = split_server(&peer.key);
        let base = Crc32::new().update(host).update(&[0]).update(port);
        let count = peer.weight.min(MAX_RING_WEIGHT) * POINTS_PER_WEIGHT;
        let mut prev: u32 = 0;
        for _ in 0..count {
            let hash = base.update(&prev.to_le_bytes()).finish();
            points.push(Point {
                hash,
                group: peer.group,
            });
            prev = hash;
        }
    }
    // Stable sort: on a hash collision the earlier server keeps the point.
    points.sort_by_key(|point| point.hash);
    points.dedup_by_key(|point| point.hash);
    points
}

/// Index of the first point with `hash >= key_hash` (may equal `len`, which wraps to 0).
pub(crate) fn find_point(ring: &[Point], key_hash: u32) -> usize {
    ring.partition_point(|point| point.hash < key_hash)
}

/// `hash $key consistent`: walks the ring from the key's point; `None` means fall back.
pub(crate) fn pick_consistent(
    peers: &mut [Peer],
    ring: &[Point],
    cursor: &mut HashCursor,
    tried: &TriedSet,
    now: Instant,
    key: &[u8],
) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    if !cursor.started {
        cursor.started = true;
        cursor.position = find_point(ring, crc32(key));
    }
    loop {
        let group = ring.get(cursor.position % ring.len())?.group;
        // Several peers may share a key (one name, several addresses): NGINX round-robins
        // among those.
        let found = smooth_pick(peers, |index, peer| {
            !tried.contains(index) && peer.is_available(now) && peer.group == group
        });
        if found.is_some() {
            return found;
        }
        cursor.position = cursor.position.wrapping_add(1);
        cursor.tries = cursor.tries.saturating_add(1);
        if cursor.tries > MAX_HASH_TRIES {
            return None;
        }
    }
}

/// `hash $key` (not consistent): re-hashes on each miss; `None` means fall back.
pub(crate) fn pick_plain(
    peers: &[Peer],
    cursor: &mut HashCursor,
    tried: &TriedSet,
    now: Instant,
    key: &[u8],
) -> Option<usize> {
    let total = peers
        .iter()
        .fold(0u64, |sum, peer| sum.saturating_add(u64::from(peer.weight)));
    if total == 0 {
        return None;
    }
    loop {
        let mut crc = Crc32::new();
        if cursor.rehash > 0 {
            crc = crc.update(cursor.rehash.to_string().as_bytes());
        }
        let slice = (crc.update(key).finish() >> 16) & 0x7fff;
        cursor.hash = cursor.hash.wrapping_add(slice);
        cursor.rehash = cursor.rehash.wrapping_add(1);

        let mut w = u64::from(cursor.hash) % total;
        let index = peers.iter().position(|peer| {
            let weight = u64::from(peer.weight);
            if w < weight {
                true
            } else {
                w -= weight;
                false
            }
        });
        if let Some(index) = index {
            let usable = peers
                .get(index)
                .is_some_and(|peer| !tried.contains(index) && peer.is_available(now));
            if usable {
                return Some(index);
            }
        }
        cursor.tries = cursor.tries.saturating_add(1);
        if cursor.tries > MAX_HASH_TRIES {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::testutil::{t0, weighted};
    use super::super::{Algorithm, Attempt, Outcome, Pool, ServerSpec};
    use super::*;

    const CONSISTENT: Algorithm = Algorithm::Hash { consistent: true };
    const PLAIN: Algorithm = Algorithm::Hash { consistent: false };

    fn five() -> Vec<ServerSpec> {
        (0..5)
            .map(|n| ServerSpec::new(format!("10.0.2.1{n}:3002")))
            .collect()
    }

    /// Where each of `n` keys goes on a first try (released at once).
    fn mapping(pool: &mut Pool, n: usize) -> Vec<String> {
        let t0 = t0();
        (0..n)
            .map(|i| {
                let key = format!("user-{i}");
                let id = pool
                    .select(t0, &mut Attempt::new(), Some(key.as_bytes()))
                    .unwrap();
                pool.release(id, t0, Outcome::Success);
                pool.key(id).unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn crc32_matches_the_standard_check_values() {
        let cases: [(&[u8], u32); 4] = [
            (b"", 0),
            (b"123456789", 0xCBF4_3926),
            (b"a", 0xE8B7_BE43),
            (b"The quick brown fox jumps over the lazy dog", 0x414F_A339),
        ];
        for (input, expected) in cases {
            assert_eq!(crc32(input), expected, "{input:?}");
        }
        // Streaming in pieces equals one shot.
        let split = Crc32::new().update(b"1234").update(b"56789").finish();
        assert_eq!(split, 0xCBF4_3926);
    }

    #[test]
    fn server_keys_split_like_nginx() {
        let cases: [(&str, &str, &str); 8] = [
            ("10.0.2.10:3002", "10.0.2.10", "3002"),
            ("backend.local:80", "backend.local", "80"),
            ("backend.local", "backend.local", ""),
            ("unix:/run/app.sock", "/run/app.sock", ""),
            ("UNIX:/run/app.sock", "/run/app.sock", ""),
            ("[::1]:8080", "[::1]", "8080"),
            ("host:", "host", ""),
            ("12345", "12345", ""),
        ];
        for (key, host, port) in cases {
            let (h, p) = split_server(key);
            assert_eq!((h, p), (host.as_bytes(), port.as_bytes()), "{key}");
        }
    }

    #[test]
    fn ring_has_160_points_per_weight_and_is_sorted() {
        let pool = Pool::new(CONSISTENT, weighted(&[("a:1", 1), ("b:1", 2), ("c:1", 3)]));
        let ring = pool.ring();
        // Collisions of 32-bit hashes among 960 points are possible but vanishingly rare.
        assert!(ring.len() <= 960 && ring.len() >= 955, "{}", ring.len());
        assert!(ring.windows(2).all(|w| w[0].hash < w[1].hash));
        let mut per_group = HashMap::new();
        for point in ring {
            *per_group.entry(point.group).or_insert(0) += 1;
        }
        assert!((159..=160).contains(&per_group[&0]));
        assert!((318..=320).contains(&per_group[&1]));
        assert!((478..=480).contains(&per_group[&2]));
    }

    #[test]
    fn ring_is_capped_for_absurd_weights() {
        let pool = Pool::new(CONSISTENT, weighted(&[("a:1", u32::MAX)]));
        assert!(pool.ring().len() <= (MAX_RING_WEIGHT * POINTS_PER_WEIGHT) as usize);
    }

    #[test]
    fn same_key_same_peer() {
        for algorithm in [CONSISTENT, PLAIN] {
            let mut pool = Pool::new(algorithm, five());
            let first = mapping(&mut pool, 500);
            let second = mapping(&mut pool, 500);
            assert_eq!(first, second, "{algorithm:?}");
            // A fresh pool with the same servers agrees: the mapping is a pure function.
            let mut fresh = Pool::new(algorithm, five());
            assert_eq!(first, mapping(&mut fresh, 500), "{algorithm:?}");
        }
    }

    #[test]
    fn keys_spread_roughly_by_weight() {
        for algorithm in [CONSISTENT, PLAIN] {
            let specs = weighted(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 2)]);
            let mut pool = Pool::new(algorithm, specs);
            let keys = mapping(&mut pool, 4000);
            let heavy = keys.iter().filter(|k| *k == "10.0.0.3:80").count();
            let share = heavy as f64 / 4000.0;
            assert!((0.4..0.6).contains(&share), "{algorithm:?}: {share}");
        }
    }

    #[test]
    fn removing_one_of_five_moves_only_its_keys() {
        let mut before = Pool::new(CONSISTENT, five());
        let old = mapping(&mut before, 10_000);
        let removed = "10.0.2.12:3002";
        let remaining: Vec<ServerSpec> = five().into_iter().filter(|s| s.key != removed).collect();
        let mut after = Pool::reloaded(&before, CONSISTENT, remaining);
        let new = mapping(&mut after, 10_000);
        let mut moved = 0;
        for (o, n) in old.iter().zip(&new) {
            if o == removed {
                assert_ne!(n, removed);
                moved += 1;
            } else {
                assert_eq!(o, n, "a key of a surviving server moved");
            }
        }
        let share = f64::from(moved) / 10_000.0;
        assert!((0.1..0.3).contains(&share), "moved {share}");
    }

    #[test]
    fn down_peer_keys_move_and_come_back() {
        for algorithm in [CONSISTENT, PLAIN] {
            let mut pool = Pool::new(algorithm, five());
            let old = mapping(&mut pool, 2000);
            let sick = "10.0.2.13:3002";
            assert_eq!(pool.set_healthy(sick, false), 1);
            let during = mapping(&mut pool, 2000);
            for (o, d) in old.iter().zip(&during) {
                if o == sick {
                    assert_ne!(d, sick, "{algorithm:?}");
                } else {
                    assert_eq!(o, d, "{algorithm:?}: unrelated key moved");
                }
            }
            assert!(old.iter().any(|k| k == sick));
            pool.set_healthy(sick, true);
            assert_eq!(mapping(&mut pool, 2000), old, "{algorithm:?}");
        }
    }

    #[test]
    fn retries_walk_to_other_peers() {
        let t0 = t0();
        for algorithm in [CONSISTENT, PLAIN] {
            let mut pool = Pool::new(algorithm, five());
            let mut attempt = Attempt::new();
            let mut seen = Vec::new();
            for _ in 0..5 {
                let id = pool.select(t0, &mut attempt, Some(b"retry-me")).unwrap();
                pool.release(id, t0, Outcome::Failure);
                seen.push(pool.key(id).unwrap().to_owned());
            }
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 5, "{algorithm:?}: every try on a new server");
            assert_eq!(pool.select(t0, &mut attempt, Some(b"retry-me")), None);
        }
    }

    #[test]
    fn falls_back_to_round_robin_and_backups_after_20_misses() {
        let t0 = t0();
        for algorithm in [CONSISTENT, PLAIN] {
            let mut specs = five();
            specs.push(ServerSpec::new("10.0.9.1:3002").with_backup(true));
            let mut pool = Pool::new(algorithm, specs);
            for n in 0..5 {
                pool.set_healthy(&format!("10.0.2.1{n}:3002"), false);
            }
            let mut attempt = Attempt::new();
            let id = pool.select(t0, &mut attempt, Some(b"k")).unwrap();
            assert!(id.is_backup(), "{algorithm:?}");
            assert_eq!(attempt.hash_tries(), MAX_HASH_TRIES + 1, "{algorithm:?}");
            assert!(attempt.in_backup());
        }
    }

    #[test]
    fn all_primaries_out_without_backups_is_none() {
        let t0 = t0();
        for algorithm in [CONSISTENT, PLAIN] {
            let mut pool = Pool::new(algorithm, five());
            for n in 0..5 {
                pool.set_down(&format!("10.0.2.1{n}:3002"), true);
            }
            assert_eq!(pool.select(t0, &mut Attempt::new(), Some(b"k")), None);
        }
    }

    #[test]
    fn empty_or_missing_key_uses_round_robin() {
        for algorithm in [CONSISTENT, PLAIN] {
            let mut pool = Pool::new(algorithm, weighted(&[("a", 1), ("b", 1), ("c", 1)]));
            let t0 = t0();
            let mut seq = String::new();
            for key in [None, Some(&b""[..]), None, Some(&b""[..]), None, None] {
                let id = pool.select(t0, &mut Attempt::new(), key).unwrap();
                pool.release(id, t0, Outcome::Success);
                seq.push_str(pool.key(id).unwrap());
            }
            assert_eq!(seq, "abcabc", "{algorithm:?}");
        }
    }

    #[test]
    fn plain_hash_matches_nginx_formula_for_first_try() {
        // Independent recomputation of NGINX's first-iteration formula for equal weights.
        let mut pool = Pool::new(PLAIN, five());
        let keys = mapping(&mut pool, 200);
        for (i, got) in keys.iter().enumerate() {
            let key = format!("user-{i}");
            let slice = (crc32(key.as_bytes()) >> 16) & 0x7fff;
            let expected = format!("10.0.2.1{}:3002", slice % 5);
            assert_eq!(got, &expected, "{key}");
        }
    }
}
