//! The fleet planner: (user facts, effective rotation, now) -> one decision.
//!
//! A fleet run advances each selected user's keys by one lifecycle step, so running it
//! daily is the schedule and a second run right after a first one changes nothing. This
//! module decides that step. It is pure (no I/O, no clock) like [`crate::plan`]: the
//! runner gathers the facts (IAM keys with `GetAccessKeyLastUsed`, the journal's
//! [`KeyHistory`], optional CloudTrail [`Evidence`]) and executes the decision.
//!
//! The lifecycle (issue 15; the table is in `docs/fleet.md`):
//!
//! 1. An open run (interrupted or incomplete) is resumed before anything else.
//! 2. **Rotate** when the newest Active key is `max_age_days - rotate_before_days` whole
//!    days old, or the user has no key at all. The two-key limit: an Inactive key
//!    keyturn deactivated may be deleted first (once its `delete_after_days` window
//!    ended, or at once when the newest key reached `max_age_days`); another Inactive
//!    key only with `delete_inactive`; otherwise `needs-attention`, nothing touched.
//! 3. **Retire** the key a previous rotation replaced: `after-verify` in the rotation's
//!    own run (or the next run, if that run did not); `when-switched` once IAM shows the
//!    new key used by a consumer and the old key not used since the new key's first
//!    sighting, or, forced, `grace_days` after the rotation; `never`: not at all.
//! 4. **Delete** a key keyturn deactivated, `delete_after_days` after it did (0: in the
//!    same run as the deactivation).
//!
//! Safety rules that hold for every input (property-tested below):
//! - a key keyturn did not create or deactivate is never deleted, except an Inactive key
//!   freeing a slot under `delete_inactive`; an Active key is never deleted;
//! - a key is retired only when it is Active and replaced by a newer Active key that a
//!   keyturn run created and delivered, and whose run started with it;
//! - two Active keys keyturn cannot tell apart are `needs-attention`, nothing touched;
//! - applying a decision and deciding again at the same instant changes nothing more.
//!
//! Ages come from IAM's own dates (the new key's `CreateDate` is the rotation time;
//! last-used dates from `GetAccessKeyLastUsed`); only the deactivation time behind
//! `delete_after_days`, who created which key, and keyturn's own use of a new key come
//! from the journal.

use crate::fleet::history::{Created, CreatedKey, KeyHistory, Sighting};
use crate::fleet::policy::{EffectiveRotation, Lifecycle, Retire, UsageSource};
use crate::fleet::report::{Outcome, UserReport};
use crate::model::{AccessKeyInfo, KeyStatus, LastUsed, Usage, MAX_KEYS_PER_USER};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

/// How much later than keyturn's own last call with a new key (verification, delivery
/// checks) a last use must be to count as a consumer. keyturn's STS verification shows
/// up as the new key's last use (service `sts`), and AWS documents that last-used
/// information can take up to about four hours to appear; nothing documents that the
/// recorded time itself cannot lag, so the margin covers the whole delay. Cost: a
/// consumer's uses in the first 4 h after the rotation do not count, its later ones do.
pub const SELF_USE_MARGIN: Duration = Duration::hours(4);

/// How late IAM may show a use in `GetAccessKeyLastUsed` (AWS: up to about 4 h). "The
/// old key was not used since the new key's first sighting" is only concluded once this
/// long has passed since that sighting, so a use right after it would be visible.
pub const LAST_USED_DELAY: Duration = Duration::hours(4);

/// CloudTrail evidence about who uses the keys (issue 16, `usage = "cloudtrail"`).
/// Gathered by the runner; `None` when the policy does not ask for it or the lookup
/// failed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Evidence {
    /// Events are complete up to this time (the lookup time minus CloudTrail's delivery
    /// delay of about 15 minutes).
    pub complete_until: Option<OffsetDateTime>,
    /// Consumers of the old key since the rotation, keyturn's own calls excluded.
    pub old_key: Vec<Consumer>,
    /// The first use of the new key by a consumer seen in CloudTrail.
    pub new_key_first_use: Option<OffsetDateTime>,
}

