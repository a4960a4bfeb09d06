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
/// Routers on the path back to the client: the sources of ICMP errors.
const ROUTER4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);

/// A flow as (client, VIP address, transport), and the backend (address, MAC byte) that
/// owns it.
type FlowOf = (IpAddr, IpAddr, L4);
type Owner = (IpAddr, u8);
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
    config_top("", encap, vips)
}

/// `config_with` with more top-level keys (`top`, lines of TOML).
fn config_top(top: &str, encap: &str, vips: &[String]) -> Config {
    let text = format!(
        "seed = {SEED}\ntable_size = {RING}\nmtu = {MTU}\n{top}\n{encap}\n{}",
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
        // Echo requests are answered (see the icmp fixtures); other ICMP is not lbx's.
        (
            "ICMP echo reply to the VIP",
            packets::icmp4(&V4::new(CLIENT4, VIP4), 0, 0, [0, 1, 0, 1], b"ping"),
            Reason::PassNotTcpUdp,
        ),
        (
            "ICMPv6 neighbour solicitation for the VIP",
            packets::icmp6(&V6::new(CLIENT6, VIP6), 135, 0, [0; 4], &VIP6.octets()),
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
    // VIP i's backend is 10.1.1.(i % 200 + 1), MAC ..:01:(i % 200 + 1), an address
    // other VIPs share (each VIP's is a slot of its own); the all-ports VIP's is 250.
    let b = |n: u8| IpAddr::V4(Ipv4Addr::new(10, 1, 1, n));
    let mut vips: Vec<String> = exact
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            let n = (i % 200) as u8 + 1;
            vip_toml(
                vip(addr, port, Protocol::Tcp),
                &[backend_toml(b(n), n, 100, false)],
            )
        })
        .collect();
    vips.push(vip_toml(
        vip(addr, 0, Protocol::Tcp),
        &[backend_toml(b(250), 250, 100, false)],
    ));
    let c = config_with("", &vips);
    c.validate().expect("MAX_VIPS VIPs fit the VIP table");

    // The layout the agent publishes must hold collisions, or this proves nothing.
    // With the address's echo entry, as the agent lays the table out.
    let keys: Vec<lbx_common::VipKey> = c.table_keys();
    let mut slots = vec![0; keys.len()];
    let salt = lbx_common::vips::layout(&keys, &mut slots).expect("layout");
    let displaced = keys
        .iter()
        .zip(&slots)
        .filter(|(k, s)| lbx_common::vips::home::<{ lbx_common::VIP_TABLE_SLOTS }>(k, salt) != **s)
        .count();
    assert!(displaced > 0, "no VIP sits past its home slot");

    // Packets to every displaced VIP and to every 16th of the others (each packet reads
    // every counter, so all 1,023 would take long under emulation).
    let is_displaced = |port: u16| {
        keys.iter().zip(&slots).any(|(k, s)| {
            k.port_be == port.to_be()
                && lbx_common::vips::home::<{ lbx_common::VIP_TABLE_SLOTS }>(k, salt) != *s
        })
    };
    let sample: Vec<(usize, u16)> = exact
        .iter()
        .copied()
        .enumerate()
        .filter(|&(i, port)| i % 16 == 0 || is_displaced(port))
        .collect();
    let c4 = IpAddr::V4(CLIENT4);
    let mut steps = vec![configure(c.clone())];
    for &(i, port) in &sample {
        let n = (i % 200) as u8 + 1;
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
            (b(250), 250),
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
    // Room for every VIP's ring of the configuration's size.
    let mut tb = TestBalancer::load_entries(
        lbx_common::ring_entries_for(lbx_common::MAX_VIPS, RING),
        FLOWS,
    )
    .expect("load the balancer (root needed)");
    run_cases(&mut tb, &cases, 2 * sample.len() + 1);
}

/// IPv4 fragments and IPv6 fragments after the first are passed to the kernel (no
/// ports); the first IPv6 fragment and the extension headers lbx walks are balanced, the
/// others passed.
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
    let flow = (IpAddr::V6(CLIENT6), IpAddr::V6(VIP6), l4);
    let id = vip(VIP6, 443, Protocol::Tcp);
    for (label, offset, more, passed) in [
        ("first IPv6 fragment", 0u16, true, false),
        ("last IPv6 fragment (offset 100)", 100, false, true),
        ("middle IPv6 fragment (offset 1, more)", 1, true, true),
        ("atomic IPv6 fragment (offset 0, no more)", 0, false, false),
    ] {
        let mut ip = V6::new(CLIENT6, VIP6);
        ip.ext = vec![V6Ext::Fragment { offset, more }];
        let input = packets::ipv6(&ip, l4, &[7; 64]);
        let (what, expect) = if passed {
            ("passed", Expect::pass(&input, Reason::PassFragment))
        } else {
            (
                "balanced, the fragment header inside",
                to_backend(&c, &input, flow, id, (b6(21), 21), true),
            )
        };
        cases.push(Case::one(
            format!("{label} to a VIP: {what}"),
            &c,
            input,
            expect,
        ));
    }
    for (label, ext) in [
        ("hop-by-hop options", V6Ext::HopByHop),
        ("destination options", V6Ext::DestinationOptions),
        ("routing header", V6Ext::Routing),
    ] {
        let mut ip = V6::new(CLIENT6, VIP6);
        ip.ext = vec![ext];
        let input = packets::ipv6(&ip, l4, b"x");
        let e = to_backend(&c, &input, flow, id, (b6(21), 21), true);
        cases.push(Case::one(
            format!("IPv6 with {label} before TCP to a VIP: balanced"),
            &c,
            input,
            e,
        ));
    }
    for (label, n) in [
        ("ESP", 50u8),
        ("AH", 51),
        ("mobility", 135),
        ("HIP", 139),
        ("shim6", 140),
    ] {
        let mut ip = V6::new(CLIENT6, VIP6);
        ip.ext = vec![V6Ext::Unwalked(n)];
        let input = packets::ipv6(&ip, l4, b"x");
        cases.push(Case::one(
            format!("IPv6 with {label} ({n}) before TCP to a VIP: passed"),
            &c,
            input.clone(),
            Expect::pass(&input, Reason::PassExtensionHeader),
        ));
    }
    let mut tb = load();
    run_cases(&mut tb, &cases, 15);
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
    let error = error_about((CLIENT4.into(), VIP4.into(), L4::tcp(40000, 80)), 28);
    let ping = packets::echo_request4(&V4::new(CLIENT4, VIP4), 1, 1, b"ping");
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
            send(
                "ICMP error about a flow of what will be a VIP: passed, no config",
                error.clone(),
                Expect::pass(&error, Reason::PassNoConfig),
            ),
            send(
                "echo request to what will be a VIP: passed, no config",
                ping.clone(),
                Expect::pass(&ping, Reason::PassNoConfig),
            ),
        ],
    }];
    let mut tb = load();
    run_cases(&mut tb, &cases, 4);
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

/// The same flow from the other side: the VIP's packets back to the client.
fn reversed(l4: L4) -> L4 {
    match l4 {
        L4::Tcp { sport, dport } | L4::Syn { sport, dport } => L4::tcp(dport, sport),
        L4::Udp { sport, dport } => L4::udp(dport, sport),
        L4::Other(n) => L4::Other(n),
    }
}

/// The IP packet (no Ethernet) the VIP's backend sent to the client of the flow
/// `(client, vip, l4)` (`l4` as the client sends it), with `payload` bytes of data: what
/// an ICMP error about it embeds.
fn sent_by_vip((client, vip, l4): (IpAddr, IpAddr, L4), payload: usize) -> Vec<u8> {
    let frame = packets::simple(vip, client, reversed(l4), &vec![0x77; payload]);
    packets::ip_packet(&frame).to_vec()
}

/// An ICMP error from a router to `vip` embedding `embedded`: IPv4 fragmentation needed
/// (next-hop MTU 1400), IPv6 packet too big (MTU 1280).
fn icmp_error(vip: IpAddr, embedded: &[u8]) -> Vec<u8> {
    match vip {
        IpAddr::V4(v) => packets::frag_needed(&V4::new(ROUTER4, v), 1400, embedded),
        IpAddr::V6(v) => packets::packet_too_big(&V6::new(ROUTER6, v), 0, 1280, embedded),
    }
}

