//! Publishes a whole configuration at once.
//!
//! The data plane keeps two generation slots: each has its own VIP table and settings,
//! and backends and rings have one region per slot. Packets read `ACTIVE` once and use
//! only that slot. The publisher writes the new configuration into the other slot, which
//! no packet reads, flips `ACTIVE`, then waits until every packet that may still have
//! read the old slot has left the program. So a packet sees either the whole old
//! configuration or the whole new one, and the next publication may overwrite the old
//! slot safely. The wait (an RCU grace period, milliseconds) runs in a thread while the
//! caller goes on: the publication is in effect from the flip, and anything that next
//! writes the maps waits for it first (`settle`).
//!
//! A publication writes only what differs from what the slot it writes holds (the
//! generation before last): the backend entries that changed, and the rings of VIPs whose
//! ring changed in either of the last two generations (`rings`). The VIP table and the
//! settings, one update each, are written whole.
//!
//! `ACTIVE` also carries the address bits no VIP has (`Active::no_vip`). Around a switch
//! it holds only the bits neither generation has, so a packet never stops as "not a VIP"
//! for an address the generation it reads serves: the bits narrow before the slot
//! flips, and reach the new generation's own only once no packet reads the old slot.

use std::sync::Arc;

use aya::maps::{MapError, PerCpuValues};
use lbx_common::{Active, Backend, Counters, MAX_BACKENDS, VIP_F_ECHO, VipEntry, VipTable};

