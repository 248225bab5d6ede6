//! `--format csv`: one row per key and finding (`ok` rows and account `error` rows
//! included), for spreadsheets and SIEMs.
//!
//! CSV files get opened in spreadsheets, which run a cell that starts with `=`, `+`,
//! `-` or `@` as a formula, and IAM user names may start with any of those (as may
//! texts AWS sends, such as error messages). As OWASP's "CSV Injection" advice says,
//! every text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is
//! written with a `'` in front, which spreadsheets show as text; quoting alone does
//! not stop the formula. The numbers and times keyturn writes itself (`key_slot`,
//! `age_days`, `created`, `last_used`) are left as they are: a negative age (a key
//! created "in the future" by a skewed clock) is the number `-3`, not a formula.

use super::{consumers_text, rows};
use crate::audit::AuditReport;
use crate::printer::rfc3339;
use std::borrow::Cow;

/// The column `--usage` adds at the end: each consumer's [`crate::usage::Consumer::describe`],
/// joined by `; ` (`none`, `unknown (...)`, or empty for keys not looked up).
pub const CSV_USAGE_COLUMN: &str = "consumers";

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

pub(super) fn render(report: &AuditReport) -> String {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    let t = |t: Option<time::OffsetDateTime>| t.map(rfc3339).unwrap_or_default();
    let mut header: Vec<&str> = CSV_COLUMNS.to_vec();
    if report.usage {
        header.push(CSV_USAGE_COLUMN);
    }
    w.write_record(&header).expect("in-memory CSV");
    for r in rows(report, true) {
        // Numbers and times are keyturn's own text; everything else goes through `text`.
        let slot = r.key_slot.map(|s| s.to_string()).unwrap_or_default();
        let age = r.age_days.map(|a| a.to_string()).unwrap_or_default();
        let (created, last_used) = (t(r.created), t(r.last_used));
        let consumers = consumers_text(&r, "; ");
        let mut cells: Vec<Cow<'_, str>> = vec![
            text(&r.account_id),
            text(&r.account_alias),
            text(&r.user),
            text(&r.key),
            Cow::Borrowed(&slot),
            text(r.key_id_last4.as_deref().unwrap_or("")),
            text(&r.status),
            Cow::Borrowed(&created),
            Cow::Borrowed(&age),
            Cow::Borrowed(&last_used),
            text(r.last_used_service.as_deref().unwrap_or("")),
            text(r.last_used_region.as_deref().unwrap_or("")),
            text(r.finding),
            text(&r.detail),
        ];
        if report.usage {
            cells.push(text(&consumers));
        }
        w.write_record(cells.iter().map(|c| c.as_bytes()))
            .expect("in-memory CSV");
    }
    String::from_utf8(w.into_inner().expect("in-memory CSV")).expect("CSV of UTF-8 is UTF-8")
}

/// The characters that make a spreadsheet read a cell as a formula (OWASP).
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A text cell as written: prefixed with `'` when it would start a formula.
fn text(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(FORMULA_START) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::super::{render, Format};
    use super::{text, CSV_COLUMNS};
    use crate::audit::{evaluate_all, AccountData, AccountResult, KeyRecord, KeyRef};
    use crate::model::{KeyStatus, Usage};

    #[test]
    fn csv_quotes_and_has_every_row() {
        let text = render(&sample(), Format::Csv, false);
        let mut rdr = ::csv::Reader::from_reader(text.as_bytes());
        assert_eq!(
            rdr.headers().unwrap().iter().collect::<Vec<_>>(),
            CSV_COLUMNS
        );
        let recs: Vec<::csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
        assert_eq!(recs.len(), 5);
        assert_eq!(&recs[4][12], "error");
        assert!(recs[4][13].contains("\"y\" | z"));
    }

    #[test]
    fn formula_cells_are_prefixed() {
        for (cell, want) in [
            ("=1+1", "'=1+1"),
            ("-2+3@x", "'-2+3@x"),
            ("+cmd", "'+cmd"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("a=1", "a=1"),
            ("ci+bot", "ci+bot"),
            ("", ""),
            ("'quoted", "'quoted"),
        ] {
            assert_eq!(text(cell), want, "{cell:?}");
        }
    }

    #[test]
    fn hostile_names_and_details_reach_the_csv_inert() {
        let mut report = sample();
        let now = report.generated_at;
        let record = |user: &str, age: i64| KeyRecord {
            user: user.into(),
            key: KeyRef::Slot(1),
            status: Some(KeyStatus::Active),
            created: Some(now - time::Duration::days(age)),
            usage: Usage::Never,
            access_key_id: None,
        };
        let records = vec![record("=1+1", 100), record("-2+3@x", -2), record("@x", 1)];
        report.accounts = vec![
            AccountResult {
                account_id: Some("123456789012".into()),
                alias: Some("-alias".into()),
                via: "caller".into(),
                outcome: Ok(AccountData {
                    source: crate::audit::Source::Report,
                    fallback_reason: None,
                    report_generated_at: None,
                    users: 3,
                    keys: evaluate_all(records, &report.policy, now),
                    warnings: vec![],
                    usage: None,
                }),
            },
            AccountResult {
                account_id: None,
                alias: None,
                via: "profile:x".into(),
                outcome: Err("=HYPERLINK(\"http://x\")".into()),
            },
        ];
        let text = render(&report, Format::Csv, false);
        let recs: Vec<::csv::StringRecord> = ::csv::Reader::from_reader(text.as_bytes())
            .records()
            .map(|r| r.unwrap())
            .collect();
        let col = |name: &str| CSV_COLUMNS.iter().position(|c| *c == name).unwrap();
        let users: Vec<&str> = recs.iter().map(|r| &r[col("user")]).collect();
        assert_eq!(users, ["'-2+3@x", "'=1+1", "'=1+1", "'@x", ""]);
        assert!(recs[..4]
            .iter()
            .all(|r| &r[col("account_alias")] == "'-alias"));
        // Numbers keyturn writes stay numbers, negative ones included.
        assert_eq!(&recs[0][col("age_days")], "-2");
        assert_eq!(&recs[0][col("key_slot")], "1");
        assert!(recs[4][col("detail")].starts_with("'=HYPERLINK"), "{text}");
        // No cell of the file starts a formula.
        for r in &recs {
            for (i, cell) in r.iter().enumerate() {
                if i != col("age_days") {
                    assert!(!cell.starts_with(['=', '+', '-', '@']), "{cell:?}");
                }
            }
        }
    }

    #[test]
    fn usage_adds_a_consumers_column_at_the_end() {
        let text = render(
            &super::super::testdata::sample_with_usage(),
            Format::Csv,
            false,
        );
        let mut rdr = ::csv::Reader::from_reader(text.as_bytes());
        let headers: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(&headers[..14], CSV_COLUMNS);
        assert_eq!(headers[14], super::CSV_USAGE_COLUMN);
        let recs: Vec<::csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
        let by_user = |u: &str| recs.iter().find(|r| &r[2] == u).unwrap()[14].to_string();
        assert!(by_user("alice").starts_with("used 14 times in 24 h by 10.0.4.17 aws-cli/2.15.30"));
        assert!(by_user("alice").contains("; used once by 10.0.9.9"));
        assert_eq!(by_user("bob"), "none");
        assert_eq!(by_user("carol"), "");
    }
}
