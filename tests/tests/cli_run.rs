//! `lbx run` where the interface or the BPF filesystem is not as it expects: a second agent
//! on an interface an agent holds, or on pins a running balancer uses, an interface with
//! another XDP program, and `--bpffs` below the /sys/fs/bpf that `ip netns exec` leaves
//! unmounted. A refused start names what
//! holds the interface and creates nothing; the agent that holds it goes on serving.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use lbx_tests::{
    Binaries, Topology, VIP_V4,
    netns::Netns,
    process::{Process, run_bounded},
    topology::patience,
};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

/// A directory of this test's own, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lbxt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Self(dir)
    }

    fn entries(&self) -> Vec<String> {
        entries(&self.0)
    }
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A namespace with a veth pair `va`/`vb`, both up.
fn veth_namespace(role: &str) -> Netns {
    let ns = Netns::create(role).expect("create a namespace");
    ns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"])
        .expect("create a veth pair");
    ns.ip(&["link", "set", "va", "up"]).expect("va up");
    ns.ip(&["link", "set", "vb", "up"]).expect("vb up");
    ns
}

/// The id of the XDP program on `iface` in `ns`.
fn xdp_prog_id(ns: &Netns, iface: &str) -> Option<u64> {
    ns.xdp_prog_id(iface).expect("ip link")
}

/// `lbx --socket SOCKET run --iface IFACE --config CONFIG EXTRA...` in `ns`, not yet run.
fn lbx_run(
    ns: &Netns,
    lbx: &Path,
    (socket, config): (&Path, &Path),
    iface: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = ns.command(lbx);
    cmd.arg("--socket")
        .arg(socket)
        .args(["run", "--iface", iface]);
    cmd.arg("--config").arg(config).args(extra);
    cmd
}

/// Runs `cmd`, which must fail; returns its exit code and what it printed (stderr, or
/// stdout with `--json`).
fn fails(cmd: Command) -> (i32, String) {
    let what = format!("{cmd:?}");
    let out = run_bounded(cmd, patience(LIMIT)).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let text = String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned();
    assert!(!out.status.success(), "{what} succeeded: {text}");
    eprintln!("{what} -> {}", text.trim());
    (out.status.code().unwrap_or(-1), text)
}

fn must_mention(what: &str, text: &str, words: &[&str]) {
    for w in words {
        assert!(
            text.contains(w),
            "{what}: the message should name {w:?}: {text}"
        );
    }
}

#[test]
fn a_second_agent_names_the_agent_that_holds_the_interface() {
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    let topo = Topology::builder()
        .backends(1)
        .vip(vip)
        .build()
        .expect("failed to build the test topology");
    topo.add_vip(vip, &[(1, 1)]).expect("configure the VIP");
    let status = topo.lbx_json(&["status"]).expect("lbx status");
    let pid = status["pid"].as_u64().expect("status has the agent's pid");
    let prog_id = status["prog_id"]
        .as_u64()
        .expect("status has the program id");
    assert_eq!(Some(pid), topo.agent_pid().map(u64::from), "{status}");
    let before = entries(topo.dir());

    let socket = topo.dir().join("second.sock");
    let config = topo.dir().join("second.toml");
    for mode in ["native", "auto", "generic"] {
        let (code, stderr) = fails(lbx_run(
            &topo.lb.netns,
            &topo.binaries().lbx,
            (&socket, &config),
            "eth0",
            &["--xdp-mode", mode],
        ));
        assert_eq!(code, 5, "a conflict: {stderr}");
        must_mention(
            "a second agent",
            &stderr,
            &[
                "an lbx agent holds it",
                &format!("pid {pid}"),
                &topo.socket().display().to_string(),
                &format!("XDP program {prog_id}"),
                "stop that agent first",
            ],
        );
        assert!(
            !stderr.contains("--xdp-mode generic"),
            "useless advice: {stderr}"
        );
    }
    assert_eq!(entries(topo.dir()), before, "the refused agents left files");

    // An agent on another `eth0`, in a network namespace of its own, with the first
    // agent's --bpffs: the pins there are in use, so it is refused and they stay.
    let pins = topo.bpffs().join("lbx/eth0");
    // By inode: a pin replaced by one of the same name is another file.
    let pinned_files = || -> Vec<(String, u64)> {
        entries(&pins)
            .into_iter()
            .map(|name| {
                let ino = std::fs::metadata(pins.join(&name))
                    .expect("stat a pin")
                    .ino();
                (name, ino)
            })
            .collect()
    };
    let pinned = pinned_files();
    assert!(pinned.iter().any(|(p, _)| p == "FLOWS"), "{pinned:?}");
    let other = Netns::create("other").expect("create a namespace");
    other
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "vb"])
        .expect("create a veth pair");
    other.ip(&["link", "set", "eth0", "up"]).expect("eth0 up");
    let bpffs = topo.bpffs().display().to_string();
    let (code, stderr) = fails(lbx_run(
        &other,
        &topo.binaries().lbx,
        (&socket, &config),
        "eth0",
        &["--xdp-mode", "generic", "--bpffs", &bpffs],
    ));
    assert_eq!(code, 5, "a conflict: {stderr}");
    must_mention(
        "pins in use",
        &stderr,
        &["in use by a running lbx agent", "another --bpffs"],
    );
    assert_eq!(pinned_files(), pinned, "the first agent's pins changed");
    assert_eq!(xdp_prog_id(&other, "eth0"), None);
    assert_eq!(entries(topo.dir()), before, "the refused agent left files");

    // The agent that holds the interface is untouched: same program, same generation.
    assert_eq!(xdp_prog_id(&topo.lb.netns, "eth0"), Some(prog_id));
    let again = topo.lbx_json(&["status"]).expect("lbx status");
    assert_eq!(again["generation"], status["generation"]);
    assert_eq!(again["prog_id"], status["prog_id"]);
    topo.client()
        .ask(vip, 40_001)
        .expect("the first agent still balances");
}

