//! The balancing decision: VIP match, connection table, Maglev ring, then encapsulation.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lbx_common::{
    BACKEND_F_DOWN, Backend, FAMILY_V4, FlowEntry, FlowKey, MAX_BACKENDS, RING_LANES, Reason,
    SETTINGS_F_PORT0_V4, SETTINGS_F_PORT0_V6, Settings, VIP_F_HAS_BACKENDS, VipEntry, VipKey,
    flows::{self, FlowSlot},
    hash::flow_hash,
    ring_entry, stages, vip_filter_bit, vips,
};

use crate::{
    encap,
    maps::{
        ACTIVE, BACKEND_STATS, BACKENDS, FLOWS, RINGS, SETTINGS, VIP_STATS, VIPS, add_traffic,
        flow_set_mask,
    },
    parse,
};

/// The XDP verdict a reason stands for.
#[inline(always)]
pub fn action(reason: Reason) -> u32 {
    match reason {
        Reason::Forwarded => xdp_action::XDP_TX,
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
        Ok(()) => Reason::Forwarded,
        Err(reason) => reason,
    }
}

#[inline(always)]
fn try_balance<const UNTIL: u32>(ctx: &XdpContext) -> Result<(), Reason> {
    let net = parse::network(ctx)?;
    let active = ACTIVE.get_ptr(0).ok_or(Reason::PassNoConfig)?;
    // Most traffic that is not for a VIP stops here, on the one line every packet reads,
    // without reading the rest of the packet or the generation, or hashing a VIP table
    // key.
    let no_vip = unsafe { core::ptr::read_volatile(&(*active).no_vip) };
    if no_vip & vip_filter_bit(&net.dst) != 0 {
        return Err(Reason::PassNotVip);
    }
    let key = parse::flow_key(ctx, &net)?;
    if UNTIL == stages::FILTER {
        return Ok(());
    }
    // Read the generation slot once: every lookup below uses the same generation.
    let slot = unsafe { core::ptr::read_volatile(&(*active).slot) } & 1;
    let now = unsafe { core::ptr::read_volatile(&(*active).now) };
    let settings = SETTINGS.get(slot).ok_or(Reason::PassNoConfig)?;
    // Read once into a local: the compiler then knows the divisor below is not zero and
    // emits no panic path (which the verifier would reject).
    let ring_size = settings.ring_size;
    if ring_size == 0 {
        return Err(Reason::PassNoConfig);
    }
    let vip = lookup_vip(&key, slot, settings).ok_or(Reason::PassNotVip)?;
    if UNTIL == stages::VIP {
        return Ok(());
    }
    let backend_base = slot * MAX_BACKENDS;

    // One hash per packet: it picks the connection-table set, the ring slot and the outer
    // source.
    let hash = flow_hash(&key, settings.seed);
    let words = flows::key_words(&key);
    let set = flows::set_base(hash, flow_set_mask());
    let mut ways = match (FLOWS.get_ptr_mut(set), FLOWS.get_ptr_mut(set + 1)) {
        (Some(a), Some(b)) => unsafe { [&mut *a, &mut *b] },
        _ => return Err(Reason::DropBadRing),
    };
    let mut new_flow = false;
    let (backend_slot, backend) = match established(&mut ways, &words, hash, backend_base, now) {
        Some(found) => found,
        None => {
            if vip.flags & VIP_F_HAS_BACKENDS == 0 {
                return Err(Reason::DropNoBackend);
            }
            let index = hash % ring_size;
            let elem = *RINGS
                .get(vip.ring_base + index / RING_LANES)
                .ok_or(Reason::DropBadRing)?;
            let backend_slot = ring_entry(elem, index);
            let backend = BACKENDS
                .get(backend_base + backend_slot)
                .filter(|b| b.family == key.family)
                .ok_or(Reason::DropBadRing)?;
            let entry = FlowEntry {
                backend: backend_slot,
                uid: backend.uid,
            };
            insert(ways, &words, hash, entry, now, settings);
            new_flow = true;
            (backend_slot, backend)
        }
    };

    if UNTIL == stages::FLOW {
        // Keep the backend and the new-flow mark live, as encapsulation would.
        return if backend.family == 0 && new_flow {
            Err(Reason::DropBadRing)
        } else {
            Ok(())
        };
    }
    let frame_bytes = (ctx.data_end() - ctx.data()) as u64;
    if key.family == FAMILY_V4 {
        encap::ipip(ctx, &net, backend, settings, hash)?;
    } else {
        encap::ip6ip6(ctx, &net, backend, settings, hash)?;
    }
    add_traffic(&VIP_STATS, vip.id, frame_bytes, new_flow);
    add_traffic(&BACKEND_STATS, backend_slot, frame_bytes, new_flow);
    Ok(())
}

/// The VIP for the packet's destination, port and protocol, or its all-ports VIP: probes
/// of the generation's VIP table, inline.
#[inline(always)]
fn lookup_vip<'a>(key: &FlowKey, slot: u32, settings: &Settings) -> Option<&'a VipEntry> {
    let table = VIPS.get(slot)?;
    let mut vip_key = VipKey {
        addr: key.dst,
        port_be: key.dport_be,
        proto: key.proto,
        family: key.family,
    };
    if let Some(vip) = vips::find(&table.entries, &vip_key, settings.vip_salt) {
        return Some(vip);
    }
    let port0 = if key.family == FAMILY_V4 {
        SETTINGS_F_PORT0_V4
    } else {
        SETTINGS_F_PORT0_V6
    };
    if settings.flags & port0 == 0 {
        return None;
    }
    vip_key.port_be = 0;
    vips::find(&table.entries, &vip_key, settings.vip_salt)
}

/// The backend the connection table holds for this flow, if it still takes it: a slot
/// whose uid changed was given to another backend since, and a backend that failed its
/// health checks gives its flows up; both count as a miss. A hit marks its slot used
/// and seen now.
#[inline(always)]
fn established<'a>(
    ways: &mut [&mut FlowSlot; 2],
    words: &[u64; 5],
    hash: u32,
    backend_base: u32,
    now: u32,
) -> Option<(u32, &'a Backend)> {
    let way = if flows::holds(ways[0], words, hash) {
        &mut *ways[0]
    } else if flows::holds(ways[1], words, hash) {
        &mut *ways[1]
    } else {
        return None;
    };
    let entry = way.entry;
    let backend = BACKENDS.get(backend_base + entry.backend)?;
    if backend.family == 0 || backend.uid != entry.uid || backend.flags & BACKEND_F_DOWN != 0 {
        return None;
    }
    // Each written once per pass of the replacement or tick of the clock, not per
    // packet: a cache line that every packet of a flow wrote would bounce between CPUs.
    if way.recent == 0 {
        way.recent = 1;
    }
    if way.seen != now {
        way.seen = now;
    }
    Some((entry.backend, backend))
}

/// Writes a new flow into its set. The check word goes last: a reader that meets the
/// slot half written sees a check that does not match, a miss.
#[inline(always)]
fn insert(
    ways: [&mut FlowSlot; 2],
    words: &[u64; 5],
    hash: u32,
    entry: FlowEntry,
    now: u32,
    settings: &Settings,
) {
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
