//! The rotation planner: key inventory + options + now -> ordered steps, or a refusal.
//!
//! This is the one place where keyturn decides which keys it may touch. It is a pure
//! function (no I/O, no clock), so every rule below is covered by unit tests and
//! `--dry-run` prints exactly what a real run would do.
//!
//! Rules, in the order they are checked:
//! 1. Destructive flags (`--deactivate-old-keys`, `--delete-inactive-keys`) need `--yes`.
//! 2. Old keys are retired only after the new key is verified, so retiring old keys and
//!    `--no-verify` exclude each other.
//! 3. IAM allows two keys per user. A slot is freed only by deleting keys that are
//!    already Inactive (user mode, with `--delete-inactive-keys`) or, when rotating a
//!    profile's own key, by deleting the *other* key after an explicit confirmation.
//!    An Active key is never deleted to make room in user mode.
//! 4. The plan names every key it touches; the executor touches nothing else.

use crate::model::{AccessKeyInfo, Inventory, KeyStatus, MAX_KEYS_PER_USER};
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// Whose key is rotated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "Mode", rename_all = "PascalCase")]
pub enum Mode {
    /// `--user NAME`: a managing principal rotates another user's keys.
    User,
    /// `--profile NAME` alone: the caller rotates the key it is signed in with.
    Profile {
        #[serde(rename = "InUseAccessKeyId")]
        in_use_key: String,
    },
}

/// What the user asked for (already validated flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PlanOptions {
    pub deactivate_old_keys: bool,
    pub delete_inactive_keys: bool,
    pub yes: bool,
    /// `false` with `--no-verify`.
    pub verify: bool,
    /// Profile mode: deactivate the replaced key instead of deleting it.
    pub keep_old_inactive: bool,
    /// Profile mode: the user confirmed (on a TTY) that the other key may be deleted.
    pub confirmed_evict: bool,
    /// Where the new key goes, in order (names of [`crate::sink`] sinks). A plan
    /// without a sink is refused: the new secret would reach nobody.
    #[serde(default)]
    pub sinks: Vec<String>,
}

/// One step of a rotation, in execution order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "Action", rename_all_fields = "PascalCase")]
pub enum Step {
    /// Before the new key exists: delete a key to free one of the two slots (a key
    /// that is already Inactive, or the other key of a self-rotated user).
    FreeSlot {
        access_key_id: String,
        reason: String,
    },
    /// `iam:CreateAccessKey` for the user.
    CreateKey { reason: String },
    /// STS `GetCallerIdentity` with the new key until it is proven to work.
    VerifyNewKey { reason: String },
    /// Hand the new key to one sink (see [`crate::sink`]).
    Deliver { sink: String, reason: String },
    /// Prove that sink holds the new key (read it back).
    VerifyDelivery { sink: String, reason: String },
    /// After verification: set a previously Active key to Inactive.
    DeactivateOldKey {
        access_key_id: String,
        reason: String,
    },
    /// After verification: delete a key this run replaced.
    DeleteOldKey {
        access_key_id: String,
        reason: String,
    },
}

impl Step {
    /// Every step name, in the order a full plan uses them (journal, failpoints, docs).
    pub const NAMES: [&'static str; 7] = [
        "free-slot",
        "create-key",
        "verify-new-key",
        "deliver",
        "verify-delivery",
        "deactivate-old-key",
        "delete-old-key",
    ];

