//! Backend dispatch: `train.backend` → a concrete Burn backend. The CPU default is burn-flex
//! (fastest on this workload per ../shared/docs/burn-notes.md; see docs/benchmarks.md); `wgpu`
//! and `cuda` exist when the crate is built with those features.

use burn::backend::Autodiff;
use diffrec_data::{SplitMatrices, Workspace};

use crate::config::Backend;
use crate::error::TrainError;
use crate::train::{Progress, RunSpec, Summary, train};

/// The devices of `train.devices`, parsed by `parse` (`None`: the backend's default device).
fn devices_of<D>(
    devices: &[String],
    parse: impl Fn(Option<&str>) -> Result<D, TrainError>,
) -> Result<Vec<D>, TrainError> {
    if devices.is_empty() {
        return Ok(vec![parse(None)?]);
    }
    devices.iter().map(|d| parse(Some(d))).collect()
}

/// `cpu` or `cpu:N`: the CPU (each entry a further logical device, one thread each).
fn cpu_device(d: Option<&str>) -> Result<burn_flex::FlexDevice, TrainError> {
    match d {
        Some(d) if !Backend::Cpu.accepts_device(d) => Err(wrong_device(Backend::Cpu, d)),
        _ => Ok(Default::default()),
    }
}

fn wrong_device(backend: Backend, d: &str) -> TrainError {
    TrainError::Input(format!(
        "train.devices: {d:?} is not a {} device (use {})",
        backend.name(),
        backend.device_hint()
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
        _ => Err(wrong_device(Backend::Wgpu, d.unwrap_or_default())),
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
        _ => Err(wrong_device(Backend::Cuda, d.unwrap_or_default())),
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
    let devices = &spec.train.devices;
    match backend {
        Backend::Cpu | Backend::Flex => {
            let devices = devices_of(devices, cpu_device)?;
            train::<Autodiff<burn_flex::Flex>>(ws, data, spec, devices, progress).await
        }
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            let devices = devices_of(devices, wgpu_device)?;
            tracing::info!(?devices, "train: wgpu devices");
            crate::probe::wgpu(&devices).await?;
            train::<Autodiff<burn::backend::Wgpu>>(ws, data, spec, devices, progress).await
        }
        #[cfg(not(feature = "wgpu"))]
        Backend::Wgpu => Err(TrainError::BackendMissing("wgpu")),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let devices = devices_of(devices, cuda_device)?;
            crate::probe::cuda(&devices)?;
            train::<Autodiff<burn::backend::Cuda>>(ws, data, spec, devices, progress).await
        }
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => Err(TrainError::BackendMissing("cuda")),
    }
}
