//! Service sinks: `rotate --user ci-bot --sink NAME` delivers the new key to Vault (a
//! real OpenBao), Informatica Cloud, GitHub Actions, Infisical and GitLab (the fixture
//! servers of `fixtures/`, which check what the services check and record what they
//! received), with the real binary against the emulator.
//!
//! For each sink: delivery, read-back verification, bad credentials (a clear error
//! naming the sink, exit 1, the old key still Active, the new key deleted again,
//! nothing written to the service), the failure cases the service has (Vault CAS
//! conflict and rollback, AppRole and namespaces; an Informatica 500 half-way through
//! the connections, then resume; GitHub key rotation and rate limits; Infisical
//! create-if-missing and token expiry; GitLab scopes and flags), the keyFresh KMS
//! password file, and the secret never on stdout/stderr, in argv, or in what the
//! services see outside request bodies (paths, queries, headers).

mod common;

use common::services::{http, Bao, Fixture};
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const RETIRE: [&str; 2] = ["--deactivate-old-keys", "--yes"];

fn write_config(emu: &Emulator, toml: &str) -> PathBuf {
    let p = emu.dir.path().join("keyturn.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// A 0600 file holding `secret` (a token file).
fn secret_file(emu: &Emulator, name: &str, secret: &str) -> PathBuf {
    let p = emu.dir.path().join(name);
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Run `keyturn --config CFG ARGS...` with `env` added; also returns its argv.
fn keyturn(emu: &Emulator, cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> (Run, Vec<String>) {
    let mut cmd = emu.keyturn();
    cmd.arg("--config").arg(cfg).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let argv = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    (emu.run(&mut cmd), argv)
}

fn rotate(emu: &Emulator, cfg: &Path, args: &[&str], env: &[(&str, &str)]) -> (Run, Vec<String>) {
    let mut a = vec!["rotate", "--user", "ci-bot"];
    a.extend_from_slice(args);
    keyturn(emu, cfg, &a, env)
}

/// The user with one old Active key.
fn setup(emu: &Emulator) -> Creds {
    emu.create_user("ci-bot");
    emu.create_key("ci-bot")
}

fn creds(id: &str, secret: &str) -> Creds {
    Creds {
        id: id.into(),
        secret: secret.into(),
        token: None,
    }
}

fn history(emu: &Emulator) -> Value {
    emu.run(emu.keyturn().args(["history", "--output", "json"]))
        .json()
}

/// The user's keys are exactly the old one, Active: nothing was rotated.
fn assert_only_old_key(emu: &Emulator, old: &Creds) {
    assert_eq!(
        emu.keys("ci-bot"),
        [(old.id.clone(), "Active".to_string())],
        "the new key must have been deleted again and the old one left Active"
    );
    assert!(emu.whoami(old).is_ok());
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

/// None of `secrets` in stdout, stderr, argv, or the paths, queries and headers of
/// what a fixture received (bodies carry delivered values by design).
fn assert_hygiene(secrets: &[&str], run: &Run, argv: &[String], requests: &[Value]) {
    let argv = argv.join(" ");
    for s in secrets {
        assert!(s.len() >= 8, "not a secret: {s:?}");
        for (what, text) in [
            ("stdout", &run.stdout),
            ("stderr", &run.stderr),
            ("argv", &argv),
        ] {
            assert!(!text.contains(s), "a secret leaked into {what}:\n{text}");
        }
        for r in requests {
            for part in ["path", "query", "headers"] {
                let text = r[part].to_string();
                assert!(
                    !text.contains(s),
                    "a secret is in the {part} of a request the service saw: {r}"
                );
            }
        }
    }
    for r in requests {
        let ua = r["headers"]["user-agent"].as_str().unwrap_or_default();
        assert!(ua.starts_with("keyturn/"), "User-Agent {ua:?} in {r}");
    }
}

fn sinks_report(run: &Run) -> Vec<Value> {
    run.json()["Sinks"].as_array().cloned().unwrap_or_default()
}

// ---- Vault (a real OpenBao) -------------------------------------------------------------

/// A TCP proxy in front of OpenBao: records each request head (request line and
/// headers) it forwards, and runs `interloper` once, just before forwarding the first
/// request whose head starts with its prefix (someone else writing in between).
struct Proxy {
    addr: String,
    heads: Arc<Mutex<Vec<String>>>,
}

type Interloper = (String, Box<dyn FnOnce() + Send>);

impl Proxy {
    fn start(upstream: &str, interloper: Option<Interloper>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let up = upstream.trim_start_matches("http://").to_string();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let interloper = Arc::new(Mutex::new(interloper));
        let recorded = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { break };
                let Ok(mut server) = TcpStream::connect(&up) else {
                    continue;
                };
                let mut from_client = client.try_clone().unwrap();
                let mut to_server = server.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.shutdown(Shutdown::Both);
                });
                let heads = recorded.clone();
                let interloper = interloper.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match from_client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if ["GET ", "POST ", "PUT ", "PATCH ", "DELETE ", "LIST "]
                            .iter()
                            .any(|m| text.starts_with(m))
                        {
                            let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
                            let fire = {
                                let mut i = interloper.lock().unwrap();
                                match i.as_ref() {
                                    Some((prefix, _)) if head.starts_with(prefix.as_str()) => {
                                        i.take()
                                    }
                                    _ => None,
                                }
                            };
                            if let Some((_, f)) = fire {
                                f();
                            }
                            heads.lock().unwrap().push(head);
                        }
                        if to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(Shutdown::Write);
                });
            }
        });
        Proxy { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn vault_config(emu: &Emulator, address: &str, auth: &str, extra: &str) -> PathBuf {
    write_config(
        emu,
        &format!(
            "[[sinks]]\nname = \"ci-vault\"\ntype = \"vault\"\naddress = \"{address}\"\npath = \"ci/{{user}}\"\n{auth}\n{extra}\n"
        ),
    )
}

/// The request heads keyturn sent carry no secret outside the token header.
fn assert_heads_clean(heads: &[String], secrets: &[&str], token: &str) {
    assert!(!heads.is_empty());
    for h in heads {
        let without_token: String = h
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("x-vault-token:"))
            .collect::<Vec<_>>()
            .join("\n");
        for s in secrets.iter().chain([&token]) {
            assert!(
                !without_token.contains(s),
                "a secret in a request head: {h}"
            );
        }
        assert!(
            h.to_ascii_lowercase().contains("user-agent: keyturn/"),
            "{h}"
        );
    }
}

#[test]
fn vault_sink_writes_with_check_and_set_keeps_other_keys_and_reads_back() {
    let bao = Bao::start();
    let emu = Emulator::start();
    let old = setup(&emu);
    // With cas_required, a write without check-and-set would be refused.
    let (status, v) = bao.call(
        "POST",
        "/v1/secret/config",
        None,
        Some(&json!({"cas_required": true})),
    );
    assert!((200..300).contains(&status), "{status} {v}");
    bao.kv_write(
        "secret",
        "ci/ci-bot",
        json!({"AccessKeyId": old.id, "SecretAccessKey": old.secret, "region": "eu-west-1"}),
        Some(0),
    )
    .unwrap();
    let proxy = Proxy::start(&bao.addr, None);
    let token = secret_file(&emu, "vault-token", &bao.root_token);
    let cfg = vault_config(
        &emu,
        &proxy.addr,
        &format!("token_file = \"{}\"", token.display()),
        "",
    );
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &[
            "--sink", "ci-vault", RETIRE[0], RETIRE[1], "--output", "json",
        ],
        &[],
    );
    run.assert_code(0);
    let (data, version) = bao.kv_read("secret", "ci/ci-bot").unwrap();
    assert_eq!(version, 2, "one new version");
    assert_eq!(data["region"], "eu-west-1", "other keys are kept");
    let new = creds(
        data["AccessKeyId"].as_str().unwrap(),
        data["SecretAccessKey"].as_str().unwrap(),
    );
    assert_ne!(new.id, old.id);
    assert_eq!(
        emu.whoami(&new).unwrap(),
        format!("arn:aws:iam::{ACCOUNT}:user/ci-bot")
    );
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    let s = sinks_report(&run);
    assert_eq!(s[0]["Name"], "ci-vault");
    assert_eq!(s[0]["Verified"], true);
    let detail = s[0]["Detail"].as_str().unwrap();
    assert!(
        detail.contains("version 2 holds the new key (read back)"),
        "{detail}"
    );
    // The first version is untouched (Vault keeps it for rollback).
    let (v1, _) = bao.kv_read_version("secret", "ci/ci-bot", 1).unwrap();
    assert_eq!(v1["AccessKeyId"], old.id.as_str());
    let heads = proxy.heads();
    assert!(heads
        .iter()
        .any(|h| h.starts_with("POST /v1/secret/data/ci/ci-bot ")));
    assert_heads_clean(&heads, &[&new.secret], &bao.root_token);
    assert_hygiene(&[&new.secret, &bao.root_token], &run, &argv, &[]);
    assert_eq!(history(&emu)["Runs"][0]["Status"], "succeeded");
}

