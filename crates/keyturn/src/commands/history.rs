//! `keyturn history`: what the journal knows about past rotations (runs, their steps
//! and outcome), with key ids masked and never a secret.

use crate::error::{exit, Error, Result};
use crate::journal::Journal;
use crate::printer::{HistoryFormat, Printer};

#[derive(Debug, Clone, Default)]
pub struct HistorySettings {
    pub user: Option<String>,
    pub output: HistoryFormat,
}

pub async fn history<J: Journal>(
    settings: &HistorySettings,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let runs = journal.runs(settings.user.as_deref()).await?;
    printer
        .history(&runs, settings.output)
        .map_err(|e| Error::io("writing to stdout", e))?;
    Ok(exit::SUCCESS)
}
