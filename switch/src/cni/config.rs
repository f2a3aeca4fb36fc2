//! The network config a runtime hands the plugin on stdin, the IPAM plugin's result, and the
//! result and error objects the plugin prints (CNI spec 1.0.0; 0.4.0 accepted and answered).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde_json::{json, Map, Value};

use super::CniError;

/// The versions of the spec this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["0.4.0", "1.0.0"];

/// The version answered when the config's is unknown (VERSION, early errors).
pub const DEFAULT_VERSION: &str = "1.0.0";

/// Error codes of the spec (and 1.1's STATUS).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// Plugin not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// Any other failure.
    pub const OTHER: u32 = 999;
}

/// The `cniVersion` of `stdin` if it is one this plugin speaks, else [`DEFAULT_VERSION`].
/// Never fails: VERSION and error objects use it on any input.
pub fn version_of(stdin: &[u8]) -> &'static str {
    let asked = serde_json::from_slice::<Value>(stdin).ok().and_then(|v| {
        v.get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    SUPPORTED_VERSIONS
        .iter()
        .find(|v| asked.as_deref() == Some(**v))
        .copied()
        .unwrap_or(DEFAULT_VERSION)
}

/// A parsed network config; `raw` is the whole object, handed to the IPAM plugin (amended by
/// [`NetConf::fill_range`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`, one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// `name` of the network.
    pub name: String,
    /// `control`: the node's control socket (absent: the default socket).
    pub control: Option<PathBuf>,
    /// `ipam.type`: the IPAM plugin's executable name.
    pub ipam_type: String,
    /// `dns`, passed through to the result.
    pub dns: Option<Value>,
    /// `prevResult` (CHECK, DEL).
    pub prev_result: Option<Value>,
    /// The whole config.
    pub raw: Map<String, Value>,
}

fn invalid(field: &str, problem: impl Into<String>) -> CniError {
    let problem = problem.into();
    CniError::new(
        code::INVALID_CONFIG,
        format!("invalid network config: {field}: {problem}"),
        format!("field {field}: {problem}"),
    )
}

/// `obj[key]` as a string: `Ok(None)` if absent, an error naming `at` if not a string.
fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<&'a str>, CniError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(at, format!("must be a string, not {other}"))),
    }
}

fn req_str<'a>(obj: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str, CniError> {
    match opt_str(obj, key, at)? {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(invalid(at, "must not be empty")),
        None => Err(invalid(at, "missing")),
    }
}

fn opt_object<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Value>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v)),
        Some(other) => Err(invalid(key, format!("must be an object, not {other}"))),
    }
}

impl NetConf {
    /// Parses the config: JSON errors are code 6, a missing or mistyped field code 7 naming
    /// the field, an unsupported `cniVersion` code 1.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                "failed to decode the network config",
                e.to_string(),
            )
        })?;
        let Value::Object(raw) = value else {
            return Err(CniError::new(
                code::DECODE,
                "failed to decode the network config",
                "it is not a JSON object",
            ));
        };
        let cni_version = req_str(&raw, "cniVersion", "cniVersion")?.to_owned();
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("incompatible CNI version {cni_version}"),
                format!("supported versions: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        let name = req_str(&raw, "name", "name")?.to_owned();
        req_str(&raw, "type", "type")?;
        let control = match opt_str(&raw, "control", "control")? {
            None => None,
            Some(p) if p.starts_with('/') => Some(PathBuf::from(p)),
            Some(p) => {
                return Err(invalid(
                    "control",
                    format!("{p:?} is not an absolute path to a control socket"),
                ))
            }
        };
        let ipam = match raw.get("ipam") {
            Some(Value::Object(m)) => m,
            None => return Err(invalid("ipam", "missing")),
            Some(other) => return Err(invalid("ipam", format!("must be an object, not {other}"))),
        };
        let ipam_type = req_str(ipam, "type", "ipam.type")?;
        if ipam_type.contains('/') || ipam_type == "." || ipam_type == ".." {
            return Err(invalid(
                "ipam.type",
                format!("{ipam_type:?} is not a plugin name"),
            ));
        }
        let ipam_type = ipam_type.to_owned();
        let dns = opt_object(&raw, "dns")?.cloned();
        let prev_result = opt_object(&raw, "prevResult")?.cloned();
        Ok(NetConf {
            cni_version,
            name,
            control,
            ipam_type,
            dns,
            prev_result,
            raw,
        })
    }

    /// True if `ipam` names no address range (neither `ranges` nor `subnet`): the node's pod
    /// CIDR must be filled in ([`NetConf::fill_range`]).
    pub fn needs_range(&self) -> bool {
        match self.raw.get("ipam") {
            Some(Value::Object(m)) => !m.contains_key("ranges") && !m.contains_key("subnet"),
            _ => false,
        }
    }

    /// Fills `ipam.ranges` with `[[{"subnet": pod_cidr}]]` if [`NetConf::needs_range`], as
    /// flannel fills it from its subnet file.
    pub fn fill_range(&mut self, pod_cidr: Ipv4Net) {
        if !self.needs_range() {
            return;
        }
        if let Some(Value::Object(m)) = self.raw.get_mut("ipam") {
            m.insert(
                "ranges".into(),
                json!([[{ "subnet": pod_cidr.trunc().to_string() }]]),
            );
        }
    }

    /// The config as the IPAM plugin gets it on stdin.
    pub fn to_stdin(&self) -> Vec<u8> {
        serde_json::to_vec(&self.raw).unwrap_or_default()
    }
}

