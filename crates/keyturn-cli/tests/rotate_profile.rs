//! `keyturn rotate --profile NAME` (self-rotation): the profile's own key is replaced
//! and written back into the shared files byte for byte, against the emulator with
//! auth enforced (each user may only manage its own keys).

mod common;

use common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A user allowed to manage only its own keys (the usual self-service policy).
fn self_service_user(emu: &Emulator, name: &str) -> Creds {
    emu.create_user_with_policy(
        name,
        json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow",
             "Action": ["iam:ListAccessKeys", "iam:CreateAccessKey", "iam:UpdateAccessKey",
                        "iam:DeleteAccessKey", "iam:GetAccessKeyLastUsed", "iam:GetUser"],
             "Resource": "arn:aws:iam::*:user/${aws:username}"},
            {"Effect": "Allow", "Action": ["sts:GetCallerIdentity", "sts:GetSessionToken"],
             "Resource": "*"}]}),
    );
    emu.create_key(name)
}

struct Files {
    credentials: PathBuf,
    config: PathBuf,
}

fn write_files(emu: &Emulator, credentials: &str, config: &str) -> Files {
    let dir = emu.dir.path().join("aws");
    std::fs::create_dir_all(&dir).unwrap();
    let f = Files {
        credentials: dir.join("credentials"),
        config: dir.join("config"),
    };
    std::fs::write(&f.credentials, credentials).unwrap();
    std::fs::write(&f.config, config).unwrap();
    for p in [&f.credentials, &f.config] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    f
}

fn keyturn_files(emu: &Emulator, f: &Files) -> std::process::Command {
    let mut cmd = emu.keyturn_bare();
    cmd.env("AWS_SHARED_CREDENTIALS_FILE", &f.credentials)
        .env("AWS_CONFIG_FILE", &f.config);
    cmd
}

fn read(p: &PathBuf) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn mode(p: &PathBuf) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

const CONFIG: &str = "[default]\nregion = us-east-1\n\n[profile ci]\noutput = json\n";

fn credentials_with(k: &Creds, other: &Creds) -> String {
    format!(
        "# team laptop credentials\r\n\
         [default]\r\n\
         aws_access_key_id = {id}\r\n\
         aws_secret_access_key = {secret}\r\n\
         \r\n\
         ; the CI profile shares the default key\r\n\
         [ci]\r\n\
         region = eu-west-1\r\n\
         aws_access_key_id={id}\r\n\
         aws_secret_access_key={secret}   # pasted 2025-01-01\r\n\
         \r\n\
         [other]\r\n\
         aws_access_key_id = {oid}\r\n\
         aws_secret_access_key = {osecret}\r\n\
         [empty]\r\n\
         output = text\r\n\
         [last]\r\n\
         aws_access_key_id = {oid}\r\n\
         aws_secret_access_key = {osecret}",
        id = k.id,
        secret = k.secret,
        oid = other.id,
        osecret = other.secret
    )
}

#[test]
fn rotates_shared_key_and_keeps_every_other_byte() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let other = self_service_user(&emu, "other");
    let before = credentials_with(&dev, &other);
    let f = write_files(&emu, &before, CONFIG);
    let run = emu.run(keyturn_files(&emu, &f).args([
        "rotate",
        "--profile",
        "default",
        "--output",
        "json",
    ]));
    run.assert_code(0);
    let v = run.json();
    let new = Creds {
        id: v["AccessKeyId"].as_str().unwrap().into(),
        secret: v["SecretAccessKey"].as_str().unwrap().into(),
        token: None,
    };
    // Exactly the two profiles' key lines changed; everything else byte-identical.
    let expected = before
        .replacen(&dev.id, &new.id, 2)
        .replacen(&dev.secret, &new.secret, 2);
    assert_eq!(read(&f.credentials), expected);
    assert_eq!(read(&f.config), CONFIG, "config untouched");
    assert_eq!(mode(&f.credentials), 0o600);
    // Old key deleted (default), new key is the user's only key and authenticates.
    assert_eq!(emu.keys("dev"), [(new.id.clone(), "Active".to_string())]);
    assert_eq!(
        emu.whoami(&new).unwrap(),
        format!("arn:aws:iam::{ACCOUNT}:user/dev")
    );
    assert_eq!(emu.whoami(&dev), Err("InvalidClientTokenId".into()));
    let updated: Vec<&str> = v["ProfilesUpdated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Profile"].as_str().unwrap())
        .collect();
    assert_eq!(updated, ["default", "ci"]);
    run.assert_stderr("updated profile ci");
    assert_no_secret(&new.secret, &[("stderr", &run.stderr)]);
    // The other user is untouched.
    assert_eq!(
        emu.keys("other"),
        [(other.id.clone(), "Active".to_string())]
    );
}

