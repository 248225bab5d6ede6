//! The fleet policy in the settings file: `[policy]` defaults, `[[accounts]]` and
//! `[[rotations]]`, validated and resolved before any AWS call.
//!
//! The file tables ([`PolicyFile`], [`AccountFile`], [`RotationFile`]) are what serde
//! reads (`deny_unknown_fields` everywhere; values keep their byte spans so errors can
//! name the line). [`FleetPolicy::resolve`] turns them into a [`FleetPolicy`] whose
//! [`EffectiveRotation`]s carry every value resolved (block override > `[policy]` >
//! built-in default), or into every error found at once, each naming its key.
//!
//! Checks: ranges of every number, bad globs, undeclared sinks and accounts, duplicate
//! names, overlapping values (an account in both `include` and `exclude`, a user both
//! selected and excluded, a block that can never apply), and the relations between the
//! lifecycle numbers that keep the policy's promise "no Active key gets older than
//! `max_age_days`" (see `docs/fleet.md`).

use crate::fleet::select::{is_literal, AccountRef, Patterns, Selection};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use toml::Spanned;

/// A byte range in the settings file.
pub type Span = Range<usize>;

type Num = Option<Spanned<i64>>;

/// When the key a rotation replaced is deactivated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Retire {
    /// Once its consumers switched to the new key, at the latest `grace_days` after the
    /// rotation.
    #[default]
    WhenSwitched,
    /// Right after the new key is delivered and verified, in the rotation's own run.
    AfterVerify,
    /// Never: the old key stays Active (retiring it is someone else's job).
    Never,
}

impl Retire {
    pub fn as_str(&self) -> &'static str {
        match self {
            Retire::WhenSwitched => "when-switched",
            Retire::AfterVerify => "after-verify",
            Retire::Never => "never",
        }
    }
}

/// What tells keyturn that consumers switched (`retire = "when-switched"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UsageSource {
    /// IAM `GetAccessKeyLastUsed` of both keys.
    #[default]
    LastUsed,
    /// CloudTrail events of the old key's consumers, on top of IAM's last-used dates.
    Cloudtrail,
}

impl UsageSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            UsageSource::LastUsed => "last-used",
            UsageSource::Cloudtrail => "cloudtrail",
        }
    }
}

/// Defines a table struct holding the policy keys (and any extra fields), so that
/// `[policy]` and `[[rotations]]` cannot drift apart: any `[policy]` key may be
/// overridden per block.
macro_rules! with_policy_keys {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
            /// No Active key may get older than this many days.
            pub max_age_days: Num,
            /// Rotate when the newest Active key is this close to `max_age_days`.
            pub rotate_before_days: Num,
            pub retire: Option<Spanned<Retire>>,
            /// `when-switched`: retire at the latest this long after the rotation.
            pub grace_days: Num,
            /// Delete a key keyturn deactivated this long after; 0 = in the same run.
            pub delete_after_days: Num,
            /// May delete Inactive keys keyturn did not deactivate, to free a slot.
            pub delete_inactive: Option<Spanned<bool>>,
            /// Seconds to wait for a new key to verify with STS.
            pub verify_timeout: Num,
            /// Users in flight at once.
            pub concurrency: Num,
            /// Failure budget: start no new rotation after this many failures.
            pub max_failures: Num,
            /// Rotate this many due users first, one at a time; stop if one fails.
            pub canary: Num,
            pub usage: Option<Spanned<UsageSource>>,
            /// `usage = "cloudtrail"`: hours without an old-key consumer before retiring.
            pub quiet_hours: Num,
        }
    };
}

with_policy_keys! {
    /// `[policy]`: the defaults of every `[[rotations]]` block.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PolicyFile {}
}

with_policy_keys! {
    /// One `[[rotations]]` block: which users, where their keys go, and overrides of
    /// any `[policy]` key.
    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RotationFile {
        pub name: Spanned<String>,
        /// `[[accounts]]` names or 12-digit account ids; default: every account.
        pub accounts: Option<Spanned<Vec<Spanned<String>>>>,
        /// User name globs; default: every user.
        pub users: Option<Spanned<Vec<Spanned<String>>>>,
        pub path_prefix: Option<Spanned<String>>,
        #[serde(default)]
        pub tags: BTreeMap<Spanned<String>, Spanned<String>>,
        #[serde(default)]
        pub exclude: Vec<Spanned<String>>,
        /// Required: `[[sinks]]` names the new keys are delivered to.
        #[serde(default)]
        pub sinks: Option<Spanned<Vec<Spanned<String>>>>,
    }
}

impl RotationFile {
    /// The block's policy keys, as a `[policy]` table of overrides.
    fn overrides(&self) -> PolicyFile {
        PolicyFile {
            max_age_days: self.max_age_days.clone(),
            rotate_before_days: self.rotate_before_days.clone(),
            retire: self.retire.clone(),
            grace_days: self.grace_days.clone(),
            delete_after_days: self.delete_after_days.clone(),
            delete_inactive: self.delete_inactive.clone(),
            verify_timeout: self.verify_timeout.clone(),
            concurrency: self.concurrency.clone(),
            max_failures: self.max_failures.clone(),
            canary: self.canary.clone(),
            usage: self.usage.clone(),
            quiet_hours: self.quiet_hours.clone(),
        }
    }
}

/// One `[[accounts]]` entry: a name and exactly one way to reach the account(s).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountFile {
    pub name: Spanned<String>,
    pub profile: Option<Spanned<String>>,
    pub role_arn: Option<Spanned<String>>,
    pub external_id: Option<Spanned<String>>,
    pub organization: Option<Spanned<OrganizationFile>>,
}

/// `organization = { role_name, include, exclude }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationFile {
    pub role_name: Spanned<String>,
    #[serde(default)]
    pub include: Vec<Spanned<String>>,
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
}

/// How an `[[accounts]]` entry is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "Kind", rename_all = "kebab-case")]
pub enum Access {
    /// The profile's own credentials (its account is learned with STS).
    Profile { profile: String },
    /// STS `AssumeRole` with the default credential chain.
    Role {
        role_arn: String,
        external_id: Option<String>,
    },
    /// Every ACTIVE account of the caller's Organization (`include`: only these ids;
    /// `exclude`: never these), assuming `role_name` in each.
    Organization {
        role_name: String,
        include: Vec<String>,
        exclude: Vec<String>,
    },
}

/// A validated `[[accounts]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountSpec {
    pub name: String,
    pub access: Access,
}

impl AccountSpec {
    /// The account id when it is known without calling AWS (role ARNs).
    pub fn known_id(&self) -> Option<&str> {
        match &self.access {
            Access::Role { role_arn, .. } => role_arn.split(':').nth(4),
            _ => None,
        }
    }

    /// How the entry reaches its account(s), in words.
    pub fn describe(&self) -> String {
        match &self.access {
            Access::Profile { profile } => format!("the account of profile {profile}"),
            Access::Role {
                role_arn,
                external_id,
            } => format!(
                "account {} through role {role_arn}{}",
                self.known_id().unwrap_or("?"),
                if external_id.is_some() {
                    " (with an external id)"
                } else {
                    ""
                }
            ),
            Access::Organization {
                role_name,
                include,
                exclude,
            } => {
                let mut s = if include.is_empty() {
                    "every ACTIVE account of the Organization".to_string()
                } else {
                    format!(
                        "the Organization's ACTIVE account{} {}",
                        if include.len() == 1 { "" } else { "s" },
                        include.join(", ")
                    )
                };
                if !exclude.is_empty() {
                    s.push_str(&format!(" except {}", exclude.join(", ")));
                }
                s.push_str(&format!(", through role {role_name} in each"));
                s
            }
        }
    }
}

