//! TAP ports: a pod's `eth0`, its file descriptor held by the switch.
//!
//! Opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD` (csum, TSO4/6, USO where the kernel has it,
//! through tun-rs), so every read and write carries a 10-byte virtio-net header and TCP/UDP
//! superframes of up to 64 KiB travel between local pods unsplit: the header rides along in the
//! batch descriptor and is written back out with the frame. The fd is non-blocking; the runtime
//! polls it.
//!
//! A TAP whose namespace is deleted is detached by the kernel: reads and writes then fail with
//! `EBADFD`, which this port reports as [`PortError::Closed`] so the switch forgets it.
//!
//! tun-rs creates the device; the port then does its I/O on the bare descriptor (`read`,
//! `writev`), so a descriptor inherited across an upgrade (`exec`) is adopted the same way
//! ([`TapPort::adopt`]): tun-rs does not adopt descriptors with `IFF_VNET_HDR`.

// `unsafe` is denied crate-wide and allowed in this file only: the TUNSETIFF/TUNSETVNETHDRSZ ioctls and readv/writev on the queue descriptors.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use tun_rs::{DeviceBuilder, Layer};

use super::{Batch, Port, PortError, SendOutcome};
use crate::wire::virtio::{self, VnetHdr};

/// Largest read: virtio-net header + Ethernet header + the largest IPv4 packet (a superframe).
pub(crate) const READ_MAX: usize =
    virtio::HEADER_LEN + crate::wire::ethernet::HEADER_LEN + crate::wire::ipv4::MAX_PACKET_LEN;
/// Most parts one frame may be written from (one `writev`; far below `UIO_MAXIOV`).
pub(crate) const MAX_PARTS: usize = 128;
/// Send buffer asked for with `TUNSETSNDBUF` (the default, ~212 KB, holds three superframes).
const SNDBUF: libc::c_int = 8 << 20;

/// A TAP device in L2 mode with virtio-net headers: one queue's descriptor.
pub struct TapPort {
    dev: File,
    name: String,
}

impl std::fmt::Debug for TapPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapPort")
            .field("name", &self.name)
            .field("fd", &self.dev.as_raw_fd())
            .finish()
    }
}

/// `struct ifreq` as `TUNGETIFF` fills it: the name, then the flags (the rest of the union is
/// padding here).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl TapPort {
    /// Creates the TAP `ifname` with `queues` queues (`IFF_MULTI_QUEUE` when more than one), one
    /// port per queue. The kernel picks a queue per flow for what the pod sends; writes may go
    /// through any queue. All queues must be opened before the device leaves this namespace.
    /// The device is left down: whoever brings it up first makes it quiet (IPv6 off), or its
    /// kernel would send router solicitations into the switch from the moment it is up.
    pub fn create_queues(ifname: &str, queues: usize) -> std::io::Result<Vec<Self>> {
        let dev = DeviceBuilder::new()
            .name(ifname)
            .enable(false)
            .layer(Layer::L2)
            .offload(true)
            .multi_queue(queues > 1)
            .build_sync()?;
        let mut devs = Vec::with_capacity(queues);
        for _ in 1..queues {
            devs.push(dev.try_clone()?);
        }
        devs.insert(0, dev);
        devs.into_iter()
            .map(|dev| {
                dev.set_nonblocking(true)?;
                // SAFETY: `into_raw_fd` hands over the open descriptor tun-rs owned; nothing
                // else closes it.
                let fd = unsafe { OwnedFd::from_raw_fd(dev.into_raw_fd()) };
                Self::queue(File::from(fd), ifname)
            })
            .collect()
    }

    /// Takes over `fd`, a queue of TAP `ifname` opened by an earlier process (inherited across
    /// `exec`): checked to be a TAP of that name with virtio-net headers, made non-blocking.
    pub fn adopt(fd: OwnedFd, ifname: &str) -> std::io::Result<Self> {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes one `struct ifreq` (name and flags, as `IfReq` lays them
        // out, 40 bytes) through the pointer, which points at a live local of that size.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req as *mut IfReq) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let name: Vec<u8> = req
            .name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        let want = (libc::IFF_TAP | libc::IFF_VNET_HDR) as libc::c_short;
        if name != ifname.as_bytes() || req.flags & want != want {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "descriptor {} is TAP {:?} with flags {:#x}, not {ifname:?} with virtio-net headers",
                    fd.as_raw_fd(),
                    String::from_utf8_lossy(&name),
                    req.flags
                ),
            ));
        }
        let dev = File::from(fd);
        set_nonblocking(&dev)?;
        Self::queue(dev, ifname)
    }

    /// The descriptor, to hand over across `exec` (see [`TapPort::adopt`]).
    pub fn raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }

    fn queue(dev: File, ifname: &str) -> std::io::Result<Self> {
        let sndbuf = SNDBUF;
        // SAFETY: TUNSETSNDBUF reads one c_int through the pointer, which points at a live local;
        // the fd is the TAP's own, open for the lifetime of `dev`.
        let rc = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                libc::TUNSETSNDBUF,
                &sndbuf as *const libc::c_int,
            )
        };
        if rc != 0 {
            tracing::warn!(
                ifname,
                "TUNSETSNDBUF failed: {}; keeping the default",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            dev,
            name: ifname.into(),
        })
    }
}

