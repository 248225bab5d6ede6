//! The rotation journal: a durable record of every run and step, so a rotation that
//! dies at any point (kill -9, power loss, a Lambda timeout) can be finished by
//! `keyturn resume` without losing the new secret or leaving an orphan key.
//!
//! The engine talks to [`Journal`]; SQLite ([`sqlite::SqliteJournal`]) is the default
//! backend. The trait is async and keyed by (account, user) so a networked backend
//! (DynamoDB, for Lambda and multi-runner setups) can implement it unchanged.
//! [`NullJournal`] records nothing (used by `--dry-run` and unit tests).
//!
//! Secrets are sealed by [`seal::Sealer`] (AES-256-GCM with a local key file, or a KMS
//! data key) before they are written, and erased once every output has the key.
//!
//! Failures keep their class: [`crate::Error::JournalIo`] (exit 1) when the journal
//! cannot be read or written (disk full, read-only, I/O error), [`crate::Error::Journal`]
//! (exit 2) when the file is not a usable keyturn journal (corrupt, foreign, newer, or
//! planted by another user, see [`perms`]).

#[cfg(any(test, feature = "journal-contract"))]
pub mod contract;
pub mod dynamodb;
pub mod lease;
mod perms;
pub mod process;
pub mod seal;
pub mod sqlite;

use crate::aws::NewKey;
use crate::error::Result;
use crate::model::AccessKeyInfo;
use crate::plan::{Mode, Plan, PlanOptions, Step};
use crate::remote::RemoteConfig;
use crate::secret::SecretKey;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;
use time::OffsetDateTime;

pub use lease::{Clock, Holder, Lease};

/// RFC 3339, as journals store and show times.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format time")
}

/// How a journal behaves, whatever its backend.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// How long a lock holds without renewal (see [`lease`]).
    pub lease: Duration,
    pub clock: Clock,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            lease: lease::DEFAULT_LEASE,
            clock: Clock::system(),
        }
    }
}

/// Everything needed to finish a run from any point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunMeta {
    pub run_id: String,
    pub account: String,
    pub user_name: String,
    #[serde(rename = "Target")]
    pub mode: Mode,
    pub options: PlanOptions,
    pub plan: Plan,
    /// The user's keys when the run started: any other key found later was created by
    /// this run (the lock keeps other keyturn processes away).
    pub inventory: Vec<AccessKeyInfo>,
    /// The run's sinks as they were resolved when it started (placeholders filled in),
    /// so a resumed run delivers to exactly the same places.
    pub sinks: Vec<crate::sink::SinkSpec>,
    /// `--output` format of the run's report.
    pub output: String,
    /// How AWS was called (profile/region/endpoint), to resume the same way.
    pub remote: RemoteMeta,
    /// Verification timeout in seconds.
    pub verify_timeout_secs: u64,
    /// Self-rotation: the profile named on the command line.
    #[serde(default)]
    pub profile: Option<String>,
    /// Self-rotation: the MFA device whose session makes the IAM calls.
    #[serde(default)]
    pub mfa_serial: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
}

/// Serializable mirror of [`RemoteConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RemoteMeta {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

impl From<&RemoteConfig> for RemoteMeta {
    fn from(r: &RemoteConfig) -> Self {
        Self {
            profile: r.profile.clone(),
            region: r.region.clone(),
            endpoint_url: r.endpoint_url.clone(),
        }
    }
}

impl From<&RemoteMeta> for RemoteConfig {
    fn from(r: &RemoteMeta) -> Self {
        Self {
            profile: r.profile.clone(),
            region: r.region.clone(),
            endpoint_url: r.endpoint_url.clone(),
            ..Self::default()
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Running,
    Succeeded,
    /// Failed and cleaned up (the new key, if any, was deleted again).
    Failed,
    /// Failed after the new key was delivered (the new key is in use).
    FailedAfterDelivery,
    /// Stopped with work left (a partial delivery, an unfinished compensation). It keeps
    /// the user's lock like an interrupted run; `keyturn resume RUN_ID` finishes it.
    Incomplete,
    RolledBack,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::FailedAfterDelivery => "failed-after-delivery",
            RunStatus::Incomplete => "incomplete",
            RunStatus::RolledBack => "rolled-back",
        }
    }
}

