//! Whole generations under load: while real connections run without pause, the agent
//! publishes generation after generation (weights swinging between extremes, a backend
//! drained and taking flows again: changes that move no established flow, unlike `backend
//! del`, which resets the removed backend's connections by design). No connection may fail,
//! no open connection may change backend, and no packet may meet a half-written table: the
//! data plane counts a ring entry naming an empty backend slot (`drop_bad_ring`), a VIP
//! without a backend (`drop_no_backend`) and a packet that found no settings
//! (`pass_no_config`).
//!
//! Client ports: every new connection binds its own source port from a range of its
//! thread's (SO_REUSEADDR) and ends with a reset (SO_LINGER 0), so no TIME_WAIT holds a
//! port and a range is reused only after tens of thousands of connections.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lbx::{
    agent::{api::Request, socket},
    config::VipId,
};
use lbx_tests::{Connection, Topology, VIP_V4, reason_count, topology::scaled};

/// Generations published during the test, before LBX_TEST_SCALE (an emulated VM publishes
/// far more slowly and may do fewer).
const GENERATIONS: usize = 1000;
/// Threads making new connections all along, each from its own range of source ports.
const CLIENT_THREADS: u16 = 2;
const PORTS_PER_THREAD: u16 = 25_000;
const FIRST_PORT: u16 = 10_000;
/// Connections opened before the first publication and asked again all along: each must
/// keep its backend through every generation.
const LONG_LIVED: u16 = 12;
/// Limit for the traffic threads, should the publisher hang.
const TRAFFIC_LIMIT: Duration = Duration::from_secs(600);

/// What one traffic thread saw.
#[derive(Default)]
struct Traffic {
    answered: usize,
    failures: Vec<String>,
}

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
    let id: VipId = format!("{vip}/tcp").parse().expect("VIP id");
    let b1 = topo.backend_addr(1, vip);
    let b3 = topo.backend_addr(3, vip);
    // Long-lived connections, from ports below the new connections' ranges.
    let long_ports: Vec<u16> = (FIRST_PORT - LONG_LIVED..FIRST_PORT).collect();
    let mut long_lived = topo
        .client()
        .open_many(vip, &long_ports)
        .expect("long-lived connections");
    let before = topo.lbx_json(&["stats"]).expect("stats");
    let gen_before = before["generation"].as_u64().expect("generation");
    let generations = scaled(GENERATIONS, 100);

    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (traffic, published, long_checked) = std::thread::scope(|s| {
        let threads: Vec<_> = (0..CLIENT_THREADS)
            .map(|t| {
                let (topo, stop) = (&topo, &stop);
                s.spawn(move || {
                    let first = FIRST_PORT + t * PORTS_PER_THREAD;
                    topo.client
                        .netns
                        .run(|| new_connections(vip, first, stop))
                        .expect("enter the client's namespace")
                })
            })
            .collect();
        // The long-lived connections are asked in turn between publications.
        let mut long_checked = 0usize;
        let mut published = 0;
        for i in 0..generations {
            let req = match i % 4 {
                0 => Request::BackendWeight {
                    vip: id,
                    address: b1,
                    weight: 65535,
                },
                1 => Request::BackendWeight {
                    vip: id,
                    address: b1,
                    weight: 1,
                },
                2 => Request::BackendDrain {
                    vip: id,
                    address: b3,
                    drain: true,
                },
                _ => Request::BackendDrain {
                    vip: id,
                    address: b3,
                    drain: false,
                },
            };
            socket::call(topo.socket(), &req)
                .unwrap_or_else(|e| panic!("generation {i} ({req:?}): {e}"));
            published += 1;
            let n = long_lived.len();
            let conn = &mut long_lived[i % n];
            let first = conn.first_answer().map(str::to_owned);
            match conn.ask() {
                Ok(name) if Some(&name) == first.as_ref() => long_checked += 1,
                Ok(name) => panic!(
                    "the connection from port {} moved from {first:?} to {name} at generation {i}",
                    conn.src_port()
                ),
                Err(e) => panic!("a long-lived connection failed at generation {i}: {e:#}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let traffic: Vec<Traffic> = threads
            .into_iter()
            .map(|t| t.join().expect("traffic thread"))
            .collect();
        (traffic, published, long_checked)
    });
    let elapsed = started.elapsed();

    let after = topo.lbx_json(&["stats"]).expect("stats");
    let made = after["generation"].as_u64().expect("generation") - gen_before;
    assert_eq!(made, published as u64, "every change is one generation");
    let failures: Vec<&String> = traffic.iter().flat_map(|t| &t.failures).collect();
    let answered: usize = traffic.iter().map(|t| t.answered).sum();
    assert!(
        failures.is_empty(),
        "{} of {} new connections failed during {published} generations; the first: {}",
        failures.len(),
        answered + failures.len(),
        failures[0]
    );
    let mut partial = Vec::new();
    for reason in ["drop_bad_ring", "pass_no_config", "drop_no_backend"] {
        let n = reason_count(&after, reason).expect(reason)
            - reason_count(&before, reason).expect(reason);
        partial.push(format!("{reason} {n}"));
        assert_eq!(n, 0, "{n} packets met {reason} while generations changed");
    }
    // Traffic ran all along: at least one new connection per generation, from every thread.
    assert!(
        answered >= published && traffic.iter().all(|t| t.answered > 0),
        "only {answered} connections ({:?} per thread) ran during {published} generations",
        traffic.iter().map(|t| t.answered).collect::<Vec<_>>()
    );
    assert_eq!(
        long_checked, published,
        "a long-lived connection asked per generation"
    );
    eprintln!(
        "{published} generations in {:.1} s; {answered} new connections answered, none failed; \
         {LONG_LIVED} long-lived connections asked {long_checked} times, none moved; \
         partial-table packets: {}",
        elapsed.as_secs_f64(),
        partial.join(", ")
    );
}

/// New connections one after the other from ports `first..first + PORTS_PER_THREAD`, round
/// and round, until `stop`; runs inside the client's namespace.
fn new_connections(vip: SocketAddr, first: u16, stop: &AtomicBool) -> Traffic {
    let mut seen = Traffic::default();
    let deadline = Instant::now() + TRAFFIC_LIMIT;
    let mut i = 0u16;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let port = first + i;
        i = (i + 1) % PORTS_PER_THREAD;
        match Connection::open(vip, port).and_then(|mut c| c.ask()) {
            Ok(_) => seen.answered += 1,
            Err(e) => seen.failures.push(format!("{e:#}")),
        }
    }
    seen
}
