//! [`KernelOps`] on `Fusion<B>`: each kernel is queued as a custom
//! operation in the fusion stream, so it runs in order with Burn's own
//! (fused) operations, lazily and without a round trip to the host; at
//! execution it gets the inner backend's tensors and runs `B`'s kernel.

use std::fmt;

use burn::tensor::Shape;
use burn::tensor::ops::FloatTensor;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use crate::KernelOps;

/// The fusion stream's handles of backend `B`.
type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// What a queued kernel runs: `I` input tensors of `B` and the parameters
/// to `O` outputs.
type Run<B, P, const I: usize, const O: usize> = fn([FloatTensor<B>; I], &P) -> [FloatTensor<B>; O];

/// A kernel of the inner backend `B` as a fusion operation: `run` on the
/// `I` inputs' tensors, with `params`, gives the `O` outputs.
struct KernelOp<B: FusionBackend, P, const I: usize, const O: usize> {
    desc: CustomOpIr,
    params: P,
    run: Run<B, P, I, O>,
}

impl<B: FusionBackend, P: fmt::Debug, const I: usize, const O: usize> fmt::Debug
    for KernelOp<B, P, I, O>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelOp")
            .field("desc", &self.desc)
            .field("params", &self.params)
            .finish()
    }
}

impl<B, P, const I: usize, const O: usize> Operation<B::FusionRuntime> for KernelOp<B, P, I, O>
where
    B: FusionBackend,
    P: fmt::Debug + Send + Sync + 'static,
{
    fn execute(&self, handles: &mut Handles<B>) {
        let (inputs, outputs) = self.desc.as_fixed::<I, O>();
        let xs = inputs.each_ref().map(|t| handles.get_float_tensor::<B>(t));
        let ys = (self.run)(xs, &self.params);
        for (ir, y) in outputs.iter().zip(ys) {
            handles.register_float_tensor::<B>(&ir.id, y);
        }
    }
}

/// Queues `run` on `inputs` (float tensors of one dtype) as the custom
/// operation `name` with outputs of `shapes` (the inputs' dtype).
fn queue<B, P, const I: usize, const O: usize>(
    name: &'static str,
    inputs: [FloatTensor<Fusion<B>>; I],
    shapes: [Shape; O],
    params: P,
    run: Run<B, P, I, O>,
) -> [FloatTensor<Fusion<B>>; O]
where
    B: FusionBackend,
    P: fmt::Debug + Send + Sync + 'static,
{
    let client = inputs[0].client.clone();
    let dtype = inputs[0].dtype;
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outputs = shapes.map(|s| TensorIr::uninit(client.create_empty_handle(), s, dtype));
    let desc = CustomOpIr::new(name, &inputs.map(|t| t.into_ir()), &outputs);
    let op = KernelOp::<B, P, I, O> {
        desc: desc.clone(),
        params,
        run,
    };
    client
        .register(streams, OperationIr::Custom(desc), op)
        .outputs()
}

impl<B: FusionBackend + KernelOps> KernelOps for Fusion<B> {
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        window: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [b, h, seq, _] = q.shape.dims::<4>();
        let shapes = [q.shape.clone(), Shape::new([b, h, seq])];
        let [out, lse] = queue::<B, _, 3, 2>(
            "mad_attention_forward",
            [q, k, v],
            shapes,
            (scale, window),
            |[q, k, v], &(scale, window)| {
                let (out, lse) = B::attention_forward(q, k, v, scale, window);
                [out, lse]
            },
        );
        (out, lse)
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
        let shape = q.shape.clone();
        queue::<B, _, 6, 3>(
            "mad_attention_backward",
            [q, k, v, out, lse, dout],
            [shape.clone(), shape.clone(), shape],
            (scale, window),
            |[q, k, v, out, lse, dout], &(scale, window)| {
                B::attention_backward(q, k, v, out, lse, dout, scale, window)
            },
        )
    }

    fn conv_forward(v: FloatTensor<Self>, taps: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = v.shape.clone();
        let [y] = queue::<B, _, 2, 1>(
            "mad_conv_forward",
            [v, taps],
            [shape],
            (),
            |[v, taps], _| [B::conv_forward(v, taps)],
        );
        y
    }

    fn conv_backward(
        v: FloatTensor<Self>,
        taps: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        let shapes = [v.shape.clone(), taps.shape.clone()];
        queue::<B, _, 3, 2>(
            "mad_conv_backward",
            [v, taps, dy],
            shapes,
            (),
            |[v, taps, dy], _| B::conv_backward(v, taps, dy),
        )
    }

    fn gla_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = v.shape.clone();
        let [out] = queue::<B, _, 4, 1>(
            "mad_gla_forward",
            [q, k, v, g],
            [shape],
            (),
            |[q, k, v, g], _| [B::gla_forward(q, k, v, g)],
        );
        out
    }

    fn gla_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 4] {
        let (key, value) = (q.shape.clone(), v.shape.clone());
        queue::<B, _, 5, 4>(
            "mad_gla_backward",
            [q, k, v, g, dout],
            [key.clone(), key.clone(), value, key],
            (),
            |[q, k, v, g, dout], _| B::gla_backward(q, k, v, g, dout),
        )
    }

    fn toeplitz_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        taps: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = q.shape.clone();
        let [out] = queue::<B, _, 4, 1>(
            "mad_toeplitz_forward",
            [q, k, v, taps],
            [shape],
            (),
            |[q, k, v, taps], _| [B::toeplitz_forward(q, k, v, taps)],
        );
        out
    }

    fn toeplitz_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        taps: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 4] {
        let (stream, taps_shape) = (q.shape.clone(), taps.shape.clone());
        queue::<B, _, 5, 4>(
            "mad_toeplitz_backward",
            [q, k, v, taps, dout],
            [stream.clone(), stream.clone(), stream, taps_shape],
            (),
            |[q, k, v, taps, dout], _| B::toeplitz_backward(q, k, v, taps, dout),
        )
    }

    fn scan_forward(
        x: FloatTensor<Self>,
        dt: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = x.shape.clone();
        let [y] = queue::<B, _, 5, 1>(
            "mad_scan_forward",
            [x, dt, a, b, c],
            [shape],
            (),
            |[x, dt, a, b, c], _| [B::scan_forward(x, dt, a, b, c)],
        );
        y
    }

    fn scan_backward(
        x: FloatTensor<Self>,
        dt: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 5] {
        let shapes = [&x, &dt, &a, &b, &c].map(|t| t.shape.clone());
        queue::<B, _, 6, 5>(
            "mad_scan_backward",
            [x, dt, a, b, c, dy],
            shapes,
            (),
            |[x, dt, a, b, c, dy], _| B::scan_backward(x, dt, a, b, c, dy),
        )
    }
}
