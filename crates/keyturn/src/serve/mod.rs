//! `keyturn serve`: a local status page of the fleet with a Rotate button.
//!
//! An axum server (HTTP/1 on tokio) renders three pages (fleet, user, runs) and a JSON
//! API behind them (`docs/serve.md`). What it shows comes from a [`Backend`]: the
//! runner's dry-run report (the planner's outcomes now), IAM's key inventory and the
//! journal; the real backend is `commands::serve`, tests use fakes. Rotate now runs
//! the fleet runner for one user in a background task and records its progress
//! ([`Jobs`]), which the page polls; Resume calls `keyturn resume`'s function.
//!
//! Security (see `docs/serve.md`): every request needs the access token (a query
//! parameter once, then an `HttpOnly`, `SameSite=Strict` cookie, or an
//! `Authorization: Bearer` header); a POST authenticated by the cookie must also carry
//! the page's CSRF token in `X-Keyturn-Csrf`; `--read-only` refuses every POST; every
//! response carries a strict Content-Security-Policy, `no-referrer` (the token URL must
//! not leak) and `no-store`. No secret passes through here: the backend's reports and
//! observer calls hold key ids only, and those are masked in pages.

pub mod html;
pub mod view;

use crate::error::{Error, Result};
use crate::fleet::policy::Lifecycle;
use crate::fleet::report::{FleetReport, UserReport};
use crate::journal::RunRecord;
use crate::model::AccessKeyInfo;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use view::{FleetRow, RunView};

pub use crate::fleet::runner::RunObserver;

/// The name of the access-token cookie.
pub const COOKIE: &str = "keyturn_token";
/// The header a cookie-authenticated POST carries the CSRF token in.
pub const CSRF_HEADER: &str = "x-keyturn-csrf";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the server shows and does; [`crate::commands::serve`] has the real one.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// What a fleet run would do now: the runner's dry run (nothing written).
    async fn plan(&self) -> Result<FleetReport>;
    /// One user's keys as IAM lists them, each with its last use.
    async fn keys(&self, account: &str, user: &str) -> Result<Vec<AccessKeyInfo>>;
    /// Every journal run (any order).
    async fn runs(&self) -> Result<Vec<RunRecord>>;
    /// `keyturn run --only ACCOUNT:USER`, reporting progress to `observer`.
    async fn rotate(
        &self,
        account: &str,
        user: &str,
        observer: &dyn RunObserver,
    ) -> Result<FleetReport>;
    /// `keyturn resume RUN_ID`: its exit code and status lines (never stdout).
    async fn resume(&self, run_id: &str) -> Result<(i32, String)>;
    /// The lifecycle and sinks of a rotation block (by name).
    fn rotation(&self, name: &str) -> Option<(Lifecycle, Vec<String>)>;
    /// The run-wide `[policy]` lifecycle (the histogram's max-age line).
    fn defaults(&self) -> Lifecycle;
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    /// The access token (from `--token-file`, or generated).
    pub token: String,
    /// The token came from a file: it is not printed.
    pub token_from_file: bool,
    pub read_only: bool,
}

