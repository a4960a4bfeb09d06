//! The flow hash: the same code decides a flow's ring slot in the kernel and answers
//! `lbx flow` in the agent, so both always agree.
//!
//! The packet-path hashes (a flow's 5-tuple, a VIP table key) multiply 64-bit words, which
//! BPF does natively, and end with MurmurHash3's 64-bit finalizer; seeded so that nodes
//! sharing a seed pick the same slot for the same flow. 32-bit rotates and multiplies,
//! which BPF has no instructions for before ISA v3, would cost several instructions each.
//! Straight-line code: the verifier sees no loop. The Maglev permutation (control plane)
//! uses 32-bit MurmurHash3 over bytes.

use crate::{FlowKey, VipKey};

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// Odd multiplier of the word mix (2^64 / golden ratio).
const M: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Folds one 64-bit word into the state; the high half of each product is folded down
/// so that every input bit reaches the next multiply's low bits.
#[inline(always)]
fn mix64(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(M);
    h ^ (h >> 32)
}

/// The seeded start state: the seed in both halves.
#[inline(always)]
fn start64(seed: u32) -> u64 {
    ((seed as u64) << 32 | seed as u64) ^ 0x243f_6a88_85a3_08d3
}

/// MurmurHash3's 64-bit finalizer, folded to 32 bits.
#[inline(always)]
fn finish64(mut h: u64) -> u32 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

/// Hash of a flow's 5-tuple under `seed`.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let w = crate::flows::key_words(key);
    let mut h = start64(seed);
    h = mix64(h, w[0]);
    h = mix64(h, w[1]);
    h = mix64(h, w[2]);
    h = mix64(h, w[3]);
    h = mix64(h, w[4]);
    finish64(h)
}

/// Hash of a VIP table key under the generation's salt (`vips::home`).
#[inline(always)]
pub fn vip_hash(key: &VipKey, salt: u32) -> u32 {
    let a = &key.addr;
    let mut h = start64(salt);
    h = mix64(h, a[0] as u64 | (a[1] as u64) << 32);
    h = mix64(h, a[2] as u64 | (a[3] as u64) << 32);
    h = mix64(
        h,
        (key.port_be as u64) | ((key.proto as u64) << 16) | ((key.family as u64) << 24),
    );
    finish64(h)
}

/// Seeded hash of arbitrary bytes (the Maglev permutation of a backend's identity).
pub fn bytes_hash(bytes: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut chunks = bytes.chunks_exact(4);
    for c in &mut chunks {
        h = mix(h, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 4];
        tail[..rest.len()].copy_from_slice(rest);
        let k = u32::from_le_bytes(tail)
            .wrapping_mul(C1)
            .rotate_left(15)
            .wrapping_mul(C2);
        h ^= k;
    }
    finish(h ^ bytes.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_and_tuple_change_the_hash() {
        let k = FlowKey {
            src: [1, 0, 0, 0],
            dst: [2, 0, 0, 0],
            sport_be: 1000,
            dport_be: 80,
            proto: 6,
            family: 4,
            pad: 0,
        };
        let mut other = k;
        other.sport_be = 1001;
        assert_ne!(flow_hash(&k, 0), flow_hash(&k, 1));
        assert_ne!(flow_hash(&k, 0), flow_hash(&other, 0));
        assert_eq!(flow_hash(&k, 7), flow_hash(&k, 7));
    }

    #[test]
    fn flow_hash_spreads_over_rings_and_sets() {
        // Flows that differ only in the source port, as from one client: every ring slot
        // of a small prime ring and every set of a small table gets its share.
        let mut ring = [0u32; 13];
        let mut sets = [0u32; 16];
        let n = 13 * 16 * 200;
        for p in 0..n {
            let k = FlowKey {
                src: [0x0100_000a, 0, 0, 0],
                dst: [0x0a02_00c0, 0, 0, 0],
                sport_be: (10_000 + p as u16).to_be(),
                dport_be: 80u16.to_be(),
                proto: 6,
                family: 4,
                pad: 0,
            };
            let h = flow_hash(&k, 1);
            ring[(h % 13) as usize] += 1;
            sets[(h & 15) as usize] += 1;
        }
        for (what, counts, per) in [("ring", &ring[..], n / 13), ("set", &sets[..], n / 16)] {
            for (i, c) in counts.iter().enumerate() {
                let off = (*c as f64 / per as f64 - 1.0).abs();
                assert!(off < 0.1, "{what} {i}: {c} of {per} expected");
            }
        }
    }

    #[test]
    fn bytes_hash_spreads() {
        // MurmurHash3 x86_32 reference value for "hello" with seed 0.
        assert_eq!(bytes_hash(b"hello", 0), 0x248b_fa47);
        assert_ne!(bytes_hash(b"10.0.0.1", 1), bytes_hash(b"10.0.0.2", 1));
    }
}
