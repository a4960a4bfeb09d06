//! The one text form of a service's address and port, read the same way by every command,
//! the control API and the configuration file: `10.0.0.1:80`, `[fd00::1]:443`, and `*` for
//! every port (`10.0.0.1:*`, `[fd00::1]:*`).
//!
//! A bare address is refused. For IPv6 its last group could be a port (`fd00::1:80` is an
//! address of its own), and for either family a VIP on every port takes traffic meant for
//! other services on the address, so every port must be asked for by name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The port number that stands for every port of an address, in the data plane's VIP key.
pub const ALL_PORTS: u16 = 0;

/// How a valid port is described in every message about one.
const PORT_RANGE: &str = "a port is 1-65535, or \"*\" for every port";

/// An address and a port, or an address and every port ([`ALL_PORTS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "\"{text}\" has no port: write {address}:PORT for one port, or {address}:* (or --all-ports) for every port"
    )]
    NoPort { text: String, address: String },
    #[error(
        "\"{text}\" is an IPv6 address without brackets, so its last group cannot be told from a port: write [{address}]:PORT, or [{address}]:* for every port{alternative}"
    )]
    Unbracketed {
        text: String,
        address: Ipv6Addr,
        /// The reading that takes the last group as the port, when there is one.
        alternative: String,
    },
    #[error("port {text} is out of range: {PORT_RANGE}")]
    PortOutOfRange { text: String },
    #[error("port \"{text}\" is not a number: {PORT_RANGE}")]
    PortNotANumber { text: String },
    /// Where one port is meant (a flow, a listening socket), "*" is no choice.
    #[error("port {text} is out of range: a port is 1-65535")]
    OnePortOutOfRange { text: String },
    #[error("port \"{text}\" is not a number: a port is 1-65535")]
    OnePortNotANumber { text: String },
    #[error("{what} \"{text}\" names every port: a flow goes to one port, such as {example}")]
    NotOnePort {
        what: &'static str,
        text: String,
        example: String,
    },
    #[error(
        "\"{text}\" names port {port}, but --all-ports asks for every port: give one of the two"
    )]
    PortAndAllPorts { text: String, port: u16 },
    #[error(
        "invalid address \"{text}\": {detail}; write 10.0.0.1:80, or [fd00::1]:443 for IPv6 (\"*\" for every port)"
    )]
    Malformed { text: String, detail: String },
    #[error(
        "invalid address \"{text}\": {detail}; write the address alone, such as 10.0.0.11 or fd00::11"
    )]
    BadHost { text: String, detail: String },
}

impl Endpoint {
    pub fn all_ports(&self) -> bool {
        self.port == ALL_PORTS
    }

    /// Reads `ADDRESS:PORT` or `ADDRESS:*`, IPv6 in brackets.
    pub fn parse(text: &str) -> Result<Endpoint, EndpointError> {
        let s = text.trim();
        let malformed = |detail: String| EndpointError::Malformed {
            text: text.to_owned(),
            detail,
        };
        if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| malformed("\"[\" without \"]\"".into()))?;
            let address = match inner.parse::<IpAddr>() {
                Ok(IpAddr::V6(a)) => a,
                Ok(IpAddr::V4(a)) => {
                    return Err(malformed(format!(
                        "brackets are for IPv6 addresses; write {a} without them"
                    )));
                }
                Err(_) => return Err(malformed(format!("{inner} is not an IPv6 address"))),
            };
            return match after.strip_prefix(':') {
                Some(port) => Ok(Endpoint {
                    address: IpAddr::V6(address),
                    port: parse_port(port)?,
                }),
                None if after.is_empty() => Err(EndpointError::NoPort {
                    text: text.to_owned(),
                    address: format!("[{address}]"),
                }),
                None => Err(malformed(format!("\"{after}\" after \"]\""))),
            };
        }
        if let Ok(address) = s.parse::<Ipv6Addr>() {
            return Err(unbracketed(text, address));
        }
        if let Ok(address) = s.parse::<Ipv4Addr>() {
            return Err(EndpointError::NoPort {
                text: text.to_owned(),
                address: address.to_string(),
            });
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(malformed(format!("{s} is not an IP address")));
        };
        if let Ok(address) = host.parse::<Ipv6Addr>() {
            // `fd00::1:*` or `fd00::1:99999`: an IPv6 address and something that is no group.
            return Err(EndpointError::Unbracketed {
                text: text.to_owned(),
                address,
                alternative: String::new(),
            });
        }
        match host.parse::<Ipv4Addr>() {
            Ok(address) => Ok(Endpoint {
                address: IpAddr::V4(address),
                port: parse_port(port)?,
            }),
            Err(_) => Err(malformed(format!("{host} is not an IPv4 address"))),
        }
    }

    /// Reads a VIP as the command line names it: an endpoint, or with `--all-ports`
    /// (`all_ports`) an address alone (`10.0.0.1`, `fd00::1`, `[fd00::1]`) or `ADDRESS:*`.
    pub fn parse_vip(text: &str, all_ports: bool) -> Result<Endpoint, EndpointError> {
        if !all_ports {
            return Endpoint::parse(text);
        }
        match Endpoint::parse(text) {
            Ok(e) if e.all_ports() => Ok(e),
            Ok(e) => Err(EndpointError::PortAndAllPorts {
                text: text.to_owned(),
                port: e.port,
            }),
            Err(_) => parse_host(text).map(|address| Endpoint {
                address,
                port: ALL_PORTS,
            }),
        }
    }

    /// Reads an endpoint with one port (a flow's source or destination); `what` names it in
    /// the message when the text says every port.
    pub fn parse_one_port(text: &str, what: &'static str) -> Result<Endpoint, EndpointError> {
        let e = Endpoint::parse(text).map_err(|e| match e {
            EndpointError::PortOutOfRange { text } => EndpointError::OnePortOutOfRange { text },
            EndpointError::PortNotANumber { text } => EndpointError::OnePortNotANumber { text },
            other => other,
        })?;
        if e.all_ports() {
            return Err(EndpointError::NotOnePort {
                what,
                text: text.to_owned(),
                example: Endpoint { port: 80, ..e }.to_string(),
            });
        }
        Ok(e)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:")?,
            IpAddr::V6(a) => write!(f, "[{a}]:")?,
        }
        if self.all_ports() {
            f.write_str("*")
        } else {
            write!(f, "{}", self.port)
        }
    }
}

