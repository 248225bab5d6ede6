//! The `informatica` sink: keyFresh's job (put a rotated key into Informatica
//! Intelligent Cloud Services S3 connections), done safely.
//!
//! Flow, per phase (`prepare`, `deliver`, `verify`), each in its own session:
//! 1. v2 login: `POST login_url` with `{"@type": "login", "username", "password"}` ->
//!    `icSessionId` and `serverUrl` (the API lives under `serverUrl`);
//! 2. per connection: `GET <serverUrl>/api/v2/connection/<id>`; unless it already shows
//!    the new access key id, `POST` the same URL with `Update-Mode: PARTIAL` and a body
//!    of only `{"@type": "connection", "connParams": {<access key field>, <secret key
//!    field>}}`. A GET body is never written back: IICS masks secrets as `********` and
//!    would store the mask (and full mode drops every field the body leaves out);
//! 3. always `POST <serverUrl>/api/v2/user/logout`, also when a step failed.
//!
//! The password comes from `password_env`, `password_file`, or `password_kms_file`: the
//! raw KMS ciphertext keyFresh's `passwd.encrypt` holds (`aws kms encrypt ... | base64
//! --decode`), decrypted with the run's AWS credentials when the sink first logs in.
//!
//! IICS never shows a secret field back, so verification reads each connection and
//! checks what it can: the access key field shows the new key id and `updateTime`
//! moved. A connection that already shows the new id counts as delivered (both fields
//! are written in one request), so a delivery that failed part-way (a 500 on the third
//! of five connections) is finished by `keyturn resume` without writing the first two
//! again. Errors show IICS's `code` and `description`.

use super::http::{self, Http, HttpError, Request, SecretJson};
use super::{secrets, sink_error, Delivered, Handover, Holding, Sink, SinkEnv, SinkStage, Written};
use crate::error::{AwsError, Error, Result};
use crate::secret::{mask_key_id, SecretKey};
use async_trait::async_trait;
use base64::Engine as _;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// KMS ciphertexts are at most a few kB.
const MAX_CIPHERTEXT: u64 = 64 * 1024;
/// Tolerated clock difference between IAM and IICS when a connection's `updateTime`
/// is compared with the key's creation time (only when this process did not see the
/// connection before the update).
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

fn default_access_key_field() -> String {
    "Access Key".into()
}

fn default_secret_key_field() -> String {
    "Secret Key".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InformaticaSpec {
    pub name: String,
    /// `https://dm-us.informaticacloud.com/ma/api/v2/user/login` (your POD's region).
    pub login_url: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// A file holding the raw KMS ciphertext of the password (keyFresh's `passwd.encrypt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_kms_file: Option<PathBuf>,
    /// The KMS key the password was encrypted with (passed to `Decrypt` as `KeyId`, so
    /// a ciphertext made with another key is refused). Optional for symmetric keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_kms_key_id: Option<String>,
    /// Connection ids, e.g. `0100000B000000000002`.
    pub connections: Vec<String>,
    #[serde(default = "default_access_key_field")]
    pub access_key_field: String,
    #[serde(default = "default_secret_key_field")]
    pub secret_key_field: String,
}

impl InformaticaSpec {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("sink '{}': {m}", self.name)));
        if let Err(m) = http::base_url("login_url", &self.login_url) {
            return bad(m);
        }
        if self.username.trim().is_empty() {
            return bad("username must not be empty".into());
        }
        let sources = [
            self.password_env.is_some(),
            self.password_file.is_some(),
            self.password_kms_file.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources != 1 {
            return bad("set exactly one of password_env, password_file or password_kms_file (never the password itself)".into());
        }
        if self.password_kms_key_id.is_some() && self.password_kms_file.is_none() {
            return bad("password_kms_key_id is only used with password_kms_file".into());
        }
        if self.connections.is_empty() {
            return bad("connections must name at least one connection id".into());
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.connections {
            if c.is_empty()
                || !c
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "{}".contains(ch))
            {
                return bad(format!(
                    "connection id {c:?} is not an IICS id (letters and digits, e.g. 0100000B000000000002)"
                ));
            }
            if !seen.insert(c) {
                return bad(format!("connection {c} is listed twice"));
            }
        }
        if self.access_key_field.trim().is_empty() || self.secret_key_field.trim().is_empty() {
            return bad("access_key_field and secret_key_field must not be empty".into());
        }
        if self.access_key_field == self.secret_key_field {
            return bad("access_key_field and secret_key_field must differ".into());
        }
        Ok(())
    }

    fn password_source(&self) -> String {
        match (
            &self.password_env,
            &self.password_file,
            &self.password_kms_file,
        ) {
            (Some(v), _, _) => format!("password_env {v}"),
            (_, Some(p), _) => format!("password_file {}", p.display()),
            (_, _, Some(p)) => format!("password_kms_file {}", p.display()),
            _ => "the password".into(),
        }
    }
}