/// The lifecycle numbers the fleet planner decides by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    pub max_age_days: u32,
    pub rotate_before_days: u32,
    pub retire: Retire,
    pub grace_days: u32,
    pub delete_after_days: u32,
    pub delete_inactive: bool,
    pub usage: UsageSource,
    pub quiet_hours: u32,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            max_age_days: defaults::MAX_AGE_DAYS as u32,
            rotate_before_days: defaults::ROTATE_BEFORE_DAYS as u32,
            retire: Retire::WhenSwitched,
            grace_days: defaults::GRACE_DAYS as u32,
            delete_after_days: defaults::DELETE_AFTER_DAYS as u32,
            delete_inactive: false,
            usage: UsageSource::LastUsed,
            quiet_hours: defaults::QUIET_HOURS as u32,
        }
    }
}

impl Lifecycle {
    /// The newest Active key is rotated once it is this many whole days old.
    pub fn rotate_at_days(&self) -> u32 {
        self.max_age_days - self.rotate_before_days
    }
}

/// How a fleet run paces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub verify_timeout_secs: u64,
    pub concurrency: usize,
    pub max_failures: usize,
    pub canary: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            verify_timeout_secs: defaults::VERIFY_TIMEOUT as u64,
            concurrency: defaults::CONCURRENCY as usize,
            max_failures: defaults::MAX_FAILURES as usize,
            canary: defaults::CANARY as usize,
        }
    }
}

/// A `[[rotations]]` block with every value resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveRotation {
    pub name: String,
    /// Position in the file (0-based): the first block that selects a user applies.
    pub index: usize,
    pub selection: Selection,
    pub sinks: Vec<String>,
    pub lifecycle: Lifecycle,
    /// The block's own limits. The run-wide limits are [`FleetPolicy::limits`]; a block
    /// may only lower concurrency and the failure budget for its own users.
    pub limits: Limits,
}

/// The validated fleet policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetPolicy {
    /// Empty: the caller's own account.
    pub accounts: Vec<AccountSpec>,
    pub rotations: Vec<EffectiveRotation>,
    /// `[policy]` lifecycle (the default of every block).
    pub defaults: Lifecycle,
    /// Run-wide limits from `[policy]`.
    pub limits: Limits,
}

/// Built-in defaults and the accepted ranges of every number.
pub mod defaults {
    pub const MAX_AGE_DAYS: i64 = 90;
    pub const ROTATE_BEFORE_DAYS: i64 = 14;
    pub const GRACE_DAYS: i64 = 7;
    pub const DELETE_AFTER_DAYS: i64 = 7;
    pub const VERIFY_TIMEOUT: i64 = 60;
    pub const CONCURRENCY: i64 = 8;
    pub const MAX_FAILURES: i64 = 5;
    pub const CANARY: i64 = 1;
    pub const QUIET_HOURS: i64 = 24;

    pub const MAX_AGE_RANGE: (i64, i64) = (1, 36500);
    pub const ROTATE_BEFORE_RANGE: (i64, i64) = (0, 36499);
    /// At least 1: with 0 a second run right after a rotation would retire the old key.
    pub const GRACE_RANGE: (i64, i64) = (1, 3650);
    pub const DELETE_AFTER_RANGE: (i64, i64) = (0, 3650);
    pub const VERIFY_TIMEOUT_RANGE: (i64, i64) = (1, 3600);
    pub const CONCURRENCY_RANGE: (i64, i64) = (1, 64);
    pub const MAX_FAILURES_RANGE: (i64, i64) = (1, 100_000);
    pub const CANARY_RANGE: (i64, i64) = (0, 1000);
    /// At least IAM's last-used delay (4 h); at most CloudTrail's 90-day event history.
    pub const QUIET_HOURS_RANGE: (i64, i64) = (4, 2160);
}

