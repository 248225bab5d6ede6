//! Scheduled fleet runs in Lambda: the policy from the event (inline, an SSM
//! parameter, an S3 object) or the settings, then either a fan-out (one asynchronous
//! self-invocation per account, so no invocation nears the 15-minute limit) or a
//! run through [`crate::fleet::runner::Runner`] that starts no user after the
//! `Context` deadline (less a margin) and leaves the rest to the next run.

use super::event::{FleetEvent, PolicySource};
use super::Invocation;
use crate::access::{Access as Reach, AccountSource, OrganizationSource, RoleSource};
use crate::config::FileConfig;
use crate::error::{AwsError, Error, Result};
use crate::fleet::policy::{Access, AccountSpec, FleetPolicy};
use crate::journal::JournalSettings;
use crate::printer::{OutputFormat, Printer};
use crate::remote::RemoteConfig;
use crate::sink::SinkEnv;
use serde_json::{json, Value};
use std::path::Path;

/// The role session name of the function's assumed roles.
pub const SESSION_NAME: &str = "keyturn-lambda";

/// The settings with the event's policy in place of the file's `[policy]`,
/// `[[accounts]]`, `[[rotations]]` (and `[[sinks]]` when the policy declares any).
pub async fn settings_with_policy(
    base: &FileConfig,
    remote: &RemoteConfig,
    source: &PolicySource,
) -> Result<FileConfig> {
    let (origin, text) = match source {
        PolicySource::Settings => return Ok(base.clone()),
        PolicySource::Inline(m) => (
            "inline policy".to_string(),
            json_to_toml(&Value::Object(m.clone()))?,
        ),
        PolicySource::Parameter(name) => {
            let t = super::ssm_parameter(remote, name).await?;
            (format!("ssm:{name}"), to_toml_text(&t)?)
        }
        PolicySource::S3 { bucket, key } => {
            let s3 = aws_sdk_s3::Client::new(&remote.load().await);
            let out = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("s3:GetObject", &e))?;
            let bytes = out
                .body
                .collect()
                .await
                .map_err(|e| Error::Runtime(format!("reading s3://{bucket}/{key}: {e}")))?
                .into_bytes();
            let t = String::from_utf8(bytes.to_vec()).map_err(|_| {
                Error::InvalidInput(format!("s3://{bucket}/{key} is not UTF-8 text"))
            })?;
            (format!("s3://{bucket}/{key}"), to_toml_text(&t)?)
        }
    };
    let p = FileConfig::from_text(Path::new(&origin), text)
        .map_err(|m| Error::InvalidInput(format!("invalid fleet policy {m}")))?;
    let mut cfg = base.clone();
    cfg.policy = p.policy;
    cfg.accounts = p.accounts;
    cfg.rotations = p.rotations;
    if !p.sinks.is_empty() {
        cfg.sinks = p.sinks;
    }
    cfg.origin = p.origin;
    Ok(cfg)
}

/// A policy document is TOML, or JSON of the same schema.
fn to_toml_text(t: &str) -> Result<String> {
    if t.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(t)
            .map_err(|e| Error::InvalidInput(format!("the policy is not valid JSON: {e}")))?;
        json_to_toml(&v)
    } else {
        Ok(t.to_string())
    }
}

fn json_to_toml(v: &Value) -> Result<String> {
    toml::to_string(v).map_err(|e| {
        Error::InvalidInput(format!(
            "the policy does not map onto the settings schema ({e}); null values are not allowed"
        ))
    })
}

/// The reach source of a configured account.
pub fn source_of(spec: &AccountSpec) -> AccountSource {
    match &spec.access {
        Access::Profile { profile } => AccountSource::Profile(profile.clone()),
        Access::Role {
            role_arn,
            external_id,
        } => AccountSource::Role(RoleSource {
            role_arn: role_arn.clone(),
            external_id: external_id.clone(),
        }),
        Access::Organization {
            role_name,
            include,
            exclude,
        } => AccountSource::Organization(OrganizationSource {
            role_name: role_name.clone(),
            include: include.clone(),
            exclude: exclude.clone(),
        }),
    }
}

/// Every account id the policy names (Organizations listed), for a fan-out.
/// Unreachable listings are returned as errors beside the ids.
pub async fn account_ids(reach: &Reach, policy: &FleetPolicy) -> (Vec<String>, Vec<String>) {
    let mut ids = Vec::new();
    let mut errors = Vec::new();
    let sources: Vec<(Option<&str>, AccountSource)> = if policy.accounts.is_empty() {
        vec![(None, AccountSource::Caller)]
    } else {
        policy
            .accounts
            .iter()
            .map(|a| (Some(a.name.as_str()), source_of(a)))
            .collect()
    };
    for (name, source) in sources {
        for route in reach.routes(name, &source).await {
            match route {
                Ok(r) => match &r.account_id {
                    Some(id) => ids.push(id.clone()),
                    None => match reach.connect(&r).await {
                        Ok(a) => ids.push(a.id),
                        Err(u) => errors.push(format!("{}: {}", r.via, u.error)),
                    },
                },
                Err(u) => errors.push(format!("{}: {}", u.via, u.error)),
            }
        }
    }
    ids.sort();
    ids.dedup();
    (ids, errors)
}

