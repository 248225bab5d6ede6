//! An in-memory IAM for unit tests of the engine and commands: keys per user, the
//! two-key limit, Active/Inactive, a scripted number of failed verifications for new
//! keys (IAM's eventual consistency), injected failures per action, and a log of every
//! call with the key that signed it. Also an in-memory journal ([`FakeJournal`]) and
//! delivery sink ([`FakeSink`]), so engine tests can say what survives a failure.

use crate::aws::{CallerIdentity, KeyApi, NewKey};
use crate::error::{AwsError, AwsErrorKind, Error, Result};
use crate::journal::{Journal, Lease, RunMeta, RunRecord, RunStatus};
use crate::model::{AccessKeyInfo, KeyStatus, Usage};
use crate::plan::Step;
use crate::secret::SecretKey;
use crate::sink::{sink_error, Delivered, Handover, Holding, Sink, SinkSpec, SinkStage, Written};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

pub const ACCOUNT: &str = "123456789012";

#[derive(Debug, Clone)]
pub struct FakeKey {
    pub info: AccessKeyInfo,
    pub user: String,
    /// Verification attempts that still fail with InvalidClientTokenId.
    pub warmup_failures: u32,
}

#[derive(Debug, Default)]
pub struct FakeState {
    pub keys: Vec<FakeKey>,
    pub users: Vec<String>,
    /// `iam:DeleteAccessKey` -> failure kind.
    pub fail: HashMap<&'static str, AwsErrorKind>,
    /// Failures each new key gives before it works (-1 never... use u32::MAX).
    pub new_key_warmup: u32,
    /// Scripted answers of `GetCallerIdentity` signed by a new key, consumed first
    /// (`false` = `InvalidClientTokenId`); then `warmup_failures` decides.
    pub whoami_script: VecDeque<bool>,
    /// (action, signer key id or "admin", argument)
    pub calls: Vec<(String, String, String)>,
    pub counter: u32,
}

#[derive(Debug, Clone)]
pub struct FakeApi {
    pub state: Arc<Mutex<FakeState>>,
    signer: Option<String>,
}

impl FakeApi {
    pub fn new(users: &[&str]) -> Self {
        let st = FakeState {
            users: users.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        Self {
            state: Arc::new(Mutex::new(st)),
            signer: None,
        }
    }

    pub fn add_key(&self, user: &str, id: &str, status: KeyStatus, days_old: i64) {
        let mut st = self.state.lock().unwrap();
        st.keys.push(FakeKey {
            info: AccessKeyInfo {
                access_key_id: id.into(),
                status,
                create_date: OffsetDateTime::now_utc() - time::Duration::days(days_old),
                usage: Usage::Never,
            },
            user: user.into(),

            warmup_failures: 0,
        });
    }

    pub fn fail(&self, action: &'static str, kind: AwsErrorKind) {
        self.state.lock().unwrap().fail.insert(action, kind);
    }

    pub fn keys_of(&self, user: &str) -> Vec<(String, KeyStatus)> {
        self.state
            .lock()
            .unwrap()
            .keys
            .iter()
            .filter(|k| k.user == user)
            .map(|k| (k.info.access_key_id.clone(), k.info.status))
            .collect()
    }

    pub fn calls(&self) -> Vec<(String, String, String)> {
        self.state.lock().unwrap().calls.clone()
    }

    fn call(&self, action: &'static str, arg: &str) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        st.calls.push((
            action.into(),
            self.signer.clone().unwrap_or_else(|| "admin".into()),
            arg.into(),
        ));
        if let Some(kind) = st.fail.get(action) {
            return Err(Error::Aws(AwsError {
                action,
                kind: kind.clone(),
                message: Some(format!("injected {kind}")),
            }));
        }
        // Calls signed by a key must use a live, Active key.
        if let Some(id) = &self.signer {
            let ok = st
                .keys
                .iter()
                .any(|k| &k.info.access_key_id == id && k.info.status == KeyStatus::Active);
            if !ok {
                return Err(aws(action, AwsErrorKind::InvalidClientTokenId));
            }
        }
        Ok(())
    }

    fn check_user(&self, user: &str) -> Result<()> {
        if self.state.lock().unwrap().users.iter().any(|u| u == user) {
            Ok(())
        } else {
            Err(Error::NoSuchUser { user: user.into() })
        }
    }
}

