//! Training randomness drawn on the host: the diffusion's Gaussian noise, dropout masks and the
//! VAE's reparameterisation noise.
//!
//! Why not burn's `random_like`: on the CPU backend it fills a tensor element by element from
//! one ChaCha stream on one thread (f64 normals converted to f32), which took about 18 % of a
//! DiffRec ML-1M training epoch's CPU time (docs/benchmarks.md, "Where the epoch goes"); a
//! dropout mask then costs two more element-wise passes. Here each row gets its own small
//! generator (rand's `SmallRng` stream as `RowRng`; rand_distr's f64 ziggurat normals rounded to
//! f32, through `ziggurat::normal`), rows are filled in parallel with rayon, and a dropout mask is
//! drawn already scaled (one multiply). `noised_dropped` draws eight rows at once where the CPU has
//! AVX-512 (`lanes`), with the same values. On a GPU backend the drawn values are uploaded like the
//! batch itself.
//!
//! Streams are per thread and per batch row: [`reseed`] sets the batch seed and the index of the
//! thread's first row in the whole batch, and the k-th draw of the step gives row `r` the stream
//! `(seed, k, first_row + r)`. A data-parallel replica holding rows 200..400 of a batch therefore
//! draws exactly what a single device draws for those rows, and a run is reproducible whatever
//! the number of threads.

use std::cell::Cell;
use std::mem::MaybeUninit;

use burn::prelude::*;
use rayon::prelude::*;

use crate::lanes::{self, Keep, LANES};
use crate::rowrng::RowRng;
use crate::ziggurat::{self, Ziggurat};

#[derive(Clone, Copy)]
struct Stream {
    seed: u64,
    first_row: u64,
    draws: u64,
}

thread_local! {
    static STREAM: Cell<Stream> = const {
        Cell::new(Stream { seed: 0, first_row: 0, draws: 0 })
    };
}

/// Starts this thread's draws for one training step: `seed` is the batch's seed, `first_row`
/// the index of this thread's first row within the whole batch (0 unless data parallel).
pub fn reseed(seed: u64, first_row: usize) {
    STREAM.with(|s| {
        s.set(Stream {
            seed,
            first_row: first_row as u64,
            draws: 0,
        })
    });
}

/// Runs `f` and then puts this thread's stream back as it was before, also when `f` panics.
///
/// For work that may run nested on a thread that is in the middle of another step: a rayon
/// worker waiting inside one step's parallel operation can pick up another top-level job (a
/// second training's step in the same process), which reseeds the thread's stream. Wrapped in
/// this, the nested step leaves the outer one's stream untouched.
pub fn own_stream<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(Stream);
    impl Drop for Restore {
        fn drop(&mut self) {
            STREAM.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(STREAM.with(Cell::get));
    f()
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator seeds of this thread's next `N` draws (advancing its draw counter by `N`) and
/// the index of its first row: draw `k` gives row `r` the generator `row_rng(bases[k], first_row, r)`.
fn next_draws<const N: usize>() -> ([u64; N], u64) {
    let s = STREAM.with(|s| {
        let cur = s.get();
        s.set(Stream {
            draws: cur.draws + N as u64,
            ..cur
        });
        cur
    });
    let base = mix(s.seed);
    (
        std::array::from_fn(|k| mix(base ^ (s.draws + k as u64))),
        s.first_row,
    )
}

/// Row `r`'s generator for a draw: rand's `SmallRng` seeded from (draw, row) (`RowRng` is the
/// same stream).
fn row_rng(base: u64, first_row: u64, r: usize) -> RowRng {
    RowRng::seed_from_u64(mix(base ^ (first_row + r as u64)))
}

/// `rows × cols` values, row `r` filled by `fill` from its own generator.
fn draw(rows: usize, cols: usize, fill: impl Fn(&mut RowRng, &mut [f32]) + Sync) -> Vec<f32> {
    let ([base], first_row) = next_draws::<1>();
    let mut out = vec![0f32; rows * cols];
    if cols == 0 {
        return out;
    }
    out.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        fill(&mut row_rng(base, first_row, r), row);
    });
    out
}

