//! Proof that the service test helpers work from Rust: each fixture starts, answers
//! its real API paths, checks what the real service checks, and reports what it
//! received; a real OpenBao starts, does KV v2 with check-and-set and AppRole, and
//! stops when dropped. The sink tests build on these helpers.

mod common;

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use common::services::{http, Bao, Fixture};
use crypto_box::{aead::OsRng, PublicKey};
use serde_json::{json, Value};

fn gh_headers(token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Authorization", format!("Bearer {token}")),
        ("X-GitHub-Api-Version", "2022-11-28".into()),
        ("Accept", "application/vnd.github+json".into()),
    ]
}

fn call(method: &str, url: &str, headers: &[(&str, String)], body: Option<&Value>) -> (u16, Value) {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http(method, url, &h, body)
}

/// crypto_box's sealed box (what the github sink will use) is what the fixture
/// unseals with its private key: the exact bytes arrive, a stale key_id is refused.
#[test]
fn github_fixture_unseals_a_crypto_box_sealed_secret() {
    let gh = Fixture::start("github");
    let h = gh_headers(gh.str("token"));
    let base = gh.url("/repos/octo-org/octo-repo/actions/secrets");
    let (status, key) = call("GET", &format!("{base}/public-key"), &h, None);
    assert_eq!(status, 200, "{key}");
    let raw: [u8; 32] = B64
        .decode(key["key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let sealed = PublicKey::from(raw)
        .seal(&mut OsRng, secret.as_bytes())
        .unwrap();
    let body = json!({"encrypted_value": B64.encode(&sealed), "key_id": key["key_id"]});
    let (status, _) = call(
        "PUT",
        &format!("{base}/AWS_SECRET_ACCESS_KEY"),
        &h,
        Some(&body),
    );
    assert_eq!(status, 201);
    let stored =
        &gh.state()["scopes"]["repos/octo-org/octo-repo"]["secrets"]["AWS_SECRET_ACCESS_KEY"];
    assert_eq!(stored["value"], secret);
    let (status, got) = call("GET", &format!("{base}/AWS_SECRET_ACCESS_KEY"), &h, None);
    assert_eq!(status, 200);
    assert_eq!(got["updated_at"], stored["updated_at"]);

    // A key rotation makes the key_id we hold stale: 422, nothing written.
    gh.fault(json!({"method": "PUT", "path": "/repos/*", "mode": "rotate-key"}));
    let (status, err) = call(
        "PUT",
        &format!("{base}/AWS_SECRET_ACCESS_KEY"),
        &h,
        Some(&body),
    );
    assert_eq!(status, 422, "{err}");
    assert_eq!(gh.state()["rejected"][0]["reason"], "stale key_id");

    let log = gh.requests();
    let put = log.iter().find(|r| r["method"] == "PUT").unwrap();
    assert_eq!(put["headers"]["authorization"], "present");
    assert_eq!(put["headers"]["x-github-api-version"], "2022-11-28");
    assert_eq!(put["body"]["encrypted_value"], B64.encode(&sealed));
}

/// Informatica: login, partial update, masked read-back, a 500 on the Nth update
/// from a fault rule, logout.
#[test]
fn informatica_fixture_updates_partially_and_logs_out() {
    let infa = Fixture::start("informatica");
    let ids: Vec<String> = infa.ready["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let (status, login) = http(
        "POST",
        infa.str("login_url"),
        &[],
        Some(&json!({"@type": "login", "username": infa.str("username"),
                     "password": infa.str("password")})),
    );
    assert_eq!(status, 200, "{login}");
    let server = login["serverUrl"].as_str().unwrap();
    let sid = login["icSessionId"].as_str().unwrap();
    let partial = [("icSessionId", sid), ("Update-Mode", "PARTIAL")];
    let body = json!({"@type": "connection",
                      "connParams": {"Access Key": "AKIANEW", "Secret Key": "new-secret"}});
    infa.fault(
        json!({"method": "POST", "path": "/saas/api/v2/connection/*",
                      "mode": "error", "status": 500, "nth": 2}),
    );
    let statuses: Vec<u16> = ids
        .iter()
        .map(|id| {
            http(
                "POST",
                &format!("{server}/api/v2/connection/{id}"),
                &partial,
                Some(&body),
            )
            .0
        })
        .collect();
    assert_eq!(statuses, [200, 500, 200]);
    assert_eq!(infa.fault_hits()["rules"][0]["fired"], 1);
    let (_, got) = http(
        "GET",
        &format!("{server}/api/v2/connection/{}", ids[0]),
        &[("icSessionId", sid)],
        None,
    );
    assert_eq!(got["connParams"]["Secret Key"], "********");
    assert_eq!(got["connParams"]["Access Key"], "AKIANEW");
    let state = infa.state();
    assert_eq!(
        state["connections"][&ids[0]]["connParams"]["Secret Key"],
        "new-secret"
    );
    assert_eq!(
        state["connections"][&ids[1]]["connParams"]["Secret Key"],
        "old-secret-2"
    );
    let (status, _) = http(
        "POST",
        &format!("{server}/api/v2/user/logout"),
        &[("icSessionId", sid)],
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(infa.state()["sessions"]["logouts"], 1);
    infa.reset();
    assert!(infa.requests().is_empty());
}

/// Infisical: universal-auth login, create, update, read back with the value.
#[test]
fn infisical_fixture_round_trips_a_secret() {
    let inf = Fixture::start("infisical");
    let (status, login) = http(
        "POST",
        &inf.url("/api/v1/auth/universal-auth/login"),
        &[],
        Some(&json!({"clientId": inf.str("client_id"),
                     "clientSecret": inf.str("client_secret")})),
    );
    assert_eq!(status, 200, "{login}");
    let bearer = format!("Bearer {}", login["accessToken"].as_str().unwrap());
    let auth = [("Authorization", bearer.as_str())];
    let scope = json!({"projectId": inf.str("project_id"), "environment": "prod",
                       "secretPath": "/ci"});
    let url = inf.url("/api/v4/secrets/AWS_ACCESS_KEY_ID");
    let mut create = scope.clone();
    create["secretValue"] = json!("AKIAFIRST");
    assert_eq!(http("POST", &url, &auth, Some(&create)).0, 200);
    assert_eq!(http("POST", &url, &auth, Some(&create)).0, 400, "exists");
    let mut update = scope.clone();
    update["secretValue"] = json!("AKIASECOND");
    let (status, b) = http("PATCH", &url, &auth, Some(&update));
    assert_eq!((status, b["secret"]["version"].as_u64()), (200, Some(2)));
    let query = format!(
        "{url}?projectId={}&environment=prod&secretPath=%2Fci&viewSecretValue=true",
        inf.str("project_id")
    );
    let (status, got) = http("GET", &query, &auth, None);
    assert_eq!(status, 200);
    assert_eq!(got["secret"]["secretValue"], "AKIASECOND");
    assert_eq!(
        inf.state()["secrets"]["prod"]["/ci"]["AWS_ACCESS_KEY_ID"]["value"],
        "AKIASECOND"
    );
    let (status, err) = http("GET", &query, &[], None);
    assert_eq!(
        (status, err["message"].as_str()),
        (401, Some("Token missing"))
    );
}

/// GitLab: masked variables follow GitLab's rule; scopes need the filter.
#[test]
fn gitlab_fixture_enforces_masking_and_scope_filters() {
    let gl = Fixture::start("gitlab");
    let token = [("PRIVATE-TOKEN", gl.str("token"))];
    let base = gl.url("/api/v4/projects/keyturn-group%2Fkeyturn-app/variables");
    let (status, err) = http(
        "POST",
        &base,
        &token,
        Some(&json!({"key": "AWS_SECRET_ACCESS_KEY", "value": "short", "masked": true})),
    );
    assert_eq!(status, 400);
    assert_eq!(err, json!({"message": {"value": ["is invalid"]}}));
    for (scope, value) in [("*", "default-value-1"), ("production", "prod-value-1")] {
        let (status, v) = http(
            "POST",
            &base,
            &token,
            Some(
                &json!({"key": "AWS_SECRET_ACCESS_KEY", "value": value, "masked": true,
                         "environment_scope": scope}),
            ),
        );
        assert_eq!(status, 201, "{v}");
    }
    let key = format!("{base}/AWS_SECRET_ACCESS_KEY");
    assert_eq!(http("GET", &key, &token, None).0, 409);
    let filtered = format!("{key}?filter%5Benvironment_scope%5D=production");
    let (status, v) = http(
        "PUT",
        &filtered,
        &token,
        Some(&json!({"value": "prod-value-2"})),
    );
    assert_eq!((status, v["value"].as_str()), (200, Some("prod-value-2")));
    let vars = &gl.state()["projects"]["keyturn-group/keyturn-app"];
    assert_eq!(vars[0]["value"], "default-value-1");
    assert_eq!(vars[1]["value"], "prod-value-2");
    let (status, _) = http(
        "GET",
        &key,
        &[("PRIVATE-TOKEN", gl.str("no_access_token"))],
        None,
    );
    assert_eq!(status, 404);
}

/// A real OpenBao: KV v2 with check-and-set, reading old versions, AppRole login,
/// and a policy that really limits the AppRole token. Gone after drop.
#[test]
fn bao_does_kv_v2_cas_and_approle_then_stops() {
    let bao = Bao::start();
    eprintln!(
        "openbao: healthy {} ms after spawn, RSS {} kB",
        bao.startup_ms(),
        bao.rss_kb()
    );
    let v1 = bao
        .kv_write(
            "secret",
            "ci/alice",
            json!({"AccessKeyId": "AKIA1", "Other": "kept"}),
            Some(0),
        )
        .unwrap();
    assert_eq!(v1, 1);
    let (status, err) = bao
        .kv_write(
            "secret",
            "ci/alice",
            json!({"AccessKeyId": "AKIAX"}),
            Some(0),
        )
        .unwrap_err();
    assert_eq!(status, 400);
    assert!(err.to_string().contains("check-and-set"), "{err}");
    let v2 = bao
        .kv_write(
            "secret",
            "ci/alice",
            json!({"AccessKeyId": "AKIA2", "Other": "kept"}),
            Some(1),
        )
        .unwrap();
    assert_eq!(v2, 2);
    assert_eq!(
        bao.kv_read("secret", "ci/alice").unwrap(),
        (json!({"AccessKeyId": "AKIA2", "Other": "kept"}), 2)
    );
    assert_eq!(
        bao.kv_read_version("secret", "ci/alice", 1).unwrap().0["AccessKeyId"],
        "AKIA1"
    );
    assert!(bao.kv_read("secret", "ci/nobody").is_none());

    bao.write_policy(
        "keyturn-ci",
        r#"path "secret/data/ci/*" { capabilities = ["create", "read", "update"] }"#,
    );
    bao.enable_approle();
    let role = bao.create_approle("keyturn", &["keyturn-ci"]);
    let token = bao.approle_login(&role).unwrap();
    let v3 = bao
        .kv_write_as(
            Some(&token),
            "secret",
            "ci/alice",
            json!({"AccessKeyId": "AKIA3"}),
            Some(2),
        )
        .unwrap();
    assert_eq!(v3, 3);
    let (status, _) = bao
        .kv_write_as(
            Some(&token),
            "secret",
            "prod/alice",
            json!({"x": "y"}),
            None,
        )
        .unwrap_err();
    assert_eq!(status, 403, "the policy limits the AppRole token");
    let wrong = common::services::AppRole {
        secret_id: "not-the-secret-id".into(),
        ..role
    };
    assert!(bao.approle_login(&wrong).is_err());

    // Namespaces: a write through the header lands under the namespace's path.
    bao.create_namespace("team1");
    bao.enable_kv2_in("team1", "kv");
    let (status, _) = bao.call_ns(
        "POST",
        "/v1/kv/data/ci/bob",
        None,
        Some("team1"),
        Some(&json!({"data": {"AccessKeyId": "AKIANS"}})),
    );
    assert_eq!(status, 200);
    assert_eq!(
        bao.kv_read("team1/kv", "ci/bob").unwrap().0["AccessKeyId"],
        "AKIANS"
    );
    assert!(bao.kv_read("secret", "ci/bob").is_none());

    let pid = bao.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(bao);
    let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| s.contains("zombie"))
            .unwrap_or(true);
    assert!(gone, "bao {pid} still runs after drop");
}