#[test]
fn keep_old_inactive_deactivates_instead_of_deleting() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let f = write_files(
        &emu,
        &format!(
            "[dev]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            dev.id, dev.secret
        ),
        "",
    );
    let run = emu.run(keyturn_files(&emu, &f).args([
        "rotate",
        "--profile",
        "dev",
        "--keep-old-inactive",
    ]));
    run.assert_code(0);
    let new = run.env_creds();
    let mut want = vec![
        (dev.id.clone(), "Inactive".to_string()),
        (new.id.clone(), "Active".to_string()),
    ];
    want.sort();
    assert_eq!(emu.keys("dev"), want);
    assert_eq!(
        read(&f.credentials),
        format!(
            "[dev]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            new.id, new.secret
        )
    );
    assert!(emu.whoami(&new).is_ok());
}

#[test]
fn static_keys_in_config_file_and_session_token_removal() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let config = format!(
        "[profile dev]\nregion = us-east-1\naws_access_key_id = {id}\naws_secret_access_key = {s}\n",
        id = dev.id,
        s = dev.secret
    );
    // A stale copy of the same key with a session token: it must lose the token.
    let credentials = format!(
        "[stale]\naws_access_key_id = {id}\naws_secret_access_key = {s}\naws_session_token = FwoGZXIvYXdzEXAMPLE\nregion = us-west-2\n",
        id = dev.id,
        s = dev.secret
    );
    let f = write_files(&emu, &credentials, &config);
    let run = emu.run(keyturn_files(&emu, &f).args([
        "rotate",
        "--profile",
        "dev",
        "--deactivate-old-keys",
        "--delete-inactive-keys",
        "--yes",
    ]));
    run.assert_code(0);
    let new = run.env_creds();
    assert_eq!(
        read(&f.config),
        config
            .replace(&dev.id, &new.id)
            .replace(&dev.secret, &new.secret)
    );
    assert_eq!(
        read(&f.credentials),
        format!(
            "[stale]\naws_access_key_id = {}\naws_secret_access_key = {}\nregion = us-west-2\n",
            new.id, new.secret
        )
    );
    run.assert_stderr("removed its aws_session_token");
    assert_eq!(emu.keys("dev"), [(new.id.clone(), "Active".to_string())]);
}

#[test]
fn two_keys_other_key_needs_yes_and_only_it_goes() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let second = emu.create_key("dev");
    emu.backdate(&second.id, 40, Some(2));
    let creds = format!(
        "[dev]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        dev.id, dev.secret
    );
    let f = write_files(&emu, &creds, "");
    let before = emu.keys("dev");
    let run = emu.run(keyturn_files(&emu, &f).args(["rotate", "--profile", "dev"]));
    run.assert_code(2);
    for needle in [
        dev.id.as_str(),
        second.id.as_str(),
        "This profile uses",
        "--yes",
        "40 days old",
    ] {
        run.assert_stderr(needle);
    }
    assert_eq!(read(&f.credentials), creds);
    assert_eq!(emu.keys("dev"), before);

    let run = emu.run(keyturn_files(&emu, &f).args(["rotate", "--profile", "dev", "--yes"]));
    run.assert_code(0);
    let new = run.env_creds();
    // The other key was removed to make room, the old in-use key retired: one key left.
    assert_eq!(emu.keys("dev"), [(new.id.clone(), "Active".to_string())]);
}

