//! Delivery: putting a new key everywhere it is consumed, and proving it arrived, before
//! anything old is retired.
//!
//! A rotated key is useless until its consumers have it. Every rotation therefore ends
//! with one `deliver <sink>` and one `verify-delivery <sink>` plan step per sink, journaled
//! like every other step, so a crash between two sinks resumes at the next one and the
//! old key is retired only once every sink has been verified. Printing credentials on
//! stdout ([`stdout`]) and writing the caller's own profiles ([`profiles`]) are sinks too:
//! there is one delivery path for `rotate --user`, self-rotation, fleet runs and Lambda.
//!
//! - [`SinkSpec`] is a `[[sinks]]` table of the settings file (and what the journal
//!   records, after `{account}`/`{user}` are filled in), [`build`] turns it into a
//!   [`Sink`] ready to run;
//! - [`Sink`] is the contract every destination implements: `prepare` (check access,
//!   read what is there), `deliver` (idempotent write), `verify` (read back), and an
//!   optional `rollback` (restore the previous version where the destination keeps one);
//! - [`FieldMap`] says which value goes into which destination field.
//!
//! A sink error says whether the destination may already hold (part of) the new key
//! ([`Written`]): if no sink may hold it, the new key is deleted again; otherwise nothing
//! is revoked and the run waits for `keyturn resume`.

pub mod command;
pub mod fields;
pub mod files;
pub mod github;
pub mod gitlab;
pub mod http;
pub mod infisical;
pub mod informatica;
pub mod profiles;
pub mod secrets;
pub mod secretsmanager;
pub mod ssm;
pub mod stdout;
pub mod vault;

use crate::aws::NewKey;
use crate::error::{Error, Result};
use crate::printer::{OutputFormat, Printer};
use crate::report::{ProfileUpdate, RotationReport};
use async_trait::async_trait;
use aws_config::SdkConfig;
pub use fields::{Field, FieldMap};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use tokio::sync::OnceCell;

/// The name of the built-in sink that prints the credentials on stdout.
pub const STDOUT: &str = "stdout";
/// The name of the built-in sink of self-rotation (every profile holding the old key).
pub const PROFILES: &str = "profiles";

/// Everything a sink is handed: the new key, whose it is, and the rotation so far.
pub struct Handover<'a> {
    pub key: &'a NewKey,
    pub account: &'a str,
    pub run_id: &'a str,
    /// The Active keys this rotation replaces (a sink may look for them).
    pub replaces: &'a [String],
    /// The rotation as known when this step runs (what `stdout` prints).
    pub report: &'a RotationReport,
}

impl Handover<'_> {
    /// The value of one field of the mapping.
    pub fn value(&self, field: Field) -> fields::Value {
        fields::Value::of(field, self.key, self.account)
    }
}

/// What a destination held before delivery (read by `prepare`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Holding {
    /// It holds this access key id.
    Key(String),
    /// It exists but holds no access key yet (or does not exist and will be created).
    Empty,
    /// It cannot be read (stdout, a command hook).
    #[default]
    Unknown,
}

impl fmt::Display for Holding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holding::Key(id) => write!(f, "holds {}", crate::secret::mask_key_id(id)),
            Holding::Empty => f.write_str("holds no key"),
            Holding::Unknown => f.write_str("cannot be read"),
        }
    }
}

/// What `deliver` reports.
#[derive(Debug, Clone, Default)]
pub struct Delivered {
    /// One human line for the journal and the report (no secret).
    pub detail: String,
    /// Self-rotation: the profiles that now hold the new key.
    pub profiles_updated: Vec<ProfileUpdate>,
}

impl Delivered {
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            profiles_updated: Vec::new(),
        }
    }
}

/// What `keyturn rollback` asks a sink to undo.
pub struct RollbackRequest<'a> {
    pub account: &'a str,
    pub user_name: &'a str,
    pub run_id: &'a str,
    /// The key the rotation delivered (being retired again).
    pub new_key_id: &'a str,
    /// The key being re-activated, which the sink should hold again.
    pub old_key_id: Option<&'a str>,
}

/// What rollback did to one sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "Result", content = "Detail", rename_all = "kebab-case")]
pub enum RollbackOutcome {
    /// The previous value is back.
    Restored(String),
    /// The destination keeps no history keyturn can restore (say what to do).
    NotSupported(String),
}

/// Which step of a sink failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkStage {
    Prepare,
    Deliver,
    Verify,
    Rollback,
}

