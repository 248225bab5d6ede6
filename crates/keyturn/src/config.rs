//! The optional settings file (`~/.config/keyturn/config.toml`, or `--config`).
//!
//! Settings resolve as flag > environment variable > this file > built-in default.
//! Unknown keys are errors, so a typo never silently falls back to a default. The
//! committed `keyturn.example.toml` documents every key.

use crate::error::{Error, Result};
use crate::fleet::policy::{AccountFile, FleetPolicy, PolicyFile, RotationFile};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub rotate: RotateFile,
    #[serde(default)]
    pub journal: JournalFile,
    #[serde(default)]
    pub audit: AuditFile,
    /// Fleet runs: the defaults of every `[[rotations]]` block.
    #[serde(default)]
    pub policy: PolicyFile,
    /// Fleet runs: the accounts (none: the caller's own account).
    #[serde(default)]
    pub accounts: Vec<Spanned<AccountFile>>,
    /// Fleet runs: which users, in the order they are matched.
    #[serde(default)]
    pub rotations: Vec<Spanned<RotationFile>>,
    /// `[[sinks]]`: where new keys are delivered (see [`crate::sink`]).
    #[serde(default)]
    pub sinks: Vec<crate::sink::SinkSpec>,
    /// `[usage]`: where CloudTrail is asked who uses a key.
    #[serde(default)]
    pub usage: UsageFile,
    /// `[lambda]`: the `keyturn-lambda` function (see [`crate::lambda`]).
    #[serde(default)]
    pub lambda: LambdaFile,
    /// The file this was read from (for line numbers in later errors).
    #[serde(skip)]
    pub origin: Option<Origin>,
}

/// Where a [`FileConfig`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub path: PathBuf,
    pub text: String,
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

/// `[usage]`: where keyturn looks for CloudTrail evidence of a key's consumers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageFile {
    /// Regions whose CloudTrail `LookupEvents` is asked. Unset: the account's enabled
    /// regions (`account:ListRegions`).
    pub regions: Option<Vec<String>>,
}

/// `[lambda]`: settings of the `keyturn-lambda` function only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaFile {
    /// Free a key slot by deleting any Inactive key (default: only the key keyturn
    /// itself retired in the previous rotation).
    pub delete_inactive: Option<bool>,
    /// Seconds before the invocation's deadline after which no new work starts
    /// (default 30).
    pub deadline_margin_seconds: Option<u64>,
    /// Secrets Manager rotation: which `[[sinks]]` `setSecret` delivers to, per secret.
    #[serde(default)]
    pub secrets: Vec<LambdaSecretFile>,
}

/// `[[lambda.secrets]]`: the sinks of the secrets whose name or ARN matches `secret`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaSecretFile {
    /// A glob over the secret's name or ARN (`keyturn/*`).
    pub secret: String,
    pub sinks: Vec<String>,
}

/// `$XDG_CONFIG_HOME/keyturn/config.toml` (or `~/.config/…`).
pub fn default_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("keyturn/config.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/keyturn/config.toml"))
}

/// Read a settings file, at most [`crate::credfile::MAX_FILE`] bytes (`--config
/// /dev/zero` is refused, not read forever): `Ok(None)` when it does not exist.
/// Exit 2 for anything unreadable, too large, or not UTF-8.
pub fn read_settings(path: &Path) -> Result<Option<String>> {
    let bytes = crate::credfile::read_limited(path, "settings file").map_err(|e| match e {
        Error::Io { source, .. } => Error::InvalidInput(format!(
            "cannot read config file {}: {source}",
            path.display()
        )),
        other => other,
    })?;
    let Some(mut bytes) = bytes else {
        return Ok(None);
    };
    String::from_utf8(std::mem::take(&mut *bytes))
        .map(Some)
        .map_err(|_| {
            Error::InvalidInput(format!(
                "cannot read config file {}: it is not UTF-8 text",
                path.display()
            ))
        })
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
        let text = match read_settings(&path)? {
            Some(t) => t,
            None if !required => return Ok(Self::default()),
            None => {
                return Err(Error::InvalidInput(format!(
                    "cannot read config file {}: {}",
                    path.display(),
                    std::io::Error::from(std::io::ErrorKind::NotFound)
                )))
            }
        };
        Self::from_text(&path, text)
            .map_err(|m| Error::InvalidInput(format!("invalid config file {m}")))
    }

    /// Parse the contents of `path`. Errors read `PATH:LINE: message`.
    pub fn from_text(path: &Path, text: String) -> std::result::Result<Self, String> {
        let mut cfg: Self = toml::from_str(&text)
            .map_err(|e| toml_error(&path.display().to_string(), &text, &e))?;
        cfg.origin = Some(Origin {
            path: path.to_path_buf(),
            text,
        });
        Ok(cfg)
    }

    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The names declared in `[[sinks]]`.
    pub fn sink_names(&self) -> Vec<&str> {
        self.sinks.iter().map(|s| s.name()).collect()
    }

    /// Validate and resolve the fleet policy (`[policy]`, `[[accounts]]`,
    /// `[[rotations]]`). Every error is reported, one per line, as `PATH:LINE: key:
    /// message`.
    pub fn fleet_policy(&self) -> Result<FleetPolicy> {
        FleetPolicy::resolve(
            &self.policy,
            &self.accounts,
            &self.rotations,
            &self.sink_names(),
        )
        .map_err(|errs| {
            let (file, text) = match &self.origin {
                Some(o) => (o.path.display().to_string(), Some(o.text.as_str())),
                None => ("settings file".to_string(), None),
            };
            Error::InvalidInput(format!(
                "invalid fleet policy:\n{}",
                errs.render(&file, text)
            ))
        })
    }
}

