//! The declarative configuration: what the operator writes, what the agent serves, and
//! what the agent writes back after a CLI change.
//!
//! ```toml
//! seed = 0                 # flow-hash and Maglev seed; same on every node behind one ECMP group
//! table_size = 65537       # Maglev table size per VIP, a prime
//! # mtu = 1500             # optional; default: the interface's MTU
//! [encap]
//! source_v4 = "172.16.0.0/16"   # outer IPv4 source prefix; low bits vary per flow
//! source_v6 = "100::/64"        # outer IPv6 source prefix
//!
//! [[vip]]
//! address = "10.0.0.100"
//! port = 80                # 0 = all ports
//! protocol = "tcp"         # tcp | udp
//!
//! [[vip.backend]]
//! address = "10.0.0.11"
//! weight = 100             # 1..=65535, default 100
//! mac = "02:00:00:00:00:11"    # optional next-hop MAC; resolved from the neighbour table when absent
//! drain = false                # optional, omitted when false
//! ```
//!
//! Every edit operation checks what it can and leaves the config unchanged when it fails;
//! [`Config::validate`] checks the whole thing and is what the agent relies on before
//! publishing a config.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use lbx_common::{DEFAULT_RING_SIZE, MAX_BACKENDS, MAX_VIPS};
use serde::{Deserialize, Serialize};

use crate::maglev::is_prime;

/// Smallest table size accepted: below this a handful of backends already share it badly.
pub const MIN_TABLE_SIZE: u32 = 101;
/// Largest table size accepted: the rings map holds `2 * MAX_VIPS` tables of this many
/// 16-bit entries (256 MB at this size).
pub const MAX_TABLE_SIZE: u32 = 1_000_003;
pub const MIN_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 65535;
/// Weight of a backend whose `weight` is left out.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Smallest MTU with IPv4 VIPs only (RFC 791's minimum datagram every host accepts).
pub const MIN_MTU_V4: u32 = 576;
/// Smallest MTU once any VIP is IPv6 (RFC 8200's minimum link MTU).
pub const MIN_MTU_V6: u32 = 1280;
pub const MAX_MTU: u32 = 65535;

/// The whole configuration of one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Flow-hash and Maglev seed; must be equal on every node behind one ECMP group.
    pub seed: u32,
    /// Maglev table size of every VIP; a prime.
    pub table_size: u32,
    /// Link MTU to plan encapsulation for; `None` means the interface's MTU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub encap: Encap,
    #[serde(rename = "vip", skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<VipConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            table_size: DEFAULT_RING_SIZE,
            mtu: None,
            encap: Encap::default(),
            vips: Vec::new(),
        }
    }
}

/// Outer source addresses of encapsulated packets. The low (host) bits vary per flow so
/// that backends' receive-side scaling spreads the tunnels over queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Encap {
    pub source_v4: Prefix,
    pub source_v6: Prefix,
}

impl Default for Encap {
    fn default() -> Self {
        Encap {
            source_v4: Prefix {
                addr: IpAddr::V4(Ipv4Addr::new(172, 16, 0, 0)),
                len: 16,
            },
            source_v6: Prefix {
                addr: IpAddr::V6(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0)),
                len: 64,
            },
        }
    }
}

/// An IP prefix such as `172.16.0.0/16`; written as that string in TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// 32 for IPv4, 128 for IPv6.
    pub fn max_len(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// The prefix with its host bits cleared.
    pub fn network(&self) -> Prefix {
        let len = u32::from(self.len.min(self.max_len()));
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Prefix {
            addr,
            len: self.len,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ConfigError::BadAddress {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, len) = s.split_once('/').ok_or_else(|| {
            bad("not a prefix: write it as address/length, such as 172.16.0.0/16")
        })?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("not a prefix: the part before '/' is not an IP address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| bad("not a prefix: the length after '/' is not a number"))?;
        let prefix = Prefix { addr, len };
        if len > prefix.max_len() {
            return Err(bad(if addr.is_ipv4() {
                "prefix length is out of range: use 0 to 32 for IPv4"
            } else {
                "prefix length is out of range: use 0 to 128 for IPv6"
            }));
        }
        Ok(prefix)
    }
}

impl TryFrom<String> for Prefix {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Prefix> for String {
    fn from(p: Prefix) -> String {
        p.to_string()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lbx_common::PROTO_TCP,
            Protocol::Udp => lbx_common::PROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("tcp") {
            Ok(Protocol::Tcp)
        } else if s.eq_ignore_ascii_case("udp") {
            Ok(Protocol::Udp)
        } else {
            Err(ConfigError::BadProtocol {
                value: s.to_owned(),
            })
        }
    }
}

/// One virtual service: traffic to `address:port/protocol` is spread over `backends`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub address: IpAddr,
    /// 0 means every port of `address` and `protocol`.
    pub port: u16,
    pub protocol: Protocol,
    /// How the agent checks this VIP's backends; none: they are assumed healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Weights set by the agent from measured load; none: the operator's weights as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<Adaptive>,
    #[serde(rename = "backend", default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendConfig>,
}

/// Adaptive weights: every control interval the agent measures each backend (new flows
/// per second from the data plane, probe latency from the health checks), estimates its
/// capacity, and sets weights in proportion, with the operator's weights as caps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adaptive {
    /// Weights range over `min_weight..=max_weight` (the largest capacity gets the max).
    #[serde(default = "default_min_weight")]
    pub min_weight: u32,
    #[serde(default = "default_max_weight")]
    pub max_weight: u32,
    /// A weight moves only when it would change by more than this many percent.
    #[serde(default = "default_hysteresis")]
    pub hysteresis_percent: u32,
    /// At most this share of table slots (percent) changes owner per interval.
    #[serde(default = "default_churn_budget")]
    pub churn_budget_percent: u32,
    /// Port of `lbx report` on each backend's own address: its CPU utilisation and
    /// requests in flight, shown in `lbx status` and used when latency says nothing yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_port: Option<u16>,
}

fn default_min_weight() -> u32 {
    1
}
fn default_max_weight() -> u32 {
    1000
}
fn default_hysteresis() -> u32 {
    10
}
fn default_churn_budget() -> u32 {
    10
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            min_weight: default_min_weight(),
            max_weight: default_max_weight(),
            hysteresis_percent: default_hysteresis(),
            churn_budget_percent: default_churn_budget(),
            report_port: None,
        }
    }
}

