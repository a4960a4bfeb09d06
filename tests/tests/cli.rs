//! The CLI as an operator types it, against a real agent: the address forms (IPv6 in
//! brackets, every port asked for by name), failures as JSON with an exit status per kind,
//! messages that name the valid range, and commands whose reader goes away (the generated
//! completions and man pages: cli_docs.rs). Every refused command must leave the agent's status and its
//! saved configuration exactly as they were.

use std::{
    net::SocketAddr,
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use lbx_tests::{
    Topology, VIP_V4, backend_v4,
    process::{run_bounded, run_bounded_to},
    topology::patience,
};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(20);

/// What must not change when a command fails: the agent's status and the saved
/// configuration file. The status loses what the agent measures on its own clock (uptime,
/// each backend's traffic signals and report), which its control loop may fill in between
/// the two reads.
fn state(topo: &Topology) -> (String, Option<Vec<u8>>) {
    let mut status = topo.lbx_json(&["status"]).expect("lbx status");
    let top = status.as_object_mut().expect("status is an object");
    top.remove("uptime_seconds");
    for vip in top["vips"].as_array_mut().expect("status lists VIPs") {
        for backend in vip["backends"]
            .as_array_mut()
            .expect("a VIP lists backends")
        {
            let backend = backend.as_object_mut().expect("a backend is an object");
            backend.remove("signals");
            backend.remove("report");
        }
    }
    (status.to_string(), std::fs::read(topo.config_path()).ok())
}

/// Runs `cmd`, which must fail and change nothing; returns its output.
fn refused(topo: &Topology, what: &str, cmd: Command) -> Output {
    let before = state(topo);
    let out = run_bounded(cmd, patience(LIMIT)).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert!(!out.status.success(), "`{what}` succeeded");
    let after = state(topo);
    assert_eq!(
        before.0, after.0,
        "`{what}` failed but changed the agent's status"
    );
    assert_eq!(
        before.1, after.1,
        "`{what}` failed but changed the saved configuration"
    );
    out
}

/// `lbx ARGS` against the agent, which must fail; returns stderr.
fn refused_text(topo: &Topology, args: &[&str]) -> String {
    let what = format!("lbx {}", args.join(" "));
    let out = refused(topo, &what, topo.lbx_command(args));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.starts_with("error: "), "`{what}`: {stderr}");
    eprintln!("`{what}` -> {}", stderr.trim());
    stderr
}

fn must_mention(what: &str, text: &str, words: &[&str]) {
    for w in words {
        assert!(
            text.contains(w),
            "`{what}`: the message should name {w:?}: {text}"
        );
    }
}

fn one_vip_topology() -> (Topology, SocketAddr) {
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let topo = Topology::builder()
        .backends(2)
        .vip(vip)
        .build()
        .expect("failed to build the test topology");
    topo.add_vip(vip, &[(1, 1), (2, 1)])
        .expect("configure the VIP");
    (topo, vip)
}

