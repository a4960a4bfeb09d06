//! The balancing decision: VIP match, connection table, Maglev ring, then encapsulation.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lbx_common::{
    FAMILY_V4, FlowEntry, PROTO_TCP, Reason, Settings, VIP_F_HAS_BACKENDS,
    flows::{self, FlowSlot},
    hash::flow_hash,
    stages, vip_filter_bit,
};

use crate::{
    encap, icmp,
    lookup::{self, Generation},
    maps::{BACKEND_STATS, FLOWS, VIP_STATS, add_traffic, flow_set_mask},
    parse::{self, TCP_SYN},
};

/// The XDP verdict a reason stands for.
#[inline(always)]
pub fn action(reason: Reason) -> u32 {
    match reason {
        Reason::Forwarded
        | Reason::ForwardedSecondChance
        | Reason::ForwardedIcmp
        | Reason::EchoReply => xdp_action::XDP_TX,
        Reason::DropNoBackend
        | Reason::DropTooBig
        | Reason::DropBadRing
        | Reason::DropEncapFailed => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// The balancer up to stage `UNTIL` (`lbx_common::stages`); the benchmark's breakdown
/// stops early, the balancer runs to the end (`stages::ALL`).
#[inline(always)]
pub fn balance<const UNTIL: u32>(ctx: &XdpContext) -> Reason {
    match try_balance::<UNTIL>(ctx) {
        Ok(reason) | Err(reason) => reason,
    }
}

#[inline(always)]
fn try_balance<const UNTIL: u32>(ctx: &XdpContext) -> Result<Reason, Reason> {
    let net = parse::network(ctx)?;
    let active = lookup::active()?;
    // Most traffic that is not for a VIP stops here, on the one line every packet reads,
    // without reading the rest of the packet or the generation, or hashing a VIP table
    // key.
    let no_vip = unsafe { core::ptr::read_volatile(&(*active).no_vip) };
    if no_vip & vip_filter_bit(&net.dst) != 0 {
        return Err(Reason::PassNotVip);
    }
    let (key, tcp_flags) = match parse::flow_key(ctx, &net) {
        Ok(found) => found,
        Err(Reason::PassNotTcpUdp) if net.is_icmp() => return icmp::handle(ctx, &net, active),
        Err(reason) => return Err(reason),
    };
    if UNTIL == stages::FILTER {
        return Ok(Reason::Forwarded);
    }
    let g = lookup::generation(active)?;
    let vip = lookup::vip(&key, &g).ok_or(Reason::PassNotVip)?;
    if UNTIL == stages::VIP {
        return Ok(Reason::Forwarded);
    }

    // One hash per packet: it picks the connection-table set, the ring slot and the outer
    // source.
    let hash = flow_hash(&key, g.settings.seed);
    let words = flows::key_words(&key);
    let set = flows::set_base(hash, flow_set_mask());
    let mut ways = match (FLOWS.get_ptr_mut(set), FLOWS.get_ptr_mut(set + 1)) {
        (Some(a), Some(b)) => unsafe { [&mut *a, &mut *b] },
        _ => return Err(Reason::DropBadRing),
    };
    let mut reason = Reason::Forwarded;
    let mut new_flow = false;
    let (backend_slot, backend) = match lookup::established::<true>(&mut ways, &words, hash, &g) {
        Some(found) => found,
        None => {
            if vip.flags & VIP_F_HAS_BACKENDS == 0 {
                return Err(Reason::DropNoBackend);
            }
            let index = lookup::ring_index(vip, hash)?;
            let mut found = lookup::ring_backend(vip, index, key.family, &g)?;
            // An established TCP flow the table lost, shortly after the ring changed: its
            // backend is more likely the one the ring gave before.
            if key.proto == PROTO_TCP
                && tcp_flags & TCP_SYN == 0
                && g.now < g.settings.second_chance_until
                && let Some(before) = lookup::previous_backend(vip, index, found.0, key.family, &g)
            {
                found = before;
                reason = Reason::ForwardedSecondChance;
            }
            let entry = FlowEntry {
                backend: found.0,
                uid: found.1.uid,
            };
            insert(ways, &words, hash, entry, &g);
            new_flow = true;
            found
        }
    };

    if UNTIL == stages::FLOW {
        // Keep the backend and the new-flow mark live, as encapsulation would.
        return if backend.family == 0 && new_flow {
            Err(Reason::DropBadRing)
        } else {
            Ok(Reason::Forwarded)
        };
    }
    let frame_bytes = (ctx.data_end() - ctx.data()) as u64;
    if key.family == FAMILY_V4 {
        encap::ipip(ctx, &net, backend, g.settings, hash)?;
    } else {
        encap::ip6ip6(ctx, &net, backend, g.settings, hash)?;
    }
    add_traffic(&VIP_STATS, u32::from(vip.id), frame_bytes, new_flow);
    add_traffic(&BACKEND_STATS, backend_slot, frame_bytes, new_flow);
    Ok(reason)
}

/// Writes a new flow into its set. The check word goes last: a reader that meets the
/// slot half written sees a check that does not match, a miss.
#[inline(always)]
fn insert(ways: [&mut FlowSlot; 2], words: &[u64; 5], hash: u32, entry: FlowEntry, g: &Generation) {
    let settings: &Settings = g.settings;
    let now = g.now;
    let (way, clear_other) = flows::insert_way([&*ways[0], &*ways[1]], words, hash, now, settings);
    let [w0, w1] = ways;
    let (slot, other) = if way == 0 { (w0, w1) } else { (w1, w0) };
    if clear_other {
        other.recent = 0;
    }
    slot.check = 0;
    slot.key = *words;
    slot.entry = entry;
    slot.recent = 0;
    slot.seen = now;
    slot.check = flows::check(hash, &entry);
}
