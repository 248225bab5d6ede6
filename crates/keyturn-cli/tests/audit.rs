//! `keyturn audit` end to end against the local AWS emulator: verdicts per key in both
//! sources, several accounts (profiles, roles, an Organization), the report-denied
//! fallback, exit codes, and golden files for the output formats.

mod common;

use common::{days_ago, Creds, Emulator, Run, ACCOUNT};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// `(user, finding)` -> how many rows, plus each non-root row's status and age.
type Verdicts = BTreeMap<String, Vec<(String, Option<i64>, String)>>;

/// The verdicts of one account's rows, keyed by user: `(status, age, finding)` sorted.
/// The root user's key is compared by finding only: the API sees that it exists, not
/// its status or age.
fn verdicts(v: &Value, account: &str) -> Verdicts {
    let mut out: Verdicts = BTreeMap::new();
    for r in v["Rows"].as_array().unwrap() {
        if r["AccountId"] != account || r["Finding"] == "error" {
            continue;
        }
        let user = r["User"].as_str().unwrap().to_string();
        let root = user == "<root_account>";
        let status = if root {
            String::new()
        } else {
            r["Status"].as_str().unwrap().to_string()
        };
        let age = if root { None } else { r["AgeDays"].as_i64() };
        out.entry(user).or_default().push((
            status,
            age,
            r["Finding"].as_str().unwrap().to_string(),
        ));
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// The findings of each user (sorted), e.g. `u-91 -> [too-old]`.
fn findings_by_user(v: &Verdicts) -> BTreeMap<String, Vec<String>> {
    v.iter()
        .map(|(u, rows)| (u.clone(), rows.iter().map(|r| r.2.clone()).collect()))
        .collect()
}

fn audit(emu: &Emulator, args: &[&str]) -> Run {
    emu.run(emu.keyturn().arg("audit").args(args))
}

fn key(create_days: i64, used_days: Option<i64>) -> Value {
    json!({
        "create_date": days_ago(create_days),
        "last_used": used_days.map(days_ago),
        "last_used_service": "s3",
    })
}

fn inactive_key(create_days: i64) -> Value {
    json!({ "status": "Inactive", "create_date": days_ago(create_days), "last_used": null })
}

fn account_entry<'a>(v: &'a Value, account: &str) -> &'a Value {
    v["Accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["AccountId"] == account)
        .unwrap_or_else(|| panic!("no account {account} in {:#}", v["Accounts"]))
}

fn calls(emu: &Emulator, action: &str) -> u64 {
    emu.stats()["by_action"][action].as_u64().unwrap_or(0)
}

#[test]
fn each_key_gets_exactly_its_finding_in_both_sources() {
    let emu = Emulator::start();
    emu.seed(
        ACCOUNT,
        json!([
            { "name": "u-10", "keys": [key(10, Some(1))] },
            { "name": "u-90", "keys": [key(90, Some(1))] },
            { "name": "u-91", "keys": [key(91, Some(1))] },
            { "name": "u-400", "keys": [key(400, Some(1))] },
            { "name": "u-unused", "keys": [key(60, Some(45))] },
            { "name": "u-used-30", "keys": [key(60, Some(30))] },
            { "name": "u-never", "keys": [key(40, None)] },
            { "name": "u-never-young", "keys": [key(10, None)] },
            { "name": "u-two", "keys": [key(20, Some(1)), key(5, Some(2))] },
            { "name": "u-inactive-200", "keys": [inactive_key(200)] },
            { "name": "u-inactive-30", "keys": [inactive_key(30)] },
            { "name": "u-nokeys" },
        ]),
    );
    // One key made through the IAM API and backdated afterwards (nothing uses it).
    emu.create_user("u-89");
    let k = emu.create_key("u-89");
    emu.backdate(&k.id, 89, Some(3));
    emu.post(
        "/_keyturn/root-access-key",
        json!({ "last_rotated": days_ago(500) }),
    );

    let report = audit(&emu, &["--format", "json", "--max-unused-days", "30"]);
    report.assert_code(3);
    let report = report.json();
    assert_eq!(
        calls(&emu, "iam:ListAccessKeys"),
        0,
        "the report needs no per-user calls"
    );

    emu.reset_stats();
    let api = audit(
        &emu,
        &[
            "--format",
            "json",
            "--max-unused-days",
            "30",
            "--source",
            "api",
        ],
    );
    api.assert_code(3);
    let api = api.json();
    assert_eq!(calls(&emu, "iam:GetCredentialReport"), 0);
    assert_eq!(calls(&emu, "iam:ListAccessKeys"), 14, "one per user");
    assert_eq!(calls(&emu, "iam:GetAccessKeyLastUsed"), 14, "one per key");

    let want: BTreeMap<String, Vec<String>> = [
        ("<root_account>", vec!["root-key"]),
        ("keyturn-admin", vec!["ok"]),
        ("u-10", vec!["ok"]),
        ("u-89", vec!["ok"]),
        ("u-90", vec!["ok"]),
        ("u-91", vec!["too-old"]),
        ("u-400", vec!["too-old"]),
        ("u-unused", vec!["unused"]),
        ("u-used-30", vec!["ok"]),
        ("u-never", vec!["unused"]),
        ("u-never-young", vec!["ok"]),
        ("u-two", vec!["two-active", "two-active"]),
        ("u-inactive-200", vec!["stale-inactive"]),
        ("u-inactive-30", vec!["ok"]),
    ]
    .into_iter()
    .map(|(u, f)| (u.to_string(), f.into_iter().map(String::from).collect()))
    .collect();
    let from_report = verdicts(&report, ACCOUNT);
    let from_api = verdicts(&api, ACCOUNT);
    assert_eq!(findings_by_user(&from_report), want);
    assert_eq!(
        from_report, from_api,
        "both sources give identical verdicts"
    );

    // Ages are whole days; the report names slots, the API masked key ids.
    assert_eq!(
        from_report["u-91"],
        vec![("Active".into(), Some(91), "too-old".into())]
    );
    assert_eq!(
        from_report["u-inactive-200"],
        vec![("Inactive".into(), Some(200), "stale-inactive".into())]
    );
    let key_of = |v: &Value, user: &str| -> Vec<Value> {
        v["Rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["User"] == user)
            .map(|r| r["Key"].clone())
            .collect()
    };
    assert_eq!(key_of(&report, "u-89"), vec![json!("slot 1")]);
    let last4 = &k.id[k.id.len() - 4..];
    assert_eq!(key_of(&api, "u-89"), vec![json!(format!("****{last4}"))]);
    assert!(
        !api.to_string().contains(&k.id),
        "full key ids are never shown"
    );
    assert_eq!(report["Summary"]["Users"], 14);
    assert_eq!(api["Accounts"][0]["Source"], "api");
    for v in [&report, &api] {
        assert_eq!(v["Summary"]["Findings"]["too-old"], 2);
        assert_eq!(v["Summary"]["Findings"]["unused"], 2);
        assert_eq!(v["Summary"]["Findings"]["two-active"], 2);
        assert_eq!(v["Summary"]["Findings"]["stale-inactive"], 1);
        assert_eq!(v["Summary"]["Findings"]["root-key"], 1);
    }
}

#[test]
fn user_path_limits_the_audit_to_those_users() {
    let emu = Emulator::start();
    emu.seed(
        ACCOUNT,
        json!([
            { "name": "ci", "path": "/bots/", "keys": [key(100, Some(1))] },
            { "name": "deep", "path": "/bots/team/", "keys": [key(5, Some(1))] },
            { "name": "human", "keys": [key(300, Some(1))] },
        ]),
    );
    emu.post("/_keyturn/root-access-key", json!({}));
    for source in ["report", "api"] {
        let run = audit(
            &emu,
            &[
                "--format",
                "json",
                "--user-path",
                "/bots/",
                "--source",
                source,
            ],
        );
        run.assert_code(3);
        let v = run.json();
        let users = findings_by_user(&verdicts(&v, ACCOUNT));
        assert_eq!(
            users,
            BTreeMap::from([
                ("ci".to_string(), vec!["too-old".to_string()]),
                ("deep".to_string(), vec!["ok".to_string()]),
            ]),
            "{source}: no root row, no users outside /bots/"
        );
        assert_eq!(v["Summary"]["Users"], 2);
    }
}

#[test]
fn all_compliant_exits_0() {
    let emu = Emulator::start();
    emu.seed(
        ACCOUNT,
        json!([{ "name": "fresh", "keys": [key(3, Some(1))] }]),
    );
    for source in ["report", "api"] {
        let run = audit(&emu, &["--source", source, "--format", "csv"]);
        run.assert_code(0);
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines.len(), 3, "header, admin, fresh:\n{}", run.stdout);
        assert!(
            lines[1..].iter().all(|l| l.contains(",ok,")),
            "{}",
            run.stdout
        );
        run.assert_stderr("0 findings");
    }
    let table = audit(&emu, &[]);
    table.assert_code(0);
    assert!(table
        .stdout
        .contains("No findings: 2 keys in 1 account compliant."));
    assert!(
        !table.stdout.contains('\u{1b}'),
        "no colour without a terminal"
    );
}

#[test]
fn invalid_input_exits_2_before_any_aws_call() {
    let emu = Emulator::start();
    let config = emu.dir.path().join("bad.toml");
    std::fs::write(&config, "[audit]\nconcurrency = 0\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    for args in [
        vec!["--max-age-days", "0"],
        vec!["--max-unused-days", "-3"],
        vec!["--role-arn", "KeyturnAudit"],
        vec!["--role-arn", "arn:aws:iam::123456789012:user/bob"],
        vec!["--user-path", "bots"],
        vec!["--organization"],
        vec!["--role-name", "KeyturnAudit"],
        vec!["--organization", "--role-name", "bad/name"],
        vec!["--format", "yaml"],
        vec!["--source", "cloudtrail"],
        vec!["--concurrency", "0"],
        vec!["--config", &config],
    ] {
        let run = audit(&emu, &args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(emu.stats()["requests"], 0, "nothing was sent to AWS");
}

#[test]
fn every_account_failing_exits_1() {
    let emu = Emulator::start();
    let nobody = Creds {
        id: "AKIAUNKNOWNUNKNOWN00".into(),
        secret: "x".repeat(40),
        token: None,
    };
    let run = emu.run(emu.keyturn_as(&nobody).args(["audit", "--format", "json"]));
    run.assert_code(1);
    let v = run.json();
    assert_eq!(v["Summary"]["AccountsFailed"], 1);
    assert_eq!(v["Rows"][0]["Finding"], "error");
    assert!(
        v["Accounts"][0]["Error"]
            .as_str()
            .unwrap()
            .contains("InvalidClientTokenId"),
        "{v:#}"
    );
    run.assert_stderr("error: account ?");

    let run = audit(
        &emu,
        &["--role-arn", "arn:aws:iam::333333333333:role/Missing"],
    );
    run.assert_code(1);
    assert!(
        run.stdout.contains("sts:AssumeRole failed: AccessDenied"),
        "{}",
        run.stdout
    );

    // No Organization to list: one error row for the listing itself.
    let run = audit(
        &emu,
        &[
            "--organization",
            "--role-name",
            "KeyturnAudit",
            "--format",
            "json",
        ],
    );
    run.assert_code(1);
    let v = run.json();
    assert_eq!(v["Accounts"][0]["Via"], "organization");
    assert!(
        v["Accounts"][0]["Error"]
            .as_str()
            .unwrap()
            .contains("organizations:ListAccounts"),
        "{v:#}"
    );
}

#[test]
fn profiles_and_roles_add_accounts_and_an_unassumable_role_is_an_error_row() {
    let emu = Emulator::start();
    // Account 111111111111, reached with a profile of one of its users.
    let seeded = emu.seed(
        "111111111111",
        json!([
            { "name": "ops", "admin": true, "keys": [{}] },
            { "name": "p-old", "keys": [key(120, Some(1))] },
        ]),
    );
    let ops = &seeded["users"][0]["keys"][0];
    let creds_file = emu.dir.path().join("credentials");
    let profile = |name: &str| {
        format!(
            "[{name}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            ops["access_key_id"].as_str().unwrap(),
            ops["secret_access_key"].as_str().unwrap()
        )
    };
    std::fs::write(&creds_file, profile("ops") + &profile("ops-again")).unwrap();
    // Account 222222222222, reached by assuming a role that trusts the admin account.
    emu.post(
        "/_keyturn/role",
        json!({ "account_id": "222222222222", "role_name": "Audit" }),
    );
    emu.seed(
        "222222222222",
        json!([{ "name": "r-stale", "keys": [inactive_key(365)] }]),
    );

    let run = emu.run(
        emu.keyturn()
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds_file)
            .args([
                "audit",
                "--format",
                "json",
                "--profile",
                "ops",
                "--profile",
                "ops-again",
                "--profile",
                "nope",
                "--role-arn",
                "arn:aws:iam::222222222222:role/Audit",
                "--role-arn",
                "arn:aws:iam::333333333333:role/Missing",
            ]),
    );
    run.assert_code(3);
    let v = run.json();
    let ids: Vec<&str> = v["Accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["AccountId"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        ids,
        ["111111111111", "-", "222222222222", "333333333333"],
        "the same account through two profiles is audited once"
    );
    let missing = &v["Accounts"][1];
    assert_eq!(missing["Via"], "profile:nope");
    assert!(
        missing["Error"]
            .as_str()
            .unwrap()
            .contains("profile \"nope\" gave no credentials"),
        "{missing:#}"
    );
    assert_eq!(account_entry(&v, "111111111111")["Via"], "profile:ops");
    assert_eq!(
        findings_by_user(&verdicts(&v, "111111111111")),
        BTreeMap::from([
            ("ops".to_string(), vec!["ok".to_string()]),
            ("p-old".to_string(), vec!["too-old".to_string()]),
        ])
    );
    assert_eq!(
        findings_by_user(&verdicts(&v, "222222222222")),
        BTreeMap::from([("r-stale".to_string(), vec!["stale-inactive".to_string()])])
    );
    let failed = account_entry(&v, "333333333333");
    assert_eq!(failed["Status"], "error");
    assert!(failed["Error"].as_str().unwrap().contains("AccessDenied"));
    run.assert_stderr("error: account 333333333333");
    // The role session is named keyturn-audit (visible in CloudTrail on AWS).
    assert!(calls(&emu, "sts:AssumeRole") >= 2);
}

/// Create an organization with two members that have `KeyturnAudit` and one whose
/// member role has another name (so `KeyturnAudit` cannot be assumed there).
fn organization(emu: &Emulator) -> (String, String, String) {
    use aws_sdk_organizations::types::OrganizationFeatureSet;
    let org = aws_sdk_organizations::Client::new(&emu.sdk_config(&emu.admin));
    let rt = common::rt();
    rt.block_on(
        org.create_organization()
            .feature_set(OrganizationFeatureSet::All)
            .send(),
    )
    .unwrap();
    let create = |name: &str, role: &str| -> String {
        let out = rt
            .block_on(
                org.create_account()
                    .email(format!("{name}@example.com"))
                    .account_name(name)
                    .role_name(role)
                    .send(),
            )
            .unwrap();
        out.create_account_status()
            .unwrap()
            .account_id()
            .unwrap()
            .to_string()
    };
    (
        create("member-a", "KeyturnAudit"),
        create("member-b", "KeyturnAudit"),
        create("member-c", "SomethingElse"),
    )
}

#[test]
fn organization_accounts_are_audited_and_an_unassumable_one_is_an_error_row() {
    let emu = Emulator::start();
    let (a, b, c) = organization(&emu);
    emu.seed(
        ACCOUNT,
        json!([{ "name": "mgmt-old", "keys": [key(95, Some(1))] }]),
    );
    emu.seed(
        &a,
        json!([{ "name": "a-stale", "keys": [inactive_key(100)] }]),
    );
    emu.seed(
        &b,
        json!([{ "name": "b-two", "keys": [key(3, Some(1)), key(2, Some(1))] }]),
    );
    emu.seed(
        &c,
        json!([{ "name": "c-old", "keys": [key(500, Some(1))] }]),
    );

    let mut by_source = Vec::new();
    for source in ["report", "api"] {
        let run = audit(
            &emu,
            &[
                "--organization",
                "--role-name",
                "KeyturnAudit",
                "--format",
                "json",
                "--source",
                source,
            ],
        );
        run.assert_code(3);
        let v = run.json();
        assert_eq!(v["Summary"]["Accounts"], 4, "{v:#}");
        assert_eq!(v["Summary"]["AccountsFailed"], 1);
        assert_eq!(account_entry(&v, ACCOUNT)["Status"], "ok");
        assert_eq!(
            findings_by_user(&verdicts(&v, ACCOUNT)),
            BTreeMap::from([
                ("keyturn-admin".to_string(), vec!["ok".to_string()]),
                ("mgmt-old".to_string(), vec!["too-old".to_string()]),
            ])
        );
        assert_eq!(
            findings_by_user(&verdicts(&v, &a)),
            BTreeMap::from([("a-stale".to_string(), vec!["stale-inactive".to_string()])])
        );
        assert_eq!(
            findings_by_user(&verdicts(&v, &b)),
            BTreeMap::from([(
                "b-two".to_string(),
                vec!["two-active".to_string(), "two-active".to_string()]
            )])
        );
        assert_eq!(account_entry(&v, &a)["Via"], "organization:member-a");
        let failed = account_entry(&v, &c);
        assert_eq!(failed["Status"], "error");
        let error = failed["Error"].as_str().unwrap();
        assert!(
            error.contains("sts:AssumeRole failed: AccessDenied")
                && error.contains(&format!("arn:aws:iam::{c}:role/KeyturnAudit")),
            "{error}"
        );
        // c-old lives in the account that could not be read: it must not appear.
        assert!(!run.stdout.contains("c-old"));
        by_source.push(v);
    }
    for account in [ACCOUNT, a.as_str(), b.as_str()] {
        assert_eq!(
            verdicts(&by_source[0], account),
            verdicts(&by_source[1], account),
            "identical verdicts in {account}"
        );
    }
    assert!(calls(&emu, "organizations:ListAccounts") >= 2);
}

#[test]
fn a_denied_credential_report_falls_back_to_the_api_with_a_warning() {
    let emu = Emulator::start();
    emu.create_user_with_policy(
        "auditor",
        json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Action": ["iam:ListUsers", "iam:ListAccessKeys", "iam:GetAccessKeyLastUsed"],
                "Resource": "*"
            }]
        }),
    );
    let auditor = emu.create_key("auditor");
    emu.seed(
        ACCOUNT,
        json!([{ "name": "old", "keys": [key(200, Some(1))] }]),
    );
    emu.post("/_keyturn/root-access-key", json!({}));
    let run = emu.run(emu.keyturn_as(&auditor).args(["audit", "--format", "json"]));
    run.assert_code(3);
    let v = run.json();
    let acct = &v["Accounts"][0];
    assert_eq!(acct["Source"], "api");
    assert!(
        acct["FallbackReason"]
            .as_str()
            .unwrap()
            .contains("iam:GenerateCredentialReport failed: AccessDenied"),
        "{acct:#}"
    );
    assert!(
        run.stderr.contains("warning") && run.stderr.contains("used the IAM API instead"),
        "{}",
        run.stderr
    );
    // GetAccountSummary is not allowed either: the root user is reported unchecked.
    assert!(
        run.stderr
            .contains("root user's access keys were not checked"),
        "{}",
        run.stderr
    );
    assert_eq!(
        findings_by_user(&verdicts(&v, ACCOUNT))["old"],
        vec!["too-old".to_string()]
    );
}

