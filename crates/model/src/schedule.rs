//! Noise schedules and every array derived from them, in `f64`.
//!
//! ᾱ is about 0.99999 for the published settings, so 1 − ᾱ computed in f32 would carry ~1 %
//! relative error; everything here stays f64, and only the per-sample coefficients that scale
//! tensors are cast to f32 (spec §2, §8.18). Indices are the code's: t = 0..T−1.

use crate::config::{MeanType, Schedule};

/// Why a schedule could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("diffusion needs at least 2 steps, got {0}")]
    TooFewSteps(usize),
    #[error(
        "beta[{t}] = {beta} is outside (0, 1]: check noise_min ≤ noise_max and noise_scale > 0"
    )]
    BadBeta { t: usize, beta: f64 },
}

/// The schedule and its derived arrays, each of length T.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionSchedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub sqrt_alphas_cumprod: Vec<f64>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    pub posterior_variance: Vec<f64>,
    /// log σ²_t, with t = 0 taking the value of t = 1 (σ²_0 = 0).
    pub posterior_log_variance_clipped: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
    /// ᾱ_t / (1 − ᾱ_t).
    pub snr: Vec<f64>,
}

fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|k| {
            if n == 1 {
                a
            } else {
                a + (b - a) * k as f64 / (n - 1) as f64
            }
        })
        .collect()
}

