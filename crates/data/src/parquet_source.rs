//! Reading a Parquet source's mapped columns into a Polars frame, whatever integer widths and
//! encodings its writer chose.
//!
//! Polars' reader is the fast path, but this build leaves out Polars' 8- and 16-bit integer
//! types (compile time for nothing else) and Polars reads a dictionary column (pandas'
//! `category`) as a categorical, which no column check accepts. A file whose mapped columns
//! have such types is read with arrow-rs instead: dictionaries decoded to their values, small
//! integers widened to `Int64`, then handed to Polars through the C Data Interface
//! ([`crate::arrow_bridge::series_from_arrow`]). Either way only the mapped columns are read, so
//! other columns of any type are no obstacle.

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal32Type, Decimal64Type, Decimal128Type, Decimal256Type, Float16Type, Float64Type,
    Int8Type, Int16Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, PrimitiveArray};
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use polars::prelude::{ArrowDataType, Column, DataFrame, ParquetReader, SerReader};

use crate::arrow_bridge::series_from_arrow;
use crate::error::{DataError, Result};

/// The columns `wanted` of the Parquet file `bytes` (named `file` in errors), in that order.
pub(crate) fn read_parquet(file: &str, bytes: Bytes, wanted: &[String]) -> Result<DataFrame> {
    let cannot = |e: &dyn std::fmt::Display| {
        DataError::bad_input(file, None, None, format!("cannot read Parquet: {e}"))
    };
    let mut reader = ParquetReader::new(Cursor::new(bytes.clone()));
    let schema = reader.schema().map_err(|e| cannot(&e))?;
    let mut by_polars = true;
    for name in wanted {
        match schema.get(name.as_str()) {
            Some(field) => by_polars &= polars_reads(&field.dtype),
            None => {
                let have: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
                return Err(DataError::bad_input(
                    file,
                    None,
                    Some(name),
                    format!("column not found; the file has {have:?}"),
                ));
            }
        }
    }
    if by_polars {
        return reader
            .with_columns(Some(wanted.to_vec()))
            .finish()
            .map_err(|e| cannot(&e));
    }
    // The Arrow schema pandas embeds would bring the dictionaries back: read the Parquet types.
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(bytes, options)
        .map_err(|e| cannot(&e))?;
    let roots = wanted
        .iter()
        .map(|n| builder.schema().index_of(n))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| cannot(&e))?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    // Large batches: each becomes one chunk of the Polars column.
    let batches = builder
        .with_projection(mask)
        .with_batch_size(1 << 20)
        .build()
        .map_err(|e| cannot(&e))?;
    let mut chunks: Vec<Vec<ArrayRef>> = vec![Vec::new(); wanted.len()];
    for batch in batches {
        let batch = batch.map_err(|e| cannot(&e))?;
        for (name, chunks) in wanted.iter().zip(&mut chunks) {
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| cannot(&format!("column `{name}` missing from a batch")))?;
            let array = widened(array);
            if !polars_takes(array.data_type()) {
                return Err(DataError::bad_input(
                    file,
                    None,
                    Some(name),
                    format!(
                        "a column of type {} cannot be an id, a timestamp or a rating",
                        array.data_type()
                    ),
                ));
            }
            chunks.push(array);
        }
    }
    let columns = wanted
        .iter()
        .zip(chunks)
        .map(|(name, chunks)| series_from_arrow(name, chunks).map(Column::from))
        .collect::<Result<Vec<_>>>()?;
    let height = columns.first().map_or(0, Column::len);
    DataFrame::new(height, columns).map_err(|e| cannot(&e))
}

/// Types Polars' reader hands the column checks as they need them; every other mapped type
/// goes through arrow-rs ([`widened`] or refused by name): Polars reads a dictionary as a
/// categorical, and this build's Polars panics on 8/16-bit integers, decimals, half floats
/// and times of day.
fn polars_reads(dtype: &ArrowDataType) -> bool {
    matches!(
        dtype,
        ArrowDataType::Boolean
            | ArrowDataType::Int32
            | ArrowDataType::Int64
            | ArrowDataType::UInt32
            | ArrowDataType::UInt64
            | ArrowDataType::Float32
            | ArrowDataType::Float64
            | ArrowDataType::Utf8
            | ArrowDataType::LargeUtf8
            | ArrowDataType::Utf8View
            | ArrowDataType::Binary
            | ArrowDataType::LargeBinary
            | ArrowDataType::BinaryView
            | ArrowDataType::Date32
            | ArrowDataType::Date64
            | ArrowDataType::Timestamp(..)
            | ArrowDataType::Duration(..)
    )
}

