//! The lookups every VIP packet makes, in the generation it read: the VIP, the
//! connection table, the Maglev ring, and the previous generation's ring for a second
//! chance.

use lbx_common::{
    Active, BACKEND_F_DOWN, Backend, FAMILY_V4, FlowKey, MAX_BACKENDS, RING_LANES, Reason,
    SETTINGS_F_PORT0_V4, SETTINGS_F_PORT0_V6, Settings, VIP_F_HAS_BACKENDS, VipEntry, VipKey,
    flows::{self, FlowSlot},
    ring_entry, vips,
};

use crate::maps::{ACTIVE, BACKENDS, RINGS, SETTINGS, VIPS};

/// What a packet reads of `ACTIVE` and the generation it names, once: every lookup
/// after it uses the same generation.
pub struct Generation<'a> {
    pub slot: u32,
    pub now: u32,
    pub settings: &'a Settings,
    /// Index of the generation's backend region in `BACKENDS`.
    pub backend_base: u32,
}

/// The packet's pointer to `ACTIVE`.
#[inline(always)]
pub fn active() -> Result<*const Active, Reason> {
    ACTIVE.get_ptr(0).ok_or(Reason::PassNoConfig)
}

#[inline(always)]
pub fn generation<'a>(active: *const Active) -> Result<Generation<'a>, Reason> {
    let slot = unsafe { core::ptr::read_volatile(&(*active).slot) } & 1;
    let now = unsafe { core::ptr::read_volatile(&(*active).now) };
    let settings = SETTINGS.get(slot).ok_or(Reason::PassNoConfig)?;
    if settings.ring_size == 0 {
        return Err(Reason::PassNoConfig);
    }
    Ok(Generation {
        slot,
        now,
        settings,
        backend_base: slot * MAX_BACKENDS,
    })
}

/// The entry of an exact key in the generation's VIP table.
#[inline(always)]
pub fn vip_entry<'a>(key: &VipKey, g: &Generation) -> Option<&'a VipEntry> {
    let table = VIPS.get(g.slot)?;
    vips::find(&table.entries, key, g.settings.vip_salt)
}

/// The VIP for the flow's destination, port and protocol, or its all-ports VIP.
#[inline(always)]
pub fn vip<'a>(key: &FlowKey, g: &Generation) -> Option<&'a VipEntry> {
    let mut vip_key = VipKey {
        addr: key.dst,
        port_be: key.dport_be,
        proto: key.proto,
        family: key.family,
    };
    if let Some(vip) = vip_entry(&vip_key, g) {
        return Some(vip);
    }
    let port0 = if key.family == FAMILY_V4 {
        SETTINGS_F_PORT0_V4
    } else {
        SETTINGS_F_PORT0_V6
    };
    if g.settings.flags & port0 == 0 {
        return None;
    }
    vip_key.port_be = 0;
    vip_entry(&vip_key, g)
}

/// The backend the connection table holds for this flow, if it still takes it: a slot
/// whose uid changed was given to another backend since, and a backend that failed its
/// health checks gives its flows up; both count as a miss. With `TOUCH`, a hit marks
/// its slot used and seen now.
#[inline(always)]
pub fn established<'a, const TOUCH: bool>(
    ways: &mut [&mut FlowSlot; 2],
    words: &[u64; 5],
    hash: u32,
    g: &Generation,
) -> Option<(u32, &'a Backend)> {
    let way = if flows::holds(ways[0], words, hash) {
        &mut *ways[0]
    } else if flows::holds(ways[1], words, hash) {
        &mut *ways[1]
    } else {
        return None;
    };
    let entry = way.entry;
    let backend = BACKENDS.get(g.backend_base + entry.backend)?;
    if backend.family == 0 || backend.uid != entry.uid || backend.flags & BACKEND_F_DOWN != 0 {
        return None;
    }
    if TOUCH {
        // Each written once per pass of the replacement or tick of the clock, not per
        // packet: a cache line that every packet of a flow wrote would bounce between
        // CPUs.
        if way.recent == 0 {
            way.recent = 1;
        }
        if way.seen != g.now {
            way.seen = g.now;
        }
    }
    Some((entry.backend, backend))
}

/// The entry of the VIP's ring a flow of `hash` takes. The check makes the divisor known
/// nonzero, so the compiler emits no panic path (which the verifier would reject).
#[inline(always)]
pub fn ring_index(vip: &VipEntry, hash: u32) -> Result<u32, Reason> {
    let size = vip.ring_size;
    if size == 0 {
        return Err(Reason::DropBadRing);
    }
    Ok(hash % size)
}

/// The backend slot at ring entry `index` of the ring whose first element is `base`.
#[inline(always)]
fn ring_slot(base: u32, index: u32) -> Result<u32, Reason> {
    let elem = *RINGS
        .get(base + index / RING_LANES)
        .ok_or(Reason::DropBadRing)?;
    Ok(ring_entry(elem, index))
}

/// The backend the VIP's ring gives entry `index`.
#[inline(always)]
pub fn ring_backend<'a>(
    vip: &VipEntry,
    index: u32,
    family: u8,
    g: &Generation,
) -> Result<(u32, &'a Backend), Reason> {
    let slot = ring_slot(vip.ring_base, index)?;
    let backend = BACKENDS
        .get(g.backend_base + slot)
        .filter(|b| b.family == family)
        .ok_or(Reason::DropBadRing)?;
    Ok((slot, backend))
}

/// The second chance: the backend the previous generation's ring (of the same size)
/// gave entry `index` of the VIP, if it is not `current` and still serves the VIP, the
/// same instance (uid), not down. The previous generation is the other slot when it holds the generation
/// before this one; the agent may be rewriting it for the next one, so whatever it
/// holds is only trusted once the current generation confirms the backend.
#[inline(always)]
pub fn previous_backend<'a>(
    vip: &VipEntry,
    index: u32,
    current: u32,
    family: u8,
    g: &Generation,
) -> Option<(u32, &'a Backend)> {
    let prev = g.slot ^ 1;
    let settings = SETTINGS.get(prev)?;
    if settings.generation + 1 != g.settings.generation {
        return None;
    }
    let table = VIPS.get(prev)?;
    let before = vips::find(&table.entries, &vip.key, settings.vip_salt)?;
    if before.id != vip.id
        || before.ring_size != vip.ring_size
        || before.flags & VIP_F_HAS_BACKENDS == 0
    {
        return None;
    }
    let slot = ring_slot(before.ring_base, index).ok()?;
    if slot == current {
        return None;
    }
    let then = BACKENDS.get(prev * MAX_BACKENDS + slot)?;
    let now = BACKENDS.get(g.backend_base + slot)?;
    if now.family != family
        || now.uid != then.uid
        || now.vip != u32::from(vip.id)
        || now.flags & BACKEND_F_DOWN != 0
    {
        return None;
    }
    Some((slot, now))
}