#[test]
fn vault_cas_conflict_overwrites_nothing_and_keeps_the_old_key() {
    let bao = Bao::start();
    let emu = Emulator::start();
    let old = setup(&emu);
    bao.kv_write(
        "secret",
        "ci/ci-bot",
        json!({"AccessKeyId": old.id, "SecretAccessKey": old.secret}),
        None,
    )
    .unwrap();
    // Someone else writes version 2 after keyturn read version 1, just before
    // keyturn's own write arrives.
    let (addr, root) = (bao.addr.clone(), bao.root_token.clone());
    let interloper: Interloper = (
        "POST /v1/secret/data/ci/ci-bot ".into(),
        Box::new(move || {
            let (status, v) = http(
                "POST",
                &format!("{addr}/v1/secret/data/ci/ci-bot"),
                &[("X-Vault-Token", &root)],
                Some(
                    &json!({"data": {"AccessKeyId": "AKIAINTERLOPER000001", "note": "someone else"}, "options": {"cas": 1}}),
                ),
            );
            assert_eq!(status, 200, "{v}");
        }),
    );
    let proxy = Proxy::start(&bao.addr, Some(interloper));
    let cfg = vault_config(&emu, &proxy.addr, "token_env = \"KT_VAULT_TOKEN\"", "");
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &["--sink", "ci-vault", RETIRE[0], RETIRE[1]],
        &[("KT_VAULT_TOKEN", &bao.root_token)],
    );
    run.assert_code(1)
        .assert_stderr("sink 'ci-vault' (vault) delivery failed")
        .assert_stderr("someone else wrote it in between")
        .assert_stderr("check-and-set");
    // Their write stands; keyturn wrote nothing.
    let (data, version) = bao.kv_read("secret", "ci/ci-bot").unwrap();
    assert_eq!(version, 2);
    assert_eq!(
        data,
        json!({"AccessKeyId": "AKIAINTERLOPER000001", "note": "someone else"})
    );
    assert!(bao.kv_read_version("secret", "ci/ci-bot", 3).is_none());
    // No sink holds the new key: it was deleted again; the old key is untouched.
    assert_only_old_key(&emu, &old);
    assert_eq!(history(&emu)["Runs"][0]["Status"], "failed");
    assert_hygiene(&[&bao.root_token], &run, &argv, &[]);
}

#[test]
fn vault_approle_login_in_a_namespace_with_a_narrow_policy() {
    let bao = Bao::start();
    let emu = Emulator::start();
    let old = setup(&emu);
    let ns = "team-a";
    bao.create_namespace(ns);
    bao.enable_kv2_in(ns, "secret");
    let ok = |(s, v): (u16, Value)| assert!((200..300).contains(&s), "{s} {v}");
    ok(bao.call_ns(
        "POST",
        "/v1/sys/auth/approle",
        None,
        Some(ns),
        Some(&json!({"type": "approle"})),
    ));
    ok(bao.call_ns(
        "PUT",
        "/v1/sys/policies/acl/keyturn-ci",
        None,
        Some(ns),
        Some(&json!({"policy": "path \"secret/data/ci/*\" { capabilities = [\"create\", \"read\", \"update\"] }"})),
    ));
    ok(bao.call_ns(
        "POST",
        "/v1/auth/approle/role/keyturn",
        None,
        Some(ns),
        Some(&json!({"token_policies": ["keyturn-ci"], "token_ttl": "10m"})),
    ));
    let (_, r) = bao.call_ns(
        "GET",
        "/v1/auth/approle/role/keyturn/role-id",
        None,
        Some(ns),
        None,
    );
    let role_id = r["data"]["role_id"].as_str().unwrap().to_string();
    let (_, r) = bao.call_ns(
        "POST",
        "/v1/auth/approle/role/keyturn/secret-id",
        None,
        Some(ns),
        None,
    );
    let secret_id = r["data"]["secret_id"].as_str().unwrap().to_string();
    let sid_file = secret_file(&emu, "secret-id", &secret_id);
    let proxy = Proxy::start(&bao.addr, None);
    let cfg = vault_config(
        &emu,
        &proxy.addr,
        &format!(
            "role_id = \"{role_id}\"\nsecret_id_file = \"{}\"",
            sid_file.display()
        ),
        &format!("namespace = \"{ns}\""),
    );
    let (run, argv) = rotate(&emu, &cfg, &["--sink", "ci-vault", "--output", "json"], &[]);
    run.assert_code(0);
    let (status, v) = bao.call_ns("GET", "/v1/secret/data/ci/ci-bot", None, Some(ns), None);
    assert_eq!(status, 200, "{v}");
    let data = &v["data"]["data"];
    let new = creds(
        data["AccessKeyId"].as_str().unwrap(),
        data["SecretAccessKey"].as_str().unwrap(),
    );
    assert!(emu.whoami(&new).is_ok());
    assert_ne!(new.id, old.id);
    // Not in the root namespace.
    assert!(bao.kv_read("secret", "ci/ci-bot").is_none());
    let heads = proxy.heads();
    assert!(heads
        .iter()
        .any(|h| h.starts_with("POST /v1/auth/approle/login ")));
    assert!(heads
        .iter()
        .all(|h| h.to_ascii_lowercase().contains("x-vault-namespace: team-a")));
    assert_eq!(sinks_report(&run)[0]["Verified"], true);
    assert_hygiene(&[&new.secret, &secret_id], &run, &argv, &[]);
    assert_heads_clean(&heads, &[&new.secret, &secret_id], &bao.root_token);
}

