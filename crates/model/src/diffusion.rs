//! Gaussian diffusion over interaction vectors (spec §2): the forward process, the training loss
//! with SNR reweighting, and the reverse pass used for ranking.

use std::cell::OnceCell;

use burn::prelude::*;
use burn::tensor::Distribution;

use crate::config::{DiffusionConfig, MeanType};
use crate::denoiser::{AffineEnds, Denoiser};
use crate::embedding::timestep_embedding;
use crate::schedule::{DiffusionSchedule, ScheduleError};

/// The diffusion process and its settings.
#[derive(Debug, Clone)]
pub struct GaussianDiffusion {
    pub schedule: DiffusionSchedule,
    pub mean_type: MeanType,
    pub reweight: bool,
    pub sampling_steps: usize,
    pub sampling_noise: bool,
}

/// One batch's loss.
pub struct BatchLoss<B: Backend> {
    /// Mean over the batch of weight_t · mse / (p_t·T): the quantity to differentiate.
    pub loss: Tensor<B, 1>,
    /// weight_t · mse per sample, before division by p_t·T (the step sampler's history), f64.
    pub weighted: Vec<f64>,
    /// The denoiser's estimate of x0 (its output for `x0`, x̂0 from ε̂ for `eps`): L-DiffRec
    /// decodes it (spec §4.4).
    pub pred_x0: Tensor<B, 2>,
}

fn column<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 2> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n, 1]), device)
}

impl GaussianDiffusion {
    pub fn new(cfg: &DiffusionConfig, beta_fixed: bool) -> Result<Self, ScheduleError> {
        Ok(GaussianDiffusion {
            schedule: DiffusionSchedule::new(
                cfg.schedule,
                cfg.steps,
                cfg.noise_scale,
                cfg.noise_min,
                cfg.noise_max,
                beta_fixed,
            )?,
            mean_type: cfg.mean_type,
            reweight: cfg.reweight,
            sampling_steps: cfg.sampling_steps,
            sampling_noise: cfg.sampling_noise,
        })
    }

    pub fn steps(&self) -> usize {
        self.schedule.steps()
    }

    fn gather(&self, arr: &[f64], ts: &[usize]) -> Vec<f32> {
        ts.iter().map(|&t| arr[t] as f32).collect()
    }

    /// x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε with per-row t.
    pub fn q_sample<B: Backend>(
        &self,
        x0: Tensor<B, 2>,
        ts: &[usize],
        noise: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let dev = x0.device();
        let a = column::<B>(self.gather(&self.schedule.sqrt_alphas_cumprod, ts), &dev);
        let b = column::<B>(
            self.gather(&self.schedule.sqrt_one_minus_alphas_cumprod, ts),
            &dev,
        );
        x0 * a + noise * b
    }

    /// The training loss (spec §2.5) for steps `ts` with importance weights `pts` (= p_t·T).
    pub fn training_loss<B: Backend>(
        &self,
        model: &Denoiser<B>,
        x0: Tensor<B, 2>,
        ts: &[usize],
        pts: &[f64],
    ) -> BatchLoss<B> {
        let dev = x0.device();
        let [n, width] = x0.dims();
        let noise = crate::noise::standard_normal::<B>(n, width, &dev);
        let x_t = self.q_sample(x0.clone(), ts, noise.clone());
        let out = model.forward(x_t.clone(), Self::step_embedding(model, ts, &dev));
        // Per-sample mean squared error over items; for eps at t = 0 the x0 error halved.
        let (mse, pred_x0) = match self.mean_type {
            MeanType::X0 => ((x0 - out.clone()).square().mean_dim(1), out),
            MeanType::Eps => {
                let s = &self.schedule;
                let x0_hat = x_t * column::<B>(self.gather(&s.sqrt_recip_alphas_cumprod, ts), &dev)
                    - out.clone()
                        * column::<B>(self.gather(&s.sqrt_recipm1_alphas_cumprod, ts), &dev);
                let eps_mse = (noise - out).square().mean_dim(1);
                let mse = if self.reweight && ts.contains(&0) {
                    let x0_mse = (x0 - x0_hat.clone()).square().mean_dim(1) / 2.0;
                    let at0 =
                        column::<B>(ts.iter().map(|&t| (t == 0) as u8 as f32).collect(), &dev);
                    eps_mse * (at0.clone().neg() + 1.0) + x0_mse * at0
                } else {
                    eps_mse
                };
                (mse, x0_hat)
            }
        };
        self.batch_loss(mse, pred_x0, ts, pts)
    }

