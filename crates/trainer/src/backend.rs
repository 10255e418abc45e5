//! Backend dispatch: `train.backend` → a concrete Burn backend. The CPU default is burn-flex
//! (fastest on this workload per ../shared/docs/burn-notes.md; see docs/benchmarks.md); `wgpu`
//! and `cuda` exist when the crate is built with those features.

use burn::backend::Autodiff;
use diffrec_data::{SplitMatrices, Workspace};

use crate::config::Backend;
use crate::error::TrainError;
use crate::train::{Progress, RunSpec, Summary, train};

/// The one device of `train.devices` (none: the backend's default). Several devices are the
/// multi-device trainer's work and refused here with a clear message.
fn single_device(devices: &[String]) -> Result<Option<&str>, TrainError> {
    match devices {
        [] => Ok(None),
        [d] => Ok(Some(d.as_str())),
        more => Err(TrainError::Input(format!(
            "train.devices lists {} devices; this trainer uses one device (data-parallel and \
             model-parallel training land with L-DiffRec's multi-device trainer)",
            more.len()
        ))),
    }
}

fn wrong_device(backend: &str, d: &str) -> TrainError {
    TrainError::Input(format!(
        "train.devices: {d:?} is not a {backend} device (use {})",
        match backend {
            "cpu" => "cpu",
            "wgpu" =>
                "wgpu:N for the N-th discrete GPU, wgpu:cpu for a CPU Vulkan driver such as lavapipe",
            _ => "cuda:N",
        }
    ))
}

/// `wgpu:N` → the N-th discrete GPU, `wgpu:cpu` → a CPU adapter (Mesa's lavapipe), none → the
/// best available adapter (`CUBECL_WGPU_DEFAULT_DEVICE` overrides it).
#[cfg(feature = "wgpu")]
fn wgpu_device(d: Option<&str>) -> Result<burn::backend::wgpu::WgpuDevice, TrainError> {
    use burn::backend::wgpu::WgpuDevice;
    match d.map(|d| d.split_once(':').unwrap_or((d, ""))) {
        None => Ok(WgpuDevice::DefaultDevice),
        Some(("wgpu", "cpu")) => Ok(WgpuDevice::Cpu),
        Some(("wgpu", n)) if n.parse::<usize>().is_ok() => {
            Ok(WgpuDevice::DiscreteGpu(n.parse().unwrap_or(0)))
        }
        _ => Err(wrong_device("wgpu", d.unwrap_or_default())),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(d: Option<&str>) -> Result<burn::backend::cuda::CudaDevice, TrainError> {
    match d.map(|d| d.split_once(':').unwrap_or((d, ""))) {
        None => Ok(burn::backend::cuda::CudaDevice { index: 0 }),
        Some(("cuda" | "gpu", n)) if n.parse::<usize>().is_ok() => {
            Ok(burn::backend::cuda::CudaDevice {
                index: n.parse().unwrap_or(0),
            })
        }
        _ => Err(wrong_device("cuda", d.unwrap_or_default())),
    }
}

/// Trains on the configured backend and device.
pub async fn train_on(
    backend: Backend,
    ws: &Workspace,
    data: &SplitMatrices,
    spec: &RunSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary, TrainError> {
    let device = single_device(&spec.train.devices)?;
    match backend {
        Backend::Cpu | Backend::Flex => {
            if let Some(d) = device.filter(|d| !d.starts_with("cpu")) {
                return Err(wrong_device("cpu", d));
            }
            train::<Autodiff<burn_flex::Flex>>(ws, data, spec, Default::default(), progress).await
        }
        Backend::Ndarray => Err(TrainError::BackendMissing("ndarray")),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            let device = wgpu_device(device)?;
            tracing::info!(?device, "train: wgpu device");
            train::<Autodiff<burn::backend::Wgpu>>(ws, data, spec, device, progress).await
        }
        #[cfg(not(feature = "wgpu"))]
        Backend::Wgpu => Err(TrainError::BackendMissing("wgpu")),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let device = cuda_device(device)?;
            train::<Autodiff<burn::backend::Cuda>>(ws, data, spec, device, progress).await
        }
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => Err(TrainError::BackendMissing("cuda")),
    }
}
