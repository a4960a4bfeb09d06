//! Packet fixtures: tables of {description, configuration, input packet, expected verdict,
//! expected output packet, expected counter changes}, run through the loaded balancer with
//! BPF_PROG_TEST_RUN, and through the reference model, which must agree too.
//!
//! A failing packet is reported with both frames decoded field by field and written to a
//! pcap file (input, expected, actual, in that order) whose path is printed.

use std::{fmt::Write as _, net::IpAddr};

use anyhow::Result;
use lbx::config::{Config, VipId};
use lbx_common::{Counters, Reason};

use crate::{
    packets, pcap,
    reference::{FlowTable, Verdict},
    testrun::TestBalancer,
};

/// The VIP and backend counters a forwarded packet adds to.
#[derive(Clone, Copy, Debug)]
pub struct Traffic {
    pub vip: VipId,
    pub backend: IpAddr,
    /// It missed the connection table and was hashed.
    pub new_flow: bool,
}

/// What must happen to one packet.
#[derive(Clone, Debug)]
pub enum Expect {
    /// The program returns `verdict`, counts `reason` once (and no other reason), leaves
    /// `output`, and adds the packet to `traffic`'s counters (no VIP or backend counter
    /// changes otherwise).
    Outcome {
        verdict: Verdict,
        reason: Reason,
        output: Vec<u8>,
        traffic: Option<Traffic>,
    },
    /// BPF_PROG_TEST_RUN refuses the frame (shorter than an Ethernet header): the program
    /// never sees it, and the model calls it malformed.
    Refused,
}

impl Expect {
    /// Passed to the kernel unchanged, counted as `reason`.
    pub fn pass(input: &[u8], reason: Reason) -> Expect {
        Expect::Outcome {
            verdict: Verdict::Pass,
            reason,
            output: input.to_vec(),
            traffic: None,
        }
    }

    /// Dropped (unchanged), counted as `reason`.
    pub fn drop(input: &[u8], reason: Reason) -> Expect {
        Expect::Outcome {
            verdict: Verdict::Drop,
            reason,
            output: input.to_vec(),
            traffic: None,
        }
    }

    /// Sent back out as `output`, counted as forwarded and as `traffic`.
    pub fn tx(output: Vec<u8>, traffic: Traffic) -> Expect {
        Expect::tx_as(Reason::Forwarded, output, traffic)
    }

    /// Sent back out as `output`, counted as `reason` and as `traffic`.
    pub fn tx_as(reason: Reason, output: Vec<u8>, traffic: Traffic) -> Expect {
        Expect::Outcome {
            verdict: Verdict::Tx,
            reason,
            output,
            traffic: Some(traffic),
        }
    }

    /// Sent back out as `output`, counted as `reason` alone: no VIP or backend counter
    /// moves (an ICMP error forwarded, an echo reply).
    pub fn sent(reason: Reason, output: Vec<u8>) -> Expect {
        Expect::Outcome {
            verdict: Verdict::Tx,
            reason,
            output,
            traffic: None,
        }
    }
}

/// One packet of a case.
#[derive(Clone, Debug)]
pub struct Send {
    pub what: String,
    pub input: Vec<u8>,
    pub expect: Expect,
}

#[derive(Clone, Debug)]
pub enum Step {
    /// Publish this configuration as the next generation.
    Configure(Box<Config>),
    /// Move the data plane's clock (`Active::now`) to this second.
    Tick(u32),
    Send(Send),
}

/// A fixture: steps run in order on a balancer whose connection table starts empty.
#[derive(Clone, Debug)]
pub struct Case {
    pub description: String,
    pub steps: Vec<Step>,
}

impl Case {
    /// The common case: one configuration, one packet.
    pub fn one(
        description: impl Into<String>,
        config: &Config,
        input: Vec<u8>,
        expect: Expect,
    ) -> Case {
        let description = description.into();
        Case {
            steps: vec![
                Step::Configure(Box::new(config.clone())),
                Step::Send(Send {
                    what: description.clone(),
                    input,
                    expect,
                }),
            ],
            description,
        }
    }
}

