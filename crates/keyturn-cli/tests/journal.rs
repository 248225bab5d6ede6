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

/// The new credentials, printed once by the stdout sink: by the crashed run if it
/// got past that delivery, else by `resume` (both, if it crashed right after printing
/// and before journaling it: then they must be the same key).
fn printed_creds(point: &str, crashed: &Run, resumed: &Run) -> Creds {
    let has = |r: &Run| r.stdout.contains("export AWS_SECRET_ACCESS_KEY=");
    match (has(crashed), has(resumed)) {
        (false, true) => resumed.env_creds(),
        (true, false) => crashed.env_creds(),
        (true, true) => {
            let (a, b) = (crashed.env_creds(), resumed.env_creds());
            assert_eq!(a.id, b.id, "{point}: two different keys were printed");
            b
        }
        (false, false) => panic!(
            "{point}: the new credentials were never printed\ncrashed:\n{}\nresumed:\n{}",
            crashed.stderr, resumed.stderr
        ),
    }
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
    let new = printed_creds(point, &crashed, &resumed);
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
    let new = printed_creds(point, &crashed, &resumed);
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
    user_crash_at_print_intent => "deliver:stdout:intent",
    user_crash_right_after_printing => "deliver:stdout",
    user_crash_at_print_verified => "verify-delivery:stdout",
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
    profile_crash_at_write_intent => "deliver:profiles:intent",
    profile_crash_while_holding_file_lock => "write-profiles:locked",
    profile_crash_at_write => "deliver:profiles",
    profile_crash_at_write_verified => "verify-delivery:profiles",
    profile_crash_at_print_intent => "deliver:stdout:intent",
    profile_crash_right_after_printing => "deliver:stdout",
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

/// Two rotations of one user: the second finds the first holding the user's lock and
/// exits 2 without changing anything. The first is held at `verify-new-key:intent`
/// (its key created, the lock held) by a pausing failpoint until the second is done:
/// no reliance on how long verification takes.
#[cfg(feature = "failpoints")]
#[test]
fn concurrent_rotations_of_one_user_one_wins_other_exits_2() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    emu.reset_stats();
    let go = emu.dir.path().join("go");
    let first = emu
        .keyturn()
        .args(["rotate", "--user", "ci-bot"])
        .args(FULL)
        .env(
            "KEYTURN_FAILPOINT",
            format!("verify-new-key:intent=wait:{}", go.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first rotation to hold at verify-new-key", || {
        with_suffix(&go, ".reached").exists()
    });
    assert_eq!(creates(&emu), 1, "the first rotation created its key");
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
    std::fs::write(&go, "").unwrap();
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

/// `keyturn history | head`: a reader that stops reading ends history quietly with
/// exit 0, like other Unix tools. The read end is closed before keyturn starts, so
/// its first write meets the broken pipe whatever the timing.
#[test]
fn history_into_a_closed_pipe_exits_0_quietly() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    emu.run(emu.keyturn().args(["rotate", "--user", "ci-bot"]))
        .assert_code(0);
    for format in ["table", "json"] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = emu
            .keyturn()
            .args(["history", "--output", format])
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And through a real pipeline, as a user types it.
    let script = format!(
        "set -o pipefail; {:?} history | head -1",
        env!("CARGO_BIN_EXE_keyturn")
    );
    let mut sh = std::process::Command::new("bash");
    sh.arg("-c").arg(script).env_clear();
    for (k, v) in emu.keyturn().get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let out = sh.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

// ---- journal I/O failures, file modes, planted and read-only journals ----------------

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// The effective uid of this test process (the owner of a file it creates).
fn my_uid() -> u32 {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::metadata(f.path()).unwrap().uid()
}

const NOBODY: u32 = 65534;

#[cfg(feature = "failpoints")]
fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", p.display()))
}

/// A mount undone on drop. `None` where this process may not mount (not root, or no
/// CAP_SYS_ADMIN): the callers then say so on stderr and run their other cases.
struct Mount(PathBuf);

