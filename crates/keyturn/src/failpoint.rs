//! Crash and fault injection for journal tests.
//!
//! Built with the `failpoints` cargo feature, `KEYTURN_FAILPOINT=<name>` makes the
//! process abort (no unwinding, no destructors, buffered output lost, like `kill -9`)
//! when execution reaches the named point. Some points take an argument
//! (`journal-full-after:3`) and inject a fault instead of aborting; several points can
//! be given, separated by commas. `<name>=wait:<FILE>` pauses at the point instead:
//! the process creates `<FILE>.reached` and waits until `<FILE>` exists, so a test can
//! act while a run is held at an exact point (no wall-clock window). Without the
//! feature, [`hit`] compiles to nothing and [`arg`] is always `None`. The names are
//! listed in `docs/journal.md`.

/// Abort here if `KEYTURN_FAILPOINT` names this point.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        for p in points() {
            if p == name {
                eprintln!("keyturn: failpoint {name} reached; aborting");
                std::process::abort();
            }
            if let Some(file) = p
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix("=wait:"))
            {
                pause(name, std::path::Path::new(file));
            }
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// The argument of `name:ARG` in `KEYTURN_FAILPOINT`, or `Some("")` for a bare `name`.
#[inline]
pub fn arg(name: &str) -> Option<String> {
    #[cfg(feature = "failpoints")]
    {
        points().into_iter().find_map(|p| {
            if p == name {
                return Some(String::new());
            }
            p.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(str::to_string)
        })
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}

#[cfg(feature = "failpoints")]
fn points() -> Vec<String> {
    std::env::var("KEYTURN_FAILPOINT")
        .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_default()
}

/// Hold the process at `name` until `file` exists (test synchronisation). Blocks the
/// calling thread on purpose: nothing of this process may move on meanwhile.
#[cfg(feature = "failpoints")]
fn pause(name: &str, file: &std::path::Path) {
    let mut reached = file.as_os_str().to_owned();
    reached.push(".reached");
    if let Err(e) = std::fs::write(&reached, std::process::id().to_string()) {
        eprintln!("keyturn: failpoint {name}: cannot create {reached:?}: {e}");
        std::process::abort();
    }
    eprintln!(
        "keyturn: failpoint {name} reached; waiting for {}",
        file.display()
    );
    while !file.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
