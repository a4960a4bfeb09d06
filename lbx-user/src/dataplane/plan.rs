//! Turns a validated configuration into the data plane's tables: VIP entries, backend
//! entries and Maglev rings, all numbered by `Slots`.

use std::{collections::BTreeMap, net::IpAddr};

use lbx_common::{
    BACKEND_F_DOWN, Backend, FAMILY_V4, SETTINGS_F_PORT0_V4, SETTINGS_F_PORT0_V6, Settings,
    VIP_F_HAS_BACKENDS, VipKey, vips,
};

use super::{rings::Ring, slots::Slots};
use crate::{
    addr,
    config::{Config, MacAddr, VipId},
    maglev::{self, MaglevBackend},
};

pub struct PlannedVip {
    pub id: VipId,
    /// The VIP's number in `Slots` (its counters and ring position).
    pub number: u32,
    pub key: VipKey,
    /// Its slot in the generation's VIP table (under `Settings::vip_salt`).
    pub table_slot: usize,
    pub flags: u16,
    /// Backend slots, one per ring position (the VIP's table size of them); empty when
    /// no backend takes new flows.
    pub ring: Ring,
    /// What the ring was built from: a VIP whose inputs did not change keeps its ring.
    pub ring_inputs: RingInputs,
}

/// Everything a VIP's Maglev ring depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RingInputs {
    pub table_size: u32,
    pub seed: u32,
    /// (backend slot, weight in the ring, identity), in the configuration's order.
    pub backends: Vec<(u32, u32, IpAddr)>,
}

impl RingInputs {
    fn build(&self) -> Ring {
        if self.backends.is_empty() {
            return Vec::new().into();
        }
        let identities: Vec<Vec<u8>> = self.backends.iter().map(|b| identity(b.2)).collect();
        let mb: Vec<MaglevBackend<'_>> = identities
            .iter()
            .zip(&self.backends)
            .map(|(ident, b)| MaglevBackend {
                identity: ident,
                weight: b.1,
            })
            .collect();
        maglev::build(&mb, self.table_size, self.seed)
            .expect("validated config builds a table")
            .into_iter()
            .map(|i| self.backends[i as usize].0)
            .collect()
    }
}

/// One whole configuration, ready to publish.
pub struct Plan {
    pub settings: Settings,
    pub vips: Vec<PlannedVip>,
    /// The echo entries of VIP addresses (`VIP_F_ECHO`) and their VIP table slots.
    pub echo: Vec<(VipKey, usize)>,
    pub backends: Vec<(u32, Backend)>,
    /// Seconds after its publication during which the previous generation's rings give
    /// a second chance (`Settings::second_chance_until`); zero: none.
    pub second_chance_s: u32,
}

/// What the agent decides for a backend beyond its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    /// Weight chosen by the agent (adaptive), replacing the configured one.
    pub weight: Option<u32>,
    /// Share of its (configured or adaptive) weight the backend gets now, in thousandths (a slow start
    /// ramps it up); 0 keeps it out of the ring.
    pub permille: u32,
    /// Failed its health checks: its established flows move too.
    pub down: bool,
}

/// A backend's whole weight, in `Effective::permille`.
pub const FULL: u32 = 1000;

/// The weight in the ring of a backend configured with `configured`: the agent's weight, if
/// any, times the slow start's share; the configured weight without an override.
pub fn effective_weight(effective: Option<&Effective>, configured: u32) -> f64 {
    effective.map_or(f64::from(configured), |e| {
        f64::from(e.weight.unwrap_or(configured)) * f64::from(e.permille) / f64::from(FULL)
    })
}

/// How the data plane treats the connection table: how long a flow may go unseen and
/// still count as active, in seconds (zero: for ever), after which its slot is free for
/// a new flow; and how long after a publication a TCP flow the table lost may take the
/// previous generation's backend (zero: never).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowIdle {
    pub tcp_s: u16,
    pub udp_s: u16,
    pub second_chance_s: u32,
}

/// Default `--second-chance-s`.
pub const DEFAULT_SECOND_CHANCE_S: u32 = 30;

impl Default for FlowIdle {
    fn default() -> Self {
        FlowIdle {
            tcp_s: lbx_common::DEFAULT_TCP_IDLE_S,
            udp_s: lbx_common::DEFAULT_UDP_IDLE_S,
            second_chance_s: DEFAULT_SECOND_CHANCE_S,
        }
    }
}

/// Effective weights and health by (VIP, backend); a backend not in it runs as configured.
pub type Overrides = BTreeMap<(VipId, IpAddr), Effective>;

