//! ICMP to a VIP address. An error about a packet the VIP sent (fragmentation needed,
//! packet too big) goes to the backend that serves the flow, which sent that packet and
//! alone can lower its path MTU. An echo request is answered here, so `ping VIP` works.
//! Anything else is passed as before.

use aya_ebpf::programs::XdpContext;
use lbx_common::{
    Active, Addr, FAMILY_V4, FAMILY_V6, FlowKey, OUTER_TTL, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    PROTO_UDP, Reason, VIP_F_ECHO, VIP_F_HAS_BACKENDS, VipKey, flows, hash::flow_hash,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    cursor::{ptr_at, read_at},
    encap,
    lookup::{self, Generation},
    maps::{FLOWS, flow_set_mask},
    parse::{ETH_LEN, Network, addr_v4, addr_v6},
};

/// The ICMP header: type, code, checksum and four bytes that depend on the type.
const ICMP_LEN: usize = 8;
const V4_DEST_UNREACHABLE: u8 = 3;
const V4_FRAG_NEEDED: u8 = 4;
const V4_ECHO_REQUEST: u8 = 8;
const V4_ECHO_REPLY: u8 = 0;
const V6_PACKET_TOO_BIG: u8 = 2;
const V6_ECHO_REQUEST: u8 = 128;
const V6_ECHO_REPLY: u8 = 129;
/// Bytes of the embedded transport header read: the ports.
const PORTS_LEN: usize = 4;
/// IPv4 fragment offset.
const IP_OFFSET: u16 = 0x1fff;

enum Message {
    /// An error about the flow with this key (client to VIP, as the client sends it).
    Error(FlowKey),
    EchoRequest,
}

/// Answers or forwards an ICMP packet that `network` accepted, to an address that may be
/// a VIP's: the reason it is sent (`ForwardedIcmp`, `EchoReply`) or passed.
#[inline(always)]
pub fn handle(ctx: &XdpContext, net: &Network, active: *const Active) -> Result<Reason, Reason> {
    let message = message(ctx, net)?;
    let g = lookup::generation(active)?;
    match message {
        Message::Error(key) => forward_error(ctx, net, &key, &g),
        Message::EchoRequest => {
            let key = VipKey {
                addr: net.dst,
                port_be: 0,
                proto: if net.family == FAMILY_V4 {
                    PROTO_ICMP
                } else {
                    PROTO_ICMPV6
                },
                family: net.family,
            };
            match lookup::vip_entry(&key, &g) {
                Some(e) if e.flags & VIP_F_ECHO != 0 => echo_reply(ctx, net),
                _ => Err(Reason::PassNotTcpUdp),
            }
        }
    }
}

#[inline(always)]
fn message(ctx: &XdpContext, net: &Network) -> Result<Message, Reason> {
    let h: [u8; ICMP_LEN] = read_at(ctx, net.l4).ok_or(Reason::PassMalformed)?;
    if net.l4_len < ICMP_LEN {
        return Err(Reason::PassMalformed);
    }
    let (kind, code) = (h[0], h[1]);
    if net.family == FAMILY_V4 {
        if kind == V4_DEST_UNREACHABLE && code == V4_FRAG_NEEDED {
            return embedded_v4(ctx, net).map(Message::Error);
        }
        if kind == V4_ECHO_REQUEST && code == 0 {
            return Ok(Message::EchoRequest);
        }
    } else {
        if kind == V6_PACKET_TOO_BIG {
            return embedded_v6(ctx, net).map(Message::Error);
        }
        if kind == V6_ECHO_REQUEST && code == 0 {
            return Ok(Message::EchoRequest);
        }
    }
    Err(Reason::PassNotTcpUdp)
}

/// The flow of the IPv4 packet an error embeds: one the VIP (the error's destination)
/// sent to a client, its header and ports whole within the error.
#[inline(always)]
fn embedded_v4(ctx: &XdpContext, net: &Network) -> Result<FlowKey, Reason> {
    let at = net.l4 + ICMP_LEN;
    let room = net.l4_len - ICMP_LEN;
    let ip: Ipv4Hdr = read_at(ctx, at).ok_or(Reason::PassIcmpBadInner)?;
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    if ip.vihl >> 4 != 4
        || ihl < Ipv4Hdr::LEN
        || ihl + PORTS_LEN > room
        || u16::from_be_bytes(ip.frags) & IP_OFFSET != 0
        || !(ip.proto == PROTO_TCP || ip.proto == PROTO_UDP)
        || addr_v4(ip.src_addr)[0] != net.dst[0]
    {
        return Err(Reason::PassIcmpBadInner);
    }
    let ports: [u8; PORTS_LEN] = read_at(ctx, at + ihl).ok_or(Reason::PassIcmpBadInner)?;
    Ok(reversed(
        addr_v4(ip.dst_addr),
        net,
        ip.proto,
        FAMILY_V4,
        ports,
    ))
}

