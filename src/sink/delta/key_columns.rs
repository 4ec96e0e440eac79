//! Columns whose value comes from the source object's key rather than from
//! its rows: `key_columns = { dt = 'dt=(\d{4}-\d{2}-\d{2})/' }` adds a
//! string column `dt` holding the first capture group of that pattern in
//! the key (null when the key does not match). Listed in `partition_by`,
//! such a column partitions the table by a date in the vendor's path.
//!
//! The value is the same for every row of one object, so it is resolved
//! once per object ([`KeyColumns::values_for`]) and appended to each batch
//! as a constant column ([`KeyValues::append_to`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use regex::Regex;

use crate::sink::SinkError;

/// The sink's key-derived columns, in name order.
#[derive(Debug, Clone, Default)]
pub struct KeyColumns {
    columns: Vec<(String, Regex)>,
}

impl KeyColumns {
    /// Compiles `patterns` (column name → regular expression with exactly
    /// one capture group); the error is (column, reason).
    pub fn parse(patterns: &BTreeMap<String, String>) -> Result<KeyColumns, (String, String)> {
        let mut columns = Vec::with_capacity(patterns.len());
        for (name, pattern) in patterns {
            if name.trim().is_empty() {
                return Err((name.clone(), "the column name must not be empty".into()));
            }
            let regex = Regex::new(pattern).map_err(|err| {
                (
                    name.clone(),
                    format!("`{pattern}` is not a valid pattern: {err}"),
                )
            })?;
            // captures_len counts the whole match as group 0.
            if regex.captures_len() != 2 {
                return Err((
                    name.clone(),
                    format!(
                        "`{pattern}` must have exactly one capture group (the value), it has {}",
                        regex.captures_len() - 1
                    ),
                ));
            }
            columns.push((name.clone(), regex));
        }
        Ok(KeyColumns { columns })
    }

    /// `schema` with the key columns appended (nullable strings). A file
    /// column of the same name is a schema error: the file and the key
    /// would both claim it.
    pub fn extend_schema(&self, schema: &SchemaRef) -> Result<SchemaRef, SinkError> {
        if self.columns.is_empty() {
            return Ok(schema.clone());
        }
        let clashing: Vec<&str> = self
            .columns
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| schema.field_with_name(name).is_ok())
            .collect();
        if !clashing.is_empty() {
            return Err(SinkError::schema(format!(
                "the file has column(s) {} that `key_columns` also defines",
                clashing.join(", ")
            )));
        }
        let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
        fields.extend(
            self.columns
                .iter()
                .map(|(name, _)| Arc::new(Field::new(name, DataType::Utf8, true))),
        );
        Ok(Arc::new(Schema::new_with_metadata(
            fields,
            schema.metadata().clone(),
        )))
    }

    /// Each key column's value for the object `key`.
    pub fn values_for(&self, key: &str) -> KeyValues {
        KeyValues {
            values: self
                .columns
                .iter()
                .map(|(_, regex)| {
                    regex
                        .captures(key)
                        .and_then(|captures| captures.get(1))
                        .map(|value| value.as_str().to_owned())
                })
                .collect(),
        }
    }
}

/// One object's key column values, in [`KeyColumns`] order.
#[derive(Debug, Clone, Default)]
pub struct KeyValues {
    values: Vec<Option<String>>,
}

impl KeyValues {
    /// `batch` with one constant column per value appended; `schema` is
    /// [`KeyColumns::extend_schema`] of the batch's schema.
    pub fn append_to(
        &self,
        batch: RecordBatch,
        schema: &SchemaRef,
    ) -> Result<RecordBatch, SinkError> {
        if self.values.is_empty() {
            return Ok(batch);
        }
        let rows = batch.num_rows();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.extend(
            self.values
                .iter()
                .map(|value| Arc::new(StringArray::from(vec![value.as_deref(); rows])) as ArrayRef),
        );
        RecordBatch::try_new(schema.clone(), columns)
            .map_err(|err| SinkError::permanent(format!("cannot add the key columns: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};

    fn patterns(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(name, pattern)| (name.to_string(), pattern.to_string()))
            .collect()
    }

    #[test]
    fn a_pattern_needs_exactly_one_capture_group() {
        let err = KeyColumns::parse(&patterns(&[("dt", r"\d{4}")])).unwrap_err();
        assert_eq!(err.0, "dt");
        assert!(err.1.contains("exactly one capture group"), "{}", err.1);
        let err = KeyColumns::parse(&patterns(&[("dt", r"(\d{4})-(\d{2})")])).unwrap_err();
        assert!(err.1.contains("it has 2"), "{}", err.1);
        let err = KeyColumns::parse(&patterns(&[("dt", r"(unclosed")])).unwrap_err();
        assert!(err.1.contains("not a valid pattern"), "{}", err.1);
        KeyColumns::parse(&patterns(&[("dt", r"dt=([^/]+)/")])).unwrap();
    }

    #[test]
    fn values_come_from_the_key_and_are_null_when_it_does_not_match() {
        let columns = KeyColumns::parse(&patterns(&[
            ("dt", r"dt=(\d{4}-\d{2}-\d{2})/"),
            ("vendor", r"^vendors/([^/]+)/"),
        ]))
        .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let extended = columns.extend_schema(&schema).unwrap();
        assert_eq!(
            extended
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
            ["n", "dt", "vendor"]
        );
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))])
                .unwrap();
        let values = columns.values_for("vendors/acme/dt=2026-12-01/part-1.csv");
        let out = values.append_to(batch.clone(), &extended).unwrap();
        let dt = out
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(dt.value(0), "2026-12-01");
        let vendor = out
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(vendor.value(1), "acme");

        let out = columns
            .values_for("elsewhere/part-1.csv")
            .append_to(batch, &extended)
            .unwrap();
        assert_eq!(out.column(1).null_count(), 2);
    }

    #[test]
    fn a_file_column_named_like_a_key_column_is_a_schema_error() {
        let columns = KeyColumns::parse(&patterns(&[("dt", r"dt=([^/]+)")])).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("dt", DataType::Utf8, true)]));
        let err = columns.extend_schema(&schema).unwrap_err();
        assert_eq!(err.class, crate::sink::SinkFailure::Schema);
        assert!(err.detail.contains("dt"), "{}", err.detail);
    }
}
