//! The test network: namespaces, veths, bridge, addresses and the processes on each host,
//! behind one RAII guard.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

use crate::agent::{self, LbxCli};
use crate::capture::format_mac;
use crate::client::{Client, Connection};
use crate::netns::{self, Netns};
use crate::process::{Process, run_bounded};
use crate::wiring::{
    self, BPFFS_DIR, Veth, add_addr, make_bridge, make_temp_dir, plug, spawn_ready,
    static_neighbour,
};
use crate::{
    Binaries, CLIENT_V4, CLIENT_V6, DIRECT_PORT, LB_V4, LB_V6, MAX_BACKENDS, ROUTER_V4, ROUTER_V6,
    VIP_PREFIX_V4, VIP_PREFIX_V6, backend_mac, backend_name, backend_v4, backend_v6, bpffs,
    ethtool,
};

/// Every host's interface toward the switch has this name inside the host's namespace.
pub const IFACE: &str = "eth0";

/// The bridge in the switch namespace.
pub(crate) const BRIDGE: &str = "br0";
/// The client keeps the usual MTU; everything behind the lb has room for the 20-byte IPIP
/// or 40-byte IPv6-in-IPv6 header lbx adds (testbed pitfall 3).
pub(crate) const CLIENT_MTU: u16 = 1500;
pub(crate) const INNER_MTU: u16 = 1600;
/// Lines of each process's stdout and stderr shown when a test fails.
pub(crate) const TAIL_LINES: usize = 30;

/// The router's link to the client for IPv4 replies: its end's name in the router, its end's
/// name in the client, and the last byte of each end's MAC (02:77:00:00:04:xx).
const ROUTER_LEG_V4: (&str, &str, u8) = ("c4", "r4", 0x04);
/// The same for IPv6 replies (02:77:00:00:06:xx). One link per family, so that each has
/// its own MTU: an IPv4 one may be below IPv6's minimum of 1280.
const ROUTER_LEG_V6: (&str, &str, u8) = ("c6", "r6", 0x06);

/// The MTUs of the router's links to the client ([`TopologyBuilder::client_behind_router`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterLegs {
    /// MTU of the link that carries IPv4 replies (at least 576).
    pub mtu_v4: u16,
    /// MTU of the link that carries IPv6 replies (at least 1280).
    pub mtu_v6: u16,
}

impl RouterLegs {
    /// The client's interface on which the replies of `family` arrive.
    pub fn client_iface(family: IpAddr) -> &'static str {
        match family {
            IpAddr::V4(_) => ROUTER_LEG_V4.1,
            IpAddr::V6(_) => ROUTER_LEG_V6.1,
        }
    }

    /// The MTU of the link that carries replies of `family`.
    pub fn mtu_like(&self, family: IpAddr) -> u16 {
        match family {
            IpAddr::V4(_) => self.mtu_v4,
            IpAddr::V6(_) => self.mtu_v6,
        }
    }
}

/// One host: its namespace and where it sits on the link.
#[derive(Debug)]
pub struct Host {
    /// `client`, `lb` or `backend-<i>`.
    pub name: String,
    pub netns: Netns,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The MAC address of its interface [`IFACE`].
    pub mac: [u8; 6],
    /// The switch-side end of its veth (a bridge port), in the switch namespace.
    pub switch_port: String,
}

impl Host {
    /// The host's address of the same family as `like`.
    pub fn addr_like(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => self.ipv4.into(),
            IpAddr::V6(_) => self.ipv6.into(),
        }
    }

    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

/// Where `lbx flow` says a flow goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub backend: IpAddr,
    /// `connection table` or `maglev`.
    pub source: String,
}

/// A counter of `lbx --json stats` by its reason name (`forwarded`, `pass_not_vip`, ...).
pub fn reason_count(stats: &serde_json::Value, reason: &str) -> anyhow::Result<u64> {
    stats["reasons"][reason]
        .as_u64()
        .with_context(|| format!("`lbx stats --json` has no reasons.{reason}: {stats}"))
}

/// How many of `names` are each name, sorted by name.
pub fn tally<S: AsRef<str>>(names: &[S]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for name in names {
        *counts.entry(name.as_ref().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// The environment variable choosing how backends decapsulate: `xdp` (the default),
/// `kernel` or `mixed`; see [`DecapMode`].
pub const DECAP_ENV: &str = "LBX_TEST_DECAP";

/// How the backends of a topology decapsulate the packets lbx sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapMode {
    /// Every backend runs `lbx decap` (XDP). The default: it needs no tunnel support in the
    /// kernel, and this project's test host has no IPIP.
    Xdp,
    /// Every backend decapsulates with its kernel's fallback tunnel devices `tunl0` (module
    /// ipip) and `ip6tnl0` (ip6_tunnel), as the README tells operators to.
    Kernel,
    /// Odd backends use the kernel's devices, even ones `lbx decap`, so that one run covers
    /// both paths (what `cargo xtask vm-test` uses).
    Mixed,
}

impl DecapMode {
    /// From [`DECAP_ENV`]; `xdp` when unset.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(DECAP_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(DecapMode::Xdp),
            Ok(v) if v == "xdp" => Ok(DecapMode::Xdp),
            Ok(v) if v == "kernel" => Ok(DecapMode::Kernel),
            Ok(v) if v == "mixed" => Ok(DecapMode::Mixed),
            Ok(v) => bail!("{DECAP_ENV}={v}: expected xdp, kernel or mixed"),
            Err(e) => bail!("{DECAP_ENV}: {e}"),
        }
    }

    /// `chosen`, or else what [`DECAP_ENV`] says.
    pub fn or_from_env(chosen: Option<Self>) -> anyhow::Result<Self> {
        match chosen {
            Some(mode) => Ok(mode),
            None => Self::from_env(),
        }
    }

    /// How backend `i` (1-based) decapsulates.
    pub fn for_backend(self, i: usize) -> Decap {
        match self {
            DecapMode::Xdp => Decap::Xdp,
            DecapMode::Kernel => Decap::Kernel,
            DecapMode::Mixed if i % 2 == 1 => Decap::Kernel,
            DecapMode::Mixed => Decap::Xdp,
        }
    }
}

