//! flannel's etcd layout and formats (as in flannel v0.28.9, etcd v3 API), so that podswitch
//! and flannel nodes can share one prefix:
//!
//! - `<prefix>/config`: the network config, [`NetworkConfig::parse`]. Go's `encoding/json`
//!   matches field names case-insensitively, so `network` is `Network` here too.
//! - `<prefix>/subnets/10.244.5.0-24`: one lease per node, [`subnet_key`] and
//!   [`parse_subnet_key`]; the value is [`LeaseAttrs`], written byte for byte as flannel writes it.
//!   The subnet is only in the key and the expiry only in the etcd lease attached to it.
//! - [`candidates`]: the subnets a node tries to lease, in flannel's order.
//! - [`Lease::to_peer_spec`]: a lease as the crate's one peer shape, so leases go down the same
//!   path as `peer add`.
//!
//! Pure: nothing here talks to etcd.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

use crate::node::{Mac, PeerSpec};

/// flannel's default `--etcd-prefix`.
pub(crate) const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// The one backend podswitch speaks.
pub(crate) const BACKEND_VXLAN: &str = "vxlan";
/// flannel's backend when the config has no `Backend` (its code says udp; its docs say vxlan).
const BACKEND_MISSING: &str = "udp";
/// flannel's default VXLAN network identifier.
pub(crate) const DEFAULT_VNI: u32 = 1;
/// The VXLAN port flannel gets when `Backend.Port` is 0 or absent (the kernel's default).
pub(crate) const DEFAULT_PORT: u16 = 8472;
/// Largest VNI (24 bits).
const MAX_VNI: u32 = (1 << 24) - 1;
/// Prefix of the peer names made from leases: `etcd-10.244.5.0-24`.
pub(crate) const PEER_NAME_PREFIX: &str = "etcd-";

/// What is wrong, and with which key (`Network`, `Backend.Type`, `subnets/<key>`, `PublicIP`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub(crate) struct FlannelError {
    /// The config field, lease field or etcd key at fault.
    pub(crate) key: String,
    /// Why.
    pub(crate) reason: String,
}

