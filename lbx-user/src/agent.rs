//! The agent: owns the configuration and the data plane, and applies every change as a
//! whole new generation, validated before anything is touched.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::MapError;
use lbx_common::{Counters, FlowKey, Reason, hash::flow_hash};
use serde_json::{Value, json};

use crate::{
    api::Request,
    config::{Config, ConfigError, MacAddr, Protocol, VipId},
    dataplane::{Balancer, DataPlaneError, Mode},
    generation::{PublishError, Publisher},
    health::{Health, ProbeResult, State},
    model::BackendModel,
    net::{self, ResolveError},
    plan::{self, Effective, Overrides, Plan},
    report::{self, Report},
    slots::Slots,
    sys,
    weights::{self, Input, Policy},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("reading counters: {0}")]
    Counters(#[from] MapError),
    #[error("{0}")]
    Other(String),
}

pub struct Options {
    pub iface: String,
    pub config_path: PathBuf,
    pub mode: Mode,
    pub socket: PathBuf,
    pub pin_dir: Option<PathBuf>,
    pub flows: u32,
}

pub struct Agent {
    opts: Options,
    config: Config,
    slots: Slots,
    macs: BTreeMap<IpAddr, MacAddr>,
    mtu: u32,
    bal: Balancer,
    publisher: Publisher,
    plan: Plan,
    /// Health of the backends of VIPs that have a health check.
    health: BTreeMap<(VipId, IpAddr), Health>,
    /// The effective weights in the published generation.
    published: Overrides,
    /// Load signals of each backend over the last control interval.
    signals: BTreeMap<(VipId, IpAddr), Signals>,
    /// Counters at the last control tick, by backend slot.
    last_counters: BTreeMap<u32, (Counters, Instant)>,
    /// Forecast and capacity model of each backend of an adaptive VIP.
    models: BTreeMap<(VipId, IpAddr), BackendModel>,
    /// Adaptive weight of each backend of an adaptive VIP, and why.
    adaptive: BTreeMap<(VipId, IpAddr), (u32, String)>,
    /// Latest load report of each backend that serves one.
    reports: BTreeMap<(VipId, IpAddr), Report>,
    started: Instant,
}

/// Per-second rates of one backend over the last control interval.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Signals {
    pub new_flows_per_s: f64,
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
}

/// What the agent thread handles, in arrival order.
pub enum Event {
    Api(crate::api::Job),
    Probe(VipId, IpAddr, ProbeResult),
    Tick,
}

/// A backend to probe, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub vip: VipId,
    pub backend: IpAddr,
    pub addr: SocketAddr,
    pub check: crate::config::HealthCheck,
}

const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// A load report comes from the backend's own agent on the same link: it answers fast or
/// not at all, and the control loop must not wait on it.
const REPORT_TIMEOUT: Duration = Duration::from_millis(50);

impl Agent {
    /// Loads the configuration, publishes it as generation 1 and attaches to the interface.
    pub fn start(opts: Options) -> Result<Self, AgentError> {
        crate::dataplane::preflight("lbx run", &opts.iface)?;
        let config = match Config::load(&opts.config_path) {
            Ok(c) => c,
            Err(ConfigError::NotFound { .. }) => {
                eprintln!(
                    "no configuration at {}: starting with no VIPs; changes will be saved there",
                    opts.config_path.display()
                );
                Config::default()
            }
            // Syntax and I/O errors name the file already; validation errors do not.
            Err(e @ (ConfigError::Parse { .. } | ConfigError::Io { .. })) => return Err(e.into()),
            Err(e) => {
                return Err(AgentError::Other(format!(
                    "{}: {e}; nothing was loaded",
                    opts.config_path.display()
                )));
            }
        };
        let mtu = match config.mtu {
            Some(m) => m,
            None => sys::if_mtu(&opts.iface).map_err(DataPlaneError::Sys)?,
        };
        let macs = resolve_macs(&config, &BTreeMap::new(), &opts.iface)?;
        let bal = Balancer::load(config.table_size, opts.flows, opts.pin_dir.clone())?;
        let publisher = Publisher::new().map_err(PublishError::Barrier)?;
        let mut agent = Agent {
            opts,
            config: Config::default(),
            slots: Slots::default(),
            macs: BTreeMap::new(),
            mtu,
            bal,
            publisher,
            plan: Plan {
                settings: Default::default(),
                vips: Vec::new(),
                backends: Vec::new(),
            },
            health: BTreeMap::new(),
            published: Overrides::new(),
            signals: BTreeMap::new(),
            last_counters: BTreeMap::new(),
            models: BTreeMap::new(),
            adaptive: BTreeMap::new(),
            reports: BTreeMap::new(),
            started: Instant::now(),
        };
        // The first generation is in place before the program sees a packet.
        agent.publish(config, macs)?;
        let iface = agent.opts.iface.clone();
        agent.bal.attach(&iface, agent.opts.mode)?;
        Ok(agent)
    }