/// The environment variable naming another build of the XDP programs, from the same
/// lbx-ebpf source in other instructions, for `lbx run --xdp-object`: `cargo xtask test`
/// and `vm-test` build it and set it.
pub const XDP_VARIANT_ENV: &str = "LBX_TEST_XDP_VARIANT";

/// The object [`XDP_VARIANT_ENV`] names; an error that says how to get one if it is unset
/// or names no file.
pub fn xdp_variant() -> anyhow::Result<PathBuf> {
    let Some(path) = std::env::var_os(XDP_VARIANT_ENV) else {
        bail!(
            "{XDP_VARIANT_ENV} is not set: it names the other build of the XDP programs that \
             `cargo xtask test` makes (target/lbx-xdp-variant/bpfel-unknown-none/release/lbx-xdp); \
             run the test through xtask, or set it to such an object"
        );
    };
    let path = PathBuf::from(path);
    ensure!(
        path.is_file(),
        "{XDP_VARIANT_ENV} is set to {}, which is not a file",
        path.display()
    );
    Ok(path)
}

/// The kernel's tag of BPF program `id`: a hash of its instructions, the same for every
/// load of one build, so two builds whose code differs have different tags.
pub fn program_tag(id: u64) -> anyhow::Result<u64> {
    for info in aya::programs::loaded_programs() {
        let info = info.context("list the loaded BPF programs")?;
        if u64::from(info.id()) == id {
            return Ok(info.tag());
        }
    }
    bail!("no BPF program with id {id} is loaded")
}

/// The environment variable scaling the tests' counts of connections, flows and
/// configuration changes: a factor in (0, 1], default 1. `cargo xtask vm-test` sets 0.5 in
/// its VMs, whose emulated CPU makes every connection and CLI call about 20 times slower.
pub const SCALE_ENV: &str = "LBX_TEST_SCALE";

/// `n` times [`SCALE_ENV`], rounded, but at least `min`: the floor a test needs for its
/// check to mean anything. Bounds that depend on a count must use the scaled count.
pub fn scaled(n: usize, min: usize) -> usize {
    let factor = match std::env::var(SCALE_ENV) {
        Err(_) => 1.0,
        Ok(v) => match v.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => f,
            _ => panic!("{SCALE_ENV}={v}: expected a factor in (0, 1]"),
        },
    };
    ((n as f64 * factor).round() as usize).max(min).min(n)
}

/// The environment variable stretching the time the tests wait for something that must
/// happen: a factor of at least 1, default 1. `cargo xtask vm-test` sets 10 in its emulated
/// VMs, whose CPU is 13 to 20 times slower than the host's (more when the host is busy).
pub const TIME_SCALE_ENV: &str = "LBX_TEST_TIME_SCALE";

/// `limit` times [`TIME_SCALE_ENV`]: for a deadline after which a wait gives up (a process
/// getting ready, a CLI call answering, a state being reached). Never for a bound a test
/// asserts (how fast a failure is detected): a slower machine does not change what lbx
/// promises, and such a bound must be measured so that slow observation cannot break it.
pub fn patience(limit: Duration) -> Duration {
    let factor = match std::env::var(TIME_SCALE_ENV) {
        Err(_) => 1.0,
        Ok(v) => match v.parse::<f64>() {
            Ok(f) if (1.0..=100.0).contains(&f) => f,
            _ => panic!("{TIME_SCALE_ENV}={v}: expected a factor from 1 to 100"),
        },
    };
    limit.mul_f64(factor)
}

/// How one backend decapsulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decap {
    /// `lbx decap --iface eth0 --vip ...`.
    Xdp,
    /// `tunl0` and `ip6tnl0` up, reverse path filtering off on tunl0.
    Kernel,
}

/// What to build; see [`Topology::builder`].
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    backends: usize,
    vips: Vec<SocketAddr>,
    lbx: bool,
    /// None: from [`DECAP_ENV`] when built.
    decap: Option<DecapMode>,
    /// Extra arguments of `lbx run`.
    agent_args: Vec<String>,
    /// A router on the backends' return path to the client.
    router: Option<RouterLegs>,
}

