//! The one place that decides whether a configuration is valid: the whole of it before
//! the agent publishes it, and the single checks the change operations reuse.

use std::collections::HashSet;
use std::net::IpAddr;

use lbx_common::{MAX_BACKENDS, MAX_VIPS, vips};

use super::{
    Adaptive, BackendConfig, CheckKind, Config, ConfigError, HealthCheck, MAX_MTU, MAX_TABLE_SIZE,
    MAX_WEIGHT, MIN_MTU_V4, MIN_MTU_V6, MIN_SLOTS_PER_BACKEND, MIN_TABLE_SIZE, MIN_WEIGHT, MacAddr,
    Prefix, VipId,
};
use crate::maglev::is_prime;

impl Config {
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
            if let Some(own) = v.table_size {
                check_own_table_size(vip, own)?;
            }
            check_table_fits(vip, v.table_size, size, v.backends.len())?;
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
        if !vips_fit(self) {
            return Err(ConfigError::VipTableFull {
                count: self.vips.len(),
                echo: self.echo_addresses().len(),
                slots: lbx_common::VIP_TABLE_SLOTS,
                probes: lbx_common::VIP_PROBES,
                tries: vips::SALT_TRIES,
            });
        }
        Ok(())
    }
}

/// A VIP's own table size: a prime in the accepted range.
pub(super) fn check_own_table_size(vip: VipId, size: u32) -> Result<(), ConfigError> {
    if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&size) {
        return Err(ConfigError::VipTableSizeOutOfRange { vip, size });
    }
    if !is_prime(size) {
        return Err(ConfigError::VipTableSizeNotPrime { vip, size });
    }
    Ok(())
}

/// Whether `count` backends fit the VIP's ring: with the configuration's table size, no
/// more backends than slots (as always); with a VIP's own, smaller one, at least
/// `MIN_SLOTS_PER_BACKEND` slots per backend, so each backend's share of the ring stays
/// within a tenth of its weight's.
pub(super) fn check_table_fits(
    vip: VipId,
    own: Option<u32>,
    default: u32,
    count: usize,
) -> Result<(), ConfigError> {
    match own {
        Some(size) if count as u64 * u64::from(MIN_SLOTS_PER_BACKEND) > u64::from(size) => {
            Err(ConfigError::VipTableTooSmall {
                vip,
                count,
                table_size: size,
            })
        }
        None if count > default as usize => Err(ConfigError::TableTooSmall {
            vip,
            count,
            table_size: default,
        }),
        _ => Ok(()),
    }
}

impl Adaptive {
    pub(super) fn validate(
        &self,
        vip: VipId,
        health: Option<&HealthCheck>,
    ) -> Result<(), ConfigError> {
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

impl HealthCheck {
    pub(super) fn validate(&self, vip: VipId) -> Result<(), ConfigError> {
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

/// Refuses addresses no packet can be balanced to or from. `what` names the role for
/// the message ("a VIP", "a backend of VIP ...").
pub(super) fn check_address(addr: IpAddr, what: &str) -> Result<(), ConfigError> {
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

pub(super) fn check_weight(vip: VipId, backend: IpAddr, weight: u32) -> Result<(), ConfigError> {
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
pub(super) fn check_backend(vip: VipId, b: &BackendConfig) -> Result<(), ConfigError> {
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

/// Whether the data plane's VIP table can hold all of `config`'s VIPs (distinct).
fn vips_fit(config: &Config) -> bool {
    let keys = config.table_keys();
    vips::layout(&keys, &mut vec![0; keys.len()]).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::*;

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
            port: 5000,
            protocol: Protocol::Tcp,
        };
        let e = assert_names(c.add_vip(extra), &["1025", "1024", "MAX_VIPS"]);
        assert!(matches!(
            e,
            ConfigError::TooManyVips {
                count: 1025,
                max: 1024
            }
        ));
        assert_eq!(c, before);
        c.vips.push(VipConfig {
            address: extra.address,
            port: extra.port,
            protocol: extra.protocol,
            table_size: None,
            health: None,
            adaptive: None,
            backends: vec![],
        });
        let e = assert_names(c.validate(), &["1025", "1024"]);
        assert!(matches!(
            e,
            ConfigError::TooManyVips {
                count: 1025,
                max: 1024
            }
        ));
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
            &["16385", "16384"],
        );
        assert!(matches!(
            e,
            ConfigError::TooManyBackends {
                count: 16385,
                max: 16384
            }
        ));
        assert_eq!(c, before);
        c.vips[0].backends.push(BackendConfig::new(ip("10.9.9.9")));
        let e = assert_names(c.validate(), &["16385", "16384"]);
        assert!(matches!(
            e,
            ConfigError::TooManyBackends {
                count: 16385,
                max: 16384
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
    fn a_vip_table_size_is_a_prime_with_ten_slots_per_backend() {
        let text =
            "[[vip]]\naddress = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\ntable_size = 101\n";
        let mut c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
        let vip = c.vips[0].id();
        assert_eq!(c.vips[0].ring_size(c.table_size), 101);
        for b in 0..10u32 {
            c.add_backend(
                vip,
                BackendConfig::new(IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + b))),
            )
            .unwrap();
        }
        let before = c.clone();
        // 11 backends need 110 slots: refused, with the VIP, the counts and the rule named.
        let e = assert_names(
            c.add_backend(vip, BackendConfig::new(ip("10.9.9.9"))),
            &[
                "10.0.0.1:80/tcp",
                "101",
                "11 backends",
                "10 slots per backend",
            ],
        );
        assert!(matches!(
            e,
            ConfigError::VipTableTooSmall {
                count: 11,
                table_size: 101,
                ..
            }
        ));
        assert_eq!(c, before);
        c.vips[0].table_size = Some(102);
        let e = assert_names(c.validate(), &["10.0.0.1:80/tcp", "102", "prime"]);
        assert!(matches!(
            e,
            ConfigError::VipTableSizeNotPrime { size: 102, .. }
        ));
        c.vips[0].table_size = Some(97);
        let e = assert_names(c.validate(), &["10.0.0.1:80/tcp", "97", "out of range"]);
        assert!(matches!(
            e,
            ConfigError::VipTableSizeOutOfRange { size: 97, .. }
        ));
        // Without its own size the configuration's applies, with the rule as before.
        c.vips[0].table_size = None;
        c.validate().unwrap();
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
                table_size: None,
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