#[test]
fn refusals_leave_file_and_iam_untouched() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let base = format!(
        "[base]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        dev.id, dev.secret
    );
    let cases: Vec<(&str, String, String, &str)> = vec![
        ("missing", base.clone(), String::new(), "available profiles: base"),
        (
            "temp",
            format!("{base}[temp]\naws_access_key_id = ASIAEXAMPLE\naws_secret_access_key = x\naws_session_token = t\n"),
            String::new(),
            "temporary credentials",
        ),
        (
            "sso",
            base.clone(),
            "[profile sso]\nsso_start_url = https://example.awsapps.com/start\nsso_account_id = 123456789012\n".into(),
            "IAM Identity Center",
        ),
        (
            "proc",
            base.clone(),
            "[profile proc]\ncredential_process = /bin/false\n".into(),
            "credential_process",
        ),
        (
            "deploy",
            base.clone(),
            format!("[profile deploy]\nrole_arn = arn:aws:iam::{ACCOUNT}:role/deploy\nsource_profile = base\n"),
            "--source-profile-ok",
        ),
        (
            "base",
            format!("{base}this line is broken\n"),
            String::new(),
            "credentials:4:",
        ),
        // The SDKs reject an indented line without '=' under a sub-property block.
        (
            "base",
            base.clone(),
            "[profile base]\ns3 =\n  not a sub property\n".into(),
            "Expected an '=' sign defining a sub-property",
        ),
        // Key ids and secrets are checked where read, naming the profile (a control
        // byte used to panic in the request signer).
        (
            "bad",
            format!("{base}[bad]\naws_access_key_id = AKIA\u{1}OSFODNN7EXAMPL\naws_secret_access_key = {}\n", dev.secret),
            String::new(),
            "profile 'bad': aws_access_key_id is not an access key id",
        ),
        (
            "short",
            format!("{base}[short]\naws_access_key_id = {}\naws_secret_access_key = tooshort\n", dev.id),
            String::new(),
            "profile 'short': aws_secret_access_key is not a secret access key",
        ),
        // Files keyturn reads are capped at 1 MiB.
        (
            "base",
            format!("{base}{}", "# padding padding padding padding\n".repeat(32 * 1024)),
            String::new(),
            "larger than 1 MiB",
        ),
    ];
    for (profile, credentials, config, needle) in cases {
        let f = write_files(&emu, &credentials, &config);
        emu.reset_stats();
        let run = emu.run(keyturn_files(&emu, &f).args(["rotate", "--profile", profile, "--yes"]));
        run.assert_code(2);
        assert!(
            run.stderr.contains(needle),
            "{profile}: missing {needle:?} in:\n{}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        assert_eq!(read(&f.credentials), credentials, "{profile}");
        assert_eq!(read(&f.config), config, "{profile}");
        assert_eq!(
            emu.keys("dev"),
            [(dev.id.clone(), "Active".to_string())],
            "{profile}"
        );
        assert!(emu.stats()["by_action"]
            .get("iam:CreateAccessKey")
            .is_none());
    }
}

#[test]
fn role_profile_rotates_source_profile_with_flag() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let credentials = format!(
        "[base]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        dev.id, dev.secret
    );
    let config = format!(
        "[profile deploy]\nrole_arn = arn:aws:iam::{ACCOUNT}:role/deploy\nsource_profile = base\nregion = us-east-1\n"
    );
    let f = write_files(&emu, &credentials, &config);
    let run = emu.run(keyturn_files(&emu, &f).args([
        "rotate",
        "--profile",
        "deploy",
        "--source-profile-ok",
    ]));
    run.assert_code(0);
    let new = run.env_creds();
    run.assert_stderr("rotating the key of 'base'");
    assert_eq!(
        read(&f.credentials),
        format!(
            "[base]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            new.id, new.secret
        )
    );
    assert_eq!(read(&f.config), config);
    assert_eq!(emu.keys("dev"), [(new.id, "Active".to_string())]);
}

