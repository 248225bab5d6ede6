//! Executes a rotation plan step by step, journaling each step before and after its
//! AWS call, and undoing the new key when the rotation cannot complete safely.
//!
//! The same code runs a fresh rotation and finishes an interrupted one (`resume`):
//! [`Progress`] says where to start, and a step whose intent was journaled without a
//! result is redone idempotently (a key already deleted counts as deleted; a key
//! created but never journaled is found as an orphan and deleted before creating
//! again).
//!
//! Safety invariants enforced here:
//! - only keys named by the plan are deactivated or deleted;
//! - nothing old is retired before the new key verified (the plan orders it so, and
//!   verification failure stops the run);
//! - a failure before the new key is delivered deletes the new key again, leaving old
//!   keys exactly as they were;
//! - a failure after delivery keeps the new key, so the caller still outputs it.

use crate::aws::{KeyApi, NewKey};
use crate::error::{AwsErrorKind, Error, Result};
use crate::failpoint;
use crate::journal::{Journal, RunMeta};
use crate::model::KeyStatus;
use crate::plan::{Mode, Step};
use crate::report::{ActionRecord, ProfileUpdate};
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
    /// The new key has reached a consumer (verified, and profiles written if any), so
    /// a later failure must not delete it.
    pub delivered: bool,
}

pub struct Engine<'a, A: KeyApi, J: Journal> {
    /// The caller's API (old credentials in self-rotation).
    api: &'a A,
    journal: &'a J,
    verify: VerifyPolicy,
    profiles: Option<&'a dyn ProfileWriter>,
    /// Self-rotation: retire the old key signing with the new one (proves it). False
    /// when the caller's session must be used (an MFA session).
    retire_with_new_key: bool,
    /// The API signing with the new key, built once it is known (verification and
    /// retiring share its clients).
    new_key_api: OnceLock<A>,
}

impl<'a, A: KeyApi, J: Journal> Engine<'a, A, J> {
    /// An engine for `--user` runs: every call is made as the caller.
    pub fn new(api: &'a A, journal: &'a J, verify: VerifyPolicy) -> Self {
        Self {
            api,
            journal,
            verify,
            profiles: None,
            retire_with_new_key: false,
            new_key_api: OnceLock::new(),
        }
    }

    /// Self-rotation: write profiles with `writer`; retire the old key with the new key
    /// when `retire_with_new_key` (else with the caller, e.g. an MFA session).
    pub fn with_profiles(
        mut self,
        writer: Option<&'a dyn ProfileWriter>,
        retire_with_new_key: bool,
    ) -> Self {
        self.profiles = writer;
        self.retire_with_new_key = retire_with_new_key;
        self
    }

    /// Run the plan's steps from `p.next`. On `Err`, `p.new_key` is `Some` only if the
    /// new key survives (failure after delivery); otherwise it was deleted again.
    pub async fn execute(&self, meta: &RunMeta, p: &mut Progress) -> Result<()> {
        let steps = &meta.plan.steps;
        while p.next < steps.len() {
            let idx = p.next;
            let step = &steps[idx];
            let redo = std::mem::take(&mut p.redo);
            if !redo {
                self.journal.intent(&meta.run_id, idx, step).await?;
            }
            failpoint::hit(&format!("{}:intent", step.name()));
            match self.run_step(meta, idx, step, redo, p).await {
                Ok(detail) => {
                    if !matches!(step, Step::CreateKey { .. }) {
                        self.journal
                            .done(&meta.run_id, idx, step, true, &detail)
                            .await?;
                    }
                    tracing::info!("{}: {detail}", step.name());
                    p.actions.push(ActionRecord::done(step, detail));
                    failpoint::hit(step.name());
                    p.next += 1;
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.journal
                        .done(&meta.run_id, idx, step, false, &msg)
                        .await?;
                    p.actions.push(ActionRecord::failed(step, msg));
                    if !p.delivered {
                        return Err(self.compensate(meta, p, e).await);
                    }
                    return Err(Error::AfterDelivery {
                        step: step.name().to_string(),
                        key_id: p
                            .new_key
                            .as_ref()
                            .map(|k| k.access_key_id.clone())
                            .unwrap_or_default(),
                        source: Box::new(e),
                    });
                }
            }
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
                        if !matches!(meta.mode, Mode::Profile { .. }) {
                            p.delivered = true;
                        }
                        Ok(detail)
                    }
                    Err(f) => Err(verification_error(key, &self.verify, f)),
                }
            }
            Step::WriteProfiles { .. } => {
                let key = self.new_key(p)?;
                let Mode::Profile { in_use_key } = &meta.mode else {
                    return Err(Error::Runtime("write-profiles outside profile mode".into()));
                };
                let writer = self
                    .profiles
                    .ok_or_else(|| Error::Runtime("no profile writer configured".into()))?;
                let updated = writer.write(in_use_key, key)?;
                let names: Vec<String> = updated.iter().map(|u| u.to_string()).collect();
                p.profiles_updated = updated;
                p.delivered = true;
                Ok(format!("updated {}", names.join(", ")))
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

    /// Undo a rotation that failed before delivery: delete the new key (with the
    /// caller's credentials), leave old keys as they are.
    pub async fn compensate(&self, meta: &RunMeta, p: &mut Progress, cause: Error) -> Error {
        let Some(key) = p.new_key.take() else {
            return cause;
        };
        let outcome = self
            .api
            .delete_key(&meta.user_name, &key.access_key_id)
            .await;
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
                    "could not delete the new key {} ({e}); delete it by hand: aws iam delete-access-key --user-name {} --access-key-id {}",
                    key.access_key_id, meta.user_name, key.access_key_id
                ),
            ),
        };
        if ok {
            tracing::warn!("{msg}");
        } else {
            tracing::error!("{msg}");
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
