//! The target table: its name quoted for SQL, the check of a file's Arrow
//! schema against the table's columns (creating the table first when
//! asked), and the resulting COPY plan, cached per schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use tokio_postgres::types::Type;

use super::encode::{self, PgType};
use super::errors::classify;
use super::writer::Session;
use crate::sink::SinkError;

/// A table name, optionally schema-qualified, quoted for SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct QualifiedName {
    schema: Option<String>,
    name: String,
}

impl QualifiedName {
    pub(super) fn parse(text: &str) -> Result<QualifiedName, String> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.iter().any(|part| part.is_empty()) || parts.len() > 2 {
            return Err(format!("`{text}` is not `table` or `schema.table`"));
        }
        Ok(match parts.as_slice() {
            [name] => QualifiedName {
                schema: None,
                name: (*name).to_owned(),
            },
            [schema, name] => QualifiedName {
                schema: Some((*schema).to_owned()),
                name: (*name).to_owned(),
            },
            _ => unreachable!("one or two parts"),
        })
    }

    /// `"schema"."name"`, safe to splice into SQL.
    pub(super) fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!(
                "{}.{}",
                quote_identifier(schema),
                quote_identifier(&self.name)
            ),
            None => quote_identifier(&self.name),
        }
    }
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How one Arrow schema is written into the table: the COPY statement and
/// each file column's target type.
pub(super) struct CopyPlan {
    /// `schema.table` as the server names it, for messages.
    pub(super) table: String,
    /// `None` when the file has no columns: only the ledger row is written.
    pub(super) copy_statement: Option<String>,
    pub(super) targets: Vec<PgType>,
    pub(super) column_names: Vec<String>,
}

/// Plans are cached per Arrow schema; a worker sees few distinct schemas,
/// and the cap keeps a stream of odd files from growing the cache forever.
const MAX_CACHED_PLANS: usize = 64;

/// The target table, shared by the sink and its writers: the schema check
/// and creation run in the writer's transaction when its first batch
/// arrives, so a header-only file (no batches, every column inferred as
/// text) never creates or checks anything and commits only its ledger row.
pub(super) struct Target {
    pub(super) table: QualifiedName,
    /// The table as configured; the ledger's `target_table`.
    pub(super) configured: String,
    pub(super) create_table: bool,
    pub(super) plans: Mutex<HashMap<String, Arc<CopyPlan>>>,
}

impl Target {
    pub(super) fn cache_key(schema: &SchemaRef) -> String {
        schema
            .fields()
            .iter()
            .map(|f| format!("{}\0{}\0{}", f.name(), f.data_type(), f.is_nullable()))
            .collect::<Vec<_>>()
            .join("\0\0")
    }

    pub(super) fn cached(&self, cache_key: &str) -> Option<Arc<CopyPlan>> {
        self.plans.lock().unwrap().get(cache_key).cloned()
    }

    /// Called after a commit: a plan made in a transaction that rolled back
    /// may name a table whose creation rolled back with it.
    pub(super) fn remember(&self, cache_key: String, plan: Arc<CopyPlan>) {
        let mut plans = self.plans.lock().unwrap();
        if plans.len() >= MAX_CACHED_PLANS {
            plans.clear();
        }
        plans.insert(cache_key, plan);
    }

    /// Creates the table if asked, then checks it, inside the writer's
    /// open transaction (DDL is transactional in PostgreSQL).
    /// With `add_columns` (the route's contract has `schema_mode =
    /// "add_columns"`), the file's columns the table lacks are added first.
    pub(super) async fn plan(
        &self,
        session: &Session,
        schema: &SchemaRef,
        add_columns: bool,
    ) -> Result<CopyPlan, SinkError> {
        if self.create_table && !schema.fields().is_empty() {
            self.create(session, schema).await?;
        }
        if add_columns && !schema.fields().is_empty() {
            self.add_columns(session, schema).await?;
        }
        self.check(session, schema).await
    }

