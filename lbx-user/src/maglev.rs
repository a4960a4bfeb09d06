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

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use lbx_common::hash::bytes_hash;

/// Mixed into the seed for the second (skip) hash so offset and skip are independent.
const SKIP_SEED_XOR: u32 = 0x9e37_79b9;

/// Marks a slot not yet claimed while the table is being filled.
const EMPTY: u32 = u32::MAX;

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
/// about 8 ms.
///
/// Cost: O(M log N) for the turns plus the permutation walks (O(M log M) expected).
pub fn build(
    backends: &[MaglevBackend<'_>],
    size: u32,
    seed: u32,
) -> Result<Vec<u32>, MaglevError> {
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
    let mut turns: BinaryHeap<Turn> = (0..order.len())
        .filter(|&k| quota[k] > 0)
        .map(|k| Turn {
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

/// A backend's next turn, due at time `next / weight`; the heap pops the earliest, ties
/// to the earlier backend in canonical order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Turn {
    next: u64,
    weight: u64,
    k: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // next <= 2^32 and weight < 2^32: the cross products fit u64. Reversed because
        // BinaryHeap pops the greatest.
        (other.next * self.weight)
            .cmp(&(self.next * other.weight))
            .then(other.k.cmp(&self.k))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
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
    use super::*;
    use lbx_common::DEFAULT_RING_SIZE;

    const M: u32 = DEFAULT_RING_SIZE;

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