impl Mount {
    fn new(args: &[&str], target: &Path) -> Option<Mount> {
        let ok = std::process::Command::new("mount")
            .args(args)
            .arg(target)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(target.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Make a file-size limit of `bytes` apply to the child (writes past it fail with
/// EFBIG, as on a full disk), with SIGXFSZ ignored so the write fails instead of
/// killing the process.
fn file_size_limit(cmd: &mut std::process::Command, bytes: u64) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn assert_not_called_corrupt(run: &Run) {
    for wrong in ["not a keyturn journal", "corrupt", "move it aside"] {
        assert!(
            !run.stderr.contains(wrong),
            "an intact journal was called {wrong:?}:\n{}",
            run.stderr
        );
    }
}

/// Issue 13: a journal that fills up right after `CreateAccessKey` is a runtime
/// failure (exit 1, "disk is full"), not "invalid input" (exit 2); resume converges.
#[cfg(feature = "failpoints")]
#[test]
fn journal_full_when_recording_the_new_key_exits_1_then_resume_converges() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    // Writes: 1 lock, 2 begin, 3 create-key intent; the 4th (the new key) fails.
    let full = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot"])
            .env("KEYTURN_FAILPOINT", "journal-full-after:3"),
    );
    full.assert_code(1);
    full.assert_stderr("database or disk is full");
    full.assert_stderr("keyturn resume");
    assert_not_called_corrupt(&full);
    let resumed = emu.run(emu.keyturn().args(["resume"]));
    resumed.assert_code(0);
    let new = resumed.env_creds();
    let mut want = vec![
        (k1.id.clone(), "Active".to_string()),
        (new.id.clone(), "Active".to_string()),
    ];
    want.sort();
    assert_eq!(emu.keys("ci-bot"), want, "no orphan key is left");
    assert!(emu.whoami(&new).is_ok());
    only_run_succeeded(&emu);
    assert_journal_clean(&emu.journal_path(), &new.secret);
}

/// Issue 13: the journal fills up after the new key was sealed in it: exit 1, and the
/// key is not lost: resume finishes with the same key.
#[cfg(feature = "failpoints")]
#[test]
fn journal_full_after_the_key_is_sealed_keeps_it_for_resume() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    emu.reset_stats();
    // Writes: lock, begin, create intent, new key; the verify intent (5th) fails.
    let full = emu.run(
        emu.keyturn()
            .args([
                "rotate",
                "--user",
                "ci-bot",
                "--deactivate-old-keys",
                "--yes",
            ])
            .env("KEYTURN_FAILPOINT", "journal-full-after:4"),
    );
    full.assert_code(1);
    full.assert_stderr("database or disk is full");
    assert_not_called_corrupt(&full);
    let resumed = emu.run(emu.keyturn().args(["resume"]));
    resumed.assert_code(0);
    let new = resumed.env_creds();
    let mut want = vec![
        (k1.id.clone(), "Inactive".to_string()),
        (new.id.clone(), "Active".to_string()),
    ];
    want.sort();
    assert_eq!(emu.keys("ci-bot"), want);
    assert_eq!(creates(&emu), 1, "resume used the sealed key, created none");
    only_run_succeeded(&emu);
}

/// Issue 17 #4: `resume` never creates a key while the journal cannot record it.
#[cfg(feature = "failpoints")]
#[test]
fn resume_on_a_full_journal_creates_nothing() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let mut cmd = emu.keyturn();
    cmd.args(["rotate", "--user", "ci-bot"])
        .env("KEYTURN_FAILPOINT", "create-key:intent");
    assert_eq!(emu.run(&mut cmd).code, -1);
    emu.reset_stats();
    let full = emu.run(
        emu.keyturn()
            .args(["resume"])
            .env("KEYTURN_FAILPOINT", "journal-full-after:0"),
    );
    full.assert_code(1);
    full.assert_stderr("database or disk is full");
    assert_eq!(creates(&emu), 0, "no key created while the journal is full");
    assert_eq!(emu.keys("ci-bot"), [(k1.id.clone(), "Active".to_string())]);
    let resumed = emu.run(emu.keyturn().args(["resume"]));
    resumed.assert_code(0);
    assert_eq!(emu.keys("ci-bot").len(), 2);
    only_run_succeeded(&emu);
}