    /// `ALTER TABLE … ADD COLUMN` (nullable) for each of the file's columns
    /// that the table has under no name (matched as [`plan_copy`] does:
    /// exactly, else ignoring ASCII case), under the DDL lock, in the
    /// writer's transaction. A table that does not exist is left to
    /// [`Self::check`] to report.
    async fn add_columns(&self, session: &Session, schema: &SchemaRef) -> Result<(), SinkError> {
        let table = self.table.sql();
        let client = session.client();
        let read_columns = || async {
            let rows = client
                .query(
                    "SELECT attname::text FROM pg_attribute
                     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                    &[&table],
                )
                .await
                .map_err(|err| classify(&format!("read the columns of {table}"), &err))?;
            Ok::<Vec<String>, SinkError>(rows.iter().map(|row| row.get(0)).collect())
        };
        let new_fields = |existing: &[String]| -> Vec<arrow::datatypes::FieldRef> {
            schema
                .fields()
                .iter()
                .filter(|field| {
                    !existing
                        .iter()
                        .any(|name| name.eq_ignore_ascii_case(field.name()))
                })
                .cloned()
                .collect()
        };
        let existing = read_columns().await?;
        if existing.is_empty() || new_fields(&existing).is_empty() {
            return Ok(());
        }
        // Another worker may be adding the same columns: take the lock,
        // then look again.
        client
            .query_one(
                "SELECT pg_advisory_xact_lock(hashtext('s3-ingest ddl ' || $1))",
                &[&table],
            )
            .await
            .map_err(|err| classify(&format!("lock {table} to add columns"), &err))?;
        let existing = read_columns().await?;
        let mut statements = Vec::new();
        for field in new_fields(&existing) {
            let pg_type = encode::create_table_type(field.data_type()).ok_or_else(|| {
                SinkError::schema(format!(
                    "column `{}`: Arrow type {} has no PostgreSQL mapping, so it cannot be added to table {table}",
                    field.name(),
                    field.data_type()
                ))
            })?;
            if field.name().contains('\0') {
                return Err(SinkError::schema(format!(
                    "column `{}`: a PostgreSQL identifier cannot hold a NUL byte",
                    field.name().escape_debug()
                )));
            }
            statements.push(format!(
                "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {pg_type};",
                quote_identifier(field.name())
            ));
        }
        if statements.is_empty() {
            return Ok(());
        }
        tracing::info!(
            table,
            columns = statements.len(),
            "adding the file's new columns to the table"
        );
        client
            .batch_execute(&statements.join("\n"))
            .await
            .map_err(|err| classify(&format!("add columns to {table}"), &err))
    }

    /// `CREATE TABLE IF NOT EXISTS` under a transaction-level advisory
    /// lock: alone it can still fail with a unique violation when two
    /// workers create the same table at once. The lock is held until this
    /// writer commits, so racing first loads wait for each other.
    async fn create(&self, session: &Session, schema: &SchemaRef) -> Result<(), SinkError> {
        let table = self.table.sql();
        let mut columns = Vec::new();
        for field in schema.fields() {
            // The driver refuses a statement holding a NUL before the
            // server sees it; that is the file's column name, not an outage.
            if field.name().contains('\0') {
                return Err(SinkError::permanent(format!(
                    "column `{}`: a PostgreSQL identifier cannot hold a NUL byte, so table {table} cannot be created",
                    field.name().escape_debug()
                )));
            }
            let pg_type = encode::create_table_type(field.data_type()).ok_or_else(|| {
                SinkError::permanent(format!(
                    "column `{}`: Arrow type {} has no PostgreSQL mapping, so table {table} cannot be created",
                    field.name(),
                    field.data_type()
                ))
            })?;
            let not_null = if field.is_nullable() { "" } else { " NOT NULL" };
            columns.push(format!(
                "{} {pg_type}{not_null}",
                quote_identifier(field.name())
            ));
        }
        let ddl = format!(
            "SELECT pg_advisory_xact_lock(hashtext('s3-ingest ddl ' || {name}));
             CREATE TABLE IF NOT EXISTS {table} ({columns});",
            name = sql_literal(&table),
            columns = columns.join(", "),
        );
        session
            .client()
            .batch_execute(&ddl)
            .await
            .map_err(|err| classify(&format!("create table {table}"), &err))
    }

    /// Reads the table's columns and matches the file's against them.
    async fn check(&self, session: &Session, schema: &SchemaRef) -> Result<CopyPlan, SinkError> {
        let table = self.table.sql();
        let client = session.client();
        let found = client
            .query_opt(
                "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = to_regclass($1)",
                &[&table],
            )
            .await
            .map_err(|err| classify(&format!("look up table {table}"), &err))?;
        let Some(found) = found else {
            let detail =
                format!("table {table} does not exist (create it, or set create_table = true)");
            // Not the file's fault when the sink does not create tables.
            return Err(
                if crate::error::is_deployment_sqlstate("42P01", self.create_table) {
                    SinkError::deployment("42P01", detail)
                } else {
                    SinkError::permanent(detail)
                },
            );
        };
        let (table_oid, canonical): (u32, String) = (found.get(0), found.get(1));
        let rows = client
            .query(
                "SELECT attname::text, atttypid, format_type(atttypid, atttypmod), attnotnull,
                        atthasdef OR attidentity <> '' OR attgenerated <> '', attgenerated <> ''
                 FROM pg_attribute
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
                 ORDER BY attnum",
                &[&table_oid],
            )
            .await
            .map_err(|err| classify(&format!("read the columns of {canonical}"), &err))?;
        let columns: Vec<TableColumn> = rows
            .iter()
            .map(|row| TableColumn {
                name: row.get(0),
                pg_type: Type::from_oid(row.get(1))
                    .as_ref()
                    .and_then(PgType::from_type),
                type_name: row.get(2),
                not_null: row.get(3),
                has_default: row.get(4),
                generated: row.get(5),
            })
            .collect();
        plan_copy(canonical, schema, &columns).map_err(SinkError::schema)
    }
}

