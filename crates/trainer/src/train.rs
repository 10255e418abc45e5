//! The training loop (spec §5), evaluation during training, checkpoints and resume, and the
//! run artifacts: `runs/<run>/metrics.parquet`, `summary.json`, `checkpoints/{latest,best}.ckpt`.
//!
//! Reproducibility and resume: every epoch re-seeds both the host RNG (permutation, step
//! sampling) and the backend RNG (noise, dropout) from (seed, epoch), so a run resumed from the
//! checkpoint written after epoch e continues exactly as the uninterrupted run would have.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use bytes::Bytes;
use diffrec_data::claim::{Claim, Holder};
use diffrec_data::manifest::manifest_key;
use diffrec_data::{CsrMatrix, SplitMatrices, Workspace};
use diffrec_model::{
    EncoderInput, GaussianDiffusion, ItemClusters, ModelConfig, Prepared, Recommender, RowNonzeros,
    StepSampler, Variant,
};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    Checkpoint, Evaluation, STATE_AT, TrainState, checked_state, decode, decode_state, encode,
    encode_parts, state_range, this_diffrec,
};
use crate::config::Parallel;
use crate::config::TrainConfig;
use crate::curves::{CurvePoint, render_svg};
use crate::ema::Ema;
use crate::error::TrainError;
use crate::learner::{Batch, DenseLearner, LatentLearner, Learner, StepAt};
use crate::metrics::{MetricsTable, SplitEvaluator, median, round4, users_per_block};
use crate::parallel::{DataParallel, topology};
use crate::pool::{computes_on_pool, on_pool_thread};

/// Most users per evaluation block.
const EVAL_BLOCK: usize = 2048;

/// Users per evaluation or recommendation block for a catalogue of `n_items` items: at most
/// 2,048, and at most `BLOCK_CELLS` (2^26) users × items, so that each `[users, items]` buffer
/// of a block (the densified rows, the model's scores, their copy on the host) stays within
/// 256 MiB of f32. 2,048 users up to 32,768 items, 335 at 200,000 items, 67 at a million
/// (docs/benchmarks.md, "Evaluation blocks by cells").
pub fn eval_block(n_items: usize) -> usize {
    users_per_block(n_items, EVAL_BLOCK)
}

/// What to train.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Run name: artifacts go to `runs/<run>/`.
    pub run: String,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub ks: Vec<usize>,
    /// Backend name, for the summary.
    pub backend: String,
    /// Hash of everything that defines the run (configs, input data); checkpoints carry it.
    pub fingerprint: String,
    /// What `fingerprint` hashes, as the caller wants it read back (the CLI: the config tree
    /// without the keys the fingerprint leaves out, and the input hashes); checkpoints carry it
    /// too, so a stopped run refused for another configuration or data can say which.
    pub fingerprinted: serde_json::Value,
    /// L-DiffRec/LT-DiffRec: each item's cluster (`cluster/item_clusters.parquet`); `None` for
    /// the other variants.
    pub item_clusters: Option<Vec<u32>>,
    /// Start over even when a latest checkpoint exists: no node reads it, and node 0 deletes
    /// the run's checkpoints once every node has agreed to start (so nodes that refuse to
    /// train together leave the old run as it was; its manifest too, which node 0 deletes
    /// at that point in every run).
    pub fresh: bool,
}

/// Progress events for the caller's display.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Training resumes after `epoch` completed epochs.
    Resumed {
        epoch: usize,
    },
    /// An epoch started; `batches` steps follow.
    EpochStart {
        epoch: usize,
        batches: usize,
    },
    Batch,
    /// An epoch finished.
    EpochEnd {
        epoch: usize,
        loss: f64,
        seconds: f64,
    },
    /// An evaluation of the model after `epoch` starts, ranking every item for `users` users
    /// (the whole of it runs before the next event).
    Evaluating {
        epoch: usize,
        users: usize,
    },
    /// An evaluation finished: Recall@`select_k` (20, or the first of `evaluate.ks` without 20:
    /// the metric that selects the best epoch) on both splits.
    Evaluated {
        epoch: usize,
        select_k: usize,
        valid_recall: f64,
        test_recall: f64,
        best_epoch: usize,
    },
    /// Early stopping.
    Stopped {
        epoch: usize,
        best_epoch: usize,
    },
}

/// `runs/<run>/summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub run: String,
    pub variant: Variant,
    pub backend: String,
    pub seed: u64,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub params: usize,
    pub valid: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
    pub train_seconds: f64,
    pub epoch_seconds_median: f64,
    pub eval_seconds_median: f64,
    pub peak_rss_bytes: u64,
    /// L-DiffRec/LT-DiffRec: how the encoders' first layers read the rows in training
    /// (`model.autoencoder.input` with `auto` resolved: `dense` or `sparse`). Absent for the
    /// other variants and in summaries written before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_input: Option<EncoderInput>,
    /// How many users the metrics in `valid` and `test` cover. Absent in summaries written
    /// before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<UserCounts>,
    /// Which stage computed `valid` and `test`, with which reverse pass. Absent in summaries
    /// written before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_by: Option<EvaluatedBy>,
}

/// `summary.json`'s `evaluated_by`: the train stage (its evaluation of the best epoch) or the
/// evaluate stage (which may be run with other `sampling_steps` and `sampling_noise`, and with
/// other `evaluate.ks`, whose metrics then fill `valid` and `test`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluatedBy {
    /// `train` or `evaluate`.
    pub stage: String,
    /// `model.diffusion.sampling_steps` of that evaluation.
    pub sampling_steps: usize,
    /// `model.diffusion.sampling_noise` of that evaluation (drawn as `seed_evaluation` says).
    pub sampling_noise: bool,
    /// `evaluate.ks` of the evaluate stage's evaluation (absent for the train stage's, and in
    /// summaries written before 2026-12-02's thirty-second session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ks: Option<Vec<usize>>,
    /// The SHA-256 of the best checkpoint the evaluate stage evaluated, as the run's manifest
    /// records it (absent as `ks` is). With `ks` and the sampling settings, what makes a later
    /// evaluate stage up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_sha256: Option<String>,
}

impl EvaluatedBy {
    pub fn new(stage: &str, model: &ModelConfig) -> Self {
        EvaluatedBy {
            stage: stage.to_owned(),
            sampling_steps: model.diffusion.sampling_steps,
            sampling_noise: model.diffusion.sampling_noise,
            ks: None,
            checkpoint_sha256: None,
        }
    }
}

/// `summary.json`'s `users`: each metric is summed over a split's users with held-out items
/// and divided by `all` (the authors' convention), so `metric × all / test` is the metric
/// averaged over the users with test items only, as other libraries report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCounts {
    /// Users in the data (the metrics' denominator).
    pub all: usize,
    /// Users with validation items.
    pub valid: usize,
    /// Users with test items.
    pub test: usize,
}

impl UserCounts {
    pub fn of(data: &SplitMatrices) -> Self {
        UserCounts {
            all: data.n_users,
            valid: data.valid.non_empty_rows(),
            test: data.test.non_empty_rows(),
        }
    }
}