impl FlannelError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The prefix without trailing slashes (`/coreos.com/network/` is `/coreos.com/network`).
fn trim(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// `<prefix>/config`, where the network config lives.
pub(crate) fn config_key(prefix: &str) -> String {
    format!("{}/config", trim(prefix))
}

/// `<prefix>/subnets`: list (and watch) with this as a key prefix to get every lease.
pub(crate) fn subnets_key(prefix: &str) -> String {
    format!("{}/subnets", trim(prefix))
}

/// `<prefix>/subnets/10.244.5.0-24`, the key of the lease on `subnet`.
pub(crate) fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{}/subnets/{}-{}",
        trim(prefix),
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The subnet of a lease key `<prefix>/subnets/10.244.5.0-24`.
///
/// flannel's dual-stack keys append `&<ipv6>-<len>` (`10.244.5.0-24&fd00:5::-64`): the IPv6
/// part is checked and dropped (podswitch is IPv4-only; the IPv4 subnet is still taken).
/// Anything else is an error naming the key, for the caller to log and skip: a key outside
/// `<prefix>/subnets/`, a malformed address or length, or host bits set (`10.244.5.1-24`).
pub(crate) fn parse_subnet_key(prefix: &str, key: &str) -> Result<Ipv4Net, FlannelError> {
    let err = |reason: &str| FlannelError::new(key, reason);
    let dir = format!("{}/", subnets_key(prefix));
    let rest = key
        .strip_prefix(&dir)
        .ok_or_else(|| err(&format!("is not under {dir}")))?;
    let (v4, v6) = match rest.split_once('&') {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (rest, None),
    };
    let subnet = parse_net_part(v4)
        .and_then(|(addr, len)| Ipv4Net::new(addr, len).ok())
        .ok_or_else(|| {
            err("is not a flannel subnet key (expected <prefix>/subnets/a.b.c.d-len)")
        })?;
    if subnet.network() != subnet.addr() {
        return Err(err(&format!(
            "{} has host bits set (the subnet would be {})",
            subnet,
            subnet.trunc()
        )));
    }
    if let Some(v6) = v6 {
        let ok = v6
            .rsplit_once('-')
            .and_then(|(a, l)| Some((a.parse::<Ipv6Addr>().ok()?, l)))
            .is_some_and(|(_, l)| is_decimal(l) && l.parse::<u8>().is_ok_and(|l| l <= 128));
        if !ok {
            return Err(err(
                "has a malformed IPv6 part after '&' (expected &<ipv6>-len)",
            ));
        }
    }
    Ok(subnet)
}

/// `a.b.c.d-len` split and parsed (the length in plain decimal digits).
fn parse_net_part(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = s.rsplit_once('-')?;
    if !is_decimal(len) {
        return None;
    }
    Some((addr.parse().ok()?, len.parse().ok()?))
}

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A JSON object with its keys lower-cased, as Go's case-insensitive field matching sees it
/// (for duplicate keys the last one wins, as in Go). `null` is an absent object, as in Go.
fn folded(value: &Value, key: &str) -> Result<Option<Map<String, Value>>, FlannelError> {
    match value {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
        )),
        other => Err(FlannelError::new(
            key,
            format!("is {}, not a JSON object", kind(other)),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field `name` (its Go spelling, used in errors) of a folded object; `null` counts as absent.
fn field<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(&name.to_ascii_lowercase()).filter(|v| !v.is_null())
}

fn string_field<'a>(
    m: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, FlannelError> {
    match field(m, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(FlannelError::new(
            name,
            format!("is {}, not a string", kind(other)),
        )),
    }
}

fn uint_field(m: &Map<String, Value>, name: &str) -> Result<Option<u64>, FlannelError> {
    match field(m, name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| FlannelError::new(name, format!("{v} is not a non-negative integer"))),
    }
}

fn addr_field(m: &Map<String, Value>, name: &str) -> Result<Option<Ipv4Addr>, FlannelError> {
    string_field(m, name)?
        .map(|s| {
            s.parse()
                .map_err(|_| FlannelError::new(name, format!("{s:?} is not an IPv4 address")))
        })
        .transpose()
}

/// flannel's network config (`<prefix>/config`), with its defaults filled in and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetworkConfig {
    /// The cluster's pod network (`Network`), host bits cleared as flannel does.
    pub(crate) network: Ipv4Net,
    /// Prefix length of each node's subnet (`SubnetLen`).
    pub(crate) subnet_len: u8,
    /// First subnet that may be leased (`SubnetMin`, default: the network's second subnet).
    pub(crate) subnet_min: Ipv4Addr,
    /// Last subnet that may be leased (`SubnetMax`, default: the network's last subnet).
    pub(crate) subnet_max: Ipv4Addr,
    /// `Backend.VNI` (default 1).
    pub(crate) vni: u32,
    /// `Backend.Port` (0 or absent: 8472, the kernel's default that flannel gets).
    pub(crate) port: u16,
}

impl NetworkConfig {
    /// Parses and checks the config's bytes as flannel does (`pkg/subnet/config.go`), plus
    /// podswitch's own rules: the backend must be vxlan, SubnetMin <= SubnetMax, and the VNI
    /// must fit 24 bits. Errors name the key (`Network`, `SubnetLen`, `Backend.Type`, ...).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, FlannelError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| FlannelError::new("config", format!("is not JSON: {e}")))?;
        let top = folded(&value, "config")?
            .ok_or_else(|| FlannelError::new("config", "is null, not a JSON object"))?;

        if let Some(v) = field(&top, "EnableIPv4") {
            if v.as_bool() != Some(true) {
                return Err(FlannelError::new(
                    "EnableIPv4",
                    format!("is {v}; podswitch needs the IPv4 network"),
                ));
            }
        }
        let network = match string_field(&top, "Network")? {
            None => {
                return Err(FlannelError::new(
                    "Network",
                    "is missing (flannel: please define a correct Network parameter)",
                ))
            }
            Some(s) => s
                .parse::<Ipv4Net>()
                .map_err(|_| FlannelError::new("Network", format!("{s:?} is not an IPv4 CIDR")))?
                .trunc(),
        };
        let prefix = network.prefix_len();

