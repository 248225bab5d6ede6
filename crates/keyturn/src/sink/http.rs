//! The one HTTP client of the service sinks (Informatica, GitHub, Vault, Infisical,
//! GitLab), so every one of them gets the same safety rules instead of five variants:
//!
//! - timeouts on connecting and on every request, no redirects (a redirect would take a
//!   token or a secret body to a place the settings file did not name);
//! - `User-Agent: keyturn/<version>` on every request (GitHub refuses requests without);
//! - bounded retries: a refused request (429, or a 403 that carries rate-limit headers)
//!   is retried after the wait the service asks for (`Retry-After`, `x-ratelimit-reset`,
//!   `RateLimit-Reset`) when that wait is short; 5xx answers and lost connections are
//!   retried only for requests that are safe to repeat;
//! - errors that never carry a secret: tokens, passwords, session ids and the new key
//!   are registered with [`Http::protect`] and masked in every message built here;
//!   header values holding them are marked sensitive; a URL that would carry one is
//!   refused; log lines name the method, the path and the status only;
//! - an honest answer to "may the service have applied this?" ([`HttpError::maybe_applied`]),
//!   which is what the sinks turn into [`super::Written`].
//!
//! Bodies that carry secrets are built in and read into zeroizing buffers; the HTTP
//! stack's own transient buffers are outside keyturn's control.

use crate::secret::SecretKey;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use zeroize::{Zeroize, Zeroizing};

/// Connecting to a service takes at most this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One request (connect, send, receive the whole answer) takes at most this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per request, the first one included.
pub const MAX_ATTEMPTS: u32 = 4;
/// The longest wait keyturn accepts from a rate limit before giving up on the request
/// (a primary GitHub limit can ask for an hour; the run then fails and is resumed later).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Largest answer body read (the APIs answer a few kB).
const MAX_BODY: usize = 4 << 20;
/// How much of a service's error text goes into a message.
const MAX_DETAIL: usize = 300;

/// `keyturn/<version>`.
pub fn user_agent() -> String {
    format!("keyturn/{}", env!("CARGO_PKG_VERSION"))
}

/// Parse a service's base URL from the settings: `https://`, or `http://` only to a
/// loopback address (a local test server, a Vault agent on the same host); never with
/// a user name or password in it, a query or a fragment.
pub fn base_url(what: &str, s: &str) -> std::result::Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("{what} {s:?} is not a URL: {e}"))?;
    check_scheme(what, &url)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{what} must not carry a user name or password; keyturn reads credentials from *_env / *_file settings"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{what} {s:?} must not have a query or a fragment"));
    }
    Ok(url)
}

/// `https`, or `http` to a loopback host.
pub fn check_scheme(what: &str, url: &Url) -> std::result::Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(format!(
            "{what} {} uses plain http to a remote host, which would send tokens and the new key unencrypted; use https (http is accepted for 127.0.0.1, ::1 and localhost only)",
            url.as_str()
        )),
        other => Err(format!("{what}: scheme {other:?} is not http(s)")),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// `base` with `segments` appended, each percent-encoded as one path segment (so
/// `group/app` becomes `group%2Fapp`, as GitLab wants a namespaced path).
pub fn join(base: &Url, segments: &[&str]) -> Url {
    let mut u = base.clone();
    {
        let mut p = u.path_segments_mut().expect("http(s) URLs have a path");
        p.pop_if_empty();
        for s in segments {
            p.push(s);
        }
    }
    u
}

/// `base` with the `/`-separated `path` appended segment by segment (a Vault mount
/// `team/kv`, a path `ci/{user}`).
pub fn join_path(base: &Url, path: &str) -> Url {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    join(base, &segs)
}

/// One request to send.
pub struct Request {
    method: Method,
    url: Url,
    /// A short human label (`GET connection 0100000B000000000002`), no secret.
    what: String,
    headers: HeaderMap,
    body: Option<bytes::Bytes>,
    /// Safe to send twice (reads, PUT-style writes of a whole value).
    idempotent: bool,
    /// A header value that could not be used (reported when sent).
    invalid: Option<String>,
    /// Non-2xx statuses the caller handles itself (a 404 that means "absent").
    allowed: Vec<u16>,
}

