//! The benchmark floor for the VIP path: a minimal forwarder that parses Ethernet, IPv4 or
//! IPv6 and the TCP/UDP ports, prepends a fixed outer header (only its length and checksum
//! vary) and sends the frame back out, with no map lookup. `cargo xtask bench` reports
//! lbx's VIP path as a ratio to it; it is never attached by lbx.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lbx_common::{IP6IP6_OVERHEAD, IPIP_OVERHEAD, OUTER_TTL, PROTO_IPIP, PROTO_IPV6};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    cursor::{ptr_at, read_at},
    parse::{ETH_LEN, ETH_P_IP, ETH_P_IPV6},
};

/// Fixed outer addresses (documentation prefixes) and next hop.
const SRC_V4: [u8; 4] = [192, 0, 2, 1];
const DST_V4: [u8; 4] = [192, 0, 2, 2];
const SRC_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const NEXT_HOP: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[inline(always)]
pub fn forward(ctx: &XdpContext) -> u32 {
    match try_forward(ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

/// Reads the transport ports, as lbx does; a packet without them is passed.
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize) -> Option<()> {
    let ports = read_at::<u32>(ctx, l4)?;
    // A real use of the value, so the read is not optimised away: port 0 to port 0 is
    // not a packet anyone forwards.
    (ports != 0).then_some(())
}

#[inline(always)]
fn try_forward(ctx: &XdpContext) -> Option<()> {
    let eth: EthHdr = read_at(ctx, 0)?;
    if eth.ether_type == ETH_P_IP {
        let ip: Ipv4Hdr = read_at(ctx, ETH_LEN)?;
        let ihl = (ip.vihl & 0x0f) as usize * 4;
        let total = u16::from_be_bytes(ip.tot_len);
        ports(ctx, ETH_LEN + ihl)?;
        push(ctx, IPIP_OVERHEAD, &eth)?;
        let total = total.wrapping_add(IPIP_OVERHEAD as u16);
        // Fixed fields folded at compile time; only the length is added in.
        let fixed: u32 = 0x4500
            + ((OUTER_TTL as u32) << 8 | PROTO_IPIP as u32)
            + u16::from_be_bytes([SRC_V4[0], SRC_V4[1]]) as u32
            + u16::from_be_bytes([SRC_V4[2], SRC_V4[3]]) as u32
            + u16::from_be_bytes([DST_V4[0], DST_V4[1]]) as u32
            + u16::from_be_bytes([DST_V4[2], DST_V4[3]]) as u32;
        let mut sum = fixed + total as u32;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let out = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)?;
        unsafe {
            out.write_unaligned(Ipv4Hdr {
                vihl: 0x45,
                tos: 0,
                tot_len: total.to_be_bytes(),
                id: [0, 0],
                frags: [0, 0],
                ttl: OUTER_TTL,
                proto: PROTO_IPIP,
                check: (!(sum as u16)).to_be_bytes(),
                src_addr: SRC_V4,
                dst_addr: DST_V4,
            });
        }
        Some(())
    } else if eth.ether_type == ETH_P_IPV6 {
        let ip: Ipv6Hdr = read_at(ctx, ETH_LEN)?;
        let payload = u16::from_be_bytes(ip.payload_len);
        ports(ctx, ETH_LEN + Ipv6Hdr::LEN)?;
        push(ctx, IP6IP6_OVERHEAD, &eth)?;
        let out = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN)?;
        unsafe {
            out.write_unaligned(Ipv6Hdr {
                vcf: [0x60, 0, 0, 0],
                payload_len: payload.wrapping_add(Ipv6Hdr::LEN as u16).to_be_bytes(),
                next_hdr: PROTO_IPV6,
                hop_limit: OUTER_TTL,
                src_addr: SRC_V6,
                dst_addr: DST_V6,
            });
        }
        Some(())
    } else {
        None
    }
}

/// Grows the headroom and writes the outer Ethernet header.
#[inline(always)]
fn push(ctx: &XdpContext, overhead: u32, old: &EthHdr) -> Option<()> {
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(overhead as i32)) } != 0 {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    unsafe {
        eth.write_unaligned(EthHdr {
            dst_addr: NEXT_HOP,
            src_addr: old.dst_addr,
            ether_type: old.ether_type,
        });
    }
    Some(())
}
