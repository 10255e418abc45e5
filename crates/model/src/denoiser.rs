//! The MLP denoiser (spec §3): input dropout, the time embedding through a linear layer,
//! concatenated after the input, tanh between layers, a raw linear output.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;

use crate::config::DenoiserConfig;
use crate::embedding::timestep_embedding;
use crate::shapes::{ParamShape, ParamShapes, join};

/// How parameters are initialised (spec §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitScheme {
    /// DiffRec/T-DiffRec: W ~ N(0, √(2/(fan_in+fan_out))), b ~ N(0, 0.001).
    DiffRec,
    /// L-DiffRec/LT-DiffRec: Xavier normal, b = 0.
    Xavier,
}

/// The denoiser network.
#[derive(Module, Debug)]
pub struct Denoiser<B: Backend> {
    emb: Linear<B>,
    in_layers: Vec<Linear<B>>,
    out_layers: Vec<Linear<B>>,
    dropout: Dropout,
    time_emb: usize,
    norm: bool,
}

/// A linear layer initialised per `init` (shared with the autoencoder).
pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    init: InitScheme,
    device: &B::Device,
) -> Linear<B> {
    let std = (2.0 / (d_in + d_out) as f64).sqrt();
    let mut l = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init::<B>(device);
    l.bias = Some(match init {
        InitScheme::DiffRec => Initializer::Normal {
            mean: 0.0,
            std: 0.001,
        }
        .init([d_out], device),
        InitScheme::Xavier => Initializer::Zeros.init([d_out], device),
    });
    l
}

impl<B: Backend> ParamShapes for DenoiserRecord<B> {
    fn param_shapes(&self, path: &str, out: &mut Vec<ParamShape>) {
        self.emb.param_shapes(&join(path, "emb"), out);
        self.in_layers.param_shapes(&join(path, "in_layers"), out);
        self.out_layers.param_shapes(&join(path, "out_layers"), out);
    }
}

impl<B: Backend> Denoiser<B> {
    /// Builds the network for vectors of size `width` (n_items, or the latent size):
    /// out sizes = dims + [width], in sizes = their reverse, the first widened by the embedding.
    pub fn new(width: usize, cfg: &DenoiserConfig, init: InitScheme, device: &B::Device) -> Self {
        let mut out_dims = cfg.dims.clone();
        out_dims.push(width);
        let in_dims: Vec<usize> = out_dims.iter().rev().copied().collect();
        let mut in_sizes = in_dims.clone();
        in_sizes[0] += cfg.time_emb;
        let in_layers = in_sizes
            .windows(2)
            .map(|w| linear(w[0], w[1], init, device))
            .collect();
        let out_layers = out_dims
            .windows(2)
            .map(|w| linear(w[0], w[1], init, device))
            .collect();
        let model = Denoiser {
            emb: linear(cfg.time_emb, cfg.time_emb, init, device),
            in_layers,
            out_layers,
            dropout: DropoutConfig::new(cfg.dropout).init(),
            time_emb: cfg.time_emb,
            norm: cfg.norm,
        };
        // Parameters are created lazily in burn; materialise them now so that clones (replicas)
        // share values and the RNG is consumed in a fixed order.
        let _ = model.num_params();
        model
    }

    /// Size of the time embedding this network expects.
    pub fn time_emb(&self) -> usize {
        self.time_emb
    }

    /// `x`: [batch, width] noisy vectors; `emb`: [batch, time_emb] sinusoidal embeddings.
    /// Dropout is active only on an autodiff backend (training).
    pub fn forward(&self, x: Tensor<B, 2>, emb: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = if self.norm {
            let n = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
            x / n
        } else {
            x
        };
        self.forward_dropped(crate::noise::dropout(x, self.dropout.prob), emb)
    }

    /// The input dropout's probability when the input reaches it unchanged (no `norm`): then a
    /// caller may apply it on the host itself (`noise::noised_dropped`, training only) and call
    /// [`Denoiser::forward_dropped`].
    pub fn plain_input_dropout(&self) -> Option<f64> {
        (!self.norm).then_some(self.dropout.prob)
    }

    /// [`Denoiser::forward`] from after the input normalisation and dropout.
    pub fn forward_dropped(&self, x: Tensor<B, 2>, emb: Tensor<B, 2>) -> Tensor<B, 2> {
        let e = self.emb.forward(emb);
        let mut layers = self.in_layers.iter();
        let mut h = match layers.next() {
            Some(first) if B::ad_enabled(&e.device()) => {
                Self::first_layer_training(first, x, e).tanh()
            }
            Some(first) => first.forward(Tensor::cat(vec![x, e], 1)).tanh(),
            None => Tensor::cat(vec![x, e], 1),
        };
        for layer in layers {
            h = layer.forward(h).tanh();
        }
        let last = self.out_layers.len().saturating_sub(1);
        for (k, layer) in self.out_layers.iter().enumerate() {
            h = layer.forward(h);
            if k < last {
                h = h.tanh();
            }
        }
        h
    }

