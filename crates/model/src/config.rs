//! The `model` section of a pipeline. Defaults are the DiffRec authors' tuned ML-1M setting
//! (spec §7.1) unless a field says otherwise.

use serde::{Deserialize, Serialize};

use crate::schedule::{DiffusionSchedule, ScheduleError};

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

/// `model.variant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    Diffrec,
    TDiffrec,
    LDiffrec,
    LtDiffrec,
}

impl Variant {
    /// Whether the variant reads time-weighted interactions (needs `data.temporal`).
    pub fn is_temporal(self) -> bool {
        matches!(self, Variant::TDiffrec | Variant::LtDiffrec)
    }
    /// Whether the variant needs the cluster stage.
    pub fn is_latent(self) -> bool {
        matches!(self, Variant::LDiffrec | Variant::LtDiffrec)
    }
    /// The name pipelines give it (`l-diffrec`).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Diffrec => "diffrec",
            Variant::TDiffrec => "t-diffrec",
            Variant::LDiffrec => "l-diffrec",
            Variant::LtDiffrec => "lt-diffrec",
        }
    }
}

/// `model.diffusion.schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Linear,
    LinearVar,
    Cosine,
    Binomial,
}

/// `model.diffusion.mean_type`: what the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeanType {
    X0,
    Eps,
}

/// `model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `model.variant`: `diffrec`, `t-diffrec`, `l-diffrec` or `lt-diffrec`. Default `diffrec`.
    #[serde(default = "default_variant")]
    pub variant: Variant,
    /// `model.diffusion`.
    #[serde(default)]
    pub diffusion: DiffusionConfig,
    /// `model.denoiser`.
    #[serde(default)]
    pub denoiser: DenoiserConfig,
    /// `model.autoencoder`: the clustered autoencoder of L-DiffRec/LT-DiffRec (ignored by the
    /// other variants).
    #[serde(default)]
    pub autoencoder: AutoEncoderConfig,
}

/// `model.autoencoder.decoder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecoderKind {
    /// One linear layer from the whole latent to every item (the authors' published configs).
    Shared,
    /// One decoder per cluster from its latent chunk to its items (the paper's description).
    /// `per_cluster`, the issue's spelling, is accepted too.
    #[serde(alias = "per_cluster")]
    PerCluster,
}

/// `model.autoencoder.latent_share`: how the latent width is divided among the clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatentShare {
    /// In proportion to each cluster's item count (spec §4.2, the authors' code).
    Items,
    /// In proportion to each cluster's training interactions, so that a cluster of popular
    /// items gets the width its share of the data calls for.
    Interactions,
}

impl LatentShare {
    fn is_items(&self) -> bool {
        *self == LatentShare::Items
    }

    /// The pipeline's spelling (`items`, `interactions`).
    pub fn name(&self) -> &'static str {
        match self {
            LatentShare::Items => "items",
            LatentShare::Interactions => "interactions",
        }
    }
}

/// `model.autoencoder.input`: how the encoders' first layers read a batch of interaction rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncoderInput {
    /// `sparse` where the training matrix is less dense than
    /// [`EncoderInput::SPARSE_BELOW_DENSITY`], else `dense`: the trainer and the inference stages
    /// [`resolve`](EncoderInput::resolve) it from the data before they build a model (and keep
    /// `dense` on GPU backends, see `diffrec_trainer::train::resolve_input`). A model built from
    /// an unresolved `auto` reads dense.
    Auto,
    /// The dense product of each cluster's slice of the rows with the layer's weight (the
    /// authors' computation): O(rows × items × width) per batch.
    Dense,
    /// The sum of the weight rows of the items each row has, scaled by their values: the same
    /// function up to float rounding, O(nonzeros × width).
    Sparse,
}

impl EncoderInput {
    /// Where `auto` turns sparse: training matrices with fewer stored entries than this share
    /// of users × items. The two inputs cost the same per batch near 1.0–1.4 % on the CPU at
    /// 5,000 and at 20,000 items, and sparse was the faster below 1 % from 2,000 to 50,000 items
    /// (docs/benchmarks.md, "Sparse encoder input: where it pays"); ML-1M, whose figures of
    /// record were computed dense, is at 2.41 %.
    pub const SPARSE_BELOW_DENSITY: f64 = 0.01;

