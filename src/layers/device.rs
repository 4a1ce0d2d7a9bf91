//! Device selection (`--device cpu|cuda[:N]`). The device is always chosen
//! explicitly; CUDA is checked before use without panicking: the driver
//! library must load, then one tiny op must run (under `catch_unwind`).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Where a job's tensors live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The CPU (Burn's flex backend).
    Cpu,
    /// CUDA device `N` (needs the `cuda` feature).
    Cuda(usize),
}

/// Why a device cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// Unparseable `--device` value.
    #[error("unknown device `{0}`; expected `cpu`, `cuda` or `cuda:N`")]
    Unknown(String),
    /// This binary was built without CUDA.
    #[error(
        "this mad-search was built without CUDA; rebuild with `--features cuda` or use `--device cpu`"
    )]
    NotCompiled,
    /// The CUDA driver library is not on this machine.
    #[error(
        "CUDA driver library (libcuda) not found; install the NVIDIA driver or use `--device cpu`"
    )]
    NoDriver,
    /// The device did not run a test op.
    #[error("CUDA device {index} failed a test operation: {reason}")]
    Failed {
        /// The device index.
        index: usize,
        /// What went wrong.
        reason: String,
    },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<DeviceSpec, DeviceError> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// Checks that the device can run tensors.
    ///
    /// # Errors
    /// [`DeviceError`] saying why not.
    pub fn check(self) -> Result<(), DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(()),
            DeviceSpec::Cuda(index) => check_cuda(index),
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn check_cuda(_index: usize) -> Result<(), DeviceError> {
    Err(DeviceError::NotCompiled)
}

#[cfg(feature = "cuda")]
fn check_cuda(index: usize) -> Result<(), DeviceError> {
    use burn::prelude::*;
    // SAFETY: only tries to dlopen the driver library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(DeviceError::NoDriver);
    }
    let result = std::panic::catch_unwind(|| {
        type C = burn::backend::Cuda;
        let device = burn::backend::cuda::CudaDevice::new(index);
        Tensor::<C, 1>::ones([4], &device).sum().into_scalar()
    });
    match result {
        Ok(v) if (v - 4.0).abs() < 1e-6 => Ok(()),
        Ok(v) => Err(DeviceError::Failed {
            index,
            reason: format!("1+1+1+1 gave {v}"),
        }),
        Err(panic) => Err(DeviceError::Failed {
            index,
            reason: panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into()),
        }),
    }
}

/// Runs `$body` with `$b` bound to the Burn backend of `$device` and
/// `$dev` to its device handle; without the `cuda` feature a CUDA device
/// gives a [`crate::train::TrainError::Data`].
macro_rules! on_device {
    ($device:expr, $b:ident, $dev:ident => $body:expr) => {
        match $device {
            $crate::layers::device::DeviceSpec::Cpu => {
                type $b = $crate::layers::CpuAutodiff;
                let $dev = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::layers::device::DeviceSpec::Cuda(i) => {
                type $b = burn::backend::Autodiff<burn::backend::Cuda>;
                let $dev = burn::backend::cuda::CudaDevice::new(i);
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::layers::device::DeviceSpec::Cuda(_) => Err($crate::train::TrainError::Data(
                "this mad-search was built without CUDA".into(),
            )),
        }
    };
}
pub(crate) use on_device;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
        assert_eq!(DeviceSpec::Cpu.check(), Ok(()));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_so() {
        assert_eq!(DeviceSpec::Cuda(0).check(), Err(DeviceError::NotCompiled));
    }
}
