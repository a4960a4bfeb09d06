//! The balancer loaded (not attached) and driven with BPF_PROG_TEST_RUN: publish a
//! configuration the way the agent does, run one frame, read the counters and the
//! connection table. Used by the packet fixtures, the differential test and `lbx-bench`.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use anyhow::{Context as _, Result};
use aya::{
    TestRun as _, TestRunOptions,
    maps::PerCpuValues,
    programs::{ProgramError, Xdp},
};
use lbx::{
    config::{Config, VipId},
    dataplane::{
        Balancer, FlowIdle,
        generation::Publisher,
        plan::{self, Plan},
        slots::Slots,
    },
};
use lbx_common::{Counters, Reason};

use crate::reference::{FlowTable, Reference, Verdict};

/// The link MTU the tests plan for when a configuration names none.
pub const DEFAULT_MTU: u32 = 1500;

/// Room the program may prepend (the encapsulation) plus slack, for the output buffer.
const OUT_SLACK: usize = 512;

/// What one run of the program did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The `xdp_action` the program returned.
    pub action: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
    /// The kernel-measured run time (meaningful only over many runs).
    pub duration: Duration,
}

impl Run {
    pub fn verdict(&self) -> Option<Verdict> {
        Verdict::from_code(self.action)
    }
}

/// Runs `frame` once through `prog` (repeat = 1: the program sees this frame, not its own
/// earlier output). `Ok(None)` when the kernel refuses the frame (EINVAL: BPF_PROG_TEST_RUN
/// takes no XDP frame shorter than an Ethernet header, nor one beyond a page).
pub fn run_once(prog: &Xdp, frame: &[u8]) -> Result<Option<Run>> {
    let mut out = vec![0u8; frame.len() + OUT_SLACK];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: 1,
        ..TestRunOptions::default()
    };
    match prog.test_run(opts) {
        Ok(r) => {
            out.truncate(r.data_size_out as usize);
            Ok(Some(Run {
                action: r.return_value,
                output: out,
                duration: r.duration,
            }))
        }
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL) => {
            Ok(None)
        }
        Err(e) => Err(e).context("BPF_PROG_TEST_RUN failed"),
    }
}

/// Counters of one VIP or backend slot, summed over CPUs.
pub fn sum(values: &PerCpuValues<Counters>) -> Counters {
    values.iter().fold(Counters::default(), |a, c| Counters {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
        new_flows: a.new_flows + c.new_flows,
    })
}

/// The balancer and what the agent would hold: slot numbers and the published plan.
/// Rings of the largest table size a test balancer loaded for `ring_size` has room for.
pub const RING_VIPS: u32 = 64;

fn ring_entries(ring_size: u32) -> u32 {
    lbx_common::ring_entries_for(RING_VIPS, ring_size)
}

pub struct TestBalancer {
    pub bal: Balancer,
    publisher: Publisher,
    pub slots: Slots,
    /// The plan published last; `None` before the first publication.
    pub plan: Option<Plan>,
    /// The plan published before it: the generation a second chance reads.
    previous: Option<Plan>,
    /// The idle times the next configurations are published with.
    pub idle: FlowIdle,
}

impl TestBalancer {
    /// Loads the balancer with room for `RING_VIPS` Maglev tables of `ring_size` and a
    /// connection table of `flows` entries.
    pub fn load(ring_size: u32, flows: u32) -> Result<Self> {
        Self::load_entries(ring_entries(ring_size), flows)
    }

    /// Loads the balancer with room for `ring_entries` ring entries per generation.
    pub fn load_entries(ring_entries: u32, flows: u32) -> Result<Self> {
        // BPF needs root; anything else (the verifier, map limits) is in the error's chain.
        let bal = Balancer::load(ring_entries, flows, None).with_context(|| {
            format!(
                "load the balancer ({ring_entries} ring entries, {flows} flows; the packet tests run as root)"
            )
        })?;
        Self::with(bal)
    }

    /// As `load`, from another build of the XDP object (`lbx-bench --baseline`).
    pub fn load_object(object: &[u8], ring_size: u32, flows: u32) -> Result<Self> {
        let bal = Balancer::load_object(object, ring_entries(ring_size), flows, None)
            .context("load the balancer from the given object")?;
        Self::with(bal)
    }

