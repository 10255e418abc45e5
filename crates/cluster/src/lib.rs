//! # diffrec-cluster
//!
//! Owns the item clustering stage of L-DiffRec/LT-DiffRec: LightGCN pre-training over the
//! training graph (CSR propagation and its gradient written here, parallelised with rayon),
//! k-means over the item embeddings with `linfa-clustering`, the guards around it, and the
//! `cluster/` artifacts.
//!
//! It must not: depend on Burn or the model/trainer crates (it is independent of them), print
//! (it logs through `tracing` and reports progress through a callback), or let ndarray 0.16 /
//! rand 0.8 types (linfa's) escape `kmeans.rs`.

pub mod adam;
pub mod ari;
pub mod artifacts;
pub mod bpr;
pub mod checkpoint;
pub mod config;
pub mod embeddings;
pub mod error;
pub mod graph;
pub mod kmeans;
pub mod lightgcn;
pub mod stage;

pub use config::{ClusterConfig, ConfigError, LightGcnConfig};
pub use error::ClusterError;
pub use lightgcn::Progress;
pub use stage::{ClusterReport, ClusterSummary, run_cluster};
