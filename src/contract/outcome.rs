//! What a route's contract made of one file: how many rows landed, how
//! many were quarantined, which columns drifted. Logged with the file,
//! recorded in the sinks' lineage, counted in metrics per route.

use serde::Serialize;

use super::config::SchemaMode;

/// The file's outcome under its route's contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every row kept the contract.
    Accepted,
    /// Some rows broke it and went to the quarantine sink; the rest landed.
    Quarantined,
    /// The file was dead-lettered: a bad row under `bad_rows = "reject"`,
    /// or columns that `schema_mode = "strict"` does not allow.
    Rejected,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Quarantined => "quarantined",
            Verdict::Rejected => "rejected",
        }
    }
}

/// One file's outcome, as recorded in the sinks' lineage (JSON) and logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContractOutcome {
    pub verdict: Verdict,
    pub schema_mode: SchemaMode,
    /// Rows the file holds: `accepted_rows + quarantined_rows`.
    pub rows: u64,
    pub accepted_rows: u64,
    pub quarantined_rows: u64,
    /// Accepted rows whose `_rescued` column holds something.
    pub rescued_rows: u64,
    /// Columns the route does not declare, landed as new columns
    /// (`add_columns`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns_added: Vec<String>,
    /// Columns the route does not declare, kept in `_rescued` (`rescue`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns_rescued: Vec<String>,
    /// Declared columns the file lacks, filled with nulls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns_missing: Vec<String>,
}

impl ContractOutcome {
    pub fn new(schema_mode: SchemaMode) -> ContractOutcome {
        ContractOutcome {
            verdict: Verdict::Accepted,
            schema_mode,
            rows: 0,
            accepted_rows: 0,
            quarantined_rows: 0,
            rescued_rows: 0,
            columns_added: Vec::new(),
            columns_rescued: Vec::new(),
            columns_missing: Vec::new(),
        }
    }

    /// Whether the file's columns differ from the route's.
    pub fn drifted(&self) -> bool {
        !(self.columns_added.is_empty()
            && self.columns_rescued.is_empty()
            && self.columns_missing.is_empty())
    }

    /// The outcome as one line of JSON, for lineage.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }
}
