//! Types shared by the XDP programs and the agent: map keys and values, map names,
//! limits, counter reasons and the flow hash. Everything here is `#[repr(C)]` with
//! explicit padding, so the kernel and user side agree on every byte.
#![no_std]

pub mod flows;
pub mod hash;
pub mod vips;

/// Address family tags carried in keys and backend entries. Zero means "empty slot".
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_IPV6: u8 = 41;

/// How many VIPs one agent serves (VIP ids are 16-bit in `VipEntry`).
pub const MAX_VIPS: u32 = 1024;
/// Backend slots (a backend of one VIP is one slot) across all VIPs.
pub const MAX_BACKENDS: u32 = 16384;
/// Default connection-table size (flows); `lbx run --flows` changes it.
pub const DEFAULT_FLOWS: u32 = 1 << 20;
/// Default seconds a TCP flow may go unseen and still count as active (`--flow-idle-s`).
pub const DEFAULT_TCP_IDLE_S: u16 = 300;
/// The same for UDP (`--udp-flow-idle-s`).
pub const DEFAULT_UDP_IDLE_S: u16 = 30;
/// Addresses `lbx decap` accepts as local VIPs.
pub const MAX_DECAP_VIPS: u32 = 256;
/// Default Maglev table size (prime).
pub const DEFAULT_RING_SIZE: u32 = 65537;

/// Ring entries per element of `RINGS`: 16-bit backend slots, four to the 8 bytes the
/// kernel gives every array element (one `u32` per element would waste half of them).
pub const RING_LANES: u32 = 4;
const _: () = assert!(MAX_BACKENDS <= 1 << 16, "ring entries are 16-bit slots");

/// Elements of `RINGS` one ring of `ring_size` entries takes.
pub const fn ring_elems(ring_size: u32) -> u32 {
    ring_size.div_ceil(RING_LANES)
}

/// Ring entries `rings` rings of `ring_size` take in `RINGS`: each is rounded up to whole
/// elements of `RING_LANES` entries.
pub const fn ring_entries_for(rings: u32, ring_size: u32) -> u32 {
    rings * ring_elems(ring_size) * RING_LANES
}

/// Default ring entries each generation slot of `RINGS` holds (`lbx run --ring-entries`):
/// 64 rings of the default size, 8 MiB per slot.
pub const DEFAULT_RING_ENTRIES: u32 = ring_entries_for(64, DEFAULT_RING_SIZE);

/// Ring entry `index` from its element of `RINGS` (`ring_base + index / RING_LANES`).
#[inline(always)]
pub fn ring_entry(elem: u64, index: u32) -> u32 {
    (elem >> ((index % RING_LANES) * 16)) as u32 & 0xffff
}

/// IPv6 extension headers the balancer walks to reach the ports (hop-by-hop, routing,
/// destination options, fragment), at most.
pub const IPV6_EXT_MAX: u32 = 4;

/// Bytes each encapsulation prepends.
pub const IPIP_OVERHEAD: u32 = 20;
pub const IP6IP6_OVERHEAD: u32 = 40;

/// Outer TTL / hop limit of encapsulated packets.
pub const OUTER_TTL: u8 = 64;

/// Map names, used by the programs' `#[map]` statics and by the agent.
pub mod maps {
    /// Which generation slot (0 or 1) packets read now: `Array<u32>[1]`.
    pub const ACTIVE: &str = "ACTIVE";
    /// Per-generation settings: `Array<Settings>[2]`, indexed by generation slot.
    pub const SETTINGS: &str = "SETTINGS";
    /// The VIP table of each generation slot, read inline by the program (see `vips`):
    /// `Array<VipTable>[2]`, indexed by generation slot.
    pub const VIPS: &str = "VIPS";
    /// Backends, slot 0's table then slot 1's: `Array<Backend>[2 * MAX_BACKENDS]`.
    pub const BACKENDS: &str = "BACKENDS";
    /// Maglev rings, slot 0's region then slot 1's, each holding the rings of its
    /// generation wherever the agent placed them (`VipEntry::ring_base`):
    /// `Array<u64>[2 * ring_elems(ring_entries)]`, `RING_LANES` backend slots per
    /// element (`ring_entry`); memory-mappable so the agent writes a whole ring with one
    /// copy.
    pub const RINGS: &str = "RINGS";
    /// Connection table: `Array<FlowSlot>[sets * FLOW_WAYS]`, set-associative (see
    /// `flows`), memory-mappable; outlives generations.
    pub const FLOWS: &str = "FLOWS";
    /// Per-CPU counters: `PerCpuArray<Counters>` by VIP id and by backend slot.
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// Per-CPU packet counts by `Reason`: `PerCpuArray<u64>[Reason::COUNT]`.
    pub const REASONS: &str = "REASONS";
    /// `lbx decap`: local VIP addresses, `HashMap<AddrKey, u32>`.
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    /// `lbx decap`: per-CPU counts by `DecapReason`.
    pub const DECAP_STATS: &str = "DECAP_STATS";
}

