//! The `infisical` sink: one Infisical secret per mapped field (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` by default) in a project's environment and folder.
//!
//! A machine identity logs in with universal auth (`client_id` + `client_secret_env` /
//! `client_secret_file` -> a Bearer access token, logged in again once if it expires
//! mid-run). `prepare` lists the folder (names only) to check the project, environment
//! and folder exist and the identity can read them; `deliver` reads each secret with
//! its value and leaves one that already holds it alone, updates one that exists
//! (`PATCH /api/v4/secrets/{name}`) and creates one that does not (`POST`); `verify`
//! reads each back with `viewSecretValue=true` and compares the values.

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
    "https://app.infisical.com".into()
}

fn default_secret_path() -> String {
    "/".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfisicalSpec {
    pub name: String,
    /// `https://app.infisical.com`, `https://eu.infisical.com` or a self-hosted URL.
    #[serde(default = "default_url")]
    pub url: String,
    /// The machine identity's universal-auth client id.
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    pub project_id: String,
    /// Environment slug (`dev`, `staging`, `prod`).
    pub environment: String,
    /// Folder (default `/`).
    #[serde(default = "default_secret_path")]
    pub secret_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldMap>,
}

impl InfisicalSpec {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("sink '{}': {m}", self.name)));
        if let Err(m) = http::base_url("url", &self.url) {
            return bad(m);
        }
        for (what, v) in [
            ("client_id", &self.client_id),
            ("project_id", &self.project_id),
            ("environment", &self.environment),
        ] {
            if v.trim().is_empty() {
                return bad(format!("{what} must not be empty"));
            }
        }
        if !self.secret_path.starts_with('/') {
            return bad(format!(
                "secret_path {:?} must start with / (the folder, e.g. \"/ci\")",
                self.secret_path
            ));
        }
        if self.client_secret_env.is_none() && self.client_secret_file.is_none() {
            return bad(
                "set client_secret_env or client_secret_file (the identity's client secret)".into(),
            );
        }
        if let Some(f) = &self.fields {
            f.validate(&format!("sink '{}'", self.name), |n| {
                !n.is_empty() && !n.chars().any(|c| c.is_whitespace() || c == '/')
            })?;
        }
        Ok(())
    }

    fn folder(&self) -> String {
        let p = self.secret_path.trim_end_matches('/');
        if p.is_empty() {
            "/".into()
        } else {
            p.into()
        }
    }
}

