//! The operator's commands to a running agent: each becomes one control API request, and
//! its answer is printed as a table or as JSON.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use super::{drain, failure::Usage, output, values};
use crate::{
    agent::{api::Request, socket},
    config::{
        Adaptive, BackendConfig, CheckKind, DEFAULT_WEIGHT, Endpoint, EndpointError, HealthCheck,
        MacAddr, Protocol, VipId, endpoint,
    },
};

#[derive(Subcommand)]
pub enum ControlCmd {
    /// Add, remove or list virtual services.
    #[command(subcommand)]
    Vip(VipCmd),
    /// Add, remove, re-weight, drain or list the backends of a VIP.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// The agent's interface, mode, generation, VIPs and backends.
    Status,
    /// Traffic counters per VIP and backend, and why packets were passed or dropped.
    Stats,
    /// Which backend a flow goes to, and why (connection table or Maglev slot); `flow
    /// clear` forgets flows.
    Flow(FlowArgs),
    /// Show what a change would do, without doing it: `lbx plan` followed by the change
    /// as you would type it (`lbx plan backend weight 10.0.0.100:80 10.1.0.11 300`).
    ///
    /// It prints the differences in the configuration; per VIP, how many Maglev table
    /// slots each backend would have before and after, and gain and lose; the share of the
    /// VIP's slots that change backend, which is the share of its flows that move once
    /// they lose their connection-table entry (established flows keep their backend
    /// while the table holds them); and the active flows of backends the change removes
    /// (they move), drains (they stay until they end) or whose VIP it removes (they
    /// end). It is planned as the change would be published: the same slots, MACs and
    /// effective weights (health, slow start, adaptive). A change that would be refused
    /// is refused with the same error and exit status. Nothing is changed, saved or
    /// recorded.
    #[command(subcommand)]
    Plan(PlanCmd),
    /// List the configuration changes applied on this node, newest first: revision, time
    /// (UTC), node and what changed.
    ///
    /// Every change the agent applies is recorded, with the whole configuration after it,
    /// in a file beside the configuration file (CONFIG.history); a configuration loaded at
    /// start that differs from the last entry is recorded too. The last 100 are kept.
    /// Revisions count on across restarts. `lbx rollback REV` returns to one.
    History {
        /// How many entries to list.
        #[arg(short = 'n', long = "last", value_name = "N", default_value_t = 20,
              value_parser = clap::value_parser!(u32).range(1..))]
        last: u32,
        /// Print each entry's whole configuration (TOML) too; with --json, include it.
        #[arg(long)]
        full: bool,
    },
    /// Return to the configuration of history revision REV, as a new change: validated
    /// whole and published like every change, and recorded as a new revision ("rollback
    /// to revision REV"). `lbx plan rollback REV` shows what it would change.
    Rollback {
        /// The revision, as `lbx history` lists it.
        #[arg(value_name = "REV")]
        revision: u64,
    },
}

/// The changes `lbx plan` takes: those of `lbx vip`, `lbx backend` and `lbx rollback`.
#[derive(Subcommand)]
pub enum PlanCmd {
    /// What a VIP change would do (add, del, adaptive, health; `list` is no change).
    #[command(subcommand)]
    Vip(VipCmd),
    /// What a backend change would do (add, del, weight, drain; `list` is no change).
    #[command(subcommand)]
    Backend(BackendCmd),
    /// What `lbx rollback REV` would change.
    Rollback {
        /// The revision, as `lbx history` lists it.
        #[arg(value_name = "REV")]
        revision: u64,
    },
}

impl PlanCmd {
    /// The change as the command that makes it.
    fn into_change(self) -> ControlCmd {
        match self {
            PlanCmd::Vip(v) => ControlCmd::Vip(v),
            PlanCmd::Backend(b) => ControlCmd::Backend(b),
            PlanCmd::Rollback { revision } => ControlCmd::Rollback { revision },
        }
    }
}

/// A VIP: ADDR:PORT, IPv6 as [ADDR]:PORT; every port of the address as ADDR:* or with
/// --all-ports.
#[derive(Args, Clone)]
pub struct VipArg {
    /// The VIP, e.g. 10.0.0.100:80, [2001:db8::1]:443, or 10.0.0.100:* for every port.
    #[arg(value_name = "VIP")]
    vip: String,
    /// The VIP takes every port of its address (then VIP may be the address alone).
    #[arg(long)]
    all_ports: bool,
    /// The VIP's protocol.
    #[arg(long = "proto", default_value = "tcp")]
    protocol: Protocol,
}