fn set_nonblocking(f: &File) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl(F_GETFL) on a descriptor `f` keeps open; it touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fcntl(F_SETFL) with an int argument on the same open descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn closed_or(e: std::io::Error) -> PortError {
    if e.raw_os_error() == Some(libc::EBADFD) {
        PortError::Closed
    } else {
        PortError::Io(e)
    }
}

impl Port for TapPort {
    fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, PortError> {
        let mut got = 0;
        while got < max {
            let read = batch.push_from_skipping(READ_MAX, virtio::HEADER_LEN, |buf| {
                match self.dev.read(buf) {
                    Ok(n) if n < virtio::HEADER_LEN => Ok(Some((n, VnetHdr::default()))),
                    // An unknown offload type: hand the frame on as plain; the pipeline's
                    // checks (size, headers) decide, and count, what happens to it.
                    Ok(n) => Ok(Some((n, VnetHdr::parse(buf).unwrap_or_default()))),
                    Err(e) => Err(e),
                }
            });
            match read {
                Ok(true) => got += 1,
                // Shorter than a virtio-net header: nothing a pod can legitimately send.
                Ok(false) => batch.push(&[]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(closed_or(e)),
            }
        }
        Ok(batch.len())
    }

    fn send(&mut self, batch: &mut Batch) -> Result<SendOutcome, PortError> {
        let mut out = SendOutcome::default();
        let mut result = Ok(());
        for (frame, vnet) in batch.iter() {
            match self.send_now(&[frame], vnet) {
                Ok(true) => {
                    out.sent += 1;
                    out.bytes += frame.len();
                }
                Ok(false) => out.dropped += 1,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        batch.clear();
        result.map(|()| out)
    }

    fn accepts_gso(&self) -> bool {
        true
    }

    fn sends_immediately(&self) -> bool {
        true
    }

    fn send_now(&mut self, parts: &[&[u8]], vnet: VnetHdr) -> Result<bool, PortError> {
        let hdr = vnet.to_bytes();
        let sent = match parts {
            // The common case (a frame forwarded as it was read) without the large array.
            [frame] => self
                .dev
                .write_vectored(&[IoSlice::new(&hdr), IoSlice::new(frame)]),
            _ if parts.len() > MAX_PARTS => return Ok(false),
            _ => {
                let mut iov = [IoSlice::new(&[]); MAX_PARTS + 1];
                iov[0] = IoSlice::new(&hdr);
                for (slot, part) in iov[1..].iter_mut().zip(parts) {
                    *slot = IoSlice::new(part);
                }
                self.dev.write_vectored(&iov[..parts.len() + 1])
            }
        };
        match sent {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EBADFD) => Err(PortError::Closed),
            // EAGAIN, EIO (eth0 down in the pod), EINVAL: this frame is lost, the port stays.
            Err(_) => Ok(false),
        }
    }

    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.dev.as_fd())
    }
}
