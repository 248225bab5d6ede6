//! Custody types for secret access keys.
//!
//! AWS shows a secret access key exactly once. From the moment keyturn receives it, the
//! value lives in [`SecretKey`], whose `Debug`/`Display` never print it and whose memory
//! is zeroed on drop. The only way out is [`SecretKey::expose`], which is called at the
//! few places that must hand the value on (stdout, a credentials file, a signer); a
//! `grep expose` over the crate lists every one of them.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// A secret access key (or any credential secret). Redacted in `Debug` and `Display`.
#[derive(Clone)]
pub struct SecretKey(SecretString);

impl SecretKey {
    /// Take custody of a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The plaintext value. Call sites are the audited exits of a secret.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Eq for SecretKey {}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

/// The whole text of a file that holds secrets (a shared credentials or config file):
/// zeroed on drop, redacted in `Debug`. Edits build a new buffer (never grow this one in
/// place), so no reallocation leaves an unwiped copy of the old text behind.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretText(zeroize::Zeroizing<String>);

impl SecretText {
    pub fn new(text: String) -> Self {
        Self(zeroize::Zeroizing::new(text))
    }

    /// Take custody of bytes read from a file. Not UTF-8: the bytes are wiped and the
    /// error is the 1-based line of the first invalid byte.
    pub fn from_utf8(bytes: Vec<u8>) -> std::result::Result<Self, usize> {
        match String::from_utf8(bytes) {
            Ok(s) => Ok(Self::new(s)),
            Err(e) => {
                let upto = e.utf8_error().valid_up_to();
                let mut bytes = zeroize::Zeroizing::new(e.into_bytes());
                let line = bytes[..upto].iter().filter(|b| **b == b'\n').count() + 1;
                zeroize::Zeroize::zeroize(&mut *bytes);
                Err(line)
            }
        }
    }

    /// The text. Call sites write it to the file it came from or parse it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretText(<redacted, {} bytes>)", self.0.len())
    }
}

/// Whether `id` has the shape of an AWS access key id: `AKIA` (long-term) or `ASIA`
/// (temporary) followed by 16 upper-case letters or digits.
pub fn is_access_key_id(id: &str) -> bool {
    id.len() == 20
        && (id.starts_with("AKIA") || id.starts_with("ASIA"))
        && id.as_bytes()[4..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// Whether `secret` has the shape of an AWS secret access key: 40 characters of the
/// base64 alphabet (`A-Z a-z 0-9 + /`).
pub fn is_secret_access_key(secret: &str) -> bool {
    secret.len() == 40
        && secret
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// Show an access key id with all but its last four characters masked
/// (`****************WXYZ`), the way AWS consoles and audit reports show them.
pub fn mask_key_id(id: &str) -> String {
    let n = id.chars().count();
    if n <= 4 {
        return id.to_string();
    }
    let tail: String = id.chars().skip(n - 4).collect();
    format!("{}{}", "*".repeat(n - 4), tail)
}

/// Mask every access key id (`AKIA…`/`ASIA…` followed by 16 upper-case letters or
/// digits) inside free text, e.g. journal step details shown by `history`.
pub fn mask_key_ids_in(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let is_key = i + 20 <= b.len()
            && (b[i..].starts_with(b"AKIA") || b[i..].starts_with(b"ASIA"))
            && b[i + 4..i + 20]
                .iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            && b.get(i + 20).is_none_or(|c| !c.is_ascii_alphanumeric());
        if is_key {
            out.push_str(&mask_key_id(&text[i..i + 20]));
            i += 20;
        } else {
            let ch = text[i..].chars().next().expect("char boundary");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = SecretKey::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        assert!(!format!("{s:?}").contains("wJalr"));
        assert!(!format!("{s}").contains("wJalr"));
        assert!(!format!("{:#?}", Some(&s)).contains("EXAMPLEKEY"));
        assert_eq!(s.expose(), "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
    }

    #[test]
    fn secret_text_is_redacted_and_names_the_bad_line() {
        let t = SecretText::new("[a]\naws_secret_access_key = wJalrXUtnFEMI".into());
        assert_eq!(format!("{t:?}"), "SecretText(<redacted, 41 bytes>)");
        assert!(!format!("{:#?}", Some(&t)).contains("wJalr"));
        assert_eq!(SecretText::from_utf8(b"a\nb\n\xff".to_vec()), Err(3));
        assert_eq!(
            SecretText::from_utf8(b"ok".to_vec()).unwrap().as_str(),
            "ok"
        );
    }

    #[test]
    fn key_id_and_secret_shapes() {
        assert!(is_access_key_id("AKIAIOSFODNN7EXAMPLE"));
        assert!(is_access_key_id("ASIA0123456789ABCDEF"));
        for bad in [
            "AKIAIOSFODNN7EXAMPL",
            "AKIAIOSFODNN7EXAMPLEX",
            "AKIAiosfodnn7EXAMPLE",
            "AKIA\u{1}OSFODNN7EXAMPL",
            "AIDAIOSFODNN7EXAMPLE",
            "",
        ] {
            assert!(!is_access_key_id(bad), "{bad:?}");
        }
        assert!(is_secret_access_key(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        ));
        for bad in [
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY1",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE\n",
            "wJalrXUtnFEMI-K7MDENG/bPxRfiCYEXAMPLEKEY",
        ] {
            assert!(!is_secret_access_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn masks_all_but_last_four() {
        assert_eq!(mask_key_id("AKIAIOSFODNN7EXAMPLE"), "****************MPLE");
        assert_eq!(mask_key_id("ABC"), "ABC");
    }

    #[test]
    fn masks_key_ids_in_text() {
        assert_eq!(
            mask_key_ids_in("created AKIAIOSFODNN7EXAMPLE, deleted ASIA0123456789ABCDEF."),
            "created ****************MPLE, deleted ****************CDEF."
        );
        assert_eq!(mask_key_ids_in("AKIA short"), "AKIA short");
        assert_eq!(
            mask_key_ids_in("ünï AKIAIOSFODNN7EXAMPLEX"),
            "ünï AKIAIOSFODNN7EXAMPLEX"
        );
    }
}
