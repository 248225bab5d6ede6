//! The least-privilege IAM documents for a configuration (`keyturn policy`).
//!
//! Every public sample of a key rotator grants `"Resource": "*"` (or a managed
//! full-access policy). keyturn knows exactly which calls a configuration makes, so it
//! can print the policy for just those: [`documents`] is a pure function of the
//! settings (`[[accounts]]`, `[[rotations]]`, `[[sinks]]`, the journal backend and the
//! `[usage]` source) and the principal the policy is for ([`Target`]).
//!
//! Resources are written with placeholders that the deployment fills in:
//! `${Partition}`, `${Account}`, `${Region}` (the account and region keyturn's own
//! credentials work in), `${OrganizationId}` and, in a member role's trust policy,
//! `${RotatorRoleArn}`. The SAM/CloudFormation templates map them to
//! `AWS::Partition`, `AWS::AccountId`, …; `keyturn policy --set Account=1234…`
//! substitutes them ([`substitute`]). `${aws:username}` (the self-rotation policy) is
//! an IAM policy variable, left for IAM.
//!
//! What is covered: the calls of scheduled work, i.e. `keyturn run` (fleet runs),
//! `rotate --user`, `resume`, `history` and `audit --source api` over the rotated
//! users. Not covered, on purpose: `audit --source report` (the credential report
//! lists every user of the account), `iam:ListAccountAliases` (optional, audit shows
//! the alias when allowed), and `rollback` of an SSM sink (`ssm:GetParameterHistory`);
//! `docs/deploy.md` lists them.

use crate::config::FileConfig;
use crate::fleet::policy::{Access, FleetPolicy, Retire, UsageSource};
use crate::fleet::select::Selection;
use crate::journal::{Backend, JournalSettings};
use crate::sink::SinkSpec;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The principal a policy is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The credentials `keyturn` runs with from cron, systemd or a shell.
    Cli,
    /// The Lambda function's execution role.
    Lambda,
    /// The role assumed in each member account (`role_arn` / `organization` entries).
    MemberRole,
    /// An IAM user rotating its own key (`rotate --profile`).
    SelfRotation,
}

impl Target {
    pub fn as_str(&self) -> &'static str {
        match self {
            Target::Cli => "cli",
            Target::Lambda => "lambda",
            Target::MemberRole => "member-role",
            Target::SelfRotation => "self",
        }
    }
}

/// `Condition` of a statement: operator → key → values.
pub type Condition = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// One `Allow` statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Statement {
    pub sid: String,
    pub actions: BTreeSet<String>,
    /// Empty in a trust policy (which names a `Principal` instead).
    pub resources: BTreeSet<String>,
    pub condition: Condition,
    /// Trust policies only: `{"AWS": "…"}`.
    pub principal: Option<Value>,
}

impl Statement {
    fn new(sid: &str, actions: &[&str], resources: impl IntoIterator<Item = String>) -> Self {
        Self {
            sid: sid.to_string(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
            resources: resources.into_iter().collect(),
            ..Self::default()
        }
    }

    fn when(mut self, op: &str, key: &str, values: &[String]) -> Self {
        self.condition
            .entry(op.to_string())
            .or_default()
            .insert(key.to_string(), values.to_vec());
        self
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("Sid".into(), json!(self.sid));
        m.insert("Effect".into(), json!("Allow"));
        if let Some(p) = &self.principal {
            m.insert("Principal".into(), p.clone());
        }
        m.insert("Action".into(), one_or_many(&self.actions));
        if !self.resources.is_empty() {
            m.insert("Resource".into(), one_or_many(&self.resources));
        }
        if !self.condition.is_empty() {
            let mut c = Map::new();
            for (op, keys) in &self.condition {
                let mut k = Map::new();
                for (key, values) in keys {
                    let v = if values.len() == 1 {
                        json!(values[0])
                    } else {
                        json!(values)
                    };
                    k.insert(key.clone(), v);
                }
                c.insert(op.clone(), Value::Object(k));
            }
            m.insert("Condition".into(), Value::Object(c));
        }
        Value::Object(m)
    }
}

fn one_or_many(s: &BTreeSet<String>) -> Value {
    if s.len() == 1 {
        json!(s.iter().next())
    } else {
        json!(s.iter().collect::<Vec<_>>())
    }
}

/// An IAM policy document (identity or trust policy).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Document {
    pub statements: Vec<Statement>,
}

impl Document {
    pub fn to_json(&self) -> Value {
        json!({
            "Version": "2012-10-17",
            "Statement": self.statements.iter().map(Statement::to_json).collect::<Vec<_>>(),
        })
    }

    /// Every action the document allows.
    pub fn actions(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .flat_map(|s| s.actions.iter().cloned())
            .collect()
    }

    /// The statement with this `Sid`.
    pub fn statement(&self, sid: &str) -> Option<&Statement> {
        self.statements.iter().find(|s| s.sid == sid)
    }

