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
//! Every renderer is pure: the same [`AuditReport`] gives the same bytes.

use super::{AccountResult, AuditReport, Evaluated, Finding, Source};
use crate::model::Usage;
use crate::printer::rfc3339;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, ContentArrangement, Table};
use serde_json::{json, Map, Value};
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
        Format::Table => table(report, color),
        Format::Json => json(report),
        Format::Csv => csv(report),
        Format::Markdown => markdown(report),
        Format::Html => html(report),
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
    format!(
        "max age {} days, max unused {}, user path {}, source {}",
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

// ---- table ---------------------------------------------------------------------

fn finding_color(finding: &str) -> Color {
    match finding {
        "too-old" | "root-key" | "error" => Color::Red,
        "ok" => Color::Green,
        _ => Color::Yellow,
    }
}

fn new_table(color: bool) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if color {
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    t
}

fn table(report: &AuditReport, color: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "keyturn audit: {}", policy_text(report));
    let mut sum = new_table(color);
    sum.set_header(vec![
        "Account",
        "Via",
        "Source",
        "Users",
        "Keys",
        "Compliant",
        "Findings",
    ]);
    for a in &report.accounts {
        match &a.outcome {
            Ok(d) => {
                let f = findings_text(d);
                let fc = if f == "none" {
                    Color::Green
                } else {
                    Color::Red
                };
                sum.add_row(vec![
                    Cell::new(account_label(a)),
                    Cell::new(&a.via),
                    Cell::new(source_text(a)),
                    Cell::new(d.users),
                    Cell::new(d.keys.len()),
                    Cell::new(d.compliant()),
                    Cell::new(f).fg(fc),
                ]);
            }
            Err(e) => {
                sum.add_row(vec![
                    Cell::new(account_label(a)),
                    Cell::new(&a.via),
                    Cell::new("-"),
                    Cell::new("-"),
                    Cell::new("-"),
                    Cell::new("-"),
                    Cell::new(format!("error: {e}")).fg(Color::Red),
                ]);
            }
        }
    }
    out.push_str(&sum.to_string());
    out.push('\n');
    let findings: Vec<Row> = rows(report, false)
        .into_iter()
        .filter(|r| r.finding != "error")
        .collect();
    if !findings.is_empty() {
        let mut t = new_table(color);
        t.set_header(vec![
            "Account",
            "User",
            "Key",
            "Status",
            "Age (d)",
            "Last used",
            "Finding",
            "Detail",
        ]);
        for r in &findings {
            t.add_row(vec![
                Cell::new(&r.account_id),
                Cell::new(&r.user),
                Cell::new(&r.key),
                Cell::new(&r.status),
                Cell::new(r.age_days.map(|a| a.to_string()).unwrap_or_default()),
                Cell::new(last_used_text(r)),
                Cell::new(r.finding).fg(finding_color(r.finding)),
                Cell::new(&r.detail),
            ]);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
    out.push_str(&closing_line(report));
    out.push('\n');
    out
}

// ---- json ----------------------------------------------------------------------

fn counts(d: &super::AccountData) -> Value {
    let mut m = Map::new();
    for f in Finding::ALL {
        m.insert(f.as_str().into(), d.count(f).into());
    }
    Value::Object(m)
}

fn opt_time(t: Option<time::OffsetDateTime>) -> Value {
    t.map(|t| Value::String(rfc3339(t))).unwrap_or(Value::Null)
}

fn json(report: &AuditReport) -> String {
    let accounts: Vec<Value> = report
        .accounts
        .iter()
        .map(|a| match &a.outcome {
            Ok(d) => json!({
                "AccountId": a.account_id,
                "AccountAlias": a.alias,
                "Via": a.via,
                "Status": "ok",
                "Error": null,
                "Source": d.source.as_str(),
                "FallbackReason": d.fallback_reason,
                "ReportGeneratedAt": opt_time(d.report_generated_at),
                "Users": d.users,
                "Keys": d.keys.len(),
                "CompliantKeys": d.compliant(),
                "Findings": counts(d),
                "Warnings": d.warnings,
            }),
            Err(e) => json!({
                "AccountId": a.account_id,
                "AccountAlias": a.alias,
                "Via": a.via,
                "Status": "error",
                "Error": e,
                "Source": null,
                "FallbackReason": null,
                "ReportGeneratedAt": null,
                "Users": null,
                "Keys": null,
                "CompliantKeys": null,
                "Findings": null,
                "Warnings": [],
            }),
        })
        .collect();
    let mut totals = Map::new();
    for f in Finding::ALL {
        totals.insert(
            f.as_str().into(),
            report
                .ok_accounts()
                .map(|d| d.count(f))
                .sum::<usize>()
                .into(),
        );
    }
    let rows: Vec<Value> = rows(report, true)
        .into_iter()
        .map(|r| {
            json!({
                "AccountId": r.account_id,
                "AccountAlias": (!r.account_alias.is_empty()).then_some(&r.account_alias),
                "User": (!r.user.is_empty()).then_some(&r.user),
                "Key": (!r.key.is_empty()).then_some(&r.key),
                "KeySlot": r.key_slot,
                "KeyIdLast4": r.key_id_last4,
                "Status": (!r.status.is_empty()).then_some(&r.status),
                "CreateDate": opt_time(r.created),
                "AgeDays": r.age_days,
                "LastUsedDate": opt_time(r.last_used),
                "LastUsedService": r.last_used_service,
                "LastUsedRegion": r.last_used_region,
                "Finding": r.finding,
                "Detail": r.detail,
            })
        })
        .collect();
    let v = json!({
        "SchemaVersion": super::SCHEMA_VERSION,
        "GeneratedAt": rfc3339(whole_seconds(report.generated_at)),
        "Policy": {
            "MaxAgeDays": report.policy.max_age_days,
            "MaxUnusedDays": report.policy.max_unused_days,
            "UserPath": report.user_path,
            "Source": report.source.as_str(),
        },
        "Summary": {
            "Accounts": report.accounts.len(),
            "AccountsFailed": report.failed_accounts(),
            "Users": report.ok_accounts().map(|d| d.users).sum::<usize>(),
            "Keys": report.ok_accounts().map(|d| d.keys.len()).sum::<usize>(),
            "CompliantKeys": report.ok_accounts().map(|d| d.compliant()).sum::<usize>(),
            "FindingsTotal": report.findings(),
            "Findings": Value::Object(totals),
            "ExitCode": report.exit_code(),
        },
        "Accounts": accounts,
        "Rows": rows,
    });
    let mut s = serde_json::to_string_pretty(&v).expect("audit JSON serializes");
    s.push('\n');
    s
}

// ---- csv -----------------------------------------------------------------------

/// CSV columns, in order (snake_case, like the credential report's).
pub const CSV_COLUMNS: [&str; 14] = [
    "account_id",
    "account_alias",
    "user",
    "key",
    "key_slot",
    "key_id_last4",
    "status",
    "created",
    "age_days",
    "last_used",
    "last_used_service",
    "last_used_region",
    "finding",
    "detail",
];

fn csv(report: &AuditReport) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let t = |t: Option<time::OffsetDateTime>| t.map(rfc3339).unwrap_or_default();
    w.write_record(CSV_COLUMNS).expect("in-memory CSV");
    for r in rows(report, true) {
        w.write_record([
            r.account_id.as_str(),
            r.account_alias.as_str(),
            r.user.as_str(),
            r.key.as_str(),
            &r.key_slot.map(|s| s.to_string()).unwrap_or_default(),
            r.key_id_last4.as_deref().unwrap_or(""),
            r.status.as_str(),
            &t(r.created),
            &r.age_days.map(|a| a.to_string()).unwrap_or_default(),
            &t(r.last_used),
            r.last_used_service.as_deref().unwrap_or(""),
            r.last_used_region.as_deref().unwrap_or(""),
            r.finding,
            r.detail.as_str(),
        ])
        .expect("in-memory CSV");
    }
    String::from_utf8(w.into_inner().expect("in-memory CSV")).expect("CSV of UTF-8 is UTF-8")
}

// ---- markdown ------------------------------------------------------------------

/// Markdown table cell text: CommonMark's inline punctuation backslash-escaped (so
/// `<root_account>` is not taken for HTML, nor `_` or `*` for emphasis), pipes escaped
/// for GFM tables, line breaks flattened.
fn md(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' => {
                o.push('\\');
                o.push(c);
            }
            '\r' | '\n' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// A name as a Markdown code span (shown literally); GFM still needs `\|` escaped.
fn md_code(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("`{}`", s.replace('`', "'").replace('|', "\\|"))
    }
}

