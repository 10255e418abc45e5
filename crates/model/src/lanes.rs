//! DiffRec's training input for eight rows at once, with AVX-512: each row's Gaussian noise and
//! dropout mask drawn from its own generator, the generators advanced side by side, one per
//! 64-bit lane.
//!
//! Why: drawn a row at a time, the Gaussian noise alone was 5 % of a DiffRec ML-1M epoch's CPU
//! samples and the input pass around it 3 % more (docs/benchmarks.md): each normal costs a
//! Xoshiro256++ step, a table lookup and a compare, about 14 cycles, one after the other. Here
//! one step of eight generators, two gathers and a compare give eight rows' next normal, the
//! dropout mask gives sixteen entries per step, and an 8 × 8 transpose turns the eight
//! rows' values for eight columns back into row order for the x_t pass.
//!
//! The values are exactly those of the row-at-a-time path in `noise.rs` (same streams, same
//! f32 roundings, no fused multiply-add); a lane whose draw leaves the ziggurat's first step
//! is rewound and drawn by rand_distr, as there. Tests compare the two bit for bit.

use crate::rowrng::RowRng;
use crate::ziggurat::Ziggurat;
use std::mem::MaybeUninit;

/// Rows drawn together.
pub(crate) const LANES: usize = 8;

/// The dropout rule: an entry is kept, as `f32::from_bits(scale)`, when its 32-bit half of a
/// draw is below `threshold`, else it is +0.0.
#[derive(Clone, Copy)]
pub(crate) struct Keep {
    pub(crate) scale: u32,
    pub(crate) threshold: u64,
}

/// One group of `LANES` rows, row-major and `cols` wide: the clean input `x0`, the output, and
/// each row's forward-process scales `a` and `b`.
pub(crate) struct Group<'a> {
    pub(crate) x0: &'a [f32],
    pub(crate) out: &'a mut [MaybeUninit<f32>],
    pub(crate) cols: usize,
    pub(crate) a: &'a [f32],
    pub(crate) b: &'a [f32],
}

/// Whether the CPU has what the kernel needs: AVX-512 F, VL and DQ.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Writes `out` = (a·x0 + b·ε) · mask for the first `cols − cols % 8` columns of the group
/// when the CPU has AVX-512, advancing the rows' generators exactly as the row-at-a-time path
/// would for those columns. Returns the number of columns written per row (0 without AVX-512:
/// the caller draws everything).
pub(crate) fn noised_dropped(
    noise: &mut [RowRng; LANES],
    mask: Option<(&mut [RowRng; LANES], Keep)>,
    g: Group<'_>,
    z: &Ziggurat,
) -> usize {
    assert!(g.x0.len() == LANES * g.cols && g.out.len() == LANES * g.cols);
    assert!(g.a.len() == LANES && g.b.len() == LANES);
    if available() {
        // SAFETY: the CPU has the kernel's features and the slices' lengths were checked above.
        #[cfg(target_arch = "x86_64")]
        return unsafe { avx512::kernel(noise, mask, g, z) };
    }
    let _ = (noise, mask, g, z);
    0
}

