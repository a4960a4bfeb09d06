//! Cluster mode (`lbx run --cluster etcd://...`): the configuration lives in etcd as one
//! document, every node serves the revision it last applied, and one node, holding a key
//! under its lease, chooses
//! the weights and the health decisions all nodes apply.
//!
//! Depends on `config` only; the agent drives it.

pub mod document;
pub mod merge;
pub mod options;
pub mod store;
mod tasks;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};

pub use options::{ClusterOptions, Credentials, TlsFiles};
pub use store::{HISTORY_KEPT, Store, Versioned};

use document::{ChangeRecord, Decisions, NodeReport};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "the cluster's configuration changed meanwhile (this change was made on revision \
         {base}, the cluster is at {now}): nothing was written; look at `lbx status` and retry"
    )]
    ChangedMeanwhile { base: u64, now: u64 },
    /// No answer in time: no quorum, or this node is cut off.
    #[error(
        "etcd at {endpoints} did not answer {what} (quorum lost, or this node is cut off \
         from it): this node changed nothing and goes on serving its last revision; if etcd \
         commits the write later, once it has a quorum again, every node applies it then \
         (`lbx history` shows it)"
    )]
    Unavailable { endpoints: String, what: String },
    #[error("cannot reach etcd at {endpoints} within {} s: {last}", waited.as_secs())]
    Unreachable {
        endpoints: String,
        waited: Duration,
        last: String,
    },
    #[error("etcd refused the credentials: {0}")]
    Denied(String),
    #[error("etcd over TLS: {0}")]
    Tls(String),
    #[error("etcd at {endpoints}: {message}")]
    Etcd { endpoints: String, message: String },
}

impl ClusterError {
    pub fn from_etcd(endpoints: &str, e: etcd_client::Error) -> ClusterError {
        let message = match &e {
            etcd_client::Error::GRpcStatus(s) => s.message().to_owned(),
            other => other.to_string(),
        };
        let lower = message.to_lowercase();
        if lower.contains("authentication failed")
            || lower.contains("invalid auth")
            || lower.contains("permission denied")
            || lower.contains("user name is empty")
        {
            return ClusterError::Denied(message);
        }
        if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
            return ClusterError::Tls(format!("{endpoints}: {message}"));
        }
        let unavailable = match &e {
            etcd_client::Error::GRpcStatus(s) => {
                matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                )
                    // tonic's word for a connection that broke under the request.
                    || (s.code() == tonic::Code::Unknown && lower.contains("transport error"))
            }
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            _ => false,
        };
        if unavailable {
            return ClusterError::Unavailable {
                endpoints: endpoints.to_owned(),
                what: format!("the request: {message}"),
            };
        }
        ClusterError::Etcd {
            endpoints: endpoints.to_owned(),
            message,
        }
    }
}

/// What the cluster's tasks tell the agent, in the order they happen.
#[derive(Debug)]
pub enum Update {
    /// A configuration revision newer than the last one delivered.
    Config(Versioned<String>),
    /// New decisions, or why a revision of them could not be read.
    Decisions(Versioned<Result<Decisions, String>>),
    /// The store answers again (after [`Update::CutOff`], or at first).
    Connected,
    /// The store stopped answering: why.
    CutOff(String),
    /// This node became the weights leader (true) or stopped being it (false).
    Leadership(bool),
}

/// The agent's handle on the cluster: blocking calls for its thread, and tasks that run on
/// a runtime of their own and report through [`Update`]s.
pub struct Cluster {
    rt: tokio::runtime::Runtime,
    store: Store,
    pub opts: ClusterOptions,
    report: watch::Sender<Option<NodeReport>>,
    /// This node's lease while it leads the weights.
    leader_lease: Arc<Mutex<Option<i64>>>,
}

impl Cluster {
    /// Connects, waiting up to `opts.wait` for etcd to answer.
    pub fn connect(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lbx-cluster")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Etcd {
                endpoints: opts.describe(),
                message: format!("starting the cluster's runtime: {e}"),
            })?;
        let store = rt.block_on(Store::connect(&opts))?;
        Ok(Cluster {
            rt,
            store,
            opts,
            report: watch::channel(None).0,
            leader_lease: Arc::default(),
        })
    }

    /// Starts watching the configuration (after revision `config_seen`) and the decisions,
    /// reporting this node, and campaigning for the weights leader.
    pub fn start<E>(&self, tx: mpsc::Sender<E>, config_seen: u64, decisions_seen: u64)
    where
        E: From<Update> + Send + 'static,
    {
        let _guard = self.rt.enter();
        tasks::spawn(
            self.store.clone(),
            self.opts.clone(),
            tx,
            config_seen,
            decisions_seen,
            self.report.subscribe(),
            self.leader_lease.clone(),
        );
    }

    pub fn config(&self) -> Result<Option<Versioned<String>>, ClusterError> {
        self.rt.block_on(self.store.config())
    }

    pub fn commit(&self, base: u64, doc: &str, rec: &ChangeRecord) -> Result<u64, ClusterError> {
        self.rt.block_on(self.store.commit(base, doc, rec))
    }

    pub fn history(&self, limit: usize) -> Result<Vec<Versioned<ChangeRecord>>, ClusterError> {
        self.rt.block_on(self.store.history(limit))
    }

    pub fn reports(&self) -> Result<Vec<NodeReport>, ClusterError> {
        self.rt.block_on(self.store.reports())
    }

    /// Hands this node's report to the reporting task, which writes it at its next turn.
    pub fn report(&self, r: NodeReport) {
        self.report.send_replace(Some(r));
    }

    pub fn decisions(&self) -> Result<Option<Versioned<Decisions>>, ClusterError> {
        self.rt.block_on(self.store.decisions())
    }

    /// Writes decisions while this node holds the leader key; none if it no longer does.
    pub fn put_decisions(&self, d: &Decisions) -> Result<Option<u64>, ClusterError> {
        let Some(lease) = *self.leader_lease.lock().expect("not poisoned") else {
            return Ok(None);
        };
        self.rt.block_on(self.store.put_decisions(d, lease))
    }

    /// The weights leader's name, as etcd has it.
    pub fn leader(&self) -> Result<Option<String>, ClusterError> {
        self.rt.block_on(self.store.leader())
    }
}

impl Drop for Cluster {
    /// An agent that stops while it leads gives the leadership up at once (its lease
    /// revoked, the leader key with it) rather than after the lease's TTL.
    fn drop(&mut self) {
        if let Some(lease) = *self.leader_lease.lock().expect("not poisoned") {
            let mut c = self.store.client();
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(1), c.lease_revoke(lease)).await
            });
        }
    }
}