    /// The first layer's pre-activation `[x, e]·W + b` for training, written so that autodiff
    /// never forms the gradient of the whole concatenated input.
    ///
    /// The time embedding `e` is tracked (its layer is trained), so `[x, e]` would be tracked
    /// even where `x` is not (DiffRec's noised input), and the backward pass would compute
    /// `g·Wᵀ` for all `width + time_emb` columns only to keep the embedding's last few: on
    /// ML-1M a 400×600×2,820 product per batch, a sixth of the step's matrix work. Here the
    /// concatenation sees a detached copy of `e`, and `e` enters again through
    /// `(e − detach(e))·detach(W_e)`, which is exactly zero in the forward pass and gives `e`
    /// its gradient `g·W_eᵀ` (`W_e`: the embedding's rows of `W`). `W` still gets `[x, e]ᵀ·g`
    /// from the one product, and `x`, when tracked (L-DiffRec's latent), its part of `g·Wᵀ`.
    /// The forward value is the same to the bit.
    fn first_layer_training(layer: &Linear<B>, x: Tensor<B, 2>, e: Tensor<B, 2>) -> Tensor<B, 2> {
        let [rows, _] = layer.weight.dims();
        let width = x.dims()[1];
        let w_e = layer.weight.val().slice([width..rows]).detach();
        let zero = e.clone() - e.clone().detach();
        layer.forward(Tensor::cat(vec![x, e.detach()], 1)) + zero.matmul(w_e)
    }

    /// The affine ends of this network, or `None` where the input does not enter affinely
    /// (`norm`, the L2 normalisation) or there is no hidden layer. Dropout is not included:
    /// callers use this only where dropout is inactive (no autodiff).
    pub fn affine_ends(&self) -> Option<AffineEnds<B>> {
        let (first, out) = (self.in_layers.first()?, self.out_layers.last()?);
        if self.norm {
            return None;
        }
        let w = first.weight.val();
        let [rows, d_first] = w.dims();
        let width = rows - self.time_emb;
        let w_out = out.weight.val();
        let b_out = match &out.bias {
            Some(b) => b.val().unsqueeze::<2>(),
            None => Tensor::zeros([1, w_out.dims()[1]], &w_out.device()),
        };
        Some(AffineEnds {
            w_x: w.slice([0..width, 0..d_first]),
            w_out,
            b_out,
        })
    }

    /// The first layer's contribution of step `t` (time embedding and bias): [1, d_first].
    /// With [`AffineEnds::w_x`], the first layer's pre-activation is x·W_x + this row.
    pub fn time_row(&self, t: usize, device: &B::Device) -> Tensor<B, 2> {
        let first = &self.in_layers[0];
        let w = first.weight.val();
        let [rows, d_first] = w.dims();
        let emb = Tensor::from_data(
            TensorData::new(timestep_embedding(&[t], self.time_emb), [1, self.time_emb]),
            device,
        );
        let w_e = w.slice([rows - self.time_emb..rows, 0..d_first]);
        let row = self.emb.forward(emb).matmul(w_e);
        match &first.bias {
            Some(b) => row + b.val().unsqueeze::<2>(),
            None => row,
        }
    }

    /// From the first layer's pre-activation to the last hidden layer (the output layer's
    /// input): every layer but the output one, each followed by tanh.
    pub fn core(&self, pre: Tensor<B, 2>) -> Tensor<B, 2> {
        let mut h = pre.tanh();
        for layer in &self.in_layers[1..] {
            h = layer.forward(h).tanh();
        }
        for layer in &self.out_layers[..self.out_layers.len() - 1] {
            h = layer.forward(h).tanh();
        }
        h
    }
}

/// The affine ends of the denoiser, for the deterministic reverse pass
/// (`GaussianDiffusion::p_sample`): the first layer is affine in the input (x·W_x plus a row
/// that depends only on the step) and the output is affine in the last hidden layer
/// (h·W_out + b_out). Everything between them is [`Denoiser::core`].
#[derive(Debug, Clone)]
pub struct AffineEnds<B: Backend> {
    /// The first layer's weights for the input part: [width, d_first].
    pub w_x: Tensor<B, 2>,
    /// The output layer's weights: [d_last, width].
    pub w_out: Tensor<B, 2>,
    /// The output layer's bias as a row: [1, width].
    pub b_out: Tensor<B, 2>,
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn_flex::Flex;

    #[test]
    fn ml1m_size_matches_the_reference() {
        let cfg = DenoiserConfig::default();
        let m = Denoiser::<B>::new(2810, &cfg, InitScheme::DiffRec, &Default::default());
        assert_eq!(m.num_params(), 3_622_320);
        let x = Tensor::<B, 2>::zeros([3, 2810], &Default::default());
        let e = Tensor::<B, 2>::zeros([3, 10], &Default::default());
        assert_eq!(m.forward(x, e).dims(), [3, 2810]);
    }

