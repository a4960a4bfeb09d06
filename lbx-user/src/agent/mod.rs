//! The agent: owns the configuration and the data plane, and applies every change as a
//! whole new generation, validated before anything is touched.

mod adapt;
pub mod api;
mod changes;
mod cluster;
mod dry_run;
pub mod failure;
mod health;
mod metrics;
mod requests;
pub mod run;
pub mod socket;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::MapError;
use lbx_common::Counters;
use serde_json::{Value, json};

use crate::{
    balance::{health::Health, model::BackendModel, probe::Probed, report::Report},
    config::{Config, ConfigError, Local, MacAddr, VipId},
    dataplane::{
        Balancer, DataPlaneError, FlowIdle, Mode, Object, Pins, activity,
        generation::{PublishError, Publisher},
        neighbour::{self, ResolveError},
        plan::{self, Overrides, Plan},
        slots::Slots,
        sys,
    },
    history::{HistoryError, LocalHistory},
    metrics::{Live, ScrapeRequest},
    restart::{self, Inherited},
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
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("reading counters: {0}")]
    Counters(#[from] MapError),
    /// A request about something that is not there (a flow that matches no VIP).
    #[error("{0}")]
    NotFound(String),
    /// A request the agent refuses as it stands (a change that needs a restart).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0}")]
    Other(String),
}

pub struct Options {
    pub iface: String,
    pub config_path: PathBuf,
    pub mode: Mode,
    pub socket: PathBuf,
    pub pin_dir: Option<PathBuf>,
    /// The XDP programs: the built-in ones, or another build's (`lbx run --xdp-object`).
    pub object: Object,
    /// Pinned maps of other sizes are migrated, not refused (`lbx run --migrate`).
    pub migrate: bool,
    pub flows: u32,
    /// Ring entries per generation (`lbx run --ring-entries`).
    pub ring_entries: u32,
    pub flow_idle: FlowIdle,
    /// How often the agent measures, runs the models and revisits weights.
    pub control_interval: Duration,
    /// Where to serve Prometheus metrics; none: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// The cluster to join; none: a single node serving its own file.
    pub cluster: Option<crate::cluster::ClusterOptions>,
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
    /// Ring slots per backend in the published generation, for the metrics.
    ring_shares: metrics::RingShares,
    /// Adaptive weights taken over from the generation before this agent, held until
    /// the backend's model estimates its capacity or the time given here passes.
    held: BTreeMap<(VipId, IpAddr), Instant>,
    /// Times each adaptive backend's weight moved.
    weight_changes: BTreeMap<(VipId, IpAddr), u64>,
    /// The metrics counted as things happen, shared with the metrics endpoint.
    live: Arc<Live>,
    started: Instant,
    /// The configuration changes applied on this node.
    history: LocalHistory,
    /// This node's place in a cluster; none: a single node serving its own file.
    cluster: Option<cluster::Membership>,
    /// The local file's own part (its `[cluster]` table), written back with each save.
    local: Local,
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
    Api(api::Job),
    Probe(Probed),
    Scrape(ScrapeRequest),
    Tick,
    Cluster(crate::cluster::Update),
}

impl From<crate::cluster::Update> for Event {
    fn from(u: crate::cluster::Update) -> Self {
        Event::Cluster(u)
    }
}

impl From<ScrapeRequest> for Event {
    fn from(s: ScrapeRequest) -> Self {
        Event::Scrape(s)
    }
}

impl From<Probed> for Event {
    fn from(p: Probed) -> Self {
        Event::Probe(p)
    }
}

const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a weight taken over from the generation before this agent is held while its
/// backend's model has no capacity estimate yet: long enough for the model to form one
/// under load; without load, the operator's weights are as good.
const HOLD_INHERITED: Duration = Duration::from_secs(60);
const INHERITED_WEIGHT: &str = "taken over from the generation before this agent";

