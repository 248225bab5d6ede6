use super::*;
use std::sync::Mutex;
use time::macros::datetime;

const KEY: &str = "AKIAOLDKEY0000000001";
const NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);
const CLI: &str =
    "aws-cli/2.15.30 Python/3.11.6 Linux/6.1 exe/x86_64.ubuntu.22 prompt/off command/s3.ls";
const KEYTURN: &str =
    "aws-sdk-rust/1.3.9 ua/2.1 api/sts#1.124.0 os/linux lang/rust#1.95.0 app/keyturn";

fn event(n: u32, hours_ago: i64, ip: &str, ua: &str, api: &str, region: &str) -> UsageEvent {
    let (service, name) = api.split_once(':').unwrap();
    UsageEvent {
        event_id: format!("ev-{n}"),
        access_key_id: KEY.into(),
        time: NOW - Duration::hours(hours_ago),
        event_name: name.into(),
        event_source: format!("{service}.amazonaws.com"),
        region: region.into(),
        source_ip: ip.into(),
        user_agent: ua.into(),
        error_code: None,
    }
}

#[test]
fn groups_by_source_ip_and_user_agent() {
    let mut events = Vec::new();
    for i in 0..10 {
        events.push(event(
            i,
            24 - i as i64,
            "10.0.4.17",
            CLI,
            "s3:ListBuckets",
            "eu-west-1",
        ));
    }
    for i in 10..14 {
        events.push(event(
            i,
            2,
            "10.0.4.17",
            CLI,
            "ec2:DescribeInstances",
            "eu-west-1",
        ));
    }
    events.push(event(
        20,
        5,
        "10.0.9.9",
        "Boto3/1.34.0 md/Botocore#1.34.0",
        "sts:GetCallerIdentity",
        "us-east-1",
    ));
    events.push(event(
        21,
        1,
        "10.0.4.17",
        KEYTURN,
        "sts:GetCallerIdentity",
        "us-east-1",
    ));
    let usage = group_events(KEY, events);
    assert_eq!(usage.events, 15);
    assert_eq!(usage.own_events, 1, "keyturn's own call is not a consumer");
    assert_eq!(usage.consumers.len(), 2);
    let cli = &usage.consumers[0];
    assert_eq!((cli.source_ip.as_str(), cli.events), ("10.0.4.17", 14));
    assert_eq!(cli.first_seen, NOW - Duration::hours(24));
    assert_eq!(cli.last_seen, NOW - Duration::hours(2));
    assert_eq!(
        cli.top_events,
        vec![
            ApiCount {
                api: "s3:ListBuckets".into(),
                count: 10
            },
            ApiCount {
                api: "ec2:DescribeInstances".into(),
                count: 4
            },
        ]
    );
    assert_eq!(cli.regions, vec!["eu-west-1".to_string()]);
    assert_eq!(
        cli.describe(),
        "used 14 times in 22 h by 10.0.4.17 aws-cli/2.15.30 (s3:ListBuckets, ec2:DescribeInstances in eu-west-1)"
    );
    assert_eq!(
        usage.consumers[1].describe(),
        "used once by 10.0.9.9 Boto3/1.34.0 (sts:GetCallerIdentity in us-east-1)"
    );
    assert!(!usage.is_unused());
}

#[test]
fn same_ip_with_another_user_agent_is_another_consumer() {
    let usage = group_events(
        KEY,
        vec![
            event(1, 3, "10.0.4.17", CLI, "s3:ListBuckets", "us-east-1"),
            event(
                2,
                1,
                "10.0.4.17",
                "terraform/1.7.0",
                "iam:GetUser",
                "us-east-1",
            ),
        ],
    );
    assert_eq!(usage.consumers.len(), 2);
    assert_eq!(usage.consumers[0].tool(), "terraform/1.7.0", "newest first");
}

#[test]
fn duplicate_events_count_once_and_regions_rank_by_events() {
    let mut events = vec![
        event(1, 3, "10.0.0.1", CLI, "s3:ListBuckets", "us-east-1"),
        event(2, 2, "10.0.0.1", CLI, "s3:ListBuckets", "eu-west-1"),
        event(3, 1, "10.0.0.1", CLI, "s3:ListBuckets", "eu-west-1"),
    ];
    events.push(events[0].clone());
    let usage = group_events(KEY, events);
    assert_eq!(usage.events, 3);
    assert_eq!(usage.consumers[0].regions, vec!["eu-west-1", "us-east-1"]);
    assert!(usage.consumers[0]
        .describe()
        .ends_with("(s3:ListBuckets in eu-west-1, us-east-1)"));
}

