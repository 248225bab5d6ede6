//! `keyturn rotate`: replace one IAM user's access key, or the key a profile uses.
//!
//! `--user NAME` rotates that user's key, calling AWS as the caller. `--profile NAME`
//! alone rotates the caller's own key: the static key of that profile (following a
//! role profile to its `source_profile` when allowed), written back into every
//! profile that holds it. Both read the inventory, ask the planner, and (unless
//! `--dry-run`) run the plan through the [`crate::engine::Engine`] with a journal.

use crate::aws::{KeyApi, SdkKeyApi};
use crate::credfile::{FileProfileWriter, SharedFiles};
use crate::engine::{Engine, Progress};
use crate::error::{exit, Error, Result};
use crate::journal::{Journal, RunMeta};
use crate::mfa;
use crate::model::{Inventory, Usage};
/// Moved to [`crate::outcome`]; re-exported for callers of its old path.
pub use crate::outcome::finish_run;
use crate::plan::{plan_rotation, Mode, PlanOptions, Refusal};
use crate::printer::{OutputFormat, Printer};
use crate::profile_chain::{rotatable_profile, ChainPolicy, RotatableProfile};
use crate::remote::RemoteConfig;
use crate::report::{ActionRecord, ProfileUpdate, RotationReport};
use crate::sink::profiles::ProfilesSpec;
use crate::sink::stdout::StdoutSpec;
use crate::sink::{SinkEnv, SinkSet, SinkSpec};
use crate::verify::VerifyPolicy;
use aws_credential_types::Credentials;
use time::OffsetDateTime;

/// Whose key to rotate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOwner {
    /// `--user NAME`.
    User(String),
    /// `--profile NAME` without `--user`: the profile's own key.
    OwnProfile(String),
}

/// Validated settings of one `rotate` invocation.
#[derive(Debug, Clone)]
pub struct RotateSettings {
    pub remote: RemoteConfig,
    pub owner: KeyOwner,
    pub options: PlanOptions,
    pub dry_run: bool,
    pub output: OutputFormat,
    pub verify: VerifyPolicy,
    /// Profile mode: a role profile may be followed to its `source_profile`.
    pub source_profile_ok: bool,
    /// Profile mode: the MFA code for a profile with `mfa_serial`.
    pub mfa_code: Option<String>,
    /// stdin and stderr are a terminal: confirmations may be asked.
    pub interactive: bool,
    /// `--sink NAME...`, resolved against the settings file (placeholders not yet
    /// filled in). Empty: print on stdout (and, in self-rotation, write the profiles).
    pub sinks: Vec<SinkSpec>,
}

impl RotateSettings {
    /// The sinks of this rotation, in delivery order, before placeholders are filled.
    fn sink_specs(&self, profiles: Option<&FileProfileWriter>) -> Vec<SinkSpec> {
        let stdout = || {
            SinkSpec::Stdout(StdoutSpec {
                format: self.output.as_str().into(),
            })
        };
        let mut v = Vec::new();
        if let Some(w) = profiles {
            v.push(SinkSpec::Profiles(ProfilesSpec {
                credentials: w.credentials.clone(),
                config: w.config.clone(),
            }));
        }
        if self.sinks.is_empty() {
            v.push(stdout());
        } else {
            v.extend(self.sinks.iter().cloned());
        }
        v
    }
}

/// When stdout would be the only place the new secret goes, refuse a stdout that
/// throws it away (`> /dev/null`, or closed at start, which the Rust runtime reopens
/// as /dev/null): the old key would be retired and the new secret lost.
fn check_stdout_destination(specs: &[SinkSpec], printer: &Printer) -> Result<()> {
    let only_stdout = specs.iter().all(|s| matches!(s, SinkSpec::Stdout(_)));
    if only_stdout && printer.stdout_discards() {
        return Err(Error::InvalidInput(
            "stdout is /dev/null (or was closed), and it is the only place the new secret would go; redirect stdout to a file or pipe, or deliver with --sink; nothing was changed".into(),
        ));
    }
    Ok(())
}

/// The resolved subject of one rotation.
struct Subject<'a> {
    user: String,
    account: String,
    mode: Mode,
    writer: Option<&'a FileProfileWriter>,
    /// Self-rotation: the profiles holding the key, as the files were read at start
    /// (what a dry run reports).
    holders: Vec<ProfileUpdate>,
    retire_with_new_key: bool,
    /// Self-rotation: the profile named on the command line, and its MFA device.
    profile: Option<String>,
    mfa_serial: Option<String>,
}

