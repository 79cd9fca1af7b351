//! The authenticated advertisement wire format, and replay protection. Pure: bytes in, bytes
//! out.
//!
//! VRRPv3 adverts carry no authentication (RFC 5798 removed it), which is fine on a trusted
//! L2 segment but not for unicast peers across a routed network: anyone who can reach the
//! port could claim priority 254 and steal the VIP. So every advert carries an HMAC-SHA256
//! tag keyed with a secret shared by the pair, and a counter that must strictly increase per
//! sender ([`ReplayGuard`]), so a captured advert cannot be played back later.
//!
//! Layout (all integers big-endian), [`MIN_LEN`]..=[`MAX_LEN`] bytes:
//!
//! | bytes  | field                                                             |
//! |--------|-------------------------------------------------------------------|
//! | 4      | magic `ISHA`                                                      |
//! | 1      | version, [`VERSION`]                                              |
//! | 1      | sender name length `n`, 1..=[`MAX_NAME_LEN`]                      |
//! | n      | sender name, printable ASCII without spaces                       |
//! | 1      | address family: 4 or 6                                            |
//! | 4/16   | sender address                                                    |
//! | 1      | priority (0 = "master is stopping")                               |
//! | 2      | advert interval in milliseconds, nonzero                          |
//! | 8      | counter                                                           |
//! | 32     | HMAC-SHA256 over every byte before it                             |
//!
//! [`decode`] checks length bounds, magic and version first (cheap, and gives a useful error
//! for a stray packet or a version skew), then the tag, and parses the fields only once the
//! bytes are known to come from a holder of the secret.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aws_lc_rs::hmac;

/// First bytes of every advert, so stray traffic on the port is told apart from a bad key.
pub const MAGIC: [u8; 4] = *b"ISHA";
/// Wire format version; bumped on any layout change so mixed versions refuse each other.
pub const VERSION: u8 = 1;
/// Length of the HMAC-SHA256 tag that ends every advert.
pub const TAG_LEN: usize = 32;
/// Longest sender name, in bytes; keeps adverts small and names loggable.
pub const MAX_NAME_LEN: usize = 64;
/// Shortest accepted shared secret (the config's own minimum).
pub use gateway_config::MIN_SECRET_LEN;
/// Shortest possible advert: 1-byte name and an IPv4 address.
pub const MIN_LEN: usize = MAGIC.len() + 1 + 1 + 1 + 1 + 4 + 1 + 2 + 8 + TAG_LEN;
/// Longest possible advert: 64-byte name and an IPv6 address.
pub const MAX_LEN: usize = MAGIC.len() + 1 + 1 + MAX_NAME_LEN + 1 + 16 + 1 + 2 + 8 + TAG_LEN;
/// How many senders a [`ReplayGuard`] remembers by default; a pair needs one.
pub const DEFAULT_REPLAY_SENDERS: usize = 64;

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// A gateway's name as carried in adverts: 1..=64 bytes of printable ASCII without spaces.
///
/// Validated once so that encoding cannot fail and names are safe to put in logs and metric
/// labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerName(String);

/// Why a string is not a valid [`PeerName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerNameError {
    /// Adverts need a sender name.
    #[error("peer name is empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`] bytes.
    #[error("peer name is {0} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    /// Contains a space, control character or non-ASCII character.
    #[error("peer name may contain only printable ASCII characters without spaces")]
    BadChar,
}

