//! `keyturn audit --usage`: who uses each Active key, from CloudTrail.
//!
//! The verdicts say a key is too old; the next question before rotating it is who will
//! have to switch. With `--usage` every Active key of an IAM user gets its consumers
//! ([`crate::usage::Consumer`]: source IP and user agent, event count, first and last
//! time, top APIs, regions) over the last 90 days (CloudTrail's limit; never before the
//! key was created), in every format.
//!
//! CloudTrail is asked by access key id. The API source has the ids; the credential
//! report has only slots, so for it keyturn calls `ListAccessKeys` for each user with an
//! Active key and matches slot to key by creation time (the report's
//! `access_key_N_last_rotated` is the key's `CreateDate`). The root user's keys are not
//! looked up (their ids are not visible to IAM calls).
//!
//! A failed lookup (CloudTrail denied, a region failing after retries) does not fail
//! the audit: the account gets a warning and its keys' consumers stay unknown (`null`
//! in JSON), never "none": an empty list would claim nobody uses the key.

use super::{Evaluated, KeyRecord};
use crate::access::Account;
use crate::aws::{KeyApi, SdkKeyApi};
use crate::error::{Error, Result};
use crate::model::{AccessKeyInfo, KeyStatus};
use crate::usage::{resolve_regions, Consumer, UsageClient, UsageQuery, MAX_WINDOW};
use std::collections::{BTreeSet, HashMap};
use time::OffsetDateTime;

/// `--usage` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageOptions {
    /// `[usage] regions`; `None`: the account's enabled regions.
    pub regions: Option<Vec<String>>,
}

/// What the consumer lookup of one account covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountUsage {
    /// Regions searched (empty if they could not be resolved).
    pub regions: Vec<String>,
    /// The window asked of CloudTrail.
    pub since: OffsetDateTime,
    pub until: OffsetDateTime,
    /// Active keys whose consumers were looked up.
    pub keys: usize,
    /// Why the lookup failed (the keys' consumers are then unknown).
    pub error: Option<String>,
}

/// Does this key get a consumer lookup? Active keys of IAM users.
pub fn wants_consumers(r: &KeyRecord) -> bool {
    !r.is_root() && r.status == Some(KeyStatus::Active)
}

/// Fill in the key ids of `records` that lack one (credential report source) from
/// `ListAccessKeys`, for users with an Active key. A slot is matched to the key created
/// at the same second; failing that, a user's only Active record takes the user's only
/// Active key. Unmatched records keep `None` (their consumers stay unknown).
pub async fn fill_key_ids(api: &SdkKeyApi, records: &mut [KeyRecord]) -> Result<()> {
    let users: BTreeSet<String> = records
        .iter()
        .filter(|r| wants_consumers(r) && r.access_key_id.is_none())
        .map(|r| r.user.clone())
        .collect();
    for user in users {
        let keys = match api.list_keys(&user).await {
            Ok(k) => k,
            // Deleted since the report was generated: nothing to look up.
            Err(Error::NoSuchUser { .. }) => continue,
            Err(e) => return Err(e),
        };
        match_ids(&user, &keys, records);
    }
    Ok(())
}

/// The matching step of [`fill_key_ids`] (pure).
pub fn match_ids(user: &str, keys: &[AccessKeyInfo], records: &mut [KeyRecord]) {
    let secs = |t: OffsetDateTime| t.unix_timestamp();
    let mut unmatched: Vec<&mut KeyRecord> = Vec::new();
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for r in records
        .iter_mut()
        .filter(|r| r.user == user && r.access_key_id.is_none() && wants_consumers(r))
    {
        let same_time = keys.iter().find(|k| {
            k.status == KeyStatus::Active
                && r.created.map(secs) == Some(secs(k.create_date))
                && !used.contains(k.access_key_id.as_str())
        });
        match same_time {
            Some(k) => {
                used.insert(&k.access_key_id);
                r.access_key_id = Some(k.access_key_id.clone());
            }
            None => unmatched.push(r),
        }
    }
    let left: Vec<&AccessKeyInfo> = keys
        .iter()
        .filter(|k| k.status == KeyStatus::Active && !used.contains(k.access_key_id.as_str()))
        .collect();
    if let ([r], [k]) = (unmatched.as_mut_slice(), left.as_slice()) {
        r.access_key_id = Some(k.access_key_id.clone());
    }
}