/// Run `keyturn rotate`.
pub async fn rotate<J: Journal>(
    settings: &RotateSettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    match &settings.owner {
        KeyOwner::User(_) => {
            check_stdout_destination(&settings.sink_specs(None), printer)?;
            let config = settings.remote.load().await;
            let api = SdkKeyApi::new(&config);
            let env = sink_env(&config, settings, printer);
            rotate_with(&api, &env, settings, journal, printer).await
        }
        KeyOwner::OwnProfile(name) => rotate_own_profile(name, settings, journal, printer).await,
    }
}

fn sink_env(
    config: &aws_config::SdkConfig,
    settings: &RotateSettings,
    printer: &Printer,
) -> SinkEnv {
    SinkEnv {
        aws: config.clone(),
        printer: printer.clone(),
        output: settings.output,
    }
}

/// `rotate --user` over any [`KeyApi`] (unit tests pass a fake).
pub async fn rotate_with<A: KeyApi, J: Journal>(
    api: &A,
    env: &SinkEnv,
    settings: &RotateSettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let KeyOwner::User(user) = &settings.owner else {
        return Err(Error::InvalidInput("rotate_with needs --user".into()));
    };
    let caller = api.whoami().await?;
    tracing::debug!(caller = %caller.arn, "calling AWS as");
    let subject = Subject {
        user: user.clone(),
        account: caller.account,
        mode: Mode::User,
        writer: None,
        holders: vec![],
        retire_with_new_key: false,
        profile: None,
        mfa_serial: None,
    };
    run(api, env, subject, settings, journal, printer).await
}

async fn rotate_own_profile<J: Journal>(
    name: &str,
    settings: &RotateSettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let writer = FileProfileWriter::from_env();
    let files = SharedFiles::load(&writer.credentials, &writer.config)?;
    let RotatableProfile {
        profile,
        key_id,
        secret,
    } = rotatable_profile(
        &files,
        name,
        ChainPolicy {
            source_profile_ok: settings.source_profile_ok,
            interactive: settings.interactive,
        },
        printer,
    )?;
    // Files keyturn could not replace safely are refused before any AWS call.
    writer.preflight(&files.holders(&key_id))?;
    // Region and endpoint settings come from the named profile; the credentials are
    // the static key being rotated (never an assumed role).
    let mut remote = settings.remote.clone();
    remote.profile = Some(name.to_string());
    let creds = Credentials::new(&key_id, secret.expose(), None, None, "keyturn-profile");
    let base = SdkKeyApi::new(&remote.load_with(Some(creds)).await);
    let caller = base.whoami().await?;
    let Some(user) = caller.user_name().map(str::to_string) else {
        return Err(Error::InvalidInput(format!(
            "the key of profile '{profile}' authenticates as {}, not as an IAM user; keyturn rotates IAM user keys only (root keys should be deleted, not rotated)",
            caller.arn
        )));
    };
    let sink_env = sink_env(&remote.load().await, settings, printer);
    let mfa_serial = mfa::serial_of(&files, &profile, name);
    let iam = match &mfa_serial {
        None => base.clone(),
        Some(serial) => {
            let code = mfa::code(
                settings.mfa_code.as_deref(),
                serial,
                settings.interactive,
                printer,
                || {
                    Error::InvalidInput(format!(
                    "profile '{profile}' has mfa_serial {serial}: pass --mfa-code CODE (IAM calls use an MFA session from the current key)"
                ))
                },
            )?;
            let api = mfa::session_api(&base, serial, &code).await?;
            printer.status(&format!("keyturn: using an MFA session for {serial}"));
            api
        }
    };
    let subject = Subject {
        user,
        account: caller.account,
        mode: Mode::Profile {
            in_use_key: key_id.clone(),
        },
        writer: Some(&writer),
        holders: files
            .holders(&key_id)
            .into_iter()
            .map(|(file, profile)| ProfileUpdate {
                file,
                profile,
                removed_session_token: false,
            })
            .collect(),
        // With MFA the new key alone may lack permission (policies requiring MFA),
        // so the MFA session retires the old key; the new key was verified already.
        retire_with_new_key: mfa_serial.is_none(),
        profile: Some(name.to_string()),
        mfa_serial,
    };
    run(&iam, &sink_env, subject, settings, journal, printer).await
}

