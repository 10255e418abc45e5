//! # diffrec-model
//!
//! Owns the models: the Gaussian diffusion (schedules in f64, forward process, posterior,
//! training loss with SNR reweighting, importance sampling of steps, reverse sampling) and the
//! MLP denoiser, and L-DiffRec's clustered autoencoder, as Burn modules generic over
//! `B: Backend`.
//!
//! It must not: name a concrete backend outside tests, read files or workspaces, or print.

pub mod autoencoder;
pub mod config;
pub mod denoiser;
pub mod diffusion;
pub mod embedding;
mod lanes;
pub mod latent;
pub mod noise;
mod rowrng;
pub mod sampler;
pub mod schedule;
pub mod shapes;
pub mod sparse;
mod ziggurat;

pub use autoencoder::{ClusteredAutoEncoder, Encoded, ItemClusters, latent_dims, multinomial_nll};
pub use config::{
    AutoEncoderConfig, ConfigError, DecoderKind, DenoiserConfig, DiffusionConfig, EncoderInput,
    LatentShare, MeanType, ModelConfig, Schedule, Variant,
};
pub use denoiser::{Denoiser, InitScheme};
pub use diffusion::{BatchLoss, GaussianDiffusion, Prepared};
pub use latent::{LatentDiffRec, LatentLoss, Recommender};
pub use sampler::StepSampler;
pub use schedule::DiffusionSchedule;
pub use shapes::{ParamShape, ParamShapes, shape_mismatch};
pub use sparse::RowNonzeros;
