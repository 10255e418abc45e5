//! An exponential moving average of the model's parameters (`train.ema_decay`): after every
//! optimiser step, avg ← decay·avg + (1 − decay)·θ. With it, evaluation, model selection, the
//! best checkpoint and recommendations use the average; the optimiser keeps training θ. The
//! authors' code has no average, so it is off unless a pipeline sets it.
//!
//! Early on the decay is lowered (`train.ema_warmup`), so the average follows the fast-moving
//! parameters of the first steps instead of remembering the random initialisation: either to
//! (1 + n)/(10 + n) after n updates (TensorFlow's `ExponentialMovingAverage` with
//! `num_updates`), or to d·(1 − dⁿ⁻¹)/(1 − dⁿ), which keeps the average equal to the
//! d-weighted mean of the parameters after steps 1..n (Adam's bias correction).
//!
//! The average lives on the inference backend (no autodiff graph) and is matched to the live
//! parameters by parameter id, which `valid()` and the optimiser keep.

use std::any::TypeId;
use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn_flex::FlexTensor;
use diffrec_model::Recommender;
use rayon::prelude::*;

use crate::config::EmaWarmup;
use crate::error::TrainError;
use crate::flex::{flat_f32, from_flex, to_flex};
use crate::learner::{Origin, RESUMED, load_recommender, recommender_bytes};

/// The averaged model.
pub(crate) struct Ema<B: Backend> {
    decay: f64,
    warmup: EmaWarmup,
    model: Option<Recommender<B>>,
}

impl<B: Backend> Ema<B> {
    /// Starts the average at `model` (the initial parameters).
    pub fn new(decay: f64, warmup: EmaWarmup, model: Recommender<B>) -> Self {
        Ema {
            decay,
            warmup,
            model: Some(model),
        }
    }

    /// The decay of the `n`-th update (1-based).
    pub fn decay_at(&self, n: usize) -> f64 {
        let d = self.decay;
        match self.warmup {
            EmaWarmup::Count => d.min((1.0 + n as f64) / (10.0 + n as f64)),
            // d(1 − dⁿ⁻¹)/(1 − dⁿ): 0 at n = 1 (the average becomes θ₁), → d as n grows.
            EmaWarmup::Debias => {
                let n = n.min(i32::MAX as usize) as i32;
                d * (1.0 - d.powi(n - 1)) / (1.0 - d.powi(n))
            }
        }
    }

    /// The `n`-th update (1-based: optimiser steps so far) toward the live parameters `live`.
    pub fn update(&mut self, live: &Recommender<B>, n: usize) {
        let decay = self.decay_at(n);
        let avg = self.model.take().expect("the average is always present");
        self.model = Some(match (avg, live) {
            (Recommender::Dense(a), Recommender::Dense(l)) => Recommender::Dense(lerp(a, l, decay)),
            (Recommender::Latent(a), Recommender::Latent(l)) => {
                Recommender::Latent(lerp(a, l, decay))
            }
            _ => unreachable!("the average and the live model are the same variant"),
        });
    }

    pub fn model(&self) -> &Recommender<B> {
        self.model.as_ref().expect("the average is always present")
    }

    /// The average's record (the same layout as the live model's).
    pub fn bytes(&self) -> Result<Vec<u8>, TrainError> {
        recommender_bytes(self.model())
    }

    /// Restores the average written by [`Ema::bytes`].
    pub fn load(&mut self, bytes: Vec<u8>, device: &B::Device) -> Result<(), TrainError> {
        let avg = self.model.take().expect("the average is always present");
        self.model = Some(load_recommender(
            avg,
            bytes,
            Origin {
                checkpoint: "the parameter average's record",
                ..RESUMED
            },
            device,
        )?);
        Ok(())
    }
}

/// Collects every float parameter by id.
struct Collect<B: Backend>(HashMap<ParamId, B::FloatTensorPrimitive>);

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0
            .insert(param.id, param.val().into_primitive().tensor());
    }
}

