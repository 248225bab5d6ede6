//! Where and as whom keyturn calls AWS: profile, region, endpoint.
//!
//! Resolved once per command into an `SdkConfig` with the SDK's full default
//! credential chain (environment, shared files and SSO, web identity, ECS, IMDS), so a
//! flag always wins over the environment and the environment over the files. An
//! explicit `--profile` selects that profile's credentials (static keys, role chains,
//! SSO, `credential_process`) even when `AWS_ACCESS_KEY_ID` is set, as the AWS CLI does.
//!
//! Retries: [`RetryMode::Standard`] (the default, used by `rotate`, `resume`, `audit`)
//! or [`RetryMode::Adaptive`], the SDK's adaptive mode, which adds a client-side rate
//! limiter: after a throttling error it lowers the rate at which requests are sent and
//! raises it again as calls succeed. Fleet runs use it per account, so that thousands
//! of calls against one account slow down to what IAM accepts instead of burning
//! their attempts.

use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::retry::RetryConfig;
use aws_config::{AppName, BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::{
    error::CredentialsError, future, ProvideCredentials, SharedCredentialsProvider,
};
use aws_credential_types::Credentials;
use serde::Serialize;
use std::time::Duration;

/// IAM is a global service; when no region is configured anywhere, keyturn signs for
/// this one (as the AWS CLI does for `aws iam`).
pub const FALLBACK_REGION: &str = "us-east-1";

/// The SDK app name: every request keyturn signs carries `app/keyturn` in its user
/// agent, which is how [`crate::usage`] tells keyturn's own calls (verification,
/// retirement) from a key's real consumers in CloudTrail.
pub const APP_NAME: &str = "keyturn";

/// Attempts per call in [`RetryMode::Standard`]: IAM throttles at a few requests per
/// second per account, so more than the SDK's default three.
pub const STANDARD_MAX_ATTEMPTS: u32 = 6;

/// How failed calls are retried (throttling, 5xx, transport errors).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "Mode")]
pub enum RetryMode {
    /// The SDK's standard mode: [`STANDARD_MAX_ATTEMPTS`] attempts with jittered
    /// exponential backoff (200 ms doubling up to 10 s).
    #[default]
    Standard,
    /// The SDK's adaptive mode: the standard backoff plus a client-side rate limiter
    /// (a token bucket whose fill rate drops on `Throttling` and recovers on success),
    /// and `max_attempts` attempts per call.
    Adaptive {
        #[serde(rename = "MaxAttempts")]
        max_attempts: u32,
    },
}

impl RetryMode {
    /// The SDK retry configuration of this mode.
    pub fn retry_config(&self) -> RetryConfig {
        let (base, attempts) = match *self {
            RetryMode::Standard => (RetryConfig::standard(), STANDARD_MAX_ATTEMPTS),
            RetryMode::Adaptive { max_attempts } => (RetryConfig::adaptive(), max_attempts.max(1)),
        };
        base.with_max_attempts(attempts)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(10))
    }
}

/// Flags that select the AWS endpoint and caller. `None` means "use the default chain".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemoteConfig {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// How calls are retried (standard unless a fleet run asks for adaptive).
    pub retry: RetryMode,
}

impl RemoteConfig {
    /// Load the SDK configuration (credentials are resolved lazily, on the first call).
    pub async fn load(&self) -> SdkConfig {
        self.load_with(None).await
    }

    /// Like [`RemoteConfig::load`], signing with `credentials` instead of the chain.
    pub async fn load_with(&self, credentials: Option<Credentials>) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .app_name(AppName::new(APP_NAME).expect("a valid app name"))
            .retry_config(self.retry.retry_config());
        if let Some(p) = &self.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &self.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(u) = &self.endpoint_url {
            loader = loader.endpoint_url(u);
        }
        match (credentials, &self.profile) {
            (Some(c), _) => loader = loader.credentials_provider(c),
            // As in the AWS CLI, an explicit --profile wins over credentials in the
            // environment (the SDK's default chain would look at AWS_ACCESS_KEY_ID first).
            (None, Some(p)) => {
                loader = loader.credentials_provider(
                    ProfileFileCredentialsProvider::builder()
                        .profile_name(p)
                        .build(),
                )
            }
            (None, None) => {}
        }
        let cfg = loader.load().await;
        let mut b = cfg.to_builder();
        if cfg.region().is_none() {
            b = b.region(Region::from_static(FALLBACK_REGION));
        }
        if let Some(inner) = cfg.credentials_provider() {
            b = b.credentials_provider(SharedCredentialsProvider::new(HeaderSafe {
                inner,
                source: match &self.profile {
                    Some(p) => format!("profile '{p}'"),
                    None => "the default credential chain".into(),
                },
            }));
        }
        b.build()
    }
}

