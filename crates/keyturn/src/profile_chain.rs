//! Which static key a self-rotation (`rotate --profile NAME`) rotates.
//!
//! A profile may hold its own key, or assume a role with the key of its
//! `source_profile`, or hold nothing rotatable (temporary credentials, SSO,
//! `credential_process`). This module follows the chain and refuses (exit 2, nothing
//! changed) what has no key keyturn can rotate. It lives apart from
//! `commands::rotate` so that the rules are in one place for every command that
//! starts from a profile.

use crate::credfile::{ProfileSource, SharedFiles};
use crate::error::{Error, Result};
use crate::printer::Printer;
use crate::secret::SecretKey;

/// Longest `source_profile` chain followed (a longer one is a loop, or a mistake).
const MAX_CHAIN: usize = 5;

/// How far the chain may be followed without asking.
#[derive(Debug, Clone, Copy)]
pub struct ChainPolicy {
    /// A role profile may be followed to its `source_profile` (`--source-profile-ok`).
    pub source_profile_ok: bool,
    /// stdin and stderr are a terminal: the user may be asked instead.
    pub interactive: bool,
}

/// The profile whose static key is rotated.
#[derive(Debug)]
pub struct RotatableProfile {
    /// The profile that holds the key (`name` itself, or a `source_profile`).
    pub profile: String,
    pub key_id: String,
    pub secret: SecretKey,
}

/// Follow `name` to the profile whose static key is rotated (itself, or the
/// `source_profile` of a role profile when allowed). Refusals are exit 2.
pub fn rotatable_profile(
    files: &SharedFiles,
    name: &str,
    policy: ChainPolicy,
    printer: &Printer,
) -> Result<RotatableProfile> {
    let mut current = name.to_string();
    for _ in 0..MAX_CHAIN {
        match files.source(&current)? {
            ProfileSource::Static { key_id, secret } => {
                return Ok(RotatableProfile {
                    profile: current,
                    key_id,
                    secret,
                })
            }
            ProfileSource::AssumeRole {
                role_arn,
                source_profile: Some(source),
            } => {
                let msg = format!(
                    "profile '{current}' assumes role {role_arn}; its long-term key belongs to source_profile '{source}'"
                );
                let allowed = policy.source_profile_ok
                    || (policy.interactive
                        && printer.confirm(&format!("{msg}. Rotate the key of '{source}' instead?")));
                if !allowed {
                    return Err(Error::InvalidInput(format!(
                        "{msg}. Re-run with --source-profile-ok to rotate '{source}' instead (or rotate it with --profile {source}); nothing was changed"
                    )));
                }
                printer.status(&format!("keyturn: {msg}; rotating the key of '{source}'"));
                current = source;
            }
            ProfileSource::AssumeRole { role_arn, .. } => {
                return Err(Error::InvalidInput(format!(
                    "profile '{current}' assumes role {role_arn} without a source_profile (credential_source?); it has no key keyturn can rotate"
                )))
            }
            ProfileSource::Temporary => {
                return Err(Error::InvalidInput(format!(
                    "profile '{current}' holds temporary credentials (aws_session_token or an ASIA key); they expire on their own. Rotate the long-term key they were made from instead"
                )))
            }
            ProfileSource::Sso => {
                return Err(Error::InvalidInput(format!(
                    "profile '{current}' uses IAM Identity Center (SSO); it has no access key to rotate. Use `aws sso login` to refresh it"
                )))
            }
            ProfileSource::Process => {
                return Err(Error::InvalidInput(format!(
                    "profile '{current}' gets credentials from credential_process; rotate them in the tool that process calls"
                )))
            }
            ProfileSource::Empty => {
                return Err(Error::InvalidInput(format!(
                    "profile '{current}' has no aws_access_key_id/aws_secret_access_key pair to rotate"
                )))
            }
        }
    }
    Err(Error::InvalidInput(format!(
        "profile '{name}': source_profile chain is longer than {MAX_CHAIN} profiles (a loop?)"
    )))
}
