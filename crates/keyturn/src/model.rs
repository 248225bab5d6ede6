//! The facts keyturn reasons about: an IAM user's access keys as IAM reports them.
//!
//! These types are plain data with no AWS SDK types in them, so the planner and the
//! audit rules can be tested with hand-built inventories.

use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// `Active` or `Inactive`, as IAM names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyStatus {
    Active,
    Inactive,
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyStatus::Active => "Active",
            KeyStatus::Inactive => "Inactive",
        })
    }
}

/// When and where a key was last used (IAM `GetAccessKeyLastUsed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LastUsed {
    #[serde(with = "time::serde::rfc3339")]
    pub date: OffsetDateTime,
    pub service: Option<String>,
    pub region: Option<String>,
}

/// Last-use knowledge about a key: not looked up, never used, or used at a time.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "State", rename_all = "PascalCase")]
pub enum Usage {
    /// keyturn did not ask IAM (it costs one call per key).
    #[default]
    Unknown,
    Never,
    Used(LastUsed),
}

/// One access key of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccessKeyInfo {
    pub access_key_id: String,
    pub status: KeyStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub create_date: OffsetDateTime,
    #[serde(default)]
    pub usage: Usage,
}

impl AccessKeyInfo {
    /// Whole days since the key was created (the AWS Config `access-keys-rotated` arithmetic).
    pub fn age_days(&self, now: OffsetDateTime) -> i64 {
        (now - self.create_date).whole_days()
    }

    /// A one-line human description: masked id, status, age, last use.
    pub fn describe(&self, now: OffsetDateTime) -> String {
        let used = match &self.usage {
            Usage::Unknown => "last use unknown".to_string(),
            Usage::Never => "never used".to_string(),
            Usage::Used(u) => {
                let days = (now - u.date).whole_days();
                let svc = u.service.as_deref().unwrap_or("unknown service");
                format!(
                    "last used {} ({} days ago, {svc})",
                    u.date.date(),
                    days.max(0)
                )
            }
        };
        format!(
            "{} ({}, created {}, {} days old, {})",
            self.access_key_id,
            self.status,
            self.create_date.date(),
            self.age_days(now).max(0),
            used
        )
    }
}

/// An IAM user and its keys at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Inventory {
    pub user_name: String,
    pub keys: Vec<AccessKeyInfo>,
}

impl Inventory {
    pub fn key(&self, id: &str) -> Option<&AccessKeyInfo> {
        self.keys.iter().find(|k| k.access_key_id == id)
    }
}

/// IAM's fixed limit of access keys per user.
pub const MAX_KEYS_PER_USER: usize = 2;
