//! All user-facing output goes through one [`Printer`].
//!
//! stdout carries results only (new credentials, plans, reports) so that
//! `eval "$(keyturn rotate …)"` and `| jq` work; stderr carries status lines. Logs go
//! through `tracing` to stderr and never see a secret. This module is the only place
//! where a secret is turned into output text (see [`reveal_credentials`]).

use crate::journal::RunRecord;
use crate::model::{AccessKeyInfo, Usage};
use crate::report::{ActionResult, RotationReport};
use crate::secret::{mask_key_id, mask_key_ids_in};
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `--output` of `rotate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// `export AWS_ACCESS_KEY_ID=…` lines for `eval`.
    #[default]
    Env,
    Json,
    Table,
}

impl OutputFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            OutputFormat::Env => "env",
            OutputFormat::Json => "json",
            OutputFormat::Table => "table",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "env" => Some(Self::Env),
            "json" => Some(Self::Json),
            "table" => Some(Self::Table),
            _ => None,
        }
    }
}

/// `--output` of `history` and `rollback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryFormat {
    #[default]
    Table,
    Json,
}

type Writer = Arc<Mutex<Box<dyn Write + Send>>>;

/// The single writer of stdout and stderr.
#[derive(Clone)]
pub struct Printer {
    out: Writer,
    err: Writer,
    quiet: bool,
    /// stdout is /dev/null (or was closed at start: the Rust runtime reopens a closed
    /// fd 1 as /dev/null).
    out_discards: bool,
    /// `out` is the process's fd 1 (not a capture buffer).
    real_stdout: bool,
}

/// After a write into a pipe, wait until the reader has read every byte (the pipe's
/// unread count drops to zero). A reader that closes the pipe first (`| head -c 5`)
/// or does not read within `timeout` makes the delivery fail: a write into a pipe
/// buffer is not a delivery until someone read it.
fn wait_pipe_drained(timeout: std::time::Duration) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let is_fifo = std::fs::metadata("/proc/self/fd/1")
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    if !is_fifo {
        return Ok(());
    }
    let start = std::time::Instant::now();
    loop {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the valid pointer.
        if unsafe { libc::ioctl(1, libc::FIONREAD, &mut unread) } != 0 {
            return Ok(()); // cannot tell: the write itself succeeded
        }
        if unread <= 0 {
            return Ok(());
        }
        let mut pfd = libc::pollfd {
            fd: 1,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) };
        if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the reader closed stdout with {unread} bytes unread"),
            ));
        }
        if start.elapsed() >= timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "nobody read stdout for {} s ({unread} bytes unread)",
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Is file descriptor 1 the null device?
fn stdout_is_dev_null() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(null) = std::fs::metadata("/dev/null") else {
        return false;
    };
    let Ok(out) =
        std::fs::metadata("/proc/self/fd/1").or_else(|_| std::fs::metadata("/dev/stdout"))
    else {
        return false;
    };
    out.file_type().is_char_device() && out.rdev() == null.rdev()
}

impl Printer {
    /// The process's stdout/stderr. `quiet` silences status lines.
    pub fn stdio(quiet: bool) -> Self {
        Self {
            out: Arc::new(Mutex::new(Box::new(io::stdout()))),
            err: Arc::new(Mutex::new(Box::new(io::stderr()))),
            quiet,
            out_discards: stdout_is_dev_null(),
            real_stdout: true,
        }
    }

    /// Capture output in memory (tests).
    pub fn capture() -> (Self, Captured, Captured) {
        let out = Captured::default();
        let err = Captured::default();
        (
            Self {
                out: Arc::new(Mutex::new(Box::new(out.clone()))),
                err: Arc::new(Mutex::new(Box::new(err.clone()))),
                quiet: false,
                out_discards: false,
                real_stdout: false,
            },
            out,
            err,
        )
    }

    /// Tests: stdout is `out` (a writer that fails, say), stderr is captured.
    #[cfg(test)]
    pub(crate) fn capture_stdout_into(out: Box<dyn Write + Send>) -> (Self, Captured) {
        let (mut p, _, err) = Self::capture();
        p.out = Arc::new(Mutex::new(out));
        (p, err)
    }

