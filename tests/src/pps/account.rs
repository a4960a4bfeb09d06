//! Where every frame went. The senders count what their sockets took; the veth counts
//! what reached the program and what it dropped before; the balancer's reason counters
//! count each frame it ran once; and what the program sent either arrived back on the
//! sender's side or was dropped by the veth. A frame in none of these vanished.

use anyhow::Result;
use lbx_common::Reason;

use super::{rig::Wire, scene::Scene};
use crate::reference::Verdict;

/// Counters at one moment, or their changes over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// The balancer's packets by reason (`Reason as usize`), all CPUs.
    pub reasons: Vec<u64>,
    pub wire: Wire,
}

impl Tally {
    pub fn read(scene: &Scene) -> Result<Self> {
        Ok(Self {
            reasons: scene.tb.reasons()?,
            wire: scene.rig.wire()?,
        })
    }

    pub fn read_settled(scene: &Scene) -> Result<Self> {
        let wire = scene.rig.settled_wire()?;
        Ok(Self {
            wire,
            ..Self::read(scene)?
        })
    }

    pub fn since(&self, before: &Tally) -> Tally {
        Tally {
            reasons: self
                .reasons
                .iter()
                .zip(&before.reasons)
                .map(|(a, b)| a - b)
                .collect(),
            wire: self.wire.since(before.wire),
        }
    }

    /// Frames the balancer ran.
    pub fn balanced(&self) -> u64 {
        self.reasons.iter().sum()
    }

    /// Frames the balancer sent (its XDP_TX reasons).
    pub fn sent(&self) -> u64 {
        Reason::ALL
            .iter()
            .filter(|r| Verdict::of(**r) == Verdict::Tx)
            .map(|r| self.reasons[*r as usize])
            .sum()
    }

    /// Checks that each of the `sent` frames the sockets took is counted exactly once on
    /// its way, through the balancer (`balancer`) or a floor that sends every frame back.
    /// Returns what does not add up.
    pub fn check(&self, sent: u64, balancer: bool) -> Result<(), String> {
        let w = &self.wire;
        let mut wrong = Vec::new();
        if w.reached + w.lost_before != sent {
            wrong.push(format!(
                "the sockets sent {sent} frames; {} reached the program and the veth dropped {} before it",
                w.reached, w.lost_before
            ));
        }
        let out = if balancer {
            if self.balanced() != w.reached {
                wrong.push(format!(
                    "{} frames reached the balancer, its reason counters count {}",
                    w.reached,
                    self.balanced()
                ));
            }
            self.sent()
        } else {
            w.reached
        };
        if out != w.arrived + w.lost_after {
            wrong.push(format!(
                "the program sent {out} frames back; {} arrived and the veth dropped {}",
                w.arrived, w.lost_after
            ));
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }
}
