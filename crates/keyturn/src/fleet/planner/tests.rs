//! The fleet planner's tests: one table row per lifecycle rule, then properties over
//! generated users (safety rules and "a second run changes nothing").

use super::*;
use crate::fleet::history::{CreatedKey, Deactivation, OpenRun};
use proptest::prelude::*;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-11-21 12:00 UTC);

fn hours(h: i64) -> Duration {
    Duration::hours(h)
}

fn key(id: &str, status: KeyStatus, days_old: i64) -> AccessKeyInfo {
    AccessKeyInfo {
        access_key_id: id.into(),
        status,
        create_date: NOW - Duration::days(days_old),
        usage: Usage::Never,
    }
}

fn used(mut k: AccessKeyInfo, ago: Duration, service: &str, region: &str) -> AccessKeyInfo {
    k.usage = Usage::Used(LastUsed {
        date: NOW - ago,
        service: Some(service.into()),
        region: Some(region.into()),
    });
    k
}

fn active(id: &str, days_old: i64) -> AccessKeyInfo {
    key(id, KeyStatus::Active, days_old)
}

fn inactive(id: &str, days_old: i64) -> AccessKeyInfo {
    key(id, KeyStatus::Inactive, days_old)
}

/// keyturn run `run` created `new` (replacing `replaced`); its last step ran at `own`.
fn created(h: &mut KeyHistory, new: &str, run: &str, replaced: &[&str], own: OffsetDateTime) {
    h.created.push(CreatedKey {
        access_key_id: new.into(),
        run_id: run.into(),
        created: Created::Delivered,
        replaced: replaced.iter().map(|s| s.to_string()).collect(),
        verified_at: Some(own),
        own_use_until: own,
    });
}

fn deactivated(h: &mut KeyHistory, k: &str, ago: Duration) {
    h.deactivated.push(Deactivation {
        access_key_id: k.into(),
        run_id: "R0".into(),
        at: NOW - ago,
    });
}

fn facts(keys: Vec<AccessKeyInfo>, history: KeyHistory) -> UserFacts {
    UserFacts {
        user_name: "ci".into(),
        keys,
        history,
        evidence: None,
    }
}

fn life() -> Lifecycle {
    Lifecycle::default()
}

/// A user rotated `days` days ago: OLD (100 days) replaced by NEW, keyturn's last call
/// with NEW one minute after its creation.
fn rotated(days: i64, old: AccessKeyInfo, new_usage: Usage) -> UserFacts {
    let mut new = active("NEW", days);
    new.usage = new_usage;
    let mut h = KeyHistory::default();
    created(
        &mut h,
        "NEW",
        "R1",
        &["OLD"],
        new.create_date + Duration::minutes(1),
    );
    facts(vec![old, new], h)
}

fn used_at(t: OffsetDateTime, service: &str, region: &str) -> Usage {
    Usage::Used(LastUsed {
        date: t,
        service: Some(service.into()),
        region: Some(region.into()),
    })
}

fn d(f: &UserFacts, l: &Lifecycle) -> Decision {
    decide_lifecycle(f, l, NOW)
}

fn assert_reason(dec: &Decision, needle: &str) {
    assert!(
        dec.reason().contains(needle),
        "reason lacks {needle:?}: {:?}",
        dec.reason()
    );
}

// ---- rotation ------------------------------------------------------------------

#[test]
fn a_user_without_keys_gets_one() {
    let dec = d(&facts(vec![], KeyHistory::default()), &life());
    assert_eq!(
        dec.action,
        Action::Rotate(Rotation {
            free: vec![],
            replaces: None,
            retire_after_verify: false,
            delete_after_retire: false,
            reason: "the user has no access key".into()
        })
    );
    assert_eq!(dec.outcome(), Outcome::Rotated);
}

#[test]
fn rotation_is_due_at_max_age_minus_rotate_before() {
    for (age, due) in [
        (0, false),
        (10, false),
        (75, false),
        (76, true),
        (90, true),
        (400, true),
    ] {
        let dec = d(
            &facts(vec![active("K", age)], KeyHistory::default()),
            &life(),
        );
        assert_eq!(dec.outcome() == Outcome::Rotated, due, "age {age}: {dec:?}");
        if due {
            assert_reason(
                &dec,
                &format!(
                    "K is {age} days old (rotated at 76: max_age_days 90 - rotate_before_days 14)"
                ),
            );
            let Action::Rotate(r) = &dec.action else {
                unreachable!()
            };
            assert_eq!(r.replaces.as_deref(), Some("K"));
            assert!(r.free.is_empty() && !r.retire_after_verify);
        } else {
            let Action::Ok { next_due, .. } = &dec.action else {
                panic!("{dec:?}")
            };
            assert_eq!(*next_due, NOW - Duration::days(age) + Duration::days(76));
            assert_reason(&dec, &format!("K is {age} days old; next rotation on"));
        }
    }
}

