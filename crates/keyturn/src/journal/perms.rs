//! OpenSSH-style checks on the journal's files before keyturn trusts them.
//!
//! The journal holds sealed secrets and tells `resume` which keys to delete, and its
//! key file unseals those secrets. A file another local user planted or can change (an
//! empty database keyturn would adopt, an all-zero key file) would let that user read
//! new secrets or steer a resume. So, as OpenSSH does for `~/.ssh`, the journal
//! directory and every journal file that exists must be owned by the current user or
//! root and not writable by group or others; the key file must not be readable by them
//! either. A violation is refused with exit 2, naming the file and the fix.

use crate::error::{Error, JournalIoKind, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What the checks look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    pub uid: u32,
    pub mode: u32,
    pub is_dir: bool,
}

impl Facts {
    pub fn of(m: &std::fs::Metadata) -> Self {
        Self {
            uid: m.uid(),
            mode: m.mode() & 0o7777,
            is_dir: m.is_dir(),
        }
    }
}

pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What is wrong with `path` for user `me`, if anything. `secret`: the file must also
/// be unreadable by group and others (the key file).
pub(crate) fn problem(path: &Path, f: Facts, me: u32, secret: bool) -> Option<String> {
    let p = path.display();
    let what = if f.is_dir { "directory" } else { "file" };
    if f.uid != me && f.uid != 0 {
        return Some(format!(
            "{what} {p} is owned by uid {}, not by you (uid {me}) or root, so another user may have planted or changed it; if it is yours, `chown {me} {p}`, otherwise move it aside",
            f.uid
        ));
    }
    if f.mode & 0o022 != 0 {
        if f.is_dir && f.mode & 0o1000 != 0 {
            return Some(format!(
                "directory {p} can be written by group or others (mode {:04o}, a shared directory), who could plant journal files in it; keep the journal in a directory only you can write (--journal DIR/journal.sqlite)",
                f.mode
            ));
        }
        return Some(format!(
            "{what} {p} can be written by group or others (mode {:04o}); `chmod go-w {p}`",
            f.mode
        ));
    }
    if secret && f.mode & 0o044 != 0 {
        return Some(format!(
            "key file {p} is readable by group or others (mode {:04o}) and it unseals the journal's secrets; `chmod go-rw {p}` (secrets sealed with it may have been read)",
            f.mode
        ));
    }
    None
}

pub(crate) fn refuse(problem: String) -> Error {
    Error::Journal(format!(
        "refusing to use the journal: {problem}. keyturn did not read or change it"
    ))
}

/// Check `path` if it exists (following symlinks); whether it exists.
pub(crate) fn check_existing(path: &Path, secret: bool) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) => match problem(path, Facts::of(&m), euid(), secret) {
            Some(p) => Err(refuse(p)),
            None => Ok(true),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(path, "checking", &e)),
    }
}