#[test]
fn only_keyturn_calls_means_unused() {
    let usage = group_events(
        KEY,
        vec![event(
            1,
            1,
            "127.0.0.1",
            KEYTURN,
            "sts:GetCallerIdentity",
            "us-east-1",
        )],
    );
    assert!(usage.is_unused());
    assert_eq!((usage.events, usage.own_events), (0, 1));
}

#[test]
fn keyturn_user_agent_is_an_exact_token() {
    assert!(is_keyturn_user_agent(KEYTURN));
    assert!(!is_keyturn_user_agent(
        "aws-sdk-rust/1.3.9 app/keyturn-fake"
    ));
    assert!(!is_keyturn_user_agent("my-app/keyturn"));
    assert!(!is_keyturn_user_agent(""));
}

#[test]
fn description_spans_and_top_three() {
    assert_eq!(span(Duration::seconds(0)), "1 min");
    assert_eq!(span(Duration::seconds(61)), "2 min");
    assert_eq!(span(Duration::hours(24)), "24 h");
    assert_eq!(span(Duration::hours(47) + Duration::minutes(1)), "48 h");
    assert_eq!(span(Duration::hours(49)), "3 days");
    let events = [
        "a:One", "a:One", "a:One", "b:Two", "b:Two", "c:Three", "d:Four",
    ]
    .iter()
    .enumerate()
    .map(|(i, api)| event(i as u32, i as i64, "10.1.1.1", "", api, "us-east-1"));
    let usage = group_events(KEY, events);
    let c = &usage.consumers[0];
    assert_eq!(c.top_events.len(), 4);
    assert_eq!(
        c.describe(),
        "used 7 times in 6 h by 10.1.1.1 an unknown client (a:One, b:Two, c:Three in us-east-1)"
    );
}

#[test]
fn window_is_clamped_to_ninety_days() {
    let q = UsageQuery::since([KEY], NOW - Duration::days(400));
    assert_eq!(q.window(NOW), (NOW - Duration::days(90), NOW));
    let q = UsageQuery::since([KEY], NOW - Duration::days(1));
    assert_eq!(q.window(NOW), (NOW - Duration::days(1), NOW));
    let mut q = UsageQuery::since([KEY], NOW + Duration::days(1));
    q.until = Some(NOW + Duration::days(2));
    assert_eq!(q.window(NOW), (NOW, NOW), "never past now, start <= end");
}

#[test]
fn event_from_a_lookup_record() {
    let record = r#"{"eventVersion":"1.09","eventID":"x","awsRegion":"eu-west-1",
        "sourceIPAddress":"10.0.4.17","userAgent":"aws-cli/2.15.30","errorCode":"AccessDenied"}"#;
    let e = UsageEvent::from_lookup(
        KEY,
        "us-east-1",
        Some("id-1"),
        Some("ListBuckets"),
        Some("s3.amazonaws.com"),
        NOW,
        Some(record),
    );
    assert_eq!(e.api(), "s3:ListBuckets");
    assert_eq!(
        (e.region.as_str(), e.source_ip.as_str()),
        ("eu-west-1", "10.0.4.17")
    );
    assert_eq!(e.error_code.as_deref(), Some("AccessDenied"));
    assert_eq!(e.event_id, "id-1");
    let bare = UsageEvent::from_lookup(
        KEY,
        "us-east-1",
        None,
        Some("GetUser"),
        None,
        NOW,
        Some("not json"),
    );
    assert_eq!(
        (bare.region.as_str(), bare.source_ip.as_str()),
        ("us-east-1", "")
    );
}

#[test]
fn region_names_are_validated() {
    assert!(validate_regions(&[
        "us-east-1".into(),
        "ap-southeast-5".into(),
        "us-gov-west-1".into()
    ])
    .is_ok());
    for bad in ["", "us-east", "US-EAST-1", "eu west 1", "eu-west-1a"] {
        assert!(validate_regions(&[bad.to_string()]).is_err(), "{bad:?}");
    }
    assert!(validate_regions(&[]).is_err());
}

/// A trail in memory: pages of `per_page` events per (region, key), newest first.
struct FakeTrail {
    events: HashMap<(String, String), Vec<UsageEvent>>,
    per_page: usize,
    calls: Mutex<Vec<(String, String, Option<String>)>>,
    fail_region: Option<String>,
}

