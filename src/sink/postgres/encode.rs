//! Arrow → PostgreSQL: which column types accept which Arrow types, the
//! types `create_table` chooses, and the `COPY ... (FORMAT binary)` wire
//! encoding of one batch.
//!
//! The binary COPY format is a header, then per row a 16-bit field count and
//! per field a 32-bit length (-1 for NULL) followed by the value in the
//! column type's binary send format, then a trailer of -1. Values are
//! encoded for the *table's* column type (an Arrow Int64 going into an
//! `integer` column is sent as 4 bytes, range-checked), so the server never
//! has to guess.

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, LargeBinaryArray, LargeStringArray, StringArray,
};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::record_batch::RecordBatch;
use bytes::{BufMut, BytesMut};
use tokio_postgres::types::Type;

/// The column types the sink writes, by their binary format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// `text`, `varchar` and `char(n)` share the binary format (UTF-8 bytes).
    Text,
    Bytea,
    Date,
    Timestamp,
    Timestamptz,
}

impl PgType {
    /// The sink's view of a column's type; `None` for types it cannot
    /// write (json, uuid, arrays, domains, ...).
    pub fn from_type(pg_type: &Type) -> Option<PgType> {
        Some(match *pg_type {
            Type::BOOL => PgType::Bool,
            Type::INT2 => PgType::Int2,
            Type::INT4 => PgType::Int4,
            Type::INT8 => PgType::Int8,
            Type::FLOAT4 => PgType::Float4,
            Type::FLOAT8 => PgType::Float8,
            Type::NUMERIC => PgType::Numeric,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR => PgType::Text,
            Type::BYTEA => PgType::Bytea,
            Type::DATE => PgType::Date,
            Type::TIMESTAMP => PgType::Timestamp,
            Type::TIMESTAMPTZ => PgType::Timestamptz,
            _ => return None,
        })
    }
}

fn is_integer(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

/// Whether values of `data_type` can be written into a `target` column.
/// Integers may go into any integer column (each value is range-checked,
/// because CSV inference says Int64 for every whole-number column) or
/// `numeric`; floats into float8 or `numeric` (Float32 also into float4);
/// timestamps with or without a zone into either timestamp type (Arrow
/// values are UTC instants or UTC-based wall clocks; both are sent as
/// microseconds since 2000-01-01); the Null type into anything.
pub fn is_compatible(data_type: &DataType, target: PgType) -> bool {
    use PgType::*;
    match data_type {
        DataType::Null => true,
        t if is_integer(t) => matches!(target, Int2 | Int4 | Int8 | Numeric),
        DataType::Float32 => matches!(target, Float4 | Float8 | Numeric),
        DataType::Float64 => matches!(target, Float8 | Numeric),
        DataType::Decimal128(_, _) => target == Numeric,
        DataType::Boolean => target == Bool,
        DataType::Utf8 | DataType::LargeUtf8 => target == Text,
        DataType::Binary | DataType::LargeBinary => target == Bytea,
        DataType::Date32 => target == Date,
        DataType::Timestamp(_, _) => matches!(target, Timestamp | Timestamptz),
        _ => false,
    }
}

/// The column type `create_table` uses for an Arrow type, or `None` when
/// the sink has no mapping for it.
pub fn create_table_type(data_type: &DataType) -> Option<String> {
    Some(match data_type {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric(20, 0)".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(precision, scale) if *scale >= 0 => {
            format!("numeric({precision}, {scale})")
        }
        // A negative scale (whole hundreds, ...) has no numeric(p, s) form.
        DataType::Decimal128(_, _) => "numeric".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Utf8 | DataType::LargeUtf8 => "text".into(),
        DataType::Binary | DataType::LargeBinary => "bytea".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        // All values are NULL; text accepts whatever comes later by hand.
        DataType::Null => "text".into(),
        _ => return None,
    })
}

