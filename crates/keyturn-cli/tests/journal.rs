//! The crash-safe journal: a rotation killed at any step is finished by
//! `keyturn resume` with the same end state as an uninterrupted run; locking, history,
//! rollback, sealed secrets, and refusal of corrupt or foreign journal files.
//!
//! Crashes are injected with the `failpoints` feature (`KEYTURN_FAILPOINT=<point>`
//! aborts the process like `kill -9`), plus one real `kill -9`. Only the tests that
//! inject a failpoint need the feature (`make test` enables it); everything else runs
//! under a plain `cargo test`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const FULL: [&str; 3] = ["--deactivate-old-keys", "--delete-inactive-keys", "--yes"];

/// The journal files never hold the secret in plaintext.
fn assert_journal_clean(journal: &Path, secret: &str) {
    let mut scanned = 0;
    for suffix in ["", "-wal", "-shm"] {
        let p = Path::new(&format!("{}{suffix}", journal.display())).to_path_buf();
        if let Ok(bytes) = std::fs::read(&p) {
            scanned += 1;
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "plaintext secret found in {}",
                p.display()
            );
        }
    }
    assert!(scanned >= 1, "no journal file at {}", journal.display());
}

fn history(emu: &Emulator) -> Value {
    let run = emu.run(emu.keyturn().args(["history", "--output", "json"]));
    run.assert_code(0);
    run.json()
}

fn only_run_succeeded(emu: &Emulator) {
    let h = history(emu);
    let runs = h["Runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{h}");
    assert_eq!(runs[0]["Status"], "succeeded", "{h}");
}

/// `--user` rotation with every flag, killed at `point`, then resumed.
#[cfg(feature = "failpoints")]
fn crash_and_resume_user(point: &str) {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let k2 = emu.create_key("ci-bot");
    emu.deactivate("ci-bot", &k2.id);
    let mut cmd = emu.keyturn();
    cmd.args(["rotate", "--user", "ci-bot"])
        .args(FULL)
        .env("KEYTURN_FAILPOINT", point);
    let crashed = emu.run(&mut cmd);
    assert_eq!(
        crashed.code, -1,
        "killed by the failpoint at {point}:\n{}",
        crashed.stderr
    );
    assert!(
        crashed
            .stderr
            .contains(&format!("failpoint {point} reached")),
        "{}",
        crashed.stderr
    );

    let resumed = emu.run(emu.keyturn().args(["resume"]));
    resumed.assert_code(0);
    let new = resumed.env_creds();
    // Exactly what an uninterrupted run leaves: only the new key, no orphan.
    assert_eq!(
        emu.keys("ci-bot"),
        [(new.id.clone(), "Active".to_string())],
        "{point}"
    );
    assert_eq!(
        emu.whoami(&new).unwrap(),
        format!("arn:aws:iam::{ACCOUNT}:user/ci-bot")
    );
    assert_eq!(emu.whoami(&k1), Err("InvalidClientTokenId".into()));
    only_run_succeeded(&emu);
    assert_journal_clean(&emu.journal_path(), &new.secret);
    assert_no_secret(&new.secret, &[("resume stderr", &resumed.stderr)]);
    // Nothing is left to resume.
    let again = emu.run(emu.keyturn().args(["resume"]));
    again.assert_code(0);
    assert!(again.stdout.is_empty());
}

