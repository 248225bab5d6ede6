//! What the journal knows about one (account, user): the facts behind "keyturn created
//! this key", "keyturn deactivated that one on that day", "a run is still open" and "the
//! new key was first seen in use then". IAM knows none of this; the fleet planner needs
//! all of it to tell an old key from a new one and to delete only what keyturn retired.
//!
//! Everything is derived from the existing journal records ([`RunRecord`]): a run's
//! `new_key_id`, its starting inventory (the keys it replaced), its plan-step events, and
//! two kinds of notes: `rollback` notes written by `keyturn rollback`, and
//! [`SIGHTING_STEP`] notes that fleet runs add to the run that created a key when they
//! first see that key used by a consumer ([`Sighting::note_detail`]).

use crate::journal::{RunRecord, RunStatus, StepPhase};
use crate::model::KeyStatus;
use crate::plan::Step;
use std::collections::HashMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The journal step name of a first-sighting note.
pub const SIGHTING_STEP: &str = "first-sighting";

/// What became of a key a run created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The run handed the key out (succeeded, failed after delivery, or was rolled back
    /// later): consumers may hold it.
    Delivered,
    /// The run failed before delivery and its clean-up deleted (or tried to delete) the
    /// key: it should not exist any more.
    CleanedUp,
    /// The run is still open (running or incomplete).
    Open,
}

/// A key a keyturn run created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedKey {
    pub access_key_id: String,
    pub run_id: String,
    pub created: Created,
    /// The keys that were Active when the run began: the keys this one replaces.
    pub replaced: Vec<String>,
    /// When STS accepted the new key (`verify-new-key` done), if the run verified it.
    pub verified_at: Option<OffsetDateTime>,
    /// The last plan step of the run: every call keyturn made with the new key
    /// (verification, delivery checks) happened before this.
    pub own_use_until: OffsetDateTime,
}

/// A key keyturn deactivated (and did not re-activate since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deactivation {
    pub access_key_id: String,
    pub run_id: String,
    pub at: OffsetDateTime,
}

/// A run that must be finished before anything else happens to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRun {
    pub run_id: String,
    /// `running` (interrupted) or `incomplete` (stopped with work left).
    pub status: String,
    /// Its plan creates a key (a rotation) rather than only retiring or deleting.
    pub creates_key: bool,
    /// Its plan deactivates a key.
    pub deactivates: bool,
}

/// The first time a fleet run saw a new key used by a consumer (not by keyturn itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub access_key_id: String,
    /// The run that created the key (the note is attached to it).
    pub run_id: String,
    /// IAM's last-used date of the new key at that sighting: the reference point of
    /// "the old key was not used since the new key's first sighting".
    pub used_at: OffsetDateTime,
    pub service: Option<String>,
    pub region: Option<String>,
}

impl Sighting {
    /// The journal note text; [`Sighting::parse_note`] reads it back.
    pub fn note_detail(&self) -> String {
        let mut s = format!(
            "{} first seen in use by a consumer: last used {}",
            self.access_key_id,
            self.used_at.format(&Rfc3339).unwrap_or_default()
        );
        if let Some(svc) = &self.service {
            s.push_str(&format!(" by {svc}"));
        }
        if let Some(r) = &self.region {
            s.push_str(&format!(" in {r}"));
        }
        s
    }

    /// Read a note written by [`Sighting::note_detail`] on run `run_id`, whose new key
    /// is `key_id`.
    pub fn parse_note(detail: &str, run_id: &str, key_id: &str) -> Option<Self> {
        let rest = detail.split_once(": last used ")?.1;
        let mut words = rest.split(' ');
        let used_at = OffsetDateTime::parse(words.next()?, &Rfc3339).ok()?;
        let (mut service, mut region) = (None, None);
        while let Some(w) = words.next() {
            match w {
                "by" => service = words.next().map(str::to_string),
                "in" => region = words.next().map(str::to_string),
                _ => {}
            }
        }
        Some(Self {
            access_key_id: key_id.to_string(),
            run_id: run_id.to_string(),
            used_at,
            service,
            region,
        })
    }
}

