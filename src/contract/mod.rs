//! Vendor data contracts: a stage between decoding and the sinks that holds
//! every batch of a file to its route's contract (`[routes.contract]`).
//!
//! ```text
//! decoder ──batches──► FileContract::apply ──good rows──► route's sinks
//!                                 └──────────bad rows───► quarantine sink
//! ```
//!
//! The file's columns are matched to the route's `schema` by name (exactly,
//! else ignoring ASCII case) and cast to the declared types; what does not
//! fit is handled by `schema_mode`. Then each row is checked (declared
//! not-null columns, the route's `checks`); a row that fails is rejected
//! with the whole file, or quarantined with its reason (`bad_rows`). The
//! file's [`ContractOutcome`] goes into the log line, the sinks' lineage
//! and the metrics.
//!
//! CSV files of a route with a contract are decoded with the declared
//! columns as text, so a value that does not parse is one bad row (or one
//! rescued value), not a dead-lettered file.

mod checks;
pub mod config;
mod outcome;

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, StringArray, new_null_array};
use arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::IngestError;
use crate::text::excerpt;
use checks::{CompiledCheck, SeenValues, ValueKeys};
pub use config::{BadRows, ColumnCheck, ContractConfig, Literal, SchemaMode};
pub use outcome::{ContractOutcome, Verdict};

/// The column that holds, as a JSON object, what `schema_mode = "rescue"`
/// kept out of the declared columns.
pub const RESCUED_COLUMN: &str = "_rescued";

/// The most bytes of one row's values quoted in a reason or dead letter.
const RECORD_EXCERPT_BYTES: usize = 300;

/// A route's contract, compiled against its schema.
#[derive(Debug)]
pub struct Contract {
    /// The route's name, for messages.
    pub route: String,
    pub config: ContractConfig,
    /// The route's schema: what the contract holds files to.
    pub declared: SchemaRef,
    checks: Vec<CompiledCheck>,
}

impl std::fmt::Debug for CompiledCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledCheck")
            .field("column", &self.name)
            .finish_non_exhaustive()
    }
}

/// A contract that does not compile: `field` is the key under the
/// route's `contract` (`checks[2].min`), the message names the column.
#[derive(Debug)]
pub struct ContractError {
    pub field: String,
    pub message: String,
}

impl Contract {
    /// Compiles `config` against the route's schema (`declared`); `route`
    /// names the route in errors.
    pub fn compile(
        route: &str,
        declared: Option<&SchemaRef>,
        config: &ContractConfig,
    ) -> Result<Contract, ContractError> {
        let error = |field: &str, message: String| ContractError {
            field: field.to_owned(),
            message: format!("route `{route}`: {message}"),
        };
        let Some(declared) = declared else {
            return Err(error(
                "",
                "a contract holds files to the route's `schema`; declare the columns there".into(),
            ));
        };
        if config.schema_mode == SchemaMode::Rescue
            && declared.field_with_name(RESCUED_COLUMN).is_ok()
        {
            return Err(error(
                "schema_mode",
                format!("`rescue` adds the column `{RESCUED_COLUMN}`; the schema declares it too"),
            ));
        }
        if config.reported_rows == 0 || config.reported_rows > config::MAX_REPORTED_ROWS {
            return Err(error(
                "reported_rows",
                format!(
                    "{} is out of range 1..={}",
                    config.reported_rows,
                    config::MAX_REPORTED_ROWS
                ),
            ));
        }
        let mut checked = BTreeSet::new();
        let mut checks = Vec::with_capacity(config.checks.len());
        for (index, check) in config.checks.iter().enumerate() {
            let field = format!("checks[{index}]");
            let name = &check.column;
            let Some(column) = declared.fields().iter().position(|f| f.name() == name) else {
                let known: Vec<&str> = declared
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                return Err(error(
                    &field,
                    format!(
                        "column `{name}` is not in the route's schema ({})",
                        known.join(", ")
                    ),
                ));
            };
            if !checked.insert(name.as_str()) {
                return Err(error(
                    &field,
                    format!("column `{name}` has two checks; put its rules in one"),
                ));
            }
            let data_type = declared.field(column).data_type();
            let compiled = CompiledCheck::compile(check, column, data_type)
                .map_err(|message| error(&field, format!("column `{name}`: {message}")))?;
            checks.push(compiled);
        }
        Ok(Contract {
            route: route.to_owned(),
            config: config.clone(),
            declared: declared.clone(),
            checks,
        })
    }

