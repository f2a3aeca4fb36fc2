//! The node configuration file (TOML), as read by `podswitch run --config FILE`: its schema
//! ([`Config`]) and how its errors read. What a node, a pod and a peer are, and the rules about
//! them, live in [`crate::node::spec`]; the file and the runtime share them.
//!
//! ```toml
//! [node]
//! name = "node-a"
//! pod_cidr = "10.244.1.0/24"      # required
//! # gateway = "10.244.1.1"        # default: first host address of pod_cidr
//! mtu = 1450                      # pod MTU, default underlay_mtu - 50
//! control = "/run/podswitch/node-a.sock"   # default "/run/podswitch/<name>.sock"
//! # router_mac = "02:ee:..."      # default derived from the node name
//! # mac_table_size = 16384
//! # mac_ageing_secs = 300
//! # conntrack_max = 262144
//! # workers = 1                   # data-plane threads; each pod TAP gets one queue per worker
//! # cpus = [3]                    # pin the workers; default: not pinned (with rx_steering: the last `workers` CPUs)
//! # rx_steering = false           # pods' kernel input on the CPUs without a worker (RPS/RFS)
//! # underlay = "192.168.77.1"     # this node's VXLAN underlay address (needed with peers)
//! # vxlan_port = 8472             # UDP destination port (Linux and flannel default)
//! # vni = 1
//! # vtep_mac = "02:ee:..."        # same as router_mac: the router MAC is the VTEP MAC
//! # service_cidr = "10.96.0.0/12" # where service VIPs come from; not overlapping pod_cidr
//!
//! [[pods]]
//! name = "web"
//! netns = "web"                   # /run/netns/web; created if absent, adopted if present
//! ip = "10.244.1.10"               # optional: default the lowest free address of pod_cidr
//! # mac = "02:42:0a:f4:01:0a"     # default derived from the IP
//!
//! [[peers]]                       # other nodes, reached over VXLAN
//! name = "node-b"
//! underlay = "192.168.77.2"
//! pod_cidr = "10.244.2.0/24"
//! # vtep_mac = "02:ee:..."        # default derived from the peer's name, like router_mac
//!
//! [[services]]                    # ClusterIP services: a VIP:port in front of backends
//! name = "web"
//! vip = "10.96.0.10"              # inside node.service_cidr
//! port = 80
//! proto = "tcp"                   # default; or "udp"
//! backends = ["10.244.1.10:8080", "10.244.2.10:8080"]   # may be empty
//! # affinity = "client_ip"        # every flow of a client to one backend
//! ```
//!
//! Invariants: a [`Config`] returned by [`Config::from_toml_str`] or [`Config::from_file`] has
//! passed [`Config::validate`]: the node, every pod and every peer pass the rules of
//! [`crate::node::spec`] in order (and every service), so a node started from it refuses none
//! of them. Every
//! [`ConfigError`] starts with `config error:`, names the field (`node.mtu`, `pods[1].ip`) and
//! the reason, and gives the line and column when the TOML parser knows them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterSpec;
use crate::node::spec::{
    assign_pod_ips, check_range, NodeSpec, PeerSpec, PodSpec, ServiceSpec, SpecError,
};

#[cfg(test)]
mod tests;

/// A whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node.
    pub node: NodeSpec,
    /// Pods started with the node, in order.
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    /// Other nodes, reached over VXLAN.
    #[serde(default)]
    pub peers: Vec<PeerSpec>,
    /// Services (ClusterIP) defined with the node, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
    /// The cluster's etcd: the node leases its pod CIDR there and learns its peers from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSpec>,
}

/// Why a configuration was refused. The message always starts with `config error:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config error: cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What the system said.
        message: String,
    },
    /// A field is missing, unknown, malformed or breaks a rule.
    #[error("config error: {field}: {reason}{}", at_line(*.line_col, " (", ")"))]
    Field {
        /// Where the field is: `node.mtu`, `pods[1].ip`, `peers[0].pod_cidr`.
        field: String,
        /// What is wrong with it.
        reason: String,
        /// Line and column (1-based) of the value, when known.
        line_col: Option<(usize, usize)>,
    },
    /// The text is not TOML (no single field to blame).
    #[error("config error: {}{message}", at_line(*.line_col, "", ": "))]
    Syntax {
        /// Line and column (1-based) of the error, when known.
        line_col: Option<(usize, usize)>,
        /// What the TOML parser said.
        message: String,
    },
}

fn at_line(line_col: Option<(usize, usize)>, before: &str, after: &str) -> String {
    match line_col {
        Some((line, col)) => format!("{before}line {line}, column {col}{after}"),
        None => String::new(),
    }
}

impl From<SpecError> for ConfigError {
    fn from(e: SpecError) -> Self {
        ConfigError::Field {
            field: e.field,
            reason: e.reason,
            line_col: None,
        }
    }
}

