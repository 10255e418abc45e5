//! Importance sampling of diffusion steps (spec §2.4).
//!
//! Each step keeps its last 10 weighted losses. Until every step has 10, steps are drawn
//! uniformly with p·T = 1; afterwards p_t ∝ sqrt(mean of squared losses), mixed with 0.001
//! uniform, and the loss is divided by p_t·T. The history is a ring buffer (only the mean of
//! squares matters, so order within it does not), and it is serialisable so that a resumed run
//! continues with the same sampler state.

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// Losses kept per step.
pub const HISTORY: usize = 10;
const UNIFORM_MIX: f64 = 0.001;

/// The sampler's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSampler {
    /// `history[t]`: up to [`HISTORY`] losses of step t.
    history: Vec<Vec<f64>>,
    /// Next slot to overwrite once a step's history is full.
    next: Vec<usize>,
}

impl StepSampler {
    pub fn new(steps: usize) -> Self {
        StepSampler {
            history: vec![Vec::with_capacity(HISTORY); steps],
            next: vec![0; steps],
        }
    }

    pub fn steps(&self) -> usize {
        self.history.len()
    }

    /// Whether every step has a full history (importance sampling is active).
    pub fn is_warm(&self) -> bool {
        self.history.iter().all(|h| h.len() == HISTORY)
    }

    /// The current step distribution p (uniform while warming up).
    pub fn probabilities(&self) -> Vec<f64> {
        let n = self.steps();
        if !self.is_warm() {
            return vec![1.0 / n as f64; n];
        }
        let q: Vec<f64> = self
            .history
            .iter()
            .map(|h| (h.iter().map(|l| l * l).sum::<f64>() / HISTORY as f64).sqrt())
            .collect();
        let total: f64 = q.iter().sum();
        q.iter()
            .map(|qt| {
                let p = if total > 0.0 {
                    qt / total
                } else {
                    1.0 / n as f64
                };
                p * (1.0 - UNIFORM_MIX) + UNIFORM_MIX / n as f64
            })
            .collect()
    }

    /// Draws `batch` steps with replacement; returns the steps and p_t·T for each.
    pub fn sample(&self, batch: usize, rng: &mut impl Rng) -> (Vec<usize>, Vec<f64>) {
        let n = self.steps();
        if !self.is_warm() {
            let t = (0..batch).map(|_| rng.random_range(0..n)).collect();
            return (t, vec![1.0; batch]);
        }
        let p = self.probabilities();
        let mut cum = Vec::with_capacity(n);
        let mut acc = 0.0;
        for x in &p {
            acc += x;
            cum.push(acc);
        }
        let mut ts = Vec::with_capacity(batch);
        let mut pts = Vec::with_capacity(batch);
        for _ in 0..batch {
            let u = rng.random::<f64>() * acc;
            let t = cum.partition_point(|&c| c <= u).min(n - 1);
            ts.push(t);
            pts.push(p[t] * n as f64);
        }
        (ts, pts)
    }

    /// Records the weighted losses (before division by p·T) of a batch, in order.
    pub fn update(&mut self, ts: &[usize], losses: &[f64]) {
        for (&t, &l) in ts.iter().zip(losses) {
            let h = &mut self.history[t];
            if h.len() < HISTORY {
                h.push(l);
            } else {
                h[self.next[t]] = l;
                self.next[t] = (self.next[t] + 1) % HISTORY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn uniform_until_every_step_has_ten_losses() {
        let mut s = StepSampler::new(3);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..9 {
            s.update(&[0, 1, 2], &[1.0, 1.0, 1.0]);
        }
        assert!(!s.is_warm());
        let (_, pt) = s.sample(5, &mut rng);
        assert_eq!(pt, vec![1.0; 5]);
        s.update(&[0, 1], &[1.0, 1.0]);
        assert!(!s.is_warm(), "step 2 has only 9");
        s.update(&[2], &[1.0]);
        assert!(s.is_warm());
    }

    #[test]
    fn probabilities_follow_root_mean_square_with_uniform_mix() {
        let mut s = StepSampler::new(2);
        for _ in 0..10 {
            s.update(&[0, 1], &[3.0, 1.0]);
        }
        let p = s.probabilities();
        // q = (3, 1) → (0.75, 0.25), mixed: p·0.999 + 0.0005.
        assert!((p[0] - (0.75 * 0.999 + 0.0005)).abs() < 1e-12);
        assert!((p[1] - (0.25 * 0.999 + 0.0005)).abs() < 1e-12);
        // FIFO: ten new losses of 1.0 on step 0 replace all the 3.0s.
        for _ in 0..10 {
            s.update(&[0], &[1.0]);
        }
        let p = s.probabilities();
        assert!((p[0] - 0.5).abs() < 1e-12);
        let mut rng = StdRng::seed_from_u64(2);
        let (ts, pt) = s.sample(1000, &mut rng);
        let zeros = ts.iter().filter(|&&t| t == 0).count();
        assert!((400..600).contains(&zeros), "{zeros}");
        assert!(pt.iter().all(|&x| (x - 1.0).abs() < 1e-12));
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = StepSampler::new(4);
        s.update(&[1, 1, 3], &[0.5, 0.25, 2.0]);
        let back: StepSampler = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
