//! The AWS shared credentials and config files: finding a profile's static key, and
//! writing a new key into every profile that holds the old one.
//!
//! Paths follow the SDKs: `AWS_SHARED_CREDENTIALS_FILE` (default
//! `~/.aws/credentials`, sections `[name]`) and `AWS_CONFIG_FILE` (default
//! `~/.aws/config`, sections `[profile name]` and `[default]`). Static keys may sit in
//! either file; the credentials file wins for a key set in both. Which sections are
//! profiles follows the SDKs exactly (see [`ini`] for the line rules): profile names
//! are `[A-Za-z0-9_-/.%@:+]`, the config file's `[profile default]` hides its
//! `[default]`, other sections (`[sso-session x]`, `[services x]`, a config section
//! without the `profile` prefix, a credentials section with one) are not profiles.
//! keyturn reads at most [`MAX_FILE`] bytes of either file (files the SDK itself reads,
//! such as the config behind `--profile` in other commands, are the SDK's business).
//!
//! Writes are atomic (an unpredictable temp file created `O_EXCL|O_NOFOLLOW` in the
//! directory of the file, fsync, rename, fsync of the directory), edit the target of a
//! symlinked file (the link stays), keep the file's owner, group and mode (0600 or
//! stricter), refuse a file owned by another user (unless keyturn runs as root, which
//! keeps the owner) or a directory other users may write to, change only the bytes of
//! replaced values (see [`ini`]), and happen under an exclusive lock file so two
//! keyturn processes never interleave edits. File texts are held in
//! [`SecretText`](crate::secret::SecretText) (zeroed on drop, redacted in `Debug`).

pub mod ini;
#[cfg(test)]
mod sdk_suite;

use crate::aws::NewKey;
use crate::engine::ProfileWriter;
use crate::error::{Error, Result};
use crate::report::ProfileUpdate;
use crate::secret::{SecretKey, SecretText};
use ini::IniDoc;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const KEY_ID: &str = "aws_access_key_id";
pub const SECRET: &str = "aws_secret_access_key";
pub const TOKEN: &str = "aws_session_token";

/// The most keyturn reads of a credentials, config or settings file: real ones are a
/// few kilobytes; `/dev/zero` or a 300 MB file is refused instead of read whole.
pub const MAX_FILE: u64 = 1 << 20;

/// Read at most [`MAX_FILE`] bytes of `path` into a zeroizing buffer. `Ok(None)`:
/// the file does not exist. Larger input (including endless devices) is an
/// [`Error::InvalidInput`] (exit 2) naming the file.
pub fn read_limited(path: &Path, what: &str) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let hint = file.metadata().map(|m| m.len()).unwrap_or(0).min(MAX_FILE);
    // Room for one byte past the cap, so the buffer never grows (and never leaves an
    // unwiped copy behind) for a file of allowed size.
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(hint as usize + 1));
    file.take(MAX_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(Error::InvalidInput(format!(
            "{what} {} is larger than {} MiB; keyturn reads files up to that size and changed nothing",
            path.display(),
            MAX_FILE >> 20
        )));
    }
    Ok(Some(buf))
}

/// Which of the two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Credentials,
    Config,
}

/// One shared file as read (absent files are empty documents). `Debug` shows no
/// secret: the text is a [`SecretText`].
#[derive(Debug, Clone)]
pub struct SharedFile {
    pub kind: FileKind,
    pub path: PathBuf,
    pub exists: bool,
    pub doc: IniDoc,
}

/// The SDKs' identifier rule for profile and property names: `[A-Za-z0-9_-/.%@:+]*`.
pub fn is_identifier(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-/.%@:+".contains(c))
}

/// A section name split the SDKs' way: `profile foo` -> (Some("profile"), "foo").
fn split_section(name: &str) -> (Option<&str>, &str) {
    let name = name.trim_matches([' ', '\t']);
    match name.split_once([' ', '\t']) {
        Some((prefix, suffix)) => (Some(prefix.trim()), suffix.trim()),
        None => (None, name.trim()),
    }
}

