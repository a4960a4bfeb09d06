//! lbx's XDP programs: the balancer, the backends' decapsulator, and a pass-through
//! program for the peer of a veth that receives XDP_TX frames.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod balancer;
mod cursor;
mod decap;
mod encap;
mod floor;
mod icmp;
mod lookup;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lbx_common::stages;

/// Balances packets for VIPs; passes everything else to the kernel unchanged. Inlined
/// into the entry point the macro makes: as a function of its own, the call would cost
/// every packet.
#[xdp]
#[inline(always)]
pub fn lbx_balancer(ctx: XdpContext) -> u32 {
    balance::<{ stages::ALL }>(&ctx)
}

#[inline(always)]
fn balance<const UNTIL: u32>(ctx: &XdpContext) -> u32 {
    let reason = balancer::balance::<UNTIL>(ctx);
    maps::count_reason(reason);
    balancer::action(reason)
}

/// On a backend: removes the IPIP / IPv6-in-IPv6 header of packets for local VIPs.
#[xdp]
pub fn lbx_decap(ctx: XdpContext) -> u32 {
    let reason = decap::decap(&ctx);
    maps::count_decap(reason);
    xdp_action::XDP_PASS
}

/// Passes every frame. Native XDP_TX into a veth only delivers when the peer runs an XDP
/// program; this is the cheapest one.
#[xdp]
pub fn lbx_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmark floor only (`cargo xtask bench`): parses Ethernet/IP/ports, prepends a fixed
/// outer header and sends the frame back, with no lookup. Never attached.
#[xdp]
pub fn lbx_bench_forward(ctx: XdpContext) -> u32 {
    floor::forward(&ctx)
}

/// Benchmark breakdown only (`cargo xtask bench`): the balancer stopped after a stage,
/// sending the frame back unchanged. Loaded with the balancer's maps; never attached.
#[xdp]
pub fn lbx_bench_until_filter(ctx: XdpContext) -> u32 {
    balance::<{ stages::FILTER }>(&ctx)
}

#[xdp]
pub fn lbx_bench_until_vip(ctx: XdpContext) -> u32 {
    balance::<{ stages::VIP }>(&ctx)
}

#[xdp]
pub fn lbx_bench_until_flow(ctx: XdpContext) -> u32 {
    balance::<{ stages::FLOW }>(&ctx)
}

/// Packet-rate floor only (`cargo xtask bench`): sends the frame back out unchanged.
/// Never attached by lbx.
#[xdp]
pub fn lbx_bench_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Packet-rate sink only (`cargo xtask bench`), on the veth that receives the frames the
/// measured program sent: drops them. Never attached by lbx.
#[xdp]
pub fn lbx_bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