#[test]
fn rotation_frees_a_slot_only_from_keys_keyturn_may_delete() {
    // Foreign Inactive key: refuse without delete_inactive.
    let f = facts(
        vec![active("K", 80), inactive("I", 300)],
        KeyHistory::default(),
    );
    let dec = d(&f, &life());
    assert_eq!(dec.outcome(), Outcome::NeedsAttention);
    assert_reason(
        &dec,
        "second key slot holds Inactive key I, which keyturn did not deactivate",
    );
    assert_reason(&dec, "delete_inactive = true");
    assert!(dec.touched_keys().is_empty());
    // ... with delete_inactive it goes.
    let l = Lifecycle {
        delete_inactive: true,
        ..life()
    };
    let dec = d(&f, &l);
    assert_eq!(dec.touched_keys(), ["I"]);
    assert_reason(&dec, "K is 80 days old");
    // A key keyturn deactivated goes once its deletion window ended ...
    let mut h = KeyHistory::default();
    deactivated(&mut h, "I", hours(24 * 8));
    let dec = d(
        &facts(vec![active("K", 80), inactive("I", 300)], h),
        &life(),
    );
    let Action::Rotate(r) = &dec.action else {
        panic!("{dec:?}")
    };
    assert_eq!(r.free.len(), 1);
    assert!(
        r.free[0].reason.contains("delete_after_days = 7 passed"),
        "{r:?}"
    );
    // ... inside it, the rotation waits while the newest key is below max_age_days ...
    let mut h = KeyHistory::default();
    deactivated(&mut h, "I", hours(24));
    let dec = d(
        &facts(vec![active("K", 80), inactive("I", 300)], h.clone()),
        &life(),
    );
    assert_eq!(dec.outcome(), Outcome::Waiting, "{dec:?}");
    assert_reason(&dec, "it is kept until 2026-11-27 (delete_after_days = 7)");
    // ... and does not wait past it.
    let dec = d(
        &facts(vec![active("K", 90), inactive("I", 300)], h),
        &life(),
    );
    let Action::Rotate(r) = &dec.action else {
        panic!("{dec:?}")
    };
    assert!(
        r.free[0]
            .reason
            .contains("because K reached max_age_days = 90"),
        "{r:?}"
    );
}

#[test]
fn after_verify_retires_in_the_rotation_run() {
    let l = Lifecycle {
        retire: Retire::AfterVerify,
        ..life()
    };
    let f = facts(vec![active("K", 80)], KeyHistory::default());
    let Action::Rotate(r) = d(&f, &l).action else {
        panic!()
    };
    assert!(r.retire_after_verify && !r.delete_after_retire);
    let l0 = Lifecycle {
        delete_after_days: 0,
        ..l
    };
    let dec = d(&f, &l0);
    let Action::Rotate(r) = &dec.action else {
        panic!()
    };
    assert!(r.retire_after_verify && r.delete_after_retire);
    assert_eq!(dec.touched_keys(), ["K"]);
    // when-switched and never leave the old key for later runs.
    for retire in [Retire::WhenSwitched, Retire::Never] {
        let l = Lifecycle {
            retire,
            delete_after_days: 0,
            ..life()
        };
        let dec = d(&f, &l);
        assert!(dec.touched_keys().is_empty(), "{retire:?}: {dec:?}");
    }
}

// ---- deletion ------------------------------------------------------------------

#[test]
fn keys_keyturn_deactivated_are_deleted_after_delete_after_days() {
    for (ago_h, want) in [
        (24, Outcome::Waiting),
        (7 * 24 - 1, Outcome::Waiting),
        (7 * 24, Outcome::Deleted),
        (30 * 24, Outcome::Deleted),
    ] {
        let mut h = KeyHistory::default();
        deactivated(&mut h, "OLD", hours(ago_h));
        let dec = d(
            &facts(vec![active("NEW", 10), inactive("OLD", 100)], h),
            &life(),
        );
        assert_eq!(dec.outcome(), want, "{ago_h} h: {dec:?}");
        match want {
            Outcome::Deleted => {
                assert_eq!(dec.touched_keys(), ["OLD"]);
                assert_reason(&dec, "delete_after_days = 7");
            }
            _ => assert_reason(&dec, "old key OLD deactivated on"),
        }
    }
}

#[test]
fn inactive_keys_keyturn_did_not_deactivate_are_left_alone() {
    for delete_inactive in [false, true] {
        let l = Lifecycle {
            delete_inactive,
            ..life()
        };
        let dec = d(
            &facts(
                vec![active("K", 10), inactive("I", 900)],
                KeyHistory::default(),
            ),
            &l,
        );
        assert_eq!(dec.outcome(), Outcome::Ok);
        assert_reason(&dec, "Inactive key I is left alone");
    }
}

#[test]
fn a_user_with_only_inactive_keys_needs_attention() {
    let mut h = KeyHistory::default();
    deactivated(&mut h, "A", hours(24 * 30));
    for f in [
        facts(vec![inactive("A", 100)], h),
        facts(
            vec![inactive("A", 100), inactive("B", 5)],
            KeyHistory::default(),
        ),
    ] {
        let dec = d(
            &f,
            &Lifecycle {
                delete_inactive: true,
                ..life()
            },
        );
        assert_eq!(dec.outcome(), Outcome::NeedsAttention, "{dec:?}");
        assert_reason(&dec, "no Active access key");
        assert!(dec.touched_keys().is_empty());
    }
}

// ---- telling keys apart --------------------------------------------------------