/// Lock the user (unless dry run), then [`plan_and_run`]; the lock is released on
/// any exit before the run is recorded, and by `finish` after.
async fn run<A: KeyApi, J: Journal>(
    api: &A,
    env: &SinkEnv,
    subject: Subject<'_>,
    settings: &RotateSettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    if settings.dry_run {
        return plan_and_run(api, env, subject, None, settings, journal, printer).await;
    }
    let run_id = crate::journal::new_run_id();
    let (account, user) = (subject.account.clone(), subject.user.clone());
    journal.lock(&account, &user, &run_id).await?;
    let mut begun = false;
    let result = plan_and_run(
        api,
        env,
        subject,
        Some((&run_id, &mut begun)),
        settings,
        journal,
        printer,
    )
    .await;
    if !begun {
        journal.unlock(&account, &user, &run_id).await?;
    }
    result
}

/// Inventory -> plan -> (dry run | engine) -> delivery, for either mode.
async fn plan_and_run<A: KeyApi, J: Journal>(
    api: &A,
    env: &SinkEnv,
    subject: Subject<'_>,
    run: Option<(&str, &mut bool)>,
    settings: &RotateSettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let keys = api.list_keys(&subject.user).await?;
    let mut inventory = Inventory {
        user_name: subject.user.clone(),
        keys,
    };
    let mode = subject.mode.clone();
    let now = OffsetDateTime::now_utc();
    // Sinks with {account} and {user} filled in: what the run journals and uses.
    let specs = settings
        .sink_specs(subject.writer)
        .iter()
        .map(|s| s.render(&subject.account, &subject.user))
        .collect::<Result<Vec<_>>>()?;
    let mut options = settings.options.clone();
    options.sinks = specs.iter().map(|s| s.name().to_string()).collect();
    let mut planned = plan_rotation(&inventory, &mode, &options, now);

    // Refusals and dry runs show each key's last use, which costs one call per key;
    // a plain rotation does not need it.
    if planned.is_err() || settings.dry_run {
        enrich_usage(api, &mut inventory).await?;
        planned = plan_rotation(&inventory, &mode, &options, now);
    }
    if let Err(Refusal::EvictNeedsConfirmation { other, .. }) = &planned {
        if settings.interactive && !settings.dry_run {
            printer.status(&format!("keyturn: {}", planned.as_ref().unwrap_err()));
            if printer.confirm(&format!("Delete {} now?", other.access_key_id)) {
                options.confirmed_evict = true;
                planned = plan_rotation(&inventory, &mode, &options, now);
            }
        }
    }

    if settings.dry_run {
        let report = RotationReport {
            run_id: None,
            account: Some(subject.account.clone()),
            user_name: subject.user.clone(),
            mode: mode.clone(),
            dry_run: true,
            inventory: inventory.keys.clone(),
            actions: planned
                .as_ref()
                .map(|p| p.steps.iter().map(ActionRecord::planned).collect())
                .unwrap_or_default(),
            new_key: None,
            verification: None,
            profiles_updated: subject.holders.clone(),
            sinks: specs
                .iter()
                .map(|s| crate::report::SinkReport {
                    name: s.name().to_string(),
                    kind: s.kind().to_string(),
                    delivered: false,
                    verified: false,
                    detail: None,
                })
                .collect(),
            error: planned.as_ref().err().map(|e| e.to_string()),
        };
        printer
            .rotation(&report, settings.output)
            .map_err(|e| Error::io("writing to stdout", e))?;
        return match planned {
            Ok(_) => Ok(exit::SUCCESS),
            Err(r) => Err(r.into()),
        };
    }
    let plan = planned?;
    let Some((run_id, begun)) = run else {
        return Err(Error::Runtime("a real run needs a run id".into()));
    };
    // Building a sink reads the secrets it needs (tokens): a missing one fails here,
    // before anything is changed.
    let sinks = SinkSet::build(&specs, env)?;
    let meta = RunMeta {
        run_id: run_id.to_string(),
        account: subject.account.clone(),
        user_name: subject.user.clone(),
        mode,
        options,
        plan,
        inventory: inventory.keys.clone(),
        sinks: specs,
        output: settings.output.as_str().into(),
        remote: (&settings.remote).into(),
        verify_timeout_secs: settings.verify.timeout.as_secs(),
        started_at: now,
        profile: subject.profile.clone(),
        mfa_serial: subject.mfa_serial.clone(),
    };
    journal.begin(&meta).await?;
    *begun = true;
    let engine = Engine::new(api, journal, settings.verify, &sinks)
        .retire_with_new_key(subject.retire_with_new_key);
    let mut progress = Progress::for_plan(&meta);
    // The lease on (account, user) is renewed while the run works, so a long step
    // (IAM taking its time to accept the key) is not mistaken for a dead runner.
    let result = crate::journal::with_heartbeat(
        journal,
        &meta.account,
        &meta.user_name,
        &meta.run_id,
        engine.execute(&meta, &mut progress),
    )
    .await;
    finish_run(&meta, progress, result, journal, printer).await
}

