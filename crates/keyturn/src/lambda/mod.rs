//! keyturn as an AWS Lambda function: all of its logic, so the `keyturn-lambda`
//! binary stays a shim over `lambda_runtime`.
//!
//! Settings are the CLI's TOML, from the file named by `KEYTURN_CONFIG` or the SSM
//! parameter named by `KEYTURN_CONFIG_PARAMETER`; AWS endpoints follow the usual
//! `AWS_*` variables. [`handle`] classifies the payload ([`event`]) and runs one of:
//! a scheduled fleet run ([`fleet`]), a Secrets Manager rotation step ([`rotation`]),
//! or an on-demand rotation of one user ([`rotate_one`]).

pub mod event;
pub mod fleet;
pub mod rotation;

use crate::config::FileConfig;
use crate::error::{AwsError, Error, Result};
use crate::journal::JournalSettings;
use crate::printer::{OutputFormat, Printer};
use crate::remote::RemoteConfig;
use crate::sink::{SinkEnv, SinkSpec};
use crate::verify::VerifyPolicy;
use event::{Event, RotateRequest};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Time kept back from the invocation's deadline: work stops starting this long
/// before Lambda would kill the function (default of `[lambda] deadline_margin_seconds`).
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(30);

/// One invocation's surroundings (from the Lambda `Context`).
#[derive(Debug, Clone)]
pub struct Invocation {
    /// When Lambda stops the invocation.
    pub deadline: tokio::time::Instant,
    /// The function's ARN, which a fan-out invokes.
    pub function_arn: String,
}

/// Read the settings: `KEYTURN_CONFIG` (a file in the package or a layer), else
/// `KEYTURN_CONFIG_PARAMETER` (an SSM parameter, decrypted), else none.
pub async fn load_settings(remote: &RemoteConfig) -> Result<FileConfig> {
    let file = std::env::var_os("KEYTURN_CONFIG").filter(|v| !v.is_empty());
    let param = std::env::var("KEYTURN_CONFIG_PARAMETER")
        .ok()
        .filter(|v| !v.is_empty());
    match (file, param) {
        (Some(_), Some(_)) => Err(Error::InvalidInput(
            "set KEYTURN_CONFIG or KEYTURN_CONFIG_PARAMETER, not both".into(),
        )),
        (Some(path), None) => FileConfig::load(Some(Path::new(&path))),
        (None, Some(name)) => {
            let text = ssm_parameter(remote, &name).await?;
            FileConfig::from_text(Path::new(&format!("ssm:{name}")), text)
                .map_err(|m| Error::InvalidInput(format!("invalid settings {m}")))
        }
        (None, None) => Ok(FileConfig::default()),
    }
}

/// An SSM parameter's value (SecureString decrypted).
pub async fn ssm_parameter(remote: &RemoteConfig, name: &str) -> Result<String> {
    let ssm = aws_sdk_ssm::Client::new(&remote.load().await);
    let out = ssm
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("ssm:GetParameter", &e))?;
    out.parameter()
        .and_then(|p| p.value())
        .map(str::to_string)
        .ok_or_else(|| Error::Runtime(format!("SSM parameter {name} has no value")))
}

fn margin(cfg: &FileConfig) -> Duration {
    cfg.lambda
        .deadline_margin_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_MARGIN)
}

fn verify_policy(cfg: &FileConfig) -> VerifyPolicy {
    VerifyPolicy {
        timeout: Duration::from_secs(cfg.rotate.verify_timeout.unwrap_or(60)),
        ..VerifyPolicy::default()
    }
}

/// The sinks `setSecret` delivers to for `secret` (`[[lambda.secrets]]`, first match
/// by name or ARN glob).
pub fn sinks_for_secret(cfg: &FileConfig, names: &[&str]) -> Result<Vec<SinkSpec>> {
    for route in &cfg.lambda.secrets {
        let glob = globset::Glob::new(&route.secret)
            .map_err(|e| {
                Error::InvalidInput(format!("[[lambda.secrets]] secret {:?}: {e}", route.secret))
            })?
            .compile_matcher();
        if names.iter().any(|n| glob.is_match(n)) {
            return select_sinks(cfg, &route.sinks);
        }
    }
    Ok(vec![])
}

