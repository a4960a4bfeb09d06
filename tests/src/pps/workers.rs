//! Threads that send at the same time, one per CPU, each pinned to its CPU
//! (`sched_setaffinity`), inside the rig's namespace, on a veth pair of its own; all start
//! together.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::{
    rig::Rig,
    sender::{Flows, Sender},
};

/// What one CPU sends: copies of a frame with sources from `flows`, on pair `pair`.
#[derive(Clone, Debug)]
pub struct Job {
    pub cpu: usize,
    pub pair: usize,
    pub frame: Vec<u8>,
    pub flows: Flows,
    /// Frames per second to hold to; `None`: as fast as the CPU sends.
    pub pace: Option<f64>,
}

/// When the workers stop.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    After(Duration),
    Batches(u64),
}

/// What a run did: frames each worker's socket took, and the wall time from the common
/// start to the last worker's end.
#[derive(Clone, Debug, Default)]
pub struct Ran {
    pub frames: Vec<u64>,
    pub wall: Duration,
}

impl Ran {
    pub fn total(&self) -> u64 {
        self.frames.iter().sum()
    }

    /// Frames per second, millions, of `count` frames over the wall time.
    pub fn mpps(&self, count: u64) -> f64 {
        count as f64 / self.wall.as_secs_f64() / 1e6
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pin to CPU {cpu}"));
        }
    }
    Ok(())
}

/// Runs every job on its CPU at once, `batch` frames a `sendmmsg`.
pub fn run(rig: &Rig, jobs: &[Job], batch: usize, stop: Stop) -> Result<Ran> {
    if jobs.is_empty() {
        bail!("no CPU to run on");
    }
    let handle = rig.handle()?;
    let barrier = Barrier::new(jobs.len() + 1);
    std::thread::scope(|s| -> Result<Ran> {
        let workers: Vec<_> = jobs
            .iter()
            .map(|job| {
                let (barrier, handle) = (&barrier, &handle);
                let pair = rig.pairs.get(job.pair).cloned();
                s.spawn(move || -> Result<(u64, Instant)> {
                    let ready = (|| {
                        let pair = pair.context("no such pair in the rig")?;
                        Rig::enter(handle)?;
                        pin(job.cpu)?;
                        Sender::new(pair.b_ifindex, &job.frame, batch, job.flows)
                            .with_context(|| format!("AF_PACKET socket on {}", pair.b))
                    })();
                    barrier.wait();
                    let mut sender = ready?;
                    let start = Instant::now();
                    let (mut frames, mut batches) = (0u64, 0u64);
                    loop {
                        match stop {
                            Stop::After(d) if start.elapsed() >= d => break,
                            Stop::Batches(n) if batches >= n => break,
                            _ => {}
                        }
                        frames += sender
                            .send()
                            .with_context(|| format!("send on CPU {}", job.cpu))?;
                        batches += 1;
                        if let Some(pps) = job.pace {
                            let due = start + Duration::from_secs_f64(frames as f64 / pps);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                    }
                    Ok((frames, Instant::now()))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut ran = Ran::default();
        let mut end = start;
        for w in workers {
            let (n, done) = match w.join() {
                Ok(r) => r?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            ran.frames.push(n);
            end = end.max(done);
        }
        ran.wall = end - start;
        Ok(ran)
    })
}

/// The CPUs this process may run on.
pub fn cpus() -> Result<Vec<usize>> {
    // SAFETY: sched_getaffinity fills the set it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}
