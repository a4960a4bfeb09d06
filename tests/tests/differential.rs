//! Differential test: random configurations and random frames (valid, nearly valid, and
//! garbage) through the kernel program (BPF_PROG_TEST_RUN) and the reference model; they
//! must agree on every frame: verdict, reason, output bytes (so the backend), and, per
//! configuration, the VIP and backend counters and the whole connection table.
//!
//! The seed is printed; `LBX_DIFF_SEED=N` replays a run, `LBX_DIFF_PACKETS=N` changes its
//! length (default 120,000 frames). Configurations evolve by small edits (backends added,
//! removed, drained, reweighted; VIPs come and go), so connection-table entries outlive
//! the generation that made them, as in production. The connection table is far smaller
//! than the flows a run makes, so replacement decides where new flows go; it is compared
//! whole, slot by slot, after each phase. Idle times and the data
//! plane's clock change between configurations, so flows go idle and their slots are
//! taken by new ones in both tables alike.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use lbx::{config::Config, dataplane::FlowIdle};
use lbx_common::{Counters, Reason};
use lbx_tests::{
    packets::{self, L4, V4, V6, V6Ext},
    pcap,
    rng::Rng,
    testrun::TestBalancer,
};

/// The configurations' table sizes, one phase (and one load of the balancer) each; VIPs may
/// have their own.
const PHASES: [u32; 3] = [101, 1021, 65537];
/// Configurations per phase; the frames are spread evenly over them.
const CONFIGS_PER_PHASE: usize = 12;
/// Far fewer slots than the flows a run creates: sets fill up, and replacement (second
/// chance, then the hash's pick) decides where every new flow goes, in both tables.
const FLOWS: u32 = 1 << 12;
const DEFAULT_PACKETS: usize = 120_000;

#[derive(Clone, Debug)]
struct RBackend {
    addr: IpAddr,
    weight: u32,
    drain: bool,
    mac: [u8; 6],
}

#[derive(Clone, Debug)]
struct RVip {
    addr: IpAddr,
    port: u16,
    tcp: bool,
    /// Its own Maglev table size, written when it holds the backends (ten slots each);
    /// otherwise the configuration's applies.
    table_size: Option<u32>,
    backends: Vec<RBackend>,
}

#[derive(Clone, Debug)]
struct RConfig {
    seed: u32,
    table_size: u32,
    mtu: u32,
    src4: (Ipv4Addr, u8),
    src6: (Ipv6Addr, u8),
    /// Whether echo requests to VIP addresses are answered.
    icmp_echo: bool,
    vips: Vec<RVip>,
}

impl RConfig {
    fn toml(&self) -> String {
        let mut s = format!(
            "seed = {}\ntable_size = {}\nmtu = {}\nicmp_echo = {}\n[encap]\nsource_v4 = \"{}/{}\"\nsource_v6 = \"{}/{}\"\n",
            self.seed,
            self.table_size,
            self.mtu,
            self.icmp_echo,
            self.src4.0,
            self.src4.1,
            self.src6.0,
            self.src6.1
        );
        for v in &self.vips {
            let _ = writeln!(
                s,
                "[[vip]]\naddress = \"{}\"\nport = {}\nprotocol = \"{}\"",
                v.addr,
                // Every port is written "*" in the file.
                if v.port == 0 {
                    "\"*\"".to_owned()
                } else {
                    v.port.to_string()
                },
                if v.tcp { "tcp" } else { "udp" }
            );
            if let Some(m) = v
                .table_size
                .filter(|m| v.backends.len() * 10 <= *m as usize)
            {
                let _ = writeln!(s, "table_size = {m}");
            }
            for b in &v.backends {
                let m = b.mac;
                let _ = writeln!(
                    s,
                    "[[vip.backend]]\naddress = \"{}\"\nweight = {}\ndrain = {}\n\
                     mac = \"{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}\"",
                    b.addr, b.weight, b.drain, m[0], m[1], m[2], m[3], m[4], m[5]
                );
            }
        }
        s
    }

    fn config(&self) -> Config {
        let text = self.toml();
        Config::from_toml(&text).unwrap_or_else(|e| panic!("generated configuration: {e}\n{text}"))
    }
}

fn vip_pool(rng: &mut Rng, v6: bool) -> IpAddr {
    let n = rng.range(1, 5) as u8;
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n)))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }
}

