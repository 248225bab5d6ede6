//! Which `[[rotations]]` block applies to an IAM user: the first block that selects it.
//! A user no block selects is not part of the fleet run at all.
//!
//! A block selects a user of an account when every filter it sets matches:
//!
//! - `accounts`: the account's `[[accounts]]` entry name, or its 12-digit id (an id also
//!   picks one member out of an Organization entry); default: every account;
//! - `users`: one of the globs matches the user name; default: every user;
//! - `path_prefix`: the user's IAM path starts with it (IAM's own `PathPrefix` rule);
//! - `tags`: the user carries every listed tag with exactly that value;
//! - `exclude`: none of these globs matches the user name.
//!
//! IAM user names and tag keys are unique regardless of case (IAM refuses `Bob` next to
//! `bob`), so name globs and tag keys match case-insensitively; tag values are exact.

use crate::fleet::policy::{AccountSpec, EffectiveRotation, FleetPolicy};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::collections::BTreeMap;

/// An entry of a block's `accounts` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountRef {
    /// An `[[accounts]]` entry (all of an Organization entry's accounts).
    Name(String),
    /// One account by id, however it is reached.
    Id(String),
}

/// Compiled user-name globs (case-insensitive).
#[derive(Debug, Clone)]
pub struct Patterns {
    pub globs: Vec<String>,
    set: GlobSet,
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.globs == other.globs
    }
}

impl Eq for Patterns {}

fn glob(p: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(p)
        .case_insensitive(true)
        .literal_separator(false)
        .build()
}

impl Patterns {
    pub fn new(globs: Vec<String>) -> Result<Self, globset::Error> {
        let mut b = GlobSetBuilder::new();
        for g in &globs {
            b.add(glob(g)?);
        }
        Ok(Self {
            set: b.build()?,
            globs,
        })
    }

    /// Check one pattern; the error says what is wrong with it.
    pub fn compile_one(p: &str) -> Result<(), String> {
        glob(p).map(|_| ()).map_err(|e| e.kind().to_string())
    }

    pub fn matches(&self, name: &str) -> bool {
        self.set.is_match(name)
    }
}

/// A pattern without glob syntax matches exactly one name.
pub fn is_literal(p: &str) -> bool {
    !p.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// What a block selects (every filter resolved and validated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// `None`: every account.
    pub accounts: Option<Vec<AccountRef>>,
    /// `None`: every user.
    pub users: Option<Patterns>,
    /// `None`: any path.
    pub path_prefix: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub exclude: Option<Patterns>,
}

/// The account a user lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountIdent {
    /// The 12-digit id.
    pub id: String,
    /// The `[[accounts]]` entry that reached it (`None`: the caller's own account, when
    /// no `[[accounts]]` are declared).
    pub entry: Option<String>,
}

/// The facts about an IAM user that selection looks at (`ListUsers` gives name and
/// path; tags come from `ListUserTags`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IamUser {
    pub user_name: String,
    pub path: String,
    pub tags: BTreeMap<String, String>,
}

impl Selection {
    /// True when no filter is set.
    pub fn selects_everything(&self) -> bool {
        self.accounts.is_none()
            && self.users.is_none()
            && self.path_prefix.is_none()
            && self.tags.is_empty()
            && self.exclude.is_none()
    }

    /// Does the block select this account at all (before listing its users)?
    pub fn selects_account(&self, account: &AccountIdent) -> bool {
        match &self.accounts {
            None => true,
            Some(refs) => refs.iter().any(|r| match r {
                AccountRef::Id(id) => *id == account.id,
                AccountRef::Name(n) => account.entry.as_deref() == Some(n.as_str()),
            }),
        }
    }

    /// Does the block need the users' tags (an extra IAM call per user)?
    pub fn needs_tags(&self) -> bool {
        !self.tags.is_empty()
    }