/// An ICMP error about flow `flow`, embedding the first `embed` bytes of the VIP's packet
/// (which has 64 bytes of data).
fn error_about(flow: (IpAddr, IpAddr, L4), embed: usize) -> Vec<u8> {
    let e = sent_by_vip(flow, 64);
    icmp_error(flow.1, &e[..embed.min(e.len())])
}

/// What RFC 792 asks a router to embed at least: the IPv4 header and 8 bytes; RFC 4443
/// as much as fits in 1280 bytes (here the whole 40 + 8 + 20 + 64 of a TCP reply).
fn rfc_embed(flow: &(IpAddr, IpAddr, L4)) -> usize {
    if flow.1.is_ipv4() { 28 } else { 1232 }
}

/// The expectation for an ICMP error `input` about `flow` that goes to backend `n`
/// (`addr`): the whole ICMP packet encapsulated as a packet of the flow would be (outer
/// source from the flow's hash), counted as forwarded_icmp only.
fn icmp_to_backend(
    config: &Config,
    input: &[u8],
    (client, vip, l4): (IpAddr, IpAddr, L4),
    (addr, n): (IpAddr, u8),
) -> Expect {
    let output = packets::encapsulated(input, client, vip, l4, &encap_of(config, addr, n));
    Expect::sent(Reason::ForwardedIcmp, output)
}

/// The one VIP of `id` with backends `(n, drain)` (weight 100), as a configuration.
fn one_vip(id: VipId, backends: &[(u8, bool)]) -> Config {
    let addr = |n: u8| if id.address.is_ipv4() { b4(n) } else { b6(n) };
    let lines: Vec<String> = backends
        .iter()
        .map(|&(n, drain)| backend_toml(addr(n), n, 100, drain))
        .collect();
    config_with("", &[vip_toml(id, &lines)])
}

/// An address of `VIP4`'s not-a-VIP filter bit that is no VIP: it passes the filter.
fn filter_twin4() -> Ipv4Addr {
    let bit = lbx_common::vip_filter_bit(&lbx::addr::to_words(VIP4.into()));
    (1..=u32::MAX)
        .map(|i| Ipv4Addr::from(0xc633_6400 + i))
        .find(|a| {
            *a != VIP4 && lbx_common::vip_filter_bit(&lbx::addr::to_words((*a).into())) == bit
        })
        .expect("some address shares the bit")
}

/// Addresses whose filter bit no VIP of `c` has: they stop at the filter.
fn outside_filter(c: &Config) -> (Ipv4Addr, Ipv6Addr) {
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
    (clear4, clear6)
}

