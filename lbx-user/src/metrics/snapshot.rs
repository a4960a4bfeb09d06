//! What one scrape reports that only the agent knows at that moment: the data plane's
//! counters, each backend's state and weights, and the load model's figures. The agent
//! fills it; the exposition turns it into metric families.

use lbx_common::Counters;

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub vips: Vec<VipFigures>,
    /// Every reason the balancer counts, with its label.
    pub reasons: Vec<(&'static str, u64)>,
    pub flow_table: FlowTable,
    /// In cluster mode: the node's place in the cluster.
    pub cluster: Option<ClusterFigures>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterFigures {
    /// The configuration revision served.
    pub revision: u64,
    /// Whether etcd answers this node.
    pub connected: bool,
    /// Whether this node decides the weights.
    pub leader: bool,
}

#[derive(Clone, Debug, Default)]
pub struct VipFigures {
    /// The VIP in its display form, `10.0.0.100:80/tcp`.
    pub vip: String,
    /// Packets, bytes and new flows, summed over CPUs.
    pub traffic: Counters,
    pub backends: Vec<BackendFigures>,
}

impl VipFigures {
    /// Backends that own slots of the VIP's ring: those new flows go to.
    pub fn backends_in_ring(&self) -> usize {
        self.backends.iter().filter(|b| b.ring_slots > 0).count()
    }
}

#[derive(Clone, Debug, Default)]
pub struct BackendFigures {
    /// The backend's address.
    pub backend: String,
    pub traffic: Counters,
    /// Passing its health checks, or not checked.
    pub healthy: bool,
    pub drained: bool,
    /// Ramping up after a recovery.
    pub slow_start: bool,
    pub operator_weight: u32,
    /// Weight in the published ring: adaptive or operator's, times the slow start's share.
    pub effective_weight: f64,
    /// Slots of the VIP's Maglev ring it owns.
    pub ring_slots: u64,
    /// Flows of it seen within their idle time (`lbx run --flow-idle-s`).
    pub active_flows: u64,
    /// New flows per second over the last control interval.
    pub measured_flows_per_s: Option<f64>,
    /// Health probe latency, smoothed, in seconds.
    pub probe_latency_s: Option<f64>,
    /// The load model's view, for backends of adaptive VIPs.
    pub load: Option<LoadFigures>,
}

#[derive(Clone, Debug, Default)]
pub struct LoadFigures {
    pub adaptive_weight: u32,
    pub forecast_flows_per_s: Option<f64>,
    pub capacity_flows_per_s: Option<f64>,
    /// The kind of evidence behind the capacity estimate (`quiet`, `queueing`, ...).
    pub evidence: &'static str,
    pub predicted_utilisation: Option<f64>,
    /// Times the agent moved this backend's adaptive weight.
    pub weight_changes: u64,
}

/// The connection table's size and an occupancy estimate from a bounded sample of slots.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowTable {
    pub slots: u64,
    pub sampled: u64,
    pub occupied_in_sample: u64,
}

impl FlowTable {
    /// The estimated share of slots holding a flow.
    pub fn occupancy(&self) -> f64 {
        if self.sampled == 0 {
            0.0
        } else {
            self.occupied_in_sample as f64 / self.sampled as f64
        }
    }
}
