//! L-DiffRec's clustered autoencoder (spec §4.2–4.3): items are split into clusters; cluster c's
//! encoder compresses the user's slice of the interaction vector into μ_c and log σ²_c (both
//! tanh-bounded, as the authors' code has it); the latents are concatenated (diffusion runs
//! there); a decoder maps a latent back to scores for every item — one shared linear layer (the
//! published configs) or one decoder per cluster (the paper's description).
//!
//! Everything here is in the **original item order**: the spec's "cluster order" is a
//! permutation, and both the reconstruction loss and the ranking are invariant under it, so the
//! decoder's output is gathered back to item order once instead of remapping masks.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use rayon::prelude::*;

use crate::config::{AutoEncoderConfig, DecoderKind, LatentShare};
use crate::denoiser::{InitScheme, linear};
use crate::shapes::{ParamShape, ParamShapes, join};
use crate::sparse::{RowNonzeros, sparse_linear};

/// Per-cluster widths of every encoder layer: for layer j, cluster c < C−1 gets
/// `floor(w_c / Σw · dims[j])` (at least 1) and the last cluster the remainder, so the widths
/// sum to `dims[j]`. With item counts as the weights `w` this is spec §4.2. A small weight
/// raised to 1 ahead of a large one can make the widths sum to more than `dims[j]` (weights
/// [1, 98, 1] over 4: 1 + 3 + 1); the concatenated latent is then that much wider, and the
/// shared decoder reads it ([`ClusteredAutoEncoder::latent_width`]). Returns `[cluster][layer]`.
pub fn latent_dims(weights: &[u64], dims: &[usize]) -> Vec<Vec<usize>> {
    let total = weights.iter().sum::<u64>().max(1) as f64;
    let c = weights.len();
    let mut out = vec![Vec::with_capacity(dims.len()); c];
    for &d in dims {
        let mut used = 0;
        for (k, &w) in weights.iter().enumerate() {
            let width = if k + 1 < c {
                ((w as f64 / total * d as f64).floor() as usize).max(1)
            } else {
                d.saturating_sub(used).max(1)
            };
            used += width;
            out[k].push(width);
        }
    }
    out
}

/// Number of clusters `labels` names (0..k; at least 1).
fn cluster_count(labels: &[u32]) -> usize {
    labels.iter().map(|&c| c as usize + 1).max().unwrap_or(1)
}

/// Each item's cluster, and each cluster's weight in dividing the latent width among the
/// clusters (`model.autoencoder.latent_share`): its item count or its training interactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemClusters {
    labels: Vec<u32>,
    weights: Vec<u64>,
}

impl ItemClusters {
    /// `labels[i]` is item i's cluster (0..k, every cluster non-empty; k = 1: no clustering);
    /// weights by `share`, where `interactions[i]` is item i's count of training interactions
    /// (unused for [`LatentShare::Items`]).
    pub fn new(labels: &[u32], share: LatentShare, interactions: &[u64]) -> Self {
        let mut weights = vec![0u64; cluster_count(labels)];
        match share {
            LatentShare::Items => labels.iter().for_each(|&c| weights[c as usize] += 1),
            LatentShare::Interactions => {
                assert_eq!(labels.len(), interactions.len(), "one count per item");
                for (&c, &n) in labels.iter().zip(interactions) {
                    weights[c as usize] += n;
                }
            }
        }
        ItemClusters {
            labels: labels.to_vec(),
            weights,
        }
    }

    /// Weighted by item count (spec §4.2).
    pub fn by_items(labels: &[u32]) -> Self {
        Self::new(labels, LatentShare::Items, &[])
    }

    /// Given weights (one per cluster, as a checkpoint stores them); `None` when their number
    /// is not the number of clusters.
    pub fn with_weights(labels: Vec<u32>, weights: Vec<u64>) -> Option<Self> {
        (weights.len() == cluster_count(&labels)).then_some(ItemClusters { labels, weights })
    }

