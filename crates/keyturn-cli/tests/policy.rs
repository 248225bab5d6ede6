//! `keyturn policy` on the emulator, auth enforced: a fresh principal holding only the
//! generated policy of `deploy/examples/cli.toml` runs that configuration's commands
//! end to end (two rotations with both sinks, a crash and `resume`, a fleet run
//! `keyturn run`, `audit --source api`, `history`), and removing any single action from the policy makes one of them
//! fail with AccessDenied naming that action.
//!
//! The emulator checks actions everywhere and IAM resources (keyturn's patch), but it
//! authorizes other services against the resource `*` and does not evaluate the
//! conditions keyturn writes. So before attaching, the non-IAM statements get
//! `Resource: "*"` and lose their `Condition`; those parts are unit-tested in
//! `keyturn::privilege` (and the templates test).

mod common;

use common::{rt, Creds, Emulator, Run, ACCOUNT};
use serde_json::Value;
use std::path::{Path, PathBuf};

const REGION: &str = "us-east-1";

fn example(name: &str) -> PathBuf {
    common::repo_root().join("deploy/examples").join(name)
}

/// `keyturn policy --config FILE --for TARGET` with the emulator's account filled in.
fn generated(emu: &Emulator, config: &Path, target: &str) -> Value {
    let run = emu.run(emu.keyturn_bare().args([
        "policy",
        "--config",
        config.to_str().unwrap(),
        "--for",
        target,
        "--set",
        "Partition=aws",
        "--set",
        &format!("Account={ACCOUNT}"),
        "--set",
        &format!("Region={REGION}"),
    ]));
    run.assert_code(0);
    run.json()
}

/// What the emulator can evaluate: non-IAM statements on `*` without conditions.
fn for_emulator(policy: &Value) -> Value {
    let mut p = policy.clone();
    for st in p["Statement"].as_array_mut().unwrap() {
        let actions: Vec<String> = match &st["Action"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_string()).collect(),
            _ => panic!("bad Action"),
        };
        if !actions.iter().all(|a| a.starts_with("iam:")) {
            st["Resource"] = Value::String("*".into());
            st.as_object_mut().unwrap().remove("Condition");
        }
    }
    p
}

fn actions_of(policy: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for st in policy["Statement"].as_array().unwrap() {
        match &st["Action"] {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => out.extend(a.iter().map(|v| v.as_str().unwrap().to_string())),
            _ => panic!("bad Action"),
        }
    }
    out.sort();
    out
}

fn without(policy: &Value, action: &str) -> Value {
    let mut p = policy.clone();
    let sts = p["Statement"].as_array_mut().unwrap();
    for st in sts.iter_mut() {
        let a = match &st["Action"] {
            Value::String(s) => vec![Value::String(s.clone())],
            Value::Array(a) => a.clone(),
            _ => unreachable!(),
        };
        st["Action"] = Value::Array(a.into_iter().filter(|v| v != action).collect());
    }
    sts.retain(|st| !st["Action"].as_array().unwrap().is_empty());
    p
}

/// A fresh principal holding exactly `policy`.
fn principal(emu: &Emulator, name: &str, policy: &Value) -> Creds {
    emu.create_user_with_policy(name, policy.clone());
    emu.create_key(name)
}

fn target_user(emu: &Emulator, name: &str) {
    rt().block_on(
        emu.iam()
            .create_user()
            .user_name(name)
            .path("/bots/")
            .send(),
    )
    .unwrap_or_else(|e| panic!("create {name}: {e:?}"));
    emu.create_key(name);
}

