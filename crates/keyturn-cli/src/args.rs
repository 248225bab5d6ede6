//! Command-line flags (clap derive) and their resolution into the library's validated
//! settings structs. Precedence: flag > environment variable > config file > default.

use clap::{Args, Parser, Subcommand, ValueEnum};
use keyturn::access::{is_role_arn, is_role_name};
use keyturn::audit::render::Format;
use keyturn::audit::usage::UsageOptions;
use keyturn::audit::{AuditOptions, Policy, Source};
use keyturn::commands::audit::AuditSettings;
use keyturn::commands::config_check::ConfigCheckSettings;
use keyturn::commands::history::HistorySettings;
use keyturn::commands::policy::{PolicyFormat, PolicySettings};
use keyturn::commands::resume::ResumeSettings;
use keyturn::commands::rollback::RollbackSettings;
use keyturn::commands::rotate::{KeyOwner, RotateSettings};
use keyturn::config::FileConfig;
use keyturn::error::{Error, Result};
use keyturn::journal::JournalSettings;
use keyturn::plan::PlanOptions;
use keyturn::printer::{HistoryFormat, OutputFormat};
use keyturn::privilege::Target;
use keyturn::remote::RemoteConfig;
use keyturn::validate;
use keyturn::verify::VerifyPolicy;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  AWS or runtime failure (access denied, throttling after retries, verification failed)
  2  invalid input or safety guard (nothing was changed): unknown user, two-key limit
     with nothing eligible to free, missing --yes, bad flag values, lock held
  3  audit only: findings present (or an account could not be audited)";

#[derive(Debug, Parser)]
#[command(
    name = "keyturn",
    version,
    about = "Rotate AWS IAM user access keys safely",
    long_about = "Rotate AWS IAM user access keys safely: respect the two-key limit, verify the new key with STS before retiring old ones, journal every step so a crash can be resumed, and deliver the new key where it is used.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// More log output on stderr (-v, -vv, -vvv). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Settings file [default: ~/.config/keyturn/config.toml].
    #[arg(long, global = true, env = "KEYTURN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The crash-safe rotation journal (SQLite) [default:
    /// $XDG_STATE_HOME/keyturn/journal.sqlite; config: journal.path]. Config
    /// journal.backend = "dynamodb" (with journal.table, journal.kms_key) keeps it in
    /// DynamoDB instead; journal.lease_seconds sets how long a user's lock holds.
    #[arg(long, global = true, env = "KEYTURN_JOURNAL", value_name = "PATH")]
    pub journal: Option<PathBuf>,

    /// Seal journaled secrets with this AWS KMS key (id, ARN or alias) instead of the
    /// local key file beside the journal [config: journal.kms_key].
    #[arg(
        long,
        global = true,
        env = "KEYTURN_JOURNAL_KMS_KEY",
        value_name = "KEY"
    )]
    pub journal_kms_key: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new access key for a user (--user) or for the caller's own profile
    /// (--profile alone), verify it, and retire old keys as asked.
    #[command(after_help = EXIT_CODES)]
    Rotate(RotateArgs),

    /// Finish rotations that were interrupted (all of them, or RUN_ID), ending where an
    /// uninterrupted run would have; re-delivers the new key.
    #[command(after_help = EXIT_CODES)]
    Resume(ResumeArgs),

    /// Show journaled rotations: runs, their steps and outcome (key ids masked).
    History(HistoryArgs),

    /// Undo a rotation: re-activate the key it deactivated and deactivate the key it
    /// created. Refused (exit 2) when the run deleted the old key.
    #[command(after_help = EXIT_CODES)]
    Rollback(RollbackArgs),

    /// Report access keys that break the rotation policy (too old, unused, two Active,
    /// stale Inactive, root key), in one account, several, or a whole Organization.
    #[command(after_help = AUDIT_AFTER_HELP)]
    Audit(AuditArgs),

    /// Fleet run: advance every key the settings file's [[rotations]] select, in every
    /// [[accounts]] entry, by one lifecycle step (rotate, retire, delete), idempotently.
    #[command(after_help = RUN_AFTER_HELP)]
    Run(RunArgs),

    /// Print a shell completion script for bash, zsh, fish or powershell on stdout.
    #[command(after_help = COMPLETIONS_AFTER_HELP)]
    Completions(CompletionsArgs),

    /// Work with the settings file.
    #[command(subcommand)]
    Config(ConfigCommand),

    /// A local web page of the fleet: every selected user's keys, outcome now, last run
    /// and next due date, journal history, a Rotate now button (see docs/serve.md).
    #[command(after_help = SERVE_AFTER_HELP)]
    Serve(ServeArgs),
    /// Print the least-privilege IAM policy for what the settings file does (its
    /// rotations, retirements, sinks, journal and accounts). No AWS call.
    #[command(after_help = POLICY_AFTER_HELP)]
    Policy(PolicyArgs),
}

