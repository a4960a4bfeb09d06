//! Human-readable rendering of the agent's answers (`--json` prints them raw).

use serde_json::Value;

use crate::agent::api::Request;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub fn print(req: &Request, v: &Value) {
    match req {
        Request::VipList => table(
            &["VIP", "BACKENDS"],
            arr(v)
                .iter()
                .map(|x| vec![s(&x["vip"]), s(&x["backends"])])
                .collect(),
        ),
        Request::BackendList { .. } => table(
            &["VIP", "BACKEND", "WEIGHT", "STATE", "ACTIVE FLOWS", "MAC"],
            arr(v)
                .iter()
                .map(|x| {
                    let state = if x["drain"] == Value::Bool(true) {
                        "draining"
                    } else {
                        "active"
                    };
                    vec![
                        s(&x["vip"]),
                        s(&x["address"]),
                        s(&x["weight"]),
                        state.into(),
                        s(&x["active_flows"]),
                        s(&x["mac"]),
                    ]
                })
                .collect(),
        ),
        Request::Status => status(v),
        Request::Stats => stats(v),
        Request::Flow { protocol, src, dst } => {
            print!("{protocol} {src} -> {dst}: VIP {}, ", s(&v["vip"]));
            if v["source"] == "maglev" {
                println!(
                    "backend {} (new flow: hash {}, Maglev slot {} of {})",
                    s(&v["backend"]),
                    s(&v["hash"]),
                    s(&v["table_index"]),
                    s(&v["table_size"])
                );
            } else {
                println!("backend {} ({})", s(&v["backend"]), s(&v["source"]));
            }
        }
        Request::FlowClear { .. } => println!("ok: cleared {} flows", s(&v["cleared"])),
        Request::Plan { .. } => plan(v),
        Request::History { full, .. } => history(v, *full),
        Request::Rollback { revision } => println!(
            "ok: rolled back to revision {revision}, recorded as revision {}; published generation {}",
            s(&v["revision"]),
            s(&v["generation"])
        ),
        _ if v["revision"].is_u64() => println!(
            "ok: revision {} of the cluster, published here as generation {}",
            s(&v["revision"]),
            s(&v["generation"])
        ),
        _ => println!("ok: published generation {}", s(&v["generation"])),
    }
}

/// The cluster lines of `lbx status`: this node's state, then every node's revision.
fn cluster_status(c: &Value) {
    println!(
        "cluster {} at {}{}, node {}: {}, serving revision {} (decisions {}), weights leader {}{}",
        s(&c["name"]),
        s(&c["endpoints"]),
        if c["tls"] == true { " (TLS)" } else { "" },
        s(&c["node"]),
        s(&c["state"]),
        s(&c["revision"]),
        s(&c["decisions_revision"]),
        if c["leader"].is_null() {
            "unknown".to_owned()
        } else {
            s(&c["leader"])
        },
        if c["is_leader"] == true {
            " (this node)"
        } else {
            ""
        },
    );
    if let Some(cut) = c["cut_off"].as_object() {
        println!(
            "  cut off from etcd for {} s: {}",
            s(&cut["since_seconds"]),
            s(&cut["reason"])
        );
    }
    if let Some(r) = c["refused"].as_object() {
        println!(
            "  revision {} refused (the last good one is served): {}",
            s(&r["revision"]),
            s(&r["error"])
        );
    }
    for n in arr(&c["nodes"]) {
        println!(
            "  node {}: revision {}, generation {}, applied at {} ms (unix), reported {} ms ago",
            s(&n["node"]),
            s(&n["revision"]),
            s(&n["generation"]),
            s(&n["applied_unix_ms"]),
            s(&n["report_age_ms"]),
        );
    }
}

