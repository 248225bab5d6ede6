//! A byte-preserving editor for the AWS shared credentials and config files.
//!
//! Hand-written on purpose: the maintained INI crates either re-serialize the file
//! (losing comments, spacing, key order, CRLF endings or a missing final newline) or,
//! like `ini-roundtrip`, round-trip lines without exposing byte offsets, line endings
//! or parse errors; and the SDKs' own parser (`aws-runtime`'s `env_config`) is not
//! public and keeps no byte offsets. keyturn must change only the bytes of the values
//! it replaces, keep every other byte, and accept exactly what the AWS SDKs accept.
//!
//! The line rules are the SDKs' (pinned by their shared test suite, see
//! `testdata/profile-parser-tests.json` and `sdk_suite.rs`):
//! - lines end at `\n` (a `\r` before it is part of the ending); "whitespace" is space
//!   and tab only;
//! - a line of whitespace is blank; a line whose *first* character is `#` or `;` is a
//!   comment (an indented `#` line is a continuation, as in the SDKs);
//! - a line starting with `[` is a section header: after trimming and cutting at the
//!   first `#`/`;` it must end with `]`;
//! - a line starting with whitespace continues the property above (its trimmed text,
//!   comments included, is appended after a newline); under a property with an empty
//!   value it is a sub-property and must read `name = value`;
//! - any other line is `name = value`: cut at a `#`/`;` that follows whitespace, split
//!   at the first `=`, both sides trimmed; names compare ASCII case-insensitively.
//!
//! Which sections are profiles (prefixes, valid names, `[profile default]` over
//! `[default]`) is decided one level up, in [`super::SharedFile`]; this module deals in
//! sections chosen by a [`SectionSel`].
//!
//! The text is held in a [`SecretText`] (zeroed on drop, redacted in `Debug`): a
//! credentials file holds every profile's secret.

use crate::secret::SecretText;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// The SDKs' whitespace: space and tab (not `char::is_whitespace`).
const WS: &[char] = &[' ', '\t'];
const COMMENT: &[char] = &['#', ';'];

/// What a line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    Blank,
    Comment,
    /// `[name]`; `name` is the text between the brackets, trimmed.
    Section {
        name: String,
    },
    /// `key = value`; `value` indexes into the document text (the first line's value).
    Property {
        key: String,
        value: Range<usize>,
    },
    /// An indented line continuing the property on line index `of` (0-based);
    /// `value` is its trimmed text.
    Continuation {
        of: usize,
        value: Range<usize>,
    },
}

/// One line with its byte ranges (`content` excludes the line ending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub content: Range<usize>,
    /// `content.end..full_end` is the line ending (`\n`, `\r\n`, or empty at EOF).
    pub full_end: usize,
    pub kind: LineKind,
}

/// A line keyturn cannot parse (1-based line number). The messages contain the SDKs'
/// own wording ("Expected a profile definition", ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// A value [`IniDoc::set`] or [`IniDoc::insert_after`] refuses to write, because the
/// file would not read it back as itself. Carries no part of the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot write {key}: the value {reason}")]
pub struct ValueError {
    pub key: String,
    pub reason: &'static str,
}

/// Which sections an operation applies to.
pub trait SectionSel {
    fn matches(&self, name: &str) -> bool;
}

impl SectionSel for str {
    fn matches(&self, name: &str) -> bool {
        self == name
    }
}

impl SectionSel for String {
    fn matches(&self, name: &str) -> bool {
        self == name
    }
}

impl SectionSel for [String] {
    fn matches(&self, name: &str) -> bool {
        self.iter().any(|n| n == name)
    }
}

impl SectionSel for Vec<String> {
    fn matches(&self, name: &str) -> bool {
        self.as_slice().matches(name)
    }
}

/// A parsed document that still owns its exact original text.
#[derive(Clone, PartialEq, Eq)]
pub struct IniDoc {
    text: SecretText,
    lines: Vec<Line>,
}

impl fmt::Debug for IniDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IniDoc")
            .field("text", &self.text)
            .field("lines", &self.lines.len())
            .finish()
    }
}

/// A `key = value` of one section (the value with its continuation lines).
#[derive(Clone, PartialEq, Eq)]
pub struct Property<'a> {
    pub key: &'a str,
    pub value: Cow<'a, str>,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Debug for Property<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Property")
            .field("key", &self.key)
            .field("value", &"<redacted>")
            .field("line", &self.line)
            .finish()
    }
}