/// The running test network. Dropping it stops every process it started (process groups,
/// SIGTERM then SIGKILL), deletes every namespace and its temporary directory, and prints the
/// tail of each process's output (the test harness shows it when the test fails).
///
/// Its processes are also bound to the thread that built it (`PR_SET_PDEATHSIG`), so that a
/// test process killed outright leaves none behind: build and drop it on the same thread.
#[derive(Debug)]
pub struct Topology {
    processes: Vec<Process>,
    pub client: Host,
    pub lb: Host,
    pub backends: Vec<Host>,
    /// The router of [`TopologyBuilder::client_behind_router`], if asked for.
    pub router: Option<Host>,
    /// The MTUs of its links to the client.
    pub router_legs: Option<RouterLegs>,
    pub switch: Netns,
    dir: PathBuf,
    bins: Binaries,
    socket: PathBuf,
    /// Whether `lbx run` was started (so `lbx status` may answer).
    agent_started: bool,
    /// Whether dropping prints the agent's state and the processes' logs.
    report_on_drop: bool,
    /// How each backend decapsulates (empty without lbx).
    decap: Vec<Decap>,
    /// Extra arguments of `lbx run`, kept for restarts.
    agent_args: Vec<String>,
}

impl TopologyBuilder {
    /// How many backends (at least 1, at most [`MAX_BACKENDS`]); default 3.
    pub fn backends(mut self, n: usize) -> Self {
        self.backends = n;
        self
    }

    /// A VIP the backends serve: each puts its address on `lo`, runs the test server on it,
    /// and decapsulates packets for it. Configuring the VIP in lbx is up to the test.
    pub fn vip(mut self, vip: SocketAddr) -> Self {
        self.vips.push(vip);
        self
    }

    /// Builds the network and backends' servers only: no lbx anywhere (no XDP programs). For
    /// checking the test rig itself.
    pub fn without_lbx(mut self) -> Self {
        self.lbx = false;
        self
    }

    /// How the backends decapsulate, instead of what [`DECAP_ENV`] says.
    pub fn decap(mut self, mode: DecapMode) -> Self {
        self.decap = Some(mode);
        self
    }

