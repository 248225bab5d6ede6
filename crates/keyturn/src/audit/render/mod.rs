//! The output formats of `keyturn audit`.
//!
//! - `table`: a summary per account and the findings, for a terminal (colour only when
//!   the caller says stdout is a terminal and `NO_COLOR` is unset);
//! - `json`: the whole result with a stable schema (`SchemaVersion`, documented in
//!   `docs/audit.md`), compliant keys included with finding `ok`;
//! - `csv`: one row per key and finding (`ok` rows and account `error` rows included),
//!   for spreadsheets and SIEMs;
//! - `markdown`: summary and findings, for tickets and pull requests;
//! - `html`: one self-contained page (no scripts, no external assets) with the summary,
//!   a histogram of key ages with the max-age line (inline SVG), and the findings.
//!
//! Every renderer is pure: the same [`AuditReport`] gives the same bytes. Each format
//! lives in its own module; this one holds what they share: the flattened [`Row`]s,
//! the finding details in words, and the summary texts.

mod csv;
pub mod html;
mod json;
mod markdown;
mod table;

pub use self::csv::CSV_COLUMNS;
pub use self::html::{esc, histogram_svg};

use super::{AccountResult, AuditReport, Evaluated, Finding, Source};
use crate::model::Usage;
use crate::usage::Consumer;
use std::fmt::Write as _;

/// `--format` of `audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
    Markdown,
    Html,
}

/// Render `report` in `format`. `color` only affects `table`.
pub fn render(report: &AuditReport, format: Format, color: bool) -> String {
    match format {
        Format::Table => table::render(report, color),
        Format::Json => json::render(report),
        Format::Csv => self::csv::render(report),
        Format::Markdown => markdown::render(report),
        Format::Html => html::render(report),
    }
}

/// One output row: a key with one finding (or `ok`), or an account's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub account_id: String,
    pub account_alias: String,
    pub user: String,
    /// `slot 1` (report), `****WXYZ` (api), `present` (root, api), empty for errors.
    pub key: String,
    pub key_slot: Option<u8>,
    pub key_id_last4: Option<String>,
    pub status: String,
    pub created: Option<time::OffsetDateTime>,
    pub age_days: Option<i64>,
    pub last_used: Option<time::OffsetDateTime>,
    pub last_used_service: Option<String>,
    pub last_used_region: Option<String>,
    /// A finding, `ok` or `error`.
    pub finding: &'static str,
    pub detail: String,
    /// `--usage` and an Active IAM user key: its consumers were asked for.
    pub consumers_asked: bool,
    /// Its CloudTrail consumers (`None`: unknown, or not asked).
    pub consumers: Option<Vec<Consumer>>,
}

/// The rows of the report: every key (`ok` ones only with `include_ok`) and an
/// `error` row per account that could not be audited, in account order.
pub fn rows(report: &AuditReport, include_ok: bool) -> Vec<Row> {
    let mut out = Vec::new();
    for a in &report.accounts {
        let account_id = a.account_id.clone().unwrap_or_default();
        let account_alias = a.alias.clone().unwrap_or_default();
        match &a.outcome {
            Err(e) => out.push(Row {
                account_id,
                account_alias,
                user: String::new(),
                key: String::new(),
                key_slot: None,
                key_id_last4: None,
                status: String::new(),
                created: None,
                age_days: None,
                last_used: None,
                last_used_service: None,
                last_used_region: None,
                finding: "error",
                detail: format!("{} ({})", e, a.via),
                consumers_asked: false,
                consumers: None,
            }),
            Ok(data) => {
                for k in &data.keys {
                    let (used, service, region) = match &k.record.usage {
                        Usage::Used(u) => (Some(u.date), u.service.clone(), u.region.clone()),
                        _ => (None, None, None),
                    };
                    let base = Row {
                        account_id: account_id.clone(),
                        account_alias: account_alias.clone(),
                        user: k.record.user.clone(),
                        key: k.record.key.label(),
                        key_slot: k.record.key.slot(),
                        key_id_last4: k.record.key.id_last4().map(str::to_string),
                        status: k.record.status.map(|s| s.to_string()).unwrap_or_default(),
                        created: k.record.created,
                        age_days: k.age_days,
                        last_used: used,
                        last_used_service: service,
                        last_used_region: region,
                        finding: "ok",
                        detail: String::new(),
                        consumers_asked: report.usage && super::usage::wants_consumers(&k.record),
                        consumers: k.consumers.clone(),
                    };
                    if k.findings.is_empty() {
                        if include_ok {
                            out.push(base);
                        }
                        continue;
                    }
                    for f in &k.findings {
                        out.push(Row {
                            finding: f.as_str(),
                            detail: detail(*f, k, report, used),
                            ..base.clone()
                        });
                    }
                }
            }
        }
    }
    out
}

