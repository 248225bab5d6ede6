//! The `ssm` sink: AWS Systems Manager Parameter Store, as one JSON `SecureString`
//! parameter (`parameter = "/ci/{user}"`) or one `SecureString` per field
//! (`parameters = { AWS_ACCESS_KEY_ID = "/ci/{user}/id", AWS_SECRET_ACCESS_KEY = "/ci/{user}/secret" }`).
//!
//! Writes use `PutParameter` with `Overwrite` (and `KeyId` when given); verification
//! reads each parameter back with `WithDecryption` and checks the value and that the
//! version is the one written. Parameter Store keeps every version, so `keyturn
//! rollback` writes the previous version's value back as a new version.

use super::fields::{FieldMap, Value};
use super::files::{json_field, set_json_fields};
use super::{
    sink_error, Delivered, Handover, Holding, RollbackOutcome, RollbackRequest, Sink, SinkEnv,
    SinkStage, Written,
};
use crate::error::{AwsError, Error, Result};
use async_trait::async_trait;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::ParameterType;
use aws_sdk_ssm::Client;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Destination field name -> parameter name, in the order written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamMap(pub Vec<(String, String)>);

impl Serialize for ParamMap {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for ParamMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ParamMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of field name = \"/parameter/name\"")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<ParamMap, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = a.next_entry::<String, String>()? {
                    v.push(e);
                }
                Ok(ParamMap(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsmSpec {
    pub name: String,
    /// One JSON SecureString parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// One SecureString parameter per field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<ParamMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldMap>,
}

fn valid_parameter_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 1011
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-/{}".contains(c))
}

impl SsmSpec {
    fn field_map(&self) -> FieldMap {
        match (&self.fields, &self.parameters) {
            (Some(f), _) => f.clone(),
            (None, Some(_)) => FieldMap::env_default(),
            (None, None) => FieldMap::json_default(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("sink '{}': {m}", self.name)));
        match (&self.parameter, &self.parameters) {
            (Some(_), Some(_)) | (None, None) => return bad(
                "set exactly one of parameter (one JSON parameter) or parameters (one per field)"
                    .into(),
            ),
            (Some(p), None) if !valid_parameter_name(p) => {
                return bad(format!("parameter {p:?} is not a valid SSM parameter name"))
            }
            (None, Some(ps)) => {
                let fields = self.field_map();
                for (field, p) in &ps.0 {
                    if !valid_parameter_name(p) {
                        return bad(format!(
                            "parameters.{field} = {p:?} is not a valid SSM parameter name"
                        ));
                    }
                    if !fields.0.iter().any(|(n, _)| n == field) {
                        return bad(format!(
                            "parameters names field {field:?}, which fields does not map (fields: {})",
                            fields.0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
                for (n, _) in &fields.0 {
                    if !ps.0.iter().any(|(f, _)| f == n) {
                        return bad(format!("field {n:?} has no parameter in parameters"));
                    }
                }
            }
            _ => {}
        }
        self.field_map()
            .validate(&format!("sink '{}'", self.name), |n| !n.is_empty())
    }
}

pub struct SsmSink {
    spec: SsmSpec,
    fields: FieldMap,
    client: Client,
}

impl SsmSink {
    pub fn new(spec: &SsmSpec, env: &SinkEnv) -> Self {
        let mut b = aws_sdk_ssm::config::Builder::from(&env.aws);
        if let Some(r) = &spec.region {
            b = b.region(aws_sdk_ssm::config::Region::new(r.clone()));
        }
        Self {
            fields: spec.field_map(),
            spec: spec.clone(),
            client: Client::from_conf(b.build()),
        }
    }

    fn fail(&self, stage: SinkStage, written: Written, e: Error) -> Error {
        sink_error(self, stage, written, "", Some(e))
    }

    /// (parameter name, value to write) pairs for `values`. For the JSON form the
    /// current object's other fields are merged in.
    async fn targets(
        &self,
        values: &[(String, Value)],
    ) -> Result<Vec<(String, zeroize::Zeroizing<String>)>> {
        match (&self.spec.parameter, &self.spec.parameters) {
            (Some(p), _) => {
                let mut obj = match self.get(p).await? {
                    Some((_, text)) => parse_object(p, &text)?,
                    None => Default::default(),
                };
                set_json_fields(&mut obj, values);
                Ok(vec![(
                    p.clone(),
                    zeroize::Zeroizing::new(serde_json::Value::Object(obj).to_string()),
                )])
            }
            (None, Some(ps)) => Ok(ps
                .0
                .iter()
                .filter_map(|(field, p)| {
                    values
                        .iter()
                        .find(|(n, _)| n == field)
                        .map(|(_, v)| (p.clone(), zeroize::Zeroizing::new(v.expose().to_string())))
                })
                .collect()),
            (None, None) => Ok(vec![]),
        }
    }

    /// (version, decrypted value), or `None` if the parameter does not exist.
    async fn get(&self, name: &str) -> Result<Option<(i64, zeroize::Zeroizing<String>)>> {
        match self
            .client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
        {
            Ok(o) => {
                let p = o.parameter();
                Ok(Some((
                    p.map(|p| p.version()).unwrap_or_default(),
                    zeroize::Zeroizing::new(
                        p.and_then(|p| p.value()).unwrap_or_default().to_string(),
                    ),
                )))
            }
            Err(e) if e.code() == Some("ParameterNotFound") => Ok(None),
            Err(e) => Err(AwsError::from_sdk("ssm:GetParameter", &e).into()),
        }
    }

    /// Does every target parameter hold its value?
    async fn check(
        &self,
        targets: &[(String, zeroize::Zeroizing<String>)],
        values: &[(String, Value)],
    ) -> Result<Vec<(String, Option<i64>)>> {
        let mut out = Vec::new();
        for (name, want) in targets {
            let got = self.get(name).await?;
            let ok = match (&got, &self.spec.parameter) {
                // The JSON form: compare the mapped fields (others may change meanwhile).
                (Some((_, text)), Some(_)) => parse_object(name, text)
                    .map(|o| {
                        values
                            .iter()
                            .all(|(k, v)| json_field(&o, k).as_deref() == Some(v.expose()))
                    })
                    .unwrap_or(false),
                (Some((_, text)), None) => text.as_str() == want.as_str(),
                (None, _) => false,
            };
            out.push((name.clone(), got.filter(|_| ok).map(|(v, _)| v)));
        }
        Ok(out)
    }
}

fn parse_object(name: &str, text: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
    if text.trim().is_empty() {
        return Ok(Default::default());
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(Error::InvalidInput(format!(
            "parameter {name} holds a value that is not a JSON object; keyturn writes JSON fields and will not overwrite it"
        ))),
    }
}

#[async_trait]
impl Sink for SsmSink {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &'static str {
        "ssm"
    }

    async fn prepare(&self) -> Result<Holding> {
        let fail = |e| self.fail(SinkStage::Prepare, Written::No, e);
        let Some(field) = self.fields.key_id_field() else {
            return Ok(Holding::Unknown);
        };
        let (name, json) = match (&self.spec.parameter, &self.spec.parameters) {
            (Some(p), _) => (p.clone(), true),
            (None, Some(ps)) => match ps.0.iter().find(|(f, _)| f == field) {
                Some((_, p)) => (p.clone(), false),
                None => return Ok(Holding::Unknown),
            },
            _ => return Ok(Holding::Unknown),
        };
        Ok(match self.get(&name).await.map_err(fail)? {
            None => Holding::Empty,
            Some((_, text)) if json => parse_object(&name, &text)
                .map_err(fail)?
                .get(field)
                .and_then(|v| v.as_str())
                .map(|s| Holding::Key(s.to_string()))
                .unwrap_or(Holding::Empty),
            Some((_, text)) => Holding::Key(text.to_string()),
        })
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        let values = self.fields.values(h.key, h.account);
        let targets = self
            .targets(&values)
            .await
            .map_err(|e| self.fail(SinkStage::Deliver, Written::No, e))?;
        let already = self
            .check(&targets, &values)
            .await
            .map_err(|e| self.fail(SinkStage::Deliver, Written::No, e))?;
        let mut written = Vec::new();
        let mut wrote_any = false;
        for ((name, value), (_, have)) in targets.iter().zip(&already) {
            if let Some(v) = have {
                written.push(format!("{name} (version {v}, already)"));
                continue;
            }
            let out = self
                .client
                .put_parameter()
                .name(name)
                .value(value.as_str())
                .r#type(ParameterType::SecureString)
                .set_key_id(self.spec.kms_key_id.clone())
                .overwrite(true)
                .send()
                .await
                .map_err(|e| {
                    let written = if wrote_any {
                        Written::Maybe
                    } else {
                        Written::No
                    };
                    // A lost response may still have written it.
                    let written = if matches!(e, aws_sdk_ssm::error::SdkError::ServiceError(_)) {
                        written
                    } else {
                        Written::Maybe
                    };
                    self.fail(
                        SinkStage::Deliver,
                        written,
                        AwsError::from_sdk("ssm:PutParameter", &e).into(),
                    )
                })?;
            wrote_any = true;
            written.push(format!("{name} (version {})", out.version()));
        }
        Ok(Delivered::new(format!("wrote {}", written.join(", "))))
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        let values = self.fields.values(h.key, h.account);
        let fail = |e| self.fail(SinkStage::Verify, Written::Maybe, e);
        let targets = self.targets(&values).await.map_err(fail)?;
        let got = self.check(&targets, &values).await.map_err(fail)?;
        let mut shown = Vec::new();
        for (name, v) in got {
            match v {
                Some(v) => shown.push(format!("{name} (version {v})")),
                None => {
                    return Err(sink_error(
                        self,
                        SinkStage::Verify,
                        Written::Maybe,
                        format!("reading back {name} with decryption did not show the new key"),
                        None,
                    ))
                }
            }
        }
        Ok(format!("read back {}", shown.join(", ")))
    }

    async fn rollback(&self, r: &RollbackRequest<'_>) -> Result<RollbackOutcome> {
        let fail = |e| self.fail(SinkStage::Rollback, Written::Maybe, e);
        let names: Vec<String> = match (&self.spec.parameter, &self.spec.parameters) {
            (Some(p), _) => vec![p.clone()],
            (None, Some(ps)) => ps.0.iter().map(|(_, p)| p.clone()).collect(),
            _ => vec![],
        };
        // Only parameters whose newest version was written by this rotation (it holds
        // the new key id, or it is the secret written right after it) are put back.
        let mut restored = Vec::new();
        let mut history_all = Vec::new();
        for name in &names {
            let mut versions: Vec<(i64, zeroize::Zeroizing<String>)> = Vec::new();
            let mut token = None;
            loop {
                let o = self
                    .client
                    .get_parameter_history()
                    .name(name)
                    .with_decryption(true)
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| fail(AwsError::from_sdk("ssm:GetParameterHistory", &e).into()))?;
                for p in o.parameters() {
                    versions.push((
                        p.version(),
                        zeroize::Zeroizing::new(p.value().unwrap_or_default().to_string()),
                    ));
                }
                match o.next_token() {
                    Some(t) => token = Some(t.to_string()),
                    None => break,
                }
            }
            versions.sort_by_key(|(v, _)| *v);
            history_all.push((name.clone(), versions));
        }
        // The version that introduced the new key id, per parameter.
        let key_param = self.fields.key_id_field().and_then(|f| {
            match (&self.spec.parameter, &self.spec.parameters) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(ps)) => ps.0.iter().find(|(n, _)| n == f).map(|(_, p)| p.clone()),
                _ => None,
            }
        });
        let holds_new = |name: &str, text: &str| -> bool {
            match &self.spec.parameter {
                Some(_) => {
                    parse_object(name, text)
                        .ok()
                        .and_then(|o| self.fields.key_id_field().and_then(|f| json_field(&o, f)))
                        .as_deref()
                        == Some(r.new_key_id)
                }
                None => key_param.as_deref() != Some(name) || text == r.new_key_id,
            }
        };
        for (name, versions) in &history_all {
            let Some(latest) = versions.last() else {
                continue;
            };
            if !holds_new(name, &latest.1) {
                continue;
            }
            let Some(prev) = versions.iter().rev().nth(1) else {
                continue;
            };
            self.client
                .put_parameter()
                .name(name)
                .value(prev.1.as_str())
                .r#type(ParameterType::SecureString)
                .set_key_id(self.spec.kms_key_id.clone())
                .overwrite(true)
                .send()
                .await
                .map_err(|e| fail(AwsError::from_sdk("ssm:PutParameter", &e).into()))?;
            restored.push(format!("{name} (value of version {})", prev.0));
        }
        Ok(if restored.is_empty() {
            RollbackOutcome::NotSupported(
                "no parameter's newest version holds the rotated key; left as they are".into(),
            )
        } else {
            RollbackOutcome::Restored(format!("wrote back {}", restored.join(", ")))
        })
    }
}