/// Issue 17 #4: the journal makes room for the new key's sealed secret before
/// `CreateAccessKey`: once the key exists, recording it needs no new disk space.
/// The failpoint freezes the size of every file right after that reservation (a
/// file-size limit: any write that would grow a file fails, as on a full disk).
#[cfg(feature = "failpoints")]
#[test]
fn room_for_the_secret_is_reserved_before_create_access_key() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    // A first run, so the journal exists with its schema (a fresh file grows anyway).
    emu.run(emu.keyturn().args([
        "rotate",
        "--user",
        "ci-bot",
        "--deactivate-old-keys",
        "--yes",
    ]))
    .assert_code(0);
    assert!(emu
        .keys("ci-bot")
        .contains(&(k1.id.clone(), "Inactive".to_string())));
    emu.reset_stats();
    let run = emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot"])
            .args(FULL)
            .env("KEYTURN_FAILPOINT", "journal-full-after-reserve"),
    );
    run.assert_code(0);
    let new = run.env_creds();
    assert_eq!(creates(&emu), 1);
    assert_eq!(emu.keys("ci-bot"), [(new.id.clone(), "Active".to_string())]);
    let h = history(&emu);
    assert_eq!(h["Runs"].as_array().unwrap().len(), 2);
    let steps = h["Runs"][0]["Steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["Step"] == "create-key" && s["Phase"] == "done"),
        "the new key was recorded with no room to grow: {h}"
    );
    assert_eq!(h["Runs"][0]["Status"], "succeeded", "{h}");
    assert!(emu.whoami(&new).is_ok());
}

/// Issue 13: a full disk at open is an I/O failure (exit 1), not "not a keyturn
/// journal ... corrupt" (exit 2); `history` still reads the journal.
#[test]
fn full_disk_at_open_is_an_io_error_not_corruption() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    emu.run(
        emu.keyturn()
            .args(["rotate", "--user", "ci-bot"])
            .args(FULL),
    )
    .assert_code(0);
    let db = emu.journal_path();
    let before = std::fs::read(&db).unwrap();
    // A file-size limit of 0: no file may grow (the journal's -shm must, at open).
    let mut cmd = emu.keyturn();
    cmd.args(["rotate", "--user", "ci-bot"]);
    file_size_limit(&mut cmd, 0);
    let run = emu.run(&mut cmd);
    run.assert_code(1);
    assert_not_called_corrupt(&run);
    run.assert_stderr(db.display().to_string());
    assert_eq!(std::fs::read(&db).unwrap(), before);
    let mut cmd = emu.keyturn();
    cmd.args(["history", "--output", "json"]);
    file_size_limit(&mut cmd, 0);
    let h = emu.run(&mut cmd);
    h.assert_code(0);
    assert_eq!(h.json()["Runs"].as_array().unwrap().len(), 1);

    // The real thing where this process may mount: a tmpfs filled to the last byte.
    let dir = emu.dir.path().join("small");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let Some(_m) = Mount::new(&["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"], &dir) else {
        eprintln!("note: cannot mount a tmpfs here; the ENOSPC case ran as a file-size limit only");
        return;
    };
    let small = dir.join("journal.sqlite");
    emu.run(
        emu.keyturn()
            .arg("--journal")
            .arg(&small)
            .args(["rotate", "--user", "ci-bot"])
            .args(FULL),
    )
    .assert_code(0);
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let keys_before = emu.keys("ci-bot");
    emu.reset_stats();
    let run = emu.run(emu.keyturn().arg("--journal").arg(&small).args([
        "rotate",
        "--user",
        "ci-bot",
        "--deactivate-old-keys",
        "--yes",
    ]));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_not_called_corrupt(&run);
    assert_eq!(creates(&emu), 0, "no key is created on a full journal disk");
    assert_eq!(emu.keys("ci-bot"), keys_before);
    let h = emu.run(
        emu.keyturn()
            .arg("--journal")
            .arg(&small)
            .args(["history", "--output", "json"]),
    );
    h.assert_code(0);
    assert_eq!(h.json()["Runs"].as_array().unwrap().len(), 1);
}

