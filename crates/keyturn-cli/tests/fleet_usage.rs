//! Fleet runs with `usage = "cloudtrail"` on the emulator: the real binary asks
//! CloudTrail (the emulator's LookupEvents) who still uses the old key. One host keeps
//! calling with the old key while another switched: `waiting` names the first host
//! only; once it stops, the old key is retired after `quiet_hours` (time travel through
//! event timestamps); a user whose old key is still used when `grace_days` end is
//! retired by force, and the report lists the consumers that will break.

mod common;

use common::{days_ago, Emulator, Run, ACCOUNT};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const CLI_UA: &str = "aws-cli/2.15.30 Python/3.11.6 Linux/6.1.0 exe/x86_64.debian.12 prompt/off";
const BOTO_UA: &str = "Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux#6.1 lang/python#3.11";

const POLICY: &str = r#"
[policy]
grace_days = 7
delete_after_days = 30
usage = "cloudtrail"
quiet_hours = 24

[usage]
regions = ["us-east-1", "eu-west-1"]

[[sinks]]
name = "keys"
type = "json-file"
path = "{dir}/keys/{account}-{user}.json"

[[rotations]]
name = "apps"
users = ["app-*"]
sinks = ["keys"]
"#;

fn config(emu: &Emulator) -> PathBuf {
    let dir = emu.dir.path();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let path = dir.join("fleet.toml");
    std::fs::write(&path, POLICY.replace("{dir}", &dir.display().to_string())).unwrap();
    path
}