    #[test]
    fn init_has_the_spec_spread() {
        let cfg = DenoiserConfig {
            dims: vec![300],
            ..DenoiserConfig::default()
        };
        let dev = Default::default();
        B::seed(&dev, 3);
        let m = Denoiser::<B>::new(1000, &cfg, InitScheme::DiffRec, &dev);
        let w: Vec<f32> = m.in_layers[0]
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let std = (w.iter().map(|v| (v * v) as f64).sum::<f64>() / w.len() as f64).sqrt();
        let want = (2.0 / (1010.0 + 300.0f64)).sqrt();
        assert!((std - want).abs() / want < 0.02, "std {std} vs {want}");
        let b: Vec<f32> = m.in_layers[0]
            .bias
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let bstd = (b.iter().map(|v| (v * v) as f64).sum::<f64>() / b.len() as f64).sqrt();
        assert!(bstd < 0.002 && bstd > 0.0005, "bias std {bstd}");
        let x = Denoiser::<B>::new(1000, &cfg, InitScheme::Xavier, &dev);
        let b: Vec<f32> = x.out_layers[0]
            .bias
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        assert!(b.iter().all(|&v| v == 0.0));
    }

    /// The training forward pass (first layer without the concatenated input's gradient)
    /// against the plain one: the same output to the bit and the same gradients for every
    /// parameter and, where it is tracked (L-DiffRec's latent), for the input.
    #[test]
    fn training_first_layer_matches_the_plain_concatenation() {
        use burn::backend::Autodiff;
        type A = Autodiff<B>;
        let dev = Default::default();
        B::seed(&dev, 7);
        let cfg = DenoiserConfig {
            dims: vec![4, 6],
            time_emb: 4,
            dropout: 0.0,
            norm: false,
        };
        let m = Denoiser::<A>::new(5, &cfg, InitScheme::DiffRec, &dev);
        let host = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        // The pre-change forward pass, written out: concatenate, then every layer.
        let plain = |x: Tensor<A, 2>, emb: Tensor<A, 2>| {
            let mut h = Tensor::cat(vec![x, m.emb.forward(emb)], 1);
            for layer in &m.in_layers {
                h = layer.forward(h).tanh();
            }
            let h = m.out_layers[0].forward(h).tanh();
            m.out_layers[1].forward(h)
        };
        let xs: Vec<f32> = (0..15).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
        let emb = || {
            Tensor::<A, 2>::from_data(
                TensorData::new(timestep_embedding(&[0, 3, 9], 4), [3, 4]),
                &dev,
            )
        };
        // A loss that weighs every output differently, so no gradient entry is trivially zero.
        let weights = Tensor::<A, 2>::from_data(
            TensorData::new(
                (0..15).map(|i| 0.3 + i as f32 / 10.0).collect::<Vec<_>>(),
                [3, 5],
            ),
            &dev,
        );
        for tracked in [false, true] {
            let x = || {
                let x = Tensor::<A, 2>::from_data(TensorData::new(xs.clone(), [3, 5]), &dev);
                if tracked { x.require_grad() } else { x }
            };
            let (x_fast, x_plain) = (x(), x());
            let fast = m.forward_dropped(x_fast.clone(), emb());
            let reference = plain(x_plain.clone(), emb());
            assert_eq!(host(fast.clone().inner()), host(reference.clone().inner()));
            let g_fast = (fast * weights.clone()).sum().backward();
            let g_plain = (reference * weights.clone()).sum().backward();
            let close = |what: &str, a: Vec<f32>, b: Vec<f32>| {
                assert_eq!(a.len(), b.len(), "{what}");
                assert!(
                    b.iter().any(|v| *v != 0.0),
                    "{what}: a zero gradient tests nothing"
                );
                for (u, v) in a.iter().zip(&b) {
                    assert!(
                        (u - v).abs() <= 1e-6 * (1.0 + v.abs()),
                        "{what}: {u} vs {v}"
                    );
                }
            };
            let layers = [
                &m.emb,
                &m.in_layers[0],
                &m.in_layers[1],
                &m.out_layers[0],
                &m.out_layers[1],
            ];
            for (k, l) in layers.iter().enumerate() {
                let w = |g| host(l.weight.grad(g).expect("weight gradient"));
                close(&format!("layer {k} weight"), w(&g_fast), w(&g_plain));
                let b = |g| {
                    host(
                        l.bias
                            .as_ref()
                            .unwrap()
                            .grad(g)
                            .expect("bias gradient")
                            .unsqueeze(),
                    )
                };
                close(&format!("layer {k} bias"), b(&g_fast), b(&g_plain));
            }
            match (x_fast.grad(&g_fast), x_plain.grad(&g_plain)) {
                (Some(a), Some(b)) if tracked => close("input", host(a), host(b)),
                (None, None) if !tracked => {}
                (a, b) => panic!("input gradient: {} vs {}", a.is_some(), b.is_some()),
            }
        }
    }
}