/// One consumer of a key: a (source IP, user agent) pair in CloudTrail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub source_ip: String,
    pub user_agent: String,
    pub events: u64,
    pub first: OffsetDateTime,
    pub last: OffsetDateTime,
    /// Most frequent event names, most frequent first (`s3:ListBuckets`).
    pub top_events: Vec<String>,
    pub regions: Vec<String>,
}

impl Consumer {
    /// "used 14 times in 24 h by 10.0.4.17 aws-cli/2.15.30 (s3:ListBuckets in eu-west-1)".
    pub fn describe(&self) -> String {
        let mut s = format!(
            "used {} time{} in {} by {} {}",
            self.events,
            if self.events == 1 { "" } else { "s" },
            span_words(self.last - self.first),
            self.source_ip,
            self.user_agent
        );
        if !self.top_events.is_empty() || !self.regions.is_empty() {
            let mut inner = self.top_events.join(", ");
            if !self.regions.is_empty() {
                if !inner.is_empty() {
                    inner.push(' ');
                }
                inner.push_str(&format!("in {}", self.regions.join(", ")));
            }
            s.push_str(&format!(" ({inner})"));
        }
        s
    }
}

/// What the planner knows about one selected user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserFacts {
    pub user_name: String,
    /// `ListAccessKeys`, each with `Usage` filled from `GetAccessKeyLastUsed`.
    pub keys: Vec<AccessKeyInfo>,
    pub history: KeyHistory,
    pub evidence: Option<Evidence>,
}

/// A key deleted before the new one is created, to free one of the two slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FreeSlot {
    pub access_key_id: String,
    pub reason: String,
}

/// A rotation: what the runner turns into plan steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Rotation {
    /// Inactive keys deleted first (`free-slot`).
    pub free: Vec<FreeSlot>,
    /// The Active key the new one replaces (`None`: the user has no key).
    pub replaces: Option<String>,
    /// `after-verify`: deactivate `replaces` once every sink verified the delivery.
    pub retire_after_verify: bool,
    /// ... and delete it in the same run (`delete_after_days = 0`).
    pub delete_after_retire: bool,
    pub reason: String,
}

/// The one step a fleet run takes for a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "Action", rename_all_fields = "PascalCase")]
pub enum Action {
    /// Finish the open run first (`keyturn resume` semantics).
    Resume {
        run_id: String,
        creates_key: bool,
        reason: String,
    },
    Rotate(Rotation),
    /// Deactivate the replaced key (then delete it when `delete`).
    Retire {
        access_key_id: String,
        forced: bool,
        delete: bool,
        reason: String,
    },
    /// Delete a key keyturn deactivated.
    Delete {
        access_key_id: String,
        reason: String,
    },
    /// Nothing to do yet; a later run continues.
    Wait {
        reason: String,
    },
    /// Within policy.
    Ok {
        #[serde(with = "time::serde::rfc3339")]
        next_due: OffsetDateTime,
        reason: String,
    },
    /// keyturn will not act; a human must.
    NeedsAttention {
        reason: String,
    },
}

/// The planner's answer: the action, and a first sighting of a new key for the runner
/// to journal (even in a run that otherwise waits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Decision {
    #[serde(flatten)]
    pub action: Action,
    #[serde(skip)]
    pub record_sighting: Option<Sighting>,
}

impl Decision {
    fn new(action: Action) -> Self {
        Self {
            action,
            record_sighting: None,
        }
    }

