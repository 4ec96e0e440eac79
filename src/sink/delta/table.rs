//! The Delta table a sink writes to: where it is, how to reach its
//! storage, creating it from the first file's schema, and checking every
//! later file's schema against it.

use std::collections::HashMap;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake::kernel::StructField;
use deltalake::kernel::engine::arrow_conversion::{TryFromArrow, TryFromKernel};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{DataType, StructType};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use tokio::sync::Mutex;
use url::Url;

use super::errors::delta_error;
use crate::config::AwsConfig;
use crate::sink::SinkError;

/// The table's location as a URL: `s3://` and `s3a://` as given, and a
/// local path (relative to the working directory) as `file://`, created
/// when missing.
pub fn table_url(table: &str) -> Result<Url, String> {
    if let Some((scheme, _)) = table.split_once("://") {
        return match scheme {
            "s3" | "s3a" | "file" => {
                let mut url = Url::parse(table).map_err(|err| format!("`{table}`: {err}"))?;
                if scheme != "file" && url.host_str().unwrap_or("").is_empty() {
                    return Err(format!("`{table}`: names no bucket"));
                }
                // A directory: delta-rs joins `_delta_log/` onto it.
                if !url.path().ends_with('/') {
                    url.set_path(&format!("{}/", url.path()));
                }
                Ok(url)
            }
            other => Err(format!(
                "`{table}`: the scheme `{other}` is not supported (a local path, s3:// or file://)"
            )),
        };
    }
    let path = std::path::absolute(table).map_err(|err| format!("`{table}`: {err}"))?;
    Url::from_directory_path(&path).map_err(|()| format!("`{table}`: not an absolute path"))
}

/// What object_store needs to reach S3 as the rest of the worker does:
/// the `[aws]` region and endpoint. Credentials come from the default
/// chain (environment, ECS task role, profile), as for the SDK clients.
pub fn storage_options(aws: &AwsConfig) -> HashMap<String, String> {
    let mut options = HashMap::new();
    if let Some(region) = &aws.region {
        options.insert("AWS_REGION".into(), region.clone());
    }
    if let Some(endpoint) = &aws.endpoint_url {
        options.insert("AWS_ENDPOINT_URL".into(), endpoint.clone());
        if endpoint.starts_with("http://") {
            options.insert("AWS_ALLOW_HTTP".into(), "true".into());
            // Emulators (LocalStack) close idle keep-alive connections
            // without notice, and object_store does not retry a request
            // that failed while being sent on one: keep none idle.
            options.insert("pool_max_idle_per_host".into(), "0".into());
        }
    }
    if aws.force_path_style {
        options.insert("AWS_VIRTUAL_HOSTED_STYLE_REQUEST".into(), "false".into());
    }
    options
}

/// One table, loaded once and brought up to date before each use.
pub struct TableHandle {
    url: Url,
    storage_options: HashMap<String, String>,
    partition_by: Vec<String>,
    /// The latest state this sink has read; `None` until the table exists.
    cached: Mutex<Option<DeltaTable>>,
}

