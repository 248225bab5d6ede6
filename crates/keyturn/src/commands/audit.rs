//! `keyturn audit`: report access keys that break the rotation policy, in one account
//! or many, in the format asked for.
//!
//! The work is in [`crate::audit`]; this function runs it, writes the rendering to
//! stdout or `--out`, tells stderr what happened per account (fallbacks, warnings,
//! errors), and returns the exit code: 0 all compliant, 3 findings (or an account that
//! could not be audited), 1 no account could be audited.

use crate::audit::render::{render, Format};
use crate::audit::{run, AuditOptions};
use crate::error::{Error, Result};
use crate::printer::Printer;
use std::path::PathBuf;

/// Validated settings of one `audit` invocation.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub options: AuditOptions,
    pub format: Format,
    /// Write the output here instead of stdout.
    pub out: Option<PathBuf>,
    /// Colour the table (stdout is a terminal and `NO_COLOR` is unset).
    pub color: bool,
}

/// Run `keyturn audit`.
pub async fn audit(settings: &AuditSettings, printer: &Printer) -> Result<i32> {
    let started = std::time::Instant::now();
    let report = run(&settings.options).await;
    for a in &report.accounts {
        let id = a.account_id.as_deref().unwrap_or("?");
        match &a.outcome {
            Ok(d) => {
                if let Some(reason) = &d.fallback_reason {
                    printer.status(&format!(
                        "keyturn: warning: account {id}: the credential report is not readable ({reason}); used the IAM API instead (--source api)"
                    ));
                }
                for w in &d.warnings {
                    printer.status(&format!("keyturn: warning: account {id}: {w}"));
                }
                let findings: usize = d.keys.iter().map(|k| k.findings.len()).sum();
                printer.status(&format!(
                    "keyturn: account {id} ({}, source {}): {} users, {} keys, {findings} finding{}",
                    a.via,
                    d.source,
                    d.users,
                    d.keys.len(),
                    if findings == 1 { "" } else { "s" }
                ));
            }
            Err(e) => printer.error(&format!("account {id} ({}): {e}", a.via)),
        }
    }
    let text = render(&report, settings.format, settings.color);
    match &settings.out {
        Some(path) => {
            std::fs::write(path, text.as_bytes())
                .map_err(|e| Error::io(format!("writing the audit to {}", path.display()), e))?;
            printer.status(&format!("keyturn: wrote {}", path.display()));
        }
        None => printer
            .stdout(&text)
            .map_err(|e| Error::io("writing the audit to stdout", e))?,
    }
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "audit done"
    );
    Ok(report.exit_code())
}
