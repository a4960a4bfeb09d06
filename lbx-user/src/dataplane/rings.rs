//! Where each VIP's Maglev ring lives in `RINGS`. Each generation slot has a region of
//! `capacity` elements, and every VIP with a ring a place in it, as long as its ring. A
//! VIP keeps its place while its table size stays, so a publication writes only the rings
//! that differ from what the slot holds: the generation before last's.
//!
//! The slot being written is one no packet reads (but the second chance, which checks
//! whatever it finds against the current generation), so places may move freely: when
//! the rings fit the region but not its gaps, the slot is laid out anew from its start.

use std::{collections::BTreeMap, sync::Arc};

use lbx_common::ring_elems;

/// A ring: the backend slot of each entry.
pub type Ring = Arc<[u32]>;

/// The rings of one generation do not fit a slot's region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the rings take {need} ring entries, but a generation holds at most {capacity}: \
     give VIPs with few backends a smaller table_size, or restart the agent with a \
     larger --ring-entries (and --migrate)"
)]
pub struct RingsFull {
    pub need: u64,
    pub capacity: u64,
}

/// The ring a VIP's place in a slot holds.
#[derive(Clone)]
struct Placed {
    /// First element, relative to the slot's region.
    start: u32,
    elems: u32,
    ring: Ring,
}

/// One write of a publication: `ring` at element `base` of `RINGS`.
pub struct Write {
    pub base: u32,
    pub ring: Ring,
}

/// The places of one generation slot's region.
pub struct SlotRings {
    /// First element of the region in `RINGS`.
    offset: u32,
    /// Elements of the region.
    capacity: u32,
    /// Gaps: start (relative) to length.
    free: BTreeMap<u32, u32>,
    /// By VIP number.
    placed: BTreeMap<u32, Placed>,
}

impl SlotRings {
    /// The region of generation slot `slot`, `capacity` elements, nothing placed (what a
    /// slot holds is known only once this publisher wrote it).
    pub fn new(slot: u32, capacity: u32) -> Self {
        let mut s = Self {
            offset: slot * capacity,
            capacity,
            free: BTreeMap::new(),
            placed: BTreeMap::new(),
        };
        s.clear();
        s
    }

    fn clear(&mut self) {
        self.placed.clear();
        self.free.clear();
        if self.capacity > 0 {
            self.free.insert(0, self.capacity);
        }
    }

    /// Entries one generation of this region holds.
    pub fn capacity_entries(&self) -> u64 {
        u64::from(self.capacity) * u64::from(lbx_common::RING_LANES)
    }

    /// Places `rings` (by VIP number; a VIP without a ring is left out) in the slot and
    /// returns the writes that make the slot hold them. Refuses, changing nothing, when
    /// they cannot fit however placed.
    pub fn place(&mut self, rings: &[(u32, Ring)]) -> Result<Vec<Write>, RingsFull> {
        let need: u64 = rings
            .iter()
            .map(|(_, r)| u64::from(ring_elems(r.len() as u32)))
            .sum();
        if need > u64::from(self.capacity) {
            return Err(RingsFull {
                need: need * u64::from(lbx_common::RING_LANES),
                capacity: self.capacity_entries(),
            });
        }
        // Places of VIPs gone, or whose ring changed size, are free again first.
        let wanted: BTreeMap<u32, u32> = rings
            .iter()
            .map(|(n, r)| (*n, ring_elems(r.len() as u32)))
            .collect();
        let stale: Vec<u32> = self
            .placed
            .iter()
            .filter(|(n, p)| wanted.get(n) != Some(&p.elems))
            .map(|(n, _)| *n)
            .collect();
        for n in stale {
            let p = self.placed.remove(&n).expect("listed above");
            self.release(p.start, p.elems);
        }
        let mut writes = Vec::new();
        for (number, ring) in rings {
            let elems = wanted[number];
            if let Some(p) = self.placed.get_mut(number) {
                if !Arc::ptr_eq(&p.ring, ring) {
                    if p.ring[..] != ring[..] {
                        writes.push(Write {
                            base: self.offset + p.start,
                            ring: ring.clone(),
                        });
                    }
                    // Equal or written: the same ring from now on, so a plan that keeps
                    // it is told apart without comparing its entries.
                    p.ring = ring.clone();
                }
                continue;
            }
            match self.take(elems) {
                Some(start) => writes.push(self.put(*number, start, elems, ring)),
                // Room enough, but in pieces: everything anew, from the region's start.
                None => return Ok(self.lay_out(rings)),
            }
        }
        Ok(writes)
    }

