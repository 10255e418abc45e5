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
    let mut polars_reads = true;
    for name in wanted {
        match schema.get(name.as_str()) {
            Some(field) => polars_reads &= !polars_lacks(&field.dtype),
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
    if polars_reads {
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
            chunks.push(widened(array));
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

/// Types Polars' reader cannot hand the column checks as they need them.
fn polars_lacks(dtype: &ArrowDataType) -> bool {
    matches!(
        dtype,
        ArrowDataType::Int8
            | ArrowDataType::Int16
            | ArrowDataType::UInt8
            | ArrowDataType::UInt16
            | ArrowDataType::Dictionary(..)
    )
}

/// `array` with 8- and 16-bit integers as `Int64`, and timestamps without their zone (the
/// values are UTC instants either way; Polars is built without time zones).
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
    match array.data_type() {
        DataType::Int8 => to_i64::<Int8Type>(array),
        DataType::Int16 => to_i64::<Int16Type>(array),
        DataType::UInt8 => to_i64::<UInt8Type>(array),
        DataType::UInt16 => to_i64::<UInt16Type>(array),
        DataType::Timestamp(unit, Some(_)) => match unit {
            TimeUnit::Second => zoneless::<TimestampSecondType>(array),
            TimeUnit::Millisecond => zoneless::<TimestampMillisecondType>(array),
            TimeUnit::Microsecond => zoneless::<TimestampMicrosecondType>(array),
            TimeUnit::Nanosecond => zoneless::<TimestampNanosecondType>(array),
        },
        _ => array.clone(),
    }
}
