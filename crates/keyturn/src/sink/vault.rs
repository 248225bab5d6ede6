//! The `vault` sink: one KV version 2 secret in HashiCorp Vault or OpenBao
//! (`address`, `mount`, `path = "ci/{user}"`), holding the key as JSON fields
//! (`AccessKeyId`/`SecretAccessKey` by default) next to whatever else the secret holds.
//!
//! - Auth: a token (`token_env`/`token_file`) or AppRole (`role_id` + `secret_id_env` /
//!   `secret_id_file`, logged in at `auth/<approle_mount>/login`); `namespace` sends
//!   `X-Vault-Namespace` on every request, the login included.
//! - `prepare` reads the current version; `deliver` writes the secret's other keys plus
//!   the mapped fields with check-and-set on that version, so a write by someone else
//!   in between is never overwritten: it fails clearly (nothing written, the new key is
//!   deleted again when no other sink has it, the old key stays Active). A version that
//!   already holds the new key counts as delivered (a step repeated after a crash).
//! - `verify` reads the current version back and compares every mapped field.
//! - `rollback` writes the key fields of the newest earlier version that does not hold
//!   the rotated key back as a new version (check-and-set again), keeping other keys.

use super::fields::{FieldMap, Value};
use super::http::{self, Http, HttpError, Request, SecretJson};
use super::{
    secrets, sink_error, Delivered, Handover, Holding, RollbackOutcome, RollbackRequest, Sink,
    SinkStage, Written,
};
use crate::error::{Error, Result};
use crate::secret::{mask_key_id, SecretKey};
use async_trait::async_trait;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Mutex;

fn default_mount() -> String {
    "secret".into()
}

fn default_approle_mount() -> String {
    "approle".into()
}

/// How far back `rollback` looks for the version before the rotation.
const MAX_VERSIONS_BACK: u64 = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSpec {
    pub name: String,
    /// `https://vault.example.com:8200`.
    pub address: String,
    /// The KV v2 mount (default `secret`).
    #[serde(default = "default_mount")]
    pub mount: String,
    /// The secret's path inside the mount, e.g. `ci/{user}`.
    pub path: String,
    /// Vault Enterprise / OpenBao namespace (`X-Vault-Namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// AppRole role id (not a secret on its own; the secret id is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id_file: Option<PathBuf>,
    /// Where the AppRole auth method is mounted (default `approle`).
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldMap>,
}

fn valid_path(p: &str) -> bool {
    let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    !segs.is_empty()
        && segs
            .iter()
            .all(|s| *s != "." && *s != ".." && !s.chars().any(char::is_control))
}

impl VaultSpec {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("sink '{}': {m}", self.name)));
        if let Err(m) = http::base_url("address", &self.address) {
            return bad(m);
        }
        for (what, v) in [
            ("mount", &self.mount),
            ("path", &self.path),
            ("approle_mount", &self.approle_mount),
        ] {
            if !valid_path(v) {
                return bad(format!(
                    "{what} {v:?} is not a usable Vault path (no empty, '.' or '..' parts)"
                ));
            }
        }
        if let Some(ns) = &self.namespace {
            if !valid_path(ns) {
                return bad(format!("namespace {ns:?} is not a usable namespace path"));
            }
        }
        let token = self.token_env.is_some() || self.token_file.is_some();
        let approle =
            self.role_id.is_some() || self.secret_id_env.is_some() || self.secret_id_file.is_some();
        match (token, approle) {
            (true, true) => return bad("give either a token (token_env/token_file) or AppRole (role_id + secret_id_env/secret_id_file), not both".into()),
            (false, false) => return bad("no credentials: set token_env or token_file, or AppRole role_id with secret_id_env or secret_id_file".into()),
            (false, true) if self.role_id.as_deref().is_none_or(|r| r.trim().is_empty()) => {
                return bad("AppRole needs role_id (and secret_id_env or secret_id_file)".into())
            }
            (false, true) if self.secret_id_env.is_none() && self.secret_id_file.is_none() => {
                return bad("AppRole needs secret_id_env or secret_id_file next to role_id".into())
            }
            _ => {}
        }
        if let Some(f) = &self.fields {
            f.validate(&format!("sink '{}'", self.name), |n| !n.is_empty())?;
        }
        Ok(())
    }
}

