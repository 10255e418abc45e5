//! Item embeddings a user brings (`cluster.embeddings`): `.npy` (f32 or f64, `n_items × d`, row
//! i = item index i, like the DiffRec authors' `item_emb.npy`) or `.parquet` with an `embedding`
//! column (fixed-size or variable list of f32 or f64). f64 values are rounded to f32; one beyond
//! f32's range is refused, naming its row and element. Parquet rows are placed by their `item_id` column
//! when there is one (matched against this workspace's item ids, so another workspace's
//! `cluster/item_embeddings.parquet` works), else by an `item_idx` column, else in row order.
//!
//! Errors count a file's rows from 1, as ingest's do; a vector's elements, item indices and
//! NumPy indices (given beside a `.npy` row) count from 0, as the arrays do.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{ClusterError, Result};

/// Embeddings, row-major `rows × dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub rows: usize,
    pub dim: usize,
    pub values: Vec<f32>,
}

fn bad(file: &str, message: impl Into<String>) -> ClusterError {
    ClusterError::BadEmbeddings {
        file: file.to_owned(),
        message: message.into(),
    }
}

/// Parses `bytes` (named `file`) and checks they hold one finite row per item of `item_ids`
/// (this workspace's original item ids by dense index).
pub fn parse(file: &str, bytes: Bytes, item_ids: &[String]) -> Result<Embeddings> {
    let n_items = item_ids.len();
    let emb = if file.ends_with(".npy") {
        let a = diffrec_data::npy::parse_npy(file, &bytes)?;
        if a.ndim != 2 {
            return Err(bad(
                file,
                format!(
                    "a 1-D array of {} values; expected a 2-D array, items × dimensions",
                    a.rows
                ),
            ));
        }
        let at = |p: usize| {
            format!(
                "row {} ([{}, {}] in NumPy)",
                p / a.cols + 1,
                p / a.cols,
                p % a.cols
            )
        };
        if let Some((p, v)) = a.first_beyond_f32() {
            return Err(beyond_f32(file, at(p), v));
        }
        let values = a.to_f32().ok_or_else(|| {
            bad(
                file,
                format!(
                    "dtype {:?}, expected float32 ('<f4') or float64 ('<f8')",
                    a.dtype
                ),
            )
        })?;
        if let Some(p) = values.iter().position(|x| !x.is_finite()) {
            return Err(bad(file, format!("{}: value is not finite", at(p))));
        }
        Embeddings {
            rows: a.rows,
            dim: a.cols,
            values,
        }
    } else if file.ends_with(".parquet") {
        parse_parquet(file, bytes, item_ids)?
    } else {
        return Err(bad(
            file,
            "unknown format: expected a .npy or .parquet file",
        ));
    };
    if emb.rows != n_items {
        return Err(bad(
            file,
            format!(
                "{} rows of embeddings, but the workspace has {n_items} items (row i must be item index i)",
                emb.rows
            ),
        ));
    }
    if emb.dim == 0 {
        return Err(bad(file, "embeddings of width 0"));
    }
    Ok(emb)
}

/// A finite `float64` that `f32` cannot hold: refused rather than turned into infinity.
fn beyond_f32(file: &str, at: String, v: f64) -> ClusterError {
    bad(
        file,
        format!("{at}: {v:e} is beyond float32's range (±3.4e38)"),
    )
}

/// A Parquet row, counted from 1, of a batch's row `r` after `before` rows.
fn nth(before: usize, r: usize) -> usize {
    before + r + 1
}

