//! The server-rendered pages of `keyturn serve`. Hand-written like the audit HTML
//! (`audit::render::html`): a few tables and one chart, every value that comes from
//! AWS, the journal or the settings goes through [`esc`]. No inline script or style
//! (the Content-Security-Policy forbids both): behaviour is `/assets/app.js`, looks are
//! `/assets/app.css`, both embedded in the binary.

use super::view::{Filter, FleetRow, KeyView, RunView};
pub use crate::audit::render::html::esc;
use crate::audit::render::html::histogram_svg;
use crate::fleet::report::Outcome;
use crate::printer::rfc3339;
use std::fmt::Write as _;

/// What every page needs besides its content.
pub struct Chrome<'a> {
    pub title: &'a str,
    pub csrf: &'a str,
    pub read_only: bool,
    /// Which nav entry is current: `fleet` or `runs`.
    pub nav: &'a str,
}

/// A path segment, percent-encoded (user names may hold `+`, `=`, `,`, `@`).
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub fn user_path(account: &str, user: &str) -> String {
    format!("/users/{}/{}", seg(account), seg(user))
}

fn page(c: &Chrome<'_>, body: &str) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta name=\"csrf-token\" content=\"{}\">\n<title>{} - keyturn</title>\n\
<link rel=\"stylesheet\" href=\"/assets/app.css\">\n<script src=\"/assets/app.js\" defer></script>\n\
</head>\n<body data-read-only=\"{}\">\n<header><b>keyturn</b> <nav>\
<a href=\"/\"{}>Fleet</a> <a href=\"/runs\"{}>Runs</a></nav>{}</header>\n<main>\n{}</main>\n</body>\n</html>\n",
        esc(c.csrf),
        esc(c.title),
        c.read_only,
        if c.nav == "fleet" { " aria-current=\"page\"" } else { "" },
        if c.nav == "runs" { " aria-current=\"page\"" } else { "" },
        if c.read_only { " <span class=\"ro\">read-only</span>" } else { "" },
        body
    );
    o
}

fn badge(outcome: Outcome, text: &str) -> String {
    format!(
        "<span class=\"badge o-{}\" data-outcome=\"{}\">{}</span>",
        outcome.as_str(),
        outcome.as_str(),
        esc(text)
    )
}

fn age_cell(r: &FleetRow) -> String {
    match r.newest_key_age_days {
        Some(a) => format!(
            "<meter min=\"0\" max=\"{m}\" low=\"{low}\" high=\"{m}\" optimum=\"0\" value=\"{v}\" title=\"{a} of {m} days\"></meter> {a} / {m} d",
            m = r.max_age_days,
            low = (r.max_age_days as i64 * 3 / 4),
            v = a.min(r.max_age_days as i64),
        ),
        None => "no Active key".into(),
    }
}