impl Request {
    pub fn new(method: Method, url: Url, what: impl Into<String>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        Self {
            idempotent: matches!(
                method,
                Method::GET | Method::PUT | Method::DELETE | Method::HEAD
            ),
            method,
            url,
            what: what.into(),
            headers,
            body: None,
            invalid: None,
            allowed: Vec::new(),
        }
    }

    pub fn get(url: Url, what: impl Into<String>) -> Self {
        Self::new(Method::GET, url, what)
    }

    pub fn post(url: Url, what: impl Into<String>) -> Self {
        Self::new(Method::POST, url, what)
    }

    pub fn put(url: Url, what: impl Into<String>) -> Self {
        Self::new(Method::PUT, url, what)
    }

    pub fn patch(url: Url, what: impl Into<String>) -> Self {
        Self::new(Method::PATCH, url, what)
    }

    /// A plain header.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        match HeaderValue::from_str(value) {
            Ok(v) => {
                self.headers.insert(HeaderName::from_static(name), v);
            }
            Err(_) => self.invalid = Some(format!("the {name} header value is not valid")),
        }
        self
    }

    /// A header carrying a credential (`Authorization`, `X-Vault-Token`, `icSessionId`):
    /// marked sensitive, so it never shows in `Debug` output of the HTTP stack.
    pub fn secret_header(mut self, name: &'static str, prefix: &str, secret: &SecretKey) -> Self {
        let text = Zeroizing::new(format!("{prefix}{}", secret.expose()));
        match HeaderValue::from_str(&text) {
            Ok(mut v) => {
                v.set_sensitive(true);
                self.headers.insert(HeaderName::from_static(name), v);
            }
            Err(_) => {
                self.invalid = Some(format!(
                    "the credential for the {name} header contains characters an HTTP header cannot carry (a stray newline or space in its file or variable?)"
                ))
            }
        }
        self
    }

    /// A JSON body, serialized into a zeroizing buffer that the HTTP stack borrows.
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Self {
        let buf = Zeroizing::new(serde_json::to_vec(body).expect("JSON bodies serialize"));
        self.body = Some(bytes::Bytes::from_owner(buf));
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self
    }

    /// This write is safe to repeat after an ambiguous failure (a 5xx, a lost answer):
    /// it sets values rather than adding something.
    pub fn idempotent(mut self, yes: bool) -> Self {
        self.idempotent = yes;
        self
    }

    /// Answer `status` as a [`Response`] instead of an error.
    pub fn allow(mut self, status: u16) -> Self {
        self.allowed.push(status);
        self
    }

    pub fn what(&self) -> &str {
        &self.what
    }
}

/// An answer with a 2xx status.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Zeroizing<Vec<u8>>,
    what: String,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Response({} {}, <body>)", self.what, self.status)
    }
}

impl Response {
    /// The body as `T`. A decoding error never quotes the body (it may hold secrets).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| self.decode_error(&e))
    }

    /// The body as JSON whose strings are wiped when dropped.
    pub fn secret_json(&self) -> Result<SecretJson, HttpError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(SecretJson(serde_json::Value::Null));
        }
        self.json().map(SecretJson)
    }

    fn decode_error(&self, e: &serde_json::Error) -> HttpError {
        HttpError {
            what: self.what.clone(),
            failure: Failure::Decode,
            status: Some(self.status.as_u16()),
            detail: format!(
                "the answer is not the JSON keyturn expects ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
            maybe_applied: false,
        }
    }

    /// The service's clock at the time of the answer (the `Date` header).
    pub fn date(&self) -> Option<OffsetDateTime> {
        self.headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
    }
}

/// JSON that may hold secrets: its strings are overwritten with zeros when dropped,
/// and `Debug` does not show it.
#[derive(Default)]
pub struct SecretJson(pub serde_json::Value);

impl fmt::Debug for SecretJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretJson(<redacted>)")
    }
}

