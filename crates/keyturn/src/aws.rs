//! The AWS calls a rotation makes, behind one trait.
//!
//! [`KeyApi`] is what the rotation engine needs from AWS: the key inventory, key
//! lifecycle calls, and "who am I". [`SdkKeyApi`] implements it with the official SDK
//! clients; unit tests implement it with an in-memory fake. [`KeyApi::as_key`] returns
//! the same API signing with another key, which is how keyturn proves a new key works
//! and retires a self-rotated key with the new credentials.

use crate::error::{AwsError, AwsErrorKind, Error, Result};
use crate::model::{AccessKeyInfo, KeyStatus, LastUsed, Usage};
use crate::secret::SecretKey;
use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_sdk_iam::types::StatusType;
use serde::{Deserialize, Serialize};
use std::future::Future;
use time::OffsetDateTime;

/// Upper bound of one `CreateAccessKey` attempt (no SDK retries): a key this attempt
/// created has a `CreateDate` within this long of the attempt's start.
pub const CREATE_KEY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A key IAM just created. The secret is held in redacting custody.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub user_name: String,
    pub access_key_id: String,
    pub secret: SecretKey,
    pub create_date: OffsetDateTime,
}

/// STS `GetCallerIdentity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CallerIdentity {
    pub account: String,
    pub arn: String,
    pub user_id: String,
}

impl CallerIdentity {
    /// The IAM user name if this identity is an IAM user (`arn:…:user/path/name`).
    pub fn user_name(&self) -> Option<&str> {
        let resource = self.arn.splitn(6, ':').nth(5)?;
        let rest = resource.strip_prefix("user/")?;
        rest.rsplit('/').next()
    }
}

/// Temporary credentials (from STS `GetSessionToken`, e.g. after MFA).
#[derive(Debug, Clone)]
pub struct SessionCredentials {
    pub access_key_id: String,
    pub secret: SecretKey,
    pub session_token: SecretKey,
}

/// The AWS operations of a rotation.
pub trait KeyApi: Send + Sync + Sized + 'static {
    /// `iam:ListAccessKeys` (all pages). Unknown user -> [`Error::NoSuchUser`].
    fn list_keys(&self, user: &str) -> impl Future<Output = Result<Vec<AccessKeyInfo>>> + Send;
    /// `iam:GetAccessKeyLastUsed`.
    fn last_used(&self, key_id: &str) -> impl Future<Output = Result<Usage>> + Send;
    /// `iam:CreateAccessKey`.
    fn create_key(&self, user: &str) -> impl Future<Output = Result<NewKey>> + Send;
    /// `iam:UpdateAccessKey`.
    fn set_status(
        &self,
        user: &str,
        key_id: &str,
        status: KeyStatus,
    ) -> impl Future<Output = Result<()>> + Send;
    /// `iam:DeleteAccessKey`.
    fn delete_key(&self, user: &str, key_id: &str) -> impl Future<Output = Result<()>> + Send;
    /// `sts:GetCallerIdentity` for the credentials this API signs with.
    fn whoami(&self) -> impl Future<Output = Result<CallerIdentity>> + Send;
    /// The same API (endpoint, region) signing with `key` instead.
    fn as_key(&self, key: &NewKey) -> Self;
}

/// [`KeyApi`] over the official SDK clients.
#[derive(Clone, Debug)]
pub struct SdkKeyApi {
    config: SdkConfig,
    iam: aws_sdk_iam::Client,
    sts: aws_sdk_sts::Client,
}

impl SdkKeyApi {
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            config: config.clone(),
            iam: aws_sdk_iam::Client::new(config),
            sts: aws_sdk_sts::Client::new(config),
        }
    }

    /// Over already built clients (a fleet account's clients, with its own retry
    /// partition); `config` is what [`KeyApi::as_key`] builds new-key clients from.
    pub fn from_clients(
        config: &SdkConfig,
        iam: aws_sdk_iam::Client,
        sts: aws_sdk_sts::Client,
    ) -> Self {
        Self {
            config: config.clone(),
            iam,
            sts,
        }
    }

    pub fn sdk_config(&self) -> &SdkConfig {
        &self.config
    }

    /// The same endpoint and region, with static or session credentials.
    pub fn with_credentials(&self, creds: Credentials) -> Self {
        let cfg = self
            .config
            .to_builder()
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(creds),
            )
            .build();
        Self::new(&cfg)
    }

    /// STS `GetSessionToken` with an MFA code (for IAM calls that require MFA).
    pub async fn session_with_mfa(&self, serial: &str, code: &str) -> Result<SessionCredentials> {
        let out = self
            .sts
            .get_session_token()
            .serial_number(serial)
            .token_code(code)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("sts:GetSessionToken", &e))?;
        let c = out
            .credentials()
            .ok_or_else(|| Error::Runtime("STS GetSessionToken returned no credentials".into()))?;
        Ok(SessionCredentials {
            access_key_id: c.access_key_id().to_string(),
            secret: SecretKey::new(c.secret_access_key()),
            session_token: SecretKey::new(c.session_token()),
        })
    }

    pub fn with_session(&self, s: &SessionCredentials) -> Self {
        self.with_credentials(Credentials::new(
            &s.access_key_id,
            s.secret.expose(),
            Some(s.session_token.expose().to_string()),
            None,
            "keyturn-mfa-session",
        ))
    }
}

