//! The `lbx` command line: the agent (`lbx run`), the backend-side helpers (`lbx decap`,
//! `lbx pass`, `lbx report`), the operator's commands to a running agent, and the offline
//! model tools.

mod control;
mod model;
mod output;
mod run;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use self::{
    control::ControlCmd,
    model::ModelCmd,
    run::{DecapArgs, PassArgs, RunArgs},
};
use crate::balance::report;

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
    Run(RunArgs),
    /// On a backend: remove lbx's IPIP / IPv6-in-IPv6 header from packets for the given
    /// local VIPs (for hosts without an ipip/ip6tnl device). Runs until SIGTERM.
    Decap(DecapArgs),
    /// Attach a program that passes every frame. Native XDP_TX into a veth only delivers
    /// when the veth's peer runs an XDP program: run this on the peer. Runs until SIGTERM.
    Pass(PassArgs),
    #[command(flatten)]
    Control(ControlCmd),
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

/// Parses the command line and runs the command; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args, cli.socket),
        Command::Decap(args) => run::decap(args),
        Command::Pass(args) => run::pass(args),
        Command::Model(cmd) => model::run(cmd, cli.json),
        Command::Report {
            listen,
            service_port,
        } => report::serve(listen, service_port),
        Command::Control(cmd) => control::run(cmd, cli.socket, cli.json),
    }
}
