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
    match printer.history(&runs, settings.output) {
        Ok(()) => Ok(exit::SUCCESS),
        // `keyturn history | head`: the reader has what it wanted. Nothing secret is
        // printed here, so a closed pipe loses nothing (unlike delivering a key).
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::SUCCESS),
        Err(e) => Err(Error::io("writing to stdout", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::NullJournal;
    use std::io;

    struct Closed;
    impl io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    struct Full;
    impl io::Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_closed_pipe_ends_history_quietly() {
        let (printer, err) = Printer::capture_stdout_into(Box::new(Closed));
        let code = history(&HistorySettings::default(), &NullJournal, &printer).await;
        assert_eq!(code.unwrap(), exit::SUCCESS);
        assert_eq!(err.text(), "", "nothing on stderr");
    }

    #[tokio::test]
    async fn other_write_errors_still_fail() {
        let (printer, _) = Printer::capture_stdout_into(Box::new(Full));
        let e = history(&HistorySettings::default(), &NullJournal, &printer)
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), exit::FAILURE);
    }
}