#[test]
fn csv_cells_that_would_start_a_formula_are_prefixed() {
    let emu = Emulator::start();
    // IAM user names may contain = + - @, so may start with them.
    let hostile = ["=1+1", "-2+3@x", "+cmd", "@SUM"];
    emu.seed(
        ACCOUNT,
        json!(hostile
            .iter()
            .map(|name| json!({ "name": name, "keys": [key(100, Some(1))] }))
            .collect::<Vec<_>>()),
    );
    for source in ["report", "api"] {
        let run = audit(&emu, &["--format", "csv", "--source", source]);
        run.assert_code(3);
        let mut rdr = csv::Reader::from_reader(run.stdout.as_bytes());
        let user = rdr
            .headers()
            .unwrap()
            .iter()
            .position(|h| h == "user")
            .unwrap();
        let mut users: Vec<String> = rdr
            .records()
            .map(|r| r.unwrap()[user].to_string())
            .filter(|u| u != "keyturn-admin" && u != "<root_account>")
            .collect();
        users.sort();
        assert_eq!(
            users,
            ["'+cmd", "'-2+3@x", "'=1+1", "'@SUM"],
            "{source}:\n{}",
            run.stdout
        );
        for line in run.stdout.lines() {
            for cell in line.split(',') {
                assert!(
                    !cell.trim_start_matches('"').starts_with(['=', '+', '@']),
                    "{source}: {cell:?} in {line:?}"
                );
            }
        }
    }
    // Only CSV is for spreadsheets: JSON keeps the names as they are.
    let v = audit(&emu, &["--format", "json"]).json();
    let users = findings_by_user(&verdicts(&v, ACCOUNT));
    for name in hostile {
        assert_eq!(users[name], ["too-old"], "{name}");
    }
}