    /// Stable kebab-case name, used in journals, failpoints and output.
    pub fn name(&self) -> &'static str {
        match self {
            Step::FreeSlot { .. } => "free-slot",
            Step::CreateKey { .. } => "create-key",
            Step::VerifyNewKey { .. } => "verify-new-key",
            Step::Deliver { .. } => "deliver",
            Step::VerifyDelivery { .. } => "verify-delivery",
            Step::DeactivateOldKey { .. } => "deactivate-old-key",
            Step::DeleteOldKey { .. } => "delete-old-key",
        }
    }

    /// The existing key this step touches, if any.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Step::FreeSlot { access_key_id, .. }
            | Step::DeactivateOldKey { access_key_id, .. }
            | Step::DeleteOldKey { access_key_id, .. } => Some(access_key_id),
            _ => None,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Step::FreeSlot { reason, .. }
            | Step::CreateKey { reason }
            | Step::VerifyNewKey { reason }
            | Step::Deliver { reason, .. }
            | Step::VerifyDelivery { reason, .. }
            | Step::DeactivateOldKey { reason, .. }
            | Step::DeleteOldKey { reason, .. } => reason,
        }
    }

    /// The sink a delivery step is about.
    pub fn sink(&self) -> Option<&str> {
        match self {
            Step::Deliver { sink, .. } | Step::VerifyDelivery { sink, .. } => Some(sink),
            _ => None,
        }
    }

    /// The name with its subject: `deliver ci-env`, `delete-old-key AKIA...`. Used
    /// for failpoints and output.
    pub fn label(&self) -> String {
        match (self.sink(), self.key_id()) {
            (Some(s), _) => format!("{} {s}", self.name()),
            (None, Some(k)) => format!("{} {k}", self.name()),
            (None, None) => self.name().to_string(),
        }
    }

    /// Failpoint name of this step: the step name, with `:<sink>` for delivery steps.
    pub fn failpoint(&self) -> String {
        match self.sink() {
            Some(s) => format!("{}:{s}", self.name()),
            None => self.name().to_string(),
        }
    }

    /// True for steps that change or remove an existing key.
    pub fn is_destructive(&self) -> bool {
        self.key_id().is_some()
    }

    /// True for the delivery steps.
    pub fn is_delivery(&self) -> bool {
        self.sink().is_some()
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.label(), self.reason())
    }
}

/// An ordered list of steps for one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Plan {
    pub user_name: String,
    pub steps: Vec<Step>,
}

impl Plan {
    /// Key ids the plan deletes or deactivates (the only keys the executor may touch).
    pub fn touched_keys(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.steps.iter().filter_map(Step::key_id).collect();
        ids.dedup();
        ids
    }
}

/// Why a rotation must not start. Every variant is a safety guard (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{} changes key states and needs --yes; nothing was changed", .flags.join(" and "))]
    MissingYes { flags: Vec<&'static str> },

    #[error(
        "--no-verify cannot be combined with {what}: old keys are only retired after the new key is proven to work"
    )]
    RetireWithoutVerify { what: &'static str },

    #[error("--keep-old-inactive only applies when rotating a profile's own key (without --user)")]
    KeepOldInactiveNeedsProfile,

    #[error(
        "user {user} already has {} access keys (the IAM limit) and {} Inactive: {}. Re-run with --delete-inactive-keys --yes to delete the Inactive key{} first; nothing was changed",
        MAX_KEYS_PER_USER,
        if .inactive.len() == 1 { "one of them is" } else { "both are" },
        describe_all(.inactive, *.now),
        if .inactive.len() == 1 { "" } else { "s" }
    )]
    SlotsFullWithInactive {
        user: String,
        inactive: Vec<AccessKeyInfo>,
        now: OffsetDateTime,
    },

    #[error(
        "user {user} already has two Active access keys (the IAM limit): {}. keyturn never deletes an Active key to make room, since both may be in use. Deactivate and delete the one that is no longer used (aws iam update-access-key / delete-access-key), then re-run; nothing was changed",
        describe_all(.keys, *.now)
    )]
    TwoActiveKeys {
        user: String,
        keys: Vec<AccessKeyInfo>,
        now: OffsetDateTime,
    },

    #[error(
        "the profile's access key {key_id} does not belong to user {user} (its keys: {}); nothing was changed",
        if .user_keys.is_empty() { "none".to_string() } else { .user_keys.join(", ") }
    )]
    InUseKeyNotFound {
        user: String,
        key_id: String,
        user_keys: Vec<String>,
    },

    #[error(
        "user {user} already has two access keys (the IAM limit). This profile uses {}; to make room keyturn must delete the other key {}. Re-run with --yes (or answer the prompt on a terminal) to delete it; nothing was changed",
        .in_use.describe(*.now),
        .other.describe(*.now)
    )]
    EvictNeedsConfirmation {
        user: String,
        in_use: Box<AccessKeyInfo>,
        other: Box<AccessKeyInfo>,
        now: OffsetDateTime,
    },

    #[error("user {user} has {count} access keys; IAM allows {max}. Refusing to guess which to touch", max = MAX_KEYS_PER_USER)]
    TooManyKeys { user: String, count: usize },

    #[error("the rotation names no sink, so the new secret would reach nobody; name one with --sink (or leave it out to print on stdout)")]
    NoSink,
}

