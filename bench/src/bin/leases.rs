//! `leases`: the etcd side of `bench/cluster-convergence`. Writes many flannel leases fast
//! (a few transactions) and polls a node's control socket until it holds the expected number
//! of etcd peers.
//!
//! - `leases fill --endpoint URL --prefix P --count N --control SOCK [--reserve CIDR]...`:
//!   writes N fake leases (distinct free subnets of the network config, PublicIPs from
//!   192.168.78.1 on, VtepMACs `02:fa:00:00:HH:LL`), attached to one etcd lease, in
//!   transactions of `--batch` puts, while polling `PeerList` every `--poll-ms`; reports the
//!   write time and the time from the first write until the node has N more etcd peers.
//! - `leases clear --endpoint URL --prefix P --control SOCK`: deletes every fake lease (and,
//!   with `--also KEY`, other keys) in transactions; reports the time until the node has no
//!   etcd peers left.
//! - `leases wait --control SOCK --count N --since-ns T`: polls until the node has exactly N
//!   etcd peers (also while its socket does not exist yet); reports the time since T
//!   (CLOCK_REALTIME nanoseconds, `date +%s%N`).
//! - `leases put --endpoint URL --key K --value V [--ttl S]`: one put (with an etcd lease of
//!   S seconds); reports the wall clock just before the put was sent, for latency measured
//!   against another process's clock (`ping -D`).
//!
//! Each command prints one JSON object on stdout; errors go to stderr, exit status 1.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
use podswitch::control::{self, Request, Response};
use podswitch::node::PeerSource;

/// Marks the leases this tool writes (their VtepMAC), so that `clear` finds them.
const FAKE_MAC_PREFIX: &str = "02:fa:";

