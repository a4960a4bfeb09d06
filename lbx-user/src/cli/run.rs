//! The long-running commands' arguments: the agent (`lbx run`), and the backend-side
//! programs `lbx decap` and `lbx pass`.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::HashMap;
use clap::Args;
use lbx_common::{
    AddrKey, DEFAULT_FLOWS, DEFAULT_RING_ENTRIES, DEFAULT_TCP_IDLE_S, DEFAULT_UDP_IDLE_S, maps,
    programs,
};

use crate::{
    addr,
    agent::{
        self, Options,
        run::{runtime, stop_signal},
        socket,
    },
    config::Local,
    dataplane::{self, DEFAULT_SECOND_CHANCE_S, FlowIdle, Mode, Object, sys},
};

#[derive(Args)]
pub struct RunArgs {
    /// The interface to balance on (it receives the VIP traffic and sends to backends).
    #[arg(long)]
    pub iface: String,
    /// Configuration file (TOML); CLI changes are saved back to it. Default:
    /// /etc/lbx/IFACE.toml. A missing file means no VIPs yet. Its `[cluster]` table, if
    /// any, gives the cluster flags' settings and is this node's alone.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// native (in the driver), generic (in the stack, any interface) or auto (native,
    /// falling back to generic).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub xdp_mode: Mode,
    /// Where to mount/find the BPF filesystem; maps are pinned under DIR/lbx/IFACE.
    #[arg(long, default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// Connection-table size in flows (rounded up to a power of two). The table is
    /// 2-way set-associative: a new flow whose set is full replaces one not seen since
    /// the set last filled; 64 bytes per flow, at most 2^26 flows.
    #[arg(long, default_value_t = DEFAULT_FLOWS,
          value_parser = clap::value_parser!(u32).range(1..=1 << 26))]
    pub flows: u32,
    /// Ring entries each generation holds for the VIPs' Maglev rings together: a VIP
    /// takes its table_size of them rounded up to a multiple of 4 (2 bytes each), twice
    /// over for the two generations the data plane keeps. The default holds 64 VIPs at
    /// table_size 65537 (16 MiB); 1,024 VIPs at 65537 need 67,112,960 (256 MiB), at 4093
    /// 4,194,304 (16 MiB). A configuration whose rings do not fit is refused, with what it
    /// needs.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RING_ENTRIES,
          value_parser = clap::value_parser!(u32).range(101..=1 << 28))]
    pub ring_entries: u32,
    /// Seconds a TCP flow (and any flow but UDP) may go unseen and still count as
    /// active: `lbx status`, `lbx backend list` and `lbx backend drain --wait` count the
    /// active flows, and a slot unseen for longer is free for a new flow. 0: never idle.
    /// Flows are seen to within the control interval.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TCP_IDLE_S)]
    pub flow_idle_s: u16,
    /// The same for UDP flows.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_UDP_IDLE_S)]
    pub udp_flow_idle_s: u16,
    /// For this long after each publication, a TCP packet without SYN that misses the
    /// connection table (after a restart that lost it, or on another node's flow) goes to
    /// the backend the previous generation's ring gave it, if that backend still serves
    /// the VIP, rather than the one the new ring gives; the flow is then recorded. A flow
    /// begun since the change and lost from the table would be misled, hence the bound.
    /// 0 turns it off.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_SECOND_CHANCE_S,
          value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub second_chance_s: u32,
    /// How often the agent reads the counters, runs the load models and revisits weights
    /// (adaptive VIPs, slow starts), in milliseconds. Shorter reacts sooner to load and
    /// moves more table slots per second (the churn budget is per interval).
    #[arg(long, default_value_t = DEFAULT_CONTROL_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub control_interval_ms: u64,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (and /healthz), e.g.
    /// 127.0.0.1:9101. Off unless given: the endpoint has no authentication, so bind it to
    /// an address only the monitoring system reaches.
    #[arg(long, value_name = "ADDR:PORT", value_parser = super::values::listen_address)]
    pub metrics_listen: Option<SocketAddr>,
    /// Take over maps an agent before this one pinned with other sizes (another
    /// --ring-entries or --flows) by filling maps of the new sizes from them, the connection
    /// table included. Without it such maps are refused and nothing changes.
    #[arg(long)]
    pub migrate: bool,
    /// Load the XDP programs from PATH, an lbx-xdp object built from lbx-ebpf, instead of
    /// the ones built into this binary: upgrades or hot-fixes the data plane under a
    /// running balancer without a new agent binary. Its maps must fit the pinned ones, as
    /// any restart's must; a file that is not such an object is refused before anything is
    /// attached or published.
    #[arg(long, value_name = "PATH")]
    pub xdp_object: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: super::cluster::ClusterArgs,
}

