//! Health checks: a backend whose service dies leaves the table at once (its flows move,
//! nobody else's), and comes back through a slow start when it recovers.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lbx_tests::{DIRECT_PORT, Topology, VIP_V4, VIP_V6, backend_name, tally, topology::patience};

/// Checks are fast so the test is: a failure is seen within FALL * INTERVAL.
const INTERVAL_MS: u64 = 200;
const FALL: u32 = 2;
const SLOW_START_S: u64 = 3;

/// What [`wait_state`] saw.
struct Reached {
    /// The backend's entry of the `lbx status` answer that showed the state.
    backend: serde_json::Value,
    /// Since the wait began, the start of the last poll that did not yet show the state: the
    /// agent answered that poll after it started, so the change happened later than this.
    /// Zero if the first poll showed it.
    not_before: Duration,
    /// Since the wait began, the end of the poll that showed the state: the change happened
    /// before this.
    by: Duration,
}

/// Polls `lbx status` until backend `addr` is in `state`; gives up after `limit` times
/// [`patience`] (each poll is a CLI call: on an emulated CPU a slow one).
fn wait_state(
    topo: &Topology,
    vip: SocketAddr,
    addr: IpAddr,
    state: &str,
    limit: Duration,
) -> Reached {
    let limit = patience(limit);
    let start = Instant::now();
    let mut not_before = Duration::ZERO;
    loop {
        let poll = start.elapsed();
        let b = topo.backend_status(vip, addr);
        if b["health"]["state"] == state {
            return Reached {
                backend: b,
                not_before,
                by: start.elapsed(),
            };
        }
        not_before = poll;
        assert!(
            start.elapsed() < limit,
            "backend {addr} of {vip} not {state} within {limit:?}: {b}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(vip: SocketAddr, first_port: u16) {
    let mut topo = Topology::builder()
        .backends(3)
        .vip(vip)
        .build()
        .expect("topology");
    topo.add_vip(vip, &[(1, 1), (2, 1), (3, 1)])
        .expect("add VIP");
    let vip_arg = vip.to_string();
    topo.lbx(&[
        "vip",
        "health",
        &vip_arg,
        "--kind",
        "tcp",
        "--port",
        &DIRECT_PORT.to_string(),
        "--interval-ms",
        &INTERVAL_MS.to_string(),
        "--timeout-ms",
        "100",
        "--fall",
        &FALL.to_string(),
        "--rise",
        "2",
        "--slow-start-s",
        &SLOW_START_S.to_string(),
    ])
    .expect("lbx vip health");
    let dead = topo.backend_addr(2, vip);
    wait_state(&topo, vip, dead, "up", Duration::from_secs(5));

    // Connections to the two survivors stay open across the failure.
    let ports: Vec<u16> = (first_port..first_port + 30).collect();
    let open: Vec<_> = topo
        .client()
        .open_many(vip, &ports)
        .expect("connect")
        .into_iter()
        .filter(|c| c.first_answer() != Some(backend_name(2).as_str()))
        .collect();
    assert!(
        open.len() >= 10,
        "only {} connections landed on survivors",
        open.len()
    );

    topo.stop_server(2).expect("stop backend-2's server");
    let down = wait_state(&topo, vip, dead, "down", Duration::from_secs(5));
    // FALL failed probes at INTERVAL_MS, plus the probe timeout and slack. The agent took
    // longer only if a poll that started after the bound still showed the backend up: a
    // slow `lbx status` (an emulated CPU) delays seeing the change, not the change.
    let bound = Duration::from_millis(INTERVAL_MS * u64::from(FALL + 2) + 500);
    assert!(
        down.not_before <= bound,
        "backend-2 still up {:?} after its server stopped, more than {bound:?} (seen down \
         after {:?})",
        down.not_before,
        down.by
    );
    let b = topo.backend_status(vip, dead);
    assert_eq!(b["state"], "down", "{b}");
    assert_eq!(
        b["table_slots"], 0,
        "a down backend keeps no table slots: {b}"
    );
    assert!(
        b["health"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failed probes")),
        "the reason names the failure: {b}"
    );

    // New connections all go to the survivors, and every one of them succeeds.
    let ports: Vec<u16> = (first_port + 100..first_port + 400).collect();
    let names = topo
        .client()
        .ask_many(vip, &ports)
        .expect("connections after the failure");
    let counts = tally(&names);
    assert!(
        !counts.contains_key(&backend_name(2)),
        "new connections reached the dead backend: {counts:?}"
    );
    for mut c in open {
        let was = c.first_answer().expect("asked").to_owned();
        assert_eq!(c.ask().expect("open connection still works"), was);
    }

    // Recovery: back up after `rise` probes, first with a reduced weight.
    topo.start_server(2, &[vip])
        .expect("restart backend-2's server");
    // The answer that shows it up, not a later one: the slow start may be well along by the
    // next poll on a slow machine.
    let b = wait_state(&topo, vip, dead, "up", Duration::from_secs(5)).backend;
    let eff = b["effective_weight"].as_f64().expect("effective weight");
    let full = b["weight"].as_f64().expect("weight");
    assert!(
        eff < full,
        "right after recovery the weight ramps up, got {eff} of {full}: {b}"
    );
    // The ramp lasts SLOW_START_S from the backend's return, which came before `start`. It
    // overran only if a poll that started after SLOW_START_S + 3 s still shows it ramping.
    let start = Instant::now();
    let ramp_bound = Duration::from_secs(SLOW_START_S + 3);
    loop {
        let poll = start.elapsed();
        let b = topo.backend_status(vip, dead);
        if b["effective_weight"].as_f64() == b["weight"].as_f64() {
            break;
        }
        assert!(
            poll < ramp_bound,
            "slow start still ramping {poll:?} after the backend came back, more than \
             {ramp_bound:?}: {b}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Fresh source ports: the ones used above are in the connection table, on survivors.
    let fresh: Vec<u16> = (first_port + 500..first_port + 800).collect();
    let names = topo
        .client()
        .ask_many(vip, &fresh)
        .expect("connections after recovery");
    let counts = tally(&names);
    let back = counts.get(&backend_name(2)).copied().unwrap_or(0);
    assert!(
        back > fresh.len() / 10,
        "recovered backend-2 got {back} of {} new connections: {counts:?}",
        fresh.len()
    );
}

#[test]
fn failed_backend_leaves_and_returns_v4() {
    run(SocketAddr::new(VIP_V4.into(), 80), 20000);
}

#[test]
fn failed_backend_leaves_and_returns_v6() {
    run(SocketAddr::new(VIP_V6.into(), 80), 30000);
}

/// When most backends fail their checks at once, lbx keeps them all in the table rather
/// than piling every flow on the last one (panic mode), and leaves panic mode once they pass.
#[test]
fn most_backends_failing_keeps_the_table_whole() {
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let mut topo = Topology::builder()
        .backends(3)
        .vip(vip)
        .build()
        .expect("topology");
    topo.add_vip(vip, &[(1, 1), (2, 1), (3, 1)])
        .expect("add VIP");
    let vip_arg = vip.to_string();
    topo.lbx(&[
        "vip",
        "health",
        &vip_arg,
        "--port",
        &DIRECT_PORT.to_string(),
        "--interval-ms",
        &INTERVAL_MS.to_string(),
        "--timeout-ms",
        "100",
        "--fall",
        "2",
        "--rise",
        "2",
        "--slow-start-s",
        "0",
    ])
    .expect("lbx vip health");
    let one = topo.backend_addr(1, vip);
    wait_state(&topo, vip, one, "up", Duration::from_secs(5));

    topo.stop_server(1).expect("stop backend-1");
    wait_state(&topo, vip, one, "down", Duration::from_secs(5));
    let panic = |topo: &Topology| {
        topo.lbx_json(&["status"]).expect("status")["vips"][0]["health_panic"].clone()
    };
    assert_eq!(panic(&topo), false, "one of three down is no panic");
    assert_eq!(topo.backend_status(vip, one)["table_slots"], 0);

    topo.stop_server(2).expect("stop backend-2");
    let two = topo.backend_addr(2, vip);
    wait_state(&topo, vip, two, "down", Duration::from_secs(5));
    assert_eq!(panic(&topo), true, "two of three down is panic");
    for i in 1..=3 {
        let b = topo.backend_status(vip, topo.backend_addr(i, vip));
        assert!(
            b["table_slots"].as_u64().unwrap_or(0) > 0,
            "in panic every backend keeps its slots: {b}"
        );
    }

    topo.start_server(1, &[vip]).expect("restart backend-1");
    topo.start_server(2, &[vip]).expect("restart backend-2");
    wait_state(&topo, vip, one, "up", Duration::from_secs(5));
    wait_state(&topo, vip, two, "up", Duration::from_secs(5));
    assert_eq!(panic(&topo), false, "panic ends once the backends pass");
}
