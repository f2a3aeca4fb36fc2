//! The CNI plugin `podswitch-cni` (spec 1.0.0, configs of 0.4.0 accepted and answered, 1.1's
//! STATUS and GC answered): a container runtime runs it with `CNI_*` environment variables and
//! the network config on stdin; it delegates the address to the IPAM plugin named in
//! `ipam.type` and asks the node's daemon, over its control socket, to attach the pod.
//!
//! - ADD: `NodeInfo` (the daemon must run: else code 11, before any address is taken), fill an
//!   empty IPAM range with the node's pod CIDR, IPAM ADD, `PodAdd`; if anything after IPAM ADD
//!   fails, the pod is removed and IPAM DEL releases the address.
//! - DEL: `PodDelByContainer` (a pod the daemon does not know is fine), then IPAM DEL, always;
//!   a daemon that does not answer makes DEL fail with code 11 after the release (the runtime
//!   retries). A config without an IPAM range needs the daemon to fill it: with the daemon down
//!   such a DEL fails with 11 before IPAM DEL, and releases on the retry.
//! - CHECK: IPAM CHECK, then the daemon's pod for the container and interface must have the
//!   `prevResult` address, and inside `CNI_NETNS` the interface must carry it, with a default
//!   route via the gateway.
//! - STATUS: the daemon answers, or code 50. GC: nothing to collect: the plugin keeps no state
//!   of its own (the daemon's record of attachments is updated by DEL), so GC succeeds.
//!
//! Every failure is the spec's error object on stdout, exit status 1 ([`Outcome`]).

mod check;
pub mod config;
mod ipam;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::control::{self, ControlError, ErrorKind, FindSocketError, Request, Response};
use crate::node::{PodSpec, PodStatus};
pub use config::{code, NetConf, SUPPORTED_VERSIONS};

/// How long one control request may take (an ADD creates a TAP and moves it).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// A failure as the spec's error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The spec's error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Longer details.
    pub details: String,
}

impl CniError {
    /// An error with `code`.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object of version `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// The `CNI_*` environment variables (an empty value counts as unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_PATH`.
    pub path: Option<String>,
}

impl Env {
    /// Reads the variables through `var` (`std::env::var(..).ok()` in the plugin).
    pub fn from_fn(var: impl Fn(&str) -> Option<String>) -> Env {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        Env {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            path: get("CNI_PATH"),
        }
    }

    fn need<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, CniError> {
        value.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("{name} is not set"),
                format!("the runtime must set the environment variable {name}"),
            )
        })
    }
}

/// What the plugin prints on stdout and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Everything for stdout (a result, a version answer, an error object, or nothing).
    pub stdout: String,
    /// 0 on success, 1 with an error object.
    pub exit: u8,
}

/// Runs the command `env` names on the config `stdin`.
pub fn run(env: &Env, stdin: &[u8]) -> Outcome {
    let version = config::version_of(stdin);
    match dispatch(env, stdin) {
        Ok(out) => Outcome {
            stdout: out.map(|v| format!("{v}\n")).unwrap_or_default(),
            exit: 0,
        },
        Err(e) => Outcome {
            stdout: format!("{}\n", e.to_json(version)),
            exit: 1,
        },
    }
}

