//! The `api` source: `ListUsers`, then `ListAccessKeys` and `GetAccessKeyLastUsed`
//! for every user and key.
//!
//! For principals that may not read the credential report, and when the report's
//! staleness (AWS reuses a report for up to four hours) matters: these calls see the
//! keys as they are now, and give key ids. They cost one call per user plus one per
//! key, so they run with bounded concurrency (`--concurrency` requests in flight per
//! account; the SDK's retries with backoff absorb IAM throttling).
//!
//! The root user's keys are not visible to these calls; `GetAccountSummary`
//! (`AccountAccessKeysPresent`) tells whether the root user has any.

use super::{KeyRecord, KeyRef, ROOT_USER};
use crate::audit::report::user_path_of_arn;
use crate::aws::{KeyApi, SdkKeyApi};
use crate::error::{AwsError, AwsErrorKind, Error, Result};
use crate::model::Usage;
use aws_sdk_iam::types::SummaryKeyType;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// What the API calls found in one account.
#[derive(Debug, Clone, Default)]
pub struct ApiRead {
    pub users: usize,
    pub records: Vec<KeyRecord>,
    pub warnings: Vec<String>,
}

/// Read every key of every user under `user_path`, at most `concurrency` requests at
/// a time.
pub async fn read(api: &SdkKeyApi, user_path: &str, concurrency: usize) -> Result<ApiRead> {
    let iam = aws_sdk_iam::Client::new(api.sdk_config());
    let users = list_users(&iam, user_path).await?;
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let api = Arc::new(api.clone());
    let mut tasks = JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let (api, permits, user) = (api.clone(), permits.clone(), user.clone());
        tasks.spawn(async move { (i, user_keys(&api, &permits, &user).await) });
    }
    let mut per_user: Vec<Vec<KeyRecord>> = vec![Vec::new(); users.len()];
    while let Some(joined) = tasks.join_next().await {
        let (i, keys) = joined.map_err(|e| Error::Runtime(format!("an audit task failed: {e}")))?;
        // On an error, returning drops `tasks`, which cancels the remaining calls.
        per_user[i] = keys?;
    }
    let mut read = ApiRead {
        users: users.len(),
        records: per_user.into_iter().flatten().collect(),
        warnings: Vec::new(),
    };
    if user_path == "/" {
        match root_has_keys(&iam).await {
            Ok(true) => read.records.insert(
                0,
                KeyRecord {
                    user: ROOT_USER.to_string(),
                    key: KeyRef::RootPresent,
                    status: None,
                    created: None,
                    usage: Usage::Unknown,
                    access_key_id: None,
                },
            ),
            Ok(false) => {}
            Err(e) => read.warnings.push(format!(
                "the root user's access keys were not checked: {}",
                e.summary()
            )),
        }
    }
    Ok(read)
}

/// `iam:ListUsers` (every page), names of users under `user_path`, sorted.
async fn list_users(iam: &aws_sdk_iam::Client, user_path: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = iam
            .list_users()
            .path_prefix(user_path)
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("iam:ListUsers", &e))?;
        for u in out.users() {
            // PathPrefix is applied by IAM; checked again so a lenient endpoint
            // cannot widen the audit.
            let path = user_path_of_arn(u.arn()).unwrap_or_else(|| u.path().to_string());
            if path.starts_with(user_path) {
                names.push(u.user_name().to_string());
            }
        }
        match (out.is_truncated(), out.marker()) {
            (true, Some(m)) => marker = Some(m.to_string()),
            _ => break,
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// One user's keys with their last use, oldest key first. A user or key deleted
/// while the audit runs is skipped.
async fn user_keys(api: &SdkKeyApi, permits: &Semaphore, user: &str) -> Result<Vec<KeyRecord>> {
    let keys = {
        let _permit = permits.acquire().await.expect("semaphore is never closed");
        match api.list_keys(user).await {
            Ok(k) => k,
            Err(Error::NoSuchUser { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let usage = {
            let _permit = permits.acquire().await.expect("semaphore is never closed");
            match api.last_used(&k.access_key_id).await {
                Ok(u) => u,
                Err(e) if e.aws_kind() == Some(&AwsErrorKind::NoSuchEntity) => continue,
                Err(e) => return Err(e),
            }
        };
        // The credential report has whole seconds; so do these records, so that a key
        // created on the day boundary gets the same age from both sources.
        let usage = match usage {
            Usage::Used(mut u) => {
                u.date = whole_seconds(u.date);
                Usage::Used(u)
            }
            other => other,
        };
        out.push(KeyRecord {
            user: user.to_string(),
            key: KeyRef::from_id(&k.access_key_id),
            status: Some(k.status),
            created: Some(whole_seconds(k.create_date)),
            usage,
            access_key_id: Some(k.access_key_id.clone()),
        });
    }
    Ok(out)
}

fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// `iam:GetAccountSummary`: does the root user have access keys?
async fn root_has_keys(iam: &aws_sdk_iam::Client) -> Result<bool> {
    let out = iam
        .get_account_summary()
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("iam:GetAccountSummary", &e))?;
    Ok(out
        .summary_map()
        .and_then(|m| m.get(&SummaryKeyType::AccountAccessKeysPresent))
        .is_some_and(|n| *n > 0))
}
