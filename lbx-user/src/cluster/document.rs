//! What the nodes keep in etcd besides the configuration itself (a TOML document, the
//! same as the single-node file): the record of each change, each node's report, and the
//! leader's decisions. All JSON.

use std::{net::IpAddr, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::VipId;

/// The record of one change, written in the same transaction as the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub node: String,
    pub unix_ms: u64,
    /// The revision the change was made on.
    pub base: u64,
    /// What changed, a line each.
    pub changes: Vec<String>,
    /// The configuration it made, so a rollback does not depend on etcd's compaction.
    pub config: String,
}

/// One backend as a node sees it, in its report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendView {
    pub vip: VipId,
    pub backend: IpAddr,
    /// What this node's own probes say, when the VIP has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<bool>,
    /// Rates through this node over its last control interval.
    pub new_flows_per_s: f64,
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
}

/// What each node writes under its lease every control interval.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// The configuration revision this node serves, and since when.
    pub revision: u64,
    pub applied_unix_ms: u64,
    /// The decisions revision it applied.
    pub decisions_revision: u64,
    pub generation: u64,
    pub unix_ms: u64,
    pub backends: Vec<BackendView>,
}

/// A weight the leader chose for a backend of an adaptive VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weight {
    pub vip: VipId,
    pub backend: IpAddr,
    pub weight: u32,
    pub reason: String,
}

/// The leader's decisions: the weights of adaptive backends and which backends are down
/// for the cluster. Every node applies them as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Decisions {
    pub leader: String,
    /// The configuration revision they were made for.
    pub config_revision: u64,
    pub unix_ms: u64,
    pub weights: Vec<Weight>,
    pub down: Vec<(VipId, IpAddr)>,
}

impl Decisions {
    /// Equal but for who made them and when: no new revision needed.
    pub fn same_as(&self, other: &Decisions) -> bool {
        self.weights == other.weights && self.down == other.down
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}