impl VipArg {
    fn id(&self) -> Result<VipId, EndpointError> {
        vip_id(&self.vip, self.all_ports, self.protocol)
    }
}

/// Every command reads a VIP through this one function.
pub fn vip_id(text: &str, all_ports: bool, protocol: Protocol) -> Result<VipId, EndpointError> {
    Ok(VipId::new(Endpoint::parse_vip(text, all_ports)?, protocol))
}

#[derive(Args)]
pub struct VipAddArgs {
    #[command(flatten)]
    vip: VipArg,
    /// The VIP's own Maglev table size, a prime with at least 10 slots per backend the
    /// VIP will have (e.g. 1021 for up to 102); a small one saves ring memory for a VIP of
    /// few backends. Default: the configuration's table_size.
    #[arg(long, value_name = "PRIME")]
    table_size: Option<u32>,
}

#[derive(Subcommand)]
pub enum VipCmd {
    /// Add a VIP (with no backends yet: its packets are dropped until one is added).
    Add(VipAddArgs),
    /// Remove a VIP and its backends.
    Del(VipArg),
    /// Turn adaptive weights on or off: every second the agent measures each backend (new
    /// flows/s, probe latency), estimates its capacity, and weights it in proportion; the
    /// operator's weights are caps. Needs a health check (`lbx vip health`).
    Adaptive(AdaptiveArgs),
    /// Set how the VIP's backends are health-checked (probes go to each backend's own
    /// address); a failing backend leaves the table at once and returns through a slow start.
    Health(HealthArgs),
    /// List VIPs.
    List,
}

#[derive(Args)]
pub struct AdaptiveArgs {
    #[command(flatten)]
    vip: VipArg,
    /// Back to the operator's weights.
    #[arg(long)]
    off: bool,
    /// Smallest weight a backend gets (the largest capacity gets --max-weight).
    #[arg(long, default_value_t = 1, value_parser = values::weight, allow_negative_numbers = true)]
    min_weight: u32,
    #[arg(long, default_value_t = 1000, value_parser = values::weight, allow_negative_numbers = true)]
    max_weight: u32,
    /// A weight moves only if it would change by more than this many percent.
    #[arg(long, default_value_t = 10)]
    hysteresis_percent: u32,
    /// At most this share of table slots (percent) changes owner per second.
    #[arg(long, default_value_t = 10)]
    churn_budget_percent: u32,
    /// Port of `lbx report` on each backend's own address (optional load signal).
    #[arg(long, value_parser = values::port, allow_negative_numbers = true)]
    report_port: Option<u16>,
}

#[derive(Args)]
pub struct HealthArgs {
    #[command(flatten)]
    vip: VipArg,
    /// Remove the health check: every backend counts as healthy.
    #[arg(long, conflicts_with_all = ["kind", "port", "path"])]
    off: bool,
    /// tcp: the connection opens; http: a GET answers with the expected status.
    #[arg(long, value_enum, default_value = "tcp")]
    kind: CheckKind,
    /// Port to probe (default: the VIP's port; required for an all-ports VIP).
    #[arg(long, value_parser = values::port, allow_negative_numbers = true)]
    port: Option<u16>,
    /// HTTP path to GET.
    #[arg(long, default_value = "/")]
    path: String,
    /// HTTP status a healthy backend answers.
    #[arg(long, default_value_t = 200, value_parser = values::http_status, allow_negative_numbers = true)]
    expect_status: u16,
    /// Text the HTTP body must contain.
    #[arg(long)]
    body_contains: Option<String>,
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Default: 500, or the interval if that is shorter.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Consecutive successes that bring a failed backend back.
    #[arg(long, default_value_t = 2)]
    rise: u32,
    /// Consecutive failures that take a backend out.
    #[arg(long, default_value_t = 2)]
    fall: u32,
    /// Seconds over which a recovered backend's weight ramps back up.
    #[arg(long, default_value_t = 10)]
    slow_start_s: u64,
}