/// Infisical errors: `{"reqId", "statusCode", "message", "error"}`; `message` is a
/// string, or a list of validation issues.
fn describe(v: &serde_json::Value) -> Option<String> {
    let error = v.get("error").and_then(|e| e.as_str());
    let message = match v.get("message") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(a)) => Some(
            a.iter()
                .filter_map(|i| {
                    let m = i.get("message")?.as_str()?;
                    let path: Vec<String> = i
                        .get("path")
                        .and_then(|p| p.as_array())
                        .map(|p| {
                            p.iter()
                                .map(|x| x.as_str().map(str::to_string).unwrap_or(x.to_string()))
                                .collect()
                        })
                        .unwrap_or_default();
                    Some(if path.is_empty() {
                        m.to_string()
                    } else {
                        format!("{}: {m}", path.join("."))
                    })
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => None,
    };
    match (error, message) {
        (Some(e), Some(m)) => Some(format!("{e}: {m}")),
        (None, Some(m)) => Some(m),
        (Some(e), None) => Some(e.to_string()),
        _ => None,
    }
}

pub struct InfisicalSink {
    spec: InfisicalSpec,
    fields: FieldMap,
    http: Http,
    client_secret: SecretKey,
    base: Url,
    token: tokio::sync::Mutex<Option<SecretKey>>,
}

/// A secret as read: version and value.
struct Found {
    version: u64,
    value: SecretKey,
}

impl InfisicalSink {
    pub fn new(spec: &InfisicalSpec) -> Result<Self> {
        spec.validate()?;
        let client_secret = secrets::load(
            &format!("sink '{}': Infisical client secret", spec.name),
            spec.client_secret_env.as_deref(),
            spec.client_secret_file.as_deref(),
        )?;
        let http = Http::new(&spec.name, describe).map_err(Error::Runtime)?;
        http.protect(&client_secret);
        let base = http::base_url("url", &spec.url)
            .map_err(|m| Error::InvalidInput(format!("sink '{}': {m}", spec.name)))?;
        Ok(Self {
            fields: FieldMap::or(&spec.fields, FieldMap::env_default),
            spec: spec.clone(),
            http,
            client_secret,
            base,
            token: tokio::sync::Mutex::new(None),
        })
    }

    fn fail(&self, stage: SinkStage, written: Written, m: impl Into<String>) -> Error {
        sink_error(self, stage, written, m, None)
    }

    fn place(&self) -> String {
        format!(
            "project {} environment {} folder {}",
            self.spec.project_id,
            self.spec.environment,
            self.spec.folder()
        )
    }

    async fn login(&self) -> std::result::Result<SecretKey, String> {
        let url = http::join(
            &self.base,
            &["api", "v1", "auth", "universal-auth", "login"],
        );
        let body = SecretJson(json!({
            "clientId": self.spec.client_id,
            "clientSecret": self.client_secret.expose(),
        }));
        let r = self
            .http
            .send(
                Request::post(url, "universal-auth login")
                    .json(&*body)
                    .idempotent(true),
            )
            .await
            .map_err(|e| {
                if e.is_client_error() {
                    format!(
                        "{e} (check client_id and the client secret from {})",
                        self.spec
                            .client_secret_env
                            .as_deref()
                            .map(|v| format!("client_secret_env {v}"))
                            .or(self
                                .spec
                                .client_secret_file
                                .as_ref()
                                .map(|p| format!("client_secret_file {}", p.display())))
                            .unwrap_or_default()
                    )
                } else {
                    e.to_string()
                }
            })?;
        let v = r.secret_json().map_err(|e| e.to_string())?;
        let t = v
            .get("accessToken")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(SecretKey::new)
            .ok_or("the login answer has no accessToken")?;
        self.http.protect(&t);
        Ok(t)
    }

    async fn token(&self, renew: bool) -> std::result::Result<SecretKey, String> {
        let mut cached = self.token.lock().await;
        if !renew {
            if let Some(t) = cached.as_ref() {
                return Ok(t.clone());
            }
        }
        let t = self.login().await?;
        *cached = Some(t.clone());
        Ok(t)
    }

    /// Send with the access token; log in again once when Infisical says it expired.
    async fn send(
        &self,
        make: &(dyn Fn(&SecretKey) -> Request + Sync),
    ) -> std::result::Result<http::Response, String> {
        let t = self.token(false).await?;
        match self.http.send(make(&t)).await {
            Err(e) if e.is_status(403) && e.detail.contains("expired") => {
                tracing::info!(sink = %self.spec.name, "the Infisical access token expired; logging in again");
                let t = self.token(true).await?;
                self.http.send(make(&t)).await.map_err(|e| self.explain(&e))
            }
            other => other.map_err(|e| self.explain(&e)),
        }
    }

    /// Like `send`, but keeps the HTTP error (for write classification).
    async fn send_raw(
        &self,
        make: &(dyn Fn(&SecretKey) -> Request + Sync),
    ) -> std::result::Result<http::Response, (HttpError, String)> {
        let t = self
            .token(false)
            .await
            .map_err(|m| (login_failure(&m), m))?;
        let first = self.http.send(make(&t)).await;
        let r = match first {
            Err(e) if e.is_status(403) && e.detail.contains("expired") => {
                let t = self.token(true).await.map_err(|m| (login_failure(&m), m))?;
                self.http.send(make(&t)).await
            }
            other => other,
        };
        r.map_err(|e| {
            let m = self.explain(&e);
            (e, m)
        })
    }

    fn explain(&self, e: &HttpError) -> String {
        if e.is_status(404) {
            format!(
                "{e} (check project_id, environment and secret_path: {})",
                self.place()
            )
        } else if e.is_status(403) {
            format!(
                "{e} (the identity needs read and edit permission on secrets in {})",
                self.place()
            )
        } else {
            e.to_string()
        }
    }

    fn secret_url(&self, name: &str, with_query: bool) -> Url {
        let mut u = http::join(&self.base, &["api", "v4", "secrets", name]);
        if with_query {
            u.query_pairs_mut()
                .append_pair("projectId", &self.spec.project_id)
                .append_pair("environment", &self.spec.environment)
                .append_pair("secretPath", &self.spec.folder())
                .append_pair("viewSecretValue", "true");
        }
        u
    }

    /// The names in the folder (no values are asked for).
    async fn list(&self) -> std::result::Result<Vec<String>, String> {
        let mut u = http::join(&self.base, &["api", "v4", "secrets"]);
        u.query_pairs_mut()
            .append_pair("projectId", &self.spec.project_id)
            .append_pair("environment", &self.spec.environment)
            .append_pair("secretPath", &self.spec.folder())
            .append_pair("viewSecretValue", "false");
        let r = self
            .send(&|t| {
                Request::get(u.clone(), format!("list secrets of {}", self.place())).secret_header(
                    "authorization",
                    "Bearer ",
                    t,
                )
            })
            .await?;
        let v = r.secret_json().map_err(|e| e.to_string())?;
        Ok(v.get("secrets")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.get("secretKey")?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A secret with its value, or None if it does not exist.
    async fn get(&self, name: &str) -> std::result::Result<Option<Found>, String> {
        let u = self.secret_url(name, true);
        let r = self
            .send(&|t| {
                Request::get(u.clone(), format!("GET secret {name}"))
                    .secret_header("authorization", "Bearer ", t)
                    .allow(404)
            })
            .await?;
        if r.status.as_u16() == 404 {
            return Ok(None);
        }
        let v = r.secret_json().map_err(|e| e.to_string())?;
        let s = v.get("secret").ok_or("the answer has no secret")?;
        if s.get("secretValueHidden").and_then(|h| h.as_bool()) == Some(true) {
            return Err(format!(
                "Infisical hides the value of {name} from this identity; it needs permission to read secret values"
            ));
        }
        Ok(Some(Found {
            version: s.get("version").and_then(|x| x.as_u64()).unwrap_or(0),
            value: SecretKey::new(
                s.get("secretValue")
                    .and_then(|x| x.as_str())
                    .unwrap_or_default(),
            ),
        }))
    }

    async fn write(
        &self,
        name: &str,
        value: &Value,
        create: bool,
    ) -> std::result::Result<u64, (HttpError, String)> {
        let body = SecretJson(json!({
            "projectId": self.spec.project_id,
            "environment": self.spec.environment,
            "secretPath": self.spec.folder(),
            "secretValue": value.expose(),
            "type": "shared",
        }));
        let u = self.secret_url(name, false);
        let r = self
            .send_raw(&|t| {
                let r = if create {
                    Request::post(u.clone(), format!("create secret {name}"))
                } else {
                    Request::patch(u.clone(), format!("update secret {name}"))
                        // Setting a value is safe to repeat.
                        .idempotent(true)
                };
                r.secret_header("authorization", "Bearer ", t).json(&*body)
            })
            .await?;
        let v = r.secret_json().map_err(|e| (e.clone(), e.to_string()))?;
        Ok(v.pointer("/secret/version")
            .and_then(|x| x.as_u64())
            .unwrap_or(0))
    }
}

fn login_failure(m: &str) -> HttpError {
    HttpError {
        what: "universal-auth login".into(),
        failure: http::Failure::Refused,
        status: None,
        detail: m.to_string(),
        maybe_applied: false,
    }
}

#[async_trait]
impl Sink for InfisicalSink {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &'static str {
        "infisical"
    }

    async fn prepare(&self) -> Result<Holding> {
        let fail = |m: String| self.fail(SinkStage::Prepare, Written::No, m);
        let names = self.list().await.map_err(fail)?;
        match self.fields.key_id_field() {
            Some(f) if names.iter().any(|n| n == f) => {
                let found = self.get(f).await.map_err(fail)?;
                Ok(found
                    .map(|x| Holding::Key(x.value.expose().to_string()))
                    .unwrap_or(Holding::Empty))
            }
            Some(_) => Ok(Holding::Empty),
            None => Ok(Holding::Unknown),
        }
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        self.http.protect(&h.key.secret);
        let values = self.fields.values(h.key, h.account);
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
            let found = self
                .get(name)
                .await
                .map_err(|m| self.fail(SinkStage::Deliver, written(false, wrote), m))?;
            let result = match &found {
                Some(f) if f.value.expose() == value.expose() => {
                    done.push(format!("{name} (version {}, already)", f.version));
                    // It holds (part of) the new key: a later failure must keep it.
                    wrote = true;
                    continue;
                }
                Some(_) => self.write(name, value, false).await.map(|v| (v, "updated")),
                None => match self.write(name, value, true).await {
                    // Created meanwhile (or by an attempt whose answer was lost).
                    Err((e, _)) if e.is_status(400) && e.detail.contains("already exist") => {
                        self.write(name, value, false).await.map(|v| (v, "updated"))
                    }
                    other => other.map(|v| (v, "created")),
                },
            };
            match result {
                Ok((v, how)) => {
                    wrote = true;
                    done.push(format!("{name} ({how}, version {v})"));
                }
                Err((e, m)) => {
                    let held = if done.is_empty() {
                        String::new()
                    } else {
                        format!("; {} hold the new value", done.join(", "))
                    };
                    return Err(self.fail(
                        SinkStage::Deliver,
                        written(e.maybe_applied, wrote),
                        format!("{m}{held}"),
                    ));
                }
            }
        }
        Ok(Delivered::new(format!(
            "{}: {}",
            self.place(),
            done.join(", ")
        )))
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        let fail = |m: String| self.fail(SinkStage::Verify, Written::Maybe, m);
        let values = self.fields.values(h.key, h.account);
        let mut shown = Vec::new();
        for (name, value) in &values {
            match self.get(name).await.map_err(fail)? {
                Some(f) if f.value.expose() == value.expose() => {
                    shown.push(format!("{name} (version {})", f.version))
                }
                Some(_) => {
                    return Err(fail(format!(
                        "secret {name} in {} does not hold the new value",
                        self.place()
                    )))
                }
                None => {
                    return Err(fail(format!(
                        "secret {name} does not exist in {}",
                        self.place()
                    )))
                }
            }
        }
        Ok(format!("{}: read back {}", self.place(), shown.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> InfisicalSpec {
        toml::from_str(&format!(
            "name = \"inf\"\nclient_id = \"id\"\nclient_secret_env = \"S\"\nproject_id = \"p\"\nenvironment = \"prod\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_and_checks() {
        let s = spec("");
        assert_eq!(s.url, "https://app.infisical.com");
        assert_eq!(s.folder(), "/");
        assert!(s.validate().is_ok());
        assert_eq!(spec("secret_path = \"/ci/\"").folder(), "/ci");
        assert!(spec("secret_path = \"ci\"").validate().is_err());
        assert!(spec("fields = { \"A B\" = \"secret_access_key\" }")
            .validate()
            .is_err());
        let mut s = spec("");
        s.client_secret_env = None;
        assert!(s.validate().is_err());
    }

    #[test]
    fn infisical_errors_are_shown() {
        assert_eq!(
            describe(&json!({"statusCode": 401, "message": "Invalid credentials", "error": "UnauthorizedError"})).as_deref(),
            Some("UnauthorizedError: Invalid credentials")
        );
        assert_eq!(
            describe(&json!({"message": [{"path": ["clientSecret"], "message": "Required"}], "error": "ValidationFailure"})).as_deref(),
            Some("ValidationFailure: clientSecret: Required")
        );
    }
}
