//! The configuration's values with a text form: IP prefixes, protocols, MAC addresses and
//! VIP identities, parsed and displayed the same way in TOML, on the command line and in
//! the control API.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use lbx_common::VipKey;
use serde::{Deserialize, Serialize};

use super::{
    ConfigError,
    endpoint::{ALL_PORTS, Endpoint},
};
use crate::addr;

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

/// Identity of a VIP: address, port ([`ALL_PORTS`] for every port), protocol. Displayed
/// `10.0.0.100:80/tcp`, `[fd00::1]:80/udp`, `10.0.0.1:*/tcp`; [`FromStr`] reads that form
/// back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipId {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl VipId {
    /// Reads the VIP's address and port in the one endpoint syntax ([`Endpoint::parse`]):
    /// `10.0.0.1:80`, `[fd00::1]:443`, `10.0.0.1:*` for every port.
    pub fn parse(addr_port: &str, protocol: Protocol) -> Result<VipId, ConfigError> {
        Ok(VipId::new(Endpoint::parse(addr_port)?, protocol))
    }

    pub fn new(endpoint: Endpoint, protocol: Protocol) -> VipId {
        VipId {
            address: endpoint.address,
            port: endpoint.port,
            protocol,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            address: self.address,
            port: self.port,
        }
    }

    pub fn all_ports(&self) -> bool {
        self.port == ALL_PORTS
    }

    /// The VIP's key in the data plane's VIP table.
    /// The VIP a data-plane key names, if its protocol is one lbx balances.
    pub fn from_key(key: &VipKey) -> Option<VipId> {
        let protocol = match key.proto {
            lbx_common::PROTO_TCP => Protocol::Tcp,
            lbx_common::PROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        Some(VipId {
            address: addr::from_words(key.addr, key.family),
            port: u16::from_be(key.port_be),
            protocol,
        })
    }

    pub fn key(&self) -> VipKey {
        VipKey {
            addr: addr::to_words(self.address),
            port_be: self.port.to_be(),
            proto: self.protocol.number(),
            family: addr::family(self.address),
        }
    }
}

/// The VIP table key of a VIP address's echo entry (`VIP_F_ECHO`): port 0 and the
/// address family's ICMP.
pub fn echo_key(address: IpAddr) -> VipKey {
    let proto = if address.is_ipv4() {
        lbx_common::PROTO_ICMP
    } else {
        lbx_common::PROTO_ICMPV6
    };
    VipKey {
        addr: addr::to_words(address),
        port_be: 0,
        proto,
        family: addr::family(address),
    }
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.endpoint(), self.protocol)
    }
}

impl FromStr for VipId {
    type Err = ConfigError;

    /// `address:port/protocol`, the [`Display`](fmt::Display) form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, proto) = s.rsplit_once('/').ok_or_else(|| ConfigError::BadAddress {
            value: s.to_owned(),
            reason: "not a VIP: write it as address:port/protocol, such as 10.0.0.100:80/tcp"
                .to_owned(),
        })?;
        VipId::parse(addr, proto.parse()?)
    }
}

// VIPs travel in their display form, "10.0.0.100:80/tcp".
impl Serialize for VipId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VipId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::*;

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
            p("10.0.0.1:*"),
            VipId {
                address: ip("10.0.0.1"),
                port: ALL_PORTS,
                protocol: tcp
            }
        );
        for bad in [
            "",
            "garbage",
            "10.0.0.1",
            "fd00::1",
            "[fd00::1]",
            "10.0.0.1:",
            "10.0.0.1:0",
            "10.0.0.1:99999",
            "10.0.0.256:80",
            "fd00::1:80:x",
            "[10.0.0.1]",
            "[fd00::1]:",
        ] {
            let e = VipId::parse(bad, tcp).unwrap_err();
            assert!(matches!(e, ConfigError::Endpoint(_)), "{bad}: {e:?}");
        }
        // Display and FromStr agree.
        for s in ["10.0.0.100:80/tcp", "[fd00::1]:80/udp", "10.0.0.1:*/udp"] {
            assert_eq!(vid(s).to_string(), s);
        }
        assert_eq!(
            vid("10.0.0.1:*/UDP"),
            VipId {
                address: ip("10.0.0.1"),
                port: ALL_PORTS,
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
}
