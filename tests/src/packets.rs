//! Test packets, built with etherparse (never typed as hex); the encapsulated packets the
//! balancer must send, built from the input and the backend by the RFCs, independently of
//! the program and of the reference model; and a field-by-field decoding for failures.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Header, IpDscp, IpEcn,
    IpFragOffset, IpNumber, Ipv4Header, Ipv4Options, Ipv6FlowLabel, Ipv6FragmentHeader, Ipv6Header,
    SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
};
use lbx_common::{FAMILY_V4, FAMILY_V6, FlowKey, hash::flow_hash};

/// The balancer's own MAC: frames to a VIP arrive addressed to it.
pub const LB_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x02];
/// The router in front of the balancer: the source of client frames.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];

/// Outer TTL / hop limit the balancer sets (the value lbx documents).
pub const OUTER_TTL: u8 = 64;

/// The transport header, or another protocol's number with the payload as its body.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
    },
    /// A TCP SYN (no ACK): the first packet of a connection.
    Syn {
        sport: u16,
        dport: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Any other protocol (ICMP, GRE, ...): no header of ours, the payload follows IP.
    Other(u8),
}

impl L4 {
    pub fn tcp(sport: u16, dport: u16) -> L4 {
        L4::Tcp { sport, dport }
    }

    pub fn udp(sport: u16, dport: u16) -> L4 {
        L4::Udp { sport, dport }
    }

    pub fn syn(sport: u16, dport: u16) -> L4 {
        L4::Syn { sport, dport }
    }

    fn number(self) -> IpNumber {
        match self {
            L4::Tcp { .. } | L4::Syn { .. } => IpNumber::TCP,
            L4::Udp { .. } => IpNumber::UDP,
            L4::Other(n) => IpNumber(n),
        }
    }

    fn ports(self) -> (u16, u16) {
        match self {
            L4::Tcp { sport, dport } | L4::Syn { sport, dport } | L4::Udp { sport, dport } => {
                (sport, dport)
            }
            L4::Other(_) => (0, 0),
        }
    }
}

/// An IPv4 header's choices; `V4::new` is a plain unfragmented packet with TTL 64.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// TOS byte: DSCP (6 bits) and ECN (2 bits).
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    /// In 8-byte units.
    pub frag_offset: u16,
    /// Options, a multiple of 4 bytes, at most 40.
    pub options: Vec<u8>,
}

impl V4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> V4 {
        V4 {
            src,
            dst,
            tos: 0,
            ttl: 64,
            id: 0x1234,
            df: false,
            mf: false,
            frag_offset: 0,
            options: Vec::new(),
        }
    }
}

/// An extension header between the IPv6 header and the transport (RFC 8200).
#[derive(Clone, Copy, Debug)]
pub enum V6Ext {
    /// Offset in 8-byte units.
    Fragment {
        offset: u16,
        more: bool,
    },
    /// 8 bytes: one PadN option.
    HopByHop,
    DestinationOptions,
    /// 8 bytes: routing type 253 (experimental), segments left 0.
    Routing,
    /// Hop-by-hop (0), routing (43) or destination options (60) of `(len + 1) * 8` bytes.
    Sized {
        number: u8,
        len: u8,
    },
    /// A header lbx does not walk (ESP 50, AH 51, mobility 135, HIP 139, shim6 140), 8
    /// bytes, its next header (where it has one) first.
    Unwalked(u8),
}

impl V6Ext {
    /// The header's protocol number.
    pub fn number(self) -> u8 {
        match self {
            V6Ext::Fragment { .. } => 44,
            V6Ext::HopByHop => 0,
            V6Ext::DestinationOptions => 60,
            V6Ext::Routing => 43,
            V6Ext::Sized { number, .. } | V6Ext::Unwalked(number) => number,
        }
    }

