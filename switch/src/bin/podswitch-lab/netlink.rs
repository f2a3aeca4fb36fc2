//! Netlink for the lab's own links (the underlay bridge, the veths and their addresses), in
//! the network namespace of the calling thread.
//!
//! Invariant: a [`Netlink`] and [`link_index`] act in the namespace the calling thread is in:
//! call them from inside [`podswitch::netns::NetNs::run`] to act in another one.

use std::future::Future;

/// A failed request: what was asked, and the error.
pub(crate) type Failed = (&'static str, String);

/// A netlink socket of the calling thread's namespace, with the runtime that drives it.
pub(crate) struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Netlink {
    /// Opens the socket (in the calling thread's namespace) and runs `requests` on it to their
    /// end.
    pub(crate) fn run<Fut>(requests: impl FnOnce(rtnetlink::Handle) -> Fut) -> Result<(), Failed>
    where
        Fut: Future<Output = Result<(), Failed>>,
    {
        let netlink = Self::open()?;
        netlink.runtime.block_on(requests(netlink.handle.clone()))
    }

    fn open() -> Result<Self, Failed> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| ("netlink runtime", e.to_string()))?;
        // The socket registers with the runtime's reactor: made inside it.
        let opened = {
            let _inside = runtime.enter();
            rtnetlink::new_connection().map_err(|e| ("netlink socket", e.to_string()))?
        };
        let (connection, handle, _) = opened;
        let connection = runtime.spawn(connection);
        Ok(Self {
            runtime,
            handle,
            connection,
        })
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// The index of link `name` in the calling thread's namespace.
pub(crate) fn link_index(name: &str) -> Result<u32, String> {
    nix::net::if_::if_nametoindex(name).map_err(|e| format!("{name}: {e}"))
}