    /// [`GaussianDiffusion::training_loss`] for data rows held on the host (DiffRec/T-DiffRec:
    /// `x0` row-major, `cols` wide). With mean type x0 and an input that reaches the denoiser's
    /// dropout unchanged, on an autodiff backend, x_t and the dropout are drawn in one host pass
    /// (`noise::noised_dropped`) instead of four element-wise tensor passes: the same values
    /// and the same loss as `training_loss` on the uploaded rows.
    pub fn training_loss_rows<B: Backend>(
        &self,
        model: &Denoiser<B>,
        x0: Vec<f32>,
        cols: usize,
        ts: &[usize],
        pts: &[f64],
        device: &B::Device,
    ) -> BatchLoss<B> {
        let rows = ts.len();
        let upload =
            |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [rows, cols]), device);
        let p = match model.plain_input_dropout() {
            Some(p) if self.mean_type == MeanType::X0 && B::ad_enabled(device) => p,
            _ => return self.training_loss(model, upload(x0), ts, pts),
        };
        let s = &self.schedule;
        let input = crate::noise::noised_dropped(
            &x0,
            cols,
            &self.gather(&s.sqrt_alphas_cumprod, ts),
            &self.gather(&s.sqrt_one_minus_alphas_cumprod, ts),
            p,
        );
        let out = model.forward_dropped(upload(input), Self::step_embedding(model, ts, device));
        let mse = (upload(x0) - out.clone()).square().mean_dim(1);
        self.batch_loss(mse, out, ts, pts)
    }

    /// The sinusoidal embeddings of steps `ts`: [ts.len(), time_emb].
    fn step_embedding<B: Backend>(
        model: &Denoiser<B>,
        ts: &[usize],
        dev: &B::Device,
    ) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(
                timestep_embedding(ts, model.time_emb()),
                [ts.len(), model.time_emb()],
            ),
            dev,
        )
    }

    /// The batch loss from the per-sample mse: weights, the sampler's history, 1/(p_t·T).
    fn batch_loss<B: Backend>(
        &self,
        mse: Tensor<B, 2>,
        pred_x0: Tensor<B, 2>,
        ts: &[usize],
        pts: &[f64],
    ) -> BatchLoss<B> {
        let dev = mse.device();
        let weights: Vec<f64> = ts
            .iter()
            .map(|&t| self.schedule.loss_weight(t, self.mean_type, self.reweight))
            .collect();
        let mse_host: Vec<f32> = mse
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let weighted: Vec<f64> = mse_host
            .iter()
            .zip(&weights)
            .map(|(m, w)| *m as f64 * w)
            .collect();
        let scale = column::<B>(
            weights
                .iter()
                .zip(pts)
                .map(|(w, p)| (w / p) as f32)
                .collect(),
            &dev,
        );
        BatchLoss {
            loss: (mse * scale).mean(),
            weighted,
            pred_x0,
        }
    }

    /// The reverse pass used for ranking (spec §2.6): start from x0 (or its noised version at
    /// T' − 1), run all T steps down to 0, return the final x̂0.
    ///
    /// Without sampling noise each step is affine in x_t and in the denoiser's output, which is
    /// affine in its last hidden layer, while the next step needs x_t only through the first
    /// layer's x_t·W_x. Where it is cheaper (evaluation blocks of more than a few users; not a
    /// single user), the pass is therefore run on d_first-sized rows: `p_sample_folded`, the
    /// same result up to float rounding with ~5× fewer flops on ML-1M.
    pub fn p_sample<B: Backend>(&self, model: &Denoiser<B>, x0: Tensor<B, 2>) -> Tensor<B, 2> {
        self.p_sample_prepared(model, &self.prepare(model), x0)
    }

    /// What [`Self::p_sample`] can reuse across blocks of rows ranked by one `model`: see
    /// [`Prepared`].
    pub fn prepare<B: Backend>(&self, model: &Denoiser<B>) -> Prepared<B> {
        let ends = model
            .affine_ends()
            .filter(|e| !self.sampling_noise && !B::ad_enabled(&e.w_x.device()));
        Prepared {
            ends,
            products: OnceCell::new(),
        }
    }

    /// [`Self::p_sample`] with the work of [`Self::prepare`] done once by the caller for every
    /// block it ranks with `model`: the same result, bit for bit.
    pub fn p_sample_prepared<B: Backend>(
        &self,
        model: &Denoiser<B>,
        prepared: &Prepared<B>,
        x0: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let x_start = self.reverse_start(x0);
        match &prepared.ends {
            Some(ends) if self.folding_pays(ends, x_start.dims()[0]) => {
                let (m, v) = prepared.products.get_or_init(|| {
                    (
                        ends.w_out.clone().matmul(ends.w_x.clone()),
                        ends.b_out.clone().matmul(ends.w_x.clone()),
                    )
                });
                self.p_sample_folded(model, ends, m, v, x_start)
            }
            _ => self.p_sample_direct(model, x_start),
        }
    }

    /// One reverse step as x_{t−1} = a·x_t + b·out, where `out` is the denoiser's output at
    /// step `t` (x̂0 or ε̂) and x_{t−1} is the posterior mean (x̂0 itself at t = 0), in f64.
    fn step_affine(&self, t: usize) -> (f64, f64) {
        let s = &self.schedule;
        // x̂0 = r·x_t + q·out.
        let (r, q) = match self.mean_type {
            MeanType::X0 => (0.0, 1.0),
            MeanType::Eps => (
                s.sqrt_recip_alphas_cumprod[t],
                -s.sqrt_recipm1_alphas_cumprod[t],
            ),
        };
        if t == 0 {
            // c1 = 1, c2 = 0 at t = 0: the mean is x̂0 exactly.
            return (r, q);
        }
        let (c1, c2) = (s.posterior_mean_coef1[t], s.posterior_mean_coef2[t]);
        (c1 * r + c2, c1 * q)
    }

    /// Whether the folded pass costs fewer multiply-adds for `rows` rows than the direct one
    /// (the layers between the ends cost the same in both).
    fn folding_pays<B: Backend>(&self, ends: &AffineEnds<B>, rows: usize) -> bool {
        let [width, d_first] = ends.w_x.dims();
        let d_last = ends.w_out.dims()[0];
        let (n, t) = (rows as f64, self.steps() as f64);
        let ends_cost = (width * d_first + d_last * width) as f64;
        let direct = n * t * ends_cost;
        let folded = n * (ends_cost + t * (d_last * d_first) as f64)
            + ((d_last + 1) * width * d_first) as f64;
        folded < direct
    }

    /// x_T: x0 itself for T' = 0, else x0 noised to step T' − 1.
    fn reverse_start<B: Backend>(&self, x0: Tensor<B, 2>) -> Tensor<B, 2> {
        if self.sampling_steps == 0 {
            return x0;
        }
        let t = vec![self.sampling_steps - 1; x0.dims()[0]];
        let noise = x0.random_like(Distribution::Normal(0.0, 1.0));
        self.q_sample(x0, &t, noise)
    }

    /// The reverse pass step by step on full-width rows (the reference computation), from
    /// x_T = `x_start` ([`GaussianDiffusion::reverse_start`]).
    pub(crate) fn p_sample_direct<B: Backend>(
        &self,
        model: &Denoiser<B>,
        x_start: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let dev = x_start.device();
        let n = x_start.dims()[0];
        let s = &self.schedule;
        let mut x = x_start;
        for i in (0..self.steps()).rev() {
            let emb = Tensor::from_data(
                TensorData::new(
                    timestep_embedding(&vec![i; n], model.time_emb()),
                    [n, model.time_emb()],
                ),
                &dev,
            );
            let out = model.forward(x.clone(), emb);
            let (a, b) = self.step_affine(i);
            x = if a == 0.0 {
                out * (b as f32)
            } else {
                x * (a as f32) + out * (b as f32)
            };
            if self.sampling_noise && i > 0 {
                let std = (0.5 * s.posterior_log_variance_clipped[i]).exp() as f32;
                x = x.clone() + x.random_like(Distribution::Normal(0.0, 1.0)) * std;
            }
        }
        x
    }

    /// The deterministic reverse pass on the first layer's pre-activations. With x_T the start,
    /// h_t the denoiser's last hidden layer and (a_t, b_t) = `step_affine(t)`:
    /// u_t = x_t·W_x is carried as u_{t−1} = a_t·u_t + b_t·(h_t·(W_out·W_x) + b_out·W_x), and the
    /// result is p·x_T + (Σ κ_t·h_t)·W_out + (Σ κ_t)·b_out with κ_t = b_t·a_{t−1}···a_0 and
    /// p = a_{T−1}···a_0 (for `x0`, a_0 = 0: only κ_0 = 1 is non-zero).
    pub(crate) fn p_sample_folded<B: Backend>(
        &self,
        model: &Denoiser<B>,
        ends: &AffineEnds<B>,
        m: &Tensor<B, 2>,
        v: &Tensor<B, 2>,
        x_start: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let dev = x_start.device();
        let steps: Vec<(f64, f64)> = (0..self.steps()).map(|t| self.step_affine(t)).collect();
        let mut p = 1.0f64;
        let kappa: Vec<f64> = steps
            .iter()
            .map(|&(a, b)| {
                let k = b * p;
                p *= a;
                k
            })
            .collect();
        let AffineEnds { w_x, w_out, b_out } = ends.clone();
        let mut u = x_start.clone().matmul(w_x);
        let mut acc: Option<Tensor<B, 2>> = None;
        for (i, &(a, b)) in steps.iter().enumerate().rev() {
            let h = model.core(u.clone() + model.time_row(i, &dev));
            if i > 0 {
                let out_u = h.clone().matmul(m.clone()) + v.clone();
                u = u * (a as f32) + out_u * (b as f32);
            }
            if kappa[i] != 0.0 {
                let hk = h * (kappa[i] as f32);
                acc = Some(match acc {
                    Some(sum) => sum + hk,
                    None => hk,
                });
            }
        }
        let acc = acc.expect("κ_0 = b_0 is never zero");
        let x = acc.matmul(w_out) + b_out * (kappa.iter().sum::<f64>() as f32);
        if p == 0.0 {
            x
        } else {
            x + x_start * (p as f32)
        }
    }
}

