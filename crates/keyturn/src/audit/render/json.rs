//! `--format json`: the whole result with a stable schema (`SchemaVersion`, documented
//! in `docs/audit.md`), compliant keys included with finding `ok`.

use super::{rows, whole_seconds, Row};
use crate::audit::{AccountData, AuditReport, Finding, SCHEMA_VERSION};
use crate::printer::rfc3339;
use serde_json::{json, Map, Value};

fn counts(d: &AccountData) -> Value {
    let mut m = Map::new();
    for f in Finding::ALL {
        m.insert(f.as_str().into(), d.count(f).into());
    }
    Value::Object(m)
}

fn opt_time(t: Option<time::OffsetDateTime>) -> Value {
    t.map(|t| Value::String(rfc3339(t))).unwrap_or(Value::Null)
}

/// A row's `Consumers`: null unless looked up. The key id is left out (the row names
/// the key the way the rest of the audit does).
fn consumers(r: &Row) -> Value {
    match (&r.consumers, r.consumers_asked) {
        (Some(list), true) => list
            .iter()
            .map(|c| {
                json!({
                    "SourceIp": c.source_ip,
                    "UserAgent": c.user_agent,
                    "Events": c.events,
                    "FirstSeen": rfc3339(c.first_seen),
                    "LastSeen": rfc3339(c.last_seen),
                    "TopEvents": c.top_events.iter().map(|a| json!({"Api": a.api, "Count": a.count})).collect::<Vec<_>>(),
                    "Regions": c.regions,
                    "Description": c.describe(),
                })
            })
            .collect::<Vec<_>>()
            .into(),
        _ => Value::Null,
    }
}

fn account_usage(d: &AccountData) -> Value {
    match &d.usage {
        None => Value::Null,
        Some(u) => json!({
            "Regions": u.regions,
            "Since": rfc3339(whole_seconds(u.since)),
            "Until": rfc3339(whole_seconds(u.until)),
            "Keys": u.keys,
            "Error": u.error,
        }),
    }
}

