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
    health::{self, Health, ProbeResult, State},
    model::{self, BackendModel, Probe},
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
    /// How often the agent measures, runs the models and revisits weights.
    pub control_interval: Duration,
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
    /// Share of each adaptive VIP's table moved since the last control tick, out of its
    /// churn budget for the interval.
    churn_spent: BTreeMap<VipId, f64>,
    /// Backends whose overload was acted on between ticks this interval (once each).
    relieved: std::collections::BTreeSet<(VipId, IpAddr)>,
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
/// Shortest stretch of counters a rate between ticks is taken over.
const MIN_RATE_WINDOW: Duration = Duration::from_millis(300);

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
            churn_spent: BTreeMap::new(),
            relieved: Default::default(),
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
    fn adapt(&mut self, now: Instant) {
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
        self.reports.retain(|k, _| keep.contains_key(k));
        self.adaptive = keep;
    }

    /// The next adaptive weights of `v`'s backends from their models, within what is left of
    /// the interval's churn budget, and why.
    fn reweigh(&mut self, v: &crate::config::VipConfig) -> Vec<((VipId, IpAddr), (u32, String))> {
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
            inputs.push(Input {
                operator: b.weight,
                capacity,
                current,
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
    fn relieve(&mut self, vip: VipId, backend: IpAddr, now: Instant) {
        let key = (vip, backend);
        let adaptive = self.config.vip(vip).is_some_and(|v| v.adaptive.is_some());
        if !adaptive || self.relieved.contains(&key) {
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
        let moved = self.reweigh(&v);
        self.adaptive.extend(moved);
        if self.effective(&self.config, now) != self.published {
            self.republish("an overloaded backend");
        }
    }

    /// New flows per second to a backend since the last control tick, from the data plane's
    /// counters (the tick's own figures stay as they are).
    fn flows_per_s_since_tick(&self, key: (VipId, IpAddr), now: Instant) -> Option<f64> {
        let slot = self.slots.backends.get(&key)?.slot;
        let (prev, at) = self.last_counters.get(&slot)?;
        let dt = now.saturating_duration_since(*at).as_secs_f64();
        if dt < MIN_RATE_WINDOW.as_secs_f64() {
            return None;
        }
        let values = self.bal.backend_stats.get(&slot, 0).ok()?;
        let flows: u64 = values.iter().map(|c| c.new_flows).sum();
        Some(flows.saturating_sub(prev.new_flows) as f64 / dt)
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

    /// Runs every control interval: publishes when an effective weight moved (slow start).
    /// Every control interval: measure, run the models, and publish when an effective
    /// weight moved (adaptive weights, slow start).
    pub fn on_tick(&mut self) {
        let now = Instant::now();
        self.sample_signals(now);
        self.adapt(now);
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
                                    "capacity_evidence": m.map(|m| m.capacity.evidence().to_string()),
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
            "control_interval_ms": self.opts.control_interval.as_millis(),
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