#[test]
fn vault_bad_credentials_fail_before_any_write_and_delete_the_new_key() {
    let bao = Bao::start();
    let emu = Emulator::start();
    let old = setup(&emu);
    bao.kv_write("secret", "ci/ci-bot", json!({"AccessKeyId": old.id}), None)
        .unwrap();
    let bad = "s.this-token-does-not-exist-0001";
    let cfg = vault_config(&emu, &bao.addr, "token_env = \"KT_VAULT_TOKEN\"", "");
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &["--sink", "ci-vault", RETIRE[0], RETIRE[1]],
        &[("KT_VAULT_TOKEN", bad)],
    );
    run.assert_code(1)
        .assert_stderr("sink 'ci-vault' (vault) prepare failed")
        .assert_stderr("permission denied");
    assert_only_old_key(&emu, &old);
    assert_eq!(
        bao.kv_read("secret", "ci/ci-bot").unwrap().1,
        1,
        "nothing written"
    );
    assert_hygiene(&[bad], &run, &argv, &[]);
    // AppRole with a wrong secret id: the login fails, same outcome.
    bao.enable_approle();
    let role = bao.create_approle("keyturn", &["default"]);
    let cfg = vault_config(
        &emu,
        &bao.addr,
        &format!(
            "role_id = \"{}\"\nsecret_id_env = \"KT_SECRET_ID\"",
            role.role_id
        ),
        "",
    );
    let wrong = "00000000-1111-2222-3333-444444444444";
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &["--sink", "ci-vault"],
        &[("KT_SECRET_ID", wrong)],
    );
    run.assert_code(1)
        .assert_stderr("sink 'ci-vault' (vault) prepare failed")
        .assert_stderr("AppRole login");
    assert_only_old_key(&emu, &old);
    assert_eq!(bao.kv_read("secret", "ci/ci-bot").unwrap().1, 1);
    assert_hygiene(&[wrong, &role.secret_id], &run, &argv, &[]);
    // A mount with no KV v2 engine is an error, not an empty secret.
    let cfg = vault_config(
        &emu,
        &bao.addr,
        "token_env = \"KT_VAULT_TOKEN\"",
        "mount = \"kv-missing\"",
    );
    let (run, _) = rotate(
        &emu,
        &cfg,
        &["--sink", "ci-vault"],
        &[("KT_VAULT_TOKEN", &bao.root_token)],
    );
    run.assert_code(1)
        .assert_stderr("sink 'ci-vault' (vault) prepare failed")
        .assert_stderr("is there a KV version 2 engine mounted at kv-missing?");
    assert_only_old_key(&emu, &old);
}

#[test]
fn vault_rollback_restores_the_previous_version() {
    let bao = Bao::start();
    let emu = Emulator::start();
    let old = setup(&emu);
    bao.kv_write(
        "secret",
        "ci/ci-bot",
        json!({"AccessKeyId": old.id, "SecretAccessKey": old.secret, "region": "eu-west-1"}),
        None,
    )
    .unwrap();
    let cfg = vault_config(&emu, &bao.addr, "token_env = \"KT_VAULT_TOKEN\"", "");
    let env = [("KT_VAULT_TOKEN", bao.root_token.as_str())];
    let (run, _) = rotate(
        &emu,
        &cfg,
        &["--sink", "ci-vault", RETIRE[0], RETIRE[1]],
        &env,
    );
    run.assert_code(0);
    let (data, _) = bao.kv_read("secret", "ci/ci-bot").unwrap();
    let new_id = data["AccessKeyId"].as_str().unwrap().to_string();
    assert_ne!(new_id, old.id);
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    let (rb, argv) = keyturn(
        &emu,
        &cfg,
        &["rollback", "--user", "ci-bot", "--output", "json"],
        &env,
    );
    rb.assert_code(0);
    let v = rb.json();
    assert_eq!(v["Sinks"][0]["Name"], "ci-vault");
    assert_eq!(v["Sinks"][0]["Result"], "restored", "{v}");
    let (data, version) = bao.kv_read("secret", "ci/ci-bot").unwrap();
    assert_eq!(
        version, 3,
        "the old key fields written back as a new version"
    );
    assert_eq!(
        data,
        json!({"AccessKeyId": old.id, "SecretAccessKey": old.secret, "region": "eu-west-1"})
    );
    assert!(emu.whoami(&old).is_ok(), "the old key works again");
    assert_eq!(
        emu.keys("ci-bot"),
        sorted(vec![
            (old.id.clone(), "Active".into()),
            (new_id.clone(), "Inactive".into())
        ])
    );
    assert_hygiene(&[&old.secret, &bao.root_token], &rb, &argv, &[]);
}

// ---- Informatica -------------------------------------------------------------------------

