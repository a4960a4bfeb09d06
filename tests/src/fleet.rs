//! The test network of lbx's cluster mode: several lb nodes behind an ECMP router, each with
//! its own agent, in front of the backends of [`crate::topology`].
//!
//! ```text
//!   client 10.77.1.1, fd77:1::1 (MTU 1500)
//!      |
//!   router 10.77.1.3, fd77:1::3 | on the bridge 10.77.0.3, fd77::3
//!      VIP prefixes: one multipath route via every node (layer-4 hash)
//!      |
//!   switch ns: br0 (MTU 1600)
//!      |           |           |           |            |
//!   lb1         lb2         lb3         b1 ... bN     (each switch port of a node runs
//!   10.77.0.21  10.77.0.22  10.77.0.23  10.77.0.11..   `lbx pass`: XDP_TX into a veth needs
//!   fd77::21    fd77::22    fd77::23    fd77::11..     an XDP program on the peer)
//!   `lbx run` each, own socket, config and pins  `lbx decap` + lbx-test-server, VIPs on lo;
//!   ctl0 10.78.0.101.. on etcd's control network  replies straight to the client via the
//!   (with an [`EtcdCluster`])                      router
//! ```
//!
//! Dropping the [`Fleet`] stops every process it started and deletes every namespace and its
//! temporary directory, also during a panic. Only addresses inside these namespaces are
//! ever sent to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::agent::{self, LbxCli};
use crate::client::{Client, Connection};
use crate::etcd::{ControlPort, EtcdCluster};
use crate::netns::{self, Netns};
use crate::process::Process;
use crate::topology::{
    BRIDGE, CLIENT_MTU, DecapMode, Flow, Host, IFACE, INNER_MTU, TAIL_LINES, backend_neighbours,
    check_build, client_checksums, configure_backend, make_backend_host, make_host, plug_host,
    route_vips_via, start_backends, start_pass,
};
use crate::wiring::{
    self, BPFFS_DIR, add_addr, make_bridge, make_temp_dir, one_based, static_neighbour,
};
use crate::{Binaries, ROUTER_V4, ROUTER_V6, VIP_PREFIX_V4, VIP_PREFIX_V6, backend_mac, bpffs};

/// The client's own link to the router: 10.77.1.0/24 and fd77:1::/64.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 1);
pub const ROUTER_CLIENT_SIDE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 3);
pub const ROUTER_CLIENT_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 3);
/// The client's prefixes, which the backends route via the router.
const CLIENT_PREFIX_V4: &str = "10.77.1.0/24";
const CLIENT_PREFIX_V6: &str = "fd77:1::/64";
/// The router's interface toward the client, and the client's MAC there.
const ROUTER_CLIENT_IFACE: &str = "r-client";
const ROUTER_CLIENT_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0x01, 0x03];
/// Nodes a fleet may have: their addresses are .21 to .29 (fd77::21 to fd77::29).
pub const MAX_NODES: usize = 9;
/// A node's interface on etcd's control network.
pub const CONTROL_IFACE: &str = "ctl0";
/// `lbx run` arguments every node gets before the test's: a connection table of 65,536
/// flows (4 MiB) rather than the default million (64 MiB), times the nodes.
const FLEET_AGENT_ARGS: [&str; 2] = ["--flows", "65536"];

/// The data-network IPv4 address of node `i` (1-based): 10.77.0.2i.
pub fn node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 20 + node_byte(i))
}

/// The data-network IPv6 address of node `i`: fd77::2i.
pub fn node_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x20 + u16::from(node_byte(i)))
}

/// Node `i`'s address on etcd's control network: 10.78.0.10i.
pub fn node_control_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, 0, 100 + node_byte(i))
}

fn node_byte(i: usize) -> u8 {
    assert!(
        (1..=MAX_NODES).contains(&i),
        "node index {i} out of 1..={MAX_NODES}"
    );
    u8::try_from(i).expect("checked above")
}

