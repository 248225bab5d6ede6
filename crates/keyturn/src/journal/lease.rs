//! Per-(account, user) locks as leases, with the same rules in every backend.
//!
//! A lease names the run it is for, its holder (process id, host, process start time
//! and a random owner id unique to one opened journal), until when it holds, and a
//! record version number bumped by every change (backends use it for conditional
//! writes). The holder renews it while working (every journal write does, and
//! [`super::Journal::renew`] explicitly). The rules:
//!
//! - A lease is **live** while it has not expired and its holder is not known to be
//!   gone. Gone is only known on the holder's own host (its pid no longer runs, or runs
//!   with another start time): that is the fast local path, taken at once. A holder on
//!   another host, or a hung process, is only taken over once the lease expired (a
//!   Lambda that timed out is resumed by the next invocation on another machine).
//! - A new run never takes over a `running` or `incomplete` run's lease: the user must
//!   `keyturn resume` it first. It takes a lease that is not live and whose run ended
//!   (or never began).
//! - `take_over` (resume, rollback) takes the lease of a run that is not live, and of an
//!   `incomplete` run at once.
//! - Writes are fenced: a journal may write a run of (account, user) only while it
//!   holds that user's lease. A holder that was taken over gets
//!   [`crate::Error::Locked`] at its next write, before its next AWS call (every AWS
//!   mutation is preceded by a journaled intent).

use super::process::ProcessId;
use super::RunStatus;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The default lease: long enough for any step between two journal writes at the
/// default settings, short enough that an interrupted run is resumable soon.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);

/// Where journals read the time from (injected, so lease expiry is testable).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(OffsetDateTime::now_utc))
    }

    /// A clock that starts at the system time and moves only when told.
    pub fn manual() -> (Self, ManualClock) {
        let start = OffsetDateTime::now_utc();
        let offset = Arc::new(AtomicI64::new(0));
        let o = offset.clone();
        let clock = Self(Arc::new(move || {
            start + time::Duration::milliseconds(o.load(Ordering::SeqCst))
        }));
        (clock, ManualClock(offset))
    }

    pub fn now(&self) -> OffsetDateTime {
        (self.0)()
    }
}

/// The handle that moves a [`Clock::manual`].
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    #[serde(flatten)]
    pub process: ProcessId,
    /// Random per opened journal (64 bits, hex): tells two journals of one process, or
    /// a process and its pid's next owner, apart.
    #[serde(default)]
    pub owner: String,
}

impl Holder {
    /// This process, with a fresh owner id.
    pub fn current() -> Self {
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        Self {
            process: ProcessId::current(),
            owner: format!("{:016x}", u64::from_be_bytes(r)),
        }
    }

    /// Known to be gone: on this host, its process no longer runs.
    pub fn known_gone(&self) -> bool {
        !self.process.is_alive()
    }

    /// `pid 123 on host`.
    pub fn describe(&self) -> String {
        format!("pid {} on {}", self.process.pid, self.process.host)
    }

