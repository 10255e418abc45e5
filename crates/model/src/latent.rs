//! L-DiffRec/LT-DiffRec as one module (spec §4.4–4.5): the clustered autoencoder and the
//! denoiser that runs in its latent space, their joint loss, and inference. [`Recommender`] puts
//! either model behind one scoring call.

use burn::module::Module;
use burn::prelude::*;

use crate::autoencoder::{ClusteredAutoEncoder, ItemClusters, multinomial_nll};
use crate::config::ModelConfig;
use crate::denoiser::{Denoiser, InitScheme};
use crate::diffusion::{GaussianDiffusion, Prepared};
use crate::shapes::{ParamShape, ParamShapes, join};
use crate::sparse::RowNonzeros;

/// The latent diffusion recommender.
#[derive(Module, Debug)]
pub struct LatentDiffRec<B: Backend> {
    /// Encoders and decoder (the trainer's first optimiser).
    pub autoencoder: ClusteredAutoEncoder<B>,
    /// The denoiser over the concatenated latent (the second optimiser).
    pub denoiser: Denoiser<B>,
}

/// One batch's loss and its parts.
pub struct LatentLoss<B: Backend> {
    /// λ·diffusion + reconstruction + γ·KL: the quantity to differentiate.
    pub loss: Tensor<B, 1>,
    /// The diffusion loss (mean over the batch, importance-weighted).
    pub diffusion: Tensor<B, 1>,
    /// The multinomial reconstruction loss of the decoded x̂0.
    pub reconstruction: Tensor<B, 1>,
    pub kl: Tensor<B, 1>,
    /// weight_t · mse per sample (the step sampler's history).
    pub weighted: Vec<f64>,
}

impl<B: Backend> ParamShapes for LatentDiffRecRecord<B> {
    fn param_shapes(&self, path: &str, out: &mut Vec<ParamShape>) {
        self.autoencoder
            .param_shapes(&join(path, "autoencoder"), out);
        self.denoiser.param_shapes(&join(path, "denoiser"), out);
    }
}

impl<B: Backend> LatentDiffRec<B> {
    /// The items' clusters and their latent weights. Xavier-normal weights and zero biases
    /// throughout (spec §3.3).
    pub fn new(clusters: &ItemClusters, cfg: &ModelConfig, device: &B::Device) -> Self {
        Self::placed(clusters, cfg, std::slice::from_ref(device))
    }

    /// Model parallelism: the cluster encoders spread over `devices`
    /// ([`ClusteredAutoEncoder::placed`]); the denoiser and decoder on `devices[0]`.
    pub fn placed(clusters: &ItemClusters, cfg: &ModelConfig, devices: &[B::Device]) -> Self {
        let device = &devices[0];
        let autoencoder = ClusteredAutoEncoder::placed(clusters, &cfg.autoencoder, devices);
        let denoiser = Denoiser::new(
            autoencoder.latent_width(),
            &cfg.denoiser,
            InitScheme::Xavier,
            device,
        );
        LatentDiffRec {
            autoencoder,
            denoiser,
        }
    }

    /// Spec §4.4 for rows `x` ([batch, n_items]; `nonzeros`: its nonzero entries where the
    /// caller has them, see [`ClusteredAutoEncoder::encode`]), steps `ts` with importance
    /// weights `pts`, the diffusion weight `lambda` and the KL weight `kl_weight`. The latent is not detached: the
    /// diffusion loss trains the encoders too, and the decoder reads the denoiser's x̂0, so the
    /// reconstruction trains the denoiser.
    pub fn loss(
        &self,
        diffusion: &GaussianDiffusion,
        x: Tensor<B, 2>,
        nonzeros: Option<&RowNonzeros>,
        ts: &[usize],
        pts: &[f64],
        lambda: f64,
        kl_weight: f64,
    ) -> LatentLoss<B> {
        let encoded = self.autoencoder.encode(x, nonzeros, true);
        let terms = diffusion.training_loss(&self.denoiser, encoded.latent, ts, pts);
        let recon = self.autoencoder.decode(terms.pred_x0);
        let reconstruction = multinomial_nll(recon, encoded.target);
        let loss =
            terms.loss.clone() * lambda + reconstruction.clone() + encoded.kl.clone() * kl_weight;
        LatentLoss {
            loss,
            diffusion: terms.loss,
            reconstruction,
            kl: encoded.kl,
            weighted: terms.weighted,
        }
    }