#[test]
fn two_active_keys_keyturn_cannot_tell_apart_need_attention() {
    let both = vec![active("A", 100), active("B", 3)];
    let cases: Vec<(KeyHistory, &str)> = vec![
        (KeyHistory::default(), "neither created by keyturn"),
        (
            {
                let mut h = KeyHistory::default();
                created(&mut h, "A", "R1", &[], NOW - Duration::days(100));
                h
            },
            "created outside keyturn",
        ),
        (
            {
                let mut h = KeyHistory::default();
                created(&mut h, "B", "R2", &["X"], NOW - Duration::days(3));
                h
            },
            "which was not Active when that run began",
        ),
    ];
    for (h, needle) in cases {
        for retire in [Retire::WhenSwitched, Retire::AfterVerify, Retire::Never] {
            let dec = d(
                &facts(both.clone(), h.clone()),
                &Lifecycle { retire, ..life() },
            );
            assert_eq!(dec.outcome(), Outcome::NeedsAttention, "{dec:?}");
            assert_reason(&dec, needle);
            assert!(dec.touched_keys().is_empty());
        }
    }
}

#[test]
fn keys_of_earlier_keyturn_runs_are_told_apart_by_the_later_run() {
    // A was created by R1, B by R2 which replaced A.
    let mut h = KeyHistory::default();
    created(&mut h, "A", "R1", &[], NOW - Duration::days(100));
    created(&mut h, "B", "R2", &["A"], NOW - Duration::days(10));
    let l = Lifecycle {
        retire: Retire::AfterVerify,
        ..life()
    };
    let dec = d(&facts(vec![active("B", 10), active("A", 100)], h), &l);
    assert_eq!(dec.touched_keys(), ["A"]);
    assert_reason(&dec, "retire = after-verify: B replaced it in run R2");
}

#[test]
fn failed_runs_keys_and_open_runs() {
    let mut h = KeyHistory::default();
    created(&mut h, "N", "R1", &["K"], NOW);
    h.created[0].created = Created::CleanedUp;
    let dec = d(&facts(vec![active("K", 80), active("N", 0)], h), &life());
    assert_eq!(dec.outcome(), Outcome::NeedsAttention);
    assert_reason(&dec, "created by run R1, which failed before delivering it");

    let mut h = KeyHistory::default();
    for (creates_key, outcome) in [(true, Outcome::Rotated), (false, Outcome::Retired)] {
        h.open_run = Some(OpenRun {
            run_id: "R7".into(),
            status: "running".into(),
            creates_key,
            deactivates: true,
        });
        let dec = d(
            &facts(vec![active("K", 80), active("X", 1)], h.clone()),
            &life(),
        );
        assert!(
            matches!(&dec.action, Action::Resume { run_id, .. } if run_id == "R7"),
            "{dec:?}"
        );
        assert_eq!(dec.outcome(), outcome);
        assert_reason(&dec, "keyturn resume R7");
    }
    let three = vec![active("A", 1), inactive("B", 1), inactive("C", 1)];
    let dec = d(&facts(three, KeyHistory::default()), &life());
    assert_eq!(dec.outcome(), Outcome::NeedsAttention);
    assert_reason(&dec, "IAM lists 3 access keys");
}

// ---- retire = when-switched ----------------------------------------------------

#[test]
fn waiting_names_the_last_uses() {
    let old = used(active("OLD", 100), hours(3), "s3", "eu-west-1");
    let dec = d(&rotated(1, old, Usage::Never), &life());
    assert_eq!(dec.outcome(), Outcome::Waiting);
    assert_reason(
        &dec,
        "old key last used 3 h ago by s3 in eu-west-1; new key never used",
    );
    assert_reason(&dec, "retired at the latest on 2026-11-27 (grace_days = 7)");
    assert!(dec.record_sighting.is_none());
}

#[test]
fn keyturns_own_verification_is_not_a_consumer() {
    // NEW created 1 day ago at T; keyturn's last call T+1m; its sts uses show up up to
    // 4 h late; none of them counts.
    let t = NOW - Duration::days(1);
    for after in [
        Duration::ZERO,
        Duration::minutes(1),
        hours(2),
        hours(4) + Duration::minutes(1),
    ] {
        let f = rotated(
            1,
            used(active("OLD", 100), hours(30), "s3", "us-east-1"),
            used_at(t + after, "sts", "us-east-1"),
        );
        let dec = d(&f, &life());
        assert_eq!(dec.outcome(), Outcome::Waiting, "{after}: {dec:?}");
        assert_reason(&dec, "new key used only by keyturn's own checks so far");
        assert!(dec.record_sighting.is_none());
    }
    // Clearly later: a consumer (even one calling STS).
    let f = rotated(
        1,
        used(active("OLD", 100), hours(30), "s3", "us-east-1"),
        used_at(t + hours(5), "sts", "us-east-1"),
    );
    let dec = d(&f, &life());
    assert!(dec.record_sighting.is_some(), "{dec:?}");
}

