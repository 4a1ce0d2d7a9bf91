//! Device selection (`--device cpu|cuda[:N]|wgpu`, and for the daemon a list
//! of worker slots such as `cuda:0x4,cuda:1x4`). The device is always
//! chosen explicitly; a GPU is checked before use without panicking: the
//! driver library must load (CUDA), then one tiny op must run (under
//! `catch_unwind`).
//!
//! CUDA and wgpu run through CubeCL, with burn-fusion by default (Burn fuses
//! chains of element-wise ops into kernels it compiles at run time);
//! `MAD_SEARCH_FUSION=0` runs every op as its own kernel. Measured on
//! lavapipe (`eval --arch "mh-attention swiglu" --stage screen --preset tiny
//! --device wgpu`, 2 cores, with `mad-kernels`' attention): 103.6 s fused,
//! 58.3 s unfused, the same scores; most of the fused time is compiling
//! fused kernels in the first two tasks (README: Backends).

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
    /// wgpu's default adapter: Vulkan, Metal or DX12; lavapipe on a machine
    /// with Mesa's software Vulkan and no GPU (needs the `wgpu` feature).
    Wgpu,
}

/// Why a device cannot be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// Unparseable `--device` value.
    #[error(
        "unknown device `{0}`; expected `cpu`, `cuda`, `cuda:N` or `wgpu`, and for the daemon a \
         comma-separated list of them, each with an optional `xK` for K worker slots \
         (`cuda:0x4,cuda:1x4`)"
    )]
    Unknown(String),
    /// More worker slots than [`MAX_SLOTS`].
    #[error("--device `{0}` asks for more than {MAX_SLOTS} worker slots in all")]
    TooManySlots(String),
    /// This binary was built without the backend.
    #[error(
        "this mad-search was built without {0}; rebuild with `--features {1}` or use `--device cpu`"
    )]
    NotCompiled(&'static str, &'static str),
    /// The CUDA driver library is not on this machine.
    #[error(
        "CUDA driver library (libcuda) not found; install the NVIDIA driver or use `--device cpu`"
    )]
    NoDriver,
    /// The device did not run a test op.
    #[error("device {device} failed a test operation: {reason}")]
    Failed {
        /// The device.
        device: String,
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
            "wgpu" => Ok(DeviceSpec::Wgpu),
            _ => s
                .strip_prefix("cuda:")
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
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
            DeviceSpec::Wgpu => f.write_str("wgpu"),
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
            DeviceSpec::Wgpu => check_wgpu(),
        }
    }

    /// Whether this is a GPU backend (CubeCL): per-step host work costs a
    /// device round trip there.
    pub fn is_gpu(self) -> bool {
        !matches!(self, DeviceSpec::Cpu)
    }
}

/// Most worker slots a `--device` list may ask for, all entries together.
pub const MAX_SLOTS: usize = 256;

/// The daemon's worker slots, from `--device`: entries of a device and a
/// count (`cuda:0x4,cuda:1x4`), dealt round-robin over the entries (cuda:0,
/// cuda:1, cuda:0, cuda:1, …), so that the first free workers, which the
/// scheduler fills first, spread over the devices; worker `w` takes slot
/// `w mod len`. Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSlots {
    /// As written: device and count.
    entries: Vec<(DeviceSpec, usize)>,
    /// Dealt round-robin.
    slots: Vec<DeviceSpec>,
    /// Whether any entry said its count (`xK`) or there are several: then
    /// the slots, not the cores, set the default number of workers.
    counted: bool,
}

impl FromStr for DeviceSlots {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<DeviceSlots, DeviceError> {
        let mut entries = Vec::new();
        let mut counted = false;
        let mut total = 0usize;
        for item in s.split(',') {
            let item = item.trim();
            let (dev, count) = match item.rsplit_once('x') {
                Some((dev, k)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => {
                    counted = true;
                    let k = k
                        .parse::<usize>()
                        .ok()
                        .filter(|&k| k >= 1)
                        .ok_or_else(|| DeviceError::Unknown(item.to_string()))?;
                    (dev, k)
                }
                _ => (item, 1),
            };
            let dev: DeviceSpec = dev
                .parse()
                .map_err(|_| DeviceError::Unknown(item.to_string()))?;
            total = total.saturating_add(count);
            if total > MAX_SLOTS {
                return Err(DeviceError::TooManySlots(s.to_string()));
            }
            entries.push((dev, count));
        }
        let mut slots = Vec::with_capacity(total);
        for round in 0..entries.iter().map(|e| e.1).max().unwrap_or(0) {
            slots.extend(entries.iter().filter(|e| e.1 > round).map(|e| e.0));
        }
        counted |= entries.len() > 1;
        Ok(DeviceSlots {
            entries,
            slots,
            counted,
        })
    }
}

impl fmt::Display for DeviceSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (dev, count)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if *count > 1 || (self.counted && self.entries.len() == 1) {
                write!(f, "{dev}x{count}")?;
            } else {
                write!(f, "{dev}")?;
            }
        }
        Ok(())
    }
}

