//! What the training loop trains, behind one trait: DiffRec's denoiser with one AdamW, or
//! L-DiffRec's autoencoder and denoiser with two AdamW optimisers (spec §4.4: their own learning
//! rate and weight decay), λ annealed per epoch and the KL weight per batch. The loop in
//! `train.rs` is the same for both.

use burn::module::{AutodiffModule, Module, ModuleMapper, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use diffrec_model::{
    AutoEncoderConfig, ClusteredAutoEncoder, Denoiser, GaussianDiffusion, InitScheme, ItemClusters,
    LatentDiffRec, ParamShapes, Recommender, RowNonzeros, noise, shape_mismatch,
};

use crate::checkpoint::{frame, unframe};
use crate::error::TrainError;
use crate::optim::AdamW;
use crate::parallel::{Shard, gather, sync};
use crate::train::RunSpec;

/// Where in the run a step happens (the annealing schedules read it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepAt {
    /// Epochs completed before this step's epoch (0 during the first).
    pub completed_epochs: usize,
    /// Training batches before this one over the whole run.
    pub batches_before: usize,
}

/// One training batch, on the host: dense rows and their sampled steps.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    /// Row-major [rows, cols].
    pub x0: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub ts: Vec<usize>,
    /// p_t·T per row (importance weights).
    pub pts: Vec<f64>,
    /// Seed of the step's noise and dropout (`diffrec_model::noise`); shards share it.
    pub seed: u64,
    /// Entries covering the rows' nonzeros, taken from the sparse rows where the learner reads
    /// them ([`Learner::reads_sparse`]); `None`: found by a scan of `x0` where needed.
    pub nonzeros: Option<RowNonzeros>,
}

impl Batch {
    /// Starts a step on this batch: seeds this thread's noise streams (at the shard's first row
    /// within the whole batch) and returns x0 on `device`, the steps and their weights.
    fn start<B: Backend>(
        self,
        shard: Option<&Shard>,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Vec<usize>, Vec<f64>) {
        let (rows, cols) = (self.rows, self.cols);
        let (x0, ts, pts) = self.start_on_host(shard);
        let x0 = Tensor::from_data(TensorData::new(x0, [rows, cols]), device);
        (x0, ts, pts)
    }

    /// [`Batch::start`] keeping x0 on the host (row-major, `cols` wide).
    fn start_on_host(self, shard: Option<&Shard>) -> (Vec<f32>, Vec<usize>, Vec<f64>) {
        noise::reseed(self.seed, shard.map_or(0, |s| s.offset));
        (self.x0, self.ts, self.pts)
    }
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
    /// One step on `batch`. With a `shard`, the batch is this replica's part of a larger one:
    /// the loss is scaled by its share and gradients and statistics are summed over the
    /// replicas (see `parallel.rs`), so every replica takes the whole batch's step.
    fn step(
        self,
        diffusion: &GaussianDiffusion,
        batch: Batch,
        at: StepAt,
        shard: Option<&Shard>,
    ) -> Result<(Self, StepOut), TrainError>;
    /// The model for evaluation (no autodiff, no dropout).
    fn recommender(&self) -> Recommender<B::InnerBackend>;
    fn params(&self) -> usize;
    /// The model record (loadable on any backend).
    fn model_bytes(&self) -> Result<Vec<u8>, TrainError>;
    fn optim_bytes(&self) -> Result<Vec<u8>, TrainError>;
    /// Restores the model and, when given, the optimiser state written by
    /// `model_bytes`/`optim_bytes`.
    fn load(self, model: Vec<u8>, optim: Option<Vec<u8>>) -> Result<Self, TrainError>;
    /// Whether a step waits for other threads of this learner (data-parallel replicas). Such a
    /// step must not hold one of rayon's pool threads (`pool.rs`): the replicas' own parallel
    /// operations need the pool, and with one pool thread they would never run.
    fn waits_on_other_threads(&self) -> bool {
        false
    }
    /// Whether a step reads its batch's nonzero entries ([`Batch::nonzeros`]): the loop then
    /// lists them from the sparse rows it densifies the batch from.
    fn reads_sparse(&self) -> bool {
        false
    }
    /// Checks, before the first step, that every node of a multi-node run starts from the same
    /// `epoch` (their workspaces may hold different checkpoints). Nothing to check within one
    /// process.
    fn agree_on_start(&self, _epoch: usize) -> Result<(), TrainError> {
        Ok(())
    }
    /// Checks, after [`Learner::agree_on_start`] (by then node 0 has claimed the run), that
    /// every node of a multi-node run reads node 0's `claim` token in its workspace: that they
    /// share one. Nothing to check within one process.
    fn agree_on_workspace(&self, _claim: &str) -> Result<(), TrainError> {
        Ok(())
    }
}

pub(crate) fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
}

pub(crate) fn ckpt_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint(e.to_string())
}

type AdamWOf<M, B> = OptimizerAdaptor<AdamW, M, B>;