// ---- output formats ----------------------------------------------------------------

/// A fixed set of users whose output is stable apart from dates and key ids.
fn golden_emulator() -> Emulator {
    let emu = Emulator::start();
    emu.seed(
        ACCOUNT,
        json!([
            { "name": "app-ok", "keys": [key(10, Some(1))] },
            { "name": "app-old", "keys": [key(400, Some(2))] },
            { "name": "ci+bot", "keys": [key(91, None)] },
            { "name": "dual", "keys": [key(30, Some(1)), key(1, Some(1))] },
            { "name": "retired", "keys": [inactive_key(200)] },
        ]),
    );
    emu.post(
        "/_keyturn/root-access-key",
        json!({ "last_rotated": days_ago(700) }),
    );
    emu
}

fn golden_filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", "[TIME]"),
        (r"\d{4}-\d{2}-\d{2}", "[DATE]"),
        (r"\*\*\*\*[A-Z0-9]{4}", "****[KEY]"),
        (r#""KeyIdLast4": "[A-Z0-9]{4}""#, r#""KeyIdLast4": "[KEY]""#),
    ]
}

#[test]
fn golden_json_csv_markdown() {
    let emu = golden_emulator();
    let args = ["--max-unused-days", "60"];
    for (format, source) in [
        ("json", "report"),
        ("json", "api"),
        ("csv", "report"),
        ("markdown", "report"),
    ] {
        let run = audit(
            &emu,
            &[&args[..], &["--format", format, "--source", source]].concat(),
        );
        run.assert_code(3);
        insta::with_settings!({ filters => golden_filters(), prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(format!("audit_{format}_{source}"), run.stdout);
        });
    }
}

