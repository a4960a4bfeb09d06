//! Stable numbers for VIPs and backends across generations: a VIP keeps its id (its
//! counters and ring) and a backend its slot (its counters, and the connection-table
//! entries that name it) for as long as it exists.

use std::{collections::BTreeMap, net::IpAddr};

use lbx_common::{Backend, MAX_BACKENDS, MAX_VIPS, VIP_F_ECHO, VipEntry, VipTable};

use crate::{
    addr,
    config::{Config, VipId},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSlot {
    pub slot: u32,
    /// Unique per backend instance, so the data plane can tell a reused slot apart.
    pub uid: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slots {
    pub vips: BTreeMap<VipId, u32>,
    pub backends: BTreeMap<(VipId, IpAddr), BackendSlot>,
    next_uid: u32,
}

/// Numbers newly handed out by `assign`: their counters must start from zero.
#[derive(Debug, Default)]
pub struct Fresh {
    pub vips: Vec<u32>,
    pub backends: Vec<u32>,
}

impl Slots {
    /// Numbers for every VIP and backend of `config`: existing ones keep theirs; new ones
    /// get the lowest number no current VIP or backend holds, so the generation still in
    /// use never shares a number with the one being built.
    pub fn assign(&self, config: &Config) -> (Slots, Fresh) {
        let mut next = Slots {
            next_uid: self.next_uid,
            ..Slots::default()
        };
        let mut fresh = Fresh::default();
        let mut free_vips = (0..MAX_VIPS).filter(|i| !self.vips.values().any(|v| v == i));
        let used: std::collections::BTreeSet<u32> =
            self.backends.values().map(|b| b.slot).collect();
        let mut free_backends = (0..MAX_BACKENDS).filter(|i| !used.contains(i));
        for vip in &config.vips {
            let id = vip.id();
            let n = match self.vips.get(&id) {
                Some(n) => *n,
                None => {
                    let n = free_vips.next().expect("validated: at most MAX_VIPS VIPs");
                    fresh.vips.push(n);
                    n
                }
            };
            next.vips.insert(id, n);
            for b in &vip.backends {
                let key = (id, b.address);
                let s = match self.backends.get(&key) {
                    Some(s) => *s,
                    None => {
                        let slot = free_backends
                            .next()
                            .expect("validated: at most MAX_BACKENDS");
                        next.next_uid = next.next_uid.wrapping_add(1).max(1);
                        fresh.backends.push(slot);
                        BackendSlot {
                            slot,
                            uid: next.next_uid,
                        }
                    }
                };
                next.backends.insert(key, s);
            }
        }
        (next, fresh)
    }

    /// The numbers of a generation in the maps, as an agent that adopts them finds them:
    /// VIP ids from its VIP table (whose echo entries are no VIPs); backend slots, their uids and (in `Backend::vip`) their
    /// VIP's id from its backend region.
    pub fn recover(vips: &VipTable, backends: &[Backend]) -> Slots {
        let mut found = Slots::default();
        let mut by_id = BTreeMap::new();
        let is_vip = |e: &&VipEntry| e.key.family != 0 && e.flags & VIP_F_ECHO == 0;
        for e in vips.entries.iter().filter(is_vip) {
            if let Some(vip) = VipId::from_key(&e.key) {
                found.vips.insert(vip, u32::from(e.id));
                by_id.insert(u32::from(e.id), vip);
            }
        }
        for (slot, b) in backends.iter().enumerate().filter(|(_, b)| b.family != 0) {
            if let Some(vip) = by_id.get(&b.vip) {
                let key = (*vip, addr::from_words(b.addr, b.family));
                let slot = BackendSlot {
                    slot: slot as u32,
                    uid: b.uid,
                };
                found.backends.insert(key, slot);
                found.next_uid = found.next_uid.max(b.uid);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, Protocol};

    fn config(vips: &[(&str, &[&str])]) -> Config {
        let mut c = Config::default();
        for (vip, backends) in vips {
            let id = VipId::parse(vip, Protocol::Tcp).unwrap();
            c.add_vip(id).unwrap();
            for b in *backends {
                c.add_backend(id, BackendConfig::new(b.parse().unwrap()))
                    .unwrap();
            }
        }
        c
    }

    #[test]
    fn numbers_are_stable_and_fresh_ones_are_new() {
        let a = config(&[("10.0.0.1:80", &["10.1.0.1", "10.1.0.2"])]);
        let (s1, fresh) = Slots::default().assign(&a);
        assert_eq!(fresh.vips, vec![0]);
        assert_eq!(fresh.backends, vec![0, 1]);

        // Remove one backend, add another and a VIP: survivors keep their numbers, and
        // the newcomers never take a number the old generation still uses.
        let b = config(&[
            ("10.0.0.1:80", &["10.1.0.2", "10.1.0.3"]),
            ("10.0.0.2:80", &["10.1.0.1"]),
        ]);
        let (s2, fresh) = s1.assign(&b);
        let vip1 = VipId::parse("10.0.0.1:80", Protocol::Tcp).unwrap();
        let kept = (vip1, "10.1.0.2".parse().unwrap());
        assert_eq!(s2.backends[&kept], s1.backends[&kept]);
        assert_eq!(s2.vips[&vip1], 0);
        assert_eq!(fresh.vips, vec![1]);
        assert!(
            !fresh.backends.contains(&0) && !fresh.backends.contains(&1),
            "{fresh:?}"
        );
        let uids: std::collections::BTreeSet<u32> = s2.backends.values().map(|b| b.uid).collect();
        assert_eq!(uids.len(), s2.backends.len(), "uids are unique");
        let removed = (vip1, "10.1.0.1".parse().unwrap());
        assert!(!s2.backends.contains_key(&removed));

        // A number the current generation no longer uses is free again (backend slot 0),
        // while the current generation's are not (VIP ids 0 and 1).
        let (s3, fresh) = s2.assign(&config(&[("10.0.0.3:80", &["10.1.0.9"])]));
        assert_eq!(fresh.vips, vec![2]);
        assert_eq!(fresh.backends, vec![0]);
        assert!(s3.backends.values().all(|b| b.uid > s1.backends[&kept].uid));
    }

    #[test]
    fn recovered_from_the_maps_as_they_were_assigned() {
        let c = config(&[
            ("10.0.0.1:80", &["10.1.0.1", "10.1.0.2"]),
            ("[fd00::1]:443", &["fd00::11"]),
        ]);
        let (s1, _) = Slots::default().assign(&config(&[("10.0.0.9:80", &["10.1.0.9"])]));
        let (slots, _) = s1.assign(&c);
        let mut table = VipTable::default();
        let mut backends = vec![Backend::default(); MAX_BACKENDS as usize];
        for (i, (vip, id)) in slots.vips.iter().enumerate() {
            table.entries[i * 7].key = vip.key();
            table.entries[i * 7].id = *id as u16;
        }
        for ((vip, address), s) in &slots.backends {
            backends[s.slot as usize] = Backend {
                addr: addr::to_words(*address),
                family: addr::family(*address),
                uid: s.uid,
                vip: slots.vips[vip],
                ..Backend::default()
            };
        }
        let found = Slots::recover(&table, &backends);
        assert_eq!(found, slots);
        // New numbers after recovery are new to the recovered generation too.
        let (_, fresh) = found.assign(&config(&[("10.0.0.1:80", &["10.1.0.3"])]));
        assert!(
            fresh
                .backends
                .iter()
                .all(|b| slots.backends.values().all(|s| s.slot != *b))
        );
    }
}
