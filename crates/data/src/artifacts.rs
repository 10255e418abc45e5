//! The ingest stage's artifacts: their keys, Arrow schemas and `stats.json`, and the reader that
//! turns `data/interactions.parquet` back into per-split CSR matrices for training.
//!
//! | key | content |
//! |---|---|
//! | `data/interactions.parquet` | `user_idx` u32, `item_idx` u32, `user_id` utf8, `item_id` utf8, `timestamp` i64 (nullable), `split` utf8, `weight` f32 |
//! | `data/users.parquet` | `user_idx` u32, `user_id` utf8 |
//! | `data/items.parquet` | `item_idx` u32, `item_id` utf8 |
//! | `data/stats.json` | [`DatasetStats`] |
//! | `data/source.json` | [`SourceCounts`] (no input of a later stage) |

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use crate::csr::CsrMatrix;
use crate::error::{DataError, Result};
use crate::manifest::{Recorded, read_recorded};
use crate::workspace::Workspace;

pub const INTERACTIONS: &str = "data/interactions.parquet";
pub const USERS: &str = "data/users.parquet";
pub const ITEMS: &str = "data/items.parquet";
pub const STATS: &str = "data/stats.json";
pub const SOURCE: &str = "data/source.json";

/// Schema of `data/interactions.parquet`.
pub fn interactions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_idx", DataType::UInt32, false),
        Field::new("item_idx", DataType::UInt32, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new("item_id", DataType::Utf8, false),
        Field::new("timestamp", DataType::Int64, true),
        Field::new("split", DataType::Utf8, false),
        Field::new("weight", DataType::Float32, false),
    ]))
}

/// Schema of `data/users.parquet` (`entity` = "user") or `data/items.parquet` ("item").
pub fn ids_schema(entity: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(format!("{entity}_idx"), DataType::UInt32, false),
        Field::new(format!("{entity}_id"), DataType::Utf8, false),
    ]))
}

/// `data/stats.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    pub users: u64,
    pub items: u64,
    /// Rows per split: `train`, `valid`, `test`.
    pub rows: BTreeMap<String, u64>,
    /// All rows / (users × items).
    pub density: f64,
    /// Train rows / (users × items).
    pub train_density: f64,
    /// Rows injected by `data.noise` (included in `rows`).
    pub noise_rows: u64,
    /// Whether `weight` holds temporal weights.
    pub weighted: bool,
}

/// `data/source.json`: the source's size and the rows each filter removed, in the order they
/// run; `rows − dropped.total()` = the rows written less `noise_rows`. Its own file, not part
/// of `stats.json`: later stages hash `stats.json` among their inputs, and these counts say
/// nothing about the data they train on (absent from workspaces ingested before 2026-12-02).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceCounts {
    pub rows: u64,
    pub users: u64,
    pub items: u64,
    pub dropped: Dropped,
}

/// Rows removed at ingest, per filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    /// Repeated (user, item) rows, all but each pair's latest (`data.dedup`).
    pub duplicates: u64,
    /// Rows rated below `data.min_rating`.
    pub below_min_rating: u64,
    /// Rows of users or items with fewer than `data.k_core` interactions.
    pub k_core: u64,
    /// Of `below_min_rating`, the rows sampled as natural noise (`data.noise.kind: natural`);
    /// `stats.json`'s `noise_rows` counts those written.
    #[serde(default)]
    pub kept_as_noise: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.duplicates + self.below_min_rating + self.k_core
    }
}

/// The three splits as CSR matrices over (user_idx, item_idx), values = `weight`.
#[derive(Debug, Clone)]
pub struct SplitMatrices {
    pub n_users: usize,
    pub n_items: usize,
    pub train: CsrMatrix,
    pub valid: CsrMatrix,
    pub test: CsrMatrix,
}

/// `data/stats.json`, checked against the ingest manifest like the Parquet files.
async fn read_stats(ws: &Workspace, recorded: &Recorded) -> Result<DatasetStats> {
    match recorded.read(ws, STATS).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| DataError::BadArtifact {
            key: STATS.into(),
            message: format!(
                "{source}: changed or damaged since diffrec wrote it; rerun the ingest stage \
                 with `--force`"
            ),
        }),
        Err(DataError::MissingArtifact { workspace, key, .. }) => Err(DataError::MissingArtifact {
            workspace,
            key,
            hint: "run the ingest stage first".into(),
        }),
        Err(e) => Err(e),
    }
}

