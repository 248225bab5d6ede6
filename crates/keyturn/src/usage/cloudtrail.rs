//! Where usage events come from: CloudTrail `LookupEvents`, one page at a time, and
//! the regions to ask (configured, or the account's enabled regions).

use super::UsageEvent;
use crate::error::{AwsError, Error, Result};
use aws_config::retry::RetryConfig;
use aws_config::{Region, SdkConfig};
use aws_sdk_cloudtrail::types::{LookupAttribute, LookupAttributeKey};
use aws_smithy_types::DateTime;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use time::OffsetDateTime;

/// CloudTrail returns at most 50 events per `LookupEvents` page.
pub const PAGE_SIZE: i32 = 50;

/// SDK attempts per `LookupEvents` call. Adaptive mode also slows the client down after
/// a throttling error; with the limiter in front, throttling is rare, and ten attempts
/// with backoff up to 20 s ride out a burst from other callers in the account.
pub const MAX_ATTEMPTS: u32 = 10;

/// One page of a key's events in one region.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    pub events: Vec<UsageEvent>,
    pub next_token: Option<String>,
}

/// One `LookupEvents` page (a trait so tests can page through a fake trail).
pub trait EventSource: Send + Sync + 'static {
    fn lookup_page(
        &self,
        region: &str,
        access_key_id: &str,
        start: OffsetDateTime,
        end: OffsetDateTime,
        next_token: Option<String>,
    ) -> impl Future<Output = Result<EventPage>> + Send;
}

/// `LookupEvents` through the SDK, one client per region.
#[derive(Debug, Clone)]
pub struct SdkEventSource {
    clients: HashMap<String, aws_sdk_cloudtrail::Client>,
}

impl SdkEventSource {
    pub fn new(sdk: &SdkConfig, regions: &[String]) -> Self {
        let retry = RetryConfig::adaptive()
            .with_max_attempts(MAX_ATTEMPTS)
            .with_initial_backoff(Duration::from_millis(250))
            .with_max_backoff(Duration::from_secs(20));
        let clients = regions
            .iter()
            .map(|r| {
                let conf = aws_sdk_cloudtrail::config::Builder::from(sdk)
                    .region(Region::new(r.clone()))
                    .retry_config(retry.clone())
                    .build();
                (r.clone(), aws_sdk_cloudtrail::Client::from_conf(conf))
            })
            .collect();
        SdkEventSource { clients }
    }
}

fn sdk_time(t: OffsetDateTime) -> DateTime {
    DateTime::from_secs(t.unix_timestamp())
}

impl EventSource for SdkEventSource {
    async fn lookup_page(
        &self,
        region: &str,
        access_key_id: &str,
        start: OffsetDateTime,
        end: OffsetDateTime,
        next_token: Option<String>,
    ) -> Result<EventPage> {
        let client = self
            .clients
            .get(region)
            .ok_or_else(|| Error::Runtime(format!("no CloudTrail client for region {region}")))?;
        let attribute = LookupAttribute::builder()
            .attribute_key(LookupAttributeKey::AccessKeyId)
            .attribute_value(access_key_id)
            .build()
            .map_err(|e| Error::Runtime(format!("CloudTrail lookup attribute: {e}")))?;
        let out = client
            .lookup_events()
            .lookup_attributes(attribute)
            .start_time(sdk_time(start))
            .end_time(sdk_time(end))
            .max_results(PAGE_SIZE)
            .set_next_token(next_token)
            .send()
            .await
            .map_err(|e| {
                let mut err = AwsError::from_sdk("cloudtrail:LookupEvents", &e);
                err.message = Some(match err.message.take() {
                    Some(m) => format!("in {region}: {m}"),
                    None => format!("in {region}"),
                });
                Error::Aws(err)
            })?;
        let events = out
            .events()
            .iter()
            .filter_map(|e| {
                let time = e
                    .event_time()
                    .and_then(|t| OffsetDateTime::from_unix_timestamp(t.secs()).ok())?;
                Some(UsageEvent::from_lookup(
                    access_key_id,
                    region,
                    e.event_id(),
                    e.event_name(),
                    e.event_source(),
                    time,
                    e.cloud_trail_event(),
                ))
            })
            .collect();
        Ok(EventPage {
            events,
            next_token: out.next_token().map(str::to_string),
        })
    }
}

/// The regions enabled in the caller's account (`account:ListRegions`, all pages,
/// status `ENABLED` or `ENABLED_BY_DEFAULT`), sorted.
///
/// Why not `ec2:DescribeRegions`: the EC2 SDK crate is one of the largest there is and
/// would dominate keyturn's build; the Account API is small and answers exactly "which
/// regions are enabled here". It needs `account:ListRegions`; without it, configure
/// `[usage] regions`.
pub async fn enabled_regions(sdk: &SdkConfig) -> Result<Vec<String>> {
    use aws_sdk_account::types::RegionOptStatus;
    let client = aws_sdk_account::Client::new(sdk);
    let mut regions = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = client
            .list_regions()
            .region_opt_status_contains(RegionOptStatus::Enabled)
            .region_opt_status_contains(RegionOptStatus::EnabledByDefault)
            .max_results(50)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| {
                let mut err = AwsError::from_sdk("account:ListRegions", &e);
                err.message = Some(format!(
                    "{}; or list the regions to search in the settings file ([usage] regions)",
                    err.message.as_deref().unwrap_or("no message")
                ));
                Error::Aws(err)
            })?;
        regions.extend(
            out.regions()
                .iter()
                .filter_map(|r| r.region_name().map(str::to_string)),
        );
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    regions.sort();
    regions.dedup();
    if regions.is_empty() {
        return Err(Error::Runtime(
            "account:ListRegions returned no enabled region; list the regions to search in the settings file ([usage] regions)".into(),
        ));
    }
    Ok(regions)
}
