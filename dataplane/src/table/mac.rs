//! The MAC table: learned and static MAC -> port entries, read lock-free.
//!
//! Invariants:
//! - A published [`MacSnapshot`] is never mutated except for entry timestamps (atomics).
//! - Dynamic entries never exceed `capacity`; a learn that would exceed it is refused and
//!   counted in `full_events`. Static entries are always accepted.
//! - Entries are stored inline; a writer copying a shard copies the timestamps as they are. A
//!   refresh that lands on a snapshot just replaced is lost, which at worst ages an active MAC
//!   one refresh (one second) early in a 300 s window; in exchange, dropping an old shard frees
//!   one allocation instead of touching a reference count per entry.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{mix, FastMap, PortId};

/// Shards per snapshot: a writer copies one shard (1/64 of the table) per change.
const SHARDS: usize = 64;

/// Settings of a MAC table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacTableConfig {
    /// Most dynamic (learned) entries held at once.
    pub capacity: usize,
    /// A learned entry not refreshed for this long is removed by `MacTable::age`.
    pub ageing: Duration,
}

impl Default for MacTableConfig {
    fn default() -> Self {
        Self {
            capacity: 16384,
            ageing: Duration::from_secs(300),
        }
    }
}

/// One MAC table entry.
#[derive(Debug)]
pub struct MacEntry {
    /// Port the MAC lives behind.
    pub port: PortId,
    /// Static entries are never aged out or moved by learning.
    pub is_static: bool,
    /// Coarse time (seconds since the table was made) the MAC was last seen as a source.
    last_seen: AtomicU32,
}

impl Clone for MacEntry {
    fn clone(&self) -> Self {
        entry(self.port, self.is_static, self.last_seen())
    }
}

impl MacEntry {
    /// Seconds (table clock) the MAC was last seen.
    pub fn last_seen(&self) -> u32 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// Records that the MAC was seen at `now`. Writes only when the second changed, so the hot
    /// path does not bounce the cache line between cores.
    #[inline]
    pub(crate) fn touch(&self, now: u32) {
        if self.last_seen.load(Ordering::Relaxed) != now {
            self.last_seen.store(now, Ordering::Relaxed);
        }
    }
}

#[inline]
fn shard_of(key: u64) -> usize {
    (mix(key) >> 32) as usize & (SHARDS - 1)
}

type Shard = FastMap<u64, MacEntry>;

/// An immutable view of the MAC table.
#[derive(Debug, Clone)]
pub struct MacSnapshot {
    shards: Vec<Arc<Shard>>,
    dynamic_len: usize,
    static_len: usize,
}

impl MacSnapshot {
    fn empty() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
            dynamic_len: 0,
            static_len: 0,
        }
    }

    /// The entry for a MAC key (see [`crate::wire::mac_key`]).
    #[inline]
    pub fn get(&self, key: u64) -> Option<&MacEntry> {
        self.shards[shard_of(key)].get(&key)
    }

    /// Number of entries, static and learned.
    pub fn len(&self) -> usize {
        self.dynamic_len + self.static_len
    }

    /// True if the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry as `(mac key, entry)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &MacEntry)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, e)| (*k, e)))
    }
}

/// The MAC table. Cheap to read from any thread; see the module invariants.
#[derive(Debug)]
pub struct MacTable {
    snapshot: ArcSwap<MacSnapshot>,
    writer: Mutex<()>,
    config: MacTableConfig,
    epoch: Instant,
    full_events: AtomicU64,
}

/// What a [`MacTable::learn`] call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LearnOutcome {
    /// New entries.
    pub added: usize,
    /// Entries that moved to another port.
    pub moved: usize,
    /// Learns refused because the table was full.
    pub(crate) refused: usize,
}