/// Check that `html` is well formed: every element closed in order (void elements
/// excepted), attribute values quoted, and `&` only in character references. Returns
/// the element names in document order.
fn parse_html(html: &str) -> Vec<String> {
    const VOID: [&str; 4] = ["meta", "br", "img", "link"];
    let mut stack: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        check_text(&rest[..lt]);
        let gt = rest[lt..].find('>').expect("unclosed tag") + lt;
        let tag = &rest[lt + 1..gt];
        rest = &rest[gt + 1..];
        if tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack
                .pop()
                .unwrap_or_else(|| panic!("</{name}> closes nothing"));
            assert_eq!(open, name, "</{name}> closes <{open}>");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let name = tag.split_whitespace().next().unwrap().to_string();
        let attrs = &tag[name.len()..];
        assert_eq!(
            attrs.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        for part in attrs.split('"').step_by(2) {
            for a in part.split_whitespace() {
                assert!(a.ends_with('='), "unquoted attribute {a:?} in <{tag}>");
            }
        }
        seen.push(name.clone());
        if !self_closing && !VOID.contains(&name.as_str()) {
            stack.push(name);
        }
    }
    check_text(rest);
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    seen
}

fn check_text(text: &str) {
    for (i, _) in text.match_indices('&') {
        let entity = &text[i..text[i..].find(';').map(|e| i + e + 1).unwrap_or(text.len())];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].contains(&entity),
            "bare & in {text:?}"
        );
    }
}

