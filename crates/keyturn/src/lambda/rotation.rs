//! The Secrets Manager rotation function for IAM access keys, done right.
//!
//! AWS's own attempt (aws-secrets-manager-rotation-lambdas PR #30) deleted keys before
//! testing the new one, was not idempotent and left `AWSPENDING` behind. Here every
//! step is guarded by `DescribeSecret` and safe to repeat:
//!
//! - `createSecret`: a version for the token with a value: nothing to do. Otherwise the
//!   two-key planner frees a slot only by deleting the key keyturn retired in the last
//!   rotation (the `AWSPREVIOUS` key, Inactive) or, with `[lambda] delete_inactive`,
//!   any Inactive key; the new key is journaled (sealed) before `PutSecretValue`, so a
//!   crash in between leaves a journaled key the retry delivers, never an orphan. A
//!   key left by an earlier rotation that never finished (its version lost
//!   `AWSPENDING`) is adopted instead of making a third.
//! - `setSecret`: delivers the pending key to the sinks configured for the secret
//!   (none is fine) after refusing a pending version that names another user.
//! - `testSecret`: STS `GetCallerIdentity` with the token's key, retried within the
//!   invocation's remaining time; on success the version is labelled
//!   [`TESTED`]. Works alone (Secrets Manager runs only `testSecret` when rotation is
//!   set up with `RotateImmediately=false`): it tests whatever key the token's version
//!   holds.
//! - `finishSecret`: only for a version labelled [`TESTED`]: moves `AWSCURRENT` to it,
//!   removes `AWSPENDING`, then deactivates the previous key, then removes the label.
//!   Repeated after a crash, it finishes the retirement.
//!
//! The secret's JSON holds `UserName`, `AccessKeyId`, `SecretAccessKey`; every other
//! field is kept. The user is in the function's own account.

use crate::aws::{KeyApi, NewKey, SdkKeyApi};
use crate::error::{AwsError, Error, Result};
use crate::journal::{Journal, RunMeta, RunStatus};
use crate::lambda::event::{RotationEvent, RotationStep};
use crate::model::{Inventory, KeyStatus};
use crate::plan::{plan_rotation, Mode, PlanOptions, Step};
use crate::secret::SecretKey;
use crate::sink::{Handover, SinkEnv, SinkSet, SinkSpec};
use crate::verify::{verify_key, Expected, VerifyPolicy};
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::Client;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Duration;
use time::OffsetDateTime;

pub const CURRENT: &str = "AWSCURRENT";
pub const PENDING: &str = "AWSPENDING";
pub const PREVIOUS: &str = "AWSPREVIOUS";
/// Staging label `testSecret` puts on a version whose key it proved; `finishSecret`
/// retires nothing for a version without it.
pub const TESTED: &str = "KEYTURN_TESTED";
/// The plan's name for the `PutSecretValue` of `createSecret`.
pub const PENDING_SINK: &str = "secretsmanager:AWSPENDING";

/// What the rotation function needs besides the event.
pub struct RotationContext<'a, A: KeyApi, J: Journal> {
    pub sm: Client,
    pub iam: &'a A,
    pub journal: &'a J,
    /// Sinks for `setSecret` (already selected for this secret, placeholders unfilled).
    pub sinks: Vec<SinkSpec>,
    pub sink_env: SinkEnv,
    /// `[lambda] delete_inactive`: free a slot by deleting any Inactive key.
    pub delete_inactive: bool,
    pub verify: VerifyPolicy,
    /// When the invocation must have returned (the Lambda `Context` deadline less a margin).
    pub deadline: tokio::time::Instant,
}

/// What a step did (the function's response; never a secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StepOutcome {
    pub step: &'static str,
    pub secret_id: String,
    pub version_id: String,
    /// `done`, or `nothing-to-do` when a repeated step found its work done.
    pub result: &'static str,
    pub detail: String,
}