fn aws(action: &'static str, kind: AwsErrorKind) -> Error {
    Error::Aws(AwsError {
        action,
        kind,
        message: None,
    })
}

impl KeyApi for FakeApi {
    async fn list_keys(&self, user: &str) -> Result<Vec<AccessKeyInfo>> {
        self.call("iam:ListAccessKeys", user)?;
        self.check_user(user)?;
        let st = self.state.lock().unwrap();
        Ok(st
            .keys
            .iter()
            .filter(|k| k.user == user)
            .map(|k| AccessKeyInfo {
                usage: Usage::Unknown,
                ..k.info.clone()
            })
            .collect())
    }

    async fn last_used(&self, key_id: &str) -> Result<Usage> {
        self.call("iam:GetAccessKeyLastUsed", key_id)?;
        let st = self.state.lock().unwrap();
        st.keys
            .iter()
            .find(|k| k.info.access_key_id == key_id)
            .map(|k| k.info.usage.clone())
            .ok_or_else(|| aws("iam:GetAccessKeyLastUsed", AwsErrorKind::NoSuchEntity))
    }

    async fn create_key(&self, user: &str) -> Result<NewKey> {
        self.call("iam:CreateAccessKey", user)?;
        self.check_user(user)?;
        let mut st = self.state.lock().unwrap();
        if st.keys.iter().filter(|k| k.user == user).count() >= 2 {
            return Err(aws("iam:CreateAccessKey", AwsErrorKind::LimitExceeded));
        }
        st.counter += 1;
        let id = format!("AKIANEW{:013}", st.counter);
        let secret = format!("NEWSECRET{:031}", st.counter);
        let now = OffsetDateTime::now_utc();
        let warmup = st.new_key_warmup;
        st.keys.push(FakeKey {
            info: AccessKeyInfo {
                access_key_id: id.clone(),
                status: KeyStatus::Active,
                create_date: now,
                usage: Usage::Never,
            },
            user: user.into(),

            warmup_failures: warmup,
        });
        Ok(NewKey {
            user_name: user.into(),
            access_key_id: id,
            secret: SecretKey::new(secret),
            create_date: now,
        })
    }

    async fn set_status(&self, user: &str, key_id: &str, status: KeyStatus) -> Result<()> {
        self.call("iam:UpdateAccessKey", key_id)?;
        let mut st = self.state.lock().unwrap();
        let k = st
            .keys
            .iter_mut()
            .find(|k| k.info.access_key_id == key_id && k.user == user)
            .ok_or_else(|| aws("iam:UpdateAccessKey", AwsErrorKind::NoSuchEntity))?;
        k.info.status = status;
        Ok(())
    }

    async fn delete_key(&self, user: &str, key_id: &str) -> Result<()> {
        self.call("iam:DeleteAccessKey", key_id)?;
        let mut st = self.state.lock().unwrap();
        let before = st.keys.len();
        st.keys
            .retain(|k| !(k.info.access_key_id == key_id && k.user == user));
        if st.keys.len() == before {
            return Err(aws("iam:DeleteAccessKey", AwsErrorKind::NoSuchEntity));
        }
        Ok(())
    }

