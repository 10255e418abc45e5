//! # diffrec-trainer
//!
//! Owns training and evaluation: the training loop, backends and devices, checkpoints and
//! resume, evaluation and inference (loading the best checkpoint, scoring, top-K), and the
//! training artifacts of `runs/<name>/` (checkpoints, `metrics.parquet`, `curves.svg`,
//! `summary.json`). The run's manifest, the evaluate stage's summary rewrite and
//! `recommendations.parquet` are written by the CLI.
//!
//! It must not: parse pipelines or command lines (the CLI does), or print (it logs through
//! `tracing` and reports progress through a callback).

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod curves;
mod ema;
pub mod error;
mod flex;
pub mod infer;
mod learner;
pub mod memory;
mod optim;
pub mod parallel;
pub mod pool;
mod probe;
/// Ranking metrics live in `diffrec-data` (shared with the cluster stage's LightGCN).
pub use diffrec_data::metrics;
pub mod train;

pub use backend::train_on;
pub use config::{
    Backend, ConfigError, EmaWarmup, EvaluateConfig, Exclude, Parallel, RecommendConfig,
    TrainConfig,
};
pub use error::TrainError;
pub use train::{Progress, RunSpec, Summary, UserCounts, train};
