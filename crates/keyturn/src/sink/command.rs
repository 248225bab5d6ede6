//! The `command` sink: hand the new key to a program of the user's (a deploy hook, a
//! vendor CLI) and count exit 0 as delivered.
//!
//! The program is run from an argv array (no shell). It gets the credentials as one
//! JSON object on stdin and, unless `env = false`, as `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` in its environment: never in its arguments, where every
//! local user could read them in `/proc`. keyturn's own AWS credentials are removed
//! from the child's environment either way. Its stdout is captured (so `eval "$(keyturn
//! ...)"` never sees it); its stderr, with the secret masked, goes into the error
//! message when it fails. `verify_command` is run the same way to verify; without
//! one, the delivery's exit status is the strongest check available.

use super::fields::FieldMap;
use super::{sink_error, Delivered, Handover, Holding, Sink, SinkStage, Written};
use crate::error::{Error, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The caller's credentials never reach a hook.
const CREDENTIAL_VARS: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
];
/// How much of a failing program's stderr goes into the error.
const STDERR_TAIL: usize = 2000;

fn default_timeout() -> u64 {
    60
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    pub name: String,
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    /// Run after delivery; exit 0 = verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_command: Option<Vec<String>>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Also pass the credentials as environment variables.
    #[serde(default = "default_true")]
    pub env: bool,
    /// The fields of the JSON object on stdin (default: UserName, Account,
    /// AccessKeyId, SecretAccessKey, CreateDate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldMap>,
}

impl CommandSpec {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidInput(format!("sink '{}': {m}", self.name)));
        for argv in std::iter::once(&self.command).chain(self.verify_command.iter()) {
            if argv.is_empty() || argv[0].is_empty() {
                return bad(
                    "command must name a program: command = [\"/path/to/program\", \"arg\", ...]",
                );
            }
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return bad("timeout_secs must be 1-3600");
        }
        if let Some(f) = &self.fields {
            f.validate(&format!("sink '{}'", self.name), |n| !n.is_empty())?;
        }
        Ok(())
    }
}

fn stdin_fields() -> FieldMap {
    use super::Field::*;
    FieldMap(vec![
        ("UserName".into(), UserName),
        ("Account".into(), Account),
        ("AccessKeyId".into(), AccessKeyId),
        ("SecretAccessKey".into(), SecretAccessKey),
        ("CreateDate".into(), CreateDate),
    ])
}

pub struct CommandSink {
    spec: CommandSpec,
    fields: FieldMap,
}

impl CommandSink {
    pub fn new(spec: &CommandSpec) -> Self {
        Self {
            fields: FieldMap::or(&spec.fields, stdin_fields),
            spec: spec.clone(),
        }
    }

    /// Run `argv` with the credentials on stdin (and in the environment).
    async fn run(&self, argv: &[String], h: &Handover<'_>, stage: SinkStage) -> Result<String> {
        let secret = h.key.secret.expose();
        let mut obj = serde_json::Map::new();
        super::files::set_json_fields(&mut obj, &self.fields.values(h.key, h.account));
        let input = zeroize::Zeroizing::new(
            serde_json::to_string(&serde_json::Value::Object(obj)).expect("json") + "\n",
        );
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for v in CREDENTIAL_VARS {
            cmd.env_remove(v);
        }
        cmd.env("KEYTURN_SINK", &self.spec.name)
            .env(
                "KEYTURN_PHASE",
                if stage == SinkStage::Verify {
                    "verify"
                } else {
                    "deliver"
                },
            )
            .env("KEYTURN_RUN_ID", h.run_id)
            .env("KEYTURN_ACCOUNT", h.account)
            .env("KEYTURN_USER_NAME", &h.key.user_name);
        if self.spec.env {
            cmd.env("AWS_ACCESS_KEY_ID", &h.key.access_key_id)
                .env("AWS_SECRET_ACCESS_KEY", secret);
        }
        let mut child = cmd.spawn().map_err(|e| {
            sink_error(
                self,
                stage,
                Written::No,
                format!("cannot start {}: {e}", argv[0]),
                None,
            )
        })?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let work = async {
            // A program that does not read stdin closes it: that is not a failure.
            let feed = async {
                let _ = stdin.write_all(input.as_bytes()).await;
                drop(stdin);
            };
            let mut o = Vec::new();
            let mut e = Vec::new();
            let (_, _, _, status) = tokio::join!(
                feed,
                out.read_to_end(&mut o),
                err.read_to_end(&mut e),
                child.wait()
            );
            (status, o, e)
        };
        let timeout = Duration::from_secs(self.spec.timeout_secs);
        let (status, stdout, stderr) = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                return Err(sink_error(
                    self,
                    stage,
                    Written::Maybe,
                    format!(
                        "{} did not finish within {} s and was killed",
                        argv[0],
                        timeout.as_secs()
                    ),
                    None,
                ))
            }
        };
        let masked = |b: &[u8]| String::from_utf8_lossy(b).replace(secret, "<redacted>");
        let stdout = masked(&stdout);
        if !stdout.trim().is_empty() {
            tracing::debug!(sink = %self.spec.name, "{} printed: {}", argv[0], stdout.trim());
        }
        let status = status.map_err(|e| {
            sink_error(
                self,
                stage,
                Written::Maybe,
                format!("waiting for {}: {e}", argv[0]),
                None,
            )
        })?;
        if status.success() {
            return Ok(format!("{} exited 0", argv[0]));
        }
        let stderr = masked(&stderr);
        let tail: String = {
            let t = stderr.trim();
            let start = t.len().saturating_sub(STDERR_TAIL);
            let start = (start..t.len())
                .find(|i| t.is_char_boundary(*i))
                .unwrap_or(t.len());
            t[start..].to_string()
        };
        Err(sink_error(
            self,
            stage,
            Written::Maybe,
            format!(
                "{} exited with {}{}",
                argv[0],
                status
                    .code()
                    .map(|c| format!("status {c}"))
                    .unwrap_or_else(|| "a signal".into()),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; its stderr: {tail}")
                }
            ),
            None,
        ))
    }
}

#[async_trait]
impl Sink for CommandSink {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &'static str {
        "command"
    }

    async fn prepare(&self) -> Result<Holding> {
        let prog = std::path::Path::new(&self.spec.command[0]);
        if prog.components().count() > 1 && !prog.exists() {
            return Err(sink_error(
                self,
                SinkStage::Prepare,
                Written::No,
                format!("{} does not exist", prog.display()),
                None,
            ));
        }
        Ok(Holding::Unknown)
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        let detail = self.run(&self.spec.command, h, SinkStage::Deliver).await?;
        Ok(Delivered::new(detail))
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        match &self.spec.verify_command {
            Some(v) => self.run(v, h, SinkStage::Verify).await,
            None => Ok("no verify_command; the delivery command exited 0".into()),
        }
    }
}
