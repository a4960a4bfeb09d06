//! Control-plane benchmarks (criterion), run by `cargo xtask bench`:
//! - `maglev_build_65537/N`: building one weighted Maglev table of M = 65537 for N
//!   backends of unequal weights;
//! - `publish_generation/4x10`: publishing a whole new generation (4 VIPs of 10 backends,
//!   M = 65537; one weight changed, so every ring is rewritten) into a loaded balancer,
//!   including the wait for in-flight packets. Needs root; skipped (said so) otherwise.

use std::{collections::BTreeMap, hint::black_box, time::Duration};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lbx::{
    config::Config,
    dataplane::{Balancer, generation::Publisher, plan, slots::Slots},
    maglev::{self, MaglevBackend},
};

const M: u32 = 65537;

fn maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build_65537");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    for n in [10u32, 100, 1000] {
        let identities: Vec<[u8; 4]> = (0..n).map(|i| (0x0a00_0000 + i).to_be_bytes()).collect();
        let backends: Vec<MaglevBackend<'_>> = identities
            .iter()
            .enumerate()
            .map(|(i, id)| MaglevBackend {
                identity: id,
                weight: 1 + (i as u32 * 37) % 100,
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &backends, |b, backends| {
            b.iter(|| maglev::build(black_box(backends), M, 0).expect("valid table"));
        });
    }
    group.finish();
}

/// Four VIPs of ten backends; backend 1 of the first VIP has `weight`.
fn config(weight: u32) -> Config {
    let mut text = format!("table_size = {M}\nmtu = 1500\n");
    for v in 1..=4u8 {
        text.push_str(&format!(
            "[[vip]]\naddress = \"192.0.2.{v}\"\nport = 80\nprotocol = \"tcp\"\n"
        ));
        for b in 1..=10u8 {
            let w = if v == 1 && b == 1 { weight } else { 100 };
            text.push_str(&format!(
                "[[vip.backend]]\naddress = \"10.{v}.0.{b}\"\nweight = {w}\nmac = \"02:00:00:00:{v:02x}:{b:02x}\"\n"
            ));
        }
    }
    Config::from_toml(&text).expect("benchmark configuration")
}

fn publish_generation(c: &mut Criterion) {
    if !lbx::dataplane::sys::is_root() {
        eprintln!("publish_generation: skipped, it loads the balancer and needs root");
        return;
    }
    lbx::dataplane::sys::raise_memlock_limit();
    let mut bal = Balancer::load(M, 1 << 16, None).expect("load the balancer");
    let mut publisher = Publisher::new().expect("publication barrier");
    let configs = [config(100), config(200)];
    let (slots, _) = Slots::default().assign(&configs[0]);
    let plans: Vec<plan::Plan> = configs
        .iter()
        .map(|c| plan::build(c, &slots, &BTreeMap::new(), 1500, &Default::default()))
        .collect();
    let mut group = c.benchmark_group("publish_generation");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let mut i = 0usize;
    group.bench_function("4x10", |b| {
        b.iter(|| {
            i += 1;
            publisher.publish(&mut bal, &plans[i % 2]).expect("publish")
        });
    });
    group.finish();
}

criterion_group!(benches, maglev_build, publish_generation);
criterion_main!(benches);
