//! Change management on one node, against a real agent: `lbx plan` predicts the slots a
//! change publishes and changes nothing; every change lands in `lbx history` with what it
//! changed, across restarts; `lbx rollback` returns to a revision's configuration as a new
//! change, and refuses a revision it does not keep.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lbx_tests::{Topology, VIP_V4};
use serde_json::Value;

fn topology() -> (Topology, SocketAddr) {
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let topo = Topology::builder()
        .backends(3)
        .vip(vip)
        .build()
        .expect("failed to build the test topology");
    topo.add_vip(vip, &[(1, 1), (2, 1)])
        .expect("configure the VIP");
    (topo, vip)
}

/// What a plan must leave as it was: the generation, every backend's slots, the saved
/// configuration and the history.
fn untouched(topo: &Topology) -> (Value, BTreeMap<String, u64>, String, Value) {
    let status = topo.lbx_json(&["status"]).expect("lbx status");
    let history = topo
        .lbx_json(&["history", "-n", "100", "--full"])
        .expect("lbx history");
    (
        status["generation"].clone(),
        slots(&status),
        std::fs::read_to_string(topo.config_path()).expect("the saved configuration"),
        history["entries"].clone(),
    )
}

/// `table_slots` of every backend of the only VIP in `lbx status`, by address.
fn slots(status: &Value) -> BTreeMap<String, u64> {
    let vips = status["vips"].as_array().expect("status lists VIPs");
    assert_eq!(vips.len(), 1, "{status}");
    vips[0]["backends"]
        .as_array()
        .expect("a VIP lists backends")
        .iter()
        .map(|b| {
            let a = b["address"].as_str().expect("an address").to_owned();
            (a, b["table_slots"].as_u64().expect("table_slots"))
        })
        .collect()
}

/// `lbx --json plan ARGS`, which must change nothing; returns its answer.
fn plan(topo: &Topology, args: &[&str]) -> Value {
    let before = untouched(topo);
    let mut full = vec!["plan"];
    full.extend_from_slice(args);
    let answer = topo.lbx_json(&full).expect("lbx plan");
    let after = untouched(topo);
    assert_eq!(answer["generation"], before.0, "{answer}");
    assert_eq!(before.0, after.0, "`lbx {}` published", full.join(" "));
    assert_eq!(before.1, after.1, "`lbx {}` moved slots", full.join(" "));
    assert_eq!(
        before.2,
        after.2,
        "`lbx {}` wrote the configuration",
        full.join(" ")
    );
    assert_eq!(
        before.3,
        after.3,
        "`lbx {}` wrote the history",
        full.join(" ")
    );
    answer
}

/// The plan's one VIP: its slots after the change by backend, after checking that each
/// backend's gains and losses take it from its slots before to those after, and that the
/// moved slots are the gains.
fn predicted(answer: &Value) -> (BTreeMap<String, u64>, u64) {
    let vips = answer["vips"].as_array().expect("the plan lists VIPs");
    assert_eq!(vips.len(), 1, "{answer}");
    let vip = &vips[0];
    let mut after = BTreeMap::new();
    let mut gained_total = 0;
    for b in vip["backends"].as_array().expect("backends") {
        let n = |k: &str| b[k].as_u64().unwrap_or_else(|| panic!("{k} in {b}"));
        assert_eq!(
            n("slots_before") + n("gained") - n("lost"),
            n("slots_after"),
            "{b}"
        );
        gained_total += n("gained");
        after.insert(b["address"].as_str().unwrap().to_owned(), n("slots_after"));
    }
    let moved = vip["moved"].as_u64().expect("moved");
    assert_eq!(moved, gained_total, "{vip}");
    let size = vip["table_size"].as_u64().expect("table_size");
    let share = vip["moved_share"].as_f64().expect("moved_share");
    assert!(
        (share - moved as f64 / size as f64).abs() < 1e-9,
        "moved_share {share} is not {moved} of {size}"
    );
    (after, moved)
}