/// avg ← decay·avg + (1 − decay)·live, parameter by parameter.
struct Lerp<B: Backend> {
    live: HashMap<ParamId, B::FloatTensorPrimitive>,
    decay: f64,
}

impl<B: Backend> ModuleMapper<B> for Lerp<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, avg, mapper) = param.consume();
        let live = self
            .live
            .remove(&id)
            .expect("the live model has every parameter of the average");
        let live = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(live));
        let rate = (1.0 - self.decay) as f32;
        let next = if TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>() {
            lerp_on_flex(avg, live, rate)
        } else {
            lerp_by_tensor_ops(avg, live, rate)
        };
        Param::from_mapped_value(id, next, mapper)
    }
}

/// avg + rate·(live − avg), exact where live == avg.
fn lerp_by_tensor_ops<B: Backend, const D: usize>(
    avg: Tensor<B, D>,
    live: Tensor<B, D>,
    rate: f32,
) -> Tensor<B, D> {
    avg.clone() + (live - avg).mul_scalar(rate)
}

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// The same expression in one parallel pass over burn-flex buffers, updating the average in
/// place (its buffer is copied first if something else still shares it, e.g. the live
/// parameters right after [`Ema::new`]).
fn lerp_on_flex<B: Backend, const D: usize>(
    avg: Tensor<B, D>,
    live: Tensor<B, D>,
    rate: f32,
) -> Tensor<B, D> {
    let flex = |t: Tensor<B, D>| to_flex(t).expect("B's float tensors are FlexTensor");
    let (mut a, l) = (flex(avg), flex(live));
    let n = a.layout().num_elements();
    if !(l.layout().num_elements() == n && flat_f32(&a) && flat_f32(&l)) {
        return lerp_by_tensor_ops(from_flex(a), from_flex(l), rate);
    }
    a.storage_mut::<f32>()[..n]
        .par_chunks_mut(CHUNK)
        .zip(l.storage::<f32>()[..n].par_chunks(CHUNK))
        .for_each(|(a, l)| {
            for (a, &l) in a.iter_mut().zip(l) {
                *a += rate * (l - *a);
            }
        });
    from_flex(a)
}

