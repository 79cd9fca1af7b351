//! Per-request selection state: what NGINX keeps in `ngx_http_upstream_rr_peer_data_t` and
//! `ngx_http_upstream_hash_peer_data_t`, so retries of one request pick other servers.

/// State of one client request across its tries. Create one per request and pass it to
/// every [`super::Pool::select`] of that request.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// Peers of the current set already given to this request (NGINX's `tried` bitmap).
    pub(crate) tried: TriedSet,
    /// Switched to the backup set; like NGINX (`rrp->peers = peers->next`) there is no way
    /// back to the primaries within the same request.
    pub(crate) in_backup: bool,
    /// Position of the hash walk, kept across tries.
    pub(crate) cursor: HashCursor,
}

impl Attempt {
    /// Fresh state for a new request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether this request has fallen back to the backup servers.
    pub fn in_backup(&self) -> bool {
        self.in_backup
    }

    /// Number of peers of the current set already handed out.
    pub fn tried_count(&self) -> usize {
        self.tried.len()
    }

    /// Unsuccessful hash probes so far; past 20 the request uses round-robin, as in NGINX.
    pub fn hash_tries(&self) -> u32 {
        self.cursor.tries
    }
}

/// Growable bitset of peer indices.
#[derive(Debug, Clone, Default)]
pub(crate) struct TriedSet {
    words: Vec<u64>,
}

impl TriedSet {
    pub(crate) fn contains(&self, index: usize) -> bool {
        self.words
            .get(index / 64)
            .is_some_and(|word| word & (1u64 << (index % 64)) != 0)
    }

    pub(crate) fn insert(&mut self, index: usize) {
        let at = index / 64;
        if self.words.len() <= at {
            self.words.resize(at.saturating_add(1), 0);
        }
        if let Some(word) = self.words.get_mut(at) {
            *word |= 1u64 << (index % 64);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.words.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// Where the hash walk of one request stands.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HashCursor {
    /// The ring position has been computed from the key (NGINX does it at request init).
    pub(crate) started: bool,
    /// Consistent hash: index into the ring, advanced by one per miss.
    pub(crate) position: usize,
    /// Plain hash: running sum of the 15-bit crc slices (`hp->hash`).
    pub(crate) hash: u32,
    /// Plain hash: how many times the key has been hashed (`hp->rehash`).
    pub(crate) rehash: u32,
    /// Misses so far (`hp->tries`).
    pub(crate) tries: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_set_grows_and_clears() {
        let mut set = TriedSet::default();
        // (index to insert, expected len after)
        let cases = [(0, 1), (63, 2), (64, 3), (1000, 4), (63, 4)];
        for (index, len) in cases {
            assert!(index == 63 && set.contains(63) || !set.contains(index));
            set.insert(index);
            assert!(set.contains(index));
            assert_eq!(set.len(), len);
        }
        assert!(!set.contains(1));
        assert!(!set.contains(usize::MAX));
        set.clear();
        assert_eq!(set.len(), 0);
        assert!(!set.contains(1000));
    }
}
