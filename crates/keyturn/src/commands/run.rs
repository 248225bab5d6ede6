//! `keyturn run`: one fleet run of the settings file's policy (see
//! [`crate::fleet::runner`]), with live progress on stderr, the summary table (or the
//! whole report as JSON) on stdout and, with `--report FILE`, the JSON report written
//! atomically with mode 0600. The exit code is [`FleetReport::exit_code`].

use crate::access::Access;
use crate::config::FileConfig;
use crate::credfile::atomic_write;
use crate::error::{Error, Result};
use crate::fleet::report::{FleetReport, Outcome, UserReport};
use crate::fleet::runner::{RunObserver, RunOptions, Runner};
use crate::journal::Journal;
use crate::printer::{OutputFormat, Printer};
use crate::remote::RemoteConfig;
use crate::sink::{SinkEnv, SinkSpec};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;

/// The STS session name of every role a fleet run assumes (visible in CloudTrail).
pub const SESSION_NAME: &str = "keyturn-fleet";

/// SDK attempts per call in a fleet run (adaptive mode, per account).
pub const FLEET_MAX_ATTEMPTS: u32 = 8;

/// `--output` of `keyturn run`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunOutput {
    #[default]
    Table,
    Json,
}

/// Validated settings of one `run` invocation.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Region/endpoint; the retry mode is set to adaptive by [`RunSettings::new`].
    pub remote: RemoteConfig,
    pub options: RunOptions,
    pub output: RunOutput,
    /// `--report FILE`.
    pub report: Option<PathBuf>,
    /// stderr is a terminal: draw a progress bar (else plain log lines).
    pub progress_bar: bool,
}

impl RunSettings {
    pub fn new(mut remote: RemoteConfig, options: RunOptions) -> Self {
        remote.retry = crate::remote::RetryMode::Adaptive {
            max_attempts: FLEET_MAX_ATTEMPTS,
        };
        Self {
            remote,
            options,
            output: RunOutput::Table,
            report: None,
            progress_bar: false,
        }
    }
}

/// Progress on stderr: a bar on a terminal, one line per user not `ok` otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    printer: Printer,
}

impl RunObserver for Progress {
    fn planned(&self, total: usize) {
        match &self.bar {
            Some(b) => b.set_length(total as u64),
            None => self.printer.status(&format!(
                "keyturn: {total} selected user{}",
                if total == 1 { "" } else { "s" }
            )),
        }
    }

    fn user_finished(&self, account: &str, r: &UserReport) {
        match &self.bar {
            Some(b) => {
                b.inc(1);
                if r.outcome != Outcome::Ok {
                    b.set_message(format!("{account} {}: {}", r.user_name, r.outcome));
                }
            }
            None if r.outcome != Outcome::Ok => self.printer.status(&format!(
                "keyturn: {account} {}: {}: {}",
                r.user_name, r.outcome, r.reason
            )),
            None => {}
        }
    }
}

/// Run `keyturn run`.
pub async fn run<J: Journal>(
    settings: &RunSettings,
    file: &FileConfig,
    journal: &J,
    printer: &Printer,
) -> Result<i32> {
    let policy = file.fleet_policy()?;
    // A fleet run never prints secrets: its sinks deliver elsewhere.
    for r in &policy.rotations {
        for name in &r.sinks {
            if let Some(SinkSpec::Stdout(_)) = file.sinks.iter().find(|s| s.name() == name) {
                return Err(Error::InvalidInput(format!(
                    "rotation {:?}: sink {name:?} prints the new secret on stdout; a fleet run never prints secrets: deliver to a secret store, file or command sink",
                    r.name
                )));
            }
        }
    }
    let access = Access::new(&settings.remote, SESSION_NAME).await?;
    let env = SinkEnv {
        aws: access.base().clone(),
        printer: printer.clone(),
        output: OutputFormat::Json,
    };
    let bar = settings.progress_bar.then(|| {
        let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} users {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let observer = Progress {
        bar: bar.clone(),
        printer: printer.clone(),
    };
    let report = Runner::new(&access, &policy, &file.sinks, journal, env)
        .with_observer(&observer)
        .run(&settings.options)
        .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report?;
    write_outputs(&report, settings, printer)?;
    Ok(report.exit_code())
}

fn write_outputs(report: &FleetReport, settings: &RunSettings, printer: &Printer) -> Result<()> {
    let json = || {
        serde_json::to_string_pretty(report)
            .map(|s| s + "\n")
            .map_err(|e| Error::Runtime(format!("serializing the report: {e}")))
    };
    if let Some(path) = &settings.report {
        atomic_write(path, json()?.as_bytes())?;
        printer.status(&format!("keyturn: wrote the report to {}", path.display()));
    }
    let text = match settings.output {
        RunOutput::Table => report.render_table(),
        RunOutput::Json => json()?,
    };
    printer
        .stdout(&text)
        .map_err(|e| Error::io("writing the report to stdout", e))
}
