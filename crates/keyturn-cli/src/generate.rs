//! Shell completions and man pages, generated from the same clap definitions that
//! parse the command line (so they can never disagree with `--help`).
//!
//! - `keyturn completions bash|zsh|fish|powershell` prints the script on stdout
//!   (clap_complete).
//! - `keyturn --generate-man DIR` (what `make man` runs) writes one roff page per
//!   command into DIR: `keyturn.1`, `keyturn-rotate.1`, `keyturn-audit.1`, ... and one
//!   per nested subcommand (clap_mangen). It is an xtask-like switch of the real binary
//!   rather than a separate generator binary or a build script because the pages need
//!   the exact `Cli` definition, which lives in this binary crate (a second target
//!   would have to share `args.rs` through a library or `#[path]` and be built
//!   separately), and packagers can run it on the binary they ship. It is recognised
//!   before clap parses anything and is not part of the clap definitions, so it shows
//!   up in no help, completion script or man page (clap_complete lists hidden
//!   subcommands).
//!
//! Neither reads the settings file nor touches AWS: a broken config must not break
//! tab completion.

use crate::args::{Cli, CompletionsArgs, ShellArg};
use clap::CommandFactory;
use keyturn::error::{chain, Error, Result};
use keyturn::printer::Printer;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

/// `keyturn completions SHELL`.
pub fn completions(args: &CompletionsArgs, printer: &Printer) -> Result<i32> {
    use clap_complete::Shell;
    let shell = match args.shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
        ShellArg::Powershell => Shell::PowerShell,
    };
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    let script = String::from_utf8(script)
        .map_err(|e| Error::Runtime(format!("the completion script is not UTF-8: {e}")))?;
    printer
        .stdout(&script)
        .map_err(|e| Error::io("writing the completion script to stdout", e))?;
    Ok(keyturn::error::exit::SUCCESS)
}

/// The switch `make man` uses: `keyturn --generate-man DIR`.
pub const GENERATE_MAN: &str = "--generate-man";

/// `keyturn --generate-man DIR`, when that is the whole command line: the exit code.
pub fn man_pages_from_argv() -> Option<ExitCode> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_none_or(|a| a != GENERATE_MAN) {
        return None;
    }
    let printer = Printer::stdio(false);
    let code = match argv.as_slice() {
        [_, _, dir] => match man_pages(Path::new(dir), &printer) {
            Ok(code) => code,
            Err(e) => {
                printer.error(&chain(&e));
                e.exit_code()
            }
        },
        _ => {
            printer.error(&format!("usage: keyturn {GENERATE_MAN} DIR"));
            keyturn::error::exit::GUARD
        }
    };
    Some(ExitCode::from(code as u8))
}

/// Write the man pages into `dir` (created if missing).
pub fn man_pages(dir: &Path, printer: &Printer) -> Result<i32> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    // As clap_mangen::generate_to does (hidden commands and `help` left out), but
    // keeping the names of the pages written.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    write_pages(cmd, dir, &mut pages)
        .map_err(|e| Error::io(format!("writing man pages into {}", dir.display()), e))?;
    pages.sort();
    printer.status(&format!(
        "keyturn: wrote {} man pages into {}: {}",
        pages.len(),
        dir.display(),
        pages.join(" ")
    ));
    Ok(keyturn::error::exit::SUCCESS)
}

/// The page of `cmd` and of each of its visible subcommands, recursively.
fn write_pages(cmd: clap::Command, dir: &Path, pages: &mut Vec<String>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        write_pages(sub, dir, pages)?;
    }
    let path = clap_mangen::Man::new(cmd)
        .source(format!("keyturn {}", env!("CARGO_PKG_VERSION")))
        .manual("keyturn manual")
        .generate_to(dir)?;
    pages.extend(path.file_name().map(|n| n.to_string_lossy().into_owned()));
    Ok(())
}
