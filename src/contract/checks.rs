//! One column's checks, compiled against the column's declared type: the
//! config's literals parsed once, the regex compiled once.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Scalar, StringArray};
use arrow::compute::kernels::cmp;
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use regex::Regex;

use super::config::{ColumnCheck, Literal};

pub(super) struct CompiledCheck {
    /// The column's position in the route's schema.
    pub(super) column: usize,
    pub(super) name: String,
    not_null: bool,
    /// The allowed values, in the column's type.
    one_of: Option<(ArrayRef, String)>,
    min: Option<(ArrayRef, String)>,
    max: Option<(ArrayRef, String)>,
    regex: Option<(Regex, String)>,
    pub(super) unique: bool,
}

/// Parses `literals` as `data_type`; the error names the first that does
/// not parse.
fn parse_literals(literals: &[Literal], data_type: &DataType) -> Result<ArrayRef, String> {
    let text: StringArray = literals.iter().map(|l| Some(l.text())).collect();
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(&text, data_type, &strict).map_err(|_| {
        // Find the culprit for the message.
        let bad = literals
            .iter()
            .find(|literal| {
                let one = StringArray::from(vec![literal.text()]);
                cast_with_options(&one, data_type, &strict).is_err()
            })
            .map_or_else(String::new, Literal::to_string);
        format!("{bad} is not a {data_type} value")
    })
}

impl CompiledCheck {
    /// `column` is the check's column's position in the route's schema,
    /// `data_type` its type. Errors say which rule is wrong (the caller
    /// names the route and the column).
    pub(super) fn compile(
        check: &ColumnCheck,
        column: usize,
        data_type: &DataType,
    ) -> Result<CompiledCheck, String> {
        let rules = check.describe();
        if rules.is_empty() {
            return Err("names no rule (not_null, one_of, min, max, regex, unique)".into());
        }
        let one_of = match &check.one_of {
            Some(values) if values.is_empty() => {
                return Err("one_of: lists no value".into());
            }
            Some(values) => {
                let parsed = parse_literals(values, data_type)
                    .map_err(|message| format!("one_of: {message}"))?;
                let shown: Vec<String> = values.iter().map(Literal::to_string).collect();
                Some((parsed, shown.join(", ")))
            }
            None => None,
        };
        let bound = |name: &str, literal: &Option<Literal>| -> Result<_, String> {
            let Some(literal) = literal else {
                return Ok(None);
            };
            if !is_ordered(data_type) {
                return Err(format!(
                    "{name}: a {data_type} column has no order; min and max are for numbers, dates and times"
                ));
            }
            let parsed = parse_literals(std::slice::from_ref(literal), data_type)
                .map_err(|message| format!("{name}: {message}"))?;
            Ok(Some((parsed, literal.to_string())))
        };
        let min = bound("min", &check.min)?;
        let max = bound("max", &check.max)?;
        if let (Some((min, min_text)), Some((max, max_text))) = (&min, &max)
            && cmp::gt(&Scalar::new(min), &Scalar::new(max))
                .map_err(|err| err.to_string())?
                .value(0)
        {
            return Err(format!("min {min_text} is above max {max_text}"));
        }
        let regex = match &check.regex {
            Some(_) if !matches!(data_type, DataType::Utf8 | DataType::LargeUtf8) => {
                return Err(format!(
                    "regex: the column is {data_type}; a regex checks text columns"
                ));
            }
            Some(pattern) => {
                // The whole value must match, as users read `^…$` into a
                // pattern written for one field.
                let whole = Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|err| format!("regex: {err}"))?;
                Some((whole, pattern.clone()))
            }
            None => None,
        };
        if check.unique {
            RowConverter::new(vec![SortField::new(data_type.clone())])
                .map_err(|err| format!("unique: {err}"))?;
        }
        Ok(CompiledCheck {
            column,
            name: check.column.clone(),
            not_null: check.not_null,
            one_of,
            min,
            max,
            regex,
            unique: check.unique,
        })
    }

    /// Every rule but `unique` (which needs the file's earlier rows) on
    /// `values`, the column conformed to its type: `flag(row, reason)` for
    /// each failure.
    pub(super) fn run(
        &self,
        values: &ArrayRef,
        text: &dyn Fn(usize) -> String,
        flag: &mut dyn FnMut(usize, String),
    ) -> Result<(), arrow::error::ArrowError> {
        let name = &self.name;
        if self.not_null {
            for row in (0..values.len()).filter(|row| values.is_null(*row)) {
                flag(row, format!("`{name}` is null"));
            }
        }
        if let Some((allowed, shown)) = &self.one_of {
            let mut any = BooleanArray::from(vec![false; values.len()]);
            for index in 0..allowed.len() {
                let equal = cmp::eq(values, &Scalar::new(allowed.slice(index, 1)))?;
                any = arrow::compute::or(&any, &equal)?;
            }
            for row in 0..values.len() {
                if values.is_valid(row) && !any.value(row) {
                    flag(
                        row,
                        format!("`{name}`: {} is not one of [{shown}]", text(row)),
                    );
                }
            }
        }
        if let Some((min, shown)) = &self.min {
            let below = cmp::lt(values, &Scalar::new(min))?;
            for row in 0..values.len() {
                if below.is_valid(row) && below.value(row) {
                    flag(row, format!("`{name}`: {} is below min {shown}", text(row)));
                }
            }
        }
        if let Some((max, shown)) = &self.max {
            let above = cmp::gt(values, &Scalar::new(max))?;
            for row in 0..values.len() {
                if above.is_valid(row) && above.value(row) {
                    flag(row, format!("`{name}`: {} is above max {shown}", text(row)));
                }
            }
        }
        if let Some((regex, pattern)) = &self.regex {
            let utf8 = arrow::compute::cast(values, &DataType::Utf8)?;
            let strings = utf8.as_string::<i32>();
            for row in 0..strings.len() {
                if strings.is_valid(row) && !regex.is_match(strings.value(row)) {
                    flag(
                        row,
                        format!("`{name}`: {} does not match /{pattern}/", text(row)),
                    );
                }
            }
        }
        Ok(())
    }
}