/// Sums of every counter the balancer keeps, to compare before and after a packet.
struct Snapshot {
    reasons: Vec<u64>,
    vips: Vec<(VipId, u32, Counters)>,
    backends: Vec<((VipId, IpAddr), u32, Counters)>,
}

fn snapshot(tb: &TestBalancer) -> Result<Snapshot> {
    let mut vips = Vec::new();
    for (id, n) in &tb.slots.vips {
        vips.push((*id, *n, tb.vip_counters(*n)?));
    }
    let mut backends = Vec::new();
    for (key, s) in &tb.slots.backends {
        backends.push((*key, s.slot, tb.backend_counters(s.slot)?));
    }
    Ok(Snapshot {
        reasons: tb.reasons()?,
        vips,
        backends,
    })
}

fn delta(a: &Counters, b: &Counters) -> Counters {
    Counters {
        packets: b.packets - a.packets,
        bytes: b.bytes - a.bytes,
        new_flows: b.new_flows - a.new_flows,
    }
}

/// What the counters must have gained for a packet of `bytes` that went to `traffic`.
fn gained(traffic: Option<Traffic>, matches: bool, bytes: usize) -> Counters {
    match traffic {
        Some(t) if matches => Counters {
            packets: 1,
            bytes: bytes as u64,
            new_flows: u64::from(t.new_flow),
        },
        _ => Counters::default(),
    }
}

/// Checks one packet against the program and the model; returns what was wrong.
fn check_send(
    tb: &TestBalancer,
    model_flows: &mut FlowTable,
    case: &str,
    send: &Send,
) -> Result<Vec<String>> {
    let mut wrong = Vec::new();
    let model = tb.reference().decide(model_flows, &send.input);
    let before = snapshot(tb)?;
    let run = tb.run(&send.input)?;
    let after = snapshot(tb)?;
    let (verdict, reason, output, traffic) = match &send.expect {
        Expect::Refused => {
            if let Some(r) = &run {
                wrong.push(format!(
                    "the kernel ran the {}-byte frame (action {}); expected it to refuse it",
                    send.input.len(),
                    r.action
                ));
            }
            if model.reason != Reason::PassMalformed {
                wrong.push(format!(
                    "model: {:?}, expected PassMalformed for a frame shorter than Ethernet",
                    model.reason
                ));
            }
            if before.reasons != after.reasons {
                wrong.push("a refused frame changed the reason counters".into());
            }
            return Ok(wrong);
        }
        Expect::Outcome {
            verdict,
            reason,
            output,
            traffic,
        } => (*verdict, *reason, output, *traffic),
    };
    let Some(run) = run else {
        wrong.push("the kernel refused to run the frame (EINVAL)".into());
        return Ok(wrong);
    };

    // The program.
    if run.verdict() != Some(verdict) {
        wrong.push(format!(
            "verdict: expected {verdict:?}, program returned {} ({:?})",
            run.action,
            run.verdict()
        ));
    }
    let mut frames_differ = false;
    if &run.output != output {
        frames_differ = true;
        wrong.push(format!(
            "program output differs from the expected frame:\n{}",
            packets::compare(output, &run.output)
        ));
    }
    for r in Reason::ALL {
        let d = after.reasons[*r as usize] - before.reasons[*r as usize];
        let want = u64::from(*r == reason);
        if d != want {
            wrong.push(format!(
                "reason counter {}: +{d}, expected +{want}",
                r.label()
            ));
        }
    }
    for ((id, n, a), (_, _, b)) in before.vips.iter().zip(&after.vips) {
        let want = gained(
            traffic,
            traffic.is_some_and(|t| t.vip == *id),
            send.input.len(),
        );
        let got = delta(a, b);
        if got != want {
            wrong.push(format!(
                "VIP {id} (#{n}) counters: +{got:?}, expected +{want:?}"
            ));
        }
    }
    for (((id, addr), slot, a), (_, _, b)) in before.backends.iter().zip(&after.backends) {
        let is_it = traffic.is_some_and(|t| t.vip == *id && t.backend == *addr);
        let want = gained(traffic, is_it, send.input.len());
        let got = delta(a, b);
        if got != want {
            wrong.push(format!(
                "backend {addr} of {id} (slot {slot}) counters: +{got:?}, expected +{want:?}"
            ));
        }
    }
    if let Some(t) = traffic
        && !tb.slots.backends.contains_key(&(t.vip, t.backend))
    {
        wrong.push(format!(
            "the fixture names {} of {}, which is not configured",
            t.backend, t.vip
        ));
    }

    // The model.
    if (model.verdict, model.reason) != (verdict, reason) {
        wrong.push(format!(
            "model: {:?} {:?}, expected {verdict:?} {reason:?}",
            model.verdict, model.reason
        ));
    }
    if &model.output != output {
        frames_differ = true;
        wrong.push(format!(
            "model output differs from the expected frame:\n{}",
            packets::compare(output, &model.output)
        ));
    }
    if let Some(t) = traffic {
        let chosen = model.backend.map(|b| b.addr);
        if chosen != Some(t.backend) || model.new_flow() != t.new_flow {
            wrong.push(format!(
                "model chose {chosen:?} (new flow: {}), expected {} (new flow: {})",
                model.new_flow(),
                t.backend,
                t.new_flow
            ));
        }
    }

    if !wrong.is_empty() {
        let mut frames: Vec<&[u8]> = vec![&send.input, output, &run.output];
        if frames_differ {
            frames.push(&model.output);
        }
        let name = if send.what == case {
            case.to_owned()
        } else {
            format!("{case}-{}", send.what)
        };
        match pcap::write(&name, &frames) {
            Ok(path) => wrong.push(format!(
                "frames written to {} (1: input, 2: expected, 3: program output{})",
                path.display(),
                if frames_differ {
                    ", 4: model output"
                } else {
                    ""
                }
            )),
            Err(e) => wrong.push(format!("could not write the pcap file: {e:#}")),
        }
        wrong.push(format!(
            "input frame decoded:\n{}",
            packets::fields(&send.input)
                .iter()
                .fold(String::new(), |mut s, (k, v)| {
                    let _ = writeln!(s, "  {k:<26} {v}");
                    s
                })
        ));
    }
    Ok(wrong)
}