/// Issue 13 / 17 #8: every journal file is created 0600, whatever the umask, also in
/// a directory keyturn did not create.
#[cfg(feature = "failpoints")]
#[test]
fn journal_files_are_created_0600_whatever_the_umask() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    let dir = emu.dir.path().join("journals");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.join("j.sqlite");
    let mut cmd = emu.keyturn();
    cmd.arg("--journal")
        .arg(&db)
        .args(["rotate", "--user", "ci-bot"])
        .env("KEYTURN_FAILPOINT", "verify-new-key");
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    assert_eq!(emu.run(&mut cmd).code, -1);
    for suffix in ["", "-wal", "-shm", ".key"] {
        let p = with_suffix(&db, suffix);
        assert_eq!(mode_of(&p), 0o600, "{}", p.display());
    }
    assert_eq!(
        mode_of(&dir),
        0o755,
        "a directory keyturn did not create is left as is"
    );
    emu.run(emu.keyturn().arg("--journal").arg(&db).arg("resume"))
        .assert_code(0);
}

/// Issue 17 #8: journal files another user could have planted or changed are refused
/// (exit 2) before anything is read from them or sent to AWS, naming the file and the
/// fix. Reproduces the attack: uid 65534 plants an empty database and an all-zero key
/// file.
#[test]
fn planted_journal_files_are_refused() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let root = my_uid() == 0;
    let mut n = 0;
    let mut case = |what: &str, setup: &dyn Fn(&Path), needles: &[&str]| {
        n += 1;
        let dir = emu.dir.path().join(format!("case{n}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let db = dir.join("journal.sqlite");
        setup(&db);
        let snapshot = |d: &Path| -> Vec<(String, Vec<u8>, u32, u32)> {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| {
                    let p = e.unwrap().path();
                    let m = std::fs::metadata(&p).unwrap();
                    let bytes = if m.is_file() {
                        std::fs::read(&p).unwrap()
                    } else {
                        vec![]
                    };
                    (p.display().to_string(), bytes, m.uid(), m.mode())
                })
                .collect();
            v.sort();
            v
        };
        let before = snapshot(&dir);
        emu.reset_stats();
        for args in [vec!["rotate", "--user", "ci-bot"], vec!["resume"]] {
            let run = emu.run(emu.keyturn().arg("--journal").arg(&db).args(&args));
            assert_eq!(run.code, 2, "{what}: {args:?}\n{}", run.stderr);
            for needle in needles {
                run.assert_stderr(needle);
            }
            assert!(run.stdout.is_empty(), "{what}");
        }
        assert_eq!(snapshot(&dir), before, "{what}: files unchanged");
        assert_eq!(
            emu.stats()["by_action"]["iam:CreateAccessKey"]
                .as_u64()
                .unwrap_or(0),
            0,
            "{what}"
        );
        assert_eq!(emu.keys("ci-bot"), [(k1.id.clone(), "Active".to_string())]);
    };
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    case(
        "a journal directory anyone can write",
        &|db| chmod(db.parent().unwrap(), 0o777),
        &["can be written by group or others", "chmod go-w"],
    );
    case(
        "a database anyone can write",
        &|db| {
            std::fs::write(db, b"").unwrap();
            chmod(db, 0o666);
        },
        &["journal.sqlite", "chmod go-w"],
    );
    case(
        "a key file others can read",
        &|db| {
            let key = with_suffix(db, ".key");
            std::fs::write(&key, [7u8; 32]).unwrap();
            chmod(&key, 0o644);
        },
        &["journal.sqlite.key", "readable by group or others"],
    );
    if !root {
        eprintln!("note: not root, so the files-owned-by-another-user cases cannot be set up here (unit tests cover the rule)");
        return;
    }
    let plant = |p: &Path, bytes: &[u8]| {
        std::fs::write(p, bytes).unwrap();
        chmod(p, 0o600);
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    };
    case(
        "the attack: an empty database and an all-zero key file planted by uid 65534",
        &|db| {
            plant(db, b"");
            plant(&with_suffix(db, ".key"), &[0u8; 32]);
        },
        &["journal.sqlite", "owned by uid 65534", "chown"],
    );
    case(
        "an all-zero key file planted by uid 65534",
        &|db| plant(&with_suffix(db, ".key"), &[0u8; 32]),
        &["journal.sqlite.key", "owned by uid 65534"],
    );
    case(
        "a -wal file planted by uid 65534",
        &|db| plant(&with_suffix(db, "-wal"), b""),
        &["journal.sqlite-wal", "owned by uid 65534"],
    );
    case(
        "a journal directory owned by uid 65534",
        &|db| std::os::unix::fs::chown(db.parent().unwrap(), Some(NOBODY), Some(NOBODY)).unwrap(),
        &["owned by uid 65534"],
    );
}

