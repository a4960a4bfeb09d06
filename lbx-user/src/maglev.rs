//! Weighted Maglev: the lookup table that maps a flow hash to a backend of one VIP.
//!
//! Classic Maglev (Eisenbud et al., NSDI 2016) with two changes:
//! - Weights. Each backend's number of slots is fixed up front by the largest-remainder
//!   method, so it is its exact weight share of the table rounded down or up. Backends then
//!   take turns in proportion to their weight, each claiming its next preferred free slot,
//!   until each has its quota. With equal weights this is exactly classic Maglev's
//!   round-robin.
//! - Input order does not matter. Backends are sorted by identity first, so every node
//!   that sees the same set of (identity, weight), table size and seed builds the same
//!   table, which is what lets several balancers behind one ECMP group agree on a flow.
//!
//! The permutation of a backend is `offset = h1 % M`, `skip = h2 % (M - 1) + 1` with
//! `h1 = bytes_hash(identity, seed)` and `h2 = bytes_hash(identity, seed ^ SKIP_SEED_XOR)`.
//! These constants are part of the table's definition: changing them moves every flow.

use lbx_common::hash::bytes_hash;

/// Mixed into the seed for the second (skip) hash so offset and skip are independent.
const SKIP_SEED_XOR: u32 = 0x9e37_79b9;

/// One backend as Maglev sees it.
#[derive(Clone, Copy, Debug)]
pub struct MaglevBackend<'a> {
    /// Bytes that name the backend stably across nodes and restarts (e.g. its address).
    pub identity: &'a [u8],
    /// Relative share of the table; 0 means no slot at all.
    pub weight: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("maglev table size {size} is not a prime: use a prime such as 65537")]
    SizeNotPrime { size: u32 },
    #[error("no backend with a weight above 0: add a backend or raise a weight")]
    NoBackends,
    #[error(
        "{count} weighted backends do not fit a maglev table of {size} slots: use a larger prime table size"
    )]
    TooManyBackends { count: usize, size: u32 },
    #[error("backends {first} and {second} have the same identity: identities must be unique")]
    DuplicateIdentity { first: usize, second: usize },
}

