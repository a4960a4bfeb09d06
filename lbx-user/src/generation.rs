//! Publishes a whole configuration at once.
//!
//! The data plane keeps two generation slots: each has its own VIP table and settings,
//! and backends and rings have one region per slot. Packets read `ACTIVE` once and use
//! only that slot. The publisher writes the new configuration into the other slot, which
//! no packet reads, flips `ACTIVE`, then waits until every packet that may still have
//! read the old slot has left the program. So a packet sees either the whole old
//! configuration or the whole new one, and the next publication may overwrite the old
//! slot safely.

use aya::maps::{MapError, PerCpuValues};
use lbx_common::{Backend, Counters, MAX_BACKENDS, MAX_VIPS, VipEntry, VipTable};

use crate::{dataplane::Balancer, plan::Plan, sys::ProgramBarrier};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("updating map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("waiting for in-flight packets: {0}")]
    Barrier(std::io::Error),
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> PublishError {
    move |source| PublishError::Map { map, source }
}

/// What one generation slot holds, to write only what changed.
#[derive(Default)]
struct SlotShadow {
    backends: Vec<Backend>,
}

pub struct Publisher {
    /// The slot packets read now.
    active: u32,
    /// Number of the generation in the active slot; 0 before the first publication.
    generation: u64,
    shadow: [SlotShadow; 2],
    barrier: ProgramBarrier,
}

impl Publisher {
    pub fn new() -> std::io::Result<Self> {
        let empty = || SlotShadow {
            backends: vec![Backend::default(); MAX_BACKENDS as usize],
        };
        Ok(Self {
            active: 1,
            generation: 0,
            shadow: [empty(), empty()],
            barrier: ProgramBarrier::new()?,
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Zeroes the counters of newly numbered VIPs and backends before they are published.
    pub fn reset_counters(
        &self,
        bal: &mut Balancer,
        vips: &[u32],
        backends: &[u32],
    ) -> Result<(), PublishError> {
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
        let slot = 1 - self.active;
        let generation = self.generation + 1;
        let shadow = &mut self.shadow[slot as usize];

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

        // Rings: written through the mapped array, no syscall per entry.
        let m = bal.ring_size as usize;
        let ring_region = slot as usize * MAX_VIPS as usize * m;
        for v in &plan.vips {
            if !v.ring.is_empty() {
                bal.rings
                    .write(ring_region + v.number as usize * m, &v.ring);
            }
        }

        // VIPs: this slot's table, written whole in one update.
        let mut table = VipTable::default();
        for v in &plan.vips {
            table.entries[v.table_slot] = VipEntry {
                key: v.key,
                id: v.number,
                flags: v.flags,
                ring_base: (ring_region + v.number as usize * m) as u32,
            };
        }
        bal.vips.set(slot, table, 0).map_err(map_err("VIPS"))?;

        let settings = lbx_common::Settings {
            generation,
            ..plan.settings
        };
        bal.settings
            .set(slot, settings, 0)
            .map_err(map_err("SETTINGS"))?;

        // The switch. A one-byte difference (0 or 1), so no reader can see a torn value.
        bal.active.set(0, slot, 0).map_err(map_err("ACTIVE"))?;
        self.barrier.wait().map_err(PublishError::Barrier)?;
        self.active = slot;
        self.generation = generation;
        Ok(generation)
    }
}