/// Issue 17 #15: a valid journal that cannot be written (read-only mount or file) is
/// reported as read-only, not as corrupt; `history` reads it.
#[test]
fn read_only_journal_is_reported_read_only_and_history_reads_it() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    let dir = emu.dir.path().join("ro");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.join("journal.sqlite");
    let journal = |cmd: &mut std::process::Command| {
        cmd.arg("--journal").arg(&db);
    };
    let mut cmd = emu.keyturn();
    journal(&mut cmd);
    emu.run(cmd.args(["rotate", "--user", "ci-bot"]))
        .assert_code(0);
    let before = std::fs::read(&db).unwrap();
    let check = |what: &str, as_user: Option<u32>| {
        let with_user = |cmd: &mut std::process::Command| {
            if let Some(u) = as_user {
                cmd.uid(u).gid(u);
            }
        };
        let mut cmd = emu.keyturn();
        journal(&mut cmd);
        with_user(&mut cmd);
        let run = emu.run(cmd.args(["rotate", "--user", "ci-bot"]));
        assert_eq!(run.code, 1, "{what}:\n{}", run.stderr);
        run.assert_stderr("read-only");
        run.assert_stderr("keyturn history");
        assert_not_called_corrupt(&run);
        let mut cmd = emu.keyturn();
        journal(&mut cmd);
        with_user(&mut cmd);
        let h = emu.run(cmd.args(["history", "--output", "json"]));
        assert_eq!(h.code, 0, "{what}:\n{}", h.stderr);
        let v = h.json();
        assert_eq!(v["Runs"].as_array().unwrap().len(), 1, "{what}");
        assert_eq!(v["Runs"][0]["Status"], "succeeded");
        assert_eq!(std::fs::read(&db).unwrap(), before, "{what}");
    };

    // A read-only file: as a user who is not root (root may write any file).
    if my_uid() == 0 {
        // Let uid 65534 reach the journal: the scratch dir and the journal stay root's.
        std::fs::set_permissions(emu.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // uid 65534 may read the database, not write it (its key file stays 0600).
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        check("a read-only file (as uid 65534)", Some(NOBODY));
    } else {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
        check("a read-only file", None);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // A read-only mount, where this process may mount.
    match Mount::new(&["--bind", "-o", "ro", dir.to_str().unwrap()], &dir) {
        Some(_m) => check("a read-only bind mount", None),
        None => eprintln!("note: cannot bind-mount here; the read-only mount case did not run"),
    }
}

// ---- the DynamoDB backend (issue 14) ------------------------------------------------

use keyturn::journal::contract;
use keyturn::journal::dynamodb::{DynamoJournal, DEFAULT_RETENTION};
use keyturn::journal::seal::Sealer;
use keyturn::journal::{Clock, JournalOptions};

/// A journal table and a KMS key on the emulator, and a settings file selecting them.
struct Dynamo {
    table: String,
    kms_key: String,
    config: PathBuf,
}

impl Dynamo {
    fn new(emu: &Emulator, lease_seconds: u64) -> Dynamo {
        let conf = emu.sdk_config(&emu.admin);
        let table = "keyturn-journal".to_string();
        rt().block_on(DynamoJournal::create_table(
            &aws_sdk_dynamodb::Client::new(&conf),
            &table,
        ))
        .unwrap();
        let kms = aws_sdk_kms::Client::new(&conf);
        let key = rt()
            .block_on(kms.create_key().description("keyturn journal").send())
            .unwrap();
        let kms_key = key.key_metadata().unwrap().key_id().to_string();
        let config = emu.dir.path().join("dynamo.toml");
        std::fs::write(
            &config,
            format!(
                "[journal]\nbackend = \"dynamodb\"\ntable = \"{table}\"\nkms_key = \"{kms_key}\"\nlease_seconds = {lease_seconds}\n"
            ),
        )
        .unwrap();
        Dynamo {
            table,
            kms_key,
            config,
        }
    }

    fn keyturn(&self, emu: &Emulator) -> std::process::Command {
        let mut cmd = emu.keyturn();
        cmd.arg("--config").arg(&self.config);
        cmd
    }

    /// Every item of the table.
    fn items(
        &self,
        emu: &Emulator,
    ) -> Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
        let c = aws_sdk_dynamodb::Client::new(&emu.sdk_config(&emu.admin));
        rt().block_on(c.scan().table_name(&self.table).send())
            .unwrap()
            .items()
            .to_vec()
    }

    fn history(&self, emu: &Emulator) -> Value {
        let h = emu.run(self.keyturn(emu).args(["history", "--output", "json"]));
        h.assert_code(0);
        h.json()
    }
}

