//! Loads lbx's XDP programs, attaches them, and holds the balancer's maps.

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lbx_common::{
    Active, Backend, Counters, FlowEntry, FlowKey, Reason, Settings,
    flows::{self, FLOW_WAYS},
    hash::flow_hash,
    maps, programs,
};

use super::{
    error::DataPlaneError,
    holder, layout,
    migrate::{self, Target},
    mode::Mode,
    object::Object,
    pins::{BALANCER_MAPS, LINK, Pins},
    sys::{self, MappedFlows, MappedRings},
    vip_tables::VipTables,
};

/// Checks what every attaching command needs before it touches the kernel. `pins` is
/// the balancer's pin directory: a balancer that serves on `iface` from those pins, with
/// no process holding it (its agent stopped or died), is there to be adopted; any other
/// program on the interface, or pins a program elsewhere uses, are refused before
/// anything is created.
pub fn preflight(what: &str, iface: &str, pins: Option<&Path>) -> Result<(), DataPlaneError> {
    if !sys::is_root() {
        return Err(DataPlaneError::NotRoot {
            what: what.to_string(),
        });
    }
    let Some(index) = sys::if_index(iface) else {
        return Err(DataPlaneError::NoInterface {
            iface: iface.to_string(),
        });
    };
    let attached = holder::attached(index).map_err(|source| DataPlaneError::Query {
        iface: iface.to_string(),
        source,
    })?;
    let held = |attached| DataPlaneError::Held {
        iface: iface.to_string(),
        attached,
    };
    let Some(dir) = pins else {
        return match attached {
            None => {
                sys::raise_memlock_limit();
                Ok(())
            }
            Some(a) => Err(held(a)),
        };
    };
    let in_use = |by: String| DataPlaneError::PinsInUse {
        dir: dir.to_path_buf(),
        by,
    };
    // The agent that serves from these pins holds their directory's lock while it runs.
    if dir.is_dir()
        && sys::DirLock::try_lock(dir)
            .map_err(DataPlaneError::Sys)?
            .is_none()
    {
        return Err(match attached {
            Some(a) => held(a),
            None => in_use("a running lbx agent".to_owned()),
        });
    }
    match (attached, sys::pinned_xdp_link(&dir.join(LINK)).ok()) {
        // Nothing there; or a link whose interface went away (its maps are taken over).
        (None, None | Some((_, 0))) => {}
        (None, Some((prog, _))) => {
            return Err(in_use(format!("XDP program {prog} on another interface")));
        }
        // The balancer an agent before this one left serving here: adopted.
        (Some(a), Some((prog, _))) if a.id == prog => {}
        (Some(a), _) => return Err(held(a)),
    }
    sys::raise_memlock_limit();
    Ok(())
}

fn loader() -> EbpfLoader<'static> {
    EbpfLoader::new()
}

