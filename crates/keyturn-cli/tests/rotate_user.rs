//! `keyturn rotate --user`: the nine contract scenarios and the output contract,
//! run with the real binary against the emulator with auth enforced.

mod common;

use common::*;
use serde_json::json;

fn active(id: &str) -> (String, String) {
    (id.to_string(), "Active".to_string())
}

fn inactive(id: &str) -> (String, String) {
    (id.to_string(), "Inactive".to_string())
}

/// Scenario 1: one Active key, no flags: K1 still Active, new K2 Active, printed once.
#[test]
fn s1_one_active_key_no_flags_adds_a_key() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let run = emu.run(emu.keyturn().args(["rotate", "--user", "ci-bot"]));
    run.assert_code(0);
    let new = run.env_creds();
    assert_eq!(
        run.stdout.lines().count(),
        2,
        "two export lines:\n{}",
        run.stdout
    );
    let mut want = vec![active(&k1.id), active(&new.id)];
    want.sort();
    assert_eq!(emu.keys("ci-bot"), want);
    assert_eq!(
        emu.whoami(&new).unwrap(),
        format!("arn:aws:iam::{ACCOUNT}:user/ci-bot")
    );
    assert_eq!(
        emu.whoami(&k1).unwrap(),
        format!("arn:aws:iam::{ACCOUNT}:user/ci-bot")
    );
    assert_no_secret(&new.secret, &[("stderr", &run.stderr)]);
}

/// Scenario 2: --deactivate-old-keys --yes: K1 Inactive after K2 verified.
#[test]
fn s2_deactivate_old_keys() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let run = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--deactivate-old-keys",
        "--yes",
        "--output",
        "json",
    ]));
    run.assert_code(0);
    let v = run.json();
    let new_id = v["AccessKeyId"].as_str().unwrap();
    let mut want = vec![inactive(&k1.id), active(new_id)];
    want.sort();
    assert_eq!(emu.keys("ci-bot"), want);
    let steps: Vec<&str> = v["Actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["Step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "create-key",
            "verify-new-key",
            "deliver",
            "verify-delivery",
            "deactivate-old-key"
        ]
    );
    assert_eq!(emu.whoami(&k1), Err("InvalidClientTokenId".into()));
}

/// Scenario 3: a destructive flag without --yes: exit 2, IAM unchanged, no key created.
#[test]
fn s3_destructive_flag_without_yes_changes_nothing() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    for flag in ["--deactivate-old-keys", "--delete-inactive-keys"] {
        emu.reset_stats();
        let run = emu.run(emu.keyturn().args(["rotate", "--user", "ci-bot", flag]));
        run.assert_code(2);
        run.assert_stderr("--yes");
        assert!(run.stdout.is_empty());
        assert_eq!(emu.keys("ci-bot"), [active(&k1.id)]);
        let stats = emu.stats();
        assert!(
            stats["by_action"].get("iam:CreateAccessKey").is_none(),
            "{stats}"
        );
    }
}

/// Scenario 4: Active K1 + Inactive K2 without --delete-inactive-keys: exit 2 naming K2
/// and the flag; IAM unchanged.
#[test]
fn s4_slot_full_with_inactive_key_refuses() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let k2 = emu.create_key("ci-bot");
    emu.deactivate("ci-bot", &k2.id);
    let before = emu.keys("ci-bot");
    let run = emu.run(emu.keyturn().args(["rotate", "--user", "ci-bot"]));
    run.assert_code(2);
    run.assert_stderr(&k2.id);
    run.assert_stderr("--delete-inactive-keys");
    assert!(run.stdout.is_empty());
    assert_eq!(emu.keys("ci-bot"), before);
    assert!(before.contains(&active(&k1.id)));
}

