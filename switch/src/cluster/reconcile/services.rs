//! The rules for `<services_prefix>/`: `<services_prefix>/<name>` holds a [`ServiceSpec`] as JSON
//! whose `name` is the key's last segment; a list makes the node's etcd services exactly the
//! valid keys listed, a watch event applies or removes one.
//!
//! Invariant: a watch event at or before the revision of the last list is already in it and
//! ignored (a list may come between a watch's events).

use super::{events, Command, Event, Kv, NodeCommand, ReconcileError, Reconciler, Watched};
use crate::node::ServiceSpec;

impl Reconciler {
    /// A list of the services at `revision`: the node's etcd services are to be exactly the
    /// valid keys listed.
    pub(crate) fn on_service_list(&mut self, kvs: &[Kv], revision: i64) -> NodeCommand {
        let prefix = self.me.services_prefix.clone();
        let mut wanted = Vec::new();
        let mut seen = Vec::new();
        for kv in kvs {
            seen.push(kv.key.clone());
            match parse_service(&prefix, &kv.key, &kv.value) {
                Ok(spec) => wanted.push((kv.key.clone(), spec)),
                Err(e) => self.svc_skipped.skip(&kv.key, &e),
            }
        }
        self.svc_skipped.retain(&seen);
        self.svc_listed = revision;
        NodeCommand::SyncServices(wanted)
    }

    /// One message of the services' watch: its events, to be given to
    /// [`Self::on_service_event`] one at a time as [`Self::subnet_watch_events`] says.
    pub(crate) fn service_watch_events(&self, w: Watched) -> Result<Vec<Event>, ReconcileError> {
        events(w, || format!("{}/", self.me.services_prefix))
    }

    /// One watch event under the services prefix.
    pub(crate) fn on_service_event(&mut self, ev: Event) -> Vec<Command> {
        if ev.mod_revision <= self.svc_listed {
            // Already in the last list (listed again after an earlier event).
            return Vec::new();
        }
        let name = service_name(&self.me.services_prefix, &ev.key).map(str::to_string);
        let remove = |key: &str| {
            name.clone().map(|name| {
                Command::Node(NodeCommand::RemoveService {
                    key: key.to_string(),
                    name,
                })
            })
        };
        match ev.value {
            None => {
                self.svc_skipped.forget(&ev.key);
                let mut out: Vec<Command> = remove(&ev.key).into_iter().collect();
                if !self.svc_skipped.is_empty() {
                    // A service refused for clashing with this one may fit now.
                    out.push(Command::RelistServices);
                }
                out
            }
            Some(value) => match parse_service(&self.me.services_prefix, &ev.key, &value) {
                Ok(spec) => vec![Command::Node(NodeCommand::ApplyService {
                    key: ev.key,
                    spec,
                })],
                Err(e) => {
                    self.svc_skipped.skip(&ev.key, &e);
                    // A key that became unusable no longer describes a service.
                    remove(&ev.key).into_iter().collect()
                }
            },
        }
    }
}

/// The service name of a key `<prefix>/<name>` (None: not such a key).
pub(crate) fn service_name<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let name = key.strip_prefix(prefix)?.strip_prefix('/')?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// The service a key `<prefix>/<name>` holds: a [`ServiceSpec`] as JSON whose name is the key's
/// last segment (the node checks the rest when it applies it).
pub(crate) fn parse_service(prefix: &str, key: &str, value: &[u8]) -> Result<ServiceSpec, String> {
    let Some(name) = service_name(prefix, key) else {
        return Err(format!("not a service key (want {prefix}/<name>)"));
    };
    let spec: ServiceSpec = serde_json::from_slice(value).map_err(|e| {
        format!(
            "not a service as JSON (like {{\"name\":\"{name}\",\"vip\":\"10.96.0.10\",\"port\":80,\"backends\":[\"10.244.1.10:8080\"]}}): {e}"
        )
    })?;
    if spec.name != name {
        return Err(format!(
            "the service's name {:?} is not the key's last segment {name:?}",
            spec.name
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/podswitch/services";

    #[test]
    fn service_keys_name_their_service() {
        assert_eq!(service_name(P, "/podswitch/services/web"), Some("web"));
        assert_eq!(service_name(P, "/podswitch/services/"), None);
        assert_eq!(service_name(P, "/podswitch/services/a/b"), None);
        assert_eq!(service_name(P, "/podswitch/servicesweb"), None);
        assert_eq!(service_name(P, "/other/web"), None);
    }

    #[test]
    fn a_service_value_is_the_service_json_named_as_its_key() {
        let json = br#"{"name":"web","vip":"10.96.0.10","port":80,"proto":"tcp","backends":["10.244.1.10:8080"],"affinity":"client_ip"}"#;
        let spec = parse_service(P, "/podswitch/services/web", json).expect("valid");
        assert_eq!(spec.name, "web");
        assert_eq!(spec.address_text(), "10.96.0.10:80/tcp");
        assert_eq!(spec.backends.len(), 1);

        let e = parse_service(P, "/podswitch/services/other", json).unwrap_err();
        assert_eq!(
            e,
            "the service's name \"web\" is not the key's last segment \"other\""
        );
        let e = parse_service(P, "/podswitch/services/web", b"{not json").unwrap_err();
        assert!(e.starts_with("not a service as JSON"), "{e}");
        let e = parse_service(
            P,
            "/podswitch/services/web",
            br#"{"name":"web","vip":"10.96.0.10","port":80,"extra":1}"#,
        )
        .unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = parse_service(P, "/podswitch/services/a/b", json).unwrap_err();
        assert_eq!(e, "not a service key (want /podswitch/services/<name>)");
    }
}
