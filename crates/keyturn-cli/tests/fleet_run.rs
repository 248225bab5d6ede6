//! `keyturn run` on the emulator: the real binary, an Organization of accounts reached
//! through assumed roles, keys backdated across the policy's thresholds, a json-file
//! sink. Asserts IAM key states, delivered values, journal-driven lifecycle steps over
//! several runs, exit codes, and that no secret reaches stdout, stderr or the report.

mod common;

use common::{assert_no_secret, days_ago, rt, Emulator, Run, ACCOUNT};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Write the settings file; `{dir}` in `body` becomes the test's scratch directory.
fn config(emu: &Emulator, body: &str) -> PathBuf {
    let dir = emu.dir.path();
    let path = dir.join("fleet.toml");
    std::fs::write(&path, body.replace("{dir}", &dir.display().to_string())).unwrap();
    path
}

fn run(emu: &Emulator, cfg: &Path, extra: &[&str]) -> Run {
    let report = emu.dir.path().join("report.json");
    let _ = std::fs::remove_file(&report);
    let mut cmd = emu.keyturn();
    cmd.arg("--config")
        .arg(cfg)
        .arg("run")
        .arg("--report")
        .arg(&report)
        .args(extra);
    emu.run(&mut cmd)
}

fn report(emu: &Emulator) -> Value {
    let text = std::fs::read_to_string(emu.dir.path().join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn report_text(emu: &Emulator) -> String {
    std::fs::read_to_string(emu.dir.path().join("report.json")).unwrap_or_default()
}

/// (account, user) -> the user's report line.
fn user<'a>(r: &'a Value, account: &str, name: &str) -> &'a Value {
    r["Accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["Account"] == account)
        .flat_map(|a| a["Users"].as_array().unwrap())
        .find(|u| u["UserName"] == name)
        .unwrap_or_else(|| panic!("no report line for {account}:{name} in {r:#}"))
}

fn outcomes(r: &Value) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = r["Accounts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| {
            a["Users"].as_array().unwrap().iter().map(move |u| {
                (
                    a["Account"].as_str().unwrap().to_string(),
                    u["UserName"].as_str().unwrap().to_string(),
                    u["Outcome"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    v.sort();
    v
}

/// A user's keys as (id, status).
type Keys = Vec<(String, String)>;

/// Keys of `user` in `account` as (id, status), through the admin's assumed role.
fn keys_in(emu: &Emulator, account: &str, user: &str) -> Vec<(String, String)> {
    if account == ACCOUNT {
        return emu.keys(user);
    }
    let iam = member_iam(emu, account);
    let out = rt()
        .block_on(iam.list_access_keys().user_name(user).send())
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

fn member_iam(emu: &Emulator, account: &str) -> aws_sdk_iam::Client {
    let sts = aws_sdk_sts::Client::new(&emu.sdk_config(&emu.admin));
    let c = rt()
        .block_on(
            sts.assume_role()
                .role_arn(format!("arn:aws:iam::{account}:role/KeyturnRotator"))
                .role_session_name("test")
                .send(),
        )
        .unwrap();
    let c = c.credentials().unwrap();
    let creds = common::Creds {
        id: c.access_key_id().into(),
        secret: c.secret_access_key().into(),
        token: Some(c.session_token().into()),
    };
    aws_sdk_iam::Client::new(&emu.sdk_config(&creds))
}

/// An Organization with three member accounts whose `KeyturnRotator` role the admin
/// can assume.
fn organization(emu: &Emulator) -> [String; 3] {
    use aws_sdk_organizations::types::OrganizationFeatureSet;
    let org = aws_sdk_organizations::Client::new(&emu.sdk_config(&emu.admin));
    rt().block_on(
        org.create_organization()
            .feature_set(OrganizationFeatureSet::All)
            .send(),
    )
    .unwrap();
    let create = |name: &str| -> String {
        let out = rt()
            .block_on(
                org.create_account()
                    .email(format!("{name}@example.com"))
                    .account_name(name)
                    .role_name("KeyturnRotator")
                    .send(),
            )
            .unwrap();
        out.create_account_status()
            .unwrap()
            .account_id()
            .unwrap()
            .to_string()
    };
    [create("member-a"), create("member-b"), create("member-c")]
}

fn key(days_old: i64) -> Value {
    json!({ "create_date": days_ago(days_old), "last_used": days_ago(1),
            "last_used_service": "s3", "last_used_region": "eu-west-1" })
}

fn tag(emu: &Emulator, account: &str, user: &str, k: &str, v: &str) {
    let iam = member_iam(emu, account);
    rt().block_on(
        iam.tag_user()
            .user_name(user)
            .tags(
                aws_sdk_iam::types::Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .unwrap(),
            )
            .send(),
    )
    .unwrap();
}

fn delivered(emu: &Emulator, account: &str, user: &str) -> Option<Value> {
    let p = emu.dir.path().join(format!("keys/{account}-{user}.json"));
    std::fs::read_to_string(p)
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap())
}

const ORG_POLICY: &str = r#"
[policy]
max_age_days = 90
rotate_before_days = 14
canary = 1

[[accounts]]
name = "org"
organization = { role_name = "KeyturnRotator", exclude = ["EXCLUDED"] }

[[sinks]]
name = "keys"
type = "json-file"
path = "{dir}/keys/{account}-{user}.json"

[[rotations]]
name = "bots"
users = ["ci-*"]
path_prefix = "/bots/"
exclude = ["ci-legacy-*"]
sinks = ["keys"]

[[rotations]]
name = "tagged"
tags = { "keyturn:rotate" = "true" }
sinks = ["keys"]
"#;

#[test]
fn an_organization_fleet_rotates_exactly_the_due_users_and_a_second_run_changes_nothing() {
    let emu = Emulator::start();
    let [a, b, c] = organization(&emu);
    std::fs::create_dir_all(emu.dir.path().join("keys")).unwrap();
    emu.seed(
        &a,
        json!([
            { "name": "ci-due", "path": "/bots/", "keys": [key(80)] },
            { "name": "ci-fresh", "path": "/bots/", "keys": [key(10)] },
            { "name": "ci-legacy-old", "path": "/bots/", "keys": [key(200)] },
            { "name": "human", "path": "/people/", "keys": [key(200)] },
            { "name": "ci-nokey", "path": "/bots/" },
        ]),
    );
    emu.seed(
        &b,
        json!([
            { "name": "tagged-due", "keys": [key(100)] },
            { "name": "untagged-due", "keys": [key(100)] },
            { "name": "tagged-other-value", "keys": [key(100)] },
        ]),
    );
    emu.seed(
        &c,
        json!([{ "name": "ci-due", "path": "/bots/", "keys": [key(80)] }]),
    );
    tag(&emu, &b, "tagged-due", "keyturn:rotate", "true");
    tag(&emu, &b, "tagged-other-value", "keyturn:rotate", "false");
    let cfg = config(&emu, &ORG_POLICY.replace("EXCLUDED", &c));
    let before_a = keys_in(&emu, &a, "ci-due");
    let untouched: Vec<(String, &str, Keys)> = [
        (a.clone(), "ci-fresh"),
        (a.clone(), "ci-legacy-old"),
        (a.clone(), "human"),
        (b.clone(), "untagged-due"),
        (b.clone(), "tagged-other-value"),
        (c.clone(), "ci-due"),
    ]
    .into_iter()
    .map(|(acct, u)| {
        let k = keys_in(&emu, &acct, u);
        (acct, u, k)
    })
    .collect();

    // Dry run: the plan, nothing changed, no journal written.
    let dry = run(&emu, &cfg, &["--dry-run", "--output", "json"]);
    dry.assert_code(0);
    let plan: Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(plan["DryRun"], true);
    assert_eq!(user(&plan, &a, "ci-due")["Outcome"], "rotated");
    assert_eq!(keys_in(&emu, &a, "ci-due"), before_a);
    assert!(delivered(&emu, &a, "ci-due").is_none());

    let first = run(&emu, &cfg, &[]);
    first.assert_code(0);
    let r = report(&emu);
    assert_eq!(r["SchemaVersion"], 1);
    assert_eq!(r["DryRun"], false);
    let rotated: Vec<(String, String)> = outcomes(&r)
        .into_iter()
        .filter(|(_, _, o)| o == "rotated")
        .map(|(acct, u, _)| (acct, u))
        .collect();
    let mut want = vec![
        (a.clone(), "ci-due".to_string()),
        (a.clone(), "ci-nokey".to_string()),
        (b.clone(), "tagged-due".to_string()),
    ];
    want.sort();
    assert_eq!(rotated, want, "{r:#}");
    // The excluded account is not in the report at all; the management account is,
    // with nobody selected.
    assert!(r["Accounts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["Account"] != c.as_str()));
    assert_eq!(user(&r, &a, "ci-fresh")["Outcome"], "ok");
    for (acct, u) in &want {
        let line = user(&r, acct, u);
        let new_id = line["NewAccessKeyId"].as_str().unwrap();
        let got = delivered(&emu, acct, u).expect("delivered to the sink");
        assert_eq!(got["AccessKeyId"], new_id);
        let keys = keys_in(&emu, acct, u);
        assert!(
            keys.contains(&(new_id.to_string(), "Active".into())),
            "{keys:?}"
        );
        assert_eq!(
            line["Sinks"],
            json!([{ "Name": "keys", "Delivered": true }])
        );
        assert!(line["RunId"].is_string());
        let secret = got["SecretAccessKey"].as_str().unwrap();
        assert_no_secret(
            secret,
            &[
                ("stdout", &first.stdout),
                ("stderr", &first.stderr),
                ("report", &report_text(&emu)),
            ],
        );
    }
    // when-switched (the default): the old key stays Active until consumers switch.
    let after_a = keys_in(&emu, &a, "ci-due");
    assert_eq!(after_a.len(), 2);
    assert!(after_a.contains(&before_a[0]));
    for (acct, u, k) in &untouched {
        assert_eq!(&keys_in(&emu, acct, u), k, "{acct}:{u} was touched");
    }
    assert!(first.stdout.contains("rotated"), "{}", first.stdout);

    // Second run: nothing changes.
    let second = run(&emu, &cfg, &[]);
    second.assert_code(0);
    let r2 = report(&emu);
    for (acct, u, o) in outcomes(&r2) {
        assert!(
            o == "ok" || o == "waiting",
            "{acct}:{u} is {o} on the second run"
        );
    }
    assert_eq!(keys_in(&emu, &a, "ci-due"), after_a);
    assert_eq!(
        user(&r2, &a, "ci-due")["Outcome"],
        "waiting",
        "{:#}",
        user(&r2, &a, "ci-due")
    );
    assert!(user(&r2, &a, "ci-due")["Reason"]
        .as_str()
        .unwrap()
        .contains("new key used only by keyturn's own checks"));
}

fn set_used(emu: &Emulator, key_id: &str, hours_ago: i64) {
    let t = OffsetDateTime::now_utc() - time::Duration::hours(hours_ago);
    emu.post(
        "/_keyturn/access-key",
        json!({ "access_key_id": key_id, "last_used": t.format(&Rfc3339).unwrap(),
                "last_used_service": "s3", "last_used_region": "eu-west-1" }),
    );
}

fn set_created(emu: &Emulator, key_id: &str, days: i64) {
    emu.post(
        "/_keyturn/access-key",
        json!({ "access_key_id": key_id, "create_date": days_ago(days) }),
    );
}

const LIFECYCLE_POLICY: &str = r#"
[policy]
grace_days = 7
delete_after_days = 7
DELETE_INACTIVE

[[sinks]]
name = "keys"
type = "json-file"
path = "{dir}/keys/{account}-{user}.json"

[[rotations]]
name = "bots"
users = ["bot-*"]
sinks = ["keys"]
"#;

fn new_key(r: &Value, user_name: &str) -> String {
    user(r, ACCOUNT, user_name)["NewAccessKeyId"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn lifecycle_over_runs_retire_when_switched_or_forced_then_delete() {
    let emu = Emulator::start();
    std::fs::create_dir_all(emu.dir.path().join("keys")).unwrap();
    let seeded = emu.seed(
        ACCOUNT,
        json!([
            { "name": "bot-switch", "keys": [key(80)] },
            { "name": "bot-quiet", "keys": [key(80)] },
        ]),
    );
    let old = |i: usize| {
        seeded["users"][i]["keys"][0]["access_key_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (old_switch, old_quiet) = (old(0), old(1));
    let cfg = config(&emu, &LIFECYCLE_POLICY.replace("DELETE_INACTIVE", ""));

    run(&emu, &cfg, &[]).assert_code(0);
    let r = report(&emu);
    assert_eq!(user(&r, ACCOUNT, "bot-switch")["Outcome"], "rotated");
    let new_switch = new_key(&r, "bot-switch");
    let new_quiet = new_key(&r, "bot-quiet");

    // No consumer used the new keys yet: waiting, both keys Active.
    run(&emu, &cfg, &[]).assert_code(0);
    let r = report(&emu);
    assert_eq!(user(&r, ACCOUNT, "bot-switch")["Outcome"], "waiting");
    assert_eq!(keys_in(&emu, ACCOUNT, "bot-switch").len(), 2);

    // A day later (the journal aged by a day, the rotation's key made a day ago): a
    // consumer used the new key 10 h ago, the old key was last used before that.
    common::age_journal(&emu, 1);
    set_created(&emu, &new_switch, 1);
    set_created(&emu, &new_quiet, 1);
    // keyturn's own verification call is the quiet key's only use: make it "never".
    emu.post(
        "/_keyturn/access-key",
        json!({ "access_key_id": new_quiet, "last_used": null }),
    );
    set_used(&emu, &new_switch, 10);
    set_used(&emu, &old_switch, 20);
    run(&emu, &cfg, &[]).assert_code(0);
    let r = report(&emu);
    let line = user(&r, ACCOUNT, "bot-switch");
    assert_eq!(line["Outcome"], "retired", "{line:#}");
    assert_eq!(line["RetiredAccessKeyId"], old_switch.as_str());
    assert!(line["Reason"]
        .as_str()
        .unwrap()
        .contains("consumers switched"));
    assert!(keys_in(&emu, ACCOUNT, "bot-switch").contains(&(old_switch.clone(), "Inactive".into())));
    assert_eq!(user(&r, ACCOUNT, "bot-quiet")["Outcome"], "waiting");

    // Eight days after the rotation, the quiet user's old key is retired anyway.
    common::age_journal(&emu, 7);
    set_created(&emu, &new_quiet, 8);
    set_created(&emu, &new_switch, 8);
    run(&emu, &cfg, &[]).assert_code(0);
    let r = report(&emu);
    let line = user(&r, ACCOUNT, "bot-quiet");
    assert_eq!(line["Outcome"], "retired", "{line:#}");
    assert!(
        line["Reason"].as_str().unwrap().starts_with("forced"),
        "{line:#}"
    );
    assert!(keys_in(&emu, ACCOUNT, "bot-quiet").contains(&(old_quiet.clone(), "Inactive".into())));
    // bot-switch's old key was deactivated 7 days ago: deleted now.
    let line = user(&r, ACCOUNT, "bot-switch");
    assert_eq!(line["Outcome"], "deleted", "{line:#}");
    assert_eq!(
        keys_in(&emu, ACCOUNT, "bot-switch"),
        vec![(new_switch.clone(), "Active".into())]
    );

    // A run right after: bot-quiet's old key waits for its deletion window.
    run(&emu, &cfg, &[]).assert_code(0);
    let r = report(&emu);
    assert_eq!(user(&r, ACCOUNT, "bot-quiet")["Outcome"], "waiting");
    assert_eq!(user(&r, ACCOUNT, "bot-switch")["Outcome"], "ok");
}

#[test]
fn a_foreign_inactive_key_is_never_deleted_unless_delete_inactive() {
    let emu = Emulator::start();
    std::fs::create_dir_all(emu.dir.path().join("keys")).unwrap();
    let seeded = emu.seed(
        ACCOUNT,
        json!([{ "name": "bot-foreign", "keys": [
            key(80),
            { "status": "Inactive", "create_date": days_ago(300), "last_used": null },
        ] }]),
    );
    let inactive = seeded["users"][0]["keys"][1]["access_key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = config(&emu, &LIFECYCLE_POLICY.replace("DELETE_INACTIVE", ""));
    for _ in 0..2 {
        run(&emu, &cfg, &[]).assert_code(3);
        let r = report(&emu);
        let line = user(&r, ACCOUNT, "bot-foreign");
        assert_eq!(line["Outcome"], "needs-attention", "{line:#}");
        assert!(line["Reason"].as_str().unwrap().contains("delete_inactive"));
        assert!(
            keys_in(&emu, ACCOUNT, "bot-foreign").contains(&(inactive.clone(), "Inactive".into()))
        );
    }
    let cfg = config(
        &emu,
        &LIFECYCLE_POLICY.replace("DELETE_INACTIVE", "delete_inactive = true"),
    );
    run(&emu, &cfg, &[]).assert_code(0);
    let r = report(&emu);
    assert_eq!(user(&r, ACCOUNT, "bot-foreign")["Outcome"], "rotated");
    let keys = keys_in(&emu, ACCOUNT, "bot-foreign");
    assert!(keys.iter().all(|(id, _)| id != &inactive), "{keys:?}");
}

const BIG_POLICY: &str = r#"
[policy]
concurrency = 16
max_failures = MAXF
canary = 1
verify_timeout = 120

ACCOUNTS

[[sinks]]
name = "keys"
type = "json-file"
path = "{dir}/keys/{account}-{user}.json"

[[rotations]]
name = "fleet"
users = ["u-*"]
sinks = ["keys"]
"#;

/// 200 users in four accounts (roles the admin assumes), 30% of every IAM call
/// answered `Throttling`. Each account has its own adaptive rate limiter, as IAM
/// throttles each account on its own.
#[test]
fn thirty_percent_throttling_on_a_200_user_fleet_ends_with_no_failure() {
    let emu = Emulator::start();
    std::fs::create_dir_all(emu.dir.path().join("keys")).unwrap();
    let accounts: Vec<String> = (1..=4).map(|i| format!("44444444444{i}")).collect();
    let mut entries = String::new();
    for (i, a) in accounts.iter().enumerate() {
        emu.post(
            "/_keyturn/role",
            json!({ "account_id": a, "role_name": "KeyturnRotator" }),
        );
        let users: Vec<Value> = (0..50)
            .map(|u| json!({ "name": format!("u-{u:03}"), "keys": [key(100)] }))
            .collect();
        emu.seed(a, json!(users));
        entries.push_str(&format!(
            "[[accounts]]\nname = \"a{i}\"\nrole_arn = \"arn:aws:iam::{a}:role/KeyturnRotator\"\n"
        ));
    }
    emu.faults(json!([{ "action": "iam:*", "mode": "throttle", "fraction": 0.3 }]));
    let cfg = config(
        &emu,
        &BIG_POLICY
            .replace("MAXF", "5")
            .replace("ACCOUNTS", &entries),
    );
    let out = run(&emu, &cfg, &["--output", "json"]);
    let hits = emu.get("/_keyturn/faults")["rules"][0]["hits"]
        .as_i64()
        .unwrap();
    emu.faults(json!([]));
    let r = report(&emu);
    out.assert_code(0);
    assert_eq!(r["Summary"]["rotated"], 200, "{}", out.stderr);
    assert_eq!(r["Summary"]["failed"], 0);
    assert!(hits > 100, "throttling was injected ({hits} hits)");
    for a in &accounts {
        for u in ["u-000", "u-049"] {
            assert_eq!(keys_in(&emu, a, u).len(), 2);
            assert!(delivered(&emu, a, u).is_some());
        }
    }
}

#[test]
fn a_failing_canary_stops_the_run_and_the_failure_budget_leaves_the_rest_not_attempted() {
    let emu = Emulator::start();
    std::fs::create_dir_all(emu.dir.path().join("keys")).unwrap();
    let users: Vec<Value> = (0..12)
        .map(|i| json!({ "name": format!("u-{i:03}"), "keys": [key(100)] }))
        .collect();
    emu.seed(ACCOUNT, json!(users));
    let deny = |names: &[&str]| {
        let rules: Vec<Value> = names
            .iter()
            .map(|n| {
                json!({ "action": "iam:CreateAccessKey", "mode": "error", "code": "AccessDenied",
                        "status": 403, "message": "injected", "match": { "UserName": n } })
            })
            .collect();
        emu.faults(json!(rules));
    };
    // The canary (first due user) fails: nobody else is started.
    deny(&["u-000"]);
    let cfg = config(
        &emu,
        &BIG_POLICY.replace("MAXF", "2").replace("ACCOUNTS", ""),
    );
    run(&emu, &cfg, &[]).assert_code(3);
    let r = report(&emu);
    assert_eq!(user(&r, ACCOUNT, "u-000")["Outcome"], "failed");
    assert_eq!(r["Summary"]["not-attempted"], 11, "{r:#}");
    assert!(user(&r, ACCOUNT, "u-005")["Reason"]
        .as_str()
        .unwrap()
        .contains("canary"));
    assert_eq!(keys_in(&emu, ACCOUNT, "u-005").len(), 1);

    // The canary passes; two later users fail: the budget (2) is spent, the rest wait.
    deny(&["u-001", "u-002"]);
    let out = run(&emu, &cfg, &["--concurrency", "1"]);
    out.assert_code(3);
    let r = report(&emu);
    assert_eq!(user(&r, ACCOUNT, "u-000")["Outcome"], "rotated");
    assert_eq!(r["Summary"]["failed"], 2, "{r:#}");
    assert_eq!(r["Summary"]["not-attempted"], 9, "{r:#}");
    assert!(user(&r, ACCOUNT, "u-011")["Reason"]
        .as_str()
        .unwrap()
        .contains("failure budget"));
    assert!(out.stdout.contains("not-attempted"), "{}", out.stdout);
    // The failed users' keys are as they were.
    assert_eq!(keys_in(&emu, ACCOUNT, "u-001").len(), 1);
}
