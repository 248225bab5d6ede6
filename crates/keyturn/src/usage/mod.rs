//! Who uses an access key: its consumers, from CloudTrail management events.
//!
//! `GetAccessKeyLastUsed` tells when a key was last used, for one service in one
//! region. Before keyturn retires a key the operator's question is *who* still uses it:
//! which host, which tool, which API. This module asks CloudTrail `LookupEvents` for the
//! events signed with each key, in every configured region (IAM and STS events land in
//! us-east-1), following `NextToken`, and groups them into [`Consumer`]s: one per
//! (source IP, user agent), with event count, first and last time, top APIs and
//! regions. keyturn's own calls carry `app/keyturn` in their user agent
//! ([`crate::remote::APP_NAME`]) and are counted apart, never as consumers.
//!
//! Rate: CloudTrail allows `LookupEvents` 2 requests per second per account and region.
//! [`UsageClient`] holds one [`RateLimiter`] per region (share one client per account
//! between callers) and the SDK's adaptive retry mode absorbs the throttling that
//! remains. Regions are searched concurrently, keys one after another per region.
//!
//! What CloudTrail cannot show (see docs/usage.md): data events such as S3 object
//! reads are not returned by `LookupEvents`; events arrive up to about 15 minutes late;
//! trails of other accounts are not visible; only the last 90 days are kept.

mod cloudtrail;
pub mod evidence;
mod limiter;

pub use cloudtrail::{enabled_regions, EventPage, EventSource, SdkEventSource, PAGE_SIZE};
pub use evidence::CloudTrailEvidence;
pub use limiter::RateLimiter;

use crate::error::{Error, Result};
use aws_config::SdkConfig;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// CloudTrail keeps management events for this long; `LookupEvents` sees no further.
pub const MAX_WINDOW: Duration = Duration::days(90);

/// CloudTrail's `LookupEvents` limit per account and region, in requests per second.
pub const LOOKUP_RATE: f64 = 2.0;

/// Default cap on pages walked per key and region (50 events each): the newest 2,500
/// events. A key used more than that in the window is named by its newest events; the
/// result says the walk stopped ([`KeyUsage::truncated_regions`]).
pub const DEFAULT_MAX_PAGES: u32 = 50;

/// How many APIs a [`Consumer`] keeps (and its description names up to three).
const TOP_EVENTS: usize = 5;

/// Is this user agent keyturn's own (`app/keyturn` token, set by [`crate::remote`])?
pub fn is_keyturn_user_agent(user_agent: &str) -> bool {
    let own = format!("app/{}", crate::remote::APP_NAME);
    user_agent.split_whitespace().any(|t| t == own)
}

/// One CloudTrail management event signed with the key, reduced to what grouping needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    pub event_id: String,
    pub access_key_id: String,
    pub time: OffsetDateTime,
    /// `ListBuckets`
    pub event_name: String,
    /// `s3.amazonaws.com`
    pub event_source: String,
    /// `awsRegion` of the event.
    pub region: String,
    pub source_ip: String,
    pub user_agent: String,
    /// `errorCode` when the call failed (a consumer whose calls fail is still one).
    pub error_code: Option<String>,
}

impl UsageEvent {
    /// Build from a `LookupEvents` event; the `CloudTrailEvent` JSON record supplies
    /// source IP, user agent, region and error code.
    pub fn from_lookup(
        access_key_id: &str,
        region_asked: &str,
        event_id: Option<&str>,
        event_name: Option<&str>,
        event_source: Option<&str>,
        time: OffsetDateTime,
        record: Option<&str>,
    ) -> Self {
        let record: serde_json::Value = record
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or_default();
        let field = |name: &str| {
            record
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        UsageEvent {
            event_id: event_id
                .map(str::to_string)
                .or_else(|| field("eventID"))
                .unwrap_or_default(),
            access_key_id: access_key_id.to_string(),
            time,
            event_name: event_name
                .map(str::to_string)
                .or_else(|| field("eventName"))
                .unwrap_or_default(),
            event_source: event_source
                .map(str::to_string)
                .or_else(|| field("eventSource"))
                .unwrap_or_default(),
            region: field("awsRegion").unwrap_or_else(|| region_asked.to_string()),
            source_ip: field("sourceIPAddress").unwrap_or_default(),
            user_agent: field("userAgent").unwrap_or_default(),
            error_code: field("errorCode"),
        }
    }

    /// `s3:ListBuckets`: the service prefix of `eventSource`, then the event name.
    pub fn api(&self) -> String {
        let service = self
            .event_source
            .strip_suffix(".amazonaws.com")
            .unwrap_or(&self.event_source);
        format!("{service}:{}", self.event_name)
    }

    pub fn is_keyturn(&self) -> bool {
        is_keyturn_user_agent(&self.user_agent)
    }
}

/// An API and how often a consumer called it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiCount {
    pub api: String,
    pub count: u64,
}