    /// Every ring placed back to back from the region's start: all written.
    fn lay_out(&mut self, rings: &[(u32, Ring)]) -> Vec<Write> {
        self.clear();
        let mut writes = Vec::new();
        for (number, ring) in rings {
            let elems = ring_elems(ring.len() as u32);
            let start = self
                .take(elems)
                .expect("the rings fit the region (checked)");
            writes.push(self.put(*number, start, elems, ring));
        }
        writes
    }

    /// VIP `number`'s ring placed at `start`, and its write.
    fn put(&mut self, number: u32, start: u32, elems: u32, ring: &Ring) -> Write {
        let ring = ring.clone();
        self.placed.insert(
            number,
            Placed {
                start,
                elems,
                ring: ring.clone(),
            },
        );
        Write {
            base: self.offset + start,
            ring,
        }
    }

    /// Where VIP `number`'s ring is in `RINGS`, once placed.
    pub fn base(&self, number: u32) -> Option<u32> {
        self.placed.get(&number).map(|p| self.offset + p.start)
    }

    /// The first gap of at least `elems` elements, taken.
    fn take(&mut self, elems: u32) -> Option<u32> {
        let (&start, &len) = self.free.iter().find(|(_, len)| **len >= elems)?;
        self.free.remove(&start);
        if len > elems {
            self.free.insert(start + elems, len - elems);
        }
        Some(start)
    }

    /// Gives `elems` elements from `start` back, merged with the gaps beside them.
    fn release(&mut self, start: u32, elems: u32) {
        let (mut start, mut len) = (start, elems);
        if let Some((&before, &blen)) = self.free.range(..start).next_back()
            && before + blen == start
        {
            self.free.remove(&before);
            start = before;
            len += blen;
        }
        if let Some(&alen) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += alen;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(size: usize, fill: u32) -> Ring {
        vec![fill; size].into()
    }

    /// No two places overlap, all lie inside the region, and gaps plus places cover it.
    fn check(s: &SlotRings) {
        let mut spans: Vec<(u32, u32)> = s.placed.values().map(|p| (p.start, p.elems)).collect();
        spans.extend(s.free.iter().map(|(a, l)| (*a, *l)));
        spans.sort_unstable();
        let mut at = 0;
        for (start, len) in spans {
            assert_eq!(start, at, "a gap or an overlap at {at}");
            at = start + len;
        }
        assert_eq!(at, s.capacity);
    }

    #[test]
    fn unchanged_rings_are_not_written_again() {
        let mut s = SlotRings::new(1, 100);
        let (a, b) = (ring(101, 1), ring(41, 2));
        let w = s.place(&[(0, a.clone()), (5, b.clone())]).unwrap();
        assert_eq!(w.len(), 2);
        assert!(w.iter().all(|w| w.base >= 100), "slot 1's region");
        check(&s);
        // The same rings (or equal ones) again: nothing to write.
        let w = s.place(&[(0, a.clone()), (5, ring(41, 2))]).unwrap();
        assert!(w.is_empty());
        // One ring changed, same size: only it, in its place.
        let base = s.base(5).unwrap();
        let w = s.place(&[(0, a.clone()), (5, ring(41, 3))]).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].base, base);
        check(&s);
    }

    #[test]
    fn places_are_reused_and_the_region_laid_out_anew_when_fragmented() {
        let mut s = SlotRings::new(0, 30);
        // Three rings of 10 elements fill the region.
        let rings: Vec<(u32, Ring)> = (0..3).map(|n| (n, ring(40, n))).collect();
        assert_eq!(s.place(&rings).unwrap().len(), 3);
        check(&s);
        // The middle one grows out of the region: refused, nothing changed.
        let mut bigger = rings.clone();
        bigger[1].1 = ring(44, 9);
        let before = s.base(1);
        assert_eq!(
            s.place(&bigger).err(),
            Some(RingsFull {
                need: 124,
                capacity: 120
            })
        );
        assert_eq!(s.base(1), before);
        // The first and last go; one of 20 elements fits only where both were once the
        // region is laid out anew.
        let w = s
            .place(&[(1, rings[1].1.clone()), (7, ring(80, 7))])
            .unwrap();
        check(&s);
        assert_eq!(s.base(7).map(|b| b + 20 <= 30), Some(true));
        assert!(w.iter().any(|w| w.ring.len() == 80));
        // A VIP gone frees its place for the next one.
        s.place(&[(7, ring(80, 7))]).unwrap();
        check(&s);
        assert_eq!(s.base(1), None);
    }
}