/// Replaces every parameter id by its visiting order. Burn draws ids at random in each process;
/// data parallelism across nodes all-reduces gradients in id order, so every node must agree.
struct StableIds(u64);

impl<B: Backend> ModuleMapper<B> for StableIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        self.0 += 1;
        Param::from_mapped_value(ParamId::from(self.0), tensor, mapper)
    }
}

fn stable_ids<B: Backend, M: Module<B>>(module: M) -> M {
    module.map(&mut StableIds(0))
}

/// AdamW with PyTorch's defaults (burn's differ: eps 1e-5, weight decay 1e-4); fused on the
/// CPU backend (`optim.rs`).
fn adamw<B: AutodiffBackend, M: AutodiffModule<B>>(weight_decay: f64) -> AdamWOf<M, B> {
    OptimizerAdaptor::from(AdamW {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: weight_decay as f32,
    })
}

pub(crate) fn record_bytes<B: Backend, R: burn::record::Record<B>>(
    record: R,
) -> Result<Vec<u8>, TrainError> {
    recorder().record(record, ()).map_err(|e| {
        // Seen only where memory ran short (an address-space limit): the writer's buffer in
        // memory failed to grow.
        let out_of_memory = e.to_string().contains("MessagePack value");
        let e = ckpt_err(e);
        match (out_of_memory, e) {
            (true, TrainError::Checkpoint(what)) => TrainError::Checkpoint(format!(
                "{what}: encoding a checkpoint's records failed, most likely for want of memory \
                 (this process holds \
                 {} now; the train stage's first log lines say what the model needs): narrower \
                 model.denoiser.dims (L-DiffRec: model.autoencoder.dims), or more memory (a \
                 higher ulimit -v or container limit)",
                crate::memory::size(crate::memory::rss_bytes())
            )),
            (_, e) => e,
        }
    })
}

/// The record of a model of any variant (what `best.ckpt` and the parameter average hold).
pub(crate) fn recommender_bytes<B: Backend>(m: &Recommender<B>) -> Result<Vec<u8>, TrainError> {
    match m {
        Recommender::Dense(m) => record_bytes::<B, _>(m.clone().into_record()),
        Recommender::Latent(m) => record_bytes::<B, _>(m.clone().into_record()),
    }
}

/// Where a record comes from, and what the user can do when it does not fit (for errors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub checkpoint: &'a str,
    pub hint: &'a str,
}

impl Origin<'_> {
    pub fn mismatch(&self, why: String) -> TrainError {
        TrainError::ModelMismatch {
            checkpoint: self.checkpoint.to_owned(),
            why,
            hint: self.hint.to_owned(),
        }
    }
}

/// A resumed run's records: the fingerprint check before loading has ruled out another
/// configuration, so a mismatch means a damaged or foreign checkpoint.
/// The caller names the file ([`TrainError::within`]).
pub(crate) const RESUMED: Origin<'static> = Origin {
    checkpoint: "the model record",
    hint: "It is damaged or was written by another diffrec version: start the run over with \
           `--force`",
};

/// `m` with the parameters of a record written by [`recommender_bytes`].
pub(crate) fn load_recommender<B: Backend>(
    m: Recommender<B>,
    bytes: Vec<u8>,
    origin: Origin,
    device: &B::Device,
) -> Result<Recommender<B>, TrainError> {
    Ok(match m {
        Recommender::Dense(m) => Recommender::Dense(load_checked(m, bytes, origin, device)?),
        Recommender::Latent(m) => Recommender::Latent(load_checked(m, bytes, origin, device)?),
    })
}

/// `model` with the parameters of `bytes` (a record of the same module type), after checking
/// every parameter's path and shape against `model`: burn would load another configuration's
/// record without a word and fail later inside a matrix product.
pub(crate) fn load_checked<B: Backend, M: Module<B>>(
    model: M,
    bytes: Vec<u8>,
    origin: Origin,
    device: &B::Device,
) -> Result<M, TrainError>
where
    M::Record: ParamShapes,
{
    let record: M::Record = recorder().load(bytes, device).map_err(ckpt_err)?;
    match shape_mismatch(&model.clone().into_record().shapes(), &record.shapes()) {
        Some(why) => Err(origin.mismatch(why)),
        None => Ok(model.load_record(record)),
    }
}

/// The differentiated loss of a replica: scaled by its share of the batch, so that summing
/// the replicas' gradients gives the gradient of the whole batch's mean.
fn scaled<B: Backend>(loss: Tensor<B, 1>, shard: Option<&Shard>) -> Tensor<B, 1> {
    match shard {
        Some(s) => loss * s.scale(),
        None => loss,
    }
}

/// DiffRec/T-DiffRec.
pub(crate) struct DenseLearner<B: AutodiffBackend> {
    model: Denoiser<B>,
    optim: AdamWOf<Denoiser<B>, B>,
    lr: f64,
    device: B::Device,
}