/// The SDKs' `prepare_line`: trim, cut at the first comment character (that follows
/// whitespace, when `comments_need_whitespace`), trim again. Returns the kept range
/// relative to `line`.
fn prepare(line: &str, comments_need_whitespace: bool) -> Range<usize> {
    let start = line.len() - line.trim_start_matches(WS).len();
    let trimmed = line.trim_matches(WS);
    let mut prev_ws = false;
    let mut end = trimmed.len();
    for (i, c) in trimmed.char_indices() {
        if COMMENT.contains(&c) && (prev_ws || !comments_need_whitespace) {
            end = i;
            break;
        }
        prev_ws = c.is_whitespace();
    }
    let kept = trimmed[..end].trim_end_matches(WS);
    start..start + kept.len()
}

/// Why a `name = value` line is not one.
enum PropError {
    NoEquals,
    NoName,
}

/// `name = value` -> (key range, value range), relative to `line`.
fn split_property(line: &str) -> Result<(Range<usize>, Range<usize>), PropError> {
    let r = prepare(line, true);
    let kept = &line[r.clone()];
    let eq = kept.find('=').ok_or(PropError::NoEquals)?;
    let trim = |a: usize, b: usize| {
        let s = &line[a..b];
        let lead = s.len() - s.trim_start_matches(WS).len();
        let t = s.trim_matches(WS);
        a + lead..a + lead + t.len()
    };
    let key = trim(r.start, r.start + eq);
    if key.is_empty() {
        return Err(PropError::NoName);
    }
    Ok((key, trim(r.start + eq + 1, r.end)))
}

