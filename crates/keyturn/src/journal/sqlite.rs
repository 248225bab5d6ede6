//! The default journal backend: one SQLite file (bundled SQLite, WAL mode,
//! `synchronous=FULL`, `secure_delete=ON`), schema versioned with `user_version` and
//! migrated forward, marked with its own `application_id` so a foreign or corrupt file
//! is refused (exit 2) and never overwritten.
//!
//! The connection lives on a dedicated journal thread: every call is sent there and
//! awaited, so no SQLite call (each an fsync) ever blocks an async executor thread,
//! and a fleet run's many tasks share one connection in order.
//!
//! Failures are classified: a full disk, a read-only file or an I/O error is
//! [`Error::JournalIo`] (exit 1: the journal is intact, retry or resume later); a file
//! that is not a keyturn journal, is damaged or is planted by another user is
//! [`Error::Journal`] (exit 2). Files are checked before SQLite opens them (see
//! [`super::perms`]) and created 0600.

use super::lease::{self, Clock, Holder, Lease};
use super::perms::{self, with_suffix};
use super::seal::{self, DataKey, Sealed, Sealer};
use super::{Journal, JournalOptions, RunMeta, RunRecord, RunStatus, StepPhase, StepRecord};
use crate::aws::NewKey;
use crate::error::{Error, JournalIoKind, Result};
use crate::plan::Step;
use crate::secret::SecretKey;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// "KTRN": marks a keyturn journal.
pub const APPLICATION_ID: i32 = 0x4b54_524e;

/// Schema migrations; entry `n` takes `user_version` from `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    // 2: room for the new key's sealed secret, reserved before CreateAccessKey.
    r#"
ALTER TABLE runs ADD COLUMN reserved BLOB;
CREATE TABLE pad (b BLOB);
"#,
    // 3: locks become leases. Rows of an older keyturn never expire (their holder's
    // pid decides, as it did).
    r#"
ALTER TABLE locks ADD COLUMN expires TEXT NOT NULL DEFAULT '9999-12-31T23:59:59Z';
ALTER TABLE locks ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
"#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Bytes held in a run's row until its key is created: more than the sealed secret,
/// key id, dates, scheme and a KMS-wrapped data key take, so recording the key only
/// shrinks the row.
const RESERVED_ROW_BYTES: i64 = 1024;
/// Bytes written and freed again when reserving, so the WAL file and the database's
/// free list have room for the rest of the run without growing either file.
const RESERVED_PAD_BYTES: i64 = 128 * 1024;

/// How the journal is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// rotate, resume, rollback: creates the journal if absent.
    ReadWrite,
    /// history: never writes, works on a read-only file or mount and on a full disk;
    /// an absent journal reads as empty.
    ReadOnly,
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

pub struct SqliteJournal {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
    sealer: Sealer,
    me: Holder,
    lease: std::time::Duration,
    clock: Clock,
    /// Data keys fetched by `reserve_secret`, by run id.
    reserved: Mutex<HashMap<String, DataKey>>,
}

impl std::fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteJournal({})", self.path.display())
    }
}

