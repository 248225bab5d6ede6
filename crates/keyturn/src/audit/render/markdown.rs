//! `--format markdown`: summary and findings, for tickets and pull requests.

use super::{
    closing_line, consumers_text, last_used_text, listed_rows, policy_text, source_text,
    whole_seconds, Row,
};
use crate::audit::{AuditReport, Finding};
use crate::printer::rfc3339;
use std::fmt::Write as _;

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

pub(super) fn render(report: &AuditReport) -> String {
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
    let findings: Vec<Row> = listed_rows(report);
    let (title, extra_head, extra_rule) = if report.usage {
        ("Findings and consumers", " Consumers |", "---|")
    } else {
        ("Findings", "", "")
    };
    let _ = writeln!(o, "\n## {title}\n");
    if findings.is_empty() {
        let _ = writeln!(o, "None.\n");
    } else {
        let _ = writeln!(
            o,
            "| Account | User | Key | Status | Age (days) | Last used | Finding | Detail |{extra_head}"
        );
        let _ = writeln!(o, "|---|---|---|---|---:|---|---|---|{extra_rule}");
        for r in &findings {
            let extra = if report.usage {
                format!(" {} |", md(&consumers_text(r, "; ")))
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | `{}` | {} |{extra}",
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

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::super::{render, Format};

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
    fn usage_adds_an_escaped_consumers_column() {
        let text = render(
            &super::super::testdata::sample_with_usage(),
            Format::Markdown,
            false,
        );
        assert!(text.contains("## Findings and consumers"), "{text}");
        assert!(text.contains("| Detail | Consumers |"), "{text}");
        assert!(
            text.contains("| `alice` | `slot 1` | Active | 10 |"),
            "{text}"
        );
        assert!(
            text.contains("used once by 10.0.9.9 \\<b\\>x\\</b\\>\\|=cmd"),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with('|')) {
            let cells = line.replace("\\|", "").matches('|').count();
            assert!(cells == 10 || cells == 14, "{cells}: {line}");
        }
    }
}