    /// stdout throws away what is written to it (`/dev/null`).
    pub fn stdout_discards(&self) -> bool {
        self.out_discards
    }

    /// Write a result to stdout and flush.
    pub fn stdout(&self, text: &str) -> io::Result<()> {
        let mut w = self.out.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(text.as_bytes())?;
        w.flush()
    }

    /// A status line on stderr (suppressed by `--quiet`).
    pub fn status(&self, text: &str) {
        if self.quiet {
            return;
        }
        let mut w = self.err.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(w, "{text}");
    }

    /// An error line on stderr (never suppressed).
    pub fn error(&self, text: &str) {
        let mut w = self.err.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(w, "error: {text}");
    }

    /// Ask a yes/no question on the terminal (stderr prompt, stdin answer). Only call
    /// when stdin and stderr are terminals.
    pub fn confirm(&self, question: &str) -> bool {
        let answer = self.ask(&format!("{question} [y/N] "));
        matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
    }

    /// Ask for a line of input on the terminal.
    pub fn ask(&self, prompt: &str) -> String {
        {
            let mut w = self.err.lock().unwrap_or_else(|p| p.into_inner());
            let _ = write!(w, "{prompt}");
            let _ = w.flush();
        }
        let mut line = String::new();
        let _ = io::stdin().read_line(&mut line);
        line
    }

    /// Print journal runs (key ids masked, never secrets).
    pub fn history(&self, runs: &[RunRecord], format: HistoryFormat) -> io::Result<()> {
        self.stdout(&render_history(runs, format))
    }

    /// Print a serializable value as pretty JSON, or as a two-column table.
    pub fn json_or_table<T: Serialize>(&self, value: &T, format: HistoryFormat) -> io::Result<()> {
        let v = serde_json::to_value(value).map_err(io::Error::other)?;
        let text = match format {
            HistoryFormat::Json => {
                let mut s = serde_json::to_string_pretty(&v).map_err(io::Error::other)?;
                s.push('\n');
                s
            }
            HistoryFormat::Table => {
                let mut t = new_table();
                t.set_header(vec!["Field", "Value"]);
                if let serde_json::Value::Object(m) = v {
                    for (k, v) in m {
                        let shown = match v {
                            serde_json::Value::String(s) => s,
                            serde_json::Value::Array(a) if a.is_empty() => "-".into(),
                            serde_json::Value::Array(a) => a
                                .iter()
                                .map(|x| {
                                    x.as_str()
                                        .map(str::to_string)
                                        .unwrap_or_else(|| x.to_string())
                                })
                                .collect::<Vec<_>>()
                                .join(", "),
                            other => other.to_string(),
                        };
                        t.add_row(vec![k, shown]);
                    }
                }
                format!("{t}\n")
            }
        };
        self.stdout(&text)
    }

    /// Print a rotation result (or dry-run plan) on stdout in `format`. The rendered
    /// text holds the secret, so it is zeroized once written.
    pub fn rotation(&self, r: &RotationReport, format: OutputFormat) -> io::Result<()> {
        let text = zeroize::Zeroizing::new(render_rotation(r, format, OffsetDateTime::now_utc()));
        self.stdout(&text)
    }

    /// Print the new credentials and confirm they arrived: written, flushed and, when
    /// stdout is a pipe, read by the reader within `wait`. Blocks (call it off the
    /// async executor).
    pub fn credentials_confirmed(
        &self,
        r: &RotationReport,
        format: OutputFormat,
        wait: std::time::Duration,
    ) -> io::Result<usize> {
        let text = zeroize::Zeroizing::new(render_rotation(r, format, OffsetDateTime::now_utc()));
        self.stdout(&text)?;
        if self.real_stdout {
            wait_pipe_drained(wait)?;
        }
        Ok(text.len())
    }

    /// Print the report of a rotation that delivered to sinks other than stdout: the
    /// new key's id, never its secret.
    pub fn delivery_report(
        &self,
        r: &RotationReport,
        new_key_id: Option<&str>,
        format: OutputFormat,
    ) -> io::Result<()> {
        self.stdout(&render_delivery(
            r,
            new_key_id,
            format,
            OffsetDateTime::now_utc(),
        ))
    }
}