fn markdown(report: &AuditReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# keyturn audit\n");
    let _ = writeln!(
        o,
        "Generated {}; {}.\n",
        rfc3339(whole_seconds(report.generated_at)),
        md(&policy_text(report))
    );
    let _ = writeln!(o, "## Accounts\n");
    let _ = writeln!(
        o,
        "| Account | Alias | Via | Source | Users | Keys | Compliant | {} | Error |",
        Finding::ALL.map(|f| f.as_str()).join(" | ")
    );
    let _ = writeln!(o, "|{}", "---|".repeat(8 + Finding::ALL.len()));
    for a in &report.accounts {
        let (users, keys, ok, counts, err) = match &a.outcome {
            Ok(d) => (
                d.users.to_string(),
                d.keys.len().to_string(),
                d.compliant().to_string(),
                Finding::ALL.map(|f| d.count(f).to_string()),
                String::new(),
            ),
            Err(e) => (
                "-".into(),
                "-".into(),
                "-".into(),
                Finding::ALL.map(|_| "-".to_string()),
                e.clone(),
            ),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {users} | {keys} | {ok} | {} | {} |",
            md(a.account_id.as_deref().unwrap_or("?")),
            md(a.alias.as_deref().unwrap_or("")),
            md(&a.via),
            source_text(a),
            counts.join(" | "),
            md(&err)
        );
    }
    let findings: Vec<Row> = rows(report, false)
        .into_iter()
        .filter(|r| r.finding != "error")
        .collect();
    let _ = writeln!(o, "\n## Findings\n");
    if findings.is_empty() {
        let _ = writeln!(o, "None.\n");
    } else {
        let _ = writeln!(
            o,
            "| Account | User | Key | Status | Age (days) | Last used | Finding | Detail |"
        );
        let _ = writeln!(o, "|---|---|---|---|---:|---|---|---|");
        for r in &findings {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | `{}` | {} |",
                md(&r.account_id),
                md_code(&r.user),
                md_code(&r.key),
                md(&r.status),
                r.age_days.map(|a| a.to_string()).unwrap_or_default(),
                md(&last_used_text(r)),
                r.finding,
                md(&r.detail)
            );
        }
        o.push('\n');
    }
    let _ = writeln!(o, "{}", closing_line(report));
    o
}

