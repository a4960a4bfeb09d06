//! Packet conformance fixtures: each case is a configuration, input frames built with
//! etherparse, and for each frame the expected verdict, output bytes and counter changes,
//! run through the balancer with BPF_PROG_TEST_RUN (and through the reference model).
//! Expected encapsulated frames are built here from the RFCs (`packets::encapsulated`),
//! not by either implementation.
//!
//! `LBX_FIXTURE=text` runs only the cases whose description contains `text`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lbx::config::{Config, Protocol, VipId};
use lbx_common::Reason;
use lbx_tests::{
    fixture::{Case, Expect, Send, Step, Traffic, run_cases},
    packets::{self, Encap, L4, V4, V6, V6Ext},
    testrun::TestBalancer,
};

const RING: u32 = 1021;
const FLOWS: u32 = 4096;
const SEED: u32 = 7;
const MTU: u32 = 1500;

const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);
const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// Every port of this address, TCP and UDP.
const VIP4_ALL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const VIP6_ALL: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20);
/// Port 80 and every other port, to different backends.
const VIP4_BOTH: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 30);

fn b4(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, 0, n))
}

fn b6(n: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, u16::from(n)))
}

/// The next-hop MAC the configuration gives backend `n`.
fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, n]
}

fn vip(addr: impl Into<IpAddr>, port: u16, protocol: Protocol) -> VipId {
    VipId {
        address: addr.into(),
        port,
        protocol,
    }
}

/// A backend line of a VIP in TOML: `(n, weight, drain)` for backend address `addr`.
fn backend_toml(addr: IpAddr, n: u8, weight: u32, drain: bool) -> String {
    let [a, b, c, d, e, f] = mac(n);
    format!(
        "{{ address = \"{addr}\", weight = {weight}, drain = {drain}, \
         mac = \"{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}\" }}"
    )
}

fn vip_toml(id: VipId, backends: &[String]) -> String {
    format!(
        "[[vip]]\naddress = \"{}\"\nport = {}\nprotocol = \"{}\"\nbackend = [{}]\n",
        id.address,
        // Every port is written "*" in the file.
        if id.all_ports() {
            "\"*\"".to_owned()
        } else {
            id.port.to_string()
        },
        id.protocol,
        backends.join(", ")
    )
}

/// A configuration in the operator's TOML: seed 7, MTU 1500, default encap prefixes
/// unless `encap` names others, and `vips`.
fn config_with(encap: &str, vips: &[String]) -> Config {
    let text = format!(
        "seed = {SEED}\ntable_size = {RING}\nmtu = {MTU}\n{encap}\n{}",
        vips.join("\n")
    );
    Config::from_toml(&text).unwrap_or_else(|e| panic!("fixture configuration: {e}\n{text}"))
}

/// The standard configuration: TCP and UDP VIPs of each family with one backend each
/// (so the backend is known without computing Maglev), all-ports VIPs, and an address
/// with both an exact and an all-ports VIP.
fn standard() -> Config {
    config_with(
        "",
        &[
            vip_toml(
                vip(VIP4, 80, Protocol::Tcp),
                &[backend_toml(b4(11), 11, 100, false)],
            ),
            vip_toml(
                vip(VIP4, 53, Protocol::Udp),
                &[backend_toml(b4(12), 12, 100, false)],
            ),
            vip_toml(
                vip(VIP6, 443, Protocol::Tcp),
                &[backend_toml(b6(21), 21, 100, false)],
            ),
            vip_toml(
                vip(VIP6, 53, Protocol::Udp),
                &[backend_toml(b6(22), 22, 100, false)],
            ),
            vip_toml(
                vip(VIP4_ALL, 0, Protocol::Tcp),
                &[backend_toml(b4(13), 13, 100, false)],
            ),
            vip_toml(
                vip(VIP6_ALL, 0, Protocol::Udp),
                &[backend_toml(b6(23), 23, 100, false)],
            ),
            vip_toml(
                vip(VIP4_BOTH, 80, Protocol::Tcp),
                &[backend_toml(b4(14), 14, 100, false)],
            ),
            vip_toml(
                vip(VIP4_BOTH, 0, Protocol::Tcp),
                &[backend_toml(b4(15), 15, 100, false)],
            ),
        ],
    )
}

/// The encapsulation parameters of `config` for backend `n` at `addr`.
fn encap_of(config: &Config, addr: IpAddr, n: u8) -> Encap {
    let prefix = if addr.is_ipv4() {
        config.encap.source_v4
    } else {
        config.encap.source_v6
    };
    Encap {
        backend: addr,
        backend_mac: mac(n),
        prefix: prefix.addr,
        prefix_len: prefix.len,
        seed: config.seed,
    }
}

/// The expectation for a client packet that goes to backend `n` (`addr`) of `vip`.
fn to_backend(
    config: &Config,
    input: &[u8],
    (src, dst, l4): (IpAddr, IpAddr, L4),
    id: VipId,
    (addr, n): (IpAddr, u8),
    new_flow: bool,
) -> Expect {
    let output = packets::encapsulated(input, src, dst, l4, &encap_of(config, addr, n));
    Expect::tx(
        output,
        Traffic {
            vip: id,
            backend: addr,
            new_flow,
        },
    )
}

fn send(what: impl Into<String>, input: Vec<u8>, expect: Expect) -> Step {
    Step::Send(Send {
        what: what.into(),
        input,
        expect,
    })
}

fn configure(c: Config) -> Step {
    Step::Configure(Box::new(c))
}

