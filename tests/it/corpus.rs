//! The bad-input corpus (tests/corpus/manifest.toml) against LocalStack:
//! every case uploaded or sent at once, ONE worker, then each case's outcome
//! checked — sink rows by `s3_ingest.source_key`, dead letters by key or
//! original message, discards by the absence of both.
//!
//! Cases marked `known_bug` are reported, not asserted. Run with
//! `-- --nocapture` to see the whole outcome table when everything passes.

#[path = "../corpus/generate.rs"]
mod generate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::Array;
use aws_sdk_s3::primitives::ByteStream;
use s3_ingest::dead_letter::DeadLetter;
use serde::Deserialize;

use crate::util::*;

/// How long the worker may take over the whole corpus.
const PROCESS_DEADLINE: Duration = Duration::from_secs(300);

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    routes: String,
    #[serde(rename = "case", default)]
    cases: Vec<Case>,
    #[serde(rename = "message", default)]
    messages: Vec<Message>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Sink,
    Dlq,
    Discard,
}

/// What a case should produce; shared by both kinds of case.
#[derive(Debug, Clone)]
struct Expected {
    expect: Expect,
    rows: Option<u64>,
    error_kind: Option<String>,
    columns: Option<Vec<String>>,
    null_counts: BTreeMap<String, usize>,
    known_bug: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    key: String,
    file: Option<String>,
    generate: Option<String>,
    content_encoding: Option<String>,
    expect: Expect,
    rows: Option<u64>,
    error_kind: Option<String>,
    columns: Option<Vec<String>>,
    #[serde(default)]
    null_counts: BTreeMap<String, usize>,
    known_bug: Option<String>,
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    name: String,
    body: Option<String>,
    body_file: Option<String>,
    generate: Option<String>,
    object_key: Option<String>,
    object_file: Option<String>,
    object_generate: Option<String>,
    fanout: Option<usize>,
    expect: Expect,
    rows: Option<u64>,
    error_kind: Option<String>,
    columns: Option<Vec<String>>,
    #[serde(default)]
    null_counts: BTreeMap<String, usize>,
    known_bug: Option<String>,
    #[allow(dead_code)]
    note: Option<String>,
}

impl Case {
    fn expected(&self) -> Expected {
        Expected {
            expect: self.expect,
            rows: self.rows,
            error_kind: self.error_kind.clone(),
            columns: self.columns.clone(),
            null_counts: self.null_counts.clone(),
            known_bug: self.known_bug.clone(),
        }
    }
}

impl Message {
    fn expected(&self) -> Expected {
        Expected {
            expect: self.expect,
            rows: self.rows,
            error_kind: self.error_kind.clone(),
            columns: self.columns.clone(),
            null_counts: self.null_counts.clone(),
            known_bug: self.known_bug.clone(),
        }
    }
}

fn load_manifest() -> Manifest {
    let path = corpus_dir().join("manifest.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let manifest: Manifest = toml::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not a valid manifest: {err}", path.display()));
    let mut names = std::collections::HashSet::new();
    for name in manifest
        .cases
        .iter()
        .map(|c| &c.name)
        .chain(manifest.messages.iter().map(|m| &m.name))
    {
        assert!(names.insert(name.clone()), "duplicate case name {name}");
    }
    let mut keys = std::collections::HashSet::new();
    for case in &manifest.cases {
        assert!(
            keys.insert(case.key.clone()),
            "{}: key {:?} used twice",
            case.name,
            case.key
        );
        assert!(
            case.file.is_some() != case.generate.is_some(),
            "{}: give exactly one of `file` and `generate`",
            case.name
        );
        check_expected(&case.name, &case.expected());
    }
    for message in &manifest.messages {
        let sources = [
            message.body.is_some(),
            message.body_file.is_some(),
            message.generate.is_some(),
            message.fanout.is_some(),
        ];
        assert_eq!(
            sources.iter().filter(|s| **s).count(),
            1,
            "{}: give exactly one of `body`, `body_file`, `generate` and `fanout`",
            message.name
        );
        let needs_object = message.object_key.is_some() || message.fanout.is_some();
        let object_sources = usize::from(message.object_file.is_some())
            + usize::from(message.object_generate.is_some());
        assert_eq!(
            object_sources,
            usize::from(needs_object),
            "{}: `object_key` and `fanout` need exactly one of `object_file` and \
             `object_generate`, other messages neither",
            message.name
        );
        check_expected(&message.name, &message.expected());
    }
    manifest
}

