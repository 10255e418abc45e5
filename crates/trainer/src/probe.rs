//! Checks that the GPU devices of `train.devices` exist before training starts on them.
//!
//! Without these checks a missing driver or a device index past the last GPU surfaces as two
//! panics from burn's device thread (exit code 101) after the data are loaded. Here the same
//! cases are an error naming the device, what this machine has, and what to change. The checks
//! follow what the backends do when they open a device (cubecl 0.10: cudarc's dynamic loading of
//! libcuda and NVRTC; wgpu's adapter list for the platform's graphics API, with cubecl-wgpu's
//! selection rule), so a device refused here is one the backend could not open. A device
//! accepted here can still fail later (the driver may refuse to create it).

use crate::error::TrainError;

/// The CUDA driver and NVRTC load, the driver starts and sees a GPU, and every device index
/// exists.
#[cfg(feature = "cuda")]
pub(crate) fn cuda(devices: &[burn::backend::cuda::CudaDevice]) -> Result<(), TrainError> {
    use cudarc::driver::result as driver;
    use cudarc::driver::sys::CUresult;
    // SAFETY: loading a library runs its initialisers, which is why these are unsafe; they are
    // the libraries (found the same way) that the CUDA backend loads right after this check.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(TrainError::Device(
            "train.backend cuda: the NVIDIA driver library (libcuda.so) was not found on this \
             machine; install the NVIDIA driver (or add its folder to LD_LIBRARY_PATH), or train \
             with train.backend cpu or wgpu"
                .into(),
        ));
    }
    // SAFETY: as above, for NVRTC.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(TrainError::Device(
            "train.backend cuda: CUDA's runtime compiler NVRTC (libnvrtc.so) was not found; \
             diffrec compiles its GPU kernels with it when training starts: install it (the \
             CUDA toolkit, or the nvidia-cuda-nvrtc wheel) and add its folder to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let no_gpu = || {
        TrainError::Device(
            "train.backend cuda: the NVIDIA driver sees no GPU (check `nvidia-smi`, and that \
             CUDA_VISIBLE_DEVICES does not hide them)"
                .into(),
        )
    };
    driver::init().map_err(|e| match e.0 {
        CUresult::CUDA_ERROR_NO_DEVICE => no_gpu(),
        _ => TrainError::Device(format!(
            "train.backend cuda: the NVIDIA driver did not start ({e}); `nvidia-smi` shows \
             whether a GPU is visible to this process"
        )),
    })?;
    let count = driver::device::get_count().map_err(|e| {
        TrainError::Device(format!(
            "train.backend cuda: the NVIDIA driver cannot count its devices ({e})"
        ))
    })?;
    match usize::try_from(count).unwrap_or(0) {
        0 => Err(no_gpu()),
        count => check_indices(
            devices.iter().map(|d| d.index),
            count,
            "cuda",
            "CUDA device",
        ),
    }
}

/// The adapter a wgpu device asks for: the n-th of a type, or any (the default device).
#[cfg(feature = "wgpu")]
#[derive(Clone, Copy, Debug, PartialEq)]
enum Wanted {
    Nth(wgpu::DeviceType, usize),
    Any,
}

/// Whether cubecl-wgpu 0.10 finds the adapter (`select_from_adapter_list`): the n-th adapter of
/// the wanted type, else the n-th adapter of type "other"; the default device takes any.
#[cfg(feature = "wgpu")]
#[derive(Debug, PartialEq)]
enum Selection {
    Found,
    /// Adapters of the type (or "other") exist, fewer than the index asks for.
    PastLast(usize),
    /// None of the type, and no "other" adapter.
    Missing,
}

#[cfg(feature = "wgpu")]
fn select(wanted: Wanted, types: &[wgpu::DeviceType]) -> Selection {
    let count = |t: wgpu::DeviceType| types.iter().filter(|&&x| x == t).count();
    match wanted {
        Wanted::Any if types.is_empty() => Selection::Missing,
        Wanted::Any => Selection::Found,
        Wanted::Nth(t, n) => match count(t).max(count(wgpu::DeviceType::Other)) {
            have if have > n => Selection::Found,
            0 => Selection::Missing,
            have => Selection::PastLast(have),
        },
    }
}

