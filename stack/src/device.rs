//! The pod's NIC as smoltcp sees it: frames to and from a switch port, with the loopback the
//! kernel would do inside the namespace.
//!
//! smoltcp has no IPv4 loopback: it hands every packet to the device, and even ARPs for its own
//! addresses (docs/platform-facts.md). So the transmit path looks at each frame: if it is
//! addressed to the pod's own MAC, or is an ARP request for one of the pod's own addresses, it
//! goes back into the pod's own receive queue and never reaches the switch. Everything else
//! leaves through the port.

use std::collections::VecDeque;

use podswitch_dataplane::port::{EndpointError, MemEndpoint};
use podswitch_dataplane::wire::arp::{self, ArpPacket};
use podswitch_dataplane::wire::ethernet::{ethertype, EthernetFrame};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Counters of what the device saw, for tests that check what reached the wire.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCounts {
    /// Frames sent to the switch.
    pub to_switch: u64,
    /// Frames received from the switch.
    pub from_switch: u64,
    /// Frames looped back inside the pod.
    pub looped: u64,
    /// Frames that could not be handed to the switch (queue full or port closed).
    pub tx_dropped: u64,
}

/// A smoltcp device on an in-memory switch port.
pub struct PodDevice {
    endpoint: Option<MemEndpoint>,
    mac: [u8; 6],
    own_ips: Vec<[u8; 4]>,
    mtu: usize,
    rx: VecDeque<Vec<u8>>,
    loopback: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    counts: DeviceCounts,
    closed: bool,
}

impl PodDevice {
    /// A device for a pod with `mac`, addresses `own_ips` and IP MTU `mtu`.
    pub fn new(endpoint: MemEndpoint, mac: [u8; 6], own_ips: Vec<[u8; 4]>, mtu: usize) -> Self {
        Self {
            endpoint: Some(endpoint),
            mac,
            own_ips,
            mtu,
            rx: VecDeque::new(),
            loopback: VecDeque::new(),
            pool: Vec::new(),
            counts: DeviceCounts::default(),
            closed: false,
        }
    }

    /// Moves every batch waiting from the switch into the receive queue. Returns false once the
    /// switch side is gone.
    pub fn pull_from_switch(&mut self) -> bool {
        let Some(endpoint) = self.endpoint.as_ref() else {
            return false;
        };
        loop {
            match endpoint.try_recv() {
                Ok(Some(batch)) => {
                    Self::queue(&mut self.rx, &mut self.pool, &mut self.counts, &batch);
                    endpoint.recycle(batch);
                }
                Ok(None) => return true,
                Err(_) => {
                    self.closed = true;
                    return false;
                }
            }
        }
    }

    /// Queues the frames of a batch received from the switch.
    pub fn accept_batch(&mut self, batch: podswitch_dataplane::port::Batch) {
        Self::queue(&mut self.rx, &mut self.pool, &mut self.counts, &batch);
        if let Some(endpoint) = self.endpoint.as_ref() {
            endpoint.recycle(batch);
        }
    }

    fn queue(
        rx: &mut VecDeque<Vec<u8>>,
        pool: &mut Vec<Vec<u8>>,
        counts: &mut DeviceCounts,
        batch: &podswitch_dataplane::port::Batch,
    ) {
        for (frame, _) in batch.iter() {
            let mut buf = pool.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(frame);
            rx.push_back(buf);
            counts.from_switch += 1;
        }
    }

    /// Disconnects from the switch (the switch sees the port close) and drops queued frames.
    pub fn shut_down(&mut self) {
        self.endpoint = None;
        self.closed = true;
        self.rx.clear();
        self.loopback.clear();
    }

    /// Sends what the last poll queued for the switch.
    pub fn flush(&mut self) {
        let Some(endpoint) = self.endpoint.as_mut() else {
            return;
        };
        let pending = endpoint.pending() as u64;
        match endpoint.flush() {
            Ok(()) => {}
            Err(EndpointError::Full) => self.counts.tx_dropped += pending,
            Err(EndpointError::Closed) => {
                self.counts.tx_dropped += pending;
                self.closed = true;
            }
        }
    }

    /// True while frames wait in the loopback queue (the stack must be polled again).
    pub fn has_loopback(&self) -> bool {
        !self.loopback.is_empty()
    }

    /// True if the switch port is gone.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// What the device has seen.
    pub fn counts(&self) -> DeviceCounts {
        self.counts
    }

    /// The endpoint's receiving channel, to wait on.
    pub fn receiver(
        &self,
    ) -> Option<crossbeam_channel::Receiver<podswitch_dataplane::port::Batch>> {
        self.endpoint.as_ref().map(|e| e.receiver().clone())
    }

    fn stays_inside(&self, frame: &[u8]) -> bool {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return false;
        };
        if eth.dst_addr() == self.mac {
            return true;
        }
        // An ARP request for one of our own addresses: answer ourselves.
        eth.ethertype() == ethertype::ARP
            && ArpPacket::new_checked(eth.payload()).is_ok_and(|arp| {
                arp.operation() == arp::OP_REQUEST
                    && self.own_ips.contains(&arp.target_ip().octets())
            })
    }

    fn transmit_frame(&mut self, frame: Vec<u8>) {
        if self.stays_inside(&frame) {
            self.counts.looped += 1;
            self.loopback.push_back(frame);
            return;
        }
        match self.endpoint.as_mut().map(|e| e.send_frame(&frame)) {
            Some(Ok(())) => self.counts.to_switch += 1,
            _ => self.counts.tx_dropped += 1,
        }
        self.pool.push(frame);
    }
}

/// Receive token: an owned frame.
pub struct RxToken {
    frame: Vec<u8>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.frame)
    }
}

/// Transmit token: writes into a pooled buffer, then routes it (loopback or switch).
pub struct TxToken<'a> {
    dev: &'a mut PodDevice,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.dev.pool.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        let r = f(&mut buf);
        self.dev.transmit_frame(buf);
        r
    }
}

impl phy::Device for PodDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.loopback.pop_front().or_else(|| self.rx.pop_front())?;
        Some((RxToken { frame }, TxToken { dev: self }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + podswitch_dataplane::wire::ethernet::HEADER_LEN;
        caps
    }
}
