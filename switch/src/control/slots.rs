//! The control socket's connection slots, and who gives one up when all are taken.
//!
//! The server holds at most [`Limits::connections`](super::server::Limits) connections. When all are
//! taken and another comes, the connection that has waited longest for a request (silent
//! since it connected, or since its last answer, or stalled halfway through a line) is told
//! why and closed, and the new one takes its slot; only when every connection is inside a
//! request (its handler running, its answer being written) is the new one refused. So clients
//! that leak connections (connect and never send, or never close) cannot lock the CLI or the
//! CNI plugin out: a fresh connection is served at once, whatever the leaked ones do, and
//! the leak costs at most the limit in descriptors and buffers.
//!
//! Request lines past [`SMALL_LINE`] take turns too ([`read_request`]): [`LARGE_AT_ONCE`]
//! connections read one at a time, so a flood of large requests costs the memory of a few,
//! and small requests never wait for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::Notify;

/// Connections told to give their slot up that may not have closed yet: past this, a new
/// connection is refused rather than another evicted, so a storm of new connections holds at
/// most the limit plus these.
const EVICTING_AT_MOST: usize = 8;

/// The slots of one server.
#[derive(Debug)]
pub(super) struct Slots {
    limit: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    next: u64,
    by_id: HashMap<u64, State>,
}

#[derive(Debug)]
struct State {
    /// Since when the connection waits for a request (`None`: inside one).
    waiting_since: Option<Instant>,
    /// Told to give its slot up (no longer counted against the limit).
    evicted: bool,
    evict: Arc<Notify>,
}

/// One connection's slot, given back when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    id: u64,
    slots: Arc<Slots>,
    evict: Arc<Notify>,
}

impl Slots {
    pub(super) fn new(limit: usize) -> Arc<Slots> {
        Arc::new(Slots {
            limit,
            held: Mutex::new(Held::default()),
        })
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // A panic while holding the lock leaves the map consistent (every change is one
        // insert, remove or field store).
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection: a free one, else the slot of the connection that has
    /// waited longest for a request (which is told to close, see [`Slot::evicted`]). `None`
    /// when every connection is inside a request, or [`EVICTING_AT_MOST`] told to close have
    /// not yet.
    pub(super) fn take(self: &Arc<Self>) -> Option<Slot> {
        let mut held = self.held();
        let evicting = held.by_id.values().filter(|s| s.evicted).count();
        let counted = held.by_id.len() - evicting;
        if counted >= self.limit {
            if evicting >= EVICTING_AT_MOST {
                return None;
            }
            let (_, victim) = held
                .by_id
                .iter_mut()
                .filter(|(_, s)| !s.evicted)
                .filter_map(|(id, s)| s.waiting_since.map(|t| (t, *id, s)))
                .min_by_key(|(t, id, _)| (*t, *id))
                .map(|(_, id, s)| (id, s))?;
            victim.evicted = true;
            // Stored if the connection is not waiting on it at this instant: it sees it at its
            // next wait.
            victim.evict.notify_one();
        }
        let id = held.next;
        held.next += 1;
        let evict = Arc::new(Notify::new());
        held.by_id.insert(
            id,
            State {
                // A new connection has sent nothing yet: it waits for its first request.
                waiting_since: Some(Instant::now()),
                evicted: false,
                evict: Arc::clone(&evict),
            },
        );
        Some(Slot {
            id,
            slots: Arc::clone(self),
            evict,
        })
    }
}

impl Slot {
    /// The connection starts waiting for a request (it may be asked to give its slot up).
    pub(super) fn waiting(&self) {
        if let Some(s) = self.slots.held().by_id.get_mut(&self.id) {
            s.waiting_since.get_or_insert_with(Instant::now);
        }
    }

    /// The connection received a request: it keeps its slot until it waits again.
    pub(super) fn busy(&self) {
        if let Some(s) = self.slots.held().by_id.get_mut(&self.id) {
            s.waiting_since = None;
        }
    }

    /// Completes once another connection has taken this slot: the connection is to close.
    pub(super) async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.held().by_id.remove(&self.id);
    }
}

/// Past this many bytes a request line is large: it waits for one of [`LARGE_AT_ONCE`] turns.
pub(super) const SMALL_LINE: usize = 64 * 1024;
/// Connections that may read a large line at once: a flood of them costs the memory of a few.
pub(super) const LARGE_AT_ONCE: usize = 2;

/// Reads one request line into `line`: at most one byte past [`MAX_LINE`](super::MAX_LINE) (enough to tell a
/// long line from a full one). Past [`SMALL_LINE`] bytes it first waits for a turn of
/// `large` (the permit is returned with the count read, for the caller to hold while the
/// line is handled); small requests never wait for large ones.
pub(super) async fn read_request(
    read: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
    large: &Arc<tokio::sync::Semaphore>,
) -> std::io::Result<(usize, Option<tokio::sync::OwnedSemaphorePermit>)> {
    let small = (&mut *read)
        .take(SMALL_LINE as u64 + 1)
        .read_until(b'\n', line)
        .await?;
    if small <= SMALL_LINE || line.last() == Some(&b'\n') {
        return Ok((small, None));
    }
    let turn = Arc::clone(large)
        .acquire_owned()
        .await
        .map_err(std::io::Error::other)?;
    let rest = (&mut *read)
        .take((super::MAX_LINE - SMALL_LINE) as u64)
        .read_until(b'\n', line)
        .await?;
    Ok((small + rest, Some(turn)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_full_the_longest_waiting_gives_its_slot_up_and_busy_ones_never_do() {
        let slots = Slots::new(3);
        let a = slots.take().expect("a");
        let b = slots.take().expect("b");
        let c = slots.take().expect("c");
        a.busy();
        // Full: b has waited longest of the waiting ones.
        let d = slots.take().expect("d takes b's slot");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let told = |s: &Slot| {
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_millis(50), s.evicted())
                    .await
                    .is_ok()
            })
        };
        assert!(told(&b), "b is told to close");
        assert!(!told(&a) && !told(&c) && !told(&d));
        // b not gone yet: it is not counted, nor chosen again.
        c.busy();
        d.busy();
        assert!(slots.take().is_none(), "every counted connection is busy");
        drop(b);
        d.waiting();
        let e = slots.take().expect("e takes d's slot");
        assert!(told(&d));
        drop((a, c, d, e));
        assert!(slots.held().by_id.is_empty(), "dropped slots are freed");
    }

    #[test]
    fn a_storm_of_new_connections_holds_at_most_the_limit_plus_those_closing() {
        let slots = Slots::new(1);
        // Each new one takes the slot of the one before, which has not closed yet.
        let storm: Vec<Slot> = (0..=EVICTING_AT_MOST)
            .map(|i| slots.take().unwrap_or_else(|| panic!("connection {i}")))
            .collect();
        assert!(
            slots.take().is_none(),
            "refused while {EVICTING_AT_MOST} are closing"
        );
        drop(storm);
        assert!(slots.take().is_some(), "served once they closed");
    }
}