/// Scenario 5: same with --delete-inactive-keys --yes: K2 deleted, K3 created, K1 untouched.
#[test]
fn s5_delete_inactive_frees_the_slot() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let k2 = emu.create_key("ci-bot");
    emu.deactivate("ci-bot", &k2.id);
    let run = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--delete-inactive-keys",
        "--yes",
    ]));
    run.assert_code(0);
    let k3 = run.env_creds();
    let mut want = vec![active(&k1.id), active(&k3.id)];
    want.sort();
    assert_eq!(emu.keys("ci-bot"), want);
    assert!(emu.whoami(&k1).is_ok(), "K1 still works");
}

/// Scenario 6: two Active keys: exit 2 listing both with age and last use; unchanged,
/// whatever the flags.
#[test]
fn s6_two_active_keys_refuse_with_every_flag() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let k2 = emu.create_key("ci-bot");
    emu.backdate(&k1.id, 120, Some(3));
    emu.backdate(&k2.id, 30, None);
    let before = emu.keys("ci-bot");
    for flags in [
        vec![],
        vec!["--deactivate-old-keys", "--yes"],
        vec!["--deactivate-old-keys", "--delete-inactive-keys", "--yes"],
    ] {
        let mut cmd = emu.keyturn();
        cmd.args(["rotate", "--user", "ci-bot"]).args(&flags);
        let run = emu.run(&mut cmd);
        run.assert_code(2);
        for needle in [
            k1.id.as_str(),
            k2.id.as_str(),
            "120 days old",
            "30 days old",
            "3 days ago, s3",
            "never used",
        ] {
            run.assert_stderr(needle);
        }
        assert!(run.stdout.is_empty());
        assert_eq!(emu.keys("ci-bot"), before);
    }
}

/// Scenario 7: all flags on one Active key: only the new key remains.
#[test]
fn s7_full_cleanup_leaves_only_the_new_key() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let run = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--deactivate-old-keys",
        "--delete-inactive-keys",
        "--yes",
    ]));
    run.assert_code(0);
    let new = run.env_creds();
    assert_eq!(emu.keys("ci-bot"), [active(&new.id)]);
    assert_eq!(emu.whoami(&k1), Err("InvalidClientTokenId".into()));
    assert!(emu.whoami(&new).is_ok());
}

/// Scenario 8a: unknown user: exit 2 with a clear message.
#[test]
fn s8_unknown_user_is_exit_2() {
    let emu = Emulator::start();
    let run = emu.run(emu.keyturn().args(["rotate", "--user", "ghost"]));
    run.assert_code(2);
    run.assert_stderr("IAM user 'ghost' does not exist");
    assert!(run.stdout.is_empty());
}

/// Scenario 8b: access denied: exit 1 naming the denied IAM action; nothing changed.
#[test]
fn s8_access_denied_names_the_action() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    emu.create_user_with_policy(
        "auditor",
        json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow",
            "Action": ["iam:ListAccessKeys", "iam:GetAccessKeyLastUsed", "sts:GetCallerIdentity"],
            "Resource": "*"}]}),
    );
    let auditor = emu.create_key("auditor");
    let run = emu.run(
        emu.keyturn_as(&auditor)
            .args(["rotate", "--user", "ci-bot"]),
    );
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("iam:CreateAccessKey failed: AccessDenied"),
        "{}",
        run.stderr
    );
    assert!(run
        .stderr
        .contains("not allowed to perform iam:CreateAccessKey"));
    assert_eq!(emu.keys("ci-bot"), [active(&k1.id)]);
}

/// Scenario 9a: on the emulator a key works at once: three consecutive successes, no
/// waiting, and the key authenticates as the user.
#[test]
fn s9_verification_costs_three_calls_when_the_key_works_at_once() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    emu.reset_stats();
    let run = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot", "--output", "json"]),
    );
    run.assert_code(0);
    let v = run.json();
    assert_eq!(v["Verification"]["Attempts"], 3);
    assert_eq!(
        v["Verification"]["Arn"],
        format!("arn:aws:iam::{ACCOUNT}:user/ci-bot")
    );
    let stats = emu.stats();
    // One GetCallerIdentity for the caller, three for the new key.
    assert_eq!(stats["by_action"]["sts:GetCallerIdentity"], 4, "{stats}");
}

