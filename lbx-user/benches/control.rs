//! Control-plane benchmarks (criterion), run by `cargo xtask bench`:
//! - `maglev_build_65537/N`: building one weighted Maglev table of M = 65537 for N
//!   backends of unequal weights;
//! - `publish_generation/4x10`: publishing a new generation (4 VIPs of 10 backends,
//!   M = 65537; one weight changed, so one ring is rebuilt and written) into a loaded
//!   balancer, including the wait for in-flight packets. Needs root; skipped (said so)
//!   otherwise.
//! - `publish_1024x16/{full,one_vip,health_100_vips}`: publications at 1,024 VIPs of 16
//!   backends (M = 65537): every ring new, one VIP's weight changed, one backend shared
//!   by 100 VIPs down. Needs root.
//! - `agent_1024x16/backend_weight`: `one_vip`'s change as a request to an agent (what
//!   the control socket hands it): validation, plan, publication, the file saved.
//! - `scrape/64x64`: one Prometheus scrape of an agent with 64 VIPs of 64 backends (M =
//!   65537), attached in generic mode to the loopback of a network namespace of its own:
//!   reading every counter and the connection-table sample (`maps`), and encoding the
//!   families in the text format (`encode`), apart and together. Needs root.
//! - `active_flows/count_2^20`: counting the active flows per backend in a full connection
//!   table of 2^20 flows, beside `active_flows/read_2^20`, one bare pass over the same
//!   mapped memory (the floor). Needs root.