#[test]
fn failure_before_the_write_deletes_new_key_and_leaves_file_identical() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let credentials = format!(
        "# keep me\n[dev]\naws_access_key_id = {}\naws_secret_access_key = {}",
        dev.id, dev.secret
    );
    let f = write_files(&emu, &credentials, CONFIG);
    emu.propagation_delay(3600.0);
    let run = emu.run(keyturn_files(&emu, &f).args([
        "rotate",
        "--profile",
        "dev",
        "--verify-timeout",
        "2",
    ]));
    run.assert_code(1);
    run.assert_stderr("did not verify");
    assert_eq!(read(&f.credentials), credentials);
    assert_eq!(emu.keys("dev"), [(dev.id.clone(), "Active".to_string())]);
    assert!(run.stdout.is_empty());
}

#[test]
fn a_held_file_lock_fails_the_rotation_safely() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let credentials = format!(
        "[dev]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        dev.id, dev.secret
    );
    let f = write_files(&emu, &credentials, "");
    // Another keyturn (here: this test) holds the credentials file lock.
    let lock =
        std::fs::File::create(f.credentials.with_file_name(".credentials.keyturn-lock")).unwrap();
    lock.lock().unwrap();
    let run = emu.run(keyturn_files(&emu, &f).args(["rotate", "--profile", "dev"]));
    run.assert_code(1);
    run.assert_stderr("another process holds");
    assert_eq!(read(&f.credentials), credentials);
    assert_eq!(emu.keys("dev"), [(dev.id.clone(), "Active".to_string())]);
    drop(lock);
}

#[test]
fn mfa_profile_needs_a_code_and_uses_a_session() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let credentials = format!(
        "[dev]\naws_access_key_id = {}\naws_secret_access_key = {}\nmfa_serial = arn:aws:iam::{ACCOUNT}:mfa/dev\n",
        dev.id, dev.secret
    );
    let f = write_files(&emu, &credentials, "");
    let run = emu.run(keyturn_files(&emu, &f).args(["rotate", "--profile", "dev"]));
    run.assert_code(2);
    run.assert_stderr("--mfa-code");
    assert_eq!(read(&f.credentials), credentials);
    emu.reset_stats();
    let run = emu.run(keyturn_files(&emu, &f).args([
        "rotate",
        "--profile",
        "dev",
        "--mfa-code",
        "123456",
    ]));
    run.assert_code(0);
    let new = run.env_creds();
    assert_eq!(emu.stats()["by_action"]["sts:GetSessionToken"], 1);
    assert!(read(&f.credentials).contains(&new.id));
    assert!(read(&f.credentials).contains("mfa_serial = arn:aws:iam::"));
    assert_eq!(emu.keys("dev"), [(new.id, "Active".to_string())]);
}

#[test]
fn dry_run_lists_profiles_and_changes_nothing() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let other = self_service_user(&emu, "other");
    let credentials = credentials_with(&dev, &other);
    let f = write_files(&emu, &credentials, CONFIG);
    let run = emu.run(keyturn_files(&emu, &f).args([
        "rotate",
        "--profile",
        "ci",
        "--dry-run",
        "--output",
        "json",
    ]));
    run.assert_code(0);
    let v = run.json();
    let steps: Vec<String> = v["Actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let step = a["Step"].as_str().unwrap();
            match a["Sink"].as_str() {
                Some(sink) => format!("{step} {sink}"),
                None => step.to_string(),
            }
        })
        .collect();
    assert_eq!(
        steps,
        [
            "create-key",
            "verify-new-key",
            "deliver profiles",
            "verify-delivery profiles",
            "deliver stdout",
            "verify-delivery stdout",
            "delete-old-key"
        ]
    );
    assert_eq!(v["ProfilesUpdated"].as_array().unwrap().len(), 2);
    assert_eq!(read(&f.credentials), credentials);
    assert_eq!(emu.keys("dev").len(), 1);
}

