//! `keyturn::usage` (CloudTrail consumers of access keys) against the local emulator,
//! called as a library: paging across several pages, several hosts and regions,
//! keyturn's own calls excluded, the 90-day window and time travel, CloudTrail's rate
//! kept, throttling absorbed, and the account's enabled regions.

mod common;

use aws_credential_types::Credentials;
use common::{rt, Creds, Emulator};
use keyturn::remote::RemoteConfig;
use keyturn::usage::{self, UsageClient, UsageQuery, UsageReport};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

const CLI_UA: &str =
    "aws-cli/2.15.30 Python/3.11.6 Linux/6.1.0 exe/x86_64.debian.12 prompt/off command/s3.ls";

/// An SDK config the way keyturn builds it (app name `keyturn` in the user agent).
fn keyturn_sdk(emu: &Emulator, c: &Creds, region: &str) -> aws_config::SdkConfig {
    let remote = RemoteConfig {
        profile: None,
        region: Some(region.to_string()),
        endpoint_url: Some(emu.endpoint.clone()),
        ..RemoteConfig::default()
    };
    let creds = Credentials::new(&c.id, &c.secret, c.token.clone(), None, "test");
    rt().block_on(remote.load_with(Some(creds)))
}

fn lookup(emu: &Emulator, regions: &[&str], keys: &[&str], since: OffsetDateTime) -> UsageReport {
    let sdk = keyturn_sdk(emu, &emu.admin, "us-east-1");
    let client = UsageClient::new(&sdk, regions.iter().map(|r| r.to_string()).collect());
    rt().block_on(client.consumers(&UsageQuery::since(keys.iter().copied(), since)))
        .unwrap_or_else(|e| panic!("usage lookup: {e}"))
}

/// STS GetCallerIdentity signed with `c` by a plain SDK client (not keyturn), as
/// seen from `ip`.
fn call_from(emu: &Emulator, ip: &str, c: &Creds) {
    emu.post("/_keyturn/source-ip", json!({ "ip": ip }));
    emu.whoami(c).expect("GetCallerIdentity");
    emu.post("/_keyturn/source-ip", json!({ "ip": null }));
}

fn inject(emu: &Emulator, events: Value) -> Value {
    emu.post("/_keyturn/cloudtrail/events", json!({ "events": events }))
}

fn lookups(emu: &Emulator) -> i64 {
    emu.stats()["by_action"]["cloudtrail:LookupEvents"]
        .as_i64()
        .unwrap_or(0)
}

fn app_user(emu: &Emulator) -> Creds {
    emu.create_user("app");
    emu.create_key("app")
}

#[test]
fn consumers_across_pages_hosts_and_regions() {
    let emu = Emulator::start();
    let key = app_user(&emu);
    call_from(&emu, "10.0.4.17", &key);
    call_from(&emu, "10.0.4.17", &key);
    call_from(&emu, "10.0.9.9", &key);
    // 120 aws-cli calls from 10.0.4.17 in eu-west-1 over ~10 h: three pages there.
    inject(
        &emu,
        json!([{
            "access_key_id": key.id, "event_name": "ListBuckets",
            "event_source": "s3.amazonaws.com", "aws_region": "eu-west-1",
            "source_ip": "10.0.4.17", "user_agent": CLI_UA, "hours_ago": 1,
            "count": 120, "interval_seconds": 300,
        }, {
            "access_key_id": key.id, "event_name": "DescribeInstances",
            "event_source": "ec2.amazonaws.com", "aws_region": "eu-west-1",
            "source_ip": "10.0.4.17", "user_agent": CLI_UA, "hours_ago": 1.5,
        }, {
            // Outside the window asked (3 days ago): not a consumer.
            "access_key_id": key.id, "event_name": "GetUser", "source_ip": "10.0.7.7",
            "user_agent": "terraform/1.7.0", "hours_ago": 72,
        }]),
    );
    emu.reset_stats();
    let report = lookup(
        &emu,
        &["us-east-1", "eu-west-1"],
        &[&key.id],
        OffsetDateTime::now_utc() - Duration::hours(24),
    );
    // us-east-1: one page; eu-west-1: 121 events = three pages of 50.
    assert_eq!(lookups(&emu), 4, "LookupEvents calls (NextToken followed)");
    let usage = report.key(&key.id).unwrap();
    assert_eq!(usage.events, 124);
    assert_eq!(usage.own_events, 0);
    assert!(usage.truncated_regions.is_empty());
    let found: Vec<(String, String, u64)> = usage
        .consumers
        .iter()
        .map(|c| (c.source_ip.clone(), c.tool().to_string(), c.events))
        .collect();
    let sdk_tool = found
        .iter()
        .find(|c| c.0 == "10.0.9.9")
        .map(|c| c.1.clone())
        .expect("the 10.0.9.9 host");
    assert!(sdk_tool.starts_with("aws-sdk-rust/"), "{sdk_tool}");
    let mut sorted = found.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            ("10.0.4.17".to_string(), "aws-cli/2.15.30".to_string(), 121),
            ("10.0.4.17".to_string(), sdk_tool.clone(), 2),
            ("10.0.9.9".to_string(), sdk_tool.clone(), 1),
        ]
    );
    let cli = usage
        .consumers
        .iter()
        .find(|c| c.tool() == "aws-cli/2.15.30")
        .unwrap();
    assert_eq!(cli.user_agent, CLI_UA);
    assert_eq!(
        cli.describe(),
        "used 121 times in 10 h by 10.0.4.17 aws-cli/2.15.30 (s3:ListBuckets, ec2:DescribeInstances in eu-west-1)"
    );
    let host = usage
        .consumers
        .iter()
        .find(|c| c.source_ip == "10.0.9.9")
        .unwrap();
    assert_eq!(
        host.describe(),
        format!("used once by 10.0.9.9 {sdk_tool} (sts:GetCallerIdentity in us-east-1)")
    );
    // The report serializes for JSON reports (audit --usage, fleet reasons).
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["Keys"][0]["Consumers"].as_array().unwrap().len(), 3);
}