impl Adaptive {
    fn validate(&self, vip: VipId, health: Option<&HealthCheck>) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::BadAdaptive { vip, reason };
        if health.is_none() {
            return Err(bad(
                "adaptive weights need a health check to measure latency: add one with \
                 `lbx vip health VIP --kind http ...`"
                    .into(),
            ));
        }
        if self.min_weight < 1 || self.max_weight > MAX_WEIGHT || self.min_weight > self.max_weight
        {
            return Err(bad(format!(
                "weights {}..{} are out of range: use 1 <= min_weight <= max_weight <= {MAX_WEIGHT}",
                self.min_weight, self.max_weight
            )));
        }
        if self.hysteresis_percent > 100 {
            return Err(bad(format!(
                "hysteresis_percent {} is out of range: use 0 to 100",
                self.hysteresis_percent
            )));
        }
        if !(1..=100).contains(&self.churn_budget_percent) {
            return Err(bad(format!(
                "churn_budget_percent {} is out of range: use 1 to 100",
                self.churn_budget_percent
            )));
        }
        Ok(())
    }
}

/// What a health probe does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connection that opens.
    #[default]
    Tcp,
    /// An HTTP/1.1 GET with the expected status (and body text, if given).
    Http,
}

/// Health check of a VIP's backends. Probes go to each backend's own address, at `port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default)]
    pub kind: CheckKind,
    /// Port to probe; default: the VIP's port (required for an all-ports VIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP: the path to GET.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// HTTP: the status a healthy backend answers.
    #[serde(default = "default_health_status")]
    pub expect_status: u16,
    /// HTTP: text the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    #[serde(default = "default_health_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_health_timeout")]
    pub timeout_ms: u64,
    /// Consecutive successes that bring a failed backend back.
    #[serde(default = "default_health_rise")]
    pub rise: u32,
    /// Consecutive failures that take a backend out.
    #[serde(default = "default_health_fall")]
    pub fall: u32,
    /// Seconds over which a recovered backend's weight ramps up to its full value.
    #[serde(default = "default_slow_start")]
    pub slow_start_s: u64,
}

fn default_health_path() -> String {
    "/".to_owned()
}
fn default_health_status() -> u16 {
    200
}
fn default_health_interval() -> u64 {
    1000
}
fn default_health_timeout() -> u64 {
    500
}
fn default_health_rise() -> u32 {
    2
}
fn default_health_fall() -> u32 {
    2
}
fn default_slow_start() -> u64 {
    10
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: CheckKind::Tcp,
            port: None,
            path: default_health_path(),
            expect_status: default_health_status(),
            body_contains: None,
            interval_ms: default_health_interval(),
            timeout_ms: default_health_timeout(),
            rise: default_health_rise(),
            fall: default_health_fall(),
            slow_start_s: default_slow_start(),
        }
    }
}

impl HealthCheck {
    fn validate(&self, vip: VipId) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::BadHealthCheck { vip, reason };
        if vip.port == 0 && self.port.is_none() {
            return Err(bad("an all-ports VIP needs `port` for its checks".into()));
        }
        if self.port == Some(0) {
            return Err(bad("port 0 cannot be probed: use 1 to 65535".into()));
        }
        if !(100..=3_600_000).contains(&self.interval_ms) {
            return Err(bad(format!(
                "interval_ms {} is out of range: use 100 to 3600000",
                self.interval_ms
            )));
        }
        if self.timeout_ms < 10 || self.timeout_ms > self.interval_ms {
            return Err(bad(format!(
                "timeout_ms {} is out of range: use 10 up to interval_ms ({})",
                self.timeout_ms, self.interval_ms
            )));
        }
        for (name, n) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=100).contains(&n) {
                return Err(bad(format!("{name} {n} is out of range: use 1 to 100")));
            }
        }
        if self.slow_start_s > 3600 {
            return Err(bad(format!(
                "slow_start_s {} is out of range: use 0 to 3600",
                self.slow_start_s
            )));
        }
        if self.kind == CheckKind::Http {
            if !self.path.starts_with('/') || self.path.contains(char::is_whitespace) {
                return Err(bad(format!(
                    "path {:?} must start with '/' and contain no spaces",
                    self.path
                )));
            }
            if !(100..=599).contains(&self.expect_status) {
                return Err(bad(format!(
                    "expect_status {} is not an HTTP status: use 100 to 599",
                    self.expect_status
                )));
            }
        }
        Ok(())
    }
}

impl VipConfig {
    pub fn id(&self) -> VipId {
        VipId {
            address: self.address,
            port: self.port,
            protocol: self.protocol,
        }
    }

    pub fn backend(&self, address: IpAddr) -> Option<&BackendConfig> {
        self.backends.iter().find(|b| b.address == address)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// Relative share of the VIP's new flows, 1..=65535.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Ethernet address of the backend or its next hop; `None`: look it up in the
    /// neighbour table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Takes no new flows but keeps its existing ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl BackendConfig {
    /// A backend with the default weight, no fixed MAC, not draining.
    pub fn new(address: IpAddr) -> Self {
        BackendConfig {
            address,
            weight: DEFAULT_WEIGHT,
            mac: None,
            drain: false,
        }
    }
}

/// An Ethernet address; written `aa:bb:cc:dd:ee:ff` in TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Group bit: multicast, and broadcast.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = ConfigError;

    /// Six hex bytes separated by ':' or '-' (one separator throughout), one or two
    /// digits each.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadAddress {
            value: s.to_owned(),
            reason: "not a MAC address: use six hex bytes such as 02:00:00:00:00:11".to_owned(),
        };
        let sep = if s.contains(':') { ':' } else { '-' };
        let mut mac = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || part.len() > 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// Identity of a VIP: address, port, protocol. Displayed `10.0.0.100:80/tcp`,
/// `[fd00::1]:80/udp`; [`FromStr`] reads that form back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipId {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl VipId {
    /// Parses `10.0.0.1:80`, `[fd00::1]:443`, or a bare address (`10.0.0.1`, `fd00::1`,
    /// `[fd00::1]`), which means port 0: every port.
    pub fn parse(addr_port: &str, protocol: Protocol) -> Result<VipId, ConfigError> {
        let s = addr_port.trim();
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(VipId {
                address: sa.ip(),
                port: sa.port(),
                protocol,
            });
        }
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
        let address = match bare {
            Some(inner) => inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
            None => s.parse::<IpAddr>().ok(),
        };
        address
            .map(|address| VipId {
                address,
                port: 0,
                protocol,
            })
            .ok_or_else(|| ConfigError::BadAddress {
                value: addr_port.to_owned(),
                reason: VIP_FORMS.to_owned(),
            })
    }
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.protocol),
        }
    }
}

impl FromStr for VipId {
    type Err = ConfigError;

    /// `address[:port]/protocol`, the [`Display`](fmt::Display) form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, proto) = s.rsplit_once('/').ok_or_else(|| ConfigError::BadAddress {
            value: s.to_owned(),
            reason: "not a VIP: write it as address:port/protocol, such as 10.0.0.100:80/tcp"
                .to_owned(),
        })?;
        VipId::parse(addr, proto.parse()?)
    }
}