/// Lease writer and peer poller for bench/cluster-convergence.
#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write N fake leases and time the node's convergence to them.
    Fill {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        control: PathBuf,
        /// Subnets not to use (a kernel node's, later).
        #[arg(long)]
        reserve: Vec<String>,
        /// Puts per transaction (etcd's --max-txn-ops defaults to 128).
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// TTL of the etcd lease the fake keys are attached to.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        #[arg(long, default_value_t = 5)]
        poll_ms: u64,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Delete the fake leases and time the node's convergence to none.
    Clear {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        control: PathBuf,
        /// Other keys to delete in the same go.
        #[arg(long)]
        also: Vec<String>,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 5)]
        poll_ms: u64,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Poll until the node has exactly N etcd peers.
    Wait {
        #[arg(long)]
        control: PathBuf,
        #[arg(long)]
        count: usize,
        /// Start of the measured interval, CLOCK_REALTIME ns (default: now).
        #[arg(long)]
        since_ns: Option<u128>,
        #[arg(long, default_value_t = 5)]
        poll_ms: u64,
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// One put; prints the wall clock just before it was sent.
    Put {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        value: String,
        #[arg(long)]
        ttl: Option<i64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leases: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("leases: {e}");
            ExitCode::FAILURE
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn run(cmd: Command) -> Result<String, String> {
    match cmd {
        Command::Fill {
            endpoint,
            prefix,
            count,
            control,
            reserve,
            batch,
            ttl,
            poll_ms,
            timeout_s,
        } => {
            let mut client = connect(&endpoint).await?;
            let prefix = prefix.trim_end_matches('/').to_string();
            let (net, len) = network(&mut client, &prefix).await?;
            let taken = subnets(&mut client, &prefix).await?;
            let reserved: Vec<(u32, u8)> = reserve
                .iter()
                .map(|s| parse_cidr(s))
                .collect::<Result<_, _>>()?;
            let free = free_subnets(net, len, &taken, &reserved);
            if free.len() < count {
                return Err(format!(
                    "only {} free subnets in {}/{} (SubnetLen {len}) for {count} leases",
                    free.len(),
                    Ipv4Addr::from(net.0),
                    net.1
                ));
            }
            let lease = client
                .lease_grant(ttl, None)
                .await
                .map_err(|e| format!("lease grant: {e}"))?
                .id();
            let before = etcd_peers(&control, Duration::from_secs(10))?;
            let puts: Vec<TxnOp> = free[..count]
                .iter()
                .enumerate()
                .map(|(i, &subnet)| {
                    TxnOp::put(
                        subnet_key(&prefix, subnet, len),
                        fake_value(i),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                })
                .collect();
            let target = before + count;
            let poller = Poller::start(control, target, poll_ms, timeout_s);
            let t0 = Instant::now();
            let mut txns = 0;
            for chunk in puts.chunks(batch.max(1)) {
                client
                    .txn(Txn::new().and_then(chunk.to_vec()))
                    .await
                    .map_err(|e| format!("txn: {e}"))?;
                txns += 1;
            }
            let written = t0.elapsed();
            let converged = poller.finish()?.duration_since(t0);
            Ok(format!(
                r#"{{"count":{count},"txns":{txns},"peers_before":{before},"peers_after":{target},"write_ms":{:.1},"converge_ms":{:.1}}}"#,
                ms(written),
                ms(converged)
            ))
        }
        Command::Clear {
            endpoint,
            prefix,
            control,
            also,
            batch,
            poll_ms,
            timeout_s,
        } => {
            let mut client = connect(&endpoint).await?;
            let prefix = prefix.trim_end_matches('/').to_string();
            let resp = client
                .get(
                    format!("{prefix}/subnets/"),
                    Some(GetOptions::new().with_prefix()),
                )
                .await
                .map_err(|e| format!("list: {e}"))?;
            let mut keys: Vec<String> = resp
                .kvs()
                .iter()
                .filter(|kv| {
                    String::from_utf8_lossy(kv.value())
                        .contains(&format!("\"VtepMAC\":\"{FAKE_MAC_PREFIX}"))
                })
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect();
            keys.extend(also);
            let poller = Poller::start(control, 0, poll_ms, timeout_s);
            let t0 = Instant::now();
            let dels: Vec<TxnOp> = keys
                .iter()
                .map(|k| TxnOp::delete(k.as_str(), None))
                .collect();
            for chunk in dels.chunks(batch.max(1)) {
                client
                    .txn(Txn::new().and_then(chunk.to_vec()))
                    .await
                    .map_err(|e| format!("txn: {e}"))?;
            }
            let written = t0.elapsed();
            let converged = poller.finish()?.duration_since(t0);
            Ok(format!(
                r#"{{"deleted":{},"write_ms":{:.1},"converge_ms":{:.1}}}"#,
                keys.len(),
                ms(written),
                ms(converged)
            ))
        }
        Command::Wait {
            control,
            count,
            since_ns,
            poll_ms,
            timeout_s,
        } => {
            let since = since_ns.unwrap_or_else(now_ns);
            let poller = Poller::start(control, count, poll_ms, timeout_s);
            poller.finish()?;
            let done = now_ns();
            Ok(format!(
                r#"{{"count":{count},"elapsed_ms":{:.1}}}"#,
                done.saturating_sub(since) as f64 / 1e6
            ))
        }
        Command::Put {
            endpoint,
            key,
            value,
            ttl,
        } => {
            let mut client = connect(&endpoint).await?;
            let mut options = None;
            if let Some(ttl) = ttl {
                let id = client
                    .lease_grant(ttl, None)
                    .await
                    .map_err(|e| format!("lease grant: {e}"))?
                    .id();
                options = Some(PutOptions::new().with_lease(id));
            }
            let at = now_ns();
            let t0 = Instant::now();
            client
                .put(key, value, options)
                .await
                .map_err(|e| format!("put: {e}"))?;
            Ok(format!(
                r#"{{"sent_ns":{at},"put_ms":{:.2}}}"#,
                ms(t0.elapsed())
            ))
        }
    }
}

async fn connect(endpoint: &str) -> Result<Client, String> {
    Client::connect([endpoint], None)
        .await
        .map_err(|e| format!("etcd {endpoint}: {e}"))
}

/// The network config's Network and SubnetLen (flannel's default SubnetLen: 24).
async fn network(client: &mut Client, prefix: &str) -> Result<((u32, u8), u8), String> {
    let key = format!("{prefix}/config");
    let resp = client
        .get(key.as_str(), None)
        .await
        .map_err(|e| format!("get {key}: {e}"))?;
    let kv = resp.kvs().first().ok_or(format!("{key} is missing"))?;
    let v: serde_json::Value =
        serde_json::from_slice(kv.value()).map_err(|e| format!("{key}: {e}"))?;
    let net = parse_cidr(v["Network"].as_str().ok_or(format!("{key}: no Network"))?)?;
    let len = v["SubnetLen"].as_u64().unwrap_or(24) as u8;
    Ok((net, len))
}

/// The subnets leased under `<prefix>/subnets/`.
async fn subnets(client: &mut Client, prefix: &str) -> Result<Vec<(u32, u8)>, String> {
    let resp = client
        .get(
            format!("{prefix}/subnets/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .map_err(|e| format!("list: {e}"))?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let tail = key.rsplit('/').next()?.replacen('-', "/", 1);
            parse_cidr(&tail).ok()
        })
        .collect())
}

fn parse_cidr(s: &str) -> Result<(u32, u8), String> {
    let (ip, len) = s.split_once('/').ok_or(format!("{s:?} is no CIDR"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let len: u8 = len.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if len > 32 {
        return Err(format!("{s:?}: prefix length over 32"));
    }
    Ok((u32::from(ip), len))
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// Flannel's leasable subnets of `net` (SubnetMin is the second, SubnetMax the last) that
/// overlap neither `taken` nor `reserved`, in order.
fn free_subnets(net: (u32, u8), len: u8, taken: &[(u32, u8)], reserved: &[(u32, u8)]) -> Vec<u32> {
    let n = 1u32 << (len - net.1);
    let step = 1u32 << (32 - len);
    (1..n)
        .map(|i| net.0 + i * step)
        .filter(|&s| !taken.iter().chain(reserved).any(|&t| overlaps((s, len), t)))
        .collect()
}

fn subnet_key(prefix: &str, subnet: u32, len: u8) -> String {
    format!("{prefix}/subnets/{}-{len}", Ipv4Addr::from(subnet))
}

/// Fake lease `i`: PublicIP 192.168.(78 + i / 250).(i % 250 + 1), VtepMAC 02:fa:00:00:HH:LL.
fn fake_value(i: usize) -> String {
    let ip = Ipv4Addr::new(192, 168, 78 + (i / 250) as u8, (i % 250) as u8 + 1);
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{FAKE_MAC_PREFIX}00:00:{:02x}:{:02x}"}}}}"#,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

/// The node's etcd peers, one `PeerList` call.
fn etcd_peers(control: &Path, timeout: Duration) -> Result<usize, String> {
    match control::call(control, &Request::PeerList, timeout) {
        Ok(Response::Peers(peers)) => Ok(peers
            .iter()
            .filter(|p| p.source == PeerSource::Etcd)
            .count()),
        Ok(other) => Err(format!("PeerList answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// A thread polling `PeerList` until the node has exactly `target` etcd peers.
struct Poller {
    thread: std::thread::JoinHandle<Result<Instant, String>>,
}

impl Poller {
    fn start(control: PathBuf, target: usize, poll_ms: u64, timeout_s: u64) -> Self {
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(timeout_s);
            let mut last = None;
            loop {
                match etcd_peers(&control, Duration::from_secs(5)) {
                    Ok(n) if n == target => return Ok(Instant::now()),
                    Ok(n) => last = Some(n),
                    Err(_) => {} // not running yet (wait), or busy: poll again
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "the node did not reach {target} etcd peers in {timeout_s} s (last seen: {last:?})"
                    ));
                }
                std::thread::sleep(Duration::from_millis(poll_ms));
            }
        });
        Self { thread }
    }

    fn finish(self) -> Result<Instant, String> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err("poller panicked".into()))
    }
}
