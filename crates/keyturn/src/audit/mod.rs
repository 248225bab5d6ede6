//! `keyturn audit`: which access keys break the rotation policy, in which accounts.
//!
//! Security teams answer "which keys are too old, unused or doubled up?" with AWS
//! Config's `access-keys-rotated` rule, Trusted Advisor or Prowler. This module gives
//! the same verdicts from the same arithmetic, for many accounts at once:
//!
//! - [`report`] and [`api`] read an account's keys from the IAM credential report or
//!   from the IAM API and normalize both into the same [`KeyRecord`], so the pure rules
//!   in [`evaluate`] cannot give different verdicts for the two sources;
//! - [`run`] turns `--profile`/`--role-arn`/`--organization` into
//!   [`crate::access::AccountSource`]s and reaches each account through
//!   [`crate::access`] (shared with fleet runs);
//! - [`render`] prints the result as a table, JSON, CSV, Markdown or a self-contained
//!   HTML page.
//!
//! The rules ([`evaluate`]), for each key of each IAM user, with ages in whole days
//! (`floor((now - date) / 24 h)`, as the Config rule and Prowler compute them):
//!
//! | finding | when |
//! | --- | --- |
//! | `too-old` | Active and `age > max_age_days` (so 90 is compliant and 91 is not at 90) |
//! | `unused` | Active, `max_unused_days` set, and last used more than that many days ago, or never used and `age > max_unused_days` |
//! | `two-active` | the user has two Active keys (each of the two gets the finding) |
//! | `stale-inactive` | Inactive and `age > max_age_days`: it should be deleted |
//! | `root-key` | the account's root user has an access key (whatever its status or age) |
//!
//! A key can have several findings (an old, unused key is `too-old` and `unused`); a
//! key with none is compliant (`ok`).

pub mod api;
pub mod render;
pub mod report;
pub mod usage;

use crate::access::{
    Access, Account, AccountSource, OrganizationSource, RoleSource, Route, Unreachable,
};
use crate::aws::SdkKeyApi;
use crate::error::{AwsError, AwsErrorKind};
use crate::model::{KeyStatus, Usage};
use crate::remote::RemoteConfig;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Version of the JSON output schema (`SchemaVersion`); bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// The user name the credential report gives the root user (kept for both sources).
pub const ROOT_USER: &str = "<root_account>";

/// The STS session name of every role `audit` assumes (visible in CloudTrail).
pub const SESSION_NAME: &str = "keyturn-audit";

/// Where an account's keys are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The IAM credential report: a handful of calls per account.
    #[default]
    Report,
    /// `ListUsers` + `ListAccessKeys` + `GetAccessKeyLastUsed`: calls per user and key.
    Api,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Report => "report",
            Source::Api => "api",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The thresholds keys are judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Policy {
    /// `maxAccessKeyAge` of the Config rule: Active keys older than this are `too-old`,
    /// Inactive ones `stale-inactive`.
    pub max_age_days: u32,
    /// Active keys unused for longer than this are `unused`; `None` disables the check.
    pub max_unused_days: Option<u32>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_age_days: 90,
            max_unused_days: None,
        }
    }
}

/// One policy violation of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finding {
    TooOld,
    Unused,
    TwoActive,
    StaleInactive,
    RootKey,
}

impl Finding {
    /// Every finding, in the order they are reported.
    pub const ALL: [Finding; 5] = [
        Finding::TooOld,
        Finding::Unused,
        Finding::TwoActive,
        Finding::StaleInactive,
        Finding::RootKey,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Finding::TooOld => "too-old",
            Finding::Unused => "unused",
            Finding::TwoActive => "two-active",
            Finding::StaleInactive => "stale-inactive",
            Finding::RootKey => "root-key",
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of a user's keys a record is about. The credential report has no key ids,
/// only the slots 1 and 2; the API has ids, of which only the last four characters are
/// kept (and shown).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyRef {
    /// `access_key_1_*` or `access_key_2_*` of the credential report.
    Slot(u8),
    /// The last four characters of the access key id.
    IdLast4(String),
    /// The root user has access keys (`GetAccountSummary`), details unknown.
    RootPresent,
}

impl KeyRef {
    /// From a full access key id (only the last four characters are kept).
    pub fn from_id(id: &str) -> Self {
        let n = id.chars().count();
        KeyRef::IdLast4(id.chars().skip(n.saturating_sub(4)).collect())
    }

