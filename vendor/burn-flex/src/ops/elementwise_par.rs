//! Element-wise loops split over rayon's pool (diffrec patch, see the workspace's
//! `vendor/README.md`).
//!
//! The published crate runs every scalar, unary and same-shape binary loop on the calling
//! thread, and its SIMD binary kernels only fan out above 4 M elements. Training a diffusion
//! recommender on a 2-core machine spends most of its element-wise time on tensors of 0.2–2 M
//! elements, so those loops left the second core idle between parallel GEMMs. These helpers
//! split a loop into fixed chunks above [`MIN_PARALLEL`] elements. Each element is computed by
//! the same closure on the same inputs as before, so results are bit-identical; only the
//! thread that computes them changes.
//!
//! The crate is built for baseline x86-64, so these loops vectorised to SSE's 4 lanes. On CPUs
//! with AVX2 and FMA each chunk's loop runs in a copy compiled for them (`v3`), 8 lanes wide.
//! Rust never fuses a multiply and an add on its own, so every element is the same IEEE
//! computation and the results stay bit-identical (diffrec's tests compare them with plain
//! loops, and its f32 `tanh` over all 2^32 inputs).

use alloc::vec::Vec;
use core::mem::MaybeUninit;

#[cfg(feature = "rayon")]
use rayon::prelude::*;

/// Below this many elements a loop stays on the calling thread (a rayon fan-out costs a few
/// microseconds; 64 K f32 adds take about as long).
pub(crate) const MIN_PARALLEL: usize = 1 << 16;

/// Elements per rayon task: 64 KiB of f32, well inside L2.
#[cfg(feature = "rayon")]
const CHUNK: usize = 1 << 14;

/// `xs[i] = f(xs[i])` for every element.
#[inline]
pub(crate) fn map_inplace<E, F>(xs: &mut [E], f: F)
where
    E: Copy + Send + Sync,
    F: Fn(E) -> E + Sync,
{
    #[cfg(feature = "rayon")]
    if xs.len() >= MIN_PARALLEL {
        xs.par_chunks_mut(CHUNK).for_each(|c| map_chunk(c, &f));
        return;
    }
    map_chunk(xs, &f);
}

/// `f` on consecutive chunks of `xs` (each whole chunk at once, for kernels that work on
/// slices); the same chunks as [`map_inplace`].
#[inline]
pub(crate) fn map_inplace_slices<E, F>(xs: &mut [E], f: F)
where
    E: Copy + Send + Sync,
    F: Fn(&mut [E]) + Sync,
{
    #[cfg(feature = "rayon")]
    if xs.len() >= MIN_PARALLEL {
        xs.par_chunks_mut(CHUNK).for_each(&f);
        return;
    }
    f(xs);
}

#[inline(always)]
fn map_chunk<E: Copy, F: Fn(E) -> E>(xs: &mut [E], f: &F) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if v3::available() {
        // SAFETY: the CPU has the features `v3` is compiled for (checked just above).
        return unsafe { v3::map_chunk(xs, f) };
    }
    map_loop(xs, f)
}

/// `xs[i] = f(xs[i], ys[i])` for every element; `ys` at least as long as `xs`.
#[inline]
pub(crate) fn zip_inplace<E, F>(xs: &mut [E], ys: &[E], f: F)
where
    E: Copy + Send + Sync,
    F: Fn(E, E) -> E + Sync,
{
    let ys = &ys[..xs.len()];
    #[cfg(feature = "rayon")]
    if xs.len() >= MIN_PARALLEL {
        xs.par_chunks_mut(CHUNK)
            .zip(ys.par_chunks(CHUNK))
            .for_each(|(c, r)| zip_chunk(c, r, &f));
        return;
    }
    zip_chunk(xs, ys, &f);
}

#[inline(always)]
fn zip_chunk<E: Copy, F: Fn(E, E) -> E>(xs: &mut [E], ys: &[E], f: &F) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if v3::available() {
        // SAFETY: as in `map_chunk`.
        return unsafe { v3::zip_chunk(xs, ys, f) };
    }
    zip_loop(xs, ys, f)
}

/// `out[i] = f(xs[i])`; equal lengths.
#[inline(always)]
fn write_chunk<E: Copy, F: Fn(E) -> E>(out: &mut [MaybeUninit<E>], xs: &[E], f: &F) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if v3::available() {
        // SAFETY: as in `map_chunk`.
        return unsafe { v3::write_chunk(out, xs, f) };
    }
    write_loop(out, xs, f)
}

