//! Consultations in SQLite, with an append-only change log that feeds the WebSocket.
//!
//! Each write records its event in the same transaction, so every replica sharing the file
//! sees every change in order (by `seq`), whichever replica made it.

use std::path::Path;

use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};
use service_kit::json::PageRequest;
use service_kit::sqlite::{count_by, Db, StoreError};

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE consultations (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        client        TEXT NOT NULL,
        topic         TEXT NOT NULL,
        scheduled_at  TEXT NOT NULL,
        status        TEXT NOT NULL
                      CHECK (status IN ('scheduled', 'in_progress', 'completed', 'cancelled')),
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    );
    CREATE INDEX consultations_status ON consultations (status);
    CREATE TABLE consultation_events (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        consultation_id  INTEGER NOT NULL,
        action           TEXT NOT NULL,
        status           TEXT,
        at               TEXT NOT NULL
    );
",
    "
    -- Whose consultation an event is about, so a customer's feed carries only its own
    -- (previous_client: the owner before an update moved it to another client).
    ALTER TABLE consultation_events ADD COLUMN client TEXT;
    ALTER TABLE consultation_events ADD COLUMN previous_client TEXT;
    CREATE INDEX consultations_client ON consultations (client);
",
];

/// Events kept in the change log; older ones are pruned by the feed.
pub const EVENTS_KEPT: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scheduled,
    InProgress,
    Completed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Scheduled,
        Status::InProgress,
        Status::Completed,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Consultation {
    pub id: i64,
    pub client: String,
    pub topic: String,
    /// RFC 3339, UTC.
    pub scheduled_at: String,
    pub status: Status,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

#[derive(Debug, Clone)]
pub struct NewConsultation {
    pub client: String,
    pub topic: String,
    pub scheduled_at: String,
    pub status: Status,
}

#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub client: Option<String>,
    pub topic: Option<String>,
    pub scheduled_at: Option<String>,
    pub status: Option<Status>,
}

pub type Page = service_kit::json::Page<Consultation>;

/// One entry of the change log.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeEvent {
    pub seq: i64,
    pub consultation_id: i64,
    pub action: String,
    pub status: Option<String>,
    pub at: String,
    /// The consultation's client after the change (`None` for events logged before this
    /// column existed).
    pub client: Option<String>,
    /// The client before an update that moved the consultation to another client.
    pub previous_client: Option<String>,
}

impl ChangeEvent {
    /// Whether a customer token for `client` may see this event.
    pub fn concerns(&self, client: &str) -> bool {
        self.client.as_deref() == Some(client) || self.previous_client.as_deref() == Some(client)
    }
}

#[derive(Clone)]
pub struct ConsultationStore {
    db: Db,
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

const COLUMNS: &str = "id, client, topic, scheduled_at, status, created_at, updated_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Consultation> {
    let status: String = row.get(4)?;
    Ok(Consultation {
        id: row.get(0)?,
        client: row.get(1)?,
        topic: row.get(2)?,
        scheduled_at: row.get(3)?,
        status: Status::parse(&status).unwrap_or(Status::Scheduled),
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
    })
}

fn record(
    tx: &Transaction<'_>,
    id: i64,
    action: &str,
    status: Option<Status>,
    client: &str,
    previous_client: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO consultation_events (consultation_id, action, status, at, client, previous_client)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, action, status.map(Status::as_str), now_rfc3339(), client, previous_client],
    )?;
    Ok(())
}

/// The consultation `id` if it exists and, when `owner` is given, belongs to that client.
fn fetch_owned(
    conn: &rusqlite::Connection,
    id: i64,
    owner: Option<&str>,
) -> rusqlite::Result<Option<Consultation>> {
    conn.query_row(
        &format!(
            "SELECT {COLUMNS} FROM consultations WHERE id = ?1 AND (?2 IS NULL OR client = ?2)"
        ),
        params![id, owner],
        from_row,
    )
    .optional()
}