fn unbracketed(text: &str, address: Ipv6Addr) -> EndpointError {
    let s = text.trim();
    // The reading an operator most likely meant: the last group as the port.
    let alternative = s
        .rsplit_once(':')
        .and_then(|(head, tail)| {
            let head = head.parse::<Ipv6Addr>().ok()?;
            let port = parse_port(tail).ok()?;
            Some(format!(", or [{head}]:{port} if {port} is the port"))
        })
        .unwrap_or_default();
    EndpointError::Unbracketed {
        text: text.to_owned(),
        address,
        alternative,
    }
}

/// Reads a port: `*` (every port) or a number from 1 to 65535.
pub fn parse_port(text: &str) -> Result<u16, EndpointError> {
    if text == "*" {
        return Ok(ALL_PORTS);
    }
    let n = whole_number(text).ok_or_else(|| EndpointError::PortNotANumber {
        text: text.to_owned(),
    })?;
    port_number(n).map_err(|_| EndpointError::PortOutOfRange {
        text: text.to_owned(),
    })
}

/// Digits only (no sign, so "-1" and "+1" are refused like "abc"); too many digits read
/// as `u64::MAX`, which every range refuses.
pub fn whole_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(u64::MAX))
}

/// A port given as a number (the configuration file's `port = 80`): 1 to 65535.
pub fn port_number(n: u64) -> Result<u16, EndpointError> {
    match u16::try_from(n) {
        Ok(p) if p != ALL_PORTS => Ok(p),
        _ => Err(EndpointError::PortOutOfRange {
            text: n.to_string(),
        }),
    }
}

/// A VIP's `port` in the configuration file: a number from 1 to 65535, or `"*"` for every
/// port, read by the same rules as the command line's.
pub mod port_field {
    use std::fmt;

    use serde::{Deserializer, Serializer, de};

    use super::{ALL_PORTS, parse_port, port_number};

