//! The declarative configuration: what the operator writes, what the agent serves, and
//! what the agent writes back after a CLI change.
//!
//! ```toml
//! seed = 0                 # flow-hash and Maglev seed; same on every node behind one ECMP group
//! table_size = 65537       # Maglev table size per VIP, a prime
//! # mtu = 1500             # optional; default: the interface's MTU
//! icmp_echo = true         # answer ping to VIP addresses from XDP
//! [encap]
//! source_v4 = "172.16.0.0/16"   # outer IPv4 source prefix; low bits vary per flow
//! source_v6 = "100::/64"        # outer IPv6 source prefix
//!
//! [[vip]]
//! address = "10.0.0.100"
//! port = 80                # 1..=65535, or "*" for every port of the address
//! protocol = "tcp"         # tcp | udp
//!
//! [[vip.backend]]
//! address = "10.0.0.11"
//! weight = 100             # 1..=65535, default 100
//! mac = "02:00:00:00:00:11"    # optional next-hop MAC; resolved from the neighbour table when absent
//! drain = false                # optional, omitted when false
//! ```
//!
//! A node's own file may also have a `[cluster]` table, its settings for cluster mode: it
//! is the node's alone, kept apart as [`Local`] and never part of a shared document.
//!
//! Every edit operation checks what it can and leaves the config unchanged when it fails;
//! [`Config::validate`] checks the whole thing and is what the agent relies on before
//! publishing a config.

mod change;
pub mod diff;
pub mod endpoint;
mod error;
mod file;
#[cfg(test)]
mod fixtures;
mod types;
mod validate;
mod values;

pub use endpoint::{ALL_PORTS, Endpoint, EndpointError};
pub use error::ConfigError;
pub use file::{LOCAL_TABLE, Local};
pub use types::{Adaptive, BackendConfig, CheckKind, Config, Encap, HealthCheck, VipConfig};
pub use values::{MacAddr, Prefix, Protocol, VipId};

/// Smallest table size accepted: below this a handful of backends already share it badly.
pub const MIN_TABLE_SIZE: u32 = 101;
/// Largest table size accepted (16-bit entries: 2 MB a ring, twice for two generations).
pub const MAX_TABLE_SIZE: u32 = 1_000_003;
/// Slots per backend a VIP's own (smaller) table size must keep at least.
pub const MIN_SLOTS_PER_BACKEND: u32 = 10;
pub const MIN_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 65535;
/// Weight of a backend whose `weight` is left out.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Smallest MTU with IPv4 VIPs only (RFC 791's minimum datagram every host accepts).
pub const MIN_MTU_V4: u32 = 576;
/// Smallest MTU once any VIP is IPv6 (RFC 8200's minimum link MTU).
pub const MIN_MTU_V6: u32 = 1280;
pub const MAX_MTU: u32 = 65535;
