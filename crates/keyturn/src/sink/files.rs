//! File sinks: `env-file` (`KEY=value` lines, as dotenv, systemd `EnvironmentFile=` and
//! shell `source` read them), `json-file` (a JSON object) and `credentials-file` (one
//! profile of an AWS shared credentials file, e.g. another machine's, on a mounted volume).
//!
//! Each changes only the mapped fields: every other line of an env file (comments,
//! ordering, quoting style, CRLF endings) and every other field of a JSON object is kept.
//! Writes are atomic (temp file in the same directory, fsync, rename, fsync of the
//! directory) with mode 0600, and verification reads the file back.

use super::fields::{FieldMap, Value};
use super::{sink_error, Delivered, Handover, Holding, Sink, SinkStage, Written};
use crate::credfile::{atomic_write, FileKind, FileLock, SharedFile, KEY_ID, SECRET, TOKEN};
use crate::error::{Error, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `env-file` and `json-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub name: String,
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldMap>,
}

impl FileSpec {
    pub fn validate(&self, name: &str) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::InvalidInput(format!(
                "sink '{name}': path must not be empty"
            )));
        }
        if let Some(f) = &self.fields {
            f.validate(&format!("sink '{name}'"), |n| {
                !n.is_empty() && !n.contains(['=', '\n', '\r', '#']) && n.trim() == n
            })?;
        }
        Ok(())
    }
}

/// `credentials-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFileSpec {
    pub name: String,
    /// Default: the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
    /// `~/.aws/credentials`), resolved when the settings are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    pub profile: String,
}

impl CredentialsFileSpec {
    pub fn validate(&self) -> Result<()> {
        let p = &self.profile;
        if p.is_empty() || p.contains(['[', ']', '\n', '\r']) || p.trim() != p {
            return Err(Error::InvalidInput(format!(
                "sink '{}': profile {p:?} is not a usable profile name",
                self.name
            )));
        }
        Ok(())
    }

    fn path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| crate::credfile::SharedFiles::default_paths().0)
    }
}

/// Read a file keyturn is about to edit: `None` if absent; refuse files over
/// [`crate::credfile::MAX_FILE`] (counted while reading, so `/dev/zero` is refused too).
fn read_small(path: &Path) -> Result<Option<String>> {
    let Some(mut bytes) = crate::credfile::read_limited(path, "file")? else {
        return Ok(None);
    };
    String::from_utf8(std::mem::take(&mut *bytes))
        .map(Some)
        .map_err(|e| {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            Error::InvalidInput(format!("{} is not UTF-8 text", path.display()))
        })
}

fn lock(path: &Path) -> Result<FileLock> {
    FileLock::acquire(path, Duration::from_secs(5))
}

// ---- env-file ---------------------------------------------------------------------

/// One `KEY=value` line: where its value starts and ends, and how it is quoted.
#[derive(Debug, PartialEq, Eq)]
struct EnvLine {
    key: String,
    /// Byte range of the value text inside the line (quotes included).
    value: std::ops::Range<usize>,
    quote: Option<char>,
}

fn parse_env_line(line: &str) -> Option<EnvLine> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || trimmed.is_empty() {
        return None;
    }
    let lead = line.len() - trimmed.len();
    let body = trimmed
        .strip_prefix("export")
        .filter(|r| r.starts_with([' ', '\t']))
        .map(|r| r.trim_start())
        .unwrap_or(trimmed);
    let body_start = line.len() - body.len();
    let eq = body.find('=')?;
    let key = body[..eq].trim_end();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return None;
    }
    let after = &body[eq + 1..];
    let vstart = body_start + eq + 1 + (after.len() - after.trim_start().len());
    let v = &line[vstart..];
    let _ = lead;
    let (quote, vend) = match v.chars().next() {
        Some(q @ ('"' | '\'')) => match v[1..].find(q) {
            Some(end) => (Some(q), vstart + end + 2),
            None => (None, line.len()),
        },
        _ => {
            // Unquoted: up to an inline comment (` #`) or the end, trailing blanks kept out.
            let end = v.find(" #").or_else(|| v.find("\t#")).unwrap_or(v.len());
            (None, vstart + v[..end].trim_end().len())
        }
    };
    Some(EnvLine {
        key: key.to_string(),
        value: vstart..vend,
        quote,
    })
}

