//! The reference model of the balancer's packet path: what lbx-ebpf does with one frame,
//! written as plain Rust over the same compiled tables the agent publishes (a [`Plan`]).
//!
//! It exists to be checked against the kernel program: the conformance fixtures and the
//! differential test run the same frames through both and require the same verdict,
//! reason, backend and output bytes. So it follows the program step by step, including
//! its order of checks (which decides the reason when several apply) and its side effects
//! (a connection-table insert happens before the MTU check). It shares the map layouts,
//! `Reason` and the flow hash with the program through lbx-common, and nothing else: the
//! header parsing and the encapsulation are written again here from the RFCs.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lbx_common::{
    Addr, BACKEND_F_DOWN, Backend, FAMILY_V4, FAMILY_V6, FlowEntry, FlowKey, IP6IP6_OVERHEAD,
    IPIP_OVERHEAD, IPV6_EXT_MAX, MAX_BACKENDS, OUTER_TTL, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP,
    PROTO_IPV6, PROTO_TCP, PROTO_UDP, Reason, SETTINGS_F_PORT0_V4, SETTINGS_F_PORT0_V6, Settings,
    VIP_F_HAS_BACKENDS, VipKey,
    flows::{self, FLOW_WAYS, FlowSlot},
    hash::flow_hash,
    vip_filter_bit,
};

use lbx::dataplane::plan::{Plan, PlannedVip};

const ETH_LEN: usize = 14;
const IPV4_MIN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_MIN: usize = 20;
const UDP_LEN: usize = 8;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IPv4 flags and fragment offset: "more fragments" and the offset mean a fragment.
const IPV4_MF_OFFSET: u16 = 0x3fff;
const IPV4_DF: u16 = 0x4000;
const TCP_SYN: u8 = 0x02;
/// IPv6 extension headers the program walks to the ports: hop-by-hop, routing, fragment,
/// destination options (RFC 8200); and those it does not (RFC 7045's list).
const IPV6_FRAGMENT: u8 = 44;
const IPV6_WALKED: [u8; 4] = [0, 43, IPV6_FRAGMENT, 60];
const IPV6_UNWALKED: [u8; 5] = [50, 51, 135, 139, 140];
/// ICMP (RFC 792) and ICMPv6 (RFC 4443): the header, and the types the program reads.
const ICMP_LEN: usize = 8;
const ICMP_V4_UNREACHABLE: u8 = 3;
const ICMP_V4_FRAG_NEEDED: u8 = 4;
const ICMP_V4_ECHO_REQUEST: u8 = 8;
const ICMP_V4_ECHO_REPLY: u8 = 0;
const ICMP_V6_TOO_BIG: u8 = 2;
const ICMP_V6_ECHO_REQUEST: u8 = 128;
const ICMP_V6_ECHO_REPLY: u8 = 129;

/// The XDP verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Drop,
    Pass,
    Tx,
}

impl Verdict {
    /// The `xdp_action` value the program returns.
    pub fn code(self) -> u32 {
        match self {
            Verdict::Drop => 1,
            Verdict::Pass => 2,
            Verdict::Tx => 3,
        }
    }

    /// The verdict of an `xdp_action` value, if it is one of these three.
    pub fn from_code(code: u32) -> Option<Verdict> {
        match code {
            1 => Some(Verdict::Drop),
            2 => Some(Verdict::Pass),
            3 => Some(Verdict::Tx),
            _ => None,
        }
    }

    /// What the program does for a reason: forward, drop, or hand to the kernel.
    pub fn of(reason: Reason) -> Verdict {
        match reason {
            Reason::Forwarded
            | Reason::ForwardedSecondChance
            | Reason::ForwardedIcmp
            | Reason::EchoReply => Verdict::Tx,
            Reason::DropNoBackend
            | Reason::DropTooBig
            | Reason::DropBadRing
            | Reason::DropEncapFailed => Verdict::Drop,
            Reason::PassNotIp
            | Reason::PassMalformed
            | Reason::PassFragment
            | Reason::PassExtensionHeader
            | Reason::PassNotTcpUdp
            | Reason::PassNotVip
            | Reason::PassNoConfig
            | Reason::PassIcmpBadInner => Verdict::Pass,
        }
    }
}

/// How the backend was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A connection-table entry whose backend still exists and is not down.
    Table,
    /// The Maglev ring (and an entry was inserted).
    Ring,
    /// The previous generation's ring: a second chance (and an entry was inserted).
    PreviousRing,
}

/// The backend a VIP packet went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// Backend slot (index of `BACKEND_STATS`).
    pub slot: u32,
    pub addr: IpAddr,
    pub mac: [u8; 6],
    pub source: Source,
}

/// What the program does with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The VIP's number (index of `VIP_STATS`) when the packet matched one.
    pub vip: Option<u32>,
    /// The backend, once one was chosen (also for a packet then dropped as too big).
    pub backend: Option<Chosen>,
    /// The frame as the program leaves it: encapsulated when forwarded, else unchanged.
    pub output: Vec<u8>,
}

impl Decision {
    /// Whether the VIP and backend traffic counters count this packet: only packets of a
    /// flow that were sent (not ICMP errors forwarded, nor echo replies).
    pub fn counted(&self) -> bool {
        matches!(
            self.reason,
            Reason::Forwarded | Reason::ForwardedSecondChance
        )
    }

    /// Whether the packet started a flow (a counted packet that missed the table).
    pub fn new_flow(&self) -> bool {
        self.counted() && self.backend.is_some_and(|b| b.source != Source::Table)
    }
}

