//! `e^x` over f32 slices with AVX-512, the same bits as glibc's `expf` (diffrec patch, see the
//! workspace's `vendor/README.md`).
//!
//! The published crate computes `exp` element by element through libm. L-DiffRec's
//! multinomial loss takes a softmax over all items every step (400 × 2,810 exponentials
//! forward and backward on ML-1M), and libm's `expf` was about 9 % of its CPU samples.
//!
//! glibc (since 2.27) computes `expf` in double precision: `x·32/ln 2 = k + r` by adding a
//! shift constant, `2^(k/32)` from a 32-entry table with `k / 32` added to its exponent bits,
//! and a cubic in `r`. On CPUs with FMA, glibc's ifunc picks the build of that code that GCC
//! compiled with FMA contraction (`__expf_fma`). This module performs the same operations, in
//! the same order and with the same fused multiply-adds, eight lanes at a time. So every result
//! equals libm's to the bit; a check over all 2^32 inputs found no difference (the test in
//! `crates/model/tests/cpu_backend.rs` repeats it on a sample). Inputs where glibc leaves that
//! path (|x| ≥ 88, infinities, NaN) and the tail of a slice shorter than 16 are handed to
//! libm itself. CPUs without AVX-512 F, or without FMA and AVX2 (glibc picks its FMA build only
//! with both; the other builds round differently), and C libraries other than glibc use libm
//! for every element. One way to break the promise remains: `GLIBC_TUNABLES` that mask FMA or
//! AVX2 from glibc (`glibc.cpu.hwcaps=-AVX2_Usable`) make libm round differently while this
//! kernel still runs.

use super::elementwise_par::map_inplace_slices;
#[allow(unused_imports)] // `exp` without std
use num_traits::Float;

/// `xs[i] = e^xs[i]` (libm's value), on rayon's pool for long slices.
pub(crate) fn exp_inplace(xs: &mut [f32]) {
    map_inplace_slices(xs, exp_chunk);
}

/// One chunk on the calling thread.
fn exp_chunk(xs: &mut [f32]) {
    #[cfg(all(
        feature = "std",
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    ))]
    if avx512::available() {
        // SAFETY: the CPU has AVX-512 F and FMA (checked just above).
        unsafe { avx512::exp_slice(xs) };
        return;
    }
    for x in xs.iter_mut() {
        *x = x.exp();
    }
}

#[cfg(all(
    feature = "std",
    target_arch = "x86_64",
    target_os = "linux",
    target_env = "gnu"
))]
mod avx512 {
    use core::arch::x86_64::*;

    /// glibc's `__exp2f_data.tab`: `bits(2^(i/32)) − (i << 47)`.
    static TAB: [u64; 32] = [
        0x3ff0000000000000,
        0x3fefd9b0d3158574,
        0x3fefb5586cf9890f,
        0x3fef9301d0125b51,
        0x3fef72b83c7d517b,
        0x3fef54873168b9aa,
        0x3fef387a6e756238,
        0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715,
        0x3feef1a7373aa9cb,
        0x3feedea64c123422,
        0x3feece086061892d,
        0x3feebfdad5362a27,
        0x3feeb42b569d4f82,
        0x3feeab07dd485429,
        0x3feea47eb03a5585,
        0x3feea09e667f3bcd,
        0x3fee9f75e8ec5f74,
        0x3feea11473eb0187,
        0x3feea589994cce13,
        0x3feeace5422aa0db,
        0x3feeb737b0cdc5e5,
        0x3feec49182a3f090,
        0x3feed503b23e255d,
        0x3feee89f995ad3ad,
        0x3feeff76f2fb5e47,
        0x3fef199bdd85529c,
        0x3fef3720dcef9069,
        0x3fef5818dcfba487,
        0x3fef7c97337b9b5f,
        0x3fefa4afa2a490da,
        0x3fefd0765b6e4540,
    ];
    /// `32 / ln 2` (`invln2_scaled`).
    const INV_LN2_N: u64 = 0x40471547652b82fe;
    /// The cubic's coefficients scaled for `r` in table steps (`poly_scaled`).
    const C0: u64 = 0x3ebc6af84b912394;
    const C1: u64 = 0x3f2ebfce50fac4f3;
    const C2: u64 = 0x3f962e42ff0c52d6;
    /// `1.5 · 2^52`: adding it rounds to an integer held in the low mantissa bits (`shift`).
    const SHIFT: u64 = 0x4338000000000000;
    /// glibc's fast path takes `(bits(x) >> 20) & 0x7ff` up to this (|x| below 88).
    const FAST_TOP: i32 = 0x42a;