fn load() -> TestBalancer {
    TestBalancer::load(RING, FLOWS).expect("load the balancer (root needed)")
}

/// Encapsulation: outer header fields, checksum, TTL/hop limit, TOS/traffic class, DF,
/// flow label, MACs; for TCP and UDP of both families.
#[test]
fn vip_packets_are_encapsulated_to_the_backend() {
    let c = standard();
    let mut cases = Vec::new();
    let (c4, c6) = (IpAddr::V4(CLIENT4), IpAddr::V6(CLIENT6));

    let mut ip = V4::new(CLIENT4, VIP4);
    ip.tos = 0xb9; // DSCP 46 (EF), ECN 1
    ip.df = true;
    ip.ttl = 57;
    let l4 = L4::tcp(40000, 80);
    let input = packets::ipv4(&ip, l4, &[0x5a; 100]);
    let e = to_backend(
        &c,
        &input,
        (c4, VIP4.into(), l4),
        vip(VIP4, 80, Protocol::Tcp),
        (b4(11), 11),
        true,
    );
    cases.push(Case::one(
        "IPv4 TCP to a VIP: IPIP to the backend, TOS and DF carried over, TTL 64",
        &c,
        input,
        e,
    ));

    let ip = V4::new(CLIENT4, VIP4);
    let l4 = L4::udp(5353, 53);
    let input = packets::ipv4(&ip, l4, b"query");
    let e = to_backend(
        &c,
        &input,
        (c4, VIP4.into(), l4),
        vip(VIP4, 53, Protocol::Udp),
        (b4(12), 12),
        true,
    );
    cases.push(Case::one(
        "IPv4 UDP to a VIP: IPIP, DF clear as in the inner header",
        &c,
        input,
        e,
    ));

    let mut ip = V6::new(CLIENT6, VIP6);
    ip.traffic_class = 0xb9;
    ip.flow_label = 0x12345;
    ip.hop_limit = 9;
    let l4 = L4::tcp(40000, 443);
    let input = packets::ipv6(&ip, l4, &[0x5a; 100]);
    let e = to_backend(
        &c,
        &input,
        (c6, VIP6.into(), l4),
        vip(VIP6, 443, Protocol::Tcp),
        (b6(21), 21),
        true,
    );
    cases.push(Case::one(
        "IPv6 TCP to a VIP: IPv6-in-IPv6, traffic class carried over, flow label from the flow, hop limit 64",
        &c,
        input,
        e,
    ));

    let ip = V6::new(CLIENT6, VIP6);
    let l4 = L4::udp(5353, 53);
    let input = packets::ipv6(&ip, l4, b"query");
    let e = to_backend(
        &c,
        &input,
        (c6, VIP6.into(), l4),
        vip(VIP6, 53, Protocol::Udp),
        (b6(22), 22),
        true,
    );
    cases.push(Case::one("IPv6 UDP to a VIP: IPv6-in-IPv6", &c, input, e));

    // A minimum-size Ethernet frame: the 18 bytes of padding after the IP packet stay
    // behind it (the outer length covers the IP packet only).
    let l4 = L4::udp(5353, 53);
    let mut input = packets::ipv4(&V4::new(CLIENT4, VIP4), l4, b"q");
    input.resize(60, 0);
    let e = to_backend(
        &c,
        &input,
        (c4, VIP4.into(), l4),
        vip(VIP4, 53, Protocol::Udp),
        (b4(12), 12),
        true,
    );
    cases.push(Case::one(
        "IPv4 UDP in a padded 60-byte frame: padding carried after the inner packet",
        &c,
        input,
        e,
    ));

    for (words, label) in [(1usize, "IHL 6"), (10, "IHL 15, 40 bytes of options")] {
        let mut ip = V4::new(CLIENT4, VIP4);
        // NOPs then End of Options, as a multiple of 4 bytes.
        ip.options = vec![1; words * 4];
        *ip.options.last_mut().expect("not empty") = 0;
        let l4 = L4::tcp(40001, 80);
        let input = packets::ipv4(&ip, l4, b"hello");
        let e = to_backend(
            &c,
            &input,
            (c4, VIP4.into(), l4),
            vip(VIP4, 80, Protocol::Tcp),
            (b4(11), 11),
            true,
        );
        cases.push(Case::one(
            format!("IPv4 with options ({label}) to a VIP: forwarded, options inside"),
            &c,
            input,
            e,
        ));
    }

    // Other outer source prefixes: /24 and /120 leave 8 host bits from the hash.
    let narrow = config_with(
        "[encap]\nsource_v4 = \"10.200.1.0/24\"\nsource_v6 = \"fd00:1::100/120\"\n",
        &[
            vip_toml(
                vip(VIP4, 80, Protocol::Tcp),
                &[backend_toml(b4(11), 11, 100, false)],
            ),
            vip_toml(
                vip(VIP6, 443, Protocol::Tcp),
                &[backend_toml(b6(21), 21, 100, false)],
            ),
        ],
    );
    for sport in [1u16, 2, 3] {
        let l4 = L4::tcp(sport, 80);
        let input = packets::ipv4(&V4::new(CLIENT4, VIP4), l4, b"");
        let e = to_backend(
            &narrow,
            &input,
            (c4, VIP4.into(), l4),
            vip(VIP4, 80, Protocol::Tcp),
            (b4(11), 11),
            true,
        );
        cases.push(Case::one(
            format!("IPv4 outer source within a /24 prefix, flow {sport}"),
            &narrow,
            input,
            e,
        ));
        let l4 = L4::tcp(sport, 443);
        let input = packets::ipv6(&V6::new(CLIENT6, VIP6), l4, b"");
        let e = to_backend(
            &narrow,
            &input,
            (c6, VIP6.into(), l4),
            vip(VIP6, 443, Protocol::Tcp),
            (b6(21), 21),
            true,
        );
        cases.push(Case::one(
            format!("IPv6 outer source within a /120 prefix, flow {sport}"),
            &narrow,
            input,
            e,
        ));
    }

    let mut tb = load();
    run_cases(&mut tb, &cases, 13);
}