/// A random 256-bit token, hex.
pub fn random_token() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| Error::Runtime(format!("cannot draw a random token: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A `--listen` address that is not loopback needs `--token-file` (a generated token
/// printed on a terminal is fine for one person at one machine, not for a network).
pub fn check_listen(listen: &SocketAddr, token_file: bool) -> Result<()> {
    if !listen.ip().is_loopback() && !token_file {
        return Err(Error::InvalidInput(format!(
            "--listen {listen} is not a loopback address: anyone who can reach it could try the token; give --token-file FILE (a long random token, readable only by you) or listen on 127.0.0.1"
        )));
    }
    Ok(())
}

/// Progress and outcome of one Rotate now.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Job {
    /// `running`, `finished` or `error`.
    pub state: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Steps as the runner reported them, in order.
    pub steps: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<UserReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

type JobKey = (String, String);

/// A user report as pages show it: key ids masked but for their last 4, also in the
/// reason.
fn masked(r: &UserReport) -> UserReport {
    use crate::secret::{mask_key_id, mask_key_ids_in};
    UserReport {
        reason: mask_key_ids_in(&r.reason),
        new_access_key_id: r.new_access_key_id.as_deref().map(mask_key_id),
        retired_access_key_id: r.retired_access_key_id.as_deref().map(mask_key_id),
        ..r.clone()
    }
}

/// Rotations started from the page, one per (account, user) at a time.
#[derive(Default)]
pub struct Jobs(Mutex<HashMap<JobKey, Job>>);

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobKey, Job>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a job; `false` when one is already running for that user.
    fn start(&self, key: JobKey) -> bool {
        let mut m = self.lock();
        if m.get(&key).is_some_and(|j| j.state == "running") {
            return false;
        }
        m.insert(
            key,
            Job {
                state: "running",
                started_at: OffsetDateTime::now_utc(),
                steps: vec![],
                report: None,
                error: None,
            },
        );
        true
    }

    fn update(&self, key: &JobKey, f: impl FnOnce(&mut Job)) {
        if let Some(j) = self.lock().get_mut(key) {
            f(j);
        }
    }

    pub fn get(&self, key: &JobKey) -> Option<Job> {
        self.lock().get(key).cloned()
    }
}

/// Feeds one job from the runner's observer calls.
struct JobObserver {
    jobs: Arc<Jobs>,
    key: JobKey,
}

impl RunObserver for JobObserver {
    fn user_started(&self, _account: &str, user: &str) {
        self.jobs
            .update(&self.key, |j| j.steps.push(format!("started {user}")));
    }
    fn step(&self, _account: &str, _user: &str, step: &str) {
        let step = crate::secret::mask_key_ids_in(step);
        self.jobs.update(&self.key, |j| j.steps.push(step));
    }
    fn user_finished(&self, _account: &str, report: &UserReport) {
        let r = masked(report);
        self.jobs.update(&self.key, |j| {
            j.steps.push(format!("finished: {}", r.outcome));
            j.report = Some(r);
        });
    }
}

struct App {
    backend: Arc<dyn Backend>,
    settings: ServeSettings,
    csrf: String,
    jobs: Arc<Jobs>,
}

type Shared = Arc<App>;

/// An error as the API and pages answer it.
struct Failure(StatusCode, String);

impl Failure {
    fn of(e: &Error) -> Self {
        let status = match e {
            Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        Failure(
            status,
            crate::secret::mask_key_ids_in(&crate::error::chain(e)),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "Error": self.1 }))).into_response()
    }
}

/// Build the router (tests serve it on their own listener).
pub fn router(backend: Arc<dyn Backend>, settings: ServeSettings) -> Result<Router> {
    let app = Arc::new(App {
        backend,
        settings,
        csrf: random_token()?,
        jobs: Arc::default(),
    });
    Ok(Router::new()
        .route("/", get(fleet_page))
        .route("/users/{account}/{user}", get(user_page))
        .route("/runs", get(runs_page))
        .route(
            "/assets/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/fleet", get(api_fleet))
        .route("/api/users/{account}/{user}", get(api_user))
        .route("/api/users/{account}/{user}/rotate", post(api_rotate))
        .route("/api/users/{account}/{user}/rotation", get(api_rotation))
        .route("/api/runs", get(api_runs))
        .route("/api/runs/{id}/resume", post(api_resume))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app))
}

/// Serve until Ctrl-C. `ready` gets the bound address (the port when 0 was asked).
pub async fn serve(
    backend: Arc<dyn Backend>,
    settings: ServeSettings,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| Error::Runtime(format!("cannot listen on {}: {e}", settings.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Runtime(format!("listener address: {e}")))?;
    let app = router(backend, settings)?;
    ready(addr);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Error::Runtime(format!("HTTP server: {e}")))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

fn query_token(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(|t| {
            percent_encoding::percent_decode_str(t)
                .decode_utf8_lossy()
                .into_owned()
        })
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "Error": message }))).into_response()
}

/// Authentication, CSRF, read-only and the security headers, for every route.
async fn guard(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let mut resp = check(&app, req, next).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn check(app: &App, req: Request, next: Next) -> Response {
    let token = &app.settings.token;
    let headers = req.headers();
    if let Some(t) = bearer_token(headers) {
        if !same(&t, token) {
            return refuse(StatusCode::UNAUTHORIZED, "wrong access token");
        }
        // A header a page cannot be made to send: no CSRF token needed.
        if req.method() == Method::POST && app.settings.read_only {
            return refuse(
                StatusCode::FORBIDDEN,
                "keyturn serve runs --read-only: no rotation or resume from here",
            );
        }
        return next.run(req).await;
    }
    if req.method() == Method::GET {
        if let Some(t) = query_token(req.uri()) {
            if !same(&t, token) {
                return refuse(StatusCode::UNAUTHORIZED, "wrong access token");
            }
            // Trade the URL's token for a cookie and drop it from the address bar.
            let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
            let mut r = Redirect::to(req.uri().path()).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            return r;
        }
    }
    match cookie_token(headers) {
        Some(t) if same(&t, token) => {}
        _ => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "no access token: open the URL keyturn serve printed at start (with ?token=...), or send Authorization: Bearer TOKEN",
            )
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if app.settings.read_only {
            return refuse(
                StatusCode::FORBIDDEN,
                "keyturn serve runs --read-only: no rotation or resume from here",
            );
        }
        let csrf = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same(csrf, &app.csrf) {
            return refuse(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token: send the page's csrf-token in the X-Keyturn-Csrf header",
            );
        }
    }
    next.run(req).await
}

