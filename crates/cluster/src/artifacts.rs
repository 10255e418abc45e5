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

use arrow_array::{
    ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray, UInt32Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{ClusterError, Result};

pub const STAGE_DIR: &str = "cluster";
pub const ITEM_EMBEDDINGS: &str = "cluster/item_embeddings.parquet";
pub const USER_EMBEDDINGS: &str = "cluster/user_embeddings.parquet";
pub const ITEM_CLUSTERS: &str = "cluster/item_clusters.parquet";
pub const LIGHTGCN_METRICS: &str = "cluster/lightgcn_metrics.parquet";
/// The stage's summary (sizes, LightGCN figures, guard notes) as JSON.
pub const SUMMARY: &str = "cluster/summary.json";

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