    /// The outcome this decision ends in when carried out (what `--dry-run` reports).
    pub fn outcome(&self) -> Outcome {
        match &self.action {
            Action::Resume { creates_key, .. } => {
                if *creates_key {
                    Outcome::Rotated
                } else {
                    Outcome::Retired
                }
            }
            Action::Rotate(_) => Outcome::Rotated,
            Action::Retire { .. } => Outcome::Retired,
            Action::Delete { .. } => Outcome::Deleted,
            Action::Wait { .. } => Outcome::Waiting,
            Action::Ok { .. } => Outcome::Ok,
            Action::NeedsAttention { .. } => Outcome::NeedsAttention,
        }
    }

    pub fn reason(&self) -> &str {
        match &self.action {
            Action::Resume { reason, .. }
            | Action::Rotate(Rotation { reason, .. })
            | Action::Retire { reason, .. }
            | Action::Delete { reason, .. }
            | Action::Wait { reason }
            | Action::Ok { reason, .. }
            | Action::NeedsAttention { reason } => reason,
        }
    }

    /// The report line of this decision before it is carried out (`--dry-run`, the
    /// status page); the runner fills in new key ids, sinks and run ids as it goes.
    pub fn planned_report(&self, user_name: &str, rotation: &str) -> UserReport {
        let retired = match &self.action {
            Action::Retire { access_key_id, .. } | Action::Delete { access_key_id, .. } => {
                Some(access_key_id.clone())
            }
            Action::Rotate(r) if r.retire_after_verify => r.replaces.clone(),
            _ => None,
        };
        UserReport {
            user_name: user_name.to_string(),
            rotation: rotation.to_string(),
            outcome: self.outcome(),
            reason: self.reason().to_string(),
            new_access_key_id: None,
            retired_access_key_id: retired,
            sinks: None,
            run_id: match &self.action {
                Action::Resume { run_id, .. } => Some(run_id.clone()),
                _ => None,
            },
        }
    }

    /// Does carrying it out change any key?
    pub fn changes_keys(&self) -> bool {
        matches!(
            self.action,
            Action::Resume { .. }
                | Action::Rotate(_)
                | Action::Retire { .. }
                | Action::Delete { .. }
        )
    }

    /// The existing keys it deactivates or deletes.
    pub fn touched_keys(&self) -> Vec<&str> {
        match &self.action {
            Action::Rotate(r) => {
                let mut v: Vec<&str> = r.free.iter().map(|f| f.access_key_id.as_str()).collect();
                if r.retire_after_verify {
                    v.extend(r.replaces.as_deref());
                }
                v
            }
            Action::Retire { access_key_id, .. } | Action::Delete { access_key_id, .. } => {
                vec![access_key_id]
            }
            _ => vec![],
        }
    }
}

/// Decide the next step for one user under its rotation block.
pub fn decide(facts: &UserFacts, rotation: &EffectiveRotation, now: OffsetDateTime) -> Decision {
    decide_lifecycle(facts, &rotation.lifecycle, now)
}

/// [`decide`] with only the lifecycle numbers.
pub fn decide_lifecycle(f: &UserFacts, l: &Lifecycle, now: OffsetDateTime) -> Decision {
    let h = &f.history;
    if let Some(open) = &h.open_run {
        return Decision::new(Action::Resume {
            run_id: open.run_id.clone(),
            creates_key: open.creates_key,
            reason: format!(
                "run {} is {} ({}); it is finished first, like `keyturn resume {}`",
                open.run_id,
                open.status,
                if open.status == "running" {
                    "interrupted"
                } else {
                    "stopped with work left"
                },
                open.run_id
            ),
        });
    }
    if f.keys.len() > MAX_KEYS_PER_USER {
        return attention(format!(
            "IAM lists {} access keys ({}); IAM allows {MAX_KEYS_PER_USER}, so keyturn refuses to guess",
            f.keys.len(),
            ids(f.keys.iter())
        ));
    }
    if let Some((k, c)) = f.keys.iter().find_map(|k| {
        h.created(&k.access_key_id)
            .filter(|c| c.created != Created::Delivered)
            .map(|c| (k, c))
    }) {
        return attention(format!(
            "key {} was created by run {}, which failed before delivering it, and its clean-up did not delete it; check `keyturn history` and delete it (aws iam delete-access-key --user-name {} --access-key-id {})",
            k.access_key_id, c.run_id, f.user_name, k.access_key_id
        ));
    }
    let mut active: Vec<&AccessKeyInfo> = f
        .keys
        .iter()
        .filter(|k| k.status == KeyStatus::Active)
        .collect();
    active.sort_by_key(|k| (k.create_date, k.access_key_id.clone()));
    let inactive: Vec<&AccessKeyInfo> = f
        .keys
        .iter()
        .filter(|k| k.status == KeyStatus::Inactive)
        .collect();
    match active.as_slice() {
        [] => no_active_key(&inactive),
        [k] => one_active_key(f, l, now, k, inactive.first().copied()),
        [a, b, ..] => two_active_keys(f, l, now, a, b),
    }
}

