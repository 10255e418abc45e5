//! L-DiffRec/LT-DiffRec as one module (spec §4.4–4.5): the clustered autoencoder and the
//! denoiser that runs in its latent space, their joint loss, and inference. [`Recommender`] puts
//! either model behind one scoring call.

use burn::module::Module;
use burn::prelude::*;

use crate::autoencoder::{ClusteredAutoEncoder, ItemClusters, multinomial_nll};
use crate::config::ModelConfig;
use crate::denoiser::{Denoiser, InitScheme};
use crate::diffusion::GaussianDiffusion;
use crate::shapes::{ParamShape, ParamShapes, join};

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

    /// Spec §4.4 for rows `x` ([batch, n_items]), steps `ts` with importance weights `pts`, the
    /// diffusion weight `lambda` and the KL weight `kl_weight`. The latent is not detached: the
    /// diffusion loss trains the encoders too, and the decoder reads the denoiser's x̂0, so the
    /// reconstruction trains the denoiser.
    pub fn loss(
        &self,
        diffusion: &GaussianDiffusion,
        x: Tensor<B, 2>,
        ts: &[usize],
        pts: &[f64],
        lambda: f64,
        kl_weight: f64,
    ) -> LatentLoss<B> {
        let encoded = self.autoencoder.encode(x, true);
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
    /// Run on a non-autodiff backend (no dropout).
    pub fn score(&self, diffusion: &GaussianDiffusion, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mu = self.autoencoder.encode(x, false).mu;
        self.autoencoder
            .decode(diffusion.p_sample(&self.denoiser, mu))
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
    /// Scores for every item of the rows `x` ([batch, n_items], item order).
    pub fn score(&self, diffusion: &GaussianDiffusion, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Recommender::Dense(m) => diffusion.p_sample(m, x),
            Recommender::Latent(m) => m.score(diffusion, x),
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
    use crate::config::{AutoEncoderConfig, DenoiserConfig, DiffusionConfig, Schedule, Variant};
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
        let out = m.loss(&d, x, &[1, 3], &[1.0, 1.0], 0.25, 0.5);
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
        let dev: burn_flex::FlexDevice = Default::default();
        let mut cfg = config();
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
                .encode(Tensor::from_floats(x, &dev), false)
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
        assert!((l1 - l3).abs() <= 1e-4 * l1.abs(), "{l3} vs {l1}");
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

    #[test]
    fn scores_are_the_decoded_reverse_pass_of_mu() {
        let dev = Default::default();
        B::seed(&dev, 4);
        let cfg = config();
        let d = GaussianDiffusion::new(&cfg.diffusion, cfg.beta_fixed()).unwrap();
        let labels = [0u32, 1, 0, 1, 1, 0, 1];
        let m = LatentDiffRec::<B>::new(&ItemClusters::by_items(&labels), &cfg, &dev);
        let x = Tensor::<B, 2>::from_floats([[1.0, 0., 1., 0., 0., 1., 0.]], &dev);
        let host = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        let want = host(
            m.autoencoder
                .decode(d.p_sample(&m.denoiser, m.autoencoder.encode(x.clone(), false).mu)),
        );
        let r = Recommender::Latent(m);
        let got = host(r.score(&d, x));
        assert_eq!(got.len(), 7);
        assert_eq!(got, want);
    }
}
