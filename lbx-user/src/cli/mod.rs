//! The `lbx` command line: the agent (`lbx run`), the backend-side helpers (`lbx decap`,
//! `lbx pass`, `lbx report`), the operator's commands to a running agent, and the offline
//! model tools.

mod cluster;
mod control;
mod docs;
mod drain;
mod failure;
mod model;
mod output;
mod run;
mod values;

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use self::{
    control::ControlCmd,
    docs::DocsCmd,
    model::ModelCmd,
    run::{DecapArgs, DetachArgs, PassArgs, RunArgs},
};
use crate::balance::report;

/// lbx: a layer-4 load balancer in XDP, with direct server return.
///
/// `lbx run` attaches the balancer to an interface and serves a control socket; the other
/// commands talk to that agent. Backends decapsulate with an ipip/ip6tnl device or with
/// `lbx decap`.
///
/// Addresses: a VIP is ADDR:PORT, an IPv6 one [ADDR]:PORT, and one that takes every port
/// of its address ADDR:* (or the address with --all-ports); a backend is an address alone.
#[derive(Parser)]
#[command(name = "lbx", version, propagate_version = true, after_long_help = failure::EXIT_STATUS_HELP)]
struct Cli {
    /// The agent's control socket (default: the only one under /run/lbx).
    #[arg(long, global = true, env = "LBX_SOCKET")]
    socket: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables. A failure is then one JSON object on
    /// stdout, {"error": {"kind", "message", "hint"}}, and the exit status of its kind.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach the balancer to IFACE (or take over the one an agent before
    /// it left serving there) and serve the control socket until SIGTERM or Ctrl-C. The
    /// balancer outlives the agent: the next `lbx run` on IFACE adopts it with its
    /// connection table; `lbx detach` removes it for good.
    Run(Box<RunArgs>),
    /// Remove the balancer that goes on serving IFACE after its agent stopped (its pinned
    /// link and maps, the connection table with them): traffic passes to the kernel again.
    /// Refused while an agent runs on IFACE: stop it first.
    Detach(DetachArgs),
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
        /// Address and port to serve on (the backend's own address), e.g. 10.1.0.11:9100.
        #[arg(long, value_parser = values::listen_address)]
        listen: SocketAddr,
        /// The service's port: its established connections count as in flight.
        #[arg(long, value_parser = values::port, allow_negative_numbers = true)]
        service_port: Option<u16>,
    },
    /// The load-prediction model, offline: score it on a trace, or generate one.
    #[command(subcommand)]
    Model(ModelCmd),
    #[command(flatten)]
    Docs(DocsCmd),
}

impl Command {
    /// Commands that serve until stopped keep running when their stdout's reader goes
    /// away; the others end as `ls | head` does.
    fn serves(&self) -> bool {
        matches!(
            self,
            Command::Run(_) | Command::Decap(_) | Command::Pass(_) | Command::Report { .. }
        )
    }
}