#[test]
fn switching_is_seen_then_confirmed_after_iams_delay() {
    // NEW used by s3 2 h ago (well after keyturn's checks), OLD last used 10 h ago.
    let f = rotated(
        2,
        used(active("OLD", 100), hours(10), "s3", "eu-west-1"),
        used_at(NOW - hours(2), "s3", "us-east-1"),
    );
    let dec = d(&f, &life());
    assert_eq!(dec.outcome(), Outcome::Waiting, "{dec:?}");
    assert_reason(&dec, "new key in use since 2026-11-21 10:00 UTC (by s3 in us-east-1); old key not used since then, but IAM shows a use up to 4 h late: retired from 2026-11-21 14:00 UTC on");
    let s = dec
        .record_sighting
        .clone()
        .expect("first sighting recorded");
    assert_eq!(
        (s.access_key_id.as_str(), s.run_id.as_str(), s.used_at),
        ("NEW", "R1", NOW - hours(2))
    );
    // The next day: the sighting is in the journal, NEW was used since, OLD was not.
    let mut next = f.clone();
    next.history.record(s);
    next.keys[1].usage = used_at(NOW + hours(20), "s3", "us-east-1");
    let dec = decide_lifecycle(&next, &life(), NOW + hours(22));
    assert!(
        matches!(&dec.action, Action::Retire { access_key_id, forced: false, delete: false, .. } if access_key_id == "OLD"),
        "{dec:?}"
    );
    assert_reason(
        &dec,
        "consumers switched: new key in use since 2026-11-21 10:00 UTC",
    );
    assert!(dec.record_sighting.is_none());
}

#[test]
fn an_old_sighting_retires_in_the_same_run() {
    // NEW was last used 10 h ago (first seen now); OLD not since.
    let f = rotated(
        2,
        used(active("OLD", 100), hours(20), "ec2", "eu-west-1"),
        used_at(NOW - hours(10), "s3", "us-east-1"),
    );
    let dec = d(&f, &life());
    assert_eq!(dec.outcome(), Outcome::Retired, "{dec:?}");
    assert!(dec.record_sighting.is_some());
    // Never-used old key: same.
    let f = rotated(
        2,
        active("OLD", 100),
        used_at(NOW - hours(10), "s3", "us-east-1"),
    );
    assert_eq!(d(&f, &life()).outcome(), Outcome::Retired);
}

#[test]
fn an_old_key_used_after_the_first_sighting_keeps_waiting() {
    let mut f = rotated(
        3,
        used(active("OLD", 100), hours(1), "s3", "eu-west-1"),
        used_at(NOW - hours(5), "s3", "us-east-1"),
    );
    f.history.record(Sighting {
        access_key_id: "NEW".into(),
        run_id: "R1".into(),
        used_at: NOW - hours(40),
        service: Some("s3".into()),
        region: Some("us-east-1".into()),
    });
    let dec = d(&f, &life());
    assert_eq!(dec.outcome(), Outcome::Waiting);
    assert_reason(
        &dec,
        "but the old key was used after that: last used 1 h ago by s3 in eu-west-1",
    );
    assert!(dec.record_sighting.is_none(), "already recorded");
}

#[test]
fn grace_days_force_retirement_and_say_so() {
    let old = used(active("OLD", 100), hours(3), "s3", "eu-west-1");
    for (days, forced) in [(6, false), (7, true), (12, true)] {
        let dec = d(&rotated(days, old.clone(), Usage::Never), &life());
        match forced {
            false => assert_eq!(dec.outcome(), Outcome::Waiting),
            true => {
                assert!(
                    matches!(
                        dec.action,
                        Action::Retire {
                            forced: true,
                            delete: false,
                            ..
                        }
                    ),
                    "{dec:?}"
                );
                assert_reason(&dec, "forced: grace_days = 7 passed since the rotation on");
                assert_reason(
                    &dec,
                    "old key last used 3 h ago by s3 in eu-west-1; new key never used",
                );
            }
        }
    }
    // delete_after_days = 0 deletes in the same run.
    let l = Lifecycle {
        delete_after_days: 0,
        ..life()
    };
    let dec = d(&rotated(8, old, Usage::Never), &l);
    assert!(matches!(
        dec.action,
        Action::Retire {
            forced: true,
            delete: true,
            ..
        }
    ));
    // Switched beats forced.
    let f = rotated(
        9,
        active("OLD", 100),
        used_at(NOW - hours(10), "s3", "us-east-1"),
    );
    assert!(matches!(
        d(&f, &life()).action,
        Action::Retire { forced: false, .. }
    ));
}

#[test]
fn an_unknown_old_key_use_never_counts_as_switched() {
    let mut old = active("OLD", 100);
    old.usage = Usage::Unknown;
    let f = rotated(2, old, used_at(NOW - hours(10), "s3", "us-east-1"));
    let dec = d(&f, &life());
    assert_eq!(dec.outcome(), Outcome::Waiting);
    assert_reason(&dec, "last use of old key OLD is unknown");
}

#[test]
fn retire_never_keeps_the_old_key_until_a_rotation_needs_its_slot() {
    let l = Lifecycle {
        retire: Retire::Never,
        ..life()
    };
    let dec = d(&rotated(10, active("OLD", 100), Usage::Never), &l);
    assert_eq!(dec.outcome(), Outcome::Ok);
    assert_reason(&dec, "old key OLD stays Active (retire = never)");
    let dec = d(&rotated(80, active("OLD", 170), Usage::Never), &l);
    assert_eq!(dec.outcome(), Outcome::NeedsAttention);
    assert_reason(&dec, "retire = never leaves the old key OLD Active");
}

