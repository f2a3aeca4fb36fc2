//! The only code that speaks etcd-client: each call the session makes, with a timeout, its
//! answer turned into the reconciler's plain types ([`Kv`], [`Listing`], [`Watched`]) and its
//! failure into [`ClusterError::Etcd`] (one short line naming the call).
//!
//! Invariant: no rule lives here; every decision about what the answers mean is the
//! reconciler's.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};

use super::reconcile::{Claim, Event, Guard, Kv, Listing, Watched};
use super::ClusterError;

/// How long one call to etcd may take before it counts as a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on the connection, so a dead etcd is noticed while only a watch is open. etcd
/// answers pings more frequent than its `--grpc-keepalive-min-time` (5 s) with GOAWAY
/// `too_many_pings`, dropping the connection every few seconds: stay above it.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// etcd's endpoints and, once connected, the client (which reconnects itself when etcd comes
/// back).
pub(crate) struct Etcd {
    endpoints: Vec<String>,
    client: Option<Client>,
}

/// A connected client.
#[derive(Clone)]
pub(crate) struct Conn {
    client: Client,
    endpoints: String,
}

impl Etcd {
    /// Not connected yet.
    pub(crate) fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            client: None,
        }
    }

    /// A connected client (made once).
    pub(crate) async fn connect(&mut self) -> Result<Conn, ClusterError> {
        let endpoints = self.endpoints.join(",");
        if let Some(c) = &self.client {
            return Ok(Conn {
                client: c.clone(),
                endpoints,
            });
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            // A watch is always open; pings without one would only annoy etcd.
            .with_keep_alive_while_idle(false)
            // As flannel: a member cut off from its quorum fails the calls instead of serving
            // stale data silently.
            .with_require_leader(true);
        let connect = Client::connect(self.endpoints.clone(), Some(options));
        let client = timed(connect).await.map_err(|message| ClusterError::Etcd {
            endpoints: endpoints.clone(),
            what: "connecting",
            message,
        })?;
        self.client = Some(client.clone());
        Ok(Conn { client, endpoints })
    }
}

fn kv(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        lease: kv.lease(),
        mod_revision: kv.mod_revision(),
    }
}