/// One consumer of an access key: a (source IP, user agent) pair seen in CloudTrail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Consumer {
    pub access_key_id: String,
    pub source_ip: String,
    pub user_agent: String,
    pub events: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// Most called APIs first (at most five).
    pub top_events: Vec<ApiCount>,
    /// Regions of its events, most events first.
    pub regions: Vec<String>,
}

impl Consumer {
    /// The tool: the first token of the user agent (`aws-cli/2.15.30`).
    pub fn tool(&self) -> &str {
        self.user_agent
            .split_whitespace()
            .next()
            .unwrap_or("an unknown client")
    }

    /// One line for people: "used 14 times in 24 h by 10.0.4.17 aws-cli/2.15.30
    /// (s3:ListBuckets, ec2:DescribeInstances in eu-west-1)".
    pub fn describe(&self) -> String {
        let times = if self.events == 1 {
            "once".to_string()
        } else {
            format!(
                "{} times in {}",
                self.events,
                span(self.last_seen - self.first_seen)
            )
        };
        let apis: Vec<&str> = self
            .top_events
            .iter()
            .take(3)
            .map(|a| a.api.as_str())
            .collect();
        let ip = if self.source_ip.is_empty() {
            "an unknown address"
        } else {
            &self.source_ip
        };
        format!(
            "used {times} by {ip} {} ({} in {})",
            self.tool(),
            apis.join(", "),
            self.regions.join(", ")
        )
    }
}

impl std::fmt::Display for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A duration the way people say it: "5 min", "24 h", "3 days" (rounded up).
fn span(d: Duration) -> String {
    let secs = d.whole_seconds().max(0);
    let up = |unit: i64| (secs + unit - 1) / unit;
    if secs < 3600 {
        format!("{} min", up(60).max(1))
    } else if secs < 48 * 3600 {
        format!("{} h", up(3600))
    } else {
        format!("{} days", up(86400))
    }
}

/// The consumers of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyUsage {
    pub access_key_id: String,
    /// Most recently seen first.
    pub consumers: Vec<Consumer>,
    /// Events of the consumers.
    pub events: u64,
    /// keyturn's own calls with this key (verification, retirement): not consumers.
    pub own_events: u64,
    /// Regions where the walk stopped at the page cap (older events not read).
    pub truncated_regions: Vec<String>,
}

impl KeyUsage {
    /// No consumer used the key in the window (keyturn's own calls aside).
    pub fn is_unused(&self) -> bool {
        self.consumers.is_empty()
    }
}

