//! Where sinks get the secrets they need themselves (API tokens, passwords): never from
//! the settings file in clear, only from an environment variable (`*_env = "NAME"`) or
//! a file (`*_file = "PATH"`), read when the sink is built, before any AWS call.

use crate::error::{Error, Result};
use crate::secret::SecretKey;
use std::path::Path;

/// Token files are a few hundred bytes; refuse anything that is obviously not one.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Read a secret from `env` (a variable name) or `file`; exactly one must be given.
/// A trailing newline of a file is not part of the secret.
pub fn load(what: &str, env: Option<&str>, file: Option<&Path>) -> Result<SecretKey> {
    match (env, file) {
        (Some(_), Some(_)) => Err(Error::InvalidInput(format!(
            "{what}: give either the _env or the _file setting, not both"
        ))),
        (None, None) => Err(Error::InvalidInput(format!(
            "{what}: missing; set it through an environment variable (_env) or a file (_file), never in the settings file"
        ))),
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(SecretKey::new(v)),
            _ => Err(Error::InvalidInput(format!(
                "{what}: environment variable {var} is not set (or empty)"
            ))),
        },
        (None, Some(path)) => {
            let meta = std::fs::metadata(path)
                .map_err(|e| Error::InvalidInput(format!("{what}: cannot read {}: {e}", path.display())))?;
            if meta.len() > MAX_SECRET_FILE {
                return Err(Error::InvalidInput(format!(
                    "{what}: {} is {} bytes, too large for a secret",
                    path.display(),
                    meta.len()
                )));
            }
            let bytes = zeroize::Zeroizing::new(
                std::fs::read(path)
                    .map_err(|e| Error::InvalidInput(format!("{what}: cannot read {}: {e}", path.display())))?,
            );
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| Error::InvalidInput(format!("{what}: {} is not text", path.display())))?;
            let t = text.trim_end_matches(['\n', '\r']);
            if t.is_empty() {
                return Err(Error::InvalidInput(format!("{what}: {} is empty", path.display())));
            }
            Ok(SecretKey::new(t))
        }
    }
}