impl DeviceSlots {
    /// The device of worker `w`.
    pub fn for_worker(&self, w: usize) -> DeviceSpec {
        self.slots[w % self.slots.len()]
    }

    /// The distinct devices, in first-seen order.
    pub fn distinct(&self) -> Vec<DeviceSpec> {
        let mut seen = Vec::new();
        for (d, _) in &self.entries {
            if !seen.contains(d) {
                seen.push(*d);
            }
        }
        seen
    }

    /// Workers when `--workers` is not given: one per slot where slots were
    /// counted or listed, else one per core.
    pub fn default_workers(&self, cores: usize) -> usize {
        if self.counted {
            self.slots.len()
        } else {
            cores.max(1)
        }
    }

    /// Checks every distinct device.
    ///
    /// # Errors
    /// The first device's [`DeviceError`].
    pub fn check(&self) -> Result<(), DeviceError> {
        self.distinct().into_iter().try_for_each(DeviceSpec::check)
    }
}

/// The panic message of a failed test op.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn panic_reason(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// Runs `1 + 1 + 1 + 1` on a device of backend `B` under `catch_unwind`.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn test_op<B: burn::prelude::Backend>(
    device: B::Device,
    name: DeviceSpec,
) -> Result<(), DeviceError> {
    use burn::prelude::*;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        Tensor::<B, 1>::ones([4], &device)
            .sum()
            .into_scalar()
            .elem::<f32>()
    }));
    match result {
        Ok(v) if (v - 4.0).abs() < 1e-6 => Ok(()),
        Ok(v) => Err(DeviceError::Failed {
            device: name.to_string(),
            reason: format!("1+1+1+1 gave {v}"),
        }),
        Err(panic) => Err(DeviceError::Failed {
            device: name.to_string(),
            reason: panic_reason(panic),
        }),
    }
}

#[cfg(not(feature = "cuda"))]
fn check_cuda(_index: usize) -> Result<(), DeviceError> {
    Err(DeviceError::NotCompiled("CUDA", "cuda"))
}

#[cfg(feature = "cuda")]
fn check_cuda(index: usize) -> Result<(), DeviceError> {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(DeviceError::NoDriver);
    }
    configure_cubecl();
    test_op::<CudaPlain>(
        burn::backend::cuda::CudaDevice::new(index),
        DeviceSpec::Cuda(index),
    )
}

#[cfg(not(feature = "wgpu"))]
fn check_wgpu() -> Result<(), DeviceError> {
    Err(DeviceError::NotCompiled("wgpu", "wgpu"))
}

#[cfg(feature = "wgpu")]
fn check_wgpu() -> Result<(), DeviceError> {
    configure_cubecl();
    test_op::<WgpuPlain>(Default::default(), DeviceSpec::Wgpu)
}

/// CUDA without burn-fusion (`MAD_SEARCH_FUSION=0`).
#[cfg(feature = "cuda")]
pub type CudaPlain = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// wgpu without burn-fusion (`MAD_SEARCH_FUSION=0`).
#[cfg(feature = "wgpu")]
pub type WgpuPlain =
    burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// Sets CubeCL's autotune level to `full` (unless `CUBECL_AUTOTUNE_LEVEL`
/// names a level: a `cubecl.toml` level is overridden) before the first
/// kernel runs; idempotent. Called before a device's first use (the device
/// checks, `on_device!`); the wgpu tests set the variable instead.
///
/// At the default level autotune keys round each matmul and reduction
/// shape up to a bucket (`m, n, k` to powers of two), benchmarks one shape
/// per bucket and runs the winner on every shape in it. A winner that is
/// valid for the benchmarked shape and not for another of its bucket then
/// panics on the device's runner thread, where burn-fusion swallows it and
/// its tensor handles go stale (burn issue 5352; seen here as a `CallError`
/// on the next read, on lavapipe, on one machine and not another). At
/// `full` every shape is benchmarked on itself: a MAD model has a few dozen
/// shapes, so the extra tuning is seconds, once per shape and process.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn configure_cubecl() {
    use cubecl::config::autotune::AutotuneLevel;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // A level CubeCL reads from the environment is the user's choice;
        // one it would ignore (`FULL`) is not.
        let chosen = std::env::var("CUBECL_AUTOTUNE_LEVEL").is_ok_and(|v| {
            matches!(
                v.as_str(),
                "minimal" | "0" | "balanced" | "1" | "extensive" | "2" | "full" | "3"
            )
        });
        if chosen {
            return;
        }
        // Read (and so initialise) first: `get` takes the same lock.
        let mut config = (*CubeClRuntimeConfig::get()).clone();
        config.autotune.level = AutotuneLevel::Full;
        *CubeClRuntimeConfig::storage().lock() = Some(std::sync::Arc::new(config));
    });
}

