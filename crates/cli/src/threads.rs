//! rayon's global pool, built at start with the main thread's stack size.
//!
//! Training steps and evaluations run on this pool's threads (diffrec-trainer's `pool.rs`), and
//! rayon would give them 2 MiB stacks where the main thread, which ran them before, has 8 MiB.
//! Nothing has overflowed with 2 MiB, but a deeper model's autodiff graph should not be the
//! first to find out. The thread count is rayon's default (`RAYON_NUM_THREADS`, else one per
//! logical CPU); stack pages are only committed when touched, so the size costs no memory.

/// The main thread's usual stack on Linux (`ulimit -s`), given to every pool thread.
const STACK_BYTES: usize = 8 << 20;

/// Builds the global pool; returns its thread count, or `None` when something built it first.
pub fn build_global_pool() -> Option<usize> {
    rayon::ThreadPoolBuilder::new()
        .stack_size(STACK_BYTES)
        .build_global()
        .ok()
        .map(|()| rayon::current_num_threads())
}