    /// `slot 1`, `****WXYZ`, or `present`.
    pub fn label(&self) -> String {
        match self {
            KeyRef::Slot(n) => format!("slot {n}"),
            KeyRef::IdLast4(l) => format!("****{l}"),
            KeyRef::RootPresent => "present".to_string(),
        }
    }

    pub fn slot(&self) -> Option<u8> {
        match self {
            KeyRef::Slot(n) => Some(*n),
            _ => None,
        }
    }

    pub fn id_last4(&self) -> Option<&str> {
        match self {
            KeyRef::IdLast4(l) => Some(l),
            _ => None,
        }
    }
}

/// One access key as either source sees it: the input of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The IAM user name, or [`ROOT_USER`].
    pub user: String,
    pub key: KeyRef,
    /// `None` only for a root key known from `GetAccountSummary`, which gives no status.
    pub status: Option<KeyStatus>,
    /// When the key was created (`CreateDate`; the report's `access_key_N_last_rotated`).
    pub created: Option<OffsetDateTime>,
    pub usage: Usage,
    /// The full access key id, when known: from the API source, or looked up for
    /// `--usage` (CloudTrail is asked by key id). Never rendered: outputs show
    /// [`KeyRef::label`].
    pub access_key_id: Option<String>,
}

impl KeyRecord {
    pub fn is_root(&self) -> bool {
        self.user == ROOT_USER
    }

    /// Whole days since creation (the Config rule's arithmetic).
    pub fn age_days(&self, now: OffsetDateTime) -> Option<i64> {
        self.created.map(|c| whole_days(now, c))
    }
}

/// Whole days from `then` to `now` (negative if `then` is in the future).
pub fn whole_days(now: OffsetDateTime, then: OffsetDateTime) -> i64 {
    (now - then).whole_days()
}

/// The findings of one key. `active_keys_of_user` is how many Active keys its user
/// has (for `two-active`). Pure: same record, policy and `now`, same answer.
pub fn evaluate(
    key: &KeyRecord,
    active_keys_of_user: usize,
    policy: &Policy,
    now: OffsetDateTime,
) -> Vec<Finding> {
    if key.is_root() {
        // A root access key should not exist at all; its age is beside the point.
        return vec![Finding::RootKey];
    }
    let max_age = i64::from(policy.max_age_days);
    let age = key.age_days(now);
    let older_than = |limit: i64| age.is_some_and(|a| a > limit);
    let mut findings = Vec::new();
    match key.status {
        Some(KeyStatus::Active) => {
            if older_than(max_age) {
                findings.push(Finding::TooOld);
            }
            if let Some(max_unused) = policy.max_unused_days.map(i64::from) {
                let unused = match &key.usage {
                    Usage::Used(u) => whole_days(now, u.date) > max_unused,
                    Usage::Never => older_than(max_unused),
                    Usage::Unknown => false,
                };
                if unused {
                    findings.push(Finding::Unused);
                }
            }
            if active_keys_of_user >= 2 {
                findings.push(Finding::TwoActive);
            }
        }
        Some(KeyStatus::Inactive) if older_than(max_age) => {
            findings.push(Finding::StaleInactive);
        }
        Some(KeyStatus::Inactive) | None => {}
    }
    findings
}

/// A key with its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluated {
    pub record: KeyRecord,
    pub age_days: Option<i64>,
    /// Empty: compliant.
    pub findings: Vec<Finding>,
    /// `--usage`: the key's CloudTrail consumers, most recently seen first. `None`: not
    /// looked up (no `--usage`, not an Active IAM user key, or the lookup failed).
    pub consumers: Option<Vec<crate::usage::Consumer>>,
}

