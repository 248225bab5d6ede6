//! Sealing the new secret before it touches the journal.
//!
//! AES-256-GCM (RustCrypto `aes-gcm`), with the run id and access key id as associated
//! data so a sealed blob cannot be moved to another run. The 256-bit key is either
//! - a local key file (`<journal>.key`, 32 random bytes, created 0600 on first use,
//!   atomically: written to a private temporary file, then linked into place), or
//! - a per-secret data key from AWS KMS `GenerateDataKey`; only the KMS-encrypted data
//!   key is stored, and `Decrypt` unwraps it on resume.
//!
//! Keys are held as [`DataKey`]s (zeroized, never printed). A data key can be fetched
//! before `CreateAccessKey` (see `Journal::reserve_secret`), so that sealing the new
//! secret afterwards needs neither KMS nor new disk space.

use super::perms;
use crate::error::{AwsError, Error, Result};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const SCHEME_LOCAL: &str = "aes256gcm-local-v1";
pub const SCHEME_KMS: &str = "aes256gcm-kms-v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The size of a sealed blob for a plaintext of `plain_len` bytes.
pub const fn sealed_len(plain_len: usize) -> usize {
    NONCE_LEN + plain_len + TAG_LEN
}

/// A sealed secret as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub scheme: String,
    /// nonce || ciphertext+tag
    pub blob: Vec<u8>,
    /// KMS-encrypted data key (KMS scheme only).
    pub wrapped_key: Option<Vec<u8>>,
}

/// A 256-bit sealing key in memory (zeroized on drop, never printed), with the
/// KMS-wrapped copy that is stored beside what it seals.
#[derive(Clone)]
pub struct DataKey {
    key: Zeroizing<Vec<u8>>,
    scheme: &'static str,
    wrapped: Option<Vec<u8>>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({}, <redacted>)", self.scheme)
    }
}

impl DataKey {
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed> {
        Ok(Sealed {
            scheme: self.scheme.into(),
            blob: encrypt(&self.key, plaintext, aad)?,
            wrapped_key: self.wrapped.clone(),
        })
    }

    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        decrypt(&self.key, &sealed.blob, aad)
    }
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

