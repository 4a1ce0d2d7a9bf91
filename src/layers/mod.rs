//! Burn modules, one file per primitive of mad-protocol §3, and the model
//! builder ([`Model::new`]) that turns an [`ArchSpec`](crate::genome::ArchSpec)
//! into a network.
//!
//! Everything is generic over the backend: `Flex` on CPU, CUDA and wgpu
//! (CubeCL) with the `cuda` and `wgpu` features, wrapped in `Autodiff` for
//! training. Constant tensors (masks, tables) come from a per-thread cache
//! ([`consts`]). Every sequence mixer
//! is causal; the recurrent layers (linear attention, GLA, Mamba) are computed
//! in chunked parallel form and keep their token-by-token form for tests.
//! Softmax attention runs as one fused kernel with its own backward on the
//! CPU backend ([`fused`]) and as `mad-kernels`' CubeCL kernels on CUDA and
//! wgpu (`cube`).
//! Parameter counts equal the genome's formulas exactly (tested).

pub mod attention;
pub mod channel;
pub mod consts;
mod cube;
pub mod deltanet;
pub mod device;
pub mod fused;
pub mod gated_conv;
pub mod gla;
pub mod hyena;
pub mod hyena_experts;
pub mod hyena_filter;
mod init;
pub mod kernel_check;
pub mod linear_attention;
pub mod long_conv;
pub mod mamba;
pub mod mamba2;
pub mod mh_hyena;
pub mod model;
pub mod norm;
pub mod ops;
pub mod rotary;
pub mod routing;
pub mod short_conv;

pub use init::Init;
pub use model::{Mixer, Model, ModelInit};

/// The CPU backend.
pub type Cpu = burn::backend::Flex;
/// The CPU backend with gradients.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_deltanet;
#[cfg(all(test, feature = "wgpu"))]
mod tests_gpu;
#[cfg(all(test, feature = "wgpu"))]
mod tests_gpu_faults;
