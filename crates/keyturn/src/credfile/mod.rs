//! The AWS shared credentials and config files: finding a profile's static key, and
//! writing a new key into every profile that holds the old one.
//!
//! Paths follow the SDKs: `AWS_SHARED_CREDENTIALS_FILE` (default
//! `~/.aws/credentials`, sections `[name]`) and `AWS_CONFIG_FILE` (default
//! `~/.aws/config`, sections `[profile name]` and `[default]`). Static keys may sit in
//! either file; the credentials file wins for a key set in both.
//!
//! Writes are atomic (temp file in the same directory, fsync, rename, fsync of the
//! directory), leave the file mode 0600, change only the bytes of replaced values (see
//! [`ini`]), and happen under an exclusive lock file so two keyturn processes never
//! interleave edits.

pub mod ini;

use crate::aws::NewKey;
use crate::engine::ProfileWriter;
use crate::error::{Error, Result};
use crate::report::ProfileUpdate;
use ini::IniDoc;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const KEY_ID: &str = "aws_access_key_id";
pub const SECRET: &str = "aws_secret_access_key";
pub const TOKEN: &str = "aws_session_token";

/// Which of the two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Credentials,
    Config,
}

/// One shared file as read (absent files are empty documents).
#[derive(Debug, Clone)]
pub struct SharedFile {
    pub kind: FileKind,
    pub path: PathBuf,
    pub exists: bool,
    pub doc: IniDoc,
}

impl SharedFile {
    /// Read and parse `path`. A missing file is empty; a bad line is an error naming it.
    pub fn load(kind: FileKind, path: &Path) -> Result<Self> {
        let (exists, text) = match std::fs::read(path) {
            Ok(b) => (
                true,
                String::from_utf8(b).map_err(|e| Error::Parse {
                    path: path.to_path_buf(),
                    line: line_of(&e),
                    message: "the file is not valid UTF-8".into(),
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (false, String::new()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let doc = IniDoc::parse(&text).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            line: e.line,
            message: format!(
                "{}; keyturn changes nothing in a file it cannot parse",
                e.message
            ),
        })?;
        Ok(Self {
            kind,
            path: path.to_path_buf(),
            exists,
            doc,
        })
    }

    /// The section name of `profile` in this file.
    pub fn section_of(&self, profile: &str) -> Option<String> {
        let names = self.doc.section_names();
        match self.kind {
            FileKind::Credentials => names.iter().find(|n| **n == profile).map(|s| s.to_string()),
            FileKind::Config => names
                .iter()
                .find(|n| config_profile_name(n) == Some(profile))
                .map(|s| s.to_string()),
        }
    }

    /// Profile names defined in this file.
    pub fn profiles(&self) -> Vec<String> {
        self.doc
            .section_names()
            .into_iter()
            .filter_map(|n| match self.kind {
                FileKind::Credentials => Some(n.to_string()),
                FileKind::Config => config_profile_name(n).map(str::to_string),
            })
            .collect()
    }
}

fn line_of(e: &std::string::FromUtf8Error) -> usize {
    let upto = e.utf8_error().valid_up_to();
    e.as_bytes()[..upto].iter().filter(|b| **b == b'\n').count() + 1
}

/// `[profile name]` -> `name`; `[default]` -> `default`; other sections -> None.
fn config_profile_name(section: &str) -> Option<&str> {
    if section == "default" {
        return Some("default");
    }
    let rest = section.strip_prefix("profile")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some(rest.trim())
}

/// Both shared files.
#[derive(Debug, Clone)]
pub struct SharedFiles {
    pub credentials: SharedFile,
    pub config: SharedFile,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Expand a leading `~/` like the SDKs do.
fn expand(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => home().join(rest),
        None => PathBuf::from(p),
    }
}

impl SharedFiles {
    /// The paths the SDKs use, honouring `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`.
    pub fn default_paths() -> (PathBuf, PathBuf) {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| expand(&v))
                .unwrap_or_else(|| home().join(default))
        };
        (
            var("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            var("AWS_CONFIG_FILE", ".aws/config"),
        )
    }

    pub fn load(credentials: &Path, config: &Path) -> Result<Self> {
        Ok(Self {
            credentials: SharedFile::load(FileKind::Credentials, credentials)?,
            config: SharedFile::load(FileKind::Config, config)?,
        })
    }

    pub fn files(&self) -> [&SharedFile; 2] {
        [&self.credentials, &self.config]
    }

    /// Every profile name, credentials file first, without duplicates.
    pub fn profile_names(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for f in self.files() {
            for p in f.profiles() {
                if !v.contains(&p) {
                    v.push(p);
                }
            }
        }
        v
    }

    /// A profile's setting: credentials file first, then config.
    pub fn get(&self, profile: &str, key: &str) -> Option<String> {
        self.files().iter().find_map(|f| {
            let section = f.section_of(profile)?;
            f.doc.get(&section, key).map(str::to_string)
        })
    }

    /// (file, profile) pairs whose `aws_access_key_id` is `key_id`.
    pub fn holders(&self, key_id: &str) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        for f in self.files() {
            for p in f.profiles() {
                let section = f.section_of(&p).expect("listed profile has a section");
                if f.doc.get(&section, KEY_ID) == Some(key_id) {
                    out.push((f.path.clone(), p));
                }
            }
        }
        out
    }
}

/// How a profile gets its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// Long-term keys keyturn can rotate.
    Static {
        key_id: String,
        secret: crate::secret::SecretKey,
    },
    /// Session credentials (`aws_session_token` or an `ASIA…` key).
    Temporary,
    /// IAM Identity Center (`sso_*` settings).
    Sso,
    /// `credential_process`.
    Process,
    /// `role_arn` with `source_profile`.
    AssumeRole {
        role_arn: String,
        source_profile: Option<String>,
    },
    /// Nothing usable.
    Empty,
}