impl Drop for SecretJson {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl std::ops::Deref for SecretJson {
    type Target = serde_json::Value;
    fn deref(&self) -> &serde_json::Value {
        &self.0
    }
}

impl std::ops::DerefMut for SecretJson {
    fn deref_mut(&mut self) -> &mut serde_json::Value {
        &mut self.0
    }
}

/// Overwrite every string inside `v` with zeros.
pub fn wipe(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(wipe),
        serde_json::Value::Object(m) => m.values_mut().for_each(wipe),
        _ => {}
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The service answered with a non-2xx status (not a rate limit).
    Status,
    /// The service refused the request for its rate limit, for longer than keyturn waits.
    RateLimited,
    /// No connection could be made (nothing was sent).
    Connect,
    /// The request timed out, or the connection broke (it may have been performed).
    Transport,
    /// The answer could not be read as expected.
    Decode,
    /// The service answered with a redirect, which keyturn does not follow.
    Redirect,
    /// keyturn refused to send it (a credential that is not a valid header, a URL that
    /// would carry a secret).
    Refused,
}

/// A failed request. Its text names the request and carries the service's own error
/// message, with every protected secret masked.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub what: String,
    pub failure: Failure,
    pub status: Option<u16>,
    /// The service's message (or the transport error), masked.
    pub detail: String,
    /// The service may have performed the request (a 5xx, a timeout, a lost answer).
    pub maybe_applied: bool,
}

impl HttpError {
    pub fn is_status(&self, s: u16) -> bool {
        self.failure == Failure::Status && self.status == Some(s)
    }

    /// A 4xx answer: the service looked at the request and refused it.
    pub fn is_client_error(&self) -> bool {
        self.failure == Failure::Status && self.status.is_some_and(|s| (400..500).contains(&s))
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.failure, self.status) {
            (Failure::Status | Failure::RateLimited | Failure::Redirect, Some(s)) => {
                let reason = StatusCode::from_u16(s)
                    .ok()
                    .and_then(|c| c.canonical_reason())
                    .unwrap_or("");
                write!(f, "{}: HTTP {s} {reason}", self.what)?;
            }
            (Failure::Connect, _) => write!(f, "{}: could not connect", self.what)?,
            (Failure::Transport, _) => write!(f, "{}: the request failed", self.what)?,
            _ => write!(f, "{}", self.what)?,
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Pulls a service's own error message out of an error body (each API has its shape).
pub type Describe = fn(&serde_json::Value) -> Option<String>;

/// One reqwest client for the process: every sink of a fleet run shares its
/// connection pool and TLS setup (a client is cheap to clone but costly to build:
/// about 35 ms each in a debug build, mostly loading the root certificates). keyturn
/// runs one tokio runtime per process; pooled connections belong to it.
fn shared_client() -> std::result::Result<reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<std::result::Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .user_agent(user_agent())
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("cannot set up the HTTP client: {e}"))
        })
        .clone()
}

/// The client of one sink.
pub struct Http {
    client: reqwest::Client,
    sink: String,
    describe: Describe,
    protected: Mutex<Vec<SecretKey>>,
}

impl Http {
    pub fn new(sink: &str, describe: Describe) -> std::result::Result<Self, String> {
        Ok(Self {
            client: shared_client()?,
            sink: sink.to_string(),
            describe,
            protected: Mutex::new(Vec::new()),
        })
    }

    /// Mask `secret` in every message this client builds from now on.
    pub fn protect(&self, secret: &SecretKey) {
        if secret.expose().len() < 4 {
            return;
        }
        let mut p = self.protected.lock().expect("lock");
        if !p.iter().any(|s| s == secret) {
            p.push(secret.clone());
        }
    }

    /// `text` with every protected secret replaced by `<redacted>`.
    pub fn mask(&self, text: &str) -> String {
        let p = self.protected.lock().expect("lock");
        mask_all(text, p.iter().map(SecretKey::expose))
    }

    fn carries_secret(&self, text: &str) -> bool {
        let p = self.protected.lock().expect("lock");
        p.iter().any(|s| text.contains(s.expose()))
    }

