//! The control API's messages: one JSON request and one JSON response per line.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::config::{Adaptive, BackendConfig, HealthCheck, Protocol, VipId};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    VipAdd {
        vip: VipId,
        /// Its own Maglev table size; none: the configuration's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        table_size: Option<u32>,
    },
    VipDel {
        vip: VipId,
    },
    VipHealth {
        vip: VipId,
        health: Option<HealthCheck>,
    },
    VipAdaptive {
        vip: VipId,
        adaptive: Option<Adaptive>,
    },
    VipList,
    BackendAdd {
        vip: VipId,
        backend: BackendConfig,
    },
    BackendDel {
        vip: VipId,
        address: IpAddr,
    },
    BackendWeight {
        vip: VipId,
        address: IpAddr,
        weight: u32,
    },
    BackendDrain {
        vip: VipId,
        address: IpAddr,
        drain: bool,
    },
    BackendList {
        vip: Option<VipId>,
    },
    Status,
    Stats,
    Flow {
        protocol: Protocol,
        src: SocketAddr,
        dst: SocketAddr,
    },
    /// Forgets the flows the connection table holds: all, or those on the VIP's backends.
    FlowClear {
        vip: Option<VipId>,
    },
    /// What `change` would do, without doing it: the differences in the configuration,
    /// and how the Maglev rings and the flows would move. A request that is no change is
    /// refused.
    Plan {
        change: Box<Request>,
    },
    /// The node's newest `last` configuration changes; with `full`, each one's whole
    /// configuration too.
    History {
        last: u32,
        #[serde(default)]
        full: bool,
    },
    /// A change back to the configuration of history entry `revision`.
    Rollback {
        revision: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Ok(Value),
    Error(Failure),
}

/// What went wrong, in a form a script can act on: `lbx --json` prints it as
/// `{"error": {"kind": ..., "message": ..., "hint": ...}}` and exits with the kind's code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
    /// What to do about it, when there is more to say than the message does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            hint: None,
        }
    }
}

/// The kinds of failure, each with its own exit status. The codes are stable: scripts may
/// rely on them (README, "Exit status").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Something unforeseen; the message says what.
    Internal,
    /// The command line is wrong: an unknown flag, a missing argument, a value that does
    /// not parse or is out of range.
    Usage,
    /// The request is well-formed, but the configuration it would make is refused (a
    /// backend of the other address family, a limit, a health check without a port).
    Invalid,
    /// The VIP, backend, interface or file named does not exist.
    NotFound,
    /// It exists already, or someone else holds it (a VIP or backend that is there, an
    /// interface an agent or another XDP program holds, a socket in use).
    Conflict,
    /// No agent answers on the control socket.
    AgentUnreachable,
    /// Not allowed: the control socket and the data plane are for root.
    Permission,
    /// The kernel refused: loading, verifying or attaching the program, a map update.
    Kernel,
    /// What the command waits for did not happen in time (`lbx backend drain --wait
    /// --timeout`); what it changed stays changed.
    Timeout,
    /// In a cluster: etcd did not answer in time (quorum lost, or this node is cut off);
    /// nothing was changed, and the node goes on serving its last revision.
    Unavailable,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Internal,
        ErrorKind::Usage,
        ErrorKind::Invalid,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::AgentUnreachable,
        ErrorKind::Permission,
        ErrorKind::Kernel,
        ErrorKind::Timeout,
        ErrorKind::Unavailable,
    ];

    /// The process's exit status for a failure of this kind (2 is clap's for usage).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Invalid => 3,
            ErrorKind::NotFound => 4,
            ErrorKind::Conflict => 5,
            ErrorKind::AgentUnreachable => 6,
            ErrorKind::Permission => 7,
            ErrorKind::Kernel => 8,
            ErrorKind::Timeout => 9,
            ErrorKind::Unavailable => 10,
        }
    }
}

/// A request and where its answer goes, for the thread that owns the agent.
pub type Job = (Request, oneshot::Sender<Response>);