impl SharedFile {
    /// Read and parse `path`. A missing file is empty; a bad line is an error naming it.
    pub fn load(kind: FileKind, path: &Path) -> Result<Self> {
        let what = match kind {
            FileKind::Credentials => "credentials file",
            FileKind::Config => "AWS config file",
        };
        let (exists, text) = match read_limited(path, what)? {
            Some(mut bytes) => {
                let text = SecretText::from_utf8(std::mem::take(&mut *bytes)).map_err(|line| {
                    Error::Parse {
                        path: path.to_path_buf(),
                        line,
                        message: "the file is not valid UTF-8".into(),
                    }
                })?;
                (true, text)
            }
            None => (false, SecretText::default()),
        };
        let doc = IniDoc::parse_owned(text).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            line: e.line,
            message: format!(
                "{}; the AWS SDKs reject this file too, and keyturn changes nothing in a file it cannot parse",
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

    /// The profile a section defines in this file, by the SDKs' rules.
    fn profile_of<'a>(&self, section: &'a str) -> Option<&'a str> {
        match (self.kind, split_section(section)) {
            (FileKind::Credentials, (None, name)) if is_identifier(name) => Some(name),
            (FileKind::Config, (None, "default")) => Some("default"),
            (FileKind::Config, (Some("profile"), name)) if is_identifier(name) => Some(name),
            _ => None,
        }
    }

    /// The section names that make up `profile` in this file (the SDKs merge them),
    /// or `None` when the file does not define it. In the config file,
    /// `[profile default]` hides `[default]`.
    pub fn section_of(&self, profile: &str) -> Option<Vec<String>> {
        let names = self.doc.section_names();
        let prefixed_default = self.kind == FileKind::Config
            && names
                .iter()
                .any(|n| split_section(n) == (Some("profile"), "default"));
        let v: Vec<String> = names
            .iter()
            .filter(|n| self.profile_of(n) == Some(profile))
            .filter(|n| !(prefixed_default && split_section(n) == (None, "default")))
            .map(|n| n.to_string())
            .collect();
        (!v.is_empty()).then_some(v)
    }

    /// Profile names defined in this file, in file order.
    pub fn profiles(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for n in self.doc.section_names() {
            if let Some(p) = self.profile_of(n) {
                if !v.iter().any(|x| x == p) {
                    v.push(p.to_string());
                }
            }
        }
        v
    }

