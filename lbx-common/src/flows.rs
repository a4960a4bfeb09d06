//! The connection table: a set-associative array of flows, like a CPU cache.
//!
//! A flow's set is picked by its flow hash; each set has `FLOW_WAYS` slots. Looking a
//! flow up reads one set; inserting writes one slot. Both are plain array accesses the
//! verifier inlines: no helper call, no lock, on the packet path.
//!
//! Slots are written by many CPUs without locks, so every slot carries a check word
//! derived from its flow hash, backend and uid. A slot read while another CPU writes it
//! fails the check and counts as a miss (the flow then takes the Maglev ring, which gives
//! the same backend unless the ring changed). A zero check marks an empty slot.
//!
//! Every slot also holds when its flow was last seen, on the agent's coarse clock
//! (`Active::now`): a hit writes the stamp only when the clock moved, about once a second
//! per flow, not once per packet. A flow unseen for longer than its protocol's idle time
//! (`Settings::tcp_idle_s`, `udp_idle_s`) is inactive: it no longer counts as a
//! backend's active flow, and its slot is free for a new flow, like an empty one. It is
//! still found by its own packets until then.
//!
//! Replacement is second chance: a hit marks its slot recently used; a new flow takes
//! the slot of the same flow, else an empty or expired one, else one not used since it
//! was last passed over, else the one its hash picks (and the other loses its mark). The
//! same code decides in the kernel and in the reference model, so both tables stay
//! identical.

use crate::{FlowEntry, FlowKey, PROTO_UDP, Settings};

/// Slots per set.
pub const FLOW_WAYS: u32 = 2;

/// One slot: a flow, its backend and the check word; 64 bytes, one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    /// The flow's key, as words (`key_words`).
    pub key: [u64; 5],
    pub entry: FlowEntry,
    /// `check(hash, entry)`; zero: empty.
    pub check: u32,
    /// Non-zero once a packet found the flow here since the slot was last passed over.
    pub recent: u32,
    /// `Active::now` when a packet of the flow was last seen.
    pub seen: u32,
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<FlowSlot>() == 64);

/// The key as five words: five compares instead of forty.
#[inline(always)]
pub fn key_words(key: &FlowKey) -> [u64; 5] {
    // SAFETY: FlowKey is repr(C), 40 bytes without implicit padding; any bytes are valid
    // u64s.
    unsafe { core::mem::transmute::<FlowKey, [u64; 5]>(*key) }
}

/// The key back from its words.
#[inline(always)]
pub fn key_of(words: &[u64; 5]) -> FlowKey {
    // SAFETY: as in key_words; every byte pattern is a valid FlowKey (plain integers).
    unsafe { core::mem::transmute::<[u64; 5], FlowKey>(*words) }
}

/// Number of sets for a table of about `flows` flows: a power of two, at least one.
pub fn sets_for(flows: u32) -> u32 {
    (flows.max(FLOW_WAYS).next_power_of_two() / FLOW_WAYS).max(1)
}

/// Index of the first slot of the set of a flow with hash `hash`; `mask` is sets - 1.
#[inline(always)]
pub fn set_base(hash: u32, mask: u32) -> u32 {
    (hash & mask) * FLOW_WAYS
}

/// The check word of a slot holding `entry` for a flow with hash `hash`; never zero.
#[inline(always)]
pub fn check(hash: u32, entry: &FlowEntry) -> u32 {
    let mut h = hash ^ entry.backend.wrapping_mul(0x9e37_79b1) ^ entry.uid.rotate_left(16);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h | 1
}

/// Whether `slot`'s key is `words`: five word compares (an array `==` would become a
/// byte-by-byte `memcmp` call in BPF).
#[inline(always)]
pub fn same_key(slot: &FlowSlot, words: &[u64; 5]) -> bool {
    slot.key[0] == words[0]
        && slot.key[1] == words[1]
        && slot.key[2] == words[2]
        && slot.key[3] == words[3]
        && slot.key[4] == words[4]
}

/// Whether `slot` holds the flow `words` (hash `hash`), written whole.
#[inline(always)]
pub fn holds(slot: &FlowSlot, words: &[u64; 5], hash: u32) -> bool {
    same_key(slot, words) && slot.check == check(hash, &slot.entry)
}

/// The protocol of the flow in `slot`, from its key's last word (`FlowKey::proto` is
/// byte 36 of the key, byte 4 of word 4, on the little-endian machines lbx runs on).
#[inline(always)]
pub fn proto_of(slot: &FlowSlot) -> u8 {
    (slot.key[4] >> 32) as u8
}
#[cfg(not(target_endian = "little"))]
compile_error!("proto_of reads a little-endian key word");

/// Seconds a flow of protocol `proto` may go unseen and stay active; zero: for ever.
#[inline(always)]
pub fn idle_limit(proto: u8, settings: &Settings) -> u32 {
    if proto == PROTO_UDP {
        settings.udp_idle_s as u32
    } else {
        settings.tcp_idle_s as u32
    }
}

/// Whether the flow in a used `slot` was seen within its idle time at `now`.
#[inline(always)]
pub fn active(slot: &FlowSlot, now: u32, settings: &Settings) -> bool {
    let limit = idle_limit(proto_of(slot), settings);
    // A clock behind a stamp (never, on one boot) keeps the flow: a slot is never lost
    // by mistake.
    limit == 0 || now.saturating_sub(slot.seen) <= limit
}

