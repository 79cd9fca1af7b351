//! SQLite as the backends use it: one database file shared by every replica of a service.
//!
//! Several processes open the same file (a shared Docker volume), so: WAL journal for
//! concurrent readers, a busy timeout so writers queue instead of failing, `BEGIN IMMEDIATE`
//! for writes (a deferred transaction that upgrades to a writer can fail with SQLITE_BUSY
//! regardless of the timeout), and migrations applied under that same lock so five replicas
//! starting at once apply each migration exactly once.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

/// How long a writer waits for another process's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub use crate::store::StoreError;
use crate::store::{ErrorKind, StoreMetrics};

/// How a rusqlite error counts (see [`ErrorKind`]).
pub(crate) fn kind_of(err: &rusqlite::Error) -> ErrorKind {
    match err {
        rusqlite::Error::SqliteFailure(e, _) => match e.code {
            ErrorCode::ConstraintViolation => ErrorKind::Constraint,
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => ErrorKind::Busy,
            ErrorCode::CannotOpen | ErrorCode::DiskFull | ErrorCode::SystemIoFailure => {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Other,
        },
        _ => ErrorKind::Other,
    }
}

/// A handle to the database; clones share one connection used from blocking threads.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    metrics: StoreMetrics,
}

impl Db {
    /// Opens (creating if needed) `path` and applies `migrations` not yet applied. The schema
    /// version is SQLite's `user_version`: migration `i` takes it from `i` to `i + 1`.
    pub fn open(path: &Path, migrations: &[&str]) -> Result<Db, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let deadline = Instant::now() + BUSY_TIMEOUT;
        // Switching to WAL upgrades a shared lock to an exclusive one. When two replicas race,
        // SQLite breaks the deadlock by failing one with SQLITE_BUSY *without* calling the busy
        // handler, so the timeout above does not cover it: retry the statement ourselves.
        retry_while_busy(deadline, || conn.pragma_update(None, "journal_mode", "WAL"))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        retry_while_busy(deadline, || migrate(&mut conn, migrations))?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            metrics: StoreMetrics::detached("sqlite"),
        })
    }

    /// Reports this store's operations in `metrics` (registered in the process registry).
    pub fn with_metrics(mut self, metrics: StoreMetrics) -> Self {
        metrics.set_connections(0, 1);
        self.metrics = metrics;
        self
    }

    /// Runs `f` on a blocking thread with the connection.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.timed("read", f).await
    }

    async fn timed<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let started = Instant::now();
        let result = self.run(f).await;
        self.metrics.observe(op, started, &result);
        result
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Worker("connection lock poisoned".into()))?;
            metrics.set_connections(1, 0);
            let result = f(&mut guard);
            metrics.set_connections(0, 1);
            result
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE`), committed if `f` succeeds.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.timed("write", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }

    /// A cheap query proving the file is readable; used by `/ready`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.call(|conn| {
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
                row.get::<_, i64>(0)
            })?;
            Ok(())
        })
        .await
    }
}

/// Counts rows per value of an enum column: `sql` selects `(value TEXT, count INTEGER)` rows
/// (a `GROUP BY`); every variant in `all` appears in the result, zero included.
pub fn count_by<E: Copy>(
    conn: &Connection,
    sql: &str,
    all: &[E],
    name: impl Fn(E) -> &'static str,
) -> Result<Vec<(E, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(fill_counts(&rows, all, name))
}

/// `(value, count)` rows as one count per variant of `all`, zero for the missing ones.
pub fn fill_counts<E: Copy>(
    rows: &[(String, i64)],
    all: &[E],
    name: impl Fn(E) -> &'static str,
) -> Vec<(E, i64)> {
    all.iter()
        .map(|&value| {
            let n = rows
                .iter()
                .find(|(v, _)| v == name(value))
                .map_or(0, |(_, n)| *n);
            (value, n)
        })
        .collect()
}

/// Busy errors a retry can clear: lock contention between processes.
trait Contended {
    fn is_contended(&self) -> bool;
}

impl Contended for rusqlite::Error {
    fn is_contended(&self) -> bool {
        kind_of(self) == ErrorKind::Busy
    }
}

impl Contended for StoreError {
    fn is_contended(&self) -> bool {
        self.kind() == ErrorKind::Busy
    }
}

/// Runs `op` again after a short, growing, jittered pause while it fails with a busy error,
/// until `deadline`. For the statements where SQLite returns SQLITE_BUSY without consulting
/// the busy handler (lock upgrades that would otherwise deadlock).
fn retry_while_busy<T, E: Contended>(
    deadline: Instant,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut pause = Duration::from_millis(2);
    loop {
        match op() {
            Err(err) if err.is_contended() && Instant::now() < deadline => {
                // Jitter from the clock so racing replicas do not retry in lockstep.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let jitter =
                    Duration::from_nanos(u64::from(nanos) % pause.as_nanos().max(1) as u64);
                std::thread::sleep(pause + jitter);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|source| StoreError::Migration { index: 0, source })?;
    let current: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|source| StoreError::Migration { index: 0, source })?;
    let current = usize::try_from(current).unwrap_or(0);
    for (index, sql) in migrations.iter().enumerate().skip(current) {
        tx.execute_batch(sql)
            .map_err(|source| StoreError::Migration { index, source })?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)
            .map_err(|source| StoreError::Migration { index, source })?;
    }
    tx.commit().map_err(|source| StoreError::Migration {
        index: current,
        source,
    })?;
    Ok(())
}

impl Db {
    /// This database as a `/ready` check.
    pub fn ready_check(&self) -> crate::health::ReadyCheck {
        let db = self.clone();
        Arc::new(move || {
            let db = db.clone();
            Box::pin(async move { db.ping().await.map_err(|e| format!("sqlite: {e}")) })
        })
    }
}

/// A consistent copy of the SQLite database at `path` (SQLite's online backup API: other
/// processes keep reading and writing meanwhile), as the bytes of a database file.
pub fn backup_bytes(path: &Path) -> Result<Vec<u8>, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let src =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(open_err)?;
    src.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let dir = tempfile_dir()?;
    let copy = dir.join("backup.sqlite");
    src.backup(rusqlite::MAIN_DB, &copy, None)
        .map_err(open_err)?;
    let bytes = std::fs::read(&copy).map_err(|e| StoreError::Worker(e.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

/// Replaces the content of the SQLite database at `path` with the database file `from`
/// (a copy made by [`backup_bytes`]), under SQLite's locks: replicas that have it open see the
/// restored data on their next transaction.
pub fn restore_from(path: &Path, from: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    // The copy must be a database (a page read fails otherwise) before anything is replaced.
    let check =
        Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            StoreError::Open {
                path: from.to_owned(),
                source,
            }
        })?;
    check
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|source| StoreError::Open {
            path: from.to_owned(),
            source,
        })?;
    drop(check);
    let mut dst = Connection::open(path).map_err(open_err)?;
    dst.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    dst.restore(
        rusqlite::MAIN_DB,
        from,
        None::<fn(rusqlite::backup::Progress)>,
    )
    .map_err(open_err)
}

/// A private scratch directory next to the system's temporary files.
fn tempfile_dir() -> Result<std::path::PathBuf, StoreError> {
    let dir = std::env::temp_dir().join(format!(
        "store-backup-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::Worker(e.to_string()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[&str] = &[
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE);",
        "ALTER TABLE t ADD COLUMN n INTEGER NOT NULL DEFAULT 0;",
    ];

    #[test]
    fn concurrent_openers_apply_each_migration_once() {
        // Several rounds on fresh files: the WAL switch race only shows up now and then.
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db.sqlite");
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let path = path.clone();
                    let start = start.clone();
                    std::thread::spawn(move || {
                        start.wait();
                        Db::open(&path, MIGRATIONS).map(|_| ())
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
            let conn = Connection::open(&path).unwrap();
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(version, 2);
            let mode: String = conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
    }

    #[tokio::test]
    async fn constraint_violations_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite"), MIGRATIONS).unwrap();
        let insert = |db: Db| async move {
            db.write(|tx| {
                tx.execute("INSERT INTO t (v) VALUES ('x')", [])?;
                Ok(())
            })
            .await
        };
        insert(db.clone()).await.unwrap();
        let err = insert(db.clone()).await.unwrap_err();
        assert!(err.is_constraint(), "{err}");
        db.ping().await.unwrap();
    }
}
