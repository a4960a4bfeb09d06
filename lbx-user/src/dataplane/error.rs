//! What can go wrong between lbx and the kernel's data plane, in words that say what to
//! do about it.

use std::path::PathBuf;

use super::{holder::Attached, mode::Mode};

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("no such interface: {iface} (see `ip link`)")]
    NoInterface { iface: String },
    #[error("{what} needs root (CAP_BPF and CAP_NET_ADMIN): run it as root")]
    NotRoot { what: String },
    #[error("failed to load the XDP programs: {0}")]
    Load(#[from] aya::EbpfError),
    // `error`, not `source`: the message says it already, and a chain would say it twice.
    #[error("cannot read the XDP object {}: {error}", .path.display())]
    ObjectRead {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the XDP object {} {problem}: give the lbx-xdp object that a build of lbx-ebpf makes",
        .path.display()
    )]
    ObjectInvalid { path: PathBuf, problem: String },
    #[error("the kernel rejected program {program}: {source}")]
    Program {
        program: String,
        source: aya::programs::ProgramError,
    },
    #[error("failed to attach XDP to {iface} in {mode} mode: {source}{}", attach_advice(*.mode))]
    Attach {
        iface: String,
        mode: Mode,
        source: aya::programs::ProgramError,
    },
    #[error(
        "{iface} already has an XDP program: {attached}; {}",
        held_advice(iface, attached)
    )]
    Held { iface: String, attached: Attached },
    #[error("cannot ask the kernel which XDP program {iface} has: {source}")]
    Query {
        iface: String,
        source: std::io::Error,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "the maps pinned under {} are in use by {by}, maybe for an interface of the same \
         name in another network namespace: give this agent another --bpffs",
        .dir.display()
    )]
    PinsInUse { dir: PathBuf, by: String },
    #[error(
        "the maps pinned under {} do not fit {}: {}; {}",
        .dir.display(),
        match .object {
            Some(path) => format!("the XDP object {}", path.display()),
            None => "this build of lbx".to_owned(),
        },
        .differences.join(", "),
        if *.migratable {
            "add --migrate to fill maps of the new sizes from them (the connection table \
             included), or keep the sizes that made them"
        } else {
            "no migration goes across that difference: keep the build that made them, or \
             drop them with their flows (`lbx detach`)"
        }
    )]
    Layout {
        dir: PathBuf,
        /// The file the programs came from (`--xdp-object`); none: the built-in ones.
        object: Option<PathBuf>,
        differences: Vec<String>,
        migratable: bool,
    },
    #[error(
        "the balancer on {iface} serves in {serving} mode, --xdp-mode {asked} was asked: \
         adopting it keeps its mode; `lbx detach --iface {iface}` first to change it (the \
         connection table goes with it)"
    )]
    ModeMismatch {
        iface: String,
        serving: Mode,
        asked: Mode,
    },
    #[error("the link pinned at {} does not hold lbx's balancer: {source}", .path.display())]
    Link {
        path: PathBuf,
        source: aya::programs::links::LinkError,
    },
    #[error("cannot pin maps under {dir}: {source}")]
    Pin {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Sys(#[from] std::io::Error),
}

/// Generic mode is the fallback for drivers without native XDP; advising it after generic
/// failed would send the operator in a circle.
fn attach_advice(mode: Mode) -> &'static str {
    match mode {
        Mode::Native => "; the driver may lack native XDP: try --xdp-mode auto or generic",
        Mode::Generic | Mode::Auto => "",
    }
}

fn held_advice(iface: &str, attached: &Attached) -> String {
    match attached.agent() {
        Some(agent) => {
            let status = match agent.sockets.first() {
                Some(socket) => format!("`lbx --socket {} status`", socket.display()),
                None => "`lbx status`".to_owned(),
            };
            format!(
                "stop that agent first ({status} shows what it serves), or balance on another \
                 interface"
            )
        }
        None => format!(
            "detach it first (`ip link set dev {iface} xdp off`), or stop the process that holds it"
        ),
    }
}
