//! The gateway's TOML configuration. The schema, its defaults and every check that needs
//! nothing but the document live in the `gateway-config` crate (shared with devctl); this
//! module reads the file and adds the checks that need the gateway's internals (route prefixes
//! in normal form, HA peer names), plus the conversions to balancer types. Certificates are
//! loaded when a runtime snapshot is built (`crate::runtime`).

use std::path::{Path, PathBuf};

pub use gateway_config::{
    allowed, any_contains, AccessRule, AdminConfig, AlgorithmName, CacheConfig, Cidr,
    ClientIpConfig, Config, Dur, HaConfig, HashKey, HealthCheckConfig, HstsConfig, HttpConfig,
    HttpsConfig, LimitsConfig, PolicyConfig, RateLimitConfig, RateLimitSetting, RouteCacheConfig,
    RouteConfig, RuntimeConfig, RuntimeModel, SecurityHeadersConfig, ServerConfig, Size,
    StickyConfig, UpstreamConfig, UpstreamTlsConfig, VipMode, MAX_WEIGHT,
};

use crate::balance::{Algorithm, ServerSpec};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] gateway_config::ConfigError),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Config(gateway_config::invalid(message))
}

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Config(gateway_config::ConfigError::Parse { message, .. }) => {
            ConfigError::Config(gateway_config::ConfigError::Parse {
                path: path.to_owned(),
                message,
            })
        }
        other => other,
    })
}

/// Parses and validates a config document: [`Config::parse`] and the checks that need the
/// gateway's internals. What `gateway check` and every (re)load run.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let mut config = Config::parse(text)?;
    // Under ACME the [http] listeners answer HTTP-01 from the (shared) storage unless the
    // file names another directory.
    if let (Some(acme), Some(http)) = (
        config.https.as_ref().and_then(|h| h.acme.as_ref()),
        config.http.as_mut(),
    ) {
        if http.acme_challenge_dir.is_none() {
            http.acme_challenge_dir = Some(acme.challenge_dir());
        }
    }
    for route in &config.routes {
        let normalized = crate::routing::normalize_path(&route.prefix)
            .map_err(|e| invalid(format!("route prefix {:?}: {e}", route.prefix)))?;
        if normalized != route.prefix {
            return Err(invalid(format!(
                "route prefix {:?} is not in normal form; write {normalized:?}",
                route.prefix
            )));
        }
    }
    if let Some(ha) = &config.ha {
        crate::ha::PeerName::new(&ha.name)
            .map_err(|e| invalid(format!("[ha] name {:?}: {e}", ha.name)))?;
    }
    Ok(config)
}

/// The balancer's view of an upstream section.
pub trait UpstreamConfigExt {
    fn balance_algorithm(&self) -> Algorithm;
    fn server_specs(&self) -> Vec<ServerSpec>;
}

impl UpstreamConfigExt for UpstreamConfig {
    fn balance_algorithm(&self) -> Algorithm {
        match self.algorithm {
            AlgorithmName::RoundRobin => Algorithm::RoundRobin,
            AlgorithmName::LeastConn => Algorithm::LeastConn,
            AlgorithmName::Hash => Algorithm::Hash {
                consistent: self.consistent,
            },
        }
    }

    fn server_specs(&self) -> Vec<ServerSpec> {
        self.servers
            .iter()
            .map(|s| {
                ServerSpec::new(s.address.to_string())
                    .with_weight(s.weight)
                    .with_max_fails(s.max_fails)
                    .with_fail_timeout(s.fail_timeout.0)
                    .with_max_conns(s.max_conns)
                    .with_backup(s.backup)
                    .with_down(s.down)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
