//! The cluster stage's Parquet artifacts and their schemas:
//!
//! | key | columns |
//! |---|---|
//! | `cluster/item_embeddings.parquet` | `item_idx` u32, `item_id` utf8, `embedding` fixed_size_list<f32>[d] |
//! | `cluster/user_embeddings.parquet` | `user_idx` u32, `user_id` utf8, `embedding` fixed_size_list<f32>[d] |
//! | `cluster/item_clusters.parquet` | `item_idx` u32, `item_id` utf8, `cluster` u32, `distance` f32 |
//! | `cluster/lightgcn_metrics.parquet` | the trainer's `metrics.parquet` schema |
//!
//! `user_embeddings` and `lightgcn_metrics` exist only when LightGCN was pre-trained (not when
//! `cluster.embeddings` supplied the item embeddings).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt32Type;
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray, UInt32Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{ClusterError, Result};

pub const STAGE_DIR: &str = "cluster";
pub const ITEM_EMBEDDINGS: &str = "cluster/item_embeddings.parquet";
pub const USER_EMBEDDINGS: &str = "cluster/user_embeddings.parquet";
pub const ITEM_CLUSTERS: &str = "cluster/item_clusters.parquet";
pub const LIGHTGCN_METRICS: &str = "cluster/lightgcn_metrics.parquet";
/// The stage's summary (sizes, LightGCN figures, guard notes) as JSON.
pub const SUMMARY: &str = "cluster/summary.json";
/// Who writes the stage's outputs (`diffrec_data::claim::Claim`): the last process to start it.
pub const OWNER: &str = "cluster/_owner";

fn item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

/// Schema of `{entity}_embeddings.parquet` with width `dim`.
pub fn embeddings_schema(entity: &str, dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(format!("{entity}_idx"), DataType::UInt32, false),
        Field::new(format!("{entity}_id"), DataType::Utf8, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(item_field(), dim as i32),
            false,
        ),
    ]))
}

pub fn clusters_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item_idx", DataType::UInt32, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("cluster", DataType::UInt32, false),
        Field::new("distance", DataType::Float32, false),
    ]))
}

fn arrow_err(key: &str) -> impl Fn(arrow_schema::ArrowError) -> ClusterError + '_ {
    move |e| ClusterError::Write {
        key: key.to_owned(),
        message: e.to_string(),
    }
}

fn index_column(n: usize) -> ArrayRef {
    Arc::new(UInt32Array::from_iter_values(0..n as u32))
}

/// One record batch of embeddings (`ids.len() × dim`, row-major `values`).
pub fn embeddings_batch(
    entity: &str,
    ids: &[String],
    values: &[f32],
    dim: usize,
) -> Result<RecordBatch> {
    let key = format!("cluster/{entity}_embeddings.parquet");
    let list = FixedSizeListArray::try_new(
        item_field(),
        dim as i32,
        Arc::new(Float32Array::from(values.to_vec())),
        None,
    )
    .map_err(arrow_err(&key))?;
    RecordBatch::try_new(
        embeddings_schema(entity, dim),
        vec![
            index_column(ids.len()),
            Arc::new(StringArray::from_iter_values(ids)),
            Arc::new(list),
        ],
    )
    .map_err(arrow_err(&key))
}

pub fn clusters_batch(ids: &[String], labels: &[u32], distances: &[f32]) -> Result<RecordBatch> {
    RecordBatch::try_new(
        clusters_schema(),
        vec![
            index_column(ids.len()),
            Arc::new(StringArray::from_iter_values(ids)),
            Arc::new(UInt32Array::from(labels.to_vec())),
            Arc::new(Float32Array::from(distances.to_vec())),
        ],
    )
    .map_err(arrow_err(ITEM_CLUSTERS))
}

/// Reads `cluster/item_clusters.parquet` back: each item's cluster, by `item_idx`. Checks that
/// every one of the `n_items` items appears once and that the clusters are 0..k, none empty.
pub fn read_item_clusters(bytes: Bytes, n_items: usize) -> Result<Vec<u32>> {
    let bad = |message: String| ClusterError::Corrupt {
        key: ITEM_CLUSTERS.to_owned(),
        message,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| bad(e.to_string()))?;
    let mut labels = vec![u32::MAX; n_items];
    let mut row = 0;
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<UInt32Type>())
                .ok_or_else(|| bad(format!("no u32 column `{name}`")))
        };
        let (idx, cluster) = (column("item_idx")?, column("cluster")?);
        for r in 0..batch.num_rows() {
            if idx.is_null(r) || cluster.is_null(r) {
                return Err(bad(format!("row {}: null item_idx or cluster", row + r)));
            }
            let i = idx.value(r) as usize;
            let slot = labels.get_mut(i).ok_or_else(|| {
                bad(format!(
                    "row {}, column item_idx: {i} is not an item index (< {n_items}); \
                     rerun the cluster stage after ingest",
                    row + r
                ))
            })?;
            if *slot != u32::MAX {
                return Err(bad(format!(
                    "row {}, column item_idx: item {i} appears twice",
                    row + r
                )));
            }
            *slot = cluster.value(r);
        }
        row += batch.num_rows();
    }
    if let Some(missing) = labels.iter().position(|&l| l == u32::MAX) {
        return Err(bad(format!(
            "item index {missing} has no cluster; rerun the cluster stage after ingest"
        )));
    }
    let k = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let mut sizes = vec![0usize; k];
    labels.iter().for_each(|&l| sizes[l as usize] += 1);
    if let Some(empty) = sizes.iter().position(|&n| n == 0) {
        return Err(bad(format!("cluster {empty} of 0..{k} has no item")));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::ArrowWriter;

    fn file(labels: &[u32], idx: &[u32]) -> Bytes {
        let ids: Vec<String> = idx.iter().map(|i| format!("m{i}")).collect();
        let batch = RecordBatch::try_new(
            clusters_schema(),
            vec![
                Arc::new(UInt32Array::from(idx.to_vec())),
                Arc::new(StringArray::from_iter_values(&ids)),
                Arc::new(UInt32Array::from(labels.to_vec())),
                Arc::new(Float32Array::from(vec![0.0; labels.len()])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, clusters_schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        Bytes::from(out)
    }

    #[test]
    fn item_clusters_read_back_by_index_and_are_checked() {
        // Rows out of order are placed by item_idx.
        assert_eq!(
            read_item_clusters(file(&[1, 0, 1], &[2, 0, 1]), 3).unwrap(),
            vec![0, 1, 1]
        );
        let msg = |r: Result<Vec<u32>>| r.unwrap_err().to_string();
        assert!(
            msg(read_item_clusters(file(&[0, 1], &[0, 1]), 3))
                .contains("item index 2 has no cluster")
        );
        assert!(
            msg(read_item_clusters(file(&[0, 1, 1], &[0, 1, 1]), 3))
                .contains("row 2, column item_idx: item 1 appears twice")
        );
        assert!(
            msg(read_item_clusters(file(&[0, 2, 2], &[0, 1, 2]), 3))
                .contains("cluster 1 of 0..3 has no item")
        );
        assert!(
            msg(read_item_clusters(file(&[0, 0, 0], &[0, 1, 5]), 3))
                .contains("5 is not an item index")
        );
    }
}