impl PeerName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, PeerNameError> {
        Self::validate(name.as_bytes())?;
        Ok(Self(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn validate(bytes: &[u8]) -> Result<(), PeerNameError> {
        if bytes.is_empty() {
            return Err(PeerNameError::Empty);
        }
        if bytes.len() > MAX_NAME_LEN {
            return Err(PeerNameError::TooLong(bytes.len()));
        }
        if !bytes.iter().all(u8::is_ascii_graphic) {
            return Err(PeerNameError::BadChar);
        }
        Ok(())
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, AdvertError> {
        Self::validate(bytes).map_err(|_| AdvertError::Malformed("sender name"))?;
        // All-ASCII was just checked, so this conversion cannot fail; map it anyway.
        let name = std::str::from_utf8(bytes).map_err(|_| AdvertError::Malformed("sender name"))?;
        Ok(Self(name.to_owned()))
    }
}

impl TryFrom<&str> for PeerName {
    type Error = PeerNameError;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl std::str::FromStr for PeerName {
    type Err = PeerNameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::new(name)
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One advertisement: "I am master at this priority and advertise this often".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Sender's primary address; breaks priority ties (higher wins, as in RFC 5798).
    pub from_addr: IpAddr,
    /// Sender's name; keys replay protection and shows up in logs.
    pub from_name: PeerName,
    /// Sender's effective priority; 0 means "I am stopping, take over now".
    pub priority: u8,
    /// Sender's advert interval; backups derive Master_Down_Interval from it. Carried in
    /// whole milliseconds: [`encode`] truncates sub-millisecond parts and clamps to
    /// 1..=65535 ms.
    pub interval: Duration,
}

/// The shared secret, prepared for HMAC-SHA256. Build it once at startup.
pub struct AdvertKey(hmac::Key);

impl AdvertKey {
    /// Refuses secrets shorter than [`MIN_SECRET_LEN`] bytes. The secret should be random
    /// (e.g. 32 bytes from a CSPRNG), not a password.
    pub fn new(secret: &[u8]) -> Result<Self, AdvertError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(AdvertError::WeakSecret { len: secret.len() });
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }
}

impl fmt::Debug for AdvertKey {
    /// Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdvertKey(..)")
    }
}

/// Why an advert was refused. All of these mean "drop the packet"; the variants exist so the
/// I/O layer can log and count them separately (a bad tag is an attack or a key mismatch, a
/// bad version is an upgrade in progress).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    /// Shorter than [`MIN_LEN`].
    #[error("advert too short: {len} bytes")]
    TooShort { len: usize },
    /// Longer than [`MAX_LEN`].
    #[error("advert too long: {len} bytes")]
    TooLong { len: usize },
    /// Does not start with [`MAGIC`]: not one of our adverts at all.
    #[error("not an advert (bad magic)")]
    BadMagic,
    /// A different wire format version.
    #[error("unsupported advert version {0}")]
    UnsupportedVersion(u8),
    /// The HMAC does not match: wrong secret, corruption or forgery.
    #[error("advert authentication failed")]
    BadTag,
    /// Authenticated but structurally invalid (a bug or incompatible peer).
    #[error("malformed advert: {0}")]
    Malformed(&'static str),
    /// Counter not above the highest already accepted from this sender.
    #[error("replayed advert: counter {counter} is not above {high_water}")]
    Replayed { counter: u64, high_water: u64 },
    /// The shared secret is shorter than [`MIN_SECRET_LEN`].
    #[error("advert secret is {len} bytes; at least {MIN_SECRET_LEN} are required")]
    WeakSecret { len: usize },
}

/// Serializes and signs `advert`. `counter` must strictly increase per sender across the
/// sender's whole life, restarts included (unix time in microseconds does).
pub fn encode(advert: &Advert, counter: u64, key: &AdvertKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    let name = advert.from_name.as_str().as_bytes();
    // PeerName guarantees 1..=MAX_NAME_LEN (64) bytes, so the length fits a u8.
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name);
    match advert.from_addr {
        IpAddr::V4(a) => {
            out.push(FAMILY_V4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(FAMILY_V6);
            out.extend_from_slice(&a.octets());
        }
    }
    out.push(advert.priority);
    let interval_ms = advert.interval.as_millis().clamp(1, u128::from(u16::MAX));
    out.extend_from_slice(&u16::try_from(interval_ms).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    let tag = hmac::sign(&key.0, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

/// Authenticates and parses one advert, returning it with its counter. Never panics: any
/// input of any length is either a valid advert signed with `key` or an error. The caller
/// must still pass the counter through a [`ReplayGuard`].
pub fn decode(bytes: &[u8], key: &AdvertKey) -> Result<(Advert, u64), AdvertError> {
    let len = bytes.len();
    if len < MIN_LEN {
        return Err(AdvertError::TooShort { len });
    }
    if len > MAX_LEN {
        return Err(AdvertError::TooLong { len });
    }
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return Err(AdvertError::BadMagic);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(AdvertError::UnsupportedVersion(version));
    }
    let (body, tag) = bytes
        .split_at_checked(len - TAG_LEN)
        .ok_or(AdvertError::TooShort { len })?;
    hmac::verify(&key.0, body, tag).map_err(|_| AdvertError::BadTag)?;

    // Authenticated: parse the rest of the body.
    let mut r = Reader(body.get(MAGIC.len() + 1..).unwrap_or_default());
    let name_len = usize::from(r.u8()?);
    let from_name = PeerName::from_wire(r.take(name_len)?)?;
    let from_addr = match r.u8()? {
        FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
        FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
        _ => return Err(AdvertError::Malformed("address family")),
    };
    let priority = r.u8()?;
    let interval_ms = u16::from_be_bytes(r.array::<2>()?);
    if interval_ms == 0 {
        return Err(AdvertError::Malformed("zero advert interval"));
    }
    let counter = u64::from_be_bytes(r.array::<8>()?);
    if !r.0.is_empty() {
        return Err(AdvertError::Malformed("trailing bytes"));
    }
    let advert = Advert {
        from_addr,
        from_name,
        priority,
        interval: Duration::from_millis(u64::from(interval_ms)),
    };
    Ok((advert, counter))
}

/// Bounds-checked cursor; running out of bytes is a malformed advert, never a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AdvertError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(AdvertError::Malformed("truncated field"))?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AdvertError> {
        <[u8; N]>::try_from(self.take(N)?).map_err(|_| AdvertError::Malformed("truncated field"))
    }

    fn u8(&mut self) -> Result<u8, AdvertError> {
        Ok(self.array::<1>()?[0])
    }
}

/// Per-sender replay protection: accepts a counter only if it is strictly above the highest
/// one already accepted from that sender.
///
/// Memory is bounded: at most `capacity` senders are remembered, and a new sender evicts the
/// one that was accepted least recently. Only authenticated adverts reach the guard, so only
/// holders of the secret can occupy entries; a pair uses one. State is in memory only, so
/// after our own restart the first advert from each sender is accepted whatever its counter
/// (the peer's counters are unix-time based, so a replay from before our restart is also
/// detectable by the I/O layer comparing against its own clock if it wants to).
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    entries: Vec<ReplayEntry>,
    capacity: usize,
    /// Logical clock for least-recently-accepted eviction.
    clock: u64,
}

#[derive(Debug, Clone)]
struct ReplayEntry {
    sender: PeerName,
    high_water: u64,
    touched: u64,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_SENDERS)
    }
}

