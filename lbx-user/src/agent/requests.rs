//! Answers to the control API's requests: changes go through the configuration and a new
//! generation; queries read the agent's state and the data plane's maps.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use lbx_common::{FlowKey, Reason, flows::FlowSlot, hash::flow_hash};
use serde_json::{Value, json};

use super::{Agent, AgentError, api::Request, changes::Change};
use crate::{
    addr,
    config::{ConfigError, MacAddr, Protocol, VipId},
    dataplane::{memory::Memory, plan},
};

impl Agent {
    pub fn handle(&mut self, req: Request) -> Result<Value, AgentError> {
        match req {
            Request::VipList => Ok(self.vip_list()),
            Request::BackendList { vip } => self.backend_list(vip),
            Request::Status => Ok(self.status()),
            Request::Stats => self.stats(),
            Request::Flow { protocol, src, dst } => self.flow(protocol, src, dst),
            Request::FlowClear { vip } => self.flow_clear(vip),
            Request::Plan { change } => self.dry_run(*change),
            Request::History { last, full } => self.history_list(last, full),
            Request::Rollback { revision } => {
                let Change { edit, why } = self.change(req)?;
                let mut answer = self.edit(why.as_deref(), edit)?;
                answer["rolled_back_to"] = revision.into();
                // A cluster's answer names its revision already.
                if self.cluster_revision().is_none() {
                    answer["revision"] = self.history.last().map(|e| e.revision).into();
                }
                Ok(answer)
            }
            change => {
                let Change { edit, why } = self.change(change)?;
                self.edit(why.as_deref(), edit)
            }
        }
    }

    pub(super) fn mac_of(&self, address: IpAddr, configured: Option<MacAddr>) -> Option<MacAddr> {
        configured.or_else(|| self.macs.get(&address).copied())
    }

    pub(super) fn vip_list(&self) -> Value {
        Value::Array(
            self.config
                .vips
                .iter()
                .map(|v| {
                    json!({
                        "vip": v.id().to_string(),
                        "address": v.address,
                        "port": v.port,
                        "protocol": v.protocol.to_string(),
                        "backends": v.backends.len(),
                    })
                })
                .collect(),
        )
    }

    /// Empties the connection-table slots of flows on the VIP's backends (every slot
    /// without a VIP). A packet that meets a slot as it is emptied misses, as it would
    /// after a replacement: its flow takes the ring again (and the second chance).
    pub(super) fn flow_clear(&mut self, vip: Option<VipId>) -> Result<Value, AgentError> {
        if let Some(id) = vip
            && self.config.vip(id).is_none()
        {
            return Err(ConfigError::UnknownVip { vip: id }.into());
        }
        let of_vip: Option<BTreeSet<u32>> = vip.map(|id| {
            self.slots
                .backends
                .iter()
                .filter(|((v, _), _)| *v == id)
                .map(|(_, s)| s.slot)
                .collect()
        });
        let mut cleared = 0u64;
        for i in 0..self.bal.flows.len() {
            let Some(slot) = self.bal.flows.get(i) else {
                continue;
            };
            if slot.check == 0
                || of_vip
                    .as_ref()
                    .is_some_and(|s| !s.contains(&slot.entry.backend))
            {
                continue;
            }
            self.bal.flows.set(i, FlowSlot::default());
            cleared += 1;
        }
        let which = vip.map_or_else(|| "all flows".to_owned(), |v| format!("the flows of {v}"));
        crate::say!("connection table: cleared {which}, {cleared} slots");
        Ok(json!({ "cleared": cleared }))
    }

