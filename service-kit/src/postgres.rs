//! PostgreSQL as the backends use it: one database shared by every replica of a service, each
//! replica on its own host.
//!
//! A sqlx pool of `--database-pool-size` connections, opened lazily (a replica starts, and
//! stays up, while the server is away) with a short acquire timeout so a request waits at most
//! [`ACQUIRE_TIMEOUT`] for a connection and then answers 503 `store_unavailable`; idle
//! connections are tested before use, so after a server restart the pool heals by itself.
//! Migrations run in one transaction holding a transaction-scoped advisory lock, so replicas
//! starting together apply each exactly once; `schema_migrations` records them per service.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

use crate::store::{ErrorKind, PgSettings, StoreError, StoreMetrics, ACQUIRE_TIMEOUT};

/// The advisory lock key migrations hold (any constant shared by every replica).
const MIGRATION_LOCK: i64 = 0x5345_5256_4b49_5401;

/// How long a starting replica keeps retrying its migrations while the server is unreachable.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How a sqlx error counts (see [`ErrorKind`]).
pub(crate) fn kind_of(err: &sqlx::Error) -> ErrorKind {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match code.as_ref() {
                c if c.starts_with("23") => ErrorKind::Constraint,
                "40001" | "40P01" | "55P03" => ErrorKind::Busy,
                // connection exceptions, shutdown / cannot connect now, insufficient resources
                c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                    ErrorKind::Unavailable
                }
                _ => ErrorKind::Other,
            }
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    }
}

/// A pool of connections to one PostgreSQL database; clones share the pool.
#[derive(Clone)]
pub struct PgDb {
    pool: PgPool,
    metrics: StoreMetrics,
}

impl PgDb {
    /// Builds the pool and applies the `service`'s `migrations` not yet applied, retrying for
    /// [`STARTUP_TIMEOUT`] while the server is unreachable.
    pub async fn connect(
        settings: &PgSettings,
        service: &str,
        migrations: &[&str],
        metrics: StoreMetrics,
    ) -> Result<PgDb, StoreError> {
        let mut options = PgConnectOptions::from_str(&settings.url)?.application_name(service);
        if let Some(ca) = &settings.ca {
            options = options.ssl_mode(PgSslMode::VerifyFull).ssl_root_cert(ca);
        }
        if let Some(path) = &settings.password_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| StoreError::PasswordFile {
                    path: path.clone(),
                    source,
                })?;
            options = options.password(text.trim_end_matches(['\r', '\n']));
        }
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(300))
            .test_before_acquire(true)
            .connect_lazy_with(options);
        let db = PgDb { pool, metrics };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match migrate(&db.pool, service, migrations).await {
                Ok(()) => break,
                Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                    tracing::warn!(error = %e, "database not reachable yet; retrying migrations");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
        db.update_pool_gauges();
        Ok(db)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs one store operation, recording its duration, its failure kind and the pool's state.
    pub async fn timed<T>(
        &self,
        op: &'static str,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = operation.await;
        self.metrics.observe(op, started, &result);
        self.update_pool_gauges();
        result
    }

    fn update_pool_gauges(&self) {
        let size = i64::from(self.pool.size());
        let idle = i64::try_from(self.pool.num_idle()).unwrap_or(i64::MAX);
        self.metrics.set_connections((size - idle).max(0), idle);
    }

    /// A round trip to the server; used by `/ready`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", async {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
        .await
    }

    /// This database as a `/ready` check.
    pub fn ready_check(&self) -> crate::health::ReadyCheck {
        let db = self.clone();
        Arc::new(move || {
            let db = db.clone();
            Box::pin(async move {
                // Inside the endpoint's own limit, so the answer names the store.
                let limit =
                    crate::health::READY_CHECK_TIMEOUT.saturating_sub(Duration::from_millis(500));
                match tokio::time::timeout(limit, db.ping()).await {
                    Ok(result) => result.map_err(|e| format!("postgres: {e}")),
                    Err(_) => Err(format!("postgres: no connection within {limit:?}")),
                }
            })
        })
    }
}

async fn migrate(pool: &PgPool, service: &str, migrations: &[&str]) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            service     TEXT NOT NULL,
            version     BIGINT NOT NULL,
            applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (service, version)
        )",
    )
    .execute(&mut *tx)
    .await?;
    let current: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(version), 0)::BIGINT FROM schema_migrations WHERE service = $1",
    )
    .bind(service)
    .fetch_one(&mut *tx)
    .await?;
    let current = usize::try_from(current).unwrap_or(0);
    for (index, sql) in migrations.iter().enumerate().skip(current) {
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|source| StoreError::PgMigration { index, source })?;
        sqlx::query("INSERT INTO schema_migrations (service, version) VALUES ($1, $2)")
            .bind(service)
            .bind(i64::try_from(index + 1).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