fn iics_ids(f: &Fixture) -> Vec<String> {
    f.ready["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn iics_config(emu: &Emulator, f: &Fixture, password: &str) -> PathBuf {
    let ids: Vec<String> = iics_ids(f).iter().map(|i| format!("\"{i}\"")).collect();
    write_config(
        emu,
        &format!(
            "[[sinks]]\nname = \"iics\"\ntype = \"informatica\"\nlogin_url = \"{}\"\nusername = \"{}\"\n{password}\nconnections = [{}]\n",
            f.str("login_url"),
            f.str("username"),
            ids.join(", ")
        ),
    )
}

/// (access key, secret key) of each connection, unmasked (fixture state).
fn iics_keys(f: &Fixture) -> Vec<(String, String)> {
    let st = f.state();
    iics_ids(f)
        .iter()
        .map(|id| {
            let p = &st["connections"][id]["connParams"];
            (
                p["Access Key"].as_str().unwrap().to_string(),
                p["Secret Key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn assert_logged_out(f: &Fixture) {
    let s = &f.state()["sessions"];
    assert!(s["logins"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["logins"], s["logouts"], "every session logged out: {s}");
    assert_eq!(s["active"], 0, "{s}");
}

#[test]
fn informatica_sink_updates_each_connection_in_partial_mode_and_logs_out() {
    let infa = Fixture::start("informatica");
    let emu = Emulator::start();
    let old = setup(&emu);
    let cfg = iics_config(&emu, &infa, "password_env = \"IICS_PASSWORD\"");
    let password = infa.str("password").to_string();
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &["--sink", "iics", RETIRE[0], RETIRE[1], "--output", "json"],
        &[("IICS_PASSWORD", &password)],
    );
    run.assert_code(0);
    let keys = iics_keys(&infa);
    let new = creds(&keys[0].0, &keys[0].1);
    assert_ne!(new.id, old.id);
    assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
    assert!(
        emu.whoami(&new).is_ok(),
        "the delivered secret is the real one"
    );
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    let st = infa.state();
    assert_eq!(st["full_updates"], 0);
    assert_eq!(st["mask_writes"], json!([]));
    let updates = st["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 3);
    for u in updates {
        assert_eq!(u["mode"], "partial");
        assert_eq!(u["fields"], json!(["Access Key", "Secret Key"]));
        assert_eq!(u["lost_fields"], json!([]));
    }
    for id in iics_ids(&infa) {
        assert!(
            st["connections"][&id]["connParams"]["Folder Path"].is_string(),
            "other connection parameters are kept"
        );
    }
    // Each phase (prepare, deliver, verify) logs in once and logs out.
    assert_eq!(st["sessions"]["logins"], 3);
    assert_logged_out(&infa);
    let reqs = infa.requests();
    let posts: Vec<&Value> = reqs
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"].as_str().unwrap().contains("/connection/"))
        .collect();
    assert_eq!(posts.len(), 3);
    for p in &posts {
        assert_eq!(p["headers"]["update-mode"], "PARTIAL");
        assert_eq!(p["headers"]["icsessionid"], "present");
        // Only the two fields, never a GET body with its "********" masks.
        assert_eq!(
            p["body"],
            json!({"@type": "connection", "connParams": {"Access Key": new.id, "Secret Key": new.secret}})
        );
    }
    assert!(reqs
        .iter()
        .all(|r| !r["body"].to_string().contains("********")));
    let s = sinks_report(&run);
    assert_eq!(s[0]["Verified"], true);
    assert!(
        s[0]["Detail"].as_str().unwrap().contains("updateTime"),
        "{s:?}"
    );
    assert_hygiene(&[&new.secret, &password], &run, &argv, &reqs);
}

#[test]
fn informatica_500_in_the_middle_then_resume_finishes_the_rest() {
    let infa = Fixture::start("informatica");
    let emu = Emulator::start();
    let old = setup(&emu);
    let ids = iics_ids(&infa);
    let cfg = iics_config(&emu, &infa, "password_env = \"IICS_PASSWORD\"");
    let password = infa.str("password").to_string();
    let env = [("IICS_PASSWORD", password.as_str())];
    // Every update from the second one on fails with a 500 (retries included).
    infa.fault(
        json!({"method": "POST", "path": "/saas/api/v2/connection/*", "mode": "error",
                      "status": 500, "nth": 2, "count": 0}),
    );
    let (run, argv) = rotate(&emu, &cfg, &["--sink", "iics", RETIRE[0], RETIRE[1]], &env);
    run.assert_code(1)
        .assert_stderr("sink 'iics' (informatica) delivery failed")
        .assert_stderr("HTTP 500")
        .assert_stderr(format!(
            "connections: {} holds the new key; {} may hold it (the outcome of its update is unknown); {} still holds the old key",
            ids[0], ids[1], ids[2]
        ))
        .assert_stderr("keyturn resume");
    let keys = iics_keys(&infa);
    let new = creds(&keys[0].0, &keys[0].1);
    assert_ne!(new.id, old.id);
    assert!(keys[1].0.starts_with("AKIAOLDKEY") && keys[2].0.starts_with("AKIAOLDKEY"));
    // The first connection uses the new key, the others the old one: both stay Active.
    assert!(emu.whoami(&old).is_ok());
    assert!(emu.whoami(&new).is_ok());
    assert_eq!(emu.keys("ci-bot").len(), 2);
    assert_logged_out(&infa);
    let hist = history(&emu);
    assert_eq!(hist["Runs"][0]["Status"], "incomplete");
    let run_id = hist["Runs"][0]["RunId"].as_str().unwrap().to_string();
    assert_hygiene(&[&new.secret, &password], &run, &argv, &infa.requests());

    infa.faults(json!([]));
    let (resumed, argv) = keyturn(&emu, &cfg, &["resume", &run_id], &env);
    resumed.assert_code(0);
    assert!(iics_keys(&infa)
        .iter()
        .all(|k| k.0 == new.id && k.1 == new.secret));
    // The first connection was not written again.
    let updates = infa.state()["updates"].as_array().unwrap().clone();
    let per: Vec<usize> = ids
        .iter()
        .map(|id| {
            updates
                .iter()
                .filter(|u| u["connection"] == id.as_str())
                .count()
        })
        .collect();
    assert_eq!(per, [1, 1, 1], "{updates:?}");
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    assert_eq!(
        emu.keys("ci-bot"),
        sorted(vec![
            (new.id.clone(), "Active".into()),
            (old.id.clone(), "Inactive".into())
        ])
    );
    assert_logged_out(&infa);
    assert_eq!(history(&emu)["Runs"][0]["Status"], "succeeded");
    assert_hygiene(&[&new.secret, &password], &resumed, &argv, &infa.requests());
}

#[test]
fn informatica_bad_password_deletes_the_new_key_and_writes_nothing() {
    let infa = Fixture::start("informatica");
    let emu = Emulator::start();
    let old = setup(&emu);
    let cfg = iics_config(&emu, &infa, "password_env = \"IICS_PASSWORD\"");
    let wrong = "not-the-iics-password-42";
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &["--sink", "iics", RETIRE[0], RETIRE[1]],
        &[("IICS_PASSWORD", wrong)],
    );
    run.assert_code(1)
        .assert_stderr("sink 'iics' (informatica) prepare failed")
        .assert_stderr("UI_10000: User name or password is not valid")
        .assert_stderr("password_env IICS_PASSWORD");
    assert_only_old_key(&emu, &old);
    let st = infa.state();
    assert_eq!(st["updates"], json!([]));
    assert_eq!(st["sessions"]["failed_logins"], 1);
    assert!(iics_keys(&infa)
        .iter()
        .all(|k| k.0.starts_with("AKIAOLDKEY")));
    assert_eq!(history(&emu)["Runs"][0]["Status"], "failed");
    assert_hygiene(&[wrong], &run, &argv, &infa.requests());
}

#[test]
fn informatica_password_from_a_kms_file_made_the_keyfresh_way() {
    let infa = Fixture::start("informatica");
    let emu = Emulator::start();
    let old = setup(&emu);
    let kms = aws_sdk_kms::Client::new(&emu.sdk_config(&emu.admin));
    let key_id = rt()
        .block_on(kms.create_key().description("keyFresh password").send())
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_string();
    let other_key = rt()
        .block_on(kms.create_key().send())
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_string();
    // keyFresh: aws kms encrypt --key-id K --plaintext PW --output text --query
    // CiphertextBlob | base64 --decode > passwd.encrypt. The base64 text comes from
    // boto3 (the emulator venv has it; the AWS CLI may not be installed), the
    // password through the environment instead of argv, the rest is the same pipe.
    let file = emu.dir.path().join("passwd.encrypt");
    let py = std::env::var("KEYTURN_PYTHON")
        .unwrap_or_else(|_| repo_root().join(".venv/bin/python").display().to_string());
    let script = "import base64, os, sys, boto3\nk = boto3.client('kms', endpoint_url=os.environ['AWS_ENDPOINT_URL'], region_name='us-east-1')\nprint(base64.b64encode(k.encrypt(KeyId=sys.argv[1], Plaintext=os.environ['PW'].encode())['CiphertextBlob']).decode())";
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; \"$PY\" -c \"$SCRIPT\" \"$KEY\" | base64 --decode > '{}'",
            file.display()
        ))
        .env("PY", &py)
        .env("SCRIPT", script)
        .env("KEY", &key_id)
        .env("PW", infa.str("password"))
        .env("AWS_ENDPOINT_URL", &emu.endpoint)
        .env("AWS_ACCESS_KEY_ID", &emu.admin.id)
        .env("AWS_SECRET_ACCESS_KEY", &emu.admin.secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&file).unwrap();
    assert!(!bytes.is_empty());
    assert!(
        !bytes
            .windows(infa.str("password").len())
            .any(|w| w == infa.str("password").as_bytes()),
        "the file holds ciphertext"
    );
    // Pinned to the wrong key: KMS refuses, nothing reaches Informatica.
    let cfg = iics_config(
        &emu,
        &infa,
        &format!(
            "password_kms_file = \"{}\"\npassword_kms_key_id = \"{other_key}\"",
            file.display()
        ),
    );
    let (run, _) = rotate(&emu, &cfg, &["--sink", "iics"], &[]);
    run.assert_code(1)
        .assert_stderr("sink 'iics' (informatica) prepare failed")
        .assert_stderr("kms:Decrypt failed");
    assert_only_old_key(&emu, &old);
    assert_eq!(infa.state()["sessions"]["logins"], 0);
    assert_eq!(infa.state()["sessions"]["failed_logins"], 0);
    // The right key: keyturn decrypts the password and delivers.
    let cfg = iics_config(
        &emu,
        &infa,
        &format!(
            "password_kms_file = \"{}\"\npassword_kms_key_id = \"{key_id}\"",
            file.display()
        ),
    );
    let (run, argv) = rotate(&emu, &cfg, &["--sink", "iics", RETIRE[0], RETIRE[1]], &[]);
    run.assert_code(0);
    let keys = iics_keys(&infa);
    let new = creds(&keys[0].0, &keys[0].1);
    assert!(emu.whoami(&new).is_ok());
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    assert_logged_out(&infa);
    assert_hygiene(
        &[&new.secret, infa.str("password")],
        &run,
        &argv,
        &infa.requests(),
    );
}

// ---- GitHub ------------------------------------------------------------------------------

fn gh_sinks(gh: &Fixture, token: &str) -> String {
    format!(
        r#"
[[sinks]]
name = "gh-repo"
type = "github"
api_url = "{api}"
repository = "octo-org/octo-repo"
{token}

[[sinks]]
name = "gh-prod"
type = "github"
api_url = "{api}"
repository = "octo-org/octo-repo"
environment = "prod"
{token}
"#,
        api = gh.str("api_url"),
    )
}

fn gh_secret<'a>(st: &'a Value, scope: &str, name: &str) -> &'a Value {
    &st["scopes"][scope]["secrets"][name]
}

#[test]
fn github_repository_and_environment_secrets_are_sealed_to_each_scope_key() {
    let gh = Fixture::start("github");
    let emu = Emulator::start();
    let old = setup(&emu);
    let cfg = write_config(&emu, &gh_sinks(&gh, "token_env = \"GH_TOKEN\""));
    let token = gh.str("token").to_string();
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &[
            "--sink", "gh-repo", "--sink", "gh-prod", RETIRE[0], RETIRE[1], "--output", "json",
        ],
        &[("GH_TOKEN", &token)],
    );
    run.assert_code(0);
    let st = gh.state();
    let repo = "repos/octo-org/octo-repo";
    let env = "repos/octo-org/octo-repo/environments/prod";
    // What the fixture unsealed with each scope's private key is the real key.
    let new = creds(
        gh_secret(&st, repo, "AWS_ACCESS_KEY_ID")["value"]
            .as_str()
            .unwrap(),
        gh_secret(&st, repo, "AWS_SECRET_ACCESS_KEY")["value"]
            .as_str()
            .unwrap(),
    );
    assert!(emu.whoami(&new).is_ok());
    assert_ne!(new.id, old.id);
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    for scope in [repo, env] {
        for (name, want) in [
            ("AWS_ACCESS_KEY_ID", &new.id),
            ("AWS_SECRET_ACCESS_KEY", &new.secret),
        ] {
            let s = gh_secret(&st, scope, name);
            assert_eq!(s["value"], want.as_str(), "{scope} {name}");
            assert_eq!(
                s["key_id"], st["scopes"][scope]["key_id"],
                "sealed to {scope}'s key"
            );
        }
    }
    assert_ne!(st["scopes"][repo]["key_id"], st["scopes"][env]["key_id"]);
    assert_eq!(st["rejected"], json!([]));
    assert_eq!(st["missing_version_header"], 0);
    assert_eq!(st["missing_user_agent"], 0);
    let reqs = gh.requests();
    for r in &reqs {
        assert_eq!(r["headers"]["x-github-api-version"], "2022-11-28", "{r}");
        assert_eq!(r["headers"]["authorization"], "present");
        assert_eq!(r["headers"]["accept"], "application/vnd.github+json");
    }
    let puts: Vec<&Value> = reqs.iter().filter(|r| r["method"] == "PUT").collect();
    assert_eq!(puts.len(), 4);
    for p in &puts {
        let enc = p["body"]["encrypted_value"].as_str().unwrap();
        assert!(!enc.contains(&new.secret) && !enc.contains(&new.id));
    }
    let s = sinks_report(&run);
    assert!(s.iter().all(|x| x["Verified"] == true), "{s:?}");
    assert!(
        s[0]["Detail"].as_str().unwrap().contains("updated at"),
        "{s:?}"
    );
    // Bodies hold only sealed boxes: the secret is nowhere in what GitHub received.
    let all = serde_json::to_string(&reqs).unwrap();
    assert!(!all.contains(&new.secret));
    assert_hygiene(&[&new.secret, &token], &run, &argv, &reqs);
}

