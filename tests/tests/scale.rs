//! Scale: `MAX_VIPS` VIPs (IPv4 and IPv6, TCP and UDP, some on every port, half with a
//! table size of their own) published into one balancer and driven with
//! BPF_PROG_TEST_RUN. Frames to a sample of VIPs land where the reference model says;
//! a change to one VIP rewrites that VIP's ring alone (the rest of the rings map is read
//! back byte for byte) and moves no other VIP's flows; limits refuse clearly and change
//! nothing.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lbx::config::{Config, Protocol, VipId};
use lbx_common::{MAX_VIPS, ring_elems, ring_entries_for};
use lbx_tests::{
    packets::{self, L4},
    reference::Verdict,
    rng::Rng,
    testrun::TestBalancer,
};

/// The configuration's table size, and the own one of every other VIP.
const TABLE: u32 = 4093;
const OWN_TABLE: u32 = 1021;
const FLOWS: u32 = 1 << 14;
const BACKENDS: u32 = 3;
/// Flows sent to each VIP of the sample.
const FLOWS_PER_VIP: u16 = 8;

fn vip_id(i: u32) -> VipId {
    let v6 = i % 4 == 1;
    // 256 addresses of each family, four VIPs on each.
    let address = if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, (i / 4) as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(
            198,
            18,
            (i / 4 / 250) as u8,
            (i / 4 % 250) as u8 + 1,
        ))
    };
    let protocol = if i % 8 == 3 {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    // Every 16th VIP takes every port of its address and protocol.
    let port = if i % 16 == 6 { 0 } else { 80 + (i % 4) as u16 };
    VipId {
        address,
        port,
        protocol,
    }
}

fn backend(i: u32, b: u32) -> IpAddr {
    if vip_id(i).address.is_ipv6() {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, i as u16, b as u16 + 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(
            10,
            1 + (i / 250) as u8,
            (i % 250) as u8,
            b as u8 + 1,
        ))
    }
}

/// `count` VIPs of `BACKENDS` backends; `weight(i, b)` gives each backend's weight.
fn config_text(count: u32, weight: impl Fn(u32, u32) -> u32) -> String {
    let mut s = format!("seed = 7\ntable_size = {TABLE}\nmtu = 1500\n");
    for i in 0..count {
        let id = vip_id(i);
        let port = if id.port == 0 {
            "\"*\"".to_owned()
        } else {
            id.port.to_string()
        };
        let proto = if id.protocol == Protocol::Udp {
            "udp"
        } else {
            "tcp"
        };
        let _ = writeln!(
            s,
            "[[vip]]\naddress = \"{}\"\nport = {port}\nprotocol = \"{proto}\"",
            id.address
        );
        if i % 2 == 1 {
            let _ = writeln!(s, "table_size = {OWN_TABLE}");
        }
        for b in 0..BACKENDS {
            let _ = writeln!(
                s,
                "[[vip.backend]]\naddress = \"{}\"\nweight = {}\nmac = \"02:00:00:{:02x}:{:02x}:{:02x}\"",
                backend(i, b),
                weight(i, b),
                (i >> 8) as u8,
                i as u8,
                b as u8
            );
        }
    }
    s
}

fn config(weight: impl Fn(u32, u32) -> u32) -> Config {
    let text = config_text(MAX_VIPS, weight);
    Config::from_toml(&text).expect("the scale configuration is valid")
}

/// A frame of flow `f` to VIP `i` (a TCP SYN or a UDP datagram).
fn frame(i: u32, f: u16) -> Vec<u8> {
    let id = vip_id(i);
    let dport = if id.port == 0 { 1000 + f } else { id.port };
    let sport = 20000 + f;
    let l4 = if id.protocol == Protocol::Udp {
        L4::udp(sport, dport)
    } else {
        L4::syn(sport, dport)
    };
    let src = if id.address.is_ipv6() {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc1, 0, 0, 0, 0, 7))
    } else {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))
    };
    packets::simple(src, id.address, l4, b"scale")
}

