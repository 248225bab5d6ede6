//! Which accounts `keyturn audit` looks at, and as whom.
//!
//! - no account flag: the caller's own account (the SDK's default credential chain);
//! - each `--profile NAME`: that profile's account, with its credentials;
//! - each `--role-arn ARN`: STS `AssumeRole` (session name `keyturn-audit`) with the
//!   default chain's credentials;
//! - `--organization --role-name NAME`: Organizations `ListAccounts` (every page, ACTIVE
//!   accounts only) with the default chain's credentials, then `AssumeRole` of
//!   `arn:<partition>:iam::<id>:role/<NAME>` in each account. The caller's own account
//!   (the management account, where the member role usually does not exist) is read
//!   with the caller's credentials instead.
//!
//! Reaching an account is part of auditing it: a failure (role not assumable, profile
//! without credentials) becomes that account's error row, never a crash.

use crate::aws::KeyApi;
use crate::aws::SdkKeyApi;
use crate::error::{chain, AwsError, AwsErrorKind, Error, Result};
use crate::remote::RemoteConfig;
use aws_config::SdkConfig;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_organizations::types::{AccountState, AccountStatus};

/// The STS session name of every role keyturn assumes (visible in CloudTrail).
pub const SESSION_NAME: &str = "keyturn-audit";

/// One account to audit, before it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The default credential chain's account.
    Caller,
    /// `--profile NAME`.
    Profile(String),
    /// `--role-arn ARN`.
    Role(String),
    /// An Organizations member account, reached through `role_arn`.
    Member {
        account_id: String,
        name: String,
        role_arn: String,
    },
    /// The caller's own account, listed by Organizations.
    OwnAccount { account_id: String, name: String },
}

impl Target {
    /// How the account is reached, as shown in the output (`via`).
    pub fn via(&self) -> String {
        match self {
            Target::Caller => "caller".into(),
            Target::Profile(p) => format!("profile:{p}"),
            Target::Role(arn) => format!("role:{arn}"),
            Target::Member { name, .. } | Target::OwnAccount { name, .. } => {
                format!("organization:{name}")
            }
        }
    }

    /// The account id, when it is known before connecting.
    pub fn known_account(&self) -> Option<String> {
        match self {
            Target::Caller | Target::Profile(_) => None,
            Target::Role(arn) => account_of_arn(arn),
            Target::Member { account_id, .. } | Target::OwnAccount { account_id, .. } => {
                Some(account_id.clone())
            }
        }
    }
}

/// The account id field of an ARN.
pub fn account_of_arn(arn: &str) -> Option<String> {
    arn.split(':')
        .nth(4)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
}

/// Is `arn` an IAM role ARN (`arn:PARTITION:iam::123456789012:role/[path/]NAME`)?
pub fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|r| !r.is_empty() && !r.ends_with('/'))
}

/// A target that could not even be listed (the organization's accounts).
#[derive(Debug)]
pub struct DiscoveryError {
    pub via: String,
    pub account_id: Option<String>,
    pub error: Error,
}

/// The accounts of `--organization`: `(accounts, error)`.
pub async fn organization_targets(
    base: &SdkConfig,
    role_name: &str,
) -> std::result::Result<Vec<Target>, DiscoveryError> {
    let via = "organization".to_string();
    let caller = SdkKeyApi::new(base)
        .whoami()
        .await
        .map_err(|error| DiscoveryError {
            via: via.clone(),
            account_id: None,
            error,
        })?;
    let partition = caller.arn.split(':').nth(1).unwrap_or("aws").to_string();
    let org = aws_sdk_organizations::Client::new(base);
    let mut targets = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = org
            .list_accounts()
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| DiscoveryError {
                via: via.clone(),
                account_id: Some(caller.account.clone()),
                error: AwsError::from_sdk("organizations:ListAccounts", &e).into(),
            })?;
        for a in out.accounts() {
            // `State` replaces the deprecated `Status`; accept either.
            let active = match a.state() {
                Some(s) => *s == AccountState::Active,
                #[allow(deprecated)]
                None => a.status() == Some(&AccountStatus::Active),
            };
            let (Some(id), true) = (a.id(), active) else {
                continue;
            };
            let name = a.name().unwrap_or(id).to_string();
            targets.push(if id == caller.account {
                Target::OwnAccount {
                    account_id: id.to_string(),
                    name,
                }
            } else {
                Target::Member {
                    account_id: id.to_string(),
                    name,
                    role_arn: format!("arn:{partition}:iam::{id}:role/{role_name}"),
                }
            });
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    if targets.is_empty() {
        // An Organization always has its management account: nothing listed means the
        // caller cannot see one, and "no findings" would be a false all-clear.
        return Err(DiscoveryError {
            via,
            account_id: Some(caller.account),
            error: Error::Runtime(
                "organizations:ListAccounts listed no ACTIVE account: call from the Organization's management account or a delegated administrator".into(),
            ),
        });
    }
    targets.sort_by_key(Target::known_account);
    Ok(targets)
}