/// The name of node `i` (`node1`: what `--node` takes in cluster mode, and the host's name).
pub fn node_name(i: usize) -> String {
    format!("node{i}")
}

/// A configuration file serving each `(vip, backends)`: TCP VIPs whose backends `(i, weight)`
/// are backend `i`'s address of the VIP's family, with its MAC, and seed 0 (the same on
/// every node: it is what makes them agree).
pub fn config_toml(vips: &[(SocketAddr, Vec<(usize, u32)>)]) -> String {
    let mut out = String::from("seed = 0\n");
    for (vip, backends) in vips {
        out.push_str(&format!(
            "\n[[vip]]\naddress = \"{}\"\nport = {}\nprotocol = \"tcp\"\n",
            vip.ip(),
            vip.port()
        ));
        for &(i, weight) in backends {
            let addr: IpAddr = match vip {
                SocketAddr::V4(_) => crate::backend_v4(i).into(),
                SocketAddr::V6(_) => crate::backend_v6(i).into(),
            };
            out.push_str(&format!(
                "\n[[vip.backend]]\naddress = \"{addr}\"\nweight = {weight}\nmac = \"{}\"\n",
                crate::capture::format_mac(&backend_mac(i))
            ));
        }
    }
    out
}

/// `lbx run`'s cluster-mode arguments of node `i` on `etcd`: cluster `cluster`, node name
/// [`node_name`], a lease of `lease_ttl_s`, and the CA and client certificate when `etcd`
/// speaks TLS.
pub fn cluster_args(etcd: &EtcdCluster, cluster: &str, i: usize, lease_ttl_s: u64) -> Vec<String> {
    let mut args: Vec<String> = [
        "--cluster",
        &etcd.cluster_arg(),
        "--cluster-name",
        cluster,
        "--node",
        &node_name(i),
        "--cluster-lease-ttl-s",
        &lease_ttl_s.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(tls) = etcd.tls() {
        for (flag, path) in [
            ("--etcd-ca", tls.ca()),
            ("--etcd-cert", tls.client_cert()),
            ("--etcd-key", tls.client_key()),
        ] {
            args.push(flag.to_owned());
            args.push(path.display().to_string());
        }
    }
    args
}

/// Polls `f` until it holds, within `limit`; how long that took.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !f()? {
        ensure!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(started.elapsed())
}

/// What to build; see [`Fleet::builder`].
#[derive(Debug, Clone)]
pub struct FleetBuilder {
    nodes: usize,
    backends: usize,
    vips: Vec<SocketAddr>,
    config: Option<String>,
    agent_args: Vec<String>,
    node_args: Vec<(usize, Vec<String>)>,
    agents: bool,
    decap: Option<DecapMode>,
}

impl FleetBuilder {
    /// How many lb nodes (1 to [`MAX_NODES`]); default 3.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// How many backends (1 to [`crate::MAX_BACKENDS`]); default 3.
    pub fn backends(mut self, n: usize) -> Self {
        self.backends = n;
        self
    }

    /// A VIP the backends serve (address on `lo`, test server, decapsulation). The nodes
    /// serve what the configuration file says ([`FleetBuilder::config`]).
    pub fn vip(mut self, vip: SocketAddr) -> Self {
        self.vips.push(vip);
        self
    }

    /// The configuration file every node's agent starts from (written to each node's own
    /// path, [`Fleet::config_path`]); default: none (no VIPs yet). See [`config_toml`].
    pub fn config(mut self, toml: String) -> Self {
        self.config = Some(toml);
        self
    }

