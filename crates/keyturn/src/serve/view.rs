//! What the pages and the JSON API show, computed from the runner's dry-run report,
//! IAM's key inventory and the journal: pure functions over plain data, so every
//! column of the fleet page is unit-tested without a server or AWS.

use crate::fleet::policy::Lifecycle;
use crate::fleet::report::{FleetReport, Outcome, UserReport};
use crate::journal::{RunRecord, RunStatus, StepPhase};
use crate::model::{AccessKeyInfo, KeyStatus, Usage};
use crate::secret::{mask_key_id, mask_key_ids_in};
use serde::Serialize;
use time::{Date, Duration, OffsetDateTime};

/// One (account, user) of the fleet page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FleetRow {
    pub account: String,
    pub account_name: String,
    pub user_name: String,
    pub rotation: String,
    /// What the fleet planner would do now (the runner's dry run).
    pub outcome: Outcome,
    pub reason: String,
    /// `ok` with the days left until the rotation is due, for the badge ("due in N days").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_in_days: Option<i64>,
    /// Whole days of the newest Active key (none: no Active key, or keys unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_key_age_days: Option<i64>,
    pub max_age_days: u32,
    /// The day the newest Active key becomes due for rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_due: Option<Date>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    /// The rotation block's sinks and how the last run left each.
    pub sinks: Vec<SinkState>,
    /// Why IAM's key inventory could not be read (the other columns still show).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_error: Option<String>,
}

impl FleetRow {
    /// The badge text of a planned outcome: a run *would* rotate, retire or delete, so
    /// those read `due`, `retire due`, `delete due`; `ok` with a known key age reads `due
    /// in N days`; the others are the outcome's own word.
    pub fn badge(&self) -> String {
        match (self.outcome, self.due_in_days) {
            (Outcome::Rotated, _) => "due".into(),
            (Outcome::Retired, _) => "retire due".into(),
            (Outcome::Deleted, _) => "delete due".into(),
            (Outcome::Ok, Some(n)) => format!("due in {n} day{}", if n == 1 { "" } else { "s" }),
            (o, _) => o.to_string(),
        }
    }
}

/// The latest journal run of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LastRun {
    pub run_id: String,
    pub status: RunStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A sink of the user's rotation block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SinkState {
    pub name: String,
    /// `delivered`, `verified`, `failed`, `not delivered` or `never` (no run yet).
    pub state: String,
}

/// One key of the user page: the id masked but for its last 4 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyView {
    pub access_key_id: String,
    pub status: KeyStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub age_days: i64,
    /// `never`, `unknown` or an RFC 3339 date.
    pub last_used: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_region: Option<String>,
}

/// A journal run as the pages show it (key ids masked in every text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunView {
    pub run_id: String,
    pub account: String,
    pub user_name: String,
    pub status: RunStatus,
    /// `running` or `incomplete`: `keyturn resume` (the Resume button) finishes it.
    pub resumable: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StepView {
    pub step: String,
    pub phase: StepPhase,
    pub detail: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

pub fn key_view(k: &AccessKeyInfo, now: OffsetDateTime) -> KeyView {
    let (last_used, service, region) = match &k.usage {
        Usage::Unknown => ("unknown".to_string(), None, None),
        Usage::Never => ("never".to_string(), None, None),
        Usage::Used(u) => (
            crate::printer::rfc3339(u.date),
            u.service.clone(),
            u.region.clone(),
        ),
    };
    KeyView {
        access_key_id: mask_key_id(&k.access_key_id),
        status: k.status,
        created: k.create_date,
        age_days: k.age_days(now),
        last_used,
        last_used_service: service,
        last_used_region: region,
    }
}

pub fn run_view(r: &RunRecord) -> RunView {
    RunView {
        run_id: r.meta.run_id.clone(),
        account: r.meta.account.clone(),
        user_name: r.meta.user_name.clone(),
        status: r.status,
        resumable: matches!(r.status, RunStatus::Running | RunStatus::Incomplete),
        started_at: r.meta.started_at,
        finished_at: r.finished_at,
        new_access_key_id: r.new_key_id.as_deref().map(mask_key_id),
        error: r.error.as_deref().map(mask_key_ids_in),
        steps: r
            .steps
            .iter()
            .map(|s| StepView {
                step: s.step.clone(),
                phase: s.phase,
                detail: mask_key_ids_in(&s.detail),
                at: s.at,
            })
            .collect(),
    }
}

/// The Runs page order: interrupted (resumable) runs first, then newest first.
pub fn order_runs(runs: &mut [RunView]) {
    runs.sort_by(|a, b| {
        b.resumable
            .cmp(&a.resumable)
            .then(b.started_at.cmp(&a.started_at))
            .then(b.run_id.cmp(&a.run_id))
    });
}

/// How the last run left one sink, from its journal steps (`deliver` / `verify-delivery`
/// steps carry the sink's name in their detail or step text).
fn sink_state(run: Option<&RunRecord>, sink: &str) -> String {
    let Some(run) = run else {
        return "never".into();
    };
    let mut state = "not delivered";
    for s in &run.steps {
        let names_sink = s.detail.contains(sink) || s.step.contains(sink);
        if !names_sink {
            continue;
        }
        match (s.step.as_str(), s.phase) {
            (_, StepPhase::Failed) => state = "failed",
            (st, StepPhase::Done) if st.starts_with("verify-delivery") => state = "verified",
            (st, StepPhase::Done) if st.starts_with("deliver") && state != "verified" => {
                state = "delivered"
            }
            _ => {}
        }
    }
    state.into()
}

/// The newest run of (account, user) in `runs` (any order).
pub fn last_run_of<'r>(runs: &'r [RunRecord], account: &str, user: &str) -> Option<&'r RunRecord> {
    runs.iter()
        .filter(|r| r.meta.account == account && r.meta.user_name.eq_ignore_ascii_case(user))
        .max_by(|a, b| {
            a.meta
                .started_at
                .cmp(&b.meta.started_at)
                .then(a.meta.run_id.cmp(&b.meta.run_id))
        })
}

