//! The MFA session of a self-rotation whose profile has `mfa_serial`.
//!
//! Policies that require MFA refuse IAM calls signed by the bare key, so `rotate` and
//! `resume` of such a profile sign IAM calls with an STS `GetSessionToken` session
//! made from the current key and the user's code. Both commands need it, so it is
//! here rather than in either of them.

use crate::aws::SdkKeyApi;
use crate::credfile::SharedFiles;
use crate::error::{Error, Result};
use crate::printer::Printer;

/// The MFA device of a self-rotation: the key's profile's `mfa_serial`, else the
/// named profile's (a role profile naming the device for its `source_profile`).
pub fn serial_of(files: &SharedFiles, key_profile: &str, named_profile: &str) -> Option<String> {
    files
        .get(key_profile, "mfa_serial")
        .or_else(|| files.get(named_profile, "mfa_serial"))
}

/// The MFA code: the one given, else asked on a terminal, else `missing()` (an
/// invalid-input error saying how to pass it).
pub fn code(
    given: Option<&str>,
    serial: &str,
    interactive: bool,
    printer: &Printer,
    missing: impl FnOnce() -> Error,
) -> Result<String> {
    match given {
        Some(c) => Ok(c.to_string()),
        None if interactive => Ok(printer.ask(&format!("MFA code for {serial}: "))),
        None => Err(missing()),
    }
}

/// `base`'s endpoint and region, signing with an MFA session made from `base`'s key.
pub async fn session_api(base: &SdkKeyApi, serial: &str, code: &str) -> Result<SdkKeyApi> {
    let session = base.session_with_mfa(serial, code.trim()).await?;
    Ok(base.with_session(&session))
}
