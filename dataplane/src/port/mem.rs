//! In-memory ports: a pair of bounded channels of whole batches.
//!
//! [`mem_port`] returns the switch side ([`MemPort`], attached to the switch) and the endpoint
//! side ([`MemEndpoint`], held by whatever plays the pod: a smoltcp stack, a test, a benchmark).
//! Batches move by ownership, not by copy; emptied batches flow back on a recycle channel so the
//! steady state allocates nothing. Dropping either side closes the port for the other.

use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};

use super::{Batch, Port, PortError, SendOutcome, Waker, DEFAULT_BATCH};
use std::sync::Arc;

/// Batches a direction may hold before the sender sees "full".
pub(crate) const QUEUE_BATCHES: usize = 256;

/// The switch side of an in-memory port.
pub struct MemPort {
    from_endpoint: Receiver<Batch>,
    to_endpoint: Sender<Batch>,
    /// Empty batches coming back from the endpoint (reused for `send`).
    recycled: Receiver<Batch>,
    /// Empty batches going back to the endpoint.
    recycle_to_endpoint: Sender<Batch>,
}

/// The endpoint (pod) side of an in-memory port.
pub struct MemEndpoint {
    to_switch: Sender<Batch>,
    from_switch: Receiver<Batch>,
    recycled: Receiver<Batch>,
    recycle_to_switch: Sender<Batch>,
    pending: Batch,
    waker: Arc<Waker>,
}

/// A connected pair of in-memory port ends. `waker` is the runtime's, rung when the endpoint
/// sends.
pub fn mem_port(waker: Arc<Waker>) -> (MemPort, MemEndpoint) {
    let (to_switch, from_endpoint) = bounded(QUEUE_BATCHES);
    let (to_endpoint, from_switch) = bounded(QUEUE_BATCHES);
    let (recycle_to_switch, recycled_sw) = bounded(QUEUE_BATCHES);
    let (recycle_to_endpoint, recycled_ep) = bounded(QUEUE_BATCHES);
    (
        MemPort {
            from_endpoint,
            to_endpoint,
            recycled: recycled_sw,
            recycle_to_endpoint,
        },
        MemEndpoint {
            to_switch,
            from_switch,
            recycled: recycled_ep,
            recycle_to_switch,
            pending: new_batch(),
            waker,
        },
    )
}

fn new_batch() -> Batch {
    Batch::with_capacity(DEFAULT_BATCH, 2048)
}

fn fresh(recycled: &Receiver<Batch>) -> Batch {
    recycled.try_recv().unwrap_or_else(|_| new_batch())
}

impl Port for MemPort {
    fn recv(&mut self, batch: &mut Batch, _max: usize) -> Result<usize, PortError> {
        match self.from_endpoint.try_recv() {
            Ok(mut got) => {
                // Swap buffers instead of copying; the old (empty) one goes back for reuse.
                std::mem::swap(batch, &mut got);
                got.clear();
                let _ = self.recycle_to_endpoint.try_send(got);
                Ok(batch.len())
            }
            Err(TryRecvError::Empty) => Ok(0),
            Err(TryRecvError::Disconnected) => Err(PortError::Closed),
        }
    }

    fn send(&mut self, batch: &mut Batch) -> Result<SendOutcome, PortError> {
        if batch.is_empty() {
            return Ok(SendOutcome::default());
        }
        let (n, bytes) = (batch.len(), batch.bytes());
        let full = std::mem::replace(batch, fresh(&self.recycled));
        match self.to_endpoint.try_send(full) {
            Ok(()) => Ok(SendOutcome {
                sent: n,
                bytes,
                dropped: 0,
            }),
            Err(TrySendError::Full(mut back)) => {
                back.clear();
                *batch = back;
                Ok(SendOutcome {
                    sent: 0,
                    bytes: 0,
                    dropped: n,
                })
            }
            Err(TrySendError::Disconnected(_)) => Err(PortError::Closed),
        }
    }
}

