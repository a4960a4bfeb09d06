//! The dry run of a change (`lbx plan`): the configuration it would make, checked as the
//! change itself is, and planned as a publication would plan it, with the same slots,
//! MACs and effective weights; then compared with what is published. Nothing is written.

use std::{collections::BTreeSet, net::IpAddr};

use serde_json::{Value, json};

use super::{Agent, AgentError, api::Request, changes::Change, resolve_macs};
use crate::{
    config::{Config, VipId, diff},
    dataplane::movement::{self, Presence},
};

impl Agent {
    /// What `req` would change, without changing anything. A change that would be refused
    /// is refused here with the same error.
    pub(super) fn dry_run(&self, req: Request) -> Result<Value, AgentError> {
        let Change { edit, why } = self.change(req)?;
        let mut new = self.config.clone();
        edit(&mut new)?;
        new.validate()?;
        let macs = resolve_macs(&new, &self.macs, &self.opts.iface)?;
        let (slots, _) = self.slots.assign(&new);
        let (_, planned) = self.plan_for(&new, &slots, &macs);
        let moves = movement::compare(&self.plan, &self.slots, &planned, &slots);
        let active = self.active_flows();
        // Backends whose flows the change moves, ends, or leaves to end where they are.
        let (mut moving, mut ending, mut draining) = (0, 0, 0);
        let mut vips = Vec::new();
        let mut unchanged = 0;
        for m in &moves {
            let (old_vip, new_vip) = (self.config.vip(m.vip), new.vip(m.vip));
            let same = old_vip == new_vip
                && m.moved == 0
                && m.backends.iter().all(|b| b.before == b.after);
            if same {
                unchanged += 1;
                continue;
            }
            let fate = |address: IpAddr| -> Option<Fate> {
                let was = old_vip?.backend(address)?;
                match new_vip {
                    None => Some(Fate::End),
                    Some(v) => match v.backend(address) {
                        None => Some(Fate::Move),
                        Some(b) if b.drain && !was.drain => Some(Fate::Stay),
                        Some(_) => None,
                    },
                }
            };
            let mut backends = Vec::new();
            let addresses: BTreeSet<IpAddr> = m
                .backends
                .iter()
                .map(|b| b.address)
                .chain(
                    old_vip
                        .into_iter()
                        .flat_map(|v| v.backends.iter().map(|b| b.address)),
                )
                .chain(
                    new_vip
                        .into_iter()
                        .flat_map(|v| v.backends.iter().map(|b| b.address)),
                )
                .collect();
            for address in addresses {
                let ring = m.backends.iter().find(|b| b.address == address);
                let flows = self.active_of(&active, m.vip, address);
                let fate = fate(address);
                match fate {
                    Some(Fate::End) => ending += flows,
                    Some(Fate::Move) => moving += flows,
                    Some(Fate::Stay) => draining += flows,
                    None => {}
                }
                backends.push(json!({
                    "address": address,
                    "slots_before": ring.map_or(0, |b| b.before),
                    "slots_after": ring.map_or(0, |b| b.after),
                    "gained": ring.map_or(0, |b| b.gained),
                    "lost": ring.map_or(0, |b| b.lost),
                    "active_flows": flows,
                    "their_flows": fate.map(Fate::text),
                }));
            }
            vips.push(json!({
                "vip": m.vip.to_string(),
                "presence": m.presence,
                "table_size": table_size(&self.config, &new, m.vip, m.presence),
                "slots_before": m.entries_before,
                "slots_after": m.entries_after,
                "moved": m.moved,
                "moved_share": m.moved_share,
                "backends": backends,
            }));
        }
        Ok(json!({
            "dry_run": true,
            "generation": self.publisher.generation(),
            "changes": why.into_iter().chain(diff::describe(&self.config, &new)).collect::<Vec<_>>(),
            "vips": vips,
            "vips_unchanged": unchanged,
            "active_flows": {
                "moving": moving,
                "ending": ending,
                "draining": draining,
            },
        }))
    }
}

/// What a change does to a backend's established flows, where it does more than the
/// ring's movement says.
#[derive(Clone, Copy)]
enum Fate {
    /// The backend is removed: its flows lose it and take the ring.
    Move,
    /// The VIP is removed: its flows pass to the kernel.
    End,
    /// The backend is drained: its flows keep it, no new ones come.
    Stay,
}

impl Fate {
    fn text(self) -> &'static str {
        match self {
            Fate::Move => "move: the backend is removed",
            Fate::End => "end: the VIP is removed",
            Fate::Stay => "stay: drained, they keep their backend until they end",
        }
    }
}

/// The VIP's table size after the change (before it, for a VIP it removes).
fn table_size(old: &Config, new: &Config, vip: VipId, presence: Presence) -> Option<u32> {
    let (config, v) = match presence {
        Presence::Removed => (old, old.vip(vip)),
        _ => (new, new.vip(vip)),
    };
    v.map(|v| v.ring_size(config.table_size))
}