#[test]
fn github_organization_secrets_keep_their_visibility() {
    let gh = Fixture::start("github");
    let emu = Emulator::start();
    let old = setup(&emu);
    gh.seed(
        json!({"secrets": [{"scope": "orgs/octo-org", "name": "AWS_ACCESS_KEY_ID",
        "value": old.id, "visibility": "selected", "selected_repository_ids": [1296270]}]}),
    );
    let token = secret_file(&emu, "gh-token", gh.str("token"));
    let cfg = write_config(
        &emu,
        &format!(
            "[[sinks]]\nname = \"gh-org\"\ntype = \"github\"\napi_url = \"{}\"\norganization = \"octo-org\"\nvisibility = \"all\"\ntoken_file = \"{}\"\n",
            gh.str("api_url"),
            token.display()
        ),
    );
    let (run, argv) = rotate(&emu, &cfg, &["--sink", "gh-org"], &[]);
    run.assert_code(0);
    let st = gh.state();
    let id = gh_secret(&st, "orgs/octo-org", "AWS_ACCESS_KEY_ID");
    let secret = gh_secret(&st, "orgs/octo-org", "AWS_SECRET_ACCESS_KEY");
    assert_ne!(id["value"], old.id.as_str());
    assert!(emu
        .whoami(&creds(
            id["value"].as_str().unwrap(),
            secret["value"].as_str().unwrap()
        ))
        .is_ok());
    // The existing secret kept its visibility and repositories; the new one got the
    // configured visibility.
    assert_eq!(id["visibility"], "selected");
    assert_eq!(id["selected_repository_ids"], json!([1296270]));
    assert_eq!(secret["visibility"], "all");
    assert_hygiene(
        &[secret["value"].as_str().unwrap(), gh.str("token")],
        &run,
        &argv,
        &gh.requests(),
    );
}

#[test]
fn github_bad_tokens_delete_the_new_key_and_write_nothing() {
    let gh = Fixture::start("github");
    let emu = Emulator::start();
    let old = setup(&emu);
    let cfg = write_config(&emu, &gh_sinks(&gh, "token_env = \"GH_TOKEN\""));
    let bad = "ghp_000000000000000000000000000000000000";
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &["--sink", "gh-repo", RETIRE[0], RETIRE[1]],
        &[("GH_TOKEN", bad)],
    );
    run.assert_code(1)
        .assert_stderr("sink 'gh-repo' (github) prepare failed")
        .assert_stderr("HTTP 401 Unauthorized: Bad credentials")
        .assert_stderr("token_env GH_TOKEN");
    assert_only_old_key(&emu, &old);
    assert_hygiene(&[bad], &run, &argv, &gh.requests());
    // A valid token that cannot see the repository: GitHub answers 404.
    let (run, _) = rotate(
        &emu,
        &cfg,
        &["--sink", "gh-repo"],
        &[("GH_TOKEN", gh.str("token_no_access"))],
    );
    run.assert_code(1)
        .assert_stderr("sink 'gh-repo' (github) prepare failed")
        .assert_stderr("or the token cannot see it");
    assert_only_old_key(&emu, &old);
    let st = gh.state();
    assert_eq!(st["writes"], json!([]));
    assert!(gh.requests().iter().all(|r| r["method"] == "GET"));
}

#[test]
fn github_rate_limits_and_a_rotated_public_key_are_handled() {
    let gh = Fixture::start("github");
    let emu = Emulator::start();
    let old = setup(&emu);
    let cfg = write_config(&emu, &gh_sinks(&gh, "token_env = \"GH_TOKEN\""));
    let token = gh.str("token").to_string();
    let env = [("GH_TOKEN", token.as_str())];
    // A primary limit that resets in an hour: keyturn does not wait that long; it fails
    // before writing anything and the new key is deleted again.
    gh.fault(
        json!({"method": "GET", "path": "/repos/*", "mode": "rate-limit", "kind": "primary",
                    "status": 403, "reset_after": 3600}),
    );
    let (run, _) = rotate(&emu, &cfg, &["--sink", "gh-repo"], &env);
    run.assert_code(1)
        .assert_stderr("sink 'gh-repo' (github) prepare failed")
        .assert_stderr("longer than keyturn waits");
    assert_only_old_key(&emu, &old);
    assert_eq!(gh.state()["rate_limit"]["early_retries"], 0);
    gh.reset();
    // A secondary limit on the first write (Retry-After: 1), then GitHub rotates the
    // repository's key before the second write (its key_id is now stale).
    gh.faults(json!([
        {"method": "PUT", "path": "/repos/*", "mode": "rate-limit", "kind": "secondary", "retry_after": 1},
        {"method": "PUT", "path": "/repos/*", "mode": "rotate-key", "scope": "repos/octo-org/octo-repo", "nth": 2},
    ]));
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &["--sink", "gh-repo", RETIRE[0], RETIRE[1]],
        &env,
    );
    run.assert_code(0);
    let st = gh.state();
    assert_eq!(
        st["rate_limit"]["early_retries"], 0,
        "keyturn waited as told"
    );
    let reasons: Vec<&str> = st["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["stale key_id"]);
    let repo = "repos/octo-org/octo-repo";
    let secret = gh_secret(&st, repo, "AWS_SECRET_ACCESS_KEY");
    assert_eq!(
        secret["key_id"], st["scopes"][repo]["key_id"],
        "sealed again to the new key"
    );
    let new = creds(
        gh_secret(&st, repo, "AWS_ACCESS_KEY_ID")["value"]
            .as_str()
            .unwrap(),
        secret["value"].as_str().unwrap(),
    );
    assert!(emu.whoami(&new).is_ok());
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    assert_hygiene(&[&new.secret, &token], &run, &argv, &gh.requests());
}

