//! The default journal backend: one SQLite file (bundled SQLite, WAL mode,
//! `synchronous=FULL`, `secure_delete=ON`), schema versioned with `user_version` and
//! migrated forward, marked with its own `application_id` so a foreign or corrupt file
//! is refused (exit 2) and never overwritten.
//!
//! SQLite calls are short local writes made while holding a mutex; they block the
//! async executor for well under a millisecond each, which is fine for a CLI.

use super::process::ProcessId;
use super::seal::{Sealed, Sealer};
use super::{Journal, RunMeta, RunRecord, RunStatus, StepPhase, StepRecord};
use crate::aws::NewKey;
use crate::error::{Error, Result};
use crate::plan::Step;
use crate::secret::SecretKey;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// "KTRN": marks a keyturn journal.
pub const APPLICATION_ID: i32 = 0x4b54_524e;

/// Schema migrations; entry `n` takes `user_version` from `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE runs (
    run_id          TEXT PRIMARY KEY,
    account         TEXT NOT NULL,
    user_name       TEXT NOT NULL,
    status          TEXT NOT NULL,
    meta            TEXT NOT NULL,
    new_key_id      TEXT,
    new_key_created TEXT,
    sealed_scheme   TEXT,
    sealed_secret   BLOB,
    sealed_data_key BLOB,
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    error           TEXT,
    pid             INTEGER NOT NULL,
    host            TEXT NOT NULL
);
CREATE INDEX runs_by_user ON runs (account, user_name, started_at);
CREATE TABLE steps (
    run_id  TEXT NOT NULL REFERENCES runs (run_id),
    seq     INTEGER NOT NULL,
    idx     INTEGER,
    step    TEXT NOT NULL,
    key_id  TEXT,
    phase   TEXT NOT NULL,
    detail  TEXT NOT NULL,
    at      TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE locks (
    account   TEXT NOT NULL,
    user_name TEXT NOT NULL,
    run_id    TEXT NOT NULL,
    holder    TEXT NOT NULL,
    since     TEXT NOT NULL,
    PRIMARY KEY (account, user_name)
);
"#];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub struct SqliteJournal {
    conn: Mutex<Connection>,
    path: PathBuf,
    sealer: Sealer,
    me: ProcessId,
}

impl std::fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteJournal({})", self.path.display())
    }
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("format time")
}

fn parse_time(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn db(path: &Path, e: rusqlite::Error) -> Error {
    Error::Journal(format!("journal {}: {e}", path.display()))
}

/// `$XDG_STATE_HOME/keyturn/journal.sqlite`, else `~/.local/state/keyturn/journal.sqlite`.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".local/state")
        });
    base.join("keyturn/journal.sqlite")
}

