//! Which kind of failure each of the agent's errors is, for the control API's answers and
//! the CLI's exit status.

use std::io;

use super::{
    AgentError,
    api::{ErrorKind, Failure},
};
use crate::{
    cluster::ClusterError, config::ConfigError, dataplane::DataPlaneError, history::HistoryError,
};

impl AgentError {
    pub fn failure(&self) -> Failure {
        let kind = match self {
            AgentError::Config(e) => config_kind(e),
            AgentError::DataPlane(e) => dataplane_kind(e),
            AgentError::Resolve(_) => ErrorKind::NotFound,
            AgentError::Publish(_) | AgentError::Counters(_) => ErrorKind::Kernel,
            AgentError::History(e) => history_kind(e),
            AgentError::NotFound(_) => ErrorKind::NotFound,
            AgentError::Invalid(_) => ErrorKind::Invalid,
            AgentError::Cluster(e) => cluster_kind(e),
            AgentError::Other(_) => ErrorKind::Internal,
        };
        let hint = match self {
            AgentError::Config(ConfigError::UnknownVip { .. }) => {
                Some("`lbx vip list` shows the VIPs".to_owned())
            }
            AgentError::Config(ConfigError::UnknownBackend { vip, .. }) => Some(format!(
                "`lbx backend list {}` shows its backends",
                vip.endpoint()
            )),
            AgentError::History(
                HistoryError::Unknown { .. } | HistoryError::TooOld { .. } | HistoryError::Empty,
            ) => Some("`lbx history` lists the revisions kept".to_owned()),
            _ => None,
        };
        Failure {
            kind,
            message: self.to_string(),
            hint,
        }
    }
}

pub fn config_kind(e: &ConfigError) -> ErrorKind {
    match e {
        ConfigError::NotFound { .. } | ConfigError::UnknownVip { .. } => ErrorKind::NotFound,
        ConfigError::UnknownBackend { .. } => ErrorKind::NotFound,
        ConfigError::DuplicateVip { .. } | ConfigError::BackendExists { .. } => ErrorKind::Conflict,
        ConfigError::Io { source, .. } => io_kind(source),
        ConfigError::Endpoint(_) | ConfigError::BadAddress { .. } => ErrorKind::Usage,
        ConfigError::BadProtocol { .. } => ErrorKind::Usage,
        _ => ErrorKind::Invalid,
    }
}

pub fn history_kind(e: &HistoryError) -> ErrorKind {
    match e {
        HistoryError::Empty | HistoryError::TooOld { .. } | HistoryError::Unknown { .. } => {
            ErrorKind::NotFound
        }
        HistoryError::BadEntry { .. } => ErrorKind::Invalid,
        HistoryError::Io { source, .. } => io_kind(source),
    }
}

pub fn dataplane_kind(e: &DataPlaneError) -> ErrorKind {
    match e {
        DataPlaneError::NoInterface { .. } => ErrorKind::NotFound,
        DataPlaneError::NotRoot { .. } => ErrorKind::Permission,
        DataPlaneError::Held { .. }
        | DataPlaneError::PinsInUse { .. }
        | DataPlaneError::Layout { .. }
        | DataPlaneError::ModeMismatch { .. } => ErrorKind::Conflict,
        DataPlaneError::Sys(e) => io_kind(e),
        // A path to a folder, say: the command line is wrong, not lbx.
        DataPlaneError::ObjectRead { error, .. } => match io_kind(error) {
            ErrorKind::Internal => ErrorKind::Usage,
            kind => kind,
        },
        DataPlaneError::ObjectInvalid { .. } => ErrorKind::Usage,
        _ => ErrorKind::Kernel,
    }
}

pub fn cluster_kind(e: &ClusterError) -> ErrorKind {
    match e {
        ClusterError::ChangedMeanwhile { .. } => ErrorKind::Conflict,
        ClusterError::Unavailable { .. } | ClusterError::Unreachable { .. } => {
            ErrorKind::Unavailable
        }
        ClusterError::Denied(_) => ErrorKind::Permission,
        ClusterError::Tls(_) => ErrorKind::Invalid,
        ClusterError::Etcd { .. } => ErrorKind::Internal,
    }
}

pub fn io_kind(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::PermissionDenied => ErrorKind::Permission,
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::AddrInUse | io::ErrorKind::AlreadyExists => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    }
}