/// What `device` asks for and how to name it, with the default device resolved as cubecl-wgpu
/// resolves it (`CUBECL_WGPU_DEFAULT_DEVICE`); `None` for an existing device handle.
#[cfg(feature = "wgpu")]
fn wanted_of(device: &burn::backend::wgpu::WgpuDevice) -> Option<(Wanted, String)> {
    use burn::backend::wgpu::WgpuDevice;
    use wgpu::DeviceType as T;
    Some(match device {
        WgpuDevice::DiscreteGpu(n) => (Wanted::Nth(T::DiscreteGpu, *n), format!("wgpu:{n}")),
        WgpuDevice::IntegratedGpu(n) => (
            Wanted::Nth(T::IntegratedGpu, *n),
            format!("IntegratedGpu({n})"),
        ),
        WgpuDevice::VirtualGpu(n) => (Wanted::Nth(T::VirtualGpu, *n), format!("VirtualGpu({n})")),
        WgpuDevice::Cpu => (Wanted::Nth(T::Cpu, 0), "wgpu:cpu".to_owned()),
        #[allow(deprecated)]
        WgpuDevice::DefaultDevice | WgpuDevice::BestAvailable => {
            let var = std::env::var("CUBECL_WGPU_DEFAULT_DEVICE").ok();
            match var.as_deref().and_then(parse_override) {
                Some(w) => (
                    w,
                    format!("CUBECL_WGPU_DEFAULT_DEVICE={}", var.unwrap_or_default()),
                ),
                None => (Wanted::Any, "the default wgpu device".to_owned()),
            }
        }
        WgpuDevice::Existing(_) => return None,
    })
}

/// cubecl-wgpu's reading of `CUBECL_WGPU_DEFAULT_DEVICE` (`get_device_override`):
/// `DiscreteGpu(N)`, `IntegratedGpu(N)`, `VirtualGpu(N)` or `Cpu`; anything else is ignored.
#[cfg(feature = "wgpu")]
fn parse_override(v: &str) -> Option<Wanted> {
    use wgpu::DeviceType as T;
    let nth = |prefix: &str| {
        v.strip_prefix(prefix)?
            .strip_suffix(')')?
            .parse::<usize>()
            .ok()
    };
    match v {
        "Cpu" => Some(Wanted::Nth(T::Cpu, 0)),
        _ => nth("DiscreteGpu(")
            .map(|n| Wanted::Nth(T::DiscreteGpu, n))
            .or_else(|| nth("IntegratedGpu(").map(|n| Wanted::Nth(T::IntegratedGpu, n)))
            .or_else(|| nth("VirtualGpu(").map(|n| Wanted::Nth(T::VirtualGpu, n))),
    }
}

/// Every wgpu device is an adapter the platform graphics API lists, as cubecl-wgpu selects it.
#[cfg(feature = "wgpu")]
pub(crate) async fn wgpu(devices: &[burn::backend::wgpu::WgpuDevice]) -> Result<(), TrainError> {
    use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};

    let backend = AutoGraphicsApi::backend();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backend.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let infos: Vec<wgpu::AdapterInfo> = instance
        .enumerate_adapters(backend.into())
        .await
        .iter()
        .map(|a| a.get_info())
        .collect();
    let types: Vec<wgpu::DeviceType> = infos.iter().map(|i| i.device_type).collect();
    for device in devices {
        let Some((wanted, name)) = wanted_of(device) else {
            continue;
        };
        let kind = match wanted {
            Wanted::Nth(wgpu::DeviceType::DiscreteGpu, _) => "discrete GPU",
            Wanted::Nth(wgpu::DeviceType::Cpu, _) => "CPU adapter",
            Wanted::Nth(..) => "adapter of that type",
            Wanted::Any => "adapter",
        };
        match select(wanted, &types) {
            Selection::Found => {}
            Selection::PastLast(have) => {
                // The adapters exist, the index is past them: a configuration mistake, like a
                // CUDA index past the last GPU.
                return Err(TrainError::Input(format!(
                    "train.devices: {name} does not exist: {backend:?} lists {have} {kind}(s) \
                     on this machine, numbered from 0 (adapters: {})",
                    listed(&infos)
                )));
            }
            Selection::Missing => {
                let hint = if matches!(wanted, Wanted::Nth(wgpu::DeviceType::Cpu, _)) {
                    "install a CPU Vulkan driver (Mesa's lavapipe: mesa-vulkan-drivers)"
                } else if types.contains(&wgpu::DeviceType::Cpu) {
                    "use wgpu:cpu for the CPU driver listed, or install the GPU's driver"
                } else {
                    "install the GPU's driver, or train with train.backend cpu"
                };
                return Err(TrainError::Device(format!(
                    "train.devices: {name} needs a {kind}, and {backend:?} lists none on this \
                     machine (adapters: {}); {hint}",
                    listed(&infos)
                )));
            }
        }
    }
    Ok(())
}

