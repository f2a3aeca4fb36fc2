//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4).
//!
//! Each backend has a preference list over the `M` slots of a lookup table (a permutation
//! given by an offset and a skip derived from two independent hashes of the backend's
//! address); the backends take turns claiming their next preferred free slot until the table
//! is full. `M` is prime, so every skip generates a full permutation.
//!
//! Properties (tested below): every backend owns `M / N` or `M / N + 1` slots (the turns are
//! round-robin); removing or adding one backend moves few slots besides those it owned or
//! takes (the paper's minimal disruption, not perfect but close when `M >= 100 N`); the table
//! depends only on the backends, in order, so every node and every run builds the same one.
//!
//! A change of `M` (the backend count crossing a size step of [`TABLE_SIZES`]) remaps almost
//! every slot: connection tracking keeps established flows on their backend regardless.

use std::net::SocketAddrV4;

/// Table sizes (primes): the smallest that is at least 100 × the backend count is used, the
/// last one beyond.
pub(crate) const TABLE_SIZES: [usize; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// Most backends a table holds: each gets at least 10 slots of the largest table, so its share
/// of new flows is within about 10% of an equal share. Backends beyond are ignored by the
/// table builder; the topology refuses a service with more.
pub const MAX_BACKENDS: usize = 65521 / 10;

/// Marks a free slot while the table is filled (never a backend index: `MAX_BACKENDS` is below).
const FREE: u16 = u16::MAX;

/// Seeds of the two hashes of a backend (offset and skip): arbitrary, fixed constants, so the
/// table is the same in every process.
const SEED_OFFSET: u64 = 0x2545_f491_4f6c_dd1d;
const SEED_SKIP: u64 = 0x9e6c_63d0_676a_9a99;

/// The table size for `backends` backends (0 without backends).
pub(crate) fn table_size(backends: usize) -> usize {
    if backends == 0 {
        return 0;
    }
    let want = backends.saturating_mul(100);
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&m| m >= want)
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

/// A 64-bit finaliser with full avalanche (Stafford's variant 13, as in splitmix64), keyed by
/// `seed`. Stable: no per-process randomness.
#[inline]
pub(crate) fn hash64(k: u64, seed: u64) -> u64 {
    let mut z = k ^ seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The backend's identity as a number: its address and port bytes, in network order.
fn backend_key(b: &SocketAddrV4) -> u64 {
    let ip = b.ip().octets();
    let port = b.port().to_be_bytes();
    u64::from_be_bytes([0, 0, ip[0], ip[1], ip[2], ip[3], port[0], port[1]])
}

/// Builds the lookup table of `backends` (indices into the slice; see [`MAX_BACKENDS`]).
/// Empty without backends.
pub(crate) fn build(backends: &[SocketAddrV4]) -> Vec<u16> {
    let backends = &backends[..backends.len().min(MAX_BACKENDS)];
    let m = table_size(backends.len());
    if m == 0 {
        return Vec::new();
    }
    let m64 = m as u64;
    // Per backend: the slot its preference list is at (`permutation[i][next[i]]` of the
    // paper, advanced by `skip` instead of recomputed) and its skip.
    let mut cursor: Vec<(usize, usize)> = backends
        .iter()
        .map(|b| {
            let k = backend_key(b);
            let offset = (hash64(k, SEED_OFFSET) % m64) as usize;
            let skip = (hash64(k, SEED_SKIP) % (m64 - 1) + 1) as usize;
            (offset, skip)
        })
        .collect();
    let mut table = vec![FREE; m];
    let mut filled = 0;
    'fill: loop {
        for (i, (pos, skip)) in cursor.iter_mut().enumerate() {
            // A free slot exists (filled < m) and the preference list visits every slot.
            while table[*pos] != FREE {
                *pos += *skip;
                if *pos >= m {
                    *pos -= m;
                }
            }
            table[*pos] = i as u16;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

/// The backend index for `flow_hash`, or `None` for an empty table. The slot is chosen from the
/// hash's high bits by a multiply (Lemire's reduction), not a division.
#[inline]
pub(crate) fn lookup(table: &[u16], flow_hash: u64) -> Option<u16> {
    if table.is_empty() {
        return None;
    }
    let slot = ((u128::from(flow_hash) * table.len() as u128) >> 64) as usize;
    table.get(slot).copied()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn backends(n: usize, seed: u8) -> Vec<SocketAddrV4> {
        (0..n)
            .map(|i| {
                SocketAddrV4::new(
                    Ipv4Addr::new(10, 244, seed, 10 + i as u8),
                    8080 + (i % 3) as u16,
                )
            })
            .collect()
    }

    fn counts(table: &[u16], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in table {
            c[usize::from(i)] += 1;
        }
        c
    }

    /// Slots whose backend (by address) differs between two tables of the same size, leaving
    /// out slots that belonged to `except` in either.
    fn moved(
        a: &[u16],
        a_backends: &[SocketAddrV4],
        b: &[u16],
        b_backends: &[SocketAddrV4],
        except: SocketAddrV4,
    ) -> usize {
        assert_eq!(a.len(), b.len(), "same table size");
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (a_backends[usize::from(x)], b_backends[usize::from(y)]))
            .filter(|&(x, y)| x != except && y != except && x != y)
            .count()
    }

    #[test]
    fn table_sizes_follow_the_backend_count() {
        assert_eq!(table_size(0), 0);
        assert_eq!(table_size(1), 251);
        assert_eq!(table_size(2), 251);
        assert_eq!(table_size(3), 509);
        assert_eq!(table_size(10), 1021);
        assert_eq!(table_size(11), 2039);
        assert_eq!(table_size(100), 16381);
        assert_eq!(table_size(655), 65521);
        assert_eq!(table_size(MAX_BACKENDS), 65521);
        assert_eq!(table_size(usize::MAX), 65521);
    }

    #[test]
    fn every_backend_gets_an_equal_share() {
        for n in 1..=20 {
            for seed in 0..4 {
                let b = backends(n, seed);
                let t = build(&b);
                assert_eq!(t.len(), table_size(n));
                let share = t.len() / n;
                for (i, c) in counts(&t, n).into_iter().enumerate() {
                    // Round-robin turns: M / N or one more, at most 1% off an equal share here.
                    assert!(
                        c == share || c == share + 1,
                        "n={n} seed={seed} backend {i}: {c} slots of {}",
                        t.len()
                    );
                }
            }
        }
    }

    #[test]
    fn the_largest_table_holds_max_backends() {
        let b: Vec<SocketAddrV4> = (0..MAX_BACKENDS as u32 + 5)
            .map(|i| SocketAddrV4::new(Ipv4Addr::from(0x0af4_0000 + i), 80))
            .collect();
        let t = build(&b);
        assert_eq!(t.len(), 65521);
        let c = counts(&t, MAX_BACKENDS);
        assert!(c.iter().all(|&c| c == 10 || c == 11), "{:?}", &c[..20]);
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        for seed in 0..8 {
            let before = backends(10, seed);
            let t0 = build(&before);
            for gone in 0..10 {
                let mut after = before.clone();
                let removed = after.remove(gone);
                let t1 = build(&after);
                // Every slot of the removed backend moves (about M/10); the rest should mostly
                // stay: the paper's property.
                let m = moved(&t0, &before, &t1, &after, removed);
                assert!(
                    m * 20 < t0.len(),
                    "seed {seed}, removed {gone}: {m} of {} other slots moved",
                    t0.len()
                );
            }
        }
    }

    #[test]
    fn adding_a_backend_moves_few_other_slots() {
        // 9 -> 10 backends keeps M = 1021 (10 -> 11 would change it and remap everything).
        for seed in 0..8 {
            let all = backends(10, seed);
            for added in 0..10 {
                let mut before = all.clone();
                before.remove(added);
                let (t0, t1) = (build(&before), build(&all));
                let m = moved(&t0, &before, &t1, &all, all[added]);
                assert!(
                    m * 20 < t0.len(),
                    "seed {seed}, added {added}: {m} of {} other slots moved",
                    t0.len()
                );
            }
        }
    }

    #[test]
    fn same_backends_same_table_in_every_process() {
        let b = backends(5, 1);
        assert_eq!(build(&b), build(&b.clone()));
        // Pinned: a change of hash or fill order changes every node's choices at once.
        let t = build(&b);
        assert_eq!(t.len(), 509);
        assert_eq!(&t[..16], PINNED, "{:?}", &t[..16]);
    }
    const PINNED: &[u16] = &[4, 0, 4, 2, 4, 0, 4, 1, 4, 3, 0, 1, 2, 3, 0, 2];

    #[test]
    fn one_backend_and_none() {
        let t = build(&backends(1, 0));
        assert_eq!(t.len(), 251);
        assert!(t.iter().all(|&i| i == 0));
        assert_eq!(lookup(&t, 0), Some(0));
        assert_eq!(lookup(&t, u64::MAX), Some(0));
        assert!(build(&[]).is_empty());
        assert_eq!(lookup(&[], 12345), None);
    }

    #[test]
    fn lookup_spreads_hashes_over_the_slots() {
        let b = backends(3, 0);
        let t = build(&b);
        let mut hits = [0usize; 3];
        let mut s = 1u64;
        for _ in 0..30_000 {
            s = hash64(s, 7);
            hits[usize::from(lookup(&t, s).expect("backend"))] += 1;
        }
        for h in hits {
            assert!((9_000..11_000).contains(&h), "{hits:?}");
        }
    }
}