impl<B: AutodiffBackend> DenseLearner<B> {
    pub fn new(n_items: usize, spec: &RunSpec, device: &B::Device) -> Self {
        DenseLearner {
            model: stable_ids(Denoiser::new(
                n_items,
                &spec.model.denoiser,
                InitScheme::DiffRec,
                device,
            )),
            optim: adamw(spec.train.weight_decay),
            lr: spec.train.lr,
            device: device.clone(),
        }
    }
}

impl<B: AutodiffBackend> Learner<B> for DenseLearner<B> {
    fn step(
        mut self,
        diffusion: &GaussianDiffusion,
        batch: Batch,
        _at: StepAt,
        shard: Option<&Shard>,
    ) -> Result<(Self, StepOut), TrainError> {
        let cols = batch.cols;
        let (x0, ts, pts) = batch.start_on_host(shard);
        let out = diffusion.training_loss_rows(&self.model, x0, cols, &ts, &pts, &self.device);
        let loss_t = scaled(out.loss, shard);
        let loss = loss_t.clone().into_scalar().elem::<f64>();
        let grads = GradientsParams::from_grads(loss_t.backward(), &self.model);
        let grads = sync::<B>(grads, shard)?;
        self.model = self.optim.step(self.lr, self.model, grads);
        let out = gather::<B>(loss, out.weighted, shard, &self.device)?;
        Ok((self, out))
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
    fn load(mut self, model: Vec<u8>, optim: Option<Vec<u8>>) -> Result<Self, TrainError> {
        let device = &self.device;
        self.model = load_checked(self.model, model, RESUMED, device)?;
        if let Some(optim) = optim {
            self.optim = self
                .optim
                .load_record(recorder().load(optim, device).map_err(ckpt_err)?);
        }
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
    device: B::Device,
}

impl<B: AutodiffBackend> LatentLearner<B> {
    /// `clusters`: the items' clusters (from the cluster stage) and their latent weights.
    /// Several `devices`: model parallelism over the cluster encoders; the batch and the
    /// denoiser on `devices[0]`.
    pub fn new(clusters: &ItemClusters, spec: &RunSpec, devices: &[B::Device]) -> Self {
        let device = &devices[0];
        LatentLearner {
            model: stable_ids(LatentDiffRec::placed(clusters, &spec.model, devices)),
            ae_optim: adamw(spec.train.ae_weight_decay),
            dn_optim: adamw(spec.train.weight_decay),
            ae_lr: spec.train.ae_lr,
            dn_lr: spec.train.lr,
            anneal: spec.model.autoencoder.clone(),
            device: device.clone(),
        }
    }
}

impl<B: AutodiffBackend> Learner<B> for LatentLearner<B> {
    fn reads_sparse(&self) -> bool {
        self.model.autoencoder.reads_sparse()
    }
    fn step(
        mut self,
        diffusion: &GaussianDiffusion,
        mut batch: Batch,
        at: StepAt,
        shard: Option<&Shard>,
    ) -> Result<(Self, StepOut), TrainError> {
        let lambda = self.anneal.lambda_at(at.completed_epochs);
        let gamma = self.anneal.kl_weight_at(at.batches_before);
        // The encoders' sparse first layers take the batch's nonzeros from the loop (listed from
        // the sparse rows) or from the host rows here, never read back from the device.
        let nonzeros = match batch.nonzeros.take() {
            Some(nz) => Some(nz),
            None => self
                .reads_sparse()
                .then(|| RowNonzeros::of_dense(&batch.x0, batch.cols)),
        };
        let (x0, ts, pts) = batch.start(shard, &self.device);
        let out = self
            .model
            .loss(diffusion, x0, nonzeros.as_ref(), &ts, &pts, lambda, gamma);
        let loss_t = scaled(out.loss, shard);
        let loss = loss_t.clone().into_scalar().elem::<f64>();
        let mut grads = loss_t.backward();
        let ae_grads = sync::<B>(
            GradientsParams::from_module(&mut grads, &self.model.autoencoder),
            shard,
        )?;
        let dn_grads = sync::<B>(
            GradientsParams::from_module(&mut grads, &self.model.denoiser),
            shard,
        )?;
        let LatentDiffRec {
            autoencoder,
            denoiser,
        } = self.model;
        // Spec §4.4 step 10: the autoencoder's optimiser first, then the denoiser's.
        self.model = LatentDiffRec {
            autoencoder: self.ae_optim.step(self.ae_lr, autoencoder, ae_grads),
            denoiser: self.dn_optim.step(self.dn_lr, denoiser, dn_grads),
        };
        let out = gather::<B>(loss, out.weighted, shard, &self.device)?;
        Ok((self, out))
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
    fn load(mut self, model: Vec<u8>, optim: Option<Vec<u8>>) -> Result<Self, TrainError> {
        let device = &self.device;
        self.model = load_checked(self.model, model, RESUMED, device)?;
        let Some(optim) = optim else {
            return Ok(self);
        };
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