    /// A property of `profile` in this file (the last definition wins).
    fn value(&self, profile: &str, key: &str) -> Option<std::borrow::Cow<'_, str>> {
        let sections = self.section_of(profile)?;
        self.doc.get(&sections, key)
    }
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

    /// A profile's setting: credentials file first, then config. Never the secret
    /// (that is [`SharedFiles::secret`], in the secret type): `None` for it.
    pub fn get(&self, profile: &str, key: &str) -> Option<String> {
        if key.eq_ignore_ascii_case(SECRET) {
            debug_assert!(false, "read secrets with SharedFiles::secret");
            return None;
        }
        self.files()
            .iter()
            .find_map(|f| f.value(profile, key).map(|v| v.into_owned()))
    }

    /// A profile's `aws_secret_access_key`, checked to have the shape of one (40
    /// characters of the base64 alphabet); `Err` (exit 2) naming the profile otherwise.
    pub fn secret(&self, profile: &str) -> Result<Option<SecretKey>> {
        let Some(v) = self.files().iter().find_map(|f| f.value(profile, SECRET)) else {
            return Ok(None);
        };
        if v.is_empty() {
            return Ok(None);
        }
        if !crate::secret::is_secret_access_key(&v) {
            return Err(Error::InvalidInput(format!(
                "profile '{profile}': {SECRET} is not a secret access key (40 characters of A-Z, a-z, 0-9, + and /); fix the profile (nothing was changed)"
            )));
        }
        Ok(Some(SecretKey::new(v.into_owned())))
    }

    /// (file, profile) pairs whose `aws_access_key_id` is `key_id`.
    pub fn holders(&self, key_id: &str) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        for f in self.files() {
            for p in f.profiles() {
                if f.value(&p, KEY_ID).as_deref() == Some(key_id) {
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
    /// Classify `profile`. `Err` when it does not exist (listing the ones that do), or
    /// when its static key id or secret does not have the shape of one (exit 2, naming
    /// the profile: such a value would otherwise reach an HTTP header).
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
        let has_secret = self
            .files()
            .iter()
            .find_map(|f| f.value(profile, SECRET))
            .is_some_and(|v| !v.is_empty());
        match get(KEY_ID) {
            Some(id) if !id.is_empty() && has_secret => {
                if get(TOKEN).is_some() || id.starts_with("ASIA") {
                    return Ok(ProfileSource::Temporary);
                }
                if !crate::secret::is_access_key_id(&id) {
                    return Err(Error::InvalidInput(format!(
                        "profile '{profile}': {KEY_ID} is not an access key id (AKIA followed by 16 upper-case letters or digits); fix the profile (nothing was changed)"
                    )));
                }
                let secret = self.secret(profile)?.expect("checked above");
                Ok(ProfileSource::Static { key_id: id, secret })
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

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The file a write to `path` must change: `path` itself, or the final target of a
/// symlink (a dotfiles repository links `~/.aws/credentials`), resolved link by link
/// so that a dangling link names the file to create.
pub fn write_target(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&p)
                    .map_err(|e| Error::io(format!("reading the symlink {}", p.display()), e))?;
                p = match p.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(Error::InvalidInput(format!(
        "{} is a chain of more than 40 symlinks (a loop?); nothing was changed",
        path.display()
    )))
}

fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Refuse (exit 2) to edit `target` (already resolved by [`write_target`]) when its
/// directory can be written by group or others (they could swap or pre-create files
/// in it) or is owned by someone else, or when the file belongs to another user and
/// keyturn is not root (replacing it would take it from its owner). Root edits keep
/// the owner. Returns the metadata of the existing file.
pub fn check_writable(target: &Path) -> Result<Option<std::fs::Metadata>> {
    check_writable_as(target, euid())
}

fn check_writable_as(target: &Path, me: u32) -> Result<Option<std::fs::Metadata>> {
    let dir = dir_of(target);
    match std::fs::metadata(dir) {
        Ok(m) => {
            if m.uid() != me && m.uid() != 0 {
                return Err(Error::InvalidInput(format!(
                    "directory {} is owned by uid {}, not by you (uid {me}) or root; keyturn does not edit {} there (nothing was changed)",
                    dir.display(),
                    m.uid(),
                    target.display()
                )));
            }
            if m.mode() & 0o022 != 0 {
                return Err(Error::InvalidInput(format!(
                    "directory {} can be written by group or others (mode {:04o}), who could swap {} or read a new secret; `chmod go-w {}` (nothing was changed)",
                    dir.display(),
                    m.mode() & 0o7777,
                    target.display(),
                    dir.display()
                )));
            }
        }
        // Created by the write.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("inspecting {}", dir.display()), e)),
    }
    match std::fs::symlink_metadata(target) {
        Ok(m) => {
            if !m.is_file() {
                return Err(Error::InvalidInput(format!(
                    "{} is not a regular file; nothing was changed",
                    target.display()
                )));
            }
            if m.uid() != me && me != 0 {
                return Err(Error::InvalidInput(format!(
                    "{} is owned by uid {}, not by you (uid {me}); keyturn does not replace another user's file (nothing was changed)",
                    target.display(),
                    m.uid()
                )));
            }
            Ok(Some(m))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("inspecting {}", target.display()), e)),
    }
}

/// An exclusive advisory lock on `<dir>/.<name>.keyturn-lock`, released on drop. The
/// lock lives in its own file because the data file is replaced by rename; it sits
/// next to the symlink target, and is owned like the file it guards.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    pub fn acquire(target: &Path, wait: Duration) -> Result<Self> {
        let target = write_target(target)?;
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
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening lock file {}", lock_path.display()), e))?;
        if let Ok(m) = std::fs::metadata(&target) {
            if euid() == 0 && m.uid() != 0 {
                let _ = std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()));
            }
        }
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

/// Write `bytes` to `path` atomically: resolve a symlink to its target (the link
/// stays), check it with [`check_writable`], write an unpredictable temp file created
/// `O_CREAT|O_EXCL|O_NOFOLLOW` mode 0600 in the target's directory (the `tempfile`
/// crate's naming), give it the old file's owner, group (when root) and mode (0600 or
/// stricter, still readable by the owner), fsync, rename over the target, fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = write_target(path)?;
    let dir = dir_of(&target).to_path_buf();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let existing = check_writable(&target)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.keyturn-"))
        .suffix(".tmp")
        .make_in(&dir, |p| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p)
        })
        .map_err(|e| Error::io(format!("creating a temporary file in {}", dir.display()), e))?;
    let tmp_path = tmp.path().to_path_buf();
    let ctx = |what: &str| format!("{what} {}", tmp_path.display());
    // The old mode, but never more than 0600 (and never unreadable by the owner).
    let mode = match existing.as_ref().map(|m| m.mode() & 0o600) {
        Some(m) if m & 0o400 != 0 => m,
        _ => 0o600,
    };
    // The mode given to open() is filtered by the umask; set it explicitly.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(ctx("setting the mode of"), e))?;
    if let Some(m) = &existing {
        if euid() == 0 && (m.uid() != 0 || m.gid() != 0) {
            std::os::unix::fs::fchown(tmp.as_file(), Some(m.uid()), Some(m.gid()))
                .map_err(|e| Error::io(ctx("keeping the owner of the file on"), e))?;
        }
    }
    tmp.as_file_mut()
        .write_all(bytes)
        .map_err(|e| Error::io(ctx("writing"), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(ctx("syncing"), e))?;
    // On failure the temp file is removed when `tmp` drops.
    tmp.persist(&target).map_err(|e| {
        Error::io(
            format!(
                "renaming {} to {}",
                e.file.path().display(),
                target.display()
            ),
            e.error,
        )
    })?;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
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

impl FileProfileWriter {
    /// Before any AWS call: refuse (exit 2) files keyturn could not replace safely
    /// (see [`check_writable`]), so that a refusal changes nothing.
    /// `holders`: the (file, profile) pairs that will be written.
    pub fn preflight(&self, holders: &[(PathBuf, String)]) -> Result<()> {
        for (p, _) in holders {
            let target = write_target(p)?;
            if target.exists() {
                check_writable(&target)?;
            }
        }
        Ok(())
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
        // path, old text, new text (both zeroed on drop)
        let mut writes: Vec<(PathBuf, &SecretText, IniDoc)> = Vec::new();
        let bad_value = |e: ini::ValueError| Error::Runtime(e.to_string());
        for f in files.files() {
            let mut doc = f.doc.clone();
            for p in f.profiles() {
                let section = f.section_of(&p).expect("listed profile has a section");
                let current = doc.get(&section, KEY_ID).map(|v| v.into_owned());
                let holds_old = current.as_deref() == Some(old_key_id);
                let holds_new = current.as_deref() == Some(new.access_key_id.as_str());
                if !(holds_old || holds_new) {
                    continue;
                }
                doc.set(&section, KEY_ID, &new.access_key_id)
                    .map_err(bad_value)?;
                if doc
                    .set(&section, SECRET, new.secret.expose())
                    .map_err(bad_value)?
                    == 0
                {
                    doc.insert_after(&section, KEY_ID, SECRET, new.secret.expose())
                        .map_err(bad_value)?;
                }
                let removed_session_token = doc.remove(&section, TOKEN) > 0;
                updates.push(ProfileUpdate {
                    file: f.path.clone(),
                    profile: p,
                    removed_session_token,
                });
            }
            if doc.text() != f.doc.text() {
                writes.push((f.path.clone(), f.doc.secret_text(), doc));
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
        for (i, (path, _, doc)) in writes.iter().enumerate() {
            if let Err(e) = atomic_write(path, doc.text().as_bytes()) {
                for (p, original, _) in writes[..i].iter().rev() {
                    let _ = atomic_write(p, original.as_str().as_bytes());
                }
                return Err(e);
            }
        }
        drop(writes);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const ID: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET_V: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_symlinked_file_is_edited_at_its_target_and_the_link_stays() {
        let d = dir();
        std::fs::create_dir(d.path().join("dotfiles")).unwrap();
        let target = d.path().join("dotfiles/credentials");
        std::fs::write(&target, "[a]\nk = 1\n").unwrap();
        let link = d.path().join("credentials");
        symlink("dotfiles/credentials", &link).unwrap();
        atomic_write(&link, b"[a]\nk = 2\n").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "[a]\nk = 2\n");
        // A dangling link names the file to create.
        let dangling = d.path().join("config");
        symlink("dotfiles/config", &dangling).unwrap();
        atomic_write(&dangling, b"x").unwrap();
        assert_eq!(
            std::fs::read(d.path().join("dotfiles/config")).unwrap(),
            b"x"
        );
        // The lock sits next to the target.
        let _l = FileLock::acquire(&link, Duration::from_secs(1)).unwrap();
        assert!(d.path().join("dotfiles/.credentials.keyturn-lock").exists());
    }

    #[test]
    fn a_planted_temp_file_or_symlink_is_never_written_through() {
        let d = dir();
        let path = d.path().join("credentials");
        std::fs::write(&path, "[a]\n").unwrap();
        // The name the old code used (pid is this test process), planted as a symlink
        // to a file the attacker can read, and as a plain file.
        let loot = d.path().join("loot");
        std::fs::write(&loot, "").unwrap();
        let old_name = d
            .path()
            .join(format!(".credentials.keyturn-tmp-{}", std::process::id()));
        symlink(&loot, &old_name).unwrap();
        atomic_write(&path, SECRET_V.as_bytes()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&loot).unwrap(),
            "",
            "nothing through the link"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), SECRET_V);
        assert!(std::fs::symlink_metadata(&old_name)
            .unwrap()
            .file_type()
            .is_symlink());
        // No temp file is left behind.
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.contains("keyturn-") && !n.contains("keyturn-tmp-") && !n.ends_with("-lock")
            })
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn mode_is_kept_when_stricter_and_capped_at_0600() {
        let d = dir();
        let path = d.path().join("credentials");
        for (before, after) in [
            (0o644, 0o600),
            (0o400, 0o400),
            (0o600, 0o600),
            (0o777, 0o600),
            (0o200, 0o600),
        ] {
            std::fs::write(&path, "x").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(before)).unwrap();
            atomic_write(&path, b"y").unwrap();
            let m = std::fs::metadata(&path).unwrap().mode() & 0o777;
            assert_eq!(m, after, "{before:o}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[test]
    fn directories_others_can_write_and_files_of_other_users_are_refused() {
        let d = dir();
        let path = d.path().join("credentials");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = atomic_write(&path, b"y").unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(
            e.to_string().contains("can be written by group or others"),
            "{e}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(atomic_write(&path, b"y").is_err(), "sticky does not help");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        // The file (and directory) belong to uid `owner`; another, unprivileged user
        // may not replace it.
        let owner = std::fs::metadata(&path).unwrap().uid();
        let e = check_writable_as(&path, owner + 4242).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("owned by uid"), "{e}");
        assert!(check_writable_as(&path, owner).is_ok());
    }

    #[test]
    fn root_keeps_the_owner_and_group_of_the_file() {
        if euid() != 0 {
            // Covered where the suite runs as root (CI and the dev container).
            return;
        }
        let d = dir();
        let path = d.path().join("credentials");
        std::fs::write(&path, "x").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        atomic_write(&path, b"y").unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        let _l = FileLock::acquire(&path, Duration::from_secs(1)).unwrap();
        let lock = std::fs::metadata(d.path().join(".credentials.keyturn-lock")).unwrap();
        assert_eq!(lock.uid(), 65534);
    }

    #[test]
    fn reads_are_capped_at_one_mebibyte() {
        let e = read_limited(Path::new("/dev/zero"), "settings file").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
        let d = dir();
        let path = d.path().join("credentials");
        let mut big = "[a]\n".to_string();
        big.push_str(&"# pad\n".repeat((MAX_FILE as usize) / 6 + 1));
        std::fs::write(&path, &big).unwrap();
        let e = SharedFile::load(FileKind::Credentials, &path).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        big.truncate(MAX_FILE as usize);
        std::fs::write(&path, &big).unwrap();
        assert!(SharedFile::load(FileKind::Credentials, &path).is_ok());
    }

    fn files(cred: &str, conf: &str) -> SharedFiles {
        let d = dir();
        let (c, f) = (d.path().join("c"), d.path().join("f"));
        std::fs::write(&c, cred).unwrap();
        std::fs::write(&f, conf).unwrap();
        SharedFiles::load(&c, &f).unwrap()
    }

    #[test]
    fn key_ids_and_secrets_are_checked_where_read_naming_the_profile() {
        let ok = files(
            &format!("[p]\naws_access_key_id = {ID}\naws_secret_access_key = {SECRET_V}\n"),
            "",
        );
        assert!(matches!(
            ok.source("p").unwrap(),
            ProfileSource::Static { .. }
        ));
        for (id, secret) in [
            ("AKIA\u{1}OSFODNN7EXAMPL", SECRET_V),
            ("AKIAIOSFODNN7EXAMPL", SECRET_V),
            ("akiaiosfodnn7example", SECRET_V),
            (ID, "short"),
            (ID, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE\u{7f}"),
        ] {
            let f = files(
                &format!("[bad]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
                "",
            );
            let e = f.source("bad").unwrap_err();
            assert_eq!(e.exit_code(), 2);
            let msg = e.to_string();
            assert!(msg.contains("profile 'bad'"), "{msg}");
            assert!(!msg.contains(secret) && !msg.contains("OSFODNN"), "{msg}");
        }
    }

    #[test]
    fn debug_of_every_type_holding_a_file_or_secret_shows_no_secret() {
        let text = format!("[p]\naws_access_key_id = {ID}\naws_secret_access_key = {SECRET_V}\n");
        let f = files(&text, "");
        let doc = f.credentials.doc.clone();
        let props = doc.properties("p");
        let source = f.source("p").unwrap();
        let secret = f.secret("p").unwrap().unwrap();
        let shown = [
            format!("{f:?}"),
            format!("{f:#?}"),
            format!("{:?}", f.credentials),
            format!("{doc:?}"),
            format!("{props:?}"),
            format!("{source:?}"),
            format!("{secret:?}"),
            format!("{:?}", doc.secret_text()),
            format!("{:?}", SecretText::new(text.clone())),
            format!("{:?}", doc.lines()),
        ];
        for s in shown {
            assert!(!s.contains(SECRET_V) && !s.contains("wJalr"), "{s}");
        }
    }
}