fn attention(reason: String) -> Decision {
    Decision::new(Action::NeedsAttention { reason })
}

fn ids<'a>(keys: impl Iterator<Item = &'a AccessKeyInfo>) -> String {
    keys.map(|k| format!("{} {}", k.access_key_id, k.status))
        .collect::<Vec<_>>()
        .join(", ")
}

fn no_active_key(inactive: &[&AccessKeyInfo]) -> Decision {
    if inactive.is_empty() {
        return Decision::new(Action::Rotate(Rotation {
            free: vec![],
            replaces: None,
            retire_after_verify: false,
            delete_after_retire: false,
            reason: "the user has no access key".into(),
        }));
    }
    // Someone deactivated (or deleted) the user's Active key outside a rotation:
    // creating a new one would re-enable a user that may have been disabled on purpose.
    attention(format!(
        "the user has no Active access key, only {}; keyturn does not create a key for a user whose keys were deactivated outside a rotation: delete the Inactive key{} (keyturn then creates a new one) or exclude the user",
        ids(inactive.iter().copied()),
        if inactive.len() == 1 { "" } else { "s" }
    ))
}

/// The whole days of `d`, for "N days" wording.
fn days(d: Duration) -> i64 {
    d.whole_days()
}

fn one_active_key(
    f: &UserFacts,
    l: &Lifecycle,
    now: OffsetDateTime,
    k: &AccessKeyInfo,
    inactive: Option<&AccessKeyInfo>,
) -> Decision {
    let h = &f.history;
    let age = k.age_days(now);
    let rotate_at = i64::from(l.rotate_at_days());
    let keyturn_deactivated = inactive.and_then(|i| h.deactivation(&i.access_key_id));
    if age >= rotate_at {
        let mut free = vec![];
        if let Some(i) = inactive {
            match keyturn_deactivated {
                Some(d) => {
                    // The deletion window keeps a retired key for re-activation. A due
                    // rotation waits for it within rotate_before_days' slack; the
                    // hard limit max_age_days wins.
                    let window_end = d.at + Duration::days(i64::from(l.delete_after_days));
                    let early = now < window_end;
                    if early && age < i64::from(l.max_age_days) {
                        return Decision::new(Action::Wait {
                            reason: format!(
                                "rotation due ({} is {age} days old; rotated at {rotate_at}), but the second key slot holds {}, which keyturn deactivated on {}: it is kept until {} (delete_after_days = {}) in case it must be re-activated, then the rotation frees its slot",
                                k.access_key_id,
                                i.access_key_id,
                                date(d.at),
                                date(window_end),
                                l.delete_after_days
                            ),
                        });
                    }
                    free.push(FreeSlot {
                        access_key_id: i.access_key_id.clone(),
                        reason: if early {
                            format!(
                                "keyturn deactivated it on {} (run {}); deleted before delete_after_days ended because {} reached max_age_days = {}",
                                date(d.at),
                                d.run_id,
                                k.access_key_id,
                                l.max_age_days
                            )
                        } else {
                            format!(
                                "keyturn deactivated it on {} (run {}); delete_after_days = {} passed",
                                date(d.at),
                                d.run_id,
                                l.delete_after_days
                            )
                        },
                    })
                }
                None if l.delete_inactive => free.push(FreeSlot {
                    access_key_id: i.access_key_id.clone(),
                    reason: "Inactive and not deactivated by keyturn; delete_inactive = true"
                        .into(),
                }),
                None => {
                    return attention(format!(
                        "rotation due ({} is {age} days old; rotated at {rotate_at}, max_age_days {}), but the second key slot holds Inactive key {}, which keyturn did not deactivate: delete it, or set delete_inactive = true",
                        k.access_key_id, l.max_age_days, i.access_key_id
                    ))
                }
            }
        }
        let after_verify = l.retire == Retire::AfterVerify;
        return Decision::new(Action::Rotate(Rotation {
            free,
            replaces: Some(k.access_key_id.clone()),
            retire_after_verify: after_verify,
            delete_after_retire: after_verify && l.delete_after_days == 0,
            reason: format!(
                "newest Active key {} is {age} days old (rotated at {rotate_at}: max_age_days {} - rotate_before_days {})",
                k.access_key_id, l.max_age_days, l.rotate_before_days
            ),
        }));
    }
    if let (Some(i), Some(d)) = (inactive, keyturn_deactivated) {
        let due = d.at + Duration::days(i64::from(l.delete_after_days));
        if now >= due {
            return Decision::new(Action::Delete {
                access_key_id: i.access_key_id.clone(),
                reason: format!(
                    "keyturn deactivated {} {} days ago (run {}); delete_after_days = {}",
                    i.access_key_id,
                    days(now - d.at).max(0),
                    d.run_id,
                    l.delete_after_days
                ),
            });
        }
        return Decision::new(Action::Wait {
            reason: format!(
                "old key {} deactivated on {}; deleted from {} on (delete_after_days = {})",
                i.access_key_id,
                date(d.at),
                date(due),
                l.delete_after_days
            ),
        });
    }
    let next_due = k.create_date + Duration::days(rotate_at);
    let mut reason = format!(
        "newest Active key {} is {} days old; next rotation on {}",
        k.access_key_id,
        age.max(0),
        date(next_due)
    );
    if let Some(i) = inactive {
        reason.push_str(&format!(
            "; Inactive key {} is left alone (keyturn did not deactivate it)",
            i.access_key_id
        ));
    }
    Decision::new(Action::Ok { next_due, reason })
}

