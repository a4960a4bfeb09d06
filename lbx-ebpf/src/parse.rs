//! Parses Ethernet, IPv4/IPv6 and the TCP/UDP ports into a flow key, in two steps: the
//! network layer up to the destination address (`network`), which is all the not-a-VIP
//! filter needs, then the source and the ports (`flow_key`). Any frame that is not a
//! complete, unfragmented TCP or UDP packet yields the reason it is passed. IPv6
//! extension headers that may precede the ports are walked, at most `IPV6_EXT_MAX`.

use aya_ebpf::programs::XdpContext;
use lbx_common::{
    Addr, FAMILY_V4, FAMILY_V6, FlowKey, IPV6_EXT_MAX, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    PROTO_UDP, Reason,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, udp::UdpHdr};

use crate::cursor::{ptr_at, read_at};

pub const ETH_LEN: usize = EthHdr::LEN;
/// EtherTypes as they sit in the header (network order read natively).
pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86DDu16.to_be();

/// TCP header without options.
const TCP_LEN: usize = 20;
/// The SYN bit of the TCP flags byte.
pub const TCP_SYN: u8 = 0x02;

/// IPv4 "more fragments" flag and fragment offset; "don't fragment".
const IP_MF_OFFSET: u16 = 0x3fff;
pub const IP_DF: u16 = 0x4000;

/// What the IP header says of a frame the balancer may serve: enough to tell whether its
/// destination can be a VIP before the rest is read.
pub struct Network {
    pub family: u8,
    pub proto: u8,
    pub dst: Addr,
    /// Offset of the transport header, and the bytes the IP header leaves for it.
    pub l4: usize,
    pub l4_len: usize,
    /// Bytes of the IP packet per its header: what encapsulation wraps.
    pub l3_len: u32,
    /// IPv4 TOS / IPv6 traffic class, carried to the outer header.
    pub tos: u8,
    /// IPv4 only: the inner "don't fragment" bit, copied to the outer header.
    pub df: bool,
}

/// Ethernet and the IP header, up to the destination address (IPv6: and the extension
/// headers it walks). Any frame that is not a whole, unfragmented IP packet yields the
/// reason it is passed.
#[inline(always)]
pub fn network(ctx: &XdpContext) -> Result<Network, Reason> {
    let eth: EthHdr = read_at(ctx, 0).ok_or(Reason::PassMalformed)?;
    if eth.ether_type == ETH_P_IP {
        network_v4(ctx)
    } else if eth.ether_type == ETH_P_IPV6 {
        network_v6(ctx)
    } else {
        Err(Reason::PassNotIp)
    }
}

impl Network {
    /// ICMP of the packet's family: the only protocol besides TCP and UDP lbx reads.
    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        self.proto
            == if self.family == FAMILY_V4 {
                PROTO_ICMP
            } else {
                PROTO_ICMPV6
            }
    }
}

