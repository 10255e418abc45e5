//! AdamW as PyTorch and burn define it (decoupled weight decay), with a fused update on the CPU
//! backend.
//!
//! burn's `AdamW` builds each step from about 14 tensor operations (two moment updates, two bias
//! corrections, sqrt, +ε, a division, the decay and the update), each a full pass over the
//! parameters and most of them a fresh buffer: for DiffRec's 3.6 M parameters, 15 steps an
//! epoch, that was a large share of the element-wise time left after the GEMMs. On burn-flex
//! this optimiser updates parameter, first and second moment in **one** parallel pass over the
//! buffers. Every other backend takes [`AdamW::by_tensor_ops`], burn's formula op for op.
//!
//! Both paths compute the same f32 expressions in the same order as burn 0.21's `AdamW`, so
//! results are bit-identical to it (tests below), and the state is burn's own [`AdamWState`]:
//! checkpoints written before this module existed load unchanged.

use std::any::TypeId;
use std::cell::Cell;

use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::prelude::*;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::flex::{flat_f32, from_flex, to_flex};

/// AdamW's hyper-parameters (no AMSGrad, no cautious decay: the spec uses neither).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamW {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
}

/// One step's scalars, each rounded exactly where burn rounds it.
#[derive(Debug, Clone, Copy)]
struct StepScalars {
    beta_1: f32,
    beta_2: f32,
    /// 1 − β₁ and 1 − β₂ (f32, as burn computes them).
    factor_1: f32,
    factor_2: f32,
    /// Bias corrections 1 − βᵗ (f32).
    correction_1: f32,
    correction_2: f32,
    epsilon: f32,
    /// 1 − lr·λ (computed in f64, applied as f32); `None` without weight decay.
    decay: Option<f32>,
    lr: f32,
}

impl AdamW {
    fn scalars(&self, lr: LearningRate, time: usize) -> StepScalars {
        let t = time as i32;
        let decay_rate = lr * self.weight_decay as f64;
        StepScalars {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            factor_1: 1.0 - self.beta_1,
            factor_2: 1.0 - self.beta_2,
            correction_1: 1f32 - self.beta_1.powi(t),
            correction_2: 1f32 - self.beta_2.powi(t),
            epsilon: self.epsilon,
            decay: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
            lr: lr as f32,
        }
    }

    /// The update with tensor operations, exactly as burn 0.21's `AdamW` (any backend).
    fn by_tensor_ops<B: Backend, const D: usize>(
        s: &StepScalars,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
    ) -> [Tensor<B, D>; 3] {
        let (m, v) = match moments {
            Some((m, v)) => (
                m.mul_scalar(s.beta_1)
                    .add(grad.clone().mul_scalar(s.factor_1)),
                v.mul_scalar(s.beta_2)
                    .add(grad.square().mul_scalar(s.factor_2)),
            ),
            None => (
                grad.clone().mul_scalar(s.factor_1),
                grad.square().mul_scalar(s.factor_2),
            ),
        };
        let m_hat = m.clone().div_scalar(s.correction_1);
        let v_hat = v.clone().div_scalar(s.correction_2);
        let delta = m_hat.div(v_hat.sqrt().add_scalar(s.epsilon));
        let decayed = match s.decay {
            Some(d) => param.mul_scalar(d),
            None => param,
        };
        [decayed - delta.mul_scalar(s.lr), m, v]
    }
}

thread_local! {
    /// Fused updates taken on this thread (tests check the CPU path really is fused).
    static FUSED: Cell<u64> = const { Cell::new(0) };
}

#[cfg(test)]
fn fused_steps() -> u64 {
    FUSED.with(Cell::get)
}

/// Elements per rayon task of the fused loop.
const CHUNK: usize = 1 << 14;

/// The fused update over flat buffers: the same f32 expressions as [`AdamW::by_tensor_ops`].
fn fused_update(
    s: &StepScalars,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    first: bool,
) {
    let step = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| match (first, s.decay) {
        (true, None) => update_chunk::<true, false>(s, p, g, m, v),
        (true, Some(_)) => update_chunk::<true, true>(s, p, g, m, v),
        (false, None) => update_chunk::<false, false>(s, p, g, m, v),
        (false, Some(_)) => update_chunk::<false, true>(s, p, g, m, v),
    };
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| step(p, g, m, v));
}

