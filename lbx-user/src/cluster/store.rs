//! The cluster's keys in etcd and the operations on them. Every write of the
//! configuration is one transaction that compares the key's revision with the one the
//! change was made on: two changes made on the same revision never both win.
//!
//! ```text
//! /lbx/<cluster>/config            the configuration, TOML (its mod revision: the version)
//! /lbx/<cluster>/history/<rev>     the record of the change that made revision <rev>'s
//!                                  successor, written with it
//! /lbx/<cluster>/nodes/<node>      each node's report, under its lease
//! /lbx/<cluster>/decisions         the weights leader's decisions
//! /lbx/<cluster>/leader/<lease>    the weights election: each node's candidacy, its
//!                                  name under its lease; the oldest key leads
//! ```

use std::{fs, time::Duration};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, SortOrder,
    SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{
    ClusterError,
    document::{ChangeRecord, Decisions, NodeReport},
    options::{ClusterOptions, REQUEST_TIMEOUT},
};

/// How many change records are kept; older ones are deleted after each change.
pub const HISTORY_KEPT: usize = 100;

/// A value and the revision that last wrote it.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub revision: u64,
    pub value: T,
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    /// For campaigns only, which wait as long as it takes to win.
    elections: Client,
    prefix: String,
    endpoints: String,
}