/// The MTU check: the largest packet that fits once encapsulated goes, one byte more is
/// dropped and counted; the flow entry is made before the check (a later, smaller packet
/// of the flow hits the table).
#[test]
fn packets_too_big_once_encapsulated_are_dropped() {
    let c = standard();
    let (c4, c6) = (IpAddr::V4(CLIENT4), IpAddr::V6(CLIENT6));
    let mut cases = Vec::new();

    let l4 = L4::tcp(41000, 80);
    let header = 20 + 20;
    let fits = packets::ipv4(
        &V4::new(CLIENT4, VIP4),
        l4,
        &vec![1; (MTU - 20) as usize - header],
    );
    let big = packets::ipv4(
        &V4::new(CLIENT4, VIP4),
        l4,
        &vec![1; (MTU - 20) as usize - header + 1],
    );
    let id = vip(VIP4, 80, Protocol::Tcp);
    cases.push(Case {
        description: "IPv4: 1481-byte packet is too big for MTU 1500 + IPIP; 1480 bytes fit".into(),
        steps: vec![
            configure(c.clone()),
            send(
                "1481 bytes: dropped",
                big.clone(),
                Expect::drop(&big, Reason::DropTooBig),
            ),
            send(
                "1480 bytes, same flow: forwarded, the flow entry exists already",
                fits.clone(),
                to_backend(&c, &fits, (c4, VIP4.into(), l4), id, (b4(11), 11), false),
            ),
        ],
    });

    let l4 = L4::udp(41000, 53);
    let header = 40 + 8;
    let fits = packets::ipv6(
        &V6::new(CLIENT6, VIP6),
        l4,
        &vec![1; (MTU - 40) as usize - header],
    );
    let big = packets::ipv6(
        &V6::new(CLIENT6, VIP6),
        l4,
        &vec![1; (MTU - 40) as usize - header + 1],
    );
    let id = vip(VIP6, 53, Protocol::Udp);
    cases.push(Case {
        description:
            "IPv6: 1461-byte packet is too big for MTU 1500 + IPv6-in-IPv6; 1460 bytes fit".into(),
        steps: vec![
            configure(c.clone()),
            send(
                "1460 bytes: forwarded",
                fits.clone(),
                to_backend(&c, &fits, (c6, VIP6.into(), l4), id, (b6(22), 22), true),
            ),
            send(
                "1461 bytes: dropped",
                big.clone(),
                Expect::drop(&big, Reason::DropTooBig),
            ),
        ],
    });

    let mut tb = load();
    run_cases(&mut tb, &cases, 4);
}