enum Password {
    Plain(SecretKey),
    Kms {
        path: PathBuf,
        ciphertext: Zeroizing<Vec<u8>>,
        key_id: Option<String>,
        client: aws_sdk_kms::Client,
        plain: tokio::sync::OnceCell<SecretKey>,
    },
}

/// Read keyFresh's `passwd.encrypt`: raw ciphertext bytes. A file that still holds the
/// base64 text (the `| base64 --decode` step was skipped) is decoded too.
pub fn read_ciphertext(what: &str, path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::InvalidInput(format!("{what}: cannot read {}: {e}", path.display())))?;
    if meta.len() > MAX_CIPHERTEXT {
        return Err(Error::InvalidInput(format!(
            "{what}: {} is {} bytes, too large for a KMS ciphertext",
            path.display(),
            meta.len()
        )));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        Error::InvalidInput(format!("{what}: cannot read {}: {e}", path.display()))
    })?);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::InvalidInput(format!(
            "{what}: {} is empty",
            path.display()
        )));
    }
    let text_like = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=\r\n".contains(b));
    if text_like {
        let trimmed: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&trimmed) {
            return Ok(Zeroizing::new(decoded));
        }
    }
    Ok(bytes)
}

/// IICS errors: `{"@type": "error", "code": "UI_10000", "description": "...", "statusCode": 403}`.
fn describe(v: &serde_json::Value) -> Option<String> {
    let code = v.get("code").and_then(|c| c.as_str());
    let desc = v.get("description").and_then(|c| c.as_str());
    match (code, desc) {
        (Some(c), Some(d)) => Some(format!("{c}: {d}")),
        (None, Some(d)) => Some(d.to_string()),
        (Some(c), None) => Some(c.to_string()),
        _ => v
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string),
    }
}

struct Session {
    id: SecretKey,
    server: Url,
}

/// One connection as read: its name, access key field, `updateTime`.
#[derive(Clone)]
struct Conn {
    name: String,
    access_key: Option<String>,
    update_time: Option<String>,
}

pub struct InformaticaSink {
    spec: InformaticaSpec,
    http: Http,
    login_url: Url,
    password: Password,
    /// Per connection, what `prepare` saw.
    before: Mutex<HashMap<String, Conn>>,
}

impl InformaticaSink {
    pub fn new(spec: &InformaticaSpec, env: &SinkEnv) -> Result<Self> {
        spec.validate()?;
        let what = format!("sink '{}': Informatica password", spec.name);
        let password = match &spec.password_kms_file {
            Some(path) => Password::Kms {
                path: path.clone(),
                ciphertext: read_ciphertext(&what, path)?,
                key_id: spec.password_kms_key_id.clone(),
                client: aws_sdk_kms::Client::new(&env.aws),
                plain: tokio::sync::OnceCell::new(),
            },
            None => Password::Plain(secrets::load(
                &what,
                spec.password_env.as_deref(),
                spec.password_file.as_deref(),
            )?),
        };
        let http = Http::new(&spec.name, describe).map_err(Error::Runtime)?;
        if let Password::Plain(p) = &password {
            http.protect(p);
        }
        let login_url = http::base_url("login_url", &spec.login_url)
            .map_err(|m| Error::InvalidInput(format!("sink '{}': {m}", spec.name)))?;
        Ok(Self {
            spec: spec.clone(),
            http,
            login_url,
            password,
            before: Mutex::new(HashMap::new()),
        })
    }

