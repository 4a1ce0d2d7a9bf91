//! Constant tensors (masks, rotary tables, Toeplitz indices, filter windows,
//! position embeddings) built once per (backend, device, shape) and kept:
//! on a GPU backend each build was a host loop and an upload on every
//! forward.
//!
//! The cache is per thread. A worker thread trains one model at a time, so
//! it holds the few shapes of its current task; and on CubeCL backends each
//! thread has its own stream, so a constant is used on the stream it was
//! uploaded on. It holds at most [`CAPACITY`] tensors and starts over when
//! full (a stage visits a few dozen shapes; a long daemon sees many).

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::TensorKind;

/// Most tensors one thread keeps.
pub const CAPACITY: usize = 256;

/// What identifies a constant: its backend, kind and rank (types), the
/// device (its `Debug` text), a name and the sizes it depends on.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Key {
    backend: TypeId,
    kind: TypeId,
    rank: usize,
    device: String,
    name: &'static str,
    sizes: Vec<usize>,
}

thread_local! {
    static CACHE: RefCell<HashMap<Key, Box<dyn Any>>> = RefCell::new(HashMap::new());
    static BUILDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The constant `name` of `sizes` on `device`, built by `build` the first
/// time this thread asks for it. `build` must depend on nothing but
/// `sizes` (and the device).
pub fn cached<B, const D: usize, K>(
    name: &'static str,
    sizes: &[usize],
    device: &B::Device,
    build: impl FnOnce() -> Tensor<B, D, K>,
) -> Tensor<B, D, K>
where
    B: Backend,
    K: TensorKind<B> + 'static,
{
    let key = Key {
        backend: TypeId::of::<B>(),
        kind: TypeId::of::<K>(),
        rank: D,
        device: format!("{device:?}"),
        name,
        sizes: sizes.to_vec(),
    };
    let hit = CACHE.with(|c| {
        c.borrow()
            .get(&key)
            .and_then(|t| t.downcast_ref::<Tensor<B, D, K>>())
            .cloned()
    });
    if let Some(t) = hit {
        return t;
    }
    let t = build();
    BUILDS.with(|b| b.set(b.get() + 1));
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CAPACITY {
            c.clear();
        }
        c.insert(key, Box::new(t.clone()));
    });
    t
}

/// Constants this thread has built (tests: a second forward builds none).
pub fn builds() -> u64 {
    BUILDS.with(|b| b.get())
}

/// Tensors this thread holds.
pub fn held() -> usize {
    CACHE.with(|c| c.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Cpu, CpuAutodiff};
    use burn::tensor::TensorData;

    fn ramp<B: Backend>(n: usize, device: &B::Device) -> Tensor<B, 1> {
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Tensor::from_data(TensorData::new(v, [n]), device)
    }

    #[test]
    fn a_constant_is_built_once_per_shape_and_backend() {
        let dev = Default::default();
        let before = builds();
        let a = cached::<Cpu, 1, burn::tensor::Float>("ramp", &[4], &dev, || ramp(4, &dev));
        let b = cached::<Cpu, 1, burn::tensor::Float>("ramp", &[4], &dev, || panic!("rebuilt"));
        assert_eq!(builds(), before + 1);
        assert_eq!(a.into_data(), b.into_data());
        // Another size, another name, another backend: each its own.
        cached::<Cpu, 1, burn::tensor::Float>("ramp", &[5], &dev, || ramp(5, &dev));
        cached::<Cpu, 1, burn::tensor::Float>("other", &[4], &dev, || ramp(4, &dev));
        let c = cached::<CpuAutodiff, 1, burn::tensor::Float>("ramp", &[4], &dev, || ramp(4, &dev));
        assert_eq!(builds(), before + 4);
        assert_eq!(c.dims(), [4]);
    }

    #[test]
    fn threads_keep_their_own_and_the_cache_is_bounded() {
        let dev = Default::default();
        std::thread::spawn(move || {
            assert_eq!(held(), 0);
            for n in 0..CAPACITY + 3 {
                cached::<Cpu, 1, burn::tensor::Float>("ramp", &[n], &dev, || ramp(n, &dev));
            }
            assert!(held() <= CAPACITY, "{} held", held());
            assert_eq!(builds(), (CAPACITY + 3) as u64);
        })
        .join()
        .unwrap();
    }
}