/// The configuration's commands, in order, as `as_`. Returns the first failure (the
/// command line and its run), or `None` when all of them succeed.
fn scenario(emu: &Emulator, as_: &Creds, config: &Path, user: &str) -> Option<(String, Run)> {
    let journal = emu.dir.path().join(format!("journal-{user}.sqlite"));
    let base = |args: &[&str]| {
        let mut cmd = emu.keyturn_as(as_);
        cmd.args(["--config", config.to_str().unwrap()])
            .args(["--journal", journal.to_str().unwrap()])
            .args(args);
        cmd
    };
    let rotate = [
        "rotate",
        "--user",
        user,
        "--sink",
        "ci-secret",
        "--sink",
        "ci-param",
        "--deactivate-old-keys",
        "--delete-inactive-keys",
        "--yes",
    ];
    let steps: Vec<(String, std::process::Command, &[i32])> = vec![
        // The first rotation creates the secret and the parameter.
        ("rotate (first)".into(), base(&rotate), &[0]),
        // The second updates them.
        ("rotate (second)".into(), base(&rotate), &[0]),
        // A crash after the new key is journaled; resume unseals it (kms:Decrypt).
        (
            "rotate (crash)".into(),
            {
                let mut c = base(&rotate);
                c.env("KEYTURN_FAILPOINT", "create-key");
                c
            },
            &[-1, 134],
        ),
        ("resume".into(), base(&["resume"]), &[0]),
        // A fleet run: the user's key is made due (80 days old) first.
        (
            "run".into(),
            base(&["run", "--only", &format!("{ACCOUNT}:{user}")]),
            &[0],
        ),
        (
            "audit".into(),
            base(&[
                "audit",
                "--source",
                "api",
                "--user-path",
                "/bots/",
                "--format",
                "json",
            ]),
            &[0, 3],
        ),
        ("history".into(), base(&["history"]), &[0]),
    ];
    for (what, mut cmd, ok) in steps {
        if what == "run" {
            for (id, status) in emu.keys(user) {
                if status == "Active" {
                    emu.backdate(&id, 80, Some(1));
                }
            }
        }
        let run = emu.run(&mut cmd);
        let denied = run.stderr.contains("AccessDenied") || run.stderr.contains("not authorized");
        if !ok.contains(&run.code) || (denied && what != "rotate (crash)") {
            return Some((what, run));
        }
        if what == "rotate (crash)" && !run.stderr.contains("failpoint create-key reached") {
            return Some((what, run));
        }
    }
    None
}

#[test]
fn generated_cli_policy_is_sufficient_and_minimal() {
    let emu = Emulator::start();
    let conf = emu.sdk_config(&emu.admin);
    let kms = aws_sdk_kms::Client::new(&conf);
    let key = rt().block_on(kms.create_key().send()).unwrap();
    let key_id = key.key_metadata().unwrap().key_id().to_string();
    rt().block_on(
        kms.create_alias()
            .alias_name("alias/keyturn-journal")
            .target_key_id(&key_id)
            .send(),
    )
    .unwrap();
    let config = example("cli.toml");
    let policy = generated(&emu, &config, "cli");
    let actions = actions_of(&policy);
    assert_eq!(
        actions,
        [
            "iam:CreateAccessKey",
            "iam:DeleteAccessKey",
            "iam:GetAccessKeyLastUsed",
            "iam:ListAccessKeys",
            "iam:ListUsers",
            "iam:UpdateAccessKey",
            "kms:Decrypt",
            "kms:GenerateDataKey",
            "secretsmanager:CreateSecret",
            "secretsmanager:DescribeSecret",
            "secretsmanager:GetSecretValue",
            "secretsmanager:PutSecretValue",
            "secretsmanager:UpdateSecretVersionStage",
            "ssm:GetParameter",
            "ssm:PutParameter",
        ]
    );
    let attached = for_emulator(&policy);

    // Sufficient: everything runs, and the last rotation's key is where it belongs.
    target_user(&emu, "ci-full");
    let rotator = principal(&emu, "rotator-full", &attached);
    if let Some((what, run)) = scenario(&emu, &rotator, &config, "ci-full") {
        panic!(
            "{what} failed with the generated policy (exit {}):\n{}",
            run.code, run.stderr
        );
    }
    let keys = emu.keys("ci-full");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].1, "Active");
    let sm = aws_sdk_secretsmanager::Client::new(&conf);
    let secret = rt()
        .block_on(sm.get_secret_value().secret_id("ci/ci-full").send())
        .unwrap();
    let v: Value = serde_json::from_str(secret.secret_string().unwrap()).unwrap();
    assert_eq!(v["AccessKeyId"], keys[0].0.as_str());

    // Minimal: without any one action, some command fails, naming that action.
    for (i, action) in actions.iter().enumerate() {
        let user = format!("ci-{i}");
        target_user(&emu, &user);
        let rotator = principal(&emu, &format!("rotator-{i}"), &without(&attached, action));
        match scenario(&emu, &rotator, &config, &user) {
            None => panic!("every command succeeded without {action}: it is not needed"),
            Some((what, run)) => {
                let text = format!("{}\n{}", run.stdout, run.stderr);
                assert!(
                    text.contains("AccessDenied") || text.contains("not authorized"),
                    "without {action}, {what} failed but not with AccessDenied:\n{text}"
                );
                assert!(
                    text.contains(action.as_str()),
                    "without {action}, {what} failed without naming it:\n{text}"
                );
            }
        }
    }
}

