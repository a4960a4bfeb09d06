//! Parses Ethernet, IPv4/IPv6 and the TCP/UDP ports into a flow key, in two steps: the
//! network layer up to the destination address (`network`), which is all the not-a-VIP
//! filter needs, then the source and the ports (`flow_key`). Any frame that is not a
//! complete, unfragmented TCP or UDP packet yields the reason it is passed.

use aya_ebpf::programs::XdpContext;
use lbx_common::{Addr, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, udp::UdpHdr};

use crate::cursor::{ptr_at, read_at};

pub const ETH_LEN: usize = EthHdr::LEN;
/// EtherTypes as they sit in the header (network order read natively).
pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86DDu16.to_be();

/// TCP header without options.
const TCP_LEN: usize = 20;

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
    l4: usize,
    l4_len: usize,
    /// Bytes of the IP packet per its header: what encapsulation wraps.
    pub l3_len: u32,
    /// IPv4 TOS / IPv6 traffic class, carried to the outer header.
    pub tos: u8,
    /// IPv4 only: the inner "don't fragment" bit, copied to the outer header.
    pub df: bool,
}

/// Ethernet and the IP header, up to the destination address. Any frame that is not a
/// whole, unfragmented IP packet without IPv6 extension headers yields the reason it is
/// passed.
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

/// The flow key of a frame `network` accepted: it adds the source and the TCP or UDP
/// ports.
#[inline(always)]
pub fn flow_key(ctx: &XdpContext, net: &Network) -> Result<FlowKey, Reason> {
    let (sport_be, dport_be) = ports(ctx, net.proto, net.l4, net.l4_len)?;
    let src = if net.family == FAMILY_V4 {
        addr_v4(read_at(ctx, ETH_LEN + IPV4_SRC).ok_or(Reason::PassMalformed)?)
    } else {
        addr_v6(read_at(ctx, ETH_LEN + IPV6_SRC).ok_or(Reason::PassMalformed)?)
    };
    Ok(FlowKey {
        src,
        dst: net.dst,
        sport_be,
        dport_be,
        proto: net.proto,
        family: net.family,
        pad: 0,
    })
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
fn addr_v4(octets: [u8; 4]) -> Addr {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

#[inline(always)]
fn addr_v6(o: [u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// Reads the ports of a TCP or UDP header at `l4` and checks it fits the `l4_len` bytes
/// the IP header leaves for it.
#[inline(always)]
fn ports(ctx: &XdpContext, proto: u8, l4: usize, l4_len: usize) -> Result<(u16, u16), Reason> {
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
        ))
    } else if proto == PROTO_UDP {
        let udp: UdpHdr = read_at(ctx, l4).ok_or(Reason::PassMalformed)?;
        if UdpHdr::LEN > l4_len {
            return Err(Reason::PassMalformed);
        }
        Ok((u16::from_ne_bytes(udp.src), u16::from_ne_bytes(udp.dst)))
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

/// IPv6 fragment header.
const IPV6_FRAGMENT: u8 = 44;

/// IPv6 extension headers: the ports are further in, and lbx does not walk the chain.
#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 50 | 51 | 60 | 135 | 139 | 140)
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
    if ip.next_hdr == IPV6_FRAGMENT {
        return Err(Reason::PassFragment);
    }
    if is_extension_header(ip.next_hdr) {
        return Err(Reason::PassExtensionHeader);
    }
    let dst: [u8; 16] = read_at(ctx, ETH_LEN + IPV6_DST).ok_or(Reason::PassMalformed)?;
    Ok(Network {
        family: FAMILY_V6,
        proto: ip.next_hdr,
        dst: addr_v6(dst),
        l4: ETH_LEN + Ipv6Hdr::LEN,
        l4_len: payload,
        l3_len: (Ipv6Hdr::LEN + payload) as u32,
        tos: (ip.vcf[0] << 4) | (ip.vcf[1] >> 4),
        df: false,
    })
}