    fn fail(&self, stage: SinkStage, written: Written, m: impl Into<String>) -> Error {
        sink_error(self, stage, written, m, None)
    }

    async fn password(&self) -> std::result::Result<SecretKey, String> {
        match &self.password {
            Password::Plain(p) => Ok(p.clone()),
            Password::Kms {
                path,
                ciphertext,
                key_id,
                client,
                plain,
            } => plain
                .get_or_try_init(|| async {
                    let mut out = client
                        .decrypt()
                        .ciphertext_blob(aws_smithy_types::Blob::new(ciphertext.to_vec()))
                        .set_key_id(key_id.clone())
                        .send()
                        .await
                        .map_err(|e| {
                            format!(
                                "decrypting the password in {} with KMS: {}",
                                path.display(),
                                AwsError::from_sdk("kms:Decrypt", &e)
                            )
                        })?;
                    let bytes = Zeroizing::new(
                        out.plaintext
                            .take()
                            .map(|b| b.into_inner())
                            .unwrap_or_default(),
                    );
                    let text = std::str::from_utf8(&bytes).map_err(|_| {
                        format!(
                            "the password KMS decrypted from {} is not text",
                            path.display()
                        )
                    })?;
                    let p = SecretKey::new(text.trim_end_matches(['\n', '\r']));
                    if p.expose().is_empty() {
                        return Err(format!(
                            "the password KMS decrypted from {} is empty",
                            path.display()
                        ));
                    }
                    self.http.protect(&p);
                    Ok(p)
                })
                .await
                .cloned(),
        }
    }

    async fn login(&self) -> std::result::Result<Session, String> {
        let password = self.password().await?;
        let body = SecretJson(json!({
            "@type": "login",
            "username": self.spec.username,
            "password": password.expose(),
        }));
        let r = self
            .http
            .send(
                Request::post(
                    self.login_url.clone(),
                    format!("login as {}", self.spec.username),
                )
                .json(&*body)
                .idempotent(true),
            )
            .await
            .map_err(|e| {
                if e.is_client_error() {
                    format!("{e} (check username and {})", self.spec.password_source())
                } else {
                    e.to_string()
                }
            })?;
        let v = r.secret_json().map_err(|e| e.to_string())?;
        let id = v
            .get("icSessionId")
            .and_then(|x| x.as_str())
            .filter(|x| !x.is_empty())
            .map(SecretKey::new)
            .ok_or("the login answer has no icSessionId")?;
        self.http.protect(&id);
        let server = v
            .get("serverUrl")
            .and_then(|x| x.as_str())
            .ok_or("the login answer has no serverUrl")?;
        let server = http::base_url("the serverUrl of the login answer", server)?;
        if self.login_url.scheme() == "https" && server.scheme() != "https" {
            return Err(format!(
                "the login answer's serverUrl {server} is not https; keyturn will not send the session there"
            ));
        }
        Ok(Session { id, server })
    }

    /// Always called after a phase, also when it failed. A failed logout is logged, not
    /// fatal: the session expires on its own after 30 minutes.
    async fn logout(&self, s: &Session) {
        let url = http::join(&s.server, &["api", "v2", "user", "logout"]);
        let r = Request::post(url, "logout")
            .secret_header("icsessionid", "", &s.id)
            .idempotent(true);
        match self.http.send(r).await {
            Ok(_) => tracing::debug!(sink = %self.spec.name, "logged out of Informatica"),
            Err(e) => tracing::warn!(
                sink = %self.spec.name,
                "logging out of Informatica failed (the session expires on its own): {e}"
            ),
        }
    }

    /// Send with the session; one new login when IICS says the session is gone.
    async fn send(
        &self,
        s: &mut Session,
        make: &(dyn Fn(&Session) -> Request + Sync),
    ) -> std::result::Result<http::Response, HttpError> {
        match self.http.send(make(s)).await {
            Err(e) if e.is_status(401) => {
                tracing::info!(sink = %self.spec.name, "the Informatica session ended; logging in again");
                let fresh = self.login().await.map_err(|m| HttpError {
                    detail: format!("{}; logging in again: {m}", e.detail),
                    ..e.clone()
                })?;
                // The old session is gone; the new one is what logout must end.
                *s = fresh;
                self.http.send(make(s)).await
            }
            other => other,
        }
    }