/// The model's connection table: the program's `FLOWS`, the same sets, slots and
/// replacement (lbx_common::flows), so after the same frames both hold the same slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowTable {
    slots: Vec<FlowSlot>,
    mask: u32,
}

impl FlowTable {
    /// An empty table sized like the program's for `lbx run --flows FLOWS`.
    pub fn new(flows: u32) -> Self {
        let sets = flows::sets_for(flows);
        Self {
            slots: vec![FlowSlot::default(); (sets * FLOW_WAYS) as usize],
            mask: sets - 1,
        }
    }

    /// A table holding `slots` (read from the program's map).
    pub fn from_slots(slots: Vec<FlowSlot>) -> Self {
        let sets = (slots.len() as u32 / FLOW_WAYS).max(1);
        assert!(sets.is_power_of_two(), "a table has a power of two of sets");
        Self {
            slots,
            mask: sets - 1,
        }
    }

    pub fn slots(&self) -> &[FlowSlot] {
        &self.slots
    }

    /// Slots in use.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.check != 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry a packet of `key` finds under `seed`, if any.
    pub fn get(&self, key: &FlowKey, seed: u32) -> Option<FlowEntry> {
        let hash = flow_hash(key, seed);
        self.find(&flows::key_words(key), hash)
            .map(|i| self.slots[i].entry)
    }

    fn find(&self, words: &[u64; 5], hash: u32) -> Option<usize> {
        let base = flows::set_base(hash, self.mask) as usize;
        (base..base + FLOW_WAYS as usize).find(|&i| flows::holds(&self.slots[i], words, hash))
    }

    fn insert(
        &mut self,
        words: &[u64; 5],
        hash: u32,
        entry: FlowEntry,
        now: u32,
        settings: &Settings,
    ) {
        let base = flows::set_base(hash, self.mask) as usize;
        let (way, clear_other) = flows::insert_way(
            [&self.slots[base], &self.slots[base + 1]],
            words,
            hash,
            now,
            settings,
        );
        if clear_other {
            self.slots[base + 1 - way].recent = 0;
        }
        self.slots[base + way] = FlowSlot {
            key: *words,
            entry,
            check: flows::check(hash, &entry),
            recent: 0,
            seen: now,
            pad: 0,
        };
    }
}

/// The published configuration as the program reads it: one generation's tables, and
/// the previous generation's for a second chance.
pub struct Reference<'a> {
    /// `None`: nothing published yet.
    tables: Option<Tables<'a>>,
    /// The generation before, with `Settings::second_chance_until` of this one.
    previous: Option<(Tables<'a>, u32)>,
    /// The data plane's clock (`Active::now`).
    now: u32,
}

struct Tables<'a> {
    settings: Settings,
    vips: HashMap<VipKey, &'a PlannedVip>,
    /// The VIP addresses whose echo requests are answered, as echo entry keys.
    echo: Vec<VipKey>,
    /// Indexed by backend slot; family 0 is an empty slot.
    backends: Vec<Backend>,
}

impl<'a> Tables<'a> {
    fn of(plan: &'a Plan) -> Self {
        let mut backends = vec![Backend::default(); MAX_BACKENDS as usize];
        for (slot, b) in &plan.backends {
            backends[*slot as usize] = *b;
        }
        Tables {
            settings: plan.settings,
            vips: plan.vips.iter().map(|v| (v.key, v)).collect(),
            echo: plan.echo.iter().map(|(k, _)| *k).collect(),
            backends,
        }
    }
}

/// The fields of a parsed packet the decision uses.
struct Parsed {
    key: FlowKey,
    /// Bytes of the IP packet per its header: what encapsulation wraps.
    l3_len: usize,
    tos: u8,
    df: bool,
    /// TCP's flags; zero otherwise.
    tcp_flags: u8,
}

impl<'a> Reference<'a> {
    /// The model of a balancer running `plan`.
    pub fn new(plan: &'a Plan) -> Self {
        Reference {
            tables: Some(Tables::of(plan)),
            previous: None,
            now: 0,
        }
    }

    /// The same model with the data plane's clock at `now`.
    pub fn at(self, now: u32) -> Self {
        Reference { now, ..self }
    }

    /// The same model published right after `previous`, with the second chance open
    /// until `until` (`Settings::second_chance_until` as the agent wrote it; 0: never).
    pub fn after(self, previous: &'a Plan, until: u32) -> Self {
        Reference {
            previous: Some((Tables::of(previous), until)),
            ..self
        }
    }

    /// The model of a balancer loaded but not configured yet.
    pub fn unconfigured() -> Self {
        Reference {
            tables: None,
            previous: None,
            now: 0,
        }
    }

    /// Runs one frame: the decision, with the connection table updated as the program
    /// updates its own.
    pub fn decide(&self, flows: &mut FlowTable, frame: &[u8]) -> Decision {
        let mut d = Decision {
            verdict: Verdict::Pass,
            reason: Reason::Forwarded,
            vip: None,
            backend: None,
            output: frame.to_vec(),
        };
        let reason = match self.balance(flows, frame, &mut d) {
            Ok(r) | Err(r) => r,
        };
        d.reason = reason;
        d.verdict = Verdict::of(reason);
        d
    }