/// The IPv4 address of an IPAM result or a `prevResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The address with its prefix length.
    pub net: Ipv4Net,
    /// The gateway, if the result gives one.
    pub gateway: Option<Ipv4Addr>,
}

impl Address {
    /// The first IPv4 entry of `result.ips` (1.0.0 and 0.4.0 shapes), naming `what` (the IPAM
    /// plugin, `prevResult`) in errors.
    pub fn from_result(result: &Value, what: &str) -> Result<Address, CniError> {
        let bad = |problem: String| {
            CniError::new(
                code::OTHER,
                format!("{what}: {problem}"),
                result.to_string(),
            )
        };
        let ips = result
            .get("ips")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no \"ips\" list".into()))?;
        for ip in ips {
            let Some(addr) = ip.get("address").and_then(Value::as_str) else {
                return Err(bad("an \"ips\" entry has no \"address\"".into()));
            };
            let Ok(net) = addr.parse::<Ipv4Net>() else {
                continue; // IPv6, or not a CIDR: not ours
            };
            let gateway = match ip.get("gateway").and_then(Value::as_str) {
                None => None,
                Some(g) => Some(
                    g.parse()
                        .map_err(|_| bad(format!("gateway {g:?} is not an IPv4 address")))?,
                ),
            };
            return Ok(Address { net, gateway });
        }
        Err(bad("no IPv4 address in \"ips\"".into()))
    }
}

/// What ADD made, to print as the spec's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment<'a> {
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// The interface's MAC, `aa:bb:..`.
    pub mac: String,
    /// `CNI_NETNS`.
    pub sandbox: &'a str,
    /// The pod address with the node's prefix length.
    pub address: Ipv4Net,
    /// The pod's default gateway.
    pub gateway: Ipv4Addr,
}

