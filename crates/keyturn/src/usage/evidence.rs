//! CloudTrail evidence for fleet runs: who still uses the old key, and since when the
//! new one is used, as the fleet planner's [`Evidence`].
//!
//! With `usage = "cloudtrail"` the planner retires an old key only once no consumer
//! used it for `quiet_hours` after the new key's first use, and its `waiting` and
//! forced-retirement reasons name the consumers. [`CloudTrailEvidence`] is the
//! [`EvidenceSource`] the runner asks: one [`UsageClient`] per account (built on first
//! use and kept, so every user of the account shares CloudTrail's 2 lookups/s per
//! region), over the old keys and the new key since the rotation.
//!
//! The answer is complete only up to CloudTrail's delivery delay (about 15 minutes):
//! [`Evidence::complete_until`] is the lookup time minus [`DELIVERY_DELAY`], so quiet
//! time is never counted for minutes whose events may still arrive.

use super::{
    resolve_regions, Consumer, EventSource, SdkEventSource, UsageClient, UsageQuery, UsageReport,
    DEFAULT_MAX_PAGES,
};
use crate::access::Account;
use crate::error::Result;
use crate::fleet::planner::{self, Evidence};
use crate::fleet::runner::EvidenceSource;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use time::{Duration, OffsetDateTime};
use tokio::sync::Mutex;

/// How late CloudTrail delivers an event (AWS: typically within about 15 minutes).
pub const DELIVERY_DELAY: Duration = Duration::minutes(15);

/// How a [`CloudTrailEvidence`] builds the lookup client of an account (tests give an
/// in-memory trail).
type ClientFactory<S> = Box<
    dyn Fn(&Account) -> Pin<Box<dyn Future<Output = Result<UsageClient<S>>> + Send>> + Send + Sync,
>;

/// [`EvidenceSource`] over CloudTrail `LookupEvents`.
pub struct CloudTrailEvidence<S: EventSource = SdkEventSource> {
    factory: ClientFactory<S>,
    clients: Mutex<HashMap<String, UsageClient<S>>>,
    max_pages: u32,
}

impl CloudTrailEvidence<SdkEventSource> {
    /// Look up in `[usage] regions` (`None`: each account's enabled regions).
    pub fn new(regions: Option<Vec<String>>) -> Self {
        let factory: ClientFactory<SdkEventSource> = Box::new(move |account: &Account| {
            let sdk = account.config.clone();
            let regions = regions.clone();
            Box::pin(async move {
                let regions = resolve_regions(&sdk, regions.as_deref()).await?;
                Ok(UsageClient::new(&sdk, regions))
            })
        });
        Self::with_factory(factory)
    }
}

impl<S: EventSource> CloudTrailEvidence<S> {
    /// One client for every account (tests).
    pub fn with_client(client: UsageClient<S>) -> Self {
        Self::with_factory(Box::new(move |_: &Account| {
            let c = client.clone();
            Box::pin(async move { Ok(c) })
        }))
    }

    fn with_factory(factory: ClientFactory<S>) -> Self {
        CloudTrailEvidence {
            factory,
            clients: Mutex::new(HashMap::new()),
            max_pages: DEFAULT_MAX_PAGES,
        }
    }

    async fn client(&self, account: &Account) -> Result<UsageClient<S>> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&account.id) {
            return Ok(c.clone());
        }
        let c = (self.factory)(account).await?;
        clients.insert(account.id.clone(), c.clone());
        Ok(c)
    }

    /// The evidence for `old_keys` and `new_key` over `[since, now]`.
    pub async fn lookup(
        &self,
        account: &Account,
        old_keys: &[String],
        new_key: &str,
        since: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Evidence> {
        let client = self.client(account).await?;
        let mut keys = old_keys.to_vec();
        keys.push(new_key.to_string());
        let query = UsageQuery {
            access_key_ids: keys,
            since,
            until: Some(now),
            max_pages: self.max_pages,
        };
        let report = client.consumers_at(&query, now).await?;
        Ok(evidence_from(&report, old_keys, new_key, now))
    }
}

