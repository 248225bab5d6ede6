//! Which AWS accounts keyturn works in, and as whom: shared by `keyturn audit` and
//! fleet runs, so that both reach accounts the same way and report an account they
//! cannot reach the same way.
//!
//! Three steps, one type each:
//!
//! 1. [`AccountSource`]: what the user configured. The caller's own account (the
//!    SDK's default credential chain), a named profile, an IAM role to assume (with an
//!    optional external id), or every ACTIVE account of the caller's Organization
//!    (`include`/`exclude` lists of account ids, a role name assumed in each). It maps
//!    one to one onto audit's flags and onto a fleet `[[accounts]]` entry
//!    (`profile` | `role_arn` + `external_id` | `organization = { role_name, include,
//!    exclude }`, none = the caller).
//! 2. [`Route`]: one account to reach, with what is known about it beforehand (its id
//!    and name when Organizations listed it). [`Access::routes`] expands a source
//!    into routes; only an Organization needs AWS calls for that (`ListAccounts`,
//!    every page).
//! 3. [`Account`]: a reached account: its id, name, how it was reached (`via`) and
//!    the [`SdkConfig`] that signs as it. [`Access::connect`] reaches a route.
//!
//! A failure at step 2 or 3 is an [`Unreachable`] for that account (or for the
//! listing) only; the caller reports it and carries on with the other accounts.
//!
//! Assumed-role credentials refresh: a role account signs through the SDK's
//! [`AssumeRoleProvider`] behind its own lazy identity cache, so a run longer than
//! the role session (1 h by default) re-assumes the role shortly before the session
//! expires instead of failing. The role is assumed once while connecting (so a role
//! that cannot be assumed is reported with STS's own error at that point), and those
//! first credentials are handed to the cache, so connecting costs one `AssumeRole`.
//! Each role account gets its own cache: the SDK's shared cache holds at most 64
//! credential providers and evicts arbitrary ones beyond that, which would make a
//! fleet of more accounts re-assume roles over and over.
//!
//! Retries are per account too: [`Account::iam_client`] and [`Account::sts_client`]
//! give each account its own SDK retry partition (retry quota and, in
//! [`crate::remote::RetryMode::Adaptive`], client-side rate limiter), since IAM
//! throttles each account separately and the SDK would otherwise share one per
//! service across the process.

use crate::aws::{KeyApi, SdkKeyApi};
use crate::error::{chain, AwsError, AwsErrorKind, Error, Result};
use crate::remote::RemoteConfig;
use aws_config::identity::IdentityCache;
use aws_config::sts::AssumeRoleProvider;
use aws_config::SdkConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_iam::config::retry::RetryPartition;
use aws_sdk_organizations::types::{AccountState, AccountStatus};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The partition when the caller's ARN does not name one.
pub const DEFAULT_PARTITION: &str = "aws";

/// Credentials obtained while connecting are used for the first call only if they
/// stay valid at least this long; otherwise the role is assumed again.
const PRIMED_MIN_VALIDITY: Duration = Duration::from_secs(5 * 60);

// ---- what the user configured ------------------------------------------------------

/// How to reach one account, or a set of accounts, as the user configured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountSource {
    /// The account of the SDK's default credential chain (environment, shared files,
    /// SSO, web identity, ECS, IMDS), with those credentials.
    Caller,
    /// The account of a named profile, with that profile's own credentials (static
    /// keys, role chains, SSO, `credential_process`), even when `AWS_ACCESS_KEY_ID` is
    /// set.
    Profile(String),
    /// An IAM role, assumed with the default chain's credentials.
    Role(RoleSource),
    /// Every ACTIVE account of the caller's Organization that the lists select.
    Organization(OrganizationSource),
}

/// A role to assume (`role_arn`, optional `external_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSource {
    /// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
    pub role_arn: String,
    /// The `ExternalId` the role's trust policy asks for (third-party access).
    pub external_id: Option<String>,
}

impl RoleSource {
    pub fn new(role_arn: impl Into<String>) -> Self {
        Self {
            role_arn: role_arn.into(),
            external_id: None,
        }
    }
}