impl Agent {
    /// Loads the configuration, publishes it as generation 1 and attaches to the interface.
    pub fn start(opts: Options) -> Result<Self, AgentError> {
        crate::dataplane::preflight("lbx run", &opts.iface, opts.pin_dir.as_deref())?;
        let (config, local) = match Config::load(&opts.config_path) {
            Ok(loaded) => loaded,
            Err(ConfigError::NotFound { .. }) if opts.cluster.is_some() => Default::default(),
            Err(ConfigError::NotFound { .. }) => {
                eprintln!(
                    "no configuration at {}: starting with no VIPs; changes will be saved there",
                    opts.config_path.display()
                );
                Default::default()
            }
            // Syntax and I/O errors name the file already; validation errors do not.
            Err(e @ (ConfigError::Parse { .. } | ConfigError::Io { .. })) => return Err(e.into()),
            Err(e) => {
                return Err(AgentError::Invalid(format!(
                    "{}: {e}; nothing was loaded",
                    opts.config_path.display()
                )));
            }
        };
        let (config, membership) = match opts.cluster.clone() {
            Some(c) => {
                let (config, m) = cluster::join(c, config, &opts.config_path)?;
                (config, Some(m))
            }
            None => (config, None),
        };
        let mtu = match config.mtu {
            Some(m) => m,
            None => sys::if_mtu(&opts.iface).map_err(DataPlaneError::Sys)?,
        };
        let macs = resolve_macs(&config, &BTreeMap::new(), &opts.iface)?;
        let pins = opts.pin_dir.clone().map(|dir| Pins {
            dir,
            migrate: opts.migrate,
        });
        let bal = Balancer::load_from(&opts.object, opts.ring_entries, opts.flows, pins)?;
        bal.check_mode(&opts.iface, opts.mode)?;
        // Maps an agent before this one published into: its generation, numbers,
        // counters and health decisions go on, so established flows keep their backends.
        let Inherited {
            publisher,
            slots,
            health,
            weights,
        } = restart::inherit(&bal, &config)?;
        let (history, damaged) = LocalHistory::open(LocalHistory::path_for(&opts.config_path));
        if let Some(warning) = damaged {
            eprintln!("{warning}");
        }
        let started = Instant::now();
        let mut agent = Agent {
            opts,
            config: Config::default(),
            slots,
            macs: BTreeMap::new(),
            mtu,
            bal,
            publisher,
            plan: Plan {
                settings: Default::default(),
                vips: Vec::new(),
                echo: Vec::new(),
                backends: Vec::new(),
                second_chance_s: 0,
            },
            health,
            published: Overrides::new(),
            signals: BTreeMap::new(),
            last_counters: BTreeMap::new(),
            models: BTreeMap::new(),
            adaptive: weights
                .iter()
                .map(|(key, w)| (*key, (*w, INHERITED_WEIGHT.to_owned())))
                .collect(),
            held: weights
                .into_keys()
                .map(|key| (key, started + HOLD_INHERITED))
                .collect(),
            reports: BTreeMap::new(),
            churn_spent: BTreeMap::new(),
            relieved: Default::default(),
            ring_shares: Default::default(),
            weight_changes: BTreeMap::new(),
            live: Arc::new(Live::default()),
            started,
            history,
            cluster: membership,
            local,
        };
        agent.adopt_decided_weights();
        // The clock runs and the first generation is in place before the program sees a
        // packet.
        agent.tick_clock()?;
        agent.publish(config, macs)?;
        let iface = agent.opts.iface.clone();
        agent.bal.attach(&iface, agent.opts.mode)?;
        agent.record_start();
        Ok(agent)
    }

    /// Whether this agent took over the data plane of one before it.
    pub fn adopted(&self) -> bool {
        self.bal.inherited
    }

    pub fn mode(&self) -> Mode {
        self.bal.mode.expect("attached in start()")
    }

    /// The metrics the agent counts as things happen, for the metrics endpoint.
    pub fn live_metrics(&self) -> Arc<Live> {
        self.live.clone()
    }

    pub fn generation(&self) -> u64 {
        self.publisher.generation()
    }