    /// Item i's cluster.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Each cluster's weight.
    pub fn weights(&self) -> &[u64] {
        &self.weights
    }

    /// Items per cluster.
    pub fn sizes(&self) -> Vec<usize> {
        let mut sizes = vec![0; self.weights.len()];
        for &c in &self.labels {
            sizes[c as usize] += 1;
        }
        sizes
    }

    /// The device index of each cluster's encoder when `cfg`'s autoencoder is spread over
    /// `devices` devices ([`placement`]).
    pub fn placement(&self, cfg: &AutoEncoderConfig, devices: usize) -> Vec<usize> {
        placement(
            &self.sizes(),
            &latent_dims(&self.weights, &cfg.dims),
            devices,
        )
    }
}

/// Device index of each cluster: largest encoder first, each to the device with the fewest
/// encoder parameters so far (ties: the lower index).
pub fn placement(sizes: &[usize], dims: &[Vec<usize>], devices: usize) -> Vec<usize> {
    let params: Vec<usize> = sizes
        .iter()
        .zip(dims)
        .map(|(&len, d)| {
            let mut widths = vec![len];
            widths.extend_from_slice(&d[..d.len() - 1]);
            widths.push(2 * d[d.len() - 1]);
            widths.windows(2).map(|w| (w[0] + 1) * w[1]).sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&c| std::cmp::Reverse(params[c]));
    let mut load = vec![0usize; devices.max(1)];
    let mut at = vec![0; sizes.len()];
    for c in order {
        let d = (0..load.len()).min_by_key(|&d| load[d]).unwrap_or(0);
        load[d] += params[c];
        at[c] = d;
    }
    at
}

/// What [`ClusteredAutoEncoder::encode`] returns.
#[derive(Debug, Clone)]
pub struct Encoded<B: Backend> {
    /// The reconstruction target: the (dropped-out, rescaled) input, item order (spec §4.3:
    /// the target is x̃, not the clean row).
    pub target: Tensor<B, 2>,
    pub mu: Tensor<B, 2>,
    pub logvar: Tensor<B, 2>,
    /// μ + σ·ε when sampling, else μ.
    pub latent: Tensor<B, 2>,
    /// −½ · mean over the batch of Σ_dims (1 + log σ² − μ² − σ²).
    pub kl: Tensor<B, 1>,
}

/// The clustered autoencoder.
#[derive(Module, Debug)]
pub struct ClusteredAutoEncoder<B: Backend> {
    /// Per cluster, the encoder's layers (tanh after every one, the last included).
    encoders: Vec<Vec<Linear<B>>>,
    /// One entry (shared) or one per cluster, each a stack of layers (tanh between).
    decoders: Vec<Vec<Linear<B>>>,
    dropout: Dropout,
    /// Item indices of each cluster, ascending.
    #[module(skip)]
    clusters: Vec<Vec<i64>>,
    /// `position_of[item]` = the item's position in cluster order.
    #[module(skip)]
    position_of: Vec<i64>,
    /// `cluster_of[item]` = the item's cluster; `local_of[item]` = its position within it.
    #[module(skip)]
    cluster_of: Vec<u32>,
    #[module(skip)]
    local_of: Vec<i64>,
    /// Whether the encoders' first layers read the nonzero entries of a batch only
    /// (`model.autoencoder.input`).
    #[module(skip)]
    sparse: bool,
    /// Latent width of each cluster.
    #[module(skip)]
    widths: Vec<usize>,
    /// Built for several devices (model parallelism).
    #[module(skip)]
    spread: bool,
    /// Whether `encode(_, true)` samples (`model.autoencoder.reparam`).
    #[module(skip)]
    reparam: bool,
}

impl<B: Backend> ParamShapes for ClusteredAutoEncoderRecord<B> {
    fn param_shapes(&self, path: &str, out: &mut Vec<ParamShape>) {
        self.encoders.param_shapes(&join(path, "encoders"), out);
        self.decoders.param_shapes(&join(path, "decoders"), out);
    }
}

impl<B: Backend> ClusteredAutoEncoder<B> {
    /// One encoder per cluster of `clusters`, its latent width from the cluster's weight.
    /// Xavier-normal weights, zero biases (spec §3.3).
    pub fn new(clusters: &ItemClusters, cfg: &AutoEncoderConfig, device: &B::Device) -> Self {
        Self::placed(clusters, cfg, std::slice::from_ref(device))
    }

    /// Like [`Self::new`], with the cluster encoders (and per-cluster decoders) spread over
    /// `devices` (model parallelism): largest cluster first, each to the device with the fewest
    /// encoder parameters so far. The shared decoder and the outputs live on `devices[0]`.
    pub fn placed(clusters: &ItemClusters, cfg: &AutoEncoderConfig, devices: &[B::Device]) -> Self {
        let device = &devices[0];
        let labels = clusters.labels();
        let k = clusters.weights().len();
        let mut members = vec![Vec::new(); k];
        for (i, &c) in labels.iter().enumerate() {
            members[c as usize].push(i as i64);
        }
        assert!(
            members.iter().all(|c| !c.is_empty()),
            "every cluster needs an item (the cluster stage guarantees it)"
        );
        let mut position_of = vec![0i64; labels.len()];
        for (p, &i) in members.iter().flatten().enumerate() {
            position_of[i as usize] = p as i64;
        }
        let mut local_of = vec![0i64; labels.len()];
        for items in &members {
            for (p, &i) in items.iter().enumerate() {
                local_of[i as usize] = p as i64;
            }
        }
        let sizes: Vec<usize> = members.iter().map(Vec::len).collect();
        let dims = latent_dims(clusters.weights(), &cfg.dims);
        let place = clusters.placement(cfg, devices.len());
        let init = InitScheme::Xavier;
        let encoders = sizes
            .iter()
            .zip(&dims)
            .zip(&place)
            .map(|((&len, d), &at)| {
                let device = &devices[at];
                let mut widths = vec![len];
                widths.extend_from_slice(&d[..d.len() - 1]);
                widths.push(2 * d[d.len() - 1]);
                widths
                    .windows(2)
                    .map(|w| linear(w[0], w[1], init, device))
                    .collect()
            })
            .collect();
        // The concatenated latent: `dims`'s last entry, or more where small clusters were
        // raised to width 1 (`latent_dims`).
        let total = dims.iter().map(|d| d[d.len() - 1]).sum();
        let decoders = match cfg.decoder {
            DecoderKind::Shared => vec![vec![linear(total, labels.len(), init, device)]],
            DecoderKind::PerCluster => sizes
                .iter()
                .zip(&dims)
                .zip(&place)
                .map(|((&len, d), &at)| {
                    let device = &devices[at];
                    let mut widths: Vec<usize> = d.iter().rev().copied().collect();
                    widths.push(len);
                    widths
                        .windows(2)
                        .map(|w| linear(w[0], w[1], init, device))
                        .collect()
                })
                .collect(),
        };
        let model = ClusteredAutoEncoder {
            encoders,
            decoders,
            dropout: DropoutConfig::new(cfg.dropout).init(),
            clusters: members,
            position_of,
            cluster_of: labels.to_vec(),
            local_of,
            sparse: cfg.input.is_sparse(),
            widths: dims.iter().map(|d| d[d.len() - 1]).collect(),
            spread: devices.len() > 1,
            reparam: cfg.reparam,
        };
        // Materialise the lazy parameters now, in a fixed order (see `Denoiser::new`).
        let _ = model.num_params();
        model
    }

    /// Total latent width (the diffusion's vector size).
    pub fn latent_width(&self) -> usize {
        self.widths.iter().sum()
    }

    /// Latent width of each cluster.
    pub fn cluster_widths(&self) -> &[usize] {
        &self.widths
    }

    /// The device of each cluster's encoder.
    pub fn encoder_devices(&self) -> Vec<B::Device> {
        self.encoders
            .iter()
            .map(|layers| layers[0].weight.device())
            .collect()
    }

    /// Whether the encoders' first layers read only a batch's nonzero entries
    /// (`model.autoencoder.input`): callers that hold the rows on the host then pass them to
    /// [`Self::encode`] as [`RowNonzeros`], which saves reading them back.
    pub fn reads_sparse(&self) -> bool {
        self.sparse
    }

    /// Whether the encoders were placed over several (logical) devices: they then run in one
    /// thread each.
    fn is_spread(&self) -> bool {
        self.spread
    }

    fn index(&self, values: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
        Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
    }

    /// The encoders' and decoders' layers, for checks by hand.
    #[cfg(test)]
    pub(crate) fn layers(&self) -> (&[Vec<Linear<B>>], &[Vec<Linear<B>>]) {
        (&self.encoders, &self.decoders)
    }

    /// Encodes `x` ([batch, n_items], item order). Dropout is active only on an autodiff
    /// backend (training); `sample` draws the latent with the reparameterisation trick (unless
    /// `model.autoencoder.reparam` is off). `nonzeros`: entries of `x` that cover all its nonzeros,
    /// where the caller has them (see [`Self::reads_sparse`]); read back from `x` when the
    /// encoders need them and none are given; ignored when they read the rows densely.
    pub fn encode(
        &self,
        x: Tensor<B, 2>,
        nonzeros: Option<&RowNonzeros>,
        sample: bool,
    ) -> Encoded<B> {
        let device = x.device();
        let [rows, n_items] = x.dims();
        let read_back;
        // An empty batch has nothing to gather (and no row for an empty cluster's entry).
        let nonzeros = match (self.sparse && rows > 0, nonzeros) {
            (false, _) => None,
            (true, Some(nz)) => Some(nz),
            (true, None) => {
                read_back = RowNonzeros::of_tensor(&x);
                Some(&read_back)
            }
        };
        let target = crate::noise::dropout(x, self.dropout.prob);
        let inputs: Vec<FirstLayerInput<B>> = match nonzeros {
            Some(nz) => {
                assert_eq!(nz.dims(), [rows, n_items], "the nonzeros are x's");
                self.cluster_entries(nz, &target)
            }
            None => self
                .clusters
                .iter()
                .map(|items| {
                    FirstLayerInput::Dense(if self.clusters.len() == 1 {
                        target.clone()
                    } else {
                        target.clone().select(1, self.index(items, &device))
                    })
                })
                .collect(),
        };
        let run = |layers: &Vec<Linear<B>>, input: FirstLayerInput<B>| {
            // Model parallelism: the input goes to the encoder's device and the result comes
            // back (both differentiable; no-ops on a single device).
            let at = layers[0].weight.device();
            let mut h = match input {
                FirstLayerInput::Dense(slice) => layers[0].forward(slice.to_device(&at)),
                FirstLayerInput::Sparse { row, col, values } => sparse_linear(
                    &layers[0],
                    rows,
                    self.index(&row, &at),
                    self.index(&col, &at),
                    values.to_device(&at),
                ),
            }
            .tanh();
            for layer in &layers[1..] {
                h = layer.forward(h).tanh();
            }
            h.to_device(&device)
        };
        let outs: Vec<Tensor<B, 2>> = if self.is_spread() {
            // The encoders on threads of their own, so that devices work at the same time.
            encoder_threads(self.encoders.len()).install(|| {
                self.encoders
                    .par_iter()
                    .zip(inputs)
                    .map(|(layers, input)| run(layers, input))
                    .collect()
            })
        } else {
            self.encoders
                .iter()
                .zip(inputs)
                .map(|(layers, input)| run(layers, input))
                .collect()
        };
        let mut mus = Vec::with_capacity(outs.len());
        let mut logvars = Vec::with_capacity(outs.len());
        for (h, &w) in outs.into_iter().zip(&self.widths) {
            mus.push(h.clone().narrow(1, 0, w));
            logvars.push(h.narrow(1, w, w));
        }
        let mu = Tensor::cat(mus, 1);
        let logvar = Tensor::cat(logvars, 1);
        let latent = if sample && self.reparam {
            let [rows, width] = mu.dims();
            let eps = crate::noise::standard_normal::<B>(rows, width, &device);
            mu.clone() + (logvar.clone() * 0.5).exp() * eps
        } else {
            mu.clone()
        };
        let kl = ((logvar.clone() + 1.0 - mu.clone().powi_scalar(2) - logvar.clone().exp())
            .sum_dim(1)
            .mean()
            * -0.5)
            .reshape([1]);
        Encoded {
            target,
            mu,
            logvar,
            latent,
            kl,
        }
    }

    /// Each cluster's entries of a batch, as its encoder's first layer reads them sparsely: the
    /// entry's row, its position within the cluster, and its value in the (dropped-out) target.
    /// A cluster without entries gets one of value 0, so that its weight has a (zero) gradient
    /// as in the dense product. The values are taken through flat indices (row × items + item)
    /// into blocks of rows small enough for those to fit a backend's 32-bit integers (one
    /// block up to 10,737 rows of 200,000 items), so memory stays proportional to the entries
    /// however many items one row holds.
    fn cluster_entries(&self, nz: &RowNonzeros, target: &Tensor<B, 2>) -> Vec<FirstLayerInput<B>> {
        let [_, n_items] = target.dims();
        self.cluster_entries_in_blocks(nz, target, (i32::MAX as usize / n_items.max(1)).max(1))
    }

    /// [`Self::cluster_entries`] with blocks of `block` rows.
    fn cluster_entries_in_blocks(
        &self,
        nz: &RowNonzeros,
        target: &Tensor<B, 2>,
        block: usize,
    ) -> Vec<FirstLayerInput<B>> {
        let device = target.device();
        let [rows, n_items] = target.dims();
        let k = self.clusters.len();
        let mut row = vec![Vec::new(); k];
        let mut col = vec![Vec::new(); k];
        // Per cluster, the positions of its entries among all; per block, their flat indices.
        let mut at = vec![Vec::new(); k];
        let mut flat = vec![Vec::new(); rows.div_ceil(block)];
        for (e, (r, item)) in nz.entries().enumerate() {
            let c = self.cluster_of[item] as usize;
            row[c].push(r as i64);
            col[c].push(self.local_of[item]);
            at[c].push(e as i64);
            flat[r / block].push(((r % block) * n_items + item) as i64);
        }
        // All entries' values, in entry order (the entries go row by row).
        let parts: Vec<Tensor<B, 1>> = flat
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.is_empty())
            .map(|(b, f)| {
                let len = block.min(rows - b * block);
                target
                    .clone()
                    .narrow(0, b * block, len)
                    .reshape([len * n_items])
                    .select(0, self.index(f, &device))
            })
            .collect();
        let values = (!parts.is_empty()).then(|| Tensor::cat(parts, 0));
        row.into_iter()
            .zip(col)
            .zip(at)
            .map(|((mut row, mut col), at)| {
                let values = match &values {
                    Some(v) if !at.is_empty() => v.clone().select(0, self.index(&at, &device)),
                    _ => {
                        row.push(0);
                        col.push(0);
                        Tensor::zeros([1], &device)
                    }
                };
                FirstLayerInput::Sparse { row, col, values }
            })
            .collect()
    }

    /// Scores for every item ([batch, n_items], item order) from latents [batch, latent_width].
    pub fn decode(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = z.device();
        let run = |layers: &Vec<Linear<B>>, h: Tensor<B, 2>| {
            let mut h = h.to_device(&layers[0].weight.device());
            let last = layers.len() - 1;
            for (k, layer) in layers.iter().enumerate() {
                h = layer.forward(h);
                if k < last {
                    h = h.tanh();
                }
            }
            h.to_device(&device)
        };
        let in_cluster_order = if self.decoders.len() == 1 {
            run(&self.decoders[0], z)
        } else {
            let mut start = 0;
            let parts = self
                .decoders
                .iter()
                .zip(&self.widths)
                .map(|(layers, &w)| {
                    let chunk = z.clone().narrow(1, start, w);
                    start += w;
                    run(layers, chunk)
                })
                .collect();
            Tensor::cat(parts, 1)
        };
        if self.clusters.len() == 1 {
            in_cluster_order
        } else {
            in_cluster_order.select(1, self.index(&self.position_of, &device))
        }
    }
}