    fn is_auto(&self) -> bool {
        *self == EncoderInput::Auto
    }

    /// `auto` made `dense` or `sparse` for a training matrix of `density` (stored entries over
    /// users × items); `dense` and `sparse` stay as they are.
    pub fn resolve(self, density: f64) -> EncoderInput {
        match self {
            EncoderInput::Auto if density < Self::SPARSE_BELOW_DENSITY => EncoderInput::Sparse,
            EncoderInput::Auto => EncoderInput::Dense,
            given => given,
        }
    }

    /// Whether a model built with this setting reads its rows sparsely (`auto` unresolved:
    /// no).
    pub fn is_sparse(&self) -> bool {
        *self == EncoderInput::Sparse
    }
}

/// `model.autoencoder` (spec §4.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoEncoderConfig {
    /// `model.autoencoder.dims`: encoder layer sizes summed over clusters; the last is the
    /// latent size the diffusion runs in. Each cluster gets a share of every layer proportional
    /// to its weight, see `latent_share` (floor, at least 1; the last cluster takes the
    /// remainder). Default `[300]`.
    #[serde(default = "default_ae_dims")]
    pub dims: Vec<usize>,
    /// `model.autoencoder.latent_share`: `items` (each cluster's share of every layer's width
    /// follows its item count, spec §4.2) or `interactions` (its count of training
    /// interactions). Default `items`, left out when serialised, so that the resolved config of
    /// a pipeline without the key, and so the fingerprints of runs trained before the key
    /// existed, stay the same.
    #[serde(
        default = "default_latent_share",
        skip_serializing_if = "LatentShare::is_items"
    )]
    pub latent_share: LatentShare,
    /// `model.autoencoder.input`: how the encoders' first layers read the rows, `dense`,
    /// `sparse` or `auto` (sparse where the training matrix holds under 1 % of users × items,
    /// on the CPU). The two compute the same
    /// function up to float rounding, sparse in time proportional to the interactions instead
    /// of the items. Default `auto`, left out when serialised (fingerprints of earlier runs stay
    /// the same).
    #[serde(
        default = "default_encoder_input",
        skip_serializing_if = "EncoderInput::is_auto"
    )]
    pub input: EncoderInput,
    /// `model.autoencoder.decoder`: `shared` or `per-cluster` (also `per_cluster`). Default
    /// `shared`.
    #[serde(default = "default_decoder")]
    pub decoder: DecoderKind,
    /// `model.autoencoder.dropout`: dropout on the encoder's input. Default 0.1.
    #[serde(default = "default_ae_dropout")]
    pub dropout: f64,
    /// `model.autoencoder.reparam`: sample the latent with the reparameterisation trick in
    /// training (false: the latent is μ, as at inference). Default true (the authors' code).
    #[serde(default = "default_true")]
    pub reparam: bool,
    /// `model.autoencoder.lambda`: weight λ of the diffusion loss in
    /// loss = λ·diffusion + reconstruction + γ·KL, at epoch 1 (spec §4.4). Default 0.03.
    #[serde(default = "default_lambda")]
    pub lambda: f64,
    /// `model.autoencoder.lambda_anneal_epochs`: λ decays linearly with completed epochs,
    /// λ_e = max((1 − e/lambda_anneal_epochs)·lambda, lambda_cap); 0 disables the decay
    /// (λ = max(lambda, lambda_cap)). Default 500.
    #[serde(default = "default_lambda_anneal")]
    pub lambda_anneal_epochs: usize,
    /// `model.autoencoder.lambda_cap`: the floor of λ. Default 0.005.
    #[serde(default = "default_lambda_cap")]
    pub lambda_cap: f64,
    /// `model.autoencoder.kl_anneal_batches`: the KL weight grows with the batches trained so far,
    /// γ = min(kl_cap, batches/kl_anneal_batches) (0: γ = kl_cap from the start). Default 200.
    #[serde(default = "default_kl_anneal")]
    pub kl_anneal_batches: usize,
    /// `model.autoencoder.kl_cap`: the ceiling of γ. Default 0.3.
    #[serde(default = "default_kl_cap")]
    pub kl_cap: f64,
}

