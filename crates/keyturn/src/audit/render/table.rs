//! `--format table`: a summary per account and the findings, for a terminal (colour
//! only when the caller says stdout is a terminal and `NO_COLOR` is unset).

use super::{
    account_label, closing_line, consumers_text, findings_text, last_used_text, listed_rows,
    policy_text, source_text, Row,
};
use crate::audit::AuditReport;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, ContentArrangement, Table};
use std::fmt::Write as _;

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

pub(super) fn render(report: &AuditReport, color: bool) -> String {
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
    let findings: Vec<Row> = listed_rows(report);
    if !findings.is_empty() {
        let mut t = new_table(color);
        let mut header = vec![
            "Account",
            "User",
            "Key",
            "Status",
            "Age (d)",
            "Last used",
            "Finding",
            "Detail",
        ];
        if report.usage {
            header.push("Consumers");
        }
        t.set_header(header);
        for r in &findings {
            let mut cells = vec![
                Cell::new(&r.account_id),
                Cell::new(&r.user),
                Cell::new(&r.key),
                Cell::new(&r.status),
                Cell::new(r.age_days.map(|a| a.to_string()).unwrap_or_default()),
                Cell::new(last_used_text(r)),
                Cell::new(r.finding).fg(finding_color(r.finding)),
                Cell::new(&r.detail),
            ];
            if report.usage {
                cells.push(Cell::new(consumers_text(r, "\n")));
            }
            t.add_row(cells);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
    out.push_str(&closing_line(report));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::super::{render, Format};

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
    fn usage_adds_a_consumers_column_and_the_compliant_active_keys() {
        let text = render(
            &super::super::testdata::sample_with_usage(),
            Format::Table,
            false,
        );
        assert!(text.contains("Consumers"), "{text}");
        assert!(text.contains("alice"), "{text}");
        assert!(text.contains("10.0.4.17"), "{text}");
        assert!(text.contains("consumers from CloudTrail"), "{text}");
        let plain = render(&sample(), Format::Table, false);
        assert!(!plain.contains("Consumers"));
        assert!(!plain.contains("alice"));
    }
}
