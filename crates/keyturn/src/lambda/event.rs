//! The three event shapes of the `keyturn-lambda` function, told apart by their fields.
//!
//! One function serves EventBridge schedules, Secrets Manager and direct invokes, so
//! the payload decides what runs. [`classify`] is pure and decides by field names
//! only: `Step` + `SecretId` is Secrets Manager, `Rotate` is an on-demand rotation,
//! anything else is a scheduled fleet run (an EventBridge rule envelope is unwrapped
//! to its `detail`). A payload that mixes shapes is refused rather than guessed at.

use crate::error::{Error, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A Secrets Manager rotation request. keyturn's own struct: `aws_lambda_events`
/// lacks `RotationToken`, which must be passed back on `PutSecretValue`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RotationEvent {
    pub step: RotationStep,
    pub secret_id: String,
    pub client_request_token: String,
    /// Sensitive (it authorizes `PutSecretValue` for this rotation): never logged,
    /// redacted in `Debug`.
    #[serde(default)]
    pub rotation_token: Option<String>,
}

impl std::fmt::Debug for RotationEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotationEvent")
            .field("step", &self.step)
            .field("secret_id", &self.secret_id)
            .field("client_request_token", &self.client_request_token)
            .field(
                "rotation_token",
                &self.rotation_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The four steps of the Secrets Manager rotation protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RotationStep {
    #[serde(rename = "createSecret")]
    Create,
    #[serde(rename = "setSecret")]
    Set,
    #[serde(rename = "testSecret")]
    Test,
    #[serde(rename = "finishSecret")]
    Finish,
}

impl RotationStep {
    pub fn as_str(&self) -> &'static str {
        match self {
            RotationStep::Create => "createSecret",
            RotationStep::Set => "setSecret",
            RotationStep::Test => "testSecret",
            RotationStep::Finish => "finishSecret",
        }
    }
}

/// `{"Rotate": {"Account"?, "UserName", "Sinks": [...], "DryRun"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RotateRequest {
    /// An account id or configured `[[accounts]]` name; default: the function's own.
    #[serde(default)]
    pub account: Option<String>,
    pub user_name: String,
    /// Names of `[[sinks]]` in the settings (at least one; `stdout` is refused: it
    /// would print the secret into the function's logs).
    pub sinks: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
}

/// Where a scheduled run's fleet policy comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySource {
    /// The settings file's own `[policy]`, `[[accounts]]`, `[[rotations]]`.
    Settings,
    /// Inline: the event's other fields, the same schema as the TOML.
    Inline(Map<String, Value>),
    /// `{"PolicyParameter": "/keyturn/policy"}`: an SSM parameter (TOML or JSON).
    Parameter(String),
    /// `{"PolicyS3": "s3://bucket/key"}`: an S3 object (TOML or JSON).
    S3 { bucket: String, key: String },
}

/// A scheduled (or fanned-out) fleet run.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetEvent {
    pub policy: PolicySource,
    /// List the accounts and invoke the function once per account, asynchronously.
    pub fan_out: bool,
    /// One account of a fan-out (an account id).
    pub account: Option<String>,
    pub dry_run: bool,
}

impl FleetEvent {
    /// The event a fan-out sends for one account: the same policy source, that account.
    pub fn for_account(&self, account: &str) -> Value {
        let mut m = match &self.policy {
            PolicySource::Settings => Map::new(),
            PolicySource::Inline(p) => p.clone(),
            PolicySource::Parameter(n) => {
                let mut m = Map::new();
                m.insert("PolicyParameter".into(), Value::String(n.clone()));
                m
            }
            PolicySource::S3 { bucket, key } => {
                let mut m = Map::new();
                m.insert(
                    "PolicyS3".into(),
                    Value::String(format!("s3://{bucket}/{key}")),
                );
                m
            }
        };
        m.insert("Account".into(), Value::String(account.to_string()));
        if self.dry_run {
            m.insert("DryRun".into(), Value::Bool(true));
        }
        Value::Object(m)
    }
}