    /// The header's bytes, followed by protocol `next`.
    pub fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            V6Ext::Fragment { offset, more } => {
                let mut out = Vec::new();
                Ipv6FragmentHeader::new(
                    IpNumber(next),
                    IpFragOffset::try_new(offset).expect("13 bits"),
                    more,
                    0x0bad_cafe,
                )
                .write(&mut out)
                .expect("write to a Vec");
                out
            }
            V6Ext::HopByHop | V6Ext::DestinationOptions => vec![next, 0, 1, 4, 0, 0, 0, 0],
            V6Ext::Routing => vec![next, 0, 253, 0, 0, 0, 0, 0],
            V6Ext::Sized { number, len } => {
                // Pad1 options fill an options header; a routing header gets type 253.
                let mut out = vec![0; (usize::from(len) + 1) * 8];
                out[0] = next;
                out[1] = len;
                if number == 43 {
                    out[2] = 253;
                }
                out
            }
            V6Ext::Unwalked(_) => vec![next, 0, 0, 0, 0, 0, 0, 0],
        }
    }
}

/// An IPv6 header's choices.
#[derive(Clone, Debug)]
pub struct V6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    /// Extension headers in order, between the IPv6 header and the transport.
    pub ext: Vec<V6Ext>,
}

impl V6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> V6 {
        V6 {
            src,
            dst,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
            ext: Vec::new(),
        }
    }
}

fn eth(ether_type: EtherType) -> Ethernet2Header {
    Ethernet2Header {
        source: ROUTER_MAC,
        destination: LB_MAC,
        ether_type,
    }
}

/// TCP (no options, ACK|PSH) or UDP header bytes with a valid checksum given `pseudo`.
fn transport(l4: L4, payload: &[u8], v4: Option<&Ipv4Header>, v6: Option<&Ipv6Header>) -> Vec<u8> {
    let mut out = Vec::new();
    match l4 {
        L4::Tcp { sport, dport } | L4::Syn { sport, dport } => {
            let mut t = TcpHeader::new(sport, dport, 0x0102_0304, 64240);
            if matches!(l4, L4::Syn { .. }) {
                t.syn = true;
            } else {
                t.ack = true;
                t.psh = true;
                t.acknowledgment_number = 0x0a0b_0c0d;
            }
            t.checksum = match (v4, v6) {
                (Some(ip), _) => t.calc_checksum_ipv4(ip, payload).expect("fits"),
                (_, Some(ip)) => t.calc_checksum_ipv6(ip, payload).expect("fits"),
                _ => 0,
            };
            t.write(&mut out).expect("write to a Vec");
        }
        L4::Udp { sport, dport } => {
            let u = match (v4, v6) {
                (Some(ip), _) => {
                    UdpHeader::with_ipv4_checksum(sport, dport, ip, payload).expect("fits")
                }
                (_, Some(ip)) => {
                    UdpHeader::with_ipv6_checksum(sport, dport, ip, payload).expect("fits")
                }
                _ => UdpHeader::without_ipv4_checksum(sport, dport, payload.len()).expect("fits"),
            };
            u.write(&mut out).expect("write to a Vec");
        }
        L4::Other(_) => {}
    }
    out.extend_from_slice(payload);
    out
}

fn ipv4_header(ip: &V4, proto: IpNumber, payload_len: usize) -> Ipv4Header {
    let mut h = Ipv4Header::new(0, ip.ttl, proto, ip.src.octets(), ip.dst.octets())
        .expect("no payload yet");
    h.dscp = IpDscp::try_new(ip.tos >> 2).expect("6 bits");
    h.ecn = IpEcn::try_new(ip.tos & 3).expect("2 bits");
    h.identification = ip.id;
    h.dont_fragment = ip.df;
    h.more_fragments = ip.mf;
    h.fragment_offset = IpFragOffset::try_new(ip.frag_offset).expect("13 bits");
    h.options = Ipv4Options::try_from(&ip.options[..]).expect("options: 4n bytes, at most 40");
    h.set_payload_len(payload_len).expect("fits");
    h.header_checksum = h.calc_header_checksum();
    h
}

