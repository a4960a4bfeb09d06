//! The maps the programs share with the agent; layouts live in lbx-common.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use lbx_common::{
    Active, AddrKey, Backend, Counters, DecapReason, MAX_BACKENDS, MAX_DECAP_VIPS, MAX_VIPS,
    Reason, Settings, VipTable, flows::FlowSlot,
};

/// `BPF_F_MMAPABLE`: the agent maps the rings into its memory and copies whole tables.
const F_MMAPABLE: u32 = 1 << 10;

#[map(name = "ACTIVE")]
pub static ACTIVE: Array<Active> = Array::with_max_entries(1, 0);

#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(2, 0);

/// One VIP table per generation slot, probed inline (`lbx_common::vips`).
#[map(name = "VIPS")]
pub static VIPS: Array<VipTable> = Array::with_max_entries(2, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(2 * MAX_BACKENDS, 0);

/// Sized by the agent at load time (`2 * ring_elems(ring_entries)`).
#[map(name = "RINGS")]
pub static RINGS: Array<u64> = Array::with_max_entries(1, F_MMAPABLE);

/// Sized by the agent at load time (`sets * FLOW_WAYS`); memory-mappable so the agent can
/// read or clear it in one pass.
#[map(name = "FLOWS")]
pub static FLOWS: Array<FlowSlot> = Array::with_max_entries(1, F_MMAPABLE);

/// Sets of `FLOWS` minus one, set by the agent at load time: a constant to the verifier.
#[unsafe(no_mangle)]
static FLOW_SET_MASK: u32 = 0;

#[inline(always)]
pub fn flow_set_mask() -> u32 {
    // Volatile: the value is patched into the object after compilation.
    unsafe { core::ptr::read_volatile(&FLOW_SET_MASK) }
}

#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "REASONS")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

#[map(name = "DECAP_VIPS")]
pub static DECAP_VIPS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_DECAP_VIPS, 0);

#[map(name = "DECAP_STATS")]
pub static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DecapReason::COUNT, 0);

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_decap(reason: DecapReason) {
    if let Some(c) = DECAP_STATS.get_ptr_mut(reason as u32) {
        unsafe { *c += 1 };
    }
}

/// Adds one packet of `bytes` (and maybe a new flow) to a per-CPU counter.
#[inline(always)]
pub fn add_traffic(map: &PerCpuArray<Counters>, index: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = map.get_ptr_mut(index) {
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes;
        c.new_flows += new_flow as u64;
    }
}