/// Why a key has a finding, in words.
fn detail(
    f: Finding,
    k: &Evaluated,
    report: &AuditReport,
    used: Option<time::OffsetDateTime>,
) -> String {
    let age = k.age_days.unwrap_or(0);
    let max_age = report.policy.max_age_days;
    let max_unused = report.policy.max_unused_days.unwrap_or(0);
    match f {
        Finding::TooOld => format!("Active key is {age} days old (max {max_age}): rotate it"),
        Finding::Unused => match (&k.record.usage, used) {
            (Usage::Used(_), Some(d)) => format!(
                "not used for {} days (max {max_unused}): deactivate it if nobody needs it",
                super::whole_days(report.generated_at, d)
            ),
            _ => format!(
                "never used, {age} days old (max {max_unused}): deactivate it if nobody needs it"
            ),
        },
        Finding::TwoActive => {
            "the user has two Active keys: finish the rotation and deactivate the old one".into()
        }
        Finding::StaleInactive => {
            format!("Inactive key is {age} days old (max {max_age}): delete it")
        }
        Finding::RootKey => {
            "the root user has an access key: delete it and use IAM roles or users".into()
        }
    }
}

fn whole_seconds(t: time::OffsetDateTime) -> time::OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

fn last_used_text(r: &Row) -> String {
    match (&r.last_used, &r.last_used_service) {
        (Some(d), Some(s)) => format!("{} ({s})", d.date()),
        (Some(d), None) => d.date().to_string(),
        (None, _) if r.finding == "error" || r.key == "present" => String::new(),
        (None, _) => "never".into(),
    }
}

/// The rows the table, Markdown and HTML formats list: the findings, and with
/// `--usage` also the compliant Active keys (so every Active key's consumers show).
fn listed_rows(report: &AuditReport) -> Vec<Row> {
    rows(report, report.usage)
        .into_iter()
        .filter(|r| r.finding != "error" && (r.finding != "ok" || r.consumers_asked))
        .collect()
}

/// A row's consumers in words, one [`Consumer::describe`] each, joined by `sep`:
/// `none` when CloudTrail shows nobody, `unknown` when the lookup failed, empty when
/// they were not asked for (no `--usage`, an Inactive or root key).
pub fn consumers_text(r: &Row, sep: &str) -> String {
    if !r.consumers_asked {
        return String::new();
    }
    match &r.consumers {
        None => "unknown (not looked up, see the warnings)".into(),
        Some(c) if c.is_empty() => "none".into(),
        Some(c) => c
            .iter()
            .map(Consumer::describe)
            .collect::<Vec<_>>()
            .join(sep),
    }
}

fn source_text(a: &AccountResult) -> String {
    match &a.outcome {
        Ok(d) => match (&d.fallback_reason, d.source) {
            (Some(_), Source::Api) => "api (fallback)".into(),
            (_, s) => s.to_string(),
        },
        Err(_) => "-".into(),
    }
}

