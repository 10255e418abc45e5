//! # diffrec-model
//!
//! Owns the models: the Gaussian diffusion (schedules in f64, forward process, posterior,
//! training loss with SNR reweighting, importance sampling of steps, reverse sampling) and the
//! MLP denoiser, as Burn modules generic over `B: Backend`. The clustered autoencoder of
//! L-DiffRec is still to come (the L-DiffRec issue).
//!
//! It must not: name a concrete backend outside tests, read files or workspaces, or print.

pub mod config;
pub mod denoiser;
pub mod diffusion;
pub mod embedding;
pub mod sampler;
pub mod schedule;

pub use config::{
    ConfigError, DenoiserConfig, DiffusionConfig, MeanType, ModelConfig, Schedule, Variant,
};
pub use denoiser::{Denoiser, InitScheme};
pub use diffusion::{BatchLoss, GaussianDiffusion};
pub use sampler::StepSampler;
pub use schedule::DiffusionSchedule;