struct DynamoOpener {
    conf: aws_config::SdkConfig,
    table: String,
    kms_key: String,
}

impl contract::Opener for DynamoOpener {
    type J = DynamoJournal;
    async fn open(&self, clock: Clock) -> DynamoJournal {
        let sealer = Sealer::Kms {
            client: aws_sdk_kms::Client::new(&self.conf),
            key_id: self.kms_key.clone(),
        };
        let options = JournalOptions {
            lease: contract::LEASE,
            clock,
        };
        DynamoJournal::open(
            aws_sdk_dynamodb::Client::new(&self.conf),
            &self.table,
            sealer,
            options,
            DEFAULT_RETENTION,
        )
        .await
        .unwrap()
    }
}

/// Issue 14: the DynamoDB backend passes the same contract as SQLite (records, locks,
/// leases, take-over, fencing, incomplete runs, lock races, conflicts as Locked).
#[test]
fn dynamodb_journal_passes_the_contract() {
    let emu = Emulator::start();
    let d = Dynamo::new(&emu, 300);
    let opener = DynamoOpener {
        conf: emu.sdk_config(&emu.admin),
        table: d.table.clone(),
        kms_key: d.kms_key.clone(),
    };
    rt().block_on(contract::run_all(&opener));
    // Secrets are only ever stored sealed.
    let secret = contract::new_key("x").secret.expose().to_string();
    for item in d.items(&emu) {
        let text = format!("{item:?}");
        assert!(!text.contains(&secret), "a secret in clear in {text}");
    }
}

/// A table that does not exist, or a DynamoDB backend without a KMS key, is refused
/// before any rotation starts (exit 2).
#[test]
fn dynamodb_journal_needs_its_table_and_a_kms_key() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let config = emu.dir.path().join("k.toml");
    std::fs::write(&config, "[journal]\nbackend = \"dynamodb\"\n").unwrap();
    let run = emu.run(
        emu.keyturn()
            .arg("--config")
            .arg(&config)
            .args(["rotate", "--user", "ci-bot"]),
    );
    run.assert_code(2);
    run.assert_stderr("needs journal.kms_key");
    std::fs::write(
        &config,
        "[journal]\nbackend = \"dynamodb\"\ntable = \"no-such-table\"\nkms_key = \"alias/x\"\n",
    )
    .unwrap();
    let run = emu.run(
        emu.keyturn()
            .arg("--config")
            .arg(&config)
            .args(["rotate", "--user", "ci-bot"]),
    );
    run.assert_code(2);
    run.assert_stderr("no-such-table does not exist");
    assert_eq!(emu.keys("ci-bot"), [(k1.id, "Active".to_string())]);
}

