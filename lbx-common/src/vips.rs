//! The VIP table: per generation, an open-addressed array of `VipEntry` that the program
//! reads inline, without a helper call.
//!
//! A key's home slot comes from `hash::vip_hash` under the generation's salt; a lookup
//! probes from there, wrapping around, until it finds the key, meets an empty slot, or
//! has probed `VIP_PROBES` slots. The agent writes a generation's table whole and never
//! deletes from it, so an empty slot ends every probe chain that passes it. It picks the
//! salt so that every VIP lies within `VIP_PROBES` of its home slot. The same `find` runs
//! in the program and in the agent.

use crate::{VIP_PROBES, VIP_TABLE_SLOTS, VipEntry, VipKey, hash::vip_hash};

/// Salts the agent tries before it declares a set of VIPs unplaceable.
pub const SALT_TRIES: u32 = 64;

/// The home slot of `key` in a table of `N` slots (`N` a power of two).
#[inline(always)]
pub fn home<const N: usize>(key: &VipKey, salt: u32) -> usize {
    vip_hash(key, salt) as usize & (N - 1)
}

/// Whether `entry` holds `key`: word compares, no memcmp.
#[inline(always)]
pub fn holds(entry: &VipEntry, key: &VipKey) -> bool {
    entry.key.addr[0] == key.addr[0]
        && entry.key.addr[1] == key.addr[1]
        && entry.key.addr[2] == key.addr[2]
        && entry.key.addr[3] == key.addr[3]
        && entry.key.port_be == key.port_be
        && entry.key.proto == key.proto
        && entry.key.family == key.family
}

/// The entry of `key` in a table of `N` slots probed at most `probes` slots deep.
#[inline(always)]
pub fn find_in<'a, const N: usize>(
    entries: &'a [VipEntry; N],
    key: &VipKey,
    salt: u32,
    probes: u32,
) -> Option<&'a VipEntry> {
    let mut i = home::<N>(key, salt);
    let mut n = 0;
    while n < probes {
        let e = &entries[i & (N - 1)];
        if e.key.family == 0 {
            return None;
        }
        if holds(e, key) {
            return Some(e);
        }
        i += 1;
        n += 1;
    }
    None
}

/// The entry of `key` in a generation's table.
#[inline(always)]
pub fn find<'a>(
    entries: &'a [VipEntry; VIP_TABLE_SLOTS],
    key: &VipKey,
    salt: u32,
) -> Option<&'a VipEntry> {
    find_in(entries, key, salt, VIP_PROBES)
}

/// Where each of `keys` (distinct) goes in a table of `N` slots under `salt`: `slots[i]`
/// receives key `i`'s slot. False when some key finds no free slot within `probes` of
/// its home, or there are more keys than slots.
pub fn place_in<const N: usize>(
    keys: &[VipKey],
    salt: u32,
    probes: u32,
    slots: &mut [usize],
) -> bool {
    if keys.len() > N || slots.len() < keys.len() {
        return false;
    }
    let mut used = [false; N];
    for (key, out) in keys.iter().zip(slots.iter_mut()) {
        let h = home::<N>(key, salt);
        let Some(s) = (0..probes as usize)
            .map(|d| (h + d) & (N - 1))
            .find(|&s| !used[s])
        else {
            return false;
        };
        used[s] = true;
        *out = s;
    }
    true
}

/// The first salt below `SALT_TRIES` under which all `keys` fit a table of `N` slots
/// probed `probes` deep, with each key's slot written to `slots`.
pub fn layout_in<const N: usize>(keys: &[VipKey], probes: u32, slots: &mut [usize]) -> Option<u32> {
    (0..SALT_TRIES).find(|&salt| place_in::<N>(keys, salt, probes, slots))
}

/// `layout_in` for a generation's table.
pub fn layout(keys: &[VipKey], slots: &mut [usize]) -> Option<u32> {
    layout_in::<VIP_TABLE_SLOTS>(keys, VIP_PROBES, slots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

    fn key(a: u32, port: u16, proto: u8) -> VipKey {
        VipKey {
            addr: [a, 0, 0, 0],
            port_be: port.to_be(),
            proto,
            family: FAMILY_V4,
        }
    }

    /// Builds a table of `N` slots from `keys` the way the agent does.
    fn table<const N: usize>(keys: &[VipKey], probes: u32) -> Option<([VipEntry; N], u32)> {
        let mut slots = [0usize; 64];
        let salt = layout_in::<N>(keys, probes, &mut slots)?;
        let mut t = [VipEntry::default(); N];
        for (i, k) in keys.iter().enumerate() {
            t[slots[i]] = VipEntry {
                key: *k,
                id: i as u16,
                flags: 0,
                ring_base: 0,
                ring_size: 0,
            };
        }
        Some((t, salt))
    }

    #[test]
    fn every_key_is_found_and_others_are_not() {
        let keys: [VipKey; 64] = core::array::from_fn(|i| {
            key(0x0a00_0000 + (i as u32 / 4), 80 + (i % 4) as u16, PROTO_TCP)
        });
        let (t, salt) = table::<VIP_TABLE_SLOTS>(&keys, VIP_PROBES).expect("64 VIPs fit");
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(find(&t, k, salt).map(|e| e.id), Some(i as u16));
        }
        for miss in [
            key(0x0a00_0000, 81, PROTO_UDP),
            key(0x0b00_0000, 80, PROTO_TCP),
            VipKey {
                family: FAMILY_V6,
                ..keys[0]
            },
        ] {
            assert!(find(&t, &miss, salt).is_none(), "{miss:?}");
        }
    }

    #[test]
    fn colliding_keys_probe_past_each_other() {
        // Keys that share a home slot in a table of 8: they sit in consecutive slots and
        // each is still found; a lookup stops at the first empty slot.
        let mut same = [VipKey::default(); 3];
        let mut n = 0;
        let mut a = 1;
        let h0 = home::<8>(&key(1, 80, PROTO_TCP), 0);
        while n < 3 {
            let k = key(a, 80, PROTO_TCP);
            if home::<8>(&k, 0) == h0 {
                same[n] = k;
                n += 1;
            }
            a += 1;
        }
        let mut slots = [0usize; 3];
        assert!(place_in::<8>(&same, 0, 3, &mut slots));
        assert_eq!(slots, [h0, (h0 + 1) & 7, (h0 + 2) & 7]);
        let (t, salt) = table::<8>(&same, 3).unwrap();
        assert_eq!(salt, 0);
        for (i, k) in same.iter().enumerate() {
            assert_eq!(find_in(&t, k, 0, 3).map(|e| e.id), Some(i as u16));
        }
        // With a bound of 2 the third one does not fit under this salt.
        assert!(!place_in::<8>(&same, 0, 2, &mut slots));
    }

    #[test]
    fn a_full_table_is_rejected() {
        let keys: [VipKey; 9] = core::array::from_fn(|i| key(i as u32 + 1, 80, PROTO_TCP));
        let mut slots = [0usize; 9];
        assert!(
            layout_in::<8>(&keys, 8, &mut slots).is_none(),
            "9 keys, 8 slots"
        );
        assert!(layout_in::<8>(&keys[..8], 8, &mut slots).is_some(), "8 fit");
    }
}
