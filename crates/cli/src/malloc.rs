//! glibc's allocator told to keep freed memory for reuse.
//!
//! A training step allocates and frees the same large buffers every batch (matrix products'
//! outputs, gradients, the noised input: on ML-1M several of 1–7 MB). glibc serves blocks above
//! its mmap threshold with fresh `mmap`s and returns them on free, and trims the heap top, so
//! each step page-faults its buffers in again: about 2,000 faults a step, several percent of an
//! epoch's CPU time (docs/benchmarks.md, "Allocator"). Fixing the mmap threshold at its
//! maximum (32 MiB) and raising the trim threshold keeps those pages mapped for the next step;
//! blocks above 32 MiB are still mapped and unmapped one by one.
//!
//! One arena for all threads: the training step runs on a rayon pool thread (diffrec-trainer's
//! `pool.rs`) while the stages start on the main thread, and glibc gives each thread that
//! allocates its own arena, each keeping its freed memory by the setting above. With one arena
//! the DiffRec training process peaked at 0.33–0.36 GiB instead of 0.43–0.48 GiB, and
//! L-DiffRec's at 0.15 GiB instead of 0.23 GiB, about their peaks before steps moved to the
//! pool, at the same training speed (docs/benchmarks.md, twelfth session): a step's allocations
//! are few and large, so the shared lock is not contended. Ingest (Polars' threads) and the
//! cluster stage run at the same speed too, and ingest's peak is 15–28 % lower than with an
//! arena per thread (docs/benchmarks.md, "Ingest, 10 M rows", and the LightGCN section).
//!
//! Set once at start, before any thread exists. Skipped when `GLIBC_TUNABLES` is set: the
//! operator's allocator settings win. Other platforms and C libraries: nothing to do.

/// glibc's largest accepted `M_MMAP_THRESHOLD` on 64-bit (`HEAP_MAX_SIZE / 2`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Freed memory kept at the heap top before glibc returns it to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// Applies the settings; returns whether they were applied.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return false;
        }
        // SAFETY: mallopt only changes allocator parameters; called before other threads start.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
