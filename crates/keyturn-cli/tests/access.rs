//! `keyturn::access` against the local AWS emulator: role credentials that refresh
//! when their session expires, external ids and caller-chosen session names, and
//! Organization accounts selected by include/exclude with an unreachable account
//! reported for itself only. (`tests/audit.rs` covers audit across accounts.)

mod common;

use aws_credential_types::Credentials;
use common::{rt, Emulator, ACCOUNT};
use keyturn::access::{
    Access, Account, AccountSource, OrganizationSource, RoleSource, Route, SignAs,
};
use keyturn::remote::{RemoteConfig, RetryMode};
use serde_json::json;
use std::time::Duration;

fn remote(emu: &Emulator) -> RemoteConfig {
    RemoteConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(emu.endpoint.clone()),
        ..RemoteConfig::default()
    }
}

/// An `Access` whose base credentials are the emulator's admin user.
fn access(emu: &Emulator, remote: &RemoteConfig, session_name: &str) -> Access {
    let admin = Credentials::new(&emu.admin.id, &emu.admin.secret, None, None, "test");
    let base = rt().block_on(remote.load_with(Some(admin)));
    Access::from_base(base, remote, session_name).unwrap()
}

fn calls(emu: &Emulator, action: &str) -> u64 {
    emu.stats()["by_action"][action].as_u64().unwrap_or(0)
}

fn role_route(arn: &str, external_id: Option<&str>) -> Route {
    Route::single(
        None,
        &AccountSource::Role(RoleSource {
            role_arn: arn.into(),
            external_id: external_id.map(str::to_string),
        }),
    )
    .unwrap()
}

fn user_names(account: &Account) -> Vec<String> {
    let iam = aws_sdk_iam::Client::new(&account.config);
    let out = rt()
        .block_on(iam.list_users().send())
        .unwrap_or_else(|e| panic!("ListUsers in {}: {e:?}", account.id));
    let mut names: Vec<String> = out
        .users()
        .iter()
        .map(|u| u.user_name().to_string())
        .collect();
    names.sort();
    names
}

fn caller_arn(account: &Account) -> String {
    let sts = aws_sdk_sts::Client::new(&account.config);
    rt().block_on(sts.get_caller_identity().send())
        .unwrap()
        .arn()
        .unwrap()
        .to_string()
}

#[test]
fn assumed_role_credentials_refresh_when_the_session_expires() {
    let emu = Emulator::start();
    emu.post(
        "/_keyturn/role",
        json!({ "account_id": "222222222222", "role_name": "Rotator" }),
    );
    emu.seed("222222222222", json!([{ "name": "member-user" }]));
    let arn = "arn:aws:iam::222222222222:role/Rotator";
    let remote = RemoteConfig {
        retry: RetryMode::Adaptive { max_attempts: 9 },
        ..remote(&emu)
    };

    // A normal session: assumed once while connecting, then served from the cache.
    let normal = access(&emu, &remote, "keyturn-test");
    let account = rt()
        .block_on(normal.connect(&role_route(arn, None)))
        .unwrap();
    assert_eq!(account.id, "222222222222");
    assert_eq!(account.via, format!("role:{arn}"));
    assert_eq!(
        calls(&emu, "sts:AssumeRole"),
        1,
        "connecting assumes the role"
    );
    for _ in 0..3 {
        assert_eq!(user_names(&account), ["member-user"]);
    }
    assert_eq!(
        calls(&emu, "sts:AssumeRole"),
        1,
        "connecting and every later call share one session"
    );
    assert_eq!(
        caller_arn(&account),
        "arn:aws:sts::222222222222:assumed-role/Rotator/keyturn-test",
        "the caller's session name"
    );
    // The account signs with the retry mode of the RemoteConfig.
    let retry = account.config.retry_config().unwrap();
    assert_eq!(retry.mode(), aws_config::retry::RetryMode::Adaptive);
    assert_eq!(retry.max_attempts(), 9);

    // Sessions that expire at once (moto never enforces expiry, so the SDK's cache is
    // what notices): every call after the expiry re-assumes the role and succeeds. A
    // one-shot AssumeRole would keep signing with the first, expired session.
    emu.reset_stats();
    let short = access(&emu, &remote, "keyturn-test").with_session_duration(Duration::from_secs(1));
    let account = rt()
        .block_on(short.connect(&role_route(arn, None)))
        .unwrap();
    let mut assumed = calls(&emu, "sts:AssumeRole");
    assert_eq!(assumed, 1);
    for i in 0..3 {
        assert_eq!(user_names(&account), ["member-user"], "call {i}");
        let now = calls(&emu, "sts:AssumeRole");
        assert!(
            now > assumed,
            "call {i}: the expired session was re-assumed ({assumed} -> {now})"
        );
        assumed = now;
    }
}

