//! [`KernelOps`] on `CubeBackend`: the kernels launched on the tensors'
//! own compute client (CUDA or wgpu stream).

use burn::tensor::ops::FloatTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::{KernelOps, attention, conv, gla, scan, toeplitz};

impl<R, F, I, BT> KernelOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        window: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::forward(q, k, v, scale, window)
    }

    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        scale: f32,
        window: usize,
    ) -> [FloatTensor<Self>; 3] {
        attention::backward(q, k, v, out, lse, dout, scale, window)
    }

    fn conv_forward(v: FloatTensor<Self>, taps: FloatTensor<Self>) -> FloatTensor<Self> {
        conv::forward(v, taps)
    }

    fn conv_backward(
        v: FloatTensor<Self>,
        taps: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        conv::backward(v, taps, dy)
    }

    fn gla_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        gla::forward(q, k, v, g)
    }

    fn gla_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 4] {
        gla::backward(q, k, v, g, dout)
    }

    fn toeplitz_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        taps: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        toeplitz::forward(q, k, v, taps)
    }

    fn toeplitz_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        taps: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 4] {
        toeplitz::backward(q, k, v, taps, dout)
    }

    fn scan_forward(
        x: FloatTensor<Self>,
        dt: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        scan::forward(x, dt, a, b, c)
    }

    fn scan_backward(
        x: FloatTensor<Self>,
        dt: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 5] {
        scan::backward(x, dt, a, b, c, dy)
    }
}