/// Which VIP a packet matches: exact, all ports, neither.
#[test]
fn vip_matching_exact_port0_and_not_a_vip() {
    let c = standard();
    let (c4, c6) = (IpAddr::V4(CLIENT4), IpAddr::V6(CLIENT6));
    let mut cases = Vec::new();

    for dport in [1u16, 80, 12345, 65535] {
        let l4 = L4::tcp(40000, dport);
        let input = packets::ipv4(&V4::new(CLIENT4, VIP4_ALL), l4, b"x");
        let e = to_backend(
            &c,
            &input,
            (c4, VIP4_ALL.into(), l4),
            vip(VIP4_ALL, 0, Protocol::Tcp),
            (b4(13), 13),
            true,
        );
        cases.push(Case::one(
            format!("IPv4 TCP to port {dport} of a port-0 VIP"),
            &c,
            input,
            e,
        ));
    }
    for dport in [7u16, 4789] {
        let l4 = L4::udp(40000, dport);
        let input = packets::ipv6(&V6::new(CLIENT6, VIP6_ALL), l4, b"x");
        let e = to_backend(
            &c,
            &input,
            (c6, VIP6_ALL.into(), l4),
            vip(VIP6_ALL, 0, Protocol::Udp),
            (b6(23), 23),
            true,
        );
        cases.push(Case::one(
            format!("IPv6 UDP to port {dport} of a port-0 VIP"),
            &c,
            input,
            e,
        ));
    }
    let l4 = L4::udp(40000, 80);
    let input = packets::ipv4(&V4::new(CLIENT4, VIP4_ALL), l4, b"x");
    cases.push(Case::one(
        "IPv4 UDP to a TCP-only port-0 VIP: not a VIP",
        &c,
        input.clone(),
        Expect::pass(&input, Reason::PassNotVip),
    ));

    let l4 = L4::tcp(40000, 80);
    let input = packets::ipv4(&V4::new(CLIENT4, VIP4_BOTH), l4, b"x");
    let e = to_backend(
        &c,
        &input,
        (c4, VIP4_BOTH.into(), l4),
        vip(VIP4_BOTH, 80, Protocol::Tcp),
        (b4(14), 14),
        true,
    );
    cases.push(Case::one(
        "the exact VIP wins over the port-0 VIP of the same address",
        &c,
        input,
        e,
    ));
    let l4 = L4::tcp(40000, 8080);
    let input = packets::ipv4(&V4::new(CLIENT4, VIP4_BOTH), l4, b"x");
    let e = to_backend(
        &c,
        &input,
        (c4, VIP4_BOTH.into(), l4),
        vip(VIP4_BOTH, 0, Protocol::Tcp),
        (b4(15), 15),
        true,
    );
    cases.push(Case::one(
        "another port of that address goes to its port-0 VIP",
        &c,
        input,
        e,
    ));

    let not_vip: Vec<(&str, Vec<u8>)> = vec![
        (
            "IPv4 TCP to another port of a VIP address",
            packets::ipv4(&V4::new(CLIENT4, VIP4), L4::tcp(40000, 81), b"x"),
        ),
        (
            "IPv4 UDP to a TCP VIP's port",
            packets::ipv4(&V4::new(CLIENT4, VIP4), L4::udp(40000, 80), b"x"),
        ),
        (
            "IPv4 TCP to a non-VIP address",
            packets::ipv4(
                &V4::new(CLIENT4, Ipv4Addr::new(192, 0, 2, 99)),
                L4::tcp(40000, 80),
                b"x",
            ),
        ),
        (
            "IPv6 TCP to a non-VIP address",
            packets::ipv6(
                &V6::new(CLIENT6, Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99)),
                L4::tcp(40000, 443),
                b"x",
            ),
        ),
        (
            "IPv6 UDP to a TCP VIP's port",
            packets::ipv6(&V6::new(CLIENT6, VIP6), L4::udp(40000, 443), b"x"),
        ),
        (
            "IPv6 TCP to the IPv4-mapped form of an IPv4 VIP",
            packets::ipv6(
                &V6::new(CLIENT6, VIP4.to_ipv6_mapped()),
                L4::tcp(40000, 80),
                b"x",
            ),
        ),
        (
            "IPv4 TCP from the VIP to a client (a reply that came back here)",
            packets::ipv4(&V4::new(VIP4, CLIENT4), L4::tcp(80, 40000), b"x"),
        ),
    ];
    for (d, input) in not_vip {
        cases.push(Case::one(
            format!("{d}: passed, not a VIP"),
            &c,
            input.clone(),
            Expect::pass(&input, Reason::PassNotVip),
        ));
    }

    // The VIP address filter in the settings is a hint: an address sharing a VIP's bit
    // still goes through the VIP table and is not a VIP.
    let bit = lbx_common::vip_filter_bit(&lbx::addr::to_words(VIP4.into()));
    let twin = (0..=u32::MAX)
        .map(|i| Ipv4Addr::from(0xc633_6400 + i))
        .find(|a| {
            *a != VIP4 && lbx_common::vip_filter_bit(&lbx::addr::to_words((*a).into())) == bit
        })
        .expect("some address shares the bit");
    let input = packets::ipv4(&V4::new(CLIENT4, twin), L4::tcp(40000, 80), b"x");
    cases.push(Case::one(
        format!("IPv4 TCP to {twin}, not a VIP but in the VIP address filter: passed, not a VIP"),
        &c,
        input.clone(),
        Expect::pass(&input, Reason::PassNotVip),
    ));

    let other: Vec<(&str, Vec<u8>, Reason)> = vec![
        (
            "ARP request for the VIP",
            packets::arp_request(CLIENT4, VIP4),
            Reason::PassNotIp,
        ),
        (
            "802.1Q-tagged IPv4 TCP to the VIP (lbx does not look inside VLAN tags)",
            packets::vlan_ipv4(100, &V4::new(CLIENT4, VIP4), L4::tcp(40000, 80), b"x"),
            Reason::PassNotIp,
        ),
        (
            "ICMP echo request to the VIP",
            packets::ipv4(
                &V4::new(CLIENT4, VIP4),
                L4::Other(1),
                &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
            ),
            Reason::PassNotTcpUdp,
        ),
        (
            "ICMPv6 echo request to the VIP",
            packets::ipv6(
                &V6::new(CLIENT6, VIP6),
                L4::Other(58),
                &[128, 0, 0, 0, 0, 0, 0, 0],
            ),
            Reason::PassNotTcpUdp,
        ),
        (
            "GRE to the VIP",
            packets::ipv4(&V4::new(CLIENT4, VIP4), L4::Other(47), &[0, 0, 0x08, 0]),
            Reason::PassNotTcpUdp,
        ),
        (
            "SCTP to the IPv6 VIP",
            packets::ipv6(&V6::new(CLIENT6, VIP6), L4::Other(132), &[0; 12]),
            Reason::PassNotTcpUdp,
        ),
    ];
    // An address whose filter bit no VIP has stops at the filter, before the transport
    // header is read: even a packet that is not TCP or UDP is "not a VIP" there.
    let bit = |a: IpAddr| lbx_common::vip_filter_bit(&lbx::addr::to_words(a));
    let vip_bits = c.vips.iter().fold(0, |b, v| b | bit(v.address));
    let clear4 = (1..=254u8)
        .map(|i| Ipv4Addr::new(198, 51, 100, i))
        .find(|a| vip_bits & bit((*a).into()) == 0)
        .expect("an IPv4 address outside the filter");
    let clear6 = (1..=0xffffu16)
        .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, i))
        .find(|a| vip_bits & bit((*a).into()) == 0)
        .expect("an IPv6 address outside the filter");
    let other_name4 = format!("ICMP echo request to {clear4}, outside the VIP address filter");
    let other_name6 = format!("ICMPv6 echo request to {clear6}, outside the VIP address filter");
    let other: Vec<(&str, Vec<u8>, Reason)> = other
        .into_iter()
        .chain([
            (
                other_name4.as_str(),
                packets::ipv4(
                    &V4::new(CLIENT4, clear4),
                    L4::Other(1),
                    &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
                ),
                Reason::PassNotVip,
            ),
            (
                other_name6.as_str(),
                packets::ipv6(
                    &V6::new(CLIENT6, clear6),
                    L4::Other(58),
                    &[128, 0, 0, 0, 0, 0, 0, 0],
                ),
                Reason::PassNotVip,
            ),
        ])
        .collect();
    for (d, input, reason) in other {
        cases.push(Case::one(
            format!("{d}: passed"),
            &c,
            input.clone(),
            Expect::pass(&input, reason),
        ));
    }

    let mut tb = load();
    run_cases(&mut tb, &cases, 23);
}