/// The value as a loader would read it (quotes removed).
fn env_value(line: &str, l: &EnvLine) -> String {
    let raw = &line[l.value.clone()];
    match l.quote {
        Some(_) => raw[1..raw.len() - 1].to_string(),
        None => raw.to_string(),
    }
}

/// A value written in the style of the line it replaces; quoted when it needs it.
fn env_text(v: &str, quote: Option<char>) -> String {
    let plain = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+/=_.:@,-".contains(c));
    match quote {
        Some(q) if !v.contains(q) && !v.contains(['\\', '$', '`']) => format!("{q}{v}{q}"),
        _ if plain => v.to_string(),
        _ => format!("'{}'", v.replace('\'', r"'\''")),
    }
}

/// Lines with their endings, so CRLF files stay CRLF.
fn split_lines(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, ending, next) = match rest.find('\n') {
            Some(i) if i > 0 && rest.as_bytes()[i - 1] == b'\r' => {
                (&rest[..i - 1], "\r\n", &rest[i + 1..])
            }
            Some(i) => (&rest[..i], "\n", &rest[i + 1..]),
            None => (rest, "", ""),
        };
        out.push((line, ending));
        rest = next;
    }
    out
}

/// The last value of each key in an env file.
pub fn read_env(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (line, _) in split_lines(text) {
        if let Some(l) = parse_env_line(line) {
            let v = env_value(line, &l);
            match out.iter_mut().find(|(k, _)| *k == l.key) {
                Some(e) => e.1 = v,
                None => out.push((l.key, v)),
            }
        }
    }
    out
}

/// Set `values` in `text`: every line of a mapped key gets the new value in its own
/// quoting style; missing keys are appended in mapping order; other bytes are kept.
pub fn edit_env(text: &str, values: &[(String, Value)]) -> Result<String> {
    for (k, v) in values {
        if v.expose().contains(['\n', '\r', '\0']) {
            return Err(Error::InvalidInput(format!(
                "the value of {k} contains a line break"
            )));
        }
    }
    let lines = split_lines(text);
    let ending = if lines.iter().any(|(_, e)| *e == "\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let mut out = String::with_capacity(text.len() + 128);
    let mut seen = std::collections::HashSet::new();
    for (line, end) in &lines {
        match parse_env_line(line)
            .and_then(|l| values.iter().find(|(k, _)| *k == l.key).map(|kv| (l, kv)))
        {
            Some((l, (k, v))) => {
                seen.insert(k.clone());
                out.push_str(&line[..l.value.start]);
                out.push_str(&env_text(v.expose(), l.quote));
                out.push_str(&line[l.value.end..]);
            }
            None => out.push_str(line),
        }
        out.push_str(end);
    }
    let missing: Vec<&(String, Value)> = values.iter().filter(|(k, _)| !seen.contains(k)).collect();
    if !missing.is_empty() && !out.is_empty() && !out.ends_with('\n') {
        out.push_str(ending);
    }
    for (k, v) in missing {
        out.push_str(&format!("{k}={}{ending}", env_text(v.expose(), None)));
    }
    Ok(out)
}

pub struct EnvFileSink {
    spec: FileSpec,
    fields: FieldMap,
}

impl EnvFileSink {
    pub fn new(spec: &FileSpec) -> Self {
        Self {
            fields: FieldMap::or(&spec.fields, FieldMap::env_default),
            spec: spec.clone(),
        }
    }
}

#[async_trait]
impl Sink for EnvFileSink {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &'static str {
        "env-file"
    }

    async fn prepare(&self) -> Result<Holding> {
        let text = read_small(&self.spec.path)
            .map_err(|e| sink_error(self, SinkStage::Prepare, Written::No, "", Some(e)))?;
        Ok(holding_of(
            text.as_deref().map(read_env).unwrap_or_default(),
            self.fields.key_id_field(),
        ))
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        let path = &self.spec.path;
        let fail = |e: Error| sink_error(self, SinkStage::Deliver, Written::No, "", Some(e));
        let _lock = lock(path).map_err(fail)?;
        let before = read_small(path).map_err(fail)?.unwrap_or_default();
        let values = self.fields.values(h.key, h.account);
        let after = edit_env(&before, &values).map_err(fail)?;
        if after != before {
            atomic_write(path, after.as_bytes()).map_err(fail)?;
        }
        Ok(Delivered::new(format!(
            "wrote {} to {}",
            names(&values),
            path.display()
        )))
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        let text = read_small(&self.spec.path)
            .map_err(|e| sink_error(self, SinkStage::Verify, Written::Maybe, "", Some(e)))?
            .unwrap_or_default();
        let found = read_env(&text);
        check_values(self, &self.fields.values(h.key, h.account), |k| {
            found.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })?;
        Ok(format!(
            "re-read {}: the new key is there",
            self.spec.path.display()
        ))
    }
}