// ---- html ----------------------------------------------------------------------
//
// Hand-written rather than through a template engine: the page is three tables and
// one chart, every dynamic value goes through `esc`, and a template crate would add
// build time for no gain. No scripts and no external assets (fonts, styles, images),
// so the file can be mailed or attached to a ticket and opened offline.

/// Escape text for HTML element content and double- or single-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem;color:#222}\
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem}\
.meta{color:#555;margin-top:0}\
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;min-width:8rem}\
.card b{display:block;font-size:1.5rem}\
table{border-collapse:collapse;font-size:.9rem}th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}\
th{background:#f4f4f4}td.n{text-align:right}td.k{white-space:nowrap}\
.f{font-family:ui-monospace,monospace;padding:0 .3rem;border-radius:3px;white-space:nowrap}\
.too-old,.root-key,.error{background:#fde2e1;color:#a11}.unused,.two-active,.stale-inactive{background:#fff1cc;color:#7a5200}\
.ok{background:#dff3e3;color:#1e6b30}";

fn html(report: &AuditReport) -> String {
    let mut o = String::new();
    let keys: usize = report.ok_accounts().map(|a| a.keys.len()).sum();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    o.push_str("<title>keyturn audit</title>\n");
    let _ = writeln!(o, "<style>{CSS}</style>\n</head>\n<body>");
    o.push_str("<h1>keyturn audit</h1>\n");
    let _ = writeln!(
        o,
        "<p class=\"meta\">Generated {}; {}.</p>",
        esc(&rfc3339(whole_seconds(report.generated_at))),
        esc(&policy_text(report))
    );
    let _ = writeln!(
        o,
        "<div class=\"cards\"><div class=\"card\"><b>{}</b>accounts</div><div class=\"card\"><b>{}</b>could not be audited</div><div class=\"card\"><b>{keys}</b>keys</div><div class=\"card\"><b>{}</b>findings</div></div>",
        report.accounts.len(),
        report.failed_accounts(),
        report.findings()
    );

    o.push_str("<h2>Accounts</h2>\n<table>\n<thead><tr><th>Account</th><th>Alias</th><th>Via</th><th>Source</th><th>Users</th><th>Keys</th><th>Compliant</th>");
    for f in Finding::ALL {
        let _ = write!(o, "<th>{}</th>", esc(f.as_str()));
    }
    o.push_str("<th>Error</th></tr></thead>\n<tbody>\n");
    for a in &report.accounts {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            esc(a.account_id.as_deref().unwrap_or("?")),
            esc(a.alias.as_deref().unwrap_or("")),
            esc(&a.via),
            esc(&source_text(a))
        );
        match &a.outcome {
            Ok(d) => {
                let _ = write!(
                    o,
                    "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
                    d.users,
                    d.keys.len(),
                    d.compliant()
                );
                for f in Finding::ALL {
                    let _ = write!(o, "<td class=\"n\">{}</td>", d.count(f));
                }
                o.push_str("<td></td></tr>\n");
            }
            Err(e) => {
                o.push_str("<td class=\"n\">-</td><td class=\"n\">-</td><td class=\"n\">-</td>");
                for _ in Finding::ALL {
                    o.push_str("<td class=\"n\">-</td>");
                }
                let _ = writeln!(
                    o,
                    "<td><span class=\"f error\">error</span> {}</td></tr>",
                    esc(e)
                );
            }
        }
    }
    o.push_str("</tbody>\n</table>\n");

    o.push_str("<h2>Key ages</h2>\n");
    let ages: Vec<i64> = report
        .ok_accounts()
        .flat_map(|a| a.keys.iter())
        .filter(|k| !k.record.is_root())
        .filter_map(|k| k.age_days)
        .collect();
    o.push_str(&histogram_svg(&ages, i64::from(report.policy.max_age_days)));

    o.push_str("<h2>Findings</h2>\n");
    let findings: Vec<Row> = rows(report, false)
        .into_iter()
        .filter(|r| r.finding != "error")
        .collect();
    if findings.is_empty() {
        o.push_str("<p>None: every key is compliant.</p>\n");
    } else {
        o.push_str("<table>\n<thead><tr><th>Account</th><th>User</th><th>Key</th><th>Status</th><th>Age (days)</th><th>Last used</th><th>Finding</th><th>Detail</th></tr></thead>\n<tbody>\n");
        for r in &findings {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td class=\"k\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"k\">{}</td><td><span class=\"f {}\">{}</span></td><td>{}</td></tr>",
                esc(&r.account_id),
                esc(&r.user),
                esc(&r.key),
                esc(&r.status),
                r.age_days.map(|a| a.to_string()).unwrap_or_default(),
                esc(&last_used_text(r)),
                r.finding,
                r.finding,
                esc(&r.detail)
            );
        }
        o.push_str("</tbody>\n</table>\n");
    }
    let _ = writeln!(o, "<p>{}</p>", esc(&closing_line(report)));
    o.push_str("</body>\n</html>\n");
    o
}

/// Bin widths (days) the histogram may use: the smallest that gives at most
/// [`MAX_BINS`] bars wins.
const BIN_WIDTHS: [i64; 12] = [1, 2, 5, 7, 10, 15, 30, 60, 90, 180, 365, 730];
const MAX_BINS: i64 = 30;

/// A histogram of key ages as inline SVG: stacked bars (within max age / over it) and
/// a dashed line at the max age.
pub fn histogram_svg(ages: &[i64], max_age: i64) -> String {
    const W: f64 = 720.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 48.0;
    const RIGHT: f64 = 16.0;
    const TOP: f64 = 24.0;
    const BOTTOM: f64 = 44.0;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"Histogram of access key ages in days, with the maximum age of {max_age} days marked\">"
    );
    let _ = writeln!(
        s,
        "<title>Access key ages (days); max age {max_age} days</title>"
    );
    let extent = ages.iter().copied().max().unwrap_or(0).max(max_age + 1) + 1;
    let width = BIN_WIDTHS
        .iter()
        .copied()
        .find(|w| (extent + w - 1) / w <= MAX_BINS)
        .unwrap_or_else(|| (extent + MAX_BINS - 1) / MAX_BINS);
    let bins = ((extent + width - 1) / width).max(1);
    let mut within = vec![0usize; bins as usize];
    let mut over = vec![0usize; bins as usize];
    for &a in ages {
        let b = (a.max(0) / width).min(bins - 1) as usize;
        if a > max_age {
            over[b] += 1;
        } else {
            within[b] += 1;
        }
    }
    let top = within
        .iter()
        .zip(&over)
        .map(|(a, b)| a + b)
        .max()
        .unwrap_or(0)
        .max(1);
    let bw = plot_w / bins as f64;
    let x_of = |days: f64| LEFT + days / width as f64 * bw;
    let y_of = |n: usize| TOP + plot_h - n as f64 / top as f64 * plot_h;
    // Axes.
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/>",
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h
    );
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"#333\"/>",
        TOP + plot_h
    );
    for n in [0, top] {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{n}</text>",
            LEFT - 6.0,
            y_of(n) + 4.0
        );
    }
    // Bars, with a tooltip each.
    for b in 0..bins as usize {
        let (n_in, n_over) = (within[b], over[b]);
        if n_in + n_over == 0 {
            continue;
        }
        let x = LEFT + b as f64 * bw + 1.0;
        let lo = b as i64 * width;
        let hi = lo + width - 1;
        let range = if width == 1 {
            format!("{lo} days")
        } else {
            format!("{lo}-{hi} days")
        };
        let _ = writeln!(
            s,
            "<g><title>{range}: {} keys ({n_over} over max age)</title>",
            n_in + n_over
        );
        if n_in > 0 {
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4c78a8\"/>",
                y_of(n_in),
                (bw - 2.0).max(1.0),
                TOP + plot_h - y_of(n_in)
            );
        }
        if n_over > 0 {
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#e45756\"/>",
                y_of(n_in + n_over),
                (bw - 2.0).max(1.0),
                y_of(n_in) - y_of(n_in + n_over)
            );
        }
        s.push_str("</g>\n");
    }
    // X labels: at most ten.
    let step = (bins + 9) / 10;
    for b in (0..=bins).step_by(step.max(1) as usize) {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            x_of((b * width) as f64),
            TOP + plot_h + 16.0,
            b * width
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">key age (days)</text>",
        LEFT + plot_w / 2.0,
        H - 6.0
    );
    // The max-age line: keys right of it are older than the maximum.
    let lx = x_of((max_age + 1) as f64);
    let _ = writeln!(
        s,
        "<line x1=\"{lx:.1}\" y1=\"{}\" x2=\"{lx:.1}\" y2=\"{}\" stroke=\"#c00\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>",
        TOP - 8.0,
        TOP + plot_h
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{}\" font-size=\"12\" fill=\"#c00\">max age {max_age} days</text>",
        lx + 4.0,
        TOP - 10.0 + 12.0
    );
    // Legend, top right.
    let lx0 = LEFT + plot_w - 250.0;
    for (i, (color, label)) in [
        ("#4c78a8", "within max age"),
        ("#e45756", "older than max age"),
    ]
    .iter()
    .enumerate()
    {
        let x = lx0 + i as f64 * 125.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x:.1}\" y=\"4\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"13\" font-size=\"11\">{label}</text>",
            x + 14.0
        );
    }
    if ages.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"14\" text-anchor=\"middle\">no keys</text>",
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
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
        }
    }

    fn sample() -> AuditReport {
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
    fn json_has_schema_version_summary_and_rows() {
        let v: Value = serde_json::from_str(&render(&sample(), Format::Json, false)).unwrap();
        assert_eq!(v["SchemaVersion"], 1);
        assert_eq!(v["Summary"]["Accounts"], 2);
        assert_eq!(v["Summary"]["AccountsFailed"], 1);
        assert_eq!(v["Summary"]["Findings"]["too-old"], 1);
        assert_eq!(v["Summary"]["CompliantKeys"], 1);
        assert_eq!(v["Summary"]["ExitCode"], 3);
        assert_eq!(v["Accounts"][0]["AccountAlias"], "prod");
        assert_eq!(v["Accounts"][1]["Status"], "error");
        assert_eq!(v["Rows"][2]["Finding"], "too-old");
        assert_eq!(v["Rows"][2]["AgeDays"], 400);
        assert_eq!(v["Rows"][2]["KeySlot"], 1);
        assert_eq!(v["Rows"][2]["LastUsedService"], "s3");
        assert_eq!(v["Rows"][2]["CreateDate"], "2025-05-11T12:00:00Z");
    }

    #[test]
    fn csv_quotes_and_has_every_row() {
        let text = render(&sample(), Format::Csv, false);
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(
            rdr.headers().unwrap().iter().collect::<Vec<_>>(),
            CSV_COLUMNS
        );
        let recs: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
        assert_eq!(recs.len(), 5);
        assert_eq!(&recs[4][12], "error");
        assert!(recs[4][13].contains("\"y\" | z"));
    }

    #[test]
    fn markdown_escapes_pipes() {
        let text = render(&sample(), Format::Markdown, false);
        assert!(text.contains("\\| z"), "{text}");
        assert!(
            text.contains("| 123456789012 | `bob` | `slot 1` | Active | 400 |"),
            "{text}"
        );
        assert!(text.contains("| `<root_account>` |"), "{text}");
        assert!(text.contains("\\<script\\>"), "{text}");
        // Every table line has the same number of unescaped pipes as its header.
        for line in text.lines().filter(|l| l.starts_with('|')) {
            let cells = line.replace("\\|", "").matches('|').count();
            assert!(cells == 9 || cells == 14, "{cells}: {line}");
        }
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let text = render(&sample(), Format::Html, false);
        assert!(text.contains("<svg"));
        assert!(!text.contains("<script"));
        assert!(
            text.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#39;x&#39; &quot;y&quot;")
        );
        assert!(!text.contains("http"), "no external references");
        for f in ["too-old", "stale-inactive", "root-key", "error"] {
            assert!(text.contains(&format!("class=\"f {f}\"")), "{f}");
        }
    }

    #[test]
    fn table_colours_only_when_asked() {
        let plain = render(&sample(), Format::Table, false);
        assert!(!plain.contains('\u{1b}'));
        assert!(plain.contains("too-old"));
        assert!(plain.contains("1 account could not be audited"));
        let coloured = render(&sample(), Format::Table, true);
        assert!(coloured.contains('\u{1b}'));
    }

    #[test]
    fn histogram_bins_and_line() {
        let svg = histogram_svg(&[10, 89, 90, 91, 400], 90);
        // 402 days of extent -> 15-day bins (27 bars at most).
        assert!(
            svg.contains("90-104 days: 2 keys (1 over max age)"),
            "{svg}"
        );
        assert!(svg.contains("max age 90 days"));
        assert!(svg.contains("stroke-dasharray"));
        assert_eq!(svg.matches("<rect").count(), 5 + 2, "bars and legend");
        let empty = histogram_svg(&[], 90);
        assert!(empty.contains("no keys"));
    }
}