    /// Extra arguments of `lbx run`, after the topology's own (`--control-interval-ms 500`).
    pub fn agent_args(mut self, args: &[&str]) -> Self {
        self.agent_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Puts a router on the backends' way back to the client, where the MTU drops: the
    /// router (10.77.0.3, fd77::3) is on the bridge like every host and has one more link
    /// per family straight to the client, with MTU `mtu_v4` for IPv4 and `mtu_v6` for IPv6
    /// on both ends. The backends route the client's addresses via the router, which sends
    /// them out those links; everything else is as without it (the client still reaches the
    /// VIPs through the lb, on its own link). The router routes the VIP prefixes to the
    /// lb, so the ICMP errors it sends about a backend's reply (from a VIP) that does not
    /// fit reach lbx, as they would from a router on the Internet.
    pub fn client_behind_router(mut self, mtu_v4: u16, mtu_v6: u16) -> Self {
        self.router = Some(RouterLegs { mtu_v4, mtu_v6 });
        self
    }

    pub fn build(self) -> anyhow::Result<Topology> {
        check_build("a topology", self.backends)?;
        if let Some(legs) = self.router {
            ensure!(
                (576..INNER_MTU).contains(&legs.mtu_v4) && (1280..INNER_MTU).contains(&legs.mtu_v6),
                "the router's links need an MTU below {INNER_MTU} and at least 576 (IPv4) or \
                 1280 (IPv6): {legs:?}"
            );
        }
        ensure!(
            !(self.lbx && self.vips.is_empty()),
            "a topology with lbx needs at least one VIP"
        );
        let decap = DecapMode::or_from_env(self.decap)?;
        netns::remove_stale_namespaces();
        let bins = Binaries {
            test_server: Binaries::locate_test_server()?,
            // Without lbx the rig never runs it; an empty path makes any use fail loudly.
            lbx: if self.lbx {
                Binaries::locate_lbx()?
            } else {
                Binaries::locate_lbx().unwrap_or_default()
            },
        };

        // Namespaces first: each deletes itself if a later step fails. The directory last, as
        // from its creation on `topo` owns it.
        let client = make_host("client", CLIENT_V4, CLIENT_V6, 0x01)?;
        let lb = make_host("lb", LB_V4, LB_V6, 0x02)?;
        let switch = Netns::create("switch")?;
        let router = self
            .router
            .map(|_| make_host("router", ROUTER_V4, ROUTER_V6, 0x03))
            .transpose()?;
        let dir = make_temp_dir()?;
        let mut topo = Topology {
            processes: Vec::new(),
            client,
            lb,
            backends: Vec::new(),
            router,
            router_legs: self.router,
            switch,
            socket: dir.join("lbx.sock"),
            dir,
            bins,
            agent_started: false,
            report_on_drop: true,
            decap: Vec::new(),
            agent_args: self.agent_args,
        };
        for i in 1..=self.backends {
            topo.backends.push(make_backend_host(i)?);
        }
        // From here on a failure drops `topo`, which cleans up everything made so far.
        topo.wire()?;
        topo.configure_client()?;
        topo.configure_lb()?;
        topo.configure_backends(&self.vips)?;
        topo.configure_router()?;
        topo.start_backends(&self.vips, self.lbx.then_some(decap))?;
        if self.lbx {
            topo.start_lbx()?;
        }
        Ok(topo)
    }
}

/// Has the backend's kernel decapsulate: once up, its fallback tunnel devices take every
/// IPIP and IPv6-in-IPv6 packet addressed to the backend, whatever the outer source (lbx
/// varies it per flow). The inner packet then arrives on tunl0 from the client, whose route
/// is via eth0: reverse path filtering must be off on tunl0 too (IPv6 has none).
fn kernel_decap(netns: &Netns) -> anyhow::Result<()> {
    for dev in ["tunl0", "ip6tnl0"] {
        netns.ip(&["link", "set", dev, "up"]).with_context(|| {
            format!(
                "{DECAP_ENV}=kernel or mixed needs the kernel's ipip and ip6_tunnel modules \
                 (every namespace then has tunl0 and ip6tnl0), and {} has no {dev}: use \
                 {DECAP_ENV}=xdp on this kernel, or the VMs (`cargo xtask vm-test`)",
                netns.name()
            )
        })?;
    }
    netns.sysctl("net.ipv4.conf.tunl0.rp_filter", "0")
}

/// A host `name` in a namespace of its own (`backend-<i>` is called `b<i>` in namespace and
/// port names), with the MAC 02:77:00:00:00:`mac_last`, its switch port `p-<name>`.
pub(crate) fn make_host(
    name: &str,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    mac_last: u8,
) -> anyhow::Result<Host> {
    let netns = Netns::create(&name.replace("backend-", "b"))?;
    // Before any interface exists here, so that every interface is created with these:
    // addresses are usable at once, with no duplicate address detection to wait for.
    netns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    netns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    netns.ip(&["link", "set", "lo", "up"])?;
    Ok(Host {
        name: name.to_owned(),
        netns,
        ipv4,
        ipv6,
        mac: [0x02, 0x77, 0, 0, 0, mac_last],
        switch_port: format!("p-{}", name.replace("backend-", "b")),
    })
}

/// What the build of every test network checks first: root, and 1 to [`MAX_BACKENDS`]
/// backends (`network`: `a topology`, to name it in the error).
pub(crate) fn check_build(network: &str, backends: usize) -> anyhow::Result<()> {
    ensure!(
        crate::is_root(),
        "the network tests must run as root (they create network namespaces)"
    );
    ensure!(
        (1..=MAX_BACKENDS).contains(&backends),
        "{network} has 1 to {MAX_BACKENDS} backends, not {backends}"
    );
    Ok(())
}

/// Routes both VIP prefixes from `ns` via `v4` and `v6` on its [`IFACE`].
pub(crate) fn route_vips_via(ns: &Netns, v4: IpAddr, v6: IpAddr) -> anyhow::Result<()> {
    for (family, prefix, via) in [("-4", VIP_PREFIX_V4, v4), ("-6", VIP_PREFIX_V6, v6)] {
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
    }
    Ok(())
}

/// Turns TX checksum offload off on a client's [`IFACE`]: its veth would leave TCP and UDP
/// checksums partial, and after lbx's native XDP_TX the backend drops such packets.
pub(crate) fn client_checksums(ns: &Netns) -> anyhow::Result<()> {
    ns.run(|| ethtool::disable_tx_checksum(IFACE))?
        .with_context(|| format!("failed to turn TX checksum offload off on the client's {IFACE}"))
}

/// Backend `i` (1-based): its name, addresses and MAC.
pub(crate) fn make_backend_host(i: usize) -> anyhow::Result<Host> {
    make_host(
        &backend_name(i),
        backend_v4(i),
        backend_v6(i),
        backend_mac(i)[5],
    )
}

/// Plugs `host` into the bridge of `sw` on its port, with MTU `mtu` and both addresses on its
/// [`IFACE`] (a /24 and a /64).
pub(crate) fn plug_host(sw: &Netns, host: &Host, mtu: u16) -> anyhow::Result<()> {
    let veth = Veth {
        switch_port: &host.switch_port,
        iface: IFACE,
        mac: Some(host.mac),
        mtu,
    };
    plug(sw, BRIDGE, INNER_MTU, &host.netns, veth)?;
    add_addr(&host.netns, IFACE, host.ipv4.into(), 24)?;
    add_addr(&host.netns, IFACE, host.ipv6.into(), 64)
}

/// Static neighbour entries in an lb's namespace for both addresses of every backend.
/// `lbx backend add` without --mac looks the backend up in the neighbour table.
pub(crate) fn backend_neighbours(lb: &Netns, backends: &[Host]) -> anyhow::Result<()> {
    for b in backends {
        static_neighbour(lb, IFACE, b.ipv4.into(), &b.mac)?;
        static_neighbour(lb, IFACE, b.ipv6.into(), &b.mac)?;
    }
    Ok(())
}

/// A backend's namespace for DSR: the VIPs' addresses on `lo`, ARP that never claims them,
/// no reverse path filter for the decapsulated packets, no forwarding.
pub(crate) fn configure_backend(ns: &Netns, vips: &[SocketAddr]) -> anyhow::Result<()> {
    let addrs: BTreeSet<IpAddr> = vips.iter().map(SocketAddr::ip).collect();
    // The VIPs live on lo: the backend accepts packets for them but never claims them on the
    // link (ARP for them is answered by nobody, replies use the link address).
    ns.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
    ns.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
    ns.sysctl(&format!("net.ipv4.conf.{IFACE}.arp_ignore"), "1")?;
    ns.sysctl(&format!("net.ipv4.conf.{IFACE}.arp_announce"), "2")?;
    // Decapsulated packets come in on eth0 addressed to a VIP on lo.
    for conf in ["all", "default", IFACE] {
        ns.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
    }
    ns.sysctl("net.ipv4.ip_forward", "0")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "0")?;
    for addr in addrs {
        add_addr(ns, "lo", addr, if addr.is_ipv4() { 32 } else { 128 })?;
    }
    Ok(())
}