const POLICY_AFTER_HELP: &str = "\
Placeholders (fill them in with --set, or let a template do it): ${Partition},
${Account} and ${Region} (where keyturn's own credentials work), ${OrganizationId}
(with an organization account entry), ${RotatorRoleArn} (member-role trust policy).

Examples:
  keyturn policy --for cli --set Partition=aws --set Account=123456789012 --set Region=eu-west-1
  keyturn policy --for member-role --format yaml

Exit codes:
  0  printed
  2  the settings are invalid, or the target cannot run them (e.g. --for lambda with
     an SQLite journal)";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyTarget {
    /// The credentials keyturn runs with from cron, systemd or a shell.
    Cli,
    /// The Lambda function's execution role.
    Lambda,
    /// The role assumed in each member account: its policy and its trust policy.
    MemberRole,
    /// An IAM user rotating its own key (rotate --profile), scoped to ${aws:username}.
    #[value(name = "self")]
    SelfRotation,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyFormatArg {
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The principal the policy is for.
    #[arg(long = "for", value_enum, default_value = "cli", value_name = "TARGET")]
    pub target: PolicyTarget,

    /// Output format.
    #[arg(long, value_enum, default_value = "json", value_name = "FORMAT")]
    pub format: PolicyFormatArg,

    /// Fill in a placeholder: Partition, Account, Region, OrganizationId or
    /// RotatorRoleArn (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
}

impl PolicyArgs {
    pub fn resolve(&self) -> Result<PolicySettings> {
        Ok(PolicySettings {
            target: match self.target {
                PolicyTarget::Cli => Target::Cli,
                PolicyTarget::Lambda => Target::Lambda,
                PolicyTarget::MemberRole => Target::MemberRole,
                PolicyTarget::SelfRotation => Target::SelfRotation,
            },
            format: match self.format {
                PolicyFormatArg::Json => PolicyFormat::Json,
                PolicyFormatArg::Yaml => PolicyFormat::Yaml,
            },
            vars: PolicySettings::parse_vars(&self.set)?,
        })
    }
}

const SERVE_AFTER_HELP: &str = "\
Opens no browser: it prints the URL with a fresh access token on stderr once; the
page trades it for a cookie. Every request needs the token; POSTs from the page also
need its CSRF token. Ctrl-C stops the server.

Exit codes:
  0  stopped with Ctrl-C
  2  invalid settings (a non-loopback --listen without --token-file, no [[rotations]])
  1  could not listen, or AWS/journal failure at start";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Not a loopback address only with --token-file.
    #[arg(
        long,
        env = "KEYTURN_SERVE_LISTEN",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:8787"
    )]
    pub listen: std::net::SocketAddr,

    /// Read the access token from this file (its first line, at least 16 characters)
    /// instead of generating one; required for a non-loopback --listen.
    #[arg(long, env = "KEYTURN_SERVE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Show only: no Rotate now or Resume button, every POST refused (403).
    #[arg(long)]
    pub read_only: bool,

    #[command(flatten)]
    pub remote: RemoteArgs,
}