/// Standard normal noise shaped `[rows, cols]` on `device`: rand_distr's `StandardNormal` as
/// f32, drawn through `ziggurat::normal`.
pub fn standard_normal<B: Backend>(rows: usize, cols: usize, device: &B::Device) -> Tensor<B, 2> {
    let z = ziggurat::table();
    let v = draw(rows, cols, |rng, row| {
        for x in row {
            *x = ziggurat::normal(rng, z);
        }
    });
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}

/// Inverted dropout's rule with probability `p`: each entry 1/(1 − p) with probability 1 − p,
/// else 0. An entry is kept when a uniform 32-bit draw is below (1 − p)·2³² (exact for the
/// usual p); each 64-bit output serves two entries, low half first, and an odd last entry of a
/// row takes a fresh draw's high half. Drawing an f64 per entry cost 6 % of an epoch.
fn keep_rule(p: f64) -> Keep {
    let keep = 1.0 - p;
    Keep {
        scale: ((1.0 / keep) as f32).to_bits(),
        threshold: (keep * 4_294_967_296.0).round() as u64,
    }
}

impl Keep {
    /// The mask entry for one 32-bit half, without a branch: at p = 0.5 a branch mispredicts
    /// on every other entry, and that made the mask cost about as much as the Gaussian noise
    /// beside it. `scale` when kept, +0.0 when dropped: the bits of `scale` under an all-ones
    /// or all-zeros mask. Both `half` < 2³² and `threshold` ≤ 2³², so `half − threshold` wraps
    /// (top bit set) exactly when `half < threshold`. Written as arithmetic because a
    /// comparison is turned back into a branch by the compiler.
    #[inline(always)]
    fn pick(self, half: u64) -> f32 {
        f32::from_bits(
            self.scale & ((half.wrapping_sub(self.threshold) >> 63) as u32).wrapping_neg(),
        )
    }

    /// Applies `f(entry, mask value)` along a row, drawing the mask from `rng`.
    #[inline(always)]
    fn each(self, rng: &mut RowRng, row: &mut [f32], f: impl Fn(&mut f32, f32)) {
        let mut pairs = row.chunks_exact_mut(2);
        for pair in &mut pairs {
            let b = rng.next();
            f(&mut pair[0], self.pick(b & 0xFFFF_FFFF));
            f(&mut pair[1], self.pick(b >> 32));
        }
        for m in pairs.into_remainder() {
            f(m, self.pick(rng.next() >> 32));
        }
    }
}

/// A row filler writing the dropout mask of probability `p`.
fn mask_filler(p: f64) -> impl Fn(&mut RowRng, &mut [f32]) + Sync + Copy {
    let keep = keep_rule(p);
    move |rng: &mut RowRng, row: &mut [f32]| keep.each(rng, row, |m, v| *m = v)
}

/// Inverted dropout with probability `p`: each entry kept with probability 1 − p and scaled by
/// 1/(1 − p), else zeroed. Active only on an autodiff backend (training), like burn's `Dropout`.
pub fn dropout<B: Backend>(x: Tensor<B, 2>, p: f64) -> Tensor<B, 2> {
    if p <= 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let [rows, cols] = x.dims();
    let mask = draw(rows, cols, mask_filler(p));
    let mask = Tensor::from_data(TensorData::new(mask, [rows, cols]), &x.device());
    x * mask
}

