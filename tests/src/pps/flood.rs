//! A flood of new flows: spoofed SYNs to one VIP as fast as one CPU sends them, while
//! established flows of another VIP send steadily from another CPU, and halfway through
//! the flood the established flows' VIP gets one more backend. What it costs them: how
//! often they lost their connection-table entry (the flood took the slot), and how many
//! changed backend because of it (a lost entry takes the ring again, and the ring
//! changed). The second chance (`--second-chance-s`) sends an established TCP flow that
//! lost its entry to the backend the ring gave before the change; the flood runs with it
//! off and on.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lbx::config::{Protocol, VipId};
use lbx_common::flows::FLOW_WAYS;
use std::net::Ipv4Addr;

use super::{
    account::Tally,
    scene::{self, BACKENDS, Scene, Shape, Target, VIP4, key4},
    sender::Flows,
    workers::{self, Job, Stop},
};
use crate::reference::Verdict;

const ESTABLISHED_BASE: u32 = 0x0a40_0000;
const FLOOD_BASE: u32 = 0x4000_0000;

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Established flows, and the frames per second they send together.
    pub established: u32,
    pub established_pps: f64,
    /// How long the flood lasts; the backend is added halfway.
    pub flood: Duration,
    /// `--second-chance-s` of the configurations published.
    pub second_chance_s: u32,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub second_chance_s: u32,
    pub established: u32,
    /// Rates over the flood: SYNs and established frames that arrived back.
    pub flood_mpps: f64,
    pub established_pps: f64,
    /// Slots in use when the flood ended, of all slots.
    pub occupied: u64,
    pub slots: u64,
    /// Times an established flow lost its entry: re-inserted during the flood (new flows
    /// of its VIP) or missing when the flood ended.
    pub entries_lost: u64,
    /// Established flows missing from the table when the flood ended.
    pub missing_at_end: u64,
    /// Established flows whose next packet, after the flood, goes to another backend than
    /// their packet before it did.
    pub changed_backend: u64,
    /// Frames that do not add up, if any.
    pub accounted: Result<(), String>,
}

impl Outcome {
    pub fn changed_share(&self) -> f64 {
        self.changed_backend as f64 / f64::from(self.established.max(1))
    }
}

fn established_vip() -> VipId {
    VipId {
        address: IpAddr::V4(VIP4),
        port: 80,
        protocol: Protocol::Tcp,
    }
}

/// Whether the table holds each established flow now.
fn held(scene: &Scene, n: u32) -> Vec<bool> {
    (0..n)
        .map(|i| {
            let key = key4(ESTABLISHED_BASE + i, VIP4);
            scene.tb.bal.flow(&key, scene::SEED).is_some()
        })
        .collect()
}

/// The backend the next packet of each established flow goes to: one frame of each
/// through the balancer (BPF_PROG_TEST_RUN), its outer destination address.
fn next_backends(scene: &Scene, n: u32) -> Result<Vec<Option<Ipv4Addr>>> {
    (0..n)
        .map(|i| {
            let frame = scene::frame_from(Shape::TCP4, ESTABLISHED_BASE + i);
            let run = scene.tb.run(&frame)?;
            Ok(run
                .filter(|r| r.verdict() == Some(Verdict::Tx))
                .and_then(|r| {
                    r.output
                        .get(30..34)
                        .map(|d| Ipv4Addr::new(d[0], d[1], d[2], d[3]))
                }))
        })
        .collect()
}