impl ServeArgs {
    pub fn resolve(&self) -> Result<keyturn::commands::serve::ServeCommandSettings> {
        Ok(keyturn::commands::serve::ServeCommandSettings {
            listen: self.listen,
            token_file: self.token_file.clone(),
            read_only: self.read_only,
            remote: self.remote.remote()?,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate the settings file (--config FILE, else the default one) and
    /// say what each [[rotations]] block selects and does. No AWS call.
    #[command(after_help = "\
Exit codes:
  0  the file is valid
  2  it is not: every error is on stderr as FILE:LINE: key: message")]
    Check,
}

impl ConfigCommand {
    pub fn check_settings(config: Option<PathBuf>) -> ConfigCheckSettings {
        ConfigCheckSettings { path: config }
    }
}

impl Cli {
    /// Journal backend and location: flag/env > config file > default.
    pub fn journal_settings(&self, file: &FileConfig) -> Result<JournalSettings> {
        JournalSettings::resolve(
            self.journal.clone(),
            self.journal_kms_key.clone(),
            &file.journal,
        )
    }
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run to finish [default: every interrupted run, oldest first].
    #[arg(value_name = "RUN_ID")]
    pub run_id: Option<String>,

    /// MFA code, when the interrupted run rotated a profile with mfa_serial.
    #[arg(long, value_name = "CODE")]
    pub mfa_code: Option<String>,
}

impl ResumeArgs {
    pub fn resolve(&self) -> Result<ResumeSettings> {
        if let Some(id) = &self.run_id {
            validate::run_id("RUN_ID", id)?;
        }
        Ok(ResumeSettings {
            run_id: self.run_id.clone(),
            mfa_code: self.mfa_code.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TableOrJson {
    Table,
    Json,
}

impl From<TableOrJson> for HistoryFormat {
    fn from(o: TableOrJson) -> Self {
        match o {
            TableOrJson::Table => HistoryFormat::Table,
            TableOrJson::Json => HistoryFormat::Json,
        }
    }
}

const RUN_AFTER_HELP: &str = "\
The policy is the settings file's [policy], [[accounts]], [[rotations]] and [[sinks]]
(see keyturn.example.toml; `keyturn config check` validates it).

Exit codes:
  0  every selected user ended ok, rotated, retired, deleted or waiting
  1  no account could be reached
  2  bad settings file or flags (nothing was changed)
  3  a user is needs-attention, failed or not-attempted, or an account was unreachable";

/// `--output` of `keyturn run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunOutputArg {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Plan only: the report of what a run would do for each user, and why. Nothing
    /// is changed, the journal is not written.
    #[arg(long)]
    pub dry_run: bool,

    /// stdout: the summary table, or the whole report as JSON.
    #[arg(long, value_enum, default_value = "table", value_name = "FORMAT")]
    pub output: RunOutputArg,

    /// Also write the JSON report to this file (atomically, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Only this user of this account (account id, or [[accounts]] / Organization
    /// name; repeatable). Still only if a [[rotations]] block selects it.
    #[arg(long = "only", value_name = "ACCOUNT:USER")]
    pub only: Vec<keyturn::fleet::runner::Only>,

    /// Users in flight at once, across accounts (1-64) [default: policy.concurrency, 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: Option<u16>,

    /// Failure budget: start no new user after this many failed [default:
    /// policy.max_failures, 5].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub max_failures: Option<u32>,

    /// AWS region to sign requests for (also AWS_REGION; IAM is global) [default: from
    /// the environment or the default profile, else us-east-1].
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Send AWS requests to this endpoint (also AWS_ENDPOINT_URL), e.g. a local emulator.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

impl RunArgs {
    pub fn resolve(&self) -> keyturn::commands::run::RunSettings {
        use keyturn::commands::run::{RunOutput, RunSettings};
        let remote = RemoteConfig {
            profile: None,
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            ..RemoteConfig::default()
        };
        let options = keyturn::fleet::runner::RunOptions {
            dry_run: self.dry_run,
            only: self.only.clone(),
            concurrency: self.concurrency.map(usize::from),
            max_failures: self.max_failures.map(|n| n as usize),
            ..Default::default()
        };
        let mut s = RunSettings::new(remote, options);
        s.output = match self.output {
            RunOutputArg::Table => RunOutput::Table,
            RunOutputArg::Json => RunOutput::Json,
        };
        s.report = self.report.clone();
        s.progress_bar = std::io::stderr().is_terminal();
        s
    }
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only runs of this IAM user.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value = "table", value_name = "FORMAT")]
    pub output: TableOrJson,
}

impl HistoryArgs {
    pub fn resolve(&self) -> Result<HistorySettings> {
        if let Some(u) = &self.user {
            validate::user_name("--user", u)?;
        }
        Ok(HistorySettings {
            user: self.user.clone(),
            output: self.output.into(),
        })
    }
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The IAM user whose rotation to undo.
    #[arg(long, value_name = "NAME")]
    pub user: String,

    /// The run to undo [default: the user's latest completed rotation].
    #[arg(long = "run", value_name = "RUN_ID")]
    pub run_id: Option<String>,

    #[command(flatten)]
    pub remote: RemoteArgs,

    /// Output format.
    #[arg(long, value_enum, default_value = "table", value_name = "FORMAT")]
    pub output: TableOrJson,
}

impl RollbackArgs {
    pub fn resolve(&self) -> Result<RollbackSettings> {
        validate::user_name("--user", &self.user)?;
        if let Some(id) = &self.run_id {
            validate::run_id("--run", id)?;
        }
        Ok(RollbackSettings {
            remote: self.remote.remote()?,
            user: self.user.clone(),
            run_id: self.run_id.clone(),
            output: self.output.into(),
        })
    }
}

/// How to reach AWS (same meaning as in the AWS CLI).
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// AWS profile used to call AWS [default: the SDK's default credential chain]. With
    /// `rotate` and no --user: the profile whose own key is rotated.
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,

    /// AWS region to sign requests for (also AWS_REGION; IAM is global) [default: from
    /// the profile, else us-east-1].
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Send AWS requests to this endpoint (also AWS_ENDPOINT_URL), e.g. a local emulator.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

impl RemoteArgs {
    /// How to reach AWS; a malformed `--profile` is refused here.
    pub fn remote(&self) -> Result<RemoteConfig> {
        if let Some(p) = &self.profile {
            validate::profile_name("--profile", p)?;
        }
        Ok(RemoteConfig {
            profile: self.profile.clone(),
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            ..RemoteConfig::default()
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputArg {
    Env,
    Json,
    Table,
}

impl From<OutputArg> for OutputFormat {
    fn from(o: OutputArg) -> Self {
        match o {
            OutputArg::Env => OutputFormat::Env,
            OutputArg::Json => OutputFormat::Json,
            OutputArg::Table => OutputFormat::Table,
        }
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("whose").required(true).multiple(true).args(["user", "profile"])))]
pub struct RotateArgs {
    /// The IAM user whose key to rotate. Without it, `--profile NAME` rotates the key
    /// that profile itself uses (self-rotation).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    #[command(flatten)]
    pub remote: RemoteArgs,

    /// Self-rotation: deactivate the replaced key instead of deleting it, so it can be
    /// re-activated if something still needs it.
    #[arg(long, requires = "profile", conflicts_with = "user")]
    pub keep_old_inactive: bool,

    /// Self-rotation of a role profile (role_arn + source_profile): rotate the
    /// source_profile's key instead.
    #[arg(long, requires = "profile", conflicts_with = "user")]
    pub source_profile_ok: bool,

    /// Self-rotation of a profile with mfa_serial: the current MFA code (prompted on a
    /// terminal when omitted). IAM calls then use an STS session with MFA.
    #[arg(
        long,
        value_name = "CODE",
        requires = "profile",
        conflicts_with = "user"
    )]
    pub mfa_code: Option<String>,

    /// After the new key is verified, deactivate the user's previously Active keys
    /// (needs --yes).
    #[arg(long)]
    pub deactivate_old_keys: bool,

    /// Delete keys that are already Inactive before creating the new key (to free a
    /// slot), and delete the keys this run deactivated (needs --yes).
    #[arg(long)]
    pub delete_inactive_keys: bool,

    /// Confirm deactivations and deletions. Without it those flags exit 2 before
    /// anything changes.
    #[arg(short, long)]
    pub yes: bool,

    /// Print the plan (actions and why) on stdout and change nothing. Exit 0 if the
    /// plan is feasible, 2 if it would fail a guard.
    #[arg(long)]
    pub dry_run: bool,

    /// Format of the new credentials on stdout [default: env; config: rotate.output].
    #[arg(long, value_enum, env = "KEYTURN_OUTPUT", value_name = "FORMAT")]
    pub output: Option<OutputArg>,

    /// Seconds to wait for the new key to verify with STS [default: 60; config:
    /// rotate.verify_timeout].
    #[arg(long, env = "KEYTURN_VERIFY_TIMEOUT", value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub verify_timeout: Option<u64>,

    /// Do not verify the new key (not allowed with --deactivate-old-keys).
    #[arg(long)]
    pub no_verify: bool,

    /// Deliver the new key to this sink, declared as a [[sinks]] table in the settings
    /// file (repeatable, delivered in order; `stdout` is built in). Without --sink the
    /// credentials are printed on stdout.
    #[arg(long = "sink", value_name = "NAME")]
    pub sinks: Vec<String>,
}

impl RotateArgs {
    pub fn resolve(&self, file: &FileConfig) -> Result<RotateSettings> {
        let output = match (self.output, &file.rotate.output) {
            (Some(o), _) => o.into(),
            (None, Some(s)) => OutputFormat::parse(s).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "config rotate.output = {s:?}: expected env, json or table"
                ))
            })?,
            (None, None) => OutputFormat::Env,
        };
        let timeout = self
            .verify_timeout
            .or(file.rotate.verify_timeout)
            .unwrap_or(60);
        if !(1..=3600).contains(&timeout) {
            return Err(Error::InvalidInput(format!(
                "config rotate.verify_timeout = {timeout}: expected 1-3600 seconds"
            )));
        }
        let remote = self.remote.remote()?;
        let owner = match (&self.user, &self.remote.profile) {
            (Some(u), _) => {
                validate::user_name("--user", u)?;
                KeyOwner::User(u.clone())
            }
            (None, Some(p)) if !p.trim().is_empty() => KeyOwner::OwnProfile(p.clone()),
            _ => {
                return Err(Error::InvalidInput(
                    "name the user (--user NAME) or the profile whose own key to rotate (--profile NAME)".into(),
                ))
            }
        };
        if let Some(code) = &self.mfa_code {
            if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
                return Err(Error::InvalidInput(
                    "--mfa-code must be the 6-digit code".into(),
                ));
            }
        }
        keyturn::sink::validate_declared(&file.sinks)?;
        let sinks = keyturn::sink::select(&self.sinks, &file.sinks, output)?;
        Ok(RotateSettings {
            sinks,
            remote,
            owner,
            options: PlanOptions {
                deactivate_old_keys: self.deactivate_old_keys,
                delete_inactive_keys: self.delete_inactive_keys,
                yes: self.yes,
                verify: !self.no_verify,
                keep_old_inactive: self.keep_old_inactive,
                confirmed_evict: false,
                sinks: vec![],
            },
            dry_run: self.dry_run,
            output,
            verify: VerifyPolicy {
                timeout: Duration::from_secs(timeout),
                ..VerifyPolicy::default()
            },
            source_profile_ok: self.source_profile_ok,
            mfa_code: self.mfa_code.clone(),
            interactive: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
        })
    }
}

const AUDIT_AFTER_HELP: &str = "\
Findings (ages in whole days, as AWS Config's access-keys-rotated rule counts them):
  too-old         Active key older than --max-age-days
  unused          Active key not used for more than --max-unused-days (or never used
                  and older than that); only with --max-unused-days
  two-active      the user has two Active keys
  stale-inactive  Inactive key older than --max-age-days: delete it
  root-key        the root user has an access key
  ok              compliant (listed in json and csv only)

Exit codes:
  0  every key in every account is compliant
  1  no account could be audited (AWS failure in every account)
  2  invalid input (bad flag values), nothing was called
  3  findings present, or some account could not be audited (its error row says why)";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SourceArg {
    /// The IAM credential report (a few calls per account; may be up to 4 h old).
    Report,
    /// ListUsers + ListAccessKeys + GetAccessKeyLastUsed (live, key ids; one call per
    /// user and key).
    Api,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Table,
    Json,
    Csv,
    Markdown,
    Html,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Audit the account of this AWS profile, with its credentials (repeatable). Without
    /// --profile, --role-arn and --organization: the caller's account (default chain).
    #[arg(long = "profile", value_name = "PROFILE")]
    pub profiles: Vec<String>,