/// The 19-byte header every binary COPY stream starts with.
pub fn copy_header() -> BytesMut {
    let mut out = BytesMut::with_capacity(19);
    out.put_slice(b"PGCOPY\n\xff\r\n\0");
    out.put_i32(0); // flags: no OIDs
    out.put_i32(0); // header extension length
    out
}

/// The trailer that ends a binary COPY stream.
pub fn copy_trailer() -> BytesMut {
    let mut out = BytesMut::with_capacity(2);
    out.put_i16(-1);
    out
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between the Unix epoch and PostgreSQL's.
const PG_EPOCH_DAYS: i32 = 10_957;

/// Encodes every row of `batch` (without header or trailer). `targets[i]`
/// is the table column type for the batch's column `i`; `names[i]` names
/// it in errors; `first_row` is the batch's offset in the object, so an
/// error can say "row 1234" counting data rows from 1.
pub fn encode_batch(
    batch: &RecordBatch,
    targets: &[PgType],
    names: &[String],
    first_row: u64,
) -> Result<BytesMut, String> {
    if batch.num_columns() != targets.len() {
        return Err(format!(
            "a batch has {} columns where the first had {}",
            batch.num_columns(),
            targets.len()
        ));
    }
    // `logical_nulls` also covers the Null type, whose arrays carry no
    // validity bitmap.
    let nulls: Vec<_> = batch.columns().iter().map(|c| c.logical_nulls()).collect();
    let mut out = BytesMut::with_capacity(batch.get_array_memory_size() + batch.num_rows() * 8);
    for row in 0..batch.num_rows() {
        out.put_i16(targets.len() as i16);
        for (column, target) in targets.iter().enumerate() {
            if nulls[column].as_ref().is_some_and(|n| n.is_null(row)) {
                out.put_i32(-1);
                continue;
            }
            // Reserve the length, write the value, then patch the length.
            let length_at = out.len();
            out.put_i32(0);
            encode_value(batch.column(column), row, *target, &mut out).map_err(|reason| {
                format!(
                    "column `{}` row {}: {reason}",
                    names[column],
                    first_row + row as u64 + 1
                )
            })?;
            let length = (out.len() - length_at - 4) as i32;
            out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
        }
    }
    Ok(out)
}

/// One non-null value in `target`'s binary format.
fn encode_value(
    array: &ArrayRef,
    row: usize,
    target: PgType,
    out: &mut BytesMut,
) -> Result<(), String> {
    let data_type = array.data_type();
    match target {
        PgType::Bool => out.put_u8(
            array
                .as_boolean_opt()
                .map(|a| a.value(row))
                .map(u8::from)
                .ok_or_else(|| unsupported(data_type, target))?,
        ),
        PgType::Int2 | PgType::Int4 | PgType::Int8 => {
            let value = integer_at(array, row).ok_or_else(|| unsupported(data_type, target))?;
            let out_of_range = || format!("value {value} does not fit the column's {target:?}");
            match target {
                PgType::Int2 => out.put_i16(i16::try_from(value).map_err(|_| out_of_range())?),
                PgType::Int4 => out.put_i32(i32::try_from(value).map_err(|_| out_of_range())?),
                _ => out.put_i64(i64::try_from(value).map_err(|_| out_of_range())?),
            }
        }
        PgType::Float4 => match data_type {
            DataType::Float32 => out.put_f32(array.as_primitive::<Float32Type>().value(row)),
            _ => return Err(unsupported(data_type, target)),
        },
        PgType::Float8 => match data_type {
            DataType::Float32 => out.put_f64(array.as_primitive::<Float32Type>().value(row).into()),
            DataType::Float64 => out.put_f64(array.as_primitive::<Float64Type>().value(row)),
            _ => return Err(unsupported(data_type, target)),
        },
        PgType::Numeric => {
            let numeric = match data_type {
                DataType::Decimal128(_, scale) => {
                    let unscaled = array.as_primitive::<Decimal128Type>().value(row);
                    Numeric::from_unscaled(unscaled, *scale)
                }
                DataType::Float32 => {
                    Numeric::from_f64(array.as_primitive::<Float32Type>().value(row).into())
                }
                DataType::Float64 => {
                    Numeric::from_f64(array.as_primitive::<Float64Type>().value(row))
                }
                t if is_integer(t) => {
                    Numeric::from_unscaled(integer_at(array, row).expect("an integer type"), 0)
                }
                _ => return Err(unsupported(data_type, target)),
            };
            numeric.encode(out);
        }
        PgType::Text => match data_type {
            DataType::Utf8 => out.put_slice(
                array
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("Utf8")
                    .value(row)
                    .as_bytes(),
            ),
            DataType::LargeUtf8 => out.put_slice(
                array
                    .as_any()
                    .downcast_ref::<LargeStringArray>()
                    .expect("LargeUtf8")
                    .value(row)
                    .as_bytes(),
            ),
            _ => return Err(unsupported(data_type, target)),
        },
        PgType::Bytea => match data_type {
            DataType::Binary => out.put_slice(
                array
                    .as_any()
                    .downcast_ref::<BinaryArray>()
                    .expect("Binary")
                    .value(row),
            ),
            DataType::LargeBinary => out.put_slice(
                array
                    .as_any()
                    .downcast_ref::<LargeBinaryArray>()
                    .expect("LargeBinary")
                    .value(row),
            ),
            _ => return Err(unsupported(data_type, target)),
        },
        PgType::Date => match data_type {
            DataType::Date32 => out.put_i32(
                array
                    .as_primitive::<Date32Type>()
                    .value(row)
                    .checked_sub(PG_EPOCH_DAYS)
                    .ok_or("date out of range")?,
            ),
            _ => return Err(unsupported(data_type, target)),
        },
        PgType::Timestamp | PgType::Timestamptz => match data_type {
            DataType::Timestamp(unit, _) => {
                let micros = unix_micros(array, *unit, row).ok_or("timestamp out of range")?;
                out.put_i64(
                    micros
                        .checked_sub(PG_EPOCH_MICROS)
                        .ok_or("timestamp out of range")?,
                );
            }
            _ => return Err(unsupported(data_type, target)),
        },
    }
    Ok(())
}

fn unsupported(data_type: &DataType, target: PgType) -> String {
    format!("cannot write Arrow {data_type} into a {target:?} column")
}

/// The value of an integer column of any width, signed or not.
fn integer_at(array: &ArrayRef, row: usize) -> Option<i128> {
    Some(match array.data_type() {
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        _ => return None,
    })
}

/// Microseconds since the Unix epoch; nanoseconds are truncated toward
/// the earlier microsecond (PostgreSQL keeps microseconds).
fn unix_micros(array: &ArrayRef, unit: TimeUnit, row: usize) -> Option<i64> {
    match unit {
        TimeUnit::Second => array
            .as_primitive::<TimestampSecondType>()
            .value(row)
            .checked_mul(1_000_000),
        TimeUnit::Millisecond => array
            .as_primitive::<TimestampMillisecondType>()
            .value(row)
            .checked_mul(1_000),
        TimeUnit::Microsecond => Some(array.as_primitive::<TimestampMicrosecondType>().value(row)),
        TimeUnit::Nanosecond => Some(
            array
                .as_primitive::<TimestampNanosecondType>()
                .value(row)
                .div_euclid(1_000),
        ),
    }
}

/// A value in PostgreSQL's `numeric` binary format: base-10000 digits
/// with a weight (the power of 10000 of the first digit) and a display
/// scale (decimal places).
#[derive(Debug, PartialEq, Eq)]
struct Numeric {
    digits: Vec<i16>,
    weight: i16,
    sign: u16,
    display_scale: u16,
}

const NUMERIC_POSITIVE: u16 = 0x0000;
const NUMERIC_NEGATIVE: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_POSITIVE_INFINITY: u16 = 0xD000;
const NUMERIC_NEGATIVE_INFINITY: u16 = 0xF000;

impl Numeric {
    /// `unscaled × 10^-scale`, as Decimal128 stores values.
    fn from_unscaled(unscaled: i128, scale: i8) -> Numeric {
        let magnitude = unscaled.unsigned_abs().to_string();
        let (integer, fraction) = if scale <= 0 {
            // A negative scale multiplies: 12 with scale -2 is 1200.
            (
                magnitude + &"0".repeat(scale.unsigned_abs() as usize),
                String::new(),
            )
        } else {
            let scale = scale as usize;
            let padded = format!("{magnitude:0>width$}", width = scale + 1);
            let (integer, fraction) = padded.split_at(padded.len() - scale);
            (integer.to_owned(), fraction.to_owned())
        };
        Numeric::from_decimal_digits(unscaled < 0, &integer, &fraction)
    }

    /// A float's shortest exact decimal form (Rust's `Display` never uses
    /// an exponent), so 0.1 is stored as 0.1, not 0.1000000000000000055.
    fn from_f64(value: f64) -> Numeric {
        let special = |sign| Numeric {
            digits: Vec::new(),
            weight: 0,
            sign,
            display_scale: 0,
        };
        if value.is_nan() {
            return special(NUMERIC_NAN);
        }
        if value.is_infinite() {
            return special(if value > 0.0 {
                NUMERIC_POSITIVE_INFINITY
            } else {
                NUMERIC_NEGATIVE_INFINITY
            });
        }
        let text = format!("{}", value.abs());
        let (integer, fraction) = text.split_once('.').unwrap_or((&text, ""));
        Numeric::from_decimal_digits(value.is_sign_negative(), integer, fraction)
    }

    /// From the decimal digits before and after the point.
    fn from_decimal_digits(negative: bool, integer: &str, fraction: &str) -> Numeric {
        // Group into base-10000 digits aligned on the decimal point.
        let integer_pad = (4 - integer.len() % 4) % 4;
        let integer = format!("{}{integer}", "0".repeat(integer_pad));
        let fraction_pad = (4 - fraction.len() % 4) % 4;
        let fraction_padded = format!("{fraction}{}", "0".repeat(fraction_pad));
        let group = |s: &str| -> Vec<i16> {
            s.as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
                .collect()
        };
        let mut digits = group(&integer);
        let mut weight = digits.len() as i16 - 1;
        digits.extend(group(&fraction_padded));
        // Leading zero groups shift the weight; trailing ones are dropped.
        let leading_zeros = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..leading_zeros);
        weight -= leading_zeros as i16;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        let is_zero = digits.is_empty();
        Numeric {
            digits,
            weight: if is_zero { 0 } else { weight },
            sign: if negative && !is_zero {
                NUMERIC_NEGATIVE
            } else {
                NUMERIC_POSITIVE
            },
            display_scale: fraction.len() as u16,
        }
    }

    fn encode(&self, out: &mut BytesMut) {
        out.put_i16(self.digits.len() as i16);
        out.put_i16(self.weight);
        out.put_u16(self.sign);
        out.put_u16(self.display_scale);
        for digit in &self.digits {
            out.put_i16(*digit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Decimal128Array, Int64Array, NullArray, TimestampMillisecondArray, TimestampNanosecondArray,
    };
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn numeric(digits: &[i16], weight: i16, sign: u16, display_scale: u16) -> Numeric {
        Numeric {
            digits: digits.to_vec(),
            weight,
            sign,
            display_scale,
        }
    }

    #[test]
    fn decimals_become_base_10000_digits() {
        // 123456.789 = 12·10000¹ + 3456·10000⁰ + 7890·10000⁻¹
        assert_eq!(
            Numeric::from_unscaled(123_456_789, 3),
            numeric(&[12, 3456, 7890], 1, NUMERIC_POSITIVE, 3)
        );
        assert_eq!(
            Numeric::from_unscaled(-5, 1),
            numeric(&[5000], -1, NUMERIC_NEGATIVE, 1)
        );
        assert_eq!(
            Numeric::from_unscaled(1, 6),
            // 0.000001: the zero groups before the 100 only lower the weight.
            numeric(&[100], -2, NUMERIC_POSITIVE, 6)
        );
        assert_eq!(
            Numeric::from_unscaled(0, 2),
            numeric(&[], 0, NUMERIC_POSITIVE, 2)
        );
        assert_eq!(
            Numeric::from_unscaled(12, -2),
            numeric(&[1200], 0, NUMERIC_POSITIVE, 0)
        );
        assert_eq!(
            Numeric::from_unscaled(100_000_000, 0),
            numeric(&[1], 2, NUMERIC_POSITIVE, 0)
        );
    }

    #[test]
    fn floats_use_their_shortest_decimal_form() {
        assert_eq!(
            Numeric::from_f64(0.1),
            numeric(&[1000], -1, NUMERIC_POSITIVE, 1)
        );
        assert_eq!(
            Numeric::from_f64(-2.5),
            numeric(&[2, 5000], 0, NUMERIC_NEGATIVE, 1)
        );
        assert_eq!(Numeric::from_f64(f64::NAN).sign, NUMERIC_NAN);
        assert_eq!(
            Numeric::from_f64(f64::NEG_INFINITY).sign,
            NUMERIC_NEGATIVE_INFINITY
        );
    }

    #[test]
    fn rows_carry_lengths_nulls_and_range_checks() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("nothing", DataType::Null, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(7), None])),
                Arc::new(NullArray::new(2)),
            ],
        )
        .unwrap();
        let names = vec!["id".to_owned(), "nothing".to_owned()];
        let bytes = encode_batch(&batch, &[PgType::Int4, PgType::Text], &names, 0).unwrap();
        let expected: Vec<u8> = [
            &2i16.to_be_bytes()[..],
            &4i32.to_be_bytes(),
            &7i32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &2i16.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &(-1i32).to_be_bytes(),
        ]
        .concat();
        assert_eq!(&bytes[..], &expected[..]);

        let big = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1, 70_000]))],
        )
        .unwrap();
        let err = encode_batch(&big, &[PgType::Int2], &names[..1], 100).unwrap_err();
        assert!(
            err.contains("column `id` row 102") && err.contains("70000"),
            "{err}"
        );
    }

    #[test]
    fn timestamps_are_microseconds_since_2000() {
        let millis: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![946_684_800_001]));
        let mut out = BytesMut::new();
        encode_value(&millis, 0, PgType::Timestamp, &mut out).unwrap();
        assert_eq!(&out[..], &1_000i64.to_be_bytes());
        // Before 1970, nanoseconds round down to the earlier microsecond.
        let nanos: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![-1]));
        let mut out = BytesMut::new();
        encode_value(&nanos, 0, PgType::Timestamptz, &mut out).unwrap();
        assert_eq!(&out[..], &(-1 - PG_EPOCH_MICROS).to_be_bytes());
    }

    #[test]
    fn compatibility_and_created_types() {
        assert!(is_compatible(&DataType::Int64, PgType::Int2));
        assert!(is_compatible(&DataType::Float64, PgType::Numeric));
        assert!(!is_compatible(&DataType::Float64, PgType::Float4));
        assert!(!is_compatible(&DataType::Utf8, PgType::Int8));
        assert!(is_compatible(&DataType::Null, PgType::Date));
        assert_eq!(
            create_table_type(&DataType::Decimal128(12, 2)).as_deref(),
            Some("numeric(12, 2)")
        );
        let decimals: ArrayRef = Arc::new(
            Decimal128Array::from(vec![1])
                .with_precision_and_scale(5, 2)
                .unwrap(),
        );
        let mut out = BytesMut::new();
        encode_value(&decimals, 0, PgType::Numeric, &mut out).unwrap();
        // 0.01: one digit (100), weight -1, positive, scale 2.
        assert_eq!(&out[..], &[0, 1, 255, 255, 0, 0, 0, 2, 0, 100]);
    }
}