/// One problem in the settings file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The key, as a path: `policy.max_age_days`, `rotations[1].sinks`, `accounts[0]`.
    pub key: String,
    /// Where in the file, when known.
    pub span: Option<Span>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    /// One line per error: `FILE:LINE: key: message` (`FILE: key: message` when the
    /// line is unknown). `text` is the file's content, for line numbers.
    pub fn render(&self, file: &str, text: Option<&str>) -> String {
        self.0
            .iter()
            .map(|e| match (text, &e.span) {
                (Some(t), Some(s)) => format!("{file}:{}: {e}", line_of(t, s.start)),
                _ => format!("{file}: {e}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

/// 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A resolved value and where it came from (for error messages and cross-checks).
#[derive(Debug, Clone)]
struct Val<T> {
    v: T,
    key: String,
    span: Option<Span>,
    /// Set in the table being checked (not inherited, not a default).
    own: bool,
}

impl<T: fmt::Display> Val<T> {
    fn show(&self) -> String {
        match (&self.span, self.own) {
            (None, _) => format!("{} (default {})", self.key_name(), self.v),
            (Some(_), true) => format!("{} = {}", self.key_name(), self.v),
            (Some(_), false) => format!("{} = {} (from {})", self.key_name(), self.v, self.key),
        }
    }

    fn key_name(&self) -> &str {
        self.key.rsplit('.').next().unwrap_or(&self.key)
    }
}

impl fmt::Display for Retire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for UsageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The policy keys with their origins.
#[derive(Debug, Clone)]
struct Keys {
    max_age_days: Val<i64>,
    rotate_before_days: Val<i64>,
    retire: Val<Retire>,
    grace_days: Val<i64>,
    delete_after_days: Val<i64>,
    delete_inactive: Val<bool>,
    verify_timeout: Val<i64>,
    concurrency: Val<i64>,
    max_failures: Val<i64>,
    canary: Val<i64>,
    usage: Val<UsageSource>,
    quiet_hours: Val<i64>,
}

impl Keys {
    fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            max_age_days: self.max_age_days.v as u32,
            rotate_before_days: self.rotate_before_days.v as u32,
            retire: self.retire.v,
            grace_days: self.grace_days.v as u32,
            delete_after_days: self.delete_after_days.v as u32,
            delete_inactive: self.delete_inactive.v,
            usage: self.usage.v,
            quiet_hours: self.quiet_hours.v as u32,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            verify_timeout_secs: self.verify_timeout.v as u64,
            concurrency: self.concurrency.v as usize,
            max_failures: self.max_failures.v as usize,
            canary: self.canary.v as usize,
        }
    }
}

#[derive(Default)]
struct Errors(Vec<PolicyError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, span: Option<Span>, message: impl Into<String>) {
        self.0.push(PolicyError {
            key: key.into(),
            span,
            message: message.into(),
        });
    }
}

/// Resolve the policy keys of `table` (under `prefix`) over `base` (`None`: the
/// built-in defaults). Out-of-range values are reported and replaced by the base value
/// so that the remaining checks still run.
fn resolve_keys(table: &PolicyFile, prefix: &str, base: Option<&Keys>, errs: &mut Errors) -> Keys {
    let num = |errs: &mut Errors,
               name: &str,
               v: &Num,
               inherited: Option<&Val<i64>>,
               default: i64,
               (lo, hi): (i64, i64)|
     -> Val<i64> {
        let fallback = || {
            inherited.cloned().unwrap_or(Val {
                v: default,
                key: format!("policy.{name}"),
                span: None,
                own: false,
            })
        };
        match v {
            None => Val {
                own: false,
                ..fallback()
            },
            Some(s) => {
                let key = format!("{prefix}.{name}");
                let x = *s.get_ref();
                if !(lo..=hi).contains(&x) {
                    errs.push(
                        &key,
                        Some(s.span()),
                        format!("{x} is out of range: expected {lo}-{hi}"),
                    );
                    return Val {
                        own: false,
                        ..fallback()
                    };
                }
                Val {
                    v: x,
                    key,
                    span: Some(s.span()),
                    own: true,
                }
            }
        }
    };
    fn pick<T: Clone>(
        prefix: &str,
        name: &str,
        v: &Option<Spanned<T>>,
        inherited: Option<&Val<T>>,
        default: T,
    ) -> Val<T> {
        match v {
            Some(s) => Val {
                v: s.get_ref().clone(),
                key: format!("{prefix}.{name}"),
                span: Some(s.span()),
                own: true,
            },
            None => inherited.cloned().map_or(
                Val {
                    v: default,
                    key: format!("policy.{name}"),
                    span: None,
                    own: false,
                },
                |b| Val { own: false, ..b },
            ),
        }
    }
    use defaults as d;
    Keys {
        max_age_days: num(
            errs,
            "max_age_days",
            &table.max_age_days,
            base.map(|b| &b.max_age_days),
            d::MAX_AGE_DAYS,
            d::MAX_AGE_RANGE,
        ),
        rotate_before_days: num(
            errs,
            "rotate_before_days",
            &table.rotate_before_days,
            base.map(|b| &b.rotate_before_days),
            d::ROTATE_BEFORE_DAYS,
            d::ROTATE_BEFORE_RANGE,
        ),
        retire: pick(
            prefix,
            "retire",
            &table.retire,
            base.map(|b| &b.retire),
            Retire::WhenSwitched,
        ),
        grace_days: num(
            errs,
            "grace_days",
            &table.grace_days,
            base.map(|b| &b.grace_days),
            d::GRACE_DAYS,
            d::GRACE_RANGE,
        ),
        delete_after_days: num(
            errs,
            "delete_after_days",
            &table.delete_after_days,
            base.map(|b| &b.delete_after_days),
            d::DELETE_AFTER_DAYS,
            d::DELETE_AFTER_RANGE,
        ),
        delete_inactive: pick(
            prefix,
            "delete_inactive",
            &table.delete_inactive,
            base.map(|b| &b.delete_inactive),
            false,
        ),
        verify_timeout: num(
            errs,
            "verify_timeout",
            &table.verify_timeout,
            base.map(|b| &b.verify_timeout),
            d::VERIFY_TIMEOUT,
            d::VERIFY_TIMEOUT_RANGE,
        ),
        concurrency: num(
            errs,
            "concurrency",
            &table.concurrency,
            base.map(|b| &b.concurrency),
            d::CONCURRENCY,
            d::CONCURRENCY_RANGE,
        ),
        max_failures: num(
            errs,
            "max_failures",
            &table.max_failures,
            base.map(|b| &b.max_failures),
            d::MAX_FAILURES,
            d::MAX_FAILURES_RANGE,
        ),
        canary: num(
            errs,
            "canary",
            &table.canary,
            base.map(|b| &b.canary),
            d::CANARY,
            d::CANARY_RANGE,
        ),
        usage: pick(
            prefix,
            "usage",
            &table.usage,
            base.map(|b| &b.usage),
            UsageSource::LastUsed,
        ),
        quiet_hours: num(
            errs,
            "quiet_hours",
            &table.quiet_hours,
            base.map(|b| &b.quiet_hours),
            d::QUIET_HOURS,
            d::QUIET_HOURS_RANGE,
        ),
    }
}

/// Where to report a broken relation between values: the first value set in the table
/// being checked. `None` when every value is inherited: a block inheriting a broken
/// relation from `[policy]` is not reported again (`[policy]` was).
fn blame(vals: &[(&str, Option<&Span>, bool)]) -> Option<(String, Option<Span>)> {
    vals.iter()
        .find(|(_, _, own)| *own)
        .map(|(k, s, _)| (k.to_string(), s.cloned()))
}

/// The relations between lifecycle numbers.
fn cross_check(k: &Keys, run_wide: Option<&Keys>, errs: &mut Errors) {
    let tag = |v: &Val<i64>| (v.key.clone(), v.span.clone(), v.own);
    let mut check = |vals: Vec<(String, Option<Span>, bool)>, ok: bool, msg: String| {
        if ok {
            return;
        }
        let refs: Vec<(&str, Option<&Span>, bool)> = vals
            .iter()
            .map(|(k, s, o)| (k.as_str(), s.as_ref(), *o))
            .collect();
        if let Some((key, span)) = blame(&refs) {
            errs.push(key, span, msg);
        }
    };
    let (max_age, before) = (&k.max_age_days, &k.rotate_before_days);
    check(
        vec![tag(before), tag(max_age)],
        before.v < max_age.v,
        format!(
            "{} must be less than {}: keys are rotated max_age_days - rotate_before_days days after they were created",
            before.show(),
            max_age.show()
        ),
    );
    let interval = max_age.v - before.v;
    let retire_tag = (k.retire.key.clone(), k.retire.span.clone(), k.retire.own);
    if k.retire.v == Retire::WhenSwitched && before.v < max_age.v {
        check(
            vec![tag(&k.grace_days), tag(before), retire_tag.clone()],
            k.grace_days.v <= before.v,
            format!(
                "{} is longer than {}: a key is rotated rotate_before_days before it reaches max_age_days and stays Active up to grace_days longer, so it would outlive {}",
                k.grace_days.show(),
                before.show(),
                max_age.show()
            ),
        );
    }
    if k.retire.v != Retire::Never && before.v < max_age.v {
        let grace = if k.retire.v == Retire::WhenSwitched {
            k.grace_days.v
        } else {
            0
        };
        let mut vals = vec![tag(&k.delete_after_days)];
        if k.retire.v == Retire::WhenSwitched {
            vals.push(tag(&k.grace_days));
        }
        vals.extend([tag(max_age), tag(before), retire_tag.clone()]);
        check(
            vals,
            grace + k.delete_after_days.v < interval,
            format!(
                "{}{} must end before the next rotation, which comes every {interval} days (max_age_days - rotate_before_days): the old key would not be deleted before its successor is replaced",
                k.delete_after_days.show(),
                if k.retire.v == Retire::WhenSwitched {
                    format!(" plus {}", k.grace_days.show())
                } else {
                    String::new()
                }
            ),
        );
    }
    if k.usage.v == UsageSource::Cloudtrail && k.retire.v == Retire::WhenSwitched {
        check(
            vec![
                tag(&k.quiet_hours),
                (k.usage.key.clone(), k.usage.span.clone(), k.usage.own),
                tag(&k.grace_days),
            ],
            k.quiet_hours.v < k.grace_days.v * 24,
            format!(
                "{} is not shorter than {} ({} h): every retirement would be forced",
                k.quiet_hours.show(),
                k.grace_days.show(),
                k.grace_days.v * 24
            ),
        );
    }
    if let Some(run) = run_wide {
        for (mine, theirs) in [
            (&k.concurrency, &run.concurrency),
            (&k.max_failures, &run.max_failures),
        ] {
            if mine.own && mine.v > theirs.v {
                errs.push(
                    &mine.key,
                    mine.span.clone(),
                    format!(
                        "{} exceeds the run-wide {}: a block can only lower it for its own users",
                        mine.v,
                        theirs.show()
                    ),
                );
            }
        }
    }
}

use crate::access::{is_role_arn, is_role_name as valid_role_name};

/// A 12-digit AWS account id.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `[[accounts]]` names: used in `--only ACCOUNT:USER` and reports.
fn valid_account_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// IAM paths (see [`crate::validate::is_path`]).
fn valid_path_prefix(p: &str) -> bool {
    crate::validate::is_path(p)
}

/// STS external ids: 2-1224 of `\w+=,.@:/-`.
fn valid_external_id(s: &str) -> bool {
    (2..=1224).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c))
}