impl AutoEncoderConfig {
    /// The latent (`dims`'s last entry) is split among the `clusters` encoders, each at least 1
    /// wide, so it may not be narrower than the number of clusters. (A narrower inner layer
    /// only makes those encoders wider than asked, as it always did.)
    pub fn check_clusters(&self, clusters: usize) -> Result<(), ConfigError> {
        match self.dims.last() {
            Some(&latent) if latent < clusters => Err(err(
                "model.autoencoder.dims",
                format!(
                    "{:?}: the latent (its last entry) is {latent} wide, split among {clusters} \
                     cluster encoders (each at least 1 wide): make it at least {clusters} \
                     (cluster.k), or use fewer clusters",
                    self.dims
                ),
            )),
            _ => Ok(()),
        }
    }

    /// λ after `completed_epochs` epochs (0 during the first).
    pub fn lambda_at(&self, completed_epochs: usize) -> f64 {
        if self.lambda_anneal_epochs == 0 {
            return self.lambda.max(self.lambda_cap);
        }
        ((1.0 - completed_epochs as f64 / self.lambda_anneal_epochs as f64) * self.lambda)
            .max(self.lambda_cap)
    }

    /// γ, the KL weight, after `batches` training batches over the whole run (0 for the first).
    pub fn kl_weight_at(&self, batches: usize) -> f64 {
        if self.kl_anneal_batches == 0 {
            return self.kl_cap;
        }
        (batches as f64 / self.kl_anneal_batches as f64).min(self.kl_cap)
    }
}

impl Default for AutoEncoderConfig {
    fn default() -> Self {
        AutoEncoderConfig {
            dims: default_ae_dims(),
            latent_share: default_latent_share(),
            input: default_encoder_input(),
            decoder: default_decoder(),
            dropout: default_ae_dropout(),
            reparam: true,
            lambda: default_lambda(),
            lambda_anneal_epochs: default_lambda_anneal(),
            lambda_cap: default_lambda_cap(),
            kl_anneal_batches: default_kl_anneal(),
            kl_cap: default_kl_cap(),
        }
    }
}

fn default_ae_dims() -> Vec<usize> {
    vec![300]
}
fn default_latent_share() -> LatentShare {
    LatentShare::Items
}
fn default_encoder_input() -> EncoderInput {
    EncoderInput::Auto
}
fn default_decoder() -> DecoderKind {
    DecoderKind::Shared
}
fn default_ae_dropout() -> f64 {
    0.1
}
fn default_lambda() -> f64 {
    0.03
}
fn default_lambda_anneal() -> usize {
    500
}
fn default_lambda_cap() -> f64 {
    0.005
}
fn default_kl_anneal() -> usize {
    200
}
fn default_kl_cap() -> f64 {
    0.3
}

/// `model.diffusion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    /// `model.diffusion.steps`: T, the number of diffusion steps (≥ 2). Default 40.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// `model.diffusion.schedule`: `linear`, `linear-var`, `cosine` or `binomial`. Default `linear-var`.
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// `model.diffusion.noise_scale`: s. Default 0.005.
    #[serde(default = "default_noise_scale")]
    pub noise_scale: f64,
    /// `model.diffusion.noise_min`. Default 0.005.
    #[serde(default = "default_noise_min")]
    pub noise_min: f64,
    /// `model.diffusion.noise_max`. Default 0.01.
    #[serde(default = "default_noise_max")]
    pub noise_max: f64,
    /// `model.diffusion.beta_fixed`: overwrite β₀ with 1e-5. Default: true for diffrec/t-diffrec,
    /// false for l-diffrec/lt-diffrec (as the authors' code does).
    #[serde(default)]
    pub beta_fixed: Option<bool>,
    /// `model.diffusion.mean_type`: `x0` or `eps`. Default `x0`.
    #[serde(default = "default_mean_type")]
    pub mean_type: MeanType,
    /// `model.diffusion.reweight`: SNR-based step weights in the loss. Default true.
    #[serde(default = "default_true")]
    pub reweight: bool,
    /// `model.diffusion.sampling_steps`: T', the noising steps before the reverse pass at
    /// inference (≤ T). Default 0.
    #[serde(default)]
    pub sampling_steps: usize,
    /// `model.diffusion.sampling_noise`: add posterior noise in the reverse pass. Default false.
    #[serde(default)]
    pub sampling_noise: bool,
}