/// `--profile` self-rotation with every flag, killed at `point`, then resumed.
#[cfg(feature = "failpoints")]
fn crash_and_resume_profile(point: &str) {
    let emu = Emulator::start();
    emu.create_user_with_policy(
        "dev",
        json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iam:*", "Resource": "arn:aws:iam::*:user/${aws:username}"},
            {"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"}]}),
    );
    let k1 = emu.create_key("dev");
    let k2 = emu.create_key("dev");
    emu.deactivate("dev", &k2.id);
    let dir = emu.dir.path().join("aws");
    std::fs::create_dir_all(&dir).unwrap();
    let (cred, conf) = (dir.join("credentials"), dir.join("config"));
    let before = format!(
        "# laptop\n[dev]\nregion = us-east-1\naws_access_key_id = {}\naws_secret_access_key = {}\n\n[ci]\naws_access_key_id = {}\naws_secret_access_key = {}",
        k1.id, k1.secret, k1.id, k1.secret
    );
    std::fs::write(&cred, &before).unwrap();
    std::fs::write(&conf, "[default]\nregion = us-east-1\n").unwrap();
    let with_files = |cmd: &mut std::process::Command| {
        cmd.env("AWS_SHARED_CREDENTIALS_FILE", &cred)
            .env("AWS_CONFIG_FILE", &conf);
    };
    let mut cmd = emu.keyturn_bare();
    with_files(&mut cmd);
    cmd.args(["rotate", "--profile", "dev"])
        .args(FULL)
        .env("KEYTURN_FAILPOINT", point);
    let crashed = emu.run(&mut cmd);
    assert_eq!(crashed.code, -1, "killed at {point}:\n{}", crashed.stderr);

    let mut cmd = emu.keyturn_bare();
    with_files(&mut cmd);
    cmd.args(["resume"]);
    let resumed = emu.run(&mut cmd);
    resumed.assert_code(0);
    let new = resumed.env_creds();
    assert_eq!(
        emu.keys("dev"),
        [(new.id.clone(), "Active".to_string())],
        "{point}"
    );
    // The consumers (both profiles) hold the new key; every other byte is unchanged.
    let after = std::fs::read_to_string(&cred).unwrap();
    assert_eq!(
        after,
        before
            .replace(&k1.id, &new.id)
            .replace(&k1.secret, &new.secret),
        "{point}"
    );
    assert!(emu.whoami(&new).is_ok());
    let mut cmd = emu.keyturn_bare();
    with_files(&mut cmd);
    let h = emu.run(cmd.args(["history", "--output", "json"]));
    let h = h.json();
    assert_eq!(h["Runs"].as_array().unwrap().len(), 1);
    assert_eq!(h["Runs"][0]["Status"], "succeeded");
    assert_journal_clean(&emu.journal_path(), &new.secret);
}