/// Ethernet + IPv4 + transport + payload.
pub fn ipv4(ip: &V4, l4: L4, payload: &[u8]) -> Vec<u8> {
    let l4_len = match l4 {
        L4::Tcp { .. } | L4::Syn { .. } => TcpHeader::MIN_LEN,
        L4::Udp { .. } => UdpHeader::LEN,
        L4::Other(_) => 0,
    };
    let h = ipv4_header(ip, l4.number(), l4_len + payload.len());
    let mut out = Vec::new();
    eth(EtherType::IPV4)
        .write(&mut out)
        .expect("write to a Vec");
    h.write(&mut out).expect("write to a Vec");
    out.extend(transport(l4, payload, Some(&h), None));
    out
}

/// Ethernet + IPv6 + its extension headers + transport + payload.
pub fn ipv6(ip: &V6, l4: L4, payload: &[u8]) -> Vec<u8> {
    let mut h = Ipv6Header {
        traffic_class: ip.traffic_class,
        flow_label: Ipv6FlowLabel::try_new(ip.flow_label).expect("20 bits"),
        payload_length: 0,
        next_header: l4.number(),
        hop_limit: ip.hop_limit,
        source: ip.src.octets(),
        destination: ip.dst.octets(),
    };
    // The transport checksum's pseudo header names the transport, whatever comes between.
    let body = transport(l4, payload, None, Some(&h));
    let mut ext = Vec::new();
    for (i, e) in ip.ext.iter().enumerate() {
        let next = ip.ext.get(i + 1).map_or(l4.number().0, |n| n.number());
        ext.extend(e.bytes(next));
    }
    if let Some(first) = ip.ext.first() {
        h.next_header = IpNumber(first.number());
    }
    h.set_payload_length(ext.len() + body.len()).expect("fits");
    let mut out = Vec::new();
    eth(EtherType::IPV6)
        .write(&mut out)
        .expect("write to a Vec");
    h.write(&mut out).expect("write to a Vec");
    out.extend(ext);
    out.extend(body);
    out
}

/// An IP packet (v4 or v6 by the addresses) with default header choices.
pub fn simple(src: IpAddr, dst: IpAddr, l4: L4, payload: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(&V4::new(s, d), l4, payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(&V6::new(s, d), l4, payload),
        _ => panic!("{src} and {dst} are of different families"),
    }
}

/// The RFC 1071 checksum of `data`: the complement of its one's-complement sum of 16-bit
/// words, an odd last byte padded with zero.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The ICMPv6 pseudo header (RFC 8200 section 8.1) for a message of `len` bytes.
fn icmp6_pseudo_header(src: [u8; 16], dst: [u8; 16], len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 58]);
    p
}

