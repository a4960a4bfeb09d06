//! IPv4-in-IPv4 and IPv6-in-IPv6 encapsulation towards a backend (RFC 2003, RFC 2473).

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lbx_common::{
    Backend, IP6IP6_OVERHEAD, IPIP_OVERHEAD, OUTER_TTL, PROTO_IPIP, PROTO_IPV6, Reason, Settings,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    cursor::ptr_at,
    parse::{ETH_LEN, IP_DF, Network},
};

/// Checks that the packet still fits the link with `overhead` more bytes, grows the
/// headroom by them and writes the new Ethernet header: to the backend's next hop, from
/// the address the packet came to (ours).
#[inline(always)]
fn push_outer(
    ctx: &XdpContext,
    net: &Network,
    settings: &Settings,
    overhead: u32,
    backend: &Backend,
) -> Result<(), Reason> {
    if net.l3_len + overhead > settings.mtu {
        return Err(Reason::DropTooBig);
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(overhead as i32)) } != 0 {
        return Err(Reason::DropEncapFailed);
    }
    let old = ptr_at::<EthHdr>(ctx, overhead as usize).ok_or(Reason::DropEncapFailed)?;
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::DropEncapFailed)?;
    unsafe {
        let old = old.read_unaligned();
        eth.write_unaligned(EthHdr {
            dst_addr: backend.mac,
            src_addr: old.dst_addr,
            ether_type: old.ether_type,
        });
    }
    Ok(())
}

#[inline(always)]
fn checksum_v4(words: &[u16; 10]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 {
        sum += words[i] as u32;
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
pub fn ipip(
    ctx: &XdpContext,
    net: &Network,
    backend: &Backend,
    settings: &Settings,
    hash: u32,
) -> Result<(), Reason> {
    push_outer(ctx, net, settings, IPIP_OVERHEAD, backend)?;
    // Vary the source per flow so receive-side scaling on the backend, which often sees
    // only the outer header, spreads flows over its queues.
    let src = (settings.src_v4 | (hash & settings.src_v4_hostmask)).to_ne_bytes();
    let dst = backend.addr[0].to_ne_bytes();
    let total = (net.l3_len + IPIP_OVERHEAD) as u16;
    let frags = if net.df { IP_DF } else { 0 };
    let ttl_proto = ((OUTER_TTL as u16) << 8) | PROTO_IPIP as u16;
    let check = checksum_v4(&[
        0x4500 | net.tos as u16,
        total,
        0,
        frags,
        ttl_proto,
        0,
        u16::from_be_bytes([src[0], src[1]]),
        u16::from_be_bytes([src[2], src[3]]),
        u16::from_be_bytes([dst[0], dst[1]]),
        u16::from_be_bytes([dst[2], dst[3]]),
    ]);
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN).ok_or(Reason::DropEncapFailed)?;
    unsafe {
        ip.write_unaligned(Ipv4Hdr {
            vihl: 0x45,
            tos: net.tos,
            tot_len: total.to_be_bytes(),
            id: [0, 0],
            frags: frags.to_be_bytes(),
            ttl: OUTER_TTL,
            proto: PROTO_IPIP,
            check: check.to_be_bytes(),
            src_addr: src,
            dst_addr: dst,
        });
    }
    Ok(())
}

#[inline(always)]
fn addr_bytes(a: [u32; 4]) -> [u8; 16] {
    let (w0, w1, w2, w3) = (
        a[0].to_ne_bytes(),
        a[1].to_ne_bytes(),
        a[2].to_ne_bytes(),
        a[3].to_ne_bytes(),
    );
    [
        w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3], w3[0],
        w3[1], w3[2], w3[3],
    ]
}

#[inline(always)]
pub fn ip6ip6(
    ctx: &XdpContext,
    net: &Network,
    backend: &Backend,
    settings: &Settings,
    hash: u32,
) -> Result<(), Reason> {
    push_outer(ctx, net, settings, IP6IP6_OVERHEAD, backend)?;
    let m = &settings.src_v6_hostmask;
    let p = &settings.src_v6;
    let src = [
        p[0] | (hash & m[0]),
        p[1] | (hash & m[1]),
        p[2] | (hash & m[2]),
        p[3] | (hash & m[3]),
    ];
    // The flow label also spreads flows (RFC 6438); the traffic class is carried over.
    let label = hash & 0x000f_ffff;
    let tc = net.tos;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN).ok_or(Reason::DropEncapFailed)?;
    unsafe {
        ip.write_unaligned(Ipv6Hdr {
            vcf: [
                0x60 | (tc >> 4),
                (tc << 4) | ((label >> 16) as u8 & 0x0f),
                (label >> 8) as u8,
                label as u8,
            ],
            payload_len: (net.l3_len as u16).to_be_bytes(),
            next_hdr: PROTO_IPV6,
            hop_limit: OUTER_TTL,
            src_addr: addr_bytes(src),
            dst_addr: addr_bytes(backend.addr),
        });
    }
    Ok(())
}
