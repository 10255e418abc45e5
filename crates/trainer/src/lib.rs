//! # diffrec-trainer
//!
//! Owns training and evaluation: the training loop, devices and backends, checkpoints and
//! resume, evaluation metrics, and the `runs/<name>/…` artifacts.
//!
//! Status: only the configuration (`train`, `evaluate` and `recommend` sections of a pipeline)
//! exists so far; the loops are the DiffRec issue's work.
//!
//! It must not: parse pipelines or command lines (the CLI does), or print (it logs through
//! `tracing`).

pub mod config;

pub use config::{Backend, ConfigError, EvaluateConfig, RecommendConfig, TrainConfig};