/// An ICMP message (RFC 792): type, code, checksum over the message, the four bytes that
/// depend on the type (`rest`), and the body.
pub fn icmp4_message(kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let sum = internet_checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// An ICMPv6 message (RFC 4443) from `src` to `dst`, its checksum over the pseudo header
/// and the message.
pub fn icmp6_message(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let mut all = icmp6_pseudo_header(src.octets(), dst.octets(), m.len());
    all.extend_from_slice(&m);
    let sum = internet_checksum(&all);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// Ethernet + IPv4 + an ICMP message.
pub fn icmp4(ip: &V4, kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    ipv4(ip, L4::Other(1), &icmp4_message(kind, code, rest, body))
}

/// Ethernet + IPv6 (and its extension headers) + an ICMPv6 message.
pub fn icmp6(ip: &V6, kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let m = icmp6_message(ip.src, ip.dst, kind, code, rest, body);
    ipv6(ip, L4::Other(58), &m)
}

/// The IP packet of a frame built here: what follows the Ethernet header.
pub fn ip_packet(frame: &[u8]) -> &[u8] {
    &frame[Ethernet2Header::LEN..]
}

/// An ICMP "fragmentation needed" (type 3 code 4, RFC 1191) with next-hop MTU `mtu`,
/// embedding `embedded` (the start of the IP packet that did not fit).
pub fn frag_needed(ip: &V4, mtu: u16, embedded: &[u8]) -> Vec<u8> {
    let [a, b] = mtu.to_be_bytes();
    icmp4(ip, 3, 4, [0, 0, a, b], embedded)
}

/// An ICMPv6 "packet too big" (type 2, RFC 4443 section 3.2) with `code` and `mtu`.
pub fn packet_too_big(ip: &V6, code: u8, mtu: u32, embedded: &[u8]) -> Vec<u8> {
    icmp6(ip, 2, code, mtu.to_be_bytes(), embedded)
}

/// An ICMP echo request (type 8).
pub fn echo_request4(ip: &V4, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    let [c, d] = seq.to_be_bytes();
    icmp4(ip, 8, 0, [a, b, c, d], data)
}

/// An ICMPv6 echo request (type 128).
pub fn echo_request6(ip: &V6, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    let [c, d] = seq.to_be_bytes();
    icmp6(ip, 128, 0, [a, b, c, d], data)
}

/// Offset (in the frame) and protocol of what follows the extension headers of the IPv6
/// packet at offset 14 whose first next header is `next`: hop-by-hop, routing and
/// destination options by their length byte, fragments of 8 bytes.
fn after_extensions(frame: &[u8], mut next: u8) -> (usize, u8) {
    let mut at = Ethernet2Header::LEN + Ipv6Header::LEN;
    loop {
        match next {
            0 | 43 | 60 => {
                let len = (usize::from(frame[at + 1]) + 1) * 8;
                next = frame[at];
                at += len;
            }
            44 => {
                next = frame[at];
                at += 8;
            }
            _ => return (at, next),
        }
    }
}

/// The echo reply (RFC 792, RFC 4443 section 4.2) a responder in place of the VIP sends
/// for the echo request `request`: MACs and addresses swapped, TTL / hop limit 64, reply
/// type and code 0, IPv4 header and ICMP checksums computed anew over the reply (IPv6: with
/// the reply's pseudo header); identifier, sequence, data, IP options and extension
/// headers, and bytes after the IP packet, as they came.
pub fn echo_reply(request: &[u8]) -> Vec<u8> {
    let mut out = request.to_vec();
    out[0..6].copy_from_slice(&request[6..12]);
    out[6..12].copy_from_slice(&request[0..6]);
    let ip_at = Ethernet2Header::LEN;
    let (e, _) = Ethernet2Header::from_slice(request).expect("Ethernet");
    if e.ether_type == EtherType::IPV4 {
        let (mut h, _) = Ipv4Header::from_slice(&request[ip_at..]).expect("IPv4");
        std::mem::swap(&mut h.source, &mut h.destination);
        h.time_to_live = OUTER_TTL;
        h.header_checksum = h.calc_header_checksum();
        let mut hb = Vec::new();
        h.write(&mut hb).expect("write to a Vec");
        out[ip_at..ip_at + hb.len()].copy_from_slice(&hb);
        let at = ip_at + hb.len();
        let end = ip_at + usize::from(h.total_len);
        out[at] = 0;
        out[at + 1] = 0;
        out[at + 2..at + 4].copy_from_slice(&[0, 0]);
        let sum = internet_checksum(&out[at..end]);
        out[at + 2..at + 4].copy_from_slice(&sum.to_be_bytes());
    } else {
        let (mut h, _) = Ipv6Header::from_slice(&request[ip_at..]).expect("IPv6");
        std::mem::swap(&mut h.source, &mut h.destination);
        h.hop_limit = OUTER_TTL;
        let mut hb = Vec::new();
        h.write(&mut hb).expect("write to a Vec");
        out[ip_at..ip_at + hb.len()].copy_from_slice(&hb);
        let (at, next) = after_extensions(request, h.next_header.0);
        assert_eq!(next, 58, "an ICMPv6 echo request");
        let end = ip_at + Ipv6Header::LEN + usize::from(h.payload_length);
        out[at] = 129;
        out[at + 1] = 0;
        out[at + 2..at + 4].copy_from_slice(&[0, 0]);
        let mut all = icmp6_pseudo_header(h.source, h.destination, end - at);
        all.extend_from_slice(&out[at..end]);
        let sum = internet_checksum(&all);
        out[at + 2..at + 4].copy_from_slice(&sum.to_be_bytes());
    }
    out
}

/// A broadcast ARP request: who has `target`, tell `sender`.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REQUEST,
        &ROUTER_MAC,
        &sender.octets(),
        &[0; 6],
        &target.octets(),
    )
    .expect("Ethernet/IPv4 ARP");
    let mut out = Vec::new();
    Ethernet2Header {
        destination: [0xff; 6],
        ..eth(EtherType::ARP)
    }
    .write(&mut out)
    .expect("write to a Vec");
    arp.write(&mut out).expect("write to a Vec");
    out
}