/// Read the local key file (checked like every journal file: owned by you or root,
/// not readable or writable by others), creating it when absent and `create`.
/// Blocking file I/O: the SQLite journal calls this on its own thread.
pub fn local_key(path: &Path, create: bool) -> Result<DataKey> {
    let local = |key: Zeroizing<Vec<u8>>| DataKey {
        key,
        scheme: SCHEME_LOCAL,
        wrapped: None,
    };
    match std::fs::File::open(path) {
        Ok(mut f) => {
            let meta = f
                .metadata()
                .map_err(|e| perms::io_error(path, "reading the journal key file", &e))?;
            if let Some(p) = perms::problem(path, perms::Facts::of(&meta), perms::euid(), true) {
                return Err(perms::refuse(p));
            }
            let mut key = Zeroizing::new(Vec::with_capacity(33));
            Read::by_ref(&mut f)
                .take(33)
                .read_to_end(&mut key)
                .map_err(|e| perms::io_error(path, "reading the journal key file", &e))?;
            if key.len() != 32 {
                return Err(Error::Journal(format!(
                    "journal key file {} is not 32 bytes; keyturn will not use or replace it",
                    path.display()
                )));
            }
            Ok(local(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            create_local_key(path).map(local)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Journal(format!(
            "journal key file {} is missing, so the secret journaled for this run cannot be decrypted",
            path.display()
        ))),
        Err(e) => Err(perms::io_error(path, "reading the journal key file", &e)),
    }
}

/// Create the key file atomically: 32 random bytes in a private temporary file (0600,
/// `O_EXCL`), synced, then linked to `path` without replacing anything. A key file
/// that another keyturn created first wins; a failed write (disk full) leaves no
/// truncated key file behind.
fn create_local_key(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let dir = perms::dir_of(path);
    let op = "creating the journal key file";
    let key = random::<32>()?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".keyturn-key-")
        .tempfile_in(&dir)
        .map_err(|e| perms::io_error(path, op, &e))?;
    tmp.write_all(&key[..])
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| perms::io_error(path, op, &e))?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(Zeroizing::new(key.to_vec()))
        }
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            local_key(path, false).map(|k| k.key)
        }
        Err(e) => Err(perms::io_error(path, op, &e.error)),
    }
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
    if blob.len() < NONCE_LEN + TAG_LEN {
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
        Sealer::Local {
            key_file: perms::with_suffix(journal, ".key"),
        }
    }

    /// The local key file, if this sealer uses one.
    pub fn key_file(&self) -> Option<&Path> {
        match self {
            Sealer::Local { key_file } => Some(key_file),
            Sealer::Kms { .. } => None,
        }
    }

    /// A fresh KMS data key (`kms:GenerateDataKey`). KMS sealers only.
    pub async fn kms_data_key(&self) -> Result<DataKey> {
        let Sealer::Kms { client, key_id } = self else {
            return Err(Error::Runtime("not a KMS sealer".into()));
        };
        let out = client
            .generate_data_key()
            .key_id(key_id)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("kms:GenerateDataKey", &e))?;
        let key = Zeroizing::new(
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
        Ok(DataKey {
            key,
            scheme: SCHEME_KMS,
            wrapped: Some(wrapped),
        })
    }

    /// The data key a KMS-sealed secret was sealed with (`kms:Decrypt`).
    pub async fn kms_unwrap(&self, sealed: &Sealed) -> Result<DataKey> {
        let Sealer::Kms { client, .. } = self else {
            return Err(self.wrong_scheme(&sealed.scheme));
        };
        let wrapped = sealed
            .wrapped_key
            .as_ref()
            .ok_or_else(|| Error::Journal("KMS-sealed secret without its data key".into()))?;
        let out = client
            .decrypt()
            .ciphertext_blob(aws_smithy_types::Blob::new(wrapped.clone()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("kms:Decrypt", &e))?;
        Ok(DataKey {
            key: Zeroizing::new(
                out.plaintext()
                    .ok_or_else(|| Error::Runtime("KMS returned no plaintext".into()))?
                    .as_ref()
                    .to_vec(),
            ),
            scheme: SCHEME_KMS,
            wrapped: Some(wrapped.clone()),
        })
    }

    /// The error for a secret sealed with a scheme this sealer does not open.
    pub fn wrong_scheme(&self, scheme: &str) -> Error {
        Error::Journal(format!(
            "the secret of this run was sealed with {scheme}; pass {} to open it",
            if scheme == SCHEME_KMS {
                "--journal-kms-key"
            } else {
                "no --journal-kms-key (the local key file)"
            }
        ))
    }

    /// Seal with a fresh key (a local key file read here is blocking I/O).
    pub async fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed> {
        let key = match self {
            Sealer::Local { key_file } => local_key(key_file, true)?,
            Sealer::Kms { .. } => self.kms_data_key().await?,
        };
        key.seal(plaintext, aad)
    }

    /// Open a sealed secret (a local key file read here is blocking I/O).
    pub async fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let key = match (self, sealed.scheme.as_str()) {
            (Sealer::Local { key_file }, SCHEME_LOCAL) => local_key(key_file, false)?,
            (Sealer::Kms { .. }, SCHEME_KMS) => self.kms_unwrap(sealed).await?,
            (_, scheme) => return Err(self.wrong_scheme(scheme)),
        };
        key.open(sealed, aad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn local_seal_round_trips_and_binds_aad() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::local_for(&dir.path().join("journal.sqlite"));
        let sealed = s
            .seal(b"wJalrXUtnFEMI/K7MDENG", b"run-1/AKIA1")
            .await
            .unwrap();
        assert_eq!(sealed.blob.len(), sealed_len(21));
        assert!(!sealed.blob.windows(8).any(|w| w == b"wJalrXUt"));
        assert_eq!(
            &s.open(&sealed, b"run-1/AKIA1").await.unwrap()[..],
            b"wJalrXUtnFEMI/K7MDENG"
        );
        assert!(
            s.open(&sealed, b"run-2/AKIA1").await.is_err(),
            "aad is bound"
        );
        let mut tampered = sealed.clone();
        *tampered.blob.last_mut().unwrap() ^= 1;
        assert!(s.open(&tampered, b"run-1/AKIA1").await.is_err());
        let key_file = s.key_file().unwrap();
        assert_eq!(
            std::fs::metadata(key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("journal.sqlite.key")]);
    }

    #[test]
    fn the_key_file_is_created_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.key");
        let a = local_key(&path, true).unwrap();
        let b = local_key(&path, true).unwrap();
        assert_eq!(&a.key[..], &b.key[..]);
        assert_eq!(format!("{a:?}"), "DataKey(aes256gcm-local-v1, <redacted>)");
    }

    #[test]
    fn a_key_file_others_can_read_or_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.key");
        std::fs::write(&path, [0u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = local_key(&path, false).unwrap_err();
        assert!(e.to_string().contains("readable by group or others"), "{e}");
        assert_eq!(e.exit_code(), crate::error::exit::GUARD);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [0u8; 31]).unwrap();
        let e = local_key(&path, true).unwrap_err();
        assert!(e.to_string().contains("not 32 bytes"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap().len(), 31, "not replaced");
        let missing = local_key(&dir.path().join("none.key"), false).unwrap_err();
        assert!(missing.to_string().contains("is missing"));
    }
}
