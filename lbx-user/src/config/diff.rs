//! What differs between two configurations, in one line per difference an operator reads:
//! "VIP 10.0.0.1:80/tcp: backend 10.0.1.5 added (weight 2)", "seed: 0 → 7".

use std::fmt::Display;

use serde::Serialize;
use serde_json::Value;

use super::{BackendConfig, Config, VipConfig};

/// The differences from `old` to `new`: the settings first, then the VIPs removed, the
/// VIPs added (with their backends) and the VIPs changed, each in its configuration's
/// order. Empty when the two are equal.
pub fn describe(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    changed_in(&mut out, "seed", &old.seed, &new.seed);
    changed_in(&mut out, "table_size", &old.table_size, &new.table_size);
    changed_in(
        &mut out,
        "mtu",
        &or_none(old.mtu, "the interface's"),
        &or_none(new.mtu, "the interface's"),
    );
    changed_in(
        &mut out,
        "encap.source_v4",
        &old.encap.source_v4,
        &new.encap.source_v4,
    );
    changed_in(
        &mut out,
        "encap.source_v6",
        &old.encap.source_v6,
        &new.encap.source_v6,
    );
    changed_in(
        &mut out,
        "icmp_echo",
        &on_off(old.icmp_echo),
        &on_off(new.icmp_echo),
    );
    for v in old.vips.iter().filter(|v| new.vip(v.id()).is_none()) {
        out.push(format!(
            "VIP {} removed, with its {} {}",
            v.id(),
            v.backends.len(),
            plural(v.backends.len(), "backend", "backends")
        ));
    }
    for v in new.vips.iter().filter(|v| old.vip(v.id()).is_none()) {
        let mut what = format!("VIP {} added", v.id());
        if let Some(size) = v.table_size {
            what.push_str(&format!(" (table_size {size})"));
        }
        out.push(what);
        let empty = VipConfig {
            table_size: v.table_size,
            backends: Vec::new(),
            health: None,
            adaptive: None,
            ..v.clone()
        };
        vip(&mut out, &empty, v);
    }
    for v in &new.vips {
        if let Some(before) = old.vip(v.id()) {
            vip(&mut out, before, v);
        }
    }
    out
}

/// The differences within one VIP that is in both configurations.
fn vip(out: &mut Vec<String>, old: &VipConfig, new: &VipConfig) {
    let id = new.id();
    changed_in(
        out,
        &format!("VIP {id}: table_size"),
        &or_none(old.table_size, "the configuration's"),
        &or_none(new.table_size, "the configuration's"),
    );
    part(
        out,
        &format!("VIP {id}: health check"),
        &old.health,
        &new.health,
    );
    part(
        out,
        &format!("VIP {id}: adaptive weights"),
        &old.adaptive,
        &new.adaptive,
    );
    for b in old
        .backends
        .iter()
        .filter(|b| new.backend(b.address).is_none())
    {
        out.push(format!("VIP {id}: backend {} removed", b.address));
    }
    for b in &new.backends {
        match old.backend(b.address) {
            None => out.push(format!(
                "VIP {id}: backend {} added ({})",
                b.address,
                about(b)
            )),
            Some(was) => backend(out, &format!("VIP {id}"), was, b),
        }
    }
}

fn backend(out: &mut Vec<String>, vip: &str, old: &BackendConfig, new: &BackendConfig) {
    let a = new.address;
    changed_in(
        out,
        &format!("{vip}: weight of {a}"),
        &old.weight,
        &new.weight,
    );
    let mac = |m: Option<super::MacAddr>| or_none(m, "from the neighbour table");
    changed_in(
        out,
        &format!("{vip}: MAC of {a}"),
        &mac(old.mac),
        &mac(new.mac),
    );
    if old.drain != new.drain {
        out.push(if new.drain {
            format!("{vip}: backend {a} drained (no new flows)")
        } else {
            format!("{vip}: backend {a} takes new flows again (drain undone)")
        });
    }
}

/// What a new backend is: its weight, and what it has beyond the defaults.
fn about(b: &BackendConfig) -> String {
    let mut parts = vec![format!("weight {}", b.weight)];
    if let Some(mac) = b.mac {
        parts.push(format!("MAC {mac}"));
    }
    if b.drain {
        parts.push("drained".to_owned());
    }
    parts.join(", ")
}

/// A part of a VIP that is there or not (its health check, its adaptive weights): set,
/// removed, or the fields that changed.
fn part<T: Serialize>(out: &mut Vec<String>, what: &str, old: &Option<T>, new: &Option<T>) {
    match (old, new) {
        (None, None) => {}
        (None, Some(n)) => out.push(format!("{what} set ({})", fields(n))),
        (Some(_), None) => out.push(format!("{what} removed")),
        (Some(o), Some(n)) => {
            let (o, n) = (as_map(o), as_map(n));
            let moved: Vec<String> = o
                .keys()
                .chain(n.keys().filter(|k| !o.contains_key(*k)))
                .filter(|k| o.get(*k) != n.get(*k))
                .map(|k| format!("{k} {} → {}", shown(o.get(k)), shown(n.get(k))))
                .collect();
            if !moved.is_empty() {
                out.push(format!("{what}: {}", moved.join(", ")));
            }
        }
    }
}