/// Inputs of one fleet row besides the planned report.
pub struct RowFacts<'a> {
    pub account: &'a str,
    pub account_name: &'a str,
    pub planned: &'a UserReport,
    pub lifecycle: Option<&'a Lifecycle>,
    pub sinks: &'a [String],
    /// IAM's keys, or why they could not be read.
    pub keys: std::result::Result<&'a [AccessKeyInfo], String>,
    pub runs: &'a [RunRecord],
}

pub fn fleet_row(f: RowFacts<'_>, now: OffsetDateTime) -> FleetRow {
    let (max_age, rotate_at) = f
        .lifecycle
        .map(|l| (l.max_age_days, l.rotate_at_days()))
        .unwrap_or((90, 76));
    let (newest, keys_error) = match &f.keys {
        Ok(keys) => (
            keys.iter()
                .filter(|k| k.status == KeyStatus::Active)
                .max_by_key(|k| k.create_date),
            None,
        ),
        Err(e) => (None, Some(mask_key_ids_in(e))),
    };
    let age = newest.map(|k| k.age_days(now));
    let next_due = newest.map(|k| (k.create_date + Duration::days(rotate_at as i64)).date());
    let due_in_days = age.map(|a| (rotate_at as i64 - a).max(0));
    let last = last_run_of(f.runs, f.account, &f.planned.user_name);
    FleetRow {
        account: f.account.to_string(),
        account_name: f.account_name.to_string(),
        user_name: f.planned.user_name.clone(),
        rotation: f.planned.rotation.clone(),
        outcome: f.planned.outcome,
        reason: mask_key_ids_in(&f.planned.reason),
        due_in_days,
        newest_key_age_days: age,
        max_age_days: max_age,
        next_due,
        last_run: last.map(|r| LastRun {
            run_id: r.meta.run_id.clone(),
            status: r.status,
            at: r.finished_at.unwrap_or(r.meta.started_at),
            error: r.error.as_deref().map(mask_key_ids_in),
        }),
        sinks: f
            .sinks
            .iter()
            .map(|s| SinkState {
                name: s.clone(),
                state: sink_state(last, s),
            })
            .collect(),
        keys_error,
    }
}

/// The fleet page's filters (query string `account`, `outcome`, `sort`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Filter {
    /// Account id or name; empty = every account.
    #[serde(default)]
    pub account: String,
    /// An outcome word (`rotated`, `waiting`, ...); empty = every outcome.
    #[serde(default)]
    pub outcome: String,
    /// `age` (oldest key first), `-age` (newest first); else account, user.
    #[serde(default)]
    pub sort: String,
}