    /// The publisher, to ask what its last publication wrote.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    fn with(bal: Balancer) -> Result<Self> {
        Ok(Self {
            bal,
            publisher: Publisher::new().context("create the publication barrier")?,
            slots: Slots::default(),
            plan: None,
            previous: None,
            idle: FlowIdle::default(),
        })
    }

    /// Publishes `config` as the next generation, like the agent: stable slots, counters
    /// of new numbers zeroed, whole generation at once. Backends need a configured MAC.
    pub fn configure(&mut self, config: &Config) -> Result<()> {
        config
            .validate()
            .context("the test configuration is invalid")?;
        let (slots, fresh) = self.slots.assign(config);
        let mtu = config.mtu.unwrap_or(DEFAULT_MTU);
        let plan = plan::build(
            config,
            &slots,
            &BTreeMap::new(),
            mtu,
            self.idle,
            &Default::default(),
            self.plan.as_ref(),
        );
        self.publisher
            .reset_counters(&mut self.bal, &fresh.vips, &fresh.backends)?;
        self.publisher.publish(&mut self.bal, &plan)?;
        // As the agent does after answering: the model knows the settled state.
        self.publisher.settle(&mut self.bal)?;
        self.slots = slots;
        self.previous = self.plan.replace(plan);
        Ok(())
    }

    /// The reference model of what is published now, at the data plane's clock, with the
    /// generation before it and the second chance's window as the publisher wrote it.
    pub fn reference(&self) -> Reference<'_> {
        let model = match &self.plan {
            Some(p) => Reference::new(p),
            None => Reference::unconfigured(),
        }
        .at(self.publisher.clock());
        match &self.previous {
            Some(prev) => model.after(prev, self.second_chance_until()),
            None => model,
        }
    }

    /// `Settings::second_chance_until` of the active generation.
    pub fn second_chance_until(&self) -> u32 {
        let slot = self.bal.active.get(&0, 0).expect("ACTIVE reads").slot;
        let settings = self.bal.settings.get(&slot, 0).expect("SETTINGS reads");
        settings.second_chance_until
    }

    /// The data plane's clock (`Active::now`) as published last.
    pub fn clock(&self) -> u32 {
        self.publisher.clock()
    }

    /// Moves the data plane's clock (`Active::now`) to `now`, as the agent's tick does.
    pub fn tick(&mut self, now: u32) -> Result<()> {
        Ok(self.publisher.tick(&mut self.bal, now)?)
    }

    pub fn run(&self, frame: &[u8]) -> Result<Option<Run>> {
        run_once(self.bal.program(), frame)
    }

    /// Packet counts by reason, summed over CPUs, indexed by `Reason as usize`.
    pub fn reasons(&self) -> Result<Vec<u64>> {
        Reason::ALL
            .iter()
            .map(|r| {
                let v = self.bal.reasons.get(&(*r as u32), 0)?;
                Ok(v.iter().sum())
            })
            .collect()
    }

    pub fn vip_counters(&self, number: u32) -> Result<Counters> {
        Ok(sum(&self.bal.vip_stats.get(&number, 0)?))
    }

    pub fn backend_counters(&self, slot: u32) -> Result<Counters> {
        Ok(sum(&self.bal.backend_stats.get(&slot, 0)?))
    }

    /// The VIP's number (its counters' index).
    pub fn vip_number(&self, vip: VipId) -> Option<u32> {
        self.slots.vips.get(&vip).copied()
    }

    /// The backend's slot (its counters' index).
    pub fn backend_slot(&self, vip: VipId, backend: IpAddr) -> Option<u32> {
        self.slots.backends.get(&(vip, backend)).map(|s| s.slot)
    }

    /// The whole connection table.
    pub fn flows(&self) -> Result<FlowTable> {
        let slots = (0..self.bal.flows.len())
            .map(|i| self.bal.flows.get(i).context("slot in range"))
            .collect::<Result<Vec<_>>>()?;
        Ok(FlowTable::from_slots(slots))
    }

    /// An empty model table the size of the program's.
    pub fn empty_flows(&self) -> FlowTable {
        FlowTable::from_slots(vec![Default::default(); self.bal.flows.len()])
    }

    /// Empties the connection table.
    pub fn clear_flows(&mut self) -> Result<()> {
        self.bal.flows.clear();
        Ok(())
    }
}