/// Runs `cases` on `tb` (connection table emptied before each case) and panics with every
/// failure found; also panics if fewer than `min_packets` packets were checked.
pub fn run_cases(tb: &mut TestBalancer, cases: &[Case], min_packets: usize) {
    let filter = std::env::var("LBX_FIXTURE").ok();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases {
        if let Some(f) = &filter
            && !case.description.contains(f.as_str())
        {
            continue;
        }
        tb.clear_flows().expect("empty the connection table");
        let mut model_flows = tb.empty_flows();
        for step in &case.steps {
            match step {
                Step::Configure(c) => tb.configure(c).unwrap_or_else(|e| {
                    panic!("{}: publish the configuration: {e:#}", case.description)
                }),
                Step::Tick(now) => tb.tick(*now).unwrap_or_else(|e| {
                    panic!("{}: move the clock to {now}: {e:#}", case.description)
                }),
                Step::Send(send) => {
                    checked += 1;
                    let wrong = check_send(tb, &mut model_flows, &case.description, send)
                        .unwrap_or_else(|e| panic!("{}: {}: {e:#}", case.description, send.what));
                    if !wrong.is_empty() {
                        failures.push(format!(
                            "FIXTURE FAILED: {}\n  packet: {}\n  {}",
                            case.description,
                            send.what,
                            wrong.join("\n  ")
                        ));
                    }
                }
            }
        }
    }
    if filter.is_some() && checked == 0 {
        eprintln!("skipped: LBX_FIXTURE={filter:?} matches no fixture of this test");
        return;
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} fixture packets failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    if filter.is_none() {
        assert!(
            checked >= min_packets,
            "only {checked} fixture packets ran, expected at least {min_packets}"
        );
    }
    eprintln!("{checked} fixture packets: program and model as expected");
}