/// Whether a new flow may take `slot` as if it were empty.
#[inline(always)]
fn free(slot: &FlowSlot, now: u32, settings: &Settings) -> bool {
    slot.check == 0 || !active(slot, now, settings)
}

/// Where a new flow goes in its set of two: `(way, clear the other way's mark)`.
#[inline(always)]
pub fn insert_way(
    ways: [&FlowSlot; 2],
    words: &[u64; 5],
    hash: u32,
    now: u32,
    settings: &Settings,
) -> (usize, bool) {
    if same_key(ways[0], words) {
        return (0, false);
    }
    if same_key(ways[1], words) {
        return (1, false);
    }
    if free(ways[0], now, settings) {
        return (0, false);
    }
    if free(ways[1], now, settings) {
        return (1, false);
    }
    if ways[0].recent == 0 {
        return (0, false);
    }
    if ways[1].recent == 0 {
        return (1, false);
    }
    // Both in use: the hash picks one, and the other must show use again to stay.
    ((hash >> 31) as usize, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> FlowKey {
        FlowKey {
            src: [n, 0, 0, 0],
            dst: [7, 0, 0, 0],
            sport_be: 1,
            dport_be: 80,
            proto: 6,
            family: 4,
            pad: 0,
        }
    }

    fn slot(n: u32, hash: u32, recent: u32) -> FlowSlot {
        let entry = FlowEntry { backend: n, uid: n };
        FlowSlot {
            key: key_words(&key(n)),
            entry,
            check: check(hash, &entry),
            recent,
            seen: NOW,
            pad: 0,
        }
    }

    const NOW: u32 = 1000;

    fn settings() -> Settings {
        Settings {
            tcp_idle_s: 300,
            udp_idle_s: 30,
            ..Settings::default()
        }
    }

    #[test]
    fn words_round_trip_and_check_is_never_zero() {
        let k = key(42);
        assert_eq!(key_of(&key_words(&k)), k);
        for h in [0, 1, u32::MAX, 0x8000_0000] {
            assert_ne!(check(h, &FlowEntry::default()), 0);
        }
    }

    #[test]
    fn a_slot_holds_its_flow_only_when_written_whole() {
        let s = slot(1, 99, 0);
        assert!(holds(&s, &key_words(&key(1)), 99));
        assert!(!holds(&s, &key_words(&key(2)), 99), "another flow");
        let mut torn = s;
        torn.entry.backend = 2;
        assert!(
            !holds(&torn, &key_words(&key(1)), 99),
            "entry of another write"
        );
        assert!(!holds(&FlowSlot::default(), &[0; 5], 0), "empty");
    }

    #[test]
    fn second_chance_replacement() {
        let w = key_words(&key(9));
        let empty = FlowSlot::default();
        let (a, b) = (slot(1, 5, 0), slot(2, 6, 0));
        let (ra, rb) = (slot(1, 5, 1), slot(2, 6, 1));
        let s = &settings();
        let insert_way = |ways, w, hash| insert_way(ways, w, hash, NOW, s);
        assert_eq!(insert_way([&empty, &empty], &w, 0), (0, false));
        assert_eq!(
            insert_way([&ra, &empty], &w, 0),
            (1, false),
            "empty way first"
        );
        assert_eq!(
            insert_way([&ra, &b], &w, 0),
            (1, false),
            "then the unused way"
        );
        assert_eq!(insert_way([&a, &rb], &w, 0), (0, false));
        assert_eq!(
            insert_way([&ra, &rb], &w, 0),
            (0, true),
            "then the hash's pick"
        );
        assert_eq!(insert_way([&ra, &rb], &w, 1 << 31), (1, true));
        let mut same = slot(9, 7, 1);
        same.entry.uid = 3;
        assert_eq!(
            insert_way([&ra, &same], &w, 0),
            (1, false),
            "the same flow's way"
        );
    }

    #[test]
    fn a_slot_unseen_for_longer_than_its_protocols_idle_time_is_free() {
        let s = settings();
        let w = key_words(&key(9));
        let tcp = slot(1, 5, 1);
        let mut udp = slot(2, 6, 1);
        udp.key = key_words(&FlowKey {
            proto: PROTO_UDP,
            ..key(2)
        });
        assert_eq!(proto_of(&tcp), 6);
        assert_eq!(proto_of(&udp), PROTO_UDP);
        for (later, tcp_active, udp_active) in [
            (0, true, true),
            (30, true, true),
            (31, true, false),
            (301, false, false),
        ] {
            assert_eq!(active(&tcp, NOW + later, &s), tcp_active, "tcp +{later}");
            assert_eq!(active(&udp, NOW + later, &s), udp_active, "udp +{later}");
        }
        assert!(
            active(&tcp, NOW - 5, &s),
            "a clock behind the stamp keeps the flow"
        );
        let never = Settings::default();
        assert!(active(&tcp, u32::MAX, &never), "zero: never idle");
        // Both recently used: the expired one is taken before the hash's pick.
        assert_eq!(insert_way([&tcp, &udp], &w, 0, NOW + 31, &s), (1, false));
        assert_eq!(insert_way([&tcp, &udp], &w, 0, NOW + 301, &s), (0, false));
        assert_eq!(insert_way([&tcp, &udp], &w, 0, NOW, &s), (0, true));
    }

    #[test]
    fn sets_are_powers_of_two() {
        assert_eq!(sets_for(0), 1);
        assert_eq!(sets_for(1), 1);
        assert_eq!(sets_for(1 << 20), 1 << 19);
        assert_eq!(sets_for(1000), 512);
    }
}