// ---- Infisical ---------------------------------------------------------------------------

fn inf_config(emu: &Emulator, inf: &Fixture, client_id: &str) -> PathBuf {
    write_config(
        emu,
        &format!(
            "[[sinks]]\nname = \"inf\"\ntype = \"infisical\"\nurl = \"{}\"\nclient_id = \"{client_id}\"\nclient_secret_env = \"INF_SECRET\"\nproject_id = \"{}\"\nenvironment = \"prod\"\nsecret_path = \"/ci\"\n",
            inf.str("url"),
            inf.str("project_id")
        ),
    )
}

#[test]
fn infisical_sink_updates_existing_and_creates_missing_secrets() {
    let inf = Fixture::start("infisical");
    let emu = Emulator::start();
    let old = setup(&emu);
    inf.seed(json!({"secrets": [
        {"environment": "prod", "secretPath": "/ci", "key": "AWS_ACCESS_KEY_ID", "value": old.id},
        {"environment": "prod", "secretPath": "/ci", "key": "BUCKET", "value": "reports"},
    ]}));
    // The access token expires during the first write: keyturn logs in again once.
    inf.fault(json!({"method": "PATCH", "path": "/api/v4/secrets/*", "mode": "expire-token"}));
    let cfg = inf_config(&emu, &inf, inf.str("client_id"));
    let secret = inf.str("client_secret").to_string();
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &["--sink", "inf", RETIRE[0], RETIRE[1], "--output", "json"],
        &[("INF_SECRET", &secret)],
    );
    run.assert_code(0);
    let st = inf.state();
    let ci = &st["secrets"]["prod"]["/ci"];
    let new = creds(
        ci["AWS_ACCESS_KEY_ID"]["value"].as_str().unwrap(),
        ci["AWS_SECRET_ACCESS_KEY"]["value"].as_str().unwrap(),
    );
    assert_ne!(new.id, old.id);
    assert!(emu.whoami(&new).is_ok());
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    assert_eq!(ci["AWS_ACCESS_KEY_ID"]["version"], 2, "updated");
    assert_eq!(ci["AWS_SECRET_ACCESS_KEY"]["version"], 1, "created");
    assert_eq!(ci["BUCKET"]["value"], "reports", "other secrets untouched");
    let ops: Vec<&str> = st["writes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["update", "create"]);
    assert_eq!(
        st["logins"], 2,
        "one login, and one after the token expired"
    );
    assert_eq!(sinks_report(&run)[0]["Verified"], true);
    let reqs = inf.requests();
    // Verification read the values back.
    assert!(reqs.iter().any(|r| r["method"] == "GET"
        && r["path"] == "/api/v4/secrets/AWS_SECRET_ACCESS_KEY"
        && r["query"]["viewSecretValue"] == "true"));
    assert_hygiene(&[&new.secret, &secret], &run, &argv, &reqs);
}

#[test]
fn infisical_bad_client_secret_and_a_read_only_identity_write_nothing() {
    let inf = Fixture::start("infisical");
    let emu = Emulator::start();
    let old = setup(&emu);
    let cfg = inf_config(&emu, &inf, inf.str("client_id"));
    let wrong = "0123456789abcdef0123456789abcdef";
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &["--sink", "inf", RETIRE[0], RETIRE[1]],
        &[("INF_SECRET", wrong)],
    );
    run.assert_code(1)
        .assert_stderr("sink 'inf' (infisical) prepare failed")
        .assert_stderr("UnauthorizedError: Invalid credentials");
    assert_only_old_key(&emu, &old);
    assert_hygiene(&[wrong], &run, &argv, &inf.requests());
    // An identity that may read but not edit: refused at the first write, nothing
    // written, so the new key is deleted again.
    let cfg = inf_config(&emu, &inf, inf.str("readonly_client_id"));
    let ro = inf.str("readonly_client_secret").to_string();
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &["--sink", "inf", RETIRE[0], RETIRE[1]],
        &[("INF_SECRET", &ro)],
    );
    run.assert_code(1)
        .assert_stderr("sink 'inf' (infisical) delivery failed")
        .assert_stderr("PermissionDenied: You are not allowed to create on secrets");
    assert_only_old_key(&emu, &old);
    let st = inf.state();
    assert_eq!(st["writes"], json!([]));
    assert_eq!(st["rejected"][0]["reason"], "permission");
    assert_eq!(st["secrets"]["prod"]["/ci"], json!({}));
    assert_hygiene(&[&ro], &run, &argv, &inf.requests());
}

#[test]
fn infisical_lost_answer_to_a_create_is_finished_by_resume_without_writing_twice() {
    let inf = Fixture::start("infisical");
    let emu = Emulator::start();
    let old = setup(&emu);
    // Infisical performs the first create, then the connection drops before the
    // answer: keyturn cannot know whether it was written, so nothing is revoked.
    inf.fault(json!({"method": "POST", "path": "/api/v4/secrets/*", "mode": "drop-response"}));
    let cfg = inf_config(&emu, &inf, inf.str("client_id"));
    let secret = inf.str("client_secret").to_string();
    let env = [("INF_SECRET", secret.as_str())];
    let (run, argv) = rotate(&emu, &cfg, &["--sink", "inf", RETIRE[0], RETIRE[1]], &env);
    run.assert_code(1)
        .assert_stderr("sink 'inf' (infisical) delivery failed")
        .assert_stderr("create secret AWS_ACCESS_KEY_ID: the request failed")
        .assert_stderr("inf failed part-way and may hold it")
        .assert_stderr("keyturn resume");
    assert_eq!(emu.keys("ci-bot").len(), 2, "both keys stay Active");
    assert!(emu.whoami(&old).is_ok());
    let hist = history(&emu);
    assert_eq!(hist["Runs"][0]["Status"], "incomplete");
    let run_id = hist["Runs"][0]["RunId"].as_str().unwrap().to_string();
    let ci = inf.state()["secrets"]["prod"]["/ci"].clone();
    assert!(
        ci["AWS_ACCESS_KEY_ID"].is_object(),
        "the lost create did happen: {ci}"
    );
    assert!(ci["AWS_SECRET_ACCESS_KEY"].is_null());
    assert_hygiene(&[&secret], &run, &argv, &inf.requests());
    // resume: the secret that is there is left alone, the missing one is created.
    let (resumed, argv) = keyturn(&emu, &cfg, &["resume", &run_id], &env);
    resumed.assert_code(0);
    let st = inf.state();
    let ci = &st["secrets"]["prod"]["/ci"];
    let new = creds(
        ci["AWS_ACCESS_KEY_ID"]["value"].as_str().unwrap(),
        ci["AWS_SECRET_ACCESS_KEY"]["value"].as_str().unwrap(),
    );
    assert!(emu.whoami(&new).is_ok());
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    let writes: Vec<(&str, &str)> = st["writes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["op"].as_str().unwrap(), w["key"].as_str().unwrap()))
        .collect();
    assert_eq!(
        writes,
        [
            ("create", "AWS_ACCESS_KEY_ID"),
            ("create", "AWS_SECRET_ACCESS_KEY")
        ],
        "each secret written once"
    );
    assert_eq!(ci["AWS_ACCESS_KEY_ID"]["version"], 1);
    assert_hygiene(&[&new.secret, &secret], &resumed, &argv, &inf.requests());
}

// ---- GitLab ------------------------------------------------------------------------------

fn gitlab_vars<'a>(st: &'a Value, kind: &str, owner: &str, key: &str) -> Vec<&'a Value> {
    st[kind][owner]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["key"] == key)
        .collect()
}

