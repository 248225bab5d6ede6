//! Where and as whom keyturn calls AWS: profile, region, endpoint.
//!
//! Resolved once per command into an `SdkConfig` with the SDK's full default
//! credential chain (environment, shared files and SSO, web identity, ECS, IMDS), so a
//! flag always wins over the environment and the environment over the files. An
//! explicit `--profile` selects that profile's credentials (static keys, role chains,
//! SSO, `credential_process`) even when `AWS_ACCESS_KEY_ID` is set, as the AWS CLI does.

use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::retry::RetryConfig;
use aws_config::{AppName, BehaviorVersion, Region, SdkConfig};
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

/// Flags that select the AWS endpoint and caller. `None` means "use the default chain".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemoteConfig {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
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
            // Standard retries with jittered backoff; IAM throttles at a few requests per
            // second per account, so allow more attempts than the SDK's default three.
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(6)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(10)),
            );
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
        if cfg.region().is_none() {
            cfg.into_builder()
                .region(Region::from_static(FALLBACK_REGION))
                .build()
        } else {
            cfg
        }
    }
}
