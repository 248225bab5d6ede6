//! Local checks of the names a user types, made before any AWS call.
//!
//! AWS rejects a malformed user name or path only after the request was signed and
//! sent, and its answer for some of them (a control character) is an `Unknown` error
//! with no message. Checking here means bad input exits 2 with the rule in the message
//! and nothing sent. The rules are IAM's own (`UserName`, `Path` in the IAM API
//! reference), the AWS SDKs' profile-name rule, and the shape of keyturn's run ids.

use crate::error::{Error, Result};

/// IAM `UserName` (and role names): 1-64 of `A-Za-z0-9` and `+=,.@_-`.
pub const USER_NAME_RULE: &str =
    "an IAM user name is 1-64 characters of A-Z a-z 0-9 and + = , . @ _ -";
/// IAM `Path`: `/`, or `/` + printable ASCII without spaces + `/`, 1-512 characters.
pub const PATH_RULE: &str =
    "an IAM path is / or starts and ends with / (e.g. /bots/): 1-512 printable ASCII characters, no spaces";
/// The AWS SDKs' profile-name rule (a `[profile NAME]` with other characters is ignored).
pub const PROFILE_RULE: &str =
    "a profile name is 1 or more characters of A-Z a-z 0-9 and _ - / . % @ : +";
/// keyturn run ids (`keyturn history` lists them).
pub const RUN_ID_RULE: &str =
    "a run id looks like 20261121T231200.123Z-9f3a1c2b4d5e6f70 (see `keyturn history`)";

fn iam_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
}

/// True for a valid IAM user name.
pub fn is_user_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.chars().all(iam_name_char)
}

/// True for a valid IAM path.
pub fn is_path(s: &str) -> bool {
    (1..=512).contains(&s.len())
        && s.starts_with('/')
        && s.ends_with('/')
        && s.chars().all(|c| ('!'..='~').contains(&c))
}

fn profile_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-/.%@:+".contains(c)
}

/// True for a profile name the AWS SDKs read.
pub fn is_profile_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(profile_char)
}

/// True for something shaped like a keyturn run id: it starts with the UTC start time
/// (`YYYYMMDDTHHMMSS`, then `.mmm` since ids carry 64 random bits), then `Z-` and
/// lowercase hex. Older ids (`20261121T231200Z-9f3a1c`) are accepted too.
pub fn is_run_id(s: &str) -> bool {
    let Some((time, rand)) = s.split_once("Z-") else {
        return false;
    };
    let (secs, millis) = match time.split_once('.') {
        Some((s, m)) => (s, Some(m)),
        None => (time, None),
    };
    let digits = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_digit());
    let date_time = secs.len() == 15
        && digits(&secs[..8], 8)
        && secs.as_bytes()[8] == b'T'
        && digits(&secs[9..], 6);
    date_time
        && millis.is_none_or(|m| digits(m, 3))
        && (1..=32).contains(&rand.len())
        && rand
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What is wrong with a value, for the message: a control character, a length or the
/// first character the rule does not allow says more than the rule alone.
fn why(s: &str, max: Option<usize>, allowed: impl Fn(char) -> bool, shape: &str) -> String {
    if s.is_empty() {
        return "it is empty".into();
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return format!("it contains the control character U+{:04X}", c as u32);
    }
    if let Some(max) = max.filter(|m| s.len() > *m) {
        return format!(
            "it is {} characters long, at most {max} are allowed",
            s.len()
        );
    }
    match s.chars().find(|c| !allowed(*c)) {
        Some(' ') => "it contains a space".into(),
        Some(c) => format!("it contains {c:?}"),
        None => shape.into(),
    }
}

fn refuse(what: &str, s: &str, rule: &str, why: String) -> Error {
    // {:?} escapes control characters, so the message never carries them raw.
    Error::InvalidInput(format!(
        "{what} {s:?}: {rule}; {why}; nothing was sent to AWS"
    ))
}

/// Check an IAM user name; `what` names where it came from (`--user`, a config key).
pub fn user_name(what: &str, s: &str) -> Result<()> {
    if is_user_name(s) {
        Ok(())
    } else {
        Err(refuse(
            what,
            s,
            USER_NAME_RULE,
            why(s, Some(64), iam_name_char, "it does not match the rule"),
        ))
    }
}

