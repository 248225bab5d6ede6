//! The fleet runner: executes the fleet planner's decisions across accounts.
//!
//! SKELETON (first commit): the public surface of `/work/coord/RUNNER_API.md`, so the
//! Lambda handler, `keyturn serve` and the CloudTrail evidence source can be written
//! against it. Bodies follow.

use crate::access::{Access, Account};
use crate::error::Result;
use crate::fleet::planner::Evidence;
use crate::fleet::policy::FleetPolicy;
use crate::fleet::report::{FleetReport, UserReport};
use crate::journal::{Clock, Journal};
use crate::sink::{SinkEnv, SinkSpec};
use time::OffsetDateTime;

/// `--only ACCOUNT:USER`: one user of one account (id or configured/Organization name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Only {
    pub account: String,
    pub user: String,
}

impl std::str::FromStr for Only {
    type Err = String;

    /// `ACCOUNT:USER`; both parts non-empty.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once(':') {
            Some((a, u)) if !a.is_empty() && !u.is_empty() => Ok(Only {
                account: a.to_string(),
                user: u.to_string(),
            }),
            _ => Err(format!(
                "--only {s:?}: expected ACCOUNT:USER (an account id or configured account name, a colon, an IAM user name)"
            )),
        }
    }
}

/// What one fleet run does, beyond the policy file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub dry_run: bool,
    /// `--only ACCOUNT:USER` (account id or configured account name); empty = everyone.
    pub only: Vec<Only>,
    /// Restrict to these account ids (the Lambda's per-account fan-out). Empty = all.
    pub accounts: Vec<String>,
    /// Overrides `[policy] concurrency`.
    pub concurrency: Option<usize>,
    /// Overrides `[policy] max_failures`.
    pub max_failures: Option<usize>,
    /// Start no new user after this instant (the Lambda's Context deadline minus a
    /// margin). Users not started are reported `not-attempted` with reason
    /// "deadline: left for the next run".
    pub deadline: Option<std::time::Instant>,
}

/// Live progress, for the CLI progress bar and `keyturn serve`'s live view.
/// Never receives a secret.
pub trait RunObserver: Send + Sync {
    fn planned(&self, _total_users: usize) {}
    fn user_started(&self, _account: &str, _user: &str) {}
    fn step(&self, _account: &str, _user: &str, _step: &str) {}
    fn user_finished(&self, _account: &str, _report: &UserReport) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl RunObserver for NoObserver {}

/// Where CloudTrail evidence comes from when a block has `usage = "cloudtrail"`.
/// The runner calls it only for users whose decision depends on old-key usage (a
/// replaced key exists).
#[async_trait::async_trait]
pub trait EvidenceSource: Send + Sync {
    async fn evidence(
        &self,
        account: &Account,
        user: &str,
        old_keys: &[String],
        new_key: &str,
        since: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Evidence>;
}

/// Runs a fleet policy: inventory, plan and execution per selected user.
pub struct Runner<'a, J: Journal> {
    access: &'a Access,
    policy: &'a FleetPolicy,
    sinks: &'a [SinkSpec],
    journal: &'a J,
    env: SinkEnv,
    observer: &'a dyn RunObserver,
    evidence: Option<&'a dyn EvidenceSource>,
    clock: Clock,
}

impl<'a, J: Journal> Runner<'a, J> {
    /// `sinks`: every `[[sinks]]` declared in the settings file (each block picks its
    /// own by name); `env`: what building a sink needs (base AWS config, printer).
    pub fn new(
        access: &'a Access,
        policy: &'a FleetPolicy,
        sinks: &'a [SinkSpec],
        journal: &'a J,
        env: SinkEnv,
    ) -> Self {
        Self {
            access,
            policy,
            sinks,
            journal,
            env,
            observer: &NoObserver,
            evidence: None,
            clock: Clock::system(),
        }
    }

    pub fn with_observer(mut self, observer: &'a dyn RunObserver) -> Self {
        self.observer = observer;
        self
    }

    pub fn with_evidence(mut self, evidence: &'a dyn EvidenceSource) -> Self {
        self.evidence = Some(evidence);
        self
    }

    /// The clock the planner decides by (tests move it forward).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Run the policy once. `Err` only when nothing could start (bad settings, an
    /// unusable journal); per-user and per-account failures are in the report.
    pub async fn run(&self, opts: &RunOptions) -> Result<FleetReport> {
        let _ = (
            self.access,
            self.policy,
            self.sinks,
            self.journal,
            &self.env,
            self.observer,
            self.evidence,
            &self.clock,
            opts,
        );
        todo!("fleet runner")
    }
}
