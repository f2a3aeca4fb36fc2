//! Which ports have frames waiting: one epoll instance for every port with a descriptor.
//!
//! Each round asks it once, without blocking, and reads only the ports it reports, so an idle
//! pod costs no system call per round (a blind `read` that fails with `EAGAIN` did). The idle
//! data plane sleeps in the same epoll. Without epoll (it could not be created) every port is
//! read every round and sleeping falls back to `poll(2)`.

use std::os::fd::BorrowedFd;

use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

/// The token of the tunnel: a port's token is its id, and these are above every id.
pub(super) const TUNNEL_TOKEN: u64 = u64::MAX;
/// The token of the waker that ends a sleep.
pub(super) const WAKER_TOKEN: u64 = u64::MAX - 1;
/// Readiness events taken per round (more wait for the next round).
const EVENTS: usize = 256;

pub(super) struct Readiness {
    epoll: Option<Epoll>,
    events: Vec<EpollEvent>,
    /// Ports (tunnel included) registered; none: no need to ask.
    pub(super) watched: usize,
}

impl Readiness {
    pub(super) fn new() -> Self {
        Self {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
                .inspect_err(|e| {
                    tracing::warn!("epoll_create: {e}; reading every port every round instead")
                })
                .ok(),
            events: vec![EpollEvent::empty(); EVENTS],
            watched: 0,
        }
    }

    /// Registers `fd` under `token`; false if there is no epoll or it refused (the caller
    /// then reads that port every round).
    pub(super) fn watch(&mut self, fd: BorrowedFd<'_>, token: u64) -> bool {
        let Some(ep) = self.epoll.as_ref() else {
            return false;
        };
        let ok = ep
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .inspect_err(|e| tracing::warn!("epoll_ctl: {e}; reading that port every round"))
            .is_ok();
        if ok && token != WAKER_TOKEN {
            self.watched += 1;
        }
        ok
    }

    /// Deregisters a port's `fd` that stays open (its port leaves the data plane but lives on).
    pub(super) fn unwatch(&mut self, fd: BorrowedFd<'_>) {
        if let Some(ep) = self.epoll.as_ref() {
            let _ = ep.delete(fd);
            self.watched -= 1;
        }
    }

    /// Notes that a registered port was closed (closing a descriptor leaves the epoll set).
    pub(super) fn forget_closed(&mut self) {
        self.watched -= 1;
    }

    /// Waits up to `timeout` and returns the tokens reported ready; `None` without epoll
    /// (every port counts as ready). An interrupted or failed wait reports nothing: the next
    /// round asks again.
    pub(super) fn wait(&mut self, timeout: PollTimeout) -> Option<impl Iterator<Item = u64> + '_> {
        let ep = self.epoll.as_ref()?;
        let n = ep.wait(&mut self.events, timeout).unwrap_or(0);
        Some(self.events[..n].iter().map(EpollEvent::data))
    }
}

/// `timeout` in whole milliseconds for `epoll_wait`/`poll`, rounded up: a sub-millisecond
/// timeout must not become a busy loop.
pub(super) fn poll_timeout(timeout: std::time::Duration) -> PollTimeout {
    let ms = timeout.as_micros().div_ceil(1000).min(u128::from(u16::MAX)) as u16;
    PollTimeout::from(ms)
}
