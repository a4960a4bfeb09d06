//! Every control interval, and between intervals on an overload: measure each backend,
//! run the load models, and turn capacity estimates and health into effective weights.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{Agent, Signals};
use crate::{
    balance::{
        health::{self, State},
        model::{self, Probe},
        report,
        weights::{self, Input, Policy},
    },
    config::{Config, VipConfig, VipId},
    dataplane::plan::{self, Effective, Overrides},
};

/// A load report comes from the backend's own agent on the same link: it answers fast or
/// not at all, and the control loop must not wait on it.
const REPORT_TIMEOUT: Duration = Duration::from_millis(50);
/// Shortest stretch of counters a rate between ticks is taken over.
const MIN_RATE_WINDOW: Duration = Duration::from_millis(300);

impl Agent {
    /// Effective weight and health of every backend of a VIP with a health check.
    pub(super) fn effective(&self, config: &Config, now: Instant) -> Overrides {
        let mut out = Overrides::new();
        for v in &config.vips {
            let Some(check) = &v.health else { continue };
            let panic = self.panicking(v);
            for b in &v.backends {
                let key = (v.id(), b.address);
                let weight = v
                    .adaptive
                    .as_ref()
                    .and_then(|_| self.adaptive.get(&key))
                    .map(|(w, _)| *w);
                let (permille, down) = match self.health.get(&key) {
                    Some(_) if panic => (plan::FULL, false),
                    Some(h) => (
                        (h.weight_factor(check, now) * f64::from(plan::FULL)).round() as u32,
                        h.state == State::Down || self.cluster_down(&key),
                    ),
                    None => (plan::FULL, self.cluster_down(&key)),
                };
                // Out by the cluster's decision: no share, as out by its own probes.
                let permille = if down { 0 } else { permille };
                out.insert(
                    key,
                    Effective {
                        weight,
                        permille,
                        down,
                    },
                );
            }
        }
        out
    }

    /// Whether more than half of a VIP's backends taking new flows failed their checks.
    /// Then the failures more likely come from overload (probes queue behind requests)
    /// than from the backends, and taking them out would pile everything on the rest: like
    /// Envoy's panic threshold, health is ignored until enough backends pass again.
    pub(super) fn panicking(&self, v: &VipConfig) -> bool {
        let serving: Vec<_> = v.backends.iter().filter(|b| !b.drain).collect();
        let down = serving
            .iter()
            .filter(|b| {
                self.health
                    .get(&(v.id(), b.address))
                    .is_some_and(|h| h.state == State::Down)
            })
            .count();
        down * 2 > serving.len()
    }

    /// Reads the data plane's per-backend counters into per-second rates.
    pub(super) fn sample_signals(&mut self, now: Instant) {
        let mut signals = BTreeMap::new();
        let mut counters = BTreeMap::new();
        for (key, slot) in &self.slots.backends {
            let Ok(c) = self.bal.backend_counters(slot.slot) else {
                continue;
            };
            if let Some((prev, at)) = self.last_counters.get(&slot.slot) {
                let dt = now.saturating_duration_since(*at).as_secs_f64();
                if dt > 0.0 {
                    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
                    signals.insert(
                        *key,
                        Signals {
                            new_flows_per_s: rate(c.new_flows, prev.new_flows),
                            packets_per_s: rate(c.packets, prev.packets),
                            bytes_per_s: rate(c.bytes, prev.bytes),
                        },
                    );
                }
            }
            counters.insert(slot.slot, (c, now));
        }
        self.signals = signals;
        self.last_counters = counters;
    }

