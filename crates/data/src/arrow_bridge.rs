//! Hands Polars frames to arrow-rs, and arrow-rs columns to Polars, through the Arrow C Data
//! Interface.
//!
//! Polars has its own Arrow implementation (`polars-arrow`); the Parquet writer and readers are
//! arrow-rs. Both speak the C Data Interface, so a column crosses without copying its buffers:
//! polars exports `ArrowArray`/`ArrowSchema` structs and arrow-rs imports them. (The alternative,
//! in-memory Parquet, would encode and decode every value once more; see docs/decisions.md.)
//!
//! Polars exports strings with 64-bit offsets (`LargeUtf8`); our artifact schema declares plain
//! `Utf8`, so string columns get their offsets narrowed (values buffer shared, not copied).

use std::sync::Arc;

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use arrow_array::{Array, ArrayRef, LargeStringArray, RecordBatch, StringArray, make_array};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, SchemaRef};
use polars::prelude::{CompatLevel, DataFrame, Series};

use crate::error::{DataError, Result};

/// Moves one polars column into an arrow-rs array (zero-copy for the buffers).
fn column_to_arrow(col: &polars::prelude::Column) -> Result<ArrayRef> {
    let arr = col.clone().rechunk_to_arrow(CompatLevel::oldest());
    let field = polars_arrow::datatypes::Field::new(col.name().clone(), arr.dtype().clone(), true);
    let c_array = polars_arrow::ffi::export_array_to_c(arr);
    let c_schema = polars_arrow::ffi::export_field_to_c(&field);
    // SAFETY: both crates declare these structs `#[repr(C)]` exactly as the Arrow C Data
    // Interface specifies (same fields, same order); the sizes are checked at compile time by
    // `transmute`. Ownership of the buffers moves to arrow-rs, whose release callback is the
    // one polars installed.
    let (c_array, c_schema): (FFI_ArrowArray, FFI_ArrowSchema) =
        unsafe { (std::mem::transmute(c_array), std::mem::transmute(c_schema)) };
    // SAFETY: the structs come straight from polars' exporter and are valid C Data Interface
    // values.
    let data = unsafe { from_ffi(c_array, &c_schema) }.map_err(|source| DataError::Arrow {
        context: format!("importing column `{}` from polars", col.name()),
        source,
    })?;
    Ok(make_array(data))
}

fn narrow_strings(array: ArrayRef) -> std::result::Result<ArrayRef, ArrowError> {
    let Some(large) = array.as_any().downcast_ref::<LargeStringArray>() else {
        return Ok(array);
    };
    let offsets: Vec<i32> = large
        .value_offsets()
        .iter()
        .map(|&o| {
            i32::try_from(o)
                .map_err(|_| ArrowError::ComputeError("string column larger than 2 GiB".to_owned()))
        })
        .collect::<std::result::Result<_, _>>()?;
    let narrow = StringArray::try_new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        large.values().clone(),
        large.nulls().cloned(),
    )?;
    Ok(Arc::new(narrow))
}

/// Converts `df` into one arrow-rs batch with exactly `schema`'s columns, in its order and
/// types (columns are looked up by name; strings are narrowed to `Utf8`).
pub fn dataframe_to_batch(df: &DataFrame, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let col = df.column(field.name()).map_err(DataError::polars(format!(
            "looking up column `{}` for export",
            field.name()
        )))?;
        let mut array = column_to_arrow(col)?;
        if field.data_type() == &DataType::Utf8 {
            array = narrow_strings(array).map_err(|source| DataError::Arrow {
                context: format!("narrowing column `{}`", field.name()),
                source,
            })?;
        }
        columns.push(array);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|source| DataError::Arrow {
        context: "assembling a record batch".into(),
        source,
    })
}

/// Moves arrow-rs arrays (one column's chunks) into one Polars series named `name` (zero-copy
/// for the buffers). The reverse of [`dataframe_to_batch`]'s per-column step.
pub fn series_from_arrow(name: &str, chunks: Vec<ArrayRef>) -> Result<Series> {
    let mut field = None;
    let mut arrays = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let (c_array, c_schema) = to_ffi(&chunk.to_data()).map_err(|source| DataError::Arrow {
            context: format!("exporting column `{name}` to polars"),
            source,
        })?;
        // SAFETY: as in `column_to_arrow`, the two crates' C Data Interface structs have one
        // layout; ownership of the buffers moves to polars with arrow-rs' release callback.
        let (c_array, c_schema): (
            polars_arrow::ffi::ArrowArray,
            polars_arrow::ffi::ArrowSchema,
        ) = unsafe { (std::mem::transmute(c_array), std::mem::transmute(c_schema)) };
        // SAFETY: the structs come straight from arrow-rs' exporter.
        let f = unsafe { polars_arrow::ffi::import_field_from_c(&c_schema) }
            .map_err(DataError::polars(format!("importing column `{name}`")))?;
        let array = unsafe { polars_arrow::ffi::import_array_from_c(c_array, f.dtype.clone()) }
            .map_err(DataError::polars(format!("importing column `{name}`")))?;
        arrays.push(array);
        field.get_or_insert(f);
    }
    let Some(field) = field else {
        return Ok(Series::new_empty(
            name.into(),
            &polars::prelude::DataType::Null,
        ));
    };
    let field = polars_arrow::datatypes::Field::new(name.into(), field.dtype, true);
    Series::try_from((&field, arrays))
        .map_err(DataError::polars(format!("importing column `{name}`")))
}