    /// AVX-512 F for the kernel; FMA and AVX2, which glibc needs to pick `__expf_fma`.
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("avx2")
    }

    /// Eight lanes of glibc's fast path; lanes outside its domain give garbage.
    #[target_feature(enable = "avx512f,fma")]
    fn eight(x: __m256, table: &[__m512i; 4]) -> __m256 {
        let xd = _mm512_cvtps_pd(x);
        let inv = _mm512_set1_pd(f64::from_bits(INV_LN2_N));
        let shift = _mm512_set1_pd(f64::from_bits(SHIFT));
        // kd = InvLn2N·x + shift (one rounding, as glibc's FMA build does), ki its bits.
        let shifted = _mm512_fmadd_pd(inv, xd, shift);
        let ki = _mm512_castpd_si512(shifted);
        let kd = _mm512_sub_pd(shifted, shift);
        // r = InvLn2N·x − kd, fused as well.
        let r = _mm512_fmsub_pd(inv, xd, kd);
        // T[ki % 32] from four registers: index bits 0–3 pick within a pair, bit 4 the pair.
        let low = _mm512_permutex2var_epi64(table[0], ki, table[1]);
        let high = _mm512_permutex2var_epi64(table[2], ki, table[3]);
        let upper = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
        let t = _mm512_mask_blend_epi64(upper, low, high);
        let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
        let z = _mm512_fmadd_pd(
            r,
            _mm512_set1_pd(f64::from_bits(C0)),
            _mm512_set1_pd(f64::from_bits(C1)),
        );
        let r2 = _mm512_mul_pd(r, r);
        let y = _mm512_fmadd_pd(r, _mm512_set1_pd(f64::from_bits(C2)), _mm512_set1_pd(1.0));
        let y = _mm512_fmadd_pd(z, r2, y);
        _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
    }

    /// # Safety
    /// The CPU must have AVX-512 F and FMA.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn exp_slice(xs: &mut [f32]) {
        // SAFETY (loads): each reads 8 u64 inside TAB.
        let table = unsafe {
            [
                _mm512_loadu_si512(TAB[0..].as_ptr().cast()),
                _mm512_loadu_si512(TAB[8..].as_ptr().cast()),
                _mm512_loadu_si512(TAB[16..].as_ptr().cast()),
                _mm512_loadu_si512(TAB[24..].as_ptr().cast()),
            ]
        };
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            let p = c.as_mut_ptr();
            // SAFETY: `c` holds exactly 16 f32.
            let v = unsafe { _mm512_loadu_ps(p) };
            let top = _mm512_and_si512(
                _mm512_srli_epi32::<20>(_mm512_castps_si512(v)),
                _mm512_set1_epi32(0x7ff),
            );
            let slow = _mm512_cmpgt_epu32_mask(top, _mm512_set1_epi32(FAST_TOP));
            let a = eight(_mm512_castps512_ps256(v), &table);
            let b = eight(
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
                &table,
            );
            // SAFETY: two stores of 8 f32 into the 16 of `c`.
            unsafe {
                _mm256_storeu_ps(p, a);
                _mm256_storeu_ps(p.add(8), b);
            }
            if slow != 0 {
                let mut inputs = [0f32; 16];
                // SAFETY: 16 f32 into a 16-element array.
                unsafe { _mm512_storeu_ps(inputs.as_mut_ptr(), v) };
                for (i, x) in inputs.iter().enumerate() {
                    if slow & (1 << i) != 0 {
                        c[i] = x.exp();
                    }
                }
            }
        }
        for x in chunks.into_remainder() {
            *x = x.exp();
        }
    }
}
