//! `keyturn config check` with the real binary: the committed example is valid, every
//! kind of error names its key and line and exits 2, and no AWS call is made (the AWS
//! endpoint is a local listener that must see no connection).

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A scratch HOME, and a listener standing in for AWS: any AWS call would connect.
struct Bed {
    dir: tempfile::TempDir,
    aws: TcpListener,
}

impl Bed {
    fn new() -> Self {
        let aws = TcpListener::bind("127.0.0.1:0").unwrap();
        aws.set_nonblocking(true).unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            aws,
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keyturn"));
        let home = self.dir.path();
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
            .env(
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            )
            .env("AWS_REGION", "us-east-1")
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://{}", self.aws.local_addr().unwrap()),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    fn check(&self, config: Option<&Path>) -> Out {
        let mut c = self.cmd();
        c.args(["config", "check"]);
        if let Some(p) = config {
            c.arg("--config").arg(p);
        }
        let o = c.output().unwrap();
        let out = Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        match self.aws.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("config check called AWS: {other:?}"),
        }
        out
    }

    fn check_text(&self, text: &str) -> Out {
        let p = self.file("keyturn.toml", text);
        self.check(Some(&p))
    }
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../keyturn.example.toml")
}

const SINK: &str = "[[sinks]]\nname = \"ci-aws\"\ntype = \"env-file\"\npath = \"/tmp/x.env\"\n";

#[test]
fn the_example_is_valid_and_described_in_words() {
    let bed = Bed::new();
    let o = bed.check(Some(&example()));
    assert_eq!(o.code, 0, "stderr:\n{}", o.stderr);
    for needle in [
        "keyturn.example.toml: valid",
        "  prod: the account of profile prod-admin",
        "  stage: account 111111111111 through role arn:aws:iam::111111111111:role/KeyturnRotator",
        "  org: every ACTIVE account of the Organization except 222222222222, through role KeyturnRotator in each",
        "sinks: ci-aws",
        "  1. bots (line ",
        "selects: IAM users named ci-* or deploy-bot, with a path starting /bots/, tagged keyturn:rotate=true, except users named ci-legacy-*, in accounts prod, org",
        "rotates: when the newest Active key is 46 days old (max_age_days 60 - rotate_before_days 14), or the user has no key",
        "retires the old key: once its consumers switched to the new key (IAM last-used dates), at the latest 7 days after the rotation",
        "deletes: keys keyturn deactivated, 7 days after; Inactive keys keyturn did not deactivate are never deleted",
        "delivers to: ci-aws",
        "runs: verify_timeout 60 s, concurrency 8, max_failures 5, canary 1",
    ] {
        assert!(o.stdout.contains(needle), "missing {needle:?} in:\n{}", o.stdout);
    }
    // The line number is the block's header.
    let text = std::fs::read_to_string(example()).unwrap();
    let header = text.lines().position(|l| l == "[[rotations]]").unwrap() + 1;
    assert!(
        o.stdout.contains(&format!("1. bots (line {header})")),
        "{}",
        o.stdout
    );
}

#[test]
fn the_config_env_var_and_the_default_location_work() {
    let bed = Bed::new();
    let p = bed.file(
        "k.toml",
        &format!("{SINK}[[rotations]]\nname = \"all\"\nsinks = [\"ci-aws\"]\n"),
    );
    let o = {
        let mut c = bed.cmd();
        c.args(["config", "check"]).env("KEYTURN_CONFIG", &p);
        c.output().unwrap()
    };
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("1. all (line 5)"));
    // No --config: ~/.config/keyturn/config.toml (XDG_CONFIG_HOME) ...
    let o = bed.check(None);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("cannot read settings file") && o.stderr.contains("pass --config FILE"),
        "{}",
        o.stderr
    );
    std::fs::create_dir_all(bed.dir.path().join("config/keyturn")).unwrap();
    std::fs::copy(&p, bed.dir.path().join("config/keyturn/config.toml")).unwrap();
    let o = bed.check(None);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("config/keyturn/config.toml: valid"),
        "{}",
        o.stdout
    );
}

