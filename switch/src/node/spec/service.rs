//! A Service (ClusterIP): a virtual IP and port from the node's service CIDR in front of a set
//! of backends. One type for the file's `[[services]]` entries, `podswitch service add`,
//! `Request::ServiceAdd` and the running node; its rules are in `rules.rs`
//! ([`ServiceSpec::check`]).

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::table::{Affinity, Proto, Service};

pub(crate) use crate::pipeline::DEFAULT_SERVICE_CIDR;

/// Transport protocol of a service: `tcp` or `udp`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProto {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl ServiceProto {
    /// The data plane's protocol.
    pub fn to_proto(self) -> Proto {
        match self {
            Self::Tcp => Proto::Tcp,
            Self::Udp => Proto::Udp,
        }
    }
}

impl std::fmt::Display for ServiceProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// How a service keeps a client on a backend beyond one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ServiceAffinity {
    /// Every flow of one client address to the same backend (Kubernetes'
    /// `sessionAffinity: ClientIP`).
    #[value(name = "client_ip")]
    ClientIp,
}

impl std::fmt::Display for ServiceAffinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ClientIp => "client_ip",
        })
    }
}

/// A service: a `[[services]]` entry, or a runtime `service add` (which replaces the runtime
/// service of the same name, as an update of its endpoints; never one of the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name (same rules as a pod name).
    #[arg(long)]
    pub name: String,
    /// The virtual IP, inside node.service_cidr (not its network or broadcast address).
    #[arg(long)]
    pub vip: Ipv4Addr,
    /// The virtual port, 1 to 65535.
    #[arg(long)]
    pub port: u16,
    /// Transport protocol.
    #[serde(default)]
    #[arg(long, value_enum, default_value_t = ServiceProto::Tcp)]
    pub proto: ServiceProto,
    /// Backends as IP:PORT (a pod on this node or another); repeat the flag for each. None: the
    /// service refuses connections.
    #[serde(default)]
    #[arg(long = "backend", value_name = "IP:PORT")]
    pub backends: Vec<SocketAddrV4>,
    /// Keep each client on one backend (`client_ip`); default: each connection on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_enum)]
    pub affinity: Option<ServiceAffinity>,
}

impl ServiceSpec {
    /// The data plane's form of the service.
    pub fn to_service(&self) -> Service {
        Service {
            name: self.name.clone(),
            vip: self.vip,
            port: self.port,
            proto: self.proto.to_proto(),
            backends: self.backends.clone(),
            affinity: match self.affinity {
                None => Affinity::None,
                Some(ServiceAffinity::ClientIp) => Affinity::ClientIp,
            },
        }
    }

    /// `vip:port/proto`, as listings and errors show the service's address.
    pub fn address_text(&self) -> String {
        format!("{}:{}/{}", self.vip, self.port, self.proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            vip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: ServiceProto::Tcp,
            backends: vec!["10.244.1.10:8080".parse().unwrap()],
            affinity: None,
        }
    }

    #[test]
    fn json_shape_defaults_and_data_plane_form() {
        let text = serde_json::to_string(&web()).unwrap();
        assert_eq!(
            text,
            r#"{"name":"web","vip":"10.96.0.10","port":80,"proto":"tcp","backends":["10.244.1.10:8080"]}"#
        );
        let min: ServiceSpec =
            serde_json::from_str(r#"{"name":"web","vip":"10.96.0.10","port":80}"#).unwrap();
        assert_eq!(
            (min.proto, min.backends.len(), min.affinity),
            (ServiceProto::Tcp, 0, None)
        );
        let udp: ServiceSpec = serde_json::from_str(
            r#"{"name":"dns","vip":"10.96.0.53","port":53,"proto":"udp","affinity":"client_ip"}"#,
        )
        .unwrap();
        let s = udp.to_service();
        assert_eq!((s.proto, s.affinity), (Proto::Udp, Affinity::ClientIp));
        assert_eq!(udp.address_text(), "10.96.0.53:53/udp");
        assert_eq!(web().to_service().backends, web().backends);
        assert_eq!(DEFAULT_SERVICE_CIDR.to_string(), "10.96.0.0/12");
    }
}