enum Auth {
    Token(SecretKey),
    AppRole {
        role_id: String,
        secret_id: SecretKey,
    },
}

/// What `prepare` read: the version (0 = the secret does not exist) and its data.
struct Seen {
    version: u64,
    data: SecretJson,
}

pub struct VaultSink {
    spec: VaultSpec,
    fields: FieldMap,
    http: Http,
    addr: Url,
    auth: Auth,
    /// The client token (AppRole: after login).
    token: tokio::sync::Mutex<Option<SecretKey>>,
    seen: Mutex<Option<Seen>>,
    /// The version this process wrote.
    wrote: Mutex<Option<u64>>,
}

/// Vault's errors: `{"errors": ["permission denied"]}`.
fn describe(v: &serde_json::Value) -> Option<String> {
    let errs: Vec<&str> = v
        .get("errors")?
        .as_array()?
        .iter()
        .filter_map(|e| e.as_str())
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    (!errs.is_empty()).then(|| errs.join("; "))
}

impl VaultSink {
    pub fn new(spec: &VaultSpec) -> Result<Self> {
        spec.validate()?;
        let what = |k: &str| format!("sink '{}': {k}", spec.name);
        let auth = if spec.role_id.is_some() {
            Auth::AppRole {
                role_id: spec.role_id.clone().unwrap_or_default(),
                secret_id: secrets::load(
                    &what("AppRole secret id"),
                    spec.secret_id_env.as_deref(),
                    spec.secret_id_file.as_deref(),
                )?,
            }
        } else {
            Auth::Token(secrets::load(
                &what("Vault token"),
                spec.token_env.as_deref(),
                spec.token_file.as_deref(),
            )?)
        };
        let http = Http::new(&spec.name, describe).map_err(Error::Runtime)?;
        match &auth {
            Auth::Token(t) => http.protect(t),
            Auth::AppRole { secret_id, .. } => http.protect(secret_id),
        }
        let addr = http::base_url("address", &spec.address)
            .map_err(|m| Error::InvalidInput(format!("sink '{}': {m}", spec.name)))?;
        Ok(Self {
            fields: FieldMap::or(&spec.fields, FieldMap::json_default),
            spec: spec.clone(),
            http,
            addr,
            auth,
            token: tokio::sync::Mutex::new(None),
            seen: Mutex::new(None),
            wrote: Mutex::new(None),
        })
    }

    /// `mount/path`, as people write it (`secret/ci/bob`).
    fn where_(&self) -> String {
        format!(
            "{}/{}",
            self.spec.mount.trim_matches('/'),
            self.spec.path.trim_matches('/')
        )
    }

    fn data_url(&self, version: Option<u64>) -> Url {
        let base = http::join(&self.addr, &["v1"]);
        let mount = http::join_path(&base, &self.spec.mount);
        let mut u = http::join_path(&http::join(&mount, &["data"]), &self.spec.path);
        if let Some(v) = version {
            u.query_pairs_mut().append_pair("version", &v.to_string());
        }
        u
    }

    fn with_ns(&self, r: Request) -> Request {
        match &self.spec.namespace {
            Some(ns) => r.header("x-vault-namespace", ns),
            None => r,
        }
    }

    /// The client token: the configured one, or an AppRole login's (once per process).
    async fn token(&self) -> std::result::Result<SecretKey, String> {
        match &self.auth {
            Auth::Token(t) => Ok(t.clone()),
            Auth::AppRole { role_id, secret_id } => {
                let mut cached = self.token.lock().await;
                if let Some(t) = cached.as_ref() {
                    return Ok(t.clone());
                }
                let url = http::join_path(
                    &http::join(&self.addr, &["v1", "auth"]),
                    &format!("{}/login", self.spec.approle_mount),
                );
                let body = SecretJson(json!({"role_id": role_id, "secret_id": secret_id.expose()}));
                let r = self
                    .http
                    .send(
                        self.with_ns(Request::post(url, "AppRole login").json(&*body))
                            .idempotent(true),
                    )
                    .await
                    .map_err(|e| {
                        format!(
                            "{e}{}",
                            if e.is_client_error() {
                                " (check role_id and the secret id; a secret id can expire or run out of uses)"
                            } else {
                                ""
                            }
                        )
                    })?;
                let v = r.secret_json().map_err(|e| e.to_string())?;
                let t = v
                    .pointer("/auth/client_token")
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
                    .map(SecretKey::new)
                    .ok_or("AppRole login answered without auth.client_token")?;
                self.http.protect(&t);
                *cached = Some(t.clone());
                Ok(t)
            }
        }
    }