#[test]
fn html_report_is_one_self_contained_well_formed_file() {
    let emu = golden_emulator();
    let out = emu.dir.path().join("audit.html");
    let run = audit(
        &emu,
        &[
            "--format",
            "html",
            "--max-unused-days",
            "60",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    run.assert_code(3);
    assert!(run.stdout.is_empty(), "--out leaves stdout empty");
    let html = std::fs::read_to_string(&out).unwrap();
    let tags = parse_html(&html);
    assert_eq!(tags[0], "html");
    assert!(tags.iter().any(|t| t == "svg"), "inline SVG chart");
    assert!(
        tags.iter().filter(|t| *t == "rect").count() >= 4,
        "histogram bars"
    );
    assert!(
        html.contains("max age 90 days"),
        "the max-age line is labelled"
    );
    for finding in [
        "too-old",
        "unused",
        "two-active",
        "stale-inactive",
        "root-key",
    ] {
        assert!(
            html.contains(&format!("<span class=\"f {finding}\">{finding}</span>")),
            "{finding}"
        );
    }
    for user in [
        "app-old",
        "ci+bot",
        "dual",
        "retired",
        "&lt;root_account&gt;",
    ] {
        assert!(html.contains(&format!("<td>{user}</td>")), "{user}");
    }
    // No external assets: nothing is loaded from anywhere.
    let lower = html.to_lowercase();
    for banned in [
        "http:", "https:", "src=", "href=", "<script", "<link", "@import", "url(",
    ] {
        assert!(!lower.contains(banned), "{banned} in the HTML");
    }
}

// ---- --usage: CloudTrail consumers of each Active key ------------------------------

const CLI_UA: &str =
    "aws-cli/2.15.30 Python/3.11.6 Linux/6.1.0 exe/x86_64.debian.12 prompt/off command/s3.ls";

/// The only key of `user`.
fn only_key(emu: &Emulator, user: &str) -> String {
    let keys = emu.keys(user);
    assert_eq!(keys.len(), 1, "{user}: {keys:?}");
    keys[0].0.clone()
}

/// The golden users, with CloudTrail events: app-old's key is used by aws-cli from
/// 10.0.4.17 (120 calls in eu-west-1 over ~10 h: three pages) and by terraform from
/// 10.0.9.9 in us-east-1; ci+bot's key by a host whose user agent is hostile. app-ok's
/// key has no events. `[usage] regions` = us-east-1, eu-west-1.
fn usage_emulator() -> Emulator {
    let emu = golden_emulator();
    let old = only_key(&emu, "app-old");
    let bot = only_key(&emu, "ci+bot");
    let r = emu.post(
        "/_keyturn/cloudtrail/events",
        json!({ "events": [{
            "access_key_id": old, "event_name": "ListBuckets",
            "event_source": "s3.amazonaws.com", "aws_region": "eu-west-1",
            "source_ip": "10.0.4.17", "user_agent": CLI_UA, "hours_ago": 1,
            "count": 120, "interval_seconds": 300,
        }, {
            "access_key_id": old, "event_name": "DescribeInstances",
            "event_source": "ec2.amazonaws.com", "aws_region": "eu-west-1",
            "source_ip": "10.0.4.17", "user_agent": CLI_UA, "hours_ago": 2,
        }, {
            "access_key_id": old, "event_name": "GetUser", "event_source": "iam.amazonaws.com",
            "source_ip": "10.0.9.9", "user_agent": "terraform/1.7.0", "hours_ago": 5,
            "count": 3, "interval_seconds": 3600,
        }, {
            "access_key_id": bot, "event_name": "GetCallerIdentity",
            "event_source": "sts.amazonaws.com", "source_ip": "192.0.2.8",
            "user_agent": "=cmd|' /C calc'!A0 <b>x</b>", "hours_ago": 30,
        }] }),
    );
    assert!(r.is_object(), "{r}");
    let dir = emu.dir.path().join("config/keyturn");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "[usage]\nregions = [\"us-east-1\", \"eu-west-1\"]\n",
    )
    .unwrap();
    emu
}

/// `(user, [(source ip, tool, events)])` of every row that has `Consumers`.
fn consumers_by_user(v: &Value) -> BTreeMap<String, Vec<(String, String, u64)>> {
    let mut out = BTreeMap::new();
    for r in v["Rows"].as_array().unwrap() {
        if let Some(list) = r["Consumers"].as_array() {
            let found = list
                .iter()
                .map(|c| {
                    (
                        c["SourceIp"].as_str().unwrap().to_string(),
                        c["UserAgent"]
                            .as_str()
                            .unwrap()
                            .split(' ')
                            .next()
                            .unwrap()
                            .to_string(),
                        c["Events"].as_u64().unwrap(),
                    )
                })
                .collect();
            out.insert(r["User"].as_str().unwrap().to_string(), found);
        }
    }
    out
}

#[test]
fn usage_names_the_consumers_of_each_active_key_in_both_sources() {
    let emu = usage_emulator();
    let want: BTreeMap<String, Vec<(String, String, u64)>> = [
        ("app-ok", vec![]),
        (
            "app-old",
            vec![
                ("10.0.4.17".into(), "aws-cli/2.15.30".into(), 121),
                ("10.0.9.9".into(), "terraform/1.7.0".into(), 3),
            ],
        ),
        ("ci+bot", vec![("192.0.2.8".into(), "=cmd|'".into(), 1)]),
        ("dual", vec![]),
    ]
    .into_iter()
    .map(|(u, c)| (u.to_string(), c))
    .collect();
    for source in ["report", "api"] {
        emu.reset_stats();
        let run = audit(&emu, &["--usage", "--format", "json", "--source", source]);
        run.assert_code(3);
        let v = run.json();
        assert_eq!(v["Policy"]["Usage"], true);
        let mut got = consumers_by_user(&v);
        // The emulator's admin key signs this test's own set-up calls (a plain SDK
        // client, not keyturn): a consumer too. keyturn's audit calls are not.
        let admin = got.remove("keyturn-admin").expect("the admin key's row");
        assert!(
            admin.len() == 1
                && admin[0].0 == "127.0.0.1"
                && admin[0].1.starts_with("aws-sdk-rust/"),
            "{admin:?}"
        );
        assert_eq!(got, want, "source {source}: {:#}", v["Rows"]);
        let rows = v["Rows"].as_array().unwrap();
        for r in rows {
            let looked_up = r["Consumers"].is_array();
            let active_user_key = r["Status"] == "Active" && r["User"] != "<root_account>";
            assert_eq!(looked_up, active_user_key, "{r}");
        }
        let old = rows.iter().find(|r| r["User"] == "app-old").unwrap();
        let cli = &old["Consumers"][0];
        assert_eq!(cli["UserAgent"], CLI_UA);
        assert_eq!(
            cli["TopEvents"][0],
            json!({"Api": "s3:ListBuckets", "Count": 120})
        );
        assert_eq!(cli["Regions"], json!(["eu-west-1"]));
        assert_eq!(
            cli["Description"],
            "used 121 times in 10 h by 10.0.4.17 aws-cli/2.15.30 (s3:ListBuckets, ec2:DescribeInstances in eu-west-1)"
        );
        let usage = &account_entry(&v, ACCOUNT)["Usage"];
        assert_eq!(usage["Regions"], json!(["us-east-1", "eu-west-1"]));
        assert_eq!(usage["Keys"], 6, "5 golden keys and the admin's");
        assert!(usage["Error"].is_null());
        // Six keys, two regions, app-old's eu-west-1 walk is three pages long.
        assert_eq!(
            calls(&emu, "cloudtrail:LookupEvents"),
            6 * 2 + 2,
            "{source}"
        );
        // The audit shows key ids no more than without --usage.
        let old_id = only_key(&emu, "app-old");
        assert!(!run.stdout.contains(&old_id), "{source}");
    }
}

#[test]
fn usage_in_table_csv_markdown_and_html() {
    let emu = usage_emulator();
    let run = audit(&emu, &["--usage"]);
    run.assert_code(3);
    for needle in ["Consumers", "app-ok", "10.0.4.17 aws-cli/2.15.30", "none"] {
        assert!(
            run.stdout.contains(needle),
            "table: {needle}\n{}",
            run.stdout
        );
    }
    let run = audit(&emu, &["--usage", "--format", "csv"]);
    let mut rdr = csv::Reader::from_reader(run.stdout.as_bytes());
    let headers: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(headers.last().unwrap(), "consumers");
    let recs: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    let cell = |user: &str| {
        recs.iter()
            .find(|r| &r[2] == user)
            .map(|r| r[headers.len() - 1].to_string())
            .unwrap()
    };
    assert!(cell("app-old").starts_with("used 121 times in 10 h by 10.0.4.17 aws-cli/2.15.30"));
    assert!(cell("app-old")
        .contains("; used 3 times in 2 h by 10.0.9.9 terraform/1.7.0 (iam:GetUser in us-east-1)"));
    assert_eq!(cell("app-ok"), "none");
    assert_eq!(cell("retired"), "");
    assert!(cell("ci+bot").starts_with("used once by 192.0.2.8 =cmd|'"));
    let run = audit(&emu, &["--usage", "--format", "markdown"]);
    assert!(
        run.stdout.contains("## Findings and consumers"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("| `app-ok` |"), "{}", run.stdout);
    assert!(
        run.stdout.contains("by 192.0.2.8 =cmd\\|'"),
        "{}",
        run.stdout
    );
    let out = emu.dir.path().join("usage.html");
    audit(
        &emu,
        &[
            "--usage",
            "--format",
            "html",
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .assert_code(3);
    let html = std::fs::read_to_string(&out).unwrap();
    parse_html(&html);
    assert!(html.contains("<h2>Consumers</h2>"));
    assert!(
        html.contains(
            "<td class=\"k\">10.0.9.9</td><td>terraform/1.7.0</td><td class=\"n\">3</td>"
        ),
        "{html}"
    );
    assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"));
    assert!(!html.contains("<b>x"));
}

#[test]
fn usage_golden_json() {
    let emu = usage_emulator();
    let run = audit(
        &emu,
        &["--usage", "--max-unused-days", "60", "--format", "json"],
    );
    run.assert_code(3);
    // The test's own SDK client (the admin key's consumer) changes with the SDK.
    let mut filters = golden_filters();
    filters.push((
        r#""UserAgent": "aws-sdk-rust/[^"]*""#,
        r#""UserAgent": "[SDK]""#,
    ));
    filters.push((r"aws-sdk-rust/[0-9.]+", "aws-sdk-rust/[V]"));
    insta::with_settings!({ filters => filters, prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("audit_json_usage_report", run.stdout);
    });
}

#[test]
fn usage_throttling_is_absorbed_and_a_denied_lookup_is_a_warning() {
    let emu = usage_emulator();
    let clean = consumers_by_user(&audit(&emu, &["--usage", "--format", "json"]).json());
    emu.faults(json!([{ "action": "cloudtrail:LookupEvents", "mode": "throttle", "count": 3 }]));
    let throttled = audit(&emu, &["--usage", "--format", "json"]);
    throttled.assert_code(3);
    assert_eq!(consumers_by_user(&throttled.json()), clean);
    let rule = &emu.get("/_keyturn/faults")["rules"][0];
    assert_eq!(rule["hits"], 3, "{rule}");
    // CloudTrail denied: the audit completes, the consumers are unknown (null), never
    // "none", and stderr says what to grant.
    emu.faults(json!([{
        "action": "cloudtrail:LookupEvents", "mode": "error", "code": "AccessDeniedException",
        "status": 400, "message": "not allowed to look up events",
    }]));
    let denied = audit(&emu, &["--usage", "--format", "json"]);
    denied.assert_code(3);
    denied.assert_stderr("cloudtrail:LookupEvents");
    let v = denied.json();
    assert!(consumers_by_user(&v).is_empty(), "{:#}", v["Rows"]);
    let usage = &account_entry(&v, ACCOUNT)["Usage"];
    assert!(
        usage["Error"]
            .as_str()
            .unwrap()
            .contains("not allowed to look up events"),
        "{usage}"
    );
    let warnings = account_entry(&v, ACCOUNT)["Warnings"].to_string();
    assert!(warnings.contains("--usage"), "{warnings}");
    let table = audit(&emu, &["--usage"]);
    assert!(table.stdout.contains("unknown"), "{}", table.stdout);
}