/// Evaluate every key of one account, counting each user's Active keys first. The
/// result is sorted by user, then key (slot or creation order as the source gave it).
pub fn evaluate_all(
    records: Vec<KeyRecord>,
    policy: &Policy,
    now: OffsetDateTime,
) -> Vec<Evaluated> {
    let mut active: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        if r.status == Some(KeyStatus::Active) && !r.is_root() {
            *active.entry(r.user.as_str()).or_default() += 1;
        }
    }
    let active: HashMap<String, usize> = active
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut out: Vec<Evaluated> = records
        .into_iter()
        .map(|record| {
            let n = active.get(&record.user).copied().unwrap_or(0);
            let findings = evaluate(&record, n, policy, now);
            Evaluated {
                age_days: record.age_days(now),
                findings,
                record,
                consumers: None,
            }
        })
        .collect();
    // Root first, then users by name; a user's keys keep the source's order (slot
    // order, or creation order for the API) thanks to the stable sort.
    out.sort_by(|a, b| {
        (!a.record.is_root(), &a.record.user).cmp(&(!b.record.is_root(), &b.record.user))
    });
    out
}

/// One account's keys, read by one source.
#[derive(Debug, Clone)]
pub struct AccountData {
    /// The source that produced the records (differs from the requested one after a
    /// fallback).
    pub source: Source,
    /// Why the report could not be used, when `source` is a fallback.
    pub fallback_reason: Option<String>,
    /// When the credential report was generated (report source).
    pub report_generated_at: Option<OffsetDateTime>,
    /// IAM users seen (after `--user-path`).
    pub users: usize,
    pub keys: Vec<Evaluated>,
    /// Things the user should know (e.g. the root user could not be checked).
    pub warnings: Vec<String>,
    /// `--usage`: what the consumer lookup covered.
    pub usage: Option<usage::AccountUsage>,
}

impl AccountData {
    pub fn count(&self, f: Finding) -> usize {
        self.keys.iter().filter(|k| k.findings.contains(&f)).count()
    }

    pub fn compliant(&self) -> usize {
        self.keys.iter().filter(|k| k.findings.is_empty()).count()
    }
}

/// The audit of one account: its data, or why it could not be audited.
#[derive(Debug, Clone)]
pub struct AccountResult {
    /// The 12-digit account id, when known (an account that could not be reached may
    /// only be known by its profile name).
    pub account_id: Option<String>,
    /// `iam:ListAccountAliases`, when allowed.
    pub alias: Option<String>,
    /// How keyturn reached the account: `caller`, `profile:NAME`, `role:ARN`,
    /// `organization:NAME` (the member account's name).
    pub via: String,
    pub outcome: std::result::Result<AccountData, String>,
}

/// Everything one `keyturn audit` run found.
#[derive(Debug, Clone)]
pub struct AuditReport {
    pub generated_at: OffsetDateTime,
    pub policy: Policy,
    pub user_path: String,
    /// The source asked for.
    pub source: Source,
    /// `--usage`: consumers were asked for (formats add their column or section).
    pub usage: bool,
    pub accounts: Vec<AccountResult>,
}

impl AuditReport {
    pub fn findings(&self) -> usize {
        self.ok_accounts()
            .flat_map(|a| a.keys.iter())
            .map(|k| k.findings.len())
            .sum()
    }

    pub fn failed_accounts(&self) -> usize {
        self.accounts.iter().filter(|a| a.outcome.is_err()).count()
    }

    pub fn ok_accounts(&self) -> impl Iterator<Item = &AccountData> {
        self.accounts.iter().filter_map(|a| a.outcome.as_ref().ok())
    }

    /// The process exit code: 1 if no account could be audited, 3 if anything is not
    /// compliant (a finding, or an account that could not be audited), else 0.
    pub fn exit_code(&self) -> i32 {
        use crate::error::exit;
        if self.failed_accounts() == self.accounts.len() {
            exit::FAILURE
        } else if self.findings() > 0 || self.failed_accounts() > 0 {
            exit::FINDINGS
        } else {
            exit::SUCCESS
        }
    }
}

/// What to audit and how: the validated settings of `keyturn audit` minus output.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Region and endpoint for every account; the base credentials are the default
    /// chain (its `profile` is ignored: `profiles` lists accounts).
    pub remote: RemoteConfig,
    pub profiles: Vec<String>,
    pub role_arns: Vec<String>,
    /// `--organization --role-name NAME`.
    pub organization_role: Option<String>,
    pub policy: Policy,
    /// Only users whose path starts with this (`/` = all, and the root user).
    pub user_path: String,
    pub source: Source,
    /// Accounts audited at once, and requests in flight per account (`api`).
    pub concurrency: usize,
    /// `--usage`: look up the CloudTrail consumers of every Active key.
    pub usage: Option<usage::UsageOptions>,
}

