//! A byte-preserving editor for the AWS shared credentials and config files.
//!
//! Hand-written on purpose: the maintained INI crates either re-serialize the file
//! (losing comments, spacing, key order, CRLF endings or a missing final newline) or,
//! like `ini-roundtrip`, round-trip lines without exposing byte offsets, line endings
//! or parse errors. keyturn must change only the bytes of the values it replaces, keep
//! every other byte, follow the AWS format's rules (`#`/`;` comments, `[profile x]`
//! headers, indented sub-property lines), and name the line number of anything it
//! cannot parse. That is a few hundred lines over byte spans, done here.

use std::ops::Range;

/// What a line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    Blank,
    Comment,
    /// `[name]`; `name` is the trimmed text between the brackets.
    Section {
        name: String,
    },
    /// `key = value`; spans index into the document text.
    Property {
        key: String,
        value: Range<usize>,
    },
    /// An indented line under a property with an empty value (`s3 =\n  region = x`).
    SubProperty,
}

/// One line with its byte ranges (`content` excludes the line ending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub content: Range<usize>,
    /// `content.end..full_end` is the line ending (`\n`, `\r\n`, or empty at EOF).
    pub full_end: usize,
    pub kind: LineKind,
}

/// A line keyturn cannot parse (1-based line number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// A parsed document that still owns its exact original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniDoc {
    text: String,
    lines: Vec<Line>,
}

/// A `key = value` of one section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property<'a> {
    pub key: &'a str,
    pub value: &'a str,
    /// 1-based line number.
    pub line: usize,
}

impl IniDoc {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut lines = Vec::new();
        let mut pos = 0;
        let bytes = text.as_bytes();
        let mut in_section = false;
        let mut last_property_empty = false;
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
            let trimmed = raw.trim();
            let err = |message: &str| ParseError {
                line: n,
                message: message.to_string(),
            };
            let kind = if trimmed.is_empty() {
                LineKind::Blank
            } else if trimmed.starts_with('#') || trimmed.starts_with(';') {
                LineKind::Comment
            } else if raw.starts_with([' ', '\t']) && in_section && !trimmed.starts_with('[') {
                // Continuation lines belong to the property above (AWS sub-properties).
                if !last_property_empty {
                    return Err(err(
                        "indented line does not follow a property with an empty value",
                    ));
                }
                LineKind::SubProperty
            } else if let Some(rest) = trimmed.strip_prefix('[') {
                let Some(close) = rest.find(']') else {
                    return Err(err("section header without a closing ']'"));
                };
                let after = rest[close + 1..].trim();
                if !(after.is_empty() || after.starts_with('#') || after.starts_with(';')) {
                    return Err(err("unexpected text after the section header"));
                }
                let name = rest[..close].trim();
                if name.is_empty() {
                    return Err(err("empty section name"));
                }
                in_section = true;
                last_property_empty = false;
                LineKind::Section {
                    name: name.to_string(),
                }
            } else if let Some(eq) = raw.find('=') {
                if !in_section {
                    return Err(err("property outside of any [section]"));
                }
                let key = raw[..eq].trim();
                if key.is_empty() {
                    return Err(err("property without a name before '='"));
                }
                let after = &raw[eq + 1..];
                let lead = after.len() - after.trim_start().len();
                let vstart = pos + eq + 1 + lead;
                let vend = vstart + value_len(&after[lead..]);
                last_property_empty = vend == vstart;
                LineKind::Property {
                    key: key.to_string(),
                    value: vstart..vend,
                }
            } else {
                return Err(err(
                    "expected '[section]', 'key = value', or a comment starting with # or ;",
                ));
            };
            lines.push(Line {
                content: pos..content_end,
                full_end,
                kind,
            });
            pos = full_end;
        }
        Ok(Self {
            text: text.to_string(),
            lines,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// Section names in file order (a name may repeat; AWS merges them).
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

    /// Properties of every section named `section` (top-level keys only), in order.
    pub fn properties(&self, section: &str) -> Vec<Property<'_>> {
        let mut out = Vec::new();
        let mut current: Option<&str> = None;
        for (i, l) in self.lines.iter().enumerate() {
            match &l.kind {
                LineKind::Section { name } => current = Some(name),
                LineKind::Property { key, value } if current == Some(section) => {
                    out.push(Property {
                        key,
                        value: &self.text[value.clone()],
                        line: i + 1,
                    })
                }
                _ => {}
            }
        }
        out
    }

    /// The last value of `key` (ASCII case-insensitive) in `section`.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.properties(section)
            .into_iter()
            .rev()
            .find(|p| p.key.eq_ignore_ascii_case(key))
            .map(|p| p.value)
    }

    /// Replace the value bytes of every `key` line in `section`; nothing else changes.
    /// Returns how many lines changed.
    pub fn set(&mut self, section: &str, key: &str, new_value: &str) -> usize {
        let spans: Vec<Range<usize>> = self
            .spans(section, key)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let n = spans.len();
        self.apply(
            spans
                .into_iter()
                .map(|r| (r, new_value.to_string()))
                .collect(),
        );
        n
    }

    /// Remove every `key` line of `section`, with its line ending. Returns how many.
    pub fn remove(&mut self, section: &str, key: &str) -> usize {
        let lines: Vec<Range<usize>> = self
            .spans(section, key)
            .into_iter()
            .map(|(line, _)| line)
            .collect();
        let n = lines.len();
        self.apply(lines.into_iter().map(|r| (r, String::new())).collect());
        n
    }

    /// Insert `key = value` right after the last `after_key` line of `section`, using
    /// that line's ending (or the file's first ending when it has none).
    pub fn insert_after(&mut self, section: &str, after_key: &str, key: &str, value: &str) -> bool {
        let Some((line, _)) = self.spans(section, after_key).pop() else {
            return false;
        };
        let idx = self
            .lines
            .iter()
            .position(|l| l.content.start == line.start)
            .expect("span comes from a line");
        let l = &self.lines[idx];
        let ending = &self.text[l.content.end..l.full_end];
        let (prefix, eol) = if ending.is_empty() {
            (self.dominant_ending().to_string(), "")
        } else {
            (String::new(), ending)
        };
        let insert = format!("{prefix}{key} = {value}{eol}");
        let at = l.full_end;
        self.apply(vec![(at..at, insert)]);
        true
    }

    fn dominant_ending(&self) -> &'static str {
        if self.text.contains("\r\n") {
            "\r\n"
        } else {
            "\n"
        }
    }

    /// (whole line incl. ending, value span) of each `key` line in `section`.
    fn spans(&self, section: &str, key: &str) -> Vec<(Range<usize>, Range<usize>)> {
        let mut out = Vec::new();
        let mut current: Option<&str> = None;
        for l in &self.lines {
            match &l.kind {
                LineKind::Section { name } => current = Some(name),
                LineKind::Property { key: k, value }
                    if current == Some(section) && k.eq_ignore_ascii_case(key) =>
                {
                    out.push((l.content.start..l.full_end, value.clone()))
                }
                _ => {}
            }
        }
        out
    }

    /// Apply non-overlapping edits and re-parse (edits keep the document parseable).
    fn apply(&mut self, mut edits: Vec<(Range<usize>, String)>) {
        if edits.is_empty() {
            return;
        }
        edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
        let mut text = std::mem::take(&mut self.text);
        for (r, s) in edits {
            text.replace_range(r, &s);
        }
        *self = IniDoc::parse(&text).expect("an edit of a parsed document stays parseable");
    }
}

