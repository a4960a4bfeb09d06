//! `lbx-bench`'s packet-rate part: runs the measurements, prints the three tables and the
//! connection table's memory, and returns them as JSON for `results.json`.

use std::time::Duration;

use anyhow::Result;
use lbx_common::flows::{FLOW_WAYS, FlowSlot, sets_for};
use serde_json::{Value, json};

use super::{
    flood::{self, Outcome, Plan},
    measure::{self, CoresRow, Problems, SingleRow, TX4, spread},
    scene::{Scene, Shape, Target},
    workers,
};

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub rounds: usize,
    pub each: Duration,
    pub flows: u32,
    pub batch: usize,
    pub flood: Duration,
    pub established: u32,
    pub established_pps: f64,
}

/// Whether the kernel runs BPF_F_TEST_XDP_LIVE_FRAMES, tried once on the rig.
fn live_frames(scene: &Scene) -> Result<String, String> {
    match scene.live(Target::Tx, Shape::TCP4, 1) {
        Ok(Ok(_)) => Ok("available".to_owned()),
        Ok(Err(e)) => Err(format!("refused by this kernel: {e}")),
        Err(e) => Err(format!("not tried: {e:#}")),
    }
}

fn memory_rows() -> Vec<(u64, u64, u64)> {
    [1u64 << 20, 1_000_000, 10_000_000, 1 << 26]
        .into_iter()
        .map(|flows| {
            let slots = u64::from(sets_for(flows as u32)) * u64::from(FLOW_WAYS);
            (flows, slots, slots * size_of::<FlowSlot>() as u64)
        })
        .collect()
}

pub fn run(opts: &Options) -> Result<Value> {
    let mut scene = Scene::new(opts.flows, opts.batch)?;
    let live = live_frames(&scene);
    let cpus = workers::cpus()?;
    eprintln!(
        "lbx-bench: packet rates, native XDP on veth pairs, AF_PACKET senders ({} CPUs, {} rounds x {} ms)",
        cpus.len(),
        opts.rounds,
        opts.each.as_millis()
    );
    let mut problems = Problems::default();
    let single = measure::single_core(&mut scene, opts.rounds, opts.each, &mut problems)?;
    let cores = measure::all_cores(&mut scene, opts.rounds, opts.each, &mut problems)?;
    let ceiling: Vec<f64> = (0..opts.rounds)
        .map(|_| measure::spin_ceiling(opts.each))
        .collect::<Result<_>>()?;
    let ceiling = spread(&ceiling).median;
    let mut floods = Vec::new();
    for second_chance_s in [0, lbx::dataplane::DEFAULT_SECOND_CHANCE_S] {
        let o = flood::run(
            &mut scene,
            Plan {
                established: opts.established,
                established_pps: opts.established_pps,
                flood: opts.flood,
                second_chance_s,
            },
        )?;
        if let Err(e) = &o.accounted {
            problems
                .0
                .push(format!("flood, second chance {second_chance_s} s: {e}"));
        }
        floods.push(o);
    }
    let n = cpus.len();
    print(&single, &cores, ceiling, &floods, &problems, &live, opts, n);
    let mut json = to_json(&single, &cores, &floods, &problems, &live, opts, n);
    json["host_ceiling_ratio"] = json!(ceiling);
    Ok(json)
}

fn median_of(single: &[SingleRow], name: &str) -> Option<f64> {
    single
        .iter()
        .find(|r| r.fixture.name == name)
        .map(|r| spread(&r.mpps).median)
}

