//! The AWS SDKs' shared profile-parser test suite (`testdata/profile-parser-tests.json`,
//! from smithy-rs, Apache-2.0: see `testdata/NOTICE`), run against keyturn's reader:
//! every case the SDKs accept must give the same profiles and properties, every case
//! they reject must be refused with their message. Then, for every accepted case and
//! every profile in it, the rewrite property: put a key pair into the profile, rotate
//! it with the real writer, and only the two values change.

use super::ini::IniDoc;
use super::*;
use crate::aws::NewKey;
use std::collections::BTreeMap;

type Profiles = BTreeMap<String, BTreeMap<String, String>>;

fn file(kind: FileKind, text: Option<&str>) -> std::result::Result<SharedFile, String> {
    let text = text.unwrap_or("");
    let doc = IniDoc::parse(text).map_err(|e| e.message)?;
    Ok(SharedFile {
        kind,
        path: PathBuf::from(match kind {
            FileKind::Credentials => "credentials",
            FileKind::Config => "config",
        }),
        exists: true,
        doc,
    })
}

/// What the SDKs compute from the two files: profile -> property -> value (names
/// lower-cased, invalid names dropped, credentials over config, last one wins).
fn model(files: &SharedFiles) -> Profiles {
    let mut out = Profiles::new();
    for p in files.profile_names() {
        let mut props = BTreeMap::new();
        for f in [&files.config, &files.credentials] {
            let Some(sections) = f.section_of(&p) else {
                continue;
            };
            for prop in f.doc.properties(&sections) {
                if is_identifier(prop.key) {
                    props.insert(prop.key.to_ascii_lowercase(), prop.value.into_owned());
                }
            }
        }
        out.insert(p, props);
    }
    out
}

fn load(
    config: Option<&str>,
    credentials: Option<&str>,
) -> std::result::Result<SharedFiles, String> {
    Ok(SharedFiles {
        config: file(FileKind::Config, config)?,
        credentials: file(FileKind::Credentials, credentials)?,
    })
}

struct Case {
    name: String,
    config: Option<String>,
    credentials: Option<String>,
    expected: std::result::Result<Profiles, String>,
}

fn cases() -> Vec<Case> {
    let suite: serde_json::Value =
        serde_json::from_str(include_str!("testdata/profile-parser-tests.json")).unwrap();
    let tests = suite["tests"].as_array().unwrap();
    tests
        .iter()
        .map(|t| {
            let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
            let out = &t["output"];
            let expected = match out.get("errorContaining") {
                Some(e) => Err(e.as_str().unwrap().to_string()),
                None => Ok(serde_json::from_value(out["config"]["profiles"].clone()).unwrap()),
            };
            Case {
                name: t["name"].as_str().unwrap().to_string(),
                config: s(&t["input"]["configFile"]),
                credentials: s(&t["input"]["credentialsFile"]),
                expected,
            }
        })
        .collect()
}

#[test]
fn every_sdk_case_reads_the_same() {
    let cases = cases();
    assert_eq!(cases.len(), 65, "the whole suite is there");
    let mut failures = Vec::new();
    for c in &cases {
        let got = load(c.config.as_deref(), c.credentials.as_deref()).map(|f| model(&f));
        let ok = match (&got, &c.expected) {
            (Ok(g), Ok(e)) => g == e,
            (Err(g), Err(e)) => g.contains(e.as_str()),
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                c.name, c.expected, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_accepted_sdk_case_rotates_only_the_two_values() {
    const OLD_ID: &str = "AKIAOLDOLDOLDOLDOLD1";
    const OLD_SECRET: &str = "oldOLDoldOLDoldOLDoldOLDoldOLDoldOLD/+12";
    const NEW_ID: &str = "AKIANEWNEWNEWNEWNEW2";
    const NEW_SECRET: &str = "newNEWnewNEWnewNEWnewNEWnewNEWnewNEW/+34";
    let mut checked = 0;
    for c in cases() {
        let Ok(expected) = &c.expected else { continue };
        for profile in expected.keys() {
            let files = load(c.config.as_deref(), c.credentials.as_deref()).unwrap();
            // The key goes where the profile is read from: credentials win.
            let f = if files.credentials.section_of(profile).is_some() {
                &files.credentials
            } else {
                &files.config
            };
            let section = f.section_of(profile).unwrap();
            let header = f
                .doc
                .lines()
                .iter()
                .find(|l| matches!(&l.kind, ini::LineKind::Section { name } if section.contains(name)))
                .unwrap();
            let mut text = f.doc.text().to_string();
            let nl = if header.full_end == header.content.end {
                "\n"
            } else {
                ""
            };
            text.insert_str(
                header.full_end,
                &format!(
                    "{nl}aws_access_key_id = {OLD_ID}\naws_secret_access_key = {OLD_SECRET}\n"
                ),
            );
            let (mut cred, mut conf) = (
                c.credentials.clone().unwrap_or_default(),
                c.config.clone().unwrap_or_default(),
            );
            match f.kind {
                FileKind::Credentials => cred = text,
                FileKind::Config => conf = text,
            }
            // The inserted pair reads back as the SDKs would read it.
            let with_old = load(Some(&conf), Some(&cred)).unwrap();
            let mut want = expected.clone();
            let entry = want.get_mut(profile).unwrap();
            entry.insert(KEY_ID.into(), OLD_ID.into());
            entry.insert(SECRET.into(), OLD_SECRET.into());
            assert_eq!(model(&with_old), want, "{}: {profile}", c.name);

            let dir = tempfile::tempdir().unwrap();
            let (cp, fp) = (dir.path().join("credentials"), dir.path().join("config"));
            std::fs::write(&cp, &cred).unwrap();
            std::fs::write(&fp, &conf).unwrap();
            let writer = FileProfileWriter {
                credentials: cp.clone(),
                config: fp.clone(),
                lock_wait: Duration::from_secs(1),
            };
            let new = NewKey {
                user_name: "u".into(),
                access_key_id: NEW_ID.into(),
                secret: SecretKey::new(NEW_SECRET),
                create_date: time::OffsetDateTime::UNIX_EPOCH,
            };
            let updates = writer.write(OLD_ID, &new).unwrap();
            assert_eq!(updates.len(), 1, "{}: {profile}", c.name);
            let swap = |t: &str| t.replace(OLD_ID, NEW_ID).replace(OLD_SECRET, NEW_SECRET);
            assert_eq!(
                std::fs::read_to_string(&cp).unwrap(),
                swap(&cred),
                "{}",
                c.name
            );
            assert_eq!(
                std::fs::read_to_string(&fp).unwrap(),
                swap(&conf),
                "{}",
                c.name
            );
            let entry = want.get_mut(profile).unwrap();
            entry.insert(KEY_ID.into(), NEW_ID.into());
            entry.insert(SECRET.into(), NEW_SECRET.into());
            let after = SharedFiles::load(&cp, &fp).unwrap();
            assert_eq!(model(&after), want, "{}: {profile}", c.name);
            checked += 1;
        }
    }
    assert_eq!(checked, 59, "profiles rotated across the accepted cases");
}