#[test]
fn policy_targets_and_formats() {
    let emu = Emulator::start();
    let lambda = example("lambda.toml");
    let run = emu.run(emu.keyturn_bare().args([
        "policy",
        "--config",
        lambda.to_str().unwrap(),
        "--for",
        "member-role",
        "--format",
        "yaml",
    ]));
    run.assert_code(0);
    assert!(
        run.stdout.starts_with("PermissionsPolicy:"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("aws:PrincipalOrgID"), "{}", run.stdout);
    // The Lambda cannot keep an SQLite journal.
    let cli = example("cli.toml");
    let run = emu.run(emu.keyturn_bare().args([
        "policy",
        "--config",
        cli.to_str().unwrap(),
        "--for",
        "lambda",
    ]));
    run.assert_code(2).assert_stderr("backend = \"dynamodb\"");
    let run = emu.run(emu.keyturn_bare().args(["policy", "--set", "Acount=1"]));
    run.assert_code(2).assert_stderr("the placeholders are");
}

/// Self-rotation (`rotate --profile`) as `user`, whose key is `key`: a dry run (it
/// shows each key's last use), the default run (old key deleted), then one with
/// `--keep-old-inactive`.
fn self_scenario(emu: &Emulator, user: &str, key: &Creds) -> Option<Run> {
    let dir = emu.dir.path().join(format!("aws-{user}"));
    std::fs::create_dir_all(&dir).unwrap();
    let credentials = dir.join("credentials");
    let config = dir.join("config");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            key.id, key.secret
        ),
    )
    .unwrap();
    std::fs::write(&config, "[default]\nregion = us-east-1\n").unwrap();
    for p in [&credentials, &config] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    for extra in [&["--dry-run"][..], &[][..], &["--keep-old-inactive"][..]] {
        let mut cmd = emu.keyturn_bare();
        cmd.env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
            .env("AWS_CONFIG_FILE", &config)
            .env("KEYTURN_JOURNAL", dir.join("journal.sqlite"))
            .args(["rotate", "--profile", "default", "--output", "json"])
            .args(extra);
        let run = emu.run(&mut cmd);
        if run.code != 0 {
            return Some(run);
        }
    }
    None
}

#[test]
fn generated_self_policy_is_sufficient_and_minimal() {
    let emu = Emulator::start();
    let empty = emu.dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let policy = generated(&emu, &empty, "self");
    let actions = actions_of(&policy);
    let key = principal(&emu, "dev", &policy);
    if let Some(run) = self_scenario(&emu, "dev", &key) {
        panic!(
            "self-rotation failed with the generated policy:\n{}",
            run.stderr
        );
    }
    let keys = emu.keys("dev");
    assert_eq!(keys.len(), 2, "{keys:?}");
    for (i, action) in actions.iter().enumerate() {
        let user = format!("dev-{i}");
        let key = principal(&emu, &user, &without(&policy, action));
        match self_scenario(&emu, &user, &key) {
            None => panic!("self-rotation succeeded without {action}: it is not needed"),
            Some(run) => assert!(
                run.stderr.contains("AccessDenied") && run.stderr.contains(action.as_str()),
                "without {action}:\n{}",
                run.stderr
            ),
        }
    }
}