/// `organization = { role_name, include, exclude }`: Organizations `ListAccounts`
/// (every page, ACTIVE accounts only), then `role_name` assumed in each account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrganizationSource {
    /// The role assumed in each member account: `arn:<partition>:iam::<id>:role/<role_name>`,
    /// the partition taken from the caller's ARN.
    pub role_name: String,
    /// Only these account ids (empty: every ACTIVE account).
    pub include: Vec<String>,
    /// Never these account ids (applied after `include`).
    pub exclude: Vec<String>,
}

impl OrganizationSource {
    pub fn new(role_name: impl Into<String>) -> Self {
        Self {
            role_name: role_name.into(),
            ..Self::default()
        }
    }

    /// Does `include`/`exclude` select this account id?
    pub fn selects(&self, account_id: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|i| i == account_id))
            && !self.exclude.iter().any(|e| e == account_id)
    }
}

impl AccountSource {
    /// Check the source before any AWS call: role ARNs, role names, external ids and
    /// account ids are well formed, and no account id is both included and excluded.
    /// Messages name the offending value; the caller adds where it came from.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        match self {
            AccountSource::Caller => Ok(()),
            AccountSource::Profile(p) if p.trim().is_empty() => {
                bad("a profile name must not be empty".into())
            }
            AccountSource::Profile(_) => Ok(()),
            AccountSource::Role(r) => {
                if !is_role_arn(&r.role_arn) {
                    return bad(format!(
                        "role ARN {:?}: expected an IAM role ARN like arn:aws:iam::123456789012:role/NAME",
                        r.role_arn
                    ));
                }
                match &r.external_id {
                    Some(e) if !is_external_id(e) => bad(format!(
                        "external id {e:?}: expected 2-1224 characters of A-Z a-z 0-9 + = , . @ : / _ -"
                    )),
                    _ => Ok(()),
                }
            }
            AccountSource::Organization(o) => {
                if !is_role_name(&o.role_name) {
                    return bad(format!(
                        "role name {:?}: expected an IAM role name (1-64 of A-Z a-z 0-9 + = , . @ _ -)",
                        o.role_name
                    ));
                }
                for (list, ids) in [("include", &o.include), ("exclude", &o.exclude)] {
                    if let Some(id) = ids.iter().find(|id| !is_account_id(id)) {
                        return bad(format!(
                            "organization {list}: {id:?} is not an AWS account id (12 digits)"
                        ));
                    }
                }
                if let Some(id) = o.include.iter().find(|id| o.exclude.contains(id)) {
                    return bad(format!(
                        "organization: account {id} is in both include and exclude"
                    ));
                }
                Ok(())
            }
        }
    }
}

// ---- names and ARNs (pure) ----------------------------------------------------------

/// A 12-digit AWS account id.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// IAM role names: 1-64 of `A-Za-z0-9+=,.@_-`.
pub fn is_role_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

/// STS `RoleSessionName`: 2-64 of `A-Za-z0-9+=,.@_-`.
pub fn is_session_name(n: &str) -> bool {
    (2..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

/// STS `ExternalId`: 2-1224 of `A-Za-z0-9+=,.@:/_-`.
pub fn is_external_id(n: &str) -> bool {
    (2..=1224).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@:/_-".contains(c))
}

/// Is `arn` an IAM role ARN (`arn:PARTITION:iam::123456789012:role/[path/]NAME`)?
pub fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && is_account_id(parts[4])
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|r| !r.is_empty() && !r.ends_with('/'))
}

/// The account id field of an ARN.
pub fn account_of_arn(arn: &str) -> Option<String> {
    arn.split(':')
        .nth(4)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
}

/// The partition of an ARN (`aws`, `aws-cn`, `aws-us-gov`, ...).
pub fn partition_of_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.split(':');
    match (parts.next(), parts.next()) {
        (Some("arn"), Some(p)) if !p.is_empty() => Some(p),
        _ => None,
    }
}

/// `arn:<partition>:iam::<account_id>:role/<role_name>`.
pub fn member_role_arn(partition: &str, account_id: &str, role_name: &str) -> String {
    format!("arn:{partition}:iam::{account_id}:role/{role_name}")
}