/// In-memory output buffer for tests.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Quote a value for POSIX shells only when needed (secrets are base64-like).
fn shell_value(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/+=_.-:".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}

/// The credentials as `(access key id, secret)` text, the one place a secret is
/// exposed for output.
fn reveal_credentials(r: &RotationReport) -> Option<(&str, &str)> {
    r.new_key
        .as_ref()
        .map(|k| (k.access_key_id.as_str(), k.secret.expose()))
}

/// Render a rotation report. Pure apart from the secret reveal; `now` makes ages
/// deterministic in tests.
pub fn render_rotation(r: &RotationReport, format: OutputFormat, now: OffsetDateTime) -> String {
    match format {
        OutputFormat::Env => render_env(r, now),
        OutputFormat::Json => render_json(r),
        OutputFormat::Table => render_table(r, now),
    }
}

fn render_env(r: &RotationReport, now: OffsetDateTime) -> String {
    let mut s = String::new();
    if let Some((id, secret)) = reveal_credentials(r) {
        s.push_str(&format!("export AWS_ACCESS_KEY_ID={}\n", shell_value(id)));
        s.push_str(&format!(
            "export AWS_SECRET_ACCESS_KEY={}\n",
            shell_value(secret)
        ));
        return s;
    }
    // A dry run: everything is a shell comment, so `eval` does nothing.
    s.push_str(&format!(
        "# keyturn rotate --dry-run: user {} ({} key{})\n",
        r.user_name,
        r.inventory.len(),
        if r.inventory.len() == 1 { "" } else { "s" }
    ));
    for k in &r.inventory {
        s.push_str(&format!("#   key {}\n", k.describe(now)));
    }
    if r.actions.is_empty() {
        s.push_str("# plan: none\n");
    } else {
        s.push_str("# plan:\n");
        for (i, a) in r.actions.iter().enumerate() {
            let key = a
                .access_key_id
                .as_deref()
                .map(|k| format!(" {k}"))
                .unwrap_or_default();
            s.push_str(&format!(
                "#   {}. {}{}: {}\n",
                i + 1,
                a.label(),
                key,
                a.detail
            ));
        }
    }
    match &r.error {
        Some(e) => s.push_str(&format!("# refused: {e}\n")),
        None => s.push_str("# feasible: yes (nothing was changed)\n"),
    }
    all_comments(&s)
}

/// Every line of env-format text that is not the credentials stays a shell comment,
/// whatever a detail or an error text holds (a line break in one would start a
/// command): `eval` of a dry run or a delivery report must do nothing.
fn all_comments(s: &str) -> String {
    s.split_inclusive('\n')
        .map(|l| {
            if l.starts_with('#') {
                l.to_string()
            } else {
                format!("#   {l}")
            }
        })
        .collect()
}

fn render_json(r: &RotationReport) -> String {
    let mut map = serde_json::Map::new();
    map.insert("UserName".into(), r.user_name.clone().into());
    if let Some(k) = &r.new_key {
        let (id, secret) = reveal_credentials(r).expect("new key present");
        map.insert("AccessKeyId".into(), id.into());
        map.insert("SecretAccessKey".into(), secret.into());
        map.insert("CreateDate".into(), rfc3339(k.create_date).into());
        map.insert("Status".into(), "Active".into());
    }
    if let Ok(serde_json::Value::Object(rest)) = serde_json::to_value(r) {
        for (k, v) in rest {
            if k != "UserName" {
                map.insert(k, v);
            }
        }
    }
    let mut s =
        serde_json::to_string_pretty(&serde_json::Value::Object(map)).expect("report serializes");
    s.push('\n');
    s
}

/// A rotation report without the secret (delivered to sinks other than stdout).
pub fn render_delivery(
    r: &RotationReport,
    new_key_id: Option<&str>,
    format: OutputFormat,
    now: OffsetDateTime,
) -> String {
    debug_assert!(
        r.new_key.is_none(),
        "a delivery report never carries the secret"
    );
    match format {
        OutputFormat::Env => {
            let mut s = format!(
                "# keyturn rotate: user {}{}\n",
                r.user_name,
                new_key_id
                    .map(|k| format!(", new key {k}"))
                    .unwrap_or_default()
            );
            for d in r.sinks.iter().filter(|d| d.name != crate::sink::STDOUT) {
                s.push_str(&format!(
                    "#   sink {} ({}): {}\n",
                    d.name,
                    d.kind,
                    if d.verified {
                        "delivered and verified"
                    } else if d.delivered {
                        "delivered, not verified"
                    } else {
                        "not delivered"
                    }
                ));
            }
            if let Some(e) = &r.error {
                s.push_str(&format!("# error: {e}\n"));
            }
            all_comments(&s)
        }
        OutputFormat::Json => {
            let mut map = serde_json::Map::new();
            map.insert("UserName".into(), r.user_name.clone().into());
            if let Some(id) = new_key_id {
                map.insert("AccessKeyId".into(), id.into());
            }
            if let Ok(serde_json::Value::Object(rest)) = serde_json::to_value(r) {
                for (k, v) in rest {
                    if k != "UserName" {
                        map.insert(k, v);
                    }
                }
            }
            let mut s = serde_json::to_string_pretty(&serde_json::Value::Object(map))
                .expect("report serializes");
            s.push('\n');
            s
        }
        OutputFormat::Table => {
            let mut t = render_table(r, now);
            if let Some(id) = new_key_id {
                t = format!(
                    "New access key: {id} (secret delivered to the sinks below, not printed)\n{t}"
                );
            }
            let mut sinks = new_table();
            sinks.set_header(vec!["Sink", "Type", "Delivered", "Verified", "Detail"]);
            for d in &r.sinks {
                sinks.add_row(vec![
                    d.name.clone(),
                    d.kind.clone(),
                    if d.delivered { "yes" } else { "no" }.to_string(),
                    if d.verified { "yes" } else { "no" }.to_string(),
                    d.detail.clone().unwrap_or_default(),
                ]);
            }
            format!("{t}{sinks}\n")
        }
    }
}

fn usage_text(k: &AccessKeyInfo, now: OffsetDateTime) -> String {
    match &k.usage {
        Usage::Unknown => "-".into(),
        Usage::Never => "never".into(),
        Usage::Used(u) => format!(
            "{} ({} d ago{})",
            u.date.date(),
            (now - u.date).whole_days().max(0),
            u.service
                .as_deref()
                .map(|s| format!(", {s}"))
                .unwrap_or_default()
        ),
    }
}

fn new_table() -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t
}