/// Sends each sampled VIP's flows through the program with an empty connection table,
/// so every flow takes the ring; each must agree with the reference model. Returns the
/// backend slot of each (VIP, flow).
fn ring_choices(tb: &mut TestBalancer, sample: &[u32]) -> Vec<(u32, u16, u32)> {
    tb.clear_flows().expect("clear the connection table");
    let model = tb.reference();
    let mut flows = tb.empty_flows();
    let mut out = Vec::new();
    for &i in sample {
        for f in 0..FLOWS_PER_VIP {
            let frame = frame(i, f);
            let d = model.decide(&mut flows, &frame);
            let run = tb.run(&frame).expect("BPF_PROG_TEST_RUN").expect("a frame");
            assert_eq!(
                run.verdict(),
                Some(d.verdict),
                "VIP {} flow {f}: program {} , model {:?} ({:?})",
                vip_id(i),
                run.action,
                d.verdict,
                d.reason
            );
            assert_eq!(
                d.verdict,
                Verdict::Tx,
                "VIP {} flow {f}: {:?}",
                vip_id(i),
                d.reason
            );
            assert_eq!(
                run.output,
                d.output,
                "VIP {} flow {f}: output bytes",
                vip_id(i)
            );
            out.push((i, f, d.backend.expect("forwarded").slot));
        }
    }
    out
}

/// Where each VIP's ring is in the active generation: VIP number to (first element,
/// elements).
fn ring_regions(tb: &TestBalancer) -> Vec<(u32, u32, u32)> {
    let slot = tb.bal.active.get(&0, 0).expect("ACTIVE").slot;
    let table = tb.bal.vips.get(slot).expect("VIPS");
    table
        .entries
        .iter()
        .filter(|e| e.key.family != 0 && e.ring_size != 0)
        .map(|e| (u32::from(e.id), e.ring_base, ring_elems(e.ring_size)))
        .collect()
}

/// Elements of the rings map that differ between two snapshots.
fn changed(before: &[u64], after: &[u64]) -> Vec<usize> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn scale_a_thousand_vips_and_a_change_to_one_rewrites_only_its_ring() {
    // Half the VIPs at the configuration's size, half at their own.
    let need = ring_entries_for(MAX_VIPS / 2, TABLE) + ring_entries_for(MAX_VIPS / 2, OWN_TABLE);
    let mut tb = TestBalancer::load_entries(need, FLOWS).expect("load the balancer (root needed)");
    let base = config(|_, b| 100 + b);
    // Twice: each generation slot then holds every ring once.
    tb.configure(&base).expect("publish 1,024 VIPs");
    assert_eq!(tb.publisher().rings_written(), MAX_VIPS as usize);
    tb.configure(&base).expect("publish them again");
    assert_eq!(tb.publisher().rings_written(), MAX_VIPS as usize);

    let mut rng = Rng::new(0x5ca1e);
    let mut sample: Vec<u32> = (0..48)
        .map(|_| rng.range(0, MAX_VIPS as usize) as u32)
        .collect();
    // The changed VIPs are in the sample, and both families, protocols, port-0 VIPs
    // and both table sizes are.
    let (k, j) = (517u32, 230u32);
    sample.extend([k, j, 0, 1, 3, 6, 22]);
    sample.sort_unstable();
    sample.dedup();
    let before = ring_choices(&mut tb, &sample);
    let rings_before = tb.bal.rings.snapshot();

    // One backend of VIP k reweighted: only its ring is rebuilt and written, into the
    // slot that held the same generation.
    tb.configure(&config(|i, b| if i == k && b == 0 { 900 } else { 100 + b }))
        .expect("publish a change to one VIP");
    assert_eq!(tb.publisher().rings_written(), 1, "only VIP {k}'s ring");
    let regions = ring_regions(&tb);
    let k_number = tb.vip_number(vip_id(k)).expect("VIP k numbered");
    let (_, k_base, k_elems) = *regions
        .iter()
        .find(|r| r.0 == k_number)
        .expect("VIP k has a ring");
    let diff = changed(&rings_before, &tb.bal.rings.snapshot());
    assert!(!diff.is_empty(), "VIP {k}'s ring did not change");
    let outside: Vec<usize> = diff
        .iter()
        .copied()
        .filter(|&e| !(k_base as usize..(k_base + k_elems) as usize).contains(&e))
        .collect();
    assert!(
        outside.is_empty(),
        "{} ring elements changed outside VIP {k}'s ring, first at {}",
        outside.len(),
        outside[0]
    );

    // The flows of every other VIP keep their backends; some of k's move.
    let after = ring_choices(&mut tb, &sample);
    let moved: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a.2 != b.2)
        .map(|(a, _)| (a.0, a.1))
        .collect();
    assert!(
        moved.iter().all(|(i, _)| *i == k),
        "flows of other VIPs moved: {moved:?}"
    );

    // A second change, to VIP j: written are the rings that changed in either of the
    // last two generations (k's and j's), as the slot written holds the generation
    // before last.
    let rings_before = tb.bal.rings.snapshot();
    tb.configure(&config(|i, b| match (i, b) {
        (i, 0) if i == k => 900,
        (i, 2) if i == j => 5,
        _ => 100 + b,
    }))
    .expect("publish a change to another VIP");
    assert_eq!(
        tb.publisher().rings_written(),
        2,
        "VIP {k}'s and {j}'s rings"
    );
    let regions = ring_regions(&tb);
    let written: Vec<(u32, u32)> = [k, j]
        .iter()
        .map(|v| {
            let n = tb.vip_number(vip_id(*v)).expect("numbered");
            let r = regions.iter().find(|r| r.0 == n).expect("a ring");
            (r.1, r.1 + r.2)
        })
        .collect();
    let diff = changed(&rings_before, &tb.bal.rings.snapshot());
    assert!(
        diff.iter().all(|&e| written
            .iter()
            .any(|(a, b)| (*a as usize..*b as usize).contains(&e))),
        "ring elements changed outside VIPs {k} and {j}"
    );
    let later = ring_choices(&mut tb, &sample);
    let moved: Vec<_> = after
        .iter()
        .zip(&later)
        .filter(|(a, b)| a.2 != b.2)
        .map(|(a, _)| a.0)
        .collect();
    assert!(
        moved.iter().all(|i| *i == j),
        "flows of other VIPs moved: {moved:?}"
    );
}

