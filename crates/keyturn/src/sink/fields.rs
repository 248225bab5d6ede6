//! Which value goes into which destination field, and the `{account}`/`{user}`
//! placeholders that let one sink definition serve many users.
//!
//! `fields = { AWS_KEY = "access_key_id", AWS_SECRET = "secret_access_key" }` maps the
//! destination's field names to keyturn's values. The mapping keeps the order it is
//! written in (new lines of an env file are appended in that order).

use crate::aws::NewKey;
use crate::error::{Error, Result};
use crate::secret::SecretKey;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A value keyturn can write into a destination field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    AccessKeyId,
    SecretAccessKey,
    UserName,
    Account,
    CreateDate,
}

/// A rendered field value. The secret stays in custody; the others are plain text.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Secret(SecretKey),
    Plain(String),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Secret(_) => f.write_str("Secret(<redacted>)"),
            Value::Plain(s) => write!(f, "Plain({s:?})"),
        }
    }
}

impl Value {
    pub fn of(field: Field, key: &NewKey, account: &str) -> Self {
        match field {
            Field::AccessKeyId => Value::Plain(key.access_key_id.clone()),
            Field::SecretAccessKey => Value::Secret(key.secret.clone()),
            Field::UserName => Value::Plain(key.user_name.clone()),
            Field::Account => Value::Plain(account.to_string()),
            Field::CreateDate => Value::Plain(crate::printer::rfc3339(key.create_date)),
        }
    }

    /// The text to write. Call sites are the audited exits of the secret.
    pub fn expose(&self) -> &str {
        match self {
            Value::Secret(s) => s.expose(),
            Value::Plain(s) => s,
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, Value::Secret(_))
    }
}

/// Destination field name -> value, in the order written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldMap(pub Vec<(String, Field)>);