/// The IPv4 packet of `ipv4(ip, l4, payload)` behind an 802.1Q tag.
pub fn vlan_ipv4(vlan: u16, ip: &V4, l4: L4, payload: &[u8]) -> Vec<u8> {
    let untagged = ipv4(ip, l4, payload);
    let mut out = Vec::new();
    eth(EtherType::VLAN_TAGGED_FRAME)
        .write(&mut out)
        .expect("write to a Vec");
    SingleVlanHeader {
        pcp: VlanPcp::ZERO,
        drop_eligible_indicator: false,
        vlan_id: VlanId::try_new(vlan).expect("12 bits"),
        ether_type: EtherType::IPV4,
    }
    .write(&mut out)
    .expect("write to a Vec");
    out.extend_from_slice(&untagged[Ethernet2Header::LEN..]);
    out
}

/// Network-order bytes as the data plane's address words.
fn words(ip: IpAddr) -> [u32; 4] {
    lbx::addr::to_words(ip)
}

/// The flow key of a client packet, as the data plane forms it.
pub fn flow_key(src: IpAddr, dst: IpAddr, l4: L4) -> FlowKey {
    let (sport, dport) = l4.ports();
    FlowKey {
        src: words(src),
        dst: words(dst),
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto: l4.number().0,
        family: if src.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 },
        pad: 0,
    }
}

/// The outer source lbx picks in `prefix/len` for a flow with encapsulation hash `hash`:
/// the prefix's bits, and the host bits from the hash's bytes in memory order.
pub fn outer_source(prefix: IpAddr, len: u8, hash: u32) -> IpAddr {
    let h = hash.to_ne_bytes();
    match prefix {
        IpAddr::V4(p) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len))
                .unwrap_or(0)
                .to_be_bytes();
            let mut o = p.octets();
            for i in 0..4 {
                o[i] = (o[i] & mask[i]) | (h[i] & !mask[i]);
            }
            IpAddr::V4(o.into())
        }
        IpAddr::V6(p) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len))
                .unwrap_or(0)
                .to_be_bytes();
            let mut o = p.octets();
            for i in 0..16 {
                o[i] = (o[i] & mask[i]) | (h[i % 4] & !mask[i]);
            }
            IpAddr::V6(o.into())
        }
    }
}

/// Where and how a packet is to be encapsulated.
#[derive(Clone, Copy, Debug)]
pub struct Encap {
    pub backend: IpAddr,
    pub backend_mac: [u8; 6],
    /// The outer source prefix of the packet's family, and the flow-hash seed.
    pub prefix: IpAddr,
    pub prefix_len: u8,
    pub seed: u32,
}