pub fn run(scene: &mut Scene, plan: Plan) -> Result<Outcome> {
    let cpus = workers::cpus()?;
    let (flood_cpu, steady_cpu) = (cpus[0], cpus[1 % cpus.len()]);
    scene.attach(Target::Balancer)?;
    scene.tb.clear_flows()?;
    scene.tb.idle.second_chance_s = plan.second_chance_s;
    // Twice: the generation before is then the same ring too, so the flood starts with
    // no change of ring behind it (a run before may have left another).
    scene.tb.configure(&scene::config(BACKENDS))?;
    scene.tb.configure(&scene::config(BACKENDS))?;
    let vip = scene
        .tb
        .vip_number(established_vip())
        .context("the established flows' VIP is configured")?;
    let steady = Job {
        cpu: steady_cpu,
        pair: 1 % scene.rig.pairs.len(),
        frame: scene::frame(Shape::TCP4),
        flows: Flows {
            base: ESTABLISHED_BASE,
            span: plan.established,
        },
        pace: Some(plan.established_pps),
    };
    // Establish every flow once, unpaced and alone.
    let pass = u64::from(plan.established).div_ceil(scene.batch as u64);
    let warm = Job {
        pace: None,
        ..steady.clone()
    };
    scene.run(std::slice::from_ref(&warm), Stop::Batches(pass))?;
    let before = next_backends(scene, plan.established)?;
    let new_before = scene.tb.vip_counters(vip)?.new_flows;

    let flood = Job {
        cpu: flood_cpu,
        pair: 0,
        frame: scene::frame(Shape {
            v6: false,
            tcp: true,
            syn: true,
            flood_vip: true,
        }),
        flows: Flows {
            base: FLOOD_BASE,
            span: 1 << 24,
        },
        pace: None,
    };
    let tally_before = Tally::read(scene)?;
    let Scene { tb, rig, batch, .. } = &mut *scene;
    let jobs = [flood, steady];
    let (ran, agent) = std::thread::scope(|s| {
        let workers = s.spawn(|| workers::run(rig, &jobs, *batch, Stop::After(plan.flood)));
        // The agent meanwhile: its clock ticks every second, and halfway through the
        // flood the established flows' VIP gets one more backend.
        let agent = (|| -> Result<()> {
            let start = Instant::now();
            let mut added = false;
            while start.elapsed() < plan.flood {
                std::thread::sleep(Duration::from_millis(50));
                let now = tb.clock();
                if start.elapsed().as_secs() + 1 > u64::from(now) {
                    tb.tick(now + 1)?;
                }
                if !added && start.elapsed() >= plan.flood / 2 {
                    tb.configure(&scene::config(BACKENDS + 1))
                        .context("add a backend during the flood")?;
                    added = true;
                }
            }
            Ok(())
        })();
        match workers.join() {
            Ok(r) => (r, agent),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    let ran = ran?;
    agent?;
    let tally = Tally::read_settled(scene)?.since(&tally_before);

    let slots = scene.tb.bal.flows.len() as u64;
    let occupied = (0..scene.tb.bal.flows.len())
        .filter(|&i| scene.tb.bal.flows.get(i).is_some_and(|s| s.check != 0))
        .count() as u64;
    debug_assert_eq!(slots % u64::from(FLOW_WAYS), 0);
    let missing_at_end = held(scene, plan.established)
        .iter()
        .filter(|h| !**h)
        .count() as u64;
    let new_during = scene.tb.vip_counters(vip)?.new_flows - new_before;
    let after = next_backends(scene, plan.established)?;
    let changed_backend = before.iter().zip(&after).filter(|(b, a)| b != a).count() as u64;
    // Of the established frames, the share that arrived is the one the flood run sent
    // (both jobs' frames go through the same balancer; split by the workers' counts).
    let total = ran.total().max(1);
    let arrived = tally.wire.arrived as f64;
    Ok(Outcome {
        second_chance_s: plan.second_chance_s,
        established: plan.established,
        flood_mpps: arrived * ran.frames[0] as f64 / total as f64 / ran.wall.as_secs_f64() / 1e6,
        established_pps: arrived * ran.frames[1] as f64 / total as f64 / ran.wall.as_secs_f64(),
        occupied,
        slots,
        entries_lost: new_during + missing_at_end,
        missing_at_end,
        changed_backend,
        accounted: tally.check(ran.total(), true),
    })
}
