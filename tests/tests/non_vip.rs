//! Traffic that is not for a VIP passes through lbx to the lb's own kernel untouched, and is
//! counted as passed.

use std::net::{IpAddr, SocketAddr};

use lbx_tests::{LB_V4, LB_V6, Topology, VIP_V4, VIP_V6, reason_count};

const PINGS: u16 = 5;
const CONNECTIONS: u16 = 10;
/// A port the lb's own listener uses; no VIP has it.
const LB_PORT: u16 = 9000;

#[test]
fn ping_and_tcp_to_the_lb_itself_pass_v4_and_v6() {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let mut topo = Topology::builder()
        .backends(3)
        .vip(vip4)
        .vip(vip6)
        .build()
        .expect("failed to build the test topology");
    // With VIPs configured, so lbx is really looking (not passing for want of config).
    for vip in [vip4, vip6] {
        topo.add_vip(vip, &[(1, 1), (2, 1), (3, 1)])
            .expect("configure the VIP");
    }
    let server = topo.binaries().test_server.clone();
    let listen: Vec<String> = [
        "--name".to_owned(),
        "lb-itself".to_owned(),
        "--listen".to_owned(),
        SocketAddr::new(LB_V4.into(), LB_PORT).to_string(),
        "--listen".to_owned(),
        SocketAddr::new(LB_V6.into(), LB_PORT).to_string(),
    ]
    .into();
    topo.spawn_in_lb("lb-listener", &server, &listen, "listening")
        .expect("start a listener on the lb");

    let before = topo.lbx_json(&["stats"]).expect("lbx stats");
    for addr in [IpAddr::V4(LB_V4), IpAddr::V6(LB_V6)] {
        let answered = topo.client().ping(addr, PINGS).expect("ping");
        assert_eq!(
            answered, PINGS,
            "ping {addr}: {answered} of {PINGS} answered through lbx"
        );

        let dst = SocketAddr::new(addr, LB_PORT);
        let ports: Vec<u16> = (50_000..50_000 + CONNECTIONS).collect();
        let names = topo
            .client()
            .ask_many(dst, &ports)
            .unwrap_or_else(|e| panic!("TCP to the lb's own {dst} failed: {e:#}"));
        assert!(
            names.iter().all(|n| n == "lb-itself"),
            "{dst} should be answered by the lb's own listener: {names:?}"
        );
    }
    let after = topo.lbx_json(&["stats"]).expect("lbx stats");

    let delta = |reason: &str| {
        reason_count(&after, reason).expect("reason")
            - reason_count(&before, reason).expect("reason")
    };
    // An echo request to an address whose VIP filter bit no VIP has stops at the filter,
    // before its transport header is read: not a VIP. Otherwise it passes as not TCP/UDP.
    // (Neighbour discovery adds more of either.)
    let bit = |a: IpAddr| lbx_common::vip_filter_bit(&lbx::addr::to_words(a));
    let vip_bits = bit(VIP_V4.into()) | bit(VIP_V6.into());
    let (mut pings_not_vip, mut pings_not_tcp_udp) = (0, 0);
    for addr in [IpAddr::V4(LB_V4), IpAddr::V6(LB_V6)] {
        if vip_bits & bit(addr) == 0 {
            pings_not_vip += u64::from(PINGS);
        } else {
            pings_not_tcp_udp += u64::from(PINGS);
        }
    }
    let not_tcp_udp = delta("pass_not_tcp_udp");
    assert!(
        not_tcp_udp >= pings_not_tcp_udp,
        "pass_not_tcp_udp grew by {not_tcp_udp}, expected at least the \
         {pings_not_tcp_udp} echo requests to addresses inside the VIP filter"
    );
    // Each connection sends at least SYN, ACK, data and RST to the lb's address.
    let not_vip = delta("pass_not_vip");
    let least = 4 * 2 * u64::from(CONNECTIONS) + pings_not_vip;
    assert!(
        not_vip >= least,
        "pass_not_vip grew by {not_vip}, expected at least {least} (4 packets per \
         connection, and {pings_not_vip} echo requests outside the VIP filter)"
    );
    assert_eq!(
        delta("forwarded"),
        0,
        "lbx forwarded packets that were not for a VIP"
    );
    for vip in after["vips"].as_array().expect("vips") {
        let old = before["vips"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["vip"] == vip["vip"]))
            .expect("same VIPs");
        assert_eq!(
            vip["packets"], old["packets"],
            "VIP {} counted packets that were not for it",
            vip["vip"]
        );
    }
}