/// The secret's value: its fields, with the secret access key in custody.
struct Held {
    user: String,
    key_id: String,
    secret: SecretKey,
    /// Every other field, in order.
    rest: Map<String, Value>,
}

impl Held {
    fn parse(text: &str, what: &str) -> Result<Self> {
        let bad = |m: &str| {
            Error::InvalidInput(format!(
                "the secret's {what} version is not keyturn's JSON ({m}): it must hold {{\"UserName\", \"AccessKeyId\", \"SecretAccessKey\"}}"
            ))
        };
        let v: Value = serde_json::from_str(text).map_err(|_| bad("not JSON"))?;
        let Value::Object(mut rest) = v else {
            return Err(bad("not an object"));
        };
        let mut take = |k: &str| match rest.remove(k) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            _ => Err(bad(&format!("no {k}"))),
        };
        let user = take("UserName")?;
        let key_id = take("AccessKeyId")?;
        let secret = SecretKey::new(take("SecretAccessKey")?);
        Ok(Self {
            user,
            key_id,
            secret,
            rest,
        })
    }

    /// The JSON of this value with `key` in place of its key (other fields kept).
    fn with_key(&self, key: &NewKey) -> SecretKey {
        let mut m = Map::new();
        m.insert("UserName".into(), Value::String(self.user.clone()));
        m.insert(
            "AccessKeyId".into(),
            Value::String(key.access_key_id.clone()),
        );
        m.insert(
            "SecretAccessKey".into(),
            Value::String(key.secret.expose().to_string()),
        );
        for (k, v) in &self.rest {
            m.insert(k.clone(), v.clone());
        }
        let text = Value::Object(m).to_string();
        SecretKey::new(text)
    }

    fn new_key(&self) -> NewKey {
        NewKey {
            user_name: self.user.clone(),
            access_key_id: self.key_id.clone(),
            secret: self.secret.clone(),
            create_date: OffsetDateTime::now_utc(),
        }
    }
}

fn sm_err<E>(
    action: &'static str,
    e: &aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    Error::Aws(AwsError::from_sdk(action, e))
}

/// The run id of `createSecret` for a token (deterministic, so a retry finds it).
pub fn run_id_of(token: &str) -> String {
    let t: String = token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    format!("sm-{t}")
}

struct Described {
    arn: String,
    stages: HashMap<String, Vec<String>>,
}

impl Described {
    fn has(&self, version: &str, stage: &str) -> bool {
        self.stages
            .get(version)
            .is_some_and(|s| s.iter().any(|x| x == stage))
    }
    fn version_with(&self, stage: &str) -> Option<&str> {
        self.stages
            .iter()
            .find(|(_, s)| s.iter().any(|x| x == stage))
            .map(|(v, _)| v.as_str())
    }
}

