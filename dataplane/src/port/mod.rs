//! Port adapters: where frames enter and leave the switch. Only this layer does I/O.
//!
//! A [`Port`] moves whole [`Batch`]es. The runtime calls `recv` with an empty batch and `send`
//! with the frames for that port; neither blocks. Ports backed by a file descriptor expose it
//! for `poll(2)`; in-memory ports wake the runtime through its [`Waker`].

mod batch;
mod mem;
pub(crate) mod tap;
pub(crate) mod tunnel;
mod waker;

use std::os::fd::BorrowedFd;

pub use batch::{Batch, DEFAULT_BATCH};
pub use mem::{mem_port, EndpointError, MemEndpoint, MemPort};
pub use tap::TapPort;
pub(crate) use tunnel::TxQueue;
pub use tunnel::UdpTunnel;
pub use waker::Waker;

/// Why a port failed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The other end is gone (pod removed, namespace deleted, peer dropped).
    #[error("port closed by its other end")]
    Closed,
    /// An I/O error from the device.
    #[error("port I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// What a `send` did with the frames it was given.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// Frames handed to the other end.
    pub(crate) sent: usize,
    /// Bytes handed to the other end.
    pub(crate) bytes: usize,
    /// Frames dropped because the other end's queue was full.
    pub(crate) dropped: usize,
}

/// A switch port.
pub trait Port: Send {
    /// Appends up to `max` waiting frames to `batch` (empty on entry) without blocking. `Ok(0)`
    /// when nothing is waiting.
    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError>;

    /// Sends every frame of `batch` without blocking and leaves `batch` empty (possibly a
    /// different, recycled buffer). Frames the other end cannot take now are dropped and
    /// reported in the outcome.
    fn send(&mut self, batch: &mut Batch) -> Result<SendOutcome, PortError>;

    /// Whether frames should be written one by one as they are decided, straight from the
    /// receive buffer, instead of being copied into a batch for [`Port::send`]. True for ports
    /// whose sends are one system call per frame anyway (a TAP), where the batch would only add
    /// a copy.
    fn sends_immediately(&self) -> bool {
        false
    }

    /// Writes one frame, made of `parts` back to back, now (for ports that
    /// [`Port::sends_immediately`]): `Ok(true)` sent, `Ok(false)` dropped (the other end is
    /// full or refused it), `Err` the port is broken.
    fn send_now(
        &mut self,
        parts: &[&[u8]],
        vnet: crate::wire::virtio::VnetHdr,
    ) -> Result<bool, PortError> {
        let mut b = Batch::default();
        b.push_with(vnet, &[], &parts.concat());
        self.send(&mut b).map(|o| o.sent == 1)
    }

    /// True if the other end takes GSO superframes and partial checksums with their virtio-net
    /// header (a TAP with `IFF_VNET_HDR`). Other ports get segmented, checksummed frames.
    fn accepts_gso(&self) -> bool {
        false
    }

    /// A file descriptor that becomes readable when frames wait, if the port has one.
    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}