#[test]
fn addresses_as_an_operator_types_them() {
    let (topo, vip) = one_vip_topology();
    let b1 = backend_v4(1).to_string();

    // IPv6 without brackets: refused, with the bracketed readings spelled out.
    let e = refused_text(&topo, &["vip", "add", "fd91:100::1:80"]);
    must_mention(
        "vip add fd91:100::1:80",
        &e,
        &["[fd91:100::1]:80", "[fd91:100::1:80]:PORT"],
    );
    let e = refused_text(&topo, &["flow", "192.0.2.1:4000", "fd91:100::1:80"]);
    must_mention("flow .. fd91:100::1:80", &e, &["[fd91:100::1]:80"]);
    // The bracketed form is the VIP it says.
    topo.lbx(&["vip", "add", "[fd91:100::1]:80"])
        .expect("an IPv6 VIP");
    let vips = topo.lbx_json(&["vip", "list"]).expect("vip list");
    assert!(
        vips.to_string().contains("\"[fd91:100::1]:80/tcp\""),
        "vip list: {vips}"
    );
    topo.lbx(&["vip", "del", "[fd91:100::1]:80"])
        .expect("remove it");

    // A bare address: refused, naming both ways to ask for every port.
    for args in [
        vec!["vip", "add", "10.77.100.1"],
        vec!["backend", "add", "10.77.100.1", &b1],
        vec!["backend", "list", "10.77.100.1"],
        vec!["vip", "del", "[fd91:100::1]"],
    ] {
        let e = refused_text(&topo, &args);
        must_mention(&args.join(" "), &e, &[":*", "--all-ports", ":PORT"]);
    }
    // Out of range, in the field's own words.
    for (args, words) in [
        (
            vec!["vip", "add", "10.77.100.1:70000"],
            &["70000", "1-65535"][..],
        ),
        (vec!["vip", "add", "10.77.100.1:0"], &["1-65535", "\"*\""]),
        (
            vec![
                "backend",
                "add",
                &vip.to_string(),
                &b1,
                "--weight",
                "1099511627776",
            ],
            &["1099511627776", "1-65535"],
        ),
        (
            vec!["backend", "add", &vip.to_string(), &b1, "--weight", "-1"],
            &["-1", "1-65535"],
        ),
        (
            vec!["backend", "weight", &vip.to_string(), &b1, "0"],
            &["1-65535"],
        ),
        (
            vec!["vip", "health", &vip.to_string(), "--port", "70000"],
            &["70000", "1-65535"],
        ),
        (
            vec!["backend", "add", &vip.to_string(), "10.0.0.2:80"],
            &["no port"],
        ),
    ] {
        let e = refused_text(&topo, &args);
        must_mention(&args.join(" "), &e, words);
    }

    // Every port, asked for by name, end to end: the VIP takes the traffic to port 80 once
    // the exact VIP is gone, and status says it takes every port.
    topo.lbx(&["vip", "del", &vip.to_string()])
        .expect("remove the exact VIP");
    topo.lbx(&["vip", "add", "10.77.100.1", "--all-ports"])
        .expect("an all-ports VIP by flag");
    for i in [1, 2] {
        topo.lbx(&[
            "backend",
            "add",
            "10.77.100.1:*",
            &backend_v4(i).to_string(),
        ])
        .expect("a backend of the all-ports VIP");
    }
    let answer = topo
        .client()
        .ask(vip, 41000)
        .expect("a connection through the all-ports VIP");
    assert!(!answer.is_empty(), "no answer through the all-ports VIP");
    let stats = topo.lbx_json(&["stats"]).expect("stats");
    let all = stats["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["vip"] == "10.77.100.1:*/tcp"))
        .unwrap_or_else(|| panic!("no all-ports VIP in stats: {stats}"));
    assert!(
        all["packets"].as_u64().unwrap_or(0) > 0,
        "no packets counted: {all}"
    );
    let status = topo.lbx(&["status"]).expect("status");
    assert!(
        status.contains("VIP 10.77.100.1:*/tcp (every port of the address)"),
        "status does not show the all-ports VIP: {status}"
    );
    let saved = std::fs::read_to_string(topo.config_path()).expect("saved configuration");
    assert!(saved.contains("port = \"*\""), "saved: {saved}");
    // The same VIP by its other spelling: it exists already.
    let e = refused_text(&topo, &["vip", "add", "10.77.100.1:*"]);
    must_mention("vip add 10.77.100.1:*", &e, &["already"]);

    // A VIP's own table size: shown, saved; one that is no prime is refused, naming it,
    // and nothing is added.
    topo.lbx(&["vip", "add", "10.77.100.1:8080", "--table-size", "1021"])
        .expect("a VIP with its own table size");
    let status = topo.lbx(&["status"]).expect("status");
    assert!(
        status.contains("VIP 10.77.100.1:8080/tcp, table size 1021"),
        "status does not show the VIP's table size: {status}"
    );
    let saved = std::fs::read_to_string(topo.config_path()).expect("saved configuration");
    assert!(saved.contains("table_size = 1021"), "saved: {saved}");
    let e = refused_text(
        &topo,
        &["vip", "add", "10.77.100.1:8081", "--table-size", "1000"],
    );
    must_mention(
        "vip add --table-size 1000",
        &e,
        &["10.77.100.1:8081", "1000", "prime"],
    );
    let list = topo.lbx(&["vip", "list"]).expect("vip list");
    assert!(!list.contains("8081"), "a refused VIP was added: {list}");
}

/// `{"error": {...}}` on stdout, nothing else, and the kind's exit status.
fn json_failure(what: &str, out: &Output, kind: &str, code: i32) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("`{what}`: stdout is not one JSON object ({e}): {stdout:?}"));
    let err = &v["error"];
    assert_eq!(err["kind"], kind, "`{what}`: {v}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "`{what}`: no message: {v}"
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "`{what}`: exit status for {kind}: {v}"
    );
    eprintln!("`{what}` -> {} {v}", out.status);
}