impl SharedFiles {
    /// Classify `profile`. `Err` when it does not exist (listing the ones that do).
    pub fn source(&self, profile: &str) -> Result<ProfileSource> {
        if !self.profile_names().iter().any(|p| p == profile) {
            let names = self.profile_names();
            return Err(Error::InvalidInput(format!(
                "profile '{profile}' is not in {} or {}; available profiles: {}",
                self.credentials.path.display(),
                self.config.path.display(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
        let get = |k: &str| self.get(profile, k);
        if let Some(role_arn) = get("role_arn") {
            return Ok(ProfileSource::AssumeRole {
                role_arn,
                source_profile: get("source_profile"),
            });
        }
        if get("credential_process").is_some() {
            return Ok(ProfileSource::Process);
        }
        if get("sso_start_url").is_some()
            || get("sso_session").is_some()
            || get("sso_account_id").is_some()
        {
            return Ok(ProfileSource::Sso);
        }
        match (get(KEY_ID), get(SECRET)) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                if get(TOKEN).is_some() || id.starts_with("ASIA") {
                    Ok(ProfileSource::Temporary)
                } else {
                    Ok(ProfileSource::Static {
                        key_id: id,
                        secret: crate::secret::SecretKey::new(secret),
                    })
                }
            }
            _ => Ok(ProfileSource::Empty),
        }
    }
}

/// Writes a new key into both files, for every profile that holds the old key id.
#[derive(Debug, Clone)]
pub struct FileProfileWriter {
    pub credentials: PathBuf,
    pub config: PathBuf,
    /// How long to wait for another keyturn process's lock.
    pub lock_wait: Duration,
}

/// An exclusive advisory lock on `<dir>/.<name>.keyturn-lock`, released on drop. The
/// lock lives in its own file because the data file is replaced by rename.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    pub fn acquire(target: &Path, wait: Duration) -> Result<Self> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let lock_path = target.with_file_name(format!(".{name}.keyturn-lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening lock file {}", lock_path.display()), e))?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::Locked(format!(
                        "another process holds {} (waited {} s); try again when it is done",
                        lock_path.display(),
                        wait.as_secs()
                    )))
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io(format!("locking {}", lock_path.display()), e))
                }
            }
        }
    }
}

/// Write `bytes` to `path` atomically with mode 0600: temp file in the same directory,
/// fsync, rename over the target, fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.keyturn-tmp-{}", std::process::id()));
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let result = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(ctx("creating"), e))?;
        // The mode given to open() is filtered by the umask; set it explicitly.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(ctx("setting mode 0600 on"), e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io(ctx("writing"), e))?;
        f.sync_all().map_err(|e| Error::io(ctx("syncing"), e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl FileProfileWriter {
    pub fn from_env() -> Self {
        let (credentials, config) = SharedFiles::default_paths();
        Self {
            credentials,
            config,
            lock_wait: Duration::from_secs(5),
        }
    }
}

impl ProfileWriter for FileProfileWriter {
    fn write(&self, old_key_id: &str, new: &NewKey) -> Result<Vec<ProfileUpdate>> {
        // Lock both files (fixed order), then read them fresh: another process may have
        // changed them since the rotation started.
        let _locks = [
            FileLock::acquire(&self.credentials, self.lock_wait)?,
            FileLock::acquire(&self.config, self.lock_wait)?,
        ];
        crate::failpoint::hit("write-profiles:locked");
        let files = SharedFiles::load(&self.credentials, &self.config)?;
        let mut updates = Vec::new();
        let mut writes: Vec<(PathBuf, String, String)> = Vec::new(); // path, old, new
        for f in files.files() {
            let mut doc = f.doc.clone();
            for p in f.profiles() {
                let section = f.section_of(&p).expect("listed profile has a section");
                let holds_old = doc.get(&section, KEY_ID) == Some(old_key_id);
                let holds_new = doc.get(&section, KEY_ID) == Some(new.access_key_id.as_str());
                if !(holds_old || holds_new) {
                    continue;
                }
                doc.set(&section, KEY_ID, &new.access_key_id);
                if doc.set(&section, SECRET, new.secret.expose()) == 0 {
                    doc.insert_after(&section, KEY_ID, SECRET, new.secret.expose());
                }
                let removed_session_token = doc.remove(&section, TOKEN) > 0;
                updates.push(ProfileUpdate {
                    file: f.path.clone(),
                    profile: p,
                    removed_session_token,
                });
            }
            if doc.text() != f.doc.text() {
                writes.push((
                    f.path.clone(),
                    f.doc.text().to_string(),
                    doc.text().to_string(),
                ));
            }
        }
        if updates.is_empty() {
            return Err(Error::Runtime(format!(
                "no profile in {} or {} holds {old_key_id} any more; the new key {} was not written anywhere",
                self.credentials.display(),
                self.config.display(),
                new.access_key_id
            )));
        }
        // Write each changed file; if a later write fails, put earlier files back.
        for (i, (path, _, text)) in writes.iter().enumerate() {
            if let Err(e) = atomic_write(path, text.as_bytes()) {
                for (p, original, _) in writes[..i].iter().rev() {
                    let _ = atomic_write(p, original.as_bytes());
                }
                return Err(e);
            }
        }
        // Re-read: the profiles must now hold the new key.
        let check = SharedFiles::load(&self.credentials, &self.config)?;
        for u in &updates {
            let ok = check.get(&u.profile, KEY_ID).as_deref() == Some(new.access_key_id.as_str());
            if !ok {
                return Err(Error::Runtime(format!(
                    "re-reading {} did not show the new key in profile {}",
                    u.file.display(),
                    u.profile
                )));
            }
        }
        Ok(updates)
    }
}