fn dispatch(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let command = Env::need(&env.command, "CNI_COMMAND")?;
    if command == "VERSION" {
        // stdin may hold only `cniVersion`: never parse a full config here.
        return Ok(Some(json!({
            "cniVersion": config::version_of(stdin),
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let known = ["ADD", "DEL", "CHECK", "STATUS", "GC"];
    if !known.contains(&command) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND: unknown command {command:?}"),
            format!("supported: VERSION, {}", known.join(", ")),
        ));
    }
    let conf = NetConf::parse(stdin)?;
    match command {
        "ADD" => add(env, conf).map(Some),
        "DEL" => del(env, conf).map(|()| None),
        "CHECK" => check::check(env, conf).map(|()| None),
        "STATUS" => status(&conf).map(|()| None),
        _ => Ok(None), // GC: the plugin keeps nothing to collect
    }
}

/// The control socket of the config: `control`, else the node's default socket.
fn control_path(conf: &NetConf) -> Result<PathBuf, CniError> {
    control::find_socket(conf.control.clone()).map_err(|e| match e {
        FindSocketError::NoSocket { .. } => CniError::new(
            code::TRY_AGAIN,
            "the podswitch daemon is not running",
            e.to_string(),
        ),
        FindSocketError::Many { .. } => CniError::new(
            code::INVALID_CONFIG,
            "invalid network config: control: missing, and several nodes run here",
            e.to_string(),
        ),
    })
}

/// A control error as a CNI error: the daemon not answering is "try again later".
fn control_error(e: ControlError) -> CniError {
    let code = match e {
        ControlError::PermissionDenied { .. } | ControlError::BadResponse { .. } => code::OTHER,
        _ => code::TRY_AGAIN,
    };
    CniError::new(code, "the podswitch daemon did not answer", e.to_string())
}

/// One request; an error response is code 999.
fn call(path: &std::path::Path, req: &Request) -> Result<Response, CniError> {
    match control::call(path, req, CONTROL_TIMEOUT).map_err(control_error)? {
        // The runtime shows `msg: details`: the reason once, in the details.
        Response::Error { message, .. } => Err(CniError::new(
            code::OTHER,
            "podswitch refused the request",
            message,
        )),
        other => Ok(other),
    }
}

fn unexpected(what: &str, r: &Response) -> CniError {
    CniError::new(
        code::OTHER,
        format!("unexpected answer of the podswitch daemon to {what}"),
        format!("{r:?}"),
    )
}

/// The node's pod CIDR, gateway and MTU.
struct NodeInfo {
    pod_cidr: ipnet::Ipv4Net,
}

fn node_info(path: &std::path::Path) -> Result<NodeInfo, CniError> {
    match call(path, &Request::NodeInfo)? {
        Response::Node { pod_cidr, .. } => Ok(NodeInfo { pod_cidr }),
        other => Err(unexpected("node_info", &other)),
    }
}

/// The pod name of an attachment: `cni-<container id>` (cut to fit), `-<ifname>` when the
/// interface is not `eth0`, within the pod-name rules (letters, digits, '.', '_', '-').
pub fn pod_name(container_id: &str, ifname: &str) -> String {
    let clean = |s: &str, max: usize| -> String {
        s.chars()
            .take(max)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("cni-{}", clean(container_id, 200));
    if ifname != "eth0" {
        name.push('-');
        name.push_str(&clean(ifname, 15));
    }
    name
}

fn add(env: &Env, mut conf: NetConf) -> Result<Value, CniError> {
    let container_id = Env::need(&env.container_id, "CNI_CONTAINERID")?;
    let netns = Env::need(&env.netns, "CNI_NETNS")?;
    let ifname = Env::need(&env.ifname, "CNI_IFNAME")?;
    let cni_path = Env::need(&env.path, "CNI_PATH")?;
    let control = control_path(&conf)?;
    // The daemon first: with it down, no address is taken.
    let node = node_info(&control)?;
    conf.fill_range(node.pod_cidr);
    let ipam = ipam::Ipam::find(cni_path, &conf.ipam_type)?;
    let ipam_result = ipam.exec("ADD", &conf.to_stdin())?;
    let attached = (|| -> Result<PodStatus, CniError> {
        let address = config::Address::from_result(&ipam_result, "IPAM result")?;
        let ip = address.net.addr();
        if !node.pod_cidr.contains(&ip) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "invalid network config: ipam.ranges: address {ip} is outside the node's pod CIDR {}",
                    node.pod_cidr
                ),
                "the IPAM ranges must lie inside the node's pod CIDR (or be left out)",
            ));
        }
        let spec = PodSpec {
            name: pod_name(container_id, ifname),
            netns: netns.to_owned(),
            ip: Some(ip),
            mac: None,
            container_id: Some(container_id.to_owned()),
            ifname: ifname.to_owned(),
        };
        match control::call(&control, &Request::PodAdd(spec), CONTROL_TIMEOUT) {
            Ok(Response::Pod(status)) => Ok(status),
            // A refusal names the pod's field, not the network config's: not code 7.
            Ok(Response::Error { message, .. }) => Err(CniError::new(
                code::OTHER,
                "podswitch refused the pod",
                message,
            )),
            Ok(other) => Err(unexpected("pod_add", &other)),
            Err(e) => {
                // The outcome is unknown (a timeout, a lost connection): make sure no pod is
                // left half-made.
                let _ = control::call(
                    &control,
                    &Request::PodDelByContainer {
                        container_id: container_id.to_owned(),
                        ifname: ifname.to_owned(),
                    },
                    CONTROL_TIMEOUT,
                );
                Err(control_error(e))
            }
        }
    })();
    let status = match attached {
        Ok(s) => s,
        Err(e) => {
            if let Err(release) = ipam.exec("DEL", &conf.to_stdin()) {
                return Err(CniError::new(
                    e.code,
                    e.msg,
                    format!(
                        "{}; releasing the address failed too: {}",
                        e.details, release.msg
                    ),
                ));
            }
            return Err(e);
        }
    };
    // The daemon keeps the address it is given (the IPAM's); it reports it.
    let ip = status.spec.ip.ok_or_else(|| {
        CniError::new(
            code::OTHER,
            "the daemon reported the pod without an address",
            format!("pod {}", status.spec.name),
        )
    })?;
    let address = ipnet::Ipv4Net::new(ip, status.prefix_len).map_err(|e| {
        CniError::new(
            code::OTHER,
            "bad prefix length from the daemon",
            e.to_string(),
        )
    })?;
    Ok(config::add_result(
        &conf.cni_version,
        &config::Attachment {
            ifname,
            mac: status.mac.to_string(),
            sandbox: netns,
            address,
            gateway: status.gateway,
        },
        conf.dns.as_ref(),
    ))
}