/// Whether this build's Polars takes an arrow-rs array of `dtype` (after [`widened`]); another
/// type is refused by name rather than handed over (Polars would panic on some).
fn polars_takes(dtype: &DataType) -> bool {
    matches!(
        dtype,
        DataType::Boolean
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(_, None)
    )
}

/// `array` with 8- and 16-bit integers as `Int64`, decimals as `Int64` when they have no
/// fraction digits (ids, timestamps) and as `Float64` otherwise (ratings; the column checks
/// refuse a fraction elsewhere), half floats as `Float64`, and timestamps without their zone
/// (the values are UTC instants either way; Polars is built without time zones).
fn widened(array: &ArrayRef) -> ArrayRef {
    fn to_i64<T: ArrowPrimitiveType>(array: &ArrayRef) -> ArrayRef
    where
        T::Native: Into<i64>,
    {
        Arc::new(
            array
                .as_primitive::<T>()
                .unary::<_, Int64Type>(|v| v.into()),
        )
    }
    fn zoneless<T: ArrowPrimitiveType>(array: &ArrayRef) -> ArrayRef {
        let values: &PrimitiveArray<T> = array.as_primitive();
        Arc::new(PrimitiveArray::<T>::new(
            values.values().clone(),
            values.nulls().cloned(),
        ))
    }
    /// Whole decimals (scale ≤ 0, within i64) as `Int64`, others as `Float64` (null where a
    /// whole value overflows i64).
    fn decimal<T: ArrowPrimitiveType>(
        array: &ArrayRef,
        scale: i8,
        to_i128: impl Fn(T::Native) -> i128,
    ) -> ArrayRef {
        let values: &PrimitiveArray<T> = array.as_primitive();
        if scale <= 0 {
            let factor = 10i128.pow(u32::from(scale.unsigned_abs()));
            let ints: PrimitiveArray<Int64Type> = values
                .iter()
                .map(|v| v.and_then(|v| i64::try_from(to_i128(v).checked_mul(factor)?).ok()))
                .collect();
            return Arc::new(ints);
        }
        let divisor = 10f64.powi(i32::from(scale));
        Arc::new(values.unary::<_, Float64Type>(|v| to_i128(v) as f64 / divisor))
    }
    match array.data_type() {
        DataType::Int8 => to_i64::<Int8Type>(array),
        DataType::Int16 => to_i64::<Int16Type>(array),
        DataType::UInt8 => to_i64::<UInt8Type>(array),
        DataType::UInt16 => to_i64::<UInt16Type>(array),
        DataType::Float16 => Arc::new(
            array
                .as_primitive::<Float16Type>()
                .unary::<_, Float64Type>(|v| v.to_f64()),
        ),
        DataType::Decimal32(_, scale) => decimal::<Decimal32Type>(array, *scale, |v| v.into()),
        DataType::Decimal64(_, scale) => decimal::<Decimal64Type>(array, *scale, |v| v.into()),
        DataType::Decimal128(_, scale) => decimal::<Decimal128Type>(array, *scale, |v| v),
        // Beyond i128 a value cannot be an id, a time or a rating: it saturates, and the
        // column checks refuse it as an id or a time by its row.
        DataType::Decimal256(_, scale) => {
            decimal::<Decimal256Type>(array, *scale, |v| v.to_i128().unwrap_or(i128::MAX))
        }
        DataType::Timestamp(unit, Some(_)) => match unit {
            TimeUnit::Second => zoneless::<TimestampSecondType>(array),
            TimeUnit::Millisecond => zoneless::<TimestampMillisecondType>(array),
            TimeUnit::Microsecond => zoneless::<TimestampMicrosecondType>(array),
            TimeUnit::Nanosecond => zoneless::<TimestampNanosecondType>(array),
        },
        _ => array.clone(),
    }
}
