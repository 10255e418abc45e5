//! Adam over one flat parameter vector (PyTorch's `torch.optim.Adam` update, no weight decay:
//! LightGCN regularises through its loss), parallelised with rayon.

use rayon::prelude::*;

/// Adam state for `n` parameters.
#[derive(Debug, Clone)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    step: i32,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8.
    pub fn new(n: usize, lr: f32) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// Steps taken and the first and second moments: what a checkpoint keeps.
    pub fn state(&self) -> (i32, &[f32], &[f32]) {
        (self.step, &self.m, &self.v)
    }

    /// Puts back a [`Self::state`]; `m` and `v` must have this optimiser's length.
    pub fn restore(&mut self, step: i32, m: &[f32], v: &[f32]) {
        assert_eq!((m.len(), v.len()), (self.m.len(), self.v.len()));
        self.step = step;
        self.m.copy_from_slice(m);
        self.v.copy_from_slice(v);
    }

    /// One update of `params` with `grad`.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32]) {
        assert_eq!(params.len(), self.m.len());
        assert_eq!(grad.len(), self.m.len());
        self.step += 1;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let bc1 = 1.0 - b1.powi(self.step);
        let bc2_sqrt = (1.0 - b2.powi(self.step)).sqrt();
        let step_size = self.lr / bc1;
        params
            .par_iter_mut()
            .zip(self.m.par_iter_mut())
            .zip(self.v.par_iter_mut())
            .zip(grad.par_iter())
            .with_min_len(4096)
            .for_each(|(((p, m), v), &g)| {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_steps_match_the_closed_form() {
        // Step 1 of Adam moves every parameter by lr·sign(g) (m̂ = g, v̂ = g², eps negligible).
        let mut p = vec![1.0f32, -2.0, 0.5];
        let mut opt = Adam::new(3, 0.1);
        opt.step(&mut p, &[0.3, -4.0, 0.0]);
        assert!((p[0] - 0.9).abs() < 1e-6);
        assert!((p[1] - -1.9).abs() < 1e-6);
        assert_eq!(p[2], 0.5, "zero gradient, zero moment: no move");
        // Step 2 with gradients g1 = 0.3, g2 = 0.1 on the first parameter, by hand.
        opt.step(&mut p, &[0.1, -4.0, 0.0]);
        let m = 0.9 * (0.1 * 0.3) + 0.1 * 0.1;
        let v = 0.999 * (0.001 * 0.09) + 0.001 * 0.01;
        let mhat = m / (1.0 - 0.81);
        let vhat: f64 = v / (1.0 - 0.999f64 * 0.999);
        let want = 0.9 - 0.1 * mhat / (vhat.sqrt() + 1e-8);
        assert!((p[0] as f64 - want).abs() < 1e-5, "{} vs {want}", p[0]);
    }
}
