//! What the training loop trains, behind one trait: DiffRec's denoiser with one AdamW, or
//! L-DiffRec's autoencoder and denoiser with two AdamW optimisers (spec §4.4: their own learning
//! rate and weight decay), λ annealed per epoch and the KL weight per batch. The loop in
//! `train.rs` is the same for both.

use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use diffrec_model::{
    AutoEncoderConfig, ClusteredAutoEncoder, Denoiser, GaussianDiffusion, InitScheme,
    LatentDiffRec, Recommender,
};

use crate::checkpoint::{frame, unframe};
use crate::error::TrainError;
use crate::train::RunSpec;

/// Where in the run a step happens (the annealing schedules read it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepAt {
    /// Epochs completed before this step's epoch (0 during the first).
    pub completed_epochs: usize,
    /// Training batches before this one over the whole run.
    pub batches_before: usize,
}

/// One optimisation step's outcome.
pub(crate) struct StepOut {
    /// The batch loss (what was differentiated).
    pub loss: f64,
    /// weight_t · mse per sample, for the step sampler.
    pub weighted: Vec<f64>,
}

/// A model with its optimiser state.
pub(crate) trait Learner<B: AutodiffBackend>: Sized {
    /// One step on the batch `x0` with steps `ts` and importance weights `pts`.
    fn step(
        self,
        diffusion: &GaussianDiffusion,
        x0: Tensor<B, 2>,
        ts: &[usize],
        pts: &[f64],
        at: StepAt,
    ) -> (Self, StepOut);
    /// The model for evaluation (no autodiff, no dropout).
    fn recommender(&self) -> Recommender<B::InnerBackend>;
    fn params(&self) -> usize;
    /// The model record (loadable on any backend).
    fn model_bytes(&self) -> Result<Vec<u8>, TrainError>;
    fn optim_bytes(&self) -> Result<Vec<u8>, TrainError>;
    /// Restores model and optimiser state written by `model_bytes`/`optim_bytes`.
    fn load(self, model: Vec<u8>, optim: Vec<u8>, device: &B::Device) -> Result<Self, TrainError>;
}

pub(crate) fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
}

pub(crate) fn ckpt_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint(e.to_string())
}

type AdamWOf<M, B> = OptimizerAdaptor<AdamW, M, B>;

/// AdamW with PyTorch's defaults (burn's differ: eps 1e-5, weight decay 1e-4).
fn adamw<B: AutodiffBackend, M: AutodiffModule<B>>(weight_decay: f64) -> AdamWOf<M, B> {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay as f32)
        .init::<B, M>()
}

fn record_bytes<B: Backend, R: burn::record::Record<B>>(record: R) -> Result<Vec<u8>, TrainError> {
    recorder().record(record, ()).map_err(ckpt_err)
}

/// DiffRec/T-DiffRec.
pub(crate) struct DenseLearner<B: AutodiffBackend> {
    model: Denoiser<B>,
    optim: AdamWOf<Denoiser<B>, B>,
    lr: f64,
}

impl<B: AutodiffBackend> DenseLearner<B> {
    pub fn new(n_items: usize, spec: &RunSpec, device: &B::Device) -> Self {
        DenseLearner {
            model: Denoiser::new(n_items, &spec.model.denoiser, InitScheme::DiffRec, device),
            optim: adamw(spec.train.weight_decay),
            lr: spec.train.lr,
        }
    }
}

impl<B: AutodiffBackend> Learner<B> for DenseLearner<B> {
    fn step(
        mut self,
        diffusion: &GaussianDiffusion,
        x0: Tensor<B, 2>,
        ts: &[usize],
        pts: &[f64],
        _at: StepAt,
    ) -> (Self, StepOut) {
        let out = diffusion.training_loss(&self.model, x0, ts, pts);
        let loss = out.loss.clone().into_scalar().elem::<f64>();
        let grads = GradientsParams::from_grads(out.loss.backward(), &self.model);
        self.model = self.optim.step(self.lr, self.model, grads);
        let weighted = out.weighted;
        (self, StepOut { loss, weighted })
    }
    fn recommender(&self) -> Recommender<B::InnerBackend> {
        Recommender::Dense(self.model.valid())
    }
    fn params(&self) -> usize {
        self.model.num_params()
    }
    fn model_bytes(&self) -> Result<Vec<u8>, TrainError> {
        record_bytes::<B, _>(self.model.clone().into_record())
    }
    fn optim_bytes(&self) -> Result<Vec<u8>, TrainError> {
        record_bytes::<B, _>(self.optim.to_record())
    }
    fn load(
        mut self,
        model: Vec<u8>,
        optim: Vec<u8>,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        self.model = self
            .model
            .load_record(recorder().load(model, device).map_err(ckpt_err)?);
        self.optim = self
            .optim
            .load_record(recorder().load(optim, device).map_err(ckpt_err)?);
        Ok(self)
    }
}

