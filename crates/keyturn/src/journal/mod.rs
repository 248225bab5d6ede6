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
use time::OffsetDateTime;

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

/// The journal backend contract.
///
/// Durability rule: each method returns only once its record is durable, because the
/// engine performs the AWS mutation right after `intent` returns.
pub trait Journal: Send + Sync {
    /// Take the (account, user) lock for `run_id`. Fails with [`crate::Error::Locked`]
    /// (exit 2) when a live process holds it, or when an interrupted run of this user
    /// must be resumed first.
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
    /// Take over the lock of interrupted run `run_id` (its process is gone).
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

/// Where the journal lives and how its secrets are sealed (resolved settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSettings {
    pub path: std::path::PathBuf,
    /// KMS key id/ARN/alias; `None` = the local key file beside the journal.
    pub kms_key: Option<String>,
}

impl JournalSettings {
    /// Open the SQLite journal for writing; KMS calls (if any) go through `remote`.
    pub async fn open(&self, remote: &RemoteConfig) -> Result<sqlite::SqliteJournal> {
        sqlite::SqliteJournal::open(&self.path, self.sealer(remote).await).await
    }

    /// Open the journal for reading only (`history`): works on a read-only file or
    /// mount and on a full disk, and creates nothing.
    pub async fn open_read_only(&self, remote: &RemoteConfig) -> Result<sqlite::SqliteJournal> {
        sqlite::SqliteJournal::open_read_only(&self.path, self.sealer(remote).await).await
    }

    async fn sealer(&self, remote: &RemoteConfig) -> seal::Sealer {
        match &self.kms_key {
            Some(key_id) => seal::Sealer::Kms {
                client: aws_sdk_kms::Client::new(&remote.load().await),
                key_id: key_id.clone(),
            },
            None => seal::Sealer::local_for(&self.path),
        }
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