impl Drop for SqliteJournal {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which closes the connection (SQLite
        // then checkpoints and removes -wal/-shm).
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now() -> String {
    fmt_time(OffsetDateTime::now_utc())
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format time")
}

fn parse_time(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Classify an SQLite failure while `op` on the journal at `path`.
pub(crate) fn classify(path: &Path, op: &str, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    let loc = path.display().to_string();
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        let text = match msg {
            Some(m) => m.clone(),
            None => f.to_string(),
        };
        let kind = match f.code {
            C::DiskFull => Some(JournalIoKind::Full),
            C::ReadOnly => Some(JournalIoKind::ReadOnly),
            C::SystemIoFailure
            | C::CannotOpen
            | C::PermissionDenied
            | C::NoLargeFileSupport
            | C::OutOfMemory
            | C::FileLockingProtocolFailed => Some(JournalIoKind::Io),
            C::DatabaseBusy | C::DatabaseLocked => Some(JournalIoKind::Busy),
            _ => None,
        };
        if let Some(mut kind) = kind {
            let mut detail = format!("{text} (SQLite error {})", f.extended_code);
            if matches!(kind, JournalIoKind::Full | JournalIoKind::Io) {
                let hint = perms::space_hint(&perms::dir_of(path));
                if !hint.is_empty() {
                    kind = JournalIoKind::Full;
                }
                detail.push_str(&hint);
            }
            if kind == JournalIoKind::ReadOnly && !detail.contains("read-only") {
                detail = format!("the journal is read-only: {detail}");
            }
            return Error::journal_io(loc, op, kind, detail);
        }
        match f.code {
            C::ConstraintViolation => {
                return Error::Locked(format!(
                    "journal {loc}: {op} conflicts with another writer ({text}); retry"
                ))
            }
            C::DatabaseCorrupt | C::NotADatabase => {
                return Error::Journal(format!(
                    "journal {loc} is damaged ({text}) while {op}; keyturn did not change it; `keyturn history` shows what it can still read"
                ))
            }
            _ => {}
        }
    }
    Error::Journal(format!("journal {loc}: {op}: {e}"))
}

/// `SQLITE_FULL`, as injected by the `journal-full-after:N` failpoint.
fn injected_full(n: u64) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
        Some(format!(
            "database or disk is full (failpoint journal-full-after:{n})"
        )),
    )
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

/// The journal thread's state.
struct Worker {
    conn: Connection,
    path: PathBuf,
    key_file: Option<PathBuf>,
    local_key: Option<DataKey>,
    /// Journal writes so far (for the `journal-full-after:N` failpoint).
    writes: u64,
    full_after: Option<u64>,
}

impl Worker {
    fn open(path: &Path, access: Access, key_file: Option<PathBuf>) -> Result<Worker> {
        let rw = access == Access::ReadWrite;
        let dir = perms::dir_of(path);
        match std::fs::metadata(&dir) {
            Ok(m) => {
                if let Some(p) = perms::problem(&dir, perms::Facts::of(&m), perms::euid(), false) {
                    return Err(perms::refuse(p));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rw => {
                // A directory keyturn creates is private; an existing one is only
                // checked (above), never changed.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| perms::io_error(&dir, "creating the journal directory", &e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Worker::empty(path, key_file);
            }
            Err(e) => return Err(perms::io_error(&dir, "opening the journal directory", &e)),
        }
        let exists = perms::check_existing(path, false)?;
        for suffix in ["-wal", "-shm"] {
            perms::check_existing(&with_suffix(path, suffix), false)?;
        }
        if let Some(k) = &key_file {
            perms::check_existing(k, true)?;
        }
        if !exists && !rw {
            return Worker::empty(path, key_file);
        }
        if rw {
            if let Some(why) = read_only_reason(&dir, path, exists) {
                return Err(Error::journal_io(
                    path.display().to_string(),
                    "opening the journal for writing",
                    JournalIoKind::ReadOnly,
                    why,
                ));
            }
        }
        let _umask = perms::UmaskGuard::private();
        if rw {
            prepare_file(path, exists)?;
        }
        let refuse = |what: String| {
            Error::Journal(format!(
                "{} {what}. keyturn did not change it; move it aside or choose another file with --journal",
                path.display()
            ))
        };
        let op = "opening";
        let not_ours = |e: rusqlite::Error| {
            let text = e.to_string();
            match classify(path, op, e) {
                Error::Journal(_) => refuse(format!(
                    "is not a keyturn journal: {text} (corrupt, or not SQLite)"
                )),
                other => other,
            }
        };
        let conn = match access {
            Access::ReadWrite => Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
            Access::ReadOnly => open_read_only(path),
        }
        .map_err(not_ours)?;
        // Read-only checks first: nothing is written to a file that is not ours.
        let probe = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
        let app_id = probe("PRAGMA application_id").map_err(not_ours)?;
        let version = probe("PRAGMA user_version").map_err(not_ours)?;
        let tables = probe("SELECT count(*) FROM sqlite_master").map_err(not_ours)?;
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
        let mut w = Worker {
            conn,
            path: path.to_path_buf(),
            key_file,
            local_key: None,
            writes: 0,
            full_after: crate::failpoint::arg("journal-full-after").and_then(|n| n.parse().ok()),
        };
        if !rw {
            if fresh {
                return Worker::empty(path, w.key_file.take());
            }
            return Ok(w);
        }
        if w.conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(Error::journal_io(
                path.display().to_string(),
                "opening the journal for writing",
                JournalIoKind::ReadOnly,
                "the journal is read-only (SQLite could open it for reading only)",
            ));
        }
        let _ = w.conn.busy_timeout(std::time::Duration::from_secs(5));
        w.conn
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(|e| classify(path, op, e))?;
        w.conn
            .execute_batch(
                "PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON;",
            )
            .map_err(|e| classify(path, op, e))?;
        w.migrate(version)?;
        Ok(w)
    }

    /// A journal with no runs (read-only access to a journal that does not exist).
    fn empty(path: &Path, key_file: Option<PathBuf>) -> Result<Worker> {
        let conn = Connection::open_in_memory().map_err(|e| classify(path, "opening", e))?;
        let mut w = Worker {
            conn,
            path: path.to_path_buf(),
            key_file,
            local_key: None,
            writes: 0,
            full_after: None,
        };
        w.migrate(0)?;
        Ok(w)
    }

    fn migrate(&mut self, from: i64) -> Result<()> {
        let path = self.path.clone();
        let op = "migrating the journal schema";
        for v in from..SCHEMA_VERSION {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)
                .map_err(|e| classify(&path, op, e))?;
            tx.execute_batch(MIGRATIONS[v as usize])
                .map_err(|e| classify(&path, op, e))?;
            tx.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {};",
                v + 1
            ))
            .map_err(|e| classify(&path, op, e))?;
            tx.commit().map_err(|e| classify(&path, op, e))?;
        }
        Ok(())
    }

    /// A journal write: counted for the `journal-full-after:N` failpoint, classified.
    fn write<T>(
        &mut self,
        op: &str,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        self.writes += 1;
        if let Some(n) = self.full_after.filter(|n| self.writes > *n) {
            return Err(classify(&self.path, op, injected_full(n)));
        }
        f(&mut self.conn).map_err(|e| classify(&self.path, op, e))
    }

    fn read<T>(
        &mut self,
        op: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        f(&self.conn).map_err(|e| classify(&self.path, op, e))
    }

    /// The local sealing key (created on first use when `create`).
    fn local_key(&mut self, create: bool) -> Result<DataKey> {
        if let Some(k) = &self.local_key {
            return Ok(k.clone());
        }
        let file = self
            .key_file
            .clone()
            .ok_or_else(|| Error::Runtime("this journal seals with KMS".into()))?;
        let k = seal::local_key(&file, create)?;
        self.local_key = Some(k.clone());
        Ok(k)
    }

    /// Make sure recording run `run_id`'s new key later needs no new space: the row
    /// holds [`RESERVED_ROW_BYTES`], and a padding row of [`RESERVED_PAD_BYTES`] is
    /// written and freed again (the WAL keeps its size and the database keeps the
    /// freed pages); then a RESTART checkpoint makes the next writes reuse the WAL
    /// from its start. Part of the same write as the create-key intent, when given.
    fn reserve(
        &mut self,
        run_id: &str,
        intent: Option<(usize, &Step)>,
        fence: impl FnOnce(&Connection) -> rusqlite::Result<std::result::Result<(), String>>,
    ) -> Result<std::result::Result<(), String>> {
        if self.key_file.is_some() {
            self.local_key(true)?;
        }
        let op = "reserving room for the new key's secret";
        let fenced = self.write(op, |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Err(msg) = fence(&tx)? {
                return Ok(Err(msg));
            }
            if let Some((idx, step)) = intent {
                insert_step(
                    &tx,
                    run_id,
                    Some(idx),
                    step.name(),
                    step.key_id(),
                    StepPhase::Intent,
                    step.reason(),
                )?;
            }
            tx.execute(
                "UPDATE runs SET reserved = zeroblob(?2) WHERE run_id = ?1",
                params![run_id, RESERVED_ROW_BYTES],
            )?;
            tx.execute(
                "INSERT INTO pad (b) VALUES (zeroblob(?1))",
                [RESERVED_PAD_BYTES],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        })?;
        if fenced.is_err() {
            return Ok(fenced);
        }
        self.conn
            .execute("DELETE FROM pad", [])
            .map_err(|e| classify(&self.path, op, e))?;
        // Busy readers only make the checkpoint partial; the room is still there.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
        #[cfg(feature = "failpoints")]
        if crate::failpoint::arg("journal-full-after-reserve").is_some() {
            self.freeze_size();
        }
        Ok(Ok(()))
    }

    /// Failpoint `journal-full-after-reserve`: from now on no file of this process may
    /// grow past the journal's current WAL size, as if the disk had filled up.
    #[cfg(feature = "failpoints")]
    fn freeze_size(&self) {
        let wal = std::fs::metadata(with_suffix(&self.path, "-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
        // SAFETY: plain libc calls; SIGXFSZ is ignored so writes fail with EFBIG.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: wal,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
        }
        eprintln!(
            "keyturn: failpoint journal-full-after-reserve: files may not grow past {wal} bytes"
        );
    }
}

