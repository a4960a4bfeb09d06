//! Nothing the operator said is lost: CLI changes are saved to the configuration file, and
//! an agent restarted on it serves the same VIPs, backends, weights and drains (the
//! handover itself, under traffic: restart.rs).

use std::{net::SocketAddr, os::unix::fs::PermissionsExt as _};

use lbx_tests::{Topology, VIP_V4, VIP_V6, backend_name, tally};

#[test]
fn a_restarted_agent_keeps_every_change() {
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let mut topo = Topology::builder()
        .backends(3)
        .vip(vip4)
        .vip(vip6)
        .build()
        .expect("topology");
    topo.add_vip(vip4, &[(1, 1), (2, 1), (3, 1)])
        .expect("v4 VIP");
    topo.add_vip(vip6, &[(1, 1), (2, 1)]).expect("v6 VIP");
    let v4 = vip4.to_string();
    let b2 = topo.backend_addr(2, vip4).to_string();
    let b3 = topo.backend_addr(3, vip4).to_string();
    topo.lbx(&["backend", "weight", &v4, &b2, "7"])
        .expect("weight");
    topo.lbx(&["backend", "drain", &v4, &b3]).expect("drain");
    let before = topo.backend_list().expect("backend list");
    let vips_before = topo.lbx_json(&["vip", "list"]).expect("vip list");

    let mode = std::fs::metadata(topo.config_path())
        .expect("config file written")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the configuration file is private to root"
    );

    let generation = topo.lbx_json(&["status"]).expect("status")["generation"]
        .as_u64()
        .expect("a generation number");
    topo.restart_agent().expect("restart the agent");
    assert_eq!(
        topo.backend_list().expect("backend list"),
        before,
        "backends after restart"
    );
    assert_eq!(
        topo.lbx_json(&["vip", "list"]).expect("vip list"),
        vips_before,
        "VIPs after restart"
    );
    let status = topo.lbx_json(&["status"]).expect("status");
    assert_eq!(
        status["generation"],
        generation + 1,
        "the next agent publishes its file as the generation after the one it took over: \
         {status}"
    );

    // And it forwards by them: the drained backend gets no new connection.
    let ports: Vec<u16> = (40_000..40_200).collect();
    let names = topo
        .client()
        .ask_many(vip4, &ports)
        .expect("v4 connections after restart");
    let counts = tally(&names);
    assert!(
        !counts.contains_key(&backend_name(3)),
        "drained backend-3 got new connections: {counts:?}"
    );
    let names = topo
        .client()
        .ask_many(vip6, &ports)
        .expect("v6 connections after restart");
    assert_eq!(names.len(), ports.len());
}