use std::{
    collections::BTreeMap,
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lbx::{
    config::Config,
    dataplane::{Balancer, activity, generation::Publisher, plan, slots::Slots},
    maglev::{self, MaglevBackend},
};
use lbx_common::{
    DEFAULT_TCP_IDLE_S, DEFAULT_UDP_IDLE_S, FAMILY_V4, FlowEntry, FlowKey, PROTO_TCP, PROTO_UDP,
    Settings,
    flows::{self, FlowSlot},
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
    let mut bal = Balancer::load(lbx_common::ring_entries_for(4, M), 1 << 16, None)
        .expect("load the balancer");
    let mut publisher = Publisher::new().expect("publication barrier");
    // Three weights in turn: the slot written holds the generation before last, whose
    // ring of VIP 1 differs, so each publication writes that ring.
    let configs = [config(100), config(200), config(300)];
    let (slots, _) = Slots::default().assign(&configs[0]);
    let plans: Vec<plan::Plan> = configs
        .iter()
        .map(|c| {
            plan::build(
                c,
                &slots,
                &BTreeMap::new(),
                1500,
                Default::default(),
                &Default::default(),
                None,
            )
        })
        .collect();
    let mut group = c.benchmark_group("publish_generation");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let mut i = 0usize;
    group.bench_function("4x10", |b| {
        b.iter(|| {
            i += 1;
            publisher.publish(&mut bal, &plans[i % 3]).expect("publish")
        });
    });
    group.finish();
}

/// `MAX_VIPS` VIPs of 16 backends at M = 65537, seed `seed`; VIP 0's first backend has
/// `weight`. The first 100 VIPs share their 16 backend addresses.
fn scale_config(seed: u32, weight: u32) -> Config {
    Config::from_toml(&scale_text(seed, weight)).expect("scale configuration")
}

fn scale_text(seed: u32, weight: u32) -> String {
    let mut text = format!("seed = {seed}\ntable_size = {M}\nmtu = 1500\n");
    for v in 0..lbx_common::MAX_VIPS {
        text.push_str(&format!(
            "[[vip]]\naddress = \"198.18.{}.{}\"\nport = 80\nprotocol = \"tcp\"\n",
            v / 250,
            v % 250 + 1
        ));
        for b in 0..16u32 {
            let address = if v < 100 {
                format!("10.0.0.{}", b + 1)
            } else {
                format!("10.{}.{}.{}", 1 + v / 256, v % 256, b + 1)
            };
            let w = if v == 0 && b == 0 { weight } else { 100 };
            text.push_str(&format!(
                "[[vip.backend]]\naddress = \"{address}\"\nweight = {w}\nmac = \"02:00:00:{:02x}:{:02x}:{b:02x}\"\n",
                v >> 8,
                v & 0xff
            ));
        }
    }
    text
}

/// Publications at 1,024 VIPs of 16 backends (M = 65537), each its plan and its
/// publication into a loaded balancer, barrier included:
/// - `full`: a new seed, so every ring is rebuilt and written;
/// - `one_vip`: one backend of one VIP reweighted (three weights in turn, so the slot
///   written always held another): one ring rebuilt and written;
/// - `health_100_vips`: a backend shared by 100 VIPs goes down (and the one down before
///   comes back): 100 rings rebuilt and written.
///
/// `one_vip_plan` is `one_vip`'s plan alone, without its publication. Publications run
/// back to back: each waits for the barrier of the one before, which ran on during its
/// plan.
fn publish_scale(c: &mut Criterion) {
    use lbx::dataplane::{
        memory::Memory,
        plan::{Effective, FULL, Overrides},
    };
    if !lbx::dataplane::sys::is_root() {
        eprintln!("publish_1024x16: skipped, it loads the balancer and needs root");
        return;
    }
    lbx::dataplane::sys::raise_memlock_limit();
    let vips = lbx_common::MAX_VIPS;
    let mut bal = Balancer::load(lbx_common::ring_entries_for(vips, M), 1 << 20, None)
        .expect("load the balancer");
    let mut publisher = Publisher::new().expect("publication barrier");
    let base = scale_config(1, 100);
    let (slots, _) = Slots::default().assign(&base);
    let build = |config: &Config, overrides: &Overrides, previous: Option<&plan::Plan>| {
        plan::build(
            config,
            &slots,
            &BTreeMap::new(),
            1500,
            Default::default(),
            overrides,
            previous,
        )
    };
    let mut last = build(&base, &Overrides::new(), None);
    publisher.publish(&mut bal, &last).expect("publish");
    let memory = Memory::of(&bal, last.vips.iter().map(|v| v.ring.len()));
    eprintln!(
        "publish_1024x16: maps {:.1} MiB: rings {:.1} MiB ({} of {} entries), connection table {:.1} MiB, tables {:.1} MiB, counters {:.1} MiB on {} CPUs",
        memory.total as f64 / f64::from(1 << 20),
        memory.rings as f64 / f64::from(1 << 20),
        memory.ring_entries_used,
        memory.ring_entries,
        memory.flows as f64 / f64::from(1 << 20),
        memory.tables as f64 / f64::from(1 << 20),
        memory.counters as f64 / f64::from(1 << 20),
        memory.cpus
    );
    let mut group = c.benchmark_group("publish_1024x16");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let mut seed = 1u32;
    group.bench_function("full", |b| {
        b.iter(|| {
            seed += 1;
            let plan = build(&scale_config(seed, 100), &Overrides::new(), None);
            publisher.publish(&mut bal, &plan).expect("publish");
            assert_eq!(publisher.rings_written(), vips as usize);
        });
    });
    // From here on the configuration stays; only weights or health change.
    let config = scale_config(seed, 100);
    last = build(&config, &Overrides::new(), None);
    publisher.publish(&mut bal, &last).expect("publish");
    let weighted: Vec<Config> = [100u32, 200, 300]
        .iter()
        .map(|w| scale_config(seed, *w))
        .collect();
    let mut i = 0usize;
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(4));
    // Each change with the one before settled, as changes seconds apart find it; then
    // the same with the wait for in-flight packets that follows it.
    for (name, with_barrier) in [("one_vip", false), ("one_vip_with_barrier", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    publisher.settle(&mut bal).expect("settle");
                    i += 1;
                    let t = Instant::now();
                    let plan = build(&weighted[i % 3], &Overrides::new(), Some(&last));
                    publisher.publish(&mut bal, &plan).expect("publish");
                    if with_barrier {
                        publisher.settle(&mut bal).expect("settle");
                    }
                    took += t.elapsed();
                    last = plan;
                }
                took
            });
        });
    }
    // The plan alone (the rest is the publication).
    group.bench_function("one_vip_plan", |b| {
        b.iter(|| {
            i += 1;
            build(&weighted[i % 3], &Overrides::new(), Some(&last))
        });
    });
    let shared: Vec<_> = (1..=16u8)
        .map(|b| std::net::IpAddr::from([10, 0, 0, b]))
        .collect();
    let ids: Vec<_> = config.vips.iter().take(100).map(|v| v.id()).collect();
    let mut k = 0usize;
    group.bench_function("health_100_vips", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                publisher.settle(&mut bal).expect("settle");
                let t = Instant::now();
                k += 1;
                let down = shared[k % shared.len()];
                let overrides: Overrides = ids
                    .iter()
                    .map(|id| {
                        let e = Effective {
                            weight: None,
                            permille: FULL,
                            down: true,
                        };
                        ((*id, down), e)
                    })
                    .collect();
                let plan = build(&weighted[i % 3], &overrides, Some(&last));
                publisher.publish(&mut bal, &plan).expect("publish");
                took += t.elapsed();
                assert!(publisher.rings_written() >= 100);
                last = plan;
            }
            took
        });
    });
    group.finish();
}