/// Reads `data/interactions.parquet` into per-split CSR matrices (rows sorted by item index),
/// each file checked against what the ingest manifest records of it.
pub async fn load_splits(ws: &Workspace) -> Result<SplitMatrices> {
    // One reading of the manifest for both: a re-ingest between the two cannot pair one
    // ingest's stats with another's interactions.
    let recorded = Recorded::load(ws, crate::ingest::STAGE_DIR).await?;
    let stats = read_stats(ws, &recorded).await?;
    let bytes = recorded.read(ws, INTERACTIONS).await?;
    let pq = |source| DataError::Parquet {
        key: INTERACTIONS.into(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(pq)?;
    let mask = ProjectionMask::columns(
        builder.parquet_schema(),
        ["user_idx", "item_idx", "split", "weight"],
    );
    let reader = builder
        .with_projection(mask)
        .with_batch_size(65_536)
        .build()
        .map_err(pq)?;
    let (n_users, n_items) = (stats.users as usize, stats.items as usize);
    let mut triplets: [Vec<(u32, u32, f32)>; 3] = Default::default();
    for batch in reader {
        let batch = batch.map_err(|source| DataError::Arrow {
            context: format!("reading {INTERACTIONS}"),
            source,
        })?;
        let bad = |m: &str| DataError::BadArtifact {
            key: INTERACTIONS.into(),
            message: m.to_owned(),
        };
        let u = batch
            .column_by_name("user_idx")
            .and_then(|c| c.as_primitive_opt::<UInt32Type>())
            .ok_or_else(|| bad("user_idx is not u32"))?;
        let i = batch
            .column_by_name("item_idx")
            .and_then(|c| c.as_primitive_opt::<UInt32Type>())
            .ok_or_else(|| bad("item_idx is not u32"))?;
        let w = batch
            .column_by_name("weight")
            .and_then(|c| c.as_primitive_opt::<Float32Type>())
            .ok_or_else(|| bad("weight is not f32"))?;
        let s = batch
            .column_by_name("split")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| bad("split is not utf8"))?;
        for r in 0..batch.num_rows() {
            let k = match s.value(r) {
                "train" => 0,
                "valid" => 1,
                "test" => 2,
                other => return Err(bad(&format!("unknown split {other:?} at row {r}"))),
            };
            let (uu, ii) = (u.value(r), i.value(r));
            if uu as usize >= n_users || ii as usize >= n_items {
                return Err(bad(&format!(
                    "index ({uu}, {ii}) outside {n_users}×{n_items}"
                )));
            }
            triplets[k].push((uu, ii, w.value(r)));
        }
    }
    let [tr, va, te] = triplets;
    Ok(SplitMatrices {
        n_users,
        n_items,
        train: CsrMatrix::from_triplets(n_users, n_items, tr),
        valid: CsrMatrix::from_triplets(n_users, n_items, va),
        test: CsrMatrix::from_triplets(n_users, n_items, te),
    })
}

/// Original ids by dense index from `data/users.parquet` (`entity` = "user") or
/// `data/items.parquet` ("item"), checked against what the ingest manifest records of it.
pub async fn load_ids(ws: &Workspace, entity: &str) -> Result<Vec<String>> {
    let key = if entity == "user" { USERS } else { ITEMS };
    let bytes = read_recorded(ws, crate::ingest::STAGE_DIR, key).await?;
    let pq = |source| DataError::Parquet {
        key: key.into(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(pq)?
        .build()
        .map_err(pq)?;
    let mut ids = Vec::new();
    let col = format!("{entity}_id");
    for batch in reader {
        let batch = batch.map_err(|source| DataError::Arrow {
            context: format!("reading {key}"),
            source,
        })?;
        let s = batch
            .column_by_name(&col)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| DataError::BadArtifact {
                key: key.into(),
                message: format!("{col} is not utf8"),
            })?;
        ids.extend(s.iter().map(|v| v.unwrap_or_default().to_owned()));
    }
    Ok(ids)
}