impl fmt::Display for SinkStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SinkStage::Prepare => "prepare",
            SinkStage::Deliver => "delivery",
            SinkStage::Verify => "verification",
            SinkStage::Rollback => "rollback",
        })
    }
}

/// Whether a failed sink may already hold (part of) the new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Nothing was written: the destination still holds what it held.
    No,
    /// Something may have been written (a write was sent, or a pipe was cut mid-way).
    Maybe,
}

/// A delivery destination. Implementations are built from a [`SinkSpec`] for one
/// (account, user) and live for one run in one process.
#[async_trait]
pub trait Sink: Send + Sync {
    /// The `name` of its `[[sinks]]` table (or `stdout` / `profiles`).
    fn name(&self) -> &str;
    /// The sink type (`secretsmanager`, `env-file`, ...).
    fn kind(&self) -> &'static str;
    /// Check access and read what the destination holds now. Never writes. Called
    /// once per process before the first `deliver` or `verify` of this sink.
    async fn prepare(&self) -> Result<Holding>;
    /// Write the new key. Must be idempotent: a destination that already holds the new
    /// key counts as delivered (a crash may repeat this step).
    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered>;
    /// Prove the destination holds the new key: read it back where the destination can
    /// be read, otherwise the strongest check it offers.
    async fn verify(&self, h: &Handover<'_>) -> Result<String>;
    /// Restore what the destination held before the rotation, where it keeps versions.
    async fn rollback(&self, _r: &RollbackRequest<'_>) -> Result<RollbackOutcome> {
        Ok(RollbackOutcome::NotSupported(format!(
            "{} keeps no previous version; put the old key back by hand if a consumer needs it",
            self.kind()
        )))
    }
}

/// A sink failure, with the class of its cause kept (an AWS error stays an AWS error).
pub fn sink_error(
    sink: &dyn Sink,
    stage: SinkStage,
    written: Written,
    message: impl Into<String>,
    source: Option<Error>,
) -> Error {
    Error::Sink {
        sink: sink.name().to_string(),
        kind: sink.kind(),
        stage,
        written,
        message: message.into(),
        source: source.map(Box::new),
    }
}

/// The `[[sinks]]` table types. `stdout` and `profiles` are built in and cannot be
/// declared; every other sink is declared once and named with `--sink NAME` or in a
/// fleet rotation block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SinkSpec {
    /// Built in: print the credentials on stdout.
    Stdout(stdout::StdoutSpec),
    /// Built in: every profile of the shared files that holds the old key (self-rotation).
    Profiles(profiles::ProfilesSpec),
    Secretsmanager(secretsmanager::SecretsManagerSpec),
    Ssm(ssm::SsmSpec),
    EnvFile(files::FileSpec),
    JsonFile(files::FileSpec),
    CredentialsFile(files::CredentialsFileSpec),
    Command(command::CommandSpec),
    Informatica(informatica::InformaticaSpec),
    Github(github::GitHubSpec),
    Vault(vault::VaultSpec),
    Infisical(infisical::InfisicalSpec),
    Gitlab(gitlab::GitLabSpec),
}

impl SinkSpec {
    pub fn name(&self) -> &str {
        match self {
            SinkSpec::Stdout(_) => STDOUT,
            SinkSpec::Profiles(_) => PROFILES,
            SinkSpec::Secretsmanager(s) => &s.name,
            SinkSpec::Ssm(s) => &s.name,
            SinkSpec::EnvFile(s) | SinkSpec::JsonFile(s) => &s.name,
            SinkSpec::CredentialsFile(s) => &s.name,
            SinkSpec::Command(s) => &s.name,
            SinkSpec::Informatica(s) => &s.name,
            SinkSpec::Github(s) => &s.name,
            SinkSpec::Vault(s) => &s.name,
            SinkSpec::Infisical(s) => &s.name,
            SinkSpec::Gitlab(s) => &s.name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SinkSpec::Stdout(_) => "stdout",
            SinkSpec::Profiles(_) => "profiles",
            SinkSpec::Secretsmanager(_) => "secretsmanager",
            SinkSpec::Ssm(_) => "ssm",
            SinkSpec::EnvFile(_) => "env-file",
            SinkSpec::JsonFile(_) => "json-file",
            SinkSpec::CredentialsFile(_) => "credentials-file",
            SinkSpec::Command(_) => "command",
            SinkSpec::Informatica(_) => "informatica",
            SinkSpec::Github(_) => "github",
            SinkSpec::Vault(_) => "vault",
            SinkSpec::Infisical(_) => "infisical",
            SinkSpec::Gitlab(_) => "gitlab",
        }
    }

