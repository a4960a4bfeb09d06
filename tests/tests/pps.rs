//! The packet-rate rig of `cargo xtask bench` (`lbx_tests::pps`): the balancer attached as
//! native XDP to veths in a namespace of the test's own, frames sent from AF_PACKET
//! sockets, on one CPU and then on every CPU at once while they race on the connection
//! table. Every frame sent must be counted exactly once: by the veth that dropped it
//! before the program, or by the balancer's reason counters, and every frame the
//! balancer sent by the sink that received it or the veth that dropped it. Nothing is
//! timed here; the bench reports the rates.

use lbx_common::Reason;
use lbx_tests::pps::{
    measure::{self, Fixture, Problems},
    scene::{Scene, Shape, Target},
    workers::{self, Stop},
};

/// Small: the VM tier runs this under TCG.
const FLOWS: u32 = 1 << 14;
const BATCH: usize = 32;
const BATCHES: u64 = 40;

fn fixture(target: Target, new_flows: bool) -> Fixture {
    Fixture {
        name: "test",
        target,
        shape: Shape::TCP4,
        new_flows,
        floor: measure::FWD4,
    }
}

#[test]
fn every_frame_is_counted_once_on_one_cpu_and_on_all_at_once() {
    let mut scene = Scene::new(FLOWS, BATCH).expect("set up the balancer and the rig");
    let cpus = workers::cpus().unwrap();
    let frames = BATCHES * BATCH as u64;
    let mut problems = Problems::default();
    let cases = [
        (fixture(Target::Tx, false), false),
        (fixture(Target::Forwarder, false), false),
        (fixture(Target::Balancer, false), false),
        (fixture(Target::Balancer, true), false),
        (fixture(Target::Balancer, false), true),
        (fixture(Target::Balancer, true), true),
    ];
    for (round, (fx, all)) in cases.iter().enumerate() {
        let on = if *all { &cpus[..] } else { &cpus[..1] };
        // Established flows: every CPU the same ones (they race on the same sets);
        // new flows: each CPU its own, all inserting at once.
        let shared = !fx.new_flows;
        let before = scene.tb.reasons().unwrap();
        let m = measure::run(&mut scene, fx, on, shared, round, Stop::Batches(BATCHES)).unwrap();
        let what = format!(
            "{:?}, new flows {}, {} CPUs",
            fx.target,
            fx.new_flows,
            on.len()
        );
        problems.note(&what, &m);
        assert_eq!(
            m.ran.total(),
            frames * on.len() as u64,
            "{what}: the sockets took every frame"
        );
        if fx.target == Target::Balancer {
            let after = scene.tb.reasons().unwrap();
            let forwarded = after[Reason::Forwarded as usize] - before[Reason::Forwarded as usize];
            assert!(
                forwarded >= m.ran.total(),
                "{what}: every frame of the timed run is forwarded, {forwarded} of {}",
                m.ran.total()
            );
        }
        assert!(m.arrived > 0, "{what}: nothing arrived on the sink");
    }
    // Live frames, where the kernel runs them (this host's refuses; the VMs' kernels may
    // not): the XDP_TX floor's frames must all arrive.
    match scene.live(Target::Tx, Shape::TCP4, BATCH as u32).unwrap() {
        Ok(tally) => assert_eq!(
            (tally.wire.arrived, tally.wire.lost_after),
            (BATCH as u64, 0),
            "live frames of the XDP_TX floor: {tally:?}"
        ),
        Err(e) => eprintln!("live frames not checked: the kernel refuses them ({e})"),
    }
    assert!(
        problems.0.is_empty(),
        "frames not accounted for:\n{}",
        problems.0.join("\n")
    );
}
