//! Test bed: a fresh local AWS emulator per test, and the real `keyturn` binary.
//!
//! Every test starts its own emulator (`emulator/keyturn_emulator.py`, moto with
//! keyturn's realism fixes) on a free loopback port with auth enforced, so tests run
//! in parallel without sharing state. The emulator exits when the test process dies
//! (it watches its stdin). Python comes from `KEYTURN_PYTHON`, else the repo's
//! `.venv` (created by `make test`).
#![allow(dead_code)]

pub mod services;

use aws_credential_types::Credentials;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;

pub const ACCOUNT: &str = "123456789012";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("KEYTURN_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no emulator Python: run `make test` (creates .venv with moto) or set KEYTURN_PYTHON"
    );
    venv
}

/// A tokio runtime for the SDK calls the tests make directly.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

#[derive(Clone, Debug)]
pub struct Creds {
    pub id: String,
    pub secret: String,
    pub token: Option<String>,
}

/// The result of one `keyturn` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// `export AWS_ACCESS_KEY_ID=...` / `export AWS_SECRET_ACCESS_KEY=...` values.
    pub fn env_creds(&self) -> Creds {
        let get = |name: &str| {
            self.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| {
                    panic!(
                        "no {name} in stdout:\n{}\nstderr:\n{}",
                        self.stdout, self.stderr
                    )
                })
                .trim_matches('\'')
                .to_string()
        };
        Creds {
            id: get("AWS_ACCESS_KEY_ID"),
            secret: get("AWS_SECRET_ACCESS_KEY"),
            token: None,
        }
    }

    /// Assert stderr contains `needle` (showing stderr when it does not).
    pub fn assert_stderr(&self, needle: impl AsRef<str>) -> &Self {
        let needle = needle.as_ref();
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code {} (expected {code})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

pub struct Emulator {
    child: Child,
    _stdin: ChildStdin,
    pub endpoint: String,
    pub admin: Creds,
    /// Scratch space for this test: HOME, journal, credentials files.
    pub dir: tempfile::TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulator {
    /// Start a fresh emulator with an admin user and auth enforced.
    pub fn start() -> Self {
        let script = repo_root().join("emulator/keyturn_emulator.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(["--port", "0", "--bootstrap-admin", "--exit-on-stdin-eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the emulator");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the emulator's ready line");
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("emulator ready line {line:?}: {e}"));
        let admin = &ready["admin"];
        Emulator {
            child,
            _stdin: stdin,
            endpoint: ready["endpoint"].as_str().unwrap().to_string(),
            admin: Creds {
                id: admin["access_key_id"].as_str().unwrap().into(),
                secret: admin["secret_access_key"].as_str().unwrap().into(),
                token: None,
            },
            dir: tempfile::tempdir().unwrap(),
        }
    }

    // ---- test endpoints -------------------------------------------------------

    pub fn post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.endpoint);
        let mut resp = ureq::post(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(&body)
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = resp.status();
        let v: Value = resp.body_mut().read_json().unwrap();
        assert!(status.is_success(), "POST {path} -> {status}: {v}");
        v
    }

    pub fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.endpoint);
        ureq::get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .body_mut()
            .read_json()
            .unwrap()
    }

    /// Set a key's create date and last use (`days` before now; `None` = never used).
    pub fn backdate(&self, key_id: &str, created_days_ago: i64, used_days_ago: Option<i64>) {
        self.backdate_in(ACCOUNT, key_id, created_days_ago, used_days_ago)
    }

    pub fn backdate_in(
        &self,
        account: &str,
        key_id: &str,
        created_days_ago: i64,
        used_days_ago: Option<i64>,
    ) {
        let ts = days_ago;
        let mut body = json!({
            "account_id": account,
            "access_key_id": key_id,
            "create_date": ts(created_days_ago),
            "last_used": used_days_ago.map(ts),
        });
        if used_days_ago.is_some() {
            body["last_used_service"] = json!("s3");
            body["last_used_region"] = json!("us-east-1");
        }
        self.post("/_keyturn/access-key", body);
    }

    /// Bulk-create users and keys in `account` (`/_keyturn/seed`; `users` is its
    /// `users` array). Keys made this way were never used by a request.
    pub fn seed(&self, account: &str, users: Value) -> Value {
        self.post(
            "/_keyturn/seed",
            json!({ "account_id": account, "users": users }),
        )
    }

    /// New keys fail authentication for this long (IAM eventual consistency).
    pub fn propagation_delay(&self, seconds: f64) {
        self.post("/_keyturn/propagation-delay", json!({ "seconds": seconds }));
    }

    /// Replace the emulator's fault rules (`POST /_keyturn/faults`).
    pub fn faults(&self, rules: Value) -> Value {
        self.post("/_keyturn/faults", json!({ "seed": 7, "rules": rules }))
    }

    pub fn stats(&self) -> Value {
        self.get("/_keyturn/stats")
    }

    pub fn reset_stats(&self) {
        self.post("/_keyturn/stats/reset", json!({}));
    }

    // ---- SDK clients ----------------------------------------------------------

    pub fn sdk_config(&self, c: &Creds) -> aws_config::SdkConfig {
        let creds = Credentials::new(&c.id, &c.secret, c.token.clone(), None, "test");
        rt().block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .endpoint_url(&self.endpoint)
                .credentials_provider(creds)
                .load(),
        )
    }

    pub fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.sdk_config(&self.admin))
    }

    /// STS GetCallerIdentity with `c`: the ARN, or the error code.
    pub fn whoami(&self, c: &Creds) -> Result<String, String> {
        let sts = aws_sdk_sts::Client::new(&self.sdk_config(c));
        rt().block_on(sts.get_caller_identity().send())
            .map(|o| o.arn().unwrap_or_default().to_string())
            .map_err(|e| {
                use aws_sdk_sts::error::ProvideErrorMetadata;
                e.code().unwrap_or("unknown").to_string()
            })
    }

    pub fn create_user(&self, name: &str) {
        rt().block_on(self.iam().create_user().user_name(name).send())
            .unwrap_or_else(|e| panic!("create user {name}: {e:?}"));
    }

    /// A user with an inline policy (JSON document).
    pub fn create_user_with_policy(&self, name: &str, policy: Value) {
        self.create_user(name);
        rt().block_on(
            self.iam()
                .put_user_policy()
                .user_name(name)
                .policy_name("test")
                .policy_document(policy.to_string())
                .send(),
        )
        .unwrap();
    }

    pub fn create_key(&self, user: &str) -> Creds {
        let out = rt()
            .block_on(self.iam().create_access_key().user_name(user).send())
            .unwrap();
        let k = out.access_key().unwrap();
        Creds {
            id: k.access_key_id().into(),
            secret: k.secret_access_key().into(),
            token: None,
        }
    }

    pub fn deactivate(&self, user: &str, key_id: &str) {
        rt().block_on(
            self.iam()
                .update_access_key()
                .user_name(user)
                .access_key_id(key_id)
                .status(aws_sdk_iam::types::StatusType::Inactive)
                .send(),
        )
        .unwrap();
    }

    /// The user's keys as (id, "Active"/"Inactive"), sorted by id.
    pub fn keys(&self, user: &str) -> Vec<(String, String)> {
        let out = rt()
            .block_on(self.iam().list_access_keys().user_name(user).send())
            .unwrap();
        let mut v: Vec<(String, String)> = out
            .access_key_metadata()
            .iter()
            .map(|m| {
                (
                    m.access_key_id().unwrap().to_string(),
                    m.status().unwrap().as_str().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    // ---- the binary -------------------------------------------------------------

    /// `keyturn` with a clean environment: no real AWS config, calls go to the
    /// emulator, signed as the admin user; HOME and the journal live in `dir`.
    pub fn keyturn(&self) -> Command {
        self.keyturn_as(&self.admin.clone())
    }

    pub fn keyturn_as(&self, c: &Creds) -> Command {
        let mut cmd = self.keyturn_bare();
        cmd.env("AWS_ACCESS_KEY_ID", &c.id)
            .env("AWS_SECRET_ACCESS_KEY", &c.secret);
        if let Some(t) = &c.token {
            cmd.env("AWS_SESSION_TOKEN", t);
        }
        cmd
    }

    /// `keyturn` with no credentials in the environment.
    pub fn keyturn_bare(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyturn"));
        let home = self.dir.path();
        for f in ["empty-credentials", "empty-config"] {
            if !home.join(f).exists() {
                std::fs::write(home.join(f), "").unwrap();
            }
        }
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("XDG_STATE_HOME", home.join("state"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                home.join("empty-credentials"),
            )
            .env("AWS_CONFIG_FILE", home.join("empty-config"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, cmd: &mut Command) -> Run {
        Run::from(cmd.output().expect("run keyturn"))
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.path().join("state/keyturn/journal.sqlite")
    }
}

/// `days` days before now, RFC 3339.
pub fn days_ago(days: i64) -> String {
    let t = time::OffsetDateTime::now_utc() - time::Duration::days(days);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Assert `secret` appears nowhere in `texts`.
pub fn assert_no_secret(secret: &str, texts: &[(&str, &str)]) {
    assert!(secret.len() >= 20, "not a secret: {secret:?}");
    for (what, text) in texts {
        assert!(
            !text.contains(secret),
            "the secret access key leaked into {what}:\n{text}"
        );
    }
}

/// Move every time the SQLite journal holds `days` into the past (a run "days ago"):
/// how the fleet tests let days pass.
pub fn age_journal(emu: &Emulator, days: i64) {
    let db = rusqlite::Connection::open(emu.journal_path()).unwrap();
    let shift = |s: String| -> String {
        let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .unwrap()
            - time::Duration::days(days);
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let rows: Vec<(i64, String)> = db
        .prepare("SELECT rowid, at FROM steps")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (id, at) in rows {
        db.execute(
            "UPDATE steps SET at = ?1 WHERE rowid = ?2",
            rusqlite::params![shift(at), id],
        )
        .unwrap();
    }
    let rows: Vec<(String, String, Option<String>)> = db
        .prepare("SELECT run_id, started_at, finished_at FROM runs")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (id, s, f) in rows {
        db.execute(
            "UPDATE runs SET started_at = ?1, finished_at = ?2 WHERE run_id = ?3",
            rusqlite::params![shift(s), f.map(shift), id],
        )
        .unwrap();
    }
}