/// Tell the replaced key from its replacement: the newer must be a key a keyturn run
/// created and delivered, and the older one must have been Active when that run began.
fn old_and_new<'a>(
    h: &'a KeyHistory,
    a: &'a AccessKeyInfo,
    b: &'a AccessKeyInfo,
) -> Result<(&'a AccessKeyInfo, &'a AccessKeyInfo, &'a CreatedKey), String> {
    let ca = h.created(&a.access_key_id);
    let cb = h.created(&b.access_key_id);
    match (ca, cb) {
        (_, Some(c)) if c.replaced.contains(&a.access_key_id) => Ok((a, b, c)),
        (_, Some(c)) => Err(format!(
            "the user has two Active keys: {} (created by keyturn run {}) and {}, which was not Active when that run began; keyturn cannot tell which one consumers need: deactivate the one no longer used",
            b.access_key_id, c.run_id, a.access_key_id
        )),
        (Some(c), None) => Err(format!(
            "the user has two Active keys: {} (created by keyturn run {}) and the newer {}, created outside keyturn; keyturn cannot tell which one consumers need: deactivate the one no longer used",
            a.access_key_id, c.run_id, b.access_key_id
        )),
        (None, None) => Err(format!(
            "the user has two Active keys, {} and {}, neither created by keyturn; keyturn cannot tell which one consumers still need: deactivate the one no longer used (or delete it), then keyturn takes over",
            a.access_key_id, b.access_key_id
        )),
    }
}

