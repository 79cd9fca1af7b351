//! Who the client is. The socket peer, unless a trusted proxy vouches otherwise: a PROXY
//! protocol header (accepted from trusted peers only, at the connection level) or, for a
//! trusted peer, the rightmost untrusted address of `X-Forwarded-For`. A client that writes
//! its own `X-Forwarded-For` gains nothing: from an untrusted peer the header is ignored.

use std::net::IpAddr;

use crate::config::{any_contains, Cidr};

/// The client address of a request on a connection whose client is `conn_client` (the
/// PROXY source when one was accepted, else the socket peer).
pub fn resolve(conn_client: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    if !any_contains(trusted, conn_client) {
        return conn_client;
    }
    let Some(chain) = forwarded_for else {
        return conn_client;
    };
    // Walk right to left: each hop was appended by the proxy before it; stop at the first
    // address no trusted proxy added.
    let mut client = conn_client;
    for hop in chain.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !any_contains(trusted, ip) {
            break;
        }
    }
    client
}

/// Key for per-client state: IPv6 clients are grouped by /64 (one subscriber's allocation),
/// so rotating addresses inside it does not buy fresh buckets.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let masked = u128::from(v6) & (u128::MAX << 64);
                IpAddr::V6(masked.into())
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn resolution_table() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let cases = [
            // untrusted peer: its own header is ignored
            ("203.0.113.5", Some("1.2.3.4"), "203.0.113.5"),
            // trusted peer: rightmost untrusted hop
            ("10.0.0.2", Some("198.51.100.1"), "198.51.100.1"),
            ("10.0.0.2", Some("1.2.3.4, 198.51.100.1"), "198.51.100.1"),
            (
                "10.0.0.2",
                Some("1.2.3.4, 198.51.100.1, 10.0.0.9"),
                "198.51.100.1",
            ),
            // a spoofed left part does not matter
            ("10.0.0.2", Some("6.6.6.6, 198.51.100.1"), "198.51.100.1"),
            // all trusted: the leftmost
            ("10.0.0.2", Some("10.0.0.7, 10.0.0.8"), "10.0.0.7"),
            // trusted peer without the header
            ("10.0.0.2", None, "10.0.0.2"),
            // garbage stops the walk at the last good hop
            ("10.0.0.2", Some("junk, 198.51.100.1"), "198.51.100.1"),
            ("10.0.0.2", Some("junk"), "10.0.0.2"),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(resolve(ip(peer), xff, &trusted), ip(want), "{peer} {xff:?}");
        }
    }

    #[test]
    fn ipv6_clients_share_a_key_per_64() {
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa::1")),
            limit_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(limit_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(limit_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }
}
