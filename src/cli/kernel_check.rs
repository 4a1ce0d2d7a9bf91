//! `mad-search kernel-check --device D [--models]`: `mad-kernels`' kernels
//! on device `D`, with and without burn-fusion, against the same functions
//! from Burn ops on the CPU, and with `--models` whole models against the
//! CPU ([`crate::layers::kernel_check`]); a table, or JSON, and a failing
//! exit status when one disagrees.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::out;
use crate::layers::device::DeviceSpec;

/// Arguments of `kernel-check`.
#[derive(Debug, Args)]
pub struct KernelCheckArgs {
    /// Device: cuda, cuda:N or wgpu (the CPU runs its own fused kernels, not these).
    #[arg(long)]
    pub device: String,
    /// Also check whole models on the device against the CPU: the paper's
    /// baselines and one model per other primitive, logits and every
    /// parameter's gradient, each value within the tolerance plus four
    /// times its noise floor (how far the CPU's own value moves when every
    /// parameter is nudged by 1e-6; slow on a software device: minutes).
    #[arg(long)]
    pub models: bool,
    /// Print every check as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `kernel-check`.
///
/// # Errors
/// A device that is not a GPU backend, not built in, or not working.
pub fn run(args: KernelCheckArgs) -> anyhow::Result<ExitCode> {
    let spec: DeviceSpec = args.device.parse()?;
    if !spec.is_gpu() {
        bail!(
            "--device {}: the CPU runs mad-search's fused CPU kernels (src/layers/fused), not \
             mad-kernels; give --device cuda, cuda:N or wgpu",
            args.device
        );
    }
    spec.check()?;
    let checks = checks(spec, args.models)?;
    let failed = checks.iter().filter(|(_, c)| !c.passed()).count();
    if args.json {
        let rows: Vec<serde_json::Value> = checks
            .iter()
            .map(|(backend, c)| {
                serde_json::json!({
                    "backend": backend, "kernel": c.kernel, "case": c.case,
                    "worst": c.worst, "allowed": c.allowed, "worst_of": c.worst_of,
                    "finite": c.finite,
                    "passed": c.passed(),
                })
            })
            .collect();
        out(&format!("{}\n", serde_json::to_string_pretty(&rows)?))?;
    } else {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<8} {:<17} {:<58} {:>10} {:>9}  {:<18} result",
            "backend", "kernel", "case", "worst err", "allowed", "in"
        );
        for (backend, c) in &checks {
            let _ = writeln!(
                s,
                "{backend:<8} {:<17} {:<58} {:>10.2e} {:>9.2e}  {:<18} {}",
                c.kernel,
                c.case,
                c.worst,
                c.allowed,
                c.worst_of,
                if c.passed() { "ok" } else { "FAILED" }
            );
        }
        let _ = writeln!(
            s,
            "{} checks, {failed} failed (tolerance {:.0e} of the reference's largest magnitude; \
             a model's values also four noise floors each: `allowed`)",
            checks.len(),
            crate::layers::kernel_check::TOLERANCE
        );
        out(&s)?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every check on `spec`'s backend, fused and unfused (and the models'
/// where `models`).
#[cfg_attr(
    not(any(feature = "wgpu", feature = "cuda")),
    allow(unused_variables, clippy::unnecessary_wraps)
)]
fn checks(
    spec: DeviceSpec,
    models: bool,
) -> anyhow::Result<Vec<(&'static str, crate::layers::kernel_check::Check)>> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    {
        use crate::layers::kernel_check::{Check, run, run_models};
        use burn::tensor::backend::AutodiffBackend;
        use mad_kernels::Kernels;
        crate::layers::device::configure_cubecl();
        fn both<B: AutodiffBackend + Kernels>(dev: &B::Device, models: bool) -> Vec<Check> {
            let mut all = run::<B>(dev);
            if models {
                all.extend(run_models::<B>(dev));
            }
            all
        }
        let tag = |name: &'static str, v: Vec<_>| v.into_iter().map(move |c| (name, c));
        match spec {
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(i) => {
                let dev = burn::backend::cuda::CudaDevice::new(i);
                let mut all: Vec<_> = tag(
                    "fused",
                    both::<burn::backend::Autodiff<burn::backend::Cuda>>(&dev, models),
                )
                .collect();
                all.extend(tag(
                    "unfused",
                    both::<burn::backend::Autodiff<crate::layers::device::CudaPlain>>(&dev, models),
                ));
                return Ok(all);
            }
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu => {
                let dev = Default::default();
                let mut all: Vec<_> = tag(
                    "fused",
                    both::<burn::backend::Autodiff<burn::backend::Wgpu>>(&dev, models),
                )
                .collect();
                all.extend(tag(
                    "unfused",
                    both::<burn::backend::Autodiff<crate::layers::device::WgpuPlain>>(&dev, models),
                ));
                return Ok(all);
            }
            _ => {}
        }
    }
    bail!(
        "this mad-search was built without the backend of --device; rebuild with --features cuda or wgpu"
    )
}