/// `model.denoiser`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenoiserConfig {
    /// `model.denoiser.dims`: hidden sizes from the bottleneck outward. Default `[200, 600]`.
    #[serde(default = "default_dims")]
    pub dims: Vec<usize>,
    /// `model.denoiser.time_emb`: size of the sinusoidal time embedding. Default 10.
    #[serde(default = "default_time_emb")]
    pub time_emb: usize,
    /// `model.denoiser.dropout`: dropout on the noisy input during training. Default 0.5.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// `model.denoiser.norm`: L2-normalise the input rows. Default false.
    #[serde(default)]
    pub norm: bool,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        DiffusionConfig {
            steps: default_steps(),
            schedule: default_schedule(),
            noise_scale: default_noise_scale(),
            noise_min: default_noise_min(),
            noise_max: default_noise_max(),
            beta_fixed: None,
            mean_type: default_mean_type(),
            reweight: true,
            sampling_steps: 0,
            sampling_noise: false,
        }
    }
}

impl Default for DenoiserConfig {
    fn default() -> Self {
        DenoiserConfig {
            dims: default_dims(),
            time_emb: default_time_emb(),
            dropout: default_dropout(),
            norm: false,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            variant: default_variant(),
            diffusion: DiffusionConfig::default(),
            denoiser: DenoiserConfig::default(),
            autoencoder: AutoEncoderConfig::default(),
        }
    }
}

fn default_variant() -> Variant {
    Variant::Diffrec
}
/// The most diffusion steps a pipeline may ask for: the schedule and the reverse pass grow with
/// them, and a mistyped count (4e8) would take the machine's memory before anything says so.
pub const MAX_STEPS: usize = 100_000;

/// The widest layer (and time embedding) a pipeline may ask for, 2^20 units: wider ones are
/// typos (an extra zero or two) that would end in an allocation failure mid-run.
pub const MAX_WIDTH: usize = 1 << 20;

fn default_steps() -> usize {
    40
}
fn default_schedule() -> Schedule {
    Schedule::LinearVar
}
fn default_noise_scale() -> f64 {
    0.005
}
fn default_noise_min() -> f64 {
    0.005
}
fn default_noise_max() -> f64 {
    0.01
}
fn default_mean_type() -> MeanType {
    MeanType::X0
}
fn default_true() -> bool {
    true
}
fn default_dims() -> Vec<usize> {
    vec![200, 600]
}
fn default_time_emb() -> usize {
    10
}
fn default_dropout() -> f64 {
    0.5
}

impl ModelConfig {
    /// `beta_fixed` with the variant's default applied.
    pub fn beta_fixed(&self) -> bool {
        self.diffusion
            .beta_fixed
            .unwrap_or(!self.variant.is_latent())
    }

    /// Builds the noise schedule as training will, so that settings giving a β outside (0, 1]
    /// fail at load, naming the key to change, not when the train stage starts.
    fn check_schedule(&self) -> Result<(), ConfigError> {
        let d = &self.diffusion;
        let linear = matches!(d.schedule, Schedule::Linear | Schedule::LinearVar);
        // ᾱ_T = 1 − noise_scale × noise_max reaches 0 there: the schedule's clipping of β
        // (at 0.999, as the authors' code) would hide it, so it is refused as documented.
        if linear && d.noise_scale * d.noise_max >= 1.0 {
            return Err(err(
                "model.diffusion.noise_scale",
                format!(
                    "noise_scale × noise_max must be < 1 with a linear schedule (β would reach \
                     1), got {} × {}",
                    d.noise_scale, d.noise_max
                ),
            ));
        }
        let beta_fixed = self.beta_fixed();
        let Err(ScheduleError::BadBeta { t, beta }) = DiffusionSchedule::new(
            d.schedule,
            d.steps,
            d.noise_scale,
            d.noise_min,
            d.noise_max,
            beta_fixed,
        ) else {
            return Ok(());
        };
        let (key, why) = if linear && d.noise_scale == 0.0 {
            (
                "model.diffusion.noise_scale",
                "must be > 0 with this schedule (there is no diffusion without noise)".to_owned(),
            )
        } else if d.schedule == Schedule::LinearVar && d.noise_min == d.noise_max {
            (
                "model.diffusion.noise_max",
                format!(
                    "must be more than noise_min ({}) with the linear-var schedule: equal \
                     values make every β after the first 0",
                    d.noise_min
                ),
            )
        } else if linear && t == 0 && d.noise_min == 0.0 {
            (
                "model.diffusion.noise_min",
                "must be > 0 here: β₀ = noise_scale × noise_min, and beta_fixed is off \
                 (L-DiffRec's default)"
                    .to_owned(),
            )
        } else {
            ("model.diffusion.schedule", String::new())
        };
        let sep = if why.is_empty() { "" } else { ": " };
        Err(err(
            key,
            format!("the noise schedule would have beta[{t}] = {beta}, outside (0, 1]{sep}{why}"),
        ))
    }