use super::{
    Balancer,
    plan::Plan,
    rings::{RingsFull, SlotRings},
    sys::ProgramBarrier,
};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("updating map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("waiting for in-flight packets: {0}")]
    Barrier(std::io::Error),
    #[error(transparent)]
    RingsFull(#[from] RingsFull),
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> PublishError {
    move |source| PublishError::Map { map, source }
}

/// What one generation slot holds, to write only what changed.
struct SlotShadow {
    backends: Vec<Backend>,
    /// Where the slot's rings are; made on the first publication, when the size of the
    /// balancer's rings is known.
    rings: Option<SlotRings>,
}

pub struct Publisher {
    /// The slot packets read now.
    active: u32,
    /// Number of the generation in the active slot; 0 before the first publication.
    generation: u64,
    /// What `ACTIVE` holds now (all zero before the first publication).
    in_map: Active,
    shadow: [SlotShadow; 2],
    barrier: Arc<ProgramBarrier>,
    /// The last switch's wait for in-flight packets, in a thread of its own: a
    /// publication is in effect once the slot flipped, and whatever next writes the maps
    /// (a publication, a tick, counters) first waits for it (`settle`).
    pending: Option<Pending>,
    /// Rings the last publication wrote.
    rings_written: usize,
}

/// A switch whose barrier may still be running, and the `ACTIVE` that follows it.
struct Pending {
    widen: Active,
    barrier: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Publisher {
    pub fn new() -> std::io::Result<Self> {
        let empty = || SlotShadow {
            backends: vec![Backend::default(); MAX_BACKENDS as usize],
            rings: None,
        };
        Ok(Self {
            active: 1,
            generation: 0,
            in_map: Active::default(),
            shadow: [empty(), empty()],
            barrier: Arc::new(ProgramBarrier::new()?),
            pending: None,
            rings_written: 0,
        })
    }

    /// The publisher of an agent that adopts the maps another agent published into: the
    /// active slot, its generation number, `ACTIVE` as it is, and what each slot's backend
    /// region holds. Fresh if nothing was ever published there.
    pub fn resume(bal: &Balancer) -> Result<Self, PublishError> {
        let mut p = Self::new().map_err(PublishError::Barrier)?;
        let active = bal.active.get(&0, 0).map_err(map_err("ACTIVE"))?;
        let settings = bal
            .settings
            .get(&active.slot, 0)
            .map_err(map_err("SETTINGS"))?;
        if settings.ring_size == 0 {
            return Ok(p);
        }
        p.active = active.slot;
        p.generation = settings.generation;
        p.in_map = active;
        for (slot, shadow) in p.shadow.iter_mut().enumerate() {
            for (i, b) in shadow.backends.iter_mut().enumerate() {
                *b = bal
                    .backends
                    .get(&(slot as u32 * MAX_BACKENDS + i as u32), 0)
                    .map_err(map_err("BACKENDS"))?;
            }
        }
        Ok(p)
    }

    /// The active slot's VIP table and backend region, to recover the numbers in them.
    pub fn active_contents(
        &self,
        bal: &Balancer,
    ) -> Result<(Box<VipTable>, Vec<Backend>), PublishError> {
        let table = bal.vips.get(self.active).map_err(map_err("VIPS"))?;
        Ok((table, self.shadow[self.active as usize].backends.clone()))
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many rings the last publication wrote (the others were as the slot held them).
    pub fn rings_written(&self) -> usize {
        self.rings_written
    }

    /// Waits for the last switch's barrier, if it still runs, and gives `ACTIVE` the new
    /// generation's own not-a-VIP bits: then no packet reads the slot before the active
    /// one.
    pub fn settle(&mut self, bal: &mut Balancer) -> Result<(), PublishError> {
        if let Some(p) = self.pending.take() {
            p.barrier
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the barrier thread panicked")))
                .map_err(PublishError::Barrier)?;
            self.set_active(bal, p.widen)?;
        }
        Ok(())
    }

    /// Zeroes the counters of newly numbered VIPs and backends before they are published.
    pub fn reset_counters(
        &mut self,
        bal: &mut Balancer,
        vips: &[u32],
        backends: &[u32],
    ) -> Result<(), PublishError> {
        // No packet of the generation before the active one may count into them.
        self.settle(bal)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| PublishError::Barrier(e))?;
        let zero = || PerCpuValues::try_from(vec![Counters::default(); cpus]).expect("non-empty");
        for &v in vips {
            bal.vip_stats
                .set(v, zero(), 0)
                .map_err(map_err("VIP_STATS"))?;
        }
        for &b in backends {
            bal.backend_stats
                .set(b, zero(), 0)
                .map_err(map_err("BACKEND_STATS"))?;
        }
        Ok(())
    }

    /// Writes `plan` into the inactive slot and switches packets to it. Returns the new
    /// generation number.
    pub fn publish(&mut self, bal: &mut Balancer, plan: &Plan) -> Result<u64, PublishError> {
        // The slot written now is the one packets left at the last switch.
        self.settle(bal)?;
        let slot = 1 - self.active;
        let generation = self.generation + 1;
        let shadow = &mut self.shadow[slot as usize];
        let rings = shadow
            .rings
            .get_or_insert_with(|| SlotRings::new(slot, bal.ring_capacity));
        // Where every ring goes, refused before anything is written if they do not fit.
        let placed: Vec<(u32, super::rings::Ring)> = plan
            .vips
            .iter()
            .filter(|v| !v.ring.is_empty())
            .map(|v| (v.number, v.ring.clone()))
            .collect();
        let writes = rings.place(&placed)?;

        // Backends: write the slots whose content differs from what this region holds.
        let mut wanted = vec![Backend::default(); MAX_BACKENDS as usize];
        for (i, b) in &plan.backends {
            wanted[*i as usize] = *b;
        }
        let base = slot * MAX_BACKENDS;
        for (i, (want, have)) in wanted.iter().zip(shadow.backends.iter_mut()).enumerate() {
            if want != have {
                bal.backends
                    .set(base + i as u32, want, 0)
                    .map_err(map_err("BACKENDS"))?;
                *have = *want;
            }
        }

        // Rings that differ: written through the mapped array, no syscall per entry.
        for w in &writes {
            bal.rings.write_ring(w.base as usize, &w.ring);
        }
        self.rings_written = writes.len();

        // VIPs: this slot's table, written whole in one update.
        // SAFETY: VipTable is plain old data: all zeroes is the empty table.
        let mut table: Box<VipTable> = unsafe { Box::new_zeroed().assume_init() };
        for v in &plan.vips {
            let placed = rings.base(v.number).filter(|_| !v.ring.is_empty());
            table.entries[v.table_slot] = VipEntry {
                key: v.key,
                id: v.number as u16,
                flags: v.flags,
                ring_base: placed.unwrap_or(0),
                ring_size: placed.map_or(0, |_| v.ring.len() as u32),
            };
        }
        for (key, table_slot) in &plan.echo {
            table.entries[*table_slot] = VipEntry {
                key: *key,
                flags: VIP_F_ECHO,
                ..VipEntry::default()
            };
        }
        bal.vips.set(slot, &table).map_err(map_err("VIPS"))?;

        // The slot written over held the generation before last: only the one packets
        // leave now can give a second chance, and only once the clock runs.
        let now = self.in_map.now;
        let second_chance_until = if self.generation > 0 && now > 0 && plan.second_chance_s > 0 {
            now.saturating_add(plan.second_chance_s)
        } else {
            0
        };
        let settings = lbx_common::Settings {
            generation,
            second_chance_until,
            ..plan.settings
        };
        bal.settings
            .set(slot, settings, 0)
            .map_err(map_err("SETTINGS"))?;

        // The switch (see `switch_steps`); the barrier after the flip runs on while the
        // caller goes on, and the widening waits for it.
        let [narrow, flip, widen] = switch_steps(self.in_map, slot, settings.vip_filter);
        self.set_active(bal, narrow)?;
        self.set_active(bal, flip)?;
        let barrier = Arc::clone(&self.barrier);
        self.pending = Some(Pending {
            widen,
            barrier: std::thread::spawn(move || barrier.wait()),
        });
        self.active = slot;
        self.generation = generation;
        Ok(generation)
    }

    /// Moves the data plane's coarse clock (`Active::now`) to `now`: one word of
    /// `ACTIVE`, the others as they are.
    pub fn tick(&mut self, bal: &mut Balancer, now: u32) -> Result<(), PublishError> {
        self.settle(bal)?;
        self.set_active(bal, Active { now, ..self.in_map })
    }

    /// The clock as the data plane reads it.
    pub fn clock(&self) -> u32 {
        self.in_map.now
    }

    fn set_active(&mut self, bal: &mut Balancer, value: Active) -> Result<(), PublishError> {
        if value != self.in_map {
            bal.active.set(0, value, 0).map_err(map_err("ACTIVE"))?;
            self.in_map = value;
        }
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // The barrier thread holds only its own maps; it ends within a grace period.
        if let Some(p) = self.pending.take() {
            let _ = p.barrier.join();
        }
    }
}

/// The values `ACTIVE` takes to switch from `now` to `slot`, whose generation has the VIP
/// filter `filter`; the publisher waits for in-flight packets after the second.
/// 1. The not-a-VIP bits narrow to those neither generation has; packets still read the
///    old slot.
/// 2. The slot flips (a one-byte difference, 0 or 1).
/// 3. Once no packet reads the old slot, the bits become the new generation's own.
///
/// Each step changes one word. The kernel may copy the value byte by byte; a reader
/// meeting a write half done sees, per byte, the value before or after it, and either is
/// safe at that step.
fn switch_steps(current: Active, slot: u32, filter: u64) -> [Active; 3] {
    let both = current.no_vip & !filter;
    let at = |slot, no_vip| Active {
        slot,
        no_vip,
        ..current
    };
    [at(current.slot, both), at(slot, both), at(slot, !filter)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No step ever calls an address of the generation a packet may read "not a VIP".
    #[test]
    fn a_switch_never_hides_a_vip() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..1000 {
            let (old, new) = (next() & next(), next() & next());
            let now = Active {
                slot: 0,
                now: 7,
                no_vip: !old,
            };
            let [narrow, flip, widen] = switch_steps(now, 1, new);
            assert!(
                [narrow, flip, widen].iter().all(|a| a.now == 7),
                "the clock stays"
            );
            // Readers of step 1 use the old generation; of step 2, either; of step 3,
            // the new one only.
            assert_eq!(narrow.slot, 0);
            assert_eq!(narrow.no_vip & old, 0);
            assert_eq!(flip.slot, 1);
            assert_eq!(flip.no_vip & (old | new), 0);
            assert_eq!(widen.slot, 1);
            assert_eq!(
                widen.no_vip, !new,
                "ends knowing all the new generation's bits"
            );
            // One word changes per step.
            assert_eq!(flip.no_vip, narrow.no_vip);
            assert_eq!(widen.slot, flip.slot);
        }
    }
}