fn run(emu: &Emulator, cfg: &Path) -> Value {
    let report = emu.dir.path().join("report.json");
    let _ = std::fs::remove_file(&report);
    let mut cmd = emu.keyturn();
    cmd.arg("--config")
        .arg(cfg)
        .arg("run")
        .arg("--report")
        .arg(&report);
    let r: Run = emu.run(&mut cmd);
    r.assert_code(0);
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

fn user<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["Accounts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["Users"].as_array().unwrap())
        .find(|u| u["UserName"] == name)
        .unwrap_or_else(|| panic!("no report line for {name} in {r:#}"))
}

fn reason(r: &Value, name: &str) -> String {
    user(r, name)["Reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Everything happened `days` earlier: the journal, the new keys' creation, and the
/// CloudTrail events of every key.
fn travel(emu: &Emulator, days: i64, new_keys: &[(&str, i64)], all_keys: &[&str]) {
    common::age_journal(emu, days);
    for (k, created_days_ago) in new_keys {
        emu.post(
            "/_keyturn/access-key",
            json!({ "access_key_id": k, "create_date": days_ago(*created_days_ago) }),
        );
    }
    for k in all_keys {
        emu.post(
            "/_keyturn/cloudtrail/events",
            json!({ "access_key_id": k, "shift_hours": -24 * days }),
        );
    }
}

/// IAM last-used of a key, `hours_ago`.
fn last_used(emu: &Emulator, key: &str, hours_ago: i64) {
    let t = OffsetDateTime::now_utc() - time::Duration::hours(hours_ago);
    emu.post(
        "/_keyturn/access-key",
        json!({ "access_key_id": key, "last_used": t.format(&Rfc3339).unwrap(),
                "last_used_service": "s3", "last_used_region": "eu-west-1" }),
    );
}

fn calls(
    emu: &Emulator,
    key: &str,
    ip: &str,
    ua: &str,
    api: (&str, &str),
    hours_ago: f64,
    count: u32,
) {
    let r = emu.post(
        "/_keyturn/cloudtrail/events",
        json!({ "events": [{
            "access_key_id": key, "event_name": api.1, "event_source": api.0,
            "aws_region": "eu-west-1", "source_ip": ip, "user_agent": ua,
            "hours_ago": hours_ago, "count": count, "interval_seconds": 3600,
        }] }),
    );
    assert_eq!(r["injected"], count, "{r}");
}

const S3: (&str, &str) = ("s3.amazonaws.com", "ListBuckets");
const EC2: (&str, &str) = ("ec2.amazonaws.com", "DescribeInstances");

#[test]
fn cloudtrail_decides_when_the_old_key_is_retired_and_names_who_still_uses_it() {
    let emu = Emulator::start();
    let seeded = emu.seed(
        ACCOUNT,
        json!([
            { "name": "app-web", "keys": [{ "create_date": days_ago(120), "last_used": days_ago(3) }] },
            { "name": "app-batch", "keys": [{ "create_date": days_ago(120), "last_used": days_ago(3) }] },
        ]),
    );
    let old_of = |i: usize| {
        seeded["users"][i]["keys"][0]["access_key_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (old_web, old_batch) = (old_of(0), old_of(1));
    let cfg = config(&emu);

    // Run 1 rotates both users.
    let r = run(&emu, &cfg);
    assert_eq!(user(&r, "app-web")["Outcome"], "rotated", "{r:#}");
    let new_of = |r: &Value, u: &str| user(r, u)["NewAccessKeyId"].as_str().unwrap().to_string();
    let (new_web, new_batch) = (new_of(&r, "app-web"), new_of(&r, "app-batch"));
    let all = [
        old_web.as_str(),
        new_web.as_str(),
        old_batch.as_str(),
        new_batch.as_str(),
    ];
    // A day later: the rotation was 24 h ago.
    travel(&emu, 1, &[(&new_web, 1), (&new_batch, 1)], &all);
    // app-web: host 10.0.9.9 switched to the new key 20 h ago; host 10.0.4.17 still
    // calls with the old key (14 calls over the last 13 h). app-batch: nobody switched,
    // 10.0.7.7 keeps the old key.
    calls(&emu, &new_web, "10.0.9.9", BOTO_UA, S3, 2.0, 18);
    calls(&emu, &old_web, "10.0.4.17", CLI_UA, S3, 1.0, 13);
    calls(&emu, &old_web, "10.0.4.17", CLI_UA, EC2, 0.5, 1);
    calls(&emu, &old_batch, "10.0.7.7", CLI_UA, EC2, 1.0, 3);
    last_used(&emu, &old_web, 1);
    last_used(&emu, &new_web, 2);
    last_used(&emu, &old_batch, 1);

    let r = run(&emu, &cfg);
    let web = user(&r, "app-web");
    assert_eq!(web["Outcome"], "waiting", "{web:#}");
    let why = reason(&r, "app-web");
    assert!(
        why.contains("old key used 14 times in 12 h by 10.0.4.17 aws-cli/2.15.30 (s3:ListBuckets, ec2:DescribeInstances in eu-west-1)"),
        "{why}"
    );
    assert!(
        !why.contains("10.0.9.9"),
        "the host that switched is not named: {why}"
    );
    assert_eq!(emu.keys("app-web").len(), 2, "both keys still Active");
    let why = reason(&r, "app-batch");
    assert_eq!(user(&r, "app-batch")["Outcome"], "waiting", "{why}");
    assert!(why.contains("by 10.0.7.7 aws-cli/2.15.30"), "{why}");

    // Two days on: 10.0.4.17 stopped using the old key (its last call is now ~2 days
    // old), so the old key is quiet for more than quiet_hours: retired.
    travel(&emu, 2, &[(&new_web, 3), (&new_batch, 3)], &all);
    last_used(&emu, &old_web, 48);
    calls(&emu, &new_web, "10.0.9.9", BOTO_UA, S3, 1.0, 3);
    // app-batch's host keeps calling.
    calls(&emu, &old_batch, "10.0.7.7", CLI_UA, EC2, 1.0, 2);
    last_used(&emu, &old_batch, 1);
    let r = run(&emu, &cfg);
    let web = user(&r, "app-web");
    assert_eq!(web["Outcome"], "retired", "{web:#}");
    assert_eq!(web["RetiredAccessKeyId"], old_web.as_str());
    let why = reason(&r, "app-web");
    assert!(
        why.contains("no consumer used the old key for 24 h"),
        "{why}"
    );
    assert!(emu
        .keys("app-web")
        .contains(&(old_web.clone(), "Inactive".into())));
    assert_eq!(user(&r, "app-batch")["Outcome"], "waiting");

    // Grace (7 days) ends while 10.0.7.7 still uses app-batch's old key: forced, and
    // the reason lists the consumer that will break.
    travel(&emu, 5, &[(&new_web, 8), (&new_batch, 8)], &all);
    calls(&emu, &old_batch, "10.0.7.7", CLI_UA, EC2, 1.0, 2);
    last_used(&emu, &old_batch, 1);
    let r = run(&emu, &cfg);
    let batch = user(&r, "app-batch");
    assert_eq!(batch["Outcome"], "retired", "{batch:#}");
    let why = reason(&r, "app-batch");
    assert!(why.starts_with("forced"), "{why}");
    assert!(
        why.contains("consumers that will break: old key used 7 times in 7 days by 10.0.7.7 aws-cli/2.15.30 (ec2:DescribeInstances in eu-west-1)"),
        "{why}"
    );
    assert!(emu
        .keys("app-batch")
        .contains(&(old_batch.clone(), "Inactive".into())));
}
