//! The `report` source: the IAM credential report.
//!
//! One CSV with a row per IAM user (and one for the root user) carrying both access
//! keys' status, rotation date and last use: a handful of calls per account however
//! many users it has, which is what makes auditing an Organization fast. The cost: the
//! report has no key ids (only slots 1 and 2), and AWS reuses a report for up to four
//! hours, so it can be that old; `--source api` avoids both.
//!
//! `GenerateCredentialReport` answers `STARTED` while a report is being built and
//! `COMPLETE` once one exists; keyturn polls it with exponential backoff and then
//! downloads the report with `GetCredentialReport`.

use super::{KeyRecord, KeyRef, ROOT_USER};
use crate::aws::to_time;
use crate::error::{AwsError, AwsErrorKind, Error, Result};
use crate::model::{KeyStatus, LastUsed, Usage};
use aws_sdk_iam::types::ReportStateType;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// First wait after `STARTED`; doubles up to [`POLL_MAX`]. The first poll is quick
/// because small accounts finish in well under a second.
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(3);
/// Give up waiting for the report after this long.
const POLL_DEADLINE: Duration = Duration::from_secs(300);

/// A downloaded and parsed credential report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRead {
    pub generated_at: Option<OffsetDateTime>,
    pub parsed: Parsed,
}

/// The keys in a credential report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// IAM user rows under the user path (the root row is not a user).
    pub users: usize,
    pub records: Vec<KeyRecord>,
}

/// Generate (or reuse) the account's credential report and read its keys. An
/// `AccessDenied` error is returned as such so the caller can fall back to the API.
pub async fn read(iam: &aws_sdk_iam::Client, user_path: &str) -> Result<ReportRead> {
    let started = tokio::time::Instant::now();
    let mut wait = POLL_FIRST;
    loop {
        let out = iam
            .generate_credential_report()
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("iam:GenerateCredentialReport", &e))?;
        if out.state() == Some(&ReportStateType::Complete) {
            match iam.get_credential_report().send().await {
                Ok(report) => {
                    let content = report.content().map(|b| b.as_ref()).unwrap_or_default();
                    let parsed = parse(content, user_path).map_err(|m| {
                        Error::Runtime(format!("cannot read the IAM credential report: {m}"))
                    })?;
                    return Ok(ReportRead {
                        generated_at: report.generated_time().map(to_time),
                        parsed,
                    });
                }
                Err(e) => {
                    let err = AwsError::from_sdk("iam:GetCredentialReport", &e);
                    // The report expired or is being rebuilt between the two calls:
                    // generate again.
                    let not_ready = matches!(&err.kind, AwsErrorKind::Other(code)
                        if matches!(code.as_str(), "ReportNotPresent" | "ReportExpired" | "ReportInProgress"));
                    if !not_ready {
                        return Err(err.into());
                    }
                }
            }
        }
        if started.elapsed() >= POLL_DEADLINE {
            return Err(Error::Runtime(format!(
                "the IAM credential report was not ready after {} s; try again later or use --source api",
                POLL_DEADLINE.as_secs()
            )));
        }
        tracing::debug!(
            wait_ms = wait.as_millis() as u64,
            "credential report not ready"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(POLL_MAX);
    }
}

/// The user path of an IAM user ARN (`arn:aws:iam::1:user/team/a/bob` -> `/team/a/`).
pub fn user_path_of_arn(arn: &str) -> Option<String> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let rest = resource.strip_prefix("user")?;
    let cut = rest.rfind('/')?;
    Some(rest[..=cut].to_string())
}

fn date(value: &str) -> Option<OffsetDateTime> {
    match value {
        "" | "N/A" | "not_supported" | "no_information" => None,
        v => OffsetDateTime::parse(v, &Rfc3339).ok(),
    }
}

fn text(value: &str) -> Option<String> {
    match value {
        "" | "N/A" | "not_supported" | "no_information" => None,
        v => Some(v.to_string()),
    }
}

