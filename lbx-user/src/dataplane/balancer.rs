//! Loads lbx's XDP programs, attaches them, and holds the balancer's maps.

use std::{
    fmt,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{Xdp, XdpMode},
};
use lbx_common::{
    Active, Backend, Counters, FlowEntry, FlowKey, MAX_VIPS, Reason, Settings, VipTable,
    flows::{self, FLOW_WAYS},
    hash::flow_hash,
    maps, programs,
};

use super::{
    holder::{self, Attached},
    sys::{self, MappedFlows, MappedRings},
};

/// The XDP programs, built by build.rs from lbx-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lbx-xdp"));

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("no such interface: {iface} (see `ip link`)")]
    NoInterface { iface: String },
    #[error("{what} needs root (CAP_BPF and CAP_NET_ADMIN): run it as root")]
    NotRoot { what: String },
    #[error("failed to load the XDP programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the kernel rejected program {program}: {source}")]
    Program {
        program: String,
        source: aya::programs::ProgramError,
    },
    #[error("failed to attach XDP to {iface} in {mode} mode: {source}{}", attach_advice(*.mode))]
    Attach {
        iface: String,
        mode: Mode,
        source: aya::programs::ProgramError,
    },
    #[error(
        "{iface} already has an XDP program: {attached}; {}",
        held_advice(iface, attached)
    )]
    Held { iface: String, attached: Attached },
    #[error("cannot ask the kernel which XDP program {iface} has: {source}")]
    Query {
        iface: String,
        source: std::io::Error,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "the maps pinned under {} belong to a running balancer (XDP program {id}, {name}), \
         maybe an agent on an interface of the same name in another network namespace: \
         give this agent another --bpffs",
        .dir.display()
    )]
    PinsInUse { dir: PathBuf, id: u32, name: String },
    #[error("cannot pin maps under {dir}: {source}")]
    Pin {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Sys(#[from] std::io::Error),
}

/// Generic mode is the fallback for drivers without native XDP; advising it after generic
/// failed would send the operator in a circle.
fn attach_advice(mode: Mode) -> &'static str {
    match mode {
        Mode::Native => "; the driver may lack native XDP: try --xdp-mode auto or generic",
        Mode::Generic | Mode::Auto => "",
    }
}

fn held_advice(iface: &str, attached: &Attached) -> String {
    match attached.agent() {
        Some(agent) => {
            let status = match agent.sockets.first() {
                Some(socket) => format!("`lbx --socket {} status`", socket.display()),
                None => "`lbx status`".to_owned(),
            };
            format!(
                "stop that agent first ({status} shows what it serves), or balance on another \
                 interface"
            )
        }
        None => format!(
            "detach it first (`ip link set dev {iface} xdp off`), or stop the process that holds it"
        ),
    }
}

/// How the program runs on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// In the driver, before the kernel allocates a socket buffer: fastest.
    Native,
    /// In the kernel's receive path; works on any interface, slower.
    Generic,
    /// Native where the driver supports it, else generic (and says so).
    Auto,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
            Mode::Auto => "auto",
        })
    }
}

