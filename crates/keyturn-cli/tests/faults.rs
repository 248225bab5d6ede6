//! Faults and attackers (issue 17): lost responses, orphan keys, keys that are not
//! keyturn's, a failed clean-up, a foreign key appearing mid-run, the SDK's body
//! logging switch, and settings that would crash keyturn. The emulator's fault
//! endpoint drops or fails chosen responses after (or before) the call took effect.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn history(emu: &Emulator) -> Value {
    let r = emu.run(emu.keyturn().args(["history", "--output", "json"]));
    r.assert_code(0);
    r.json()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 17.1: the first CreateAccessKey response is lost after IAM made the key. keyturn
/// lists the keys, deletes the key nobody has the secret of, and creates again.
fn lost_create_response(existing_keys: usize) {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let old: Vec<Creds> = (0..existing_keys)
        .map(|_| emu.create_key("ci-bot"))
        .collect();
    emu.reset_stats();
    emu.faults(json!([{ "action": "iam:CreateAccessKey", "mode": "drop-response", "count": 1 }]));
    let run = emu.run(emu.keyturn().args(["rotate", "--user", "ci-bot"]));
    run.assert_code(0).assert_stderr("deleted orphan key");
    let new = run.env_creds();
    let keys = emu.keys("ci-bot");
    assert_eq!(keys.len(), existing_keys + 1, "no orphan is left: {keys:?}");
    assert!(keys.contains(&(new.id.clone(), "Active".into())));
    for k in &old {
        assert!(keys.contains(&(k.id.clone(), "Active".into())));
    }
    assert!(emu.whoami(&new).is_ok());
    assert_eq!(
        emu.stats()["by_action"]["iam:CreateAccessKey"],
        2,
        "{}",
        run.stderr
    );
    let h = history(&emu);
    assert_eq!(h["Runs"][0]["Status"], "succeeded");
    let steps = h["Runs"][0]["Steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s["Step"] == "delete-orphan"), "{h}");
}

#[test]
fn lost_create_response_for_a_user_without_keys_leaves_no_orphan() {
    lost_create_response(0);
}

#[test]
fn lost_create_response_at_one_key_does_not_hit_the_two_key_limit() {
    lost_create_response(1);
}

/// 17.2: killed while CreateAccessKey was in flight; then an operator created and
/// used a key by hand, and another key appeared with a CreateDate outside the
/// interrupted attempt. `resume` deletes only the key the interrupted call made.
#[cfg(feature = "failpoints")]
#[test]
fn resume_deletes_only_the_interrupted_runs_orphan() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let crashed = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot"])
            .env("KEYTURN_FAILPOINT", "create-key:call"),
    );
    assert_eq!(crashed.code, -1, "{}", crashed.stderr);
    let orphan = emu.keys("ci-bot");
    assert_eq!(orphan.len(), 1);
    // The operator's key, created and used after the crash.
    let op = emu.create_key("ci-bot");
    assert!(emu.whoami(&op).is_ok());
    let resumed = emu.run(emu.keyturn().arg("resume"));
    resumed.assert_code(0);
    let new = resumed.env_creds();
    let mut want = vec![
        (op.id.clone(), "Active".to_string()),
        (new.id.clone(), "Active".to_string()),
    ];
    want.sort();
    assert_eq!(
        emu.keys("ci-bot"),
        want,
        "the operator's key survives, the orphan is gone"
    );
    assert!(emu.whoami(&op).is_ok());
    resumed
        .assert_stderr("deleted orphan key")
        .assert_stderr("leaves it alone");
    let h = history(&emu);
    let notes: Vec<&str> = h["Runs"][0]["Steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["Step"].as_str())
        .collect();
    assert!(notes.contains(&"delete-orphan"), "{h}");
    assert!(
        notes.contains(&"foreign-key"),
        "the operator's key is reported: {h}"
    );
}

