//! How two plans' Maglev rings differ, by backend address: the entries each backend has
//! before and after, the entries it gains and loses, and the share of entries whose
//! backend changes, which is the share of a VIP's flows that move once they lose their
//! connection-table entry.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use super::{plan::Plan, slots::Slots};
use crate::config::VipId;

/// One VIP's ring, before and after.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VipMovement {
    pub vip: VipId,
    /// Whether the VIP is in both plans, or only in the new one or the old one.
    pub presence: Presence,
    /// Ring entries before and after: the VIP's table size, or 0 while no backend takes
    /// new flows (or the VIP is not there).
    pub entries_before: usize,
    pub entries_after: usize,
    /// Entries whose backend changes, counted in the old ring (an estimate when the table
    /// size changes, see [`compare`]).
    pub moved: usize,
    /// `moved` out of the old ring's entries: the share of the VIP's flows that go to
    /// another backend if they lose their connection-table entry. 0 for a new VIP, 1 for
    /// one removed or left without a backend.
    pub moved_share: f64,
    /// Every backend in either ring, by address.
    pub backends: Vec<BackendMovement>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Kept,
    Added,
    Removed,
}

/// One backend's entries in a VIP's ring, before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendMovement {
    pub address: IpAddr,
    pub before: usize,
    pub after: usize,
    /// Entries it holds after that another backend (or none) held before.
    pub gained: usize,
    /// Entries it held before that another backend (or none) holds after.
    pub lost: usize,
}

/// The backend address of each ring entry of each VIP in `plan`.
fn rings_by_address(plan: &Plan, slots: &Slots) -> BTreeMap<VipId, Vec<IpAddr>> {
    let mut address: BTreeMap<(VipId, u32), IpAddr> = BTreeMap::new();
    for ((vip, addr), s) in &slots.backends {
        address.insert((*vip, s.slot), *addr);
    }
    plan.vips
        .iter()
        .map(|v| {
            let ring = v.ring.iter().map(|slot| address[&(v.id, *slot)]).collect();
            (v.id, ring)
        })
        .collect()
}

/// Compares every VIP's ring in `old` (numbered by `old_slots`) with its ring in `new`
/// (numbered by `new_slots`), in `new`'s VIP order, then the VIPs only `old` has.
///
/// Entries are compared by backend address, not slot, so a backend that is removed and
/// comes back under another slot counts as the same. Where the table size is the same,
/// entry `i` of one ring is compared with entry `i` of the other: exact. Where it changes,
/// a flow's entry in one ring says nothing of its entry in the other (a hash modulo two
/// different primes), so what moves is the expectation over flows: a flow stays with
/// probability `Σ share_before(b) × share_after(b)`, and a backend's lost entries are
/// its entries before times the chance its flows find another backend after.
pub fn compare(old: &Plan, old_slots: &Slots, new: &Plan, new_slots: &Slots) -> Vec<VipMovement> {
    let before = rings_by_address(old, old_slots);
    let after = rings_by_address(new, new_slots);
    let empty = Vec::new();
    let mut out = Vec::new();
    for v in &new.vips {
        let (presence, old_ring) = match before.get(&v.id) {
            Some(r) => (Presence::Kept, r),
            None => (Presence::Added, &empty),
        };
        out.push(one(v.id, presence, old_ring, &after[&v.id]));
    }
    for v in old.vips.iter().filter(|v| !after.contains_key(&v.id)) {
        out.push(one(v.id, Presence::Removed, &before[&v.id], &empty));
    }
    out
}

