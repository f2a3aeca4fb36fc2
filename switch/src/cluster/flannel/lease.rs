//! A lease's value (flannel's `LeaseAttrs` for vxlan, byte for byte) and the peer it describes.
//!
//! Invariant: what [`LeaseAttrs::to_json`] writes, [`LeaseAttrs::parse`] reads back equal; a
//! peer made from a lease is named `etcd-<subnet>`, within the peer-name rules.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use super::json::{addr_field, field, folded, prefixed, string_field, uint_field};
use super::{parse_subnet_key, FlannelError, BACKEND_VXLAN, MAX_VNI, PEER_NAME_PREFIX};
use crate::node::{Mac, PeerSpec};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::flannel::DEFAULT_PREFIX;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
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
}