/// `out[i] = f(xs[i], ys[i])`; equal lengths.
#[inline(always)]
fn zip_write_chunk<E: Copy, F: Fn(E, E) -> E>(
    out: &mut [MaybeUninit<E>],
    xs: &[E],
    ys: &[E],
    f: &F,
) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if v3::available() {
        // SAFETY: as in `map_chunk`.
        return unsafe { v3::zip_write_chunk(out, xs, ys, f) };
    }
    zip_write_loop(out, xs, ys, f)
}

// The loops themselves, written once: inlined into the dispatchers above and into `v3`'s copies.

#[inline(always)]
fn map_loop<E: Copy, F: Fn(E) -> E>(xs: &mut [E], f: &F) {
    for x in xs.iter_mut() {
        *x = f(*x);
    }
}

#[inline(always)]
fn zip_loop<E: Copy, F: Fn(E, E) -> E>(xs: &mut [E], ys: &[E], f: &F) {
    for (x, &y) in xs.iter_mut().zip(ys) {
        *x = f(*x, y);
    }
}

#[inline(always)]
fn write_loop<E: Copy, F: Fn(E) -> E>(out: &mut [MaybeUninit<E>], xs: &[E], f: &F) {
    for (o, &x) in out.iter_mut().zip(xs) {
        o.write(f(x));
    }
}

#[inline(always)]
fn zip_write_loop<E: Copy, F: Fn(E, E) -> E>(
    out: &mut [MaybeUninit<E>],
    xs: &[E],
    ys: &[E],
    f: &F,
) {
    for ((o, &a), &b) in out.iter_mut().zip(xs).zip(ys) {
        o.write(f(a, b));
    }
}

/// The loops compiled for x86-64-v3 (AVX2, FMA, BMI): the same closures, inlined into a wider
/// vector loop.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod v3 {
    use core::mem::MaybeUninit;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("lzcnt")
            && std::arch::is_x86_feature_detected!("f16c")
    }

    #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,f16c")]
    pub(super) fn map_chunk<E: Copy, F: Fn(E) -> E>(xs: &mut [E], f: &F) {
        super::map_loop(xs, f)
    }

    #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,f16c")]
    pub(super) fn zip_chunk<E: Copy, F: Fn(E, E) -> E>(xs: &mut [E], ys: &[E], f: &F) {
        super::zip_loop(xs, ys, f)
    }

    #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,f16c")]
    pub(super) fn write_chunk<E: Copy, F: Fn(E) -> E>(out: &mut [MaybeUninit<E>], xs: &[E], f: &F) {
        super::write_loop(out, xs, f)
    }

    #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,f16c")]
    pub(super) fn zip_write_chunk<E: Copy, F: Fn(E, E) -> E>(
        out: &mut [MaybeUninit<E>],
        xs: &[E],
        ys: &[E],
        f: &F,
    ) {
        super::zip_write_loop(out, xs, ys, f)
    }
}

/// A new vector with `f(xs[i])`.
#[inline]
pub(crate) fn map_collect<E, F>(xs: &[E], f: F) -> Vec<E>
where
    E: Copy + Send + Sync,
    F: Fn(E) -> E + Sync,
{
    // Written through the spare capacity: zero-filling first (`vec![0; n]`) cost a memset
    // pass over every fresh buffer (glibc's calloc reuses freed memory).
    let mut out = Vec::with_capacity(xs.len());
    let spare = &mut out.spare_capacity_mut()[..xs.len()];
    #[cfg(feature = "rayon")]
    if xs.len() >= MIN_PARALLEL {
        spare
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(o, i)| write_chunk(o, i, &f));
        // SAFETY: the loop above initialised all `xs.len()` elements.
        unsafe { out.set_len(xs.len()) };
        return out;
    }
    write_chunk(spare, xs, &f);
    // SAFETY: `write_chunk` initialised all `xs.len()` elements.
    unsafe { out.set_len(xs.len()) };
    out
}

/// A new vector with `f(xs[i], ys[i])`; the slices have equal lengths.
#[inline]
pub(crate) fn zip_collect<E, F>(xs: &[E], ys: &[E], f: F) -> Vec<E>
where
    E: Copy + Send + Sync,
    F: Fn(E, E) -> E + Sync,
{
    debug_assert_eq!(xs.len(), ys.len());
    let ys = &ys[..xs.len()];
    let mut out = Vec::with_capacity(xs.len());
    let spare = &mut out.spare_capacity_mut()[..xs.len()];
    #[cfg(feature = "rayon")]
    if xs.len() >= MIN_PARALLEL {
        spare
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(ys.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| zip_write_chunk(o, a, b, &f));
        // SAFETY: the loop above initialised all `xs.len()` elements.
        unsafe { out.set_len(xs.len()) };
        return out;
    }
    zip_write_chunk(spare, xs, ys, &f);
    // SAFETY: `zip_write_chunk` initialised all `xs.len()` elements.
    unsafe { out.set_len(xs.len()) };
    out
}