/// The part of the ranking reverse pass that depends on the model, not on the rows: the
/// denoiser's end weights when the pass can be folded (no sampling noise, no autodiff, see
/// [`GaussianDiffusion::p_sample`]), and their products W_out·W_x and b_out·W_x, computed at the
/// first block that folds. Evaluation and recommendation prepare once and rank every block of
/// users with it; at 200,000 items W_out·W_x alone is d_last × 200,000 × d_first multiply-adds.
#[derive(Debug)]
pub struct Prepared<B: Backend> {
    ends: Option<AffineEnds<B>>,
    products: OnceCell<(Tensor<B, 2>, Tensor<B, 2>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DenoiserConfig, Schedule};
    use crate::denoiser::InitScheme;
    use burn::backend::Autodiff;

    type B = burn_flex::Flex;

    fn diffusion(mean_type: MeanType) -> GaussianDiffusion {
        let cfg = DiffusionConfig {
            steps: 5,
            schedule: Schedule::LinearVar,
            noise_scale: 0.1,
            noise_min: 0.1,
            noise_max: 0.5,
            mean_type,
            ..DiffusionConfig::default()
        };
        GaussianDiffusion::new(&cfg, false).unwrap()
    }

    #[test]
    fn q_sample_scales_rows_by_their_step() {
        let d = diffusion(MeanType::X0);
        let dev = Default::default();
        let x0 = Tensor::<B, 2>::ones([2, 3], &dev);
        let noise = Tensor::<B, 2>::ones([2, 3], &dev) * 2.0;
        let x = d
            .q_sample(x0, &[0, 4], noise)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap();
        let s = &d.schedule;
        for (row, t) in [(0, 0), (1, 4)] {
            let want = (s.sqrt_alphas_cumprod[t] + 2.0 * s.sqrt_one_minus_alphas_cumprod[t]) as f32;
            assert!((x[row * 3] - want).abs() < 1e-6);
        }
    }