#[async_trait::async_trait]
impl<S: EventSource> EvidenceSource for CloudTrailEvidence<S> {
    async fn evidence(
        &self,
        account: &Account,
        _user: &str,
        old_keys: &[String],
        new_key: &str,
        since: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Evidence> {
        self.lookup(account, old_keys, new_key, since, now).await
    }
}

/// The planner's evidence from a lookup (pure): the old keys' consumers (most
/// recently seen first), the new key's first use by a consumer (keyturn's own
/// verification calls are not consumers), complete up to `now - DELIVERY_DELAY`.
pub fn evidence_from(
    report: &UsageReport,
    old_keys: &[String],
    new_key: &str,
    now: OffsetDateTime,
) -> Evidence {
    let mut old: Vec<&Consumer> = old_keys
        .iter()
        .filter_map(|k| report.key(k))
        .flat_map(|k| k.consumers.iter())
        .collect();
    old.sort_by(|a, b| {
        b.last_seen
            .cmp(&a.last_seen)
            .then_with(|| b.events.cmp(&a.events))
    });
    Evidence {
        complete_until: Some(report.until.min(now) - DELIVERY_DELAY),
        old_key: old.into_iter().map(planner_consumer).collect(),
        new_key_first_use: report
            .key(new_key)
            .and_then(|k| k.consumers.iter().map(|c| c.first_seen).min()),
    }
}

/// The planner's view of a consumer. The user agent is shortened to its tool (the
/// first token, `aws-cli/2.15.30`) so reasons stay one readable line; the full user
/// agent is in `keyturn audit --usage`.
pub fn planner_consumer(c: &Consumer) -> planner::Consumer {
    planner::Consumer {
        source_ip: if c.source_ip.is_empty() {
            "an unknown address".into()
        } else {
            c.source_ip.clone()
        },
        user_agent: c.tool().to_string(),
        events: c.events,
        first: c.first_seen,
        last: c.last_seen,
        top_events: c.top_events.iter().take(3).map(|a| a.api.clone()).collect(),
        regions: c.regions.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{EventPage, UsageEvent};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);
    const ROTATED: OffsetDateTime = datetime!(2026-03-09 12:00 UTC);
    const OLD: &str = "AKIAOLD0000000000001";
    const NEW: &str = "AKIANEW0000000000001";
    const CLI: &str = "aws-cli/2.15.30 Python/3.11.6 Linux/6.1 exe/x86_64 prompt/off";
    const BOTO: &str = "Boto3/1.34.0 md/Botocore#1.34.0";
    const KEYTURN: &str = "aws-sdk-rust/1.3.9 os/linux lang/rust#1.95.0 app/keyturn";

    /// An in-memory trail: every event in one page, filtered by key and window.
    #[derive(Default)]
    struct Trail {
        events: Vec<UsageEvent>,
        calls: AtomicUsize,
    }

    impl EventSource for Trail {
        async fn lookup_page(
            &self,
            region: &str,
            key: &str,
            start: OffsetDateTime,
            end: OffsetDateTime,
            _next: Option<String>,
        ) -> Result<EventPage> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(EventPage {
                events: self
                    .events
                    .iter()
                    .filter(|e| {
                        e.access_key_id == key
                            && e.region == region
                            && e.time >= start
                            && e.time <= end
                    })
                    .cloned()
                    .collect(),
                next_token: None,
            })
        }
    }

    fn ev(n: u32, key: &str, minutes_ago: i64, ip: &str, ua: &str, api: &str) -> UsageEvent {
        let (service, name) = api.split_once(':').unwrap();
        UsageEvent {
            event_id: format!("e{n}"),
            access_key_id: key.into(),
            time: NOW - Duration::minutes(minutes_ago),
            event_name: name.into(),
            event_source: format!("{service}.amazonaws.com"),
            region: "us-east-1".into(),
            source_ip: ip.into(),
            user_agent: ua.into(),
            error_code: None,
        }
    }

    fn account(id: &str) -> Account {
        Account {
            id: id.into(),
            name: None,
            via: "caller".into(),
            config: aws_config::SdkConfig::builder().build(),
        }
    }