/// Why the journal cannot be opened for writing, if it cannot.
fn read_only_reason(dir: &Path, db: &Path, exists: bool) -> Option<String> {
    if perms::read_only_fs(dir) {
        return Some(format!(
            "the journal is read-only: {} is on a read-only file system",
            dir.display()
        ));
    }
    let files: Vec<PathBuf> = if exists {
        std::iter::once(db.to_path_buf())
            .chain(["-wal", "-shm"].iter().map(|s| with_suffix(db, s)))
            .filter(|p| p.exists())
            .collect()
    } else {
        vec![dir.to_path_buf()]
    };
    files.into_iter().find(|p| !perms::writable(p)).map(|p| {
        let mode = std::fs::metadata(&p)
            .map(|m| format!(" (mode {:04o})", m.permissions().mode() & 0o7777))
            .unwrap_or_default();
        format!(
            "the journal is read-only: you may not write {}{mode}",
            p.display()
        )
    })
}

/// Create the database file 0600 (so the -wal and -shm files SQLite creates, which
/// copy its mode, are 0600 too), or tighten an existing one of ours to 0600.
fn prepare_file(path: &Path, exists: bool) -> Result<()> {
    if !exists {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Created meanwhile: check it like any existing file.
                perms::check_existing(path, false)?;
            }
            Err(e) => return Err(perms::io_error(path, "creating the journal", &e)),
        }
    }
    let meta = std::fs::metadata(path).map_err(|e| perms::io_error(path, "opening", &e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() == perms::euid() {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
    }
    Ok(())
}

/// Open for reading only. Reading a WAL journal needs its -shm file; where that can be
/// neither opened nor created (a read-only directory, a full disk), the file is read as
/// immutable, which is exact as long as there is no WAL content it would miss.
fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let plain = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|c| {
        c.query_row("PRAGMA application_id", [], |_| Ok(()))?;
        Ok(c)
    });
    let err = match plain {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let io_class = matches!(
        err.sqlite_error_code(),
        Some(
            rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::ReadOnly
                | rusqlite::ErrorCode::DiskFull
        )
    );
    let wal_empty = std::fs::metadata(with_suffix(path, "-wal")).map_or(true, |m| m.len() == 0);
    if !(io_class && wal_empty) {
        return Err(err);
    }
    let mut uri = String::from("file:");
    for ch in path.to_string_lossy().chars() {
        match ch {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
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

/// The lease of (account, user).
fn read_lease(c: &Connection, account: &str, user: &str) -> rusqlite::Result<Option<Lease>> {
    c.query_row(
        "SELECT run_id, holder, since, expires, version FROM locks WHERE account = ?1 AND user_name = ?2",
        [account, user],
        |r| {
            Ok(Lease {
                account: account.to_string(),
                user: user.to_string(),
                run_id: r.get(0)?,
                holder: Holder::parse(&r.get::<_, String>(1)?),
                since: parse_time(&r.get::<_, String>(2)?),
                expires: parse_time(&r.get::<_, String>(3)?),
                version: r.get::<_, i64>(4)? as u64,
            })
        },
    )
    .optional()
}

/// A lease to write: `run_id` held by `me` from `now` for `lease`, at `version`.
struct Grant<'a> {
    run_id: &'a str,
    me: &'a Holder,
    now: OffsetDateTime,
    lease: std::time::Duration,
    version: u64,
}

/// Give the (account, user) lease as `g` says.
fn put_lease(c: &Connection, account: &str, user: &str, g: Grant<'_>) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR REPLACE INTO locks (account, user_name, run_id, holder, since, expires, version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            account,
            user,
            g.run_id,
            g.me.to_json(),
            fmt_time(g.now),
            fmt_time(g.now + g.lease),
            g.version as i64
        ],
    )
    .map(|_| ())
}