impl FieldMap {
    /// `{"AccessKeyId": ..., "SecretAccessKey": ...}`: JSON-shaped destinations.
    pub fn json_default() -> Self {
        Self(vec![
            ("AccessKeyId".into(), Field::AccessKeyId),
            ("SecretAccessKey".into(), Field::SecretAccessKey),
        ])
    }

    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`: env-style destinations.
    pub fn env_default() -> Self {
        Self(vec![
            ("AWS_ACCESS_KEY_ID".into(), Field::AccessKeyId),
            ("AWS_SECRET_ACCESS_KEY".into(), Field::SecretAccessKey),
        ])
    }

    /// The configured map, or `default` when none was given.
    pub fn or(m: &Option<FieldMap>, default: fn() -> FieldMap) -> FieldMap {
        m.clone().unwrap_or_else(default)
    }

    /// (destination name, value) pairs for `key`.
    pub fn values(&self, key: &NewKey, account: &str) -> Vec<(String, Value)> {
        self.0
            .iter()
            .map(|(name, f)| (name.clone(), Value::of(*f, key, account)))
            .collect()
    }

    /// The destination name of the access key id, if mapped (used to tell which key a
    /// destination holds).
    pub fn key_id_field(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, f)| *f == Field::AccessKeyId)
            .map(|(n, _)| n.as_str())
    }

    /// Check the map: not empty, the secret mapped, names usable by `valid_name`.
    pub fn validate(&self, what: &str, valid_name: impl Fn(&str) -> bool) -> Result<()> {
        if self.0.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{what}: fields must not be empty"
            )));
        }
        if !self.0.iter().any(|(_, f)| *f == Field::SecretAccessKey) {
            return Err(Error::InvalidInput(format!(
                "{what}: fields must map some field to secret_access_key, or the new key is delivered without its secret"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &self.0 {
            if !valid_name(name) {
                return Err(Error::InvalidInput(format!(
                    "{what}: field name {name:?} cannot be used in this destination"
                )));
            }
            if !seen.insert(name) {
                return Err(Error::InvalidInput(format!(
                    "{what}: field {name:?} is mapped twice"
                )));
            }
        }
        Ok(())
    }
}

impl Serialize for FieldMap {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for FieldMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of destination field = \"access_key_id\" | \"secret_access_key\" | \"user_name\" | \"account\" | \"create_date\"")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<FieldMap, A::Error> {
                let mut v = Vec::new();
                while let Some((k, f)) = a.next_entry::<String, Field>()? {
                    v.push((k, f));
                }
                Ok(FieldMap(v))
            }
        }
        d.deserialize_map(V)
    }
}

const PLACEHOLDERS: [&str; 2] = ["account", "user"];

/// Replace `{account}` and `{user}` (and `{{`/`}}` by literal braces) in `s`.
pub fn fill(s: &str, account: &str, user: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{{") {
            out.push('{');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("}}") {
            out.push('}');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{account}") {
            out.push_str(account);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{user}") {
            out.push_str(user);
            rest = t;
        } else {
            let end = tail.find('}').map(|e| e + 1).unwrap_or(tail.len());
            return Err(format!(
                "unknown placeholder {:?} in {s:?} (known: {{account}}, {{user}}; write {{{{ for a literal brace)",
                &tail[..end]
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn map_strings(
    v: &mut serde_json::Value,
    f: &dyn Fn(&str) -> std::result::Result<String, String>,
    top: bool,
) -> std::result::Result<(), String> {
    match v {
        serde_json::Value::String(s) => *s = f(s)?,
        serde_json::Value::Array(a) => {
            for x in a {
                map_strings(x, f, false)?;
            }
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                // The sink's type tag, its name and the field mapping's values are not
                // templates.
                if top && (k == "type" || k == "name" || k == "fields") {
                    continue;
                }
                map_strings(x, f, false)?;
            }
        }
        _ => {}
    }
    Ok(())
}

pub(crate) fn check_placeholders(spec: &super::SinkSpec) -> std::result::Result<(), String> {
    let mut v = serde_json::to_value(spec).map_err(|e| e.to_string())?;
    map_strings(&mut v, &|s| fill(s, "0", "u"), true)
}

pub(crate) fn render_placeholders(
    spec: &super::SinkSpec,
    account: &str,
    user: &str,
) -> Result<super::SinkSpec> {
    let _ = PLACEHOLDERS;
    let mut v = serde_json::to_value(spec).map_err(|e| Error::Runtime(e.to_string()))?;
    map_strings(&mut v, &|s| fill(s, account, user), true)
        .map_err(|m| Error::InvalidInput(format!("sink '{}': {m}", spec.name())))?;
    serde_json::from_value(v).map_err(|e| Error::Runtime(format!("sink '{}': {e}", spec.name())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_and_refuse_unknown_ones() {
        assert_eq!(fill("/ci/{user}", "1", "bob").unwrap(), "/ci/bob");
        assert_eq!(
            fill("{account}:{user}:{{x}}", "111", "b").unwrap(),
            "111:b:{x}"
        );
        let e = fill("/ci/{usr}", "1", "b").unwrap_err();
        assert!(e.contains("{usr}"), "{e}");
        assert!(fill("/ci/{user", "1", "b").is_err());
    }

    #[test]
    fn field_maps_keep_their_order() {
        #[derive(Deserialize)]
        struct T {
            fields: FieldMap,
        }
        let t: T = toml::from_str(
            "fields = { Z_SECRET = \"secret_access_key\", A_ID = \"access_key_id\", WHO = \"user_name\" }",
        )
        .unwrap();
        let names: Vec<&str> = t.fields.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Z_SECRET", "A_ID", "WHO"]);
        assert_eq!(t.fields.key_id_field(), Some("A_ID"));
        let bad: std::result::Result<T, _> = toml::from_str("fields = { A = \"password\" }");
        assert!(bad.is_err());
    }

    #[test]
    fn field_maps_must_carry_the_secret() {
        let m = FieldMap(vec![("A".into(), Field::AccessKeyId)]);
        assert!(m.validate("sink x", |_| true).is_err());
        assert!(FieldMap::env_default().validate("sink x", |_| true).is_ok());
        let dup = FieldMap(vec![
            ("A".into(), Field::SecretAccessKey),
            ("A".into(), Field::AccessKeyId),
        ]);
        assert!(dup.validate("sink x", |_| true).is_err());
    }
}
