//! `lbx-bench`: the data-plane benchmark behind `cargo xtask bench`, and the report.
//!
//! Every timed run is one BPF_PROG_TEST_RUN call with repeat = 1 on a fresh copy of the
//! input frame: the kernel's `repeat` would rerun an encapsulating program on its own
//! output. The time is the kernel's own measurement of that one run (ns, around the
//! program call; it includes a fixed timer overhead, the same for every program). A round
//! times `--batch` frames per fixture; fixtures take turns round by round so drift hits
//! all alike; each fixture reports the median of its round means and the 10th and 90th
//! percentiles. The floors (an empty program, and a minimal forwarder that parses and
//! prepends a fixed header without lookups) are measured the same way in the same run.
//!
//! Then packet rates (`lbx_tests::pps`): each fixture's frames sent through the balancer
//! attached as native XDP to a veth, on one CPU against an XDP_TX-only floor and the
//! minimal forwarder, on every CPU at once, and under a flood of new flows while a
//! backend is added; their tables print first.
//!
//! It then reads criterion's estimates of the control-plane benches (lbx-user's
//! `benches/control.rs`), writes everything to a JSON file and prints a table.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, programs::Xdp};
use clap::Parser;
use lbx::config::Config;
use lbx_common::programs;
use lbx_tests::{
    packets::{self, L4, V4, V6},
    pps::report as pps,
    testrun::{TestBalancer, run_once},
};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Data-plane benchmark of lbx (BPF_PROG_TEST_RUN); needs root")]
struct Args {
    /// Rounds per fixture.
    #[arg(long, default_value_t = 31)]
    rounds: usize,
    /// Timed runs (fresh frames) per fixture and round.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/lbx-bench/results.json")]
    out: PathBuf,
    /// Connection-table size (entries), as `flows` in the agent's configuration.
    #[arg(long, default_value_t = lbx_common::DEFAULT_FLOWS)]
    flows: u32,
    /// Criterion's output folder, for the control-plane estimates.
    #[arg(long, default_value = "target/criterion")]
    criterion: PathBuf,
    /// Another build of the XDP object (a saved copy of `lbx-xdp` from the build's
    /// OUT_DIR) whose balancer is timed alongside this one, round by round, on the same
    /// frames: the fair comparison of a packet-path change on a host whose speed drifts.
    /// Its map layouts must match this build's.
    #[arg(long, value_name = "OBJECT")]
    baseline: Option<PathBuf>,
    /// Skip the packet rates (native XDP on veths: one CPU, all CPUs, the flood).
    #[arg(long)]
    no_pps: bool,
    /// Packet rates: rounds, and milliseconds each figure of a round sends for.
    #[arg(long, default_value_t = 5)]
    pps_rounds: usize,
    #[arg(long, default_value_t = 300)]
    pps_ms: u64,
    /// Packet rates: frames per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    pps_batch: usize,
    /// The flood: how long it lasts (ms), the established flows and their frames per second.
    #[arg(long, default_value_t = 4000)]
    flood_ms: u64,
    #[arg(long, default_value_t = 100_000)]
    established: u32,
    #[arg(long, default_value_t = 100_000.0)]
    established_fps: f64,
}

const RING: u32 = lbx_common::DEFAULT_RING_SIZE;
const PAYLOAD: usize = 64;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// Flows kept established for the table-hit fixtures.
const HIT_FLOWS: usize = 512;

const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const OTHER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);

