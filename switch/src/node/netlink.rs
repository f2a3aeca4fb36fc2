//! rtnetlink plumbing of the node: configuring a pod's interfaces inside its namespace, and
//! the helpers the node's own links use (a link's index, whether a link exists, the loopback).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::spec::Mac;

/// Addressing of a pod's interface.
#[derive(Debug, Clone, Copy)]
pub(super) struct PodNet<'a> {
    pub(super) ifname: &'a str,
    pub(super) ip: Ipv4Addr,
    pub(super) prefix_len: u8,
    pub(super) mac: Mac,
    pub(super) mtu: u16,
    pub(super) gateway: Ipv4Addr,
}

/// Configures `lo` and the pod's interface (`net.ifname`, `eth0` by default) of the calling
/// thread's namespace over rtnetlink. Errors carry the step that failed.
pub(super) fn configure_pod_interfaces(net: &PodNet<'_>) -> Result<(), (&'static str, String)> {
    // Pods are IPv4-only here: without this, every pod floods router solicitations and DAD
    // probes. Best effort (a kernel without IPv6 has no such files).
    for conf in ["all", "default", net.ifname] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
    }
    with_netlink(|handle| async move {
        let lo = link_index(&handle, "lo").await.map_err(|e| ("lo", e))?;
        let eth0 = link_index(&handle, net.ifname)
            .await
            .map_err(|e| ("the pod interface", e))?;
        let set = |msg| async {
            handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| e.to_string())
        };
        set(LinkUnspec::new_with_index(lo).up().build())
            .await
            .map_err(|e| ("lo up", e))?;
        set(LinkUnspec::new_with_index(eth0)
            .address(net.mac.0.to_vec())
            .mtu(u32::from(net.mtu))
            .build())
        .await
        .map_err(|e| ("the pod interface's MAC and MTU", e))?;
        set(LinkUnspec::new_with_index(eth0).up().build())
            .await
            .map_err(|e| ("the pod interface up", e))?;
        handle
            .address()
            .add(eth0, IpAddr::V4(net.ip), net.prefix_len)
            .execute()
            .await
            .map_err(|e| ("the pod interface's address", e.to_string()))?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(net.gateway)
            .output_interface(eth0)
            .build();
        handle
            .route()
            .add(default)
            .execute()
            .await
            .map_err(|e| ("default route", e.to_string()))
    })
}

/// Runs `f` with an rtnetlink handle whose socket lives in the calling thread's namespace, on
/// a single-threaded runtime (the socket is opened here, so the namespace is the thread's).
pub(crate) fn with_netlink<F, Fut>(f: F) -> Result<(), (&'static str, String)>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: std::future::Future<Output = Result<(), (&'static str, String)>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| ("netlink runtime", e.to_string()))?;
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| ("netlink socket", e.to_string()))?;
        let conn = tokio::spawn(conn);
        let r = f(handle).await;
        conn.abort();
        r
    })
}

/// Sets `lo` up in the calling thread's namespace. The node's own namespace (`node.netns`) may
/// be a bare one (`ip netns add` leaves its loopback down), and the metrics and web view are
/// usually served on 127.0.0.1 there.
pub(crate) fn loopback_up() -> Result<(), (&'static str, String)> {
    with_netlink(|handle| async move {
        let lo = link_index(&handle, "lo").await.map_err(|e| ("lo", e))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(|e| ("lo up", e.to_string()))
    })
}

/// A name for a TAP before it moves into its pod: unique per process and call, ≤ 15 bytes.
pub(super) fn temporary_ifname() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("pst{:x}.{:x}", std::process::id() & 0xfffff, n & 0xffff)
}

pub(crate) async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<u32, String> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(msg.header.index),
        Ok(None) => Err("no such link".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Moves link `from` of the handle's namespace into the namespace open as `ns`, renamed `to`
/// there, in one request (the name is free there; the temporary one is ours here). Errors
/// name the step: `"moving the <what> into the namespace"`.
pub(super) async fn move_link(
    handle: &rtnetlink::Handle,
    from: &str,
    ns: &std::fs::File,
    to: &str,
    what: (&'static str, &'static str),
) -> Result<(), (&'static str, String)> {
    use std::os::fd::AsRawFd;
    let (found, moving) = what;
    let idx = link_index(handle, from).await.map_err(|e| (found, e))?;
    let msg = LinkUnspec::new_with_index(idx)
        .setns_by_fd(ns.as_raw_fd())
        .name(to.to_string())
        .build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| (moving, e.to_string()))
}

/// Whether the calling thread's namespace has a link called `name`.
pub(super) fn has_link(name: &str) -> Result<bool, (&'static str, String)> {
    let mut found = false;
    with_netlink(|handle| {
        let found = &mut found;
        async move {
            *found = link_index(&handle, name).await.is_ok();
            Ok(())
        }
    })?;
    Ok(found)
}
