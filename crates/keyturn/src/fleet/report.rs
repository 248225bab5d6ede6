//! The report of a fleet run: what happened to every selected user of every account,
//! and why. The same struct is the `--dry-run` plan, the `--output json` document, the
//! `--report FILE` contents and what the Lambda handler returns; it never holds a
//! secret (key ids only). Schema version 1 is documented in `docs/fleet.md`.

use crate::error::exit;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use time::OffsetDateTime;

/// Version of the JSON report (`SchemaVersion`); bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// What a fleet run did for one user (exact words, used in the report and the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A new key was created, verified and delivered.
    Rotated,
    /// The replaced key was deactivated.
    Retired,
    /// A key keyturn deactivated earlier was deleted.
    Deleted,
    /// Nothing to do yet (consumers switching, deletion window); a later run continues.
    Waiting,
    /// Within policy.
    Ok,
    /// keyturn will not act; a human must (the reason says what to do).
    NeedsAttention,
    /// The step was attempted and failed.
    Failed,
    /// Not attempted: the canary failed or the failure budget was spent.
    NotAttempted,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Rotated,
        Outcome::Retired,
        Outcome::Deleted,
        Outcome::Waiting,
        Outcome::Ok,
        Outcome::NeedsAttention,
        Outcome::Failed,
        Outcome::NotAttempted,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Rotated => "rotated",
            Outcome::Retired => "retired",
            Outcome::Deleted => "deleted",
            Outcome::Waiting => "waiting",
            Outcome::Ok => "ok",
            Outcome::NeedsAttention => "needs-attention",
            Outcome::Failed => "failed",
            Outcome::NotAttempted => "not-attempted",
        }
    }

    /// Outcomes that make the run exit 3.
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            Outcome::NeedsAttention | Outcome::Failed | Outcome::NotAttempted
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sink a new key went to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SinkDelivery {
    pub name: String,
    pub delivered: bool,
}

/// One selected user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UserReport {
    pub user_name: String,
    /// The `[[rotations]]` block that selected the user.
    pub rotation: String,
    pub outcome: Outcome,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinks: Option<Vec<SinkDelivery>>,
    /// The journal run that changed keys (`keyturn history`, `keyturn resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// One account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccountReport {
    /// The 12-digit id (empty when it could not be learned).
    pub account: String,
    /// The `[[accounts]]` entry name, or the Organization's account name.
    pub name: String,
    /// Why the account could not be reached or listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub users: Vec<UserReport>,
}

impl AccountReport {
    /// The account was never reached: an error and no user.
    pub fn unreachable(&self) -> bool {
        self.error.is_some() && self.users.is_empty()
    }
}

/// Users per outcome, every outcome present (0 included), in [`Outcome::ALL`] order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary(pub BTreeMap<Outcome, usize>);

impl Summary {
    pub fn of<'a>(users: impl IntoIterator<Item = &'a UserReport>) -> Self {
        let mut m: BTreeMap<Outcome, usize> = Outcome::ALL.iter().map(|o| (*o, 0)).collect();
        for u in users {
            *m.entry(u.outcome).or_default() += 1;
        }
        Summary(m)
    }

    pub fn get(&self, o: Outcome) -> usize {
        self.0.get(&o).copied().unwrap_or(0)
    }
}

/// The whole fleet run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FleetReport {
    pub schema_version: u32,
    pub dry_run: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    pub accounts: Vec<AccountReport>,
    pub summary: Summary,
}

impl FleetReport {
    /// A report with its summary computed from `accounts`.
    pub fn new(
        dry_run: bool,
        started_at: OffsetDateTime,
        finished_at: OffsetDateTime,
        accounts: Vec<AccountReport>,
    ) -> Self {
        let summary = Summary::of(accounts.iter().flat_map(|a| &a.users));
        Self {
            schema_version: SCHEMA_VERSION,
            dry_run,
            started_at,
            finished_at,
            accounts,
            summary,
        }
    }

    /// The process exit code (issue 15): 1 when no account could be reached; 3 when a
    /// user is `needs-attention`, `failed` or `not-attempted`, or an account could not be
    /// reached while others were; else 0 (every user `ok`, `rotated`, `retired`,
    /// `deleted` or `waiting`).
    pub fn exit_code(&self) -> i32 {
        if !self.accounts.is_empty() && self.accounts.iter().all(AccountReport::unreachable) {
            return exit::FAILURE;
        }
        let problem = self
            .accounts
            .iter()
            .any(|a| a.error.is_some() || a.users.iter().any(|u| u.outcome.is_problem()));
        if problem {
            exit::FINDINGS
        } else {
            exit::SUCCESS
        }
    }

