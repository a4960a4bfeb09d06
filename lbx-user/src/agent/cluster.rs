//! The agent in cluster mode: the configuration comes from etcd and every change goes
//! there, compared on the revision it was made on; each new revision is published here
//! as one generation. One node, holding the leader key under its lease, merges the nodes' reports, runs the models and
//! writes the weights and health decisions every node applies.
//!
//! Health in a cluster: a backend is down when more than half of the nodes that probe it
//! see it down (the leader decides, [`crate::cluster::merge`]). A node whose own probes see
//! a backend down takes it out of its own generation at once, without waiting for the
//! others: flows through that node could not reach it anyway. That local deviation also
//! holds while the node is cut off from etcd, when it serves its last revision.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::Path,
    time::{Instant, SystemTime},
};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Agent, AgentError, HOLD_INHERITED, Signals, resolve_macs};
use crate::{
    balance::health::State,
    cluster::{
        Cluster, ClusterError, ClusterOptions, HISTORY_KEPT, Update,
        document::{self, BackendView, ChangeRecord, Decisions, NodeReport, Weight},
        merge,
    },
    config::{Config, MacAddr, VipId, diff},
    history::utc,
};

/// This node's place in the cluster.
pub(super) struct Membership {
    pub handle: Cluster,
    /// The configuration revision served, and since when.
    pub revision: u64,
    pub applied_at: SystemTime,
    pub decisions_revision: u64,
    /// Backends the cluster decided are down.
    pub down: BTreeSet<(VipId, IpAddr)>,
    /// Since when, and why, etcd does not answer; none while it does.
    pub cut_off: Option<(SystemTime, String)>,
    /// Whether this node leads the weights.
    pub leading: bool,
    /// The last revision refused (malformed, invalid, or not publishable), and why.
    pub refused: Option<(u64, String)>,
    /// The decisions last applied or written, to skip writing the same again.
    pub decisions: Option<Decisions>,
}