impl ReplayGuard {
    /// Remembers at most `capacity` senders (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            entries: Vec::with_capacity(capacity.min(DEFAULT_REPLAY_SENDERS)),
            capacity,
            clock: 0,
        }
    }

    /// Accepts and records `counter` if it is above `sender`'s high-water mark (or `sender`
    /// is new); otherwise returns [`AdvertError::Replayed`] and changes nothing.
    pub fn check(&mut self, sender: &PeerName, counter: u64) -> Result<(), AdvertError> {
        self.clock = self.clock.wrapping_add(1);
        if let Some(entry) = self.entries.iter_mut().find(|e| &e.sender == sender) {
            if counter <= entry.high_water {
                return Err(AdvertError::Replayed {
                    counter,
                    high_water: entry.high_water,
                });
            }
            entry.high_water = counter;
            entry.touched = self.clock;
            return Ok(());
        }
        let entry = ReplayEntry {
            sender: sender.clone(),
            high_water: counter,
            touched: self.clock,
        };
        if self.entries.len() < self.capacity {
            self.entries.push(entry);
        } else if let Some(oldest) = self.entries.iter_mut().min_by_key(|e| e.touched) {
            *oldest = entry;
        }
        Ok(())
    }

    /// Highest counter accepted from `sender`, if it is remembered.
    pub fn high_water(&self, sender: &PeerName) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| &e.sender == sender)
            .map(|e| e.high_water)
    }

    /// Number of senders remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no sender is remembered yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests;
