//! `--format json`: the whole result with a stable schema (`SchemaVersion`, documented
//! in `docs/audit.md`), compliant keys included with finding `ok`.

use super::{rows, whole_seconds};
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
}