/// ICMP errors about a VIP's flows (fragmentation needed, packet too big) go to the
/// backend of the flow: the connection table's when it holds the flow, else the ring's;
/// they never write the table; VIP and backend counters do not count them.
#[test]
fn icmp_errors_go_to_the_backend_of_the_flow() {
    let c = standard();
    let (c4, c6) = (IpAddr::V4(CLIENT4), IpAddr::V6(CLIENT6));
    let mut cases = Vec::new();

    // Every kind of VIP, with the RFC's embedding and with the whole packet embedded.
    let flows: Vec<(&str, FlowOf, Owner)> = vec![
        (
            "IPv4 TCP VIP",
            (c4, VIP4.into(), L4::tcp(40000, 80)),
            (b4(11), 11),
        ),
        (
            "IPv4 UDP VIP",
            (c4, VIP4.into(), L4::udp(5353, 53)),
            (b4(12), 12),
        ),
        (
            "IPv4 all-ports VIP, port 12345",
            (c4, VIP4_ALL.into(), L4::tcp(40000, 12345)),
            (b4(13), 13),
        ),
        (
            "IPv4 exact VIP beside an all-ports one",
            (c4, VIP4_BOTH.into(), L4::tcp(40000, 80)),
            (b4(14), 14),
        ),
        (
            "IPv4 all-ports VIP beside an exact one, port 8080",
            (c4, VIP4_BOTH.into(), L4::tcp(40000, 8080)),
            (b4(15), 15),
        ),
        (
            "IPv6 TCP VIP",
            (c6, VIP6.into(), L4::tcp(40000, 443)),
            (b6(21), 21),
        ),
        (
            "IPv6 UDP VIP",
            (c6, VIP6.into(), L4::udp(5353, 53)),
            (b6(22), 22),
        ),
        (
            "IPv6 all-ports UDP VIP, port 7",
            (c6, VIP6_ALL.into(), L4::udp(40000, 7)),
            (b6(23), 23),
        ),
    ];
    for (label, flow, backend) in &flows {
        // The IP header and 8 bytes (RFC 792's minimum), and the whole packet.
        let least = if flow.1.is_ipv4() { 28 } else { 48 };
        for embed in [least, usize::MAX] {
            let input = error_about(*flow, embed);
            let e = icmp_to_backend(&c, &input, *flow, *backend);
            let how = if embed == usize::MAX {
                "the whole packet embedded".to_owned()
            } else {
                format!("{embed} bytes embedded")
            };
            cases.push(Case::one(
                format!("ICMP error about a flow of an {label}, {how}: to its backend"),
                &c,
                input,
                e,
            ));
        }
    }

    // The ICMP packet's own header choices are carried as a flow packet's would be.
    let flow = (c4, IpAddr::V4(VIP4), L4::tcp(40000, 80));
    let embedded = sent_by_vip(flow, 64);
    let mut outer = V4::new(ROUTER4, VIP4);
    outer.tos = 0xc0; // DSCP 48 (CS6), as routers send ICMP
    outer.df = true;
    outer.ttl = 250;
    outer.options = vec![1, 1, 1, 0];
    let input = packets::frag_needed(&outer, 1400, &embedded[..28]);
    let e = icmp_to_backend(&c, &input, flow, (b4(11), 11));
    cases.push(Case::one(
        "ICMP error with TOS 0xc0, DF and options in its own header: TOS and DF carried",
        &c,
        input,
        e,
    ));
    let mut inner = V4::new(VIP4, CLIENT4);
    inner.options = vec![1, 1, 1, 1, 1, 1, 1, 0];
    inner.mf = true;
    inner.df = false;
    let embedded = packets::ip_packet(&packets::ipv4(&inner, reversed(flow.2), &[9; 64])).to_vec();
    let input = packets::frag_needed(&V4::new(ROUTER4, VIP4), 1400, &embedded[..28 + 8]);
    let e = icmp_to_backend(&c, &input, flow, (b4(11), 11));
    cases.push(Case::one(
        "ICMP error embedding a header with options (IHL 7) of a first fragment (MF): the ports after the options",
        &c,
        input,
        e,
    ));
    let flow6 = (c6, IpAddr::V6(VIP6), L4::tcp(40000, 443));
    let mut outer = V6::new(ROUTER6, VIP6);
    outer.traffic_class = 0xc0;
    outer.ext = vec![V6Ext::HopByHop];
    let input = packets::packet_too_big(&outer, 0, 1280, &sent_by_vip(flow6, 64));
    let e = icmp_to_backend(&c, &input, flow6, (b6(21), 21));
    cases.push(Case::one(
        "ICMPv6 packet too big behind a hop-by-hop header, traffic class 0xc0: to the backend",
        &c,
        input,
        e,
    ));
    for code in [1u8, 255] {
        let input =
            packets::packet_too_big(&V6::new(ROUTER6, VIP6), code, 1280, &sent_by_vip(flow6, 64));
        let e = icmp_to_backend(&c, &input, flow6, (b6(21), 21));
        cases.push(Case::one(
            format!("ICMPv6 packet too big with code {code}: to the backend (any code)"),
            &c,
            input,
            e,
        ));
    }

    // The MTU check is on the ICMP packet's length.
    let big_reply = sent_by_vip(flow, 1500);
    let fits = packets::frag_needed(&V4::new(ROUTER4, VIP4), 1400, &big_reply[..1480 - 28]);
    let big = packets::frag_needed(&V4::new(ROUTER4, VIP4), 1400, &big_reply[..1481 - 28]);
    cases.push(Case::one(
        "1480-byte ICMP error: fits MTU 1500 with IPIP",
        &c,
        fits.clone(),
        icmp_to_backend(&c, &fits, flow, (b4(11), 11)),
    ));
    cases.push(Case::one(
        "1481-byte ICMP error: too big for MTU 1500 with IPIP",
        &c,
        big.clone(),
        Expect::drop(&big, Reason::DropTooBig),
    ));
    let big_reply = sent_by_vip(flow6, 1500);
    let fits = packets::packet_too_big(&V6::new(ROUTER6, VIP6), 0, 1280, &big_reply[..1460 - 48]);
    let big = packets::packet_too_big(&V6::new(ROUTER6, VIP6), 0, 1280, &big_reply[..1461 - 48]);
    cases.push(Case::one(
        "1460-byte ICMPv6 error: fits MTU 1500 with IPv6-in-IPv6",
        &c,
        fits.clone(),
        icmp_to_backend(&c, &fits, flow6, (b6(21), 21)),
    ));
    cases.push(Case::one(
        "1461-byte ICMPv6 error: too big for MTU 1500 with IPv6-in-IPv6",
        &c,
        big.clone(),
        Expect::drop(&big, Reason::DropTooBig),
    ));

    // Errors about flows of no VIP.
    let twin = filter_twin4();
    let (clear4, clear6) = outside_filter(&c);
    let not_vip: Vec<(&str, (IpAddr, IpAddr, L4))> = vec![
        (
            "from another port of a VIP address",
            (c4, VIP4.into(), L4::tcp(40000, 81)),
        ),
        (
            "UDP from a TCP VIP's port",
            (c4, VIP4.into(), L4::udp(40000, 80)),
        ),
        (
            "UDP from an all-ports TCP VIP",
            (c4, VIP4_ALL.into(), L4::udp(40000, 80)),
        ),
        (
            "IPv6 TCP from a UDP VIP's port",
            (c6, VIP6.into(), L4::tcp(40000, 53)),
        ),
        (
            "from an address in the VIP filter that is no VIP's",
            (c4, twin.into(), L4::tcp(40000, 80)),
        ),
        (
            "from an IPv4 address outside the VIP filter",
            (c4, clear4.into(), L4::tcp(40000, 80)),
        ),
        (
            "from an IPv6 address outside the VIP filter",
            (c6, clear6.into(), L4::tcp(40000, 443)),
        ),
    ];
    for (label, flow) in not_vip {
        // The whole embedded header and 8 bytes after it.
        let cut = if flow.1.is_ipv4() { 28 } else { 48 };
        let input = error_about(flow, cut);
        cases.push(Case::one(
            format!("ICMP error about a packet {label}: not a VIP"),
            &c,
            input.clone(),
            Expect::pass(&input, Reason::PassNotVip),
        ));
    }
    // Outside the filter nothing after the IP header is read.
    let input = error_about((c4, clear4.into(), L4::tcp(40000, 80)), 3);
    cases.push(Case::one(
        "ICMP error with a cut inner header to an address outside the VIP filter: not a VIP",
        &c,
        input.clone(),
        Expect::pass(&input, Reason::PassNotVip),
    ));

    // A VIP without backends drops them, as its packets.
    let id = vip(VIP4, 80, Protocol::Tcp);
    let none = one_vip(id, &[]);
    let input = error_about(flow, 28);
    cases.push(Case::one(
        "ICMP error about a flow of a VIP without backends: dropped",
        &none,
        input.clone(),
        Expect::drop(&input, Reason::DropNoBackend),
    ));

    // The table decides, and is never written by an error.
    for (label, id, a, b, l4) in [
        ("IPv4 TCP", id, 11u8, 12u8, L4::syn(40000, 80)),
        (
            "IPv4 UDP",
            vip(VIP4, 53, Protocol::Udp),
            11,
            12,
            L4::udp(40000, 53),
        ),
        (
            "IPv6 TCP",
            vip(VIP6, 443, Protocol::Tcp),
            21,
            22,
            L4::syn(40000, 443),
        ),
        (
            "IPv6 UDP",
            vip(VIP6, 53, Protocol::Udp),
            21,
            22,
            L4::udp(40000, 53),
        ),
    ] {
        let v4 = id.address.is_ipv4();
        let client = if v4 { c4 } else { c6 };
        let addr = |n: u8| if v4 { b4(n) } else { b6(n) };
        let first = one_vip(id, &[(a, false)]);
        let drained = one_vip(id, &[(a, true), (b, false)]);
        let removed = one_vip(id, &[(b, false)]);
        let port = |p: u16| match l4 {
            L4::Udp { dport, .. } => L4::udp(p, dport),
            L4::Syn { dport, .. } | L4::Tcp { dport, .. } => L4::tcp(p, dport),
            L4::Other(_) => unreachable!("TCP or UDP"),
        };
        let syn = |p: u16| match port(p) {
            L4::Tcp { sport, dport } => L4::syn(sport, dport),
            other => other,
        };
        let flow = |p: u16| (client, id.address, port(p));
        let open_x = packets::simple(client, id.address, syn(40000), b"open");
        let x = packets::simple(client, id.address, port(40000), b"x");
        let z = packets::simple(client, id.address, port(40002), b"z");
        let err = |p: u16| error_about(flow(p), rfc_embed(&flow(p)));
        let (ex, ey, ez) = (err(40000), err(40001), err(40002));
        cases.push(Case {
            description: format!(
                "{label}: ICMP errors follow the connection table, else the ring, and do not write the table"
            ),
            steps: vec![
                configure(first.clone()),
                send(
                    "the client opens flow X: to backend A",
                    open_x.clone(),
                    to_backend(&first, &open_x, flow(40000), id, (addr(a), a), true),
                ),
                send(
                    "an error about X: to A",
                    ex.clone(),
                    icmp_to_backend(&first, &ex, flow(40000), (addr(a), a)),
                ),
                send(
                    "an error about Z, a flow the table does not hold: the ring's A",
                    ez.clone(),
                    icmp_to_backend(&first, &ez, flow(40002), (addr(a), a)),
                ),
                configure(drained.clone()),
                send(
                    "with A drained and B the ring's only backend, an error about X: still A, the table's",
                    ex.clone(),
                    icmp_to_backend(&drained, &ex, flow(40000), (addr(a), a)),
                ),
                send(
                    "an error about Y, never seen: the ring's B",
                    ey.clone(),
                    icmp_to_backend(&drained, &ey, flow(40001), (addr(b), b)),
                ),
                send(
                    "an error about Z again: B, so the first error about Z recorded nothing",
                    ez.clone(),
                    icmp_to_backend(&drained, &ez, flow(40002), (addr(b), b)),
                ),
                send(
                    "a packet of Z: a new flow on B (the errors did not make one)",
                    z.clone(),
                    to_backend(&drained, &z, flow(40002), id, (addr(b), b), true),
                ),
                send(
                    "a packet of X: still A, a hit",
                    x.clone(),
                    to_backend(&drained, &x, flow(40000), id, (addr(a), a), false),
                ),
                configure(removed.clone()),
                send(
                    "with A removed, an error about X: the ring's B",
                    ex.clone(),
                    icmp_to_backend(&removed, &ex, flow(40000), (addr(b), b)),
                ),
                send(
                    "a packet of X: a new flow on B",
                    x.clone(),
                    to_backend(&removed, &x, flow(40000), id, (addr(b), b), true),
                ),
            ],
        });
    }

    let mut tb = load();
    run_cases(&mut tb, &cases, 74);
}

