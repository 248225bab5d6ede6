//! Executes a rotation plan step by step, journaling each step before and after its
//! AWS call or delivery, and undoing the new key when the rotation cannot complete
//! safely.
//!
//! The same code runs a fresh rotation and finishes an interrupted one (`resume`):
//! [`Progress`] says where to start, and a step whose intent was journaled without a
//! result is redone idempotently (a key already deleted counts as deleted; a sink that
//! already holds the new key counts as delivered; a key created but never journaled is
//! found as an orphan and deleted before creating again).
//!
//! Safety invariants enforced here:
//! - only keys named by the plan are deactivated or deleted;
//! - nothing old is retired before the new key verified and every sink verified it
//!   (the plan orders it so, and any failure stops the run);
//! - a failure before any sink may hold the new key deletes the new key again, leaving
//!   old keys exactly as they were;
//! - a failure once some sink may hold it revokes nothing: both keys stay Active, the
//!   sealed secret stays in the journal, and the run is left `incomplete` for `resume`;
//! - the sealed secret is erased as soon as every sink verified the new key.

use crate::aws::{KeyApi, NewKey};
use crate::error::{AwsErrorKind, Error, PartialDelivery, Result};
use crate::failpoint;
use crate::journal::{Journal, RunMeta};
use crate::model::KeyStatus;
use crate::plan::{Mode, Step};
use crate::report::{ActionRecord, ProfileUpdate, RotationReport, SinkReport, VerificationSummary};
use crate::sink::{Handover, SinkSet};
use crate::verify::{verify_key, Backoff, Expected, Verified, VerifyFailure, VerifyPolicy};
use std::sync::OnceLock;
use time::OffsetDateTime;

/// Writes a new key into every profile that holds the old one (self-rotation).
pub trait ProfileWriter: Send + Sync {
    /// Must be idempotent: profiles that already hold the new key count as updated.
    fn write(&self, old_key_id: &str, new: &NewKey) -> Result<Vec<ProfileUpdate>>;
}

/// Where a run stands.
#[derive(Debug, Default)]
pub struct Progress {
    /// Index of the first step that has not finished.
    pub next: usize,
    /// Step `next` was journaled as started but not finished (resume only).
    pub redo: bool,
    pub new_key: Option<NewKey>,
    pub actions: Vec<ActionRecord>,
    pub verification: Option<Verified>,
    pub profiles_updated: Vec<ProfileUpdate>,
    /// Some sink may hold the new key, so a later failure must not delete it.
    pub delivered: bool,
    /// Per sink of the plan: what happened to it so far.
    pub sinks: Vec<SinkReport>,
    /// The sealed secret was erased from the journal (every sink verified).
    pub secret_erased: bool,
    /// A compensation (deleting the new key again) did not finish: the run must stay
    /// resumable.
    pub cleanup_pending: bool,
    /// Resume of an interrupted `create-key`: when that attempt could have created a
    /// key (from its journaled intent to the crash point, with margins).
    pub create_window: Option<CreateWindow>,
    /// The inventory was re-read before the first retiring step.
    pub retire_checked: bool,
    /// The id of the key this run created, when its secret is no longer at hand
    /// (resume of an unfinished clean-up).
    pub created_key_id: Option<String>,
}

/// When a `CreateAccessKey` attempt could have created a key: IAM's `CreateDate` of a
/// key it made lies in `from..=to` (the attempt's start and end, widened by
/// [`CLOCK_SKEW`] for the difference between this host's clock and IAM's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateWindow {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
}

/// Tolerated difference between this host's clock and IAM's clock.
pub const CLOCK_SKEW: time::Duration = time::Duration::seconds(60);
/// `CreateAccessKey` attempts after an answer that may have been lost.
const CREATE_ATTEMPTS: u32 = 3;

impl CreateWindow {
    /// An attempt that started at `start` and ended (or was last known alive) at `end`.
    pub fn around(start: OffsetDateTime, end: OffsetDateTime) -> Self {
        Self {
            from: start - CLOCK_SKEW,
            to: end + CLOCK_SKEW,
        }
    }

    /// The window of an attempt journaled at `intent_at` whose process was last heard
    /// of at `last_record_at` (a crash): the attempt may have run for up to
    /// [`crate::aws::CREATE_KEY_TIMEOUT`] after that.
    pub fn after_crash(intent_at: OffsetDateTime, last_record_at: OffsetDateTime) -> Self {
        let bound = time::Duration::try_from(crate::aws::CREATE_KEY_TIMEOUT)
            .unwrap_or(time::Duration::seconds(30));
        Self::around(intent_at, last_record_at.max(intent_at) + bound)
    }

    pub fn contains(&self, t: OffsetDateTime) -> bool {
        self.from <= t && t <= self.to
    }
}

impl Progress {
    /// Sink reports for the plan's sinks, all not yet delivered.
    pub fn for_plan(meta: &RunMeta) -> Self {
        Self {
            sinks: sink_reports(meta),
            ..Default::default()
        }
    }

    /// The id of the key this run created, if it did.
    pub fn new_key_id(&self) -> Option<&str> {
        self.new_key
            .as_ref()
            .map(|k| k.access_key_id.as_str())
            .or(self.created_key_id.as_deref())
    }

    fn sink_mut(&mut self, name: &str) -> Option<&mut SinkReport> {
        self.sinks.iter_mut().find(|s| s.name == name)
    }
}

