//! The `gitlab` sink: GitLab CI/CD variables of a project or a group (`project` /
//! `group`: the numeric id or the full path, sent URL-encoded as GitLab wants), one
//! variable per mapped field (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` by default),
//! with `masked`, `protected` and `environment_scope` as configured.
//!
//! Every request names the environment scope (`filter[environment_scope]`), so a key
//! defined for several scopes is never ambiguous and only this scope's variable
//! changes. `deliver` leaves a variable that already holds the value (and the flags)
//! alone, updates one that exists (`PUT`) and creates one that does not (`POST`);
//! values that GitLab could not mask are refused before anything is written. `verify`
//! reads each variable back and compares the value and the flags (a variable created
//! "masked and hidden" in the UI never shows its value; then only the flags are
//! checked, and the message says so).

use super::fields::{FieldMap, Value};
use super::http::{self, Http, HttpError, Request, SecretJson};
use super::{secrets, sink_error, Delivered, Handover, Holding, Sink, SinkStage, Written};
use crate::error::{Error, Result};
use crate::secret::SecretKey;
use async_trait::async_trait;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;

fn default_url() -> String {
    "https://gitlab.com".into()
}

fn default_true() -> bool {
    true
}

fn default_scope() -> String {
    "*".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitLabSpec {
    pub name: String,
    #[serde(default = "default_url")]
    pub url: String,
    /// Project id (`42`) or path (`group/app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Group id (`7`) or path (`group`, `group/subgroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Mask the variables in job logs (default true).
    #[serde(default = "default_true")]
    pub masked: bool,
    /// Only protected branches and tags get the variables (default false).
    #[serde(default)]
    pub protected: bool,
    /// Environments the variables apply to (default `*`, all).
    #[serde(default = "default_scope")]
    pub environment_scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldMap>,
}

/// GitLab's rule for masked values (`Ci::Maskable`, not raw): 8 or more characters of
/// the Base64 alphabet plus `@ : . ~ - _`.
pub fn maskable(v: &str) -> bool {
    v.len() >= 8
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=@:.~-_".contains(c))
}

impl GitLabSpec {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("sink '{}': {m}", self.name)));
        if let Err(m) = http::base_url("url", &self.url) {
            return bad(m);
        }
        match (&self.project, &self.group) {
            (Some(_), Some(_)) | (None, None) => {
                return bad("set exactly one of project (id or path) or group (id or path)".into())
            }
            (Some(x), None) | (None, Some(x)) => {
                if x.trim().is_empty() || x.starts_with('/') || x.ends_with('/') {
                    return bad(format!("{x:?} is not a GitLab id or path"));
                }
            }
        }
        if self.environment_scope.trim().is_empty() {
            return bad("environment_scope must not be empty (\"*\" means all)".into());
        }
        if self.token_env.is_none() && self.token_file.is_none() {
            return bad(
                "set token_env or token_file (a token with the api scope, Maintainer role)".into(),
            );
        }
        if let Some(f) = &self.fields {
            f.validate(&format!("sink '{}'", self.name), |n| {
                !n.is_empty()
                    && n.len() <= 255
                    && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })?;
        }
        Ok(())
    }

    fn owner(&self) -> (&'static str, &str) {
        match (&self.project, &self.group) {
            (Some(p), _) => ("projects", p),
            (None, Some(g)) => ("groups", g),
            _ => ("projects", ""),
        }
    }

    fn owner_label(&self) -> String {
        let (kind, id) = self.owner();
        format!("{} {id}", &kind[..kind.len() - 1])
    }
}