/// A training input in one host pass: x_t = a_r·x0 + b_r·ε (the forward process with row `r`'s
/// scales, ε this step's next normal draw as [`standard_normal`] draws it), then inverted
/// dropout with probability `p` (the draw after it, as [`dropout`] draws it; none when
/// `p` ≤ 0). The same f32 values, rounded the same way, as drawing ε, computing
/// `x0 * a + ε * b` with tensor ops and calling [`dropout`] on an autodiff backend — without
/// materialising ε or the mask or making four element-wise passes over the batch.
/// `x0`: row-major `[a.len(), cols]`.
pub fn noised_dropped(x0: &[f32], cols: usize, a: &[f32], b: &[f32], p: f64) -> Vec<f32> {
    let rows = a.len();
    assert_eq!(x0.len(), rows * cols, "x0 is [rows, cols]");
    assert_eq!(b.len(), rows, "one scale per row");
    if cols == 0 {
        return vec![0f32; rows * cols];
    }
    // Every element is written below (x_t first, then scaled in place by the mask), so the
    // buffer is not zero-filled first (a 4.5 MB memset a DiffRec ML-1M batch).
    let mut out: Vec<f32> = Vec::with_capacity(rows * cols);
    let keep = (p > 0.0).then(|| keep_rule(p));
    let (bases, first_row) = if keep.is_some() {
        next_draws::<2>()
    } else {
        let ([noise], first_row) = next_draws::<1>();
        ([noise, 0], first_row)
    };
    let z = ziggurat::table();
    // Groups of LANES rows: `lanes` draws a full group's columns eight at a time where the CPU
    // allows, and the rows finish here (all of them otherwise) with the same streams.
    out.spare_capacity_mut()[..rows * cols]
        .par_chunks_mut(LANES * cols)
        .zip(x0.par_chunks(LANES * cols))
        .enumerate()
        .for_each(|(g, (out, x0))| {
            let r0 = g * LANES;
            let n = x0.len() / cols;
            let mut noise: [RowRng; LANES] =
                std::array::from_fn(|l| row_rng(bases[0], first_row, r0 + l));
            let mut masks: [RowRng; LANES] =
                std::array::from_fn(|l| row_rng(bases[1], first_row, r0 + l));
            let done = if n == LANES {
                let group = lanes::Group {
                    x0,
                    out: &mut *out,
                    cols,
                    a: &a[r0..r0 + LANES],
                    b: &b[r0..r0 + LANES],
                };
                let mask = keep.map(|k| (&mut masks, k));
                lanes::noised_dropped(&mut noise, mask, group, z)
            } else {
                0
            };
            for l in 0..n {
                let row = &mut out[l * cols..(l + 1) * cols][done..];
                let x0 = &x0[l * cols..(l + 1) * cols][done..];
                noised_row(&mut noise[l], x0, row, a[r0 + l], b[r0 + l], z);
                // SAFETY: `noised_row` wrote every element of the row.
                let row = unsafe { &mut *(row as *mut [MaybeUninit<f32>] as *mut [f32]) };
                if let Some(k) = keep {
                    k.each(&mut masks[l], row, |o, m| *o *= m);
                }
            }
        });
    // SAFETY: every row of the first rows·cols elements was written above.
    unsafe { out.set_len(rows * cols) };
    out
}