pub fn run_dir(run: &str) -> String {
    format!("runs/{run}")
}
pub fn latest_key(run: &str) -> String {
    format!("runs/{run}/checkpoints/latest.ckpt")
}
pub fn best_key(run: &str) -> String {
    format!("runs/{run}/checkpoints/best.ckpt")
}
pub fn summary_key(run: &str) -> String {
    format!("runs/{run}/summary.json")
}
pub fn curves_key(run: &str) -> String {
    format!("runs/{run}/curves.svg")
}
pub fn metrics_key(run: &str) -> String {
    format!("runs/{run}/metrics.parquet")
}
/// Written by the recommend stage (the CLI); named here because training gives it up.
pub fn recommendations_key(run: &str) -> String {
    format!("runs/{run}/recommendations.parquet")
}

/// Where the run's [`Claim`] lives: who is writing it (the process that started training it
/// last).
fn owner_key(run: &str) -> String {
    format!("runs/{run}/checkpoints/_owner")
}

/// What node 0 gives up once every node has agreed to train, so that nodes which refuse to
/// train together leave the run as it was: the manifest that calls the run complete, the
/// outputs that describe the finished run's best checkpoint (`summary.json` and
/// `recommendations.parquet`: a kill during this training would leave them beside another best
/// checkpoint, and the evaluate stage would mix the two; the training writes the summary again
/// when it ends, whether or not it evaluates), and with `fresh` (`--force`) the checkpoints, all
/// but the `claim` this process holds, and the old evaluations (`metrics.parquet`,
/// `curves.svg`). With `fresh`, `latest.ckpt` goes first, before the manifest: a kill in
/// between leaves neither an old epoch to resume without its best nor an old checkpoint
/// without its manifest, which a later training would refuse. (Resumed, `curves.svg` stays: it is rewritten with
/// `metrics.parquet` at each evaluation, so it always shows the evaluations so far.)
async fn give_up_previous(
    ws: &Workspace,
    run: &str,
    claim: &Claim,
    fresh: bool,
) -> Result<(), TrainError> {
    ensure_sole_writer(ws, run, claim).await?;
    if fresh {
        ws.delete(&latest_key(run)).await?;
    }
    ws.delete(&manifest_key(&run_dir(run))).await?;
    for key in [summary_key(run), recommendations_key(run)] {
        ws.delete(&key).await?;
    }
    if fresh {
        for key in ws.list(&format!("runs/{run}/checkpoints")).await? {
            if key != claim.key() {
                ws.delete(&key).await?;
            }
        }
        // The old run's evaluations describe checkpoints that are gone (a fresh run that
        // stops before its first evaluation would leave them as its own).
        for key in [metrics_key(run), curves_key(run)] {
            ws.delete(&key).await?;
        }
    }
    Ok(())
}

/// Fails when another process has claimed the run since this one did: both would write its
/// checkpoints, metrics and summary.
async fn ensure_sole_writer(ws: &Workspace, run: &str, claim: &Claim) -> Result<(), TrainError> {
    match claim.holder(ws).await? {
        Holder::This => return Ok(()),
        Holder::Nobody => {
            return Err(TrainError::Concurrent(format!(
                "{} was removed or overwritten since this process started training run \
                 `{run}` (by hand, or the store lost it: a bucket emptied or made anew): this process stopped before \
                 writing anything more; run it again to resume from the last checkpoint there is",
                owner_key(run)
            )));
        }
        Holder::Another => {}
    }
    Err(TrainError::Concurrent(format!(
        "another process started training run `{run}` after this one ({} changed): a second \
         `diffrec run` of the pipeline, or a scheduler's retry while the first attempt still \
         ran. This process stopped before writing anything more and leaves the run to the \
         other one",
        owner_key(run)
    )))
}

/// The model input of a variant: time-weighted rows for T-DiffRec, binary rows otherwise.
pub fn model_input(train: &CsrMatrix, variant: Variant) -> CsrMatrix {
    let mut m = train.clone();
    if !variant.is_temporal() {
        m.values.iter_mut().for_each(|v| *v = 1.0);
    }
    m
}

/// `model` with `model.autoencoder.input: auto` made `dense` or `sparse` for computing on
/// `backend`: on the CPU by the density of the training matrix (`EncoderInput::resolve`); on
/// `wgpu` and `cuda` always `dense`, since burn-cubecl's scatter-add (`select_assign`, also the
/// backward of `select`) runs one thread per output column, each walking every entry of the
/// batch, where the dense product is one well-fed matrix multiplication (not yet measured on a
/// GPU). Borrowed unchanged when there is nothing to resolve. Training and the inference stages
/// (which compute on the CPU) build their models from this.
pub fn resolve_input<'a>(
    model: &'a ModelConfig,
    train: &CsrMatrix,
    backend: crate::config::Backend,
) -> Cow<'a, ModelConfig> {
    if !model.variant.is_latent() || model.autoencoder.input != EncoderInput::Auto {
        return Cow::Borrowed(model);
    }
    let cells = train.n_rows as f64 * train.n_cols as f64;
    let density = if cells > 0.0 {
        train.nnz() as f64 / cells
    } else {
        1.0
    };
    let mut resolved = model.clone();
    resolved.autoencoder.input = if computes_on_pool(backend) {
        model.autoencoder.input.resolve(density)
    } else {
        EncoderInput::Dense
    };
    tracing::info!(
        density,
        input = ?resolved.autoencoder.input,
        backend = backend.name(),
        "model.autoencoder.input: auto resolved by the training matrix's density and the backend"
    );
    Cow::Owned(resolved)
}

/// Builds the diffusion of a model config.
pub fn diffusion_of(cfg: &ModelConfig) -> Result<GaussianDiffusion, TrainError> {
    GaussianDiffusion::new(&cfg.diffusion, cfg.beta_fixed())
        .map_err(|e| TrainError::Model(e.to_string()))
}