#[test]
fn json_failures_have_a_kind_and_its_exit_status() {
    let (topo, vip) = one_vip_topology();
    let vip_s = vip.to_string();
    let lbx = topo.binaries().lbx.clone();
    let socket = topo.socket().to_str().expect("utf-8 path").to_owned();

    let cases: [(&[&str], &str, i32); 6] = [
        (&["vip", "add", "10.77.100.1"], "usage", 2),
        (&["vip", "add", "--no-such-flag", &vip_s], "usage", 2),
        (&["backend", "add", &vip_s, "fd77::11"], "invalid", 3),
        (&["vip", "del", "10.77.100.9:80"], "not_found", 4),
        (&["vip", "add", &vip_s], "conflict", 5),
        (
            &["backend", "add", &vip_s, &backend_v4(1).to_string()],
            "conflict",
            5,
        ),
    ];
    for (args, kind, code) in cases {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let what = format!("lbx {}", full.join(" "));
        let out = refused(&topo, &what, topo.lbx_command(&full));
        json_failure(&what, &out, kind, code);
    }

    // No agent on the socket named.
    let none = topo.dir().join("nobody-here.sock");
    let mut cmd = Command::new(&lbx);
    cmd.args([
        "--json",
        "--socket",
        none.to_str().expect("utf-8"),
        "status",
    ]);
    let out = refused(&topo, "lbx --json --socket nobody-here.sock status", cmd);
    json_failure(
        "lbx --socket nobody-here.sock status",
        &out,
        "agent_unreachable",
        6,
    );

    // Not root: the socket refuses.
    let mut cmd = topo.lb.netns.command(Path::new("setpriv"));
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&lbx)
        .args(["--json", "--socket", &socket, "backend", "del", &vip_s])
        .arg(backend_v4(1).to_string());
    let out = refused(&topo, "lbx --json backend del (as nobody)", cmd);
    json_failure("lbx --json backend del (as nobody)", &out, "permission", 7);

    // The kernel refuses: `lo` has no native XDP.
    let mut cmd = topo.lb.netns.command(&lbx);
    cmd.args(["--json", "pass", "--iface", "lo", "--xdp-mode", "native"]);
    let out = refused(&topo, "lbx --json pass --iface lo --xdp-mode native", cmd);
    json_failure("lbx pass --iface lo --xdp-mode native", &out, "kernel", 8);

    // Without --json the same failures are text on stderr, with the same status.
    let out = refused(
        &topo,
        "lbx vip add VIP",
        topo.lbx_command(&["vip", "add", &vip_s]),
    );
    assert_eq!(out.status.code(), Some(5));
    assert!(
        out.stdout.is_empty(),
        "text failures print nothing on stdout"
    );
}

/// Runs `lbx ARGS` with a stdout whose reader is already gone.
fn with_closed_stdout(lbx: &Path, socket: &str, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut cmd = Command::new(lbx);
    cmd.arg("--socket").arg(socket).args(args);
    run_bounded_to(cmd, Stdio::from(writer), patience(LIMIT)).expect("lbx ends by itself")
}

#[test]
fn commands_end_quietly_when_their_reader_goes_away() {
    let (topo, vip) = one_vip_topology();
    let lbx = topo.binaries().lbx.clone();
    let socket = topo.socket().to_str().expect("utf-8 path").to_owned();
    let vip_s = vip.to_string();
    let trace = topo.dir().join("trace.csv");
    let trace_s = trace.to_str().expect("utf-8 path").to_owned();
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["--json", "status"],
        vec!["stats"],
        vec!["--json", "stats"],
        vec!["vip", "list"],
        vec!["backend", "list"],
        vec!["backend", "list", &vip_s],
        vec!["flow", "192.0.2.1:4000", &vip_s],
        vec!["vip", "add", "10.77.100.1:81"],
        vec!["vip", "del", "10.77.100.1:81"],
        vec!["model", "trace", "--out", &trace_s],
        vec!["model", "eval", "--trace", &trace_s],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["--help"],
        vec!["vip", "--help"],
        vec!["--version"],
    ];
    for args in &commands {
        let out = with_closed_stdout(&lbx, &socket, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!("lbx {} > closed pipe", args.join(" "));
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "`{what}`: {stderr}"
        );
        // Every one of these prints: it ends as `ls | head` does, by SIGPIPE.
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "`{what}` should end by SIGPIPE: {} {stderr}",
            out.status
        );
    }
    // The changes made with a closed stdout took effect (and were undone).
    let vips = topo.lbx_json(&["vip", "list"]).expect("vip list");
    assert!(!vips.to_string().contains("10.77.100.1:81"), "{vips}");
}