/// One invocation's payload, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Fleet(FleetEvent),
    Rotation(RotationEvent),
    Rotate(RotateRequest),
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("invalid event: {msg}"))
}

/// Tell the event shapes apart by their fields (see the module docs).
pub fn classify(payload: Value) -> Result<Event> {
    let Value::Object(mut m) = payload else {
        return Err(bad(
            "expected a JSON object (a fleet policy, a Secrets Manager rotation step, or {\"Rotate\": {...}})",
        ));
    };
    if m.contains_key("Step") || m.contains_key("ClientRequestToken") {
        let e: RotationEvent = serde_json::from_value(Value::Object(m))
            .map_err(|e| bad(format!("Secrets Manager rotation event: {e}")))?;
        return Ok(Event::Rotation(e));
    }
    if let Some(r) = m.remove("Rotate") {
        if !m.is_empty() {
            let extra: Vec<&String> = m.keys().collect();
            return Err(bad(format!(
                "\"Rotate\" takes no sibling fields (found {extra:?})"
            )));
        }
        let r: RotateRequest =
            serde_json::from_value(r).map_err(|e| bad(format!("Rotate: {e}")))?;
        return Ok(Event::Rotate(r));
    }
    // An EventBridge rule delivers its envelope; the schedule's input is `detail`.
    if m.contains_key("detail-type") && m.contains_key("source") {
        m = match m.remove("detail") {
            Some(Value::Object(d)) => d,
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(bad("the EventBridge envelope's detail is not an object")),
        };
    }
    fleet(m).map(Event::Fleet)
}

