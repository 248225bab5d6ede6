//! Sealing the new secret before it touches the journal.
//!
//! AES-256-GCM (RustCrypto `aes-gcm`), with the run id and access key id as associated
//! data so a sealed blob cannot be moved to another run. The 256-bit key is either
//! - a local key file (`<journal>.key`, 32 random bytes, created 0600 on first use), or
//! - a per-secret data key from AWS KMS `GenerateDataKey`; only the KMS-encrypted data
//!   key is stored, and `Decrypt` unwraps it on resume.
//!
//! Plaintext keys and secrets are zeroized after use.

use crate::error::{AwsError, Error, Result};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const SCHEME_LOCAL: &str = "aes256gcm-local-v1";
pub const SCHEME_KMS: &str = "aes256gcm-kms-v1";
const NONCE_LEN: usize = 12;

/// A sealed secret as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub scheme: String,
    /// nonce || ciphertext+tag
    pub blob: Vec<u8>,
    /// KMS-encrypted data key (KMS scheme only).
    pub wrapped_key: Option<Vec<u8>>,
}

/// Where the sealing key comes from.
pub enum Sealer {
    Local {
        key_file: PathBuf,
    },
    Kms {
        client: aws_sdk_kms::Client,
        key_id: String,
    },
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sealer::Local { key_file } => write!(f, "Sealer::Local({})", key_file.display()),
            Sealer::Kms { key_id, .. } => write!(f, "Sealer::Kms({key_id})"),
        }
    }
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(&mut b[..])
        .map_err(|e| Error::Runtime(format!("the OS random source failed: {e}")))?;
    Ok(b)
}

/// Read the local key file, creating it (0600, 32 random bytes) when absent.
fn local_key(path: &Path, create: bool) -> Result<Zeroizing<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(k) if k.len() == 32 => return Ok(Zeroizing::new(k)),
        Ok(_) => {
            return Err(Error::Journal(format!(
                "journal key file {} is not 32 bytes; keyturn will not use or replace it",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Journal(format!(
                "journal key file {} is missing, so the secret journaled for this run cannot be decrypted",
                path.display()
            )))
        }
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let key = random::<32>()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating journal key file {}", path.display()), e))?;
    f.write_all(&key[..])
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(Zeroizing::new(key.to_vec()))
}

fn encrypt(key: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let cipher =
        Aes256Gcm::new_from_slice(key).map_err(|_| Error::Runtime("bad AES key length".into()))?;
    let nonce_bytes = random::<NONCE_LEN>()?;
    let nonce = aes_gcm::Nonce::try_from(&nonce_bytes[..]).expect("12-byte nonce");
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::Runtime("AES-GCM encryption failed".into()))?;
    let mut blob = nonce_bytes.to_vec();
    blob.extend_from_slice(&ct);
    Ok(blob)
}

fn decrypt(key: &[u8], blob: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if blob.len() < NONCE_LEN + 16 {
        return Err(Error::Journal("sealed secret is truncated".into()));
    }
    let cipher =
        Aes256Gcm::new_from_slice(key).map_err(|_| Error::Runtime("bad AES key length".into()))?;
    let nonce = aes_gcm::Nonce::try_from(&blob[..NONCE_LEN]).expect("12-byte nonce");
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: &blob[NONCE_LEN..],
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| {
            Error::Journal(
                "the journaled secret does not decrypt with this key (wrong key file or KMS key?)"
                    .into(),
            )
        })
}

impl Sealer {
    /// The local key file beside a journal.
    pub fn local_for(journal: &Path) -> Self {
        let mut name = journal
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".key");
        Sealer::Local {
            key_file: journal.with_file_name(name),
        }
    }

    pub async fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed> {
        match self {
            Sealer::Local { key_file } => {
                let key = local_key(key_file, true)?;
                Ok(Sealed {
                    scheme: SCHEME_LOCAL.into(),
                    blob: encrypt(&key, plaintext, aad)?,
                    wrapped_key: None,
                })
            }
            Sealer::Kms { client, key_id } => {
                let out = client
                    .generate_data_key()
                    .key_id(key_id)
                    .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("kms:GenerateDataKey", &e))?;
                let plain = Zeroizing::new(
                    out.plaintext()
                        .ok_or_else(|| Error::Runtime("KMS returned no data key".into()))?
                        .as_ref()
                        .to_vec(),
                );
                let wrapped = out
                    .ciphertext_blob()
                    .ok_or_else(|| Error::Runtime("KMS returned no wrapped data key".into()))?
                    .as_ref()
                    .to_vec();
                Ok(Sealed {
                    scheme: SCHEME_KMS.into(),
                    blob: encrypt(&plain, plaintext, aad)?,
                    wrapped_key: Some(wrapped),
                })
            }
        }
    }

    pub async fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        match (self, sealed.scheme.as_str()) {
            (Sealer::Local { key_file }, SCHEME_LOCAL) => {
                decrypt(&local_key(key_file, false)?, &sealed.blob, aad)
            }
            (Sealer::Kms { client, .. }, SCHEME_KMS) => {
                let wrapped = sealed.wrapped_key.as_ref().ok_or_else(|| {
                    Error::Journal("KMS-sealed secret without its data key".into())
                })?;
                let out = client
                    .decrypt()
                    .ciphertext_blob(aws_smithy_types::Blob::new(wrapped.clone()))
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("kms:Decrypt", &e))?;
                let plain = Zeroizing::new(
                    out.plaintext()
                        .ok_or_else(|| Error::Runtime("KMS returned no plaintext".into()))?
                        .as_ref()
                        .to_vec(),
                );
                decrypt(&plain, &sealed.blob, aad)
            }
            (_, scheme) => Err(Error::Journal(format!(
                "the secret of this run was sealed with {scheme}; pass {} to open it",
                if scheme == SCHEME_KMS {
                    "--journal-kms-key"
                } else {
                    "no --journal-kms-key (the local key file)"
                }
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_seal_round_trips_and_binds_aad() {
        let dir = std::env::temp_dir().join(format!("keyturn-seal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Sealer::local_for(&dir.join("journal.sqlite"));
        let sealed = s
            .seal(b"wJalrXUtnFEMI/K7MDENG", b"run-1/AKIA1")
            .await
            .unwrap();
        assert!(!sealed.blob.windows(8).any(|w| w == b"wJalrXUt"));
        assert_eq!(
            &s.open(&sealed, b"run-1/AKIA1").await.unwrap()[..],
            b"wJalrXUtnFEMI/K7MDENG"
        );
        assert!(
            s.open(&sealed, b"run-2/AKIA1").await.is_err(),
            "aad is bound"
        );
        let Sealer::Local { key_file } = &s else {
            unreachable!()
        };
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