impl Store {
    /// Connects and checks that etcd answers with a quorum, waiting up to `opts.wait`.
    pub async fn connect(opts: &ClusterOptions) -> Result<Store, ClusterError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // A cut link shows within seconds, not after TCP's own timeouts.
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &opts.tls {
            let read = |p: &std::path::Path, what: &str| {
                fs::read(p).map_err(|e| ClusterError::Tls(format!("{what} {}: {e}", p.display())))
            };
            let mut t = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(&tls.ca, "CA certificate")?));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(Identity::from_pem(
                    read(cert, "client certificate")?,
                    read(key, "client key")?,
                ));
            }
            connect = connect.with_tls(t);
        }
        if let Some(a) = &opts.auth {
            connect = connect.with_user(a.user.clone(), a.password.clone());
        }
        // A campaign waits until it wins: it gets a client without the requests' timeout,
        // whose expiry would withdraw the candidacy. Nothing else goes over that client, so
        // its pings must keep to etcd's minimum interval (`--grpc-keepalive-min-time`, 5 s):
        // etcd closes a quiet connection that pings more often, and the candidacy with it.
        let unbounded = connect
            .clone()
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
            .with_keep_alive_while_idle(false);
        let connect = connect.with_timeout(REQUEST_TIMEOUT);
        let endpoints = opts.describe();
        let deadline = tokio::time::Instant::now() + opts.wait;
        let mut last;
        loop {
            let attempt = async {
                let client = Client::connect(opts.urls(), Some(connect.clone())).await?;
                let mut probe = client.clone();
                probe
                    .get(format!("/lbx/{}/config", opts.name), None)
                    .await?;
                let elections = Client::connect(opts.urls(), Some(unbounded.clone())).await?;
                Ok::<_, etcd_client::Error>((client, elections))
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
                Ok(Ok((client, elections))) => {
                    return Ok(Store {
                        client,
                        elections,
                        prefix: format!("/lbx/{}/", opts.name),
                        endpoints,
                    });
                }
                Ok(Err(e)) => {
                    let e = ClusterError::from_etcd(&endpoints, e);
                    // Wrong credentials or certificates do not get better by waiting.
                    if matches!(e, ClusterError::Denied(_) | ClusterError::Tls(_)) {
                        return Err(e);
                    }
                    last = match e {
                        ClusterError::Unavailable { what, .. } => what,
                        other => other.to_string(),
                    };
                    if opts.tls.is_some() && last.contains("transport error") {
                        last.push_str(
                            " (with TLS, so does a CA that did not sign etcd's certificate, or \
                             a client certificate missing or refused: --etcd-ca, --etcd-cert, \
                             --etcd-key)",
                        );
                    }
                }
                Err(_) => last = format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Unreachable {
                    endpoints,
                    waited: opts.wait,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn history_key(&self, base: u64) -> String {
        self.key(&format!("history/{base:020}"))
    }

    /// Runs the request `f` makes, again while it fails without reaching a member (a dead
    /// member's endpoint refuses the connection: the request was never sent), until it
    /// answers or [`REQUEST_TIMEOUT`] passes.
    async fn timed<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, ClusterError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let timed_out = || ClusterError::Unavailable {
            endpoints: self.endpoints.clone(),
            what: format!("{what} within {} s", REQUEST_TIMEOUT.as_secs()),
        };
        loop {
            match tokio::time::timeout_at(deadline, f(self.client.clone())).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) if not_sent(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(e)) => return Err(ClusterError::from_etcd(&self.endpoints, e)),
                Err(_) => return Err(timed_out()),
            }
        }
    }

    /// The configuration document and its revision; none before the first is written.
    pub async fn config(&self) -> Result<Option<Versioned<String>>, ClusterError> {
        let key = self.key("config");
        let r = self
            .timed("reading the configuration", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(r.kvs().first().map(|kv| Versioned {
            revision: kv.mod_revision() as u64,
            value: String::from_utf8_lossy(kv.value()).into_owned(),
        }))
    }

    /// Writes `document` if the configuration is still at revision `base` (0: absent), with
    /// its change record; returns the new revision.
    pub async fn commit(
        &self,
        base: u64,
        document: &str,
        record: &ChangeRecord,
    ) -> Result<u64, ClusterError> {
        let key = self.key("config");
        let record_json = serde_json::to_string(record).expect("records serialize");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                base as i64,
            )])
            .and_then([
                TxnOp::put(key.clone(), document, None),
                TxnOp::put(self.history_key(base), record_json, None),
            ])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = self
            .timed("writing the configuration", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if !r.succeeded() {
            let now = r
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision() as u64),
                    _ => None,
                })
                .unwrap_or(0);
            return Err(ClusterError::ChangedMeanwhile { base, now });
        }
        let revision = r.header().map_or(0, |h| h.revision() as u64);
        self.trim_history().await;
        Ok(revision)
    }

    /// Deletes change records beyond the last [`HISTORY_KEPT`]; best effort, a later
    /// change tries again.
    async fn trim_history(&self) {
        let mut c = self.client.clone();
        let prefix = self.key("history/");
        let Ok(Ok(r)) = tokio::time::timeout(
            REQUEST_TIMEOUT,
            c.get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await
        else {
            return;
        };
        let n = r.kvs().len();
        if n <= HISTORY_KEPT {
            return;
        }
        // Keys sort by their zero-padded revision: the first ones are the oldest.
        if let Some(last_old) = r.kvs().get(n - HISTORY_KEPT - 1) {
            let end = format!("{}\0", String::from_utf8_lossy(last_old.key()));
            let _ = c
                .delete(
                    prefix,
                    Some(etcd_client::DeleteOptions::new().with_range(end)),
                )
                .await;
        }
    }

    /// The last `limit` change records, newest first, each with the revision it made.
    pub async fn history(
        &self,
        limit: usize,
    ) -> Result<Vec<Versioned<ChangeRecord>>, ClusterError> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit as i64);
        let key = self.key("history/");
        let r = self
            .timed("reading the history", |mut c| {
                let (key, opts) = (key.clone(), opts.clone());
                async move { c.get(key, Some(opts)).await }
            })
            .await?;
        let mut out = Vec::new();
        for kv in r.kvs() {
            match serde_json::from_slice::<ChangeRecord>(kv.value()) {
                Ok(rec) => out.push(Versioned {
                    revision: kv.mod_revision() as u64,
                    value: rec,
                }),
                Err(e) => eprintln!(
                    "cluster: skipping the unreadable change record {}: {e}",
                    String::from_utf8_lossy(kv.key())
                ),
            }
        }
        Ok(out)
    }

    /// Every node's report, by node.
    pub async fn reports(&self) -> Result<Vec<NodeReport>, ClusterError> {
        let key = self.key("nodes/");
        let r = self
            .timed("reading the nodes' reports", |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    pub async fn put_report(&self, report: &NodeReport, lease: i64) -> Result<(), ClusterError> {
        let json = serde_json::to_string(report).expect("reports serialize");
        let key = self.key(&format!("nodes/{}", report.node));
        self.timed("writing this node's report", |mut c| {
            let (key, json) = (key.clone(), json.clone());
            let opts = etcd_client::PutOptions::new().with_lease(lease);
            async move { c.put(key, json, Some(opts)).await }
        })
        .await
        .map(drop)
    }

    pub async fn decisions(&self) -> Result<Option<Versioned<Decisions>>, ClusterError> {
        let key = self.key("decisions");
        let r = self
            .timed("reading the decisions", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(r.kvs().first().and_then(|kv| {
            serde_json::from_slice(kv.value())
                .ok()
                .map(|value| Versioned {
                    revision: kv.mod_revision() as u64,
                    value,
                })
        }))
    }

    /// Writes decisions while `key`, this node's candidacy in the weights election, holds
    /// its `lease`: a leader whose lease ended meanwhile writes nothing. (A key that leads
    /// goes on leading while it exists: the keys before it are gone, and later ones are
    /// created after it.)
    pub async fn put_decisions(
        &self,
        d: &Decisions,
        key: &[u8],
        lease: i64,
    ) -> Result<Option<u64>, ClusterError> {
        let txn = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, lease)])
            .and_then([TxnOp::put(
                self.key("decisions"),
                serde_json::to_string(d).expect("decisions serialize"),
                None,
            )]);
        let r = self
            .timed("writing the decisions", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(r.succeeded()
            .then(|| r.header().map_or(0, |h| h.revision() as u64)))
    }

    /// Stands `node` for the weights leadership with its `lease`, through etcd's election
    /// API: returns once it leads, which may be never. The candidacy is a key under the
    /// lease, so it ends with the lease (a node that died, or was cut off for the TTL).
    pub async fn campaign(&self, node: &str, lease: i64) -> Result<(), etcd_client::Error> {
        let mut c = self.elections.clone();
        c.campaign(self.key("leader"), node, lease).await.map(drop)
    }

    /// The weights election's leader, as etcd names it; none while nobody stands.
    pub async fn leader(&self) -> Result<Option<Leader>, ClusterError> {
        let name = self.key("leader");
        self.timed("naming the weights leader", |mut c| {
            let name = name.clone();
            async move {
                match c.leader(name).await {
                    Ok(r) => Ok(r.kv().map(|kv| Leader {
                        node: String::from_utf8_lossy(kv.value()).into_owned(),
                        lease: kv.lease(),
                        key: kv.key().to_vec(),
                    })),
                    Err(e) if e.to_string().contains("election: no leader") => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }
}

/// The weights leader: its node's name, the lease it stands with, and its election key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub node: String,
    pub lease: i64,
    pub key: Vec<u8>,
}

/// Whether `e` says the request never reached a member: the connection was refused or
/// could not be made, so sending it again cannot apply it twice.
fn not_sent(e: &etcd_client::Error) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("tcp connect error") || text.contains("connection refused")
}