/// A weight change at 1,024 VIPs x 16 backends through an agent's request handler, as
/// the control socket delivers it: the whole configuration validated, the plan, the
/// publication and the configuration file saved.
fn agent_scale(c: &mut Criterion) {
    use lbx::{agent::api::Request, config::Protocol};
    let entries = lbx_common::ring_entries_for(lbx_common::MAX_VIPS, M);
    let Some((mut agent, dir)) = agent_on_loopback("agent_1024x16", &scale_text(1, 100), entries)
    else {
        return;
    };
    let vip = lbx::config::VipId::parse("198.18.0.1:80", Protocol::Tcp).expect("VIP 0");
    let address = std::net::IpAddr::from([10, 0, 0, 1]);
    let mut group = c.benchmark_group("agent_1024x16");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    let mut i = 0u32;
    group.bench_function("backend_weight", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                // As the agent's loop does after each answer.
                agent.settle();
                i += 1;
                let weight = 100 + 100 * (i % 3);
                let t = Instant::now();
                agent
                    .handle(Request::BackendWeight {
                        vip,
                        address,
                        weight,
                    })
                    .expect("the weight change is published");
                took += t.elapsed();
            }
            took
        });
    });
    group.finish();
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// 64 VIPs of 64 backends each, 4,096 backends in all.
fn scrape_config() -> String {
    let mut text = format!("table_size = {M}\nmtu = 1500\n");
    for v in 0..64u32 {
        text.push_str(&format!(
            "[[vip]]\naddress = \"192.0.2.{}\"\nport = {}\nprotocol = \"tcp\"\n",
            1 + v / 8,
            80 + v % 8
        ));
        for b in 0..64u32 {
            text.push_str(&format!(
                "[[vip.backend]]\naddress = \"10.{v}.{b}.1\"\nweight = {}\nmac = \"02:00:00:00:{v:02x}:{b:02x}\"\n",
                1 + b % 7
            ));
        }
    }
    text
}