/// SDK timestamps to `time`.
pub(crate) fn to_time(dt: &aws_smithy_types::DateTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(dt.as_nanos()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn status_of(s: Option<&StatusType>) -> KeyStatus {
    match s {
        Some(StatusType::Active) => KeyStatus::Active,
        _ => KeyStatus::Inactive,
    }
}

fn no_such_user<E>(
    user: &str,
    action: &'static str,
    e: &aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> Error
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
{
    let err = AwsError::from_sdk(action, e);
    if err.kind == AwsErrorKind::NoSuchEntity {
        Error::NoSuchUser {
            user: user.to_string(),
        }
    } else {
        Error::Aws(err)
    }
}

impl KeyApi for SdkKeyApi {
    async fn list_keys(&self, user: &str) -> Result<Vec<AccessKeyInfo>> {
        let mut keys = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let out = self
                .iam
                .list_access_keys()
                .user_name(user)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| no_such_user(user, "iam:ListAccessKeys", &e))?;
            for m in out.access_key_metadata() {
                keys.push(AccessKeyInfo {
                    access_key_id: m.access_key_id().unwrap_or_default().to_string(),
                    status: status_of(m.status()),
                    create_date: m
                        .create_date()
                        .map(to_time)
                        .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    usage: Usage::Unknown,
                });
            }
            match (out.is_truncated(), out.marker()) {
                (true, Some(m)) => marker = Some(m.to_string()),
                _ => break,
            }
        }
        keys.sort_by_key(|k| k.create_date);
        Ok(keys)
    }

    async fn last_used(&self, key_id: &str) -> Result<Usage> {
        let out = self
            .iam
            .get_access_key_last_used()
            .access_key_id(key_id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("iam:GetAccessKeyLastUsed", &e))?;
        Ok(match out.access_key_last_used() {
            Some(u) => match u.last_used_date() {
                Some(d) => Usage::Used(LastUsed {
                    date: to_time(d),
                    service: Some(u.service_name().to_string())
                        .filter(|s| s != "N/A" && !s.is_empty()),
                    region: Some(u.region().to_string()).filter(|s| s != "N/A" && !s.is_empty()),
                }),
                None => Usage::Never,
            },
            None => Usage::Never,
        })
    }

    async fn create_key(&self, user: &str) -> Result<NewKey> {
        // CreateAccessKey is not idempotent: a retry after a lost response makes a
        // second key whose secret nobody has. The SDK must not retry it; the engine
        // decides (it lists the keys first). The attempt is bounded so that a key
        // created by it can be told from one made later by somebody else.
        let once = aws_sdk_iam::config::Builder::default()
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(CREATE_KEY_TIMEOUT)
                    .build(),
            );
        let out = self
            .iam
            .create_access_key()
            .user_name(user)
            .customize()
            .config_override(once)
            .send()
            .await
            .map_err(|e| no_such_user(user, "iam:CreateAccessKey", &e))?;
        let k = out
            .access_key()
            .ok_or_else(|| Error::Runtime("CreateAccessKey returned no key".into()))?;
        Ok(NewKey {
            user_name: k.user_name().to_string(),
            access_key_id: k.access_key_id().to_string(),
            secret: SecretKey::new(k.secret_access_key()),
            create_date: k
                .create_date()
                .map(to_time)
                .unwrap_or_else(OffsetDateTime::now_utc),
        })
    }

    async fn set_status(&self, user: &str, key_id: &str, status: KeyStatus) -> Result<()> {
        let s = match status {
            KeyStatus::Active => StatusType::Active,
            KeyStatus::Inactive => StatusType::Inactive,
        };
        self.iam
            .update_access_key()
            .user_name(user)
            .access_key_id(key_id)
            .status(s)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("iam:UpdateAccessKey", &e))?;
        Ok(())
    }

    async fn delete_key(&self, user: &str, key_id: &str) -> Result<()> {
        self.iam
            .delete_access_key()
            .user_name(user)
            .access_key_id(key_id)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("iam:DeleteAccessKey", &e))?;
        Ok(())
    }

    async fn whoami(&self) -> Result<CallerIdentity> {
        let out = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("sts:GetCallerIdentity", &e))?;
        Ok(CallerIdentity {
            account: out.account().unwrap_or_default().to_string(),
            arn: out.arn().unwrap_or_default().to_string(),
            user_id: out.user_id().unwrap_or_default().to_string(),
        })
    }

    fn as_key(&self, key: &NewKey) -> Self {
        self.with_credentials(Credentials::new(
            &key.access_key_id,
            key.secret.expose(),
            None,
            None,
            "keyturn-new-key",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_name_from_arn() {
        let id = |arn: &str| CallerIdentity {
            account: "1".into(),
            arn: arn.into(),
            user_id: "AIDA".into(),
        };
        assert_eq!(
            id("arn:aws:iam::123456789012:user/ci-bot").user_name(),
            Some("ci-bot")
        );
        assert_eq!(
            id("arn:aws:iam::123456789012:user/team/a/ci-bot").user_name(),
            Some("ci-bot")
        );
        assert_eq!(
            id("arn:aws:sts::123456789012:assumed-role/r/s").user_name(),
            None
        );
        assert_eq!(id("arn:aws:iam::123456789012:root").user_name(), None);
    }
}
