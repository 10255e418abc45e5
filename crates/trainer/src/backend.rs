//! Backend dispatch: `train.backend` → a concrete Burn backend. The CPU default is burn-flex
//! (fastest on this workload per ../shared/docs/burn-notes.md; see docs/benchmarks.md); `wgpu`
//! and `cuda` exist when the crate is built with those features.

use burn::backend::Autodiff;
use diffrec_data::{SplitMatrices, Workspace};

use crate::config::Backend;
use crate::error::TrainError;
use crate::train::{Progress, RunSpec, Summary, train};

/// Trains on the configured backend.
pub async fn train_on(
    backend: Backend,
    ws: &Workspace,
    data: &SplitMatrices,
    spec: &RunSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary, TrainError> {
    match backend {
        Backend::Cpu | Backend::Flex => {
            train::<Autodiff<burn_flex::Flex>>(ws, data, spec, Default::default(), progress).await
        }
        Backend::Ndarray => Err(TrainError::BackendMissing("ndarray")),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            train::<Autodiff<burn::backend::Wgpu>>(ws, data, spec, Default::default(), progress)
                .await
        }
        #[cfg(not(feature = "wgpu"))]
        Backend::Wgpu => Err(TrainError::BackendMissing("wgpu")),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            train::<Autodiff<burn::backend::Cuda>>(ws, data, spec, Default::default(), progress)
                .await
        }
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => Err(TrainError::BackendMissing("cuda")),
    }
}