impl IniDoc {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Self::parse_owned(SecretText::new(text.to_string()))
    }

    /// Parse a text already in custody (no copy).
    pub fn parse_owned(text: SecretText) -> Result<Self, ParseError> {
        let lines = Self::lines_of(text.as_str())?;
        Ok(Self { text, lines })
    }

    fn lines_of(text: &str) -> Result<Vec<Line>, ParseError> {
        let mut lines = Vec::new();
        let mut pos = 0;
        let bytes = text.as_bytes();
        let mut in_section = false;
        // The property continuation lines attach to: (line index, value was empty).
        let mut property: Option<(usize, bool)> = None;
        let mut n = 0;
        while pos < text.len() {
            n += 1;
            let nl = text[pos..].find('\n').map(|i| pos + i);
            let (content_end, full_end) = match nl {
                Some(i) if i > pos && bytes[i - 1] == b'\r' => (i - 1, i + 1),
                Some(i) => (i, i + 1),
                None => (text.len(), text.len()),
            };
            let raw = &text[pos..content_end];
            let err = |message: &str| ParseError {
                line: n,
                message: message.to_string(),
            };
            let kind = if raw.trim_matches(WS).is_empty() {
                LineKind::Blank
            } else if raw.starts_with(COMMENT) {
                LineKind::Comment
            } else if raw.starts_with('[') {
                let r = prepare(raw, false);
                let kept = &raw[r];
                let Some(inner) = kept.strip_suffix(']') else {
                    return Err(err("Profile definition must end with ']'"));
                };
                in_section = true;
                property = None;
                LineKind::Section {
                    name: inner[1..].trim_matches(WS).to_string(),
                }
            } else if raw.starts_with(WS) {
                if !in_section {
                    return Err(err("Expected a profile definition"));
                }
                let Some((of, sub)) = property else {
                    return Err(err("Expected a property definition, found continuation"));
                };
                if sub {
                    match split_property(raw) {
                        Ok(_) => {}
                        Err(PropError::NoEquals) => {
                            return Err(err("Expected an '=' sign defining a sub-property"))
                        }
                        Err(PropError::NoName) => {
                            return Err(err("Sub-property did not have a name"))
                        }
                    }
                }
                let lead = raw.len() - raw.trim_start_matches(WS).len();
                let len = raw.trim_matches(WS).len();
                LineKind::Continuation {
                    of,
                    value: pos + lead..pos + lead + len,
                }
            } else {
                if !in_section {
                    return Err(err("Expected a profile definition"));
                }
                let (key, value) = match split_property(raw) {
                    Ok(kv) => kv,
                    Err(PropError::NoEquals) => {
                        return Err(err("Expected an '=' sign defining a property"))
                    }
                    Err(PropError::NoName) => return Err(err("Property did not have a name")),
                };
                property = Some((lines.len(), value.is_empty()));
                LineKind::Property {
                    key: raw[key].to_string(),
                    value: pos + value.start..pos + value.end,
                }
            };
            lines.push(Line {
                content: pos..content_end,
                full_end,
                kind,
            });
            pos = full_end;
        }
        Ok(lines)
    }

    pub fn text(&self) -> &str {
        self.text.as_str()
    }

    /// The text in custody (to write it out without a plain copy).
    pub fn secret_text(&self) -> &SecretText {
        &self.text
    }

    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Section names in file order, without repeats (a name may appear more than once;
    /// the SDKs merge such sections).
    pub fn section_names(&self) -> Vec<&str> {
        let mut v = Vec::new();
        for l in &self.lines {
            if let LineKind::Section { name } = &l.kind {
                if !v.contains(&name.as_str()) {
                    v.push(name.as_str());
                }
            }
        }
        v
    }

    /// The full value of the property on line index `i` (continuations joined by `\n`).
    fn value_at(&self, i: usize) -> Cow<'_, str> {
        let LineKind::Property { value, .. } = &self.lines[i].kind else {
            return Cow::Borrowed("");
        };
        let first = &self.text()[value.clone()];
        let conts: Vec<&Range<usize>> = self.continuations(i).map(|(_, r)| r).collect();
        if conts.is_empty() {
            return Cow::Borrowed(first);
        }
        let mut s = String::from(first);
        for r in conts {
            s.push('\n');
            s.push_str(&self.text()[r.clone()]);
        }
        Cow::Owned(s)
    }

    /// (line index, value range) of the continuation lines of the property on line `i`.
    fn continuations(&self, i: usize) -> impl Iterator<Item = (usize, &Range<usize>)> {
        self.lines
            .iter()
            .enumerate()
            .skip(i + 1)
            .take_while(|(_, l)| {
                !matches!(l.kind, LineKind::Section { .. } | LineKind::Property { .. })
            })
            .filter_map(move |(j, l)| match &l.kind {
                LineKind::Continuation { of, value } if *of == i => Some((j, value)),
                _ => None,
            })
    }

    /// Line indexes of the properties of the selected sections, in file order.
    fn property_lines(&self, section: &(impl SectionSel + ?Sized)) -> Vec<(usize, &str)> {
        let mut current = false;
        let mut out = Vec::new();
        for (i, l) in self.lines.iter().enumerate() {
            match &l.kind {
                LineKind::Section { name } => current = section.matches(name),
                LineKind::Property { key, .. } if current => out.push((i, key.as_str())),
                _ => {}
            }
        }
        out
    }

    /// Properties of the selected sections (top-level keys), in order.
    pub fn properties(&self, section: &(impl SectionSel + ?Sized)) -> Vec<Property<'_>> {
        self.property_lines(section)
            .into_iter()
            .map(|(i, key)| Property {
                key,
                value: self.value_at(i),
                line: i + 1,
            })
            .collect()
    }

    /// The last value of `key` (ASCII case-insensitive) in the selected sections.
    pub fn get(&self, section: &(impl SectionSel + ?Sized), key: &str) -> Option<Cow<'_, str>> {
        let i = self
            .property_lines(section)
            .into_iter()
            .rev()
            .find(|(_, k)| k.eq_ignore_ascii_case(key))?
            .0;
        Some(self.value_at(i))
    }

    /// Replace the value of every `key` line in the selected sections (continuation
    /// lines of those values are removed); nothing else changes. Returns how many
    /// properties changed. A value the file could not read back as itself (a line
    /// break, surrounding whitespace, a comment marker after whitespace) is refused.
    pub fn set(
        &mut self,
        section: &(impl SectionSel + ?Sized),
        key: &str,
        new_value: &str,
    ) -> Result<usize, ValueError> {
        check_value(key, new_value)?;
        let mut edits = Vec::new();
        let mut n = 0;
        for (i, _) in self.key_lines(section, key) {
            let LineKind::Property { value, .. } = &self.lines[i].kind else {
                continue;
            };
            n += 1;
            edits.push((value.clone(), new_value));
            for (j, _) in self.continuations(i) {
                edits.push((self.lines[j].content.start..self.lines[j].full_end, ""));
            }
        }
        self.apply(edits);
        Ok(n)
    }

    /// Remove every `key` line of the selected sections, with its line ending and its
    /// continuation lines. Returns how many properties.
    pub fn remove(&mut self, section: &(impl SectionSel + ?Sized), key: &str) -> usize {
        let mut edits = Vec::new();
        let mut n = 0;
        for (i, _) in self.key_lines(section, key) {
            n += 1;
            let l = &self.lines[i];
            edits.push((l.content.start..l.full_end, ""));
            for (j, _) in self.continuations(i) {
                edits.push((self.lines[j].content.start..self.lines[j].full_end, ""));
            }
        }
        self.apply(edits);
        n
    }

    /// Insert `key = value` right after the last `after_key` property (and its
    /// continuation lines) of the selected sections, using that line's ending (or the
    /// file's first ending when it has none). `Ok(false)`: no `after_key` there.
    pub fn insert_after(
        &mut self,
        section: &(impl SectionSel + ?Sized),
        after_key: &str,
        key: &str,
        value: &str,
    ) -> Result<bool, ValueError> {
        check_value(key, value)?;
        let Some((i, _)) = self.key_lines(section, after_key).pop() else {
            return Ok(false);
        };
        let last = self.continuations(i).last().map(|(j, _)| j).unwrap_or(i);
        let l = &self.lines[last];
        let ending = &self.text()[l.content.end..l.full_end];
        let (prefix, eol) = if ending.is_empty() {
            (self.dominant_ending(), "")
        } else {
            ("", ending)
        };
        let insert = SecretText::new(format!("{prefix}{key} = {value}{eol}"));
        let at = l.full_end;
        self.apply(vec![(at..at, insert.as_str())]);
        Ok(true)
    }

    fn dominant_ending(&self) -> &'static str {
        if self.text().contains("\r\n") {
            "\r\n"
        } else {
            "\n"
        }
    }

    /// (line index, key) of each `key` property in the selected sections.
    fn key_lines(&self, section: &(impl SectionSel + ?Sized), key: &str) -> Vec<(usize, String)> {
        self.property_lines(section)
            .into_iter()
            .filter(|(_, k)| k.eq_ignore_ascii_case(key))
            .map(|(i, k)| (i, k.to_string()))
            .collect()
    }

    /// Apply non-overlapping edits into a new buffer (the old one is wiped on drop) and
    /// re-parse. Edits keep the document parseable: values are checked, removed lines
    /// are whole properties with their continuations, inserted lines are properties.
    fn apply(&mut self, mut edits: Vec<(Range<usize>, &str)>) {
        if edits.is_empty() {
            return;
        }
        edits.sort_by_key(|(r, _)| r.start);
        let old = self.text();
        let removed: usize = edits.iter().map(|(r, _)| r.len()).sum();
        let added: usize = edits.iter().map(|(_, s)| s.len()).sum();
        let mut text = String::with_capacity(old.len() - removed + added);
        let mut at = 0;
        for (r, s) in &edits {
            text.push_str(&old[at..r.start]);
            text.push_str(s);
            at = r.end;
        }
        text.push_str(&old[at..]);
        let text = SecretText::new(text);
        match Self::lines_of(text.as_str()) {
            Ok(lines) => *self = Self { text, lines },
            // Unreachable by the rules above; keep the document unchanged rather than
            // write something the SDKs would reject (the caller's read-back fails).
            Err(e) => tracing::error!(
                line = e.line,
                "an edit made the file unparseable: {}",
                e.message
            ),
        }
    }
}

