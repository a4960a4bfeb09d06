//! The flow hash: the same code decides a flow's ring slot in the kernel and answers
//! `lbx flow` in the agent, so both always agree.
//!
//! It is the 32-bit MurmurHash3 mixing over the 5-tuple's words, seeded so that nodes
//! sharing a seed pick the same slot for the same flow. Straight-line code: the verifier
//! sees no loop.

use crate::{FlowKey, VipKey};

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

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

/// Hash of a flow's 5-tuple under `seed`.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    h = mix(h, key.dst[0]);
    h = mix(h, key.dst[1]);
    h = mix(h, key.dst[2]);
    h = mix(h, key.dst[3]);
    h = mix(h, (key.sport_be as u32) | ((key.dport_be as u32) << 16));
    h = mix(h, (key.proto as u32) | ((key.family as u32) << 8));
    finish(h ^ 40)
}

/// Hash of a VIP table key under the generation's salt (`vips::home`).
#[inline(always)]
pub fn vip_hash(key: &VipKey, salt: u32) -> u32 {
    let mut h = salt;
    h = mix(h, key.addr[0]);
    h = mix(h, key.addr[1]);
    h = mix(h, key.addr[2]);
    h = mix(h, key.addr[3]);
    h = mix(
        h,
        (key.port_be as u32) | ((key.proto as u32) << 16) | ((key.family as u32) << 24),
    );
    finish(h ^ 20)
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
    fn bytes_hash_spreads() {
        // MurmurHash3 x86_32 reference value for "hello" with seed 0.
        assert_eq!(bytes_hash(b"hello", 0), 0x248b_fa47);
        assert_ne!(bytes_hash(b"10.0.0.1", 1), bytes_hash(b"10.0.0.2", 1));
    }
}
