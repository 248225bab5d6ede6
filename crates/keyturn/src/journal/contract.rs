//! The journal contract: one suite every [`Journal`] backend must pass, so SQLite and
//! DynamoDB behave the same for the engine (records, locks, leases, take-over,
//! incomplete runs, conflicts). Run it with [`run_all`] over an [`Opener`] that opens
//! journals on one shared store, each as a new holder (like another process or host).
//!
//! Built for the library's unit tests and, with the `journal-contract` feature, for
//! integration tests (the DynamoDB backend against the emulator). It panics on the
//! first broken promise, naming it.

use super::lease::{Clock, ManualClock};
use super::{Journal, RemoteMeta, RunMeta, RunStatus, StepPhase};
use crate::aws::NewKey;
use crate::error::Error;
use crate::plan::{Mode, Plan, PlanOptions, Step};
use crate::secret::SecretKey;
use std::future::Future;
use std::time::Duration;
use time::OffsetDateTime;

/// The lease duration journals under test must use.
pub const LEASE: Duration = Duration::from_secs(60);

pub const ACCOUNT: &str = "123456789012";

/// Opens journals on one shared store.
pub trait Opener {
    type J: Journal;
    /// A new journal (a new holder) reading time from `clock`, with lease [`LEASE`].
    fn open(&self, clock: Clock) -> impl Future<Output = Self::J>;
}

/// A run of `user` with a three-step plan.
pub fn meta(run_id: &str, user: &str, started_at: OffsetDateTime) -> RunMeta {
    RunMeta {
        run_id: run_id.into(),
        account: ACCOUNT.into(),
        user_name: user.into(),
        mode: Mode::User,
        options: PlanOptions::default(),
        plan: Plan {
            user_name: user.into(),
            steps: vec![
                Step::CreateKey {
                    reason: "new key".into(),
                },
                Step::VerifyNewKey {
                    reason: "prove it".into(),
                },
                Step::DeactivateOldKey {
                    access_key_id: "AKIAOLDOLDOLDOLDOLD1".into(),
                    reason: "retire".into(),
                },
            ],
        },
        inventory: vec![],
        sinks: vec![],
        output: "env".into(),
        remote: RemoteMeta::default(),
        verify_timeout_secs: 60,
        profile: None,
        mfa_serial: None,
        started_at,
    }
}

pub fn new_key(user: &str) -> NewKey {
    NewKey {
        user_name: user.into(),
        access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret: SecretKey::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        create_date: time::macros::datetime!(2026-11-21 23:12:00 UTC),
    }
}

fn locked<T: std::fmt::Debug>(what: &str, r: crate::Result<T>, needle: &str) -> String {
    match r {
        Err(Error::Locked(m)) => {
            assert!(m.contains(needle), "{what}: {m:?} lacks {needle:?}");
            m
        }
        other => panic!("{what}: expected Error::Locked, got {other:?}"),
    }
}

/// Every case, each on its own users (a random prefix keeps repeated runs on one
/// store apart).
pub async fn run_all<O: Opener>(o: &O) {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).expect("random");
    let p = format!("c{:08x}", u32::from_be_bytes(r));
    let (clock, time) = Clock::manual();
    records(o, &clock, &time, &p).await;
    locks(o, &clock, &p).await;
    leases(o, &clock, &time, &p).await;
    incomplete(o, &clock, &p).await;
    conflicts(o, &clock, &p).await;
    take_over_of_an_ended_run(o, &clock, &p).await;
    reservation(o, &clock, &p).await;
}

