//! The node's own way into its pod network: the host port (`node.host_interface`, `podsw0`),
//! a TAP in the node's namespace that the switch holds, carrying the gateway address; routes on
//! the node for every peer's CIDR through it; and pod egress masqueraded to the node's address
//! (`node.masquerade`), with rules podswitch installs in the kernel's nftables (iptables where
//! `nft` is missing) and removes on exit, or on the next start after a crash.
//!
//! Invariants: the node's masquerade rules live in one nftables table, `ip podswitch-<node>`,
//! replaced as a whole in one transaction (so a restart never duplicates them); with iptables,
//! every rule carries the comment `podswitch <node>` and is deleted before it is added again.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::netlink::{link_index, with_netlink};
use super::spec::Mac;
use crate::port::TapPort;

/// The host interface's settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct HostNet<'a> {
    pub(super) ifname: &'a str,
    pub(super) mac: Mac,
    pub(super) gateway: Ipv4Addr,
    pub(super) prefix_len: u8,
    pub(super) mtu: u16,
}

/// True if the calling thread's network namespace has a link called `name` (sysfs shows the
/// namespace it was mounted in, so it is read from the thread's own `/proc` view).
fn link_exists_here(name: &str) -> bool {
    std::fs::read_to_string("/proc/thread-self/net/dev").is_ok_and(|dev| {
        dev.lines()
            .skip(2)
            .filter_map(|l| l.split_once(':'))
            .any(|(n, _)| n.trim() == name)
    })
}

/// Creates the host interface in the calling thread's namespace (one queue per worker) and
/// configures it: MAC, MTU, the gateway address, up, IPv6 off. The TAP goes away with its
/// queues' descriptors.
pub(super) fn create(net: &HostNet<'_>, queues: usize) -> Result<Vec<TapPort>, String> {
    let taps = TapPort::create_queues(net.ifname, queues).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            format!(
                "{} exists in this namespace already (another podswitch node here?): {e}",
                net.ifname
            )
        } else if e.raw_os_error() == Some(libc::EINVAL) && link_exists_here(net.ifname) {
            // TUNSETIFF on a name a device of another kind holds.
            format!(
                "{} is an interface of this namespace already, not a TAP podswitch can open (set node.host_interface to a free name, such as the default podsw0, or \"\" for none)",
                net.ifname
            )
        } else {
            format!("creating TAP {}: {e}", net.ifname)
        }
    })?;
    // The node's pods are IPv4 only; keep the node's IPv6 chatter off this link.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", net.ifname),
        "1",
    );
    with_netlink(|handle| async move {
        let idx = link_index(&handle, net.ifname)
            .await
            .map_err(|e| ("the host interface", e))?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .address(net.mac.0.to_vec())
                    .mtu(u32::from(net.mtu))
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| ("the host interface's MAC, MTU and state", e.to_string()))?;
        handle
            .address()
            .add(idx, IpAddr::V4(net.gateway), net.prefix_len)
            .execute()
            .await
            .map_err(|e| ("the host interface's address", e.to_string()))
    })
    .map_err(|(what, e)| format!("configuring {what}: {e}"))?;
    Ok(taps)
}

/// The node's routes through the host interface, over one netlink socket opened in the
/// node's namespace and kept (a socket and a runtime per route would double the time a node
/// takes to learn a thousand peers).
pub(super) struct Routes {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    ifname: String,
    index: u32,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("ifname", &self.ifname)
            .finish()
    }
}

impl Routes {
    /// Opens the socket in the calling thread's namespace, for routes through `ifname`.
    pub(super) fn open(ifname: &str) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| format!("netlink runtime: {e}"))?;
        let (handle, index) = rt.block_on(async {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
            // Driven whenever the runtime runs (each `block_on` below).
            tokio::spawn(conn);
            let index = link_index(&handle, ifname)
                .await
                .map_err(|e| format!("{ifname}: {e}"))?;
            Ok::<_, String>((handle, index))
        })?;
        Ok(Self {
            rt,
            handle,
            ifname: ifname.into(),
            index,
        })
    }

    /// Adds (`add`) or removes the route to `cidr` through the interface (on-link: the switch
    /// answers ARP for a peer's addresses with the router MAC and routes them).
    pub(super) fn set(&self, cidr: Ipv4Net, add: bool) -> Result<(), String> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix_len())
            .output_interface(self.index)
            .scope(rtnetlink::packet_route::route::RouteScope::Link)
            .build();
        let r = self.rt.block_on(async {
            if add {
                self.handle.route().add(msg).replace().execute().await
            } else {
                self.handle.route().del(msg).execute().await
            }
        });
        r.map_err(|e| format!("the route to {cidr} via {}: {e}", self.ifname))
    }
}

