//! The pod (infra) and its containers.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as StdInstant};

use crossbeam_channel::{bounded, never, select, Receiver, Sender};
use podswitch_dataplane::port::MemEndpoint;
use podswitch_dataplane::switch::{Switch, SwitchError};
use podswitch_dataplane::table::{PortInfo, PortKind};
use podswitch_dataplane::wire::EthernetAddress;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::device::{DeviceCounts, PodDevice};
use crate::NetError;

/// Longest the driver sleeps without a reason to wake (timers are re-read every round).
const MAX_IDLE: Duration = Duration::from_millis(50);
/// First port handed out for outgoing connections (Linux's default ephemeral range).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

/// Addresses of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodConfig {
    /// Pod name.
    pub name: String,
    /// `eth0` MAC.
    pub mac: EthernetAddress,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Prefix length of the pod network (the node's CIDR).
    pub prefix_len: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// IP MTU of `eth0`.
    pub mtu: usize,
}

impl PodConfig {
    /// The MAC a pod with `ip` gets when none is given: the switch's rule for pods
    /// ([`podswitch_dataplane::table::derived_pod_mac`]), so a smoltcp pod and a TAP pod with one IP agree.
    pub fn derived_mac(ip: Ipv4Addr) -> EthernetAddress {
        podswitch_dataplane::table::derived_pod_mac(ip)
    }
}

/// Transport protocol of a bound port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Proto {
    Tcp,
    Udp,
}

/// Bookkeeping for one socket of the set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SockMeta {
    /// Unique id: socket handles are reused by the set, ids never.
    pub id: u64,
    /// Container that opened it.
    pub container: u64,
    /// Port it holds in the pod's port space, released when the socket goes.
    pub port: Option<(Proto, u16)>,
}

/// Everything the pod's containers share, behind one lock.
pub(crate) struct PodState {
    pub alive: bool,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub device: PodDevice,
    /// Port space: who holds which port.
    pub ports: HashMap<(Proto, u16), u64>,
    pub meta: HashMap<SocketHandle, SockMeta>,
    /// Sockets closed by their owner, removed once the close handshake is done.
    pub closing: Vec<(SocketHandle, u64, StdInstant)>,
    next_id: u64,
    next_ephemeral: u16,
}

impl PodState {
    pub(crate) fn now() -> Instant {
        Instant::now()
    }

    /// Claims `port` for `container`, or fails with EADDRINUSE.
    pub(crate) fn claim(
        &mut self,
        proto: Proto,
        port: u16,
        container: u64,
    ) -> Result<(), NetError> {
        if port == 0 || self.ports.contains_key(&(proto, port)) {
            return Err(NetError::AddrInUse(port));
        }
        self.ports.insert((proto, port), container);
        Ok(())
    }

    /// Claims a free ephemeral port.
    pub(crate) fn claim_ephemeral(
        &mut self,
        proto: Proto,
        container: u64,
    ) -> Result<u16, NetError> {
        let span = EPHEMERAL.end() - EPHEMERAL.start() + 1;
        for _ in 0..span {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            if self.claim(proto, p, container).is_ok() {
                return Ok(p);
            }
        }
        Err(NetError::AddrNotAvailable)
    }

    /// Adds a socket to the set and records it.
    pub(crate) fn add_socket<S: smoltcp::socket::AnySocket<'static>>(
        &mut self,
        socket: S,
        container: u64,
        port: Option<(Proto, u16)>,
    ) -> (SocketHandle, u64) {
        let handle = self.sockets.add(socket);
        self.next_id += 1;
        let id = self.next_id;
        self.meta.insert(
            handle,
            SockMeta {
                id,
                container,
                port,
            },
        );
        (handle, id)
    }

    /// True if `handle` still names the socket with `id`.
    pub(crate) fn valid(&self, handle: SocketHandle, id: u64) -> bool {
        self.meta.get(&handle).is_some_and(|m| m.id == id)
    }

    /// Removes a socket now; releases its port unless another socket of the same owner still
    /// uses it (accepted connections share their listener's port).
    pub(crate) fn remove_socket(&mut self, handle: SocketHandle) {
        if let Some(m) = self.meta.remove(&handle) {
            self.sockets.remove(handle);
            if let Some(p) = m.port {
                let still_used = self.meta.values().any(|o| o.port == Some(p));
                if !still_used && self.ports.get(&p) == Some(&m.container) {
                    self.ports.remove(&p);
                }
            }
        }
    }

    /// Closes a TCP socket gracefully; it is removed once closed (or after a grace period).
    pub(crate) fn close_tcp(&mut self, handle: SocketHandle, id: u64) {
        if !self.valid(handle, id) {
            return;
        }
        self.sockets
            .get_mut::<smoltcp::socket::tcp::Socket>(handle)
            .close();
        self.closing.push((handle, id, StdInstant::now()));
    }

    /// Polls the stack until it has nothing more to do right now, then sends what it produced.
    fn poll(&mut self) {
        for _ in 0..256 {
            let r = self
                .iface
                .poll(Self::now(), &mut self.device, &mut self.sockets);
            if r == PollResult::None && !self.device.has_loopback() {
                break;
            }
        }
        self.device.flush();
        self.reap();
    }

    fn reap(&mut self) {
        if self.closing.is_empty() {
            return;
        }
        let closing = std::mem::take(&mut self.closing);
        for (handle, id, since) in closing {
            if !self.valid(handle, id) {
                continue;
            }
            let s = self.sockets.get::<smoltcp::socket::tcp::Socket>(handle);
            let done = matches!(
                s.state(),
                smoltcp::socket::tcp::State::Closed | smoltcp::socket::tcp::State::TimeWait
            ) || since.elapsed() > Duration::from_secs(60);
            if done {
                self.remove_socket(handle);
            } else {
                self.closing.push((handle, id, since));
            }
        }
    }
}