#[test]
fn continuation_lines_and_sub_properties_rotate_as_the_sdks_read_them() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    // Both used to be refused ("indented line does not follow a property with an
    // empty value"); the AWS SDKs read them.
    let credentials = format!(
        "[dev]\nnote = first line\n  -continued # part of the value\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        dev.id, dev.secret
    );
    let config = "[profile dev]\nregion = us-east-1\ns3 =\n  max_concurrent_requests = 5\n\n  addressing_style = path\n# end\n";
    let f = write_files(&emu, &credentials, config);
    let run =
        emu.run(keyturn_files(&emu, &f).args(["rotate", "--profile", "dev", "--output", "json"]));
    run.assert_code(0);
    let v = run.json();
    let (id, secret) = (
        v["AccessKeyId"].as_str().unwrap(),
        v["SecretAccessKey"].as_str().unwrap(),
    );
    assert_eq!(
        read(&f.credentials),
        credentials
            .replace(&dev.id, id)
            .replace(&dev.secret, secret)
    );
    assert_eq!(read(&f.config), config);
    assert_eq!(emu.keys("dev"), [(id.to_string(), "Active".to_string())]);
}

#[test]
fn a_symlinked_credentials_file_is_edited_at_its_target() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let credentials = format!(
        "[dev]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        dev.id, dev.secret
    );
    let f = write_files(&emu, "", CONFIG);
    let dotfiles = emu.dir.path().join("dotfiles");
    std::fs::create_dir_all(&dotfiles).unwrap();
    let target = dotfiles.join("aws-credentials");
    std::fs::write(&target, &credentials).unwrap();
    std::fs::remove_file(&f.credentials).unwrap();
    std::os::unix::fs::symlink("../dotfiles/aws-credentials", &f.credentials).unwrap();
    let run =
        emu.run(keyturn_files(&emu, &f).args(["rotate", "--profile", "dev", "--output", "json"]));
    run.assert_code(0);
    let v = run.json();
    let id = v["AccessKeyId"].as_str().unwrap();
    let secret = v["SecretAccessKey"].as_str().unwrap();
    // The link stays a link; its target holds the new key (it used to be replaced by
    // a regular file, leaving the target with the deleted key).
    assert!(std::fs::symlink_metadata(&f.credentials)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        credentials
            .replace(&dev.id, id)
            .replace(&dev.secret, secret)
    );
    assert_eq!(mode(&target), 0o600);
    assert_eq!(emu.keys("dev"), [(id.to_string(), "Active".to_string())]);
}

#[test]
fn a_directory_others_can_write_is_refused_before_any_change() {
    let emu = Emulator::start();
    let dev = self_service_user(&emu, "dev");
    let credentials = format!(
        "[dev]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        dev.id, dev.secret
    );
    let f = write_files(&emu, &credentials, CONFIG);
    let dir = f.credentials.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    emu.reset_stats();
    let run = emu.run(keyturn_files(&emu, &f).args(["rotate", "--profile", "dev", "--yes"]));
    run.assert_code(2);
    run.assert_stderr("can be written by group or others");
    assert_eq!(read(&f.credentials), credentials);
    assert!(emu.stats()["by_action"]
        .get("iam:CreateAccessKey")
        .is_none());
    assert_eq!(emu.keys("dev"), [(dev.id.clone(), "Active".to_string())]);
}

#[test]
fn root_keeps_the_owner_and_group_of_a_users_credentials_file() {
    use std::os::unix::fs::MetadataExt;
    let emu = Emulator::start();
    // The uid of files this process creates is its effective uid.
    if std::fs::metadata(emu.dir.path()).unwrap().uid() != 0 {
        eprintln!("not root: the owner-keeping path needs root; the refusal is a unit test");
        return;
    }
    let dev = self_service_user(&emu, "dev");
    let credentials = format!(
        "[dev]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        dev.id, dev.secret
    );
    let f = write_files(&emu, &credentials, CONFIG);
    std::os::unix::fs::chown(&f.credentials, Some(65534), Some(65534)).unwrap();
    let run = emu.run(keyturn_files(&emu, &f).args(["rotate", "--profile", "dev"]));
    run.assert_code(0);
    let m = std::fs::metadata(&f.credentials).unwrap();
    // It used to become root:root 0600, unreadable by its owner.
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o600));
    assert_ne!(read(&f.credentials), credentials);
}
