//! Shared by the configuration's unit tests: an example file and a sample configuration,
//! and everything the tests name.

pub use std::net::{IpAddr, Ipv4Addr};

pub use super::*;

pub const EXAMPLE: &str = r#"
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

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn vid(s: &str) -> VipId {
    s.parse().unwrap()
}

pub type Check = fn(&ConfigError) -> bool;
pub type Edit = Box<dyn Fn(&mut Config) -> Result<(), ConfigError>>;

/// A valid config with an IPv4 and an IPv6 VIP.
pub fn sample() -> Config {
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
pub fn assert_names(r: Result<(), ConfigError>, names: &[&str]) -> ConfigError {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    for n in names {
        assert!(msg.contains(n), "message {msg:?} does not name {n:?}");
    }
    assert_eq!(msg, msg.trim(), "no stray whitespace");
    e
}