#[test]
fn keyturns_own_calls_are_not_consumers() {
    let emu = Emulator::start();
    app_user(&emu);
    // A real rotation: keyturn verifies the new key with STS, signing with it.
    let run = emu.run(emu.keyturn().args(["rotate", "--user", "app"]));
    run.assert_code(0);
    let new = run.env_creds();
    let since = OffsetDateTime::now_utc() - Duration::hours(1);
    let report = lookup(&emu, &["us-east-1"], &[&new.id, &emu.admin.id], since);
    let fresh = report.key(&new.id).unwrap();
    assert!(
        fresh.own_events >= 1,
        "keyturn's verification calls: {fresh:?}"
    );
    assert!(
        fresh.is_unused(),
        "only keyturn used the new key: {fresh:?}"
    );
    // keyturn signed its IAM calls with the admin key: own events, not consumers. The
    // test's own admin calls (a plain SDK client: CreateUser, CreateAccessKey) are.
    let admin = report.key(&emu.admin.id).unwrap();
    assert!(admin.own_events >= 2, "{admin:?}");
    assert_eq!(admin.consumers.len(), 1, "{admin:?}");
    assert!(admin.consumers[0]
        .top_events
        .iter()
        .any(|a| a.api == "iam:CreateUser"));
    // Once an application uses the new key, it is a consumer.
    call_from(&emu, "10.0.4.17", &new);
    let report = lookup(&emu, &["us-east-1"], &[&new.id], since);
    let fresh = report.key(&new.id).unwrap();
    assert_eq!(fresh.consumers.len(), 1);
    assert_eq!(fresh.consumers[0].source_ip, "10.0.4.17");
    assert!(!usage::is_keyturn_user_agent(
        &fresh.consumers[0].user_agent
    ));
}

#[test]
fn window_and_time_travel() {
    let emu = Emulator::start();
    let key = app_user(&emu);
    call_from(&emu, "10.0.4.17", &key);
    inject(
        &emu,
        json!([{
            "access_key_id": key.id, "event_name": "ListBuckets",
            "event_source": "s3.amazonaws.com", "source_ip": "10.0.5.5",
            "user_agent": CLI_UA, "hours_ago": 24 * 100,
        }]),
    );
    let long_ago = OffsetDateTime::now_utc() - Duration::days(365);
    let report = lookup(&emu, &["us-east-1"], &[&key.id], long_ago);
    let usage = report.key(&key.id).unwrap();
    assert_eq!(
        usage.consumers.len(),
        1,
        "the 100-day-old event is past CloudTrail's 90 days"
    );
    assert!(report.since >= OffsetDateTime::now_utc() - Duration::days(90) - Duration::minutes(1));
    // Time travel: the key's events move 30 h back; since 24 h ago nobody used it.
    emu.post(
        "/_keyturn/cloudtrail/events",
        json!({ "access_key_id": key.id, "shift_hours": -30 }),
    );
    let day = OffsetDateTime::now_utc() - Duration::hours(24);
    assert!(lookup(&emu, &["us-east-1"], &[&key.id], day)
        .key(&key.id)
        .unwrap()
        .is_unused());
    let two_days = OffsetDateTime::now_utc() - Duration::hours(48);
    assert_eq!(
        lookup(&emu, &["us-east-1"], &[&key.id], two_days)
            .key(&key.id)
            .unwrap()
            .events,
        1
    );
}