const VIP_FORMS: &str = "not an address or address:port: use 10.0.0.1:80, [fd00::1]:443, or a bare address for all ports";

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
    #[error("invalid address {value}: {reason}")]
    BadAddress { value: String, reason: String },
    #[error("unknown protocol \"{value}\": use tcp or udp")]
    BadProtocol { value: String },
    #[error("{count} VIPs configured, but at most {max} are supported: remove some")]
    TooManyVips { count: usize, max: u32 },
    #[error(
        "the {count} VIPs do not fit the data plane's VIP table ({slots} slots, each VIP within {probes} of its hash's slot) under any of {tries} hash salts: remove some"
    )]
    VipTableFull {
        count: usize,
        slots: usize,
        probes: u32,
        tries: u32,
    },
    #[error(
        "{count} backends configured across all VIPs, but at most {max} are supported: remove some"
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

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ConfigError {
    let path = path.to_owned();
    move |source| ConfigError::Io {
        action,
        path,
        source,
    }
}

/// Refuses addresses no packet can be balanced to or from. `what` names the role for
/// the message ("a VIP", "a backend of VIP ...").
fn check_address(addr: IpAddr, what: &str) -> Result<(), ConfigError> {
    let problem = match addr {
        _ if addr.is_unspecified() => Some("the unspecified address"),
        _ if addr.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (write it as IPv4)")
        }
        _ => None,
    };
    match problem {
        Some(p) => Err(ConfigError::BadAddress {
            value: addr.to_string(),
            reason: format!("{p} cannot be {what}"),
        }),
        None => Ok(()),
    }
}

fn check_mac(mac: MacAddr, vip: VipId, backend: IpAddr) -> Result<(), ConfigError> {
    let problem = if mac.is_zero() {
        "is all zeros"
    } else if mac.is_multicast() {
        "is a multicast or broadcast address"
    } else {
        return Ok(());
    };
    Err(ConfigError::BadAddress {
        value: mac.to_string(),
        reason: format!(
            "the MAC of backend {backend} in VIP {vip} {problem}: use the unicast MAC of the backend or its next hop, or leave it out"
        ),
    })
}

fn check_weight(vip: VipId, backend: IpAddr, weight: u32) -> Result<(), ConfigError> {
    if (MIN_WEIGHT..=MAX_WEIGHT).contains(&weight) {
        Ok(())
    } else {
        Err(ConfigError::WeightOutOfRange {
            vip,
            backend,
            weight,
        })
    }
}

/// Everything about one backend that does not depend on its siblings.
fn check_backend(vip: VipId, b: &BackendConfig) -> Result<(), ConfigError> {
    check_address(b.address, &format!("a backend (VIP {vip})"))?;
    if b.address.is_ipv4() != vip.address.is_ipv4() {
        return Err(ConfigError::FamilyMismatch {
            vip,
            backend: b.address,
        });
    }
    check_weight(vip, b.address, b.weight)?;
    if let Some(mac) = b.mac {
        check_mac(mac, vip, b.address)?;
    }
    Ok(())
}

fn check_prefix(field: &'static str, p: Prefix, v4: bool) -> Result<(), ConfigError> {
    let bad = |reason: String| {
        Err(ConfigError::BadPrefix {
            field,
            value: p,
            reason,
        })
    };
    if p.addr.is_ipv4() != v4 {
        let want = if v4 {
            "an IPv4 prefix such as 172.16.0.0/16"
        } else {
            "an IPv6 prefix such as 100::/64"
        };
        return bad(format!("it must be {want}"));
    }
    if p.len > p.max_len() {
        return bad(format!(
            "the length is out of range: use 0 to {}",
            p.max_len()
        ));
    }
    let net = p.network();
    if net != p {
        // The agent ORs per-flow bits into the host part; set host bits would stick.
        return bad(format!("host bits are set: use {net}"));
    }
    Ok(())
}