    pub fn mode(&self) -> Mode {
        self.bal.mode.expect("attached in start()")
    }

    pub fn generation(&self) -> u64 {
        self.publisher.generation()
    }

    /// Effective weight and health of every backend of a VIP with a health check.
    fn effective(&self, config: &Config, now: Instant) -> Overrides {
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
                        h.state == State::Down,
                    ),
                    None => (plan::FULL, false),
                };
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
    fn panicking(&self, v: &crate::config::VipConfig) -> bool {
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
    fn sample_signals(&mut self, now: Instant) {
        let mut signals = BTreeMap::new();
        let mut counters = BTreeMap::new();
        for (key, slot) in &self.slots.backends {
            let Ok(values) = self.bal.backend_stats.get(&slot.slot, 0) else {
                continue;
            };
            let c = values.iter().fold(Counters::default(), |a, c| Counters {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
                new_flows: a.new_flows + c.new_flows,
            });
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
    fn adapt(&mut self) {
        let mut keep = BTreeMap::new();
        let mut reports = std::mem::take(&mut self.reports);
        for v in &self.config.vips {
            let Some(a) = &v.adaptive else { continue };
            let id = v.id();
            let policy = Policy {
                min_weight: a.min_weight,
                max_weight: a.max_weight,
                hysteresis: f64::from(a.hysteresis_percent) / 100.0,
                churn_budget: f64::from(a.churn_budget_percent) / 100.0,
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
                let health = self.health.get(&key);
                let latency = health
                    .filter(|h| h.state == State::Up)
                    .and_then(|h| h.latency_ewma);
                let report = a
                    .report_port
                    .and_then(|p| report::fetch(SocketAddr::new(b.address, p), REPORT_TIMEOUT));
                match report {
                    Some(r) => reports.insert(key, r),
                    None => reports.remove(&key),
                };
                let model = self.models.entry(key).or_default();
                model.observe(rate, latency);
                // Without queueing in the latency yet, a reported utilisation bounds capacity.
                let capacity = model.capacity.estimate().or_else(|| {
                    report
                        .filter(|r| r.utilisation > 0.05 && rate > 0.0)
                        .map(|r| rate / r.utilisation)
                });
                let current = self.adaptive.get(&key).map_or_else(
                    || (u64::from(a.max_weight) * u64::from(b.weight) / u64::from(max_op)) as u32,
                    |(w, _)| *w,
                );
                inputs.push(Input {
                    operator: b.weight,
                    capacity,
                    current,
                });
            }
            let (weights, reasons) = weights::choose(&inputs, &policy);
            for ((b, w), why) in v.backends.iter().zip(weights).zip(reasons) {
                keep.insert((id, b.address), (w, why));
            }
        }
        self.models.retain(|k, _| keep.contains_key(k));
        reports.retain(|k, _| keep.contains_key(k));
        self.reports = reports;
        self.adaptive = keep;
    }

    fn publish(
        &mut self,
        config: Config,
        macs: BTreeMap<IpAddr, MacAddr>,
    ) -> Result<u64, AgentError> {
        let (slots, fresh) = self.slots.assign(&config);
        // Health is kept only for backends that are still checked.
        self.health.retain(|(vip, addr), _| {
            config
                .vip(*vip)
                .is_some_and(|v| v.health.is_some() && v.backend(*addr).is_some())
        });
        let overrides = self.effective(&config, Instant::now());
        let plan = plan::build(&config, &slots, &macs, self.mtu, &overrides);
        self.publisher
            .reset_counters(&mut self.bal, &fresh.vips, &fresh.backends)?;
        let generation = self.publisher.publish(&mut self.bal, &plan)?;
        self.config = config;
        self.slots = slots;
        self.macs = macs;
        self.plan = plan;
        self.published = overrides;
        Ok(generation)
    }

    /// Validates `new` whole, publishes it, and saves it. On any error nothing changes.
    fn apply(&mut self, new: Config) -> Result<u64, AgentError> {
        new.validate()?;
        if new.table_size != self.config.table_size {
            return Err(AgentError::Other(format!(
                "table_size changes from {} to {} need a restart of the agent",
                self.config.table_size, new.table_size
            )));
        }
        let macs = resolve_macs(&new, &self.macs, &self.opts.iface)?;
        let old = self.config.clone();
        new.save(&self.opts.config_path)?;
        match self.publish(new, macs) {
            Ok(g) => Ok(g),
            Err(e) => {
                let _ = old.save(&self.opts.config_path);
                Err(e)
            }
        }
    }

    fn edit(
        &mut self,
        f: impl FnOnce(&mut Config) -> Result<(), ConfigError>,
    ) -> Result<Value, AgentError> {
        let mut new = self.config.clone();
        f(&mut new)?;
        let generation = self.apply(new)?;
        Ok(json!({ "generation": generation }))
    }

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
        let now = Instant::now();
        let h = self
            .health
            .entry((vip, backend))
            .or_insert_with(|| Health::new(now));
        if let Some(t) = h.observe(result, &check, now) {
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
        }
    }

    /// Runs every control interval: publishes when an effective weight moved (slow start).
    /// Every control interval: measure, run the models, and publish when an effective
    /// weight moved (adaptive weights, slow start).
    pub fn on_tick(&mut self) {
        let now = Instant::now();
        self.sample_signals(now);
        self.adapt();
        if self.effective(&self.config, now) != self.published {
            self.republish("a weight change");
        }
    }

    fn republish(&mut self, why: &str) {
        let (config, macs) = (self.config.clone(), self.macs.clone());
        if let Err(e) = self.publish(config, macs) {
            eprintln!("publishing after {why} failed: {e}");
        }
    }

    pub fn handle(&mut self, req: Request) -> Result<Value, AgentError> {
        match req {
            Request::VipAdd { vip } => self.edit(|c| c.add_vip(vip)),
            Request::VipDel { vip } => self.edit(|c| c.del_vip(vip).map(drop)),
            Request::BackendAdd { vip, backend } => self.edit(|c| c.add_backend(vip, backend)),
            Request::BackendDel { vip, address } => {
                self.edit(|c| c.del_backend(vip, address).map(drop))
            }
            Request::BackendWeight {
                vip,
                address,
                weight,
            } => self.edit(|c| c.set_weight(vip, address, weight)),
            Request::BackendDrain {
                vip,
                address,
                drain,
            } => self.edit(|c| c.set_drain(vip, address, drain)),
            Request::VipHealth { vip, health } => self.edit(|c| c.set_health(vip, health)),
            Request::VipAdaptive { vip, adaptive } => self.edit(|c| c.set_adaptive(vip, adaptive)),
            Request::VipList => Ok(self.vip_list()),
            Request::BackendList { vip } => self.backend_list(vip),
            Request::Status => Ok(self.status()),
            Request::Stats => self.stats(),
            Request::Flow { protocol, src, dst } => self.flow(protocol, src, dst),
        }
    }

    fn mac_of(&self, address: IpAddr, configured: Option<MacAddr>) -> Option<MacAddr> {
        configured.or_else(|| self.macs.get(&address).copied())
    }

    fn vip_list(&self) -> Value {
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

    fn backend_list(&self, vip: Option<VipId>) -> Result<Value, AgentError> {
        if let Some(id) = vip
            && self.config.vip(id).is_none()
        {
            return Err(ConfigError::UnknownVip { vip: id }.into());
        }
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
                }));
            }
        }
        Ok(Value::Array(out))
    }

    fn status(&self) -> Value {
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
                            "effective_weight": eff.map_or(f64::from(b.weight), |e| {
                                f64::from(e.weight.unwrap_or(b.weight)) * f64::from(e.permille)
                                    / f64::from(plan::FULL)
                            }),
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
                                })
                            }),
                            "health": health,
                        })
                    })
                    .collect();
                json!({
                    "vip": id.to_string(),
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
            "config": self.opts.config_path,
            "socket": self.opts.socket,
            "pins": self.opts.pin_dir,
            "seed": self.config.seed,
            "table_size": self.config.table_size,
            "mtu": self.mtu,
            "vips": vips,
        })
    }

    fn stats(&self) -> Result<Value, AgentError> {
        let sum = |v: aya::maps::PerCpuValues<Counters>| {
            v.iter().fold(Counters::default(), |a, c| Counters {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
                new_flows: a.new_flows + c.new_flows,
            })
        };
        let mut vips = Vec::new();
        for v in &self.config.vips {
            let id = v.id();
            let c = sum(self.bal.vip_stats.get(&self.slots.vips[&id], 0)?);
            let mut backends = Vec::new();
            for b in &v.backends {
                let slot = self.slots.backends[&(id, b.address)].slot;
                let bc = sum(self.bal.backend_stats.get(&slot, 0)?);
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
            let n: u64 = self.bal.reasons.get(&(*r as u32), 0)?.iter().sum();
            reasons.insert(r.label().to_string(), n.into());
        }
        Ok(json!({ "generation": self.publisher.generation(), "vips": vips, "reasons": reasons }))
    }

    /// Which backend a flow goes to, and why.
    fn flow(
        &self,
        protocol: Protocol,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Result<Value, AgentError> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(AgentError::Other(format!(
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
                AgentError::Other(format!(
                    "no VIP matches {dst}/{protocol}: lbx passes this flow to the kernel"
                ))
            })?;
        let key = FlowKey {
            src: net::to_words(src.ip()),
            dst: net::to_words(dst.ip()),
            sport_be: src.port().to_be(),
            dport_be: dst.port().to_be(),
            proto: protocol.number(),
            family: net::family(dst.ip()),
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
        let index = hash % self.plan.settings.ring_size;
        let slot = pv.ring[index as usize];
        let (addr, _) = by_slot(slot)
            .ok_or_else(|| AgentError::Other("ring names an unknown backend".into()))?;
        Ok(json!({
            "vip": pv.id.to_string(),
            "backend": addr,
            "source": "maglev",
            "hash": format!("{hash:#010x}"),
            "table_index": index,
            "table_size": self.plan.settings.ring_size,
        }))
    }
}

/// Next-hop MACs for every backend of `config` without a configured one, reusing `known`.
fn resolve_macs(
    config: &Config,
    known: &BTreeMap<IpAddr, MacAddr>,
    iface: &str,
) -> Result<BTreeMap<IpAddr, MacAddr>, AgentError> {
    let mut out = BTreeMap::new();
    for b in config
        .vips
        .iter()
        .flat_map(|v| &v.backends)
        .filter(|b| b.mac.is_none())
    {
        if out.contains_key(&b.address) {
            continue;
        }
        let mac = match known.get(&b.address) {
            Some(m) => *m,
            None => net::resolve_next_hop(b.address, iface, RESOLVE_TIMEOUT)?,
        };
        out.insert(b.address, mac);
    }
    Ok(out)
}