fn check_expected(name: &str, expected: &Expected) {
    match expected.expect {
        Expect::Sink => assert!(expected.rows.is_some(), "{name}: a sink case needs `rows`"),
        Expect::Dlq => assert!(
            expected.error_kind.is_some(),
            "{name}: a dlq case needs `error_kind`"
        ),
        Expect::Discard => {}
    }
}

fn read_input(file: Option<&str>, generator: Option<&str>) -> Vec<u8> {
    match (file, generator) {
        (Some(file), None) => std::fs::read(corpus_dir().join(file))
            .unwrap_or_else(|err| panic!("tests/corpus/{file}: {err}")),
        (None, Some(name)) => generate::generate(name),
        _ => unreachable!("checked when the manifest was loaded"),
    }
}

/// Uploads with an optional Content-Encoding; returns the ETag without quotes.
async fn upload(
    fixture: &Fixture,
    key: &str,
    body: Vec<u8>,
    content_encoding: Option<&str>,
) -> String {
    let output = fixture
        .clients
        .s3
        .put_object()
        .bucket(&fixture.bucket)
        .key(key)
        .set_content_encoding(content_encoding.map(str::to_owned))
        .body(ByteStream::from(body))
        .send()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "upload {key:?}: {}",
                aws_sdk_s3::error::DisplayErrorContext(err)
            )
        });
    output
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned()
}

/// A string as it goes between JSON quotes.
fn json_inner(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap();
    quoted[1..quoted.len() - 1].to_owned()
}

/// Where to look for a case's outcome.
#[derive(Debug)]
enum Target {
    /// Object cases: sink files and dead letters that name one of these keys.
    Keys { bucket: String, keys: Vec<String> },
    /// Message cases: dead letters carrying this body, sink files of these keys.
    Message {
        body: String,
        bucket: String,
        keys: Vec<String>,
    },
}

struct Prepared {
    name: String,
    expected: Expected,
    target: Target,
}

/// What a case actually produced.
#[derive(Debug, Default)]
struct Observed {
    /// Per key: sink files (rows, columns, null counts per column).
    sinks: Vec<(String, SinkSummary)>,
    dead_letters: Vec<DeadLetter>,
}

#[derive(Debug, Clone)]
struct SinkSummary {
    rows: u64,
    columns: Vec<String>,
    null_counts: BTreeMap<String, usize>,
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.sinks.is_empty() {
            let mut rows: Vec<u64> = self.sinks.iter().map(|(_, s)| s.rows).collect();
            rows.dedup();
            let first = &self.sinks[0].1;
            let nulls: Vec<String> = first
                .null_counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| format!("{c}:{n}"))
                .collect();
            parts.push(format!(
                "sink x{} rows={} columns={:?}{}",
                self.sinks.len(),
                rows.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("/"),
                first.columns,
                if nulls.is_empty() {
                    String::new()
                } else {
                    format!(" nulls={}", nulls.join(","))
                }
            ));
        }
        for letter in &self.dead_letters {
            let mut error = letter.error.clone();
            if error.len() > 160 {
                let mut end = 160;
                while !error.is_char_boundary(end) {
                    end -= 1;
                }
                error.truncate(end);
                error.push('…');
            }
            parts.push(format!("dlq {} ({error})", letter.error_kind));
        }
        if parts.is_empty() {
            parts.push("nothing (discarded)".to_owned());
        }
        write!(f, "{}", parts.join("; "))
    }
}

