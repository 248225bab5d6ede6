//! How a run ends: its journal status, what is reported, the exit code.
//!
//! `rotate` and `resume` (and fleet runs) finish a run the same way once the engine
//! returned, so the rules live here rather than in one of those commands.

use crate::engine::{report_of, Progress};
use crate::error::{exit, Error, Result};
use crate::journal::{Journal, RunMeta, RunStatus};
use crate::printer::Printer;
use crate::sink::SinkSpec;

/// Close a run: record how it ended and report it. The credentials were printed by
/// the `stdout` sink, if the run had one; a run that delivered only to other sinks
/// prints its report (without the secret) here. Shared by `rotate` and `resume`.
pub async fn finish_run<J: Journal>(
    meta: &RunMeta,
    progress: Progress,
    result: Result<()>,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let mut report = report_of(
        meta,
        &progress,
        result.as_ref().err().map(|e| e.to_string()),
    );
    let state = crate::engine::aws_state(meta, &progress);
    let status = match &result {
        Ok(()) => RunStatus::Succeeded,
        Err(Error::PartialDelivery(_)) => RunStatus::Incomplete,
        // The journal failed mid-run while a new key exists: resume finishes it.
        Err(Error::JournalIo(_)) if progress.new_key_id().is_some() => RunStatus::Incomplete,
        Err(_) if progress.cleanup_pending => RunStatus::Incomplete,
        Err(_) if progress.new_key.is_some() => RunStatus::FailedAfterDelivery,
        Err(_) => RunStatus::Failed,
    };
    for p in &report.profiles_updated {
        printer.status(&format!("keyturn: updated profile {p}"));
    }
    let printed_by_sink = meta.sinks.iter().any(|s| matches!(s, SinkSpec::Stdout(_)));
    if !printed_by_sink && report.new_key.is_some() {
        // Delivered elsewhere: the report says where, and never carries the secret.
        report.new_key = None;
        let format = crate::printer::OutputFormat::parse(&meta.output).unwrap_or_default();
        printer
            .delivery_report(
                &report,
                progress.new_key.as_ref().map(|k| k.access_key_id.as_str()),
                format,
            )
            .map_err(|e| Error::io("writing the report to stdout", e))?;
    }
    match result {
        Ok(()) => {
            journal
                .finish(&meta.run_id, status, None)
                .await
                .map_err(|e| e.with_journal_context(|| state.clone()))?;
            if let Some(k) = &progress.new_key {
                let to: Vec<&str> = meta.sinks.iter().map(|s| s.name()).collect();
                printer.status(&format!(
                    "keyturn: rotated {}: new key {} delivered to {} (run {})",
                    meta.user_name,
                    k.access_key_id,
                    to.join(", "),
                    meta.run_id
                ));
            }
            Ok(exit::SUCCESS)
        }
        Err(e) => {
            journal
                .finish(&meta.run_id, status, Some(&e.to_string()))
                .await
                .map_err(|je| je.with_journal_context(|| state.clone()))?;
            Err(e)
        }
    }
}