/// The lanes whose draw left the first step (`bad`, a bit per lane): rewound to `before` and
/// drawn by rand_distr, their generators' state written back into `now`.
#[cold]
fn redraw(now: &mut [[u64; LANES]; 4], before: &[[u64; LANES]; 4], v: &mut [f64; LANES], bad: u8) {
    use rand::RngExt;
    for l in (0..LANES).filter(|l| bad >> l & 1 == 1) {
        let mut rng = RowRng {
            s: std::array::from_fn(|w| before[w][l]),
        };
        v[l] = rng.sample(rand_distr::StandardNormal);
        for w in 0..4 {
            now[w][l] = rng.s[w];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use crate::ziggurat::EXPONENT_ONE;
    use std::arch::x86_64::*;

    type State = [__m512i; 4];

    fn to_lanes(rngs: &[RowRng; LANES]) -> [[u64; LANES]; 4] {
        std::array::from_fn(|w| std::array::from_fn(|l| rngs[l].s[w]))
    }

    fn from_lanes(words: &[[u64; LANES]; 4], rngs: &mut [RowRng; LANES]) {
        for (l, rng) in rngs.iter_mut().enumerate() {
            rng.s = std::array::from_fn(|w| words[w][l]);
        }
    }

    #[target_feature(enable = "avx512f")]
    fn load(words: &[[u64; LANES]; 4]) -> State {
        // SAFETY: each row of `words` is 8 u64 = 64 bytes, read unaligned.
        std::array::from_fn(|w| unsafe { _mm512_loadu_si512(words[w].as_ptr().cast()) })
    }

    #[target_feature(enable = "avx512f")]
    fn store(s: &State) -> [[u64; LANES]; 4] {
        let mut words = [[0u64; LANES]; 4];
        for w in 0..4 {
            // SAFETY: each row of `words` is 64 bytes, written unaligned.
            unsafe { _mm512_storeu_si512(words[w].as_mut_ptr().cast(), s[w]) };
        }
        words
    }

    /// One Xoshiro256++ step of every lane (`RowRng::next`, lane by lane).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn step(s: &mut State) -> __m512i {
        let out = _mm512_add_epi64(_mm512_rol_epi64::<23>(_mm512_add_epi64(s[0], s[3])), s[0]);
        let t = _mm512_slli_epi64::<17>(s[1]);
        s[2] = _mm512_xor_si512(s[2], s[0]);
        s[3] = _mm512_xor_si512(s[3], s[1]);
        s[1] = _mm512_xor_si512(s[1], s[2]);
        s[0] = _mm512_xor_si512(s[0], s[3]);
        s[2] = _mm512_xor_si512(s[2], t);
        s[3] = _mm512_rol_epi64::<45>(s[3]);
        out
    }

    /// Row `l` of the result is lane `l` of the inputs: out[l][c] = m[c][l].
    #[inline]
    #[target_feature(enable = "avx")]
    fn transpose(m: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(m[0], m[1]);
        let t1 = _mm256_unpackhi_ps(m[0], m[1]);
        let t2 = _mm256_unpacklo_ps(m[2], m[3]);
        let t3 = _mm256_unpackhi_ps(m[2], m[3]);
        let t4 = _mm256_unpacklo_ps(m[4], m[5]);
        let t5 = _mm256_unpackhi_ps(m[4], m[5]);
        let t6 = _mm256_unpacklo_ps(m[6], m[7]);
        let t7 = _mm256_unpackhi_ps(m[6], m[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// Eight columns of every lane's normals (`ziggurat::normal`, lane by lane), f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    fn normals(s: &mut State, z: &Ziggurat) -> [__m256; 8] {
        let low8 = _mm512_set1_epi64(0xFF);
        let exponent = _mm512_set1_epi64(EXPONENT_ONE as i64);
        let three = _mm512_set1_pd(3.0);
        // A plain loop, not `array::from_fn`: its closure was not inlined, and the state went
        // through memory on every column.
        let mut e = [_mm256_setzero_ps(); 8];
        for ec in &mut e {
            let before = *s;
            let word = step(s);
            let i = _mm512_and_si512(word, low8);
            let u = _mm512_sub_pd(
                _mm512_castsi512_pd(_mm512_or_si512(_mm512_srli_epi64::<12>(word), exponent)),
                three,
            );
            // SAFETY: every index is below 256, the tables' length.
            let (x, limit) = unsafe {
                (
                    _mm512_i64gather_pd::<8>(i, z.x.as_ptr()),
                    _mm512_i64gather_pd::<8>(i, z.limit.as_ptr()),
                )
            };
            let mut v = _mm512_mul_pd(u, x);
            let ok = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(_mm512_abs_pd(v), limit);
            if ok != 0xFF {
                let mut now = store(s);
                let mut vals = [0f64; LANES];
                // SAFETY: 8 f64 = 64 bytes, written and read unaligned.
                unsafe { _mm512_storeu_pd(vals.as_mut_ptr(), v) };
                redraw(&mut now, &store(&before), &mut vals, !ok);
                *s = load(&now);
                v = unsafe { _mm512_loadu_pd(vals.as_ptr()) };
            }
            *ec = _mm512_cvtpd_ps(v);
        }
        e
    }

    /// Eight columns of every lane's dropout mask: four draws, each the low then the high half
    /// for two columns.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    fn masks(s: &mut State, keep: Keep) -> [__m256; 8] {
        let threshold = _mm512_set1_epi64(keep.threshold as i64);
        let low32 = _mm512_set1_epi64(0xFFFF_FFFF);
        let scale = _mm256_castsi256_ps(_mm256_set1_epi32(keep.scale as i32));
        let mut m = [_mm256_setzero_ps(); 8];
        for pair in m.chunks_exact_mut(2) {
            let word = step(s);
            let low = _mm512_and_si512(word, low32);
            let high = _mm512_srli_epi64::<32>(word);
            pair[0] = _mm256_maskz_mov_ps(_mm512_cmplt_epu64_mask(low, threshold), scale);
            pair[1] = _mm256_maskz_mov_ps(_mm512_cmplt_epu64_mask(high, threshold), scale);
        }
        m
    }

    /// SAFETY: the CPU has AVX-512 F, VL and DQ; `x0` and `out` hold `LANES × cols` values,
    /// `a` and `b` `LANES`.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq")]
    pub(super) unsafe fn kernel(
        noise: &mut [RowRng; LANES],
        mask: Option<(&mut [RowRng; LANES], Keep)>,
        g: Group<'_>,
        z: &Ziggurat,
    ) -> usize {
        let Group {
            x0,
            out,
            cols,
            a,
            b,
        } = g;
        let full = cols - cols % 8;
        let mut s = load(&to_lanes(noise));
        let (mut ms, keep) = match &mask {
            Some((rngs, keep)) => (load(&to_lanes(rngs)), Some(*keep)),
            None => (s, None),
        };
        let av: [__m256; LANES] = std::array::from_fn(|l| _mm256_set1_ps(a[l]));
        let bv: [__m256; LANES] = std::array::from_fn(|l| _mm256_set1_ps(b[l]));
        let (xp, op) = (x0.as_ptr(), out.as_mut_ptr().cast::<f32>());
        for c in (0..full).step_by(8) {
            let e = transpose(normals(&mut s, z));
            let m = keep.map(|k| transpose(masks(&mut ms, k)));
            for l in 0..LANES {
                // SAFETY: l·cols + c + 8 ≤ LANES·cols, the slices' length.
                unsafe {
                    let x = _mm256_loadu_ps(xp.add(l * cols + c));
                    let mut o = _mm256_add_ps(_mm256_mul_ps(x, av[l]), _mm256_mul_ps(e[l], bv[l]));
                    if let Some(m) = &m {
                        o = _mm256_mul_ps(o, m[l]);
                    }
                    _mm256_storeu_ps(op.add(l * cols + c), o);
                }
            }
        }
        from_lanes(&store(&s), noise);
        if let Some((rngs, _)) = mask {
            from_lanes(&store(&ms), rngs);
        }
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ziggurat;

    /// Where the CPU has AVX-512 the kernel runs (so the bit-for-bit tests in `noise.rs`
    /// exercise it) and gives each row what the row's own generator gives, one at a time.
    #[test]
    fn the_kernel_draws_each_rows_stream() {
        let cols = 20;
        let x0: Vec<f32> = (0..LANES * cols)
            .map(|i| (i % 3 == 0) as u8 as f32)
            .collect();
        let (a, b) = ([0.9f32; LANES], [0.3f32; LANES]);
        let seeds: [RowRng; LANES] = std::array::from_fn(|l| RowRng::seed_from_u64(l as u64 + 10));
        let mut noise = seeds;
        let mut out = vec![MaybeUninit::new(f32::NAN); LANES * cols];
        let z = ziggurat::table();
        let group = Group {
            x0: &x0,
            out: &mut out,
            cols,
            a: &a,
            b: &b,
        };
        let done = noised_dropped(&mut noise, None, group, z);
        if available() {
            assert_eq!(done, 16, "full blocks of eight columns");
        }
        for l in 0..LANES {
            let mut rng = seeds[l];
            for c in 0..done {
                let want = x0[l * cols + c] * a[l] + ziggurat::normal(&mut rng, z) * b[l];
                // SAFETY: the kernel wrote the first `done` columns of every row.
                let got = unsafe { out[l * cols + c].assume_init() };
                assert_eq!(got.to_bits(), want.to_bits(), "row {l}, column {c}");
            }
            assert_eq!(
                noise[l], rng,
                "row {l}: the generator advanced as one at a time"
            );
        }
    }
}
