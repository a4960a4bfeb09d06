//! The second chance: when the connection table is lost (a restart that lost it, a failover
//! to a node that never had it) and the ring changes at the same time, an open TCP
//! connection whose flow the new ring gives to another backend would be reset there. For
//! `lbx run --second-chance-s` seconds after a change, lbx sends such a packet (no SYN, no
//! table entry) to the backend of the ring before, and records the flow.
//!
//! Each test opens connections through a VIP with 3 backends, clears the connection table
//! and adds a fourth backend (one publication), then talks on every connection: with the
//! second chance every one survives; without it exactly those the new ring moves break.
//! Connection counts follow `LBX_TEST_SCALE`, so the VMs run them too.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lbx_tests::topology::scaled;
use lbx_tests::{CLIENT_V4, CLIENT_V6, Connection, Topology, VIP_V4, VIP_V6, reason_count};

/// Open connections per family (60 in all on the host).
const OPEN: usize = 30;
/// The default `--second-chance-s`.
const WINDOW: Duration = Duration::from_secs(30);

/// What happened to one family's connections.
#[derive(Debug)]
struct Outcome {
    open: usize,
    /// Connections whose flow the new ring gives to another backend than their own.
    moved: usize,
    /// Connections that failed when talked on after the change.
    broken: Vec<String>,
    /// Packets `forwarded_second_chance` counted meanwhile.
    second_chances: u64,
    /// From the change's publication to the last connection's answer.
    took: Duration,
}

fn second_chances(topo: &Topology) -> u64 {
    let stats = topo.lbx_json(&["stats"]).expect("lbx stats");
    reason_count(&stats, "forwarded_second_chance").expect("forwarded_second_chance")
}

fn client_of(conn: &Connection) -> SocketAddr {
    let ip = match conn.dst() {
        SocketAddr::V4(_) => CLIENT_V4.into(),
        SocketAddr::V6(_) => CLIENT_V6.into(),
    };
    SocketAddr::new(ip, conn.src_port())
}

/// A topology with 4 backends and both VIPs on the first 3.
fn topology(agent_args: &[&str]) -> (Topology, [SocketAddr; 2]) {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let topo = Topology::builder()
        .backends(4)
        .vip(vip4)
        .vip(vip6)
        .agent_args(agent_args)
        .build()
        .expect("failed to build the test topology");
    for vip in [vip4, vip6] {
        topo.add_vip(vip, &[(1, 1), (2, 1), (3, 1)])
            .expect("configure the VIP");
    }
    (topo, [vip4, vip6])
}

/// Opens connections to `vip` from `first_port` on, loses the connection table and adds
/// backend-4 to the VIP, then talks on each connection once. One family at a time: the
/// second chance reads the generation just before the last, so both VIPs' changes must be
/// one publication, or each VIP's in turn.
fn lose_the_table_and_change_the_ring(
    topo: &Topology,
    vip: SocketAddr,
    first_port: u16,
) -> Outcome {
    let open = scaled(OPEN, 12);
    let ports: Vec<u16> = (first_port..).take(open).collect();
    let mut conns = topo
        .client()
        .open_many(vip, &ports)
        .expect("open connections");

    // The table goes first: nothing talks until both are done, and the ring change is
    // then the newest publication, whose predecessor holds the ring the flows began on.
    topo.lbx(&["flow", "clear"]).expect("lbx flow clear");
    topo.lbx(&[
        "backend",
        "add",
        &vip.to_string(),
        &topo.backend_addr(4, vip).to_string(),
        "--weight",
        "1",
    ])
    .expect("backend add");
    let published = Instant::now();
    let before = second_chances(topo);
    let mut broken = Vec::new();
    for conn in &mut conns {
        let was = conn.first_answer().expect("asked once").to_owned();
        match conn.ask() {
            Ok(now) => assert_eq!(
                now,
                was,
                "the connection from port {} answered from another backend",
                conn.src_port()
            ),
            Err(e) => broken.push(format!("port {} on {was}: {e:#}", conn.src_port())),
        }
    }
    let took = published.elapsed();
    let second_chances = second_chances(topo) - before;

    // Which flows the new ring moves: with the table empty again `lbx flow` gives the
    // ring's backend. First, the survivors' flows are back in the table on their backend.
    if broken.is_empty() {
        topo.assert_held_by_table(&conns);
    }
    topo.lbx(&["flow", "clear"]).expect("lbx flow clear");
    let mut moved = 0;
    for conn in &conns {
        let flow = topo.flow(client_of(conn), vip).expect("lbx flow");
        assert_eq!(flow.source, "maglev", "with the table cleared: {flow:?}");
        let now = &topo.backend_at(flow.backend).expect("a backend").name;
        if now != conn.first_answer().expect("asked") {
            moved += 1;
        }
    }
    Outcome {
        open,
        moved,
        broken,
        second_chances,
        took,
    }
}

#[test]
fn second_chance_saves_every_open_flow_the_new_ring_moves() {
    let (topo, vips) = topology(&[]);
    let status = topo.lbx_json(&["status"]).expect("lbx status");
    assert_eq!(
        status["second_chance_s"],
        WINDOW.as_secs(),
        "the default window: {status}"
    );
    let mut saved = 0;
    let mut open = 0;
    for (vip, port) in vips.into_iter().zip([45_000, 46_000]) {
        let o = lose_the_table_and_change_the_ring(&topo, vip, port);
        assert!(
            o.broken.is_empty(),
            "{vip}: {} of {} connections broke after the table was lost and the ring \
             changed, {:?} after the change (the window is {WINDOW:?}); {} moved by the \
             ring, {} second chances: {:#?}",
            o.broken.len(),
            o.open,
            o.took,
            o.moved,
            o.second_chances,
            o.broken
        );
        assert_eq!(
            o.second_chances,
            u64::try_from(o.moved).expect("small"),
            "{vip}: one second chance per moved flow (its first packet; the table has it \
             from then on)"
        );
        eprintln!(
            "{vip}: second chance saved {} of {} open flows that the new ring moves, all \
             talked on within {:?} of the change",
            o.moved, o.open, o.took
        );
        saved += o.moved;
        open += o.open;
    }
    assert!(
        saved > 0,
        "the new ring moved none of {open} flows: the test shows nothing"
    );
    eprintln!("second chance saved {saved} of {open} flows: all {saved} that the new ring moves");
}

#[test]
fn without_second_chance_the_flows_the_new_ring_moves_break() {
    let (topo, vips) = topology(&["--second-chance-s", "0"]);
    let status = topo.lbx_json(&["status"]).expect("lbx status");
    assert_eq!(status["second_chance_s"], 0, "off: {status}");
    let mut broken = 0;
    let mut open = 0;
    for (vip, port) in vips.into_iter().zip([45_000, 46_000]) {
        let o = lose_the_table_and_change_the_ring(&topo, vip, port);
        assert_eq!(
            o.broken.len(),
            o.moved,
            "{vip}: without the second chance exactly the {} flows the new ring moves \
             should break: {:#?}",
            o.moved,
            o.broken
        );
        assert_eq!(o.second_chances, 0, "{vip}: second chance is off");
        eprintln!(
            "{vip}: without second chance {} of {} open flows broke (reset by the backend \
             the new ring gives them)",
            o.broken.len(),
            o.open
        );
        broken += o.broken.len();
        open += o.open;
    }
    assert!(
        broken > 0,
        "the new ring moved none of {open} flows: the test shows nothing"
    );
    eprintln!("without second chance {broken} of {open} flows broke");
}
