//! Which flows of the connection table are active: seen within their protocol's idle
//! time on the data plane's coarse clock (`lbx_common::flows::active`). A drain is over
//! when its backend has none left.

use lbx_common::{
    Settings,
    flows::{self, FlowSlot},
};

/// Counts the active flows among `slots` (one pass over the connection table, e.g.
/// `MappedFlows::slots`) at `now` under `settings`' idle times, by backend slot. `uids`
/// holds each backend slot's current uid: an entry with another uid names a backend that
/// was removed since, and counts for none.
pub fn count(
    slots: impl IntoIterator<Item = FlowSlot>,
    now: u32,
    settings: &Settings,
    uids: &[u32],
) -> Vec<u64> {
    let mut out = vec![0; uids.len()];
    for slot in slots {
        if slot.check == 0 || !flows::active(&slot, now, settings) {
            continue;
        }
        let b = slot.entry.backend as usize;
        if uids.get(b) == Some(&slot.entry.uid) {
            out[b] += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use lbx_common::{FlowEntry, PROTO_UDP};

    use super::*;

    #[test]
    fn counts_the_active_flows_of_each_backend_of_its_uid() {
        let settings = Settings {
            tcp_idle_s: 300,
            udp_idle_s: 30,
            ..Settings::default()
        };
        let slot = |backend, uid, seen, udp: bool| FlowSlot {
            key: [
                0,
                0,
                0,
                0,
                if udp {
                    u64::from(PROTO_UDP) << 32
                } else {
                    6 << 32
                },
            ],
            entry: FlowEntry { backend, uid },
            check: 1,
            seen,
            ..FlowSlot::default()
        };
        let slots = [
            slot(0, 7, 1000, false),
            slot(0, 7, 701, false),  // 299 s: active
            slot(0, 7, 600, false),  // 400 s: idle
            slot(1, 9, 980, true),   // 20 s of UDP's 30: active
            slot(1, 9, 950, true),   // 50 s: idle
            slot(1, 8, 1000, false), // a removed backend's uid
            slot(2, 3, 1000, false),
            FlowSlot::default(), // empty
        ];
        assert_eq!(count(slots, 1000, &settings, &[7, 9, 0]), vec![2, 1, 0]);
    }
}