/// A full VIP table (`MAX_VIPS` VIPs on one address, one of them all-ports): keys whose
/// hashes collide sit past their home slot, and each is still found by its packets; the
/// ports in between go to the all-ports VIP, and the other protocol is not a VIP.
#[test]
fn vip_table_probes_past_collisions() {
    let addr = Ipv4Addr::new(192, 0, 2, 40);
    let exact: Vec<u16> = (0..lbx_common::MAX_VIPS as u16 - 1)
        .map(|i| 1000 + 2 * i)
        .collect();
    // Backend n of VIP i: 10.1.1.(i + 1), MAC ..:01:(i + 1); the all-ports VIP's is 100.
    let b = |n: u8| IpAddr::V4(Ipv4Addr::new(10, 1, 1, n));
    let mut vips: Vec<String> = exact
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            let n = i as u8 + 1;
            vip_toml(
                vip(addr, port, Protocol::Tcp),
                &[backend_toml(b(n), n, 100, false)],
            )
        })
        .collect();
    vips.push(vip_toml(
        vip(addr, 0, Protocol::Tcp),
        &[backend_toml(b(100), 100, 100, false)],
    ));
    let c = config_with("", &vips);
    c.validate().expect("MAX_VIPS VIPs fit the VIP table");

    // The layout the agent publishes must hold collisions, or this proves nothing.
    let keys: Vec<lbx_common::VipKey> = c.vips.iter().map(|v| v.id().key()).collect();
    let mut slots = vec![0; keys.len()];
    let salt = lbx_common::vips::layout(&keys, &mut slots).expect("layout");
    let displaced = keys
        .iter()
        .zip(&slots)
        .filter(|(k, s)| lbx_common::vips::home::<{ lbx_common::VIP_TABLE_SLOTS }>(k, salt) != **s)
        .count();
    assert!(displaced > 0, "no VIP sits past its home slot");

    let c4 = IpAddr::V4(CLIENT4);
    let mut steps = vec![configure(c.clone())];
    for (i, &port) in exact.iter().enumerate() {
        let n = i as u8 + 1;
        let l4 = L4::tcp(40000, port);
        let input = packets::ipv4(&V4::new(CLIENT4, addr), l4, b"x");
        let e = to_backend(
            &c,
            &input,
            (c4, addr.into(), l4),
            vip(addr, port, Protocol::Tcp),
            (b(n), n),
            true,
        );
        steps.push(send(format!("TCP to port {port}: its own VIP"), input, e));
        let l4 = L4::tcp(40000, port + 1);
        let input = packets::ipv4(&V4::new(CLIENT4, addr), l4, b"x");
        let e = to_backend(
            &c,
            &input,
            (c4, addr.into(), l4),
            vip(addr, 0, Protocol::Tcp),
            (b(100), 100),
            true,
        );
        steps.push(send(
            format!("TCP to port {}: the all-ports VIP", port + 1),
            input,
            e,
        ));
    }
    let input = packets::ipv4(&V4::new(CLIENT4, addr), L4::udp(40000, 1000), b"x");
    steps.push(send(
        "UDP to a TCP VIP's port: not a VIP",
        input.clone(),
        Expect::pass(&input, Reason::PassNotVip),
    ));
    let cases = vec![Case {
        description: format!(
            "{} VIPs in the VIP table, {displaced} past their home slot",
            keys.len()
        ),
        steps,
    }];
    let mut tb = load();
    run_cases(&mut tb, &cases, 2 * exact.len() + 1);
}

/// IPv4 and IPv6 fragments, and IPv6 extension headers, are passed to the kernel.
#[test]
fn fragments_and_extension_headers_are_passed() {
    let c = standard();
    let mut cases = Vec::new();
    let l4 = L4::tcp(40000, 80);
    for (label, mf, offset, df) in [
        ("first IPv4 fragment (MF)", true, 0u16, false),
        ("middle IPv4 fragment (MF, offset 185)", true, 185, false),
        ("last IPv4 fragment (offset 185)", false, 185, false),
    ] {
        let mut ip = V4::new(CLIENT4, VIP4);
        ip.mf = mf;
        ip.frag_offset = offset;
        ip.df = df;
        let input = packets::ipv4(&ip, l4, &[7; 64]);
        cases.push(Case::one(
            format!("{label} to a VIP: passed"),
            &c,
            input.clone(),
            Expect::pass(&input, Reason::PassFragment),
        ));
    }
    let l4 = L4::tcp(40000, 443);
    for (label, offset, more) in [
        ("first IPv6 fragment", 0u16, true),
        ("last IPv6 fragment (offset 100)", 100, false),
        ("atomic IPv6 fragment (offset 0, no more)", 0, false),
    ] {
        let mut ip = V6::new(CLIENT6, VIP6);
        ip.ext = Some(V6Ext::Fragment { offset, more });
        let input = packets::ipv6(&ip, l4, &[7; 64]);
        cases.push(Case::one(
            format!("{label} to a VIP: passed"),
            &c,
            input.clone(),
            Expect::pass(&input, Reason::PassFragment),
        ));
    }
    for (label, ext) in [
        ("hop-by-hop options", V6Ext::HopByHop),
        ("destination options", V6Ext::DestinationOptions),
        ("routing header", V6Ext::Routing),
    ] {
        let mut ip = V6::new(CLIENT6, VIP6);
        ip.ext = Some(ext);
        let input = packets::ipv6(&ip, l4, b"x");
        cases.push(Case::one(
            format!("IPv6 with {label} before TCP to a VIP: passed"),
            &c,
            input.clone(),
            Expect::pass(&input, Reason::PassExtensionHeader),
        ));
    }
    let mut tb = load();
    run_cases(&mut tb, &cases, 9);
}

