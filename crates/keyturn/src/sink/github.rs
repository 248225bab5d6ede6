//! The `github` sink: GitHub Actions secrets of a repository (`repository = "owner/repo"`),
//! of one of its environments (`+ environment = "prod"`), or of an organization
//! (`organization = "org"`), through the REST API (`api_url`, GitHub Enterprise
//! Server too).
//!
//! GitHub accepts a secret only encrypted to the scope's public key: `deliver` gets
//! `GET .../secrets/public-key` (`key_id`, base64 X25519 key), seals each value with
//! a libsodium sealed box (`crypto_box`), and `PUT`s `.../secrets/{NAME}` with
//! `encrypted_value` and `key_id`. A stale `key_id` (GitHub rotated the scope's key)
//! is answered by fetching the key again, once. Organization secrets keep the
//! `visibility` (and the selected repositories) they have; `visibility` in the
//! settings applies to secrets keyturn creates.
//!
//! GitHub never shows a secret's value, so `verify` reads each secret's metadata and
//! checks that `updated_at` (whole seconds) is not older than the write, measured on
//! GitHub's own clock (the `Date` of the answer just before the first `PUT`). Writing
//! the same value again is harmless, so a repeated step simply writes again.

use super::fields::{FieldMap, Value};
use super::http::{self, Http, HttpError, Request};
use super::{secrets, sink_error, Delivered, Handover, Holding, Sink, SinkStage, Written};
use crate::error::{Error, Result};
use crate::secret::SecretKey;
use async_trait::async_trait;
use base64::Engine as _;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use time::OffsetDateTime;

const API_VERSION: &str = "2022-11-28";
/// Tolerated clock difference between IAM and GitHub when `updated_at` is compared
/// with the key's creation time (only when this process did not do the write).
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

fn default_api_url() -> String {
    "https://api.github.com".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    All,
    Private,
    Selected,
}

impl Visibility {
    fn as_str(self) -> &'static str {
        match self {
            Visibility::All => "all",
            Visibility::Private => "private",
            Visibility::Selected => "selected",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Visibility::All),
            "private" => Some(Visibility::Private),
            "selected" => Some(Visibility::Selected),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubSpec {
    pub name: String,
    /// `owner/repo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// An environment of `repository`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// Visibility of organization secrets keyturn creates (default `private`); an
    /// existing secret keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
    /// Repository ids for `visibility = "selected"` (secrets keyturn creates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_repository_ids: Option<Vec<u64>>,
    #[serde(default = "default_api_url")]
    pub api_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldMap>,
}

/// GitHub's secret naming rules.
fn valid_secret_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.to_ascii_uppercase().starts_with("GITHUB_")
}

/// An owner, repository or organization name (`{user}`/`{account}` placeholders are
/// allowed here; the rendered spec is checked again when the sink is built).
fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.{}".contains(c))
}

impl GitHubSpec {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("sink '{}': {m}", self.name)));
        if let Err(m) = http::base_url("api_url", &self.api_url) {
            return bad(m);
        }
        match (&self.repository, &self.organization) {
            (Some(_), Some(_)) | (None, None) => {
                return bad(
                    "set exactly one of repository = \"owner/repo\" or organization = \"org\""
                        .into(),
                )
            }
            (Some(r), None) => {
                let ok = r
                    .split_once('/')
                    .is_some_and(|(o, n)| valid_slug(o) && valid_slug(n));
                if !ok {
                    return bad(format!("repository {r:?} is not \"owner/repo\""));
                }
                if self.visibility.is_some() || self.selected_repository_ids.is_some() {
                    return bad(
                        "visibility and selected_repository_ids apply to organization secrets only"
                            .into(),
                    );
                }
            }
            (None, Some(o)) => {
                if !valid_slug(o) {
                    return bad(format!("organization {o:?} is not an organization login"));
                }
                if self.environment.is_some() {
                    return bad(
                        "environment needs repository (environments belong to a repository)".into(),
                    );
                }
                match (self.visibility, &self.selected_repository_ids) {
                    (Some(Visibility::Selected), None) => {
                        return bad("visibility = \"selected\" needs selected_repository_ids for secrets keyturn creates".into())
                    }
                    (v, Some(_)) if v != Some(Visibility::Selected) => {
                        return bad("selected_repository_ids needs visibility = \"selected\"".into())
                    }
                    _ => {}
                }
            }
        }
        if let Some(e) = &self.environment {
            if e.is_empty() || e.chars().any(char::is_control) {
                return bad(format!("environment {e:?} is not an environment name"));
            }
        }
        if self.token_env.is_none() && self.token_file.is_none() {
            return bad("set token_env or token_file (a token with access to the secrets)".into());
        }
        if let Some(f) = &self.fields {
            f.validate(&format!("sink '{}'", self.name), valid_secret_name)?;
        }
        Ok(())
    }

    /// Path segments of the secrets collection.
    fn scope(&self) -> Vec<String> {
        match (&self.repository, &self.environment, &self.organization) {
            (Some(r), Some(env), _) => {
                let (o, n) = r.split_once('/').unwrap_or((r, ""));
                vec![
                    "repos".into(),
                    o.into(),
                    n.into(),
                    "environments".into(),
                    env.clone(),
                    "secrets".into(),
                ]
            }
            (Some(r), None, _) => {
                let (o, n) = r.split_once('/').unwrap_or((r, ""));
                vec![
                    "repos".into(),
                    o.into(),
                    n.into(),
                    "actions".into(),
                    "secrets".into(),
                ]
            }
            (None, _, Some(org)) => vec![
                "orgs".into(),
                org.clone(),
                "actions".into(),
                "secrets".into(),
            ],
            _ => vec![],
        }
    }

    fn scope_label(&self) -> String {
        match (&self.repository, &self.environment, &self.organization) {
            (Some(r), Some(e), _) => format!("{r} environment {e}"),
            (Some(r), None, _) => r.clone(),
            (None, _, Some(o)) => format!("organization {o}"),
            _ => String::new(),
        }
    }
}

