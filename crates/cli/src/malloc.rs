//! glibc's allocator told to keep freed memory for reuse.
//!
//! A training step allocates and frees the same large buffers every batch (matrix products'
//! outputs, gradients, the noised input: on ML-1M several of 1–7 MB, on a 200,000-item catalogue
//! several of 300 MB). By default glibc serves blocks above its mmap threshold with fresh
//! `mmap`s and returns them on free, and trims the heap top, so each step page-faults its
//! buffers in again and the kernel zeroes every page: on ML-1M about 2,000 faults a step,
//! several percent of an epoch's CPU time (docs/benchmarks.md, "Allocator"); on the 200,000-item
//! catalogue the kernel's page clearing was 31 % of an L-DiffRec run's samples.
//!
//! So no block is mapped on its own (`M_MMAP_MAX` 0): every block comes from the heap and a
//! freed one is reused by the next step, and the heap top is returned to the system only beyond
//! 1 GiB of free memory (`M_TRIM_THRESHOLD`). (glibc still maps memory when the heap cannot
//! grow.) The earlier setting, the mmap threshold at its 32 MiB maximum, kept ML-1M's buffers
//! but still mapped the large catalogue's one by one. Measured on the 200,000-item catalogue
//! (docs/benchmarks.md, "Large synthetic catalogue"): L-DiffRec 5.1 → 2.9 s a batch and
//! DiffRec 5.2 → 3.7–4.6 s, for a peak 14–27 % higher (L-DiffRec 6.7 → 7.6–8.0 GiB, DiffRec
//! 10.9 → 13.4–13.8 GiB) because freed blocks of one size do not always fit the next request;
//! 10 M-row ingest 9.4 → 7.0 s (peak 1.39 → 1.46 GiB); ML-1M epochs, its peak and the
//! cluster stage level.
//!
//! One arena for all threads (`M_ARENA_MAX` 1). The training step runs on a rayon pool thread
//! (diffrec-trainer's `pool.rs`) while the stages start on the main thread, and glibc gives
//! each thread that allocates its own arena, each keeping its freed memory by the setting
//! above; and a thread's own arena (a mapped 64 MiB heap) would map any larger block anyway,
//! so the rule above holds only with the one arena. With one arena
//! the DiffRec training process peaked at 0.33–0.36 GiB instead of 0.43–0.48 GiB, and
//! L-DiffRec's at 0.15 GiB instead of 0.23 GiB, about their peaks before steps moved to the
//! pool, at the same training speed (docs/benchmarks.md, twelfth session): a step's allocations
//! are few and large, so the shared lock is not contended. Ingest (Polars' threads) and the
//! cluster stage run at the same speed too, and ingest's peak is 15–28 % lower than with an
//! arena per thread (docs/benchmarks.md, "Ingest, 10 M rows", and the LightGCN section).
//!
//! Set once at start, before any thread exists. Skipped when `GLIBC_TUNABLES` is set: the
//! operator's allocator settings win. Where memory binds more than time,
//! `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.arena_max=1`
//! gives the leaner earlier behaviour (README, "Threads and memory"). Other platforms and C libraries:
//! nothing to do.

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
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
