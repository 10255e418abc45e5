//! Checks that the GPU devices of `train.devices` exist before training starts on them.
//!
//! Without these checks a missing driver or a device index past the last GPU surfaces as two
//! panics from burn's device thread (exit code 101) after the data are loaded. Here the same
//! cases are an error naming the device, what this machine has, and what to change. The checks
//! follow what the backends do when they open a device (cubecl 0.10: cudarc's dynamic loading of
//! libcuda and NVRTC; wgpu's adapter list for the platform's graphics API), so a device they
//! accept here is one the backend can open.

use crate::error::TrainError;

/// The CUDA driver and NVRTC load, the driver starts, and every device index exists.
#[cfg(feature = "cuda")]
pub(crate) fn cuda(devices: &[burn::backend::cuda::CudaDevice]) -> Result<(), TrainError> {
    use cudarc::driver::result as driver;
    // SAFETY: both only try to dlopen the library (and close it again); nothing is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(TrainError::Device(
            "train.backend cuda: the NVIDIA driver library (libcuda.so) was not found on this \
             machine; install the NVIDIA driver (or add its folder to LD_LIBRARY_PATH), or train \
             with train.backend cpu or wgpu"
                .into(),
        ));
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(TrainError::Device(
            "train.backend cuda: CUDA's runtime compiler NVRTC (libnvrtc.so) was not found; \
             diffrec compiles its GPU kernels with it when training starts: install it (the \
             CUDA toolkit, or the nvidia-cuda-nvrtc wheel) and add its folder to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    driver::init().map_err(|e| {
        TrainError::Device(format!(
            "train.backend cuda: the NVIDIA driver did not start ({e}); `nvidia-smi` shows \
             whether a GPU is visible to this process"
        ))
    })?;
    let count = driver::device::get_count().map_err(|e| {
        TrainError::Device(format!(
            "train.backend cuda: the NVIDIA driver cannot count its devices ({e})"
        ))
    })?;
    let count = usize::try_from(count).unwrap_or(0);
    check_indices(
        devices.iter().map(|d| d.index),
        count,
        "cuda",
        "CUDA device",
    )
}

/// The adapter each wgpu device asks for is in the platform graphics API's adapter list, as
/// cubecl-wgpu selects it: the N-th adapter of the device's type, else the N-th adapter of
/// type "other"; the default device takes any adapter.
#[cfg(feature = "wgpu")]
pub(crate) async fn wgpu(devices: &[burn::backend::wgpu::WgpuDevice]) -> Result<(), TrainError> {
    use burn::backend::wgpu::WgpuDevice;
    use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};
    use wgpu::DeviceType;

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
    let listed = || {
        if infos.is_empty() {
            "none".to_owned()
        } else {
            infos
                .iter()
                .map(|i| format!("{} ({:?})", i.name, i.device_type))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let of_type = |t: DeviceType| infos.iter().filter(|i| i.device_type == t).count();
    for device in devices {
        let (wanted, n, name) = match device {
            WgpuDevice::DiscreteGpu(n) => (DeviceType::DiscreteGpu, *n, format!("wgpu:{n}")),
            WgpuDevice::Cpu => (DeviceType::Cpu, 0, "wgpu:cpu".to_owned()),
            _ if infos.is_empty() => {
                return Err(TrainError::Device(format!(
                    "train.backend wgpu: {backend:?} lists no adapter on this machine; install \
                     the GPU's {backend:?} driver (or Mesa's lavapipe for a CPU driver), or \
                     train with train.backend cpu"
                )));
            }
            _ => continue,
        };
        if of_type(wanted) > n || of_type(DeviceType::Other) > n {
            continue;
        }
        let have = of_type(wanted);
        if let (WgpuDevice::DiscreteGpu(_), 1..) = (device, have) {
            // The GPU exists, the index is past it: a configuration mistake, like CUDA's.
            return check_indices([n], have, "wgpu", "discrete GPU");
        }
        let hint = match device {
            WgpuDevice::Cpu => "install a CPU Vulkan driver (Mesa's lavapipe: mesa-vulkan-drivers)",
            _ if of_type(DeviceType::Cpu) > 0 => {
                "use wgpu:cpu for the CPU driver listed, or install the GPU's driver"
            }
            _ => "install the GPU's driver, or train with train.backend cpu",
        };
        let (need, kind) = match device {
            WgpuDevice::Cpu => ("a CPU adapter".to_owned(), "CPU adapter"),
            _ => (
                format!("discrete GPU {n} (counting from 0)"),
                "discrete GPU",
            ),
        };
        return Err(TrainError::Device(format!(
            "train.devices: {name} needs {need}, and {backend:?} lists {have} {kind}(s) on this \
             machine (adapters: {}); {hint}",
            listed()
        )));
    }
    Ok(())
}

/// Every index is below `count`, or an error naming the first that is not.
#[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
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
}