#[derive(Args)]
pub struct DetachArgs {
    /// The interface whose balancer to remove.
    #[arg(long)]
    pub iface: String,
    /// The BPF filesystem the agent pinned under (its --bpffs).
    #[arg(long, default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
}

#[derive(Args)]
pub struct DecapArgs {
    /// The backend's interface that receives encapsulated packets.
    #[arg(long)]
    pub iface: String,
    /// A VIP address configured on this host (usually on `lo`); repeat for several.
    #[arg(long = "vip", required = true)]
    pub vips: Vec<IpAddr>,
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub xdp_mode: Mode,
}

#[derive(Args)]
pub struct PassArgs {
    #[arg(long)]
    pub iface: String,
    #[arg(long, value_enum, default_value_t = Mode::Native)]
    pub xdp_mode: Mode,
}

/// Default control interval: once a second, as health checks and load reports go.
const DEFAULT_CONTROL_INTERVAL_MS: u64 = 1000;

pub fn run(args: RunArgs, socket: Option<PathBuf>) -> Result<()> {
    let object = match &args.xdp_object {
        Some(path) => Object::read(path)?,
        None => Object::builtin(),
    };
    let pin_dir = args.bpffs.join("lbx").join(&args.iface);
    dataplane::preflight("lbx run", &args.iface, Some(&pin_dir))?;
    let socket = socket.unwrap_or_else(|| socket::default_socket(&args.iface));
    let config_path = args
        .config
        .unwrap_or_else(|| PathBuf::from(format!("/etc/lbx/{}.toml", args.iface)));
    let local = Local::read(&config_path)?;
    let cluster = args.cluster.options(local.cluster(), &config_path)?;
    sys::ensure_bpffs(&args.bpffs).with_context(|| format!("--bpffs {}", args.bpffs.display()))?;
    agent::run::run(Options {
        iface: args.iface,
        config_path,
        mode: args.xdp_mode,
        socket,
        pin_dir: Some(pin_dir),
        object,
        migrate: args.migrate,
        flows: args.flows,
        ring_entries: args.ring_entries,
        flow_idle: FlowIdle {
            tcp_s: args.flow_idle_s,
            udp_s: args.udp_flow_idle_s,
            second_chance_s: args.second_chance_s,
        },
        control_interval: Duration::from_millis(args.control_interval_ms),
        metrics_listen: args.metrics_listen,
        cluster,
    })
}

pub fn detach(args: DetachArgs) -> Result<()> {
    let pin_dir = args.bpffs.join("lbx").join(&args.iface);
    // Refuses while an agent holds the balancer, or another program is on the interface.
    dataplane::preflight("lbx detach", &args.iface, Some(&pin_dir))?;
    if dataplane::remove_pins(&pin_dir)? {
        crate::say!(
            "lbx detached the balancer from {} (pins under {} removed)",
            args.iface,
            pin_dir.display()
        );
    } else {
        crate::say!(
            "no balancer pinned under {}: nothing to detach",
            pin_dir.display()
        );
    }
    Ok(())
}

pub fn decap(args: DecapArgs) -> Result<()> {
    dataplane::preflight("lbx decap", &args.iface, None)?;
    let (mut ebpf, mode) = dataplane::load_and_attach(programs::DECAP, &args.iface, args.xdp_mode)?;
    let mut vips: HashMap<_, AddrKey, u32> =
        HashMap::try_from(ebpf.map_mut(maps::DECAP_VIPS).expect("map in object"))?;
    for vip in &args.vips {
        let key = AddrKey {
            addr: addr::to_words(*vip),
            family: addr::family(*vip),
            pad: [0; 3],
        };
        vips.insert(key, 1, 0)?;
    }
    let list: Vec<String> = args.vips.iter().map(ToString::to_string).collect();
    crate::say!(
        "lbx decap attached to {} ({mode} mode) for VIPs {}",
        args.iface,
        list.join(", ")
    );
    runtime()?.block_on(stop_signal())?;
    drop(ebpf);
    crate::say!("lbx decap detached from {}", args.iface);
    Ok(())
}

pub fn pass(args: PassArgs) -> Result<()> {
    dataplane::preflight("lbx pass", &args.iface, None)?;
    let (ebpf, mode) = dataplane::load_and_attach(programs::PASS, &args.iface, args.xdp_mode)?;
    crate::say!("lbx pass attached to {} ({mode} mode)", args.iface);
    runtime()?.block_on(stop_signal())?;
    drop(ebpf);
    crate::say!("lbx pass detached from {}", args.iface);
    Ok(())
}