    /// Audit the account of this IAM role, assumed with the default credential chain
    /// (session name keyturn-audit; repeatable).
    #[arg(long = "role-arn", value_name = "ARN")]
    pub role_arns: Vec<String>,

    /// Audit every ACTIVE account of the caller's Organization (ListAccounts), assuming
    /// --role-name in each; the caller's own account is read with its own credentials.
    #[arg(long, requires = "role_name")]
    pub organization: bool,

    /// The role to assume in each Organization account (with --organization).
    #[arg(long, value_name = "NAME", requires = "organization")]
    pub role_name: Option<String>,

    /// Active keys older than this are too-old, Inactive ones stale-inactive [default:
    /// 90; config: audit.max_age_days].
    #[arg(long, env = "KEYTURN_AUDIT_MAX_AGE_DAYS", value_name = "DAYS",
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub max_age_days: Option<u32>,

    /// Active keys not used for more than this many days (or never used and older) are
    /// unused [default: off; config: audit.max_unused_days].
    #[arg(long, env = "KEYTURN_AUDIT_MAX_UNUSED_DAYS", value_name = "DAYS",
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub max_unused_days: Option<u32>,

    /// Only users whose IAM path starts with this (e.g. /bots/). The root user is
    /// checked only for the whole account (/).
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub user_path: String,

