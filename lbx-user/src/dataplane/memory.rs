//! The kernel memory the balancer's maps take, as `lbx status` reports it and the README
//! documents: what each VIP, backend and flow costs.

use lbx_common::{
    Backend, Counters, MAX_BACKENDS, MAX_VIPS, Reason, Settings, VipTable, flows::FlowSlot,
};
use serde::Serialize;

use super::Balancer;

/// Bytes of each map (values only: the kernel adds a little per map) and how much of
/// the rings the published generation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// `RINGS`: both generations' room for rings.
    pub rings: u64,
    /// Ring entries one generation has room for, and those the published one uses.
    pub ring_entries: u64,
    pub ring_entries_used: u64,
    /// `FLOWS`: the connection table.
    pub flows: u64,
    pub flow_slots: u64,
    /// `BACKENDS`, `VIPS` and `SETTINGS`: both generations.
    pub tables: u64,
    /// Per-CPU counters of VIPs, backends and reasons, on every CPU.
    pub counters: u64,
    pub cpus: u32,
    pub total: u64,
}

/// Bytes a Maglev ring of `table_size` takes in `RINGS`, both generations.
pub fn ring_bytes(table_size: u32) -> u64 {
    2 * u64::from(lbx_common::ring_elems(table_size)) * 8
}

/// Bytes of one connection-table flow slot.
pub const FLOW_BYTES: u64 = std::mem::size_of::<FlowSlot>() as u64;

/// The tables of both generations, sized for the most VIPs and backends.
pub fn table_bytes() -> u64 {
    let size = |n: usize| n as u64;
    2 * (size(std::mem::size_of::<VipTable>())
        + size(std::mem::size_of::<Settings>())
        + u64::from(MAX_BACKENDS) * size(std::mem::size_of::<Backend>()))
}

/// Per-CPU counters on each CPU.
pub fn counter_bytes_per_cpu() -> u64 {
    let c = std::mem::size_of::<Counters>() as u64;
    u64::from(MAX_VIPS + MAX_BACKENDS) * c + u64::from(Reason::COUNT) * 8
}

impl Memory {
    /// The memory of `bal`, whose published generation has rings of `ring_lens` entries.
    pub fn of(bal: &Balancer, ring_lens: impl Iterator<Item = usize>) -> Memory {
        let cpus = aya::util::nr_cpus().map_or(1, |n| n as u32);
        let rings = 2 * u64::from(bal.ring_capacity) * 8;
        let flow_slots = bal.flows.len() as u64;
        let flows = flow_slots * FLOW_BYTES;
        let tables = table_bytes();
        let counters = counter_bytes_per_cpu() * u64::from(cpus);
        Memory {
            rings,
            ring_entries: u64::from(bal.ring_capacity) * u64::from(lbx_common::RING_LANES),
            ring_entries_used: ring_lens.map(|n| n as u64).sum(),
            flows,
            flow_slots,
            tables,
            counters,
            cpus,
            total: rings + flows + tables + counters,
        }
    }
}
