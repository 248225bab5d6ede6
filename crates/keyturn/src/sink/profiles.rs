//! The built-in `profiles` sink of self-rotation: write the new key into every profile
//! of the shared credentials and config files that holds the key being replaced, with
//! the byte-preserving editor of [`crate::credfile`], and read the files back.

use super::{sink_error, Delivered, Handover, Holding, Sink, SinkStage, Written};
use crate::credfile::{FileProfileWriter, SharedFiles};
use crate::engine::ProfileWriter;
use crate::error::{Error, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesSpec {
    pub credentials: PathBuf,
    pub config: PathBuf,
}

pub struct ProfilesSink {
    writer: FileProfileWriter,
}

impl ProfilesSink {
    pub fn new(spec: &ProfilesSpec) -> Self {
        Self {
            writer: FileProfileWriter {
                credentials: spec.credentials.clone(),
                config: spec.config.clone(),
                lock_wait: Duration::from_secs(5),
            },
        }
    }

    fn old_key<'a>(&self, h: &'a Handover<'_>) -> Result<&'a str> {
        h.replaces
            .first()
            .map(String::as_str)
            .ok_or_else(|| Error::Runtime("self-rotation without the key it replaces".into()))
    }
}

#[async_trait]
impl Sink for ProfilesSink {
    fn name(&self) -> &str {
        super::PROFILES
    }

    fn kind(&self) -> &'static str {
        "profiles"
    }

    async fn prepare(&self) -> Result<Holding> {
        Ok(Holding::Unknown)
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        let old = self.old_key(h)?.to_string();
        let writer = self.writer.clone();
        let key = h.key.clone();
        let updated = tokio::task::spawn_blocking(move || writer.write(&old, &key))
            .await
            .map_err(|e| Error::Runtime(format!("profile writer: {e}")))?
            .map_err(|e| {
                // The writer puts earlier files back when a later one fails, so
                // nothing of the new key stays behind.
                sink_error(self, SinkStage::Deliver, Written::No, "", Some(e))
            })?;
        let names: Vec<String> = updated.iter().map(|u| u.to_string()).collect();
        Ok(Delivered {
            detail: format!("updated {}", names.join(", ")),
            profiles_updated: updated,
        })
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        let old = self.old_key(h)?;
        let files = SharedFiles::load(&self.writer.credentials, &self.writer.config)?;
        let holders_new = files.holders(&h.key.access_key_id);
        let holders_old = files.holders(old);
        if holders_new.is_empty() || !holders_old.is_empty() {
            return Err(sink_error(
                self,
                SinkStage::Verify,
                Written::Maybe,
                format!(
                    "re-reading {} and {}: {} profile(s) hold the new key, {} still hold the old key",
                    self.writer.credentials.display(),
                    self.writer.config.display(),
                    holders_new.len(),
                    holders_old.len()
                ),
                None,
            ));
        }
        Ok(format!(
            "re-read: {} profile(s) hold the new key, none the old one",
            holders_new.len()
        ))
    }
}
