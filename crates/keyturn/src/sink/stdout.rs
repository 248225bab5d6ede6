//! The built-in `stdout` sink: print the new credentials (and the rotation so far) on
//! stdout in the `--output` format, exactly what `rotate --user` always printed.
//!
//! Printing is a delivery like any other: a short write or a pipe the reader closed
//! mid-way is a failed delivery, so the old key is not retired and the sealed secret
//! stays in the journal (`keyturn resume RUN_ID` prints the credentials again). When
//! stdout is the only sink, a stdout that discards everything (`> /dev/null`, or closed,
//! which the Rust runtime reopens as /dev/null) is refused before anything changes.

use super::{sink_error, Delivered, Handover, Holding, Sink, SinkEnv, SinkStage, Written};
use crate::error::Result;
use crate::printer::{OutputFormat, Printer};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// How long a pipe reader may take to read the credentials.
const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSpec {
    /// `env`, `json` or `table`.
    pub format: String,
}

pub struct StdoutSink {
    printer: Printer,
    format: OutputFormat,
}

impl StdoutSink {
    pub fn new(spec: &StdoutSpec, env: &SinkEnv) -> Self {
        Self {
            printer: env.printer.clone(),
            format: OutputFormat::parse(&spec.format).unwrap_or(env.output),
        }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn name(&self) -> &str {
        super::STDOUT
    }

    fn kind(&self) -> &'static str {
        "stdout"
    }

    async fn prepare(&self) -> Result<Holding> {
        Ok(Holding::Unknown)
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        let printer = self.printer.clone();
        let report = h.report.clone();
        let format = self.format;
        let written = tokio::task::spawn_blocking(move || {
            printer.credentials_confirmed(&report, format, READER_WAIT)
        })
        .await
        .map_err(|e| crate::error::Error::Runtime(format!("stdout writer: {e}")))?;
        let bytes = written.map_err(|e| {
                sink_error(
                    self,
                    SinkStage::Deliver,
                    Written::Maybe,
                    format!(
                        "writing the new credentials to stdout failed ({e}); `keyturn resume {}` prints them again",
                        h.run_id
                    ),
                None,
            )
        })?;
        Ok(Delivered::new(format!(
            "printed the new credentials on stdout ({}, {bytes} bytes, read by the reader)",
            self.format.as_str()
        )))
    }

    async fn verify(&self, _h: &Handover<'_>) -> Result<String> {
        // stdout cannot be read back; the strongest check is that every byte was
        // accepted and flushed, which `deliver` already required.
        Ok("stdout accepted and flushed every byte".into())
    }
}