#[test]
fn gitlab_sink_sets_masked_protected_variables_in_one_environment_scope() {
    let gl = Fixture::start("gitlab");
    let emu = Emulator::start();
    let old = setup(&emu);
    let project = "keyturn-group/keyturn-app";
    gl.seed(json!({"variables": [
        {"project": "42", "key": "AWS_ACCESS_KEY_ID", "value": old.id, "environment_scope": "production"},
        {"project": "42", "key": "AWS_ACCESS_KEY_ID", "value": "AKIAOTHERSCOPE000001", "environment_scope": "*"},
    ]}));
    let cfg = write_config(
        &emu,
        &format!(
            r#"
[[sinks]]
name = "gl-app"
type = "gitlab"
url = "{url}"
project = "{project}"
token_env = "GL_TOKEN"
masked = true
protected = true
environment_scope = "production"

[[sinks]]
name = "gl-group"
type = "gitlab"
url = "{url}"
group = "7"
token_env = "GL_TOKEN"
"#,
            url = gl.str("url")
        ),
    );
    let token = gl.str("token").to_string();
    let (run, argv) = rotate(
        &emu,
        &cfg,
        &[
            "--sink", "gl-app", "--sink", "gl-group", RETIRE[0], RETIRE[1], "--output", "json",
        ],
        &[("GL_TOKEN", &token)],
    );
    run.assert_code(0);
    let st = gl.state();
    let ids = gitlab_vars(&st, "projects", project, "AWS_ACCESS_KEY_ID");
    assert_eq!(ids.len(), 2);
    let prod = ids
        .iter()
        .find(|v| v["environment_scope"] == "production")
        .unwrap();
    let other = ids.iter().find(|v| v["environment_scope"] == "*").unwrap();
    assert_eq!(
        other["value"], "AKIAOTHERSCOPE000001",
        "the other scope is untouched"
    );
    let secrets = gitlab_vars(&st, "projects", project, "AWS_SECRET_ACCESS_KEY");
    assert_eq!(secrets.len(), 1);
    let new = creds(
        prod["value"].as_str().unwrap(),
        secrets[0]["value"].as_str().unwrap(),
    );
    assert!(emu.whoami(&new).is_ok());
    assert_eq!(emu.whoami(&old), Err("InvalidClientTokenId".into()));
    for v in [*prod, secrets[0]] {
        assert_eq!(v["masked"], true);
        assert_eq!(v["protected"], true);
        assert_eq!(v["environment_scope"], "production");
    }
    // The group sink: created with the defaults (masked, not protected, scope *).
    for (key, want) in [
        ("AWS_ACCESS_KEY_ID", &new.id),
        ("AWS_SECRET_ACCESS_KEY", &new.secret),
    ] {
        let g = gitlab_vars(&st, "groups", "keyturn-group", key);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0]["value"], want.as_str());
        assert_eq!(g[0]["masked"], true);
        assert_eq!(g[0]["protected"], false);
        assert_eq!(g[0]["environment_scope"], "*");
    }
    let writes: Vec<(String, String)> = st["writes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["op"].as_str().unwrap().into(),
                w["key"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        writes,
        [
            ("update".to_string(), "AWS_ACCESS_KEY_ID".to_string()),
            ("create".into(), "AWS_SECRET_ACCESS_KEY".into()),
            ("create".into(), "AWS_ACCESS_KEY_ID".into()),
            ("create".into(), "AWS_SECRET_ACCESS_KEY".into()),
        ]
    );
    let reqs = gl.requests();
    for r in reqs
        .iter()
        .filter(|r| r["path"].as_str().unwrap().contains("/projects/"))
    {
        assert!(
            r["path"]
                .as_str()
                .unwrap()
                .starts_with("/api/v4/projects/keyturn-group%2Fkeyturn-app/variables"),
            "{r}"
        );
        assert_eq!(r["headers"]["private-token"], "present");
        if r["method"] != "POST" {
            assert_eq!(r["query"]["filter[environment_scope]"], "production", "{r}");
        }
    }
    assert!(sinks_report(&run).iter().all(|s| s["Verified"] == true));
    assert_hygiene(&[&new.secret, &token], &run, &argv, &reqs);
}

#[test]
fn gitlab_bad_tokens_delete_the_new_key_and_write_nothing() {
    let gl = Fixture::start("gitlab");
    let emu = Emulator::start();
    let old = setup(&emu);
    let token_file = emu.dir.path().join("gl-token");
    let cfg = write_config(
        &emu,
        &format!(
            "[[sinks]]\nname = \"gl-app\"\ntype = \"gitlab\"\nurl = \"{}\"\nproject = \"42\"\ntoken_file = \"{}\"\n",
            gl.str("url"),
            token_file.display()
        ),
    );
    for (token, needle) in [
        (
            "glpat-00000000000000000000",
            "HTTP 401 Unauthorized: 401 Unauthorized",
        ),
        (gl.str("developer_token"), "Maintainer role"),
        (gl.str("no_access_token"), "404 Project Not Found"),
    ] {
        secret_file(&emu, "gl-token", token);
        let (run, argv) = rotate(&emu, &cfg, &["--sink", "gl-app", RETIRE[0], RETIRE[1]], &[]);
        run.assert_code(1)
            .assert_stderr("sink 'gl-app' (gitlab) prepare failed")
            .assert_stderr(needle);
        assert_only_old_key(&emu, &old);
        assert_hygiene(&[token], &run, &argv, &gl.requests());
    }
    assert_eq!(gl.state()["writes"], json!([]));
    assert!(gl.requests().iter().all(|r| r["method"] == "GET"));
}

// ---- every sink at once, at every verbosity ------------------------------------------------

const INFISICAL_ENV: &str = "environment = \"dev\"";

/// `[[sinks]]` v (Vault), i (Informatica), g (GitHub), f (Infisical, `infisical` adds
/// its environment lines), l (GitLab), with their credentials in T_VAULT, T_IICS,
/// T_GH, T_INF and T_GL.
fn five_sinks(
    bao: &Bao,
    infa: &Fixture,
    gh: &Fixture,
    inf: &Fixture,
    gl: &Fixture,
    infisical: &str,
) -> String {
    let ids: Vec<String> = iics_ids(infa).iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        r#"
[[sinks]]
name = "v"
type = "vault"
address = "{bao}"
path = "ci/{{user}}"
token_env = "T_VAULT"

[[sinks]]
name = "i"
type = "informatica"
login_url = "{login}"
username = "{user}"
password_env = "T_IICS"
connections = [{ids}]

[[sinks]]
name = "g"
type = "github"
api_url = "{gh}"
repository = "octo-org/octo-repo"
token_env = "T_GH"

[[sinks]]
name = "f"
type = "infisical"
url = "{inf}"
client_id = "{client}"
client_secret_env = "T_INF"
project_id = "{project}"
{infisical}

[[sinks]]
name = "l"
type = "gitlab"
url = "{gl}"
project = "42"
token_env = "T_GL"
"#,
        bao = bao.addr,
        login = infa.str("login_url"),
        user = infa.str("username"),
        ids = ids.join(", "),
        gh = gh.str("api_url"),
        inf = inf.str("url"),
        client = inf.str("client_id"),
        project = inf.str("project_id"),
        gl = gl.str("url"),
    )
}