/// Trains (or resumes) the run described by `spec` on `devices` (at least one). Several
/// devices, or `train.nodes > 1`, train data-parallel (`parallel.rs`); with
/// `train.parallel: model`, L-DiffRec's cluster encoders are spread over the devices instead.
pub async fn train<B: AutodiffBackend>(
    ws: &Workspace,
    data: &SplitMatrices,
    spec: &RunSpec,
    devices: Vec<B::Device>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary, TrainError>
where
    B::Device: Send + 'static,
{
    let resolved;
    let spec = match resolve_input(&spec.model, &data.train, spec.train.backend) {
        Cow::Borrowed(_) => spec,
        Cow::Owned(model) => {
            resolved = RunSpec {
                model,
                ..spec.clone()
            };
            &resolved
        }
    };
    let cfg = &spec.train;
    let device = devices
        .first()
        .cloned()
        .ok_or_else(|| TrainError::Input("train.devices: no device".into()))?;
    let diffusion = diffusion_of(&spec.model)?;
    B::seed(&device, cfg.seed);
    let data_parallel = (devices.len() > 1 || cfg.nodes > 1) && cfg.parallel == Parallel::Data;
    if cfg.parallel == Parallel::Model && !spec.model.variant.is_latent() {
        return Err(TrainError::Input(format!(
            "train.parallel: model spreads L-DiffRec's cluster encoders over the devices; \
             {} has none (use train.parallel: data)",
            spec.model.variant.name()
        )));
    }
    if spec.model.variant.is_latent() {
        let labels = spec.item_clusters.as_deref().unwrap_or_default();
        if labels.len() != data.n_items {
            return Err(TrainError::Input(format!(
                "model.variant {} needs every item's cluster (cluster/item_clusters.parquet): \
                 got {} labels for {} items; run the cluster stage",
                spec.model.variant.name(),
                labels.len(),
                data.n_items
            )));
        }
        let clusters = ItemClusters::new(
            labels,
            spec.model.autoencoder.latent_share,
            &data.train.col_counts(),
        );
        // cluster.k was checked at load; the clusters file is what counts.
        spec.model
            .autoencoder
            .check_clusters(clusters.weights().len())
            .map_err(|e| {
                TrainError::Input(format!(
                    "`{}` {} (cluster/item_clusters.parquet has {} clusters)",
                    e.key,
                    e.message,
                    clusters.weights().len()
                ))
            })?;
        // What `latent_share` made of the weights: each cluster's encoder widths, the last its
        // share of the latent (spec §4.2), so a run's log shows where the latent went.
        let widths: Vec<usize> =
            diffrec_model::latent_dims(clusters.weights(), &spec.model.autoencoder.dims)
                .iter()
                .map(|layers| layers.last().copied().unwrap_or(0))
                .collect();
        tracing::info!(
            share = %spec.model.autoencoder.latent_share.name(),
            weights = ?clusters.weights(),
            latent_widths = ?widths,
            "train: the latent shared by cluster weight"
        );
        if data_parallel {
            let make =
                |d: &B::Device| LatentLearner::<B>::new(&clusters, spec, std::slice::from_ref(d));
            let learner = replicate(make, &devices, &diffusion, spec)?;
            run_loop(ws, data, spec, learner, Some(clusters), device, progress).await
        } else {
            let k = clusters.weights().len();
            if cfg.parallel == Parallel::Model && devices.len() > k {
                tracing::warn!(
                    devices = devices.len(),
                    clusters = k,
                    "train.parallel: model spreads the cluster encoders over the devices; with \
                     more devices than clusters, {} device(s) hold no encoder",
                    devices.len() - k
                );
            }
            if devices.len() > 1 {
                tracing::info!(
                    devices = devices.len(),
                    clusters = k,
                    device_of_cluster = ?clusters.placement(&spec.model.autoencoder, devices.len()),
                    "train: model-parallel: the cluster encoders spread over the devices (cluster c's \
                     encoder on train.devices[device_of_cluster[c]]; the rest of the model on the first)"
                );
            }
            let learner = LatentLearner::<B>::new(&clusters, spec, &devices);
            run_loop(ws, data, spec, learner, Some(clusters), device, progress).await
        }
    } else if data_parallel {
        let make = |d: &B::Device| DenseLearner::<B>::new(data.n_items, spec, d);
        let learner = replicate(make, &devices, &diffusion, spec)?;
        run_loop(ws, data, spec, learner, None, device, progress).await
    } else {
        let learner = DenseLearner::<B>::new(data.n_items, spec, &device);
        run_loop(ws, data, spec, learner, None, device, progress).await
    }
}

/// One replica per device, all starting from the first one's parameters.
fn replicate<B: AutodiffBackend, L: Learner<B> + Send + 'static>(
    make: impl Fn(&B::Device) -> L,
    devices: &[B::Device],
    diffusion: &GaussianDiffusion,
    spec: &RunSpec,
) -> Result<DataParallel<B>, TrainError>
where
    B::Device: Send + 'static,
{
    let first = make(&devices[0]);
    let bytes = first.model_bytes()?;
    let mut learners = vec![(first, devices[0].clone())];
    for d in &devices[1..] {
        learners.push((make(d).load(bytes.clone(), None)?, d.clone()));
    }
    let topology = topology(&spec.train, devices.len())?;
    let replicas = devices.len() * spec.train.nodes;
    match &spec.train.orchestrator {
        Some(orchestrator) if spec.train.nodes > 1 => tracing::info!(
            replicas,
            nodes = spec.train.nodes,
            node_rank = spec.train.node_rank,
            orchestrator,
            peer_timeout = spec.train.peer_timeout,
            "train: data-parallel over nodes: joining the orchestrator and waiting for every node \
             (at most train.peer_timeout seconds)"
        ),
        _ => tracing::info!(replicas, "train: data-parallel"),
    }
    // Each batch is cut into `replicas` consecutive shards (over every node's devices).
    let batch = spec.train.batch_size;
    tracing::info!(
        replicas,
        rows_per_replica = batch.div_ceil(replicas),
        "train: each batch of {batch} rows is split over the replicas of all nodes"
    );
    if batch < replicas {
        tracing::warn!(
            "train.batch_size {batch} is below the {replicas} replicas: {} of them get no rows \
             in any step and only wait for the others (the result is the same; the devices \
             are wasted)",
            replicas - batch
        );
    }
    let dp = DataParallel::start(learners, diffusion, &topology)?;
    // Before the run is claimed or anything deleted: the nodes run the same thing.
    dp.check_same_run(&spec.fingerprint, &spec.train)?;
    Ok(dp)
}