/// The flow key of a frame `network` accepted, and its TCP flags (zero for UDP): it adds
/// the source and the TCP or UDP ports.
#[inline(always)]
pub fn flow_key(ctx: &XdpContext, net: &Network) -> Result<(FlowKey, u8), Reason> {
    let (sport_be, dport_be, flags) = ports(ctx, net.proto, net.l4, net.l4_len)?;
    let src = if net.family == FAMILY_V4 {
        addr_v4(read_at(ctx, ETH_LEN + IPV4_SRC).ok_or(Reason::PassMalformed)?)
    } else {
        addr_v6(read_at(ctx, ETH_LEN + IPV6_SRC).ok_or(Reason::PassMalformed)?)
    };
    let key = FlowKey {
        src,
        dst: net.dst,
        sport_be,
        dport_be,
        proto: net.proto,
        family: net.family,
        pad: 0,
    };
    Ok((key, flags))
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
pub fn addr_v4(octets: [u8; 4]) -> Addr {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

#[inline(always)]
pub fn addr_v6(o: [u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// Reads the ports (and TCP's flags) of a TCP or UDP header at `l4` and checks it fits the
/// `l4_len` bytes the IP header leaves for it.
#[inline(always)]
fn ports(ctx: &XdpContext, proto: u8, l4: usize, l4_len: usize) -> Result<(u16, u16, u8), Reason> {
    if proto == PROTO_TCP {
        // Raw bytes: network-types' TcpHdr keeps the data offset in a bitfield.
        let tcp: [u8; TCP_LEN] = read_at(ctx, l4).ok_or(Reason::PassMalformed)?;
        let doff = (tcp[12] >> 4) as usize * 4;
        if doff < TCP_LEN || doff > l4_len {
            return Err(Reason::PassMalformed);
        }
        Ok((
            u16::from_ne_bytes([tcp[0], tcp[1]]),
            u16::from_ne_bytes([tcp[2], tcp[3]]),
            tcp[13],
        ))
    } else if proto == PROTO_UDP {
        let udp: UdpHdr = read_at(ctx, l4).ok_or(Reason::PassMalformed)?;
        if UdpHdr::LEN > l4_len {
            return Err(Reason::PassMalformed);
        }
        Ok((u16::from_ne_bytes(udp.src), u16::from_ne_bytes(udp.dst), 0))
    } else {
        Err(Reason::PassNotTcpUdp)
    }
}

/// Offsets of the source address in the IPv4 and IPv6 headers.
const IPV4_SRC: usize = 12;
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;

#[inline(always)]
fn network_v4(ctx: &XdpContext) -> Result<Network, Reason> {
    let ip: Ipv4Hdr = read_at(ctx, ETH_LEN).ok_or(Reason::PassMalformed)?;
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    let total = u16::from_be_bytes(ip.tot_len) as usize;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || total < ihl || ETH_LEN + total > frame_len(ctx) {
        return Err(Reason::PassMalformed);
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & IP_MF_OFFSET != 0 {
        return Err(Reason::PassFragment);
    }
    Ok(Network {
        family: FAMILY_V4,
        proto: ip.proto,
        dst: addr_v4(ip.dst_addr),
        l4: ETH_LEN + ihl,
        l4_len: total - ihl,
        l3_len: total as u32,
        tos: ip.tos,
        df: frags & IP_DF != 0,
    })
}

/// IPv6 extension headers the balancer walks: hop-by-hop, routing, destination options
/// (`[next header, length in 8 bytes - 1, ...]`) and fragment (8 bytes).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;

#[inline(always)]
fn is_walked(next: u8) -> bool {
    matches!(
        next,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_DEST_OPTS
    )
}

/// Extension headers lbx does not walk: ESP hides the ports, AH and the rest are rare.
#[inline(always)]
fn is_unwalked(next: u8) -> bool {
    matches!(next, 50 | 51 | 135 | 139 | 140)
}

/// The fixed part of the IPv6 header before the addresses.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Start {
    vcf: [u8; 4],
    payload_len: [u8; 2],
    next_hdr: u8,
    hop_limit: u8,
}

#[inline(always)]
fn network_v6(ctx: &XdpContext) -> Result<Network, Reason> {
    // The whole header must be there; the source is read only for a possible VIP.
    if ptr_at::<Ipv6Hdr>(ctx, ETH_LEN).is_none() {
        return Err(Reason::PassMalformed);
    }
    let ip: Ipv6Start = read_at(ctx, ETH_LEN).ok_or(Reason::PassMalformed)?;
    let payload = u16::from_be_bytes(ip.payload_len) as usize;
    if ip.vcf[0] >> 4 != 6 || ETH_LEN + Ipv6Hdr::LEN + payload > frame_len(ctx) {
        return Err(Reason::PassMalformed);
    }
    let end = ETH_LEN + Ipv6Hdr::LEN + payload;
    // TCP and UDP first: two compares, and no extension header to look for.
    let (proto, l4) = if ip.next_hdr == PROTO_TCP || ip.next_hdr == PROTO_UDP {
        (ip.next_hdr, ETH_LEN + Ipv6Hdr::LEN)
    } else {
        after_extension_headers(ctx, ip.next_hdr, end)?
    };
    let dst: [u8; 16] = read_at(ctx, ETH_LEN + IPV6_DST).ok_or(Reason::PassMalformed)?;
    Ok(Network {
        family: FAMILY_V6,
        proto,
        dst: addr_v6(dst),
        l4,
        l4_len: end - l4,
        l3_len: (Ipv6Hdr::LEN + payload) as u32,
        tos: (ip.vcf[0] << 4) | (ip.vcf[1] >> 4),
        df: false,
    })
}

/// The protocol after the extension headers that start with `next` (none, if `next` is
/// no extension header), and its offset.
#[inline(always)]
fn after_extension_headers(ctx: &XdpContext, next: u8, end: usize) -> Result<(u8, usize), Reason> {
    let (proto, l4) = if is_walked(next) {
        walk_extension_headers(ctx, next, end)?
    } else {
        (next, ETH_LEN + Ipv6Hdr::LEN)
    };
    if is_unwalked(proto) {
        return Err(Reason::PassExtensionHeader);
    }
    Ok((proto, l4))
}

/// Walks the extension headers from the first (`next`) to the transport header, within
/// the payload that ends at `end`: the transport protocol and its offset. A fragment
/// after the first has no ports; more headers than `IPV6_EXT_MAX` are not walked.
#[inline(always)]
fn walk_extension_headers(
    ctx: &XdpContext,
    mut next: u8,
    end: usize,
) -> Result<(u8, usize), Reason> {
    let mut at = ETH_LEN + Ipv6Hdr::LEN;
    let mut walked = 0;
    while walked < IPV6_EXT_MAX && is_walked(next) {
        let h: [u8; 4] = read_at(ctx, at).ok_or(Reason::PassMalformed)?;
        let len = if next == IPV6_FRAGMENT {
            // Offset in 8-byte units, above the two reserved bits and M.
            if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                return Err(Reason::PassFragment);
            }
            8
        } else {
            (h[1] as usize + 1) * 8
        };
        if at + len > end {
            return Err(Reason::PassMalformed);
        }
        next = h[0];
        at += len;
        walked += 1;
    }
    if is_walked(next) {
        return Err(Reason::PassExtensionHeader);
    }
    Ok((next, at))
}