/// The directory a journal file lives in (`.` for a bare file name).
pub(crate) fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` with `suffix` appended to its file name (`-wal`, `-shm`, `.key`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The journal I/O class of an OS error.
pub(crate) fn io_kind(e: &std::io::Error) -> JournalIoKind {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EFBIG | libc::EDQUOT) => JournalIoKind::Full,
        Some(libc::EROFS) => JournalIoKind::ReadOnly,
        _ => JournalIoKind::Io,
    }
}

/// A journal I/O error for an OS error while `op` on `path`.
pub(crate) fn io_error(path: &Path, op: &str, e: &std::io::Error) -> Error {
    let mut msg = e.to_string();
    if io_kind(e) == JournalIoKind::Full {
        msg.push_str(&space_hint(&dir_of(path)));
    }
    Error::journal_io(path.display().to_string(), op, io_kind(e), msg)
}

/// Whether `dir` is on a read-only file system.
pub(crate) fn read_only_fs(dir: &Path) -> bool {
    statvfs(dir).is_some_and(|s| s.f_flag & libc::ST_RDONLY != 0)
}

fn statvfs(dir: &Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c is NUL-terminated; s is written by statvfs on success.
    let r = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    // SAFETY: initialized when statvfs returned 0.
    (r == 0).then(|| unsafe { s.assume_init() })
}

/// Why writing files in `dir` may fail for want of space: `" (no space left on ...)"`,
/// `" (file-size limit ...)"`, or empty.
pub(crate) fn space_hint(dir: &Path) -> String {
    if statvfs(dir).is_some_and(|s| s.f_bavail == 0) {
        return format!(" (no space left on the file system of {})", dir.display());
    }
    let mut lim = std::mem::MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: lim is written by getrlimit on success.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, lim.as_mut_ptr()) } == 0 {
        // SAFETY: initialized when getrlimit returned 0.
        let lim = unsafe { lim.assume_init() };
        if lim.rlim_cur != libc::RLIM_INFINITY {
            return format!(" (file-size limit of {} bytes, ulimit -f)", lim.rlim_cur);
        }
    }
    String::new()
}

/// Whether the current user may write `path` (`access(2)`, which honours read-only
/// mounts and, for root, ignores file modes).
pub(crate) fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is NUL-terminated.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Sets the process umask for its lifetime (the journal thread's open), so SQLite and
/// keyturn create journal files 0600 whatever the caller's umask. The umask is
/// process-wide: it only ever tightens modes, and it is restored at once.
pub(crate) struct UmaskGuard(libc::mode_t);

impl UmaskGuard {
    pub fn private() -> Self {
        // SAFETY: umask cannot fail.
        Self(unsafe { libc::umask(0o077) })
    }
}

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        // SAFETY: umask cannot fail.
        unsafe {
            libc::umask(self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(uid: u32, mode: u32, is_dir: bool) -> Facts {
        Facts { uid, mode, is_dir }
    }

    #[test]
    fn owner_must_be_me_or_root() {
        let p = Path::new("/j/journal.sqlite");
        assert_eq!(problem(p, f(1000, 0o600, false), 1000, false), None);
        assert_eq!(problem(p, f(0, 0o600, false), 1000, false), None);
        let planted = problem(p, f(65534, 0o600, false), 0, false).unwrap();
        assert!(planted.contains("owned by uid 65534"), "{planted}");
        assert!(planted.contains("`chown 0 /j/journal.sqlite`"), "{planted}");
        // Root-owned files are trusted (as OpenSSH does); other users' are not.
        assert!(problem(p, f(1001, 0o600, false), 1000, false).is_some());
    }

    #[test]
    fn group_or_other_writable_is_refused_with_the_fix() {
        let d = Path::new("/j");
        let m = problem(d, f(1000, 0o777, true), 1000, false).unwrap();
        assert!(m.contains("chmod go-w /j") && m.contains("0777"), "{m}");
        let m = problem(d, f(1000, 0o720, true), 1000, false).unwrap();
        assert!(m.contains("chmod go-w"), "{m}");
        let shared = problem(Path::new("/tmp"), f(0, 0o1777, true), 1000, false).unwrap();
        assert!(shared.contains("a shared directory") && !shared.contains("chmod"));
        assert_eq!(problem(d, f(1000, 0o755, true), 1000, false), None);
        let file = problem(Path::new("/j/x"), f(1000, 0o666, false), 1000, false).unwrap();
        assert!(file.contains("chmod go-w /j/x"), "{file}");
    }

    #[test]
    fn key_file_must_not_be_readable_by_others() {
        let k = Path::new("/j/journal.sqlite.key");
        assert_eq!(problem(k, f(1000, 0o600, false), 1000, true), None);
        assert_eq!(problem(k, f(1000, 0o400, false), 1000, true), None);
        let m = problem(k, f(1000, 0o640, false), 1000, true).unwrap();
        assert!(m.contains("readable by group or others") && m.contains("chmod go-rw"));
        // The database may be readable (its secrets are sealed), not the key.
        assert_eq!(
            problem(
                Path::new("/j/journal.sqlite"),
                f(1000, 0o644, false),
                1000,
                false
            ),
            None
        );
    }

    #[test]
    fn io_errors_are_classified() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert_eq!(io_kind(&e(libc::ENOSPC)), JournalIoKind::Full);
        assert_eq!(io_kind(&e(libc::EFBIG)), JournalIoKind::Full);
        assert_eq!(io_kind(&e(libc::EROFS)), JournalIoKind::ReadOnly);
        assert_eq!(io_kind(&e(libc::EIO)), JournalIoKind::Io);
        let err = io_error(Path::new("/j/k"), "writing the key file", &e(libc::ENOSPC));
        assert_eq!(err.exit_code(), crate::error::exit::FAILURE);
        assert!(err.to_string().contains("writing the key file failed"));
    }
}