    pub fn selects(&self, account: &AccountIdent, user: &IamUser) -> bool {
        self.selects_account(account)
            && self
                .users
                .as_ref()
                .is_none_or(|p| p.matches(&user.user_name))
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|p| user.path.starts_with(p.as_str()))
            && self.tags.iter().all(|(k, v)| {
                user.tags
                    .iter()
                    .any(|(uk, uv)| uk.eq_ignore_ascii_case(k) && uv == v)
            })
            && !self
                .exclude
                .as_ref()
                .is_some_and(|p| p.matches(&user.user_name))
    }

    /// The selection in words, for `keyturn config check`.
    pub fn describe(&self, accounts: &[AccountSpec]) -> String {
        let mut s = match &self.users {
            None => "every IAM user".to_string(),
            Some(p) => format!("IAM users named {}", p.globs.join(" or ")),
        };
        if let Some(p) = &self.path_prefix {
            s.push_str(&format!(", with a path starting {p}"));
        }
        if !self.tags.is_empty() {
            let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!(", tagged {}", tags.join(" and ")));
        }
        if let Some(p) = &self.exclude {
            s.push_str(&format!(", except users named {}", p.globs.join(" or ")));
        }
        match &self.accounts {
            None if accounts.is_empty() => s.push_str(", in the caller's own account"),
            None => s.push_str(", in every account"),
            Some(refs) => {
                let names: Vec<String> = refs
                    .iter()
                    .map(|r| match r {
                        AccountRef::Name(n) => n.clone(),
                        AccountRef::Id(id) => id.clone(),
                    })
                    .collect();
                s.push_str(&format!(
                    ", in account{} {}",
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", ")
                ));
            }
        }
        s
    }
}

