//! Wakes the data-plane thread when an in-memory port has frames for it.
//!
//! The runtime announces it is about to sleep ([`Waker::prepare_sleep`]), checks its ports once
//! more, then sleeps in `poll(2)` on the eventfd. A sender queues its batch first, then calls
//! [`Waker::wake`], which writes the eventfd only if the runtime announced sleep; so a busy
//! switch costs senders no system call, and no wake-up is lost (both sides use SeqCst on the
//! flag, the sender after its queue write, the runtime before its re-check).

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::eventfd::{EfdFlags, EventFd};

/// An eventfd plus a "sleeping" flag.
#[derive(Debug)]
pub struct Waker {
    fd: EventFd,
    sleeping: AtomicBool,
}

impl Waker {
    /// A new waker (one eventfd).
    pub fn new() -> std::io::Result<Self> {
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Self {
            fd,
            sleeping: AtomicBool::new(false),
        })
    }

    /// Called by senders after queueing frames.
    #[inline]
    pub(crate) fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            // A full counter (EAGAIN) still means "readable": nothing to do on error.
            let _ = self.fd.write(1);
        }
    }

    /// Wakes the runtime unconditionally (commands, shutdown).
    pub(crate) fn kick(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        let _ = self.fd.write(1);
    }

    /// Called by the runtime before its last check of the ports.
    pub(crate) fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
    }

    /// Called by the runtime when it is awake again; drains the eventfd.
    pub(crate) fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        let _ = self.fd.read();
    }

    /// The eventfd, for `poll(2)`.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