fn backend_pool(rng: &mut Rng, v6: bool) -> IpAddr {
    let n = rng.range(1, 13) as u8;
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, u16::from(n)))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 1, 0, n))
    }
}

fn random_backend(rng: &mut Rng, v6: bool) -> RBackend {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&rng.bytes(6));
    mac[0] = (mac[0] & 0xfe) | 0x02; // unicast, locally administered, never zero
    RBackend {
        addr: backend_pool(rng, v6),
        weight: if rng.chance(1, 4) {
            rng.range(1, 65536) as u32
        } else {
            rng.range(1, 200) as u32
        },
        drain: rng.chance(1, 6),
        mac,
    }
}

fn add_backend(rng: &mut Rng, v: &mut RVip) {
    let b = random_backend(rng, v.addr.is_ipv6());
    if !v.backends.iter().any(|x| x.addr == b.addr) {
        v.backends.push(b);
    }
}

fn random_vip(rng: &mut Rng) -> RVip {
    let v6 = rng.chance(1, 2);
    let mut v = RVip {
        addr: vip_pool(rng, v6),
        port: *rng.pick(&[0u16, 80, 443, 53, 8080]),
        tcp: rng.chance(1, 2),
        table_size: own_table_size(rng),
        backends: Vec::new(),
    };
    for _ in 0..rng.range(0, 6) {
        add_backend(rng, &mut v);
    }
    v
}

/// A VIP's own table size now and then.
fn own_table_size(rng: &mut Rng) -> Option<u32> {
    rng.chance(1, 3).then(|| *rng.pick(&[131u32, 211, 1021]))
}

fn add_vip(rng: &mut Rng, c: &mut RConfig) {
    let v = random_vip(rng);
    if !c
        .vips
        .iter()
        .any(|x| x.addr == v.addr && x.port == v.port && x.tcp == v.tcp)
    {
        c.vips.push(v);
    }
}

fn random_prefixes(rng: &mut Rng) -> ((Ipv4Addr, u8), (Ipv6Addr, u8)) {
    let l4 = rng.range(8, 33) as u8;
    let a4 = rng.u32() & u32::MAX.checked_shl(32 - u32::from(l4)).unwrap_or(0);
    let l6 = *rng.pick(&[0u8, 32, 48, 64, 96, 100, 120, 127, 128]);
    let raw = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    let a6 = raw & u128::MAX.checked_shl(128 - u32::from(l6)).unwrap_or(0);
    ((Ipv4Addr::from(a4), l4), (Ipv6Addr::from(a6), l6))
}

fn random_config(rng: &mut Rng, table_size: u32) -> RConfig {
    let (src4, src6) = random_prefixes(rng);
    let mut c = RConfig {
        seed: rng.u32(),
        table_size,
        mtu: *rng.pick(&[1280u32, 1400, 1500, 9000]),
        src4,
        src6,
        icmp_echo: rng.chance(3, 4),
        vips: Vec::new(),
    };
    for _ in 0..rng.range(1, 9) {
        add_vip(rng, &mut c);
    }
    c
}

/// A backend added to a TCP VIP that has some: its ring moves a share of slots while
/// every old backend still serves, the case the second chance is for.
fn move_ring(rng: &mut Rng, c: &mut RConfig) {
    let with_backends: Vec<usize> = (0..c.vips.len())
        .filter(|&i| c.vips[i].tcp && !c.vips[i].backends.is_empty())
        .collect();
    let i = if with_backends.is_empty() {
        let mut v = random_vip(rng);
        v.tcp = true;
        while v.backends.len() < 2 {
            add_backend(rng, &mut v);
        }
        c.vips
            .retain(|x| !(x.addr == v.addr && x.port == v.port && x.tcp));
        c.vips.push(v);
        c.vips.len() - 1
    } else {
        *rng.pick(&with_backends)
    };
    let v = &mut c.vips[i];
    let free: Vec<RBackend> = (0..24)
        .map(|_| random_backend(rng, v.addr.is_ipv6()))
        .filter(|b| !v.backends.iter().any(|x| x.addr == b.addr))
        .collect();
    match free.into_iter().next() {
        Some(b) => v.backends.push(RBackend { drain: false, ..b }),
        // A full pool: a new weight moves the ring as well.
        None => {
            let b = &mut v.backends[0];
            b.drain = false;
            b.weight = if b.weight > 1 { b.weight / 2 } else { 7 };
        }
    }
}

