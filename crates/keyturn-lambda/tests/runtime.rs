//! The real `keyturn-lambda` binary as Lambda runs it: against a local Lambda
//! Runtime API (a small fixture server implementing `/2018-06-01/runtime/invocation/next`,
//! `/response`, `/error`) and the emulator (moto with keyturn's fixes: IAM, STS,
//! Secrets Manager, DynamoDB, KMS).
//!
//! moto calls a rotation Lambda only through Docker (absent), so these tests post the
//! four steps as Secrets Manager would, after `RotateSecret` has staged the
//! `AWSPENDING` version (it does so before failing to find the function), and read
//! stages with `VersionStage`, as moto's plain `GetSecretValue` ignores stage moves.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:keyturn";

// ---- the Lambda Runtime API fixture -------------------------------------------------

#[derive(Default)]
struct Queue {
    pending: VecDeque<(String, Value)>,
    results: Vec<(String, Result<Value, Value>)>,
    next_id: u32,
}

/// A Runtime API on a loopback port: events are queued with [`RuntimeApi::invoke`],
/// handed out by `next`, and answered by `response` or `error`.
#[derive(Clone)]
struct RuntimeApi {
    addr: String,
    state: Arc<(Mutex<Queue>, Condvar)>,
}

impl RuntimeApi {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let api = RuntimeApi {
            addr: listener.local_addr().unwrap().to_string(),
            state: Arc::default(),
        };
        let a = api.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let a = a.clone();
                std::thread::spawn(move || a.serve(conn));
            }
        });
        api
    }

    fn serve(&self, conn: TcpStream) {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                if h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            let (status, headers, out) = self.route(&method, &path, &body);
            let mut resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                out.len()
            );
            for (k, v) in headers {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            resp.push_str("\r\n");
            if w.write_all(resp.as_bytes()).is_err() || w.write_all(&out).is_err() {
                return;
            }
        }
    }

    fn route(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (&'static str, Vec<(String, String)>, Vec<u8>) {
        let (lock, cv) = &*self.state;
        if method == "GET" && path == "/2018-06-01/runtime/invocation/next" {
            let mut q = lock.lock().unwrap();
            while q.pending.is_empty() {
                q = cv.wait(q).unwrap();
            }
            let (id, payload) = q.pending.pop_front().unwrap();
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 120_000;
            let headers = vec![
                ("Lambda-Runtime-Aws-Request-Id".into(), id),
                ("Lambda-Runtime-Deadline-Ms".into(), deadline.to_string()),
                (
                    "Lambda-Runtime-Invoked-Function-Arn".into(),
                    FUNCTION_ARN.into(),
                ),
                (
                    "Lambda-Runtime-Trace-Id".into(),
                    "Root=1-00000000-000000000000000000000000".into(),
                ),
            ];
            return ("200 OK", headers, payload.to_string().into_bytes());
        }
        let rest = path.strip_prefix("/2018-06-01/runtime/invocation/");
        if let (Some(rest), "POST") = (rest, method) {
            if let Some((id, kind)) = rest.split_once('/') {
                let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                let r = if kind == "response" { Ok(v) } else { Err(v) };
                lock.lock().unwrap().results.push((id.to_string(), r));
                cv.notify_all();
                return ("202 Accepted", vec![], b"{}".to_vec());
            }
        }
        ("404 Not Found", vec![], b"{}".to_vec())
    }

    /// Queue `payload` and wait for the function's answer (`None`: no answer within
    /// `wait`, e.g. the process died).
    fn invoke_within(&self, payload: Value, wait: Duration) -> Option<Result<Value, Value>> {
        let (lock, cv) = &*self.state;
        let id = {
            let mut q = lock.lock().unwrap();
            q.next_id += 1;
            let id = format!("req-{}", q.next_id);
            q.pending.push_back((id.clone(), payload));
            cv.notify_all();
            id
        };
        let start = std::time::Instant::now();
        let mut q = lock.lock().unwrap();
        loop {
            if let Some(i) = q.results.iter().position(|(r, _)| *r == id) {
                return Some(q.results.remove(i).1);
            }
            let left = wait.checked_sub(start.elapsed())?;
            q = cv
                .wait_timeout(q, left.min(Duration::from_millis(200)))
                .unwrap()
                .0;
        }
    }

    fn invoke(&self, payload: Value) -> Result<Value, Value> {
        self.invoke_within(payload.clone(), Duration::from_secs(180))
            .unwrap_or_else(|| panic!("no answer to {payload}"))
    }
}