    fn publish(
        &mut self,
        config: Config,
        macs: BTreeMap<IpAddr, MacAddr>,
    ) -> Result<u64, AgentError> {
        let started = Instant::now();
        let result = self.switch_to(config, macs);
        match &result {
            Ok(_) => {
                self.live.publications.inc();
                self.live
                    .publication_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(_) => {
                self.live.publication_failures.inc();
            }
        }
        result
    }

    /// Builds the generation of `config` and switches the data plane to it.
    fn switch_to(
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
        let (overrides, plan) = self.plan_for(&config, &slots, &macs);
        self.publisher
            .reset_counters(&mut self.bal, &fresh.vips, &fresh.backends)?;
        let generation = self.publisher.publish(&mut self.bal, &plan)?;
        for (vip, backend) in self.slots.backends.keys() {
            if !slots.backends.contains_key(&(*vip, *backend)) {
                self.live
                    .forget_backend(&vip.to_string(), &backend.to_string());
            }
        }
        self.config = config;
        self.slots = slots;
        self.macs = macs;
        self.plan = plan;
        self.published = overrides;
        Ok(generation)
    }

    /// The effective weights and the plan a publication of `config`, numbered by `slots`,
    /// would publish now. Changes nothing: a publication and a dry run (`lbx plan`) both
    /// plan here.
    fn plan_for(
        &self,
        config: &Config,
        slots: &Slots,
        macs: &BTreeMap<IpAddr, MacAddr>,
    ) -> (Overrides, Plan) {
        let overrides = self.effective(config, Instant::now());
        let plan = plan::build(
            config,
            slots,
            macs,
            self.mtu,
            self.opts.flow_idle,
            &overrides,
            Some(&self.plan),
        );
        (overrides, plan)
    }

    /// Validates `new` whole, publishes it, saves it and records it in the history (with
    /// `why`, see `Agent::record`). On any error nothing changes.
    fn apply(&mut self, new: Config, why: Option<&str>) -> Result<u64, AgentError> {
        new.validate()?;
        let macs = resolve_macs(&new, &self.macs, &self.opts.iface)?;
        if self.cluster.is_some() {
            return self.commit_to_cluster(new, macs, why);
        }
        let old = self.config.clone();
        new.save(&self.opts.config_path, &self.local)?;
        match self.publish(new, macs) {
            Ok(g) => {
                self.record(&old, why);
                Ok(g)
            }
            Err(e) => {
                let _ = old.save(&self.opts.config_path, &self.local);
                Err(e)
            }
        }
    }

    fn edit(
        &mut self,
        why: Option<&str>,
        f: impl FnOnce(&mut Config) -> Result<(), ConfigError>,
    ) -> Result<Value, AgentError> {
        let mut new = self.config.clone();
        let applied = f(&mut new)
            .map_err(AgentError::from)
            .and_then(|()| self.apply(new, why));
        if applied.is_err() {
            self.live.config_change_errors.inc();
        }
        let generation = applied?;
        Ok(match self.cluster_revision() {
            Some(revision) => json!({ "generation": generation, "revision": revision }),
            None => json!({ "generation": generation }),
        })
    }

    /// Waits for the last publication's in-flight packets (see `Publisher::settle`).
    pub fn settle(&mut self) {
        if let Err(e) = self.publisher.settle(&mut self.bal) {
            eprintln!("waiting for the packets of the generation before: {e}");
        }
    }

    /// Moves the data plane's coarse clock to now: stamps of flows seen from here on
    /// tell them apart from flows gone quiet.
    fn tick_clock(&mut self) -> Result<(), PublishError> {
        self.publisher.tick(&mut self.bal, sys::coarse_now())
    }

    /// Active flows by backend slot, counted now.
    fn active_flows(&self) -> Vec<u64> {
        let mut uids = vec![0; lbx_common::MAX_BACKENDS as usize];
        for s in self.slots.backends.values() {
            uids[s.slot as usize] = s.uid;
        }
        activity::count(
            self.bal.flows.slots(),
            self.publisher.clock(),
            &self.plan.settings,
            &uids,
        )
    }

    fn republish(&mut self, why: &str) {
        let (config, macs) = (self.config.clone(), self.macs.clone());
        if let Err(e) = self.publish(config, macs) {
            eprintln!("publishing after {why} failed: {e}");
        }
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
            None => neighbour::resolve_next_hop(b.address, iface, RESOLVE_TIMEOUT)?,
        };
        out.insert(b.address, mac);
    }
    Ok(out)
}
