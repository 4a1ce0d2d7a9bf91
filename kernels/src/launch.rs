//! What every kernel's launcher needs: output buffers, launch sizes and
//! the 32-bit index limit.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

/// Panics unless `n` elements are addressable by the kernels' 32-bit
/// indices (CubeCL's default address type).
pub(crate) fn fits_u32(n: usize) {
    assert!(
        n < u32::MAX as usize,
        "mad-kernels index with 32 bits: a tensor of {n} elements is too large"
    );
}

/// One unit per row (or element), as many cubes as it takes.
pub(crate) fn launch_size<R: CubeRuntime>(
    client: &ComputeClient<R>,
    rows: usize,
) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, rows);
    (calculate_cube_count_elemwise(client, rows, dim), dim)
}

/// A new contiguous f32 tensor on `like`'s device.
pub(crate) fn empty<R: CubeRuntime>(like: &CubeTensor<R>, dims: Vec<usize>) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(dims),
        DType::F32,
    )
}