/// ICMP errors to a VIP whose embedded header is cut short (at every length, by the frame
/// or by the outer IP length) or is not of a packet the VIP sent (each checked field
/// wrong) are passed unchanged; one more byte, or a field lbx does not check, and they go
/// to the backend. ICMP headers cut short are malformed; other ICMP types are not lbx's.
#[test]
fn icmp_errors_with_a_cut_or_lying_inner_header_are_passed() {
    let c = standard();
    let (c4, c6) = (IpAddr::V4(CLIENT4), IpAddr::V6(CLIENT6));
    let mut cases = Vec::new();
    let bad = |input: &[u8]| Expect::pass(input, Reason::PassIcmpBadInner);

    // Embedded packets of each family and transport, with 0, 4 and 40 bytes of IPv4
    // options: (label, flow, embedded packet, its header length, backend).
    let tcp4 = (c4, IpAddr::V4(VIP4), L4::tcp(40000, 80));
    let udp4 = (c4, IpAddr::V4(VIP4), L4::udp(40000, 53));
    let tcp6 = (c6, IpAddr::V6(VIP6), L4::tcp(40000, 443));
    let udp6 = (c6, IpAddr::V6(VIP6), L4::udp(40000, 53));
    let with_options = |words: usize| {
        let mut ip = V4::new(VIP4, CLIENT4);
        ip.options = vec![1; words * 4];
        packets::ip_packet(&packets::ipv4(&ip, reversed(tcp4.2), &[5; 16])).to_vec()
    };
    let bases: Vec<(&str, FlowOf, Vec<u8>, usize, Owner)> = vec![
        ("IPv4 TCP", tcp4, sent_by_vip(tcp4, 16), 20, (b4(11), 11)),
        ("IPv4 UDP", udp4, sent_by_vip(udp4, 16), 20, (b4(12), 12)),
        ("IPv4 TCP, IHL 6", tcp4, with_options(1), 24, (b4(11), 11)),
        ("IPv4 TCP, IHL 15", tcp4, with_options(10), 60, (b4(11), 11)),
        ("IPv6 TCP", tcp6, sent_by_vip(tcp6, 16), 40, (b6(21), 21)),
        ("IPv6 UDP", udp6, sent_by_vip(udp6, 16), 40, (b6(22), 22)),
    ];
    for (label, flow, embedded, header, backend) in &bases {
        for len in 0..=header + 8 {
            let cut = icmp_error(flow.1, &embedded[..len]);
            // The same, and after the IP packet the embedded bytes the outer length
            // leaves out: they are in the frame, not in the packet.
            let mut trailing = cut.clone();
            trailing.extend_from_slice(&embedded[len..header + 8]);
            let place = if len < *header {
                format!("{len} of the {header} header bytes")
            } else {
                format!("the header and {} port bytes", len - header)
            };
            let ok = len >= header + 4;
            let expect = |input: &[u8]| {
                if ok {
                    icmp_to_backend(&c, input, *flow, *backend)
                } else {
                    bad(input)
                }
            };
            let what = if ok { "to the backend" } else { "passed" };
            cases.push(Case::one(
                format!("ICMP error embedding {label} cut to {place}: {what}"),
                &c,
                cut.clone(),
                expect(&cut),
            ));
            if len < header + 8 {
                cases.push(Case::one(
                    format!(
                        "ICMP error embedding {label} cut by the outer IP length to {place}, the rest after the packet: {what}"
                    ),
                    &c,
                    trailing.clone(),
                    expect(&trailing),
                ));
            }
        }
    }

    // Each checked field of the embedded header wrong (the ICMP checksum made right).
    let e4 = sent_by_vip(tcp4, 16)[..28].to_vec();
    let e6 = sent_by_vip(tcp6, 16)[..48].to_vec();
    let edit = |base: &Vec<u8>, f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = base.clone();
        f(&mut v);
        v
    };
    let lies: Vec<(&str, IpAddr, Vec<u8>)> = vec![
        ("IPv4 version 6", VIP4.into(), edit(&e4, &|v| v[0] = 0x65)),
        ("IPv4 version 5", VIP4.into(), edit(&e4, &|v| v[0] = 0x55)),
        ("IPv4 version 0", VIP4.into(), edit(&e4, &|v| v[0] = 0x05)),
        ("IPv4 IHL 4", VIP4.into(), edit(&e4, &|v| v[0] = 0x44)),
        ("IPv4 IHL 0", VIP4.into(), edit(&e4, &|v| v[0] = 0x40)),
        (
            "IPv4 IHL 7, the ports past the 28 bytes embedded",
            VIP4.into(),
            edit(&e4, &|v| v[0] = 0x47),
        ),
        (
            "IPv4 IHL 15, the ports past the 28 bytes embedded",
            VIP4.into(),
            edit(&e4, &|v| v[0] = 0x4f),
        ),
        (
            "IPv4 from the client to the VIP (the client's own packet)",
            VIP4.into(),
            packets::ip_packet(&packets::simple(c4, VIP4.into(), tcp4.2, &[1; 8]))[..28].to_vec(),
        ),
        (
            "IPv4 from another VIP's address",
            VIP4.into(),
            edit(&e4, &|v| v[12..16].copy_from_slice(&VIP4_ALL.octets())),
        ),
        (
            "IPv4 from the VIP, the error to another VIP's address",
            VIP4_ALL.into(),
            e4.clone(),
        ),
        ("IPv4 protocol ICMP", VIP4.into(), edit(&e4, &|v| v[9] = 1)),
        ("IPv4 protocol GRE", VIP4.into(), edit(&e4, &|v| v[9] = 47)),
        (
            "IPv4 protocol SCTP",
            VIP4.into(),
            edit(&e4, &|v| v[9] = 132),
        ),
        (
            "IPv4 fragment offset 1",
            VIP4.into(),
            edit(&e4, &|v| v[6..8].copy_from_slice(&1u16.to_be_bytes())),
        ),
        (
            "IPv4 fragment offset 8191",
            VIP4.into(),
            edit(&e4, &|v| v[6..8].copy_from_slice(&0x1fffu16.to_be_bytes())),
        ),
        (
            "IPv4 middle fragment (MF, offset 185)",
            VIP4.into(),
            edit(&e4, &|v| {
                v[6..8].copy_from_slice(&(0x2000u16 | 185).to_be_bytes())
            }),
        ),
        ("IPv6 version 4", VIP6.into(), edit(&e6, &|v| v[0] = 0x40)),
        ("IPv6 version 0", VIP6.into(), edit(&e6, &|v| v[0] = 0x00)),
        (
            "IPv6 from the client to the VIP (the client's own packet)",
            VIP6.into(),
            packets::ip_packet(&packets::simple(c6, VIP6.into(), tcp6.2, &[1; 8]))[..48].to_vec(),
        ),
        (
            "IPv6 from another VIP's address",
            VIP6.into(),
            edit(&e6, &|v| v[8..24].copy_from_slice(&VIP6_ALL.octets())),
        ),
        (
            "IPv6 from the VIP, the error to another VIP's address",
            VIP6_ALL.into(),
            e6.clone(),
        ),
        (
            "IPv6 next header hop-by-hop",
            VIP6.into(),
            edit(&e6, &|v| v[6] = 0),
        ),
        (
            "IPv6 next header fragment",
            VIP6.into(),
            edit(&e6, &|v| v[6] = 44),
        ),
        (
            "IPv6 next header destination options",
            VIP6.into(),
            edit(&e6, &|v| v[6] = 60),
        ),
        (
            "IPv6 next header ICMPv6",
            VIP6.into(),
            edit(&e6, &|v| v[6] = 58),
        ),
        (
            "IPv6 next header ESP",
            VIP6.into(),
            edit(&e6, &|v| v[6] = 50),
        ),
    ];
    for (label, to, embedded) in lies {
        let input = icmp_error(to, &embedded);
        cases.push(Case::one(
            format!("ICMP error embedding {label}: passed"),
            &c,
            input.clone(),
            bad(&input),
        ));
    }
    // The embedded header is checked before its VIP is looked up.
    let twin = filter_twin4();
    let input = icmp_error(twin.into(), &e4);
    cases.push(Case::one(
        "ICMP error to a non-VIP address in the filter, embedding a packet not from it: passed as a bad inner header",
        &c,
        input.clone(),
        bad(&input),
    ));

    // Fields lbx does not check: the packet still goes to the flow's backend.
    let unchecked: Vec<(&str, FlowOf, Vec<u8>, Owner)> = vec![
        (
            "IPv4 header checksum wrong",
            tcp4,
            edit(&e4, &|v| v[10] ^= 0xff),
        ),
        (
            "IPv4 total length 0",
            tcp4,
            edit(&e4, &|v| v[2..4].copy_from_slice(&[0, 0])),
        ),
        (
            "IPv4 first fragment (MF, offset 0) with DF",
            tcp4,
            edit(&e4, &|v| v[6..8].copy_from_slice(&0x6000u16.to_be_bytes())),
        ),
        ("IPv4 TTL 0", tcp4, edit(&e4, &|v| v[8] = 0)),
        (
            "IPv6 payload length 65535",
            tcp6,
            edit(&e6, &|v| v[4..6].copy_from_slice(&[0xff, 0xff])),
        ),
        (
            "IPv6 traffic class and flow label",
            tcp6,
            edit(&e6, &|v| v[1..4].copy_from_slice(&[0xff, 0xff, 0xff])),
        ),
    ]
    .into_iter()
    .map(|(l, f, e)| {
        let b = if f.1.is_ipv4() {
            (b4(11), 11)
        } else {
            (b6(21), 21)
        };
        (l, f, e, b)
    })
    .collect();
    for (label, flow, embedded, backend) in unchecked {
        let input = icmp_error(flow.1, &embedded);
        let e = icmp_to_backend(&c, &input, flow, backend);
        cases.push(Case::one(
            format!("ICMP error embedding {label} (not checked): to the backend"),
            &c,
            input,
            e,
        ));
    }

    // The ICMP header itself cut short: malformed, whatever the type.
    for (label, message) in [
        (
            "fragmentation needed",
            packets::icmp4_message(3, 4, [0, 0, 5, 0x78], &e4),
        ),
        (
            "echo request",
            packets::icmp4_message(8, 0, [0, 1, 0, 1], b""),
        ),
        (
            "port unreachable",
            packets::icmp4_message(3, 3, [0; 4], &e4),
        ),
    ] {
        for len in 0..8 {
            let cut = packets::ipv4(&V4::new(ROUTER4, VIP4), L4::Other(1), &message[..len]);
            cases.push(Case::one(
                format!("ICMP {label} cut to {len} of the 8 ICMP header bytes: malformed"),
                &c,
                cut.clone(),
                Expect::pass(&cut, Reason::PassMalformed),
            ));
            let mut trailing = cut;
            trailing.extend_from_slice(&message[len..]);
            cases.push(Case::one(
                format!(
                    "ICMP {label} cut by the IP length to {len} of the 8 ICMP header bytes, the rest after the packet: malformed"
                ),
                &c,
                trailing.clone(),
                Expect::pass(&trailing, Reason::PassMalformed),
            ));
        }
    }
    for (label, message) in [
        (
            "packet too big",
            packets::icmp6_message(ROUTER6, VIP6, 2, 0, [0, 0, 5, 0], &e6),
        ),
        (
            "echo request",
            packets::icmp6_message(CLIENT6, VIP6, 128, 0, [0, 1, 0, 1], b""),
        ),
    ] {
        for len in 0..8 {
            let cut = packets::ipv6(&V6::new(ROUTER6, VIP6), L4::Other(58), &message[..len]);
            cases.push(Case::one(
                format!("ICMPv6 {label} cut to {len} of the 8 ICMP header bytes: malformed"),
                &c,
                cut.clone(),
                Expect::pass(&cut, Reason::PassMalformed),
            ));
            let mut trailing = cut;
            trailing.extend_from_slice(&message[len..]);
            cases.push(Case::one(
                format!(
                    "ICMPv6 {label} cut by the payload length to {len} of the 8 ICMP header bytes, the rest after the packet: malformed"
                ),
                &c,
                trailing.clone(),
                Expect::pass(&trailing, Reason::PassMalformed),
            ));
        }
    }

    // Other types and codes, even with a good embedded packet, are passed as before.
    for (label, kind, code) in [
        ("port unreachable (3/3)", 3u8, 3u8),
        ("host unreachable (3/1)", 3, 1),
        ("communication prohibited (3/13)", 3, 13),
        ("source quench (4/0)", 4, 0),
        ("time exceeded (11/0)", 11, 0),
        ("parameter problem (12/0)", 12, 0),
        ("echo reply (0/0)", 0, 0),
        ("echo request with code 1 (8/1)", 8, 1),
        ("timestamp (13/0)", 13, 0),
    ] {
        let input = packets::icmp4(&V4::new(ROUTER4, VIP4), kind, code, [0, 0, 5, 0x78], &e4);
        cases.push(Case::one(
            format!("ICMP {label} to a VIP: passed, not lbx's"),
            &c,
            input.clone(),
            Expect::pass(&input, Reason::PassNotTcpUdp),
        ));
    }
    for (label, kind, code) in [
        ("destination unreachable (1/4)", 1u8, 4u8),
        ("time exceeded (3/0)", 3, 0),
        ("parameter problem (4/0)", 4, 0),
        ("echo reply (129/0)", 129, 0),
        ("echo request with code 1 (128/1)", 128, 1),
        ("neighbour solicitation (135/0)", 135, 0),
        ("neighbour advertisement (136/0)", 136, 0),
        ("multicast listener query (130/0)", 130, 0),
    ] {
        let input = packets::icmp6(&V6::new(ROUTER6, VIP6), kind, code, [0, 0, 5, 0], &e6);
        cases.push(Case::one(
            format!("ICMPv6 {label} to a VIP: passed, not lbx's"),
            &c,
            input.clone(),
            Expect::pass(&input, Reason::PassNotTcpUdp),
        ));
    }

    // A fragmented ICMP packet is a fragment first.
    let mut ip = V4::new(ROUTER4, VIP4);
    ip.mf = true;
    let input = packets::frag_needed(&ip, 1400, &e4);
    cases.push(Case::one(
        "ICMP error in an IPv4 first fragment: passed as a fragment",
        &c,
        input.clone(),
        Expect::pass(&input, Reason::PassFragment),
    ));
    let mut ip = V6::new(ROUTER6, VIP6);
    ip.ext = vec![V6Ext::Fragment {
        offset: 3,
        more: false,
    }];
    let input = packets::packet_too_big(&ip, 0, 1280, &e6);
    cases.push(Case::one(
        "ICMPv6 error in a later IPv6 fragment: passed as a fragment",
        &c,
        input.clone(),
        Expect::pass(&input, Reason::PassFragment),
    ));

    let cut_cases: usize = bases.iter().map(|b| 2 * (b.3 + 9) - 1).sum();
    let mut tb = load();
    run_cases(&mut tb, &cases, cut_cases + 26 + 1 + 6 + 5 * 16 + 9 + 8 + 2);
}