/// The loop of spec §5 over any [`Learner`].
async fn run_loop<B: AutodiffBackend, L: Learner<B> + Send>(
    ws: &Workspace,
    data: &SplitMatrices,
    spec: &RunSpec,
    mut learner: L,
    clusters: Option<ItemClusters>,
    device: B::Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary, TrainError> {
    let cfg = &spec.train;
    let diffusion = diffusion_of(&spec.model)?;
    let input = model_input(&data.train, spec.model.variant);
    let n_items = data.n_items;
    let params = learner.params();
    report_size(params, cfg.ema_decay.is_some(), spec.backend == "cpu");
    // With several nodes every node trains and evaluates the same way (so that they stop
    // together); only node 0 writes the run's artifacts.
    let writer = cfg.node_rank == 0;
    let mut state = TrainState {
        epoch: 0,
        best_epoch: 0,
        best_recall: -100.0,
        evaluations: Vec::new(),
        losses: Vec::new(),
        epoch_seconds: Vec::new(),
        sampler: StepSampler::new(diffusion.steps()),
        train_seconds: 0.0,
        fingerprint: spec.fingerprint.clone(),
        item_clusters: clusters
            .as_ref()
            .map(|c| c.labels().to_vec())
            .unwrap_or_default(),
        cluster_weights: clusters.map(|c| c.weights().to_vec()).unwrap_or_default(),
        written_by: this_diffrec(),
        fingerprinted: spec.fingerprinted.clone(),
        sections_sha256: String::new(),
    };
    // The run is claimed before its latest checkpoint is read, and each epoch's writes first
    // check that no other process has claimed it since (`ensure_sole_writer`).
    let claim = if writer {
        Some(Claim::take(ws, &owner_key(&spec.run)).await?)
    } else {
        None
    };
    let latest = if spec.fresh {
        None
    } else {
        ws.get_if_present(&latest_key(&spec.run)).await?
    };
    // A best checkpoint is written after the latest one of its epoch: where it is there and the
    // latest is not, the latest was deleted, and the epochs trained so far are lost.
    if latest.is_none() && !spec.fresh && ws.exists(&best_key(&spec.run)).await? {
        tracing::warn!(
            "train: {} is missing while the run has a best checkpoint (it was deleted): the \
             training starts again from epoch 0, and the best checkpoint is replaced at its first \
             evaluation",
            latest_key(&spec.run)
        );
    }
    // The parameter average starts at the initial parameters.
    let mut ema = cfg
        .ema_decay
        .map(|d| Ema::new(d, cfg.ema_warmup, learner.recommender()));
    if let Some(bytes) = latest {
        let Checkpoint {
            state: st,
            model: model_bytes,
            optim: optim_bytes,
            ema: ema_bytes,
        } = decode(&bytes).map_err(|e| match e.within(&latest_key(&spec.run)) {
            TrainError::Damaged(what) => TrainError::Damaged(format!(
                "{what}. Train the run anew with --force (a resume cannot trust it)"
            )),
            e => e,
        })?;
        // Its parts are copied out: the file's bytes are not held beside them.
        drop(bytes);
        if st.fingerprint != spec.fingerprint {
            return Err(foreign_run(&spec.run));
        }
        // Every node checks (a lost best model stops them all alike); node 0 rebuilds.
        repair_best(
            ws,
            &spec.run,
            &st,
            writer.then(|| ema_bytes.as_deref().unwrap_or(&model_bytes)),
        )
        .await?;
        let within = |e: TrainError| e.within(&latest_key(&spec.run)).noting(st.other_writer());
        learner = learner
            .load(model_bytes, Some(optim_bytes))
            .map_err(within)?;
        match (&mut ema, ema_bytes) {
            (Some(avg), Some(bytes)) => avg.load(bytes, &device).map_err(within)?,
            (None, None) => {}
            // Same fingerprint means the same `train.ema_decay`, so only a damaged checkpoint
            // gets here.
            _ => {
                return Err(TrainError::Checkpoint(format!(
                    "{}: the parameter average does not match train.ema_decay",
                    latest_key(&spec.run)
                )));
            }
        }
        // Before anything of the finished run is given up (`give_up_previous`), and before it
        // is announced as resumed.
        refuse_shorter(&spec.run, cfg, &st, &spec.ks)?;
        state = st;
        tracing::info!(epoch = state.epoch, "resuming from the latest checkpoint");
        if let Some(note) = state.other_writer() {
            tracing::info!("{note} Its records load; training goes on");
        }
        // The checkpoints written from here on are this version's, and say what their
        // fingerprint hashes (the same fingerprint: the same settings and data).
        state.written_by = this_diffrec();
        state.fingerprinted = spec.fingerprinted.clone();
        progress(Progress::Resumed { epoch: state.epoch });
    }
    let select_k = select_k(&spec.ks);
    let select_key = format!("recall@{select_k}");
    let n_users = data.n_users;
    let bs = cfg.batch_size;
    let batches = n_users
        .div_ceil(bs)
        .min(cfg.max_batches.unwrap_or(usize::MAX));
    if bs > n_users {
        tracing::warn!(
            "train.batch_size {bs} is above the {n_users} users: each epoch is one step over \
             all of them, so a run takes as many optimizer steps as epochs (learning rates \
             tuned for smaller batches may then need more epochs or a larger rate)"
        );
    }

    if !cfg.evaluates() {
        tracing::warn!(
            eval_every = cfg.eval_every,
            epochs = cfg.epochs,
            "train.eval_every is more than train.epochs: this run evaluates nothing and writes \
             no best checkpoint (fine for timing the training alone)"
        );
    }
    // Off rayon's pool: the replicas' all-reduce needs it (see `waits_on_other_threads`).
    learner.agree_on_start(state.epoch)?;
    if cfg.nodes > 1 {
        // Node 0 took the claim before the agreement above: every node must read it now. A
        // node that cannot read it still takes part in the check (all nodes make the same
        // collective calls, so none waits for it), then stops with the read's error.
        let token = match &claim {
            Some(claim) => Ok(Some(claim.token().to_owned())),
            None => ws
                .get_if_present(&owner_key(&spec.run))
                .await
                .map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned())),
        };
        let held = token.as_ref().ok().cloned().flatten().unwrap_or_default();
        learner.agree_on_workspace(&held)?;
        token?;
    }
    if let Some(claim) = &claim {
        give_up_previous(ws, &spec.run, claim, spec.fresh).await?;
    }
    let step_on_pool = computes_on_pool(cfg.backend) && !learner.waits_on_other_threads();
    let reads_sparse = learner.reads_sparse();
    let mut epoch = state.epoch + 1;
    while epoch <= cfg.epochs {
        // Patience counts from the best evaluation: a run that evaluates nothing trains on.
        if cfg.evaluates() && epoch - state.best_epoch >= cfg.patience {
            progress(Progress::Stopped {
                epoch,
                best_epoch: state.best_epoch,
            });
            break;
        }
        let started = Instant::now();
        let epoch_seed = cfg
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(epoch as u64);
        B::seed(&device, epoch_seed);
        let mut rng = StdRng::seed_from_u64(epoch_seed);
        let mut perm: Vec<usize> = (0..n_users).collect();
        perm.shuffle(&mut rng);
        progress(Progress::EpochStart { epoch, batches });
        let mut epoch_loss = 0.0;
        for (b, users) in perm.chunks(bs).take(batches).enumerate() {
            let rows = users.len();
            let mut x0 = vec![0f32; rows * n_items];
            input.densify_rows(users, &mut x0);
            // Sparse encoders get the batch's entries from its sparse rows, not from a scan.
            let nonzeros = reads_sparse.then(|| entries_of(&input, users));
            let (ts, pts) = state.sampler.sample(rows, &mut rng);
            let at = StepAt {
                completed_epochs: epoch - 1,
                batches_before: (epoch - 1) * batches + b,
            };
            let batch = Batch {
                x0,
                rows,
                cols: n_items,
                ts: ts.clone(),
                pts,
                seed: rng.random(),
                nonzeros,
            };
            let (next, out) = on_pool_thread(step_on_pool, || {
                let (next, out) = learner.step(&diffusion, batch, at, None)?;
                if let Some(avg) = ema.as_mut() {
                    avg.update(&next.recommender(), at.batches_before + 1);
                }
                Ok::<_, TrainError>((next, out))
            })?;
            learner = next;
            if !out.loss.is_finite() {
                // Stopped before the step sampler or a checkpoint takes it in: the latest
                // checkpoint stays the last finite state.
                let lower = if spec.model.variant.is_latent() {
                    "a lower train.lr or train.ae_lr, or check model.autoencoder's loss \
                     weights (lambda, lambda_cap, kl_cap)"
                } else {
                    "a lower train.lr"
                };
                let kept = if epoch > 1 {
                    format!(
                        "the latest checkpoint holds epoch {}, the last finite state",
                        epoch - 1
                    )
                } else {
                    "nothing was saved (the first epoch had not ended)".to_owned()
                };
                return Err(TrainError::Diverged(format!(
                    "the training loss is {} at epoch {epoch}, batch {}: training diverged; \
                     {kept} (try {lower})",
                    out.loss,
                    b + 1
                )));
            }
            state.sampler.update(&ts, &out.weighted);
            epoch_loss += out.loss;
            progress(Progress::Batch);
        }
        let seconds = started.elapsed().as_secs_f64();
        state.epoch = epoch;
        state.losses.push(epoch_loss);
        state.epoch_seconds.push(seconds);
        state.train_seconds += seconds;
        progress(Progress::EpochEnd {
            epoch,
            loss: epoch_loss,
            seconds,
        });

        if let Some(claim) = &claim {
            ensure_sole_writer(ws, &spec.run, claim).await?;
        }
        // The average's record, serialised once for both checkpoints of this epoch.
        let avg_bytes = match (&ema, writer) {
            (Some(avg), true) => Some(avg.bytes()?),
            _ => None,
        };
        if epoch % cfg.eval_every == 0 {
            let t = Instant::now();
            let live;
            let model = match &ema {
                Some(avg) => avg.model(),
                None => {
                    live = learner.recommender();
                    &live
                }
            };
            progress(Progress::Evaluating {
                epoch,
                users: data.n_users,
            });
            seed_evaluation::<B>(&device, cfg.seed, epoch);
            let (valid, test) = on_pool_thread(computes_on_pool(cfg.backend), || {
                evaluate(model, &diffusion, &input, data, &spec.ks, &device)
            });
            let eval_seconds = t.elapsed().as_secs_f64();
            let recall = round4(valid.get(&select_key).copied().unwrap_or(0.0));
            if recall > state.best_recall {
                state.best_recall = recall;
                state.best_epoch = epoch;
            }
            progress(Progress::Evaluated {
                epoch,
                select_k,
                valid_recall: valid.get(&select_key).copied().unwrap_or(0.0),
                test_recall: test.get(&select_key).copied().unwrap_or(0.0),
                best_epoch: state.best_epoch,
            });
            state.evaluations.push(Evaluation {
                epoch,
                loss: epoch_loss,
                epoch_seconds: seconds,
                eval_seconds,
                valid,
                test,
            });
            if writer {
                write_metrics(ws, &spec.run, &state, select_k).await?;
            }
        }
        if writer {
            // `latest` first, then `best`: a crash between the two leaves a `latest` whose
            // best epoch is its own epoch, and the resume rebuilds `best` from it
            // (`repair_best`). The other order could leave a `best` that no recorded
            // evaluation selected.
            // Written from the records' own buffers (`encode_parts`): no copy of them.
            let model_bytes = Bytes::from(learner.model_bytes()?);
            let avg_bytes = avg_bytes.map(Bytes::from);
            let latest = encode_parts(
                &state,
                model_bytes.clone(),
                Bytes::from(learner.optim_bytes()?),
                avg_bytes.clone(),
            )?;
            ws.put_atomic_parts(&latest_key(&spec.run), latest).await?;
            if state.best_epoch == epoch {
                // The model that was evaluated: the average when there is one.
                let evaluated = avg_bytes.unwrap_or(model_bytes);
                let best = encode_parts(&state, evaluated, Bytes::new(), None)?;
                ws.put_atomic_parts(&best_key(&spec.run), best).await?;
            }
        }
        epoch += 1;
    }

    let summary = summarise(spec, &state, params, UserCounts::of(data));
    if let Some(claim) = &claim {
        ensure_sole_writer(ws, &spec.run, claim).await?;
        // Once more from the checkpoint's record, whole: a resumed run that trained nothing
        // more (run again because its metrics table or curves were deleted or damaged) would
        // otherwise record what is there as its own.
        if !state.evaluations.is_empty() {
            write_metrics(ws, &spec.run, &state, select_k).await?;
        }
        ws.put_json(&summary_key(&spec.run), &summary).await?;
    }
    Ok(summary)
}

