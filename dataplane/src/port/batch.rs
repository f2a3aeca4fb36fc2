//! A batch of frames in one contiguous buffer: the unit the data plane moves.
//!
//! Frames are appended by copying into `data`, so a batch in steady state allocates nothing:
//! `data` only grows, and `clear` just rewinds `used` (bytes past it are stale, never read).
//! Readers that fill buffers in place (TAP `read`) get a slice of already initialised memory,
//! so a 64 KiB superframe read costs no memset. Each frame carries its virtio-net header, which
//! is all-zero for plain frames.

use crate::wire::virtio::VnetHdr;

/// Default number of frames per batch.
pub const DEFAULT_BATCH: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Desc {
    off: u32,
    len: u32,
    vnet: VnetHdr,
}

/// Frames, back to back, with their descriptors.
#[derive(Debug, Default)]
pub struct Batch {
    data: Vec<u8>,
    used: usize,
    descs: Vec<Desc>,
}

impl Batch {
    /// An empty batch sized for `frames` frames of about `frame_size` bytes.
    pub(crate) fn with_capacity(frames: usize, frame_size: usize) -> Self {
        Self {
            data: Vec::with_capacity(frames * frame_size),
            used: 0,
            descs: Vec::with_capacity(frames),
        }
    }

    /// Number of frames.
    #[inline]
    pub fn len(&self) -> usize {
        self.descs.len()
    }

    /// True if the batch holds no frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }

    /// Total bytes of all frames.
    #[inline]
    pub(crate) fn bytes(&self) -> usize {
        self.used
    }