    fn balance(
        &self,
        flows: &mut FlowTable,
        frame: &[u8],
        d: &mut Decision,
    ) -> Result<Reason, Reason> {
        let net = network(frame)?;
        // `ACTIVE`'s not-a-VIP bits: the generation's own once published, none before.
        let no_vip = self.tables.as_ref().map_or(0, |t| !t.settings.vip_filter);
        if no_vip & vip_filter_bit(&net.parsed.key.dst) != 0 {
            return Err(Reason::PassNotVip);
        }
        let icmp = if net.family() == FAMILY_V4 {
            PROTO_ICMP
        } else {
            PROTO_ICMPV6
        };
        if net.parsed.key.proto == icmp {
            return self.icmp(flows, frame, &net, d);
        }
        let pkt = transport(frame, net)?;
        let t = self.tables()?;
        let vip = t.lookup_vip(&pkt.key).ok_or(Reason::PassNotVip)?;
        d.vip = Some(vip.number);

        let hash = flow_hash(&pkt.key, t.settings.seed);
        let words = flows::key_words(&pkt.key);
        let table_hit = flows.find(&words, hash).and_then(|i| {
            let e = flows.slots[i].entry;
            let b = t.backends.get(e.backend as usize)?;
            let takes_it = b.family != 0 && b.uid == e.uid && b.flags & BACKEND_F_DOWN == 0;
            takes_it.then_some((i, e.backend, *b))
        });
        let (slot, backend, source) = match table_hit {
            Some((i, slot, b)) => {
                flows.slots[i].recent = 1;
                flows.slots[i].seen = self.now;
                (slot, b, Source::Table)
            }
            None => {
                if vip.flags & VIP_F_HAS_BACKENDS == 0 {
                    return Err(Reason::DropNoBackend);
                }
                let index = ring_index(vip, hash)?;
                let (mut slot, mut b) = ring_backend(t, vip, index, pkt.key.family)?;
                let mut source = Source::Ring;
                if pkt.key.proto == PROTO_TCP
                    && pkt.tcp_flags & TCP_SYN == 0
                    && let Some(before) = self.previous_backend(vip, index, slot, pkt.key.family)
                {
                    (slot, b) = before;
                    source = Source::PreviousRing;
                }
                flows.insert(
                    &words,
                    hash,
                    FlowEntry {
                        backend: slot,
                        uid: b.uid,
                    },
                    self.now,
                    &t.settings,
                );
                (slot, b, source)
            }
        };
        d.backend = Some(Chosen {
            slot,
            addr: addr_of(backend.addr, backend.family),
            mac: backend.mac,
            source,
        });

        d.output = if pkt.key.family == FAMILY_V4 {
            encap_v4(frame, &pkt, &backend, &t.settings, hash)?
        } else {
            encap_v6(frame, &pkt, &backend, &t.settings, hash)?
        };
        Ok(if source == Source::PreviousRing {
            Reason::ForwardedSecondChance
        } else {
            Reason::Forwarded
        })
    }

    fn tables(&self) -> Result<&Tables<'a>, Reason> {
        let t = self.tables.as_ref().ok_or(Reason::PassNoConfig)?;
        if t.settings.ring_size == 0 {
            return Err(Reason::PassNoConfig);
        }
        Ok(t)
    }

    /// The second chance: the previous generation's backend for ring entry `index`, if
    /// the window is open, it is not `current`, and the same backend (uid) still serves
    /// the VIP, not down.
    fn previous_backend(
        &self,
        vip: &PlannedVip,
        index: u32,
        current: u32,
        family: u8,
    ) -> Option<(u32, Backend)> {
        let t = self.tables.as_ref()?;
        let (prev, until) = self.previous.as_ref()?;
        if self.now >= *until {
            return None;
        }
        let before = prev.vips.get(&vip.key)?;
        if before.number != vip.number
            || before.ring.len() != vip.ring.len()
            || before.flags & VIP_F_HAS_BACKENDS == 0
        {
            return None;
        }
        let slot = *before.ring.get(index as usize)?;
        if slot == current {
            return None;
        }
        let then = prev.backends.get(slot as usize)?;
        let now = t.backends.get(slot as usize)?;
        let serves = now.family == family
            && now.uid == then.uid
            && now.vip == vip.number
            && now.flags & BACKEND_F_DOWN == 0;
        serves.then_some((slot, *now))
    }

    /// ICMP to an address that may be a VIP's: an error about a VIP's flow goes to its
    /// backend, without touching the table; an echo request is answered.
    fn icmp(
        &self,
        flows: &FlowTable,
        frame: &[u8],
        net: &Network,
        d: &mut Decision,
    ) -> Result<Reason, Reason> {
        let message = icmp_message(frame, net)?;
        let t = self.tables()?;
        let Some(key) = message else {
            let vip_key = VipKey {
                addr: net.parsed.key.dst,
                port_be: 0,
                proto: net.parsed.key.proto,
                family: net.family(),
            };
            if !t.echo.contains(&vip_key) {
                return Err(Reason::PassNotTcpUdp);
            }
            d.output = echo_reply(frame, net);
            return Ok(Reason::EchoReply);
        };
        let vip = t.lookup_vip(&key).ok_or(Reason::PassNotVip)?;
        d.vip = Some(vip.number);
        let hash = flow_hash(&key, t.settings.seed);
        let hit = flows.find(&flows::key_words(&key), hash).and_then(|i| {
            let e = flows.slots[i].entry;
            let b = t.backends.get(e.backend as usize)?;
            let takes_it = b.family != 0 && b.uid == e.uid && b.flags & BACKEND_F_DOWN == 0;
            takes_it.then_some((e.backend, *b))
        });
        let (slot, backend, source) = match hit {
            Some((slot, b)) => (slot, b, Source::Table),
            None => {
                if vip.flags & VIP_F_HAS_BACKENDS == 0 {
                    return Err(Reason::DropNoBackend);
                }
                let (slot, b) = ring_backend(t, vip, ring_index(vip, hash)?, key.family)?;
                (slot, b, Source::Ring)
            }
        };
        d.backend = Some(Chosen {
            slot,
            addr: addr_of(backend.addr, backend.family),
            mac: backend.mac,
            source,
        });
        d.output = if key.family == FAMILY_V4 {
            encap_v4(frame, &net.parsed, &backend, &t.settings, hash)?
        } else {
            encap_v6(frame, &net.parsed, &backend, &t.settings, hash)?
        };
        Ok(Reason::ForwardedIcmp)
    }
}