fn names(values: &[(String, Value)]) -> String {
    values
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn holding_of(found: Vec<(String, String)>, key_field: Option<&str>) -> Holding {
    match key_field.and_then(|f| found.into_iter().find(|(k, _)| k == f)) {
        Some((_, v)) if !v.is_empty() => Holding::Key(v),
        _ => Holding::Empty,
    }
}

/// Compare what a destination holds with what was written; never show the secret.
fn check_values(
    sink: &dyn Sink,
    values: &[(String, Value)],
    get: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    for (k, v) in values {
        match get(k) {
            Some(got) if got == v.expose() => {}
            Some(_) => {
                return Err(sink_error(
                    sink,
                    SinkStage::Verify,
                    Written::Maybe,
                    format!("reading back: {k} does not hold the new value"),
                    None,
                ))
            }
            None => {
                return Err(sink_error(
                    sink,
                    SinkStage::Verify,
                    Written::Maybe,
                    format!("reading back: {k} is missing"),
                    None,
                ))
            }
        }
    }
    Ok(())
}

// ---- json-file --------------------------------------------------------------------

pub struct JsonFileSink {
    spec: FileSpec,
    fields: FieldMap,
}

impl JsonFileSink {
    pub fn new(spec: &FileSpec) -> Self {
        Self {
            fields: FieldMap::or(&spec.fields, FieldMap::json_default),
            spec: spec.clone(),
        }
    }

    fn read(&self) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
        let Some(text) = read_small(&self.spec.path)? else {
            return Ok(None);
        };
        if text.trim().is_empty() {
            return Ok(Some(Default::default()));
        }
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
            Ok(_) => Err(Error::InvalidInput(format!(
                "{} holds JSON that is not an object; keyturn only sets fields of an object",
                self.spec.path.display()
            ))),
            Err(e) => Err(Error::InvalidInput(format!(
                "{} is not valid JSON ({e}); keyturn changes nothing in a file it cannot parse",
                self.spec.path.display()
            ))),
        }
    }
}

/// Set `values` as string fields of `obj`, keeping every other field and the order.
pub fn set_json_fields(
    obj: &mut serde_json::Map<String, serde_json::Value>,
    values: &[(String, Value)],
) {
    for (k, v) in values {
        obj.insert(k.clone(), serde_json::Value::String(v.expose().to_string()));
    }
}

/// What a JSON object holds for each mapped name (strings only).
pub fn json_field(obj: &serde_json::Map<String, serde_json::Value>, k: &str) -> Option<String> {
    obj.get(k).and_then(|v| v.as_str()).map(str::to_string)
}

