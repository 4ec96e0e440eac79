//! A route's data contract as written in the config (`[routes.contract]`):
//! how a file's columns must fit the route's `schema`, the checks on its
//! values, and what happens to the rows that fail them.

use serde::{Deserialize, Serialize};

/// `[routes.contract]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractConfig {
    /// What a file whose columns differ from the route's `schema` does.
    #[serde(default)]
    pub schema_mode: SchemaMode,
    /// Checks on the values of the route's columns, one entry per column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<ColumnCheck>,
    /// What happens to the rows that break the contract.
    #[serde(default)]
    pub bad_rows: BadRows,
    /// The sink that quarantined rows land in (`bad_rows = "quarantine"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_sink: Option<String>,
    /// The most offending rows a rejected file's dead letter quotes.
    #[serde(default = "default_reported_rows")]
    pub reported_rows: usize,
}

/// The most `reported_rows` may be: each quoted row takes up to a few
/// hundred bytes, and a dead letter's error is cut at 8 KiB.
pub const MAX_REPORTED_ROWS: usize = 20;

fn default_reported_rows() -> usize {
    10
}

/// What a file whose columns differ from the route's `schema` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaMode {
    /// A column the route does not declare, or a declared one the file
    /// lacks: the file is dead-lettered as `schema_error`, naming them.
    #[default]
    Strict,
    /// New columns land too (the sink adds them to its table where it has
    /// one); declared columns the file lacks are filled with nulls.
    AddColumns,
    /// New columns, and values that do not parse as their column's type,
    /// go into the `_rescued` JSON column; declared columns the file lacks
    /// are filled with nulls.
    Rescue,
}

impl SchemaMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaMode::Strict => "strict",
            SchemaMode::AddColumns => "add_columns",
            SchemaMode::Rescue => "rescue",
        }
    }
}

/// What happens to the rows that break the contract.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRows {
    /// The whole file is dead-lettered (`contract_violation`), quoting the
    /// first offending rows.
    #[default]
    Reject,
    /// Bad rows go to `quarantine_sink`, each with its reason; the good
    /// rows land as usual.
    Quarantine,
}

impl BadRows {
    pub fn as_str(self) -> &'static str {
        match self {
            BadRows::Reject => "reject",
            BadRows::Quarantine => "quarantine",
        }
    }
}

/// The checks on one column, e.g.
/// `{ column = "status", not_null = true, one_of = ["new", "shipped"] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnCheck {
    pub column: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub not_null: bool,
    /// The only values allowed (nulls pass unless `not_null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Literal>>,
    /// Inclusive bounds, in the column's type (numbers, dates, times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Literal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Literal>,
    /// A regular expression the whole value must match (text columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// No two rows of one file hold the same value (nulls excepted).
    #[serde(default, skip_serializing_if = "is_false")]
    pub unique: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// A value written in the config: a number, a boolean or text. It is
/// parsed as the column's type when the contract is compiled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Literal {
    /// The value as text, as a CSV file would hold it.
    pub fn text(&self) -> String {
        match self {
            Literal::Bool(value) => value.to_string(),
            Literal::Int(value) => value.to_string(),
            Literal::Float(value) => value.to_string(),
            Literal::Text(value) => value.clone(),
        }
    }
}

impl std::fmt::Display for Literal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Literal::Text(value) => write!(f, "{value:?}"),
            other => f.write_str(&other.text()),
        }
    }
}

impl ColumnCheck {
    /// The rules of this check, for `check-config` and messages.
    pub fn describe(&self) -> String {
        let mut rules = Vec::new();
        if self.not_null {
            rules.push("not null".to_owned());
        }
        if let Some(values) = &self.one_of {
            let values: Vec<String> = values.iter().map(Literal::to_string).collect();
            rules.push(format!("one of [{}]", values.join(", ")));
        }
        if let Some(min) = &self.min {
            rules.push(format!(">= {min}"));
        }
        if let Some(max) = &self.max {
            rules.push(format!("<= {max}"));
        }
        if let Some(regex) = &self.regex {
            rules.push(format!("matches /{regex}/"));
        }
        if self.unique {
            rules.push("unique in the file".to_owned());
        }
        rules.join(", ")
    }
}