/// The balancer's configuration: one VIP per family and protocol, ten backends each.
fn config() -> Config {
    lbx_tests::pps::scene::config_of(&[
        (IpAddr::V4(VIP4), 80, "tcp", 10),
        (IpAddr::V4(VIP4), 53, "udp", 10),
        (IpAddr::V6(VIP6), 80, "tcp", 10),
        (IpAddr::V6(VIP6), 53, "udp", 10),
    ])
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Prog {
    Balancer,
    /// The balancer of the `--baseline` object.
    Baseline,
    /// The balancer stopped after a stage: one of `programs::BENCH_UNTIL_*`.
    Stage(&'static str),
    Empty,
    Forwarder,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    /// A new flow every frame: connection-table miss, Maglev lookup, insert.
    Miss,
    /// Established flows.
    Hit,
    /// One established flow, every frame: all it reads stays in cache, as in a
    /// benchmark that repeats one packet.
    HitOne,
    /// Not a VIP (the table is not reached).
    None,
}

#[derive(Clone)]
struct Fixture {
    name: String,
    prog: Prog,
    table: Table,
    v6: bool,
    tcp: bool,
    /// Destination: a VIP, or an address that is not one.
    vip: bool,
    /// The floor it is compared with (a fixture name), and the target ratio.
    floor: Option<(&'static str, f64)>,
    rounds: Vec<f64>,
}

fn fixture(
    name: &str,
    prog: Prog,
    table: Table,
    (v6, tcp, vip): (bool, bool, bool),
    floor: Option<(&'static str, f64)>,
) -> Fixture {
    Fixture {
        name: name.to_owned(),
        prog,
        table,
        v6,
        tcp,
        vip,
        floor,
        rounds: Vec::new(),
    }
}

const FWD4: &str = "floor: minimal forwarder, IPv4 TCP";
const FWD6: &str = "floor: minimal forwarder, IPv6 TCP";
const EMPTY: &str = "floor: empty program (XDP_PASS)";

fn fixtures() -> Vec<Fixture> {
    use Prog::*;
    use Table::*;
    let vip4 = Some((FWD4, 1.5));
    let vip6 = Some((FWD6, 1.5));
    vec![
        fixture(EMPTY, Empty, None, (false, true, false), Option::None),
        fixture(FWD4, Forwarder, None, (false, true, true), Option::None),
        fixture(FWD6, Forwarder, None, (true, true, true), Option::None),
        fixture(
            "IPv4 TCP VIP, table miss (Maglev, IPIP)",
            Balancer,
            Miss,
            (false, true, true),
            vip4,
        ),
        fixture(
            "IPv4 TCP VIP, table hit (IPIP)",
            Balancer,
            Hit,
            (false, true, true),
            vip4,
        ),
        fixture(
            "IPv4 TCP VIP, table hit, one flow repeated",
            Balancer,
            HitOne,
            (false, true, true),
            vip4,
        ),
        fixture(
            "IPv4 UDP VIP, table miss",
            Balancer,
            Miss,
            (false, false, true),
            vip4,
        ),
        fixture(
            "IPv4 UDP VIP, table hit",
            Balancer,
            Hit,
            (false, false, true),
            vip4,
        ),
        fixture(
            "IPv6 TCP VIP, table miss (Maglev, IP6IP6)",
            Balancer,
            Miss,
            (true, true, true),
            vip6,
        ),
        fixture(
            "IPv6 TCP VIP, table hit",
            Balancer,
            Hit,
            (true, true, true),
            vip6,
        ),
        fixture(
            "IPv6 UDP VIP, table miss",
            Balancer,
            Miss,
            (true, false, true),
            vip6,
        ),
        fixture(
            "IPv6 UDP VIP, table hit",
            Balancer,
            Hit,
            (true, false, true),
            vip6,
        ),
        fixture(
            "IPv4 TCP non-VIP, passed",
            Balancer,
            None,
            (false, true, false),
            Some((EMPTY, 1.5)),
        ),
        fixture(
            "IPv6 TCP non-VIP, passed",
            Balancer,
            None,
            (true, true, false),
            Some((EMPTY, 1.5)),
        ),
    ]
}

/// The stage programs of the breakdown, with what each adds to the one before.
const STAGES: [(&str, &str); 3] = [
    (programs::BENCH_UNTIL_FILTER, "parse + not-a-VIP filter"),
    (programs::BENCH_UNTIL_VIP, "+ settings, VIP table"),
    (
        programs::BENCH_UNTIL_FLOW,
        "+ flow hash, conn. table, backend",
    ),
];

/// The VIP paths broken down by stage.
const BROKEN_DOWN: [&str; 4] = [
    "IPv4 TCP VIP, table miss (Maglev, IPIP)",
    "IPv4 TCP VIP, table hit (IPIP)",
    "IPv6 TCP VIP, table miss (Maglev, IP6IP6)",
    "IPv6 TCP VIP, table hit",
];

fn stage_name(path: &str, stage: &str) -> String {
    format!("{path} [until {stage}]")
}

/// Each broken-down path once per stage program, on the same frames as the path.
fn stage_fixtures() -> Vec<Fixture> {
    let all = fixtures();
    let mut out = Vec::new();
    for path in BROKEN_DOWN {
        let f = all
            .iter()
            .find(|f| f.name == path)
            .expect("broken-down paths are fixtures");
        for (program, _) in STAGES {
            out.push(Fixture {
                name: stage_name(path, program),
                prog: Prog::Stage(program),
                floor: None,
                ..f.clone()
            });
        }
    }
    out
}

/// The name of a fixture's copy run on the baseline object.
fn baseline_name(name: &str) -> String {
    format!("{name} [baseline]")
}

/// The frame of flow number `n` of a fixture: the client address varies with `n`.
fn frame(f: &Fixture, n: u32) -> Vec<u8> {
    let payload = [0x5a; PAYLOAD];
    let port = if f.tcp { 80 } else { 53 };
    let l4 = if f.tcp {
        L4::tcp(10_000 + (n % 50_000) as u16, port)
    } else {
        L4::udp(10_000 + (n % 50_000) as u16, port)
    };
    if f.v6 {
        let src = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, (n >> 16) as u16, n as u16);
        let dst = if f.vip { VIP6 } else { OTHER6 };
        packets::ipv6(&V6::new(src, dst), l4, &payload)
    } else {
        let src = Ipv4Addr::from(0x0a80_0000 | (n & 0x003f_ffff));
        let dst = if f.vip { VIP4 } else { OTHER4 };
        packets::ipv4(&V4::new(src, dst), l4, &payload)
    }
}

fn xdp<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    Ok(ebpf
        .program(name)
        .with_context(|| format!("program {name} is not in the object"))?
        .try_into()?)
}

/// Kernel-measured ns of one run of each frame, averaged.
fn time_batch(prog: &Xdp, frames: &[Vec<u8>], expect: u32) -> Result<f64> {
    let mut total = 0u128;
    for f in frames {
        let run = run_once(prog, f)?.context("the kernel refused a benchmark frame")?;
        if run.action != expect {
            bail!(
                "a benchmark frame got action {}, expected {expect}",
                run.action
            );
        }
        total += run.duration.as_nanos();
    }
    Ok(total as f64 / frames.len() as f64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

struct Summary {
    median: f64,
    p10: f64,
    p90: f64,
}

fn summary(rounds: &[f64]) -> Summary {
    let mut s = rounds.to_vec();
    s.sort_by(f64::total_cmp);
    Summary {
        median: percentile(&s, 0.5),
        p10: percentile(&s, 0.1),
        p90: percentile(&s, 0.9),
    }
}

/// Criterion's estimate for one benchmark id: (median, lower, upper of its 95% CI), ns.
fn criterion_estimate(dir: &Path, id: &str) -> Option<(f64, f64, f64)> {
    let path = dir.join(id).join("new/estimates.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let m = &v["median"];
    Some((
        m["point_estimate"].as_f64()?,
        m["confidence_interval"]["lower_bound"].as_f64()?,
        m["confidence_interval"]["upper_bound"].as_f64()?,
    ))
}

/// The control-plane benchmark ids of lbx-user's `benches/control.rs`.
const CONTROL: [(&str, &str); 6] = [
    (
        "maglev_build_65537/10",
        "Maglev table build, M = 65537, 10 backends",
    ),
    (
        "maglev_build_65537/100",
        "Maglev table build, M = 65537, 100 backends",
    ),
    (
        "maglev_build_65537/1000",
        "Maglev table build, M = 65537, 1000 backends",
    ),
    (
        "publish_generation/4x10",
        "publish a generation (4 VIPs x 10 backends, M = 65537)",
    ),
    (
        "active_flows/count_2^20",
        "count active flows per backend, 2^20 flows",
    ),
    (
        "active_flows/read_2^20",
        "floor: one pass over the 2^20 mapped flows",
    ),
];

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !lbx_tests::is_root() {
        bail!("lbx-bench loads XDP programs: run it as root (cargo xtask bench does)");
    }
    if args.rounds < 3 || args.batch == 0 {
        bail!("use at least 3 rounds and a batch of 1 or more");
    }
    lbx::dataplane::sys::raise_memlock_limit();
    let mut tb = TestBalancer::load(RING, args.flows)?;
    tb.configure(&config())?;
    let mut baseline = match &args.baseline {
        Some(path) => {
            let object = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
            let mut b = TestBalancer::load_object(&object, RING, args.flows)
                .with_context(|| format!("baseline {}", path.display()))?;
            b.configure(&config())?;
            Some(b)
        }
        None => None,
    };
    let empty = lbx::dataplane::load_unattached(programs::PASS)?;
    let forwarder = lbx::dataplane::load_unattached(programs::BENCH_FORWARD)?;
    for stage in STAGES {
        tb.bal.load_sibling(stage.0)?;
    }
    let mut fixtures = fixtures();
    fixtures.extend(stage_fixtures());
    if baseline.is_some() {
        let copies: Vec<Fixture> = fixtures
            .iter()
            .filter(|f| f.prog == Prog::Balancer)
            .map(|f| Fixture {
                name: baseline_name(&f.name),
                prog: Prog::Baseline,
                ..f.clone()
            })
            .collect();
        fixtures.extend(copies);
    }

    // The established flows of the hit fixtures (flow numbers 0..HIT_FLOWS), and frames
    // of new flows for the miss fixtures (numbers from 1_000_000 up, never reused: the
    // table is emptied between rounds, untimed, so it never fills either).
    let hit_frames: Vec<Vec<Vec<u8>>> = fixtures
        .iter()
        .map(|f| (0..HIT_FLOWS as u32).map(|n| frame(f, n)).collect())
        .collect();
    let mut next_flow = 1_000_000u32;
    eprintln!(
        "lbx-bench: {} fixtures x {} rounds x {} runs (BPF_PROG_TEST_RUN, repeat = 1, fresh frame each run)",
        fixtures.len(),
        args.rounds,
        args.batch
    );
    for round in 0..args.rounds {
        tb.clear_flows()?;
        if let Some(b) = baseline.as_mut() {
            b.clear_flows()?;
        }
        for (f, frames) in fixtures.iter().zip(&hit_frames) {
            if matches!(f.table, Table::Hit | Table::HitOne) {
                let target = match (f.prog, &baseline) {
                    (Prog::Baseline, Some(b)) => b,
                    _ => &tb,
                };
                for fr in frames {
                    target.run(fr)?;
                }
            }
        }
        for (i, f) in fixtures.iter_mut().enumerate() {
            let frames: Vec<Vec<u8>> = match f.table {
                Table::Miss => {
                    let start = next_flow;
                    next_flow += args.batch as u32;
                    (start..start + args.batch as u32)
                        .map(|n| frame(f, n))
                        .collect()
                }
                Table::HitOne => vec![hit_frames[i][0].clone(); args.batch],
                _ => (0..args.batch)
                    .map(|k| hit_frames[i][k % HIT_FLOWS].clone())
                    .collect(),
            };
            let prog = match f.prog {
                Prog::Balancer => tb.bal.program(),
                Prog::Baseline => baseline
                    .as_ref()
                    .context("baseline fixture without --baseline")?
                    .bal
                    .program(),
                Prog::Stage(name) => tb.bal.sibling(name).context("stage program not loaded")?,
                Prog::Empty => xdp(&empty, programs::PASS)?,
                Prog::Forwarder => xdp(&forwarder, programs::BENCH_FORWARD)?,
            };
            // Every program sends frames to a VIP back out (the empty program's fixture
            // is not one) and passes the rest.
            let expect = if f.vip { XDP_TX } else { XDP_PASS };
            let ns = time_batch(prog, &frames, expect).with_context(|| f.name.clone())?;
            f.rounds.push(ns);
        }
        if (round + 1) % 10 == 0 {
            eprintln!("  round {}/{}", round + 1, args.rounds);
        }
    }

    // Data-plane results with ratios to their floors.
    let medians: Vec<(&str, f64)> = fixtures
        .iter()
        .map(|f| (f.name.as_str(), summary(&f.rounds).median))
        .collect();
    let floor_of = |name: &str| medians.iter().find(|(n, _)| *n == name).map(|(_, m)| *m);
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    let mut missed = Vec::new();
    for f in fixtures
        .iter()
        .filter(|f| matches!(f.prog, Prog::Balancer | Prog::Empty | Prog::Forwarder))
    {
        let s = summary(&f.rounds);
        let ratio = f
            .floor
            .and_then(|(floor, target)| floor_of(floor).map(|m| (floor, s.median / m, target)));
        if let Some((_, r, t)) = ratio
            && r > t
        {
            missed.push(f.name.as_str());
        }
        rows.push((f.name.as_str(), s.median, s.p10, s.p90, ratio));
        json_rows.push(json!({
            "fixture": f.name,
            "median_ns": s.median,
            "p10_ns": s.p10,
            "p90_ns": s.p90,
            "floor": ratio.map(|(floor, _, _)| floor),
            "ratio": ratio.map(|(_, r, _)| r),
            "target_ratio": ratio.map(|(_, _, t)| t),
        }));
    }

    // This build against the baseline: the median of the round-by-round ratios, so that
    // drift between rounds cancels.
    let against: Vec<(&str, f64, f64, f64)> = fixtures
        .iter()
        .filter(|f| f.prog == Prog::Balancer)
        .filter_map(|f| {
            let base = fixtures.iter().find(|b| b.name == baseline_name(&f.name))?;
            let mut ratios: Vec<f64> = f
                .rounds
                .iter()
                .zip(&base.rounds)
                .map(|(a, b)| a / b)
                .collect();
            ratios.sort_by(f64::total_cmp);
            Some((
                f.name.as_str(),
                summary(&f.rounds).median,
                summary(&base.rounds).median,
                percentile(&ratios, 0.5),
            ))
        })
        .collect();

    // The VIP paths stage by stage: each stage program's median, then the whole path's.
    let breakdown: Vec<(&str, Vec<f64>)> = BROKEN_DOWN
        .iter()
        .filter_map(|path| {
            let mut v = STAGES
                .iter()
                .map(|(p, _)| floor_of(&stage_name(path, p)))
                .collect::<Option<Vec<f64>>>()?;
            v.push(floor_of(path)?);
            Some((*path, v))
        })
        .collect();

    let mut control = Vec::new();
    for (id, what) in CONTROL {
        let est = criterion_estimate(&args.criterion, id);
        control.push((what, est));
    }
    // Packet rates print their own tables now; the figures above print below.
    let pps = if args.no_pps {
        Value::Null
    } else {
        pps::run(&pps::Options {
            rounds: args.pps_rounds.max(1),
            each: Duration::from_millis(args.pps_ms),
            flows: args.flows,
            batch: args.pps_batch,
            flood: Duration::from_millis(args.flood_ms),
            established: args.established,
            established_pps: args.established_fps,
        })
        .context("packet rates")?
    };
    let json = json!({
        "kernel": kernel_release(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "method": format!(
            "BPF_PROG_TEST_RUN, repeat = 1 per call on a fresh input frame, kernel-measured ns of the run; \
             {} rounds x {} runs per fixture, fixtures interleaved by round; median of the round means, \
             p10/p90 of the round means",
            args.rounds, args.batch
        ),
        "dataplane": json_rows,
        "breakdown": breakdown.iter().map(|(path, v)| json!({
            "fixture": path,
            "stages": STAGES.iter().map(|(_, what)| *what)
                .chain(["+ encapsulation, counters (whole path)"])
                .zip(v)
                .map(|(what, ns)| json!({ "until": what, "median_ns": ns }))
                .collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "baseline": args.baseline.as_ref().map(|path| json!({
            "object": path.display().to_string(),
            "fixtures": against.iter().map(|(name, this, base, ratio)| json!({
                "fixture": name,
                "median_ns": this,
                "baseline_median_ns": base,
                "ratio": ratio,
            })).collect::<Vec<_>>(),
        })),
        "packet_rates": pps,
        "control_plane": control.iter().map(|(what, est)| json!({
            "benchmark": what,
            "median_ns": est.map(|e| e.0),
            "ci95_low_ns": est.map(|e| e.1),
            "ci95_high_ns": est.map(|e| e.2),
        })).collect::<Vec<_>>(),
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("write {}", args.out.display()))?;

    println!();
    println!(
        "Data plane: ns/packet, BPF_PROG_TEST_RUN, repeat = 1 per fresh frame ({} rounds x {} runs; median [p10-p90] of round means)",
        args.rounds, args.batch
    );
    println!(
        "| {:<45} | {:>8} | {:>13} | {:>18} |",
        "fixture", "median", "p10-p90", "ratio to floor"
    );
    println!("|{:-<47}|{:->10}|{:->15}|{:->20}|", "", "", "", "");
    for (name, median, p10, p90, ratio) in &rows {
        let r = match ratio {
            Some((floor, r, t)) => {
                let short = if floor.contains("empty") {
                    "empty"
                } else {
                    "fwd"
                };
                format!("{r:.2}x {short} {}", if r <= t { "ok" } else { "OVER" })
            }
            None => String::new(),
        };
        println!(
            "| {name:<45} | {median:>8.1} | {:>13} | {r:>18} |",
            format!("{p10:.1}-{p90:.1}")
        );
    }
    println!();
    println!(
        "Where the time goes: the balancer compiled to stop after each stage, same frames \
         (median ns; in brackets, the step from the stage before)"
    );
    let heads: Vec<&str> = STAGES
        .iter()
        .map(|(_, what)| *what)
        .chain(["+ encap, counters = whole"])
        .collect();
    println!(
        "| {:<41} | {} |",
        "path",
        heads
            .iter()
            .map(|h| format!("{h:>33}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!(
        "|{:-<43}|{}",
        "",
        format!("{:->35}|", "").repeat(heads.len())
    );
    for (path, v) in &breakdown {
        let cells: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(i, ns)| match i {
                0 => format!("{ns:>33.1}"),
                _ => format!("{:>33}", format!("{ns:.1} (+{:.1})", ns - v[i - 1])),
            })
            .collect();
        println!("| {path:<41} | {} |", cells.join(" | "));
    }
    if let Some(path) = &args.baseline {
        println!();
        println!(
            "Against the baseline {} (median of the round-by-round ratios)",
            path.display()
        );
        println!(
            "| {:<45} | {:>8} | {:>8} | {:>8} |",
            "fixture", "this", "baseline", "ratio"
        );
        println!("|{:-<47}|{:->10}|{:->10}|{:->10}|", "", "", "", "");
        for (name, this, base, ratio) in &against {
            println!("| {name:<45} | {this:>8.1} | {base:>8.1} | {ratio:>7.3}x |");
        }
    }
    println!();
    println!("Control plane (criterion: median, 95% confidence interval)");
    println!(
        "| {:<55} | {:>10} | {:>21} |",
        "benchmark", "median", "95% CI"
    );
    println!("|{:-<57}|{:->12}|{:->23}|", "", "", "");
    for (what, est) in &control {
        match est {
            Some((m, lo, hi)) => println!(
                "| {what:<55} | {:>7.2} ms | {:>21} |",
                m / 1e6,
                format!("{:.2}-{:.2} ms", lo / 1e6, hi / 1e6)
            ),
            None => println!("| {what:<55} | {:>10} | {:>21} |", "not run", ""),
        }
    }
    println!();
    println!(
        "targets: VIP paths <= 1.5x the minimal forwarder, non-VIP pass <= 1.5x the empty program"
    );
    if missed.is_empty() {
        println!("all targets met");
    } else {
        println!("over target: {}", missed.join(", "));
    }
    println!("results: {}", args.out.display());
    Ok(())
}
