//! `keyturn resume [RUN_ID]`: finish rotations that were interrupted (kill -9, power
//! loss, a timeout) so the end state is the one an uninterrupted run leaves.
//!
//! The journal says which plan steps finished and whether one was started without a
//! result; the engine redoes that one idempotently (an orphan key from an interrupted
//! `create-key` is found and deleted) and carries on. The new secret comes back from
//! the journal (sealed) and is delivered again: printed on stdout, written to the
//! profile files.

use crate::aws::{NewKey, SdkKeyApi};
use crate::credfile::SharedFiles;
use crate::engine::{sink_reports, CreateWindow, Engine, Progress};
use crate::error::{exit, Error, Result};
use crate::journal::{Journal, RunRecord, RunStatus, StepPhase};
use crate::outcome::finish_run;
use crate::plan::{Mode, Step};
use crate::printer::{OutputFormat, Printer};
use crate::remote::RemoteConfig;
use crate::report::ActionRecord;
use crate::sink::{SinkEnv, SinkSet, SinkSpec};
use crate::verify::VerifyPolicy;
use aws_credential_types::Credentials;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct ResumeSettings {
    /// Only this run (default: every interrupted run, oldest first).
    pub run_id: Option<String>,
    /// MFA code, for self-rotations of a profile with `mfa_serial`.
    pub mfa_code: Option<String>,
}

/// Runs `resume` finishes: interrupted ones, and ones that stopped with work left.
fn resumable(status: RunStatus) -> bool {
    matches!(status, RunStatus::Running | RunStatus::Incomplete)
}

pub async fn resume<J: Journal>(
    settings: &ResumeSettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let mut runs: Vec<RunRecord> = match &settings.run_id {
        Some(id) => {
            let rec = journal.run(id).await?.ok_or_else(|| {
                Error::InvalidInput(format!("no run {id} in the journal; see `keyturn history`"))
            })?;
            if !resumable(rec.status) {
                printer.status(&format!(
                    "keyturn: run {id} already ended ({}); nothing to resume",
                    rec.status.as_str()
                ));
                return Ok(exit::SUCCESS);
            }
            vec![rec]
        }
        None => journal
            .runs(None)
            .await?
            .into_iter()
            .filter(|r| resumable(r.status))
            .collect(),
    };
    if runs.is_empty() {
        printer.status("keyturn: no interrupted run to resume");
        return Ok(exit::SUCCESS);
    }
    runs.reverse(); // oldest first
    if runs.len() == 1 {
        return resume_one(runs.remove(0), settings, journal, printer).await;
    }
    let mut code = exit::SUCCESS;
    for rec in runs {
        let id = rec.meta.run_id.clone();
        match resume_one(rec, settings, journal, printer).await {
            Ok(c) => code = code.max(c),
            Err(e) => {
                printer.error(&format!("run {id}: {}", crate::error::chain(&e)));
                code = code.max(e.exit_code());
            }
        }
    }
    Ok(code)
}

/// The shared files of a self-rotation (from its `profiles` sink).
fn profile_files(sinks: &[SinkSpec]) -> Option<(PathBuf, PathBuf)> {
    sinks.iter().find_map(|s| match s {
        SinkSpec::Profiles(p) => Some((p.credentials.clone(), p.config.clone())),
        _ => None,
    })
}

