//! `keyturn policy`: print the least-privilege IAM policy of the configuration (see
//! [`crate::privilege`], which builds it without any AWS call).

use crate::config::FileConfig;
use crate::error::{exit, Error, Result};
use crate::journal::JournalSettings;
use crate::printer::Printer;
use crate::privilege::{documents, substitute, Inputs, Target, PLACEHOLDERS};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyFormat {
    #[default]
    Json,
    Yaml,
}

#[derive(Debug, Clone)]
pub struct PolicySettings {
    pub target: Target,
    pub format: PolicyFormat,
    /// `--set NAME=VALUE`: placeholders to fill in (the rest stay `${NAME}`).
    pub vars: BTreeMap<String, String>,
}

impl PolicySettings {
    /// Parse `--set NAME=VALUE` items; `NAME` must be one of the placeholders.
    pub fn parse_vars(items: &[String]) -> Result<BTreeMap<String, String>> {
        let mut vars = BTreeMap::new();
        for item in items {
            let Some((k, v)) = item.split_once('=') else {
                return Err(Error::InvalidInput(format!(
                    "--set {item:?}: expected NAME=VALUE"
                )));
            };
            if !PLACEHOLDERS.contains(&k) {
                return Err(Error::InvalidInput(format!(
                    "--set {k}: the placeholders are {}",
                    PLACEHOLDERS.join(", ")
                )));
            }
            vars.insert(k.to_string(), v.to_string());
        }
        Ok(vars)
    }
}

/// The document as printed (placeholders filled in as asked).
pub fn render(
    settings: &PolicySettings,
    file: &FileConfig,
    journal: &JournalSettings,
) -> Result<(String, Vec<String>)> {
    let fleet = file.fleet_policy()?;
    crate::sink::validate_declared(&file.sinks)?;
    let docs = documents(
        &Inputs {
            file,
            fleet: &fleet,
            journal,
        },
        settings.target,
    )
    .map_err(|m| Error::InvalidInput(format!("--for {}: {m}", settings.target.as_str())))?;
    let value = substitute(&docs.to_json(), &settings.vars);
    let text = match settings.format {
        PolicyFormat::Json => serde_json::to_string_pretty(&value)
            .map_err(|e| Error::Runtime(format!("rendering the policy: {e}")))?,
        PolicyFormat::Yaml => serde_norway::to_string(&value)
            .map_err(|e| Error::Runtime(format!("rendering the policy: {e}")))?,
    };
    Ok((text, docs.notes))
}

pub async fn policy(
    settings: &PolicySettings,
    file: &FileConfig,
    journal: &JournalSettings,
    printer: &Printer,
) -> Result<i32> {
    let (text, notes) = render(settings, file, journal)?;
    for n in notes {
        printer.status(&format!("note: {n}"));
    }
    let text = if text.ends_with('\n') {
        text
    } else {
        format!("{text}\n")
    };
    printer
        .stdout(&text)
        .map_err(|e| Error::io("writing to stdout", e))?;
    Ok(exit::SUCCESS)
}