#[test]
fn after_verify_finishes_a_retirement_an_earlier_run_left() {
    let l = Lifecycle {
        retire: Retire::AfterVerify,
        delete_after_days: 0,
        ..life()
    };
    let dec = d(&rotated(1, active("OLD", 100), Usage::Never), &l);
    assert!(
        matches!(&dec.action, Action::Retire { access_key_id, forced: false, delete: true, .. } if access_key_id == "OLD"),
        "{dec:?}"
    );
}

// ---- usage = "cloudtrail" ------------------------------------------------------

fn consumer(ip: &str, ua: &str, events: u64, first_ago: i64, last_ago: i64) -> Consumer {
    Consumer {
        source_ip: ip.into(),
        user_agent: ua.into(),
        events,
        first: NOW - hours(first_ago),
        last: NOW - hours(last_ago),
        top_events: vec!["s3:ListBuckets".into(), "ec2:DescribeInstances".into()],
        regions: vec!["eu-west-1".into()],
    }
}

fn cloudtrail() -> Lifecycle {
    Lifecycle {
        usage: UsageSource::Cloudtrail,
        ..life()
    }
}

#[test]
fn consumers_are_described_like_the_issue_says() {
    assert_eq!(
        consumer("10.0.4.17", "aws-cli/2.15.30", 14, 26, 2).describe(),
        "used 14 times in 24 h by 10.0.4.17 aws-cli/2.15.30 (s3:ListBuckets, ec2:DescribeInstances in eu-west-1)"
    );
}

#[test]
fn cloudtrail_needs_evidence() {
    let f = rotated(
        2,
        active("OLD", 100),
        used_at(NOW - hours(30), "s3", "us-east-1"),
    );
    let dec = d(&f, &cloudtrail());
    assert_eq!(dec.outcome(), Outcome::Waiting);
    assert_reason(&dec, "no CloudTrail evidence");
    // Without evidence nothing is retired before grace ends, then it is forced.
    let f = rotated(
        7,
        active("OLD", 100),
        used_at(NOW - hours(30), "s3", "us-east-1"),
    );
    assert!(matches!(
        d(&f, &cloudtrail()).action,
        Action::Retire { forced: true, .. }
    ));
}

#[test]
fn cloudtrail_retires_after_quiet_hours_without_consumers() {
    let base = rotated(
        3,
        used(active("OLD", 100), hours(30), "s3", "eu-west-1"),
        used_at(NOW - hours(1), "s3", "us-east-1"),
    );
    let with = |consumers: Vec<Consumer>, first_use: i64| {
        let mut f = base.clone();
        f.evidence = Some(Evidence {
            complete_until: Some(NOW - Duration::minutes(15)),
            old_key: consumers,
            new_key_first_use: Some(NOW - hours(first_use)),
        });
        f
    };
    // One host still calls with the old key: waiting names it.
    let dec = d(
        &with(
            vec![consumer("10.0.4.17", "aws-cli/2.15.30", 14, 26, 2)],
            40,
        ),
        &cloudtrail(),
    );
    assert_eq!(dec.outcome(), Outcome::Waiting);
    assert_reason(
        &dec,
        "old key used 14 times in 24 h by 10.0.4.17 aws-cli/2.15.30",
    );
    assert_reason(&dec, "retired once the old key is quiet for 24 h");
    // It stopped 30 h ago (and switched later than others): retired.
    let dec = d(
        &with(
            vec![consumer("10.0.4.17", "aws-cli/2.15.30", 14, 50, 30)],
            40,
        ),
        &cloudtrail(),
    );
    assert!(
        matches!(dec.action, Action::Retire { forced: false, .. }),
        "{dec:?}"
    );
    assert_reason(&dec, "no consumer used the old key for 24 h");
    // IAM's last-used counts too (data events are not in CloudTrail): OLD used 30 h
    // ago, quiet_hours 36 -> wait.
    let l = Lifecycle {
        quiet_hours: 36,
        ..cloudtrail()
    };
    assert_eq!(d(&with(vec![], 40), &l).outcome(), Outcome::Waiting);
    assert_eq!(
        d(&with(vec![], 40), &cloudtrail()).outcome(),
        Outcome::Retired
    );
    // Grace ends while the host still uses it: forced, and the report names it.
    let mut late = with(
        vec![consumer("10.0.4.17", "aws-cli/2.15.30", 14, 26, 2)],
        40,
    );
    late.keys[1].create_date = NOW - Duration::days(8);
    let dec = d(&late, &cloudtrail());
    assert!(matches!(dec.action, Action::Retire { forced: true, .. }));
    assert_reason(
        &dec,
        "consumers that will break: old key used 14 times in 24 h by 10.0.4.17",
    );
}

#[test]
fn last_used_mode_names_cloudtrail_consumers_while_waiting() {
    let mut f = rotated(
        1,
        used(active("OLD", 100), hours(3), "s3", "eu-west-1"),
        Usage::Never,
    );
    f.evidence = Some(Evidence {
        complete_until: None,
        old_key: vec![consumer("10.0.4.17", "aws-cli/2.15.30", 14, 26, 2)],
        new_key_first_use: None,
    });
    let dec = d(&f, &life());
    assert_eq!(dec.outcome(), Outcome::Waiting);
    assert_reason(&dec, "new key never used; CloudTrail: old key used 14 times in 24 h by 10.0.4.17 aws-cli/2.15.30");
}

// ---- small things --------------------------------------------------------------

