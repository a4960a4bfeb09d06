//! Runs one scenario under one policy on a fresh test network (one lb, or a cluster of lb
//! nodes: [`Net`]): capacity servers on the backends, lbx configured for the policy, the load generator on the client, the scenario's
//! events on time, the agent's status polled (every 100 ms for state changes, kept once a
//! second) and the host's CPU sampled every second.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};

use super::cpu::Meter;
use super::net::Net;
use super::records::{self, Record};
use super::scenario::{ADMIN_PORT, Change, PORT, Policy, REQUEST_TIMEOUT_MS, Scenario, WARMUP_S};
use super::stats::{Removal, Series, Summary, connection_errors_outside};
use crate::netns::Netns;
use crate::process::{Process, run_bounded};
use crate::{Host, VIP_V4, backend_name, locate_binary};

/// Health checks of every policy: HTTP, through the same queue as requests, every 200 ms,
/// two failures to fall, two successes to rise. The agent accepts no timeout longer than the
/// interval, so the timeout is the interval.
pub const HEALTH_INTERVAL_MS: u64 = 200;
pub const HEALTH_TIMEOUT_MS: u64 = 200;
pub const HEALTH_FALL: u32 = 2;
pub const HEALTH_RISE: u32 = 2;
/// The time the target for scenario 3 is measured against: `fall` probe intervals.
pub fn fall_time_s() -> f64 {
    (HEALTH_INTERVAL_MS * u64::from(HEALTH_FALL)) as f64 / 1e3
}
/// Limit for a server to say `listening`, for the backends to be up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long before its start the load generator is launched.
const START_DELAY: Duration = Duration::from_millis(1500);
/// Most requests in flight in the load generator.
const MAX_IN_FLIGHT: usize = 4000;
/// How often the agent's status is polled for backends going down or up.
const POLL: Duration = Duration::from_millis(100);
/// After a backend goes down, how long connection errors still count as its doing: flows in
/// flight to it move when it leaves the table, and one that was due just before is reset.
const DOWN_SETTLE_S: f64 = 0.5;

/// The benchmark's programs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub lbx: PathBuf,
    pub capacity_server: PathBuf,
    pub loadgen: PathBuf,
}

impl Bins {
    /// From LBX_BIN, LBX_CAPACITY_SERVER and LBX_LOADGEN, else next to this executable.
    pub fn locate() -> anyhow::Result<Self> {
        let hint = "build it with `cargo build --release -p lbx-tests --bins`";
        Ok(Self {
            lbx: crate::Binaries::locate_lbx()?,
            capacity_server: locate_binary("LBX_CAPACITY_SERVER", "lbx-capacity-server", hint)?,
            loadgen: locate_binary("LBX_LOADGEN", "lbx-loadgen", hint)?,
        })
    }

    /// Whether this lbx has adaptive weights (`lbx vip adaptive`).
    pub fn lbx_has_adaptive(&self) -> bool {
        let mut cmd = std::process::Command::new(&self.lbx);
        cmd.args(["vip", "adaptive", "--help"]);
        run_bounded(cmd, Duration::from_secs(10)).is_ok_and(|out| out.status.success())
    }
}

/// One backend as `lbx status` showed it at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendSample {
    pub name: String,
    /// `active`, `down` or `draining`.
    pub state: String,
    pub table_slots: u64,
    pub effective_weight: f64,
    /// The health checks' smoothed probe latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_latency_ms: Option<f64>,
    /// The `adaptive` and `signals` objects of `lbx status --json`, as they are.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub adaptive: serde_json::Value,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub signals: serde_json::Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at_s: f64,
    pub backends: Vec<BackendSample>,
}

/// A backend's state changing (`active`, `down`, `draining`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at_s: f64,
    pub backend: String,
    pub state: String,
}

/// An event as it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    pub at_s: f64,
    pub what: String,
}

/// Everything one run produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    pub policy: String,
    /// Why the run did not happen (e.g. this lbx has no adaptive mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Over `[WARMUP_S, duration)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// Over the whole run, warm-up included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_all: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<Series>,
    /// Scenario 3: how long requests still reached the dead backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal: Option<Removal>,
    /// Connection errors (refused, reset) not explained by a dead backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unexplained_connection_errors: Option<u64>,
    /// Backends going down and up, as the agent's status showed them (polled every 100 ms).
    #[serde(default)]
    pub transitions: Vec<Transition>,
    /// Seconds live backends spent out of the table, summed over backends: the health checks
    /// taking out an overloaded one (a dead backend's time out is not counted).
    #[serde(default)]
    pub live_down_s: f64,
    #[serde(default)]
    pub events: Vec<Fired>,
    #[serde(default)]
    pub samples: Vec<Sample>,
    /// Host CPU busy share per second (all cores), percent.
    #[serde(default)]
    pub cpu_busy_pct: Vec<f64>,
    /// The part of it used by the run's own processes (lbx, servers, load generator).
    #[serde(default)]
    pub cpu_ours_pct: Vec<f64>,
    /// The load generator's records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<PathBuf>,
}