fn fetch(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<Consultation> {
    tx.query_row(
        &format!("SELECT {COLUMNS} FROM consultations WHERE id = ?1"),
        [id],
        from_row,
    )
}

impl ConsultationStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(ConsultationStore {
            db: Db::open(path, MIGRATIONS)?,
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn create(&self, new: NewConsultation) -> Result<Consultation, StoreError> {
        self.db
            .write(move |tx| {
                let at = now_rfc3339();
                tx.execute(
                    "INSERT INTO consultations (client, topic, scheduled_at, status, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    params![new.client, new.topic, new.scheduled_at, new.status.as_str(), at],
                )?;
                let id = tx.last_insert_rowid();
                record(tx, id, "created", Some(new.status), &new.client, None)?;
                Ok(fetch(tx, id)?)
            })
            .await
    }

    /// The consultation `id`; with `owner`, only if it belongs to that client.
    pub async fn get(
        &self,
        id: i64,
        owner: Option<String>,
    ) -> Result<Option<Consultation>, StoreError> {
        self.db
            .call(move |conn| Ok(fetch_owned(conn, id, owner.as_deref())?))
            .await
    }

    /// A page of consultations, optionally of one `status` and of one `client` only.
    pub async fn list(
        &self,
        status: Option<Status>,
        client: Option<String>,
        page: PageRequest,
    ) -> Result<Page, StoreError> {
        let PageRequest { limit, offset } = page;
        self.db
            .call(move |conn| {
                let status = status.map(Status::as_str);
                let total: i64 = conn.query_row(
                    "SELECT count(*) FROM consultations
                     WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR client = ?2)",
                    params![status, client],
                    |r| r.get(0),
                )?;
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM consultations
                     WHERE (?1 IS NULL OR status = ?1) AND (?4 IS NULL OR client = ?4)
                     ORDER BY id LIMIT ?2 OFFSET ?3"
                ))?;
                let items = stmt
                    .query_map(params![status, limit, offset, client], from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Page {
                    items,
                    total,
                    limit,
                    offset,
                })
            })
            .await
    }

    /// Applies `changes`; with `owner`, only to a consultation of that client.
    pub async fn update(
        &self,
        id: i64,
        changes: Changes,
        owner: Option<String>,
    ) -> Result<Option<Consultation>, StoreError> {
        self.db
            .write(move |tx| {
                let Some(before) = fetch_owned(tx, id, owner.as_deref())? else {
                    return Ok(None);
                };
                let changed = tx.execute(
                    "UPDATE consultations SET
                        client = coalesce(?2, client),
                        topic = coalesce(?3, topic),
                        scheduled_at = coalesce(?4, scheduled_at),
                        status = coalesce(?5, status),
                        updated_at = ?6
                     WHERE id = ?1",
                    params![
                        id,
                        changes.client,
                        changes.topic,
                        changes.scheduled_at,
                        changes.status.map(Status::as_str),
                        now_rfc3339()
                    ],
                )?;
                if changed == 0 {
                    return Ok(None);
                }
                let consultation = fetch(tx, id)?;
                let previous = (before.client != consultation.client).then_some(before.client);
                record(
                    tx,
                    id,
                    "updated",
                    Some(consultation.status),
                    &consultation.client,
                    previous.as_deref(),
                )?;
                Ok(Some(consultation))
            })
            .await
    }

    /// Deletes `id`; with `owner`, only a consultation of that client.
    pub async fn delete(&self, id: i64, owner: Option<String>) -> Result<bool, StoreError> {
        self.db
            .write(move |tx| {
                let Some(before) = fetch_owned(tx, id, owner.as_deref())? else {
                    return Ok(false);
                };
                tx.execute("DELETE FROM consultations WHERE id = ?1", [id])?;
                record(tx, id, "deleted", None, &before.client, None)?;
                Ok(true)
            })
            .await
    }

    /// Consultations per status (every status present) and how many are still ahead.
    pub async fn summary(&self) -> Result<(Vec<(Status, i64)>, i64), StoreError> {
        self.db
            .call(|conn| {
                let by_status = count_by(
                    conn,
                    "SELECT status, count(*) FROM consultations GROUP BY status",
                    &Status::ALL,
                    Status::as_str,
                )?;
                // RFC 3339 UTC strings of equal shape compare in time order.
                let upcoming: i64 = conn.query_row(
                    "SELECT count(*) FROM consultations WHERE status = 'scheduled' AND scheduled_at > ?1",
                    [now_rfc3339()],
                    |r| r.get(0),
                )?;
                Ok((by_status, upcoming))
            })
            .await
    }

    /// The newest sequence number in the change log (0 when empty).
    pub async fn last_seq(&self) -> Result<i64, StoreError> {
        self.db
            .call(|conn| {
                Ok(conn.query_row(
                    "SELECT coalesce(max(seq), 0) FROM consultation_events",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
    }

    /// Change-log entries after `seq`, oldest first, at most `limit`.
    pub async fn events_after(&self, seq: i64, limit: i64) -> Result<Vec<ChangeEvent>, StoreError> {
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, consultation_id, action, status, at, client, previous_client
                     FROM consultation_events
                     WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                let events = stmt
                    .query_map(params![seq, limit], |r| {
                        Ok(ChangeEvent {
                            seq: r.get(0)?,
                            consultation_id: r.get(1)?,
                            action: r.get(2)?,
                            status: r.get(3)?,
                            at: r.get(4)?,
                            client: r.get(5)?,
                            previous_client: r.get(6)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(events)
            })
            .await
    }

    /// Drops change-log entries more than [`EVENTS_KEPT`] behind `newest`.
    pub async fn prune_events(&self, newest: i64) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                tx.execute(
                    "DELETE FROM consultation_events WHERE seq <= ?1",
                    [newest - EVENTS_KEPT],
                )?;
                Ok(())
            })
            .await
    }
}