#[test]
fn ago_is_human() {
    for (d, s) in [
        (Duration::minutes(-5), "just now"),
        (Duration::minutes(25), "25 min ago"),
        (hours(3), "3 h ago"),
        (hours(47), "47 h ago"),
        (hours(24 * 4 + 1), "4 days ago"),
    ] {
        assert_eq!(ago(d), s);
    }
}

#[test]
fn decisions_serialize_with_an_action_tag() {
    let dec = d(
        &facts(vec![active("K", 80)], KeyHistory::default()),
        &life(),
    );
    let v = serde_json::to_value(&dec).unwrap();
    assert_eq!(v["Action"], "Rotate");
    assert_eq!(v["Replaces"], "K");
    let dec = d(&rotated(1, active("OLD", 100), Usage::Never), &life());
    assert_eq!(serde_json::to_value(&dec).unwrap()["Action"], "Wait");
}

#[test]
fn planned_reports_carry_outcome_reason_and_keys() {
    let mut h = KeyHistory::default();
    deactivated(&mut h, "OLD", hours(24 * 8));
    let dec = d(
        &facts(vec![active("NEW", 10), inactive("OLD", 100)], h),
        &life(),
    );
    let r = dec.planned_report("ci", "bots");
    assert_eq!(
        (r.outcome, r.retired_access_key_id.as_deref()),
        (Outcome::Deleted, Some("OLD"))
    );
    assert_eq!(
        r.reason,
        "keyturn deactivated OLD 8 days ago (run R0); delete_after_days = 7"
    );
    assert_eq!((r.user_name.as_str(), r.rotation.as_str()), ("ci", "bots"));
    let l = Lifecycle {
        retire: Retire::AfterVerify,
        ..life()
    };
    let r =
        d(&facts(vec![active("K", 80)], KeyHistory::default()), &l).planned_report("ci", "bots");
    assert_eq!(
        (r.outcome, r.retired_access_key_id.as_deref()),
        (Outcome::Rotated, Some("K"))
    );
    let r = d(
        &facts(vec![active("K", 80)], KeyHistory::default()),
        &life(),
    )
    .planned_report("ci", "bots");
    assert_eq!(
        r.retired_access_key_id, None,
        "when-switched retires in a later run"
    );
    let h = KeyHistory {
        open_run: Some(OpenRun {
            run_id: "R7".into(),
            status: "incomplete".into(),
            creates_key: true,
            deactivates: false,
        }),
        ..KeyHistory::default()
    };
    let r = d(&facts(vec![active("K", 80)], h), &life()).planned_report("ci", "bots");
    assert_eq!(
        (r.outcome, r.run_id.as_deref()),
        (Outcome::Rotated, Some("R7"))
    );
    assert!(r.reason.contains("stopped with work left"), "{}", r.reason);
}

#[test]
fn decide_uses_the_blocks_lifecycle() {
    let p = crate::fleet::policy::EffectiveRotation {
        name: "b".into(),
        index: 0,
        selection: Default::default(),
        sinks: vec!["s".into()],
        lifecycle: Lifecycle {
            max_age_days: 30,
            rotate_before_days: 5,
            grace_days: 2,
            ..life()
        },
        limits: Default::default(),
    };
    let f = facts(vec![active("K", 25)], KeyHistory::default());
    assert_eq!(decide(&f, &p, NOW).outcome(), Outcome::Rotated);
    assert_eq!(d(&f, &life()).outcome(), Outcome::Ok);
}

// ---- properties ----------------------------------------------------------------

/// A valid lifecycle (the policy's checks hold).
fn lifecycle() -> impl Strategy<Value = Lifecycle> {
    (
        2u32..200,
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        any::<u8>(),
    )
        .prop_map(|(max_age, b, g, del, retire, delete_inactive, ct, q)| {
            let before = 1 + u32::from(b) % (max_age - 1);
            let grace = 1 + u32::from(g) % before;
            let retire =
                [Retire::WhenSwitched, Retire::AfterVerify, Retire::Never][retire as usize];
            let interval = max_age - before;
            let taken = if retire == Retire::WhenSwitched {
                grace
            } else {
                0
            };
            let delete_after = if interval > taken {
                u32::from(del) % (interval - taken)
            } else {
                0
            };
            let quiet = 4 + u32::from(q) % (grace * 24 - 4).max(1);
            Lifecycle {
                max_age_days: max_age,
                rotate_before_days: before,
                retire,
                grace_days: grace,
                delete_after_days: delete_after,
                delete_inactive,
                usage: if ct {
                    UsageSource::Cloudtrail
                } else {
                    UsageSource::LastUsed
                },
                quiet_hours: quiet,
            }
        })
}

fn usage() -> impl Strategy<Value = Usage> {
    prop_oneof![
        Just(Usage::Unknown),
        Just(Usage::Never),
        (0i64..24 * 200, prop::bool::ANY).prop_map(|(h, sts)| used_at(
            NOW - hours(h),
            if sts { "sts" } else { "s3" },
            "us-east-1"
        )),
    ]
}

/// Per key: status, age in hours, usage, created by keyturn (and how), replaced-set
/// bits, keyturn's own-use offset, deactivated hours ago, sighting hours ago.
#[allow(clippy::type_complexity)]
fn key_facts() -> impl Strategy<
    Value = (
        bool,
        i64,
        Usage,
        Option<(u8, u8, i64)>,
        Option<i64>,
        Option<i64>,
    ),