/// Whether the GPU backends run through burn-fusion (unless
/// `MAD_SEARCH_FUSION=0`).
pub fn fusion() -> bool {
    std::env::var("MAD_SEARCH_FUSION").map_or(true, |v| v != "0")
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
            $crate::layers::device::DeviceSpec::Cuda(i) if $crate::layers::device::fusion() => {
                $crate::layers::device::configure_cubecl();
                type $b = burn::backend::Autodiff<burn::backend::Cuda>;
                let $dev = burn::backend::cuda::CudaDevice::new(i);
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::layers::device::DeviceSpec::Cuda(i) => {
                $crate::layers::device::configure_cubecl();
                type $b = burn::backend::Autodiff<$crate::layers::device::CudaPlain>;
                let $dev = burn::backend::cuda::CudaDevice::new(i);
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::layers::device::DeviceSpec::Cuda(_) => Err($crate::train::TrainError::Data(
                "this mad-search was built without CUDA".into(),
            )),
            #[cfg(feature = "wgpu")]
            $crate::layers::device::DeviceSpec::Wgpu if $crate::layers::device::fusion() => {
                $crate::layers::device::configure_cubecl();
                type $b = burn::backend::Autodiff<burn::backend::Wgpu>;
                let $dev = Default::default();
                $body
            }
            #[cfg(feature = "wgpu")]
            $crate::layers::device::DeviceSpec::Wgpu => {
                $crate::layers::device::configure_cubecl();
                type $b = burn::backend::Autodiff<$crate::layers::device::WgpuPlain>;
                let $dev = Default::default();
                $body
            }
            #[cfg(not(feature = "wgpu"))]
            $crate::layers::device::DeviceSpec::Wgpu => Err($crate::train::TrainError::Data(
                "this mad-search was built without wgpu".into(),
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
        assert_eq!("wgpu".parse(), Ok(DeviceSpec::Wgpu));
        for bad in ["gpu", "cuda:x", "cuda:", "cuda:+1", "cuda:0x2", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
        assert_eq!(DeviceSpec::Cpu.check(), Ok(()));
    }

    #[test]
    fn slots_repeat_devices_and_round_trip() {
        let s: DeviceSlots = "cuda:0x2,cuda:1x2".parse().unwrap();
        let w: Vec<_> = (0..5).map(|w| s.for_worker(w)).collect();
        use DeviceSpec::Cuda;
        // Dealt round-robin: any two workers in a row are on both GPUs.
        assert_eq!(w, [Cuda(0), Cuda(1), Cuda(0), Cuda(1), Cuda(0)]);
        let uneven: DeviceSlots = "cuda:0x3,cuda:1".parse().unwrap();
        let w: Vec<_> = (0..4).map(|w| uneven.for_worker(w)).collect();
        assert_eq!(w, [Cuda(0), Cuda(1), Cuda(0), Cuda(0)]);
        assert_eq!(s.distinct(), [Cuda(0), Cuda(1)]);
        assert_eq!(s.default_workers(16), 4);
        assert_eq!(s.to_string(), "cuda:0x2,cuda:1x2");
        for text in ["cpu", "cuda:0x8", "cuda:0,cuda:1", "wgpu,cuda:0x3"] {
            let parsed: DeviceSlots = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.to_string().parse::<DeviceSlots>().unwrap(), parsed);
        }
        // One device without a count: the cores set the workers.
        let cpu: DeviceSlots = "cpu".parse().unwrap();
        assert_eq!(cpu.default_workers(2), 2);
        assert_eq!(cpu.for_worker(7), DeviceSpec::Cpu);
        let one: DeviceSlots = "cuda:0x1".parse().unwrap();
        assert_eq!(one.default_workers(16), 1);
    }

    #[test]
    fn bad_slots_are_refused_with_the_item() {
        for bad in [
            "",
            ",",
            "cuda:0x0",
            "cuda:0x",
            "gpux2",
            "cpux18446744073709551616",
        ] {
            let e = bad.parse::<DeviceSlots>().unwrap_err();
            assert!(matches!(e, DeviceError::Unknown(_)), "{bad}: {e}");
        }
        for many in ["cuda:0x999".to_string(), ["cuda:0x200"; 2].join(",")] {
            let e = many.parse::<DeviceSlots>().unwrap_err();
            assert!(matches!(e, DeviceError::TooManySlots(_)), "{many}: {e}");
            assert!(e.to_string().contains("256"), "{e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_so() {
        assert_eq!(
            DeviceSpec::Cuda(0).check(),
            Err(DeviceError::NotCompiled("CUDA", "cuda"))
        );
    }
}