    #[test]
    fn loss_is_the_weighted_mse_over_pt() {
        // The loss recomputed on the host from spec §2.5: x_t from the schedule's arrays (checked
        // against the spec's vectors) and the same ε (the first draw after reseeding), the
        // denoiser's output on it, the per-row squared error against the target (x0, or ε
        // with the x0 error halved at t = 0 under reweighting), w_t, and 1/(p_t·T). Dropout 0.
        type AB = Autodiff<B>;
        let dev = Default::default();
        let (rows, cols) = (3, 6);
        let x0: Vec<f32> = vec![
            1., 0., 0., 1., 0., 1., //
            0., 1., 1., 0., 0., 0., //
            1., 1., 0., 0., 1., 0.,
        ];
        let ts = [1usize, 3, 0];
        let pts = [0.5, 2.0, 1.25];
        for mean_type in [MeanType::X0, MeanType::Eps] {
            let d = diffusion(mean_type);
            AB::seed(&dev, 5);
            let cfg = DenoiserConfig {
                dims: vec![4],
                dropout: 0.0,
                ..DenoiserConfig::default()
            };
            let m = Denoiser::<AB>::new(cols, &cfg, InitScheme::DiffRec, &dev);
            let tensor =
                |v: Vec<f32>| Tensor::<AB, 2>::from_data(TensorData::new(v, [rows, cols]), &dev);
            crate::noise::reseed(9, 0);
            let eps: Vec<f32> = crate::noise::standard_normal::<AB>(rows, cols, &dev)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap();
            let s = &d.schedule;
            let x_t: Vec<f32> = (0..rows * cols)
                .map(|i| {
                    let t = ts[i / cols];
                    (s.sqrt_alphas_cumprod[t] * x0[i] as f64
                        + s.sqrt_one_minus_alphas_cumprod[t] * eps[i] as f64)
                        as f32
                })
                .collect();
            let emb = Tensor::<AB, 2>::from_data(
                TensorData::new(timestep_embedding(&ts, m.time_emb()), [rows, m.time_emb()]),
                &dev,
            );
            let out: Vec<f32> = m
                .forward(tensor(x_t.clone()), emb)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap();
            let mut want_weighted = Vec::new();
            let mut want_loss = 0.0;
            for r in 0..rows {
                let t = ts[r];
                let sq = |f: &dyn Fn(usize) -> f64| -> f64 {
                    (r * cols..(r + 1) * cols)
                        .map(|i| f(i).powi(2))
                        .sum::<f64>()
                        / cols as f64
                };
                let mse = match mean_type {
                    MeanType::X0 => sq(&|i| x0[i] as f64 - out[i] as f64),
                    MeanType::Eps if t == 0 => {
                        sq(&|i| {
                            let x0_hat = s.sqrt_recip_alphas_cumprod[t] * x_t[i] as f64
                                - s.sqrt_recipm1_alphas_cumprod[t] * out[i] as f64;
                            x0[i] as f64 - x0_hat
                        }) / 2.0
                    }
                    MeanType::Eps => sq(&|i| eps[i] as f64 - out[i] as f64),
                };
                // Spec §2.5: 1 at t = 0; SNR_{t−1} − SNR_t (x0, no ½) or
                // (1 − ᾱ_t)/((1 − ᾱ_{t−1})²·(1 − β_t)) (ε) after.
                let w = if t == 0 {
                    1.0
                } else {
                    let ac = &s.alphas_cumprod;
                    let snr = |k: usize| ac[k] / (1.0 - ac[k]);
                    match mean_type {
                        MeanType::X0 => snr(t - 1) - snr(t),
                        MeanType::Eps => {
                            (1.0 - ac[t]) / ((1.0 - ac[t - 1]).powi(2) * (1.0 - s.betas[t]))
                        }
                    }
                };
                want_weighted.push(w * mse);
                want_loss += w * mse / pts[r] / rows as f64;
            }
            crate::noise::reseed(9, 0);
            let got = d.training_loss(&m, tensor(x0.clone()), &ts, &pts);
            for (r, (g, w)) in got.weighted.iter().zip(&want_weighted).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs(),
                    "{mean_type:?} row {r}: weighted {g} vs {w}"
                );
            }
            let loss = got.loss.clone().into_scalar().elem::<f64>();
            assert!(
                (loss - want_loss).abs() <= 1e-5 * want_loss,
                "{mean_type:?}: {loss} vs {want_loss}"
            );
            // The loss is differentiable: every parameter tensor gets a gradient.
            let grads = burn::optim::GradientsParams::from_grads(got.loss.backward(), &m);
            assert_eq!(
                grads.len(),
                6,
                "emb, one input and one output layer: 3 × (weight, bias)"
            );
        }
    }

    #[test]
    fn host_rows_give_the_loss_and_gradients_of_the_tensor_path() {
        // training_loss_rows draws x_t and the dropout on the host; training_loss does it with
        // tensor ops. Same seed: the same loss, sampler history and gradients, bit for bit.
        type AB = Autodiff<B>;
        let dev = Default::default();
        let (rows, cols) = (5, 9);
        let x0: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7) % 3 == 0) as u8 as f32)
            .collect();
        let ts = [0usize, 1, 4, 2, 4];
        let pts = [0.5, 2.0, 1.0, 0.8, 1.3];
        for (mean_type, dropout) in [
            (MeanType::X0, 0.5),
            (MeanType::X0, 0.0),
            (MeanType::Eps, 0.5),
        ] {
            let d = diffusion(mean_type);
            let cfg = DenoiserConfig {
                dims: vec![4],
                dropout,
                ..DenoiserConfig::default()
            };
            let m = Denoiser::<AB>::new(cols, &cfg, InitScheme::DiffRec, &dev);
            let run = |on_host: bool| {
                crate::noise::reseed(77, 0);
                let out = if on_host {
                    d.training_loss_rows(&m, x0.clone(), cols, &ts, &pts, &dev)
                } else {
                    let t =
                        Tensor::<AB, 2>::from_data(TensorData::new(x0.clone(), [rows, cols]), &dev);
                    d.training_loss(&m, t, &ts, &pts)
                };
                let loss = out.loss.clone().into_scalar().elem::<f32>().to_bits();
                let grads = out.loss.backward();
                let w = m.affine_ends().unwrap().w_out;
                let g: Vec<u32> = host(w.grad(&grads).unwrap())
                    .iter()
                    .map(|x| x.to_bits())
                    .collect();
                (loss, out.weighted, g)
            };
            let (tensor, host) = (run(false), run(true));
            assert_eq!(tensor, host, "{mean_type:?}, dropout {dropout}");
            crate::noise::reseed(78, 0);
            let other = d.training_loss_rows(&m, x0.clone(), cols, &ts, &pts, &dev);
            assert_ne!(other.weighted, host.1, "another seed draws other noise");
        }
    }

    #[test]
    fn reverse_pass_is_the_posterior_mean_chain() {
        // Spec §2.6 by hand on the host, T' = 0 and no noise: from x = x0, for t = T−1 … 0,
        // x̂0 = the output (x0) or √(1/ᾱ_t)·x − √(1/ᾱ_t − 1)·ε̂ (ε), then
        // x = coef1_t·x̂0 + coef2_t·x; the result is x after t = 0. Against `p_sample`, which
        // may take the folded pass: the same up to float rounding.
        let dev = Default::default();
        let (rows, cols) = (3, 6);
        for mean_type in [MeanType::X0, MeanType::Eps] {
            let d = diffusion(mean_type);
            B::seed(&dev, 1);
            let cfg = DenoiserConfig {
                dims: vec![4],
                ..DenoiserConfig::default()
            };
            let m = Denoiser::<B>::new(cols, &cfg, InitScheme::DiffRec, &dev);
            let x0: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 5) % 7) as f32 / 6.0)
                .collect();
            let s = &d.schedule;
            let mut x: Vec<f64> = x0.iter().map(|&v| v as f64).collect();
            for t in (0..d.steps()).rev() {
                let input: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let emb = Tensor::<B, 2>::from_data(
                    TensorData::new(
                        timestep_embedding(&vec![t; rows], m.time_emb()),
                        [rows, m.time_emb()],
                    ),
                    &dev,
                );
                let out = host(m.forward(
                    Tensor::from_data(TensorData::new(input, [rows, cols]), &dev),
                    emb,
                ));
                x = x
                    .iter()
                    .zip(&out)
                    .map(|(&xt, &o)| {
                        let x0_hat = match mean_type {
                            MeanType::X0 => o as f64,
                            MeanType::Eps => {
                                s.sqrt_recip_alphas_cumprod[t] * xt
                                    - s.sqrt_recipm1_alphas_cumprod[t] * o as f64
                            }
                        };
                        s.posterior_mean_coef1[t] * x0_hat + s.posterior_mean_coef2[t] * xt
                    })
                    .collect();
            }
            let got = host(d.p_sample(
                &m,
                Tensor::from_data(TensorData::new(x0.clone(), [rows, cols]), &dev),
            ));
            let scale = x.iter().fold(0f64, |a, v| a.max(v.abs()));
            assert!(scale > 1e-3, "{mean_type:?}: degenerate output");
            for (k, (g, w)) in got.iter().zip(&x).enumerate() {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * scale.max(1.0),
                    "{mean_type:?} entry {k}: p_sample {g} vs by hand {w}"
                );
            }
        }
    }

    fn host(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    #[test]
    fn folded_reverse_pass_equals_the_direct_one() {
        // Two hidden layers on each side (the DiffRec shape), random non-binary rows, both mean
        // types, with and without forward noising (T' > 0 draws noise: reseed before each path).
        let dev = Default::default();
        for (mean_type, sampling_steps) in [
            (MeanType::X0, 0),
            (MeanType::Eps, 0),
            (MeanType::X0, 3),
            (MeanType::Eps, 2),
        ] {
            let d = GaussianDiffusion {
                sampling_steps,
                ..diffusion(mean_type)
            };
            B::seed(&dev, 11);
            let cfg = DenoiserConfig {
                dims: vec![5, 7],
                ..DenoiserConfig::default()
            };
            let m = Denoiser::<B>::new(12, &cfg, InitScheme::DiffRec, &dev);
            let x0 = Tensor::<B, 2>::random([6, 12], Distribution::Uniform(0.0, 1.0), &dev);
            // One start for both (for T' > 0 it is noised: reseeding the backend's global
            // generator between the two runs raced with other tests drawing from it).
            let x_start = d.reverse_start(x0);
            let want = host(d.p_sample_direct(&m, x_start.clone()));
            let ends = m.affine_ends().unwrap();
            let mm = ends.w_out.clone().matmul(ends.w_x.clone());
            let v = ends.b_out.clone().matmul(ends.w_x.clone());
            let got = host(d.p_sample_folded(&m, &ends, &mm, &v, x_start));
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(scale > 1e-3, "{mean_type:?}: degenerate output");
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * scale.max(1.0),
                    "{mean_type:?} T'={sampling_steps} entry {k}: folded {g} vs direct {w}"
                );
            }
        }
    }

    #[test]
    fn folding_is_chosen_by_its_cost() {
        // ML-1M's DiffRec (2810 items, dims [200, 600], T = 40): setting up the folded pass
        // costs a 600×2810×600 product, which pays from about 9 rows on.
        let d = GaussianDiffusion::new(&DiffusionConfig::default(), true).unwrap();
        assert_eq!(d.steps(), 40);
        let dev = Default::default();
        let m = Denoiser::<B>::new(2810, &DenoiserConfig::default(), InitScheme::DiffRec, &dev);
        let ends = m.affine_ends().unwrap();
        assert_eq!(ends.w_x.dims(), [2810, 600]);
        assert_eq!(ends.w_out.dims(), [600, 2810]);
        assert!(!d.folding_pays(&ends, 1));
        assert!(!d.folding_pays(&ends, 8));
        assert!(d.folding_pays(&ends, 9));
        assert!(d.folding_pays(&ends, 2048));
        // With the input normalised the first layer is not affine in x_t: no folding.
        let norm = DenoiserConfig {
            norm: true,
            ..DenoiserConfig::default()
        };
        assert!(
            Denoiser::<B>::new(30, &norm, InitScheme::DiffRec, &dev)
                .affine_ends()
                .is_none()
        );
    }

    /// Prepared once and used for several blocks, the reverse pass gives each block what
    /// `p_sample` gives it alone, bit for bit; the end products are computed at the first block
    /// that folds and kept; a single row (which does not fold) leaves them uncomputed.
    #[test]
    fn prepared_pass_equals_p_sample_per_block() {
        let dev = Default::default();
        let d = diffusion(MeanType::X0);
        B::seed(&dev, 5);
        let cfg = DenoiserConfig {
            dims: vec![5, 7],
            ..DenoiserConfig::default()
        };
        let m = Denoiser::<B>::new(12, &cfg, InitScheme::DiffRec, &dev);
        let x = Tensor::<B, 2>::random([7, 12], Distribution::Uniform(0.0, 1.0), &dev);
        let prepared = d.prepare(&m);
        assert!(prepared.ends.is_some() && prepared.products.get().is_none());
        let one = x.clone().slice([0..1, 0..12]);
        assert!(!d.folding_pays(prepared.ends.as_ref().unwrap(), 1));
        assert_eq!(
            host(d.p_sample_prepared(&m, &prepared, one.clone())),
            host(d.p_sample(&m, one))
        );
        assert!(
            prepared.products.get().is_none(),
            "a single row does not fold"
        );
        for rows in [0..4, 4..7] {
            let block = x.clone().slice([rows.clone(), 0..12]);
            assert!(d.folding_pays(prepared.ends.as_ref().unwrap(), rows.len()));
            let got = host(d.p_sample_prepared(&m, &prepared, block.clone()));
            assert_eq!(got, host(d.p_sample(&m, block)), "rows {rows:?}");
            assert!(prepared.products.get().is_some());
        }
        // With sampling noise nothing is folded, so nothing is prepared.
        let noisy = GaussianDiffusion {
            sampling_noise: true,
            ..d.clone()
        };
        assert!(noisy.prepare(&m).ends.is_none());
    }
}
