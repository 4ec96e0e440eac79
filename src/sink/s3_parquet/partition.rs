//! Hive-style partition templates such as
//! `route={route}/dt={event_date}/country={column:country}`.
//!
//! A template is parsed once (at config validation and sink start-up) into
//! literal text and placeholders. For one source object the object-level
//! placeholders (`{route}`, `{bucket}`, `{event_date}`, `{event_hour}`) are
//! fixed, so [`PartitionTemplate::bind`] resolves them up front; only
//! `{column:NAME}` placeholders vary per row, and [`BoundTemplate::split`]
//! groups a batch's rows by the path they render to.
//!
//! Every substituted value is escaped the way Hive escapes partition
//! values, so a value can never add a path segment (`/` becomes `%2F`), and
//! a null or empty value becomes [`DEFAULT_PARTITION`].

use std::collections::HashMap;

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::sink::{Lineage, SinkError};

/// What Hive, Spark and Athena call a partition whose value is null.
pub const DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

const COLUMN_PREFIX: &str = "column:";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{route}`: the route's name.
    Route,
    /// `{bucket}`: the source object's bucket.
    SourceBucket,
    /// `{event_date}`: YYYY-MM-DD (UTC) of the S3 event time.
    EventDate,
    /// `{event_hour}`: HH (UTC, 00-23) of the S3 event time.
    EventHour,
    /// `{column:NAME}`: the row's value in column NAME.
    Column(String),
}

/// A parsed partition template; the empty template means "no partition
/// directories".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionTemplate {
    segments: Vec<Segment>,
}

impl PartitionTemplate {
    /// Parses `text`; the error names the offending placeholder or rule.
    pub fn parse(text: &str) -> Result<PartitionTemplate, String> {
        if text.starts_with('/') || text.ends_with('/') || text.contains("//") {
            return Err(format!(
                "`{text}`: must not start or end with `/` or contain an empty path segment (`//`)"
            ));
        }
        if text
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(format!(
                "`{text}`: must not contain `.` or `..` path segments"
            ));
        }
        let mut segments = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next_brace = rest.find(['{', '}']).unwrap_or(rest.len());
            if next_brace > 0 {
                segments.push(Segment::Literal(rest[..next_brace].to_owned()));
                rest = &rest[next_brace..];
                continue;
            }
            if rest.starts_with('}') {
                return Err(format!("`{text}`: `}}` without a matching `{{`"));
            }
            let close = rest
                .find('}')
                .ok_or_else(|| format!("`{text}`: `{{` without a matching `}}`"))?;
            let name = &rest[1..close];
            if name.contains('{') {
                return Err(format!("`{text}`: placeholders cannot be nested"));
            }
            segments.push(match name {
                "route" => Segment::Route,
                "bucket" => Segment::SourceBucket,
                "event_date" => Segment::EventDate,
                "event_hour" => Segment::EventHour,
                _ => match name.strip_prefix(COLUMN_PREFIX) {
                    Some("") => {
                        return Err(format!(
                            "`{text}`: `{{column:}}` needs a column name, like `{{column:country}}`"
                        ));
                    }
                    Some(column) => Segment::Column(column.to_owned()),
                    None => {
                        return Err(format!(
                            "unknown placeholder `{{{name}}}` (known: {{route}}, {{bucket}}, \
                             {{event_date}}, {{event_hour}}, {{column:NAME}})"
                        ));
                    }
                },
            });
            rest = &rest[close + 1..];
        }
        Ok(PartitionTemplate { segments })
    }

    /// The columns the template splits rows by, in template order.
    pub fn column_names(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|segment| match segment {
                Segment::Column(name) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Resolves every object-level placeholder for one source object.
    pub fn bind(&self, lineage: &Lineage) -> BoundTemplate {
        let pieces = self
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Literal(text) => Piece::Text(text.clone()),
                Segment::Route => Piece::Text(escape_value(Some(&lineage.route))),
                Segment::SourceBucket => Piece::Text(escape_value(Some(&lineage.bucket))),
                Segment::EventDate => Piece::Text(escape_value(
                    lineage
                        .event_time
                        .map(|time| time.format("%Y-%m-%d").to_string())
                        .as_deref(),
                )),
                Segment::EventHour => Piece::Text(escape_value(
                    lineage
                        .event_time
                        .map(|time| time.format("%H").to_string())
                        .as_deref(),
                )),
                Segment::Column(name) => Piece::Column(name.clone()),
            })
            .collect();
        BoundTemplate { pieces }
    }
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Column(String),
}

