//! The agent's side of the metrics: a snapshot of the data plane's counters and of its own
//! decisions, taken when the endpoint asks.

use std::collections::BTreeMap;

use lbx_common::Reason;

use super::Agent;
use crate::{
    balance::health::State,
    config::VipId,
    dataplane::plan,
    metrics::snapshot::{BackendFigures, FlowTable, LoadFigures, Snapshot, VipFigures},
};

/// Connection-table slots read for the occupancy estimate: a few hundred kilobytes of
/// the mapped table, whatever its size.
const FLOW_SAMPLE: usize = 4096;

/// Ring slots each backend slot owns, per VIP, and the generation they were counted for.
#[derive(Default)]
pub(super) struct RingShares {
    generation: u64,
    counts: BTreeMap<(VipId, u32), u64>,
}

impl Agent {
    /// Counts ring slots once per generation: rings change only when one is published.
    fn refresh_ring_shares(&mut self) {
        let generation = self.publisher.generation();
        if self.ring_shares.generation != generation || self.ring_shares.counts.is_empty() {
            let mut counts = BTreeMap::new();
            for v in &self.plan.vips {
                let mut per_slot: BTreeMap<u32, u64> = BTreeMap::new();
                for slot in v.ring.iter() {
                    *per_slot.entry(*slot).or_default() += 1;
                }
                counts.extend(per_slot.into_iter().map(|(s, n)| ((v.id, s), n)));
            }
            self.ring_shares = RingShares { generation, counts };
        }
    }

    /// What a scrape exports now. A counter the kernel refuses to read leaves its VIP or
    /// backend out of this snapshot rather than exporting a false zero.
    pub fn scrape(&mut self) -> Snapshot {
        self.refresh_ring_shares();
        let shares = &self.ring_shares.counts;
        let active = self.active_flows();
        let mut vips = Vec::with_capacity(self.config.vips.len());
        for v in &self.config.vips {
            let id = v.id();
            let Ok(c) = self.bal.vip_counters(self.slots.vips[&id]) else {
                continue;
            };
            let mut backends = Vec::with_capacity(v.backends.len());
            for b in &v.backends {
                let key = (id, b.address);
                let slot = self.slots.backends[&key].slot;
                let Ok(bc) = self.bal.backend_counters(slot) else {
                    continue;
                };
                let eff = self.published.get(&key);
                let health = self.health.get(&key);
                let model = self.models.get(&key);
                backends.push(BackendFigures {
                    backend: b.address.to_string(),
                    traffic: bc,
                    healthy: health.is_none_or(|h| h.state == State::Up),
                    drained: b.drain,
                    slow_start: eff.is_some_and(|e| !e.down && e.permille < plan::FULL),
                    operator_weight: b.weight,
                    effective_weight: plan::effective_weight(eff, b.weight),
                    ring_slots: shares.get(&(id, slot)).copied().unwrap_or(0),
                    active_flows: active.get(slot as usize).copied().unwrap_or(0),
                    measured_flows_per_s: self.signals.get(&key).map(|s| s.new_flows_per_s),
                    probe_latency_s: health.and_then(|h| h.latency_ewma),
                    load: self.adaptive.get(&key).map(|(w, _)| LoadFigures {
                        adaptive_weight: *w,
                        forecast_flows_per_s: model.and_then(|m| m.demand.forecast(1.0)),
                        capacity_flows_per_s: model.and_then(|m| m.capacity.estimate()),
                        evidence: model.map_or("unmeasured", |m| m.capacity.evidence().kind()),
                        predicted_utilisation: model.and_then(|m| m.predicted_utilisation()),
                        weight_changes: self.weight_changes.get(&key).copied().unwrap_or(0),
                    }),
                });
            }
            vips.push(VipFigures {
                vip: id.to_string(),
                traffic: c,
                backends,
            });
        }
        let reasons = Reason::ALL
            .iter()
            .filter_map(|r| self.bal.reason_count(*r).ok().map(|n| (r.label(), n)))
            .collect();
        Snapshot {
            generation: self.publisher.generation(),
            vips,
            reasons,
            flow_table: self.sample_flow_table(),
            cluster: self.cluster_figures(),
        }
    }

    fn sample_flow_table(&self) -> FlowTable {
        let slots = self.bal.flows.len();
        let stride = slots.div_ceil(FLOW_SAMPLE).max(1);
        let (mut sampled, mut occupied) = (0, 0);
        for i in (0..slots).step_by(stride) {
            sampled += 1;
            if self.bal.flows.get(i).is_some_and(|s| s.check != 0) {
                occupied += 1;
            }
        }
        FlowTable {
            slots: slots as u64,
            sampled,
            occupied_in_sample: occupied,
        }
    }
}