/// `FILE:LINE: message` for a TOML syntax or schema error.
pub fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(s) => format!(
            "{file}:{}: {}",
            crate::fleet::policy::line_of(text, s.start),
            e.message().trim_end()
        ),
        None => format!("{file}: {}", e.message().trim_end()),
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
        // The fleet sections are valid as written, and set every policy key.
        let policy = cfg.fleet_policy().unwrap_or_else(|e| panic!("{e}"));
        assert!(!policy.accounts.is_empty() && !policy.rotations.is_empty());
        assert_eq!(policy.defaults, crate::fleet::policy::Lifecycle::default());
        assert_eq!(policy.limits, crate::fleet::policy::Limits::default());
        for key in [
            "max_age_days",
            "rotate_before_days",
            "retire",
            "grace_days",
            "delete_after_days",
            "delete_inactive",
            "verify_timeout",
            "concurrency",
            "max_failures",
            "canary",
            "usage",
            "quiet_hours",
        ] {
            let set = text.lines().any(|l| l.starts_with(&format!("{key} = ")));
            assert!(set, "[policy] key {key} is not in keyturn.example.toml");
        }
    }

    #[test]
    fn errors_name_file_and_line() {
        let path = Path::new("/etc/keyturn.toml");
        let err =
            FileConfig::from_text(path, "[rotate]\n\nverify_timout = 5\n".into()).unwrap_err();
        assert!(
            err.starts_with("/etc/keyturn.toml:3: unknown field `verify_timout`"),
            "{err}"
        );
        let cfg = FileConfig::from_text(
            path,
            "[[sinks]]\nname = \"s\"\ntype = \"env-file\"\npath = \"/tmp/s.env\"\n[[rotations]]\nname = \"r\"\nsinks = [\"t\"]\n".into(),
        )
        .unwrap();
        assert_eq!(cfg.sink_names(), ["s"]);
        let err = cfg.fleet_policy().unwrap_err().to_string();
        assert!(
            err.contains("/etc/keyturn.toml:7: rotations[0].sinks: \"t\" is not declared in [[sinks]] (declared: s)"),
            "{err}"
        );
        let err = FileConfig::from_text(path, "[[sinks]]\ntype = \"x\"\n".into()).unwrap_err();
        assert!(err.contains("unknown variant `x`"), "{err}");
    }

    #[test]
    fn example_sinks_are_valid() {
        let cfg = FileConfig::parse(include_str!("../../../keyturn.example.toml")).unwrap();
        assert!(cfg.sinks.len() >= 6);
        crate::sink::validate_declared(&cfg.sinks).unwrap();
    }

    #[test]
    fn example_usage_regions_are_unset() {
        let cfg = FileConfig::parse(include_str!("../../../keyturn.example.toml")).unwrap();
        assert_eq!(cfg.usage.regions, None);
    }

    #[test]
    fn usage_regions_parse() {
        let cfg = FileConfig::parse("[usage]\nregions = [\"us-east-1\", \"eu-west-1\"]\n").unwrap();
        assert_eq!(
            cfg.usage.regions,
            Some(vec!["us-east-1".to_string(), "eu-west-1".to_string()])
        );
        assert!(FileConfig::parse("[usage]\nregion = []\n").is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = FileConfig::parse("[rotate]\nverify_timout = 5\n").unwrap_err();
        assert!(err.contains("verify_timout"), "{err}");
    }
}