/// The next configuration: a few operator-style edits of `c`, or now and then a new one.
fn evolve(rng: &mut Rng, c: &RConfig) -> RConfig {
    if rng.chance(1, 8) {
        return random_config(rng, c.table_size);
    }
    let mut n = c.clone();
    for _ in 0..rng.range(1, 5) {
        match rng.range(0, 9) {
            0 => add_vip(rng, &mut n),
            1 if !n.vips.is_empty() => {
                let i = rng.range(0, n.vips.len());
                n.vips.remove(i);
            }
            2 if rng.chance(1, 4) => n.icmp_echo = !n.icmp_echo,
            2 => n.mtu = *rng.pick(&[1280u32, 1400, 1500, 9000]),
            3 => (n.src4, n.src6) = random_prefixes(rng),
            _ if !n.vips.is_empty() => {
                let i = rng.range(0, n.vips.len());
                let v = &mut n.vips[i];
                match rng.range(0, 5) {
                    0 => add_backend(rng, v),
                    4 => v.table_size = own_table_size(rng),
                    1 if !v.backends.is_empty() => {
                        let j = rng.range(0, v.backends.len());
                        v.backends.remove(j);
                    }
                    2 if !v.backends.is_empty() => {
                        let j = rng.range(0, v.backends.len());
                        v.backends[j].drain = !v.backends[j].drain;
                    }
                    _ if !v.backends.is_empty() => {
                        let j = rng.range(0, v.backends.len());
                        v.backends[j].weight = rng.range(1, 65536) as u32;
                    }
                    _ => add_backend(rng, v),
                }
            }
            _ => add_vip(rng, &mut n),
        }
    }
    n
}

fn client(rng: &mut Rng, v6: bool) -> IpAddr {
    let pooled = rng.chance(3, 4);
    match (v6, pooled) {
        (false, true) => IpAddr::V4(Ipv4Addr::new(192, 168, 0, rng.range(1, 9) as u8)),
        (false, false) => IpAddr::V4(Ipv4Addr::from(rng.u32())),
        (true, true) => IpAddr::V6(Ipv6Addr::new(
            0xfd02,
            0,
            0,
            0,
            0,
            0,
            0,
            rng.range(1, 9) as u16,
        )),
        (true, false) => IpAddr::V6(Ipv6Addr::from(
            (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()),
        )),
    }
}

/// A well-formed frame, mostly towards the configuration's VIPs, from a small set of
/// clients and ports so flows repeat (connection-table hits).
fn valid(rng: &mut Rng, c: &RConfig) -> Vec<u8> {
    match rng.range(0, 100) {
        0..=6 => return icmp_error(rng, c),
        7..=10 => return echo_request(rng, c),
        _ => {}
    }
    let target = if !c.vips.is_empty() && rng.chance(4, 5) {
        Some(rng.pick(&c.vips).clone())
    } else {
        None
    };
    let (dst, tcp, port) = match &target {
        Some(v) => (v.addr, v.tcp, v.port),
        None => {
            let v6 = rng.chance(1, 2);
            (vip_pool(rng, v6), rng.chance(1, 2), 80)
        }
    };
    let tcp = if rng.chance(1, 10) { !tcp } else { tcp };
    let dport = if port == 0 || rng.chance(1, 10) {
        rng.u16()
    } else {
        port
    };
    let sport = if rng.chance(2, 3) {
        1000 + rng.range(0, 16) as u16
    } else {
        rng.u16()
    };
    let l4 = if rng.chance(1, 30) {
        L4::Other(*rng.pick(&[1u8, 47, 58, 132]))
    } else if tcp {
        L4::tcp(sport, dport)
    } else {
        L4::udp(sport, dport)
    };
    let len = if rng.chance(1, 12) {
        rng.range(1100, 1600)
    } else {
        rng.range(0, 80)
    };
    let payload = rng.bytes(len);
    let src = client(rng, dst.is_ipv6());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = V4::new(s, d);
            ip.tos = rng.u8();
            ip.ttl = rng.u8();
            ip.id = rng.u16();
            ip.df = rng.chance(1, 2);
            if rng.chance(1, 25) {
                ip.mf = rng.chance(1, 2);
                ip.frag_offset = rng.u16() & 0x1fff;
            }
            if rng.chance(1, 8) {
                let words = rng.range(1, 11);
                ip.options = rng.bytes(4 * words);
            }
            packets::ipv4(&ip, l4, &payload)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = V6::new(s, d);
            ip.traffic_class = rng.u8();
            ip.flow_label = rng.u32() & 0xf_ffff;
            ip.hop_limit = rng.u8();
            if rng.chance(1, 8) {
                ip.ext = extension_chain(rng);
            }
            packets::ipv6(&ip, l4, &payload)
        }
        _ => unreachable!("client of the destination's family"),
    }
}