    fn conn_url(s: &Session, id: &str) -> Url {
        http::join(&s.server, &["api", "v2", "connection", id])
    }

    fn read_conn(&self, id: &str, v: &serde_json::Value) -> std::result::Result<Conn, String> {
        let params = v
            .get("connParams")
            .and_then(|p| p.as_object())
            .ok_or_else(|| format!("connection {id}: the answer has no connParams"))?;
        let name = v
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        for f in [&self.spec.access_key_field, &self.spec.secret_key_field] {
            if !params.contains_key(f.as_str()) {
                let mut have: Vec<&str> = params.keys().map(String::as_str).collect();
                have.sort();
                return Err(format!(
                    "connection {id} ({name}) has no connParams field {f:?} (it has: {}); set access_key_field and secret_key_field to this connector's field names",
                    have.join(", ")
                ));
            }
        }
        Ok(Conn {
            name,
            access_key: params
                .get(&self.spec.access_key_field)
                .and_then(|x| x.as_str())
                .filter(|x| !x.is_empty())
                .map(str::to_string),
            update_time: v
                .get("updateTime")
                .and_then(|x| x.as_str())
                .map(str::to_string),
        })
    }

    async fn get(&self, s: &mut Session, id: &str) -> std::result::Result<Conn, String> {
        let r = self
            .send(s, &|s| {
                Request::get(Self::conn_url(s, id), format!("GET connection {id}")).secret_header(
                    "icsessionid",
                    "",
                    &s.id,
                )
            })
            .await
            .map_err(|e| e.to_string())?;
        let v = r.secret_json().map_err(|e| e.to_string())?;
        self.read_conn(id, &v)
    }

    async fn prepare_in(&self, s: &mut Session) -> std::result::Result<Holding, String> {
        let mut seen = HashMap::new();
        let mut first = None;
        for id in &self.spec.connections {
            let c = self.get(s, id).await?;
            if first.is_none() {
                first = Some(c.access_key.clone());
            }
            seen.insert(id.clone(), c);
        }
        *self.before.lock().expect("lock") = seen;
        Ok(match first.flatten() {
            Some(k) => Holding::Key(k),
            None => Holding::Empty,
        })
    }