impl FleetPolicy {
    /// Validate and resolve the fleet tables. `sinks` are the names declared in
    /// `[[sinks]]`. Returns every error found, in file order.
    pub fn resolve(
        policy: &PolicyFile,
        accounts: &[Spanned<AccountFile>],
        rotations: &[Spanned<RotationFile>],
        sinks: &[&str],
    ) -> Result<FleetPolicy, PolicyErrors> {
        let mut errs = Errors::default();
        let base = resolve_keys(policy, "policy", None, &mut errs);
        cross_check(&base, None, &mut errs);
        let accounts = resolve_accounts(accounts, &mut errs);
        let mut out = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut spans = Vec::new();
        for (i, r) in rotations.iter().enumerate() {
            let rf = r.get_ref();
            let p = format!("rotations[{i}]");
            let name = rf.name.get_ref();
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                errs.push(
                    format!("{p}.name"),
                    Some(rf.name.span()),
                    format!("{name:?}: a rotation needs a name without control characters"),
                );
            } else if let Some(j) = names.insert(name.clone(), i) {
                errs.push(
                    format!("{p}.name"),
                    Some(rf.name.span()),
                    format!("{name:?} is already the name of rotations[{j}]"),
                );
            }
            let selection = resolve_selection(rf, &p, &accounts, &mut errs);
            let sinks = resolve_sinks(rf, &p, r.span(), sinks, &mut errs);
            let keys = resolve_keys(&rf.overrides(), &p, Some(&base), &mut errs);
            cross_check(&keys, Some(&base), &mut errs);
            spans.push(rf.name.span());
            out.push(EffectiveRotation {
                name: name.clone(),
                index: i,
                selection,
                sinks,
                lifecycle: keys.lifecycle(),
                limits: keys.limits(),
            });
        }
        check_shadowing(&out, &spans, &mut errs);
        let mut list = errs.0;
        // File order (errors without a span last), stable for equal positions.
        list.sort_by_key(|e| e.span.as_ref().map_or(usize::MAX, |s| s.start));
        if !list.is_empty() {
            return Err(PolicyErrors(list));
        }
        Ok(FleetPolicy {
            accounts: accounts.into_iter().map(|(spec, _)| spec).collect(),
            rotations: out,
            defaults: base.lifecycle(),
            limits: base.limits(),
        })
    }

    /// The `[[accounts]]` entry named `name`.
    pub fn account(&self, name: &str) -> Option<&AccountSpec> {
        self.accounts.iter().find(|a| a.name == name)
    }
}