// ---- the emulator -------------------------------------------------------------------

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

struct Emulator {
    child: Child,
    _stdin: ChildStdin,
    endpoint: String,
    admin: (String, String),
    dir: tempfile::TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulator {
    fn start() -> Self {
        let python = std::env::var_os("KEYTURN_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
        assert!(
            python.exists(),
            "no emulator Python: run `make test` or set KEYTURN_PYTHON"
        );
        let mut child = Command::new(python)
            .arg(repo_root().join("emulator/keyturn_emulator.py"))
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
            .unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap();
        let a = &ready["admin"];
        Emulator {
            child,
            _stdin: stdin,
            endpoint: ready["endpoint"].as_str().unwrap().into(),
            admin: (
                a["access_key_id"].as_str().unwrap().into(),
                a["secret_access_key"].as_str().unwrap().into(),
            ),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, id: &str, secret: &str) -> aws_config::SdkConfig {
        let creds = aws_credential_types::Credentials::new(id, secret, None, None, "test");
        rt().block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .endpoint_url(&self.endpoint)
                .credentials_provider(creds)
                .load(),
        )
    }

    fn admin(&self) -> aws_config::SdkConfig {
        self.config(&self.admin.0, &self.admin.1)
    }

    fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.admin())
    }

    fn sm(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.admin())
    }

    fn user_with_key(&self, user: &str) -> (String, String) {
        rt().block_on(self.iam().create_user().user_name(user).send())
            .unwrap();
        let k = rt()
            .block_on(self.iam().create_access_key().user_name(user).send())
            .unwrap();
        let k = k.access_key().unwrap();
        (k.access_key_id().into(), k.secret_access_key().into())
    }

    /// (id, status) of the user's keys, sorted by id.
    fn keys(&self, user: &str) -> Vec<(String, String)> {
        let out = rt()
            .block_on(self.iam().list_access_keys().user_name(user).send())
            .unwrap();
        let mut v: Vec<_> = out
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

    fn works(&self, id: &str, secret: &str) -> bool {
        let sts = aws_sdk_sts::Client::new(&self.config(id, secret));
        rt().block_on(sts.get_caller_identity().send()).is_ok()
    }

    /// The journal table and the KMS key; returns the settings file.
    fn settings(&self, extra: &str) -> PathBuf {
        let conf = self.admin();
        let kms = aws_sdk_kms::Client::new(&conf);
        let key = rt().block_on(kms.create_key().send()).unwrap();
        let key_id = key.key_metadata().unwrap().key_id().to_string();
        let ddb = aws_sdk_dynamodb::Client::new(&conf);
        rt().block_on(keyturn::journal::dynamodb::DynamoJournal::create_table(
            &ddb,
            "keyturn-journal",
        ))
        .unwrap();
        let path = self.dir.path().join("keyturn.toml");
        std::fs::write(
            &path,
            format!("[journal]\nbackend = \"dynamodb\"\ntable = \"keyturn-journal\"\nkms_key = \"{key_id}\"\nlease_seconds = 1\n\n[rotate]\nverify_timeout = 10\n{extra}"),
        )
        .unwrap();
        path
    }

    /// The secret holding `user`'s key, with rotation enabled and `token` staged
    /// `AWSPENDING` (what `RotateSecret` does before it invokes the function).
    fn secret_for(&self, name: &str, user: &str, key: &(String, String)) -> String {
        let value = json!({"UserName": user, "AccessKeyId": key.0, "SecretAccessKey": key.1, "region": "eu-west-1"});
        let out = rt()
            .block_on(
                self.sm()
                    .create_secret()
                    .name(name)
                    .secret_string(value.to_string())
                    .send(),
            )
            .unwrap();
        out.arn().unwrap().to_string()
    }

    fn start_rotation(&self, arn: &str, token: &str, immediately: bool) {
        let r = rt().block_on(
            self.sm()
                .rotate_secret()
                .secret_id(arn)
                .client_request_token(token)
                .rotation_lambda_arn(FUNCTION_ARN)
                .rotation_rules(
                    aws_sdk_secretsmanager::types::RotationRulesType::builder()
                        .automatically_after_days(30)
                        .build(),
                )
                .rotate_immediately(immediately)
                .send(),
        );
        // moto stages the version, then fails to find the function (no Docker).
        let e = r.expect_err("moto invoked a rotation function?");
        let code =
            aws_sdk_secretsmanager::error::ProvideErrorMetadata::code(&e).map(str::to_string);
        assert_eq!(code.as_deref(), Some("ResourceNotFoundException"), "{e:?}");
    }

    fn stages(&self, arn: &str) -> std::collections::HashMap<String, Vec<String>> {
        let d = rt()
            .block_on(self.sm().describe_secret().secret_id(arn).send())
            .unwrap();
        d.version_ids_to_stages().cloned().unwrap_or_default()
    }

    fn value(&self, arn: &str, stage: &str) -> Value {
        let v = rt()
            .block_on(
                self.sm()
                    .get_secret_value()
                    .secret_id(arn)
                    .version_stage(stage)
                    .send(),
            )
            .unwrap();
        serde_json::from_str(v.secret_string().unwrap()).unwrap()
    }
}

