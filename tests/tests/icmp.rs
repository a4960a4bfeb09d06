//! ICMP to VIP addresses: path MTU discovery works through the balancer (a router's
//! fragmentation-needed and packet-too-big errors about a backend's reply reach that
//! backend), and the balancer answers ping to a VIP unless `icmp_echo = false`.
//!
//! Both run in the VMs too: a handful of connections and pings each.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use lbx_tests::topology::{RouterLegs, patience};
use lbx_tests::{CLIENT_V4, CLIENT_V6, Connection, Topology, VIP_V4, VIP_V6, reason_count};

/// The router's links to the client: below the 1500 bytes of the backends' full segments.
const MTU_V4: u16 = 1000;
const MTU_V6: u16 = 1280;
/// Bytes of the large answer: many full segments, each too big for the router's links.
const BULK: usize = 32 * 1024;
/// Time for the whole large answer to arrive. With the errors forwarded the backend resends
/// at once in smaller segments (milliseconds); without them it never arrives (the backends
/// do no MTU probing), so this only bounds the failure.
const DELIVERY_LIMIT: Duration = Duration::from_secs(5);
/// Backends of the PMTU test, each asked for one large answer per family.
const BACKENDS: usize = 3;
/// Echo requests per family and phase.
const PINGS: u16 = 5;

fn sum_counters(topo: &Topology, names: &[&str]) -> u64 {
    let router = topo.router.as_ref().expect("a router");
    let counters = router.netns.snmp_counters().expect("the router's counters");
    names
        .iter()
        .map(|n| {
            *counters
                .get(*n)
                .unwrap_or_else(|| panic!("the router has no counter {n}: {counters:?}"))
        })
        .sum()
}

fn stats_reason(topo: &Topology, reason: &str) -> u64 {
    let stats = topo.lbx_json(&["stats"]).expect("lbx stats");
    reason_count(&stats, reason).expect("a reason counter")
}

#[test]
fn path_mtu_discovery_reaches_the_backend_through_the_balancer_v4_and_v6() {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let topo = Topology::builder()
        .backends(BACKENDS)
        .vip(vip4)
        .vip(vip6)
        .client_behind_router(MTU_V4, MTU_V6)
        .build()
        .expect("failed to build the test topology");
    for vip in [vip4, vip6] {
        topo.add_vip(vip, &[(1, 1), (2, 1), (3, 1)])
            .expect("configure the VIP");
    }
    let legs = topo.router_legs.expect("a router");

    // Small answers fit the router's links: the rig works before any error is needed, and
    // the answers do come back the router's way.
    let rx_before: Vec<u64> = [vip4, vip6]
        .iter()
        .map(|vip| {
            topo.client
                .netns
                .link_counter(RouterLegs::client_iface(vip.ip()), "rx_packets")
                .expect("client counter")
        })
        .collect();
    for vip in [vip4, vip6] {
        let names = topo
            .client()
            .ask_many(vip, &[30_001, 30_002, 30_003])
            .unwrap_or_else(|e| panic!("a small request to {vip} failed: {e:#}"));
        assert_eq!(names.len(), 3);
    }
    for (vip, before) in [vip4, vip6].iter().zip(&rx_before) {
        let iface = RouterLegs::client_iface(vip.ip());
        let after = topo
            .client
            .netns
            .link_counter(iface, "rx_packets")
            .expect("client counter");
        assert!(
            after >= before + 3 * 2,
            "the answers from {vip} should arrive on the client's {iface} from the router: \
             {} packets there",
            after - before
        );
    }

    let errors_before = [
        sum_counters(&topo, &["IcmpOutDestUnreachs"]),
        sum_counters(&topo, &["Icmp6OutPktTooBigs"]),
    ];
    let forwarded_before = stats_reason(&topo, "forwarded_icmp");
    let mut figures = Vec::new();
    for (vip, first_port) in [(vip4, 31_000u16), (vip6, 32_000)] {
        let mtu = legs.mtu_like(vip.ip());
        // One connection to each backend, so that every backend's decapsulation carries an
        // error (in the VMs both kinds: the kernel's tunnels and `lbx decap`).
        let mut conns: Vec<Connection> = Vec::new();
        for port in first_port..first_port + 100 {
            if conns.len() == BACKENDS {
                break;
            }
            let mut conn = topo.client().open(vip, port).expect("open a connection");
            let name = conn.ask().expect("a small answer");
            if !conns
                .iter()
                .any(|c| c.first_answer() == Some(name.as_str()))
            {
                conns.push(conn);
            }
        }
        assert_eq!(
            conns.len(),
            BACKENDS,
            "{vip}: 100 connections should reach every backend"
        );
        for conn in &mut conns {
            let started = Instant::now();
            let name = conn
                .ask_bulk(BULK, patience(DELIVERY_LIMIT))
                .unwrap_or_else(|e| {
                    panic!(
                        "{vip}: a {BULK}-byte answer did not arrive whole over the router's \
                         {mtu}-byte link (its ICMP errors about the backend's full segments \
                         must reach the backend through lbx): {e:#}"
                    )
                });
            let took = started.elapsed();
            let backend = topo.backend_named(&name).expect("a backend's name");

            // The error reached the backend's kernel: its route to the client has the lower
            // path MTU.
            let (family, client): (&str, IpAddr) = match vip.ip() {
                IpAddr::V4(_) => ("-4", CLIENT_V4.into()),
                IpAddr::V6(_) => ("-6", CLIENT_V6.into()),
            };
            let route = backend
                .netns
                .ip(&[family, "route", "get", &client.to_string()])
                .expect("ip route get");
            assert!(
                route.contains(&format!("mtu {mtu}")),
                "{vip}: {name}'s route to the client should have learnt the path MTU {mtu}: \
                 {route}"
            );
            figures.push(format!("{vip} {name} {took:?}"));
        }
    }

    let errors_after = [
        sum_counters(&topo, &["IcmpOutDestUnreachs"]),
        sum_counters(&topo, &["Icmp6OutPktTooBigs"]),
    ];
    let forwarded = stats_reason(&topo, "forwarded_icmp") - forwarded_before;
    let sent = [
        errors_after[0] - errors_before[0],
        errors_after[1] - errors_before[1],
    ];
    let per_family = u64::try_from(BACKENDS).expect("small");
    assert!(
        sent[0] >= per_family && sent[1] >= per_family,
        "the router should have sent fragmentation-needed and packet-too-big errors, at least \
         one to each backend, sent {} and {}",
        sent[0],
        sent[1]
    );
    assert!(
        forwarded >= 2 * per_family,
        "lbx should have forwarded the router's errors to the backends (at least one to each \
         backend per family), counted forwarded_icmp {forwarded}"
    );
    assert!(
        forwarded <= sent[0] + sent[1],
        "lbx forwarded {forwarded} ICMP errors, more than the router's {} sent",
        sent[0] + sent[1]
    );
    eprintln!(
        "{BULK} bytes over MTU {MTU_V4} (IPv4) and {MTU_V6} (IPv6) from each backend: {}; \
         the router sent {} fragmentation-needed and {} packet-too-big errors, lbx \
         forwarded {forwarded}",
        figures.join("; "),
        sent[0],
        sent[1]
    );
}