/// What an encoder's first layer reads: its cluster's slice of the batch, or the slice's
/// nonzero entries (rows, positions within the cluster, values).
enum FirstLayerInput<B: Backend> {
    Dense(Tensor<B, 2>),
    Sparse {
        row: Vec<i64>,
        col: Vec<i64>,
        values: Tensor<B, 1>,
    },
}

/// The multinomial negative log-likelihood of Mult-VAE, as L-DiffRec uses it (spec §4.4):
/// −mean over the batch of Σ_items log_softmax(scores) · target.
pub fn multinomial_nll<B: Backend>(scores: Tensor<B, 2>, target: Tensor<B, 2>) -> Tensor<B, 1> {
    -(log_softmax(scores, 1) * target).sum_dim(1).mean()
}

/// The threads that run a spread model's cluster encoders: one per encoder of the first spread
/// model of the process (at least 2), created once and kept. Earlier a thread was spawned per
/// encoder and forward pass; GPU backends keep per-thread state (cubecl 0.10 gives each new
/// thread its own stream, up to 128 per device, each with buffers of its own), so fresh threads
/// every batch kept adding streams. A later model with more encoders shares these threads.
fn encoder_threads(encoders: usize) -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(encoders.max(2))
            .thread_name(|i| format!("diffrec-encoder-{i}"))
            .build()
            .expect("the encoder threads start")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn_flex::Flex;

    #[test]
    fn latent_widths_follow_the_spec() {
        // ml-1m_clean, the authors' clusters: [1850, 960] → [197, 103] (spec §4.1).
        assert_eq!(
            latent_dims(&[1850, 960], &[300]),
            vec![vec![197], vec![103]]
        );
        // A tiny cluster still gets width 1; the last takes the remainder.
        assert_eq!(latent_dims(&[1, 999], &[10]), vec![vec![1], vec![9]]);
        // A small first cluster raised to 1 ahead of floor(3.92) = 3: the widths sum to 5.
        assert_eq!(
            latent_dims(&[1, 98, 1], &[4]),
            vec![vec![1], vec![3], vec![1]]
        );
        assert_eq!(latent_dims(&[5], &[64, 8]), vec![vec![64, 8]]);
    }

    #[test]
    fn latent_widths_can_follow_interactions() {
        // Items 0, 2 in cluster 0 with 9 + 6 interactions; items 1, 3 in cluster 1 with 3 + 2.
        let labels = [0u32, 1, 0, 1];
        let counts = [9u64, 3, 6, 2];
        let by_items = ItemClusters::by_items(&labels);
        assert_eq!(by_items.weights(), &[2, 2]);
        let by_use = ItemClusters::new(&labels, LatentShare::Interactions, &counts);
        assert_eq!(by_use.weights(), &[15, 5]);
        // floor(15/20 · 10) = 7, the last cluster the remainder; per layer.
        assert_eq!(
            latent_dims(by_use.weights(), &[20, 10]),
            vec![vec![15, 7], vec![5, 3]]
        );
        let cfg = AutoEncoderConfig {
            dims: vec![10],
            latent_share: LatentShare::Interactions,
            ..AutoEncoderConfig::default()
        };
        let m = ClusteredAutoEncoder::<B>::new(&by_use, &cfg, &Default::default());
        assert_eq!(m.cluster_widths(), &[7, 3]);
        // Our ML-1M clusters (885 items with 330,293 interactions, 1,925 with 72,984): the
        // popular cluster gets 245 of 300 latent dimensions instead of 94.
        assert_eq!(
            latent_dims(&[330_293, 72_984], &[300]),
            vec![vec![245], vec![55]]
        );
        assert_eq!(latent_dims(&[885, 1925], &[300]), vec![vec![94], vec![206]]);
        assert!(ItemClusters::with_weights(labels.to_vec(), vec![1]).is_none());
        assert_eq!(
            ItemClusters::with_weights(labels.to_vec(), vec![15, 5]),
            Some(by_use)
        );
    }

    #[test]
    fn ml1m_parameter_count_matches_the_reference() {
        // Spec §4.7: encoders 1850→394 and 960→206, decoder 300→2810: 1,773,070 parameters.
        let labels: Vec<u32> = (0..2810).map(|i| (i >= 1850) as u32).collect();
        let m = ClusteredAutoEncoder::<B>::new(
            &ItemClusters::by_items(&labels),
            &AutoEncoderConfig::default(),
            &Default::default(),
        );
        assert_eq!(m.num_params(), 1_773_070);
        assert_eq!(m.cluster_widths(), &[197, 103]);
    }

    /// Reference of encode/decode for interleaved clusters, computed by hand from the weights.
    /// Widths raised to 1 make the latent wider than `dims`'s last entry; the shared decoder
    /// reads all of it (it read `dims`'s last entry and failed in its matmul).
    #[test]
    fn shared_decoder_reads_a_latent_wider_than_dims() {
        let dev = Default::default();
        let mut labels = vec![1u32; 98];
        labels.extend([0, 2]);
        let cfg = AutoEncoderConfig {
            dims: vec![4],
            dropout: 0.0,
            ..AutoEncoderConfig::default()
        };
        let m = ClusteredAutoEncoder::<B>::new(&ItemClusters::by_items(&labels), &cfg, &dev);
        assert_eq!(m.cluster_widths(), &[1, 3, 1]);
        let x = Tensor::<B, 2>::ones([2, labels.len()], &dev);
        let e = m.encode(x, None, false);
        assert_eq!(e.mu.dims(), [2, 5]);
        assert_eq!(m.decode(e.mu).dims(), [2, labels.len()]);
    }

    #[test]
    fn clusters_see_their_own_items_and_scores_come_back_in_item_order() {
        let dev = Default::default();
        // Items 0, 2 in cluster 0; items 1, 3, 4 in cluster 1.
        let labels = [0u32, 1, 0, 1, 1];
        let cfg = AutoEncoderConfig {
            dims: vec![4],
            decoder: DecoderKind::PerCluster,
            dropout: 0.0,
            ..AutoEncoderConfig::default()
        };
        B::seed(&dev, 5);
        let m = ClusteredAutoEncoder::<B>::new(&ItemClusters::by_items(&labels), &cfg, &dev);
        assert_eq!(m.cluster_widths(), &[1, 3]);
        let x = Tensor::<B, 2>::from_floats(
            [[1.0, 0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0, 0.0]],
            &dev,
        );
        let e = m.encode(x.clone(), None, false);
        assert_eq!(e.mu.dims(), [2, 4]);
        // Cluster 0's encoder sees items (0, 2) only: changing item 1 leaves μ_0 alone.
        let x2 = Tensor::<B, 2>::from_floats(
            [[1.0, 1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0, 0.0]],
            &dev,
        );
        let e2 = m.encode(x2, None, false);
        let mu0 = |e: &Encoded<B>| {
            e.mu.clone()
                .narrow(1, 0, 1)
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(mu0(&e), mu0(&e2));
        // By hand for user 0: h = tanh(W·[x0, x2] + b) with W [2, 2]; μ = h[0], logvar = h[1].
        let w: Vec<f32> = m.encoders[0][0]
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let mu_hand = (1.0 * w[0] + 0.0 * w[2]).tanh();
        assert!(
            (mu0(&e)[0] - mu_hand).abs() < 1e-6,
            "{} vs {mu_hand}",
            mu0(&e)[0]
        );
        // Decoding: cluster 1's decoder maps latent dims 1..4 to items 1, 3, 4 in that order.
        let z = Tensor::<B, 2>::from_floats([[0.0, 1.0, -1.0, 0.5]], &dev);
        let s: Vec<f32> = m
            .decode(z.clone())
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let d1 = m.decoders[1][0].forward(z.narrow(1, 1, 3));
        let d1: Vec<f32> = d1.into_data().convert::<f32>().to_vec().unwrap();
        assert_eq!([s[1], s[3], s[4]], [d1[0], d1[1], d1[2]]);
        // KL by hand from μ and log σ²: −½ · mean_b Σ_d (1 + lv − μ² − e^lv).
        let host = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        let (mu, lv) = (host(e.mu.clone()), host(e.logvar.clone()));
        let hand: f64 = mu
            .iter()
            .zip(&lv)
            .map(|(&m, &l)| (1.0 + l - m * m - l.exp()) as f64)
            .sum::<f64>()
            * -0.5
            / 2.0;
        let kl: f32 = e.kl.into_scalar().elem();
        assert!((kl as f64 - hand).abs() < 1e-5, "{kl} vs {hand}");
        assert!(hand > 0.0, "random weights give a non-trivial KL");
    }

    /// Each cluster's entries and their values, by hand, whatever the blocks of rows the values
    /// are taken in (1 row each, 2, all): items 0, 2 in cluster 0; items 1, 3, 4 in cluster 1;
    /// row 2 empty, and cluster 0 has one entry only.
    #[test]
    fn sparse_entries_by_cluster() {
        let dev = Default::default();
        let labels = [0u32, 1, 0, 1, 1];
        let m = ClusteredAutoEncoder::<B>::new(
            &ItemClusters::by_items(&labels),
            &AutoEncoderConfig::default(),
            &dev,
        );
        let x = [
            [0.0f32, 2.0, 0.0, 1.0, 3.0],
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0; 5],
        ];
        let nz = RowNonzeros::of_dense(x.as_flattened(), 5);
        let target = Tensor::<B, 2>::from_floats(x, &dev);
        for block in [1, 2, 1000] {
            let got: Vec<(Vec<i64>, Vec<i64>, Vec<f32>)> = m
                .cluster_entries_in_blocks(&nz, &target, block)
                .into_iter()
                .map(|input| match input {
                    FirstLayerInput::Sparse { row, col, values } => {
                        (row, col, values.into_data().to_vec::<f32>().unwrap())
                    }
                    FirstLayerInput::Dense(_) => panic!("sparse input expected"),
                })
                .collect();
            assert_eq!(
                got,
                vec![
                    (vec![1], vec![0], vec![1.0]),
                    (vec![0, 0, 0], vec![0, 1, 2], vec![2.0, 1.0, 3.0]),
                ],
                "blocks of {block} rows"
            );
        }
    }

    #[test]
    fn multinomial_nll_by_hand() {
        let dev = Default::default();
        let s = Tensor::<B, 2>::from_floats([[0.0, (2.0f32).ln()]], &dev);
        let t = Tensor::<B, 2>::from_floats([[1.0, 1.0]], &dev);
        // log_softmax = [ln(1/3), ln(2/3)] → −(ln(1/3) + ln(2/3)) = ln(4.5).
        let v: f32 = multinomial_nll(s, t).into_scalar().elem();
        assert!((v - 4.5f32.ln()).abs() < 1e-6, "{v}");
    }
}