/// Scenario 9b: IAM takes a while to accept the new key: keyturn retries with backoff
/// and only then retires the old key.
#[test]
fn s9_verification_waits_for_propagation() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    emu.propagation_delay(1.5);
    let run = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--deactivate-old-keys",
        "--yes",
        "--output",
        "json",
        "--verify-timeout",
        "30",
    ]));
    run.assert_code(0);
    let v = run.json();
    let attempts = v["Verification"]["Attempts"].as_u64().unwrap();
    assert!(attempts > 3, "failures were retried: {attempts}");
    let new_id = v["AccessKeyId"].as_str().unwrap();
    let mut want = vec![inactive(&k1.id), active(new_id)];
    want.sort();
    assert_eq!(emu.keys("ci-bot"), want);
}

/// Scenario 9c: the new key never verifies: it is deleted, old keys stay exactly as
/// they were, exit 1, no credentials printed.
#[test]
fn s9_verification_failure_deletes_the_new_key() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let k2 = emu.create_key("ci-bot");
    emu.deactivate("ci-bot", &k2.id);
    emu.propagation_delay(3600.0);
    let run = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--deactivate-old-keys",
        "--yes",
        "--verify-timeout",
        "2",
    ]));
    run.assert_code(2);
    // The slot is full (K2 Inactive without --delete-inactive-keys): guard first.
    let run = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--deactivate-old-keys",
        "--verify-timeout",
        "2",
        "--delete-inactive-keys",
        "--yes",
    ]));
    run.assert_code(1);
    run.assert_stderr("did not verify within 2 s");
    run.assert_stderr("deleted the new key");
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    // K2 was freed (it was Inactive and planned), K1 untouched, no new key left.
    assert_eq!(emu.keys("ci-bot"), [active(&k1.id)]);
}

#[test]
fn no_verify_skips_sts_and_refuses_retiring() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let run = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--no-verify",
        "--deactivate-old-keys",
        "--yes",
    ]));
    run.assert_code(2);
    run.assert_stderr("--no-verify");
    assert_eq!(emu.keys("ci-bot"), [active(&k1.id)]);
    emu.reset_stats();
    let run = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot", "--no-verify"]),
    );
    run.assert_code(0);
    assert_eq!(emu.keys("ci-bot").len(), 2);
    assert_eq!(emu.stats()["by_action"]["sts:GetCallerIdentity"], 1);
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let k2 = emu.create_key("ci-bot");
    emu.deactivate("ci-bot", &k2.id);
    let before = emu.keys("ci-bot");
    let run = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--deactivate-old-keys",
        "--delete-inactive-keys",
        "--yes",
        "--dry-run",
        "--output",
        "json",
    ]));
    run.assert_code(0);
    let v = run.json();
    assert_eq!(v["DryRun"], true);
    assert!(v.get("SecretAccessKey").is_none());
    let steps: Vec<(String, String)> = v["Actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["Step"].as_str().unwrap().to_string(),
                a["AccessKeyId"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        steps,
        [
            s("free-slot", &k2.id),
            s("create-key", "-"),
            s("verify-new-key", "-"),
            s("deliver", "-"),
            s("verify-delivery", "-"),
            s("deactivate-old-key", &k1.id),
            s("delete-old-key", &k1.id),
        ]
    );
    assert_eq!(emu.keys("ci-bot"), before);

    // The env format is all comments, so eval is harmless; a guard failure exits 2.
    let run = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot", "--dry-run"]),
    );
    run.assert_code(2);
    assert!(
        run.stdout.lines().all(|l| l.starts_with('#')),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("refused:"));
    assert_eq!(emu.keys("ci-bot"), before);
}

