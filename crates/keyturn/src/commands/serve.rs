//! `keyturn serve`: the fleet's status page (see [`crate::serve`]) over the real
//! pieces: the fleet runner (its dry run for the planner's outcomes now, `--only
//! ACCOUNT:USER` for Rotate now), IAM for each user's keys, the journal for history,
//! and `keyturn resume`'s function for the Resume button.

use crate::access::{Access as AwsAccess, Account, AccountSource, OrganizationSource, RoleSource};
use crate::aws::{KeyApi, SdkKeyApi};
use crate::commands::resume::{resume, ResumeSettings};
use crate::error::{Error, Result};
use crate::fleet::policy::{Access, FleetPolicy, Lifecycle};
use crate::fleet::report::FleetReport;
use crate::fleet::runner::{Only, RunObserver, RunOptions, Runner};
use crate::journal::{AnyJournal, Journal, RunRecord};
use crate::model::AccessKeyInfo;
use crate::printer::{OutputFormat, Printer};
use crate::remote::RemoteConfig;
use crate::serve::{check_listen, random_token, Backend, ServeSettings};
use crate::sink::{SinkEnv, SinkSpec};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Mutex;

/// `keyturn serve` flags, resolved.
#[derive(Debug, Clone)]
pub struct ServeCommandSettings {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub read_only: bool,
    pub remote: RemoteConfig,
}

/// Read `--token-file`: its first line, at least 16 characters.
pub fn read_token_file(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidInput(format!("--token-file {}: {e}", path.display())))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16
        || token
            .chars()
            .any(|c| c.is_control() || c == ';' || c == ' ')
    {
        return Err(Error::InvalidInput(format!(
            "--token-file {}: the first line must be a token of at least 16 characters without spaces or ';' (e.g. `openssl rand -hex 32`)",
            path.display()
        )));
    }
    Ok(token)
}

/// The real backend.
pub struct Live {
    access: AwsAccess,
    policy: FleetPolicy,
    sinks: Vec<SinkSpec>,
    journal: Arc<AnyJournal>,
    /// Accounts reached so far, by id (the key inventory signs as them).
    accounts: Mutex<HashMap<String, Account>>,
    printer: Printer,
}

impl Live {
    fn env(&self) -> SinkEnv {
        SinkEnv {
            aws: self.access.base().clone(),
            printer: self.printer.clone(),
            output: OutputFormat::Json,
        }
    }

    fn sources(&self) -> Vec<(Option<String>, AccountSource)> {
        if self.policy.accounts.is_empty() {
            return vec![(None, AccountSource::Caller)];
        }
        self.policy
            .accounts
            .iter()
            .map(|a| {
                let source = match &a.access {
                    Access::Profile { profile } => AccountSource::Profile(profile.clone()),
                    Access::Role {
                        role_arn,
                        external_id,
                    } => AccountSource::Role(RoleSource {
                        role_arn: role_arn.clone(),
                        external_id: external_id.clone(),
                    }),
                    Access::Organization {
                        role_name,
                        include,
                        exclude,
                    } => AccountSource::Organization(OrganizationSource {
                        role_name: role_name.clone(),
                        include: include.clone(),
                        exclude: exclude.clone(),
                    }),
                };
                (Some(a.name.clone()), source)
            })
            .collect()
    }

    /// The reached account with this id (reaching every configured account once).
    async fn account(&self, id: &str) -> Result<Account> {
        let mut cache = self.accounts.lock().await;
        if let Some(a) = cache.get(id) {
            return Ok(a.clone());
        }
        for (name, source) in self.sources() {
            for route in self.access.routes(name.as_deref(), &source).await {
                let Ok(route) = route else { continue };
                if route.account_id.as_deref().is_some_and(|r| r != id) {
                    continue;
                }
                if let Ok(a) = self.access.connect(&route).await {
                    let found = a.id == id;
                    cache.insert(a.id.clone(), a);
                    if found {
                        return Ok(cache[id].clone());
                    }
                }
            }
        }
        Err(Error::Runtime(format!(
            "account {id} is not one the settings file's [[accounts]] reach"
        )))
    }
}

/// Drive a future rustc cannot prove `Send` for every lifetime (the runner's and
/// `resume`'s futures borrow the journal through `impl Future` trait methods) to its
/// end on this worker thread: `block_in_place` hands the thread's other tasks to the
/// runtime meanwhile, and the future never crosses an `.await` of the server's.
fn not_send<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(fut))
}

