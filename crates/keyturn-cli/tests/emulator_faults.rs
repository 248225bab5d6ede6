//! The emulator's fault injection as aws-sdk-rust sees it: a throttled call is retried
//! by the SDK's standard retry, an exhausted retry surfaces `Throttling`, an injected
//! error keeps its code and message, and a dropped response is a dispatch failure
//! after the call took effect (so an SDK retry repeats a call that already happened).

mod common;

use aws_config::retry::RetryConfig;
use aws_credential_types::Credentials;
use aws_sdk_iam::error::ProvideErrorMetadata;
use common::{rt, Emulator};
use keyturn::error::{AwsError, AwsErrorKind};
use keyturn::remote::RemoteConfig;
use serde_json::json;

fn iam(emu: &Emulator, retry: Option<RetryConfig>) -> aws_sdk_iam::Client {
    let remote = RemoteConfig {
        profile: None,
        region: Some("us-east-1".into()),
        endpoint_url: Some(emu.endpoint.clone()),
        ..RemoteConfig::default()
    };
    let creds = Credentials::new(&emu.admin.id, &emu.admin.secret, None, None, "test");
    let sdk = rt().block_on(remote.load_with(Some(creds)));
    let mut conf = aws_sdk_iam::config::Builder::from(&sdk);
    if let Some(r) = retry {
        conf = conf.retry_config(r);
    }
    aws_sdk_iam::Client::from_conf(conf.build())
}

fn faults(emu: &Emulator, rules: serde_json::Value) {
    emu.post("/_keyturn/faults", json!({ "rules": rules }));
}

fn hits(emu: &Emulator) -> i64 {
    emu.get("/_keyturn/faults")["rules"][0]["hits"]
        .as_i64()
        .unwrap()
}

#[test]
fn throttling_is_retried_by_the_standard_retry() {
    let emu = Emulator::start();
    faults(
        &emu,
        json!([{ "action": "iam:ListUsers", "mode": "throttle", "count": 3 }]),
    );
    // keyturn's retry config (6 attempts) rides out three throttles.
    let out = rt().block_on(iam(&emu, None).list_users().send()).unwrap();
    assert_eq!(out.users().len(), 1);
    assert_eq!(hits(&emu), 3);
}

#[test]
fn exhausted_retries_surface_throttling() {
    let emu = Emulator::start();
    faults(&emu, json!([{ "action": "iam:*", "mode": "throttle" }]));
    let client = iam(&emu, Some(RetryConfig::standard().with_max_attempts(2)));
    let err = rt().block_on(client.list_users().send()).unwrap_err();
    assert_eq!(err.code(), Some("Throttling"));
    assert_eq!(err.message(), Some("Rate exceeded"));
    let classified = AwsError::from_sdk("iam:ListUsers", &err);
    assert_eq!(classified.kind, AwsErrorKind::Throttling);
    assert_eq!(hits(&emu), 2, "both attempts were throttled");
}

#[test]
fn an_injected_error_keeps_code_and_message_and_has_no_effect() {
    let emu = Emulator::start();
    faults(
        &emu,
        json!([{ "action": "iam:CreateUser", "mode": "error", "code": "AccessDenied",
                 "status": 403, "message": "injected", "match": { "UserName": "bad-user" } }]),
    );
    let client = iam(&emu, None);
    let err = rt()
        .block_on(client.create_user().user_name("bad-user").send())
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Some("AccessDenied"), Some("injected"))
    );
    rt().block_on(client.create_user().user_name("good-user").send())
        .unwrap();
    let names: Vec<String> = rt()
        .block_on(client.list_users().send())
        .unwrap()
        .users()
        .iter()
        .map(|u| u.user_name().to_string())
        .collect();
    assert!(names.contains(&"good-user".to_string()) && !names.contains(&"bad-user".to_string()));
}

#[test]
fn a_dropped_response_is_a_dispatch_failure_after_the_call_took_effect() {
    let emu = Emulator::start();
    faults(
        &emu,
        json!([{ "action": "iam:CreateUser", "mode": "drop-response", "count": 1 }]),
    );
    let client = iam(&emu, Some(RetryConfig::disabled()));
    let err = rt()
        .block_on(client.create_user().user_name("ghost").send())
        .unwrap_err();
    assert!(
        matches!(err, aws_sdk_iam::error::SdkError::DispatchFailure(_)),
        "{err:?}"
    );
    // hyper reports "connection closed before message completed" (IncompleteMessage),
    // which the SDK marks transient; keyturn's classifier calls it a DispatchFailure.
    let text = keyturn::error::chain(&err);
    assert!(
        text.contains("connection closed before message completed"),
        "{text}"
    );
    let classified = AwsError::from_sdk("iam:CreateUser", &err);
    assert_eq!(
        classified.kind,
        AwsErrorKind::Other("DispatchFailure".into()),
        "{classified:?}"
    );
    let exists = rt().block_on(emu.iam().get_user().user_name("ghost").send());
    assert!(
        exists.is_ok(),
        "the call took effect although no response came"
    );
}

/// Why a non-idempotent call must not be retried blindly (issue 17, case 1): with
/// keyturn's retry config the SDK repeats the dropped CreateUser, which then fails.
#[test]
fn the_sdk_retries_a_dropped_non_idempotent_call() {
    let emu = Emulator::start();
    faults(
        &emu,
        json!([{ "action": "iam:CreateUser", "mode": "drop-response", "count": 1 }]),
    );
    let err = rt()
        .block_on(iam(&emu, None).create_user().user_name("twice").send())
        .unwrap_err();
    assert_eq!(err.code(), Some("EntityAlreadyExists"), "{err:?}");
    let stats = emu.stats();
    assert_eq!(stats["by_action"]["iam:CreateUser"], 2, "{stats}");
}