    /// Send `req`, retrying as the module documentation says.
    pub async fn send(&self, req: Request) -> Result<Response, HttpError> {
        let fail = |failure, status, detail: String, maybe_applied| HttpError {
            what: req.what.clone(),
            failure,
            status,
            detail: self.mask(&detail),
            maybe_applied,
        };
        if let Some(m) = &req.invalid {
            return Err(fail(Failure::Refused, None, m.clone(), false));
        }
        if self.carries_secret(req.url.as_str()) {
            return Err(fail(
                Failure::Refused,
                None,
                "keyturn refused to send a request whose URL would carry a secret".into(),
                false,
            ));
        }
        let mut ambiguous = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut rb = self
                .client
                .request(req.method.clone(), req.url.clone())
                .headers(req.headers.clone());
            if let Some(b) = &req.body {
                rb = rb.body(b.clone());
            }
            let started = Instant::now();
            let result = rb.send().await;
            let ms = started.elapsed().as_millis();
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    let outcome = if e.is_connect() {
                        Outcome::NoConnection
                    } else {
                        Outcome::Lost
                    };
                    tracing::debug!(
                        sink = %self.sink,
                        "{} {} -> {:?} after {ms} ms (attempt {attempt})",
                        req.method,
                        req.url.path(),
                        outcome
                    );
                    ambiguous |= outcome.ambiguous();
                    if let Next::Retry(w) = next(outcome, attempt, req.idempotent, now()) {
                        tokio::time::sleep(w).await;
                        continue;
                    }
                    let (failure, what) = match outcome {
                        Outcome::NoConnection => {
                            (Failure::Connect, crate::error::chain(&e.without_url()))
                        }
                        _ if e.is_timeout() => (
                            Failure::Transport,
                            format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
                        ),
                        _ => (Failure::Transport, crate::error::chain(&e.without_url())),
                    };
                    return Err(fail(failure, None, what, ambiguous));
                }
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            tracing::debug!(
                sink = %self.sink,
                "{} {} -> {} in {ms} ms (attempt {attempt})",
                req.method,
                req.url.path(),
                status.as_u16()
            );
            let body = match read_body(resp).await {
                Ok(b) => b,
                Err(e) => {
                    // The status arrived, the body did not: the request may well have
                    // been performed; keyturn just cannot see the answer.
                    ambiguous = true;
                    if let Next::Retry(w) = next(Outcome::Lost, attempt, req.idempotent, now()) {
                        tokio::time::sleep(w).await;
                        continue;
                    }
                    return Err(fail(Failure::Transport, Some(status.as_u16()), e, true));
                }
            };
            if status.is_success() || req.allowed.contains(&status.as_u16()) {
                return Ok(Response {
                    status,
                    headers,
                    body,
                    what: req.what.clone(),
                });
            }
            let outcome = Outcome::Status(status, &headers);
            ambiguous |= outcome.ambiguous();
            let detail = self.detail(&body);
            let sep = if detail.is_empty() { "" } else { "; " };
            let limited = is_rate_limited(status, &headers);
            match next(outcome, attempt, req.idempotent, now()) {
                Next::Retry(w) => {
                    if limited {
                        tracing::info!(
                            sink = %self.sink,
                            "{}: rate limited (HTTP {}); waiting {} ms as the service asks",
                            req.what,
                            status.as_u16(),
                            w.as_millis()
                        );
                    }
                    tokio::time::sleep(w).await;
                    continue;
                }
                Next::WaitTooLong(w) => {
                    return Err(fail(
                        Failure::RateLimited,
                        Some(status.as_u16()),
                        format!(
                            "{detail}{sep}the service's rate limit asks to wait {} s, longer than keyturn waits ({} s); run again after that",
                            w.as_secs(),
                            MAX_WAIT.as_secs()
                        ),
                        ambiguous,
                    ))
                }
                Next::Fail if limited => {
                    return Err(fail(
                        Failure::RateLimited,
                        Some(status.as_u16()),
                        format!("{detail}{sep}still rate limited after {attempt} attempts"),
                        ambiguous,
                    ))
                }
                Next::Fail if status.is_redirection() => {
                    let to = headers
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|l| Url::parse(l).ok())
                        .and_then(|u| u.host_str().map(str::to_string))
                        .map(|h| format!(" to {h}"))
                        .unwrap_or_default();
                    return Err(fail(
                        Failure::Redirect,
                        Some(status.as_u16()),
                        format!("the service redirects{to}; keyturn does not follow redirects with credentials: set the service's final URL"),
                        ambiguous,
                    ));
                }
                Next::Fail => {
                    return Err(fail(
                        Failure::Status,
                        Some(status.as_u16()),
                        detail,
                        ambiguous,
                    ))
                }
            }
        }
    }

    /// The service's message from an error body: its own shape first, else the text.
    fn detail(&self, body: &[u8]) -> String {
        let mut text = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(mut v) => {
                let d = (self.describe)(&v);
                wipe(&mut v);
                d.unwrap_or_default()
            }
            Err(_) => String::from_utf8_lossy(body)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or_default()
                .to_string(),
        };
        if text.chars().count() > MAX_DETAIL {
            text = text.chars().take(MAX_DETAIL).collect::<String>() + "…";
        }
        text
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// How one attempt ended, when it did not succeed.
#[derive(Debug, Clone, Copy)]
enum Outcome<'h> {
    /// No connection was made: nothing was sent.
    NoConnection,
    /// Sent, but no (complete) answer came back: it may have been performed.
    Lost,
    /// The service answered with this status.
    Status(StatusCode, &'h HeaderMap),
}

