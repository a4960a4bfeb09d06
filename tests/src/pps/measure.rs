//! The packet-rate figures: each fixture on one CPU against the floors, and the balancer
//! on every CPU at once against one CPU. A figure is of frames that arrived back on the
//! sending side (the sink's veth counted them), over the wall time of the run; every run
//! is also accounted for (`account`), and a run whose frames do not add up is reported.

use std::time::Duration;

use anyhow::Result;

use super::{
    scene::{Scene, Shape, Target},
    sender::Flows,
    workers::{Ran, Stop},
};

/// Flows of the table-hit fixtures, and of each new-flow sequence (one per CPU).
pub const HIT_FLOWS: u32 = 4096;
pub const NEW_FLOWS: u32 = 1 << 22;
const HIT_BASE: u32 = 0x0a80_0000;
const NEW_BASE: u32 = 0x2000_0000;

pub const TX4: &str = "floor: XDP_TX only, IPv4 TCP";
pub const FWD4: &str = "floor: minimal forwarder, IPv4 TCP";
pub const FWD6: &str = "floor: minimal forwarder, IPv6 TCP";

#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: &'static str,
    pub target: Target,
    pub shape: Shape,
    /// A new flow every frame (else `HIT_FLOWS` flows in turn).
    pub new_flows: bool,
    /// The forwarder floor of its family.
    pub floor: &'static str,
}

fn fixture(
    name: &'static str,
    target: Target,
    (v6, tcp): (bool, bool),
    new_flows: bool,
) -> Fixture {
    Fixture {
        name,
        target,
        shape: Shape {
            v6,
            tcp,
            syn: false,
            flood_vip: false,
        },
        new_flows,
        floor: if v6 { FWD6 } else { FWD4 },
    }
}

pub fn fixtures() -> Vec<Fixture> {
    use Target::*;
    vec![
        fixture(TX4, Tx, (false, true), false),
        fixture(FWD4, Forwarder, (false, true), false),
        fixture(FWD6, Forwarder, (true, true), false),
        fixture(
            "IPv4 TCP VIP, table hit (4096 flows)",
            Balancer,
            (false, true),
            false,
        ),
        fixture(
            "IPv4 TCP VIP, new flow every frame",
            Balancer,
            (false, true),
            true,
        ),
        fixture(
            "IPv4 UDP VIP, table hit (4096 flows)",
            Balancer,
            (false, false),
            false,
        ),
        fixture(
            "IPv6 TCP VIP, table hit (4096 flows)",
            Balancer,
            (true, true),
            false,
        ),
        fixture(
            "IPv6 TCP VIP, new flow every frame",
            Balancer,
            (true, true),
            true,
        ),
    ]
}

/// The flows CPU number `i` (of a run) sends: its own, or the same as every other's.
fn flows(new_flows: bool, shared: bool, i: usize, round: usize) -> Flows {
    let own = if shared { 0 } else { i as u32 };
    if new_flows {
        // A fresh range every round: a new flow is never one the table saw.
        Flows {
            base: NEW_BASE + (own << 26) + ((round as u32 % 16) << 22),
            span: NEW_FLOWS,
        }
    } else {
        Flows {
            base: HIT_BASE + (own << 16),
            span: HIT_FLOWS,
        }
    }
}

/// One timed run; the accounting error, if the frames do not add up.
pub struct Measured {
    pub ran: Ran,
    pub arrived: u64,
    pub accounted: Result<(), String>,
}

impl Measured {
    pub fn mpps(&self) -> f64 {
        self.ran.mpps(self.arrived)
    }
}

/// Runs `fx` on `cpus` at once (each its own flows, or all the same) for `stop`, after
/// an untimed pass over the hit flows so that they are established.
pub fn run(
    scene: &mut Scene,
    fx: &Fixture,
    cpus: &[usize],
    shared: bool,
    round: usize,
    stop: Stop,
) -> Result<Measured> {
    scene.attach(fx.target)?;
    let frame = super::scene::frame(fx.shape);
    let jobs = scene.jobs(cpus, &frame, |i| flows(fx.new_flows, shared, i, round));
    if !fx.new_flows && fx.target == Target::Balancer {
        let pass = u64::from(HIT_FLOWS).div_ceil(scene.batch as u64);
        scene.run(&jobs, Stop::Batches(pass))?;
    }
    let (ran, tally) = scene.run(&jobs, stop)?;
    let accounted = tally.check(ran.total(), fx.target == Target::Balancer);
    Ok(Measured {
        arrived: tally.wire.arrived,
        ran,
        accounted,
    })
}

/// Median, 10th and 90th percentiles.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
}