> {
    (
        prop::bool::ANY,
        0i64..24 * 300,
        usage(),
        prop::option::of((0u8..4, any::<u8>(), 0i64..600)),
        prop::option::of(0i64..24 * 40),
        prop::option::of(0i64..24 * 40),
    )
}

fn user_facts() -> impl Strategy<Value = UserFacts> {
    (
        prop::collection::vec(key_facts(), 0..=3),
        prop::option::of(0u8..2),
        prop::option::of((any::<bool>(), 0i64..200, 0i64..200, 0usize..3)),
    )
        .prop_map(|(ks, open, ev)| {
            let ids = ["K1", "K2", "K3"];
            let mut f = facts(vec![], KeyHistory::default());
            for (i, (is_active, age_h, usage, made, deact, seen)) in ks.iter().enumerate() {
                let mut k = key(
                    ids[i],
                    if *is_active {
                        KeyStatus::Active
                    } else {
                        KeyStatus::Inactive
                    },
                    0,
                );
                k.create_date = NOW - hours(*age_h);
                k.usage = usage.clone();
                if let Some((how, replaced_bits, own_min)) = made {
                    let replaced: Vec<String> = ids
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i && replaced_bits & (1 << j) != 0)
                        .map(|(_, id)| id.to_string())
                        .collect();
                    f.history.created.push(CreatedKey {
                        access_key_id: k.access_key_id.clone(),
                        run_id: format!("R{i}"),
                        created: [
                            Created::Delivered,
                            Created::Delivered,
                            Created::CleanedUp,
                            Created::Open,
                        ][*how as usize],
                        replaced,
                        verified_at: None,
                        own_use_until: k.create_date + Duration::minutes(*own_min),
                    });
                    if let Some(h) = seen {
                        f.history.sightings.push(Sighting {
                            access_key_id: k.access_key_id.clone(),
                            run_id: format!("R{i}"),
                            used_at: NOW - hours(*h),
                            service: Some("s3".into()),
                            region: None,
                        });
                    }
                }
                if let Some(h) = deact {
                    deactivated(&mut f.history, &k.access_key_id, hours(*h));
                }
                f.keys.push(k);
            }
            if let Some(c) = open {
                f.history.open_run = Some(OpenRun {
                    run_id: "R9".into(),
                    status: "running".into(),
                    creates_key: c == 1,
                    deactivates: false,
                });
            }
            if let Some((has_consumer, last_h, first_use_h, _)) = ev {
                f.evidence = Some(Evidence {
                    complete_until: Some(NOW - Duration::minutes(15)),
                    old_key: if has_consumer {
                        vec![consumer("10.0.0.1", "boto3", 3, last_h + 5, last_h)]
                    } else {
                        vec![]
                    },
                    new_key_first_use: Some(NOW - hours(first_use_h)),
                });
            }
            f
        })
}

fn find<'a>(f: &'a UserFacts, id: &str) -> Option<&'a AccessKeyInfo> {
    f.keys.iter().find(|k| k.access_key_id == id)
}

