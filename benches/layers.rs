//! Step time of every primitive and of the paper's architectures on this
//! machine: forward + backward of one layer on `[batch, seq, d]` inputs, and
//! forward + backward + AdamW step of whole language models.
//!
//! `cargo bench --bench layers` measures at batch 128, length 128, width 128
//! (the MAD protocol's shapes) and prints a table; `-- --quick` runs tiny
//! shapes once (CI's smoke test); `-- --only NAME` restricts the rows.
//! `cargo bench --bench torch` puts the same rows beside PyTorch's.

mod common;

use common::{ARCHITECTURES, Shape, layer_step, model_step};
use mad_search::genome::{ArchSpec, Layer, Primitive};

fn main() {
    mad_search::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let s = if quick { Shape::QUICK } else { Shape::PROTOCOL };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "mad-search layer benchmark: batch {}, length {}, width {}, {} CPU threads, median of {}",
        s.batch, s.seq, s.d, threads, s.reps
    );
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    println!("\n{:<28} {:>14}", "primitive (one layer)", "fwd+bwd ms");
    for &p in Primitive::ALL {
        if !wanted(p.name()) {
            continue;
        }
        let t = layer_step(&Layer::default_for(p), &s);
        println!("{:<28} {:>14.1}", p.name(), t.as_secs_f64() * 1e3);
    }
    println!(
        "\n{:<44} {:>20}",
        "architecture (LM, vocab 16)", "fwd+bwd+AdamW ms"
    );
    for &layers in ARCHITECTURES {
        if !wanted(layers) {
            continue;
        }
        let spec = ArchSpec::from_layers_str(layers).expect("known names");
        let t = model_step(&spec, &s);
        println!("{:<44} {:>20.1}", layers, t.as_secs_f64() * 1e3);
    }
}
