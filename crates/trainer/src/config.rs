//! The `train`, `evaluate` and `recommend` sections of a pipeline. Defaults follow the DiffRec
//! authors' ML-1M setting (spec §5, §7.1).

use serde::{Deserialize, Serialize};

/// A configuration value is invalid; `key` is the dotted pipeline key.
#[derive(Debug, thiserror::Error)]
#[error("invalid config `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// `train.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The fastest CPU backend measured on this workload (see docs/benchmarks.md).
    Cpu,
    /// burn-flex (what `cpu` is today).
    Flex,
    /// burn-wgpu (cargo feature `wgpu`).
    Wgpu,
    /// burn-cuda (cargo feature `cuda`).
    Cuda,
}

impl Backend {
    /// The name a pipeline spells it with.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Flex => "flex",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }

    /// Whether this binary was built with the backend (cargo features `wgpu`, `cuda`).
    pub fn built_in(self) -> bool {
        match self {
            Backend::Cpu | Backend::Flex => true,
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// Whether `device` is a `train.devices` entry of this backend: `cpu` or `cpu:N`;
    /// `wgpu:N` or `wgpu:cpu`; `cuda:N` or `gpu:N`.
    pub fn accepts_device(self, device: &str) -> bool {
        let (kind, rest) = device.split_once(':').unwrap_or((device, ""));
        let index = rest.parse::<usize>().is_ok();
        match self {
            Backend::Cpu | Backend::Flex => device == "cpu" || (kind == "cpu" && index),
            Backend::Wgpu => kind == "wgpu" && (index || rest == "cpu"),
            Backend::Cuda => matches!(kind, "cuda" | "gpu") && index,
        }
    }

    /// What to write instead of a device this backend does not accept.
    pub fn device_hint(self) -> &'static str {
        match self {
            Backend::Cpu | Backend::Flex => "cpu, or cpu:N for a further logical CPU device",
            Backend::Wgpu => {
                "wgpu:N for the N-th discrete GPU, wgpu:cpu for a CPU Vulkan driver such as lavapipe"
            }
            Backend::Cuda => "cuda:N (or gpu:N)",
        }
    }
}

/// `train.parallel`: how several devices share the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parallel {
    /// A model replica per device, each batch split over them, gradients all-reduced.
    Data,
    /// L-DiffRec only: the cluster encoders (and per-cluster decoders) spread over the devices.
    Model,
}

/// `train.ema_warmup`: how the parameter average starts (see `train.ema_decay`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmaWarmup {
    /// The n-th update uses min(d, (1 + n)/(10 + n)) (TensorFlow's `ExponentialMovingAverage`
    /// with `num_updates`): the average spans roughly the last n/9 steps until d takes over.
    #[default]
    Count,
    /// The n-th update uses d·(1 − dⁿ⁻¹)/(1 − dⁿ), which makes the average exactly the
    /// d-weighted mean of the parameters after steps 1..n (Adam's bias correction): it spans
    /// roughly the last 1/(1 − d) steps from the start and never weighs the initialisation.
    Debias,
}

impl EmaWarmup {
    fn is_default(&self) -> bool {
        *self == EmaWarmup::default()
    }
}