/// β_t for each schedule (spec §2.1), before `beta_fixed`.
pub fn betas(schedule: Schedule, steps: usize, scale: f64, min: f64, max: f64) -> Vec<f64> {
    match schedule {
        Schedule::Linear => linspace(scale * min, scale * max, steps),
        Schedule::LinearVar => {
            let v = linspace(scale * min, scale * max, steps);
            let abar: Vec<f64> = v.iter().map(|x| 1.0 - x).collect();
            let mut b = vec![v[0]];
            for t in 1..steps {
                b.push((1.0 - abar[t] / abar[t - 1]).min(0.999));
            }
            b
        }
        Schedule::Cosine => {
            let f = |u: f64| {
                ((u + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..steps)
                .map(|i| {
                    (1.0 - f((i + 1) as f64 / steps as f64) / f(i as f64 / steps as f64)).min(0.999)
                })
                .collect()
        }
        Schedule::Binomial => (0..steps).map(|t| 1.0 / (steps - t + 1) as f64).collect(),
    }
}

impl DiffusionSchedule {
    /// Builds the schedule; `beta_fixed` overwrites β₀ with 1e-5 without recomputing the rest,
    /// as the authors' DiffRec/T-DiffRec code does.
    pub fn new(
        schedule: Schedule,
        steps: usize,
        scale: f64,
        min: f64,
        max: f64,
        beta_fixed: bool,
    ) -> Result<Self, ScheduleError> {
        if steps < 2 {
            return Err(ScheduleError::TooFewSteps(steps));
        }
        let mut betas = betas(schedule, steps, scale, min, max);
        if beta_fixed {
            betas[0] = 1e-5;
        }
        if let Some((t, &beta)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b <= 1.0))
        {
            return Err(ScheduleError::BadBeta { t, beta });
        }
        Ok(Self::from_betas(betas))
    }

    fn from_betas(betas: Vec<f64>) -> Self {
        let n = betas.len();
        let mut ac = Vec::with_capacity(n);
        let mut acc = 1.0;
        for b in &betas {
            acc *= 1.0 - b;
            ac.push(acc);
        }
        let mut prev = vec![1.0];
        prev.extend_from_slice(&ac[..n - 1]);
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let post_var = map(&|t| betas[t] * (1.0 - prev[t]) / (1.0 - ac[t]));
        let post_logvar = map(&|t| {
            if t == 0 {
                post_var[1].ln()
            } else {
                post_var[t].ln()
            }
        });
        DiffusionSchedule {
            sqrt_alphas_cumprod: map(&|t| ac[t].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|t| (1.0 - ac[t]).sqrt()),
            sqrt_recip_alphas_cumprod: map(&|t| (1.0 / ac[t]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|t| (1.0 / ac[t] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|t| betas[t] * prev[t].sqrt() / (1.0 - ac[t])),
            posterior_mean_coef2: map(&|t| {
                (1.0 - prev[t]) * (1.0 - betas[t]).sqrt() / (1.0 - ac[t])
            }),
            snr: map(&|t| ac[t] / (1.0 - ac[t])),
            posterior_variance: post_var,
            posterior_log_variance_clipped: post_logvar,
            alphas_cumprod_prev: prev,
            alphas_cumprod: ac,
            betas,
        }
    }

    /// Number of steps T.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// The loss weight of step t (spec §2.5): for `x0`, SNR_{t−1} − SNR_t and 1 at t = 0; for
    /// `eps`, (1−ᾱ_t)/((1−ᾱ_{t−1})²·(1−β_t)) and 1 at t = 0. Without reweighting, 1.
    pub fn loss_weight(&self, t: usize, mean_type: MeanType, reweight: bool) -> f64 {
        if !reweight || t == 0 {
            return 1.0;
        }
        match mean_type {
            MeanType::X0 => self.snr[t - 1] - self.snr[t],
            MeanType::Eps => {
                (1.0 - self.alphas_cumprod[t])
                    / ((1.0 - self.alphas_cumprod_prev[t]).powi(2) * (1.0 - self.betas[t]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    const COLS: [usize; 6] = [0, 1, 2, 20, 38, 39];

    #[test]
    fn diffrec_ml1m_vectors_from_the_spec() {
        let s = DiffusionSchedule::new(Schedule::LinearVar, 40, 0.005, 0.005, 0.01, true).unwrap();
        let beta = [
            1e-5,
            6.4104167e-7,
            6.4104208e-7,
            6.4104947e-7,
            6.4105687e-7,
            6.4105728e-7,
        ];
        let abar = [
            0.99999,
            0.999989359,
            0.9999887179,
            0.9999771793,
            0.9999656407,
            0.9999649996,
        ];
        let c1 = [
            1.0,
            0.0602421143,
            0.0568192396,
            0.0280903838,
            0.0186571124,
            0.0183154115,
        ];
        let w = [
            1.0, 6024.18131, 5339.60615, 1266.47838, 553.313642, 533.045656,
        ];
        for (k, &t) in COLS.iter().enumerate() {
            assert!(
                close(s.betas[t], beta[k], 1e-6),
                "beta[{t}] = {}",
                s.betas[t]
            );
            assert!(
                close(s.alphas_cumprod[t], abar[k], 1e-10),
                "abar[{t}] = {}",
                s.alphas_cumprod[t]
            );
            assert!(
                close(s.posterior_mean_coef1[t], c1[k], 1e-7),
                "c1[{t}] = {}",
                s.posterior_mean_coef1[t]
            );
            let wt = s.loss_weight(t, MeanType::X0, true);
            assert!(close(wt, w[k], 1e-7), "w[{t}] = {wt}");
        }
        assert!(close(
            s.posterior_log_variance_clipped[0],
            -14.3223040636,
            1e-9
        ));
        assert_eq!(
            s.posterior_log_variance_clipped[0],
            s.posterior_log_variance_clipped[1]
        );
        assert_eq!(s.posterior_mean_coef2[0], 0.0);
        assert_eq!(s.posterior_variance[0], 0.0);
    }

    #[test]
    fn l_diffrec_ml1m_vectors_from_the_spec() {
        let s = DiffusionSchedule::new(Schedule::LinearVar, 40, 0.005, 0.005, 0.02, false).unwrap();
        assert!(close(s.betas[0], 2.5e-5, 1e-12));
        assert!(close(s.alphas_cumprod[39], 0.9999, 1e-12));
        let w = [
            1.0,
            2857.142857,
            2476.190476,
            492.424242,
            203.921569,
            196.078431,
        ];
        for (k, &t) in COLS.iter().enumerate() {
            assert!(
                close(s.loss_weight(t, MeanType::X0, true), w[k], 1e-8),
                "t={t}"
            );
        }
    }

    #[test]
    fn other_schedules_follow_their_formulas() {
        let b = betas(Schedule::Binomial, 4, 0.0, 0.0, 0.0);
        assert_eq!(b, vec![1.0 / 5.0, 1.0 / 4.0, 1.0 / 3.0, 1.0 / 2.0]);
        let l = betas(Schedule::Linear, 3, 0.5, 0.1, 0.3);
        assert!(close(l[1], 0.1, 1e-12) && close(l[2], 0.15, 1e-12));
        let c = betas(Schedule::Cosine, 10, 0.0, 0.0, 0.0);
        assert!(c.windows(2).all(|w| w[0] < w[1]) && c[9] <= 0.999);
        assert!(matches!(
            DiffusionSchedule::new(Schedule::Linear, 5, 0.1, 0.5, 0.1, false),
            Ok(_)
        ));
        assert!(matches!(
            DiffusionSchedule::new(Schedule::LinearVar, 5, 0.1, 0.5, 0.1, false),
            Err(ScheduleError::BadBeta { .. })
        ));
        assert_eq!(
            DiffusionSchedule::new(Schedule::Linear, 1, 0.1, 0.1, 0.2, false),
            Err(ScheduleError::TooFewSteps(1))
        );
    }

    #[test]
    fn eps_weight_is_one_at_zero() {
        let s = DiffusionSchedule::new(Schedule::LinearVar, 5, 0.1, 0.1, 0.5, false).unwrap();
        assert_eq!(s.loss_weight(0, MeanType::Eps, true), 1.0);
        let t = 3;
        let e = (1.0 - s.alphas_cumprod[t])
            / ((1.0 - s.alphas_cumprod[t - 1]).powi(2) * (1.0 - s.betas[t]));
        assert_eq!(s.loss_weight(t, MeanType::Eps, true), e);
        assert_eq!(s.loss_weight(t, MeanType::X0, false), 1.0);
    }
}