/// The frame lbx must send for `input` (a client frame of a flow `src -> dst` over `l4`):
/// the inner packet whole (and any Ethernet padding after it) behind an outer IPv4 header
/// (RFC 2003) or IPv6 header (RFC 2473), in a frame to the backend's next hop from the
/// balancer's own MAC.
pub fn encapsulated(input: &[u8], src: IpAddr, dst: IpAddr, l4: L4, e: &Encap) -> Vec<u8> {
    let (in_eth, inner) = Ethernet2Header::from_slice(input).expect("input has Ethernet");
    let hash = flow_hash(&flow_key(src, dst, l4), e.seed);
    let outer_src = outer_source(e.prefix, e.prefix_len, hash);
    let mut out = Vec::new();
    Ethernet2Header {
        destination: e.backend_mac,
        source: in_eth.destination,
        ether_type: in_eth.ether_type,
    }
    .write(&mut out)
    .expect("write to a Vec");
    match (e.backend, outer_src) {
        (IpAddr::V4(b), IpAddr::V4(s)) => {
            let (ih, _) = Ipv4Header::from_slice(inner).expect("inner IPv4");
            let inner_len = usize::from(ih.total_len);
            let mut h = Ipv4Header::new(0, OUTER_TTL, IpNumber::IPV4, s.octets(), b.octets())
                .expect("no payload yet");
            h.dscp = ih.dscp;
            h.ecn = ih.ecn;
            h.identification = 0;
            h.dont_fragment = ih.dont_fragment;
            h.set_payload_len(inner_len).expect("fits");
            h.header_checksum = h.calc_header_checksum();
            h.write(&mut out).expect("write to a Vec");
        }
        (IpAddr::V6(b), IpAddr::V6(s)) => {
            let (ih, _) = Ipv6Header::from_slice(inner).expect("inner IPv6");
            let h = Ipv6Header {
                traffic_class: ih.traffic_class,
                flow_label: Ipv6FlowLabel::try_new(hash & 0xf_ffff).expect("20 bits"),
                payload_length: Ipv6Header::LEN as u16 + ih.payload_length,
                next_header: IpNumber::IPV6,
                hop_limit: OUTER_TTL,
                source: s.octets(),
                destination: b.octets(),
            };
            h.write(&mut out).expect("write to a Vec");
        }
        _ => panic!(
            "backend {} and prefix {} differ in family",
            e.backend, e.prefix
        ),
    }
    out.extend_from_slice(inner);
    out
}