    fn authed(&self, r: Request, token: &SecretKey) -> Request {
        self.with_ns(r.secret_header("x-vault-token", "", token))
    }

    /// (version, data) of the current version or of `version`; version 0 when the
    /// secret does not exist. A deleted or destroyed version has null data.
    async fn read(
        &self,
        token: &SecretKey,
        version: Option<u64>,
    ) -> std::result::Result<(u64, SecretJson), HttpError> {
        let what = match version {
            Some(v) => format!("GET {} version {v}", self.where_()),
            None => format!("GET {}", self.where_()),
        };
        let r = self
            .http
            .send(
                self.authed(Request::get(self.data_url(version), what), token)
                    .allow(404),
            )
            .await?;
        let mut v = r.secret_json()?;
        if r.status.as_u16() == 404 {
            // An absent secret answers `{"errors": []}`; anything said is a real error
            // (no KV v2 engine at that mount: "no handler for route ...").
            if let Some(msg) = describe(&v) {
                return Err(HttpError {
                    what: format!("GET {}", self.where_()),
                    failure: http::Failure::Status,
                    status: Some(404),
                    detail: format!(
                        "{msg} (is there a KV version 2 engine mounted at {}?)",
                        self.spec.mount.trim_matches('/')
                    ),
                    maybe_applied: false,
                });
            }
        }
        let ver = v
            .pointer("/data/metadata/version")
            .and_then(|x| x.as_u64())
            .unwrap_or(0);
        let data = match v.pointer_mut("/data/data") {
            Some(d) if d.is_object() => d.take(),
            _ => serde_json::Value::Null,
        };
        Ok((ver, SecretJson(data)))
    }

    fn holds(&self, data: &serde_json::Value, values: &[(String, Value)]) -> bool {
        values
            .iter()
            .all(|(k, v)| http::str_is(data.get(k), v.expose()))
    }

    /// Write `data` as a new version with check-and-set on `cas`; the new version.
    async fn write(
        &self,
        token: &SecretKey,
        data: &serde_json::Value,
        cas: u64,
    ) -> std::result::Result<u64, HttpError> {
        let body = SecretJson(json!({"options": {"cas": cas}, "data": data}));
        let r = self
            .http
            .send(
                // Repeating it is safe: a second attempt after a lost answer fails the
                // check-and-set instead of writing twice.
                self.authed(
                    Request::post(self.data_url(None), format!("POST {}", self.where_()))
                        .json(&*body),
                    token,
                )
                .idempotent(true),
            )
            .await?;
        let v: serde_json::Value = r.json()?;
        Ok(v.pointer("/data/version")
            .and_then(|x| x.as_u64())
            .unwrap_or(cas + 1))
    }

    fn fail(&self, stage: SinkStage, written: Written, m: impl Into<String>) -> Error {
        sink_error(self, stage, written, m, None)
    }

    fn advice(&self, e: &HttpError) -> String {
        if e.is_status(403) {
            format!(
                "{e} (the token is invalid or expired, or its policy lacks read/create/update on {}/data/{})",
                self.spec.mount.trim_matches('/'),
                self.spec.path.trim_matches('/')
            )
        } else {
            e.to_string()
        }
    }
}

fn is_cas_conflict(e: &HttpError) -> bool {
    e.is_status(400) && e.detail.contains("check-and-set")
}