        let subnet_len = match uint_field(&top, "SubnetLen")? {
            Some(len) if len > 0 => {
                if len > 30 {
                    return Err(FlannelError::new(
                        "SubnetLen",
                        format!("{len} must be less than /31"),
                    ));
                }
                let len = len as u8;
                if len < prefix + 2 {
                    return Err(FlannelError::new(
                        "SubnetLen",
                        format!(
                            "/{len} leaves fewer than four subnets in Network {network} \
                             (at least /{})",
                            prefix + 2
                        ),
                    ));
                }
                len
            }
            _ if prefix > 28 => {
                return Err(FlannelError::new(
                    "Network",
                    format!("{network} is too small (the smallest useful network is a /28)"),
                ))
            }
            _ if prefix <= 22 => 24,
            _ => prefix + 2,
        };
        let size = 1u32 << (32 - subnet_len);
        let mask = u32::MAX << (32 - subnet_len);
        let net = u32::from(network.network());
        let last = u32::from(network.broadcast());

        let bound = |name: &str, default: u32| -> Result<Ipv4Addr, FlannelError> {
            let Some(addr) = addr_field(&top, name)?.filter(|a| !a.is_unspecified()) else {
                return Ok(Ipv4Addr::from(default));
            };
            if !network.contains(&addr) {
                return Err(FlannelError::new(
                    name,
                    format!("{addr} is not in Network {network}"),
                ));
            }
            if u32::from(addr) & mask != u32::from(addr) {
                return Err(FlannelError::new(
                    name,
                    format!("{addr} is not on a /{subnet_len} boundary (SubnetLen)"),
                ));
            }
            Ok(addr)
        };
        let subnet_min = bound("SubnetMin", net + size)?;
        let subnet_max = bound("SubnetMax", last & mask)?;
        if subnet_min > subnet_max {
            return Err(FlannelError::new(
                "SubnetMin",
                format!("{subnet_min} is above SubnetMax {subnet_max}"),
            ));
        }

        let backend = match field(&top, "Backend") {
            None => None,
            Some(b) => folded(b, "Backend")?,
        };
        let backend_type = match &backend {
            None => BACKEND_MISSING.to_string(),
            Some(b) => string_field(b, "Type")
                .map_err(|e| FlannelError::new("Backend.Type", e.reason))?
                .unwrap_or("")
                .to_string(),
        };
        if backend_type != BACKEND_VXLAN {
            let why = if backend.is_none() {
                " (no Backend: flannel then uses udp)".to_string()
            } else {
                String::new()
            };
            return Err(FlannelError::new(
                "Backend.Type",
                format!("{backend_type:?}{why} is not supported; podswitch speaks only \"vxlan\""),
            ));
        }
        let backend = backend.unwrap_or_default();
        let vni = match uint_field(&backend, "VNI").map_err(|e| prefixed("Backend", e))? {
            None => DEFAULT_VNI,
            Some(v) if v <= u64::from(MAX_VNI) => v as u32,
            Some(v) => {
                return Err(FlannelError::new(
                    "Backend.VNI",
                    format!("{v} does not fit VXLAN's 24 bits"),
                ))
            }
        };
        let port = match uint_field(&backend, "Port").map_err(|e| prefixed("Backend", e))? {
            None | Some(0) => DEFAULT_PORT,
            Some(p) => u16::try_from(p)
                .map_err(|_| FlannelError::new("Backend.Port", format!("{p} is not a UDP port")))?,
        };
        Ok(Self {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            vni,
            port,
        })
    }

    /// Whether `subnet` is one flannel could lease here: of SubnetLen, aligned, between
    /// SubnetMin and SubnetMax.
    pub(crate) fn is_leasable(&self, subnet: Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.addr() == subnet.network()
            && (self.subnet_min..=self.subnet_max).contains(&subnet.network())
    }

    /// Every leasable subnet, SubnetMin first, ascending.
    fn range(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let size = 1u64 << (32 - self.subnet_len);
        let (min, max) = (
            u32::from(self.subnet_min) as u64,
            u32::from(self.subnet_max) as u64,
        );
        (0..)
            .map(move |i| min + i * size)
            .take_while(move |&a| a <= max)
            .map(|a| Ipv4Net::new(Ipv4Addr::from(a as u32), self.subnet_len).expect("len <= 30"))
    }
}