pub fn spread(values: &[f64]) -> Spread {
    let mut s = values.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    if s.is_empty() {
        return Spread::default();
    }
    Spread {
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
    }
}

/// Every run's accounting problems, by fixture.
#[derive(Default, Debug)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn note(&mut self, what: &str, m: &Measured) {
        if let Err(e) = &m.accounted {
            self.0.push(format!("{what}: {e}"));
        }
    }
}

/// One fixture's rounds on one CPU.
pub struct SingleRow {
    pub fixture: Fixture,
    pub mpps: Vec<f64>,
}

/// Every fixture on the first CPU, fixtures in turn round by round.
pub fn single_core(
    scene: &mut Scene,
    rounds: usize,
    each: Duration,
    problems: &mut Problems,
) -> Result<Vec<SingleRow>> {
    let cpu = [super::workers::cpus()?[0]];
    let mut rows: Vec<SingleRow> = fixtures()
        .into_iter()
        .map(|fixture| SingleRow {
            fixture,
            mpps: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        for row in &mut rows {
            let m = run(scene, &row.fixture, &cpu, false, round, Stop::After(each))?;
            problems.note(row.fixture.name, &m);
            row.mpps.push(m.mpps());
        }
    }
    Ok(rows)
}

/// The all-cores modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// (a) each CPU its own established flows.
    Distinct,
    /// (b) every CPU the same established flows.
    Shared,
    /// (c) every CPU a new flow every frame.
    NewFlows,
    /// The XDP_TX floor, each CPU its own flows: what the rig itself scales to.
    Floor,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Distinct, Mode::Shared, Mode::NewFlows, Mode::Floor];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Distinct => "(a) each CPU its own flows (table hits)",
            Mode::Shared => "(b) every CPU the same flows (table hits)",
            Mode::NewFlows => "(c) every CPU new flows (a miss every frame)",
            Mode::Floor => "floor: XDP_TX only, each CPU its own flows",
        }
    }

    /// The target for all CPUs as a share of N x one CPU.
    pub fn target(self) -> Option<f64> {
        match self {
            Mode::Distinct => Some(0.9),
            Mode::Shared => Some(0.75),
            _ => None,
        }
    }

    fn fixture(self) -> Fixture {
        let (target, new_flows) = match self {
            Mode::Floor => (Target::Tx, false),
            Mode::NewFlows => (Target::Balancer, true),
            _ => (Target::Balancer, false),
        };
        Fixture {
            name: self.name(),
            target,
            shape: Shape::TCP4,
            new_flows,
            floor: FWD4,
        }
    }
}

pub struct CoresRow {
    pub mode: Mode,
    pub one: Vec<f64>,
    pub all: Vec<f64>,
}

/// Each mode on the first CPU alone, then on every CPU at once, round by round.
pub fn all_cores(
    scene: &mut Scene,
    rounds: usize,
    each: Duration,
    problems: &mut Problems,
) -> Result<Vec<CoresRow>> {
    let cpus = super::workers::cpus()?;
    let mut rows: Vec<CoresRow> = Mode::ALL
        .into_iter()
        .map(|mode| CoresRow {
            mode,
            one: Vec::new(),
            all: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        for row in &mut rows {
            let fx = row.mode.fixture();
            let shared = row.mode == Mode::Shared;
            let m = run(scene, &fx, &cpus[..1], shared, 2 * round, Stop::After(each))?;
            problems.note(&format!("{} (one CPU)", fx.name), &m);
            row.one.push(m.mpps());
            let m = run(scene, &fx, &cpus, shared, 2 * round + 1, Stop::After(each))?;
            problems.note(&format!("{} (all CPUs)", fx.name), &m);
            row.all.push(m.mpps());
        }
    }
    Ok(rows)
}

/// What the host itself gives to every CPU at once: a loop that only counts, pinned on
/// each CPU, against the same loop on one. On a host whose CPUs share a core, or whose
/// CPUs other guests use, no program scales beyond this.
pub fn spin_ceiling(each: Duration) -> Result<f64> {
    let cpus = super::workers::cpus()?;
    let spin = |on: &[usize]| -> Result<u64> {
        std::thread::scope(|s| {
            let threads: Vec<_> = on
                .iter()
                .map(|&cpu| {
                    s.spawn(move || -> Result<u64> {
                        super::workers::pin(cpu)?;
                        let start = std::time::Instant::now();
                        let mut n = 0u64;
                        while start.elapsed() < each {
                            for _ in 0..1000 {
                                n = std::hint::black_box(n + 1);
                            }
                        }
                        Ok(n)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .sum()
        })
    };
    let one = spin(&cpus[..1])?;
    let all = spin(&cpus)?;
    Ok(all as f64 / one.max(1) as f64)
}