/// The ICMP checksum of the expected reply to `request`.
fn echo_reply_checksum(request: &[u8]) -> u16 {
    let reply = packets::echo_reply(request);
    let at = if request[12] == 0x08 {
        14 + usize::from(request[14] & 0x0f) * 4
    } else {
        14 + 40
    };
    u16::from_be_bytes([reply[at + 2], reply[at + 3]])
}

/// Echo requests to any VIP's address are answered by the balancer: the reply built by
/// RFC 792 / RFC 4443 (addresses and MACs swapped, TTL 64, checksums valid), everything
/// else as it came. Cut short: malformed; to an address that is no VIP's: passed.
#[test]
fn icmp_echo_requests_to_a_vip_are_answered() {
    let c = standard();
    let mut cases = Vec::new();
    let echo = |input: &[u8]| Expect::sent(Reason::EchoReply, packets::echo_reply(input));

    // Every VIP address, whatever its VIPs' ports and protocols.
    for (label, addr) in [
        ("a TCP VIP's address", IpAddr::V4(VIP4)),
        ("an all-ports TCP VIP's address", IpAddr::V4(VIP4_ALL)),
        (
            "an address with an exact and an all-ports VIP",
            IpAddr::V4(VIP4_BOTH),
        ),
        ("an IPv6 TCP and UDP VIP's address", IpAddr::V6(VIP6)),
        ("an IPv6 all-ports UDP VIP's address", IpAddr::V6(VIP6_ALL)),
    ] {
        for (size, data) in [
            ("no data", Vec::new()),
            ("56 bytes of data", (0..56u8).collect::<Vec<u8>>()),
            ("1001 bytes of data (odd)", vec![0xa5; 1001]),
        ] {
            let input = match addr {
                IpAddr::V4(a) => packets::echo_request4(&V4::new(CLIENT4, a), 0x4242, 7, &data),
                IpAddr::V6(a) => packets::echo_request6(&V6::new(CLIENT6, a), 0x4242, 7, &data),
            };
            cases.push(Case::one(
                format!("echo request to {label}, {size}: answered"),
                &c,
                input.clone(),
                echo(&input),
            ));
        }
    }

    // Header choices the reply keeps: TOS, id, DF, options; TTL becomes 64.
    let mut ip = V4::new(CLIENT4, VIP4);
    ip.tos = 0xb9;
    ip.id = 0xbeef;
    ip.df = true;
    ip.ttl = 3;
    ip.options = vec![1, 1, 1, 0];
    let input = packets::echo_request4(&ip, 1, 2, b"abcdefgh");
    cases.push(Case::one(
        "echo request with TOS, id, DF, options and TTL 3: answered with them, TTL 64",
        &c,
        input.clone(),
        echo(&input),
    ));
    let mut ip = V6::new(CLIENT6, VIP6);
    ip.traffic_class = 0xb9;
    ip.flow_label = 0xabcde;
    ip.hop_limit = 1;
    let input = packets::echo_request6(&ip, 1, 2, b"abcdefgh");
    cases.push(Case::one(
        "ICMPv6 echo request with traffic class, flow label, hop limit 1: answered with them, hop limit 64",
        &c,
        input.clone(),
        echo(&input),
    ));
    for exts in [
        vec![V6Ext::HopByHop],
        vec![V6Ext::DestinationOptions],
        vec![
            V6Ext::HopByHop,
            V6Ext::Routing,
            V6Ext::Fragment {
                offset: 0,
                more: false,
            },
            V6Ext::DestinationOptions,
        ],
    ] {
        let mut ip = V6::new(CLIENT6, VIP6);
        ip.ext = exts.clone();
        let input = packets::echo_request6(&ip, 9, 9, b"behind headers");
        cases.push(Case::one(
            format!(
                "ICMPv6 echo request behind {} extension header(s): answered, the headers kept",
                exts.len()
            ),
            &c,
            input.clone(),
            echo(&input),
        ));
    }

    // Ethernet padding after a small request: kept, outside the checksum.
    let mut input = packets::echo_request4(&V4::new(CLIENT4, VIP4), 3, 4, b"");
    input.resize(60, 0xaa);
    cases.push(Case::one(
        "echo request in a 60-byte frame padded with 0xaa: answered, the padding kept",
        &c,
        input.clone(),
        echo(&input),
    ));
    let mut input = packets::echo_request6(&V6::new(CLIENT6, VIP6), 3, 4, b"");
    input.extend_from_slice(&[0xaa; 9]);
    cases.push(Case::one(
        "ICMPv6 echo request with 9 bytes after the packet: answered, the bytes kept",
        &c,
        input.clone(),
        echo(&input),
    ));

    // Checksum edges: requests whose reply checksum is 0x0000, and whose own is.
    for v6 in [false, true] {
        let request = |seq: u16| {
            if v6 {
                packets::echo_request6(&V6::new(CLIENT6, VIP6), 0x1111, seq, b"edge")
            } else {
                packets::echo_request4(&V4::new(CLIENT4, VIP4), 0x1111, seq, b"edge")
            }
        };
        let icmp_at = if v6 { 54 } else { 34 };
        let reply_zero = (0..=u16::MAX)
            .map(request)
            .find(|r| echo_reply_checksum(r) == 0)
            .expect("some sequence number gives the reply checksum 0");
        let request_zero = (0..=u16::MAX)
            .map(request)
            .find(|r| r[icmp_at + 2..icmp_at + 4] == [0, 0])
            .expect("some sequence number gives the request checksum 0");
        let family = if v6 { "ICMPv6" } else { "ICMP" };
        for (what, input) in [
            ("whose reply's checksum is 0x0000", reply_zero),
            ("with checksum 0x0000", request_zero),
        ] {
            cases.push(Case::one(
                format!("{family} echo request {what}: answered, checksum valid"),
                &c,
                input.clone(),
                echo(&input),
            ));
        }
    }

    // Cut short.
    let request4 = packets::echo_request4(&V4::new(CLIENT4, VIP4), 1, 1, b"");
    let request6 = packets::echo_request6(&V6::new(CLIENT6, VIP6), 1, 1, b"");
    for len in 0..8 {
        for (family, full, ip_len) in [("ICMP", &request4, 20), ("ICMPv6", &request6, 40)] {
            let message = &full[14 + ip_len..];
            let l4 = L4::Other(if ip_len == 20 { 1 } else { 58 });
            let cut = if ip_len == 20 {
                packets::ipv4(&V4::new(CLIENT4, VIP4), l4, &message[..len])
            } else {
                packets::ipv6(&V6::new(CLIENT6, VIP6), l4, &message[..len])
            };
            cases.push(Case::one(
                format!("{family} echo request to a VIP cut to {len} of 8 header bytes: malformed"),
                &c,
                cut.clone(),
                Expect::pass(&cut, Reason::PassMalformed),
            ));
        }
    }

    // Not a VIP's address.
    let twin = filter_twin4();
    let (clear4, clear6) = outside_filter(&c);
    let other: Vec<(String, Vec<u8>, Reason)> = vec![
        (
            format!("echo request to {twin}, in the VIP filter but no VIP's: passed"),
            packets::echo_request4(&V4::new(CLIENT4, twin), 1, 1, b"x"),
            Reason::PassNotTcpUdp,
        ),
        (
            format!("echo request to {clear4}, outside the VIP filter: not a VIP"),
            packets::echo_request4(&V4::new(CLIENT4, clear4), 1, 1, b"x"),
            Reason::PassNotVip,
        ),
        (
            format!("ICMPv6 echo request to {clear6}, outside the VIP filter: not a VIP"),
            packets::echo_request6(&V6::new(CLIENT6, clear6), 1, 1, b"x"),
            Reason::PassNotVip,
        ),
        (
            "ICMPv6 echo request to the IPv4-mapped form of an IPv4 VIP: not answered".into(),
            packets::echo_request6(&V6::new(CLIENT6, VIP4.to_ipv6_mapped()), 1, 1, b"x"),
            // Inside the VIP filter but no VIP's: other ICMP, as before echo was answered.
            Reason::PassNotTcpUdp,
        ),
        (
            "ICMP echo request with code 1 to a VIP: passed".into(),
            packets::icmp4(&V4::new(CLIENT4, VIP4), 8, 1, [0, 1, 0, 1], b"x"),
            Reason::PassNotTcpUdp,
        ),
        (
            "ICMPv6 echo request with code 1 to a VIP: passed".into(),
            packets::icmp6(&V6::new(CLIENT6, VIP6), 128, 1, [0, 1, 0, 1], b"x"),
            Reason::PassNotTcpUdp,
        ),
    ];
    for (label, input, reason) in other {
        cases.push(Case::one(
            label,
            &c,
            input.clone(),
            Expect::pass(&input, reason),
        ));
    }

    // An address whose VIPs are all removed is no longer answered.
    let only = one_vip(vip(VIP4, 80, Protocol::Tcp), &[(11, false)]);
    let gone = one_vip(vip(VIP4_ALL, 0, Protocol::Tcp), &[(13, false)]);
    let ping = packets::echo_request4(&V4::new(CLIENT4, VIP4), 5, 5, b"still there?");
    // Stopped by the filter unless the remaining VIP shares the address's bit.
    let bit = |a: Ipv4Addr| lbx_common::vip_filter_bit(&lbx::addr::to_words(a.into()));
    let gone_reason = if bit(VIP4) == bit(VIP4_ALL) {
        Reason::PassNotTcpUdp
    } else {
        Reason::PassNotVip
    };
    cases.push(Case {
        description: "echo requests to a VIP address follow its VIPs".into(),
        steps: vec![
            configure(only.clone()),
            send("with the VIP: answered", ping.clone(), echo(&ping)),
            configure(gone),
            send(
                "with the address's only VIP removed: no VIP's",
                ping.clone(),
                Expect::pass(&ping, gone_reason),
            ),
            configure(only),
            send("with the VIP back: answered", ping.clone(), echo(&ping)),
        ],
    });

    let mut tb = load();
    run_cases(&mut tb, &cases, 15 + 2 + 3 + 2 + 4 + 16 + 6 + 3);
}

