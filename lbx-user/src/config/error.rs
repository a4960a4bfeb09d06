//! What can be wrong with a configuration, in words that name the field and the fix.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{
    EndpointError, MAX_MTU, MAX_TABLE_SIZE, MAX_WEIGHT, MIN_SLOTS_PER_BACKEND, MIN_TABLE_SIZE,
    MIN_WEIGHT, Prefix, VipId,
};

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Where a parse error is: "path: line 3, column 5: ".
fn parse_location(path: Option<&PathBuf>, line: Option<usize>, column: Option<usize>) -> String {
    let file = match path {
        Some(p) => p.display().to_string(),
        None => "configuration".to_owned(),
    };
    match (line, column) {
        (Some(l), Some(c)) => format!("{file}: line {l}, column {c}: "),
        _ => format!("{file}: "),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// TOML syntax, unknown keys, wrong types, unparsable values. `line`/`column` are
    /// 1-based and present when toml located the problem.
    #[error("{}{message}", parse_location(.path.as_ref(), *.line, *.column))]
    Parse {
        path: Option<PathBuf>,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// A shared document (the cluster's, or a history's) with a `[cluster]` table.
    #[error(
        "the configuration has a [cluster] table: that table holds one node's own settings \
         (where etcd is, the node's name, its certificates) and stays in that node's local \
         file, never in the cluster's shared document; remove it from the document"
    )]
    LocalInShared,
    #[error("table_size {size} is not a prime: use a prime such as 65537")]
    TableSizeNotPrime { size: u32 },
    #[error(
        "table_size {size} is out of range: use a prime from {MIN_TABLE_SIZE} to {MAX_TABLE_SIZE}, such as 65537"
    )]
    TableSizeOutOfRange { size: u32 },
    #[error(
        "mtu {mtu} is out of range: use {min} to {MAX_MTU}, or leave it out to use the interface's MTU"
    )]
    MtuOutOfRange { mtu: u32, min: u32 },
    #[error("encap.{field} = \"{value}\" is invalid: {reason}")]
    BadPrefix {
        field: &'static str,
        value: Prefix,
        reason: String,
    },
    #[error("adaptive weights of VIP {vip}: {reason}")]
    BadAdaptive { vip: VipId, reason: String },
    #[error("health check of VIP {vip}: {reason}")]
    BadHealthCheck { vip: VipId, reason: String },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("invalid address {value}: {reason}")]
    BadAddress { value: String, reason: String },
    #[error("unknown protocol \"{value}\": use tcp or udp")]
    BadProtocol { value: String },
    #[error(
        "{count} VIPs configured, but one agent serves at most {max} (MAX_VIPS, a limit built into lbx-common and its data plane): remove some, or spread them over agents on other interfaces"
    )]
    TooManyVips { count: usize, max: u32 },
    #[error(
        "the {count} VIPs and {echo} echo entries of their addresses do not fit the data plane's VIP table ({slots} slots, each within {probes} of its hash's slot) under any of {tries} hash salts: remove some VIPs, or set icmp_echo = false"
    )]
    VipTableFull {
        count: usize,
        echo: usize,
        slots: usize,
        probes: u32,
        tries: u32,
    },
    #[error(
        "{count} backends configured across all VIPs, but one agent serves at most {max} (MAX_BACKENDS, a limit built into lbx-common and its data plane): remove some"
    )]
    TooManyBackends { count: usize, max: u32 },
    #[error(
        "VIP {vip} has {count} backends but table_size is only {table_size}: use a prime table_size far above the number of backends, such as 65537"
    )]
    TableTooSmall {
        vip: VipId,
        count: usize,
        table_size: u32,
    },
    #[error(
        "VIP {vip} has table_size {table_size} for {count} backends: a VIP's own table_size needs at least {MIN_SLOTS_PER_BACKEND} slots per backend; use a larger prime, or leave it out for the configuration's"
    )]
    VipTableTooSmall {
        vip: VipId,
        count: usize,
        table_size: u32,
    },
    #[error("VIP {vip}: table_size {size} is not a prime: use a prime such as 1021, 4093 or 65537")]
    VipTableSizeNotPrime { vip: VipId, size: u32 },
    #[error(
        "VIP {vip}: table_size {size} is out of range: use a prime from {MIN_TABLE_SIZE} to {MAX_TABLE_SIZE}"
    )]
    VipTableSizeOutOfRange { vip: VipId, size: u32 },
    #[error("VIP {vip} already exists: each address, port and protocol may appear once")]
    DuplicateVip { vip: VipId },
    #[error("VIP {vip} does not exist")]
    UnknownVip { vip: VipId },
    #[error("backend {backend} is already in VIP {vip}: an address may appear once per VIP")]
    BackendExists { vip: VipId, backend: IpAddr },
    #[error("backend {backend} is not in VIP {vip}")]
    UnknownBackend { vip: VipId, backend: IpAddr },
    #[error(
        "weight {weight} of backend {backend} in VIP {vip} is out of range: use {MIN_WEIGHT} to {MAX_WEIGHT} (to stop new flows, drain the backend instead)"
    )]
    WeightOutOfRange {
        vip: VipId,
        backend: IpAddr,
        weight: u32,
    },
    #[error(
        "backend {backend} of VIP {vip} is {} but the VIP is {}: a VIP's backends must use its address family",
        family(*.backend), family(.vip.address)
    )]
    FamilyMismatch { vip: VipId, backend: IpAddr },
}

pub(super) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ConfigError {
    let path = path.to_owned();
    move |source| ConfigError::Io {
        action,
        path,
        source,
    }
}