// ---- routes -------------------------------------------------------------------------

/// Whose credentials a route signs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignAs {
    /// The default credential chain.
    Caller,
    /// A named profile's own credentials.
    Profile(String),
    /// A role assumed with the default chain's credentials.
    Role(RoleSource),
}

/// One account to reach, and what is known about it before reaching it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The 12-digit id, when known before connecting (roles, Organizations).
    pub account_id: Option<String>,
    /// The configured name, or the account's name in Organizations.
    pub name: Option<String>,
    /// How it is reached, as outputs show it: `caller`, `profile:NAME`, `role:ARN`,
    /// `organization:ACCOUNT-NAME`.
    pub via: String,
    pub sign_as: SignAs,
}

impl Route {
    /// The route of a single-account source; `None` for an Organization (see
    /// [`Access::routes`]).
    pub fn single(name: Option<&str>, source: &AccountSource) -> Option<Route> {
        let name = name.map(str::to_string);
        Some(match source {
            AccountSource::Caller => Route {
                account_id: None,
                name,
                via: "caller".into(),
                sign_as: SignAs::Caller,
            },
            AccountSource::Profile(p) => Route {
                account_id: None,
                name,
                via: format!("profile:{p}"),
                sign_as: SignAs::Profile(p.clone()),
            },
            AccountSource::Role(r) => Route {
                account_id: account_of_arn(&r.role_arn),
                name,
                via: format!("role:{}", r.role_arn),
                sign_as: SignAs::Role(r.clone()),
            },
            AccountSource::Organization(_) => return None,
        })
    }

    fn unreachable(&self, error: Error) -> Unreachable {
        Unreachable {
            account_id: self.account_id.clone(),
            name: self.name.clone(),
            via: self.via.clone(),
            error: Box::new(error),
        }
    }
}

/// One account of `ListAccounts`, as far as routing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationAccount {
    pub id: String,
    pub name: String,
    /// `State` (or the deprecated `Status`) is ACTIVE.
    pub active: bool,
}