fn two_active_keys(
    f: &UserFacts,
    l: &Lifecycle,
    now: OffsetDateTime,
    a: &AccessKeyInfo,
    b: &AccessKeyInfo,
) -> Decision {
    let (old, new, created) = match old_and_new(&f.history, a, b) {
        Ok(x) => x,
        Err(reason) => return attention(reason),
    };
    let rotate_at = i64::from(l.rotate_at_days());
    let next_due = new.create_date + Duration::days(rotate_at);
    match l.retire {
        Retire::Never => {
            if new.age_days(now) >= rotate_at {
                return attention(format!(
                    "rotation due ({} is {} days old), but both key slots hold Active keys and retire = never leaves the old key {} Active: retire it (deactivate, then delete) so keyturn can rotate",
                    new.access_key_id,
                    new.age_days(now),
                    old.access_key_id
                ));
            }
            Decision::new(Action::Ok {
                next_due,
                reason: format!(
                    "newest Active key {} is {} days old; next rotation on {}; old key {} stays Active (retire = never)",
                    new.access_key_id,
                    new.age_days(now).max(0),
                    date(next_due),
                    old.access_key_id
                ),
            })
        }
        Retire::AfterVerify => Decision::new(Action::Retire {
            access_key_id: old.access_key_id.clone(),
            forced: false,
            delete: l.delete_after_days == 0,
            reason: format!(
                "retire = after-verify: {} replaced it in run {}{}, which left it Active",
                new.access_key_id,
                created.run_id,
                created
                    .verified_at
                    .map(|t| format!(" (verified {})", date(t)))
                    .unwrap_or_default()
            ),
        }),
        Retire::WhenSwitched => when_switched(f, l, now, old, new, created),
    }
}

/// The outcome of the switch test.
enum Switch {
    Switched(String),
    NotYet(String),
}

fn when_switched(
    f: &UserFacts,
    l: &Lifecycle,
    now: OffsetDateTime,
    old: &AccessKeyInfo,
    new: &AccessKeyInfo,
    created: &CreatedKey,
) -> Decision {
    let rotated_at = new.create_date;
    let cutoff = created.own_use_until.max(rotated_at) + SELF_USE_MARGIN;
    let consumer_use = match &new.usage {
        Usage::Used(u) if u.date > cutoff => Some(u),
        _ => None,
    };
    let mut record = None;
    let sighted: Option<Sighting> = match (f.history.sighting(&new.access_key_id), consumer_use) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(u)) => {
            let s = Sighting {
                access_key_id: new.access_key_id.clone(),
                run_id: created.run_id.clone(),
                used_at: u.date,
                service: u.service.clone(),
                region: u.region.clone(),
            };
            record = Some(s.clone());
            Some(s)
        }
        (None, None) => None,
    };
    let evidence = f.evidence.as_ref();
    let switch = match l.usage {
        UsageSource::LastUsed => last_used_rule(old, new, sighted.as_ref(), cutoff, now),
        UsageSource::Cloudtrail => {
            cloudtrail_rule(l, old, new, sighted.as_ref(), cutoff, evidence, now)
        }
    };
    let consumers = evidence.filter(|e| !e.old_key.is_empty()).map(|e| {
        e.old_key
            .iter()
            .map(Consumer::describe)
            .collect::<Vec<_>>()
            .join("; ")
    });
    let grace_end = rotated_at + Duration::days(i64::from(l.grace_days));
    let action = match switch {
        Switch::Switched(why) => Action::Retire {
            access_key_id: old.access_key_id.clone(),
            forced: false,
            delete: l.delete_after_days == 0,
            reason: why,
        },
        Switch::NotYet(why) if now >= grace_end => Action::Retire {
            access_key_id: old.access_key_id.clone(),
            forced: true,
            delete: l.delete_after_days == 0,
            reason: format!(
                "forced: grace_days = {} passed since the rotation on {}; {why}{}",
                l.grace_days,
                date(rotated_at),
                consumers
                    .map(|c| format!("; consumers that will break: old key {c}"))
                    .unwrap_or_default()
            ),
        },
        Switch::NotYet(why) => Action::Wait {
            reason: format!(
                "{why}{}; retired at the latest on {} (grace_days = {})",
                match (&consumers, l.usage) {
                    (Some(c), UsageSource::LastUsed) => format!("; CloudTrail: old key {c}"),
                    _ => String::new(),
                },
                date(grace_end),
                l.grace_days
            ),
        },
    };
    Decision {
        action,
        record_sighting: record,
    }
}