fn mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The frame decoded into (field, value) lines: Ethernet, IP (and the inner IP of a
/// tunnel), TCP or UDP; where a header does not decode, why, and its bytes.
pub fn fields(frame: &[u8]) -> Vec<(String, String)> {
    let mut f = Vec::new();
    f.push(("frame.len".into(), frame.len().to_string()));
    let Ok((e, rest)) = Ethernet2Header::from_slice(frame) else {
        f.push(("eth".into(), format!("cut short: {}", hex(frame))));
        return f;
    };
    f.push(("eth.dst".into(), mac(&e.destination)));
    f.push(("eth.src".into(), mac(&e.source)));
    f.push(("eth.type".into(), format!("{:#06x}", e.ether_type.0)));
    match e.ether_type {
        EtherType::IPV4 | EtherType::IPV6 => ip_fields(&mut f, "ip", rest, e.ether_type),
        _ => f.push(("payload".into(), hex(rest))),
    }
    f
}

fn ip_fields(f: &mut Vec<(String, String)>, p: &str, b: &[u8], t: EtherType) {
    // IPv6 addresses, for the ICMPv6 checksum.
    let mut pseudo = None;
    let mut put = |k: &str, v: String| f.push((format!("{p}.{k}"), v));
    let (next, rest) = if t == EtherType::IPV4 {
        let (h, rest) = match Ipv4Header::from_slice(b) {
            Ok(x) => x,
            Err(err) => {
                put("undecoded", format!("{err}: {}", hex(b)));
                return;
            }
        };
        put("version", "4".into());
        put("ihl", h.ihl().to_string());
        put("dscp", h.dscp.value().to_string());
        put("ecn", h.ecn.value().to_string());
        put("total_len", h.total_len.to_string());
        put("id", format!("{:#06x}", h.identification));
        put("df", h.dont_fragment.to_string());
        put("mf", h.more_fragments.to_string());
        put("frag_offset", h.fragment_offset.value().to_string());
        put("ttl", h.time_to_live.to_string());
        put("protocol", h.protocol.0.to_string());
        let ok = h.header_checksum == h.calc_header_checksum();
        put(
            "checksum",
            format!(
                "{:#06x} ({})",
                h.header_checksum,
                if ok { "ok" } else { "BAD" }
            ),
        );
        put("src", Ipv4Addr::from(h.source).to_string());
        put("dst", Ipv4Addr::from(h.destination).to_string());
        if !h.options.is_empty() {
            put("options", hex(h.options.as_slice()));
        }
        let body = usize::from(h.total_len).saturating_sub(h.header_len());
        let rest_len = rest.len();
        (h.protocol, &rest[..body.min(rest_len)])
    } else {
        let (h, rest) = match Ipv6Header::from_slice(b) {
            Ok(x) => x,
            Err(err) => {
                put("undecoded", format!("{err}: {}", hex(b)));
                return;
            }
        };
        put("version", "6".into());
        put("traffic_class", format!("{:#04x}", h.traffic_class));
        put("flow_label", format!("{:#07x}", h.flow_label.value()));
        put("payload_len", h.payload_length.to_string());
        put("next_header", h.next_header.0.to_string());
        put("hop_limit", h.hop_limit.to_string());
        put("src", h.source_addr().to_string());
        put("dst", h.destination_addr().to_string());
        let rest_len = rest.len();
        let mut rest = &rest[..usize::from(h.payload_length).min(rest_len)];
        let mut next = h.next_header;
        // Extension headers, as the balancer walks them.
        let mut n = 0;
        while matches!(next.0, 0 | 43 | 44 | 60) && rest.len() >= 2 {
            let len = if next.0 == 44 {
                8
            } else {
                (usize::from(rest[1]) + 1) * 8
            };
            let what = if next.0 == 44 && rest.len() >= 4 {
                let off = u16::from_be_bytes([rest[2], rest[3]]);
                format!(
                    "fragment, next {}, offset {}, more {}",
                    rest[0],
                    off >> 3,
                    off & 1
                )
            } else {
                format!("type {}, next {}, {len} bytes", next.0, rest[0])
            };
            put(&format!("ext{n}"), what);
            n += 1;
            next = IpNumber(rest[0]);
            if len > rest.len() {
                put("ext_cut", format!("{} of {len} bytes", rest.len()));
                return;
            }
            rest = &rest[len..];
        }
        pseudo = Some((h.source, h.destination));
        (next, rest)
    };
    let trailer = b.len() - (rest.as_ptr() as usize - b.as_ptr() as usize) - rest.len();
    match next {
        IpNumber::ICMP | IpNumber::IPV6_ICMP => icmp_fields(f, p, rest, pseudo),
        IpNumber::IPV4 => ip_fields(f, &format!("{p}.inner"), rest, EtherType::IPV4),
        IpNumber::IPV6 => ip_fields(f, &format!("{p}.inner"), rest, EtherType::IPV6),
        IpNumber::TCP => match TcpHeader::from_slice(rest) {
            Ok((t, data)) => {
                f.push(("tcp.sport".into(), t.source_port.to_string()));
                f.push(("tcp.dport".into(), t.destination_port.to_string()));
                f.push(("tcp.seq".into(), t.sequence_number.to_string()));
                f.push(("tcp.doff".into(), t.data_offset().to_string()));
                f.push(("tcp.checksum".into(), format!("{:#06x}", t.checksum)));
                f.push(("tcp.data_len".into(), data.len().to_string()));
            }
            Err(err) => f.push(("tcp.undecoded".into(), format!("{err}: {}", hex(rest)))),
        },
        IpNumber::UDP => match UdpHeader::from_slice(rest) {
            Ok((u, data)) => {
                f.push(("udp.sport".into(), u.source_port.to_string()));
                f.push(("udp.dport".into(), u.destination_port.to_string()));
                f.push(("udp.length".into(), u.length.to_string()));
                f.push(("udp.checksum".into(), format!("{:#06x}", u.checksum)));
                f.push(("udp.data_len".into(), data.len().to_string()));
            }
            Err(err) => f.push(("udp.undecoded".into(), format!("{err}: {}", hex(rest)))),
        },
        _ => f.push((format!("{p}.payload"), hex(rest))),
    }
    if trailer > 0 {
        f.push((format!("{p}.after_packet"), format!("{trailer} bytes")));
    }
}

/// An ICMP or ICMPv6 message (`pseudo`: the IPv6 addresses): type, code, checksum, and
/// an error's embedded packet.
fn icmp_fields(
    f: &mut Vec<(String, String)>,
    p: &str,
    m: &[u8],
    pseudo: Option<([u8; 16], [u8; 16])>,
) {
    let p = format!("{p}.icmp");
    if m.len() < 8 {
        f.push((format!("{p}.undecoded"), format!("cut short: {}", hex(m))));
        return;
    }
    f.push((format!("{p}.type"), m[0].to_string()));
    f.push((format!("{p}.code"), m[1].to_string()));
    let ok = match pseudo {
        None => internet_checksum(m) == 0,
        Some((s, d)) => {
            let mut all = icmp6_pseudo_header(s, d, m.len());
            all.extend_from_slice(m);
            internet_checksum(&all) == 0
        }
    };
    f.push((
        format!("{p}.checksum"),
        format!(
            "{:#06x} ({})",
            u16::from_be_bytes([m[2], m[3]]),
            if ok { "ok" } else { "BAD" }
        ),
    ));
    f.push((format!("{p}.rest"), hex(&m[4..8])));
    let error = match pseudo {
        None => matches!(m[0], 3 | 11 | 12),
        Some(_) => matches!(m[0], 1..=4),
    };
    let inner = &m[8..];
    if error && !inner.is_empty() {
        let t = if inner[0] >> 4 == 6 {
            EtherType::IPV6
        } else {
            EtherType::IPV4
        };
        ip_fields(f, &format!("{p}.inner"), inner, t);
    } else {
        f.push((format!("{p}.data"), format!("{} bytes", inner.len())));
    }
}

/// Expected and actual frames side by side, field by field, differences marked, then
/// the first differing byte.
pub fn compare(expected: &[u8], actual: &[u8]) -> String {
    let (e, a) = (fields(expected), fields(actual));
    let mut s = String::new();
    let _ = writeln!(s, "  {:<26} {:<40} actual", "field", "expected");
    let n = e.len().max(a.len());
    let none = (String::from("-"), String::from("-"));
    for i in 0..n {
        let (ek, ev) = e.get(i).unwrap_or(&none);
        let (ak, av) = a.get(i).unwrap_or(&none);
        let mark = if e.get(i) == a.get(i) { ' ' } else { '*' };
        if ek == ak {
            let _ = writeln!(s, "{mark} {ek:<26} {ev:<40} {av}");
        } else {
            let _ = writeln!(s, "{mark} {:<67} {ak}={av}", format!("{ek}={ev}"));
        }
    }
    match expected.iter().zip(actual).position(|(x, y)| x != y) {
        Some(i) => {
            let _ = writeln!(s, "  first differing byte: offset {i}");
        }
        None if expected.len() != actual.len() => {
            let _ = writeln!(
                s,
                "  lengths differ: expected {}, actual {}",
                expected.len(),
                actual.len()
            );
        }
        None => {}
    }
    s
}
