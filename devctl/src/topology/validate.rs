//! Topology validation: addresses inside the subnet and outside the dynamic range with no
//! clashes, counts and priorities in range, routes naming real pools, policies that make
//! sense. Every failure is one line that names the offending key.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use gateway_config::{AlgorithmName, RateLimitSetting};

use super::{invalid, Topology, TopologyError};

impl Topology {
    pub(super) fn validate(&self) -> Result<(), TopologyError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !name_ok(&self.name) || !name_ok(&self.project) {
            return Err(invalid("name and project: use a-z, 0-9 and '-'"));
        }
        let [a, _, c, d] = self.loopback.addr.octets();
        if a != 127 || self.loopback.prefix != 16 || c != 0 || d != 0 {
            return Err(invalid(format!(
                "loopback {} must be a /16 inside 127.0.0.0/8, e.g. 127.0.0.0/16",
                self.loopback
            )));
        }
        if self.subnet.prefix > 24 {
            return Err(invalid(format!("subnet {} is too small", self.subnet)));
        }
        if !self.subnet.contains_net(&self.dynamic_range) {
            return Err(invalid(format!(
                "dynamic_range {} is not inside subnet {}",
                self.dynamic_range, self.subnet
            )));
        }
        let g = &self.gateways;
        if g.count == 0 || g.count > 8 {
            return Err(invalid("gateways.count must be 1..=8"));
        }
        if g.priorities.len() != g.count {
            return Err(invalid(format!(
                "gateways.priorities has {} entries for {} gateways",
                g.priorities.len(),
                g.count
            )));
        }
        if g.priorities.iter().any(|p| *p == 0 || *p == 255) {
            return Err(invalid("gateway priorities must be 1..=254"));
        }
        if g.vip_prefix == 0 || g.vip_prefix > 32 {
            return Err(invalid("gateways.vip_prefix must be 1..=32"));
        }
        if g.advert_interval.0.is_zero() {
            return Err(invalid("gateways.advert_interval must be above zero"));
        }
        let mut fixed: Vec<(String, Ipv4Addr)> = Vec::new();
        for (i, addr) in self.gateway_addresses().into_iter().enumerate() {
            fixed.push((format!("gateway-{}", i + 1), addr));
        }
        fixed.push(("the VIP".into(), g.vip));
        if let Some(edge) = &self.edge {
            fixed.push(("the edge".into(), edge.address));
        }
        fixed.push(("prometheus".into(), self.prometheus.address));
        fixed.push(("grafana".into(), self.grafana.address));
        if let Some(am) = &self.alertmanager {
            fixed.push(("alertmanager".into(), am.address));
            if let Some(hook) = &am.webhook {
                if !(hook.starts_with("http://") || hook.starts_with("https://")) {
                    return Err(invalid(format!(
                        "alertmanager.webhook {hook:?} must be an http(s) URL"
                    )));
                }
            }
        }
        self.store.check()?;
        if let Some(addr) = self.store.instance_address() {
            fixed.push(("postgres".into(), addr));
        }
        let size_ok = {
            let l = &self.logs.max_size;
            let digits = l.trim_end_matches(['k', 'm', 'g']);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && digits != "0"
        };
        if !size_ok || self.logs.max_file == 0 {
            return Err(invalid(
                "logs: max_size is a size such as 10m, 500k or 1g, max_file at least 1",
            ));
        }
        if self.pools.is_empty() {
            return Err(invalid("define at least one [[pools]]"));
        }
        let mut pool_names = BTreeSet::new();
        for pool in &self.pools {
            let reserved = ["gateway", "edge", "postgres"];
            if !name_ok(&pool.name) || reserved.contains(&pool.name.as_str()) {
                return Err(invalid(format!(
                    "pool name {:?}: use a-z, 0-9, '-' (not gateway, edge or postgres)",
                    pool.name
                )));
            }
            if !pool_names.insert(pool.name.as_str()) {
                return Err(invalid(format!("pool {} is defined twice", pool.name)));
            }
            if pool.instances == 0 {
                return Err(invalid(format!(
                    "pool {}: instances must be >= 1",
                    pool.name
                )));
            }
            if pool.weights.is_empty() || pool.weights.contains(&0) {
                return Err(invalid(format!(
                    "pool {}: weights must be a non-empty list of positive numbers",
                    pool.name
                )));
            }
            if pool.weights.len() > pool.instances {
                return Err(invalid(format!(
                    "pool {}: {} weights for {} instances",
                    pool.name,
                    pool.weights.len(),
                    pool.instances
                )));
            }
            if pool.algorithm == AlgorithmName::Hash {
                return Err(invalid(format!(
                    "pool {}: algorithm must be round_robin or least_conn",
                    pool.name
                )));
            }
            pool.health_check
                .check()
                .map_err(|e| invalid(format!("pool {}: {e}", pool.name)))?;
            for (i, addr) in Topology::pool_addresses(pool, pool.instances)
                .into_iter()
                .enumerate()
            {
                fixed.push((format!("{}-{}", pool.name, i + 1), addr));
            }
        }
        let mut seen: Vec<(String, Ipv4Addr)> = Vec::new();
        for (who, addr) in &fixed {
            if !self.subnet.contains(*addr) {
                return Err(invalid(format!(
                    "{who}'s address {addr} is outside subnet {}",
                    self.subnet
                )));
            }
            if self.dynamic_range.contains(*addr) {
                return Err(invalid(format!(
                    "{who}'s address {addr} is inside dynamic_range {}",
                    self.dynamic_range
                )));
            }
            if *addr == self.subnet.network() || *addr == self.subnet.first_host() {
                return Err(invalid(format!(
                    "{who}'s address {addr} is the network or its bridge gateway"
                )));
            }
            if let Some((other, _)) = seen.iter().find(|(_, a)| a == addr) {
                return Err(invalid(format!("{who} and {other} share address {addr}")));
            }
            seen.push((who.clone(), *addr));
        }
        if self.routes.is_empty() {
            return Err(invalid("define at least one [[routes]]"));
        }
        let mut prefixes = BTreeSet::new();
        for route in &self.routes {
            if !route.prefix.starts_with('/') {
                return Err(invalid(format!(
                    "route {:?} must start with /",
                    route.prefix
                )));
            }
            if !pool_names.contains(route.pool.as_str()) {
                return Err(invalid(format!(
                    "route {:?} names unknown pool {:?}",
                    route.prefix, route.pool
                )));
            }
            if !prefixes.insert(route.prefix.as_str()) {
                return Err(invalid(format!(
                    "route {:?} is defined twice",
                    route.prefix
                )));
            }
            match &route.rate_limit {
                Some(RateLimitSetting::On(rl)) => rl
                    .check()
                    .map_err(|e| invalid(format!("route {:?}: {e}", route.prefix)))?,
                Some(RateLimitSetting::Off(true)) => {
                    return Err(invalid(format!(
                        "route {:?}: write rate_limit = false or a {{ rate, per, burst }} table",
                        route.prefix
                    )))
                }
                _ => {}
            }
        }
        if let Some(rl) = &self.defaults.rate_limit {
            rl.check().map_err(|e| invalid(format!("defaults: {e}")))?;
        }
        for path in &self.defaults.internal_paths {
            if !path.starts_with('/') || path == "/" {
                return Err(invalid(format!(
                    "defaults.internal_paths: {path:?} must start with / and not be /"
                )));
            }
            if prefixes.contains(path.as_str()) {
                return Err(invalid(format!(
                    "defaults.internal_paths: {path:?} is also a route"
                )));
            }
        }
        if self.pools.iter().any(|p| p.scale_weight == 0) {
            return Err(invalid("scale_weight must be above zero"));
        }
        if self.tls.names.is_empty() {
            return Err(invalid("tls.names must name at least one host"));
        }
        if let Some(acme) = &self.tls.acme {
            gateway_config::AcmeConfig::new(
                acme.directory.clone(),
                acme.contact.clone(),
                self.tls.names.clone(),
                "/data/acme".into(),
            )
            .check()
            .map_err(|e| invalid(format!("tls.acme: {e}")))?;
        }
        Ok(())
    }
}
