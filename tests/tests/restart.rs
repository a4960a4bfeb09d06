//! The balancer outlives its agent: an agent stopped (SIGTERM) or killed (SIGKILL) leaves
//! the program serving from its pinned link and maps, and the next agent takes them over
//! with the connection table, the numbering and the counters, also one that brings another
//! build of the programs (`--xdp-object`). Long-lived connections and a steady stream of
//! new ones go through every handover without one failure, and no packet to a VIP is
//! passed to the kernel or dropped meanwhile.

use std::{
    fs::File,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lbx_tests::process::run_bounded;
use lbx_tests::{
    Connection, DIRECT_PORT, Topology, VIP_V4, VIP_V6, backend_name, tally,
    topology::{patience, program_tag, reason_count, xdp_variant},
};
use serde_json::Value;

/// Open connections per VIP.
const OPEN: u16 = 12;
/// Bounds of the stream of new connections: at most this many, for at most this long.
const STREAM_MAX: usize = 3000;
const STREAM_LIMIT: Duration = Duration::from_secs(180);
/// Pause between two new connections of the stream.
const STREAM_GAP: Duration = Duration::from_millis(5);

/// One connection of the stream: when it started, and how it ended.
struct Attempt {
    at: Instant,
    result: Result<String, String>,
}

/// New connections to `vip`, one after another from the client's namespace, until `stop`
/// (or the bounds above).
fn stream(netns: PathBuf, vip: SocketAddr, stop: Arc<AtomicBool>) -> Vec<Attempt> {
    let file = File::open(&netns).expect("open the client's namespace");
    // SAFETY: setns only reads the descriptor; it moves this thread alone, which ends here.
    assert_eq!(
        unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );
    let started = Instant::now();
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed)
        && out.len() < STREAM_MAX
        && started.elapsed() < STREAM_LIMIT
    {
        let at = Instant::now();
        let result = Connection::open(vip, 0)
            .and_then(|mut c| c.ask())
            .map_err(|e| format!("{e:#}"));
        out.push(Attempt { at, result });
        std::thread::sleep(STREAM_GAP);
    }
    out
}

/// The counters of what must not happen to a packet of a VIP's flow.
const MUST_STAY: &[&str] = &[
    "pass_malformed",
    "pass_no_config",
    "drop_no_backend",
    "drop_too_big",
    "drop_bad_ring",
    "drop_encap_failed",
];

/// A topology with `backends` backends, all of them in one IPv4 VIP with weight 1.
fn one_vip(backends: usize) -> (Topology, SocketAddr) {
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let topo = Topology::builder()
        .backends(backends)
        .vip(vip)
        .build()
        .expect("failed to build the test topology");
    let all: Vec<(usize, u32)> = (1..=backends).map(|i| (i, 1)).collect();
    topo.add_vip(vip, &all).expect("configure the VIP");
    (topo, vip)
}

/// One way an agent gives the balancer to the next.
type Handover<'a> = &'a dyn Fn(&mut Topology) -> anyhow::Result<()>;

/// The kernel's tag of the program serving on the lb's eth0.
fn serving_tag(topo: &Topology) -> u64 {
    let id = topo
        .lb
        .netns
        .xdp_prog_id("eth0")
        .expect("ip link")
        .expect("a program serves on eth0");
    program_tag(id).expect("the serving program's tag")
}