impl RunResult {
    pub fn skipped(scenario: &Scenario, policy: Policy, why: &str) -> Self {
        Self {
            scenario: scenario.name.clone(),
            policy: policy.name().to_owned(),
            skipped: Some(why.to_owned()),
            ..Default::default()
        }
    }
}

/// The VIP every run balances.
pub fn vip() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), PORT)
}

/// The VIP's backends as `lbx status` or `lbx stats` (JSON) list them.
pub fn vip_backends(doc: &serde_json::Value) -> anyhow::Result<&Vec<serde_json::Value>> {
    let name = format!("{}/tcp", vip());
    doc["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["vip"] == name.as_str()))
        .and_then(|v| v["backends"].as_array())
        .with_context(|| format!("no VIP {name} in the agent's answer: {doc}"))
}

/// Backend `i`'s capacity server at `rps`, in its namespace (`b`): on the VIP (the balanced
/// requests) and on the backend's own address (the health checks), with its control
/// endpoint on its own address only.
pub fn capacity_server(b: &Host, bin: &Path, i: usize, rps: u32) -> Command {
    let own = SocketAddr::new(b.ipv4.into(), PORT);
    let admin = SocketAddr::new(b.ipv4.into(), ADMIN_PORT);
    let mut cmd = b.netns.command(bin);
    cmd.args(["--name", &backend_name(i), "--rps", &rps.to_string()])
        .args(["--listen", &vip().to_string(), "--listen", &own.to_string()])
        .args(["--admin", &admin.to_string()]);
    cmd
}

/// `GET /admin/capacity?rps=N` to backend `b`'s own address, from `from` (a namespace on its
/// network).
pub fn set_capacity(from: &Netns, b: &Host, rps: u32, timeout: Duration) -> anyhow::Result<()> {
    let addr = SocketAddr::new(b.ipv4.into(), ADMIN_PORT);
    let request = super::http::request(&format!("/admin/capacity?rps={rps}"), &addr.to_string());
    let answer = from.run(|| -> anyhow::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(&request)?;
        let mut answer = Vec::new();
        s.take(super::http::MAX_RESPONSE as u64)
            .read_to_end(&mut answer)?;
        Ok(answer)
    })??;
    let status = super::http::parse_response(&answer).map(|a| a.status);
    ensure!(
        status == Some(200),
        "{addr} answered the capacity change with {:?}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// The VIP's backends `(i, weight)` under `policy`, 1-based.
fn backend_weights(scenario: &Scenario, policy: Policy) -> Vec<(usize, u32)> {
    scenario
        .weights(policy)
        .iter()
        .copied()
        .enumerate()
        .map(|(i, w)| (i + 1, w))
        .collect()
}

/// A run in progress. Field order is drop order: our processes stop before the network
/// removes the namespaces they live in.
struct Run<'a> {
    servers: Vec<Option<Process>>,
    loadgen: Option<Process>,
    net: Net,
    bins: &'a Bins,
    scenario: &'a Scenario,
    policy: Policy,
    /// Current capacity of each backend (changed by events).
    capacities: Vec<u32>,
    /// Each backend's state at the last poll.
    states: BTreeMap<String, String>,
    /// Server processes started so far, for unique log names.
    starts: usize,
}

/// Runs `scenario` under `policy` through `lb_nodes` lbs (more than one: a cluster); the load
/// generator's CSV goes to `out_dir`.
pub fn run(
    bins: &Bins,
    scenario: &Scenario,
    policy: Policy,
    lb_nodes: usize,
    out_dir: &Path,
) -> RunResult {
    let mut result = RunResult {
        scenario: scenario.name.clone(),
        policy: policy.name().to_owned(),
        ..Default::default()
    };
    // The network goes as soon as this returns, also on failure.
    let outcome = (|| -> anyhow::Result<()> {
        let net = Net::build(lb_nodes, &backend_weights(scenario, policy))?;
        let mut run = Run {
            servers: Vec::new(),
            loadgen: None,
            net,
            bins,
            scenario,
            policy,
            capacities: scenario.capacities.clone(),
            states: BTreeMap::new(),
            starts: 0,
        };
        let done = run.execute(out_dir, &mut result);
        if done.is_err() {
            eprintln!("{}", run.log_tails());
        }
        done
    })();
    if let Err(e) = outcome {
        result.error = Some(format!("{e:#}"));
    }
    result
}

impl Run<'_> {
    fn execute(&mut self, out_dir: &Path, result: &mut RunResult) -> anyhow::Result<()> {
        // One connection per request: give the client the whole port range.
        self.net
            .client()
            .netns
            .sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        for i in 1..=self.scenario.capacities.len() {
            self.servers.push(None);
            self.start_server(i)?;
        }
        self.configure_lbx()?;
        self.wait_all_up()?;

        let csv = out_dir.join(format!("{}-{}.csv", self.scenario.name, self.policy.name()));
        let start_at = SystemTime::now() + START_DELAY;
        let start_ms = start_at.duration_since(UNIX_EPOCH)?.as_millis();
        let args: Vec<String> = vec![
            "--target".into(),
            vip().to_string(),
            "--schedule".into(),
            self.scenario.rate_arg(),
            "--duration-s".into(),
            self.scenario.duration_s.to_string(),
            "--timeout-ms".into(),
            REQUEST_TIMEOUT_MS.to_string(),
            "--seed".into(),
            self.scenario.seed.to_string(),
            "--start-at-ms".into(),
            start_ms.to_string(),
            "--max-in-flight".into(),
            MAX_IN_FLIGHT.to_string(),
            "--out".into(),
            csv.display().to_string(),
        ];
        let mut cmd = self.net.client().netns.command(&self.bins.loadgen);
        cmd.args(&args);
        let mut loadgen = Process::spawn("loadgen", cmd, self.net.dir())?;
        let ready = loadgen.wait_for_line("ready", START_DELAY);
        self.loadgen = Some(loadgen);
        ready?;

        self.timeline(start_at, result)?;

        let status = self
            .loadgen
            .as_mut()
            .and_then(|p| p.stop())
            .context("the load generator's exit status is unknown")?;
        ensure!(status.success(), "the load generator failed ({status})");
        let text = std::fs::read_to_string(&csv)
            .with_context(|| format!("failed to read {}", csv.display()))?;
        let records = records::from_csv(&text)?;
        self.analyse(&records, result);
        result.csv = Some(csv);
        Ok(())
    }

    /// Fires the scenario's events on time and samples once a second until the load
    /// generator has finished.
    fn timeline(&mut self, start_at: SystemTime, result: &mut RunResult) -> anyhow::Result<()> {
        let elapsed = || match SystemTime::now().duration_since(start_at) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let duration = self.scenario.duration_s;
        let limit = duration + REQUEST_TIMEOUT_MS as f64 / 1e3 + 20.0;
        let mut events: VecDeque<_> = self.scenario.events.iter().cloned().collect();
        let mut next_sample = 0.0;
        let mut next_poll = 0.0;
        let mut cpu = Meter::new(&self.pids());
        loop {
            let t = elapsed();
            while let Some(e) = events.front().filter(|e| e.at_s <= t).cloned() {
                events.pop_front();
                let at_s = elapsed();
                self.fire(&e.change)
                    .with_context(|| format!("event at {} s: {}", e.at_s, e.describe()))?;
                result.events.push(Fired {
                    at_s,
                    what: e.describe(),
                });
            }
            if t >= next_poll && t < duration {
                next_poll += POLL.as_secs_f64();
                let keep = t >= next_sample;
                if keep {
                    next_sample += 1.0;
                    if let Some(u) = cpu.sample(&self.pids()) {
                        result.cpu_busy_pct.push(u.busy_pct);
                        result.cpu_ours_pct.push(u.ours_pct);
                    }
                }
                match self.sample(t) {
                    Ok(s) => {
                        for b in &s.backends {
                            if self.states.get(&b.name) != Some(&b.state) {
                                self.states.insert(b.name.clone(), b.state.clone());
                                result.transitions.push(Transition {
                                    at_s: t,
                                    backend: b.name.clone(),
                                    state: b.state.clone(),
                                });
                            }
                        }
                        if keep {
                            result.samples.push(s);
                        }
                    }
                    Err(e) => eprintln!("warning: `lbx status` at {t:.1} s: {e:#}"),
                }
            }
            let loadgen = self.loadgen.as_mut().expect("started");
            if t > duration && !loadgen.is_running() {
                return Ok(());
            }
            if t > limit {
                bail!("the load generator has not finished {limit:.0} s after its start");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn analyse(&self, records: &[Record], result: &mut RunResult) {
        let duration = self.scenario.duration_s;
        result.summary = Some(Summary::of(records, WARMUP_S.min(duration), duration));
        result.summary_all = Some(Summary::of(records, 0.0, duration));
        result.series = Some(Series::of(records, duration));
        // The dead backend's window: from when its server was stopped (as fired, which can
        // be a few ms after the scheduled time) to when it was started again.
        let fired = |kind: fn(&Change) -> bool| {
            self.scenario
                .events
                .iter()
                .zip(&result.events)
                .find(|(e, _)| kind(&e.change))
                .map(|(_, f)| f.at_s)
        };
        let stop = fired(|c| matches!(c, Change::Stop { .. }));
        let start = fired(|c| matches!(c, Change::Start { .. })).unwrap_or(duration);
        let dead = stop.map(|stop| (stop, start));
        result.live_down_s = self.live_down_s(&result.transitions, dead);
        // Connection errors something other than lbx's table changes explains: requests in
        // flight to a backend when it went down (dead or taken out by the health checks; its
        // flows move and are reset), and those refused by a dead server until lbx took it out.
        let timeout_s = REQUEST_TIMEOUT_MS as f64 / 1e3;
        let mut explained: Vec<(f64, f64)> = result
            .transitions
            .iter()
            .filter(|t| t.state == "down")
            .map(|t| (t.at_s - timeout_s, t.at_s + DOWN_SETTLE_S))
            .collect();
        if let Some(stop) = stop {
            let removal = Removal::of(records, stop, start);
            explained.push((stop - timeout_s, stop + removal.last_request_after_s + 1e-9));
            result.removal = Some(removal);
        }
        result.unexplained_connection_errors = Some(connection_errors_outside(records, &explained));
    }

    /// Seconds backends spent down, besides a dead one from its death until it was back.
    fn live_down_s(&self, transitions: &[Transition], dead: Option<(f64, f64)>) -> f64 {
        let dead_name = backend_name(self.scenario.focus);
        let mut total = 0.0;
        let mut down_since: BTreeMap<&str, f64> = BTreeMap::new();
        let mut close = |name: &str, from: f64, to: f64| {
            let caused_by_death = dead.is_some_and(|(stop, start)| {
                name == dead_name && from >= stop && from < start + DOWN_SETTLE_S
            });
            if !caused_by_death {
                total += to - from;
            }
        };
        for t in transitions {
            match (
                t.state == "down",
                down_since.get(t.backend.as_str()).copied(),
            ) {
                (true, None) => {
                    down_since.insert(&t.backend, t.at_s);
                }
                (false, Some(from)) => {
                    down_since.remove(t.backend.as_str());
                    close(&t.backend, from, t.at_s);
                }
                _ => {}
            }
        }
        for (name, from) in down_since {
            close(name, from, self.scenario.duration_s);
        }
        total
    }

    fn start_server(&mut self, i: usize) -> anyhow::Result<()> {
        let cmd = capacity_server(
            self.net.backend(i),
            &self.bins.capacity_server,
            i,
            self.capacities[i - 1],
        );
        self.starts += 1;
        let label = format!("{}-capacity-{}", backend_name(i), self.starts);
        let mut p = Process::spawn(&label, cmd, self.net.dir())?;
        let ready = p.wait_for_line("listening", READY_TIMEOUT);
        self.servers[i - 1] = Some(p);
        ready
    }

    /// The health checks and adaptive weights of the policy (the VIP and its backends came
    /// with the network).
    fn configure_lbx(&self) -> anyhow::Result<()> {
        let vip = vip().to_string();
        let port = PORT.to_string();
        let (interval, timeout) = (
            HEALTH_INTERVAL_MS.to_string(),
            HEALTH_TIMEOUT_MS.to_string(),
        );
        let (fall, rise) = (HEALTH_FALL.to_string(), HEALTH_RISE.to_string());
        let kind: &[&str] = if self.policy == Policy::StaticEqual {
            &["--kind", "tcp", "--port", &port]
        } else {
            &["--kind", "http", "--port", &port, "--path", "/health"]
        };
        let mut health = vec!["vip", "health", &vip];
        health.extend_from_slice(kind);
        health.extend_from_slice(&[
            "--interval-ms",
            &interval,
            "--timeout-ms",
            &timeout,
            "--fall",
            &fall,
            "--rise",
            &rise,
        ]);
        self.net.lbx(&health)?;
        if self.policy == Policy::Adaptive {
            self.net.lbx(&["vip", "adaptive", &vip])?;
        }
        Ok(())
    }

    /// Waits until every lb's `lbx status` shows every backend active with table slots.
    fn wait_all_up(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let mut up = true;
            for socket in self.net.sockets() {
                let s = self.sample_of(socket, 0.0)?;
                up &= s.backends.len() == self.scenario.capacities.len()
                    && s.backends
                        .iter()
                        .all(|b| b.state == "active" && b.table_slots > 0);
                if !up && started.elapsed() > READY_TIMEOUT {
                    bail!(
                        "backends not all up within {READY_TIMEOUT:?} on {}: {s:?}",
                        socket.display()
                    );
                }
            }
            if up {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn fire(&mut self, change: &Change) -> anyhow::Result<()> {
        match *change {
            Change::Capacity { backend, rps } => {
                self.capacities[backend - 1] = rps;
                self.set_capacity(backend, rps)?;
                if self.policy == Policy::Oracle {
                    let addr = self.net.backend(backend).ipv4.to_string();
                    self.net.lbx(&[
                        "backend",
                        "weight",
                        &vip().to_string(),
                        &addr,
                        &rps.to_string(),
                    ])?;
                }
            }
            Change::Stop { backend } => {
                let mut p = self.servers[backend - 1]
                    .take()
                    .with_context(|| format!("backend-{backend}'s server is not running"))?;
                p.stop();
                // A dead backend's capacity is 0: the oracle takes it out of the table at
                // once (its open flows have nowhere to go anyway).
                if self.policy == Policy::Oracle {
                    self.oracle_drain(backend, true)?;
                }
            }
            Change::Start { backend } => {
                self.start_server(backend)?;
                if self.policy == Policy::Oracle {
                    self.oracle_drain(backend, false)?;
                }
            }
        }
        Ok(())
    }

    /// `lbx backend drain` (or `--undo`) for backend `i`.
    fn oracle_drain(&self, i: usize, drain: bool) -> anyhow::Result<()> {
        let addr = self.net.backend(i).ipv4.to_string();
        let vip = vip().to_string();
        let mut args = vec!["backend", "drain", &vip, &addr];
        if !drain {
            args.push("--undo");
        }
        self.net.lbx(&args)?;
        Ok(())
    }

    fn set_capacity(&self, i: usize, rps: u32) -> anyhow::Result<()> {
        set_capacity(
            self.net.admin_netns(),
            self.net.backend(i),
            rps,
            Duration::from_secs(2),
        )
    }

    /// The VIP's backends in the status of the first lb (node 1 of a cluster: every node
    /// applies the same weights; its rates are its own share of the traffic).
    fn sample(&self, at_s: f64) -> anyhow::Result<Sample> {
        self.sample_of(self.net.sockets()[0], at_s)
    }

    /// The VIP's backends in the status of the agent on `socket`. Asked on the control socket
    /// directly, as `lbx status` does, without starting a process each time.
    fn sample_of(&self, socket: &Path, at_s: f64) -> anyhow::Result<Sample> {
        let status = lbx::agent::socket::call(socket, &lbx::agent::api::Request::Status)
            .context("the agent's status")?;
        let backends = vip_backends(&status)?;
        let mut out = Vec::new();
        for b in backends {
            let addr: IpAddr = b["address"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("a backend without an address: {b}"))?;
            out.push(BackendSample {
                name: self
                    .net
                    .backend_at(addr)
                    .map_or_else(|| addr.to_string(), |h| h.name.clone()),
                state: b["state"].as_str().unwrap_or_default().to_owned(),
                table_slots: b["table_slots"].as_u64().unwrap_or(0),
                effective_weight: b["effective_weight"].as_f64().unwrap_or(0.0),
                probe_latency_ms: b["health"]["latency_ms"].as_f64(),
                adaptive: b["adaptive"].clone(),
                signals: b["signals"].clone(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Sample {
            at_s,
            backends: out,
        })
    }

    /// Every process of the run.
    fn pids(&self) -> Vec<u32> {
        let mut pids = self.net.pids();
        pids.extend(
            self.servers
                .iter()
                .flatten()
                .chain(&self.loadgen)
                .map(Process::pid),
        );
        pids
    }

    fn log_tails(&self) -> String {
        let mut out = self.net.log_tails();
        for p in self.servers.iter().flatten().chain(&self.loadgen) {
            out.push_str(&p.tail(20));
        }
        out
    }
}
