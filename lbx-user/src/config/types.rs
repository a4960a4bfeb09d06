//! The configuration's types: what the operator writes in TOML and the CLI edits, with
//! their defaults.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lbx_common::DEFAULT_RING_SIZE;
use serde::{Deserialize, Serialize};

use lbx_common::VipKey;

use super::{DEFAULT_WEIGHT, MacAddr, Prefix, Protocol, VipId, values::echo_key};

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
    /// Whether the balancer answers echo requests (ping) to VIP addresses itself.
    #[serde(skip_serializing_if = "is_true")]
    pub icmp_echo: bool,
    #[serde(rename = "vip", skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<VipConfig>,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Config {
    /// The VIP addresses whose echo requests the balancer answers, each once, in the
    /// order of their first VIP.
    pub fn echo_addresses(&self) -> Vec<IpAddr> {
        if !self.icmp_echo {
            return Vec::new();
        }
        let mut seen = std::collections::BTreeSet::new();
        self.vips
            .iter()
            .map(|v| v.address)
            .filter(|a| seen.insert(*a))
            .collect()
    }

    /// Every key of the data plane's VIP table: the VIPs', then the echo entries'.
    pub fn table_keys(&self) -> Vec<VipKey> {
        let vips = self.vips.iter().map(|v| v.id().key());
        let echo = self.echo_addresses().into_iter().map(echo_key);
        vips.chain(echo).collect()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            table_size: DEFAULT_RING_SIZE,
            mtu: None,
            encap: Encap::default(),
            icmp_echo: true,
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

/// One virtual service: traffic to `address:port/protocol` is spread over `backends`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub address: IpAddr,
    /// 1 to 65535, or [`ALL_PORTS`](super::ALL_PORTS) for every port of `address` and
    /// `protocol` (`port = "*"` in the file).
    #[serde(with = "super::endpoint::port_field")]
    pub port: u16,
    pub protocol: Protocol,
    /// This VIP's own Maglev table size (a prime, at least `MIN_SLOTS_PER_BACKEND` per
    /// backend); none: the configuration's `table_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
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

impl VipConfig {
    pub fn id(&self) -> VipId {
        VipId {
            address: self.address,
            port: self.port,
            protocol: self.protocol,
        }
    }

    /// The Maglev table size of this VIP's ring: its own, else `default` (the
    /// configuration's `table_size`).
    pub fn ring_size(&self, default: u32) -> u32 {
        self.table_size.unwrap_or(default)
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

impl Config {
    pub fn vip(&self, id: VipId) -> Option<&VipConfig> {
        self.vips.iter().find(|v| v.id() == id)
    }

    /// Backends across all VIPs: each takes one slot of the backend table.
    pub fn backend_count(&self) -> usize {
        self.vips.iter().map(|v| v.backends.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::*;

    #[test]
    fn defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        let c = Config::default();
        assert_eq!((c.seed, c.table_size, c.mtu), (0, 65537, None));
        assert_eq!(c.encap.source_v4.to_string(), "172.16.0.0/16");
        assert_eq!(c.encap.source_v6.to_string(), "100::/64");
        let c = Config::from_toml("[[vip]]\naddress = \"10.0.0.1\"\nport = \"*\"\nprotocol = \"udp\"\n[[vip.backend]]\naddress = \"10.0.0.2\"\n").unwrap();
        assert_eq!(c.vips[0].backends[0], BackendConfig::new(ip("10.0.0.2")));
        assert_eq!(c.vips[0].port, super::super::ALL_PORTS);
    }

    #[test]
    fn echo_entries_follow_the_vip_addresses() {
        let toml = "[[vip]]\naddress = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\n\
                    [[vip]]\naddress = \"10.0.0.1\"\nport = 53\nprotocol = \"udp\"\n\
                    [[vip]]\naddress = \"2001:db8::1\"\nport = 80\nprotocol = \"tcp\"\n";
        let c = Config::from_toml(toml).unwrap();
        assert!(c.icmp_echo);
        assert_eq!(c.echo_addresses(), [ip("10.0.0.1"), ip("2001:db8::1")]);
        let keys = c.table_keys();
        assert_eq!(keys.len(), 5);
        assert_eq!(
            (keys[3].proto, keys[3].port_be, keys[4].proto),
            (lbx_common::PROTO_ICMP, 0, lbx_common::PROTO_ICMPV6)
        );
        // The default is not written back; turning it off is.
        assert!(!c.to_toml().contains("icmp_echo"));
        let off = Config::from_toml(&format!("icmp_echo = false\n{toml}")).unwrap();
        assert!(off.echo_addresses().is_empty());
        assert_eq!(off.table_keys().len(), 3);
        assert!(off.to_toml().contains("icmp_echo = false"));
    }

    #[test]
    fn vip_ports_in_the_file() {
        let vip = |port: &str| {
            Config::from_toml(&format!(
                "[[vip]]\naddress = \"10.0.0.1\"\nport = {port}\nprotocol = \"tcp\"\n"
            ))
        };
        assert_eq!(vip("80").unwrap().vips[0].port, 80);
        assert_eq!(vip("\"443\"").unwrap().vips[0].port, 443);
        for (bad, words) in [
            ("0", &["port 0", "1-65535", "\"*\""][..]),
            ("70000", &["70000", "1-65535"]),
            ("-1", &["-1", "1-65535"]),
            ("\"any\"", &["any", "1-65535"]),
        ] {
            let e = vip(bad).unwrap_err().to_string();
            for w in words {
                assert!(e.contains(w), "port = {bad}: {e:?} should mention {w:?}");
            }
        }
        // Every port is written back as "*", and reads back as itself.
        let c = vip("\"*\"").unwrap();
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("port = \"*\""), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), c);
    }
}
