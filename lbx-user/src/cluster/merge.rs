//! The weights leader's merged view of the nodes' reports.
//!
//! Health: a backend is down for the cluster when more than half of the nodes that probe
//! it see it down. One node's view alone (a link of its own that failed) does not take a
//! backend from the others; that node removes it for itself (the local fast path, see the
//! agent). Rates: each node sees only its share of the traffic, so the cluster's rate of a
//! backend is the sum of the nodes' rates.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::document::NodeReport;
use crate::config::VipId;

/// Backends more than half of their probing nodes see down.
pub fn down(reports: &[NodeReport]) -> BTreeSet<(VipId, IpAddr)> {
    let mut votes: BTreeMap<(VipId, IpAddr), (usize, usize)> = BTreeMap::new();
    for r in reports {
        for b in &r.backends {
            if let Some(down) = b.down {
                let v = votes.entry((b.vip, b.backend)).or_default();
                v.0 += usize::from(down);
                v.1 += 1;
            }
        }
    }
    votes
        .into_iter()
        .filter(|(_, (down, probing))| down * 2 > *probing)
        .map(|(key, _)| key)
        .collect()
}

/// The cluster's rates of each backend: new flows, packets and bytes per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub new_flows_per_s: f64,
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
}

pub fn rates(reports: &[NodeReport]) -> BTreeMap<(VipId, IpAddr), Rates> {
    let mut out: BTreeMap<(VipId, IpAddr), Rates> = BTreeMap::new();
    for r in reports {
        for b in &r.backends {
            let e = out.entry((b.vip, b.backend)).or_default();
            e.new_flows_per_s += b.new_flows_per_s;
            e.packets_per_s += b.packets_per_s;
            e.bytes_per_s += b.bytes_per_s;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::document::BackendView;

    fn report(node: &str, views: &[(&str, Option<bool>, f64)]) -> NodeReport {
        NodeReport {
            node: node.into(),
            revision: 1,
            applied_unix_ms: 0,
            decisions_revision: 0,
            generation: 1,
            unix_ms: 0,
            backends: views
                .iter()
                .map(|(addr, down, rate)| BackendView {
                    vip: "10.0.0.1:80/tcp".parse().unwrap(),
                    backend: addr.parse().unwrap(),
                    down: *down,
                    new_flows_per_s: *rate,
                    packets_per_s: rate * 10.0,
                    bytes_per_s: 0.0,
                })
                .collect(),
        }
    }

    #[test]
    fn down_needs_a_majority_of_probing_nodes() {
        let a = "10.0.1.1";
        let b = "10.0.1.2";
        let c = "10.0.1.3";
        let reports = [
            report(
                "n1",
                &[(a, Some(true), 1.0), (b, Some(true), 1.0), (c, None, 1.0)],
            ),
            report(
                "n2",
                &[(a, Some(true), 1.0), (b, Some(false), 1.0), (c, None, 1.0)],
            ),
            report(
                "n3",
                &[
                    (a, Some(false), 1.0),
                    (b, Some(false), 1.0),
                    (c, Some(true), 1.0),
                ],
            ),
        ];
        let d = down(&reports);
        let has = |x: &str| d.iter().any(|(_, ip)| *ip == x.parse::<IpAddr>().unwrap());
        // 2 of 3: down; 1 of 3: up; 1 of 1 probing: down.
        assert!(has(a));
        assert!(!has(b));
        assert!(has(c));
        // 1 of 2 is no majority.
        assert!(
            down(&reports[1..])
                .iter()
                .all(|(_, ip)| ip.to_string() != b)
        );
    }

    #[test]
    fn rates_add_up_over_nodes() {
        let reports = [
            report("n1", &[("10.0.1.1", None, 100.0)]),
            report("n2", &[("10.0.1.1", None, 50.0)]),
        ];
        let r = rates(&reports);
        let only = r.values().next().unwrap();
        assert_eq!(only.new_flows_per_s, 150.0);
        assert_eq!(only.packets_per_s, 1500.0);
    }
}
