//! Direct server return: every connection to a VIP succeeds, requests go through lbx, and the
//! replies reach the client straight from the backends, never through the lb.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use lbx_tests::capture::{Capture, format_mac};
use lbx_tests::topology::IFACE;
use lbx_tests::{Topology, VIP_V4, VIP_V6, reason_count, tally};

/// Connections per address family.
const CONNECTIONS: u16 = 100;

#[test]
fn replies_come_straight_from_the_backends_v4_and_v6() {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let topo = Topology::builder()
        .backends(3)
        .vip(vip4)
        .vip(vip6)
        .build()
        .expect("failed to build the test topology");
    for vip in [vip4, vip6] {
        topo.add_vip(vip, &[(1, 1), (2, 1), (3, 1)])
            .expect("configure the VIP");
    }

    let capture = Capture::start(&topo.client.netns, IFACE).expect("start the capture");
    let ports: Vec<u16> = (20_000..20_000 + CONNECTIONS).collect();
    let mut answers = Vec::new();
    for vip in [vip4, vip6] {
        // Fails at the first connection that does not get an answer.
        let names = topo
            .client()
            .ask_many(vip, &ports)
            .unwrap_or_else(|e| panic!("a connection to {vip} failed: {e:#}"));
        let counts = tally(&names);
        assert_eq!(
            counts.keys().cloned().collect::<Vec<_>>(),
            ["backend-1", "backend-2", "backend-3"],
            "{vip}: every backend should answer some of {CONNECTIONS} connections: {counts:?}"
        );
        answers.push((vip, counts));
    }
    let frames = capture.stop().expect("capture");

    // Full-size packets: a 3000-byte line is two 1500-byte packets from the client, which
    // lbx sends on 20 or 40 bytes larger. They must arrive (the links behind the lb have the
    // room) and none may be refused as too big.
    let big_ports: Vec<u16> = (21_000..21_020).collect();
    for vip in [vip4, vip6] {
        let names = topo
            .client()
            .ask_many_padded(vip, &big_ports, 3000)
            .unwrap_or_else(|e| panic!("a full-size request to {vip} failed: {e:#}"));
        assert_eq!(names.len(), big_ports.len());
    }

    let vips: BTreeSet<IpAddr> = [vip4.ip(), vip6.ip()].into();
    let backend_macs: BTreeSet<[u8; 6]> = topo.backends.iter().map(|b| b.mac).collect();
    let lb_mac = topo.lb.mac;
    let client_mac = topo.client.mac;

    // Requests: the client sends VIP traffic to the lb (its route for the VIP prefixes).
    let requests: Vec<_> = frames
        .iter()
        .filter(|f| f.outgoing && f.dst_ip.is_some_and(|ip| vips.contains(&ip)))
        .collect();
    assert!(
        requests.len() >= 2 * 3 * usize::from(CONNECTIONS),
        "expected at least SYN, ACK and data of each of {} connections on the client's wire, \
         saw {} frames",
        2 * CONNECTIONS,
        requests.len()
    );
    assert!(
        requests.iter().all(|f| f.dst_mac == lb_mac),
        "every request to a VIP should be sent to the lb's MAC {}",
        format_mac(&lb_mac)
    );

    // Replies: from the VIP, carrying a backend's source MAC. Through the lb they would carry
    // the lb's MAC instead, which is what this fails on.
    let replies: Vec<_> = frames
        .iter()
        .filter(|f| !f.outgoing && f.src_ip.is_some_and(|ip| vips.contains(&ip)))
        .collect();
    assert!(
        replies.len() >= 2 * 2 * usize::from(CONNECTIONS),
        "expected at least a SYN-ACK and an answer per connection ({} connections), saw {} \
         reply frames",
        2 * CONNECTIONS,
        replies.len()
    );
    let via_lb = replies.iter().filter(|f| f.src_mac == lb_mac).count();
    assert_eq!(
        via_lb,
        0,
        "{via_lb} of {} replies came from the lb's MAC {}: not direct server return",
        replies.len(),
        format_mac(&lb_mac)
    );
    for f in &replies {
        assert!(
            backend_macs.contains(&f.src_mac),
            "a reply from {:?} carries source MAC {}, which is no backend's",
            f.src_ip,
            format_mac(&f.src_mac)
        );
        assert_eq!(f.dst_mac, client_mac, "a reply went to another MAC");
    }
    // Each backend answered directly, on both families.
    for vip in &vips {
        let macs: BTreeSet<[u8; 6]> = replies
            .iter()
            .filter(|f| f.src_ip == Some(*vip))
            .map(|f| f.src_mac)
            .collect();
        assert_eq!(
            macs, backend_macs,
            "replies from {vip} should come from all three backends' MACs"
        );
    }

    // And lbx forwarded the requests (they did not reach the backends some other way).
    let stats = topo.lbx_json(&["stats"]).expect("lbx stats");
    let forwarded = reason_count(&stats, "forwarded").expect("forwarded");
    assert!(
        forwarded >= 3 * 2 * u64::from(CONNECTIONS),
        "lbx should have forwarded at least SYN, ACK and data of each connection, counted \
         {forwarded}"
    );
    let too_big = reason_count(&stats, "drop_too_big").expect("drop_too_big");
    assert_eq!(
        too_big, 0,
        "lbx dropped {too_big} packets as too big for the link"
    );
    eprintln!(
        "answers: {answers:?}; {} requests, {} replies",
        requests.len(),
        replies.len()
    );
}