/// One batch's values of a column as [`ValueKey`]s, `None` for nulls
/// (see [`SeenValues::keys`]).
pub(super) type ValueKeys = Vec<Option<ValueKey>>;

/// A value in Arrow's row format (comparable bytes): up to 16 bytes held
/// inline (integers, dates, timestamps, short text), longer ones boxed, so
/// the common keys cost no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum ValueKey {
    Inline { bytes: [u8; 16], len: u8 },
    Boxed(Box<[u8]>),
}

impl ValueKey {
    fn new(bytes: &[u8]) -> ValueKey {
        if bytes.len() <= 16 {
            let mut inline = [0u8; 16];
            inline[..bytes.len()].copy_from_slice(bytes);
            ValueKey::Inline {
                bytes: inline,
                len: bytes.len() as u8,
            }
        } else {
            ValueKey::Boxed(bytes.into())
        }
    }
}

/// The values a `unique` column held in the file's accepted rows so far,
/// each with the row (numbered in the file) that held it first. Memory
/// grows with the distinct values of the file: the price of the check.
pub(super) struct SeenValues {
    converter: RowConverter,
    /// foldhash, not std's SipHash: the check hashes every row of a file,
    /// and SipHash made it the stage's main cost.
    first_row: HashMap<ValueKey, u64, foldhash::fast::RandomState>,
}

impl SeenValues {
    pub(super) fn new(data_type: &DataType) -> SeenValues {
        SeenValues {
            converter: RowConverter::new(vec![SortField::new(data_type.clone())])
                .expect("checked when the contract was compiled"),
            first_row: HashMap::default(),
        }
    }

    /// Each value of `values` as a key (`None` for nulls).
    pub(super) fn keys(&self, values: &ArrayRef) -> Result<ValueKeys, arrow::error::ArrowError> {
        let rows = self
            .converter
            .convert_columns(std::slice::from_ref(values))?;
        Ok((0..values.len())
            .map(|row| {
                values
                    .is_valid(row)
                    .then(|| ValueKey::new(rows.row(row).as_ref()))
            })
            .collect())
    }

    /// The row that first held `key`, if one did.
    pub(super) fn first(&self, key: &ValueKey) -> Option<u64> {
        self.first_row.get(key).copied()
    }

    pub(super) fn insert(&mut self, key: ValueKey, row: u64) {
        self.first_row.entry(key).or_insert(row);
    }

    /// Records `key` as first held by `row`, in one lookup; or the row that
    /// held it first.
    pub(super) fn insert_new(&mut self, key: ValueKey, row: u64) -> Result<(), u64> {
        match self.first_row.entry(key) {
            std::collections::hash_map::Entry::Occupied(first) => Err(*first.get()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(row);
                Ok(())
            }
        }
    }
}

/// Types `min` and `max` compare.
fn is_ordered(data_type: &DataType) -> bool {
    data_type.is_numeric()
        || matches!(
            data_type,
            DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(..)
                | DataType::Time32(_)
                | DataType::Time64(_)
                | DataType::Duration(_)
        )
}