/// One to six IPv6 extension headers, mostly those lbx walks (so chains of up to 4 and
/// the fifth that stops it both occur), now and then a later fragment or one it does not
/// walk.
fn extension_chain(rng: &mut Rng) -> Vec<V6Ext> {
    let n = if rng.chance(1, 2) { 1 } else { rng.range(2, 7) };
    (0..n)
        .map(|_| match rng.range(0, 20) {
            0..=3 => V6Ext::HopByHop,
            4..=6 => V6Ext::DestinationOptions,
            7..=8 => V6Ext::Routing,
            9..=11 => V6Ext::Fragment {
                offset: 0,
                more: rng.chance(1, 2),
            },
            12 => V6Ext::Fragment {
                offset: rng.range(1, 0x2000) as u16,
                more: rng.chance(1, 2),
            },
            13..=16 => V6Ext::Sized {
                number: *rng.pick(&[0u8, 43, 60]),
                len: rng.range(0, 6) as u8,
            },
            _ => V6Ext::Unwalked(*rng.pick(&[50u8, 51, 135, 139, 140])),
        })
        .collect()
}

/// A VIP of the configuration, mostly, or an address of the VIP pool; whether its flows
/// are TCP, and its port (0: every port).
fn icmp_target(rng: &mut Rng, c: &RConfig) -> (IpAddr, bool, u16) {
    if !c.vips.is_empty() && rng.chance(5, 6) {
        let v = rng.pick(&c.vips);
        (v.addr, v.tcp, v.port)
    } else {
        let v6 = rng.chance(1, 2);
        (vip_pool(rng, v6), rng.chance(1, 2), 80)
    }
}

/// An ICMP message (type, code, the four type-dependent bytes, then `body`) in a frame
/// from `src` to `dst`: IPv4 header choices at random (options, rarely a fragment), IPv6
/// extension headers now and then; sometimes bytes after the packet.
fn icmp_frame(
    rng: &mut Rng,
    src: IpAddr,
    dst: IpAddr,
    (kind, code, rest): (u8, u8, [u8; 4]),
    body: &[u8],
) -> Vec<u8> {
    let mut f = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = V4::new(s, d);
            ip.tos = rng.u8();
            ip.ttl = rng.u8();
            ip.id = rng.u16();
            ip.df = rng.chance(1, 2);
            if rng.chance(1, 10) {
                let words = rng.range(1, 11);
                ip.options = rng.bytes(4 * words);
            }
            ip.mf = rng.chance(1, 40);
            packets::icmp4(&ip, kind, code, rest, body)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = V6::new(s, d);
            ip.traffic_class = rng.u8();
            ip.flow_label = rng.u32() & 0xf_ffff;
            ip.hop_limit = rng.u8();
            if rng.chance(1, 10) {
                ip.ext = extension_chain(rng);
            }
            packets::icmp6(&ip, kind, code, rest, body)
        }
        _ => unreachable!("one family"),
    };
    if rng.chance(1, 10) {
        let n = rng.range(1, 30);
        f.extend(rng.bytes(n));
    }
    f
}