/// 17.2: a never-used key that IAM says was created well after the interrupted
/// attempt is not the run's orphan either.
#[cfg(feature = "failpoints")]
#[test]
fn resume_leaves_a_never_used_key_created_outside_the_attempt() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let crashed = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot"])
            .env("KEYTURN_FAILPOINT", "create-key:call"),
    );
    assert_eq!(crashed.code, -1);
    let orphan = emu.keys("ci-bot")[0].0.clone();
    // Make the orphan look like it was created an hour later (somebody else's).
    let later = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    emu.post(
        "/_keyturn/access-key",
        json!({"access_key_id": orphan, "create_date": later, "last_used": null}),
    );
    let resumed = emu.run(emu.keyturn().arg("resume"));
    resumed.assert_code(0).assert_stderr("leaves it alone");
    let keys = emu.keys("ci-bot");
    assert!(
        keys.iter().any(|(k, _)| *k == orphan),
        "not deleted: {keys:?}"
    );
    assert_eq!(keys.len(), 2);
}

/// 17.3: the DeleteAccessKey response is lost after the key was deleted; the SDK's
/// retry gets NoSuchEntity, which is what the plan wanted.
#[test]
fn a_lost_delete_response_counts_as_deleted() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let old = emu.create_key("ci-bot");
    emu.faults(json!([{ "action": "iam:DeleteAccessKey", "mode": "drop-response", "count": 1 }]));
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
    assert_eq!(emu.keys("ci-bot"), [(new.id.clone(), "Active".to_string())]);
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    assert_eq!(history(&emu)["Runs"][0]["Status"], "succeeded");
}

/// 17.5: the API is down while keyturn deletes a new key that did not verify. The run
/// stays resumable, holds no sealed secret, and `resume` finishes the clean-up.
#[test]
fn a_failed_clean_up_is_resumable_and_keeps_no_secret() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let old = emu.create_key("ci-bot");
    emu.propagation_delay(3600.0);
    emu.faults(json!([{ "action": "iam:DeleteAccessKey", "mode": "error", "code": "ServiceUnavailable", "status": 503 }]));
    let run = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot", "--verify-timeout", "2"]),
    );
    run.assert_code(1)
        .assert_stderr("could not delete the new key");
    let h = history(&emu);
    assert_eq!(h["Runs"][0]["Status"], "incomplete", "{h}");
    let run_id = h["Runs"][0]["RunId"].as_str().unwrap().to_string();
    assert_eq!(
        emu.keys("ci-bot").len(),
        2,
        "the unverified key is still there"
    );
    // No sealed secret outlives the decision to delete the key.
    let db = rusqlite::Connection::open(emu.journal_path()).unwrap();
    let sealed: i64 = db
        .query_row(
            "SELECT count(*) FROM runs WHERE sealed_secret IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sealed, 0);
    // The user is locked until the clean-up is finished.
    emu.run(emu.keyturn().args(["rotate", "--user", "ci-bot"]))
        .assert_code(2)
        .assert_stderr(format!("keyturn resume {run_id}"));
    emu.faults(json!([]));
    emu.propagation_delay(0.0);
    let resumed = emu.run(emu.keyturn().args(["resume", &run_id]));
    resumed.assert_code(1).assert_stderr("deleted the new key");
    assert_eq!(emu.keys("ci-bot"), [(old.id.clone(), "Active".to_string())]);
    assert_eq!(history(&emu)["Runs"][0]["Status"], "failed");
}