fn run_status(c: &Connection, run_id: &str) -> rusqlite::Result<Option<RunStatus>> {
    Ok(
        c.query_row("SELECT status FROM runs WHERE run_id = ?1", [run_id], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .map(|s| RunStatus::parse(&s).unwrap_or(RunStatus::Failed)),
    )
}

fn run_user(c: &Connection, run_id: &str) -> rusqlite::Result<Option<(String, String)>> {
    c.query_row(
        "SELECT account, user_name FROM runs WHERE run_id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// The fence of every write to run `run_id`: this journal must hold the lease of the
/// run's user. Renews the lease. `Err` says who holds it instead.
fn fence(
    c: &Connection,
    run_id: &str,
    me: &Holder,
    now: OffsetDateTime,
    lease: std::time::Duration,
) -> rusqlite::Result<std::result::Result<(), String>> {
    let Some((account, user)) = run_user(c, run_id)? else {
        return Ok(Err(format!("no run {run_id} in the journal")));
    };
    match read_lease(c, &account, &user)? {
        Some(l) if l.held_by(me) => {
            c.execute(
                "UPDATE locks SET expires = ?3, version = version + 1 WHERE account = ?1 AND user_name = ?2",
                params![account, user, fmt_time(now + lease)],
            )?;
            Ok(Ok(()))
        }
        Some(l) => Ok(Err(lost(run_id, &user, Some(&l)))),
        None => Ok(Err(lost(run_id, &user, None))),
    }
}

/// "This process no longer holds the lease" (it was taken over, or released).
pub(crate) fn lost(run_id: &str, user: &str, now_held: Option<&Lease>) -> String {
    let by = match now_held {
        Some(l) => format!(
            "it is held by run {} ({}) now",
            l.run_id,
            l.holder.describe()
        ),
        None => "nobody holds it now".to_string(),
    };
    format!(
        "run {run_id}: this process no longer holds the lease of user {user} ({by}); another process took the run over, so this one stops here"
    )
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

fn row_to_record(c: &Connection, row: RunRow) -> rusqlite::Result<RunRecord> {
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

fn select_runs(
    c: &Connection,
    filter: &str,
    arg: Option<&str>,
) -> rusqlite::Result<Vec<RunRecord>> {
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
    rows.into_iter().map(|r| row_to_record(c, r)).collect()
}

fn aad(run_id: &str, key_id: &str) -> Vec<u8> {
    format!("keyturn/{run_id}/{key_id}").into_bytes()
}

impl SqliteJournal {
    /// Open (creating if absent) the journal at `path` for writing. A file that is not
    /// a keyturn journal, one from a newer keyturn, or one another user could have
    /// planted is refused without being modified (exit 2); a journal that cannot be
    /// written (read-only, full) is a [`Error::JournalIo`] (exit 1).
    pub async fn open(path: &Path, sealer: Sealer) -> Result<Self> {
        Self::open_with(path, sealer, Access::ReadWrite, JournalOptions::default()).await
    }

    /// Open the journal for reading only (`history`).
    pub async fn open_read_only(path: &Path, sealer: Sealer) -> Result<Self> {
        Self::open_with(path, sealer, Access::ReadOnly, JournalOptions::default()).await
    }

    pub async fn open_with(
        path: &Path,
        sealer: Sealer,
        access: Access,
        options: JournalOptions,
    ) -> Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let p = path.to_path_buf();
        let key_file = sealer.key_file().map(Path::to_path_buf);
        let thread = std::thread::Builder::new()
            .name("keyturn-journal".into())
            .spawn(move || match Worker::open(&p, access, key_file) {
                Ok(mut w) => {
                    let _ = ready_tx.send(Ok(()));
                    while let Ok(job) = rx.recv() {
                        job(&mut w);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::io("starting the journal thread", e))?;
        let mut j = Self {
            jobs: Some(jobs),
            thread: Some(thread),
            path: path.to_path_buf(),
            sealer,
            me: Holder::current(),
            lease: options.lease,
            clock: options.clock,
            reserved: Mutex::new(HashMap::new()),
        };
        let opened = ready_rx.await.unwrap_or_else(|_| {
            Err(Error::Runtime(
                "the journal thread stopped while opening".into(),
            ))
        });
        if let Err(e) = opened {
            j.jobs.take();
            if let Some(t) = j.thread.take() {
                let _ = t.join();
            }
            return Err(e);
        }
        Ok(j)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who this journal writes as.
    pub fn holder(&self) -> &Holder {
        &self.me
    }

    /// Run `f` on the journal thread and await its result.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Worker) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |w| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(w)))
                .unwrap_or_else(|_| Err(Error::Runtime("the journal thread panicked".into())));
            let _ = tx.send(r);
        });
        let gone = || Error::Runtime("the journal thread is gone".into());
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A fenced write to run `run_id` on the journal thread (see [`fence`]).
    async fn run_write<T: Send + 'static>(
        &self,
        op: &'static str,
        run_id: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (me, clock, lease, run_id) = (
            self.me.clone(),
            self.clock.clone(),
            self.lease,
            run_id.to_string(),
        );
        self.call(move |w| {
            w.write(op, |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if let Err(msg) = fence(&tx, &run_id, &me, clock.now(), lease)? {
                    return Ok(Err(msg));
                }
                let v = f(&tx)?;
                tx.commit()?;
                Ok(Ok(v))
            })
        })
        .await?
        .map_err(Error::Locked)
    }

    /// Record an event of plan step `idx`.
    async fn plan_step(
        &self,
        run_id: &str,
        idx: usize,
        step: &Step,
        phase: StepPhase,
        detail: &str,
    ) -> Result<()> {
        let (id, name, key_id, detail) = (
            run_id.to_string(),
            step.name(),
            step.key_id().map(str::to_string),
            detail.to_string(),
        );
        let op = match phase {
            StepPhase::Intent => "recording the intent of a step",
            _ => "recording the result of a step",
        };
        self.run_write(op, run_id, move |c| {
            insert_step(c, &id, Some(idx), name, key_id.as_deref(), phase, &detail)
        })
        .await
    }

    /// The data key to seal run `run_id`'s new secret with.
    async fn sealing_key(&self, run_id: &str) -> Result<DataKey> {
        if let Some(k) = self
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run_id)
        {
            return Ok(k);
        }
        match &self.sealer {
            Sealer::Local { .. } => self.call(|w| w.local_key(true)).await,
            Sealer::Kms { .. } => self.sealer.kms_data_key().await,
        }
    }

    /// Fetch the sealing key ahead (KMS: a data key now, so sealing later needs no
    /// KMS call), then reserve room in the row, with `intent` in the same write.
    async fn reserve_with(&self, run_id: &str, intent: Option<(usize, Step)>) -> Result<()> {
        if matches!(self.sealer, Sealer::Kms { .. }) {
            let k = self.sealer.kms_data_key().await?;
            self.reserved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(run_id.to_string(), k);
        }
        let (run_id, me, clock, lease) = (
            run_id.to_string(),
            self.me.clone(),
            self.clock.clone(),
            self.lease,
        );
        self.call(move |w| {
            w.reserve(
                &run_id,
                intent.as_ref().map(|(i, s)| (*i, s)),
                |c: &Connection| fence(c, &run_id, &me, clock.now(), lease),
            )
        })
        .await?
        .map_err(Error::Locked)
    }
}

impl Journal for SqliteJournal {
    fn lease_duration(&self) -> std::time::Duration {
        self.lease
    }

    async fn lock(&self, account: &str, user: &str, run_id: &str) -> Result<()> {
        let (me, clock, lease) = (self.me.clone(), self.clock.clone(), self.lease);
        let (account, user, run_id) = (account.to_string(), user.to_string(), run_id.to_string());
        self.call(move |w| {
            w.write("taking the lock", |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = clock.now();
                let mut version = 1;
                if let Some(l) = read_lease(&tx, &account, &user)? {
                    let status = run_status(&tx, &l.run_id)?;
                    if let Err(msg) = lease::for_new_run(&l, status, &me, now) {
                        return Ok(Err(msg));
                    }
                    tracing::info!(
                        "taking over the lease of ended run {} ({})",
                        l.run_id,
                        l.holder.describe()
                    );
                    version = l.version + 1;
                }
                put_lease(
                    &tx,
                    &account,
                    &user,
                    Grant {
                        run_id: &run_id,
                        me: &me,
                        now,
                        lease,
                        version,
                    },
                )?;
                tx.commit()?;
                Ok(Ok(()))
            })
        })
        .await?
        .map_err(Error::Locked)
    }

    async fn unlock(&self, account: &str, user: &str, run_id: &str) -> Result<()> {
        let me = self.me.clone();
        let (account, user, run_id) = (account.to_string(), user.to_string(), run_id.to_string());
        self.call(move |w| {
            w.write("releasing the lock", |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if read_lease(&tx, &account, &user)?
                    .is_some_and(|l| l.run_id == run_id && l.held_by(&me))
                {
                    tx.execute(
                        "DELETE FROM locks WHERE account = ?1 AND user_name = ?2",
                        [&account, &user],
                    )?;
                }
                tx.commit()
            })
        })
        .await
    }

    async fn renew(&self, account: &str, user: &str, run_id: &str) -> Result<()> {
        let (me, clock, lease) = (self.me.clone(), self.clock.clone(), self.lease);
        let (account, user, run_id) = (account.to_string(), user.to_string(), run_id.to_string());
        self.call(move |w| {
            w.write("renewing the lease", |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let l = read_lease(&tx, &account, &user)?;
                match &l {
                    Some(l) if l.run_id == run_id && l.held_by(&me) => {
                        tx.execute(
                            "UPDATE locks SET expires = ?3, version = version + 1 WHERE account = ?1 AND user_name = ?2",
                            params![account, user, fmt_time(clock.now() + lease)],
                        )?;
                        tx.commit()?;
                        Ok(Ok(()))
                    }
                    other => Ok(Err(lost(&run_id, &user, other.as_ref()))),
                }
            })
        })
        .await?
        .map_err(Error::Locked)
    }

    async fn lease(&self, account: &str, user: &str) -> Result<Option<Lease>> {
        let (account, user) = (account.to_string(), user.to_string());
        self.call(move |w| w.read("reading the lease", |c| read_lease(c, &account, &user)))
            .await
    }

    async fn take_over(&self, run_id: &str) -> Result<()> {
        let (me, clock, lease) = (self.me.clone(), self.clock.clone(), self.lease);
        let run_id = run_id.to_string();
        self.call(move |w| {
            w.write("taking over the run", |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = clock.now();
                let (Some((account, user)), Some(status)) =
                    (run_user(&tx, &run_id)?, run_status(&tx, &run_id)?)
                else {
                    return Ok(Err(format!("no run {run_id} in the journal")));
                };
                let current = read_lease(&tx, &account, &user)?;
                let other_status = match &current {
                    Some(l) if l.run_id != run_id => run_status(&tx, &l.run_id)?,
                    _ => None,
                };
                if let Err(msg) =
                    lease::for_take_over(current.as_ref(), other_status, &run_id, status, &me, now)
                {
                    return Ok(Err(msg));
                }
                let version = current.as_ref().map_or(1, |l| l.version + 1);
                put_lease(
                    &tx,
                    &account,
                    &user,
                    Grant {
                        run_id: &run_id,
                        me: &me,
                        now,
                        lease,
                        version,
                    },
                )?;
                tx.execute(
                    "UPDATE runs SET pid = ?2, host = ?3 WHERE run_id = ?1",
                    params![run_id, me.process.pid, me.process.host],
                )?;
                let from = current
                    .filter(|l| !l.held_by(&me))
                    .map(|l| format!(" from {}", l.holder.describe()))
                    .unwrap_or_default();
                insert_step(
                    &tx,
                    &run_id,
                    None,
                    "take-over",
                    None,
                    StepPhase::Note,
                    &format!("taken over by {}{from}", me.describe()),
                )?;
                tx.commit()?;
                Ok(Ok(()))
            })
        })
        .await?
        .map_err(Error::Locked)
    }

    async fn begin(&self, meta: &RunMeta) -> Result<()> {
        let json = serde_json::to_string(meta).map_err(|e| Error::Runtime(e.to_string()))?;
        let started = fmt_time(meta.started_at);
        let me = self.me.clone();
        let (run_id, account, user) = (
            meta.run_id.clone(),
            meta.account.clone(),
            meta.user_name.clone(),
        );
        self.call(move |w| {
            w.write("recording the run", |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                match read_lease(&tx, &account, &user)? {
                    Some(l) if l.run_id == run_id && l.held_by(&me) => {}
                    other => return Ok(Err(lost(&run_id, &user, other.as_ref()))),
                }
                if run_status(&tx, &run_id)?.is_some() {
                    return Ok(Err(format!("run {run_id} is already in the journal")));
                }
                tx.execute(
                    "INSERT INTO runs (run_id, account, user_name, status, meta, started_at, pid, host) VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7)",
                    params![run_id, account, user, json, started, me.process.pid, me.process.host],
                )?;
                tx.commit()?;
                Ok(Ok(()))
            })
        })
        .await?
        .map_err(Error::Locked)?;
        crate::failpoint::hit("begin");
        Ok(())
    }

    async fn intent(&self, run_id: &str, idx: usize, step: &Step) -> Result<()> {
        if matches!(step, Step::CreateKey { .. }) {
            // The intent of `create-key` and the room for its secret: one write.
            return self.reserve_with(run_id, Some((idx, step.clone()))).await;
        }
        self.plan_step(run_id, idx, step, StepPhase::Intent, step.reason())
            .await
    }

    async fn reserve_secret(&self, run_id: &str, _idx: usize) -> Result<()> {
        self.reserve_with(run_id, None).await
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
        self.plan_step(run_id, idx, step, phase, detail).await
    }

    async fn key_created(&self, run_id: &str, idx: usize, key: &NewKey) -> Result<()> {
        let dk = self.sealing_key(run_id).await?;
        let sealed = dk.seal(
            key.secret.expose().as_bytes(),
            &aad(run_id, &key.access_key_id),
        )?;
        drop(dk);
        let created = fmt_time(key.create_date);
        let (id, key_id) = (run_id.to_string(), key.access_key_id.clone());
        self.run_write("recording the new key", run_id, move |c| {
            c.execute(
                "UPDATE runs SET new_key_id = ?2, new_key_created = ?3, sealed_scheme = ?4, sealed_secret = ?5, sealed_data_key = ?6, reserved = NULL WHERE run_id = ?1",
                params![id, key_id, created, sealed.scheme, sealed.blob, sealed.wrapped_key],
            )?;
            insert_step(
                c,
                &id,
                Some(idx),
                "create-key",
                Some(&key_id),
                StepPhase::Done,
                &format!("created {key_id} (secret sealed in the journal, {})", sealed.scheme),
            )
        })
        .await
    }

    async fn delivered(&self, run_id: &str) -> Result<()> {
        let id = run_id.to_string();
        self.run_write("erasing the delivered secret", run_id, move |c| {
            c.execute(
                "UPDATE runs SET sealed_scheme = NULL, sealed_secret = NULL, sealed_data_key = NULL, reserved = NULL WHERE run_id = ?1",
                [&id],
            )?;
            insert_step(c, &id, None, "deliver", None, StepPhase::Note, "every output has the new key; sealed secret erased")
        })
        .await
    }

    async fn finish(&self, run_id: &str, status: RunStatus, error: Option<&str>) -> Result<()> {
        let (id, error) = (run_id.to_string(), error.map(str::to_string));
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run_id);
        let clock = self.clock.clone();
        self.run_write("recording the end of the run", run_id, move |c| {
            let now = clock.now();
            c.execute(
                "UPDATE runs SET status = ?2, finished_at = ?3, error = ?4, reserved = NULL WHERE run_id = ?1",
                params![id, status.as_str(), fmt_time(now), error],
            )?;
            if status == RunStatus::Incomplete {
                // An incomplete run keeps its user's lock (`resume` takes it over at
                // once), with its lease released.
                c.execute(
                    "UPDATE locks SET expires = ?2, version = version + 1 WHERE run_id = ?1",
                    params![id, fmt_time(now)],
                )?;
            } else {
                c.execute("DELETE FROM locks WHERE run_id = ?1", [&id])?;
            }
            Ok(())
        })
        .await
    }

    async fn note(&self, run_id: &str, step: &str, ok: bool, detail: &str) -> Result<()> {
        let detail = if ok {
            detail.to_string()
        } else {
            format!("FAILED: {detail}")
        };
        let (id, step) = (run_id.to_string(), step.to_string());
        self.run_write("recording an event", run_id, move |c| {
            insert_step(c, &id, None, &step, None, StepPhase::Note, &detail)
        })
        .await
    }

    async fn runs(&self, user: Option<&str>) -> Result<Vec<RunRecord>> {
        let user = user.map(str::to_string);
        self.call(move |w| {
            w.read("reading runs", |c| match &user {
                Some(u) => select_runs(c, "WHERE user_name = ?1", Some(u)),
                None => select_runs(c, "", None),
            })
        })
        .await
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let run_id = run_id.to_string();
        self.call(move |w| {
            w.read("reading a run", |c| {
                select_runs(c, "WHERE run_id = ?1", Some(&run_id)).map(|v| v.into_iter().next())
            })
        })
        .await
    }

    async fn secret(&self, run_id: &str) -> Result<Option<SecretKey>> {
        type SealedRow = (String, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);
        let id = run_id.to_string();
        let local = matches!(self.sealer, Sealer::Local { .. });
        let found: Option<(String, Sealed, Option<DataKey>)> = self
            .call(move |w| {
                let row: Option<SealedRow> = w.read("reading the sealed secret", |c| {
                    c.query_row(
                        "SELECT coalesce(new_key_id, ''), sealed_scheme, sealed_secret, sealed_data_key FROM runs WHERE run_id = ?1",
                        [&id],
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
                let key = if local && sealed.scheme == seal::SCHEME_LOCAL {
                    Some(w.local_key(false)?)
                } else {
                    None
                };
                Ok(Some((key_id, sealed, key)))
            })
            .await?;
        let Some((key_id, sealed, key)) = found else {
            return Ok(None);
        };
        let key = match key {
            Some(k) => k,
            None if sealed.scheme == seal::SCHEME_KMS => self.sealer.kms_unwrap(&sealed).await?,
            None => return Err(self.sealer.wrong_scheme(&sealed.scheme)),
        };
        let plain = key.open(&sealed, &aad(run_id, &key_id))?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| Error::Journal("the journaled secret is not text".into()))?;
        Ok(Some(SecretKey::new(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::RemoteMeta;
    use crate::plan::{Mode, Plan, PlanOptions};

    pub(crate) fn meta(run_id: &str, user: &str) -> RunMeta {
        RunMeta {
            run_id: run_id.into(),
            account: "123456789012".into(),
            user_name: user.into(),
            mode: Mode::User,
            options: PlanOptions::default(),
            plan: Plan {
                user_name: user.into(),
                steps: vec![
                    Step::CreateKey {
                        reason: "new key".into(),
                    },
                    Step::VerifyNewKey {
                        reason: "prove it".into(),
                    },
                ],
            },
            inventory: vec![],
            sinks: vec![],
            output: "env".into(),
            remote: RemoteMeta::default(),
            verify_timeout_secs: 60,
            profile: None,
            mfa_serial: None,
            started_at: OffsetDateTime::now_utc(),
        }
    }

    pub(crate) fn new_key(user: &str) -> NewKey {
        NewKey {
            user_name: user.into(),
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: SecretKey::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            create_date: OffsetDateTime::now_utc(),
        }
    }

    async fn open(dir: &Path) -> SqliteJournal {
        let path = dir.join("journal.sqlite");
        SqliteJournal::open(&path, Sealer::local_for(&path))
            .await
            .unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn len(p: &Path) -> u64 {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }

    #[tokio::test]
    async fn files_are_0600_in_a_directory_keyturn_did_not_create() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shared-but-mine");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let j = open(&dir).await;
        let m = meta("r1", "alice");
        j.lock(&m.account, "alice", "r1").await.unwrap();
        j.begin(&m).await.unwrap();
        j.intent("r1", 0, &m.plan.steps[0]).await.unwrap();
        let db = dir.join("journal.sqlite");
        for p in [
            db.clone(),
            with_suffix(&db, "-wal"),
            with_suffix(&db, "-shm"),
            with_suffix(&db, ".key"),
        ] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        assert_eq!(mode(&dir), 0o755, "an existing directory is not changed");
        drop(j);
        assert!(!with_suffix(&db, "-wal").exists(), "closed cleanly");
    }

    #[tokio::test]
    async fn a_created_directory_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let _j = open(&dir).await;
        assert_eq!(mode(&dir), 0o700);
    }

    /// Issue 17 #4: once room is reserved (the create-key intent), recording the new
    /// key and its sealed secret grows no journal file.
    #[tokio::test]
    async fn recording_the_new_key_needs_no_new_space_after_the_reservation() {
        let tmp = tempfile::tempdir().unwrap();
        let j = open(tmp.path()).await;
        let db = tmp.path().join("journal.sqlite");
        let files = || -> Vec<u64> {
            ["", "-wal", "-shm", ".key"]
                .iter()
                .map(|s| len(&with_suffix(&db, s)))
                .collect()
        };
        // First without a reservation (a fresh WAL grows), then with one.
        for (i, reserve) in [(0, false), (1, true)] {
            let run = format!("r{i}");
            let user = format!("u{i}");
            let m = meta(&run, &user);
            j.lock(&m.account, &user, &run).await.unwrap();
            j.begin(&m).await.unwrap();
            if reserve {
                j.intent(&run, 0, &m.plan.steps[0]).await.unwrap();
            }
            let before = files();
            j.key_created(&run, 0, &new_key(&user)).await.unwrap();
            let after = files();
            if reserve {
                assert_eq!(after, before, "no file grew after the reservation");
                // ...and the rest of a run fits too.
                j.intent(&run, 1, &m.plan.steps[1]).await.unwrap();
                j.done(&run, 1, &m.plan.steps[1], true, "ok").await.unwrap();
                j.delivered(&run).await.unwrap();
                j.finish(&run, RunStatus::Succeeded, None).await.unwrap();
                assert_eq!(files(), before, "the whole run fit in the reserved room");
            } else {
                assert!(
                    after[1] > before[1],
                    "without it the WAL grows: {before:?} {after:?}"
                );
            }
        }
        assert_eq!(
            j.secret("r0").await.unwrap().unwrap().expose(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        );
        assert!(
            j.secret("r1").await.unwrap().is_none(),
            "erased once delivered"
        );
    }

    struct SqliteOpener(PathBuf);

    impl crate::journal::contract::Opener for SqliteOpener {
        type J = SqliteJournal;
        async fn open(&self, clock: Clock) -> SqliteJournal {
            let options = JournalOptions {
                lease: crate::journal::contract::LEASE,
                clock,
            };
            SqliteJournal::open_with(
                &self.0,
                Sealer::local_for(&self.0),
                Access::ReadWrite,
                options,
            )
            .await
            .unwrap()
        }
    }

    #[tokio::test]
    async fn sqlite_journal_passes_the_contract() {
        let tmp = tempfile::tempdir().unwrap();
        crate::journal::contract::run_all(&SqliteOpener(tmp.path().join("journal.sqlite"))).await;
    }

    /// A holder on this host whose process is gone is taken over at once, before its
    /// lease expires (the fast local path).
    #[tokio::test]
    async fn a_dead_local_holder_is_taken_over_before_its_lease_expires() {
        let tmp = tempfile::tempdir().unwrap();
        let j = open(tmp.path()).await;
        let m = meta("r1", "alice");
        j.lock(&m.account, "alice", "r1").await.unwrap();
        j.begin(&m).await.unwrap();
        let other = open(tmp.path()).await;
        let e = other.take_over("r1").await.unwrap_err();
        assert!(e.to_string().contains("still running"), "{e}");
        raw(tmp.path())
            .execute(
                "UPDATE locks SET holder = ?1 WHERE run_id = 'r1'",
                [dead_holder()],
            )
            .unwrap();
        let l = other.lease(&m.account, "alice").await.unwrap().unwrap();
        assert!(
            l.expires > OffsetDateTime::now_utc(),
            "the lease has not expired"
        );
        other.take_over("r1").await.unwrap();
        // The first journal lost the run.
        let e = j
            .done("r1", 0, &m.plan.steps[0], true, "x")
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Locked(_)), "{e:?}");
    }

    /// A second connection to the same file, for tests that play another process.
    fn raw(dir: &Path) -> Connection {
        Connection::open(dir.join("journal.sqlite")).unwrap()
    }

    fn dead_holder() -> String {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        serde_json::to_string(&crate::journal::process::ProcessId {
            pid,
            host: crate::journal::process::ProcessId::current().host,
            start: Some(1),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn locks_block_live_holders_interrupted_and_incomplete_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let j = open(tmp.path()).await;
        let acct = "123456789012";
        j.lock(acct, "alice", "r1").await.unwrap();
        let live = j.lock(acct, "alice", "r2").await.unwrap_err();
        assert!(matches!(live, Error::Locked(_)), "{live:?}");
        assert!(
            live.to_string().contains("is being rotated by run r1"),
            "{live}"
        );
        assert_eq!(live.exit_code(), crate::error::exit::GUARD);
        // Another user, or the same user in another account, is independent.
        j.lock(acct, "bob", "r3").await.unwrap();
        j.lock("210987654321", "alice", "r4").await.unwrap();
        // A run that never began releases its lock with unlock.
        j.unlock(acct, "bob", "r3").await.unwrap();
        j.lock(acct, "bob", "r5").await.unwrap();

        // r1 runs, then its process dies: a new run must resume it first.
        j.begin(&meta("r1", "alice")).await.unwrap();
        raw(tmp.path())
            .execute(
                "UPDATE locks SET holder = ?1 WHERE run_id = 'r1'",
                [dead_holder()],
            )
            .unwrap();
        let interrupted = j.lock(acct, "alice", "r6").await.unwrap_err();
        assert!(
            interrupted.to_string().contains("was interrupted"),
            "{interrupted}"
        );
        assert!(interrupted.to_string().contains("keyturn resume r1"));
        j.take_over("r1").await.unwrap();
        let rec = j.run("r1").await.unwrap().unwrap();
        assert!(rec.steps.iter().any(|s| s.step == "take-over"));

        // Incomplete: stopped with work left; it keeps the lock even though its
        // process ended, and take_over works for it.
        j.finish("r1", RunStatus::Incomplete, Some("one sink failed"))
            .await
            .unwrap();
        assert_eq!(
            j.run("r1").await.unwrap().unwrap().status,
            RunStatus::Incomplete
        );
        let blocked = j.lock(acct, "alice", "r7").await.unwrap_err();
        assert!(blocked.to_string().contains("incomplete"), "{blocked}");
        assert!(
            blocked.to_string().contains("keyturn resume r1"),
            "{blocked}"
        );
        j.take_over("r1").await.unwrap();
        j.finish("r1", RunStatus::Succeeded, None).await.unwrap();
        j.lock(acct, "alice", "r8").await.unwrap();

        // A finished run's stale lock (its process gone) is taken over silently.
        j.begin(&meta("r8", "alice")).await.unwrap();
        j.finish("r8", RunStatus::Succeeded, None).await.unwrap();
        raw(tmp.path())
            .execute(
                "INSERT INTO locks (account, user_name, run_id, holder, since) VALUES (?1, 'alice', 'r8', ?2, '2026-01-01T00:00:00Z')",
                [acct.to_string(), dead_holder()],
            )
            .unwrap();
        j.lock(acct, "alice", "r9").await.unwrap();
    }

    #[tokio::test]
    async fn a_schema_1_journal_is_migrated_and_keeps_its_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("journal.sqlite");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 1;"
            ))
            .unwrap();
            let m = meta("old-run", "alice");
            c.execute(
                "INSERT INTO runs (run_id, account, user_name, status, meta, started_at, pid, host) VALUES ('old-run', ?1, 'alice', 'succeeded', ?2, ?3, 1, 'h')",
                params![m.account, serde_json::to_string(&m).unwrap(), now()],
            )
            .unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Read-only access reads the old schema without migrating it.
        let ro = SqliteJournal::open_read_only(&path, Sealer::local_for(&path))
            .await
            .unwrap();
        assert_eq!(ro.runs(None).await.unwrap().len(), 1);
        drop(ro);
        let version = |p: &Path| -> i64 {
            Connection::open(p)
                .unwrap()
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(version(&path), 1);
        let j = open(tmp.path()).await;
        let runs = j.runs(Some("alice")).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].meta.run_id, "old-run");
        assert_eq!(runs[0].status, RunStatus::Succeeded);
        // The new schema works: a run with a reservation.
        let m = meta("new-run", "alice");
        j.lock(&m.account, "alice", "new-run").await.unwrap();
        j.begin(&m).await.unwrap();
        j.reserve_secret("new-run", 0).await.unwrap();
        j.key_created("new-run", 0, &new_key("alice"))
            .await
            .unwrap();
        drop(j);
        assert_eq!(version(&path), SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn foreign_newer_and_damaged_files_are_refused_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("journal.sqlite");
        type Make = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Make)> = vec![
            (
                "not a keyturn journal",
                Box::new(|p: &Path| std::fs::write(p, vec![0x5a; 8192]).unwrap()),
            ),
            (
                "another application",
                Box::new(|p: &Path| {
                    Connection::open(p)
                        .unwrap()
                        .execute_batch("CREATE TABLE t (x); PRAGMA application_id = 7;")
                        .unwrap()
                }),
            ),
            (
                "newer keyturn",
                Box::new(|p: &Path| {
                    Connection::open(p)
                        .unwrap()
                        .execute_batch(&format!(
                            "CREATE TABLE t (x); PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 99;"
                        ))
                        .unwrap()
                }),
            ),
        ];
        for (needle, make) in cases {
            let _ = std::fs::remove_file(&path);
            make(&path);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let before = std::fs::read(&path).unwrap();
            for access in [Access::ReadWrite, Access::ReadOnly] {
                let e = SqliteJournal::open_with(
                    &path,
                    Sealer::local_for(&path),
                    access,
                    JournalOptions::default(),
                )
                .await
                .unwrap_err();
                assert!(matches!(e, Error::Journal(_)), "{needle}: {e:?}");
                assert!(e.to_string().contains(needle), "{needle}: {e}");
                assert_eq!(e.exit_code(), crate::error::exit::GUARD);
            }
            assert_eq!(std::fs::read(&path).unwrap(), before, "{needle}");
        }
    }

    #[tokio::test]
    async fn read_only_access_to_a_missing_journal_reads_empty_and_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("none/journal.sqlite");
        let j = SqliteJournal::open_read_only(&path, Sealer::local_for(&path))
            .await
            .unwrap();
        assert!(j.runs(None).await.unwrap().is_empty());
        assert!(!tmp.path().join("none").exists());
    }

    #[test]
    fn sqlite_failures_are_classified() {
        let p = Path::new("/j/journal.sqlite");
        let fail = |code: i32| {
            classify(
                p,
                "recording the new key",
                rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
            )
        };
        use rusqlite::ffi;
        for (code, kind) in [
            (ffi::SQLITE_FULL, JournalIoKind::Full),
            (ffi::SQLITE_READONLY, JournalIoKind::ReadOnly),
            (ffi::SQLITE_IOERR, JournalIoKind::Io),
            (ffi::SQLITE_IOERR_WRITE, JournalIoKind::Io),
            (ffi::SQLITE_CANTOPEN, JournalIoKind::Io),
            (ffi::SQLITE_BUSY, JournalIoKind::Busy),
        ] {
            let e = fail(code);
            let io = e.as_journal_io().unwrap_or_else(|| panic!("{code}: {e:?}"));
            assert_eq!(io.kind, kind, "{code}");
            assert_eq!(io.location, "/j/journal.sqlite");
            assert_eq!(e.exit_code(), crate::error::exit::FAILURE, "{code}");
            assert!(
                e.to_string().contains("recording the new key failed"),
                "{e}"
            );
        }
        assert!(fail(ffi::SQLITE_READONLY).to_string().contains("read-only"));
        for code in [ffi::SQLITE_CORRUPT, ffi::SQLITE_NOTADB] {
            let e = fail(code);
            assert!(matches!(e, Error::Journal(_)), "{code}: {e:?}");
            assert_eq!(e.exit_code(), crate::error::exit::GUARD);
        }
        assert!(matches!(fail(ffi::SQLITE_CONSTRAINT), Error::Locked(_)));
        let full = classify(p, "x", injected_full(3));
        assert!(full
            .to_string()
            .contains("database or disk is full (failpoint journal-full-after:3)"));
    }
}
