//! Who holds a lease: process id, host, and (on Linux) the process start time, so a
//! lease left by a process that is gone (or whose pid was reused) on this host can be
//! taken over at once, without waiting for it to expire (see [`super::lease`]).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    pub host: String,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22), if known.
    pub start: Option<u64>,
}

impl ProcessId {
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            host: hostname(),
            start: start_time(pid),
        }
    }

    /// Whether this process still runs. Unknown (another host) counts as alive: its
    /// lease is then only taken over once it expired.
    pub fn is_alive(&self) -> bool {
        if self.host != hostname() {
            return true;
        }
        // SAFETY: kill with signal 0 only checks that the pid exists.
        let r = unsafe { libc::kill(self.pid as libc::pid_t, 0) };
        let exists = r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !exists {
            return false;
        }
        match (self.start, start_time(self.pid)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return String::from("unknown");
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may contain spaces; fields after the closing ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_a_dead_pid_is_not() {
        let me = ProcessId::current();
        assert!(me.is_alive());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = ProcessId {
            pid,
            host: me.host.clone(),
            start: Some(1),
        };
        assert!(!gone.is_alive());
        let reused = ProcessId {
            start: me.start.map(|s| s + 1),
            ..me.clone()
        };
        if me.start.is_some() {
            assert!(
                !reused.is_alive(),
                "a different start time means a reused pid"
            );
        }
    }
}