/// Checks credentials from any source before the SDK signs with them: the SigV4
/// signer puts the key id (and session token) into HTTP headers and panics on a value
/// that is not visible ASCII (a control byte in a hand-edited profile). keyturn turns
/// that into a credentials error naming the source instead.
#[derive(Debug)]
struct HeaderSafe {
    inner: SharedCredentialsProvider,
    source: String,
}

/// Why `c` cannot be signed with, if it cannot.
pub fn unsendable(c: &Credentials) -> Option<&'static str> {
    let visible = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if !visible(c.access_key_id()) {
        return Some("access key id");
    }
    if !visible(c.secret_access_key()) {
        return Some("secret access key");
    }
    if c.session_token().is_some_and(|t| !visible(t)) {
        return Some("session token");
    }
    None
}

impl ProvideCredentials for HeaderSafe {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let c = self.inner.provide_credentials().await?;
            match unsendable(&c) {
                None => Ok(c),
                Some(what) => Err(CredentialsError::invalid_configuration(format!(
                    "the {what} from {} is empty or has characters other than visible ASCII (a control byte or a space?); fix the credentials",
                    self.source
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_config::retry::RetryMode as SdkRetryMode;

    #[tokio::test]
    async fn credentials_with_control_bytes_are_an_error_not_a_panic() {
        let remote = RemoteConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        };
        for (id, secret, token) in [
            ("AKIA\u{1}OSFODNN7EXAMPL", "s", None),
            ("AKIAIOSFODNN7EXAMPLE", "se\ncret", None),
            ("AKIAIOSFODNN7EXAMPLE", "secret", Some("to ken")),
            ("AKIAIOSFODNN7EXAMPLÉ", "secret", None),
        ] {
            let c = Credentials::new(id, secret, token.map(str::to_string), None, "test");
            assert!(unsendable(&c).is_some(), "{id:?}");
            let cfg = remote.load_with(Some(c)).await;
            let err = cfg
                .credentials_provider()
                .unwrap()
                .provide_credentials()
                .await
                .unwrap_err();
            let msg = format!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(&err)
            );
            assert!(msg.contains("visible ASCII"), "{msg}");
            assert!(!msg.contains("OSFODNN"), "{msg}");
            // And an SDK call with them fails instead of panicking in the signer.
            let sts = aws_sdk_sts::Client::new(&cfg);
            assert!(sts.get_caller_identity().send().await.is_err());
        }
        let ok = Credentials::new("AKIAIOSFODNN7EXAMPLE", "secret", None, None, "test");
        assert_eq!(unsendable(&ok), None);
    }

    #[test]
    fn standard_retries_stay_as_they_were() {
        let c = RetryMode::default().retry_config();
        assert_eq!(c.mode(), SdkRetryMode::Standard);
        assert_eq!(c.max_attempts(), 6);
        assert_eq!(c.initial_backoff(), Duration::from_millis(200));
        assert_eq!(c.max_backoff(), Duration::from_secs(10));
        assert_eq!(RemoteConfig::default().retry, RetryMode::Standard);
    }

    #[test]
    fn adaptive_retries_rate_limit_on_the_client() {
        let c = RetryMode::Adaptive { max_attempts: 12 }.retry_config();
        assert_eq!(c.mode(), SdkRetryMode::Adaptive);
        assert_eq!(c.max_attempts(), 12);
        assert_eq!(c.max_backoff(), Duration::from_secs(10));
        // Zero attempts would mean "never send": at least one.
        let c = RetryMode::Adaptive { max_attempts: 0 }.retry_config();
        assert_eq!(c.max_attempts(), 1);
    }

    #[tokio::test]
    async fn the_loaded_configuration_carries_the_mode() {
        let remote = RemoteConfig {
            region: Some("eu-west-1".into()),
            endpoint_url: Some("http://127.0.0.1:9".into()),
            retry: RetryMode::Adaptive { max_attempts: 9 },
            ..RemoteConfig::default()
        };
        let cfg = remote
            .load_with(Some(Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            )))
            .await;
        let retry = cfg.retry_config().unwrap();
        assert_eq!(retry.mode(), SdkRetryMode::Adaptive);
        assert_eq!(retry.max_attempts(), 9);
        let cfg = RemoteConfig::default()
            .load_with(Some(Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            )))
            .await;
        assert_eq!(cfg.retry_config().unwrap().mode(), SdkRetryMode::Standard);
    }
}
