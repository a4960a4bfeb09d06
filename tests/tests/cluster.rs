//! The rig of lbx's cluster mode: several lb nodes behind an ECMP router ([`Fleet`]) and a
//! real etcd cluster ([`EtcdCluster`]). Host tier only: needs etcd (see xtask's `HOST_ONLY`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lbx_tests::etcd::{EtcdCluster, Tls};
use lbx_tests::fleet::{self, Fleet};
use lbx_tests::topology::scaled;
use lbx_tests::{Connection, DIRECT_PORT, VIP_V4, VIP_V6, tally};

/// How long a write may take to succeed after the leader died: a new election takes an
/// election timeout (1 s) and a little more.
const REELECTION: Duration = Duration::from_secs(10);

/// `etcdctl put` until it succeeds, within `limit`; how long it took.
fn put_within(etcd: &mut EtcdCluster, key: &str, value: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match etcd.put(key, value) {
            Ok(()) => return started.elapsed(),
            Err(e) if started.elapsed() > limit => {
                panic!("put {key} still failed after {limit:?}: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn survives_member_loss(tls: Option<&Tls>) {
    let what = if tls.is_some() { "TLS" } else { "plain" };
    let started = Instant::now();
    let mut etcd = EtcdCluster::start(3, tls).expect("start a 3-member etcd cluster");
    eprintln!("{what}: 3 members healthy after {:?}", started.elapsed());
    etcd.put("/lbx/test/a", "1")
        .expect("put on a whole cluster");
    assert_eq!(etcd.get("/lbx/test/a").expect("get").as_deref(), Some("1"));

    etcd.kill_member(1).expect("kill member 1");
    let took = put_within(&mut etcd, "/lbx/test/b", "2", REELECTION);
    eprintln!("{what}: a write with 2 of 3 members took {took:?}");
    assert_eq!(etcd.get("/lbx/test/b").expect("get").as_deref(), Some("2"));

    etcd.kill_member(2).expect("kill member 2");
    let err = etcd
        .put("/lbx/test/c", "3")
        .expect_err("a write with 1 of 3 members (no quorum) must fail");
    eprintln!("{what}: a write without quorum: {err:#}");

    etcd.start_member(1).expect("restart member 1");
    etcd.start_member(2).expect("restart member 2");
    let took = put_within(&mut etcd, "/lbx/test/d", "4", REELECTION);
    eprintln!("{what}: after the restarts a write took {took:?}");
    for (key, value) in [
        ("/lbx/test/a", "1"),
        ("/lbx/test/b", "2"),
        ("/lbx/test/d", "4"),
    ] {
        assert_eq!(
            etcd.get(key).expect("get").as_deref(),
            Some(value),
            "{what}: {key} after the restarts"
        );
    }
    // The write that timed out without quorum may still appear now: the lone member kept it
    // in its log, and a returning quorum may commit it (Raft promises no more).
}

#[test]
fn etcd_cluster_survives_member_loss() {
    survives_member_loss(None);
    let tls = Tls::for_members(3).expect("certificates");
    survives_member_loss(Some(&tls));

    // Authentication: the user reads and writes under /lbx/, a wrong password is refused
    // in words that say so.
    let mut etcd = EtcdCluster::start(3, Some(&tls)).expect("start etcd with TLS");
    etcd.enable_auth("rootpw", "lbx", "lbxpw")
        .expect("enable authentication");
    let ok = etcd
        .etcdctl_as("lbx", "lbxpw", &["put", "/lbx/test/auth", "yes"])
        .expect("etcdctl");
    assert!(
        ok.status.success(),
        "the user could not write under /lbx/: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let outside = etcd
        .etcdctl_as("lbx", "lbxpw", &["put", "/other", "no"])
        .expect("etcdctl");
    assert!(
        !outside.status.success(),
        "the user could write outside /lbx/"
    );
    let wrong = etcd
        .etcdctl_as("lbx", "wrong", &["get", "/lbx/test/auth"])
        .expect("etcdctl");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && stderr.contains("authentication failed"),
        "a wrong password must be refused as such: {} {stderr}",
        wrong.status
    );
    assert_eq!(
        etcd.get("/lbx/test/auth").expect("get as root").as_deref(),
        Some("yes")
    );
}

/// Connections per family kept open across the fleet.
const OPEN: usize = 150;
/// New connections per family after a node left.
const FRESH: usize = 60;

/// The client's side of `conn` as the nodes see it.
fn client_end(fleet: &Fleet, conn: &Connection) -> SocketAddr {
    fleet.client_end(conn)
}

/// The entry of the TCP VIP `vip` in the JSON of `lbx stats` or `lbx status`.
fn tcp_vip(json: &serde_json::Value, vip: SocketAddr) -> Option<&serde_json::Value> {
    let name = format!("{vip}/tcp");
    json["vips"]
        .as_array()?
        .iter()
        .find(|v| v["vip"] == name.as_str())
}

/// `lbx stats`' packet count of the TCP VIP `vip` on node `i`.
fn vip_packets(fleet: &Fleet, i: usize, vip: SocketAddr) -> u64 {
    let stats = fleet.lbx_json(i, &["stats"]).expect("lbx stats");
    tcp_vip(&stats, vip)
        .and_then(|v| v["packets"].as_u64())
        .unwrap_or_else(|| {
            panic!("node {i}: no packets of {vip}/tcp in `lbx stats --json`: {stats}")
        })
}

/// Three single-node agents on one configuration behind an ECMP router: the router spreads
/// the flows over all of them, all three give every flow the same backend (the one it
/// reached), and when a node leaves (its route withdrawn, its agent killed) the flows it
/// carried go on through the others: no open connection breaks, new ones are served.
#[test]
fn fleet_ecmp_spreads_flows_and_nodes_agree() {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let vips = [vip4, vip6];
    let backends = vec![(1, 1), (2, 1), (3, 1)];
    let config = fleet::config_toml(&[(vip4, backends.clone()), (vip6, backends)]);
    let started = Instant::now();
    let mut fleet = Fleet::builder()
        .vip(vip4)
        .vip(vip6)
        .config(config)
        .build(None)
        .expect("build the fleet");
    let nodes = fleet.node_count();
    eprintln!("fleet of {nodes} nodes built in {:?}", started.elapsed());

    let open = scaled(OPEN, 30);
    let ports: Vec<u16> = (40_000..).take(open).collect();
    let mut conns = Vec::new();
    for vip in vips {
        conns.extend(
            fleet
                .client()
                .open_many(vip, &ports)
                .expect("open connections"),
        );
    }

    // Per node and family, the connections whose packets the router sends there.
    let mut carried = vec![[0u64; 2]; nodes];
    let checked = Instant::now();
    for conn in &conns {
        let src = client_end(&fleet, conn);
        let flows: Vec<_> = (1..=nodes)
            .map(|i| fleet.flow(i, src, conn.dst()).expect("lbx flow"))
            .collect();
        let answered = conn.first_answer().expect("asked once");
        for (i, flow) in flows.iter().enumerate() {
            let name = fleet.backend_at(flow.backend).map(|b| b.name.as_str());
            assert_eq!(
                name,
                Some(answered),
                "node {}: `lbx flow {src} {}` names {} ({}), but {answered} answered the \
                 connection; every node: {flows:?}",
                i + 1,
                conn.dst(),
                flow.backend,
                flow.source
            );
        }
        // The node the router sent it to holds it in its connection table; the others
        // only computed where it goes.
        let holders: Vec<usize> = (1..=nodes)
            .filter(|&i| flows[i - 1].source == "connection table")
            .collect();
        let [chosen] = holders[..] else {
            panic!(
                "{src} -> {}: exactly one node should hold it in its connection table: \
                 {flows:?}",
                conn.dst()
            );
        };
        carried[chosen - 1][usize::from(conn.dst().is_ipv6())] += 1;
    }
    eprintln!(
        "{} connections, each checked on {nodes} nodes in {:?}; carried by node (v4, v6): \
         {carried:?}; backends: {:?}",
        conns.len(),
        checked.elapsed(),
        tally(
            &conns
                .iter()
                .map(|c| c.first_answer().unwrap_or("?"))
                .collect::<Vec<_>>()
        )
    );
    for (f, vip) in vips.iter().enumerate() {
        // An even share is open / nodes; a third of it leaves room for any fair hash.
        let floor = (open / nodes / 3) as u64;
        for i in 1..=nodes {
            let n = carried[i - 1][f];
            assert!(
                n >= floor,
                "{vip}: the router sent {n} of {open} flows to node {i} (at least {floor} \
                 expected): {carried:?}"
            );
            // Each carried connection sent its SYN, handshake ACK and request through it.
            let packets = vip_packets(&fleet, i, *vip);
            assert!(
                packets >= 3 * n,
                "{vip}: node {i} counts {packets} packets for the {n} connections it carried"
            );
        }
    }

    // Node 2 leaves: its route first, as BGP would withdraw it, then its agent dies.
    fleet.withdraw_route(2).expect("withdraw node 2's route");
    fleet.kill_agent(2).expect("kill node 2's agent");
    let mut broken = Vec::new();
    let mut moved = Vec::new();
    for conn in &mut conns {
        let was = conn.first_answer().expect("asked once").to_owned();
        match conn.ask() {
            Ok(now) if now == was => {}
            Ok(now) => moved.push(format!("{} from {was} to {now}", conn.src_port())),
            Err(e) => broken.push(format!("{:#}", e)),
        }
    }
    assert!(
        broken.is_empty() && moved.is_empty(),
        "after node 2 left: {} of {} open connections broke, {} moved: {broken:?} {moved:?}",
        broken.len(),
        conns.len(),
        moved.len()
    );

    let fresh = scaled(FRESH, 20);
    let fresh_ports: Vec<u16> = (41_000..).take(fresh).collect();
    for vip in vips {
        let answers = fleet
            .client()
            .ask_many(vip, &fresh_ports)
            .expect("new connections");
        for (port, answer) in fresh_ports.iter().zip(&answers) {
            let src = SocketAddr::new(fleet.client_addr(vip), *port);
            // Only running agents are asked: a new flow the router still sent to node 2
            // (whose balancer serves on without its agent) is held by none of them.
            let holders = fleet.holders(src, vip).expect("lbx flow");
            let [chosen] = holders[..] else {
                panic!("{src} -> {vip}: held by nodes {holders:?}, not by exactly one of 1 and 3");
            };
            let flow = fleet.flow(chosen, src, vip).expect("lbx flow");
            let name = fleet.backend_at(flow.backend).map(|b| b.name.as_str());
            assert_eq!(
                name,
                Some(answer.as_str()),
                "{src} -> {vip}: node {chosen} says {flow:?}, {answer} answered"
            );
        }
    }
}

/// Whether a TCP connection from `ns` to `addr` opens within half a second.
fn reaches(ns: &lbx_tests::netns::Netns, addr: SocketAddr) -> bool {
    ns.run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
        .expect("run in the namespace")
}

/// The nodes of a fleet built with etcd reach every member on their control interface, and
/// a cut node reaches none until it is healed.
#[test]
fn fleet_nodes_reach_etcd_and_can_be_cut_off() {
    let etcd = EtcdCluster::start(3, None).expect("start etcd");
    let fleet = Fleet::builder()
        .nodes(2)
        .backends(1)
        .vip(SocketAddr::new(VIP_V4.into(), 80))
        .without_agents()
        .build(Some(&etcd))
        .expect("build the fleet");
    for i in 1..=fleet.node_count() {
        for e in etcd.endpoints() {
            assert!(
                reaches(&fleet.node(i).netns, e),
                "node {i} cannot reach etcd at {e}"
            );
        }
    }
    let port = fleet
        .control_port(1)
        .expect("node 1 joined etcd's network")
        .clone();
    etcd.cut(&port).expect("cut node 1 off");
    for e in etcd.endpoints() {
        assert!(
            !reaches(&fleet.node(1).netns, e),
            "node 1 reaches etcd at {e} while cut off"
        );
        assert!(
            reaches(&fleet.node(2).netns, e),
            "node 2 lost etcd at {e} when node 1 was cut"
        );
    }
    etcd.heal(&port).expect("heal node 1");
    for e in etcd.endpoints() {
        assert!(
            reaches(&fleet.node(1).netns, e),
            "node 1 cannot reach etcd at {e} once healed"
        );
    }
}

// ---- cluster mode: `lbx run --cluster` on every node ----

/// The cluster's name in the tests.
const CLUSTER: &str = "t";
/// The nodes' lease TTL: a dead leader's election ends this long after its last renewal.
const LEASE_TTL_S: u64 = 3;
/// How long a change may take to reach every node before the test calls it lost.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);

/// `lbx run`'s cluster arguments of node `i`.
fn cluster_args(etcd: &EtcdCluster, i: usize) -> Vec<String> {
    fleet::cluster_args(etcd, CLUSTER, i, LEASE_TTL_S)
}

/// Three nodes in cluster mode on `etcd`, serving `vip4` and `vip6` over three backends of
/// weight 1; node 1's file seeds the cluster.
fn cluster_fleet(etcd: &EtcdCluster, vip4: SocketAddr, vip6: SocketAddr) -> Fleet {
    let backends = vec![(1, 1), (2, 1), (3, 1)];
    let config = fleet::config_toml(&[(vip4, backends.clone()), (vip6, backends)]);
    let mut b = Fleet::builder().vip(vip4).vip(vip6).config(config);
    for i in 1..=3 {
        b = b.node_args(i, cluster_args(etcd, i));
    }
    b.build(Some(etcd))
        .expect("build the fleet in cluster mode")
}

/// Node `i`'s `cluster` part of `lbx status --json`.
fn cluster_status(fleet: &Fleet, i: usize) -> serde_json::Value {
    fleet.cluster_status(i).expect("lbx status")
}

/// The configuration revision node `i` serves.
fn served_revision(fleet: &Fleet, i: usize) -> u64 {
    fleet.served_revision(i).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits until node `i` serves revision `rev` or later; how long that took.
fn wait_revision(fleet: &Fleet, i: usize, rev: u64, limit: Duration) -> Duration {
    fleet
        .wait_revision(i, rev, limit)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits until `f` holds, polling, within `limit`; how long it took.
fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    fleet::wait_until(what, limit, || Ok(f())).unwrap_or_else(|e| panic!("{e:#}"))
}

type Table = Vec<(String, String, String, u64, String)>;

/// The configuration and decisions revisions node `i` serves, and each backend's weight,
/// slots and state there, all from one status.
fn served(fleet: &Fleet, i: usize) -> ((u64, u64), Table) {
    let status = fleet.lbx_json(i, &["status"]).expect("lbx status");
    let c = &status["cluster"];
    let revisions = (
        c["revision"].as_u64().unwrap_or_default(),
        c["decisions_revision"].as_u64().unwrap_or_default(),
    );
    let mut table = Vec::new();
    for v in status["vips"].as_array().expect("vips") {
        for b in v["backends"].as_array().expect("backends") {
            table.push((
                v["vip"].as_str().unwrap_or_default().to_owned(),
                b["address"].as_str().unwrap_or_default().to_owned(),
                b["effective_weight"].to_string(),
                b["table_slots"].as_u64().unwrap_or_default(),
                b["state"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    (revisions, table)
}

/// Waits until `nodes` serve the same configuration and decisions revisions, and checks
/// that they serve the same tables then: the same revisions must make the same tables.
fn assert_same_tables(fleet: &Fleet, nodes: &[usize], what: &str) {
    let mut last = Vec::new();
    wait_until(
        &format!("nodes {nodes:?} serving the same revisions ({what})"),
        PROPAGATION_LIMIT,
        || {
            last = nodes.iter().map(|&i| served(fleet, i)).collect();
            last.iter().all(|(r, _)| *r == last[0].0)
        },
    );
    for (i, (_, table)) in nodes.iter().zip(&last).skip(1) {
        assert_eq!(
            &last[0].1, table,
            "{what}: nodes {} and {i} serve revisions {:?} with different tables",
            nodes[0], last[0].0
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Over TLS with client certificates: a change on any node reaches every node (the time
/// from the CLI's answer to the last node serving it is measured); every node maps flows
/// to the same backends, and real connections through the router land there; two nodes
/// changing at once lose nothing (the loser is told); a malformed document is refused
/// whole and repaired by a rollback; a node cut off from etcd serves its last revision,
/// says so, and catches up when it is back.
#[test]
fn cluster_shares_changes_over_tls() {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let tls = Tls::for_members(3).expect("certificates");
    let mut etcd = EtcdCluster::start(3, Some(&tls)).expect("start etcd with TLS");
    let fleet = cluster_fleet(&etcd, vip4, vip6);

    let first = served_revision(&fleet, 1);
    for i in 2..=3 {
        assert_eq!(
            served_revision(&fleet, i),
            first,
            "node {i} joined on another revision"
        );
    }
    let c = cluster_status(&fleet, 1);
    assert_eq!(c["state"], "connected", "{c}");
    assert_eq!(c["tls"], true, "{c}");

    // Propagation: each change on one node, timed until the other two serve it.
    let changes = scaled(30, 10);
    let mut lags = Vec::new();
    let b2 = fleet.backend(2).addr_like(vip4.ip()).to_string();
    for k in 0..changes {
        let on = k % 3 + 1;
        let weight = (k % 5 + 1).to_string();
        let answer = fleet
            .lbx_json(on, &["backend", "weight", &vip4.to_string(), &b2, &weight])
            .expect("lbx backend weight");
        let rev = answer["revision"]
            .as_u64()
            .expect("a cluster change names its revision");
        let lag = (1..=3)
            .filter(|&i| i != on)
            .map(|i| wait_revision(&fleet, i, rev, PROPAGATION_LIMIT))
            .max()
            .expect("two other nodes");
        lags.push(lag);
    }
    lags.sort();
    eprintln!(
        "propagation over {changes} changes (CLI answer to the last node serving it, polled): \
         p50 {:?}, p99 {:?}, max {:?}",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().unwrap()
    );

    // Every node gives every flow the same backend, and connections land there.
    let ports: Vec<u16> = (42_000..).take(scaled(60, 20)).collect();
    for vip in [vip4, vip6] {
        let conns = fleet
            .client()
            .open_many(vip, &ports)
            .expect("open connections");
        for conn in &conns {
            let src = client_end(&fleet, conn);
            let flows: Vec<_> = (1..=3)
                .map(|i| fleet.flow(i, src, conn.dst()).expect("lbx flow"))
                .collect();
            for flow in &flows {
                assert_eq!(
                    fleet.backend_at(flow.backend).map(|b| b.name.as_str()),
                    conn.first_answer(),
                    "{src} -> {vip}: nodes say {flows:?}"
                );
            }
        }
    }
    assert_same_tables(&fleet, &[1, 2, 3], "after the changes");

    // Two operators at once, on nodes 1 and 2, each on a backend of its own; a change told
    // "changed meanwhile" is retried, as an operator would.
    let rounds = scaled(12, 6);
    let b1 = fleet.backend(1).addr_like(vip4.ip()).to_string();
    let b3 = fleet.backend(3).addr_like(vip4.ip()).to_string();
    let run = |node: usize, backend: &str| {
        let mut conflicts = 0;
        for k in 0..rounds {
            let weight = (10 + k).to_string();
            let args = ["backend", "weight", &vip4.to_string(), backend, &weight];
            loop {
                let out = fleet.cli(node).output(&args).expect("lbx");
                if out.status.success() {
                    break;
                }
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(5), "node {node}: {err}");
                assert!(err.contains("changed meanwhile"), "node {node}: {err}");
                conflicts += 1;
                assert!(conflicts < 10 * rounds, "node {node}: retried too often");
            }
        }
        conflicts
    };
    let conflicts: Vec<usize> = std::thread::scope(|s| {
        let a = s.spawn(|| run(1, &b1));
        let b = s.spawn(|| run(2, &b3));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let last = (10 + rounds - 1) as u64;
    let rev = (1..=3).map(|i| served_revision(&fleet, i)).max().unwrap();
    for i in 1..=3 {
        wait_revision(&fleet, i, rev, PROPAGATION_LIMIT);
        let list = fleet
            .lbx_json(i, &["backend", "list", &vip4.to_string()])
            .expect("list");
        let weight = |addr: &str| {
            list.as_array()
                .and_then(|l| l.iter().find(|b| b["address"] == addr))
                .and_then(|b| b["weight"].as_u64())
        };
        assert_eq!(
            weight(&b1),
            Some(last),
            "node {i}: node 1's last change lost: {list}"
        );
        assert_eq!(
            weight(&b3),
            Some(last),
            "node {i}: node 2's last change lost: {list}"
        );
    }
    eprintln!(
        "concurrent changes: {rounds} each on nodes 1 and 2, conflicts retried: {conflicts:?}"
    );
    let history = fleet
        .lbx_json(3, &["history", "-n", "100"])
        .expect("lbx history");
    let entries = history["entries"].as_array().expect("entries");
    for (node, backend) in [(1, &b1), (2, &b3)] {
        let made = entries
            .iter()
            .filter(|e| {
                e["node"] == fleet::node_name(node).as_str()
                    && e["changes"].to_string().contains(backend.as_str())
            })
            .count();
        assert_eq!(
            made, rounds,
            "node {node}'s changes in the history: {history}"
        );
    }

    // A malformed document, written by hand: refused whole, the last good one served.
    let good = served_revision(&fleet, 1);
    let generation = fleet.lbx_json(1, &["stats"]).unwrap()["generation"].clone();
    etcd.put(&format!("/lbx/{CLUSTER}/config"), "this is [not toml")
        .expect("etcdctl put");
    for i in 1..=3 {
        wait_until(
            &format!("node {i} refuses the malformed revision"),
            PROPAGATION_LIMIT,
            || cluster_status(&fleet, i)["refused"].is_object(),
        );
        assert_eq!(served_revision(&fleet, i), good, "node {i}");
    }
    assert_eq!(
        fleet.lbx_json(1, &["stats"]).unwrap()["generation"],
        generation
    );
    let answers = fleet
        .client()
        .ask_many(vip4, &[43_000, 43_001])
        .expect("still served");
    assert_eq!(answers.len(), 2);
    let repaired = fleet
        .lbx_json(2, &["rollback", &good.to_string()])
        .expect("lbx rollback repairs the document");
    let rev = repaired["revision"].as_u64().expect("revision");
    for i in 1..=3 {
        wait_revision(&fleet, i, rev, PROPAGATION_LIMIT);
        assert!(cluster_status(&fleet, i)["refused"].is_null(), "node {i}");
    }

    // Node 3 cut off from etcd: it serves its last revision and says so; back, it catches up.
    let port = fleet
        .control_port(3)
        .expect("node 3 on the control network")
        .clone();
    etcd.cut(&port).expect("cut node 3 off");
    wait_until("node 3 says it is cut off", PROPAGATION_LIMIT, || {
        cluster_status(&fleet, 3)["cut_off"].is_object()
    });
    let before = served_revision(&fleet, 3);
    let during = fleet
        .lbx_json(1, &["backend", "weight", &vip4.to_string(), &b2, "7"])
        .expect("a change while node 3 is cut off")["revision"]
        .as_u64()
        .unwrap();
    wait_revision(&fleet, 2, during, PROPAGATION_LIMIT);
    assert_eq!(
        served_revision(&fleet, 3),
        before,
        "node 3 cannot have heard of it"
    );
    let refused = fleet
        .cli(3)
        .output(&["backend", "weight", &vip4.to_string(), &b2, "8"])
        .expect("lbx");
    assert_eq!(
        refused.status.code(),
        Some(10),
        "a change on the cut-off node: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let text = fleet.lbx(3, &["status"]).expect("lbx status");
    assert!(text.contains("degraded"), "{text}");
    etcd.heal(&port).expect("heal node 3");
    let caught_up = wait_revision(&fleet, 3, during, Duration::from_secs(30));
    eprintln!("node 3 served the revision it missed {caught_up:?} after its link came back");
    wait_until("node 3 connected again", PROPAGATION_LIMIT, || {
        cluster_status(&fleet, 3)["state"] == "connected"
    });
    assert_same_tables(&fleet, &[1, 3], "node 3 back from its partition");
}

/// The node that holds the weights election, among `nodes`, as their status says.
fn leader_among(fleet: &Fleet, nodes: &[usize]) -> Option<usize> {
    fleet.leader_among(nodes).expect("lbx status")
}

/// A change on node `i` that must succeed within `limit` (etcd may be electing a leader);
/// how many attempts it took and its revision.
fn change_within(fleet: &Fleet, i: usize, args: &[&str], limit: Duration) -> (usize, u64) {
    fleet
        .change_within(i, args, limit)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Checks that `n` nodes stand in the weights election (its keys in etcd), over a few
/// samples: a candidacy that etcd dropped and the node made again would show as a gap.
fn assert_candidates(etcd: &mut EtcdCluster, n: usize, what: &str) {
    for _ in 0..5 {
        let out = etcd
            .etcdctl(&[
                "get",
                "--prefix",
                "--keys-only",
                &format!("/lbx/{CLUSTER}/leader/"),
            ])
            .expect("etcdctl get");
        let keys: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(keys.len(), n, "{what}: {keys:?}");
        std::thread::sleep(Duration::from_millis(400));
    }
}

/// Hundreds of connections over three nodes; the weights leader's node leaves (route
/// withdrawn, agent killed): no connection breaks, another node leads within the lease's
/// TTL, and the two left serve identical tables. Then etcd loses one member (changes go
/// on), a second (changes are refused as unavailable, serving goes on, status says
/// degraded), and gets both back (the nodes converge).
#[test]
fn cluster_survives_node_leader_and_etcd_member_loss() {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let mut etcd = EtcdCluster::start(3, None).expect("start etcd");
    let mut fleet = cluster_fleet(&etcd, vip4, vip6);
    let vip_arg = vip4.to_string();
    fleet
        .lbx(
            1,
            &[
                "vip",
                "health",
                &vip_arg,
                "--kind",
                "tcp",
                "--port",
                &DIRECT_PORT.to_string(),
                "--interval-ms",
                "200",
            ],
        )
        .expect("lbx vip health");
    let rev = fleet
        .lbx_json(1, &["vip", "adaptive", &vip_arg])
        .expect("lbx vip adaptive")["revision"]
        .as_u64()
        .expect("revision");
    for i in 1..=3 {
        wait_revision(&fleet, i, rev, PROPAGATION_LIMIT);
    }
    let mut leader = None;
    wait_until("a weights leader", PROPAGATION_LIMIT, || {
        leader = leader_among(&fleet, &[1, 2, 3]);
        leader.is_some()
    });
    let leader = leader.expect("found");
    let leading: Vec<usize> = (1..=3)
        .filter(|&i| cluster_status(&fleet, i)["is_leader"] == true)
        .collect();
    assert_eq!(leading, [leader], "exactly one node leads the weights");
    // Every node stands in etcd's election: one key each under the election's prefix.
    assert_candidates(&mut etcd, 3, "the candidates in the weights election");
    let survivors: Vec<usize> = (1..=3).filter(|&i| i != leader).collect();
    wait_until(
        "every node applies the leader's decisions",
        PROPAGATION_LIMIT,
        || {
            let d: Vec<_> = (1..=3)
                .map(|i| {
                    cluster_status(&fleet, i)["decisions_revision"]
                        .as_u64()
                        .unwrap_or(0)
                })
                .collect();
            d[0] > 0 && d.iter().all(|x| *x == d[0])
        },
    );

    let open = scaled(OPEN, 30);
    let ports: Vec<u16> = (44_000..).take(open).collect();
    let mut conns = Vec::new();
    for vip in [vip4, vip6] {
        conns.extend(
            fleet
                .client()
                .open_many(vip, &ports)
                .expect("open connections"),
        );
    }
    fleet
        .withdraw_route(leader)
        .expect("withdraw the leader's route");
    fleet.kill_agent(leader).expect("kill the leader's agent");
    let killed = Instant::now();
    let mut broken = Vec::new();
    for conn in &mut conns {
        let was = conn.first_answer().expect("asked").to_owned();
        match conn.ask() {
            Ok(now) if now == was => {}
            Ok(now) => broken.push(format!("{} moved from {was} to {now}", conn.src_port())),
            Err(e) => broken.push(format!("{}: {e:#}", conn.src_port())),
        }
    }
    eprintln!(
        "node {leader} (the weights leader) left: {} of {} established connections kept",
        conns.len() - broken.len(),
        conns.len()
    );
    assert!(broken.is_empty(), "connections broken or moved: {broken:?}");
    let mut next = None;
    wait_until(
        "a new weights leader",
        Duration::from_secs(LEASE_TTL_S + 10),
        || {
            next = leader_among(&fleet, &survivors);
            next.is_some()
        },
    );
    eprintln!(
        "weights leader failover: node {} leads {:?} after node {leader} was killed (lease TTL \
         {LEASE_TTL_S} s)",
        next.expect("found"),
        killed.elapsed()
    );
    assert_candidates(
        &mut etcd,
        2,
        "the candidates once the dead leader's lease ended",
    );
    let [a, b] = survivors[..] else {
        unreachable!()
    };
    assert_same_tables(&fleet, &[a, b], "the survivors, under the new leader");
    let answers = fleet
        .client()
        .ask_many(vip4, &[45_000, 45_001, 45_002])
        .expect("new ones");
    assert_eq!(answers.len(), 3);

    // etcd loses a member: changes go on.
    let b2 = fleet.backend(2).addr_like(vip4.ip()).to_string();
    etcd.kill_member(1).expect("kill etcd member 1");
    let (attempts, rev) = change_within(
        &fleet,
        a,
        &["backend", "weight", &vip_arg, &b2, "3"],
        REELECTION,
    );
    wait_revision(&fleet, b, rev, PROPAGATION_LIMIT);
    eprintln!("with 2 of 3 etcd members: a change took {attempts} attempt(s)");

    // A second: no quorum. Changes are refused clearly, serving goes on.
    etcd.kill_member(2).expect("kill etcd member 2");
    let started = Instant::now();
    let out = fleet
        .cli(a)
        .output(&["backend", "weight", &vip_arg, &b2, "4"])
        .expect("lbx");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("without quorum, after {:?}: {err}", started.elapsed());
    assert_eq!(out.status.code(), Some(10), "{err}");
    assert!(err.contains("changed nothing"), "{err}");
    wait_until("node a says it is degraded", PROPAGATION_LIMIT, || {
        fleet
            .lbx(a, &["status"])
            .is_ok_and(|t| t.contains("degraded"))
    });
    for conn in &mut conns {
        conn.ask().expect("served without quorum");
    }
    assert_eq!(served_revision(&fleet, a), rev);

    etcd.start_member(1).expect("restart member 1");
    etcd.start_member(2).expect("restart member 2");
    for i in [a, b] {
        wait_until(
            &format!("node {i} connected again"),
            Duration::from_secs(30),
            || cluster_status(&fleet, i)["state"] == "connected",
        );
    }
    let (_, rev) = change_within(
        &fleet,
        b,
        &["backend", "weight", &vip_arg, &b2, "5"],
        REELECTION,
    );
    wait_revision(&fleet, a, rev, PROPAGATION_LIMIT);
    assert_same_tables(&fleet, &[a, b], "after quorum came back");
}

/// Start-up errors in cluster mode: an etcd that never answers is waited for as long as
/// asked, then named; a wrong password and a missing client certificate are refused in
/// words that say so; with the right ones the node starts.
#[test]
fn cluster_start_up_errors_are_clear() {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let tls = Tls::for_members(3).expect("certificates");
    let mut etcd = EtcdCluster::start(3, Some(&tls)).expect("start etcd with TLS");
    etcd.enable_auth("rootpw", "lbx", "lbxpw")
        .expect("enable authentication");
    let fleet = Fleet::builder()
        .nodes(1)
        .vip(vip4)
        .config(fleet::config_toml(&[(vip4, vec![(1, 1)])]))
        .without_agents()
        .build(Some(&etcd))
        .expect("build one node");
    let fails = |extra: &[&str]| {
        let started = Instant::now();
        let out = fleet.agent_command(1, extra).output().expect("lbx run");
        assert!(!out.status.success(), "lbx run {extra:?} started");
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            started.elapsed(),
        )
    };
    let args = cluster_args(&etcd, 1);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Inside the control network, where nothing answers.
    let (err, took) = fails(&[
        "--cluster",
        "etcd://10.78.0.99:2379",
        "--node",
        "node1",
        "--cluster-wait-s",
        "2",
    ]);
    eprintln!("unreachable etcd, after {took:?}: {err}");
    assert!(
        err.contains("cannot reach etcd at etcd://10.78.0.99:2379 within 2 s"),
        "{err}"
    );

    let wrong = fleet.dir().join("wrong-password");
    std::fs::write(&wrong, "nope\n").unwrap();
    let (err, _) = fails(
        &[
            &args[..],
            &[
                "--etcd-user",
                "lbx",
                "--etcd-password-file",
                wrong.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    eprintln!("wrong password: {err}");
    assert!(err.contains("refused the credentials"), "{err}");

    // TLS without the client certificate etcd asks for.
    let ca = tls.ca().display().to_string();
    let (err, _) = fails(&[
        "--cluster",
        &etcd.cluster_arg(),
        "--node",
        "node1",
        "--etcd-ca",
        &ca,
        "--cluster-wait-s",
        "2",
    ]);
    eprintln!("no client certificate: {err}");
    assert!(err.contains("etcd"), "{err}");

    let right = fleet.dir().join("password");
    std::fs::write(&right, "lbxpw\n").unwrap();
    let out = fleet
        .agent_command(
            1,
            &[
                &args[..],
                &[
                    "--etcd-user",
                    "lbx",
                    "--etcd-password-file",
                    right.to_str().unwrap(),
                    "--cluster-wait-s",
                    "5",
                ],
            ]
            .concat(),
        )
        .spawn();
    let mut child = out.expect("spawn lbx run");
    let started = wait_until_status(&fleet, &mut child);
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "lbx run with the right credentials did not start");
}

/// Whether the agent `child` answers `lbx status` with its cluster connected within 15 s.
fn wait_until_status(fleet: &Fleet, child: &mut std::process::Child) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if fleet
            .lbx_json(1, &["status"])
            .is_ok_and(|s| s["cluster"]["state"] == "connected")
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The state (`active`, `down`, `draining`) node `i` gives `backend` of `vip`.
fn backend_state(fleet: &Fleet, i: usize, vip: SocketAddr, backend: &str) -> String {
    let status = fleet.lbx_json(i, &["status"]).expect("lbx status");
    tcp_vip(&status, vip)
        .and_then(|v| v["backends"].as_array())
        .and_then(|bs| bs.iter().find(|b| b["address"] == backend))
        .and_then(|b| b["state"].as_str())
        .unwrap_or_else(|| panic!("node {i}: no backend {backend} of {vip}: {status}"))
        .to_owned()
}

/// A backend's health is the cluster's decision: one node whose probes fail takes it out
/// of its own tables only; when a majority of the probing nodes fail, every node takes it
/// out; when that majority is gone, the others take it back, the node that still fails
/// keeps it out. Probes fail on a node through a blackhole route to the backend there,
/// which the data path (XDP, by MAC) does not use.
#[test]
fn cluster_health_is_decided_by_a_majority() {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let etcd = EtcdCluster::start(3, None).expect("start etcd");
    let fleet = cluster_fleet(&etcd, vip4, vip6);
    let vip_arg = vip4.to_string();
    // The backends' servers answer on their own address at DIRECT_PORT.
    let port = DIRECT_PORT.to_string();
    let rev = fleet
        .lbx_json(
            1,
            &[
                "vip",
                "health",
                &vip_arg,
                "--kind",
                "tcp",
                "--port",
                &port,
                "--interval-ms",
                "100",
                "--fall",
                "2",
                "--rise",
                "2",
                "--slow-start-s",
                "0",
            ],
        )
        .expect("lbx vip health")["revision"]
        .as_u64()
        .expect("revision");
    for i in 1..=3 {
        wait_revision(&fleet, i, rev, PROPAGATION_LIMIT);
    }
    let b3 = fleet.backend(3).addr_like(vip4.ip()).to_string();
    let blackhole = |i: usize, add: bool| {
        let verb = if add { "add" } else { "del" };
        fleet
            .node(i)
            .netns
            .ip(&["route", verb, "blackhole", &format!("{b3}/32")])
            .expect("ip route");
    };
    let state = |i: usize| backend_state(&fleet, i, vip4, &b3);
    let limit = Duration::from_secs(10);

    blackhole(1, true);
    wait_until("node 1 takes backend-3 out", limit, || state(1) == "down");
    // Several of the leader's rounds: one node of three is no majority.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!((state(2).as_str(), state(3).as_str()), ("active", "active"));
    assert_eq!(
        cluster_status(&fleet, 3)["down_by_cluster"],
        serde_json::json!([])
    );

    blackhole(2, true);
    let took = wait_until("node 3 takes backend-3 out too", limit, || {
        state(3) == "down"
    });
    eprintln!("two of three nodes failing: node 3 followed the cluster's decision after {took:?}");
    let decided = cluster_status(&fleet, 3)["down_by_cluster"].to_string();
    assert!(decided.contains(&b3), "{decided}");
    assert_same_tables(&fleet, &[1, 2, 3], "health decided by the majority");
    let ports: Vec<u16> = (46_000..).take(scaled(60, 20)).collect();
    let answers = fleet.client().ask_many(vip4, &ports).expect("connections");
    assert!(
        answers.iter().all(|a| a != "backend-3"),
        "a new connection reached the backend the cluster took out: {:?}",
        tally(&answers)
    );

    blackhole(1, false);
    wait_until("nodes 1 and 3 take backend-3 back", limit, || {
        state(1) == "active" && state(3) == "active"
    });
    assert_eq!(
        state(2),
        "down",
        "node 2's own probes still fail: it keeps backend-3 out"
    );
    blackhole(2, false);
    wait_until("node 2 takes backend-3 back", limit, || {
        state(2) == "active"
    });
}

/// A node started with only `--config` and `--iface` (no cluster flag) whose file has a
/// `[cluster]` table joins the cluster: it seeds it from its file, the shared document has
/// no `[cluster]` table, and it serves a change made on a node started with the flags.
#[test]
fn cluster_settings_come_from_the_config_files_cluster_table() {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let mut etcd = EtcdCluster::start(1, None).expect("start etcd");
    let config = fleet::config_toml(&[(vip4, vec![(1, 1), (2, 1)])]);
    let mut fleet = Fleet::builder()
        .nodes(2)
        .vip(vip4)
        .config(config.clone())
        .node_args(2, cluster_args(&etcd, 2))
        .without_agents()
        .build(Some(&etcd))
        .expect("build two nodes");
    let table = format!(
        "\n[cluster]\nendpoints = \"{}\"\nname = \"{CLUSTER}\"\nnode = \"{}\"\nlease_ttl_s = {LEASE_TTL_S}\n",
        etcd.cluster_arg(),
        fleet::node_name(1)
    );
    fleet
        .write_config(1, &format!("{config}{table}"))
        .expect("node 1's file");
    fleet.start_agent(1, &[]).expect("node 1 joins by its file");
    fleet
        .start_agent(2, &[])
        .expect("node 2 joins by its flags");

    let c = cluster_status(&fleet, 1);
    assert_eq!(c["state"], "connected", "{c}");
    assert_eq!(c["name"], CLUSTER, "{c}");
    assert_eq!(c["node"], fleet::node_name(1), "{c}");
    let doc = etcd
        .get(&format!("/lbx/{CLUSTER}/config"))
        .expect("etcdctl get")
        .expect("node 1 seeded the cluster");
    assert!(
        !doc.contains("[cluster]") && !doc.contains("endpoints"),
        "the shared document has node 1's own settings:\n{doc}"
    );
    assert!(doc.contains("[[vip]]"), "{doc}");

    let b2 = fleet.backend(2).addr_like(vip4.ip()).to_string();
    let answer = fleet
        .lbx_json(2, &["backend", "weight", &vip4.to_string(), &b2, "7"])
        .expect("lbx backend weight on node 2");
    let rev = answer["revision"].as_u64().expect("a cluster revision");
    wait_revision(&fleet, 1, rev, PROPAGATION_LIMIT);
    let (_, on_1) = served(&fleet, 1);
    let weight = on_1.iter().find(|t| t.1 == b2).map(|t| t.2.as_str());
    assert_eq!(weight, Some("7.0"), "node 1 serves {on_1:?}");
    let file = std::fs::read_to_string(fleet.config_path(1)).expect("node 1's file");
    assert!(
        file.ends_with(&table),
        "node 1's file lost its table:\n{file}"
    );
}
