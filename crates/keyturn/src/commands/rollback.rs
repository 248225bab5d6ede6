//! `keyturn rollback --user NAME [--run RUN_ID]`: undo a rotation whose consumers turned
//! out to need the old key: re-activate the key(s) that run deactivated and deactivate
//! the key it created.
//!
//! A deleted key cannot come back, so a run that deleted what it retired is refused
//! (exit 2). Sinks that keep versions are put back to what they held before the run
//! (Secrets Manager moves AWSCURRENT back to AWSPREVIOUS; SSM writes the previous
//! value back); the new key is deactivated only when no consumer can still depend on
//! it: every sink was restored (the key printed on stdout is the caller's to handle).
//! A sink that keeps no history (a file, a hook, the profile files of a
//! self-rotation) still holds the new key, so the new key is left Active and the
//! report says which sinks still hold it.

use crate::aws::{KeyApi, SdkKeyApi};
use crate::error::{exit, Error, Result};
use crate::journal::{Journal, RunRecord, RunStatus, StepPhase};
use crate::model::KeyStatus;
use crate::plan::{Mode, Step};
use crate::printer::{HistoryFormat, Printer};
use crate::remote::RemoteConfig;
use crate::sink::{RollbackOutcome, RollbackRequest, SinkEnv, SinkSet, SinkSpec};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct RollbackSettings {
    pub remote: RemoteConfig,
    pub user: String,
    pub run_id: Option<String>,
    pub output: HistoryFormat,
}

/// What rollback did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RollbackReport {
    pub run_id: String,
    pub user_name: String,
    pub reactivated: Vec<String>,
    pub deactivated: Vec<String>,
    pub left_active: Vec<String>,
    /// What each sink of the run did (`restored` / `not-supported` / `failed`).
    pub sinks: Vec<SinkRollback>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SinkRollback {
    pub name: String,
    pub result: &'static str,
    pub detail: String,
}

fn done_keys(rec: &RunRecord, pred: fn(&Step) -> bool) -> Vec<String> {
    let steps = &rec.meta.plan.steps;
    let mut v: Vec<String> = rec
        .steps
        .iter()
        .filter(|s| s.phase == StepPhase::Done)
        .filter_map(|s| s.index.and_then(|i| steps.get(i)))
        .filter(|s| pred(s))
        .filter_map(|s| s.key_id().map(str::to_string))
        .collect();
    v.dedup();
    v
}

pub async fn rollback<J: Journal>(
    settings: &RollbackSettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let config = settings.remote.load().await;
    let api = SdkKeyApi::new(&config);
    let env = SinkEnv {
        aws: config,
        printer: printer.clone(),
        output: Default::default(),
    };
    rollback_with(&api, &env, settings, journal, printer).await
}

pub async fn rollback_with<A: KeyApi, J: Journal>(
    api: &A,
    env: &SinkEnv,
    settings: &RollbackSettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let runs = journal.runs(Some(&settings.user)).await?;
    let rec = match &settings.run_id {
        Some(id) => runs
            .into_iter()
            .find(|r| &r.meta.run_id == id)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "no run {id} of user {} in the journal",
                    settings.user
                ))
            })?,
        None => runs
            .into_iter()
            .find(|r| {
                matches!(
                    r.status,
                    RunStatus::Succeeded | RunStatus::FailedAfterDelivery
                )
            })
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "no completed rotation of user {} in the journal to roll back",
                    settings.user
                ))
            })?,
    };
    let run_id = rec.meta.run_id.clone();
    if !matches!(
        rec.status,
        RunStatus::Succeeded | RunStatus::FailedAfterDelivery
    ) {
        return Err(Error::InvalidInput(format!(
            "run {run_id} is {}; only a completed rotation can be rolled back",
            rec.status.as_str()
        )));
    }
    let deactivated = done_keys(&rec, |s| matches!(s, Step::DeactivateOldKey { .. }));
    let deleted = done_keys(&rec, |s| matches!(s, Step::DeleteOldKey { .. }));
    if let Some(k) = deactivated
        .iter()
        .chain(deleted.iter())
        .find(|k| deleted.contains(k))
    {
        return Err(Error::InvalidInput(format!(
            "run {run_id} deleted the key it replaced ({k}); a deleted key cannot be restored, so there is nothing to roll back to (rotate again instead)"
        )));
    }
    if deactivated.is_empty() {
        return Err(Error::InvalidInput(format!(
            "run {run_id} did not deactivate any key (the old key is still Active); nothing to roll back"
        )));
    }
    let caller = api.whoami().await?;
    if caller.account != rec.meta.account {
        return Err(Error::InvalidInput(format!(
            "run {run_id} was in account {}, but the credentials are for account {}; use the --profile of that account",
            rec.meta.account, caller.account
        )));
    }
    let lock_id = format!("rollback-{run_id}");
    journal
        .lock(&rec.meta.account, &settings.user, &lock_id)
        .await?;
    let result = apply(api, env, &rec, &deactivated, journal, printer).await;
    journal
        .unlock(&rec.meta.account, &settings.user, &lock_id)
        .await?;
    let report = result?;
    printer
        .json_or_table(&report, settings.output)
        .map_err(|e| Error::io("writing to stdout", e))?;
    Ok(exit::SUCCESS)
}

