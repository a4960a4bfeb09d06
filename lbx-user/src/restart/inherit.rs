//! Reading back, from the maps an agent before this one published into, what this agent
//! must go on from so that established flows keep their backends.

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use lbx_common::{BACKEND_F_DOWN, VIP_F_HAS_BACKENDS, VipTable};

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
    /// The weights the generation taken over gave the backends of VIPs that are adaptive
    /// now, read back from their rings: the load models start again, the weights do not.
    pub weights: BTreeMap<(VipId, IpAddr), u32>,
}

/// From the maps of `bal`, if an agent published into them; else a fresh start. `config`
/// is the configuration this agent is about to publish.
pub fn inherit(bal: &Balancer, config: &Config) -> Result<Inherited, PublishError> {
    if !bal.inherited {
        return Ok(Inherited {
            publisher: Publisher::new().map_err(PublishError::Barrier)?,
            slots: Slots::default(),
            health: BTreeMap::new(),
            weights: BTreeMap::new(),
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
    let weights = ring_weights(bal, &table, &slots, config);
    Ok(Inherited {
        publisher,
        slots,
        health,
        weights,
    })
}

/// The weights behind each adaptive VIP's ring in the active generation. Maglev gives a
/// backend a share of the ring in proportion to its weight, and the adaptive policy gives
/// the largest its `max_weight`: so a backend's weight is `max_weight` times its share of
/// the largest share, to within a slot in the ring's size. Backends without a slot (down,
/// drained, at the start of a slow start) are left to the policy's default.
fn ring_weights(
    bal: &Balancer,
    table: &VipTable,
    slots: &Slots,
    config: &Config,
) -> BTreeMap<(VipId, IpAddr), u32> {
    let mut out = BTreeMap::new();
    for v in &config.vips {
        let Some(adaptive) = &v.adaptive else {
            continue;
        };
        let id = v.id();
        let Some(number) = slots.vips.get(&id) else {
            continue;
        };
        let Some(entry) = table.entries.iter().find(|e| {
            e.key.family != 0 && u32::from(e.id) == *number && e.flags & VIP_F_HAS_BACKENDS != 0
        }) else {
            continue;
        };
        let Some(ring) = bal
            .rings
            .read_ring(entry.ring_base as usize, entry.ring_size as usize)
        else {
            continue;
        };
        let mut shares: BTreeMap<u32, u64> = BTreeMap::new();
        for slot in ring {
            *shares.entry(slot).or_default() += 1;
        }
        let largest = shares.values().copied().max().unwrap_or(0);
        if largest == 0 {
            continue;
        }
        for b in &v.backends {
            let key = (id, b.address);
            let Some(s) = slots.backends.get(&key) else {
                continue;
            };
            let Some(&share) = shares.get(&s.slot) else {
                continue;
            };
            let w = (f64::from(adaptive.max_weight) * share as f64 / largest as f64).round() as u32;
            out.insert(key, w.clamp(adaptive.min_weight, adaptive.max_weight));
        }
    }
    out
}