#[test]
fn json_and_table_outputs_carry_the_contract_fields() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    let run = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot", "--output", "json"]),
    );
    run.assert_code(0);
    let v = run.json();
    for field in [
        "UserName",
        "AccessKeyId",
        "SecretAccessKey",
        "CreateDate",
        "Actions",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["UserName"], "ci-bot");
    let creds = Creds {
        id: v["AccessKeyId"].as_str().unwrap().into(),
        secret: v["SecretAccessKey"].as_str().unwrap().into(),
        token: None,
    };
    assert!(emu.whoami(&creds).is_ok());
    assert_eq!(run.stdout.matches(&creds.secret).count(), 1, "printed once");

    let run = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--output",
        "table",
        "--delete-inactive-keys",
        "--yes",
    ]));
    // Two Active keys now: refused.
    run.assert_code(2);
    emu.deactivate("ci-bot", &creds.id);
    let run = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--output",
        "table",
        "--delete-inactive-keys",
        "--yes",
    ]));
    run.assert_code(0);
    assert!(run.stdout.contains("SecretAccessKey"));
    assert!(run.stdout.contains("AccessKeyId"));
}

#[test]
fn secret_never_reaches_stderr_at_any_verbosity() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    for (flag, rust_log) in [("-v", None), ("-vvv", None), ("-q", Some("trace"))] {
        let mut cmd = emu.keyturn();
        cmd.args([
            flag,
            "rotate",
            "--user",
            "ci-bot",
            "--deactivate-old-keys",
            "--delete-inactive-keys",
            "--yes",
        ]);
        if let Some(l) = rust_log {
            cmd.env("RUST_LOG", l);
        }
        let run = emu.run(&mut cmd);
        run.assert_code(0);
        let new = run.env_creds();
        assert!(
            run.stderr.len() > 200,
            "logs were produced at {flag}: {}",
            run.stderr
        );
        assert_no_secret(&new.secret, &[("stderr", &run.stderr)]);
        assert!(run.stdout.contains(&new.secret));
    }
}

#[test]
fn bad_flag_values_exit_2() {
    let emu = Emulator::start();
    for args in [
        vec!["rotate", "--user", "x", "--output", "yaml"],
        vec!["rotate", "--user", "x", "--verify-timeout", "0"],
        vec!["rotate"],
    ] {
        let run = emu.run(emu.keyturn().args(&args));
        run.assert_code(2);
    }
}

#[test]
fn bad_or_missing_caller_credentials_exit_1_with_advice() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let unknown = Creds {
        id: "AKIAAAAAAAAAAAAAAAAA".into(),
        secret: "x".repeat(40),
        token: None,
    };
    let run = emu.run(
        emu.keyturn_as(&unknown)
            .args(["rotate", "--user", "ci-bot"]),
    );
    run.assert_code(1);
    run.assert_stderr("InvalidClientTokenId");
    run.assert_stderr("unknown, deleted or Inactive");
    let wrong_secret = Creds {
        secret: "y".repeat(40),
        ..k1.clone()
    };
    let run = emu.run(
        emu.keyturn_as(&wrong_secret)
            .args(["rotate", "--user", "ci-bot"]),
    );
    run.assert_code(1);
    run.assert_stderr("SignatureDoesNotMatch");
    let run = emu.run(emu.keyturn_bare().args(["rotate", "--user", "ci-bot"]));
    run.assert_code(1);
    run.assert_stderr("no AWS credentials were found");
    assert_eq!(emu.keys("ci-bot"), [active(&k1.id)]);
}

#[test]
fn explicit_profile_wins_over_environment_credentials() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    emu.create_user_with_policy(
        "reader",
        json!({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["iam:ListAccessKeys", "sts:GetCallerIdentity"],
            "Resource": "*"}]}),
    );
    let reader = emu.create_key("reader");
    let creds_file = emu.dir.path().join("creds");
    std::fs::write(
        &creds_file,
        format!(
            "[admin]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            emu.admin.id, emu.admin.secret
        ),
    )
    .unwrap();
    // The environment holds a key that may not create keys; --profile admin must win.
    let run = emu.run(
        emu.keyturn_as(&reader)
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds_file)
            .args(["rotate", "--user", "ci-bot", "--profile", "admin"]),
    );
    run.assert_code(0);
    assert_eq!(emu.keys("ci-bot").len(), 2);
    // Without --profile the environment's key is used (and denied).
    let run = emu.run(
        emu.keyturn_as(&reader)
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds_file)
            .args(["rotate", "--user", "reader"]),
    );
    run.assert_code(1);
    run.assert_stderr("iam:CreateAccessKey");
}