/// How the masquerade rules are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    Nft,
    Iptables,
}

/// Pod egress masqueraded to the node's address (flannel's `ipMasq`): packets from the pod
/// CIDR that the node routes out of any interface but the host interface leave with the
/// node's address. Pod-to-pod traffic never reaches the node's routing (the switch tunnels it),
/// so it keeps its pod addresses.
#[derive(Debug)]
pub(super) struct Masquerade {
    node: String,
    backend: Backend,
    cidr: Ipv4Net,
    ifname: String,
}

fn works(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run<S: AsRef<std::ffi::OsStr> + AsRef<str>>(
    cmd: &str,
    args: &[S],
    stdin: Option<&str>,
) -> Result<(), String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .map_err(|e| format!("{cmd}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.iter()
                .map(|a| AsRef::<str>::as_ref(a))
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Masquerade {
    /// Installs the rules for `cidr` leaving other than through `ifname`, replacing any a
    /// crashed run left, and turns on IPv4 forwarding in this namespace.
    pub(super) fn install(node: &str, cidr: Ipv4Net, ifname: &str) -> Result<Self, String> {
        let backend = if works("nft") {
            Backend::Nft
        } else if works("iptables") {
            Backend::Iptables
        } else {
            return Err("neither nft (nftables) nor iptables is installed: install nftables, or set node.masquerade = false".into());
        };
        let m = Masquerade {
            node: node.into(),
            backend,
            cidr,
            ifname: ifname.into(),
        };
        match backend {
            Backend::Nft => run("nft", &["-f", "-"], Some(&m.nft_ruleset()))?,
            Backend::Iptables => {
                m.iptables_clear();
                run("iptables", &m.iptables_rule("-A"), None)?;
            }
        }
        if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() != "1") {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(|e| format!("turning on net.ipv4.ip_forward: {e}"))?;
            tracing::info!("net.ipv4.ip_forward turned on (pod egress is routed by the node)");
        }
        tracing::info!(node, %cidr, via = ?backend, table = %m.table(), "pod egress masqueraded");
        Ok(m)
    }

    /// The nftables table: `podswitch-<node>`.
    fn table(&self) -> String {
        format!("podswitch-{}", self.node)
    }

    /// One transaction: create the table if absent, delete it (and whatever a crashed run left
    /// in it), create it anew.
    fn nft_ruleset(&self) -> String {
        let t = self.table();
        format!(
            "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {} oifname != \"{}\" masquerade comment \"podswitch {}: pod egress\"\n  }}\n}}\n",
            self.cidr, self.ifname, self.node
        )
    }

    fn iptables_rule(&self, op: &str) -> Vec<String> {
        [
            "-t",
            "nat",
            op,
            "POSTROUTING",
            "-s",
            &self.cidr.to_string(),
            "!",
            "-o",
            &self.ifname,
            "-m",
            "comment",
            "--comment",
            &format!("podswitch {}", self.node),
            "-j",
            "MASQUERADE",
        ]
        .map(String::from)
        .to_vec()
    }

    fn iptables_clear(&self) {
        while run("iptables", &self.iptables_rule("-D"), None).is_ok() {}
    }

    /// Removes the rules a crashed run of node `node` may have left (nftables; silent if there
    /// are none or no `nft`).
    pub(super) fn remove_stale(node: &str) {
        if works("nft") {
            let t = format!("podswitch-{node}");
            let _ = run(
                "nft",
                &["-f", "-"],
                Some(&format!("table ip {t}\ndelete table ip {t}\n")),
            );
        }
    }

    /// Removes the rules. Idempotent.
    pub(super) fn remove(&self) {
        match self.backend {
            Backend::Nft => {
                let t = self.table();
                let text = format!("table ip {t}\ndelete table ip {t}\n");
                if let Err(e) = run("nft", &["-f", "-"], Some(&text)) {
                    tracing::warn!("removing the masquerade rules: {e}");
                }
            }
            Backend::Iptables => self.iptables_clear(),
        }
        tracing::info!(node = %self.node, "masquerade rules removed");
    }
}
