//! Pool sizes: the topology's, then `devctl scale` overrides, each checked to fit.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::PlanError;
use crate::topology::Topology;

/// Most instances a pool may have.
pub const MAX_INSTANCES: usize = 200;

/// Each pool's instance count, `overrides` over the topology's; every count must fit.
pub fn pool_sizes(
    t: &Topology,
    overrides: &BTreeMap<String, usize>,
) -> Result<BTreeMap<String, usize>, PlanError> {
    let mut pools: BTreeMap<String, usize> = t
        .pools
        .iter()
        .map(|p| (p.name.clone(), p.instances))
        .collect();
    for (name, count) in overrides {
        if !pools.contains_key(name) {
            return Err(PlanError::UnknownPool {
                pool: name.clone(),
                known: t
                    .pools
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        pools.insert(name.clone(), *count);
    }
    check(t, &pools)?;
    Ok(pools)
}

fn check(t: &Topology, pools: &BTreeMap<String, usize>) -> Result<(), PlanError> {
    for pool in &t.pools {
        let count = pools.get(&pool.name).copied().unwrap_or(pool.instances);
        let bad = |reason: String| PlanError::BadScale {
            pool: pool.name.clone(),
            count,
            reason,
        };
        if count == 0 || count > MAX_INSTANCES {
            return Err(bad(format!("a pool has 1..={MAX_INSTANCES}")));
        }
        let mine = Topology::pool_addresses(pool, count);
        if mine.len() != count {
            return Err(bad("the addresses run past 255.255.255.255".into()));
        }
        // Every fixed address other than this pool's must stay clear of its grown range.
        let mut others: Vec<(String, Ipv4Addr)> = t
            .gateway_addresses()
            .into_iter()
            .enumerate()
            .map(|(i, a)| (format!("gateway-{}", i + 1), a))
            .collect();
        others.extend([
            ("the VIP".to_string(), t.gateways.vip),
            ("prometheus".to_string(), t.prometheus.address),
            ("grafana".to_string(), t.grafana.address),
        ]);
        others.extend(t.edge.iter().map(|e| ("the edge".to_string(), e.address)));
        others.extend(
            t.alertmanager
                .iter()
                .map(|a| ("alertmanager".to_string(), a.address)),
        );
        for other in t.pools.iter().filter(|p| p.name != pool.name) {
            let n = pools.get(&other.name).copied().unwrap_or(other.instances);
            others.extend(
                Topology::pool_addresses(other, n)
                    .into_iter()
                    .enumerate()
                    .map(|(i, a)| (format!("{}-{}", other.name, i + 1), a)),
            );
        }
        for (i, a) in mine.iter().enumerate() {
            let who = format!("{}-{}", pool.name, i + 1);
            if !t.subnet.contains(*a) {
                return Err(bad(format!("{who} would be {a}, outside {}", t.subnet)));
            }
            if t.dynamic_range.contains(*a) {
                return Err(bad(format!(
                    "{who} would be {a}, inside the dynamic range {}",
                    t.dynamic_range
                )));
            }
            if let Some((other, _)) = others.iter().find(|(_, o)| o == a) {
                return Err(bad(format!("{who} would take {other}'s address {a}")));
            }
        }
    }
    Ok(())
}