/// `rotate` and `history` on the DynamoDB journal: the run, its steps, the lease
/// released, the secret erased, and TTL only on the finished run's items.
#[test]
fn dynamodb_journal_records_a_rotation() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let d = Dynamo::new(&emu, 300);
    let r = emu.run(
        d.keyturn(&emu)
            .args(["rotate", "--user", "ci-bot"])
            .args(FULL),
    );
    r.assert_code(0);
    let new = r.env_creds();
    assert_eq!(emu.keys("ci-bot"), [(new.id.clone(), "Active".to_string())]);
    let h = d.history(&emu);
    let runs = h["Runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{h}");
    assert_eq!(runs[0]["Status"], "succeeded");
    let steps: Vec<(&str, &str)> = runs[0]["Steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["Step"].as_str().unwrap(), s["Phase"].as_str().unwrap()))
        .collect();
    for want in [
        ("create-key", "intent"),
        ("create-key", "done"),
        ("verify-new-key", "done"),
        ("deactivate-old-key", "done"),
        ("delete-old-key", "done"),
        ("deliver", "note"),
    ] {
        assert!(steps.contains(&want), "{want:?} in {steps:?}");
    }
    let items = d.items(&emu);
    let kind = |i: &std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>| {
        i.get("Kind")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        !items.iter().any(|i| kind(i) == "lease"),
        "the lease is released"
    );
    let run = items.iter().find(|i| kind(i) == "run").unwrap();
    assert!(
        !run.contains_key("SealedSecret"),
        "the secret is erased once delivered"
    );
    assert!(
        run.contains_key("ExpiresAt"),
        "a finished run expires (TTL)"
    );
    assert!(items
        .iter()
        .filter(|i| kind(i) == "step")
        .all(|i| i.contains_key("ExpiresAt")));
    let text = format!("{items:?}");
    assert!(!text.contains(&new.secret) && !text.contains(&k1.secret));
}

/// Writes the release file of a `=wait:` failpoint when dropped, so a failing test
/// never leaves a paused keyturn behind.
#[cfg(feature = "failpoints")]
struct Release(PathBuf);

#[cfg(feature = "failpoints")]
impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}

