//! Upstream servers found by DNS (`discover` in `[upstreams.NAME]`) and the resolvers asked
//! (`[dns]`): a Kubernetes headless Service, a Consul name, any A/AAAA set.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{is_default, Dur};

/// `discover = { name = "admin.insightserenity.svc.cluster.local", port = 3002 }`: every A and
/// AAAA record of `name` is a server at `port`, re-resolved every `interval`; the per-server
/// options here apply to each discovered server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverConfig {
    pub name: String,
    pub port: u16,
    #[serde(default = "default_interval")]
    pub interval: Dur,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default = "one")]
    pub max_fails: u32,
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: Dur,
    /// Concurrent requests allowed to each server; 0 = unlimited.
    #[serde(default, skip_serializing_if = "is_default")]
    pub max_conns: u32,
}

fn default_interval() -> Dur {
    Dur(Duration::from_secs(5))
}
fn one() -> u32 {
    1
}
fn default_fail_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

impl DiscoverConfig {
    /// Why it is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 253
            && self.name.trim_end_matches('.').split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !name_ok {
            return Err(format!("discover name {:?} is not a DNS name", self.name));
        }
        if self.port == 0 {
            return Err("discover port must be above zero".into());
        }
        if self.interval.0 < Duration::from_millis(100) {
            return Err("discover interval must be at least 100ms".into());
        }
        if self.weight == 0 || self.weight > crate::MAX_WEIGHT {
            return Err(format!("discover weight must be 1..={}", crate::MAX_WEIGHT));
        }
        Ok(())
    }
}

/// `[dns]`: the resolvers `discover` asks (default: the system's, from /etc/resolv.conf).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<SocketAddr>,
}
