//! What both store back ends share: the error type and how it maps to HTTP, where the
//! database is (`--database-url`), and the store metrics.
//!
//! A service has one store type whose methods dispatch to SQLite ([`crate::sqlite`],
//! rusqlite) or PostgreSQL ([`crate::postgres`], sqlx); this module is what they have in common.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("migration {index}: {source}")]
    Migration {
        index: usize,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[cfg(feature = "postgres")]
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[cfg(feature = "postgres")]
    #[error("postgres migration {index}: {source}")]
    PgMigration { index: usize, source: sqlx::Error },
    #[error("database worker failed: {0}")]
    Worker(String),
    #[error("database password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What kind of failure a store error is: the `kind` label of `store_errors_total` and the
/// HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A constraint (UNIQUE, CHECK) refused the write: the caller's input conflicts.
    Constraint,
    /// Lock contention that a retry clears (SQLite busy, PostgreSQL serialization/deadlock).
    Busy,
    /// The database cannot be reached (pool timeout, connection lost, server shutting down).
    Unavailable,
    /// Anything else: a bug or a schema problem.
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Constraint => "constraint",
            ErrorKind::Busy => "busy",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Other => "other",
        }
    }
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Open { source, .. }
            | StoreError::Migration { source, .. }
            | StoreError::Sqlite(source) => crate::sqlite::kind_of(source),
            #[cfg(feature = "postgres")]
            StoreError::Postgres(source) | StoreError::PgMigration { source, .. } => {
                crate::postgres::kind_of(source)
            }
            StoreError::Worker(_) | StoreError::PasswordFile { .. } => ErrorKind::Other,
        }
    }

    /// A UNIQUE or other constraint failed: the caller's input conflicts with stored data.
    pub fn is_constraint(&self) -> bool {
        self.kind() == ErrorKind::Constraint
    }

    /// Lock contention or an unreachable database: a retry may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Busy | ErrorKind::Unavailable)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err.kind() {
            ErrorKind::Busy | ErrorKind::Unavailable => {
                tracing::warn!(error = %err, "store unavailable");
                ApiError::new(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store is unavailable; retry shortly",
                )
            }
            ErrorKind::Constraint | ErrorKind::Other => ApiError::internal(&err),
        }
    }
}

/// Where a service keeps its data (`--database-url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// No URL given: the service's own file in `--data-dir`.
    DefaultSqlite,
    /// `sqlite://PATH`.
    Sqlite(PathBuf),
    /// `postgres://…` (or `postgresql://…`).
    Postgres(PgSettings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    pub url: String,
    /// `--database-ca`: TLS to the server, verify-full against this CA.
    pub ca: Option<PathBuf>,
    /// `--database-password-file`: read when connecting, never kept in settings or logged.
    pub password_file: Option<PathBuf>,
    /// `--database-pool-size`.
    pub pool_size: u32,
}

impl Database {
    /// Interprets `--database-url` (None: the default file), `--database-ca`,
    /// `--database-password-file` and `--database-pool-size`.
    pub fn parse(args: &crate::settings::DatabaseArgs) -> Result<Database, String> {
        let ca = args.ca.clone();
        let pool_size = args.pool_size;
        let Some(url) = args.url.as_deref().filter(|u| !u.is_empty()) else {
            return match (&ca, &args.password_file) {
                (Some(_), _) => Err("--database-ca needs a postgres:// --database-url".into()),
                (_, Some(_)) => {
                    Err("--database-password-file needs a postgres:// --database-url".into())
                }
                _ => Ok(Database::DefaultSqlite),
            };
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("--database-url sqlite:// needs a path (sqlite:///data/db.sqlite or sqlite://relative.sqlite)".into());
            }
            if ca.is_some() || args.password_file.is_some() {
                return Err(
                    "--database-ca and --database-password-file apply to postgres:// URLs only"
                        .into(),
                );
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if pool_size == 0 {
                return Err("--database-pool-size must be at least 1".into());
            }
            if let Some(ca) = &ca {
                std::fs::metadata(ca)
                    .map_err(|e| format!("--database-ca {}: {e}", ca.display()))?;
            }
            if let Some(file) = &args.password_file {
                std::fs::metadata(file)
                    .map_err(|e| format!("--database-password-file {}: {e}", file.display()))?;
            }
            return Ok(Database::Postgres(PgSettings {
                url: url.to_string(),
                ca,
                password_file: args.password_file.clone(),
                pool_size,
            }));
        }
        Err("--database-url must start with sqlite:// or postgres://".into())
    }