/// A dry run: what would change, how each VIP's slots would move, and the flows.
fn plan(v: &Value) {
    println!(
        "plan only: nothing was changed (generation {} stays)",
        s(&v["generation"])
    );
    let changes = arr(&v["changes"]);
    if changes.is_empty() {
        println!("the configuration would stay as it is");
    } else {
        println!("the configuration would change:");
        for c in &changes {
            println!("  {}", s(c));
        }
    }
    for vip in arr(&v["vips"]) {
        println!();
        let share = vip["moved_share"].as_f64().unwrap_or(0.0) * 100.0;
        let size = s(&vip["table_size"]);
        match vip["presence"].as_str() {
            Some("added") => println!("VIP {} (new, table size {size})", s(&vip["vip"])),
            Some("removed") => println!(
                "VIP {} (removed): its flows end, traffic to it passes to the kernel",
                s(&vip["vip"])
            ),
            _ => println!(
                "VIP {}, table size {size}: {} of {} slots change backend ({share:.1}%): \
                 the share of its flows that move once they lose their connection-table entry",
                s(&vip["vip"]),
                s(&vip["moved"]),
                s(&vip["slots_before"]),
            ),
        }
        table(
            &[
                "  BACKEND",
                "SLOTS BEFORE",
                "AFTER",
                "GAINED",
                "LOST",
                "ACTIVE FLOWS",
                "THEIR FLOWS",
            ],
            arr(&vip["backends"])
                .iter()
                .map(|b| {
                    vec![
                        format!("  {}", s(&b["address"])),
                        s(&b["slots_before"]),
                        s(&b["slots_after"]),
                        s(&b["gained"]),
                        s(&b["lost"]),
                        s(&b["active_flows"]),
                        s(&b["their_flows"]),
                    ]
                })
                .collect(),
        );
    }
    let unchanged = v["vips_unchanged"].as_u64().unwrap_or(0);
    if unchanged > 0 {
        println!();
        println!("{unchanged} other VIPs: unchanged");
    }
    let f = &v["active_flows"];
    println!();
    println!(
        "active flows: {} would move (their backend removed), {} end (their VIP removed), \
         {} stay on drained backends until they end",
        s(&f["moving"]),
        s(&f["ending"]),
        s(&f["draining"])
    );
}

/// The history, newest first, one row per line of what changed.
fn history(v: &Value, full: bool) {
    let entries = arr(&v["entries"]);
    if entries.is_empty() {
        match v["cluster"].as_str() {
            Some(c) => println!("no change recorded yet in cluster {c}"),
            None => println!("no change recorded yet (history file {})", s(&v["file"])),
        }
        return;
    }
    let mut rows = Vec::new();
    for e in &entries {
        let changes = arr(&e["changes"]);
        let mut lines = changes.iter().map(s);
        rows.push(vec![
            s(&e["revision"]),
            s(&e["time_utc"]),
            s(&e["node"]),
            lines.next().unwrap_or_else(|| "(nothing)".into()),
        ]);
        rows.extend(lines.map(|l| vec![String::new(), String::new(), String::new(), l]));
    }
    table(&["REV", "TIME", "NODE", "WHAT CHANGED"], rows);
    if full {
        for e in &entries {
            println!();
            println!("# revision {}", s(&e["revision"]));
            print!("{}", s(&e["config"]));
        }
    }
}