    /// Scores for every item (spec §4.5): μ, the reverse diffusion in the latent, the decoder.
    /// Run on a non-autodiff backend (no dropout). `nonzeros` as for [`Self::loss`]; `prepared`:
    /// [`GaussianDiffusion::prepare`] of this model's denoiser, made once for many blocks (or
    /// [`Recommender::score`], which prepares for one).
    pub fn score_prepared(
        &self,
        diffusion: &GaussianDiffusion,
        prepared: &Prepared<B>,
        x: Tensor<B, 2>,
        nonzeros: Option<&RowNonzeros>,
    ) -> Tensor<B, 2> {
        let mu = self.autoencoder.encode(x, nonzeros, false).mu;
        self.autoencoder
            .decode(diffusion.p_sample_prepared(&self.denoiser, prepared, mu))
    }
}

/// A trained model of any variant, as inference sees it.
#[derive(Debug)]
pub enum Recommender<B: Backend> {
    /// DiffRec/T-DiffRec: the denoiser over the item vector.
    Dense(Denoiser<B>),
    /// L-DiffRec/LT-DiffRec.
    Latent(LatentDiffRec<B>),
}

impl<B: Backend> Recommender<B> {
    /// Scores for every item of the rows `x` ([batch, n_items], item order); `nonzeros`: its
    /// nonzero entries where the caller has them (read by L-DiffRec's sparse encoders only,
    /// see [`Self::reads_sparse`]).
    pub fn score(
        &self,
        diffusion: &GaussianDiffusion,
        x: Tensor<B, 2>,
        nonzeros: Option<&RowNonzeros>,
    ) -> Tensor<B, 2> {
        self.score_prepared(diffusion, &self.prepare(diffusion), x, nonzeros)
    }

    /// The reverse pass's work that does not depend on the rows (see [`Prepared`]): prepare
    /// once, then [`Self::score_prepared`] every block of users.
    pub fn prepare(&self, diffusion: &GaussianDiffusion) -> Prepared<B> {
        match self {
            Recommender::Dense(m) => diffusion.prepare(m),
            Recommender::Latent(m) => diffusion.prepare(&m.denoiser),
        }
    }

    /// [`Self::score`] with `prepared` from [`Self::prepare`] of this model: the same scores.
    pub fn score_prepared(
        &self,
        diffusion: &GaussianDiffusion,
        prepared: &Prepared<B>,
        x: Tensor<B, 2>,
        nonzeros: Option<&RowNonzeros>,
    ) -> Tensor<B, 2> {
        match self {
            Recommender::Dense(m) => diffusion.p_sample_prepared(m, prepared, x),
            Recommender::Latent(m) => m.score_prepared(diffusion, prepared, x, nonzeros),
        }
    }

    /// Whether [`Self::score`] reads the rows' nonzero entries (and so gains from being given
    /// them).
    pub fn reads_sparse(&self) -> bool {
        match self {
            Recommender::Dense(_) => false,
            Recommender::Latent(m) => m.autoencoder.reads_sparse(),
        }
    }

