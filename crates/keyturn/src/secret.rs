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
    fn masks_all_but_last_four() {
        assert_eq!(mask_key_id("AKIAIOSFODNN7EXAMPLE"), "****************MPLE");
        assert_eq!(mask_key_id("ABC"), "ABC");
    }
}