#[async_trait]
impl Sink for JsonFileSink {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &'static str {
        "json-file"
    }

    async fn prepare(&self) -> Result<Holding> {
        let obj = self
            .read()
            .map_err(|e| sink_error(self, SinkStage::Prepare, Written::No, "", Some(e)))?;
        Ok(match (obj, self.fields.key_id_field()) {
            (Some(o), Some(f)) => json_field(&o, f)
                .map(Holding::Key)
                .unwrap_or(Holding::Empty),
            _ => Holding::Empty,
        })
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        let fail = |e: Error| sink_error(self, SinkStage::Deliver, Written::No, "", Some(e));
        let _lock = lock(&self.spec.path).map_err(fail)?;
        let mut obj = self.read().map_err(fail)?.unwrap_or_default();
        let before = obj.clone();
        let values = self.fields.values(h.key, h.account);
        set_json_fields(&mut obj, &values);
        if obj != before || !self.spec.path.exists() {
            let mut text = serde_json::to_string_pretty(&serde_json::Value::Object(obj))
                .map_err(|e| fail(Error::Runtime(e.to_string())))?;
            text.push('\n');
            let text = zeroize::Zeroizing::new(text);
            atomic_write(&self.spec.path, text.as_bytes()).map_err(fail)?;
        }
        Ok(Delivered::new(format!(
            "wrote {} to {}",
            names(&values),
            self.spec.path.display()
        )))
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        let obj = self
            .read()
            .map_err(|e| sink_error(self, SinkStage::Verify, Written::Maybe, "", Some(e)))?
            .unwrap_or_default();
        check_values(self, &self.fields.values(h.key, h.account), |k| {
            json_field(&obj, k)
        })?;
        Ok(format!(
            "re-read {}: the new key is there",
            self.spec.path.display()
        ))
    }
}

// ---- credentials-file -------------------------------------------------------------

pub struct CredentialsFileSink {
    spec: CredentialsFileSpec,
    path: PathBuf,
}

impl CredentialsFileSink {
    pub fn new(spec: &CredentialsFileSpec) -> Self {
        Self {
            path: spec.path(),
            spec: spec.clone(),
        }
    }

    fn load(&self) -> Result<SharedFile> {
        SharedFile::load(FileKind::Credentials, &self.path)
    }
}

