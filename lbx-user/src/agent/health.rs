//! The agent's side of the health checks: which backends to probe, and what a probe's
//! result changes.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::Agent;
use crate::{
    balance::{
        health::{Health, State},
        probe::{ProbeResult, Target},
    },
    config::VipId,
};

impl Agent {
    /// The backends to probe under the current configuration.
    pub fn health_targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for v in &self.config.vips {
            let Some(check) = &v.health else { continue };
            let port = check.port.unwrap_or(v.port);
            for b in &v.backends {
                out.push(Target {
                    vip: v.id(),
                    backend: b.address,
                    addr: SocketAddr::new(b.address, port),
                    check: check.clone(),
                });
            }
        }
        out
    }

    /// Takes a probe result; a change of state is logged and published at once.
    pub fn on_probe(&mut self, vip: VipId, backend: IpAddr, result: &ProbeResult) {
        let Some(check) = self.config.vip(vip).and_then(|v| v.health.clone()) else {
            return;
        };
        if self
            .config
            .vip(vip)
            .and_then(|v| v.backend(backend))
            .is_none()
        {
            return;
        }
        self.live.probe(
            &vip.to_string(),
            &backend.to_string(),
            result.ok,
            result.timed_out,
            result.latency.as_secs_f64(),
        );
        let now = Instant::now();
        let h = self
            .health
            .entry((vip, backend))
            .or_insert_with(|| Health::new(now));
        if let Some(t) = h.observe(result, &check, now) {
            let key = (vip, backend);
            if t.to == State::Up
                && let Some(m) = self.models.get_mut(&key)
            {
                m.capacity.relearn_base();
            }
            // Out for probes that got no answer in time, while getting traffic: overloaded.
            if t.to == State::Down && result.timed_out {
                let rate = self
                    .flows_per_s_since_tick(key, now)
                    .or_else(|| self.signals.get(&key).map(|s| s.new_flows_per_s));
                if let (Some(rate), Some(m)) = (rate, self.models.get_mut(&key)) {
                    m.capacity.observe_timeout(
                        rate,
                        Duration::from_millis(check.timeout_ms).as_secs_f64(),
                    );
                }
            }
            eprintln!(
                "backend {backend} of VIP {vip} is {}: {}",
                if t.to == State::Up { "up" } else { "down" },
                t.reason
            );
            if let Some(v) = self.config.vip(vip)
                && self.panicking(v)
            {
                eprintln!(
                    "VIP {vip}: more than half of its backends fail their checks; \
                     ignoring health checks until enough pass again"
                );
            }
            self.republish("health change");
        } else {
            self.relieve(vip, backend, now);
        }
    }
}
