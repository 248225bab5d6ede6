//! The fleet runner: executes the fleet planner's decisions across accounts, so that
//! `keyturn run` (and the Lambda handler, and `keyturn serve`) advance every selected
//! key by one lifecycle step per run.
//!
//! One run, in three phases:
//!
//! 1. **Reach and list.** Every `[[accounts]]` entry (none: the caller's account) is
//!    expanded into routes ([`Access::routes`], Organizations `ListAccounts`) and
//!    reached ([`Access::connect`]); an account that cannot be reached is reported with
//!    its error while the others carry on. Each reached account's users are listed
//!    (`ListUsers`, every page) and matched against the rotation blocks
//!    ([`crate::fleet::select`]); `ListUserTags` is called only for a user whose name
//!    and path a block with `tags` already selects.
//! 2. **Assess** (read-only, `concurrency` users at once). Per user: `ListAccessKeys`,
//!    the user's [`KeyHistory`] from the journal, `GetAccessKeyLastUsed` only when the
//!    decision depends on it (two Active keys under `retire = "when-switched"`),
//!    CloudTrail evidence only under `usage = "cloudtrail"`, then
//!    [`planner::decide`]. Users whose decision changes nothing get their final report
//!    line now; the others are queued (only their names are kept, not their facts).
//!    A dry run stops here: every user's planned outcome, nothing written.
//! 3. **Execute.** The first `canary` queued rotations run one at a time; if one fails,
//!    every other queued user is `not-attempted`. Then the rest run `concurrency` at a
//!    time (a block's own `concurrency` caps its users further), each one: take the
//!    user's journal lock, re-read keys and history and decide again (the world may
//!    have moved since phase 2), and carry the decision out as one journal run through
//!    the same [`Engine`] as `keyturn rotate` (rotate: free-slot, create, verify,
//!    deliver + verify per sink, retire with `after-verify`; retire: deactivate (+
//!    delete when `delete_after_days = 0`); delete). Once `max_failures` users failed
//!    (run-wide, or a block's own budget for its users), or the `deadline` passed, no
//!    new user starts: the rest are `not-attempted` with the reason.
//!
//! Throttling is absorbed in two layers (issue 15: six SDK attempts are not enough
//! under 30% injected throttling):
//! - each account's clients use the SDK's adaptive retry mode in their own retry
//!   partition ([`Account::iam_client`]), so a throttled account slows itself down;
//! - [`FleetApi`] repeats a call whose SDK attempts all ended in `Throttling` up to
//!   [`THROTTLE_ROUNDS`] more times, with jittered backoff, for the calls that are safe
//!   to repeat: reads, `UpdateAccessKey` (setting a status twice is the same) and
//!   `DeleteAccessKey` (the engine counts `NoSuchEntity` on a repeat as done).
//!   `CreateAccessKey` is never repeated here: the SDK does not retry it at all, and the
//!   engine retries it only after a clear `Throttling` refusal (no key was made) or,
//!   after an ambiguous answer, only once it listed the keys and deleted a key that
//!   attempt made (a journaled re-check).
//!
//! Verification waits (IAM takes seconds to accept a new key) are `tokio` sleeps inside
//! one user's future: they hold that user's concurrency slot, never a thread, and never
//! another user's progress.
//!
//! Memory: the queued users are names; everything else a user needs lives only while
//! its future runs, so a run holds the report plus `concurrency` users' state.

use crate::access::{Access, Account, AccountSource, OrganizationSource, RoleSource, Route};
use crate::aws::{CallerIdentity, KeyApi, NewKey, SdkKeyApi};
use crate::engine::{Engine, Progress};
use crate::error::{chain, AwsError, AwsErrorKind, Error, Result};
use crate::fleet::history::{KeyHistory, SIGHTING_STEP};
use crate::fleet::planner::{self, Action, Decision, Evidence, Rotation, UserFacts};
use crate::fleet::policy::{self, EffectiveRotation, FleetPolicy, Retire, UsageSource};
use crate::fleet::report::{AccountReport, FleetReport, Outcome, SinkDelivery, UserReport};
use crate::fleet::select::{AccountIdent, IamUser, Selection};
use crate::journal::{Clock, Journal, RemoteMeta, RunMeta, RunStatus};
use crate::model::{AccessKeyInfo, KeyStatus, Usage};
use crate::plan::{Mode, Plan, PlanOptions, Step};
use crate::sink::{SinkEnv, SinkSet, SinkSpec};
use crate::verify::VerifyPolicy;
use futures_util::stream::{self, StreamExt};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

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

/// Extra rounds [`FleetApi`] gives a safe-to-repeat call whose SDK attempts all ended
/// in `Throttling`. With adaptive mode's attempts per round, a call fails only after
/// `(1 + THROTTLE_ROUNDS) x attempts` throttles in a row.
pub const THROTTLE_ROUNDS: u32 = 6;
/// The first pause between rounds; doubled each round, capped at [`THROTTLE_MAX_PAUSE`].
const THROTTLE_FIRST_PAUSE: Duration = Duration::from_millis(500);
const THROTTLE_MAX_PAUSE: Duration = Duration::from_secs(8);