async fn resume_one<J: Journal>(
    rec: RunRecord,
    settings: &ResumeSettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let meta = rec.meta.clone();
    let run_id = meta.run_id.as_str();
    journal.take_over(run_id).await?;
    printer.status(&format!(
        "keyturn: resuming run {run_id} ({} in account {})",
        meta.user_name, meta.account
    ));
    let journaled = rec.progress();
    let steps = &meta.plan.steps;
    let files = profile_files(&meta.sinks);
    let secret = journal.secret(run_id).await?;
    let secret_erased = secret.is_none();
    // The secret is erased once every sink verified the new key; after that only a
    // self-rotation still needs it (the old key is retired signing with the new one),
    // and the profile files hold it then.
    let secret = match (secret, &rec.new_key_id, &files) {
        (Some(s), _, _) => Some(s),
        (None, Some(id), Some((cred, conf))) => SharedFiles::load(cred, conf).ok().and_then(|f| {
            let (_, profile) = f.holders(id).into_iter().next()?;
            f.secret(&profile).ok().flatten()
        }),
        _ => None,
    };
    let new_key = match (&rec.new_key_id, secret) {
        (Some(id), Some(secret)) => Some(NewKey {
            user_name: meta.user_name.clone(),
            access_key_id: id.clone(),
            secret,
            create_date: rec.new_key_created.unwrap_or(meta.started_at),
        }),
        _ => None,
    };
    let api = caller_api(&rec, new_key.as_ref(), files.as_ref(), settings).await?;
    let env = SinkEnv {
        aws: api.sdk_config().clone(),
        printer: printer.clone(),
        output: OutputFormat::parse(&meta.output).unwrap_or_default(),
    };
    let sinks = SinkSet::build(&meta.sinks, &env)?;

    // A delivery step that was started may have put the new key somewhere: from then
    // on the new key must not be deleted again.
    let started = |i: usize| {
        rec.steps
            .iter()
            .any(|s| s.index == Some(i) && s.phase == StepPhase::Intent)
    };
    let delivered = steps
        .iter()
        .enumerate()
        .any(|(i, s)| matches!(s, Step::Deliver { .. }) && started(i));
    let mut sink_state = sink_reports(&meta);
    for (i, s) in steps.iter().enumerate() {
        if let (Some(name), true) = (s.sink(), journaled.done[i]) {
            if let Some(r) = sink_state.iter_mut().find(|r| r.name == name) {
                r.delivered = true;
                r.verified |= matches!(s, Step::VerifyDelivery { .. });
            }
        }
    }
    let actions = rec
        .steps
        .iter()
        .filter(|s| s.phase == StepPhase::Done)
        .filter_map(|s| {
            s.index
                .and_then(|i| steps.get(i))
                .map(|st| ActionRecord::done(st, s.detail.clone()))
        })
        .collect();
    let mut next = journaled.next;
    let mut redo = journaled.next_started;
    // A read-back that failed is retried from the delivery of that sink.
    if let Some(Step::VerifyDelivery { sink, .. }) = steps.get(next) {
        if journaled.failed {
            if let Some(d) = steps[..next]
                .iter()
                .rposition(|s| matches!(s, Step::Deliver { sink: n, .. } if n == sink))
            {
                next = d;
                redo = false;
            }
        }
    }
    // An interrupted create-key: when could that attempt have made a key?
    let create_window = steps
        .iter()
        .position(|s| matches!(s, Step::CreateKey { .. }))
        .and_then(|ci| {
            let intent = rec
                .steps
                .iter()
                .filter(|s| s.index == Some(ci) && s.phase == StepPhase::Intent)
                .map(|s| s.at)
                .max()?;
            let last = rec.steps.iter().map(|s| s.at).max().unwrap_or(intent);
            Some(CreateWindow::after_crash(intent, last))
        });
    let mut progress = Progress {
        create_window,
        retire_checked: false,
        created_key_id: rec.new_key_id.clone(),
        next,
        redo,
        new_key,
        actions,
        verification: None,
        profiles_updated: vec![],
        delivered,
        sinks: sink_state,
        secret_erased,
        cleanup_pending: false,
    };
    let verify = VerifyPolicy {
        timeout: Duration::from_secs(meta.verify_timeout_secs.clamp(1, 3600)),
        ..VerifyPolicy::default()
    };
    let engine =
        Engine::new(&api, journal, verify, &sinks).retire_with_new_key(meta.mfa_serial.is_none());
    let result = if journaled.failed && !delivered {
        // The run had failed and was cleaning up when it stopped: finish the cleanup.
        Err(engine
            .compensate(
                &meta,
                &mut progress,
                Error::Runtime(format!("run {run_id} had failed before it was interrupted")),
            )
            .await)
    } else {
        crate::journal::with_heartbeat(
            journal,
            &meta.account,
            &meta.user_name,
            &meta.run_id,
            engine.execute(&meta, &mut progress),
        )
        .await
    };
    finish_run(&meta, progress, result, journal, printer).await
}

/// Credentials to resume with. User mode: the caller's chain as recorded. Profile
/// mode: whichever key the profile files hold now (always a working one: the old key
/// before the write, the new key after it).
async fn caller_api(
    rec: &RunRecord,
    new_key: Option<&NewKey>,
    files: Option<&(PathBuf, PathBuf)>,
    settings: &ResumeSettings,
) -> Result<SdkKeyApi> {
    let meta = &rec.meta;
    let mut remote = RemoteConfig::from(&meta.remote);
    let Mode::Profile { in_use_key } = &meta.mode else {
        return Ok(SdkKeyApi::new(&remote.load().await));
    };
    let (cred, conf) =
        files.ok_or_else(|| Error::Runtime("profile run without profile files".into()))?;
    let shared = SharedFiles::load(cred, conf)?;
    let creds = if let Some((_, profile)) = shared.holders(in_use_key).into_iter().next() {
        let secret = shared
            .secret(&profile)?
            .ok_or_else(|| Error::Runtime(format!("profile {profile} lost its secret")))?;
        Credentials::new(in_use_key, secret.expose(), None, None, "keyturn-resume")
    } else if let Some(k) = new_key.filter(|k| !shared.holders(&k.access_key_id).is_empty()) {
        Credentials::new(
            &k.access_key_id,
            k.secret.expose(),
            None,
            None,
            "keyturn-resume",
        )
    } else {
        return Err(Error::Runtime(format!(
            "neither the old key {in_use_key} nor the new key is in {} or {} any more; resume cannot sign in as the user",
            cred.display(),
            conf.display()
        )));
    };
    remote.profile = meta.profile.clone();
    let base = SdkKeyApi::new(&remote.load_with(Some(creds)).await);
    match &meta.mfa_serial {
        None => Ok(base),
        Some(serial) => {
            let code = settings.mfa_code.as_deref().ok_or_else(|| {
                Error::InvalidInput(format!(
                    "run {} used an MFA session ({serial}); pass --mfa-code CODE to resume it",
                    meta.run_id
                ))
            })?;
            crate::mfa::session_api(&base, serial, code).await
        }
    }
}