    /// True for the sinks keyturn provides itself (not declarable in `[[sinks]]`).
    pub fn is_builtin(&self) -> bool {
        matches!(self, SinkSpec::Stdout(_) | SinkSpec::Profiles(_))
    }

    /// Check a declared sink: its name, its own rules, and the placeholders in its
    /// strings. Runs before any AWS call.
    pub fn validate(&self) -> Result<()> {
        let name = self.name();
        if self.is_builtin() {
            return Err(Error::InvalidInput(format!(
                "[[sinks]] type = \"{}\" is built in and cannot be declared; name it with --sink {}",
                self.kind(),
                self.kind()
            )));
        }
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::InvalidInput(format!(
                "[[sinks]] name {name:?}: use 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        if name == STDOUT || name == PROFILES {
            return Err(Error::InvalidInput(format!(
                "[[sinks]] name {name:?} is reserved for keyturn's built-in sink"
            )));
        }
        fields::check_placeholders(self)
            .map_err(|m| Error::InvalidInput(format!("sink '{name}': {m}")))?;
        match self {
            SinkSpec::Stdout(_) | SinkSpec::Profiles(_) => Ok(()),
            SinkSpec::Secretsmanager(s) => s.validate(),
            SinkSpec::Ssm(s) => s.validate(),
            SinkSpec::EnvFile(s) | SinkSpec::JsonFile(s) => s.validate(name),
            SinkSpec::CredentialsFile(s) => s.validate(),
            SinkSpec::Command(s) => s.validate(),
            SinkSpec::Informatica(s) => s.validate(),
            SinkSpec::Github(s) => s.validate(),
            SinkSpec::Vault(s) => s.validate(),
            SinkSpec::Infisical(s) => s.validate(),
            SinkSpec::Gitlab(s) => s.validate(),
        }
    }

    /// This spec with `{account}` and `{user}` filled in (what a run journals).
    pub fn render(&self, account: &str, user: &str) -> Result<SinkSpec> {
        fields::render_placeholders(self, account, user)
    }
}

/// What building a sink needs from the run.
#[derive(Clone)]
pub struct SinkEnv {
    /// The caller's AWS configuration (Secrets Manager, SSM, KMS calls).
    pub aws: SdkConfig,
    /// Where `stdout` prints.
    pub printer: Printer,
    /// The `--output` format of `stdout`.
    pub output: OutputFormat,
}

/// Build a sink from a rendered spec. Reads the secrets a sink needs (tokens,
/// passwords) from their env var or file now, so a missing one fails before any AWS call.
pub fn build(spec: &SinkSpec, env: &SinkEnv) -> Result<Box<dyn Sink>> {
    Ok(match spec {
        SinkSpec::Stdout(s) => Box::new(stdout::StdoutSink::new(s, env)),
        SinkSpec::Profiles(s) => Box::new(profiles::ProfilesSink::new(s)),
        SinkSpec::Secretsmanager(s) => Box::new(secretsmanager::SecretsManagerSink::new(s, env)),
        SinkSpec::Ssm(s) => Box::new(ssm::SsmSink::new(s, env)),
        SinkSpec::EnvFile(s) => Box::new(files::EnvFileSink::new(s)),
        SinkSpec::JsonFile(s) => Box::new(files::JsonFileSink::new(s)),
        SinkSpec::CredentialsFile(s) => Box::new(files::CredentialsFileSink::new(s)),
        SinkSpec::Command(s) => Box::new(command::CommandSink::new(s)),
        SinkSpec::Informatica(s) => Box::new(informatica::InformaticaSink::new(s, env)?),
        SinkSpec::Github(s) => Box::new(github::GitHubSink::new(s)?),
        SinkSpec::Vault(s) => Box::new(vault::VaultSink::new(s)?),
        SinkSpec::Infisical(s) => Box::new(infisical::InfisicalSink::new(s)?),
        SinkSpec::Gitlab(s) => Box::new(gitlab::GitLabSink::new(s)?),
    })
}

/// The sinks of one run, in plan order, each prepared at most once per process.
pub struct SinkSet {
    sinks: Vec<(Box<dyn Sink>, OnceCell<Holding>)>,
    index: HashMap<String, usize>,
}

impl SinkSet {
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        let index = sinks
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name().to_string(), i))
            .collect();
        Self {
            sinks: sinks.into_iter().map(|s| (s, OnceCell::new())).collect(),
            index,
        }
    }

    /// Build every spec (see [`build`]).
    pub fn build(specs: &[SinkSpec], env: &SinkEnv) -> Result<Self> {
        let sinks = specs
            .iter()
            .map(|s| build(s, env))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::new(sinks))
    }

    pub fn empty() -> Self {
        Self::new(Vec::new())
    }

    pub fn names(&self) -> Vec<&str> {
        self.sinks.iter().map(|(s, _)| s.name()).collect()
    }

    pub fn get(&self, name: &str) -> Result<&dyn Sink> {
        self.index
            .get(name)
            .map(|i| self.sinks[*i].0.as_ref())
            .ok_or_else(|| {
                Error::Runtime(format!("the run names sink '{name}', which is not built"))
            })
    }

    /// Prepare `name` once; later calls return the first answer.
    pub async fn prepared(&self, name: &str) -> Result<Holding> {
        let i = *self.index.get(name).ok_or_else(|| {
            Error::Runtime(format!("the run names sink '{name}', which is not built"))
        })?;
        let (sink, cell) = &self.sinks[i];
        cell.get_or_try_init(|| sink.prepare()).await.cloned()
    }

    /// What `prepare` saw, for sinks prepared so far.
    pub fn holding(&self, name: &str) -> Option<Holding> {
        self.index
            .get(name)
            .and_then(|i| self.sinks[*i].1.get().cloned())
    }
}

