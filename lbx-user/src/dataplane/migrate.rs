//! `lbx run --migrate`: maps pinned with other sizes (the rings', the connection table's)
//! are set aside, maps of this agent's sizes take their place, and everything the program
//! keeps in them is copied over, the connection table rehashed into its new sets. The old
//! program serves from the old maps until `Balancer::attach` swaps the new one into the
//! link; a flow that starts in between is not carried (it takes the ring, as after a
//! table miss).

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use lbx_common::{
    Active, Backend, Counters, MAX_BACKENDS, MAX_VIPS, Settings,
    flows::{self, FLOW_WAYS},
    hash::flow_hash,
    maps,
};

use super::{error::DataPlaneError, pins::LINK, sys::MappedFlows, vip_tables::VipTables};

/// The new maps a migration fills.
pub struct Target<'a> {
    pub active: &'a mut Array<MapData, Active>,
    pub settings: &'a mut Array<MapData, Settings>,
    pub vips: &'a mut VipTables,
    pub backends: &'a mut Array<MapData, Backend>,
    pub vip_stats: &'a mut PerCpuArray<MapData, Counters>,
    pub backend_stats: &'a mut PerCpuArray<MapData, Counters>,
    pub reasons: &'a mut PerCpuArray<MapData, u64>,
    pub flows: &'a mut MappedFlows,
    /// Sets of the new connection table minus one.
    pub flow_set_mask: u32,
}

/// The maps whose entries follow this agent's settings, and so may be migrated.
pub const SIZED: &[&str] = &[maps::RINGS, maps::FLOWS];

fn pin_err(dir: &Path) -> impl FnOnce(std::io::Error) -> DataPlaneError + '_ {
    move |source| DataPlaneError::Pin {
        dir: dir.to_path_buf(),
        source,
    }
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataPlaneError {
    move |source| DataPlaneError::Map { map, source }
}

/// Moves the pins under `dir` aside (to `DIR_migrating_from`), where `copy` reads them.
/// The BPF filesystem refuses dots in names; at 16 characters or more the name is no
/// interface's.
pub fn set_aside(dir: &Path) -> Result<PathBuf, DataPlaneError> {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push("_migrating_from");
    let old = dir.with_file_name(name);
    if old.exists() {
        return Err(DataPlaneError::Pin {
            dir: old,
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "an earlier migration did not finish: these maps may still hold flows; \
                 remove them when no program serves from them",
            ),
        });
    }
    std::fs::rename(dir, &old).map_err(pin_err(dir))?;
    Ok(old)
}

/// Undoes `set_aside` after a migration that failed: the old pins (and the link) go
/// back where they were.
pub fn put_back(old: &Path, dir: &Path) {
    let _ = std::fs::rename(dir.join(LINK), old.join(LINK));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::rename(old, dir);
}

fn array<T: aya::Pod>(old: &Path, name: &'static str) -> Result<Array<MapData, T>, DataPlaneError> {
    let data = MapData::from_pin(old.join(name)).map_err(map_err(name))?;
    Array::try_from(Map::Array(data)).map_err(map_err(name))
}

fn per_cpu<T: aya::Pod>(
    old: &Path,
    name: &'static str,
) -> Result<PerCpuArray<MapData, T>, DataPlaneError> {
    let data = MapData::from_pin(old.join(name)).map_err(map_err(name))?;
    PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_err(name))
}