macro_rules! crash_tests {
    ($runner:ident: $($name:ident => $point:literal),* $(,)?) => {
        $( #[cfg(feature = "failpoints")] #[test] fn $name() { $runner($point); } )*
    };
}

crash_tests! { crash_and_resume_user:
    user_crash_at_begin => "begin",
    user_crash_at_free_slot_intent => "free-slot:intent",
    user_crash_at_free_slot => "free-slot",
    user_crash_at_create_key_intent => "create-key:intent",
    user_crash_after_create_call_before_journal => "create-key:call",
    user_crash_at_create_key => "create-key",
    user_crash_at_verify_intent => "verify-new-key:intent",
    user_crash_at_verify => "verify-new-key",
    user_crash_at_deactivate_intent => "deactivate-old-key:intent",
    user_crash_at_deactivate => "deactivate-old-key",
    user_crash_at_delete_intent => "delete-old-key:intent",
    user_crash_at_delete => "delete-old-key",
    user_crash_at_deliver => "deliver",
}

crash_tests! { crash_and_resume_profile:
    profile_crash_at_begin => "begin",
    profile_crash_at_free_slot_intent => "free-slot:intent",
    profile_crash_at_free_slot => "free-slot",
    profile_crash_at_create_key_intent => "create-key:intent",
    profile_crash_after_create_call_before_journal => "create-key:call",
    profile_crash_at_create_key => "create-key",
    profile_crash_at_verify => "verify-new-key",
    profile_crash_at_write_intent => "write-profiles:intent",
    profile_crash_while_holding_file_lock => "write-profiles:locked",
    profile_crash_at_write => "write-profiles",
    profile_crash_at_deactivate_intent => "deactivate-old-key:intent",
    profile_crash_at_deactivate => "deactivate-old-key",
    profile_crash_at_delete_intent => "delete-old-key:intent",
    profile_crash_at_delete => "delete-old-key",
    profile_crash_at_deliver => "deliver",
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn creates(emu: &Emulator) -> u64 {
    emu.stats()["by_action"]["iam:CreateAccessKey"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn real_kill_9_during_verification_then_resume() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    emu.propagation_delay(30.0);
    emu.reset_stats();
    let mut child = emu
        .keyturn()
        .args(["rotate", "--user", "ci-bot"])
        .args(FULL)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("CreateAccessKey", || creates(&emu) >= 1);
    // Let it reach the backoff wait of the verification loop.
    wait_for("a failed verification", || {
        emu.stats()["by_action"]["sts:GetCallerIdentity"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        emu.keys("ci-bot").len(),
        2,
        "the new key exists, unverified"
    );
    emu.propagation_delay(0.0);
    let resumed = emu.run(emu.keyturn().args(["resume"]));
    resumed.assert_code(0);
    let new = resumed.env_creds();
    assert_ne!(new.id, k1.id);
    assert_eq!(emu.keys("ci-bot"), [(new.id.clone(), "Active".to_string())]);
    assert!(emu.whoami(&new).is_ok());
    only_run_succeeded(&emu);
    assert_journal_clean(&emu.journal_path(), &new.secret);
}

#[test]
fn concurrent_rotations_of_one_user_one_wins_other_exits_2() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    emu.propagation_delay(2.0);
    emu.reset_stats();
    let first = emu
        .keyturn()
        .args(["rotate", "--user", "ci-bot"])
        .args(FULL)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first rotation to create its key", || {
        creates(&emu) >= 1
    });
    let keys_during = emu.keys("ci-bot");
    let second = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot"])
            .args(FULL),
    );
    second.assert_code(2);
    second.assert_stderr("is being rotated by run");
    second.assert_stderr(format!("pid {}", first.id()));
    assert!(second.stdout.is_empty());
    assert_eq!(creates(&emu), 1, "the second process created nothing");
    assert_eq!(
        emu.keys("ci-bot"),
        keys_during,
        "the second process changed nothing"
    );
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = emu.keys("ci-bot");
    assert_eq!(keys.len(), 1);
    assert_ne!(keys[0].0, k1.id);
}

#[cfg(feature = "failpoints")]
#[test]
fn interrupted_run_blocks_new_rotation_until_resumed() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    let mut cmd = emu.keyturn();
    cmd.args(["rotate", "--user", "ci-bot"])
        .args(FULL)
        .env("KEYTURN_FAILPOINT", "create-key");
    assert_eq!(emu.run(&mut cmd).code, -1);
    let blocked = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot"])
            .args(FULL),
    );
    blocked.assert_code(2);
    blocked.assert_stderr("was interrupted");
    blocked.assert_stderr("keyturn resume");
    assert_eq!(emu.keys("ci-bot").len(), 2, "nothing changed");
    emu.run(emu.keyturn().args(["resume"])).assert_code(0);
    emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot"])
            .args(FULL),
    )
    .assert_code(0);
    assert_eq!(emu.keys("ci-bot").len(), 1);
}

#[test]
fn corrupt_or_foreign_journal_is_refused_and_not_overwritten() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let path = emu.dir.path().join("custom.sqlite");
    // Not SQLite at all.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let run = emu.run(
        emu.keyturn()
            .args(["--journal"])
            .arg(&path)
            .args(["rotate", "--user", "ci-bot"]),
    );
    run.assert_code(2);
    run.assert_stderr("not a keyturn journal");
    run.assert_stderr("did not change it");
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
    assert_eq!(emu.keys("ci-bot"), [(k1.id.clone(), "Active".to_string())]);

    // Someone else's SQLite database.
    std::fs::remove_file(&path).unwrap();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let run = emu.run(
        emu.keyturn()
            .env("KEYTURN_JOURNAL", &path)
            .args(["rotate", "--user", "ci-bot"]),
    );
    run.assert_code(2);
    run.assert_stderr("another application");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    for cmd in [vec!["history"], vec!["resume"]] {
        let run = emu.run(emu.keyturn().env("KEYTURN_JOURNAL", &path).args(&cmd));
        run.assert_code(2);
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(emu.keys("ci-bot"), [(k1.id, "Active".to_string())]);
}