/// Issue 14: two processes racing for one user's lease on the DynamoDB journal:
/// exactly one rotates, the other exits 2 and changes nothing. The winner is held at
/// `verify-new-key:intent` (lease taken, key created) until the loser has exited, so
/// the race never depends on how long a rotation takes.
#[cfg(feature = "failpoints")]
#[test]
fn two_processes_racing_for_a_dynamodb_lease_one_wins() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let d = Dynamo::new(&emu, 300);
    emu.reset_stats();
    let go = emu.dir.path().join("go");
    let release = Release(go.clone());
    let spawn = || {
        d.keyturn(&emu)
            .args(["rotate", "--user", "ci-bot"])
            .args(FULL)
            .env(
                "KEYTURN_FAILPOINT",
                format!("verify-new-key:intent=wait:{}", go.display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    wait_for("one process to hold the lease at verify-new-key", || {
        with_suffix(&go, ".reached").exists()
    });
    wait_for("the other process to give up", || {
        a.try_wait().unwrap().is_some() || b.try_wait().unwrap().is_some()
    });
    drop(release);
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap_or(-1)).collect();
    let stderr: Vec<String> = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(sorted, [0, 2], "one wins, one is locked out: {stderr:?}");
    let loser = codes.iter().position(|c| *c == 2).unwrap();
    assert!(
        stderr[loser].contains("is being rotated by run"),
        "{}",
        stderr[loser]
    );
    assert!(outs[loser].stdout.is_empty());
    assert_eq!(creates(&emu), 1, "only the winner created a key");
    let keys = emu.keys("ci-bot");
    assert_eq!(keys.len(), 1);
    assert_ne!(keys[0].0, k1.id);
    assert_eq!(d.history(&emu)["Runs"].as_array().unwrap().len(), 1);
}

/// Issue 14: a holder that stops heartbeating (here: SIGSTOP, a hung process; the
/// same holds for a Lambda that timed out) is taken over once its lease expired, by
/// `resume` in another process; when the old holder wakes up, its next journal write
/// is refused (`no longer holds the lease`) before it can change anything.
#[test]
fn a_dynamodb_holder_that_stops_heartbeating_is_taken_over_after_its_lease() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    let k1 = emu.create_key("ci-bot");
    let d = Dynamo::new(&emu, 10);
    emu.propagation_delay(60.0);
    emu.reset_stats();
    let child = d
        .keyturn(&emu)
        .args(["rotate", "--user", "ci-bot"])
        .args(FULL)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    wait_for("CreateAccessKey", || creates(&emu) >= 1);
    wait_for("the new key to be journaled", || {
        d.items(&emu).iter().any(|i| i.contains_key("SealedSecret"))
    });
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let h = d.history(&emu);
    let run_id = h["Runs"][0]["RunId"].as_str().unwrap().to_string();
    let lease_until = d
        .items(&emu)
        .iter()
        .find_map(|i| i.get("LeaseUntil").and_then(|v| v.as_n().ok()).cloned())
        .unwrap()
        .parse::<i128>()
        .unwrap();
    let now_ms = || time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    if lease_until - now_ms() > 2000 {
        let early = emu.run(d.keyturn(&emu).args(["resume", &run_id]));
        early.assert_code(2);
        early.assert_stderr("still running");
    } else {
        eprintln!("note: the machine was too slow to try a resume while the lease was live");
    }
    // Wait for the lease (not a guess: the time the journal says it ends).
    while now_ms() <= lease_until + 200 {
        std::thread::sleep(Duration::from_millis(100));
    }
    emu.propagation_delay(0.0);
    let resumed = emu.run(d.keyturn(&emu).args(["resume", &run_id]));
    resumed.assert_code(0);
    let new = resumed.env_creds();
    assert_eq!(emu.keys("ci-bot"), [(new.id.clone(), "Active".to_string())]);
    assert_ne!(new.id, k1.id);
    assert_eq!(creates(&emu), 1, "resume used the journaled key");
    // The old holder wakes up: fenced at its next journal write.
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no longer holds the lease"), "{stderr}");
    assert_eq!(emu.keys("ci-bot"), [(new.id.clone(), "Active".to_string())]);
    let h = d.history(&emu);
    assert_eq!(h["Runs"][0]["Status"], "succeeded", "{h}");
    assert!(h["Runs"][0]["Steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["Step"] == "take-over"));
}

/// A crash on the DynamoDB journal is resumed like one on SQLite.
#[cfg(feature = "failpoints")]
#[test]
fn dynamodb_journal_crash_then_resume_converges() {
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    let d = Dynamo::new(&emu, 300);
    let mut cmd = d.keyturn(&emu);
    cmd.args(["rotate", "--user", "ci-bot"])
        .args(FULL)
        .env("KEYTURN_FAILPOINT", "verify-new-key");
    assert_eq!(emu.run(&mut cmd).code, -1);
    let blocked = emu.run(
        d.keyturn(&emu)
            .args(["rotate", "--user", "ci-bot"])
            .args(FULL),
    );
    blocked.assert_code(2);
    blocked.assert_stderr("keyturn resume");
    let resumed = emu.run(d.keyturn(&emu).args(["resume"]));
    resumed.assert_code(0);
    let new = resumed.env_creds();
    assert_eq!(emu.keys("ci-bot"), [(new.id.clone(), "Active".to_string())]);
    let h = d.history(&emu);
    assert_eq!(h["Runs"][0]["Status"], "succeeded", "{h}");
    assert!(!format!("{:?}", d.items(&emu)).contains(&new.secret));
}