/// The connection table keeps a flow on its backend across configuration changes, until
/// the backend is removed; drained backends keep their flows but get no new ones.
#[test]
fn connection_table_hits_and_misses() {
    let (c4, c6) = (IpAddr::V4(CLIENT4), IpAddr::V6(CLIENT6));
    let id = vip(VIP4, 80, Protocol::Tcp);
    let one = config_with("", &[vip_toml(id, &[backend_toml(b4(11), 11, 100, false)])]);
    let two_skewed = config_with(
        "",
        &[vip_toml(
            id,
            &[
                backend_toml(b4(11), 11, 1, false),
                backend_toml(b4(12), 12, 65535, false),
            ],
        )],
    );
    let first_drained = config_with(
        "",
        &[vip_toml(
            id,
            &[
                backend_toml(b4(11), 11, 100, true),
                backend_toml(b4(12), 12, 100, false),
            ],
        )],
    );
    let first_removed = config_with("", &[vip_toml(id, &[backend_toml(b4(12), 12, 100, false)])]);
    let flow_a = L4::tcp(40000, 80);
    let flow_b = L4::tcp(40001, 80);
    let a = packets::ipv4(&V4::new(CLIENT4, VIP4), flow_a, b"a");
    let b = packets::ipv4(&V4::new(CLIENT4, VIP4), flow_b, b"b");
    let tup_a = (c4, IpAddr::V4(VIP4), flow_a);
    let tup_b = (c4, IpAddr::V4(VIP4), flow_b);
    let mut cases = vec![Case {
        description: "a flow keeps its backend through weight changes and drain, and moves when it is removed".into(),
        steps: vec![
            configure(one.clone()),
            send("flow A, first packet: miss, the only backend", a.clone(), to_backend(&one, &a, tup_a, id, (b4(11), 11), true)),
            send("flow A again: hit", a.clone(), to_backend(&one, &a, tup_a, id, (b4(11), 11), false)),
            configure(two_skewed.clone()),
            send(
                "flow A after adding a backend of weight 65535 and setting its own to 1: still a hit",
                a.clone(),
                to_backend(&two_skewed, &a, tup_a, id, (b4(11), 11), false),
            ),
            configure(first_drained.clone()),
            send(
                "flow A with its backend drained: still a hit",
                a.clone(),
                to_backend(&first_drained, &a, tup_a, id, (b4(11), 11), false),
            ),
            send(
                "flow B, new, with backend 11 drained: miss, to backend 12",
                b.clone(),
                to_backend(&first_drained, &b, tup_b, id, (b4(12), 12), true),
            ),
            configure(first_removed.clone()),
            send(
                "flow A with its backend removed: miss, moves to backend 12",
                a.clone(),
                to_backend(&first_removed, &a, tup_a, id, (b4(12), 12), true),
            ),
            send("flow A again: hit on its new backend", a.clone(), to_backend(&first_removed, &a, tup_a, id, (b4(12), 12), false)),
        ],
    }];

    // A removed backend's slot given to a new backend: the old entry names the slot with
    // the old uid, so it is a miss, not a hit on the newcomer.
    let reused = config_with(
        "",
        &[vip_toml(
            id,
            &[
                backend_toml(b4(12), 12, 100, false),
                backend_toml(b4(13), 13, 100, true),
            ],
        )],
    );
    cases.push(Case {
        description: "a slot reused by a new backend does not inherit the old backend's flows"
            .into(),
        steps: vec![
            configure(one.clone()),
            send(
                "flow A: to backend 11 (slot 0)",
                a.clone(),
                to_backend(&one, &a, tup_a, id, (b4(11), 11), true),
            ),
            configure(first_removed.clone()),
            configure(reused.clone()),
            send(
                "flow A after 11 left and drained 13 took its slot: miss, to backend 12",
                a.clone(),
                to_backend(&reused, &a, tup_a, id, (b4(12), 12), true),
            ),
        ],
    });

    let id6 = vip(VIP6, 443, Protocol::Tcp);
    let v6_one = config_with(
        "",
        &[vip_toml(id6, &[backend_toml(b6(21), 21, 100, false)])],
    );
    let v6_all_drained = config_with(
        "",
        &[vip_toml(
            id6,
            &[
                backend_toml(b6(21), 21, 100, true),
                backend_toml(b6(22), 22, 100, true),
            ],
        )],
    );
    let v6_none = config_with("", &[vip_toml(id6, &[])]);
    let flow6 = L4::tcp(40000, 443);
    let p6 = packets::ipv6(&V6::new(CLIENT6, VIP6), flow6, b"a");
    let new6 = packets::ipv6(&V6::new(CLIENT6, VIP6), L4::tcp(40001, 443), b"b");
    let tup6 = (c6, IpAddr::V6(VIP6), flow6);
    cases.push(Case {
        description: "all backends drained: established flows go on, new flows are dropped; all removed: dropped".into(),
        steps: vec![
            configure(v6_one.clone()),
            send("established flow: to backend 21", p6.clone(), to_backend(&v6_one, &p6, tup6, id6, (b6(21), 21), true)),
            configure(v6_all_drained.clone()),
            send(
                "the established flow with every backend drained: hit, still backend 21",
                p6.clone(),
                to_backend(&v6_all_drained, &p6, tup6, id6, (b6(21), 21), false),
            ),
            send("a new flow with every backend drained: dropped", new6.clone(), Expect::drop(&new6, Reason::DropNoBackend)),
            configure(v6_none.clone()),
            send("the established flow with every backend removed: dropped", p6.clone(), Expect::drop(&p6, Reason::DropNoBackend)),
            send("a new flow to a VIP with no backend: dropped", new6.clone(), Expect::drop(&new6, Reason::DropNoBackend)),
        ],
    });

    let mut tb = load();
    run_cases(&mut tb, &cases, 14);
}

