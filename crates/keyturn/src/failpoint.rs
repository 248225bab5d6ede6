//! Crash injection for journal tests.
//!
//! Built with the `failpoints` cargo feature, `KEYTURN_FAILPOINT=<name>` makes the
//! process abort (no unwinding, no destructors, buffered output lost, like `kill -9`)
//! when execution reaches the named point. Without the feature, [`hit`] compiles to
//! nothing. The names are listed in `docs/journal.md`.

/// Abort here if `KEYTURN_FAILPOINT` names this point.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        if std::env::var("KEYTURN_FAILPOINT").is_ok_and(|v| v == name) {
            eprintln!("keyturn: failpoint {name} reached; aborting");
            std::process::abort();
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
