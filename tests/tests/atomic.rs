//! Whole generations under load: while real connections run without pause, the agent
//! publishes generation after generation (weights swinging between extremes, a backend
//! drained and taking flows again: changes that move no established flow, unlike `backend
//! del`, which resets the removed backend's connections by design). No connection may fail, and no packet may meet a half-written
//! table: the data plane counts a ring entry naming an empty backend slot
//! (`drop_bad_ring`) and a packet that found no settings (`pass_no_config`).

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lbx_tests::{Topology, VIP_V4, reason_count, topology::scaled};

/// Generations published during the test (each is one CLI call), before LBX_TEST_SCALE: an
/// emulated VM publishes about one a second, so it may halve them.
const GENERATIONS: usize = 200;

#[test]
fn connections_never_fail_while_generations_are_published() {
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let topo = Topology::builder()
        .backends(3)
        .vip(vip)
        .build()
        .expect("topology");
    topo.add_vip(vip, &[(1, 1), (2, 1), (3, 1)])
        .expect("add VIP");
    let vip_arg = vip.to_string();
    let b1 = topo.backend_addr(1, vip).to_string();
    let b3 = topo.backend_addr(3, vip).to_string();
    let before = topo.lbx_json(&["stats"]).expect("stats");
    let gen_before = before["generation"].as_u64().expect("generation");

    let stop = AtomicBool::new(false);
    let (answered, published) = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            let mut answered = 0usize;
            let mut port = 10_000u16;
            let deadline = Instant::now() + Duration::from_secs(240);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let ports: Vec<u16> = (port..port + 20).collect();
                port = if port > 60_000 { 10_000 } else { port + 20 };
                let names = topo
                    .client()
                    .ask_many(vip, &ports)
                    .unwrap_or_else(|e| panic!("a connection failed during publication: {e:#}"));
                answered += names.len();
            }
            answered
        });
        let mut published = 0;
        for i in 0..scaled(GENERATIONS, GENERATIONS / 2) {
            let r = match i % 4 {
                0 => topo.lbx(&["backend", "weight", &vip_arg, &b1, "65535"]),
                1 => topo.lbx(&["backend", "weight", &vip_arg, &b1, "1"]),
                2 => topo.lbx(&["backend", "drain", &vip_arg, &b3]),
                _ => topo.lbx(&["backend", "drain", &vip_arg, &b3, "--undo"]),
            };
            r.unwrap_or_else(|e| panic!("generation {i}: {e:#}"));
            published += 1;
        }
        stop.store(true, Ordering::Relaxed);
        (traffic.join().expect("traffic thread"), published)
    });

    let after = topo.lbx_json(&["stats"]).expect("stats");
    let generations = after["generation"].as_u64().expect("generation") - gen_before;
    assert_eq!(
        generations, published as u64,
        "every change is one generation"
    );
    for reason in ["drop_bad_ring", "pass_no_config", "drop_no_backend"] {
        let n = reason_count(&after, reason).expect(reason)
            - reason_count(&before, reason).expect(reason);
        assert_eq!(n, 0, "{n} packets met {reason} while generations changed");
    }
    assert!(
        answered >= 200,
        "only {answered} connections ran during {published} generations"
    );
    eprintln!("{answered} connections answered, none failed, across {generations} generations");
}