/// begin / intent / done / key_created / secret / delivered / note / finish / runs / run.
async fn records<O: Opener>(o: &O, clock: &Clock, time: &ManualClock, p: &str) {
    let j = o.open(clock.clone()).await;
    let user = format!("{p}-alice");
    let r1 = format!("{p}-r1");
    let m = meta(&r1, &user, clock.now());
    let steps = &m.plan.steps;
    j.lock(ACCOUNT, &user, &r1).await.expect("lock");
    j.begin(&m).await.expect("begin");
    let rec = j.run(&r1).await.unwrap().expect("the run is recorded");
    assert_eq!(rec.meta, m, "meta round-trips");
    assert_eq!(rec.status, RunStatus::Running);
    assert_eq!(rec.progress().next, 0);
    j.intent(&r1, 0, &steps[0]).await.expect("intent");
    let p0 = j.run(&r1).await.unwrap().unwrap().progress();
    assert!(p0.next == 0 && p0.next_started, "{p0:?}");
    let key = new_key(&user);
    j.key_created(&r1, 0, &key).await.expect("key_created");
    let rec = j.run(&r1).await.unwrap().unwrap();
    assert_eq!(rec.new_key_id.as_deref(), Some(key.access_key_id.as_str()));
    assert_eq!(rec.new_key_created, Some(key.create_date));
    assert!(rec.holds_secret);
    assert_eq!(
        j.secret(&r1)
            .await
            .unwrap()
            .expect("sealed secret")
            .expose(),
        key.secret.expose()
    );
    j.intent(&r1, 1, &steps[1]).await.unwrap();
    j.done(&r1, 1, &steps[1], true, "verified").await.unwrap();
    j.intent(&r1, 2, &steps[2]).await.unwrap();
    j.done(&r1, 2, &steps[2], false, "AccessDenied")
        .await
        .unwrap();
    j.note(&r1, "delete-new-key", false, "throttled")
        .await
        .unwrap();
    let rec = j.run(&r1).await.unwrap().unwrap();
    let pr = rec.progress();
    assert_eq!(pr.done, vec![true, true, false]);
    assert!(pr.failed && pr.next == 2, "{pr:?}");
    let phases: Vec<(&str, StepPhase)> = rec
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.phase))
        .collect();
    assert_eq!(
        phases,
        [
            ("create-key", StepPhase::Intent),
            ("create-key", StepPhase::Done),
            ("verify-new-key", StepPhase::Intent),
            ("verify-new-key", StepPhase::Done),
            ("deactivate-old-key", StepPhase::Intent),
            ("deactivate-old-key", StepPhase::Failed),
            ("delete-new-key", StepPhase::Note),
        ]
    );
    assert!(rec.steps.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(rec.steps[5].detail, "AccessDenied");
    assert_eq!(rec.steps[6].detail, "FAILED: throttled");
    assert_eq!(rec.steps[6].index, None);
    assert_eq!(
        rec.steps[4].access_key_id.as_deref(),
        Some("AKIAOLDOLDOLDOLDOLD1")
    );
    j.delivered(&r1).await.unwrap();
    assert!(
        j.secret(&r1).await.unwrap().is_none(),
        "erased once delivered"
    );
    assert!(!j.run(&r1).await.unwrap().unwrap().holds_secret);
    j.finish(
        &r1,
        RunStatus::FailedAfterDelivery,
        Some("deactivate failed"),
    )
    .await
    .unwrap();
    let rec = j.run(&r1).await.unwrap().unwrap();
    assert_eq!(rec.status, RunStatus::FailedAfterDelivery);
    assert_eq!(rec.error.as_deref(), Some("deactivate failed"));
    assert!(rec.finished_at.is_some());
    assert!(j.lease(ACCOUNT, &user).await.unwrap().is_none(), "released");

    // A later run of the same user: runs are listed newest first.
    time.advance(Duration::from_secs(1));
    let r2 = format!("{p}-r2");
    j.lock(ACCOUNT, &user, &r2)
        .await
        .expect("lock after finish");
    j.begin(&meta(&r2, &user, clock.now())).await.unwrap();
    j.finish(&r2, RunStatus::Succeeded, None).await.unwrap();
    let ids: Vec<String> = j
        .runs(Some(&user))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.meta.run_id)
        .collect();
    assert_eq!(ids, [r2.clone(), r1.clone()]);
    let all = j.runs(None).await.unwrap();
    assert!(all.iter().any(|r| r.meta.run_id == r1) && all.iter().any(|r| r.meta.run_id == r2));
    assert!(j.run(&format!("{p}-none")).await.unwrap().is_none());
    assert!(j
        .runs(Some(&format!("{p}-nobody")))
        .await
        .unwrap()
        .is_empty());
}

/// One run per (account, user); unlock releases only the holder's own lock.
async fn locks<O: Opener>(o: &O, clock: &Clock, p: &str) {
    let a = o.open(clock.clone()).await;
    let b = o.open(clock.clone()).await;
    let user = format!("{p}-bob");
    let (ra, rb, rc) = (format!("{p}-la"), format!("{p}-lb"), format!("{p}-lc"));
    a.lock(ACCOUNT, &user, &ra).await.expect("lock");
    locked(
        "a second run of the same user",
        a.lock(ACCOUNT, &user, &rb).await,
        &format!("is being rotated by run {ra}"),
    );
    locked(
        "another holder",
        b.lock(ACCOUNT, &user, &rc).await,
        "is being rotated",
    );
    b.lock(ACCOUNT, &format!("{p}-carol"), &rc)
        .await
        .expect("another user is independent");
    b.lock("210987654321", &user, &format!("{p}-ld"))
        .await
        .expect("the same user in another account is independent");
    b.unlock(ACCOUNT, &user, &ra).await.unwrap();
    let l = a.lease(ACCOUNT, &user).await.unwrap().expect("still held");
    assert_eq!(l.run_id, ra, "unlock by a non-holder changes nothing");
    a.unlock(ACCOUNT, &user, &ra).await.unwrap();
    assert!(a.lease(ACCOUNT, &user).await.unwrap().is_none());
    b.lock(ACCOUNT, &user, &rc).await.expect("free again");
}