    pub fn schema_mode(&self) -> SchemaMode {
        self.config.schema_mode
    }

    /// The declared columns' names, which a CSV file's decoder reads as
    /// text for [`FileContract`] to parse.
    pub fn declared_names(&self) -> Vec<String> {
        self.declared
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// Lines describing the contract, for `check-config`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "schema_mode {}, bad rows: {}",
            self.config.schema_mode.as_str(),
            match (&self.config.bad_rows, &self.config.quarantine_sink) {
                (BadRows::Quarantine, Some(sink)) => format!("quarantined to sink `{sink}`"),
                _ => format!(
                    "the file is rejected (dead letter quotes up to {} rows)",
                    self.config.reported_rows
                ),
            }
        )];
        for field in self.declared.fields() {
            let mut rules = Vec::new();
            if !field.is_nullable() {
                rules.push("not null".to_owned());
            }
            if let Some(check) = self
                .config
                .checks
                .iter()
                .find(|c| c.column == *field.name())
            {
                rules.push(check.describe());
            }
            let rules = if rules.is_empty() {
                String::new()
            } else {
                format!(": {}", rules.join(", "))
            };
            lines.push(format!(
                "column {} {}{rules}",
                field.name(),
                field.data_type()
            ));
        }
        if self.config.schema_mode == SchemaMode::Rescue {
            lines.push(format!(
                "column {RESCUED_COLUMN} Utf8: JSON of new columns and values that do not parse"
            ));
        }
        lines
    }
}

/// The schema of quarantined rows, whatever the file's columns: each bad
/// row as the file held it (JSON, values as text), its row number in the
/// file and the reason. The sink's lineage says which file.
pub fn quarantine_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        // Signed: Delta tables have no unsigned types.
        Field::new("source_row", DataType::Int64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
    ]))
}

/// How a file's columns map onto the route's schema, decided from its
/// first batch (every batch of a file has the same columns).
struct ColumnPlan {
    /// For each declared column, its position in the file (`None`: absent).
    sources: Vec<Option<usize>>,
    /// The file's columns that the route does not declare.
    extra: Vec<usize>,
    /// What the sinks receive.
    output: SchemaRef,
}

/// One batch held to the contract.
pub struct Applied {
    /// The rows that keep the contract, in the output schema.
    pub good: Option<RecordBatch>,
    /// The rows that do not, in [`quarantine_schema`] (`bad_rows =
    /// "quarantine"`; under `reject` a bad row is an error instead).
    pub bad: Option<RecordBatch>,
}

/// One file held to its route's contract, batch by batch.
pub struct FileContract {
    contract: Arc<Contract>,
    uri: String,
    plan: Option<Arc<ColumnPlan>>,
    /// Per check (in order), the values a `unique` column held so far.
    seen: Vec<Option<SeenValues>>,
    outcome: ContractOutcome,
}

impl FileContract {
    pub fn new(contract: Arc<Contract>, uri: &str) -> FileContract {
        let seen = contract
            .checks
            .iter()
            .map(|check| {
                check
                    .unique
                    .then(|| SeenValues::new(contract.declared.field(check.column).data_type()))
            })
            .collect();
        let outcome = ContractOutcome::new(contract.schema_mode());
        FileContract {
            contract,
            uri: uri.to_owned(),
            plan: None,
            seen,
            outcome,
        }
    }