/// The accounts the options name, in order: `--profile`s, `--role-arn`s, then the
/// Organization (or the caller's own account when none is named).
pub fn account_sources(options: &AuditOptions) -> Vec<AccountSource> {
    let mut sources: Vec<AccountSource> = Vec::new();
    sources.extend(options.profiles.iter().cloned().map(AccountSource::Profile));
    sources.extend(
        options
            .role_arns
            .iter()
            .map(|arn| AccountSource::Role(RoleSource::new(arn))),
    );
    match &options.organization_role {
        Some(role) => sources.push(AccountSource::Organization(OrganizationSource::new(role))),
        None if sources.is_empty() => sources.push(AccountSource::Caller),
        None => {}
    }
    sources
}

/// Audit every account the options name. Never fails as a whole: an account that
/// cannot be reached or read becomes an error entry, and the others complete.
pub async fn run(options: &AuditOptions) -> AuditReport {
    let now = OffsetDateTime::now_utc();
    let base_remote = RemoteConfig {
        profile: None,
        ..options.remote.clone()
    };
    let access = Access::new(&base_remote, SESSION_NAME)
        .await
        .expect("SESSION_NAME is a valid session name");
    let mut routes: Vec<Route> = Vec::new();
    // Listing the Organization's accounts failed: error rows, after the others.
    let mut unlisted: Vec<Unreachable> = Vec::new();
    for source in account_sources(options) {
        for r in access.routes(None, &source).await {
            match r {
                Ok(route) => routes.push(route),
                Err(u) => unlisted.push(u),
            }
        }
    }

    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let shared = Arc::new((options.clone(), access));
    let mut tasks = JoinSet::new();
    for (i, route) in routes.iter().cloned().enumerate() {
        let (permits, shared) = (permits.clone(), shared.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire().await.expect("semaphore is never closed");
            let (options, access) = &*shared;
            (i, audit_account(&route, access, options, now).await)
        });
    }
    let mut audited: Vec<Option<AccountResult>> = vec![None; routes.len()];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, r)) => audited[i] = Some(r),
            Err(e) => tracing::error!("an account audit task failed: {e}"),
        }
    }
    let mut results: Vec<AccountResult> = Vec::with_capacity(routes.len() + unlisted.len());
    for (route, r) in routes.iter().zip(audited) {
        results.push(r.unwrap_or_else(|| AccountResult {
            account_id: route.account_id.clone(),
            alias: None,
            via: route.via.clone(),
            outcome: Err("the audit task of this account failed (see the log)".into()),
        }));
    }
    results.extend(unlisted.into_iter().map(AccountResult::unreachable));
    // The same account reached twice (two profiles of one account, a profile for an
    // organization member): keep the first.
    let mut seen = std::collections::HashSet::new();
    results.retain(|r| match &r.account_id {
        Some(id) if r.outcome.is_ok() => seen.insert(id.clone()),
        _ => true,
    });
    AuditReport {
        generated_at: now,
        policy: options.policy,
        user_path: options.user_path.clone(),
        source: options.source,
        usage: options.usage.is_some(),
        accounts: results,
    }
}

impl AccountResult {
    /// The error row of an account that could not be reached.
    fn unreachable(u: Unreachable) -> Self {
        AccountResult {
            account_id: u.account_id,
            alias: None,
            via: u.via,
            outcome: Err(u.error.to_string()),
        }
    }
}

/// Reach one account and read, evaluate its keys.
async fn audit_account(
    route: &Route,
    access: &Access,
    options: &AuditOptions,
    now: OffsetDateTime,
) -> AccountResult {
    let account = match access.connect(route).await {
        Ok(a) => a,
        Err(u) => return AccountResult::unreachable(u),
    };
    let iam = account.iam_client();
    let (alias, data) = tokio::join!(account_alias(&iam), read_account(&account, options));
    let outcome = match data {
        Ok((mut d, mut records)) => {
            let mut id_error = None;
            if options.usage.is_some() {
                let api = SdkKeyApi::new(&account.config);
                if let Err(e) = usage::fill_key_ids(&api, &mut records).await {
                    id_error = Some(e.to_string());
                }
            }
            d.keys = evaluate_all(records, &options.policy, now);
            if let Some(u) = &options.usage {
                let mut looked = usage::attach(&account, u, &mut d.keys, now).await;
                if looked.error.is_none() {
                    looked.error = id_error;
                }
                if let Some(e) = &looked.error {
                    d.warnings.push(usage::warning(e));
                } else {
                    let missed = usage::unmatched(&d.keys);
                    if !missed.is_empty() {
                        d.warnings.push(format!(
                            "no key id for {} (replaced since the credential report was generated?): consumers not looked up; --source api reads the ids live",
                            missed.join(", ")
                        ));
                    }
                }
                d.usage = Some(looked);
            }
            Ok(d)
        }
        Err(e) => Err(e.to_string()),
    };
    AccountResult {
        account_id: Some(account.id),
        alias,
        via: account.via,
        outcome,
    }
}