/// 17.6: stdout closed at start (`>&-`, which the Rust runtime reopens as
/// /dev/null) is refused when it is the only destination of the new secret.
#[test]
fn a_closed_stdout_is_refused_before_any_change() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let old = emu.create_key("ci-bot");
    emu.reset_stats();
    let kt = emu.keyturn();
    let mut bash = std::process::Command::new("bash");
    bash.arg("-c")
        .arg("\"$0\" rotate --user ci-bot --deactivate-old-keys --yes >&-")
        .arg(kt.get_program())
        .env_clear();
    for (k, v) in kt.get_envs() {
        if let Some(v) = v {
            bash.env(k, v);
        }
    }
    let run = emu.run(&mut bash);
    run.assert_code(2)
        .assert_stderr("stdout is /dev/null (or was closed)");
    assert_eq!(emu.stats()["requests"], 0);
    assert_eq!(emu.keys("ci-bot"), [(old.id.clone(), "Active".to_string())]);
}

/// 17.7: `LOG_SENSITIVE_BODIES=true` with `RUST_LOG=trace` would make the SDK log the
/// CreateAccessKey response body; keyturn removes it at start.
#[test]
fn sdk_body_logging_cannot_be_switched_on() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let run = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot"])
            .env("LOG_SENSITIVE_BODIES", "true")
            .env("RUST_LOG", "trace"),
    );
    run.assert_code(0);
    let new = run.env_creds();
    assert!(
        run.stderr.contains("REDACTED"),
        "the SDK logged redacted bodies"
    );
    assert_no_secret(&new.secret, &[("stderr", &run.stderr)]);
}

/// 17.11: another runner (its own journal) rotates the same user meanwhile: its key
/// appears while this run verifies. Nothing old is retired, the other key is untouched.
#[test]
fn a_key_that_appears_after_the_plan_stops_retirement() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    emu.propagation_delay(2.0);
    let mut cmd = emu.keyturn();
    cmd.args([
        "rotate",
        "--user",
        "ci-bot",
        "--deactivate-old-keys",
        "--delete-inactive-keys",
        "--yes",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // While this run waits for its new key to verify, "runner A" retires K1 and
    // delivers its own new key K2.
    wait_for("the new key", || emu.keys("ci-bot").len() == 2);
    rt().block_on(
        emu.iam()
            .delete_access_key()
            .user_name("ci-bot")
            .access_key_id(&k1.id)
            .send(),
    )
    .unwrap();
    let k2 = emu.create_key("ci-bot");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another rotation is in progress or happened"),
        "{stderr}"
    );
    assert!(stderr.contains(&k2.id), "{stderr}");
    let keys = emu.keys("ci-bot");
    assert!(
        keys.contains(&(k2.id.clone(), "Active".to_string())),
        "runner A's key is untouched: {keys:?}"
    );
    assert_eq!(keys.len(), 2);
}

/// 17.12: out-of-range settings from the settings file are refused like the flag.
#[test]
fn out_of_range_verify_timeouts_in_the_settings_file_are_refused() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    emu.reset_stats();
    for v in ["0", "3601", "18446744073709551615"] {
        let cfg = emu.dir.path().join("k.toml");
        std::fs::write(&cfg, format!("[rotate]\nverify_timeout = {v}\n")).unwrap();
        let run = emu.run(
            emu.keyturn()
                .arg("--config")
                .arg(&cfg)
                .args(["rotate", "--user", "ci-bot"]),
        );
        run.assert_code(2).assert_stderr("verify_timeout");
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    assert_eq!(emu.stats()["requests"], 0);
    assert_eq!(emu.keys("ci-bot").len(), 1);
}

#[test]
fn endless_or_huge_settings_files_are_refused_not_read_whole() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    emu.reset_stats();
    let big = emu.dir.path().join("big.toml");
    std::fs::write(&big, "# padding\n".repeat(200 * 1024)).unwrap();
    for cfg in [std::path::Path::new("/dev/zero"), big.as_path()] {
        for args in [
            &["rotate", "--user", "ci-bot"][..],
            &["config", "check"][..],
        ] {
            let run = emu.run(emu.keyturn().arg("--config").arg(cfg).args(args));
            run.assert_code(2).assert_stderr("larger than 1 MiB");
        }
    }
    assert_eq!(emu.stats()["requests"], 0);
}