    /// The summary table: per account the users per outcome, then one line per user
    /// that is not `ok`, then account errors.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "keyturn run{}: {} account{}, {} selected user{}",
            if self.dry_run {
                " --dry-run (nothing was changed; outcomes are what a run would do)"
            } else {
                ""
            },
            self.accounts.len(),
            plural(self.accounts.len()),
            self.summary.0.values().sum::<usize>(),
            plural(self.summary.0.values().sum::<usize>())
        );
        let mut counts = new_table();
        let mut header = vec!["Account".to_string(), "Name".to_string()];
        header.extend(Outcome::ALL.iter().map(|o| o.to_string()));
        counts.set_header(header);
        for a in &self.accounts {
            let s = Summary::of(&a.users);
            let mut row = vec![
                if a.account.is_empty() {
                    "?".to_string()
                } else {
                    a.account.clone()
                },
                a.name.clone(),
            ];
            row.extend(Outcome::ALL.iter().map(|o| s.get(*o).to_string()));
            counts.add_row(row);
        }
        if self.accounts.len() > 1 {
            let mut row = vec!["total".to_string(), String::new()];
            row.extend(
                Outcome::ALL
                    .iter()
                    .map(|o| self.summary.get(*o).to_string()),
            );
            counts.add_row(row);
        }
        let _ = writeln!(out, "{counts}");
        let not_ok: Vec<(&AccountReport, &UserReport)> = self
            .accounts
            .iter()
            .flat_map(|a| a.users.iter().map(move |u| (a, u)))
            .filter(|(_, u)| u.outcome != Outcome::Ok)
            .collect();
        if !not_ok.is_empty() {
            let mut users = new_table();
            users.set_header(vec!["Account", "User", "Rotation", "Outcome", "Reason"]);
            for (a, u) in not_ok {
                users.add_row(vec![
                    a.name.as_str(),
                    u.user_name.as_str(),
                    u.rotation.as_str(),
                    u.outcome.as_str(),
                    u.reason.as_str(),
                ]);
            }
            let _ = writeln!(out, "{users}");
        }
        for a in self.accounts.iter().filter(|a| a.error.is_some()) {
            let _ = writeln!(
                out,
                "account {} ({}): {}",
                if a.account.is_empty() {
                    "?"
                } else {
                    &a.account
                },
                a.name,
                a.error.as_deref().unwrap_or_default()
            );
        }
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn new_table() -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn user(name: &str, outcome: Outcome, reason: &str) -> UserReport {
        UserReport {
            user_name: name.into(),
            rotation: "bots".into(),
            outcome,
            reason: reason.into(),
            new_access_key_id: None,
            retired_access_key_id: None,
            sinks: None,
            run_id: None,
        }
    }

    fn account(id: &str, name: &str, users: Vec<UserReport>) -> AccountReport {
        AccountReport {
            account: id.into(),
            name: name.into(),
            error: None,
            users,
        }
    }

    fn report(accounts: Vec<AccountReport>) -> FleetReport {
        FleetReport::new(
            false,
            datetime!(2026-11-21 03:00 UTC),
            datetime!(2026-11-21 03:02:30 UTC),
            accounts,
        )
    }

    #[test]
    fn outcomes_have_their_exact_words() {
        let words: Vec<String> = Outcome::ALL
            .iter()
            .map(|o| {
                serde_json::to_value(o)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            words,
            [
                "rotated",
                "retired",
                "deleted",
                "waiting",
                "ok",
                "needs-attention",
                "failed",
                "not-attempted"
            ]
        );
        for o in Outcome::ALL {
            assert_eq!(
                o.to_string(),
                serde_json::to_value(o).unwrap().as_str().unwrap()
            );
        }
    }

    #[test]
    fn json_follows_schema_version_1() {
        let mut rotated = user(
            "ci-1",
            Outcome::Rotated,
            "newest Active key AKIAOLD is 80 days old",
        );
        rotated.new_access_key_id = Some("AKIANEW".into());
        rotated.sinks = Some(vec![SinkDelivery {
            name: "ci-aws".into(),
            delivered: true,
        }]);
        rotated.run_id = Some("20261121T030000Z-abcdef".into());
        let mut retired = user("ci-2", Outcome::Retired, "consumers switched");
        retired.retired_access_key_id = Some("AKIARET".into());
        let mut down = account("222222222222", "dev", vec![]);
        down.error = Some("sts:AssumeRole failed: AccessDenied".into());
        let r = report(vec![
            account(
                "111111111111",
                "prod",
                vec![rotated, retired, user("ci-3", Outcome::Ok, "fine")],
            ),
            down,
        ]);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "SchemaVersion": 1,
                "DryRun": false,
                "StartedAt": "2026-11-21T03:00:00Z",
                "FinishedAt": "2026-11-21T03:02:30Z",
                "Accounts": [
                    {"Account": "111111111111", "Name": "prod", "Users": [
                        {"UserName": "ci-1", "Rotation": "bots", "Outcome": "rotated",
                         "Reason": "newest Active key AKIAOLD is 80 days old",
                         "NewAccessKeyId": "AKIANEW",
                         "Sinks": [{"Name": "ci-aws", "Delivered": true}],
                         "RunId": "20261121T030000Z-abcdef"},
                        {"UserName": "ci-2", "Rotation": "bots", "Outcome": "retired",
                         "Reason": "consumers switched", "RetiredAccessKeyId": "AKIARET"},
                        {"UserName": "ci-3", "Rotation": "bots", "Outcome": "ok", "Reason": "fine"}
                    ]},
                    {"Account": "222222222222", "Name": "dev",
                     "Error": "sts:AssumeRole failed: AccessDenied", "Users": []}
                ],
                "Summary": {"rotated": 1, "retired": 1, "deleted": 0, "waiting": 0, "ok": 1,
                            "needs-attention": 0, "failed": 0, "not-attempted": 0}
            })
        );
        let back: FleetReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn exit_codes_follow_the_outcomes() {
        let fine = [
            Outcome::Ok,
            Outcome::Rotated,
            Outcome::Retired,
            Outcome::Deleted,
            Outcome::Waiting,
        ];
        let users: Vec<UserReport> = fine.iter().map(|o| user("u", *o, "")).collect();
        assert_eq!(
            report(vec![account("1", "a", users.clone())]).exit_code(),
            0
        );
        assert_eq!(
            report(vec![]).exit_code(),
            0,
            "nothing selected is not a failure"
        );
        for bad in [
            Outcome::NeedsAttention,
            Outcome::Failed,
            Outcome::NotAttempted,
        ] {
            let mut u = users.clone();
            u.push(user("x", bad, ""));
            assert_eq!(report(vec![account("1", "a", u)]).exit_code(), 3, "{bad}");
        }
        let mut down = account("2", "b", vec![]);
        down.error = Some("denied".into());
        assert_eq!(
            report(vec![account("1", "a", users.clone()), down.clone()]).exit_code(),
            3,
            "one account unreachable, the others fine"
        );
        assert_eq!(
            report(vec![down.clone(), down.clone()]).exit_code(),
            1,
            "no account reached"
        );
        // An account that failed half-way was reached.
        let mut half = account("3", "c", users);
        half.error = Some("listing users failed".into());
        assert_eq!(report(vec![down, half]).exit_code(), 3);
    }

    #[test]
    fn table_counts_per_account_then_lists_users_that_are_not_ok() {
        let mut down = account("333333333333", "sandbox", vec![]);
        down.error = Some("sts:AssumeRole failed: AccessDenied".into());
        let r = report(vec![
            account(
                "111111111111",
                "prod",
                vec![
                    user("ci-1", Outcome::Rotated, "newest Active key is 80 days old"),
                    user("ci-2", Outcome::Ok, "fine"),
                    user(
                        "ci-3",
                        Outcome::Waiting,
                        "old key last used 3 h ago by s3 in eu-west-1; new key never used",
                    ),
                ],
            ),
            account(
                "222222222222",
                "dev",
                vec![user("bot", Outcome::NeedsAttention, "two Active keys")],
            ),
            down,
        ]);
        let t = r.render_table();
        assert!(
            t.starts_with("keyturn run: 3 accounts, 4 selected users\n"),
            "{t}"
        );
        for needle in [
            "needs-attention",
            "not-attempted",
            "total",
            "old key last used 3 h ago by s3 in eu-west-1; new key never used",
            "two Active keys",
            "account 333333333333 (sandbox): sts:AssumeRole failed: AccessDenied",
        ] {
            assert!(t.contains(needle), "{needle} missing:\n{t}");
        }
        assert!(!t.contains("ci-2"), "ok users are only counted:\n{t}");
        let prod_row = t.lines().find(|l| l.contains("111111111111")).unwrap();
        let cells: Vec<&str> = prod_row
            .split(['│', '┆'])
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            [
                "111111111111",
                "prod",
                "1",
                "0",
                "0",
                "1",
                "1",
                "0",
                "0",
                "0"
            ]
        );
        let dry = FleetReport { dry_run: true, ..r };
        assert!(dry
            .render_table()
            .contains("--dry-run (nothing was changed"));
    }
}