#[derive(Subcommand)]
pub enum BackendCmd {
    /// Add a backend to a VIP.
    Add {
        #[command(flatten)]
        vip: VipArg,
        /// The backend's address, without a port (same family as the VIP).
        #[arg(value_parser = endpoint::parse_host)]
        address: IpAddr,
        /// Share of new flows relative to the VIP's other backends, 1 to 65535.
        #[arg(long, default_value_t = DEFAULT_WEIGHT, value_parser = values::weight,
              allow_negative_numbers = true)]
        weight: u32,
        /// Ethernet address to send its packets to (the backend or its gateway);
        /// resolved from the neighbour table when omitted.
        #[arg(long)]
        mac: Option<MacAddr>,
    },
    /// Remove a backend: its flows move to the others; other flows stay where they are.
    Del {
        #[command(flatten)]
        vip: VipArg,
        #[arg(value_parser = endpoint::parse_host)]
        address: IpAddr,
    },
    /// Change a backend's weight; established flows keep their backend.
    Weight {
        #[command(flatten)]
        vip: VipArg,
        #[arg(value_parser = endpoint::parse_host)]
        address: IpAddr,
        /// The new weight, 1 to 65535.
        #[arg(value_parser = values::weight, allow_negative_numbers = true)]
        weight: u32,
    },
    /// Stop sending new flows to a backend while its open flows keep working. With
    /// --wait, return once none of its flows is active any more (none seen within the
    /// agent's --flow-idle-s): then it can be removed or stopped without breaking one.
    Drain {
        #[command(flatten)]
        vip: VipArg,
        #[arg(value_parser = endpoint::parse_host)]
        address: IpAddr,
        /// Take new flows again.
        #[arg(long, conflicts_with = "wait")]
        undo: bool,
        /// Wait until the backend has no active flow, printing the count as it falls.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit status 9, the backend stays
        /// drained). Default: wait as long as it takes.
        #[arg(long, value_name = "SECS", requires = "wait",
              value_parser = clap::value_parser!(u64).range(1..))]
        timeout: Option<u64>,
    },
    /// List backends, of one VIP or of all.
    List {
        /// Only this VIP's backends (ADDR:PORT, [ADDR]:PORT or ADDR:*).
        #[arg(value_name = "VIP")]
        vip: Option<String>,
        /// The VIP takes every port of its address (then VIP may be the address alone).
        #[arg(long, requires = "vip")]
        all_ports: bool,
        #[arg(long = "proto", default_value = "tcp")]
        protocol: Protocol,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct FlowArgs {
    #[command(subcommand)]
    cmd: Option<FlowCmd>,
    /// The client's address and port, e.g. 192.0.2.7:40000 or [2001:db8::7]:40000.
    #[arg(value_parser = values::flow_source, required = true)]
    src: Option<Endpoint>,
    /// The VIP address and the port the flow goes to, e.g. 10.0.0.100:80.
    #[arg(value_parser = values::flow_destination, required = true)]
    dst: Option<Endpoint>,
    #[arg(long = "proto", default_value = "tcp")]
    protocol: Protocol,
}

#[derive(Subcommand)]
pub enum FlowCmd {
    /// Forget the flows the connection table holds: every flow, or those on a VIP's
    /// backends. Their next packets take the Maglev ring again, which keeps most of them
    /// on their backend; those the ring moved since they began would break, but for the
    /// second chance (`lbx run --second-chance-s`), which sends a TCP flow without SYN
    /// to its backend of the generation before for a while after each change.
    Clear {
        /// Only the flows of this VIP, e.g. 10.0.0.100:80 (default: all).
        #[arg(value_name = "VIP")]
        vip: Option<String>,
        /// The VIP takes every port of its address (then VIP may be the address alone).
        #[arg(long, requires = "vip")]
        all_ports: bool,
        #[arg(long = "proto", default_value = "tcp")]
        protocol: Protocol,
    },
}

pub(super) fn request(cmd: ControlCmd) -> Result<Request, EndpointError> {
    Ok(match cmd {
        ControlCmd::Vip(VipCmd::Add(v)) => Request::VipAdd {
            vip: v.vip.id()?,
            table_size: v.table_size,
        },
        ControlCmd::Vip(VipCmd::Del(v)) => Request::VipDel { vip: v.id()? },
        ControlCmd::Vip(VipCmd::List) => Request::VipList,
        ControlCmd::Vip(VipCmd::Adaptive(a)) => Request::VipAdaptive {
            vip: a.vip.id()?,
            adaptive: (!a.off).then_some(Adaptive {
                min_weight: a.min_weight,
                max_weight: a.max_weight,
                hysteresis_percent: a.hysteresis_percent,
                churn_budget_percent: a.churn_budget_percent,
                report_port: a.report_port,
            }),
        },
        ControlCmd::Vip(VipCmd::Health(h)) => Request::VipHealth {
            vip: h.vip.id()?,
            health: (!h.off).then_some(HealthCheck {
                kind: h.kind,
                port: h.port,
                path: h.path,
                expect_status: h.expect_status,
                body_contains: h.body_contains,
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms.unwrap_or(h.interval_ms.min(500)),
                rise: h.rise,
                fall: h.fall,
                slow_start_s: h.slow_start_s,
            }),
        },
        ControlCmd::Backend(BackendCmd::Add {
            vip,
            address,
            weight,
            mac,
        }) => Request::BackendAdd {
            vip: vip.id()?,
            backend: BackendConfig {
                address,
                weight,
                mac,
                drain: false,
            },
        },
        ControlCmd::Backend(BackendCmd::Del { vip, address }) => Request::BackendDel {
            vip: vip.id()?,
            address,
        },
        ControlCmd::Backend(BackendCmd::Weight {
            vip,
            address,
            weight,
        }) => Request::BackendWeight {
            vip: vip.id()?,
            address,
            weight,
        },
        ControlCmd::Backend(BackendCmd::Drain {
            vip, address, undo, ..
        }) => Request::BackendDrain {
            vip: vip.id()?,
            address,
            drain: !undo,
        },
        ControlCmd::Backend(BackendCmd::List {
            vip,
            all_ports,
            protocol,
        }) => Request::BackendList {
            vip: vip.map(|v| vip_id(&v, all_ports, protocol)).transpose()?,
        },
        ControlCmd::Status => Request::Status,
        ControlCmd::Stats => Request::Stats,
        ControlCmd::Flow(FlowArgs {
            cmd:
                Some(FlowCmd::Clear {
                    vip,
                    all_ports,
                    protocol,
                }),
            ..
        }) => Request::FlowClear {
            vip: vip.map(|v| vip_id(&v, all_ports, protocol)).transpose()?,
        },
        ControlCmd::Flow(FlowArgs {
            src: Some(src),
            dst: Some(dst),
            protocol,
            ..
        }) => Request::Flow {
            protocol,
            src: SocketAddr::new(src.address, src.port),
            dst: SocketAddr::new(dst.address, dst.port),
        },
        ControlCmd::Flow(_) => unreachable!("clap requires SRC and DST without a subcommand"),
        ControlCmd::Plan(p) => Request::Plan {
            change: Box::new(request(p.into_change())?),
        },
        ControlCmd::History { last, full } => Request::History { last, full },
        ControlCmd::Rollback { revision } => Request::Rollback { revision },
    })
}

/// Sends the command's request to the agent and prints its answer.
pub fn run(cmd: ControlCmd, socket: Option<PathBuf>, json: bool) -> Result<()> {
    if let ControlCmd::Plan(PlanCmd::Backend(BackendCmd::Drain { wait: true, .. })) = &cmd {
        return Err(Usage(
            "lbx plan backend drain: --wait waits for a drain to finish, but a plan drains \
             nothing; plan without --wait"
                .into(),
        )
        .into());
    }
    let wait = match &cmd {
        ControlCmd::Backend(BackendCmd::Drain {
            vip,
            address,
            wait: true,
            timeout,
            ..
        }) => Some(drain::Wait {
            vip: vip.id()?,
            address: *address,
            timeout: timeout.map(Duration::from_secs),
        }),
        _ => None,
    };
    let req = request(cmd)?;
    let socket = socket::find_socket(socket)?;
    if let Some(wait) = wait {
        let answer = socket::call(&socket, &req)?;
        return drain::wait(&socket, wait, &answer, json);
    }
    let answer = socket::call(&socket, &req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer).context("json")?);
    } else {
        output::print(&req, &answer);
    }
    if answer.is_null() {
        bail!("empty answer from the agent");
    }
    Ok(())
}