    pub fn num_params(&self) -> usize {
        match self {
            Recommender::Dense(m) => m.num_params(),
            Recommender::Latent(m) => m.num_params(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        AutoEncoderConfig, DenoiserConfig, DiffusionConfig, EncoderInput, Schedule, Variant,
    };
    use burn::backend::Autodiff;
    use burn::optim::GradientsParams;

    type B = burn_flex::Flex;
    type AB = Autodiff<B>;

    fn config() -> ModelConfig {
        ModelConfig {
            variant: Variant::LDiffrec,
            diffusion: DiffusionConfig {
                steps: 5,
                schedule: Schedule::LinearVar,
                noise_scale: 0.1,
                noise_min: 0.1,
                noise_max: 0.5,
                ..DiffusionConfig::default()
            },
            denoiser: DenoiserConfig {
                dims: vec![6],
                dropout: 0.0,
                ..DenoiserConfig::default()
            },
            autoencoder: AutoEncoderConfig {
                dims: vec![4],
                dropout: 0.0,
                ..AutoEncoderConfig::default()
            },
        }
    }

    #[test]
    fn ml1m_sizes_match_the_reference() {
        // Spec §4.7: 1,773,070 autoencoder + 183,710 denoiser parameters.
        let labels: Vec<u32> = (0..2810).map(|i| (i >= 1850) as u32).collect();
        let cfg = ModelConfig {
            variant: Variant::LDiffrec,
            denoiser: DenoiserConfig {
                dims: vec![300],
                ..DenoiserConfig::default()
            },
            ..ModelConfig::default()
        };
        let m =
            LatentDiffRec::<B>::new(&ItemClusters::by_items(&labels), &cfg, &Default::default());
        assert_eq!(m.denoiser.num_params(), 183_710);
        assert_eq!(m.num_params(), 1_773_070 + 183_710);
    }

    #[test]
    fn loss_is_lambda_diffusion_plus_reconstruction_plus_weighted_kl_and_trains_both_parts() {
        let dev = Default::default();
        AB::seed(&dev, 3);
        let cfg = config();
        let d = GaussianDiffusion::new(&cfg.diffusion, cfg.beta_fixed()).unwrap();
        let labels = [0u32, 1, 0, 1, 1, 0, 1];
        let m = LatentDiffRec::<AB>::new(&ItemClusters::by_items(&labels), &cfg, &dev);
        let x = Tensor::<AB, 2>::from_floats(
            [[1.0, 0., 1., 0., 0., 1., 0.], [0., 1., 0., 1., 1., 0., 0.]],
            &dev,
        );
        let out = m.loss(&d, x, None, &[1, 3], &[1.0, 1.0], 0.25, 0.5);
        let v = |t: &Tensor<AB, 1>| t.clone().into_scalar().elem::<f64>();
        let want = 0.25 * v(&out.diffusion) + v(&out.reconstruction) + 0.5 * v(&out.kl);
        assert!(
            (v(&out.loss) - want).abs() < 1e-5,
            "{} vs {want}",
            v(&out.loss)
        );
        // A multinomial NLL of a 3-item row over 7 items is at least 3·ln(7/3)... in any case > 0.
        assert!(v(&out.reconstruction) > 0.0 && v(&out.kl) >= 0.0);
        let mut grads = out.loss.backward();
        let ae = GradientsParams::from_module(&mut grads, &m.autoencoder);
        let dn = GradientsParams::from_module(&mut grads, &m.denoiser);
        // Two encoders + one shared decoder (weight, bias each); the denoiser's three layers.
        assert_eq!((ae.len(), dn.len()), (6, 6));
    }

    /// Issue 5 (c): cluster encoders spread over devices (here three logical CPU devices, one
    /// thread each) give the single-device model's loss and gradients. The backend RNG is
    /// shared with concurrently running tests, so both models load the same record, and the
    /// diffusion noise is ~1e-5 (no reparameterisation, no dropout): a step is then a function
    /// of the parameters and the batch.
    #[test]
    fn model_parallel_clusters_give_the_single_device_loss() {
        for input in [EncoderInput::Dense, EncoderInput::Sparse] {
            model_parallel_matches_single_device(input);
        }
    }

    fn model_parallel_matches_single_device(input: EncoderInput) {
        let dev: burn_flex::FlexDevice = Default::default();
        let mut cfg = config();
        cfg.autoencoder.input = input;
        cfg.autoencoder.decoder = crate::config::DecoderKind::PerCluster;
        cfg.autoencoder.reparam = false;
        cfg.diffusion.noise_scale = 1e-5;
        cfg.diffusion.noise_min = 1e-5;
        cfg.diffusion.noise_max = 2e-5;
        cfg.diffusion.reweight = false;
        let d = GaussianDiffusion::new(&cfg.diffusion, cfg.beta_fixed()).unwrap();
        let labels = [0u32, 1, 2, 1, 1, 0, 2, 2, 0];
        let x = [
            [1.0f32, 0., 1., 0., 0., 1., 0., 1., 0.],
            [0., 1., 0., 1., 1., 0., 0., 0., 1.],
        ];
        let base = LatentDiffRec::<AB>::new(&ItemClusters::by_items(&labels), &cfg, &dev);
        let run = |devices: &[burn_flex::FlexDevice]| {
            let m = LatentDiffRec::<AB>::placed(&ItemClusters::by_items(&labels), &cfg, devices)
                .load_record(base.clone().into_record());
            let out = m.loss(
                &d,
                Tensor::from_floats(x, &dev),
                None,
                &[1, 3],
                &[1.0, 1.0],
                0.2,
                0.1,
            );
            let loss: f64 = out.loss.clone().into_scalar().elem();
            let mut grads = out.loss.backward();
            let g = GradientsParams::from_module(&mut grads, &m.autoencoder);
            // The gradients, seen through one plain SGD step: the stepped encoders' μ.
            let mut sgd = burn::optim::SgdConfig::new().init::<AB, ClusteredAutoEncoder<AB>>();
            let stepped = burn::optim::Optimizer::step(&mut sgd, 1.0, m.autoencoder.clone(), g);
            let norms: Vec<f32> = stepped
                .encode(Tensor::from_floats(x, &dev), None, false)
                .mu
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap();
            (loss, norms, m.autoencoder.encoder_devices().len())
        };
        let (l1, g1, _) = run(std::slice::from_ref(&dev));
        let (l3, g3, encoders) = run(&[dev, dev, dev]);
        assert_eq!(encoders, 3);
        assert!(
            (l1 - l3).abs() <= 1e-4 * l1.abs(),
            "{input:?}: {l3} vs {l1}"
        );
        assert!(!g1.is_empty() && g1.len() == g3.len());
        for (a, b) in g1.iter().zip(&g3) {
            assert!((a - b).abs() <= 1e-4, "{b} vs {a}");
        }
    }

    #[test]
    fn placement_balances_encoder_parameters() {
        use crate::autoencoder::{latent_dims, placement};
        // Three clusters on two devices: the largest alone, the two others together.
        let sizes = [1000, 600, 500];
        let dims = latent_dims(&sizes.map(|s| s as u64), &[30]);
        assert_eq!(placement(&sizes, &dims, 2), vec![0, 1, 1]);
        assert_eq!(placement(&sizes, &dims, 1), vec![0, 0, 0]);
    }

    /// Spec §4.5 by hand on the host: μ from each cluster's own items (tanh(W·x_c + b), its
    /// first half), the posterior-mean chain of spec §2.6 in the latent from x = μ (T' = 0),
    /// then each cluster's decoder on its latent chunk, scattered back to item order. Against
    /// `Recommender::score` with dropout and reparameterisation configured (inference must use
    /// neither), interleaved clusters and per-cluster decoders.
    #[test]
    fn scores_are_the_decoded_reverse_pass_of_mu() {
        for input in [EncoderInput::Dense, EncoderInput::Sparse] {
            scores_by_hand(input);
        }
    }

    fn scores_by_hand(input: EncoderInput) {
        use crate::config::DecoderKind;
        use crate::embedding::timestep_embedding;
        let dev = Default::default();
        B::seed(&dev, 4);
        let mut cfg = config();
        cfg.autoencoder.input = input;
        cfg.autoencoder.decoder = DecoderKind::PerCluster;
        cfg.autoencoder.dropout = 0.5;
        cfg.denoiser.dropout = 0.5;
        let d = GaussianDiffusion::new(&cfg.diffusion, cfg.beta_fixed()).unwrap();
        // Items 0, 2, 5 in cluster 0; items 1, 3, 4, 6 in cluster 1.
        let labels = [0u32, 1, 0, 1, 1, 0, 1];
        let members: [&[usize]; 2] = [&[0, 2, 5], &[1, 3, 4, 6]];
        let m = LatentDiffRec::<B>::new(&ItemClusters::by_items(&labels), &cfg, &dev);
        let widths = m.autoencoder.cluster_widths().to_vec();
        assert_eq!(widths, [1, 3]);
        let rows: [[f32; 7]; 2] = [[1., 0., 1., 0., 0., 1., 0.], [0., 1., 1., 1., 0., 0., 1.]];
        let host = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        // y = W·x + b for one linear layer stored as burn does ([in, out] weight).
        let affine = |layer: &burn::nn::Linear<B>, x: &[f64]| -> Vec<f64> {
            let w = host(layer.weight.val());
            let out = layer.weight.dims()[1];
            let b = layer.bias.as_ref().map(|b| {
                b.val()
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .unwrap()
            });
            (0..out)
                .map(|j| {
                    let dot: f64 = x
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v * w[i * out + j] as f64)
                        .sum();
                    dot + b.as_ref().map_or(0.0, |b| b[j] as f64)
                })
                .collect()
        };
        let (encoders, decoders) = m.autoencoder.layers();
        let mut want = Vec::new();
        for row in &rows {
            // μ: each cluster's encoder (one layer here) on its own items, tanh, first half.
            let mut z: Vec<f64> = Vec::new();
            for (c, items) in members.iter().enumerate() {
                let slice: Vec<f64> = items.iter().map(|&i| row[i] as f64).collect();
                let h = affine(&encoders[c][0], &slice);
                assert_eq!(h.len(), 2 * widths[c]);
                z.extend(h[..widths[c]].iter().map(|v| v.tanh()));
            }
            // The reverse chain (x0 mean type).
            let s = &d.schedule;
            for t in (0..d.steps()).rev() {
                let input: Vec<f32> = z.iter().map(|&v| v as f32).collect();
                let emb = Tensor::<B, 2>::from_data(
                    TensorData::new(
                        timestep_embedding(&[t], m.denoiser.time_emb()),
                        [1, m.denoiser.time_emb()],
                    ),
                    &dev,
                );
                let out = host(m.denoiser.forward(
                    Tensor::from_data(TensorData::new(input, [1, z.len()]), &dev),
                    emb,
                ));
                z = z
                    .iter()
                    .zip(&out)
                    .map(|(&zt, &o)| {
                        s.posterior_mean_coef1[t] * o as f64 + s.posterior_mean_coef2[t] * zt
                    })
                    .collect();
            }
            // Each cluster's decoder on its chunk, back to item order.
            let mut scores = vec![f64::NAN; 7];
            let mut start = 0;
            for (c, items) in members.iter().enumerate() {
                let out = affine(&decoders[c][0], &z[start..start + widths[c]]);
                start += widths[c];
                for (&i, v) in items.iter().zip(out) {
                    scores[i] = v;
                }
            }
            want.extend(scores);
        }
        let x = Tensor::<B, 2>::from_floats(rows, &dev);
        let nonzeros = RowNonzeros::of_dense(rows.as_flattened(), 7);
        let m = Recommender::Latent(m);
        assert_eq!(m.reads_sparse(), input == EncoderInput::Sparse);
        let got = host(m.score(&d, x, Some(&nonzeros)));
        let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        assert!(scale > 1e-3, "degenerate scores: {want:?}");
        assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * scale.max(1.0),
                "{input:?}, entry {k}: score {g} vs by hand {w}"
            );
        }
    }

    /// The sparse first layers train like the dense ones: the same record, the same batch and
    /// the same draws (dropout 0.5 on the input, reparameterisation, diffusion noise) give the
    /// same loss and, through one SGD step, the same encoder weights, up to float rounding.
    /// The batch leaves cluster 2 without items in row 1 and cluster 0 without any at all, the
    /// case where the sparse layer adds an entry of value 0.
    #[test]
    fn sparse_input_trains_like_dense() {
        let dev: burn_flex::FlexDevice = Default::default();
        let mut cfg = config();
        cfg.autoencoder.dropout = 0.5;
        let d = GaussianDiffusion::new(&cfg.diffusion, cfg.beta_fixed()).unwrap();
        let labels = [0u32, 1, 2, 1, 1, 0, 2, 2, 0];
        let x = [
            [0.0f32, 0., 1., 0., 1., 0., 0., 2., 0.],
            [0., 1., 0., 1., 1., 0., 0., 0., 0.],
        ];
        let clusters = ItemClusters::by_items(&labels);
        let base = LatentDiffRec::<AB>::new(&clusters, &cfg, &dev);
        let run = |input: EncoderInput, given: bool| {
            let mut cfg = cfg.clone();
            cfg.autoencoder.input = input;
            let m = LatentDiffRec::<AB>::new(&clusters, &cfg, &dev)
                .load_record(base.clone().into_record());
            let nonzeros = RowNonzeros::of_dense(x.as_flattened(), 9);
            crate::noise::reseed(11, 0);
            let out = m.loss(
                &d,
                Tensor::from_floats(x, &dev),
                given.then_some(&nonzeros),
                &[1, 3],
                &[1.0, 1.0],
                0.2,
                0.1,
            );
            let parts = [&out.loss, &out.diffusion, &out.reconstruction, &out.kl]
                .map(|t| t.clone().into_scalar().elem::<f64>());
            let mut grads = out.loss.backward();
            let g = GradientsParams::from_module(&mut grads, &m.autoencoder);
            let mut sgd = burn::optim::SgdConfig::new().init::<AB, ClusteredAutoEncoder<AB>>();
            let stepped = burn::optim::Optimizer::step(&mut sgd, 1.0, m.autoencoder.clone(), g);
            (parts, first_weights(&stepped), m.autoencoder.reads_sparse())
        };
        let (dense, w_dense, s0) = run(EncoderInput::Dense, false);
        assert!(!s0);
        let moved = w_dense
            .iter()
            .zip(&first_weights(&base.autoencoder))
            .filter(|(a, b)| a != b)
            .count();
        assert!(moved > 0, "the step moved the first layers");
        for given in [true, false] {
            let (sparse, w_sparse, s1) = run(EncoderInput::Sparse, given);
            assert!(s1);
            for (a, b) in dense.iter().zip(&sparse) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "{sparse:?} vs {dense:?}"
                );
            }
            assert_eq!(w_dense.len(), w_sparse.len());
            for (a, b) in w_dense.iter().zip(&w_sparse) {
                assert!((a - b).abs() <= 1e-5, "{b} vs {a}");
            }
        }
    }

    /// The encoders' first-layer weights, cluster after cluster.
    fn first_weights(m: &ClusteredAutoEncoder<AB>) -> Vec<f32> {
        m.layers()
            .0
            .iter()
            .flat_map(|layers| layers[0].weight.val().into_data().to_vec::<f32>().unwrap())
            .collect()
    }
}
