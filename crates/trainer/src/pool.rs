//! Where the CPU backends' work starts: on a thread of rayon's global pool.
//!
//! burn-flex runs its parallel operations and matrix products on rayon's global pool. The
//! stages run on the binary's main thread (the async runtime's `block_on`), outside that pool,
//! and from there every parallel operation is handed to the pool while the caller sleeps until
//! it is done: two thread switches per operation, a few hundred per training step. Started on a
//! pool thread, the same operations split their work in place. Measured (docs/benchmarks.md,
//! twelfth session): 5× (DiffRec) to 8–9× (L-DiffRec) fewer context switches, DiffRec's epoch
//! 1–5 % and L-DiffRec's 10–22 % shorter, the same values to the bit (the work is split the
//! same way).
//!
//! Two things a job on the pool must respect:
//! - A pool thread waiting inside one job's parallel operation may run another top-level job
//!   nested (a second training in the same process). The job keeps its thread's noise stream
//!   with [`diffrec_model::noise::own_stream`], so the nested one cannot change its draws.
//! - A job must not block on other threads that themselves need the pool (data-parallel
//!   replicas, [`crate::learner::Learner::waits_on_other_threads`]): with one pool thread they
//!   would never run. Such callers pass `on_pool = false`.

use crate::config::Backend;

/// Whether `backend` computes on rayon's global pool (`cpu`, `flex`); the GPU backends only
/// queue work from the calling thread.
pub fn computes_on_pool(backend: Backend) -> bool {
    matches!(backend, Backend::Cpu | Backend::Flex)
}

/// Runs `f` on a thread of rayon's global pool when `on_pool`, with its own noise stream; on
/// the calling thread otherwise.
pub fn on_pool_thread<R: Send>(on_pool: bool, f: impl FnOnce() -> R + Send) -> R {
    if on_pool {
        // `scope` called from outside the pool runs its body on a pool thread and blocks the
        // caller until it returns.
        rayon::scope(|_| diffrec_model::noise::own_stream(f))
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_backends_compute_on_the_pool_and_gpu_ones_do_not() {
        assert!(computes_on_pool(Backend::Cpu) && computes_on_pool(Backend::Flex));
        assert!(!computes_on_pool(Backend::Wgpu) && !computes_on_pool(Backend::Cuda));
    }

    #[test]
    fn on_pool_thread_runs_on_a_pool_thread_only_when_asked() {
        assert!(
            rayon::current_thread_index().is_none(),
            "tests start outside the pool"
        );
        assert!(on_pool_thread(true, rayon::current_thread_index).is_some());
        assert!(on_pool_thread(false, rayon::current_thread_index).is_none());
    }
}
