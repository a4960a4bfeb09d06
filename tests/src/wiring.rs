//! What every test network is made of: a bridge in a switch namespace, hosts plugged into it
//! by veth, their addresses, processes started in a namespace that report when they are
//! ready, and the temporary directory a network keeps its files in.

use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::bpffs;
use crate::capture::format_mac;
use crate::netns::{self, Netns};
use crate::process::Process;
use crate::topology::patience;

/// The BPF filesystem a network mounts for its agents, under its directory.
pub const BPFFS_DIR: &str = "bpf";
/// Limit for a process to report that it is ready (times [`patience`]).
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The index in a list of `len` of the 1-based `i` (of a `what`: `node`), which must be in
/// 1..=len.
pub fn one_based(i: usize, len: usize, what: &str) -> usize {
    assert!((1..=len).contains(&i), "{what} {i} out of 1..={len}");
    i - 1
}

/// Makes the bridge `bridge` in the switch namespace `sw`, which only bridges: no IPv6 of
/// its own on its ports, STP off (ports forward at once) and multicast snooping off
/// (neighbour discovery is flooded like broadcast, with no querier to wait for).
pub fn make_bridge(sw: &Netns, bridge: &str, mtu: u16) -> anyhow::Result<()> {
    sw.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    sw.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    sw.ip(&["link", "set", "lo", "up"])?;
    sw.ip(&[
        "link",
        "add",
        bridge,
        "mtu",
        &mtu.to_string(),
        "type",
        "bridge",
        "stp_state",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    sw.ip(&["link", "set", bridge, "up"])?;
    Ok(())
}

/// One veth from a switch namespace to a host.
#[derive(Debug, Clone, Copy)]
pub struct Veth<'a> {
    /// The end in the switch namespace, a port of the bridge.
    pub switch_port: &'a str,
    /// The end in the host's namespace.
    pub iface: &'a str,
    /// The host end's MAC address; None: the kernel's random one.
    pub mac: Option<[u8; 6]>,
    /// The host end's MTU (the switch end has the bridge's).
    pub mtu: u16,
}

/// Creates `veth` from `sw` to `host`, brings both ends up and makes the switch end a port of
/// `bridge`, whose MTU is `bridge_mtu`.
pub fn plug(
    sw: &Netns,
    bridge: &str,
    bridge_mtu: u16,
    host: &Netns,
    veth: Veth<'_>,
) -> anyhow::Result<()> {
    sw.ip(&[
        "link",
        "add",
        veth.switch_port,
        "mtu",
        &bridge_mtu.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        veth.iface,
        "netns",
        host.name(),
    ])?;
    let mut args = vec!["link".to_owned(), "set".to_owned(), veth.iface.to_owned()];
    if let Some(mac) = veth.mac {
        args.extend(["address".to_owned(), format_mac(&mac)]);
    }
    args.extend(["mtu".to_owned(), veth.mtu.to_string(), "up".to_owned()]);
    host.ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    sw.ip(&["link", "set", veth.switch_port, "master", bridge, "up"])?;
    Ok(())
}

/// Adds `addr/prefix` to `iface` in `ns`; an IPv6 address without duplicate address
/// detection, so it is usable at once.
pub fn add_addr(ns: &Netns, iface: &str, addr: IpAddr, prefix: u8) -> anyhow::Result<()> {
    let cidr = format!("{addr}/{prefix}");
    let mut args = vec!["addr", "add", cidr.as_str(), "dev", iface];
    if addr.is_ipv6() {
        args.push("nodad");
    }
    ns.ip(&args)?;
    Ok(())
}

/// Adds a permanent neighbour entry for `addr` at `mac` on `iface` in `ns`: nothing waits on
/// ARP or neighbour discovery for it, and `lbx backend add` without `--mac` finds it.
pub fn static_neighbour(
    ns: &Netns,
    iface: &str,
    addr: IpAddr,
    mac: &[u8; 6],
) -> anyhow::Result<()> {
    ns.ip(&[
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        &format_mac(mac),
        "dev",
        iface,
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// Starts `program ARGS` in `netns`, logging to `log_dir`, waits until its stdout shows a
/// line containing `ready_line`, and hands it to `processes` either way (so its log is shown
/// with the others if it never got ready).
pub fn spawn_ready(
    processes: &mut Vec<Process>,
    log_dir: &Path,
    label: &str,
    netns: &Netns,
    program: &Path,
    args: &[String],
    ready_line: &str,
) -> anyhow::Result<()> {
    let mut cmd = netns.command(program);
    cmd.args(args);
    let mut process = Process::spawn(label, cmd, log_dir)?;
    let ready = process.wait_for_line(ready_line, patience(READY_TIMEOUT));
    processes.push(process);
    ready
}

/// Makes a fresh temporary directory `lbxt-<pid>-<n>` (mode 0700), first removing those of
/// test processes that no longer exist (killed outright, so no destructor removed them),
/// with the BPF filesystem they may have mounted inside ([`BPFFS_DIR`]).
pub fn make_temp_dir() -> anyhow::Result<PathBuf> {
    remove_stale_temp_dirs();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{}{}-{}",
        netns::PREFIX,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("failed to create {}", dir.display()))?;
    Ok(dir)
}

fn remove_stale_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(netns::PREFIX) else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<u32>) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bpffs::unmount(&entry.path().join(BPFFS_DIR));
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes a directory [`make_temp_dir`] made, unless `LBX_TEST_KEEP_DIR` is set; returns a
/// line saying it was kept then.
pub fn remove_temp_dir(dir: &Path) -> Option<String> {
    if std::env::var_os("LBX_TEST_KEEP_DIR").is_none() {
        let _ = std::fs::remove_dir_all(dir);
        None
    } else {
        Some(format!(
            "kept {} (LBX_TEST_KEEP_DIR is set)\n",
            dir.display()
        ))
    }
}
