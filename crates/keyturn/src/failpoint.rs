//! Crash and fault injection for journal tests.
//!
//! Built with the `failpoints` cargo feature, `KEYTURN_FAILPOINT=<name>` makes the
//! process abort (no unwinding, no destructors, buffered output lost, like `kill -9`)
//! when execution reaches the named point. Some points take an argument
//! (`journal-full-after:3`) and inject a fault instead of aborting; several points can
//! be given, separated by commas. Without the feature, [`hit`] compiles to nothing and
//! [`arg`] is always `None`. The names are listed in `docs/journal.md`.

/// Abort here if `KEYTURN_FAILPOINT` names this point.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        if points().iter().any(|p| p == name) {
            eprintln!("keyturn: failpoint {name} reached; aborting");
            std::process::abort();
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