#[async_trait]
impl Sink for CredentialsFileSink {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &'static str {
        "credentials-file"
    }

    async fn prepare(&self) -> Result<Holding> {
        let f = self
            .load()
            .map_err(|e| sink_error(self, SinkStage::Prepare, Written::No, "", Some(e)))?;
        Ok(f.section_of(&self.spec.profile)
            .and_then(|s| f.doc.get(&s, KEY_ID).map(|v| v.into_owned()))
            .map(Holding::Key)
            .unwrap_or(Holding::Empty))
    }

    async fn deliver(&self, h: &Handover<'_>) -> Result<Delivered> {
        let fail = |e: Error| sink_error(self, SinkStage::Deliver, Written::No, "", Some(e));
        let _lock = lock(&self.path).map_err(fail)?;
        let f = self.load().map_err(fail)?;
        let mut doc = f.doc.clone();
        let profile = &self.spec.profile;
        let secret = h.key.secret.expose();
        let bad = |e: crate::credfile::ini::ValueError| fail(Error::Runtime(e.to_string()));
        let created = match f.section_of(profile) {
            Some(section) => {
                doc.set(&section, KEY_ID, &h.key.access_key_id)
                    .map_err(bad)?;
                if doc.set(&section, SECRET, secret).map_err(bad)? == 0 {
                    doc.insert_after(&section, KEY_ID, SECRET, secret)
                        .map_err(bad)?;
                }
                doc.remove(&section, TOKEN);
                false
            }
            None => true,
        };
        let text = if created {
            let mut t = f.doc.text().to_string();
            let nl = if t.contains("\r\n") { "\r\n" } else { "\n" };
            if !t.is_empty() && !t.ends_with('\n') {
                t.push_str(nl);
            }
            t.push_str(&format!(
                "[{profile}]{nl}{KEY_ID} = {}{nl}{SECRET} = {secret}{nl}",
                h.key.access_key_id
            ));
            t
        } else {
            doc.text().to_string()
        };
        let text = zeroize::Zeroizing::new(text);
        if text.as_str() != f.doc.text() {
            atomic_write(&self.path, text.as_bytes()).map_err(fail)?;
        }
        Ok(Delivered::new(format!(
            "{} profile {profile} in {}",
            if created { "created" } else { "updated" },
            self.path.display()
        )))
    }

    async fn verify(&self, h: &Handover<'_>) -> Result<String> {
        let f = self
            .load()
            .map_err(|e| sink_error(self, SinkStage::Verify, Written::Maybe, "", Some(e)))?;
        let section = f.section_of(&self.spec.profile);
        let get = |k: &str| {
            section
                .as_ref()
                .and_then(|s| f.doc.get(s, k).map(|v| v.into_owned()))
        };
        let values = vec![
            (
                KEY_ID.to_string(),
                Value::Plain(h.key.access_key_id.clone()),
            ),
            (SECRET.to_string(), Value::Secret(h.key.secret.clone())),
        ];
        check_values(self, &values, get)?;
        Ok(format!(
            "re-read {}: profile {} holds the new key",
            self.path.display(),
            self.spec.profile
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(pairs: &[(&str, &str)]) -> Vec<(String, Value)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::Plain(v.to_string())))
            .collect()
    }

    #[test]
    fn env_edit_keeps_every_other_byte() {
        let before = "# app settings\r\nREGION=eu-west-1\r\nexport AWS_ACCESS_KEY_ID=AKIAOLD  # ci\r\nAWS_SECRET_ACCESS_KEY=\"old/secret\"\r\nBUCKET='b'";
        let after = edit_env(
            before,
            &vals(&[
                ("AWS_ACCESS_KEY_ID", "AKIANEW"),
                ("AWS_SECRET_ACCESS_KEY", "new+sec/ret"),
            ]),
        )
        .unwrap();
        assert_eq!(
            after,
            "# app settings\r\nREGION=eu-west-1\r\nexport AWS_ACCESS_KEY_ID=AKIANEW  # ci\r\nAWS_SECRET_ACCESS_KEY=\"new+sec/ret\"\r\nBUCKET='b'"
        );
        let env = read_env(&after);
        assert!(env.contains(&("AWS_SECRET_ACCESS_KEY".into(), "new+sec/ret".into())));
        assert!(env.contains(&("BUCKET".into(), "b".into())));
    }

    #[test]
    fn env_edit_appends_missing_keys_in_mapping_order() {
        let after = edit_env("A=1", &vals(&[("Z", "z"), ("B", "b c")])).unwrap();
        assert_eq!(after, "A=1\nZ=z\nB='b c'\n");
        assert_eq!(edit_env("", &vals(&[("K", "v")])).unwrap(), "K=v\n");
        assert!(edit_env("", &vals(&[("K", "a\nb")])).is_err());
    }

    #[test]
    fn env_lines_parse_like_loaders_do() {
        let env =
            read_env("  export K1 = v1\n#K2=x\nK3=\nK4='q # not comment'\nK5=a #c\nnot a line\n");
        assert_eq!(
            env,
            vec![
                ("K1".to_string(), "v1".to_string()),
                ("K3".to_string(), "".to_string()),
                ("K4".to_string(), "q # not comment".to_string()),
                ("K5".to_string(), "a".to_string()),
            ]
        );
    }

    #[test]
    fn json_fields_keep_the_rest() {
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"region":"eu-west-1","AccessKeyId":"AKIAOLD","n":3}"#)
                .unwrap();
        set_json_fields(
            &mut obj,
            &vals(&[("AccessKeyId", "AKIANEW"), ("SecretAccessKey", "s")]),
        );
        assert_eq!(
            serde_json::Value::Object(obj).to_string(),
            r#"{"region":"eu-west-1","AccessKeyId":"AKIANEW","n":3,"SecretAccessKey":"s"}"#
        );
    }
}
