//! The programs `cargo xtask bench` measures besides the balancer do what its table says
//! they do: the minimal forwarder encapsulates, and each stage program of the breakdown
//! runs the balancer's maps up to its stage and sends the frame back unchanged, and the
//! packet-rate floor sends frames back while its sink drops them.

use std::net::{IpAddr, Ipv4Addr};

use lbx::{config::Config, dataplane};
use lbx_common::{FAMILY_V4, FlowKey, PROTO_IPIP, PROTO_TCP, Reason, programs};
use lbx_tests::{
    packets::{self, L4, V4},
    testrun::{TestBalancer, run_once},
};

const RING: u32 = 1021;
const FLOWS: u32 = 4096;
const SEED: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn config() -> Config {
    Config::from_toml(&format!(
        "seed = {SEED}\ntable_size = {RING}\nmtu = 1500\n\
         [[vip]]\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\n\
         backend = [{{ address = \"10.1.0.1\", mac = \"02:00:00:00:01:01\" }}]\n"
    ))
    .expect("test configuration")
}

fn frame(dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    packets::ipv4(&V4::new(CLIENT, dst), L4::tcp(sport, 80), b"payload")
}

fn key(sport: u16) -> FlowKey {
    FlowKey {
        src: [u32::from_ne_bytes(CLIENT.octets()), 0, 0, 0],
        dst: [u32::from_ne_bytes(VIP.octets()), 0, 0, 0],
        sport_be: sport.to_be(),
        dport_be: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
        pad: 0,
    }
}

#[test]
fn stage_programs_share_the_balancers_maps_and_leave_frames_unchanged() {
    lbx::dataplane::sys::raise_memlock_limit();
    let mut tb = TestBalancer::load(RING, FLOWS).expect("load the balancer");
    tb.configure(&config()).expect("configure");
    for (n, stage) in [
        programs::BENCH_UNTIL_FILTER,
        programs::BENCH_UNTIL_VIP,
        programs::BENCH_UNTIL_FLOW,
    ]
    .into_iter()
    .enumerate()
    {
        tb.bal.load_sibling(stage).expect("load the stage program");
        let prog = tb.bal.sibling(stage).expect("loaded");
        let sport = 40_000 + n as u16;
        let input = frame(VIP, sport);
        let before = tb.reasons().unwrap()[Reason::Forwarded as usize];
        let run = run_once(prog, &input).unwrap().expect("frame accepted");
        assert_eq!(
            (run.action, &run.output),
            (XDP_TX, &input),
            "{stage}: VIP frame"
        );
        // The reason counter is the balancer's own map.
        assert_eq!(
            tb.reasons().unwrap()[Reason::Forwarded as usize],
            before + 1,
            "{stage} counts in the balancer's REASONS"
        );
        // Only the last stage reaches the connection table, which it shares too.
        let inserted = tb.bal.flow(&key(sport), SEED).is_some();
        assert_eq!(
            inserted,
            stage == programs::BENCH_UNTIL_FLOW,
            "{stage}: connection-table entry"
        );
        let other = frame(OTHER, sport);
        let run = run_once(prog, &other).unwrap().expect("frame accepted");
        assert_eq!(
            (run.action, &run.output),
            (XDP_PASS, &other),
            "{stage}: not a VIP"
        );
    }
}

#[test]
fn the_forwarder_floor_encapsulates_like_the_balancer() {
    lbx::dataplane::sys::raise_memlock_limit();
    let ebpf = dataplane::load_unattached(programs::BENCH_FORWARD).expect("load the forwarder");
    let prog: &aya::programs::Xdp = ebpf
        .program(programs::BENCH_FORWARD)
        .expect("in the object")
        .try_into()
        .expect("an XDP program");
    let input = frame(VIP, 40_000);
    let run = run_once(prog, &input).unwrap().expect("frame accepted");
    assert_eq!(run.action, XDP_TX);
    let out = &run.output;
    assert_eq!(out.len(), input.len() + 20, "one IPv4 header prepended");
    assert_eq!(
        &out[34..],
        &input[14..],
        "the inner packet follows, unchanged"
    );
    let outer = etherparse::Ipv4HeaderSlice::from_slice(&out[14..34]).expect("outer IPv4");
    assert_eq!(outer.protocol().0, PROTO_IPIP);
    assert_eq!(usize::from(outer.total_len()), input.len() - 14 + 20);
    assert_eq!(
        outer.header_checksum(),
        outer.to_header().calc_header_checksum(),
        "outer checksum"
    );
    assert_ne!(IpAddr::V4(outer.destination_addr()), IpAddr::V4(VIP));
}

#[test]
fn the_packet_rate_floor_sends_back_and_the_sink_drops() {
    lbx::dataplane::sys::raise_memlock_limit();
    let input = frame(VIP, 40_001);
    for (name, action) in [
        (programs::BENCH_TX, XDP_TX),
        (programs::BENCH_DROP, XDP_DROP),
    ] {
        let ebpf = dataplane::load_unattached(name).expect("load the program");
        let prog: &aya::programs::Xdp = ebpf
            .program(name)
            .expect("in the object")
            .try_into()
            .expect("an XDP program");
        let run = run_once(prog, &input).unwrap().expect("frame accepted");
        assert_eq!((run.action, &run.output), (action, &input), "{name}");
    }
}
