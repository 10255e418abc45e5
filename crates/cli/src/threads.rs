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

#[cfg(test)]
mod tests {
    /// 6 MiB of stack frames on a pool thread: more than rayon's 2 MiB default would hold (a
    /// stack overflow aborts the test binary), less than the 8 MiB given. The only test in
    /// this binary that touches rayon, so the global pool is this one.
    #[test]
    fn pool_threads_have_the_main_threads_stack() {
        fn deep(n: usize) -> u64 {
            let frame = std::hint::black_box([n as u8; 64 << 10]);
            if n == 0 {
                return frame[0] as u64;
            }
            deep(n - 1) + frame[n % frame.len()] as u64
        }
        assert!(
            super::build_global_pool().is_some(),
            "something built the pool first"
        );
        let (sum, on_pool) = rayon::scope(|_| (deep(96), rayon::current_thread_index()));
        assert!(on_pool.is_some(), "the recursion ran on a pool thread");
        assert_eq!(sum, (0..=96u64).map(|n| n % 256).sum::<u64>());
    }
}