/// An agent serving `config` from the loopback of a network namespace of the
/// benchmark's own, in generic mode, and its temporary folder; None (said so) without
/// root or a namespace.
fn agent_on_loopback(
    name: &str,
    config: &str,
    ring_entries: u32,
) -> Option<(lbx::agent::Agent, std::path::PathBuf)> {
    use lbx::agent;
    if !lbx::dataplane::sys::is_root() {
        eprintln!("{name}: skipped, it attaches the balancer and needs root");
        return None;
    }
    // SAFETY: unshare affects only this process, before it starts any thread that cares.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "{name}: skipped, no network namespace: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    assert!(up.is_ok_and(|s| s.success()), "ip link set lo up");
    let dir = std::env::temp_dir().join(format!("lbx-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let config_path = dir.join("lbx.toml");
    std::fs::write(&config_path, config).expect("write the configuration");
    lbx::dataplane::sys::raise_memlock_limit();
    let agent = agent::Agent::start(agent::Options {
        iface: "lo".into(),
        config_path,
        mode: lbx::dataplane::Mode::Generic,
        socket: dir.join("lbx.sock"),
        pin_dir: None,
        object: lbx::dataplane::Object::builtin(),
        migrate: false,
        flows: 1 << 20,
        ring_entries,
        flow_idle: Default::default(),
        control_interval: Duration::from_secs(1),
        metrics_listen: None,
        cluster: None,
    })
    .expect("start an agent on lo");
    Some((agent, dir))
}

fn scrape(c: &mut Criterion) {
    use lbx::metrics::exposition;
    let Some((mut agent, dir)) =
        agent_on_loopback("scrape", &scrape_config(), lbx_common::DEFAULT_RING_ENTRIES)
    else {
        return;
    };
    let live = agent.live_metrics();
    let snapshot = std::sync::Arc::new(agent.scrape());
    assert_eq!(snapshot.vips.len(), 64, "every VIP in the scrape");
    let mut group = c.benchmark_group("scrape");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("64x64", |b| {
        b.iter(|| {
            let s = std::sync::Arc::new(agent.scrape());
            exposition::encode(&live, s, exposition::Format::Text)
        });
    });
    group.bench_function("64x64_maps", |b| b.iter(|| agent.scrape()));
    group.bench_function("64x64_encode", |b| {
        b.iter(|| exposition::encode(&live, snapshot.clone(), exposition::Format::Text));
    });
    group.finish();
    let lines = exposition::encode(&live, snapshot, exposition::Format::Text)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    eprintln!("scrape/64x64: {lines} samples per scrape");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Flows in the connection table of `active_flows`: `lbx run`'s default.
const ACTIVE_FLOWS_TABLE: u32 = 1 << 20;

/// Counting the active flows per backend (`lbx status`, `lbx backend list`, each poll of
/// `drain --wait`) in a full table of 2^20 flows of mixed protocols and ages, read through
/// the mapped map as the agent reads it; beside it the floor, one pass over the same
/// memory that only sums a word of each slot.
fn active_flows(c: &mut Criterion) {
    if !lbx::dataplane::sys::is_root() {
        eprintln!("active_flows: skipped, it loads the balancer and needs root");
        return;
    }
    lbx::dataplane::sys::raise_memlock_limit();
    let mut bal = Balancer::load(M, ACTIVE_FLOWS_TABLE, None).expect("load the balancer");
    let now = 100_000u32;
    for i in 0..bal.flows.len() {
        let n = i as u32;
        let key = FlowKey {
            src: [n.wrapping_mul(0x9e37_79b9), 0, 0, 0],
            dst: [0x0a00_0001, 0, 0, 0],
            sport_be: n as u16,
            dport_be: 80,
            proto: if n.is_multiple_of(4) {
                PROTO_UDP
            } else {
                PROTO_TCP
            },
            family: FAMILY_V4,
            pad: 0,
        };
        let entry = FlowEntry {
            backend: n % 4096,
            uid: 1,
        };
        bal.flows.set(
            i,
            FlowSlot {
                key: flows::key_words(&key),
                entry,
                check: flows::check(n, &entry),
                recent: 1,
                seen: now - n % 600,
                pad: 0,
            },
        );
    }
    let settings = Settings {
        tcp_idle_s: DEFAULT_TCP_IDLE_S,
        udp_idle_s: DEFAULT_UDP_IDLE_S,
        ..Settings::default()
    };
    let mut group = c.benchmark_group("active_flows");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    group.bench_function("count_2^20", |b| {
        let uids = vec![1; 4096];
        b.iter(|| activity::count(bal.flows.slots(), black_box(now), &settings, &uids));
    });
    group.bench_function("read_2^20", |b| {
        b.iter(|| {
            bal.flows
                .slots()
                .fold(0u64, |a, s| a.wrapping_add(u64::from(s.seen)))
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    maglev_build,
    publish_generation,
    publish_scale,
    agent_scale,
    scrape,
    active_flows
);
criterion_main!(benches);
