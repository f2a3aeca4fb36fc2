//! `podswitch-lab`: a whole cluster on one machine, for newcomers, tests and benchmarks.
//!
//! `up` builds, for a lab called `NAME`:
//! - an underlay namespace `NAME-underlay` holding a bridge `br0` (the "switch" between nodes);
//! - per node `i` (1-based) a host namespace `NAME-node<i>`, joined to `br0` by a veth whose
//!   node end is `eth0` with `192.168.77.<i>/24`;
//! - per node a `podswitch run` daemon inside that namespace (config in `/run/podswitch/NAME/`,
//!   `node.netns` set), owning pod CIDR `10.244.<i>.0/24`, with every other node as a VXLAN peer
//!   and `M` pods `NAME-n<i>p<j>` at `10.244.<i>.<9+j>`.
//!
//! With `--etcd` the nodes lease their subnets instead, as flannel's do: the lab also runs an
//! etcd (Debian's `etcd-server`, `/usr/bin/etcd`) in a namespace `NAME-etcd` joined to `br0`
//! at `192.168.77.254` (clients on port 2379, also on 127.0.0.1 inside that namespace; peers on
//! 2380; data dir, log and pid file in `/run/podswitch/NAME/`), writes flannel's network config
//! (`10.244.0.0/16`, `/24` subnets, VXLAN VNI 1 port 8472) at `/coreos.com/network/config`, and
//! gives every node a `[cluster]` table instead of a pod CIDR and `[[peers]]`. The nodes start
//! without pods; once each is up, the lab asks it which subnet it leased and adds its pods at
//! `.10`, `.11`, ... of that subnet, then waits (bounded) until every node has every other
//! node as a peer from etcd.
//!
//! `down` stops the daemons (they remove their pods), then etcd if there is one, and deletes
//! the node, etcd and underlay namespaces and the state directory (etcd's data with it).
//! Everything lives in namespaces the lab made, with addresses in 10.244.0.0/16 and
//! 192.168.77.0/24; nothing is routed to the machine's own interfaces. Links are made over
//! rtnetlink, like the pods' own.
//!
//! A binary of its own, using only the podswitch library's public API: none of it is in the
//! daemon (`podswitch`) or the CNI plugin.

mod down;
mod layout;
mod netlink;
mod up;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use podswitch::daemon::command_name;

use layout::{Lab, LabError};

/// A whole podswitch cluster on this machine: nodes in namespaces on a bridged underlay, a
/// `podswitch run` per node, pods per node.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the lab and start its nodes; prints how to reach each pod.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods_per_node: usize,
        /// Data-plane threads per node (each pod TAP gets one queue per worker).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Lab name: prefix of its namespaces.
        #[arg(long, default_value = "lab")]
        name: String,
        /// Also run an etcd (Debian's etcd-server) at 192.168.77.254:2379; the nodes lease
        /// their subnets there and learn their peers from it, in flannel's layout.
        #[arg(long)]
        etcd: bool,
        /// The podswitch binary the nodes run (default: the `podswitch` next to this binary,
        /// else the one on PATH).
        #[arg(long, env = "PODSWITCH_BIN")]
        podswitch: Option<PathBuf>,
    },
    /// Stop the lab's nodes and remove everything it made.
    Down {
        /// Lab name.
        #[arg(long, default_value = "lab")]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = match cli.command {
        Command::Up {
            nodes,
            pods_per_node,
            workers,
            name,
            etcd,
            podswitch,
        } => up(&name, nodes, pods_per_node, workers, etcd, podswitch),
        Command::Down { name } => down::down(&name),
    };
    match out {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("podswitch-lab: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `up`: builds the lab and says how to reach its pods.
fn up(
    name: &str,
    nodes: usize,
    pods_per_node: usize,
    workers: usize,
    etcd: bool,
    podswitch: Option<PathBuf>,
) -> Result<String, LabError> {
    let me = std::env::current_exe().map_err(LabError::CurrentExe)?;
    let exe = match podswitch {
        Some(p) => p,
        None => find_podswitch(&me)?,
    };
    let lab = Lab::new(name, nodes, pods_per_node)?
        .with_workers(workers)
        .with_etcd(etcd);
    let cidrs = lab.up(&exe)?;
    Ok(lab.describe(&cidrs, &command_name(&exe), &command_name(&me)))
}

/// The podswitch binary: the one next to this binary (both are built and installed side by
/// side), else the first on `PATH`.
fn find_podswitch(me: &Path) -> Result<PathBuf, LabError> {
    let beside = me.with_file_name("podswitch");
    if beside.is_file() {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("podswitch"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| LabError::NoPodswitch(me.to_path_buf()))
}