/// The backend of ring entry `index` of the VIP.
/// The ring entry of a flow of `hash`: the VIP's own table size is the ring's length.
fn ring_index(vip: &PlannedVip, hash: u32) -> Result<u32, Reason> {
    match vip.ring.len() as u32 {
        0 => Err(Reason::DropBadRing),
        size => Ok(hash % size),
    }
}

fn ring_backend(
    t: &Tables,
    vip: &PlannedVip,
    index: u32,
    family: u8,
) -> Result<(u32, Backend), Reason> {
    let slot = *vip.ring.get(index as usize).ok_or(Reason::DropBadRing)?;
    let b = t
        .backends
        .get(slot as usize)
        .filter(|b| b.family == family)
        .copied()
        .ok_or(Reason::DropBadRing)?;
    Ok((slot, b))
}

/// What an ICMP packet to a VIP address asks of the balancer: `Some(flow)` for an error
/// about that flow (client to VIP, as the client sends it), `None` for an echo request.
fn icmp_message(frame: &[u8], net: &Network) -> Result<Option<FlowKey>, Reason> {
    let h = frame
        .get(net.l4..net.l4 + ICMP_LEN)
        .ok_or(Reason::PassMalformed)?;
    if net.l4_len < ICMP_LEN {
        return Err(Reason::PassMalformed);
    }
    let (kind, code) = (h[0], h[1]);
    let v4 = net.family() == FAMILY_V4;
    if v4 && kind == ICMP_V4_UNREACHABLE && code == ICMP_V4_FRAG_NEEDED
        || !v4 && kind == ICMP_V6_TOO_BIG
    {
        return embedded_flow(frame, net).map(Some);
    }
    let echo = if v4 {
        ICMP_V4_ECHO_REQUEST
    } else {
        ICMP_V6_ECHO_REQUEST
    };
    if kind == echo && code == 0 {
        return Ok(None);
    }
    Err(Reason::PassNotTcpUdp)
}

/// The flow of the packet an ICMP error embeds (RFC 792: its IP header and at least 8
/// bytes after it; RFC 4443: as much as fits), which must be one the VIP sent: whole up
/// to its ports, within the frame and the error's own length.
fn embedded_flow(frame: &[u8], net: &Network) -> Result<FlowKey, Reason> {
    let bad = Reason::PassIcmpBadInner;
    let at = net.l4 + ICMP_LEN;
    let room = net.l4_len - ICMP_LEN;
    let inner = frame.get(at..).ok_or(bad)?;
    let vip = net.parsed.key.dst;
    let (family, header_len, proto, src, dst) = if net.family() == FAMILY_V4 {
        let ip = inner.get(..IPV4_MIN).ok_or(bad)?;
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let offset = be16(ip, 6) & 0x1fff;
        if ip[0] >> 4 != 4 || ihl < IPV4_MIN || offset != 0 {
            return Err(bad);
        }
        (
            FAMILY_V4,
            ihl,
            ip[9],
            words(&ip[12..16]),
            words(&ip[16..20]),
        )
    } else {
        let ip = inner.get(..IPV6_LEN).ok_or(bad)?;
        if ip[0] >> 4 != 6 {
            return Err(bad);
        }
        (
            FAMILY_V6,
            IPV6_LEN,
            ip[6],
            words(&ip[8..24]),
            words(&ip[24..40]),
        )
    };
    if header_len + 4 > room || !matches!(proto, PROTO_TCP | PROTO_UDP) || src != vip {
        return Err(bad);
    }
    let ports = inner.get(header_len..header_len + 4).ok_or(bad)?;
    Ok(FlowKey {
        src: dst,
        dst: vip,
        sport_be: u16::from_ne_bytes([ports[2], ports[3]]),
        dport_be: u16::from_ne_bytes([ports[0], ports[1]]),
        proto,
        family,
        pad: 0,
    })
}