    /// Deliver within one session. Err carries whether anything may hold the new key.
    async fn deliver_in(
        &self,
        s: &mut Session,
        h: &Handover<'_>,
    ) -> std::result::Result<String, (Written, String)> {
        let new_id = h.key.access_key_id.as_str();
        let mut updated: Vec<&str> = Vec::new();
        let mut already: Vec<&str> = Vec::new();
        // Where each connection stands when one fails: honest about the one that failed.
        let stopped = |at: usize, maybe: bool, updated: &[&str], already: &[&str]| {
            let mut parts = Vec::new();
            let holding: Vec<&str> = already.iter().chain(updated).copied().collect();
            if !holding.is_empty() {
                parts.push(format!(
                    "{} hold{} the new key",
                    holding.join(", "),
                    if holding.len() == 1 { "s" } else { "" }
                ));
            }
            let id = &self.spec.connections[at];
            let rest: Vec<&str> = self.spec.connections[at + 1..]
                .iter()
                .map(String::as_str)
                .collect();
            let mut old: Vec<&str> = Vec::new();
            if maybe {
                parts.push(format!(
                    "{id} may hold it (the outcome of its update is unknown)"
                ));
            } else {
                old.push(id);
            }
            old.extend(rest);
            if !old.is_empty() {
                parts.push(format!(
                    "{} still hold{} the old key",
                    old.join(", "),
                    if old.len() == 1 { "s" } else { "" }
                ));
            }
            let written = if maybe || !holding.is_empty() {
                Written::Maybe
            } else {
                Written::No
            };
            (written, format!("; connections: {}", parts.join("; ")))
        };
        for (at, id) in self.spec.connections.iter().enumerate() {
            let c = match self.get(s, id).await {
                Ok(c) => c,
                Err(m) => {
                    let (w, p) = stopped(at, false, &updated, &already);
                    return Err((w, format!("{m}{p}")));
                }
            };
            if c.access_key.as_deref() == Some(new_id) {
                already.push(id);
                continue;
            }
            let body = SecretJson(json!({
                "@type": "connection",
                "connParams": {
                    self.spec.access_key_field.as_str(): new_id,
                    self.spec.secret_key_field.as_str(): h.key.secret.expose(),
                },
            }));
            let r = self
                .send(s, &|s| {
                    Request::post(
                        Self::conn_url(s, id),
                        format!("update connection {id} ({})", c.name),
                    )
                    .secret_header("icsessionid", "", &s.id)
                    .header("update-mode", "PARTIAL")
                    .json(&*body)
                    // Setting the same two fields twice is harmless.
                    .idempotent(true)
                })
                .await;
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    let (w, p) = stopped(at, e.maybe_applied, &updated, &already);
                    return Err((w, format!("{e}{p}")));
                }
            };
            let shown = r
                .secret_json()
                .map_err(|e| e.to_string())
                .and_then(|v| self.read_conn(id, &v));
            match shown {
                Ok(c) if c.access_key.as_deref() == Some(new_id) => updated.push(id),
                Ok(_) => {
                    let (w, p) = stopped(at, true, &updated, &already);
                    return Err((
                        w,
                        format!(
                            "connection {id}: the update was accepted but the answer does not show the new access key id{p}"
                        ),
                    ));
                }
                Err(m) => {
                    let (w, p) = stopped(at, true, &updated, &already);
                    return Err((w, format!("{m}{p}")));
                }
            }
        }
        let mut out = Vec::new();
        if !updated.is_empty() {
            out.push(format!("updated {} in partial mode", updated.join(", ")));
        }
        if !already.is_empty() {
            out.push(format!("{} already held the new key", already.join(", ")));
        }
        Ok(format!("connections: {}", out.join("; ")))
    }

    async fn verify_in(
        &self,
        s: &mut Session,
        h: &Handover<'_>,
    ) -> std::result::Result<String, String> {
        let new_id = h.key.access_key_id.as_str();
        let before = self.before.lock().expect("lock").clone();
        let created = h.key.create_date;
        let mut latest: Option<String> = None;
        for id in &self.spec.connections {
            let c = self.get(s, id).await?;
            if c.access_key.as_deref() != Some(new_id) {
                return Err(format!(
                    "connection {id} ({}) shows access key {}, not the new {}",
                    c.name,
                    c.access_key
                        .as_deref()
                        .map(mask_key_id)
                        .unwrap_or("(none)".into()),
                    mask_key_id(new_id)
                ));
            }
            let now = c.update_time.clone().unwrap_or_default();
            match before.get(id) {
                // This process saw the connection with another key: updateTime moved?
                Some(b) if b.access_key.as_deref() != Some(new_id) => {
                    if b.update_time.as_deref().is_some_and(|t| !later(&now, t)) {
                        return Err(format!(
                            "connection {id} ({}): updateTime {now} did not move since keyturn read it",
                            c.name
                        ));
                    }
                }
                // Updated before this process started: not before the key existed.
                _ => {
                    if let Some(t) = parse_time(&now) {
                        if t < created - CLOCK_SKEW {
                            return Err(format!(
                                "connection {id} ({}): updateTime {now} is older than the new key",
                                c.name
                            ));
                        }
                    }
                }
            }
            if latest.as_deref().is_none_or(|l| later(&now, l)) {
                latest = Some(now);
            }
        }
        Ok(format!(
            "{} connection{} show access key {} with a moved updateTime (latest {})",
            self.spec.connections.len(),
            if self.spec.connections.len() == 1 {
                ""
            } else {
                "s"
            },
            mask_key_id(new_id),
            latest.unwrap_or_default()
        ))
    }
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Is the IICS time `a` later than `b`? (As times when both parse, else as text: IICS
/// writes one fixed ISO 8601 format.)
fn later(a: &str, b: &str) -> bool {
    match (parse_time(a), parse_time(b)) {
        (Some(x), Some(y)) => x > y,
        _ => a > b,
    }
}

#[async_trait]
impl Sink for InformaticaSink {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &'static str {
        "informatica"
    }

    async fn prepare(&self) -> Result<Holding> {
        let fail = |m: String| self.fail(SinkStage::Prepare, Written::No, m);
        let mut s = self.login().await.map_err(fail)?;
        let r = self.prepare_in(&mut s).await;
        self.logout(&s).await;
        r.map_err(fail)
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        self.http.protect(&h.key.secret);
        let mut s = self
            .login()
            .await
            .map_err(|m| self.fail(SinkStage::Deliver, Written::No, m))?;
        let r = self.deliver_in(&mut s, h).await;
        self.logout(&s).await;
        r.map(Delivered::new)
            .map_err(|(w, m)| self.fail(SinkStage::Deliver, w, self.http.mask(&m)))
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        self.http.protect(&h.key.secret);
        let fail = |m: String| self.fail(SinkStage::Verify, Written::Maybe, m);
        let mut s = self.login().await.map_err(fail)?;
        let r = self.verify_in(&mut s, h).await;
        self.logout(&s).await;
        r.map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> InformaticaSpec {
        toml::from_str(&format!(
            "name = \"iics\"\nlogin_url = \"https://dm-us.informaticacloud.com/ma/api/v2/user/login\"\nusername = \"etl@example.com\"\nconnections = [\"0100000B000000000002\"]\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_and_exactly_one_password_source() {
        let s = spec("password_env = \"IICS_PASSWORD\"");
        assert_eq!(s.access_key_field, "Access Key");
        assert_eq!(s.secret_key_field, "Secret Key");
        assert!(s.validate().is_ok());
        assert!(spec("").validate().is_err());
        assert!(
            spec("password_env = \"A\"\npassword_kms_file = \"/etc/keyturn/passwd.encrypt\"")
                .validate()
                .is_err()
        );
        assert!(
            spec("password_env = \"A\"\npassword_kms_key_id = \"alias/k\"")
                .validate()
                .is_err()
        );
        assert!(
            spec("password_kms_file = \"p\"\npassword_kms_key_id = \"alias/k\"")
                .validate()
                .is_ok()
        );
        // The password itself is not a setting.
        let e = toml::from_str::<InformaticaSpec>(
            "name = \"x\"\nlogin_url = \"https://a\"\nusername = \"u\"\nconnections = []\npassword = \"hunter2\"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `password`"), "{e}");
    }

    #[test]
    fn connection_ids_are_checked() {
        let mut s = spec("password_env = \"P\"");
        s.connections = vec!["0100000B000000000002".into(), "../x".into()];
        assert!(s.validate().is_err());
        s.connections = vec!["A1".into(), "A1".into()];
        assert!(s.validate().unwrap_err().to_string().contains("twice"));
        s.connections = vec![];
        assert!(s.validate().is_err());
    }

    #[test]
    fn update_times_compare_as_times() {
        assert!(later(
            "2026-01-01T00:00:00.001Z",
            "2026-01-01T00:00:00.000Z"
        ));
        assert!(!later(
            "2026-01-01T00:00:00.000Z",
            "2026-01-01T00:00:00.000Z"
        ));
        assert!(later(
            "2026-01-01T01:00:00.000Z",
            "2026-01-01T01:30:00.000+01:00"
        ));
        assert!(later("b", "a"));
    }

    #[test]
    fn iics_errors_show_code_and_description() {
        let v = json!({"@type": "error", "code": "UI_10000", "description": "User name or password is not valid.", "statusCode": 403});
        assert_eq!(
            describe(&v).as_deref(),
            Some("UI_10000: User name or password is not valid.")
        );
    }

    #[test]
    fn ciphertext_files_are_raw_or_base64() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [1u8, 2, 2, 0, 0x78, 0xff, 0x10]).unwrap();
        assert_eq!(
            read_ciphertext("p", &raw).unwrap().as_slice(),
            &[1u8, 2, 2, 0, 0x78, 0xff, 0x10]
        );
        let text = dir.path().join("b64");
        std::fs::write(&text, "AQICAHj/EA==\n").unwrap();
        assert_eq!(
            read_ciphertext("p", &text).unwrap().as_slice(),
            &[1u8, 2, 2, 0, 0x78, 0xff, 0x10]
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(read_ciphertext("p", &empty).is_err());
        assert!(read_ciphertext("p", &dir.path().join("missing")).is_err());
    }
}