    pub fn serialize<S: Serializer>(port: &u16, s: S) -> Result<S::Ok, S::Error> {
        if *port == ALL_PORTS {
            s.serialize_str("*")
        } else {
            s.serialize_u16(*port)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        d.deserialize_any(PortVisitor)
    }

    struct PortVisitor;

    impl de::Visitor<'_> for PortVisitor {
        type Value = u16;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port from 1 to 65535, or \"*\" for every port")
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<u16, E> {
            port_number(n).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<u16, E> {
            match u64::try_from(n) {
                Ok(n) => self.visit_u64(n),
                Err(_) => parse_port(&n.to_string()).map_err(E::custom),
            }
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<u16, E> {
            parse_port(s).map_err(E::custom)
        }
    }
}

/// Reads a host address without a port (a backend's): `10.0.0.11`, `fd00::11` or
/// `[fd00::11]`.
pub fn parse_host(text: &str) -> Result<IpAddr, EndpointError> {
    let s = text.trim();
    let bad = |detail: String| EndpointError::BadHost {
        text: text.to_owned(),
        detail,
    };
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| bad(format!("{inner} is not an IPv6 address")));
    }
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(a);
    }
    if let Ok(e) = Endpoint::parse(s) {
        return Err(bad(format!(
            "a backend has no port of its own (it serves the VIP's port), but this names port {}",
            if e.all_ports() {
                "*".to_owned()
            } else {
                e.port.to_string()
            }
        )));
    }
    Err(bad(format!("{s} is not an IPv4 or IPv6 address")))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ep(address: &str, port: u16) -> Endpoint {
        Endpoint {
            address: address.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn the_forms_that_are_accepted() {
        let cases = [
            ("10.0.0.1:80", ep("10.0.0.1", 80)),
            ("10.0.0.1:*", ep("10.0.0.1", ALL_PORTS)),
            ("[fd00::1]:443", ep("fd00::1", 443)),
            ("[fd00::1]:*", ep("fd00::1", ALL_PORTS)),
            ("[::ffff:10.0.0.1]:53", ep("::ffff:10.0.0.1", 53)),
            (" 10.0.0.1:65535 ", ep("10.0.0.1", 65535)),
        ];
        for (text, want) in cases {
            assert_eq!(Endpoint::parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refusals_name_the_forms_that_work() {
        let cases: [(&str, &[&str]); 12] = [
            (
                "10.0.0.1",
                &["no port", "10.0.0.1:PORT", "10.0.0.1:*", "--all-ports"],
            ),
            ("[fd00::1]", &["no port", "[fd00::1]:PORT", "[fd00::1]:*"]),
            (
                "fd91:100::1:80",
                &[
                    "brackets",
                    "[fd91:100::1:80]:PORT",
                    "[fd91:100::1]:80 if 80",
                ],
            ),
            ("fd00::1", &["brackets", "[fd00::1]:PORT", "[fd00::1]:*"]),
            ("fd00::1:*", &["brackets", "[fd00::1]:PORT"]),
            ("10.0.0.1:70000", &["70000", "1-65535"]),
            ("10.0.0.1:0", &["port 0", "1-65535", "\"*\""]),
            ("[fd00::1]:99999", &["99999", "1-65535"]),
            ("10.0.0.1:-1", &["\"-1\"", "1-65535"]),
            ("10.0.0.999:80", &["invalid", "10.0.0.999"]),
            ("[10.0.0.1]:80", &["brackets are for IPv6"]),
            ("", &["invalid"]),
        ];
        for (text, words) in cases {
            let e = Endpoint::parse(text).expect_err(text).to_string();
            for w in words {
                assert!(e.contains(w), "{text:?}: {e:?} should mention {w:?}");
            }
        }
    }

    #[test]
    fn a_flow_needs_one_port() {
        let e = Endpoint::parse_one_port("10.0.0.1:*", "the destination").unwrap_err();
        assert!(e.to_string().contains("10.0.0.1:80"), "{e}");
        assert_eq!(
            Endpoint::parse_one_port("10.0.0.1:8", "x"),
            Ok(ep("10.0.0.1", 8))
        );
    }

    #[test]
    fn all_ports_by_flag() {
        for text in ["10.0.0.1", "10.0.0.1:*"] {
            assert_eq!(
                Endpoint::parse_vip(text, true),
                Ok(ep("10.0.0.1", ALL_PORTS))
            );
        }
        for text in ["fd00::1", "[fd00::1]", "[fd00::1]:*"] {
            assert_eq!(
                Endpoint::parse_vip(text, true),
                Ok(ep("fd00::1", ALL_PORTS))
            );
        }
        let e = Endpoint::parse_vip("10.0.0.1:80", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("port 80") && e.contains("--all-ports"), "{e}");
        assert!(Endpoint::parse_vip("10.0.0.1", false).is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(parse_host("10.0.0.2").unwrap().to_string(), "10.0.0.2");
        assert_eq!(parse_host("[fd00::2]").unwrap().to_string(), "fd00::2");
        assert_eq!(parse_host("fd00::2").unwrap().to_string(), "fd00::2");
        let e = parse_host("10.0.0.2:80").unwrap_err().to_string();
        assert!(e.contains("no port of its own"), "{e}");
        let e = parse_host("10.0.0.999").unwrap_err().to_string();
        assert!(e.contains("10.0.0.999") && e.contains("invalid"), "{e}");
    }

    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            // Short IPv6 forms (`::` runs) are where a last group and a port look alike.
            (any::<u16>(), any::<u16>())
                .prop_map(|(a, b)| IpAddr::V6(Ipv6Addr::new(0xfd00, a, 0, 0, 0, 0, 0, b))),
        ]
    }

    proptest! {
        /// Every endpoint's display reads back as itself, with or without a port.
        #[test]
        fn display_round_trips(address in address(), port in any::<u16>()) {
            let e = Endpoint { address, port };
            let text = e.to_string();
            prop_assert_eq!(Endpoint::parse(&text), Ok(e), "{}", text);
        }

        /// A bare address is refused whatever its family, and the message shows both forms
        /// that would be accepted, which themselves parse.
        #[test]
        fn bare_addresses_are_refused(address in address()) {
            let bare = address.to_string();
            let e = Endpoint::parse(&bare).unwrap_err().to_string();
            let shown = match address {
                IpAddr::V4(a) => format!("{a}:PORT"),
                IpAddr::V6(a) => format!("[{a}]:PORT"),
            };
            prop_assert!(e.contains(&shown), "{}: {}", bare, e);
            let all = Endpoint { address, port: ALL_PORTS }.to_string();
            prop_assert!(e.contains(&all), "{}: {}", bare, e);
        }

        /// Whatever text parses, its endpoint's display parses back to the same endpoint.
        #[test]
        fn parsed_texts_display_stably(text in "[0-9a-f:.\\[\\]*]{1,24}") {
            if let Ok(e) = Endpoint::parse(&text) {
                let again = Endpoint::parse(&e.to_string());
                prop_assert_eq!(again, Ok(e));
            }
        }
    }
}