fn prefixed(parent: &str, e: FlannelError) -> FlannelError {
    FlannelError::new(format!("{parent}.{}", e.key), e.reason)
}

/// A lease's value: flannel's `LeaseAttrs` for the vxlan backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseAttrs {
    /// The node's underlay address, where VXLAN is sent (`PublicIP`).
    pub(crate) public_ip: Ipv4Addr,
    /// `BackendData.VNI`.
    pub(crate) vni: u32,
    /// `BackendData.VtepMAC`: the node's VTEP MAC.
    pub(crate) vtep_mac: Mac,
}

impl LeaseAttrs {
    /// The value exactly as flannel writes it (field order, `PublicIPv6` null, MAC lower case):
    /// `{"PublicIP":"192.168.77.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`.
    pub(crate) fn to_json(self) -> String {
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"{BACKEND_VXLAN}","BackendData":{{"VNI":{},"VtepMAC":"{}"}}}}"#,
            self.public_ip, self.vni, self.vtep_mac
        )
    }

    /// Parses a lease value written by flannel or podswitch: field names of any case, extra
    /// fields (`PublicIPv6`, `BackendV6Data`, ...) ignored. A backend other than vxlan is an
    /// error naming `BackendType` (such leases are skipped by the caller).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, FlannelError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| FlannelError::new("lease", format!("is not JSON: {e}")))?;
        let top = folded(&value, "lease")?
            .ok_or_else(|| FlannelError::new("lease", "is null, not a JSON object"))?;
        let public_ip = addr_field(&top, "PublicIP")?
            .ok_or_else(|| FlannelError::new("PublicIP", "is missing"))?;
        let backend_type = string_field(&top, "BackendType")?.unwrap_or("");
        if backend_type != BACKEND_VXLAN {
            return Err(FlannelError::new(
                "BackendType",
                format!("{backend_type:?} is not \"vxlan\", the one backend podswitch speaks"),
            ));
        }
        let data = match field(&top, "BackendData") {
            None => None,
            Some(d) => folded(d, "BackendData")?,
        }
        .ok_or_else(|| FlannelError::new("BackendData", "is missing"))?;
        let vni = match uint_field(&data, "VNI").map_err(|e| prefixed("BackendData", e))? {
            Some(v) if v <= u64::from(MAX_VNI) => v as u32,
            Some(v) => {
                return Err(FlannelError::new(
                    "BackendData.VNI",
                    format!("{v} does not fit VXLAN's 24 bits"),
                ))
            }
            None => return Err(FlannelError::new("BackendData.VNI", "is missing")),
        };
        let mac = string_field(&data, "VtepMAC")
            .map_err(|e| prefixed("BackendData", e))?
            .ok_or_else(|| FlannelError::new("BackendData.VtepMAC", "is missing"))?;
        let vtep_mac = mac.parse().map_err(|e: crate::node::MacParseError| {
            FlannelError::new("BackendData.VtepMAC", e.to_string())
        })?;
        Ok(Self {
            public_ip,
            vni,
            vtep_mac,
        })
    }
}

/// A node's lease: its subnet (from the key) and its attributes (from the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The node's pod subnet.
    pub(crate) subnet: Ipv4Net,
    /// What the value says.
    pub(crate) attrs: LeaseAttrs,
}

impl Lease {
    /// Parses a key and value read under `<prefix>/subnets/`.
    pub(crate) fn parse(prefix: &str, key: &str, value: &[u8]) -> Result<Self, FlannelError> {
        let subnet = parse_subnet_key(prefix, key)?;
        let attrs = LeaseAttrs::parse(value).map_err(|e| prefixed(key, e))?;
        Ok(Self { subnet, attrs })
    }