/// The routes of an Organization source, given what `ListAccounts` listed: the ACTIVE
/// accounts the lists select, by id. The caller's own account (the management
/// account, where the member role usually does not exist) is reached with the
/// caller's credentials. An `include`d id that is not an ACTIVE account of the
/// Organization is an error for that id. Pure.
pub fn organization_routes(
    caller_account: &str,
    partition: &str,
    accounts: &[OrganizationAccount],
    source: &OrganizationSource,
) -> Vec<std::result::Result<Route, Unreachable>> {
    let mut out: Vec<std::result::Result<Route, Unreachable>> = accounts
        .iter()
        .filter(|a| a.active && source.selects(&a.id))
        .map(|a| {
            let sign_as = if a.id == caller_account {
                SignAs::Caller
            } else {
                SignAs::Role(RoleSource::new(member_role_arn(
                    partition,
                    &a.id,
                    &source.role_name,
                )))
            };
            Ok(Route {
                account_id: Some(a.id.clone()),
                name: Some(a.name.clone()),
                via: format!("organization:{}", a.name),
                sign_as,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        let id = |r: &std::result::Result<Route, Unreachable>| {
            r.as_ref().ok().and_then(|r| r.account_id.clone())
        };
        id(a).cmp(&id(b))
    });
    for id in &source.include {
        let listed = accounts.iter().any(|a| a.active && &a.id == id);
        if !listed && !source.exclude.contains(id) {
            out.push(Err(Unreachable {
                account_id: Some(id.clone()),
                name: None,
                via: "organization".into(),
                error: Box::new(Error::Runtime(format!(
                    "account {id} is in the organization's include list, but Organizations lists no ACTIVE account with that id: check the id (and that the account has not been suspended or closed)"
                ))),
            }));
        }
    }
    out
}

// ---- reached accounts ---------------------------------------------------------------

/// An account keyturn has reached.
#[derive(Debug, Clone)]
pub struct Account {
    /// The 12-digit account id.
    pub id: String,
    /// The configured name, or the account's name in Organizations.
    pub name: Option<String>,
    /// How it was reached (see [`Route::via`]).
    pub via: String,
    /// Signs as this account (credentials refresh by themselves).
    pub config: SdkConfig,
}

impl Account {
    /// The retry partition of this account's clients for `service` (`iam`, `sts`).
    /// The SDK shares one retry quota (token bucket) and, in adaptive mode, one
    /// client-side rate limiter per partition across the whole process, and its
    /// default partition is the service name, so every account's IAM client would
    /// slow down together when one account is throttled. IAM throttles per account:
    /// so do these.
    pub fn retry_partition(&self, service: &str) -> RetryPartition {
        RetryPartition::new(format!("{service}-{}", self.id))
    }

    /// An IAM client signing as this account, with the account's own retry partition.
    pub fn iam_client(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::from_conf(
            aws_sdk_iam::config::Builder::from(&self.config)
                .retry_partition(self.retry_partition("iam"))
                .build(),
        )
    }

    /// An STS client signing as this account, with the account's own retry partition.
    pub fn sts_client(&self) -> aws_sdk_sts::Client {
        aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(&self.config)
                .retry_partition(self.retry_partition("sts"))
                .build(),
        )
    }
}

/// An account (or an Organization's account list) that could not be reached.
#[derive(Debug)]
pub struct Unreachable {
    /// The account id, when known (an unreachable profile may not tell).
    pub account_id: Option<String>,
    pub name: Option<String>,
    /// As in [`Route::via`]; `organization` when listing the accounts failed.
    pub via: String,
    /// Why (boxed: results carrying it stay small).
    pub error: Box<Error>,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// Reaches accounts: the base configuration (default chain, region, endpoint, retry
/// mode) and the settings of the role sessions keyturn opens.
#[derive(Debug, Clone)]
pub struct Access {
    base: SdkConfig,
    remote: RemoteConfig,
    session_name: String,
    session_duration: Option<Duration>,
}

impl Access {
    /// The base configuration from `remote` (its `profile`, if any, becomes the base
    /// credentials; audit and fleet runs leave it unset, so the base is the default
    /// chain). `session_name` is the STS session name of every role keyturn assumes
    /// (visible in CloudTrail): 2-64 of `A-Za-z0-9+=,.@_-`.
    pub async fn new(remote: &RemoteConfig, session_name: &str) -> Result<Self> {
        let base = remote.load().await;
        Self::from_base(base, remote, session_name)
    }

    /// Like [`Access::new`] over an already loaded base configuration (hosts that
    /// build their own, and tests).
    pub fn from_base(base: SdkConfig, remote: &RemoteConfig, session_name: &str) -> Result<Self> {
        if !is_session_name(session_name) {
            return Err(Error::InvalidInput(format!(
                "role session name {session_name:?}: expected 2-64 characters of A-Z a-z 0-9 + = , . @ _ -"
            )));
        }
        Ok(Self {
            base,
            remote: remote.clone(),
            session_name: session_name.to_string(),
            session_duration: None,
        })
    }

    /// Ask STS for role sessions of this length (`DurationSeconds`) instead of its
    /// default of one hour. AWS accepts 900 s up to the role's maximum session
    /// duration (1-12 h); keyturn refreshes the credentials either way.
    pub fn with_session_duration(mut self, duration: Duration) -> Self {
        self.session_duration = Some(duration);
        self
    }

    /// The base configuration (the caller's credentials).
    pub fn base(&self) -> &SdkConfig {
        &self.base
    }

    /// The settings the base configuration was loaded from (region, endpoint, retry).
    pub fn remote(&self) -> &RemoteConfig {
        &self.remote
    }

    pub fn session_name(&self) -> &str {
        &self.session_name
    }

    /// The accounts `source` names, before reaching them. `name` is the configured
    /// name of the source (a fleet `[[accounts]]` name), kept on single-account
    /// routes; Organization routes carry each account's own name. A failed listing is
    /// one `Err` (with `via` `organization`).
    pub async fn routes(
        &self,
        name: Option<&str>,
        source: &AccountSource,
    ) -> Vec<std::result::Result<Route, Unreachable>> {
        match source {
            AccountSource::Organization(org) => self.organization(name, org).await,
            single => Route::single(name, single).into_iter().map(Ok).collect(),
        }
    }

    async fn organization(
        &self,
        name: Option<&str>,
        source: &OrganizationSource,
    ) -> Vec<std::result::Result<Route, Unreachable>> {
        let failed = |account_id: Option<String>, error: Error| {
            vec![Err(Unreachable {
                account_id,
                name: name.map(str::to_string),
                via: "organization".into(),
                error: Box::new(error),
            })]
        };
        let caller = match SdkKeyApi::new(&self.base).whoami().await {
            Ok(c) => c,
            Err(e) => return failed(None, e),
        };
        let partition = partition_of_arn(&caller.arn).unwrap_or(DEFAULT_PARTITION);
        let accounts = match list_accounts(&self.base).await {
            Ok(a) => a,
            Err(e) => return failed(Some(caller.account), e),
        };
        if !accounts.iter().any(|a| a.active) {
            // An Organization always has its management account: nothing listed means
            // the caller cannot see one, and "no findings" would be a false all-clear.
            return failed(
                Some(caller.account),
                Error::Runtime(
                    "organizations:ListAccounts listed no ACTIVE account: call from the Organization's management account or a delegated administrator".into(),
                ),
            );
        }
        organization_routes(&caller.account, partition, &accounts, source)
    }

    /// Reach one account: learn its id (when not known yet) and build the
    /// configuration that signs as it.
    pub async fn connect(&self, route: &Route) -> std::result::Result<Account, Unreachable> {
        let reached = match &route.sign_as {
            SignAs::Caller => match &route.account_id {
                Some(id) => Ok((id.clone(), self.base.clone())),
                None => SdkKeyApi::new(&self.base)
                    .whoami()
                    .await
                    .map(|me| (me.account, self.base.clone())),
            },
            SignAs::Profile(p) => self.profile(p).await,
            SignAs::Role(role) => self.assume(role).await.map(|cfg| {
                let id = route
                    .account_id
                    .clone()
                    .or_else(|| account_of_arn(&role.role_arn))
                    .unwrap_or_default();
                (id, cfg)
            }),
        };
        match reached {
            Ok((id, config)) => Ok(Account {
                id,
                name: route.name.clone(),
                via: route.via.clone(),
                config,
            }),
            Err(e) => Err(route.unreachable(e)),
        }
    }

    async fn profile(&self, name: &str) -> Result<(String, SdkConfig)> {
        // RemoteConfig signs with the profile's own credentials even when
        // AWS_ACCESS_KEY_ID is set, so each profile reaches its own account.
        let cfg = RemoteConfig {
            profile: Some(name.to_string()),
            ..self.remote.clone()
        }
        .load()
        .await;
        check_profile_credentials(&cfg, name).await?;
        let me = SdkKeyApi::new(&cfg).whoami().await?;
        Ok((me.account, cfg))
    }

    /// A configuration signing as `role`, with credentials that refresh.
    async fn assume(&self, role: &RoleSource) -> Result<SdkConfig> {
        let mut builder = AssumeRoleProvider::builder(&role.role_arn)
            .configure(&self.base)
            .session_name(&self.session_name);
        if let Some(id) = &role.external_id {
            builder = builder.external_id(id);
        }
        if let Some(d) = self.session_duration {
            builder = builder.session_length(d);
        }
        let provider = builder.build().await;
        let first = provider
            .provide_credentials()
            .await
            .map_err(|e| assume_role_error(&role.role_arn, &e))?;
        let primed = Primed {
            first: Mutex::new(Some(first)),
            provider,
        };
        Ok(self
            .base
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(primed))
            .identity_cache(IdentityCache::lazy().build())
            .build())
    }
}

/// `ListAccounts`, every page.
async fn list_accounts(base: &SdkConfig) -> Result<Vec<OrganizationAccount>> {
    let org = aws_sdk_organizations::Client::new(base);
    let mut accounts = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = org
            .list_accounts()
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("organizations:ListAccounts", &e))?;
        for a in out.accounts() {
            let Some(id) = a.id() else { continue };
            // `State` replaces the deprecated `Status`; accept either.
            let active = match a.state() {
                Some(s) => *s == AccountState::Active,
                #[allow(deprecated)]
                None => a.status() == Some(&AccountStatus::Active),
            };
            accounts.push(OrganizationAccount {
                id: id.to_string(),
                name: a.name().unwrap_or(id).to_string(),
                active,
            });
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(accounts)
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

/// STS's own error when the provider's `AssumeRole` call failed (found in the
/// credentials error's sources), else the whole chain.
fn assume_role_error(role_arn: &str, e: &CredentialsError) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(sdk) = s.downcast_ref::<SdkError<AssumeRoleError, HttpResponse>>() {
            return AwsError::from_sdk("sts:AssumeRole", sdk).into();
        }
        source = s.source();
    }
    AwsError {
        action: "sts:AssumeRole",
        kind: AwsErrorKind::NoCredentials,
        message: Some(format!("assuming {role_arn}: {}", chain(e))),
    }
    .into()
}