/// Before any configuration is published every packet passes, counted as such.
#[test]
fn nothing_published_passes_everything() {
    let input = packets::ipv4(&V4::new(CLIENT4, VIP4), L4::tcp(40000, 80), b"x");
    let arp = packets::arp_request(CLIENT4, VIP4);
    let cases = vec![Case {
        description: "no configuration published yet".into(),
        steps: vec![
            send(
                "TCP to what will be a VIP: passed, no config",
                input.clone(),
                Expect::pass(&input, Reason::PassNoConfig),
            ),
            send(
                "ARP: not IP comes first",
                arp.clone(),
                Expect::pass(&arp, Reason::PassNotIp),
            ),
        ],
    }];
    let mut tb = load();
    run_cases(&mut tb, &cases, 2);
}

/// Headers that are inconsistent.
#[test]
fn malformed_headers_are_passed() {
    let c = standard();
    let mut cases = Vec::new();
    let tcp4 = packets::ipv4(&V4::new(CLIENT4, VIP4), L4::tcp(40000, 80), b"data");
    let udp4 = packets::ipv4(&V4::new(CLIENT4, VIP4), L4::udp(40000, 53), b"data");
    let tcp6 = packets::ipv6(&V6::new(CLIENT6, VIP6), L4::tcp(40000, 443), b"data");
    let udp6 = packets::ipv6(&V6::new(CLIENT6, VIP6), L4::udp(40000, 53), b"data");

    // Byte edits of a valid frame; the IPv4 checksum is left stale (lbx does not check
    // it, and a fixed one would hide nothing).
    let edit = |base: &Vec<u8>, f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = base.clone();
        f(&mut v);
        v
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "IPv4 EtherType, IP version 6",
            edit(&tcp4, &|v| v[14] = 0x65),
        ),
        (
            "IPv4 EtherType, IP version 5",
            edit(&tcp4, &|v| v[14] = 0x55),
        ),
        (
            "IPv4 IHL 4 (below the minimum 5)",
            edit(&tcp4, &|v| v[14] = 0x44),
        ),
        ("IPv4 IHL 0", edit(&tcp4, &|v| v[14] = 0x40)),
        (
            "IPv4 IHL 15 with no options present",
            edit(&tcp4, &|v| v[14] = 0x4f),
        ),
        (
            "IPv4 total length 19 (below the header)",
            edit(&tcp4, &|v| v[16..18].copy_from_slice(&19u16.to_be_bytes())),
        ),
        (
            "IPv4 total length one beyond the frame",
            edit(&tcp4, &|v| {
                let n = (v.len() - 14 + 1) as u16;
                v[16..18].copy_from_slice(&n.to_be_bytes());
            }),
        ),
        (
            "IPv4 total length 65535",
            edit(&tcp4, &|v| {
                v[16..18].copy_from_slice(&u16::MAX.to_be_bytes())
            }),
        ),
        (
            "TCP data offset 4 (below the minimum 5)",
            edit(&tcp4, &|v| v[14 + 20 + 12] = 4 << 4),
        ),
        ("TCP data offset 0", edit(&tcp4, &|v| v[14 + 20 + 12] = 0)),
        (
            "TCP data offset 7 with only 24 bytes of IP payload",
            edit(&tcp4, &|v| v[14 + 20 + 12] = 7 << 4),
        ),
        (
            "IPv4 total length leaving 7 bytes for UDP",
            edit(&udp4, &|v| {
                v[16..18].copy_from_slice(&27u16.to_be_bytes());
            }),
        ),
        (
            "IPv6 EtherType, IP version 4",
            edit(&tcp6, &|v| v[14] = 0x40 | (v[14] & 0x0f)),
        ),
        (
            "IPv6 payload length one beyond the frame",
            edit(&tcp6, &|v| {
                let n = (v.len() - 54 + 1) as u16;
                v[18..20].copy_from_slice(&n.to_be_bytes());
            }),
        ),
        (
            "IPv6 payload length 19 for a 20-byte TCP header",
            edit(&tcp6, &|v| v[18..20].copy_from_slice(&19u16.to_be_bytes())),
        ),
        (
            "IPv6 payload length 7 for UDP",
            edit(&udp6, &|v| v[18..20].copy_from_slice(&7u16.to_be_bytes())),
        ),
        (
            "IPv6 TCP data offset 15 beyond the payload",
            edit(&tcp6, &|v| v[54 + 12] = 15 << 4),
        ),
    ];
    for (d, input) in bad {
        cases.push(Case::one(
            format!("{d}: passed as malformed"),
            &c,
            input.clone(),
            Expect::pass(&input, Reason::PassMalformed),
        ));
    }

    // Not malformed: IPv4 with a bad header checksum and the reserved flag set is still
    // served (lbx does not validate checksums), and a TCP header with options.
    let odd = edit(&tcp4, &|v| {
        v[24] ^= 0xff;
        v[20] |= 0x80;
    });
    let l4 = L4::tcp(40000, 80);
    let e = to_backend(
        &c,
        &odd,
        (IpAddr::V4(CLIENT4), VIP4.into(), l4),
        vip(VIP4, 80, Protocol::Tcp),
        (b4(11), 11),
        true,
    );
    cases.push(Case::one(
        "IPv4 with a wrong header checksum and the reserved flag: still forwarded",
        &c,
        odd,
        e,
    ));

    let mut tb = load();
    run_cases(&mut tb, &cases, 18);
}

