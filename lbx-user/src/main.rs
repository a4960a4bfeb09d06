//! `lbx`: the agent (`lbx run`), the backend-side helpers (`lbx decap`, `lbx pass`) and
//! the operator's CLI to a running agent.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use lbx::{
    api::{self, Request},
    config::{Adaptive, BackendConfig, CheckKind, HealthCheck, MacAddr, Protocol, VipId},
    output, run, trace,
};

/// lbx: a layer-4 load balancer in XDP, with direct server return.
///
/// `lbx run` attaches the balancer to an interface and serves a control socket; the other
/// commands talk to that agent. Backends decapsulate with an ipip/ip6tnl device or with
/// `lbx decap`.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// The agent's control socket (default: the only one under /run/lbx).
    #[arg(long, global = true, env = "LBX_SOCKET")]
    socket: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach the balancer to IFACE and serve the control socket until
    /// SIGTERM or Ctrl-C, which detach it.
    Run(run::RunArgs),
    /// On a backend: remove lbx's IPIP / IPv6-in-IPv6 header from packets for the given
    /// local VIPs (for hosts without an ipip/ip6tnl device). Runs until SIGTERM.
    Decap(run::DecapArgs),
    /// Attach a program that passes every frame. Native XDP_TX into a veth only delivers
    /// when the veth's peer runs an XDP program: run this on the peer. Runs until SIGTERM.
    Pass(run::PassArgs),
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
    /// Which backend a flow goes to, and why (connection table or Maglev slot).
    Flow(FlowArgs),
    /// On a backend: serve a one-line load report (CPU utilisation, connections in flight)
    /// that an adaptive lbx agent reads. Runs until killed.
    Report {
        /// Address and port to serve on (the backend's own address).
        #[arg(long)]
        listen: SocketAddr,
        /// The service's port: its established connections count as in flight.
        #[arg(long)]
        service_port: Option<u16>,
    },
    /// The load-prediction model, offline: score it on a trace, or generate one.
    #[command(subcommand)]
    Model(ModelCmd),
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Replay a trace (CSV: time_s,backend,rate,latency_ms) and report each backend's
    /// one-step forecast error (MAPE) of the model next to a last-value forecast and a
    /// moving average.
    Eval {
        #[arg(long)]
        trace: PathBuf,
    },
    /// Write a synthetic trace with daily cycles and a flash-sale spike.
    Trace {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        backends: usize,
        #[arg(long, default_value_t = 2.0)]
        days: f64,
        /// Seconds between rows.
        #[arg(long, default_value_t = 60)]
        step_s: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn model(cmd: ModelCmd, json: bool) -> Result<()> {
    match cmd {
        ModelCmd::Trace {
            out,
            backends,
            days,
            step_s,
            seed,
        } => {
            if backends == 0 || step_s == 0 || days.is_nan() || days <= 0.0 {
                bail!("--backends, --step-s and --days must be positive");
            }
            let text = trace::generate(&trace::TraceSpec {
                backends,
                days,
                step_s,
                seed,
            });
            std::fs::write(&out, text)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {}", out.display());
        }
        ModelCmd::Eval { trace: path } => {
            let scores = trace::evaluate(&trace::read(&path)?);
            if json {
                let v: serde_json::Map<String, serde_json::Value> = scores
                    .iter()
                    .map(|(b, e)| {
                        (
                            b.clone(),
                            serde_json::json!({
                                "points": e.points,
                                "mape_model": e.holt,
                                "mape_last_value": e.last_value,
                                "mape_moving_average": e.moving_average,
                            }),
                        )
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<16} {:>7} {:>12} {:>12} {:>12}",
                    "BACKEND", "POINTS", "MODEL MAPE", "LAST VALUE", "MOVING AVG"
                );
                for (b, e) in &scores {
                    println!(
                        "{b:<16} {:>7} {:>11.2}% {:>11.2}% {:>11.2}%",
                        e.points, e.holt, e.last_value, e.moving_average
                    );
                }
            }
        }
    }
    Ok(())
}

/// A VIP: ADDR:PORT (IPv6 as [ADDR]:PORT); port 0 or a bare address means all ports.
#[derive(Args, Clone)]
struct VipArg {
    /// The VIP, e.g. 10.0.0.100:80 or [2001:db8::1]:443.
    vip: String,
    /// The VIP's protocol.
    #[arg(long = "proto", default_value = "tcp")]
    protocol: Protocol,
}

impl VipArg {
    fn id(&self) -> Result<VipId> {
        Ok(VipId::parse(&self.vip, self.protocol)?)
    }
}

#[derive(Subcommand)]
enum VipCmd {
    /// Add a VIP (with no backends yet: its packets are dropped until one is added).
    Add(VipArg),
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
struct AdaptiveArgs {
    #[command(flatten)]
    vip: VipArg,
    /// Back to the operator's weights.
    #[arg(long)]
    off: bool,
    /// Smallest weight a backend gets (the largest capacity gets --max-weight).
    #[arg(long, default_value_t = 1)]
    min_weight: u32,
    #[arg(long, default_value_t = 1000)]
    max_weight: u32,
    /// A weight moves only if it would change by more than this many percent.
    #[arg(long, default_value_t = 10)]
    hysteresis_percent: u32,
    /// At most this share of table slots (percent) changes owner per second.
    #[arg(long, default_value_t = 10)]
    churn_budget_percent: u32,
    /// Port of `lbx report` on each backend's own address (optional load signal).
    #[arg(long)]
    report_port: Option<u16>,
}

#[derive(Args)]
struct HealthArgs {
    #[command(flatten)]
    vip: VipArg,
    /// Remove the health check: every backend counts as healthy.
    #[arg(long, conflicts_with_all = ["kind", "port", "path"])]
    off: bool,
    /// tcp: the connection opens; http: a GET answers with the expected status.
    #[arg(long, value_enum, default_value = "tcp")]
    kind: CheckKind,
    /// Port to probe (default: the VIP's port).
    #[arg(long)]
    port: Option<u16>,
    /// HTTP path to GET.
    #[arg(long, default_value = "/")]
    path: String,
    /// HTTP status a healthy backend answers.
    #[arg(long, default_value_t = 200)]
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
enum BackendCmd {
    /// Add a backend to a VIP.
    Add {
        #[command(flatten)]
        vip: VipArg,
        /// The backend's address (same family as the VIP).
        address: IpAddr,
        /// Share of new flows relative to the VIP's other backends, 1 to 65535.
        #[arg(long, default_value_t = lbx::config::DEFAULT_WEIGHT)]
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
        address: IpAddr,
    },
    /// Change a backend's weight; established flows keep their backend.
    Weight {
        #[command(flatten)]
        vip: VipArg,
        address: IpAddr,
        /// The new weight, 1 to 65535.
        weight: u32,
    },
    /// Stop sending new flows to a backend while its open flows keep working.
    Drain {
        #[command(flatten)]
        vip: VipArg,
        address: IpAddr,
        /// Take new flows again.
        #[arg(long)]
        undo: bool,
    },
    /// List backends, of one VIP or of all.
    List {
        /// Only this VIP's backends (ADDR:PORT).
        vip: Option<String>,
        #[arg(long = "proto", default_value = "tcp")]
        protocol: Protocol,
    },
}

#[derive(Args)]
struct FlowArgs {
    /// The client's address and port, e.g. 192.0.2.7:40000.
    src: SocketAddr,
    /// The VIP address and port the flow goes to.
    dst: SocketAddr,
    #[arg(long = "proto", default_value = "tcp")]
    protocol: Protocol,
}

fn request(cmd: Command) -> Result<Request> {
    Ok(match cmd {
        Command::Vip(VipCmd::Add(v)) => Request::VipAdd { vip: v.id()? },
        Command::Vip(VipCmd::Del(v)) => Request::VipDel { vip: v.id()? },
        Command::Vip(VipCmd::List) => Request::VipList,
        Command::Vip(VipCmd::Adaptive(a)) => Request::VipAdaptive {
            vip: a.vip.id()?,
            adaptive: (!a.off).then_some(Adaptive {
                min_weight: a.min_weight,
                max_weight: a.max_weight,
                hysteresis_percent: a.hysteresis_percent,
                churn_budget_percent: a.churn_budget_percent,
                report_port: a.report_port,
            }),
        },
        Command::Vip(VipCmd::Health(h)) => Request::VipHealth {
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
        Command::Backend(BackendCmd::Add {
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
        Command::Backend(BackendCmd::Del { vip, address }) => Request::BackendDel {
            vip: vip.id()?,
            address,
        },
        Command::Backend(BackendCmd::Weight {
            vip,
            address,
            weight,
        }) => Request::BackendWeight {
            vip: vip.id()?,
            address,
            weight,
        },
        Command::Backend(BackendCmd::Drain { vip, address, undo }) => Request::BackendDrain {
            vip: vip.id()?,
            address,
            drain: !undo,
        },
        Command::Backend(BackendCmd::List { vip, protocol }) => Request::BackendList {
            vip: vip.map(|v| VipId::parse(&v, protocol)).transpose()?,
        },
        Command::Status => Request::Status,
        Command::Stats => Request::Stats,
        Command::Flow(f) => Request::Flow {
            protocol: f.protocol,
            src: f.src,
            dst: f.dst,
        },
        Command::Run(_)
        | Command::Decap(_)
        | Command::Pass(_)
        | Command::Model(_)
        | Command::Report { .. } => {
            unreachable!("not a request")
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args, cli.socket),
        Command::Decap(args) => run::decap(args),
        Command::Pass(args) => run::pass(args),
        Command::Model(cmd) => model(cmd, cli.json),
        Command::Report {
            listen,
            service_port,
        } => lbx::report::serve(listen, service_port),
        cmd => {
            let req = request(cmd)?;
            let socket = api::find_socket(cli.socket)?;
            let answer = api::call(&socket, &req)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&answer).context("json")?);
            } else {
                output::print(&req, &answer);
            }
            if answer.is_null() {
                bail!("empty answer from the agent");
            }
            Ok(())
        }
    }
}