    /// The schema the sinks receive: the declared columns, then the new
    /// ones (`add_columns`) or `_rescued` (`rescue`).
    pub fn output_schema(&self) -> SchemaRef {
        match &self.plan {
            Some(plan) => plan.output.clone(),
            None => output_schema(&self.contract, &[]),
        }
    }

    /// The outcome so far; final once every batch was applied.
    pub fn outcome(&self) -> &ContractOutcome {
        &self.outcome
    }

    /// Ends the file. One that gave no batch (only a header) still has its
    /// columns held to the route's, from `decoded`, the decoder's schema
    /// (without columns for an empty file, which passes as it always has).
    pub fn finish(&mut self, decoded: &Schema) -> Result<(), IngestError> {
        if self.plan.is_none() && !decoded.fields().is_empty() {
            let plan = self.plan_columns(decoded)?;
            self.plan = Some(Arc::new(plan));
        }
        Ok(())
    }

    /// Marks the file rejected (its error is on its way to the DLQ).
    pub fn reject(&mut self) {
        self.outcome.verdict = Verdict::Rejected;
    }

    /// Holds one decoded batch to the contract. Errors: the file's columns
    /// do not fit (`schema_error`), or a row broke the contract under
    /// `bad_rows = "reject"` (`contract_violation`, quoting the first rows).
    ///
    /// In steps: the declared columns cast to their types, the route's
    /// checks, `unique` among the rows still good, the columns the route
    /// does not declare (per `schema_mode`), then the split into good and
    /// bad rows.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<Applied, IngestError> {
        if self.plan.is_none() {
            let plan = self.plan_columns(&batch.schema())?;
            self.plan = Some(Arc::new(plan));
        }
        let plan = self.plan.clone().expect("planned above");
        let rows_before = self.outcome.rows;
        let mut notes =
            RowNotes::new(batch, self.contract.schema_mode()).map_err(|err| self.internal(err))?;
        let mut columns = self.cast_declared(batch, &plan, &mut notes)?;
        for check in &self.contract.checks {
            let source = plan.sources[check.column];
            let shown = |row: usize| notes.shown(source, row);
            let mut found = Vec::new();
            check
                .run(&columns[check.column], &shown, &mut |row, reason| {
                    found.push((row, reason))
                })
                .map_err(|err| self.internal(err))?;
            for (row, reason) in found {
                notes.flag(row, reason);
            }
        }
        self.check_unique(&columns, &plan, &mut notes, rows_before)?;
        match self.contract.schema_mode() {
            SchemaMode::Strict => {}
            SchemaMode::AddColumns => {
                columns.extend(plan.extra.iter().map(|&index| batch.column(index).clone()));
            }
            SchemaMode::Rescue => {
                for &index in &plan.extra {
                    notes.rescue_column(batch, index);
                }
                columns.push(Arc::new(notes.rescued_json()));
            }
        }
        self.split(batch, &plan, columns, &notes)
    }

    /// The declared columns, cast to their types (a column the file lacks
    /// is all nulls). A value that does not parse is rescued (`rescue`) or
    /// makes its row bad; so does a null in a column declared not nullable.
    fn cast_declared(
        &self,
        batch: &RecordBatch,
        plan: &ColumnPlan,
        notes: &mut RowNotes,
    ) -> Result<Vec<ArrayRef>, IngestError> {
        let rows = batch.num_rows();
        let lenient = CastOptions {
            safe: true,
            ..Default::default()
        };
        let mut columns = Vec::with_capacity(plan.output.fields().len());
        for (field, source) in self.contract.declared.fields().iter().zip(&plan.sources) {
            let Some(source) = *source else {
                columns.push(new_null_array(field.data_type(), rows));
                continue;
            };
            let values = batch.column(source);
            let cast = if values.data_type() == field.data_type() {
                values.clone()
            } else {
                cast_with_options(values, field.data_type(), &lenient)
                    .map_err(|err| self.internal(err))?
            };
            // A cast only turns values into nulls: the same count, none failed.
            if cast.null_count() > values.null_count() {
                for row in (0..rows).filter(|&row| values.is_valid(row) && cast.is_null(row)) {
                    let value = notes.text(source, row);
                    if notes.rescuing {
                        notes.rescue(row, field.name(), value);
                    } else {
                        notes.flag(
                            row,
                            format!(
                                "`{}`: {value:?} is not a {} value",
                                field.name(),
                                field.data_type()
                            ),
                        );
                    }
                }
            }
            if !field.is_nullable() && cast.null_count() > 0 {
                for row in (0..rows).filter(|&row| cast.is_null(row)) {
                    notes.flag(
                        row,
                        format!(
                            "`{}` is null; the route's schema declares it not nullable",
                            field.name()
                        ),
                    );
                }
            }
            columns.push(cast);
        }
        Ok(columns)
    }

    /// The `unique` checks, on the rows no other rule flagged: a value an
    /// accepted row of the file held already makes the row bad, naming that
    /// row; a good row's values are taken.
    fn check_unique(
        &mut self,
        columns: &[ArrayRef],
        plan: &ColumnPlan,
        notes: &mut RowNotes,
        rows_before: u64,
    ) -> Result<(), IngestError> {
        let mut unique_keys: Vec<(usize, ValueKeys)> = Vec::new();
        for (index, check) in self.contract.checks.iter().enumerate() {
            if let Some(seen) = &self.seen[index] {
                let keys = seen
                    .keys(&columns[check.column])
                    .map_err(|err| self.internal(err))?;
                unique_keys.push((index, keys));
            }
        }
        if unique_keys.is_empty() {
            return Ok(());
        }
        let checks = &self.contract.checks;
        let repeats = |notes: &RowNotes, index: usize, row: usize, first: u64| {
            let check = &checks[index];
            let value = notes.shown(plan.sources[check.column], row);
            format!(
                "`{}`: {value} repeats row {first}; the column is unique",
                check.name
            )
        };
        for row in 0..notes.rows() {
            if notes.is_bad(row) {
                continue;
            }
            let file_row = rows_before + row as u64 + 1;
            if let [(index, keys)] = unique_keys.as_mut_slice() {
                // One unique column (the usual case): one lookup per row.
                let seen = self.seen[*index].as_mut().expect("a unique check");
                if let Some(key) = keys[row].take()
                    && let Err(first) = seen.insert_new(key, file_row)
                {
                    let reason = repeats(notes, *index, row, first);
                    notes.flag(row, reason);
                }
                continue;
            }
            // Several: a row takes its values only if it repeats none.
            for (index, keys) in &unique_keys {
                if let Some(key) = &keys[row]
                    && let Some(first) = self.seen[*index].as_ref().and_then(|s| s.first(key))
                {
                    let reason = repeats(notes, *index, row, first);
                    notes.flag(row, reason);
                }
            }
            if !notes.is_bad(row) {
                for (index, keys) in &mut unique_keys {
                    if let (Some(key), Some(seen)) = (keys[row].take(), self.seen[*index].as_mut())
                    {
                        seen.insert(key, file_row);
                    }
                }
            }
        }
        Ok(())
    }

    /// Splits the batch's rows (`columns`, in the output's order) into the
    /// good ones and, in the quarantine schema, the bad ones; under
    /// `reject` a bad row is the file's error instead.
    fn split(
        &mut self,
        batch: &RecordBatch,
        plan: &ColumnPlan,
        columns: Vec<ArrayRef>,
        notes: &RowNotes,
    ) -> Result<Applied, IngestError> {
        let rows = batch.num_rows();
        let rows_before = self.outcome.rows;
        let bad_mask: BooleanArray = (0..rows).map(|row| Some(notes.is_bad(row))).collect();
        let bad_rows = bad_mask.true_count();
        self.outcome.rows += rows as u64;
        if bad_rows > 0 && self.contract.config.bad_rows == BadRows::Reject {
            self.reject();
            return Err(self.violation(batch, rows_before, &notes.reasons, bad_rows));
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        if bad_rows == 0 {
            let good = RecordBatch::try_new_with_options(plan.output.clone(), columns, &options)
                .map_err(|err| self.internal(err))?;
            self.accept(&good, 0);
            return Ok(Applied {
                good: (rows > 0).then_some(good),
                bad: None,
            });
        }
        // Every column nullable until the bad rows are gone: a declared
        // NOT NULL column holds nulls in exactly those rows.
        let lenient_schema = Arc::new(Schema::new(
            plan.output
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let all = RecordBatch::try_new_with_options(lenient_schema, columns, &options)
            .map_err(|err| self.internal(err))?;
        let good_mask = arrow::compute::not(&bad_mask).map_err(|err| self.internal(err))?;
        let good = filter_record_batch(&all, &good_mask).map_err(|err| self.internal(err))?;
        let good = RecordBatch::try_new_with_options(
            plan.output.clone(),
            good.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(good.num_rows())),
        )
        .map_err(|err| self.internal(err))?;
        self.accept(&good, bad_rows);
        let bad =
            quarantined(batch, rows_before, &notes.reasons).map_err(|err| self.internal(err))?;
        Ok(Applied {
            good: (good.num_rows() > 0).then_some(good),
            bad: Some(bad),
        })
    }

    /// Counts a batch's `good` rows and its `bad_rows` into the outcome.
    fn accept(&mut self, good: &RecordBatch, bad_rows: usize) {
        if self.contract.schema_mode() == SchemaMode::Rescue {
            let json = good.column(good.num_columns() - 1);
            self.outcome.rescued_rows += (json.len() - json.null_count()) as u64;
        }
        self.outcome.accepted_rows += good.num_rows() as u64;
        self.outcome.quarantined_rows += bad_rows as u64;
        if self.outcome.quarantined_rows > 0 {
            self.outcome.verdict = Verdict::Quarantined;
        }
    }

    /// Matches the file's columns to the declared ones; a mismatch that the
    /// mode does not allow is a schema error naming the columns.
    fn plan_columns(&mut self, file: &Schema) -> Result<ColumnPlan, IngestError> {
        let declared = &self.contract.declared;
        let mut taken = vec![false; file.fields().len()];
        let mut sources = Vec::with_capacity(declared.fields().len());
        for field in declared.fields() {
            let name = field.name();
            let exact = file.fields().iter().position(|f| f.name() == name);
            let source = exact.or_else(|| {
                let folded: Vec<usize> = (0..file.fields().len())
                    .filter(|&i| file.field(i).name().eq_ignore_ascii_case(name))
                    .collect();
                match folded.as_slice() {
                    [only] => Some(*only),
                    _ => None,
                }
            });
            if let Some(source) = source {
                taken[source] = true;
            }
            sources.push(source);
        }
        let extra: Vec<usize> = (0..file.fields().len()).filter(|&i| !taken[i]).collect();
        let extra_names: Vec<String> = extra
            .iter()
            .map(|&i| file.field(i).name().clone())
            .collect();
        let missing: Vec<&Field> = declared
            .fields()
            .iter()
            .zip(&sources)
            .filter(|(_, source)| source.is_none())
            .map(|(field, _)| field.as_ref())
            .collect();
        let quote = |names: &[String]| {
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let missing_names: Vec<String> = missing.iter().map(|f| f.name().clone()).collect();
        let mode = self.contract.schema_mode();
        let mut problems = Vec::new();
        if mode == SchemaMode::Strict && !extra_names.is_empty() {
            problems.push(format!(
                "the file has columns the route does not declare: {}",
                quote(&extra_names)
            ));
        }
        let required: Vec<String> = missing
            .iter()
            .filter(|f| mode == SchemaMode::Strict || !f.is_nullable())
            .map(|f| f.name().clone())
            .collect();
        if !required.is_empty() {
            problems.push(format!(
                "the file lacks declared columns: {}",
                quote(&required)
            ));
        }
        if !problems.is_empty() {
            self.reject();
            return Err(IngestError::Schema {
                uri: self.uri.clone(),
                detail: format!(
                    "route `{}` ({} schema): {}",
                    self.contract.route,
                    mode.as_str(),
                    problems.join("; ")
                ),
            });
        }
        match mode {
            SchemaMode::Strict => {}
            SchemaMode::AddColumns => self.outcome.columns_added = extra_names,
            SchemaMode::Rescue => self.outcome.columns_rescued = extra_names,
        }
        self.outcome.columns_missing = missing_names;
        let extra_fields: Vec<&Field> = extra.iter().map(|&i| file.field(i)).collect();
        let output = output_schema(&self.contract, &extra_fields);
        Ok(ColumnPlan {
            sources,
            extra,
            output,
        })
    }

    /// The error of a rejected file: the first bad rows with their reasons
    /// and values.
    fn violation(
        &self,
        batch: &RecordBatch,
        rows_before: u64,
        reasons: &[Vec<String>],
        bad_rows: usize,
    ) -> IngestError {
        let limit = self.contract.config.reported_rows;
        let first_bad: Vec<usize> = (0..reasons.len())
            .filter(|&row| !reasons[row].is_empty())
            .take(limit)
            .collect();
        let records = records_json(batch, &first_bad).unwrap_or_default();
        let quoted: Vec<String> = first_bad
            .iter()
            .enumerate()
            .map(|(index, &row)| {
                let record = records
                    .get(index)
                    .map(|r| excerpt(r, RECORD_EXCERPT_BYTES))
                    .unwrap_or_default();
                format!(
                    "row {}: {} {record}",
                    rows_before + row as u64 + 1,
                    reasons[row].join("; ")
                )
            })
            .collect();
        let more = if bad_rows > quoted.len() {
            format!(" (and {} more in the same batch)", bad_rows - quoted.len())
        } else {
            String::new()
        };
        IngestError::Contract {
            uri: self.uri.clone(),
            detail: format!(
                "route `{}` rejects the file (bad_rows = \"reject\"): {}{more}",
                self.contract.route,
                quoted.join(" | ")
            ),
        }
    }

    fn internal(&self, err: impl std::fmt::Display) -> IngestError {
        IngestError::Schema {
            uri: self.uri.clone(),
            detail: format!(
                "route `{}`: cannot apply its contract: {err}",
                self.contract.route
            ),
        }
    }
}

/// What one batch's rows have collected on their way through the
/// contract: why each is bad (none: good), and under `rescue` what each
/// keeps in `_rescued`. Values are shown as the file held them.
struct RowNotes<'a> {
    formatters: Vec<ArrayFormatter<'a>>,
    reasons: Vec<Vec<String>>,
    /// `schema_mode = "rescue"`.
    rescuing: bool,
    /// Empty unless rescuing.
    rescued: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl<'a> RowNotes<'a> {
    fn new(batch: &'a RecordBatch, mode: SchemaMode) -> Result<RowNotes<'a>, ArrowError> {
        let formatters = batch
            .columns()
            .iter()
            .map(|column| ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default()))
            .collect::<Result<_, _>>()?;
        let rows = batch.num_rows();
        let rescuing = mode == SchemaMode::Rescue;
        Ok(RowNotes {
            formatters,
            reasons: vec![Vec::new(); rows],
            rescuing,
            rescued: if rescuing {
                vec![serde_json::Map::new(); rows]
            } else {
                Vec::new()
            },
        })
    }

    fn rows(&self) -> usize {
        self.reasons.len()
    }

    /// The file's value in `column` (its position in the file), as text.
    fn text(&self, column: usize, row: usize) -> String {
        excerpt(
            &self.formatters[column].value(row).to_string(),
            RECORD_EXCERPT_BYTES,
        )
    }

    /// A declared column's value for a reason: quoted, or `null` for a
    /// column the file lacks.
    fn shown(&self, source: Option<usize>, row: usize) -> String {
        match source {
            Some(source) => format!("{:?}", self.text(source, row)),
            None => "null".to_owned(),
        }
    }

    fn flag(&mut self, row: usize, reason: String) {
        self.reasons[row].push(reason);
    }

    fn is_bad(&self, row: usize) -> bool {
        !self.reasons[row].is_empty()
    }

    fn rescue(&mut self, row: usize, column: &str, value: String) {
        self.rescued[row].insert(column.to_owned(), value.into());
    }

    /// Every value of the file's column `index` into `_rescued`.
    fn rescue_column(&mut self, batch: &RecordBatch, index: usize) {
        let name = batch.schema().field(index).name().clone();
        let values = batch.column(index);
        for row in (0..self.rows()).filter(|&row| values.is_valid(row)) {
            let value = self.text(index, row);
            self.rescue(row, &name, value);
        }
    }

    /// The `_rescued` column: each row's JSON object, null when empty.
    fn rescued_json(&self) -> StringArray {
        self.rescued
            .iter()
            .map(|values| {
                (!values.is_empty()).then(|| serde_json::Value::Object(values.clone()).to_string())
            })
            .collect()
    }
}

/// The declared fields, then `extra` (every one nullable: older rows lack
/// them) or `_rescued`.
fn output_schema(contract: &Contract, extra: &[&Field]) -> SchemaRef {
    let mut fields: Vec<Field> = contract
        .declared
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    match contract.schema_mode() {
        SchemaMode::Strict => {}
        SchemaMode::AddColumns => {
            fields.extend(extra.iter().map(|f| (*f).clone().with_nullable(true)));
        }
        SchemaMode::Rescue => fields.push(Field::new(RESCUED_COLUMN, DataType::Utf8, true)),
    }
    Arc::new(Schema::new(fields))
}

/// Each of `rows` of `batch` as a JSON object of its values as text
/// (nulls as null).
fn records_json(
    batch: &RecordBatch,
    rows: &[usize],
) -> Result<Vec<String>, arrow::error::ArrowError> {
    let schema = batch.schema();
    let formatters: Vec<ArrayFormatter> = batch
        .columns()
        .iter()
        .map(|column| ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default()))
        .collect::<Result<_, _>>()?;
    Ok(rows
        .iter()
        .map(|&row| {
            let mut record = serde_json::Map::new();
            for (index, field) in schema.fields().iter().enumerate() {
                let value = if batch.column(index).is_null(row) {
                    serde_json::Value::Null
                } else {
                    formatters[index].value(row).to_string().into()
                };
                record.insert(field.name().clone(), value);
            }
            serde_json::Value::Object(record).to_string()
        })
        .collect())
}

/// The bad rows of `batch` in [`quarantine_schema`].
fn quarantined(
    batch: &RecordBatch,
    rows_before: u64,
    reasons: &[Vec<String>],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let bad: Vec<usize> = (0..reasons.len())
        .filter(|&r| !reasons[r].is_empty())
        .collect();
    let records = records_json(batch, &bad)?;
    let source_row: Int64Array = bad
        .iter()
        .map(|&r| i64::try_from(rows_before + r as u64 + 1).unwrap_or(i64::MAX))
        .collect();
    let reason: StringArray = bad.iter().map(|&r| Some(reasons[r].join("; "))).collect();
    let record: StringArray = records.into_iter().map(Some).collect();
    RecordBatch::try_new(
        quarantine_schema(),
        vec![Arc::new(source_row), Arc::new(reason), Arc::new(record)],
    )
}

#[cfg(test)]
mod tests;