/// Program names in the object file.
pub mod programs {
    pub const BALANCER: &str = "lbx_balancer";
    pub const DECAP: &str = "lbx_decap";
    pub const PASS: &str = "lbx_pass";
    /// Benchmark floor: a minimal encapsulating forwarder without lookups.
    pub const BENCH_FORWARD: &str = "lbx_bench_forward";
    /// Benchmark breakdown: the balancer compiled to stop after a stage (`stages`) and
    /// send the frame back unchanged. They share the balancer's maps.
    pub const BENCH_UNTIL_FILTER: &str = "lbx_bench_until_filter";
    pub const BENCH_UNTIL_VIP: &str = "lbx_bench_until_vip";
    pub const BENCH_UNTIL_FLOW: &str = "lbx_bench_until_flow";
    /// Packet-rate floor: sends every frame back with XDP_TX, nothing else.
    pub const BENCH_TX: &str = "lbx_bench_tx";
    /// Packet-rate sink, on the veth that receives what is measured: drops every frame
    /// (the veth counts it first).
    pub const BENCH_DROP: &str = "lbx_bench_drop";
}

/// Where the benchmark's stage programs stop the balancer; each includes the ones before.
pub mod stages {
    /// Parsing, `ACTIVE` and the not-a-VIP filter.
    pub const FILTER: u32 = 1;
    /// The generation's settings and the VIP table.
    pub const VIP: u32 = 2;
    /// The flow hash, the connection table and the backend (on a miss: the ring and the
    /// insert). Left: encapsulation and counters.
    pub const FLOW: u32 = 3;
    /// The whole balancer.
    pub const ALL: u32 = u32::MAX;
}

/// An IP address as sixteen network-order bytes seen as four `u32` words; IPv4 uses the
/// first word and leaves the rest zero. Words keep the hash and compares cheap in BPF.
pub type Addr = [u32; 4];

/// Key of the VIP table: destination address, port and protocol. Port 0 means "all
/// ports" and is looked up after an exact miss. A zero family marks an empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: Addr,
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// One slot of a generation's VIP table: the key and what the program needs of the VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipEntry {
    pub key: VipKey,
    /// Stable id: index into `VIP_STATS`.
    pub id: u16,
    /// `VIP_F_*` bits.
    pub flags: u16,
    /// Index in `RINGS` of the element holding this VIP's first ring entry in this
    /// generation slot.
    pub ring_base: u32,
    /// Entries of this VIP's ring (its Maglev table size, a prime); zero without a ring.
    pub ring_size: u32,
}
const _: () = assert!(core::mem::size_of::<VipEntry>() == 32);
const _: () = assert!(MAX_VIPS <= 1 << 16, "VIP ids are 16-bit");

/// Slots of a generation's VIP table: a power of two, four times the most entries it
/// holds (`MAX_VIPS` VIPs and as many echo addresses), so probe chains stay short.
pub const VIP_TABLE_SLOTS: usize = 8192;
/// Slots a lookup probes from its home slot at most; the agent places every VIP within.
pub const VIP_PROBES: u32 = 8;

/// One generation's VIP table, open-addressed with linear probing (see `vips`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipTable {
    pub entries: [VipEntry; VIP_TABLE_SLOTS],
}
const _: () = assert!(core::mem::size_of::<VipTable>() == 32 * VIP_TABLE_SLOTS);

