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

fn db_word(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::Sqlite => "SQLite",
        StoreKind::Postgres => "PostgreSQL",
    }
}

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
                    "the topology keeps its data in SQLite: no database server to work on".into(),
                ))
            }
        };
        let instance = plan
            .instance(name)
            .ok_or_else(|| OpsError::unknown(name, plan))?;
        Ok((instance, db))
    }

    /// A running replica of `pool` (the SQLite store is reached through one of them).
    async fn running_replica<'p>(
        &self,
        plan: &'p Plan,
        pool: &str,
    ) -> Result<&'p Instance, OpsError> {
        for i in plan.instances.iter().filter(|i| i.role == pool) {
            if let Some(o) = self.engine.observe_one(&i.name).await {
                if o.state == crate::engine::State::Running {
                    return Ok(i);
                }
            }
        }
        Err(OpsError::Store(format!(
            "no replica of {pool} is running to reach its store: `devctl up` first"
        )))
    }

    /// Runs `exec` beside `instance`; a non-zero exit is an error with the tool's words.
    async fn checked(&self, instance: &Instance, exec: Exec<'_>) -> Result<ExecOutput, OpsError> {
        let out = self.engine.exec(instance, &exec).await?;
        if out.code != 0 {
            // The program and its subcommand, if any (`psql`, `admin-server backup-store`).
            let what: Vec<&str> = exec
                .argv
                .iter()
                .take(2)
                .map(String::as_str)
                .take_while(|a| !a.starts_with('-'))
                .collect();
            return Err(OpsError::Store(format!(
                "{} on {} exited with {}: {}",
                what.join(" "),
                instance.name,
                out.code,
                out.stderr.trim()
            )));
        }
        Ok(out)
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
        self.checked(instance, exec).await
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
        let db = &plan.store;
        let mut stores = BTreeMap::new();
        for (pool, database) in &db.databases {
            let dump = if db.kind == StoreKind::Sqlite {
                let replica = self.running_replica(&plan, pool).await?;
                self.checked(
                    replica,
                    Exec {
                        argv: vec![replica.binary.clone(), "backup-store".into()],
                        env: Vec::new(),
                        input: None,
                    },
                )
                .await?
            } else {
                let (instance, db) = self.database(&plan)?;
                self.pg(instance, db, &["pg_dump", "-Fc", "-d", database], None)
                    .await?
            };
            self.ui.step(&format!(
                "{pool}: {} store copied ({} bytes)",
                db_word(db.kind),
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
        let db = &plan.store;
        if backup.manifest.store != db.kind {
            return Err(OpsError::Store(format!(
                "the backup holds {} stores and this topology keeps {}: restore it into a topology with the same [store] kind",
                db_word(backup.manifest.store),
                db_word(db.kind)
            )));
        }
        // Every pool in the backup must have its database here before anything changes.
        for (pool, _) in &backup.manifest.databases {
            if !db.databases.iter().any(|(p, _)| p == pool) {
                return Err(OpsError::Store(format!(
                    "the backup holds pool {pool}, which this topology does not have"
                )));
            }
        }
        if db.kind == StoreKind::Sqlite {
            for (pool, _) in &backup.manifest.databases {
                let replica = self.running_replica(&plan, pool).await?;
                let copy = &backup.stores[pool];
                self.checked(
                    replica,
                    Exec {
                        argv: vec![
                            replica.binary.clone(),
                            "restore-store".into(),
                            "--from".into(),
                            INPUT.into(),
                        ],
                        env: Vec::new(),
                        input: Some(copy),
                    },
                )
                .await?;
                self.ui.step(&format!("{pool}: SQLite store restored"));
            }
            if state {
                self.restore_state(&backup)?;
            }
            return Ok(backup.manifest);
        }
        let (instance, db) = self.database(&plan)?;
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