impl App {
    fn chrome<'a>(&'a self, title: &'a str, nav: &'a str) -> html::Chrome<'a> {
        html::Chrome {
            title,
            csrf: &self.csrf,
            read_only: self.settings.read_only,
            nav,
        }
    }

    /// Every fleet row, and the accounts that could not be reached.
    async fn fleet(&self) -> Result<(FleetReport, Vec<FleetRow>, Vec<(String, String)>)> {
        let report = self.backend.plan().await?;
        let runs = self.backend.runs().await?;
        let now = OffsetDateTime::now_utc();
        let mut rows = vec![];
        for (account, name, u) in view::planned_users(&report) {
            let keys = self
                .backend
                .keys(account, &u.user_name)
                .await
                .map_err(|e| crate::error::chain(&e));
            let block = self.backend.rotation(&u.rotation);
            let (lifecycle, sinks) = match &block {
                Some((l, s)) => (Some(l), s.as_slice()),
                None => (None, &[][..]),
            };
            rows.push(view::fleet_row(
                view::RowFacts {
                    account,
                    account_name: name,
                    planned: u,
                    lifecycle,
                    sinks,
                    keys: keys.as_deref().map_err(Clone::clone),
                    runs: &runs,
                },
                now,
            ));
        }
        let errors = report
            .accounts
            .iter()
            .filter_map(|a| {
                a.error.as_ref().map(|e| {
                    (
                        if a.account.is_empty() {
                            a.name.clone()
                        } else {
                            a.account.clone()
                        },
                        crate::secret::mask_key_ids_in(e),
                    )
                })
            })
            .collect();
        Ok((report, rows, errors))
    }

    async fn user(&self, account: &str, user: &str) -> Result<UserView> {
        let (_, rows, _) = self.fleet().await?;
        let row = rows
            .into_iter()
            .find(|r| r.account == account && r.user_name == user);
        let now = OffsetDateTime::now_utc();
        let keys = self
            .backend
            .keys(account, user)
            .await
            .map(|ks| ks.iter().map(|k| view::key_view(k, now)).collect())
            .map_err(|e| crate::secret::mask_key_ids_in(&crate::error::chain(&e)));
        let mut runs: Vec<RunView> = self
            .backend
            .runs()
            .await?
            .iter()
            .filter(|r| r.meta.account == account && r.meta.user_name == user)
            .map(view::run_view)
            .collect();
        view::order_runs(&mut runs);
        let rotation = self.jobs.get(&(account.to_string(), user.to_string()));
        Ok(UserView {
            account: account.to_string(),
            user_name: user.to_string(),
            fleet: row,
            keys,
            runs,
            rotation,
        })
    }

    async fn runs(&self) -> Result<Vec<RunView>> {
        let mut runs: Vec<RunView> = self
            .backend
            .runs()
            .await?
            .iter()
            .map(view::run_view)
            .collect();
        view::order_runs(&mut runs);
        Ok(runs)
    }
}

/// `GET /api/users/{account}/{user}`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct UserView {
    account: String,
    user_name: String,
    /// The fleet row (none: no rotation block selects the user).
    fleet: Option<FleetRow>,
    #[serde(serialize_with = "ser_keys")]
    keys: std::result::Result<Vec<view::KeyView>, String>,
    runs: Vec<RunView>,
    /// The last Rotate now of this server, if any.
    rotation: Option<Job>,
}

fn ser_keys<S: serde::Serializer>(
    k: &std::result::Result<Vec<view::KeyView>, String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match k {
        Ok(v) => v.serialize(s),
        Err(e) => json!({ "Error": e }).serialize(s),
    }
}