/// L-DiffRec/LT-DiffRec.
pub(crate) struct LatentLearner<B: AutodiffBackend> {
    model: LatentDiffRec<B>,
    ae_optim: AdamWOf<ClusteredAutoEncoder<B>, B>,
    dn_optim: AdamWOf<Denoiser<B>, B>,
    ae_lr: f64,
    dn_lr: f64,
    anneal: AutoEncoderConfig,
}

impl<B: AutodiffBackend> LatentLearner<B> {
    /// `labels[i]`: item i's cluster (from the cluster stage).
    pub fn new(labels: &[u32], spec: &RunSpec, device: &B::Device) -> Self {
        LatentLearner {
            model: LatentDiffRec::new(labels, &spec.model, device),
            ae_optim: adamw(spec.train.ae_weight_decay),
            dn_optim: adamw(spec.train.weight_decay),
            ae_lr: spec.train.ae_lr,
            dn_lr: spec.train.lr,
            anneal: spec.model.autoencoder.clone(),
        }
    }
}

impl<B: AutodiffBackend> Learner<B> for LatentLearner<B> {
    fn step(
        mut self,
        diffusion: &GaussianDiffusion,
        x0: Tensor<B, 2>,
        ts: &[usize],
        pts: &[f64],
        at: StepAt,
    ) -> (Self, StepOut) {
        let lambda = self.anneal.lambda_at(at.completed_epochs);
        let gamma = self.anneal.kl_weight_at(at.batches_before);
        let out = self.model.loss(diffusion, x0, ts, pts, lambda, gamma);
        let loss = out.loss.clone().into_scalar().elem::<f64>();
        let mut grads = out.loss.backward();
        let ae_grads = GradientsParams::from_module(&mut grads, &self.model.autoencoder);
        let dn_grads = GradientsParams::from_module(&mut grads, &self.model.denoiser);
        let LatentDiffRec {
            autoencoder,
            denoiser,
        } = self.model;
        // Spec §4.4 step 10: the autoencoder's optimiser first, then the denoiser's.
        self.model = LatentDiffRec {
            autoencoder: self.ae_optim.step(self.ae_lr, autoencoder, ae_grads),
            denoiser: self.dn_optim.step(self.dn_lr, denoiser, dn_grads),
        };
        let weighted = out.weighted;
        (self, StepOut { loss, weighted })
    }
    fn recommender(&self) -> Recommender<B::InnerBackend> {
        Recommender::Latent(self.model.valid())
    }
    fn params(&self) -> usize {
        self.model.num_params()
    }
    fn model_bytes(&self) -> Result<Vec<u8>, TrainError> {
        record_bytes::<B, _>(self.model.clone().into_record())
    }
    fn optim_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let ae = record_bytes::<B, _>(self.ae_optim.to_record())?;
        let dn = record_bytes::<B, _>(self.dn_optim.to_record())?;
        Ok(frame(&[&ae, &dn]))
    }
    fn load(
        mut self,
        model: Vec<u8>,
        optim: Vec<u8>,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        self.model = self
            .model
            .load_record(recorder().load(model, device).map_err(ckpt_err)?);
        let mut parts = unframe(&optim, 2)?.into_iter();
        let (ae, dn) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        self.ae_optim = self
            .ae_optim
            .load_record(recorder().load(ae, device).map_err(ckpt_err)?);
        self.dn_optim = self
            .dn_optim
            .load_record(recorder().load(dn, device).map_err(ckpt_err)?);
        Ok(self)
    }
}
