//! Addresses as the data plane stores them, and next-hop MAC resolution.

use std::{
    net::{IpAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use lbx_common::{Addr, FAMILY_V4, FAMILY_V6};
use serde::Deserialize;

use crate::config::{MacAddr, Prefix};

pub fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

/// Network-order bytes as the four native words the data plane compares and hashes.
pub fn to_words(ip: IpAddr) -> Addr {
    let mut a = [0u32; 4];
    match ip {
        IpAddr::V4(v4) => a[0] = u32::from_ne_bytes(v4.octets()),
        IpAddr::V6(v6) => {
            for (w, c) in a.iter_mut().zip(v6.octets().chunks_exact(4)) {
                *w = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
    a
}

pub fn from_words(a: Addr, family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(a[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        for (c, w) in o.chunks_exact_mut(4).zip(a) {
            c.copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    }
}

/// A prefix as (network bits, host-bit mask) in the data plane's word form: the outer
/// source is `network | (hash & hostmask)`.
pub fn prefix_words(p: &Prefix) -> (Addr, Addr) {
    let bits: u32 = if p.addr.is_ipv4() { 32 } else { 128 };
    let len = u32::from(p.len).min(bits);
    let host_mask: u128 = if len == 0 {
        u128::MAX
    } else {
        (1u128 << (128 - len)).wrapping_sub(1)
    };
    let (addr, mask) = match p.addr {
        IpAddr::V4(v4) => {
            let host = (host_mask >> 96) as u32;
            let net = u32::from(v4) & !host;
            (
                IpAddr::from(net.to_be_bytes()),
                IpAddr::from(host.to_be_bytes()),
            )
        }
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !host_mask;
            (
                IpAddr::from(net.to_be_bytes()),
                IpAddr::from(host_mask.to_be_bytes()),
            )
        }
    };
    (to_words(addr), to_words(mask))
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve the MAC address of {addr}: {why}; give it with --mac")]
    Failed { addr: IpAddr, why: String },
}

#[derive(Deserialize)]
struct Route {
    gateway: Option<IpAddr>,
    dev: Option<String>,
}

#[derive(Deserialize)]
struct Neighbour {
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

fn ip_json<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Result<Vec<T>, String> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("unexpected `ip -j` output: {e}"))
}

fn neighbour_mac(target: IpAddr, iface: &str) -> Result<Option<MacAddr>, String> {
    let t = target.to_string();
    let entries: Vec<Neighbour> = ip_json(&["neigh", "show", "to", &t, "dev", iface])?;
    Ok(entries
        .into_iter()
        .filter(|n| !n.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE"))
        .find_map(|n| n.lladdr.and_then(|m| m.parse().ok())))
}

/// The Ethernet address packets for `addr` must go to on `iface`: the backend's own when it
/// is on the link, its gateway's otherwise. Asks the kernel to resolve it when the
/// neighbour table has no entry yet, and waits up to `timeout`.
pub fn resolve_next_hop(
    addr: IpAddr,
    iface: &str,
    timeout: Duration,
) -> Result<MacAddr, ResolveError> {
    let fail = |why: String| ResolveError::Failed { addr, why };
    let a = addr.to_string();
    let routes: Vec<Route> = ip_json(&["route", "get", &a]).map_err(fail)?;
    let route = routes
        .into_iter()
        .next()
        .ok_or_else(|| fail("no route".into()))?;
    if let Some(dev) = &route.dev
        && dev != iface
    {
        return Err(fail(format!("it is routed via {dev}, not {iface}")));
    }
    let target = route.gateway.unwrap_or(addr);
    if let Some(mac) = neighbour_mac(target, iface).map_err(fail)? {
        return Ok(mac);
    }
    // A datagram to the discard port makes the kernel resolve the neighbour.
    let bind: IpAddr = if target.is_ipv4() {
        [0u8; 4].into()
    } else {
        [0u8; 16].into()
    };
    if let Ok(sock) = UdpSocket::bind((bind, 0)) {
        let _ = sock.send_to(b"", (target, 9));
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(mac) = neighbour_mac(target, iface).map_err(fail)? {
            return Ok(mac);
        }
    }
    Err(fail(format!(
        "no neighbour entry for {target} on {iface} after {timeout:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for ip in ["10.1.2.3", "fd00::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(from_words(to_words(ip), family(ip)), ip);
        }
    }

    #[test]
    fn prefix_splits_network_and_host_bits() {
        let p = Prefix {
            addr: "172.16.9.9".parse().unwrap(),
            len: 16,
        };
        let (net, mask) = prefix_words(&p);
        assert_eq!(
            from_words(net, FAMILY_V4),
            "172.16.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            from_words(mask, FAMILY_V4),
            "0.0.255.255".parse::<IpAddr>().unwrap()
        );
        let p = Prefix {
            addr: "100::".parse().unwrap(),
            len: 64,
        };
        let (net, mask) = prefix_words(&p);
        assert_eq!(
            from_words(net, FAMILY_V6),
            "100::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            from_words(mask, FAMILY_V6),
            "::ffff:ffff:ffff:ffff".parse::<IpAddr>().unwrap()
        );
        let p = Prefix {
            addr: "10.0.0.2".parse().unwrap(),
            len: 32,
        };
        let (_, mask) = prefix_words(&p);
        assert_eq!(mask, [0; 4]);
    }
}