/// The fleet page: summary, histogram, filters, one row per selected user.
pub fn fleet_page(
    c: &Chrome<'_>,
    all: &[FleetRow],
    shown: &[FleetRow],
    filter: &Filter,
    account_errors: &[(String, String)],
    max_age: i64,
) -> String {
    let mut b = String::new();
    b.push_str("<h1>Fleet</h1>\n<p class=\"meta\">Outcomes are what a fleet run would do now (the runner's dry run; nothing was changed).</p>\n<div class=\"cards\">");
    for o in Outcome::ALL {
        let n = all.iter().filter(|r| r.outcome == o).count();
        let _ = write!(
            b,
            "<a class=\"card o-{o}\" href=\"/?outcome={o}\"><b>{n}</b>{o}</a>",
            o = o.as_str()
        );
    }
    b.push_str("</div>\n");
    for (account, error) in account_errors {
        let _ = writeln!(
            b,
            "<p class=\"error\">account {}: {}</p>",
            esc(account),
            esc(error)
        );
    }
    let ages: Vec<i64> = all.iter().filter_map(|r| r.newest_key_age_days).collect();
    let _ = writeln!(
        b,
        "<h2>Key ages</h2>\n<figure>{}</figure>",
        histogram_svg(&ages, max_age)
    );
    // Filters: a plain GET form, so it works without JavaScript.
    let mut accounts: Vec<(&str, &str)> = all
        .iter()
        .map(|r| (r.account.as_str(), r.account_name.as_str()))
        .collect();
    accounts.sort();
    accounts.dedup();
    b.push_str("<form class=\"filters\" method=\"get\" action=\"/\"><label>Account <select name=\"account\"><option value=\"\">all</option>");
    for (id, name) in accounts {
        let _ = write!(
            b,
            "<option value=\"{}\"{}>{} {}</option>",
            esc(id),
            if filter.account == id || filter.account == name {
                " selected"
            } else {
                ""
            },
            esc(id),
            esc(name)
        );
    }
    b.push_str(
        "</select></label> <label>Outcome <select name=\"outcome\"><option value=\"\">all</option>",
    );
    for o in Outcome::ALL {
        let _ = write!(
            b,
            "<option{}>{}</option>",
            if filter.outcome == o.as_str() {
                " selected"
            } else {
                ""
            },
            o.as_str()
        );
    }
    let _ = writeln!(
        b,
        "</select></label> <label>Sort <select name=\"sort\"><option value=\"\">account, user</option><option value=\"age\"{}>oldest key first</option><option value=\"-age\"{}>newest key first</option></select></label> <button type=\"submit\">Apply</button></form>",
        if filter.sort == "age" { " selected" } else { "" },
        if filter.sort == "-age" { " selected" } else { "" },
    );
    let _ = writeln!(
        b,
        "<p class=\"meta\">{} of {} users</p>",
        shown.len(),
        all.len()
    );
    b.push_str("<table id=\"fleet\">\n<thead><tr><th>Account</th><th>User</th><th>Rotation</th><th>Newest key</th><th>Now</th><th>Last run</th><th>Next due</th><th>Sinks</th></tr></thead>\n<tbody>\n");
    for r in shown {
        let last = match &r.last_run {
            Some(l) => format!(
                "<span class=\"run-{}\">{}</span> {}{}",
                l.status.as_str(),
                l.status.as_str(),
                esc(&rfc3339(l.at)),
                l.error
                    .as_deref()
                    .map(|e| format!("<br><small>{}</small>", esc(e)))
                    .unwrap_or_default()
            ),
            None => "never".into(),
        };
        let sinks: Vec<String> = r
            .sinks
            .iter()
            .map(|s| format!("{}: {}", esc(&s.name), esc(&s.state)))
            .collect();
        let _ = writeln!(
            b,
            "<tr data-account=\"{}\" data-user=\"{}\"><td>{}<br><small>{}</small></td><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}{}</td><td>{}<br><small>{}</small></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.account),
            esc(&r.user_name),
            esc(&r.account),
            esc(&r.account_name),
            esc(&user_path(&r.account, &r.user_name)),
            esc(&r.user_name),
            esc(&r.rotation),
            age_cell(r),
            r.keys_error
                .as_deref()
                .map(|e| format!("<br><small class=\"error\">{}</small>", esc(e)))
                .unwrap_or_default(),
            badge(r.outcome, &r.badge()),
            esc(&r.reason),
            last,
            r.next_due.map(|d| d.to_string()).unwrap_or_default(),
            sinks.join("<br>"),
        );
    }
    b.push_str("</tbody>\n</table>\n");
    page(c, &b)
}

fn runs_table(runs: &[RunView], read_only: bool, with_user: bool) -> String {
    let mut b = String::new();
    if runs.is_empty() {
        b.push_str("<p>No run in the journal.</p>\n");
        return b;
    }
    let _ = write!(
        b,
        "<table class=\"runs\">\n<thead><tr><th>Run</th>{}<th>Status</th><th>Started</th><th>Finished</th><th>New key</th><th>Steps</th><th></th></tr></thead>\n<tbody>\n",
        if with_user { "<th>Account</th><th>User</th>" } else { "" }
    );
    for r in runs {
        let mut steps = String::from("<ol>");
        for s in &r.steps {
            let _ = write!(
                steps,
                "<li><span class=\"ph-{}\">{} {}</span> {}</li>",
                s.phase.as_str(),
                esc(&s.step),
                s.phase.as_str(),
                esc(&s.detail)
            );
        }
        steps.push_str("</ol>");
        let action = if r.resumable && !read_only {
            format!(
                "<button class=\"resume\" data-run=\"{}\">Resume</button><output></output>",
                esc(&r.run_id)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            b,
            "<tr data-run=\"{}\"><td><code>{}</code></td>{}<td><span class=\"run-{}\">{}</span>{}</td><td>{}</td><td>{}</td><td>{}</td><td><details><summary>{} events</summary>{}</details></td><td>{}</td></tr>",
            esc(&r.run_id),
            esc(&r.run_id),
            if with_user {
                format!(
                    "<td>{}</td><td><a href=\"{}\">{}</a></td>",
                    esc(&r.account),
                    esc(&user_path(&r.account, &r.user_name)),
                    esc(&r.user_name)
                )
            } else {
                String::new()
            },
            r.status.as_str(),
            r.status.as_str(),
            r.error
                .as_deref()
                .map(|e| format!("<br><small>{}</small>", esc(e)))
                .unwrap_or_default(),
            esc(&rfc3339(r.started_at)),
            r.finished_at.map(rfc3339).map(|s| esc(&s)).unwrap_or_default(),
            esc(r.new_access_key_id.as_deref().unwrap_or("")),
            r.steps.len(),
            steps,
            action
        );
    }
    b.push_str("</tbody>\n</table>\n");
    b
}

/// The Runs page: interrupted runs first, each with a Resume button.
pub fn runs_page(c: &Chrome<'_>, runs: &[RunView]) -> String {
    let mut b = String::from("<h1>Runs</h1>\n<p class=\"meta\">The journal's runs, interrupted ones first. Resume finishes one as <code>keyturn resume RUN_ID</code> does.</p>\n");
    b.push_str(&runs_table(runs, c.read_only, true));
    page(c, &b)
}

/// The user page: the fleet row, the key inventory, the Rotate now button and the
/// user's journal history.
pub fn user_page(
    c: &Chrome<'_>,
    row: Option<&FleetRow>,
    account: &str,
    user: &str,
    keys: &std::result::Result<Vec<KeyView>, String>,
    runs: &[RunView],
) -> String {
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1>{}</h1>\n<p class=\"meta\">account {}</p>",
        esc(user),
        esc(account)
    );
    match row {
        Some(r) => {
            let _ = writeln!(
                b,
                "<p>Rotation block <b>{}</b>. Now: <span id=\"outcome\">{}</span> <span id=\"reason\">{}</span></p>",
                esc(&r.rotation),
                badge(r.outcome, &r.badge()),
                esc(&r.reason)
            );
            if !c.read_only {
                let _ = writeln!(
                    b,
                    "<p><button id=\"rotate\" data-account=\"{}\" data-user=\"{}\">Rotate now</button> <output id=\"progress\" aria-live=\"polite\"></output></p>\n<ol id=\"steps\"></ol>",
                    esc(account),
                    esc(user)
                );
            }
        }
        None => b.push_str("<p class=\"error\">No rotation block selects this user (or its account could not be listed): keyturn does not rotate it.</p>\n"),
    }
    b.push_str("<h2>Keys</h2>\n");
    match keys {
        Ok(keys) if keys.is_empty() => b.push_str("<p>No access key.</p>\n"),
        Ok(keys) => {
            b.push_str("<table id=\"keys\">\n<thead><tr><th>Key</th><th>Status</th><th>Created</th><th>Age (days)</th><th>Last used</th><th>Service</th><th>Region</th></tr></thead>\n<tbody>\n");
            for k in keys {
                let _ = writeln!(
                    b,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&k.access_key_id),
                    k.status,
                    esc(&rfc3339(k.created)),
                    k.age_days,
                    esc(&k.last_used),
                    esc(k.last_used_service.as_deref().unwrap_or("")),
                    esc(k.last_used_region.as_deref().unwrap_or(""))
                );
            }
            b.push_str("</tbody>\n</table>\n");
        }
        Err(e) => {
            let _ = writeln!(b, "<p class=\"error\">IAM: {}</p>", esc(e));
        }
    }
    b.push_str("<h2>History</h2>\n");
    b.push_str(&runs_table(runs, c.read_only, false));
    page(c, &b)
}

