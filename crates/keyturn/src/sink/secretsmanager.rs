//! The `secretsmanager` sink: one JSON secret per user in AWS Secrets Manager, written
//! with the service's own staging protocol so consumers never read a half-made value.
//!
//! 1. `PutSecretValue` with a `ClientRequestToken` derived from the run id and sink
//!    name, staged `AWSPENDING` (a retried step reuses the same version: no duplicate);
//! 2. read that version back;
//! 3. move `AWSCURRENT` to it (the old value becomes `AWSPREVIOUS`, which is what
//!    `keyturn rollback` restores) and remove `AWSPENDING`;
//! 4. verify: `GetSecretValue` with `VersionStage=AWSCURRENT` returns the new key.
//!
//! Other JSON fields of the secret (`region`, `bucket`, ...) are kept. keyturn always
//! names the stage when reading: a plain `GetSecretValue` is what moto gets wrong.

use super::fields::{FieldMap, Value};
use super::files::{json_field, set_json_fields};
use super::{
    sink_error, Delivered, Handover, Holding, RollbackOutcome, RollbackRequest, Sink, SinkEnv,
    SinkStage, Written,
};
use crate::error::{AwsError, Error, Result};
use async_trait::async_trait;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::Client;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const PREVIOUS: &str = "AWSPREVIOUS";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsManagerSpec {
    pub name: String,
    /// Name or ARN; may use `{account}` and `{user}`.
    pub secret_id: String,
    /// KMS key for a secret keyturn creates (default: `aws/secretsmanager`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// Create the secret if it does not exist.
    #[serde(default)]
    pub create: bool,
    /// Region of the secret (default: the caller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldMap>,
}

impl SecretsManagerSpec {
    pub fn validate(&self) -> Result<()> {
        if self.secret_id.trim().is_empty() {
            return Err(Error::InvalidInput(format!(
                "sink '{}': secret_id must not be empty",
                self.name
            )));
        }
        if let Some(f) = &self.fields {
            f.validate(&format!("sink '{}'", self.name), |n| !n.is_empty())?;
        }
        Ok(())
    }
}

/// A stable `ClientRequestToken` (32-64 characters) for this run and sink, so a step
/// repeated after a crash writes the same version instead of a second one.
pub fn request_token(run_id: &str, sink: &str) -> String {
    // FNV-1a: stable across processes and Rust versions, unlike std's hashers.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sink.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let run: String = run_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let mut t = format!("keyturn-{run}-{h:016x}");
    while t.len() < 32 {
        t.push('0');
    }
    t.truncate(64);
    t
}

pub struct SecretsManagerSink {
    spec: SecretsManagerSpec,
    fields: FieldMap,
    client: Client,
}

impl SecretsManagerSink {
    pub fn new(spec: &SecretsManagerSpec, env: &SinkEnv) -> Self {
        let mut b = aws_sdk_secretsmanager::config::Builder::from(&env.aws);
        if let Some(r) = &spec.region {
            b = b.region(aws_sdk_secretsmanager::config::Region::new(r.clone()));
        }
        Self {
            fields: FieldMap::or(&spec.fields, FieldMap::json_default),
            spec: spec.clone(),
            client: Client::from_conf(b.build()),
        }
    }

    fn id(&self) -> &str {
        &self.spec.secret_id
    }

    fn fail(&self, stage: SinkStage, written: Written, e: Error) -> Error {
        sink_error(
            self,
            stage,
            written,
            format!("secret {}", self.id()),
            Some(e),
        )
    }

    /// Version id -> stages, or `None` when the secret does not exist.
    async fn stages(&self) -> Result<Option<HashMap<String, Vec<String>>>> {
        match self
            .client
            .describe_secret()
            .secret_id(self.id())
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.version_ids_to_stages().cloned().unwrap_or_default())),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(AwsError::from_sdk("secretsmanager:DescribeSecret", &e).into()),
        }
    }

    /// The JSON object of a version (by stage or id).
    async fn read(
        &self,
        stage: Option<&str>,
        version: Option<&str>,
    ) -> Result<(String, serde_json::Map<String, serde_json::Value>)> {
        let o = self
            .client
            .get_secret_value()
            .secret_id(self.id())
            .set_version_stage(stage.map(str::to_string))
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("secretsmanager:GetSecretValue", &e))?;
        let vid = o.version_id().unwrap_or_default().to_string();
        let text = zeroize::Zeroizing::new(o.secret_string().unwrap_or_default().to_string());
        if text.trim().is_empty() {
            return Ok((vid, Default::default()));
        }
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(m)) => Ok((vid, m)),
            _ => Err(Error::InvalidInput(format!(
                "secret {} holds a value that is not a JSON object; keyturn writes JSON fields and will not overwrite it",
                self.id()
            ))),
        }
    }

    fn holds(
        &self,
        obj: &serde_json::Map<String, serde_json::Value>,
        values: &[(String, Value)],
    ) -> bool {
        values
            .iter()
            .all(|(k, v)| json_field(obj, k).as_deref() == Some(v.expose()))
    }

    async fn move_stage(&self, stage: &str, to: Option<&str>, from: Option<&str>) -> Result<()> {
        self.client
            .update_secret_version_stage()
            .secret_id(self.id())
            .version_stage(stage)
            .set_move_to_version_id(to.map(str::to_string))
            .set_remove_from_version_id(from.map(str::to_string))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("secretsmanager:UpdateSecretVersionStage", &e))?;
        Ok(())
    }
}