/// The k of the Recall that selects the best epoch: 20, or the first of `evaluate.ks` without
/// 20.
pub fn select_k(ks: &[usize]) -> usize {
    if ks.contains(&20) { 20 } else { ks[0] }
}

/// How the training loop's stopping rule ends a run whose evaluations `state` records, under
/// `cfg`'s epochs and patience: the epochs it trains and its best epoch, when it ends before
/// the epochs `state` went through (`None`: it goes at least as far). Also the least
/// `train.epochs` and `train.patience` that go as far.
#[derive(Debug, PartialEq)]
struct EndsEarlier {
    trained: usize,
    best_epoch: usize,
    least_epochs: usize,
    least_patience: usize,
}

fn ends_earlier(cfg: &TrainConfig, state: &TrainState, ks: &[usize]) -> Option<EndsEarlier> {
    let key = format!("recall@{}", select_k(ks));
    let (mut best, mut best_recall) = (0, -100.0);
    let (mut ended, mut least_patience) = (None, 0);
    for epoch in 1..=state.epoch {
        // The loop's rule: training stops at the start of epoch best epoch + patience.
        least_patience = least_patience.max(epoch - best + 1);
        let stops = epoch > cfg.epochs || (cfg.evaluates() && epoch - best >= cfg.patience);
        if stops && ended.is_none() {
            ended = Some((epoch - 1, best));
        }
        if let Some(ev) = state.evaluations.iter().find(|e| e.epoch == epoch) {
            let recall = round4(ev.valid.get(&key).copied().unwrap_or(0.0));
            if recall > best_recall {
                (best, best_recall) = (epoch, recall);
            }
        }
    }
    ended.map(|(trained, best_epoch)| EndsEarlier {
        trained,
        best_epoch,
        least_epochs: state.epoch,
        least_patience,
    })
}

/// Refuses to take a run that trained further than `cfg`'s `train.epochs` and
/// `train.patience` allow as theirs: trained anew with them it would have ended earlier, and
/// perhaps at another best epoch, which its checkpoints cannot give back. Extending a run
/// (more epochs, more patience) is what resuming is for.
fn refuse_shorter(
    run: &str,
    cfg: &TrainConfig,
    state: &TrainState,
    ks: &[usize],
) -> Result<(), TrainError> {
    let Some(e) = ends_earlier(cfg, state, ks) else {
        return Ok(());
    };
    let mut keep = Vec::new();
    if cfg.epochs < e.least_epochs {
        keep.push(format!("train.epochs at least {}", e.least_epochs));
    }
    if cfg.evaluates() && cfg.patience < e.least_patience {
        keep.push(format!("train.patience at least {}", e.least_patience));
    }
    Err(TrainError::Input(format!(
        "run `{run}` trained {} epochs (best epoch {}); with train.epochs {} and train.patience \
         {} it would have ended after epoch {} (best epoch {}), and its checkpoints cannot \
         give that run back. Set {} to keep the run as it is, or train it anew with these \
         settings (--force, or another pipeline name)",
        state.epoch,
        state.best_epoch,
        cfg.epochs,
        cfg.patience,
        e.trained,
        e.best_epoch,
        keep.join(" and "),
    )))
}