/// Parse the CSV of `GetCredentialReport` (AWS's documented columns, found by name)
/// into key records, keeping users whose path starts with `user_path`. The root row is
/// kept only for the whole account (`user_path` = `/`).
pub fn parse(csv_bytes: &[u8], user_path: &str) -> std::result::Result<Parsed, String> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(csv_bytes);
    let headers = rdr.headers().map_err(|e| e.to_string())?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("no column {name:?}"))
    };
    let user_col = col("user")?;
    let arn_col = col("arn")?;
    let mut slots = Vec::new();
    for n in [1u8, 2] {
        slots.push((
            n,
            col(&format!("access_key_{n}_active"))?,
            col(&format!("access_key_{n}_last_rotated"))?,
            col(&format!("access_key_{n}_last_used_date"))?,
            col(&format!("access_key_{n}_last_used_region"))?,
            col(&format!("access_key_{n}_last_used_service"))?,
        ));
    }
    let mut parsed = Parsed::default();
    for (i, row) in rdr.records().enumerate() {
        let row = row.map_err(|e| format!("row {}: {e}", i + 2))?;
        let get = |c: usize| row.get(c).unwrap_or("");
        let user = get(user_col);
        let root = user == ROOT_USER;
        if root {
            if user_path != "/" {
                continue;
            }
        } else {
            let path = user_path_of_arn(get(arn_col)).unwrap_or_else(|| "/".into());
            if !path.starts_with(user_path) {
                continue;
            }
            parsed.users += 1;
        }
        for &(n, active, rotated, used, region, service) in &slots {
            // A slot holds a key exactly when it has a rotation date.
            let Some(created) = date(get(rotated)) else {
                continue;
            };
            let usage = match get(used) {
                "no_information" => Usage::Unknown,
                v => match date(v) {
                    Some(d) => Usage::Used(LastUsed {
                        date: d,
                        service: text(get(service)),
                        region: text(get(region)),
                    }),
                    None => Usage::Never,
                },
            };
            parsed.records.push(KeyRecord {
                user: user.to_string(),
                key: KeyRef::Slot(n),
                status: Some(if get(active) == "true" {
                    KeyStatus::Active
                } else {
                    KeyStatus::Inactive
                }),
                created: Some(created),
                usage,
                access_key_id: None,
            });
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const HEADER: &str = "user,arn,user_creation_time,password_enabled,password_last_used,password_last_changed,password_next_rotation,mfa_active,access_key_1_active,access_key_1_last_rotated,access_key_1_last_used_date,access_key_1_last_used_region,access_key_1_last_used_service,access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date,access_key_2_last_used_region,access_key_2_last_used_service,cert_1_active,cert_1_last_rotated,cert_2_active,cert_2_last_rotated";

    fn sample() -> String {
        [
            HEADER,
            "<root_account>,arn:aws:iam::123456789012:root,2020-01-01T00:00:00+00:00,not_supported,N/A,not_supported,not_supported,false,true,2021-03-04T05:06:07+00:00,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A",
            "alice,arn:aws:iam::123456789012:user/alice,2020-01-01T00:00:00+00:00,false,N/A,N/A,N/A,false,true,2026-01-01T00:00:00+00:00,2026-06-01T10:00:00+00:00,eu-west-1,s3,false,2025-01-01T00:00:00+00:00,N/A,N/A,N/A,false,N/A,false,N/A",
            "bob,arn:aws:iam::123456789012:user/bots/ci/bob,2020-01-01T00:00:00+00:00,true,N/A,N/A,N/A,false,false,N/A,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A",
            "carol,arn:aws:iam::123456789012:user/bots/carol,2020-01-01T00:00:00+00:00,false,N/A,N/A,N/A,false,true,2026-05-01T00:00:00+00:00,no_information,N/A,N/A,true,2026-05-02T00:00:00+00:00,2026-05-03T00:00:00+00:00,us-east-1,iam,false,N/A,false,N/A",
        ]
        .join("\n")
    }

    #[test]
    fn parses_keys_per_slot() {
        let p = parse(sample().as_bytes(), "/").unwrap();
        assert_eq!(p.users, 3);
        let got: Vec<(&str, String, Option<KeyStatus>)> = p
            .records
            .iter()
            .map(|r| (r.user.as_str(), r.key.label(), r.status))
            .collect();
        assert_eq!(
            got,
            vec![
                (ROOT_USER, "slot 1".into(), Some(KeyStatus::Active)),
                ("alice", "slot 1".into(), Some(KeyStatus::Active)),
                ("alice", "slot 2".into(), Some(KeyStatus::Inactive)),
                ("carol", "slot 1".into(), Some(KeyStatus::Active)),
                ("carol", "slot 2".into(), Some(KeyStatus::Active)),
            ]
        );
        let alice = &p.records[1];
        assert_eq!(alice.created, Some(datetime!(2026-01-01 0:00 UTC)));
        assert_eq!(
            alice.usage,
            Usage::Used(LastUsed {
                date: datetime!(2026-06-01 10:00 UTC),
                service: Some("s3".into()),
                region: Some("eu-west-1".into()),
            })
        );
        assert_eq!(p.records[2].usage, Usage::Never);
        assert_eq!(p.records[3].usage, Usage::Unknown);
        assert_eq!(p.records[0].usage, Usage::Never);
    }

    #[test]
    fn user_path_filters_rows_and_drops_root() {
        let p = parse(sample().as_bytes(), "/bots/").unwrap();
        assert_eq!(p.users, 2);
        assert!(p.records.iter().all(|r| r.user == "carol"));
        let p = parse(sample().as_bytes(), "/bots/ci/").unwrap();
        assert_eq!(p.users, 1);
        assert!(p.records.is_empty());
    }

    #[test]
    fn missing_columns_are_errors() {
        let e = parse(b"user,arn\nx,y\n", "/").unwrap_err();
        assert!(e.contains("access_key_1_active"), "{e}");
    }

    #[test]
    fn ragged_rows_are_errors() {
        let text = format!("{HEADER}\nalice,arn:aws:iam::1:user/alice\n");
        assert!(parse(text.as_bytes(), "/").is_err());
    }

    #[test]
    fn paths_from_arns() {
        assert_eq!(
            user_path_of_arn("arn:aws:iam::1:user/alice").as_deref(),
            Some("/")
        );
        assert_eq!(
            user_path_of_arn("arn:aws:iam::1:user/a/b/alice").as_deref(),
            Some("/a/b/")
        );
        assert_eq!(user_path_of_arn("arn:aws:iam::1:root"), None);
    }
}
