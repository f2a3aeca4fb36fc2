//! The daemon's housekeeping, every [`HOUSEKEEPING_EVERY`] while the node runs: pods whose
//! namespace vanished are reaped, expired flows removed, and the tracked flows saved for a
//! start after a crash at most every [`SAVE_FLOWS_EVERY`].
//!
//! [`Housekeeping::tick`] is the decision alone (time in, chores out), so it is tested
//! without a node or a clock; [`Chores::run_on`] does them.
//!
//! Invariants: every tick reaps and expires (no decision: [`Chores::run_on`] always does);
//! flows are saved on the first tick at least
//! [`SAVE_FLOWS_EVERY`] after the last save (or the start), once however late that tick is,
//! and the wait for the next save starts at that tick.

use std::time::{Duration, Instant};

use crate::node::{Node, SAVE_FLOWS_EVERY};

/// How often the housekeeping runs.
pub(crate) const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(500);

/// What the housekeeping remembers between ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Housekeeping {
    /// When the flows were last saved (or the housekeeping started).
    saved: Instant,
}

/// What one tick does: always forget the pods whose namespace is gone and remove the flows
/// that timed out; sometimes save the tracked flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chores {
    /// Save the tracked flows (for a start after a crash).
    pub(crate) save_flows: bool,
}

impl Housekeeping {
    /// Starting at `now`: the first save is due [`SAVE_FLOWS_EVERY`] later.
    pub(crate) fn new(now: Instant) -> Self {
        Self { saved: now }
    }

    /// The chores of the tick at `now`.
    pub(crate) fn tick(&mut self, now: Instant) -> Chores {
        let save_flows = now.saturating_duration_since(self.saved) >= SAVE_FLOWS_EVERY;
        if save_flows {
            self.saved = now;
        }
        Chores { save_flows }
    }
}

impl Chores {
    /// Does the chores on `node` (blocking: netlink, files).
    pub(crate) fn run_on(self, node: &Node) {
        node.reap_vanished();
        node.expire_flows();
        if self.save_flows {
            node.save_flows();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = HOUSEKEEPING_EVERY;

    #[test]
    fn flows_are_saved_once_the_interval_has_passed_since_the_start() {
        let start = Instant::now();
        let mut h = Housekeeping::new(start);
        assert!(!h.tick(start).save_flows, "not at the start");
        assert!(!h.tick(start + SAVE_FLOWS_EVERY / 2).save_flows);
        assert!(h.tick(start + SAVE_FLOWS_EVERY).save_flows, "due");
        assert!(
            !h.tick(start + SAVE_FLOWS_EVERY + TICK / 2).save_flows,
            "not again right after"
        );
        assert!(h.tick(start + SAVE_FLOWS_EVERY * 2).save_flows);
    }

    #[test]
    fn at_the_tick_rate_flows_are_saved_every_interval() {
        let start = Instant::now();
        let mut h = Housekeeping::new(start);
        let ticks = 20u32;
        let saves = (1..=ticks)
            .filter(|&n| h.tick(start + TICK * n).save_flows)
            .count() as u32;
        let want = (TICK * ticks).as_millis() / SAVE_FLOWS_EVERY.as_millis();
        assert_eq!(u128::from(saves), want);
    }

    #[test]
    fn a_late_tick_saves_once_and_the_wait_starts_there() {
        let start = Instant::now();
        let mut h = Housekeeping::new(start);
        // The runtime was held up for ten intervals: one save, not ten.
        let late = start + SAVE_FLOWS_EVERY * 10 + TICK / 3;
        assert!(h.tick(late).save_flows);
        assert!(!h.tick(late + TICK / 2).save_flows);
        assert!(
            !h.tick(late + SAVE_FLOWS_EVERY - Duration::from_millis(1))
                .save_flows
        );
        assert!(h.tick(late + SAVE_FLOWS_EVERY).save_flows);
    }

    #[test]
    fn a_tick_before_the_last_save_saves_nothing() {
        let start = Instant::now() + SAVE_FLOWS_EVERY;
        let mut h = Housekeeping::new(start);
        let c = h.tick(start - SAVE_FLOWS_EVERY);
        assert!(!c.save_flows, "{c:?}");
        assert_eq!(h, Housekeeping::new(start), "nothing remembered");
    }
}