impl EventSource for FakeTrail {
    async fn lookup_page(
        &self,
        region: &str,
        key: &str,
        start: OffsetDateTime,
        end: OffsetDateTime,
        next_token: Option<String>,
    ) -> Result<EventPage> {
        self.calls
            .lock()
            .unwrap()
            .push((region.into(), key.into(), next_token.clone()));
        if self.fail_region.as_deref() == Some(region) {
            return Err(Error::Runtime(format!("lookup failed in {region}")));
        }
        let all: Vec<UsageEvent> = self
            .events
            .get(&(region.to_string(), key.to_string()))
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| start <= e.time && e.time <= end)
            .collect();
        let from: usize = next_token.map(|t| t.parse().unwrap()).unwrap_or(0);
        let to = (from + self.per_page).min(all.len());
        Ok(EventPage {
            events: all[from..to].to_vec(),
            next_token: (to < all.len()).then(|| to.to_string()),
        })
    }
}

fn trail(fail_region: Option<&str>) -> FakeTrail {
    let mut events = HashMap::new();
    let us: Vec<UsageEvent> = (0..120)
        .map(|i| {
            event(
                i,
                1 + i as i64 / 10,
                "10.0.4.17",
                CLI,
                "s3:ListBuckets",
                "us-east-1",
            )
        })
        .collect();
    events.insert(("us-east-1".to_string(), KEY.to_string()), us);
    events.insert(
        ("eu-west-1".to_string(), KEY.to_string()),
        vec![event(
            500,
            3,
            "10.0.9.9",
            "Boto3/1.34.0",
            "ec2:DescribeInstances",
            "eu-west-1",
        )],
    );
    FakeTrail {
        events,
        per_page: 50,
        calls: Mutex::new(Vec::new()),
        fail_region: fail_region.map(str::to_string),
    }
}

#[tokio::test(start_paused = true)]
async fn follows_next_token_in_every_region_within_the_rate() {
    let regions = vec!["eu-west-1".to_string(), "us-east-1".to_string()];
    let client = UsageClient::with_source(trail(None), regions, LOOKUP_RATE);
    let other = "AKIANEWKEY0000000002";
    let began = tokio::time::Instant::now();
    let report = client
        .consumers_at(
            &UsageQuery::since([KEY, other], NOW - Duration::days(30)),
            NOW,
        )
        .await
        .unwrap();
    let k = report.key(KEY).unwrap();
    assert_eq!(k.events, 121);
    assert_eq!(k.consumers.len(), 2);
    assert_eq!(k.consumers[0].source_ip, "10.0.4.17", "last seen 1 h ago");
    assert_eq!(k.consumers[0].events, 120);
    assert!(report.key(other).unwrap().is_unused());
    assert!(k.truncated_regions.is_empty());
    let calls = client.source.calls.lock().unwrap().clone();
    let us: Vec<_> = calls.iter().filter(|c| c.0 == "us-east-1").collect();
    // KEY: 3 pages (tokens none, 50, 100), then the other key: 1 page.
    assert_eq!(us.len(), 4);
    assert_eq!(
        us.iter().map(|c| c.2.clone()).collect::<Vec<_>>(),
        vec![None, Some("50".to_string()), Some("100".to_string()), None]
    );
    // 4 lookups in one region at 2/s take at least 1.5 s; the regions run side by side.
    let elapsed = began.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert!(
        elapsed < std::time::Duration::from_millis(2000),
        "{elapsed:?}"
    );
    assert_eq!(report.since, NOW - Duration::days(30));
}

#[tokio::test(start_paused = true)]
async fn the_page_cap_is_reported() {
    let client = UsageClient::with_source(trail(None), vec!["us-east-1".into()], LOOKUP_RATE);
    let mut q = UsageQuery::since([KEY], NOW - Duration::days(30));
    q.max_pages = 2;
    let report = client.consumers_at(&q, NOW).await.unwrap();
    let k = report.key(KEY).unwrap();
    assert_eq!(k.events, 100, "the newest two pages");
    assert_eq!(k.truncated_regions, vec!["us-east-1".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn the_window_reaches_the_source() {
    let client = UsageClient::with_source(trail(None), vec!["us-east-1".into()], LOOKUP_RATE);
    // Events are 1..12 h old; since 5 h ago: the 40 events of hours 1-4, plus hour 5's.
    let report = client
        .consumers_at(&UsageQuery::since([KEY], NOW - Duration::hours(5)), NOW)
        .await
        .unwrap();
    assert_eq!(report.key(KEY).unwrap().events, 50);
}

#[tokio::test(start_paused = true)]
async fn a_failing_region_fails_the_lookup() {
    let regions = vec!["eu-west-1".to_string(), "us-east-1".to_string()];
    let client = UsageClient::with_source(trail(Some("eu-west-1")), regions, LOOKUP_RATE);
    let err = client
        .consumers_at(&UsageQuery::since([KEY], NOW - Duration::days(1)), NOW)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("eu-west-1"), "{err}");
}