/// `macs` must hold a next-hop MAC for every backend without one in the config. A VIP
/// whose ring inputs are those it had in `previous` keeps that plan's ring; the others
/// are built, on every core.
pub fn build(
    config: &Config,
    slots: &Slots,
    macs: &BTreeMap<IpAddr, MacAddr>,
    mtu: u32,
    idle: FlowIdle,
    overrides: &Overrides,
    previous: Option<&Plan>,
) -> Plan {
    let (src_v4, mask_v4) =
        addr::prefix_words(config.encap.source_v4.addr, config.encap.source_v4.len);
    let (src_v6, mask_v6) =
        addr::prefix_words(config.encap.source_v6.addr, config.encap.source_v6.len);
    let mut settings = Settings {
        seed: config.seed,
        ring_size: config.table_size,
        mtu,
        flags: 0,
        vip_filter: 0,
        src_v4: src_v4[0],
        src_v4_hostmask: mask_v4[0],
        src_v6,
        src_v6_hostmask: mask_v6,
        generation: 0,
        vip_salt: 0,
        tcp_idle_s: idle.tcp_s,
        udp_idle_s: idle.udp_s,
        second_chance_until: 0,
        pad: 0,
    };
    let mut vips = Vec::new();
    let mut backends = Vec::new();
    let before: BTreeMap<VipId, &PlannedVip> = previous
        .map(|p| p.vips.iter().map(|v| (v.id, v)).collect())
        .unwrap_or_default();
    for vip in &config.vips {
        let id = vip.id();
        let family = addr::family(vip.address);
        settings.vip_filter |= lbx_common::vip_filter_bit(&addr::to_words(vip.address));
        if vip.port == 0 {
            settings.flags |= if family == FAMILY_V4 {
                SETTINGS_F_PORT0_V4
            } else {
                SETTINGS_F_PORT0_V6
            };
        }
        let mut inputs = RingInputs {
            table_size: vip.ring_size(config.table_size),
            seed: config.seed,
            backends: Vec::new(),
        };
        for b in &vip.backends {
            let s = slots.backends[&(id, b.address)];
            let mac = b
                .mac
                .or_else(|| macs.get(&b.address).copied())
                .expect("MAC resolved");
            let eff = overrides
                .get(&(id, b.address))
                .copied()
                .unwrap_or(Effective {
                    weight: None,
                    permille: FULL,
                    down: false,
                });
            backends.push((
                s.slot,
                Backend {
                    addr: addr::to_words(b.address),
                    mac: mac.0,
                    family: addr::family(b.address),
                    flags: if eff.down { BACKEND_F_DOWN } else { 0 },
                    uid: s.uid,
                    vip: slots.vips[&id],
                },
            ));
            if !b.drain && !eff.down && eff.permille > 0 {
                // Maglev needs only ratios: scaling every weight by 1000 lets a weight of
                // 1 ramp up as finely as any other.
                inputs.backends.push((
                    s.slot,
                    eff.weight.unwrap_or(b.weight) * eff.permille,
                    b.address,
                ));
            }
        }
        let kept = before
            .get(&id)
            .filter(|v| v.ring_inputs == inputs)
            .map(|v| v.ring.clone());
        vips.push(PlannedVip {
            id,
            number: slots.vips[&id],
            key: id.key(),
            table_slot: 0,
            flags: if inputs.backends.is_empty() {
                0
            } else {
                VIP_F_HAS_BACKENDS
            },
            ring: kept.unwrap_or_else(|| Vec::new().into()),
            ring_inputs: inputs,
        });
    }
    build_rings(&mut vips);
    // The VIPs first, then the echo entries (`Config::table_keys`).
    let keys = config.table_keys();
    let mut table_slots = vec![0; keys.len()];
    settings.vip_salt =
        vips::layout(&keys, &mut table_slots).expect("validated: the VIPs fit the VIP table");
    for (v, s) in vips.iter_mut().zip(&table_slots) {
        v.table_slot = *s;
    }
    let echo = keys[vips.len()..]
        .iter()
        .copied()
        .zip(table_slots[vips.len()..].iter().copied())
        .collect();
    Plan {
        settings,
        vips,
        echo,
        backends,
        second_chance_s: idle.second_chance_s,
    }
}

/// Builds the rings `build` did not keep, spread over the cores: at a thousand VIPs
/// the Maglev builds are most of a publication's time.
fn build_rings(vips: &mut [PlannedVip]) {
    let todo: Vec<&mut PlannedVip> = vips
        .iter_mut()
        .filter(|v| v.ring.is_empty() && !v.ring_inputs.backends.is_empty())
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(todo.len());
    if threads <= 1 {
        for v in todo {
            v.ring = v.ring_inputs.build();
        }
        return;
    }
    let per = todo.len().div_ceil(threads);
    let mut todo = todo;
    std::thread::scope(|scope| {
        for chunk in todo.chunks_mut(per) {
            scope.spawn(move || {
                for v in chunk {
                    v.ring = v.ring_inputs.build();
                }
            });
        }
    });
}

/// What Maglev hashes for a backend: its address, so every node agrees whatever order
/// the backends were added in.
fn identity(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lbx_common::{MAX_VIPS, VIP_TABLE_SLOTS, VipEntry};

    use super::*;
    use crate::config::{Protocol, VipId};

    /// `MAX_VIPS` VIPs on two addresses, each found in the table the publisher writes.
    #[test]
    fn every_vip_is_found_in_its_generation_table() {
        let mut c = Config::default();
        for i in 0..MAX_VIPS {
            let address = if i % 2 == 0 {
                "192.0.2.1"
            } else {
                "2001:db8::1"
            };
            c.add_vip(VipId {
                address: address.parse().unwrap(),
                port: i as u16,
                protocol: if i % 3 == 0 {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
            })
            .unwrap();
        }
        c.validate().unwrap();
        let (slots, _) = Slots::default().assign(&c);
        let p = build(
            &c,
            &slots,
            &BTreeMap::new(),
            1500,
            FlowIdle::default(),
            &Overrides::new(),
            None,
        );
        let mut table = [VipEntry::default(); VIP_TABLE_SLOTS];
        let mut used = std::collections::BTreeSet::new();
        for v in &p.vips {
            assert!(used.insert(v.table_slot), "two VIPs in one slot");
            table[v.table_slot] = VipEntry {
                key: v.key,
                id: v.number as u16,
                flags: v.flags,
                ring_base: 0,
                ring_size: 0,
            };
        }
        for v in &p.vips {
            let found = vips::find(&table, &v.key, p.settings.vip_salt);
            assert_eq!(found.map(|e| u32::from(e.id)), Some(v.number), "{:?}", v.id);
        }
    }
}