/// The ADD result in the shape of `cni_version` (0.4.0 adds `"version": "4"` to each IP).
pub fn add_result(cni_version: &str, a: &Attachment<'_>, dns: Option<&Value>) -> Value {
    let mut ip = json!({
        "address": a.address.to_string(),
        "gateway": a.gateway.to_string(),
        "interface": 0,
    });
    if cni_version == "0.4.0" {
        ip["version"] = json!("4");
    }
    let mut result = json!({
        "cniVersion": cni_version,
        "interfaces": [{ "name": a.ifname, "mac": a.mac, "sandbox": a.sandbox }],
        "ips": [ip],
        "routes": [{ "dst": "0.0.0.0/0", "gw": a.gateway.to_string() }],
    });
    if let Some(dns) = dns {
        result["dns"] = dns.clone();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetConf, CniError> {
        NetConf::parse(text.as_bytes())
    }

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"pods","type":"podswitch-cni",
        "control":"/run/podswitch/node-a.sock",
        "ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]]},
        "dns":{"nameservers":["10.96.0.10"]}}"#;

    #[test]
    fn good_configs_parse() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.name, "pods");
        assert_eq!(c.control, Some(PathBuf::from("/run/podswitch/node-a.sock")));
        assert_eq!(c.ipam_type, "host-local");
        assert_eq!(c.dns, Some(json!({"nameservers":["10.96.0.10"]})));
        assert!(!c.needs_range());

        let old = parse(
            r#"{"cniVersion":"0.4.0","name":"n","type":"podswitch-cni","ipam":{"type":"host-local"}}"#,
        )
        .unwrap();
        assert_eq!(old.cni_version, "0.4.0");
        assert_eq!(old.control, None);
        assert!(old.needs_range());
    }

    #[test]
    fn an_empty_range_is_filled_with_the_pod_cidr_and_the_rest_kept() {
        let mut c = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"podswitch-cni","x":1,
                "ipam":{"type":"host-local","dataDir":"/tmp/d"}}"#,
        )
        .unwrap();
        c.fill_range("10.244.1.0/24".parse().unwrap());
        let sent: Value = serde_json::from_slice(&c.to_stdin()).unwrap();
        assert_eq!(
            sent["ipam"],
            json!({"type":"host-local","dataDir":"/tmp/d","ranges":[[{"subnet":"10.244.1.0/24"}]]})
        );
        assert_eq!(sent["x"], 1);
        assert!(!c.needs_range());
        // A given range is left alone.
        let mut g = parse(GOOD).unwrap();
        let before = g.raw.clone();
        g.fill_range("10.244.9.0/24".parse().unwrap());
        assert_eq!(g.raw, before);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = parse("{not json").unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = parse("[1]").unwrap_err();
        assert_eq!(e.code, code::DECODE);

        for (text, field) in [
            (
                r#"{"name":"n","type":"t","ipam":{"type":"h"}}"#,
                "cniVersion",
            ),
            (
                r#"{"cniVersion":"1.0.0","type":"t","ipam":{"type":"h"}}"#,
                "name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"h"}}"#,
                "type",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#, "ipam"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{}}"#,
                "ipam.type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":7}}"#,
                "ipam.type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"../x"}}"#,
                "ipam.type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":"h"}"#,
                "ipam",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":5,"type":"t","ipam":{"type":"h"}}"#,
                "name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","control":"x.sock","ipam":{"type":"h"}}"#,
                "control",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","control":3,"ipam":{"type":"h"}}"#,
                "control",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","dns":[],"ipam":{"type":"h"}}"#,
                "dns",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{text}: {e:?}");
            assert!(
                e.msg
                    .starts_with(&format!("invalid network config: {field}: ")),
                "{text}: {}",
                e.msg
            );
        }
        let e = parse(r#"{"cniVersion":"0.3.1","name":"n","type":"t","ipam":{"type":"h"}}"#)
            .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert_eq!(e.msg, "incompatible CNI version 0.3.1");
    }

    #[test]
    fn version_of_never_fails() {
        assert_eq!(version_of(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(version_of(br#"{"cniVersion":"1.0.0"}"#), "1.0.0");
        assert_eq!(version_of(br#"{"cniVersion":"9.9.9"}"#), DEFAULT_VERSION);
        assert_eq!(version_of(b""), DEFAULT_VERSION);
        assert_eq!(version_of(b"\xff garbage"), DEFAULT_VERSION);
    }

    #[test]
    fn ipam_results_of_both_versions_parse() {
        let v1 = json!({"cniVersion":"1.0.0","ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.1"}]});
        let a = Address::from_result(&v1, "ipam").unwrap();
        assert_eq!(a.net, "10.244.1.5/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(a.gateway, Some(Ipv4Addr::new(10, 244, 1, 1)));
        let v04 = json!({"cniVersion":"0.4.0","ips":[
            {"version":"6","address":"fd00::5/64"},
            {"version":"4","address":"10.244.1.6/24"}]});
        let a = Address::from_result(&v04, "ipam").unwrap();
        assert_eq!(a.net.addr(), Ipv4Addr::new(10, 244, 1, 6));
        assert_eq!(a.gateway, None);
        let e = Address::from_result(&json!({"ips":[]}), "prevResult").unwrap_err();
        assert_eq!(e.msg, "prevResult: no IPv4 address in \"ips\"");
        assert!(Address::from_result(&json!({}), "ipam").is_err());
        assert!(Address::from_result(
            &json!({"ips":[{"address":"10.244.1.5/24","gateway":"x"}]}),
            "ipam"
        )
        .is_err());
    }

    #[test]
    fn results_have_the_spec_shape() {
        let a = Attachment {
            ifname: "eth0",
            mac: "02:42:0a:f4:01:05".into(),
            sandbox: "/run/netns/cni-1",
            address: "10.244.1.5/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
        };
        let dns = json!({"nameservers":["10.96.0.10"]});
        assert_eq!(
            add_result("1.0.0", &a, Some(&dns)),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name":"eth0","mac":"02:42:0a:f4:01:05","sandbox":"/run/netns/cni-1"}],
                "ips": [{"address":"10.244.1.5/24","gateway":"10.244.1.1","interface":0}],
                "routes": [{"dst":"0.0.0.0/0","gw":"10.244.1.1"}],
                "dns": {"nameservers":["10.96.0.10"]}
            })
        );
        let old = add_result("0.4.0", &a, None);
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(
            old["ips"],
            json!([{"version":"4","address":"10.244.1.5/24","gateway":"10.244.1.1","interface":0}])
        );
        assert!(old.get("dns").is_none());
    }
}
