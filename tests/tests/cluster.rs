//! The rig of lbx's cluster mode: several lb nodes behind an ECMP router ([`Fleet`]) and a
//! real etcd cluster ([`EtcdCluster`]). Host tier only: needs etcd (see xtask's `HOST_ONLY`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lbx_tests::etcd::{EtcdCluster, Tls};
use lbx_tests::fleet::{self, Fleet};
use lbx_tests::topology::scaled;
use lbx_tests::{Connection, VIP_V4, VIP_V6, tally};

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
    SocketAddr::new(fleet.client_addr(conn.dst()), conn.src_port())
}

/// `lbx stats`' packet count of the TCP VIP `vip` on node `i`.
fn vip_packets(fleet: &Fleet, i: usize, vip: SocketAddr) -> u64 {
    let stats = fleet.lbx_json(i, &["stats"]).expect("lbx stats");
    stats["vips"]
        .as_array()
        .and_then(|vips| {
            vips.iter()
                .find(|v| v["vip"] == format!("{vip}/tcp").as_str())
        })
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