/// `too-old 2, unused 1` (only non-zero counts), or `none`.
fn findings_text(a: &super::AccountData) -> String {
    let parts: Vec<String> = Finding::ALL
        .iter()
        .filter_map(|f| match a.count(*f) {
            0 => None,
            n => Some(format!("{f} {n}")),
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn account_label(a: &AccountResult) -> String {
    let id = a.account_id.as_deref().unwrap_or("?");
    match &a.alias {
        Some(al) => format!("{id} ({al})"),
        None => id.to_string(),
    }
}

fn policy_text(report: &AuditReport) -> String {
    let usage = if report.usage {
        ", consumers from CloudTrail"
    } else {
        ""
    };
    format!(
        "max age {} days, max unused {}, user path {}, source {}{usage}",
        report.policy.max_age_days,
        report
            .policy
            .max_unused_days
            .map(|d| format!("{d} days"))
            .unwrap_or_else(|| "off".into()),
        report.user_path,
        report.source
    )
}

fn closing_line(report: &AuditReport) -> String {
    let keys: usize = report.ok_accounts().map(|a| a.keys.len()).sum();
    let accounts = report.accounts.len();
    let failed = report.failed_accounts();
    let findings = report.findings();
    let mut s = if findings == 0 {
        format!(
            "No findings: {keys} key{} in {} account{} compliant.",
            plural(keys),
            accounts - failed,
            plural(accounts - failed)
        )
    } else {
        format!(
            "{findings} finding{} in {keys} key{} across {} account{}.",
            plural(findings),
            plural(keys),
            accounts - failed,
            plural(accounts - failed)
        )
    };
    if failed > 0 {
        let _ = write!(
            s,
            " {failed} account{} could not be audited.",
            plural(failed)
        );
    }
    s
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
pub(super) mod testdata {
    //! One report with every kind of row, shared by the format tests.
    use super::*;
    use crate::audit::{evaluate_all, AccountData, KeyRecord, KeyRef, Policy, ROOT_USER};
    use crate::model::{KeyStatus, LastUsed};
    use time::macros::datetime;
    use time::{Duration, OffsetDateTime};

    const NOW: OffsetDateTime = datetime!(2026-06-15 12:00 UTC);

    fn rec(user: &str, key: KeyRef, status: KeyStatus, age: i64, used: Option<i64>) -> KeyRecord {
        KeyRecord {
            user: user.into(),
            key,
            status: Some(status),
            created: Some(NOW - Duration::days(age)),
            usage: match used {
                Some(d) => Usage::Used(LastUsed {
                    date: NOW - Duration::days(d),
                    service: Some("s3".into()),
                    region: Some("us-east-1".into()),
                }),
                None => Usage::Never,
            },
            access_key_id: None,
        }
    }

    pub fn sample() -> AuditReport {
        let policy = Policy {
            max_age_days: 90,
            max_unused_days: Some(30),
        };
        let records = vec![
            rec("alice", KeyRef::Slot(1), KeyStatus::Active, 10, Some(1)),
            rec("bob", KeyRef::Slot(1), KeyStatus::Active, 400, Some(2)),
            rec("carol", KeyRef::Slot(1), KeyStatus::Inactive, 200, None),
            rec(ROOT_USER, KeyRef::Slot(1), KeyStatus::Active, 50, None),
        ];
        AuditReport {
            generated_at: NOW,
            policy,
            user_path: "/".into(),
            source: Source::Report,
            usage: false,
            accounts: vec![
                AccountResult {
                    account_id: Some("123456789012".into()),
                    alias: Some("prod".into()),
                    via: "caller".into(),
                    outcome: Ok(AccountData {
                        source: Source::Report,
                        fallback_reason: None,
                        report_generated_at: Some(NOW),
                        users: 3,
                        keys: evaluate_all(records, &policy, NOW),
                        warnings: vec![],
                        usage: None,
                    }),
                },
                AccountResult {
                    account_id: Some("210987654321".into()),
                    alias: None,
                    via: "role:arn:aws:iam::210987654321:role/Audit".into(),
                    outcome: Err("sts:AssumeRole failed: AccessDenied: <script>alert(1)</script> & 'x' \"y\" | z".into()),
                },
            ],
        }
    }

    /// A consumer of a sample key.
    pub fn consumer(ip: &str, user_agent: &str, events: u64, api: &str) -> crate::usage::Consumer {
        crate::usage::Consumer {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            source_ip: ip.into(),
            user_agent: user_agent.into(),
            events,
            first_seen: NOW - Duration::hours(30),
            last_seen: NOW - Duration::hours(6),
            top_events: vec![crate::usage::ApiCount {
                api: api.into(),
                count: events,
            }],
            regions: vec!["eu-west-1".into()],
        }
    }

    /// [`sample`] audited with `--usage`: alice's key has two consumers (one with a
    /// hostile user agent), bob's none.
    pub fn sample_with_usage() -> AuditReport {
        let mut r = sample();
        r.usage = true;
        if let Ok(d) = &mut r.accounts[0].outcome {
            for k in &mut d.keys {
                match k.record.user.as_str() {
                    "alice" => {
                        k.consumers = Some(vec![
                            consumer(
                                "10.0.4.17",
                                "aws-cli/2.15.30 Python/3.11.6",
                                14,
                                "s3:ListBuckets",
                            ),
                            consumer("10.0.9.9", "<b>x</b>|=cmd", 1, "sts:GetCallerIdentity"),
                        ])
                    }
                    "bob" => k.consumers = Some(vec![]),
                    _ => {}
                }
            }
            d.usage = Some(crate::audit::usage::AccountUsage {
                regions: vec!["us-east-1".into(), "eu-west-1".into()],
                since: NOW - Duration::days(90),
                until: NOW,
                keys: 2,
                error: None,
            });
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::sample;
    use super::*;
    use crate::audit::ROOT_USER;

    #[test]
    fn rows_cover_every_key_and_error() {
        let r = sample();
        let all: Vec<(String, &str)> = rows(&r, true)
            .into_iter()
            .map(|r| (r.user, r.finding))
            .collect();
        assert_eq!(
            all,
            vec![
                (ROOT_USER.to_string(), "root-key"),
                ("alice".into(), "ok"),
                ("bob".into(), "too-old"),
                ("carol".into(), "stale-inactive"),
                (String::new(), "error"),
            ]
        );
        assert_eq!(rows(&r, false).len(), 4);
    }

    #[test]
    fn with_usage_every_active_key_is_listed_with_its_consumers() {
        let r = super::testdata::sample_with_usage();
        let listed: Vec<(String, &str, String)> = listed_rows(&r)
            .iter()
            .map(|row| (row.user.clone(), row.finding, consumers_text(row, "; ")))
            .collect();
        assert_eq!(
            listed,
            vec![
                // The root key is not looked up; the Inactive key is not listed as ok.
                (ROOT_USER.to_string(), "root-key", String::new()),
                (
                    "alice".into(),
                    "ok",
                    "used 14 times in 24 h by 10.0.4.17 aws-cli/2.15.30 (s3:ListBuckets in eu-west-1); used once by 10.0.9.9 <b>x</b>|=cmd (sts:GetCallerIdentity in eu-west-1)".into()
                ),
                ("bob".into(), "too-old", "none".into()),
                ("carol".into(), "stale-inactive", String::new()),
            ]
        );
        // A failed lookup is "unknown", never "none".
        let mut r = r;
        if let Ok(d) = &mut r.accounts[0].outcome {
            d.keys.iter_mut().for_each(|k| k.consumers = None);
        }
        let bob = listed_rows(&r)
            .into_iter()
            .find(|x| x.user == "bob")
            .unwrap();
        assert!(consumers_text(&bob, "; ").starts_with("unknown"));
        // Without --usage nothing changes.
        assert_eq!(listed_rows(&sample()).len(), 3);
    }
}