/// An ICMP error to a VIP address about a packet its backend sent to a client (of the
/// clients and ports the valid frames use, so it often names a flow in the table): mostly
/// fragmentation needed / packet too big embedding what RFC 792 asks or the whole packet;
/// else cut anywhere, with a header byte changed, of another type, or to another address.
fn icmp_error(rng: &mut Rng, c: &RConfig) -> Vec<u8> {
    let (vip, tcp, port) = icmp_target(rng, c);
    let v6 = vip.is_ipv6();
    let peer = client(rng, v6);
    let tcp = if rng.chance(1, 10) { !tcp } else { tcp };
    let vport = if port == 0 || rng.chance(1, 10) {
        rng.u16()
    } else {
        port
    };
    let cport = if rng.chance(2, 3) {
        1000 + rng.range(0, 16) as u16
    } else {
        rng.u16()
    };
    let reply = if tcp {
        L4::tcp(vport, cport)
    } else {
        L4::udp(vport, cport)
    };
    let len = rng.range(0, 64);
    let data = rng.bytes(len);
    let sent = match (vip, peer) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = V4::new(s, d);
            ip.df = rng.chance(1, 2);
            if rng.chance(1, 8) {
                let words = rng.range(1, 11);
                ip.options = rng.bytes(4 * words);
            }
            packets::ipv4(&ip, reply, &data)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => packets::ipv6(&V6::new(s, d), reply, &data),
        _ => unreachable!("one family"),
    };
    let mut embedded = packets::ip_packet(&sent).to_vec();
    let header = if v6 {
        40
    } else {
        usize::from(embedded[0] & 0x0f) * 4
    };
    match rng.range(0, 8) {
        0..=2 => embedded.truncate(header + 8),
        3 => {
            let n = rng.range(0, header + 9);
            embedded.truncate(n);
        }
        4 => {
            let i = rng.range(0, header);
            embedded[i] = rng.u8();
        }
        _ => {}
    }
    let message = if rng.chance(9, 10) {
        if v6 {
            let code = if rng.chance(4, 5) { 0 } else { rng.u8() };
            (2, code, 1280u32.to_be_bytes())
        } else {
            (3, 4, [0, 0, 0x05, 0x78])
        }
    } else {
        let kind = *rng.pick(&[0u8, 1, 2, 3, 4, 8, 11, 12, 128, 129, 135]);
        (kind, rng.range(0, 5) as u8, [0, 0, 0x05, 0x00])
    };
    let to = if rng.chance(9, 10) {
        vip
    } else {
        vip_pool(rng, v6)
    };
    let router = client(rng, v6);
    icmp_frame(rng, router, to, message, &embedded)
}

/// An echo request to a VIP address (or a pool address); now and then with another code,
/// a wrong checksum, or cut inside the ICMP header.
fn echo_request(rng: &mut Rng, c: &RConfig) -> Vec<u8> {
    let (dst, _, _) = icmp_target(rng, c);
    let v6 = dst.is_ipv6();
    let src = client(rng, v6);
    let len = if rng.chance(1, 10) {
        rng.range(1000, 1500)
    } else {
        rng.range(0, 100)
    };
    let data = rng.bytes(len);
    let code = if rng.chance(1, 10) { rng.u8() } else { 0 };
    let kind = if v6 { 128 } else { 8 };
    let rest = [rng.u8(), rng.u8(), rng.u8(), rng.u8()];
    let mut f = icmp_frame(rng, src, dst, (kind, code, rest), &data);
    // Where the ICMP header is: after the IPv4 header, or counted back from the end of
    // the IPv6 packet (past any extension headers).
    let at = if v6 {
        let payload = usize::from(u16::from_be_bytes([f[18], f[19]]));
        14 + 40 + payload - data.len() - 8
    } else {
        14 + usize::from(f[14] & 0x0f) * 4
    };
    match rng.range(0, 12) {
        0 => f[at + 2] = rng.u8(),
        1 => {
            let n = rng.range(at, at + 8);
            f.truncate(n);
        }
        _ => {}
    }
    f
}