    /// Where the store is: the SQLite file (the URL's path, or `default_file` in `data_dir`)
    /// or the PostgreSQL server.
    pub fn target(self, data_dir: &std::path::Path, default_file: &str) -> StoreTarget {
        match self {
            Database::DefaultSqlite => StoreTarget::Sqlite(data_dir.join(default_file)),
            Database::Sqlite(path) => StoreTarget::Sqlite(path),
            Database::Postgres(settings) => StoreTarget::Postgres(settings),
        }
    }
}

/// A store to open: what each service's `open_sqlite` / `open_postgres` take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    Sqlite(PathBuf),
    Postgres(PgSettings),
}

impl StoreTarget {
    /// The `store` label of its metrics.
    pub fn label(&self) -> &'static str {
        match self {
            StoreTarget::Sqlite(_) => "sqlite",
            StoreTarget::Postgres(_) => "postgres",
        }
    }
}

/// Buckets for store queries: 100 µs to 5 s.
const QUERY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// `store_query_duration_seconds{store,op}`, `store_pool_connections{store,state}` and
/// `store_errors_total{store,kind}`.
#[derive(Clone)]
pub struct StoreMetrics {
    backend: &'static str,
    duration: HistogramVec,
    connections: IntGaugeVec,
    errors: IntCounterVec,
}

impl StoreMetrics {
    /// Registers the store metrics in `registry`; `backend` ("sqlite", "postgres") labels them.
    pub fn register(registry: &Registry, backend: &'static str) -> Result<Self, prometheus::Error> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "store_query_duration_seconds",
                "Time of one store operation (connection wait included), by store and operation.",
            )
            .buckets(QUERY_BUCKETS.to_vec()),
            &["store", "op"],
        )?;
        let connections = IntGaugeVec::new(
            Opts::new(
                "store_pool_connections",
                "Database connections of this process, by state (in_use, idle).",
            ),
            &["store", "state"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "store_errors_total",
                "Failed store operations, by kind (unavailable, busy, constraint, other).",
            ),
            &["store", "kind"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        for kind in [
            ErrorKind::Unavailable,
            ErrorKind::Busy,
            ErrorKind::Constraint,
            ErrorKind::Other,
        ] {
            errors.with_label_values(&[backend, kind.as_str()]);
        }
        Ok(StoreMetrics {
            backend,
            duration,
            connections,
            errors,
        })
    }

    /// Metrics that go nowhere (unit tests of a store).
    pub fn detached(backend: &'static str) -> Self {
        match StoreMetrics::register(&Registry::new(), backend) {
            Ok(m) => m,
            // A fresh registry has no names to collide with.
            Err(e) => unreachable!("fresh registry: {e}"),
        }
    }

    /// Records one operation that started at `started` and ended with `result`.
    pub fn observe<T>(&self, op: &'static str, started: Instant, result: &Result<T, StoreError>) {
        self.duration
            .with_label_values(&[self.backend, op])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            self.errors
                .with_label_values(&[self.backend, e.kind().as_str()])
                .inc();
        }
    }

    pub fn set_connections(&self, in_use: i64, idle: i64) {
        self.connections
            .with_label_values(&[self.backend, "in_use"])
            .set(in_use);
        self.connections
            .with_label_values(&[self.backend, "idle"])
            .set(idle);
    }
}

/// How long a PostgreSQL request waits for a pooled connection before it answers 503.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
