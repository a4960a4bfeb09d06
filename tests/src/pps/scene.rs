//! What the live-frames runs share: the balancer loaded and configured as `lbx run` would
//! (`TestBalancer`: the agent's publication of a generation), the floors, the source
//! sink, the rig, and the frames.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use aya::{Ebpf, programs::Xdp};
use lbx::config::Config;
use lbx_common::{FAMILY_V4, FlowKey, PROTO_TCP, programs};

use std::os::fd::AsFd as _;

use super::{
    account::Tally,
    rig::Rig,
    sender::Flows,
    workers::{self, Job, Ran, Stop},
};
use crate::{
    packets::{self, L4, V4, V6},
    testrun::TestBalancer,
};

pub const RING: u32 = lbx_common::DEFAULT_RING_SIZE;
const PAYLOAD: usize = 64;
/// VIPs: TCP 80 and UDP 53 on each family, and a second IPv4 TCP VIP (the flood's).
pub const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const FLOOD_VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
pub const BACKENDS: u8 = 10;
pub const SPORT: u16 = 40_000;
/// The configuration's flow-hash seed.
pub const SEED: u32 = 1;

/// The configuration: every VIP with `backends` backends; the TCP VIP 192.0.2.10:80 with
/// `first_backends` (the flood adds one to it).
pub fn config(first_backends: u8) -> Config {
    config_of(&[
        (IpAddr::V4(VIP4), 80, "tcp", first_backends),
        (IpAddr::V4(VIP4), 53, "udp", BACKENDS),
        (IpAddr::V6(VIP6), 80, "tcp", BACKENDS),
        (IpAddr::V6(VIP6), 53, "udp", BACKENDS),
        (IpAddr::V4(FLOOD_VIP4), 80, "tcp", BACKENDS),
    ])
}

/// A configuration of `vips` (address, port, protocol, backends), the backends of each
/// 10.1.0.i or 2001:db8:b::i with fixed MACs, seed `SEED`, table size `RING`.
pub fn config_of(vips: &[(IpAddr, u16, &str, u8)]) -> Config {
    let mut text = format!("seed = {SEED}\ntable_size = {RING}\nmtu = 1500\n");
    for &(addr, port, proto, n) in vips {
        text.push_str(&format!(
            "[[vip]]\naddress = \"{addr}\"\nport = {port}\nprotocol = \"{proto}\"\n"
        ));
        for i in 1..=n {
            let b: IpAddr = if addr.is_ipv6() {
                Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, u16::from(i)).into()
            } else {
                Ipv4Addr::new(10, 1, 0, i).into()
            };
            text.push_str(&format!(
                "[[vip.backend]]\naddress = \"{b}\"\nmac = \"02:00:00:00:01:{i:02x}\"\n"
            ));
        }
    }
    Config::from_toml(&text).expect("benchmark configuration")
}

/// What a frame is: family, protocol, SYN, destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub v6: bool,
    pub tcp: bool,
    pub syn: bool,
    pub flood_vip: bool,
}

impl Shape {
    pub const TCP4: Shape = Shape {
        v6: false,
        tcp: true,
        syn: false,
        flood_vip: false,
    };
}

/// The frame of `shape`; the sender replaces the last four bytes of its source.
pub fn frame(shape: Shape) -> Vec<u8> {
    let payload = [0x5a; PAYLOAD];
    let l4 = match (shape.tcp, shape.syn) {
        (true, true) => L4::syn(SPORT, 80),
        (true, false) => L4::tcp(SPORT, 80),
        (false, _) => L4::udp(SPORT, 53),
    };
    if shape.v6 {
        let src = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1);
        packets::ipv6(&V6::new(src, VIP6), l4, &payload)
    } else {
        let dst = if shape.flood_vip { FLOOD_VIP4 } else { VIP4 };
        packets::ipv4(&V4::new(Ipv4Addr::new(10, 128, 0, 1), dst), l4, &payload)
    }
}

/// The frame of `shape` from the source whose last four bytes are `src`, as the sender
/// sends it.
pub fn frame_from(shape: Shape, src: u32) -> Vec<u8> {
    let mut f = frame(shape);
    let at = if shape.v6 { 14 + 8 + 12 } else { 14 + 12 };
    f[at..at + 4].copy_from_slice(&src.to_be_bytes());
    f
}