    pub(super) fn backend_list(&self, vip: Option<VipId>) -> Result<Value, AgentError> {
        if let Some(id) = vip
            && self.config.vip(id).is_none()
        {
            return Err(ConfigError::UnknownVip { vip: id }.into());
        }
        let active = self.active_flows();
        let mut out = Vec::new();
        for v in self
            .config
            .vips
            .iter()
            .filter(|v| vip.is_none_or(|id| v.id() == id))
        {
            for b in &v.backends {
                out.push(json!({
                    "vip": v.id().to_string(),
                    "address": b.address,
                    "weight": b.weight,
                    "mac": self.mac_of(b.address, b.mac).map(|m| m.to_string()),
                    "drain": b.drain,
                    "active_flows": self.active_of(&active, v.id(), b.address),
                }));
            }
        }
        Ok(Value::Array(out))
    }

    /// The active flows of one backend in a count of the connection table.
    pub(super) fn active_of(&self, active: &[u64], vip: VipId, address: IpAddr) -> u64 {
        self.slots
            .backends
            .get(&(vip, address))
            .and_then(|s| active.get(s.slot as usize))
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn status(&self) -> Value {
        let active = self.active_flows();
        let vips: Vec<Value> = self
            .config
            .vips
            .iter()
            .map(|v| {
                let id = v.id();
                let ring = self.plan.vips.iter().find(|p| p.id == id).map(|p| &p.ring[..]).unwrap_or(&[]);
                let backends: Vec<Value> = v
                    .backends
                    .iter()
                    .map(|b| {
                        let slot = self.slots.backends[&(id, b.address)].slot;
                        let share = ring.iter().filter(|s| **s == slot).count();
                        let eff = self.published.get(&(id, b.address));
                        let health = self.health.get(&(id, b.address)).map(|h| {
                            json!({
                                "state": h.state,
                                "reason": h.reason,
                                "since_seconds": h.since.elapsed().as_secs(),
                                "latency_ms": h.latency_ewma.map(|l| l * 1e3),
                                "latency_p90_ms": h.latency_p90().map(|l| l * 1e3),
                            })
                        });
                        json!({
                            "address": b.address,
                            "weight": b.weight,
                            "state": if b.drain {
                                "draining"
                            } else if eff.is_some_and(|e| e.down) {
                                "down"
                            } else {
                                "active"
                            },
                            "mac": self.mac_of(b.address, b.mac).map(|m| m.to_string()),
                            "mac_source": if b.mac.is_some() { "configured" } else { "neighbour table" },
                            "table_slots": share,
                            "active_flows": self.active_of(&active, id, b.address),
                            "effective_weight": plan::effective_weight(eff, b.weight),
                            "signals": self.signals.get(&(id, b.address)),
                            "report": self.reports.get(&(id, b.address)),
                            "adaptive": self.adaptive.get(&(id, b.address)).map(|(w, why)| {
                                let m = self.models.get(&(id, b.address));
                                json!({
                                    "weight": w,
                                    "reason": why,
                                    "capacity_per_s": m.and_then(|m| m.capacity.estimate()),
                                    "forecast_per_s": m.and_then(|m| m.demand.forecast(1.0)),
                                    "predicted_utilisation": m.and_then(|m| m.predicted_utilisation()),
                                    "base_latency_ms": m.and_then(|m| m.capacity.base_latency()).map(|l| l * 1e3),
                                    "capacity_evidence": m.map(|m| m.capacity.evidence().to_string()),
                                })
                            }),
                            "health": health,
                        })
                    })
                    .collect();
                json!({
                    "vip": id.to_string(),
                    "table_size": v.ring_size(self.config.table_size),
                    "health_panic": v.health.is_some() && self.panicking(v),
                    "backends": backends,
                })
            })
            .collect();
        json!({
            "iface": self.opts.iface,
            "mode": self.bal.mode,
            "generation": self.publisher.generation(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "pid": std::process::id(),
            "prog_id": self.bal.program_id(),
            "control_interval_ms": self.opts.control_interval.as_millis(),
            "config": self.opts.config_path,
            "socket": self.opts.socket,
            "pins": self.opts.pin_dir,
            "seed": self.config.seed,
            "table_size": self.config.table_size,
            "mtu": self.mtu,
            "flow_idle_s": {
                "tcp": self.plan.settings.tcp_idle_s,
                "udp": self.plan.settings.udp_idle_s,
            },
            "second_chance_s": self.plan.second_chance_s,
            "icmp_echo": self.config.icmp_echo,
            "memory": Memory::of(&self.bal, self.plan.vips.iter().map(|v| v.ring.len())),
            "cluster": self.cluster_status(),
            "vips": vips,
        })
    }

    pub(super) fn stats(&self) -> Result<Value, AgentError> {
        let mut vips = Vec::new();
        for v in &self.config.vips {
            let id = v.id();
            let c = self.bal.vip_counters(self.slots.vips[&id])?;
            let mut backends = Vec::new();
            for b in &v.backends {
                let slot = self.slots.backends[&(id, b.address)].slot;
                let bc = self.bal.backend_counters(slot)?;
                backends.push(json!({
                    "address": b.address,
                    "packets": bc.packets,
                    "bytes": bc.bytes,
                    "new_flows": bc.new_flows,
                }));
            }
            vips.push(json!({
                "vip": id.to_string(),
                "packets": c.packets,
                "bytes": c.bytes,
                "new_flows": c.new_flows,
                "backends": backends,
            }));
        }
        let mut reasons = serde_json::Map::new();
        for r in Reason::ALL {
            let n = self.bal.reason_count(*r)?;
            reasons.insert(r.label().to_string(), n.into());
        }
        Ok(json!({
            "generation": self.publisher.generation(),
            "revision": self.cluster_revision(),
            "vips": vips,
            "reasons": reasons,
        }))
    }

    /// Which backend a flow goes to, and why.
    pub(super) fn flow(
        &self,
        protocol: Protocol,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Result<Value, AgentError> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(AgentError::Invalid(format!(
                "source {src} and destination {dst} are of different address families"
            )));
        }
        let pv = self
            .plan
            .vips
            .iter()
            .find(|v| {
                v.id.address == dst.ip() && v.id.protocol == protocol && v.id.port == dst.port()
            })
            .or_else(|| {
                self.plan.vips.iter().find(|v| {
                    v.id.address == dst.ip() && v.id.protocol == protocol && v.id.port == 0
                })
            })
            .ok_or_else(|| {
                AgentError::NotFound(format!(
                    "no VIP matches {dst}/{protocol}: lbx passes this flow to the kernel"
                ))
            })?;
        let key = FlowKey {
            src: addr::to_words(src.ip()),
            dst: addr::to_words(dst.ip()),
            sport_be: src.port().to_be(),
            dport_be: dst.port().to_be(),
            proto: protocol.number(),
            family: addr::family(dst.ip()),
            pad: 0,
        };
        let by_slot = |slot: u32| {
            self.slots
                .backends
                .iter()
                .find(|((vip, _), s)| *vip == pv.id && s.slot == slot)
                .map(|((_, addr), s)| (*addr, s.uid))
        };
        if let Some(entry) = self.bal.flow(&key, self.plan.settings.seed)
            && let Some((addr, uid)) = by_slot(entry.backend)
            && uid == entry.uid
        {
            return Ok(json!({
                "vip": pv.id.to_string(),
                "backend": addr,
                "source": "connection table",
            }));
        }
        if pv.ring.is_empty() {
            return Ok(json!({
                "vip": pv.id.to_string(),
                "backend": Value::Null,
                "source": "none: no backend takes new flows (all drained), packets are dropped",
            }));
        }
        let hash = flow_hash(&key, self.plan.settings.seed);
        let index = hash % pv.ring.len() as u32;
        let slot = pv.ring[index as usize];
        let (addr, _) = by_slot(slot)
            .ok_or_else(|| AgentError::Other("ring names an unknown backend".into()))?;
        Ok(json!({
            "vip": pv.id.to_string(),
            "backend": addr,
            "source": "maglev",
            "hash": format!("{hash:#010x}"),
            "table_index": index,
            "table_size": pv.ring.len(),
        }))
    }
}