/// Joins the cluster: its configuration, or, for a cluster without one yet, `local`
/// (read from `path`) written as its first revision.
pub(super) fn join(
    opts: ClusterOptions,
    local: Config,
    path: &Path,
) -> Result<(Config, Membership), AgentError> {
    let handle = Cluster::connect(opts)?;
    let key = format!("/lbx/{}/config", handle.opts.name);
    let (revision, config) = loop {
        match handle.config()? {
            Some(v) => {
                let config = Config::from_toml(&v.value).map_err(|e| {
                    AgentError::Invalid(format!(
                        "revision {} of the cluster's configuration ({key} in {}) is refused: \
                         {e}; nothing was loaded (correct it with etcdctl, or `lbx rollback` \
                         on a node that serves the cluster)",
                        v.revision,
                        handle.opts.describe()
                    ))
                })?;
                break (v.revision, config);
            }
            None => {
                let doc = local.to_toml();
                let record = ChangeRecord {
                    node: handle.opts.node.clone(),
                    unix_ms: document::now_ms(),
                    base: 0,
                    changes: vec![format!(
                        "the cluster's first configuration, from {}",
                        path.display()
                    )],
                    config: doc.clone(),
                };
                match handle.commit(0, &doc, &record) {
                    Ok(rev) => {
                        crate::say!(
                            "cluster {}: had no configuration; wrote {} as revision {rev}",
                            handle.opts.name,
                            path.display()
                        );
                        break (rev, local);
                    }
                    // Another node seeded it first: take theirs.
                    Err(ClusterError::ChangedMeanwhile { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    };
    let decisions = handle.decisions()?;
    let mut m = Membership {
        handle,
        revision,
        applied_at: SystemTime::now(),
        decisions_revision: 0,
        down: BTreeSet::new(),
        cut_off: None,
        leading: false,
        refused: None,
        decisions: None,
    };
    if let Some(d) = decisions {
        m.decisions_revision = d.revision;
        m.down = d.value.down.iter().copied().collect();
        m.decisions = Some(d.value);
    }
    Ok((config, m))
}

impl Agent {
    /// Starts following the cluster, with updates arriving through `tx`.
    pub fn start_cluster<E: From<Update> + Send + 'static>(&self, tx: mpsc::Sender<E>) {
        if let Some(m) = &self.cluster {
            m.handle.start(tx, m.revision, m.decisions_revision);
        }
    }

    /// The weights of the decisions taken at start-up, in place of the models' own.
    pub(super) fn adopt_decided_weights(&mut self) {
        let Some(d) = self.cluster.as_ref().and_then(|m| m.decisions.clone()) else {
            return;
        };
        for w in &d.weights {
            self.adaptive.insert(
                (w.vip, w.backend),
                (
                    w.weight,
                    format!("{} (weights leader {})", w.reason, d.leader),
                ),
            );
        }
    }

    pub(super) fn cluster_down(&self, key: &(VipId, IpAddr)) -> bool {
        self.cluster.as_ref().is_some_and(|m| m.down.contains(key))
    }

    /// Whether the weights come from another node's decisions.
    pub(super) fn follows_leader(&self) -> bool {
        self.cluster.as_ref().is_some_and(|m| !m.leading)
    }

    /// The cluster's revision this node serves, in cluster mode.
    pub(super) fn cluster_revision(&self) -> Option<u64> {
        self.cluster.as_ref().map(|m| m.revision)
    }

    /// Writes `new` to the cluster on the revision served, then publishes it here.
    pub(super) fn commit_to_cluster(
        &mut self,
        new: Config,
        macs: std::collections::BTreeMap<IpAddr, MacAddr>,
        why: Option<&str>,
    ) -> Result<u64, AgentError> {
        let m = self.cluster.as_ref().expect("cluster mode");
        let changes = why
            .map(str::to_owned)
            .into_iter()
            .chain(diff::describe(&self.config, &new))
            .collect();
        // A change made on the last good revision replaces a refused one after it: that is
        // how an operator repairs a bad document.
        let base = match m.refused {
            Some((refused, _)) if refused > m.revision => refused,
            _ => m.revision,
        };
        let doc = new.to_toml();
        let record = ChangeRecord {
            node: m.handle.opts.node.clone(),
            unix_ms: document::now_ms(),
            base,
            changes,
            config: doc.clone(),
        };
        let revision = m.handle.commit(base, &doc, &record)?;
        let g = self.publish(new, macs).map_err(|e| {
            AgentError::Other(format!(
                "the change is revision {revision} of the cluster, but this node could not \
                 publish it: {e}"
            ))
        })?;
        let m = self.cluster.as_mut().expect("cluster mode");
        m.revision = revision;
        m.applied_at = SystemTime::now();
        m.refused = None;
        Ok(g)
    }

    pub fn on_cluster(&mut self, u: Update) {
        if self.cluster.is_none() {
            return;
        }
        match u {
            Update::Config(v) => self.on_cluster_config(v.revision, &v.value),
            Update::Decisions(v) => match v.value {
                Ok(d) => self.on_decisions(v.revision, d),
                Err(e) => {
                    eprintln!("cluster: decisions revision {} refused: {e}", v.revision);
                }
            },
            Update::Connected => {
                let m = self.cluster.as_mut().expect("checked");
                if let Some((since, _)) = m.cut_off.take() {
                    crate::say!(
                        "cluster: etcd answers again after {} s; following the cluster from \
                         revision {}",
                        since.elapsed().map_or(0, |d| d.as_secs()),
                        m.revision
                    );
                }
            }
            Update::CutOff(why) => {
                let generation = self.publisher.generation();
                let m = self.cluster.as_mut().expect("checked");
                eprintln!(
                    "cluster: cut off from etcd ({why}); serving revision {} (generation \
                     {generation}) until it answers; backends this node's probes see down are \
                     taken out here only",
                    m.revision
                );
                m.cut_off = Some((SystemTime::now(), why));
            }
            Update::Leadership(won) => {
                let m = self.cluster.as_mut().expect("checked");
                m.leading = won;
                crate::say!(
                    "cluster: this node {} the weights leader",
                    if won { "is now" } else { "is no longer" }
                );
                if won {
                    // The models start here: keep the weights decided so far until they
                    // estimate capacities, as after a restart.
                    let until = Instant::now() + HOLD_INHERITED;
                    for key in self.adaptive.keys() {
                        self.held.insert(*key, until);
                    }
                }
            }
        }
    }

    fn on_cluster_config(&mut self, revision: u64, text: &str) {
        let served = self.cluster.as_ref().map_or(0, |m| m.revision);
        if revision <= served {
            return;
        }
        let result = Config::from_toml(text)
            .map_err(AgentError::from)
            .and_then(|c| {
                let macs = resolve_macs(&c, &self.macs, &self.opts.iface)?;
                self.publish(c, macs)
            });
        let m = self.cluster.as_mut().expect("checked");
        match result {
            Ok(g) => {
                m.revision = revision;
                m.applied_at = SystemTime::now();
                m.refused = None;
                crate::say!("cluster: serving revision {revision} as generation {g}");
            }
            Err(e) => {
                eprintln!(
                    "cluster: revision {revision} of the configuration is refused whole: {e}; \
                     serving revision {served}"
                );
                m.refused = Some((revision, e.to_string()));
                self.live.config_change_errors.inc();
            }
        }
    }

    fn on_decisions(&mut self, revision: u64, d: Decisions) {
        let m = self.cluster.as_mut().expect("checked");
        if revision <= m.decisions_revision {
            return;
        }
        m.decisions_revision = revision;
        m.down = d.down.iter().copied().collect();
        m.decisions = Some(d);
        self.adopt_decided_weights();
        if self.effective(&self.config, Instant::now()) != self.published {
            self.republish("the cluster's decisions");
        }
    }

    /// This node's view of its backends, for its report.
    fn node_report(&self) -> Option<NodeReport> {
        let m = self.cluster.as_ref()?;
        let mut backends = Vec::new();
        for v in &self.config.vips {
            for b in &v.backends {
                let key = (v.id(), b.address);
                let s = self.signals.get(&key).copied().unwrap_or_default();
                backends.push(BackendView {
                    vip: key.0,
                    backend: key.1,
                    down: v
                        .health
                        .as_ref()
                        .and_then(|_| self.health.get(&key).map(|h| h.state == State::Down)),
                    new_flows_per_s: s.new_flows_per_s,
                    packets_per_s: s.packets_per_s,
                    bytes_per_s: s.bytes_per_s,
                });
            }
        }
        Some(NodeReport {
            node: m.handle.opts.node.clone(),
            revision: m.revision,
            applied_unix_ms: document::unix_ms(m.applied_at),
            decisions_revision: m.decisions_revision,
            generation: self.publisher.generation(),
            unix_ms: document::now_ms(),
            backends,
        })
    }

    /// The control tick in cluster mode: report, and as the leader decide.
    pub(super) fn cluster_tick(&mut self, now: Instant) {
        let Some(report) = self.node_report() else {
            return;
        };
        let m = self.cluster.as_ref().expect("node_report checked");
        m.handle.report(report.clone());
        if !m.leading || m.cut_off.is_some() {
            return;
        }
        let mut reports = match m.handle.reports() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cluster: reading the nodes' reports: {e}");
                return;
            }
        };
        // This node's own view is fresher than what it last wrote.
        reports.retain(|r| r.node != report.node);
        reports.push(report);
        for (key, r) in merge::rates(&reports) {
            if self.slots.backends.contains_key(&key) {
                self.signals.insert(
                    key,
                    Signals {
                        new_flows_per_s: r.new_flows_per_s,
                        packets_per_s: r.packets_per_s,
                        bytes_per_s: r.bytes_per_s,
                    },
                );
            }
        }
        self.adapt(now);
        let m = self.cluster.as_ref().expect("checked");
        let decided = Decisions {
            leader: m.handle.opts.node.clone(),
            config_revision: m.revision,
            unix_ms: document::now_ms(),
            weights: self
                .config
                .vips
                .iter()
                .filter(|v| v.adaptive.is_some())
                .flat_map(|v| v.backends.iter().map(move |b| (v.id(), b.address)))
                .filter_map(|key| {
                    self.adaptive.get(&key).map(|(w, why)| Weight {
                        vip: key.0,
                        backend: key.1,
                        weight: *w,
                        reason: strip_leader(why).to_owned(),
                    })
                })
                .collect(),
            down: merge::down(&reports).into_iter().collect(),
        };
        if m.decisions.as_ref().is_some_and(|d| d.same_as(&decided)) {
            return;
        }
        match m.handle.put_decisions(&decided) {
            Ok(Some(_)) => {}
            Ok(None) => eprintln!("cluster: no longer holds the leader key; decisions not written"),
            Err(e) => eprintln!("cluster: writing the decisions: {e}"),
        }
    }

    pub(super) fn cluster_figures(&self) -> Option<crate::metrics::snapshot::ClusterFigures> {
        self.cluster
            .as_ref()
            .map(|m| crate::metrics::snapshot::ClusterFigures {
                revision: m.revision,
                connected: m.cut_off.is_none(),
                leader: m.leading,
            })
    }

    pub(super) fn cluster_status(&self) -> Value {
        let Some(m) = &self.cluster else {
            return Value::Null;
        };
        let connected = m.cut_off.is_none();
        // Asking etcd while cut off would only wait for its timeout.
        let (leader, nodes) = if connected {
            (
                m.handle.leader().ok().flatten(),
                m.handle.reports().unwrap_or_default(),
            )
        } else {
            (None, Vec::new())
        };
        let now = document::now_ms();
        json!({
            "name": m.handle.opts.name,
            "node": m.handle.opts.node,
            "endpoints": m.handle.opts.describe(),
            "tls": m.handle.opts.tls.is_some(),
            "state": if connected {
                "connected"
            } else {
                "degraded: etcd does not answer; serving the last revision, changes are refused"
            },
            "cut_off": m.cut_off.as_ref().map(|(since, why)| json!({
                "since_seconds": since.elapsed().map_or(0, |d| d.as_secs()),
                "reason": why,
            })),
            "revision": m.revision,
            "applied_unix_ms": document::unix_ms(m.applied_at),
            "decisions_revision": m.decisions_revision,
            "leader": leader,
            "is_leader": m.leading,
            "down_by_cluster": m.down.iter().map(|(v, b)| format!("{b} of {v}")).collect::<Vec<_>>(),
            "refused": m.refused.as_ref().map(|(rev, why)| json!({ "revision": rev, "error": why })),
            "nodes": nodes.iter().map(|r| json!({
                "node": r.node,
                "revision": r.revision,
                "applied_unix_ms": r.applied_unix_ms,
                "generation": r.generation,
                "decisions_revision": r.decisions_revision,
                "report_age_ms": now.saturating_sub(r.unix_ms),
            })).collect::<Vec<_>>(),
        })
    }
}

impl Agent {
    /// The cluster's change records, newest first, in the form of the local history's.
    pub(super) fn cluster_history(&self, last: u32, full: bool) -> Result<Value, AgentError> {
        let m = self.cluster.as_ref().expect("cluster mode");
        let records = m.handle.history(last as usize)?;
        let entries: Vec<Value> = records
            .iter()
            .map(|r| {
                let time = r.value.unix_ms / 1000;
                let mut v = json!({
                    "revision": r.revision,
                    "base": r.value.base,
                    "time": time,
                    "time_utc": utc::format(time),
                    "node": r.value.node,
                    "changes": r.value.changes,
                });
                if full {
                    v["config"] = r.value.config.clone().into();
                }
                v
            })
            .collect();
        Ok(json!({
            "cluster": m.handle.opts.name,
            "kept": HISTORY_KEPT,
            "entries": entries,
        }))
    }

    /// The configuration revision `revision` of the cluster made, from its change record.
    pub(super) fn cluster_config_of(&self, revision: u64) -> Result<Config, AgentError> {
        let m = self.cluster.as_ref().expect("cluster mode");
        let records = m.handle.history(HISTORY_KEPT)?;
        let Some(r) = records.iter().find(|r| r.revision == revision) else {
            let range = match (records.last(), records.first()) {
                (Some(o), Some(n)) => format!("revisions {} to {}", o.revision, n.revision),
                _ => "none".to_owned(),
            };
            return Err(AgentError::NotFound(format!(
                "revision {revision} is not a configuration of the cluster {} kept in its \
                 history (it holds the last {HISTORY_KEPT} changes: {range}; `lbx history` \
                 lists them)",
                m.handle.opts.name
            )));
        };
        Config::from_toml(&r.value.config).map_err(|e| {
            AgentError::Invalid(format!(
                "the configuration of revision {revision} in the cluster's history is refused: {e}"
            ))
        })
    }
}

/// A decided weight's reason without the leader's name added when it was applied.
fn strip_leader(why: &str) -> &str {
    why.rfind(" (weights leader ").map_or(why, |i| &why[..i])
}