    /// The peer name of a lease on `subnet`: `etcd-10.244.5.0-24` (at most 23 characters, of
    /// letters, digits, '.' and '-': within the peer-name rules).
    pub(crate) fn peer_name(subnet: Ipv4Net) -> String {
        format!(
            "{PEER_NAME_PREFIX}{}-{}",
            subnet.network(),
            subnet.prefix_len()
        )
    }

    /// The lease as a peer, to go down the same path as `peer add`.
    pub(crate) fn to_peer_spec(self) -> PeerSpec {
        PeerSpec {
            name: Self::peer_name(self.subnet),
            underlay: self.attrs.public_ip,
            pod_cidr: self.subnet,
            vtep_mac: Some(self.attrs.vtep_mac),
        }
    }
}

/// Where a subnet to try comes from, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Candidate {
    /// A lease already in etcd whose PublicIP is ours: take it back (renew it).
    Own(Ipv4Net),
    /// Our previous subnet (flannel: `/run/flannel/subnet.env`'s FLANNEL_SUBNET), free now.
    Previous(Ipv4Net),
    /// A free subnet between SubnetMin and SubnetMax.
    Free(Ipv4Net),
}

impl Candidate {
    /// The subnet to try.
    pub(crate) fn subnet(self) -> Ipv4Net {
        match self {
            Self::Own(s) | Self::Previous(s) | Self::Free(s) => s,
        }
    }
}