/// Fill in each key's last use (`iam:GetAccessKeyLastUsed`).
pub async fn enrich_usage<A: KeyApi>(api: &A, inventory: &mut Inventory) -> Result<()> {
    for k in &mut inventory.keys {
        if k.usage == Usage::Unknown {
            k.usage = api.last_used(&k.access_key_id).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AwsErrorKind;
    use crate::fake::FakeApi;
    use crate::journal::NullJournal;
    use crate::model::KeyStatus;
    use std::time::Duration;

    fn settings(o: PlanOptions) -> RotateSettings {
        RotateSettings {
            remote: RemoteConfig::default(),
            owner: KeyOwner::User("ci-bot".into()),
            options: o,
            dry_run: false,
            output: OutputFormat::Json,
            verify: VerifyPolicy {
                timeout: Duration::from_secs(60),
                ..VerifyPolicy::default()
            },
            source_profile_ok: false,
            mfa_code: None,
            interactive: false,
            sinks: vec![],
        }
    }

    fn destructive() -> PlanOptions {
        PlanOptions {
            deactivate_old_keys: true,
            delete_inactive_keys: true,
            yes: true,
            verify: true,
            ..Default::default()
        }
    }

    async fn run(api: &FakeApi, s: &RotateSettings) -> (Result<i32>, String, String) {
        let (printer, out, err) = Printer::capture();
        let env = SinkEnv {
            aws: aws_config::SdkConfig::builder().build(),
            printer: printer.clone(),
            output: s.output,
        };
        let r = rotate_with(api, &env, s, &NullJournal, &printer).await;
        (r, out.text(), err.text())
    }

    #[tokio::test(start_paused = true)]
    async fn verification_that_never_succeeds_deletes_new_key_and_keeps_old() {
        let api = FakeApi::new(&["ci-bot"]);
        api.add_key("ci-bot", "K1", KeyStatus::Active, 100);
        api.state.lock().unwrap().new_key_warmup = u32::MAX;
        let (r, out, _) = run(&api, &settings(destructive())).await;
        let e = r.unwrap_err();
        assert!(matches!(e, Error::VerificationFailed { .. }), "{e}");
        assert_eq!(e.exit_code(), exit::FAILURE);
        assert!(e.to_string().contains("deleted the new key"), "{e}");
        assert_eq!(
            api.keys_of("ci-bot"),
            [("K1".to_string(), KeyStatus::Active)]
        );
        assert!(
            out.is_empty(),
            "no credentials are printed for a deleted key"
        );
        // Nothing touched K1.
        assert!(!api
            .calls()
            .iter()
            .any(|(a, _, arg)| a != "iam:ListAccessKeys" && arg == "K1"));
    }

    #[tokio::test(start_paused = true)]
    async fn verification_retries_with_backoff_then_needs_consecutive_successes() {
        let api = FakeApi::new(&["ci-bot"]);
        api.add_key("ci-bot", "K1", KeyStatus::Active, 100);
        api.state.lock().unwrap().new_key_warmup = 4;
        let t0 = tokio::time::Instant::now();
        let (r, out, _) = run(&api, &settings(destructive())).await;
        assert_eq!(r.unwrap(), exit::SUCCESS);
        let sts = api
            .calls()
            .iter()
            .filter(|(a, s, _)| a == "sts:GetCallerIdentity" && s != "admin")
            .count();
        assert_eq!(sts, 4 + 3, "4 failures then 3 consecutive successes");
        // Backoff 250+500+1000+2000 ms, only after failures.
        assert_eq!(t0.elapsed(), Duration::from_millis(3750));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Verification"]["Attempts"], 7);
        assert_eq!(api.keys_of("ci-bot").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_that_works_at_once_costs_no_waiting() {
        let api = FakeApi::new(&["ci-bot"]);
        api.add_key("ci-bot", "K1", KeyStatus::Active, 100);
        let t0 = tokio::time::Instant::now();
        let (r, _, _) = run(&api, &settings(destructive())).await;
        assert_eq!(r.unwrap(), exit::SUCCESS);
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_after_verification_still_prints_the_new_key() {
        let api = FakeApi::new(&["ci-bot"]);
        api.add_key("ci-bot", "K1", KeyStatus::Active, 100);
        api.fail("iam:UpdateAccessKey", AwsErrorKind::AccessDenied);
        let (r, out, _) = run(&api, &settings(destructive())).await;
        let e = r.unwrap_err();
        assert_eq!(e.exit_code(), exit::FAILURE);
        assert!(matches!(e, Error::AfterDelivery { .. }));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let new_id = v["AccessKeyId"].as_str().unwrap().to_string();
        assert!(v["SecretAccessKey"]
            .as_str()
            .unwrap()
            .starts_with("NEWSECRET"));
        let keys = api.keys_of("ci-bot");
        assert!(keys.contains(&(new_id, KeyStatus::Active)));
        assert!(keys.contains(&("K1".to_string(), KeyStatus::Active)));
        // The credentials were printed before anything old was touched, so the
        // printed report still shows the retirement as planned; the error says it failed.
        assert_eq!(v["Actions"][4]["Step"], "deactivate-old-key");
        assert_eq!(v["Actions"][4]["Result"], "planned");
        assert!(e.to_string().contains("deactivate-old-key failed"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn create_failure_changes_nothing_and_prints_nothing() {
        let api = FakeApi::new(&["ci-bot"]);
        api.add_key("ci-bot", "K1", KeyStatus::Active, 100);
        api.add_key("ci-bot", "K2", KeyStatus::Inactive, 100);
        api.fail("iam:CreateAccessKey", AwsErrorKind::Throttling);
        let (r, out, _) = run(&api, &settings(destructive())).await;
        let e = r.unwrap_err();
        assert_eq!(e.exit_code(), exit::FAILURE);
        assert!(e.to_string().contains("throttled"), "{e}");
        assert!(out.is_empty());
        // The free-slot deletion of the Inactive key had happened (it was planned and
        // is harmless); the Active key is untouched.
        assert_eq!(
            api.keys_of("ci-bot"),
            [("K1".to_string(), KeyStatus::Active)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_user_is_a_guard_failure() {
        let api = FakeApi::new(&[]);
        let (r, out, _) = run(&api, &settings(PlanOptions::default())).await;
        let e = r.unwrap_err();
        assert!(matches!(e, Error::NoSuchUser { .. }));
        assert_eq!(e.exit_code(), exit::GUARD);
        assert!(out.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn dry_run_prints_plan_and_changes_nothing() {
        let api = FakeApi::new(&["ci-bot"]);
        api.add_key("ci-bot", "K1", KeyStatus::Active, 100);
        let mut s = settings(destructive());
        s.dry_run = true;
        let (r, out, _) = run(&api, &s).await;
        assert_eq!(r.unwrap(), exit::SUCCESS);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["DryRun"], true);
        assert!(v.get("SecretAccessKey").is_none());
        let steps: Vec<&str> = v["Actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["Step"].as_str().unwrap())
            .collect();
        assert_eq!(
            steps,
            [
                "create-key",
                "verify-new-key",
                "deliver",
                "verify-delivery",
                "deactivate-old-key",
                "delete-old-key"
            ]
        );
        assert_eq!(
            api.keys_of("ci-bot"),
            [("K1".to_string(), KeyStatus::Active)]
        );
        assert!(api.calls().iter().all(|(a, _, _)| !a.contains("Create")
            && !a.contains("Update")
            && !a.contains("Delete")));
    }

    #[tokio::test(start_paused = true)]
    async fn secret_never_reaches_stderr_or_error_text() {
        let api = FakeApi::new(&["ci-bot"]);
        api.add_key("ci-bot", "K1", KeyStatus::Active, 100);
        api.fail("iam:DeleteAccessKey", AwsErrorKind::AccessDenied);
        let (r, out, err) = run(&api, &settings(destructive())).await;
        let e = r.unwrap_err();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let secret = v["SecretAccessKey"].as_str().unwrap();
        assert!(!err.contains(secret));
        assert!(!format!("{e} {e:?}").contains(secret));
    }
}
