//! `--format html`: one self-contained page with the summary, a histogram of key ages
//! with the max-age line (inline SVG), and the findings.
//!
//! Hand-written rather than through a template engine: the page is three tables and
//! one chart, every dynamic value goes through `esc`, and a template crate would add
//! build time for no gain. No scripts and no external assets (fonts, styles, images),
//! so the file can be mailed or attached to a ticket and opened offline.

use super::{
    closing_line, last_used_text, listed_rows, policy_text, rows, source_text, whole_seconds, Row,
};
use crate::audit::{AuditReport, Finding};
use crate::printer::rfc3339;
use std::fmt::Write as _;

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

pub(super) fn render(report: &AuditReport) -> String {
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
    if report.usage {
        consumers_section(&mut o, report);
    }
    let _ = writeln!(o, "<p>{}</p>", esc(&closing_line(report)));
    o.push_str("</body>\n</html>\n");
    o
}

/// `--usage`: one table row per consumer of each Active key (a key nobody uses gets
/// one row saying so), and what the lookup covered.
fn consumers_section(o: &mut String, report: &AuditReport) {
    o.push_str("<h2>Consumers</h2>\n");
    for a in &report.accounts {
        if let Ok(d) = &a.outcome {
            if let Some(u) = &d.usage {
                let covered = match &u.error {
                    Some(e) => format!("lookup failed: {e}"),
                    None => format!(
                        "{} Active keys, CloudTrail management events from {} to {} in {}",
                        u.keys,
                        rfc3339(whole_seconds(u.since)),
                        rfc3339(whole_seconds(u.until)),
                        u.regions.join(", ")
                    ),
                };
                let _ = writeln!(
                    o,
                    "<p class=\"meta\">{}: {}.</p>",
                    esc(a.account_id.as_deref().unwrap_or("?")),
                    esc(&covered)
                );
            }
        }
    }
    o.push_str("<p class=\"meta\">Data events (such as S3 object reads) are not in CloudTrail's LookupEvents, and events arrive up to about 15 minutes late.</p>\n");
    let keys: Vec<Row> = listed_rows(report)
        .into_iter()
        .filter(|r| r.consumers_asked)
        .collect();
    // A key with several findings is listed once.
    let mut seen = std::collections::HashSet::new();
    o.push_str("<table>\n<thead><tr><th>Account</th><th>User</th><th>Key</th><th>Source IP</th><th>User agent</th><th>Events</th><th>First seen</th><th>Last seen</th><th>APIs</th><th>Regions</th></tr></thead>\n<tbody>\n");
    for r in keys {
        if !seen.insert((r.account_id.clone(), r.user.clone(), r.key.clone())) {
            continue;
        }
        let head = format!(
            "<tr><td>{}</td><td>{}</td><td class=\"k\">{}</td>",
            esc(&r.account_id),
            esc(&r.user),
            esc(&r.key)
        );
        match &r.consumers {
            None => {
                let _ = writeln!(
                    o,
                    "{head}<td colspan=\"7\">unknown (not looked up, see the warnings)</td></tr>"
                );
            }
            Some(list) if list.is_empty() => {
                let _ = writeln!(o, "{head}<td colspan=\"7\">none in CloudTrail</td></tr>");
            }
            Some(list) => {
                for c in list {
                    let apis: Vec<String> = c
                        .top_events
                        .iter()
                        .map(|a| format!("{} ({})", a.api, a.count))
                        .collect();
                    let _ = writeln!(
                        o,
                        "{head}<td class=\"k\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"k\">{}</td><td class=\"k\">{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&c.source_ip),
                        esc(&c.user_agent),
                        c.events,
                        esc(&rfc3339(c.first_seen)),
                        esc(&rfc3339(c.last_seen)),
                        esc(&apis.join(", ")),
                        esc(&c.regions.join(", "))
                    );
                }
            }
        }
    }
    o.push_str("</tbody>\n</table>\n");
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
    use super::super::testdata::sample;
    use super::super::{render, Format};
    use super::histogram_svg;

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

    #[test]
    fn usage_adds_an_escaped_consumers_section() {
        let text = render(
            &super::super::testdata::sample_with_usage(),
            Format::Html,
            false,
        );
        assert!(text.contains("<h2>Consumers</h2>"));
        assert!(text.contains("<td class=\"k\">10.0.4.17</td><td>aws-cli/2.15.30 Python/3.11.6</td><td class=\"n\">14</td>"), "{text}");
        assert!(text.contains("&lt;b&gt;x&lt;/b&gt;|=cmd"));
        assert!(!text.contains("<b>x"));
        assert!(text.contains("none in CloudTrail"));
        assert!(text.contains("in us-east-1, eu-west-1"));
        assert!(!text.contains("AKIAIOSFODNN7EXAMPLE"));
        assert!(!render(&sample(), Format::Html, false).contains("Consumers"));
    }
}