/// Which header a cut at `len` bytes falls in, for the description.
fn cut_place(len: usize, l3: usize, l4: usize, l4_name: &str) -> String {
    if len < 14 {
        format!("in the Ethernet header ({len} of 14 bytes)")
    } else if len < 14 + l3 {
        format!("in the IP header ({} of {l3} bytes)", len - 14)
    } else {
        format!("in the {l4_name} header ({} of {l4} bytes)", len - 14 - l3)
    }
}

/// Every cut length of the Ethernet, IP, TCP and UDP headers, both with the frame simply
/// cut short (the IP length then points past the end) and with the IP length fields
/// rewritten to match the cut (the transport header does not fit the IP payload).
#[test]
fn truncated_headers_at_every_cut_length() {
    let c = standard();
    let mut cases = Vec::new();
    let bases: Vec<(&str, Vec<u8>, usize, usize, &str)> = vec![
        (
            "IPv4 TCP",
            packets::ipv4(&V4::new(CLIENT4, VIP4), L4::tcp(40000, 80), b""),
            20,
            20,
            "TCP",
        ),
        (
            "IPv4 UDP",
            packets::ipv4(&V4::new(CLIENT4, VIP4), L4::udp(40000, 53), b""),
            20,
            8,
            "UDP",
        ),
        (
            "IPv6 TCP",
            packets::ipv6(&V6::new(CLIENT6, VIP6), L4::tcp(40000, 443), b""),
            40,
            20,
            "TCP",
        ),
        (
            "IPv6 UDP",
            packets::ipv6(&V6::new(CLIENT6, VIP6), L4::udp(40000, 53), b""),
            40,
            8,
            "UDP",
        ),
    ];
    for (name, full, l3, l4, l4_name) in &bases {
        assert_eq!(full.len(), 14 + l3 + l4, "{name}: headers only");
        for len in 0..full.len() {
            let cut = full[..len].to_vec();
            let place = cut_place(len, *l3, *l4, l4_name);
            let expect = if len < 14 {
                Expect::Refused
            } else {
                Expect::pass(&cut, Reason::PassMalformed)
            };
            cases.push(Case::one(
                format!("{name} cut to {len} bytes, {place}"),
                &c,
                cut.clone(),
                expect,
            ));
            if len >= 14 + l3 {
                // The IP header says the packet ends here too.
                let mut consistent = cut;
                let ip_len = (len - 14) as u16;
                if *l3 == 20 {
                    consistent[16..18].copy_from_slice(&ip_len.to_be_bytes());
                    consistent[24..26].copy_from_slice(&[0, 0]);
                    let sum = ipv4_checksum(&consistent[14..34]);
                    consistent[24..26].copy_from_slice(&sum.to_be_bytes());
                } else {
                    consistent[18..20].copy_from_slice(&(ip_len - 40).to_be_bytes());
                }
                cases.push(Case::one(
                    format!("{name} with IP length {ip_len}, {place}"),
                    &c,
                    consistent.clone(),
                    Expect::pass(&consistent, Reason::PassMalformed),
                ));
            }
        }
        // And the uncut headers-only packet is served, so the cuts above are what fail.
        let (src, dst, proto_l4): (IpAddr, IpAddr, L4) = match *name {
            "IPv4 TCP" => (CLIENT4.into(), VIP4.into(), L4::tcp(40000, 80)),
            "IPv4 UDP" => (CLIENT4.into(), VIP4.into(), L4::udp(40000, 53)),
            "IPv6 TCP" => (CLIENT6.into(), VIP6.into(), L4::tcp(40000, 443)),
            _ => (CLIENT6.into(), VIP6.into(), L4::udp(40000, 53)),
        };
        let (id, backend) = match *name {
            "IPv4 TCP" => (vip(VIP4, 80, Protocol::Tcp), (b4(11), 11)),
            "IPv4 UDP" => (vip(VIP4, 53, Protocol::Udp), (b4(12), 12)),
            "IPv6 TCP" => (vip(VIP6, 443, Protocol::Tcp), (b6(21), 21)),
            _ => (vip(VIP6, 53, Protocol::Udp), (b6(22), 22)),
        };
        let e = to_backend(&c, full, (src, dst, proto_l4), id, backend, true);
        cases.push(Case::one(
            format!("{name} headers only, uncut: forwarded"),
            &c,
            full.clone(),
            e,
        ));
    }
    let mut tb = load();
    run_cases(&mut tb, &cases, 4 * 54);
}

/// RFC 791 header checksum (for rewriting a header in a fixture).
fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