fn one(vip: VipId, presence: Presence, old: &[IpAddr], new: &[IpAddr]) -> VipMovement {
    let count = |ring: &[IpAddr]| {
        let mut n: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for a in ring {
            *n.entry(*a).or_default() += 1;
        }
        n
    };
    let (was, is) = (count(old), count(new));
    let mut backends: BTreeMap<IpAddr, BackendMovement> = was
        .keys()
        .chain(is.keys())
        .map(|a| {
            let m = BackendMovement {
                address: *a,
                before: was.get(a).copied().unwrap_or(0),
                after: is.get(a).copied().unwrap_or(0),
                gained: 0,
                lost: 0,
            };
            (*a, m)
        })
        .collect();
    let moved = if old.is_empty() || new.is_empty() {
        // No ring on one side: every entry of the other is someone's (or no one's) anew.
        for m in backends.values_mut() {
            (m.gained, m.lost) = (m.after, m.before);
        }
        old.len()
    } else if old.len() == new.len() {
        let mut moved = 0;
        for (o, n) in old.iter().zip(new) {
            if o != n {
                moved += 1;
                backends.get_mut(o).expect("counted").lost += 1;
                backends.get_mut(n).expect("counted").gained += 1;
            }
        }
        moved
    } else {
        let share = |n: usize, ring: &[IpAddr]| n as f64 / ring.len() as f64;
        let mut stays = 0.0;
        for m in backends.values_mut() {
            let (p_old, p_new) = (share(m.before, old), share(m.after, new));
            stays += p_old * p_new;
            m.lost = (m.before as f64 * (1.0 - p_new)).round() as usize;
            m.gained = (m.after as f64 * (1.0 - p_old)).round() as usize;
        }
        ((1.0 - stays) * old.len() as f64).round() as usize
    };
    let moved_share = match presence {
        Presence::Removed => 1.0,
        _ if old.is_empty() => 0.0,
        _ => moved as f64 / old.len() as f64,
    };
    VipMovement {
        vip,
        presence,
        entries_before: old.len(),
        entries_after: new.len(),
        moved,
        moved_share,
        backends: backends.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        config::{BackendConfig, Config, MacAddr, Protocol},
        dataplane::plan::{self, FlowIdle, Overrides},
    };

    fn vip() -> VipId {
        VipId::parse("10.0.0.1:80", Protocol::Tcp).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn config(backends: &[(&str, u32)], table_size: u32) -> Config {
        let mut c = Config {
            table_size,
            ..Config::default()
        };
        c.add_vip(vip()).unwrap();
        for (a, w) in backends {
            c.add_backend(
                vip(),
                BackendConfig {
                    weight: *w,
                    mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
                    ..BackendConfig::new(ip(a))
                },
            )
            .unwrap();
        }
        c.validate().unwrap();
        c
    }

    /// Plans `c` after `prev` as the agent does: slots assigned from the previous ones.
    fn planned(c: &Config, prev: &Slots) -> (Plan, Slots) {
        let (slots, _) = prev.assign(c);
        let p = plan::build(
            c,
            &slots,
            &BTreeMap::new(),
            1500,
            FlowIdle::default(),
            &Overrides::new(),
            None,
        );
        (p, slots)
    }

    fn backend<'a>(m: &'a VipMovement, a: &str) -> &'a BackendMovement {
        m.backends
            .iter()
            .find(|b| b.address == ip(a))
            .unwrap_or_else(|| panic!("no {a} in {m:?}"))
    }

    #[test]
    fn the_same_plan_moves_nothing() {
        let c = config(&[("10.1.0.1", 1), ("10.1.0.2", 1)], 1009);
        let (p, s) = planned(&c, &Slots::default());
        let m = compare(&p, &s, &p, &s);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].moved, m[0].moved_share), (0, 0.0));
        assert_eq!(m[0].presence, Presence::Kept);
        for b in &m[0].backends {
            assert_eq!((b.before, b.gained, b.lost), (b.after, 0, 0), "{b:?}");
        }
    }

    /// Counted against the rings themselves, entry by entry: what a weight change and an
    /// added backend move, and that gains and losses balance.
    #[test]
    fn moved_entries_are_those_whose_backend_changes() {
        let old = config(&[("10.1.0.1", 1), ("10.1.0.2", 1)], 1009);
        let new = config(&[("10.1.0.1", 3), ("10.1.0.2", 1), ("10.1.0.3", 2)], 1009);
        let (p1, s1) = planned(&old, &Slots::default());
        let (p2, s2) = planned(&new, &s1);
        let m = &compare(&p1, &s1, &p2, &s2)[0];
        let (r1, r2) = (&p1.vips[0].ring, &p2.vips[0].ring);
        let differ = r1.iter().zip(r2.iter()).filter(|(a, b)| a != b).count();
        // The shared backends keep their slots, so slots compare as addresses do here.
        assert_eq!(m.moved, differ);
        assert!(m.moved > 0 && m.moved < 1009, "{m:?}");
        assert_eq!(m.moved_share, differ as f64 / 1009.0);
        let slot = |a: &str| s2.backends[&(vip(), ip(a))].slot;
        for a in ["10.1.0.1", "10.1.0.2", "10.1.0.3"] {
            let b = backend(m, a);
            assert_eq!(b.after, r2.iter().filter(|s| **s == slot(a)).count(), "{a}");
            assert_eq!(b.before + b.gained - b.lost, b.after, "{a}: {b:?}");
        }
        let new_one = backend(m, "10.1.0.3");
        assert_eq!((new_one.before, new_one.lost), (0, 0));
        assert_eq!(new_one.gained, new_one.after);
        let gained: usize = m.backends.iter().map(|b| b.gained).sum();
        let lost: usize = m.backends.iter().map(|b| b.lost).sum();
        assert_eq!((gained, lost), (m.moved, m.moved));
    }

    /// A backend removed and added again gets another slot: by address, its entries did
    /// not move.
    #[test]
    fn backends_are_compared_by_address_not_slot() {
        let c = config(&[("10.1.0.1", 1), ("10.1.0.2", 1)], 1009);
        let (p1, s1) = planned(&c, &Slots::default());
        // Out, and its slot taken by another, so that it comes back under a third.
        let (_, s_without) = planned(&config(&[("10.1.0.2", 1)], 1009), &s1);
        let (_, s_other) = planned(
            &config(&[("10.1.0.2", 1), ("10.1.0.9", 1)], 1009),
            &s_without,
        );
        let (p2, s2) = planned(&c, &s_other);
        assert_ne!(
            s1.backends[&(vip(), ip("10.1.0.1"))].slot,
            s2.backends[&(vip(), ip("10.1.0.1"))].slot,
            "the test needs the backend to come back under another slot"
        );
        assert_ne!(
            p1.vips[0].ring, p2.vips[0].ring,
            "by slot, the rings differ"
        );
        let m = &compare(&p1, &s1, &p2, &s2)[0];
        assert_eq!(m.moved, 0, "{m:?}");
    }

    #[test]
    fn added_removed_and_emptied_vips() {
        let c = config(&[("10.1.0.1", 1)], 1009);
        let (p1, s1) = planned(&c, &Slots::default());
        let (p0, s0) = planned(&Config::default(), &Slots::default());
        let added = &compare(&p0, &s0, &p1, &s1)[0];
        assert_eq!(added.presence, Presence::Added);
        assert_eq!((added.entries_before, added.entries_after), (0, 1009));
        assert_eq!((added.moved, added.moved_share), (0, 0.0));
        assert_eq!(backend(added, "10.1.0.1").gained, 1009);
        let removed = &compare(&p1, &s1, &p0, &s0)[0];
        assert_eq!(removed.presence, Presence::Removed);
        assert_eq!((removed.moved, removed.moved_share), (1009, 1.0));
        // Its only backend drained: no ring, every flow without a table entry has no
        // backend.
        let mut drained = c.clone();
        drained.set_drain(vip(), ip("10.1.0.1"), true).unwrap();
        let (p2, s2) = planned(&drained, &s1);
        let emptied = &compare(&p1, &s1, &p2, &s2)[0];
        assert_eq!(
            (emptied.entries_after, emptied.moved, emptied.moved_share),
            (0, 1009, 1.0)
        );
        assert_eq!(backend(emptied, "10.1.0.1").lost, 1009);
    }

    /// Another table size: the expectation, which for equal shares in both rings is the
    /// chance that two independent draws differ.
    #[test]
    fn a_table_size_change_moves_the_expected_share() {
        let backends = [
            ("10.1.0.1", 1),
            ("10.1.0.2", 1),
            ("10.1.0.3", 1),
            ("10.1.0.4", 1),
        ];
        let (p1, s1) = planned(&config(&backends, 1009), &Slots::default());
        let (p2, s2) = planned(&config(&backends, 2003), &s1);
        let m = &compare(&p1, &s1, &p2, &s2)[0];
        assert_eq!((m.entries_before, m.entries_after), (1009, 2003));
        assert!((m.moved_share - 0.75).abs() < 0.01, "{m:?}");
        for b in &m.backends {
            let share = b.lost as f64 / b.before as f64;
            assert!((share - 0.75).abs() < 0.02, "{b:?}");
        }
    }
}