#[test]
fn the_balancer_serves_through_an_agent_restart_and_a_crash() {
    // The upgrade is one of the handovers checked: without the other build this test fails.
    let variant = xdp_variant().unwrap_or_else(|e| panic!("{e:#}"));
    let vip4 = SocketAddr::new(VIP_V4.into(), 80);
    let vip6 = SocketAddr::new(VIP_V6.into(), 80);
    let mut topo = Topology::builder()
        .backends(3)
        .vip(vip4)
        .vip(vip6)
        .build()
        .expect("failed to build the test topology");
    let vips = [vip4, vip6];
    for vip in vips {
        topo.add_vip(vip, &[(1, 1), (2, 1), (3, 1)])
            .expect("configure the VIP");
    }
    let ports: Vec<u16> = (40_000..40_000 + OPEN).collect();
    let mut conns = Vec::new();
    for vip in vips {
        conns.extend(
            topo.client()
                .open_many(vip, &ports)
                .expect("open connections"),
        );
    }
    // Backend-2 takes nearly the whole ring now: the open connections elsewhere stay only
    // because the connection table holds them, so a table lost in a handover shows.
    for vip in vips {
        let b2 = topo.backend_addr(2, vip).to_string();
        topo.lbx(&["backend", "weight", &vip.to_string(), &b2, "65535"])
            .expect("weight");
    }
    let held = conns
        .iter()
        .filter(|c| c.first_answer() != Some(backend_name(2).as_str()))
        .count();
    assert!(
        held >= 6,
        "only {held} open connections off backend-2: too few to mean anything"
    );
    let stats_before = topo.lbx_json(&["stats"]).expect("stats");
    let status_before = topo.lbx_json(&["status"]).expect("status");
    let link_pin = topo.bpffs().join("lbx/eth0/link");
    let link_inode = || std::fs::metadata(&link_pin).expect("the pinned link").ino();
    let link_before = link_inode();

    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = vips
        .iter()
        .map(|&vip| {
            let (ns, stop) = (topo.client.netns.path(), stop.clone());
            std::thread::spawn(move || stream(ns, vip, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let upgrade = |topo: &mut Topology| topo.upgrade_agent(&variant);
    let handovers: [(&str, Handover, bool); 3] = [
        ("SIGTERM and a new agent", &Topology::restart_agent, false),
        ("SIGKILL and a new agent", &Topology::crash_agent, false),
        ("an upgrade to another build", &upgrade, true),
    ];
    let mut windows = Vec::new();
    for (what, handover, another_build) in handovers {
        let tag_before = serving_tag(&topo);
        let from = Instant::now();
        handover(&mut topo).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let to = Instant::now();
        eprintln!("{what}: the next agent answered after {:?}", to - from);
        windows.push((what, from, to));
        Topology::assert_unmoved(&mut conns, what);
        // The tag hashes the instructions: one build loaded again keeps it, another build
        // must change it, or the upgrade swapped in the same code.
        let tag = serving_tag(&topo);
        eprintln!("{what}: program tag {tag_before:016x} before, {tag:016x} after");
        if another_build {
            assert_ne!(
                tag, tag_before,
                "{what}: the program serving has the instructions of the one before it"
            );
        } else {
            assert_eq!(tag, tag_before, "{what}: the same build has another tag");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let attempts: Vec<Attempt> = streams
        .into_iter()
        .flat_map(|t| t.join().expect("stream thread"))
        .collect();

    let failed: Vec<&String> = attempts
        .iter()
        .filter_map(|a| a.result.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} new connections failed: {:?}",
        failed.len(),
        attempts.len(),
        &failed[..failed.len().min(5)]
    );
    for (what, from, to) in &windows {
        let during = attempts
            .iter()
            .filter(|a| a.at >= *from && a.at <= *to)
            .count();
        eprintln!("{what}: {during} new connections made during the handover, all answered");
        assert!(
            during > 0,
            "{what}: no new connection was tried during the handover"
        );
    }
    let answered: Vec<String> = attempts.into_iter().filter_map(|a| a.result.ok()).collect();
    eprintln!("new connections by backend: {:?}", tally(&answered));

    // The numbering, the generation and the counters went on.
    let status = topo.lbx_json(&["status"]).expect("status");
    assert_eq!(
        status["generation"].as_u64(),
        status_before["generation"]
            .as_u64()
            .map(|g| g + windows.len() as u64),
        "each agent publishes once on top of what it took over"
    );
    let slots = |s: &Value| -> Vec<Value> {
        s["vips"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| v["backends"].as_array().unwrap().iter())
            .map(|b| b["table_slots"].clone())
            .collect()
    };
    assert_eq!(slots(&status), slots(&status_before), "the rings changed");
    // Each agent's own program serves now: swapped into the link, not a second attach.
    assert_eq!(
        link_inode(),
        link_before,
        "the link was replaced, not updated"
    );
    assert_eq!(
        topo.lb.netns.xdp_prog_id("eth0").expect("ip link"),
        status["prog_id"].as_u64(),
        "the program attached is not the agent's"
    );
    assert_ne!(
        status["prog_id"], status_before["prog_id"],
        "the program was not replaced"
    );
    let stats = topo.lbx_json(&["stats"]).expect("stats");
    for reason in MUST_STAY {
        assert_eq!(
            reason_count(&stats, reason).unwrap(),
            reason_count(&stats_before, reason).unwrap(),
            "{reason} counted packets across the handovers"
        );
    }
    assert!(
        reason_count(&stats, "forwarded").unwrap()
            > reason_count(&stats_before, "forwarded").unwrap(),
        "the forwarded counter started again instead of going on"
    );

    // The old flows are answered from the connection table, as lbx says.
    topo.assert_held_by_table(&conns);
}

#[test]
fn a_restart_on_an_xdp_object_that_does_not_fit_is_refused_naming_it() {
    let variant = xdp_variant().unwrap_or_else(|e| panic!("{e:#}"));
    let (mut topo, vip) = one_vip(2);
    let ports: Vec<u16> = (40_200..40_200 + OPEN).collect();
    let mut conns = topo
        .client()
        .open_many(vip, &ports)
        .expect("open connections");
    let status = topo.lbx_json(&["status"]).expect("status");
    let (prog, generation) = (status["prog_id"].as_u64(), status["generation"].as_u64());
    topo.stop_agent().expect("stop the agent");

    let text = topo.dir().join("not-an-object.txt");
    std::fs::write(&text, "not a BPF object\n").expect("write a text file");
    let host_elf = topo.binaries().lbx.clone();
    let variant_arg = variant.display().to_string();
    let refusals: [(Vec<String>, i32, String); 4] = [
        (
            vec!["/nonexistent".into()],
            4,
            "cannot read the XDP object /nonexistent: No such file or directory".into(),
        ),
        (
            vec![text.display().to_string()],
            2,
            format!("the XDP object {} is not an ELF file", text.display()),
        ),
        (
            vec![host_elf.display().to_string()],
            2,
            format!(
                "the XDP object {} is an ELF file for another machine",
                host_elf.display()
            ),
        ),
        // A real build, whose maps are checked against the pinned ones: its own.
        (
            vec![variant_arg.clone(), "--flows".into(), "65536".into()],
            5,
            format!("do not fit the XDP object {variant_arg}: FLOWS entries 1048576 pinned"),
        ),
    ];
    for (args, code, says) in refusals {
        let mut extra = vec!["--xdp-object"];
        extra.extend(args.iter().map(String::as_str));
        let what = extra.join(" ");
        let out = run_bounded(
            topo.agent_command(&extra),
            patience(Duration::from_secs(30)),
        )
        .expect("lbx run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "lbx run {what}: {stderr}");
        assert!(
            stderr.contains(&says),
            "lbx run {what} should say {says:?}: {stderr}"
        );
        assert_eq!(
            topo.lb.netns.xdp_prog_id("eth0").expect("ip link"),
            prog,
            "lbx run {what} changed the program"
        );
        Topology::assert_unmoved(&mut conns, &format!("lbx run {what}"));
    }
    assert!(
        topo.bpffs().join("lbx/eth0/link").exists(),
        "a refused start removed the pinned link"
    );
    // Nothing was published: the next agent's generation follows the first agent's.
    topo.start_agent_with(&[])
        .expect("an agent with the built-in programs");
    assert_eq!(
        topo.lbx_json(&["status"]).expect("status")["generation"].as_u64(),
        generation.map(|g| g + 1),
        "a refused start published a generation"
    );
    Topology::assert_unmoved(&mut conns, "the next agent");
}

#[test]
fn detach_removes_the_balancer_left_serving_and_is_refused_while_an_agent_runs() {
    let (mut topo, vip) = one_vip(1);
    let bpffs = topo.bpffs().display().to_string();
    let detach = ["detach", "--iface", "eth0", "--bpffs", bpffs.as_str()];

    // While an agent runs, detach is refused and changes nothing.
    let refused = topo.lbx_fails(&detach).expect("lbx detach");
    assert!(refused.contains("an lbx agent holds it"), "{refused}");
    topo.client().ask(vip, 40_100).expect("still balanced");

    // Once it stopped, the balancer still serves; detach removes it, and a second detach
    // has nothing to do.
    topo.stop_agent().expect("stop the agent");
    assert_eq!(
        topo.client()
            .ask(vip, 40_101)
            .expect("served without an agent"),
        backend_name(1)
    );
    assert!(topo.bpffs().join("lbx/eth0/link").exists());
    let out = topo.lbx(&detach).expect("lbx detach");
    assert!(out.contains("detached the balancer from eth0"), "{out}");
    assert_eq!(
        topo.lb.netns.xdp_prog_id("eth0").expect("ip link"),
        None,
        "a program is still attached"
    );
    assert!(!topo.bpffs().join("lbx/eth0").exists(), "the pins stay");
    let out = topo.lbx(&detach).expect("lbx detach again");
    assert!(out.contains("nothing to detach"), "{out}");
}

#[test]
fn a_backend_down_before_a_restart_stays_out_after_it() {
    let (mut topo, vip) = one_vip(3);
    let port = DIRECT_PORT.to_string();
    topo.lbx(&[
        "vip",
        "health",
        &vip.to_string(),
        "--kind",
        "tcp",
        "--port",
        &port,
        "--interval-ms",
        "200",
        "--timeout-ms",
        "100",
        "--fall",
        "2",
        "--rise",
        "2",
    ])
    .expect("lbx vip health");
    let dead = topo.backend_addr(2, vip);
    let wait_down = |topo: &Topology| {
        let limit = patience(Duration::from_secs(10));
        let start = Instant::now();
        loop {
            let b = topo.backend_status(vip, dead);
            if b["health"]["state"] == "down" {
                return b;
            }
            assert!(
                start.elapsed() < limit,
                "backend-2 not down within {limit:?}: {b}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    topo.stop_server(2).expect("stop backend-2's server");
    wait_down(&topo);

    // The next agent knows at once, from the maps, that backend-2 is out: no new flow is
    // sent to it while its probes are still to come, and every one is answered.
    topo.restart_agent().expect("restart the agent");
    let b = topo.backend_status(vip, dead);
    assert_eq!(b["health"]["state"], "down", "{b}");
    assert_eq!(b["table_slots"], 0, "{b}");
    let names = topo
        .client()
        .ask_many(vip, &(41_000..41_060).collect::<Vec<_>>())
        .expect("new connections right after the restart");
    assert!(!names.contains(&backend_name(2)), "{:?}", tally(&names));
    // And its probes keep it out.
    std::thread::sleep(patience(Duration::from_secs(1)));
    assert_eq!(wait_down(&topo)["table_slots"], 0);
}

#[test]
fn maps_of_another_size_are_refused_or_migrated_with_every_flow() {
    let (mut topo, vip) = one_vip(3);
    let ports: Vec<u16> = (40_000..40_000 + OPEN).collect();
    let mut conns = topo
        .client()
        .open_many(vip, &ports)
        .expect("open connections");
    let b2 = topo.backend_addr(2, vip).to_string();
    topo.lbx(&["backend", "weight", &vip.to_string(), &b2, "65535"])
        .expect("weight");
    let status = topo.lbx_json(&["status"]).expect("status");
    let (prog, generation) = (status["prog_id"].clone(), status["generation"].clone());
    topo.stop_agent().expect("stop the agent");

    // Another connection-table size: refused, naming the map, both sizes and the way out.
    let out = run_bounded(
        topo.agent_command(&["--flows", "65536"]),
        patience(Duration::from_secs(30)),
    )
    .expect("lbx run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    for word in [
        "FLOWS entries 1048576 pinned, 65536 in this build (--flows)",
        "--migrate",
    ] {
        assert!(
            stderr.contains(word),
            "the refusal should name {word:?}: {stderr}"
        );
    }
    assert_eq!(
        topo.lb.netns.xdp_prog_id("eth0").expect("ip link"),
        prog.as_u64(),
        "the refused start changed the program"
    );
    Topology::assert_unmoved(&mut conns, "a refused start");

    // Another mode than the balancer serves in: refused before anything is published.
    let out = run_bounded(
        topo.agent_command(&["--xdp-mode", "generic"]),
        patience(Duration::from_secs(30)),
    )
    .expect("lbx run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("serves in native mode, --xdp-mode generic was asked"),
        "{stderr}"
    );

    // With --migrate, every flow comes along into the smaller table.
    topo.start_agent_with(&["--flows", "65536", "--migrate"])
        .expect("an agent that migrates");
    Topology::assert_unmoved(&mut conns, "a migration");
    assert_eq!(
        topo.lbx_json(&["status"]).expect("status")["generation"].as_u64(),
        generation.as_u64().map(|g| g + 1),
        "a refused start published a generation"
    );
    topo.assert_held_by_table(&conns);
    let pins = topo.bpffs().join("lbx");
    let left: Vec<_> = std::fs::read_dir(&pins)
        .expect("pins")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left,
        ["eth0"],
        "the old maps stay beside the new ones: {left:?}"
    );
    // And the next start, with the new size, adopts without migrating.
    topo.restart_agent().expect("restart with the new size");
    Topology::assert_unmoved(&mut conns, "a restart after the migration");
}

/// Seconds a TCP flow may go unseen and still count as active, for the drain test.
const IDLE_S: u64 = 3;

#[test]
fn drain_wait_returns_once_the_last_flow_of_the_backend_goes_idle() {
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let mut topo = Topology::builder()
        .backends(2)
        .vip(vip)
        .agent_args(&["--flow-idle-s", &IDLE_S.to_string()])
        .build()
        .expect("failed to build the test topology");
    topo.add_vip(vip, &[(1, 1), (2, 1)])
        .expect("configure the VIP");
    let ports: Vec<u16> = (42_000..42_016).collect();
    let conns = topo
        .client()
        .open_many(vip, &ports)
        .expect("open connections");
    let mut on_b1: Vec<Connection> = conns
        .into_iter()
        .filter(|c| c.first_answer() == Some(backend_name(1).as_str()))
        .collect();
    assert!(!on_b1.is_empty(), "no connection landed on backend-1");
    let b1 = topo.backend_addr(1, vip);
    let (vip_arg, b1_arg) = (vip.to_string(), b1.to_string());
    let active = |topo: &Topology| -> u64 {
        let list = topo
            .lbx_json(&["backend", "list", &vip_arg])
            .expect("lbx backend list");
        let row = list
            .as_array()
            .and_then(|l| l.iter().find(|b| b["address"] == b1_arg.as_str()))
            .cloned()
            .expect("backend-1 in the list");
        let in_status = topo.backend_status(vip, b1)["active_flows"].clone();
        assert_eq!(row["active_flows"], in_status, "list and status disagree");
        row["active_flows"].as_u64().expect("a count")
    };
    // One flow per connection, and nothing else reaches backend-1 through the VIP.
    assert_eq!(active(&topo), on_b1.len() as u64);
    let keep_busy = |conns: &mut [Connection], for_how_long: Duration| {
        let until = Instant::now() + for_how_long;
        while Instant::now() < until {
            for c in conns.iter_mut() {
                assert_eq!(
                    c.ask().expect("a drained backend keeps its flows"),
                    backend_name(1)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Instant::now()
    };
    // `lbx backend drain --wait` in a thread of its own; its output and when it ended.
    let drain = |topo: &Topology, timeout: u64| {
        let cmd = topo.lbx_command(&[
            "backend",
            "drain",
            &vip_arg,
            &b1_arg,
            "--wait",
            "--timeout",
            &timeout.to_string(),
        ]);
        let bound = Duration::from_secs(timeout + 30);
        std::thread::spawn(move || {
            let out = run_bounded(cmd, bound).expect("lbx backend drain --wait ends");
            (out, Instant::now())
        })
    };

    // While its flows go on, the wait ends at its timeout, with status 9 and the count.
    let started = Instant::now();
    let waiting = drain(&topo, 2);
    keep_busy(&mut on_b1, Duration::from_secs(3));
    let (out, _) = waiting.join().expect("the drain's thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "gave up before its timeout"
    );
    assert!(
        stderr.contains(&format!("still has {} active flows", on_b1.len())),
        "{stderr}"
    );
    assert_eq!(topo.backend_status(vip, b1)["state"], "draining");

    // The stamps live in the connection table: the next agent counts the same flows.
    topo.restart_agent().expect("restart the agent");
    assert_eq!(active(&topo), on_b1.len() as u64, "after a restart");

    // Once the flows stop, the wait returns: not before they went quiet for about the
    // idle time (the clock moves once a control interval, a second), well within its
    // timeout.
    let waiting = drain(&topo, 60);
    let last_packet = keep_busy(&mut on_b1, Duration::from_secs(2));
    let (out, returned) = waiting.join().expect("the drain's thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("has no active flow"), "{stdout}");
    let quiet = returned - last_packet;
    eprintln!("drain --wait returned {quiet:?} after the last packet (idle time {IDLE_S} s)");
    assert!(
        quiet >= Duration::from_secs(IDLE_S - 2),
        "returned {quiet:?} after the last packet: flows seen within {IDLE_S} s count"
    );
    assert_eq!(active(&topo), 0);
    // Idle is not gone: a quiet flow's own packets still find it in the table.
    for c in &mut on_b1 {
        assert_eq!(c.ask().expect("an idle flow"), backend_name(1));
    }
}