#[test]
fn no_secret_or_token_reaches_the_logs_at_any_verbosity() {
    let bao = Bao::start();
    let infa = Fixture::start("informatica");
    let gh = Fixture::start("github");
    let inf = Fixture::start("infisical");
    let gl = Fixture::start("gitlab");
    let emu = Emulator::start();
    emu.create_user("ci-bot");
    emu.create_key("ci-bot");
    let cfg = write_config(
        &emu,
        &format!(
            r#"
{sinks}"#,
            sinks = five_sinks(&bao, &infa, &gh, &inf, &gl, INFISICAL_ENV),
        ),
    );
    let env = [
        ("T_VAULT", bao.root_token.as_str()),
        ("T_IICS", infa.str("password")),
        ("T_GH", gh.str("token")),
        ("T_INF", inf.str("client_secret")),
        ("T_GL", gl.str("token")),
    ];
    let creds: Vec<&str> = env.iter().map(|(_, v)| *v).collect();
    for (flag, rust_log) in [("-v", None), ("-vvv", None), ("-q", Some("trace"))] {
        let mut args = vec![flag, "--config"];
        let cfg_s = cfg.display().to_string();
        args.push(&cfg_s);
        args.extend([
            "rotate",
            "--user",
            "ci-bot",
            "--deactivate-old-keys",
            "--delete-inactive-keys",
            "--yes",
        ]);
        for s in ["v", "i", "g", "f", "l"] {
            args.extend(["--sink", s]);
        }
        let mut cmd = emu.keyturn();
        cmd.args(&args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        if let Some(l) = rust_log {
            cmd.env("RUST_LOG", l);
        }
        let run = emu.run(&mut cmd);
        run.assert_code(0);
        assert!(run.stderr.len() > 2000, "logs were produced at {flag}");
        let (data, _) = bao.kv_read("secret", "ci/ci-bot").unwrap();
        let new_secret = data["SecretAccessKey"].as_str().unwrap().to_string();
        let mut secrets = creds.clone();
        secrets.push(&new_secret);
        assert_hygiene(
            &secrets,
            &run,
            &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            &[
                infa.requests(),
                gh.requests(),
                inf.requests(),
                gl.requests(),
            ]
            .concat(),
        );
        // Access tokens the services handed out stay out too (Infisical's are JWTs).
        let text = format!("{}{}", run.stdout, run.stderr);
        assert!(
            !text.contains("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."),
            "an Infisical access token in the logs"
        );
    }
}

// ---- Fleet runs -------------------------------------------------------------------------

/// `keyturn run` delivers through the same sinks: one due user, a rotation block naming
/// all five services; each service ends up holding the new key, the report says each
/// delivery happened, and a second run changes nothing.
#[test]
fn a_fleet_run_delivers_to_all_five_services() {
    let bao = Bao::start();
    let infa = Fixture::start("informatica");
    let gh = Fixture::start("github");
    let inf = Fixture::start("infisical");
    let gl = Fixture::start("gitlab");
    let emu = Emulator::start();
    let old = emu.seed(
        ACCOUNT,
        json!([{ "name": "ci-bot", "keys": [{ "create_date": days_ago(100), "last_used": days_ago(1),
            "last_used_service": "s3", "last_used_region": "eu-west-1" }] }]),
    )["users"][0]["keys"][0]["access_key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = write_config(
        &emu,
        &format!(
            r#"
[policy]
max_age_days = 90
canary = 0

{sinks}
[[rotations]]
name = "services"
users = ["ci-*"]
sinks = ["v", "i", "g", "f", "l"]
"#,
            sinks = five_sinks(
                &bao,
                &infa,
                &gh,
                &inf,
                &gl,
                "environment = \"prod\"
secret_path = \"/ci\""
            ),
        ),
    );
    let env = [
        ("T_VAULT", bao.root_token.as_str()),
        ("T_IICS", infa.str("password")),
        ("T_GH", gh.str("token")),
        ("T_INF", inf.str("client_secret")),
        ("T_GL", gl.str("token")),
    ];
    let fleet = |extra: &[&str]| {
        let mut args = vec!["run", "--output", "json"];
        args.extend_from_slice(extra);
        let (run, argv) = keyturn(&emu, &cfg, &args, &env);
        let report: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("report: {e}\n{}\n{}", run.stdout, run.stderr));
        (run, argv, report)
    };
    let (run, argv, report) = fleet(&[]);
    run.assert_code(0);
    let line = &report["Accounts"][0]["Users"][0];
    assert_eq!(line["UserName"], "ci-bot", "{report:#}");
    assert_eq!(line["Outcome"], "rotated", "{report:#}");
    let new_id = line["NewAccessKeyId"].as_str().unwrap().to_string();
    assert_ne!(new_id, old);
    let sinks: Vec<(String, bool)> = line["Sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["Name"].as_str().unwrap().into(), s["Delivered"] == true))
        .collect();
    assert_eq!(
        sinks,
        ["v", "i", "g", "f", "l"].map(|n| (n.to_string(), true)),
        "{report:#}"
    );
    // Each service holds the new key.
    let (data, _) = bao.kv_read("secret", "ci/ci-bot").unwrap();
    assert_eq!(data["AccessKeyId"], new_id.as_str());
    let secret = data["SecretAccessKey"].as_str().unwrap().to_string();
    assert!(
        emu.whoami(&creds(&new_id, &secret)).is_ok(),
        "the delivered key works"
    );
    for (k, s) in iics_keys(&infa) {
        assert_eq!((k.as_str(), s.as_str()), (new_id.as_str(), secret.as_str()));
    }
    let st = gh.state();
    let repo = "repos/octo-org/octo-repo";
    assert_eq!(
        gh_secret(&st, repo, "AWS_ACCESS_KEY_ID")["value"],
        new_id.as_str()
    );
    assert_eq!(
        gh_secret(&st, repo, "AWS_SECRET_ACCESS_KEY")["value"],
        secret.as_str()
    );
    let st = inf.state();
    let ci = &st["secrets"]["prod"]["/ci"];
    assert_eq!(ci["AWS_ACCESS_KEY_ID"]["value"], new_id.as_str());
    assert_eq!(ci["AWS_SECRET_ACCESS_KEY"]["value"], secret.as_str());
    let st = gl.state();
    let v = gitlab_vars(
        &st,
        "projects",
        "keyturn-group/keyturn-app",
        "AWS_SECRET_ACCESS_KEY",
    );
    assert_eq!(v.len(), 1, "{st:#}");
    assert_eq!(v[0]["value"], secret.as_str());
    // The old key stays Active until its consumers switch (retire = when-switched).
    assert!(emu
        .keys("ci-bot")
        .contains(&(old.clone(), "Active".to_string())));
    let mut secrets: Vec<&str> = env.iter().map(|(_, v)| *v).collect();
    secrets.push(&secret);
    assert_hygiene(
        &secrets,
        &run,
        &argv,
        &[
            infa.requests(),
            gh.requests(),
            inf.requests(),
            gl.requests(),
        ]
        .concat(),
    );
    // A second run right after delivers nothing again.
    let writes = |st: &Value| st["writes"].as_array().map(|w| w.len());
    let before = writes(&inf.state());
    let (run, _, report) = fleet(&[]);
    run.assert_code(0);
    let outcome = report["Accounts"][0]["Users"][0]["Outcome"].clone();
    assert!(outcome == "waiting" || outcome == "ok", "{report:#}");
    assert_eq!(writes(&inf.state()), before, "no second delivery");
    assert_eq!(emu.keys("ci-bot").len(), 2);
}
