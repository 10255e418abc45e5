//! # diffrec-model
//!
//! Owns the models: the Gaussian diffusion (schedules, forward process, posterior, training loss,
//! reverse sampling), the MLP denoiser and, for L-DiffRec, the clustered autoencoder — as Burn
//! modules generic over `B: Backend`.
//!
//! Status: only the configuration (`model` section of a pipeline) exists so far; the Burn
//! modules are the DiffRec issue's work.
//!
//! It must not: name a concrete backend, read files or workspaces, or print.

pub mod config;

pub use config::{
    ConfigError, DenoiserConfig, DiffusionConfig, MeanType, ModelConfig, Schedule, Variant,
};
