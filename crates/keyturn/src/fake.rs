//! An in-memory IAM for unit tests of the engine and commands: keys per user, the
//! two-key limit, Active/Inactive, a scripted number of failed verifications for new
//! keys (IAM's eventual consistency), injected failures per action, and a log of every
//! call with the key that signed it.

use crate::aws::{CallerIdentity, KeyApi, NewKey};
use crate::error::{AwsError, AwsErrorKind, Error, Result};
use crate::model::{AccessKeyInfo, KeyStatus, Usage};
use crate::secret::SecretKey;
use std::collections::HashMap;
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
        if k.warmup_failures > 0 {
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