/// The subnets to try to lease, in flannel's order: first a lease whose PublicIP is `our_ip`
/// (only leasable ones; the lowest if several); then `previous` if it is leasable and nobody
/// holds it; then at most `max_free` free subnets, ascending from SubnetMin (flannel picks at
/// random among up to 100 free ones; podswitch goes in order, deterministically: a lost create
/// race just moves on to the next candidate).
///
/// `taken` is every current lease as (subnet, PublicIP). An error names `SubnetMax` when no
/// candidate is left (the range is exhausted).
pub(crate) fn candidates(
    config: &NetworkConfig,
    taken: impl IntoIterator<Item = (Ipv4Net, Ipv4Addr)>,
    our_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    max_free: usize,
) -> Result<Vec<Candidate>, FlannelError> {
    let taken: Vec<(Ipv4Net, Ipv4Addr)> = taken.into_iter().collect();
    let mut out = Vec::new();
    if let Some(own) = taken
        .iter()
        .filter(|(s, ip)| *ip == our_ip && config.is_leasable(*s))
        .map(|(s, _)| *s)
        .min()
    {
        out.push(Candidate::Own(own));
    }
    let held: HashSet<Ipv4Net> = taken.iter().map(|(s, _)| s.trunc()).collect();
    if let Some(prev) = previous {
        if config.is_leasable(prev) && !held.contains(&prev) {
            out.push(Candidate::Previous(prev));
        }
    }
    out.extend(
        config
            .range()
            .filter(|s| !held.contains(s) && Some(*s) != previous)
            .take(max_free)
            .map(Candidate::Free),
    );
    if out.is_empty() {
        return Err(FlannelError::new(
            "SubnetMax",
            format!(
                "no free /{} left between SubnetMin {} and SubnetMax {} of Network {} \
                 ({} leases held)",
                config.subnet_len,
                config.subnet_min,
                config.subnet_max,
                config.network,
                held.len()
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn cfg(json: &str) -> Result<NetworkConfig, FlannelError> {
        NetworkConfig::parse(json.as_bytes())
    }

    fn err_key(json: &str) -> String {
        cfg(json).unwrap_err().key
    }

    const FULL: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.20.0","Backend":{"Type":"vxlan","VNI":7,"Port":4789}}"#;

    #[test]
    fn config_full() {
        let c = cfg(FULL).unwrap();
        assert_eq!(c.network, net("10.244.0.0/16"));
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 20, 0));
        assert_eq!((c.vni, c.port), (7, 4789));
    }

    #[test]
    fn config_field_names_are_case_insensitive_and_extras_ignored() {
        let c = cfg(r#"{"network":"10.244.0.0/16","SUBNETLEN":24,"backend":{"type":"vxlan","vni":7,"pOrT":4789,"DirectRouting":true},"EnableIPv6":false}"#).unwrap();
        assert_eq!(c.network, net("10.244.0.0/16"));
        assert_eq!((c.vni, c.port), (7, 4789));
    }

    #[test]
    fn config_defaults() {
        let c = cfg(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!((c.vni, c.port), (DEFAULT_VNI, DEFAULT_PORT));
        // Port 0 is the kernel's default, 8472.
        let c = cfg(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":0}}"#).unwrap();
        assert_eq!(c.port, 8472);
        // A /22 still gets /24s; a /23 gets prefix + 2.
        let c = cfg(r#"{"Network":"10.1.0.0/22","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.subnet_len, 24);
        let c = cfg(r#"{"Network":"10.1.0.0/23","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.subnet_len, 25);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 1, 0, 128));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 1, 1, 128));
        // Host bits in Network are cleared, as flannel does; null is absent, as in Go.
        let c = cfg(r#"{"Network":"10.244.3.7/16","SubnetLen":null,"Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert_eq!(c.network, net("10.244.0.0/16"));
        assert_eq!(c.subnet_len, 24);
    }

    #[test]
    fn config_errors_name_the_key() {
        assert_eq!(err_key("not json"), "config");
        assert_eq!(err_key("[]"), "config");
        assert_eq!(err_key(r#"{"Backend":{"Type":"vxlan"}}"#), "Network");
        assert_eq!(
            err_key(r#"{"Network":"10.244.0.0","Backend":{"Type":"vxlan"}}"#),
            "Network"
        );
        assert_eq!(
            err_key(r#"{"Network":"10.0.0.0/29","Backend":{"Type":"vxlan"}}"#),
            "Network"
        );
        assert_eq!(
            err_key(r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#),
            "SubnetLen"
        );
        assert_eq!(
            err_key(r#"{"Network":"10.244.0.0/16","SubnetLen":17,"Backend":{"Type":"vxlan"}}"#),
            "SubnetLen"
        );
        assert_eq!(
            err_key(r#"{"Network":"10.244.0.0/16","SubnetLen":"24","Backend":{"Type":"vxlan"}}"#),
            "SubnetLen"
        );
        assert_eq!(
            err_key(
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.1.0","Backend":{"Type":"vxlan"}}"#
            ),
            "SubnetMin"
        );
        assert_eq!(
            err_key(
                r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.1","Backend":{"Type":"vxlan"}}"#
            ),
            "SubnetMax"
        );
        assert_eq!(
            err_key(
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0","Backend":{"Type":"vxlan"}}"#
            ),
            "SubnetMin"
        );
        let e = cfg(r#"{"Network":"10.244.0.0/16"}"#).unwrap_err();
        assert_eq!(e.key, "Backend.Type");
        assert!(e.reason.contains("udp"), "{e}");
        assert_eq!(
            err_key(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#),
            "Backend.Type"
        );
        assert_eq!(
            err_key(r#"{"Network":"10.244.0.0/16","Backend":{"Type":1}}"#),
            "Backend.Type"
        );
        assert_eq!(
            err_key(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#),
            "Backend.VNI"
        );
        assert_eq!(
            err_key(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#),
            "Backend.Port"
        );
        assert_eq!(
            err_key(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":-1}}"#),
            "Backend.Port"
        );
        assert_eq!(
            err_key(r#"{"Network":"10.244.0.0/16","EnableIPv4":false,"Backend":{"Type":"vxlan"}}"#),
            "EnableIPv4"
        );
    }

    #[test]
    fn keys() {
        assert_eq!(config_key(DEFAULT_PREFIX), "/coreos.com/network/config");
        assert_eq!(config_key("/p/"), "/p/config");
        assert_eq!(subnets_key(DEFAULT_PREFIX), "/coreos.com/network/subnets");
        let key = subnet_key(DEFAULT_PREFIX, net("10.244.5.0/24"));
        assert_eq!(key, "/coreos.com/network/subnets/10.244.5.0-24");
        assert_eq!(
            parse_subnet_key(DEFAULT_PREFIX, &key).unwrap(),
            net("10.244.5.0/24")
        );
        assert_eq!(
            parse_subnet_key("/coreos.com/network/", &key).unwrap(),
            net("10.244.5.0/24")
        );
        // Dual stack: the IPv6 part is checked and dropped.
        assert_eq!(
            parse_subnet_key(
                DEFAULT_PREFIX,
                "/coreos.com/network/subnets/10.244.5.0-24&fd00:10:244:5::-64"
            )
            .unwrap(),
            net("10.244.5.0/24")
        );
    }

    #[test]
    fn bad_subnet_keys_are_errors_naming_the_key() {
        for key in [
            "/coreos.com/network/config",
            "/other/subnets/10.244.5.0-24",
            "/coreos.com/network/subnets/",
            "/coreos.com/network/subnets/10.244.5.0",
            "/coreos.com/network/subnets/10.244.5.0/24",
            "/coreos.com/network/subnets/10.244.5.0-33",
            "/coreos.com/network/subnets/10.244.5.0-+24",
            "/coreos.com/network/subnets/10.244.5.1-24",
            "/coreos.com/network/subnets/10.244.05.0-24",
            "/coreos.com/network/subnets/10.244.5.0-24&nope",
            "/coreos.com/network/subnets/10.244.5.0-24&fd00::-129",
            "/coreos.com/network/subnets/10.244.5.0-24/extra",
        ] {
            let e = parse_subnet_key(DEFAULT_PREFIX, key).unwrap_err();
            assert_eq!(e.key, key);
        }
    }

    const FLANNEL_VALUE: &[u8] = br#"{"PublicIP":"192.168.77.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    fn attrs() -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::new(192, 168, 77, 1),
            vni: 1,
            vtep_mac: Mac([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]),
        }
    }

    #[test]
    fn lease_value_is_flannels_byte_for_byte() {
        assert_eq!(attrs().to_json().as_bytes(), FLANNEL_VALUE);
        assert_eq!(LeaseAttrs::parse(FLANNEL_VALUE).unwrap(), attrs());
        // And it is valid JSON.
        serde_json::from_str::<Value>(&attrs().to_json()).unwrap();
    }

    #[test]
    fn lease_value_tolerates_case_and_extra_fields() {
        let v = br#"{"publicip":"192.168.77.1","PublicIPv6":"fd00::1","backendtype":"vxlan","BackendData":{"vni":1,"VTEPMAC":"C6:D2:32:6F:8F:44"},"BackendV6Data":{"VNI":1},"Other":3}"#;
        assert_eq!(LeaseAttrs::parse(v).unwrap(), attrs());
    }

    #[test]
    fn bad_lease_values_name_the_field() {
        let key = |v: &str| LeaseAttrs::parse(v.as_bytes()).unwrap_err().key;
        assert_eq!(key("{"), "lease");
        assert_eq!(key(r#"{"BackendType":"vxlan"}"#), "PublicIP");
        assert_eq!(
            key(r#"{"PublicIP":"fd00::1","BackendType":"vxlan"}"#),
            "PublicIP"
        );
        assert_eq!(
            key(r#"{"PublicIP":"192.168.77.1","BackendType":"host-gw","BackendData":null}"#),
            "BackendType"
        );
        assert_eq!(
            key(r#"{"PublicIP":"192.168.77.1","BackendType":"vxlan"}"#),
            "BackendData"
        );
        assert_eq!(
            key(
                r#"{"PublicIP":"192.168.77.1","BackendType":"vxlan","BackendData":{"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
            ),
            "BackendData.VNI"
        );
        assert_eq!(
            key(
                r#"{"PublicIP":"192.168.77.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2"}}"#
            ),
            "BackendData.VtepMAC"
        );
    }

    #[test]
    fn lease_to_peer_spec() {
        let key = "/coreos.com/network/subnets/10.244.5.0-24";
        let lease = Lease::parse(DEFAULT_PREFIX, key, FLANNEL_VALUE).unwrap();
        let peer = lease.to_peer_spec();
        assert_eq!(peer.name, "etcd-10.244.5.0-24");
        assert_eq!(peer.underlay, Ipv4Addr::new(192, 168, 77, 1));
        assert_eq!(peer.pod_cidr, net("10.244.5.0/24"));
        assert_eq!(peer.vtep_mac, Some(attrs().vtep_mac));
        // The longest possible name is within the peer-name rules (63 characters of
        // letters, digits, '.', '_', '-').
        let longest = Lease::peer_name(net("255.255.255.252/30"));
        assert!(longest.len() <= 63);
        assert!(longest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')));
        // A bad value names the key it came from.
        let e = Lease::parse(DEFAULT_PREFIX, key, b"{}").unwrap_err();
        assert_eq!(e.key, format!("{key}.PublicIP"));
    }

    fn small() -> NetworkConfig {
        // /22 into /24s: SubnetMin 10.1.1.0, SubnetMax 10.1.3.0 (three leasable subnets).
        cfg(r#"{"Network":"10.1.0.0/22","Backend":{"Type":"vxlan"}}"#).unwrap()
    }

    const US: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
    const THEM: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

    #[test]
    fn candidates_in_flannels_order() {
        let c = small();
        // Nothing taken: the free ones in order.
        assert_eq!(
            candidates(&c, [], US, None, 100).unwrap(),
            vec![
                Candidate::Free(net("10.1.1.0/24")),
                Candidate::Free(net("10.1.2.0/24")),
                Candidate::Free(net("10.1.3.0/24")),
            ]
        );
        // Our own lease first, then the previous subnet, then the free ones.
        let taken = [(net("10.1.3.0/24"), US), (net("10.1.1.0/24"), THEM)];
        assert_eq!(
            candidates(&c, taken, US, Some(net("10.1.2.0/24")), 100).unwrap(),
            vec![
                Candidate::Own(net("10.1.3.0/24")),
                Candidate::Previous(net("10.1.2.0/24")),
            ]
        );
        // A previous subnet someone else holds, or outside the range, is skipped.
        let taken = [(net("10.1.2.0/24"), THEM)];
        assert_eq!(
            candidates(&c, taken, US, Some(net("10.1.2.0/24")), 100).unwrap(),
            vec![
                Candidate::Free(net("10.1.1.0/24")),
                Candidate::Free(net("10.1.3.0/24")),
            ]
        );
        assert_eq!(
            candidates(&c, [], US, Some(net("10.1.0.0/24")), 1).unwrap(),
            vec![Candidate::Free(net("10.1.1.0/24"))]
        );
        // Our own lease outside the range (a changed config) is not taken back.
        let taken = [(net("10.1.0.0/24"), US)];
        assert_eq!(
            candidates(&c, taken, US, None, 1).unwrap(),
            vec![Candidate::Free(net("10.1.1.0/24"))]
        );
        assert_eq!(
            Candidate::Own(net("10.1.3.0/24")).subnet(),
            net("10.1.3.0/24")
        );
    }

    #[test]
    fn exhausted_range_is_a_clear_error() {
        let c = small();
        let taken = [
            (net("10.1.1.0/24"), THEM),
            (net("10.1.2.0/24"), THEM),
            (net("10.1.3.0/24"), THEM),
        ];
        let e = candidates(&c, taken, US, Some(net("10.1.2.0/24")), 100).unwrap_err();
        assert_eq!(e.key, "SubnetMax");
        assert!(e.reason.contains("no free /24"), "{e}");
    }

    #[test]
    fn range_reaches_the_top_of_the_address_space() {
        let c = cfg(r#"{"Network":"255.255.255.0/24","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.subnet_len, 26);
        let all: Vec<_> = c.range().collect();
        assert_eq!(
            all,
            vec![
                net("255.255.255.64/26"),
                net("255.255.255.128/26"),
                net("255.255.255.192/26")
            ]
        );
    }
}
