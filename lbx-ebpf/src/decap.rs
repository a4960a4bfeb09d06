//! `lbx decap`: on a backend, strips the outer IPv4 or IPv6 header lbx added, for packets
//! whose inner destination is a local VIP, and passes the inner packet to the stack.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lbx_common::{AddrKey, DecapReason, FAMILY_V4, FAMILY_V6, PROTO_IPIP, PROTO_IPV6};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    cursor::{ptr_at, read_at},
    maps::DECAP_VIPS,
    parse::{ETH_LEN, ETH_P_IP, ETH_P_IPV6},
};

#[inline(always)]
pub fn decap(ctx: &XdpContext) -> DecapReason {
    match try_decap(ctx) {
        Ok(reason) | Err(reason) => reason,
    }
}

#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a reference hands the helper the key in place; by value would copy it on the packet path"
)]
#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<DecapReason, DecapReason> {
    let eth: EthHdr = read_at(ctx, 0).ok_or(DecapReason::Passed)?;
    let (outer_len, key) = if eth.ether_type == ETH_P_IP {
        let outer: Ipv4Hdr = read_at(ctx, ETH_LEN).ok_or(DecapReason::Passed)?;
        // lbx never adds IPv4 options, so an outer header with them is not ours.
        if outer.proto != PROTO_IPIP || outer.vihl != 0x45 {
            return Err(DecapReason::Passed);
        }
        let inner: Ipv4Hdr = read_at(ctx, ETH_LEN + Ipv4Hdr::LEN).ok_or(DecapReason::Malformed)?;
        let key = AddrKey {
            addr: [u32::from_ne_bytes(inner.dst_addr), 0, 0, 0],
            family: FAMILY_V4,
            pad: [0; 3],
        };
        (Ipv4Hdr::LEN, key)
    } else if eth.ether_type == ETH_P_IPV6 {
        let outer: Ipv6Hdr = read_at(ctx, ETH_LEN).ok_or(DecapReason::Passed)?;
        if outer.next_hdr != PROTO_IPV6 {
            return Err(DecapReason::Passed);
        }
        let inner: Ipv6Hdr = read_at(ctx, ETH_LEN + Ipv6Hdr::LEN).ok_or(DecapReason::Malformed)?;
        let d = inner.dst_addr;
        let key = AddrKey {
            addr: [
                u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
                u32::from_ne_bytes([d[4], d[5], d[6], d[7]]),
                u32::from_ne_bytes([d[8], d[9], d[10], d[11]]),
                u32::from_ne_bytes([d[12], d[13], d[14], d[15]]),
            ],
            family: FAMILY_V6,
            pad: [0; 3],
        };
        (Ipv6Hdr::LEN, key)
    } else {
        return Err(DecapReason::Passed);
    };
    if unsafe { DECAP_VIPS.get(&key) }.is_none() {
        return Err(DecapReason::NotLocalVip);
    }
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(DecapReason::Malformed);
    }
    // The inner packet has the outer one's family: the Ethernet header stays as it was.
    let new = ptr_at::<EthHdr>(ctx, 0).ok_or(DecapReason::Malformed)?;
    unsafe { new.write_unaligned(eth) };
    Ok(DecapReason::Decapsulated)
}