/// `train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `train.seed`: seed of initialisation, shuffling, noise and step sampling. Default 1.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// `train.epochs`: maximum epochs. Default 1000.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// `train.backend`: `cpu`, `flex`, `wgpu` or `cuda` (the last two only in a binary built
    /// with that cargo feature). Default `cpu`.
    #[serde(default = "default_backend")]
    pub backend: Backend,
    /// `train.devices`: device names: `cpu` (or `cpu:N`, the same CPU as a further logical
    /// device), `cuda:N`, `wgpu:N` (N-th discrete GPU) or `wgpu:cpu` (a CPU Vulkan driver, e.g.
    /// Mesa's lavapipe). Default `[]` (the backend's default device). Several devices train
    /// together as `train.parallel` says.
    #[serde(default)]
    pub devices: Vec<String>,
    /// `train.parallel`: `data` (replicas, batch split, gradients all-reduced with
    /// burn-collective) or `model` (L-DiffRec's cluster encoders spread over the devices).
    /// Default `data`.
    #[serde(default = "default_parallel")]
    pub parallel: Parallel,
    /// `train.nodes`: machines training together (data-parallel through `diffrec orchestrator`),
    /// each with the same pipeline (the same `train.devices` included) except `node_rank`,
    /// `node_address`, `orchestrator` and `peer_timeout`; checked before the first step.
    /// Default 1.
    #[serde(default = "default_nodes")]
    pub nodes: usize,
    /// `train.node_rank`: this machine's rank, 0..nodes; node 0 writes the run's artifacts.
    /// Default 0.
    #[serde(default)]
    pub node_rank: usize,
    /// `train.orchestrator`: `HOST:PORT` of `diffrec orchestrator` (needed when nodes > 1).
    #[serde(default)]
    pub orchestrator: Option<String>,
    /// `train.node_address`: `HOST:PORT` where the other nodes reach this node's tensor service
    /// (burn-collective listens on that port on every interface; needed when nodes > 1).
    #[serde(default)]
    pub node_address: Option<String>,
    /// `train.peer_timeout`: seconds a multi-node run waits for the other nodes: at the start
    /// for every node to join the orchestrator (and for node 0 to claim and load the run),
    /// then at each all-reduce (which waits as long as the slowest node's evaluation or node
    /// 0's checkpoint writes). Past it the run stops with an error instead of hanging on a node
    /// that never came or stopped. Within one machine there is no limit. Default 1800
    /// (PyTorch's default for `init_process_group`).
    #[serde(default = "default_peer_timeout")]
    pub peer_timeout: u64,
    /// `train.lr`: AdamW learning rate of the denoiser (lr2 of L-DiffRec). Default 0.001.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// `train.weight_decay`: AdamW decoupled weight decay of the denoiser. Default 0.
    #[serde(default)]
    pub weight_decay: f64,
    /// `train.ae_lr`: AdamW learning rate of L-DiffRec's autoencoder (lr1; ignored by
    /// diffrec/t-diffrec). Default 0.001.
    #[serde(default = "default_lr")]
    pub ae_lr: f64,
    /// `train.ae_weight_decay`: AdamW weight decay of the autoencoder. Default 0.
    #[serde(default)]
    pub ae_weight_decay: f64,
    /// `train.batch_size`: users per step. Default 400.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// `train.max_batches`: stop each epoch after this many batches (benchmarks and smoke runs
    /// on large data: the step time and peak memory show within a few batches). Default: none,
    /// every user each epoch.
    #[serde(default)]
    pub max_batches: Option<usize>,
    /// `train.eval_every`: epochs between evaluations. Default 5.
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    /// `train.patience`: stop at the start of epoch e when e − best_epoch ≥ patience. Default 20.
    #[serde(default = "default_patience")]
    pub patience: usize,
    /// `train.ema_decay`: keep an exponential moving average of the parameters, updated after
    /// every optimiser step (avg ← d·avg + (1 − d)·θ), and evaluate, select, checkpoint as best
    /// and recommend with it. In (0, 1). The n-th update uses min(d, (1 + n)/(10 + n)), so
    /// for the first (10d − 1)/(1 − d) steps (890 for 0.99) the average spans roughly the
    /// last n/9 steps, afterwards roughly the last 1/(1 − d). Default: none (the authors' code
    /// evaluates the live parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f64>,
    /// `train.ema_warmup`: `count` (the schedule above) or `debias` (the average is the
    /// d-weighted mean of all parameters after step 1, spanning roughly 1/(1 − d) steps from
    /// the start). Only with `train.ema_decay`. Default `count`.
    #[serde(default, skip_serializing_if = "EmaWarmup::is_default")]
    pub ema_warmup: EmaWarmup,
}