/// Whether `value` reads back as itself on a `key = value` line.
fn check_value(key: &str, value: &str) -> Result<(), ValueError> {
    let err = |reason| {
        Err(ValueError {
            key: key.to_string(),
            reason,
        })
    };
    if value.contains(['\n', '\r']) {
        return err("contains a line break");
    }
    if value.starts_with(WS) || value.ends_with(WS) {
        return err("starts or ends with whitespace");
    }
    let mut prev_ws = false;
    for c in value.chars() {
        if prev_ws && COMMENT.contains(&c) {
            return err("contains a comment marker (# or ; after whitespace)");
        }
        prev_ws = c.is_whitespace();
    }
    if value.chars().any(|c| c.is_control()) {
        return err("contains a control character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "# my keys\r\n[default]\r\naws_access_key_id = AKIAOLD\r\naws_secret_access_key=old/secret  # rotated by hand\r\n\r\n[ci] ; the robot\r\nregion = eu-west-1\r\naws_access_key_id=AKIAOLD\r\naws_secret_access_key = old/secret\r\nretry_mode";

    #[test]
    fn parses_sections_properties_and_inline_comments() {
        let err = IniDoc::parse(SAMPLE).unwrap_err();
        assert_eq!(err.line, 10, "the last line has no '='");
        let text = SAMPLE.replace("retry_mode", "s3 =\r\n  max_concurrent_requests = 5");
        let doc = IniDoc::parse(&text).unwrap();
        assert_eq!(doc.section_names(), ["default", "ci"]);
        assert_eq!(
            doc.get("default", "aws_secret_access_key").as_deref(),
            Some("old/secret")
        );
        assert_eq!(doc.get("ci", "REGION").as_deref(), Some("eu-west-1"));
        assert_eq!(
            doc.get("ci", "s3").as_deref(),
            Some("\nmax_concurrent_requests = 5")
        );
        assert_eq!(doc.text(), text);
    }

    #[test]
    fn set_changes_only_value_bytes() {
        let text = SAMPLE.replace("retry_mode", "output = json");
        let mut doc = IniDoc::parse(&text).unwrap();
        assert_eq!(doc.set("default", "aws_secret_access_key", "NEW"), Ok(1));
        assert_eq!(
            doc.text(),
            text.replace(
                "aws_secret_access_key=old/secret  # rotated",
                "aws_secret_access_key=NEW  # rotated"
            )
        );
    }

    #[test]
    fn remove_takes_the_whole_line_and_keeps_the_rest() {
        let text = "[a]\nx = 1\naws_session_token = T\ny = 2";
        let mut doc = IniDoc::parse(text).unwrap();
        assert_eq!(doc.remove("a", "aws_session_token"), 1);
        assert_eq!(doc.text(), "[a]\nx = 1\ny = 2");
        let mut doc = IniDoc::parse("[a]\nx = 1\naws_session_token = T").unwrap();
        doc.remove("a", "aws_session_token");
        assert_eq!(doc.text(), "[a]\nx = 1\n");
    }

    #[test]
    fn insert_after_uses_the_line_ending() {
        let mut doc = IniDoc::parse("[a]\r\nk = 1\r\n[b]").unwrap();
        assert_eq!(doc.insert_after("a", "k", "s", "2"), Ok(true));
        assert_eq!(doc.text(), "[a]\r\nk = 1\r\ns = 2\r\n[b]");
        let mut doc = IniDoc::parse("[a]\nk = 1").unwrap();
        assert_eq!(doc.insert_after("a", "k", "s", "2"), Ok(true));
        assert_eq!(doc.text(), "[a]\nk = 1\ns = 2");
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("key = v\n", 1),
            ("[a]\n[b\n", 2),
            ("[a]\nnot a property\n", 2),
            ("[a]\nk =\n  indented\n", 3),
            ("[a]\nk =\n  = v\n", 3),
            ("[a] junk\n", 1),
            ("[a]\n = v\n", 2),
            ("  k = v\n", 1),
        ] {
            assert_eq!(IniDoc::parse(text).unwrap_err().line, line, "{text:?}");
        }
    }

    impl IniDoc {
        /// (whole line incl. ending, value span) of each `key` line in `section`.
        fn spans(&self, section: &str, key: &str) -> Vec<(Range<usize>, Range<usize>)> {
            self.key_lines(section, key)
                .into_iter()
                .filter_map(|(i, _)| match &self.lines[i].kind {
                    LineKind::Property { value, .. } => Some((
                        self.lines[i].content.start..self.lines[i].full_end,
                        value.clone(),
                    )),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn continuations_read_like_the_sdks_and_set_replaces_them() {
        let text = "[a]\nk = v1\n  -more # kept\n\n# c\n\t-last\nz = 1\n";
        let mut doc = IniDoc::parse(text).unwrap();
        assert_eq!(
            doc.get("a", "K").as_deref(),
            Some("v1\n-more # kept\n-last")
        );
        assert_eq!(doc.set("a", "k", "new"), Ok(1));
        assert_eq!(doc.text(), "[a]\nk = new\n\n# c\nz = 1\n");
        let mut doc = IniDoc::parse(text).unwrap();
        assert_eq!(doc.insert_after("a", "k", "s", "2"), Ok(true));
        assert_eq!(
            doc.text(),
            "[a]\nk = v1\n  -more # kept\n\n# c\n\t-last\ns = 2\nz = 1\n"
        );
        assert_eq!(doc.remove("a", "k"), 1);
        assert_eq!(doc.text(), "[a]\n\n# c\ns = 2\nz = 1\n");
    }

    #[test]
    fn set_refuses_values_that_would_not_read_back() {
        let text = "[a]\nk = v\n";
        for bad in ["a\nb", "a\r", " a", "a\t", "a #b", "a ;b", "a\u{1}b"] {
            let mut doc = IniDoc::parse(text).unwrap();
            let e = doc.set("a", "k", bad).unwrap_err();
            assert_eq!(e.key, "k");
            assert!(!e.to_string().contains(bad), "{e}");
            assert_eq!(doc.text(), text);
            assert!(doc.insert_after("a", "k", "s", bad).is_err());
            assert_eq!(doc.text(), text);
        }
        let mut doc = IniDoc::parse(text).unwrap();
        assert_eq!(doc.set("a", "k", "a#b;c=d"), Ok(1));
        assert_eq!(doc.get("a", "k").as_deref(), Some("a#b;c=d"));
    }

    #[test]
    fn comments_follow_the_sdk_rules() {
        let doc = IniDoc::parse("[a]#x\nk =  #gone\nj = v#kept\n  # indented is a continuation\n")
            .unwrap();
        assert_eq!(doc.get("a", "k").as_deref(), Some(""));
        assert_eq!(
            doc.get("a", "j").as_deref(),
            Some("v#kept\n# indented is a continuation")
        );
        assert!(!format!("{doc:?}").contains("kept"));
    }

    fn arb_value() -> impl Strategy<Value = String> {
        "[A-Za-z0-9/+=_.-]{0,12}"
    }

    /// Values keyturn writes: key ids and secrets are never empty.
    fn arb_new_value() -> impl Strategy<Value = String> {
        "[A-Za-z0-9/+=_.-]{1,40}"
    }

    fn arb_line() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[#;][ -~]{0,10}",
            "[a-z]{1,6}".prop_map(|n| format!("[{n}]")),
            "[a-z]{1,6}".prop_map(|n| format!("[ profile {n} ]  # c")),
            (
                "[a-z_]{1,8}[ \t]{0,2}",
                "[ \t]{0,2}",
                arb_value(),
                "( [#;][ -~]{0,6})?"
            )
                .prop_map(|(k, sp, v, c)| format!("{k}={sp}{v}{c}")),
        ]
    }

    fn arb_doc() -> impl Strategy<Value = String> {
        (
            "[a-z]{1,6}",
            prop::collection::vec((arb_line(), prop_oneof![Just("\n"), Just("\r\n")]), 0..25),
            any::<bool>(),
        )
            .prop_map(|(first, lines, final_newline)| {
                let mut s = format!("[{first}]\n");
                for (l, e) in lines {
                    s.push_str(&l);
                    s.push_str(e);
                }
                if !final_newline && s.ends_with('\n') {
                    s.pop();
                    if s.ends_with('\r') {
                        s.pop();
                    }
                }
                s
            })
    }

    proptest! {
        #[test]
        fn parse_round_trips(doc in arb_doc()) {
            let d = IniDoc::parse(&doc).unwrap();
            prop_assert_eq!(d.text(), doc.as_str());
        }

        #[test]
        fn set_changes_only_the_values_bytes(doc in arb_doc(), value in arb_new_value()) {
            let d = IniDoc::parse(&doc).unwrap();
            for section in d.section_names() {
                let props = d.properties(section);
                let Some(target) = props.first() else { continue };
                let key = target.key.to_string();
                let mut edited = d.clone();
                edited.set(section, &key, &value).unwrap();
                // Rebuild the expected text from the original spans.
                let mut expected = doc.clone();
                let mut spans: Vec<_> = d.spans(section, &key).into_iter().map(|(_, v)| v).collect();
                spans.sort_by_key(|r| std::cmp::Reverse(r.start));
                for r in spans { expected.replace_range(r, &value); }
                prop_assert_eq!(edited.text(), expected.as_str());
                // Every other section reads exactly as before.
                for other in d.section_names() {
                    if other != section {
                        prop_assert_eq!(edited.properties(other), d.properties(other));
                    }
                }
                // The edited key now reads back as the new value.
                let got = edited.get(section, &key);
                prop_assert_eq!(got.as_deref(), Some(value.as_str()));
            }
        }

        #[test]
        fn remove_deletes_only_those_lines(doc in arb_doc()) {
            let d = IniDoc::parse(&doc).unwrap();
            for section in d.section_names() {
                let Some(target) = d.properties(section).first().map(|p| p.key.to_string()) else { continue };
                let mut edited = d.clone();
                edited.remove(section, &target);
                let mut expected = doc.clone();
                let mut lines: Vec<_> = d.spans(section, &target).into_iter().map(|(l, _)| l).collect();
                lines.sort_by_key(|r| std::cmp::Reverse(r.start));
                for r in lines { expected.replace_range(r, ""); }
                prop_assert_eq!(edited.text(), expected.as_str());
            }
        }
    }
}