pub fn filter_rows(rows: &[FleetRow], f: &Filter) -> Vec<FleetRow> {
    let mut out: Vec<FleetRow> = rows
        .iter()
        .filter(|r| f.account.is_empty() || r.account == f.account || r.account_name == f.account)
        .filter(|r| f.outcome.is_empty() || r.outcome.as_str() == f.outcome)
        .cloned()
        .collect();
    match f.sort.as_str() {
        "age" => out.sort_by_key(|r| std::cmp::Reverse(r.newest_key_age_days)),
        "-age" => out.sort_by_key(|r| r.newest_key_age_days),
        _ => out.sort_by(|a, b| (&a.account, &a.user_name).cmp(&(&b.account, &b.user_name))),
    }
    out
}

/// Every (account id, account name, user report) of a report.
pub fn planned_users(report: &FleetReport) -> impl Iterator<Item = (&str, &str, &UserReport)> {
    report.accounts.iter().flat_map(|a| {
        a.users
            .iter()
            .map(move |u| (a.account.as_str(), a.name.as_str(), u))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::policy::Retire;
    use crate::journal::{RunMeta, StepRecord};
    use crate::model::LastUsed;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-01 12:00 UTC);

    fn key(id: &str, status: KeyStatus, days: i64) -> AccessKeyInfo {
        AccessKeyInfo {
            access_key_id: id.into(),
            status,
            create_date: NOW - Duration::days(days),
            usage: Usage::Never,
        }
    }

    fn planned(user: &str, outcome: Outcome) -> UserReport {
        UserReport {
            user_name: user.into(),
            rotation: "bots".into(),
            outcome,
            reason: "newest key AKIAIOSFODNN7EXAMPLE is 80 days old".into(),
            new_access_key_id: None,
            retired_access_key_id: None,
            sinks: None,
            run_id: None,
        }
    }

    fn lifecycle() -> Lifecycle {
        Lifecycle {
            max_age_days: 90,
            rotate_before_days: 14,
            retire: Retire::WhenSwitched,
            grace_days: 7,
            delete_after_days: 7,
            delete_inactive: false,
            usage: crate::fleet::policy::UsageSource::LastUsed,
            quiet_hours: 24,
        }
    }

    fn run(id: &str, user: &str, status: RunStatus, started: OffsetDateTime) -> RunRecord {
        let meta = RunMeta {
            run_id: id.into(),
            account: "111111111111".into(),
            user_name: user.into(),
            mode: crate::plan::Mode::User,
            options: crate::plan::PlanOptions::default(),
            plan: crate::plan::Plan {
                user_name: user.into(),
                steps: vec![],
            },
            inventory: vec![],
            sinks: vec![],
            output: "json".into(),
            remote: crate::journal::RemoteMeta::default(),
            verify_timeout_secs: 60,
            profile: None,
            mfa_serial: None,
            started_at: started,
        };
        RunRecord {
            meta,
            status,
            new_key_id: None,
            new_key_created: None,
            holds_secret: false,
            finished_at: None,
            error: None,
            steps: vec![],
        }
    }

    fn row(keys: &[AccessKeyInfo], runs: &[RunRecord], outcome: Outcome) -> FleetRow {
        let p = planned("ci-bot", outcome);
        let l = lifecycle();
        let sinks = vec!["ci-env".to_string()];
        fleet_row(
            RowFacts {
                account: "111111111111",
                account_name: "prod",
                planned: &p,
                lifecycle: Some(&l),
                sinks: &sinks,
                keys: Ok(keys),
                runs,
            },
            NOW,
        )
    }

    #[test]
    fn newest_active_key_gives_age_next_due_and_days_left() {
        let keys = [
            key("AKIAOLDEROLDEROLDER1", KeyStatus::Inactive, 5),
            key("AKIAACTIVEACTIVEAC01", KeyStatus::Active, 30),
            key("AKIAACTIVEACTIVEAC02", KeyStatus::Active, 60),
        ];
        let r = row(&keys, &[], Outcome::Ok);
        assert_eq!(r.newest_key_age_days, Some(30));
        assert_eq!(r.due_in_days, Some(46));
        assert_eq!(r.next_due, Some((NOW + Duration::days(46)).date()));
        assert_eq!(r.badge(), "due in 46 days");
        assert_eq!(r.max_age_days, 90);
        // The reason's key id is masked.
        assert!(r.reason.contains("****************MPLE"), "{}", r.reason);
        assert_eq!(r.sinks[0].state, "never");
    }

    #[test]
    fn overdue_and_unknown_keys() {
        let keys = [key("AKIAACTIVEACTIVEAC01", KeyStatus::Active, 100)];
        let r = row(&keys, &[], Outcome::Rotated);
        assert_eq!(r.due_in_days, Some(0));
        assert_eq!(r.badge(), "due");
        let r = row(&[], &[], Outcome::Rotated);
        assert_eq!(r.newest_key_age_days, None);
        assert_eq!(r.next_due, None);
    }

    #[test]
    fn last_run_and_sink_states_come_from_the_newest_run() {
        let mut old = run("r1", "ci-bot", RunStatus::Failed, NOW - Duration::days(3));
        old.steps.push(StepRecord {
            seq: 1,
            index: Some(3),
            step: "deliver".into(),
            access_key_id: None,
            phase: StepPhase::Failed,
            detail: "ci-env: 500".into(),
            at: NOW - Duration::days(3),
        });
        let mut new = run(
            "r2",
            "CI-BOT",
            RunStatus::Succeeded,
            NOW - Duration::days(1),
        );
        for (step, seq) in [("deliver", 1), ("verify-delivery", 2)] {
            new.steps.push(StepRecord {
                seq,
                index: Some(seq as usize),
                step: step.into(),
                access_key_id: None,
                phase: StepPhase::Done,
                detail: "ci-env".into(),
                at: NOW - Duration::days(1),
            });
        }
        let other = run("r3", "someone-else", RunStatus::Running, NOW);
        let runs = [old.clone(), new, other];
        let r = row(&[], &runs, Outcome::Ok);
        let last = r.last_run.unwrap();
        assert_eq!(last.run_id, "r2");
        assert_eq!(last.status, RunStatus::Succeeded);
        assert_eq!(r.sinks[0].state, "verified");
        let r = row(&[], &[old], Outcome::Failed);
        assert_eq!(r.sinks[0].state, "failed");
    }

    #[test]
    fn key_views_mask_ids_and_show_last_use() {
        let mut k = key("AKIAIOSFODNN7EXAMPLE", KeyStatus::Active, 10);
        k.usage = Usage::Used(LastUsed {
            date: NOW - Duration::hours(2),
            service: Some("s3".into()),
            region: Some("eu-west-1".into()),
        });
        let v = key_view(&k, NOW);
        assert_eq!(v.access_key_id, "****************MPLE");
        assert_eq!(v.age_days, 10);
        assert_eq!(v.last_used_service.as_deref(), Some("s3"));
        assert_eq!(v.last_used, "2026-12-01T10:00:00Z");
    }

    #[test]
    fn runs_interrupted_first_then_newest() {
        let mut v: Vec<RunView> = [
            run("a", "u", RunStatus::Succeeded, NOW - Duration::days(1)),
            run("b", "u", RunStatus::Running, NOW - Duration::days(5)),
            run("c", "u", RunStatus::Failed, NOW),
            run("d", "u", RunStatus::Incomplete, NOW - Duration::days(2)),
        ]
        .iter()
        .map(run_view)
        .collect();
        order_runs(&mut v);
        let ids: Vec<&str> = v.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["d", "b", "c", "a"]);
    }

    #[test]
    fn filters_and_sorts() {
        let mk = |user: &str, outcome, age| FleetRow {
            user_name: user.into(),
            outcome,
            newest_key_age_days: age,
            ..row(&[], &[], Outcome::Ok)
        };
        let rows = vec![
            mk("b", Outcome::Ok, Some(10)),
            mk("a", Outcome::Rotated, Some(80)),
            mk("c", Outcome::Ok, None),
        ];
        let users = |f: &Filter| -> Vec<String> {
            filter_rows(&rows, f)
                .into_iter()
                .map(|r| r.user_name)
                .collect()
        };
        assert_eq!(users(&Filter::default()), ["a", "b", "c"]);
        let by_age = Filter {
            sort: "age".into(),
            ..Filter::default()
        };
        assert_eq!(users(&by_age), ["a", "b", "c"]);
        let ok = Filter {
            outcome: "ok".into(),
            ..Filter::default()
        };
        assert_eq!(users(&ok), ["b", "c"]);
        let prod = Filter {
            account: "prod".into(),
            ..Filter::default()
        };
        assert_eq!(users(&prod).len(), 3);
        let other = Filter {
            account: "222222222222".into(),
            ..Filter::default()
        };
        assert!(users(&other).is_empty());
    }
}