/// A copy of the object `v` (the caller wraps it in [`SecretJson`] at once).
fn object(v: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[async_trait]
impl Sink for VaultSink {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &'static str {
        "vault"
    }

    async fn prepare(&self) -> Result<Holding> {
        let fail = |m: String| self.fail(SinkStage::Prepare, Written::No, m);
        let token = self.token().await.map_err(fail)?;
        let (version, data) = self
            .read(&token, None)
            .await
            .map_err(|e| fail(self.advice(&e)))?;
        let holding = match self.fields.key_id_field() {
            _ if version == 0 || data.is_null() => Holding::Empty,
            Some(f) => data
                .get(f)
                .and_then(|v| v.as_str())
                .map(|s| Holding::Key(s.to_string()))
                .unwrap_or(Holding::Empty),
            None => Holding::Unknown,
        };
        *self.seen.lock().expect("lock") = Some(Seen { version, data });
        Ok(holding)
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        let no = |m: String| self.fail(SinkStage::Deliver, Written::No, m);
        let token = self.token().await.map_err(no)?;
        let values = self.fields.values(h.key, h.account);
        for (_, v) in &values {
            if let Value::Secret(s) = v {
                self.http.protect(s);
            }
        }
        let seen = self.seen.lock().expect("lock").take();
        let seen = match seen {
            Some(s) => s,
            None => {
                let (version, data) = self
                    .read(&token, None)
                    .await
                    .map_err(|e| no(self.advice(&e)))?;
                Seen { version, data }
            }
        };
        if self.holds(&seen.data, &values) {
            let v = seen.version;
            *self.seen.lock().expect("lock") = Some(seen);
            return Ok(Delivered::new(format!(
                "{}: version {v} already holds the new key",
                self.where_()
            )));
        }
        let mut data = SecretJson(serde_json::Value::Object(object(&seen.data)));
        let kept: Vec<String> = seen
            .data
            .as_object()
            .map(|m| {
                m.keys()
                    .filter(|k| !values.iter().any(|(n, _)| n == *k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut data.0 {
            super::files::set_json_fields(m, &values);
        }
        match self.write(&token, &data, seen.version).await {
            Ok(version) => {
                *self.wrote.lock().expect("lock") = Some(version);
                Ok(Delivered::new(format!(
                    "{}: wrote version {version} (check-and-set on version {}){}",
                    self.where_(),
                    seen.version,
                    if kept.is_empty() {
                        String::new()
                    } else {
                        format!("; kept {}", kept.join(", "))
                    }
                )))
            }
            Err(e) if is_cas_conflict(&e) => {
                // Our own earlier attempt (a lost answer), or someone else's write?
                let (now, cur) = self.read(&token, None).await.map_err(|re| {
                    self.fail(
                        SinkStage::Deliver,
                        if e.maybe_applied {
                            Written::Maybe
                        } else {
                            Written::No
                        },
                        format!("{e}; reading it again: {re}"),
                    )
                })?;
                if self.holds(&cur, &values) {
                    *self.wrote.lock().expect("lock") = Some(now);
                    return Ok(Delivered::new(format!(
                        "{}: version {now} already holds the new key (written by an earlier attempt)",
                        self.where_()
                    )));
                }
                Err(no(format!(
                    "{} changed after keyturn read it: keyturn read version {} and wrote with check-and-set on it, but it is now version {now}; someone else wrote it in between. keyturn did not overwrite their change (Vault: {}); look at version {now}, then rotate again",
                    self.where_(),
                    seen.version,
                    e.detail
                )))
            }
            Err(e) => Err(self.fail(
                SinkStage::Deliver,
                if e.maybe_applied {
                    Written::Maybe
                } else {
                    Written::No
                },
                self.advice(&e),
            )),
        }
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        let fail = |m: String| self.fail(SinkStage::Verify, Written::Maybe, m);
        let token = self.token().await.map_err(fail)?;
        let values = self.fields.values(h.key, h.account);
        let (now, cur) = self
            .read(&token, None)
            .await
            .map_err(|e| fail(self.advice(&e)))?;
        if !self.holds(&cur, &values) {
            return Err(fail(format!(
                "{}: the current version {now} does not hold the new key",
                self.where_()
            )));
        }
        let wrote = *self.wrote.lock().expect("lock");
        Ok(match wrote {
            Some(w) if w != now => format!(
                "{}: version {now} holds the new key (read back; keyturn wrote version {w}, a later write kept it)",
                self.where_()
            ),
            _ => format!(
                "{}: version {now} holds the new key (read back)",
                self.where_()
            ),
        })
    }

    async fn rollback(&self, r: &RollbackRequest<'_>) -> Result<RollbackOutcome> {
        let fail = |m: String| self.fail(SinkStage::Rollback, Written::Maybe, m);
        let Some(key_field) = self.fields.key_id_field() else {
            return Ok(RollbackOutcome::NotSupported(format!(
                "{}: fields maps no access_key_id, so keyturn cannot tell which version held the old key",
                self.where_()
            )));
        };
        let token = self.token().await.map_err(fail)?;
        let (now, cur) = self
            .read(&token, None)
            .await
            .map_err(|e| fail(self.advice(&e)))?;
        if !http::str_is(cur.get(key_field), r.new_key_id) {
            return Ok(RollbackOutcome::NotSupported(format!(
                "{}: the current version {now} does not hold the rotated key {}; left as it is",
                self.where_(),
                mask_key_id(r.new_key_id)
            )));
        }
        let mut prev = None;
        let oldest = now.saturating_sub(MAX_VERSIONS_BACK).max(1);
        for v in (oldest..now).rev() {
            let (_, data) = self
                .read(&token, Some(v))
                .await
                .map_err(|e| fail(self.advice(&e)))?;
            if data.is_null() || http::str_is(data.get(key_field), r.new_key_id) {
                continue;
            }
            prev = Some((v, data));
            break;
        }
        let Some((pv, pdata)) = prev else {
            return Ok(RollbackOutcome::NotSupported(format!(
                "{}: no earlier version without the rotated key (keyturn created the secret); delete it yourself once no consumer needs it",
                self.where_()
            )));
        };
        let prev_key = pdata.get(key_field).and_then(|v| v.as_str());
        if let (Some(old), Some(pk)) = (r.old_key_id, prev_key) {
            if old != pk {
                return Ok(RollbackOutcome::NotSupported(format!(
                    "{}: the version before the rotation ({pv}) holds {}, not the re-activated key {}; left as it is",
                    self.where_(),
                    mask_key_id(pk),
                    mask_key_id(old)
                )));
            }
        }
        let mut data = SecretJson(serde_json::Value::Object(object(&cur)));
        if let serde_json::Value::Object(m) = &mut data.0 {
            for (name, _) in &self.fields.0 {
                match pdata.get(name) {
                    Some(v) => {
                        m.insert(name.clone(), v.clone());
                    }
                    None => {
                        m.remove(name);
                    }
                }
            }
        }
        let written = self
            .write(&token, &data, now)
            .await
            .map_err(|e| fail(self.advice(&e)))?;
        Ok(RollbackOutcome::Restored(format!(
            "{}: wrote the key fields of version {pv} back as version {written}",
            self.where_()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> VaultSpec {
        toml::from_str(&format!(
            "name = \"v\"\naddress = \"https://vault.example.com:8200\"\npath = \"ci/{{user}}\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn auth_is_a_token_or_approle_never_both() {
        assert!(spec("token_env = \"VAULT_TOKEN\"").validate().is_ok());
        assert!(spec("role_id = \"r\"\nsecret_id_file = \"/run/sid\"")
            .validate()
            .is_ok());
        let e = spec("").validate().unwrap_err().to_string();
        assert!(e.contains("no credentials"), "{e}");
        let e = spec("token_env = \"T\"\nrole_id = \"r\"\nsecret_id_env = \"S\"")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
        let e = spec("role_id = \"r\"").validate().unwrap_err().to_string();
        assert!(e.contains("secret_id_env or secret_id_file"), "{e}");
    }

    #[test]
    fn paths_and_addresses_are_checked() {
        let mut s = spec("token_env = \"T\"");
        s.path = "ci/../admin".into();
        assert!(s.validate().is_err());
        let mut s = spec("token_env = \"T\"");
        s.address = "http://vault.example.com".into();
        assert!(s.validate().unwrap_err().to_string().contains("plain http"));
    }

    #[test]
    fn urls_use_the_kv2_data_path() {
        std::env::set_var("KEYTURN_TEST_VAULT_TOKEN_URLS", "tok-123456");
        let mut s = spec("token_env = \"KEYTURN_TEST_VAULT_TOKEN_URLS\"");
        s.mount = "team/kv".into();
        s.path = "ci/bob".into();
        let sink = VaultSink::new(&s).unwrap();
        assert_eq!(
            sink.data_url(Some(3)).as_str(),
            "https://vault.example.com:8200/v1/team/kv/data/ci/bob?version=3"
        );
        assert_eq!(sink.where_(), "team/kv/ci/bob");
    }

    #[test]
    fn vault_errors_are_shown() {
        assert_eq!(
            describe(&json!({"errors": ["permission denied"]})).as_deref(),
            Some("permission denied")
        );
        assert_eq!(describe(&json!({"errors": []})), None);
    }
}
