//! The policies embedded in the deployment templates (`deploy/`) are exactly what
//! `keyturn policy` prints for the matching example configuration, so no copy drifts.
//!
//! Each template holds the generated document between `# BEGIN keyturn policy …` and
//! `# END keyturn policy` (CloudFormation/SAM, placeholders as `Fn::Sub` of the
//! template's pseudo parameters), or as a whole file (Terraform's
//! `policies/lambda.json.tpl`, whose placeholders are `templatefile` variables).
//! `KEYTURN_UPDATE_TEMPLATES=1 cargo test --test deploy_templates` rewrites them after
//! a change of keyturn or of the example configs. No AWS and no emulator involved.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn keyturn_policy(config: &str, target: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .env_clear()
        .env("HOME", root().join("target"))
        .args(["policy", "--config"])
        .arg(root().join(config))
        .args(["--for", target])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keyturn policy --for {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// keyturn's placeholders as CloudFormation `Fn::Sub` strings.
fn cfn(v: &Value) -> Value {
    match v {
        Value::String(s) if s.contains("${") => {
            let s = s
                .replace("${Partition}", "${AWS::Partition}")
                .replace("${Account}", "${AWS::AccountId}")
                .replace("${Region}", "${AWS::Region}");
            json!({ "Fn::Sub": s })
        }
        Value::Array(a) => Value::Array(a.iter().map(cfn).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), cfn(x))).collect()),
        other => other.clone(),
    }
}

fn yaml_block(v: &Value, indent: usize) -> String {
    let text = serde_norway::to_string(v).unwrap();
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(indent)))
        .collect()
}

/// Compare (or, with KEYTURN_UPDATE_TEMPLATES, rewrite) the text between the markers.
fn check_between_markers(template: &str, expected: &str) {
    let path = root().join(template);
    let text = std::fs::read_to_string(&path).unwrap();
    let begin = text
        .find("# BEGIN keyturn policy")
        .unwrap_or_else(|| panic!("{template}: no BEGIN marker"));
    let body = begin + text[begin..].find('\n').unwrap() + 1;
    let end_marker = text[body..]
        .find("# END keyturn policy")
        .unwrap_or_else(|| panic!("{template}: no END marker"))
        + body;
    let end = text[..end_marker].rfind('\n').unwrap() + 1;
    let current = &text[body..end];
    if std::env::var_os("KEYTURN_UPDATE_TEMPLATES").is_some() {
        let new = format!("{}{expected}{}", &text[..body], &text[end..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    assert!(
        current == expected,
        "{template}: the embedded policy differs from `keyturn policy`; run KEYTURN_UPDATE_TEMPLATES=1 cargo test -p keyturn-cli --test deploy_templates\n--- embedded\n{current}\n--- generated\n{expected}"
    );
}

#[test]
fn sam_function_policy_is_generated() {
    let policy = keyturn_policy("deploy/examples/lambda.toml", "lambda");
    check_between_markers(
        "deploy/sam/template.yaml",
        &yaml_block(&json!([cfn(&policy)]), 8),
    );
}

#[test]
fn member_role_policy_and_trust_are_generated() {
    let docs = keyturn_policy("deploy/examples/lambda.toml", "member-role");
    let role = json!({
        "AssumeRolePolicyDocument": cfn(&docs["TrustPolicy"]),
        "Policies": [{ "PolicyName": "keyturn", "PolicyDocument": cfn(&docs["PermissionsPolicy"]) }],
    });
    check_between_markers(
        "deploy/cloudformation/member-role.yaml",
        &yaml_block(&role, 6),
    );
}

#[test]
fn terraform_policy_is_generated() {
    let policy = keyturn_policy("deploy/examples/lambda.toml", "lambda");
    let path = root().join("deploy/terraform/modules/keyturn/policies/lambda.json.tpl");
    let expected = format!("{}\n", serde_json::to_string_pretty(&policy).unwrap());
    if std::env::var_os("KEYTURN_UPDATE_TEMPLATES").is_some() {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == expected,
        "{}: differs from `keyturn policy --for lambda`; run KEYTURN_UPDATE_TEMPLATES=1 cargo test -p keyturn-cli --test deploy_templates",
        path.display()
    );
    // Every placeholder is a variable the module passes to templatefile().
    let main =
        std::fs::read_to_string(root().join("deploy/terraform/modules/keyturn/main.tf")).unwrap();
    for var in ["Partition", "Account", "Region", "OrganizationId"] {
        if expected.contains(&format!("${{{var}}}")) {
            assert!(
                main.contains(&format!("{var} ")),
                "main.tf does not set {var}"
            );
        }
    }
    assert!(!expected.contains("${RotatorRoleArn}"));
}

#[test]
fn the_examples_are_valid_settings() {
    for f in ["cli.toml", "lambda.toml"] {
        let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
            .env_clear()
            .env("HOME", root().join("target"))
            .args(["config", "check", "--config"])
            .arg(root().join("deploy/examples").join(f))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