impl Default for VipTable {
    fn default() -> Self {
        VipTable {
            entries: [VipEntry::default(); VIP_TABLE_SLOTS],
        }
    }
}

/// The VIP's ring holds at least one backend; without it new flows are dropped.
pub const VIP_F_HAS_BACKENDS: u16 = 1;
/// Not a VIP: the entry of a VIP address whose echo requests the balancer answers. Its
/// key is the address with port 0 and protocol `PROTO_ICMP` or `PROTO_ICMPV6`; it has no
/// ring, backends or counters.
pub const VIP_F_ECHO: u16 = 2;

/// A backend of one VIP. Its slot number (stable across generations, index of
/// `BACKEND_STATS`) is what rings and the connection table hold; generation slot `g` keeps
/// it at `g * MAX_BACKENDS + slot` in `BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    /// Ethernet destination of the encapsulated packet: the backend or its next hop.
    pub mac: [u8; 6],
    /// `FAMILY_V4`/`FAMILY_V6`; zero marks an empty slot.
    pub family: u8,
    pub flags: u8,
    /// Unique per backend instance; a connection-table entry that names a slot whose
    /// uid changed belongs to a backend that was removed, and is treated as a miss.
    pub uid: u32,
    /// The id of the VIP the slot serves. The program never reads it; an agent that
    /// adopts the maps of the one before it learns from it which VIP each slot is of.
    pub vip: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 32);

/// The backend failed its health checks: its established flows move to other backends.
pub const BACKEND_F_DOWN: u8 = 1;

/// The value of `ACTIVE`, the one cache line every packet reads first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Active {
    /// The generation slot packets use (0 or 1).
    pub slot: u32,
    /// The agent's coarse clock: whole seconds since boot, ticked about once a second. A connection-table hit stamps its slot with it when it changed, so a
    /// slot's stamp says when its flow was last seen without a write per packet. Zero
    /// until an agent ticks.
    pub now: u32,
    /// `vip_filter_bit`s that no VIP address has, in the active generation nor in one
    /// being switched to: a packet to such an address is for no VIP and stops here,
    /// without reading the generation. Zero (nothing known) until the first publication.
    pub no_vip: u64,
}
const _: () = assert!(core::mem::size_of::<Active>() == 16);

/// Settings of one generation, read by every packet of it. A zero `ring_size` means no
/// generation was published into this slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Seed of the flow hash; equal on every node behind the same ECMP group.
    pub seed: u32,
    /// The configuration's default Maglev table size (prime); each VIP's own is in its
    /// `VipEntry::ring_size`. Nonzero once a generation is in this slot.
    pub ring_size: u32,
    /// Largest inner IP packet that still fits the link once encapsulated.
    pub mtu: u32,
    /// `SETTINGS_F_*` bits.
    pub flags: u32,
    /// `vip_filter_bit` of every VIP address, OR-ed; the publisher derives
    /// `Active::no_vip` from it.
    pub vip_filter: u64,
    /// Outer IPv4 source: `src_v4 | (hash & src_v4_hostmask)`, both network order.
    pub src_v4: u32,
    pub src_v4_hostmask: u32,
    /// Outer IPv6 source, the same way.
    pub src_v6: Addr,
    pub src_v6_hostmask: Addr,
    /// Generation number (informational; `lbx status` and consistency checks).
    pub generation: u64,
    /// Salt of this generation's VIP table hash (`vips::home`), chosen by the agent so
    /// that every VIP fits within `VIP_PROBES` of its home slot.
    pub vip_salt: u32,
    /// Seconds a UDP flow (`udp_idle_s`) or any other (`tcp_idle_s`) may go unseen
    /// before its connection-table slot counts as free; zero: never.
    pub tcp_idle_s: u16,
    pub udp_idle_s: u16,
    /// Until this second of `Active::now` a TCP packet without SYN that misses the
    /// connection table takes the backend the previous generation's ring gives it, when
    /// that backend still serves the VIP (the second chance); zero: never.
    pub second_chance_until: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 88);

