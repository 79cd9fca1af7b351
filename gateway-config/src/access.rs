//! NGINX's `allow` / `deny`: an ordered list of rules, the first that matches the client's
//! address decides; no match allows. Written `access = ["allow 10.0.0.0/8", "deny all"]`.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::Cidr;

/// Which addresses a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    All,
    Block(Cidr),
}

impl Addresses {
    fn contains(&self, ip: IpAddr) -> bool {
        match self {
            Addresses::All => true,
            Addresses::Block(b) => b.contains(ip),
        }
    }
}

/// `allow BLOCK`, `deny BLOCK`, with `all` for every address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessRule {
    Allow(Addresses),
    Deny(Addresses),
}

impl AccessRule {
    pub fn parse(raw: &str) -> Result<AccessRule, String> {
        let bad = || {
            format!("invalid access rule {raw:?}: write \"allow BLOCK\" or \"deny BLOCK\" (BLOCK: an address, a CIDR or all)")
        };
        let (verb, what) = raw.trim().split_once(char::is_whitespace).ok_or_else(bad)?;
        let what = what.trim();
        let addresses = if what == "all" {
            Addresses::All
        } else {
            Addresses::Block(Cidr::parse(what).map_err(|e| format!("{}: {e}", bad()))?)
        };
        match verb {
            "allow" => Ok(AccessRule::Allow(addresses)),
            "deny" => Ok(AccessRule::Deny(addresses)),
            _ => Err(bad()),
        }
    }
}

/// Whether `ip` may pass `rules` (first match decides; no match allows, as in NGINX).
pub fn allowed(rules: &[AccessRule], ip: IpAddr) -> bool {
    for rule in rules {
        match rule {
            AccessRule::Allow(a) if a.contains(ip) => return true,
            AccessRule::Deny(a) if a.contains(ip) => return false,
            _ => {}
        }
    }
    true
}

impl fmt::Display for AccessRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, a) = match self {
            AccessRule::Allow(a) => ("allow", a),
            AccessRule::Deny(a) => ("deny", a),
        };
        match a {
            Addresses::All => write!(f, "{verb} all"),
            Addresses::Block(b) => write!(f, "{verb} {b}"),
        }
    }
}

impl Serialize for AccessRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AccessRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        AccessRule::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(raw: &[&str]) -> Vec<AccessRule> {
        raw.iter().map(|r| AccessRule::parse(r).unwrap()).collect()
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&[], "203.0.113.9", true),
            (&["deny all"], "10.1.2.3", false),
            (&["allow 10.0.0.0/8", "deny all"], "10.1.2.3", true),
            (&["allow 10.0.0.0/8", "deny all"], "192.168.1.1", false),
            (
                &["deny 10.0.0.1", "allow 10.0.0.0/8", "deny all"],
                "10.0.0.1",
                false,
            ),
            (
                &["deny 10.0.0.1", "allow 10.0.0.0/8", "deny all"],
                "10.0.0.2",
                true,
            ),
            (&["deny 2001:db8::/32"], "2001:db8::1", false),
            (&["deny 2001:db8::/32"], "10.0.0.1", true),
        ];
        for (raw, ip, want) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(allowed(&rules(raw), ip), *want, "{raw:?} {ip}");
        }
    }

    #[test]
    fn rules_parse_and_print_back() {
        for raw in [
            "allow all",
            "deny 10.0.0.0/8",
            "allow 192.168.1.1/32",
            "deny ::1/128",
        ] {
            assert_eq!(AccessRule::parse(raw).unwrap().to_string(), raw);
        }
        for bad in [
            "permit all",
            "deny",
            "allow 10.0.0.0/99",
            "deny everyone",
            "",
        ] {
            assert!(AccessRule::parse(bad).is_err(), "{bad}");
        }
    }
}