    /// Add a statement, merging it into an existing one with the same actions and
    /// condition (their resources are united), so that the document stays short.
    fn push(&mut self, st: Statement) {
        if st.actions.is_empty() {
            return;
        }
        if let Some(s) = self.statements.iter_mut().find(|s| {
            s.actions == st.actions && s.condition == st.condition && s.principal == st.principal
        }) {
            s.resources.extend(st.resources);
            return;
        }
        let mut st = st;
        let taken = |sid: &str, all: &[Statement]| all.iter().any(|s| s.sid == sid);
        if taken(&st.sid, &self.statements) {
            let base = st.sid.clone();
            let mut n = 2;
            while taken(&format!("{base}{n}"), &self.statements) {
                n += 1;
            }
            st.sid = format!("{base}{n}");
        }
        self.statements.push(st);
    }
}

/// What `keyturn policy` prints: the policy, and for a member role its trust policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documents {
    pub target: Target,
    pub policy: Document,
    pub trust: Option<Document>,
    /// Things the reader must know (an `[[accounts]]` entry the target cannot use, …).
    pub notes: Vec<String>,
}

impl Documents {
    /// The printed form: the policy document itself, or for a member role
    /// `{"PermissionsPolicy": …, "TrustPolicy": …}`.
    pub fn to_json(&self) -> Value {
        match &self.trust {
            None => self.policy.to_json(),
            Some(t) => json!({
                "PermissionsPolicy": self.policy.to_json(),
                "TrustPolicy": t.to_json(),
            }),
        }
    }
}

/// The settings the documents derive from.
pub struct Inputs<'a> {
    pub file: &'a FileConfig,
    pub fleet: &'a FleetPolicy,
    pub journal: &'a JournalSettings,
}

const IAM_USER: &str = "arn:${Partition}:iam::${Account}:user";

/// The IAM user ARN patterns that cover what a `[[rotations]]` block selects.
///
/// An IAM user's ARN is `user` + path + name. keyturn's globs (`*`, `?`, `[abc]`,
/// `{a,b}`) become IAM wildcards (`{a,b}` is expanded, `[…]` becomes `?`); IAM's `*`
/// also matches `/`, so a pattern may cover a little more than the block selects,
/// never less. A name is written twice, for a user at `/` (or the block's
/// `path_prefix`) and for one below it.
pub fn user_arns(sel: &Selection) -> BTreeSet<String> {
    let prefix = sel.path_prefix.as_deref().unwrap_or("/");
    let mut out = BTreeSet::new();
    let names: Vec<String> = match &sel.users {
        None => vec!["*".to_string()],
        Some(p) => p.globs.iter().flat_map(|g| glob_to_iam(g)).collect(),
    };
    for name in names {
        if name.chars().all(|c| c == '*') {
            out.insert(format!("{IAM_USER}{prefix}*"));
        } else {
            out.insert(format!("{IAM_USER}{prefix}{name}"));
            out.insert(format!("{IAM_USER}{prefix}*/{name}"));
        }
    }
    out
}

