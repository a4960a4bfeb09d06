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
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Ok(Value),
    Error(String),
}

/// A request and where its answer goes, for the thread that owns the agent.
pub type Job = (Request, oneshot::Sender<Response>);