impl Conn {
    fn err(&self, what: &'static str) -> impl Fn(String) -> ClusterError + '_ {
        move |message| ClusterError::Etcd {
            endpoints: self.endpoints.clone(),
            what,
            message,
        }
    }

    /// The key `key` (`what`: the call, for the error).
    pub(crate) async fn get(
        &mut self,
        key: &str,
        what: &'static str,
    ) -> Result<Option<Kv>, ClusterError> {
        let resp = timed(self.client.get(key, None))
            .await
            .map_err(self.err(what))?;
        Ok(resp.kvs().first().map(kv))
    }

    /// Every key under `prefix`, and the revision of the list.
    pub(crate) async fn list(
        &mut self,
        prefix: &str,
        what: &'static str,
    ) -> Result<Listing, ClusterError> {
        let options = GetOptions::new().with_prefix();
        let resp = timed(self.client.get(prefix, Some(options)))
            .await
            .map_err(self.err(what))?;
        Ok(Listing {
            kvs: resp.kvs().iter().map(kv).collect(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    /// A new etcd lease of `ttl` seconds.
    pub(crate) async fn grant(&mut self, ttl: i64) -> Result<i64, ClusterError> {
        let resp = timed(self.client.lease_grant(ttl, None))
            .await
            .map_err(self.err("granting a lease"))?;
        Ok(resp.id())
    }

    /// Revokes `lease`, errors ignored (it expires anyway).
    pub(crate) async fn revoke(&mut self, lease: i64) {
        let _ = timed(self.client.lease_revoke(lease)).await;
    }

    /// The seconds `lease` has left (0 or less: expired).
    pub(crate) async fn time_to_live(&mut self, lease: i64) -> Result<i64, ClusterError> {
        let resp = timed(self.client.lease_time_to_live(lease, None))
            .await
            .map_err(self.err("checking the lease"))?;
        Ok(resp.ttl())
    }

    /// Makes `claim` in one transaction; false if its guard failed.
    pub(crate) async fn write(&mut self, claim: &Claim) -> Result<bool, ClusterError> {
        let key = claim.key.as_str();
        let compare = match claim.guard {
            Guard::Unchanged(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            Guard::Absent => Compare::version(key, CompareOp::Equal, 0),
        };
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(
            key,
            claim.value.as_str(),
            Some(PutOptions::new().with_lease(claim.lease)),
        )]);
        let resp = timed(self.client.txn(txn))
            .await
            .map_err(self.err("writing the subnet lease"))?;
        Ok(resp.succeeded())
    }

    /// Starts keeping `lease` alive.
    pub(crate) async fn keep_alive(&mut self, lease: i64) -> Result<KeepAlive, ClusterError> {
        let (keeper, stream) = timed(self.client.lease_keep_alive(lease))
            .await
            .map_err(self.err("keeping the lease alive"))?;
        Ok(KeepAlive {
            keeper,
            stream,
            endpoints: self.endpoints.clone(),
        })
    }

    /// Watches `prefix` from revision `from`.
    pub(crate) async fn watch(
        &mut self,
        prefix: &str,
        from: i64,
        what: &'static str,
    ) -> Result<Watch, ClusterError> {
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let stream = timed(self.client.watch(prefix, Some(options)))
            .await
            .map_err(self.err(what))?;
        Ok(Watch {
            stream,
            what,
            endpoints: self.endpoints.clone(),
        })
    }
}

/// A lease kept alive: renewals sent with [`KeepAlive::renew`], answered on [`KeepAlive::next`].
pub(crate) struct KeepAlive {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    endpoints: String,
}

const KEEPING: &str = "keeping the lease alive";

impl KeepAlive {
    fn err(&self, message: String) -> ClusterError {
        ClusterError::Etcd {
            endpoints: self.endpoints.clone(),
            what: KEEPING,
            message,
        }
    }

    /// Asks for a renewal.
    pub(crate) async fn renew(&mut self) -> Result<(), ClusterError> {
        timed(self.keeper.keep_alive())
            .await
            .map_err(|m| self.err(m))
    }

    /// The next answer: the TTL etcd gives the lease (0 or less: gone).
    pub(crate) async fn next(&mut self) -> Result<i64, ClusterError> {
        match self.stream.message().await {
            Ok(Some(resp)) => Ok(resp.ttl()),
            Ok(None) => Err(self.err("stream closed".into())),
            Err(e) => Err(self.err(e.to_string())),
        }
    }
}

/// A watch of a prefix.
pub(crate) struct Watch {
    stream: WatchStream,
    what: &'static str,
    endpoints: String,
}

impl Watch {
    /// The next message: events, or the watch's cancellation; an error if the stream failed.
    pub(crate) async fn next(&mut self) -> Result<Watched, ClusterError> {
        let err = |message| ClusterError::Etcd {
            endpoints: self.endpoints.clone(),
            what: self.what,
            message,
        };
        let resp = match self.stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return Err(err("stream closed".into())),
            Err(e) => return Err(err(e.to_string())),
        };
        if resp.canceled() {
            return Ok(Watched::Cancelled {
                compact_revision: resp.compact_revision(),
                reason: resp.cancel_reason().to_string(),
            });
        }
        Ok(Watched::Events(
            resp.events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    Some(Event {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: (event.event_type() == EventType::Put).then(|| kv.value().to_vec()),
                        lease: kv.lease(),
                        mod_revision: kv.mod_revision(),
                    })
                })
                .collect(),
        ))
    }
}

/// Runs an etcd call with [`CALL_TIMEOUT`]; errors as text.
async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(brief(&e)),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// An etcd client error in one short line: a gRPC status as its code and message (not the
/// status's debug dump of details and metadata, logged at every retry), and the innermost
/// cause of anything else ("Connection refused (os error 111)").
fn brief(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let message = s.message();
            // A connect failure is reported as a status whose message holds the chain.
            let cause = message.rsplit(": ").next().unwrap_or(message);
            format!("{:?}: {cause}", s.code())
        }
        other => {
            let mut last: &dyn std::error::Error = other;
            while let Some(next) = last.source() {
                last = next;
            }
            last.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_errors_are_one_short_line() {
        let status = tonic_status_unavailable();
        let text = brief(&status);
        assert_eq!(text, "Unavailable: Connection refused (os error 111)");
        assert!(status.to_string().len() > 2 * text.len(), "{status}");
        let other = etcd_client::Error::WatchError("watch canceled".into());
        assert_eq!(brief(&other), "watch error: watch canceled");
    }

    /// The error a client gets when nothing listens at the endpoint, as etcd-client builds it.
    fn tonic_status_unavailable() -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
        ))
    }
}
