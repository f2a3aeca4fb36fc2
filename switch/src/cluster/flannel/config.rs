//! flannel's network config (`<prefix>/config`) with its defaults and checks, and the order in
//! which a node picks its subnet.
//!
//! Invariant: a parsed config has SubnetMin <= SubnetMax, both on SubnetLen boundaries inside
//! Network, so every candidate is a leasable subnet and the range is never empty.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use super::json::{addr_field, field, folded, prefixed, string_field, uint_field};
use super::{FlannelError, BACKEND_MISSING, BACKEND_VXLAN, DEFAULT_PORT, DEFAULT_VNI, MAX_VNI};

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