#[expect(clippy::too_many_arguments, reason = "one call, every table's inputs")]
fn print(
    single: &[SingleRow],
    cores: &[CoresRow],
    ceiling: f64,
    floods: &[Outcome],
    problems: &Problems,
    live: &Result<String, String>,
    opts: &Options,
    n: usize,
) {
    println!();
    println!(
        "Packet rates, one CPU: Mpps of frames that arrived back, native XDP on a veth, sent \
         by AF_PACKET sockets ({} rounds x {} ms; median [p10-p90]); live frames: {}",
        opts.rounds,
        opts.each.as_millis(),
        match live {
            Ok(s) | Err(s) => s,
        }
    );
    println!(
        "| {:<41} | {:>6} | {:>13} | {:>8} | {:>8} | {:>10} |",
        "fixture", "Mpps", "p10-p90", "/ XDP_TX", "/ fwd", "+ns vs fwd"
    );
    println!(
        "|{:-<43}|{:->8}|{:->15}|{:->10}|{:->10}|{:->12}|",
        "", "", "", "", "", ""
    );
    let tx = median_of(single, TX4).unwrap_or(f64::NAN);
    for r in single {
        let s = spread(&r.mpps);
        let fwd = median_of(single, r.fixture.floor).unwrap_or(f64::NAN);
        let target = if r.fixture.target == Target::Balancer {
            if s.median / fwd >= 0.6 { " ok" } else { " LOW" }
        } else {
            ""
        };
        println!(
            "| {:<41} | {:>6.3} | {:>13} | {:>7.2}x | {:>5.2}x{target:<3} | {:>10.0} |",
            r.fixture.name,
            s.median,
            format!("{:.3}-{:.3}", s.p10, s.p90),
            s.median / tx,
            s.median / fwd,
            1e3 / s.median - 1e3 / fwd,
        );
    }
    println!();
    println!("Every CPU at once ({n} CPUs, each on a veth pair of its own): aggregate Mpps");
    println!(
        "| {:<45} | {:>8} | {:>8} | {:>13} | {:>7} |",
        "mode", "one CPU", "all CPUs", "ratio to one", "target"
    );
    println!(
        "|{:-<47}|{:->10}|{:->10}|{:->15}|{:->9}|",
        "", "", "", "", ""
    );
    for r in cores {
        let (one, all) = (spread(&r.one).median, spread(&r.all).median);
        let target = match r.mode.target() {
            Some(t) if all / one >= t * n as f64 => format!("{:.2}N ok", t),
            Some(t) => format!("{:.2}N LOW", t),
            None => String::new(),
        };
        println!(
            "| {:<45} | {one:>8.3} | {all:>8.3} | {:>6.2}x ({:.2}N) | {target:>7} |",
            r.mode.name(),
            all / one,
            all / one / n as f64
        );
    }
    println!(
        "| {:<45} | {:>8} | {:>8} | {:>6.2}x ({:.2}N) | {:>7} |",
        "host ceiling: a counting loop on every CPU",
        "",
        "",
        ceiling,
        ceiling / n as f64,
        ""
    );
    println!();
    println!(
        "A flood of new flows: SYNs from spoofed sources on one CPU for {} ms, {} established \
         TCP flows at {} frames/s on another, one backend added halfway",
        opts.flood.as_millis(),
        opts.established,
        opts.established_pps
    );
    println!(
        "| {:<15} | {:>10} | {:>12} | {:>14} | {:>12} | {:>10} | {:>15} |",
        "second chance",
        "flood Mpps",
        "table used",
        "entries lost",
        "missing at end",
        "est. fps",
        "changed backend"
    );
    println!(
        "|{:-<17}|{:->12}|{:->14}|{:->16}|{:->14}|{:->12}|{:->17}|",
        "", "", "", "", "", "", ""
    );
    for o in floods {
        println!(
            "| {:<15} | {:>10.3} | {:>11.1}% | {:>14} | {:>14} | {:>10.0} | {:>8} {:>5.2}% {} |",
            format!("{} s", o.second_chance_s),
            o.flood_mpps,
            100.0 * o.occupied as f64 / o.slots as f64,
            o.entries_lost,
            o.missing_at_end,
            o.established_pps,
            o.changed_backend,
            100.0 * o.changed_share(),
            if o.changed_share() <= 0.01 {
                "ok"
            } else {
                "HIGH"
            }
        );
    }
    println!();
    println!(
        "Connection table: {} bytes per slot (one cache line); `lbx run --flows N` rounds N up \
         to a power of two (default 2^20, at most 2^26)",
        size_of::<FlowSlot>()
    );
    for (flows, slots, bytes) in memory_rows() {
        println!(
            "  --flows {flows:>10}: {slots:>10} slots, {:>7.0} MiB",
            bytes as f64 / (1 << 20) as f64
        );
    }
    if problems.0.is_empty() {
        println!("every frame of every run accounted for");
    } else {
        println!("FRAMES NOT ACCOUNTED FOR:\n  {}", problems.0.join("\n  "));
    }
}

fn to_json(
    single: &[SingleRow],
    cores: &[CoresRow],
    floods: &[Outcome],
    problems: &Problems,
    live: &Result<String, String>,
    opts: &Options,
    n: usize,
) -> Value {
    let tx = median_of(single, TX4);
    json!({
        "method": format!(
            "native XDP on veth pairs in a namespace of the bench's own, one pair per CPU; frames \
             sent by AF_PACKET sockets (sendmmsg, {} frames a call, PACKET_QDISC_BYPASS) pinned one \
             per CPU; Mpps of frames that arrived back on the sender's veth (its XDP_DROP sink); \
             {} rounds x {} ms per figure, fixtures interleaved by round",
            opts.batch, opts.rounds, opts.each.as_millis()
        ),
        "cpus": n,
        "live_frames": match live { Ok(s) | Err(s) => s.clone() },
        "one_cpu": single.iter().map(|r| {
            let s = spread(&r.mpps);
            let fwd = median_of(single, r.fixture.floor);
            json!({
                "fixture": r.fixture.name,
                "median_mpps": s.median,
                "p10_mpps": s.p10,
                "p90_mpps": s.p90,
                "ratio_to_xdp_tx": tx.map(|t| s.median / t),
                "floor": r.fixture.floor,
                "ratio_to_forwarder": fwd.map(|f| s.median / f),
                "target_ratio_to_forwarder": (r.fixture.target == Target::Balancer).then_some(0.6),
            })
        }).collect::<Vec<_>>(),
        "all_cpus": cores.iter().map(|r| {
            let (one, all) = (spread(&r.one).median, spread(&r.all).median);
            json!({
                "mode": r.mode.name(),
                "one_cpu_mpps": one,
                "all_cpus_mpps": all,
                "ratio_to_one": all / one,
                "target_ratio_to_one": r.mode.target().map(|t| t * n as f64),
            })
        }).collect::<Vec<_>>(),
        "flood": floods.iter().map(|o| json!({
            "second_chance_s": o.second_chance_s,
            "flood_ms": opts.flood.as_millis() as u64,
            "flood_mpps": o.flood_mpps,
            "established_flows": o.established,
            "established_fps": o.established_pps,
            "table_slots": o.slots,
            "table_used": o.occupied,
            "entries_lost": o.entries_lost,
            "missing_at_end": o.missing_at_end,
            "changed_backend": o.changed_backend,
            "changed_share": o.changed_share(),
            "target_changed_share": 0.01,
        })).collect::<Vec<_>>(),
        "memory": memory_rows().iter().map(|(flows, slots, bytes)| json!({
            "flows": flows, "slots": slots, "bytes": bytes,
        })).collect::<Vec<_>>(),
        "unaccounted": problems.0,
    })
}