/// Heartbeats, expiry, take-over after the lease, and fencing of the old holder.
async fn leases<O: Opener>(o: &O, clock: &Clock, time: &ManualClock, p: &str) {
    let a = o.open(clock.clone()).await;
    let b = o.open(clock.clone()).await;
    let c = o.open(clock.clone()).await;
    let user = format!("{p}-dave");
    let r = format!("{p}-lease");
    let m = meta(&r, &user, clock.now());
    a.lock(ACCOUNT, &user, &r).await.unwrap();
    a.begin(&m).await.unwrap();
    a.intent(&r, 0, &m.plan.steps[0]).await.unwrap();
    let l1 = b.lease(ACCOUNT, &user).await.unwrap().expect("a lease");
    assert_eq!(l1.run_id, r);
    assert!(
        about(l1.expires, clock.now() + LEASE),
        "a write renews for a full lease: {} vs {}",
        l1.expires,
        clock.now() + LEASE
    );
    locked(
        "take-over of a live lease",
        b.take_over(&r).await,
        "still running",
    );
    time.advance(LEASE / 2);
    a.renew(ACCOUNT, &user, &r).await.expect("renew");
    let l2 = b.lease(ACCOUNT, &user).await.unwrap().unwrap();
    assert!(l2.version > l1.version, "renewal bumps the version");
    assert!(about(l2.expires, clock.now() + LEASE), "{l2:?}");
    time.advance(LEASE / 2 + Duration::from_secs(1));
    locked(
        "still live after a renewal",
        b.take_over(&r).await,
        "still running",
    );
    // a stops heartbeating (hung, or its host is gone).
    time.advance(LEASE);
    locked(
        "a new run must resume the interrupted one first",
        c.lock(ACCOUNT, &user, &format!("{p}-new")).await,
        &format!("keyturn resume {r}"),
    );
    b.take_over(&r).await.expect("taken over after the lease");
    let l3 = b.lease(ACCOUNT, &user).await.unwrap().unwrap();
    assert!(l3.version > l2.version && l3.holder != l2.holder);
    let steps_before = b.run(&r).await.unwrap().unwrap().steps.len();
    // The old holder is fenced: every write fails as Locked and records nothing.
    locked(
        "intent by the old holder",
        a.intent(&r, 1, &m.plan.steps[1]).await,
        "no longer holds the lease",
    );
    locked(
        "renew by the old holder",
        a.renew(ACCOUNT, &user, &r).await,
        "no longer holds",
    );
    locked(
        "key_created by the old holder",
        a.key_created(&r, 0, &new_key(&user)).await,
        "no longer holds",
    );
    locked(
        "note by the old holder",
        a.note(&r, "x", true, "y").await,
        "no longer holds",
    );
    locked(
        "finish by the old holder",
        a.finish(&r, RunStatus::Failed, None).await,
        "no longer holds",
    );
    let rec = b.run(&r).await.unwrap().unwrap();
    assert_eq!(rec.status, RunStatus::Running);
    assert_eq!(rec.steps.len(), steps_before, "nothing recorded by a");
    assert_eq!(
        rec.steps.last().unwrap().step,
        "take-over",
        "the take-over is recorded"
    );
    b.intent(&r, 1, &m.plan.steps[1]).await.unwrap();
    b.finish(&r, RunStatus::Succeeded, None).await.unwrap();
    assert!(b.lease(ACCOUNT, &user).await.unwrap().is_none());
}

/// `incomplete` keeps the lock, blocks new runs, and is taken over at once.
async fn incomplete<O: Opener>(o: &O, clock: &Clock, p: &str) {
    let a = o.open(clock.clone()).await;
    let b = o.open(clock.clone()).await;
    let user = format!("{p}-erin");
    let r = format!("{p}-inc");
    a.lock(ACCOUNT, &user, &r).await.unwrap();
    a.begin(&meta(&r, &user, clock.now())).await.unwrap();
    a.finish(&r, RunStatus::Incomplete, Some("the vault sink failed"))
        .await
        .unwrap();
    let rec = b.run(&r).await.unwrap().unwrap();
    assert_eq!(rec.status, RunStatus::Incomplete);
    assert_eq!(
        b.lease(ACCOUNT, &user).await.unwrap().map(|l| l.run_id),
        Some(r.clone()),
        "an incomplete run keeps its user's lock"
    );
    let m = locked(
        "a new run of the user",
        b.lock(ACCOUNT, &user, &format!("{p}-inc2")).await,
        "incomplete",
    );
    assert!(m.contains(&format!("keyturn resume {r}")), "{m}");
    b.take_over(&r)
        .await
        .expect("incomplete runs are taken over at once");
    b.finish(&r, RunStatus::Succeeded, None).await.unwrap();
    b.lock(ACCOUNT, &user, &format!("{p}-inc3"))
        .await
        .expect("free after the resume");
}