/// What IAM and the journal look like after the runner carried `dec` out at `now`.
fn apply(f: &UserFacts, dec: &Decision, now: OffsetDateTime) -> UserFacts {
    let mut g = f.clone();
    if let Some(s) = &dec.record_sighting {
        g.history.record(s.clone());
    }
    let deactivate = |g: &mut UserFacts, id: &str, delete: bool| {
        if delete {
            g.keys.retain(|k| k.access_key_id != id);
        } else if let Some(k) = g.keys.iter_mut().find(|k| k.access_key_id == id) {
            k.status = KeyStatus::Inactive;
        }
        g.history.deactivated.retain(|d| d.access_key_id != id);
        g.history.deactivated.push(Deactivation {
            access_key_id: id.into(),
            run_id: "NEXT".into(),
            at: now,
        });
    };
    match &dec.action {
        Action::Rotate(r) => {
            let replaced: Vec<String> = g
                .keys
                .iter()
                .filter(|k| k.status == KeyStatus::Active)
                .map(|k| k.access_key_id.clone())
                .collect();
            for fr in &r.free {
                g.keys.retain(|k| k.access_key_id != fr.access_key_id);
            }
            // keyturn's verification is the new key's last use (service sts).
            g.keys.push(AccessKeyInfo {
                access_key_id: "NEW-KEY".into(),
                status: KeyStatus::Active,
                create_date: now,
                usage: used_at(now, "sts", "us-east-1"),
            });
            // CloudTrail evidence is gathered per (old, new) pair: a new pair has none yet.
            g.evidence = None;
            g.history.created.push(CreatedKey {
                access_key_id: "NEW-KEY".into(),
                run_id: "NEXT".into(),
                created: Created::Delivered,
                replaced,
                verified_at: Some(now),
                own_use_until: now,
            });
            if r.retire_after_verify {
                let old = r.replaces.clone().expect("after-verify replaces a key");
                deactivate(&mut g, &old, r.delete_after_retire);
            }
        }
        Action::Retire {
            access_key_id,
            delete,
            ..
        } => deactivate(&mut g, access_key_id, *delete),
        Action::Delete { access_key_id, .. } => {
            g.keys.retain(|k| &k.access_key_id != access_key_id)
        }
        Action::Resume { .. } => g.history.open_run = None,
        Action::Wait { .. } | Action::Ok { .. } | Action::NeedsAttention { .. } => {}
    }
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// A key keyturn did not create or deactivate is never deleted (except an Inactive
    /// key freeing a slot under delete_inactive); an Active key is never deleted before
    /// it is deactivated; only a replaced key is retired.
    #[test]
    fn only_keys_keyturn_may_touch_are_touched(f in user_facts(), l in lifecycle()) {
        let dec = decide_lifecycle(&f, &l, NOW);
        let h = &f.history;
        let delivered = |id: &str| h.created(id).is_some_and(|c| c.created == Created::Delivered);
        match &dec.action {
            Action::Delete { access_key_id, .. } => {
                let k = find(&f, access_key_id).expect("deletes an existing key");
                prop_assert_eq!(k.status, KeyStatus::Inactive);
                prop_assert!(h.deactivation(access_key_id).is_some(), "deletes only what keyturn deactivated");
            }
            Action::Rotate(r) => {
                for fr in &r.free {
                    let k = find(&f, &fr.access_key_id).expect("frees an existing key");
                    prop_assert_eq!(k.status, KeyStatus::Inactive);
                    prop_assert!(h.deactivation(&fr.access_key_id).is_some() || l.delete_inactive);
                }
                prop_assert!(!r.delete_after_retire || r.retire_after_verify);
                if let Some(old) = &r.replaces {
                    prop_assert_eq!(find(&f, old).map(|k| k.status), Some(KeyStatus::Active));
                }
                prop_assert!(f.keys.len() - r.free.len() < MAX_KEYS_PER_USER, "a slot is free for the new key");
            }
            Action::Retire { access_key_id, .. } => {
                let k = find(&f, access_key_id).expect("retires an existing key");
                prop_assert_eq!(k.status, KeyStatus::Active);
                let successor = f.keys.iter().find(|n| {
                    n.access_key_id != *access_key_id
                        && n.status == KeyStatus::Active
                        && n.create_date >= k.create_date
                        && delivered(&n.access_key_id)
                        && h.created(&n.access_key_id).unwrap().replaced.contains(access_key_id)
                });
                prop_assert!(successor.is_some(), "retired key has a keyturn-made successor");
            }
            _ => {}
        }
        // Two Active keys, neither made by keyturn: nothing touched.
        let act: Vec<&AccessKeyInfo> = f.keys.iter().filter(|k| k.status == KeyStatus::Active).collect();
        if act.len() == 2 && !act.iter().any(|k| h.created(&k.access_key_id).is_some()) && h.open_run.is_none() && f.keys.len() <= 2 {
            prop_assert_eq!(dec.outcome(), Outcome::NeedsAttention);
        }
        if dec.outcome() == Outcome::NeedsAttention {
            prop_assert!(dec.touched_keys().is_empty());
        }
        // Deterministic.
        prop_assert_eq!(decide_lifecycle(&f, &l, NOW), dec);
    }

    /// A second run on the state the first one left: after a rotation nothing changes;
    /// no key is touched twice; waiting, ok and needs-attention repeat exactly; and the
    /// lifecycle settles within three steps at one instant.
    #[test]
    fn a_second_run_changes_nothing_more(f in user_facts(), l in lifecycle()) {
        // (Resuming an open run is the engine's business, not a lifecycle step.)
        let mut f = f;
        f.history.open_run = None;
        let first = decide_lifecycle(&f, &l, NOW);
        let after = apply(&f, &first, NOW);
        let second = decide_lifecycle(&after, &l, NOW);
        prop_assert!(second.record_sighting.is_none(), "a sighting is recorded once: {:?}", second);
        if matches!(first.action, Action::Rotate(_)) {
            prop_assert!(!second.changes_keys(), "after {:?} came {:?}", first, second);
        }
        // No key is touched twice at one instant, except to free the slot for a key
        // past max_age_days (the hard limit beats the deletion window).
        let past_max_age = matches!(&second.action, Action::Rotate(r)
            if r.replaces.as_deref().and_then(|id| find(&after, id))
                .is_some_and(|k| k.age_days(NOW) >= i64::from(l.max_age_days)));
        for k in first.touched_keys() {
            prop_assert!(past_max_age || !second.touched_keys().contains(&k), "{} touched twice: {:?} then {:?}", k, first, second);
        }
        if !first.changes_keys() {
            prop_assert_eq!(&second.action, &first.action);
        }
        let mut state = after;
        let mut dec = second;
        let mut steps = 1;
        while dec.changes_keys() {
            state = apply(&state, &dec, NOW);
            dec = decide_lifecycle(&state, &l, NOW);
            steps += 1;
            prop_assert!(steps <= 3, "no fixed point: {:?}", dec);
        }
    }

    /// Recording a sighting does not change the decision it was recorded with.
    #[test]
    fn a_recorded_sighting_gives_the_same_decision(f in user_facts(), l in lifecycle()) {
        let dec = decide_lifecycle(&f, &l, NOW);
        if let Some(s) = &dec.record_sighting {
            let mut g = f.clone();
            g.history.record(s.clone());
            let again = decide_lifecycle(&g, &l, NOW);
            prop_assert_eq!(&again.action, &dec.action);
            prop_assert!(again.record_sighting.is_none());
        }
    }
}