/// The bit of `Settings::vip_filter` and `Active::no_vip` for a destination address: one
/// of 64, from all its bytes (cheap in BPF: three XORs and two shifts).
#[inline(always)]
pub fn vip_filter_bit(addr: &Addr) -> u64 {
    let x = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
    let x = x ^ (x >> 16);
    let x = x ^ (x >> 8);
    1u64 << (x & 63)
}

/// Some IPv4 VIP listens on all ports: an exact miss needs a port-0 lookup.
pub const SETTINGS_F_PORT0_V4: u32 = 1;
/// The same for IPv6.
pub const SETTINGS_F_PORT0_V6: u32 = 2;

/// Key of the connection table: the client's 5-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// The backend a flow was given.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// Backend slot.
    pub backend: u32,
    pub uid: u32,
}
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 8);

/// Per-CPU traffic counters of a VIP or a backend slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows that missed the connection table and were hashed.
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 24);

/// Key of `lbx decap`'s local VIP set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: Addr,
    pub family: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

macro_rules! reasons {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $label:literal,)* }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant,)* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            pub const COUNT: u32 = Self::ALL.len() as u32;
            /// The name `lbx stats` shows.
            pub const fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
}

reasons! {
    /// Why the balancer passed, dropped or sent a packet; one per-CPU counter each.
    Reason {
        /// Encapsulated and sent to a backend.
        Forwarded = "forwarded",
        /// Not IPv4 or IPv6 (ARP, LLDP, ...).
        PassNotIp = "pass_not_ip",
        /// A header was cut short or inconsistent.
        PassMalformed = "pass_malformed",
        /// An IPv4 or IPv6 fragment: only the first one has ports.
        PassFragment = "pass_fragment",
        /// An IPv6 extension header lbx does not walk (AH, ESP, mobility, HIP, shim6), or
        /// more than `IPV6_EXT_MAX` of those it walks.
        PassExtensionHeader = "pass_ipv6_ext_header",
        /// Neither TCP nor UDP, nor ICMP that the balancer answers or forwards, to an
        /// address that may be a VIP's.
        PassNotTcpUdp = "pass_not_tcp_udp",
        /// No VIP matches destination, port and protocol; or the destination address is
        /// no VIP's (known from the IP header alone, whatever follows it).
        PassNotVip = "pass_not_vip",
        /// No generation published yet.
        PassNoConfig = "pass_no_config",
        /// The VIP has no backend taking new flows.
        DropNoBackend = "drop_no_backend",
        /// Too big for the link once encapsulated.
        DropTooBig = "drop_too_big",
        /// A ring slot named an empty backend slot: a table the agent did not finish.
        DropBadRing = "drop_bad_ring",
        /// The kernel refused to grow the packet's headroom.
        DropEncapFailed = "drop_encap_failed",
        /// An ICMP or ICMPv6 error about a VIP's flow (fragmentation needed, packet too
        /// big) encapsulated to the backend that serves the flow.
        ForwardedIcmp = "forwarded_icmp",
        /// An ICMP error to a VIP address whose embedded header is cut short or is not of
        /// a packet the VIP sent: passed.
        PassIcmpBadInner = "pass_icmp_bad_inner",
        /// An echo request to a VIP address, answered by the balancer.
        EchoReply = "echo_reply",
        /// A TCP packet without SYN that missed the connection table went to the backend
        /// of the previous generation's ring, not the current one's, and was recorded.
        ForwardedSecondChance = "forwarded_second_chance",
    }
}

reasons! {
    /// What `lbx decap` did with a packet.
    DecapReason {
        /// The outer header was removed and the inner packet passed to the stack.
        Decapsulated = "decapsulated",
        /// Anything else: passed unchanged.
        Passed = "passed",
        /// A tunnel packet whose inner destination is not a local VIP: passed unchanged.
        NotLocalVip = "not_local_vip",
        /// A tunnel packet cut short: passed unchanged.
        Malformed = "malformed",
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), have no padding (checked by the size asserts and
    // explicit pad fields) and any bit pattern is a valid value.
    unsafe impl aya::Pod for Active {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipEntry {}
    unsafe impl aya::Pod for VipTable {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for crate::flows::FlowSlot {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for AddrKey {}
}