    /// Read a stored holder (a schema-1 SQLite row holds a bare process id).
    pub fn parse(json: &str) -> Self {
        serde_json::from_str(json).unwrap_or(Holder {
            process: ProcessId {
                pid: 0,
                host: "unknown".into(),
                start: None,
            },
            owner: String::new(),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialize holder")
    }
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub account: String,
    pub user: String,
    pub run_id: String,
    pub holder: Holder,
    pub since: OffsetDateTime,
    pub expires: OffsetDateTime,
    pub version: u64,
}

impl Lease {
    /// Held: not expired, and its holder not known to be gone.
    pub fn live(&self, now: OffsetDateTime) -> bool {
        self.expires > now && !self.holder.known_gone()
    }

    pub fn held_by(&self, me: &Holder) -> bool {
        !me.owner.is_empty() && self.holder.owner == me.owner
    }

    fn who(&self) -> String {
        format!(
            "{}, lease until {}",
            self.holder.describe(),
            super::rfc3339(self.expires)
        )
    }
}

/// Whether a new run may take `lease` (whose run has `status`, `None` if it never
/// began); `Err` says why not and what to do.
pub fn for_new_run(
    lease: &Lease,
    status: Option<RunStatus>,
    me: &Holder,
    now: OffsetDateTime,
) -> Result<(), String> {
    let (run, user, account) = (&lease.run_id, &lease.user, &lease.account);
    if status == Some(RunStatus::Incomplete) {
        return Err(format!(
            "run {run} of user {user} (account {account}) stopped with work left (incomplete); finish it first with `keyturn resume {run}`"
        ));
    }
    if lease.live(now) || lease.held_by(me) {
        return Err(format!(
            "user {user} (account {account}) is being rotated by run {run} ({}); wait for it to finish",
            lease.who()
        ));
    }
    if status == Some(RunStatus::Running) {
        let why = if lease.holder.known_gone() {
            format!("{} is gone", lease.holder.describe())
        } else {
            format!(
                "{} stopped renewing its lease at {}",
                lease.holder.describe(),
                super::rfc3339(lease.expires)
            )
        };
        return Err(format!(
            "run {run} of user {user} (account {account}) was interrupted ({why}); finish it first with `keyturn resume {run}`"
        ));
    }
    Ok(())
}

/// Whether `me` may take over run `run_id` (status `status`), given the lease of its
/// user (`None`: no lease) and the status of the lease's run when that is another run.
pub fn for_take_over(
    lease: Option<&Lease>,
    lease_run_status: Option<RunStatus>,
    run_id: &str,
    status: RunStatus,
    me: &Holder,
    now: OffsetDateTime,
) -> Result<(), String> {
    let Some(lease) = lease else {
        return Ok(());
    };
    if lease.run_id != run_id {
        // The user's lease belongs to another run: the same rules as for a new run.
        return for_new_run(lease, lease_run_status, me, now);
    }
    if lease.held_by(me) || status == RunStatus::Incomplete || !lease.live(now) {
        return Ok(());
    }
    Err(format!(
        "run {run_id} of user {} is still running ({}); wait for it, or for its lease to expire",
        lease.user,
        lease.who()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(owner: &str) -> Holder {
        Holder {
            process: ProcessId::current(),
            owner: owner.into(),
        }
    }

    fn gone() -> Holder {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        Holder {
            process: ProcessId {
                pid,
                host: ProcessId::current().host,
                start: Some(1),
            },
            owner: "dead".into(),
        }
    }

    fn elsewhere() -> Holder {
        Holder {
            process: ProcessId {
                pid: 1,
                host: "another-host.example".into(),
                start: None,
            },
            owner: "remote".into(),
        }
    }

    fn lease(h: Holder, now: OffsetDateTime, secs: i64) -> Lease {
        Lease {
            account: "123456789012".into(),
            user: "ci-bot".into(),
            run_id: "r1".into(),
            holder: h,
            since: now,
            expires: now + time::Duration::seconds(secs),
            version: 1,
        }
    }

    #[test]
    fn a_live_lease_blocks_new_runs_and_take_overs() {
        let now = OffsetDateTime::now_utc();
        let me = holder("me");
        for h in [holder("other"), elsewhere()] {
            let l = lease(h, now, 60);
            let e = for_new_run(&l, Some(RunStatus::Running), &me, now).unwrap_err();
            assert!(e.contains("is being rotated by run r1"), "{e}");
            let e = for_take_over(Some(&l), None, "r1", RunStatus::Running, &me, now).unwrap_err();
            assert!(e.contains("still running"), "{e}");
        }
    }

    #[test]
    fn a_gone_holder_on_this_host_is_not_live_at_once() {
        let now = OffsetDateTime::now_utc();
        let l = lease(gone(), now, 3600);
        assert!(!l.live(now));
        let me = holder("me");
        assert!(for_take_over(Some(&l), None, "r1", RunStatus::Running, &me, now).is_ok());
        let e = for_new_run(&l, Some(RunStatus::Running), &me, now).unwrap_err();
        assert!(
            e.contains("was interrupted") && e.contains("is gone"),
            "{e}"
        );
        assert!(e.contains("keyturn resume r1"), "{e}");
        // A finished run's stale lease is taken silently.
        assert!(for_new_run(&l, Some(RunStatus::Succeeded), &me, now).is_ok());
        assert!(for_new_run(&l, None, &me, now).is_ok());
    }

    #[test]
    fn a_holder_elsewhere_or_hung_is_taken_over_after_its_lease() {
        let now = OffsetDateTime::now_utc();
        let me = holder("me");
        for h in [elsewhere(), holder("hung")] {
            let l = lease(h, now, 60);
            let later = now + time::Duration::seconds(61);
            assert!(!l.live(later));
            assert!(for_take_over(Some(&l), None, "r1", RunStatus::Running, &me, later).is_ok());
            let e = for_new_run(&l, Some(RunStatus::Running), &me, later).unwrap_err();
            assert!(e.contains("stopped renewing its lease"), "{e}");
        }
    }

    #[test]
    fn incomplete_runs_block_new_runs_and_are_taken_over_at_once() {
        let now = OffsetDateTime::now_utc();
        let me = holder("me");
        let l = lease(holder("other"), now, 60);
        let e = for_new_run(&l, Some(RunStatus::Incomplete), &me, now).unwrap_err();
        assert!(
            e.contains("incomplete") && e.contains("keyturn resume r1"),
            "{e}"
        );
        assert!(for_take_over(Some(&l), None, "r1", RunStatus::Incomplete, &me, now).is_ok());
    }

    #[test]
    fn own_lease_and_another_runs_lease() {
        let now = OffsetDateTime::now_utc();
        let me = holder("me");
        let mine = lease(me.clone(), now, 60);
        assert!(for_take_over(Some(&mine), None, "r1", RunStatus::Running, &me, now).is_ok());
        // The user's lease is held by another live run: a take-over of r2 must wait.
        let other = lease(holder("x"), now, 60);
        let e = for_take_over(
            Some(&other),
            Some(RunStatus::Running),
            "r2",
            RunStatus::Running,
            &me,
            now,
        )
        .unwrap_err();
        assert!(e.contains("being rotated by run r1"), "{e}");
        assert!(for_take_over(None, None, "r2", RunStatus::Running, &me, now).is_ok());
        // An empty owner (schema-1 rows) is never "me".
        let legacy = Holder::parse(r#"{"pid":1,"host":"h","start":null}"#);
        assert_eq!(legacy.owner, "");
        assert!(!lease(legacy, now, 60).held_by(&Holder {
            owner: String::new(),
            ..me
        }));
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let (c, m) = Clock::manual();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        m.advance(Duration::from_secs(90));
        assert_eq!(c.now() - t0, time::Duration::seconds(90));
    }
}
