//! The test rig itself, without lbx: hosts reach each other on the link, and everything is
//! cleaned up, also when a test panics.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;

use lbx_tests::{DIRECT_PORT, LB_V4, LB_V6, Topology, VIP_V4, VIP_V6, netns};

fn rig() -> Topology {
    Topology::builder()
        .backends(3)
        .vip(SocketAddr::new(VIP_V4.into(), 80))
        .vip(SocketAddr::new(VIP_V6.into(), 80))
        .without_lbx()
        .build()
        .expect("failed to build the test topology")
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn client_reaches_each_backend_directly_over_tcp_v4_and_v6() {
    let topo = rig();
    for b in &topo.backends {
        for addr in [IpAddr::V4(b.ipv4), IpAddr::V6(b.ipv6)] {
            let dst = SocketAddr::new(addr, DIRECT_PORT);
            let name = topo
                .client()
                .ask(dst, 0)
                .unwrap_or_else(|e| panic!("client -> {dst}: {e:#}"));
            assert_eq!(
                name, b.name,
                "{dst} answered as {name}, expected {}",
                b.name
            );
        }
    }
    // The lb answers ping on both families (its kernel handles everything without lbx).
    for addr in [IpAddr::V4(LB_V4), IpAddr::V6(LB_V6)] {
        let answered = topo.client().ping(addr, 3).expect("ping");
        assert_eq!(answered, 3, "ping {addr}: {answered} of 3 answered");
    }
}

#[test]
fn everything_is_removed_on_drop_and_on_panic() {
    // Normal drop.
    let topo = rig();
    let names = topo.namespace_names();
    let pids = topo.pids();
    let dir = topo.dir().to_owned();
    assert!(
        names
            .iter()
            .all(|n| Path::new("/run/netns").join(n).exists()),
        "namespaces {names:?} should exist while the topology lives"
    );
    assert!(!pids.is_empty() && pids.iter().all(|&p| pid_alive(p)));
    drop(topo);
    let existing = netns::list_test_namespaces();
    assert!(
        names.iter().all(|n| !existing.contains(n)),
        "namespaces left after drop: {existing:?}"
    );
    assert!(
        pids.iter().all(|&p| !pid_alive(p)),
        "processes left after drop"
    );
    assert!(!dir.exists(), "{} left after drop", dir.display());

    // Panic while the topology is alive.
    let seen: Mutex<(Vec<String>, Vec<u32>)> = Mutex::default();
    let result = std::panic::catch_unwind(|| {
        let topo = rig();
        *seen.lock().unwrap() = (topo.namespace_names(), topo.pids());
        panic!("deliberate panic with the topology alive");
    });
    assert!(result.is_err(), "the closure should have panicked");
    let (names, pids) = seen.into_inner().unwrap();
    assert_eq!(
        names.len(),
        6,
        "client, lb, 3 backends and the switch: {names:?}"
    );
    let existing = netns::list_test_namespaces();
    assert!(
        names.iter().all(|n| !existing.contains(n)),
        "namespaces left after a panic: {existing:?}"
    );
    assert!(
        pids.iter().all(|&p| !pid_alive(p)),
        "processes left after a panic"
    );
}