/// Everything the journal knows about one (account, user).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHistory {
    pub created: Vec<CreatedKey>,
    pub deactivated: Vec<Deactivation>,
    pub open_run: Option<OpenRun>,
    pub sightings: Vec<Sighting>,
}

/// `running` and the coming `incomplete` status are the runs `keyturn resume` finishes.
/// Compared by name so that the `incomplete` status counts as soon as the journal has it.
fn is_open(status: RunStatus) -> bool {
    matches!(status.as_str(), "running" | "incomplete")
}

impl KeyHistory {
    /// The history of one (account, user) from its runs (any order). Pass the runs of
    /// one user only; [`KeyHistory::index`] splits a whole journal.
    pub fn from_runs(runs: &[RunRecord]) -> Self {
        let mut runs: Vec<&RunRecord> = runs.iter().collect();
        runs.sort_by_key(|r| (r.meta.started_at, r.meta.run_id.clone()));
        let mut h = KeyHistory::default();
        for r in runs {
            h.add_run(r);
        }
        h
    }

    /// Split a journal's runs by (account id, user name).
    pub fn index(runs: &[RunRecord]) -> HashMap<(String, String), KeyHistory> {
        let mut by_user: HashMap<(String, String), Vec<RunRecord>> = HashMap::new();
        for r in runs {
            by_user
                .entry((r.meta.account.clone(), r.meta.user_name.clone()))
                .or_default()
                .push(r.clone());
        }
        by_user
            .into_iter()
            .map(|(k, v)| (k, KeyHistory::from_runs(&v)))
            .collect()
    }