/// An `item_id` column as the ids ingest writes: strings of any Arrow width (pandas and
/// pyarrow write `large_string`), or integers in decimal, as integer ids of a source become.
fn id_strings(file: &str, c: &ArrayRef) -> Result<Vec<Option<String>>> {
    fn all<T: ToString>(
        n: usize,
        valid: impl Fn(usize) -> bool,
        v: impl Fn(usize) -> T,
    ) -> Vec<Option<String>> {
        (0..n).map(|r| valid(r).then(|| v(r).to_string())).collect()
    }
    let (n, valid) = (c.len(), |r| c.is_valid(r));
    Ok(match c.data_type() {
        DataType::Utf8 => all(n, valid, |r| c.as_string::<i32>().value(r)),
        DataType::LargeUtf8 => all(n, valid, |r| c.as_string::<i64>().value(r)),
        DataType::Utf8View => all(n, valid, |r| c.as_string_view().value(r)),
        DataType::Int64 => all(n, valid, |r| c.as_primitive::<Int64Type>().value(r)),
        DataType::Int32 => all(n, valid, |r| c.as_primitive::<Int32Type>().value(r)),
        DataType::UInt64 => all(n, valid, |r| c.as_primitive::<UInt64Type>().value(r)),
        DataType::UInt32 => all(n, valid, |r| c.as_primitive::<UInt32Type>().value(r)),
        other => {
            return Err(bad(
                file,
                format!("column item_id has type {other}, expected strings or integers"),
            ));
        }
    })
}

/// Where each row of a batch goes.
enum Placement {
    ById(Vec<usize>),
    ByIndex(Vec<usize>),
    InOrder,
}

fn parse_parquet(file: &str, bytes: Bytes, item_ids: &[String]) -> Result<Embeddings> {
    let n_items = item_ids.len();
    let by_id: std::collections::HashMap<&str, usize> = item_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let pq = |e: parquet::errors::ParquetError| bad(file, e.to_string());
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(pq)?
        .build()
        .map_err(pq)?;
    let mut dim = None;
    let mut values = vec![f32::NAN; 0];
    let mut filled = Vec::new();
    let mut row = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| bad(file, e.to_string()))?;
        let col = batch
            .column_by_name("embedding")
            .ok_or_else(|| bad(file, "no column `embedding`"))?;
        let placement = if let Some(c) = batch.column_by_name("item_id") {
            let ids = id_strings(file, c)?;
            let mut at = Vec::with_capacity(ids.len());
            for (r, id) in ids.iter().enumerate() {
                let Some(id) = id else {
                    return Err(bad(
                        file,
                        format!("row {}, column item_id: null", nth(row, r)),
                    ));
                };
                at.push(*by_id.get(id.as_str()).ok_or_else(|| {
                    bad(
                        file,
                        format!(
                            "row {}, column item_id: {id:?} is not an item of this workspace",
                            nth(row, r)
                        ),
                    )
                })?);
            }
            Placement::ById(at)
        } else if let Some(c) = batch.column_by_name("item_idx") {
            Placement::ByIndex(index_column(file, c, row)?)
        } else {
            Placement::InOrder
        };
        for r in 0..batch.num_rows() {
            let v = list_row(file, col, r, nth(row, r))?;
            let d = *dim.get_or_insert(v.len());
            if v.len() != d {
                return Err(bad(
                    file,
                    format!(
                        "row {}, column embedding: width {} (earlier rows have {d})",
                        nth(row, r),
                        v.len()
                    ),
                ));
            }
            let at = match &placement {
                Placement::ById(a) | Placement::ByIndex(a) => a[r],
                Placement::InOrder => row + r,
            };
            if at >= n_items {
                let message = match placement {
                    Placement::InOrder => {
                        format!(
                            "row {}: more rows than the workspace's {n_items} items",
                            nth(row, r)
                        )
                    }
                    _ => format!(
                        "row {}, column item_idx: {at} is not an item index (< {n_items})",
                        nth(row, r)
                    ),
                };
                return Err(bad(file, message));
            }
            if values.is_empty() {
                values = vec![f32::NAN; n_items * d];
                filled = vec![false; n_items];
            }
            if std::mem::replace(&mut filled[at], true) {
                let what = match placement {
                    Placement::ById(_) => format!("column item_id: {:?}", item_ids[at]),
                    _ => format!("column item_idx: item {at}"),
                };
                return Err(bad(
                    file,
                    format!("row {}, {what} appears twice", nth(row, r)),
                ));
            }
            values[at * d..(at + 1) * d].copy_from_slice(&v);
        }
        row += batch.num_rows();
    }
    let dim = dim.unwrap_or(0);
    let mut missing = filled
        .iter()
        .enumerate()
        .filter(|(_, f)| !**f)
        .map(|(i, _)| i);
    if let Some(first) = missing.next() {
        // Named by the id the user knows, with the index a `.npy` row or `item_idx` would use.
        let others = match missing.count() {
            0 => String::new(),
            n => format!(", nor for {n} other item{}", if n == 1 { "" } else { "s" }),
        };
        return Err(bad(
            file,
            format!(
                "no embedding for item_id {:?} (item index {first}){others}: the file has {} \
                 of the workspace's {n_items} items",
                item_ids[first],
                filled.iter().filter(|f| **f).count()
            ),
        ));
    }
    Ok(Embeddings {
        // Every item is filled exactly once (checked above), unless the file had no rows.
        rows: if values.is_empty() { row } else { n_items },
        dim,
        values,
    })
}

