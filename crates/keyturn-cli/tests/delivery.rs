//! Delivery: `rotate --user X --sink NAME` puts the new key into each sink through
//! journaled deliver/verify steps, against the emulator and real files, with the real
//! binary: read-back verification, other fields kept, file modes, the secret never on
//! stderr or in a child's argv, partial failures that keep both keys, crashes between
//! two sinks, a closed stdout, and bad sink configuration refused before any AWS call.

mod common;

use aws_sdk_secretsmanager::Client as SmClient;
use aws_sdk_ssm::Client as SsmClient;
use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const RETIRE: [&str; 2] = ["--deactivate-old-keys", "--yes"];

fn write_config(emu: &Emulator, toml: &str) -> PathBuf {
    let p = emu.dir.path().join("keyturn.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

fn rotate(emu: &Emulator, config: &Path, args: &[&str]) -> Run {
    let mut cmd = emu.keyturn();
    cmd.arg("--config")
        .arg(config)
        .args(["rotate", "--user", "ci-bot"])
        .args(args);
    emu.run(&mut cmd)
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn sm(emu: &Emulator) -> SmClient {
    SmClient::new(&emu.sdk_config(&emu.admin))
}

fn ssm(emu: &Emulator) -> SsmClient {
    SsmClient::new(&emu.sdk_config(&emu.admin))
}

/// AWSCURRENT / AWSPREVIOUS / a version's JSON (always naming the stage or version).
fn secret_json(emu: &Emulator, id: &str, stage: Option<&str>, version: Option<&str>) -> Value {
    let o = rt()
        .block_on(
            sm(emu)
                .get_secret_value()
                .secret_id(id)
                .set_version_stage(stage.map(str::to_string))
                .set_version_id(version.map(str::to_string))
                .send(),
        )
        .unwrap();
    serde_json::from_str(o.secret_string().unwrap()).unwrap()
}

fn stages(emu: &Emulator, id: &str) -> Vec<(String, Vec<String>)> {
    let d = rt()
        .block_on(sm(emu).describe_secret().secret_id(id).send())
        .unwrap();
    let mut v: Vec<(String, Vec<String>)> = d
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    v.sort();
    v
}

fn param(emu: &Emulator, name: &str) -> (String, i64) {
    let o = rt()
        .block_on(
            ssm(emu)
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send(),
        )
        .unwrap();
    let p = o.parameter().unwrap();
    (p.value().unwrap().to_string(), p.version())
}

fn creds_of(id: &str, secret: &str) -> Creds {
    Creds {
        id: id.into(),
        secret: secret.into(),
        token: None,
    }
}

/// The user with one old Active key.
fn setup(emu: &Emulator) -> Creds {
    emu.create_user("ci-bot");
    emu.create_key("ci-bot")
}

fn env_value(text: &str, key: &str) -> String {
    text.lines()
        .rev()
        .filter_map(|l| {
            l.trim_start_matches("export ")
                .strip_prefix(&format!("{key}="))
        })
        .next()
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
        .trim_matches(|c| c == '"' || c == '\'')
        .to_string()
}

/// A `command` hook that records its argv, the credential variables it got, and its
/// stdin; it fails while `<dir>/fail` exists.
fn hook(emu: &Emulator, name: &str) -> PathBuf {
    let dir = emu.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nd={d}\nprintf '%s\\n' \"$0\" \"$@\" > \"$d/argv\"\necho \"id=${{AWS_ACCESS_KEY_ID:-}} secret=${{AWS_SECRET_ACCESS_KEY:-}} token=${{AWS_SESSION_TOKEN:-}} phase=$KEYTURN_PHASE\" >> \"$d/env\"\ncat > \"$d/stdin\"\nif [ -e \"$d/fail\" ]; then echo \"push failed for $AWS_SECRET_ACCESS_KEY\" >&2; exit 1; fi\necho ok\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn env_file_sink_changes_only_the_key_lines_mode_0600() {
    let emu = Emulator::start();
    let old = setup(&emu);
    let path = emu.dir.path().join("app.env");
    let before = format!(
        "# billing app\nREGION=eu-west-1\nexport AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY=\"{}\"\nBUCKET=b # logs\n",
        old.id, old.secret
    );
    std::fs::write(&path, &before).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = write_config(
        &emu,
        &format!(
            "[[sinks]]\nname = \"ci-env\"\ntype = \"env-file\"\npath = \"{}\"\n",
            path.display()
        ),
    );
    let run = rotate(
        &emu,
        &cfg,
        &[
            "--sink",
            "ci-env",
            "--deactivate-old-keys",
            "--yes",
            "--output",
            "json",
        ],
    );
    run.assert_code(0);
    let after = std::fs::read_to_string(&path).unwrap();
    let new = creds_of(
        &env_value(&after, "AWS_ACCESS_KEY_ID"),
        &env_value(&after, "AWS_SECRET_ACCESS_KEY"),
    );
    assert_ne!(new.id, old.id);
    assert_eq!(
        after,
        before
            .replace(&old.id, &new.id)
            .replace(&old.secret, &new.secret),
        "only the two values changed"
    );
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(
        emu.whoami(&new).unwrap(),
        format!("arn:aws:iam::{ACCOUNT}:user/ci-bot")
    );
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    // The report names the sink and the new key id, never the secret.
    let v = run.json();
    assert_eq!(v["AccessKeyId"], new.id.as_str());
    assert!(v.get("SecretAccessKey").is_none());
    assert_eq!(v["Sinks"][0]["Name"], "ci-env");
    assert_eq!(v["Sinks"][0]["Verified"], true);
    assert_no_secret(
        &new.secret,
        &[("stdout", &run.stdout), ("stderr", &run.stderr)],
    );
    // The journal no longer holds a sealed secret.
    let h = emu
        .run(emu.keyturn().args(["history", "--output", "json"]))
        .json();
    assert_eq!(h["Runs"][0]["Status"], "succeeded");
}

#[test]
fn json_and_credentials_file_sinks_keep_everything_else() {
    let emu = Emulator::start();
    let old = setup(&emu);
    let json_path = emu.dir.path().join("creds.json");
    std::fs::write(
        &json_path,
        format!(
            "{{\"region\": \"eu-west-1\", \"AccessKeyId\": \"{}\", \"nested\": {{\"a\": [1, 2]}}}}",
            old.id
        ),
    )
    .unwrap();
    let cred_path = emu.dir.path().join("remote-credentials");
    let cred_before = "# mounted from the build host\r\n[other]\r\naws_access_key_id = AKIAOTHER0000000000X\r\naws_secret_access_key = other\r\n";
    std::fs::write(&cred_path, cred_before).unwrap();
    let cfg = write_config(
        &emu,
        &format!(
            r#"
[[sinks]]
name = "app-json"
type = "json-file"
path = "{}"
fields = {{ AccessKeyId = "access_key_id", SecretAccessKey = "secret_access_key", User = "user_name" }}

[[sinks]]
name = "build-host"
type = "credentials-file"
path = "{}"
profile = "{{user}}"
"#,
            json_path.display(),
            cred_path.display()
        ),
    );
    let run = rotate(&emu, &cfg, &["--sink", "app-json", "--sink", "build-host"]);
    run.assert_code(0);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(v["region"], "eu-west-1");
    assert_eq!(v["nested"]["a"][1], 2);
    assert_eq!(v["User"], "ci-bot");
    let new = creds_of(
        v["AccessKeyId"].as_str().unwrap(),
        v["SecretAccessKey"].as_str().unwrap(),
    );
    assert_ne!(new.id, old.id);
    assert!(emu.whoami(&new).is_ok());
    assert_eq!(mode_of(&json_path), 0o600);
    // The credentials file got a new profile named after the user; the rest is kept.
    let cred_after = std::fs::read_to_string(&cred_path).unwrap();
    assert_eq!(
        cred_after,
        format!(
            "{cred_before}[ci-bot]\r\naws_access_key_id = {}\r\naws_secret_access_key = {}\r\n",
            new.id, new.secret
        )
    );
    assert_eq!(mode_of(&cred_path), 0o600);
    // Without --deactivate-old-keys the old key stays Active.
    assert!(emu.whoami(&old).is_ok());
    assert_no_secret(
        &new.secret,
        &[("stdout", &run.stdout), ("stderr", &run.stderr)],
    );
}

#[test]
fn secretsmanager_sink_uses_the_staging_protocol() {
    let emu = Emulator::start();
    let old = setup(&emu);
    let old_value = format!(
        "{{\"AccessKeyId\": \"{}\", \"SecretAccessKey\": \"{}\", \"bucket\": \"reports\"}}",
        old.id, old.secret
    );
    rt().block_on(
        sm(&emu)
            .create_secret()
            .name("ci/ci-bot")
            .secret_string(&old_value)
            .send(),
    )
    .unwrap();
    let cfg = write_config(
        &emu,
        r#"
[[sinks]]
name = "ci-aws"
type = "secretsmanager"
secret_id = "ci/{user}"

[[sinks]]
name = "fresh"
type = "secretsmanager"
secret_id = "fresh/{account}/{user}"
create = true
"#,
    );
    let run = rotate(
        &emu,
        &cfg,
        &[
            "--sink",
            "ci-aws",
            "--sink",
            "fresh",
            "--deactivate-old-keys",
            "--yes",
        ],
    );
    run.assert_code(0);
    let cur = secret_json(&emu, "ci/ci-bot", Some("AWSCURRENT"), None);
    let new = creds_of(
        cur["AccessKeyId"].as_str().unwrap(),
        cur["SecretAccessKey"].as_str().unwrap(),
    );
    assert_ne!(new.id, old.id);
    assert_eq!(cur["bucket"], "reports", "other fields are kept");
    assert!(emu.whoami(&new).is_ok());
    let prev = secret_json(&emu, "ci/ci-bot", Some("AWSPREVIOUS"), None);
    assert_eq!(prev["AccessKeyId"], old.id.as_str());
    let st = stages(&emu, "ci/ci-bot");
    assert_eq!(st.len(), 2, "{st:?}");
    assert!(
        st.iter()
            .all(|(_, s)| !s.contains(&"AWSPENDING".to_string())),
        "{st:?}"
    );
    // The created secret holds the same key.
    let fresh = secret_json(
        &emu,
        &format!("fresh/{ACCOUNT}/ci-bot"),
        Some("AWSCURRENT"),
        None,
    );
    assert_eq!(fresh["AccessKeyId"], new.id.as_str());
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    assert_no_secret(
        &new.secret,
        &[("stdout", &run.stdout), ("stderr", &run.stderr)],
    );
}

#[cfg(feature = "failpoints")]
#[test]
fn secretsmanager_step_retried_after_a_crash_reuses_its_version() {
    let emu = Emulator::start();
    let old = setup(&emu);
    rt().block_on(
        sm(&emu)
            .create_secret()
            .name("ci/ci-bot")
            .secret_string(format!("{{\"AccessKeyId\": \"{}\"}}", old.id))
            .send(),
    )
    .unwrap();
    let cfg = write_config(
        &emu,
        "[[sinks]]\nname = \"ci-aws\"\ntype = \"secretsmanager\"\nsecret_id = \"ci/{user}\"\n",
    );
    // Killed after the delivery took effect, before the journal recorded it.
    let mut cmd = emu.keyturn();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["rotate", "--user", "ci-bot", "--sink", "ci-aws"])
        .args(RETIRE)
        .env("KEYTURN_FAILPOINT", "deliver:ci-aws");
    let crashed = emu.run(&mut cmd);
    assert_eq!(crashed.code, -1, "{}", crashed.stderr);
    let resumed = emu.run(emu.keyturn().arg("--config").arg(&cfg).arg("resume"));
    resumed.assert_code(0);
    let versions = rt()
        .block_on(
            sm(&emu)
                .list_secret_version_ids()
                .secret_id("ci/ci-bot")
                .send(),
        )
        .unwrap();
    assert_eq!(
        versions.versions().len(),
        2,
        "the old version and one new one, no duplicate"
    );
    let cur = secret_json(&emu, "ci/ci-bot", Some("AWSCURRENT"), None);
    let new = creds_of(
        cur["AccessKeyId"].as_str().unwrap(),
        cur["SecretAccessKey"].as_str().unwrap(),
    );
    assert_eq!(
        emu.keys("ci-bot"),
        [
            (new.id.clone(), "Active".into()),
            (old.id.clone(), "Inactive".into())
        ]
        .iter()
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    assert!(stages(&emu, "ci/ci-bot")
        .iter()
        .all(|(_, s)| !s.contains(&"AWSPENDING".to_string())));
}

#[test]
fn ssm_sink_writes_one_json_parameter_or_one_per_field() {
    let emu = Emulator::start();
    let old = setup(&emu);
    rt().block_on(
        ssm(&emu)
            .put_parameter()
            .name("/ci/ci-bot")
            .value(format!(
                "{{\"AccessKeyId\": \"{}\", \"region\": \"eu-west-1\"}}",
                old.id
            ))
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send(),
    )
    .unwrap();
    let cfg = write_config(
        &emu,
        r#"
[[sinks]]
name = "ssm-json"
type = "ssm"
parameter = "/ci/{user}"

[[sinks]]
name = "ssm-split"
type = "ssm"
parameters = { AWS_ACCESS_KEY_ID = "/ci/{user}/id", AWS_SECRET_ACCESS_KEY = "/ci/{user}/secret" }
kms_key_id = "alias/aws/ssm"
"#,
    );
    let run = rotate(&emu, &cfg, &["--sink", "ssm-json", "--sink", "ssm-split"]);
    run.assert_code(0);
    let (json, version) = param(&emu, "/ci/ci-bot");
    assert_eq!(version, 2);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["region"], "eu-west-1");
    let new = creds_of(
        v["AccessKeyId"].as_str().unwrap(),
        v["SecretAccessKey"].as_str().unwrap(),
    );
    assert!(emu.whoami(&new).is_ok());
    assert_eq!(param(&emu, "/ci/ci-bot/id"), (new.id.clone(), 1));
    assert_eq!(param(&emu, "/ci/ci-bot/secret"), (new.secret.clone(), 1));
    assert_no_secret(
        &new.secret,
        &[("stdout", &run.stdout), ("stderr", &run.stderr)],
    );
}

#[test]
fn command_sink_gets_the_key_on_stdin_and_env_never_in_argv() {
    let emu = Emulator::start();
    let _old = setup(&emu);
    let with_env = hook(&emu, "hook-env");
    let no_env = hook(&emu, "hook-noenv");
    let cfg = write_config(
        &emu,
        &format!(
            r#"
[[sinks]]
name = "push"
type = "command"
command = ["{}", "--app", "billing"]
verify_command = ["{}", "--check"]

[[sinks]]
name = "push-quiet"
type = "command"
command = ["{}"]
env = false
timeout_secs = 10
"#,
            with_env.join("hook.sh").display(),
            with_env.join("hook.sh").display(),
            no_env.join("hook.sh").display()
        ),
    );
    let run = rotate(&emu, &cfg, &["--sink", "push", "--sink", "push-quiet"]);
    run.assert_code(0);
    let stdin: Value =
        serde_json::from_str(&std::fs::read_to_string(with_env.join("stdin")).unwrap()).unwrap();
    let new = creds_of(
        stdin["AccessKeyId"].as_str().unwrap(),
        stdin["SecretAccessKey"].as_str().unwrap(),
    );
    assert_eq!(stdin["UserName"], "ci-bot");
    assert_eq!(stdin["Account"], ACCOUNT);
    assert!(emu.whoami(&new).is_ok());
    // argv of the last run was the verify command; neither carried the secret.
    let argv = std::fs::read_to_string(with_env.join("argv")).unwrap();
    assert!(argv.ends_with("--check\n"), "{argv}");
    let env = std::fs::read_to_string(with_env.join("env")).unwrap();
    assert_eq!(
        env.lines().collect::<Vec<_>>(),
        [
            format!("id={} secret={} token= phase=deliver", new.id, new.secret),
            format!("id={} secret={} token= phase=verify", new.id, new.secret),
        ]
    );
    // env = false: no credentials in the environment, not even keyturn's own.
    let quiet_env = std::fs::read_to_string(no_env.join("env")).unwrap();
    assert_eq!(quiet_env.trim(), "id= secret= token= phase=deliver");
    assert!(!quiet_env.contains(&emu.admin.id));
    for d in [&with_env, &no_env] {
        let argv = std::fs::read_to_string(d.join("argv")).unwrap();
        assert_no_secret(&new.secret, &[("argv", &argv)]);
    }
    assert_no_secret(
        &new.secret,
        &[("stdout", &run.stdout), ("stderr", &run.stderr)],
    );
}

#[test]
fn partial_delivery_keeps_both_keys_and_resume_finishes_it() {
    let emu = Emulator::start();
    let old = setup(&emu);
    let env_path = emu.dir.path().join("app.env");
    let json_path = emu.dir.path().join("app.json");
    std::fs::write(&json_path, format!("{{\"AccessKeyId\": \"{}\"}}", old.id)).unwrap();
    let h = hook(&emu, "hook");
    std::fs::write(h.join("fail"), "").unwrap();
    let cfg = write_config(
        &emu,
        &format!(
            "[[sinks]]\nname = \"ci-env\"\ntype = \"env-file\"\npath = \"{}\"\n\n[[sinks]]\nname = \"deploy-hook\"\ntype = \"command\"\ncommand = [\"{}\"]\n\n[[sinks]]\nname = \"app-json\"\ntype = \"json-file\"\npath = \"{}\"\n",
            env_path.display(),
            h.join("hook.sh").display(),
            json_path.display()
        ),
    );
    let run = rotate(
        &emu,
        &cfg,
        &[
            "--sink",
            "ci-env",
            "--sink",
            "deploy-hook",
            "--sink",
            "app-json",
            "--deactivate-old-keys",
            "--yes",
        ],
    );
    run.assert_code(1);
    let text = std::fs::read_to_string(&env_path).unwrap();
    let new = creds_of(
        &env_value(&text, "AWS_ACCESS_KEY_ID"),
        &env_value(&text, "AWS_SECRET_ACCESS_KEY"),
    );
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(
        j["AccessKeyId"],
        old.id.as_str(),
        "the sink after the failure was not touched"
    );
    // Nothing was revoked: both keys are Active and work.
    assert!(emu.whoami(&old).is_ok(), "the old key must not be retired");
    assert!(emu.whoami(&new).is_ok());
    assert_eq!(emu.keys("ci-bot").len(), 2);
    run.assert_stderr("the new key")
        .assert_stderr(
            "is in ci-env; deploy-hook failed part-way and may hold it; app-json still holds the old key",
        )
        .assert_stderr("keyturn resume");
    // The hook's stderr is in the message, with the secret masked.
    run.assert_stderr("push failed for <redacted>");
    assert_no_secret(
        &new.secret,
        &[("stderr", &run.stderr), ("stdout", &run.stdout)],
    );
    let hist = emu
        .run(emu.keyturn().args(["history", "--output", "json"]))
        .json();
    assert_eq!(hist["Runs"][0]["Status"], "incomplete");
    let run_id = hist["Runs"][0]["RunId"].as_str().unwrap().to_string();
    // The user stays locked until the run is finished.
    let blocked = rotate(&emu, &cfg, &["--sink", "ci-env"]);
    blocked
        .assert_code(2)
        .assert_stderr(format!("keyturn resume {run_id}"));
    // Fix the hook; resume delivers to it and retires the old key as planned.
    std::fs::remove_file(h.join("fail")).unwrap();
    let resumed = emu.run(
        emu.keyturn()
            .arg("--config")
            .arg(&cfg)
            .args(["resume", &run_id]),
    );
    resumed.assert_code(0);
    let stdin: Value =
        serde_json::from_str(&std::fs::read_to_string(h.join("stdin")).unwrap()).unwrap();
    assert_eq!(stdin["AccessKeyId"], new.id.as_str());
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(j["AccessKeyId"], new.id.as_str());
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    let mut want = vec![
        (new.id.clone(), "Active".to_string()),
        (old.id.clone(), "Inactive".to_string()),
    ];
    want.sort();
    assert_eq!(emu.keys("ci-bot"), want);
    let hist = emu
        .run(emu.keyturn().args(["history", "--output", "json"]))
        .json();
    assert_eq!(hist["Runs"][0]["Status"], "succeeded");
    assert_no_secret(
        &new.secret,
        &[
            ("resume stderr", &resumed.stderr),
            ("resume stdout", &resumed.stdout),
        ],
    );
}

#[cfg(feature = "failpoints")]
#[test]
fn a_crash_between_two_sinks_resumes_at_the_next_sink() {
    let emu = Emulator::start();
    let old = setup(&emu);
    let env_path = emu.dir.path().join("app.env");
    let h = hook(&emu, "hook");
    let cfg = write_config(
        &emu,
        &format!(
            "[[sinks]]\nname = \"ci-env\"\ntype = \"env-file\"\npath = \"{}\"\n\n[[sinks]]\nname = \"deploy-hook\"\ntype = \"command\"\ncommand = [\"{}\"]\n",
            env_path.display(),
            h.join("hook.sh").display()
        ),
    );
    let mut cmd = emu.keyturn();
    cmd.arg("--config")
        .arg(&cfg)
        .args([
            "rotate",
            "--user",
            "ci-bot",
            "--sink",
            "ci-env",
            "--sink",
            "deploy-hook",
        ])
        .args(RETIRE)
        .env("KEYTURN_FAILPOINT", "deliver:deploy-hook:intent");
    let crashed = emu.run(&mut cmd);
    assert_eq!(crashed.code, -1, "{}", crashed.stderr);
    assert!(!h.join("stdin").exists(), "the second sink was not reached");
    assert!(emu.whoami(&old).is_ok());
    let resumed = emu.run(emu.keyturn().arg("--config").arg(&cfg).arg("resume"));
    resumed.assert_code(0);
    let text = std::fs::read_to_string(&env_path).unwrap();
    let new_id = env_value(&text, "AWS_ACCESS_KEY_ID");
    let stdin: Value =
        serde_json::from_str(&std::fs::read_to_string(h.join("stdin")).unwrap()).unwrap();
    assert_eq!(stdin["AccessKeyId"], new_id.as_str());
    let mut want = vec![
        (new_id, "Active".to_string()),
        (old.id.clone(), "Inactive".to_string()),
    ];
    want.sort();
    assert_eq!(emu.keys("ci-bot"), want);
    let hist = emu
        .run(emu.keyturn().args(["history", "--output", "json"]))
        .json();
    assert_eq!(hist["Runs"][0]["Status"], "succeeded");
}

/// `keyturn rotate ... | head -c 1`: the reader closes the pipe after one byte.
fn closed_pipe(with_file_sink: bool) {
    let emu = Emulator::start();
    let old = setup(&emu);
    let env_path = emu.dir.path().join("app.env");
    let cfg = write_config(
        &emu,
        &format!(
            "[[sinks]]\nname = \"app-env\"\ntype = \"env-file\"\npath = \"{}\"\n",
            env_path.display()
        ),
    );
    let extra: &[&str] = if with_file_sink {
        &["--sink", "app-env", "--sink", "stdout"]
    } else {
        &[]
    };
    let kt = emu.keyturn();
    let line = format!(
        "\"$0\" --config {} rotate --user ci-bot --deactivate-old-keys --yes --output json {} | head -c 1 >/dev/null; exit ${{PIPESTATUS[0]}}",
        cfg.display(),
        extra.join(" ")
    );
    let mut bash = std::process::Command::new("bash");
    bash.arg("-c").arg(line).arg(kt.get_program()).env_clear();
    for (k, v) in kt.get_envs() {
        if let Some(v) = v {
            bash.env(k, v);
        }
    }
    let out = emu.run(&mut bash);
    out.assert_code(1).assert_stderr("keyturn resume");
    assert!(emu.whoami(&old).is_ok(), "the old key must stay Active");
    assert_eq!(emu.keys("ci-bot").len(), 2);
    let hist = emu
        .run(emu.keyturn().args(["history", "--output", "json"]))
        .json();
    assert_eq!(hist["Runs"][0]["Status"], "incomplete");
    // resume prints the credentials again (the run's --output json), then retires.
    let resumed = emu.run(emu.keyturn().arg("--config").arg(&cfg).arg("resume"));
    resumed.assert_code(0);
    let v = resumed.json();
    let new = creds_of(
        v["AccessKeyId"].as_str().unwrap(),
        v["SecretAccessKey"].as_str().unwrap(),
    );
    assert!(emu.whoami(&new).is_ok());
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    assert_no_secret(
        &new.secret,
        &[("stderr", &out.stderr), ("resume stderr", &resumed.stderr)],
    );
    if with_file_sink {
        let text = std::fs::read_to_string(&env_path).unwrap();
        assert_eq!(env_value(&text, "AWS_ACCESS_KEY_ID"), new.id);
    } else {
        assert!(!env_path.exists());
    }
}

#[test]
fn a_stdout_closed_by_its_reader_keeps_the_old_key_and_resume_prints_again() {
    closed_pipe(false);
}

#[test]
fn a_closed_stdout_sink_next_to_a_file_sink_keeps_the_old_key() {
    closed_pipe(true);
}

#[test]
fn a_discarding_stdout_is_refused_when_it_is_the_only_sink() {
    let emu = Emulator::start();
    let old = setup(&emu);
    emu.reset_stats();
    let mut cmd = emu.keyturn();
    cmd.args(["rotate", "--user", "ci-bot"])
        .stdout(std::process::Stdio::null());
    let run = emu.run(&mut cmd);
    run.assert_code(2).assert_stderr("/dev/null");
    assert_eq!(emu.stats()["requests"], 0, "refused before any AWS call");
    assert_eq!(emu.keys("ci-bot"), [(old.id.clone(), "Active".to_string())]);
    // A file sink makes /dev/null harmless.
    let env_path = emu.dir.path().join("app.env");
    let cfg = write_config(
        &emu,
        &format!(
            "[[sinks]]\nname = \"f\"\ntype = \"env-file\"\npath = \"{}\"\n",
            env_path.display()
        ),
    );
    let mut cmd = emu.keyturn();
    cmd.arg("--config")
        .arg(&cfg)
        .args(["rotate", "--user", "ci-bot", "--sink", "f"])
        .stdout(std::process::Stdio::null());
    emu.run(&mut cmd).assert_code(0);
    assert_eq!(emu.keys("ci-bot").len(), 2);
}

#[test]
fn bad_sink_configuration_is_refused_before_any_aws_call() {
    let emu = Emulator::start();
    setup(&emu);
    emu.reset_stats();
    for (toml, sink, needle) in [
        ("[[sinks]]\nname = \"x\"\ntype = \"ftp\"\n", "x", "unknown variant `ftp`"),
        ("[[sinks]]\nname = \"x\"\ntype = \"env-file\"\npath = \"/tmp/x\"\ncolour = 1\n", "x", "unknown field `colour`"),
        ("[[sinks]]\nname = \"x\"\ntype = \"secretsmanager\"\n", "x", "missing field `secret_id`"),
        ("[[sinks]]\nname = \"x\"\ntype = \"env-file\"\npath = \"/tmp/x\"\n", "y", "--sink y: no [[sinks]] table"),
        ("[[sinks]]\nname = \"x\"\ntype = \"env-file\"\npath = \"/tmp/{usr}\"\n", "x", "unknown placeholder"),
        ("[[sinks]]\nname = \"x\"\ntype = \"env-file\"\npath = \"/tmp/x\"\nfields = { A = \"access_key_id\" }\n", "x", "secret_access_key"),
        ("[[sinks]]\nname = \"x\"\ntype = \"command\"\ncommand = []\n", "x", "must name a program"),
        ("[[sinks]]\nname = \"stdout\"\ntype = \"env-file\"\npath = \"/tmp/x\"\n", "stdout", "reserved"),
    ] {
        let cfg = write_config(&emu, toml);
        let run = rotate(&emu, &cfg, &["--sink", sink]);
        run.assert_code(2).assert_stderr(needle);
    }
    assert_eq!(emu.stats()["requests"], 0, "nothing was sent to AWS");
    assert_eq!(emu.keys("ci-bot").len(), 1);
}

#[test]
fn rollback_puts_versioned_sinks_back_and_keeps_the_new_key_where_a_sink_cannot() {
    let emu = Emulator::start();
    let old = setup(&emu);
    let old_value = format!(
        "{{\"AccessKeyId\": \"{}\", \"SecretAccessKey\": \"{}\"}}",
        old.id, old.secret
    );
    rt().block_on(
        sm(&emu)
            .create_secret()
            .name("ci/ci-bot")
            .secret_string(&old_value)
            .send(),
    )
    .unwrap();
    rt().block_on(
        ssm(&emu)
            .put_parameter()
            .name("/ci/ci-bot")
            .value(&old_value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send(),
    )
    .unwrap();
    let env_path = emu.dir.path().join("app.env");
    let cfg = write_config(
        &emu,
        &format!(
            r#"
[[sinks]]
name = "ci-aws"
type = "secretsmanager"
secret_id = "ci/{{user}}"

[[sinks]]
name = "ci-param"
type = "ssm"
parameter = "/ci/{{user}}"

[[sinks]]
name = "app-env"
type = "env-file"
path = "{}"
"#,
            env_path.display()
        ),
    );
    // Versioned sinks only: rollback restores both and deactivates the new key.
    let (before_param, _) = param(&emu, "/ci/ci-bot");
    let k1 = old;
    rotate(
        &emu,
        &cfg,
        &[
            "--sink",
            "ci-aws",
            "--sink",
            "ci-param",
            "--deactivate-old-keys",
            "--yes",
        ],
    )
    .assert_code(0);
    let k2 = secret_json(&emu, "ci/ci-bot", Some("AWSCURRENT"), None)["AccessKeyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(k2, k1.id);
    assert_eq!(emu.whoami(&k1), Err("InvalidClientTokenId".into()));
    let emu2 = emu;
    let rb = emu2.run(
        emu2.keyturn()
            .arg("--config")
            .arg(&cfg)
            .args(["rollback", "--user", "ci-bot", "--output", "json"]),
    );
    rb.assert_code(0);
    let v = rb.json();
    assert_eq!(v["Sinks"][0]["Result"], "restored", "{v}");
    assert_eq!(v["Sinks"][1]["Result"], "restored", "{v}");
    assert_eq!(
        secret_json(&emu2, "ci/ci-bot", Some("AWSCURRENT"), None)["AccessKeyId"],
        k1.id.as_str()
    );
    assert_eq!(param(&emu2, "/ci/ci-bot").0, before_param);
    assert!(emu2.whoami(&k1).is_ok(), "the old key works again");
    let mut want = vec![
        (k1.id.clone(), "Active".to_string()),
        (k2.clone(), "Inactive".to_string()),
    ];
    want.sort();
    assert_eq!(emu2.keys("ci-bot"), want);

    // With a file sink, which keeps no history, the new key stays Active.
    rt().block_on(
        emu2.iam()
            .delete_access_key()
            .user_name("ci-bot")
            .access_key_id(&k2)
            .send(),
    )
    .unwrap();
    rotate(
        &emu2,
        &cfg,
        &["--sink", "app-env", "--deactivate-old-keys", "--yes"],
    )
    .assert_code(0);
    let text = std::fs::read_to_string(&env_path).unwrap();
    let k3 = env_value(&text, "AWS_ACCESS_KEY_ID");
    let rb = emu2.run(
        emu2.keyturn()
            .arg("--config")
            .arg(&cfg)
            .args(["rollback", "--user", "ci-bot", "--output", "json"]),
    );
    rb.assert_code(0).assert_stderr("still holds it");
    let v = rb.json();
    assert_eq!(v["Sinks"][0]["Result"], "not-supported");
    assert_eq!(v["LeftActive"][0], k3.as_str());
    let mut want = vec![
        (k1.id.clone(), "Active".to_string()),
        (k3, "Active".to_string()),
    ];
    want.sort();
    assert_eq!(emu2.keys("ci-bot"), want);
}