/// A valid frame with a mistake: cut, bytes changed in the headers, a length field or
/// the TCP data offset set at random, or trailing bytes added.
fn nearly_valid(rng: &mut Rng, c: &RConfig) -> Vec<u8> {
    let mut f = valid(rng, c);
    for _ in 0..rng.range(1, 3) {
        match rng.range(0, 6) {
            0 if f.len() > 14 => {
                let n = rng.range(14, f.len());
                f.truncate(n);
            }
            1 => {
                let i = rng.range(0, f.len().min(100));
                f[i] = rng.u8();
            }
            2 if f.len() >= 20 => {
                // IPv4 total length or IPv6 payload length.
                let at = if f[12] == 0x08 { 16 } else { 18 };
                let v = if rng.chance(1, 2) {
                    rng.u16()
                } else {
                    (f.len() as u16).wrapping_sub(rng.range(0, 70) as u16)
                };
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            3 => {
                // The TCP data offset, where TCP starts behind an option-less IP header.
                let at = if f[12] == 0x08 {
                    14 + 20 + 12
                } else {
                    14 + 40 + 12
                };
                if let Some(byte) = f.get_mut(at) {
                    *byte = rng.u8();
                }
            }
            4 => {
                let n = rng.range(1, 30);
                f.extend(rng.bytes(n));
            }
            _ => {
                // The version nibble or IHL.
                let at = 14.min(f.len() - 1);
                f[at] = rng.u8();
            }
        }
    }
    f
}

/// Random bytes, often with an IP EtherType and version so parsing goes deeper.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    let n = rng.range(14, 160);
    let mut f = rng.bytes(n);
    match rng.range(0, 3) {
        0 if f.len() > 14 => {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x40 | (f[14] & 0x0f);
        }
        1 if f.len() > 14 => {
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
            f[14] = 0x60 | (f[14] & 0x0f);
        }
        _ => {}
    }
    f
}

fn seed() -> u64 {
    match std::env::var("LBX_DIFF_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("LBX_DIFF_SEED={s:?} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    }
}

fn packets_wanted() -> usize {
    std::env::var("LBX_DIFF_PACKETS")
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("LBX_DIFF_PACKETS={s:?} is not a number"))
        })
        .unwrap_or(DEFAULT_PACKETS)
}

/// Everything needed to replay and understand a disagreement.
fn disagreement(
    seed: u64,
    index: usize,
    c: &RConfig,
    frame: &[u8],
    why: &str,
    kernel: Option<&[u8]>,
    model: &[u8],
) -> ! {
    let mut frames: Vec<&[u8]> = vec![frame];
    if let Some(k) = kernel {
        frames.push(k);
    }
    frames.push(model);
    let pcap = match pcap::write(&format!("differential-seed-{seed}-frame-{index}"), &frames) {
        Ok(p) => format!(
            "{} (1: input, {})",
            p.display(),
            if kernel.is_some() {
                "2: program output, 3: model output"
            } else {
                "2: model output"
            }
        ),
        Err(e) => format!("not written: {e:#}"),
    };
    let input: String = packets::fields(frame)
        .iter()
        .fold(String::new(), |mut s, (k, v)| {
            let _ = writeln!(s, "  {k:<26} {v}");
            s
        });
    let outputs = kernel
        .map(|k| {
            format!(
                "model (expected column) vs program (actual column):\n{}",
                packets::compare(model, k)
            )
        })
        .unwrap_or_default();
    panic!(
        "PROGRAM AND MODEL DISAGREE on frame {index} of seed {seed} (replay: LBX_DIFF_SEED={seed}):\n\
         {why}\ninput frame:\n{input}{outputs}\nframes written to {pcap}\nconfiguration:\n{}",
        c.toml()
    );
}

fn sum_counters(
    tb: &TestBalancer,
    vips: &[u32],
    backends: &[u32],
) -> (HashMap<u32, Counters>, HashMap<u32, Counters>) {
    let v = vips
        .iter()
        .map(|n| (*n, tb.vip_counters(*n).expect("VIP_STATS")))
        .collect();
    let b = backends
        .iter()
        .map(|n| (*n, tb.backend_counters(*n).expect("BACKEND_STATS")))
        .collect();
    (v, b)
}

fn add(c: &mut Counters, bytes: usize, new_flow: bool) {
    c.packets += 1;
    c.bytes += bytes as u64;
    c.new_flows += u64::from(new_flow);
}