/// One row of x_t = a·x0 + b·ε, a column at a time.
fn noised_row(
    rng: &mut RowRng,
    x0: &[f32],
    out: &mut [MaybeUninit<f32>],
    a: f32,
    b: f32,
    z: &Ziggurat,
) {
    for (o, &x) in out.iter_mut().zip(x0) {
        o.write(x * a + ziggurat::normal(rng, z) * b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use rand::rngs::SmallRng;
    use rand::{Rng, RngExt, SeedableRng};
    use rand_distr::StandardNormal;
    type B = burn_flex::Flex;

    fn host(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    #[test]
    fn same_seed_same_draws_and_a_shard_draws_what_one_device_draws() {
        let dev = Default::default();
        reseed(42, 0);
        let whole = host(standard_normal::<B>(10, 7, &dev));
        let second = host(standard_normal::<B>(10, 7, &dev));
        reseed(42, 0);
        assert_eq!(host(standard_normal::<B>(10, 7, &dev)), whole);
        assert_ne!(second, whole, "the second draw of a step is a new stream");
        // Rows 4..10 drawn by a replica that holds only them.
        reseed(42, 4);
        assert_eq!(host(standard_normal::<B>(6, 7, &dev)), whole[4 * 7..]);
        reseed(43, 0);
        assert_ne!(host(standard_normal::<B>(10, 7, &dev)), whole);
    }

    #[test]
    fn a_nested_step_in_own_stream_leaves_the_outer_draws_unchanged() {
        let dev = Default::default();
        let draw = || host(standard_normal::<B>(3, 5, &dev));
        reseed(7, 0);
        let (first, second, third) = (draw(), draw(), draw());
        reseed(7, 0);
        assert_eq!(draw(), first);
        let nested = own_stream(|| {
            reseed(8, 0);
            draw()
        });
        assert_ne!(nested, second, "the nested step drew from its own seed");
        assert_eq!(draw(), second);
        // Put back after a panic as well.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            own_stream(|| {
                reseed(9, 0);
                panic!("a failing nested step")
            })
        }));
        assert!(caught.is_err());
        assert_eq!(draw(), third);
    }

    #[test]
    fn normal_draws_have_mean_zero_and_variance_one() {
        reseed(7, 0);
        let v = host(standard_normal::<B>(100, 2000, &Default::default()));
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        // 200,000 draws: the mean's standard error is 0.0022, the variance's 0.0032.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "variance {var}");
        // Rows are independent streams: adjacent rows are uncorrelated.
        let corr: f64 = v[..2000]
            .iter()
            .zip(&v[2000..4000])
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
            / 2000.0;
        assert!(corr.abs() < 0.1, "row correlation {corr}");
    }

    #[test]
    fn noised_dropped_is_the_forward_process_then_dropout_drawn_in_one_pass() {
        type AB = Autodiff<B>;
        let dev = Default::default();
        let (rows, cols) = (6, 11); // odd width: the mask's last entry of a row uses its own draw
        let x0: Vec<f32> = (0..rows * cols)
            .map(|i| (i % 4 == 1) as u8 as f32)
            .collect();
        let a: Vec<f32> = (0..rows).map(|r| 0.9 - 0.1 * r as f32).collect();
        let b: Vec<f32> = a.iter().map(|a| (1.0 - a * a).sqrt()).collect();
        let column =
            |v: &[f32]| Tensor::<AB, 2>::from_data(TensorData::new(v.to_vec(), [rows, 1]), &dev);
        let by_ops = |p: f64| {
            reseed(11, 0);
            let x = Tensor::<AB, 2>::from_data(TensorData::new(x0.clone(), [rows, cols]), &dev);
            let eps = standard_normal::<AB>(rows, cols, &dev);
            let x_t = x * column(&a) + eps * column(&b);
            let y = dropout(x_t, p).into_data().to_vec::<f32>().unwrap();
            let next = host(standard_normal::<B>(1, 3, &dev)); // the step's following draw
            (y, next)
        };
        for p in [0.5, 0.2, 0.0] {
            let (want, want_next) = by_ops(p);
            reseed(11, 0);
            let got = noised_dropped(&x0, cols, &a, &b, p);
            let next = host(standard_normal::<B>(1, 3, &dev));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "p = {p}");
            assert_eq!(next, want_next, "p = {p}: the same number of draws taken");
            if p > 0.0 {
                assert!(
                    got.iter().any(|&v| v == 0.0),
                    "p = {p}: some entries dropped"
                );
            }
            // A replica holding rows 2.. draws what one device draws for them.
            reseed(11, 2);
            let shard = noised_dropped(&x0[2 * cols..], cols, &a[2..], &b[2..], p);
            assert_eq!(bits(&shard), bits(&got[2 * cols..]), "p = {p}");
        }
    }

    /// `noised_dropped` against the rule written out with rand's `SmallRng`, rand_distr's
    /// `StandardNormal` and a branch per mask entry, row by row: shapes that take the
    /// eight-row AVX-512 path (full groups, a partial group, a column tail of odd length) and
    /// ones that do not, with and without dropout, on a replica's rows too.
    #[test]
    fn noised_dropped_draws_what_small_rng_and_rand_distr_draw_row_by_row() {
        let want =
            |seed: u64, first_row: u64, x0: &[f32], cols: usize, a: &[f32], b: &[f32], p: f64| {
                let base = mix(seed);
                let (noise, mask) = (mix(base), mix(base ^ 1));
                let rng = |base: u64, r: usize| {
                    SmallRng::seed_from_u64(mix(base ^ (first_row + r as u64)))
                };
                let keep = 1.0 - p;
                let (scale, threshold) =
                    ((1.0 / keep) as f32, (keep * 4_294_967_296.0).round() as u64);
                let rule = |half: u64| if half < threshold { scale } else { 0.0 };
                let mut out = Vec::new();
                for r in 0..a.len() {
                    let mut e = rng(noise, r);
                    let mut row: Vec<f32> = x0[r * cols..(r + 1) * cols]
                        .iter()
                        .map(|&x| x * a[r] + e.sample::<f32, _>(StandardNormal) * b[r])
                        .collect();
                    if p > 0.0 {
                        let mut m = rng(mask, r);
                        let mut c = 0;
                        while c + 2 <= cols {
                            let w = m.next_u64();
                            row[c] *= rule(w & 0xFFFF_FFFF);
                            row[c + 1] *= rule(w >> 32);
                            c += 2;
                        }
                        if c < cols {
                            row[c] *= rule(m.next_u64() >> 32);
                        }
                    }
                    out.extend(row);
                }
                out
            };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (rows, cols) in [(8, 8), (19, 37), (16, 64), (5, 40), (9, 7), (12, 1)] {
            let x0: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7) % 5 == 1) as u8 as f32)
                .collect();
            let a: Vec<f32> = (0..rows).map(|r| 0.99 - 0.03 * r as f32).collect();
            let b: Vec<f32> = a.iter().map(|a| (1.0 - a * a).sqrt()).collect();
            for p in [0.5, 0.1, 0.0] {
                reseed(5, 0);
                let got = noised_dropped(&x0, cols, &a, &b, p);
                let expected = want(5, 0, &x0, cols, &a, &b, p);
                assert_eq!(bits(&got), bits(&expected), "{rows} × {cols}, p = {p}");
                // A replica holding rows 3.. (so its groups of eight start elsewhere).
                reseed(5, 3);
                let shard = noised_dropped(&x0[3 * cols..], cols, &a[3..], &b[3..], p);
                assert_eq!(
                    bits(&shard),
                    bits(&expected[3 * cols..]),
                    "{rows} × {cols}, p = {p}, shard"
                );
            }
        }
    }

    #[test]
    fn dropout_keeps_one_minus_p_scaled_and_is_off_without_autodiff() {
        type AB = Autodiff<B>;
        let dev = Default::default();
        reseed(3, 0);
        let x = Tensor::<AB, 2>::ones([200, 500], &dev);
        let y: Vec<f32> = dropout(x, 0.5)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
        assert!((kept - 0.5).abs() < 0.01, "kept {kept}");
        assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
        let plain = Tensor::<B, 2>::ones([3, 4], &dev);
        assert_eq!(host(dropout(plain, 0.5)), vec![1.0; 12]);
    }

    /// The mask is the plain rule, written here with a branch: a 64-bit draw per pair of
    /// entries, low half first, kept (as 1/(1 − p)) when the 32-bit half is below (1 − p)·2³²;
    /// an odd last entry takes a fresh draw's high half. Bit for bit, so the branchless version
    /// draws exactly the masks every recorded run was trained with.
    #[test]
    fn mask_is_the_threshold_rule_on_each_half_of_a_draw() {
        for (p, cols) in [(0.5f64, 7), (0.1, 8), (0.3, 1)] {
            let keep = 1.0 - p;
            let scale = (1.0 / keep) as f32;
            let threshold = (keep * 4_294_967_296.0).round() as u64;
            let rule = |half: u64| if half < threshold { scale } else { 0.0 };
            let mut want = Vec::new();
            let mut rng = row_rng(99, 5, 3);
            while want.len() + 2 <= cols {
                let b = rng.next_u64();
                want.extend([rule(b & 0xFFFF_FFFF), rule(b >> 32)]);
            }
            if want.len() < cols {
                want.push(rule(rng.next_u64() >> 32));
            }
            let mut got = vec![f32::NAN; cols];
            mask_filler(p)(&mut row_rng(99, 5, 3), &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "p = {p}, {cols} columns");
        }
    }
}
