//! Addresses and ports after the engine's mapping: Docker uses the topology's as written; the
//! process runtime moves them to loopback and above the privileged ports.

use std::net::Ipv4Addr;

use super::RuntimeKind;
use crate::topology::Ipv4Net;

/// Maps a topology address into a loopback /16 for the process runtime: the last two octets
/// are kept (172.28.2.10 → 127.0.2.10 in 127.0.0.0/16), so the numbering reads the same.
pub fn loopback(range: Ipv4Net, addr: Ipv4Addr) -> Ipv4Addr {
    let [a, b, _, _] = range.addr.octets();
    let [_, _, c, d] = addr.octets();
    Ipv4Addr::new(a, b, c, d)
}

/// Privileged ports move up by 8000 in the process runtime (443 → 8443, 80 → 8080).
pub fn unprivileged(port: u16) -> u16 {
    if port < 1024 {
        port + 8000
    } else {
        port
    }
}

/// Addresses and ports after the runtime's mapping.
#[derive(Debug, Clone)]
pub struct Net {
    pub runtime: RuntimeKind,
    /// The process runtime's loopback /16.
    pub loopback: Ipv4Net,
}

impl Net {
    pub fn addr(&self, a: Ipv4Addr) -> Ipv4Addr {
        match self.runtime {
            RuntimeKind::Docker => a,
            RuntimeKind::Process => loopback(self.loopback, a),
        }
    }
    pub fn port(&self, p: u16) -> u16 {
        match self.runtime {
            RuntimeKind::Docker => p,
            RuntimeKind::Process => unprivileged(p),
        }
    }
}