/// Distinguishes temporary files of concurrent saves from one process.
static SAVE_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Config {
    /// Parses and validates.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, None)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_column(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            ConfigError::Parse {
                path: path.map(Path::to_owned),
                line,
                column,
                message: one_line(e.message()),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serializes: only strings, integers, tables")
    }

    /// Reads, parses and validates `path`. A missing file is [`ConfigError::NotFound`].
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ConfigError::NotFound {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(io_error("read", path)(e)),
        };
        Self::parse(&text, Some(path))
    }

    /// Writes the config to `path` atomically: a reader sees the old file or the new one,
    /// never a mix, even across a crash. Creates the parent directory if missing; the file
    /// is mode 0600. Does not validate.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        let name = path.file_name().ok_or_else(|| ConfigError::Io {
            action: "write",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;

        // Same directory as the target, so the rename cannot cross filesystems.
        let n = SAVE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.tmp.{}.{n}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let result = write_synced(&tmp, self.to_toml().as_bytes())
            .and_then(|()| fs::rename(&tmp, path).map_err(io_error("rename into place", path)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        // Persist the rename itself. Best effort: some filesystems refuse fsync on a
        // directory, and the file is already complete on disk either way.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Checks the whole config; returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let size = self.table_size;
        if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&size) {
            return Err(ConfigError::TableSizeOutOfRange { size });
        }
        if !is_prime(size) {
            return Err(ConfigError::TableSizeNotPrime { size });
        }
        if let Some(mtu) = self.mtu {
            let min = if self.vips.iter().any(|v| v.address.is_ipv6()) {
                MIN_MTU_V6
            } else {
                MIN_MTU_V4
            };
            if !(min..=MAX_MTU).contains(&mtu) {
                return Err(ConfigError::MtuOutOfRange { mtu, min });
            }
        }
        check_prefix("source_v4", self.encap.source_v4, true)?;
        check_prefix("source_v6", self.encap.source_v6, false)?;
        if self.vips.len() > MAX_VIPS as usize {
            return Err(ConfigError::TooManyVips {
                count: self.vips.len(),
                max: MAX_VIPS,
            });
        }
        let total = self.backend_count();
        if total > MAX_BACKENDS as usize {
            return Err(ConfigError::TooManyBackends {
                count: total,
                max: MAX_BACKENDS,
            });
        }

        let mut vips = HashSet::new();
        for v in &self.vips {
            let vip = v.id();
            check_address(v.address, "a VIP")?;
            if !vips.insert(vip) {
                return Err(ConfigError::DuplicateVip { vip });
            }
            if let Some(h) = &v.health {
                h.validate(vip)?;
            }
            if let Some(a) = &v.adaptive {
                a.validate(vip, v.health.as_ref())?;
            }
            if v.backends.len() > size as usize {
                return Err(ConfigError::TableTooSmall {
                    vip,
                    count: v.backends.len(),
                    table_size: size,
                });
            }
            let mut seen = HashSet::new();
            for b in &v.backends {
                check_backend(vip, b)?;
                if !seen.insert(b.address) {
                    return Err(ConfigError::BackendExists {
                        vip,
                        backend: b.address,
                    });
                }
            }
        }
        if !crate::plan::vips_fit(self) {
            return Err(ConfigError::VipTableFull {
                count: self.vips.len(),
                slots: lbx_common::VIP_TABLE_SLOTS,
                probes: lbx_common::VIP_PROBES,
                tries: lbx_common::vips::SALT_TRIES,
            });
        }
        Ok(())
    }

    pub fn vip(&self, id: VipId) -> Option<&VipConfig> {
        self.vips.iter().find(|v| v.id() == id)
    }

    fn vip_mut(&mut self, id: VipId) -> Result<&mut VipConfig, ConfigError> {
        self.vips
            .iter_mut()
            .find(|v| v.id() == id)
            .ok_or(ConfigError::UnknownVip { vip: id })
    }

    fn backend_mut(
        &mut self,
        id: VipId,
        backend: IpAddr,
    ) -> Result<&mut BackendConfig, ConfigError> {
        self.vip_mut(id)?
            .backends
            .iter_mut()
            .find(|b| b.address == backend)
            .ok_or(ConfigError::UnknownBackend { vip: id, backend })
    }

    /// Backends across all VIPs: each takes one slot of the backend table.
    pub fn backend_count(&self) -> usize {
        self.vips.iter().map(|v| v.backends.len()).sum()
    }

    /// Adds a VIP without backends.
    pub fn add_vip(&mut self, id: VipId) -> Result<(), ConfigError> {
        check_address(id.address, "a VIP")?;
        if self.vip(id).is_some() {
            return Err(ConfigError::DuplicateVip { vip: id });
        }
        if self.vips.len() >= MAX_VIPS as usize {
            return Err(ConfigError::TooManyVips {
                count: self.vips.len() + 1,
                max: MAX_VIPS,
            });
        }
        self.vips.push(VipConfig {
            address: id.address,
            port: id.port,
            protocol: id.protocol,
            health: None,
            adaptive: None,
            backends: Vec::new(),
        });
        Ok(())
    }

    /// Removes a VIP together with its backends, and returns it.
    pub fn del_vip(&mut self, id: VipId) -> Result<VipConfig, ConfigError> {
        let i = self
            .vips
            .iter()
            .position(|v| v.id() == id)
            .ok_or(ConfigError::UnknownVip { vip: id })?;
        Ok(self.vips.remove(i))
    }

    pub fn add_backend(&mut self, id: VipId, backend: BackendConfig) -> Result<(), ConfigError> {
        let total = self.backend_count();
        let table_size = self.table_size;
        let vip = self.vip_mut(id)?;
        check_backend(id, &backend)?;
        if vip.backend(backend.address).is_some() {
            return Err(ConfigError::BackendExists {
                vip: id,
                backend: backend.address,
            });
        }
        if vip.backends.len() >= table_size as usize {
            return Err(ConfigError::TableTooSmall {
                vip: id,
                count: vip.backends.len() + 1,
                table_size,
            });
        }
        if total >= MAX_BACKENDS as usize {
            return Err(ConfigError::TooManyBackends {
                count: total + 1,
                max: MAX_BACKENDS,
            });
        }
        vip.backends.push(backend);
        Ok(())
    }

    /// Removes a backend from a VIP, and returns it.
    pub fn del_backend(
        &mut self,
        id: VipId,
        backend: IpAddr,
    ) -> Result<BackendConfig, ConfigError> {
        let vip = self.vip_mut(id)?;
        let i = vip
            .backends
            .iter()
            .position(|b| b.address == backend)
            .ok_or(ConfigError::UnknownBackend { vip: id, backend })?;
        Ok(vip.backends.remove(i))
    }

    pub fn set_weight(
        &mut self,
        id: VipId,
        backend: IpAddr,
        weight: u32,
    ) -> Result<(), ConfigError> {
        let b = self.backend_mut(id, backend)?;
        check_weight(id, backend, weight)?;
        b.weight = weight;
        Ok(())
    }

    /// Turns adaptive weights on (with these limits) or off for a VIP.
    pub fn set_adaptive(
        &mut self,
        id: VipId,
        adaptive: Option<Adaptive>,
    ) -> Result<(), ConfigError> {
        let vip = self.vip_mut(id)?;
        if let Some(a) = &adaptive {
            a.validate(id, vip.health.as_ref())?;
        }
        vip.adaptive = adaptive;
        Ok(())
    }

    /// Sets (or with `None` removes) the health check of a VIP's backends.
    pub fn set_health(
        &mut self,
        id: VipId,
        health: Option<HealthCheck>,
    ) -> Result<(), ConfigError> {
        if let Some(h) = &health {
            h.validate(id)?;
        }
        let vip = self.vip_mut(id)?;
        if health.is_none() && vip.adaptive.is_some() {
            return Err(ConfigError::BadAdaptive {
                vip: id,
                reason: "adaptive weights need the health check: turn them off first \
                         (`lbx vip adaptive VIP --off`)"
                    .into(),
            });
        }
        vip.health = health;
        Ok(())
    }

    pub fn set_drain(
        &mut self,
        id: VipId,
        backend: IpAddr,
        drain: bool,
    ) -> Result<(), ConfigError> {
        self.backend_mut(id, backend)?.drain = drain;
        Ok(())
    }
}

/// Creates `path` (mode 0600), writes `bytes` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("create", path))?;
    // A leftover temp file keeps its old mode; `mode` only applies on creation.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_error("set permissions of", path))?;
    f.write_all(bytes).map_err(io_error("write", path))?;
    f.sync_all().map_err(io_error("sync", path))
}