impl Outcome<'_> {
    /// May the service have performed the request?
    fn ambiguous(&self) -> bool {
        match self {
            Outcome::NoConnection => false,
            Outcome::Lost => true,
            Outcome::Status(s, _) => s.is_server_error(),
        }
    }
}

/// What to do after an attempt that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Retry(Duration),
    Fail,
    /// Rate limited for longer than keyturn waits.
    WaitTooLong(Duration),
}

/// The retry policy (pure, so it is unit-tested): refusals (no connection, rate
/// limits) are retried for every request, ambiguous failures (5xx, a lost answer) only
/// for requests that are safe to repeat; at most [`MAX_ATTEMPTS`] attempts, waits as
/// the service asks (up to [`MAX_WAIT`]) or a short backoff.
fn next(outcome: Outcome<'_>, attempt: u32, idempotent: bool, now: OffsetDateTime) -> Next {
    let last = attempt >= MAX_ATTEMPTS;
    match outcome {
        Outcome::NoConnection if !last => Next::Retry(backoff(attempt)),
        Outcome::Lost if !last && idempotent => Next::Retry(backoff(attempt)),
        Outcome::Status(s, h) if is_rate_limited(s, h) => match rate_limit_wait(h, now) {
            Some(w) if w > MAX_WAIT => Next::WaitTooLong(w),
            _ if last => Next::Fail,
            w => Next::Retry(w.unwrap_or_else(|| backoff(attempt))),
        },
        Outcome::Status(s, h) if s.is_server_error() && idempotent && !last => Next::Retry(
            retry_after(h, now)
                .filter(|w| *w <= MAX_WAIT)
                .unwrap_or_else(|| backoff(attempt)),
        ),
        _ => Next::Fail,
    }
}

async fn read_body(mut resp: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut out = Zeroizing::new(Vec::new());
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if out.len() + c.len() > MAX_BODY {
                    return Err(format!("the answer is larger than {} MB", MAX_BODY >> 20));
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(crate::error::chain(&e.without_url())),
        }
    }
}

/// 250 ms, 500 ms, 1 s, ... (capped at 4 s) before attempt `attempt + 1`.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.saturating_sub(1).min(4)).min(Duration::from_secs(4))
}

/// 429, or a 403 that carries rate-limit signals (GitHub answers its limits with 403
/// plus `x-ratelimit-remaining: 0` or `retry-after`).
pub fn is_rate_limited(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (headers.contains_key(reqwest::header::RETRY_AFTER)
                || header_str(headers, "x-ratelimit-remaining") == Some("0")))
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    let v = header_str(headers, "retry-after")?;
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    parse_http_date(v).map(|t| until(t, now))
}