/// `usage = "last-used"`: the new key was used by a consumer, and the old key was not
/// used since the new key's first sighting, with IAM's delay covered.
fn last_used_rule(
    old: &AccessKeyInfo,
    new: &AccessKeyInfo,
    sighted: Option<&Sighting>,
    cutoff: OffsetDateTime,
    now: OffsetDateTime,
) -> Switch {
    if old.usage == Usage::Unknown {
        return Switch::NotYet(format!(
            "the last use of old key {} is unknown (GetAccessKeyLastUsed was not read)",
            old.access_key_id
        ));
    }
    let Some(s) = sighted else {
        return Switch::NotYet(format!(
            "{}; {}",
            use_words("old key", &old.usage, now),
            new_key_unused_words(new, cutoff, now)
        ));
    };
    let since = format!(
        "new key in use since {} ({})",
        time_words(s.used_at),
        where_words(s)
    );
    match &old.usage {
        Usage::Used(u) if u.date >= s.used_at => Switch::NotYet(format!(
            "{since}, but the old key was used after that: {}",
            use_words("old key", &old.usage, now).trim_start_matches("old key ")
        )),
        _ if now < s.used_at + LAST_USED_DELAY => Switch::NotYet(format!(
            "{since}; {} since then, but IAM shows a use up to 4 h late: retired from {} on",
            match &old.usage {
                Usage::Used(_) => "old key not used",
                _ => "old key never used",
            },
            time_words(s.used_at + LAST_USED_DELAY)
        )),
        _ => Switch::Switched(format!(
            "consumers switched: {since}; {} before that",
            use_words("old key", &old.usage, now)
        )),
    }
}