/// The role's provider, handing out the credentials obtained while connecting
/// first (when they are still good for a while), so connecting and the first call
/// share one `AssumeRole`.
#[derive(Debug)]
struct Primed {
    first: Mutex<Option<Credentials>>,
    provider: AssumeRoleProvider,
}

impl ProvideCredentials for Primed {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let first = self
            .first
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match first.filter(|c| still_valid(c, SystemTime::now())) {
            Some(c) => future::ProvideCredentials::ready(Ok(c)),
            None => self.provider.provide_credentials(),
        }
    }
}

/// Valid for at least [`PRIMED_MIN_VALIDITY`] after `now` (or without expiry).
fn still_valid(c: &Credentials, now: SystemTime) -> bool {
    c.expiry().is_none_or(|e| e > now + PRIMED_MIN_VALIDITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(id: &str, name: &str, active: bool) -> OrganizationAccount {
        OrganizationAccount {
            id: id.into(),
            name: name.into(),
            active,
        }
    }

    fn ok_routes(r: Vec<std::result::Result<Route, Unreachable>>) -> Vec<Route> {
        r.into_iter().map(|r| r.expect("a route")).collect()
    }

    #[test]
    fn role_arns() {
        assert!(is_role_arn("arn:aws:iam::123456789012:role/KeyturnAudit"));
        assert!(is_role_arn("arn:aws-cn:iam::123456789012:role/path/R"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:user/bob"));
        assert!(!is_role_arn("arn:aws:iam::12345:role/R"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:role/"));
        assert!(!is_role_arn("arn:aws:iam::123456789012:role/path/"));
        assert!(!is_role_arn("KeyturnAudit"));
        assert!(!is_role_arn("arn:aws:sts::123456789012:role/R"));
        assert!(!is_role_arn("arn:gcp:iam::123456789012:role/R"));
    }

    #[test]
    fn names_and_ids() {
        assert!(is_role_name("KeyturnRotator"));
        assert!(is_role_name("a+b=c,d.e@f_g-h"));
        assert!(!is_role_name(""));
        assert!(!is_role_name("bad/name"));
        assert!(!is_role_name(&"r".repeat(65)));
        assert!(is_session_name("keyturn-audit"));
        assert!(!is_session_name("k"));
        assert!(!is_session_name("has space"));
        assert!(!is_session_name(&"s".repeat(65)));
        assert!(is_external_id("tenant:42/prod"));
        assert!(!is_external_id("x"));
        assert!(!is_external_id("no spaces"));
        assert!(is_account_id("012345678901"));
        assert!(!is_account_id("12345678901"));
        assert!(!is_account_id("12345678901x"));
    }

    #[test]
    fn partitions_come_from_the_arn() {
        assert_eq!(
            partition_of_arn("arn:aws:iam::123456789012:user/admin"),
            Some("aws")
        );
        assert_eq!(
            partition_of_arn("arn:aws-cn:sts::123456789012:assumed-role/R/s"),
            Some("aws-cn")
        );
        assert_eq!(
            partition_of_arn("arn:aws-us-gov:iam::123456789012:root"),
            Some("aws-us-gov")
        );
        assert_eq!(partition_of_arn("arn::iam::1:root"), None);
        assert_eq!(partition_of_arn("not an arn"), None);
        assert_eq!(partition_of_arn(""), None);
        assert_eq!(
            account_of_arn("arn:aws:iam::111122223333:role/R").as_deref(),
            Some("111122223333")
        );
        assert_eq!(account_of_arn("arn:aws:s3:::bucket"), None);
    }

    #[test]
    fn member_role_arns_use_the_partition_and_role_name() {
        assert_eq!(
            member_role_arn("aws", "111111111111", "KeyturnRotator"),
            "arn:aws:iam::111111111111:role/KeyturnRotator"
        );
        let arn = member_role_arn("aws-us-gov", "222222222222", "R");
        assert_eq!(arn, "arn:aws-us-gov:iam::222222222222:role/R");
        assert!(is_role_arn(&arn));
    }

    #[test]
    fn include_and_exclude_select_accounts() {
        let mut o = OrganizationSource::new("R");
        assert!(o.selects("111111111111"), "no lists: every account");
        o.exclude = vec!["222222222222".into()];
        assert!(o.selects("111111111111"));
        assert!(!o.selects("222222222222"));
        o.include = vec!["111111111111".into(), "222222222222".into()];
        assert!(o.selects("111111111111"));
        assert!(!o.selects("222222222222"), "exclude wins");
        assert!(!o.selects("333333333333"), "not included");
    }

    #[test]
    fn organization_routes_active_selected_sorted_own_account_as_caller() {
        let accounts = [
            acct("333333333333", "c", true),
            acct("123456789012", "mgmt", true),
            acct("111111111111", "a", true),
            acct("444444444444", "gone", false),
            acct("222222222222", "b", true),
        ];
        let mut org = OrganizationSource::new("KeyturnRotator");
        org.exclude = vec!["222222222222".into()];
        let routes = ok_routes(organization_routes(
            "123456789012",
            "aws-cn",
            &accounts,
            &org,
        ));
        let ids: Vec<&str> = routes
            .iter()
            .map(|r| r.account_id.as_deref().unwrap())
            .collect();
        assert_eq!(ids, ["111111111111", "123456789012", "333333333333"]);
        assert_eq!(
            routes[0].sign_as,
            SignAs::Role(RoleSource::new(
                "arn:aws-cn:iam::111111111111:role/KeyturnRotator"
            ))
        );
        assert_eq!(routes[0].via, "organization:a");
        assert_eq!(routes[0].name.as_deref(), Some("a"));
        assert_eq!(
            routes[1].sign_as,
            SignAs::Caller,
            "the management account is read with the caller's own credentials"
        );
        assert_eq!(routes[1].via, "organization:mgmt");
    }

    #[test]
    fn an_included_account_that_is_not_listed_is_an_error_for_it_only() {
        let accounts = [
            acct("111111111111", "a", true),
            acct("444444444444", "suspended", false),
        ];
        let mut org = OrganizationSource::new("R");
        org.include = vec![
            "111111111111".into(),
            "444444444444".into(),
            "555555555555".into(),
        ];
        let routes = organization_routes("123456789012", "aws", &accounts, &org);
        assert_eq!(routes.len(), 3);
        assert_eq!(
            routes[0].as_ref().unwrap().account_id.as_deref(),
            Some("111111111111")
        );
        for (r, id) in routes[1..].iter().zip(["444444444444", "555555555555"]) {
            let u = r.as_ref().unwrap_err();
            assert_eq!(u.account_id.as_deref(), Some(id));
            assert_eq!(u.via, "organization");
            assert!(u.to_string().contains("no ACTIVE account"), "{u}");
        }
        // The management account is not included: not audited.
        assert!(!routes
            .iter()
            .any(|r| r.as_ref().is_ok_and(|r| r.sign_as == SignAs::Caller)));
    }

    #[test]
    fn single_sources_route_directly() {
        let r = Route::single(None, &AccountSource::Caller).unwrap();
        assert_eq!((r.via.as_str(), r.account_id), ("caller", None));
        let r = Route::single(Some("prod"), &AccountSource::Profile("prod-admin".into())).unwrap();
        assert_eq!(r.via, "profile:prod-admin");
        assert_eq!(r.name.as_deref(), Some("prod"));
        let role = RoleSource {
            role_arn: "arn:aws:iam::111122223333:role/Audit".into(),
            external_id: Some("tenant-7".into()),
        };
        let r = Route::single(None, &AccountSource::Role(role.clone())).unwrap();
        assert_eq!(r.account_id.as_deref(), Some("111122223333"));
        assert_eq!(r.via, "role:arn:aws:iam::111122223333:role/Audit");
        assert_eq!(r.sign_as, SignAs::Role(role));
        assert!(Route::single(
            None,
            &AccountSource::Organization(OrganizationSource::new("R"))
        )
        .is_none());
    }

    #[test]
    fn sources_are_validated_before_any_call() {
        let ok = [
            AccountSource::Caller,
            AccountSource::Profile("p".into()),
            AccountSource::Role(RoleSource {
                role_arn: "arn:aws:iam::111122223333:role/R".into(),
                external_id: Some("ext-1".into()),
            }),
            AccountSource::Organization(OrganizationSource {
                role_name: "R".into(),
                include: vec!["111111111111".into()],
                exclude: vec!["222222222222".into()],
            }),
        ];
        for s in ok {
            s.validate().unwrap_or_else(|e| panic!("{s:?}: {e}"));
        }
        for (s, needle) in [
            (AccountSource::Profile(" ".into()), "profile name"),
            (
                AccountSource::Role(RoleSource::new("arn:aws:iam::1:role/R")),
                "role ARN",
            ),
            (
                AccountSource::Role(RoleSource {
                    role_arn: "arn:aws:iam::111122223333:role/R".into(),
                    external_id: Some("a b".into()),
                }),
                "external id",
            ),
            (
                AccountSource::Organization(OrganizationSource::new("bad/name")),
                "role name",
            ),
            (
                AccountSource::Organization(OrganizationSource {
                    role_name: "R".into(),
                    include: vec!["1234".into()],
                    exclude: vec![],
                }),
                "include: \"1234\" is not an AWS account id",
            ),
            (
                AccountSource::Organization(OrganizationSource {
                    role_name: "R".into(),
                    include: vec!["111111111111".into()],
                    exclude: vec!["111111111111".into()],
                }),
                "in both include and exclude",
            ),
        ] {
            let e = s.validate().unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)));
            assert!(e.to_string().contains(needle), "{s:?}: {e}");
        }
    }

    #[test]
    fn each_account_retries_in_its_own_partition() {
        let account = |id: &str| Account {
            id: id.into(),
            name: None,
            via: "caller".into(),
            config: SdkConfig::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::from_static("us-east-1"))
                .build(),
        };
        let (a, b) = (account("111111111111"), account("222222222222"));
        assert_eq!(
            a.iam_client().config().retry_partition(),
            Some(&RetryPartition::new("iam-111111111111"))
        );
        assert_eq!(
            b.sts_client().config().retry_partition(),
            Some(&RetryPartition::new("sts-222222222222"))
        );
        assert_ne!(a.retry_partition("iam"), b.retry_partition("iam"));
    }

    #[test]
    fn session_names_are_checked() {
        let base = SdkConfig::builder().build();
        let remote = RemoteConfig::default();
        assert!(Access::from_base(base.clone(), &remote, "keyturn-run").is_ok());
        let e = Access::from_base(base, &remote, "bad name").unwrap_err();
        assert!(e.to_string().contains("role session name"), "{e}");
    }

    #[test]
    fn primed_credentials_are_used_only_while_they_stay_valid() {
        let now = SystemTime::now();
        let creds = |expiry: Option<SystemTime>| {
            Credentials::new("ASIAEXAMPLE", "secret", Some("token".into()), expiry, "t")
        };
        assert!(still_valid(&creds(None), now));
        assert!(still_valid(
            &creds(Some(now + Duration::from_secs(3600))),
            now
        ));
        assert!(!still_valid(
            &creds(Some(now + Duration::from_secs(60))),
            now
        ));
        assert!(!still_valid(
            &creds(Some(now - Duration::from_secs(1))),
            now
        ));
    }
}