    /// Extra `lbx run` arguments of every node.
    pub fn agent_args(mut self, args: &[&str]) -> Self {
        self.agent_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Extra `lbx run` arguments of node `i` only, after those of every node (e.g. cluster
    /// mode's `--node nodeI`).
    pub fn node_args(mut self, i: usize, args: Vec<String>) -> Self {
        self.node_args.push((i, args));
        self
    }

    /// Builds the network, backends and `lbx pass` on the nodes' ports, but starts no agent:
    /// the test starts each with [`Fleet::start_agent`].
    pub fn without_agents(mut self) -> Self {
        self.agents = false;
        self
    }

    /// How the backends decapsulate, instead of what `LBX_TEST_DECAP` says.
    pub fn decap(mut self, mode: DecapMode) -> Self {
        self.decap = Some(mode);
        self
    }

    /// Builds the fleet; with `etcd`, each node also joins its control network on
    /// [`CONTROL_IFACE`] with [`node_control_v4`].
    pub fn build(self, etcd: Option<&EtcdCluster>) -> anyhow::Result<Fleet> {
        check_build("a fleet", self.backends)?;
        ensure!(
            (1..=MAX_NODES).contains(&self.nodes),
            "a fleet has 1 to {MAX_NODES} nodes, not {}",
            self.nodes
        );
        ensure!(!self.vips.is_empty(), "a fleet needs at least one VIP");
        if let Some(&(i, _)) = self
            .node_args
            .iter()
            .find(|(i, _)| !(1..=self.nodes).contains(i))
        {
            bail!(
                "node_args for node {i}, but the fleet has {} nodes",
                self.nodes
            );
        }
        let decap = DecapMode::or_from_env(self.decap)?;
        netns::remove_stale_namespaces();
        let bins = Binaries::locate()?;

        // Namespaces first: each deletes itself if a later step fails. The directory last, as
        // from its creation on `fleet` owns it.
        let client = make_host("client", CLIENT_V4, CLIENT_V6, 0x01)?;
        let router = make_host("router", ROUTER_V4, ROUTER_V6, 0x03)?;
        let switch = Netns::create("switch")?;
        let mut hosts = Vec::new();
        for i in 1..=self.nodes {
            hosts.push(make_host(
                &format!("lb{i}"),
                node_v4(i),
                node_v6(i),
                0x20 + node_byte(i),
            )?);
        }
        let mut backends = Vec::new();
        for i in 1..=self.backends {
            backends.push(make_backend_host(i)?);
        }
        let dir = make_temp_dir()?;
        let nodes = hosts
            .into_iter()
            .enumerate()
            .map(|(n, host)| {
                let i = n + 1;
                let args = self
                    .node_args
                    .iter()
                    .filter(|(j, _)| *j == i)
                    .flat_map(|(_, a)| a.iter().cloned())
                    .collect();
                Node {
                    socket: dir.join(format!("lb{i}.sock")),
                    config: dir.join(format!("lb{i}.toml")),
                    bpffs: dir.join(BPFFS_DIR).join(format!("lb{i}")),
                    host,
                    args,
                    agent: None,
                    starts: 0,
                    control: None,
                    route_withdrawn: false,
                }
            })
            .collect();
        let mut fleet = Fleet {
            processes: Vec::new(),
            retired: Vec::new(),
            nodes,
            client,
            router,
            backends,
            switch,
            dir,
            bins,
            agent_args: FLEET_AGENT_ARGS
                .iter()
                .map(|a| (*a).to_owned())
                .chain(self.agent_args)
                .collect(),
            bpffs_mounted: false,
            report_on_drop: true,
        };
        // From here on a failure drops `fleet`, which cleans up everything made so far.
        fleet.wire()?;
        fleet.configure_client()?;
        fleet.configure_router()?;
        fleet.configure_nodes()?;
        for b in &fleet.backends {
            configure_backend(&b.netns, &self.vips)?;
            route_client_via_router(&b.netns, &fleet.router)?;
        }
        start_backends(
            &mut fleet.processes,
            &fleet.dir,
            &fleet.bins,
            &fleet.backends,
            &self.vips,
            Some(decap),
        )?;
        if let Some(etcd) = etcd {
            for (n, node) in fleet.nodes.iter_mut().enumerate() {
                let port = etcd.join(&node.host.netns, CONTROL_IFACE, node_control_v4(n + 1))?;
                node.control = Some(port);
            }
        }
        for i in 1..=fleet.node_count() {
            let port = fleet.node(i).switch_port.clone();
            start_pass(
                &mut fleet.processes,
                &fleet.dir,
                &fleet.bins.lbx,
                &fleet.switch,
                &port,
                &format!("switch-pass-lb{i}"),
            )?;
            if let Some(toml) = &self.config {
                fleet.write_config(i, toml)?;
            }
        }
        bpffs::mount(&fleet.dir.join(BPFFS_DIR))?;
        fleet.bpffs_mounted = true;
        if self.agents {
            for i in 1..=fleet.node_count() {
                fleet.start_agent(i, &[])?;
            }
        }
        Ok(fleet)
    }
}

/// One lb node: its host and its agent's files, and the agent while it runs.
#[derive(Debug)]
struct Node {
    host: Host,
    socket: PathBuf,
    config: PathBuf,
    bpffs: PathBuf,
    /// This node's own `lbx run` arguments, after the fleet's.
    args: Vec<String>,
    agent: Option<Process>,
    /// How many agents were started here (their logs are numbered).
    starts: usize,
    control: Option<ControlPort>,
    route_withdrawn: bool,
}

/// The running fleet; see the module's documentation.
///
/// Its processes are bound to the thread that built it (`PR_SET_PDEATHSIG`), so that a test
/// process killed outright leaves none behind: build and drop it on the same thread.
#[derive(Debug)]
pub struct Fleet {
    /// Everything but the agents: servers, decapsulation, `lbx pass`.
    processes: Vec<Process>,
    /// Agents that were stopped or killed, kept for their logs.
    retired: Vec<Process>,
    nodes: Vec<Node>,
    pub client: Host,
    pub router: Host,
    pub backends: Vec<Host>,
    pub switch: Netns,
    dir: PathBuf,
    bins: Binaries,
    /// `lbx run` arguments of every node.
    agent_args: Vec<String>,
    bpffs_mounted: bool,
    report_on_drop: bool,
}

impl Fleet {
    /// A fleet of 3 nodes and 3 backends; add VIPs with [`FleetBuilder::vip`].
    pub fn builder() -> FleetBuilder {
        FleetBuilder {
            nodes: 3,
            backends: 3,
            vips: Vec::new(),
            config: None,
            agent_args: Vec::new(),
            node_args: Vec::new(),
            agents: true,
            decap: None,
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn node_at(&self, i: usize) -> &Node {
        &self.nodes[one_based(i, self.nodes.len(), "node")]
    }

    fn node_at_mut(&mut self, i: usize) -> &mut Node {
        let at = one_based(i, self.nodes.len(), "node");
        &mut self.nodes[at]
    }

    /// Node `i`'s host (1-based).
    pub fn node(&self, i: usize) -> &Host {
        &self.node_at(i).host
    }

    /// Node `i`'s agent's control socket.
    pub fn socket(&self, i: usize) -> &Path {
        &self.node_at(i).socket
    }

    /// Node `i`'s agent's configuration file.
    pub fn config_path(&self, i: usize) -> &Path {
        &self.node_at(i).config
    }

    /// Node `i`'s BPF filesystem directory (`--bpffs`): its own, under the fleet's mount.
    pub fn bpffs(&self, i: usize) -> &Path {
        &self.node_at(i).bpffs
    }

    /// Node `i`'s port on etcd's control network, if the fleet was built with one.
    pub fn control_port(&self, i: usize) -> Option<&ControlPort> {
        self.node_at(i).control.as_ref()
    }

    /// Writes node `i`'s configuration file (mode 0600, as the agent writes it).
    pub fn write_config(&self, i: usize, toml: &str) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.config_path(i);
        std::fs::write(path, toml).with_context(|| format!("write {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))
    }

    /// The temporary directory holding sockets, configuration files and process logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// The client host's connections and pings.
    pub fn client(&self) -> Client<'_> {
        Client::new(&self.client.netns)
    }

    /// The client's address of the family of `like`.
    pub fn client_addr(&self, like: SocketAddr) -> IpAddr {
        self.client.addr_like(like.ip())
    }

    /// Backend `i`, 1-based like the names.
    pub fn backend(&self, i: usize) -> &Host {
        &self.backends[i - 1]
    }

    /// The backend whose address is `addr`.
    pub fn backend_at(&self, addr: IpAddr) -> Option<&Host> {
        self.backends
            .iter()
            .find(|b| IpAddr::V4(b.ipv4) == addr || IpAddr::V6(b.ipv6) == addr)
    }

    /// The `lbx` CLI against node `i`'s agent.
    pub fn cli(&self, i: usize) -> LbxCli<'_> {
        let node = self.node_at(i);
        LbxCli {
            netns: &node.host.netns,
            lbx: &self.bins.lbx,
            socket: &node.socket,
        }
    }

    /// Runs an `lbx` CLI command on node `i`; returns stdout, or an error with stderr.
    pub fn lbx(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        self.cli(i).run(args)
    }

    /// Runs `lbx --json ARGS` on node `i` and parses its stdout.
    pub fn lbx_json(&self, i: usize, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        self.cli(i).json(args)
    }

    /// `lbx flow` on node `i` for a TCP flow.
    pub fn flow(&self, i: usize, src: SocketAddr, dst: SocketAddr) -> anyhow::Result<Flow> {
        self.cli(i).flow(src, dst)
    }

    /// The client's side of `conn` as the nodes see it (the client's address of its family).
    pub fn client_end(&self, conn: &Connection) -> SocketAddr {
        SocketAddr::new(self.client_addr(conn.dst()), conn.src_port())
    }

    /// Node `i`'s `cluster` part of `lbx status --json`.
    pub fn cluster_status(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        Ok(self.lbx_json(i, &["status"])?["cluster"].take())
    }

    /// The configuration revision node `i` serves (`lbx stats` carries it, and is cheap).
    pub fn served_revision(&self, i: usize) -> anyhow::Result<u64> {
        let stats = self.lbx_json(i, &["stats"])?;
        stats["revision"]
            .as_u64()
            .with_context(|| format!("node {i}: no revision in `lbx stats --json`: {stats}"))
    }

    /// Waits until node `i` serves revision `rev` or later, polling every 2 ms; how long
    /// that took.
    pub fn wait_revision(&self, i: usize, rev: u64, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let now = self.served_revision(i)?;
            if now >= rev {
                return Ok(started.elapsed());
            }
            ensure!(
                started.elapsed() < limit,
                "node {i} still serves revision {now}, not {rev}, after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The node that leads the weights, among `nodes`, as their status says.
    pub fn leader_among(&self, nodes: &[usize]) -> anyhow::Result<Option<usize>> {
        for &i in nodes {
            if self.cluster_status(i)?["is_leader"] == true {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// A change on node `i` (`lbx --json ARGS`) that must succeed within `limit` (etcd may
    /// be electing a leader): how many attempts it took and its revision.
    pub fn change_within(
        &self,
        i: usize,
        args: &[&str],
        limit: Duration,
    ) -> anyhow::Result<(usize, u64)> {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let out = self.cli(i).output(&[&["--json"], args].concat())?;
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                    .with_context(|| format!("node {i}: {args:?} answered no JSON"))?;
                let rev = v["revision"]
                    .as_u64()
                    .with_context(|| format!("node {i}: {args:?} answered no revision: {v}"))?;
                return Ok((attempts, rev));
            }
            ensure!(
                started.elapsed() < limit,
                "node {i}: {args:?} still fails after {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Node `i`'s whole `lbx run` command line with `extra` after the fleet's and the
    /// node's own arguments.
    pub fn agent_args(&self, i: usize, extra: &[&str]) -> Vec<String> {
        let node = self.node_at(i);
        agent::run_args(
            IFACE,
            &node.socket,
            &node.config,
            &node.bpffs,
            self.agent_args
                .iter()
                .chain(&node.args)
                .cloned()
                .chain(extra.iter().map(|a| (*a).to_owned())),
        )
    }

    /// Node `i`'s `lbx run` with `extra` arguments, in its namespace, not yet run (for a
    /// start that must fail).
    pub fn agent_command(&self, i: usize, extra: &[&str]) -> Command {
        let mut cmd = self.node(i).netns.command(&self.bins.lbx);
        cmd.args(self.agent_args(i, extra));
        cmd
    }

    /// Starts node `i`'s agent with `extra` arguments (this start only) and waits until it
    /// answers `lbx status`.
    pub fn start_agent(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        ensure!(
            self.node_at(i).agent.is_none(),
            "node {i}'s agent runs already"
        );
        let cmd = self.agent_command(i, extra);
        let node = self.node_at_mut(i);
        node.starts += 1;
        let label = format!("lb{i}-agent-{}", node.starts);
        let mut agent = Process::spawn(&label, cmd, &self.dir)?;
        let ready = self.cli(i).wait_for(&mut agent);
        self.node_at_mut(i).agent = Some(agent);
        ready
    }

    /// Process ids of every process this fleet runs: servers, `lbx pass`, running agents.
    pub fn pids(&self) -> Vec<u32> {
        let agents = self.nodes.iter().filter_map(|n| n.agent.as_ref());
        self.processes
            .iter()
            .chain(agents)
            .map(Process::pid)
            .collect()
    }

    /// Node `i`'s running agent's process id.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.node_at(i).agent.as_ref().map(Process::pid)
    }

    fn take_agent(&mut self, i: usize) -> anyhow::Result<&mut Process> {
        let agent = self
            .node_at_mut(i)
            .agent
            .take()
            .with_context(|| format!("node {i} runs no agent"))?;
        self.retired.push(agent);
        Ok(self.retired.last_mut().expect("just pushed"))
    }

    /// Kills node `i`'s agent with SIGKILL, as a crash would. Its balancer goes on serving
    /// on the node (the BPF filesystem holds it).
    pub fn kill_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let status = self.take_agent(i)?.kill();
        ensure!(
            status.is_some_and(
                |s| std::os::unix::process::ExitStatusExt::signal(&s) == Some(libc::SIGKILL)
            ),
            "node {i}'s lbx run did not die of SIGKILL: {status:?}"
        );
        Ok(())
    }

    /// Stops node `i`'s agent (SIGTERM), which must exit cleanly.
    pub fn stop_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let status = self.take_agent(i)?.stop();
        ensure!(
            status.is_some_and(|s| s.success()),
            "node {i}'s lbx run did not exit cleanly on SIGTERM: {status:?}"
        );
        Ok(())
    }

    /// Takes node `i` out of the router's multipath routes to the VIPs, as a BGP withdrawal
    /// would: new packets of every flow go to the other nodes (flows of the others may move
    /// among them too: the kernel's multipath hash is not consistent).
    pub fn withdraw_route(&mut self, i: usize) -> anyhow::Result<()> {
        self.node_at_mut(i).route_withdrawn = true;
        self.route_vips()
    }

    /// Puts node `i` back into the router's multipath routes.
    pub fn restore_route(&mut self, i: usize) -> anyhow::Result<()> {
        self.node_at_mut(i).route_withdrawn = false;
        self.route_vips()
    }

    /// The nodes the router's routes to the VIPs lead to now.
    pub fn routed_nodes(&self) -> Vec<usize> {
        (1..=self.node_count())
            .filter(|&i| !self.node_at(i).route_withdrawn)
            .collect()
    }

    /// The router's route to the VIP prefixes, one next hop per routed node.
    fn route_vips(&self) -> anyhow::Result<()> {
        let routed = self.routed_nodes();
        ensure!(
            !routed.is_empty(),
            "withdrawing every node would leave the VIPs without a route"
        );
        for (family, prefix) in [("-4", VIP_PREFIX_V4), ("-6", VIP_PREFIX_V6)] {
            let mut args = vec![
                family.to_owned(),
                "route".to_owned(),
                "replace".to_owned(),
                prefix.to_owned(),
            ];
            for &i in &routed {
                let via = if family == "-4" {
                    node_v4(i).to_string()
                } else {
                    node_v6(i).to_string()
                };
                args.extend(["nexthop", "via", &via, "dev", IFACE].map(str::to_owned));
            }
            self.router
                .netns
                .ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Ok(())
    }

    /// The nodes with a running agent whose connection table holds the TCP flow `src` ->
    /// `dst` (`lbx flow` says `connection table`): those its packets went through. The
    /// router's choice cannot be asked of it instead: `ip route get` hashes the addresses
    /// and ports, while a forwarded packet from a veth still carries the hash its sender's
    /// socket gave it (`skb->hash`), which the multipath lookup takes as it is. Per flow
    /// that choice is as fixed as a layer-4 hash's, and as evenly spread.
    pub fn holders(&self, src: SocketAddr, dst: SocketAddr) -> anyhow::Result<Vec<usize>> {
        let mut holders = Vec::new();
        for i in 1..=self.node_count() {
            if self.node_at(i).agent.is_some()
                && self.flow(i, src, dst)?.source == "connection table"
            {
                holders.push(i);
            }
        }
        Ok(holders)
    }

    /// Whether dropping the fleet prints each agent's status and stats and the tail of each
    /// process's log (default: yes, which the test harness shows only for a failed test).
    pub fn set_report_on_drop(&mut self, report: bool) {
        self.report_on_drop = report;
    }

    /// The last lines of every process's output, agents that ended included.
    pub fn log_tails(&self) -> String {
        let mut out = format!("logs in {}\n", self.dir.display());
        let agents = self.nodes.iter().filter_map(|n| n.agent.as_ref());
        for p in self.processes.iter().chain(&self.retired).chain(agents) {
            out.push_str(&p.tail(TAIL_LINES));
        }
        out
    }

    /// The switch, and one veth per host: the client has its own link to the router.
    fn wire(&self) -> anyhow::Result<()> {
        make_bridge(&self.switch, BRIDGE, INNER_MTU)?;
        let on_bridge = [&self.router]
            .into_iter()
            .chain(self.nodes.iter().map(|n| &n.host))
            .chain(&self.backends);
        for host in on_bridge {
            plug_host(&self.switch, host, INNER_MTU)?;
        }
        let (r, c) = (&self.router.netns, &self.client.netns);
        r.ip(&[
            "link",
            "add",
            ROUTER_CLIENT_IFACE,
            "mtu",
            &CLIENT_MTU.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            IFACE,
            "netns",
            c.name(),
        ])?;
        r.ip(&[
            "link",
            "set",
            ROUTER_CLIENT_IFACE,
            "address",
            &crate::capture::format_mac(&ROUTER_CLIENT_MAC),
            "up",
        ])?;
        c.ip(&[
            "link",
            "set",
            IFACE,
            "address",
            &self.client.mac_string(),
            "mtu",
            &CLIENT_MTU.to_string(),
            "up",
        ])?;
        add_addr(r, ROUTER_CLIENT_IFACE, ROUTER_CLIENT_SIDE_V4.into(), 24)?;
        add_addr(r, ROUTER_CLIENT_IFACE, ROUTER_CLIENT_SIDE_V6.into(), 64)?;
        add_addr(c, IFACE, CLIENT_V4.into(), 24)?;
        add_addr(c, IFACE, CLIENT_V6.into(), 64)?;
        Ok(())
    }

    fn configure_client(&self) -> anyhow::Result<()> {
        let c = &self.client.netns;
        route_vips_via(
            c,
            ROUTER_CLIENT_SIDE_V4.into(),
            ROUTER_CLIENT_SIDE_V6.into(),
        )?;
        static_neighbour(c, IFACE, ROUTER_CLIENT_SIDE_V4.into(), &ROUTER_CLIENT_MAC)?;
        static_neighbour(c, IFACE, ROUTER_CLIENT_SIDE_V6.into(), &ROUTER_CLIENT_MAC)?;
        client_checksums(c)
    }

    /// Forwarding with a layer-4 multipath hash (source and destination address and port,
    /// protocol), static neighbours, and the routes to the VIPs via every node.
    fn configure_router(&self) -> anyhow::Result<()> {
        let r = &self.router.netns;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        r.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        r.sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;
        // Replies come from VIP addresses, which the router routes via the nodes on the same
        // link; no reverse path filter in the way (IPv6 has none).
        for conf in ["all", "default", IFACE, ROUTER_CLIENT_IFACE] {
            r.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
        }
        static_neighbour(r, ROUTER_CLIENT_IFACE, CLIENT_V4.into(), &self.client.mac)?;
        static_neighbour(r, ROUTER_CLIENT_IFACE, CLIENT_V6.into(), &self.client.mac)?;
        for node in &self.nodes {
            static_neighbour(r, IFACE, node.host.ipv4.into(), &node.host.mac)?;
            static_neighbour(r, IFACE, node.host.ipv6.into(), &node.host.mac)?;
        }
        for b in &self.backends {
            static_neighbour(r, IFACE, b.ipv4.into(), &b.mac)?;
            static_neighbour(r, IFACE, b.ipv6.into(), &b.mac)?;
        }
        self.route_vips()
    }

    /// Each node forwards only through XDP (its kernel must not route VIP traffic itself)
    /// and knows the backends' MACs.
    fn configure_nodes(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            let ns = &node.host.netns;
            ns.sysctl("net.ipv4.ip_forward", "0")?;
            ns.sysctl("net.ipv6.conf.all.forwarding", "0")?;
            backend_neighbours(ns, &self.backends)?;
        }
        Ok(())
    }
}

/// A backend's replies go to the client via the router (DSR: never back through a node).
fn route_client_via_router(ns: &Netns, router: &Host) -> anyhow::Result<()> {
    for (family, prefix, via) in [
        ("-4", CLIENT_PREFIX_V4, IpAddr::from(router.ipv4)),
        ("-6", CLIENT_PREFIX_V6, IpAddr::from(router.ipv6)),
    ] {
        ns.ip(&[
            family,
            "route",
            "add",
            prefix,
            "via",
            &via.to_string(),
            "dev",
            IFACE,
        ])?;
        static_neighbour(ns, IFACE, via, &router.mac)?;
    }
    Ok(())
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Everything is cleaned up before anything is printed: printing can fail (a closed
        // pipe), and a failure must not leave processes or files behind.
        let report = self.report_on_drop || std::thread::panicking();
        let mut text = String::new();
        if report {
            for i in 1..=self.node_count() {
                if self.node_at(i).agent.is_some() {
                    text.push_str(&self.cli(i).report(&node_name(i)));
                }
            }
        }
        // The agents first; unmounting the BPF filesystem then releases the balancers they
        // leave serving, while the namespaces still exist.
        for node in &mut self.nodes {
            if let Some(mut agent) = node.agent.take() {
                agent.stop();
                self.retired.push(agent);
            }
        }
        for p in self.processes.iter_mut().rev() {
            p.stop();
        }
        if report {
            text.push_str(&self.log_tails());
        }
        self.processes.clear();
        self.retired.clear();
        if self.bpffs_mounted {
            bpffs::unmount(&self.dir.join(BPFFS_DIR));
        }
        if let Some(kept) = wiring::remove_temp_dir(&self.dir) {
            text.push_str(&kept);
        }
        if !text.is_empty() {
            eprintln!("{text}");
        }
        // The namespaces are fields, deleted after this with their interfaces.
    }
}