/// A template with the object-level placeholders filled in.
#[derive(Debug, Clone)]
pub struct BoundTemplate {
    pieces: Vec<Piece>,
}

impl BoundTemplate {
    /// The partition path when it does not depend on row values.
    pub fn fixed_path(&self) -> Option<String> {
        let mut path = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => path.push_str(text),
                Piece::Column(_) => return None,
            }
        }
        Some(path)
    }

    /// Splits `batch` into one sub-batch per partition path, in the order
    /// the paths first appear. A missing column is a permanent error: the
    /// file can never be partitioned as configured.
    pub fn split(&self, batch: RecordBatch) -> Result<Vec<(String, RecordBatch)>, SinkError> {
        if let Some(path) = self.fixed_path() {
            return Ok(vec![(path, batch)]);
        }
        // Every row's path, built piece by piece; a column piece appends
        // that row's escaped value.
        let mut row_paths = vec![String::new(); batch.num_rows()];
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => row_paths.iter_mut().for_each(|path| path.push_str(text)),
                Piece::Column(name) => {
                    let column = batch.column_by_name(name).ok_or_else(|| {
                        SinkError::permanent(format!(
                            "partition column `{name}` is not in the source's columns"
                        ))
                    })?;
                    let formatter =
                        ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())
                            .map_err(|err| {
                                SinkError::permanent(format!(
                                    "partition column `{name}` cannot be rendered as text: {err}"
                                ))
                            })?;
                    for (row, path) in row_paths.iter_mut().enumerate() {
                        if column.is_null(row) {
                            path.push_str(DEFAULT_PARTITION);
                        } else {
                            path.push_str(&escape_value(Some(&formatter.value(row).to_string())));
                        }
                    }
                }
            }
        }

        let mut paths: Vec<String> = Vec::new();
        let mut rows_by_path: Vec<Vec<u32>> = Vec::new();
        let mut index_of_path: HashMap<String, usize> = HashMap::new();
        for (row, path) in row_paths.into_iter().enumerate() {
            let index = *index_of_path.entry(path.clone()).or_insert_with(|| {
                paths.push(path);
                rows_by_path.push(Vec::new());
                paths.len() - 1
            });
            rows_by_path[index].push(row as u32);
        }

        if paths.len() == 1 {
            return Ok(vec![(paths.remove(0), batch)]);
        }
        paths
            .into_iter()
            .zip(rows_by_path)
            .map(|(path, rows)| {
                let sub_batch =
                    take_record_batch(&batch, &UInt32Array::from(rows)).map_err(|err| {
                        SinkError::permanent(format!("split rows by partition: {err}"))
                    })?;
                Ok((path, sub_batch))
            })
            .collect()
    }
}