#[test]
fn ping_to_a_vip_is_answered_by_the_balancer_unless_icmp_echo_is_off() {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let mut topo = Topology::builder()
        .backends(2)
        .vip(vip4)
        .vip(vip6)
        .build()
        .expect("failed to build the test topology");
    for vip in [vip4, vip6] {
        topo.add_vip(vip, &[(1, 1), (2, 1)])
            .expect("configure the VIP");
    }

    let before = stats_reason(&topo, "echo_reply");
    for vip in [vip4, vip6] {
        let answered = topo.client().ping(vip.ip(), PINGS).expect("ping");
        assert_eq!(
            answered,
            PINGS,
            "{}: only {answered} of {PINGS} echo requests answered",
            vip.ip()
        );
    }
    let replies = stats_reason(&topo, "echo_reply") - before;
    assert_eq!(
        replies,
        u64::from(2 * PINGS),
        "lbx should have answered each echo request from XDP"
    );

    // Off: in the configuration file, which the next agent publishes.
    topo.stop_agent().expect("stop the agent");
    let path = topo.config_path();
    let text = std::fs::read_to_string(&path).expect("the saved configuration");
    let text = if text.contains("icmp_echo") {
        text.replace("icmp_echo = true", "icmp_echo = false")
    } else {
        // A top-level key: before the first table.
        format!("icmp_echo = false\n{text}")
    };
    std::fs::write(&path, text).expect("write the configuration");
    topo.start_agent_with(&[]).expect("start the agent");
    let status = topo.lbx_json(&["status"]).expect("lbx status");
    assert_eq!(
        status["icmp_echo"], false,
        "the agent should serve icmp_echo = false: {status}"
    );

    let passed_before = stats_reason(&topo, "pass_not_tcp_udp");
    let replies_before = stats_reason(&topo, "echo_reply");
    for vip in [vip4, vip6] {
        let answered = topo.client().ping(vip.ip(), PINGS).expect("ping");
        assert_eq!(
            answered,
            0,
            "{}: with icmp_echo = false nobody should answer, but {answered} of {PINGS} \
             were",
            vip.ip()
        );
    }
    let passed = stats_reason(&topo, "pass_not_tcp_udp") - passed_before;
    assert!(
        passed >= u64::from(2 * PINGS),
        "the echo requests should be passed to the lb's kernel, counted pass_not_tcp_udp \
         {passed}"
    );
    assert_eq!(
        stats_reason(&topo, "echo_reply"),
        replies_before,
        "no echo reply with icmp_echo = false"
    );
    eprintln!("{replies} echo requests answered by lbx; with icmp_echo = false {passed} passed");
}