fn summarize(path: &Path, file: &SinkFile) -> SinkSummary {
    // From the file, not the batches: a 0-row file has no batch.
    let schema = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap()
    .schema()
    .clone();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut null_counts = BTreeMap::new();
    for (i, name) in columns.iter().enumerate() {
        let nulls = file
            .batches
            .iter()
            .map(|b| b.column(i).logical_null_count())
            .sum();
        null_counts.insert(name.clone(), nulls);
    }
    SinkSummary {
        rows: file.rows as u64,
        columns,
        null_counts,
    }
}

/// Checks one case; `Err` says how it differs from the expectation.
fn verify(prepared: &Prepared, expected_keys: usize, observed: &Observed) -> Result<(), String> {
    let expected = &prepared.expected;
    match expected.expect {
        Expect::Discard => {
            if observed.sinks.is_empty() && observed.dead_letters.is_empty() {
                Ok(())
            } else {
                Err("expected no output".to_owned())
            }
        }
        Expect::Dlq => {
            if !observed.sinks.is_empty() {
                return Err("expected no sink file".to_owned());
            }
            let kind = expected.error_kind.as_deref().unwrap();
            match observed.dead_letters.as_slice() {
                [letter] if letter.error_kind.as_str() == kind => Ok(()),
                [letter] => Err(format!(
                    "expected error_kind {kind}, got {}",
                    letter.error_kind
                )),
                letters => Err(format!("expected 1 dead letter, got {}", letters.len())),
            }
        }
        Expect::Sink => {
            if !observed.dead_letters.is_empty() {
                return Err("expected no dead letter".to_owned());
            }
            if observed.sinks.len() != expected_keys {
                return Err(format!(
                    "expected {expected_keys} sink file(s), got {}",
                    observed.sinks.len()
                ));
            }
            for (key, sink) in &observed.sinks {
                let rows = expected.rows.unwrap();
                if sink.rows != rows {
                    return Err(format!("{key}: expected {rows} rows, got {}", sink.rows));
                }
                if let Some(columns) = &expected.columns
                    && &sink.columns != columns
                {
                    return Err(format!(
                        "{key}: expected columns {columns:?}, got {:?}",
                        sink.columns
                    ));
                }
                for (column, nulls) in &expected.null_counts {
                    let got = sink.null_counts.get(column).copied();
                    if got != Some(*nulls) {
                        return Err(format!(
                            "{key}: expected {nulls} nulls in `{column}`, got {got:?}"
                        ));
                    }
                }
            }
            Ok(())
        }
    }
}

fn describe(expected: &Expected) -> String {
    match expected.expect {
        Expect::Sink => format!("sink rows={}", expected.rows.unwrap()),
        Expect::Dlq => format!("dlq {}", expected.error_kind.as_deref().unwrap()),
        Expect::Discard => "discard".to_owned(),
    }
}

