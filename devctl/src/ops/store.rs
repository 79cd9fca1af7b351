//! The store's day-2 work, through the engine's `exec` beside the database instance:
//! provisioning each pool's database, `devctl backup` (pg_dump, custom format) and
//! `devctl restore` (pg_restore into the running stack).

use std::collections::BTreeMap;
use std::path::Path;

use super::{OpsError, Session};
use crate::backup::{Backup, Manifest, FORMAT};
use crate::engine::{Engine, Exec, ExecOutput, INPUT};
use crate::plan::{Database, Instance, Plan};
use crate::topology::StoreKind;

/// State dir files a backup carries (the database password stays: it lives in the server's
/// own data, which the backup does not replace).
const STATE_FILES: &[&str] = &["certs/ca.crt", "certs/ca.key", "auth/signing.key"];

impl<E: Engine> Session<E> {
    /// The database instance and the store's description, or why there is none to work on.
    fn database<'p>(&self, plan: &'p Plan) -> Result<(&'p Instance, &'p Database), OpsError> {
        let db = &plan.store;
        let name = match (db.kind, &db.instance) {
            (StoreKind::Postgres, Some(name)) => name,
            (StoreKind::Postgres, None) => {
                return Err(OpsError::Store(
                    "the topology's database is external ([store] url): back it up with its provider's tools".into(),
                ))
            }
            (StoreKind::Sqlite, _) => {
                return Err(OpsError::Store(
                    "the topology keeps its data in SQLite ([store] kind = \"sqlite\"); backup and restore work on its postgres store".into(),
                ))
            }
        };
        let instance = plan
            .instance(name)
            .ok_or_else(|| OpsError::unknown(name, plan))?;
        Ok((instance, db))
    }

    /// Runs a PostgreSQL tool beside the server, logged in as the store's role.
    async fn pg(
        &self,
        instance: &Instance,
        db: &Database,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<ExecOutput, OpsError> {
        let password = self.ctx.state.secrets()?.database;
        let mut argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let port = db.local.1.to_string();
        argv.extend(
            [
                "-h",
                db.local.0.as_str(),
                "-p",
                port.as_str(),
                "-U",
                db.user.as_str(),
            ]
            .map(String::from),
        );
        let exec = Exec {
            argv,
            env: vec![("PGPASSWORD".into(), password)],
            input,
        };
        let out = self.engine.exec(instance, &exec).await?;
        if out.code != 0 {
            return Err(OpsError::Store(format!(
                "{} exited with {}: {}",
                args.first().copied().unwrap_or("?"),
                out.code,
                out.stderr.trim()
            )));
        }
        Ok(out)
    }

    /// Creates every pool's database that does not exist yet.
    pub(super) async fn provision(&self, plan: &Plan, _name: &str) -> Result<(), OpsError> {
        let (instance, db) = self.database(plan)?;
        for (_, database) in &db.databases {
            let literal = database.replace('\'', "''");
            let exists = self
                .pg(
                    instance,
                    db,
                    &[
                        "psql",
                        "-X",
                        "-tA",
                        "-d",
                        "postgres",
                        "-c",
                        &format!("SELECT 1 FROM pg_database WHERE datname = '{literal}'"),
                    ],
                    None,
                )
                .await?;
            if String::from_utf8_lossy(&exists.stdout).trim() == "1" {
                continue;
            }
            let ident = database.replace('"', "\"\"");
            self.pg(
                instance,
                db,
                &[
                    "psql",
                    "-X",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    "postgres",
                    "-c",
                    &format!("CREATE DATABASE \"{ident}\""),
                ],
                None,
            )
            .await?;
            self.ui.done(&format!("database {database} created"));
        }
        Ok(())
    }

    /// `devctl backup`: a consistent dump of each pool's database (pg_dump takes one
    /// snapshot per database) and the state dir's CA, signing key and secrets.
    pub async fn backup(&self, out: &Path) -> Result<Manifest, OpsError> {
        let plan = self.ctx.plan(self.runtime)?;
        let (instance, db) = self.database(&plan)?;
        let mut stores = BTreeMap::new();
        for (pool, database) in &db.databases {
            let dump = self
                .pg(instance, db, &["pg_dump", "-Fc", "-d", database], None)
                .await?;
            self.ui.step(&format!(
                "{pool}: database {database} dumped ({} bytes)",
                dump.stdout.len()
            ));
            stores.insert(pool.clone(), dump.stdout);
        }
        let mut state = BTreeMap::new();
        for rel in STATE_FILES {
            let path = self.ctx.state.root.join(rel);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    state.insert(rel.to_string(), bytes);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(OpsError::Store(format!("{}: {source}", path.display())))
                }
            }
        }
        if let Ok(bytes) = std::fs::read(self.ctx.state.secrets_path()) {
            state.insert("secrets.json".into(), bytes);
        }
        let manifest = Manifest {
            format: FORMAT,
            deployment: plan.deployment.clone(),
            store: db.kind,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            databases: db.databases.clone(),
            devctl: env!("CARGO_PKG_VERSION").into(),
        };
        let backup = Backup {
            manifest: manifest.clone(),
            stores,
            state,
        };
        let bytes = backup.to_tar()?;
        crate::state::write_atomic(out, &bytes, true)?;
        Ok(manifest)
    }

    /// `devctl restore FILE`: each pool's database back as it was (in one transaction per
    /// database, so a failure leaves it as it is); with `state`, the CA, signing key and
    /// secrets too (the next `up` reissues certificates from the restored CA).
    pub async fn restore(&self, file: &Path, state: bool) -> Result<Manifest, OpsError> {
        let bytes =
            std::fs::read(file).map_err(|e| OpsError::Store(format!("{}: {e}", file.display())))?;
        let backup = Backup::from_tar(&bytes)?;
        let plan = self.ctx.plan(self.runtime)?;
        let (instance, db) = self.database(&plan)?;
        // Every pool in the backup must have its database here before anything changes.
        for (pool, _) in &backup.manifest.databases {
            if !db.databases.iter().any(|(p, _)| p == pool) {
                return Err(OpsError::Store(format!(
                    "the backup holds pool {pool}, which this topology does not have"
                )));
            }
        }
        self.provision(&plan, instance.name.as_str()).await?;
        for (pool, database) in &backup.manifest.databases {
            let Some(target) = db.databases.iter().find(|(p, _)| p == pool).map(|(_, d)| d) else {
                continue;
            };
            let dump = &backup.stores[pool];
            self.pg(
                instance,
                db,
                &[
                    "pg_restore",
                    "--clean",
                    "--if-exists",
                    "--no-owner",
                    "--single-transaction",
                    "--exit-on-error",
                    "-d",
                    target,
                    INPUT,
                ],
                Some(dump),
            )
            .await?;
            self.ui.step(&format!(
                "{pool}: database {target} restored (from {database})"
            ));
        }
        if state {
            self.restore_state(&backup)?;
        }
        Ok(backup.manifest)
    }

    fn restore_state(&self, backup: &Backup) -> Result<(), OpsError> {
        let root = &self.ctx.state.root;
        let mut ca_changed = false;
        for rel in STATE_FILES {
            let Some(bytes) = backup.state.get(*rel) else {
                continue;
            };
            let path = root.join(rel);
            if std::fs::read(&path).ok().as_deref() == Some(bytes.as_slice()) {
                continue;
            }
            ca_changed |= rel.starts_with("certs/");
            crate::state::write_atomic(&path, bytes, true)?;
        }
        if let Some(bytes) = backup.state.get("secrets.json") {
            self.ctx.state.restore_secrets(bytes)?;
        }
        if ca_changed {
            // Leaves from another CA are reissued by the next `up`.
            self.ctx.state.forget_leaves()?;
        }
        self.ui.warn(
            "state restored (CA, token signing key, gateway secrets): run `devctl up` to roll them out",
        );
        Ok(())
    }
}