fn foreign_run(run: &str) -> TrainError {
    TrainError::Input(format!(
        "{} holds a run trained with another configuration or data; rerun with --force to \
         start over, or use another pipeline name",
        latest_key(run)
    ))
}

/// Refuses early what [`train`] would refuse on reading the run's latest checkpoint: one
/// written with another `fingerprint`. Reads only the checkpoint's head, so a stage can check
/// before it changes anything in the workspace. No checkpoint: nothing to resume, `Ok`.
pub async fn check_resumable(
    ws: &Workspace,
    run: &str,
    fingerprint: &str,
) -> Result<(), TrainError> {
    match read_state(ws, &latest_key(run)).await? {
        Some(state) if state.fingerprint != fingerprint => Err(foreign_run(run)),
        _ => Ok(()),
    }
}

/// What the run's latest checkpoint was fingerprinted on ([`RunSpec::fingerprinted`]); `None`
/// without a checkpoint or where it does not say (written before it did).
pub async fn checkpoint_fingerprinted(
    ws: &Workspace,
    run: &str,
) -> Result<Option<serde_json::Value>, TrainError> {
    Ok(latest_state(ws, run)
        .await?
        .map(|s| s.fingerprinted)
        .filter(|v| !v.is_null()))
}

/// The training state of the run's latest checkpoint (read from its head only: the model and
/// optimizer records are not fetched), `None` without one.
pub async fn latest_state(ws: &Workspace, run: &str) -> Result<Option<TrainState>, TrainError> {
    read_state(ws, &latest_key(run)).await
}

/// The training state of the checkpoint at `key` (its head only), `None` when there is none.
async fn read_state(ws: &Workspace, key: &str) -> Result<Option<TrainState>, TrainError> {
    let within = |e: TrainError| match e {
        TrainError::Checkpoint(why) => TrainError::Checkpoint(format!("{key}: {why}")),
        other => other,
    };
    let Some(head) = ws.get_prefix(key, STATE_AT as u64).await? else {
        return Ok(None);
    };
    let end = state_range(&head).map_err(within)?.end;
    let head = ws.get_prefix(key, end as u64).await?.unwrap_or_default();
    decode_state(&head).map(Some).map_err(within)
}

/// Rebuilds `best.ckpt` from the latest checkpoint when a run was killed between writing the
/// two in the epoch that set its best (`latest` is written first, so then its best epoch is its
/// own epoch and `evaluated` is the model that evaluation chose). Only then can they disagree.
async fn repair_best(
    ws: &Workspace,
    run: &str,
    latest: &TrainState,
    evaluated: Option<&[u8]>,
) -> Result<(), TrainError> {
    if latest.best_epoch == 0 {
        return Ok(());
    }
    let key = best_key(run);
    // Read whole and decoded (its hash checked): a damaged `best`, or another run's copied
    // over it (its history not the start of this run's: other losses, other evaluations),
    // counts as a missing one; a store that cannot be read is an error. Not the fingerprint:
    // a run resumed across an upgrade that changed it keeps a `best` of the earlier one.
    let ours = |b: &TrainState| {
        latest.losses.starts_with(&b.losses) && latest.evaluations.starts_with(&b.evaluations)
    };
    let held = match ws.get_if_present(&key).await? {
        None => None,
        Some(bytes) => match checked_state(&bytes) {
            Ok(best) if ours(&best) => Some(best.epoch),
            Ok(_) | Err(TrainError::Damaged(_) | TrainError::Checkpoint(_)) => None,
            Err(e) => return Err(e),
        },
    };
    if latest.best_epoch != latest.epoch {
        // Only the best epoch's own checkpoint holds its model: one lost (deleted, damaged)
        // cannot be rebuilt, and training on would leave the run without a best model.
        if held == Some(latest.best_epoch) {
            return Ok(());
        }
        // The user's to decide (exit 2): running again cannot bring it back.
        return Err(TrainError::Input(format!(
            "{key} {}, and the run's best epoch is {} while its latest checkpoint holds epoch \
             {}: the best model is lost. Train the run anew (--force)",
            match held {
                None => "is missing, damaged or another run's".to_owned(),
                Some(epoch) => format!("holds epoch {epoch}"),
            },
            latest.best_epoch,
            latest.epoch
        )));
    }
    if let Some(evaluated) = evaluated
        && held != Some(latest.best_epoch)
    {
        tracing::warn!(
            best_epoch = latest.best_epoch,
            held = ?held,
            "train: {key} does not hold the best epoch (the run stopped before it was written, \
             or it was deleted, damaged or replaced since); rebuilding it from the latest \
             checkpoint, which is of that epoch"
        );
        ws.put_atomic(&key, encode(latest, evaluated, &[], None)?)
            .await?;
    }
    Ok(())
}

fn summarise(spec: &RunSpec, state: &TrainState, params: usize, users: UserCounts) -> Summary {
    let best = state
        .evaluations
        .iter()
        .find(|e| e.epoch == state.best_epoch);
    let evals: Vec<f64> = state.evaluations.iter().map(|e| e.eval_seconds).collect();
    Summary {
        run: spec.run.clone(),
        variant: spec.model.variant,
        backend: spec.backend.clone(),
        seed: spec.train.seed,
        best_epoch: state.best_epoch,
        epochs_run: state.epoch,
        params,
        valid: best.map(|e| e.valid.clone()).unwrap_or_default(),
        test: best.map(|e| e.test.clone()).unwrap_or_default(),
        train_seconds: state.train_seconds,
        epoch_seconds_median: median(&state.epoch_seconds),
        eval_seconds_median: median(&evals),
        peak_rss_bytes: crate::memory::peak_rss_bytes(),
        encoder_input: spec
            .model
            .variant
            .is_latent()
            .then_some(spec.model.autoencoder.input),
        users: Some(users),
        evaluated_by: best.map(|_| EvaluatedBy::new("train", &spec.model)),
    }
}

/// Seeds the random numbers of `device`'s backend for the evaluation after `epoch` of a run
/// trained with `seed`: the reverse pass draws from them with `model.diffusion.sampling_noise`
/// or `sampling_steps` above 0 (and from nothing else), so each evaluation is one fixed draw,
/// and the evaluate and recommend stages, seeded for the best epoch, draw what the training's
/// evaluation of it drew (on the CPU backends, whose generator inference uses too).
pub fn seed_evaluation<B: Backend>(device: &B::Device, seed: u64, epoch: usize) {
    // Apart from the epochs' training seeds (`seed · φ + epoch`).
    B::seed(
        device,
        (seed ^ 0x5EED_0E7A_1000_0000)
            .wrapping_mul(0xD1B5_4A32_D192_ED03)
            .wrapping_add(epoch as u64),
    );
}