/// The same for IPv6: the embedded header is followed by the ports directly.
#[inline(always)]
fn embedded_v6(ctx: &XdpContext, net: &Network) -> Result<FlowKey, Reason> {
    let at = net.l4 + ICMP_LEN;
    let room = net.l4_len - ICMP_LEN;
    let ip: Ipv6Hdr = read_at(ctx, at).ok_or(Reason::PassIcmpBadInner)?;
    let src = addr_v6(ip.src_addr);
    if ip.vcf[0] >> 4 != 6
        || Ipv6Hdr::LEN + PORTS_LEN > room
        || !(ip.next_hdr == PROTO_TCP || ip.next_hdr == PROTO_UDP)
        || src[0] != net.dst[0]
        || src[1] != net.dst[1]
        || src[2] != net.dst[2]
        || src[3] != net.dst[3]
    {
        return Err(Reason::PassIcmpBadInner);
    }
    let ports: [u8; PORTS_LEN] = read_at(ctx, at + Ipv6Hdr::LEN).ok_or(Reason::PassIcmpBadInner)?;
    Ok(reversed(
        addr_v6(ip.dst_addr),
        net,
        ip.next_hdr,
        FAMILY_V6,
        ports,
    ))
}

/// The key of the client's direction of the flow whose VIP-to-client packet had `ports`.
#[inline(always)]
fn reversed(client: Addr, net: &Network, proto: u8, family: u8, ports: [u8; 4]) -> FlowKey {
    FlowKey {
        src: client,
        dst: net.dst,
        sport_be: u16::from_ne_bytes([ports[2], ports[3]]),
        dport_be: u16::from_ne_bytes([ports[0], ports[1]]),
        proto,
        family,
        pad: 0,
    }
}

/// Encapsulates the error to the flow's backend as one of the flow's packets would be,
/// without touching the connection table: an error does not make a flow.
#[inline(always)]
fn forward_error(
    ctx: &XdpContext,
    net: &Network,
    key: &FlowKey,
    g: &Generation,
) -> Result<Reason, Reason> {
    let vip = lookup::vip(key, g).ok_or(Reason::PassNotVip)?;
    let hash = flow_hash(key, g.settings.seed);
    let words = flows::key_words(key);
    let set = flows::set_base(hash, flow_set_mask());
    let mut ways = match (FLOWS.get_ptr_mut(set), FLOWS.get_ptr_mut(set + 1)) {
        (Some(a), Some(b)) => unsafe { [&mut *a, &mut *b] },
        _ => return Err(Reason::DropBadRing),
    };
    let (_, backend) = match lookup::established::<false>(&mut ways, &words, hash, g) {
        Some(found) => found,
        None => {
            if vip.flags & VIP_F_HAS_BACKENDS == 0 {
                return Err(Reason::DropNoBackend);
            }
            lookup::ring_backend(vip, lookup::ring_index(vip, hash)?, key.family, g)?
        }
    };
    if key.family == FAMILY_V4 {
        encap::ipip(ctx, net, backend, g.settings, hash)?;
    } else {
        encap::ip6ip6(ctx, net, backend, g.settings, hash)?;
    }
    Ok(Reason::ForwardedIcmp)
}

/// `check` with the 16-bit word `old` replaced by `new` (RFC 1624, eqn. 3).
#[inline(always)]
fn checksum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Turns the echo request into its reply in place and sends it back: addresses swapped,
/// a fresh TTL, the reply type, checksums updated; id, sequence and data kept.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, net: &Network) -> Result<Reason, Reason> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::PassMalformed)?;
    let icmp = ptr_at::<[u8; ICMP_LEN]>(ctx, net.l4).ok_or(Reason::PassMalformed)?;
    if net.family == FAMILY_V4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN).ok_or(Reason::PassMalformed)?;
        unsafe {
            let mut h = ip.read_unaligned();
            core::mem::swap(&mut h.src_addr, &mut h.dst_addr);
            let check = checksum_replace(
                u16::from_be_bytes(h.check),
                u16::from_be_bytes([h.ttl, h.proto]),
                u16::from_be_bytes([OUTER_TTL, h.proto]),
            );
            h.ttl = OUTER_TTL;
            h.check = check.to_be_bytes();
            ip.write_unaligned(h);
        }
        rewrite_type(icmp, V4_ECHO_REQUEST, V4_ECHO_REPLY);
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN).ok_or(Reason::PassMalformed)?;
        unsafe {
            let mut h = ip.read_unaligned();
            core::mem::swap(&mut h.src_addr, &mut h.dst_addr);
            h.hop_limit = OUTER_TTL;
            ip.write_unaligned(h);
        }
        // Swapping the addresses leaves the pseudo-header's sum as it was.
        rewrite_type(icmp, V6_ECHO_REQUEST, V6_ECHO_REPLY);
    }
    unsafe {
        let mut e = eth.read_unaligned();
        core::mem::swap(&mut e.src_addr, &mut e.dst_addr);
        eth.write_unaligned(e);
    }
    Ok(Reason::EchoReply)
}

/// Sets the ICMP type (code 0) and updates the checksum for it.
#[inline(always)]
fn rewrite_type(icmp: *mut [u8; ICMP_LEN], request: u8, reply: u8) {
    unsafe {
        let mut h = icmp.read_unaligned();
        let check = checksum_replace(
            u16::from_be_bytes([h[2], h[3]]),
            u16::from_be_bytes([request, 0]),
            u16::from_be_bytes([reply, 0]),
        );
        h[0] = reply;
        [h[2], h[3]] = check.to_be_bytes();
        icmp.write_unaligned(h);
    }
}
