//! The sinusoidal time embedding (spec §3.1), computed on the host: it is a few numbers per row.

/// `[cos(t·f_0..f_{h−1}) ‖ sin(t·f_0..f_{h−1})]` with f_k = exp(−ln(10000)·k/h), h = dim/2,
/// cos first; a trailing 0 for odd `dim`. Row-major, `ts.len() × dim`, f32 like the reference.
pub fn timestep_embedding(ts: &[usize], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(10000f32.ln()) * k as f32 / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(ts.len() * dim);
    for &t in ts {
        let args = freqs.iter().map(|f| t as f32 * f);
        out.extend(args.clone().map(f32::cos));
        out.extend(args.map(f32::sin));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_spec_vector() {
        let e = timestep_embedding(&[3], 10);
        let want = [
            -0.989992, 0.889079, 0.997162, 0.999929, 0.999998, 0.141120, 0.457755, 0.075285,
            0.011943, 0.001893,
        ];
        for (a, b) in e.iter().zip(want) {
            assert!((a - b).abs() < 2e-6, "{e:?}");
        }
        assert_eq!(
            timestep_embedding(&[0], 10),
            vec![1., 1., 1., 1., 1., 0., 0., 0., 0., 0.]
        );
        assert_eq!(timestep_embedding(&[1, 2], 3).len(), 6);
        assert_eq!(timestep_embedding(&[1], 3)[2], 0.0);
    }
}