/// One report line per sink of the run, in plan order.
pub fn sink_reports(meta: &RunMeta) -> Vec<SinkReport> {
    meta.sinks
        .iter()
        .map(|s| SinkReport {
            name: s.name().to_string(),
            kind: s.kind().to_string(),
            delivered: false,
            verified: false,
            detail: None,
        })
        .collect()
}

/// The report of a run as it stands: actions done so far, the rest still planned.
pub fn report_of(meta: &RunMeta, p: &Progress, error: Option<String>) -> RotationReport {
    let mut actions = p.actions.clone();
    actions.extend(
        meta.plan
            .steps
            .iter()
            .skip(p.next)
            .map(ActionRecord::planned),
    );
    RotationReport {
        run_id: Some(meta.run_id.clone()),
        account: Some(meta.account.clone()),
        user_name: meta.user_name.clone(),
        mode: meta.mode.clone(),
        dry_run: false,
        inventory: meta.inventory.clone(),
        actions,
        new_key: p.new_key.clone(),
        verification: p.verification.as_ref().map(|v| VerificationSummary {
            arn: v.arn.clone(),
            attempts: v.attempts,
            elapsed_ms: v.elapsed.as_millis() as u64,
        }),
        profiles_updated: p.profiles_updated.clone(),
        sinks: p.sinks.clone(),
        error,
    }
}

pub struct Engine<'a, A: KeyApi, J: Journal> {
    /// The caller's API (old credentials in self-rotation).
    api: &'a A,
    journal: &'a J,
    verify: VerifyPolicy,
    sinks: &'a SinkSet,
    /// Self-rotation: retire the old key signing with the new one (proves it). False
    /// when the caller's session must be used (an MFA session).
    retire_with_new_key: bool,
    /// The API signing with the new key, built once it is known (verification and
    /// retiring share its clients).
    new_key_api: OnceLock<A>,
}

impl<'a, A: KeyApi, J: Journal> Engine<'a, A, J> {
    /// An engine whose AWS calls are made as the caller, delivering to `sinks`.
    pub fn new(api: &'a A, journal: &'a J, verify: VerifyPolicy, sinks: &'a SinkSet) -> Self {
        Self {
            api,
            journal,
            verify,
            sinks,
            retire_with_new_key: false,
            new_key_api: OnceLock::new(),
        }
    }

    /// Self-rotation: retire the old key with the new key when `yes` (else with the
    /// caller, e.g. an MFA session).
    pub fn retire_with_new_key(mut self, yes: bool) -> Self {
        self.retire_with_new_key = yes;
        self
    }

    /// Run the plan's steps from `p.next`. On `Err`, `p.new_key` is `Some` only if the
    /// new key survives (some sink may hold it); otherwise it was deleted again.
    pub async fn execute(&self, meta: &RunMeta, p: &mut Progress) -> Result<()> {
        let r = self.execute_steps(meta, p).await;
        r.map_err(|e| e.with_journal_context(|| aws_state(meta, p)))
    }

    async fn execute_steps(&self, meta: &RunMeta, p: &mut Progress) -> Result<()> {
        let steps = &meta.plan.steps;
        while p.next < steps.len() {
            let idx = p.next;
            let step = &steps[idx];
            self.erase_secret_if_delivered(meta, p).await?;
            let redo = std::mem::take(&mut p.redo);
            if !redo {
                self.journal.intent(&meta.run_id, idx, step).await?;
            }
            failpoint::hit(&format!("{}:intent", step.failpoint()));
            match self.run_step(meta, idx, step, redo, p).await {
                Ok(detail) => {
                    if !matches!(step, Step::CreateKey { .. }) {
                        self.journal
                            .done(&meta.run_id, idx, step, true, &detail)
                            .await?;
                    }
                    tracing::info!("{}: {detail}", step.label());
                    p.actions.push(ActionRecord::done(step, detail));
                    failpoint::hit(&step.failpoint());
                    p.next += 1;
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.journal
                        .done(&meta.run_id, idx, step, false, &msg)
                        .await?;
                    p.actions.push(ActionRecord::failed(step, msg));
                    if let Some(name) = step.sink() {
                        if e.may_have_delivered() {
                            p.delivered = true;
                        }
                        if let Some(s) = p.sink_mut(name) {
                            s.detail = Some(e.to_string());
                        }
                    }
                    if !p.delivered {
                        return Err(self.compensate(meta, p, e).await);
                    }
                    let key_id = p.new_key_id().unwrap_or_default().to_string();
                    if let Some(failed) = step.sink() {
                        let uncertain = e.may_have_delivered().then(|| failed.to_string());
                        let (holding_new, holding_old): (Vec<_>, Vec<_>) = p
                            .sinks
                            .iter()
                            .filter(|s| uncertain.as_deref() != Some(s.name.as_str()))
                            .map(|s| (s.name.clone(), s.delivered))
                            .partition(|(_, has)| *has);
                        return Err(Error::PartialDelivery(Box::new(PartialDelivery {
                            run_id: meta.run_id.clone(),
                            key_id,
                            holding_new: holding_new.into_iter().map(|(n, _)| n).collect(),
                            uncertain,
                            holding_old: holding_old.into_iter().map(|(n, _)| n).collect(),
                            source: Box::new(e),
                        })));
                    }
                    return Err(Error::AfterDelivery {
                        step: step.name().to_string(),
                        key_id,
                        source: Box::new(e),
                    });
                }
            }
        }
        self.erase_secret_if_delivered(meta, p).await
    }