impl TableHandle {
    pub fn new(
        url: Url,
        storage_options: HashMap<String, String>,
        partition_by: Vec<String>,
    ) -> TableHandle {
        TableHandle {
            url,
            storage_options,
            partition_by,
            cached: Mutex::new(None),
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The table at its latest version, or `None` when it does not exist
    /// yet. The returned table is a copy: refreshing it does not race with
    /// other users.
    pub async fn latest(&self) -> Result<Option<DeltaTable>, SinkError> {
        let mut cached = self.cached.lock().await;
        match cached.as_mut() {
            Some(table) => {
                table
                    .update_incremental(None)
                    .await
                    .map_err(|err| delta_error(&self.url, "read the log of", err))?;
            }
            None => {
                // A local table's directory is made when the table is
                // created; asking about one that is not there is "no table".
                if self.local_dir().is_some_and(|dir| !dir.exists()) {
                    return Ok(None);
                }
                let mut table = DeltaTableBuilder::from_url(self.url.clone())
                    .and_then(|builder| {
                        builder
                            .with_storage_options(self.storage_options.clone())
                            .build()
                    })
                    .map_err(|err| delta_error(&self.url, "open", err))?;
                match table.load().await {
                    Ok(()) => *cached = Some(table),
                    Err(DeltaTableError::NotATable(_)) => return Ok(None),
                    Err(err) => return Err(delta_error(&self.url, "load", err)),
                }
            }
        }
        Ok(cached.clone())
    }

    /// The table at its latest version, created with `schema` (and the
    /// configured partition columns) when it does not exist, and checked
    /// against `schema` when it does.
    pub async fn for_schema(&self, schema: &SchemaRef) -> Result<DeltaTable, SinkError> {
        let wanted = delta_schema(schema)?;
        let table = match self.latest().await? {
            Some(table) => table,
            None => {
                self.create(&wanted).await?;
                self.latest().await?.ok_or_else(|| {
                    SinkError::transient(format!(
                        "delta table {}: not found after creating it",
                        self.url
                    ))
                })?
            }
        };
        let snapshot = table
            .snapshot()
            .map_err(|err| delta_error(&self.url, "read", err))?;
        check_schema(&snapshot.schema(), &wanted)
            .map_err(|detail| SinkError::schema(format!("delta table {}: {detail}", self.url)))?;
        Ok(table)
    }

    /// [`Self::for_schema`] for a route with `schema_mode =
    /// "add_columns"`: the file's columns the table lacks are added to it
    /// (nullable; one metadata commit), and table columns the file lacks
    /// are left to be filled with nulls. Shared columns must still have
    /// the same type. Returns the table and its columns in Arrow terms,
    /// which the rows are conformed to (see [`fill_missing_columns`]).
    pub async fn for_schema_adding_columns(
        &self,
        schema: &SchemaRef,
    ) -> Result<(DeltaTable, SchemaRef), SinkError> {
        let wanted = delta_schema(schema)?;
        let mut table = match self.latest().await? {
            Some(table) => table,
            None => self.for_schema(schema).await?,
        };
        let current = self.table_schema(&table)?;
        check_shared_types(&current, &wanted)
            .map_err(|detail| SinkError::schema(format!("delta table {}: {detail}", self.url)))?;
        let new: Vec<StructField> = wanted
            .fields()
            .filter(|field| current.field(field.name()).is_none())
            .map(|field| StructField::nullable(field.name(), field.data_type().clone()))
            .collect();
        if !new.is_empty() {
            let names: Vec<&str> = new.iter().map(|f| f.name().as_str()).collect();
            tracing::info!(table = %self.url, columns = ?names, "adding the file's new columns to the delta table");
            let added = table.clone().add_columns().with_fields(new.clone()).await;
            table = self.latest().await?.ok_or_else(|| {
                SinkError::transient(format!(
                    "delta table {}: gone while adding columns",
                    self.url
                ))
            })?;
            if let Err(err) = added {
                // Another worker may have added them first: fine if all are there now.
                let now = self.table_schema(&table)?;
                if new.iter().any(|field| now.field(field.name()).is_none()) {
                    return Err(delta_error(&self.url, "add columns to", err));
                }
            }
        }
        let arrow = arrow::datatypes::Schema::try_from_kernel(&self.table_schema(&table)?)
            .map_err(|err| SinkError::schema(format!("delta table {}: {err}", self.url)))?;
        Ok((table, Arc::new(arrow)))
    }

    fn table_schema(&self, table: &DeltaTable) -> Result<StructType, SinkError> {
        let snapshot = table
            .snapshot()
            .map_err(|err| delta_error(&self.url, "read", err))?;
        Ok(snapshot.schema().as_ref().clone())
    }

    /// The table's directory when it is on a local path.
    fn local_dir(&self) -> Option<std::path::PathBuf> {
        (self.url.scheme() == "file")
            .then(|| self.url.to_file_path().ok())
            .flatten()
    }

    /// Creates the table; when another worker created it first, that one
    /// stands (its schema is then checked like any existing table's).
    async fn create(&self, schema: &StructType) -> Result<(), SinkError> {
        for column in &self.partition_by {
            if schema.field(column).is_none() {
                return Err(SinkError::schema(format!(
                    "delta table {}: cannot partition by `{column}`: the file has no such column",
                    self.url
                )));
            }
        }
        if let Some(dir) = self.local_dir() {
            std::fs::create_dir_all(&dir).map_err(|err| {
                SinkError::unavailable(
                    format!("{:?}", err.kind()),
                    format!(
                        "delta table {}: cannot create {}: {err}",
                        self.url,
                        dir.display()
                    ),
                )
            })?;
        }
        let created = CreateBuilder::new()
            .with_location(self.url.as_str())
            .with_storage_options(self.storage_options.clone())
            .with_columns(schema.fields().cloned())
            .with_partition_columns(self.partition_by.clone())
            .with_save_mode(SaveMode::Ignore)
            // Version 0 is written only if absent: a lost race is an
            // error here, and the winner's table is loaded instead.
            .with_commit_properties(CommitProperties::default().with_max_retries(0))
            .await;
        match created {
            Ok(_) => {
                tracing::info!(table = %self.url, partition_by = ?self.partition_by, "created the delta table");
                Ok(())
            }
            Err(err) if lost_creation_race(&err) => Ok(()),
            Err(err) => Err(delta_error(&self.url, "create", err)),
        }
    }
}

/// Another writer committed version 0 between our check and our create.
fn lost_creation_race(err: &DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    matches!(
        err,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: TransactionError::VersionAlreadyExists(_)
                    | TransactionError::CommitConflict(_)
                    | TransactionError::MaxCommitAttempts(_)
            }
    )
}

/// `schema` as Delta types; a column Delta cannot store is a schema error.
pub fn delta_schema(schema: &SchemaRef) -> Result<StructType, SinkError> {
    StructType::try_from_arrow(schema.as_ref())
        .map_err(|err| SinkError::schema(format!("a Delta table cannot hold these columns: {err}")))
}

/// The columns `file` shares with `table` have the same Delta type; the
/// error names each that does not.
fn check_shared_types(table: &StructType, file: &StructType) -> Result<(), String> {
    let retyped: Vec<String> = file
        .fields()
        .filter_map(|field| {
            let in_table = table.field(field.name())?;
            (in_table.data_type() != field.data_type()).then(|| {
                format!(
                    "{} (table {}, file {})",
                    field.name(),
                    type_name(in_table.data_type()),
                    type_name(field.data_type())
                )
            })
        })
        .collect();
    if retyped.is_empty() {
        Ok(())
    } else {
        Err(format!("columns of another type: {}", retyped.join(", ")))
    }
}

/// `batch` with every column of `table` (matched by name): the table's
/// columns the batch lacks are all nulls. A table column that is not
/// nullable stays missing, for the writer to refuse naming it.
pub fn fill_missing_columns(
    batch: RecordBatch,
    table: &SchemaRef,
) -> Result<RecordBatch, SinkError> {
    if table
        .fields()
        .iter()
        .all(|field| batch.column_by_name(field.name()).is_some())
    {
        return Ok(batch);
    }
    let mut fields = Vec::with_capacity(table.fields().len());
    let mut columns = Vec::with_capacity(table.fields().len());
    for field in table.fields() {
        match batch.schema().field_with_name(field.name()) {
            Ok(present) => {
                fields.push(present.clone());
                columns.push(batch.column_by_name(field.name()).expect("present").clone());
            }
            Err(_) if field.is_nullable() => {
                fields.push(field.as_ref().clone());
                columns.push(arrow::array::new_null_array(
                    field.data_type(),
                    batch.num_rows(),
                ));
            }
            Err(_) => {}
        }
    }
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
        .map_err(|err| SinkError::permanent(format!("fill the table's missing columns: {err}")))
}

/// Whether a file with columns `file` can be appended to a table with
/// columns `table`: the same names and Delta types. Order does not matter
/// (columns are matched by name); nullability is checked row by row when
/// the rows are written. The error names every column that differs.
pub fn check_schema(table: &StructType, file: &StructType) -> Result<(), String> {
    let mut problems = Vec::new();
    let extra: Vec<&str> = file
        .fields()
        .filter(|field| table.field(field.name()).is_none())
        .map(|field| field.name().as_str())
        .collect();
    if !extra.is_empty() {
        problems.push(format!("columns not in the table: {}", extra.join(", ")));
    }
    let missing: Vec<&str> = table
        .fields()
        .filter(|field| file.field(field.name()).is_none())
        .map(|field| field.name().as_str())
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "table columns missing from the file: {}",
            missing.join(", ")
        ));
    }
    if let Err(retyped) = check_shared_types(table, file) {
        problems.push(retyped);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the file's columns do not match the table's: {}",
            problems.join("; ")
        ))
    }
}