#[test]
fn external_ids_and_session_names_reach_sts() {
    let emu = Emulator::start();
    let iam = emu.iam();
    let trust = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "AWS": format!("arn:aws:iam::{ACCOUNT}:root") },
            "Action": "sts:AssumeRole",
            "Condition": { "StringEquals": { "sts:ExternalId": "tenant-42" } }
        }]
    });
    rt().block_on(
        iam.create_role()
            .role_name("ThirdParty")
            .assume_role_policy_document(trust.to_string())
            .send(),
    )
    .unwrap();
    rt().block_on(
        iam.put_role_policy()
            .role_name("ThirdParty")
            .policy_name("all")
            .policy_document(
                json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
                    .to_string(),
            )
            .send(),
    )
    .unwrap();
    let arn = format!("arn:aws:iam::{ACCOUNT}:role/ThirdParty");
    let access = access(&emu, &remote(&emu), "keyturn-fleet-42");

    let wrong = rt()
        .block_on(access.connect(&role_route(&arn, Some("tenant-41"))))
        .unwrap_err();
    assert_eq!(wrong.account_id.as_deref(), Some(ACCOUNT));
    assert_eq!(wrong.via, format!("role:{arn}"));
    let text = wrong.to_string();
    assert!(
        text.contains("sts:AssumeRole failed: AccessDenied"),
        "STS's own error: {text}"
    );

    let account = rt()
        .block_on(access.connect(&role_route(&arn, Some("tenant-42"))))
        .unwrap();
    assert_eq!(
        caller_arn(&account),
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/ThirdParty/keyturn-fleet-42")
    );
    assert!(user_names(&account).contains(&"keyturn-admin".to_string()));
}

/// An Organization with members a and b (role `KeyturnRotator`) and c (whose member
/// role has another name, so `KeyturnRotator` cannot be assumed there).
fn organization(emu: &Emulator) -> [String; 3] {
    use aws_sdk_organizations::types::OrganizationFeatureSet;
    let org = aws_sdk_organizations::Client::new(&emu.sdk_config(&emu.admin));
    rt().block_on(
        org.create_organization()
            .feature_set(OrganizationFeatureSet::All)
            .send(),
    )
    .unwrap();
    let create = |name: &str, role: &str| -> String {
        let out = rt()
            .block_on(
                org.create_account()
                    .email(format!("{name}@example.com"))
                    .account_name(name)
                    .role_name(role)
                    .send(),
            )
            .unwrap();
        let id = out
            .create_account_status()
            .unwrap()
            .account_id()
            .unwrap()
            .to_string();
        emu.seed(&id, json!([{ "name": format!("{name}-user") }]));
        id
    };
    [
        create("member-a", "KeyturnRotator"),
        create("member-b", "KeyturnRotator"),
        create("member-c", "SomethingElse"),
    ]
}