    fn add_run(&mut self, r: &RunRecord) {
        let run_id = &r.meta.run_id;
        let steps = &r.meta.plan.steps;
        if is_open(r.status) && self.open_run.is_none() {
            self.open_run = Some(OpenRun {
                run_id: run_id.clone(),
                status: r.status.as_str().to_string(),
                creates_key: steps.iter().any(|s| matches!(s, Step::CreateKey { .. })),
                deactivates: steps
                    .iter()
                    .any(|s| matches!(s, Step::DeactivateOldKey { .. })),
            });
        }
        if let Some(id) = &r.new_key_id {
            let plan_times = r.steps.iter().filter(|s| s.index.is_some()).map(|s| s.at);
            let own_use_until = plan_times
                .max()
                .or(r.finished_at)
                .unwrap_or(r.meta.started_at);
            self.created.push(CreatedKey {
                access_key_id: id.clone(),
                run_id: run_id.clone(),
                created: if is_open(r.status) {
                    Created::Open
                } else if r.status == RunStatus::Failed {
                    Created::CleanedUp
                } else {
                    Created::Delivered
                },
                replaced: r
                    .meta
                    .inventory
                    .iter()
                    .filter(|k| k.status == KeyStatus::Active)
                    .map(|k| k.access_key_id.clone())
                    .collect(),
                verified_at: r
                    .steps
                    .iter()
                    .find(|s| s.step == "verify-new-key" && s.phase == StepPhase::Done)
                    .map(|s| s.at),
                own_use_until,
            });
        }
        for s in &r.steps {
            let plan_step = s.index.and_then(|i| steps.get(i));
            match (s.phase, plan_step) {
                (StepPhase::Done, Some(Step::DeactivateOldKey { access_key_id, .. })) => {
                    self.deactivate(access_key_id, run_id, s.at)
                }
                (StepPhase::Note, None) if s.step == "rollback" => {
                    if let Some(k) = s.detail.strip_prefix("re-activated ") {
                        self.deactivated.retain(|d| d.access_key_id != k.trim());
                    } else if let Some(k) = s.detail.strip_prefix("deactivated ") {
                        self.deactivate(k.trim(), run_id, s.at);
                    }
                }
                (StepPhase::Note, None) if s.step == SIGHTING_STEP => {
                    let seen = r
                        .new_key_id
                        .as_deref()
                        .and_then(|k| Sighting::parse_note(&s.detail, run_id, k));
                    if let Some(seen) = seen {
                        if self.sighting(&seen.access_key_id).is_none() {
                            self.sightings.push(seen);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn deactivate(&mut self, key: &str, run_id: &str, at: OffsetDateTime) {
        self.deactivated.retain(|d| d.access_key_id != key);
        self.deactivated.push(Deactivation {
            access_key_id: key.to_string(),
            run_id: run_id.to_string(),
            at,
        });
    }

    /// The run that created `key`, if keyturn did.
    pub fn created(&self, key: &str) -> Option<&CreatedKey> {
        self.created.iter().rev().find(|c| c.access_key_id == key)
    }

    /// When keyturn deactivated `key` (the latest time, unless re-activated since).
    pub fn deactivation(&self, key: &str) -> Option<&Deactivation> {
        self.deactivated.iter().find(|d| d.access_key_id == key)
    }

    /// The first sighting of `key` in use by a consumer.
    pub fn sighting(&self, key: &str) -> Option<&Sighting> {
        self.sightings.iter().find(|s| s.access_key_id == key)
    }

    /// Add a sighting the planner asked to record (what the journal will hold after the
    /// runner wrote the note).
    pub fn record(&mut self, s: Sighting) {
        if self.sighting(&s.access_key_id).is_none() {
            self.sightings.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{RemoteMeta, RunMeta, StepRecord};
    use crate::model::AccessKeyInfo;
    use crate::plan::{Mode, Plan, PlanOptions};
    use time::macros::datetime;
    use time::Duration;

    const T0: OffsetDateTime = datetime!(2026-11-01 09:00 UTC);

    fn key(id: &str, status: KeyStatus) -> AccessKeyInfo {
        AccessKeyInfo {
            access_key_id: id.into(),
            status,
            create_date: T0 - Duration::days(80),
            usage: Default::default(),
        }
    }

    fn run(id: &str, start: OffsetDateTime, status: RunStatus, steps: Vec<Step>) -> RunRecord {
        RunRecord {
            meta: RunMeta {
                run_id: id.into(),
                account: "111111111111".into(),
                user_name: "ci".into(),
                mode: Mode::User,
                options: PlanOptions::default(),
                plan: Plan {
                    user_name: "ci".into(),
                    steps,
                },
                inventory: vec![
                    key("OLD", KeyStatus::Active),
                    key("GONE", KeyStatus::Inactive),
                ],
                sinks: vec![],
                output: "env".into(),
                remote: RemoteMeta::default(),
                verify_timeout_secs: 60,
                profile: None,
                mfa_serial: None,
                started_at: start,
            },
            status,
            new_key_id: None,
            new_key_created: None,
            holds_secret: false,
            finished_at: None,
            error: None,
            steps: vec![],
        }
    }

    fn ev(
        seq: u32,
        index: Option<usize>,
        step: &str,
        phase: StepPhase,
        detail: &str,
        at: OffsetDateTime,
    ) -> StepRecord {
        StepRecord {
            seq,
            index,
            step: step.into(),
            access_key_id: None,
            phase,
            detail: detail.into(),
            at,
        }
    }

    fn rotation_steps() -> Vec<Step> {
        vec![
            Step::FreeSlot {
                access_key_id: "GONE".into(),
                reason: String::new(),
            },
            Step::CreateKey {
                reason: String::new(),
            },
            Step::VerifyNewKey {
                reason: String::new(),
            },
            Step::DeactivateOldKey {
                access_key_id: "OLD".into(),
                reason: String::new(),
            },
        ]
    }

    /// A rotation OLD -> NEW that verified at T0+1m and deactivated OLD at T0+2m.
    fn rotation(status: RunStatus) -> RunRecord {
        let mut r = run("R1", T0, status, rotation_steps());
        r.new_key_id = Some("NEW".into());
        r.new_key_created = Some(T0);
        r.finished_at = Some(T0 + Duration::minutes(3));
        r.steps = vec![
            ev(1, Some(0), "free-slot", StepPhase::Intent, "", T0),
            ev(2, Some(0), "free-slot", StepPhase::Done, "deleted GONE", T0),
            ev(3, Some(1), "create-key", StepPhase::Intent, "", T0),
            ev(4, Some(1), "create-key", StepPhase::Done, "created NEW", T0),
            ev(5, Some(2), "verify-new-key", StepPhase::Intent, "", T0),
            ev(
                6,
                Some(2),
                "verify-new-key",
                StepPhase::Done,
                "ok",
                T0 + Duration::minutes(1),
            ),
            ev(
                7,
                Some(3),
                "deactivate-old-key",
                StepPhase::Intent,
                "",
                T0 + Duration::minutes(1),
            ),
            ev(
                8,
                Some(3),
                "deactivate-old-key",
                StepPhase::Done,
                "deactivated OLD",
                T0 + Duration::minutes(2),
            ),
            ev(
                9,
                None,
                "deliver",
                StepPhase::Note,
                "erased",
                T0 + Duration::minutes(2),
            ),
        ];
        r
    }

    #[test]
    fn a_finished_rotation_records_created_and_deactivated_keys() {
        let h = KeyHistory::from_runs(&[rotation(RunStatus::Succeeded)]);
        let c = h.created("NEW").unwrap();
        assert_eq!(c.run_id, "R1");
        assert_eq!(c.created, Created::Delivered);
        assert_eq!(c.replaced, ["OLD"]);
        assert_eq!(c.verified_at, Some(T0 + Duration::minutes(1)));
        assert_eq!(c.own_use_until, T0 + Duration::minutes(2));
        let d = h.deactivation("OLD").unwrap();
        assert_eq!((d.run_id.as_str(), d.at), ("R1", T0 + Duration::minutes(2)));
        assert!(h.deactivation("NEW").is_none() && h.created("OLD").is_none());
        assert!(h.open_run.is_none());
    }

    #[test]
    fn failed_and_open_runs_are_told_apart() {
        let h = KeyHistory::from_runs(&[rotation(RunStatus::Failed)]);
        assert_eq!(h.created("NEW").unwrap().created, Created::CleanedUp);
        assert!(h.open_run.is_none());
        let h = KeyHistory::from_runs(&[rotation(RunStatus::FailedAfterDelivery)]);
        assert_eq!(h.created("NEW").unwrap().created, Created::Delivered);
        let h = KeyHistory::from_runs(&[rotation(RunStatus::Running)]);
        assert_eq!(h.created("NEW").unwrap().created, Created::Open);
        let open = h.open_run.unwrap();
        assert_eq!(open.run_id, "R1");
        assert_eq!(open.status, "running");
        assert!(open.creates_key && open.deactivates);
    }

    #[test]
    fn a_failed_deactivation_is_not_a_deactivation() {
        let mut r = rotation(RunStatus::FailedAfterDelivery);
        r.steps.retain(|s| s.seq != 8);
        r.steps.push(ev(
            8,
            Some(3),
            "deactivate-old-key",
            StepPhase::Failed,
            "AccessDenied",
            T0,
        ));
        let h = KeyHistory::from_runs(&[r]);
        assert!(h.deactivation("OLD").is_none());
    }

    #[test]
    fn rollback_notes_undo_and_add_deactivations() {
        let mut r = rotation(RunStatus::RolledBack);
        let later = T0 + Duration::days(1);
        r.steps.push(ev(
            10,
            None,
            "rollback",
            StepPhase::Note,
            "re-activated OLD",
            later,
        ));
        r.steps.push(ev(
            11,
            None,
            "rollback",
            StepPhase::Note,
            "deactivated NEW",
            later,
        ));
        let h = KeyHistory::from_runs(&[r]);
        assert!(
            h.deactivation("OLD").is_none(),
            "re-activated by the rollback"
        );
        assert_eq!(h.deactivation("NEW").unwrap().at, later);
        assert_eq!(h.created("NEW").unwrap().created, Created::Delivered);
    }

    #[test]
    fn sightings_round_trip_through_the_journal_note() {
        let s = Sighting {
            access_key_id: "NEW".into(),
            run_id: "R1".into(),
            used_at: T0 + Duration::hours(30),
            service: Some("s3".into()),
            region: Some("eu-west-1".into()),
        };
        let detail = s.note_detail();
        assert_eq!(
            detail,
            "NEW first seen in use by a consumer: last used 2026-11-02T15:00:00Z by s3 in eu-west-1"
        );
        assert_eq!(Sighting::parse_note(&detail, "R1", "NEW"), Some(s.clone()));
        let bare = Sighting {
            service: None,
            region: None,
            ..s.clone()
        };
        assert_eq!(
            Sighting::parse_note(&bare.note_detail(), "R1", "NEW"),
            Some(bare)
        );
        assert_eq!(Sighting::parse_note("garbage", "R1", "NEW"), None);

        let mut r = rotation(RunStatus::Succeeded);
        r.steps.push(ev(
            10,
            None,
            SIGHTING_STEP,
            StepPhase::Note,
            &detail,
            T0 + Duration::days(2),
        ));
        // A second note (another host raced) does not move the first sighting.
        let later = Sighting {
            used_at: T0 + Duration::days(3),
            ..s.clone()
        };
        r.steps.push(ev(
            11,
            None,
            SIGHTING_STEP,
            StepPhase::Note,
            &later.note_detail(),
            T0 + Duration::days(3),
        ));
        let h = KeyHistory::from_runs(&[r]);
        assert_eq!(h.sighting("NEW"), Some(&s));
        assert_eq!(h.sightings.len(), 1);
        // Notes do not count as keyturn's own use of the new key.
        assert_eq!(
            h.created("NEW").unwrap().own_use_until,
            T0 + Duration::minutes(2)
        );
    }

    #[test]
    fn later_runs_extend_the_history() {
        let first = rotation(RunStatus::Succeeded);
        // 80 days later: NEW is replaced by NEWER; OLD (Inactive) is freed first.
        let t1 = T0 + Duration::days(80);
        let mut second = run("R2", t1, RunStatus::Succeeded, rotation_steps());
        second.meta.inventory = vec![
            key("NEW", KeyStatus::Active),
            key("OLD", KeyStatus::Inactive),
        ];
        second.new_key_id = Some("NEWER".into());
        second.steps = vec![ev(
            1,
            Some(1),
            "create-key",
            StepPhase::Done,
            "created NEWER",
            t1,
        )];
        // A retire-only run deactivating NEW.
        let t2 = t1 + Duration::days(2);
        let mut retire = run(
            "R3",
            t2,
            RunStatus::Succeeded,
            vec![Step::DeactivateOldKey {
                access_key_id: "NEW".into(),
                reason: String::new(),
            }],
        );
        retire.steps = vec![ev(
            1,
            Some(0),
            "deactivate-old-key",
            StepPhase::Done,
            "deactivated NEW",
            t2,
        )];
        // Given newest first, as the journal lists them.
        let h = KeyHistory::from_runs(&[retire, second, first]);
        assert_eq!(h.created("NEWER").unwrap().replaced, ["NEW"]);
        assert_eq!(h.created("NEW").unwrap().run_id, "R1");
        assert_eq!(h.deactivation("NEW").unwrap().run_id, "R3");
        assert_eq!(h.deactivation("OLD").unwrap().run_id, "R1");
        assert_eq!(h.created.len(), 2);
    }

    #[test]
    fn index_splits_by_account_and_user() {
        let a = rotation(RunStatus::Succeeded);
        let mut b = rotation(RunStatus::Running);
        b.meta.run_id = "R9".into();
        b.meta.account = "222222222222".into();
        let mut c = rotation(RunStatus::Succeeded);
        c.meta.user_name = "other".into();
        let idx = KeyHistory::index(&[a, b, c]);
        assert_eq!(idx.len(), 3);
        assert!(idx[&("111111111111".to_string(), "ci".to_string())]
            .open_run
            .is_none());
        assert_eq!(
            idx[&("222222222222".to_string(), "ci".to_string())]
                .open_run
                .as_ref()
                .unwrap()
                .run_id,
            "R9"
        );
    }
}