fn arr(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn status(v: &Value) {
    println!(
        "interface {} ({} XDP, program {}), generation {}, up {} s, pid {}",
        s(&v["iface"]),
        s(&v["mode"]),
        s(&v["prog_id"]),
        s(&v["generation"]),
        s(&v["uptime_seconds"]),
        s(&v["pid"])
    );
    println!(
        "config {}, socket {}, maps {}",
        s(&v["config"]),
        s(&v["socket"]),
        s(&v["pins"])
    );
    println!(
        "seed {}, table size {}, mtu {}, flows idle after {} s (TCP), {} s (UDP)",
        s(&v["seed"]),
        s(&v["table_size"]),
        s(&v["mtu"]),
        s(&v["flow_idle_s"]["tcp"]),
        s(&v["flow_idle_s"]["udp"])
    );
    println!(
        "second chance {} s after a change, echo replies to VIP addresses {}",
        s(&v["second_chance_s"]),
        if v["icmp_echo"] == true { "on" } else { "off" }
    );
    if v["cluster"].is_object() {
        cluster_status(&v["cluster"]);
    }
    let m = &v["memory"];
    let mib = |x: &Value| format!("{:.1} MiB", x.as_f64().unwrap_or(0.0) / (1 << 20) as f64);
    println!(
        "maps {}: rings {} ({} of {} ring entries a generation used), connection table {} ({} flows), tables {}, counters {} ({} CPUs)",
        mib(&m["total"]),
        mib(&m["rings"]),
        s(&m["ring_entries_used"]),
        s(&m["ring_entries"]),
        mib(&m["flows"]),
        s(&m["flow_slots"]),
        mib(&m["tables"]),
        mib(&m["counters"]),
        s(&m["cpus"]),
    );
    for vip in arr(&v["vips"]) {
        println!();
        let id = s(&vip["vip"]);
        let size = s(&vip["table_size"]);
        if id.contains(":*/") {
            println!("VIP {id} (every port of the address), table size {size}");
        } else {
            println!("VIP {id}, table size {size}");
        }
        table(
            &[
                "  BACKEND",
                "WEIGHT",
                "EFFECTIVE",
                "STATE",
                "SLOTS",
                "ACTIVE FLOWS",
                "HEALTH",
                "MAC",
            ],
            arr(&vip["backends"])
                .iter()
                .map(|b| {
                    let h = &b["health"];
                    let health = if h.is_null() {
                        "not checked".to_string()
                    } else {
                        format!(
                            "{} ({}, {} s ago)",
                            s(&h["state"]),
                            s(&h["reason"]),
                            s(&h["since_seconds"])
                        )
                    };
                    vec![
                        format!("  {}", s(&b["address"])),
                        s(&b["weight"]),
                        s(&b["effective_weight"]),
                        s(&b["state"]),
                        s(&b["table_slots"]),
                        s(&b["active_flows"]),
                        health,
                        format!("{} ({})", s(&b["mac"]), s(&b["mac_source"])),
                    ]
                })
                .collect(),
        );
        signals(&vip);
    }
}

/// One line per backend with load signals and, for adaptive VIPs, the model's view.
fn signals(vip: &Value) {
    for b in arr(&vip["backends"]) {
        let sig = &b["signals"];
        if sig.is_null() {
            continue;
        }
        let num =
            |v: &Value, digits: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"));
        let mut line = format!(
            "  {}: {} new flows/s, {} packets/s, probe latency {} ms",
            s(&b["address"]),
            num(&sig["new_flows_per_s"], 1),
            num(&sig["packets_per_s"], 0),
            num(&b["health"]["latency_ms"], 2)
        );
        let a = &b["adaptive"];
        if !a.is_null() {
            line.push_str(&format!(
                "; forecast {}/s, capacity {}/s, weight {} ({})",
                num(&a["forecast_per_s"], 1),
                num(&a["capacity_per_s"], 0),
                s(&a["weight"]),
                s(&a["reason"])
            ));
        }
        println!("{line}");
    }
}

fn stats(v: &Value) {
    println!("generation {}", s(&v["generation"]));
    let mut rows = Vec::new();
    for vip in arr(&v["vips"]) {
        rows.push(vec![
            s(&vip["vip"]),
            s(&vip["packets"]),
            s(&vip["bytes"]),
            s(&vip["new_flows"]),
        ]);
        for b in arr(&vip["backends"]) {
            rows.push(vec![
                format!("  -> {}", s(&b["address"])),
                s(&b["packets"]),
                s(&b["bytes"]),
                s(&b["new_flows"]),
            ]);
        }
    }
    table(&["VIP / BACKEND", "PACKETS", "BYTES", "NEW FLOWS"], rows);
    println!();
    let reasons = v["reasons"].as_object().cloned().unwrap_or_default();
    table(
        &["PACKETS BY OUTCOME", "COUNT"],
        reasons.iter().map(|(k, n)| vec![k.clone(), s(n)]).collect(),
    );
}