/// CloudTrail throttles LookupEvents beyond 2 requests/s per account and region. The
/// emulator plays that limit; keyturn's limiter must never hit it, across several
/// keys and pages in one region (without the limiter, the third request in a burst is
/// throttled).
#[test]
fn lookups_stay_within_cloudtrail_rate() {
    let emu = Emulator::start();
    let key = app_user(&emu);
    let other = emu.create_key("app");
    for k in [&key, &other] {
        inject(
            &emu,
            json!([{
                "access_key_id": k.id, "event_name": "ListBuckets",
                "event_source": "s3.amazonaws.com", "source_ip": "10.0.4.17",
                "user_agent": CLI_UA, "hours_ago": 1, "count": 110, "interval_seconds": 10,
            }]),
        );
    }
    emu.post(
        "/_keyturn/faults",
        json!({ "rules": [{ "action": "cloudtrail:LookupEvents", "mode": "throttle", "rate": 2 }] }),
    );
    let report = lookup(
        &emu,
        &["us-east-1"],
        &[&key.id, &other.id],
        OffsetDateTime::now_utc() - Duration::hours(24),
    );
    assert_eq!(report.key(&key.id).unwrap().events, 110);
    assert_eq!(report.key(&other.id).unwrap().events, 110);
    let rule = &emu.get("/_keyturn/faults")["rules"][0];
    assert_eq!(rule["matched"], 6, "3 pages per key: {rule}");
    assert_eq!(
        rule["hits"], 0,
        "no LookupEvents call was throttled: {rule}"
    );
}

#[test]
fn lookup_throttling_is_absorbed() {
    let emu = Emulator::start();
    let key = app_user(&emu);
    inject(
        &emu,
        json!([{
            "access_key_id": key.id, "event_name": "ListBuckets",
            "event_source": "s3.amazonaws.com", "aws_region": "eu-west-1",
            "source_ip": "10.0.4.17", "user_agent": CLI_UA, "hours_ago": 1,
            "count": 70, "interval_seconds": 10,
        }]),
    );
    let since = OffsetDateTime::now_utc() - Duration::hours(24);
    let clean = lookup(&emu, &["us-east-1", "eu-west-1"], &[&key.id], since);
    emu.post(
        "/_keyturn/faults",
        json!({ "rules": [{
            "action": "cloudtrail:LookupEvents", "mode": "throttle", "count": 2,
        }] }),
    );
    let throttled = lookup(&emu, &["us-east-1", "eu-west-1"], &[&key.id], since);
    let rule = &emu.get("/_keyturn/faults")["rules"][0];
    assert_eq!(
        rule["hits"], 2,
        "the first lookup was throttled twice: {rule}"
    );
    assert_eq!(
        throttled.key(&key.id).unwrap().consumers,
        clean.key(&key.id).unwrap().consumers,
        "the same consumers despite throttling"
    );
    assert_eq!(throttled.key(&key.id).unwrap().events, 70);
}

#[test]
fn a_permanent_lookup_failure_names_the_region() {
    let emu = Emulator::start();
    let key = app_user(&emu);
    emu.post(
        "/_keyturn/faults",
        json!({ "rules": [{
            "action": "cloudtrail:LookupEvents", "mode": "error", "code": "AccessDeniedException",
            "status": 400, "message": "not allowed to look up events",
        }] }),
    );
    let sdk = keyturn_sdk(&emu, &emu.admin, "us-east-1");
    let client = UsageClient::new(&sdk, vec!["eu-west-1".into()]);
    let err = rt()
        .block_on(client.consumers(&UsageQuery::since(
            [key.id.as_str()],
            OffsetDateTime::now_utc() - Duration::hours(1),
        )))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cloudtrail:LookupEvents")
            && text.contains("in eu-west-1")
            && text.contains("not allowed to look up events"),
        "{text}"
    );
    assert_eq!(err.exit_code(), 1);
}

#[test]
fn regions_default_to_the_accounts_enabled_regions() {
    let emu = Emulator::start();
    let sdk = keyturn_sdk(&emu, &emu.admin, "eu-west-1");
    let regions = rt().block_on(usage::resolve_regions(&sdk, None)).unwrap();
    assert_eq!(regions.len(), 17, "{regions:?}");
    assert!(regions.contains(&"us-east-1".to_string()));
    assert!(
        !regions.contains(&"af-south-1".to_string()),
        "opt-in, not enabled"
    );
    emu.post("/_keyturn/regions", json!({ "enabled": ["af-south-1"] }));
    let regions = rt().block_on(usage::resolve_regions(&sdk, None)).unwrap();
    assert!(regions.contains(&"af-south-1".to_string()));
    // A configured list wins and is validated.
    let configured = vec!["us-east-1".to_string(), "eu-west-1".to_string()];
    assert_eq!(
        rt().block_on(usage::resolve_regions(&sdk, Some(&configured)))
            .unwrap(),
        configured
    );
    let bad = vec!["eu-west".to_string()];
    assert_eq!(
        rt().block_on(usage::resolve_regions(&sdk, Some(&bad)))
            .unwrap_err()
            .exit_code(),
        2
    );
    // Without account:ListRegions the error says how to configure the regions instead.
    emu.create_user_with_policy(
        "narrow",
        json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "cloudtrail:LookupEvents", "Resource": "*"}]}),
    );
    let narrow = emu.create_key("narrow");
    let err = rt()
        .block_on(usage::resolve_regions(
            &keyturn_sdk(&emu, &narrow, "us-east-1"),
            None,
        ))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("account:ListRegions") && err.contains("[usage] regions"),
        "{err}"
    );
}