fn lerp<B: Backend, M: Module<B>>(avg: M, live: &M, decay: f64) -> M {
    let mut collect = Collect::<B>(HashMap::new());
    live.visit(&mut collect);
    avg.map(&mut Lerp {
        live: collect.0,
        decay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffrec_model::{DenoiserConfig, InitScheme};

    type B = burn_flex::Flex;

    fn params(m: &Recommender<B>) -> Vec<Vec<f32>> {
        struct All(Vec<Vec<f32>>);
        impl ModuleVisitor<B> for All {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                self.0.push(p.val().into_data().to_vec::<f32>().unwrap());
            }
        }
        let mut all = All(Vec::new());
        match m {
            Recommender::Dense(d) => d.visit(&mut all),
            Recommender::Latent(l) => l.visit(&mut all),
        }
        all.0
    }

    fn denoiser(seed: u64) -> Recommender<B> {
        let device = Default::default();
        B::seed(&device, seed);
        let cfg = DenoiserConfig {
            dims: vec![5],
            ..DenoiserConfig::default()
        };
        Recommender::Dense(diffrec_model::Denoiser::new(
            7,
            &cfg,
            InitScheme::DiffRec,
            &device,
        ))
    }

    /// The fused burn-flex pass computes what the tensor-op path computes, bit for bit, on a
    /// size that spans several parallel chunks.
    #[test]
    fn fused_pass_equals_tensor_ops() {
        let device = Default::default();
        let n = 3 * CHUNK + 17;
        let avg: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let live: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 3.0).collect();
        let t = |v: &Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v.clone(), [n]), &device);
        let fused = lerp_on_flex(t(&avg), t(&live), 0.01);
        let ops = lerp_by_tensor_ops(t(&avg), t(&live), 0.01);
        let (fused, ops) = (fused.into_data(), ops.into_data());
        assert_eq!(fused.to_vec::<f32>().unwrap(), ops.to_vec::<f32>().unwrap());
        // And the average really moved (a no-op would pass the comparison above).
        assert_ne!(fused.to_vec::<f32>().unwrap(), avg);
    }

    /// The same ids with other values (every parameter + `by`): the live model after some steps.
    fn shift(m: &Recommender<B>, by: f32) -> Recommender<B> {
        struct Shift(f32);
        impl ModuleMapper<B> for Shift {
            fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
                let (id, t, mapper) = p.consume();
                Param::from_mapped_value(id, t.add_scalar(self.0), mapper)
            }
        }
        match m {
            Recommender::Dense(d) => Recommender::Dense(d.clone().map(&mut Shift(by))),
            Recommender::Latent(_) => unreachable!(),
        }
    }

    /// Two updates against different live models equal the hand-computed average, and the
    /// average survives a record round trip.
    #[test]
    fn averages_by_parameter_and_round_trips() {
        let a = denoiser(1);
        let l1 = shift(&a, 1.0);
        let l2 = shift(&a, -2.0);
        let p0 = params(&a);
        let mut ema = Ema::new(0.9, EmaWarmup::Count, a);
        // Warm-up: the first update uses (1 + 1)/(10 + 1) = 0.18 < 0.9.
        assert_eq!(ema.decay_at(1), 2.0 / 11.0);
        assert_eq!(ema.decay_at(1000), 0.9);
        ema.update(&l1, 1000);
        ema.update(&l2, 1001);
        // avg1 = p + 0.1, avg2 = 0.9·avg1 + 0.1·(p − 2) = p + 0.09 − 0.2 = p − 0.11.
        let got = params(ema.model());
        assert_eq!(got.len(), p0.len());
        for (g, p) in got.iter().flatten().zip(p0.iter().flatten()) {
            assert!((g - (p - 0.11)).abs() < 1e-6, "{g} vs {}", p - 0.11);
        }
        let bytes = ema.bytes().unwrap();
        let mut other = Ema::new(0.9, EmaWarmup::Count, denoiser(2));
        assert_ne!(params(other.model()), got);
        other.load(bytes, &Default::default()).unwrap();
        assert_eq!(params(other.model()), got);
    }

    /// With `debias` the average after n updates is the d-weighted mean of the live parameters
    /// after each update, whatever it started from: d = 0.5, live p+1, p−2, p+4 gives
    /// (0.25·1 + 0.5·(−2) + 1·4)/1.75 = 13/7 over p (and −1 after two updates).
    #[test]
    fn debiased_average_is_the_weighted_mean_of_the_steps() {
        let a = denoiser(1);
        let p0 = params(&a);
        // Starts far from p (same parameter ids): the first update must forget the start.
        let mut ema = Ema::new(0.5, EmaWarmup::Debias, shift(&a, 100.0));
        assert_eq!(ema.decay_at(1), 0.0);
        assert!((ema.decay_at(2) - 1.0 / 3.0).abs() < 1e-15);
        assert!((ema.decay_at(3) - 3.0 / 7.0).abs() < 1e-15);
        assert!((ema.decay_at(200) - 0.5).abs() < 1e-15);
        let close = |got: &[Vec<f32>], by: f32| {
            for (g, p) in got.iter().flatten().zip(p0.iter().flatten()) {
                assert!((g - (p + by)).abs() < 1e-5, "{g} vs {}", p + by);
            }
        };
        ema.update(&shift(&a, 1.0), 1);
        close(&params(ema.model()), 1.0);
        ema.update(&shift(&a, -2.0), 2);
        close(&params(ema.model()), -1.0);
        ema.update(&shift(&a, 4.0), 3);
        close(&params(ema.model()), 13.0 / 7.0);
    }
}