/// How long a rate limit asks to wait: `Retry-After`, else the reset time of GitHub's
/// (`x-ratelimit-reset`) or GitLab's (`RateLimit-Reset`) headers when nothing remains.
pub fn rate_limit_wait(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    if let Some(w) = retry_after(headers, now) {
        return Some(w);
    }
    for (remaining, reset) in [
        ("x-ratelimit-remaining", "x-ratelimit-reset"),
        ("ratelimit-remaining", "ratelimit-reset"),
    ] {
        if header_str(headers, remaining) == Some("0") {
            if let Some(epoch) = header_str(headers, reset).and_then(|r| r.parse::<i64>().ok()) {
                let t = OffsetDateTime::from_unix_timestamp(epoch).ok()?;
                // The reset is a whole second; wait until it has passed.
                return Some(until(t, now) + Duration::from_millis(500));
            }
        }
    }
    None
}

fn until(t: OffsetDateTime, now: OffsetDateTime) -> Duration {
    let d = t - now;
    if d.is_negative() {
        Duration::ZERO
    } else {
        Duration::from_millis(d.whole_milliseconds().min(u64::MAX as i128) as u64)
    }
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn parse_http_date(s: &str) -> Option<OffsetDateTime> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(s.trim(), &fmt)
        .ok()
        .map(|t| t.assume_utc())
}

/// `text` with each of `secrets` (and its JSON-escaped form) replaced by `<redacted>`.
pub fn mask_all<'a>(text: &str, secrets: impl Iterator<Item = &'a str>) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if s.len() < 4 {
            continue;
        }
        out = out.replace(s, "<redacted>");
        let escaped = s.replace('/', "\\/");
        if escaped != s {
            out = out.replace(&escaped, "<redacted>");
        }
    }
    out
}