/// Fills the fresh maps `bal` (pinned under `dir`) from the old ones under `old`, and
/// moves the link over so that `attach` swaps the program in it.
pub fn copy(old: &Path, dir: &Path, bal: Target<'_>) -> Result<(), DataPlaneError> {
    let active: Array<MapData, Active> = array(old, maps::ACTIVE)?;
    let a = active.get(&0, 0).map_err(map_err(maps::ACTIVE))?;
    let settings: Array<MapData, Settings> = array(old, maps::SETTINGS)?;
    let vips =
        VipTables::new(MapData::from_pin(old.join(maps::VIPS)).map_err(map_err(maps::VIPS))?);
    for slot in 0..2 {
        let s = settings.get(&slot, 0).map_err(map_err(maps::SETTINGS))?;
        bal.settings
            .set(slot, s, 0)
            .map_err(map_err(maps::SETTINGS))?;
        let t = vips.get(slot).map_err(map_err(maps::VIPS))?;
        bal.vips.set(slot, &t).map_err(map_err(maps::VIPS))?;
    }
    let backends: Array<MapData, Backend> = array(old, maps::BACKENDS)?;
    for i in 0..2 * MAX_BACKENDS {
        let b = backends.get(&i, 0).map_err(map_err(maps::BACKENDS))?;
        if b != Backend::default() {
            bal.backends.set(i, b, 0).map_err(map_err(maps::BACKENDS))?;
        }
    }
    let vip_stats: PerCpuArray<MapData, Counters> = per_cpu(old, maps::VIP_STATS)?;
    for i in 0..MAX_VIPS {
        let v = vip_stats.get(&i, 0).map_err(map_err(maps::VIP_STATS))?;
        bal.vip_stats
            .set(i, v, 0)
            .map_err(map_err(maps::VIP_STATS))?;
    }
    let backend_stats: PerCpuArray<MapData, Counters> = per_cpu(old, maps::BACKEND_STATS)?;
    for i in 0..MAX_BACKENDS {
        let v = backend_stats
            .get(&i, 0)
            .map_err(map_err(maps::BACKEND_STATS))?;
        bal.backend_stats
            .set(i, v, 0)
            .map_err(map_err(maps::BACKEND_STATS))?;
    }
    let reasons: PerCpuArray<MapData, u64> = per_cpu(old, maps::REASONS)?;
    for i in 0..reasons.len() {
        let v = reasons.get(&i, 0).map_err(map_err(maps::REASONS))?;
        bal.reasons.set(i, v, 0).map_err(map_err(maps::REASONS))?;
    }
    // ACTIVE last: what the other maps say is the generation it names.
    bal.active.set(0, a, 0).map_err(map_err(maps::ACTIVE))?;

    let seed = settings
        .get(&a.slot, 0)
        .map_err(map_err(maps::SETTINGS))?
        .seed;
    let (kept, lost) = rehash_flows(old, seed, bal.flows, bal.flow_set_mask)?;
    crate::say!(
        "migrated the maps under {} into new sizes: {kept} flows carried, {lost} without a \
         free slot in their new set",
        dir.display()
    );
    std::fs::rename(old.join(LINK), dir.join(LINK)).map_err(pin_err(dir))?;
    Ok(())
}

/// Copies every whole flow of the old connection table into the set its hash picks in
/// the new one; returns (carried, lost to a full set).
fn rehash_flows(
    old: &Path,
    seed: u32,
    new: &mut MappedFlows,
    mask: u32,
) -> Result<(u64, u64), DataPlaneError> {
    let data = MapData::from_pin(old.join(maps::FLOWS)).map_err(map_err(maps::FLOWS))?;
    let len = data.info().map_err(map_err(maps::FLOWS))?.max_entries() as usize;
    let old_flows = MappedFlows::new(data.fd().as_fd(), len)?;
    let (mut kept, mut lost) = (0, 0);
    for i in 0..old_flows.len() {
        let Some(slot) = old_flows.get(i) else { break };
        if slot.check == 0 {
            continue;
        }
        let hash = flow_hash(&flows::key_of(&slot.key), seed);
        if slot.check != flows::check(hash, &slot.entry) {
            continue; // torn by a write in flight: a packet would miss it too
        }
        let base = flows::set_base(hash, mask) as usize;
        match (base..base + FLOW_WAYS as usize).find(|&j| new.get(j).is_some_and(|s| s.check == 0))
        {
            Some(j) => {
                new.set(j, slot);
                kept += 1;
            }
            None => lost += 1,
        }
    }
    Ok((kept, lost))
}