/// Escapes a partition value as Hive does (`FileUtils.escapePathName`):
/// control characters and `"#%'*/:=?\{[]^` plus DEL become `%XX`. Null
/// and empty values become [`DEFAULT_PARTITION`]; `.` and `..` are escaped
/// too so no reader mistakes them for relative paths.
pub fn escape_value(value: Option<&str>) -> String {
    let value = match value {
        None | Some("") => return DEFAULT_PARTITION.to_owned(),
        Some(value) => value,
    };
    if value == "." || value == ".." {
        return value.replace('.', "%2E");
    }
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        let needs_escape = matches!(
            c,
            '\u{00}'
                ..='\u{1F}'
                    | '"'
                    | '#'
                    | '%'
                    | '\''
                    | '*'
                    | '/'
                    | ':'
                    | '='
                    | '?'
                    | '\\'
                    | '\u{7F}'
                    | '{'
                    | '['
                    | ']'
                    | '^'
        );
        if needs_escape {
            escaped.push_str(&format!("%{:02X}", c as u32));
        } else {
            escaped.push(c);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use chrono::TimeZone;
    use std::sync::Arc;

    fn lineage() -> Lineage {
        Lineage {
            bucket: "vendor-drop".into(),
            key: "in/a.csv".into(),
            version_id: None,
            etag: Some("e".into()),
            size: 1,
            event_time: Some(chrono::Utc.with_ymd_and_hms(2026, 11, 27, 7, 5, 0).unwrap()),
            route: "sales".into(),
        }
    }

    #[test]
    fn object_placeholders_render_from_lineage() {
        let template =
            PartitionTemplate::parse("src={bucket}/route={route}/dt={event_date}/hr={event_hour}")
                .unwrap();
        assert_eq!(
            template.bind(&lineage()).fixed_path().unwrap(),
            "src=vendor-drop/route=sales/dt=2026-11-27/hr=07"
        );
        let no_time = Lineage {
            event_time: None,
            ..lineage()
        };
        assert_eq!(
            template.bind(&no_time).fixed_path().unwrap(),
            "src=vendor-drop/route=sales/dt=__HIVE_DEFAULT_PARTITION__/hr=__HIVE_DEFAULT_PARTITION__"
        );
        assert_eq!(
            PartitionTemplate::parse("")
                .unwrap()
                .bind(&lineage())
                .fixed_path()
                .unwrap(),
            ""
        );
    }

    #[test]
    fn bad_templates_are_rejected_with_the_culprit_named() {
        let unknown = PartitionTemplate::parse("dt={event_day}").unwrap_err();
        assert!(
            unknown.contains("unknown placeholder `{event_day}`"),
            "{unknown}"
        );
        for (text, expected) in [
            ("dt={event_date", "without a matching `}`"),
            ("dt=event_date}", "without a matching `{`"),
            ("x={column:}", "needs a column name"),
            ("/dt={event_date}", "must not start or end with `/`"),
            ("a//b", "empty path segment"),
            ("a/../b", "`..` path segments"),
            ("x={a{b}}", "nested"),
        ] {
            let err = PartitionTemplate::parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let template = PartitionTemplate::parse("a={column:x}/b={column:y}").unwrap();
        assert_eq!(template.column_names(), vec!["x", "y"]);
    }

    #[test]
    fn values_are_escaped_like_hive() {
        assert_eq!(escape_value(Some("a/b=c:d")), "a%2Fb%3Dc%3Ad");
        assert_eq!(escape_value(Some("50% off?")), "50%25 off%3F");
        assert_eq!(escape_value(Some("tab\there")), "tab%09here");
        assert_eq!(escape_value(Some("é ü-_.")), "é ü-_.");
        assert_eq!(escape_value(Some("..")), "%2E%2E");
        assert_eq!(escape_value(Some("")), DEFAULT_PARTITION);
        assert_eq!(escape_value(None), DEFAULT_PARTITION);
    }

    #[test]
    fn rows_are_split_by_column_values() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("country", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(StringArray::from(vec![
                    Some("fr"),
                    Some("us/ca"),
                    None,
                    Some("fr"),
                ])),
            ],
        )
        .unwrap();
        let template = PartitionTemplate::parse("route={route}/country={column:country}").unwrap();
        let parts = template.bind(&lineage()).split(batch.clone()).unwrap();
        let summary: Vec<(String, Vec<i64>)> = parts
            .iter()
            .map(|(path, batch)| {
                let ids = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                (path.clone(), ids.values().to_vec())
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("route=sales/country=fr".to_owned(), vec![1, 4]),
                ("route=sales/country=us%2Fca".to_owned(), vec![2]),
                (
                    "route=sales/country=__HIVE_DEFAULT_PARTITION__".to_owned(),
                    vec![3]
                ),
            ]
        );

        let missing = PartitionTemplate::parse("x={column:region}")
            .unwrap()
            .bind(&lineage())
            .split(batch)
            .unwrap_err();
        assert!(!missing.is_retryable());
        assert!(missing.detail.contains("`region`"), "{}", missing.detail);
    }
}