/// GitHub errors: `{"message", "documentation_url", "errors": [{"field", "message"}]}`.
fn describe(v: &serde_json::Value) -> Option<String> {
    let msg = v.get("message")?.as_str()?.to_string();
    let details: Vec<String> = v
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let m = e.get("message").and_then(|m| m.as_str());
                    let f = e.get("field").and_then(|m| m.as_str());
                    match (f, m) {
                        (Some(f), Some(m)) => Some(format!("{f}: {m}")),
                        (None, Some(m)) => Some(m.to_string()),
                        _ => None,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Some(if details.is_empty() {
        msg
    } else {
        format!("{msg} ({})", details.join("; "))
    })
}

/// An organization secret's visibility and selected repositories, as found.
#[derive(Clone)]
struct OrgAccess {
    visibility: String,
    selected: Vec<u64>,
}

#[derive(Default)]
struct State {
    /// Per secret name: `updated_at` before delivery (None = the secret did not exist).
    before: HashMap<String, Option<String>>,
    org: HashMap<String, OrgAccess>,
    /// GitHub's clock just before this process's first write.
    write_floor: Option<OffsetDateTime>,
}

pub struct GitHubSink {
    spec: GitHubSpec,
    fields: FieldMap,
    http: Http,
    token: SecretKey,
    base: Url,
    state: Mutex<State>,
}

struct PublicKey {
    key_id: String,
    key: crypto_box::PublicKey,
}

impl GitHubSink {
    pub fn new(spec: &GitHubSpec) -> Result<Self> {
        spec.validate()?;
        let token = secrets::load(
            &format!("sink '{}': GitHub token", spec.name),
            spec.token_env.as_deref(),
            spec.token_file.as_deref(),
        )?;
        let http = Http::new(&spec.name, describe).map_err(Error::Runtime)?;
        http.protect(&token);
        let base = http::base_url("api_url", &spec.api_url)
            .map_err(|m| Error::InvalidInput(format!("sink '{}': {m}", spec.name)))?;
        Ok(Self {
            fields: FieldMap::or(&spec.fields, FieldMap::env_default),
            spec: spec.clone(),
            http,
            token,
            base,
            state: Mutex::new(State::default()),
        })
    }

    fn url(&self, tail: &[&str]) -> Url {
        let scope = self.spec.scope();
        let mut segs: Vec<&str> = scope.iter().map(String::as_str).collect();
        segs.extend_from_slice(tail);
        http::join(&self.base, &segs)
    }

    fn req(&self, r: Request) -> Request {
        r.secret_header("authorization", "Bearer ", &self.token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", API_VERSION)
    }

    fn fail(&self, stage: SinkStage, written: Written, m: impl Into<String>) -> Error {
        sink_error(self, stage, written, m, None)
    }

    /// The error with advice for the statuses users hit.
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
            format!("{e} (GitHub refused the token from {token}: check that it is valid and not expired)")
        } else if e.is_status(404) {
            format!(
                "{e} ({} does not exist, or the token cannot see it: it needs {})",
                self.spec.scope_label(),
                if self.spec.organization.is_some() {
                    "the organization permission Secrets (read and write), or a classic token's admin:org scope"
                } else if self.spec.environment.is_some() {
                    "the repository permission Environments (read and write), or a classic token's repo scope"
                } else {
                    "the repository permission Secrets (read and write), or a classic token's repo scope"
                }
            )
        } else if e.is_status(403) {
            format!(
                "{e} (the token lacks write access to Actions secrets of {})",
                self.spec.scope_label()
            )
        } else {
            e.to_string()
        }
    }

    async fn public_key(
        &self,
    ) -> std::result::Result<(PublicKey, Option<OffsetDateTime>), HttpError> {
        let r = self
            .http
            .send(self.req(Request::get(
                self.url(&["public-key"]),
                format!("GET public key of {}", self.spec.scope_label()),
            )))
            .await?;
        let date = r.date();
        #[derive(Deserialize)]
        struct Key {
            key_id: String,
            key: String,
        }
        let k: Key = r.json()?;
        let bad = |m: &str| HttpError {
            what: format!("GET public key of {}", self.spec.scope_label()),
            failure: http::Failure::Decode,
            status: Some(200),
            detail: m.to_string(),
            maybe_applied: false,
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(k.key.trim())
            .map_err(|_| bad("the public key is not base64"))?;
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|_| bad("the public key is not 32 bytes (X25519)"))?;
        Ok((
            PublicKey {
                key_id: k.key_id,
                key: crypto_box::PublicKey::from(raw),
            },
            date,
        ))
    }

    /// `updated_at` of a secret (and, for organizations, its access), or None if absent.
    async fn meta(
        &self,
        name: &str,
    ) -> std::result::Result<Option<(String, Option<OrgAccess>)>, HttpError> {
        let r = self
            .http
            .send(
                self.req(Request::get(
                    self.url(&[name]),
                    format!("GET secret {name}"),
                ))
                .allow(404),
            )
            .await?;
        if r.status.as_u16() == 404 {
            return Ok(None);
        }
        let v: serde_json::Value = r.json()?;
        let updated = v
            .get("updated_at")
            .and_then(|u| u.as_str())
            .unwrap_or_default()
            .to_string();
        let org = match (
            &self.spec.organization,
            v.get("visibility").and_then(|x| x.as_str()),
        ) {
            (Some(_), Some(vis)) => {
                let selected = if vis == "selected" {
                    self.selected_repos(name).await?
                } else {
                    vec![]
                };
                Some(OrgAccess {
                    visibility: vis.to_string(),
                    selected,
                })
            }
            _ => None,
        };
        Ok(Some((updated, org)))
    }

    async fn selected_repos(&self, name: &str) -> std::result::Result<Vec<u64>, HttpError> {
        let mut ids = Vec::new();
        for page in 1..=100 {
            let mut u = self.url(&[name, "repositories"]);
            u.query_pairs_mut()
                .append_pair("per_page", "100")
                .append_pair("page", &page.to_string());
            let r = self
                .http
                .send(self.req(Request::get(
                    u,
                    format!("GET repositories of secret {name}"),
                )))
                .await?;
            let v: serde_json::Value = r.json()?;
            let batch: Vec<u64> = v
                .get("repositories")
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|r| r.get("id")?.as_u64()).collect())
                .unwrap_or_default();
            let total = v.get("total_count").and_then(|t| t.as_u64()).unwrap_or(0);
            let n = batch.len();
            ids.extend(batch);
            if n < 100 || ids.len() as u64 >= total {
                break;
            }
        }
        Ok(ids)
    }

    fn seal(&self, key: &PublicKey, value: &Value) -> std::result::Result<String, String> {
        let sealed = key
            .key
            .seal(&mut crypto_box::aead::OsRng, value.expose().as_bytes())
            .map_err(|_| "sealing the value failed".to_string())?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    async fn put(
        &self,
        name: &str,
        value: &Value,
        key: &PublicKey,
    ) -> std::result::Result<u16, HttpError> {
        let enc = self.seal(key, value).map_err(|m| HttpError {
            what: format!("PUT secret {name}"),
            failure: http::Failure::Refused,
            status: None,
            detail: m,
            maybe_applied: false,
        })?;
        let mut body = json!({"encrypted_value": enc, "key_id": key.key_id});
        if self.spec.organization.is_some() {
            let access = self.state.lock().expect("lock").org.get(name).cloned();
            let (vis, ids) = match access {
                Some(a) => (a.visibility, Some(a.selected)),
                None => (
                    self.spec
                        .visibility
                        .unwrap_or(Visibility::Private)
                        .as_str()
                        .to_string(),
                    self.spec.selected_repository_ids.clone(),
                ),
            };
            if vis == "selected" {
                body["selected_repository_ids"] = json!(ids.unwrap_or_default());
            }
            body["visibility"] = json!(vis);
        }
        let r = self
            .http
            .send(
                self.req(Request::put(self.url(&[name]), format!("PUT secret {name}")).json(&body)),
            )
            .await?;
        Ok(r.status.as_u16())
    }
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

fn floor_second(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

#[async_trait]
impl Sink for GitHubSink {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &'static str {
        "github"
    }

    async fn prepare(&self) -> Result<Holding> {
        let fail = |e: HttpError| self.fail(SinkStage::Prepare, Written::No, self.explain(&e));
        self.public_key().await.map_err(fail)?;
        let mut before = HashMap::new();
        let mut org = HashMap::new();
        for (name, _) in &self.fields.0 {
            let m = self.meta(name).await.map_err(fail)?;
            if let Some((_, Some(a))) = &m {
                if Visibility::parse(&a.visibility).is_none() {
                    return Err(self.fail(
                        SinkStage::Prepare,
                        Written::No,
                        format!(
                            "secret {name} has visibility {:?}, which keyturn does not know",
                            a.visibility
                        ),
                    ));
                }
                org.insert(name.clone(), a.clone());
            }
            before.insert(name.clone(), m.map(|(u, _)| u));
        }
        let any = before.values().any(Option::is_some);
        let mut st = self.state.lock().expect("lock");
        st.before = before;
        st.org = org;
        // GitHub never shows values: what a secret holds cannot be read.
        Ok(if any {
            Holding::Unknown
        } else {
            Holding::Empty
        })
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        self.http.protect(&h.key.secret);
        let values = self.fields.values(h.key, h.account);
        let (mut key, date) = self
            .public_key()
            .await
            .map_err(|e| self.fail(SinkStage::Deliver, Written::No, self.explain(&e)))?;
        {
            let mut st = self.state.lock().expect("lock");
            if st.write_floor.is_none() {
                st.write_floor = Some(date.unwrap_or_else(OffsetDateTime::now_utc));
            }
        }
        let mut written: Vec<String> = Vec::new();
        let mut refreshed = false;
        for (name, value) in &values {
            let w = |maybe: bool, written: &[String]| {
                if maybe || !written.is_empty() {
                    Written::Maybe
                } else {
                    Written::No
                }
            };
            let status = loop {
                match self.put(name, value, &key).await {
                    Ok(s) => break s,
                    // GitHub rotated the scope's key since we fetched it: fetch it again.
                    Err(e) if e.is_status(422) && e.detail.contains("key_id") && !refreshed => {
                        refreshed = true;
                        key = match self.public_key().await {
                            Ok((k, _)) => k,
                            Err(e2) => {
                                return Err(self.fail(
                                    SinkStage::Deliver,
                                    w(false, &written),
                                    format!(
                                        "{}; fetching the public key again: {}",
                                        e,
                                        self.explain(&e2)
                                    ),
                                ))
                            }
                        };
                    }
                    Err(e) => {
                        let held = if written.is_empty() {
                            String::new()
                        } else {
                            format!("; {} already hold the new value", written.join(", "))
                        };
                        return Err(self.fail(
                            SinkStage::Deliver,
                            w(e.maybe_applied, &written),
                            format!("{}{held}", self.explain(&e)),
                        ));
                    }
                }
            };
            written.push(format!(
                "{name} ({})",
                if status == 201 { "created" } else { "updated" }
            ));
        }
        Ok(Delivered::new(format!(
            "{}: sealed with key {}; {}",
            self.spec.scope_label(),
            key.key_id,
            written.join(", ")
        )))
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        let fail = |m: String| self.fail(SinkStage::Verify, Written::Maybe, m);
        let (floor, org) = {
            let st = self.state.lock().expect("lock");
            (st.write_floor, st.org.clone())
        };
        // Without a write of ours to compare with (a resumed run), the secret must at
        // least have changed after the key was created.
        let (floor, against) = match floor {
            Some(f) => (floor_second(f), "keyturn's write"),
            None => (
                floor_second(h.key.create_date - CLOCK_SKEW),
                "the new key's creation",
            ),
        };
        let mut latest = String::new();
        for (name, _) in &self.fields.0 {
            let m = self.meta(name).await.map_err(|e| fail(self.explain(&e)))?;
            let Some((updated, access)) = m else {
                return Err(fail(format!(
                    "secret {name} does not exist after the write"
                )));
            };
            let t = parse_time(&updated).ok_or_else(|| {
                fail(format!(
                    "secret {name}: updated_at {updated:?} is not a time"
                ))
            })?;
            if t < floor {
                return Err(fail(format!(
                    "secret {name}: updated_at {updated} is older than {against} ({})",
                    crate::printer::rfc3339(floor)
                )));
            }
            if let (Some(want), Some(got)) = (org.get(name), access) {
                if want.visibility != got.visibility {
                    return Err(fail(format!(
                        "secret {name}: visibility is {}, was {}",
                        got.visibility, want.visibility
                    )));
                }
            }
            if updated > latest {
                latest = updated;
            }
        }
        Ok(format!(
            "{}: {} updated at {latest}, not before {against} (GitHub never shows secret values)",
            self.spec.scope_label(),
            self.fields
                .0
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> GitHubSpec {
        toml::from_str(&format!("name = \"gh\"\ntoken_env = \"GH_TOKEN\"\n{extra}")).unwrap()
    }

    #[test]
    fn scopes_map_to_the_secrets_paths() {
        let s = spec("repository = \"octo-org/octo-repo\"");
        assert!(s.validate().is_ok());
        assert_eq!(
            s.scope().join("/"),
            "repos/octo-org/octo-repo/actions/secrets"
        );
        let s = spec("repository = \"octo-org/octo-repo\"\nenvironment = \"prod\"");
        assert_eq!(
            s.scope().join("/"),
            "repos/octo-org/octo-repo/environments/prod/secrets"
        );
        let s = spec("organization = \"octo-org\"\nvisibility = \"all\"");
        assert!(s.validate().is_ok());
        assert_eq!(s.scope().join("/"), "orgs/octo-org/actions/secrets");
        assert_eq!(s.api_url, "https://api.github.com");
    }

    #[test]
    fn bad_scopes_are_refused() {
        for extra in [
            "",
            "repository = \"a/b\"\norganization = \"o\"",
            "repository = \"no-slash\"",
            "repository = \"a/b\"\nvisibility = \"all\"",
            "organization = \"o\"\nenvironment = \"prod\"",
            "organization = \"o\"\nvisibility = \"selected\"",
            "organization = \"o\"\nselected_repository_ids = [1]",
            "repository = \"a/b\"\nfields = { GITHUB_TOKEN_X = \"secret_access_key\" }",
            "repository = \"a/b\"\nfields = { \"1ABC\" = \"secret_access_key\" }",
        ] {
            assert!(spec(extra).validate().is_err(), "{extra}");
        }
        assert!(toml::from_str::<GitHubSpec>(
            "name = \"gh\"\ntoken_env = \"T\"\norganization = \"o\"\nvisibility = \"public\""
        )
        .is_err());
    }

    #[test]
    fn github_errors_show_message_and_field_errors() {
        let v = json!({"message": "Validation Failed", "errors": [{"field": "key_id", "message": "stale"}], "documentation_url": "x"});
        assert_eq!(
            describe(&v).as_deref(),
            Some("Validation Failed (key_id: stale)")
        );
        assert_eq!(
            describe(&json!({"message": "Bad credentials"})).as_deref(),
            Some("Bad credentials")
        );
    }

    #[test]
    fn sealed_boxes_open_with_the_private_key() {
        let sk = crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng);
        let pk = PublicKey {
            key_id: "1".into(),
            key: sk.public_key(),
        };
        std::env::set_var("KEYTURN_TEST_GH_TOKEN_SEAL", "ghp_test_token_value");
        let mut s = spec("repository = \"a/b\"");
        s.token_env = Some("KEYTURN_TEST_GH_TOKEN_SEAL".into());
        let sink = GitHubSink::new(&s).unwrap();
        let enc = sink
            .seal(&pk, &Value::Secret(SecretKey::new("wJalrXUtnFEMI/K7MDENG")))
            .unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(enc)
            .unwrap();
        assert_eq!(sk.unseal(&raw).unwrap(), b"wJalrXUtnFEMI/K7MDENG");
    }
}