/// The reason of users left alone after the deadline.
pub const DEADLINE_REASON: &str = "deadline: left for the next run";

/// The [`KeyApi`] of one fleet account: its own clients (retry partition, adaptive
/// mode) plus more rounds for throttled calls that are safe to repeat (see the module
/// docs).
#[derive(Clone, Debug)]
pub struct FleetApi {
    inner: SdkKeyApi,
}

impl FleetApi {
    pub fn new(account: &Account) -> Self {
        Self {
            inner: SdkKeyApi::from_clients(
                &account.config,
                account.iam_client(),
                account.sts_client(),
            ),
        }
    }
}

fn jitter(max: Duration) -> Duration {
    let r = getrandom::u32().unwrap_or(0x8000_0000);
    max.mul_f64(f64::from(r) / f64::from(u32::MAX))
}

/// Repeat `call` while it fails with `Throttling`, [`THROTTLE_ROUNDS`] more times.
pub async fn absorb_throttling<T, F, Fut>(what: &str, call: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut pause = THROTTLE_FIRST_PAUSE;
    let mut round = 0;
    loop {
        match call().await {
            Err(e)
                if e.aws_kind() == Some(&AwsErrorKind::Throttling) && round < THROTTLE_ROUNDS =>
            {
                round += 1;
                let wait = pause / 2 + jitter(pause / 2);
                tracing::info!(
                    "{what} still throttled after the SDK's attempts; round {round} of {THROTTLE_ROUNDS} in {} ms",
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
                pause = (pause * 2).min(THROTTLE_MAX_PAUSE);
            }
            r => return r,
        }
    }
}

impl KeyApi for FleetApi {
    async fn list_keys(&self, user: &str) -> Result<Vec<AccessKeyInfo>> {
        absorb_throttling("iam:ListAccessKeys", || self.inner.list_keys(user)).await
    }
    async fn last_used(&self, key_id: &str) -> Result<Usage> {
        absorb_throttling("iam:GetAccessKeyLastUsed", || self.inner.last_used(key_id)).await
    }
    async fn create_key(&self, user: &str) -> Result<NewKey> {
        // Never repeated here: see the module docs (the engine decides).
        self.inner.create_key(user).await
    }
    async fn set_status(&self, user: &str, key_id: &str, status: KeyStatus) -> Result<()> {
        absorb_throttling("iam:UpdateAccessKey", || {
            self.inner.set_status(user, key_id, status)
        })
        .await
    }
    async fn delete_key(&self, user: &str, key_id: &str) -> Result<()> {
        absorb_throttling("iam:DeleteAccessKey", || {
            self.inner.delete_key(user, key_id)
        })
        .await
    }
    async fn whoami(&self) -> Result<CallerIdentity> {
        absorb_throttling("sts:GetCallerIdentity", || self.inner.whoami()).await
    }
    fn as_key(&self, key: &NewKey) -> Self {
        Self {
            inner: self.inner.as_key(key),
        }
    }
}

/// A reached account, ready for its users.
struct AccountCtx {
    account: Account,
    /// The `[[accounts]]` entry it came from (selection by name).
    entry: Option<String>,
    api: FleetApi,
    iam: aws_sdk_iam::Client,
}

impl AccountCtx {
    fn ident(&self) -> AccountIdent {
        AccountIdent {
            id: self.account.id.clone(),
            entry: self.entry.clone(),
        }
    }
}

/// One selected user waiting for a phase.
#[derive(Debug, Clone)]
struct Target {
    account: usize,
    user: String,
    rotation: usize,
    /// Phase 2 decided to rotate (canary candidates).
    rotates: bool,
}

/// Shared state of the execute phase.
struct Budget {
    failures: AtomicUsize,
    per_block: Vec<AtomicUsize>,
    max_failures: usize,
    /// Set when a canary failed: nothing else starts.
    canary_failed: Mutex<Option<String>>,
    stop: AtomicBool,
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
        let started = self.clock.now();
        if self.policy.rotations.is_empty() {
            return Err(Error::InvalidInput(
                "the settings file has no [[rotations]] block: a fleet run has nothing to select (see keyturn.example.toml)".into(),
            ));
        }
        for r in &self.policy.rotations {
            for s in &r.sinks {
                if !self.sinks.iter().any(|d| d.name() == s) {
                    return Err(Error::InvalidInput(format!(
                        "rotation {:?} names sink {s:?}, which no [[sinks]] entry declares",
                        r.name
                    )));
                }
            }
        }
        let concurrency = opts
            .concurrency
            .unwrap_or(self.policy.limits.concurrency)
            .max(1);
        let max_failures = opts
            .max_failures
            .unwrap_or(self.policy.limits.max_failures)
            .max(1);

        // Phase 1: reach the accounts, list and select their users.
        let (ctxs, mut reports) = self.reach(opts, concurrency).await;
        let listed: Vec<Result<Vec<Target>>> = stream::iter(ctxs.iter().enumerate())
            .map(|(i, c)| self.select_users(i, c, opts))
            .buffered(concurrency)
            .collect()
            .await;
        let mut targets = Vec::new();
        for (i, r) in listed.into_iter().enumerate() {
            match r {
                Ok(t) => targets.extend(t),
                Err(e) => reports[ctxs_report(&ctxs, i)].error = Some(chain(&e)),
            }
        }
        self.observer.planned(targets.len());
        let users: Vec<Mutex<Vec<UserReport>>> =
            (0..ctxs.len()).map(|_| Mutex::new(Vec::new())).collect();
        let finish = |t: &Target, r: UserReport| {
            self.observer.user_finished(&ctxs[t.account].account.id, &r);
            users[t.account]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(r);
        };

        // Phase 2: assess every user (read-only).
        let (ctxs_ref, finish_ref) = (&ctxs, &finish);
        let queue: Vec<Target> = stream::iter(targets)
            .map(|t| async move {
                let (ctxs, finish) = (ctxs_ref, finish_ref);
                if past(opts.deadline) {
                    let r = self.not_attempted(&t, DEADLINE_REASON.into());
                    finish(&t, r);
                    return None;
                }
                let ctx = &ctxs[t.account];
                self.observer.user_started(&ctx.account.id, &t.user);
                let rot = &self.policy.rotations[t.rotation];
                match self.assess(ctx, &t.user, rot).await {
                    Err(e) => {
                        finish(&t, self.failed(&t, None, format!("reading the user: {}", chain(&e))));
                        None
                    }
                    Ok((_, d)) if opts.dry_run || !d.changes_keys() => {
                        let mut r = d.planned_report(&t.user, &rot.name);
                        if let Action::Resume { run_id, .. } = &d.action {
                            r = resume_needed(r, run_id, opts.dry_run);
                        }
                        if !opts.dry_run {
                            if let Some(s) = &d.record_sighting {
                                if let Err(e) = self.record_sighting(ctx, &t.user, s).await {
                                    tracing::warn!(
                                        "{}:{}: could not journal the new key's first sighting: {e}",
                                        ctx.account.id,
                                        t.user
                                    );
                                }
                            }
                        } else if d.changes_keys() {
                            r.sinks = planned_sinks(&d, rot);
                        }
                        finish(&t, r);
                        None
                    }
                    Ok((_, d)) => Some(Target {
                        rotates: matches!(d.action, Action::Rotate(_)),
                        ..t
                    }),
                }
            })
            .buffer_unordered(concurrency)
            .filter_map(|x| async move { x })
            .collect()
            .await;

        // Phase 3: canaries one at a time, then the rest concurrently.
        if !opts.dry_run {
            let budget = Budget {
                failures: AtomicUsize::new(0),
                per_block: self
                    .policy
                    .rotations
                    .iter()
                    .map(|_| AtomicUsize::new(0))
                    .collect(),
                max_failures,
                canary_failed: Mutex::new(None),
                stop: AtomicBool::new(false),
            };
            let block_slots: Vec<Semaphore> = self
                .policy
                .rotations
                .iter()
                .map(|r| Semaphore::new(r.limits.concurrency.clamp(1, concurrency)))
                .collect();
            let mut queue = queue;
            // Deterministic order: account, then user name.
            queue.sort_by(|a, b| (a.account, &a.user).cmp(&(b.account, &b.user)));
            let canaries = self.policy.limits.canary;
            let mut canary_ids = Vec::new();
            for (i, t) in queue.iter().enumerate() {
                if canary_ids.len() >= canaries {
                    break;
                }
                if t.rotates {
                    canary_ids.push(i);
                }
            }
            let mut rest = Vec::with_capacity(queue.len());
            let mut canary = Vec::new();
            for (i, t) in queue.into_iter().enumerate() {
                if canary_ids.contains(&i) {
                    canary.push(t);
                } else {
                    rest.push(t);
                }
            }
            for t in canary {
                let r = self
                    .execute_guarded(&ctxs, &t, opts, &budget, &block_slots)
                    .await;
                if r.outcome == Outcome::Failed {
                    *budget.canary_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(
                        format!(
                            "canary {}:{} failed, so no other user was started: left for the next run (fix the canary's failure first)",
                            ctxs[t.account].account.id, t.user
                        ),
                    );
                    budget.stop.store(true, Ordering::SeqCst);
                }
                finish(&t, r);
            }
            let (ctxs, budget, block_slots, finish) = (&ctxs, &budget, &block_slots, &finish);
            stream::iter(rest)
                .map(|t| async move {
                    let r = self
                        .execute_guarded(ctxs, &t, opts, budget, block_slots)
                        .await;
                    finish(&t, r);
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<()>>()
                .await;
        }

        for (i, ctx_users) in users.into_iter().enumerate() {
            let mut u = ctx_users.into_inner().unwrap_or_else(|p| p.into_inner());
            u.sort_by(|a, b| a.user_name.cmp(&b.user_name));
            reports[ctxs_report(&ctxs, i)].users = u;
        }
        Ok(FleetReport::new(
            opts.dry_run,
            started,
            self.clock.now(),
            reports,
        ))
    }

    // ---- phase 1 -----------------------------------------------------------------

    /// Every configured account, reached; the reports list reached and unreachable
    /// accounts in configuration order (the reached ones first get their users later).
    async fn reach(
        &self,
        opts: &RunOptions,
        concurrency: usize,
    ) -> (Vec<AccountCtx>, Vec<AccountReport>) {
        let mut routes: Vec<(
            Option<String>,
            std::result::Result<Route, crate::access::Unreachable>,
        )> = Vec::new();
        if self.policy.accounts.is_empty() {
            for r in self.access.routes(None, &AccountSource::Caller).await {
                routes.push((None, r));
            }
        } else {
            for spec in &self.policy.accounts {
                let source = account_source(&spec.access);
                for r in self.access.routes(Some(&spec.name), &source).await {
                    routes.push((Some(spec.name.clone()), r));
                }
            }
        }
        // Routes whose id is known are filtered before connecting.
        routes.retain(|(entry, r)| match r {
            Ok(route) => route.account_id.as_deref().is_none_or(|id| {
                self.account_wanted(opts, id, entry.as_deref(), route.name.as_deref())
            }),
            Err(u) => u.account_id.as_deref().is_none_or(|id| {
                self.account_wanted(opts, id, entry.as_deref(), u.name.as_deref())
            }),
        });
        let reached: Vec<(
            Option<String>,
            std::result::Result<Account, crate::access::Unreachable>,
        )> = stream::iter(routes)
            .map(|(entry, r)| async move {
                match r {
                    Ok(route) => (entry, self.access.connect(&route).await),
                    Err(u) => (entry, Err(u)),
                }
            })
            .buffered(concurrency)
            .collect()
            .await;
        let mut ctxs = Vec::new();
        let mut reports = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (entry, r) in reached {
            match r {
                Ok(account) => {
                    if !self.account_wanted(
                        opts,
                        &account.id,
                        entry.as_deref(),
                        account.name.as_deref(),
                    ) || !seen.insert(account.id.clone())
                    {
                        continue;
                    }
                    reports.push(AccountReport {
                        account: account.id.clone(),
                        name: account
                            .name
                            .clone()
                            .or_else(|| entry.clone())
                            .unwrap_or_default(),
                        error: None,
                        users: vec![],
                    });
                    ctxs.push(AccountCtx {
                        api: FleetApi::new(&account),
                        iam: account.iam_client(),
                        account,
                        entry,
                    });
                }
                Err(u) => reports.push(AccountReport {
                    account: u.account_id.clone().unwrap_or_default(),
                    name: u.name.clone().or(entry).unwrap_or_default(),
                    error: Some(format!(
                        "{} ({}): {}",
                        "unreachable",
                        u.via,
                        chain(&*u.error)
                    )),
                    users: vec![],
                }),
            }
        }
        // Reports of reached accounts come first, in the order of `ctxs`.
        let (mut ok, bad): (Vec<_>, Vec<_>) = reports.into_iter().partition(|r| r.error.is_none());
        ok.extend(bad);
        (ctxs, ok)
    }

    fn account_wanted(
        &self,
        opts: &RunOptions,
        id: &str,
        entry: Option<&str>,
        name: Option<&str>,
    ) -> bool {
        (opts.accounts.is_empty() || opts.accounts.iter().any(|a| a == id))
            && (opts.only.is_empty()
                || opts
                    .only
                    .iter()
                    .any(|o| account_matches(&o.account, id, entry, name)))
    }

    /// `ListUsers` (every page), then the first block that selects each user.
    async fn select_users(
        &self,
        index: usize,
        ctx: &AccountCtx,
        opts: &RunOptions,
    ) -> Result<Vec<Target>> {
        let ident = ctx.ident();
        let blocks: Vec<(usize, &EffectiveRotation, Selection)> = self
            .policy
            .rotations
            .iter()
            .enumerate()
            .filter(|(_, r)| r.selection.selects_account(&ident))
            .map(|(i, r)| {
                let mut untagged = r.selection.clone();
                untagged.tags.clear();
                (i, r, untagged)
            })
            .collect();
        if blocks.is_empty() {
            return Ok(vec![]);
        }
        let users = list_users(&ctx.iam).await?;
        let mut out = Vec::new();
        for mut u in users {
            if !opts.only.is_empty()
                && !opts.only.iter().any(|o| {
                    o.user == u.user_name
                        && account_matches(
                            &o.account,
                            &ctx.account.id,
                            ctx.entry.as_deref(),
                            ctx.account.name.as_deref(),
                        )
                })
            {
                continue;
            }
            let mut tags_read = false;
            for (i, r, untagged) in &blocks {
                if !untagged.selects(&ident, &u) {
                    continue;
                }
                if r.selection.needs_tags() && !tags_read {
                    u.tags = list_user_tags(&ctx.iam, &u.user_name).await?;
                    tags_read = true;
                }
                if r.selection.selects(&ident, &u) {
                    out.push(Target {
                        account: index,
                        user: u.user_name.clone(),
                        rotation: *i,
                        rotates: false,
                    });
                    break;
                }
            }
        }
        Ok(out)
    }

    // ---- phase 2 -----------------------------------------------------------------

    /// The user's facts and the planner's decision.
    async fn assess(
        &self,
        ctx: &AccountCtx,
        user: &str,
        rot: &EffectiveRotation,
    ) -> Result<(UserFacts, Decision)> {
        let mut keys = ctx.api.list_keys(user).await?;
        let history = self.history(&ctx.account.id, user).await?;
        let now = self.clock.now();
        let mut active: Vec<&AccessKeyInfo> = keys
            .iter()
            .filter(|k| k.status == KeyStatus::Active)
            .collect();
        active.sort_by_key(|k| (k.create_date, k.access_key_id.clone()));
        let switching = active.len() == 2 && rot.lifecycle.retire == Retire::WhenSwitched;
        let mut evidence = None;
        if switching {
            let (old, new) = (active[0].clone(), active[1].clone());
            if rot.lifecycle.usage == UsageSource::Cloudtrail
                && history.created(&new.access_key_id).is_some()
            {
                if let Some(src) = self.evidence {
                    match src
                        .evidence(
                            &ctx.account,
                            user,
                            std::slice::from_ref(&old.access_key_id),
                            &new.access_key_id,
                            new.create_date,
                            now,
                        )
                        .await
                    {
                        Ok(e) => evidence = Some(e),
                        Err(e) => tracing::warn!(
                            "{}:{user}: CloudTrail evidence unavailable: {e}",
                            ctx.account.id
                        ),
                    }
                }
            }
            for k in keys.iter_mut().filter(|k| k.status == KeyStatus::Active) {
                k.usage = ctx.api.last_used(&k.access_key_id).await?;
            }
        }
        let facts = UserFacts {
            user_name: user.to_string(),
            keys,
            history,
            evidence,
        };
        let d = planner::decide(&facts, rot, now);
        Ok((facts, d))
    }

    /// What the journal knows about (account, user).
    async fn history(&self, account: &str, user: &str) -> Result<KeyHistory> {
        let runs: Vec<_> = self
            .journal
            .runs(Some(user))
            .await?
            .into_iter()
            .filter(|r| r.meta.account == account)
            .collect();
        Ok(KeyHistory::from_runs(&runs))
    }

    async fn record_sighting(
        &self,
        ctx: &AccountCtx,
        user: &str,
        s: &crate::fleet::history::Sighting,
    ) -> Result<()> {
        let id = crate::journal::new_run_id();
        self.journal.lock(&ctx.account.id, user, &id).await?;
        let r = self
            .journal
            .note(&s.run_id, SIGHTING_STEP, true, &s.note_detail())
            .await;
        self.journal.unlock(&ctx.account.id, user, &id).await?;
        r
    }

    // ---- phase 3 -----------------------------------------------------------------

    /// Budget, deadline and block slot checks around [`Runner::execute`].
    async fn execute_guarded(
        &self,
        ctxs: &[AccountCtx],
        t: &Target,
        opts: &RunOptions,
        budget: &Budget,
        slots: &[Semaphore],
    ) -> UserReport {
        let _slot = slots[t.rotation].acquire().await;
        if let Some(why) = self.stop_reason(t, opts, budget) {
            return self.not_attempted(t, why);
        }
        let r = self.execute(&ctxs[t.account], t).await;
        if r.outcome == Outcome::Failed {
            budget.failures.fetch_add(1, Ordering::SeqCst);
            budget.per_block[t.rotation].fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    fn stop_reason(&self, t: &Target, opts: &RunOptions, budget: &Budget) -> Option<String> {
        if let Some(c) = budget
            .canary_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(c);
        }
        if past(opts.deadline) {
            return Some(DEADLINE_REASON.into());
        }
        let failed = budget.failures.load(Ordering::SeqCst);
        if failed >= budget.max_failures {
            return Some(format!(
                "failure budget spent ({failed} users failed, max_failures = {}): left for the next run",
                budget.max_failures
            ));
        }
        let rot = &self.policy.rotations[t.rotation];
        let block_failed = budget.per_block[t.rotation].load(Ordering::SeqCst);
        if block_failed >= rot.limits.max_failures {
            return Some(format!(
                "failure budget of rotation {:?} spent ({block_failed} of its users failed, max_failures = {}): left for the next run",
                rot.name, rot.limits.max_failures
            ));
        }
        None
    }

    /// Lock, decide again with fresh facts, carry the decision out.
    async fn execute(&self, ctx: &AccountCtx, t: &Target) -> UserReport {
        let rot = &self.policy.rotations[t.rotation];
        let account = ctx.account.id.as_str();
        let run_id = crate::journal::new_run_id();
        if let Err(e) = self.journal.lock(account, &t.user, &run_id).await {
            return self.failed(t, None, format!("journal lock: {}", chain(&e)));
        }
        let mut begun = false;
        let report = self.execute_locked(ctx, t, rot, &run_id, &mut begun).await;
        if !begun {
            if let Err(e) = self.journal.unlock(account, &t.user, &run_id).await {
                tracing::warn!(
                    "{account}:{}: could not release the journal lock: {e}",
                    t.user
                );
            }
        }
        report
    }

    async fn execute_locked(
        &self,
        ctx: &AccountCtx,
        t: &Target,
        rot: &EffectiveRotation,
        run_id: &str,
        begun: &mut bool,
    ) -> UserReport {
        let account = ctx.account.id.as_str();
        let (facts, d) = match self.assess(ctx, &t.user, rot).await {
            Ok(x) => x,
            Err(e) => return self.failed(t, None, format!("reading the user: {}", chain(&e))),
        };
        if let Some(s) = &d.record_sighting {
            if let Err(e) = self
                .journal
                .note(&s.run_id, SIGHTING_STEP, true, &s.note_detail())
                .await
            {
                tracing::warn!(
                    "{account}:{}: could not journal the first sighting: {e}",
                    t.user
                );
            }
        }
        let mut report = d.planned_report(&t.user, &rot.name);
        let steps = match &d.action {
            Action::Rotate(r) => {
                self.observer.step(account, &t.user, "rotate");
                rotation_steps(r, &rot.sinks)
            }
            Action::Retire {
                access_key_id,
                delete,
                reason,
                ..
            } => {
                self.observer.step(account, &t.user, "retire");
                let mut s = vec![Step::DeactivateOldKey {
                    access_key_id: access_key_id.clone(),
                    reason: reason.clone(),
                }];
                if *delete {
                    s.push(Step::DeleteOldKey {
                        access_key_id: access_key_id.clone(),
                        reason: "delete_after_days = 0: deleted in the run that deactivated it"
                            .into(),
                    });
                }
                s
            }
            Action::Delete {
                access_key_id,
                reason,
            } => {
                self.observer.step(account, &t.user, "delete");
                vec![Step::DeleteOldKey {
                    access_key_id: access_key_id.clone(),
                    reason: reason.clone(),
                }]
            }
            Action::Resume { run_id, .. } => return resume_needed(report, run_id, false),
            // The world moved since phase 2: nothing to change any more.
            Action::Wait { .. } | Action::Ok { .. } | Action::NeedsAttention { .. } => {
                return report
            }
        };
        let specs: Vec<SinkSpec> = if matches!(d.action, Action::Rotate(_)) {
            let rendered: Result<Vec<SinkSpec>> = rot
                .sinks
                .iter()
                .filter_map(|n| self.sinks.iter().find(|s| s.name() == n))
                .map(|s| s.render(account, &t.user))
                .collect();
            match rendered {
                Ok(v) => v,
                Err(e) => return self.failed(t, None, format!("sinks: {}", chain(&e))),
            }
        } else {
            vec![]
        };
        let sinks = match SinkSet::build(&specs, &self.env) {
            Ok(s) => s,
            Err(e) => return self.failed(t, None, format!("sinks: {}", chain(&e))),
        };
        let meta = RunMeta {
            run_id: run_id.to_string(),
            account: account.to_string(),
            user_name: t.user.clone(),
            mode: Mode::User,
            options: PlanOptions {
                deactivate_old_keys: true,
                delete_inactive_keys: rot.lifecycle.delete_inactive,
                yes: true,
                verify: true,
                sinks: specs.iter().map(|s| s.name().to_string()).collect(),
                ..PlanOptions::default()
            },
            plan: Plan {
                user_name: t.user.clone(),
                steps,
            },
            inventory: facts.keys.clone(),
            sinks: specs,
            output: "json".into(),
            remote: RemoteMeta::from(self.access.remote()),
            verify_timeout_secs: rot.limits.verify_timeout_secs,
            profile: None,
            mfa_serial: None,
            started_at: OffsetDateTime::now_utc(),
        };
        drop(facts);
        if let Err(e) = self.journal.begin(&meta).await {
            return self.failed(t, None, format!("journal: {}", chain(&e)));
        }
        *begun = true;
        let verify = VerifyPolicy {
            timeout: Duration::from_secs(rot.limits.verify_timeout_secs),
            ..VerifyPolicy::default()
        };
        let engine = Engine::new(&ctx.api, self.journal, verify, &sinks);
        let mut p = Progress::for_plan(&meta);
        let result = crate::journal::with_heartbeat(
            self.journal,
            &meta.account,
            &meta.user_name,
            &meta.run_id,
            engine.execute(&meta, &mut p),
        )
        .await;
        let status = match &result {
            Ok(()) => RunStatus::Succeeded,
            Err(Error::PartialDelivery(_)) => RunStatus::Incomplete,
            Err(Error::JournalIo(_)) if p.new_key_id().is_some() => RunStatus::Incomplete,
            Err(_) if p.cleanup_pending => RunStatus::Incomplete,
            Err(_) if p.new_key.is_some() => RunStatus::FailedAfterDelivery,
            Err(_) => RunStatus::Failed,
        };
        let err = result.as_ref().err().map(|e| chain(e));
        let finished = self
            .journal
            .finish(&meta.run_id, status, err.as_deref())
            .await;
        report.run_id = Some(meta.run_id.clone());
        if matches!(d.action, Action::Rotate(_)) {
            report.new_access_key_id = p.new_key_id().map(str::to_string);
            report.sinks = Some(
                p.sinks
                    .iter()
                    .map(|s| SinkDelivery {
                        name: s.name.clone(),
                        delivered: s.verified || s.delivered,
                    })
                    .collect(),
            );
        }
        match (err, finished) {
            (None, Ok(())) => {
                if let Some(k) = &report.new_access_key_id {
                    report.reason = format!("{}; new key {k} delivered", report.reason);
                }
                report
            }
            (Some(e), _) => {
                report.outcome = Outcome::Failed;
                report.reason = format!(
                    "{} failed (run {}, {}): {e}",
                    match d.action {
                        Action::Rotate(_) => "rotation",
                        Action::Retire { .. } => "retiring the old key",
                        _ => "deleting the old key",
                    },
                    meta.run_id,
                    status.as_str()
                );
                report
            }
            (None, Err(e)) => {
                report.outcome = Outcome::Failed;
                report.reason = format!(
                    "the step was done but the journal could not record the end of run {}: {}",
                    meta.run_id,
                    chain(&e)
                );
                report
            }
        }
    }

    fn not_attempted(&self, t: &Target, reason: String) -> UserReport {
        UserReport {
            user_name: t.user.clone(),
            rotation: self.policy.rotations[t.rotation].name.clone(),
            outcome: Outcome::NotAttempted,
            reason,
            new_access_key_id: None,
            retired_access_key_id: None,
            sinks: None,
            run_id: None,
        }
    }

    fn failed(&self, t: &Target, run_id: Option<String>, reason: String) -> UserReport {
        UserReport {
            outcome: Outcome::Failed,
            reason,
            run_id,
            ..self.not_attempted(t, String::new())
        }
    }
}

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Index of account `i`'s report (reached accounts' reports come first, in order).
fn ctxs_report(_ctxs: &[AccountCtx], i: usize) -> usize {
    i
}

fn account_matches(want: &str, id: &str, entry: Option<&str>, name: Option<&str>) -> bool {
    want == id || Some(want) == entry || Some(want) == name
}

fn account_source(a: &policy::Access) -> AccountSource {
    match a {
        policy::Access::Profile { profile } => AccountSource::Profile(profile.clone()),
        policy::Access::Role {
            role_arn,
            external_id,
        } => AccountSource::Role(RoleSource {
            role_arn: role_arn.clone(),
            external_id: external_id.clone(),
        }),
        policy::Access::Organization {
            role_name,
            include,
            exclude,
        } => AccountSource::Organization(OrganizationSource {
            role_name: role_name.clone(),
            include: include.clone(),
            exclude: exclude.clone(),
        }),
    }
}

/// An open run is not finished by a fleet run: `keyturn resume` does that, with a
/// human looking (it may hold a secret a sink never got).
fn resume_needed(mut r: UserReport, run_id: &str, dry_run: bool) -> UserReport {
    r.outcome = Outcome::NeedsAttention;
    r.reason = format!(
        "{}; a fleet run{} does not finish it: run `keyturn resume {run_id}`, then the next fleet run continues",
        r.reason,
        if dry_run { " would not" } else { "" }
    );
    r
}

fn planned_sinks(d: &Decision, rot: &EffectiveRotation) -> Option<Vec<SinkDelivery>> {
    matches!(d.action, Action::Rotate(_)).then(|| {
        rot.sinks
            .iter()
            .map(|n| SinkDelivery {
                name: n.clone(),
                delivered: false,
            })
            .collect()
    })
}

/// The plan steps of a fleet rotation, in the order `plan.rs` uses.
fn rotation_steps(r: &Rotation, sinks: &[String]) -> Vec<Step> {
    let mut steps: Vec<Step> = r
        .free
        .iter()
        .map(|f| Step::FreeSlot {
            access_key_id: f.access_key_id.clone(),
            reason: f.reason.clone(),
        })
        .collect();
    steps.push(Step::CreateKey {
        reason: r.reason.clone(),
    });
    steps.push(Step::VerifyNewKey {
        reason: "prove the new key authenticates before it is handed out".into(),
    });
    for s in sinks {
        steps.push(Step::Deliver {
            sink: s.clone(),
            reason: "the rotation block's sink".into(),
        });
        steps.push(Step::VerifyDelivery {
            sink: s.clone(),
            reason: "read it back before anything old is retired".into(),
        });
    }
    if r.retire_after_verify {
        if let Some(old) = &r.replaces {
            steps.push(Step::DeactivateOldKey {
                access_key_id: old.clone(),
                reason: "retire = after-verify: every sink verified the new key".into(),
            });
            if r.delete_after_retire {
                steps.push(Step::DeleteOldKey {
                    access_key_id: old.clone(),
                    reason: "delete_after_days = 0".into(),
                });
            }
        }
    }
    steps
}

/// `iam:ListUsers`, every page.
async fn list_users(iam: &aws_sdk_iam::Client) -> Result<Vec<IamUser>> {
    let mut users = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let m = marker.clone();
        let out = absorb_throttling("iam:ListUsers", || async {
            iam.list_users()
                .set_marker(m.clone())
                .send()
                .await
                .map_err(|e| Error::from(AwsError::from_sdk("iam:ListUsers", &e)))
        })
        .await?;
        for u in out.users() {
            users.push(IamUser {
                user_name: u.user_name().to_string(),
                path: u.path().to_string(),
                tags: BTreeMap::new(),
            });
        }
        match (out.is_truncated(), out.marker()) {
            (true, Some(m)) => marker = Some(m.to_string()),
            _ => break,
        }
    }
    Ok(users)
}

/// `iam:ListUserTags`, every page.
async fn list_user_tags(iam: &aws_sdk_iam::Client, user: &str) -> Result<BTreeMap<String, String>> {
    let mut tags = BTreeMap::new();
    let mut marker: Option<String> = None;
    loop {
        let m = marker.clone();
        let out = absorb_throttling("iam:ListUserTags", || async {
            iam.list_user_tags()
                .user_name(user)
                .set_marker(m.clone())
                .send()
                .await
                .map_err(|e| Error::from(AwsError::from_sdk("iam:ListUserTags", &e)))
        })
        .await?;
        for t in out.tags() {
            tags.insert(t.key().to_string(), t.value().to_string());
        }
        match (out.is_truncated(), out.marker()) {
            (true, Some(m)) => marker = Some(m.to_string()),
            _ => break,
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::planner::FreeSlot;

    #[test]
    fn only_parses_account_and_user() {
        let o: Only = "prod:ci-bot".parse().unwrap();
        assert_eq!(o.account, "prod");
        assert_eq!(o.user, "ci-bot");
        assert!("prod".parse::<Only>().is_err());
        assert!(":x".parse::<Only>().is_err());
        assert!("x:".parse::<Only>().is_err());
    }

    #[test]
    fn rotation_steps_deliver_before_retiring() {
        let r = Rotation {
            free: vec![FreeSlot {
                access_key_id: "AKIAOLDINACTIVE".into(),
                reason: "r".into(),
            }],
            replaces: Some("AKIAOLD".into()),
            retire_after_verify: true,
            delete_after_retire: true,
            reason: "due".into(),
        };
        let names: Vec<String> = rotation_steps(&r, &["a".into(), "b".into()])
            .iter()
            .map(Step::label)
            .collect();
        assert_eq!(
            names,
            [
                "free-slot AKIAOLDINACTIVE",
                "create-key",
                "verify-new-key",
                "deliver a",
                "verify-delivery a",
                "deliver b",
                "verify-delivery b",
                "deactivate-old-key AKIAOLD",
                "delete-old-key AKIAOLD"
            ]
        );
        let plain = Rotation {
            free: vec![],
            replaces: Some("AKIAOLD".into()),
            retire_after_verify: false,
            delete_after_retire: false,
            reason: "due".into(),
        };
        assert!(rotation_steps(&plain, &["a".into()])
            .iter()
            .all(|s| !s.is_destructive()));
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_absorbed_for_repeatable_calls_then_surfaces() {
        let calls = AtomicUsize::new(0);
        let throttled = || {
            Error::from(AwsError {
                action: "iam:ListAccessKeys",
                kind: AwsErrorKind::Throttling,
                message: None,
            })
        };
        let r: Result<u32> = absorb_throttling("x", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(throttled())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        calls.store(0, Ordering::SeqCst);
        let r: Result<u32> = absorb_throttling("x", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(throttled())
        })
        .await;
        assert_eq!(r.unwrap_err().aws_kind(), Some(&AwsErrorKind::Throttling));
        assert_eq!(calls.load(Ordering::SeqCst), 1 + THROTTLE_ROUNDS as usize);
        // Other errors are not repeated.
        calls.store(0, Ordering::SeqCst);
        let r: Result<u32> = absorb_throttling("x", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error::Runtime("no".into()))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