#[test]
fn another_xdp_program_is_named_with_its_holder() {
    let lbx = Binaries::locate_lbx().expect("the lbx binary");
    let scratch = Scratch::new("foreign");
    let ns = veth_namespace("foreign");
    let mut pass = {
        let mut cmd = ns.command(&lbx);
        cmd.args(["pass", "--iface", "va", "--xdp-mode", "generic"]);
        Process::spawn("pass", cmd, &scratch.0).expect("start lbx pass")
    };
    pass.wait_for_line("attached", patience(LIMIT))
        .expect("lbx pass attaches");
    let id = xdp_prog_id(&ns, "va").expect("a program on va");
    let before = scratch.entries();

    let files = (&scratch.0.join("agent.sock"), &scratch.0.join("agent.toml"));
    let (code, stderr) = fails(lbx_run(&ns, &lbx, (files.0, files.1), "va", &[]));
    assert_eq!(code, 5, "a conflict");
    must_mention(
        "another program",
        &stderr,
        &[
            &format!("XDP program {id} (lbx_pass)"),
            &format!("pid {}", pass.pid()),
            "lbx pass --iface va",
            "ip link set dev va xdp off",
        ],
    );
    assert!(!stderr.contains("an lbx agent"), "{stderr}");

    // With --json, the same as one object with its kind.
    let (code, out) = fails(lbx_run(&ns, &lbx, (files.0, files.1), "va", &["--json"]));
    assert_eq!(code, 5);
    let json: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("not one JSON error object ({e}): {out}"));
    assert_eq!(json["error"]["kind"], "conflict", "{json}");

    assert_eq!(scratch.entries(), before, "the refused agent left files");
    assert_eq!(
        xdp_prog_id(&ns, "va"),
        Some(id),
        "the program stays attached"
    );
    assert!(pass.is_running());
}

#[test]
fn bpffs_is_mounted_where_ip_netns_exec_left_none() {
    let lbx = Binaries::locate_lbx().expect("the lbx binary");
    let scratch = Scratch::new("bpffs");
    let ns = veth_namespace("bpffs");
    let socket = scratch.0.join("agent.sock");
    let config = scratch.0.join("agent.toml");
    let files = (socket.as_path(), config.as_path());
    let bpffs = format!("/sys/fs/bpf/lbx-test-{}", std::process::id());
    let generic_on = ["--xdp-mode", "generic", "--bpffs", &bpffs];
    let mut agent = Process::spawn(
        "agent",
        lbx_run(&ns, &lbx, files, "va", &generic_on),
        &scratch.0,
    )
    .expect("start lbx run");
    let pins = format!("{bpffs}/lbx/va");
    agent
        .wait_for_line(&format!("maps pinned under {pins}"), patience(LIMIT))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.tail(20)));
    let mut status = ns.command(&lbx);
    status
        .arg("--json")
        .arg("--socket")
        .arg(&socket)
        .arg("status");
    let out = run_bounded(status, patience(LIMIT)).expect("lbx status");
    assert!(out.status.success(), "{out:?}");
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["pins"], pins.as_str());
    assert!(xdp_prog_id(&ns, "va").is_some());

    // Stopped, it detaches and leaves no socket file.
    let stopped = agent.stop().expect("the agent exits");
    assert!(stopped.success(), "{stopped:?}\n{}", agent.tail(20));
    assert!(
        !socket.exists(),
        "the socket file stays after the agent stopped"
    );
    assert_eq!(xdp_prog_id(&ns, "va"), None);

    // A start that fails once its socket is bound (here on a configuration that does not
    // validate) removes the socket file it made, and the file it was given stays as it was.
    std::fs::write(&config, "table_size = 4\n").expect("write a bad config");
    let (code, stderr) = fails(lbx_run(&ns, &lbx, files, "va", &generic_on));
    assert_ne!(code, 0);
    must_mention(
        "a bad configuration",
        &stderr,
        &[config.to_str().unwrap(), "table_size"],
    );
    assert!(!socket.exists(), "a failed start left its socket file");
    assert_eq!(xdp_prog_id(&ns, "va"), None);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "table_size = 4\n"
    );

    // Below a directory that holds files and refuses new ones, lbx mounts nothing and says
    // what to do instead.
    let (code, stderr) = fails(lbx_run(
        &ns,
        &lbx,
        files,
        "va",
        &["--bpffs", "/proc/lbx-test"],
    ));
    assert_ne!(code, 0);
    must_mention(
        "--bpffs under /proc",
        &stderr,
        &[
            "--bpffs /proc/lbx-test",
            "will not mount",
            "mount -t bpf bpf /sys/fs/bpf",
        ],
    );
    assert!(!socket.exists());
    assert_eq!(xdp_prog_id(&ns, "va"), None);
}
