//! Change requests: what each does to the configuration, and the record of every change
//! applied, in the node's history (`lbx history`, `lbx rollback`).

use serde_json::{Value, json};

use super::{Agent, AgentError, api::Request};
use crate::{
    config::{Config, ConfigError, diff},
    history::{self, utc},
};

/// What a change request does to a configuration.
pub(super) type Edit = Box<dyn FnOnce(&mut Config) -> Result<(), ConfigError>>;

/// A change request made ready to apply, or to plan.
pub(super) struct Change {
    pub edit: Edit,
    /// Why the change happened, when it is not an operator's edit: the first line of what
    /// its history entry says changed.
    pub why: Option<String>,
}

/// The first line of the history entry of a configuration the agent started with.
const LOADED: &str = "loaded at start";

impl Agent {
    /// The change `req` asks for; a request that changes nothing is refused.
    pub(super) fn change(&self, req: Request) -> Result<Change, AgentError> {
        let edit: Edit = match req {
            Request::VipAdd { vip, table_size } => Box::new(move |c| {
                c.add_vip(vip)?;
                c.set_vip_table_size(vip, table_size)
            }),
            Request::VipDel { vip } => Box::new(move |c| c.del_vip(vip).map(drop)),
            Request::VipHealth { vip, health } => Box::new(move |c| c.set_health(vip, health)),
            Request::VipAdaptive { vip, adaptive } => {
                Box::new(move |c| c.set_adaptive(vip, adaptive))
            }
            Request::BackendAdd { vip, backend } => Box::new(move |c| c.add_backend(vip, backend)),
            Request::BackendDel { vip, address } => {
                Box::new(move |c| c.del_backend(vip, address).map(drop))
            }
            Request::BackendWeight {
                vip,
                address,
                weight,
            } => Box::new(move |c| c.set_weight(vip, address, weight)),
            Request::BackendDrain {
                vip,
                address,
                drain,
            } => Box::new(move |c| c.set_drain(vip, address, drain)),
            Request::Rollback { revision } => {
                let target = match self.cluster {
                    Some(_) => self.cluster_config_of(revision)?,
                    None => self.history.config_of(revision)?,
                };
                return Ok(Change {
                    edit: Box::new(move |c| {
                        *c = target;
                        Ok(())
                    }),
                    why: Some(format!("rollback to revision {revision}")),
                });
            }
            other @ (Request::VipList
            | Request::BackendList { .. }
            | Request::Status
            | Request::Stats
            | Request::Flow { .. }
            | Request::FlowClear { .. }
            | Request::Plan { .. }
            | Request::History { .. }) => {
                let op = serde_json::to_value(&other)
                    .ok()
                    .and_then(|v| v["op"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                return Err(AgentError::Invalid(format!(
                    "request {op} is not a change of the configuration: a plan takes a change \
                     (vip_add, vip_del, vip_health, vip_adaptive, backend_add, backend_del, \
                     backend_weight, backend_drain, rollback)"
                )));
            }
        };
        Ok(Change { edit, why: None })
    }

    /// Records in the history that the configuration now published replaced `old`, with
    /// `why` first when it was not an operator's edit. A change that left the configuration
    /// as it was, and says no why, is not recorded. The one place a change reaches the
    /// history.
    pub(super) fn record(&mut self, old: &Config, why: Option<&str>) {
        // A cluster's changes are recorded in etcd, with the change itself.
        if self.cluster.is_some() {
            return;
        }
        let changes = diff::describe(old, &self.config);
        if changes.is_empty() && why.is_none() {
            return;
        }
        let lines = why.map(str::to_owned).into_iter().chain(changes).collect();
        if let Err(e) = self
            .history
            .record(lines, &self.config, history::now(), &history::node())
        {
            eprintln!("{e}: the change is in effect, but its history entry may be lost");
        }
    }

    /// Records the configuration the agent started with, when it is not the history's
    /// last.
    pub(super) fn record_start(&mut self) {
        let last = self.history.last().map(|e| Config::from_toml(&e.config));
        match last {
            Some(Ok(c)) if c == self.config => {}
            Some(Ok(c)) => self.record(&c, Some(LOADED)),
            _ => self.record(&Config::default(), Some(LOADED)),
        }
    }

    /// The newest `last` entries, newest first; their configurations only with `full`.
    pub(super) fn history_list(&self, last: u32, full: bool) -> Result<Value, AgentError> {
        if self.cluster.is_some() {
            return self.cluster_history(last, full);
        }
        let entries: Vec<Value> = self
            .history
            .entries()
            .rev()
            .take(last as usize)
            .map(|e| {
                let mut v = json!({
                    "revision": e.revision,
                    "time": e.time,
                    "time_utc": utc::format(e.time),
                    "node": e.node,
                    "changes": e.changes,
                });
                if full {
                    v["config"] = e.config.clone().into();
                }
                v
            })
            .collect();
        Ok(json!({
            "file": self.history.path(),
            "kept": self.history.entries().len(),
            "entries": entries,
        }))
    }
}