async fn apply<A: KeyApi, J: Journal>(
    api: &A,
    env: &SinkEnv,
    rec: &RunRecord,
    old_keys: &[String],
    journal: &J,
    printer: &Printer,
) -> Result<RollbackReport> {
    let run_id = &rec.meta.run_id;
    let user = &rec.meta.user_name;
    let keys = api.list_keys(user).await?;
    for k in old_keys {
        if !keys.iter().any(|x| &x.access_key_id == k) {
            return Err(Error::InvalidInput(format!(
                "key {k} that run {run_id} deactivated no longer exists (deleted since); nothing was changed"
            )));
        }
    }
    let mut report = RollbackReport {
        run_id: run_id.clone(),
        user_name: user.clone(),
        reactivated: vec![],
        deactivated: vec![],
        left_active: vec![],
        sinks: vec![],
    };
    for k in old_keys {
        api.set_status(user, k, KeyStatus::Active).await?;
        journal
            .note(run_id, "rollback", true, &format!("re-activated {k}"))
            .await?;
        printer.status(&format!("keyturn: re-activated {k}"));
        report.reactivated.push(k.clone());
    }
    // Put the sinks back (after the old key works again, before the new one stops).
    let mut still_hold_new: Vec<String> = Vec::new();
    let specs: Vec<_> = rec
        .meta
        .sinks
        .iter()
        .filter(|s| !matches!(s, SinkSpec::Stdout(_)))
        .cloned()
        .collect();
    let sinks = SinkSet::build(&specs, env)?;
    for name in sinks.names() {
        let sink = sinks.get(name)?;
        let req = RollbackRequest {
            account: &rec.meta.account,
            user_name: user,
            run_id,
            new_key_id: rec.new_key_id.as_deref().unwrap_or_default(),
            old_key_id: old_keys.first().map(String::as_str),
        };
        let (result, detail) = match sink.rollback(&req).await {
            Ok(RollbackOutcome::Restored(d)) => ("restored", d),
            Ok(RollbackOutcome::NotSupported(d)) => {
                still_hold_new.push(name.to_string());
                ("not-supported", d)
            }
            Err(e) => {
                still_hold_new.push(name.to_string());
                ("failed", e.to_string())
            }
        };
        journal
            .note(
                run_id,
                "rollback",
                result == "restored",
                &format!("sink {name}: {detail}"),
            )
            .await?;
        printer.status(&format!("keyturn: sink {name}: {detail}"));
        report.sinks.push(SinkRollback {
            name: name.to_string(),
            result,
            detail,
        });
    }
    if let Some(new) = rec
        .new_key_id
        .as_ref()
        .filter(|n| keys.iter().any(|x| &x.access_key_id == *n))
    {
        if matches!(rec.meta.mode, Mode::Profile { .. }) {
            printer.status(&format!(
                "keyturn: kept the new key {new} Active: the profile files hold it (deactivating it would lock them out)"
            ));
            report.left_active.push(new.clone());
        } else if !still_hold_new.is_empty() {
            printer.status(&format!(
                "keyturn: kept the new key {new} Active: {} still hold{} it (deactivating it would break their consumers); deactivate it yourself once they hold the old key again",
                still_hold_new.join(", "),
                if still_hold_new.len() == 1 { "s" } else { "" }
            ));
            report.left_active.push(new.clone());
        } else {
            api.set_status(user, new, KeyStatus::Inactive).await?;
            journal
                .note(run_id, "rollback", true, &format!("deactivated {new}"))
                .await?;
            printer.status(&format!("keyturn: deactivated the new key {new}"));
            report.deactivated.push(new.clone());
        }
    }
    journal.finish(run_id, RunStatus::RolledBack, None).await?;
    Ok(report)
}