/// `icmp_echo = false`: echo requests to VIP addresses pass to the kernel as before,
/// while ICMP errors about VIP flows still go to their backends.
#[test]
fn icmp_echo_off_passes() {
    let vips = [
        vip_toml(
            vip(VIP4, 80, Protocol::Tcp),
            &[backend_toml(b4(11), 11, 100, false)],
        ),
        vip_toml(
            vip(VIP6, 443, Protocol::Tcp),
            &[backend_toml(b6(21), 21, 100, false)],
        ),
    ];
    let off = config_top("icmp_echo = false", "", &vips);
    let on = config_top("icmp_echo = true", "", &vips);
    assert!(
        !off.icmp_echo && on.icmp_echo,
        "icmp_echo read from the file"
    );
    let ping4 = packets::echo_request4(&V4::new(CLIENT4, VIP4), 1, 1, b"ping");
    let ping6 = packets::echo_request6(&V6::new(CLIENT6, VIP6), 1, 1, b"ping");
    let flow4 = (IpAddr::V4(CLIENT4), IpAddr::V4(VIP4), L4::tcp(40000, 80));
    let flow6 = (IpAddr::V6(CLIENT6), IpAddr::V6(VIP6), L4::tcp(40000, 443));
    let err4 = error_about(flow4, 28);
    let err6 = error_about(flow6, 48);
    let echo = |input: &[u8]| Expect::sent(Reason::EchoReply, packets::echo_reply(input));
    let cases = vec![
        Case::one(
            "icmp_echo = false: an echo request to a VIP passes",
            &off,
            ping4.clone(),
            Expect::pass(&ping4, Reason::PassNotTcpUdp),
        ),
        Case::one(
            "icmp_echo = false: an ICMPv6 echo request to a VIP passes",
            &off,
            ping6.clone(),
            Expect::pass(&ping6, Reason::PassNotTcpUdp),
        ),
        Case::one(
            "icmp_echo = false: an ICMP error still goes to the backend",
            &off,
            err4.clone(),
            icmp_to_backend(&off, &err4, flow4, (b4(11), 11)),
        ),
        Case::one(
            "icmp_echo = false: an ICMPv6 error still goes to the backend",
            &off,
            err6.clone(),
            icmp_to_backend(&off, &err6, flow6, (b6(21), 21)),
        ),
        Case {
            description: "icmp_echo turned off and on again".into(),
            steps: vec![
                configure(on.clone()),
                send("on: answered", ping4.clone(), echo(&ping4)),
                send("on: ICMPv6 answered", ping6.clone(), echo(&ping6)),
                configure(off.clone()),
                send(
                    "off: passed",
                    ping4.clone(),
                    Expect::pass(&ping4, Reason::PassNotTcpUdp),
                ),
                send(
                    "off: ICMPv6 passed",
                    ping6.clone(),
                    Expect::pass(&ping6, Reason::PassNotTcpUdp),
                ),
                configure(on),
                send("on again: answered", ping4.clone(), echo(&ping4)),
            ],
        },
    ];
    let mut tb = load();
    run_cases(&mut tb, &cases, 9);
}

