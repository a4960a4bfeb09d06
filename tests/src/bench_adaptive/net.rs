//! The network a run balances through: one lb ([`Topology`]), or a cluster of lb nodes behind
//! an ECMP router that share one configuration through a 3-member etcd ([`Fleet`] and
//! [`EtcdCluster`]; each node sees about 1/N of the flows, and the weights leader merges the
//! nodes' reports). The harness speaks to either through this one type: the CLI for changes,
//! the agents' status for what they see, the client for the load generator, the backends for
//! the capacity servers.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::Context as _;

use super::harness::vip;
use crate::etcd::EtcdCluster;
use crate::fleet::{self, Fleet};
use crate::netns::Netns;
use crate::{Host, Topology, VIP_V4};

/// The cluster's name in etcd.
const CLUSTER: &str = "bench";
/// The nodes' lease TTL, as in the cluster tests.
const LEASE_TTL_S: u64 = 3;
/// Members of the cluster's etcd.
const ETCD_MEMBERS: usize = 3;

/// One lb, or a cluster; see the module's documentation.
#[derive(Debug)]
pub enum Net {
    Single(Topology),
    /// Field order is drop order: the nodes leave etcd's control network before it goes.
    Cluster {
        fleet: Fleet,
        etcd: EtcdCluster,
    },
}

impl Net {
    /// A fresh network of `lb_nodes` lbs (1: a single lb, no etcd) serving the VIP over the
    /// backends `(i, weight)`, 1-based.
    pub fn build(lb_nodes: usize, backends: &[(usize, u32)]) -> anyhow::Result<Self> {
        // The test network's plain servers take port 80 of this address; ours take PORT.
        let plain = SocketAddr::new(VIP_V4.into(), 80);
        if lb_nodes <= 1 {
            let mut topo = Topology::builder()
                .backends(backends.len())
                .vip(plain)
                .build()
                .context("failed to build the test network")?;
            topo.set_report_on_drop(false);
            topo.add_vip(vip(), backends)?;
            return Ok(Self::Single(topo));
        }
        let etcd = EtcdCluster::start(ETCD_MEMBERS, None).context("failed to start etcd")?;
        // Every node gets the same file; the first to start seeds the cluster with it.
        let mut builder = Fleet::builder()
            .nodes(lb_nodes)
            .backends(backends.len())
            .vip(plain)
            .config(fleet::config_toml(&[(vip(), backends.to_vec())]));
        for i in 1..=lb_nodes {
            builder = builder.node_args(i, fleet::cluster_args(&etcd, CLUSTER, i, LEASE_TTL_S));
        }
        let mut fleet = builder
            .build(Some(&etcd))
            .context("failed to build the cluster's test network")?;
        fleet.set_report_on_drop(false);
        Ok(Self::Cluster { fleet, etcd })
    }

    /// How many lbs balance.
    pub fn lb_nodes(&self) -> usize {
        match self {
            Self::Single(_) => 1,
            Self::Cluster { fleet, .. } => fleet.node_count(),
        }
    }

    /// Runs an `lbx` CLI command (in a cluster on node 1: a change reaches every node).
    pub fn lbx(&self, args: &[&str]) -> anyhow::Result<String> {
        match self {
            Self::Single(topo) => topo.lbx(args),
            Self::Cluster { fleet, .. } => fleet.lbx(1, args),
        }
    }

    /// Every lb's agent's control socket, node 1's first.
    pub fn sockets(&self) -> Vec<&Path> {
        match self {
            Self::Single(topo) => vec![topo.socket()],
            Self::Cluster { fleet, .. } => {
                (1..=fleet.node_count()).map(|i| fleet.socket(i)).collect()
            }
        }
    }

    /// The client, where the load generator runs.
    pub fn client(&self) -> &Host {
        match self {
            Self::Single(topo) => &topo.client,
            Self::Cluster { fleet, .. } => &fleet.client,
        }
    }

    /// Backend `i`, 1-based.
    pub fn backend(&self, i: usize) -> &Host {
        match self {
            Self::Single(topo) => topo.backend(i),
            Self::Cluster { fleet, .. } => fleet.backend(i),
        }
    }

    /// The backend whose address is `addr`.
    pub fn backend_at(&self, addr: IpAddr) -> Option<&Host> {
        match self {
            Self::Single(topo) => topo.backend_at(addr),
            Self::Cluster { fleet, .. } => fleet.backend_at(addr),
        }
    }

    /// A namespace on the backends' network, from which their own addresses (the capacity
    /// servers' control endpoints) are reached: the client's beside a single lb, the router's
    /// in a cluster (the client there has a link to the router only).
    pub fn admin_netns(&self) -> &Netns {
        match self {
            Self::Single(topo) => &topo.client.netns,
            Self::Cluster { fleet, .. } => &fleet.router.netns,
        }
    }

    /// The temporary directory for process logs.
    pub fn dir(&self) -> &Path {
        match self {
            Self::Single(topo) => topo.dir(),
            Self::Cluster { fleet, .. } => fleet.dir(),
        }
    }

    /// Every process the network runs (agents, servers, etcd).
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Self::Single(topo) => topo.pids(),
            Self::Cluster { fleet, etcd } => {
                let mut pids = fleet.pids();
                pids.extend(etcd.pids());
                pids
            }
        }
    }

    /// The last lines of every process's log.
    pub fn log_tails(&self) -> String {
        match self {
            Self::Single(topo) => topo.log_tails(),
            Self::Cluster { fleet, etcd } => fleet.log_tails() + &etcd.log_tails(),
        }
    }
}