fn render_table(r: &RotationReport, now: OffsetDateTime) -> String {
    let mut out = String::new();
    let mut head = new_table();
    head.set_header(vec!["Field", "Value"]);
    head.add_row(vec!["UserName", r.user_name.as_str()]);
    if let Some(a) = &r.account {
        head.add_row(vec!["Account", a.as_str()]);
    }
    if let Some(k) = &r.new_key {
        let (id, secret) = reveal_credentials(r).expect("new key present");
        head.add_row(vec!["AccessKeyId", id]);
        head.add_row(vec!["SecretAccessKey", secret]);
        head.add_row(vec!["CreateDate".to_string(), rfc3339(k.create_date)]);
    }
    if r.dry_run {
        head.add_row(vec!["DryRun", "yes (nothing was changed)"]);
    }
    if let Some(id) = &r.run_id {
        head.add_row(vec!["RunId", id.as_str()]);
    }
    out.push_str(&head.to_string());
    out.push('\n');

    if r.dry_run && !r.inventory.is_empty() {
        let mut inv = new_table();
        inv.set_header(vec!["Key", "Status", "Created", "Age (days)", "Last used"]);
        for k in &r.inventory {
            inv.add_row(vec![
                k.access_key_id.clone(),
                k.status.to_string(),
                k.create_date.date().to_string(),
                k.age_days(now).max(0).to_string(),
                usage_text(k, now),
            ]);
        }
        out.push_str(&inv.to_string());
        out.push('\n');
    }
    if !r.actions.is_empty() {
        let mut acts = new_table();
        acts.set_header(vec!["#", "Step", "Key", "Result", "Detail"]);
        for (i, a) in r.actions.iter().enumerate() {
            acts.add_row(vec![
                (i + 1).to_string(),
                a.label(),
                a.access_key_id.clone().unwrap_or_else(|| "-".into()),
                match a.result {
                    ActionResult::Planned => "planned",
                    ActionResult::Done => "done",
                    ActionResult::Failed => "FAILED",
                }
                .to_string(),
                a.detail.clone(),
            ]);
        }
        out.push_str(&acts.to_string());
        out.push('\n');
    }
    if let Some(e) = &r.error {
        out.push_str(&format!("Refused: {e}\n"));
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct HistoryStep<'a> {
    seq: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    step: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<String>,
    phase: &'static str,
    detail: String,
    at: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct HistoryRun<'a> {
    run_id: &'a str,
    account: &'a str,
    user_name: &'a str,
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a str>,
    status: &'static str,
    started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_access_key_id: Option<String>,
    plan: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    steps: Vec<HistoryStep<'a>>,
}

fn history_view(r: &RunRecord) -> HistoryRun<'_> {
    HistoryRun {
        run_id: &r.meta.run_id,
        account: &r.meta.account,
        user_name: &r.meta.user_name,
        mode: match r.meta.mode {
            crate::plan::Mode::User => "user",
            crate::plan::Mode::Profile { .. } => "profile",
        },
        profile: r.meta.profile.as_deref(),
        status: r.status.as_str(),
        started_at: rfc3339(r.meta.started_at),
        finished_at: r.finished_at.map(rfc3339),
        new_access_key_id: r.new_key_id.as_deref().map(mask_key_id),
        plan: r.meta.plan.steps.iter().map(|s| s.name()).collect(),
        error: r.error.as_deref().map(mask_key_ids_in),
        steps: r
            .steps
            .iter()
            .map(|s| HistoryStep {
                seq: s.seq,
                index: s.index,
                step: &s.step,
                access_key_id: s.access_key_id.as_deref().map(mask_key_id),
                phase: s.phase.as_str(),
                detail: mask_key_ids_in(&s.detail),
                at: rfc3339(s.at),
            })
            .collect(),
    }
}