/// State shared by a pod's infra handle, its containers and their sockets.
pub(crate) struct PodShared {
    pub cfg: PodConfig,
    state: Mutex<PodState>,
    changed: Condvar,
    kick: Sender<()>,
}

impl PodShared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, PodState> {
        // A panic while holding the lock leaves smoltcp state that is still memory-safe to use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the driver to poll now (a socket has something to send).
    pub(crate) fn kick(&self) {
        let _ = self.kick.try_send(());
    }

    /// Runs `f` under the lock until it returns `Some`, waiting for the stack to change between
    /// tries. Fails with ENETDOWN once the pod is gone, ETIMEDOUT after `timeout`.
    pub(crate) fn wait<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&mut PodState) -> Option<Result<T, NetError>>,
    ) -> Result<T, NetError> {
        let deadline = StdInstant::now() + timeout;
        let mut st = self.lock();
        loop {
            if !st.alive {
                return Err(NetError::NetworkDown);
            }
            if let Some(r) = f(&mut st) {
                drop(st);
                self.kick();
                return r;
            }
            let now = StdInstant::now();
            if now >= deadline {
                return Err(NetError::TimedOut);
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// A pod: its infra container. Holds the network; dropping it takes the network down for every
/// container of the pod and detaches the pod from the switch.
pub struct Pod {
    shared: Arc<PodShared>,
    driver: Option<JoinHandle<()>>,
    next_container: std::sync::atomic::AtomicU64,
}

impl Pod {
    /// Attaches a pod named `name` with address `ip` to `switch` (MAC derived from the IP,
    /// prefix, gateway and MTU from the switch's node settings) and starts it.
    pub fn attach(switch: &Switch, name: &str, ip: Ipv4Addr) -> Result<Pod, SwitchError> {
        let node = switch.node();
        let cfg = PodConfig {
            name: name.into(),
            mac: PodConfig::derived_mac(ip),
            ip,
            prefix_len: node.cidr.prefix_len(),
            gateway: node.gateway,
            mtu: usize::from(node.mtu),
        };
        let (_, endpoint) = switch.attach_mem_pod(PortInfo {
            name: name.into(),
            kind: PortKind::Pod { mac: cfg.mac, ip },
        })?;
        Ok(Pod::start(cfg, endpoint))
    }

    /// Starts a pod on an already attached in-memory port.
    pub fn start(cfg: PodConfig, endpoint: MemEndpoint) -> Pod {
        let loopback = Ipv4Addr::LOCALHOST;
        let mut device = PodDevice::new(
            endpoint,
            cfg.mac.0,
            vec![cfg.ip.octets(), loopback.octets()],
            cfg.mtu,
        );
        let mut config = Config::new(HardwareAddress::Ethernet(smoltcp::wire::EthernetAddress(
            cfg.mac.0,
        )));
        config.random_seed = u64::from(u32::from(cfg.ip)) ^ seed();
        let mut iface = Interface::new(config, &mut device, Instant::now());
        iface.update_ip_addrs(|addrs| {
            // Two addresses fit the default capacity (iface-max-addr-count-2): pod IP and loopback.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(cfg.ip), cfg.prefix_len));
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(loopback), 8));
        });
        // Fails only when the route table is full; it is empty here.
        let _ = iface.routes_mut().add_default_ipv4_route(cfg.gateway);
        let receiver = device.receiver();
        let state = PodState {
            alive: true,
            iface,
            sockets: SocketSet::new(vec![]),
            device,
            ports: HashMap::new(),
            meta: HashMap::new(),
            closing: Vec::new(),
            next_id: 0,
            next_ephemeral: *EPHEMERAL.start() + (seed() % 1000) as u16,
        };
        let (kick, kicked) = bounded(1);
        let shared = Arc::new(PodShared {
            cfg,
            state: Mutex::new(state),
            changed: Condvar::new(),
            kick,
        });
        let driver_shared = Arc::clone(&shared);
        let driver = std::thread::Builder::new()
            .name(format!("pod-{}", shared.cfg.name))
            .spawn(move || drive(&driver_shared, receiver, kicked))
            .ok();
        if driver.is_none() {
            tracing::error!("pod {}: could not start its driver thread", shared.cfg.name);
            shared.lock().alive = false;
        }
        Pod {
            shared,
            driver,
            next_container: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Starts a container in this pod (it joins the pod's network namespace).
    pub fn container(&self, name: &str) -> Container {
        let id = self
            .next_container
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Container {
            pod: Arc::clone(&self.shared),
            id,
            name: name.into(),
        }
    }

    /// Pod name.
    pub fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    /// Pod IP.
    pub fn ip(&self) -> Ipv4Addr {
        self.shared.cfg.ip
    }

    /// Pod MAC.
    pub fn mac(&self) -> EthernetAddress {
        self.shared.cfg.mac
    }

    /// What the pod's NIC has seen (frames to/from the switch, frames looped back inside).
    pub fn device_counts(&self) -> DeviceCounts {
        self.shared.lock().device.counts()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.alive = false;
            st.device.shut_down();
            let handles: Vec<SocketHandle> = st.meta.keys().copied().collect();
            for h in handles {
                st.remove_socket(h);
            }
            self.shared.changed.notify_all();
        }
        self.shared.kick();
        if let Some(t) = self.driver.take() {
            let _ = t.join();
        }
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// The driver: receive, poll, send, sleep until a frame, a kick or a timer.
fn drive(
    shared: &PodShared,
    receiver: Option<Receiver<podswitch_dataplane::port::Batch>>,
    kicked: Receiver<()>,
) {
    let mut from_switch = receiver.unwrap_or_else(never);
    let mut incoming = None;
    loop {
        let delay = {
            let mut st = shared.lock();
            if !st.alive {
                return;
            }
            if let Some(batch) = incoming.take() {
                st.device.accept_batch(batch);
            }
            if !st.device.pull_from_switch() {
                from_switch = never();
            }
            st.poll();
            shared.changed.notify_all();
            let now = PodState::now();
            let st = &mut *st;
            st.iface.poll_delay(now, &st.sockets)
        };
        let wait = delay
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(MAX_IDLE)
            .min(MAX_IDLE);
        if wait.is_zero() {
            continue;
        }
        select! {
            recv(from_switch) -> b => match b {
                Ok(b) => incoming = Some(b),
                Err(_) => from_switch = never(),
            },
            recv(kicked) -> _ => {},
            default(wait) => {},
        }
    }
}

/// A container of a pod: opens sockets in the pod's shared network namespace (its socket
/// constructors live with the sockets, in `net`, so this module does not depend on them).
pub struct Container {
    pub(crate) pod: Arc<PodShared>,
    pub(crate) id: u64,
    name: String,
}

impl Container {
    /// Container name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's IP and MAC as this container's interface reports them.
    pub fn addresses(&self) -> Result<(Ipv4Addr, EthernetAddress), NetError> {
        self.pod.wait(crate::DEFAULT_TIMEOUT, |st| {
            let ip = st.iface.ipv4_addr().ok_or(NetError::AddrNotAvailable);
            let HardwareAddress::Ethernet(mac) = st.iface.hardware_addr();
            Some(ip.map(|ip| (ip, EthernetAddress(mac.0))))
        })
    }
}

impl Drop for Container {
    /// The container's processes are gone: abort its sockets, release its ports. The pod and
    /// the other containers are untouched.
    fn drop(&mut self) {
        let mut st = self.pod.lock();
        let mine: Vec<SocketHandle> = st
            .meta
            .iter()
            .filter(|(_, m)| m.container == self.id)
            .map(|(h, _)| *h)
            .collect();
        for h in mine {
            let is_tcp = match st
                .sockets
                .iter_mut()
                .find(|(sh, _)| *sh == h)
                .map(|(_, s)| s)
            {
                Some(smoltcp::socket::Socket::Tcp(t)) => {
                    t.abort();
                    true
                }
                _ => false,
            };
            if is_tcp {
                // Let the driver send the reset before the socket disappears.
                let id = st.meta.get(&h).map(|m| m.id).unwrap_or_default();
                st.closing.push((h, id, StdInstant::now()));
                if let Some(m) = st.meta.get_mut(&h) {
                    m.container = 0;
                }
            } else {
                st.remove_socket(h);
            }
        }
        st.ports.retain(|_, owner| *owner != self.id);
        drop(st);
        self.pod.kick();
    }
}