#[test]
fn scale_limits_refuse_clearly_and_change_nothing() {
    // Room for 1,024 rings of the VIPs' own size only.
    let entries = ring_entries_for(MAX_VIPS, OWN_TABLE);
    let mut tb =
        TestBalancer::load_entries(entries, FLOWS).expect("load the balancer (root needed)");
    let own = |text: String| {
        text.replace(
            &format!("table_size = {TABLE}\n"),
            &format!("table_size = {OWN_TABLE}\n"),
        )
    };
    let fits = Config::from_toml(&own(config_text(MAX_VIPS, |_, b| 100 + b))).expect("valid");
    tb.configure(&fits)
        .expect("1,024 VIPs of the small size fit");
    let generation = tb.publisher().generation();
    let sample = [0u32, 1, 2, 3, 6, 700, 1023];
    let before = ring_choices(&mut tb, &sample);

    // One VIP too many: refused by validation, naming the limit.
    let e = Config::from_toml(&config_text(MAX_VIPS + 1, |_, b| 100 + b)).unwrap_err();
    let msg = e.to_string();
    for want in ["1025 VIPs", "at most 1024", "MAX_VIPS"] {
        assert!(msg.contains(want), "{msg:?} does not say {want:?}");
    }

    // Rings beyond the balancer's room: refused before anything is written, naming what
    // they need, the room and the flag that raises it.
    let big = config(|_, b| 100 + b);
    let e = tb.configure(&big).unwrap_err();
    let msg = format!("{e:#}");
    let need = ring_entries_for(MAX_VIPS / 2, TABLE) + ring_entries_for(MAX_VIPS / 2, OWN_TABLE);
    for want in [
        format!("{need} ring entries"),
        format!("at most {entries}"),
        "--ring-entries".to_owned(),
    ] {
        assert!(msg.contains(&want), "{msg:?} does not say {want:?}");
    }
    assert_eq!(
        tb.publisher().generation(),
        generation,
        "no generation published"
    );
    assert_eq!(
        ring_choices(&mut tb, &sample),
        before,
        "the flows go where they went"
    );
}
