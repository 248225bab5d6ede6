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
}

impl Progress {
    /// Sink reports for the plan's sinks, all not yet delivered.
    pub fn for_plan(meta: &RunMeta) -> Self {
        Self {
            sinks: sink_reports(meta),
            ..Default::default()
        }
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
                    let key_id = p
                        .new_key
                        .as_ref()
                        .map(|k| k.access_key_id.clone())
                        .unwrap_or_default();
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
                self.api
                    .delete_key(user, access_key_id)
                    .await
                    .or_else(|e| already_gone(e, redo))?;
                Ok(format!("deleted {access_key_id}"))
            }
            Step::CreateKey { .. } => {
                if redo {
                    self.delete_orphans(meta, p).await?;
                }
                let key = self.api.create_key(user).await?;
                failpoint::hit("create-key:call");
                self.journal.key_created(&meta.run_id, idx, &key).await?;
                let detail = format!("created {}", key.access_key_id);
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
                self.retire(meta, p, redo, async |api: &A| {
                    api.set_status(user, access_key_id, KeyStatus::Inactive)
                        .await
                })
                .await?;
                Ok(format!("deactivated {access_key_id}"))
            }
            Step::DeleteOldKey { access_key_id, .. } => {
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
        let with_new_key = matches!(meta.mode, Mode::Profile { .. }) && self.retire_with_new_key;
        if !with_new_key {
            return call(self.api).await.or_else(|e| already_gone(e, redo));
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
                r => return r.or_else(|e| already_gone(e, redo)),
            }
        }
    }

    /// Resume of an interrupted `create-key`: any key that was not in the run's
    /// starting inventory was created by this run and its secret is lost. Delete it.
    async fn delete_orphans(&self, meta: &RunMeta, p: &mut Progress) -> Result<()> {
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
            if k.create_date < meta.started_at - time::Duration::minutes(5) {
                // Created well before this run: not ours. Leave it (the plan will hit
                // the two-key limit and fail loudly rather than guess).
                continue;
            }
            self.api
                .delete_key(&meta.user_name, &k.access_key_id)
                .await?;
            let msg = format!(
                "deleted orphan key {} (created by the interrupted run; its secret was never journaled)",
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

    /// Undo a rotation that failed before any sink may hold the new key: delete the
    /// new key (with the caller's credentials), leave old keys as they are, and erase
    /// its sealed secret. If the deletion fails, the run stays resumable.
    pub async fn compensate(&self, meta: &RunMeta, p: &mut Progress, cause: Error) -> Error {
        let Some(key) = p.new_key.take() else {
            return cause;
        };
        let outcome = self
            .api
            .delete_key(&meta.user_name, &key.access_key_id)
            .await
            .or_else(|e| already_gone(e, true));
        let (ok, msg) = match &outcome {
            Ok(()) => (
                true,
                format!(
                    "deleted the new key {} again; old keys are unchanged",
                    key.access_key_id
                ),
            ),
            Err(e) => (
                false,
                format!(
                    "could not delete the new key {} ({e}); `keyturn resume {}` retries, or delete it by hand: aws iam delete-access-key --user-name {} --access-key-id {}",
                    key.access_key_id, meta.run_id, meta.user_name, key.access_key_id
                ),
            ),
        };
        if ok {
            tracing::warn!("{msg}");
            // The key is gone: its secret is of no use to anybody.
            if self.journal.delivered(&meta.run_id).await.is_ok() {
                p.secret_erased = true;
            }
        } else {
            tracing::error!("{msg}");
            p.cleanup_pending = true;
            p.new_key = Some(key.clone());
        }
        let _ = self
            .journal
            .note(&meta.run_id, "delete-new-key", ok, &msg)
            .await;
        p.actions.push(ActionRecord::note(
            "delete-new-key",
            Some(&key.access_key_id),
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
            other => Error::Runtime(format!("{other}; {msg}")),
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

/// On resume, a key already deleted by the interrupted attempt counts as deleted.
fn already_gone(e: Error, redo: bool) -> Result<()> {
    if redo && e.aws_kind() == Some(&AwsErrorKind::NoSuchEntity) {
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