/// Is `v` a JSON string equal to `want`?
pub fn str_is(v: Option<&serde_json::Value>, want: &str) -> bool {
    v.and_then(|v| v.as_str()) == Some(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn base_urls_need_https_except_on_loopback() {
        assert!(base_url("url", "https://api.github.com").is_ok());
        assert!(base_url("url", "http://127.0.0.1:8200").is_ok());
        assert!(base_url("url", "http://localhost:8200").is_ok());
        assert!(base_url("url", "http://[::1]:8200").is_ok());
        let e = base_url("url", "http://vault.example.com").unwrap_err();
        assert!(e.contains("plain http"), "{e}");
        assert!(base_url("url", "https://u:p@gitlab.example.com")
            .unwrap_err()
            .contains("user name or password"));
        assert!(base_url("url", "https://x.example.com/?private_token=1").is_err());
        assert!(base_url("url", "ftp://x.example.com").is_err());
        assert!(base_url("url", "not a url").is_err());
    }

    #[test]
    fn join_encodes_each_segment() {
        let b = Url::parse("https://gitlab.example.com/").unwrap();
        let u = join(
            &b,
            &["api", "v4", "projects", "group/app", "variables", "A B"],
        );
        assert_eq!(
            u.as_str(),
            "https://gitlab.example.com/api/v4/projects/group%2Fapp/variables/A%20B"
        );
        let b = Url::parse("https://vault.example.com:8200").unwrap();
        assert_eq!(
            join_path(&join(&b, &["v1"]), "/team/kv//ci/bob/").as_str(),
            "https://vault.example.com:8200/v1/team/kv/ci/bob"
        );
        // A base with a path keeps it (GitHub Enterprise: https://host/api/v3).
        let b = Url::parse("https://ghe.example.com/api/v3").unwrap();
        assert_eq!(
            join(&b, &["repos", "o", "r"]).as_str(),
            "https://ghe.example.com/api/v3/repos/o/r"
        );
    }

    #[test]
    fn rate_limits_are_recognized_and_their_waits_read() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert!(is_rate_limited(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new()
        ));
        assert!(!is_rate_limited(StatusCode::FORBIDDEN, &HeaderMap::new()));
        let gh = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000030"),
        ]);
        assert!(is_rate_limited(StatusCode::FORBIDDEN, &gh));
        assert_eq!(
            rate_limit_wait(&gh, now),
            Some(Duration::from_millis(30_500))
        );
        let secondary = headers(&[("retry-after", "7"), ("x-ratelimit-remaining", "12")]);
        assert!(is_rate_limited(StatusCode::FORBIDDEN, &secondary));
        assert_eq!(
            rate_limit_wait(&secondary, now),
            Some(Duration::from_secs(7))
        );
        let gl = headers(&[
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "1700000002"),
        ]);
        assert_eq!(
            rate_limit_wait(&gl, now),
            Some(Duration::from_millis(2_500))
        );
        let date = headers(&[("retry-after", "Tue, 14 Nov 2023 22:13:40 GMT")]);
        assert_eq!(rate_limit_wait(&date, now), Some(Duration::from_secs(20)));
        // A reset in the past means: go now.
        let past = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")]);
        assert_eq!(
            rate_limit_wait(&past, now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(rate_limit_wait(&HeaderMap::new(), now), None);
    }

    #[test]
    fn the_retry_policy_retries_refusals_always_and_ambiguity_only_when_safe() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let none = HeaderMap::new();
        let st = |c: u16| StatusCode::from_u16(c).unwrap();
        // Nothing was sent: always retried, until the attempts run out.
        assert_eq!(
            next(Outcome::NoConnection, 1, false, t),
            Next::Retry(Duration::from_millis(250))
        );
        assert_eq!(
            next(Outcome::NoConnection, MAX_ATTEMPTS, true, t),
            Next::Fail
        );
        // Sent, answer lost: only a request that is safe to repeat.
        assert_eq!(
            next(Outcome::Lost, 2, true, t),
            Next::Retry(Duration::from_millis(500))
        );
        assert_eq!(next(Outcome::Lost, 1, false, t), Next::Fail);
        // 5xx: the same, honouring Retry-After.
        let ra = headers(&[("retry-after", "2")]);
        assert_eq!(
            next(Outcome::Status(st(503), &ra), 1, true, t),
            Next::Retry(Duration::from_secs(2))
        );
        assert_eq!(
            next(Outcome::Status(st(500), &none), 1, false, t),
            Next::Fail
        );
        assert_eq!(
            next(Outcome::Status(st(502), &none), MAX_ATTEMPTS, true, t),
            Next::Fail
        );
        // Rate limits were refusals: retried for any request, waiting as told.
        assert_eq!(
            next(Outcome::Status(st(429), &ra), 1, false, t),
            Next::Retry(Duration::from_secs(2))
        );
        let long = headers(&[("retry-after", "3600")]);
        assert_eq!(
            next(Outcome::Status(st(429), &long), 1, true, t),
            Next::WaitTooLong(Duration::from_secs(3600))
        );
        assert_eq!(
            next(Outcome::Status(st(429), &ra), MAX_ATTEMPTS, true, t),
            Next::Fail
        );
        // Other answers are final.
        for c in [400, 401, 403, 404, 409, 422] {
            assert_eq!(
                next(Outcome::Status(st(c), &none), 1, true, t),
                Next::Fail,
                "{c}"
            );
        }
        assert!(Outcome::Status(st(500), &none).ambiguous());
        assert!(!Outcome::Status(st(429), &none).ambiguous());
        assert!(!Outcome::NoConnection.ambiguous());
        assert!(Outcome::Lost.ambiguous());
    }

    /// A one-thread HTTP/1.1 server answering from a script and recording request heads.
    fn script_server(
        answers: Vec<(u16, &'static str, &'static str)>,
    ) -> (Url, std::sync::Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let heads = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            let mut answers = std::collections::VecDeque::from(answers);
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                loop {
                    let mut head = String::new();
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        head.push_str(&line);
                    }
                    if head.is_empty() {
                        break;
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    seen.lock().unwrap().push(head);
                    let Some((status, extra, body)) = answers.pop_front() else {
                        return;
                    };
                    let _ = write!(
                        w,
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
                        body.len()
                    );
                }
            }
        });
        (url, heads)
    }

    #[tokio::test]
    async fn send_retries_as_the_policy_says_and_masks_secrets() {
        fn describe(v: &serde_json::Value) -> Option<String> {
            v.get("error").and_then(|e| e.as_str()).map(str::to_string)
        }
        let (base, heads) = script_server(vec![
            (503, "", "{}"),
            (200, "", "{\"ok\": true}"),
            (500, "", "{\"error\": \"boom\"}"),
            (429, "retry-after: 0\r\n", "{}"),
            (201, "", "{}"),
            (401, "", "{\"error\": \"bad token tok-SECRET-123456\"}"),
        ]);
        let http = Http::new("t", describe).unwrap();
        let token = SecretKey::new("tok-SECRET-123456");
        http.protect(&token);
        // A read: the 503 is retried.
        let r = http
            .send(Request::get(join(&base, &["a"]), "GET a"))
            .await
            .unwrap();
        assert_eq!(r.json::<serde_json::Value>().unwrap()["ok"], true);
        // A write that is not safe to repeat: a 500 is final and may have been applied.
        let e = http
            .send(Request::post(join(&base, &["b"]), "POST b").json(&serde_json::json!({})))
            .await
            .unwrap_err();
        assert!(e.maybe_applied && e.is_status(500));
        assert_eq!(
            e.to_string(),
            "POST b: HTTP 500 Internal Server Error: boom"
        );
        // A rate limit is retried even for such a write; it was a refusal.
        let r = http
            .send(Request::post(join(&base, &["c"]), "POST c").json(&serde_json::json!({})))
            .await
            .unwrap();
        assert_eq!(r.status.as_u16(), 201);
        // The service echoing a token: masked.
        let e = http
            .send(Request::get(join(&base, &["d"]), "GET d").secret_header(
                "authorization",
                "Bearer ",
                &token,
            ))
            .await
            .unwrap_err();
        assert!(!e.maybe_applied);
        assert_eq!(e.detail, "bad token <redacted>");
        // A URL that would carry a secret is never sent.
        let e = http
            .send(Request::get(join(&base, &["tok-SECRET-123456"]), "GET e"))
            .await
            .unwrap_err();
        assert_eq!(e.failure, Failure::Refused);
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 6, "{heads:?}");
        assert!(heads
            .iter()
            .all(|h| h.contains(&format!("user-agent: {}", user_agent()))));
        assert!(heads[0].starts_with("GET /a ") && heads[1].starts_with("GET /a "));
        assert!(heads[2].starts_with("POST /b "));
        assert!(heads[3].starts_with("POST /c ") && heads[4].starts_with("POST /c "));
    }

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.unix_timestamp(), 784111777);
        assert!(parse_http_date("yesterday").is_none());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(9), Duration::from_secs(4));
    }

    #[test]
    fn masking_covers_escaped_forms() {
        let s = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let text = format!("got {s} and {}", s.replace('/', "\\/"));
        let m = mask_all(&text, [s].into_iter());
        assert_eq!(m, "got <redacted> and <redacted>");
        assert_eq!(
            mask_all("abc", ["ab"].into_iter()),
            "abc",
            "too short to mask"
        );
    }

    #[test]
    fn secret_json_is_wiped_and_not_shown() {
        let mut v = serde_json::json!({"a": "secret-value", "b": ["x", {"c": "y"}], "n": 1});
        wipe(&mut v);
        assert_eq!(v["a"], "");
        assert_eq!(v["b"][1]["c"], "");
        assert_eq!(v["n"], 1);
        let s = SecretJson(serde_json::json!({"k": "v"}));
        assert_eq!(format!("{s:?}"), "SecretJson(<redacted>)");
    }

    #[test]
    fn errors_show_the_request_status_and_detail() {
        let e = HttpError {
            what: "GET secret ci/bob".into(),
            failure: Failure::Status,
            status: Some(403),
            detail: "permission denied".into(),
            maybe_applied: false,
        };
        assert_eq!(
            e.to_string(),
            "GET secret ci/bob: HTTP 403 Forbidden: permission denied"
        );
        assert!(e.is_client_error());
        assert!(e.is_status(403));
    }

    #[test]
    fn secret_headers_refuse_bad_values_without_showing_them() {
        let url = Url::parse("https://example.com").unwrap();
        let r = Request::get(url, "GET x").secret_header(
            "authorization",
            "Bearer ",
            &SecretKey::new("tok\nen-value"),
        );
        let m = r.invalid.unwrap();
        assert!(!m.contains("en-value"), "{m}");
    }
}