#[test]
fn program_and_model_agree_on_random_configurations_and_frames() {
    let seed = seed();
    let total = packets_wanted();
    eprintln!("differential: seed {seed} (replay with LBX_DIFF_SEED={seed}), {total} frames");
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut run_time = std::time::Duration::ZERO;
    let per_config = total.div_ceil(PHASES.len() * CONFIGS_PER_PHASE);
    let mut index = 0usize;
    let mut by_reason: HashMap<u32, usize> = HashMap::new();
    let mut refused = 0usize;

    for ring in PHASES {
        // Room for the VIPs' own table sizes besides the configuration's.
        let entries = lbx_common::ring_entries_for(lbx_tests::testrun::RING_VIPS, ring.max(1021));
        let mut tb =
            TestBalancer::load_entries(entries, FLOWS).expect("load the balancer (root needed)");
        let mut model_flows = tb.empty_flows();
        let mut cfg = random_config(&mut rng, ring);
        let mut reasons = tb.reasons().expect("REASONS");
        let mut clock = 1 + rng.range(0, 1000) as u32;
        for round in 0..CONFIGS_PER_PHASE {
            cfg = evolve(&mut rng, &cfg);
            // Every other configuration moves a TCP VIP's ring under a second-chance
            // window, so each phase sees second chances whatever the edits were.
            let moved = round % 2 == 1;
            if moved {
                move_ring(&mut rng, &mut cfg);
            }
            // Idle times of a few seconds and a clock that moves by as much between
            // configurations: flows go idle, and new ones take their slots.
            // A second-chance window now and then, about as long as the clock's steps.
            tb.idle = FlowIdle {
                second_chance_s: if !moved && rng.chance(1, 2) {
                    0
                } else {
                    rng.range(1, 40) as u32
                },
                tcp_s: rng.range(0, 40) as u16,
                udp_s: rng.range(0, 20) as u16,
            };
            clock += rng.range(0, 30) as u32;
            tb.tick(clock).expect("ACTIVE");
            tb.configure(&cfg.config())
                .unwrap_or_else(|e| panic!("seed {seed}: publish: {e:#}\n{}", cfg.toml()));
            let vip_numbers: Vec<u32> = tb.slots.vips.values().copied().collect();
            let backend_slots: Vec<u32> = tb.slots.backends.values().map(|s| s.slot).collect();
            let (vip_before, backend_before) = sum_counters(&tb, &vip_numbers, &backend_slots);
            let mut vip_want: HashMap<u32, Counters> = HashMap::new();
            let mut backend_want: HashMap<u32, Counters> = HashMap::new();
            let model = tb.reference();

            for _ in 0..per_config {
                let frame = match rng.range(0, 10) {
                    0..=5 => valid(&mut rng, &cfg),
                    6..=8 => nearly_valid(&mut rng, &cfg),
                    _ => garbage(&mut rng),
                };
                let d = model.decide(&mut model_flows, &frame);
                let t = Instant::now();
                let run = tb.run(&frame).expect("BPF_PROG_TEST_RUN");
                run_time += t.elapsed();
                let Some(run) = run else {
                    disagreement(
                        seed,
                        index,
                        &cfg,
                        &frame,
                        "the kernel refused a frame of Ethernet size or more",
                        None,
                        &d.output,
                    );
                };
                if run.verdict() != Some(d.verdict) {
                    disagreement(
                        seed,
                        index,
                        &cfg,
                        &frame,
                        &format!(
                            "verdict: program {} ({:?}), model {:?} ({:?})",
                            run.action,
                            run.verdict(),
                            d.verdict,
                            d.reason
                        ),
                        Some(&run.output),
                        &d.output,
                    );
                }
                if run.output != d.output {
                    disagreement(
                        seed,
                        index,
                        &cfg,
                        &frame,
                        &format!("output bytes differ (model reason {:?})", d.reason),
                        Some(&run.output),
                        &d.output,
                    );
                }
                // The reason the model gives must be the counter that moved.
                let r = d.reason as usize;
                let now: u64 = tb
                    .bal
                    .reasons
                    .get(&(r as u32), 0)
                    .expect("REASONS")
                    .iter()
                    .sum();
                if now != reasons[r] + 1 {
                    let all = tb.reasons().expect("REASONS");
                    let moved: Vec<&str> = Reason::ALL
                        .iter()
                        .filter(|x| all[**x as usize] != reasons[**x as usize])
                        .map(|x| x.label())
                        .collect();
                    disagreement(
                        seed,
                        index,
                        &cfg,
                        &frame,
                        &format!(
                            "reason: model {}, program counted {moved:?}",
                            d.reason.label()
                        ),
                        Some(&run.output),
                        &d.output,
                    );
                }
                reasons[r] = now;
                if d.counted() {
                    let b = d.backend.expect("a forwarded frame has a backend");
                    add(
                        vip_want.entry(d.vip.expect("and a VIP")).or_default(),
                        frame.len(),
                        d.new_flow(),
                    );
                    add(
                        backend_want.entry(b.slot).or_default(),
                        frame.len(),
                        d.new_flow(),
                    );
                }
                *by_reason.entry(d.reason as u32).or_default() += 1;
                index += 1;
            }

            // Once per configuration: every reason counter (no other moved), and the
            // VIP and backend counters.
            let all = tb.reasons().expect("REASONS");
            assert_eq!(
                all, reasons,
                "seed {seed}: reason counters moved beyond the model's reasons"
            );
            let (vip_after, backend_after) = sum_counters(&tb, &vip_numbers, &backend_slots);
            for (n, a) in &vip_after {
                let b = &vip_before[n];
                let got = Counters {
                    packets: a.packets - b.packets,
                    bytes: a.bytes - b.bytes,
                    new_flows: a.new_flows - b.new_flows,
                };
                let want = vip_want.get(n).copied().unwrap_or_default();
                assert_eq!(
                    got,
                    want,
                    "seed {seed}: VIP #{n} counters, program vs model\n{}",
                    cfg.toml()
                );
            }
            for (n, a) in &backend_after {
                let b = &backend_before[n];
                let got = Counters {
                    packets: a.packets - b.packets,
                    bytes: a.bytes - b.bytes,
                    new_flows: a.new_flows - b.new_flows,
                };
                let want = backend_want.get(n).copied().unwrap_or_default();
                assert_eq!(
                    got,
                    want,
                    "seed {seed}: backend slot {n} counters, program vs model\n{}",
                    cfg.toml()
                );
            }
            assert!(
                vip_want.keys().all(|n| vip_after.contains_key(n))
                    && backend_want.keys().all(|n| backend_after.contains_key(n)),
                "seed {seed}: the model counted traffic for a VIP or backend not configured"
            );
        }

        // Frames shorter than Ethernet: the kernel refuses them, the model calls them
        // malformed (the program's own check is unreachable through BPF_PROG_TEST_RUN).
        for len in 0..14 {
            let frame = rng.bytes(len);
            assert!(
                tb.run(&frame).expect("BPF_PROG_TEST_RUN").is_none(),
                "a {len}-byte frame ran"
            );
            assert_eq!(
                tb.reference().decide(&mut model_flows, &frame).reason,
                Reason::PassMalformed
            );
            refused += 1;
        }

        // The whole connection table, once per phase.
        let kernel_flows = tb.flows().expect("FLOWS");
        if kernel_flows != model_flows {
            let differ = kernel_flows
                .slots()
                .iter()
                .zip(model_flows.slots())
                .filter(|(k, m)| k != m)
                .count();
            panic!(
                "seed {seed}: connection tables differ after the ring-{ring} phase: {} flows in the program's, \
                 {} in the model's; {differ} of {} slots differ",
                kernel_flows.len(),
                model_flows.len(),
                model_flows.slots().len()
            );
        }
        eprintln!(
            "  ring {ring}: {} configurations, {} flows in both tables",
            CONFIGS_PER_PHASE,
            model_flows.len()
        );
    }

    let secs = started.elapsed().as_secs_f64();
    let summary: Vec<String> = Reason::ALL
        .iter()
        .filter_map(|r| {
            by_reason
                .get(&(*r as u32))
                .map(|n| format!("{} {n}", r.label()))
        })
        .collect();
    eprintln!(
        "differential: {index} frames agreed (+{refused} refused as shorter than Ethernet) in {secs:.1} s \
         ({:.0} frames/s overall; {:.2} s inside BPF_PROG_TEST_RUN), seed {seed}\n  by reason: {}",
        index as f64 / secs,
        run_time.as_secs_f64(),
        summary.join(", ")
    );
    assert!(
        index >= total,
        "only {index} frames checked, wanted {total}"
    );
    for must in [
        Reason::Forwarded,
        Reason::ForwardedSecondChance,
        Reason::ForwardedIcmp,
        Reason::EchoReply,
        Reason::PassIcmpBadInner,
        Reason::PassMalformed,
        Reason::PassNotVip,
        Reason::PassFragment,
        Reason::PassExtensionHeader,
        Reason::DropTooBig,
        Reason::DropNoBackend,
    ] {
        assert!(
            summary.iter().any(|s| s.starts_with(must.label())),
            "seed {seed}: no frame ended as {}: the generator is too narrow",
            must.label()
        );
    }
}