/// toml's messages span lines ("invalid array\nexpected `]`"); keep ours on one.
fn one_line(message: &str) -> String {
    let joined = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.is_empty() {
        "invalid TOML syntax".to_owned()
    } else {
        joined
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
seed = 0                 # flow-hash and Maglev seed; same on every node behind one ECMP group
table_size = 65537       # Maglev table size per VIP, a prime
# mtu = 1500             # optional; default: the interface's MTU
[encap]
source_v4 = "172.16.0.0/16"   # outer IPv4 source prefix; low bits vary per flow
source_v6 = "100::/64"        # outer IPv6 source prefix

[[vip]]
address = "10.0.0.100"
port = 80                # 0 = all ports
protocol = "tcp"         # tcp | udp

[[vip.backend]]
address = "10.0.0.11"
weight = 100
mac = "02:00:00:00:00:11"    # optional next-hop MAC; resolved from the neighbour table when absent
drain = false                # optional, omitted when false
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn vid(s: &str) -> VipId {
        s.parse().unwrap()
    }

    type Check = fn(&ConfigError) -> bool;
    type Edit = Box<dyn Fn(&mut Config) -> Result<(), ConfigError>>;

    /// A valid config with an IPv4 and an IPv6 VIP.
    fn sample() -> Config {
        let mut c = Config::default();
        let v4 = vid("10.0.0.100:80/tcp");
        let v6 = vid("[fd00::1]:53/udp");
        c.add_vip(v4).unwrap();
        c.add_vip(v6).unwrap();
        c.add_backend(
            v4,
            BackendConfig {
                address: ip("10.0.0.11"),
                weight: 7,
                mac: Some("02:00:00:00:00:11".parse().unwrap()),
                drain: true,
            },
        )
        .unwrap();
        c.add_backend(v4, BackendConfig::new(ip("10.0.0.12")))
            .unwrap();
        c.add_backend(v6, BackendConfig::new(ip("fd00::11")))
            .unwrap();
        c.validate().unwrap();
        c
    }

    /// Asserts `r` failed with a message mentioning every string in `names`.
    fn assert_names(r: Result<(), ConfigError>, names: &[&str]) -> ConfigError {
        let e = r.expect_err("expected an error");
        let msg = e.to_string();
        for n in names {
            assert!(msg.contains(n), "message {msg:?} does not name {n:?}");
        }
        assert_eq!(msg, msg.trim(), "no stray whitespace");
        e
    }

    #[test]
    fn example_parses() {
        let c = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.seed, 0);
        assert_eq!(c.table_size, 65537);
        assert_eq!(c.mtu, None);
        assert_eq!(c.encap, Encap::default());
        assert_eq!(c.vips.len(), 1);
        let v = &c.vips[0];
        assert_eq!(v.id(), vid("10.0.0.100:80/tcp"));
        assert_eq!(
            v.backends,
            [BackendConfig {
                address: ip("10.0.0.11"),
                weight: 100,
                mac: Some(MacAddr([2, 0, 0, 0, 0, 0x11])),
                drain: false
            }]
        );
    }

    #[test]
    fn defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        let c = Config::default();
        assert_eq!((c.seed, c.table_size, c.mtu), (0, 65537, None));
        assert_eq!(c.encap.source_v4.to_string(), "172.16.0.0/16");
        assert_eq!(c.encap.source_v6.to_string(), "100::/64");
        let c = Config::from_toml("[[vip]]\naddress = \"10.0.0.1\"\nport = 0\nprotocol = \"udp\"\n[[vip.backend]]\naddress = \"10.0.0.2\"\n").unwrap();
        assert_eq!(c.vips[0].backends[0], BackendConfig::new(ip("10.0.0.2")));
    }

    #[test]
    fn round_trip() {
        let mut c = sample();
        c.seed = 0xdead_beef;
        c.table_size = 257;
        c.mtu = Some(9000);
        c.encap.source_v4 = "192.168.0.0/24".parse().unwrap();
        let text = c.to_toml();
        assert_eq!(Config::from_toml(&text).unwrap(), c);
        // Optional fields are left out when they hold their default.
        assert!(text.contains("drain = true"));
        assert_eq!(text.matches("drain").count(), 1);
        assert_eq!(text.matches("mac").count(), 1);
        assert!(text.contains("[[vip.backend]]"));
        let d = Config::default().to_toml();
        assert!(!d.contains("mtu") && !d.contains("vip"), "{d}");
        assert_eq!(Config::from_toml(&d).unwrap(), Config::default());
    }

    #[test]
    fn parse_errors_locate_the_problem() {
        let e = Config::from_toml("seed = 1\nbogus = 2\n").unwrap_err();
        let ConfigError::Parse {
            path: None,
            line: Some(2),
            column: Some(1),
            ref message,
        } = e
        else {
            panic!("{e:?}");
        };
        assert!(message.contains("bogus"), "{message}");
        assert!(
            e.to_string()
                .starts_with("configuration: line 2, column 1: "),
            "{e}"
        );

        for (text, what) in [
            (
                "[[vip]]\naddress = \"10.0.0.1\"\nport = 1\nprotocol = \"sctp\"\n",
                "sctp",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.300\"\nport = 1\nprotocol = \"tcp\"\n",
                "address",
            ),
            ("[encap]\nsource_v4 = \"172.16.0.0/40\"\n", "172.16.0.0/40"),
            (
                "[[vip]]\naddress = \"10.0.0.1\"\nport = 1\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"10.0.0.2\"\nmac = \"02:00\"\n",
                "02:00",
            ),
            (
                "[[vip]]\naddress = \"10.0.0.1\"\nport = 70000\nprotocol = \"tcp\"\n",
                "70000",
            ),
            ("table_size = ", "line 1, column 14: invalid TOML syntax"),
            ("a = [", "line 1, column 6: invalid array; expected `]`"),
        ] {
            let e = Config::from_toml(text).unwrap_err();
            assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn table_size() {
        for size in [1000, 65536] {
            let c = Config {
                table_size: size,
                ..Config::default()
            };
            let e = assert_names(c.validate(), &[&size.to_string(), "65537"]);
            assert!(
                matches!(e, ConfigError::TableSizeNotPrime { size: s } if s == size),
                "{e:?}"
            );
        }
        for size in [97, 1_000_033] {
            let c = Config {
                table_size: size,
                ..Config::default()
            };
            let e = assert_names(c.validate(), &[&size.to_string(), "101", "1000003"]);
            assert!(
                matches!(e, ConfigError::TableSizeOutOfRange { size: s } if s == size),
                "{e:?}"
            );
        }
        for size in [101, 1_000_003] {
            Config {
                table_size: size,
                ..Config::default()
            }
            .validate()
            .unwrap();
        }
    }

    #[test]
    fn mtu() {
        let mut c = sample();
        c.mtu = Some(1000);
        let e = assert_names(c.validate(), &["1000", "1280"]);
        assert!(matches!(
            e,
            ConfigError::MtuOutOfRange {
                mtu: 1000,
                min: 1280
            }
        ));
        c.del_vip(vid("[fd00::1]:53/udp")).unwrap();
        c.validate().unwrap(); // IPv4 only: 576 is enough
        c.mtu = Some(575);
        let e = assert_names(c.validate(), &["575", "576"]);
        assert!(matches!(
            e,
            ConfigError::MtuOutOfRange { mtu: 575, min: 576 }
        ));
        c.mtu = Some(65536);
        assert_names(c.validate(), &["65536", "65535"]);
        c.mtu = Some(65535);
        c.validate().unwrap();
    }

    #[test]
    fn encap_prefixes() {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let cases = [
            (p("100::/64"), p("100::/64"), "source_v4", "100::/64"),
            (
                p("172.16.0.0/16"),
                p("10.0.0.0/8"),
                "source_v6",
                "10.0.0.0/8",
            ),
            (
                p("172.16.0.5/16"),
                p("100::/64"),
                "172.16.0.0/16",
                "172.16.0.5/16",
            ),
            (
                Prefix {
                    addr: ip("10.0.0.0"),
                    len: 33,
                },
                p("100::/64"),
                "source_v4",
                "10.0.0.0/33",
            ),
        ];
        for (v4, v6, a, b) in cases {
            let c = Config {
                encap: Encap {
                    source_v4: v4,
                    source_v6: v6,
                },
                ..Config::default()
            };
            let e = assert_names(c.validate(), &[a, b]);
            assert!(matches!(e, ConfigError::BadPrefix { .. }), "{e:?}");
        }
        for ok in ["0.0.0.0/0", "10.1.2.3/32", "::/0", "fd00::1/128"] {
            assert_eq!(p(ok).to_string(), ok);
        }
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "::/129",
            "x/8",
            "10.0.0.0/-1",
            "10.0.0.0/",
        ] {
            let e = bad.parse::<Prefix>().unwrap_err();
            assert!(
                matches!(e, ConfigError::BadAddress { .. }) && e.to_string().contains(bad),
                "{e}"
            );
        }
        assert_eq!(p("fd00::ffff/112").network(), p("fd00::/112"));
        assert_eq!(p("10.1.2.3/0").network(), p("0.0.0.0/0"));
    }

    #[test]
    fn too_many_vips() {
        let mut c = Config::default();
        for i in 0..MAX_VIPS {
            c.add_vip(VipId {
                address: ip("10.0.0.1"),
                port: i as u16,
                protocol: Protocol::Tcp,
            })
            .unwrap();
        }
        c.validate().unwrap();
        let before = c.clone();
        let extra = VipId {
            address: ip("10.0.0.1"),
            port: 999,
            protocol: Protocol::Tcp,
        };
        let e = assert_names(c.add_vip(extra), &["65", "64"]);
        assert!(matches!(e, ConfigError::TooManyVips { count: 65, max: 64 }));
        assert_eq!(c, before);
        c.vips.push(VipConfig {
            address: extra.address,
            port: extra.port,
            protocol: extra.protocol,
            health: None,
            adaptive: None,
            backends: vec![],
        });
        let e = assert_names(c.validate(), &["65", "64"]);
        assert!(matches!(e, ConfigError::TooManyVips { count: 65, max: 64 }));
    }

    #[test]
    fn too_many_backends() {
        let mut c = Config::default();
        let per_vip = MAX_BACKENDS / 16;
        for v in 0..16u16 {
            let vip = VipId {
                address: ip("10.0.0.1"),
                port: v,
                protocol: Protocol::Udp,
            };
            c.add_vip(vip).unwrap();
            for b in 0..per_vip {
                let addr = IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + b));
                c.add_backend(vip, BackendConfig::new(addr)).unwrap();
            }
        }
        c.validate().unwrap();
        let vip = c.vips[0].id();
        let before = c.clone();
        let e = assert_names(
            c.add_backend(vip, BackendConfig::new(ip("10.9.9.9"))),
            &["4097", "4096"],
        );
        assert!(matches!(
            e,
            ConfigError::TooManyBackends {
                count: 4097,
                max: 4096
            }
        ));
        assert_eq!(c, before);
        c.vips[0].backends.push(BackendConfig::new(ip("10.9.9.9")));
        let e = assert_names(c.validate(), &["4097", "4096"]);
        assert!(matches!(
            e,
            ConfigError::TooManyBackends {
                count: 4097,
                max: 4096
            }
        ));
    }

    #[test]
    fn table_too_small() {
        let mut c = Config {
            table_size: 101,
            ..Config::default()
        };
        let vip = vid("10.0.0.1:80/tcp");
        c.add_vip(vip).unwrap();
        for b in 0..101u32 {
            c.add_backend(
                vip,
                BackendConfig::new(IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + b))),
            )
            .unwrap();
        }
        let before = c.clone();
        let e = assert_names(
            c.add_backend(vip, BackendConfig::new(ip("10.9.9.9"))),
            &["10.0.0.1:80/tcp", "102", "101"],
        );
        assert!(matches!(
            e,
            ConfigError::TableTooSmall {
                count: 102,
                table_size: 101,
                ..
            }
        ));
        assert_eq!(c, before);
        c.vips[0].backends.push(BackendConfig::new(ip("10.9.9.9")));
        let e = assert_names(c.validate(), &["10.0.0.1:80/tcp", "102", "101"]);
        assert!(matches!(e, ConfigError::TableTooSmall { count: 102, .. }));
    }

    #[test]
    fn duplicate_vip() {
        let mut c = sample();
        let before = c.clone();
        let e = assert_names(c.add_vip(vid("10.0.0.100:80/tcp")), &["10.0.0.100:80/tcp"]);
        assert!(matches!(e, ConfigError::DuplicateVip { vip } if vip == vid("10.0.0.100:80/tcp")));
        assert_eq!(c, before);
        // Same address and port, other protocol: a different VIP.
        c.add_vip(vid("10.0.0.100:80/udp")).unwrap();
        c.validate().unwrap();
        let dup = c.vips[1].clone();
        c.vips.push(dup);
        let e = assert_names(c.validate(), &["[fd00::1]:53/udp"]);
        assert!(matches!(e, ConfigError::DuplicateVip { .. }));
    }

    #[test]
    fn bad_vip_addresses() {
        for addr in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "::ffff:10.0.0.1",
        ] {
            let vip = VipId {
                address: ip(addr),
                port: 80,
                protocol: Protocol::Tcp,
            };
            let mut c = sample();
            let before = c.clone();
            let e = assert_names(c.add_vip(vip), &[addr, "VIP"]);
            assert!(matches!(e, ConfigError::BadAddress { .. }), "{e:?}");
            assert_eq!(c, before);
            c.vips.push(VipConfig {
                address: vip.address,
                port: 80,
                protocol: Protocol::Tcp,
                health: None,
                adaptive: None,
                backends: vec![],
            });
            let e = assert_names(c.validate(), &[addr, "VIP"]);
            assert!(matches!(e, ConfigError::BadAddress { .. }), "{e:?}");
        }
    }

    #[test]
    fn bad_backends() {
        let v4 = vid("10.0.0.100:80/tcp");
        let v6 = vid("[fd00::1]:53/udp");
        let mac = |s: &str| Some(s.parse::<MacAddr>().unwrap());
        let b = |addr: &str, weight: u32, m: Option<MacAddr>| BackendConfig {
            address: ip(addr),
            weight,
            mac: m,
            drain: false,
        };
        // (vip, backend, names the message must contain, variant check)
        let cases: Vec<(VipId, BackendConfig, Vec<&str>, Check)> = vec![
            (
                v4,
                b("0.0.0.0", 1, None),
                vec!["0.0.0.0", "10.0.0.100:80/tcp"],
                |e| matches!(e, ConfigError::BadAddress { .. }),
            ),
            (
                v4,
                b("239.1.1.1", 1, None),
                vec!["239.1.1.1", "multicast"],
                |e| matches!(e, ConfigError::BadAddress { .. }),
            ),
            (
                v4,
                b("255.255.255.255", 1, None),
                vec!["255.255.255.255", "broadcast"],
                |e| matches!(e, ConfigError::BadAddress { .. }),
            ),
            (v6, b("::", 1, None), vec!["::", "unspecified"], |e| {
                matches!(e, ConfigError::BadAddress { .. })
            }),
            (
                v4,
                b("fd00::11", 1, None),
                vec!["fd00::11", "IPv6", "IPv4", "10.0.0.100:80/tcp"],
                |e| matches!(e, ConfigError::FamilyMismatch { .. }),
            ),
            (
                v6,
                b("10.0.0.11", 1, None),
                vec!["10.0.0.11", "[fd00::1]:53/udp"],
                |e| matches!(e, ConfigError::FamilyMismatch { .. }),
            ),
            (
                v4,
                b("10.0.0.13", 0, None),
                vec!["weight 0", "10.0.0.13", "10.0.0.100:80/tcp", "1 to 65535"],
                |e| matches!(e, ConfigError::WeightOutOfRange { weight: 0, .. }),
            ),
            (
                v4,
                b("10.0.0.13", 70000, None),
                vec!["weight 70000", "10.0.0.13", "1 to 65535"],
                |e| matches!(e, ConfigError::WeightOutOfRange { weight: 70000, .. }),
            ),
            (
                v4,
                b("10.0.0.13", 1, mac("01:00:5e:00:00:01")),
                vec!["01:00:5e:00:00:01", "10.0.0.13"],
                |e| matches!(e, ConfigError::BadAddress { .. }),
            ),
            (
                v4,
                b("10.0.0.13", 1, mac("00:00:00:00:00:00")),
                vec!["00:00:00:00:00:00"],
                |e| matches!(e, ConfigError::BadAddress { .. }),
            ),
            (
                v4,
                b("10.0.0.12", 1, None),
                vec!["10.0.0.12", "10.0.0.100:80/tcp"],
                |e| matches!(e, ConfigError::BackendExists { .. }),
            ),
        ];
        for (vip, backend, names, check) in cases {
            // The edit refuses it and leaves the config alone...
            let mut c = sample();
            let before = c.clone();
            let e = assert_names(c.add_backend(vip, backend.clone()), &names);
            assert!(check(&e), "{e:?}");
            assert_eq!(c, before);
            // ...and validate catches it when written into the file directly.
            let i = c.vips.iter().position(|v| v.id() == vip).unwrap();
            c.vips[i].backends.push(backend);
            let e = assert_names(c.validate(), &names);
            assert!(check(&e), "{e:?}");
        }
    }

    #[test]
    fn edits() {
        let mut c = sample();
        let v4 = vid("10.0.0.100:80/tcp");
        let b = ip("10.0.0.12");
        c.set_weight(v4, b, 65535).unwrap();
        c.set_drain(v4, b, true).unwrap();
        assert_eq!(
            c.vip(v4).unwrap().backend(b).unwrap(),
            &BackendConfig {
                address: b,
                weight: 65535,
                mac: None,
                drain: true
            }
        );
        let removed = c.del_backend(v4, b).unwrap();
        assert_eq!(removed.address, b);
        assert!(c.vip(v4).unwrap().backend(b).is_none());
        let gone = c.del_vip(v4).unwrap();
        assert_eq!(gone.backends.len(), 1, "its backends go with it");
        assert!(c.vip(v4).is_none());
        assert_eq!(c.backend_count(), 1);
        c.validate().unwrap();
    }

    #[test]
    fn failed_edits_leave_config_unchanged() {
        let v4 = vid("10.0.0.100:80/tcp");
        let nope = vid("10.0.0.200:80/tcp");
        let known = ip("10.0.0.11");
        let unknown = ip("10.0.0.99");
        let edits: Vec<(Edit, Vec<&str>)> = vec![
            (
                Box::new(move |c| c.del_vip(nope).map(drop)),
                vec!["10.0.0.200:80/tcp"],
            ),
            (
                Box::new(move |c| c.add_backend(nope, BackendConfig::new(unknown))),
                vec!["10.0.0.200:80/tcp"],
            ),
            (
                Box::new(move |c| c.del_backend(nope, known).map(drop)),
                vec!["10.0.0.200:80/tcp"],
            ),
            (
                Box::new(move |c| c.del_backend(v4, unknown).map(drop)),
                vec!["10.0.0.99", "10.0.0.100:80/tcp"],
            ),
            (
                Box::new(move |c| c.set_weight(v4, unknown, 5)),
                vec!["10.0.0.99"],
            ),
            (
                Box::new(move |c| c.set_weight(v4, known, 0)),
                vec!["weight 0", "10.0.0.11"],
            ),
            (
                Box::new(move |c| c.set_weight(v4, known, 65536)),
                vec!["65536"],
            ),
            (
                Box::new(move |c| c.set_weight(nope, known, 5)),
                vec!["10.0.0.200:80/tcp"],
            ),
            (
                Box::new(move |c| c.set_drain(v4, unknown, true)),
                vec!["10.0.0.99"],
            ),
            (
                Box::new(move |c| c.set_drain(nope, known, true)),
                vec!["10.0.0.200:80/tcp"],
            ),
        ];
        for (edit, names) in edits {
            let mut c = sample();
            let before = c.clone();
            let e = assert_names(edit(&mut c), &names);
            assert!(
                matches!(
                    e,
                    ConfigError::UnknownVip { .. }
                        | ConfigError::UnknownBackend { .. }
                        | ConfigError::WeightOutOfRange { .. }
                ),
                "{e:?}"
            );
            assert_eq!(c, before);
        }
    }

    #[test]
    fn vip_id_parse() {
        let tcp = Protocol::Tcp;
        let p = |s| VipId::parse(s, tcp).unwrap();
        assert_eq!(
            p("10.0.0.1:80"),
            VipId {
                address: ip("10.0.0.1"),
                port: 80,
                protocol: tcp
            }
        );
        assert_eq!(
            p("[fd00::1]:443"),
            VipId {
                address: ip("fd00::1"),
                port: 443,
                protocol: tcp
            }
        );
        assert_eq!(
            p("10.0.0.1"),
            VipId {
                address: ip("10.0.0.1"),
                port: 0,
                protocol: tcp
            }
        );
        assert_eq!(
            p("fd00::1"),
            VipId {
                address: ip("fd00::1"),
                port: 0,
                protocol: tcp
            }
        );
        assert_eq!(
            p("[fd00::1]"),
            VipId {
                address: ip("fd00::1"),
                port: 0,
                protocol: tcp
            }
        );
        for bad in [
            "",
            "garbage",
            "10.0.0.1:",
            "10.0.0.1:99999",
            "10.0.0.256:80",
            "fd00::1:80:x",
            "[10.0.0.1]",
            "[fd00::1]:",
        ] {
            let e = VipId::parse(bad, tcp).unwrap_err();
            assert!(matches!(e, ConfigError::BadAddress { .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains(&format!("address {bad}:")), "{e}");
        }
        // Display and FromStr agree.
        for s in ["10.0.0.100:80/tcp", "[fd00::1]:80/udp", "10.0.0.1:0/udp"] {
            assert_eq!(vid(s).to_string(), s);
        }
        assert_eq!(
            vid("10.0.0.1/UDP"),
            VipId {
                address: ip("10.0.0.1"),
                port: 0,
                protocol: Protocol::Udp
            }
        );
        assert!(matches!(
            "10.0.0.1:80/icmp".parse::<VipId>(),
            Err(ConfigError::BadProtocol { .. })
        ));
        assert!(matches!(
            "10.0.0.1:80".parse::<VipId>(),
            Err(ConfigError::BadAddress { .. })
        ));
    }

    #[test]
    fn protocol() {
        assert_eq!("TCP".parse::<Protocol>().unwrap(), Protocol::Tcp);
        assert_eq!("Udp".parse::<Protocol>().unwrap(), Protocol::Udp);
        let e = "sctp".parse::<Protocol>().unwrap_err();
        assert!(e.to_string().contains("\"sctp\""), "{e}");
        assert_eq!((Protocol::Tcp.number(), Protocol::Udp.number()), (6, 17));
        assert_eq!(
            (Protocol::Tcp.to_string(), Protocol::Udp.to_string()),
            ("tcp".into(), "udp".into())
        );
    }

    #[test]
    fn mac_addr() {
        let m: MacAddr = "02:00:00:00:00:11".parse().unwrap();
        assert_eq!(m, MacAddr([2, 0, 0, 0, 0, 0x11]));
        assert_eq!(
            "AA-BB-CC-DD-EE-FF".parse::<MacAddr>().unwrap().to_string(),
            "aa:bb:cc:dd:ee:ff"
        );
        assert_eq!(
            "2:0:0:0:0:a".parse::<MacAddr>().unwrap(),
            MacAddr([2, 0, 0, 0, 0, 10])
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:11:22",
            "02:00:00:00:00:1g",
            "02-00:00:00:00:11",
            "002:00:00:00:00:11",
            "02::00:00:00:11",
            "+2:00:00:00:00:11",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(e.to_string().contains(&format!("address {bad}:")), "{e}");
        }
    }

    #[test]
    fn load_and_save() {
        let dir = std::env::temp_dir().join(format!("lbx-config-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub/lbx.toml");

        let e = Config::load(&path).unwrap_err();
        assert!(
            matches!(&e, ConfigError::NotFound { path: p } if p == &path),
            "{e:?}"
        );
        assert!(e.to_string().contains("sub/lbx.toml"), "{e}");

        let c = sample();
        c.save(&path).unwrap(); // creates sub/
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Config::load(&path).unwrap(), c);

        // Overwrite; no temporary files left behind.
        let mut c2 = c.clone();
        c2.seed = 9;
        c2.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), c2);
        let names: Vec<_> = fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["lbx.toml"]);

        // Parse errors carry the path; validation errors come through load too.
        fs::write(&path, "seed = \"x\"\n").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Parse { path: Some(p), line: Some(1), .. } if p == &path),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("{}: line 1, column 8: ", path.display())),
            "{e}"
        );
        fs::write(&path, "table_size = 1000\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::TableSizeNotPrime { size: 1000 })
        ));

        // A directory in the way: an I/O error naming the path, nothing half-written.
        let e = Config::default().save(&dir).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        let e = Config::load(&dir).unwrap_err();
        assert!(matches!(e, ConfigError::Io { action: "read", .. }), "{e:?}");

        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_columns() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
    }

    #[test]
    fn health_checks() {
        let text = r#"
[[vip]]
address = "10.0.0.100"
port = 80
protocol = "tcp"
[vip.health]
kind = "http"
path = "/healthz"
interval_ms = 500
timeout_ms = 200
rise = 3
"#;
        let c = Config::from_toml(text).expect("parses");
        let h = c.vips[0].health.as_ref().expect("health");
        assert_eq!(
            (h.kind, h.path.as_str(), h.rise, h.fall),
            (CheckKind::Http, "/healthz", 3, 2)
        );
        assert_eq!(Config::from_toml(&c.to_toml()).expect("round trip"), c);

        let vip = c.vips[0].id();
        let mut all_ports = vip;
        all_ports.port = 0;
        let cases: [(VipId, HealthCheck, &str); 6] = [
            (all_ports, HealthCheck::default(), "needs `port`"),
            (
                vip,
                HealthCheck {
                    interval_ms: 50,
                    ..Default::default()
                },
                "interval_ms 50",
            ),
            (
                vip,
                HealthCheck {
                    timeout_ms: 2000,
                    ..Default::default()
                },
                "timeout_ms 2000",
            ),
            (
                vip,
                HealthCheck {
                    fall: 0,
                    ..Default::default()
                },
                "fall 0",
            ),
            (
                vip,
                HealthCheck {
                    kind: CheckKind::Http,
                    path: "x".into(),
                    ..Default::default()
                },
                "path",
            ),
            (
                vip,
                HealthCheck {
                    kind: CheckKind::Http,
                    expect_status: 999,
                    ..Default::default()
                },
                "999",
            ),
        ];
        for (id, h, words) in cases {
            let e = h.validate(id).expect_err(words);
            assert!(matches!(e, ConfigError::BadHealthCheck { .. }), "{e:?}");
            assert!(e.to_string().contains(words), "{e} should name {words}");
        }
        let mut c2 = c.clone();
        let before = c2.clone();
        assert!(
            c2.set_health(
                vip,
                Some(HealthCheck {
                    rise: 0,
                    ..Default::default()
                })
            )
            .is_err()
        );
        assert_eq!(c2, before, "a refused health check changes nothing");
        c2.set_health(vip, None).expect("remove");
        assert!(c2.vips[0].health.is_none());
    }

    #[test]
    fn adaptive_needs_health_and_sane_limits() {
        let mut c = Config::default();
        let vip = VipId::parse("10.0.0.1:80", Protocol::Tcp).unwrap();
        c.add_vip(vip).unwrap();
        let before = c.clone();
        let e = c.set_adaptive(vip, Some(Adaptive::default())).unwrap_err();
        assert!(e.to_string().contains("health check"), "{e}");
        assert_eq!(c, before);
        c.set_health(vip, Some(HealthCheck::default())).unwrap();
        for bad in [
            Adaptive {
                min_weight: 0,
                ..Default::default()
            },
            Adaptive {
                min_weight: 10,
                max_weight: 5,
                ..Default::default()
            },
            Adaptive {
                churn_budget_percent: 0,
                ..Default::default()
            },
            Adaptive {
                hysteresis_percent: 101,
                ..Default::default()
            },
        ] {
            let before = c.clone();
            let e = c.set_adaptive(vip, Some(bad.clone())).unwrap_err();
            assert!(
                matches!(e, ConfigError::BadAdaptive { .. }),
                "{bad:?}: {e:?}"
            );
            assert_eq!(c, before);
        }
        c.set_adaptive(vip, Some(Adaptive::default())).unwrap();
        c.validate().unwrap();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c, "round trip");
        let e = c.set_health(vip, None).unwrap_err();
        assert!(e.to_string().contains("--off"), "{e}");
    }
}
