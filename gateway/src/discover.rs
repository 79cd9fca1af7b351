//! Upstream servers found by DNS. [`effective`] (pure) merges the addresses last resolved for
//! each discovering upstream into the file's config, which is what the gateway runs; [`run`]
//! re-resolves each `discover` name on its interval and, when a set changes, swaps in a new
//! snapshot exactly like a reload: new servers join, removed ones get no new requests and
//! finish what they have. A failed lookup keeps the last good set.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::config::{Config, ServerConfig};
use crate::server::Gateway;

/// Upstream name → the servers DNS gave it last (sorted).
pub type Found = BTreeMap<String, Vec<SocketAddr>>;

/// The file's config with each discovering upstream's servers extended by what DNS found
/// (a fixed server keeps its own options when DNS names it too).
pub fn effective(file: &Config, found: &Found) -> Config {
    let mut config = file.clone();
    for (name, upstream) in &mut config.upstreams {
        let (Some(discover), Some(addrs)) = (&upstream.discover, found.get(name)) else {
            continue;
        };
        for addr in addrs {
            if upstream.servers.iter().any(|s| s.address == *addr) {
                continue;
            }
            upstream.servers.push(ServerConfig {
                address: *addr,
                weight: discover.weight,
                max_fails: discover.max_fails,
                fail_timeout: discover.fail_timeout,
                max_conns: discover.max_conns,
                backup: false,
                down: false,
            });
        }
    }
    config
}

fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let mut opts = ResolverOpts::default();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Every interval asks again: a changed set is seen on the next lookup.
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    let builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?
    } else {
        let mut config = ResolverConfig::new();
        for addr in servers {
            config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    Ok(builder.with_options(opts).build())
}

/// The sorted, deduplicated addresses of `name` at `port`.
async fn lookup(
    resolver: &TokioResolver,
    name: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let answer = resolver
        .lookup_ip(fqdn.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let mut addrs: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{name} has no A or AAAA records"));
    }
    Ok(addrs)
}

/// Re-resolves every discovering upstream on its interval until the gateway is gone.
pub async fn run(gateway: Weak<Gateway>) {
    let mut current: Option<(Vec<SocketAddr>, TokioResolver)> = None;
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let Some(g) = gateway.upgrade() else {
            return;
        };
        let file = g.file_config();
        let targets: Vec<_> = file
            .upstreams
            .iter()
            .filter_map(|(n, u)| u.discover.clone().map(|d| (n.clone(), d)))
            .collect();
        if !targets.is_empty() {
            if current.as_ref().map(|(s, _)| s) != Some(&file.dns.resolvers) {
                match resolver(&file.dns.resolvers) {
                    Ok(r) => current = Some((file.dns.resolvers.clone(), r)),
                    Err(e) => tracing::error!(error = %e, "cannot build the DNS resolver"),
                }
            }
            if let Some((_, resolver)) = &current {
                let known = g.discovered();
                let mut changed = Found::new();
                for (name, discover) in targets {
                    let now = Instant::now();
                    if due.get(&name).is_some_and(|t| now < *t) {
                        continue;
                    }
                    due.insert(name.clone(), now + discover.interval.0);
                    let result = match lookup(resolver, &discover.name, discover.port).await {
                        Ok(addrs) if known.get(&name) == Some(&addrs) => "unchanged",
                        Ok(addrs) => {
                            tracing::info!(upstream = %name, dns = %discover.name, servers = addrs.len(), "discovered servers changed");
                            changed.insert(name.clone(), addrs);
                            "changed"
                        }
                        Err(e) => {
                            tracing::warn!(upstream = %name, dns = %discover.name, error = %e, "DNS lookup failed; keeping the last good servers");
                            "error"
                        }
                    };
                    g.metrics
                        .dns_resolutions
                        .with_label_values(&[name.as_str(), result])
                        .inc();
                }
                if !changed.is_empty() {
                    if let Err(e) = g.apply_discovered(changed).await {
                        tracing::error!(error = %e, "discovered servers rejected; the previous set keeps serving");
                    }
                }
            }
        }
        drop(g);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:9900"
[http]
listen = ["127.0.0.1:8080"]
[upstreams.admin]
tls = false
servers = [{ address = "10.0.0.1:3002", weight = 7 }]
discover = { name = "admin.example.internal", port = 3002, weight = 3, max_fails = 2 }
[upstreams.fixed]
tls = false
servers = [{ address = "10.0.0.9:80" }]
[[routes]]
prefix = "/"
upstream = "admin"
"#;

    #[test]
    fn discovered_servers_join_the_fixed_ones_with_the_discover_options() {
        let file = crate::config::parse(CONFIG).unwrap();
        let found = Found::from([
            (
                "admin".to_string(),
                vec![
                    "10.0.0.1:3002".parse().unwrap(),
                    "10.0.0.2:3002".parse().unwrap(),
                ],
            ),
            // Not a discovering upstream: ignored.
            ("fixed".to_string(), vec!["10.9.9.9:80".parse().unwrap()]),
        ]);
        let config = effective(&file, &found);
        let admin = &config.upstreams["admin"].servers;
        assert_eq!(admin.len(), 2);
        assert_eq!(
            (admin[0].address.to_string(), admin[0].weight),
            ("10.0.0.1:3002".into(), 7)
        );
        assert_eq!(
            (
                admin[1].address.to_string(),
                admin[1].weight,
                admin[1].max_fails
            ),
            ("10.0.0.2:3002".into(), 3, 2)
        );
        assert_eq!(config.upstreams["fixed"].servers.len(), 1);
        // Nothing found yet: only the fixed servers.
        assert_eq!(effective(&file, &Found::new()), file);
    }

    #[test]
    fn discover_alone_is_a_valid_upstream_and_bad_names_are_refused() {
        let only = CONFIG.replace(
            "servers = [{ address = \"10.0.0.1:3002\", weight = 7 }]\n",
            "",
        );
        assert!(crate::config::parse(&only).is_ok());
        let bad = CONFIG.replace("admin.example.internal", "bad name!");
        let err = crate::config::parse(&bad).unwrap_err().to_string();
        assert!(err.contains("not a DNS name"), "{err}");
        let neither = only.replace(
            "discover = { name = \"admin.example.internal\", port = 3002, weight = 3, max_fails = 2 }\n",
            "",
        );
        assert!(crate::config::parse(&neither).is_err());
    }
}