fn as_map<T: Serialize>(v: &T) -> serde_json::Map<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

/// Every field of a part, `key value` each, by name.
fn fields<T: Serialize>(v: &T) -> String {
    as_map(v)
        .iter()
        .map(|(k, v)| format!("{k} {}", shown(Some(v))))
        .collect::<Vec<_>>()
        .join(", ")
}

fn shown(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "none".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn changed_in<T: PartialEq + Display>(out: &mut Vec<String>, what: &str, old: &T, new: &T) {
    if old != new {
        out.push(format!("{what}: {old} → {new}"));
    }
}

fn or_none<T: Display>(v: Option<T>, default: &str) -> String {
    v.map_or_else(|| format!("none ({default})"), |v| v.to_string())
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::*;

    fn v4() -> VipId {
        vid("10.0.0.100:80/tcp")
    }

    #[test]
    fn equal_configurations_have_no_difference() {
        assert_eq!(describe(&sample(), &sample()), Vec::<String>::new());
        assert!(describe(&Config::default(), &Config::default()).is_empty());
    }

    #[test]
    fn each_kind_of_change_is_one_line() {
        let old = sample();
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|c| {
                    c.add_backend(
                        v4(),
                        BackendConfig {
                            weight: 2,
                            ..BackendConfig::new(ip("10.0.0.50"))
                        },
                    )
                }),
                "VIP 10.0.0.100:80/tcp: backend 10.0.0.50 added (weight 2)",
            ),
            (
                Box::new(|c| c.set_weight(v4(), ip("10.0.0.12"), 3)),
                "VIP 10.0.0.100:80/tcp: weight of 10.0.0.12: 100 → 3",
            ),
            (
                Box::new(|c| c.del_backend(v4(), ip("10.0.0.12")).map(drop)),
                "VIP 10.0.0.100:80/tcp: backend 10.0.0.12 removed",
            ),
            (
                Box::new(|c| c.set_drain(v4(), ip("10.0.0.12"), true)),
                "VIP 10.0.0.100:80/tcp: backend 10.0.0.12 drained (no new flows)",
            ),
            (
                Box::new(|c| {
                    c.seed = 7;
                    Ok(())
                }),
                "seed: 0 → 7",
            ),
            (
                Box::new(|c| c.set_vip_table_size(v4(), Some(1021))),
                "VIP 10.0.0.100:80/tcp: table_size: none (the configuration's) → 1021",
            ),
            (
                Box::new(|c| c.set_drain(v4(), ip("10.0.0.11"), false)),
                "VIP 10.0.0.100:80/tcp: backend 10.0.0.11 takes new flows again (drain undone)",
            ),
        ];
        for (edit, want) in cases {
            let mut new = old.clone();
            edit(&mut new).unwrap();
            assert_eq!(describe(&old, &new), vec![want.to_owned()]);
        }
    }

    #[test]
    fn vips_added_and_removed_list_their_backends() {
        let old = sample();
        let mut new = old.clone();
        let gone = new.del_vip(v4()).unwrap();
        let added = vid("10.0.0.200:443/tcp");
        new.add_vip(added).unwrap();
        new.add_backend(added, BackendConfig::new(ip("10.0.0.61")))
            .unwrap();
        let got = describe(&old, &new);
        assert_eq!(
            got,
            vec![
                format!(
                    "VIP 10.0.0.100:80/tcp removed, with its {} backends",
                    gone.backends.len()
                ),
                "VIP 10.0.0.200:443/tcp added".to_owned(),
                "VIP 10.0.0.200:443/tcp: backend 10.0.0.61 added (weight 100)".to_owned(),
            ]
        );
        // And back: the opposite lines.
        let back = describe(&new, &old);
        assert!(
            back.contains(&"VIP 10.0.0.200:443/tcp removed, with its 1 backend".to_owned()),
            "{back:?}"
        );
        assert!(
            back.contains(&"VIP 10.0.0.100:80/tcp added".to_owned()),
            "{back:?}"
        );
    }

    #[test]
    fn health_checks_name_the_fields_that_changed() {
        let old = sample();
        let mut on = old.clone();
        on.set_health(v4(), Some(HealthCheck::default())).unwrap();
        let set = describe(&old, &on);
        assert_eq!(set.len(), 1, "{set:?}");
        // Every field, by name.
        assert!(
            set[0].starts_with("VIP 10.0.0.100:80/tcp: health check set (expect_status 200, ")
                && set[0].contains(", kind tcp, path /, ")
                && set[0].ends_with("timeout_ms 500)"),
            "{set:?}"
        );
        let mut faster = on.clone();
        faster
            .set_health(
                v4(),
                Some(HealthCheck {
                    interval_ms: 200,
                    timeout_ms: 100,
                    ..HealthCheck::default()
                }),
            )
            .unwrap();
        assert_eq!(
            describe(&on, &faster),
            vec![
                "VIP 10.0.0.100:80/tcp: health check: interval_ms 1000 → 200, timeout_ms 500 → 100"
                    .to_owned()
            ]
        );
        assert_eq!(
            describe(&on, &old),
            vec!["VIP 10.0.0.100:80/tcp: health check removed".to_owned()]
        );
    }
}