/// A keyturn user-name glob as IAM ARN wildcard patterns (one per brace alternative).
pub fn glob_to_iam(glob: &str) -> Vec<String> {
    // Expand the first (outermost) brace group, recursively.
    if let Some(open) = glob.find('{') {
        let mut depth = 0;
        let mut close = None;
        for (i, c) in glob[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        if let Some(close) = close {
            let inner = &glob[open + 1..close];
            let mut alts = Vec::new();
            let (mut depth, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        alts.push(&inner[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            alts.push(&inner[start..]);
            let mut out = Vec::new();
            for a in alts {
                let joined = format!("{}{a}{}", &glob[..open], &glob[close + 1..]);
                for x in glob_to_iam(&joined) {
                    if !out.contains(&x) {
                        out.push(x);
                    }
                }
            }
            return out;
        }
    }
    let mut s = String::new();
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '[' => {
                // A character class matches one character.
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
                s.push('?');
            }
            '\\' => {
                if let Some(d) = chars.next() {
                    s.push(d);
                }
            }
            '*' => {
                if !s.ends_with('*') {
                    s.push('*');
                }
            }
            c => s.push(c),
        }
    }
    vec![s]
}

/// `{user}` / `{account}` in a sink string become `*`.
fn templated(s: &str) -> String {
    let s = s.replace("{user}", "*").replace("{account}", "*");
    let mut out = String::new();
    for c in s.chars() {
        if !(c == '*' && out.ends_with('*')) {
            out.push(c);
        }
    }
    out
}

fn region_of(r: &Option<String>) -> String {
    r.clone().unwrap_or_else(|| "${Region}".to_string())
}

/// The resource and condition that name one KMS key given as id, ARN or alias.
/// A policy on an alias ARN does not grant use of the key behind it, so an alias
/// becomes "any key of the account" with the condition `kms:ResourceAliases`.
pub fn kms_key(key: &str, region: &str) -> (String, Option<(String, String, Vec<String>)>) {
    let alias_condition = |alias: &str| {
        Some((
            "ForAnyValue:StringEquals".to_string(),
            "kms:ResourceAliases".to_string(),
            vec![alias.to_string()],
        ))
    };
    if let Some(rest) = key.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        if parts.len() == 5 {
            if let Some(alias) = parts[4].strip_prefix("alias/") {
                return (
                    format!("arn:{}:kms:{}:{}:key/*", parts[0], parts[2], parts[3]),
                    alias_condition(&format!("alias/{alias}")),
                );
            }
        }
        return (key.to_string(), None);
    }
    if key.starts_with("alias/") {
        return (
            format!("arn:${{Partition}}:kms:{region}:${{Account}}:key/*"),
            alias_condition(key),
        );
    }
    (
        format!("arn:${{Partition}}:kms:{region}:${{Account}}:key/{key}"),
        None,
    )
}

fn kms_statement(
    sid: &str,
    actions: &[&str],
    key: &str,
    region: &str,
    via: Option<&str>,
) -> Statement {
    let (resource, cond) = kms_key(key, region);
    let mut st = Statement::new(sid, actions, [resource]);
    if let Some((op, k, v)) = cond {
        st = st.when(&op, &k, &v);
    }
    if let Some(service) = via {
        st = st.when(
            "StringLike",
            "kms:ViaService",
            &[format!("{service}.{region}.amazonaws.com")],
        );
    }
    st
}

/// The IAM statements of the key lifecycle (and of `audit --source api` over the same
/// users), in the account the policy is attached in.
fn iam_statements(doc: &mut Document, fleet: &FleetPolicy) {
    let write_all = [
        "iam:CreateAccessKey",
        "iam:DeleteAccessKey",
        "iam:UpdateAccessKey",
    ];
    let read = ["iam:GetAccessKeyLastUsed", "iam:ListAccessKeys"];
    if fleet.rotations.is_empty() {
        // No fleet policy: `rotate --user NAME` may name any user of the account.
        let mut actions: Vec<&str> = read.to_vec();
        actions.extend(write_all);
        doc.push(Statement::new(
            "RotateUserKeys",
            &actions,
            [format!("{IAM_USER}/*")],
        ));
        return;
    }
    doc.push(Statement::new(
        "ListUsers",
        &["iam:ListUsers"],
        ["*".to_string()],
    ));
    for r in &fleet.rotations {
        let arns = user_arns(&r.selection);
        let mut actions: Vec<&str> = read.to_vec();
        actions.push("iam:CreateAccessKey");
        if r.lifecycle.retire != Retire::Never {
            actions.push("iam:UpdateAccessKey");
            actions.push("iam:DeleteAccessKey");
        } else if r.lifecycle.delete_inactive {
            actions.push("iam:DeleteAccessKey");
        }
        if r.selection.needs_tags() {
            // Tags are read to select users, so that call cannot carry the condition.
            doc.push(Statement::new(
                "ReadUserTags",
                &["iam:ListUserTags"],
                arns.clone(),
            ));
        }
        let mut st = Statement::new("RotateUserKeys", &actions, arns);
        for (k, v) in &r.selection.tags {
            st = st.when(
                "StringEquals",
                &format!("aws:ResourceTag/{k}"),
                std::slice::from_ref(v),
            );
        }
        doc.push(st);
    }
}

/// CloudTrail evidence (`usage = "cloudtrail"`), read in the users' account.
fn usage_statements(doc: &mut Document, file: &FileConfig, fleet: &FleetPolicy) {
    if !fleet
        .rotations
        .iter()
        .any(|r| r.lifecycle.usage == UsageSource::Cloudtrail)
    {
        return;
    }
    doc.push(Statement::new(
        "LookupKeyUsage",
        &["cloudtrail:LookupEvents"],
        ["*".to_string()],
    ));
    if file.usage.regions.is_none() {
        doc.push(Statement::new(
            "ListEnabledRegions",
            &["account:ListRegions"],
            ["*".to_string()],
        ));
    }
}

/// Journal and sink statements: resources in the account of keyturn's own
/// credentials. Only sinks a `[[rotations]]` block names, or every declared sink when
/// there is no fleet policy (`rotate --user --sink NAME` may name any of them).
fn journal_and_sink_statements(doc: &mut Document, inp: &Inputs<'_>, with_sinks: bool) {
    if let Backend::Dynamodb { table } = &inp.journal.backend {
        doc.push(Statement::new(
            "Journal",
            &[
                "dynamodb:ConditionCheckItem",
                "dynamodb:DeleteItem",
                "dynamodb:DescribeTable",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:Query",
                "dynamodb:Scan",
                "dynamodb:UpdateItem",
            ],
            [format!(
                "arn:${{Partition}}:dynamodb:${{Region}}:${{Account}}:table/{table}"
            )],
        ));
    }
    if let Some(key) = &inp.journal.kms_key {
        doc.push(kms_statement(
            "JournalSealing",
            &["kms:Decrypt", "kms:GenerateDataKey"],
            key,
            "${Region}",
            None,
        ));
    }
    if !with_sinks {
        return;
    }
    let used: Option<BTreeSet<&str>> = if inp.fleet.rotations.is_empty() {
        None
    } else {
        Some(
            inp.fleet
                .rotations
                .iter()
                .flat_map(|r| r.sinks.iter().map(String::as_str))
                .collect(),
        )
    };
    for sink in &inp.file.sinks {
        if used.as_ref().is_some_and(|u| !u.contains(sink.name())) {
            continue;
        }
        match sink {
            SinkSpec::Secretsmanager(s) => {
                let region = region_of(&s.region);
                let id = templated(&s.secret_id);
                let arn = if id.starts_with("arn:") {
                    id
                } else if id.ends_with('*') {
                    format!("arn:${{Partition}}:secretsmanager:{region}:${{Account}}:secret:{id}")
                } else {
                    // Secret ARNs end in a dash and six random characters.
                    format!(
                        "arn:${{Partition}}:secretsmanager:{region}:${{Account}}:secret:{id}-??????"
                    )
                };
                let mut actions = vec![
                    "secretsmanager:DescribeSecret",
                    "secretsmanager:GetSecretValue",
                    "secretsmanager:PutSecretValue",
                    "secretsmanager:UpdateSecretVersionStage",
                ];
                if s.create {
                    actions.push("secretsmanager:CreateSecret");
                }
                doc.push(Statement::new("DeliverToSecretsManager", &actions, [arn]));
                if let Some(k) = &s.kms_key_id {
                    doc.push(kms_statement(
                        "SecretsManagerKey",
                        &["kms:Decrypt", "kms:GenerateDataKey"],
                        k,
                        &region,
                        Some("secretsmanager"),
                    ));
                }
            }
            SinkSpec::Ssm(s) => {
                let region = region_of(&s.region);
                let names: Vec<String> = match (&s.parameter, &s.parameters) {
                    (Some(p), _) => vec![p.clone()],
                    (None, Some(ps)) => ps.0.iter().map(|(_, p)| p.clone()).collect(),
                    _ => vec![],
                };
                let arns = names.iter().map(|n| {
                    let n = templated(n);
                    let n = n.strip_prefix('/').unwrap_or(&n).to_string();
                    format!("arn:${{Partition}}:ssm:{region}:${{Account}}:parameter/{n}")
                });
                doc.push(Statement::new(
                    "DeliverToParameterStore",
                    &["ssm:GetParameter", "ssm:PutParameter"],
                    arns,
                ));
                if let Some(k) = &s.kms_key_id {
                    if k != "alias/aws/ssm" {
                        doc.push(kms_statement(
                            "ParameterStoreKey",
                            &["kms:Decrypt", "kms:Encrypt"],
                            k,
                            &region,
                            Some("ssm"),
                        ));
                    }
                }
            }
            SinkSpec::Informatica(s) if s.password_kms_file.is_some() => {
                let key = s
                    .password_kms_key_id
                    .clone()
                    .unwrap_or_else(|| "*".to_string());
                let st = if key == "*" {
                    Statement::new(
                        "InformaticaPassword",
                        &["kms:Decrypt"],
                        ["arn:${Partition}:kms:${Region}:${Account}:key/*".to_string()],
                    )
                } else {
                    kms_statement(
                        "InformaticaPassword",
                        &["kms:Decrypt"],
                        &key,
                        "${Region}",
                        None,
                    )
                };
                doc.push(st);
            }
            // Files, commands and the HTTP services need no AWS permission.
            _ => {}
        }
    }
}

/// The roles keyturn assumes, and Organizations, from the hub's credentials.
fn access_statements(doc: &mut Document, fleet: &FleetPolicy) {
    let mut roles = BTreeSet::new();
    let mut org_roles = BTreeSet::new();
    for a in &fleet.accounts {
        match &a.access {
            Access::Role { role_arn, .. } => {
                roles.insert(role_arn.clone());
            }
            Access::Organization { role_name, .. } => {
                org_roles.insert(format!("arn:${{Partition}}:iam::*:role/{role_name}"));
            }
            Access::Profile { .. } => {}
        }
    }
    if !roles.is_empty() {
        doc.push(Statement::new(
            "AssumeMemberRoles",
            &["sts:AssumeRole"],
            roles,
        ));
    }
    if !org_roles.is_empty() {
        doc.push(Statement::new(
            "ListOrganizationAccounts",
            &["organizations:ListAccounts"],
            ["*".to_string()],
        ));
        // The role name exists in every account; only the Organization's count.
        doc.push(
            Statement::new("AssumeOrganizationRole", &["sts:AssumeRole"], org_roles).when(
                "StringEquals",
                "aws:ResourceOrgID",
                &["${OrganizationId}".to_string()],
            ),
        );
    }
}

/// The documents for `target` under these settings. `Err` says why the target cannot
/// run this configuration (exit 2, nothing printed).
pub fn documents(inp: &Inputs<'_>, target: Target) -> Result<Documents, String> {
    let fleet = inp.fleet;
    let own_account = fleet.accounts.is_empty();
    let profiles: Vec<&str> = fleet
        .accounts
        .iter()
        .filter(|a| matches!(a.access, Access::Profile { .. }))
        .map(|a| a.name.as_str())
        .collect();
    let assumes = fleet
        .accounts
        .iter()
        .any(|a| !matches!(a.access, Access::Profile { .. }));
    let mut policy = Document::default();
    let mut notes = Vec::new();
    let mut trust = None;
    match target {
        Target::Cli => {
            if own_account || !profiles.is_empty() {
                iam_statements(&mut policy, fleet);
                usage_statements(&mut policy, inp.file, fleet);
            }
            if !profiles.is_empty() {
                notes.push(format!(
                    "[[accounts]] {} use their profile's own credentials: attach the IAM part of this policy to that principal in its account",
                    profiles.join(", ")
                ));
            }
            access_statements(&mut policy, fleet);
            journal_and_sink_statements(&mut policy, inp, true);
        }
        Target::Lambda => {
            if !profiles.is_empty() {
                return Err(format!(
                    "the Lambda function cannot use AWS profiles ([[accounts]] {}): reach those accounts with role_arn or organization",
                    profiles.join(", ")
                ));
            }
            if !matches!(inp.journal.backend, Backend::Dynamodb { .. }) {
                return Err("a Lambda function keeps no local files between invocations: set [journal] backend = \"dynamodb\" (with kms_key)".into());
            }
            if fleet.rotations.is_empty() {
                return Err(
                    "the Lambda function runs the fleet policy: add [[rotations]] blocks".into(),
                );
            }
            if own_account {
                iam_statements(&mut policy, fleet);
                usage_statements(&mut policy, inp.file, fleet);
            }
            access_statements(&mut policy, fleet);
            journal_and_sink_statements(&mut policy, inp, true);
        }
        Target::MemberRole => {
            if !assumes {
                return Err("no [[accounts]] entry assumes a role (role_arn or organization): there is no member role".into());
            }
            iam_statements(&mut policy, fleet);
            usage_statements(&mut policy, inp.file, fleet);
            let mut st = Statement {
                sid: "TrustTheRotator".into(),
                actions: ["sts:AssumeRole".to_string()].into(),
                principal: Some(json!({"AWS": "${RotatorRoleArn}"})),
                ..Statement::default()
            };
            if fleet
                .accounts
                .iter()
                .any(|a| matches!(a.access, Access::Organization { .. }))
            {
                st = st.when(
                    "StringEquals",
                    "aws:PrincipalOrgID",
                    &["${OrganizationId}".to_string()],
                );
            }
            let ids: BTreeSet<Option<&str>> = fleet
                .accounts
                .iter()
                .filter_map(|a| match &a.access {
                    Access::Role { external_id, .. } => Some(external_id.as_deref()),
                    Access::Organization { .. } => Some(None),
                    Access::Profile { .. } => None,
                })
                .collect();
            match ids.iter().collect::<Vec<_>>().as_slice() {
                [Some(id)] => st = st.when("StringEquals", "sts:ExternalId", &[id.to_string()]),
                [_] => {}
                _ => notes.push(
                    "the [[accounts]] roles use different external ids: add the matching sts:ExternalId condition to each account's trust policy".into(),
                ),
            }
            trust = Some(Document {
                statements: vec![st],
            });
        }
        Target::SelfRotation => {
            policy.push(Statement::new(
                "RotateOwnKey",
                &[
                    "iam:CreateAccessKey",
                    "iam:DeleteAccessKey",
                    "iam:GetAccessKeyLastUsed",
                    "iam:ListAccessKeys",
                    "iam:UpdateAccessKey",
                ],
                [
                    format!("{IAM_USER}/${{aws:username}}"),
                    format!("{IAM_USER}/*/${{aws:username}}"),
                ],
            ));
            journal_and_sink_statements(&mut policy, inp, false);
        }
    }
    Ok(Documents {
        target,
        policy,
        trust,
        notes,
    })
}

/// Replace `${NAME}` placeholders by the given values (IAM policy variables such as
/// `${aws:username}` are left alone unless named).
pub fn substitute(v: &Value, vars: &BTreeMap<String, String>) -> Value {
    match v {
        Value::String(s) => {
            let mut s = s.clone();
            for (k, val) in vars {
                s = s.replace(&format!("${{{k}}}"), val);
            }
            Value::String(s)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The placeholders the documents use, for `--set` and the templates.
pub const PLACEHOLDERS: [&str; 5] = [
    "Partition",
    "Account",
    "Region",
    "OrganizationId",
    "RotatorRoleArn",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn journal(kms: Option<&str>, table: Option<&str>) -> JournalSettings {
        JournalSettings {
            path: "/var/lib/keyturn/journal.sqlite".into(),
            kms_key: kms.map(str::to_string),
            backend: match table {
                Some(t) => Backend::Dynamodb {
                    table: t.to_string(),
                },
                None => Backend::Sqlite,
            },
            lease: Duration::from_secs(300),
            retention: Duration::from_secs(86400),
        }
    }

    fn docs(toml: &str, j: &JournalSettings, target: Target) -> Result<Documents, String> {
        let file = FileConfig::parse(toml).unwrap();
        let fleet = file.fleet_policy().unwrap();
        documents(
            &Inputs {
                file: &file,
                fleet: &fleet,
                journal: j,
            },
            target,
        )
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const SM: &str = "[[sinks]]\nname = \"sm\"\ntype = \"secretsmanager\"\nsecret_id = \"ci/{user}\"\ncreate = true\n";

    #[test]
    fn globs_become_iam_wildcards() {
        assert_eq!(glob_to_iam("ci-*"), ["ci-*"]);
        assert_eq!(glob_to_iam("deploy-bot"), ["deploy-bot"]);
        assert_eq!(glob_to_iam("{a,b}-bot"), ["a-bot", "b-bot"]);
        assert_eq!(glob_to_iam("x{a,b{c,d}}"), ["xa", "xbc", "xbd"]);
        assert_eq!(glob_to_iam("bot-[0-9]?"), ["bot-??"]);
        assert_eq!(glob_to_iam("a**b"), ["a*b"]);
        assert_eq!(glob_to_iam("a\\*b"), ["a*b"]);
    }

    #[test]
    fn user_arns_follow_path_prefix_and_names() {
        let toml = format!("{SM}[[rotations]]\nname = \"b\"\nusers = [\"ci-*\", \"deploy-bot\"]\npath_prefix = \"/bots/\"\nsinks = [\"sm\"]\n");
        let d = docs(&toml, &journal(None, None), Target::Cli).unwrap();
        let st = d.policy.statement("RotateUserKeys").unwrap();
        assert_eq!(
            st.resources,
            set(&[
                "arn:${Partition}:iam::${Account}:user/bots/*/ci-*",
                "arn:${Partition}:iam::${Account}:user/bots/*/deploy-bot",
                "arn:${Partition}:iam::${Account}:user/bots/ci-*",
                "arn:${Partition}:iam::${Account}:user/bots/deploy-bot",
            ])
        );
        // Everyone under a path: one pattern.
        let toml =
            format!("{SM}[[rotations]]\nname = \"b\"\npath_prefix = \"/svc/\"\nsinks = [\"sm\"]\n");
        let d = docs(&toml, &journal(None, None), Target::Cli).unwrap();
        assert_eq!(
            d.policy.statement("RotateUserKeys").unwrap().resources,
            set(&["arn:${Partition}:iam::${Account}:user/svc/*"])
        );
    }

    #[test]
    fn retire_never_drops_update_and_delete() {
        let toml = format!("{SM}[[rotations]]\nname = \"a\"\nusers = [\"a-*\"]\nsinks = [\"sm\"]\n[[rotations]]\nname = \"b\"\nusers = [\"b-*\"]\nretire = \"never\"\nsinks = [\"sm\"]\n[[rotations]]\nname = \"c\"\nusers = [\"c-*\"]\nretire = \"never\"\ndelete_inactive = true\nsinks = [\"sm\"]\n");
        let d = docs(&toml, &journal(None, None), Target::Cli).unwrap();
        let by_res = |user: &str| {
            d.policy
                .statements
                .iter()
                .find(|s| {
                    s.resources
                        .contains(&format!("arn:${{Partition}}:iam::${{Account}}:user/{user}"))
                })
                .unwrap()
                .actions
                .clone()
        };
        assert!(by_res("a-*").contains("iam:UpdateAccessKey"));
        assert_eq!(
            by_res("b-*"),
            set(&[
                "iam:CreateAccessKey",
                "iam:GetAccessKeyLastUsed",
                "iam:ListAccessKeys"
            ])
        );
        assert!(by_res("c-*").contains("iam:DeleteAccessKey"));
        assert!(!by_res("c-*").contains("iam:UpdateAccessKey"));
        assert_eq!(
            d.policy.statement("ListUsers").unwrap().resources,
            set(&["*"])
        );
    }

    #[test]
    fn tags_condition_the_key_actions_but_not_the_tag_read() {
        let toml = format!("{SM}[[rotations]]\nname = \"t\"\ntags = {{ \"keyturn:rotate\" = \"true\" }}\nsinks = [\"sm\"]\n");
        let d = docs(&toml, &journal(None, None), Target::Cli).unwrap();
        let keys = d.policy.statement("RotateUserKeys").unwrap();
        assert_eq!(
            keys.condition["StringEquals"]["aws:ResourceTag/keyturn:rotate"],
            ["true"]
        );
        let tags = d.policy.statement("ReadUserTags").unwrap();
        assert!(tags.condition.is_empty());
        assert_eq!(tags.actions, set(&["iam:ListUserTags"]));
        // Blocks with the same actions and condition share one statement.
        let toml = format!("{SM}[[rotations]]\nname = \"a\"\nusers = [\"a\"]\nsinks = [\"sm\"]\n[[rotations]]\nname = \"b\"\nusers = [\"b\"]\nsinks = [\"sm\"]\n");
        let d = docs(&toml, &journal(None, None), Target::Cli).unwrap();
        assert_eq!(
            d.policy
                .statement("RotateUserKeys")
                .unwrap()
                .resources
                .len(),
            4
        );
        assert!(d.policy.statement("RotateUserKeys2").is_none());
    }

    #[test]
    fn roles_and_organization() {
        let toml = format!("{SM}[[accounts]]\nname = \"s\"\nrole_arn = \"arn:aws:iam::111111111111:role/KeyturnRotator\"\n[[accounts]]\nname = \"o\"\norganization = {{ role_name = \"KeyturnRotator\" }}\n[[rotations]]\nname = \"r\"\nsinks = [\"sm\"]\n");
        let j = journal(Some("alias/keyturn"), Some("keyturn-journal"));
        let d = docs(&toml, &j, Target::Lambda).unwrap();
        // No IAM key actions in the hub: they happen in the member accounts.
        assert!(!d.policy.actions().iter().any(|a| a.starts_with("iam:")));
        assert_eq!(
            d.policy.statement("AssumeMemberRoles").unwrap().resources,
            set(&["arn:aws:iam::111111111111:role/KeyturnRotator"])
        );
        let org = d.policy.statement("AssumeOrganizationRole").unwrap();
        assert_eq!(
            org.resources,
            set(&["arn:${Partition}:iam::*:role/KeyturnRotator"])
        );
        assert_eq!(
            org.condition["StringEquals"]["aws:ResourceOrgID"],
            ["${OrganizationId}"]
        );
        assert_eq!(
            d.policy
                .statement("ListOrganizationAccounts")
                .unwrap()
                .actions,
            set(&["organizations:ListAccounts"])
        );
        let m = docs(&toml, &j, Target::MemberRole).unwrap();
        let trust = m
            .trust
            .as_ref()
            .unwrap()
            .statement("TrustTheRotator")
            .unwrap();
        assert_eq!(trust.principal, Some(json!({"AWS": "${RotatorRoleArn}"})));
        assert_eq!(
            trust.condition["StringEquals"]["aws:PrincipalOrgID"],
            ["${OrganizationId}"]
        );
        assert!(m.policy.actions().contains("iam:CreateAccessKey"));
        assert!(!m
            .policy
            .actions()
            .iter()
            .any(|a| a.starts_with("sts:") || a.starts_with("kms:")));
        let out = m.to_json();
        assert!(out["PermissionsPolicy"]["Statement"].is_array());
        assert_eq!(
            out["TrustPolicy"]["Statement"][0]["Principal"]["AWS"],
            "${RotatorRoleArn}"
        );
    }

    #[test]
    fn external_id_goes_into_the_trust_policy() {
        let toml = format!("{SM}[[accounts]]\nname = \"s\"\nrole_arn = \"arn:aws:iam::111111111111:role/R\"\nexternal_id = \"x-1\"\n[[rotations]]\nname = \"r\"\nsinks = [\"sm\"]\n");
        let m = docs(&toml, &journal(None, None), Target::MemberRole).unwrap();
        let t = &m.trust.unwrap().statements[0];
        assert_eq!(t.condition["StringEquals"]["sts:ExternalId"], ["x-1"]);
        assert!(!t.condition["StringEquals"].contains_key("aws:PrincipalOrgID"));
    }

    #[test]
    fn journal_backends() {
        let toml = format!("{SM}[[rotations]]\nname = \"r\"\nsinks = [\"sm\"]\n");
        let d = docs(&toml, &journal(None, None), Target::Cli).unwrap();
        assert!(!d
            .policy
            .actions()
            .iter()
            .any(|a| a.starts_with("kms:") || a.starts_with("dynamodb:")));
        let d = docs(
            &toml,
            &journal(Some("alias/kt"), Some("kt-journal")),
            Target::Cli,
        )
        .unwrap();
        let t = d.policy.statement("Journal").unwrap();
        assert_eq!(
            t.resources,
            set(&["arn:${Partition}:dynamodb:${Region}:${Account}:table/kt-journal"])
        );
        assert!(
            t.actions.contains("dynamodb:ConditionCheckItem")
                && !t.actions.contains("dynamodb:CreateTable")
        );
        let k = d.policy.statement("JournalSealing").unwrap();
        assert_eq!(
            k.resources,
            set(&["arn:${Partition}:kms:${Region}:${Account}:key/*"])
        );
        assert_eq!(
            k.condition["ForAnyValue:StringEquals"]["kms:ResourceAliases"],
            ["alias/kt"]
        );
        assert_eq!(k.actions, set(&["kms:Decrypt", "kms:GenerateDataKey"]));
        // The Lambda needs the DynamoDB journal.
        let err = docs(&toml, &journal(None, None), Target::Lambda).unwrap_err();
        assert!(err.contains("backend = \"dynamodb\""), "{err}");
    }

    #[test]
    fn kms_key_forms() {
        assert_eq!(
            kms_key("arn:aws:kms:eu-west-1:111111111111:key/abc", "${Region}"),
            (
                "arn:aws:kms:eu-west-1:111111111111:key/abc".to_string(),
                None
            )
        );
        let (r, c) = kms_key("arn:aws:kms:eu-west-1:111111111111:alias/x", "${Region}");
        assert_eq!(r, "arn:aws:kms:eu-west-1:111111111111:key/*");
        assert_eq!(c.unwrap().2, ["alias/x"]);
        assert_eq!(
            kms_key("1234abcd-12ab-34cd-56ef-1234567890ab", "us-east-1").0,
            "arn:${Partition}:kms:us-east-1:${Account}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        );
    }

    #[test]
    fn sinks_only_those_used_and_on_their_resources() {
        let toml = format!("{SM}kms_key_id = \"alias/ci\"\nregion = \"eu-west-1\"\n[[sinks]]\nname = \"p\"\ntype = \"ssm\"\nparameters = {{ AWS_ACCESS_KEY_ID = \"/ci/{{user}}/id\", AWS_SECRET_ACCESS_KEY = \"/ci/{{user}}/secret\" }}\nkms_key_id = \"arn:aws:kms:us-east-1:111111111111:key/k1\"\n[[sinks]]\nname = \"unused\"\ntype = \"ssm\"\nparameter = \"other\"\n[[sinks]]\nname = \"f\"\ntype = \"env-file\"\npath = \"/tmp/x.env\"\n[[rotations]]\nname = \"r\"\nsinks = [\"sm\", \"p\", \"f\"]\n");
        let d = docs(&toml, &journal(None, None), Target::Cli).unwrap();
        let sm = d.policy.statement("DeliverToSecretsManager").unwrap();
        assert_eq!(
            sm.resources,
            set(&["arn:${Partition}:secretsmanager:eu-west-1:${Account}:secret:ci/*"])
        );
        assert!(sm.actions.contains("secretsmanager:CreateSecret"));
        let smk = d.policy.statement("SecretsManagerKey").unwrap();
        assert_eq!(
            smk.condition["StringLike"]["kms:ViaService"],
            ["secretsmanager.eu-west-1.amazonaws.com"]
        );
        let p = d.policy.statement("DeliverToParameterStore").unwrap();
        assert_eq!(
            p.resources,
            set(&[
                "arn:${Partition}:ssm:${Region}:${Account}:parameter/ci/*/id",
                "arn:${Partition}:ssm:${Region}:${Account}:parameter/ci/*/secret",
            ])
        );
        let pk = d.policy.statement("ParameterStoreKey").unwrap();
        assert_eq!(
            pk.resources,
            set(&["arn:aws:kms:us-east-1:111111111111:key/k1"])
        );
        assert_eq!(pk.actions, set(&["kms:Decrypt", "kms:Encrypt"]));
        assert!(!d.policy.to_json().to_string().contains("parameter/other"));
        // A named secret gets the six-character suffix; create = false: no CreateSecret.
        let toml = "[[sinks]]\nname = \"sm\"\ntype = \"secretsmanager\"\nsecret_id = \"app/key\"\n";
        let d = docs(toml, &journal(None, None), Target::Cli).unwrap();
        let sm = d.policy.statement("DeliverToSecretsManager").unwrap();
        assert_eq!(
            sm.resources,
            set(&["arn:${Partition}:secretsmanager:${Region}:${Account}:secret:app/key-??????"])
        );
        assert!(!sm.actions.contains("secretsmanager:CreateSecret"));
        // No fleet policy: rotate --user may name any user.
        assert_eq!(
            d.policy.statement("RotateUserKeys").unwrap().resources,
            set(&["arn:${Partition}:iam::${Account}:user/*"])
        );
        assert!(d.policy.statement("ListUsers").is_none());
    }

    #[test]
    fn cloudtrail_usage() {
        let toml =
            format!("{SM}[[rotations]]\nname = \"r\"\nusage = \"cloudtrail\"\nsinks = [\"sm\"]\n");
        let d = docs(&toml, &journal(None, None), Target::Cli).unwrap();
        assert!(d.policy.actions().contains("cloudtrail:LookupEvents"));
        assert!(d.policy.actions().contains("account:ListRegions"));
        let d = docs(
            &format!("{toml}[usage]\nregions = [\"us-east-1\"]\n"),
            &journal(None, None),
            Target::Cli,
        )
        .unwrap();
        assert!(!d.policy.actions().contains("account:ListRegions"));
    }

    #[test]
    fn self_rotation_is_scoped_to_the_caller() {
        let d = docs(
            "",
            &journal(Some("arn:aws:kms:us-east-1:1:key/k"), None),
            Target::SelfRotation,
        )
        .unwrap();
        let st = d.policy.statement("RotateOwnKey").unwrap();
        assert_eq!(
            st.resources,
            set(&[
                "arn:${Partition}:iam::${Account}:user/${aws:username}",
                "arn:${Partition}:iam::${Account}:user/*/${aws:username}",
            ])
        );
        assert_eq!(
            d.policy.statement("JournalSealing").unwrap().resources,
            set(&["arn:aws:kms:us-east-1:1:key/k"])
        );
    }

    #[test]
    fn targets_refuse_what_they_cannot_run() {
        let toml = format!("{SM}[[accounts]]\nname = \"p\"\nprofile = \"prod\"\n[[rotations]]\nname = \"r\"\nsinks = [\"sm\"]\n");
        let j = journal(Some("alias/k"), Some("t"));
        assert!(docs(&toml, &j, Target::Lambda)
            .unwrap_err()
            .contains("profiles"));
        assert!(docs(&toml, &j, Target::MemberRole)
            .unwrap_err()
            .contains("no [[accounts]] entry assumes a role"));
        let cli = docs(&toml, &j, Target::Cli).unwrap();
        assert!(cli.notes[0].contains("[[accounts]] p"));
        assert!(cli.policy.actions().contains("iam:CreateAccessKey"));
    }

    #[test]
    fn substitution_and_json_shape() {
        let d = docs("", &journal(None, None), Target::SelfRotation).unwrap();
        let vars: BTreeMap<String, String> = [("Partition", "aws"), ("Account", "123456789012")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let v = substitute(&d.to_json(), &vars);
        assert_eq!(v["Version"], "2012-10-17");
        assert_eq!(v["Statement"][0]["Effect"], "Allow");
        assert_eq!(
            v["Statement"][0]["Resource"][0],
            "arn:aws:iam::123456789012:user/${aws:username}"
        );
    }

    #[test]
    fn example_file_policy_is_scoped() {
        let file = FileConfig::parse(include_str!("../../../keyturn.example.toml")).unwrap();
        let fleet = file.fleet_policy().unwrap();
        let j = journal(Some("alias/keyturn-journal"), None);
        let d = documents(
            &Inputs {
                file: &file,
                fleet: &fleet,
                journal: &j,
            },
            Target::Cli,
        )
        .unwrap();
        // Only the ci-aws sink is used by a block: no SSM.
        assert!(!d.policy.actions().iter().any(|a| a.starts_with("ssm:")));
        for s in &d.policy.statements {
            if s.resources.contains("*") {
                assert!(
                    s.actions
                        .iter()
                        .all(|a| ["iam:ListUsers", "organizations:ListAccounts"]
                            .contains(&a.as_str())),
                    "{s:?}"
                );
            }
        }
    }
}