fn stage_of<'a>(stages: &'a HashMap<String, Vec<String>>, stage: &str) -> Option<&'a str> {
    stages
        .iter()
        .find(|(_, s)| s.iter().any(|x| x == stage))
        .map(|(v, _)| v.as_str())
}

#[async_trait]
impl Sink for SecretsManagerSink {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &'static str {
        "secretsmanager"
    }

    async fn prepare(&self) -> Result<Holding> {
        let fail = |e| self.fail(SinkStage::Prepare, Written::No, e);
        match self.stages().await.map_err(fail)? {
            None if self.spec.create => Ok(Holding::Empty),
            None => Err(sink_error(
                self,
                SinkStage::Prepare,
                Written::No,
                format!(
                    "secret {} does not exist; create it, or set create = true on the sink",
                    self.id()
                ),
                None,
            )),
            Some(stages) if stage_of(&stages, CURRENT).is_none() => Ok(Holding::Empty),
            Some(_) => {
                let (_, obj) = self.read(Some(CURRENT), None).await.map_err(fail)?;
                Ok(self
                    .fields
                    .key_id_field()
                    .and_then(|f| json_field(&obj, f))
                    .map(Holding::Key)
                    .unwrap_or(Holding::Empty))
            }
        }
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        let token = request_token(h.run_id, &self.spec.name);
        let values = self.fields.values(h.key, h.account);
        // Until PutSecretValue is sent, nothing of the new key is in the secret.
        let before = |e| self.fail(SinkStage::Deliver, Written::No, e);
        let after = |e| self.fail(SinkStage::Deliver, Written::Maybe, e);
        let stages = match self.stages().await.map_err(before)? {
            Some(s) => s,
            None if self.spec.create => {
                let mut obj = serde_json::Map::new();
                set_json_fields(&mut obj, &values);
                let text = zeroize::Zeroizing::new(serde_json::Value::Object(obj).to_string());
                let created = self
                    .client
                    .create_secret()
                    .name(self.id())
                    .secret_string(text.as_str())
                    .client_request_token(&token)
                    .set_kms_key_id(self.spec.kms_key_id.clone())
                    .description("Access key of an IAM user, rotated by keyturn")
                    .send()
                    .await;
                match created {
                    Ok(_) => {
                        return Ok(Delivered::new(format!(
                            "created secret {} (version {token} is AWSCURRENT)",
                            self.id()
                        )))
                    }
                    // Created meanwhile (or by the interrupted attempt): carry on below.
                    Err(e) if e.code() == Some("ResourceExistsException") => {
                        self.stages().await.map_err(after)?.unwrap_or_default()
                    }
                    Err(e) => {
                        return Err(after(
                            AwsError::from_sdk("secretsmanager:CreateSecret", &e).into(),
                        ))
                    }
                }
            }
            None => {
                return Err(sink_error(
                    self,
                    SinkStage::Deliver,
                    Written::No,
                    format!("secret {} does not exist (create = false)", self.id()),
                    None,
                ))
            }
        };
        let current = stage_of(&stages, CURRENT).map(str::to_string);
        if current.as_deref() == Some(token.as_str()) {
            // An earlier attempt got as far as the stage move.
            if stages
                .get(&token)
                .is_some_and(|s| s.iter().any(|x| x == PENDING))
            {
                self.move_stage(PENDING, None, Some(&token))
                    .await
                    .map_err(after)?;
            }
            return Ok(Delivered::new(format!(
                "secret {}: version {token} is already AWSCURRENT",
                self.id()
            )));
        }
        let mut obj = match &current {
            Some(_) => self.read(Some(CURRENT), None).await.map_err(before)?.1,
            None => Default::default(),
        };
        set_json_fields(&mut obj, &values);
        let text = zeroize::Zeroizing::new(serde_json::Value::Object(obj).to_string());
        let put = self
            .client
            .put_secret_value()
            .secret_id(self.id())
            .secret_string(text.as_str())
            .client_request_token(&token)
            .version_stages(PENDING)
            .send()
            .await;
        match put {
            Ok(_) => {}
            // The version exists with other bytes (another field changed since the
            // interrupted attempt wrote it): fine if it carries the new key.
            Err(e) if e.code() == Some("ResourceExistsException") => {
                let (_, pending) = self.read(None, Some(&token)).await.map_err(after)?;
                if !self.holds(&pending, &values) {
                    return Err(sink_error(
                        self,
                        SinkStage::Deliver,
                        Written::Maybe,
                        format!(
                            "secret {}: version {token} exists and does not hold the new key",
                            self.id()
                        ),
                        None,
                    ));
                }
            }
            Err(e) => {
                return Err(after(
                    AwsError::from_sdk("secretsmanager:PutSecretValue", &e).into(),
                ))
            }
        }
        let (_, pending) = self
            .read(Some(PENDING), Some(&token))
            .await
            .map_err(after)?;
        if !self.holds(&pending, &values) {
            return Err(sink_error(
                self,
                SinkStage::Deliver,
                Written::Maybe,
                format!(
                    "secret {}: the AWSPENDING version does not read back",
                    self.id()
                ),
                None,
            ));
        }
        self.move_stage(CURRENT, Some(&token), current.as_deref())
            .await
            .map_err(after)?;
        self.move_stage(PENDING, None, Some(&token))
            .await
            .map_err(after)?;
        Ok(Delivered::new(format!(
            "secret {}: version {token} is AWSCURRENT{}",
            self.id(),
            if current.is_some() {
                ", the old value AWSPREVIOUS"
            } else {
                ""
            }
        )))
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        let token = request_token(h.run_id, &self.spec.name);
        let fail = |e| self.fail(SinkStage::Verify, Written::Maybe, e);
        let values = self.fields.values(h.key, h.account);
        let (vid, obj) = self.read(Some(CURRENT), None).await.map_err(fail)?;
        let stages = self.stages().await.map_err(fail)?.unwrap_or_default();
        let problem = if !self.holds(&obj, &values) {
            Some("AWSCURRENT does not hold the new key".to_string())
        } else if vid != token {
            Some(format!(
                "AWSCURRENT is version {vid}, not keyturn's {token}"
            ))
        } else if stages
            .get(&token)
            .is_some_and(|s| s.iter().any(|x| x == PENDING))
        {
            Some("keyturn's version still carries AWSPENDING".to_string())
        } else {
            None
        };
        match problem {
            Some(p) => Err(sink_error(
                self,
                SinkStage::Verify,
                Written::Maybe,
                format!("secret {}: {p}", self.id()),
                None,
            )),
            None => Ok(format!(
                "secret {}: AWSCURRENT ({vid}) holds the new key",
                self.id()
            )),
        }
    }

    async fn rollback(&self, r: &RollbackRequest<'_>) -> Result<RollbackOutcome> {
        let token = request_token(r.run_id, &self.spec.name);
        let fail = |e| self.fail(SinkStage::Rollback, Written::Maybe, e);
        let stages = self.stages().await.map_err(fail)?.unwrap_or_default();
        let current = stage_of(&stages, CURRENT);
        let previous = stage_of(&stages, PREVIOUS).map(str::to_string);
        match (current, previous) {
            (Some(c), Some(p)) if c == token => {
                self.move_stage(CURRENT, Some(&p), Some(&token))
                    .await
                    .map_err(fail)?;
                Ok(RollbackOutcome::Restored(format!(
                    "secret {}: AWSCURRENT moved back to the previous version {p}",
                    self.id()
                )))
            }
            (Some(c), _) if c == token => Ok(RollbackOutcome::NotSupported(format!(
                "secret {}: keyturn created it; there is no previous version",
                self.id()
            ))),
            _ => Ok(RollbackOutcome::NotSupported(format!(
                "secret {}: AWSCURRENT is no longer keyturn's version {token}; left as it is",
                self.id()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_tokens_are_stable_and_in_range() {
        let a = request_token("20261121T231200Z-9f3a1c", "ci-aws");
        assert_eq!(a, request_token("20261121T231200Z-9f3a1c", "ci-aws"));
        assert_ne!(a, request_token("20261121T231200Z-9f3a1c", "ci-aws2"));
        assert!((32..=64).contains(&a.len()), "{a}");
        let long = request_token(&"x".repeat(200), "s");
        assert!((32..=64).contains(&long.len()));
    }
}