/// The dry-run plan and a refusal, as users see them (golden files; key ids, dates and
/// run-dependent values filtered).
#[test]
fn golden_dry_run_outputs() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let k2 = emu.create_key("ci-bot");
    emu.deactivate("ci-bot", &k2.id);
    emu.backdate(&k1.id, 120, Some(3));
    emu.backdate(&k2.id, 200, None);
    let filters = vec![
        (r"AKIA[A-Z0-9]{16}", "[KEY]"),
        (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", "[TIME]"),
        (r"\d{4}-\d{2}-\d{2}", "[DATE]"),
    ];
    for (name, args) in [
        (
            "rotate_dry_run_json",
            vec![
                "--deactivate-old-keys",
                "--delete-inactive-keys",
                "--yes",
                "--output",
                "json",
            ],
        ),
        (
            "rotate_dry_run_env",
            vec!["--deactivate-old-keys", "--delete-inactive-keys", "--yes"],
        ),
        ("rotate_dry_run_refused_table", vec!["--output", "table"]),
    ] {
        let mut cmd = emu.keyturn();
        cmd.args(["rotate", "--user", "ci-bot", "--dry-run"])
            .args(&args);
        let run = emu.run(&mut cmd);
        run.assert_code(if name.contains("refused") { 2 } else { 0 });
        insta::with_settings!({ filters => filters.clone(), prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(name, run.stdout);
        });
    }
}

/// Issue 13: malformed user names, profile names, paths and run ids exit 2 with the
/// rule in the message, and not one request reaches AWS (the emulator counts them).
#[test]
fn malformed_names_exit_2_before_any_aws_request() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    emu.reset_stats();
    let long = "a".repeat(200);
    let user_rule = "an IAM user name is 1-64 characters";
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["rotate", "--user", "ci\u{7}bot"],
            vec![user_rule, "control character U+0007"],
        ),
        (
            vec!["rotate", "--user", &long],
            vec![user_rule, "200 characters long, at most 64"],
        ),
        (vec!["rotate", "--user", ""], vec![user_rule, "it is empty"]),
        (
            vec!["rotate", "--user", "ci bot"],
            vec![user_rule, "a space"],
        ),
        (
            vec!["rotate", "--profile", "my profile"],
            vec!["a profile name is"],
        ),
        (
            vec!["rotate", "--user", "ci-bot", "--profile", "a]b"],
            vec!["a profile name is"],
        ),
        (vec!["rollback", "--user", "ci/bot"], vec![user_rule]),
        (
            vec!["rollback", "--user", "ci-bot", "--run", "../../x"],
            vec!["a run id looks like"],
        ),
        (vec!["resume", "latest"], vec!["a run id looks like"]),
        (vec!["history", "--user", "ci\tbot"], vec![user_rule]),
        (
            vec!["audit", "--user-path", "/a b/"],
            vec!["an IAM path is", "a space"],
        ),
        (vec!["audit", "--user-path", "bots"], vec!["an IAM path is"]),
        (vec!["audit", "--profile", "a=b"], vec!["a profile name is"]),
    ];
    for (args, needles) in cases {
        let run = emu.run(emu.keyturn().args(&args));
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        for n in needles {
            assert!(
                run.stderr.contains(n),
                "{args:?}: {n:?} not in {}",
                run.stderr
            );
        }
        assert!(
            run.stderr.contains("nothing was sent to AWS"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains('\u{7}'),
            "raw control character echoed"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
    assert_eq!(emu.stats()["requests"], 0, "nothing was sent to AWS");
    assert_eq!(emu.keys("ci-bot"), [active(&k1.id)]);
}