    /// Removes all frames, keeping the memory.
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.used = 0;
        self.descs.clear();
    }

    /// `len` writable bytes at the end of the used region (grows `data` if needed).
    #[inline]
    fn tail(&mut self, len: usize) -> &mut [u8] {
        let end = self.used + len;
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        &mut self.data[self.used..end]
    }

    /// Appends a plain frame.
    #[inline]
    pub fn push(&mut self, frame: &[u8]) {
        self.push_with(VnetHdr::default(), &[], frame);
    }

    /// Appends `prefix` + `frame` as one frame with virtio-net header `vnet`.
    #[inline]
    pub(crate) fn push_with(&mut self, vnet: VnetHdr, prefix: &[u8], frame: &[u8]) {
        let len = prefix.len() + frame.len();
        let off = self.used;
        let tail = self.tail(len);
        // Most frames have no prefix: skip the call to memcpy for nothing.
        if !prefix.is_empty() {
            tail[..prefix.len()].copy_from_slice(prefix);
        }
        tail[prefix.len()..].copy_from_slice(frame);
        self.used += len;
        self.descs.push(Desc {
            off: off as u32,
            len: len as u32,
            vnet,
        });
    }

    /// Appends a frame written in place by `fill`, which gets `max` bytes of space and returns
    /// how many it used (`None`: nothing appended). For readers that fill buffers (TAP `read`).
    pub(crate) fn push_from<E>(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<Option<(usize, VnetHdr)>, E>,
    ) -> Result<bool, E> {
        let off = self.used;
        match fill(self.tail(max))? {
            Some((n, vnet)) => {
                let n = n.min(max);
                self.used += n;
                self.descs.push(Desc {
                    off: off as u32,
                    len: n as u32,
                    vnet,
                });
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Appends a frame written in place by `fill` into `max` bytes, of which the first `skip`
    /// are a header the filler consumes (the virtio-net header of a TAP read): `fill` returns
    /// the total length read and the parsed header; the frame is what follows `skip`.
    pub(crate) fn push_from_skipping<E>(
        &mut self,
        max: usize,
        skip: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<Option<(usize, VnetHdr)>, E>,
    ) -> Result<bool, E> {
        let off = self.used;
        match fill(self.tail(max))? {
            Some((n, vnet)) if n >= skip => {
                let n = n.min(max);
                self.used += n;
                self.descs.push(Desc {
                    off: (off + skip) as u32,
                    len: (n - skip) as u32,
                    vnet,
                });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Frame `i` and its virtio-net header.
    #[inline]
    pub fn get(&self, i: usize) -> Option<(&[u8], VnetHdr)> {
        let d = self.descs.get(i)?;
        let (off, len) = (d.off as usize, d.len as usize);
        Some((&self.data[off..off + len], d.vnet))
    }

    /// Frame `i`, mutable, and its virtio-net header.
    #[inline]
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<(&mut [u8], VnetHdr)> {
        let d = self.descs.get(i)?;
        let (off, len) = (d.off as usize, d.len as usize);
        Some((&mut self.data[off..off + len], d.vnet))
    }

    /// Where frame `i` starts in [`Batch::as_bytes`].
    #[inline]
    pub(crate) fn offset(&self, i: usize) -> Option<usize> {
        self.descs.get(i).map(|d| d.off as usize)
    }

    /// The used part of the buffer: every frame (and skipped headers) back to back. Frames
    /// can be referred to by range in it while the batch is not modified.
    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.data[..self.used]
    }

    /// [`Batch::as_bytes`], mutable (frames edited in place by range).
    #[inline]
    pub(crate) fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.used]
    }

    /// Appends the frame made of `parts` back to back, with virtio-net header `vnet`.
    pub(crate) fn push_parts(&mut self, vnet: VnetHdr, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let off = self.used;
        let mut tail = self.tail(len);
        for part in parts {
            let (dst, rest) = tail.split_at_mut(part.len());
            dst.copy_from_slice(part);
            tail = rest;
        }
        self.used += len;
        self.descs.push(Desc {
            off: off as u32,
            len: len as u32,
            vnet,
        });
    }

    /// All frames, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], VnetHdr)> {
        self.descs
            .iter()
            .map(|d| (&self.data[d.off as usize..(d.off + d.len) as usize], d.vnet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_get_clear() {
        let mut b = Batch::with_capacity(4, 64);
        b.push(b"abc");
        let v = VnetHdr {
            gso_size: 1400,
            ..VnetHdr::default()
        };
        b.push_with(v, b"hdr", b"frame");
        assert_eq!(b.len(), 2);
        assert_eq!(b.get(0), Some((&b"abc"[..], VnetHdr::default())));
        assert_eq!(b.get(1), Some((&b"hdrframe"[..], v)));
        assert_eq!(b.get(2), None);
        if let Some((f, _)) = b.get_mut(0) {
            f[0] = b'x';
        }
        assert_eq!(
            b.iter().map(|(f, _)| f.to_vec()).collect::<Vec<_>>(),
            vec![b"xbc".to_vec(), b"hdrframe".to_vec()]
        );
        let cap = b.data.capacity();
        b.clear();
        assert!(b.is_empty() && b.bytes() == 0);
        assert_eq!(b.data.capacity(), cap);
        b.push(b"new");
        assert_eq!(b.get(0).map(|(f, _)| f.to_vec()), Some(b"new".to_vec()));
        assert_eq!(b.bytes(), 3);
        assert_eq!(b.data.capacity(), cap, "a reused batch does not grow");
    }

    #[test]
    fn push_parts_joins_the_parts() {
        let mut b = Batch::default();
        b.push(b"x");
        b.push_parts(VnetHdr::default(), &[b"ab", b"", b"cde"]);
        assert_eq!(b.get(1).map(|(f, _)| f.to_vec()), Some(b"abcde".to_vec()));
        assert_eq!((b.offset(1), b.as_bytes()), (Some(1), &b"xabcde"[..]));
    }

    #[test]
    fn push_from_commits_only_what_was_filled() {
        let mut b = Batch::default();
        let r: Result<bool, ()> = b.push_from(100, |buf| {
            buf[..3].copy_from_slice(b"xyz");
            Ok(Some((3, VnetHdr::default())))
        });
        assert_eq!(r, Ok(true));
        assert_eq!(b.push_from::<()>(100, |_| Ok(None)), Ok(false));
        assert_eq!(b.push_from(100, |_| Err("boom")), Err("boom"));
        assert_eq!(b.len(), 1);
        assert_eq!(b.bytes(), 3);
        let r: Result<bool, ()> = b.push_from_skipping(100, 2, |buf| {
            buf[..5].copy_from_slice(b"HHabc");
            Ok(Some((5, VnetHdr::default())))
        });
        assert_eq!(r, Ok(true));
        assert_eq!(b.get(1).map(|(f, _)| f.to_vec()), Some(b"abc".to_vec()));
        let short: Result<bool, ()> =
            b.push_from_skipping(100, 10, |_| Ok(Some((4, VnetHdr::default()))));
        assert_eq!(
            short,
            Ok(false),
            "a read shorter than the header is not a frame"
        );
    }
}