/// One chunk of the update, on AVX-512 where the CPU has it.
///
/// Why the detour: written as a zip of four iterators with the branches inside, the loop
/// compiled to scalar `divss`/`sqrtss` (two divisions and a square root per parameter), 11 % of
/// a DiffRec ML-1M epoch's CPU samples (docs/benchmarks.md). With the branches hoisted into
/// const parameters and equal-length slices indexed directly it vectorises; division and square
/// root are correctly rounded at every vector width, so the results stay bit-identical.
fn update_chunk<const FIRST: bool, const DECAY: bool>(
    s: &StepScalars,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        unsafe { update_chunk_avx512::<FIRST, DECAY>(s, p, g, m, v) };
        return;
    }
    update_chunk_body::<FIRST, DECAY>(s, p, g, m, v);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn update_chunk_avx512<const FIRST: bool, const DECAY: bool>(
    s: &StepScalars,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    update_chunk_body::<FIRST, DECAY>(s, p, g, m, v);
}

#[inline(always)]
fn update_chunk_body<const FIRST: bool, const DECAY: bool>(
    s: &StepScalars,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    let decay = s.decay.unwrap_or(1.0);
    for i in 0..n {
        let gi = g[i];
        let (m1, v1) = if FIRST {
            (gi * s.factor_1, (gi * gi) * s.factor_2)
        } else {
            (
                m[i] * s.beta_1 + gi * s.factor_1,
                v[i] * s.beta_2 + (gi * gi) * s.factor_2,
            )
        };
        let delta = (m1 / s.correction_1) / ((v1 / s.correction_2).sqrt() + s.epsilon);
        let decayed = if DECAY { p[i] * decay } else { p[i] };
        p[i] = decayed - delta * s.lr;
        m[i] = m1;
        v[i] = v1;
    }
}

impl<B: Backend> SimpleOptimizer<B> for AdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
        let s = self.scalars(lr, time);
        let moments = state.map(|s| (s.momentum.moment_1, s.momentum.moment_2));
        let [param, m, v] = if TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
        {
            fused_on_flex(&s, param, grad, moments)
        } else {
            Self::by_tensor_ops(&s, param, grad, moments)
        };
        let momentum = AdaptiveMomentumState {
            time,
            moment_1: m,
            moment_2: v,
            max_moment_2: None,
        };
        (param, Some(AdamWState { momentum }))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