fn fleet(mut m: Map<String, Value>) -> Result<FleetEvent> {
    let flag = |m: &mut Map<String, Value>, k: &str| -> Result<bool> {
        match m.remove(k) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(v) => Err(bad(format!("{k} must be true or false, not {v}"))),
        }
    };
    let string = |m: &mut Map<String, Value>, k: &str| -> Result<Option<String>> {
        match m.remove(k) {
            None => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s)),
            Some(v) => Err(bad(format!("{k} must be a non-empty string, not {v}"))),
        }
    };
    let fan_out = flag(&mut m, "FanOut")?;
    let dry_run = flag(&mut m, "DryRun")?;
    let account = string(&mut m, "Account")?;
    if fan_out && account.is_some() {
        return Err(bad(
            "FanOut and Account exclude each other (Account is what a fan-out sends each account)",
        ));
    }
    if let Some(a) = &account {
        if !crate::access::is_account_id(a) {
            return Err(bad(format!("Account {a:?} is not a 12-digit account id")));
        }
    }
    let parameter = string(&mut m, "PolicyParameter")?;
    let s3 = string(&mut m, "PolicyS3")?;
    let policy = match (parameter, s3, m.is_empty()) {
        (None, None, true) => PolicySource::Settings,
        (None, None, false) => {
            const KEYS: [&str; 4] = ["policy", "accounts", "rotations", "sinks"];
            if let Some(k) = m.keys().find(|k| !KEYS.contains(&k.as_str())) {
                return Err(bad(format!(
                    "unknown field {k:?}: a fleet run takes PolicyParameter, PolicyS3, FanOut, Account, DryRun, or an inline policy ({})",
                    KEYS.join(", ")
                )));
            }
            PolicySource::Inline(m)
        }
        (Some(p), None, true) => PolicySource::Parameter(p),
        (None, Some(u), true) => {
            let rest = u
                .strip_prefix("s3://")
                .ok_or_else(|| bad(format!("PolicyS3 {u:?}: expected s3://BUCKET/KEY")))?;
            match rest.split_once('/') {
                Some((b, k)) if !b.is_empty() && !k.is_empty() => PolicySource::S3 {
                    bucket: b.to_string(),
                    key: k.to_string(),
                },
                _ => return Err(bad(format!("PolicyS3 {u:?}: expected s3://BUCKET/KEY"))),
            }
        }
        _ => {
            return Err(bad(
                "give one policy source: PolicyParameter, PolicyS3 or an inline policy",
            ))
        }
    };
    Ok(FleetEvent {
        policy,
        fan_out,
        account,
        dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_manager_steps_are_recognized() {
        let e = classify(json!({"Step": "createSecret", "SecretId": "arn:s", "ClientRequestToken": "t1", "RotationToken": "rt"})).unwrap();
        let Event::Rotation(r) = e else { panic!() };
        assert_eq!(r.step, RotationStep::Create);
        assert_eq!(r.rotation_token.as_deref(), Some("rt"));
        assert!(!format!("{r:?}").contains("\"rt\""), "{r:?}");
        for (s, step) in [
            ("setSecret", RotationStep::Set),
            ("testSecret", RotationStep::Test),
            ("finishSecret", RotationStep::Finish),
        ] {
            let Event::Rotation(r) =
                classify(json!({"Step": s, "SecretId": "x", "ClientRequestToken": "t"})).unwrap()
            else {
                panic!()
            };
            assert_eq!(r.step, step);
            assert_eq!(r.rotation_token, None);
        }
        let err =
            classify(json!({"Step": "dropSecret", "SecretId": "x", "ClientRequestToken": "t"}))
                .unwrap_err();
        assert!(err.to_string().contains("dropSecret"), "{err}");
        assert!(classify(json!({"Step": "createSecret", "SecretId": "x"})).is_err());
    }

    #[test]
    fn direct_rotation_is_recognized() {
        let Event::Rotate(r) =
            classify(json!({"Rotate": {"UserName": "ci-bot", "Sinks": ["vault"]}})).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.user_name, "ci-bot");
        assert_eq!(r.account, None);
        assert!(
            classify(json!({"Rotate": {"UserName": "u", "Sinks": []}, "FanOut": true})).is_err()
        );
        assert!(classify(json!({"Rotate": {"User": "u"}})).is_err());
    }

    #[test]
    fn fleet_runs_and_their_policy_sources() {
        let f = |v: Value| match classify(v).unwrap() {
            Event::Fleet(f) => f,
            e => panic!("{e:?}"),
        };
        assert_eq!(f(json!({})).policy, PolicySource::Settings);
        let e = f(json!({"PolicyParameter": "/keyturn/policy", "FanOut": true}));
        assert_eq!(e.policy, PolicySource::Parameter("/keyturn/policy".into()));
        assert!(e.fan_out);
        assert_eq!(
            f(json!({"PolicyS3": "s3://b/p/policy.toml"})).policy,
            PolicySource::S3 {
                bucket: "b".into(),
                key: "p/policy.toml".into()
            }
        );
        let inline = f(json!({"rotations": [{"name": "all"}], "DryRun": true}));
        assert!(inline.dry_run);
        assert!(
            matches!(inline.policy, PolicySource::Inline(ref m) if m.contains_key("rotations"))
        );
        // An EventBridge rule's envelope: the input is `detail`.
        let env = f(
            json!({"version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {"FanOut": true}}),
        );
        assert!(env.fan_out);
        assert_eq!(env.policy, PolicySource::Settings);
        // One account of a fan-out, and what the fan-out sends.
        let one = f(json!({"Account": "111111111111", "PolicyParameter": "/p"}));
        assert_eq!(one.account.as_deref(), Some("111111111111"));
        assert_eq!(
            e.for_account("222222222222"),
            json!({"PolicyParameter": "/keyturn/policy", "Account": "222222222222"})
        );
    }

    #[test]
    fn mixed_or_malformed_fleet_events_are_refused() {
        for v in [
            json!({"PolicyParameter": "/p", "PolicyS3": "s3://b/k"}),
            json!({"PolicyParameter": "/p", "rotations": []}),
            json!({"PolicyS3": "https://b/k"}),
            json!({"PolicyS3": "s3://b"}),
            json!({"FanOut": "yes"}),
            json!({"FanOut": true, "Account": "111111111111"}),
            json!({"Account": "prod"}),
            json!({"rotation": []}),
            json!([1]),
        ] {
            let e = classify(v.clone()).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::GUARD, "{v}: {e}");
        }
    }
}