/// Each kind of error: exit 2, nothing on stdout, the key and the line named.
#[test]
fn every_kind_of_error_names_its_key_and_line() {
    let bed = Bed::new();
    let rot = "[[rotations]]\nname = \"bots\"\nsinks = [\"ci-aws\"]\n";
    let org = "[[accounts]]\nname = \"org\"\norganization = { role_name = \"R\", include = [\"222222222222\"], exclude = [\"222222222222\"] }\n";
    let cases: Vec<(String, &str)> = vec![
        // Unknown keys (toml schema errors carry the line too).
        (format!("{SINK}[policy]\nmax_age = 5\n"), ":6: unknown field `max_age`"),
        (format!("{SINK}{rot}user = [\"x\"]\n"), ":8: unknown field `user`"),
        // Bad values.
        (format!("{SINK}[policy]\nretire = \"sometimes\"\n"), ":6: unknown variant `sometimes`"),
        (format!("{SINK}[policy]\nusage = \"guess\"\n"), ":6: unknown variant `guess`"),
        (format!("{SINK}[policy]\nmax_age_days = 0\n{rot}"), ":6: policy.max_age_days: 0 is out of range: expected 1-36500"),
        (format!("{SINK}[policy]\nverify_timeout = 3601\n{rot}"), ":6: policy.verify_timeout: 3601 is out of range: expected 1-3600"),
        (format!("{SINK}{rot}concurrency = 0\n"), ":8: rotations[0].concurrency: 0 is out of range"),
        (format!("{SINK}{rot}max_failures = 0\n"), ":8: rotations[0].max_failures: 0 is out of range"),
        (format!("{SINK}{rot}canary = -1\n"), ":8: rotations[0].canary: -1 is out of range"),
        (format!("{SINK}{rot}grace_days = 0\n"), ":8: rotations[0].grace_days: 0 is out of range"),
        (format!("{SINK}{rot}delete_after_days = -1\n"), ":8: rotations[0].delete_after_days: -1 is out of range"),
        // Relations between values.
        (format!("{SINK}[policy]\nmax_age_days = 30\nrotate_before_days = 30\n{rot}"), ":7: policy.rotate_before_days: rotate_before_days = 30 must be less than max_age_days = 30"),
        (format!("{SINK}{rot}grace_days = 20\n"), ":8: rotations[0].grace_days: grace_days = 20 is longer than rotate_before_days (default 14)"),
        // Globs, sinks, accounts, names.
        (format!("{SINK}{rot}users = [\"ci-[\"]\n"), ":8: rotations[0].users: \"ci-[\" is not a valid glob"),
        (format!("{SINK}[[rotations]]\nname = \"bots\"\nsinks = [\"vault\"]\n"), ":7: rotations[0].sinks: \"vault\" is not declared in [[sinks]] (declared: ci-aws)"),
        (format!("{SINK}[[rotations]]\nname = \"bots\"\n"), ":5: rotations[0].sinks: required"),
        (format!("{SINK}{rot}accounts = [\"prod\"]\n"), ":8: rotations[0].accounts: \"prod\" is not declared"),
        (format!("{SINK}{rot}users = [\"a\"]\n{rot}users = [\"b\"]\n"), ":10: rotations[1].name: \"bots\" is already the name of rotations[0]"),
        (format!("{SINK}{rot}{rot}"), ":9: rotations[1]: \"bots\" never applies"),
        // Overlapping values.
        (format!("{SINK}{org}{rot}"), ":7: accounts[0].organization.exclude: account 222222222222 is in both include and exclude"),
        (format!("{SINK}{rot}users = [\"deploy-bot\"]\nexclude = [\"deploy-*\"]\n"), ":8: rotations[0].users: user \"deploy-bot\" is excluded by exclude"),
        (format!("{SINK}[[accounts]]\nname = \"a\"\nprofile = \"p\"\nrole_arn = \"arn:aws:iam::111111111111:role/R\"\n{rot}"), ":5: accounts[0]: profile and role_arn exclude each other"),
    ];
    for (text, needle) in cases {
        let o = bed.check_text(&text);
        assert_eq!(
            o.code, 2,
            "{needle}: exit {}\n{}{}",
            o.code, o.stdout, o.stderr
        );
        assert!(o.stdout.is_empty(), "{needle}: stdout {}", o.stdout);
        let want = format!(
            "error: {}{needle}",
            bed.dir.path().join("keyturn.toml").display()
        );
        assert!(
            o.stderr.contains(&want),
            "want {want:?} in:\n{}\n(file:\n{text})",
            o.stderr
        );
        assert!(o.stderr.contains("nothing was called"), "{}", o.stderr);
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let bed = Bed::new();
    let o = bed.check_text(&format!(
        "{SINK}[policy]\nmax_age_days = 0\n[[rotations]]\nname = \"r\"\nsinks = [\"nope\"]\nusers = [\"[\"]\n"
    ));
    assert_eq!(o.code, 2);
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 3, "{}", o.stderr);
    assert!(errors[0].contains(":6: policy.max_age_days"));
    assert!(errors[1].contains(":9: rotations[0].sinks"));
    assert!(errors[2].contains(":10: rotations[0].users"));
    assert!(o.stderr.contains("3 errors in"), "{}", o.stderr);
}

#[test]
fn unreadable_or_broken_files_exit_2() {
    let bed = Bed::new();
    let o = bed.check(Some(&bed.dir.path().join("missing.toml")));
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("cannot read settings file"),
        "{}",
        o.stderr
    );
    let o = bed.check_text("[policy\nmax_age_days = 5\n");
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("keyturn.toml:1:"), "{}", o.stderr);
}

#[test]
fn other_commands_report_a_bad_fleet_section_with_its_line() {
    // The whole file is parsed by every command: a typo in [policy] is not ignored.
    let bed = Bed::new();
    let p = bed.file(
        "k.toml",
        "[rotate]\noutput = \"env\"\n[policy]\nmax_age = 5\n",
    );
    let o = bed
        .cmd()
        .args(["history", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("k.toml:4: unknown field `max_age`"), "{err}");
}

#[test]
fn help_lists_config_check() {
    let bed = Bed::new();
    let o = bed
        .cmd()
        .args(["config", "check", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("Parse and validate the settings file"),
        "{text}"
    );
    assert!(text.contains("--config <FILE>"), "{text}");
    assert!(text.contains("2  it is not"), "{text}");
}