impl MacTable {
    /// An empty table.
    pub fn new(config: MacTableConfig) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(MacSnapshot::empty()),
            writer: Mutex::new(()),
            config,
            epoch: Instant::now(),
            full_events: AtomicU64::new(0),
        }
    }

    /// The current snapshot. Load once per batch; the snapshot stays valid (and unchanged) for as
    /// long as it is held.
    #[inline]
    pub fn load(&self) -> Arc<MacSnapshot> {
        self.snapshot.load_full()
    }

    /// The table clock: whole seconds since the table was made.
    #[inline]
    pub fn now(&self) -> u32 {
        self.clock(Instant::now())
    }

    /// The table clock at `t`.
    pub(crate) fn clock(&self, t: Instant) -> u32 {
        u32::try_from(t.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// Most learned (dynamic) entries.
    pub fn capacity(&self) -> usize {
        self.config.capacity
    }

    /// How many learns were refused because the table was full, since it was made.
    pub fn full_events(&self) -> u64 {
        self.full_events.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a writer that panicked left nothing half-done to observe.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Learns `(mac key, port)` pairs seen at `now`: new MACs are added, MACs seen on a new port
    /// move (unless static). Known MACs on their port are only touched, and new MACs a full
    /// table refuses are only counted, both without copying anything: only a slice with an
    /// addition or a move copies (once per shard it changes) and publishes a snapshot. A flood
    /// of new source MACs into a full table thus costs a lookup each, not a shard copy.
    pub fn learn(&self, seen: &[(u64, PortId)], now: u32) -> LearnOutcome {
        let mut out = LearnOutcome::default();
        if seen.is_empty() {
            return out;
        }
        let _w = self.lock();
        let current = self.snapshot.load();
        // What changes the table, found on the published snapshot (most batches: nothing).
        let mut writes = Vec::new();
        let mut adding = 0;
        for &(key, port) in seen {
            match current.shards[shard_of(key)].get(&key) {
                Some(e) if e.is_static || e.port == port => e.touch(now),
                Some(_) => writes.push((key, port)),
                None if current.dynamic_len + adding >= self.config.capacity => out.refused += 1,
                None => {
                    writes.push((key, port));
                    adding += 1;
                }
            }
        }
        if !writes.is_empty() {
            let mut next = MacSnapshot::clone(&current);
            for (key, port) in writes {
                let shard = Arc::make_mut(&mut next.shards[shard_of(key)]);
                match shard.get(&key) {
                    // A new MAC seen twice in the slice: added by the first.
                    Some(e) if e.port == port => e.touch(now),
                    Some(_) => {
                        shard.insert(key, entry(port, false, now));
                        out.moved += 1;
                    }
                    None => {
                        shard.insert(key, entry(port, false, now));
                        next.dynamic_len += 1;
                        out.added += 1;
                    }
                }
            }
            self.snapshot.store(Arc::new(next));
        }
        if out.refused > 0 {
            self.full_events
                .fetch_add(out.refused as u64, Ordering::Relaxed);
        }
        out
    }

    /// Adds or replaces a static entry (never aged, never moved by learning).
    pub fn insert_static(&self, key: u64, port: PortId) {
        let _w = self.lock();
        let mut next = MacSnapshot::clone(&self.snapshot.load());
        let shard = Arc::make_mut(&mut next.shards[shard_of(key)]);
        match shard.insert(key, entry(port, true, self.now())) {
            Some(old) if !old.is_static => {
                next.dynamic_len -= 1;
                next.static_len += 1;
            }
            Some(_) => {}
            None => next.static_len += 1,
        }
        self.snapshot.store(Arc::new(next));
    }

    /// Removes the entry for `key`, static or learned. Returns whether there was one.
    #[cfg(test)]
    pub(crate) fn remove(&self, key: u64) -> bool {
        self.retain_where(|k, _| k != key) > 0
    }

    /// Removes every entry pointing at `port` (the port is going away).
    pub(crate) fn flush_port(&self, port: PortId) -> usize {
        self.retain_where(|_, e| e.port != port)
    }

    /// Removes learned entries not seen for the ageing time, as of `now`. Returns how many.
    pub(crate) fn age(&self, now: u32) -> usize {
        let ageing = u32::try_from(self.config.ageing.as_secs()).unwrap_or(u32::MAX);
        self.retain_where(|_, e| e.is_static || now.saturating_sub(e.last_seen()) < ageing)
    }

    /// Keeps entries for which `keep` holds; copies only the shards that change.
    fn retain_where(&self, mut keep: impl FnMut(u64, &MacEntry) -> bool) -> usize {
        let _w = self.lock();
        let mut next = MacSnapshot::clone(&self.snapshot.load());
        let mut removed = 0;
        for i in 0..SHARDS {
            if next.shards[i].iter().all(|(k, e)| keep(*k, e)) {
                continue;
            }
            let shard = Arc::make_mut(&mut next.shards[i]);
            shard.retain(|k, e| {
                let kept = keep(*k, e);
                if !kept {
                    removed += 1;
                    if e.is_static {
                        next.static_len -= 1;
                    } else {
                        next.dynamic_len -= 1;
                    }
                }
                kept
            });
        }
        if removed > 0 {
            self.snapshot.store(Arc::new(next));
        }
        removed
    }
}

fn entry(port: PortId, is_static: bool, now: u32) -> MacEntry {
    MacEntry {
        port,
        is_static,
        last_seen: AtomicU32::new(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_and_refusals_publish_nothing_and_copy_nothing() {
        let t = table(4, 300);
        let out = t.learn(&[(1, 1), (2, 1), (3, 2), (4, 2)], 5);
        assert_eq!((out.added, out.moved, out.refused), (4, 0, 0));
        let before = t.load();
        // Known MACs on their ports, and new ones a full table refuses: the snapshot stays
        // the same object (no copy, no publish); the touch is seen through it.
        let out = t.learn(&[(1, 1), (3, 2), (9, 1), (10, 3)], 7);
        assert_eq!((out.added, out.moved, out.refused), (0, 0, 2));
        assert!(Arc::ptr_eq(&before, &t.load()), "nothing copied");
        assert_eq!(before.get(1).map(MacEntry::last_seen), Some(7));
        assert_eq!(t.full_events(), 2);
        // A move (and a new MAC seen twice in one slice, once there is room) does publish.
        let out = t.learn(&[(1, 2)], 8);
        assert_eq!((out.added, out.moved), (0, 1));
        assert!(!Arc::ptr_eq(&before, &t.load()));
        let t = table(8, 300);
        let out = t.learn(&[(5, 1), (5, 1), (6, 1)], 1);
        assert_eq!((out.added, out.moved, out.refused), (2, 0, 0));
        assert_eq!(t.load().len(), 2);
    }

    fn table(capacity: usize, ageing_s: u64) -> MacTable {
        MacTable::new(MacTableConfig {
            capacity,
            ageing: Duration::from_secs(ageing_s),
        })
    }

    #[test]
    fn learns_moves_and_keeps_old_snapshots_intact() {
        let t = table(16, 300);
        let before = t.load();
        let out = t.learn(&[(0xa, 1), (0xb, 2)], 0);
        assert_eq!(
            out,
            LearnOutcome {
                added: 2,
                moved: 0,
                refused: 0
            }
        );
        assert!(
            before.get(0xa).is_none(),
            "published snapshots never change"
        );
        let s = t.load();
        assert_eq!(s.get(0xa).map(|e| e.port), Some(1));
        assert_eq!(s.get(0xb).map(|e| e.port), Some(2));
        assert_eq!(t.learn(&[(0xa, 3)], 1).moved, 1);
        assert_eq!(t.load().get(0xa).map(|e| e.port), Some(3));
        assert_eq!(s.get(0xa).map(|e| e.port), Some(1));
        assert_eq!(t.load().len(), 2);
    }

    #[test]
    fn static_entries_do_not_move_or_age() {
        let t = table(16, 10);
        t.insert_static(0xa, 1);
        assert_eq!(t.learn(&[(0xa, 2)], 0), LearnOutcome::default());
        assert_eq!(
            t.load().get(0xa).map(|e| (e.port, e.is_static)),
            Some((1, true))
        );
        assert_eq!(t.age(1_000_000), 0);
        assert!(t.remove(0xa));
        assert!(t.load().is_empty());
    }

    #[test]
    fn ageing_removes_only_stale_learned_entries() {
        let t = table(16, 10);
        t.learn(&[(0xa, 1), (0xb, 1)], 0);
        t.load().get(0xb).expect("learned").touch(8);
        assert_eq!(t.age(9), 0);
        assert_eq!(t.age(10), 1);
        let s = t.load();
        assert!(s.get(0xa).is_none());
        assert!(s.get(0xb).is_some());
        assert_eq!(t.age(18), 1);
        assert!(t.load().is_empty());
    }

    #[test]
    fn capacity_bounds_learning_and_counts_refusals() {
        let t = table(3, 300);
        let seen: Vec<(u64, PortId)> = (0..5).map(|k| (k, 1)).collect();
        let out = t.learn(&seen, 0);
        assert_eq!((out.added, out.refused), (3, 2));
        assert_eq!(t.full_events(), 2);
        t.insert_static(100, 2);
        assert_eq!(
            t.load().len(),
            4,
            "static entries are accepted beyond the bound"
        );
        assert_eq!(t.flush_port(1), 3);
        assert_eq!(t.learn(&[(7, 1)], 0).added, 1);
    }

    #[test]
    fn many_entries_spread_over_shards() {
        let t = table(100_000, 300);
        let seen: Vec<(u64, PortId)> = (0..50_000u64).map(|k| (0x0200_0000_0000 | k, 7)).collect();
        t.learn(&seen, 0);
        let s = t.load();
        assert_eq!(s.len(), 50_000);
        assert!(seen
            .iter()
            .all(|(k, _)| s.get(*k).map(|e| e.port) == Some(7)));
        let biggest = s.shards.iter().map(|s| s.len()).max().unwrap_or(0);
        assert!(
            biggest < 50_000 / SHARDS * 2,
            "unbalanced shards: {biggest}"
        );
    }

    #[test]
    fn readers_see_consistent_snapshots_while_a_writer_learns() {
        let t = Arc::new(table(1 << 20, 300));
        let writer = {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                for k in 0..2000u64 {
                    t.learn(&[(k, (k % 7) as PortId)], 0);
                }
            })
        };
        let mut last = 0;
        while !writer.is_finished() {
            let s = t.load();
            assert!(s.len() >= last, "a later snapshot lost entries");
            last = s.len();
            for k in 0..last as u64 {
                assert_eq!(s.get(k).map(|e| e.port), Some((k % 7) as PortId));
            }
        }
        writer.join().expect("writer");
        assert_eq!(t.load().len(), 2000);
    }
}