fn del(env: &Env, mut conf: NetConf) -> Result<(), CniError> {
    let container_id = Env::need(&env.container_id, "CNI_CONTAINERID")?;
    let ifname = Env::need(&env.ifname, "CNI_IFNAME")?;
    let cni_path = Env::need(&env.path, "CNI_PATH")?;
    let control = control_path(&conf);
    let detached = control.as_ref().map_err(Clone::clone).and_then(|path| {
        match control::call(
            path,
            &Request::PodDelByContainer {
                container_id: container_id.to_owned(),
                ifname: ifname.to_owned(),
            },
            CONTROL_TIMEOUT,
        ) {
            Ok(Response::Ok)
            | Ok(Response::Error {
                kind: Some(ErrorKind::NotFound),
                ..
            }) => Ok(()),
            Ok(Response::Error { message, .. }) => Err(CniError::new(
                code::OTHER,
                format!("podswitch could not remove the pod: {message}"),
                message.clone(),
            )),
            Ok(other) => Err(unexpected("pod_del_by_container", &other)),
            Err(e) => Err(control_error(e)),
        }
    });
    if conf.needs_range() {
        // Only the daemon knows the range the address came from.
        let path = control.as_ref().map_err(Clone::clone)?;
        conf.fill_range(node_info(path)?.pod_cidr);
    }
    let ipam = ipam::Ipam::find(cni_path, &conf.ipam_type)?;
    ipam.exec("DEL", &conf.to_stdin())?;
    detached
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let not_available = |e: CniError| {
        CniError::new(
            code::NOT_AVAILABLE,
            "plugin not available: the podswitch daemon does not answer",
            format!("{}: {}", e.msg, e.details),
        )
    };
    let path = control_path(conf).map_err(not_available)?;
    node_info(&path).map_err(not_available)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_fn(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn version_needs_only_the_version() {
        let out = run(
            &env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"1.0.0"}"#,
        );
        assert_eq!(out.exit, 0);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(
            v,
            json!({"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]})
        );
        let out = run(
            &env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"0.4.0"}"#,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&out.stdout).unwrap()["cniVersion"],
            "0.4.0"
        );
    }

    #[test]
    fn errors_are_the_spec_object() {
        let e = CniError::new(code::TRY_AGAIN, "m", "d");
        assert_eq!(
            e.to_json("0.4.0"),
            json!({"cniVersion":"0.4.0","code":11,"msg":"m","details":"d"})
        );
        let conf = br#"{"cniVersion":"0.4.0","name":"n","type":"podswitch-cni","ipam":{"type":"host-local"}}"#;
        let out = run(&env(&[]), conf);
        assert_eq!(out.exit, 1);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 4);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["msg"], "CNI_COMMAND is not set");

        let out = run(&env(&[("CNI_COMMAND", "FROB")]), conf);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 4);

        let out = run(
            &env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_PATH", "/usr/lib/cni"),
            ]),
            conf,
        );
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(
            (v["code"].clone(), v["msg"].clone()),
            (json!(4), json!("CNI_IFNAME is not set"))
        );

        let out = run(&env(&[("CNI_COMMAND", "ADD")]), b"{{");
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 6);
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn gc_succeeds_silently() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"podswitch-cni","ipam":{"type":"host-local"}}"#;
        let out = run(&env(&[("CNI_COMMAND", "GC")]), conf);
        assert_eq!(
            out,
            Outcome {
                stdout: String::new(),
                exit: 0
            }
        );
    }

    #[test]
    fn pod_names_follow_the_pod_rules() {
        assert_eq!(pod_name("abc123", "eth0"), "cni-abc123");
        assert_eq!(pod_name("abc123", "net1"), "cni-abc123-net1");
        assert_eq!(pod_name("a b", "e@1"), "cni-a_b-e_1");
        let long = "x".repeat(300);
        assert!(pod_name(&long, "eth0123456789ab").len() <= 253);
    }
}