/// Parses the command line and runs the command; the binary's whole `main`.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let json = failure::wants_json(&args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return failure::usage(e, json),
    };
    if !cli.command.serves() {
        failure::die_on_closed_stdout();
    }
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure::report(&e, json),
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run::run(*args, cli.socket),
        Command::Detach(args) => run::detach(args),
        Command::Decap(args) => run::decap(args),
        Command::Pass(args) => run::pass(args),
        Command::Model(cmd) => model::run(cmd, cli.json),
        Command::Report {
            listen,
            service_port,
        } => report::serve(listen, service_port),
        Command::Control(cmd) => control::run(cmd, cli.socket, cli.json),
        Command::Docs(cmd) => docs::run(cmd, <Cli as clap::CommandFactory>::command()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// What a command line makes of a VIP text: the VIP it names, or a refusal.
    fn vip_of(args: &[&str]) -> Option<String> {
        let cli = Cli::try_parse_from(std::iter::once("lbx").chain(args.iter().copied())).ok()?;
        let Command::Control(cmd) = cli.command else {
            panic!("{args:?} is not a control command");
        };
        let req = serde_json::to_value(control::request(cmd).ok()?).expect("a request");
        match (&req["vip"], &req["dst"]) {
            (Value::String(v), _) => Some(v.clone()),
            (_, Value::String(dst)) => Some(format!("{dst}/tcp")),
            other => panic!("{args:?} made no VIP: {other:?}"),
        }
    }

    /// Every command that takes a VIP, with `text` in its place.
    fn vip_commands(text: &str) -> Vec<Vec<&str>> {
        vec![
            vec!["vip", "add", text],
            vec!["vip", "del", text],
            vec!["vip", "adaptive", text],
            vec!["vip", "health", text, "--port", "80"],
            vec!["backend", "add", text, "10.9.9.9"],
            vec!["backend", "del", text, "10.9.9.9"],
            vec!["backend", "weight", text, "10.9.9.9", "5"],
            vec!["backend", "drain", text, "10.9.9.9"],
            vec!["backend", "list", text],
        ]
    }

    /// Texts near the valid forms: every family, with and without a port or brackets,
    /// ports in and out of range.
    fn vip_text() -> impl Strategy<Value = String> {
        let v4 = any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string());
        let v6 = prop_oneof![
            any::<u128>().prop_map(|a| std::net::Ipv6Addr::from(a).to_string()),
            (any::<u16>(), any::<u16>())
                .prop_map(
                    |(a, b)| std::net::Ipv6Addr::new(0xfd00, a, 0, 0, 0, 0, 0, b).to_string()
                ),
        ];
        let port = prop_oneof![
            (1u32..=65535).prop_map(|p| p.to_string()),
            Just("*".to_owned()),
            Just("0".to_owned()),
            (65536u32..1_000_000).prop_map(|p| p.to_string()),
            Just("-1".to_owned()),
            Just(String::new()),
        ];
        (prop_oneof![v4, v6], port, 0..4u8).prop_map(|(addr, port, form)| match form {
            0 => addr,
            1 => format!("{addr}:{port}"),
            2 => format!("[{addr}]:{port}"),
            _ => format!("[{addr}]"),
        })
    }

    proptest! {
        /// No VIP text is accepted by one command and refused by another, and every
        /// command that accepts it reads the same VIP, which displays as a text they all
        /// read back to it. `lbx flow` reads the same texts, except that a flow has one
        /// port, so it refuses the every-port forms the others take.
        #[test]
        fn every_command_reads_a_vip_alike(text in vip_text()) {
            let seen: Vec<Option<String>> =
                vip_commands(&text).iter().map(|a| vip_of(a)).collect();
            for (args, got) in vip_commands(&text).iter().zip(&seen) {
                prop_assert_eq!(got, &seen[0], "{:?} and {:?} disagree", args, vip_commands(&text)[0]);
            }
            let flow = vip_of(&["flow", "192.0.2.1:1000", &text]);
            match &seen[0] {
                Some(id) if !id.contains(":*/") => prop_assert_eq!(&flow, &seen[0]),
                _ => prop_assert_eq!(flow, None),
            }
            if let Some(id) = &seen[0] {
                let shown = id.trim_end_matches("/tcp");
                let again = vip_of(&["vip", "add", shown]);
                prop_assert_eq!(again.as_ref(), Some(id));
            }
        }

        /// `--all-ports` with an address alone names the same VIP as ADDRESS:*.
        #[test]
        fn all_ports_flag_and_star_agree(addr in prop_oneof![
            any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
            any::<u128>().prop_map(|a| std::net::IpAddr::from(a.to_be_bytes())),
        ]) {
            let star = match addr {
                std::net::IpAddr::V4(a) => format!("{a}:*"),
                std::net::IpAddr::V6(a) => format!("[{a}]:*"),
            };
            let by_flag = vip_of(&["vip", "add", &addr.to_string(), "--all-ports"]);
            prop_assert!(by_flag.is_some());
            prop_assert_eq!(&by_flag, &vip_of(&["vip", "add", &star]));
            prop_assert_eq!(by_flag, vip_of(&["vip", "add", &star, "--all-ports"]));
        }
    }
}
