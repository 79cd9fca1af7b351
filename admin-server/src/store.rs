//! Users in SQLite. Every statement that changes data runs in a `BEGIN IMMEDIATE`
//! transaction so replicas sharing the file serialize their writes instead of failing.

use std::path::Path;

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use service_kit::json::PageRequest;
use service_kit::sqlite::{count_by, Db, StoreError};

const MIGRATIONS: &[&str] = &["
    CREATE TABLE users (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        email       TEXT NOT NULL UNIQUE COLLATE NOCASE,
        name        TEXT NOT NULL,
        role        TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'support', 'viewer')),
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE INDEX users_role ON users (role);
"];

/// The fixed set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Operator,
    Support,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Support, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Support => "support",
            Role::Viewer => "viewer",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub role: Role,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// Validated fields of a new user.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub name: String,
    pub role: Role,
}

/// Validated changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub email: Option<String>,
    pub name: Option<String>,
    pub role: Option<Role>,
}

pub type Page = service_kit::json::Page<User>;

#[derive(Clone)]
pub struct UserStore {
    db: Db,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    let role: String = row.get(3)?;
    Ok(User {
        id: row.get(0)?,
        email: row.get(1)?,
        name: row.get(2)?,
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
    })
}

const COLUMNS: &str = "id, email, name, role, created_at, updated_at";

impl UserStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(UserStore {
            db: Db::open(path, MIGRATIONS)?,
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn create(&self, new: NewUser) -> Result<User, StoreError> {
        self.db
            .write(move |tx| {
                let at = now();
                tx.execute(
                    "INSERT INTO users (email, name, role, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![new.email, new.name, new.role.as_str(), at],
                )?;
                let id = tx.last_insert_rowid();
                Ok(tx.query_row(
                    &format!("SELECT {COLUMNS} FROM users WHERE id = ?1"),
                    [id],
                    user_from_row,
                )?)
            })
            .await
    }

    pub async fn get(&self, id: i64) -> Result<Option<User>, StoreError> {
        self.db
            .call(move |conn| {
                Ok(conn
                    .query_row(
                        &format!("SELECT {COLUMNS} FROM users WHERE id = ?1"),
                        [id],
                        user_from_row,
                    )
                    .optional()?)
            })
            .await
    }

    pub async fn list(&self, role: Option<Role>, page: PageRequest) -> Result<Page, StoreError> {
        let PageRequest { limit, offset } = page;
        self.db
            .call(move |conn| {
                let role = role.map(Role::as_str);
                let total: i64 = conn.query_row(
                    "SELECT count(*) FROM users WHERE ?1 IS NULL OR role = ?1",
                    [role],
                    |r| r.get(0),
                )?;
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM users WHERE ?1 IS NULL OR role = ?1
                     ORDER BY id LIMIT ?2 OFFSET ?3"
                ))?;
                let items = stmt
                    .query_map(params![role, limit, offset], user_from_row)?
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

    /// Applies `changes`; `None` when no such user.
    pub async fn update(&self, id: i64, changes: UserChanges) -> Result<Option<User>, StoreError> {
        self.db
            .write(move |tx| {
                let changed = tx.execute(
                    "UPDATE users SET
                        email = coalesce(?2, email),
                        name = coalesce(?3, name),
                        role = coalesce(?4, role),
                        updated_at = ?5
                     WHERE id = ?1",
                    params![
                        id,
                        changes.email,
                        changes.name,
                        changes.role.map(Role::as_str),
                        now()
                    ],
                )?;
                if changed == 0 {
                    return Ok(None);
                }
                Ok(Some(tx.query_row(
                    &format!("SELECT {COLUMNS} FROM users WHERE id = ?1"),
                    [id],
                    user_from_row,
                )?))
            })
            .await
    }

    /// True when a user was deleted.
    pub async fn delete(&self, id: i64) -> Result<bool, StoreError> {
        self.db
            .write(move |tx| Ok(tx.execute("DELETE FROM users WHERE id = ?1", [id])? > 0))
            .await
    }

    /// Number of users per role (every role present, zero included).
    pub async fn count_by_role(&self) -> Result<Vec<(Role, i64)>, StoreError> {
        self.db
            .call(|conn| {
                count_by(
                    conn,
                    "SELECT role, count(*) FROM users GROUP BY role",
                    &Role::ALL,
                    Role::as_str,
                )
            })
            .await
    }
}