/// Checks what every attaching command needs before it touches the kernel.
pub fn preflight(what: &str, iface: &str) -> Result<(), DataPlaneError> {
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
    // Before anything is created: a hook that is taken would fail the attach only after
    // the maps are made and pinned, with the kernel's bare "device busy".
    match holder::attached(index) {
        Ok(None) => {}
        Ok(Some(attached)) => {
            return Err(DataPlaneError::Held {
                iface: iface.to_string(),
                attached,
            });
        }
        Err(source) => {
            return Err(DataPlaneError::Query {
                iface: iface.to_string(),
                source,
            });
        }
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
) -> Result<Ebpf, DataPlaneError> {
    let mut l = loader();
    for (name, size) in sizes {
        l.map_max_entries(name, *size);
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
fn attach(prog: &mut Xdp, iface: &str, mode: Mode) -> Result<Mode, DataPlaneError> {
    let attach_err = |mode, source| DataPlaneError::Attach {
        iface: iface.to_string(),
        mode,
        source,
    };
    match mode {
        Mode::Native => prog
            .attach(iface, XdpMode::Driver)
            .map_err(|e| attach_err(mode, e))?,
        Mode::Generic => prog
            .attach(iface, XdpMode::Skb)
            .map_err(|e| attach_err(mode, e))?,
        Mode::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(_) => return Ok(Mode::Native),
            Err(e) => {
                eprintln!("native XDP is not available on {iface} ({e}); using generic mode");
                prog.attach(iface, XdpMode::Skb)
                    .map_err(|e| attach_err(Mode::Generic, e))?;
                return Ok(Mode::Generic);
            }
        },
    };
    Ok(mode)
}

/// Loads `program` (one of `lbx_common::programs`) without attaching it, e.g. to run
/// packets through it with `TestRun` (the benchmark's floors).
pub fn load_unattached(program: &str) -> Result<Ebpf, DataPlaneError> {
    load(OBJECT, program, &[], &[])
}

/// Loads `program` and attaches it to `iface`. Returns the object (dropping it detaches)
/// and the mode used.
pub fn load_and_attach(
    program: &str,
    iface: &str,
    mode: Mode,
) -> Result<(Ebpf, Mode), DataPlaneError> {
    let mut ebpf = load(OBJECT, program, &[], &[])?;
    let used = attach(xdp_mut(&mut ebpf, program)?, iface, mode)?;
    Ok((ebpf, used))
}

fn take(ebpf: &mut Ebpf, name: &'static str, pin: Option<&Path>) -> Result<Map, DataPlaneError> {
    let map = ebpf.take_map(name).expect("map is in the object");
    if let Some(dir) = pin {
        map.pin(dir.join(name)).map_err(|e| DataPlaneError::Pin {
            dir: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    }
    Ok(map)
}

macro_rules! typed {
    ($ebpf:expr, $name:expr, $pin:expr) => {
        take($ebpf, $name, $pin)?
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
    pub vips: Array<MapData, VipTable>,
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
    pub ring_size: u32,
    pin_dir: Option<PathBuf>,
    _rings_map: Map,
    _flows_map: Map,
    // Last: dropping the object detaches the program.
    ebpf: Ebpf,
}

impl Balancer {
    /// Loads the balancer (not attached to any interface yet) with rings of `ring_size`
    /// and a connection table of `flows` entries, pinning its maps under `pin_dir`.
    pub fn load(
        ring_size: u32,
        flows: u32,
        pin_dir: Option<PathBuf>,
    ) -> Result<Self, DataPlaneError> {
        Self::load_object(OBJECT, ring_size, flows, pin_dir)
    }

    /// As `load`, from another build of lbx-ebpf with the same map layouts (`lbx-bench
    /// --baseline` compares two builds in one run).
    pub fn load_object(
        object: &[u8],
        ring_size: u32,
        flows: u32,
        pin_dir: Option<PathBuf>,
    ) -> Result<Self, DataPlaneError> {
        let ring_elems = 2 * MAX_VIPS * lbx_common::ring_elems(ring_size);
        let sets = flows::sets_for(flows);
        let flow_slots = sets * FLOW_WAYS;
        let mut ebpf = load(
            object,
            programs::BALANCER,
            &[(maps::RINGS, ring_elems), (maps::FLOWS, flow_slots)],
            &[("FLOW_SET_MASK", sets - 1)],
        )?;
        if let Some(dir) = &pin_dir {
            if let Some((id, name)) = holder::program_using_pin(&dir.join(maps::ACTIVE)) {
                return Err(DataPlaneError::PinsInUse {
                    dir: dir.clone(),
                    id,
                    name,
                });
            }
            // A previous run that died leaves its pins; no program uses their maps.
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).map_err(|source| DataPlaneError::Pin {
                dir: dir.clone(),
                source,
            })?;
        }
        let pin = pin_dir.as_deref();
        let rings_map = take(&mut ebpf, maps::RINGS, pin)?;
        let rings = match &rings_map {
            Map::Array(data) => MappedRings::new(data.fd().as_fd(), ring_elems as usize)?,
            _ => unreachable!("RINGS is an array"),
        };
        let flows_map = take(&mut ebpf, maps::FLOWS, pin)?;
        let flows = match &flows_map {
            Map::Array(data) => MappedFlows::new(data.fd().as_fd(), flow_slots as usize)?,
            _ => unreachable!("FLOWS is an array"),
        };
        Ok(Self {
            active: typed!(&mut ebpf, maps::ACTIVE, pin),
            settings: typed!(&mut ebpf, maps::SETTINGS, pin),
            vips: typed!(&mut ebpf, maps::VIPS, pin),
            backends: typed!(&mut ebpf, maps::BACKENDS, pin),
            flows,
            flow_set_mask: sets - 1,
            vip_stats: typed!(&mut ebpf, maps::VIP_STATS, pin),
            backend_stats: typed!(&mut ebpf, maps::BACKEND_STATS, pin),
            reasons: typed!(&mut ebpf, maps::REASONS, pin),
            rings,
            mode: None,
            ring_size,
            pin_dir,
            _rings_map: rings_map,
            _flows_map: flows_map,
            ebpf,
        })
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

    /// Attaches the balancer to `iface`; returns the mode used.
    pub fn attach(&mut self, iface: &str, mode: Mode) -> Result<Mode, DataPlaneError> {
        let used = attach(xdp_mut(&mut self.ebpf, programs::BALANCER)?, iface, mode)?;
        self.mode = Some(used);
        Ok(used)
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
        if let Some(dir) = &self.pin_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