    /// Where to read keys: the credential report, or the IAM API. The report falls back
    /// to the API (with a warning) when it is denied.
    #[arg(long, value_enum, default_value = "report", value_name = "SOURCE")]
    pub source: SourceArg,

    /// Output format. json and csv list compliant keys too (finding ok).
    #[arg(long, value_enum, default_value = "table", value_name = "FORMAT")]
    pub format: FormatArg,

    /// Write the output to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Accounts audited at once, and requests in flight per account with --source api
    /// (1-64) [default: 8; config: audit.concurrency].
    #[arg(long, env = "KEYTURN_AUDIT_CONCURRENCY", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: Option<u16>,

    /// AWS region to sign requests for (also AWS_REGION; IAM is global) [default: from
    /// the profile, else us-east-1].
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Send AWS requests to this endpoint (also AWS_ENDPOINT_URL), e.g. a local emulator.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Also list who uses each Active key: CloudTrail consumers (source IP, user agent,
    /// events, APIs) of the last 90 days, in the regions of [usage] regions (default:
    /// the account's enabled regions). Needs cloudtrail:LookupEvents; 2 lookups/s per
    /// region, one or more per key.
    #[arg(long)]
    pub usage: bool,
}

impl AuditArgs {
    pub fn resolve(&self, file: &FileConfig) -> Result<AuditSettings> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        let max_age_days = self.max_age_days.or(file.audit.max_age_days).unwrap_or(90);
        if !(1..=36500).contains(&max_age_days) {
            return bad(format!(
                "config audit.max_age_days = {max_age_days}: expected 1-36500"
            ));
        }
        let max_unused_days = self.max_unused_days.or(file.audit.max_unused_days);
        if let Some(d) = max_unused_days.filter(|d| !(1..=36500).contains(d)) {
            return bad(format!(
                "config audit.max_unused_days = {d}: expected 1-36500"
            ));
        }
        let concurrency = self
            .concurrency
            .map(usize::from)
            .or(file.audit.concurrency)
            .unwrap_or(8);
        if !(1..=64).contains(&concurrency) {
            return bad(format!(
                "config audit.concurrency = {concurrency}: expected 1-64"
            ));
        }
        validate::path("--user-path", &self.user_path)?;
        for p in &self.profiles {
            validate::profile_name("--profile", p)?;
        }
        if let Some(a) = self.role_arns.iter().find(|a| !is_role_arn(a)) {
            return bad(format!(
                "--role-arn {a:?}: expected an IAM role ARN like arn:aws:iam::123456789012:role/NAME"
            ));
        }
        if let Some(n) = self.role_name.as_deref().filter(|n| !is_role_name(n)) {
            return bad(format!(
                "--role-name {n:?}: expected an IAM role name (1-64 of A-Z a-z 0-9 + = , . @ _ -)"
            ));
        }
        if let Some(regions) = file.usage.regions.as_deref().filter(|_| self.usage) {
            keyturn::usage::validate_regions(regions)?;
        }
        let color = self.out.is_none()
            && std::io::IsTerminal::is_terminal(&std::io::stdout())
            && std::env::var_os("NO_COLOR").is_none();
        Ok(AuditSettings {
            options: AuditOptions {
                remote: RemoteConfig {
                    profile: None,
                    region: self.region.clone(),
                    endpoint_url: self.endpoint_url.clone(),
                    ..RemoteConfig::default()
                },
                profiles: self.profiles.clone(),
                role_arns: self.role_arns.clone(),
                organization_role: if self.organization {
                    self.role_name.clone()
                } else {
                    None
                },
                policy: Policy {
                    max_age_days,
                    max_unused_days,
                },
                user_path: self.user_path.clone(),
                source: match self.source {
                    SourceArg::Report => Source::Report,
                    SourceArg::Api => Source::Api,
                },
                concurrency,
                usage: self.usage.then(|| UsageOptions {
                    regions: file.usage.regions.clone(),
                }),
            },
            format: match self.format {
                FormatArg::Table => Format::Table,
                FormatArg::Json => Format::Json,
                FormatArg::Csv => Format::Csv,
                FormatArg::Markdown => Format::Markdown,
                FormatArg::Html => Format::Html,
            },
            out: self.out.clone(),
            color,
        })
    }
}

const COMPLETIONS_AFTER_HELP: &str = "\
Install (the script is generated from this binary's own flags, so regenerate it after
an upgrade):
  bash        keyturn completions bash > ~/.local/share/bash-completion/completions/keyturn
  zsh         keyturn completions zsh > ~/.zfunc/_keyturn   (with fpath+=~/.zfunc before compinit)
  fish        keyturn completions fish > ~/.config/fish/completions/keyturn.fish
  powershell  keyturn completions powershell >> $PROFILE";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
    Powershell,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: ShellArg,
}