/// Check an IAM path.
pub fn path(what: &str, s: &str) -> Result<()> {
    if is_path(s) {
        Ok(())
    } else {
        let printable = |c: char| ('!'..='~').contains(&c);
        let shape = "it does not start and end with /";
        Err(refuse(
            what,
            s,
            PATH_RULE,
            why(s, Some(512), printable, shape),
        ))
    }
}

/// Check a profile name.
pub fn profile_name(what: &str, s: &str) -> Result<()> {
    if is_profile_name(s) {
        Ok(())
    } else {
        Err(refuse(
            what,
            s,
            PROFILE_RULE,
            why(s, None, profile_char, "it does not match the rule"),
        ))
    }
}

/// Check a run id.
pub fn run_id(what: &str, s: &str) -> Result<()> {
    if is_run_id(s) {
        Ok(())
    } else {
        let id_char = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
        let shape = "it does not have that shape";
        Err(refuse(what, s, RUN_ID_RULE, why(s, None, id_char, shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_follow_iam() {
        for ok in ["a", "ci-bot", "A+b=c,d.e@f_g-h", &"x".repeat(64)] {
            assert!(is_user_name(ok), "{ok}");
        }
        for bad in [
            "",
            &"x".repeat(65),
            "ci bot",
            "ci/bot",
            "ci\u{7}bot",
            "bøt",
            "a:b",
        ] {
            assert!(!is_user_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn paths_follow_iam() {
        for ok in ["/", "/bots/", "/a/b/c/", &format!("/{}/", "x".repeat(510))] {
            assert!(is_path(ok), "{ok}");
        }
        for bad in [
            "",
            "bots/",
            "/bots",
            "/a b/",
            "/a\tb/",
            &format!("/{}/", "x".repeat(511)),
        ] {
            assert!(!is_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn profile_names_follow_the_sdks() {
        for ok in ["default", "dev", "my_profile-1", "a/b.c%d@e:f+g"] {
            assert!(is_profile_name(ok), "{ok}");
        }
        for bad in ["", "my profile", "a\nb", "a]b", "a=b", "prod\u{1b}"] {
            assert!(!is_profile_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn run_ids_have_keyturns_shape() {
        let fresh = crate::journal::new_run_id();
        assert!(is_run_id(&fresh), "{fresh}");
        for ok in [
            "20261121T231200.123Z-9f3a1c2b4d5e6f70",
            "20261121T231200Z-9f3a1c",
        ] {
            assert!(is_run_id(ok), "{ok}");
        }
        for bad in [
            "",
            "latest",
            "20261121T231200.123Z-",
            "20261121T231200.123Z-XYZ",
            "20261121 231200.123Z-9f3a",
            "20261121T231200.12Z-9f3a",
            "../../etc/passwd",
            "20261121T231200Z-9f3a\n",
        ] {
            assert!(!is_run_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn messages_state_the_rule_and_what_is_wrong_without_raw_control_characters() {
        let e = user_name("--user", "ci\u{7}bot").unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::GUARD);
        let m = e.to_string();
        assert!(m.contains(USER_NAME_RULE), "{m}");
        assert!(m.contains("control character U+0007"), "{m}");
        assert!(m.contains("nothing was sent to AWS"), "{m}");
        assert!(!m.contains('\u{7}'), "{m}");
        let m = user_name("--user", &"a".repeat(200))
            .unwrap_err()
            .to_string();
        assert!(m.contains("200 characters long, at most 64"), "{m}");
        let m = path("--user-path", "/a b/").unwrap_err().to_string();
        assert!(m.contains("contains a space"), "{m}");
        let m = profile_name("--profile", "a]b").unwrap_err().to_string();
        assert!(m.contains("contains ']'"), "{m}");
        let m = run_id("RUN_ID", "latest").unwrap_err().to_string();
        assert!(m.contains(RUN_ID_RULE), "{m}");
        assert!(m.contains("does not have that shape"), "{m}");
        let m = path("--user-path", "bots").unwrap_err().to_string();
        assert!(m.contains("does not start and end with /"), "{m}");
        let m = user_name("--user", "ci/bot").unwrap_err().to_string();
        assert!(m.contains("contains '/'"), "{m}");
    }
}