/// `evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateConfig {
    /// `evaluate.ks`: cut-offs of Recall/NDCG/Precision/MRR. Default `[10, 20, 50, 100]`.
    #[serde(default = "default_ks")]
    pub ks: Vec<usize>,
}

/// `recommend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendConfig {
    /// `recommend.k`: items per user in `recommendations.parquet`. Default 20.
    #[serde(default = "default_k")]
    pub k: usize,
    /// `recommend.exclude`: which of a user's items are never recommended back. Default `seen`.
    #[serde(default)]
    pub exclude: Exclude,
}

/// `recommend.exclude` (and `diffrec recommend --exclude`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclude {
    /// Every item the user has in the ingested data: training, validation and test.
    #[default]
    Seen,
    /// The training items only (the model's input; the validation metrics mask these, the
    /// test metrics these and the validation items).
    Train,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: default_seed(),
            epochs: default_epochs(),
            backend: default_backend(),
            devices: Vec::new(),
            parallel: default_parallel(),
            nodes: default_nodes(),
            node_rank: 0,
            orchestrator: None,
            node_address: None,
            peer_timeout: default_peer_timeout(),
            lr: default_lr(),
            weight_decay: 0.0,
            ae_lr: default_lr(),
            ae_weight_decay: 0.0,
            batch_size: default_batch(),
            max_batches: None,
            eval_every: default_eval_every(),
            patience: default_patience(),
            ema_decay: None,
            ema_warmup: EmaWarmup::default(),
        }
    }
}
impl Default for EvaluateConfig {
    fn default() -> Self {
        EvaluateConfig { ks: default_ks() }
    }
}
impl Default for RecommendConfig {
    fn default() -> Self {
        RecommendConfig {
            k: default_k(),
            exclude: Exclude::default(),
        }
    }
}

fn default_seed() -> u64 {
    1
}
fn default_epochs() -> usize {
    1000
}
fn default_backend() -> Backend {
    Backend::Cpu
}
fn default_parallel() -> Parallel {
    Parallel::Data
}
fn default_nodes() -> usize {
    1
}
fn default_peer_timeout() -> u64 {
    1800
}
fn default_lr() -> f64 {
    1e-3
}
fn default_batch() -> usize {
    400
}
fn default_eval_every() -> usize {
    5
}
fn default_patience() -> usize {
    20
}
fn default_ks() -> Vec<usize> {
    vec![10, 20, 50, 100]
}
fn default_k() -> usize {
    20
}

impl TrainConfig {
    /// Whether this binary can train on `train.backend`. Not part of [`Self::validate`]: only
    /// the train stage needs the backend (evaluation and recommendation run on the CPU), so a
    /// CPU-only binary may still ingest, cluster, evaluate and validate a `cuda` pipeline.
    pub fn check_backend_built(&self) -> Result<(), ConfigError> {
        let backend = self.backend;
        if backend.built_in() {
            return Ok(());
        }
        Err(err(
            "train.backend",
            format!(
                "{} is not compiled into this binary; rebuild with `--features {}` \
                 (only the train stage needs it)",
                backend.name(),
                backend.name()
            ),
        ))
    }

    /// Whether the run evaluates at all (`eval_every` ≤ `epochs`): a run that does not trains
    /// for timing only and writes no best checkpoint.
    pub fn evaluates(&self) -> bool {
        self.eval_every <= self.epochs
    }