/// Scores every user once (reverse diffusion on the training row) and applies both masks.
pub fn evaluate<B: Backend>(
    model: &Recommender<B>,
    diffusion: &GaussianDiffusion,
    input: &CsrMatrix,
    data: &SplitMatrices,
    ks: &[usize],
    device: &B::Device,
) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let block = eval_block(data.n_items);
    evaluate_in_blocks(model, diffusion, input, data, ks, device, block)
}

/// [`evaluate`] `block` users at a time.
fn evaluate_in_blocks<B: Backend>(
    model: &Recommender<B>,
    diffusion: &GaussianDiffusion,
    input: &CsrMatrix,
    data: &SplitMatrices,
    ks: &[usize],
    device: &B::Device,
    block: usize,
) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let n_items = data.n_items;
    let mut ev = SplitEvaluator::new(&data.train, &data.valid, &data.test, ks);
    let users: Vec<usize> = (0..data.n_users).collect();
    let prepared = model.prepare(diffusion);
    for block in users.chunks(block) {
        let scores = score_rows(model, diffusion, &prepared, input, block, n_items, device);
        ev.add_block(block, &scores);
    }
    (
        ev.valid_sums.finish(data.n_users),
        ev.test_sums.finish(data.n_users),
    )
}

/// Scores of the given users' rows, row-major. `prepared`: `model.prepare(diffusion)`, made
/// once for every block ranked with `model`.
pub fn score_rows<B: Backend>(
    model: &Recommender<B>,
    diffusion: &GaussianDiffusion,
    prepared: &Prepared<B>,
    input: &CsrMatrix,
    rows: &[usize],
    n_items: usize,
    device: &B::Device,
) -> Vec<f32> {
    let mut dense = vec![0f32; rows.len() * n_items];
    input.densify_rows(rows, &mut dense);
    // The entries straight from the sparse rows, not from a scan of the dense block.
    let nonzeros = model.reads_sparse().then(|| entries_of(input, rows));
    let x0 = Tensor::<B, 2>::from_data(TensorData::new(dense, [rows.len(), n_items]), device);
    model
        .score_prepared(diffusion, prepared, x0, nonzeros.as_ref())
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// The entries of `input`'s `rows`, in that order, as a sparse first layer reads them.
fn entries_of(input: &CsrMatrix, rows: &[usize]) -> RowNonzeros {
    RowNonzeros::from_rows(input.n_cols, rows.iter().map(|&r| input.row(r).0))
}

/// Writes the run's metrics table and its curves, which plot Recall and NDCG at `select_k`.
async fn write_metrics(
    ws: &Workspace,
    run: &str,
    state: &TrainState,
    select_k: usize,
) -> Result<(), TrainError> {
    let batch = MetricsTable::from_evaluations(&state.evaluations)
        .into_batch()
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    ws.write_parquet(&metrics_key(run), MetricsTable::schema(), [batch])
        .await?;
    let at = |e: &Evaluation, metric: &str| {
        let key = format!("{metric}@{select_k}");
        e.valid.get(&key).copied().unwrap_or(f64::NAN)
    };
    let points: Vec<CurvePoint> = state
        .evaluations
        .iter()
        .map(|e| CurvePoint {
            epoch: e.epoch,
            loss: e.loss,
            recall: at(e, "recall"),
            ndcg: at(e, "ndcg"),
        })
        .collect();
    // The picture is a convenience: a drawing failure is logged, never fatal to training.
    match render_svg(run, &points, select_k, state.best_epoch) {
        Ok(svg) => ws.put_atomic(&curves_key(run), svg.into_bytes()).await?,
        Err(e) => tracing::warn!("{run}: {e}"),
    }
    Ok(())
}

/// Logs the model's size and its checkpoint's, and, training on the CPU (`on_host`: a GPU holds
/// the parameters in its own memory), warns where the training cannot fit the memory this
/// process may use ([`crate::memory::shortfall`]).
fn report_size(params: usize, averaged: bool, on_host: bool) {
    use crate::memory;
    tracing::info!(
        params,
        "train: the model has {params} parameters; its latest checkpoint takes {}",
        memory::size(memory::checkpoint_bytes(params, averaged))
    );
    if !on_host {
        return;
    }
    let limits = memory::process_limits();
    let rss = memory::rss_bytes();
    if let Some(warning) = memory::shortfall(params, averaged, rss, &limits, memory::available()) {
        tracing::warn!("train: {warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend as Compute;

    /// The stopping rule replayed on a run's recorded evaluations. Evaluated every 2 epochs,
    /// valid recall@20 .10 .20 .20 .15 .30 at epochs 2 4 6 8 10 (the ties at epoch 6 do not
    /// count: the best must be higher): trained 10 epochs, best epoch 10, no stop with
    /// patience 20. Epoch by epoch the best before it is 0 0 0 0 2 2 4 4 4 4, so the widest
    /// gap is epoch 10 − 4 = 6, and patience 7 is the least that reaches epoch 10.
    #[test]
    fn shorter_settings_are_found_from_the_recorded_evaluations() {
        let evaluations = [(2, 0.10), (4, 0.20), (6, 0.20), (8, 0.15), (10, 0.30)]
            .map(|(epoch, r)| Evaluation {
                epoch,
                loss: 1.0,
                epoch_seconds: 1.0,
                eval_seconds: 1.0,
                valid: [("recall@20".to_owned(), r)].into(),
                test: BTreeMap::new(),
            })
            .to_vec();
        let state = TrainState {
            epoch: 10,
            best_epoch: 10,
            best_recall: 0.3,
            evaluations,
            losses: vec![1.0; 10],
            epoch_seconds: vec![1.0; 10],
            sampler: StepSampler::new(4),
            train_seconds: 10.0,
            fingerprint: "f".into(),
            item_clusters: vec![],
            cluster_weights: vec![],
            written_by: this_diffrec(),
            fingerprinted: serde_json::Value::Null,
            sections_sha256: String::new(),
        };
        let cfg = |epochs, patience| TrainConfig {
            epochs,
            patience,
            eval_every: 2,
            ..TrainConfig::default()
        };
        let ks = [10, 20];
        for (epochs, patience) in [(10, 20), (10, 7), (30, 7)] {
            assert_eq!(ends_earlier(&cfg(epochs, patience), &state, &ks), None);
        }
        let earlier = |trained, best_epoch| {
            Some(EndsEarlier {
                trained,
                best_epoch,
                least_epochs: 10,
                least_patience: 7,
            })
        };
        // Patience 6 stops at the start of epoch 4 + 6 = 10, best epoch 4.
        assert_eq!(ends_earlier(&cfg(10, 6), &state, &ks), earlier(9, 4));
        // Patience 3: best 0 until epoch 2, then 2 at epoch 3 and 4, 4 from 5: the start of
        // epoch 4 + 3 = 7 stops it.
        assert_eq!(ends_earlier(&cfg(10, 3), &state, &ks), earlier(6, 4));
        assert_eq!(ends_earlier(&cfg(7, 20), &state, &ks), earlier(7, 4));
        let e = refuse_shorter("r", &cfg(7, 6), &state, &ks).unwrap_err();
        assert!(matches!(e, TrainError::Input(_)));
        let e = e.to_string();
        assert!(e.contains("ended after epoch 7 (best epoch 4)"), "{e}");
        assert!(
            e.contains("train.epochs at least 10 and train.patience at least 7"),
            "{e}"
        );
        // Extending a run is no refusal.
        refuse_shorter("r", &cfg(40, 30), &state, &ks).unwrap();
    }

    /// A `rows` × `cols` matrix holding `per_row` entries in each row.
    fn matrix(rows: usize, cols: usize, per_row: u32) -> CsrMatrix {
        let t = (0..rows as u32)
            .flat_map(|r| (0..per_row).map(move |c| (r, c, 1.0)))
            .collect();
        CsrMatrix::from_triplets(rows, cols, t)
    }

    /// The entries listed from the sparse rows are those a scan of the densified rows finds,
    /// in the same order, for users picked out of order (as a shuffled batch picks them).
    #[test]
    fn entries_listed_from_rows_are_the_scanned_ones() {
        let t = vec![
            (0, 4, 1.0),
            (0, 1, 0.5),
            (2, 3, 0.2),
            (3, 0, 1.0),
            (3, 5, 0.7),
            (3, 2, 0.1),
        ];
        let m = CsrMatrix::from_triplets(4, 6, t);
        let users = [3, 1, 0, 2];
        let mut dense = vec![0f32; users.len() * 6];
        m.densify_rows(&users, &mut dense);
        let listed = entries_of(&m, &users);
        assert_eq!(listed, RowNonzeros::of_dense(&dense, 6));
        assert_eq!(
            listed.entries().collect::<Vec<_>>(),
            vec![(0, 0), (0, 2), (0, 5), (2, 1), (2, 4), (3, 3)]
        );
        // A shard of the batch (rows 1..3) is that shard's scan.
        assert_eq!(
            listed.rows_range(1, 2),
            RowNonzeros::of_dense(&dense[6..18], 6)
        );
    }

    #[test]
    fn auto_input_resolved_by_density() {
        let model = |json: &str| serde_json::from_str::<ModelConfig>(json).unwrap();
        let l = model(r#"{"variant": "l-diffrec"}"#);
        // 4 of 500 items a row: 0.8 % → sparse; 5 of 500: exactly 1 % → dense.
        let thin = matrix(3, 500, 4);
        let even = matrix(3, 500, 5);
        let input =
            |m: &ModelConfig, x: &CsrMatrix| resolve_input(m, x, Compute::Cpu).autoencoder.input;
        assert_eq!(input(&l, &thin), EncoderInput::Sparse);
        assert_eq!(input(&l, &even), EncoderInput::Dense);
        // An empty matrix reads dense.
        assert_eq!(input(&l, &matrix(0, 500, 0)), EncoderInput::Dense);
        // A setting given explicitly, and the variants without encoders, are left as they are.
        let dense = model(r#"{"variant": "lt-diffrec", "autoencoder": {"input": "dense"}}"#);
        assert!(matches!(
            resolve_input(&dense, &thin, Compute::Cpu),
            Cow::Borrowed(_)
        ));
        let sparse = model(r#"{"variant": "l-diffrec", "autoencoder": {"input": "sparse"}}"#);
        assert_eq!(input(&sparse, &even), EncoderInput::Sparse);
        let d = model(r#"{"variant": "diffrec"}"#);
        assert!(matches!(
            resolve_input(&d, &thin, Compute::Cpu),
            Cow::Borrowed(_)
        ));
        // On the GPU backends `auto` stays dense however thin the data; `sparse` asked for stays.
        for gpu in [Compute::Wgpu, Compute::Cuda] {
            let on = |m: &ModelConfig| resolve_input(m, &thin, gpu).autoencoder.input;
            assert_eq!(on(&l), EncoderInput::Dense, "{gpu:?}");
            assert_eq!(on(&sparse), EncoderInput::Sparse, "{gpu:?}");
        }
        // Nothing else of the model changes.
        let mut back = resolve_input(&l, &thin, Compute::Cpu).into_owned();
        back.autoencoder.input = EncoderInput::Auto;
        assert_eq!(back, l);
    }

    #[test]
    fn evaluation_blocks_follow_the_catalogue_and_change_no_metric() {
        assert_eq!(eval_block(2_810), 2_048);
        assert_eq!(eval_block(32_768), 2_048);
        assert_eq!(eval_block(32_769), 2_047);
        assert_eq!(eval_block(200_000), 335);
        assert_eq!(eval_block(usize::MAX), 1);
        assert_eq!(eval_block(0), 2_048);

        type B = burn_flex::Flex;
        let device = Default::default();
        B::seed(&device, 3);
        let (users, items) = (23usize, 40usize);
        // User u holds items u, u + 3, u + 6, … (mod 40) in training, the next one in
        // validation and the one after in test.
        let split = |from: u32, count: u32| {
            let t = (0..users as u32)
                .flat_map(|u| (from..from + count).map(move |j| (u, (u + 3 * j) % 40, 1.0)))
                .collect();
            CsrMatrix::from_triplets(users, items, t)
        };
        let data = SplitMatrices {
            n_users: users,
            n_items: items,
            train: split(0, 5),
            valid: split(5, 1),
            test: split(6, 1),
        };
        let cfg = ModelConfig::default();
        let model = Recommender::Dense(diffrec_model::Denoiser::<B>::new(
            items,
            &diffrec_model::DenoiserConfig {
                dims: vec![8],
                ..cfg.denoiser.clone()
            },
            diffrec_model::InitScheme::DiffRec,
            &device,
        ));
        let diffusion = diffusion_of(&cfg).unwrap();
        let at = |block| {
            evaluate_in_blocks(
                &model,
                &diffusion,
                &data.train,
                &data,
                &[5, 10],
                &device,
                block,
            )
        };
        let whole = at(2_048);
        assert_eq!(whole.0.len(), whole.1.len());
        assert!(whole.0.keys().any(|k| k == "recall@10"), "{whole:?}");
        // Blocks of one user, of a few, and a last block shorter than the others.
        for block in [1, 4, 7] {
            assert_eq!(at(block), whole, "block {block}");
        }
        // Row by row, blocks of 7 score every user as one block does, in order (up to float
        // rounding: the matrix products' kernels depend on the row count).
        let prepared = model.prepare(&diffusion);
        let everyone: Vec<usize> = (0..users).collect();
        let one = score_rows(
            &model,
            &diffusion,
            &prepared,
            &data.train,
            &everyone,
            items,
            &device,
        );
        let blocks: Vec<f32> = everyone
            .chunks(7)
            .flat_map(|b| {
                score_rows(
                    &model,
                    &diffusion,
                    &prepared,
                    &data.train,
                    b,
                    items,
                    &device,
                )
            })
            .collect();
        assert_eq!(one.len(), users * items);
        assert_eq!(blocks.len(), one.len());
        let spread = one.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 1e-3, "degenerate scores");
        for (k, (a, b)) in one.iter().zip(&blocks).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * spread,
                "user {}, item {}: {a} vs {b}",
                k / items,
                k % items
            );
        }
    }
}