/// Does this dead letter carry `body` (whole, or truncated as the
/// envelope truncates bodies past 200 KiB)?
fn carries_body(letter: &DeadLetter, body: &str) -> bool {
    if letter.original_message == body {
        return true;
    }
    match letter.original_message.split_once("…[truncated") {
        Some((kept, _)) => !kept.is_empty() && body.starts_with(kept),
        None => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_corpus() {
    let _suite = crate::shared().await;
    let manifest = load_manifest();
    // Object cases land in a bucket that notifies the queue; objects named
    // by hand-made messages live in a second bucket that notifies nobody, so
    // they produce no extra notifications. One queue, one worker for all.
    let fixture = Fixture::new("corpus").await;
    let side = Fixture::with_options(
        "corpus-msg",
        FixtureOptions {
            notifications: false,
            ..Default::default()
        },
    )
    .await;

    let mut prepared = Vec::new();
    for case in &manifest.cases {
        let body = read_input(case.file.as_deref(), case.generate.as_deref());
        upload(&fixture, &case.key, body, case.content_encoding.as_deref()).await;
        prepared.push(Prepared {
            name: case.name.clone(),
            expected: case.expected(),
            target: Target::Keys {
                bucket: fixture.bucket.clone(),
                keys: vec![case.key.clone()],
            },
        });
    }

    for message in &manifest.messages {
        let object_body = || {
            read_input(
                message.object_file.as_deref(),
                message.object_generate.as_deref(),
            )
        };
        let mut keys = Vec::new();
        let body = if let Some(count) = message.fanout {
            let mut records = Vec::new();
            for i in 0..count {
                let key = format!("msg/fanout/obj-{i:03}.csv");
                let data = object_body();
                let size = data.len() as u64;
                let etag = upload(&side, &key, data, None).await;
                records.push((key.clone(), etag, size));
                keys.push(key);
            }
            let records: Vec<(&str, &str, u64)> = records
                .iter()
                .map(|(k, e, s)| (k.as_str(), e.as_str(), *s))
                .collect();
            s3_event(&side.bucket, &records).to_string()
        } else {
            let template = match (&message.body, &message.body_file, &message.generate) {
                (Some(body), _, _) => body.clone(),
                (_, Some(file), _) => std::fs::read_to_string(corpus_dir().join(file))
                    .unwrap_or_else(|err| panic!("tests/corpus/{file}: {err}")),
                (_, _, Some(name)) => String::from_utf8(generate::generate(name))
                    .expect("a generated message body is UTF-8"),
                _ => unreachable!(),
            };
            let mut body = template.replace("${bucket}", &json_inner(&side.bucket));
            if let Some(key) = &message.object_key {
                let etag = upload(&side, key, object_body(), None).await;
                body = body
                    .replace("${key_s3}", &json_inner(&aws_encode_key(key)))
                    .replace("${key}", &json_inner(key))
                    .replace("${etag}", &etag);
                keys.push(key.clone());
            }
            assert!(
                !body.contains("${"),
                "{}: placeholder left in body (object_key missing?): {body}",
                message.name
            );
            body
        };
        // To the worker's queue, not the side fixture's.
        fixture.send_raw(&body).await;
        prepared.push(Prepared {
            name: message.name.clone(),
            expected: message.expected(),
            target: Target::Message {
                body,
                bucket: side.bucket.clone(),
                keys,
            },
        });
    }
    // Everything is queued before the worker starts: one notification per
    // object case (plus LocalStack's s3:TestEvent) and the hand-sent messages.
    let queued = (manifest.cases.len() + manifest.messages.len()) as u64;
    wait_until(&format!("{queued} messages queued"), WAIT, || async {
        fixture.queue_counts().await.0 >= queued
    })
    .await;

    let worker = fixture.start_worker(fixture.config(Some(&manifest.routes)));

    // Outputs that must appear whatever the known bugs do; then an empty
    // queue means every message was finished (a message is deleted only
    // after its objects are in the sink or on the DLQ).
    let (mut want_files, mut want_letters) = (0usize, 0usize);
    for case in prepared.iter().filter(|p| p.expected.known_bug.is_none()) {
        let keys = match &case.target {
            Target::Keys { keys, .. } | Target::Message { keys, .. } => keys.len(),
        };
        match case.expected.expect {
            Expect::Sink => want_files += keys,
            Expect::Dlq => want_letters += 1,
            Expect::Discard => {}
        }
    }
    let mut letters: Vec<DeadLetter> = Vec::new();
    let deadline = tokio::time::Instant::now() + PROCESS_DEADLINE;
    loop {
        letters.extend(fixture.take_dead_letters().await);
        let files = fixture.sink_files().len();
        let counts = fixture.queue_counts().await;
        if files >= want_files && letters.len() >= want_letters && counts == (0, 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {PROCESS_DEADLINE:?}: {files}/{want_files} sink files, \
             {}/{want_letters} dead letters, queue (visible, in flight) = {counts:?}; \
             letters so far: {:#?}",
            letters.len(),
            letters
                .iter()
                .map(|l| (&l.key, &l.error_kind, &l.error))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Anything dead-lettered in the same instant as the last delete.
    letters.extend(fixture.take_dead_letters().await);
    // The worker survived the corpus: it stops cleanly, without an error.
    worker.stop().await;

    // Read every sink file once.
    let sink_files: Vec<(PathBuf, SinkFile)> = fixture
        .sink_files()
        .into_iter()
        .map(|path| {
            let file = read_sink_file(&path);
            (path, file)
        })
        .collect();
    let mut claimed_files = vec![false; sink_files.len()];
    let mut claimed_letters = vec![false; letters.len()];

    let mut table = Vec::new();
    let mut failures = Vec::new();
    let mut bugs = Vec::new();
    for case in &prepared {
        let mut observed = Observed::default();
        let (bucket, keys, body) = match &case.target {
            Target::Keys { bucket, keys } => (bucket, keys, None),
            Target::Message { body, bucket, keys } => (bucket, keys, Some(body)),
        };
        for (i, (path, file)) in sink_files.iter().enumerate() {
            let meta = |name: &str| file.metadata.get(name).map(String::as_str);
            if meta("s3_ingest.source_bucket") == Some(bucket.as_str())
                && let Some(key) = meta("s3_ingest.source_key")
                && keys.iter().any(|k| k == key)
            {
                claimed_files[i] = true;
                observed.sinks.push((key.to_owned(), summarize(path, file)));
            }
        }
        for (i, letter) in letters.iter().enumerate() {
            let by_key = letter.bucket.as_deref() == Some(bucket.as_str())
                && letter
                    .key
                    .as_deref()
                    .is_some_and(|k| keys.iter().any(|x| x == k));
            let by_body = body.is_some_and(|b| carries_body(letter, b));
            if by_key || by_body {
                claimed_letters[i] = true;
                observed.dead_letters.push(letter.clone());
            }
        }
        let verdict = verify(case, keys.len(), &observed);
        let status = match (&verdict, &case.expected.known_bug) {
            (Ok(()), None) => "ok".to_owned(),
            (Err(why), None) => {
                failures.push(format!("{}: {why}; observed {observed}", case.name));
                format!("FAIL: {why}")
            }
            (Err(_), Some(bug)) => {
                bugs.push(format!("{}: {bug}", case.name));
                "known bug".to_owned()
            }
            (Ok(()), Some(_)) => {
                failures.push(format!(
                    "{}: marked known_bug but now behaves as expected: remove `known_bug`",
                    case.name
                ));
                "FIXED? remove known_bug".to_owned()
            }
        };
        table.push(format!(
            "{:<45} expected {:<28} observed {}  [{status}]",
            case.name,
            describe(&case.expected),
            observed
        ));
    }
    for (i, (path, file)) in sink_files.iter().enumerate() {
        if !claimed_files[i] {
            failures.push(format!(
                "sink file no case accounts for: {} (source {:?})",
                path.display(),
                file.metadata.get("s3_ingest.source_key")
            ));
        }
    }
    for (i, letter) in letters.iter().enumerate() {
        if !claimed_letters[i] {
            failures.push(format!(
                "dead letter no case accounts for: {} {:?}: {}",
                letter.error_kind, letter.key, letter.error
            ));
        }
    }

    let report = format!(
        "corpus outcomes ({} cases):\n{}\n\nknown bugs ({}):\n{}\n",
        table.len(),
        table.join("\n"),
        bugs.len(),
        bugs.join("\n")
    );
    println!("{report}");
    assert!(
        failures.is_empty(),
        "{report}\n{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