/// The adapters as "name (type), …", or "none".
#[cfg(feature = "wgpu")]
fn listed(infos: &[wgpu::AdapterInfo]) -> String {
    if infos.is_empty() {
        return "none".to_owned();
    }
    infos
        .iter()
        .map(|i| format!("{} ({:?})", i.name, i.device_type))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every index is below `count`, or an error naming the first that is not.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn check_indices(
    indices: impl IntoIterator<Item = usize>,
    count: usize,
    prefix: &str,
    what: &str,
) -> Result<(), TrainError> {
    match indices.into_iter().find(|&i| i >= count) {
        None => Ok(()),
        Some(i) => Err(TrainError::Input(format!(
            "train.devices: {prefix}:{i} does not exist: this machine has {count} {what}(s){}",
            match count {
                0 => String::new(),
                1 => format!(", {prefix}:0"),
                c => format!(", {prefix}:0 to {prefix}:{}", c - 1),
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_past_the_last_device_is_named_with_what_exists() {
        assert!(check_indices([0, 1], 2, "cuda", "CUDA device").is_ok());
        let e = check_indices([0, 2, 3], 2, "cuda", "CUDA device").unwrap_err();
        assert!(e.is_input());
        assert_eq!(
            e.to_string(),
            "train.devices: cuda:2 does not exist: this machine has 2 CUDA device(s), cuda:0 to cuda:1"
        );
        let e = check_indices([1], 1, "cuda", "CUDA device").unwrap_err();
        assert!(
            e.to_string().ends_with("has 1 CUDA device(s), cuda:0"),
            "{e}"
        );
        let e = check_indices([0], 0, "cuda", "CUDA device").unwrap_err();
        assert!(e.to_string().ends_with("has 0 CUDA device(s)"), "{e}");
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn wgpu_devices_are_found_as_cubecl_selects_them() {
        use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu, Other};
        let h200 = [DiscreteGpu];
        assert_eq!(select(Wanted::Nth(DiscreteGpu, 0), &h200), Selection::Found);
        assert_eq!(
            select(Wanted::Nth(DiscreteGpu, 1), &h200),
            Selection::PastLast(1)
        );
        assert_eq!(select(Wanted::Nth(Cpu, 0), &h200), Selection::Missing);
        // lavapipe only.
        assert_eq!(
            select(Wanted::Nth(DiscreteGpu, 0), &[Cpu]),
            Selection::Missing
        );
        assert_eq!(select(Wanted::Nth(Cpu, 0), &[Cpu]), Selection::Found);
        // Adapters of type "other" stand in for any type, by index.
        let others = [DiscreteGpu, Other, Other, Other];
        assert_eq!(
            select(Wanted::Nth(DiscreteGpu, 2), &others),
            Selection::Found
        );
        assert_eq!(
            select(Wanted::Nth(DiscreteGpu, 3), &others),
            Selection::PastLast(3)
        );
        assert_eq!(select(Wanted::Nth(Cpu, 0), &[Other]), Selection::Found);
        // Another type never counts.
        assert_eq!(
            select(Wanted::Nth(DiscreteGpu, 0), &[IntegratedGpu, Cpu]),
            Selection::Missing
        );
        // The default device takes any adapter.
        assert_eq!(select(Wanted::Any, &[Cpu]), Selection::Found);
        assert_eq!(select(Wanted::Any, &[]), Selection::Missing);
        // The default device's override, read as cubecl-wgpu reads it.
        assert_eq!(
            parse_override("DiscreteGpu(3)"),
            Some(Wanted::Nth(DiscreteGpu, 3))
        );
        assert_eq!(
            parse_override("IntegratedGpu(0)"),
            Some(Wanted::Nth(IntegratedGpu, 0))
        );
        assert_eq!(parse_override("Cpu"), Some(Wanted::Nth(Cpu, 0)));
        assert_eq!(parse_override("DiscreteGpu(x)"), None);
        assert_eq!(parse_override("gpu"), None);
    }
}