    /// Checks every value once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.diffusion;
        if !(2..=MAX_STEPS).contains(&d.steps) {
            return Err(err(
                "model.diffusion.steps",
                format!(
                    "must be in [2, {MAX_STEPS}] (the paper's settings use at most 100), got {}",
                    d.steps
                ),
            ));
        }
        if d.sampling_steps > d.steps {
            return Err(err(
                "model.diffusion.sampling_steps",
                format!("must be ≤ steps ({}), got {}", d.steps, d.sampling_steps),
            ));
        }
        for (key, v) in [
            ("model.diffusion.noise_scale", d.noise_scale),
            ("model.diffusion.noise_min", d.noise_min),
            ("model.diffusion.noise_max", d.noise_max),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(err(key, format!("must be a finite number ≥ 0, got {v}")));
            }
        }
        if d.noise_min > d.noise_max {
            return Err(err(
                "model.diffusion.noise_min",
                format!(
                    "must not exceed noise_max ({}), got {}",
                    d.noise_max, d.noise_min
                ),
            ));
        }
        if d.noise_scale == 0.0 && d.reweight {
            return Err(err(
                "model.diffusion.reweight",
                "needs noise_scale > 0 (there is no SNR without noise)",
            ));
        }
        self.check_schedule()?;
        let n = &self.denoiser;
        if n.dims.is_empty() || n.dims.contains(&0) {
            return Err(err(
                "model.denoiser.dims",
                format!("needs ≥ 1 positive size, got {:?}", n.dims),
            ));
        }
        if let Some(w) = n.dims.iter().find(|&&w| w > MAX_WIDTH) {
            return Err(err(
                "model.denoiser.dims",
                format!("a layer of {w} units is past the {MAX_WIDTH} this build takes (a typo?)"),
            ));
        }
        if !(1..=MAX_WIDTH).contains(&n.time_emb) {
            return Err(err(
                "model.denoiser.time_emb",
                format!("must be in [1, {MAX_WIDTH}], got {}", n.time_emb),
            ));
        }
        if !(0.0..1.0).contains(&n.dropout) {
            return Err(err(
                "model.denoiser.dropout",
                format!("must be in [0, 1), got {}", n.dropout),
            ));
        }
        let a = &self.autoencoder;
        if a.dims.is_empty() || a.dims.contains(&0) {
            return Err(err(
                "model.autoencoder.dims",
                format!("needs ≥ 1 positive size, got {:?}", a.dims),
            ));
        }
        if let Some(w) = a.dims.iter().find(|&&w| w > MAX_WIDTH) {
            return Err(err(
                "model.autoencoder.dims",
                format!("a layer of {w} units is past the {MAX_WIDTH} this build takes (a typo?)"),
            ));
        }
        if !(0.0..1.0).contains(&a.dropout) {
            return Err(err(
                "model.autoencoder.dropout",
                format!("must be in [0, 1), got {}", a.dropout),
            ));
        }
        for (key, v) in [
            ("model.autoencoder.lambda", a.lambda),
            ("model.autoencoder.lambda_cap", a.lambda_cap),
            ("model.autoencoder.kl_cap", a.kl_cap),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(err(key, format!("must be a finite number ≥ 0, got {v}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_past_the_limits_name_their_key() {
        for (json, key) in [
            (
                r#"{"diffusion": {"steps": 100001}}"#,
                "model.diffusion.steps",
            ),
            (
                r#"{"denoiser": {"dims": [4294967296]}}"#,
                "model.denoiser.dims",
            ),
            (
                r#"{"denoiser": {"time_emb": 4294967295}}"#,
                "model.denoiser.time_emb",
            ),
            (
                r#"{"autoencoder": {"dims": [300, 2000000]}}"#,
                "model.autoencoder.dims",
            ),
        ] {
            let c: ModelConfig = serde_json::from_str(json).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{json}: {e}");
        }
        let c: ModelConfig =
            serde_json::from_str(r#"{"diffusion": {"steps": 100000}, "denoiser": {"dims": [1048576], "time_emb": 1048576}}"#)
                .unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn variant_names_are_the_pipeline_spelling() {
        for (v, name) in [
            (Variant::Diffrec, "diffrec"),
            (Variant::TDiffrec, "t-diffrec"),
            (Variant::LDiffrec, "l-diffrec"),
            (Variant::LtDiffrec, "lt-diffrec"),
        ] {
            assert_eq!(v.name(), name);
            assert_eq!(serde_json::to_value(v).unwrap(), name);
        }
    }

    #[test]
    fn defaults_are_the_ml1m_setting() {
        let c: ModelConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.variant, Variant::Diffrec);
        assert_eq!(c.diffusion.steps, 40);
        assert_eq!(c.denoiser.dims, vec![200, 600]);
        assert!(c.beta_fixed());
        c.validate().unwrap();
        let l: ModelConfig = serde_json::from_str(r#"{"variant": "l-diffrec"}"#).unwrap();
        assert!(!l.beta_fixed());
        assert_eq!(l.autoencoder.decoder, DecoderKind::Shared);
        assert_eq!(l.autoencoder.latent_share, LatentShare::Items);
        let c: ModelConfig =
            serde_json::from_str(r#"{"autoencoder": {"latent_share": "interactions"}}"#).unwrap();
        assert_eq!(c.autoencoder.latent_share, LatentShare::Interactions);
        let shown = |c: &ModelConfig| serde_json::to_value(c).unwrap()["autoencoder"].clone();
        assert_eq!(shown(&c)["latent_share"], "interactions");
        assert!(shown(&l).get("latent_share").is_none(), "{}", shown(&l));
        assert!(
            serde_json::from_str::<ModelConfig>(r#"{"autoencoder": {"latent_share": "users"}}"#)
                .is_err()
        );
        // `input`: auto by default, left out when serialised; sparse below 1 % density.
        assert_eq!(l.autoencoder.input, EncoderInput::Auto);
        assert!(shown(&l).get("input").is_none(), "{}", shown(&l));
        let c: ModelConfig =
            serde_json::from_str(r#"{"autoencoder": {"input": "dense"}}"#).unwrap();
        assert_eq!(shown(&c)["input"], "dense");
        assert_eq!(c.autoencoder.input.resolve(1e-6), EncoderInput::Dense);
        assert_eq!(EncoderInput::Sparse.resolve(0.5), EncoderInput::Sparse);
        assert_eq!(EncoderInput::Auto.resolve(0.01), EncoderInput::Dense);
        assert_eq!(EncoderInput::Auto.resolve(0.0099), EncoderInput::Sparse);
        assert!(!EncoderInput::Auto.is_sparse() && EncoderInput::Sparse.is_sparse());
        assert!(
            serde_json::from_str::<ModelConfig>(r#"{"autoencoder": {"input": "csr"}}"#).is_err()
        );
        for spelling in ["per-cluster", "per_cluster"] {
            let json = format!(r#"{{"autoencoder": {{"decoder": "{spelling}"}}}}"#);
            let c: ModelConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(c.autoencoder.decoder, DecoderKind::PerCluster, "{spelling}");
        }
        assert!(
            serde_json::from_str::<ModelConfig>(r#"{"autoencoder": {"decoder": "per"}}"#).is_err()
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let c: ModelConfig =
            serde_json::from_str(r#"{"diffusion": {"noise_min": 0.1, "noise_max": 0.01}}"#)
                .unwrap();
        assert_eq!(c.validate().unwrap_err().key, "model.diffusion.noise_min");
        let c: ModelConfig =
            serde_json::from_str(r#"{"diffusion": {"sampling_steps": 50}}"#).unwrap();
        assert_eq!(
            c.validate().unwrap_err().key,
            "model.diffusion.sampling_steps"
        );
        assert!(serde_json::from_str::<ModelConfig>(r#"{"variant": "x-diffrec"}"#).is_err());
        let c: ModelConfig = serde_json::from_str(r#"{"autoencoder": {"lambda": -1}}"#).unwrap();
        assert_eq!(c.validate().unwrap_err().key, "model.autoencoder.lambda");
    }

    /// Settings whose schedule has a β outside (0, 1] fail at load, naming the key that
    /// makes it so; each passes with that one value changed.
    #[test]
    fn schedules_with_a_bad_beta_name_their_cause() {
        for (json, key, fixed) in [
            // linear-var with min = max: β_t = 0 for t ≥ 1.
            (
                r#"{"diffusion": {"noise_min": 0.01, "noise_max": 0.01}}"#,
                "model.diffusion.noise_max",
                r#"{"diffusion": {"noise_min": 0.01, "noise_max": 0.02}}"#,
            ),
            // L-DiffRec (beta_fixed off) with min 0: β₀ = 0.
            (
                r#"{"variant": "l-diffrec", "diffusion": {"noise_min": 0}}"#,
                "model.diffusion.noise_min",
                r#"{"variant": "l-diffrec", "diffusion": {"noise_min": 0.0001}}"#,
            ),
            (
                r#"{"diffusion": {"noise_scale": 0, "reweight": false}}"#,
                "model.diffusion.noise_scale",
                r#"{"diffusion": {"noise_scale": 0.1, "reweight": false}}"#,
            ),
        ] {
            let c: ModelConfig = serde_json::from_str(json).unwrap();
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, key, "{json}: {e}");
            assert!(e.to_string().contains("outside (0, 1]"), "{e}");
            let c: ModelConfig = serde_json::from_str(fixed).unwrap();
            c.validate().unwrap_or_else(|e| panic!("{fixed}: {e}"));
        }
        // noise_scale × noise_max ≥ 1 (ᾱ_T ≤ 0) is refused as such, also where clipping β at
        // 0.999 would leave every β in (0, 1]; just below 1 passes.
        for (schedule, scale, max) in [
            ("linear", 2.0, 0.6),
            ("linear", 1.0, 1.0),
            ("linear-var", 100.0001, 0.01),
        ] {
            let json = format!(
                r#"{{"diffusion": {{"schedule": "{schedule}", "noise_scale": {scale}, "noise_max": {max}}}}}"#
            );
            let c: ModelConfig = serde_json::from_str(&json).unwrap();
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, "model.diffusion.noise_scale", "{json}: {e}");
            assert!(e.to_string().contains("must be < 1"), "{e}");
        }
        let c: ModelConfig = serde_json::from_str(
            r#"{"diffusion": {"schedule": "linear", "noise_scale": 1.5, "noise_max": 0.6}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        // DiffRec's beta_fixed sets β₀ = 1e-5 whatever noise_min says.
        let c: ModelConfig = serde_json::from_str(r#"{"diffusion": {"noise_min": 0}}"#).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn annealing_follows_the_authors_schedules() {
        // Spec §4.4 with the defaults: λ = max((1 − e/500)·0.03, 0.005), γ = min(0.3, k/200).
        let a = AutoEncoderConfig::default();
        assert_eq!(a.lambda_at(0), 0.03);
        assert!((a.lambda_at(250) - 0.015).abs() < 1e-15);
        // (1 − 420/500)·0.03 = 0.0048 < cap.
        assert_eq!(a.lambda_at(420), 0.005);
        assert_eq!(a.kl_weight_at(0), 0.0);
        assert!((a.kl_weight_at(30) - 0.15).abs() < 1e-15);
        assert_eq!(a.kl_weight_at(61), 0.3);
        let off = AutoEncoderConfig {
            lambda_anneal_epochs: 0,
            lambda: 0.001,
            kl_anneal_batches: 0,
            ..AutoEncoderConfig::default()
        };
        assert_eq!((off.lambda_at(7), off.kl_weight_at(0)), (0.005, 0.3));
    }
}
