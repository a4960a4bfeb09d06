//! Reading back, from the maps an agent before this one published into, what this agent
//! must go on from so that established flows keep their backends.

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use lbx_common::BACKEND_F_DOWN;

use crate::{
    balance::health::Health,
    config::{Config, VipId},
    dataplane::{
        Balancer,
        generation::{PublishError, Publisher},
        slots::Slots,
    },
};

/// What an agent goes on from.
pub struct Inherited {
    pub publisher: Publisher,
    pub slots: Slots,
    /// Backends of health-checked VIPs that the maps have taken out: they stay out until
    /// their probes succeed.
    pub health: BTreeMap<(VipId, IpAddr), Health>,
}

/// From the maps of `bal`, if an agent published into them; else a fresh start. `config`
/// is the configuration this agent is about to publish.
pub fn inherit(bal: &Balancer, config: &Config) -> Result<Inherited, PublishError> {
    if !bal.inherited {
        return Ok(Inherited {
            publisher: Publisher::new().map_err(PublishError::Barrier)?,
            slots: Slots::default(),
            health: BTreeMap::new(),
        });
    }
    let publisher = Publisher::resume(bal)?;
    let (table, backends) = publisher.active_contents(bal)?;
    let slots = Slots::recover(&table, &backends);
    let now = Instant::now();
    let health = slots
        .backends
        .iter()
        .filter(|(_, s)| backends[s.slot as usize].flags & BACKEND_F_DOWN != 0)
        .filter(|((vip, _), _)| config.vip(*vip).is_some_and(|v| v.health.is_some()))
        .map(|(key, _)| (*key, Health::inherited_down(now)))
        .collect();
    Ok(Inherited {
        publisher,
        slots,
        health,
    })
}