/// The RFC 1071 sum of `data`, folded, not complemented.
fn ones_sum(data: &[u8]) -> u32 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The echo reply to an echo request, in place: Ethernet and IP addresses swapped, TTL
/// (hop limit) 64, the reply type and its checksum recomputed as the sender's updated
/// by the type's change (RFC 1624), all else as it came.
fn echo_reply(frame: &[u8], net: &Network) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&frame[0..6]);
    let ip = ETH_LEN;
    let (request, reply) = if net.family() == FAMILY_V4 {
        out[ip + 12..ip + 16].copy_from_slice(&frame[ip + 16..ip + 20]);
        out[ip + 16..ip + 20].copy_from_slice(&frame[ip + 12..ip + 16]);
        let old = [out[ip + 8], out[ip + 9]];
        out[ip + 8] = OUTER_TTL;
        let check = update_checksum(be16(&out, ip + 10), old, [out[ip + 8], out[ip + 9]]);
        out[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
        (ICMP_V4_ECHO_REQUEST, ICMP_V4_ECHO_REPLY)
    } else {
        out[ip + 8..ip + 24].copy_from_slice(&frame[ip + 24..ip + 40]);
        out[ip + 24..ip + 40].copy_from_slice(&frame[ip + 8..ip + 24]);
        out[ip + 7] = OUTER_TTL;
        (ICMP_V6_ECHO_REQUEST, ICMP_V6_ECHO_REPLY)
    };
    let l4 = net.l4;
    out[l4] = reply;
    let check = update_checksum(be16(&out, l4 + 2), [request, 0], [reply, 0]);
    out[l4 + 2..l4 + 4].copy_from_slice(&check.to_be_bytes());
    out
}

/// RFC 1624 eqn. 3: the checksum `check` after the 16-bit word `old` became `new`.
fn update_checksum(check: u16, old: [u8; 2], new: [u8; 2]) -> u16 {
    let mut bytes = Vec::with_capacity(6);
    bytes.extend_from_slice(&(!check).to_be_bytes());
    bytes.extend_from_slice(&(!u16::from_be_bytes(old)).to_be_bytes());
    bytes.extend_from_slice(&new);
    !(ones_sum(&bytes) as u16)
}

impl Tables<'_> {
    /// The exact VIP, else the all-ports VIP of the address when the generation has one.
    fn lookup_vip(&self, key: &FlowKey) -> Option<&PlannedVip> {
        let mut vk = VipKey {
            addr: key.dst,
            port_be: key.dport_be,
            proto: key.proto,
            family: key.family,
        };
        if let Some(v) = self.vips.get(&vk) {
            return Some(v);
        }
        let flag = if key.family == FAMILY_V4 {
            SETTINGS_F_PORT0_V4
        } else {
            SETTINGS_F_PORT0_V6
        };
        if self.settings.flags & flag == 0 {
            return None;
        }
        vk.port_be = 0;
        self.vips.get(&vk).copied()
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Network-order bytes as the words the data plane compares and hashes.
fn words(bytes: &[u8]) -> Addr {
    let mut a = [0u32; 4];
    for (w, c) in a.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    a
}

fn word_bytes(a: Addr) -> [u8; 16] {
    let mut o = [0u8; 16];
    for (c, w) in o.chunks_exact_mut(4).zip(a) {
        c.copy_from_slice(&w.to_ne_bytes());
    }
    o
}

fn addr_of(a: Addr, family: u8) -> IpAddr {
    let b = word_bytes(a);
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

/// Ethernet and the IP header: what the program checks before its not-a-VIP filter.
/// The source and the ports (`transport`) come after it.
fn network(frame: &[u8]) -> Result<Network, Reason> {
    if frame.len() < ETH_LEN {
        return Err(Reason::PassMalformed);
    }
    match be16(frame, 12) {
        ETHERTYPE_IPV4 => network_v4(frame),
        ETHERTYPE_IPV6 => network_v6(frame),
        _ => Err(Reason::PassNotIp),
    }
}

/// A frame `network` accepted, with the ports still unread.
struct Network {
    parsed: Parsed,
    l4: usize,
    l4_len: usize,
}

impl Network {
    fn family(&self) -> u8 {
        self.parsed.key.family
    }
}

fn network_v4(frame: &[u8]) -> Result<Network, Reason> {
    let ip = frame
        .get(ETH_LEN..ETH_LEN + IPV4_MIN)
        .ok_or(Reason::PassMalformed)?;
    let version = ip[0] >> 4;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2));
    if version != 4 || ihl < IPV4_MIN || total < ihl || ETH_LEN + total > frame.len() {
        return Err(Reason::PassMalformed);
    }
    let frags = be16(ip, 6);
    if frags & IPV4_MF_OFFSET != 0 {
        return Err(Reason::PassFragment);
    }
    let proto = ip[9];
    Ok(Network {
        parsed: Parsed {
            key: FlowKey {
                src: words(&ip[12..16]),
                dst: words(&ip[16..20]),
                sport_be: 0,
                dport_be: 0,
                proto,
                family: FAMILY_V4,
                pad: 0,
            },
            l3_len: total,
            tos: ip[1],
            df: frags & IPV4_DF != 0,
            tcp_flags: 0,
        },
        l4: ETH_LEN + ihl,
        l4_len: total - ihl,
    })
}

fn network_v6(frame: &[u8]) -> Result<Network, Reason> {
    let ip = frame
        .get(ETH_LEN..ETH_LEN + IPV6_LEN)
        .ok_or(Reason::PassMalformed)?;
    let payload = usize::from(be16(ip, 4));
    if ip[0] >> 4 != 6 || ETH_LEN + IPV6_LEN + payload > frame.len() {
        return Err(Reason::PassMalformed);
    }
    let end = ETH_LEN + IPV6_LEN + payload;
    let (next, l4) = extension_headers(frame, ip[6], end)?;
    if IPV6_UNWALKED.contains(&next) {
        return Err(Reason::PassExtensionHeader);
    }
    Ok(Network {
        parsed: Parsed {
            key: FlowKey {
                src: words(&ip[8..24]),
                dst: words(&ip[24..40]),
                sport_be: 0,
                dport_be: 0,
                proto: next,
                family: FAMILY_V6,
                pad: 0,
            },
            l3_len: IPV6_LEN + payload,
            tos: (ip[0] << 4) | (ip[1] >> 4),
            df: false,
            tcp_flags: 0,
        },
        l4,
        l4_len: end - l4,
    })
}