/// The fused step on burn-flex tensors; the tensor-op path for any layout it does not cover.
fn fused_on_flex<B: Backend, const D: usize>(
    s: &StepScalars,
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moments: Option<(Tensor<B, D>, Tensor<B, D>)>,
) -> [Tensor<B, D>; 3] {
    let first = moments.is_none();
    let (m, v) = moments.unwrap_or_else(|| (grad.zeros_like(), grad.zeros_like()));
    let flex = |t: Tensor<B, D>| to_flex(t).expect("B's float tensors are FlexTensor");
    let (mut p, g, mut m, mut v) = (flex(param), flex(grad), flex(m), flex(v));
    let n = p.layout().num_elements();
    let same = [&g, &m, &v].iter().all(|t| t.layout().num_elements() == n);
    if !(same && [&p, &g, &m, &v].iter().all(|t| flat_f32(t))) {
        let moments = (!first).then(|| (from_flex(m), from_flex(v)));
        return AdamW::by_tensor_ops(s, from_flex(p), from_flex(g), moments);
    }
    // `storage_mut` copies a buffer that is still shared (copy-on-write); ours are not.
    fused_update(
        s,
        &mut p.storage_mut::<f32>()[..n],
        &g.storage::<f32>()[..n],
        &mut m.storage_mut::<f32>()[..n],
        &mut v.storage_mut::<f32>()[..n],
        first,
    );
    FUSED.with(|c| c.set(c.get() + 1));
    [from_flex(p), from_flex(m), from_flex(v)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::adaptor::OptimizerAdaptor;
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn_flex::Flex;

    type AB = Autodiff<Flex>;

    const HYPER: AdamW = AdamW {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.1,
    };

    fn burn_adamw<M: burn::module::AutodiffModule<AB>>()
    -> OptimizerAdaptor<burn::optim::AdamW, M, AB> {
        AdamWConfig::new()
            .with_beta_1(HYPER.beta_1)
            .with_beta_2(HYPER.beta_2)
            .with_epsilon(HYPER.epsilon)
            .with_weight_decay(HYPER.weight_decay)
            .init()
    }

    fn bits(m: &Linear<AB>) -> Vec<u32> {
        let mut out: Vec<u32> = m
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        if let Some(b) = &m.bias {
            out.extend(
                b.val()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits()),
            );
        }
        out
    }

    /// 300×400 weights: above every parallel threshold, with a ragged last chunk.
    #[test]
    fn fused_steps_are_bit_identical_to_burns_adamw() {
        let dev = Default::default();
        let start = LinearConfig::new(300, 400).init::<AB>(&dev);
        // Parameters initialise lazily: materialise them once so both copies start equal.
        let _ = bits(&start);
        let x = Tensor::<AB, 2>::random(
            [64, 300],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &dev,
        );
        let mut theirs = (start.clone(), burn_adamw::<Linear<AB>>());
        let mut ours = (
            start,
            OptimizerAdaptor::<AdamW, Linear<AB>, AB>::from(HYPER),
        );
        let fused_before = fused_steps();
        for step in 0..4 {
            let lr = 1e-3 * (step + 1) as f64;
            let loss = |m: &Linear<AB>| m.forward(x.clone()).tanh().powf_scalar(2.0).mean();
            let g = GradientsParams::from_grads(loss(&theirs.0).backward(), &theirs.0);
            theirs.0 = theirs.1.step(lr, theirs.0, g);
            let g = GradientsParams::from_grads(loss(&ours.0).backward(), &ours.0);
            ours.0 = ours.1.step(lr, ours.0, g);
            let (a, b) = (bits(&ours.0), bits(&theirs.0));
            let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
            assert!(
                differ.is_empty(),
                "after step {step}: {} of {} parameters differ, first at {}: {} vs burn's {}",
                differ.len(),
                a.len(),
                differ[0],
                f32::from_bits(a[differ[0]]),
                f32::from_bits(b[differ[0]])
            );
        }
        // Weight and bias of 4 steps went through the fused loop.
        assert_eq!(fused_steps() - fused_before, 8);
    }

    /// The tensor-op path (every non-CPU backend) and the fused loop agree bit for bit, also
    /// without weight decay.
    #[test]
    fn tensor_op_path_matches_the_fused_loop() {
        let dev = Default::default();
        let shape = [123, 1_000];
        let dist = burn::tensor::Distribution::Normal(0.0, 1.0);
        let p = Tensor::<Flex, 2>::random(shape, dist, &dev);
        let hyper = AdamW {
            weight_decay: 0.0,
            ..HYPER
        };
        let mut fused = (p.clone(), None);
        let mut ops = (p, None::<(Tensor<Flex, 2>, Tensor<Flex, 2>)>);
        for time in 1..=3 {
            let g = Tensor::<Flex, 2>::random(shape, dist, &dev);
            let s = hyper.scalars(1e-2, time);
            let (p, state) =
                SimpleOptimizer::<Flex>::step(&hyper, 1e-2, fused.0, g.clone(), fused.1);
            fused = (p, state);
            let [p, m, v] = AdamW::by_tensor_ops(&s, ops.0, g, ops.1);
            ops = (p, Some((m, v)));
            let fb: Vec<f32> = fused.0.clone().into_data().to_vec().unwrap();
            let ob: Vec<f32> = ops.0.clone().into_data().to_vec().unwrap();
            assert!(
                fb.iter().zip(&ob).all(|(a, b)| a.to_bits() == b.to_bits()),
                "step {time}"
            );
            assert_eq!(fused.1.as_ref().unwrap().momentum.time, time);
        }
    }
}