    /// Feeds the interval's signals to the models and chooses the adaptive weights.
    pub(super) fn adapt(&mut self, now: Instant) {
        self.churn_spent.clear();
        self.relieved.clear();
        let mut keep = BTreeMap::new();
        let vips: Vec<_> = self
            .config
            .vips
            .iter()
            .filter(|v| v.adaptive.is_some())
            .cloned()
            .collect();
        for v in &vips {
            let Some(a) = &v.adaptive else { continue };
            let id = v.id();
            for b in &v.backends {
                let key = (id, b.address);
                let rate = self.signals.get(&key).map_or(0.0, |s| s.new_flows_per_s);
                // Probes are taken every interval, also while down, so none is stale when
                // the backend comes back; only one that is up says anything about its load.
                let (latency, probes, warming) = match self.health.get_mut(&key) {
                    Some(h) => {
                        let probes = h.take_probes();
                        let warming = v
                            .health
                            .as_ref()
                            .is_some_and(|c| h.weight_factor(c, now) < 1.0);
                        match h.state {
                            State::Up => (h.latency_ewma, probes, warming),
                            State::Down => (None, Vec::new(), false),
                        }
                    }
                    None => (None, Vec::new(), false),
                };
                let report = a
                    .report_port
                    .and_then(|p| report::fetch(SocketAddr::new(b.address, p), REPORT_TIMEOUT));
                match report {
                    Some(r) => self.reports.insert(key, r),
                    None => self.reports.remove(&key),
                };
                self.models.entry(key).or_default().observe(
                    rate,
                    latency,
                    &model_probes(&probes, now),
                    warming,
                );
            }
            model::raise_quiet(
                self.models
                    .iter_mut()
                    .filter(|((vip, _), _)| *vip == id)
                    .map(|(_, m)| m),
            );
            keep.extend(self.reweigh(v));
        }
        self.models.retain(|k, _| keep.contains_key(k));
        self.held.retain(|k, _| keep.contains_key(k));
        self.reports.retain(|k, _| keep.contains_key(k));
        self.weight_changes.retain(|k, _| keep.contains_key(k));
        self.count_weight_changes(&keep);
        self.adaptive = keep;
    }

    /// The next adaptive weights of `v`'s backends from their models, within what is left of
    /// the interval's churn budget, and why.
    pub(super) fn reweigh(&mut self, v: &VipConfig) -> Vec<((VipId, IpAddr), (u32, String))> {
        let Some(a) = &v.adaptive else {
            return Vec::new();
        };
        let id = v.id();
        let spent = self.churn_spent.get(&id).copied().unwrap_or(0.0);
        let policy = Policy {
            min_weight: a.min_weight,
            max_weight: a.max_weight,
            hysteresis: f64::from(a.hysteresis_percent) / 100.0,
            churn_budget: (f64::from(a.churn_budget_percent) / 100.0 - spent).max(0.0),
        };
        let max_op = v
            .backends
            .iter()
            .map(|b| b.weight)
            .max()
            .unwrap_or(1)
            .max(1);
        let mut inputs = Vec::with_capacity(v.backends.len());
        for b in &v.backends {
            let key = (id, b.address);
            let rate = self.signals.get(&key).map_or(0.0, |s| s.new_flows_per_s);
            // Without queueing in the latency yet, a reported utilisation bounds capacity.
            let capacity = self
                .models
                .get(&key)
                .and_then(|m| m.capacity.estimate())
                .or_else(|| {
                    self.reports
                        .get(&key)
                        .filter(|r| r.utilisation > 0.05 && rate > 0.0)
                        .map(|r| rate / r.utilisation)
                });
            let current = self.adaptive.get(&key).map_or_else(
                || (u64::from(a.max_weight) * u64::from(b.weight) / u64::from(max_op)) as u32,
                |(w, _)| *w,
            );
            // A weight taken over is kept until the new model estimates a capacity, or for
            // a while: without an estimate the policy would go back to the operator's.
            let held = match self.held.get(&key) {
                Some(until) if capacity.is_none() && Instant::now() < *until => true,
                Some(_) => {
                    self.held.remove(&key);
                    false
                }
                None => false,
            };
            inputs.push(Input {
                operator: b.weight,
                capacity,
                current,
                held,
            });
        }
        let (weights, reasons) = weights::choose(&inputs, &policy);
        let current: Vec<u32> = inputs.iter().map(|i| i.current).collect();
        *self.churn_spent.entry(id).or_default() += weights::churn(&current, &weights);
        v.backends
            .iter()
            .zip(weights)
            .zip(reasons)
            .map(|((b, w), why)| {
                let key = (id, b.address);
                let evidence = self
                    .models
                    .get(&key)
                    .map(|m| m.capacity.evidence())
                    .unwrap_or_default();
                (key, (w, format!("{why}; {evidence}")))
            })
            .collect()
    }