/// Loads `object` with the given map sizes and read-only globals, and the kernel verifies
/// `program`.
fn load(
    object: &[u8],
    program: &str,
    sizes: &[(&'static str, u32)],
    globals: &[(&'static str, u32)],
    pins: Option<&Path>,
) -> Result<Ebpf, DataPlaneError> {
    let mut l = loader();
    for (name, size) in sizes {
        l.map_max_entries(name, *size);
    }
    // A map pinned there already is used as it is; one that is not is made and pinned.
    for name in pins.map_or(&[][..], |_| BALANCER_MAPS) {
        l.map_pin_path(name, pins.expect("some").join(name));
    }
    for (name, value) in globals {
        l.override_global(name, value, true);
    }
    let mut ebpf = l.load(object)?;
    xdp_mut(&mut ebpf, program)?
        .load()
        .map_err(|source| DataPlaneError::Program {
            program: program.to_string(),
            source,
        })?;
    Ok(ebpf)
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut Xdp, DataPlaneError> {
    ebpf.program_mut(program)
        .expect("program is in the object")
        .try_into()
        .map_err(|source| DataPlaneError::Program {
            program: program.to_string(),
            source,
        })
}

/// Attaches a loaded program in `mode`; `Auto` falls back from native to generic and says so.
fn attach(prog: &mut Xdp, iface: &str, mode: Mode) -> Result<(Mode, XdpLinkId), DataPlaneError> {
    let attach_err = |mode, source| DataPlaneError::Attach {
        iface: iface.to_string(),
        mode,
        source,
    };
    match mode {
        Mode::Native => prog
            .attach(iface, XdpMode::Driver)
            .map(|id| (mode, id))
            .map_err(|e| attach_err(mode, e)),
        Mode::Generic => prog
            .attach(iface, XdpMode::Skb)
            .map(|id| (mode, id))
            .map_err(|e| attach_err(mode, e)),
        Mode::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => Ok((Mode::Native, id)),
            Err(e) => {
                eprintln!("native XDP is not available on {iface} ({e}); using generic mode");
                prog.attach(iface, XdpMode::Skb)
                    .map(|id| (Mode::Generic, id))
                    .map_err(|e| attach_err(Mode::Generic, e))
            }
        },
    }
}

/// Loads `program` (one of `lbx_common::programs`) without attaching it, e.g. to run
/// packets through it with `TestRun` (the benchmark's floors).
pub fn load_unattached(program: &str) -> Result<Ebpf, DataPlaneError> {
    load(Object::builtin().bytes(), program, &[], &[], None)
}

/// Loads `program` and attaches it to `iface`. Returns the object (dropping it detaches)
/// and the mode used.
pub fn load_and_attach(
    program: &str,
    iface: &str,
    mode: Mode,
) -> Result<(Ebpf, Mode), DataPlaneError> {
    let mut ebpf = load(Object::builtin().bytes(), program, &[], &[], None)?;
    let (used, _) = attach(xdp_mut(&mut ebpf, program)?, iface, mode)?;
    Ok((ebpf, used))
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Map {
    ebpf.take_map(name).expect("map is in the object")
}

macro_rules! typed {
    ($ebpf:expr, $name:expr) => {
        take($ebpf, $name)
            .try_into()
            .map_err(|source| DataPlaneError::Map { map: $name, source })?
    };
}

fn sum_cpus(values: &PerCpuValues<Counters>) -> Counters {
    values.iter().fold(Counters::default(), |a, c| Counters {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
        new_flows: a.new_flows + c.new_flows,
    })
}

/// The balancer program attached to an interface, and its maps.
pub struct Balancer {
    pub active: Array<MapData, Active>,
    pub settings: Array<MapData, Settings>,
    pub vips: VipTables,
    pub backends: Array<MapData, Backend>,
    pub rings: MappedRings,
    pub flows: MappedFlows,
    /// Sets of the connection table minus one.
    pub flow_set_mask: u32,
    pub vip_stats: PerCpuArray<MapData, Counters>,
    pub backend_stats: PerCpuArray<MapData, Counters>,
    pub reasons: PerCpuArray<MapData, u64>,
    /// How it is attached, if it is.
    pub mode: Option<Mode>,
    /// Elements of `RINGS` each generation slot has for its rings (`ring_elems` of
    /// `--ring-entries`).
    pub ring_capacity: u32,
    /// The maps were pinned by an agent before this one, and are used as they are.
    pub inherited: bool,
    pin_dir: Option<PathBuf>,
    /// The link the program serves through, pinned under `pin_dir`: it outlives this
    /// process, so the data plane goes on serving for the next agent.
    link: Option<PinnedLink>,
    /// Whether dropping this removes the pins: only those a start that failed made, or
    /// after `detach`.
    remove_pins: bool,
    /// Held for this agent's life: the next one waits for it to end before it adopts.
    _lock: Option<sys::DirLock>,
    /// The old maps this balancer's were filled from (`--migrate`), removed once its
    /// program serves.
    migrating_from: Option<PathBuf>,
    _rings_map: Map,
    _flows_map: Map,
    // Last: dropping the object detaches a program attached without a pinned link.
    ebpf: Ebpf,
}

impl Balancer {
    /// Loads the balancer (not attached to any interface yet) with room for
    /// `ring_entries` ring entries per generation and a connection table of `flows`
    /// entries, its maps pinned as `pins` says.
    pub fn load(ring_entries: u32, flows: u32, pins: Option<Pins>) -> Result<Self, DataPlaneError> {
        Self::load_from(&Object::builtin(), ring_entries, flows, pins)
    }

    /// As `load`, from another build of lbx-ebpf with the same map layouts (`lbx-bench
    /// --baseline` compares two builds in one run).
    pub fn load_object(
        object: &[u8],
        ring_entries: u32,
        flows: u32,
        pins: Option<Pins>,
    ) -> Result<Self, DataPlaneError> {
        Self::load_from(&Object::from_bytes(object), ring_entries, flows, pins)
    }

    /// As `load`, from `object`: pinned maps are checked against the maps it defines, the
    /// program that is to serve from them.
    pub fn load_from(
        object: &Object,
        ring_entries: u32,
        flows: u32,
        pins: Option<Pins>,
    ) -> Result<Self, DataPlaneError> {
        let (origin, object) = (object.path(), object.bytes());
        let ring_capacity = lbx_common::ring_elems(ring_entries);
        let ring_elems = 2 * ring_capacity;
        let sets = flows::sets_for(flows);
        let flow_slots = sets * FLOW_WAYS;
        let sizes = [(maps::RINGS, ring_elems), (maps::FLOWS, flow_slots)];
        let migrate = pins.as_ref().is_some_and(|p| p.migrate);
        let pin_dir = pins.map(|p| p.dir);
        let inherited = pin_dir
            .as_ref()
            .is_some_and(|dir| dir.join(maps::ACTIVE).exists());
        let mut migrating_from = None;
        if let Some(dir) = &pin_dir {
            if inherited {
                let differences = layout::compare(object, dir, BALANCER_MAPS, &sizes);
                let sizes_only = differences
                    .iter()
                    .all(|d| migrate::SIZED.contains(&d.map) && d.what.starts_with("entries"));
                let fits = differences.is_empty();
                let migrates = migrate && sizes_only;
                if !fits && !migrates {
                    return Err(DataPlaneError::Layout {
                        dir: dir.clone(),
                        object: origin.map(Path::to_path_buf),
                        differences: differences
                            .iter()
                            .map(layout::Difference::explain)
                            .collect(),
                        migratable: sizes_only,
                    });
                }
                if !fits {
                    migrating_from = Some(migrate::set_aside(dir)?);
                }
            }
            std::fs::create_dir_all(dir).map_err(|source| DataPlaneError::Pin {
                dir: dir.clone(),
                source,
            })?;
        }
        let lock = match &pin_dir {
            Some(dir) => Some(
                sys::DirLock::try_lock(dir)
                    .map_err(DataPlaneError::Sys)?
                    .ok_or_else(|| DataPlaneError::PinsInUse {
                        dir: dir.clone(),
                        by: "a running lbx agent".to_owned(),
                    })?,
            ),
            None => None,
        };
        let mut ebpf = load(
            object,
            programs::BALANCER,
            &sizes,
            &[("FLOW_SET_MASK", sets - 1)],
            pin_dir.as_deref(),
        )?;
        let rings_map = take(&mut ebpf, maps::RINGS);
        let rings = match &rings_map {
            Map::Array(data) => MappedRings::new(data.fd().as_fd(), ring_elems as usize)?,
            _ => unreachable!("RINGS is an array"),
        };
        let flows_map = take(&mut ebpf, maps::FLOWS);
        let flows = match &flows_map {
            Map::Array(data) => MappedFlows::new(data.fd().as_fd(), flow_slots as usize)?,
            _ => unreachable!("FLOWS is an array"),
        };
        let mut bal = Self {
            active: typed!(&mut ebpf, maps::ACTIVE),
            settings: typed!(&mut ebpf, maps::SETTINGS),
            vips: match take(&mut ebpf, maps::VIPS) {
                Map::Array(data) => VipTables::new(data),
                _ => unreachable!("VIPS is an array"),
            },
            backends: typed!(&mut ebpf, maps::BACKENDS),
            flows,
            flow_set_mask: sets - 1,
            vip_stats: typed!(&mut ebpf, maps::VIP_STATS),
            backend_stats: typed!(&mut ebpf, maps::BACKEND_STATS),
            reasons: typed!(&mut ebpf, maps::REASONS),
            rings,
            mode: None,
            ring_capacity,
            inherited,
            remove_pins: pin_dir.is_some() && !inherited,
            pin_dir,
            _lock: lock,
            link: None,
            _rings_map: rings_map,
            _flows_map: flows_map,
            ebpf,
            migrating_from: None,
        };
        if let (Some(old), Some(dir)) = (migrating_from, bal.pin_dir.clone()) {
            // Fresh maps of the new sizes are in `dir` now; the old program still serves
            // from the old ones until `attach` swaps the new program into the link.
            let target = Target {
                active: &mut bal.active,
                settings: &mut bal.settings,
                vips: &mut bal.vips,
                backends: &mut bal.backends,
                vip_stats: &mut bal.vip_stats,
                backend_stats: &mut bal.backend_stats,
                reasons: &mut bal.reasons,
                flows: &mut bal.flows,
                flow_set_mask: bal.flow_set_mask,
            };
            if let Err(e) = migrate::copy(&old, &dir, target) {
                bal.remove_pins = false;
                drop(bal);
                migrate::put_back(&old, &dir);
                return Err(e);
            }
            bal.migrating_from = Some(old);
        }
        Ok(bal)
    }

    /// VIP `number`'s counters, summed over CPUs.
    pub fn vip_counters(&self, number: u32) -> Result<Counters, MapError> {
        self.vip_stats.get(&number, 0).map(|v| sum_cpus(&v))
    }

    /// The counters of the backend in `slot`, summed over CPUs.
    pub fn backend_counters(&self, slot: u32) -> Result<Counters, MapError> {
        self.backend_stats.get(&slot, 0).map(|v| sum_cpus(&v))
    }

    /// Packets counted under `reason`, summed over CPUs.
    pub fn reason_count(&self, reason: Reason) -> Result<u64, MapError> {
        Ok(self.reasons.get(&(reason as u32), 0)?.iter().sum())
    }

    /// The connection table's entry for `key`, as a packet of that flow finds it (`seed`:
    /// the flow hash seed of the published generation).
    pub fn flow(&self, key: &FlowKey, seed: u32) -> Option<FlowEntry> {
        let hash = flow_hash(key, seed);
        let words = flows::key_words(key);
        let base = flows::set_base(hash, self.flow_set_mask) as usize;
        (base..base + FLOW_WAYS as usize)
            .filter_map(|i| self.flows.get(i))
            .find(|s| flows::holds(s, &words, hash))
            .map(|s| s.entry)
    }

    /// Attaches the balancer to `iface`; returns the mode used. With a pin directory the
    /// program serves through a pinned link, which outlives this process: where a link is
    /// pinned already (an agent before this one), this program replaces the one it
    /// serves, atomically, and keeps its mode.
    pub fn attach(&mut self, iface: &str, mode: Mode) -> Result<Mode, DataPlaneError> {
        let Some(dir) = self.pin_dir.clone() else {
            let (used, _) = attach(xdp_mut(&mut self.ebpf, programs::BALANCER)?, iface, mode)?;
            self.mode = Some(used);
            return Ok(used);
        };
        let path = dir.join(LINK);
        let link_err = |source| DataPlaneError::Link {
            path: path.clone(),
            source,
        };
        // A link whose interface went away serves nothing: a new one replaces it.
        if sys::pinned_xdp_link(&path).is_ok_and(|(_, ifindex)| ifindex == 0) {
            std::fs::remove_file(&path).map_err(|source| DataPlaneError::Pin {
                dir: dir.clone(),
                source,
            })?;
        }
        self.check_mode(iface, mode)?;
        let prog = xdp_mut(&mut self.ebpf, programs::BALANCER)?;
        if path.exists() {
            let serving = serving_mode(iface)?.unwrap_or(Mode::Generic);
            let pinned = PinnedLink::from_pin(&path).map_err(link_err)?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
            prog.attach_to_link(link)
                .map_err(|source| DataPlaneError::Attach {
                    iface: iface.to_string(),
                    mode: serving,
                    source,
                })?;
            self.mode = Some(serving);
        } else {
            let (used, id) = attach(prog, iface, mode)?;
            let link = prog
                .take_link(id)
                .map_err(|source| DataPlaneError::Program {
                    program: programs::BALANCER.to_string(),
                    source,
                })?;
            let fd = FdLink::try_from(link).map_err(link_err)?;
            let pinned = fd.pin(&path).map_err(|e| DataPlaneError::Pin {
                dir: dir.clone(),
                source: std::io::Error::other(e),
            })?;
            self.link = Some(pinned);
            self.mode = Some(used);
        }
        // Serving now: the pins are for the next agent to adopt, and maps migrated from
        // are no program's any more.
        self.remove_pins = false;
        if let Some(old) = self.migrating_from.take() {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(self.mode.expect("set above"))
    }

    /// Whether `attach` in `mode` can take over the balancer serving `iface` from the
    /// pinned link (it keeps the mode it serves in), before anything is published.
    pub fn check_mode(&self, iface: &str, mode: Mode) -> Result<(), DataPlaneError> {
        let Some(dir) = &self.pin_dir else {
            return Ok(());
        };
        if mode == Mode::Auto || !dir.join(LINK).exists() {
            return Ok(());
        }
        // Nothing attached: the link's interface went away, and a new link is made.
        let Some(serving) = serving_mode(iface)? else {
            return Ok(());
        };
        if mode != serving {
            return Err(DataPlaneError::ModeMismatch {
                iface: iface.to_string(),
                serving,
                asked: mode,
            });
        }
        Ok(())
    }

    /// The kernel's id of the balancer program (what `bpftool prog` and `ip link` show).
    pub fn program_id(&self) -> Option<u32> {
        self.program().info().ok().map(|i| i.id())
    }

    /// The balancer program, e.g. to run packets through it with `TestRun`.
    pub fn program(&self) -> &Xdp {
        self.sibling(programs::BALANCER)
            .expect("the balancer is loaded")
    }

    /// Loads another program of the object (one of `lbx_common::programs`) that then
    /// shares the balancer's maps, as the benchmark's stage programs must.
    pub fn load_sibling(&mut self, program: &str) -> Result<(), DataPlaneError> {
        xdp_mut(&mut self.ebpf, program)?
            .load()
            .map_err(|source| DataPlaneError::Program {
                program: program.to_string(),
                source,
            })
    }

    /// A program of the object, once loaded.
    pub fn sibling(&self, program: &str) -> Option<&Xdp> {
        let prog: &Xdp = self.ebpf.program(program)?.try_into().ok()?;
        prog.fd().is_ok().then_some(prog)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let (true, Some(dir)) = (self.remove_pins, &self.pin_dir) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The mode the XDP program on `iface` runs in, from the kernel; None if none does.
fn serving_mode(iface: &str) -> Result<Option<Mode>, DataPlaneError> {
    let index = sys::if_index(iface).ok_or_else(|| DataPlaneError::NoInterface {
        iface: iface.to_string(),
    })?;
    let attached = holder::attached(index).map_err(|source| DataPlaneError::Query {
        iface: iface.to_string(),
        source,
    })?;
    Ok(attached.map(|a| {
        if a.native {
            Mode::Native
        } else {
            Mode::Generic
        }
    }))
}

/// Removes the balancer that serves on an interface from `dir` (its pinned link and maps):
/// the program detaches once no agent holds it. For `lbx detach` after an agent stopped.
pub fn remove_pins(dir: &Path) -> Result<bool, DataPlaneError> {
    if !dir.join(LINK).exists() && !dir.join(maps::ACTIVE).exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(dir).map_err(|source| DataPlaneError::Pin {
        dir: dir.to_path_buf(),
        source,
    })?;
    Ok(true)
}
