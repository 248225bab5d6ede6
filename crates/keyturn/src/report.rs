//! The result of a rotation, as one struct for every consumer: the CLI prints it, a
//! Lambda will return it, the journal stores its summary. `--dry-run` produces the
//! same struct with planned instead of performed actions.
//!
//! The struct serializes without the secret; only [`crate::printer`] reveals it, and
//! only on stdout.

use crate::aws::NewKey;
use crate::model::AccessKeyInfo;
use crate::plan::{Mode, Step};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use time::OffsetDateTime;

/// What happened to one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionResult {
    Planned,
    Done,
    Failed,
}

/// One line of the action list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActionRecord {
    /// Step name (`create-key`, `deactivate-old-key`, …) or a compensation
    /// (`delete-new-key`, `delete-orphan`).
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// The sink of a `deliver` / `verify-delivery` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    pub result: ActionResult,
    pub detail: String,
}

impl ActionRecord {
    pub fn planned(step: &Step) -> Self {
        Self {
            step: step.name().into(),
            access_key_id: step.key_id().map(str::to_string),
            sink: step.sink().map(str::to_string),
            result: ActionResult::Planned,
            detail: step.reason().to_string(),
        }
    }

    pub fn done(step: &Step, detail: String) -> Self {
        Self {
            step: step.name().into(),
            access_key_id: step.key_id().map(str::to_string),
            sink: step.sink().map(str::to_string),
            result: ActionResult::Done,
            detail,
        }
    }

    pub fn failed(step: &Step, detail: String) -> Self {
        Self {
            step: step.name().into(),
            access_key_id: step.key_id().map(str::to_string),
            sink: step.sink().map(str::to_string),
            result: ActionResult::Failed,
            detail,
        }
    }

    pub fn note(step: &str, key: Option<&str>, detail: String) -> Self {
        Self {
            step: step.into(),
            access_key_id: key.map(str::to_string),
            sink: None,
            result: ActionResult::Done,
            detail,
        }
    }
}

/// A profile that now holds the new key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProfileUpdate {
    pub file: PathBuf,
    pub profile: String,
    /// An `aws_session_token` line was removed (it would have broken the profile).
    pub removed_session_token: bool,
}

impl fmt::Display for ProfileUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}", self.profile, self.file.display())?;
        if self.removed_session_token {
            f.write_str(" (removed its aws_session_token)")?;
        }
        Ok(())
    }
}

/// How verification went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerificationSummary {
    pub arn: String,
    pub attempts: u32,
    pub elapsed_ms: u64,
}

/// The outcome of `keyturn rotate` (or of a resumed run).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub user_name: String,
    /// `"Mode": "User"`, or `"Mode": "Profile"` with `"InUseAccessKeyId"`.
    #[serde(flatten)]
    pub mode: Mode,
    pub dry_run: bool,
    /// The user's keys before the run.
    pub inventory: Vec<AccessKeyInfo>,
    /// Planned (dry run) or performed actions, in order.
    pub actions: Vec<ActionRecord>,
    #[serde(skip)]
    pub new_key: Option<NewKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationSummary>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles_updated: Vec<ProfileUpdate>,
    /// Where the new key went (every sink but the built-in `stdout`, which is what
    /// prints this report).
    #[serde(
        rename = "Sinks",
        skip_serializing_if = "only_stdout",
        serialize_with = "without_stdout"
    )]
    pub sinks: Vec<SinkReport>,
    /// Why the plan is not feasible (dry run) or why the run stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One sink of a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SinkReport {
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: String,
    /// The sink has the new key (delivery finished).
    pub delivered: bool,
    /// Reading it back showed the new key.
    pub verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn only_stdout(v: &[SinkReport]) -> bool {
    v.iter().all(|s| s.name == crate::sink::STDOUT)
}

fn without_stdout<S: serde::Serializer>(v: &[SinkReport], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().filter(|x| x.name != crate::sink::STDOUT))
}

impl RotationReport {
    pub fn new_key_id(&self) -> Option<&str> {
        self.new_key.as_ref().map(|k| k.access_key_id.as_str())
    }

    pub fn new_key_created(&self) -> Option<OffsetDateTime> {
        self.new_key.as_ref().map(|k| k.create_date)
    }
}