/// The block that applies to `user` of `account`: the first that selects it.
pub fn select<'p>(
    policy: &'p FleetPolicy,
    account: &AccountIdent,
    user: &IamUser,
) -> Option<&'p EffectiveRotation> {
    policy
        .rotations
        .iter()
        .find(|r| r.selection.selects(account, user))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::policy::{AccountFile, PolicyFile, RotationFile};
    use toml::Spanned;

    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        policy: PolicyFile,
        #[serde(default)]
        accounts: Vec<Spanned<AccountFile>>,
        #[serde(default)]
        rotations: Vec<Spanned<RotationFile>>,
    }

    fn policy(text: &str) -> FleetPolicy {
        let d: Doc = toml::from_str(text).unwrap();
        FleetPolicy::resolve(&d.policy, &d.accounts, &d.rotations, &["s"]).unwrap()
    }

    fn user(name: &str, path: &str, tags: &[(&str, &str)]) -> IamUser {
        IamUser {
            user_name: name.into(),
            path: path.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn acct(id: &str, entry: Option<&str>) -> AccountIdent {
        AccountIdent {
            id: id.into(),
            entry: entry.map(str::to_string),
        }
    }

    const FILE: &str = r#"
[[accounts]]
name = "prod"
profile = "prod-admin"
[[accounts]]
name = "org"
organization = { role_name = "R", exclude = ["222222222222"] }

[[rotations]]
name = "bots"
accounts = ["prod"]
users = ["ci-*", "deploy-bot"]
path_prefix = "/bots/"
tags = { "keyturn:rotate" = "true" }
exclude = ["ci-legacy-*"]
sinks = ["s"]

[[rotations]]
name = "one-member"
accounts = ["333333333333"]
sinks = ["s"]

[[rotations]]
name = "humans"
users = ["*.*"]
exclude = ["admin.*"]
sinks = ["s"]
"#;

    #[test]
    fn first_selecting_block_applies() {
        let p = policy(FILE);
        let prod = acct("111111111111", Some("prod"));
        let member = acct("333333333333", Some("org"));
        let other = acct("444444444444", Some("org"));
        let tagged = [("keyturn:rotate", "true")];
        let cases: Vec<(&AccountIdent, IamUser, Option<&str>)> = vec![
            (&prod, user("ci-build", "/bots/", &tagged), Some("bots")),
            (
                &prod,
                user("deploy-bot", "/bots/team/", &tagged),
                Some("bots"),
            ),
            (&prod, user("CI-Build", "/bots/", &tagged), Some("bots")),
            // Tag keys ignore case, values do not.
            (
                &prod,
                user("ci-build", "/bots/", &[("KEYTURN:ROTATE", "true")]),
                Some("bots"),
            ),
            (
                &prod,
                user("ci-build", "/bots/", &[("keyturn:rotate", "TRUE")]),
                None,
            ),
            (&prod, user("ci-build", "/bots/", &[]), None),
            (&prod, user("ci-build", "/", &tagged), None),
            (&prod, user("ci-build", "/botsy/", &tagged), None),
            (&prod, user("ci-legacy-1", "/bots/", &tagged), None),
            (&prod, user("deploy-bot2", "/bots/", &tagged), None),
            // The bots block is for prod only; the humans block is everywhere.
            (&other, user("ci-build", "/bots/", &tagged), None),
            (&other, user("jane.doe", "/", &[]), Some("humans")),
            (&prod, user("jane.doe", "/", &[]), Some("humans")),
            (&prod, user("admin.root", "/", &[]), None),
            // A member id picks that account only; it precedes the humans block.
            (&member, user("jane.doe", "/", &[]), Some("one-member")),
            (&member, user("anything", "/x/", &[]), Some("one-member")),
            (&other, user("anything", "/x/", &[]), None),
        ];
        for (a, u, want) in cases {
            let got = select(&p, a, &u).map(|r| r.name.as_str());
            assert_eq!(got, want, "{} in {:?}", u.user_name, a);
        }
    }

    #[test]
    fn without_accounts_every_block_sees_the_callers_account() {
        let p = policy("[[rotations]]\nname = \"all\"\nusers = [\"*\"]\nsinks = [\"s\"]\n");
        let me = acct("123456789012", None);
        assert_eq!(
            select(&p, &me, &user("x", "/", &[])).map(|r| r.index),
            Some(0)
        );
        let p = policy(
            "[[rotations]]\nname = \"pinned\"\naccounts = [\"123456789012\"]\nsinks = [\"s\"]\n",
        );
        assert!(select(&p, &me, &user("x", "/", &[])).is_some());
        assert!(select(&p, &acct("999999999999", None), &user("x", "/", &[])).is_none());
    }

    #[test]
    fn no_block_no_selection() {
        let p = policy("");
        assert!(select(&p, &acct("123456789012", None), &user("x", "/", &[])).is_none());
    }

    #[test]
    fn globs_use_glob_syntax() {
        let pats =
            Patterns::new(vec!["svc-?".into(), "app-{a,b}".into(), "x[0-9]".into()]).unwrap();
        for (name, m) in [
            ("svc-1", true),
            ("svc-12", false),
            ("app-a", true),
            ("app-c", false),
            ("x7", true),
            ("xa", false),
            ("SVC-9", true),
        ] {
            assert_eq!(pats.matches(name), m, "{name}");
        }
        assert!(is_literal("deploy-bot") && is_literal("a.b@c+d=e,f"));
        assert!(!is_literal("ci-*") && !is_literal("x[0-9]"));
        assert!(Patterns::compile_one("ci-[")
            .unwrap_err()
            .contains("unclosed"));
    }

    #[test]
    fn selection_describes_itself() {
        let p = policy(FILE);
        assert_eq!(
            p.rotations[1].selection.describe(&p.accounts),
            "every IAM user, in account 333333333333"
        );
        assert_eq!(
            p.rotations[2].selection.describe(&p.accounts),
            "IAM users named *.*, except users named admin.*, in every account"
        );
        let q = policy("[[rotations]]\nname = \"a\"\nsinks = [\"s\"]\n");
        assert_eq!(
            q.rotations[0].selection.describe(&q.accounts),
            "every IAM user, in the caller's own account"
        );
        assert!(p.rotations[0].selection.needs_tags());
        assert!(!p.rotations[2].selection.needs_tags());
    }
}