/// The AWS configuration that signs as `account` (an id or a configured name;
/// `None`: the function's own credentials).
pub async fn account_config(
    cfg: &FileConfig,
    remote: &RemoteConfig,
    account: Option<&str>,
) -> Result<aws_config::SdkConfig> {
    let base = remote.load().await;
    let Some(account) = account else {
        return Ok(base);
    };
    let policy = cfg.fleet_policy()?;
    let reach = Reach::from_base(base.clone(), remote, SESSION_NAME)?;
    let own = crate::aws::SdkKeyApi::new(&base);
    use crate::aws::KeyApi;
    if own.whoami().await?.account == account {
        return Ok(base);
    }
    for spec in &policy.accounts {
        let named = spec.name == account || spec.known_id() == Some(account);
        let org = matches!(spec.access, Access::Organization { .. });
        if !named && !org {
            continue;
        }
        for route in reach.routes(Some(&spec.name), &source_of(spec)).await {
            let Ok(route) = route else { continue };
            let hit = named
                || route.account_id.as_deref() == Some(account)
                || route.name.as_deref() == Some(account);
            if hit {
                return reach
                    .connect(&route)
                    .await
                    .map(|a| a.config)
                    .map_err(|u| *u.error);
            }
        }
    }
    Err(Error::InvalidInput(format!(
        "account {account:?} is neither the function's own account nor one the settings' [[accounts]] reach"
    )))
}

/// A scheduled run: fan out, or run the policy within the deadline.
pub async fn run(
    base: &FileConfig,
    remote: &RemoteConfig,
    ev: &FleetEvent,
    inv: &Invocation,
    deadline: tokio::time::Instant,
) -> Result<Value> {
    let cfg = settings_with_policy(base, remote, &ev.policy).await?;
    let policy = cfg.fleet_policy()?;
    let aws = remote.load().await;
    let reach = Reach::from_base(aws.clone(), remote, SESSION_NAME)?;
    if ev.fan_out {
        let (ids, errors) = account_ids(&reach, &policy).await;
        let lambda = aws_sdk_lambda::Client::new(&aws);
        let mut invoked = Vec::new();
        for id in &ids {
            let payload = ev.for_account(id).to_string();
            let r = lambda
                .invoke()
                .function_name(&inv.function_arn)
                .invocation_type(aws_sdk_lambda::types::InvocationType::Event)
                .payload(aws_smithy_types::Blob::new(payload.into_bytes()))
                .send()
                .await;
            invoked.push(match r {
                Ok(_) => json!({"Account": id, "Invoked": true}),
                Err(e) => {
                    let e = AwsError::from_sdk("lambda:Invoke", &e);
                    json!({"Account": id, "Invoked": false, "Error": e.to_string()})
                }
            });
        }
        return Ok(json!({"FanOut": invoked, "ListingErrors": errors}));
    }
    let journal = JournalSettings::resolve(None, None, &cfg.journal)?
        .open(remote)
        .await?;
    let (printer, _, _) = Printer::capture();
    let env = SinkEnv {
        aws: aws.clone(),
        printer,
        output: OutputFormat::Json,
    };
    let runner = crate::fleet::runner::Runner::new(&reach, &policy, &cfg.sinks, &journal, env);
    let opts = crate::fleet::runner::RunOptions {
        dry_run: ev.dry_run,
        accounts: ev.account.iter().cloned().collect(),
        deadline: Some(deadline.into_std()),
        ..Default::default()
    };
    let report = runner.run(&opts).await?;
    Ok(serde_json::to_value(&report).expect("serialize the report"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inline_and_json_policies_replace_the_settings_policy() {
        let base = FileConfig::parse(
            "[[sinks]]\nname = \"s\"\ntype = \"env-file\"\npath = \"/tmp/s.env\"\n[[rotations]]\nname = \"old\"\nsinks = [\"s\"]\n",
        )
        .unwrap();
        let m = json!({"rotations": [{"name": "new", "users": ["ci-*"], "sinks": ["s"]}]});
        let Value::Object(m) = m else { unreachable!() };
        let cfg = settings_with_policy(&base, &RemoteConfig::default(), &PolicySource::Inline(m))
            .await
            .unwrap();
        let p = cfg.fleet_policy().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.rotations.len(), 1);
        assert_eq!(cfg.sink_names(), ["s"], "the settings' sinks stay");
        let t = to_toml_text("{\"policy\": {\"max_age_days\": 30}}").unwrap();
        assert!(t.contains("max_age_days = 30"), "{t}");
        assert_eq!(to_toml_text("[policy]\n").unwrap(), "[policy]\n");
        assert!(json_to_toml(&json!({"policy": {"max_age_days": null}})).is_err());
    }
}