/// `usage = "cloudtrail"`: as last-used, and no consumer (CloudTrail or IAM last-used)
/// used the old key for `quiet_hours` after the new key's first use.
fn cloudtrail_rule(
    l: &Lifecycle,
    old: &AccessKeyInfo,
    new: &AccessKeyInfo,
    sighted: Option<&Sighting>,
    cutoff: OffsetDateTime,
    evidence: Option<&Evidence>,
    now: OffsetDateTime,
) -> Switch {
    let Some(e) = evidence else {
        return Switch::NotYet(
            "no CloudTrail evidence about the old key's consumers (the lookup failed or was not made)"
                .into(),
        );
    };
    if old.usage == Usage::Unknown {
        return Switch::NotYet(format!(
            "the last use of old key {} is unknown (GetAccessKeyLastUsed was not read)",
            old.access_key_id
        ));
    }
    // CloudTrail's first use must belong to this key (after its creation).
    let ct_first_use = e.new_key_first_use.filter(|t| *t >= new.create_date);
    let first_use = match (sighted.map(|s| s.used_at), ct_first_use) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let Some(first_use) = first_use else {
        let who = if e.old_key.is_empty() {
            use_words("old key", &old.usage, now)
        } else {
            format!(
                "old key {}",
                e.old_key
                    .iter()
                    .map(Consumer::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        return Switch::NotYet(format!("{who}; {}", new_key_unused_words(new, cutoff, now)));
    };
    let last_ct = e.old_key.iter().map(|c| c.last).max();
    let last_iam = match &old.usage {
        Usage::Used(u) => Some(u.date),
        _ => None,
    };
    let quiet_from = [Some(first_use), last_ct, last_iam]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(first_use);
    let seen_until = e.complete_until.unwrap_or(now).min(now);
    let quiet = Duration::hours(i64::from(l.quiet_hours));
    if seen_until - quiet_from >= quiet {
        return Switch::Switched(format!(
            "consumers switched: new key in use since {}; no consumer used the old key for {} h since {} (CloudTrail and IAM last-used)",
            time_words(first_use),
            l.quiet_hours,
            time_words(quiet_from)
        ));
    }
    let who = if e.old_key.is_empty() {
        format!("old key quiet since {}", time_words(quiet_from))
    } else {
        format!(
            "old key {}",
            e.old_key
                .iter()
                .map(Consumer::describe)
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    Switch::NotYet(format!(
        "new key in use since {}; {who}: retired once the old key is quiet for {} h (from {} on)",
        time_words(first_use),
        l.quiet_hours,
        time_words(quiet_from + quiet)
    ))
}

fn new_key_unused_words(
    new: &AccessKeyInfo,
    cutoff: OffsetDateTime,
    now: OffsetDateTime,
) -> String {
    match &new.usage {
        Usage::Used(u) if u.date <= cutoff => format!(
            "new key used only by keyturn's own checks so far ({}; uses count from {} on)",
            use_words("last", &new.usage, now).trim_start_matches("last "),
            time_words(cutoff)
        ),
        Usage::Unknown => "new key's last use unknown".into(),
        _ => "new key never used".into(),
    }
}

/// "old key last used 3 h ago by s3 in eu-west-1" / "old key never used".
fn use_words(label: &str, usage: &Usage, now: OffsetDateTime) -> String {
    match usage {
        Usage::Unknown => format!("{label}'s last use unknown"),
        Usage::Never => format!("{label} never used"),
        Usage::Used(u) => format!(
            "{label} last used {}{}",
            ago(now - u.date),
            last_used_where(u)
        ),
    }
}

fn last_used_where(u: &LastUsed) -> String {
    let mut s = format!(
        " by {}",
        u.service.as_deref().unwrap_or("an unknown service")
    );
    if let Some(r) = u.region.as_deref().filter(|r| !r.is_empty() && *r != "N/A") {
        s.push_str(&format!(" in {r}"));
    }
    s
}

fn where_words(s: &Sighting) -> String {
    let mut w = format!(
        "by {}",
        s.service.as_deref().unwrap_or("an unknown service")
    );
    if let Some(r) = &s.region {
        w.push_str(&format!(" in {r}"));
    }
    w
}

/// "3 h ago", "25 min ago", "4 days ago".
pub fn ago(d: Duration) -> String {
    if d < Duration::ZERO {
        return "just now".into();
    }
    if d < Duration::hours(1) {
        return format!("{} min ago", d.whole_minutes());
    }
    if d < Duration::hours(48) {
        return format!("{} h ago", d.whole_hours());
    }
    format!("{} days ago", d.whole_days())
}

/// "24 h", "3 days", "12 min".
fn span_words(d: Duration) -> String {
    if d < Duration::hours(1) {
        format!("{} min", d.whole_minutes().max(0))
    } else if d < Duration::hours(48) {
        format!("{} h", d.whole_hours())
    } else {
        format!("{} days", d.whole_days())
    }
}

fn date(t: OffsetDateTime) -> String {
    t.date().to_string()
}

fn time_words(t: OffsetDateTime) -> String {
    format!("{} {:02}:{:02} UTC", t.date(), t.hour(), t.minute())
}

#[cfg(test)]
mod tests;