/// Walks up to `IPV6_EXT_MAX` extension headers from `next`, within the payload ending at
/// `end`: the header after them and its offset. Each is `[next, length in 8 bytes - 1]`
/// but the fragment header (8 bytes), whose offset must be 0 (the first fragment has the
/// ports, the others none).
fn extension_headers(frame: &[u8], mut next: u8, end: usize) -> Result<(u8, usize), Reason> {
    let mut at = ETH_LEN + IPV6_LEN;
    for _ in 0..IPV6_EXT_MAX {
        if !IPV6_WALKED.contains(&next) {
            return Ok((next, at));
        }
        let h = frame.get(at..at + 4).ok_or(Reason::PassMalformed)?;
        let len = if next == IPV6_FRAGMENT {
            if be16(h, 2) >> 3 != 0 {
                return Err(Reason::PassFragment);
            }
            8
        } else {
            (usize::from(h[1]) + 1) * 8
        };
        if at + len > end {
            return Err(Reason::PassMalformed);
        }
        next = h[0];
        at += len;
    }
    if IPV6_WALKED.contains(&next) {
        return Err(Reason::PassExtensionHeader);
    }
    Ok((next, at))
}

/// The packet with its TCP or UDP ports.
fn transport(frame: &[u8], net: Network) -> Result<Parsed, Reason> {
    let mut p = net.parsed;
    (p.key.sport_be, p.key.dport_be) = ports(frame, p.key.proto, net.l4, net.l4_len)?;
    if p.key.proto == PROTO_TCP {
        p.tcp_flags = frame[net.l4 + 13];
    }
    Ok(p)
}

/// The ports, as the native reading of their network-order bytes (the flow key's form).
/// The header must be in the frame, and fit in the `l4_len` bytes the IP header leaves.
fn ports(frame: &[u8], proto: u8, l4: usize, l4_len: usize) -> Result<(u16, u16), Reason> {
    let header_len = match proto {
        PROTO_TCP => TCP_MIN,
        PROTO_UDP => UDP_LEN,
        _ => return Err(Reason::PassNotTcpUdp),
    };
    let h = frame
        .get(l4..l4 + header_len)
        .ok_or(Reason::PassMalformed)?;
    let needed = if proto == PROTO_TCP {
        let doff = usize::from(h[12] >> 4) * 4;
        if doff < TCP_MIN {
            return Err(Reason::PassMalformed);
        }
        doff
    } else {
        UDP_LEN
    };
    if needed > l4_len {
        return Err(Reason::PassMalformed);
    }
    Ok((
        u16::from_ne_bytes([h[0], h[1]]),
        u16::from_ne_bytes([h[2], h[3]]),
    ))
}

/// The outer Ethernet header: to the backend's next hop, from the address the frame came
/// to (the balancer's own), same EtherType.
fn outer_eth(frame: &[u8], backend: &Backend) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + IP6IP6_OVERHEAD as usize);
    out.extend_from_slice(&backend.mac);
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&frame[12..14]);
    out
}

/// The RFC 791 header checksum.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4-in-IPv4 (RFC 2003): the frame's IP packet and anything after it in the frame,
/// behind a new IPv4 header.
fn encap_v4(
    frame: &[u8],
    pkt: &Parsed,
    backend: &Backend,
    s: &Settings,
    hash: u32,
) -> Result<Vec<u8>, Reason> {
    let total = pkt.l3_len + IPIP_OVERHEAD as usize;
    if total > s.mtu as usize {
        return Err(Reason::DropTooBig);
    }
    let src = (s.src_v4 | (hash & s.src_v4_hostmask)).to_ne_bytes();
    let dst = backend.addr[0].to_ne_bytes();
    let flags: u16 = if pkt.df { IPV4_DF } else { 0 };
    let mut ip = [0u8; IPV4_MIN];
    ip[0] = 0x45;
    ip[1] = pkt.tos;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    // Identification 0: with DF it is unused (RFC 6864); without, the outer header is not
    // fragmented by lbx either way.
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    ip[8] = OUTER_TTL;
    ip[9] = PROTO_IPIP;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let check = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let mut out = outer_eth(frame, backend);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&frame[ETH_LEN..]);
    Ok(out)
}

