//! Throughput of the grammar operators on the default space: sampling,
//! mutation, crossover and admission, in microseconds per call.
//!
//! `cargo bench --bench space` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::Instant;

use mad_search::space::SearchSpace;

fn time<F: FnMut()>(label: &str, n: usize, mut f: F) {
    // Warm-up.
    for _ in 0..n / 10 + 1 {
        f();
    }
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("{label:<28} {us:>10.2} µs/call  ({n} calls)");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 200 } else { 5000 };
    let t0 = Instant::now();
    let space = SearchSpace::embedded_default();
    println!(
        "{:<28} {:>10.2} ms (parse + validation + 2000 trial draws)",
        "load default space",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let mut rng = mad_search::seed::rng(1, &["bench"]);
    let pool: Vec<_> = (0..64).map(|_| space.sample(&mut rng).unwrap()).collect();
    let mut i = 0;
    time("sample", n, || {
        black_box(space.sample(&mut rng).unwrap());
    });
    time("mutate", n, || {
        i = (i + 1) % pool.len();
        black_box(space.mutate(&pool[i], &mut rng).unwrap());
    });
    time("crossover (ok or refused)", n, || {
        i = (i + 1) % pool.len();
        let j = (i * 7 + 3) % pool.len();
        let _ = black_box(space.crossover(&pool[i], &pool[j], &mut rng));
    });
    time("admits", n, || {
        i = (i + 1) % pool.len();
        black_box(space.admits(&pool[i]).is_ok());
    });
    time("arch_id", n, || {
        i = (i + 1) % pool.len();
        black_box(pool[i].arch_id());
    });
}