/// The test server's arguments for backend `b`: its name, the VIPs and its own addresses at
/// [`DIRECT_PORT`].
fn server_args<'a>(b: &Host, vips: impl IntoIterator<Item = &'a SocketAddr>) -> Vec<String> {
    let mut args = vec!["--name".to_owned(), b.name.clone()];
    let own = [
        SocketAddr::new(b.ipv4.into(), DIRECT_PORT),
        SocketAddr::new(b.ipv6.into(), DIRECT_PORT),
    ];
    for addr in vips.into_iter().copied().chain(own) {
        args.extend(["--listen".to_owned(), addr.to_string()]);
    }
    args
}

/// Starts each backend's server and, with lbx (`decap` is set), its decapsulation; returns
/// how each backend decapsulates (empty without lbx).
pub(crate) fn start_backends(
    processes: &mut Vec<Process>,
    dir: &Path,
    bins: &Binaries,
    backends: &[Host],
    vips: &[SocketAddr],
    decap: Option<DecapMode>,
) -> anyhow::Result<Vec<Decap>> {
    let vip_addrs: BTreeSet<IpAddr> = vips.iter().map(SocketAddr::ip).collect();
    let listen: BTreeSet<SocketAddr> = vips.iter().copied().collect();
    let mut how = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        let args = server_args(b, &listen);
        let label = format!("{}-server", b.name);
        spawn_ready(
            processes,
            dir,
            &label,
            &b.netns,
            &bins.test_server,
            &args,
            "listening",
        )?;
        let Some(mode) = decap else { continue };
        let this = mode.for_backend(i + 1);
        how.push(this);
        if this == Decap::Kernel {
            kernel_decap(&b.netns)?;
        } else {
            let mut args = vec!["decap".to_owned(), "--iface".to_owned(), IFACE.to_owned()];
            for addr in &vip_addrs {
                args.extend(["--vip".to_owned(), addr.to_string()]);
            }
            let label = format!("{}-decap", b.name);
            spawn_ready(
                processes, dir, &label, &b.netns, &bins.lbx, &args, "attached",
            )?;
        }
    }
    if let Some(mode) = decap {
        // In the test's output, shown when it fails.
        eprintln!(
            "decapsulation ({DECAP_ENV}={}): {}",
            match mode {
                DecapMode::Xdp => "xdp",
                DecapMode::Kernel => "kernel",
                DecapMode::Mixed => "mixed",
            },
            backends
                .iter()
                .zip(&how)
                .map(|(b, d)| format!(
                    "{} {}",
                    b.name,
                    match d {
                        Decap::Xdp => "lbx decap",
                        Decap::Kernel => "tunl0/ip6tnl0",
                    }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(how)
}

/// Runs `lbx pass` on `port` of the switch `sw` (labelled `label`): an lb sends with native
/// XDP_TX into its veth, whose peer needs an XDP program for the frames to arrive.
pub(crate) fn start_pass(
    processes: &mut Vec<Process>,
    dir: &Path,
    lbx: &Path,
    sw: &Netns,
    port: &str,
    label: &str,
) -> anyhow::Result<()> {
    let args = ["pass", "--iface", port].map(str::to_owned);
    spawn_ready(processes, dir, label, sw, lbx, &args, "attached")
}

impl Topology {
    /// A topology with 3 backends and lbx; add VIPs with [`TopologyBuilder::vip`].
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder {
            backends: 3,
            vips: Vec::new(),
            lbx: true,
            decap: None,
            agent_args: Vec::new(),
            router: None,
        }
    }

    fn hosts(&self) -> impl Iterator<Item = &Host> {
        [&self.client, &self.lb]
            .into_iter()
            .chain(&self.router)
            .chain(&self.backends)
    }

    /// Names of every namespace of this topology.
    pub fn namespace_names(&self) -> Vec<String> {
        self.hosts()
            .map(|h| h.netns.name().to_owned())
            .chain([self.switch.name().to_owned()])
            .collect()
    }

    /// Process ids of every process this topology started.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(Process::pid).collect()
    }

    /// The running agent's process id.
    pub fn agent_pid(&self) -> Option<u32> {
        self.processes
            .iter()
            .find(|p| p.label() == "lb-agent")
            .map(Process::pid)
    }

    /// The temporary directory holding the socket, config and process logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The agent's control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// The client host's connections and pings.
    pub fn client(&self) -> Client<'_> {
        Client::new(&self.client.netns)
    }

    /// Backend `i`, 1-based like the names.
    pub fn backend(&self, i: usize) -> &Host {
        &self.backends[i - 1]
    }

    /// The backend that answers with `name`.
    pub fn backend_named(&self, name: &str) -> Option<&Host> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// The backend whose address is `addr`.
    pub fn backend_at(&self, addr: IpAddr) -> Option<&Host> {
        self.backends
            .iter()
            .find(|b| IpAddr::V4(b.ipv4) == addr || IpAddr::V6(b.ipv6) == addr)
    }

    /// The switch: a bridge, and one veth per host with its switch end enslaved to it.
    fn wire(&self) -> anyhow::Result<()> {
        make_bridge(&self.switch, BRIDGE, INNER_MTU)?;
        for host in self.hosts() {
            let mtu = if host.name == "client" {
                CLIENT_MTU
            } else {
                INNER_MTU
            };
            plug_host(&self.switch, host, mtu)?;
        }
        Ok(())
    }

    fn configure_client(&self) -> anyhow::Result<()> {
        route_vips_via(&self.client.netns, LB_V4.into(), LB_V6.into())?;
        client_checksums(&self.client.netns)
    }

    /// The router's links to the client, its routes, and the backends' routes to the client
    /// through it; nothing without a router.
    fn configure_router(&self) -> anyhow::Result<()> {
        let (Some(router), Some(legs)) = (&self.router, self.router_legs) else {
            return Ok(());
        };
        let r = &router.netns;
        let c = &self.client.netns;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // ICMP errors about the replies go to their source, a VIP: through the lb.
        route_vips_via(r, LB_V4.into(), LB_V6.into())?;
        let client_addrs: [(IpAddr, _, u16); 2] = [
            (CLIENT_V4.into(), ROUTER_LEG_V4, legs.mtu_v4),
            (CLIENT_V6.into(), ROUTER_LEG_V6, legs.mtu_v6),
        ];
        for (addr, (router_end, client_end, mac_byte), mtu) in client_addrs {
            let mtu = mtu.to_string();
            let router_mac = format_mac(&[0x02, 0x77, 0, 0, mac_byte, 0x03]);
            let client_mac = format_mac(&[0x02, 0x77, 0, 0, mac_byte, 0x01]);
            r.ip(&[
                "link",
                "add",
                router_end,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                client_end,
                "netns",
                c.name(),
            ])?;
            r.ip(&["link", "set", router_end, "address", &router_mac, "up"])?;
            c.ip(&[
                "link",
                "set",
                client_end,
                "address",
                &client_mac,
                "mtu",
                &mtu,
                "up",
            ])?;
            let (family, host) = match addr {
                IpAddr::V4(a) => ("-4", format!("{a}/32")),
                IpAddr::V6(a) => ("-6", format!("{a}/128")),
            };
            r.ip(&[family, "route", "add", &host, "dev", router_end])?;
            // Static, so nothing waits on ARP or neighbour discovery over a link where the
            // client has no address of its own.
            r.ip(&[
                family,
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &client_mac,
                "dev",
                router_end,
                "nud",
                "permanent",
            ])?;
            for b in &self.backends {
                let via = router.addr_like(addr).to_string();
                b.netns
                    .ip(&[family, "route", "add", &host, "via", &via, "dev", IFACE])?;
            }
        }
        // A black hole stays one: without the router's errors a backend never finds the
        // path MTU (the kernel's default, set for hosts whose default differs).
        for b in &self.backends {
            b.netns.sysctl("net.ipv4.tcp_mtu_probing", "0")?;
        }
        // Replies from the VIPs arrive on the router's links, while the client routes the
        // VIPs via eth0: no reverse path filtering (IPv6 has none).
        for conf in ["all", "default", ROUTER_LEG_V4.1, ROUTER_LEG_V6.1] {
            c.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
        }
        Ok(())
    }

    fn configure_lb(&self) -> anyhow::Result<()> {
        let lb = &self.lb.netns;
        // The lb forwards only through XDP; its kernel must not route VIP traffic itself.
        lb.sysctl("net.ipv4.ip_forward", "0")?;
        lb.sysctl("net.ipv6.conf.all.forwarding", "0")?;
        backend_neighbours(lb, &self.backends)
    }

    fn configure_backends(&self, vips: &[SocketAddr]) -> anyhow::Result<()> {
        for b in &self.backends {
            configure_backend(&b.netns, vips)?;
        }
        Ok(())
    }

    /// Starts each backend's server and, with lbx (`decap` is set), its decapsulation.
    fn start_backends(
        &mut self,
        vips: &[SocketAddr],
        decap: Option<DecapMode>,
    ) -> anyhow::Result<()> {
        let started = start_backends(
            &mut self.processes,
            &self.dir,
            &self.bins,
            &self.backends,
            vips,
            decap,
        );
        self.decap = started?;
        Ok(())
    }

    fn start_lbx(&mut self) -> anyhow::Result<()> {
        // The lb sends with native XDP_TX into its veth: the peer needs an XDP program.
        start_pass(
            &mut self.processes,
            &self.dir,
            &self.bins.lbx,
            &self.switch,
            &self.lb.switch_port,
            "switch-pass",
        )?;
        bpffs::mount(&self.bpffs())?;
        self.start_agent()
    }

    /// Starts `lbx run` in the lb namespace and waits until it answers.
    fn start_agent(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.lb.netns.command(&self.bins.lbx);
        cmd.args(self.agent_args_with(&[]));
        let mut agent = Process::spawn("lb-agent", cmd, &self.dir)?;
        self.agent_started = true;
        let ready = self.cli().wait_for(&mut agent);
        self.processes.push(agent);
        ready
    }

    /// The agent's `lbx run` arguments, then `extra`.
    fn agent_args_with(&self, extra: &[&str]) -> Vec<String> {
        agent::run_args(
            IFACE,
            &self.socket,
            &self.config_path(),
            &self.bpffs(),
            self.agent_args
                .iter()
                .cloned()
                .chain(extra.iter().map(|a| (*a).to_owned())),
        )
    }

    /// The `lbx` CLI against the agent, inside the lb namespace.
    pub fn cli(&self) -> LbxCli<'_> {
        LbxCli {
            netns: &self.lb.netns,
            lbx: &self.bins.lbx,
            socket: &self.socket,
        }
    }

    /// The agent's `lbx run` with `extra` arguments, in the lb namespace, not yet run (for
    /// a start that must fail; [`Topology::start_agent_with`] starts one that serves).
    pub fn agent_command(&self, extra: &[&str]) -> Command {
        let mut cmd = self.lb.netns.command(&self.bins.lbx);
        cmd.args(self.agent_args_with(extra));
        cmd
    }

    /// Starts an agent (after [`Topology::stop_agent`]) with `extra` arguments from now on.
    pub fn start_agent_with(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.agent_args
            .extend(extra.iter().map(|a| (*a).to_owned()));
        self.start_agent()
    }

    /// How backend `i` (1-based) decapsulates; None without lbx.
    pub fn backend_decap(&self, i: usize) -> Option<Decap> {
        self.decap.get(i.checked_sub(1)?).copied()
    }

    /// `ip netns exec <lb> lbx --socket S ARGS`, not yet run.
    pub fn lbx_command(&self, args: &[&str]) -> Command {
        self.cli().command(args)
    }

    /// Runs an `lbx` CLI command against the agent inside the lb namespace; returns its
    /// output whatever the exit status.
    pub fn lbx_output(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.cli().output(args)
    }

    /// Runs an `lbx` CLI command; returns stdout, or an error with stderr if it failed.
    pub fn lbx(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cli().run(args)
    }

    /// Runs `lbx --json ARGS` and parses its stdout.
    pub fn lbx_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        self.cli().json(args)
    }

    /// Runs an `lbx` CLI command that must fail; returns its stderr.
    pub fn lbx_fails(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cli().fails(args)
    }

    /// Runs `program ARGS` to completion inside `netns` with a time limit.
    pub fn run_in(
        &self,
        netns: &Netns,
        program: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        let mut cmd = netns.command(program);
        cmd.args(args);
        run_bounded(cmd, timeout)
    }

    /// Starts an extra long-running process in the lb's namespace (e.g. a listener on the
    /// lb's own address) and waits for its `ready_line`; it is stopped with the topology.
    pub fn spawn_in_lb(
        &mut self,
        label: &str,
        program: &Path,
        args: &[String],
        ready_line: &str,
    ) -> anyhow::Result<()> {
        spawn_ready(
            &mut self.processes,
            &self.dir,
            label,
            &self.lb.netns,
            program,
            args,
            ready_line,
        )
    }

    /// The BPF filesystem the agents pin under (`--bpffs`), shared by every agent of this
    /// topology, so that one adopts what the one before it left serving.
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join(BPFFS_DIR)
    }

    /// The `lbx status` entry of backend `addr` of the TCP VIP `vip`.
    pub fn backend_status(&self, vip: SocketAddr, addr: IpAddr) -> serde_json::Value {
        let status = self.lbx_json(&["status"]).expect("lbx status");
        let vip_name = format!("{vip}/tcp");
        status["vips"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["vip"] == vip_name.as_str()))
            .and_then(|v| v["backends"].as_array())
            .and_then(|b| b.iter().find(|b| b["address"] == addr.to_string().as_str()))
            .cloned()
            .unwrap_or_else(|| panic!("no backend {addr} of {vip_name} in `lbx status`: {status}"))
    }

    /// Every open connection still answers, from the backend it first reached, after
    /// `after` (what the test did meanwhile).
    pub fn assert_unmoved(conns: &mut [Connection], after: &str) {
        for conn in conns.iter_mut() {
            let was = conn.first_answer().expect("asked once").to_owned();
            let now = conn.ask().unwrap_or_else(|e| {
                panic!(
                    "after {after}: the connection from port {} to {} broke: {e:#}",
                    conn.src_port(),
                    conn.dst()
                )
            });
            assert_eq!(
                now,
                was,
                "after {after}: the connection from port {} to {} moved from {was} to {now}",
                conn.src_port(),
                conn.dst()
            );
        }
    }

    /// `lbx flow` says each open connection is answered from the connection table, by the
    /// backend it first reached.
    pub fn assert_held_by_table(&self, conns: &[Connection]) {
        for conn in conns {
            let client: IpAddr = match conn.dst() {
                SocketAddr::V4(_) => CLIENT_V4.into(),
                SocketAddr::V6(_) => CLIENT_V6.into(),
            };
            let flow = self
                .flow(SocketAddr::new(client, conn.src_port()), conn.dst())
                .expect("lbx flow");
            let name = &self.backend_at(flow.backend).expect("a backend").name;
            assert_eq!(
                (flow.source.as_str(), name.as_str()),
                ("connection table", conn.first_answer().expect("asked")),
                "lbx flow for the open connection from port {} to {}",
                conn.src_port(),
                conn.dst()
            );
        }
    }

    /// The agent's configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("lbx.toml")
    }

    /// Stops the agent (SIGTERM: the balancer it attached goes on serving) and starts
    /// another on the same configuration file, which takes the balancer over.
    pub fn restart_agent(&mut self) -> anyhow::Result<()> {
        self.stop_agent()?;
        self.start_agent()
    }

    /// Stops the agent (SIGTERM) and starts none: the balancer serves on without one.
    pub fn stop_agent(&mut self) -> anyhow::Result<()> {
        let status = self.take_agent()?.stop();
        ensure!(
            status.is_some_and(|s| s.success()),
            "lbx run did not exit cleanly on SIGTERM: {status:?}"
        );
        Ok(())
    }

    /// Stops the agent (SIGTERM) and starts another whose programs come from `object`
    /// (`lbx run --xdp-object`, kept for the agents after it): an upgrade of the data
    /// plane to another build.
    pub fn upgrade_agent(&mut self, object: &Path) -> anyhow::Result<()> {
        self.stop_agent()?;
        self.start_agent_with(&["--xdp-object", &object.display().to_string()])
    }

    /// Kills the agent with SIGKILL, as a crash would, and starts another, which takes the
    /// balancer over.
    pub fn crash_agent(&mut self) -> anyhow::Result<()> {
        let status = self.take_agent()?.kill();
        ensure!(
            status.is_some_and(
                |s| std::os::unix::process::ExitStatusExt::signal(&s) == Some(libc::SIGKILL)
            ),
            "lbx run did not die of SIGKILL: {status:?}"
        );
        self.start_agent()
    }

    fn take_agent(&mut self) -> anyhow::Result<Process> {
        let at = self
            .processes
            .iter()
            .position(|p| p.label() == "lb-agent")
            .ok_or_else(|| anyhow::anyhow!("no running lb-agent"))?;
        Ok(self.processes.remove(at))
    }

    /// Stops backend `i`'s server, as if its service died (its address still answers).
    pub fn stop_server(&mut self, i: usize) -> anyhow::Result<()> {
        let label = format!("{}-server", self.backend(i).name);
        let at = self
            .processes
            .iter()
            .position(|p| p.label() == label)
            .ok_or_else(|| anyhow::anyhow!("no running {label}"))?;
        let mut p = self.processes.remove(at);
        p.stop();
        Ok(())
    }

    /// Starts backend `i`'s server again, listening on `vips` and its own addresses.
    pub fn start_server(&mut self, i: usize, vips: &[SocketAddr]) -> anyhow::Result<()> {
        let b = &self.backends[i - 1];
        spawn_ready(
            &mut self.processes,
            &self.dir,
            &format!("{}-server", b.name),
            &b.netns,
            &self.bins.test_server,
            &server_args(b, vips),
            "listening",
        )
    }

    /// Backend `i`'s address of the VIP's family.
    pub fn backend_addr(&self, i: usize, vip: SocketAddr) -> IpAddr {
        self.backend(i).addr_like(vip.ip())
    }

    /// `lbx vip add VIP`, then `lbx backend add VIP <addr> --weight W` for each backend
    /// `(i, W)` (addresses of the VIP's family; MACs from the lb's neighbour table).
    pub fn add_vip(&self, vip: SocketAddr, backends: &[(usize, u32)]) -> anyhow::Result<()> {
        self.lbx(&["vip", "add", &vip.to_string()])?;
        for &(i, weight) in backends {
            self.lbx(&[
                "backend",
                "add",
                &vip.to_string(),
                &self.backend_addr(i, vip).to_string(),
                "--weight",
                &weight.to_string(),
            ])?;
        }
        Ok(())
    }

    /// `lbx --json flow SRC DST`: the backend a TCP flow goes to and why (`source`).
    pub fn flow(&self, src: SocketAddr, dst: SocketAddr) -> anyhow::Result<Flow> {
        self.cli().flow(src, dst)
    }

    /// `lbx --json backend list`: the whole running backend configuration.
    pub fn backend_list(&self) -> anyhow::Result<serde_json::Value> {
        self.lbx_json(&["backend", "list"])
    }

    /// Whether dropping the topology prints the agent's status and stats and the tail of each
    /// process's log (default: yes, which the test harness shows only for a failed test; a
    /// panic always prints them).
    pub fn set_report_on_drop(&mut self, report: bool) {
        self.report_on_drop = report;
    }

    /// The last lines of every process's output.
    pub fn log_tails(&self) -> String {
        let mut out = format!("logs in {}\n", self.dir.display());
        for p in &self.processes {
            out.push_str(&p.tail(TAIL_LINES));
        }
        out
    }

    /// Whether every started process is still running; names the first that is not.
    pub fn check_processes(&mut self) -> anyhow::Result<()> {
        for p in &mut self.processes {
            if !p.is_running() {
                bail!("{} is no longer running\n{}", p.label(), p.tail(TAIL_LINES));
            }
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Everything is cleaned up before anything is printed: printing can fail (a closed
        // pipe), and a failure must not leave processes or files behind.
        let report = self.report_on_drop || std::thread::panicking();
        let mut text = String::new();
        // The agent's view at the end, for the failure report.
        if report && self.agent_started {
            text.push_str(&self.cli().report("lb"));
        }
        // Stop the agents first; unmounting the BPF filesystem then releases the balancer
        // they leave serving, while the namespaces still exist.
        for p in self.processes.iter_mut().rev() {
            p.stop();
        }
        if report {
            text.push_str(&self.log_tails());
        }
        self.processes.clear();
        bpffs::unmount(&self.bpffs());
        if let Some(kept) = wiring::remove_temp_dir(&self.dir) {
            text.push_str(&kept);
        }
        // Captured by the test harness, which shows it only for a failed test.
        if !text.is_empty() {
            eprintln!("{text}");
        }
        // The namespaces are fields, deleted after this with their interfaces.
    }
}