fn index_column(file: &str, c: &ArrayRef, first_row: usize) -> Result<Vec<usize>> {
    if let Some(r) = (0..c.len()).find(|&r| c.is_null(r)) {
        return Err(bad(
            file,
            format!("row {}, column item_idx: null", nth(first_row, r)),
        ));
    }
    match c.data_type() {
        DataType::UInt32 => Ok(c
            .as_primitive::<UInt32Type>()
            .values()
            .iter()
            .map(|&v| v as usize)
            .collect()),
        DataType::Int64 => c
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .enumerate()
            .map(|(r, &v)| {
                usize::try_from(v).map_err(|_| {
                    let row = nth(first_row, r);
                    bad(
                        file,
                        format!("row {row}, column item_idx: negative index {v}"),
                    )
                })
            })
            .collect(),
        t => Err(bad(
            file,
            format!("column item_idx has type {t}, expected uint32 or int64"),
        )),
    }
}

/// Row `r` of the `embedding` column, which is the file's row `global_row` (from 1).
fn list_row(file: &str, col: &ArrayRef, r: usize, global_row: usize) -> Result<Vec<f32>> {
    let inner = match col.data_type() {
        DataType::FixedSizeList(..) => col.as_fixed_size_list().value(r),
        DataType::List(_) => col.as_list::<i32>().value(r),
        DataType::LargeList(_) => col.as_list::<i64>().value(r),
        t => {
            return Err(bad(
                file,
                format!("column embedding has type {t}, expected a list of float32 or float64"),
            ));
        }
    };
    if col.is_null(r) {
        return Err(bad(
            file,
            format!("row {global_row}, column embedding: null"),
        ));
    }
    if inner.null_count() > 0 {
        return Err(bad(
            file,
            format!("row {global_row}, column embedding: null element"),
        ));
    }
    let not_finite = |c: usize| {
        bad(
            file,
            format!("row {global_row}, column embedding, element {c}: value is not finite"),
        )
    };
    if let Some(f) = inner.as_primitive_opt::<Float32Type>() {
        if let Some(c) = f.values().iter().position(|v| !v.is_finite()) {
            return Err(not_finite(c));
        }
        return Ok(f.values().to_vec());
    }
    // float64: what pandas and Polars write for a list of Python floats.
    let f = inner.as_primitive_opt::<Float64Type>().ok_or_else(|| {
        bad(
            file,
            format!(
                "column embedding holds {}, expected float32 or float64",
                inner.data_type()
            ),
        )
    })?;
    let values = f.values();
    if let Some(c) = values.iter().position(|v| !v.is_finite()) {
        return Err(not_finite(c));
    }
    if let Some(c) = values.iter().position(|&v| (v as f32).is_infinite()) {
        let at = format!("row {global_row}, column embedding, element {c}");
        return Err(beyond_f32(file, at, values[c]));
    }
    Ok(values.iter().map(|&v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffrec_data::npy::{npy_v1_file, write_npy_f32};
    use std::sync::Arc;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn npy_rows_must_match_items_and_be_finite() {
        let ok = write_npy_f32(3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let e = parse("e.npy", Bytes::from(ok.clone()), &ids(3)).unwrap();
        assert_eq!((e.rows, e.dim), (3, 2));
        assert_eq!(e.values[5], 6.0);
        let err = parse("e.npy", Bytes::from(ok), &ids(4))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("e.npy") && err.contains("3 rows") && err.contains("4 items"),
            "{err}"
        );
        let nan = write_npy_f32(2, 2, &[1.0, 2.0, f32::NAN, 4.0]);
        let err = parse("e.npy", Bytes::from(nan), &ids(2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("row 2 ([1, 0] in NumPy): value is not finite"),
            "{err}"
        );
        let err = parse("e.csv", Bytes::new(), &ids(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown format"), "{err}");
    }

    /// `np.save` (NumPy 2.4) of `a`, shape (2, 2), dtype float64: the header NumPy writes and
    /// the little-endian payload.
    fn numpy_f64_2x2(a: [f64; 4]) -> Bytes {
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }";
        let payload: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
        Bytes::from(npy_v1_file(header, &payload))
    }

    #[test]
    fn npy_float64_is_rounded_to_f32_and_its_range_checked() {
        let e = parse("e.npy", numpy_f64_2x2([1.5, -2.0, 0.1, 3.0]), &ids(2)).unwrap();
        assert_eq!((e.rows, e.dim), (2, 2));
        assert_eq!(e.values, vec![1.5, -2.0, 0.1f32, 3.0]);
        let err = parse("e.npy", numpy_f64_2x2([1.5, -2.0, 1e300, 3.0]), &ids(2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("e.npy")
                && err.contains("row 2 ([1, 0] in NumPy)")
                && err.contains("1e300"),
            "{err}"
        );
        // NaN in f64 stays NaN in f32 and is refused by the finiteness check.
        let err = parse("e.npy", numpy_f64_2x2([1.5, f64::NAN, 0.0, 3.0]), &ids(2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("row 1 ([0, 1] in NumPy)") && err.contains("not finite"),
            "{err}"
        );
    }

    #[test]
    fn npy_one_dimensional_is_refused() {
        // np.save of np.array([0.5, 1.0], dtype=np.float32): two items, but no dimension axis.
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        let b = npy_v1_file(header, &[0, 0, 0, 0x3f, 0, 0, 0x80, 0x3f]);
        let err = parse("v.npy", Bytes::from(b), &ids(2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("v.npy") && err.contains("1-D") && err.contains("items × dimensions"),
            "{err}"
        );
    }

    #[test]
    fn parquet_float64_lists_are_read() {
        use arrow_array::{ListArray, RecordBatch};
        let list = |rows: Vec<Vec<f64>>| {
            ListArray::from_iter_primitive::<Float64Type, _, _>(
                rows.into_iter().map(|r| Some(r.into_iter().map(Some))),
            )
        };
        let batch = |rows| {
            RecordBatch::try_from_iter([("embedding", Arc::new(list(rows)) as ArrayRef)]).unwrap()
        };
        let e = parse(
            "f.parquet",
            parquet_bytes(batch(vec![vec![0.25, -1.0], vec![2.0, 0.1]])),
            &ids(2),
        )
        .unwrap();
        assert_eq!(e.values, vec![0.25, -1.0, 2.0, 0.1f32]);
        let err = parse(
            "f.parquet",
            parquet_bytes(batch(vec![vec![0.25, -1.0], vec![2.0, -1e40]])),
            &ids(2),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("f.parquet")
                && err.contains("row 2, column embedding, element 1")
                && err.contains("-1e40"),
            "{err}"
        );
    }

    #[test]
    fn parquet_non_finite_values_are_named_by_row_and_element() {
        use arrow_array::{ListArray, RecordBatch};
        let batch = |a: f32, b: f32| {
            let list = ListArray::from_iter_primitive::<Float32Type, _, _>([
                Some(vec![Some(1.0), Some(2.0)]),
                Some(vec![Some(a), Some(b)]),
            ]);
            RecordBatch::try_from_iter([("embedding", Arc::new(list) as ArrayRef)]).unwrap()
        };
        let err = parse("g.parquet", parquet_bytes(batch(0.5, f32::NAN)), &ids(2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("g.parquet")
                && err.contains("row 2, column embedding, element 1: value is not finite"),
            "{err}"
        );
        let e = parse("g.parquet", parquet_bytes(batch(0.5, -0.5)), &ids(2)).unwrap();
        assert_eq!(e.values, vec![1.0, 2.0, 0.5, -0.5]);
    }

    fn parquet_bytes(batch: arrow_array::RecordBatch) -> Bytes {
        let mut buf = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        Bytes::from(buf)
    }

    #[test]
    fn parquet_rows_are_placed_by_item_id() {
        // Another workspace's file: same items, other dense order (m2, m0, m1).
        let other: Vec<String> = ["m2", "m0", "m1"].iter().map(|s| s.to_string()).collect();
        let batch =
            crate::artifacts::embeddings_batch("item", &other, &[2.0, 2.5, 0.0, 0.5, 1.0, 1.5], 2)
                .unwrap();
        let e = parse("o.parquet", parquet_bytes(batch.clone()), &ids(3)).unwrap();
        assert_eq!((e.rows, e.dim), (3, 2));
        assert_eq!(
            e.values,
            vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5],
            "row i = item m{{i}}"
        );
        // An id this workspace does not have: named with its row.
        let err = parse(
            "o.parquet",
            parquet_bytes(batch),
            &["m0", "m1", "m9"].map(String::from),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("o.parquet")
                && err.contains("row 1, column item_id")
                && err.contains("\"m2\""),
            "{err}"
        );
    }

    /// pandas and pyarrow write string ids as `large_string`; integer ids are their decimal
    /// strings, as ingest stores integer ids of a source.
    #[test]
    fn parquet_item_ids_may_be_large_strings_or_integers() {
        use arrow_array::{Int64Array, LargeStringArray, RecordBatch};
        // Rows 0, 1, 2 hold [0, 1], [2, 3], [4, 5].
        let values: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let emb = crate::artifacts::embeddings_batch("item", &ids(3), &values, 2).unwrap();
        let with_ids = |ids: ArrayRef| {
            let schema = arrow_schema::Schema::new(vec![
                arrow_schema::Field::new("item_id", ids.data_type().clone(), true),
                emb.schema().field_with_name("embedding").unwrap().clone(),
            ]);
            let col = emb.column_by_name("embedding").unwrap().clone();
            RecordBatch::try_new(std::sync::Arc::new(schema), vec![ids, col]).unwrap()
        };
        let large = with_ids(std::sync::Arc::new(LargeStringArray::from(vec![
            "m2", "m0", "m1",
        ])));
        let e = parse("l.parquet", parquet_bytes(large), &ids(3)).unwrap();
        assert_eq!(e.values, vec![2.0, 3.0, 4.0, 5.0, 0.0, 1.0]);
        let numbered: Vec<String> = ["7", "10", "300"].map(String::from).to_vec();
        let ints = with_ids(std::sync::Arc::new(Int64Array::from(vec![300, 7, 10])));
        let e = parse("i.parquet", parquet_bytes(ints), &numbered).unwrap();
        assert_eq!(e.values, vec![2.0, 3.0, 4.0, 5.0, 0.0, 1.0]);
    }

    /// An item the file leaves out is named by its id (what the user can look up in their
    /// catalogue), with its index and how many more are missing.
    #[test]
    fn parquet_items_left_out_are_named_by_id() {
        let values: Vec<f32> = (0..4).map(|v| v as f32).collect();
        let two: Vec<String> = ["m3", "m0"].map(String::from).to_vec();
        let batch = crate::artifacts::embeddings_batch("item", &two, &values, 2).unwrap();
        let err = parse("p.parquet", parquet_bytes(batch), &ids(4))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p.parquet")
                && err.contains(
                    "no embedding for item_id \"m1\" (item index 1), nor for 1 other item:"
                )
                && err.contains("the file has 2 of the workspace's 4 items"),
            "{err}"
        );
    }
}
