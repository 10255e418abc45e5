//! Where the CPU backends' work starts: on a thread of rayon's global pool.
//!
//! burn-flex runs its parallel operations and matrix products on rayon's global pool. The
//! stages run on an async runtime thread, outside that pool, and from there every parallel
//! operation is handed to the pool while the caller sleeps until it is done: two thread
//! switches per operation, a few hundred per training step. Started on a pool thread, the same
//! operations split their work in place. Measured (docs/benchmarks.md, twelfth session): five
//! to eight times fewer context switches, DiffRec's epoch about 3 % and L-DiffRec's about 15 %
//! shorter, the same values to the bit (the work is split the same way).

use crate::config::Backend;

/// Runs `f` on a thread of rayon's global pool when `backend` computes there (`cpu`, `flex`);
/// on the calling thread otherwise (the GPU backends queue their work from the caller).
pub fn on_cpu_pool<R: Send>(backend: Backend, f: impl FnOnce() -> R + Send) -> R {
    match backend {
        // `scope` called from outside the pool runs its body on a pool thread and blocks the
        // caller until it returns.
        Backend::Cpu | Backend::Flex => rayon::scope(|_| f()),
        Backend::Wgpu | Backend::Cuda => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_backends_run_on_a_pool_thread_and_gpu_ones_on_the_caller() {
        assert!(
            rayon::current_thread_index().is_none(),
            "tests start outside the pool"
        );
        assert!(on_cpu_pool(Backend::Cpu, || rayon::current_thread_index()).is_some());
        assert!(on_cpu_pool(Backend::Flex, || rayon::current_thread_index()).is_some());
        assert!(on_cpu_pool(Backend::Wgpu, || rayon::current_thread_index()).is_none());
        assert!(on_cpu_pool(Backend::Cuda, || rayon::current_thread_index()).is_none());
    }
}
