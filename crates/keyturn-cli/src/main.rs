//! The `keyturn` command: parse flags, set up logging, resolve settings, call the
//! library, map the result to an exit code. No rotation logic lives here.

mod args;
mod generate;

use args::{Cli, Command};
use clap::Parser;
use keyturn::error::{chain, exit};
use keyturn::printer::Printer;
use std::io::IsTerminal;
use std::process::ExitCode;

/// Environment variables that would make the AWS SDK log response bodies (new secret
/// access keys among them) are removed before any thread starts: keyturn stays silent
/// about secrets whatever the environment says.
const SENSITIVE_LOGGING_VARS: [&str; 1] = ["LOG_SENSITIVE_BODIES"];

fn main() -> ExitCode {
    let scrubbed: Vec<&str> = SENSITIVE_LOGGING_VARS
        .into_iter()
        .filter(|v| std::env::var_os(v).is_some())
        .collect();
    for v in &scrubbed {
        // Single-threaded here: no other thread can read the environment concurrently.
        std::env::remove_var(v);
    }
    if let Some(code) = generate::man_pages_from_argv() {
        return code;
    }
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    for v in scrubbed {
        tracing::debug!("ignored {v}: keyturn never logs request or response bodies");
    }
    let printer = Printer::stdio(cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            printer.error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(exit::FAILURE as u8);
        }
    };
    let code = match runtime.block_on(run(cli, &printer)) {
        Ok(code) => code,
        Err(e) => {
            printer.error(&chain(&e));
            e.exit_code()
        }
    };
    ExitCode::from(code as u8)
}

async fn run(cli: Cli, printer: &Printer) -> keyturn::Result<i32> {
    use keyturn::commands::{history, resume, rollback, rotate};
    use keyturn::remote::RemoteConfig;
    // Generated from the flags alone: no settings file, no AWS.
    if let Command::Completions(a) = &cli.command {
        return generate::completions(a, printer);
    }
    let file = match &cli.command {
        // `config check` reads the file itself, to report every error in it.
        Command::Config(_) => keyturn::config::FileConfig::default(),
        _ => keyturn::config::FileConfig::load(cli.config.as_deref())?,
    };
    let journal = cli.journal_settings(&file)?;
    match &cli.command {
        Command::Rotate(a) => {
            let settings = a.resolve(&file)?;
            if settings.dry_run {
                // A dry run changes nothing, not even the journal.
                return rotate::rotate(&settings, &keyturn::journal::NullJournal, printer).await;
            }
            let j = journal.open(&settings.remote).await?;
            rotate::rotate(&settings, &j, printer).await
        }
        Command::Resume(a) => {
            let settings = a.resolve()?;
            let j = journal.open(&RemoteConfig::default()).await?;
            resume::resume(&settings, &j, printer).await
        }
        Command::History(a) => {
            let settings = a.resolve()?;
            let j = journal.open_read_only(&RemoteConfig::default()).await?;
            history::history(&settings, &j, printer).await
        }
        Command::Rollback(a) => {
            let settings = a.resolve()?;
            let j = journal.open(&settings.remote).await?;
            rollback::rollback(&settings, &j, printer).await
        }
        Command::Audit(a) => {
            let settings = a.resolve(&file)?;
            keyturn::commands::audit::audit(&settings, printer).await
        }
        Command::Run(a) => {
            let settings = a.resolve();
            if settings.options.dry_run {
                // A dry run reads the journal (who created which key) and writes nothing.
                let j = journal.open_read_only(&settings.remote).await?;
                return keyturn::commands::run::run(&settings, &file, &j, printer).await;
            }
            let j = journal.open(&settings.remote).await?;
            keyturn::commands::run::run(&settings, &file, &j, printer).await
        }
        Command::Config(args::ConfigCommand::Check) => {
            let settings = args::ConfigCommand::check_settings(cli.config.clone());
            keyturn::commands::config_check::config_check(&settings, printer).await
        }
        Command::Policy(a) => {
            keyturn::commands::policy::policy(&a.resolve()?, &file, &journal, printer).await
        }
        Command::Serve(a) => {
            let settings = a.resolve()?;
            let j = if settings.read_only {
                journal.open_read_only(&settings.remote).await?
            } else {
                journal.open(&settings.remote).await?
            };
            keyturn::commands::serve::serve(&settings, &file, j, printer).await
        }
        Command::Completions(_) => unreachable!("handled above"),
    }
}

/// Logs go to stderr. Default: keyturn's progress at info, everything else at warn.
/// `-v` adds keyturn debug, `-vv` everything at debug, `-vvv` trace; `RUST_LOG`
/// overrides all of it. Secrets never reach logs at any level (tested).
fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn,keyturn=info",
        (false, 1) => "info,keyturn=debug",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let detailed = verbose > 0 || std::env::var_os("RUST_LOG").is_some();
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .with_writer(std::io::stderr);
    if detailed {
        builder.init();
    } else {
        builder
            .without_time()
            .with_target(false)
            .with_level(true)
            .init();
    }
}