/// Resolve `--sink` names against the declared sinks (and the built-in `stdout`).
/// Unknown names are invalid input (exit 2), listing what is declared.
pub fn select(
    names: &[String],
    declared: &[SinkSpec],
    output: OutputFormat,
) -> Result<Vec<SinkSpec>> {
    let mut out: Vec<SinkSpec> = Vec::new();
    for n in names {
        if out.iter().any(|s| s.name() == n) {
            return Err(Error::InvalidInput(format!("--sink {n} is given twice")));
        }
        if n == STDOUT {
            out.push(SinkSpec::Stdout(stdout::StdoutSpec {
                format: output.as_str().into(),
            }));
            continue;
        }
        match declared.iter().find(|s| s.name() == n) {
            Some(s) => out.push(s.clone()),
            None => {
                let known: Vec<&str> = declared.iter().map(|s| s.name()).collect();
                return Err(Error::InvalidInput(format!(
                    "--sink {n}: no [[sinks]] table with name = \"{n}\" in the settings file (declared: {}; built in: stdout)",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
        }
    }
    Ok(out)
}

/// Check the `[[sinks]]` of a settings file: each valid, names unique.
pub fn validate_declared(declared: &[SinkSpec]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for s in declared {
        s.validate()?;
        if !seen.insert(s.name()) {
            return Err(Error::InvalidInput(format!(
                "[[sinks]] name \"{}\" is declared twice",
                s.name()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod service_sink_tests {
    use super::*;

    #[test]
    fn the_example_settings_declare_every_service_sink_validly() {
        let text = include_str!("../../../../keyturn.example.toml");
        let cfg = crate::config::FileConfig::parse(text).unwrap();
        validate_declared(&cfg.sinks).unwrap();
        for kind in ["informatica", "github", "vault", "infisical", "gitlab"] {
            assert!(
                cfg.sinks.iter().any(|s| s.kind() == kind),
                "keyturn.example.toml has no {kind} sink"
            );
        }
        // Rendering keeps every setting (what the journal records).
        for s in &cfg.sinks {
            let r = s.render("123456789012", "ci-bot").unwrap();
            assert_eq!(r.kind(), s.kind());
        }
        let gh = cfg.sinks.iter().find(|s| s.name() == "gh-ci").unwrap();
        match gh.render("1", "ci-bot").unwrap() {
            SinkSpec::Github(g) => assert_eq!(g.repository.as_deref(), Some("octo-org/ci-bot")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn service_sinks_refuse_secrets_in_the_settings_file() {
        for (toml, needle) in [
            ("type = \"vault\"\naddress = \"https://v\"\npath = \"p\"\ntoken = \"s.abc\"", "unknown field `token`"),
            ("type = \"github\"\nrepository = \"a/b\"\ntoken = \"ghp_x\"", "unknown field `token`"),
            ("type = \"gitlab\"\nproject = \"1\"\ntoken = \"glpat\"", "unknown field `token`"),
            ("type = \"infisical\"\nclient_id = \"i\"\nclient_secret = \"x\"\nproject_id = \"p\"\nenvironment = \"e\"", "unknown field `client_secret`"),
        ] {
            let text = format!("[[sinks]]\nname = \"s\"\n{toml}\n");
            let e = crate::config::FileConfig::parse(&text).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