/// Length of a property value: up to an inline comment (`#`/`;` after whitespace),
/// without trailing whitespace.
fn value_len(v: &str) -> usize {
    let bytes = v.as_bytes();
    let mut end = v.len();
    for i in 1..bytes.len() {
        if (bytes[i] == b'#' || bytes[i] == b';') && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t')
        {
            end = i;
            break;
        }
    }
    v[..end].trim_end().len()
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
            doc.get("default", "aws_secret_access_key"),
            Some("old/secret")
        );
        assert_eq!(doc.get("ci", "REGION"), Some("eu-west-1"));
        assert_eq!(doc.get("ci", "s3"), Some(""));
        assert_eq!(doc.text(), text);
    }

    #[test]
    fn set_changes_only_value_bytes() {
        let text = SAMPLE.replace("retry_mode", "output = json");
        let mut doc = IniDoc::parse(&text).unwrap();
        assert_eq!(doc.set("default", "aws_secret_access_key", "NEW"), 1);
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
        assert!(doc.insert_after("a", "k", "s", "2"));
        assert_eq!(doc.text(), "[a]\r\nk = 1\r\ns = 2\r\n[b]");
        let mut doc = IniDoc::parse("[a]\nk = 1").unwrap();
        assert!(doc.insert_after("a", "k", "s", "2"));
        assert_eq!(doc.text(), "[a]\nk = 1\ns = 2");
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("key = v\n", 1),
            ("[a]\n[b\n", 2),
            ("[a]\nnot a property\n", 2),
            ("[a]\nk = v\n  indented\n", 3),
            ("[a] junk\n", 1),
            ("[]\n", 1),
            ("[a]\n = v\n", 2),
        ] {
            assert_eq!(IniDoc::parse(text).unwrap_err().line, line, "{text:?}");
        }
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
                edited.set(section, &key, &value);
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
                prop_assert_eq!(edited.get(section, &key), Some(value.as_str()));
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