fn type_name(data_type: &DataType) -> String {
    serde_json::to_value(data_type)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{data_type:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::datatypes::{DataType as ArrowType, Field, Schema};

    fn schema(fields: &[(&str, ArrowType)]) -> StructType {
        let schema = Arc::new(Schema::new(
            fields
                .iter()
                .map(|(name, data_type)| Field::new(*name, data_type.clone(), true))
                .collect::<Vec<_>>(),
        ));
        delta_schema(&schema).unwrap()
    }

    #[test]
    fn matching_columns_in_another_order_fit() {
        let table = schema(&[("id", ArrowType::Int64), ("name", ArrowType::Utf8)]);
        let file = schema(&[("name", ArrowType::Utf8), ("id", ArrowType::Int64)]);
        check_schema(&table, &file).unwrap();
    }

    #[test]
    fn every_differing_column_is_named() {
        let table = schema(&[
            ("id", ArrowType::Int64),
            ("name", ArrowType::Utf8),
            ("gone", ArrowType::Utf8),
        ]);
        let file = schema(&[
            ("id", ArrowType::Utf8),
            ("name", ArrowType::Utf8),
            ("new", ArrowType::Float64),
        ]);
        let err = check_schema(&table, &file).unwrap_err();
        assert!(err.contains("columns not in the table: new"), "{err}");
        assert!(err.contains("missing from the file: gone"), "{err}");
        assert!(err.contains("id (table long, file string)"), "{err}");
    }

    #[test]
    fn table_locations_become_urls() {
        assert_eq!(
            table_url("s3://lake/tables/sales").unwrap().as_str(),
            "s3://lake/tables/sales/"
        );
        assert!(table_url("s3:///no-bucket").is_err());
        assert!(
            table_url("gs://lake/t")
                .unwrap_err()
                .contains("not supported")
        );
        let local = table_url("relative/table").unwrap();
        assert_eq!(local.scheme(), "file");
        assert!(local.path().ends_with("/relative/table/"), "{local}");
    }

    #[test]
    fn an_http_endpoint_is_allowed_and_keeps_no_idle_connections() {
        let aws = AwsConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some("http://127.0.0.1:4566".into()),
            force_path_style: true,
            expected_bucket_owner: None,
        };
        let options = storage_options(&aws);
        assert_eq!(options["AWS_ALLOW_HTTP"], "true");
        assert_eq!(options["pool_max_idle_per_host"], "0");
        assert_eq!(options["AWS_ENDPOINT_URL"], "http://127.0.0.1:4566");
        let options = storage_options(&AwsConfig::default());
        assert!(options.is_empty());
    }
}