impl<A: KeyApi, J: Journal> RotationContext<'_, A, J> {
    /// Run one step of the protocol.
    pub async fn handle(&self, ev: &RotationEvent) -> Result<StepOutcome> {
        let token = ev.client_request_token.as_str();
        let d = self.describe(&ev.secret_id, token).await?;
        let outcome = |result: &'static str, detail: String| StepOutcome {
            step: ev.step.as_str(),
            secret_id: d.arn.clone(),
            version_id: token.to_string(),
            result,
            detail,
        };
        // Already current: createSecret/setSecret have nothing to do; testSecret
        // still tests (it runs alone with RotateImmediately=false); finishSecret
        // completes a retirement a crash interrupted.
        if d.has(token, CURRENT) {
            return match ev.step {
                RotationStep::Test => {
                    let detail = self.test(&d, token, CURRENT).await?;
                    Ok(outcome("done", detail))
                }
                RotationStep::Finish if d.has(token, TESTED) => {
                    let detail = self.finish_retirement(&d, token).await?;
                    Ok(outcome("done", detail))
                }
                _ => Ok(outcome(
                    "nothing-to-do",
                    format!("version {token} is already {CURRENT}"),
                )),
            };
        }
        if !d.has(token, PENDING) {
            return Err(Error::InvalidInput(format!(
                "version {token} of secret {} is not {PENDING} (stages: {:?}): not a rotation in progress; nothing was changed",
                d.arn,
                d.stages.get(token).cloned().unwrap_or_default()
            )));
        }
        let (result, detail) = match ev.step {
            RotationStep::Create => self.create(&d, ev).await?,
            RotationStep::Set => ("done", self.set(&d, token).await?),
            RotationStep::Test => ("done", self.test(&d, token, PENDING).await?),
            RotationStep::Finish => ("done", self.finish(&d, token).await?),
        };
        Ok(outcome(result, detail))
    }

    async fn describe(&self, secret_id: &str, token: &str) -> Result<Described> {
        let out = self
            .sm
            .describe_secret()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| sm_err("secretsmanager:DescribeSecret", &e))?;
        let arn = out.arn().unwrap_or(secret_id).to_string();
        if out.rotation_enabled() != Some(true) {
            return Err(Error::InvalidInput(format!(
                "secret {arn} does not have rotation enabled; nothing was changed"
            )));
        }
        let stages = out.version_ids_to_stages().cloned().unwrap_or_default();
        if !stages.contains_key(token) {
            return Err(Error::InvalidInput(format!(
                "secret {arn} has no version {token}: not a rotation of this secret; nothing was changed"
            )));
        }
        Ok(Described { arn, stages })
    }

    /// The value of `version` (must carry `stage`), or `None` when it has none yet.
    async fn value(&self, arn: &str, version: &str, stage: &str) -> Result<Option<Held>> {
        let out = self
            .sm
            .get_secret_value()
            .secret_id(arn)
            .version_id(version)
            .version_stage(stage)
            .send()
            .await;
        match out {
            Ok(o) => match o.secret_string() {
                Some(s) => Held::parse(s, stage).map(Some),
                None => Ok(None),
            },
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(sm_err("secretsmanager:GetSecretValue", &e)),
        }
    }

    async fn current(&self, d: &Described) -> Result<(String, Held)> {
        let v = d.version_with(CURRENT).ok_or_else(|| {
            Error::InvalidInput(format!("secret {} has no {CURRENT} version", d.arn))
        })?;
        let value = self.value(&d.arn, v, CURRENT).await?.ok_or_else(|| {
            Error::InvalidInput(format!(
                "secret {}: its {CURRENT} version has no value",
                d.arn
            ))
        })?;
        Ok((v.to_string(), value))
    }

    /// The pending value, refused when it names another user than `AWSCURRENT`.
    async fn pending(&self, d: &Described, token: &str) -> Result<(Held, Held)> {
        let (_, cur) = self.current(d).await?;
        let pending = self.value(&d.arn, token, PENDING).await?.ok_or_else(|| {
            Error::InvalidInput(format!(
                "version {token} of secret {} has no value yet: createSecret has not run for it",
                d.arn
            ))
        })?;
        if pending.user != cur.user {
            return Err(Error::InvalidInput(format!(
                "refusing: {PENDING} of secret {} names user {} but {CURRENT} names {} (a secret must hold one user's key); nothing was changed",
                d.arn, pending.user, cur.user
            )));
        }
        Ok((cur, pending))
    }

    // ---- createSecret -----------------------------------------------------------

    async fn create(&self, d: &Described, ev: &RotationEvent) -> Result<(&'static str, String)> {
        let token = ev.client_request_token.as_str();
        let run_id = run_id_of(token);
        if let Some(run) = self.journal.run(&run_id).await? {
            if run.status == RunStatus::Succeeded {
                return Ok((
                    "nothing-to-do",
                    format!("run {run_id} already made version {token}"),
                ));
            }
            // An earlier attempt died; finish its journaled plan.
            self.journal.take_over(&run_id).await?;
            return self.execute(d, ev, &run.meta).await;
        }
        if self.value(&d.arn, token, PENDING).await?.is_some() {
            return Ok((
                "nothing-to-do",
                format!("version {token} already has a value"),
            ));
        }
        let (_, cur) = self.current(d).await?;
        let keys = self.iam.list_keys(&cur.user).await?;
        let account = self.iam.whoami().await?.account;
        // A key an unfinished earlier rotation created (its version lost AWSPENDING):
        // adopt it rather than making a third.
        if let Some(adopted) = self.leftover(d, &cur, &keys).await? {
            self.put_pending(d, ev, &cur, &adopted).await?;
            return Ok((
                "done",
                format!(
                    "adopted key {} of an unfinished earlier rotation as {PENDING}",
                    adopted.access_key_id
                ),
            ));
        }
        let previous = match d.version_with(PREVIOUS) {
            Some(v) => self.value(&d.arn, v, PREVIOUS).await?.map(|p| p.key_id),
            None => None,
        };
        let retired_by_keyturn = keys
            .iter()
            .filter(|k| k.status == KeyStatus::Inactive)
            .all(|k| previous.as_deref() == Some(k.access_key_id.as_str()));
        let options = PlanOptions {
            delete_inactive_keys: self.delete_inactive || retired_by_keyturn,
            yes: true,
            verify: true,
            sinks: vec![PENDING_SINK.to_string()],
            ..PlanOptions::default()
        };
        let inventory = Inventory {
            user_name: cur.user.clone(),
            keys: keys.clone(),
        };
        let now = OffsetDateTime::now_utc();
        let mut plan = plan_rotation(&inventory, &Mode::User, &options, now)?;
        // Proving the key is testSecret's step.
        plan.steps
            .retain(|s| !matches!(s, Step::VerifyNewKey { .. }));
        let meta = RunMeta {
            run_id: run_id.clone(),
            account: account.clone(),
            user_name: cur.user.clone(),
            mode: Mode::User,
            options,
            plan,
            inventory: keys,
            sinks: vec![],
            output: "json".into(),
            remote: Default::default(),
            verify_timeout_secs: self.verify.timeout.as_secs(),
            started_at: now,
            profile: None,
            mfa_serial: None,
        };
        self.journal.lock(&account, &cur.user, &run_id).await?;
        if let Err(e) = self.journal.begin(&meta).await {
            let _ = self.journal.unlock(&account, &cur.user, &run_id).await;
            return Err(e);
        }
        self.execute(d, ev, &meta).await
    }

    /// Run (or finish) the journaled plan of `createSecret`.
    async fn execute(
        &self,
        d: &Described,
        ev: &RotationEvent,
        meta: &RunMeta,
    ) -> Result<(&'static str, String)> {
        let result = crate::journal::with_heartbeat(
            self.journal,
            &meta.account,
            &meta.user_name,
            &meta.run_id,
            self.steps(d, ev, meta),
        )
        .await;
        match &result {
            Ok(_) => {
                self.journal
                    .finish(&meta.run_id, RunStatus::Succeeded, None)
                    .await?
            }
            Err(e) => {
                // A journaled new key keeps the run open (the retry delivers it).
                let held = matches!(self.journal.secret(&meta.run_id).await, Ok(Some(_)));
                let status = if held {
                    RunStatus::Incomplete
                } else {
                    RunStatus::Failed
                };
                let _ = self
                    .journal
                    .finish(&meta.run_id, status, Some(&e.to_string()))
                    .await;
            }
        }
        result
    }

    async fn steps(
        &self,
        d: &Described,
        ev: &RotationEvent,
        meta: &RunMeta,
    ) -> Result<(&'static str, String)> {
        let j = self.journal;
        let run = j
            .run(&meta.run_id)
            .await?
            .ok_or_else(|| Error::Journal(format!("run {} vanished", meta.run_id)))?;
        let progress = run.progress();
        let (_, cur) = self.current(d).await?;
        let user = &meta.user_name;
        let mut new_key: Option<NewKey> = match (&run.new_key_id, j.secret(&meta.run_id).await?) {
            (Some(id), Some(secret)) => Some(NewKey {
                user_name: user.clone(),
                access_key_id: id.clone(),
                secret,
                create_date: run.new_key_created.unwrap_or_else(OffsetDateTime::now_utc),
            }),
            _ => None,
        };
        for (i, step) in meta.plan.steps.iter().enumerate() {
            if progress.done[i] {
                continue;
            }
            crate::failpoint::hit(&format!("sm:{}", step.failpoint()));
            match step {
                Step::FreeSlot { access_key_id, .. } => {
                    j.intent(&meta.run_id, i, step).await?;
                    let present = self
                        .iam
                        .list_keys(user)
                        .await?
                        .iter()
                        .any(|k| &k.access_key_id == access_key_id);
                    if present {
                        self.iam.delete_key(user, access_key_id).await?;
                    }
                    j.done(
                        &meta.run_id,
                        i,
                        step,
                        true,
                        &format!("deleted {access_key_id}"),
                    )
                    .await?;
                }
                Step::CreateKey { .. } => {
                    if new_key.is_none() {
                        // A key made by an attempt that died before journaling it has a
                        // secret nobody holds: delete it (the lease kept others away).
                        let known: Vec<&str> = meta
                            .inventory
                            .iter()
                            .map(|k| k.access_key_id.as_str())
                            .collect();
                        for k in self.iam.list_keys(user).await? {
                            if !known.contains(&k.access_key_id.as_str()) {
                                self.iam.delete_key(user, &k.access_key_id).await?;
                                j.note(&meta.run_id, "delete-orphan", true, &k.access_key_id)
                                    .await?;
                            }
                        }
                        j.intent(&meta.run_id, i, step).await?;
                        let key = self.iam.create_key(user).await?;
                        j.key_created(&meta.run_id, i, &key).await?;
                        crate::failpoint::hit("sm:after-create-key");
                        new_key = Some(key);
                    }
                    let id = new_key
                        .as_ref()
                        .map(|k| k.access_key_id.clone())
                        .unwrap_or_default();
                    j.done(&meta.run_id, i, step, true, &format!("created {id}"))
                        .await?;
                }
                Step::Deliver { .. } => {
                    let key = new_key.as_ref().ok_or_else(|| {
                        Error::Journal(format!(
                            "run {}: no journaled new key to deliver",
                            meta.run_id
                        ))
                    })?;
                    j.intent(&meta.run_id, i, step).await?;
                    self.put_pending(d, ev, &cur, key).await?;
                    j.done(
                        &meta.run_id,
                        i,
                        step,
                        true,
                        &format!("{PENDING} version {}", ev.client_request_token),
                    )
                    .await?;
                }
                Step::VerifyDelivery { .. } => {
                    let key = new_key
                        .as_ref()
                        .map(|k| k.access_key_id.as_str())
                        .unwrap_or_default();
                    let got = self
                        .value(&d.arn, &ev.client_request_token, PENDING)
                        .await?;
                    if got.as_ref().map(|v| v.key_id.as_str()) != Some(key) {
                        return Err(Error::Runtime(format!(
                            "{PENDING} of secret {} does not hold key {key} after PutSecretValue",
                            d.arn
                        )));
                    }
                    j.done(&meta.run_id, i, step, true, "read back").await?;
                    j.delivered(&meta.run_id).await?;
                }
                other => {
                    return Err(Error::Runtime(format!(
                        "createSecret does not run step {}",
                        other.name()
                    )))
                }
            }
        }
        let id = new_key.map(|k| k.access_key_id).unwrap_or_default();
        Ok((
            "done",
            format!("created key {id} as {PENDING} (run {})", meta.run_id),
        ))
    }

    async fn put_pending(
        &self,
        d: &Described,
        ev: &RotationEvent,
        cur: &Held,
        key: &NewKey,
    ) -> Result<()> {
        let value = cur.with_key(key);
        let mut req = self
            .sm
            .put_secret_value()
            .secret_id(&d.arn)
            .client_request_token(&ev.client_request_token)
            .secret_string(value.expose())
            .version_stages(PENDING);
        if let Some(t) = &ev.rotation_token {
            req = req.rotation_token(t);
        }
        req.send()
            .await
            .map_err(|e| sm_err("secretsmanager:PutSecretValue", &e))?;
        Ok(())
    }

    /// An Active key of the user, not in `AWSCURRENT`, that a `createSecret` of this
    /// function made for a version that is no longer pending: its secret is that
    /// version's value.
    async fn leftover(
        &self,
        d: &Described,
        cur: &Held,
        keys: &[crate::model::AccessKeyInfo],
    ) -> Result<Option<NewKey>> {
        let others: Vec<&str> = keys
            .iter()
            .filter(|k| k.status == KeyStatus::Active && k.access_key_id != cur.key_id)
            .map(|k| k.access_key_id.as_str())
            .collect();
        if others.is_empty() {
            return Ok(None);
        }
        for run in self.journal.runs(Some(&cur.user)).await? {
            let Some(version) = run.meta.run_id.strip_prefix("sm-") else {
                continue;
            };
            let Some(id) = run.new_key_id.as_deref() else {
                continue;
            };
            if !others.contains(&id) || d.has(version, CURRENT) {
                continue;
            }
            let out = self
                .sm
                .get_secret_value()
                .secret_id(&d.arn)
                .version_id(version)
                .send()
                .await;
            if let Ok(o) = out {
                if let Some(s) = o.secret_string() {
                    let v = Held::parse(s, "earlier pending")?;
                    if v.key_id == id && v.user == cur.user {
                        return Ok(Some(v.new_key()));
                    }
                }
            }
        }
        Ok(None)
    }

    // ---- setSecret --------------------------------------------------------------

    async fn set(&self, d: &Described, token: &str) -> Result<String> {
        let (cur, pending) = self.pending(d, token).await?;
        if self.sinks.is_empty() {
            return Ok("no sinks are configured for this secret".into());
        }
        let account = self.iam.whoami().await?.account;
        let specs = self
            .sinks
            .iter()
            .map(|s| s.render(&account, &pending.user))
            .collect::<Result<Vec<_>>>()?;
        let set = SinkSet::build(&specs, &self.sink_env)?;
        let key = pending.new_key();
        let run_id = run_id_of(token);
        let report = crate::report::RotationReport {
            run_id: Some(run_id.clone()),
            account: Some(account.clone()),
            user_name: pending.user.clone(),
            mode: Mode::User,
            dry_run: false,
            inventory: vec![],
            actions: vec![],
            new_key: None,
            verification: None,
            profiles_updated: vec![],
            sinks: vec![],
            error: None,
        };
        let mut names = Vec::new();
        for s in &specs {
            let sink = set.get(s.name())?;
            set.prepared(s.name()).await?;
            let h = Handover {
                key: &key,
                account: &account,
                run_id: &run_id,
                replaces: std::slice::from_ref(&cur.key_id),
                report: &report,
            };
            sink.deliver(&h).await?;
            sink.verify(&h).await?;
            names.push(s.name().to_string());
        }
        Ok(format!("delivered to {}", names.join(", ")))
    }

    // ---- testSecret -------------------------------------------------------------

    async fn test(&self, d: &Described, token: &str, stage: &str) -> Result<String> {
        let value = if stage == PENDING {
            self.pending(d, token).await?.1
        } else {
            self.value(&d.arn, token, stage).await?.ok_or_else(|| {
                Error::InvalidInput(format!("version {token} of secret {} has no value", d.arn))
            })?
        };
        let left = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let policy = VerifyPolicy {
            timeout: self.verify.timeout.min(left).max(Duration::from_secs(1)),
            ..self.verify
        };
        let key = value.new_key();
        let api = self.iam.as_key(&key);
        let expected = Expected {
            user_name: &value.user,
            account: None,
        };
        match verify_key(&api, &expected, &policy).await {
            Ok(v) => {
                if stage == PENDING && !d.has(token, TESTED) {
                    self.label(&d.arn, TESTED, Some(token), None).await?;
                }
                Ok(format!(
                    "key {} authenticates as {} ({} attempts)",
                    value.key_id, v.arn, v.attempts
                ))
            }
            Err(f) => Err(Error::Runtime(format!(
                "testSecret: key {} of version {token} does not work yet ({f}); Secrets Manager retries the rotation, nothing was retired",
                value.key_id
            ))),
        }
    }

    async fn label(
        &self,
        arn: &str,
        stage: &str,
        move_to: Option<&str>,
        remove_from: Option<&str>,
    ) -> Result<()> {
        self.sm
            .update_secret_version_stage()
            .secret_id(arn)
            .version_stage(stage)
            .set_move_to_version_id(move_to.map(str::to_string))
            .set_remove_from_version_id(remove_from.map(str::to_string))
            .send()
            .await
            .map_err(|e| sm_err("secretsmanager:UpdateSecretVersionStage", &e))?;
        Ok(())
    }

    // ---- finishSecret -----------------------------------------------------------

    async fn finish(&self, d: &Described, token: &str) -> Result<String> {
        if !d.has(token, TESTED) {
            return Err(Error::InvalidInput(format!(
                "finishSecret: testSecret has not succeeded for version {token} of secret {} (no {TESTED} label); nothing was retired",
                d.arn
            )));
        }
        self.pending(d, token).await?;
        let current_version = d.version_with(CURRENT).unwrap_or_default().to_string();
        self.label(&d.arn, CURRENT, Some(token), Some(&current_version))
            .await?;
        crate::failpoint::hit("sm:after-move-current");
        let d = self.describe(&d.arn, token).await?;
        self.finish_retirement(&d, token).await
    }

    /// After `AWSCURRENT` moved to `token`: drop `AWSPENDING`, deactivate the
    /// `AWSPREVIOUS` key, drop the [`TESTED`] label. Each part is skipped when done.
    async fn finish_retirement(&self, d: &Described, token: &str) -> Result<String> {
        if d.has(token, PENDING) {
            self.label(&d.arn, PENDING, None, Some(token)).await?;
        }
        let new = self
            .value(&d.arn, token, CURRENT)
            .await?
            .ok_or_else(|| Error::Runtime(format!("{CURRENT} of secret {} has no value", d.arn)))?;
        let mut detail = format!("{CURRENT} is key {}", new.key_id);
        if let Some(pv) = d.version_with(PREVIOUS) {
            if let Some(old) = self.value(&d.arn, pv, PREVIOUS).await? {
                let keys = self.iam.list_keys(&new.user).await?;
                let active = keys
                    .iter()
                    .any(|k| k.access_key_id == old.key_id && k.status == KeyStatus::Active);
                if old.user == new.user && old.key_id != new.key_id && active {
                    self.iam
                        .set_status(&old.user, &old.key_id, KeyStatus::Inactive)
                        .await?;
                    detail.push_str(&format!("; deactivated the previous key {}", old.key_id));
                }
            }
        }
        self.label(&d.arn, TESTED, None, Some(token)).await?;
        Ok(detail)
    }
}

/// The rotation function over the SDK (IAM and STS of the function's own account).
pub fn sdk_iam(config: &aws_config::SdkConfig) -> SdkKeyApi {
    SdkKeyApi::new(config)
}
