//! # diffrec-data
//!
//! Owns everything between a raw interaction log and the tensors' doorstep: reading sources
//! (CSV, Parquet, MovieLens, the DiffRec paper's `.npy` split), the ingest transforms (Polars),
//! the [`Workspace`] artifact store over `object_store`, Parquet artifacts written with arrow-rs,
//! stage manifests, the synthetic data generator, the in-memory CSR view training reads, and the
//! ranking metrics every stage that ranks items shares (spec §6).
//!
//! It must not: depend on Burn or any model code, print to stdout/stderr (it logs through
//! `tracing`), or leave a partially written artifact behind (all writes are atomic).

pub mod arrow_bridge;
pub mod artifacts;
pub mod claim;
pub mod config;
pub mod csr;
pub mod differences;
pub mod error;
pub mod ingest;
pub mod manifest;
pub mod metrics;
pub mod movielens;
pub mod npy;
mod parquet_source;
pub mod running;
pub mod source;
pub mod synthetic;
pub mod transform;
pub mod workspace;

pub use artifacts::{DatasetStats, Dropped, SourceCounts, SplitMatrices, load_splits};
pub use config::DataConfig;
pub use csr::CsrMatrix;
pub use error::{DataError, Result};
pub use ingest::{IngestReport, run_ingest};
pub use manifest::StageManifest;
pub use workspace::Workspace;
