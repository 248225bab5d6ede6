//! `keyturn resume [RUN_ID]`: finish rotations that were interrupted (kill -9, power
//! loss, a timeout) so the end state is the one an uninterrupted run leaves.
//!
//! The journal says which plan steps finished and whether one was started without a
//! result; the engine redoes that one idempotently (an orphan key from an interrupted
//! `create-key` is found and deleted) and carries on. The new secret comes back from
//! the journal (sealed) and is delivered again: printed on stdout, written to the
//! profile files.

use crate::aws::{NewKey, SdkKeyApi};
use crate::commands::rotate::finish_run;
use crate::credfile::{FileProfileWriter, SharedFiles, SECRET};
use crate::engine::{Engine, ProfileWriter, Progress};
use crate::error::{exit, Error, Result};
use crate::journal::{Delivery, Journal, RunRecord, RunStatus, StepPhase};
use crate::plan::{Mode, Step};
use crate::printer::{OutputFormat, Printer};
use crate::remote::RemoteConfig;
use crate::report::ActionRecord;
use crate::verify::VerifyPolicy;
use aws_credential_types::Credentials;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct ResumeSettings {
    /// Only this run (default: every interrupted run, oldest first).
    pub run_id: Option<String>,
    /// MFA code, for self-rotations of a profile with `mfa_serial`.
    pub mfa_code: Option<String>,
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
            if rec.status != RunStatus::Running {
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
            .filter(|r| r.status == RunStatus::Running)
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

fn output_of(d: &Delivery) -> OutputFormat {
    let f = match d {
        Delivery::Stdout { format } | Delivery::Profiles { format, .. } => format,
    };
    OutputFormat::parse(f).unwrap_or_default()
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
    let progress = rec.progress();
    let done = &progress.done;
    let secret = journal.secret(run_id).await?;
    let new_key = match (&rec.new_key_id, secret) {
        (Some(id), Some(secret)) => Some(NewKey {
            user_name: meta.user_name.clone(),
            access_key_id: id.clone(),
            secret,
            create_date: rec.new_key_created.unwrap_or(meta.started_at),
        }),
        _ => None,
    };
    let steps = &meta.plan.steps;
    let done_of =
        |pred: fn(&Step) -> bool| steps.iter().enumerate().any(|(i, s)| pred(s) && done[i]);
    let created = done_of(|s| matches!(s, Step::CreateKey { .. }));
    if created && new_key.is_none() {
        // The secret was erased, which happens only after every output got the key.
        journal.finish(run_id, RunStatus::Succeeded, None).await?;
        printer.status(&format!(
            "keyturn: run {run_id} had already delivered its key; marked succeeded"
        ));
        return Ok(exit::SUCCESS);
    }

    let writer = match &meta.delivery {
        Delivery::Profiles {
            credentials,
            config,
            ..
        } => Some(FileProfileWriter {
            credentials: credentials.clone(),
            config: config.clone(),
            lock_wait: Duration::from_secs(5),
        }),
        _ => None,
    };
    let api = caller_api(&rec, new_key.as_ref(), writer.as_ref(), settings).await?;
    let delivered = match meta.mode {
        Mode::User => done_of(|s| matches!(s, Step::VerifyNewKey { .. })),
        Mode::Profile { .. } => done_of(|s| matches!(s, Step::WriteProfiles { .. })),
    };
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
    let failed = progress.failed;
    let mut progress = Progress {
        next: progress.next,
        redo: progress.next_started,
        new_key,
        actions,
        verification: None,
        profiles_updated: vec![],
        delivered,
    };
    let verify = VerifyPolicy {
        timeout: Duration::from_secs(meta.verify_timeout_secs.max(1)),
        ..VerifyPolicy::default()
    };
    let engine = Engine::new(&api, journal, verify).with_profiles(
        writer.as_ref().map(|w| w as &dyn ProfileWriter),
        meta.mfa_serial.is_none(),
    );
    let result = if failed && !delivered {
        // The run had failed and was cleaning up when it stopped: finish the cleanup.
        Err(engine
            .compensate(
                &meta,
                &mut progress,
                Error::Runtime(format!("run {run_id} had failed before it was interrupted")),
            )
            .await)
    } else {
        engine.execute(&meta, &mut progress).await
    };
    finish_run(
        &meta,
        progress,
        result,
        output_of(&meta.delivery),
        journal,
        printer,
    )
    .await
}

/// Credentials to resume with. User mode: the caller's chain as recorded. Profile
/// mode: whichever key the profile files hold now (always a working one: the old key
/// before the write, the new key after it).
async fn caller_api(
    rec: &RunRecord,
    new_key: Option<&NewKey>,
    writer: Option<&FileProfileWriter>,
    settings: &ResumeSettings,
) -> Result<SdkKeyApi> {
    let meta = &rec.meta;
    let mut remote = RemoteConfig::from(&meta.remote);
    let Mode::Profile { in_use_key } = &meta.mode else {
        return Ok(SdkKeyApi::new(&remote.load().await));
    };
    let w = writer.ok_or_else(|| Error::Runtime("profile run without profile files".into()))?;
    let files = SharedFiles::load(&w.credentials, &w.config)?;
    let creds = if let Some((_, profile)) = files.holders(in_use_key).into_iter().next() {
        let secret = files
            .get(&profile, SECRET)
            .ok_or_else(|| Error::Runtime(format!("profile {profile} lost its secret")))?;
        Credentials::new(in_use_key, secret, None, None, "keyturn-resume")
    } else if let Some(k) = new_key.filter(|k| !files.holders(&k.access_key_id).is_empty()) {
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
            w.credentials.display(),
            w.config.display()
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
            let session = base.session_with_mfa(serial, code).await?;
            Ok(base.with_session(&session))
        }
    }
}