/// Look up the consumers of the account's Active keys and attach them to `keys`.
pub async fn attach(
    account: &Account,
    options: &UsageOptions,
    keys: &mut [Evaluated],
    now: OffsetDateTime,
) -> AccountUsage {
    let ids: Vec<String> = keys
        .iter()
        .filter(|k| wants_consumers(&k.record))
        .filter_map(|k| k.record.access_key_id.clone())
        .collect();
    // CloudTrail has nothing from before the oldest key was created.
    let oldest = keys
        .iter()
        .filter(|k| wants_consumers(&k.record))
        .filter_map(|k| k.record.created)
        .min()
        .unwrap_or(now);
    let query = UsageQuery::since(ids.clone(), oldest.max(now - MAX_WINDOW));
    let (since, until) = query.window(now);
    let mut usage = AccountUsage {
        regions: Vec::new(),
        since,
        until,
        keys: ids.len(),
        error: None,
    };
    let regions = match resolve_regions(&account.config, options.regions.as_deref()).await {
        Ok(r) => r,
        Err(e) => {
            usage.error = Some(e.to_string());
            return usage;
        }
    };
    usage.regions = regions.clone();
    if ids.is_empty() {
        return usage;
    }
    let client = UsageClient::new(&account.config, regions);
    match client.consumers_at(&query, now).await {
        Ok(report) => {
            let by_id: HashMap<&str, &Vec<Consumer>> = report
                .keys
                .iter()
                .map(|k| (k.access_key_id.as_str(), &k.consumers))
                .collect();
            for k in keys.iter_mut() {
                if let Some(c) = k
                    .record
                    .access_key_id
                    .as_deref()
                    .filter(|_| wants_consumers(&k.record))
                    .and_then(|id| by_id.get(id))
                {
                    k.consumers = Some((*c).clone());
                }
            }
        }
        Err(e) => usage.error = Some(e.to_string()),
    }
    usage
}

/// The warning an account gets when its consumers could not be looked up.
pub fn warning(error: &str) -> String {
    format!("the consumers of its keys (--usage) could not be looked up in CloudTrail: {error}; grant cloudtrail:LookupEvents (and account:ListRegions, or set [usage] regions)")
}

/// Keys whose id could not be matched (report source), for a warning.
pub fn unmatched(keys: &[Evaluated]) -> Vec<String> {
    keys.iter()
        .filter(|k| wants_consumers(&k.record) && k.record.access_key_id.is_none())
        .map(|k| format!("{} {}", k.record.user, k.record.key.label()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::KeyRef;
    use crate::model::Usage;
    use time::macros::datetime;

    const T1: OffsetDateTime = datetime!(2026-01-01 10:00:00 UTC);
    const T2: OffsetDateTime = datetime!(2026-03-01 10:00:00 UTC);

    fn rec(user: &str, slot: u8, status: KeyStatus, created: OffsetDateTime) -> KeyRecord {
        KeyRecord {
            user: user.into(),
            key: KeyRef::Slot(slot),
            status: Some(status),
            created: Some(created),
            usage: Usage::Unknown,
            access_key_id: None,
        }
    }

    fn info(id: &str, status: KeyStatus, created: OffsetDateTime) -> AccessKeyInfo {
        AccessKeyInfo {
            access_key_id: id.into(),
            status,
            create_date: created,
            usage: Usage::Unknown,
        }
    }

    #[test]
    fn slots_match_keys_by_creation_second() {
        let mut records = vec![
            rec("u", 1, KeyStatus::Active, T1),
            rec("u", 2, KeyStatus::Active, T2),
            rec("other", 1, KeyStatus::Active, T1),
        ];
        // IAM lists them in another order, with sub-second creation times.
        let keys = [
            info(
                "AKIA2",
                KeyStatus::Active,
                T2 + time::Duration::milliseconds(400),
            ),
            info("AKIA1", KeyStatus::Active, T1),
        ];
        match_ids("u", &keys, &mut records);
        let ids: Vec<Option<&str>> = records.iter().map(|r| r.access_key_id.as_deref()).collect();
        assert_eq!(ids, [Some("AKIA1"), Some("AKIA2"), None]);
    }

    #[test]
    fn a_lone_active_key_matches_despite_a_changed_time_and_inactive_ones_never() {
        // The report is up to 4 h old: the key was replaced since (other time).
        let mut records = vec![
            rec("u", 1, KeyStatus::Active, T1),
            rec("u", 2, KeyStatus::Inactive, T2),
        ];
        let keys = [
            info("AKIAOLD", KeyStatus::Inactive, T2),
            info("AKIANEW", KeyStatus::Active, T2 + time::Duration::days(1)),
        ];
        match_ids("u", &keys, &mut records);
        assert_eq!(records[0].access_key_id.as_deref(), Some("AKIANEW"));
        assert_eq!(records[1].access_key_id, None);
        // Two unmatched Active records and two keys: no guess.
        let mut records = vec![
            rec("u", 1, KeyStatus::Active, T1),
            rec("u", 2, KeyStatus::Active, T1 + time::Duration::days(3)),
        ];
        let keys = [
            info("A", KeyStatus::Active, T2),
            info("B", KeyStatus::Active, T2 + time::Duration::days(1)),
        ];
        match_ids("u", &keys, &mut records);
        assert!(records.iter().all(|r| r.access_key_id.is_none()));
    }

    #[test]
    fn root_and_inactive_keys_get_no_lookup() {
        let mut root = rec(super::super::ROOT_USER, 1, KeyStatus::Active, T1);
        assert!(!wants_consumers(&root));
        root.user = "u".into();
        assert!(wants_consumers(&root));
        assert!(!wants_consumers(&rec("u", 1, KeyStatus::Inactive, T1)));
    }
}
