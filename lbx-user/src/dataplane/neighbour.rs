//! Next-hop MAC resolution: the Ethernet address the balancer writes into a frame for a
//! backend, from the kernel's routes and neighbour table.

use std::{
    net::{IpAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::config::MacAddr;

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