impl RunStatus {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "failed-after-delivery" => RunStatus::FailedAfterDelivery,
            "incomplete" => RunStatus::Incomplete,
            "rolled-back" => RunStatus::RolledBack,
            _ => return None,
        })
    }
}

/// What a step record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepPhase {
    /// About to perform the step (written before the AWS call).
    Intent,
    /// The step finished.
    Done,
    /// The step failed.
    Failed,
    /// A compensation or resume event outside the plan.
    Note,
}

impl StepPhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            StepPhase::Intent => "intent",
            StepPhase::Done => "done",
            StepPhase::Failed => "failed",
            StepPhase::Note => "note",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "intent" => StepPhase::Intent,
            "done" => StepPhase::Done,
            "failed" => StepPhase::Failed,
            "note" => StepPhase::Note,
            _ => return None,
        })
    }
}

/// One journaled step event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StepRecord {
    pub seq: u32,
    /// Index in the plan (`None` for notes).
    pub index: Option<usize>,
    pub step: String,
    pub access_key_id: Option<String>,
    pub phase: StepPhase,
    pub detail: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A run as stored: its meta, status and every step event.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub meta: RunMeta,
    pub status: RunStatus,
    pub new_key_id: Option<String>,
    pub new_key_created: Option<OffsetDateTime>,
    /// The sealed secret is still in the journal (not yet delivered everywhere).
    pub holds_secret: bool,
    pub finished_at: Option<OffsetDateTime>,
    pub error: Option<String>,
    pub steps: Vec<StepRecord>,
}

/// Where a journaled run stands, derived from its step events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunProgress {
    /// Per plan step: finished.
    pub done: Vec<bool>,
    /// The first plan step that has not finished (`done.len()` when all have).
    pub next: usize,
    /// Step `next` was started (its intent journaled) without a result.
    pub next_started: bool,
    /// A step failed (the run was cleaning up, or ended failed).
    pub failed: bool,
}

impl RunRecord {
    pub fn progress(&self) -> RunProgress {
        let n = self.meta.plan.steps.len();
        let mut done = vec![false; n];
        let mut started = vec![false; n];
        let mut failed = false;
        for s in &self.steps {
            let Some(i) = s.index.filter(|i| *i < n) else {
                continue;
            };
            match s.phase {
                StepPhase::Intent => started[i] = true,
                StepPhase::Done => done[i] = true,
                StepPhase::Failed => failed = true,
                StepPhase::Note => {}
            }
        }
        let next = (0..n).find(|i| !done[*i]).unwrap_or(n);
        RunProgress {
            next_started: started.get(next).copied().unwrap_or(false),
            done,
            next,
            failed,
        }
    }
}

