//! How a worker's time goes: busy (rounds that moved frames), idle (spinning, yielding,
//! asleep), and stalls (stretches of rounds that took too long).
//!
//! Written by its worker alone (relaxed stores), read by anyone; no locks, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Time one worker spent in rounds that moved frames and in the others, in nanoseconds since
/// it started. Written by the worker alone (relaxed stores), read by anyone.
#[derive(Debug, Default)]
pub(crate) struct WorkerTime {
    busy_ns: AtomicU64,
    idle_ns: AtomicU64,
    /// Stretches between two looks at the clock (control commands, then up to `clock_rounds`
    /// busy rounds, or one idle round) that took longer than [`STALL`].
    stalls: AtomicU64,
}

/// A loop iteration longer than this is a stall: counted and logged. An iteration that moves
/// a full batch takes tens of microseconds; this long means the thread did not run (a busy or
/// contended CPU) or a system call blocked.
pub(crate) const STALL: Duration = Duration::from_millis(100);

impl WorkerTime {
    /// (busy, idle) so far.
    pub(crate) fn read(&self) -> (Duration, Duration) {
        (
            Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed)),
            Duration::from_nanos(self.idle_ns.load(Ordering::Relaxed)),
        )
    }

    /// Stalls so far ([`STALL`]).
    pub(crate) fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Counts and logs a loop iteration of `took` if it is a stall.
    #[inline]
    pub(super) fn check(&self, worker: usize, took: Duration, rounds: u32, commands: usize) {
        if took > STALL {
            self.stall(worker, took, rounds, commands);
        }
    }

    #[cold]
    fn stall(&self, worker: usize, took: Duration, rounds: u32, commands: usize) {
        let n = self.stalls.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            worker,
            ms = took.as_millis() as u64,
            rounds,
            commands,
            stalls = n,
            "data plane stalled: {rounds} round(s) of reading and forwarding (after {commands} control command(s)) took over {} ms; the thread did not get a CPU (a busy or contended CPU: see node.cpus) or a write blocked",
            STALL.as_millis()
        );
    }
}

/// The worker's side of [`WorkerTime`]: totals kept locally, published on each clock read.
pub(super) struct TimeAccount<'a> {
    published: &'a WorkerTime,
    last: Instant,
    busy: u64,
    idle: u64,
}

impl<'a> TimeAccount<'a> {
    pub(super) fn new(published: &'a WorkerTime, now: Instant) -> Self {
        Self {
            published,
            last: now,
            busy: 0,
            idle: 0,
        }
    }

    /// The time since the last call goes to busy or idle.
    #[inline]
    pub(super) fn account(&mut self, now: Instant, busy: bool) {
        let ns = now.saturating_duration_since(self.last).as_nanos() as u64;
        self.last = now;
        if busy {
            self.busy += ns;
            self.published.busy_ns.store(self.busy, Ordering::Relaxed);
        } else {
            self.idle += ns;
            self.published.idle_ns.store(self.idle, Ordering::Relaxed);
        }
    }
}