    async fn whoami(&self) -> Result<CallerIdentity> {
        let mut st = self.state.lock().unwrap();
        let signer = self.signer.clone();
        st.calls.push((
            "sts:GetCallerIdentity".into(),
            signer.clone().unwrap_or_else(|| "admin".into()),
            String::new(),
        ));
        let Some(id) = signer else {
            return Ok(CallerIdentity {
                account: ACCOUNT.into(),
                arn: format!("arn:aws:iam::{ACCOUNT}:user/admin"),
                user_id: "AIDAADMIN".into(),
            });
        };
        let st = &mut *st;
        let Some(k) = st
            .keys
            .iter_mut()
            .find(|k| k.info.access_key_id == id && k.info.status == KeyStatus::Active)
        else {
            return Err(aws(
                "sts:GetCallerIdentity",
                AwsErrorKind::InvalidClientTokenId,
            ));
        };
        let scripted = if id.starts_with("AKIANEW") {
            st.whoami_script.pop_front()
        } else {
            None
        };
        if scripted == Some(false) {
            return Err(aws(
                "sts:GetCallerIdentity",
                AwsErrorKind::InvalidClientTokenId,
            ));
        }
        if scripted.is_none() && k.warmup_failures > 0 {
            if k.warmup_failures != u32::MAX {
                k.warmup_failures -= 1;
            }
            return Err(aws(
                "sts:GetCallerIdentity",
                AwsErrorKind::InvalidClientTokenId,
            ));
        }
        Ok(CallerIdentity {
            account: ACCOUNT.into(),
            arn: format!("arn:aws:iam::{ACCOUNT}:user/{}", k.user),
            user_id: "AIDAUSER".into(),
        })
    }

    fn as_key(&self, key: &NewKey) -> Self {
        Self {
            state: self.state.clone(),
            signer: Some(key.access_key_id.clone()),
        }
    }
}

/// A journal in memory for engine tests: what a real journal would hold that a test
/// asserts on (the sealed secret, the notes, how runs ended), and an injected
/// [`crate::Error::JournalIo`] at one operation.
#[derive(Debug, Clone, Default)]
pub struct FakeJournal {
    pub state: Arc<Mutex<FakeJournalState>>,
}

#[derive(Debug, Default)]
pub struct FakeJournalState {
    /// The secret the journal holds (sealed, in a real one), by run.
    pub secrets: HashMap<String, SecretKey>,
    /// Every write, in order: `intent 1 create-key`, `done 1 create-key ok`,
    /// `note delete-new-key ok`, `delivered`, `finish failed`.
    pub events: Vec<String>,
    /// This operation (`key_created`, `delivered`, `intent`, ...) fails with a full disk.
    pub fail: Option<&'static str>,
}

impl FakeJournal {
    pub fn fail(&self, op: &'static str) {
        self.state.lock().unwrap().fail = Some(op);
    }

    /// True while the journal holds a secret for `run_id`.
    pub fn holds_secret(&self, run_id: &str) -> bool {
        self.state.lock().unwrap().secrets.contains_key(run_id)
    }

    pub fn events(&self) -> Vec<String> {
        self.state.lock().unwrap().events.clone()
    }

    fn record(&self, op: &'static str, event: String) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        if st.fail == Some(op) {
            return Err(Error::journal_io(
                "fake",
                op,
                crate::error::JournalIoKind::Full,
                "database or disk is full",
            ));
        }
        st.events.push(event);
        Ok(())
    }
}

