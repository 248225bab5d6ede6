//! The optional settings file (`~/.config/keyturn/config.toml`, or `--config`).
//!
//! Settings resolve as flag > environment variable > this file > built-in default.
//! Unknown keys are errors, so a typo never silently falls back to a default. The
//! committed `keyturn.example.toml` documents every key.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub rotate: RotateFile,
    #[serde(default)]
    pub journal: JournalFile,
    #[serde(default)]
    pub audit: AuditFile,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateFile {
    /// `env`, `json` or `table`.
    pub output: Option<String>,
    /// Seconds to wait for a new key to verify.
    pub verify_timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalFile {
    pub path: Option<PathBuf>,
    /// KMS key id/ARN/alias that protects journaled secrets instead of the local key file.
    pub kms_key: Option<String>,
    /// `sqlite` (default) or `dynamodb`.
    pub backend: Option<String>,
    /// DynamoDB table (backend = "dynamodb"; default `keyturn-journal`).
    pub table: Option<String>,
    /// Seconds a lease holds without renewal (1-3600, default 300).
    pub lease_seconds: Option<u64>,
    /// DynamoDB: days a finished run is kept before TTL clean-up (default 365).
    pub retention_days: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    pub max_age_days: Option<u32>,
    pub max_unused_days: Option<u32>,
    pub concurrency: Option<usize>,
}

/// `$XDG_CONFIG_HOME/keyturn/config.toml` (or `~/.config/…`).
pub fn default_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("keyturn/config.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/keyturn/config.toml"))
}

impl FileConfig {
    /// Load `explicit` (must exist) or the default path (may be absent).
    pub fn load(explicit: Option<&Path>) -> Result<Self> {
        let (path, required) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => match default_path() {
                Some(p) => (p, false),
                None => return Ok(Self::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default())
            }
            Err(e) => {
                return Err(Error::InvalidInput(format!(
                    "cannot read config file {}: {e}",
                    path.display()
                )))
            }
        };
        Self::parse(&text).map_err(|m| {
            Error::InvalidInput(format!("invalid config file {}: {m}", path.display()))
        })
    }

    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../keyturn.example.toml");
        let cfg = FileConfig::parse(text).unwrap();
        assert_eq!(cfg.rotate.verify_timeout, Some(60));
        assert_eq!(cfg.audit.max_age_days, Some(90));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = FileConfig::parse("[rotate]\nverify_timout = 5\n").unwrap_err();
        assert!(err.contains("verify_timout"), "{err}");
    }
}