    /// Checks every value once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("train.epochs", self.epochs),
            ("train.batch_size", self.batch_size),
            ("train.eval_every", self.eval_every),
            ("train.peer_timeout", self.peer_timeout as usize),
        ] {
            if v == 0 {
                return Err(err(key, "must be ≥ 1"));
            }
        }
        // A run meant to evaluate (eval_every ≤ epochs) must reach its first evaluation:
        // training stops at the start of epoch best_epoch + patience, best_epoch 0 until then.
        if self.evaluates() && self.patience <= self.eval_every {
            return Err(err(
                "train.patience",
                format!(
                    "must be more than train.eval_every ({}), got {}: the first evaluation is \
                     after epoch {}, and training stops at the start of epoch best epoch + \
                     patience (the best epoch is 0 until an evaluation)",
                    self.eval_every, self.patience, self.eval_every
                ),
            ));
        }
        for (key, v) in [("train.lr", self.lr), ("train.ae_lr", self.ae_lr)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(err(key, format!("must be a finite number > 0, got {v}")));
            }
        }
        for (key, v) in [
            ("train.weight_decay", self.weight_decay),
            ("train.ae_weight_decay", self.ae_weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(err(key, format!("must be a finite number ≥ 0, got {v}")));
            }
        }
        if let Some(d) = self.ema_decay
            && !(d > 0.0 && d < 1.0)
        {
            return Err(err(
                "train.ema_decay",
                format!("must be in (0, 1), got {d} (leave it out for no average)"),
            ));
        }
        if self.ema_decay.is_none() && !self.ema_warmup.is_default() {
            return Err(err(
                "train.ema_warmup",
                "has no effect without train.ema_decay",
            ));
        }
        if self.max_batches == Some(0) {
            return Err(err(
                "train.max_batches",
                "must be ≥ 1 (leave it out for whole epochs)",
            ));
        }
        let backend = self.backend;
        if let Some(d) = self.devices.iter().find(|d| !backend.accepts_device(d)) {
            // A device of another backend: say which train.backend takes it.
            let other = [Backend::Wgpu, Backend::Cuda, Backend::Cpu]
                .into_iter()
                .find(|b| b.accepts_device(d))
                .map(|b| format!(", or set train.backend: {} for it", b.name()))
                .unwrap_or_default();
            return Err(err(
                "train.devices",
                format!(
                    "{d:?} is not a {} device (use {}{other})",
                    backend.name(),
                    backend.device_hint()
                ),
            ));
        }
        if self.nodes == 0 {
            return Err(err("train.nodes", "must be ≥ 1"));
        }
        if self.node_rank >= self.nodes {
            return Err(err(
                "train.node_rank",
                format!(
                    "must be < train.nodes ({}), got {}",
                    self.nodes, self.node_rank
                ),
            ));
        }
        if self.nodes > 1 {
            // The nodes' start check gathers each node's device count as a 16-bit word in f32
            // (exact far beyond this); a limit no machine reaches, kept as a sanity bound.
            if self.devices.len() > 256 {
                return Err(err(
                    "train.devices",
                    "at most 256 devices per node when train.nodes > 1",
                ));
            }
            if self.parallel == Parallel::Model {
                return Err(err(
                    "train.parallel",
                    "model parallelism runs on one machine; several nodes train data-parallel",
                ));
            }
            for (key, v) in [
                ("train.orchestrator", &self.orchestrator),
                ("train.node_address", &self.node_address),
            ] {
                if v.is_none() {
                    return Err(err(key, "needed when train.nodes > 1 (HOST:PORT)"));
                }
            }
        }
        // Checked also with one node: a value set now is one a later multi-node run uses.
        for (key, v) in [
            ("train.orchestrator", &self.orchestrator),
            ("train.node_address", &self.node_address),
        ] {
            if let Some(v) = v {
                if host_port(v).is_none() {
                    return Err(err(
                        key,
                        format!(
                            "expected HOST:PORT (a port from 1 to 65535; no scheme but ws://, \
                             no path), got {v:?}"
                        ),
                    ));
                }
                // The nodes connect to these addresses: a wildcard names no machine.
                let host = v.strip_prefix("ws://").unwrap_or(v);
                let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
                if ["0.0.0.0", "[::]", "::"].contains(&host) {
                    let whose = match key {
                        "train.orchestrator" => "where the nodes reach `diffrec orchestrator`",
                        _ => "where the other nodes reach this one",
                    };
                    return Err(err(
                        key,
                        format!(
                            "{v:?} is a wildcard, which names no machine: give the address \
                             {whose}"
                        ),
                    ));
                }
            }
        }
        // One port cannot serve both: the orchestrator's and this node's tensor service.
        if let (Some(o), Some(n)) = (&self.orchestrator, &self.node_address) {
            let bare = |s: &str| s.strip_prefix("ws://").unwrap_or(s).to_ascii_lowercase();
            if bare(o) == bare(n) {
                return Err(err(
                    "train.node_address",
                    format!(
                        "{n:?} is train.orchestrator's address: this node's tensor service \
                         needs a port of its own (another port, or another machine's address)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Fails when `port` cannot be listened on (on every interface, as burn-collective's servers
/// listen): they only log a failed bind, so the orchestrator and each node try it first.
pub fn try_listen(port: u16) -> std::io::Result<()> {
    std::net::TcpListener::bind(("0.0.0.0", port)).map(drop)
}

/// The port of `HOST:PORT` (an optional `ws://` prefix allowed). Port 0 (any free port) is
/// refused: the other side could not know which one was taken. So is another scheme or a path
/// (`http://h:1`, `h:1/x`), which burn-collective would turn into an address nobody serves.
pub fn host_port(s: &str) -> Option<u16> {
    let s = s.strip_prefix("ws://").unwrap_or(s);
    let (host, port) = s.rsplit_once(':')?;
    (!host.is_empty() && !host.contains('/')).then_some(())?;
    port.parse().ok().filter(|&p| p != 0)
}

impl EvaluateConfig {
    /// Checks every value once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ks.is_empty() || self.ks.contains(&0) {
            return Err(err(
                "evaluate.ks",
                format!("needs positive cut-offs, got {:?}", self.ks),
            ));
        }
        if let Some(k) = self
            .ks
            .iter()
            .find(|&&k| self.ks.iter().filter(|&&o| o == k).count() > 1)
        {
            return Err(err(
                "evaluate.ks",
                format!("{k} is listed twice in {:?}: each cut-off once", self.ks),
            ));
        }
        Ok(())
    }
}

impl RecommendConfig {
    /// Checks every value once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.k == 0 {
            return Err(err("recommend.k", "must be ≥ 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let t: TrainConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(
            (t.batch_size, t.eval_every, t.patience, t.seed),
            (400, 5, 20, 1)
        );
        t.validate().unwrap();
        let t: TrainConfig = serde_json::from_str(r#"{"devices": ["tpu:0"]}"#).unwrap();
        assert_eq!(t.validate().unwrap_err().key, "train.devices");
        let t: TrainConfig = serde_json::from_str(r#"{"nodes": 2}"#).unwrap();
        assert_eq!(t.validate().unwrap_err().key, "train.orchestrator");
        let t: TrainConfig = serde_json::from_str(
            r#"{"nodes": 2, "node_rank": 1, "orchestrator": "127.0.0.1:4000", "node_address": "127.0.0.1"}"#,
        )
        .unwrap();
        assert_eq!(t.validate().unwrap_err().key, "train.node_address");
        let t: TrainConfig = serde_json::from_str(
            r#"{"nodes": 2, "node_rank": 1, "orchestrator": "127.0.0.1:4000", "node_address": "0.0.0.0:4001"}"#,
        )
        .unwrap();
        let e = t.validate().unwrap_err();
        assert_eq!(e.key, "train.node_address");
        assert!(e.to_string().contains("wildcard"), "{e}");
        // Checked on one node too (a later multi-node run would use them).
        for (json, key) in [
            (r#"{"node_address": "0.0.0.0:5000"}"#, "train.node_address"),
            (r#"{"orchestrator": "http://h:5"}"#, "train.orchestrator"),
            (r#"{"orchestrator": "h:0"}"#, "train.orchestrator"),
        ] {
            let t: TrainConfig = serde_json::from_str(json).unwrap();
            assert_eq!(t.validate().unwrap_err().key, key, "{json}");
        }
        for bad in ["127.0.0.1:0", "http://127.0.0.1:4000", "h:1/x", ":4000"] {
            assert_eq!(host_port(bad), None, "{bad}");
        }
        // The orchestrator's own address is no node's (it failed at run time, exit 2, and the
        // other node waited out its timeout).
        let t: TrainConfig = serde_json::from_str(
            r#"{"nodes": 2, "orchestrator": "127.0.0.1:4000", "node_address": "ws://127.0.0.1:4000"}"#,
        )
        .unwrap();
        let e = t.validate().unwrap_err();
        assert_eq!(e.key, "train.node_address");
        assert!(
            e.to_string().contains("is train.orchestrator's address"),
            "{e}"
        );
        assert_eq!(host_port("ws://h:4000"), Some(4000));
        assert_eq!(host_port("[::1]:4000"), Some(4000));
        let t: TrainConfig = serde_json::from_str(r#"{"nodes": 2, "node_rank": 2}"#).unwrap();
        assert_eq!(t.validate().unwrap_err().key, "train.node_rank");
        // An infinite rate is named as such, not as "must be > 0, got inf".
        for key in ["lr", "weight_decay"] {
            let mut t: TrainConfig = serde_json::from_str("{}").unwrap();
            match key {
                "lr" => t.lr = f64::INFINITY,
                _ => t.weight_decay = f64::INFINITY,
            }
            let e = t.validate().unwrap_err();
            assert_eq!(e.key, format!("train.{key}"));
            assert!(e.to_string().contains("must be a finite number"), "{e}");
        }
        // Patience must outlast the first evaluation, unless the run evaluates nothing.
        let t: TrainConfig = serde_json::from_str(r#"{"patience": 5}"#).unwrap();
        assert_eq!(t.validate().unwrap_err().key, "train.patience");
        let t: TrainConfig = serde_json::from_str(r#"{"patience": 6}"#).unwrap();
        t.validate().unwrap();
        let t: TrainConfig =
            serde_json::from_str(r#"{"epochs": 3, "eval_every": 5, "patience": 2}"#).unwrap();
        t.validate().unwrap();
        let t: TrainConfig = serde_json::from_str(r#"{"ema_decay": 1.0}"#).unwrap();
        assert_eq!(t.validate().unwrap_err().key, "train.ema_decay");
        let t: TrainConfig = serde_json::from_str(r#"{"ema_decay": 0.99}"#).unwrap();
        t.validate().unwrap();
        // The default warm-up is not serialised: fingerprints of earlier runs are unchanged.
        assert!(!serde_json::to_string(&t).unwrap().contains("warmup"));
        let t: TrainConfig =
            serde_json::from_str(r#"{"ema_decay": 0.99, "ema_warmup": "debias"}"#).unwrap();
        t.validate().unwrap();
        let t: TrainConfig = serde_json::from_str(r#"{"ema_warmup": "debias"}"#).unwrap();
        assert_eq!(t.validate().unwrap_err().key, "train.ema_warmup");
        assert!(serde_json::from_str::<TrainConfig>(r#"{"ema_warmup": "debiased"}"#).is_err());
        // Unset, it is not serialised: fingerprints of runs without an average are unchanged.
        let t: TrainConfig = serde_json::from_str("{}").unwrap();
        assert!(!serde_json::to_string(&t).unwrap().contains("ema"));
        let e: EvaluateConfig = serde_json::from_str(r#"{"ks": [0]}"#).unwrap();
        assert_eq!(e.validate().unwrap_err().key, "evaluate.ks");
        let e: EvaluateConfig = serde_json::from_str(r#"{"ks": [10, 20, 10]}"#).unwrap();
        let e = e.validate().unwrap_err();
        assert!(
            e.key == "evaluate.ks" && e.message.contains("10 is listed twice"),
            "{e:?}"
        );
    }
}