/// The connection-table key of the IPv4 TCP flow from `src` to `dst`:80.
pub fn key4(src: u32, dst: Ipv4Addr) -> FlowKey {
    FlowKey {
        src: [u32::from_ne_bytes(src.to_be_bytes()), 0, 0, 0],
        dst: [u32::from_ne_bytes(dst.octets()), 0, 0, 0],
        sport_be: SPORT.to_be(),
        dport_be: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
        pad: 0,
    }
}

/// The program under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Balancer,
    /// `lbx_bench_forward`: parses, prepends a fixed outer header, XDP_TX.
    Forwarder,
    /// `lbx_bench_tx`: XDP_TX and nothing else.
    Tx,
}

pub struct Scene {
    pub tb: TestBalancer,
    forwarder: Ebpf,
    tx: Ebpf,
    _sink: Ebpf,
    attached: Option<Target>,
    pub rig: Rig,
    /// Frames per `sendmmsg`.
    pub batch: usize,
}

impl Scene {
    /// The balancer with a table of `flows`, and a rig with a pair per CPU.
    pub fn new(flows: u32, batch: usize) -> Result<Self> {
        lbx::dataplane::sys::raise_memlock_limit();
        let mut tb = TestBalancer::load(RING, flows)?;
        // The agent's clock runs from 1 (`Active::now`, seconds); a second chance is only
        // given once it runs.
        tb.tick(1)?;
        tb.configure(&config(BACKENDS))?;
        let sink = lbx::dataplane::load_unattached(programs::BENCH_DROP)?;
        let rig = Rig::create(
            workers::cpus()?.len(),
            xdp(&sink, programs::BENCH_DROP)?.fd()?.as_fd(),
        )?;
        Ok(Self {
            tb,
            forwarder: lbx::dataplane::load_unattached(programs::BENCH_FORWARD)?,
            tx: lbx::dataplane::load_unattached(programs::BENCH_TX)?,
            _sink: sink,
            attached: None,
            rig,
            batch: batch.max(1),
        })
    }

    pub fn program(&self, t: Target) -> Result<&Xdp> {
        match t {
            Target::Balancer => Ok(self.tb.bal.program()),
            Target::Forwarder => xdp(&self.forwarder, programs::BENCH_FORWARD),
            Target::Tx => xdp(&self.tx, programs::BENCH_TX),
        }
    }

    /// Attaches `t` on every pair's receiving end.
    pub fn attach(&mut self, t: Target) -> Result<()> {
        if self.attached != Some(t) {
            self.rig.attach(self.program(t)?)?;
            self.attached = Some(t);
        }
        Ok(())
    }

    /// Runs the jobs at once and counts what happened to every frame.
    pub fn run(&self, jobs: &[Job], stop: Stop) -> Result<(Ran, Tally)> {
        let before = Tally::read(self)?;
        let ran = workers::run(&self.rig, jobs, self.batch, stop)?;
        let after = Tally::read_settled(self)?;
        Ok((ran, after.since(&before)))
    }

    /// Runs `batch` live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`) of `t` as if they arrived
    /// on the first pair's `a`, from a thread in the rig's namespace, and counts what
    /// happened to them. The inner error is the kernel's refusal, where it refuses.
    pub fn live(&self, t: Target, shape: Shape, batch: u32) -> Result<std::io::Result<Tally>> {
        let prog = self.program(t)?.fd()?.as_fd();
        let handle = self.rig.handle()?;
        let ifindex = self.rig.a_ifindex(0)?;
        let frame = frame(shape);
        let before = Tally::read(self)?;
        let sent = std::thread::scope(|s| {
            s.spawn(|| -> Result<std::io::Result<()>> {
                Rig::enter(&handle)?;
                Ok(super::live::run(prog, &frame, ifindex, batch))
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })?;
        Ok(match sent {
            Ok(()) => Ok(Tally::read_settled(self)?.since(&before)),
            Err(e) => Err(e),
        })
    }

    /// One job per CPU of `cpus`, each on its own pair.
    pub fn jobs(&self, cpus: &[usize], frame: &[u8], flows: impl Fn(usize) -> Flows) -> Vec<Job> {
        cpus.iter()
            .enumerate()
            .map(|(i, &cpu)| Job {
                cpu,
                pair: i % self.rig.pairs.len(),
                frame: frame.to_vec(),
                flows: flows(i),
                pace: None,
            })
            .collect()
    }
}

fn xdp<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    Ok(ebpf
        .program(name)
        .with_context(|| format!("{name} in the object"))?
        .try_into()?)
}
