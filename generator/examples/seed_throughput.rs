//! In-process throughput: full render (parse, validate, management objects, cloud-init) plus a
//! seed image, repeated for a few seconds. Run: cargo run --release -p fledge-generator --example seed_throughput
use std::path::Path;
use std::time::{Duration, Instant};

use fledge_generator::render::pipeline::{RenderOptions, render_files};
use fledge_generator::seed::SeedFormat;

fn main() -> anyhow::Result<()> {
    let request = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/vsphere.yaml");
    for format in [SeedFormat::NocloudIso, SeedFormat::NocloudVfat] {
        let opts = RenderOptions {
            seed: Some(format),
            ..Default::default()
        };
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(3) {
            let files = render_files(&request, &opts)?;
            std::hint::black_box(files);
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{format:?}: {n} renders+seeds in {secs:.2}s = {:.0} seeds/s",
            n as f64 / secs
        );
    }
    Ok(())
}