    fn source(events: Vec<UsageEvent>) -> (CloudTrailEvidence<Trail>, Arc<AtomicUsize>) {
        let trail = Trail {
            events,
            ..Trail::default()
        };
        let client = UsageClient::with_source(trail, vec!["us-east-1".into()], 1000.0);
        let built = Arc::new(AtomicUsize::new(0));
        let counter = built.clone();
        let factory: ClientFactory<Trail> = Box::new(move |_: &Account| {
            counter.fetch_add(1, Ordering::SeqCst);
            let c = client.clone();
            Box::pin(async move { Ok(c) })
        });
        (CloudTrailEvidence::with_factory(factory), built)
    }

    /// One host keeps calling with the old key, another switched to the new key,
    /// keyturn verified the new key: the old key's consumers are the first host only,
    /// the new key's first use is the second host's, not keyturn's.
    #[tokio::test]
    async fn names_the_host_still_on_the_old_key() {
        let mut events = Vec::new();
        for i in 0..14 {
            events.push(ev(
                i,
                OLD,
                60 * 23 - i64::from(i) * 60,
                "10.0.4.17",
                CLI,
                "s3:ListBuckets",
            ));
        }
        // Before the rotation: outside the window.
        events.push(ev(
            50,
            OLD,
            60 * 30,
            "10.0.9.9",
            BOTO,
            "sts:GetCallerIdentity",
        ));
        events.push(ev(
            51,
            NEW,
            60 * 23 + 30,
            "10.0.9.10",
            KEYTURN,
            "sts:GetCallerIdentity",
        ));
        events.push(ev(
            52,
            NEW,
            60 * 20,
            "10.0.9.9",
            BOTO,
            "sts:GetCallerIdentity",
        ));
        events.push(ev(53, NEW, 60 * 2, "10.0.9.9", BOTO, "s3:ListBuckets"));
        let (src, built) = source(events);
        let a = account("111122223333");
        let e = src
            .evidence(&a, "app", &[OLD.to_string()], NEW, ROTATED, NOW)
            .await
            .unwrap();
        assert_eq!(e.complete_until, Some(NOW - Duration::minutes(15)));
        assert_eq!(e.new_key_first_use, Some(NOW - Duration::hours(20)));
        assert_eq!(e.old_key.len(), 1, "{:?}", e.old_key);
        assert_eq!(
            e.old_key[0].describe(),
            "used 14 times in 13 h by 10.0.4.17 aws-cli/2.15.30 (s3:ListBuckets in us-east-1)"
        );
        // The same account again: the client (and its rate limiter) is reused.
        src.evidence(&a, "other", &[OLD.to_string()], NEW, ROTATED, NOW)
            .await
            .unwrap();
        assert_eq!(built.load(Ordering::SeqCst), 1);
        src.evidence(
            &account("444455556666"),
            "x",
            &[OLD.to_string()],
            NEW,
            ROTATED,
            NOW,
        )
        .await
        .unwrap();
        assert_eq!(built.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_quiet_old_key_and_an_unused_new_key() {
        let events = vec![ev(
            1,
            NEW,
            30,
            "10.0.9.10",
            KEYTURN,
            "sts:GetCallerIdentity",
        )];
        let (src, _) = source(events);
        let e = src
            .evidence(
                &account("111122223333"),
                "app",
                &[OLD.into()],
                NEW,
                ROTATED,
                NOW,
            )
            .await
            .unwrap();
        assert!(e.old_key.is_empty());
        assert_eq!(
            e.new_key_first_use, None,
            "keyturn's own use is not a switch"
        );
    }

    #[test]
    fn consumers_of_several_old_keys_are_merged_newest_first() {
        use crate::usage::group_events;
        let a = group_events(OLD, [ev(1, OLD, 300, "10.0.0.1", CLI, "s3:ListBuckets")]);
        let b = group_events("AKIAOLD2", [ev(2, "AKIAOLD2", 10, "", "", "iam:GetUser")]);
        let report = UsageReport {
            since: ROTATED,
            until: NOW,
            regions: vec!["us-east-1".into()],
            keys: vec![a, b],
        };
        let e = evidence_from(&report, &[OLD.into(), "AKIAOLD2".into()], NEW, NOW);
        let who: Vec<(&str, &str)> = e
            .old_key
            .iter()
            .map(|c| (c.source_ip.as_str(), c.user_agent.as_str()))
            .collect();
        assert_eq!(
            who,
            [
                ("an unknown address", "an unknown client"),
                ("10.0.0.1", "aws-cli/2.15.30")
            ]
        );
    }
}