/// The checks every build makes, and the backends of weight above 0 in canonical order:
/// by identity, so the caller's order cannot change the table.
fn canonical_order(backends: &[MaglevBackend<'_>], size: u32) -> Result<Vec<usize>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    // Indices are handed back as u32; a slice longer than that could not fit a table anyway.
    if u32::try_from(backends.len()).is_err() {
        return Err(MaglevError::TooManyBackends {
            count: backends.len(),
            size,
        });
    }

    // Canonical order: by identity, so the caller's order cannot change the table.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_unstable_by(|&a, &b| backends[a].identity.cmp(backends[b].identity));
    for pair in order.windows(2) {
        if backends[pair[0]].identity == backends[pair[1]].identity {
            return Err(MaglevError::DuplicateIdentity {
                first: pair[0].min(pair[1]),
                second: pair[0].max(pair[1]),
            });
        }
    }
    order.retain(|&i| backends[i].weight > 0);
    if order.is_empty() {
        return Err(MaglevError::NoBackends);
    }
    if order.len() > size as usize {
        return Err(MaglevError::TooManyBackends {
            count: order.len(),
            size,
        });
    }
    Ok(order)
}

/// Builds the Maglev table: `table[i]` is the index into `backends` of the backend that
/// owns slot `i`. `size` must be a prime (the permutations only cover every slot then).
///
/// Guarantees:
/// - every slot is owned by a backend of weight > 0;
/// - backend `i` owns `floor(w_i * M / W)` or that plus one slots (`W` the sum of
///   weights), the surplus going to the largest remainders: never more than one slot from
///   its exact share. A backend whose share is below one slot can get none.
/// - the result depends only on the set of (identity, weight), `size` and `seed`, not on
///   the order of `backends`.
///
/// Disruption, measured by the tests the way Katran measures it: slots whose owner
/// changed although that owner is in both tables, as a share of M = 65537 (seed 0; the
/// removed backend is the middle one; random weights uniform in 1..=100):
///
/// | N    | remove one, equal w | remove one, random w | add one, equal w | add one, random w |
/// |-----:|--------------------:|---------------------:|-----------------:|------------------:|
/// | 10   | 0.20 %              | 0.18 %               | 0.20 %           | 0.18 %            |
/// | 100  | 0.59 %              | 0.50 %               | 0.57 %           | 0.66 %            |
/// | 1000 | 0.56 %              | 0.25 %               | 0.56 %           | 0.46 %            |
///
/// Over seeds 0..8 the worst case seen was 0.96 % (N = 1000, random weights, add one);
/// the test asserts below 1.5 %. A release build of M = 65537 with 1000 backends takes
/// about 1.7 ms, 10 backends about 1.3 ms (`cargo bench -p lbx-user --bench control --
/// maglev_build`; the heap-and-table version this replaced took 6 to 7 ms).
///
/// Cost: O(M) to order the turns, plus sorting within buckets of at most 2N turns each;
/// then the permutation walks, O(M log M) probes expected, except that the last
/// `ENDGAME_FREE` slots are found by searching the free slots, O(ENDGAME_FREE^2) in all.
pub fn build(
    backends: &[MaglevBackend<'_>],
    size: u32,
    seed: u32,
) -> Result<Vec<u32>, MaglevError> {
    let order = canonical_order(backends, size)?;

    let weights: Vec<u64> = order
        .iter()
        .map(|&i| u64::from(backends[i].weight))
        .collect();
    let quota = quotas(&weights, u64::from(size));

    let walks: Vec<Walk> = order
        .iter()
        .map(|&i| {
            let id = backends[i].identity;
            Walk {
                pos: bytes_hash(id, seed) % size,
                // size >= 2 (it is prime), so size - 1 >= 1; skip in 1..size is coprime to
                // the prime size, so the walk visits every slot.
                skip: bytes_hash(id, seed ^ SKIP_SEED_XOR) % (size - 1) + 1,
            }
        })
        .collect();

    let mut fill = Fill::new(&order, walks, size);
    for turn in turn_order(&weights, &quota, size) {
        fill.claim(turn.k);
    }
    Ok(fill.finish())
}

/// Where a backend's permutation stands: its next preferred slot and its step.
#[derive(Clone, Copy, Debug)]
struct Walk {
    pos: u32,
    skip: u32,
}

/// Below this many free slots a claim stops walking the permutation and instead picks,
/// among the free slots, the one the walk would reach first. Walking to one of `f` free
/// slots takes `size / f` probes on average, so the last few hundred slots take about half
/// of all probes; the search costs `f` multiplications and remainders. At M = 65537 any
/// threshold from 64 to 256 saved the same (about a tenth of the build); 512 saved less.
const ENDGAME_FREE: u32 = 128;

/// The table being filled.
struct Fill<'a> {
    order: &'a [usize],
    walks: Vec<Walk>,
    size: u32,
    table: Vec<u32>,
    /// One bit per slot, set once claimed: the walk probes this (size / 8 bytes, in L1
    /// for M = 65537) instead of the table.
    taken: Vec<u64>,
    /// Slots not yet claimed.
    left: u32,
    /// The free slots, once `left <= ENDGAME_FREE`.
    free: Vec<u32>,
    /// Per backend, the inverse of its skip modulo size once the endgame needs it, else 0.
    inverse: Vec<u32>,
}

impl<'a> Fill<'a> {
    fn new(order: &'a [usize], walks: Vec<Walk>, size: u32) -> Self {
        let free = if size <= ENDGAME_FREE {
            (0..size).collect()
        } else {
            Vec::new()
        };
        Fill {
            inverse: vec![0; walks.len()],
            order,
            walks,
            size,
            table: vec![0; size as usize],
            taken: vec![0; (size as usize).div_ceil(64)],
            left: size,
            free,
        }
    }

    /// Backend `k` claims the next free slot of its permutation. The caller gives no more
    /// turns than there are slots, so a free slot exists.
    fn claim(&mut self, k: u32) {
        let k = k as usize;
        let slot = if self.left > ENDGAME_FREE {
            self.walk(k)
        } else {
            self.nearest_free(k)
        };
        // order[k] < backends.len() <= u32::MAX, checked by build.
        self.table[slot as usize] = self.order[k] as u32;
        self.left -= 1;
        if self.left == ENDGAME_FREE && self.size > ENDGAME_FREE {
            self.free = (0..self.size)
                .filter(|&p| self.taken[p as usize / 64] & (1 << (p % 64)) == 0)
                .collect();
        }
    }

    /// Probes the permutation from the backend's position to the first free slot.
    fn walk(&mut self, k: usize) -> u32 {
        let Walk { mut pos, skip } = self.walks[k];
        let slot = loop {
            let p = pos;
            pos = add_mod(pos, skip, self.size);
            let (word, bit) = (p as usize / 64, 1u64 << (p % 64));
            if self.taken[word] & bit == 0 {
                self.taken[word] |= bit;
                break p;
            }
        };
        self.walks[k].pos = pos;
        slot
    }

    /// The free slot the walk would reach first: slot `s` is `d` steps from `pos` where
    /// `pos + d * skip = s (mod size)`, so `d = (s - pos) * skip^-1 (mod size)`; the
    /// smallest `d` wins (they differ: a permutation visits each slot once).
    fn nearest_free(&mut self, k: usize) -> u32 {
        if self.inverse[k] == 0 {
            self.inverse[k] = inverse_mod(self.walks[k].skip, self.size);
        }
        let (size, inv) = (u64::from(self.size), u64::from(self.inverse[k]));
        let Walk { pos, skip } = self.walks[k];
        let pos = u64::from(pos);
        let mut best = (u64::MAX, 0);
        for (i, &s) in self.free.iter().enumerate() {
            let s = u64::from(s);
            let ahead = if s >= pos { s - pos } else { s + size - pos };
            // ahead, inv < size < 2^32: the product fits u64.
            let d = ahead * inv % size;
            if d < best.0 {
                best = (d, i);
            }
        }
        let slot = self.free.swap_remove(best.1);
        self.walks[k].pos = add_mod(slot, skip, self.size);
        slot
    }

    fn finish(self) -> Vec<u32> {
        debug_assert!(self.left == 0 && self.free.is_empty());
        self.table
    }
}

/// `(a + b) mod m` for `a, b < m`. `a + b` can pass u32::MAX for the largest sizes;
/// stepping back by `m - b` when `a >= m - b` wraps without overflow.
#[inline(always)]
fn add_mod(a: u32, b: u32, m: u32) -> u32 {
    let back = m - b;
    if a >= back { a - back } else { a + b }
}

/// `a^-1 mod m` for `a` in `1..m`, `m` a prime (extended Euclid).
fn inverse_mod(a: u32, m: u32) -> u32 {
    let (mut r0, mut r1) = (i64::from(m), i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    debug_assert_eq!(r0, 1, "{a} is not invertible modulo {m}");
    // |t0| < m, so the result is in 0..m and fits u32.
    t0.rem_euclid(i64::from(m)) as u32
}

/// One turn: backend `k` (canonical index) claiming its `j`-th slot, due at time `j / w_k`.
#[derive(Clone, Copy, Debug, Default)]
struct Turn {
    j: u32,
    k: u32,
}

/// Every turn of the build in the order they are taken: by time `j / w_k`, ties to the
/// earlier backend in canonical order, for `j` in `1..=quota[k]`. That is the order a
/// priority queue merging the backends' turns pops them in; here it comes from a counting
/// sort on the bucket `floor(j * W / w_k)` (`W` the total weight) and an exact sort inside
/// each bucket. The bucket is monotone in the due time, so turns in different buckets are
/// already in order, and the exact comparison settles the rest. A backend's turns up to
/// `floor(w_k * M / W)` land in buckets up to `M`; only its extra largest-remainder slot
/// can lie beyond, so those (fewer than N) share bucket `M` with whatever else is there.
fn turn_order(weights: &[u64], quota: &[u64], size: u32) -> Vec<Turn> {
    // n <= size < 2^32 and each weight < 2^32, so the total fits u64.
    let total: u64 = weights.iter().sum();
    let last = u64::from(size);
    // Counting sort with the bounds one place up: after counting bucket b into
    // bound[b + 2] and summing, bound[b + 1] is where bucket b starts; placing the turns
    // moves it to where b ends, which leaves bucket b at bound[b]..bound[b + 1].
    let mut bound = vec![0u32; size as usize + 3];
    for (&w, &quota) in weights.iter().zip(quota) {
        each_turn(w, quota, total, last, |b, _| bound[b + 2] += 1);
    }
    // Quotas sum to size, so every prefix sum fits u32.
    for b in 2..bound.len() {
        bound[b] += bound[b - 1];
    }
    let mut turns = vec![Turn::default(); size as usize];
    for (k, (&w, &quota)) in weights.iter().zip(quota).enumerate() {
        // k < n <= size <= u32::MAX.
        let k = k as u32;
        each_turn(w, quota, total, last, |b, j| {
            let at = &mut bound[b + 1];
            turns[*at as usize] = Turn { j, k };
            *at += 1;
        });
    }
    // The pairs (j, k) differ, so comparing j / w exactly, then k, is a total order.
    // j <= 2^32 and w < 2^32: the cross products fit u64.
    let earlier = |a: &Turn, b: &Turn| {
        (u64::from(a.j) * weights[b.k as usize])
            .cmp(&(u64::from(b.j) * weights[a.k as usize]))
            .then(a.k.cmp(&b.k))
    };
    for b in bound.windows(2).take(size as usize + 1) {
        let bucket = &mut turns[b[0] as usize..b[1] as usize];
        // Turns are placed by backend, so a bucket of equal weights is in order already.
        if bucket.len() <= 16 {
            insertion_sort(bucket, earlier);
        } else {
            bucket.sort_unstable_by(earlier);
        }
    }
    turns
}

/// Calls `f(bucket, j)` for turn `j` in `1..=quota` of a backend of weight `w`, with
/// bucket = `min(floor(j * total / w), last)`, stepping quotient and remainder rather than
/// dividing per turn.
fn each_turn(w: u64, quota: u64, total: u64, last: u64, mut f: impl FnMut(usize, u32)) {
    let (step, step_rem) = (total / w, total % w);
    let (mut q, mut r) = (0u64, 0u64);
    for j in 1..=quota {
        q = q.saturating_add(step);
        // r < w and step_rem < w < 2^32: no overflow.
        r += step_rem;
        if r >= w {
            r -= w;
            q = q.saturating_add(1);
        }
        // The bucket is at most last <= u32::MAX, and j <= quota <= size.
        f(q.min(last) as usize, j as u32);
    }
}

/// Sorts a short, mostly sorted slice in place without the set-up of the library sorts.
fn insertion_sort<T: Copy>(v: &mut [T], cmp: impl Fn(&T, &T) -> std::cmp::Ordering) {
    for i in 1..v.len() {
        let x = v[i];
        let mut at = i;
        while at > 0 && cmp(&x, &v[at - 1]).is_lt() {
            v[at] = v[at - 1];
            at -= 1;
        }
        v[at] = x;
    }
}

/// Slots per backend by the largest-remainder method: `floor(w * m / W)` each, then one
/// more for the backends with the largest remainders until the sum is `m`. Ties go to
/// the earlier backend in canonical order.
fn quotas(weights: &[u64], m: u64) -> Vec<u64> {
    // w < 2^32 and m < 2^32, so w * m fits u64; total < n * 2^32 fits u64 for any n
    // that fits memory. u128 keeps it obviously safe at no real cost.
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let mut quota = Vec::with_capacity(weights.len());
    let mut rem = Vec::with_capacity(weights.len());
    for &w in weights {
        let exact = u128::from(w) * u128::from(m);
        quota.push((exact / total) as u64);
        rem.push(exact % total);
    }
    let left = m - quota.iter().sum::<u64>();
    let mut by_rem: Vec<usize> = (0..weights.len()).collect();
    by_rem.sort_unstable_by(|&a, &b| rem[b].cmp(&rem[a]).then(a.cmp(&b)));
    // left < n because each remainder is below one slot.
    for &k in &by_rem[..left as usize] {
        quota[k] += 1;
    }
    quota
}

/// Whether `n` is a prime; trial division, at most ~11k steps for any u32.
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;
    use std::collections::BinaryHeap;

    use super::*;
    use lbx_common::DEFAULT_RING_SIZE;

    const M: u32 = DEFAULT_RING_SIZE;

    /// Marks a slot not yet claimed while the reference table is being filled.
    const EMPTY: u32 = u32::MAX;

    /// The build as first written, kept as the definition the fast one must match: a
    /// binary heap hands out the turns, and each walk reads the table to find a free slot.
    fn reference_build(
        backends: &[MaglevBackend<'_>],
        size: u32,
        seed: u32,
    ) -> Result<Vec<u32>, MaglevError> {
        let order = canonical_order(backends, size)?;

        let m = u64::from(size);
        let weights: Vec<u64> = order
            .iter()
            .map(|&i| u64::from(backends[i].weight))
            .collect();
        let quota = quotas(&weights, m);

        let mut pos: Vec<u64> = Vec::with_capacity(order.len());
        let mut skip: Vec<u64> = Vec::with_capacity(order.len());
        for &i in &order {
            let id = backends[i].identity;
            pos.push(u64::from(bytes_hash(id, seed)) % m);
            // size >= 2 (it is prime), so m - 1 >= 1; skip in 1..m is coprime to prime m,
            // so the walk visits every slot.
            skip.push(u64::from(bytes_hash(id, seed ^ SKIP_SEED_XOR)) % (m - 1) + 1);
        }

        let mut table = vec![EMPTY; size as usize];
        let mut taken = vec![0u64; order.len()];
        let mut turns: BinaryHeap<RefTurn> = (0..order.len())
            .filter(|&k| quota[k] > 0)
            .map(|k| RefTurn {
                next: 1,
                weight: weights[k],
                k,
            })
            .collect();

        // Quotas sum to M and a backend only gets a turn below its quota, so a free slot
        // always exists and each walk ends.
        while let Some(mut turn) = turns.pop() {
            let k = turn.k;
            loop {
                let p = pos[k] as usize;
                // pos, skip < m: one subtraction replaces a division.
                pos[k] += skip[k];
                if pos[k] >= m {
                    pos[k] -= m;
                }
                if table[p] == EMPTY {
                    // order[k] < backends.len() <= u32::MAX, checked above.
                    table[p] = order[k] as u32;
                    break;
                }
            }
            taken[k] += 1;
            if taken[k] < quota[k] {
                turn.next = taken[k] + 1;
                turns.push(turn);
            }
        }
        debug_assert!(table.iter().all(|&b| b != EMPTY));
        Ok(table)
    }

    /// A backend's next turn, due at time `next / weight`; the heap pops the earliest, ties
    /// to the earlier backend in canonical order.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct RefTurn {
        next: u64,
        weight: u64,
        k: usize,
    }

    impl Ord for RefTurn {
        fn cmp(&self, other: &Self) -> Ordering {
            // next <= 2^32 and weight < 2^32: the cross products fit u64. Reversed because
            // BinaryHeap pops the greatest.
            (other.next * self.weight)
                .cmp(&(self.next * other.weight))
                .then(other.k.cmp(&self.k))
        }
    }

    impl PartialOrd for RefTurn {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }

    /// splitmix64: deterministic test data without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Identities like the agent's: the backend's IPv4 address bytes.
    fn ids(n: usize) -> Vec<Vec<u8>> {
        (0..n as u32)
            .map(|i| (0x0a00_0000u32 + i).to_be_bytes().to_vec())
            .collect()
    }

    fn set<'a>(ids: &'a [Vec<u8>], weights: &[u32]) -> Vec<MaglevBackend<'a>> {
        ids.iter()
            .zip(weights)
            .map(|(id, &weight)| MaglevBackend {
                identity: id,
                weight,
            })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &b in table {
            c[b as usize] += 1;
        }
        c
    }

    fn random_weights(rng: &mut Rng, n: usize, max: u64) -> Vec<u32> {
        (0..n).map(|_| 1 + rng.below(max) as u32).collect()
    }

    /// Asserts every slot is owned and each backend's slot count is within one slot of
    /// its exact share w * M / W, i.e. |count * W - w * M| < W.
    fn assert_shares(table: &[u32], weights: &[u32]) {
        let m = table.len() as u128;
        let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        let c = counts(table, weights.len());
        for (i, (&count, &w)) in c.iter().zip(weights).enumerate() {
            let have = u128::from(count) * total;
            let want = u128::from(w) * m;
            assert!(
                have.abs_diff(want) < total,
                "backend {i}: {count} slots, weight {w}"
            );
            if w == 0 {
                assert_eq!(count, 0);
            }
        }
    }

    /// Turn order as the reference's heap pops it: (j, k) for every turn.
    fn heap_order(weights: &[u64], quota: &[u64]) -> Vec<(u32, u32)> {
        let mut heap: BinaryHeap<RefTurn> = (0..weights.len())
            .filter(|&k| quota[k] > 0)
            .map(|k| RefTurn {
                next: 1,
                weight: weights[k],
                k,
            })
            .collect();
        let mut out = Vec::new();
        while let Some(mut turn) = heap.pop() {
            out.push((turn.next as u32, turn.k as u32));
            if turn.next < quota[turn.k] {
                turn.next += 1;
                heap.push(turn);
            }
        }
        out
    }

    /// Weights of one of several kinds, so the equivalence tests cover ties, zeros, huge
    /// weights next to tiny ones (whose extra slot lands in the clamped last bucket) and
    /// near-equal huge weights (whose turns fall in the same buckets out of index order).
    fn weights_of_kind(rng: &mut Rng, n: usize, kind: u64) -> Vec<u32> {
        let top = u64::from(u32::MAX);
        (0..n)
            .map(|i| match kind {
                0 => 1 + rng.below(100),
                1 => rng.below(4),
                2 => 1 + rng.below(top),
                3 => 37,
                4 => {
                    if rng.below(8) == 0 {
                        top - rng.below(4)
                    } else {
                        rng.below(3)
                    }
                }
                5 => top - rng.below(64),
                6 => top - i as u64 % 7,
                7 => 1 << rng.below(32),
                _ => u64::from(u16::MAX) - rng.below(2),
            } as u32)
            .collect()
    }

    fn random_ids(rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
        let mut id: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let len = 1 + rng.below(20) as usize;
                (0..len).map(|_| rng.below(256) as u8).collect()
            })
            .collect();
        id.sort();
        id.dedup();
        id
    }

    /// The bucketed turn order is exactly the order the heap pops turns in.
    #[test]
    fn turn_order_matches_heap() {
        let mut rng = Rng(17);
        let mut cases = 0;
        for case in 0..400u64 {
            let size = [7u32, 101, 1021, 65537][case as usize % 4];
            let n = 1 + rng.below(u64::from(size.min(1000))) as usize;
            let w: Vec<u64> = weights_of_kind(&mut rng, n, case / 4 % 9)
                .into_iter()
                .map(u64::from)
                .filter(|&x| x > 0)
                .collect();
            if w.is_empty() {
                continue;
            }
            let quota = quotas(&w, u64::from(size));
            let fast: Vec<(u32, u32)> = turn_order(&w, &quota, size)
                .iter()
                .map(|t| (t.j, t.k))
                .collect();
            let want = heap_order(&w, &quota);
            assert_eq!(want.len(), size as usize);
            assert_eq!(fast.len(), want.len(), "case {case}: turn count");
            if let Some(i) = (0..want.len()).find(|&i| fast[i] != want[i]) {
                panic!(
                    "case {case}, size {size}, n {}: turn {i} is {:?}, the heap pops {:?}",
                    w.len(),
                    fast[i],
                    want[i]
                );
            }
            cases += 1;
        }
        assert!(cases > 300, "only {cases} cases checked");
    }

    /// The fast build equals the reference, table for table, over random sizes, backend
    /// counts, identities, weights and seeds, errors included.
    #[test]
    fn build_matches_reference() {
        let mut rng = Rng(23);
        let (mut tables, mut errors) = (0, 0);
        // Full-size reference tables cost tens of ms each in a debug build: fewer of them.
        for case in 0..600u64 {
            // 2 and 3 are the smallest primes, 131 the first above ENDGAME_FREE.
            let size = if case % 20 == 0 {
                M
            } else {
                [2u32, 3, 7, 101, 131, 1021, 1021][case as usize % 7]
            };
            // Up to 1000 backends, a few more than fit the small sizes (an error then,
            // unless enough weights are 0).
            let most = u64::from(size + 2).min(1000);
            let n = match case % 5 {
                0 => 1 + rng.below(8) as usize,
                1 => most as usize,
                _ => 1 + rng.below(most) as usize,
            };
            let id = if case % 2 == 0 {
                ids(n)
            } else {
                random_ids(&mut rng, n)
            };
            let kind = rng.below(9);
            let w = weights_of_kind(&mut rng, id.len(), kind);
            let seed = rng.next() as u32;
            let backends = set(&id, &w);
            let want = reference_build(&backends, size, seed);
            let got = build(&backends, size, seed);
            if let (Ok(want), Ok(got)) = (&want, &got) {
                if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
                    panic!(
                        "case {case}, size {size}, n {}, seed {seed}: slot {i} is {}, the reference says {}",
                        id.len(),
                        got[i],
                        want[i]
                    );
                }
                tables += 1;
            } else {
                assert_eq!(got, want, "case {case}, size {size}, n {}", id.len());
                errors += 1;
            }
        }
        assert!(
            tables > 400 && errors > 5,
            "only {tables} tables and {errors} errors compared"
        );
    }

    /// Seeds and equal weights at full size, where classic Maglev's round robin applies.
    #[test]
    fn build_matches_reference_full_size() {
        let mut rng = Rng(29);
        for (n, kind) in [
            (1, 0),
            (10, 3),
            (100, 0),
            (1000, 3),
            (1000, 0),
            (1000, 4),
            (997, 6),
        ] {
            let id = ids(n);
            let w = weights_of_kind(&mut rng, n, kind);
            let seed = rng.next() as u32;
            let backends = set(&id, &w);
            assert_eq!(
                build(&backends, M, seed),
                reference_build(&backends, M, seed),
                "n {n}, weight kind {kind}, seed {seed}"
            );
        }
    }

    /// The walk's step and the endgame's inverse at the edges of u32, where a plain
    /// `a + b` would overflow.
    #[test]
    fn modular_helpers() {
        let p = 4_294_967_291; // largest u32 prime
        assert_eq!(add_mod(p - 1, p - 1, p), p - 2);
        assert_eq!(add_mod(p - 1, 1, p), 0);
        assert_eq!(add_mod(0, p - 1, p), p - 1);
        assert_eq!(add_mod(5, 1, 7), 6);
        assert_eq!(add_mod(6, 1, 7), 0);
        let mut rng = Rng(31);
        for m in [2u32, 3, 7, 65537, p] {
            for _ in 0..200 {
                let a = 1 + rng.below(u64::from(m) - 1) as u32;
                let b = rng.below(u64::from(m)) as u32;
                let inv = inverse_mod(a, m);
                assert_eq!(
                    u64::from(a) * u64::from(inv) % u64::from(m),
                    1,
                    "{a}^-1 mod {m}"
                );
                let want = (u64::from(a) + u64::from(b)) % u64::from(m);
                assert_eq!(u64::from(add_mod(a, b, m)), want, "{a} + {b} mod {m}");
            }
        }
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..50).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            small,
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]
        );
        assert!(is_prime(65537));
        assert!(is_prime(1_000_003));
        assert!(!is_prime(65536));
        assert!(!is_prime(1_000_001)); // 101 * 9901
        assert!(is_prime(4_294_967_291)); // largest u32 prime
        assert!(!is_prime(u32::MAX));
    }

    #[test]
    fn errors() {
        let id = ids(3);
        assert_eq!(
            build(&set(&id, &[1, 1, 1]), 100, 0),
            Err(MaglevError::SizeNotPrime { size: 100 })
        );
        assert_eq!(build(&[], M, 0), Err(MaglevError::NoBackends));
        assert_eq!(
            build(&set(&id, &[0, 0, 0]), M, 0),
            Err(MaglevError::NoBackends)
        );
        assert_eq!(
            build(&set(&id, &[1, 1, 1]), 2, 0),
            Err(MaglevError::TooManyBackends { count: 3, size: 2 })
        );
        // Zero-weight backends do not count against the size.
        assert!(build(&set(&id, &[1, 0, 1]), 2, 0).is_ok());
        let dup = [
            MaglevBackend {
                identity: b"a",
                weight: 1,
            },
            MaglevBackend {
                identity: b"b",
                weight: 1,
            },
            MaglevBackend {
                identity: b"a",
                weight: 0,
            },
        ];
        assert_eq!(
            build(&dup, M, 0),
            Err(MaglevError::DuplicateIdentity {
                first: 0,
                second: 2
            })
        );
        assert!(
            MaglevError::SizeNotPrime { size: 100 }
                .to_string()
                .contains("100")
        );
    }

    #[test]
    fn single_backend_owns_everything() {
        let id = ids(2);
        let t = build(&set(&id, &[0, 7]), 101, 3).unwrap();
        assert!(t.iter().all(|&b| b == 1));
    }

    #[test]
    fn equal_weights_split_evenly() {
        let id = ids(7);
        let t = build(&set(&id, &[5; 7]), M, 0).unwrap();
        let c = counts(&t, 7);
        // 65537 = 7 * 9362 + 3
        assert_eq!(c.iter().filter(|&&x| x == 9363).count(), 3);
        assert_eq!(c.iter().filter(|&&x| x == 9362).count(), 4);
    }

    #[test]
    fn deterministic_and_order_independent() {
        let mut rng = Rng(1);
        let id = ids(50);
        let w = random_weights(&mut rng, 50, 100);
        let a = build(&set(&id, &w), M, 42).unwrap();
        assert_eq!(a, build(&set(&id, &w), M, 42).unwrap());

        // Reverse the input: indices change, owners (by identity) must not.
        let rid: Vec<Vec<u8>> = id.iter().rev().cloned().collect();
        let rw: Vec<u32> = w.iter().rev().copied().collect();
        let b = build(&set(&rid, &rw), M, 42).unwrap();
        assert!(
            a.iter()
                .zip(&b)
                .all(|(&x, &y)| id[x as usize] == rid[y as usize])
        );

        // A different seed gives a different table.
        assert_ne!(a, build(&set(&id, &w), M, 43).unwrap());
    }

    const GOLDEN: [u32; 13] = [2, 2, 1, 2, 2, 1, 1, 1, 0, 2, 2, 2, 0];
    const GOLDEN_DIGEST: u64 = 0x4f4c_0a65_30cd_5f28;

    /// Golden value: pins the table format (hash, constants, tie rules). If this changes,
    /// nodes running different versions disagree on flows.
    #[test]
    fn golden() {
        let id = ids(3);
        let t = build(&set(&id, &[1, 2, 3]), 13, 0).unwrap();
        assert_eq!(counts(&t, 3), [2, 4, 7]);
        println!("golden table: {t:?}");
        assert_eq!(t, GOLDEN);
    }

    /// The same for a full-size table, as an FNV-1a digest of its slots.
    #[test]
    fn golden_full_size() {
        let id = ids(10);
        let w: Vec<u32> = (1..=10).collect();
        let t = build(&set(&id, &w), M, 0x1234_5678).unwrap();
        let digest = t.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        println!("golden digest: {digest:#x}");
        assert_eq!(digest, GOLDEN_DIGEST);
    }

    #[test]
    fn property_random_sets() {
        // Many small random cases: filled, exact shares, order independence.
        let mut rng = Rng(7);
        for case in 0..200 {
            // Full-size tables cost ~70 ms each in a debug build: only a few of them.
            let size = if case % 50 == 0 {
                M
            } else {
                [101u32, 257, 1031, 4099][case % 4]
            };
            let n = 1 + rng.below(60) as usize;
            let id: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let len = 1 + rng.below(20) as usize;
                    (0..len).map(|_| rng.below(256) as u8).collect()
                })
                .collect();
            let mut id = id;
            id.sort();
            id.dedup();
            let n = id.len();
            let w: Vec<u32> = (0..n).map(|_| rng.below(1000) as u32).collect();
            let seed = rng.next() as u32;
            let r = build(&set(&id, &w), size, seed);
            if w.iter().all(|&x| x == 0) {
                assert_eq!(r, Err(MaglevError::NoBackends));
                continue;
            }
            let t = r.unwrap();
            assert_eq!(t.len(), size as usize);
            assert_shares(&t, &w);

            // Shuffle (Fisher-Yates) and compare owners by identity.
            let mut perm: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                perm.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let sid: Vec<Vec<u8>> = perm.iter().map(|&i| id[i].clone()).collect();
            let sw: Vec<u32> = perm.iter().map(|&i| w[i]).collect();
            let s = build(&set(&sid, &sw), size, seed).unwrap();
            assert!(
                t.iter()
                    .zip(&s)
                    .all(|(&x, &y)| id[x as usize] == sid[y as usize])
            );
        }
    }

    /// Slot shares for M = 65537 and up to 1000 backends with random weights.
    ///
    /// Asserted: every backend's slot count is within one slot of its exact share
    /// (strictly less than 1 slot away). That implies the 1% target for every backend
    /// whose share is at least 100 slots, which is checked too; below 100 slots a 1%
    /// bound is finer than one slot and no integer table can meet it.
    #[test]
    fn weighted_shares() {
        let mut rng = Rng(3);
        let mut worst_rel = 0f64;
        for (n, max_w) in [(2, 10), (10, 100), (100, 1000), (1000, 100), (1000, 65535)] {
            let id = ids(n);
            let w = random_weights(&mut rng, n, max_w);
            let t = build(&set(&id, &w), M, 0).unwrap();
            assert_shares(&t, &w);
            let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
            let c = counts(&t, n);
            let mut worst_abs = 0f64;
            for (&count, &wi) in c.iter().zip(&w) {
                let share = f64::from(wi) * f64::from(M) / total;
                let dev = (count as f64 - share).abs();
                worst_abs = worst_abs.max(dev);
                if share >= 100.0 {
                    let rel = dev / share;
                    assert!(rel < 0.01, "share {share}, count {count}");
                    worst_rel = worst_rel.max(rel);
                }
            }
            println!("shares: N={n:4} weights 1..={max_w:5}: worst deviation {worst_abs:.3} slots");
        }
        println!(
            "shares: worst relative deviation (shares >= 100 slots) {:.4} %",
            worst_rel * 100.0
        );
    }

    /// Katran's measure: slots whose owner changed although that owner is in both
    /// tables, as a percentage of M. `map` takes an owner in `before` to its index in
    /// `after` (None: removed); slots that went to the `added` backend are the wanted
    /// movement and are not counted.
    fn moved_pct(
        before: &[u32],
        after: &[u32],
        map: impl Fn(u32) -> Option<u32>,
        added: Option<u32>,
    ) -> f64 {
        let moved = before
            .iter()
            .zip(after)
            .filter(|&(&b, &a)| map(b).is_some_and(|b| b != a) && Some(a) != added)
            .count();
        100.0 * moved as f64 / before.len() as f64
    }

    /// Removing one of N backends, and adding one to N: disruption among the others.
    /// Asserted: under 1.5 % of M for every case (measured 0.18..0.66 %, printed and
    /// recorded on `build`; 0.96 % the worst over seeds 0..8).
    #[test]
    fn disruption() {
        let mut rng = Rng(11);
        for n in [10usize, 100, 1000] {
            for random in [false, true] {
                let id = ids(n + 1);
                let w: Vec<u32> = if random {
                    random_weights(&mut rng, n + 1, 100)
                } else {
                    vec![100; n + 1]
                };
                let base = build(&set(&id[..n], &w[..n]), M, 0).unwrap();

                // Remove a middle backend of the n.
                let gone = n / 2;
                let mut rid = id[..n].to_vec();
                let mut rw = w[..n].to_vec();
                rid.remove(gone);
                rw.remove(gone);
                let removed = build(&set(&rid, &rw), M, 0).unwrap();
                let shift = |b: u32| match (b as usize).cmp(&gone) {
                    Ordering::Less => Some(b),
                    Ordering::Equal => None,
                    Ordering::Greater => Some(b - 1),
                };
                let remove_pct = moved_pct(&base, &removed, shift, None);

                // Add backend n; the old ones keep their indices.
                let grown = build(&set(&id, &w), M, 0).unwrap();
                let add_pct = moved_pct(&base, &grown, Some, Some(n as u32));

                let kind = if random { "random" } else { "equal " };
                println!(
                    "disruption: N={n:4} {kind} weights: remove one {remove_pct:.2} %, add one {add_pct:.2} %"
                );
                assert!(remove_pct < 1.5, "N={n} remove: {remove_pct}");
                assert!(add_pct < 1.5, "N={n} add: {add_pct}");
            }
        }
    }

    #[test]
    fn build_time() {
        let mut rng = Rng(5);
        let id = ids(1000);
        let w = random_weights(&mut rng, 1000, 100);
        let start = std::time::Instant::now();
        let t = build(&set(&id, &w), M, 0).unwrap();
        let took = start.elapsed();
        assert_eq!(t.len(), M as usize);
        println!("build time: M={M}, 1000 backends: {took:?}");
        // Only meaningful with optimisations; 10x margin against a slow CI machine.
        if !cfg!(debug_assertions) {
            assert!(took.as_millis() < 50, "{took:?}");
        }
    }
}
