//! The process allocator: mimalloc, told to keep freed memory.
//!
//! Training allocates and frees tensors of megabytes on every step (a
//! `[128, 128, 128]` f32 activation is 8 MiB; Mamba's `[batch, seq, d_inner,
//! d_state]` scan tensors 64 MiB). glibc serves blocks above its mmap
//! threshold with `mmap` and unmaps them on free, so every step faulted its
//! working set in again and the kernel zeroed it. Measured on this machine
//! (2 cores), `cargo bench --bench layers -- --only swiglu`, five rows:
//!
//! | allocator | minor page faults | Hyena + SwiGLU step | MH Hyena + SwiGLU step |
//! |---|---:|---:|---:|
//! | glibc, defaults | 15.8 M | 12.3 s¹ | 4.69 s¹ |
//! | glibc, `MALLOC_MMAP_THRESHOLD_=32 MiB`, no trim | 0.80 M | 6.85 s | 2.89 s |
//! | mimalloc, defaults (purge after 1 s) | 0.33 M | 8.30 s | 4.70 s |
//! | mimalloc, purge off (this) | 2,105 | 6.79 s | 3.26 s |
//!
//! ¹ the step times of that binary in `cargo bench --bench torch`.
//!
//! glibc's threshold cannot go above 32 MiB, so Mamba's tensors would still
//! be mapped and unmapped every step; mimalloc with purging off reuses what
//! it has for every size. The cost: the resident size stays at the largest
//! step's peak until the process exits, which is what a training process
//! wants anyway.
//!
//! The binary and the benchmarks install it:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: mad_search::alloc::Allocator = mad_search::alloc::Allocator;
//! fn main() { mad_search::alloc::keep_freed_memory(); /* … */ }
//! ```

pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's `mi_option_purge_delay` (v3 header: the 16th option).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// The environment variable with which a user sets the purge delay.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Never return freed memory to the OS (mimalloc's purge delay −1), unless
/// the user set `MIMALLOC_PURGE_DELAY` themselves. Harmless when mimalloc is
/// not the global allocator.
pub fn keep_freed_memory() {
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        // SAFETY: sets one integer option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

/// mimalloc's current purge delay in milliseconds (−1: never).
pub fn purge_delay() -> std::ffi::c_long {
    // SAFETY: reads one integer option.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_kept_unless_the_user_says_otherwise() {
        if std::env::var_os(PURGE_DELAY_ENV).is_some() {
            return;
        }
        // mimalloc's v3 default; a different value means option 15 is not
        // the purge delay in the mimalloc this was built against.
        assert_eq!(
            purge_delay(),
            1000,
            "option {PURGE_DELAY} is not purge_delay"
        );
        keep_freed_memory();
        assert_eq!(purge_delay(), -1);
    }
}
