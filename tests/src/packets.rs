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
    Ipv6RawExtHeader, SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
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

    fn number(self) -> IpNumber {
        match self {
            L4::Tcp { .. } => IpNumber::TCP,
            L4::Udp { .. } => IpNumber::UDP,
            L4::Other(n) => IpNumber(n),
        }
    }

    fn ports(self) -> (u16, u16) {
        match self {
            L4::Tcp { sport, dport } | L4::Udp { sport, dport } => (sport, dport),
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

/// An extension header between the IPv6 header and the transport.
#[derive(Clone, Copy, Debug)]
pub enum V6Ext {
    Fragment { offset: u16, more: bool },
    HopByHop,
    DestinationOptions,
    Routing,
}

/// An IPv6 header's choices.
#[derive(Clone, Debug)]
pub struct V6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    pub ext: Option<V6Ext>,
}

impl V6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> V6 {
        V6 {
            src,
            dst,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
            ext: None,
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
        L4::Tcp { sport, dport } => {
            let mut t = TcpHeader::new(sport, dport, 0x0102_0304, 64240);
            t.ack = true;
            t.psh = true;
            t.acknowledgment_number = 0x0a0b_0c0d;
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
        L4::Tcp { .. } => TcpHeader::MIN_LEN,
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

/// Ethernet + IPv6 (+ one extension header) + transport + payload.
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
    // The transport checksum covers the final header's view: next header = transport.
    let body = transport(l4, payload, None, Some(&h));
    let mut ext = Vec::new();
    match ip.ext {
        None => {}
        Some(V6Ext::Fragment { offset, more }) => {
            h.next_header = IpNumber::IPV6_FRAGMENTATION_HEADER;
            Ipv6FragmentHeader::new(
                l4.number(),
                IpFragOffset::try_new(offset).expect("13 bits"),
                more,
                0x0bad_cafe,
            )
            .write(&mut ext)
            .expect("write to a Vec");
        }
        Some(kind) => {
            let (number, body6) = match kind {
                V6Ext::HopByHop => (IpNumber::IPV6_HEADER_HOP_BY_HOP, [1u8, 4, 0, 0, 0, 0]),
                V6Ext::DestinationOptions => {
                    (IpNumber::IPV6_DESTINATION_OPTIONS, [1u8, 4, 0, 0, 0, 0])
                }
                // Routing type 253 (experimental), segments left 0.
                _ => (IpNumber::IPV6_ROUTE_HEADER, [253u8, 0, 0, 0, 0, 0]),
            };
            h.next_header = number;
            Ipv6RawExtHeader::new_raw(l4.number(), &body6)
                .expect("6 bytes")
                .write(&mut ext)
                .expect("write to a Vec");
        }
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
        (
            h.next_header,
            &rest[..usize::from(h.payload_length).min(rest_len)],
        )
    };
    let trailer = b.len() - (rest.as_ptr() as usize - b.as_ptr() as usize) - rest.len();
    match next {
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