/// IPv6 extension headers before TCP or UDP: hop-by-hop, routing, destination options
/// and first fragments are walked (at most 4) and the packet balanced as without them,
/// the headers inside the encapsulation; later fragments, a fifth header and the headers
/// lbx does not walk are passed; a header beyond the packet is malformed.
#[test]
fn ipv6_extension_headers_are_walked() {
    let c = standard();
    let c6 = IpAddr::V6(CLIENT6);
    let mut cases = Vec::new();
    let tcp = (c6, IpAddr::V6(VIP6), L4::tcp(40000, 443));
    let udp = (c6, IpAddr::V6(VIP6), L4::udp(40000, 53));
    let all = (c6, IpAddr::V6(VIP6_ALL), L4::udp(40000, 4789));
    let tcp_vip = (vip(VIP6, 443, Protocol::Tcp), (b6(21), 21));
    let udp_vip = (vip(VIP6, 53, Protocol::Udp), (b6(22), 22));
    let all_vip = (vip(VIP6_ALL, 0, Protocol::Udp), (b6(23), 23));
    let first = V6Ext::Fragment {
        offset: 0,
        more: true,
    };
    let atomic = V6Ext::Fragment {
        offset: 0,
        more: false,
    };
    let later = V6Ext::Fragment {
        offset: 100,
        more: true,
    };
    let hbh = V6Ext::HopByHop;
    let dst = V6Ext::DestinationOptions;
    let rt = V6Ext::Routing;
    let frame = |exts: &[V6Ext], l4: L4| {
        let mut ip = V6::new(CLIENT6, VIP6);
        if matches!(l4, L4::Udp { dport: 4789, .. }) {
            ip.dst = VIP6_ALL;
        }
        ip.ext = exts.to_vec();
        packets::ipv6(&ip, l4, b"behind extension headers")
    };

    let walked: Vec<(&str, Vec<V6Ext>)> = vec![
        ("hop-by-hop", vec![hbh]),
        ("destination options", vec![dst]),
        ("routing", vec![rt]),
        ("first fragment (M set)", vec![first]),
        ("atomic fragment (offset 0, M clear)", vec![atomic]),
        (
            "hop-by-hop of 16 bytes (length 1)",
            vec![V6Ext::Sized { number: 0, len: 1 }],
        ),
        (
            "destination options of 256 bytes (length 31)",
            vec![V6Ext::Sized {
                number: 60,
                len: 31,
            }],
        ),
        (
            "routing of 808 bytes (length 100)",
            vec![V6Ext::Sized {
                number: 43,
                len: 100,
            }],
        ),
        ("hop-by-hop, destination options", vec![hbh, dst]),
        ("hop-by-hop, routing, fragment", vec![hbh, rt, first]),
        (
            "hop-by-hop, destination options, routing, fragment (RFC 8200's order, 4 headers)",
            vec![hbh, dst, rt, first],
        ),
        (
            "hop-by-hop, routing, fragment, destination options (4)",
            vec![hbh, rt, atomic, dst],
        ),
        ("destination options four times", vec![dst, dst, dst, dst]),
        (
            "four headers of 16, 24, 8 and 32 bytes",
            vec![
                V6Ext::Sized { number: 0, len: 1 },
                V6Ext::Sized { number: 43, len: 2 },
                atomic,
                V6Ext::Sized { number: 60, len: 3 },
            ],
        ),
    ];
    for (label, exts) in &walked {
        for (flow, (id, backend)) in [(tcp, tcp_vip), (udp, udp_vip), (all, all_vip)] {
            let input = frame(exts, flow.2);
            let e = to_backend(&c, &input, flow, id, backend, true);
            let what = match flow.2 {
                L4::Udp { dport: 4789, .. } => "UDP to an all-ports VIP",
                L4::Udp { .. } => "UDP",
                _ => "TCP",
            };
            cases.push(Case::one(
                format!("IPv6 {what} behind {label}: balanced as without them"),
                &c,
                input,
                e,
            ));
        }
    }
    // The headers do not change the flow: a packet with them and one without are one flow.
    let plain = packets::ipv6(&V6::new(CLIENT6, VIP6), tcp.2, b"plain");
    let ext = frame(&[hbh, dst], tcp.2);
    cases.push(Case {
        description: "IPv6 TCP with and without extension headers: one flow".into(),
        steps: vec![
            configure(c.clone()),
            send(
                "with two extension headers: a new flow",
                ext.clone(),
                to_backend(&c, &ext, tcp, tcp_vip.0, tcp_vip.1, true),
            ),
            send(
                "without: a hit",
                plain.clone(),
                to_backend(&c, &plain, tcp, tcp_vip.0, tcp_vip.1, false),
            ),
        ],
    });

    let passed: Vec<(&str, Vec<V6Ext>, Reason)> = vec![
        ("a later fragment", vec![later], Reason::PassFragment),
        (
            "hop-by-hop then a later fragment",
            vec![hbh, later],
            Reason::PassFragment,
        ),
        (
            "three headers then a later fragment",
            vec![hbh, dst, rt, later],
            Reason::PassFragment,
        ),
        (
            "five headers",
            vec![hbh, dst, rt, atomic, dst],
            Reason::PassExtensionHeader,
        ),
        (
            "destination options five times",
            vec![dst, dst, dst, dst, dst],
            Reason::PassExtensionHeader,
        ),
        (
            "four headers then a later fragment (a fifth)",
            vec![hbh, dst, rt, dst, later],
            Reason::PassExtensionHeader,
        ),
        (
            "ESP",
            vec![V6Ext::Unwalked(50)],
            Reason::PassExtensionHeader,
        ),
        ("AH", vec![V6Ext::Unwalked(51)], Reason::PassExtensionHeader),
        (
            "mobility",
            vec![V6Ext::Unwalked(135)],
            Reason::PassExtensionHeader,
        ),
        (
            "HIP",
            vec![V6Ext::Unwalked(139)],
            Reason::PassExtensionHeader,
        ),
        (
            "shim6",
            vec![V6Ext::Unwalked(140)],
            Reason::PassExtensionHeader,
        ),
        (
            "hop-by-hop then AH",
            vec![hbh, V6Ext::Unwalked(51)],
            Reason::PassExtensionHeader,
        ),
        (
            "four headers then ESP",
            vec![hbh, dst, rt, atomic, V6Ext::Unwalked(50)],
            Reason::PassExtensionHeader,
        ),
    ];
    for (label, exts, reason) in passed {
        let input = frame(&exts, tcp.2);
        cases.push(Case::one(
            format!("IPv6 TCP behind {label}: passed"),
            &c,
            input.clone(),
            Expect::pass(&input, reason),
        ));
    }

    // Cut at every length from the first extension header to the end of TCP, the
    // payload length saying so: each header must fit the payload (and the frame).
    let full = frame(&[V6Ext::Sized { number: 0, len: 1 }, rt, atomic], tcp.2);
    let headers_end = 54 + 16 + 8 + 8 + 20;
    for len in 54..headers_end {
        let mut cut = full[..len].to_vec();
        cut[18..20].copy_from_slice(&((len - 54) as u16).to_be_bytes());
        cases.push(Case::one(
            format!(
                "IPv6 TCP behind three extension headers, payload cut to {} bytes: malformed",
                len - 54
            ),
            &c,
            cut.clone(),
            Expect::pass(&cut, Reason::PassMalformed),
        ));
    }
    // The frame cut inside a header, the payload length unchanged: malformed as a length
    // beyond the frame.
    let cut = full[..54 + 3].to_vec();
    cases.push(Case::one(
        "IPv6 frame cut 3 bytes into a hop-by-hop header: malformed",
        &c,
        cut.clone(),
        Expect::pass(&cut, Reason::PassMalformed),
    ));
    // A header length beyond the payload, the frame longer: malformed.
    let mut long = frame(&[hbh], tcp.2);
    long[54 + 1] = 200;
    cases.push(Case::one(
        "IPv6 hop-by-hop header claiming 1608 bytes in a shorter payload: malformed",
        &c,
        long.clone(),
        Expect::pass(&long, Reason::PassMalformed),
    ));
    let mut padded = long.clone();
    padded.resize(54 + 1608 + 20, 0);
    cases.push(Case::one(
        "IPv6 hop-by-hop header claiming 1608 bytes, the frame that long but not the payload: malformed",
        &c,
        padded.clone(),
        Expect::pass(&padded, Reason::PassMalformed),
    ));

    let mut tb = load();
    run_cases(
        &mut tb,
        &cases,
        3 * walked.len() + 2 + 13 + (headers_end - 54) + 3,
    );
}