/// Group one key's events into consumers. Events seen twice (same event id) count once;
/// keyturn's own events are counted apart.
pub fn group_events(access_key_id: &str, events: impl IntoIterator<Item = UsageEvent>) -> KeyUsage {
    struct Acc {
        events: u64,
        first: OffsetDateTime,
        last: OffsetDateTime,
        apis: HashMap<String, u64>,
        regions: HashMap<String, u64>,
    }
    let mut seen = HashSet::new();
    let mut own = 0u64;
    let mut total = 0u64;
    let mut groups: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for e in events {
        if !e.event_id.is_empty() && !seen.insert(e.event_id.clone()) {
            continue;
        }
        if e.is_keyturn() {
            own += 1;
            continue;
        }
        total += 1;
        let acc = groups
            .entry((e.source_ip.clone(), e.user_agent.clone()))
            .or_insert(Acc {
                events: 0,
                first: e.time,
                last: e.time,
                apis: HashMap::new(),
                regions: HashMap::new(),
            });
        acc.events += 1;
        acc.first = acc.first.min(e.time);
        acc.last = acc.last.max(e.time);
        *acc.apis.entry(e.api()).or_default() += 1;
        *acc.regions.entry(e.region.clone()).or_default() += 1;
    }
    let ranked = |m: HashMap<String, u64>| {
        let mut v: Vec<(String, u64)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    };
    let mut consumers: Vec<Consumer> = groups
        .into_iter()
        .map(|((source_ip, user_agent), acc)| Consumer {
            access_key_id: access_key_id.to_string(),
            source_ip,
            user_agent,
            events: acc.events,
            first_seen: acc.first,
            last_seen: acc.last,
            top_events: ranked(acc.apis)
                .into_iter()
                .take(TOP_EVENTS)
                .map(|(api, count)| ApiCount { api, count })
                .collect(),
            regions: ranked(acc.regions).into_iter().map(|(r, _)| r).collect(),
        })
        .collect();
    consumers.sort_by(|a, b| {
        b.last_seen
            .cmp(&a.last_seen)
            .then_with(|| b.events.cmp(&a.events))
            .then_with(|| a.source_ip.cmp(&b.source_ip))
            .then_with(|| a.user_agent.cmp(&b.user_agent))
    });
    KeyUsage {
        access_key_id: access_key_id.to_string(),
        consumers,
        events: total,
        own_events: own,
        truncated_regions: Vec::new(),
    }
}

/// Which keys, over which window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub access_key_ids: Vec<String>,
    /// Start of the window (e.g. the rotation time). Clamped to the last 90 days.
    pub since: OffsetDateTime,
    /// End of the window; `None` = now.
    pub until: Option<OffsetDateTime>,
    /// Pages walked at most per key and region.
    pub max_pages: u32,
}

impl UsageQuery {
    /// The consumers of `keys` since `since` (until now).
    pub fn since(keys: impl IntoIterator<Item = impl Into<String>>, since: OffsetDateTime) -> Self {
        UsageQuery {
            access_key_ids: keys.into_iter().map(Into::into).collect(),
            since,
            until: None,
            max_pages: DEFAULT_MAX_PAGES,
        }
    }

    /// The window asked of CloudTrail at `now`: (start, end), start no earlier than 90
    /// days ago and no later than the end.
    pub fn window(&self, now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
        let end = self.until.unwrap_or(now).min(now);
        let start = self.since.max(now - MAX_WINDOW).min(end);
        (start, end)
    }
}

/// The answer for a [`UsageQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UsageReport {
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    pub regions: Vec<String>,
    /// One entry per key asked, in the order asked.
    pub keys: Vec<KeyUsage>,
}

impl UsageReport {
    pub fn key(&self, access_key_id: &str) -> Option<&KeyUsage> {
        self.keys.iter().find(|k| k.access_key_id == access_key_id)
    }
}

/// Check configured region names (`[usage] regions`).
pub fn validate_regions(regions: &[String]) -> Result<()> {
    if regions.is_empty() {
        return Err(Error::InvalidInput(
            "[usage] regions is empty; list at least us-east-1 (IAM and STS events land there), or remove the key to search every enabled region".into(),
        ));
    }
    for r in regions {
        let parts: Vec<&str> = r.split('-').collect();
        let ok = parts.len() >= 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
            && parts
                .last()
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(Error::InvalidInput(format!(
                "[usage] regions: {r:?} is not a region name (like \"eu-west-1\")"
            )));
        }
    }
    Ok(())
}

/// The regions to search: the configured list (validated), else the account's enabled
/// regions.
pub async fn resolve_regions(
    sdk: &SdkConfig,
    configured: Option<&[String]>,
) -> Result<Vec<String>> {
    match configured {
        Some(list) => {
            validate_regions(list)?;
            let mut v = list.to_vec();
            v.dedup();
            Ok(v)
        }
        None => enabled_regions(sdk).await,
    }
}