impl ConfigError {
    /// The field the error is about, if any.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            ConfigError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Config::from_toml_str(&text)
    }

    /// Parses and validates a configuration.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| syntax(text, &e))?;
        let config: Config =
            serde_path_to_error::deserialize(de).map_err(|e| field_error(text, e))?;
        config.validate()?;
        Ok(config)
    }

    /// The file's text: TOML that [`Config::from_toml_str`] reads back as `self`.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Checks every rule; the first broken one is returned. Pods are checked against the pods
    /// before them, peers against the peers before them, services against the services before
    /// them (two entries of one name are an error here; at runtime a name is replaced), as a node adding them in order would.
    /// Pods without `ip` are checked on what they have; then every pod is checked again with
    /// the address the node will give it ([`Config::pods_with_addresses`]), so a range too
    /// small for them, or a derived MAC another pod has, is refused here too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node.validate()?;
        match &self.cluster {
            None => {
                self.node.cidr()?;
            }
            Some(cluster) => {
                cluster.validate()?;
                if self.node.underlay.is_none() {
                    return Err(SpecError::new(
                        "node.underlay",
                        "is required with [cluster]: it is the address other nodes send VXLAN to (the lease's PublicIP)",
                    )
                    .into());
                }
                if !self.peers.is_empty() {
                    return Err(SpecError::new(
                        "peers",
                        "are learnt from etcd with [cluster]; remove the [[peers]] entries",
                    )
                    .into());
                }
            }
        }
        for (i, pod) in self.pods.iter().enumerate() {
            pod.check(&self.node, &self.pods[..i], &format!("pods[{i}]"))?;
        }
        // A node that leases its CIDR gives the addresses once it has one.
        if self.node.pod_cidr.is_some() {
            let pods = self.pods_with_addresses()?;
            for (i, pod) in pods.iter().enumerate() {
                pod.check(&self.node, &pods[..i], &format!("pods[{i}]"))?;
            }
        }
        for (i, peer) in self.peers.iter().enumerate() {
            peer.check(&self.node, &self.peers[..i], &format!("peers[{i}]"))?;
        }
        for (i, service) in self.services.iter().enumerate() {
            service.check(&self.node, &self.services[..i], &format!("services[{i}]"))?;
        }
        Ok(())
    }

    /// The pods as the node starts them, each with its address: a pod with `ip` keeps it;
    /// every fixed address is reserved first, then each pod without `ip` gets the lowest free
    /// host address of `node.pod_cidr` in file order (so a fixed address later in the file is
    /// never taken by an automatic one earlier). The error names `pods[N].ip` when the range is
    /// full.
    pub fn pods_with_addresses(&self) -> Result<Vec<PodSpec>, ConfigError> {
        Ok(assign_pod_ips(&self.node, &self.pods, &[])?)
    }

    /// Checks what depends on the machine rather than the file: no more workers than CPUs
    /// this process may run on (`allowed`, see `switch::allowed_cpus`), the pinned CPUs
    /// among them, and `rx_steering` needs one of them left over.
    pub fn check_machine(&self, allowed: &[usize]) -> Result<(), ConfigError> {
        self.node.dataplane_cpus(allowed)?;
        self.node.rx_steering_cpus(allowed)?;
        self.node.check_workers(allowed)?;
        Ok(())
    }
}

fn syntax(text: &str, err: &toml::de::Error) -> ConfigError {
    ConfigError::Syntax {
        line_col: err.span().map(|s| line_col(text, s.start)),
        message: err.message().trim().to_string(),
    }
}

/// Turns a deserialization error into a [`ConfigError`] naming the field (from the path
/// `serde_path_to_error` tracked), with the value's position.
fn field_error(text: &str, err: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let path = err.path().to_string();
    let inner = err.inner();
    let message = inner.message().trim().to_string();
    let span = inner.span();
    let line_col = span.as_ref().map(|s| line_col(text, s.start));
    let field = |field: String, reason: String| ConfigError::Field {
        field,
        reason,
        line_col,
    };
    let under = |name: &str| {
        if path == "." {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let reason = match name {
            "node" => "is required (a [node] table)",
            _ => "is required",
        };
        return field(under(name), reason.into());
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let reason = match expected.trim_start_matches(',').trim() {
            "" => "unknown field".to_string(),
            rest => format!("unknown field ({rest})"),
        };
        // The path may or may not already end in the unknown key.
        let at = if path.ends_with(name) {
            path.clone()
        } else {
            under(name)
        };
        return field(at, reason);
    }
    if path == "." {
        return ConfigError::Syntax { line_col, message };
    }
    // A number the field's type cannot hold: say what the field allows.
    if let Some(n) = message
        .strip_prefix("invalid value: integer `")
        .and_then(|rest| rest.split('`').next())
        .and_then(|n| n.parse::<i128>().ok())
    {
        if let Err(e) = check_range(&path, n) {
            return field(path, e.reason);
        }
    }
    // Values parsed from text (addresses, CIDRs): show the text unless the message does.
    let value = span
        .and_then(|s| text.get(s))
        .filter(|v| v.starts_with('"') && v.len() <= 80 && !message.contains(*v));
    let mut reason = match value {
        Some(v) => format!("{v}: {message}"),
        None => message,
    };
    if path.ends_with("pod_cidr") && reason.ends_with("address syntax") {
        reason += " (expected an address and a prefix length, like 10.244.1.0/24)";
    }
    field(path, reason)
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