/// IPv6-in-IPv6 (RFC 2473), with the flow label from the flow (RFC 6438).
fn encap_v6(
    frame: &[u8],
    pkt: &Parsed,
    backend: &Backend,
    s: &Settings,
    hash: u32,
) -> Result<Vec<u8>, Reason> {
    if pkt.l3_len + IP6IP6_OVERHEAD as usize > s.mtu as usize {
        return Err(Reason::DropTooBig);
    }
    let mut src = [0u32; 4];
    for (i, w) in src.iter_mut().enumerate() {
        *w = s.src_v6[i] | (hash & s.src_v6_hostmask[i]);
    }
    let label = hash & 0x000f_ffff;
    let first = (6u32 << 28) | (u32::from(pkt.tos) << 20) | label;
    let mut ip = [0u8; IPV6_LEN];
    ip[0..4].copy_from_slice(&first.to_be_bytes());
    ip[4..6].copy_from_slice(&(pkt.l3_len as u16).to_be_bytes());
    ip[6] = PROTO_IPV6;
    ip[7] = OUTER_TTL;
    ip[8..24].copy_from_slice(&word_bytes(src));
    ip[24..40].copy_from_slice(&word_bytes(backend.addr));
    let mut out = outer_eth(frame, backend);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&frame[ETH_LEN..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use lbx::{
        config::Config,
        dataplane::{
            plan::{self, FlowIdle, Overrides},
            slots::Slots,
        },
    };

    const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    /// In TOML, the operator's form, so new configuration fields do not break it.
    fn config() -> Config {
        Config::from_toml(
            r#"
            table_size = 101
            mtu = 1500
            [[vip]]
            address = "192.0.2.10"
            port = 80
            protocol = "tcp"
            backend = [
                { address = "10.1.0.11", mac = "02:00:00:00:01:11" },
                { address = "10.1.0.12", mac = "02:00:00:00:01:12" },
            ]
            [[vip]]
            address = "2001:db8::10"
            port = "*"
            protocol = "udp"
            backend = [{ address = "2001:db8:1::11", mac = "02:00:00:00:01:21" }]
            [[vip]]
            address = "192.0.2.20"
            port = 53
            protocol = "udp"
            backend = [{ address = "10.1.0.13", mac = "02:00:00:00:01:13", drain = true }]
            "#,
        )
        .expect("valid configuration")
    }

    fn plan_of(c: &Config) -> Plan {
        let (slots, _) = Slots::default().assign(c);
        plan::build(
            c,
            &slots,
            &BTreeMap::new(),
            c.mtu.unwrap(),
            FlowIdle::default(),
            &Overrides::new(),
            None,
        )
    }

    /// Ethernet + IPv4 (20 bytes) + TCP (20 bytes) or UDP (8 bytes) + payload.
    fn v4(
        proto: u8,
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        payload: usize,
    ) -> Vec<u8> {
        let l4 = if proto == PROTO_TCP { 20 } else { 8 };
        let total = 20 + l4 + payload;
        let mut f = Vec::new();
        f.extend_from_slice(&LB_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[1] = 0x28;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 63;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut l4h = vec![0u8; l4];
        l4h[0..2].copy_from_slice(&sport.to_be_bytes());
        l4h[2..4].copy_from_slice(&dport.to_be_bytes());
        if proto == PROTO_TCP {
            l4h[12] = 5 << 4;
        } else {
            l4h[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        }
        f.extend_from_slice(&l4h);
        f.extend(std::iter::repeat_n(0xab, payload));
        f
    }

    #[test]
    fn forwards_a_vip_packet_in_ipip_to_a_ring_backend() {
        let c = config();
        let p = plan_of(&c);
        let r = Reference::new(&p);
        let mut flows = FlowTable::new(1024);
        let frame = v4(PROTO_TCP, [198, 51, 100, 7], [192, 0, 2, 10], 40000, 80, 10);
        let d = r.decide(&mut flows, &frame);
        assert_eq!((d.verdict, d.reason), (Verdict::Tx, Reason::Forwarded));
        let b = d.backend.expect("a backend");
        assert_eq!(b.source, Source::Ring);
        assert!(d.new_flow());
        assert_eq!(flows.len(), 1);
        let o = &d.output;
        assert_eq!(o.len(), frame.len() + 20);
        assert_eq!(&o[0..6], &b.mac);
        assert_eq!(&o[6..12], &LB_MAC);
        assert_eq!(&o[12..14], &[0x08, 0x00]);
        assert_eq!(o[14], 0x45);
        assert_eq!(o[15], 0x28, "TOS carried over");
        assert_eq!(be16(o, 16) as usize, frame.len() - 14 + 20);
        assert_eq!(o[20], 0x40, "DF carried over");
        assert_eq!((o[22], o[23]), (OUTER_TTL, PROTO_IPIP));
        assert_eq!(ipv4_checksum(&o[14..34]), 0, "outer checksum verifies");
        assert_eq!(&o[14 + 12..14 + 14], &[172, 16], "source within the prefix");
        let IpAddr::V4(dst) = b.addr else {
            panic!("IPv4 backend")
        };
        assert_eq!(&o[30..34], &dst.octets());
        assert_eq!(&o[34..], &frame[14..]);

        // The same flow again hits the table, and goes to the same backend.
        let again = r.decide(&mut flows, &frame);
        assert_eq!(again.backend.unwrap().source, Source::Table);
        assert_eq!(again.backend.unwrap().slot, b.slot);
        assert_eq!(again.output, d.output);
        assert!(!again.new_flow());
    }

    #[test]
    fn port0_vip_takes_every_port_and_ipv6_gets_a_flow_label() {
        let c = config();
        let p = plan_of(&c);
        let r = Reference::new(&p);
        let mut f = Vec::new();
        f.extend_from_slice(&LB_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let mut ip = [0u8; 40];
        ip[0] = 0x6a;
        ip[1] = 0x50;
        ip[4..6].copy_from_slice(&8u16.to_be_bytes());
        ip[6] = PROTO_UDP;
        ip[7] = 60;
        ip[8..24].copy_from_slice(&"2001:db8:9::1".parse::<Ipv6Addr>().unwrap().octets());
        ip[24..40].copy_from_slice(&"2001:db8::10".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x30, 0x39, 0x1f, 0x90, 0, 8, 0, 0]);
        let d = r.decide(&mut FlowTable::new(1024), &f);
        assert_eq!(d.reason, Reason::Forwarded);
        let o = &d.output;
        assert_eq!(&o[12..14], &[0x86, 0xdd]);
        assert_eq!(o[14] >> 4, 6);
        let tc = (o[14] << 4) | (o[15] >> 4);
        assert_eq!(tc, 0xa5, "traffic class carried over");
        assert_eq!(be16(o, 18), 48, "payload: the whole inner packet");
        assert_eq!((o[20], o[21]), (PROTO_IPV6, OUTER_TTL));
        assert_eq!(
            &o[22..30],
            &[1, 0, 0, 0, 0, 0, 0, 0],
            "source within 100::/64"
        );
        assert_eq!(&o[54..], &f[14..]);
    }

    #[test]
    fn reasons_for_what_is_not_served() {
        let c = config();
        let p = plan_of(&c);
        let r = Reference::new(&p);
        let mut flows = FlowTable::new(1024);
        let tcp = v4(PROTO_TCP, [198, 51, 100, 7], [192, 0, 2, 10], 40000, 80, 0);
        let reason = |f: &[u8], flows: &mut FlowTable| r.decide(flows, f).reason;

        assert_eq!(reason(&tcp[..13], &mut flows), Reason::PassMalformed);
        for cut in 14..tcp.len() {
            assert_eq!(
                reason(&tcp[..cut], &mut flows),
                Reason::PassMalformed,
                "cut {cut}"
            );
        }
        let mut arp = tcp.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(reason(&arp, &mut flows), Reason::PassNotIp);
        let mut frag = tcp.clone();
        frag[20] |= 0x20;
        assert_eq!(reason(&frag, &mut flows), Reason::PassFragment);
        let mut icmp = tcp.clone();
        icmp[23] = 1;
        assert_eq!(reason(&icmp, &mut flows), Reason::PassNotTcpUdp);
        let other = v4(PROTO_TCP, [198, 51, 100, 7], [192, 0, 2, 10], 40000, 81, 0);
        assert_eq!(reason(&other, &mut flows), Reason::PassNotVip);
        let udp_on_tcp_vip = v4(PROTO_UDP, [198, 51, 100, 7], [192, 0, 2, 10], 40000, 80, 0);
        assert_eq!(reason(&udp_on_tcp_vip, &mut flows), Reason::PassNotVip);
        let mut short_doff = tcp.clone();
        short_doff[14 + 20 + 12] = 4 << 4;
        assert_eq!(reason(&short_doff, &mut flows), Reason::PassMalformed);
        let drained = v4(PROTO_UDP, [198, 51, 100, 7], [192, 0, 2, 20], 40000, 53, 0);
        let d = r.decide(&mut flows, &drained);
        assert_eq!(
            (d.verdict, d.reason),
            (Verdict::Drop, Reason::DropNoBackend)
        );
        assert_eq!(d.output, drained);
        assert!(flows.is_empty(), "nothing above inserts a flow");

        let big = v4(
            PROTO_TCP,
            [198, 51, 100, 7],
            [192, 0, 2, 10],
            40001,
            80,
            1500 - 40 - 19,
        );
        let d = r.decide(&mut flows, &big);
        assert_eq!(d.reason, Reason::DropTooBig);
        assert_eq!(d.output, big);
        assert_eq!(
            flows.len(),
            1,
            "the program inserts the flow before the MTU check"
        );
        let fits = v4(
            PROTO_TCP,
            [198, 51, 100, 7],
            [192, 0, 2, 10],
            40001,
            80,
            1500 - 40 - 20,
        );
        assert_eq!(reason(&fits, &mut flows), Reason::Forwarded);

        let none = Reference::unconfigured();
        assert_eq!(none.decide(&mut flows, &tcp).reason, Reason::PassNoConfig);
        assert_eq!(none.decide(&mut flows, &arp).reason, Reason::PassNotIp);
    }

    #[test]
    fn a_removed_backend_loses_its_flows_and_a_drained_one_keeps_them() {
        let mut c = config();
        let p = plan_of(&c);
        let mut flows = FlowTable::new(1024);
        let mut to_b1 = None;
        for sport in 1000..1100 {
            let f = v4(PROTO_TCP, [198, 51, 100, 7], [192, 0, 2, 10], sport, 80, 0);
            let d = Reference::new(&p).decide(&mut flows, &f);
            if d.backend.unwrap().addr == "10.1.0.11".parse::<IpAddr>().unwrap() {
                to_b1 = Some(f);
                break;
            }
        }
        let f = to_b1.expect("some flow goes to 10.1.0.11");

        c.vips[0].backends[0].drain = true;
        let (slots, _) = Slots::default().assign(&config());
        let (slots, _) = slots.assign(&c);
        let drained = plan::build(
            &c,
            &slots,
            &BTreeMap::new(),
            1500,
            FlowIdle::default(),
            &Overrides::new(),
            None,
        );
        let d = Reference::new(&drained).decide(&mut flows, &f);
        assert_eq!(d.backend.unwrap().source, Source::Table);
        assert_eq!(
            d.backend.unwrap().addr,
            "10.1.0.11".parse::<IpAddr>().unwrap()
        );

        c.vips[0].backends.remove(0);
        let (slots, _) = slots.assign(&c);
        let removed = plan::build(
            &c,
            &slots,
            &BTreeMap::new(),
            1500,
            FlowIdle::default(),
            &Overrides::new(),
            None,
        );
        let d = Reference::new(&removed).decide(&mut flows, &f);
        assert_eq!(d.backend.unwrap().source, Source::Ring);
        assert_eq!(
            d.backend.unwrap().addr,
            "10.1.0.12".parse::<IpAddr>().unwrap()
        );
    }
}