/// Per entry: the spec and the span of its name (for later references).
fn resolve_accounts(
    accounts: &[Spanned<AccountFile>],
    errs: &mut Errors,
) -> Vec<(AccountSpec, Span)> {
    let mut out = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut org_at: Option<usize> = None;
    let mut role_ids: HashMap<String, usize> = HashMap::new();
    for (i, a) in accounts.iter().enumerate() {
        let af = a.get_ref();
        let p = format!("accounts[{i}]");
        let name = af.name.get_ref();
        if !valid_account_name(name) || is_account_id(name) {
            errs.push(
                format!("{p}.name"),
                Some(af.name.span()),
                format!("{name:?}: an account name is 1-64 of A-Z a-z 0-9 _ . - and not a 12-digit number (numbers select account ids)"),
            );
        } else if let Some(j) = names.insert(name.clone(), i) {
            errs.push(
                format!("{p}.name"),
                Some(af.name.span()),
                format!("{name:?} is already the name of accounts[{j}]"),
            );
        }
        let set: Vec<&str> = [
            af.profile.as_ref().map(|_| "profile"),
            af.role_arn.as_ref().map(|_| "role_arn"),
            af.organization.as_ref().map(|_| "organization"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if set.len() != 1 {
            errs.push(
                p.clone(),
                Some(a.span()),
                if set.is_empty() {
                    "set one of profile, role_arn or organization".to_string()
                } else {
                    format!("{} exclude each other: set exactly one", set.join(" and "))
                },
            );
        }
        if let (Some(x), None) = (&af.external_id, &af.role_arn) {
            errs.push(
                format!("{p}.external_id"),
                Some(x.span()),
                "external_id only applies with role_arn",
            );
        }
        if let Some(x) = af
            .external_id
            .as_ref()
            .filter(|x| !valid_external_id(x.get_ref()))
        {
            errs.push(
                format!("{p}.external_id"),
                Some(x.span()),
                "expected 2-1224 of A-Z a-z 0-9 _ + = , . @ : / -",
            );
        }
        let mut access = None;
        if let Some(pr) = &af.profile {
            if !crate::validate::is_profile_name(pr.get_ref()) {
                errs.push(
                    format!("{p}.profile"),
                    Some(pr.span()),
                    if pr.get_ref().trim().is_empty() {
                        "a profile name must not be empty"
                    } else {
                        crate::validate::PROFILE_RULE
                    },
                );
            }
            access = Some(Access::Profile {
                profile: pr.get_ref().clone(),
            });
        }
        if let Some(arn) = &af.role_arn {
            let v = arn.get_ref();
            if !is_role_arn(v) {
                errs.push(
                    format!("{p}.role_arn"),
                    Some(arn.span()),
                    format!(
                        "{v:?}: expected an IAM role ARN like arn:aws:iam::123456789012:role/NAME"
                    ),
                );
            } else if let Some(id) = v.split(':').nth(4) {
                if let Some(j) = role_ids.insert(id.to_string(), i) {
                    errs.push(
                        format!("{p}.role_arn"),
                        Some(arn.span()),
                        format!("account {id} is already reached by accounts[{j}]: list each account once"),
                    );
                }
            }
            access = access.or(Some(Access::Role {
                role_arn: v.clone(),
                external_id: af.external_id.as_ref().map(|x| x.get_ref().clone()),
            }));
        }
        if let Some(org) = &af.organization {
            let o = org.get_ref();
            if let Some(j) = org_at.replace(i) {
                errs.push(
                    format!("{p}.organization"),
                    Some(org.span()),
                    format!("accounts[{j}] already lists the Organization: use one entry, with include/exclude"),
                );
            }
            if !valid_role_name(o.role_name.get_ref()) {
                errs.push(
                    format!("{p}.organization.role_name"),
                    Some(o.role_name.span()),
                    format!(
                        "{:?}: expected an IAM role name (1-64 of A-Z a-z 0-9 + = , . @ _ -)",
                        o.role_name.get_ref()
                    ),
                );
            }
            let include = id_list(&o.include, &format!("{p}.organization.include"), errs);
            let exclude = id_list(&o.exclude, &format!("{p}.organization.exclude"), errs);
            for x in &o.exclude {
                if include.contains(x.get_ref()) {
                    errs.push(
                        format!("{p}.organization.exclude"),
                        Some(x.span()),
                        format!("account {} is in both include and exclude", x.get_ref()),
                    );
                }
            }
            access = access.or(Some(Access::Organization {
                role_name: o.role_name.get_ref().clone(),
                include,
                exclude,
            }));
        }
        if let Some(access) = access {
            out.push((
                AccountSpec {
                    name: name.clone(),
                    access,
                },
                af.name.span(),
            ));
        }
    }
    // An account reached by its own role_arn entry must not also be listed by the
    // Organization entry's include (it would be rotated twice).
    for (spec, _) in &out {
        if let Access::Organization { include, .. } = &spec.access {
            for (other, span) in &out {
                if let Some(id) = other
                    .known_id()
                    .filter(|id| include.iter().any(|x| x == id))
                {
                    errs.push(
                        format!("accounts[{}].role_arn", out.iter().position(|(s, _)| s == other).unwrap_or(0)),
                        Some(span.clone()),
                        format!("account {id} is also in {}'s organization.include: list each account once", spec.name),
                    );
                }
            }
        }
    }
    out
}

fn id_list(list: &[Spanned<String>], key: &str, errs: &mut Errors) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for x in list {
        let v = x.get_ref();
        if !is_account_id(v) {
            errs.push(
                key,
                Some(x.span()),
                format!("{v:?}: expected a 12-digit account id"),
            );
        } else if !seen.insert(v.clone()) {
            errs.push(key, Some(x.span()), format!("account {v} is listed twice"));
        } else {
            out.push(v.clone());
        }
    }
    out
}

fn resolve_selection(
    rf: &RotationFile,
    p: &str,
    accounts: &[(AccountSpec, Span)],
    errs: &mut Errors,
) -> Selection {
    let mut sel = Selection::default();
    if let Some(list) = &rf.accounts {
        let key = format!("{p}.accounts");
        if list.get_ref().is_empty() {
            errs.push(
                &key,
                Some(list.span()),
                "[] selects no account: omit accounts to select every account",
            );
        }
        let mut refs = Vec::new();
        let mut seen = BTreeSet::new();
        for a in list.get_ref() {
            let v = a.get_ref();
            if !seen.insert(v.clone()) {
                errs.push(&key, Some(a.span()), format!("{v:?} is listed twice"));
                continue;
            }
            if is_account_id(v) {
                let excluded_by = accounts.iter().find_map(|(s, _)| match &s.access {
                    Access::Organization { exclude, .. } if exclude.contains(v) => {
                        Some(s.name.clone())
                    }
                    _ => None,
                });
                let own_entry = accounts.iter().any(|(s, _)| s.known_id() == Some(v));
                if let (Some(org), false) = (excluded_by, own_entry) {
                    errs.push(
                        &key,
                        Some(a.span()),
                        format!("account {v} is excluded by [[accounts]] {org}'s organization.exclude, so this block can never select it"),
                    );
                }
                refs.push(AccountRef::Id(v.clone()));
            } else if accounts.iter().any(|(s, _)| &s.name == v) {
                refs.push(AccountRef::Name(v.clone()));
            } else {
                let declared: Vec<&str> = accounts.iter().map(|(s, _)| s.name.as_str()).collect();
                errs.push(
                    &key,
                    Some(a.span()),
                    if declared.is_empty() {
                        format!("{v:?} is not declared: there are no [[accounts]] entries (the caller's own account is used); name a 12-digit account id or declare the account")
                    } else {
                        format!(
                            "{v:?} is not declared in [[accounts]] (declared: {}); a 12-digit account id also works",
                            declared.join(", ")
                        )
                    },
                );
            }
        }
        sel.accounts = Some(refs);
    }
    if let Some(list) = &rf.users {
        let key = format!("{p}.users");
        if list.get_ref().is_empty() {
            errs.push(
                &key,
                Some(list.span()),
                "[] selects no user: omit users to select every user",
            );
        }
        sel.users = Some(globs(list.get_ref(), &key, errs));
    }
    if !rf.exclude.is_empty() {
        let key = format!("{p}.exclude");
        let ex = globs(&rf.exclude, &key, errs);
        if let Some(list) = &rf.users {
            for u in list.get_ref() {
                let v = u.get_ref();
                if rf.exclude.iter().any(|x| x.get_ref() == v) {
                    errs.push(
                        format!("{p}.users"),
                        Some(u.span()),
                        format!("{v:?} is also in exclude, so it selects nobody"),
                    );
                } else if is_literal(v) && ex.matches(v) {
                    errs.push(
                        format!("{p}.users"),
                        Some(u.span()),
                        format!("user {v:?} is excluded by exclude, so it selects nobody"),
                    );
                }
            }
        }
        sel.exclude = Some(ex);
    }
    if let Some(pp) = &rf.path_prefix {
        let v = pp.get_ref();
        if !valid_path_prefix(v) {
            errs.push(
                format!("{p}.path_prefix"),
                Some(pp.span()),
                format!("{v:?}: an IAM path starts and ends with / (e.g. / or /bots/)"),
            );
        }
        sel.path_prefix = Some(v.clone()).filter(|v| v != "/");
    }
    let mut lower = BTreeMap::new();
    for (k, v) in &rf.tags {
        let key = format!("{p}.tags");
        let name = k.get_ref();
        if name.is_empty() || name.chars().count() > 128 {
            errs.push(
                &key,
                Some(k.span()),
                format!("{name:?}: a tag key is 1-128 characters"),
            );
        }
        if v.get_ref().chars().count() > 256 {
            errs.push(
                &key,
                Some(v.span()),
                "a tag value is at most 256 characters",
            );
        }
        if let Some(prev) = lower.insert(name.to_lowercase(), name.clone()) {
            errs.push(
                &key,
                Some(k.span()),
                format!(
                    "{name:?} and {prev:?} are the same IAM tag key (IAM tag keys ignore case)"
                ),
            );
        }
        sel.tags.insert(name.clone(), v.get_ref().clone());
    }
    sel
}

fn globs(list: &[Spanned<String>], key: &str, errs: &mut Errors) -> Patterns {
    let mut ok = Vec::new();
    let mut seen = BTreeSet::new();
    for g in list {
        let v = g.get_ref();
        if v.is_empty() {
            errs.push(key, Some(g.span()), "an empty pattern matches no user");
            continue;
        }
        if !seen.insert(v.clone()) {
            errs.push(key, Some(g.span()), format!("{v:?} is listed twice"));
            continue;
        }
        match Patterns::compile_one(v) {
            Ok(()) => ok.push(v.clone()),
            Err(e) => errs.push(
                key,
                Some(g.span()),
                format!("{v:?} is not a valid glob: {e}"),
            ),
        }
    }
    Patterns::new(ok).expect("each pattern compiled on its own")
}

fn resolve_sinks(
    rf: &RotationFile,
    p: &str,
    block: Span,
    declared: &[&str],
    errs: &mut Errors,
) -> Vec<String> {
    let key = format!("{p}.sinks");
    let Some(list) = rf.sinks.as_ref().filter(|l| !l.get_ref().is_empty()) else {
        errs.push(
            key,
            Some(rf.sinks.as_ref().map_or(block, |l| l.span())),
            "required: name at least one [[sinks]] entry the new keys are delivered to (a fleet run never prints secrets)",
        );
        return vec![];
    };
    let mut out = Vec::new();
    for s in list.get_ref() {
        let v = s.get_ref();
        if out.contains(v) {
            errs.push(&key, Some(s.span()), format!("{v:?} is listed twice"));
        } else if !declared.contains(&v.as_str()) {
            errs.push(
                &key,
                Some(s.span()),
                if declared.is_empty() {
                    format!("{v:?} is not declared: there are no [[sinks]] entries")
                } else {
                    format!(
                        "{v:?} is not declared in [[sinks]] (declared: {})",
                        declared.join(", ")
                    )
                },
            );
        } else {
            out.push(v.clone());
        }
    }
    out
}

/// A block that can never apply because an earlier block selects everything it would.
fn check_shadowing(rotations: &[EffectiveRotation], spans: &[Span], errs: &mut Errors) {
    for (j, later) in rotations.iter().enumerate() {
        for earlier in &rotations[..j] {
            let why = if earlier.selection.selects_everything() {
                "selects every user"
            } else if earlier.selection == later.selection {
                "selects exactly the same users"
            } else {
                continue;
            };
            errs.push(
                format!("rotations[{j}]"),
                Some(spans[j].clone()),
                format!(
                    "{:?} never applies: the earlier block rotations[{}] ({:?}) {why}, and the first block that selects a user applies to it",
                    later.name, earlier.index, earlier.name
                ),
            );
            break;
        }
    }
}

impl EffectiveRotation {
    /// What the block selects and does, in words (`keyturn config check`).
    pub fn describe(&self, policy: &FleetPolicy) -> Vec<String> {
        let l = &self.lifecycle;
        let mut lines = vec![format!(
            "selects: {}",
            self.selection.describe(&policy.accounts)
        )];
        lines.push(format!(
            "rotates: when the newest Active key is {} days old (max_age_days {} - rotate_before_days {}), or the user has no key",
            l.rotate_at_days(),
            l.max_age_days,
            l.rotate_before_days
        ));
        lines.push(match l.retire {
            Retire::WhenSwitched => format!(
                "retires the old key: once its consumers switched to the new key ({}), at the latest {} day{} after the rotation",
                match l.usage {
                    UsageSource::LastUsed => "IAM last-used dates".to_string(),
                    UsageSource::Cloudtrail => format!(
                        "no consumer in CloudTrail for {} h and IAM last-used dates",
                        l.quiet_hours
                    ),
                },
                l.grace_days,
                if l.grace_days == 1 { "" } else { "s" }
            ),
            Retire::AfterVerify => {
                "retires the old key: right after the new key is delivered and verified".into()
            }
            Retire::Never => "retires the old key: never (it stays Active)".into(),
        });
        lines.push(format!(
            "deletes: keys keyturn deactivated, {}; Inactive keys keyturn did not deactivate {}",
            if l.delete_after_days == 0 {
                "in the same run".to_string()
            } else {
                format!(
                    "{} day{} after",
                    l.delete_after_days,
                    if l.delete_after_days == 1 { "" } else { "s" }
                )
            },
            if l.delete_inactive {
                "are deleted when their slot is needed (delete_inactive)"
            } else {
                "are never deleted"
            }
        ));
        lines.push(format!("delivers to: {}", self.sinks.join(", ")));
        let m = &self.limits;
        lines.push(format!(
            "runs: verify_timeout {} s, concurrency {}, max_failures {}, canary {}",
            m.verify_timeout_secs, m.concurrency, m.max_failures, m.canary
        ));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Doc {
        #[serde(default)]
        policy: PolicyFile,
        #[serde(default)]
        accounts: Vec<Spanned<AccountFile>>,
        #[serde(default)]
        rotations: Vec<Spanned<RotationFile>>,
    }

    const SINKS: &[&str] = &["ci-aws", "vault"];

    fn parse(text: &str) -> Result<FleetPolicy, PolicyErrors> {
        let d: Doc = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        FleetPolicy::resolve(&d.policy, &d.accounts, &d.rotations, SINKS)
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .expect_err("expected errors")
            .render("k.toml", Some(text))
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn one_error(text: &str) -> String {
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:#?}");
        e.into_iter().next().unwrap()
    }

    const ROT: &str = "[[rotations]]\nname = \"r\"\nsinks = [\"ci-aws\"]\n";

    #[test]
    fn defaults_apply_without_policy() {
        let p = parse(ROT).unwrap();
        assert_eq!(p.defaults, Lifecycle::default());
        assert_eq!(p.limits, Limits::default());
        let r = &p.rotations[0];
        assert_eq!(r.lifecycle, Lifecycle::default());
        assert_eq!(r.lifecycle.rotate_at_days(), 76);
        assert_eq!(r.sinks, ["ci-aws"]);
        assert!(r.selection.selects_everything());
        assert!(p.accounts.is_empty());
    }

    #[test]
    fn block_overrides_beat_policy_beats_default() {
        let p = parse(
            "[policy]\nmax_age_days = 60\ngrace_days = 3\nretire = \"after-verify\"\nconcurrency = 16\n\
             [[rotations]]\nname = \"a\"\nusers = [\"a-*\"]\nsinks = [\"ci-aws\"]\nmax_age_days = 30\nconcurrency = 4\n\
             [[rotations]]\nname = \"b\"\nsinks = [\"vault\"]\nretire = \"never\"\n",
        )
        .unwrap();
        let (a, b) = (&p.rotations[0], &p.rotations[1]);
        assert_eq!(a.lifecycle.max_age_days, 30);
        assert_eq!(a.lifecycle.grace_days, 3);
        assert_eq!(a.lifecycle.retire, Retire::AfterVerify);
        assert_eq!(a.lifecycle.rotate_before_days, 14);
        assert_eq!(a.limits.concurrency, 4);
        assert_eq!(b.lifecycle.max_age_days, 60);
        assert_eq!(b.lifecycle.retire, Retire::Never);
        assert_eq!(b.limits.concurrency, 16);
        assert_eq!(p.limits.concurrency, 16);
        assert_eq!(b.index, 1);
    }

    #[test]
    fn every_policy_key_can_be_overridden_per_block() {
        // The macro guarantees it; this pins the list the docs promise.
        for kv in [
            "max_age_days = 80",
            "rotate_before_days = 10",
            "retire = \"never\"",
            "grace_days = 2",
            "delete_after_days = 0",
            "delete_inactive = true",
            "verify_timeout = 30",
            "concurrency = 2",
            "max_failures = 1",
            "canary = 0",
            "usage = \"cloudtrail\"",
            "quiet_hours = 12",
        ] {
            parse(&format!("[policy]\n{kv}\n{ROT}")).unwrap_or_else(|e| panic!("{kv}: {e}"));
            parse(&format!("{ROT}{kv}\n")).unwrap_or_else(|e| panic!("{kv}: {e}"));
        }
    }

    #[test]
    fn numbers_are_range_checked_with_key_and_line() {
        for (kv, key) in [
            ("max_age_days = 0", "max_age_days"),
            ("max_age_days = 36501", "max_age_days"),
            ("rotate_before_days = -1", "rotate_before_days"),
            ("grace_days = 0", "grace_days"),
            ("delete_after_days = 5000", "delete_after_days"),
            ("verify_timeout = 0", "verify_timeout"),
            ("verify_timeout = 3601", "verify_timeout"),
            ("concurrency = 0", "concurrency"),
            ("concurrency = 65", "concurrency"),
            ("max_failures = 0", "max_failures"),
            ("canary = -1", "canary"),
            ("canary = 1001", "canary"),
            ("quiet_hours = 3", "quiet_hours"),
            ("quiet_hours = 2161", "quiet_hours"),
        ] {
            let e = one_error(&format!("[policy]\n{kv}\n{ROT}"));
            assert!(
                e.starts_with(&format!("k.toml:2: policy.{key}: ")) && e.contains("out of range"),
                "{kv}: {e}"
            );
            let e = one_error(&format!("{ROT}{kv}\n"));
            assert!(
                e.starts_with(&format!("k.toml:4: rotations[0].{key}: ")),
                "{kv}: {e}"
            );
        }
    }

    #[test]
    fn verify_timeout_bounds_are_accepted() {
        for v in [1, 3600] {
            let p = parse(&format!("[policy]\nverify_timeout = {v}\n{ROT}")).unwrap();
            assert_eq!(p.limits.verify_timeout_secs, v);
        }
    }

    #[test]
    fn rotate_before_must_be_less_than_max_age() {
        let e = one_error(&format!(
            "[policy]\nmax_age_days = 30\nrotate_before_days = 30\n{ROT}"
        ));
        assert!(e.starts_with("k.toml:3: policy.rotate_before_days: rotate_before_days = 30 must be less than max_age_days = 30"), "{e}");
        // A block override breaking it is reported at the block, once.
        let e = one_error(&format!(
            "[policy]\nrotate_before_days = 14\n{ROT}max_age_days = 10\n"
        ));
        assert!(
            e.starts_with("k.toml:6: rotations[0].max_age_days:")
                && e.contains("rotate_before_days = 14 (from policy.rotate_before_days)"),
            "{e}"
        );
    }

    #[test]
    fn policy_errors_are_not_repeated_per_block() {
        let e = errors(
            "[policy]\nmax_age_days = 10\n[[rotations]]\nname = \"r\"\nusers = [\"a\"]\nsinks = [\"ci-aws\"]\n\
             [[rotations]]\nname = \"s\"\nsinks = [\"vault\"]\n",
        );
        // rotate_before_days (default 14) >= 10: one error at [policy], none per block.
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].contains("policy.max_age_days") && e[0].contains("(default 14)"),
            "{e:?}"
        );
    }

    #[test]
    fn grace_must_fit_before_max_age() {
        let e = one_error(&format!("[policy]\ngrace_days = 15\n{ROT}"));
        assert!(
            e.starts_with("k.toml:2: policy.grace_days: grace_days = 15 is longer than rotate_before_days (default 14)"),
            "{e}"
        );
        // Not a concern when nothing waits for consumers.
        parse(&format!(
            "[policy]\ngrace_days = 15\nretire = \"after-verify\"\n{ROT}"
        ))
        .unwrap();
        parse(&format!(
            "[policy]\ngrace_days = 15\nretire = \"never\"\n{ROT}"
        ))
        .unwrap();
    }

    #[test]
    fn deletion_must_happen_before_the_next_rotation() {
        // Interval 76: grace 7 + delete 69 = 76 is too late; 68 is fine.
        let e = one_error(&format!("[policy]\ndelete_after_days = 69\n{ROT}"));
        assert!(
            e.contains("policy.delete_after_days") && e.contains("every 76 days"),
            "{e}"
        );
        parse(&format!("[policy]\ndelete_after_days = 68\n{ROT}")).unwrap();
        // after-verify has no grace period.
        parse(&format!(
            "[policy]\ndelete_after_days = 75\nretire = \"after-verify\"\n{ROT}"
        ))
        .unwrap();
        parse(&format!(
            "[policy]\ndelete_after_days = 2000\nretire = \"never\"\n{ROT}"
        ))
        .unwrap();
    }

    #[test]
    fn cloudtrail_quiet_hours_must_be_shorter_than_grace() {
        let e = one_error(&format!(
            "[policy]\nusage = \"cloudtrail\"\nquiet_hours = 168\n{ROT}"
        ));
        assert!(
            e.contains("quiet_hours = 168 is not shorter than grace_days (default 7) (168 h)"),
            "{e}"
        );
        let p = parse(&format!(
            "[policy]\nusage = \"cloudtrail\"\nquiet_hours = 167\n{ROT}"
        ))
        .unwrap();
        assert_eq!(p.rotations[0].lifecycle.usage, UsageSource::Cloudtrail);
        assert_eq!(p.rotations[0].lifecycle.quiet_hours, 167);
        // Without cloudtrail, quiet_hours is unused and not related to grace.
        parse(&format!("[policy]\nquiet_hours = 500\n{ROT}")).unwrap();
    }

    #[test]
    fn bad_enum_values_are_toml_errors_with_a_span() {
        let text = format!("[policy]\nretire = \"sometimes\"\n{ROT}");
        let e = toml::from_str::<Doc>(&text).unwrap_err();
        assert!(e.message().contains("when-switched"), "{}", e.message());
        assert_eq!(line_of(&text, e.span().unwrap().start), 2);
        let e = toml::from_str::<Doc>("[policy]\nusage = \"guess\"\n").unwrap_err();
        assert!(e.message().contains("cloudtrail"));
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        for text in [
            "[policy]\nmax_age = 5\n",
            "[[rotations]]\nname = \"r\"\nsinks = [\"ci-aws\"]\nuser = [\"x\"]\n",
            "[[accounts]]\nname = \"a\"\nprofile = \"p\"\nregion = \"x\"\n",
            "[[accounts]]\nname = \"a\"\norganization = { role_name = \"R\", excluded = [] }\n",
        ] {
            let e = toml::from_str::<Doc>(text).unwrap_err();
            assert!(
                e.message().contains("unknown field"),
                "{text}: {}",
                e.message()
            );
            assert!(e.span().is_some());
        }
    }

    #[test]
    fn sinks_are_required_and_declared() {
        let e = one_error("[[rotations]]\nname = \"r\"\n");
        assert!(
            e.starts_with("k.toml:1: rotations[0].sinks: required"),
            "{e}"
        );
        let e = one_error("[[rotations]]\nname = \"r\"\nsinks = []\n");
        assert!(
            e.starts_with("k.toml:3: rotations[0].sinks: required"),
            "{e}"
        );
        let e = one_error("[[rotations]]\nname = \"r\"\nsinks = [\"ci-aws\", \"nope\"]\n");
        assert!(
            e.starts_with("k.toml:3: rotations[0].sinks: \"nope\" is not declared in [[sinks]] (declared: ci-aws, vault)"),
            "{e}"
        );
        let e = one_error("[[rotations]]\nname = \"r\"\nsinks = [\"vault\", \"vault\"]\n");
        assert!(e.contains("listed twice"), "{e}");
        let d: Doc = toml::from_str(ROT).unwrap();
        let e = FleetPolicy::resolve(&d.policy, &d.accounts, &d.rotations, &[]).unwrap_err();
        assert!(
            e.to_string().contains("there are no [[sinks]] entries"),
            "{e}"
        );
    }

    #[test]
    fn rotation_names_are_unique_and_present() {
        let e = one_error(&format!("{ROT}users = [\"a\"]\n{ROT}"));
        assert!(
            e.starts_with("k.toml:6: rotations[1].name: \"r\" is already the name of rotations[0]"),
            "{e}"
        );
        let e = one_error("[[rotations]]\nname = \" \"\nsinks = [\"ci-aws\"]\n");
        assert!(e.contains("rotations[0].name"), "{e}");
        let e = toml::from_str::<Doc>("[[rotations]]\nsinks = [\"ci-aws\"]\n").unwrap_err();
        assert!(e.message().contains("missing field `name`"));
    }

    #[test]
    fn bad_globs_name_the_pattern() {
        let e = one_error(
            "[[rotations]]\nname = \"r\"\nsinks = [\"ci-aws\"]\nusers = [\"ok-*\", \"ci-[\"]\n",
        );
        assert!(
            e.starts_with("k.toml:4: rotations[0].users: \"ci-[\" is not a valid glob"),
            "{e}"
        );
        let e =
            one_error("[[rotations]]\nname = \"r\"\nsinks = [\"ci-aws\"]\nexclude = [\"{a,b\"]\n");
        assert!(
            e.starts_with("k.toml:4: rotations[0].exclude: \"{a,b\" is not a valid glob"),
            "{e}"
        );
        let e = one_error("[[rotations]]\nname = \"r\"\nsinks = [\"ci-aws\"]\nusers = []\n");
        assert!(e.contains("selects no user"), "{e}");
        let e = one_error("[[rotations]]\nname = \"r\"\nsinks = [\"ci-aws\"]\nusers = [\"\"]\n");
        assert!(e.contains("empty pattern"), "{e}");
    }

    #[test]
    fn users_that_are_also_excluded_are_overlaps() {
        let e = one_error(&format!(
            "{ROT}users = [\"ci-*\", \"x\"]\nexclude = [\"ci-*\"]\n"
        ));
        assert!(
            e.starts_with("k.toml:4: rotations[0].users: \"ci-*\" is also in exclude"),
            "{e}"
        );
        let e = one_error(&format!(
            "{ROT}users = [\"deploy-bot\"]\nexclude = [\"DEPLOY-*\"]\n"
        ));
        assert!(
            e.contains("user \"deploy-bot\" is excluded by exclude"),
            "{e}"
        );
        // A glob partly excluded is fine.
        parse(&format!(
            "{ROT}users = [\"ci-*\"]\nexclude = [\"ci-legacy-*\"]\n"
        ))
        .unwrap();
    }

    #[test]
    fn path_prefix_and_tags_are_checked() {
        for bad in ["bots/", "/bots", "/b ots/", ""] {
            let e = one_error(&format!("{ROT}path_prefix = {bad:?}\n"));
            assert!(e.starts_with("k.toml:4: rotations[0].path_prefix:"), "{e}");
        }
        let p = parse(&format!("{ROT}path_prefix = \"/bots/\"\n")).unwrap();
        assert_eq!(
            p.rotations[0].selection.path_prefix.as_deref(),
            Some("/bots/")
        );
        let p = parse(&format!("{ROT}path_prefix = \"/\"\n")).unwrap();
        assert!(p.rotations[0].selection.selects_everything());
        let e = one_error(&format!(
            "{ROT}tags = {{ \"Team\" = \"a\", \"team\" = \"b\" }}\n"
        ));
        assert!(e.contains("same IAM tag key"), "{e}");
        let e = one_error(&format!("{ROT}tags = {{ \"\" = \"a\" }}\n"));
        assert!(e.contains("a tag key is 1-128"), "{e}");
    }

    const ACCOUNTS: &str = "[[accounts]]\nname = \"prod\"\nprofile = \"prod-admin\"\n\
        [[accounts]]\nname = \"stage\"\nrole_arn = \"arn:aws:iam::111111111111:role/KeyturnRotator\"\nexternal_id = \"abc123\"\n\
        [[accounts]]\nname = \"org\"\norganization = { role_name = \"KeyturnRotator\", exclude = [\"222222222222\"] }\n";

    #[test]
    fn accounts_resolve() {
        let p = parse(&format!(
            "{ACCOUNTS}{ROT}accounts = [\"prod\", \"333333333333\"]\n"
        ))
        .unwrap();
        assert_eq!(p.accounts.len(), 3);
        assert_eq!(
            p.account("stage").unwrap().access,
            Access::Role {
                role_arn: "arn:aws:iam::111111111111:role/KeyturnRotator".into(),
                external_id: Some("abc123".into())
            }
        );
        assert_eq!(p.account("stage").unwrap().known_id(), Some("111111111111"));
        assert_eq!(
            p.rotations[0].selection.accounts,
            Some(vec![
                AccountRef::Name("prod".into()),
                AccountRef::Id("333333333333".into())
            ])
        );
        assert!(p
            .account("org")
            .unwrap()
            .describe()
            .contains("except 222222222222"));
    }

    #[test]
    fn account_entries_are_checked() {
        let cases = [
            ("[[accounts]]\nname = \"a\"\n", "set one of profile, role_arn or organization"),
            ("[[accounts]]\nname = \"a\"\nprofile = \"p\"\nrole_arn = \"arn:aws:iam::111111111111:role/R\"\n", "profile and role_arn exclude each other"),
            ("[[accounts]]\nname = \"a\"\nprofile = \"p\"\nexternal_id = \"xyz\"\n", "external_id only applies with role_arn"),
            ("[[accounts]]\nname = \"a\"\nrole_arn = \"arn:aws:iam::1111:role/R\"\n", "expected an IAM role ARN"),
            ("[[accounts]]\nname = \"a\"\nrole_arn = \"arn:aws:iam::111111111111:role/R\"\nexternal_id = \"x\"\n", "expected 2-1224"),
            ("[[accounts]]\nname = \"a\"\nprofile = \" \"\n", "must not be empty"),
            ("[[accounts]]\nname = \"a b\"\nprofile = \"p\"\n", "an account name is"),
            ("[[accounts]]\nname = \"123456789012\"\nprofile = \"p\"\n", "not a 12-digit number"),
            ("[[accounts]]\nname = \"a\"\norganization = { role_name = \"bad role\" }\n", "expected an IAM role name"),
            ("[[accounts]]\nname = \"a\"\norganization = { role_name = \"R\", include = [\"12\"] }\n", "expected a 12-digit account id"),
            ("[[accounts]]\nname = \"a\"\norganization = { role_name = \"R\", include = [\"222222222222\"], exclude = [\"222222222222\"] }\n", "in both include and exclude"),
            ("[[accounts]]\nname = \"a\"\norganization = { role_name = \"R\", exclude = [\"222222222222\", \"222222222222\"] }\n", "listed twice"),
        ];
        for (text, needle) in cases {
            let e = one_error(&format!("{text}{ROT}"));
            assert!(
                e.contains(needle) && e.contains("accounts[0]"),
                "{text}: {e}"
            );
            assert!(e.starts_with("k.toml:"), "{e}");
        }
    }

    #[test]
    fn accounts_are_listed_once() {
        let e = one_error(&format!(
            "{ACCOUNTS}[[accounts]]\nname = \"prod\"\nprofile = \"x\"\n{ROT}"
        ));
        assert!(
            e.contains("accounts[3].name: \"prod\" is already the name of accounts[0]"),
            "{e}"
        );
        let e = one_error(&format!(
            "{ACCOUNTS}[[accounts]]\nname = \"again\"\nrole_arn = \"arn:aws:iam::111111111111:role/Other\"\n{ROT}"
        ));
        assert!(
            e.contains("account 111111111111 is already reached by accounts[1]"),
            "{e}"
        );
        let e = one_error(&format!(
            "{ACCOUNTS}[[accounts]]\nname = \"org2\"\norganization = {{ role_name = \"R\" }}\n{ROT}"
        ));
        assert!(e.contains("already lists the Organization"), "{e}");
        let e = one_error(&format!(
            "[[accounts]]\nname = \"one\"\nrole_arn = \"arn:aws:iam::111111111111:role/R\"\n\
             [[accounts]]\nname = \"org\"\norganization = {{ role_name = \"R\", include = [\"111111111111\"] }}\n{ROT}"
        ));
        assert!(e.contains("also in org's organization.include"), "{e}");
    }

    #[test]
    fn rotation_accounts_must_be_declared_or_ids() {
        let e = one_error(&format!("{ACCOUNTS}{ROT}accounts = [\"prd\"]\n"));
        assert!(
            e.contains("rotations[0].accounts: \"prd\" is not declared in [[accounts]] (declared: prod, stage, org)"),
            "{e}"
        );
        let e = one_error(&format!("{ROT}accounts = [\"prod\"]\n"));
        assert!(e.contains("there are no [[accounts]] entries"), "{e}");
        let e = one_error(&format!("{ACCOUNTS}{ROT}accounts = []\n"));
        assert!(e.contains("selects no account"), "{e}");
        let e = one_error(&format!("{ACCOUNTS}{ROT}accounts = [\"prod\", \"prod\"]\n"));
        assert!(e.contains("listed twice"), "{e}");
        let e = one_error(&format!("{ACCOUNTS}{ROT}accounts = [\"222222222222\"]\n"));
        assert!(
            e.contains("excluded by [[accounts]] org's organization.exclude"),
            "{e}"
        );
        parse(&format!("{ROT}accounts = [\"222222222222\"]\n")).unwrap();
    }

    #[test]
    fn shadowed_blocks_are_errors() {
        let e = one_error(&format!(
            "{ROT}[[rotations]]\nname = \"later\"\nusers = [\"x\"]\nsinks = [\"vault\"]\n"
        ));
        assert!(
            e.starts_with("k.toml:5: rotations[1]: \"later\" never applies: the earlier block rotations[0] (\"r\") selects every user"),
            "{e}"
        );
        let e = one_error(
            "[[rotations]]\nname = \"a\"\nusers = [\"x\"]\nsinks = [\"vault\"]\n\
             [[rotations]]\nname = \"b\"\nusers = [\"x\"]\nsinks = [\"ci-aws\"]\n",
        );
        assert!(e.contains("selects exactly the same users"), "{e}");
        // A catch-all after specific blocks is the normal layout.
        parse(
            "[[rotations]]\nname = \"a\"\nusers = [\"x\"]\nsinks = [\"vault\"]\n\
             [[rotations]]\nname = \"rest\"\nsinks = [\"ci-aws\"]\n",
        )
        .unwrap();
    }

    #[test]
    fn block_limits_cannot_exceed_run_wide_limits() {
        let e = one_error(&format!("{ROT}concurrency = 9\n"));
        assert!(
            e.contains("rotations[0].concurrency: 9 exceeds the run-wide concurrency (default 8)"),
            "{e}"
        );
        let e = one_error(&format!(
            "[policy]\nmax_failures = 2\n{ROT}max_failures = 3\n"
        ));
        assert!(e.contains("exceeds the run-wide max_failures = 2:"), "{e}");
        parse(&format!(
            "[policy]\nconcurrency = 16\n{ROT}concurrency = 9\n"
        ))
        .unwrap();
    }

    #[test]
    fn several_errors_are_all_reported_in_file_order() {
        let text = "[policy]\nmax_age_days = 0\n[[rotations]]\nname = \"r\"\nsinks = [\"nope\"]\nusers = [\"[\"]\n";
        let e = errors(text);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].starts_with("k.toml:2: policy.max_age_days"));
        assert!(e[1].starts_with("k.toml:5: rotations[0].sinks"));
        assert!(e[2].starts_with("k.toml:6: rotations[0].users"));
    }

    #[test]
    fn describe_says_what_a_block_does() {
        let p = parse(&format!(
            "{ACCOUNTS}[[rotations]]\nname = \"bots\"\naccounts = [\"prod\"]\nusers = [\"ci-*\", \"deploy-bot\"]\n\
             path_prefix = \"/bots/\"\ntags = {{ \"keyturn:rotate\" = \"true\" }}\nexclude = [\"legacy-*\"]\n\
             sinks = [\"ci-aws\"]\nmax_age_days = 60\n"
        ))
        .unwrap();
        let text = p.rotations[0].describe(&p).join("\n");
        for needle in [
            "selects: IAM users named ci-* or deploy-bot, with a path starting /bots/, tagged keyturn:rotate=true, except users named legacy-*, in account prod",
            "rotates: when the newest Active key is 46 days old (max_age_days 60 - rotate_before_days 14)",
            "once its consumers switched to the new key (IAM last-used dates), at the latest 7 days after the rotation",
            "deletes: keys keyturn deactivated, 7 days after; Inactive keys keyturn did not deactivate are never deleted",
            "delivers to: ci-aws",
            "canary 1",
        ] {
            assert!(text.contains(needle), "{needle}\nin:\n{text}");
        }
    }
}
