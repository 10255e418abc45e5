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

use alloc::vec::Vec;

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
    for x in xs.iter_mut() {
        *x = f(*x);
    }
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
    for (x, &y) in xs.iter_mut().zip(ys) {
        *x = f(*x, y);
    }
}

/// A new vector with `f(xs[i])`.
#[inline]
pub(crate) fn map_collect<E, F>(xs: &[E], f: F) -> Vec<E>
where
    E: Copy + Send + Sync,
    F: Fn(E) -> E + Sync,
{
    #[cfg(feature = "rayon")]
    if xs.len() >= MIN_PARALLEL {
        // Written through the spare capacity: zero-filling first (`vec![0; n]`) cost a
        // memset pass over every fresh buffer (glibc's calloc reuses freed memory).
        let mut out = Vec::with_capacity(xs.len());
        out.spare_capacity_mut()[..xs.len()]
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(o, i)| {
                for (o, &i) in o.iter_mut().zip(i) {
                    o.write(f(i));
                }
            });
        // SAFETY: the loop above initialised all `xs.len()` elements.
        unsafe { out.set_len(xs.len()) };
        return out;
    }
    xs.iter().map(|&x| f(x)).collect()
}

/// A new vector with `f(xs[i], ys[i])`; the slices have equal lengths.
#[inline]
pub(crate) fn zip_collect<E, F>(xs: &[E], ys: &[E], f: F) -> Vec<E>
where
    E: Copy + Send + Sync,
    F: Fn(E, E) -> E + Sync,
{
    debug_assert_eq!(xs.len(), ys.len());
    #[cfg(feature = "rayon")]
    if xs.len() >= MIN_PARALLEL {
        let mut out = Vec::with_capacity(xs.len());
        out.spare_capacity_mut()[..xs.len()]
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(ys.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    o.write(f(a, b));
                }
            });
        // SAFETY: the loop above initialised all `xs.len()` elements.
        unsafe { out.set_len(xs.len()) };
        return out;
    }
    xs.iter().zip(ys).map(|(&a, &b)| f(a, b)).collect()
}