/// Why an endpoint could not send or receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The switch is full right now (frames dropped).
    #[error("switch queue full")]
    Full,
    /// The switch side is gone (port removed or switch stopped).
    #[error("switch port closed")]
    Closed,
}

impl MemEndpoint {
    /// Queues one frame; it leaves on the next [`MemEndpoint::flush`] (or when the pending batch
    /// is full).
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<(), EndpointError> {
        self.pending.push(frame);
        if self.pending.len() >= DEFAULT_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Number of frames queued and not yet flushed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Sends the pending frames to the switch as one batch and wakes the switch.
    pub fn flush(&mut self) -> Result<(), EndpointError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.pending, fresh(&self.recycled));
        self.send_batch(full)
    }

    /// Sends a whole batch (already filled) to the switch and wakes the switch.
    pub fn send_batch(&mut self, batch: Batch) -> Result<(), EndpointError> {
        let r = match self.to_switch.try_send(batch) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(mut b)) => {
                b.clear();
                let _ = self.recycle_to_switch.try_send(b);
                Err(EndpointError::Full)
            }
            Err(TrySendError::Disconnected(_)) => Err(EndpointError::Closed),
        };
        self.waker.wake();
        r
    }

    /// An empty batch to fill and pass to [`MemEndpoint::send_batch`] (reused when possible).
    pub fn take_empty(&self) -> Batch {
        fresh(&self.recycled)
    }

    /// A batch from the switch, if one is waiting.
    pub fn try_recv(&self) -> Result<Option<Batch>, EndpointError> {
        match self.from_switch.try_recv() {
            Ok(b) => Ok(Some(b)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(EndpointError::Closed),
        }
    }

    /// A batch from the switch, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Batch>, EndpointError> {
        match self.from_switch.recv_timeout(timeout) {
            Ok(b) => Ok(Some(b)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(EndpointError::Closed),
        }
    }

    /// The receiving channel, for `crossbeam_channel::select!` with other events.
    pub fn receiver(&self) -> &Receiver<Batch> {
        &self.from_switch
    }

    /// Gives a consumed batch back for reuse by the switch.
    pub fn recycle(&self, mut batch: Batch) {
        batch.clear();
        let _ = self.recycle_to_switch.try_send(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_flow_both_ways_and_close_is_seen() {
        let waker = Arc::new(Waker::new().expect("eventfd"));
        let (mut sw, mut ep) = mem_port(Arc::clone(&waker));
        ep.send_frame(b"one").expect("send");
        ep.send_frame(b"two").expect("send");
        let mut rx = Batch::default();
        assert_eq!(
            sw.recv(&mut rx, 64).expect("recv"),
            0,
            "nothing before flush"
        );
        ep.flush().expect("flush");
        assert_eq!(sw.recv(&mut rx, 64).expect("recv"), 2);
        assert_eq!(rx.get(1).map(|(f, _)| f.to_vec()), Some(b"two".to_vec()));
        let mut tx = Batch::default();
        tx.push(b"back");
        let out = sw.send(&mut tx).expect("send");
        assert_eq!(
            out,
            SendOutcome {
                sent: 1,
                bytes: 4,
                dropped: 0
            }
        );
        assert!(tx.is_empty());
        let got = ep.try_recv().expect("open").expect("a batch");
        assert_eq!(got.get(0).map(|(f, _)| f.to_vec()), Some(b"back".to_vec()));
        drop(ep);
        assert!(matches!(
            sw.recv(&mut Batch::default(), 64),
            Err(PortError::Closed)
        ));
        tx.push(b"x");
        assert!(matches!(sw.send(&mut tx), Err(PortError::Closed)));
    }

    #[test]
    fn full_queue_drops_and_reports() {
        let waker = Arc::new(Waker::new().expect("eventfd"));
        let (mut sw, ep) = mem_port(waker);
        let mut dropped = 0;
        for _ in 0..QUEUE_BATCHES + 3 {
            let mut tx = Batch::default();
            tx.push(b"f");
            dropped += sw.send(&mut tx).expect("open").dropped;
        }
        assert_eq!(dropped, 3);
        drop(ep);
    }
}
