//! Explicit route schemas: a column list in the config turned into an
//! Arrow schema.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// One column of an explicit schema, e.g. `{ name = "price", type = "float64" }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(default = "default_nullable")]
    pub nullable: bool,
}

fn default_nullable() -> bool {
    true
}

/// Builds the Arrow schema for an explicit column list, or says which
/// column's type is not understood.
pub fn arrow_schema(columns: &[ColumnSpec]) -> Result<SchemaRef, String> {
    let mut fields = Vec::with_capacity(columns.len());
    for column in columns {
        let data_type = parse_type(&column.data_type).ok_or_else(|| {
            format!(
                "column `{}`: unknown type `{}`",
                column.name, column.data_type
            )
        })?;
        fields.push(Field::new(&column.name, data_type, column.nullable));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Friendly names for the common types; anything else is tried with
/// Arrow's own type syntax (`Timestamp(Millisecond, Some("+01:00"))`,
/// `Decimal128(20, 4)`).
fn parse_type(name: &str) -> Option<DataType> {
    let simple = match name.trim().to_ascii_lowercase().as_str() {
        "bool" | "boolean" => Some(DataType::Boolean),
        "int8" => Some(DataType::Int8),
        "int16" => Some(DataType::Int16),
        "int32" | "int" => Some(DataType::Int32),
        "int64" | "bigint" | "long" => Some(DataType::Int64),
        "uint8" => Some(DataType::UInt8),
        "uint16" => Some(DataType::UInt16),
        "uint32" => Some(DataType::UInt32),
        "uint64" => Some(DataType::UInt64),
        "float32" | "float" => Some(DataType::Float32),
        "float64" | "double" => Some(DataType::Float64),
        "utf8" | "string" | "text" => Some(DataType::Utf8),
        "date" | "date32" => Some(DataType::Date32),
        "timestamp" | "timestamp_us" => Some(DataType::Timestamp(TimeUnit::Microsecond, None)),
        "timestamp_ms" => Some(DataType::Timestamp(TimeUnit::Millisecond, None)),
        "timestamp_s" => Some(DataType::Timestamp(TimeUnit::Second, None)),
        "timestamp_ns" => Some(DataType::Timestamp(TimeUnit::Nanosecond, None)),
        "timestamptz" | "timestamptz_us" => Some(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        )),
        _ => None,
    };
    simple.or_else(|| name.trim().parse::<DataType>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, data_type: &str) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            data_type: data_type.into(),
            nullable: true,
        }
    }

    #[test]
    fn friendly_and_arrow_type_names_are_understood() {
        let schema = arrow_schema(&[
            column("a", "int64"),
            column("b", "String"),
            column("c", "timestamp_ms"),
            column("d", "Decimal128(20, 4)"),
            column("e", "date"),
        ])
        .unwrap();
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        assert_eq!(schema.field(1).data_type(), &DataType::Utf8);
        assert_eq!(
            schema.field(2).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        assert_eq!(schema.field(3).data_type(), &DataType::Decimal128(20, 4));
        assert_eq!(schema.field(4).data_type(), &DataType::Date32);
    }

    #[test]
    fn unknown_type_names_the_column() {
        let err = arrow_schema(&[column("qty", "integer-ish")]).unwrap_err();
        assert!(err.contains("qty") && err.contains("integer-ish"), "{err}");
    }
}