/// CloudTrail usage lookups for one account: one client and one rate limiter per
/// region. Cheap to clone; share one per account so every caller stays within
/// CloudTrail's rate together.
pub struct UsageClient<S: EventSource = SdkEventSource> {
    source: Arc<S>,
    regions: Arc<Vec<String>>,
    limiters: Arc<HashMap<String, RateLimiter>>,
}

impl<S: EventSource> Clone for UsageClient<S> {
    fn clone(&self) -> Self {
        UsageClient {
            source: self.source.clone(),
            regions: self.regions.clone(),
            limiters: self.limiters.clone(),
        }
    }
}

impl UsageClient<SdkEventSource> {
    /// Look up in `regions` with the account's SDK config (see [`resolve_regions`]).
    pub fn new(sdk: &SdkConfig, regions: Vec<String>) -> Self {
        let source = SdkEventSource::new(sdk, &regions);
        Self::with_source(source, regions, LOOKUP_RATE)
    }
}

impl<S: EventSource> UsageClient<S> {
    /// Any event source, at `rate` lookups per second per region.
    pub fn with_source(source: S, regions: Vec<String>, rate: f64) -> Self {
        let limiters = regions
            .iter()
            .map(|r| (r.clone(), RateLimiter::new(rate)))
            .collect();
        UsageClient {
            source: Arc::new(source),
            regions: Arc::new(regions),
            limiters: Arc::new(limiters),
        }
    }

    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    /// The consumers of the query's keys, now.
    pub async fn consumers(&self, query: &UsageQuery) -> Result<UsageReport> {
        self.consumers_at(query, OffsetDateTime::now_utc()).await
    }

    /// The consumers of the query's keys, with `now` as the clock.
    pub async fn consumers_at(
        &self,
        query: &UsageQuery,
        now: OffsetDateTime,
    ) -> Result<UsageReport> {
        let (start, end) = query.window(now);
        let mut tasks = tokio::task::JoinSet::new();
        for region in self.regions.iter().cloned() {
            let this = self.clone();
            let keys = query.access_key_ids.clone();
            let max_pages = query.max_pages.max(1);
            tasks.spawn(async move {
                let mut out = Vec::new();
                for key in keys {
                    let walked = this.walk(&region, &key, start, end, max_pages).await?;
                    out.push((key, walked));
                }
                Ok::<_, Error>((region, out))
            });
        }
        let mut by_key: HashMap<String, (Vec<UsageEvent>, Vec<String>)> = HashMap::new();
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok((region, keys))) => {
                    for (key, (events, truncated)) in keys {
                        let entry = by_key.entry(key).or_default();
                        entry.0.extend(events);
                        if truncated {
                            entry.1.push(region.clone());
                        }
                    }
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error
                        .get_or_insert(Error::Runtime(format!("CloudTrail lookup task: {e}")));
                }
            }
        }
        // Partial evidence would under-report consumers: fail the whole lookup.
        if let Some(e) = first_error {
            return Err(e);
        }
        let keys = query
            .access_key_ids
            .iter()
            .map(|key| {
                let (events, mut truncated) = by_key.remove(key).unwrap_or_default();
                let mut usage = group_events(key, events);
                truncated.sort();
                usage.truncated_regions = truncated;
                usage
            })
            .collect();
        Ok(UsageReport {
            since: start,
            until: end,
            regions: self.regions.to_vec(),
            keys,
        })
    }

    /// All pages of one key in one region (up to `max_pages`); true if more were left.
    async fn walk(
        &self,
        region: &str,
        key: &str,
        start: OffsetDateTime,
        end: OffsetDateTime,
        max_pages: u32,
    ) -> Result<(Vec<UsageEvent>, bool)> {
        let limiter = &self.limiters[region];
        let mut events = Vec::new();
        let mut token = None;
        for _ in 0..max_pages {
            limiter.acquire().await;
            let page = self
                .source
                .lookup_page(region, key, start, end, token.take())
                .await?;
            events.extend(page.events);
            match page.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok((events, false)),
            }
        }
        Ok((events, true))
    }
}

#[cfg(test)]
mod tests;