impl Journal for FakeJournal {
    async fn lock(&self, _: &str, _: &str, _: &str) -> Result<()> {
        self.record("lock", "lock".into())
    }
    async fn unlock(&self, _: &str, _: &str, _: &str) -> Result<()> {
        self.record("unlock", "unlock".into())
    }
    async fn renew(&self, _: &str, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    async fn lease(&self, _: &str, _: &str) -> Result<Option<Lease>> {
        Ok(None)
    }
    async fn take_over(&self, _: &str) -> Result<()> {
        self.record("take_over", "take-over".into())
    }
    async fn begin(&self, _: &RunMeta) -> Result<()> {
        self.record("begin", "begin".into())
    }
    async fn intent(&self, _: &str, idx: usize, step: &Step) -> Result<()> {
        self.record("intent", format!("intent {idx} {}", step.name()))
    }
    async fn done(&self, _: &str, idx: usize, step: &Step, ok: bool, _: &str) -> Result<()> {
        let ok = if ok { "ok" } else { "failed" };
        self.record("done", format!("done {idx} {} {ok}", step.name()))
    }
    async fn reserve_secret(&self, _: &str, _: usize) -> Result<()> {
        self.record("reserve_secret", "reserve".into())
    }
    async fn key_created(&self, run_id: &str, idx: usize, key: &NewKey) -> Result<()> {
        self.record(
            "key_created",
            format!("done {idx} create-key ok {}", key.access_key_id),
        )?;
        let mut st = self.state.lock().unwrap();
        st.secrets.insert(run_id.into(), key.secret.clone());
        Ok(())
    }
    async fn delivered(&self, run_id: &str) -> Result<()> {
        self.record("delivered", "delivered".into())?;
        self.state.lock().unwrap().secrets.remove(run_id);
        Ok(())
    }
    async fn finish(&self, _: &str, status: RunStatus, _: Option<&str>) -> Result<()> {
        self.record("finish", format!("finish {}", status.as_str()))
    }
    async fn note(&self, _: &str, step: &str, ok: bool, _: &str) -> Result<()> {
        let ok = if ok { "ok" } else { "failed" };
        let event = format!("note {step} {ok}");
        let mut st = self.state.lock().unwrap();
        st.events.push(event);
        Ok(())
    }
    async fn runs(&self, _: Option<&str>) -> Result<Vec<RunRecord>> {
        Ok(vec![])
    }
    async fn run(&self, _: &str) -> Result<Option<RunRecord>> {
        Ok(None)
    }
    async fn secret(&self, run_id: &str) -> Result<Option<SecretKey>> {
        Ok(self.state.lock().unwrap().secrets.get(run_id).cloned())
    }
}

/// A delivery destination in memory: the key ids it received, and a scripted failure
/// at one stage (saying whether it may have written).
#[derive(Debug, Clone)]
pub struct FakeSink {
    pub name: String,
    pub state: Arc<Mutex<FakeSinkState>>,
}

#[derive(Debug, Default)]
pub struct FakeSinkState {
    /// The access key id it holds now.
    pub holds: Option<String>,
    pub fail: Option<(SinkStage, Written)>,
}

impl FakeSink {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            state: Arc::default(),
        }
    }

    pub fn failing(name: &str, stage: SinkStage, written: Written) -> Self {
        let s = Self::new(name);
        s.state.lock().unwrap().fail = Some((stage, written));
        s
    }

    pub fn holds(&self) -> Option<String> {
        self.state.lock().unwrap().holds.clone()
    }

    /// The spec a run journals for this sink (an `env-file` in name only).
    pub fn spec(&self) -> SinkSpec {
        SinkSpec::EnvFile(crate::sink::files::FileSpec {
            name: self.name.clone(),
            path: format!("/nonexistent/{}", self.name).into(),
            fields: None,
        })
    }

    fn check(&self, stage: SinkStage) -> Result<()> {
        match self.state.lock().unwrap().fail {
            Some((s, written)) if s == stage => {
                Err(sink_error(self, stage, written, "injected failure", None))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Sink for FakeSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "env-file"
    }
    async fn prepare(&self) -> Result<Holding> {
        self.check(SinkStage::Prepare)?;
        Ok(match self.holds() {
            Some(id) => Holding::Key(id),
            None => Holding::Empty,
        })
    }
    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        let maybe = matches!(
            self.state.lock().unwrap().fail,
            Some((SinkStage::Deliver, Written::Maybe))
        );
        if maybe {
            // A write that went out before it failed.
            self.state.lock().unwrap().holds = Some(h.key.access_key_id.clone());
        }
        self.check(SinkStage::Deliver)?;
        self.state.lock().unwrap().holds = Some(h.key.access_key_id.clone());
        Ok(Delivered::new(format!("{} written", self.name)))
    }
    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        self.check(SinkStage::Verify)?;
        if self.holds().as_deref() != Some(h.key.access_key_id.as_str()) {
            return Err(sink_error(
                self,
                SinkStage::Verify,
                Written::No,
                "does not hold the new key",
                None,
            ));
        }
        Ok(format!("{} read back", self.name))
    }
}