/// One `deliver`/`verify-delivery` pair per sink, in order.
fn delivery_steps(opts: &PlanOptions) -> Vec<Step> {
    let mut steps = Vec::new();
    for s in &opts.sinks {
        steps.push(Step::Deliver {
            sink: s.clone(),
            reason: format!("hand the new key to sink {s}"),
        });
        steps.push(Step::VerifyDelivery {
            sink: s.clone(),
            reason: format!("prove sink {s} holds the new key before any old key is retired"),
        });
    }
    steps
}

fn describe_all(keys: &[AccessKeyInfo], now: OffsetDateTime) -> String {
    keys.iter()
        .map(|k| k.describe(now))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Decide the steps of one rotation. Pure: same input, same answer.
pub fn plan_rotation(
    inventory: &Inventory,
    target: &Mode,
    opts: &PlanOptions,
    now: OffsetDateTime,
) -> Result<Plan, Refusal> {
    let user = inventory.user_name.clone();
    let profile_mode = matches!(target, Mode::Profile { .. });

    // Rule 1: destructive flags need --yes.
    let mut flags = Vec::new();
    if opts.deactivate_old_keys {
        flags.push("--deactivate-old-keys");
    }
    if opts.delete_inactive_keys {
        flags.push("--delete-inactive-keys");
    }
    if !flags.is_empty() && !opts.yes {
        return Err(Refusal::MissingYes { flags });
    }
    if opts.keep_old_inactive && !profile_mode {
        return Err(Refusal::KeepOldInactiveNeedsProfile);
    }

    // Rule 2: retiring needs verification.
    if !opts.verify {
        if opts.deactivate_old_keys {
            return Err(Refusal::RetireWithoutVerify {
                what: "--deactivate-old-keys",
            });
        }
        if profile_mode {
            return Err(Refusal::RetireWithoutVerify {
                what: "rotating a profile's own key (the old key is retired afterwards)",
            });
        }
    }

    if opts.sinks.is_empty() {
        return Err(Refusal::NoSink);
    }

    if inventory.keys.len() > MAX_KEYS_PER_USER {
        return Err(Refusal::TooManyKeys {
            user,
            count: inventory.keys.len(),
        });
    }

    match target {
        Mode::User => plan_user(inventory, opts, now),
        Mode::Profile { in_use_key } => plan_profile(inventory, in_use_key, opts, now),
    }
}

fn plan_user(inv: &Inventory, opts: &PlanOptions, now: OffsetDateTime) -> Result<Plan, Refusal> {
    let user = inv.user_name.clone();
    let active: Vec<&AccessKeyInfo> = inv
        .keys
        .iter()
        .filter(|k| k.status == KeyStatus::Active)
        .collect();
    let inactive: Vec<&AccessKeyInfo> = inv
        .keys
        .iter()
        .filter(|k| k.status == KeyStatus::Inactive)
        .collect();

    let mut steps = Vec::new();
    // Rule 3: free a slot only by deleting keys that are already Inactive.
    if opts.delete_inactive_keys {
        for k in &inactive {
            steps.push(Step::FreeSlot {
                access_key_id: k.access_key_id.clone(),
                reason: format!(
                    "already Inactive ({} days old); --delete-inactive-keys",
                    k.age_days(now).max(0)
                ),
            });
        }
    }
    let remaining = if opts.delete_inactive_keys {
        active.len()
    } else {
        inv.keys.len()
    };
    if remaining >= MAX_KEYS_PER_USER {
        if active.len() >= MAX_KEYS_PER_USER {
            return Err(Refusal::TwoActiveKeys {
                user,
                keys: active.into_iter().cloned().collect(),
                now,
            });
        }
        return Err(Refusal::SlotsFullWithInactive {
            user,
            inactive: inactive.into_iter().cloned().collect(),
            now,
        });
    }

    steps.push(Step::CreateKey {
        reason: if remaining == 0 {
            "the user has no other key".to_string()
        } else {
            "a free key slot is available".to_string()
        },
    });
    if opts.verify {
        steps.push(Step::VerifyNewKey {
            reason: "STS GetCallerIdentity with the new key must return the user's ARN".to_string(),
        });
    }
    steps.extend(delivery_steps(opts));
    if opts.deactivate_old_keys {
        for k in &active {
            steps.push(Step::DeactivateOldKey {
                access_key_id: k.access_key_id.clone(),
                reason: "replaced by the new key; --deactivate-old-keys".to_string(),
            });
        }
        if opts.delete_inactive_keys {
            for k in &active {
                steps.push(Step::DeleteOldKey {
                    access_key_id: k.access_key_id.clone(),
                    reason: "deactivated by this run; --delete-inactive-keys".to_string(),
                });
            }
        }
    }
    Ok(Plan {
        user_name: user,
        steps,
    })
}

fn plan_profile(
    inv: &Inventory,
    in_use_key: &str,
    opts: &PlanOptions,
    now: OffsetDateTime,
) -> Result<Plan, Refusal> {
    let user = inv.user_name.clone();
    let Some(in_use) = inv.key(in_use_key) else {
        return Err(Refusal::InUseKeyNotFound {
            user,
            key_id: in_use_key.to_string(),
            user_keys: inv.keys.iter().map(|k| k.access_key_id.clone()).collect(),
        });
    };
    let others: Vec<&AccessKeyInfo> = inv
        .keys
        .iter()
        .filter(|k| k.access_key_id != in_use_key)
        .collect();

    let mut steps = Vec::new();
    if inv.keys.len() >= MAX_KEYS_PER_USER {
        // Exactly one other key (TooManyKeys was ruled out). Never remove more than it.
        let other = others[0];
        if !(opts.yes || opts.confirmed_evict) {
            return Err(Refusal::EvictNeedsConfirmation {
                user,
                in_use: Box::new(in_use.clone()),
                other: Box::new(other.clone()),
                now,
            });
        }
        steps.push(Step::FreeSlot {
            access_key_id: other.access_key_id.clone(),
            reason: format!(
                "frees the second key slot; it is {} and not used by this profile",
                other.status
            ),
        });
    }
    steps.push(Step::CreateKey {
        reason: format!("replaces the profile's key {in_use_key}"),
    });
    steps.push(Step::VerifyNewKey {
        reason: "STS GetCallerIdentity with the new key must return the caller's ARN".to_string(),
    });
    steps.extend(delivery_steps(opts));
    if opts.keep_old_inactive || opts.deactivate_old_keys {
        steps.push(Step::DeactivateOldKey {
            access_key_id: in_use_key.to_string(),
            reason: "the credentials files no longer hold it".to_string(),
        });
    }
    if !opts.keep_old_inactive {
        steps.push(Step::DeleteOldKey {
            access_key_id: in_use_key.to_string(),
            reason: "the credentials files no longer hold it".to_string(),
        });
    }
    Ok(Plan {
        user_name: user,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LastUsed, Usage};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-21 12:00 UTC);

    fn key(id: &str, status: KeyStatus, days_old: i64) -> AccessKeyInfo {
        AccessKeyInfo {
            access_key_id: id.to_string(),
            status,
            create_date: NOW - time::Duration::days(days_old),
            usage: Usage::Unknown,
        }
    }

    fn inv(keys: Vec<AccessKeyInfo>) -> Inventory {
        Inventory {
            user_name: "ci-bot".into(),
            keys,
        }
    }

    fn opts() -> PlanOptions {
        PlanOptions {
            verify: true,
            sinks: vec!["s1".into()],
            ..Default::default()
        }
    }

    fn destructive() -> PlanOptions {
        PlanOptions {
            deactivate_old_keys: true,
            delete_inactive_keys: true,
            yes: true,
            ..opts()
        }
    }

    /// The plan's steps without the delivery pairs (tested on their own below).
    fn names(p: &Plan) -> Vec<String> {
        p.steps
            .iter()
            .filter(|s| !s.is_delivery())
            .map(Step::label)
            .collect()
    }

    fn user_plan(keys: Vec<AccessKeyInfo>, o: PlanOptions) -> Result<Plan, Refusal> {
        plan_rotation(&inv(keys), &Mode::User, &o, NOW)
    }

    fn profile(in_use: &str) -> Mode {
        Mode::Profile {
            in_use_key: in_use.into(),
        }
    }

    // Scenario 1: one Active key, no flags: create + verify, nothing else.
    #[test]
    fn one_active_no_flags_only_creates() {
        let p = user_plan(vec![key("K1", KeyStatus::Active, 100)], opts()).unwrap();
        assert_eq!(names(&p), ["create-key", "verify-new-key"]);
        assert!(p.touched_keys().is_empty());
    }

    #[test]
    fn no_keys_creates_first_key() {
        let p = user_plan(vec![], opts()).unwrap();
        assert_eq!(names(&p), ["create-key", "verify-new-key"]);
    }

    #[test]
    fn no_verify_skips_verification_when_nothing_is_retired() {
        let o = PlanOptions {
            verify: false,
            ..opts()
        };
        let p = user_plan(vec![key("K1", KeyStatus::Active, 1)], o).unwrap();
        assert_eq!(names(&p), ["create-key"]);
    }

    // Scenario 2.
    #[test]
    fn deactivate_old_after_verify() {
        let o = PlanOptions {
            deactivate_old_keys: true,
            yes: true,
            ..opts()
        };
        let p = user_plan(vec![key("K1", KeyStatus::Active, 100)], o).unwrap();
        assert_eq!(
            names(&p),
            ["create-key", "verify-new-key", "deactivate-old-key K1"]
        );
    }

    // Scenario 3.
    #[test]
    fn destructive_flags_need_yes() {
        for (d, del) in [(true, false), (false, true), (true, true)] {
            let o = PlanOptions {
                deactivate_old_keys: d,
                delete_inactive_keys: del,
                ..opts()
            };
            let err = user_plan(vec![key("K1", KeyStatus::Active, 1)], o).unwrap_err();
            assert!(matches!(err, Refusal::MissingYes { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains("--yes"));
            if d {
                assert!(msg.contains("--deactivate-old-keys"));
            }
            if del {
                assert!(msg.contains("--delete-inactive-keys"));
            }
        }
    }

    #[test]
    fn yes_alone_changes_nothing_destructive() {
        let o = PlanOptions {
            yes: true,
            ..opts()
        };
        let p = user_plan(vec![key("K1", KeyStatus::Active, 1)], o).unwrap();
        assert_eq!(names(&p), ["create-key", "verify-new-key"]);
    }

    // Scenario 4.
    #[test]
    fn active_plus_inactive_without_delete_flag_refuses_naming_key_and_flag() {
        let err = user_plan(
            vec![
                key("K1", KeyStatus::Active, 10),
                key("K2", KeyStatus::Inactive, 200),
            ],
            opts(),
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::SlotsFullWithInactive { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("K2") && msg.contains("--delete-inactive-keys"),
            "{msg}"
        );
        assert!(
            !msg.contains("K1 "),
            "only the inactive key is named: {msg}"
        );
    }

    #[test]
    fn deactivate_flag_does_not_free_a_slot() {
        let o = PlanOptions {
            deactivate_old_keys: true,
            yes: true,
            ..opts()
        };
        let err = user_plan(
            vec![
                key("K1", KeyStatus::Active, 10),
                key("K2", KeyStatus::Inactive, 200),
            ],
            o,
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::SlotsFullWithInactive { .. }));
    }

    // Scenario 5.
    #[test]
    fn delete_inactive_frees_slot_and_leaves_active_alone() {
        let o = PlanOptions {
            delete_inactive_keys: true,
            yes: true,
            ..opts()
        };
        let p = user_plan(
            vec![
                key("K1", KeyStatus::Active, 10),
                key("K2", KeyStatus::Inactive, 200),
            ],
            o,
        )
        .unwrap();
        assert_eq!(names(&p), ["free-slot K2", "create-key", "verify-new-key"]);
        assert_eq!(p.touched_keys(), ["K2"]);
    }

    #[test]
    fn two_inactive_keys_refuse_without_flag_and_both_go_with_it() {
        let keys = vec![
            key("K1", KeyStatus::Inactive, 10),
            key("K2", KeyStatus::Inactive, 20),
        ];
        let err = user_plan(keys.clone(), opts()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("K1") && msg.contains("K2") && msg.contains("both"));
        let o = PlanOptions {
            delete_inactive_keys: true,
            yes: true,
            ..opts()
        };
        let p = user_plan(keys, o).unwrap();
        assert_eq!(
            names(&p),
            [
                "free-slot K1",
                "free-slot K2",
                "create-key",
                "verify-new-key"
            ]
        );
    }

    #[test]
    fn single_inactive_key_is_left_alone_without_flag() {
        let p = user_plan(vec![key("K1", KeyStatus::Inactive, 10)], opts()).unwrap();
        assert_eq!(names(&p), ["create-key", "verify-new-key"]);
    }

    #[test]
    fn single_inactive_key_deleted_with_flag() {
        let o = PlanOptions {
            delete_inactive_keys: true,
            yes: true,
            ..opts()
        };
        let p = user_plan(vec![key("K1", KeyStatus::Inactive, 10)], o).unwrap();
        assert_eq!(names(&p), ["free-slot K1", "create-key", "verify-new-key"]);
    }

    // Scenario 6: two Active keys refuse with every flag combination.
    #[test]
    fn two_active_keys_always_refuse_listing_both() {
        let mut k1 = key("K1", KeyStatus::Active, 120);
        k1.usage = Usage::Used(LastUsed {
            date: NOW - time::Duration::days(3),
            service: Some("s3".into()),
            region: Some("us-east-1".into()),
        });
        let mut k2 = key("K2", KeyStatus::Active, 30);
        k2.usage = Usage::Never;
        for d in [false, true] {
            for del in [false, true] {
                let o = PlanOptions {
                    deactivate_old_keys: d,
                    delete_inactive_keys: del,
                    yes: true,
                    ..opts()
                };
                let err = user_plan(vec![k1.clone(), k2.clone()], o).unwrap_err();
                assert!(matches!(err, Refusal::TwoActiveKeys { .. }));
                let msg = err.to_string();
                assert!(msg.contains("K1") && msg.contains("K2"));
                assert!(msg.contains("120 days old") && msg.contains("30 days old"));
                assert!(msg.contains("3 days ago, s3") && msg.contains("never used"));
            }
        }
    }

    // Scenario 7.
    #[test]
    fn full_cleanup_leaves_only_new_key() {
        let p = user_plan(vec![key("K1", KeyStatus::Active, 100)], destructive()).unwrap();
        assert_eq!(
            names(&p),
            [
                "create-key",
                "verify-new-key",
                "deactivate-old-key K1",
                "delete-old-key K1"
            ]
        );
    }

    #[test]
    fn full_cleanup_with_active_and_inactive() {
        let p = user_plan(
            vec![
                key("K1", KeyStatus::Active, 100),
                key("K2", KeyStatus::Inactive, 300),
            ],
            destructive(),
        )
        .unwrap();
        assert_eq!(
            names(&p),
            [
                "free-slot K2",
                "create-key",
                "verify-new-key",
                "deactivate-old-key K1",
                "delete-old-key K1"
            ]
        );
    }

    #[test]
    fn delete_inactive_alone_never_deletes_active_keys_after_create() {
        let o = PlanOptions {
            delete_inactive_keys: true,
            yes: true,
            ..opts()
        };
        let p = user_plan(vec![key("K1", KeyStatus::Active, 100)], o).unwrap();
        assert_eq!(names(&p), ["create-key", "verify-new-key"]);
    }

    #[test]
    fn destructive_steps_never_precede_verification_except_freeing_inactive_slots() {
        let p = user_plan(
            vec![
                key("K1", KeyStatus::Active, 100),
                key("K2", KeyStatus::Inactive, 300),
            ],
            destructive(),
        )
        .unwrap();
        let verify_at = p
            .steps
            .iter()
            .position(|s| matches!(s, Step::VerifyNewKey { .. }))
            .unwrap();
        for (i, s) in p.steps.iter().enumerate() {
            if i < verify_at && s.is_destructive() {
                assert_eq!(s.key_id(), Some("K2"), "only the Inactive key goes early");
            }
        }
    }

    #[test]
    fn no_verify_refuses_retiring() {
        let o = PlanOptions {
            verify: false,
            deactivate_old_keys: true,
            yes: true,
            ..opts()
        };
        let err = user_plan(vec![key("K1", KeyStatus::Active, 1)], o).unwrap_err();
        assert!(matches!(err, Refusal::RetireWithoutVerify { .. }));
    }

    #[test]
    fn no_verify_with_delete_inactive_only_is_allowed() {
        let o = PlanOptions {
            verify: false,
            delete_inactive_keys: true,
            yes: true,
            ..opts()
        };
        let p = user_plan(
            vec![
                key("K1", KeyStatus::Active, 1),
                key("K2", KeyStatus::Inactive, 1),
            ],
            o,
        )
        .unwrap();
        assert_eq!(names(&p), ["free-slot K2", "create-key"]);
    }

    #[test]
    fn more_than_two_keys_refuses() {
        let err = user_plan(
            vec![
                key("K1", KeyStatus::Active, 1),
                key("K2", KeyStatus::Inactive, 1),
                key("K3", KeyStatus::Inactive, 1),
            ],
            destructive(),
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::TooManyKeys { count: 3, .. }));
    }

    #[test]
    fn keep_old_inactive_is_profile_only() {
        let o = PlanOptions {
            keep_old_inactive: true,
            ..opts()
        };
        let err = user_plan(vec![key("K1", KeyStatus::Active, 1)], o).unwrap_err();
        assert_eq!(err, Refusal::KeepOldInactiveNeedsProfile);
    }

    #[test]
    fn every_sink_gets_a_deliver_and_verify_pair_before_anything_is_retired() {
        let o = PlanOptions {
            sinks: vec!["vault".into(), "ci-env".into()],
            ..destructive()
        };
        let p = user_plan(
            vec![
                key("K1", KeyStatus::Active, 100),
                key("K2", KeyStatus::Inactive, 300),
            ],
            o,
        )
        .unwrap();
        let all: Vec<String> = p.steps.iter().map(Step::label).collect();
        assert_eq!(
            all,
            [
                "free-slot K2",
                "create-key",
                "verify-new-key",
                "deliver vault",
                "verify-delivery vault",
                "deliver ci-env",
                "verify-delivery ci-env",
                "deactivate-old-key K1",
                "delete-old-key K1"
            ]
        );
        assert_eq!(p.steps[3].failpoint(), "deliver:vault");
        assert_eq!(p.touched_keys(), ["K2", "K1"]);
    }

    #[test]
    fn without_verification_delivery_follows_creation() {
        let o = PlanOptions {
            verify: false,
            ..opts()
        };
        let p = user_plan(vec![key("K1", KeyStatus::Active, 1)], o).unwrap();
        let all: Vec<String> = p.steps.iter().map(Step::label).collect();
        assert_eq!(all, ["create-key", "deliver s1", "verify-delivery s1"]);
    }

    #[test]
    fn a_plan_without_a_sink_is_refused() {
        let o = PlanOptions {
            sinks: vec![],
            ..opts()
        };
        let err = user_plan(vec![key("K1", KeyStatus::Active, 1)], o.clone()).unwrap_err();
        assert_eq!(err, Refusal::NoSink);
        let err = plan_rotation(
            &inv(vec![key("K1", KeyStatus::Active, 1)]),
            &profile("K1"),
            &o,
            NOW,
        )
        .unwrap_err();
        assert_eq!(err, Refusal::NoSink);
    }

    #[test]
    fn self_rotation_delivers_to_its_sinks_before_retiring_the_old_key() {
        let o = PlanOptions {
            sinks: vec!["profiles".into(), "stdout".into()],
            ..opts()
        };
        let p = plan_rotation(
            &inv(vec![key("K1", KeyStatus::Active, 100)]),
            &profile("K1"),
            &o,
            NOW,
        )
        .unwrap();
        let all: Vec<String> = p.steps.iter().map(Step::label).collect();
        assert_eq!(
            all,
            [
                "create-key",
                "verify-new-key",
                "deliver profiles",
                "verify-delivery profiles",
                "deliver stdout",
                "verify-delivery stdout",
                "delete-old-key K1"
            ]
        );
    }

    #[test]
    fn plan_is_deterministic() {
        let keys = vec![
            key("K1", KeyStatus::Active, 100),
            key("K2", KeyStatus::Inactive, 300),
        ];
        assert_eq!(
            user_plan(keys.clone(), destructive()),
            user_plan(keys, destructive())
        );
    }

    // Profile (self-rotation) mode.
    #[test]
    fn profile_default_deletes_old_key_after_writing_profiles() {
        let p = plan_rotation(
            &inv(vec![key("K1", KeyStatus::Active, 100)]),
            &profile("K1"),
            &opts(),
            NOW,
        )
        .unwrap();
        assert_eq!(
            names(&p),
            ["create-key", "verify-new-key", "delete-old-key K1"]
        );
    }

    #[test]
    fn profile_keep_old_inactive_deactivates_only() {
        let o = PlanOptions {
            keep_old_inactive: true,
            ..opts()
        };
        let p = plan_rotation(
            &inv(vec![key("K1", KeyStatus::Active, 100)]),
            &profile("K1"),
            &o,
            NOW,
        )
        .unwrap();
        assert_eq!(
            names(&p),
            ["create-key", "verify-new-key", "deactivate-old-key K1"]
        );
    }

    #[test]
    fn profile_with_destructive_flags_deactivates_then_deletes() {
        let p = plan_rotation(
            &inv(vec![key("K1", KeyStatus::Active, 100)]),
            &profile("K1"),
            &destructive(),
            NOW,
        )
        .unwrap();
        assert_eq!(
            names(&p),
            [
                "create-key",
                "verify-new-key",
                "deactivate-old-key K1",
                "delete-old-key K1"
            ]
        );
    }

    #[test]
    fn profile_other_key_needs_confirmation_whatever_its_status() {
        for status in [KeyStatus::Active, KeyStatus::Inactive] {
            let keys = vec![key("K1", KeyStatus::Active, 100), key("K2", status, 5)];
            let err = plan_rotation(&inv(keys.clone()), &profile("K1"), &opts(), NOW).unwrap_err();
            match &err {
                Refusal::EvictNeedsConfirmation { in_use, other, .. } => {
                    assert_eq!(in_use.access_key_id, "K1");
                    assert_eq!(other.access_key_id, "K2");
                }
                e => panic!("unexpected {e:?}"),
            }
            assert!(err.to_string().contains("This profile uses K1"));
            for o in [
                PlanOptions {
                    yes: true,
                    ..opts()
                },
                PlanOptions {
                    confirmed_evict: true,
                    ..opts()
                },
            ] {
                let p = plan_rotation(&inv(keys.clone()), &profile("K1"), &o, NOW).unwrap();
                assert_eq!(
                    names(&p),
                    [
                        "free-slot K2",
                        "create-key",
                        "verify-new-key",
                        "delete-old-key K1"
                    ]
                );
            }
        }
    }

    #[test]
    fn profile_never_evicts_the_in_use_key_first() {
        // The in-use key is listed second; the other one is still the one evicted.
        let keys = vec![
            key("K2", KeyStatus::Inactive, 5),
            key("K1", KeyStatus::Active, 100),
        ];
        let o = PlanOptions {
            yes: true,
            ..opts()
        };
        let p = plan_rotation(&inv(keys), &profile("K1"), &o, NOW).unwrap();
        assert_eq!(p.steps[0].key_id(), Some("K2"));
        assert_eq!(
            p.steps.iter().filter(|s| s.key_id() == Some("K2")).count(),
            1
        );
    }

    #[test]
    fn profile_key_must_belong_to_user() {
        let err = plan_rotation(
            &inv(vec![key("K1", KeyStatus::Active, 1)]),
            &profile("KX"),
            &opts(),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::InUseKeyNotFound { .. }));
        assert!(err.to_string().contains("KX"));
    }

    #[test]
    fn profile_refuses_no_verify() {
        let o = PlanOptions {
            verify: false,
            ..opts()
        };
        let err = plan_rotation(
            &inv(vec![key("K1", KeyStatus::Active, 1)]),
            &profile("K1"),
            &o,
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::RetireWithoutVerify { .. }));
    }

    #[test]
    fn profile_destructive_flags_still_need_yes() {
        let o = PlanOptions {
            deactivate_old_keys: true,
            ..opts()
        };
        let err = plan_rotation(
            &inv(vec![key("K1", KeyStatus::Active, 1)]),
            &profile("K1"),
            &o,
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, Refusal::MissingYes { .. }));
    }

    #[test]
    fn steps_serialize_with_action_tag() {
        let p = user_plan(vec![key("K1", KeyStatus::Active, 100)], destructive()).unwrap();
        let v = serde_json::to_value(&p.steps).unwrap();
        assert_eq!(v[2]["Action"], "Deliver");
        assert_eq!(v[2]["Sink"], "s1");
        assert_eq!(v[4]["Action"], "DeactivateOldKey");
        assert_eq!(v[4]["AccessKeyId"], "K1");
        let back: Vec<Step> = serde_json::from_value(v).unwrap();
        assert_eq!(back, p.steps);
    }
}
