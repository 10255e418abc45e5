//! # diffrec-cluster
//!
//! Owns the item-clustering stage of L-DiffRec/LT-DiffRec: LightGCN pre-training over the
//! workspace's training interactions and k-means over the item embeddings, writing
//! `cluster/…` artifacts.
//!
//! Status: only the configuration (`cluster` section of a pipeline) exists so far; the stage
//! itself is the clustering issue's work and the CLI says so plainly when asked to run it.
//!
//! It must not: depend on the model or trainer crates, or print (it logs through `tracing`).

pub mod config;

pub use config::{ClusterConfig, ConfigError, LightGcnConfig};