/// The second chance: while `Settings::second_chance_until` is ahead of the clock, a TCP
/// packet without SYN that misses the table takes the previous generation's ring backend
/// when it differs and still serves the VIP, and is recorded there; a SYN, UDP, ICMP errors
/// and packets after the window take the current ring.
#[test]
fn second_chance_after_a_ring_change() {
    let mut cases = Vec::new();
    for v6 in [false, true] {
        let (id, udp_id, client) = if v6 {
            (
                vip(VIP6, 443, Protocol::Tcp),
                vip(VIP6, 53, Protocol::Udp),
                IpAddr::V6(CLIENT6),
            )
        } else {
            (
                vip(VIP4, 80, Protocol::Tcp),
                vip(VIP4, 53, Protocol::Udp),
                IpAddr::V4(CLIENT4),
            )
        };
        let addr = |n: u8| if v6 { b6(n) } else { b4(n) };
        let both = |backends: &[(u8, bool)]| {
            let lines: Vec<String> = backends
                .iter()
                .map(|&(n, drain)| backend_toml(addr(n), n, 100, drain))
                .collect();
            config_with("", &[vip_toml(id, &lines), vip_toml(udp_id, &lines)])
        };
        let first = both(&[(1, false)]);
        let moved = both(&[(1, true), (2, false)]);
        let removed = both(&[(2, false)]);
        let flow = |p: u16| (client, id.address, L4::tcp(p, id.port));
        let pkt = |p: u16| packets::simple(client, id.address, L4::tcp(p, id.port), b"ack");
        let syn = packets::simple(client, id.address, L4::syn(40002, id.port), b"syn");
        let udp_flow = (client, id.address, L4::udp(40003, 53));
        let udp = packets::simple(client, id.address, udp_flow.2, b"udp");
        let err = error_about(flow(40004), 48);
        let second = |config: &Config, p: u16, n: u8| {
            let input = pkt(p);
            let output = packets::encapsulated(
                &input,
                client,
                id.address,
                flow(p).2,
                &encap_of(config, addr(n), n),
            );
            Expect::tx_as(
                Reason::ForwardedSecondChance,
                output,
                Traffic {
                    vip: id,
                    backend: addr(n),
                    new_flow: true,
                },
            )
        };
        let family = if v6 { "IPv6" } else { "IPv4" };
        // The clock only moves forward, across the cases too.
        let start = if v6 { 1000 } else { 100 };
        cases.push(Case {
            description: format!("{family}: second chance for TCP without SYN after a ring change"),
            steps: vec![
                Step::Tick(start),
                configure(first.clone()),
                configure(moved.clone()),
                send(
                    "an ACK of a flow the table lacks, A drained, B the ring's: A, the previous ring's",
                    pkt(40000),
                    second(&moved, 40000, 1),
                ),
                send(
                    "that flow again: A, recorded",
                    pkt(40000),
                    to_backend(&moved, &pkt(40000), flow(40000), id, (addr(1), 1), false),
                ),
                send(
                    "a SYN: B, the current ring's",
                    syn.clone(),
                    to_backend(
                        &moved,
                        &syn,
                        (client, id.address, L4::tcp(40002, id.port)),
                        id,
                        (addr(2), 2),
                        true,
                    ),
                ),
                send(
                    "UDP: B",
                    udp.clone(),
                    to_backend(&moved, &udp, udp_flow, udp_id, (addr(2), 2), true),
                ),
                send(
                    "an ICMP error about a flow the table lacks: B, the current ring's",
                    err.clone(),
                    icmp_to_backend(&moved, &err, flow(40004), (addr(2), 2)),
                ),
                Step::Tick(start + lbx::dataplane::DEFAULT_SECOND_CHANCE_S),
                send(
                    "an ACK of another new flow once the window closed: B",
                    pkt(40001),
                    to_backend(&moved, &pkt(40001), flow(40001), id, (addr(2), 2), true),
                ),
                configure(first.clone()),
                configure(removed.clone()),
                send(
                    "after A was removed: B, A serves no more",
                    pkt(40005),
                    to_backend(&removed, &pkt(40005), flow(40005), id, (addr(2), 2), true),
                ),
            ],
        });
    }
    let mut tb = load();
    run_cases(&mut tb, &cases, 14);
}