pub(super) fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[derive(Clone)]
struct TableColumn {
    name: String,
    /// `None` for a type the sink cannot write.
    pg_type: Option<PgType>,
    type_name: String,
    not_null: bool,
    has_default: bool,
    generated: bool,
}

/// Matches file columns to table columns; errors name the column.
fn plan_copy(
    table: String,
    schema: &SchemaRef,
    columns: &[TableColumn],
) -> Result<CopyPlan, String> {
    if schema.fields().is_empty() {
        return Ok(CopyPlan {
            table,
            copy_statement: None,
            targets: Vec::new(),
            column_names: Vec::new(),
        });
    }
    let mut matched: Vec<&TableColumn> = Vec::new();
    for field in schema.fields() {
        let name = field.name();
        let exact = columns.iter().find(|c| &c.name == name);
        let column = match exact {
            Some(column) => column,
            None => {
                let folded: Vec<_> = columns
                    .iter()
                    .filter(|c| c.name.eq_ignore_ascii_case(name))
                    .collect();
                match folded.as_slice() {
                    [only] => *only,
                    [] => {
                        return Err(format!(
                            "table {table} has no column `{name}` for the file's column `{name}`"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "the file's column `{name}` matches several columns of table {table} when case is ignored; rename it to one exactly"
                        ));
                    }
                }
            }
        };
        if column.generated {
            return Err(format!(
                "column `{}` of table {table} is generated and cannot be loaded",
                column.name
            ));
        }
        if matched.iter().any(|m| m.name == column.name) {
            return Err(format!(
                "the file has two columns for column `{}` of table {table}",
                column.name
            ));
        }
        let compatible = column
            .pg_type
            .is_some_and(|pg_type| encode::is_compatible(field.data_type(), pg_type));
        if !compatible {
            return Err(format!(
                "column `{}`: the file's Arrow {} values cannot be written to table {table}'s {} column",
                column.name,
                field.data_type(),
                column.type_name
            ));
        }
        matched.push(column);
    }
    if let Some(missing) = columns
        .iter()
        .find(|c| c.not_null && !c.has_default && !matched.iter().any(|m| m.name == c.name))
    {
        return Err(format!(
            "column `{}` of table {table} is NOT NULL without a default and the file has no such column",
            missing.name
        ));
    }
    let column_list: Vec<String> = matched.iter().map(|c| quote_identifier(&c.name)).collect();
    Ok(CopyPlan {
        copy_statement: Some(format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            column_list.join(", ")
        )),
        targets: matched
            .iter()
            .map(|c| c.pg_type.expect("checked compatible"))
            .collect(),
        column_names: matched.iter().map(|c| c.name.clone()).collect(),
        table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn names_are_quoted_exactly_as_written() {
        assert_eq!(QualifiedName::parse("Orders").unwrap().sql(), "\"Orders\"");
        assert_eq!(
            QualifiedName::parse("raw.a\"b").unwrap().sql(),
            "\"raw\".\"a\"\"b\""
        );
        assert!(QualifiedName::parse("a..b").is_err());
    }

    fn column(
        name: &str,
        pg_type: Option<PgType>,
        not_null: bool,
        has_default: bool,
    ) -> TableColumn {
        TableColumn {
            name: name.into(),
            pg_type,
            type_name: format!("{pg_type:?}"),
            not_null,
            has_default,
            generated: false,
        }
    }

    #[test]
    fn plans_name_the_mismatched_column() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let table = || "public.t".to_owned();
        let columns = [
            column("id", Some(PgType::Int4), true, false),
            column("name", Some(PgType::Text), false, false),
            column("loaded_at", Some(PgType::Timestamptz), true, true),
        ];
        let plan = plan_copy(table(), &schema, &columns).unwrap();
        assert_eq!(
            plan.copy_statement.as_deref(),
            Some("COPY public.t (\"id\", \"name\") FROM STDIN (FORMAT binary)")
        );

        let err = plan_copy(table(), &schema, &columns[..1]).err().unwrap();
        assert!(err.contains("no column `name`"), "{err}");
        let wrong_type = [
            column("id", Some(PgType::Int8), true, false),
            column("name", Some(PgType::Date), false, false),
        ];
        let err = plan_copy(table(), &schema, &wrong_type).err().unwrap();
        assert!(
            err.contains("column `name`") && err.contains("Utf8"),
            "{err}"
        );
        let mut required = columns.to_vec();
        required.push(column("tenant", Some(PgType::Text), true, false));
        let err = plan_copy(table(), &schema, &required).err().unwrap();
        assert!(
            err.contains("`tenant`") && err.contains("NOT NULL"),
            "{err}"
        );
    }
}
