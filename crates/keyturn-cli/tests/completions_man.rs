//! Shell completions (`keyturn completions SHELL`) and man pages (`make man`), both
//! generated from the clap definitions: every subcommand `--help` lists is in them.
//! No emulator: neither touches AWS or the settings file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn keyturn() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyturn"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1");
    cmd
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The subcommands `keyturn --help` lists (without `help`), so the tests follow the
/// CLI as it grows.
fn subcommands() -> Vec<String> {
    let out = keyturn().arg("--help").output().unwrap();
    let (help, _) = text(&out);
    let mut names = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line == "Commands:" {
            in_commands = true;
            continue;
        }
        if in_commands {
            if line.trim().is_empty() {
                break;
            }
            // "  rotate       Create ..." (continuation lines are indented further).
            if line.starts_with("  ") && !line.starts_with("   ") {
                let name = line.split_whitespace().next().unwrap();
                if name != "help" {
                    names.push(name.to_string());
                }
            }
        }
    }
    for expected in [
        "rotate",
        "resume",
        "history",
        "rollback",
        "audit",
        "completions",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from --help:\n{help}"
        );
    }
    names
}

#[test]
fn bash_completions_offer_every_subcommand() {
    let out = keyturn().args(["completions", "bash"]).output().unwrap();
    let (script, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        script.contains("complete -F _keyturn"),
        "a bash completion function"
    );
    // The top-level word list offers each subcommand.
    let top = script
        .lines()
        .find(|l| l.trim_start().starts_with("opts=\"") && l.contains("--journal"))
        .unwrap_or_else(|| panic!("no top-level word list:\n{script}"));
    let words: Vec<&str> = top
        .trim()
        .trim_start_matches("opts=\"")
        .trim_end_matches('"')
        .split_whitespace()
        .collect();
    for sub in subcommands() {
        assert!(words.contains(&sub.as_str()), "{sub} not offered: {top}");
    }
    // Flags and their values are completed too.
    assert!(script.contains("--max-age-days"));
    assert!(
        script.contains("table json csv markdown html"),
        "--format values"
    );
    // The man-page switch is for `make man`, not for users.
    assert!(!script.contains("generate-man"));
}

#[test]
fn zsh_fish_and_powershell_completions_name_the_subcommands() {
    for (shell, marker) in [
        ("zsh", "#compdef keyturn"),
        ("fish", "complete -c keyturn"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = keyturn().args(["completions", shell]).output().unwrap();
        let (script, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{shell}: {stderr}");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for sub in subcommands() {
            assert!(script.contains(&sub), "{shell}: {sub} missing");
        }
    }
}

#[test]
fn completions_need_no_settings_file_and_refuse_unknown_shells() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "this is [not toml").unwrap();
    let out = keyturn()
        .env("KEYTURN_CONFIG", &broken)
        .args(["completions", "fish"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);

    let out = keyturn().args(["completions", "tcsh"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("possible values: bash, zsh, fish, powershell"),
        "{stderr}"
    );
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

#[test]
fn make_man_writes_a_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let man_dir = dir.path().join("man");
    // The Makefile's own recipe, with the binary under test instead of `cargo run`.
    let out = Command::new("make")
        .arg("-C")
        .arg(repo_root())
        .arg("--no-print-directory")
        .arg("man")
        .arg(format!("KEYTURN={}", env!("CARGO_BIN_EXE_keyturn")))
        .arg(format!("MAN_DIR={}", man_dir.display()))
        .output()
        .expect("run make (CI machines have it: `make test` is the entry point)");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("man pages into"), "{stderr}");

    let mut pages: Vec<String> = std::fs::read_dir(&man_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut want: Vec<String> = subcommands()
        .iter()
        .map(|s| format!("keyturn-{s}.1"))
        .chain(["keyturn.1".to_string()])
        .collect();
    want.sort();
    // Nested subcommands get pages of their own (keyturn-config-check.1): every
    // top-level one must be there, and nothing else than keyturn pages.
    for page in &want {
        assert!(pages.contains(page), "{page} missing from {pages:?}");
    }
    assert!(pages
        .iter()
        .all(|p| p.starts_with("keyturn") && p.ends_with(".1")));
    assert!(!pages
        .iter()
        .any(|p| p.contains("help") || p.contains("generate")));

    for sub in subcommands() {
        let page = std::fs::read_to_string(man_dir.join(format!("keyturn-{sub}.1"))).unwrap();
        assert!(
            page.contains(&format!(".TH keyturn-{sub} 1")),
            "{sub}: roff title:\n{page}"
        );
        assert!(
            page.contains(".SH SYNOPSIS") && page.contains(".SH OPTIONS"),
            "{sub}"
        );
        assert!(
            page.contains(&format!("\\fBkeyturn {sub}\\fR")),
            "{sub}: synopsis"
        );
    }
    let audit = std::fs::read_to_string(man_dir.join("keyturn-audit.1")).unwrap();
    assert!(audit.contains("max\\-age\\-days"), "flags are documented");
    assert!(
        audit.contains("Findings (ages in whole days"),
        "the after-help text is kept"
    );
    let top = std::fs::read_to_string(man_dir.join("keyturn.1")).unwrap();
    for sub in subcommands() {
        assert!(
            top.contains(&format!("keyturn\\-{sub}(1)")),
            "keyturn.1 refers to {sub}"
        );
    }
}

#[test]
fn the_man_switch_wants_exactly_one_directory() {
    let out = keyturn().arg("--generate-man").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("usage: keyturn --generate-man DIR"));
    let out = keyturn().arg("--help").output().unwrap();
    assert!(
        !text(&out).0.contains("generate-man"),
        "not a user-facing flag"
    );
}