/// Named `[[sinks]]`; `stdout` is refused (it would print secrets into the logs).
fn select_sinks(cfg: &FileConfig, names: &[String]) -> Result<Vec<SinkSpec>> {
    if names.iter().any(|n| n == crate::sink::STDOUT) {
        return Err(Error::InvalidInput(
            "sink stdout is not available in Lambda: it would print the secret into the function's logs; name a [[sinks]] entry".into(),
        ));
    }
    crate::sink::select(names, &cfg.sinks, OutputFormat::Json)
}

/// Handle one invocation: the response payload, or the error Lambda reports (and
/// Secrets Manager retries on).
pub async fn handle(payload: Value, inv: &Invocation) -> Result<Value> {
    let ev = event::classify(payload)?;
    let remote = RemoteConfig::default();
    let cfg = load_settings(&remote).await?;
    let deadline = inv
        .deadline
        .checked_sub(margin(&cfg))
        .unwrap_or(inv.deadline);
    match ev {
        Event::Rotation(r) => {
            tracing::info!(step = r.step.as_str(), secret = %r.secret_id, version = %r.client_request_token, "Secrets Manager rotation step");
            let aws = remote.load().await;
            let journal = JournalSettings::resolve(None, None, &cfg.journal)?
                .open(&remote)
                .await?;
            let iam = crate::aws::SdkKeyApi::new(&aws);
            let (printer, _, _) = Printer::capture();
            let ctx = rotation::RotationContext {
                sm: aws_sdk_secretsmanager::Client::new(&aws),
                iam: &iam,
                journal: &journal,
                sinks: sinks_for_secret(&cfg, &[r.secret_id.as_str()])?,
                sink_env: SinkEnv {
                    aws: aws.clone(),
                    printer,
                    output: OutputFormat::Json,
                },
                delete_inactive: cfg.lambda.delete_inactive.unwrap_or(false),
                verify: verify_policy(&cfg),
                deadline,
            };
            let out = ctx.handle(&r).await?;
            tracing::info!(result = out.result, detail = %out.detail, "step finished");
            Ok(serde_json::to_value(out).expect("serialize"))
        }
        Event::Rotate(r) => rotate_one(&cfg, &remote, &r).await,
        Event::Fleet(f) => fleet::run(&cfg, &remote, &f, inv, deadline).await,
    }
}

/// `{"Rotate": {...}}`: rotate one user now (replaced key deactivated once the new
/// one is verified and delivered; a key keyturn can delete is deleted to free a slot
/// only with `[lambda] delete_inactive`). The response is the delivery report,
/// without the secret.
pub async fn rotate_one(
    cfg: &FileConfig,
    remote: &RemoteConfig,
    r: &RotateRequest,
) -> Result<Value> {
    use crate::commands::rotate::{rotate_with, KeyOwner, RotateSettings};
    if r.sinks.is_empty() {
        return Err(Error::InvalidInput(
            "Rotate.Sinks is empty: name at least one [[sinks]] entry for the new key".into(),
        ));
    }
    let sinks = select_sinks(cfg, &r.sinks)?;
    let aws = fleet::account_config(cfg, remote, r.account.as_deref()).await?;
    let api = crate::aws::SdkKeyApi::new(&aws);
    let settings = RotateSettings {
        remote: remote.clone(),
        owner: KeyOwner::User(r.user_name.clone()),
        options: crate::plan::PlanOptions {
            deactivate_old_keys: true,
            delete_inactive_keys: cfg.lambda.delete_inactive.unwrap_or(false),
            yes: true,
            verify: true,
            ..Default::default()
        },
        dry_run: r.dry_run,
        output: OutputFormat::Json,
        verify: verify_policy(cfg),
        source_profile_ok: false,
        mfa_code: None,
        interactive: false,
        sinks,
    };
    let journal = JournalSettings::resolve(None, None, &cfg.journal)?
        .open(remote)
        .await?;
    let (printer, out, _err) = Printer::capture();
    let env = SinkEnv {
        aws: aws.clone(),
        printer: printer.clone(),
        output: OutputFormat::Json,
    };
    rotate_with(&api, &env, &settings, &journal, &printer).await?;
    serde_json::from_str(&out.text())
        .map_err(|e| Error::Runtime(format!("the rotation report is not JSON: {e}")))
}
