//! The server against a fake backend over real HTTP on loopback: tokens, cookies,
//! CSRF, read-only, one rotation per user, headers. (The real backend is tested with
//! the real binary against the emulator in `keyturn-cli/tests/serve.rs`.)

use super::*;
use crate::fleet::report::{AccountReport, Outcome};
use crate::model::{KeyStatus, Usage};
use tokio::sync::Notify;

struct Fake {
    release: Notify,
    rotations: Mutex<usize>,
}

fn user_report(outcome: Outcome) -> UserReport {
    UserReport {
        user_name: "ci-bot".into(),
        rotation: "bots".into(),
        outcome,
        reason: "newest key is 80 days old".into(),
        new_access_key_id: None,
        retired_access_key_id: None,
        sinks: None,
        run_id: None,
    }
}

fn report(outcome: Outcome) -> FleetReport {
    let now = OffsetDateTime::now_utc();
    FleetReport::new(
        outcome != Outcome::Rotated,
        now,
        now,
        vec![AccountReport {
            account: "111111111111".into(),
            name: "prod".into(),
            error: None,
            users: vec![user_report(outcome)],
        }],
    )
}

#[async_trait::async_trait]
impl Backend for Fake {
    async fn plan(&self) -> Result<FleetReport> {
        Ok(report(Outcome::Rotated))
    }
    async fn keys(&self, _: &str, _: &str) -> Result<Vec<AccessKeyInfo>> {
        Ok(vec![AccessKeyInfo {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            status: KeyStatus::Active,
            // An hour over 80 days: the page's clock is read before the keys are listed.
            create_date: OffsetDateTime::now_utc()
                - time::Duration::days(80)
                - time::Duration::hours(1),
            usage: Usage::Never,
        }])
    }
    async fn runs(&self) -> Result<Vec<RunRecord>> {
        Ok(vec![])
    }
    async fn rotate(&self, account: &str, user: &str, o: &dyn RunObserver) -> Result<FleetReport> {
        *self.rotations.lock().unwrap() += 1;
        o.user_started(account, user);
        o.step(account, user, "create-key");
        self.release.notified().await;
        let mut r = report(Outcome::Rotated);
        r.dry_run = false;
        o.user_finished(account, &r.accounts[0].users[0]);
        Ok(r)
    }
    async fn resume(&self, run_id: &str) -> Result<(i32, String)> {
        Ok((0, format!("keyturn: resumed {run_id}")))
    }
    fn rotation(&self, _: &str) -> Option<(Lifecycle, Vec<String>)> {
        Some((Lifecycle::default(), vec!["ci-env".into()]))
    }
    fn defaults(&self) -> Lifecycle {
        Lifecycle::default()
    }
}

struct Server {
    base: String,
    fake: Arc<Fake>,
    token: String,
}

async fn start(read_only: bool) -> Server {
    let fake = Arc::new(Fake {
        release: Notify::new(),
        rotations: Mutex::new(0),
    });
    let token = random_token().unwrap();
    let settings = ServeSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: token.clone(),
        token_from_file: false,
        read_only,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(fake.clone(), settings).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { base, fake, token }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The cookie and the CSRF token a browser would hold after opening the token URL.
async fn login(s: &Server) -> (String, String) {
    let c = client();
    let r = c
        .get(format!("{}/?token={}", s.base, s.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let page = c
        .get(format!("{}/", s.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let text = page.text().await.unwrap();
    let csrf = text
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    assert!(text.contains("ci-bot"));
    assert!(!text.contains("AKIAIOSFODNN7EXAMPLE"));
    (cookie, csrf)
}

#[tokio::test]
async fn every_request_needs_the_token() {
    let s = start(false).await;
    let c = client();
    for path in ["/", "/runs", "/api/fleet", "/assets/app.js", "/users/1/u"] {
        let r = c.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = c
            .get(format!("{}{path}", s.base))
            .header("cookie", format!("{COOKIE}=wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = c
        .get(format!("{}/?token=nope", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/api/fleet", s.base))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["Users"][0]["UserName"], "ci-bot");
    assert_eq!(v["Users"][0]["NewestKeyAgeDays"], 80);
}

#[tokio::test]
async fn posts_need_the_csrf_token_and_one_rotation_runs_per_user() {
    let s = start(false).await;
    let (cookie, csrf) = login(&s).await;
    let c = client();
    let url = format!("{}/api/users/111111111111/ci-bot/rotate", s.base);
    let r = c.post(&url).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(&url)
        .header("cookie", &cookie)
        .header(CSRF_HEADER, "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(*s.fake.rotations.lock().unwrap(), 0);
    let r = c
        .post(&url)
        .header("cookie", &cookie)
        .header(CSRF_HEADER, &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // A second click while the first runs.
    let r = c
        .post(&url)
        .header("cookie", &cookie)
        .header(CSRF_HEADER, &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("already running"));
    let poll = format!("{}/api/users/111111111111/ci-bot/rotation", s.base);
    let job: serde_json::Value = c
        .get(&poll)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["State"], "running");
    s.fake.release.notify_one();
    let mut job = job;
    for _ in 0..200 {
        job = c
            .get(&poll)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["State"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(job["State"], "finished", "{job}");
    assert_eq!(job["Report"]["Outcome"], "rotated");
    assert_eq!(job["Steps"][1], "create-key");
    assert_eq!(*s.fake.rotations.lock().unwrap(), 1);
    // Resume with the token as a bearer header: no CSRF token needed.
    let r = c
        .post(format!("{}/api/runs/r-1/resume", s.base))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn read_only_refuses_posts_and_shows_no_button() {
    let s = start(true).await;
    let (cookie, csrf) = login(&s).await;
    let c = client();
    let r = c
        .post(format!("{}/api/users/111111111111/ci-bot/rotate", s.base))
        .header("cookie", &cookie)
        .header(CSRF_HEADER, &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("read-only"));
    let r = c
        .post(format!("{}/api/runs/r-1/resume", s.base))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let page = c
        .get(format!("{}/users/111111111111/ci-bot", s.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("Rotate now"), "{page}");
    assert_eq!(*s.fake.rotations.lock().unwrap(), 0);
}

#[test]
fn non_loopback_needs_a_token_file() {
    let any: SocketAddr = "0.0.0.0:8787".parse().unwrap();
    assert!(check_listen(&any, false).is_err());
    assert!(check_listen(&any, true).is_ok());
    assert!(check_listen(&"127.0.0.1:8787".parse().unwrap(), false).is_ok());
    assert!(check_listen(&"[::1]:8787".parse().unwrap(), false).is_ok());
}