#[async_trait::async_trait]
impl Backend for Live {
    async fn plan(&self) -> Result<FleetReport> {
        not_send(
            Runner::new(
                &self.access,
                &self.policy,
                &self.sinks,
                &*self.journal,
                self.env(),
            )
            .run(&RunOptions {
                dry_run: true,
                ..RunOptions::default()
            }),
        )
    }

    async fn keys(&self, account: &str, user: &str) -> Result<Vec<AccessKeyInfo>> {
        let a = self.account(account).await?;
        let api = SdkKeyApi::new(&a.config);
        let mut keys = api.list_keys(user).await?;
        for k in &mut keys {
            k.usage = api.last_used(&k.access_key_id).await?;
        }
        Ok(keys)
    }

    async fn runs(&self) -> Result<Vec<RunRecord>> {
        self.journal.runs(None).await
    }

    async fn rotate(
        &self,
        account: &str,
        user: &str,
        observer: &dyn RunObserver,
    ) -> Result<FleetReport> {
        let options = RunOptions {
            only: vec![Only {
                account: account.to_string(),
                user: user.to_string(),
            }],
            ..RunOptions::default()
        };
        not_send(
            Runner::new(
                &self.access,
                &self.policy,
                &self.sinks,
                &*self.journal,
                self.env(),
            )
            .with_observer(observer)
            .run(&options),
        )
    }

    async fn resume(&self, run_id: &str) -> Result<(i32, String)> {
        // Status lines only: a resumed run may print a secret on stdout (a `stdout`
        // sink), which the capture keeps away from the page and the server's output.
        let (printer, _stdout, stderr) = Printer::capture();
        let settings = ResumeSettings {
            run_id: Some(run_id.to_string()),
            mfa_code: None,
        };
        let code = not_send(resume(&settings, &*self.journal, &printer))?;
        Ok((code, stderr.text()))
    }

    fn rotation(&self, name: &str) -> Option<(Lifecycle, Vec<String>)> {
        self.policy
            .rotations
            .iter()
            .find(|r| r.name == name)
            .map(|r| (r.lifecycle.clone(), r.sinks.clone()))
    }

    fn defaults(&self) -> Lifecycle {
        self.policy.defaults.clone()
    }
}

/// Run the server until Ctrl-C.
pub async fn serve(
    settings: &ServeCommandSettings,
    file: &crate::config::FileConfig,
    journal: AnyJournal,
    printer: &Printer,
) -> Result<i32> {
    check_listen(&settings.listen, settings.token_file.is_some())?;
    let (token, from_file) = match &settings.token_file {
        Some(p) => (read_token_file(p)?, true),
        None => (random_token()?, false),
    };
    let policy = file.fleet_policy()?;
    if policy.rotations.is_empty() {
        return Err(Error::InvalidInput(
            "the settings file has no [[rotations]] block: keyturn serve shows the users a fleet policy selects (see docs/fleet.md)".into(),
        ));
    }
    // As in `keyturn run`: a fleet rotation never prints a secret, and here stdout is
    // the server's own output.
    for r in &policy.rotations {
        for name in &r.sinks {
            if let Some(SinkSpec::Stdout(_)) = file.sinks.iter().find(|s| s.name() == name) {
                return Err(Error::InvalidInput(format!(
                    "rotation {:?}: sink {name:?} prints the new secret on stdout; keyturn serve never shows secrets: deliver to a secret store, file or command sink",
                    r.name
                )));
            }
        }
    }
    // Calls as `keyturn run` makes them: adaptive retries per account.
    let remote =
        crate::commands::run::RunSettings::new(settings.remote.clone(), RunOptions::default())
            .remote;
    let access = AwsAccess::new(&remote, crate::commands::run::SESSION_NAME).await?;
    let live = Live {
        access,
        policy,
        sinks: file.sinks.clone(),
        journal: Arc::new(journal),
        accounts: Mutex::default(),
        printer: printer.clone(),
    };
    let serve_settings = ServeSettings {
        listen: settings.listen,
        token: token.clone(),
        token_from_file: from_file,
        read_only: settings.read_only,
    };
    let read_only = settings.read_only;
    crate::serve::serve(Arc::new(live), serve_settings, |addr| {
        let url = if from_file {
            format!("http://{addr}/?token=<the token in --token-file>")
        } else {
            format!("http://{addr}/?token={token}")
        };
        printer.status(&format!(
            "keyturn serve: listening on http://{addr}/{}; open {url}",
            if read_only { " (read-only)" } else { "" }
        ));
    })
    .await?;
    Ok(crate::error::exit::SUCCESS)
}