/// Reach a target: its account id and the SDK configuration that signs as it.
pub async fn connect(
    target: &Target,
    base: &SdkConfig,
    remote: &RemoteConfig,
) -> Result<(String, SdkConfig)> {
    match target {
        Target::Caller => {
            let me = SdkKeyApi::new(base).whoami().await?;
            Ok((me.account, base.clone()))
        }
        Target::OwnAccount { account_id, .. } => Ok((account_id.clone(), base.clone())),
        Target::Profile(p) => {
            // RemoteConfig signs with the profile's own credentials even when
            // AWS_ACCESS_KEY_ID is set, so each --profile audits its own account.
            let cfg = RemoteConfig {
                profile: Some(p.clone()),
                ..remote.clone()
            }
            .load()
            .await;
            check_profile_credentials(&cfg, p).await?;
            let me = SdkKeyApi::new(&cfg).whoami().await?;
            Ok((me.account, cfg))
        }
        Target::Role(arn) | Target::Member { role_arn: arn, .. } => {
            let cfg = assume_role(base, arn).await?;
            let account = account_of_arn(arn).unwrap_or_default();
            Ok((account, cfg))
        }
    }
}

/// Resolve the profile's credentials once up front, so that a missing or broken
/// profile is reported as such (the SDK would only say "dispatch failure").
async fn check_profile_credentials(cfg: &SdkConfig, name: &str) -> Result<()> {
    let Some(provider) = cfg.credentials_provider() else {
        return Ok(());
    };
    provider.provide_credentials().await.map(|_| ()).map_err(|e| {
        AwsError {
            action: "loading profile credentials",
            kind: AwsErrorKind::NoCredentials,
            message: Some(format!(
                "profile {name:?} gave no credentials (check the AWS config and credentials files): {}",
                chain(&e)
            )),
        }
        .into()
    })
}

/// STS `AssumeRole` with the base credentials; the base configuration signing with
/// the session's credentials.
async fn assume_role(base: &SdkConfig, role_arn: &str) -> Result<SdkConfig> {
    let sts = aws_sdk_sts::Client::new(base);
    let out = sts
        .assume_role()
        .role_arn(role_arn)
        .role_session_name(SESSION_NAME)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("sts:AssumeRole", &e))?;
    let c = out.credentials().ok_or_else(|| {
        Error::Runtime(format!(
            "STS AssumeRole of {role_arn} returned no credentials"
        ))
    })?;
    let creds = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        None,
        "keyturn-audit-assume-role",
    );
    Ok(base
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(creds))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns() {
        assert!(is_role_arn("arn:aws:iam::123456789012:role/KeyturnAudit"));
        assert!(is_role_arn("arn:aws-cn:iam::123456789012:role/path/R"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:user/bob"));
        assert!(!is_role_arn("arn:aws:iam::12345:role/R"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:role/"));
        assert!(!is_role_arn("KeyturnAudit"));
        assert!(!is_role_arn("arn:aws:sts::123456789012:role/R"));
    }

    #[test]
    fn targets_describe_themselves() {
        let t = Target::Role("arn:aws:iam::111122223333:role/Audit".into());
        assert_eq!(t.known_account().as_deref(), Some("111122223333"));
        assert_eq!(t.via(), "role:arn:aws:iam::111122223333:role/Audit");
        assert_eq!(Target::Profile("prod".into()).via(), "profile:prod");
        assert_eq!(Target::Caller.known_account(), None);
        let m = Target::Member {
            account_id: "444455556666".into(),
            name: "dev".into(),
            role_arn: "arn:aws:iam::444455556666:role/R".into(),
        };
        assert_eq!(m.via(), "organization:dev");
    }
}