impl SqliteJournal {
    /// Open (creating if absent) the journal at `path`. A file that is not a keyturn
    /// journal, or one from a newer keyturn, is refused without being modified.
    pub fn open(path: &Path, sealer: Sealer) -> Result<Self> {
        let existing = std::fs::metadata(path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        if !existing {
            if let Some(dir) = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty() && !d.exists())
            {
                // Only a directory keyturn creates is made private; an existing one
                // (say /tmp with --journal /tmp/j.sqlite) is left as it is.
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        }
        let flags = if existing {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let refuse = |what: String| {
            Error::Journal(format!(
                "{} {what}. keyturn did not change it; move it aside or choose another file with --journal",
                path.display()
            ))
        };
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| refuse(format!("cannot be opened as a journal ({e})")))?;
        // Read-only checks first: nothing is written to a file that is not ours.
        let probe = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
        let app_id = probe("PRAGMA application_id").map_err(|e| {
            refuse(format!(
                "is not a keyturn journal: {e} (corrupt, or not SQLite)"
            ))
        })?;
        let version =
            probe("PRAGMA user_version").map_err(|e| refuse(format!("is unreadable: {e}")))?;
        let tables = probe("SELECT count(*) FROM sqlite_master")
            .map_err(|e| refuse(format!("is unreadable: {e}")))?;
        let fresh = app_id == 0 && version == 0 && tables == 0;
        if !fresh && app_id != APPLICATION_ID as i64 {
            return Err(refuse(format!(
                "is an SQLite database of another application (application_id {app_id:#x}), not a keyturn journal"
            )));
        }
        if version > SCHEMA_VERSION {
            return Err(refuse(format!(
                "was written by a newer keyturn (schema {version}, this keyturn knows {SCHEMA_VERSION}); upgrade keyturn"
            )));
        }
        let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(|e| db(path, e))?;
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON;",
        )
        .map_err(|e| db(path, e))?;
        let mut conn = conn;
        for v in version..SCHEMA_VERSION {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)
                .map_err(|e| db(path, e))?;
            tx.execute_batch(MIGRATIONS[v as usize])
                .map_err(|e| db(path, e))?;
            tx.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {};",
                v + 1
            ))
            .map_err(|e| db(path, e))?;
            tx.commit().map_err(|e| db(path, e))?;
        }
        if !existing {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            sealer,
            me: ProcessId::current(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c).map_err(|e| db(&self.path, e))
    }

    fn insert_step(
        c: &Connection,
        run_id: &str,
        idx: Option<usize>,
        step: &str,
        key_id: Option<&str>,
        phase: StepPhase,
        detail: &str,
    ) -> rusqlite::Result<()> {
        let seq: i64 = c.query_row(
            "SELECT coalesce(max(seq), 0) + 1 FROM steps WHERE run_id = ?1",
            [run_id],
            |r| r.get(0),
        )?;
        c.execute(
            "INSERT INTO steps (run_id, seq, idx, step, key_id, phase, detail, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![run_id, seq, idx.map(|i| i as i64), step, key_id, phase.as_str(), detail, now()],
        )?;
        Ok(())
    }

    /// The lock row of (account, user): (run id, holder JSON, since).
    fn lock_row(
        c: &Connection,
        account: &str,
        user: &str,
    ) -> rusqlite::Result<Option<(String, String, String)>> {
        c.query_row(
            "SELECT run_id, holder, since FROM locks WHERE account = ?1 AND user_name = ?2",
            [account, user],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
    }

    /// Record an event of plan step `idx`.
    fn plan_step(
        &self,
        run_id: &str,
        idx: usize,
        step: &Step,
        phase: StepPhase,
        detail: &str,
    ) -> Result<()> {
        self.with(|c| {
            Self::insert_step(
                c,
                run_id,
                Some(idx),
                step.name(),
                step.key_id(),
                phase,
                detail,
            )
        })
    }

    /// Make `run_id` (held by `holder`) the owner of the (account, user) lock.
    fn put_lock(
        c: &Connection,
        account: &str,
        user: &str,
        run_id: &str,
        holder: &str,
    ) -> rusqlite::Result<()> {
        c.execute(
            "INSERT OR REPLACE INTO locks (account, user_name, run_id, holder, since) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![account, user, run_id, holder, now()],
        )
        .map(|_| ())
    }

    fn holder_json(&self) -> String {
        serde_json::to_string(&self.me).expect("serialize process id")
    }

    /// Decide whether the lock row (run, holder, since) blocks `wanted_run`.
    fn check_holder(
        c: &Connection,
        account: &str,
        user: &str,
        held_by: &str,
        holder: &str,
        since: &str,
    ) -> std::result::Result<(), String> {
        let holder: ProcessId = serde_json::from_str(holder).unwrap_or(ProcessId {
            pid: 0,
            host: "unknown".into(),
            start: None,
        });
        if holder.is_alive() {
            return Err(format!(
                "user {user} (account {account}) is being rotated by run {held_by} (pid {} on {}, since {since}); wait for it to finish",
                holder.pid, holder.host
            ));
        }
        let status: Option<String> = c
            .query_row(
                "SELECT status FROM runs WHERE run_id = ?1",
                [held_by],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or(None);
        if status.as_deref() == Some(RunStatus::Running.as_str()) {
            return Err(format!(
                "run {held_by} of user {user} (account {account}) was interrupted (pid {} is gone); finish it first with `keyturn resume {held_by}`",
                holder.pid
            ));
        }
        if status.as_deref() == Some(RunStatus::Incomplete.as_str()) {
            return Err(format!(
                "run {held_by} of user {user} (account {account}) stopped with work left (see `keyturn history --user {user}`); finish it first with `keyturn resume {held_by}`"
            ));
        }
        tracing::info!(
            "taking over the lock of finished run {held_by} (pid {} is gone)",
            holder.pid
        );
        Ok(())
    }

    fn row_to_record(&self, c: &Connection, row: RunRow) -> rusqlite::Result<RunRecord> {
        let mut stmt = c.prepare_cached(
            "SELECT seq, idx, step, key_id, phase, detail, at FROM steps WHERE run_id = ?1 ORDER BY seq",
        )?;
        let steps = stmt
            .query_map([&row.run_id], |r| {
                Ok(StepRecord {
                    seq: r.get::<_, i64>(0)? as u32,
                    index: r.get::<_, Option<i64>>(1)?.map(|i| i as usize),
                    step: r.get(2)?,
                    access_key_id: r.get(3)?,
                    phase: StepPhase::parse(&r.get::<_, String>(4)?).unwrap_or(StepPhase::Note),
                    detail: r.get(5)?,
                    at: parse_time(&r.get::<_, String>(6)?),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let meta: RunMeta = serde_json::from_str(&row.meta).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })?;
        Ok(RunRecord {
            meta,
            status: RunStatus::parse(&row.status).unwrap_or(RunStatus::Failed),
            new_key_id: row.new_key_id,
            new_key_created: row.new_key_created.as_deref().map(parse_time),
            holds_secret: row.holds_secret,
            finished_at: row.finished_at.as_deref().map(parse_time),
            error: row.error,
            steps,
        })
    }

    fn select_runs(&self, filter: &str, arg: Option<&str>) -> Result<Vec<RunRecord>> {
        self.with(|c| {
            let sql = format!(
                "SELECT run_id, status, meta, new_key_id, sealed_secret IS NOT NULL, finished_at, error, new_key_created FROM runs {filter} ORDER BY started_at DESC, run_id DESC"
            );
            let rows: Vec<RunRow> = {
                let mut stmt = c.prepare(&sql)?;
                let map = |r: &rusqlite::Row<'_>| {
                    Ok(RunRow {
                        run_id: r.get(0)?,
                        status: r.get(1)?,
                        meta: r.get(2)?,
                        new_key_id: r.get(3)?,
                        holds_secret: r.get(4)?,
                        finished_at: r.get(5)?,
                        error: r.get(6)?,
                        new_key_created: r.get(7)?,
                    })
                };
                match arg {
                    Some(a) => stmt.query_map([a], map)?.collect::<rusqlite::Result<_>>()?,
                    None => stmt.query_map([], map)?.collect::<rusqlite::Result<_>>()?,
                }
            };
            rows.into_iter().map(|r| self.row_to_record(c, r)).collect()
        })
    }
}

struct RunRow {
    run_id: String,
    status: String,
    meta: String,
    new_key_id: Option<String>,
    holds_secret: bool,
    finished_at: Option<String>,
    error: Option<String>,
    new_key_created: Option<String>,
}

fn aad(run_id: &str, key_id: &str) -> Vec<u8> {
    format!("keyturn/{run_id}/{key_id}").into_bytes()
}

impl Journal for SqliteJournal {
    async fn lock(&self, account: &str, user: &str, run_id: &str) -> Result<()> {
        let holder = self.holder_json();
        let blocked = self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing = Self::lock_row(&tx, account, user)?;
            if let Some((held_by, h, since)) = existing {
                if let Err(msg) = Self::check_holder(&tx, account, user, &held_by, &h, &since) {
                    return Ok(Some(msg));
                }
            }
            Self::put_lock(&tx, account, user, run_id, &holder)?;
            tx.commit()?;
            Ok(None)
        })?;
        blocked.map_or(Ok(()), |msg| Err(Error::Locked(msg)))
    }

    async fn unlock(&self, account: &str, user: &str, run_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM locks WHERE account = ?1 AND user_name = ?2 AND run_id = ?3",
                [account, user, run_id],
            )
            .map(|_| ())
        })
    }

    async fn take_over(&self, run_id: &str) -> Result<()> {
        let holder = self.holder_json();
        let me = self.me.clone();
        let blocked = self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some((account, user)): Option<(String, String)> = tx
                .query_row(
                    "SELECT account, user_name FROM runs WHERE run_id = ?1",
                    [run_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
            else {
                return Ok(Some(format!("no run {run_id} in the journal")));
            };
            let existing = Self::lock_row(&tx, &account, &user)?;
            if let Some((held_by, h, since)) = existing {
                let p: Option<ProcessId> = serde_json::from_str(&h).ok();
                let alive = p.as_ref().is_some_and(|p| p.is_alive() && *p != me);
                if alive {
                    let p = p.expect("checked");
                    return Ok(Some(format!(
                        "run {held_by} of user {user} is still running (pid {} on {}, since {since}); wait for it",
                        p.pid, p.host
                    )));
                }
            }
            Self::put_lock(&tx, &account, &user, run_id, &holder)?;
            tx.execute(
                "UPDATE runs SET pid = ?2, host = ?3 WHERE run_id = ?1",
                params![run_id, me.pid, me.host],
            )?;
            Self::insert_step(&tx, run_id, None, "resume", None, StepPhase::Note, &format!("resumed by pid {}", me.pid))?;
            tx.commit()?;
            Ok(None)
        })?;
        blocked.map_or(Ok(()), |msg| Err(Error::Locked(msg)))
    }

    async fn begin(&self, meta: &RunMeta) -> Result<()> {
        let json = serde_json::to_string(meta).map_err(|e| Error::Runtime(e.to_string()))?;
        let started = meta.started_at.format(&Rfc3339).expect("format time");
        let me = self.me.clone();
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (run_id, account, user_name, status, meta, started_at, pid, host) VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7)",
                params![meta.run_id, meta.account, meta.user_name, json, started, me.pid, me.host],
            )
            .map(|_| ())
        })?;
        crate::failpoint::hit("begin");
        Ok(())
    }

    async fn intent(&self, run_id: &str, idx: usize, step: &Step) -> Result<()> {
        self.plan_step(run_id, idx, step, StepPhase::Intent, step.reason())
    }

    async fn done(
        &self,
        run_id: &str,
        idx: usize,
        step: &Step,
        ok: bool,
        detail: &str,
    ) -> Result<()> {
        let phase = if ok {
            StepPhase::Done
        } else {
            StepPhase::Failed
        };
        self.plan_step(run_id, idx, step, phase, detail)
    }

    async fn key_created(&self, run_id: &str, idx: usize, key: &NewKey) -> Result<()> {
        let sealed = self
            .sealer
            .seal(
                key.secret.expose().as_bytes(),
                &aad(run_id, &key.access_key_id),
            )
            .await?;
        let created = key.create_date.format(&Rfc3339).expect("format time");
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE runs SET new_key_id = ?2, new_key_created = ?3, sealed_scheme = ?4, sealed_secret = ?5, sealed_data_key = ?6 WHERE run_id = ?1",
                params![run_id, key.access_key_id, created, sealed.scheme, sealed.blob, sealed.wrapped_key],
            )?;
            Self::insert_step(
                &tx,
                run_id,
                Some(idx),
                "create-key",
                Some(&key.access_key_id),
                StepPhase::Done,
                &format!("created {} (secret sealed in the journal, {})", key.access_key_id, sealed.scheme),
            )?;
            tx.commit()
        })
    }

    async fn delivered(&self, run_id: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE runs SET sealed_scheme = NULL, sealed_secret = NULL, sealed_data_key = NULL WHERE run_id = ?1",
                [run_id],
            )?;
            Self::insert_step(&tx, run_id, None, "deliver", None, StepPhase::Note, "every output has the new key; sealed secret erased")?;
            tx.commit()
        })
    }

    async fn finish(&self, run_id: &str, status: RunStatus, error: Option<&str>) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE runs SET status = ?2, finished_at = ?3, error = ?4 WHERE run_id = ?1",
                params![run_id, status.as_str(), now(), error],
            )?;
            // An incomplete run keeps the user locked until `resume` finishes it.
            if status != RunStatus::Incomplete {
                tx.execute("DELETE FROM locks WHERE run_id = ?1", [run_id])?;
            }
            tx.commit()
        })
    }

    async fn note(&self, run_id: &str, step: &str, ok: bool, detail: &str) -> Result<()> {
        let detail = if ok {
            detail.to_string()
        } else {
            format!("FAILED: {detail}")
        };
        self.with(|c| Self::insert_step(c, run_id, None, step, None, StepPhase::Note, &detail))
    }

    async fn runs(&self, user: Option<&str>) -> Result<Vec<RunRecord>> {
        match user {
            Some(u) => self.select_runs("WHERE user_name = ?1", Some(u)),
            None => self.select_runs("", None),
        }
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        Ok(self
            .select_runs("WHERE run_id = ?1", Some(run_id))?
            .into_iter()
            .next())
    }

    async fn secret(&self, run_id: &str) -> Result<Option<SecretKey>> {
        type SealedRow = (String, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);
        let row: Option<SealedRow> = self.with(|c| {
            c.query_row(
                "SELECT coalesce(new_key_id, ''), sealed_scheme, sealed_secret, sealed_data_key FROM runs WHERE run_id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
        })?;
        let Some((key_id, Some(scheme), Some(blob), wrapped_key)) = row else {
            return Ok(None);
        };
        let sealed = Sealed {
            scheme,
            blob,
            wrapped_key,
        };
        let plain = self.sealer.open(&sealed, &aad(run_id, &key_id)).await?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| Error::Journal("the journaled secret is not text".into()))?;
        Ok(Some(SecretKey::new(text)))
    }
}