    /// Once every delivery step is done, the journal no longer needs the secret.
    async fn erase_secret_if_delivered(&self, meta: &RunMeta, p: &mut Progress) -> Result<()> {
        if p.secret_erased || p.new_key.is_none() {
            return Ok(());
        }
        let steps = &meta.plan.steps;
        let last_delivery = steps.iter().rposition(Step::is_delivery);
        let all_delivered = match last_delivery {
            Some(i) => i < p.next,
            None => false,
        };
        if all_delivered {
            failpoint::hit("deliver");
            self.journal.delivered(&meta.run_id).await?;
            p.secret_erased = true;
        }
        Ok(())
    }

    async fn run_step(
        &self,
        meta: &RunMeta,
        idx: usize,
        step: &Step,
        redo: bool,
        p: &mut Progress,
    ) -> Result<String> {
        let user = meta.user_name.as_str();
        match step {
            Step::FreeSlot { access_key_id, .. } => {
                let _ = redo;
                self.api
                    .delete_key(user, access_key_id)
                    .await
                    .or_else(already_gone)?;
                Ok(format!("deleted {access_key_id}"))
            }
            Step::CreateKey { .. } => {
                if redo {
                    let window = p.create_window.ok_or_else(|| {
                        Error::Runtime("resume of create-key without its journaled time".into())
                    })?;
                    self.delete_orphans(meta, p, window).await?;
                }
                // The journal must be able to take the secret before the key exists (a
                // full disk fails here, not after IAM made a key). The intent of
                // create-key reserves the room; a resumed step wrote no intent now.
                if redo {
                    self.journal.reserve_secret(&meta.run_id, idx).await?;
                }
                let key = self.create_key(meta, p).await?;
                failpoint::hit("create-key:call");
                if let Err(e) = self.journal.key_created(&meta.run_id, idx, &key).await {
                    // The secret cannot be kept: delete the key at once rather than
                    // leave a key nobody has the secret of.
                    let cleanup = match self.api.delete_key(user, &key.access_key_id).await {
                        Ok(()) => format!(
                            "the journal could not record the new key {}, so keyturn deleted it again (its secret was never stored anywhere); old keys are unchanged",
                            key.access_key_id
                        ),
                        Err(d) => format!(
                            "the journal could not record the new key {} and deleting it failed too ({d}); delete it by hand: aws iam delete-access-key --user-name {user} --access-key-id {}; old keys are unchanged",
                            key.access_key_id, key.access_key_id
                        ),
                    };
                    tracing::error!("{cleanup}");
                    return Err(Error::CleanedUp {
                        source: Box::new(e),
                        cleanup,
                    });
                }
                let detail = format!("created {}", key.access_key_id);
                p.created_key_id = Some(key.access_key_id.clone());
                p.new_key = Some(key);
                Ok(detail)
            }
            Step::VerifyNewKey { .. } => {
                let key = self.new_key(p)?;
                let expected = Expected {
                    user_name: user,
                    account: Some(meta.account.as_str()).filter(|a| !a.is_empty()),
                };
                match verify_key(self.new_key_api(p)?, &expected, &self.verify).await {
                    Ok(v) => {
                        let detail = format!(
                            "{} authenticates as {} ({} calls, {} ms)",
                            key.access_key_id,
                            v.arn,
                            v.attempts,
                            v.elapsed.as_millis()
                        );
                        p.verification = Some(v);
                        Ok(detail)
                    }
                    Err(f) => Err(verification_error(key, &self.verify, f)),
                }
            }
            Step::Deliver { sink, .. } => {
                let holding = self.sinks.prepared(sink).await?;
                tracing::debug!(sink = %sink, "before delivery the sink {holding}");
                let report = report_of(meta, p, None);
                let key = self.new_key(p)?;
                let replaces = replaced_keys(meta);
                let h = Handover {
                    key,
                    account: &meta.account,
                    run_id: &meta.run_id,
                    replaces: &replaces,
                    report: &report,
                };
                let d = self.sinks.get(sink)?.deliver(&h).await?;
                p.delivered = true;
                if !d.profiles_updated.is_empty() {
                    p.profiles_updated = d.profiles_updated;
                }
                if let Some(s) = p.sink_mut(sink) {
                    s.delivered = true;
                    s.detail = Some(d.detail.clone());
                }
                Ok(d.detail)
            }
            Step::VerifyDelivery { sink, .. } => {
                self.sinks.prepared(sink).await?;
                let report = report_of(meta, p, None);
                let key = self.new_key(p)?;
                let replaces = replaced_keys(meta);
                let h = Handover {
                    key,
                    account: &meta.account,
                    run_id: &meta.run_id,
                    replaces: &replaces,
                    report: &report,
                };
                let detail = self.sinks.get(sink)?.verify(&h).await?;
                if let Some(s) = p.sink_mut(sink) {
                    s.delivered = true;
                    s.verified = true;
                    s.detail = Some(detail.clone());
                }
                Ok(detail)
            }
            Step::DeactivateOldKey { access_key_id, .. } => {
                self.check_no_foreign_keys(meta, p).await?;
                self.retire(meta, p, redo, async |api: &A| {
                    api.set_status(user, access_key_id, KeyStatus::Inactive)
                        .await
                })
                .await?;
                Ok(format!("deactivated {access_key_id}"))
            }
            Step::DeleteOldKey { access_key_id, .. } => {
                self.check_no_foreign_keys(meta, p).await?;
                self.retire(meta, p, redo, async |api: &A| {
                    api.delete_key(user, access_key_id).await
                })
                .await?;
                Ok(format!("deleted {access_key_id}"))
            }
        }
    }

