//! `keyturn serve` with the real binary against the emulator, over real HTTP: the
//! fleet view against `keyturn run --dry-run`, tokens, CSRF, read-only, Rotate now via
//! the API, and the whole flow in headless Chromium (Debian's, driven by
//! playwright-core; `make browser` installs both). A missing browser fails the test.

mod common;

use common::{repo_root, Emulator};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const USER: &str = "ci-bot";
const FRESH: &str = "fresh-bot";

/// A running `keyturn serve`; killed on drop.
struct Serve {
    child: Child,
    /// The URL it printed (with `?token=`).
    url: String,
    base: String,
    token: String,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start(emu: &Emulator, config: &Path, extra: &[&str]) -> Serve {
        let mut cmd = emu.keyturn();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start keyturn serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(url) = line.split("open ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("keyturn serve printed no URL:\n{}", log.lock().unwrap());
            }
        };
        let base = url.split("/?").next().unwrap().to_string();
        let token = url.split("token=").nth(1).unwrap_or("").to_string();
        Serve {
            child,
            url,
            base,
            token,
            stderr: log,
        }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into()
    }

    fn get(&self, path: &str, auth: Option<&str>) -> (u16, String) {
        let mut req = Self::agent().get(format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("Authorization", format!("Bearer {a}"));
        }
        let mut r = req.call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    fn post(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut req = Self::agent().post(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut r = req.send_empty().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    fn json(&self, path: &str) -> Value {
        let (code, body) = self.get(path, Some(&self.token));
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The cookie a browser gets for the token URL, and the page's CSRF token.
    fn login(&self) -> (String, String) {
        let mut r = Self::agent().get(&self.url).call().unwrap();
        assert_eq!(r.status().as_u16(), 303);
        let cookie = r.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_string();
        let _ = r.body_mut().read_to_string();
        let mut page = Self::agent()
            .get(format!("{}/", self.base))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        let text = page.body_mut().read_to_string().unwrap();
        let csrf = text
            .split("name=\"csrf-token\" content=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        (cookie, csrf)
    }

    /// Poll the rotation of `user` until it ends.
    fn wait_rotation(&self, user: &str) -> Value {
        for _ in 0..600 {
            let job = self.json(&format!("/api/users/{}/{user}/rotation", common::ACCOUNT));
            if job["State"] != "running" {
                return job;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the rotation of {user} did not end");
    }
}

/// Two users: `ci-bot` with an 80-day-old key (due: rotated), `fresh-bot` with a new
/// one (ok); a policy selecting both with an env-file sink.
fn fleet(emu: &Emulator) -> PathBuf {
    for u in [USER, FRESH] {
        emu.create_user(u);
    }
    let old = emu.create_key(USER);
    emu.backdate(&old.id, 80, Some(3));
    emu.create_key(FRESH);
    let dir = emu.dir.path();
    let config = dir.join("keyturn.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[policy]
max_age_days = 90
rotate_before_days = 14
retire = "after-verify"
delete_after_days = 7
grace_days = 7

[[rotations]]
name = "bots"
users = ["*-bot"]
sinks = ["env"]

[[sinks]]
name = "env"
type = "env-file"
path = "{}/{{user}}.env"
"#,
            dir.display()
        ),
    )
    .unwrap();
    config
}

fn row<'a>(fleet: &'a Value, user: &str) -> &'a Value {
    fleet["Users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["UserName"] == user)
        .unwrap_or_else(|| panic!("no {user} in {fleet}"))
}

#[test]
fn api_tokens_csrf_fleet_view_and_rotate() {
    let emu = Emulator::start();
    let config = fleet(&emu);
    let serve = Serve::start(&emu, &config, &[]);
    assert!(serve.url.contains("?token="), "{}", serve.url);

    // Without the token: 401, pages and API alike.
    for path in ["/", "/api/fleet", "/runs"] {
        assert_eq!(serve.get(path, None).0, 401, "{path}");
        assert_eq!(serve.get(path, Some("not-the-token")).0, 401, "{path}");
    }

    // The fleet view is the runner's dry run.
    let view = serve.json("/api/fleet");
    let dry = emu.run(
        emu.keyturn()
            .args(["run", "--dry-run", "--output", "json", "--config"])
            .arg(&config),
    );
    let dry = dry.json();
    let outcome_of = |report: &Value, user: &str| -> Value {
        report["Accounts"][0]["Users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["UserName"] == user)
            .map(|u| u["Outcome"].clone())
            .unwrap_or(Value::Null)
    };
    for u in [USER, FRESH] {
        assert_eq!(row(&view, u)["Outcome"], outcome_of(&dry, u), "{u}");
        assert_eq!(outcome_of(&view["DryRun"], u), outcome_of(&dry, u), "{u}");
    }
    assert_eq!(row(&view, USER)["Outcome"], "rotated");
    assert_eq!(row(&view, USER)["NewestKeyAgeDays"], 80);
    assert_eq!(row(&view, FRESH)["Outcome"], "ok");
    assert_eq!(row(&view, FRESH)["DueInDays"], 76);
    let keys_before = emu.keys(USER);

    // A cookie-authenticated POST without (or with a wrong) CSRF token: 403.
    let (cookie, csrf) = serve.login();
    let rotate = format!("/api/users/{}/{USER}/rotate", common::ACCOUNT);
    assert_eq!(serve.post(&rotate, &[("Cookie", &cookie)]).0, 403);
    assert_eq!(
        serve
            .post(&rotate, &[("Cookie", &cookie), ("X-Keyturn-Csrf", "nope")])
            .0,
        403
    );
    assert_eq!(emu.keys(USER), keys_before, "a refused POST changed keys");

    // Rotate now through the API.
    let (code, body) = serve.post(&rotate, &[("Cookie", &cookie), ("X-Keyturn-Csrf", &csrf)]);
    assert_eq!(code, 202, "{body}");
    let job = serve.wait_rotation(USER);
    assert_eq!(job["State"], "finished", "{job}");
    assert_eq!(job["Report"]["Outcome"], "rotated", "{job}");
    // The job shows the new key id masked but for its last 4 characters.
    let masked = job["Report"]["NewAccessKeyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(masked.starts_with("****"), "{masked}");
    let keys = emu.keys(USER);
    let new: Vec<&(String, String)> = keys
        .iter()
        .filter(|k| !keys_before.iter().any(|b| b.0 == k.0))
        .collect();
    assert_eq!(new.len(), 1, "{keys:?}");
    let new_id = new[0].0.clone();
    assert_eq!(new[0].1, "Active");
    assert!(masked.ends_with(&new_id[new_id.len() - 4..]), "{masked}");
    assert!(!job.to_string().contains(&new_id), "unmasked key id: {job}");
    let env = std::fs::read_to_string(emu.dir.path().join(format!("{USER}.env"))).unwrap();
    assert!(env.contains(&new_id), "not delivered: {env}");
    let secret = env
        .lines()
        .find_map(|l| l.strip_prefix("AWS_SECRET_ACCESS_KEY="))
        .unwrap()
        .trim_matches('"')
        .to_string();

    // The user page and the runs API show the new run; nothing shows the secret.
    let user = serve.json(&format!("/api/users/{}/{USER}", common::ACCOUNT));
    assert!(!user["Runs"].as_array().unwrap().is_empty(), "{user}");
    let runs = serve.json("/api/runs");
    let fleet_after = serve.json("/api/fleet");
    let (_, page) = serve.get(
        &format!("/users/{}/{USER}", common::ACCOUNT),
        Some(&serve.token),
    );
    assert!(!page.contains(&new_id), "unmasked key id in the page");
    let log = serve.stderr.lock().unwrap().clone();
    common::assert_no_secret(
        &secret,
        &[
            ("user API", &user.to_string()),
            ("runs API", &runs.to_string()),
            ("fleet API", &fleet_after.to_string()),
            ("user page", &page),
            ("server log", &log),
            ("job", &job.to_string()),
        ],
    );
}

#[test]
fn read_only_refuses_posts() {
    let emu = Emulator::start();
    let config = fleet(&emu);
    let serve = Serve::start(&emu, &config, &["--read-only"]);
    let before = emu.keys(USER);
    let (cookie, csrf) = serve.login();
    let rotate = format!("/api/users/{}/{USER}/rotate", common::ACCOUNT);
    let (code, body) = serve.post(&rotate, &[("Cookie", &cookie), ("X-Keyturn-Csrf", &csrf)]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");
    let auth = format!("Bearer {}", serve.token);
    assert_eq!(serve.post(&rotate, &[("Authorization", &auth)]).0, 403);
    let (_, page) = serve.get(
        &format!("/users/{}/{USER}", common::ACCOUNT),
        Some(&serve.token),
    );
    assert!(!page.contains("Rotate now"));
    assert_eq!(emu.keys(USER), before);
}

#[test]
fn non_loopback_listen_needs_a_token_file() {
    let emu = Emulator::start();
    let config = fleet(&emu);
    let r = emu.run(
        emu.keyturn()
            .args(["serve", "--listen", "0.0.0.0:0", "--config"])
            .arg(&config),
    );
    r.assert_code(2).assert_stderr("--token-file");
}

/// Where `make browser` puts playwright-core.
fn browser_dir() -> PathBuf {
    repo_root().join("crates/keyturn-cli/tests/browser")
}

#[test]
fn browser_rotate_now() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: run `make browser` (apt-get install chromium chromium-driver)"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `make browser` (npm ci in {})",
        browser_dir().display()
    );
    let emu = Emulator::start();
    let config = fleet(&emu);
    let serve = Serve::start(&emu, &config, &[]);
    let before = emu.keys(USER);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-screenshots");
    let out = Command::new("node")
        .arg(browser_dir().join("serve.mjs"))
        .env("KEYTURN_URL", &serve.url)
        .env("KEYTURN_USER", USER)
        .env("KEYTURN_SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node (the machine's Node.js)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser script failed:\n{stdout}\n{stderr}\nserver:\n{}",
        serve.stderr.lock().unwrap()
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    eprintln!("browser saw: {seen}\nscreenshots in {}", shots.display());
    assert_eq!(
        seen["fleetUrl"],
        format!("{}/", serve.base),
        "token left in the URL"
    );
    assert_eq!(seen["fleetOutcome"], "rotated");
    assert_eq!(seen["fleetBadge"], "due");
    assert_eq!(seen["userOutcomeBefore"], "due");
    assert_eq!(seen["userOutcomeAfter"], "rotated", "{seen}");
    assert!(
        seen["progress"].as_str().unwrap().starts_with("finished"),
        "{seen}"
    );
    assert_eq!(seen["scripts"], 1);
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen}");
    assert!(seen["historyRows"].as_u64().unwrap() >= 1, "{seen}");
    // The key changed in IAM.
    let after = emu.keys(USER);
    let new: Vec<_> = after
        .iter()
        .filter(|k| !before.iter().any(|b| b.0 == k.0))
        .collect();
    assert_eq!(new.len(), 1, "before {before:?}, after {after:?}");
    for f in ["fleet.png", "user-before.png", "user-after.png", "runs.png"] {
        assert!(shots.join(f).exists(), "no screenshot {f}");
    }
}
