//! `--format csv`: one row per key and finding (`ok` rows and account `error` rows
//! included), for spreadsheets and SIEMs.

use super::rows;
use crate::audit::AuditReport;
use crate::printer::rfc3339;

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

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::super::{render, Format};
    use super::CSV_COLUMNS;

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
}
