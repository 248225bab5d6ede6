//! `keyturn config check [--config FILE]`: read and validate the settings file, and
//! say in words what each `[[rotations]]` block selects and does, without any AWS call.
//!
//! Exit 0 when the file is valid, 2 when it is not (every error on stderr as
//! `FILE:LINE: key: message`, so an editor or CI log points at the line).

use crate::config::{default_path, FileConfig};
use crate::error::{exit, Error, Result};
use crate::fleet::policy::{line_of, FleetPolicy};
use crate::printer::Printer;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct ConfigCheckSettings {
    /// `--config` / `KEYTURN_CONFIG`; `None`: the default settings file.
    pub path: Option<PathBuf>,
}

pub async fn config_check(settings: &ConfigCheckSettings, printer: &Printer) -> Result<i32> {
    let path = match settings.path.clone().or_else(default_path) {
        Some(p) => p,
        None => {
            return Err(Error::InvalidInput(
                "no settings file to check: pass --config FILE (HOME is not set)".into(),
            ))
        }
    };
    let text = crate::config::read_settings(&path)?.ok_or_else(|| {
        Error::InvalidInput(format!(
            "cannot read settings file {}: {}{}",
            path.display(),
            std::io::Error::from(std::io::ErrorKind::NotFound),
            if settings.path.is_none() {
                " (the default location; pass --config FILE)"
            } else {
                ""
            }
        ))
    })?;
    let cfg = match FileConfig::from_text(&path, text.clone()) {
        Ok(c) => c,
        Err(msg) => {
            printer.error(&msg);
            printer.status(&format!(
                "keyturn: {} is not valid; nothing was called",
                path.display()
            ));
            return Ok(exit::GUARD);
        }
    };
    let file = path.display().to_string();
    let policy = match FleetPolicy::resolve(
        &cfg.policy,
        &cfg.accounts,
        &cfg.rotations,
        &cfg.sink_names(),
    ) {
        Ok(p) => p,
        Err(errs) => {
            for line in errs.render(&file, Some(&text)).lines() {
                printer.error(line);
            }
            printer.status(&format!(
                "keyturn: {} error{} in {file}; nothing was called",
                errs.0.len(),
                if errs.0.len() == 1 { "" } else { "s" }
            ));
            return Ok(exit::GUARD);
        }
    };
    let lines: Vec<usize> = cfg
        .rotations
        .iter()
        .map(|r| line_of(&text, r.span().start))
        .collect();
    printer
        .stdout(&describe(&file, &policy, &lines, &cfg.sink_names()))
        .map_err(|e| Error::io("writing to stdout", e))?;
    Ok(exit::SUCCESS)
}

/// The report of a valid file (stdout).
fn describe(file: &str, policy: &FleetPolicy, lines: &[usize], sinks: &[&str]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{file}: valid");
    if policy.accounts.is_empty() {
        let _ = writeln!(
            s,
            "accounts: none declared; fleet runs use the caller's own account"
        );
    } else {
        let _ = writeln!(s, "accounts:");
        for a in &policy.accounts {
            let _ = writeln!(s, "  {}: {}", a.name, a.describe());
        }
    }
    if !sinks.is_empty() {
        let _ = writeln!(s, "sinks: {}", sinks.join(", "));
    }
    if policy.rotations.is_empty() {
        let _ = writeln!(s, "rotations: none; `keyturn run` selects no user");
        return s;
    }
    let _ = writeln!(
        s,
        "rotations (the first block that selects a user applies to it; users no block selects are left alone):"
    );
    for r in &policy.rotations {
        let line = lines.get(r.index).copied().unwrap_or(0);
        let _ = writeln!(s, "  {}. {} (line {line})", r.index + 1, r.name);
        for l in r.describe(policy) {
            let _ = writeln!(s, "     {l}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn check(text: &str) -> (i32, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyturn.toml");
        std::fs::write(&path, text).unwrap();
        let (printer, out, err) = Printer::capture();
        let code = config_check(&ConfigCheckSettings { path: Some(path) }, &printer)
            .await
            .unwrap();
        (code, out.text(), err.text())
    }

    #[tokio::test]
    async fn the_example_is_valid_and_described() {
        let (code, out, err) = check(include_str!("../../../../keyturn.example.toml")).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("keyturn.toml: valid"), "{out}");
        assert!(
            out.contains("  prod: the account of profile prod-admin"),
            "{out}"
        );
        assert!(out.contains("  1. bots (line "), "{out}");
        assert!(
            out.contains("selects: IAM users named ci-* or deploy-bot"),
            "{out}"
        );
        assert!(out.contains("in accounts prod, org"), "{out}");
    }

    #[tokio::test]
    async fn errors_go_to_stderr_with_lines() {
        let (code, out, err) =
            check("[policy]\nmax_age_days = 0\n[[rotations]]\nname = \"r\"\nsinks = [\"x\"]\n")
                .await;
        assert_eq!(code, 2);
        assert!(out.is_empty());
        assert!(
            err.contains("keyturn.toml:2: policy.max_age_days: 0 is out of range"),
            "{err}"
        );
        assert!(
            err.contains("keyturn.toml:5: rotations[0].sinks: \"x\" is not declared"),
            "{err}"
        );
        assert!(err.contains("2 errors in"), "{err}");
        let (code, _, err) = check("[policy]\nmax_age = 5\n").await;
        assert_eq!(code, 2);
        assert!(
            err.contains("keyturn.toml:2: unknown field `max_age`"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_empty_file_is_valid_and_selects_nobody() {
        let (code, out, _) = check("").await;
        assert_eq!(code, 0);
        assert!(
            out.contains("caller's own account") && out.contains("selects no user"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_missing_file_is_invalid_input() {
        let (printer, _, _) = Printer::capture();
        let err = config_check(
            &ConfigCheckSettings {
                path: Some("/nonexistent/keyturn.toml".into()),
            },
            &printer,
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err
            .to_string()
            .contains("cannot read settings file /nonexistent/keyturn.toml"));
    }
}
