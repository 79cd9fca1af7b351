//! `[store]`: where the backends keep their data. SQLite (a file per pool on a shared volume:
//! one machine only) or PostgreSQL, either run by devctl as the `postgres` instance (dev) or
//! an external server the topology names (production: a managed database, as in the seed).
//! Each pool has its own database on the server, named after the pool.

use std::net::Ipv4Addr;

use serde::Deserialize;

use super::{invalid, TopologyError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    pub kind: StoreKind,
    /// The server image devctl runs (postgres, no `url`); built locally from the host's
    /// PostgreSQL when it is neither present nor pullable.
    #[serde(default = "default_image")]
    pub image: String,
    /// Address of the `postgres` instance devctl runs.
    pub address: Option<Ipv4Addr>,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Published on the edge's publish address at this port (0: not published).
    #[serde(default)]
    pub publish_port: u16,
    /// The role the backends log in as.
    #[serde(default = "default_user")]
    pub user: String,
    /// An external server, `postgres://USER@HOST:PORT` (no database: each pool's is its
    /// name); devctl then runs no database instance.
    pub url: Option<String>,
    /// Connections per backend replica.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            kind: StoreKind::Sqlite,
            image: default_image(),
            address: None,
            port: default_port(),
            publish_port: 0,
            user: default_user(),
            url: None,
            pool_size: default_pool_size(),
        }
    }
}

fn default_image() -> String {
    "postgres:16".into()
}
fn default_port() -> u16 {
    5432
}
fn default_user() -> String {
    "insightserenity".into()
}
fn default_pool_size() -> u32 {
    10
}

impl Store {
    /// The address of the database instance devctl runs, if it runs one.
    pub fn instance_address(&self) -> Option<Ipv4Addr> {
        match self.kind {
            StoreKind::Postgres if self.url.is_none() => self.address,
            _ => None,
        }
    }

    pub(super) fn check(&self) -> Result<(), TopologyError> {
        match (self.kind, &self.address, &self.url) {
            (StoreKind::Sqlite, None, None) => Ok(()),
            (StoreKind::Sqlite, _, _) => Err(invalid(
                "store: kind = \"sqlite\" takes no address or url (each pool's file is in its data volume)",
            )),
            (StoreKind::Postgres, Some(_), Some(_)) | (StoreKind::Postgres, None, None) => {
                Err(invalid(
                    "store: kind = \"postgres\" needs either address (devctl runs the server) or url (an external one)",
                ))
            }
            (StoreKind::Postgres, _, Some(url)) => {
                let rest = url
                    .strip_prefix("postgres://")
                    .or_else(|| url.strip_prefix("postgresql://"))
                    .ok_or_else(|| {
                        invalid(format!("store.url {url:?} must start with postgres://"))
                    })?;
                if rest.contains(':') && rest.split('@').next().is_some_and(|u| u.contains(':'))
                {
                    return Err(invalid(
                        "store.url must not carry a password (the deployment supplies it as a secret)",
                    ));
                }
                if rest.trim_end_matches('/').contains('/') {
                    return Err(invalid(format!(
                        "store.url {url:?} names a database: leave it out, each pool's database is its name"
                    )));
                }
                self.check_common()
            }
            (StoreKind::Postgres, Some(_), None) => self.check_common(),
        }
    }

    fn check_common(&self) -> Result<(), TopologyError> {
        let user_ok = !self.user.is_empty()
            && self
                .user
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !user_ok {
            return Err(invalid("store.user: use a-z, 0-9 and '_'"));
        }
        if self.pool_size == 0 || self.pool_size > 100 {
            return Err(invalid("store.pool_size must be 1..=100"));
        }
        if self.port == 0 {
            return Err(invalid("store.port must be above zero"));
        }
        Ok(())
    }
}