/// A whole page for an error (the message escaped).
pub fn error_page(c: &Chrome<'_>, message: &str) -> String {
    page(
        c,
        &format!("<h1>Error</h1>\n<p class=\"error\">{}</p>\n", esc(message)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::view::{LastRun, SinkState};

    fn chrome(read_only: bool) -> Chrome<'static> {
        Chrome {
            title: "t",
            csrf: "c",
            read_only,
            nav: "fleet",
        }
    }

    fn evil_row() -> FleetRow {
        FleetRow {
            account: "111111111111".into(),
            account_name: "pr\"od".into(),
            user_name: "<script>alert('x')</script>".into(),
            rotation: "b<i>".into(),
            outcome: Outcome::Failed,
            reason: "AccessDenied: <img src=x onerror=alert(1)>".into(),
            due_in_days: None,
            newest_key_age_days: Some(95),
            max_age_days: 90,
            next_due: None,
            last_run: Some(LastRun {
                run_id: "r\"1".into(),
                status: crate::journal::RunStatus::Failed,
                at: time::OffsetDateTime::UNIX_EPOCH,
                error: Some("<b>boom</b>".into()),
            }),
            sinks: vec![SinkState {
                name: "s'1".into(),
                state: "never".into(),
            }],
            keys_error: None,
        }
    }

    #[test]
    fn every_aws_value_is_escaped() {
        let rows = [evil_row()];
        let html = fleet_page(&chrome(false), &rows, &rows, &Filter::default(), &[], 90);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img"));
        assert!(!html.contains("<b>boom"));
        assert!(!html.contains("<i>"));
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        // In the link, the user name is percent-encoded.
        assert!(html.contains("/users/111111111111/%3Cscript%3E"));
        // The only scripts are the embedded asset.
        assert_eq!(html.matches("<script").count(), 1);
        let user = user_page(
            &chrome(false),
            Some(&rows[0]),
            "111111111111",
            &rows[0].user_name,
            &Err("<svg onload=alert(1)>".into()),
            &[],
        );
        assert!(!user.contains("<svg onload"));
        assert!(!user.contains("<script>alert"));
        assert!(user.contains("id=\"rotate\""));
    }

    #[test]
    fn read_only_pages_have_no_buttons() {
        let rows = [evil_row()];
        let user = user_page(&chrome(true), Some(&rows[0]), "1", "u", &Ok(vec![]), &[]);
        assert!(!user.contains("<button id=\"rotate\""));
        assert!(user.contains("read-only"));
    }
}