async fn fleet_page(State(app): State<Shared>, Query(filter): Query<view::Filter>) -> Response {
    match app.fleet().await {
        Ok((_, rows, errors)) => {
            let shown = view::filter_rows(&rows, &filter);
            let max_age = app.backend.defaults().max_age_days as i64;
            Html(html::fleet_page(
                &app.chrome("Fleet", "fleet"),
                &rows,
                &shown,
                &filter,
                &errors,
                max_age,
            ))
            .into_response()
        }
        Err(e) => error_page(&app, &e),
    }
}

fn error_page(app: &App, e: &Error) -> Response {
    let f = Failure::of(e);
    (f.0, Html(html::error_page(&app.chrome("Error", ""), &f.1))).into_response()
}

async fn user_page(
    State(app): State<Shared>,
    Path((account, user)): Path<(String, String)>,
) -> Response {
    match app.user(&account, &user).await {
        Ok(v) => Html(html::user_page(
            &app.chrome(&v.user_name, "fleet"),
            v.fleet.as_ref(),
            &account,
            &user,
            &v.keys,
            &v.runs,
        ))
        .into_response(),
        Err(e) => error_page(&app, &e),
    }
}

async fn runs_page(State(app): State<Shared>) -> Response {
    match app.runs().await {
        Ok(runs) => Html(html::runs_page(&app.chrome("Runs", "runs"), &runs)).into_response(),
        Err(e) => error_page(&app, &e),
    }
}

async fn api_fleet(State(app): State<Shared>) -> std::result::Result<Response, Failure> {
    let (report, rows, _) = app.fleet().await.map_err(|e| Failure::of(&e))?;
    Ok(Json(json!({
        "SchemaVersion": 1,
        "GeneratedAt": crate::printer::rfc3339(OffsetDateTime::now_utc()),
        "Users": rows,
        "DryRun": report,
    }))
    .into_response())
}

async fn api_user(
    State(app): State<Shared>,
    Path((account, user)): Path<(String, String)>,
) -> std::result::Result<Response, Failure> {
    let v = app
        .user(&account, &user)
        .await
        .map_err(|e| Failure::of(&e))?;
    Ok(Json(v).into_response())
}

async fn api_runs(State(app): State<Shared>) -> std::result::Result<Response, Failure> {
    let runs = app.runs().await.map_err(|e| Failure::of(&e))?;
    Ok(Json(json!({ "Runs": runs })).into_response())
}

async fn api_rotation(
    State(app): State<Shared>,
    Path((account, user)): Path<(String, String)>,
) -> Response {
    match app.jobs.get(&(account, user)) {
        Some(j) => Json(j).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            "no rotation of this user was started here",
        ),
    }
}

async fn api_rotate(
    State(app): State<Shared>,
    Path((account, user)): Path<(String, String)>,
) -> Response {
    let key = (account.clone(), user.clone());
    if !app.jobs.start(key.clone()) {
        return refuse(
            StatusCode::CONFLICT,
            "already running: a rotation of this user started here has not finished",
        );
    }
    let task_app = app.clone();
    let task_key = key.clone();
    tokio::spawn(async move {
        let key = task_key;
        let observer = JobObserver {
            jobs: task_app.jobs.clone(),
            key: key.clone(),
        };
        let result = task_app.backend.rotate(&account, &user, &observer).await;
        task_app.jobs.update(&key, |j| match result {
            Ok(report) => {
                let mine = view::planned_users(&report)
                    .find(|(a, n, u)| (*a == account || *n == account) && u.user_name == user)
                    .map(|(_, _, u)| masked(u));
                match mine {
                    Some(u) => {
                        j.state = "finished";
                        j.report = Some(u);
                    }
                    None => {
                        j.state = "error";
                        let why = report
                            .accounts
                            .iter()
                            .find_map(|a| a.error.clone())
                            .unwrap_or_else(|| "no rotation block selects this user".into());
                        j.error = Some(crate::secret::mask_key_ids_in(&why));
                    }
                }
            }
            Err(e) => {
                j.state = "error";
                j.error = Some(crate::secret::mask_key_ids_in(&crate::error::chain(&e)));
            }
        });
    });
    let poll = format!(
        "/api/users/{}/{}/rotation",
        html::seg(&key.0),
        html::seg(&key.1)
    );
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, poll.clone())],
        Json(json!({ "State": "running", "Poll": poll })),
    )
        .into_response()
}

async fn api_resume(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    match app.backend.resume(&id).await {
        Ok((code, messages)) => Json(json!({
            "ExitCode": code,
            "Messages": crate::secret::mask_key_ids_in(&messages),
        }))
        .into_response(),
        Err(e) => Failure::of(&e).into_response(),
    }
}

#[cfg(test)]
mod tests;