/// Conflicting writes are `Locked`, never corruption.
async fn conflicts<O: Opener>(o: &O, clock: &Clock, p: &str) {
    let a = o.open(clock.clone()).await;
    let b = o.open(clock.clone()).await;
    let user = format!("{p}-frank");
    let r = format!("{p}-dup");
    let m = meta(&r, &user, clock.now());
    a.lock(ACCOUNT, &user, &r).await.unwrap();
    a.begin(&m).await.unwrap();
    locked("the same run begun twice", a.begin(&m).await, "");
    let other = format!("{p}-grace");
    locked(
        "begin without holding the lock",
        b.begin(&meta(&format!("{p}-nolock"), &other, clock.now()))
            .await,
        "",
    );
    // Two holders race for one lease: exactly one wins, the other is Locked.
    let racer = format!("{p}-heidi");
    let (rx_id, ry_id) = (format!("{p}-rx"), format!("{p}-ry"));
    let (x, y) = (
        a.lock(ACCOUNT, &racer, &rx_id),
        b.lock(ACCOUNT, &racer, &ry_id),
    );
    let (rx, ry) = futures_join(x, y).await;
    match (&rx, &ry) {
        (Ok(()), Err(Error::Locked(_))) | (Err(Error::Locked(_)), Ok(())) => {}
        other => panic!("a lock race must have exactly one winner: {other:?}"),
    }
}

/// Rollback: a run that ended is written again by whoever holds its user's lock.
async fn take_over_of_an_ended_run<O: Opener>(o: &O, clock: &Clock, p: &str) {
    let a = o.open(clock.clone()).await;
    let b = o.open(clock.clone()).await;
    let user = format!("{p}-ivan");
    let r = format!("{p}-done");
    a.lock(ACCOUNT, &user, &r).await.unwrap();
    a.begin(&meta(&r, &user, clock.now())).await.unwrap();
    a.finish(&r, RunStatus::Succeeded, None).await.unwrap();
    locked(
        "a note without the user's lock",
        b.note(&r, "rollback", true, "x").await,
        "no longer holds",
    );
    let rb = format!("rollback-{r}");
    b.lock(ACCOUNT, &user, &rb).await.unwrap();
    b.note(&r, "rollback", true, "re-activated AKIA...")
        .await
        .unwrap();
    b.finish(&r, RunStatus::RolledBack, None).await.unwrap();
    assert_eq!(
        b.run(&r).await.unwrap().unwrap().status,
        RunStatus::RolledBack
    );
    assert_eq!(
        b.lease(ACCOUNT, &user).await.unwrap().map(|l| l.run_id),
        Some(rb.clone()),
        "finish of the rolled-back run leaves the rollback's own lock"
    );
    b.unlock(ACCOUNT, &user, &rb).await.unwrap();
    assert!(b.lease(ACCOUNT, &user).await.unwrap().is_none());
}

/// `reserve_secret` before `CreateAccessKey`, fenced like every write.
async fn reservation<O: Opener>(o: &O, clock: &Clock, p: &str) {
    let a = o.open(clock.clone()).await;
    let b = o.open(clock.clone()).await;
    let user = format!("{p}-judy");
    let r = format!("{p}-res");
    a.lock(ACCOUNT, &user, &r).await.unwrap();
    a.begin(&meta(&r, &user, clock.now())).await.unwrap();
    a.reserve_secret(&r, 0).await.expect("reserve");
    a.reserve_secret(&r, 0).await.expect("idempotent");
    locked(
        "reserve by a non-holder",
        b.reserve_secret(&r, 0).await,
        "no longer holds",
    );
    let key = new_key(&user);
    a.key_created(&r, 0, &key).await.unwrap();
    assert_eq!(
        b.secret(&r).await.unwrap().unwrap().expose(),
        key.secret.expose(),
        "another journal on the same store unseals it"
    );
    a.finish(&r, RunStatus::Failed, Some("x")).await.unwrap();
}

/// Equal to the millisecond (backends may store lease times in milliseconds).
fn about(a: OffsetDateTime, b: OffsetDateTime) -> bool {
    (a - b).abs() < time::Duration::milliseconds(1)
}

/// Both futures, polled concurrently.
async fn futures_join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}