    /// Between control ticks, on each probe of an adaptive backend: if its latest probes
    /// show its queue building or deep (see [`model::Capacity::observe_overload`]), its
    /// capacity estimate comes down and its VIP's weights move at once, within what is left
    /// of the interval's churn budget, once per backend and interval. An overload grows by
    /// the moment; waiting up to a whole interval for the tick would let its queue grow past
    /// the probe timeout, and the health checks take the backend out.
    pub(super) fn relieve(&mut self, vip: VipId, backend: IpAddr, now: Instant) {
        let key = (vip, backend);
        let adaptive = self.config.vip(vip).is_some_and(|v| v.adaptive.is_some());
        if !adaptive || self.relieved.contains(&key) || self.follows_leader() {
            return;
        }
        let Some(h) = self.health.get(&key).filter(|h| h.state == State::Up) else {
            return;
        };
        let probes = model_probes(&h.recent_probes(), now);
        // Just after a tick, the last interval's rate.
        let Some(rate) = self
            .flows_per_s_since_tick(key, now)
            .or_else(|| self.signals.get(&key).map(|s| s.new_flows_per_s))
        else {
            return;
        };
        let Some(model) = self.models.get_mut(&key) else {
            return;
        };
        if !model.capacity.observe_overload(rate, &probes) {
            return;
        }
        self.relieved.insert(key);
        let Some(v) = self.config.vip(vip).cloned() else {
            return;
        };
        let moved: BTreeMap<_, _> = self.reweigh(&v).into_iter().collect();
        self.count_weight_changes(&moved);
        self.adaptive.extend(moved);
        if self.effective(&self.config, now) != self.published {
            self.republish("an overloaded backend");
        }
    }

    /// Counts the backends whose adaptive weight `next` moves (for the metrics).
    fn count_weight_changes(&mut self, next: &BTreeMap<(VipId, IpAddr), (u32, String)>) {
        for (key, (weight, _)) in next {
            let changes = self.weight_changes.entry(*key).or_default();
            if self.adaptive.get(key).is_some_and(|(old, _)| old != weight) {
                *changes += 1;
            }
        }
    }

    /// New flows per second to a backend since the last control tick, from the data plane's
    /// counters (the tick's own figures stay as they are).
    pub(super) fn flows_per_s_since_tick(&self, key: (VipId, IpAddr), now: Instant) -> Option<f64> {
        let slot = self.slots.backends.get(&key)?.slot;
        let (prev, at) = self.last_counters.get(&slot)?;
        let dt = now.saturating_duration_since(*at).as_secs_f64();
        if dt < MIN_RATE_WINDOW.as_secs_f64() {
            return None;
        }
        let flows = self.bal.backend_counters(slot).ok()?.new_flows;
        Some(flows.saturating_sub(prev.new_flows) as f64 / dt)
    }

    /// Runs every control interval: publishes when an effective weight moved (slow start).
    /// Every control interval: measure, run the models, and publish when an effective
    /// weight moved (adaptive weights, slow start).
    pub fn on_tick(&mut self) {
        if let Err(e) = self.tick_clock() {
            eprintln!("moving the data plane's clock failed: {e}");
        }
        let now = Instant::now();
        self.sample_signals(now);
        if self.cluster.is_some() {
            // The leader adapts on the merged view; the others take its decisions.
            self.cluster_tick(now);
        } else {
            self.adapt(now);
        }
        if self.effective(&self.config, now) != self.published {
            self.republish("a weight change");
        }
    }
}

/// Probes as the load model takes them: seconds relative to `now`.
fn model_probes(probes: &[health::Probe], now: Instant) -> Vec<Probe> {
    probes
        .iter()
        .map(|p| Probe {
            at: -now.saturating_duration_since(p.sent).as_secs_f64(),
            latency: p.latency,
            timed_out: p.timed_out,
        })
        .collect()
}