pub(super) fn render(report: &AuditReport) -> String {
    let accounts: Vec<Value> = report
        .accounts
        .iter()
        .map(|a| match &a.outcome {
            Ok(d) => json!({
                "AccountId": a.account_id,
                "AccountAlias": a.alias,
                "Via": a.via,
                "Status": "ok",
                "Error": null,
                "Source": d.source.as_str(),
                "FallbackReason": d.fallback_reason,
                "ReportGeneratedAt": opt_time(d.report_generated_at),
                "Users": d.users,
                "Keys": d.keys.len(),
                "CompliantKeys": d.compliant(),
                "Findings": counts(d),
                "Warnings": d.warnings,
                "Usage": account_usage(d),
            }),
            Err(e) => json!({
                "AccountId": a.account_id,
                "AccountAlias": a.alias,
                "Via": a.via,
                "Status": "error",
                "Error": e,
                "Source": null,
                "FallbackReason": null,
                "ReportGeneratedAt": null,
                "Users": null,
                "Keys": null,
                "CompliantKeys": null,
                "Findings": null,
                "Warnings": [],
                "Usage": null,
            }),
        })
        .collect();
    let mut totals = Map::new();
    for f in Finding::ALL {
        totals.insert(
            f.as_str().into(),
            report
                .ok_accounts()
                .map(|d| d.count(f))
                .sum::<usize>()
                .into(),
        );
    }
    let rows: Vec<Value> = rows(report, true)
        .into_iter()
        .map(|r| {
            let consumers = consumers(&r);
            json!({
                "AccountId": r.account_id,
                "AccountAlias": (!r.account_alias.is_empty()).then_some(&r.account_alias),
                "User": (!r.user.is_empty()).then_some(&r.user),
                "Key": (!r.key.is_empty()).then_some(&r.key),
                "KeySlot": r.key_slot,
                "KeyIdLast4": r.key_id_last4,
                "Status": (!r.status.is_empty()).then_some(&r.status),
                "CreateDate": opt_time(r.created),
                "AgeDays": r.age_days,
                "LastUsedDate": opt_time(r.last_used),
                "LastUsedService": r.last_used_service,
                "LastUsedRegion": r.last_used_region,
                "Finding": r.finding,
                "Detail": r.detail,
                "Consumers": consumers,
            })
        })
        .collect();
    let v = json!({
        "SchemaVersion": SCHEMA_VERSION,
        "GeneratedAt": rfc3339(whole_seconds(report.generated_at)),
        "Policy": {
            "MaxAgeDays": report.policy.max_age_days,
            "MaxUnusedDays": report.policy.max_unused_days,
            "UserPath": report.user_path,
            "Source": report.source.as_str(),
            "Usage": report.usage,
        },
        "Summary": {
            "Accounts": report.accounts.len(),
            "AccountsFailed": report.failed_accounts(),
            "Users": report.ok_accounts().map(|d| d.users).sum::<usize>(),
            "Keys": report.ok_accounts().map(|d| d.keys.len()).sum::<usize>(),
            "CompliantKeys": report.ok_accounts().map(|d| d.compliant()).sum::<usize>(),
            "FindingsTotal": report.findings(),
            "Findings": Value::Object(totals),
            "ExitCode": report.exit_code(),
        },
        "Accounts": accounts,
        "Rows": rows,
    });
    let mut s = serde_json::to_string_pretty(&v).expect("audit JSON serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::super::testdata::sample;
    use super::super::{render, Format};
    use serde_json::Value;

    #[test]
    fn json_has_schema_version_summary_and_rows() {
        let v: Value = serde_json::from_str(&render(&sample(), Format::Json, false)).unwrap();
        assert_eq!(v["SchemaVersion"], 1);
        assert_eq!(v["Summary"]["Accounts"], 2);
        assert_eq!(v["Summary"]["AccountsFailed"], 1);
        assert_eq!(v["Summary"]["Findings"]["too-old"], 1);
        assert_eq!(v["Summary"]["CompliantKeys"], 1);
        assert_eq!(v["Summary"]["ExitCode"], 3);
        assert_eq!(v["Accounts"][0]["AccountAlias"], "prod");
        assert_eq!(v["Accounts"][1]["Status"], "error");
        assert_eq!(v["Rows"][2]["Finding"], "too-old");
        assert_eq!(v["Rows"][2]["AgeDays"], 400);
        assert_eq!(v["Rows"][2]["KeySlot"], 1);
        assert_eq!(v["Rows"][2]["LastUsedService"], "s3");
        assert_eq!(v["Rows"][2]["CreateDate"], "2025-05-11T12:00:00Z");
    }

    #[test]
    fn json_rows_carry_consumers_without_key_ids() {
        let text = render(
            &super::super::testdata::sample_with_usage(),
            Format::Json,
            false,
        );
        assert!(!text.contains("AKIAIOSFODNN7EXAMPLE"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["Policy"]["Usage"], true);
        let rows = v["Rows"].as_array().unwrap();
        let alice = rows.iter().find(|r| r["User"] == "alice").unwrap();
        let c = &alice["Consumers"][0];
        assert_eq!(c["SourceIp"], "10.0.4.17");
        assert_eq!(c["UserAgent"], "aws-cli/2.15.30 Python/3.11.6");
        assert_eq!(c["Events"], 14);
        assert_eq!(c["LastSeen"], "2026-06-15T06:00:00Z");
        assert_eq!(c["TopEvents"][0]["Api"], "s3:ListBuckets");
        assert_eq!(c["Regions"][0], "eu-west-1");
        let bob = rows.iter().find(|r| r["User"] == "bob").unwrap();
        assert_eq!(bob["Consumers"], serde_json::json!([]));
        let carol = rows.iter().find(|r| r["User"] == "carol").unwrap();
        assert!(carol["Consumers"].is_null());
        assert_eq!(v["Accounts"][0]["Usage"]["Regions"][1], "eu-west-1");
        assert!(v["Accounts"][1]["Usage"].is_null());
        // Without --usage the fields are there, null.
        let v: Value = serde_json::from_str(&render(&sample(), Format::Json, false)).unwrap();
        assert!(v["Rows"][1]["Consumers"].is_null());
        assert_eq!(v["Policy"]["Usage"], false);
    }
}