/// Read the account's keys with the requested source, falling back from the report
/// to the API when the report is denied.
async fn read_account(
    account: &Account,
    options: &AuditOptions,
) -> crate::Result<(AccountData, Vec<KeyRecord>)> {
    let api = SdkKeyApi::new(&account.config);
    let mut fallback_reason = None;
    if options.source == Source::Report {
        let iam = account.iam_client();
        match report::read(&iam, &options.user_path).await {
            Ok(r) => {
                let data = AccountData {
                    source: Source::Report,
                    fallback_reason: None,
                    report_generated_at: r.generated_at,
                    users: r.parsed.users,
                    keys: Vec::new(),
                    warnings: Vec::new(),
                    usage: None,
                };
                return Ok((data, r.parsed.records));
            }
            Err(e) if e.aws_kind() == Some(&AwsErrorKind::AccessDenied) => {
                fallback_reason = Some(e.summary());
            }
            Err(e) => return Err(e),
        }
    }
    let r = api::read(&api, &options.user_path, options.concurrency).await?;
    let data = AccountData {
        source: Source::Api,
        fallback_reason,
        report_generated_at: None,
        users: r.users,
        keys: Vec::new(),
        warnings: r.warnings,
        usage: None,
    };
    Ok((data, r.records))
}

/// `iam:ListAccountAliases`; `None` if there is none or it may not be read.
async fn account_alias(iam: &aws_sdk_iam::Client) -> Option<String> {
    match iam.list_account_aliases().send().await {
        Ok(out) => out.account_aliases().first().cloned(),
        Err(e) => {
            let e = AwsError::from_sdk("iam:ListAccountAliases", &e);
            tracing::debug!("no account alias: {}", e.summary());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LastUsed;
    use time::macros::datetime;
    use time::Duration;

    const NOW: OffsetDateTime = datetime!(2026-06-15 12:00 UTC);

    fn key(status: KeyStatus, age_days: i64, usage: Usage) -> KeyRecord {
        KeyRecord {
            user: "u".into(),
            key: KeyRef::Slot(1),
            status: Some(status),
            created: Some(NOW - Duration::days(age_days)),
            usage,
            access_key_id: None,
        }
    }

    fn used(days_ago: i64) -> Usage {
        Usage::Used(LastUsed {
            date: NOW - Duration::days(days_ago),
            service: Some("s3".into()),
            region: Some("us-east-1".into()),
        })
    }

    fn policy(max_unused: Option<u32>) -> Policy {
        Policy {
            max_age_days: 90,
            max_unused_days: max_unused,
        }
    }

    fn eval(k: &KeyRecord, active: usize, p: Policy) -> Vec<Finding> {
        evaluate(k, active, &p, NOW)
    }

    #[test]
    fn age_boundaries_follow_the_config_rule() {
        let p = policy(None);
        for (age, want) in [
            (0, vec![]),
            (10, vec![]),
            (89, vec![]),
            (90, vec![]),
            (91, vec![Finding::TooOld]),
            (400, vec![Finding::TooOld]),
        ] {
            assert_eq!(
                eval(&key(KeyStatus::Active, age, used(1)), 1, p),
                want,
                "age {age}"
            );
        }
    }

    #[test]
    fn whole_days_round_down() {
        // 90 days and 23 hours is still 90 whole days: compliant.
        let mut k = key(KeyStatus::Active, 90, used(1));
        k.created = Some(NOW - Duration::days(90) - Duration::hours(23));
        assert_eq!(eval(&k, 1, policy(None)), vec![]);
        k.created = Some(NOW - Duration::days(91));
        assert_eq!(eval(&k, 1, policy(None)), vec![Finding::TooOld]);
        assert_eq!(k.age_days(NOW), Some(91));
    }

    #[test]
    fn max_age_is_configurable() {
        let p = Policy {
            max_age_days: 30,
            max_unused_days: None,
        };
        assert_eq!(eval(&key(KeyStatus::Active, 30, used(1)), 1, p), vec![]);
        assert_eq!(
            eval(&key(KeyStatus::Active, 31, used(1)), 1, p),
            vec![Finding::TooOld]
        );
    }

    #[test]
    fn unused_needs_the_threshold_and_an_active_key() {
        // No threshold: never reported.
        assert_eq!(
            eval(&key(KeyStatus::Active, 50, used(49)), 1, policy(None)),
            vec![]
        );
        let p = policy(Some(30));
        assert_eq!(eval(&key(KeyStatus::Active, 50, used(30)), 1, p), vec![]);
        assert_eq!(
            eval(&key(KeyStatus::Active, 50, used(31)), 1, p),
            vec![Finding::Unused]
        );
        // Never used: judged by age.
        assert_eq!(
            eval(&key(KeyStatus::Active, 30, Usage::Never), 1, p),
            vec![]
        );
        assert_eq!(
            eval(&key(KeyStatus::Active, 31, Usage::Never), 1, p),
            vec![Finding::Unused]
        );
        // Unknown use (not looked up): no verdict on use.
        assert_eq!(
            eval(&key(KeyStatus::Active, 50, Usage::Unknown), 1, p),
            vec![]
        );
        // Inactive keys are not "unused": they cannot be used.
        assert_eq!(
            eval(&key(KeyStatus::Inactive, 50, Usage::Never), 0, p),
            vec![]
        );
    }

    #[test]
    fn old_and_unused_gives_both() {
        assert_eq!(
            eval(
                &key(KeyStatus::Active, 400, Usage::Never),
                1,
                policy(Some(30))
            ),
            vec![Finding::TooOld, Finding::Unused]
        );
        assert_eq!(
            eval(&key(KeyStatus::Active, 400, used(200)), 2, policy(Some(30))),
            vec![Finding::TooOld, Finding::Unused, Finding::TwoActive]
        );
    }

    #[test]
    fn two_active_keys() {
        let p = policy(None);
        assert_eq!(
            eval(&key(KeyStatus::Active, 10, used(1)), 2, p),
            vec![Finding::TwoActive]
        );
        // An Inactive key of such a user is not itself "two-active".
        assert_eq!(eval(&key(KeyStatus::Inactive, 10, used(1)), 2, p), vec![]);
    }

    #[test]
    fn stale_inactive() {
        let p = policy(Some(30));
        assert_eq!(
            eval(&key(KeyStatus::Inactive, 90, Usage::Never), 1, p),
            vec![]
        );
        assert_eq!(
            eval(&key(KeyStatus::Inactive, 91, Usage::Never), 1, p),
            vec![Finding::StaleInactive]
        );
        assert_eq!(
            eval(&key(KeyStatus::Inactive, 200, used(150)), 0, p),
            vec![Finding::StaleInactive]
        );
    }

    #[test]
    fn root_key_is_one_finding_whatever_its_state() {
        let mut k = key(KeyStatus::Active, 400, Usage::Never);
        k.user = ROOT_USER.into();
        assert_eq!(eval(&k, 0, policy(Some(1))), vec![Finding::RootKey]);
        k.status = Some(KeyStatus::Inactive);
        assert_eq!(eval(&k, 0, policy(None)), vec![Finding::RootKey]);
        // From GetAccountSummary: nothing but presence.
        let k = KeyRecord {
            user: ROOT_USER.into(),
            key: KeyRef::RootPresent,
            status: None,
            created: None,
            usage: Usage::Unknown,
            access_key_id: None,
        };
        assert_eq!(eval(&k, 0, policy(None)), vec![Finding::RootKey]);
    }

    #[test]
    fn evaluate_all_counts_active_keys_per_user_and_sorts() {
        let mut a1 = key(KeyStatus::Active, 10, used(1));
        a1.user = "bob".into();
        let mut a2 = a1.clone();
        a2.key = KeyRef::Slot(2);
        let mut c = key(KeyStatus::Active, 10, used(1));
        c.user = "alice".into();
        let mut d = key(KeyStatus::Inactive, 10, used(1));
        d.user = "alice".into();
        d.key = KeyRef::Slot(2);
        let mut root = key(KeyStatus::Active, 5, Usage::Never);
        root.user = ROOT_USER.into();
        let out = evaluate_all(vec![a1, a2, c, d, root], &policy(None), NOW);
        let got: Vec<(String, String, Vec<Finding>)> = out
            .iter()
            .map(|e| {
                (
                    e.record.user.clone(),
                    e.record.key.label(),
                    e.findings.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (ROOT_USER.into(), "slot 1".into(), vec![Finding::RootKey]),
                ("alice".into(), "slot 1".into(), vec![]),
                ("alice".into(), "slot 2".into(), vec![]),
                ("bob".into(), "slot 1".into(), vec![Finding::TwoActive]),
                ("bob".into(), "slot 2".into(), vec![Finding::TwoActive]),
            ]
        );
        assert_eq!(out[1].age_days, Some(10));
    }

    #[test]
    fn key_refs_keep_only_the_last_four_characters() {
        let k = KeyRef::from_id("AKIAIOSFODNN7EXAMPLE");
        assert_eq!(k, KeyRef::IdLast4("MPLE".into()));
        assert_eq!(k.label(), "****MPLE");
        assert_eq!(KeyRef::Slot(2).label(), "slot 2");
        assert_eq!(KeyRef::from_id("AB"), KeyRef::IdLast4("AB".into()));
    }

    fn report_with(outcomes: Vec<std::result::Result<AccountData, String>>) -> AuditReport {
        AuditReport {
            generated_at: NOW,
            policy: policy(None),
            user_path: "/".into(),
            source: Source::Report,
            usage: false,
            accounts: outcomes
                .into_iter()
                .map(|outcome| AccountResult {
                    account_id: Some("123456789012".into()),
                    alias: None,
                    via: "caller".into(),
                    outcome,
                })
                .collect(),
        }
    }

    fn data(keys: Vec<KeyRecord>) -> AccountData {
        AccountData {
            source: Source::Report,
            fallback_reason: None,
            report_generated_at: None,
            users: keys.len(),
            keys: evaluate_all(keys, &policy(None), NOW),
            warnings: vec![],
            usage: None,
        }
    }

    fn options() -> AuditOptions {
        AuditOptions {
            remote: RemoteConfig::default(),
            profiles: vec![],
            role_arns: vec![],
            organization_role: None,
            policy: Policy::default(),
            user_path: "/".into(),
            source: Source::Report,
            concurrency: 8,
            usage: None,
        }
    }

    #[test]
    fn flags_map_onto_account_sources_in_order() {
        assert_eq!(account_sources(&options()), vec![AccountSource::Caller]);
        let o = AuditOptions {
            profiles: vec!["a".into(), "b".into()],
            role_arns: vec!["arn:aws:iam::111122223333:role/R".into()],
            organization_role: Some("KeyturnAudit".into()),
            ..options()
        };
        assert_eq!(
            account_sources(&o),
            vec![
                AccountSource::Profile("a".into()),
                AccountSource::Profile("b".into()),
                AccountSource::Role(RoleSource::new("arn:aws:iam::111122223333:role/R")),
                AccountSource::Organization(OrganizationSource::new("KeyturnAudit")),
            ]
        );
        assert!(crate::access::is_session_name(SESSION_NAME));
    }

    #[test]
    fn exit_codes() {
        use crate::error::exit;
        let ok = || Ok(data(vec![key(KeyStatus::Active, 10, used(1))]));
        let bad = || Ok(data(vec![key(KeyStatus::Active, 100, used(1))]));
        assert_eq!(report_with(vec![ok(), ok()]).exit_code(), exit::SUCCESS);
        assert_eq!(report_with(vec![ok(), bad()]).exit_code(), exit::FINDINGS);
        // An account that could not be audited is not known to be compliant.
        assert_eq!(
            report_with(vec![ok(), Err("denied".into())]).exit_code(),
            exit::FINDINGS
        );
        assert_eq!(
            report_with(vec![Err("a".into()), Err("b".into())]).exit_code(),
            exit::FAILURE
        );
        assert_eq!(
            report_with(vec![Ok(data(vec![]))]).exit_code(),
            exit::SUCCESS
        );
    }
}
