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
        let mut h = Tensor::cat(vec![x, self.emb.forward(emb)], 1);
        for layer in &self.in_layers {
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
}