/// GitLab errors: `{"message": "401 Unauthorized"}`, `{"message": {"value": ["is invalid"]}}`,
/// or `{"error": "key is missing"}`.
fn describe(v: &serde_json::Value) -> Option<String> {
    match v.get("message") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(m)) => Some(
            m.iter()
                .map(|(k, v)| {
                    let msgs: Vec<String> = match v {
                        serde_json::Value::Array(a) => a
                            .iter()
                            .map(|x| x.as_str().map(str::to_string).unwrap_or(x.to_string()))
                            .collect(),
                        other => vec![other
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or(other.to_string())],
                    };
                    format!("{k} {}", msgs.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => v.get("error").and_then(|e| e.as_str()).map(str::to_string),
    }
}

/// A variable as read.
struct Var {
    /// None when GitLab hides it (masked and hidden).
    value: Option<SecretKey>,
    masked: bool,
    protected: bool,
}

pub struct GitLabSink {
    spec: GitLabSpec,
    fields: FieldMap,
    http: Http,
    token: SecretKey,
    base: Url,
}

impl GitLabSink {
    pub fn new(spec: &GitLabSpec) -> Result<Self> {
        spec.validate()?;
        let token = secrets::load(
            &format!("sink '{}': GitLab token", spec.name),
            spec.token_env.as_deref(),
            spec.token_file.as_deref(),
        )?;
        let http = Http::new(&spec.name, describe).map_err(Error::Runtime)?;
        http.protect(&token);
        let base = http::base_url("url", &spec.url)
            .map_err(|m| Error::InvalidInput(format!("sink '{}': {m}", spec.name)))?;
        Ok(Self {
            fields: FieldMap::or(&spec.fields, FieldMap::env_default),
            spec: spec.clone(),
            http,
            token,
            base,
        })
    }

    fn fail(&self, stage: SinkStage, written: Written, m: impl Into<String>) -> Error {
        sink_error(self, stage, written, m, None)
    }

    fn vars_url(&self, key: Option<&str>, filter: bool) -> Url {
        let (kind, id) = self.spec.owner();
        let mut segs = vec!["api", "v4", kind, id, "variables"];
        if let Some(k) = key {
            segs.push(k);
        }
        let mut u = http::join(&self.base, &segs);
        if filter {
            u.query_pairs_mut()
                .append_pair("filter[environment_scope]", &self.spec.environment_scope);
        }
        u
    }

    fn req(&self, r: Request) -> Request {
        r.secret_header("private-token", "", &self.token)
    }

    fn explain(&self, e: &HttpError) -> String {
        let token = self
            .spec
            .token_env
            .as_deref()
            .map(|v| format!("token_env {v}"))
            .or(self
                .spec
                .token_file
                .as_ref()
                .map(|p| format!("token_file {}", p.display())))
            .unwrap_or_default();
        if e.is_status(401) {
            format!("{e} (GitLab refused the token from {token}: check that it is valid, not expired, and has the api scope)")
        } else if e.is_status(403) {
            format!(
                "{e} (CI/CD variables need the Maintainer role (Owner for groups) on {})",
                self.spec.owner_label()
            )
        } else if e.is_status(404) {
            format!(
                "{e} ({} does not exist or the token cannot see it)",
                self.spec.owner_label()
            )
        } else {
            e.to_string()
        }
    }

    /// The variable in this environment scope, or None if there is none.
    async fn get(&self, key: &str) -> std::result::Result<Option<Var>, String> {
        let r = self
            .http
            .send(
                self.req(Request::get(
                    self.vars_url(Some(key), true),
                    format!("GET variable {key}"),
                ))
                .allow(404),
            )
            .await
            .map_err(|e| self.explain(&e))?;
        let v = r.secret_json().map_err(|e| e.to_string())?;
        if r.status.as_u16() == 404 {
            // "404 Variable Not Found" is an answer; "404 Project Not Found" is not.
            let msg = describe(&v).unwrap_or_default();
            if msg.contains("Variable") {
                return Ok(None);
            }
            return Err(format!(
                "GET variable {key}: HTTP 404: {msg} ({} does not exist or the token cannot see it)",
                self.spec.owner_label()
            ));
        }
        Ok(Some(Var {
            value: v.get("value").and_then(|x| x.as_str()).map(SecretKey::new),
            masked: v.get("masked").and_then(|x| x.as_bool()).unwrap_or(false),
            protected: v
                .get("protected")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
        }))
    }

    fn matches(&self, var: &Var, value: &Value) -> bool {
        var.value
            .as_ref()
            .is_some_and(|v| v.expose() == value.expose())
            && var.masked == self.spec.masked
            && var.protected == self.spec.protected
    }

    async fn write(
        &self,
        key: &str,
        value: &Value,
        create: bool,
    ) -> std::result::Result<(), HttpError> {
        let mut body = SecretJson(json!({
            "value": value.expose(),
            "masked": self.spec.masked,
            "protected": self.spec.protected,
            "environment_scope": self.spec.environment_scope,
        }));
        let r = if create {
            body["key"] = json!(key);
            Request::post(self.vars_url(None, false), format!("create variable {key}"))
        } else {
            Request::put(
                self.vars_url(Some(key), true),
                format!("update variable {key}"),
            )
        };
        self.http.send(self.req(r.json(&*body))).await.map(|_| ())
    }
}

#[async_trait]
impl Sink for GitLabSink {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &'static str {
        "gitlab"
    }

    async fn prepare(&self) -> Result<Holding> {
        let fail = |m: String| self.fail(SinkStage::Prepare, Written::No, m);
        let mut holding = Holding::Empty;
        for (name, _) in &self.fields.0 {
            let var = self.get(name).await.map_err(fail)?;
            if Some(name.as_str()) == self.fields.key_id_field() {
                if let Some(Var { value: Some(v), .. }) = var {
                    holding = Holding::Key(v.expose().to_string());
                }
            }
        }
        Ok(holding)
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        self.http.protect(&h.key.secret);
        let values = self.fields.values(h.key, h.account);
        if self.spec.masked {
            if let Some((name, v)) = values.iter().find(|(_, v)| !maskable(v.expose())) {
                return Err(self.fail(
                    SinkStage::Deliver,
                    Written::No,
                    format!(
                        "variable {name}: GitLab can mask only values of 8 or more characters from A-Z a-z 0-9 + / = @ : . ~ - _{}; map it to another field or set masked = false",
                        if v.is_secret() { "" } else { " (this one is not)" }
                    ),
                ));
            }
        }
        let mut done: Vec<String> = Vec::new();
        let mut wrote = false;
        for (name, value) in &values {
            let written = |maybe: bool, wrote: bool| {
                if maybe || wrote {
                    Written::Maybe
                } else {
                    Written::No
                }
            };
            let held = |done: &[String]| {
                if done.is_empty() {
                    String::new()
                } else {
                    format!("; {} hold the new value", done.join(", "))
                }
            };
            let var = self.get(name).await.map_err(|m| {
                self.fail(
                    SinkStage::Deliver,
                    written(false, wrote),
                    format!("{m}{}", held(&done)),
                )
            })?;
            let result = match &var {
                Some(v) if self.matches(v, value) => {
                    done.push(format!("{name} (already)"));
                    wrote = true;
                    continue;
                }
                Some(_) => self.write(name, value, false).await.map(|_| "updated"),
                None => match self.write(name, value, true).await {
                    // Created meanwhile, or by an attempt whose answer was lost.
                    Err(e) if e.is_status(400) && e.detail.contains("already been taken") => {
                        self.write(name, value, false).await.map(|_| "updated")
                    }
                    other => other.map(|_| "created"),
                },
            };
            match result {
                Ok(how) => {
                    wrote = true;
                    done.push(format!("{name} ({how})"));
                }
                Err(e) => {
                    return Err(self.fail(
                        SinkStage::Deliver,
                        written(e.maybe_applied, wrote),
                        format!("{}{}", self.explain(&e), held(&done)),
                    ))
                }
            }
        }
        Ok(Delivered::new(format!(
            "{} scope {}: {}",
            self.spec.owner_label(),
            self.spec.environment_scope,
            done.join(", ")
        )))
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        let fail = |m: String| self.fail(SinkStage::Verify, Written::Maybe, m);
        let values = self.fields.values(h.key, h.account);
        let mut hidden = Vec::new();
        for (name, value) in &values {
            let var =
                self.get(name).await.map_err(fail)?.ok_or_else(|| {
                    fail(format!("variable {name} does not exist after the write"))
                })?;
            if var.masked != self.spec.masked || var.protected != self.spec.protected {
                return Err(fail(format!(
                    "variable {name}: masked = {}, protected = {}; the settings want {}, {}",
                    var.masked, var.protected, self.spec.masked, self.spec.protected
                )));
            }
            match &var.value {
                Some(v) if v.expose() == value.expose() => {}
                Some(_) => {
                    return Err(fail(format!("variable {name} does not hold the new value")))
                }
                None => hidden.push(name.as_str()),
            }
        }
        Ok(format!(
            "{} scope {}: read back {}{}",
            self.spec.owner_label(),
            self.spec.environment_scope,
            self.fields
                .0
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if hidden.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} hidden: flags checked, GitLab never shows the value)",
                    hidden.join(", ")
                )
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> GitLabSpec {
        toml::from_str(&format!(
            "name = \"gl\"\ntoken_env = \"GITLAB_TOKEN\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_and_owner() {
        let s = spec("project = \"group/app\"");
        assert!(s.validate().is_ok());
        assert!(s.masked && !s.protected);
        assert_eq!(s.environment_scope, "*");
        assert_eq!(s.url, "https://gitlab.com");
        assert_eq!(s.owner(), ("projects", "group/app"));
        assert!(spec("").validate().is_err());
        assert!(spec("project = \"1\"\ngroup = \"2\"").validate().is_err());
        assert!(
            spec("group = \"g\"\nfields = { \"A-B\" = \"secret_access_key\" }")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn the_masking_rule_is_gitlabs() {
        assert!(maskable("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"));
        assert!(maskable("AKIAIOSFODNN7EXAMPLE"));
        assert!(!maskable("short"));
        assert!(!maskable("has space in it"));
        assert!(!maskable("ümlaut-value"));
    }

    #[test]
    fn gitlab_errors_are_shown() {
        assert_eq!(
            describe(&json!({"message": {"value": ["is invalid"]}})).as_deref(),
            Some("value is invalid")
        );
        assert_eq!(
            describe(&json!({"message": "401 Unauthorized"})).as_deref(),
            Some("401 Unauthorized")
        );
        assert_eq!(
            describe(&json!({"error": "key is missing"})).as_deref(),
            Some("key is missing")
        );
    }

    #[test]
    fn urls_encode_paths_and_name_the_scope() {
        std::env::set_var("KEYTURN_TEST_GITLAB_TOKEN_URLS", "glpat-test-token");
        let mut s =
            spec("project = \"keyturn-group/keyturn-app\"\nenvironment_scope = \"production\"");
        s.token_env = Some("KEYTURN_TEST_GITLAB_TOKEN_URLS".into());
        let sink = GitLabSink::new(&s).unwrap();
        assert_eq!(
            sink.vars_url(Some("AWS_ACCESS_KEY_ID"), true).as_str(),
            "https://gitlab.com/api/v4/projects/keyturn-group%2Fkeyturn-app/variables/AWS_ACCESS_KEY_ID?filter%5Benvironment_scope%5D=production"
        );
    }
}
