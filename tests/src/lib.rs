//! Test hosts for lbx: a client, a load balancer and backends, each in its own network
//! namespace, joined by a Linux bridge, with real TCP traffic between them.
//!
//! ```text
//!        switch ns: br0 (MTU 1600)
//!   p-client   p-lb        p-b1 ... p-bN        (p-lb runs `lbx pass`: XDP_TX into a veth
//!      |        |            |         |          needs an XDP program on the peer)
//!   client     lb          b1   ...   bN
//!   10.77.0.1  10.77.0.2   10.77.0.11 ...       VIPs 10.77.100.0/24, fd77:100::/64
//!   fd77::1    fd77::2     fd77::11   ...       client routes them via the lb;
//!   MTU 1500   `lbx run`   `lbx decap` + lbx-test-server, VIPs on lo
//! ```
//!
//! With [`TopologyBuilder::client_behind_router`], a router (10.77.0.3, fd77::3, on the
//! bridge too) carries the backends' replies to the client over links of its own with a
//! smaller MTU; see [`topology::RouterLegs`].
//!
//! For cluster mode, [`fleet::Fleet`] puts several lb nodes behind an ECMP router, and
//! [`etcd::EtcdCluster`] runs a real etcd cluster on a control network of its own.
//!
//! Everything is torn down when the [`Topology`] is dropped, including during a panic. Only
//! addresses inside these namespaces are ever sent to.

pub mod agent;
pub mod bench_adaptive;
pub mod bpffs;
pub mod capture;
pub mod client;
pub mod dashboard_png;
pub mod demo;
pub mod etcd;
pub mod ethtool;
pub mod fixture;
pub mod fleet;
pub mod netns;
pub mod packets;
pub mod pcap;
pub mod pps;
pub mod process;
pub mod prometheus;
pub mod reference;
pub mod rng;
pub mod testrun;
pub mod topology;
pub mod wiring;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::bail;

pub use client::{Client, Connection};
pub use topology::{Flow, Host, Topology, TopologyBuilder, reason_count, tally};

/// The link: 10.77.0.0/24 and fd77::/64.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// The router of [`TopologyBuilder::client_behind_router`], when there is one.
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 3);
/// VIP prefixes, routed by the client via the lb: 10.77.100.0/24 and fd77:100::/64.
pub const VIP_PREFIX_V4: &str = "10.77.100.0/24";
pub const VIP_PREFIX_V6: &str = "fd77:100::/64";
/// The first VIP address of each family.
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0x100, 0, 0, 0, 0, 0, 1);
/// Port on which every backend also serves its own addresses (not a VIP): lets a test reach a
/// backend directly, without lbx.
pub const DIRECT_PORT: u16 = 8000;
/// Backends a topology may have: their addresses are .11 to .19 (fd77::11 to fd77::19).
pub const MAX_BACKENDS: usize = 9;

/// The IPv4 address of backend `i` (1-based): 10.77.0.1i.
pub fn backend_v4(i: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_BACKENDS).contains(&i),
        "backend index {i} out of 1..={MAX_BACKENDS}"
    );
    Ipv4Addr::new(10, 77, 0, 10 + u8::try_from(i).expect("checked above"))
}

/// The IPv6 address of backend `i` (1-based): fd77::1i.
pub fn backend_v6(i: usize) -> Ipv6Addr {
    assert!(
        (1..=MAX_BACKENDS).contains(&i),
        "backend index {i} out of 1..={MAX_BACKENDS}"
    );
    Ipv6Addr::new(
        0xfd77,
        0,
        0,
        0,
        0,
        0,
        0,
        0x10 + u16::try_from(i).expect("checked above"),
    )
}

/// The MAC address of backend `i` (1-based): 02:77:00:00:00:1i.
pub fn backend_mac(i: usize) -> [u8; 6] {
    assert!(
        (1..=MAX_BACKENDS).contains(&i),
        "backend index {i} out of 1..={MAX_BACKENDS}"
    );
    [
        0x02,
        0x77,
        0,
        0,
        0,
        0x10 + u8::try_from(i).expect("checked above"),
    ]
}

/// The name backend `i` answers with.
pub fn backend_name(i: usize) -> String {
    format!("backend-{i}")
}

/// Paths of the programs the tests run.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `lbx` binary (agent, decap, pass and CLI).
    pub lbx: PathBuf,
    /// The `lbx-test-server` binary of this crate.
    pub test_server: PathBuf,
}

impl Binaries {
    /// Finds the binaries: from `LBX_BIN` and `LBX_TEST_SERVER`, else next to the running
    /// executable or one directory up (a test executable lives in target/<profile>/deps).
    pub fn locate() -> anyhow::Result<Self> {
        Ok(Self {
            lbx: Self::locate_lbx()?,
            test_server: Self::locate_test_server()?,
        })
    }

    pub fn locate_lbx() -> anyhow::Result<PathBuf> {
        locate_binary(
            "LBX_BIN",
            "lbx",
            "build it with `cargo build -p lbx-user --bin lbx`",
        )
    }

    pub fn locate_test_server() -> anyhow::Result<PathBuf> {
        locate_binary(
            "LBX_TEST_SERVER",
            "lbx-test-server",
            "build it with `cargo build -p lbx-tests --bin lbx-test-server`",
        )
    }
}

/// Finds binary `name`: from the variable `env`, else next to the running executable or one
/// directory up; `hint` says how to build it.
pub fn locate_binary(env: &str, name: &str, hint: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{env} is set to {}, which is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir: &Path| dir.join(name))
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "cannot find the {name} binary: {env} is not set and it is not at {}; {hint}, \
         or set {env} to its path",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    )
}

/// Whether this process may create namespaces: root (the tests need CAP_NET_ADMIN and
/// CAP_SYS_ADMIN in the initial namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
