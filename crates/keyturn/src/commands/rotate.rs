//! `keyturn rotate`: replace one IAM user's access key.
//!
//! Reads the inventory, asks the planner, and (unless `--dry-run`) runs the plan
//! through the [`crate::engine::Engine`] with a journal, then delivers the new key.

use crate::aws::{KeyApi, SdkKeyApi};
use crate::engine::{Engine, Progress};
use crate::error::{exit, Error, Result};
use crate::journal::{Delivery, Journal, RunMeta, RunStatus};
use crate::model::{Inventory, Usage};
use crate::plan::{plan_rotation, PlanOptions, Target};
use crate::printer::{OutputFormat, Printer};
use crate::remote::RemoteConfig;
use crate::report::{ActionRecord, RotationReport, VerificationSummary};
use crate::verify::VerifyPolicy;
use time::OffsetDateTime;

/// Validated settings of one `rotate` invocation.
#[derive(Debug, Clone)]
pub struct RotateSettings {
    pub remote: RemoteConfig,
    /// The IAM user to rotate.
    pub user: String,
    pub options: PlanOptions,
    pub dry_run: bool,
    pub output: OutputFormat,
    pub verify: VerifyPolicy,
}

/// Run `keyturn rotate --user`.
pub async fn rotate<J: Journal>(
    settings: &RotateSettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let config = settings.remote.load().await;
    let api = SdkKeyApi::new(&config);
    rotate_with(&api, settings, journal, printer).await
}

/// [`rotate`] over any [`KeyApi`] (unit tests pass a fake).
pub async fn rotate_with<A: KeyApi, J: Journal>(
    api: &A,
    settings: &RotateSettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let caller = api.whoami().await?;
    tracing::debug!(caller = %caller.arn, "calling AWS as");
    let keys = api.list_keys(&settings.user).await?;
    let mut inventory = Inventory {
        user_name: settings.user.clone(),
        keys,
    };
    let target = Target::User;
    let now = OffsetDateTime::now_utc();
    let planned = plan_rotation(&inventory, &target, &settings.options, now);

    // Refusals and dry runs show each key's last use, which costs one call per key;
    // a plain rotation does not need it.
    if planned.is_err() || settings.dry_run {
        enrich_usage(api, &mut inventory).await?;
    }
    let planned = plan_rotation(&inventory, &target, &settings.options, now);

    if settings.dry_run {
        let report = RotationReport {
            run_id: None,
            account: Some(caller.account.clone()),
            user_name: settings.user.clone(),
            mode: target,
            dry_run: true,
            inventory: inventory.keys.clone(),
            actions: planned
                .as_ref()
                .map(|p| p.steps.iter().map(ActionRecord::planned).collect())
                .unwrap_or_default(),
            new_key: None,
            verification: None,
            profiles_updated: vec![],
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
    let meta = RunMeta {
        run_id: crate::journal::new_run_id(),
        account: caller.account.clone(),
        user_name: settings.user.clone(),
        target,
        options: settings.options.clone(),
        plan,
        inventory: inventory.keys.clone(),
        delivery: Delivery::Stdout {
            format: settings.output.as_str().into(),
        },
        remote: (&settings.remote).into(),
        verify_timeout_secs: settings.verify.timeout.as_secs(),
        started_at: now,
    };
    journal.begin(&meta).await?;
    let engine = Engine {
        api,
        journal,
        verify: settings.verify,
        profiles: None,
    };
    let mut progress = Progress::default();
    let result = engine.execute(&meta, &mut progress).await;
    finish_run(&meta, progress, result, settings.output, journal, printer).await
}

/// Deliver (print) the new key if the run produced one, erase it from the journal,
/// and close the run. Shared by `rotate` and `resume`.
pub async fn finish_run<J: Journal>(
    meta: &RunMeta,
    progress: Progress,
    result: Result<()>,
    output: OutputFormat,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let report = RotationReport {
        run_id: Some(meta.run_id.clone()),
        account: Some(meta.account.clone()),
        user_name: meta.user_name.clone(),
        mode: meta.target.clone(),
        dry_run: false,
        inventory: meta.inventory.clone(),
        actions: progress.actions,
        verification: progress.verification.map(|v| VerificationSummary {
            arn: v.arn,
            attempts: v.attempts,
            elapsed_ms: v.elapsed.as_millis() as u64,
        }),
        profiles_updated: progress.profiles_updated,
        error: result.as_ref().err().map(|e| e.to_string()),
        new_key: progress.new_key,
    };
    if report.new_key.is_some() {
        printer
            .rotation(&report, output)
            .map_err(|e| Error::io("writing the new credentials to stdout", e))?;
        crate::failpoint::hit("deliver");
        journal.delivered(&meta.run_id).await?;
    }
    for p in &report.profiles_updated {
        printer.status(&format!("keyturn: updated profile {p}"));
    }
    match result {
        Ok(()) => {
            journal
                .finish(&meta.run_id, RunStatus::Succeeded, None)
                .await?;
            if let Some(id) = report.new_key_id() {
                printer.status(&format!(
                    "keyturn: rotated {}: new key {id} (run {})",
                    meta.user_name, meta.run_id
                ));
            }
            Ok(exit::SUCCESS)
        }
        Err(e) => {
            let status = if report.new_key.is_some() {
                RunStatus::FailedAfterDelivery
            } else {
                RunStatus::Failed
            };
            journal
                .finish(&meta.run_id, status, Some(&e.to_string()))
                .await?;
            Err(e)
        }
    }
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
            user: "ci-bot".into(),
            options: o,
            dry_run: false,
            output: OutputFormat::Json,
            verify: VerifyPolicy {
                timeout: Duration::from_secs(60),
                ..VerifyPolicy::default()
            },
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
        let r = rotate_with(api, s, &NullJournal, &printer).await;
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
        assert_eq!(v["Actions"][2]["Result"], "failed");
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