#[test]
fn organization_accounts_follow_include_and_exclude_and_fail_one_by_one() {
    let emu = Emulator::start();
    let [a, b, c] = organization(&emu);
    let access = access(&emu, &remote(&emu), "keyturn-test");
    let org = |include: Vec<String>, exclude: Vec<String>| {
        AccountSource::Organization(OrganizationSource {
            role_name: "KeyturnRotator".into(),
            include,
            exclude,
        })
    };

    // Every ACTIVE account but b: the management account with the caller's own
    // credentials, a, and c, which cannot be reached.
    let source = org(vec![], vec![b.clone()]);
    source.validate().unwrap();
    let routes: Vec<Route> = rt()
        .block_on(access.routes(Some("org"), &source))
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let mut want = vec![ACCOUNT.to_string(), a.clone(), c.clone()];
    want.sort();
    let ids: Vec<String> = routes
        .iter()
        .map(|r| r.account_id.clone().unwrap())
        .collect();
    assert_eq!(ids, want, "by id, b excluded");
    let by_id = |id: &str| {
        routes
            .iter()
            .find(|r| r.account_id.as_deref() == Some(id))
            .unwrap()
    };
    assert_eq!(by_id(ACCOUNT).sign_as, SignAs::Caller);
    assert_eq!(
        by_id(&a).sign_as,
        SignAs::Role(RoleSource::new(format!(
            "arn:aws:iam::{a}:role/KeyturnRotator"
        ))),
        "partition from the caller's ARN"
    );
    assert_eq!(by_id(&a).name.as_deref(), Some("member-a"));
    assert_eq!(by_id(&a).via, "organization:member-a");

    let mut reached = Vec::new();
    let mut failed = Vec::new();
    for route in &routes {
        match rt().block_on(access.connect(route)) {
            Ok(account) => reached.push((account.id.clone(), user_names(&account))),
            Err(u) => failed.push(u),
        }
    }
    reached.sort();
    let mut want_reached = vec![
        (ACCOUNT.to_string(), vec!["keyturn-admin".to_string()]),
        (a.clone(), vec!["member-a-user".to_string()]),
    ];
    want_reached.sort();
    assert_eq!(reached, want_reached);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].account_id.as_deref(), Some(c.as_str()));
    assert_eq!(failed[0].via, "organization:member-c");
    assert!(
        failed[0]
            .to_string()
            .contains("sts:AssumeRole failed: AccessDenied")
            && failed[0]
                .to_string()
                .contains(&format!("arn:aws:iam::{c}:role/KeyturnRotator")),
        "{}",
        failed[0]
    );

    // Only the included ones; an included id the Organization does not have is an
    // error for that id, and the others are still routed.
    let routes =
        rt().block_on(access.routes(None, &org(vec![b.clone(), "999999999999".into()], vec![])));
    assert_eq!(routes.len(), 2);
    let route = routes[0].as_ref().unwrap();
    assert_eq!(route.account_id.as_deref(), Some(b.as_str()));
    let account = rt().block_on(access.connect(route)).unwrap();
    assert_eq!(user_names(&account), ["member-b-user"]);
    let missing = routes[1].as_ref().unwrap_err();
    assert_eq!(missing.account_id.as_deref(), Some("999999999999"));
    assert!(
        missing.to_string().contains("no ACTIVE account"),
        "{missing}"
    );
    assert!(calls(&emu, "organizations:ListAccounts") >= 2);
}

#[test]
fn an_organization_that_cannot_be_listed_is_one_error() {
    let emu = Emulator::start();
    let access = access(&emu, &remote(&emu), "keyturn-test");
    let routes = rt().block_on(access.routes(
        Some("org"),
        &AccountSource::Organization(OrganizationSource::new("KeyturnRotator")),
    ));
    assert_eq!(routes.len(), 1);
    let u = routes[0].as_ref().unwrap_err();
    assert_eq!(u.via, "organization");
    assert_eq!(u.name.as_deref(), Some("org"));
    assert_eq!(u.account_id.as_deref(), Some(ACCOUNT));
    assert!(u.to_string().contains("organizations:ListAccounts"), "{u}");
}