/// The slots before in a plan, by backend.
fn slots_before(answer: &Value) -> BTreeMap<String, u64> {
    answer["vips"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter(|b| b["slots_before"].as_u64() != Some(0))
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["slots_before"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The failure `lbx --json ARGS` prints, which must fail.
fn failure(topo: &Topology, args: &[&str]) -> (Option<i32>, Value) {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = topo.lbx_output(&full).expect("run lbx");
    assert!(!out.status.success(), "`lbx {}` succeeded", full.join(" "));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("`lbx {}` printed no JSON error: {e}", full.join(" ")));
    (out.status.code(), v["error"].clone())
}

#[test]
fn plan_predicts_the_slots_its_change_publishes() {
    let (topo, vip) = topology();
    let v = vip.to_string();
    let b = |i: usize| topo.backend_addr(i, vip).to_string();

    let current = slots(&topo.lbx_json(&["status"]).unwrap());
    let answer = plan(&topo, &["backend", "weight", &v, &b(1), "3"]);
    assert_eq!(
        answer["changes"],
        serde_json::json!([format!("VIP {v}/tcp: weight of {}: 1 → 3", b(1))]),
        "{answer}"
    );
    assert_eq!(
        slots_before(&answer),
        current,
        "the plan starts from what runs"
    );
    let (after, moved) = predicted(&answer);
    assert!(moved > 0, "a weight 1 → 3 moves slots: {answer}");
    topo.lbx(&["backend", "weight", &v, &b(1), "3"])
        .expect("the change itself");
    let published = slots(&topo.lbx_json(&["status"]).unwrap());
    assert_eq!(published, after, "the plan said {answer}");
    // Against the published slots: 1:1 is a half each, 3:1 three quarters.
    let share = published[&b(1)] as f64 / published.values().sum::<u64>() as f64;
    assert!((share - 0.75).abs() < 0.02, "{published:?}");

    let answer = plan(&topo, &["backend", "add", &v, &b(3), "--weight", "2"]);
    assert_eq!(
        answer["changes"],
        serde_json::json!([format!("VIP {v}/tcp: backend {} added (weight 2)", b(3))]),
        "{answer}"
    );
    let (after, moved) = predicted(&answer);
    let added = answer["vips"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["address"] == b(3))
        .cloned()
        .unwrap_or_else(|| panic!("no {} in {answer}", b(3)));
    assert_eq!(added["slots_before"], 0, "{added}");
    assert_eq!(added["gained"], added["slots_after"], "{added}");
    assert!(
        moved >= after[&b(3)],
        "at least the new backend's slots move: {answer}"
    );
    topo.lbx(&["backend", "add", &v, &b(3), "--weight", "2"])
        .expect("the change itself");
    assert_eq!(
        slots(&topo.lbx_json(&["status"]).unwrap()),
        after,
        "the plan said {answer}"
    );

    // Active flows: a removed backend's move, a drained one's stay.
    let conns = topo
        .client()
        .open_many(vip, &(42_000..42_030).collect::<Vec<_>>())
        .expect("open connections");
    let active = |addr: &str| -> u64 {
        let list = topo.backend_list().expect("backend list");
        list.as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == addr)
            .and_then(|x| x["active_flows"].as_u64())
            .unwrap_or_else(|| panic!("no {addr} in {list}"))
    };
    let on_2 = active(&b(2));
    assert!(
        on_2 > 0,
        "none of {} connections reached backend 2",
        conns.len()
    );
    let answer = plan(&topo, &["backend", "del", &v, &b(2)]);
    assert_eq!(answer["active_flows"]["moving"], on_2, "{answer}");
    assert_eq!(answer["active_flows"]["draining"], 0, "{answer}");
    let answer = plan(&topo, &["backend", "drain", &v, &b(1)]);
    assert_eq!(
        answer["active_flows"]["draining"],
        active(&b(1)),
        "{answer}"
    );
    assert_eq!(answer["active_flows"]["moving"], 0, "{answer}");
    let answer = plan(&topo, &["vip", "del", &v]);
    assert_eq!(
        answer["active_flows"]["ending"].as_u64(),
        Some(conns.len() as u64),
        "{answer}"
    );
    let text = topo
        .lbx(&["plan", "backend", "del", &v, &b(2)])
        .expect("plan as text");
    eprintln!("lbx plan backend del:\n{text}");
    for words in [
        "nothing was changed",
        &format!("backend {} removed", b(2)),
        "SLOTS BEFORE",
    ] {
        assert!(text.contains(words), "no {words:?} in:\n{text}");
    }
    drop(conns);

    // Refused as the change itself is, and nothing changed.
    for change in [
        vec!["backend", "weight", &v, "10.77.1.99", "5"],
        vec!["backend", "add", &v, &b(1)],
        vec!["vip", "del", "10.77.100.9:80"],
        vec![
            "vip",
            "health",
            &v,
            "--kind",
            "http",
            "--port",
            "80",
            "--timeout-ms",
            "5000",
            "--interval-ms",
            "100",
        ],
    ] {
        let real = failure(&topo, &change);
        let mut planned = vec!["plan"];
        planned.extend_from_slice(&change);
        let before = untouched(&topo);
        let dry = failure(&topo, &planned);
        assert_eq!(
            before,
            untouched(&topo),
            "`lbx {}` changed something",
            planned.join(" ")
        );
        assert_eq!(
            dry,
            real,
            "`lbx {}` and the change itself fail alike",
            planned.join(" ")
        );
    }
    let (code, e) = failure(&topo, &["plan", "vip", "list"]);
    assert_eq!(
        (code, e["kind"].as_str()),
        (Some(3), Some("invalid")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("vip_list is not a change"),
        "{e}"
    );
    let (code, e) = failure(&topo, &["plan", "backend", "drain", &v, &b(1), "--wait"]);
    assert_eq!((code, e["kind"].as_str()), (Some(2), Some("usage")), "{e}");
}

/// `lbx history --json`'s entries, newest first.
fn history(topo: &Topology, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["history"];
    full.extend_from_slice(args);
    let v = topo.lbx_json(&full).expect("lbx history");
    v["entries"].as_array().expect("entries").clone()
}

fn revision(entry: &Value) -> u64 {
    entry["revision"].as_u64().expect("a revision")
}

/// `lbx backend list --json` as (address, weight, drain), sorted.
fn backends(topo: &Topology) -> Vec<(IpAddr, u64, bool)> {
    let mut out: Vec<(IpAddr, u64, bool)> = topo
        .backend_list()
        .expect("backend list")
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().parse().unwrap(),
                b["weight"].as_u64().unwrap(),
                b["drain"].as_bool().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn history_records_each_change_and_rollback_returns_to_one() {
    let (mut topo, vip) = topology();
    let v = vip.to_string();
    let addresses: Vec<IpAddr> = (1..=3).map(|i| topo.backend_addr(i, vip)).collect();
    let addr = |i: usize| addresses[i - 1];
    let b = |i: usize| addr(i).to_string();
    let start = revision(&history(&topo, &["-n", "1"])[0]);

    topo.lbx(&["backend", "weight", &v, &b(1), "5"]).unwrap();
    let first = backends(&topo);
    topo.lbx(&["backend", "add", &v, &b(3), "--weight", "2"])
        .unwrap();
    topo.lbx(&["backend", "drain", &v, &b(2)]).unwrap();

    let entries = history(&topo, &["-n", "3"]);
    let listed: Vec<(u64, Value)> = entries
        .iter()
        .map(|e| (revision(e), e["changes"].clone()))
        .collect();
    let vt = format!("{v}/tcp");
    assert_eq!(
        listed,
        vec![
            (
                start + 3,
                serde_json::json!([format!("VIP {vt}: backend {} drained (no new flows)", b(2))])
            ),
            (
                start + 2,
                serde_json::json!([format!("VIP {vt}: backend {} added (weight 2)", b(3))])
            ),
            (
                start + 1,
                serde_json::json!([format!("VIP {vt}: weight of {}: 1 → 5", b(1))])
            ),
        ]
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for e in &entries {
        assert_eq!(e["node"], hostname.trim(), "{e}");
        assert!(
            e.get("config").is_none(),
            "--json without --full has no TOML: {e}"
        );
        assert!(e["time_utc"].as_str().unwrap().ends_with(" UTC"), "{e}");
    }
    let text = topo.lbx(&["history", "-n", "3"]).expect("history as text");
    eprintln!("lbx history -n 3:\n{text}");
    assert!(
        text.contains(&format!("weight of {}: 1 → 5", b(1))) && text.starts_with("REV"),
        "{text}"
    );

    // Back to the first of the three: the configuration it had, as a new revision.
    let answer = topo
        .lbx_json(&["rollback", &(start + 1).to_string()])
        .expect("rollback");
    assert_eq!(answer["revision"], start + 4, "{answer}");
    assert_eq!(
        backends(&topo),
        first,
        "the backends of revision {}",
        start + 1
    );
    assert_eq!(
        first,
        vec![(addr(1), 5, false), (addr(2), 1, false)],
        "revision {} as it was made",
        start + 1
    );
    let full = history(&topo, &["-n", "100", "--full"]);
    let of = |rev: u64| full.iter().find(|e| revision(e) == rev).unwrap();
    assert_eq!(
        std::fs::read_to_string(topo.config_path()).unwrap(),
        of(start + 1)["config"].as_str().unwrap(),
        "the saved configuration is revision {}'s",
        start + 1
    );
    assert_eq!(
        of(start + 4)["changes"],
        serde_json::json!([
            format!("rollback to revision {}", start + 1),
            format!("VIP {vt}: backend {} removed", b(3)),
            format!(
                "VIP {vt}: backend {} takes new flows again (drain undone)",
                b(2)
            ),
        ])
    );

    // Revisions it does not have: refused, naming what it keeps, and nothing changes.
    let status = topo.lbx_json(&["status"]).unwrap()["generation"].clone();
    for bad in ["0", &(start + 50).to_string()] {
        let (code, e) = failure(&topo, &["rollback", bad]);
        assert_eq!(
            (code, e["kind"].as_str()),
            (Some(4), Some("not_found")),
            "{e}"
        );
        let m = e["message"].as_str().unwrap();
        assert!(
            m.contains(&format!("revision {bad} is not in the history"))
                && m.contains(&format!("to {}", start + 4)),
            "{m}"
        );
        assert_eq!(failure(&topo, &["plan", "rollback", bad]), (code, e));
    }
    assert_eq!(topo.lbx_json(&["status"]).unwrap()["generation"], status);
    assert_eq!(history(&topo, &["-n", "1"]).len(), 1);
    assert_eq!(revision(&history(&topo, &["-n", "1"])[0]), start + 4);

    // Across a restart, with a line of the file damaged: the agent starts all the same,
    // adds no entry for the configuration it had, and counts on.
    topo.stop_agent().expect("stop the agent");
    let file = topo.dir().join("lbx.toml.history");
    let mut text = std::fs::read_to_string(&file).expect("the history file");
    text.push_str("{\"revision\": 12, \"ti");
    std::fs::write(&file, text).unwrap();
    topo.start_agent_with(&[]).expect("restart the agent");
    assert_eq!(revision(&history(&topo, &["-n", "1"])[0]), start + 4);
    topo.lbx(&["backend", "weight", &v, &b(2), "7"]).unwrap();
    let newest = &history(&topo, &["-n", "1"])[0];
    assert_eq!(revision(newest), start + 5, "{newest}");
    topo.lbx(&["rollback", &(start + 3).to_string()])
        .expect("a rollback to the drained state");
    assert_eq!(
        backends(&topo),
        vec![(addr(1), 5, false), (addr(2), 1, true), (addr(3), 2, false)]
    );
}