// ---- the function -------------------------------------------------------------------

struct Function {
    child: Child,
    log: PathBuf,
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Function {
    fn start(emu: &Emulator, api: &RuntimeApi, settings: &Path, failpoint: Option<&str>) -> Self {
        let log = emu.dir.path().join(format!(
            "function-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyturn-lambda"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", emu.dir.path())
            .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
            .env("AWS_LAMBDA_FUNCTION_NAME", "keyturn")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/keyturn")
            .env("AWS_ACCESS_KEY_ID", &emu.admin.0)
            .env("AWS_SECRET_ACCESS_KEY", &emu.admin.1)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &emu.endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("KEYTURN_CONFIG", settings)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        if let Some(f) = failpoint {
            cmd.env("KEYTURN_FAILPOINT", f);
        }
        Function {
            child: cmd.spawn().expect("start keyturn-lambda"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn step(step: &str, arn: &str, token: &str) -> Value {
    json!({"Step": step, "SecretId": arn, "ClientRequestToken": token, "RotationToken": "rt-sensitive-0123456789"})
}

fn ok(r: Result<Value, Value>, what: &str) -> Value {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

const T1: &str = "11111111-1111-4111-8111-111111111111";
const T2: &str = "22222222-2222-4222-8222-222222222222";

fn no_pending(emu: &Emulator, arn: &str) {
    let stages = emu.stages(arn);
    assert!(
        !stages
            .values()
            .flatten()
            .any(|s| s == "AWSPENDING" || s == "KEYTURN_TESTED"),
        "a rotation label was left behind: {stages:?}"
    );
}

#[test]
fn four_steps_each_twice_then_a_second_rotation() {
    let emu = Emulator::start();
    let api = RuntimeApi::start();
    let k1 = emu.user_with_key("app-bot");
    let arn = emu.secret_for("app/ci", "app-bot", &k1);
    let settings = emu.settings("");
    let f = Function::start(&emu, &api, &settings, None);
    emu.start_rotation(&arn, T1, true);

    let mut responses = Vec::new();
    for s in ["createSecret", "setSecret", "testSecret", "finishSecret"] {
        let first = ok(api.invoke(step(s, &arn, T1)), s);
        assert_eq!(first["Result"], "done", "{s}: {first}");
        let again = ok(api.invoke(step(s, &arn, T1)), s);
        responses.push(first.to_string());
        responses.push(again.to_string());
    }
    let cur = emu.value(&arn, "AWSCURRENT");
    let k2 = (
        cur["AccessKeyId"].as_str().unwrap().to_string(),
        cur["SecretAccessKey"].as_str().unwrap().to_string(),
    );
    assert_ne!(k2.0, k1.0);
    assert_eq!(cur["UserName"], "app-bot");
    assert_eq!(cur["region"], "eu-west-1", "other fields are kept");
    assert!(emu.works(&k2.0, &k2.1));
    assert_eq!(emu.value(&arn, "AWSPREVIOUS")["AccessKeyId"], k1.0.as_str());
    let mut want = vec![
        (k1.0.clone(), "Inactive".to_string()),
        (k2.0.clone(), "Active".to_string()),
    ];
    want.sort();
    assert_eq!(emu.keys("app-bot"), want);
    no_pending(&emu, &arn);

    // The next rotation deletes the key keyturn retired (k1) to free its slot.
    emu.start_rotation(&arn, T2, true);
    for s in ["createSecret", "setSecret", "testSecret", "finishSecret"] {
        ok(api.invoke(step(s, &arn, T2)), s);
    }
    let k3 = emu.value(&arn, "AWSCURRENT")["AccessKeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut want = vec![
        (k2.0.clone(), "Inactive".to_string()),
        (k3, "Active".to_string()),
    ];
    want.sort();
    assert_eq!(emu.keys("app-bot"), want, "one Active and one Inactive key");
    no_pending(&emu, &arn);

    let log = f.log();
    for secret in [&k1.1, &k2.1] {
        assert!(
            !log.contains(secret.as_str()),
            "a secret reached the function's log"
        );
        assert!(
            !responses.iter().any(|r| r.contains(secret.as_str())),
            "a secret is in a response"
        );
    }
    assert!(
        !log.contains("rt-sensitive-0123456789"),
        "the RotationToken was logged"
    );
}

#[cfg(feature = "failpoints")]
#[test]
fn a_crash_after_create_key_is_finished_by_the_retry_without_an_orphan() {
    let emu = Emulator::start();
    let api = RuntimeApi::start();
    let k1 = emu.user_with_key("app-bot");
    let arn = emu.secret_for("app/ci", "app-bot", &k1);
    let settings = emu.settings("");
    emu.start_rotation(&arn, T1, true);
    {
        let mut f = Function::start(&emu, &api, &settings, Some("sm:after-create-key"));
        let r = api.invoke_within(step("createSecret", &arn, T1), Duration::from_secs(60));
        assert!(
            r.is_none(),
            "the failpoint did not fire: {r:?}\n{}",
            f.log()
        );
        let status = f.child.wait().unwrap();
        assert!(!status.success(), "the failpoint aborts the process");
    }
    // The new key exists, journaled, and nothing is pending yet.
    assert_eq!(emu.keys("app-bot").len(), 2);
    let created: Vec<String> = emu
        .keys("app-bot")
        .into_iter()
        .map(|k| k.0)
        .filter(|k| *k != k1.0)
        .collect();
    // A fresh process, after the dead invocation's lease (1 s) ran out.
    std::thread::sleep(Duration::from_secs(2));
    let _f = Function::start(&emu, &api, &settings, None);
    let r = ok(
        api.invoke(step("createSecret", &arn, T1)),
        "createSecret retry",
    );
    assert_eq!(r["Result"], "done", "{r}");
    for s in ["setSecret", "testSecret", "finishSecret"] {
        ok(api.invoke(step(s, &arn, T1)), s);
    }
    let cur = emu.value(&arn, "AWSCURRENT");
    assert_eq!(
        cur["AccessKeyId"],
        created[0].as_str(),
        "the journaled key was delivered, not a new one"
    );
    assert!(emu.works(
        cur["AccessKeyId"].as_str().unwrap(),
        cur["SecretAccessKey"].as_str().unwrap()
    ));
    assert_eq!(emu.keys("app-bot").len(), 2, "no orphan key");
    no_pending(&emu, &arn);
}

#[cfg(feature = "failpoints")]
#[test]
fn a_crash_after_moving_current_is_finished_by_the_retry() {
    let emu = Emulator::start();
    let api = RuntimeApi::start();
    let k1 = emu.user_with_key("app-bot");
    let arn = emu.secret_for("app/ci", "app-bot", &k1);
    let settings = emu.settings("");
    emu.start_rotation(&arn, T1, true);
    {
        let _f = Function::start(&emu, &api, &settings, Some("sm:after-move-current"));
        for s in ["createSecret", "setSecret", "testSecret"] {
            ok(api.invoke(step(s, &arn, T1)), s);
        }
        assert!(api
            .invoke_within(step("finishSecret", &arn, T1), Duration::from_secs(30))
            .is_none());
    }
    // AWSCURRENT moved, the old key still Active.
    assert!(emu.keys("app-bot").iter().all(|k| k.1 == "Active"));
    let _f = Function::start(&emu, &api, &settings, None);
    ok(
        api.invoke(step("finishSecret", &arn, T1)),
        "finishSecret retry",
    );
    let cur = emu.value(&arn, "AWSCURRENT")["AccessKeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut want = vec![
        (k1.0.clone(), "Inactive".to_string()),
        (cur, "Active".to_string()),
    ];
    want.sort();
    assert_eq!(emu.keys("app-bot"), want);
    no_pending(&emu, &arn);
}

#[test]
fn refusals_test_alone_leftover_pending_and_direct_rotation() {
    let emu = Emulator::start();
    let api = RuntimeApi::start();
    let k1 = emu.user_with_key("app-bot");
    let other = emu.user_with_key("other-bot");
    let arn = emu.secret_for("app/ci", "app-bot", &k1);
    let out = emu.dir.path().join("ci.json");
    let settings = emu.settings(&format!(
        "\n[[sinks]]\nname = \"ci-file\"\ntype = \"json-file\"\npath = \"{}\"\n",
        out.display()
    ));
    let _f = Function::start(&emu, &api, &settings, None);

    // testSecret alone (RotateImmediately=false): tests the staged copy of the current key.
    let alone = emu.secret_for("app/alone", "app-bot", &k1);
    emu.start_rotation(&alone, T1, false);
    let r = ok(
        api.invoke(step("testSecret", &alone, T1)),
        "testSecret alone",
    );
    assert_eq!(r["Result"], "done");
    assert_eq!(
        emu.keys("app-bot"),
        vec![(k1.0.clone(), "Active".to_string())]
    );
    // finishSecret before a successful test of a version keyturn made: refused.
    emu.start_rotation(&arn, T2, true);
    let e = api.invoke(step("finishSecret", &arn, T2)).unwrap_err();
    assert!(
        e.to_string().contains("testSecret has not succeeded"),
        "{e}"
    );
    assert_eq!(e["errorType"], "keyturn.Refused");

    // A pending version naming another user is refused by setSecret (confused deputy).
    let foreign =
        json!({"UserName": "other-bot", "AccessKeyId": other.0, "SecretAccessKey": other.1});
    rt().block_on(
        emu.sm()
            .put_secret_value()
            .secret_id(&arn)
            .client_request_token(T2)
            .secret_string(foreign.to_string())
            .version_stages("AWSPENDING")
            .send(),
    )
    .unwrap();
    let e = api.invoke(step("setSecret", &arn, T2)).unwrap_err();
    assert!(e.to_string().contains("names user other-bot"), "{e}");
    assert_eq!(
        emu.keys("other-bot"),
        vec![(other.0.clone(), "Active".to_string())]
    );

    // A token that is not a version of the secret: refused, nothing changed.
    let e = api
        .invoke(step(
            "createSecret",
            &arn,
            "33333333-3333-4333-8333-333333333333",
        ))
        .unwrap_err();
    assert!(e.to_string().contains("has no version"), "{e}");

    // Direct invoke: one on-demand rotation delivered to a sink.
    let r = ok(
        api.invoke(json!({"Rotate": {"UserName": "other-bot", "Sinks": ["ci-file"]}})),
        "Rotate",
    );
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let new_id = file["AccessKeyId"].as_str().unwrap();
    assert_ne!(new_id, other.0);
    assert!(emu.works(new_id, file["SecretAccessKey"].as_str().unwrap()));
    assert!(!r
        .to_string()
        .contains(file["SecretAccessKey"].as_str().unwrap()));
    assert!(emu
        .keys("other-bot")
        .contains(&(other.0.clone(), "Inactive".to_string())));
    // stdout would print the secret into the logs: refused.
    let e = api
        .invoke(json!({"Rotate": {"UserName": "other-bot", "Sinks": ["stdout"]}}))
        .unwrap_err();
    assert!(e.to_string().contains("not available in Lambda"), "{e}");
}

#[test]
fn scheduled_fleet_runs_return_the_fleet_report() {
    let emu = Emulator::start();
    let api = RuntimeApi::start();
    let k1 = emu.user_with_key("fleet-bot");
    let out = emu.dir.path().join("fleet.json");
    let settings = emu.settings(&format!(
        "\n[[sinks]]\nname = \"fleet-file\"\ntype = \"json-file\"\npath = \"{}\"\n",
        out.display()
    ));
    let _f = Function::start(&emu, &api, &settings, None);
    // Inline policy, dry run: the report, nothing changed.
    let inline = json!({"rotations": [{"name": "all", "users": ["fleet-*"], "sinks": ["fleet-file"]}], "DryRun": true});
    let r = ok(api.invoke(inline), "inline dry run");
    assert_eq!(r["SchemaVersion"], 1, "{r}");
    assert_eq!(r["DryRun"], true, "{r}");
    assert_eq!(
        emu.keys("fleet-bot"),
        vec![(k1.0.clone(), "Active".to_string())]
    );
    // An EventBridge rule envelope around the same input.
    let envelope = json!({"version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
        "detail": {"rotations": [{"name": "all", "users": ["fleet-*"], "sinks": ["fleet-file"]}], "DryRun": true}});
    let r = ok(api.invoke(envelope), "envelope");
    assert_eq!(r["DryRun"], true, "{r}");
    // A malformed schedule input is refused before any AWS call.
    let e = api
        .invoke(json!({"PolicyParameter": "/p", "PolicyS3": "s3://b/k"}))
        .unwrap_err();
    assert_eq!(e["errorType"], "keyturn.Refused", "{e}");
}