#[test]
fn history_lists_runs_with_masked_key_ids() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_user("other");
    emu.create_key("ci-bot");
    emu.create_key("other");
    let r1 = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--deactivate-old-keys",
        "--yes",
    ]));
    r1.assert_code(0);
    let new = r1.env_creds();
    emu.run(emu.keyturn().args(["rotate", "--user", "other"]))
        .assert_code(0);
    let run = emu.run(
        emu.keyturn()
            .args(["history", "--user", "ci-bot", "--output", "json"]),
    );
    run.assert_code(0);
    let v = run.json();
    let runs = v["Runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["UserName"], "ci-bot");
    assert_eq!(runs[0]["Status"], "succeeded");
    let masked = format!("{}{}", "*".repeat(16), &new.id[16..]);
    assert_eq!(runs[0]["NewAccessKeyId"], masked);
    let steps: Vec<(&str, &str)> = runs[0]["Steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["Step"].as_str().unwrap(), s["Phase"].as_str().unwrap()))
        .collect();
    assert!(steps.contains(&("create-key", "intent")) && steps.contains(&("create-key", "done")));
    assert!(steps.contains(&("deactivate-old-key", "done")));
    assert!(!run.stdout.contains(&new.id), "full key ids never appear");
    assert_no_secret(&new.secret, &[("history", &run.stdout)]);
    let table = emu.run(emu.keyturn().args(["history"]));
    table.assert_code(0);
    assert!(table.stdout.contains("ci-bot") && table.stdout.contains("other"));
    assert!(!table.stdout.contains(&new.id));
}

#[test]
fn rollback_reactivates_old_key_and_refuses_after_delete() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let r = emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--deactivate-old-keys",
        "--yes",
    ]));
    r.assert_code(0);
    let new = r.env_creds();
    let rb = emu.run(
        emu.keyturn()
            .args(["rollback", "--user", "ci-bot", "--output", "json"]),
    );
    rb.assert_code(0);
    let v = rb.json();
    assert_eq!(v["Reactivated"], json!([k1.id]));
    assert_eq!(v["Deactivated"], json!([new.id]));
    let mut want = vec![
        (k1.id.clone(), "Active".to_string()),
        (new.id.clone(), "Inactive".to_string()),
    ];
    want.sort();
    assert_eq!(emu.keys("ci-bot"), want);
    assert_eq!(history(&emu)["Runs"][0]["Status"], "rolled-back");

    // A run that deleted the old key cannot be rolled back.
    emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot"])
            .args(FULL),
    )
    .assert_code(0);
    let before = emu.keys("ci-bot");
    let rb = emu.run(emu.keyturn().args(["rollback", "--user", "ci-bot"]));
    rb.assert_code(2);
    rb.assert_stderr("deleted");
    assert_eq!(emu.keys("ci-bot"), before);
}

#[cfg(feature = "failpoints")]
#[test]
fn kms_sealed_secret_survives_a_crash() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    let kms = aws_sdk_kms::Client::new(&emu.sdk_config(&emu.admin));
    let key = rt()
        .block_on(kms.create_key().description("keyturn journal").send())
        .unwrap();
    let key_id = key.key_metadata().unwrap().key_id().to_string();
    let mut cmd = emu.keyturn();
    cmd.args(["--journal-kms-key", &key_id, "rotate", "--user", "ci-bot"])
        .args(FULL)
        .env("KEYTURN_FAILPOINT", "verify-new-key");
    assert_eq!(emu.run(&mut cmd).code, -1);
    // The local key file was never needed.
    assert!(!emu
        .journal_path()
        .with_file_name("journal.sqlite.key")
        .exists());
    // Without the KMS key the sealed secret cannot be opened.
    let wrong = emu.run(emu.keyturn().args(["resume"]));
    wrong.assert_code(2);
    wrong.assert_stderr("--journal-kms-key");
    emu.reset_stats();
    let resumed = emu.run(
        emu.keyturn()
            .env("KEYTURN_JOURNAL_KMS_KEY", &key_id)
            .args(["resume"]),
    );
    resumed.assert_code(0);
    assert_eq!(
        emu.stats()["by_action"]["kms:Decrypt"],
        1,
        "{}",
        emu.stats()
    );
    let new = resumed.env_creds();
    assert_eq!(emu.keys("ci-bot"), [(new.id.clone(), "Active".to_string())]);
    assert_journal_clean(&emu.journal_path(), &new.secret);
}