/// Render journal runs; every key id is masked to its last four characters.
pub fn render_history(runs: &[RunRecord], format: HistoryFormat) -> String {
    let views: Vec<HistoryRun<'_>> = runs.iter().map(history_view).collect();
    match format {
        HistoryFormat::Json => {
            let mut s = serde_json::to_string_pretty(&serde_json::json!({ "Runs": views }))
                .expect("history serializes");
            s.push('\n');
            s
        }
        HistoryFormat::Table => {
            if views.is_empty() {
                return "No rotations in the journal.\n".into();
            }
            let mut t = new_table();
            t.set_header(vec![
                "Run", "Started", "Account", "User", "Mode", "Status", "New key", "Steps",
            ]);
            for (v, r) in views.iter().zip(runs) {
                let done = r.progress().done;
                let steps = v
                    .plan
                    .iter()
                    .zip(done.iter())
                    .map(|(name, d)| format!("{name} {}", if *d { "ok" } else { "-" }))
                    .collect::<Vec<_>>()
                    .join("\n");
                let status = match &v.error {
                    Some(e) => format!("{}: {e}", v.status),
                    None => v.status.to_string(),
                };
                t.add_row(vec![
                    v.run_id.to_string(),
                    r.meta
                        .started_at
                        .format(time::macros::format_description!(
                            "[year]-[month]-[day] [hour]:[minute]:[second]"
                        ))
                        .unwrap_or_default(),
                    v.account.to_string(),
                    v.user_name.to_string(),
                    v.mode.to_string(),
                    status,
                    v.new_access_key_id.clone().unwrap_or_else(|| "-".into()),
                    steps,
                ]);
            }
            format!("{t}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::NewKey;
    use crate::model::KeyStatus;
    use crate::plan::{Mode, Step};
    use crate::report::ActionRecord;
    use crate::secret::SecretKey;

    fn report() -> RotationReport {
        RotationReport {
            run_id: Some("20261121T231200.123Z-9f3a1c2b4d5e6f70".into()),
            account: Some("123456789012".into()),
            user_name: "ci-bot".into(),
            mode: Mode::User,
            dry_run: false,
            inventory: vec![AccessKeyInfo {
                access_key_id: "AKIAOLD0000000000001".into(),
                status: KeyStatus::Active,
                create_date: OffsetDateTime::UNIX_EPOCH,
                usage: Usage::Never,
            }],
            actions: vec![],
            new_key: None,
            verification: None,
            profiles_updated: vec![],
            sinks: vec![],
            error: None,
        }
    }

    fn with_secret(secret: &str) -> RotationReport {
        RotationReport {
            new_key: Some(NewKey {
                user_name: "ci-bot".into(),
                access_key_id: "AKIANEW0000000000001".into(),
                secret: SecretKey::new(secret),
                create_date: OffsetDateTime::UNIX_EPOCH,
            }),
            ..report()
        }
    }

    /// What a POSIX shell sees after `eval "$(keyturn rotate ...)"`.
    fn eval_in_sh(text: &str) -> (String, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{text}\nprintf '%s\\n%s' \"$AWS_ACCESS_KEY_ID\" \"$AWS_SECRET_ACCESS_KEY\""
            ))
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let o = String::from_utf8(out.stdout).unwrap();
        let (id, secret) = o.split_once('\n').unwrap();
        (id.to_string(), secret.to_string())
    }

    #[test]
    fn env_output_round_trips_through_the_shell_whatever_the_secret() {
        for secret in [
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "with space",
            "it's",
            "$(export AWS_ACCESS_KEY_ID=pwned)`id`$HOME",
            "'';\"\\",
            "",
        ] {
            let text = render_rotation(
                &with_secret(secret),
                OutputFormat::Env,
                OffsetDateTime::UNIX_EPOCH,
            );
            let (id, got) = eval_in_sh(&text);
            assert_eq!(id, "AKIANEW0000000000001");
            assert_eq!(got, secret, "{text}");
        }
    }

    #[test]
    fn a_plain_secret_is_not_quoted() {
        let text = render_rotation(
            &with_secret("abc/DEF+ghi="),
            OutputFormat::Env,
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(
            text,
            "export AWS_ACCESS_KEY_ID=AKIANEW0000000000001\nexport AWS_SECRET_ACCESS_KEY=abc/DEF+ghi=\n"
        );
    }

    #[test]
    fn a_dry_run_in_env_format_is_all_comments_even_with_line_breaks_in_texts() {
        let mut r = report();
        r.dry_run = true;
        r.actions = vec![ActionRecord::failed(
            &Step::CreateKey {
                reason: "new key".into(),
            },
            "AWS said:\nexport AWS_ACCESS_KEY_ID=EVIL".into(),
        )];
        r.error = Some("refused\nexport AWS_SECRET_ACCESS_KEY=EVIL\n".into());
        let text = render_rotation(&r, OutputFormat::Env, OffsetDateTime::UNIX_EPOCH);
        for line in text.lines() {
            assert!(line.starts_with('#'), "{line:?} in\n{text}");
        }
        let (id, secret) = eval_in_sh(&text);
        assert_eq!((id.as_str(), secret.as_str()), ("", ""), "eval set nothing");
    }

    #[test]
    fn json_output_carries_the_secret_once_and_the_report_fields() {
        let text = render_rotation(
            &with_secret("s3cr3t/+="),
            OutputFormat::Json,
            OffsetDateTime::UNIX_EPOCH,
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["UserName"], "ci-bot");
        assert_eq!(v["AccessKeyId"], "AKIANEW0000000000001");
        assert_eq!(v["SecretAccessKey"], "s3cr3t/+=");
        assert_eq!(v["Status"], "Active");
        assert_eq!(text.matches("s3cr3t/+=").count(), 1, "{text}");
    }

    #[test]
    fn a_delivery_report_in_env_format_is_all_comments() {
        let mut r = report();
        r.error = Some("sink a failed:\nexport AWS_SECRET_ACCESS_KEY=EVIL".into());
        let text = render_delivery(
            &r,
            Some("AKIANEW0000000000001"),
            OutputFormat::Env,
            OffsetDateTime::UNIX_EPOCH,
        );
        for line in text.lines() {
            assert!(line.starts_with('#'), "{line:?} in\n{text}");
        }
        assert_eq!(eval_in_sh(&text), (String::new(), String::new()));
    }
}