/// The journal backend contract (every backend passes [`contract`]).
///
/// Durability rule: each method returns only once its record is durable, because the
/// engine performs the AWS mutation right after `intent` returns.
///
/// Locks are leases with the same rules in every backend (see [`lease`]): writes to a
/// run are fenced by its user's lease, and every write renews it. A write by a journal
/// that no longer holds the lease, or that conflicts with another writer, fails with
/// [`crate::Error::Locked`], never as corruption.
pub trait Journal: Send + Sync {
    /// How long a lease holds without renewal; the engine renews well within it
    /// (see [`with_heartbeat`]).
    fn lease_duration(&self) -> Duration {
        lease::DEFAULT_LEASE
    }
    /// Take the (account, user) lock for `run_id`. Fails with [`crate::Error::Locked`]
    /// (exit 2) when a live process holds it, or when an interrupted or incomplete run
    /// of this user must be resumed first.
    fn lock(
        &self,
        account: &str,
        user: &str,
        run_id: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Release the lock if `run_id` holds it.
    fn unlock(
        &self,
        account: &str,
        user: &str,
        run_id: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Extend the lease `run_id` holds on (account, user) by the lease duration (the
    /// heartbeat). [`crate::Error::Locked`] when this journal no longer holds it.
    fn renew(
        &self,
        account: &str,
        user: &str,
        run_id: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The current lease of (account, user), if any.
    fn lease(
        &self,
        account: &str,
        user: &str,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send;
    /// Take over run `run_id` and its user's lease (resume, rollback): allowed when the
    /// lease is not live (its holder is gone on this host, or it expired) or the run is
    /// incomplete. Fails with [`crate::Error::Locked`] while another holder is live,
    /// and as [`crate::Error::JournalIo`] when the journal cannot record (so resume
    /// never creates a key it could not journal).
    fn take_over(&self, run_id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Record a new run (its lock is held).
    fn begin(&self, meta: &RunMeta) -> impl Future<Output = Result<()>> + Send;
    /// About to perform step `idx`. For `create-key` this also reserves room for the
    /// new secret (see [`Journal::reserve_secret`]) in the same durable write.
    fn intent(
        &self,
        run_id: &str,
        idx: usize,
        step: &Step,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Step `idx` finished (`detail` is human-readable).
    fn done(
        &self,
        run_id: &str,
        idx: usize,
        step: &Step,
        ok: bool,
        detail: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Make sure the journal can take run `run_id`'s new secret before
    /// `CreateAccessKey` is called (step `idx`): the record is preallocated at its final
    /// size, the sealing key is at hand (local key file created, or a KMS data key
    /// fetched), so that a journal that is full or unreachable fails now, before the key
    /// exists, and [`Journal::key_created`] needs no new space and no KMS call.
    /// Idempotent; `intent` of a `create-key` step already does it.
    fn reserve_secret(&self, run_id: &str, idx: usize) -> impl Future<Output = Result<()>> + Send;
    /// `create-key` finished: record the new key id and its secret, encrypted, in one
    /// durable write.
    fn key_created(
        &self,
        run_id: &str,
        idx: usize,
        key: &NewKey,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Every sink has verified the new key (or it was deleted again): erase the
    /// sealed secret from the journal.
    fn delivered(&self, run_id: &str) -> impl Future<Output = Result<()>> + Send;
    /// The run ended; release the lock. An [`RunStatus::Incomplete`] run keeps it.
    fn finish(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Write a free-form event (compensation steps, resume notes).
    fn note(
        &self,
        run_id: &str,
        step: &str,
        ok: bool,
        detail: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Runs, newest first, optionally of one user.
    fn runs(&self, user: Option<&str>) -> impl Future<Output = Result<Vec<RunRecord>>> + Send;
    /// One run.
    fn run(&self, run_id: &str) -> impl Future<Output = Result<Option<RunRecord>>> + Send;
    /// The run's new secret, unsealed, while the journal still holds it.
    fn secret(&self, run_id: &str) -> impl Future<Output = Result<Option<SecretKey>>> + Send;
}

/// A journal that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullJournal;

impl Journal for NullJournal {
    async fn lock(&self, _: &str, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    async fn renew(&self, _: &str, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    async fn lease(&self, _: &str, _: &str) -> Result<Option<Lease>> {
        Ok(None)
    }
    async fn unlock(&self, _: &str, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    async fn take_over(&self, _: &str) -> Result<()> {
        Ok(())
    }
    async fn begin(&self, _: &RunMeta) -> Result<()> {
        Ok(())
    }
    async fn intent(&self, _: &str, _: usize, _: &Step) -> Result<()> {
        Ok(())
    }
    async fn done(&self, _: &str, _: usize, _: &Step, _: bool, _: &str) -> Result<()> {
        Ok(())
    }
    async fn reserve_secret(&self, _: &str, _: usize) -> Result<()> {
        Ok(())
    }
    async fn key_created(&self, _: &str, _: usize, _: &NewKey) -> Result<()> {
        Ok(())
    }
    async fn delivered(&self, _: &str) -> Result<()> {
        Ok(())
    }
    async fn finish(&self, _: &str, _: RunStatus, _: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn note(&self, _: &str, _: &str, _: bool, _: &str) -> Result<()> {
        Ok(())
    }
    async fn runs(&self, _: Option<&str>) -> Result<Vec<RunRecord>> {
        Ok(vec![])
    }
    async fn run(&self, _: &str) -> Result<Option<RunRecord>> {
        Ok(None)
    }
    async fn secret(&self, _: &str) -> Result<Option<SecretKey>> {
        Ok(None)
    }
}

/// Run `work` while renewing the (account, user) lease of `run_id` every third of the
/// lease duration (the heartbeat). If a renewal finds the lease lost (taken over after
/// a pause longer than the lease), `work` is dropped and the [`crate::Error::Locked`]
/// returned; other renewal failures are logged and retried at the next beat (the
/// journal writes `work` makes fail on their own if the journal is really gone).
pub async fn with_heartbeat<J: Journal, T>(
    journal: &J,
    account: &str,
    user: &str,
    run_id: &str,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let every = (journal.lease_duration() / 3).max(Duration::from_millis(100));
    let beat = async {
        loop {
            tokio::time::sleep(every).await;
            match journal.renew(account, user, run_id).await {
                Err(e @ crate::Error::Locked(_)) => return e,
                Err(e) => tracing::warn!("could not renew the lease of run {run_id}: {e}"),
                Ok(()) => tracing::debug!("renewed the lease of run {run_id}"),
            }
        }
    };
    tokio::select! {
        r = work => r,
        e = beat => Err(e),
    }
}

/// A new run id: the UTC start time to the millisecond, then 64 random bits from the
/// OS (`20261121T231200.123Z-9f3a1c2b4d5e6f70`). Ids sort by start time and are
/// readable; thousands started in the same millisecond on many hosts do not collide
/// (the chance of any collision among a billion ids in one millisecond is below 3%).
pub fn new_run_id() -> String {
    run_id_at(OffsetDateTime::now_utc())
}

fn run_id_at(t: OffsetDateTime) -> String {
    let mut r = [0u8; 8];
    if getrandom::fill(&mut r).is_err() {
        // No OS random source: fall back to a per-process seeded hash, time and pid.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(t.unix_timestamp_nanos() as u128);
        h.write_u32(std::process::id());
        r = h.finish().to_be_bytes();
    }
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z-{:016x}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond(),
        u64::from_be_bytes(r)
    )
}

/// Which journal backend (config `journal.backend`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file (the default).
    Sqlite,
    /// A DynamoDB table (`journal.table`), secrets sealed with `journal.kms_key`.
    Dynamodb { table: String },
}

/// Where the journal lives and how its secrets are sealed (resolved settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSettings {
    pub path: std::path::PathBuf,
    /// KMS key id/ARN/alias; `None` = the local key file beside the journal.
    pub kms_key: Option<String>,
    pub backend: Backend,
    /// How long a lease holds without renewal.
    pub lease: Duration,
    /// DynamoDB: how long finished runs are kept (their `ExpiresAt`).
    pub retention: Duration,
}

/// The default DynamoDB table name.
pub const DEFAULT_TABLE: &str = "keyturn-journal";

impl JournalSettings {
    /// Resolve flags/environment (`path`, `kms_key`) over the settings file.
    pub fn resolve(
        path: Option<std::path::PathBuf>,
        kms_key: Option<String>,
        file: &crate::config::JournalFile,
    ) -> Result<Self> {
        let bad = |m: String| crate::Error::InvalidInput(format!("invalid journal settings: {m}"));
        let kms_key = kms_key.or_else(|| file.kms_key.clone());
        let backend = match file.backend.as_deref().unwrap_or("sqlite") {
            "sqlite" => {
                if file.table.is_some() {
                    return Err(bad(
                        "journal.table applies to backend = \"dynamodb\" only".into()
                    ));
                }
                Backend::Sqlite
            }
            "dynamodb" => {
                if kms_key.is_none() {
                    return Err(bad("backend = \"dynamodb\" needs journal.kms_key (or --journal-kms-key): its secrets are sealed with a KMS data key".into()));
                }
                if path.is_some() || file.path.is_some() {
                    return Err(bad("--journal / journal.path name an SQLite file, but journal.backend = \"dynamodb\"".into()));
                }
                let table = file.table.clone().unwrap_or_else(|| DEFAULT_TABLE.into());
                let ok = (3..=255).contains(&table.len())
                    && table
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                if !ok {
                    return Err(bad(format!("journal.table {table:?} is not a DynamoDB table name (3-255 of A-Z a-z 0-9 _ - .)")));
                }
                Backend::Dynamodb { table }
            }
            other => {
                return Err(bad(format!(
                    "journal.backend {other:?}: expected \"sqlite\" or \"dynamodb\""
                )))
            }
        };
        let lease_secs = file.lease_seconds.unwrap_or(lease::DEFAULT_LEASE.as_secs());
        if !(1..=3600).contains(&lease_secs) {
            return Err(bad(format!(
                "journal.lease_seconds = {lease_secs}: expected 1-3600"
            )));
        }
        let days = file.retention_days.unwrap_or(365);
        if !(1..=36500).contains(&days) {
            return Err(bad(format!(
                "journal.retention_days = {days}: expected 1-36500"
            )));
        }
        Ok(Self {
            path: path
                .or_else(|| file.path.clone())
                .unwrap_or_else(sqlite::default_path),
            kms_key,
            backend,
            lease: Duration::from_secs(lease_secs),
            retention: Duration::from_secs(u64::from(days) * 24 * 3600),
        })
    }

    /// Open the journal for writing; AWS calls (KMS, DynamoDB) go through `remote`.
    pub async fn open(&self, remote: &RemoteConfig) -> Result<AnyJournal> {
        self.open_with(remote, sqlite::Access::ReadWrite).await
    }

    /// Open the journal for reading only (`history`): SQLite works on a read-only
    /// file or mount and on a full disk, and creates nothing.
    pub async fn open_read_only(&self, remote: &RemoteConfig) -> Result<AnyJournal> {
        self.open_with(remote, sqlite::Access::ReadOnly).await
    }

    async fn open_with(&self, remote: &RemoteConfig, access: sqlite::Access) -> Result<AnyJournal> {
        let options = JournalOptions {
            lease: self.lease,
            clock: Clock::system(),
        };
        match &self.backend {
            Backend::Sqlite => {
                let sealer = match &self.kms_key {
                    Some(key_id) => seal::Sealer::Kms {
                        client: aws_sdk_kms::Client::new(&remote.load().await),
                        key_id: key_id.clone(),
                    },
                    None => seal::Sealer::local_for(&self.path),
                };
                sqlite::SqliteJournal::open_with(&self.path, sealer, access, options)
                    .await
                    .map(AnyJournal::Sqlite)
            }
            Backend::Dynamodb { table } => {
                let conf = remote.load().await;
                let key_id = self.kms_key.clone().unwrap_or_default();
                let sealer = seal::Sealer::Kms {
                    client: aws_sdk_kms::Client::new(&conf),
                    key_id,
                };
                dynamodb::DynamoJournal::open(
                    aws_sdk_dynamodb::Client::new(&conf),
                    table,
                    sealer,
                    options,
                    self.retention,
                )
                .await
                .map(AnyJournal::Dynamodb)
            }
        }
    }
}

/// The journal a command runs with: whichever backend the settings chose.
#[derive(Debug)]
pub enum AnyJournal {
    Sqlite(sqlite::SqliteJournal),
    Dynamodb(dynamodb::DynamoJournal),
}

macro_rules! each_backend {
    ($self:ident, $j:ident => $e:expr) => {
        match $self {
            AnyJournal::Sqlite($j) => $e,
            AnyJournal::Dynamodb($j) => $e,
        }
    };
}

impl Journal for AnyJournal {
    fn lease_duration(&self) -> Duration {
        each_backend!(self, j => j.lease_duration())
    }
    async fn lock(&self, account: &str, user: &str, run_id: &str) -> Result<()> {
        each_backend!(self, j => j.lock(account, user, run_id).await)
    }
    async fn unlock(&self, account: &str, user: &str, run_id: &str) -> Result<()> {
        each_backend!(self, j => j.unlock(account, user, run_id).await)
    }
    async fn renew(&self, account: &str, user: &str, run_id: &str) -> Result<()> {
        each_backend!(self, j => j.renew(account, user, run_id).await)
    }
    async fn lease(&self, account: &str, user: &str) -> Result<Option<Lease>> {
        each_backend!(self, j => j.lease(account, user).await)
    }
    async fn take_over(&self, run_id: &str) -> Result<()> {
        each_backend!(self, j => j.take_over(run_id).await)
    }
    async fn begin(&self, meta: &RunMeta) -> Result<()> {
        each_backend!(self, j => j.begin(meta).await)
    }
    async fn intent(&self, run_id: &str, idx: usize, step: &Step) -> Result<()> {
        each_backend!(self, j => j.intent(run_id, idx, step).await)
    }
    async fn done(
        &self,
        run_id: &str,
        idx: usize,
        step: &Step,
        ok: bool,
        detail: &str,
    ) -> Result<()> {
        each_backend!(self, j => j.done(run_id, idx, step, ok, detail).await)
    }
    async fn reserve_secret(&self, run_id: &str, idx: usize) -> Result<()> {
        each_backend!(self, j => j.reserve_secret(run_id, idx).await)
    }
    async fn key_created(&self, run_id: &str, idx: usize, key: &NewKey) -> Result<()> {
        each_backend!(self, j => j.key_created(run_id, idx, key).await)
    }
    async fn delivered(&self, run_id: &str) -> Result<()> {
        each_backend!(self, j => j.delivered(run_id).await)
    }
    async fn finish(&self, run_id: &str, status: RunStatus, error: Option<&str>) -> Result<()> {
        each_backend!(self, j => j.finish(run_id, status, error).await)
    }
    async fn note(&self, run_id: &str, step: &str, ok: bool, detail: &str) -> Result<()> {
        each_backend!(self, j => j.note(run_id, step, ok, detail).await)
    }
    async fn runs(&self, user: Option<&str>) -> Result<Vec<RunRecord>> {
        each_backend!(self, j => j.runs(user).await)
    }
    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        each_backend!(self, j => j.run(run_id).await)
    }
    async fn secret(&self, run_id: &str) -> Result<Option<SecretKey>> {
        each_backend!(self, j => j.secret(run_id).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_readable_sortable_and_unique() {
        let t = time::macros::datetime!(2026-11-21 23:12:00.123 UTC);
        let id = run_id_at(t);
        assert!(id.starts_with("20261121T231200.123Z-"), "{id}");
        assert_eq!(id.len(), "20261121T231200.123Z-".len() + 16);
        // Ids started at one instant still differ; later ids sort after earlier ones.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            assert!(seen.insert(run_id_at(t)), "duplicate run id");
        }
        let later = run_id_at(t + time::Duration::milliseconds(1));
        assert!(seen.iter().all(|a| a.as_str() < later.as_str()));
        assert!(new_run_id() > id);
    }

    /// Counts renewals; fails them once `lost` is set.
    #[derive(Default)]
    struct Beats {
        renewals: std::sync::atomic::AtomicU32,
        lost: std::sync::atomic::AtomicBool,
    }

    impl Journal for Beats {
        fn lease_duration(&self) -> Duration {
            Duration::from_secs(30)
        }
        async fn renew(&self, _: &str, _: &str, run: &str) -> Result<()> {
            use std::sync::atomic::Ordering::SeqCst;
            self.renewals.fetch_add(1, SeqCst);
            if self.lost.load(SeqCst) {
                return Err(crate::Error::Locked(format!("run {run}: lost")));
            }
            Ok(())
        }
        async fn lock(&self, _: &str, _: &str, _: &str) -> Result<()> {
            Ok(())
        }
        async fn unlock(&self, _: &str, _: &str, _: &str) -> Result<()> {
            Ok(())
        }
        async fn lease(&self, _: &str, _: &str) -> Result<Option<Lease>> {
            Ok(None)
        }
        async fn take_over(&self, _: &str) -> Result<()> {
            Ok(())
        }
        async fn begin(&self, _: &RunMeta) -> Result<()> {
            Ok(())
        }
        async fn intent(&self, _: &str, _: usize, _: &Step) -> Result<()> {
            Ok(())
        }
        async fn done(&self, _: &str, _: usize, _: &Step, _: bool, _: &str) -> Result<()> {
            Ok(())
        }
        async fn reserve_secret(&self, _: &str, _: usize) -> Result<()> {
            Ok(())
        }
        async fn key_created(&self, _: &str, _: usize, _: &NewKey) -> Result<()> {
            Ok(())
        }
        async fn delivered(&self, _: &str) -> Result<()> {
            Ok(())
        }
        async fn finish(&self, _: &str, _: RunStatus, _: Option<&str>) -> Result<()> {
            Ok(())
        }
        async fn note(&self, _: &str, _: &str, _: bool, _: &str) -> Result<()> {
            Ok(())
        }
        async fn runs(&self, _: Option<&str>) -> Result<Vec<RunRecord>> {
            Ok(vec![])
        }
        async fn run(&self, _: &str) -> Result<Option<RunRecord>> {
            Ok(None)
        }
        async fn secret(&self, _: &str) -> Result<Option<SecretKey>> {
            Ok(None)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_renews_every_third_of_the_lease_and_stops_lost_work() {
        use std::sync::atomic::Ordering::SeqCst;
        let j = Beats::default();
        // 95 s of work with a 30 s lease: renewed at 10, 20, ..., 90 s.
        let v = with_heartbeat(&j, "a", "u", "r", async {
            tokio::time::sleep(Duration::from_secs(95)).await;
            Ok(7)
        })
        .await
        .unwrap();
        assert_eq!(v, 7);
        assert_eq!(j.renewals.load(SeqCst), 9);
        // A lost lease stops the work at the next beat.
        j.lost.store(true, SeqCst);
        let finished = std::sync::atomic::AtomicBool::new(false);
        let e = with_heartbeat(&j, "a", "u", "r", async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            finished.store(true, SeqCst);
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(matches!(e, crate::Error::Locked(_)), "{e:?}");
        assert!(!finished.load(SeqCst), "the work was dropped");
    }

    #[test]
    fn settings_resolve_backends_and_refuse_bad_combinations() {
        use crate::config::JournalFile;
        let file = |t: &str| crate::config::FileConfig::parse(t).unwrap().journal;
        let s = JournalSettings::resolve(None, None, &JournalFile::default()).unwrap();
        assert_eq!(s.backend, Backend::Sqlite);
        assert_eq!(s.lease, lease::DEFAULT_LEASE);
        let d = JournalSettings::resolve(
            None,
            None,
            &file("[journal]\nbackend = \"dynamodb\"\nkms_key = \"alias/k\"\nlease_seconds = 30\n"),
        )
        .unwrap();
        assert_eq!(
            d.backend,
            Backend::Dynamodb {
                table: DEFAULT_TABLE.into()
            }
        );
        assert_eq!(d.lease, Duration::from_secs(30));
        for (text, needle) in [
            (
                "[journal]\nbackend = \"dynamodb\"\n",
                "needs journal.kms_key",
            ),
            (
                "[journal]\nbackend = \"redis\"\n",
                "expected \"sqlite\" or \"dynamodb\"",
            ),
            ("[journal]\ntable = \"t\"\n", "dynamodb\" only"),
            ("[journal]\nlease_seconds = 0\n", "1-3600"),
            (
                "[journal]\nbackend = \"dynamodb\"\nkms_key = \"k\"\ntable = \"a b\"\n",
                "not a DynamoDB table name",
            ),
            (
                "[journal]\nbackend = \"dynamodb\"\nkms_key = \"k\"\npath = \"/j\"\n",
                "SQLite file",
            ),
        ] {
            let e = JournalSettings::resolve(None, None, &file(text)).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
            assert_eq!(e.exit_code(), crate::error::exit::GUARD);
        }
        // The flag supplies the KMS key.
        let f = file("[journal]\nbackend = \"dynamodb\"\ntable = \"tbl\"\n");
        assert!(JournalSettings::resolve(None, Some("alias/k".into()), &f).is_ok());
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::FailedAfterDelivery,
            RunStatus::Incomplete,
            RunStatus::RolledBack,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert_eq!(RunStatus::Incomplete.as_str(), "incomplete");
    }
}