    fn new_key<'p>(&self, p: &'p Progress) -> Result<&'p NewKey> {
        p.new_key
            .as_ref()
            .ok_or_else(|| Error::Runtime("the new key is not known at this step".into()))
    }

    fn new_key_api(&self, p: &Progress) -> Result<&A> {
        let key = self.new_key(p)?;
        Ok(self.new_key_api.get_or_init(|| self.api.as_key(key)))
    }

    /// A call that retires an old key. Self-rotation makes it with the new key (which
    /// proves it), retrying while IAM still answers `InvalidClientTokenId`; otherwise
    /// it is made once as the caller. On resume, a key already gone counts as done.
    async fn retire(
        &self,
        meta: &RunMeta,
        p: &Progress,
        redo: bool,
        call: impl AsyncFn(&A) -> Result<()>,
    ) -> Result<()> {
        let _ = redo;
        let with_new_key = matches!(meta.mode, Mode::Profile { .. }) && self.retire_with_new_key;
        if !with_new_key {
            return call(self.api).await.or_else(already_gone);
        }
        let api = self.new_key_api(p)?;
        let mut backoff = Backoff::new(&self.verify);
        loop {
            match call(api).await {
                Err(e) if e.aws_kind() == Some(&AwsErrorKind::InvalidClientTokenId) => {
                    let Some(wait) = backoff.next_wait() else {
                        return Err(e);
                    };
                    tracing::info!(
                        "IAM does not accept the new key yet; retrying in {} ms",
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                }
                r => return r.or_else(already_gone),
            }
        }
    }

    /// `CreateAccessKey`, never retried blindly: after an answer that may have been
    /// lost, the keys are listed first and a key this attempt made (see
    /// [`Engine::delete_orphans`]) is deleted before creating again. Throttling (a clear
    /// refusal) is retried with backoff.
    async fn create_key(&self, meta: &RunMeta, p: &mut Progress) -> Result<NewKey> {
        let user = meta.user_name.as_str();
        let mut backoff = Backoff::new(&self.verify);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = OffsetDateTime::now_utc();
            let e = match self.api.create_key(user).await {
                Ok(k) => return Ok(k),
                Err(e) => e,
            };
            let ambiguous = matches!(&e, Error::Aws(a) if a.is_ambiguous());
            if ambiguous && attempt < CREATE_ATTEMPTS {
                let msg = format!(
                    "CreateAccessKey attempt {attempt} got no usable answer ({}); looking for a key it may have made before trying again",
                    e.summary()
                );
                tracing::warn!("{msg}");
                self.journal
                    .note(&meta.run_id, "create-key-retry", true, &msg)
                    .await?;
                let window = CreateWindow::around(started, OffsetDateTime::now_utc());
                self.delete_orphans(meta, p, window).await?;
                continue;
            }
            if e.aws_kind() == Some(&AwsErrorKind::Throttling) {
                if let Some(wait) = backoff.next_wait() {
                    tracing::info!(
                        "CreateAccessKey throttled; retrying in {} ms",
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Err(e);
        }
    }

    /// A key this run made without ever learning its secret (a lost response, a crash
    /// during the call) is an orphan: delete it. A key is this run's orphan only if it
    /// is not in the run's starting inventory, was created inside `window` (the
    /// attempt's span by IAM's `CreateDate`) AND was never used. Any other new key was
    /// made by somebody else (an operator, another runner): it is reported and left.
    async fn delete_orphans(
        &self,
        meta: &RunMeta,
        p: &mut Progress,
        window: CreateWindow,
    ) -> Result<()> {
        let now = self.api.list_keys(&meta.user_name).await?;
        for k in now {
            if meta
                .inventory
                .iter()
                .any(|o| o.access_key_id == k.access_key_id)
            {
                continue;
            }
            if p.new_key.as_ref().map(|n| &n.access_key_id) == Some(&k.access_key_id) {
                continue;
            }
            let used = self.api.last_used(&k.access_key_id).await?;
            let in_window = window.contains(k.create_date);
            if !in_window || used != crate::model::Usage::Never {
                let why = if in_window {
                    "it has been used since"
                } else {
                    "it was created outside this run's create-key attempt"
                };
                let msg = format!(
                    "key {} (created {}) is not in this run's inventory, but {why}: it is somebody else's and keyturn leaves it alone",
                    k.access_key_id,
                    crate::printer::rfc3339(k.create_date)
                );
                tracing::warn!("{msg}");
                self.journal
                    .note(&meta.run_id, "foreign-key", true, &msg)
                    .await?;
                p.actions.push(ActionRecord::note(
                    "foreign-key",
                    Some(&k.access_key_id),
                    msg,
                ));
                continue;
            }
            self.api
                .delete_key(&meta.user_name, &k.access_key_id)
                .await
                .or_else(already_gone)?;
            let msg = format!(
                "deleted orphan key {} (created by this run's interrupted CreateAccessKey, never used; its secret was never received)",
                k.access_key_id
            );
            tracing::warn!("{msg}");
            self.journal
                .note(&meta.run_id, "delete-orphan", true, &msg)
                .await?;
            p.actions.push(ActionRecord::note(
                "delete-orphan",
                Some(&k.access_key_id),
                msg,
            ));
        }
        Ok(())
    }

    /// Before the first retiring step: the keys must be the ones the plan saw plus
    /// this run's new key. Another key means another rotation (another runner with its
    /// own journal, a person) is in progress or happened; retiring now could take a key
    /// from under it, so nothing old is retired.
    async fn check_no_foreign_keys(&self, meta: &RunMeta, p: &mut Progress) -> Result<()> {
        if p.retire_checked {
            return Ok(());
        }
        let keys = self.api.list_keys(&meta.user_name).await?;
        let new_id = p.new_key_id();
        let foreign: Vec<String> = keys
            .iter()
            .filter(|k| {
                Some(k.access_key_id.as_str()) != new_id
                    && !meta
                        .inventory
                        .iter()
                        .any(|o| o.access_key_id == k.access_key_id)
            })
            .map(|k| {
                format!(
                    "{} (created {})",
                    k.access_key_id,
                    crate::printer::rfc3339(k.create_date)
                )
            })
            .collect();
        if !foreign.is_empty() {
            return Err(Error::Runtime(format!(
                "another rotation is in progress or happened: {} appeared after this run's plan, so no old key was retired. Check `aws iam list-access-keys --user-name {}` and retire the old key once you know who made the other key",
                foreign.join(", "),
                meta.user_name
            )));
        }
        p.retire_checked = true;
        Ok(())
    }

    /// Undo a rotation that failed before any sink may hold the new key: delete the
    /// new key (with the caller's credentials), leave old keys as they are, and erase
    /// its sealed secret. If the deletion fails, the run stays resumable.
    pub async fn compensate(&self, meta: &RunMeta, p: &mut Progress, cause: Error) -> Error {
        let key = p.new_key.take();
        let Some(key_id) = key
            .as_ref()
            .map(|k| k.access_key_id.clone())
            .or_else(|| p.created_key_id.clone())
        else {
            return cause;
        };
        // The key is about to be deleted: its secret is of no use to anybody, and no
        // sealed secret may outlive its run.
        if self.journal.delivered(&meta.run_id).await.is_ok() {
            p.secret_erased = true;
        }
        let outcome = self
            .api
            .delete_key(&meta.user_name, &key_id)
            .await
            .or_else(already_gone);
        let (ok, msg) = match &outcome {
            Ok(()) => (
                true,
                format!("deleted the new key {key_id} again; old keys are unchanged"),
            ),
            Err(e) => (
                false,
                format!(
                    "could not delete the new key {key_id} ({e}); `keyturn resume {}` retries, or delete it by hand: aws iam delete-access-key --user-name {} --access-key-id {key_id}",
                    meta.run_id, meta.user_name
                ),
            ),
        };
        if ok {
            tracing::warn!("{msg}");
        } else {
            tracing::error!("{msg}");
            p.cleanup_pending = true;
            p.created_key_id = Some(key_id.clone());
        }
        let _ = self
            .journal
            .note(&meta.run_id, "delete-new-key", ok, &msg)
            .await;
        p.actions.push(ActionRecord::note(
            "delete-new-key",
            Some(&key_id),
            msg.clone(),
        ));
        match cause {
            Error::VerificationFailed {
                key_id,
                timeout_secs,
                attempts,
                last,
                ..
            } => Error::VerificationFailed {
                key_id,
                timeout_secs,
                attempts,
                last,
                cleanup: msg,
            },
            other => Error::CleanedUp {
                source: Box::new(other),
                cleanup: msg,
            },
        }
    }
}

/// What AWS holds for a run that stopped at `p`, and what to do: the message of a
/// journal failure (the journal itself may not be able to say it any more).
pub fn aws_state(meta: &RunMeta, p: &Progress) -> String {
    let resume = format!(
        "once the journal can be written again (free space, a writable disk), `keyturn resume {}` finishes the run",
        meta.run_id
    );
    let retired: Vec<&str> = meta.plan.steps[..p.next.min(meta.plan.steps.len())]
        .iter()
        .filter(|s| matches!(s, Step::DeactivateOldKey { .. } | Step::DeleteOldKey { .. }))
        .filter_map(Step::key_id)
        .collect();
    let old = if retired.is_empty() {
        "old keys are untouched".to_string()
    } else {
        format!("old keys retired so far: {}", retired.join(", "))
    };
    match p.new_key_id() {
        None => format!("AWS holds no new key for this run; {old}; {resume}"),
        Some(id) => {
            let have: Vec<&str> = p
                .sinks
                .iter()
                .filter(|s| s.delivered)
                .map(|s| s.name.as_str())
                .collect();
            let secret = if p.secret_erased {
                "every sink has verified it".to_string()
            } else if have.is_empty() {
                "its secret is sealed in the journal and was not delivered yet".to_string()
            } else {
                format!(
                    "its secret is sealed in the journal and was delivered to {}",
                    have.join(", ")
                )
            };
            format!("AWS holds the new key {id} ({secret}); {old}; {resume}")
        }
    }
}

/// The Active keys a rotation replaces (what sinks may find in the destination).
fn replaced_keys(meta: &RunMeta) -> Vec<String> {
    match &meta.mode {
        Mode::Profile { in_use_key } => vec![in_use_key.clone()],
        Mode::User => meta
            .inventory
            .iter()
            .filter(|k| k.status == KeyStatus::Active)
            .map(|k| k.access_key_id.clone())
            .collect(),
    }
}

/// Retiring is idempotent: a key that is already gone is what the step wanted (the
/// SDK's retry after a lost `DeleteAccessKey` response gets `NoSuchEntity`, and so does
/// a resumed step whose first attempt got through).
fn already_gone(e: Error) -> Result<()> {
    if e.aws_kind() == Some(&AwsErrorKind::NoSuchEntity) {
        tracing::info!("the key is already gone; counted as done");
        Ok(())
    } else {
        Err(e)
    }
}

fn verification_error(key: &NewKey, policy: &VerifyPolicy, f: VerifyFailure) -> Error {
    let attempts = match &f {
        VerifyFailure::TimedOut { attempts, .. } => *attempts,
        VerifyFailure::WrongIdentity { .. } => 1,
    };
    Error::VerificationFailed {
        key_id: key.access_key_id.clone(),
        timeout_secs: policy.timeout.as_secs(),
        attempts,
        last: f.to_string(),
        cleanup: String::new(),
    }
}

/// The engine over the in-memory IAM, journal and sinks: for each step that fails,
/// what is compensated and what survives (the new key, the sealed secret, old keys).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeApi, FakeJournal, FakeSink};
    use crate::journal::RemoteMeta;
    use crate::model::Inventory;
    use crate::plan::{plan_rotation, PlanOptions};
    use crate::sink::{Sink, SinkStage, Written};
    use std::time::Duration;

    const USER: &str = "ci-bot";
    const RUN: &str = "20261121T231200.123Z-0000000000000001";

    /// ci-bot with K1 Active (replaced) and, unless `one_key`, K2 Inactive (deleted to
    /// free a slot).
    fn iam(one_key: bool) -> FakeApi {
        let api = FakeApi::new(&[USER]);
        api.add_key(USER, "K1", KeyStatus::Active, 100);
        if !one_key {
            api.add_key(USER, "K2", KeyStatus::Inactive, 200);
        }
        api
    }

    struct Run {
        api: FakeApi,
        journal: FakeJournal,
        sinks: Vec<FakeSink>,
        result: Result<()>,
        progress: Progress,
        meta: RunMeta,
    }

    impl Run {
        fn step_names(&self) -> Vec<&str> {
            self.meta.plan.steps.iter().map(|s| s.name()).collect()
        }
        fn new_keys(&self) -> Vec<(String, KeyStatus)> {
            self.api
                .keys_of(USER)
                .into_iter()
                .filter(|(id, _)| id.starts_with("AKIANEW"))
                .collect()
        }
        fn old(&self, id: &str) -> Option<KeyStatus> {
            self.api
                .keys_of(USER)
                .into_iter()
                .find(|(k, _)| k == id)
                .map(|(_, s)| s)
        }
        fn err(&self) -> &Error {
            self.result.as_ref().unwrap_err()
        }
        fn secret_kept(&self) -> bool {
            self.journal.holds_secret(RUN)
        }
        fn noted(&self, what: &str) -> bool {
            self.journal.events().iter().any(|e| e == what)
        }
        /// No call touched the key `id` except listing it.
        fn untouched(&self, id: &str) -> bool {
            !self
                .api
                .calls()
                .iter()
                .any(|(a, _, arg)| a != "iam:GetAccessKeyLastUsed" && arg == id)
        }
    }

    /// Plan a destructive user-mode rotation into `sinks` and execute it.
    async fn rotate(api: FakeApi, journal: FakeJournal, sinks: Vec<FakeSink>) -> Run {
        let inventory = Inventory {
            user_name: USER.into(),
            keys: api.list_keys(USER).await.unwrap(),
        };
        let options = PlanOptions {
            deactivate_old_keys: true,
            delete_inactive_keys: true,
            yes: true,
            verify: true,
            sinks: sinks.iter().map(|s| s.name.clone()).collect(),
            ..Default::default()
        };
        let now = OffsetDateTime::now_utc();
        let plan = plan_rotation(&inventory, &Mode::User, &options, now).unwrap();
        let meta = RunMeta {
            run_id: RUN.into(),
            account: crate::fake::ACCOUNT.into(),
            user_name: USER.into(),
            mode: Mode::User,
            options,
            plan,
            inventory: inventory.keys,
            sinks: sinks.iter().map(FakeSink::spec).collect(),
            output: "json".into(),
            remote: RemoteMeta::default(),
            verify_timeout_secs: 60,
            started_at: now,
            profile: None,
            mfa_serial: None,
        };
        let set = SinkSet::new(
            sinks
                .iter()
                .map(|s| Box::new(s.clone()) as Box<dyn Sink>)
                .collect(),
        );
        let policy = VerifyPolicy {
            timeout: Duration::from_secs(60),
            ..VerifyPolicy::default()
        };
        let mut progress = Progress::for_plan(&meta);
        let result = Engine::new(&api, &journal, policy, &set)
            .execute(&meta, &mut progress)
            .await;
        Run {
            api,
            journal,
            sinks,
            result,
            progress,
            meta,
        }
    }

    fn two_sinks() -> Vec<FakeSink> {
        vec![FakeSink::new("a"), FakeSink::new("b")]
    }

    #[tokio::test(start_paused = true)]
    async fn every_step_succeeding_retires_the_old_keys_and_erases_the_secret() {
        let r = rotate(iam(false), FakeJournal::default(), two_sinks()).await;
        r.result.as_ref().unwrap();
        assert_eq!(
            r.step_names(),
            [
                "free-slot",
                "create-key",
                "verify-new-key",
                "deliver",
                "verify-delivery",
                "deliver",
                "verify-delivery",
                "deactivate-old-key",
                "delete-old-key"
            ]
        );
        let new = r.new_keys();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].1, KeyStatus::Active);
        assert_eq!(r.old("K1"), None, "deactivated, then deleted");
        assert_eq!(r.old("K2"), None, "freed its slot");
        for s in &r.sinks {
            assert_eq!(s.holds().as_deref(), Some(new[0].0.as_str()), "{}", s.name);
        }
        assert!(
            !r.secret_kept(),
            "every sink verified: the secret is erased"
        );
        assert!(r.progress.secret_erased);
    }

    #[tokio::test(start_paused = true)]
    async fn free_slot_failing_changes_nothing() {
        let api = iam(false);
        api.fail("iam:DeleteAccessKey", AwsErrorKind::AccessDenied);
        let r = rotate(api, FakeJournal::default(), two_sinks()).await;
        assert_eq!(r.err().exit_code(), crate::error::exit::FAILURE);
        assert!(r.new_keys().is_empty(), "no key was created");
        assert_eq!(r.old("K1"), Some(KeyStatus::Active));
        assert_eq!(r.old("K2"), Some(KeyStatus::Inactive));
        assert!(r.untouched("K1"));
        assert!(r.sinks.iter().all(|s| s.holds().is_none()));
        assert!(!r.secret_kept());
        assert!(!r.noted("note delete-new-key ok"), "nothing to compensate");
        assert_eq!(r.progress.next, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn create_key_failing_keeps_the_freed_slot_and_touches_no_active_key() {
        let api = iam(false);
        api.fail("iam:CreateAccessKey", AwsErrorKind::AccessDenied);
        let r = rotate(api, FakeJournal::default(), two_sinks()).await;
        assert!(
            r.err().to_string().contains("iam:CreateAccessKey"),
            "{}",
            r.err()
        );
        assert!(r.new_keys().is_empty());
        assert_eq!(r.old("K1"), Some(KeyStatus::Active));
        assert_eq!(r.old("K2"), None, "the planned free-slot deletion happened");
        assert!(r.untouched("K1"));
        assert!(r.sinks.iter().all(|s| s.holds().is_none()));
        assert!(!r.secret_kept());
        assert!(r.progress.new_key.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn verification_failing_deletes_the_new_key_and_erases_its_secret() {
        let api = iam(true);
        api.state.lock().unwrap().new_key_warmup = u32::MAX;
        let r = rotate(api, FakeJournal::default(), two_sinks()).await;
        let e = r.err();
        assert!(matches!(e, Error::VerificationFailed { .. }), "{e}");
        assert!(e.to_string().contains("deleted the new key"), "{e}");
        assert!(r.new_keys().is_empty(), "compensated: the new key is gone");
        assert_eq!(r.old("K1"), Some(KeyStatus::Active));
        assert!(r.untouched("K1"));
        assert!(r.sinks.iter().all(|s| s.holds().is_none()));
        assert!(!r.secret_kept(), "no sealed secret outlives a deleted key");
        assert!(r.noted("note delete-new-key ok"));
        assert!(r.progress.new_key.is_none());
        assert!(!r.progress.cleanup_pending);
    }

    #[tokio::test(start_paused = true)]
    async fn first_delivery_failing_before_writing_deletes_the_new_key() {
        let sinks = vec![
            FakeSink::failing("a", SinkStage::Deliver, Written::No),
            FakeSink::new("b"),
        ];
        let r = rotate(iam(true), FakeJournal::default(), sinks).await;
        assert!(matches!(r.err(), Error::CleanedUp { .. }), "{}", r.err());
        assert!(r.new_keys().is_empty());
        assert_eq!(r.old("K1"), Some(KeyStatus::Active));
        assert!(r.untouched("K1"));
        assert!(r.sinks.iter().all(|s| s.holds().is_none()));
        assert!(!r.secret_kept());
        assert!(r.noted("note delete-new-key ok"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_that_may_have_written_keeps_the_new_key_and_its_secret() {
        let sinks = vec![
            FakeSink::failing("a", SinkStage::Deliver, Written::Maybe),
            FakeSink::new("b"),
        ];
        let r = rotate(iam(true), FakeJournal::default(), sinks).await;
        let Error::PartialDelivery(p) = r.err() else {
            panic!("{}", r.err())
        };
        assert_eq!(p.uncertain.as_deref(), Some("a"));
        assert!(p.holding_new.is_empty());
        assert_eq!(p.holding_old, ["b"]);
        assert_eq!(r.new_keys().len(), 1, "kept: sink a may hold it");
        assert_eq!(r.old("K1"), Some(KeyStatus::Active));
        assert!(r.untouched("K1"));
        assert!(
            r.secret_kept(),
            "resume needs the secret to deliver the rest"
        );
        assert!(!r.noted("note delete-new-key ok"));
        assert!(r.progress.new_key.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn second_delivery_failing_keeps_the_new_key_the_first_sink_holds() {
        let sinks = vec![
            FakeSink::new("a"),
            FakeSink::failing("b", SinkStage::Deliver, Written::No),
        ];
        let r = rotate(iam(true), FakeJournal::default(), sinks).await;
        let Error::PartialDelivery(p) = r.err() else {
            panic!("{}", r.err())
        };
        assert_eq!(p.holding_new, ["a"]);
        assert_eq!(p.holding_old, ["b"]);
        assert_eq!(p.uncertain, None);
        let new = r.new_keys();
        assert_eq!(new.len(), 1);
        assert_eq!(r.sinks[0].holds().as_deref(), Some(new[0].0.as_str()));
        assert_eq!(r.sinks[1].holds(), None);
        assert_eq!(r.old("K1"), Some(KeyStatus::Active));
        assert!(r.untouched("K1"));
        assert!(r.secret_kept());
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_back_failing_keeps_the_new_key_and_its_secret() {
        let sinks = vec![
            FakeSink::failing("a", SinkStage::Verify, Written::No),
            FakeSink::new("b"),
        ];
        let r = rotate(iam(true), FakeJournal::default(), sinks).await;
        let Error::PartialDelivery(p) = r.err() else {
            panic!("{}", r.err())
        };
        assert_eq!(
            p.holding_new,
            ["a"],
            "a was written; only its read-back failed"
        );
        assert_eq!(r.new_keys().len(), 1);
        assert_eq!(r.old("K1"), Some(KeyStatus::Active));
        assert!(r.untouched("K1"));
        assert!(r.secret_kept());
    }

    #[tokio::test(start_paused = true)]
    async fn deactivation_failing_after_delivery_keeps_both_keys_and_erases_the_secret() {
        let api = iam(true);
        api.fail("iam:UpdateAccessKey", AwsErrorKind::AccessDenied);
        let r = rotate(api, FakeJournal::default(), two_sinks()).await;
        let e = r.err();
        assert!(
            matches!(e, Error::AfterDelivery { step, .. } if step == "deactivate-old-key"),
            "{e}"
        );
        assert_eq!(r.new_keys().len(), 1);
        assert_eq!(r.old("K1"), Some(KeyStatus::Active));
        assert!(r.sinks.iter().all(|s| s.holds().is_some()));
        assert!(!r.secret_kept(), "every sink verified before retiring");
        assert!(!r.noted("note delete-new-key ok"), "the new key is in use");
    }

    #[tokio::test(start_paused = true)]
    async fn deletion_failing_leaves_the_old_key_inactive_and_the_new_one_in_use() {
        let api = iam(true);
        api.fail("iam:DeleteAccessKey", AwsErrorKind::AccessDenied);
        let r = rotate(api, FakeJournal::default(), two_sinks()).await;
        let e = r.err();
        assert!(
            matches!(e, Error::AfterDelivery { step, .. } if step == "delete-old-key"),
            "{e}"
        );
        assert_eq!(r.new_keys().len(), 1);
        assert_eq!(r.old("K1"), Some(KeyStatus::Inactive));
        assert!(!r.secret_kept());
    }

    #[tokio::test(start_paused = true)]
    async fn a_compensation_that_fails_leaves_the_run_resumable() {
        let api = iam(true);
        api.state.lock().unwrap().new_key_warmup = u32::MAX;
        api.fail("iam:DeleteAccessKey", AwsErrorKind::AccessDenied);
        let r = rotate(api, FakeJournal::default(), two_sinks()).await;
        let e = r.err();
        assert!(
            e.to_string().contains("could not delete the new key"),
            "{e}"
        );
        assert!(
            e.to_string().contains(&format!("keyturn resume {RUN}")),
            "{e}"
        );
        assert_eq!(r.new_keys().len(), 1, "still there: deleting it failed");
        assert!(r.progress.cleanup_pending);
        assert_eq!(
            r.progress.created_key_id.as_deref(),
            Some(r.new_keys()[0].0.as_str())
        );
        assert_eq!(r.old("K1"), Some(KeyStatus::Active));
        assert!(r.untouched("K1"));
        assert!(r.noted("note delete-new-key failed"));
        assert!(
            !r.secret_kept(),
            "the key is being deleted: its secret is of no use"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_journal_that_cannot_record_the_new_key_deletes_it_at_once() {
        let journal = FakeJournal::default();
        journal.fail("key_created");
        let r = rotate(iam(true), journal, two_sinks()).await;
        let e = r.err();
        assert!(
            matches!(e, Error::CleanedUp { source, .. } if matches!(**source, Error::JournalIo(_))),
            "{e}"
        );
        assert_eq!(e.exit_code(), crate::error::exit::FAILURE);
        assert!(e.to_string().contains("deleted it again"), "{e}");
        assert!(r.new_keys().is_empty());
        assert_eq!(r.old("K1"), Some(KeyStatus::Active));
        assert!(r.untouched("K1"));
        assert!(r.sinks.iter().all(|s| s.holds().is_none()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_journal_failing_after_delivery_keeps_everything_and_says_what_aws_holds() {
        let journal = FakeJournal::default();
        journal.fail("delivered");
        let r = rotate(iam(true), journal, two_sinks()).await;
        let e = r.err();
        let Error::JournalIo(j) = e else {
            panic!("{e}")
        };
        let ctx = j.context.as_deref().unwrap_or_default();
        let new = r.new_keys();
        assert_eq!(new.len(), 1);
        assert!(
            ctx.contains(&format!("AWS holds the new key {}", new[0].0)),
            "{ctx}"
        );
        assert!(ctx.contains("old keys are untouched"), "{ctx}");
        assert!(ctx.contains(&format!("keyturn resume {RUN}")), "{ctx}");
        assert_eq!(r.old("K1"), Some(KeyStatus::Active));
        assert!(r.secret_kept(), "the erase itself failed");
        assert!(r.progress.new_key.is_some());
    }
}
