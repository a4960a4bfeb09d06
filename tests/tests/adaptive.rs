//! Adaptive weights on real traffic: of three backends under an open-loop HTTP load, the one
//! with a third of the others' capacity gets a clearly smaller weight and serves a clearly
//! smaller share of the requests than equal weights would give it, and gets its weight back
//! once its capacity is raised to theirs. In between, the agent is restarted under the
//! load: the next one goes on from the weights it takes over.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lbx_tests::bench_adaptive::harness::{capacity_server, set_capacity, vip, vip_backends};
use lbx_tests::bench_adaptive::http;
use lbx_tests::bench_adaptive::scenario::PORT;
use lbx_tests::bench_adaptive::schedule::{MAX_DURATION_S, Schedule};
use lbx_tests::process::Process;
use lbx_tests::topology::patience;
use lbx_tests::{Topology, VIP_V4, backend_name, locate_binary};
use serde_json::Value;

/// Capacities in requests per second: backend-3 has a third of the others'.
const FAST_RPS: u32 = 60;
const SLOW_RPS: u32 = 20;
const SLOW: usize = 3;
/// Offered load: under half the total capacity (140/s), but its third is more than backend-3
/// serves, so equal weights overload it. Low enough for an emulated CPU.
const OFFERED_RPS: f64 = 65.0;
const CONTROL_INTERVAL_MS: u64 = 500;
/// HTTP health checks wait in the same queue as requests: their latency is what the capacity
/// model reads. A timeout of ten of the slow backend's service times lets its queue be seen
/// growing before the probes time out.
const HEALTH_INTERVAL_MS: &str = "500";
const HEALTH_TIMEOUT_MS: &str = "500";
const HEALTH_FALL: &str = "3";
/// No slow start: a backend back from down has its full weight at once, so a low effective
/// weight of an active, healthy backend can only be an adaptive one.
const SLOW_START_S: &str = "0";

/// The slow backend's effective weight must fall below this fraction of the fast ones' mean
/// (its capacity is a third of theirs), and come back above `RECOVERED` once it is as fast.
const LOWERED: f64 = 0.6;
const RECOVERED: f64 = 0.8;
/// Its share of the requests must stay below this, two thirds of its equal share; weights
/// in proportion to capacity give it 1/7 (14%).
const MAX_SLOW_SHARE: f64 = 2.0 / 9.0;

/// What lbx promises, asserted unscaled (measured to the last poll that did not yet show the
/// change, so that slow polling cannot break it): the weight comes down within this from the
/// start of the load, and back up within this from the capacity's rise.
const LOWERED_WITHIN: Duration = Duration::from_secs(15);
const RECOVERED_WITHIN: Duration = Duration::from_secs(15);
/// Shares are counted over this long, right after the weight has come down.
const SHARE_WINDOW: Duration = Duration::from_secs(6);
/// Fewer requests answered in the window than this share of those offered means the load
/// did not get through, and the shares say nothing.
const MIN_ANSWERED: f64 = 0.5;

/// How often the agent's status is read.
const POLL: Duration = Duration::from_millis(200);
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-request limit of the load, from when the request was due.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Seed of the arrival times.
const SEED: u64 = 7;

/// One backend as `lbx status --json` shows it.
#[derive(Debug, Clone)]
struct Backend {
    /// `active`, `down` or `draining`.
    state: String,
    /// The health checks' `up` or `down`.
    health: String,
    effective_weight: f64,
    json: Value,
}

impl Backend {
    fn serving(&self) -> bool {
        self.state == "active" && self.health == "up"
    }
}

/// The VIP's backends in `status`, in the order 1, 2, 3.
fn backends(topo: &Topology, status: &Value) -> anyhow::Result<Vec<Backend>> {
    let listed = vip_backends(status)?;
    (1..=3)
        .map(|i| {
            let addr = topo.backend_addr(i, vip()).to_string();
            let b = listed
                .iter()
                .find(|b| b["address"] == addr.as_str())
                .with_context(|| format!("no backend {addr} in the status: {status}"))?;
            Ok(Backend {
                state: b["state"].as_str().unwrap_or_default().to_owned(),
                health: b["health"]["state"].as_str().unwrap_or_default().to_owned(),
                effective_weight: b["effective_weight"]
                    .as_f64()
                    .with_context(|| format!("no effective_weight: {b}"))?,
                json: b.clone(),
            })
        })
        .collect()
}

/// The VIP's backends in the agent's status, asked on the control socket as `lbx status
/// --json` asks it, without a CLI process each time (each costs much of an emulated CPU).
fn status_backends(topo: &Topology) -> Vec<Backend> {
    let status = lbx::agent::socket::call(topo.socket(), &lbx::agent::api::Request::Status)
        .unwrap_or_else(|e| panic!("the agent's status: {e}"));
    backends(topo, &status).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The slow backend's effective weight over the fast ones' mean, while all three are active
/// and healthy (a backend the health checks took out has no weight to compare).
fn slow_ratio(bs: &[Backend]) -> Option<f64> {
    if !bs.iter().all(Backend::serving) {
        return None;
    }
    let fast = (bs[0].effective_weight + bs[1].effective_weight) / 2.0;
    (fast > 0.0).then(|| bs[SLOW - 1].effective_weight / fast)
}

/// `backend-1 1000 active/up 83/s | ...`: weight, state and capacity estimate of each.
fn describe(bs: &[Backend]) -> String {
    bs.iter()
        .enumerate()
        .map(|(i, b)| {
            let capacity = b.json["adaptive"]["capacity_per_s"]
                .as_f64()
                .map_or_else(|| "?".to_owned(), |c| format!("{c:.0}/s"));
            format!(
                "{} {:.0} {}/{} {capacity}",
                backend_name(i + 1),
                b.effective_weight,
                b.state,
                b.health
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// What [`watch`] saw.
struct Seen {
    backends: Vec<Backend>,
    /// Since the wait began, the start of the last poll that did not yet show the condition:
    /// the agent answered that poll after it started, so the change came later than this.
    not_before: Duration,
}

/// Polls the agent's status every [`POLL`] until `done` holds for the backends (`goal` says
/// what that is); gives up after `patience(limit)`. Prints what it sees once a second,
/// labelled `label`.
fn watch(
    topo: &Topology,
    label: &str,
    goal: &str,
    limit: Duration,
    mut done: impl FnMut(&[Backend]) -> bool,
) -> Seen {
    let limit = patience(limit);
    let start = Instant::now();
    let mut not_before = Duration::ZERO;
    let mut next_print = Duration::ZERO;
    loop {
        let poll = start.elapsed();
        let bs = status_backends(topo);
        let reached = done(&bs);
        if poll >= next_print || reached {
            eprintln!("{label} {:5.1} s: {}", poll.as_secs_f64(), describe(&bs));
            next_print += Duration::from_secs(1);
        }
        if reached {
            return Seen {
                backends: bs,
                not_before,
            };
        }
        not_before = poll;
        assert!(
            start.elapsed() < limit,
            "not within {limit:?}: {goal}. Last seen: {}; backend-3's adaptive state: {}",
            describe(&bs),
            bs[SLOW - 1].json["adaptive"]
        );
        std::thread::sleep(POLL);
    }
}

/// The capacity servers, one per backend. Dropped before the topology (declared after it),
/// which removes their namespaces; their logs' tails are printed if the test fails.
struct Servers(Vec<Process>);

impl Drop for Servers {
    fn drop(&mut self) {
        for p in &mut self.0 {
            p.stop();
        }
        if std::thread::panicking() {
            for p in &self.0 {
                eprintln!("{}", p.tail(20));
            }
        }
    }
}

fn start_servers(topo: &Topology, capacity_server_bin: &Path) -> anyhow::Result<Servers> {
    let mut servers = Servers(Vec::new());
    for i in 1..=3 {
        let rps = if i == SLOW { SLOW_RPS } else { FAST_RPS };
        let cmd = capacity_server(topo.backend(i), capacity_server_bin, i, rps);
        let label = format!("{}-capacity", backend_name(i));
        let mut p = Process::spawn(&label, cmd, topo.dir())?;
        let ready = p.wait_for_line("listening", patience(READY_TIMEOUT));
        servers.0.push(p);
        ready?;
    }
    Ok(servers)
}

/// How one request of the load ended.
#[derive(Debug, Clone)]
struct Answer {
    due: Instant,
    /// The backend that answered 200, or why none did.
    outcome: Result<String, String>,
}

/// Open-loop load from the client: `GET /` to the VIP at the moments of a Poisson process,
/// each on a new connection (a new flow for lbx to balance), whatever became of the earlier
/// ones, as `lbx-loadgen` sends it. Runs on its own thread inside the client's namespace
/// until stopped or dropped, passing each answer on as it comes.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    answers: mpsc::Receiver<Answer>,
    received: Vec<Answer>,
}

impl Load {
    fn start(netns: &Path, rate: f64, duration: Duration) -> anyhow::Result<Self> {
        let duration_s = duration.as_secs_f64().min(MAX_DURATION_S);
        let arrivals = Schedule::new(vec![(0.0, rate)], duration_s)?.arrivals(SEED);
        let netns = File::open(netns).with_context(|| format!("open {}", netns.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, answers) = mpsc::channel();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            // SAFETY: setns only reads the descriptor, which `netns` keeps open; it moves
            // this thread alone, which ends with the load.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns into the client");
            }
            // One thread: every socket is made here, inside the namespace.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(send(arrivals, stopped, tx));
            // Requests still in flight are dropped with the runtime.
            Ok(())
        });
        Ok(Self {
            stop,
            thread: Some(thread),
            answers,
            received: Vec::new(),
        })
    }

    /// Every answer so far, in the order they came.
    fn answers(&mut self) -> &[Answer] {
        self.received.extend(self.answers.try_iter());
        &self.received
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => anyhow::bail!("the load's thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn send(arrivals: Vec<f64>, stop: Arc<AtomicBool>, answers: mpsc::Sender<Answer>) {
    let request: Arc<[u8]> = http::request("/", &vip().to_string()).into();
    let start = tokio::time::Instant::now();
    for at_s in arrivals {
        let due = start + Duration::from_secs_f64(at_s);
        tokio::time::sleep_until(due).await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (answers, request) = (answers.clone(), request.clone());
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout_at(
                due + REQUEST_TIMEOUT,
                http::exchange(vip(), &request),
            )
            .await
            {
                Err(_) => Err("timeout".to_owned()),
                Ok(Err(e)) => Err(e.kind().to_string()),
                Ok(Ok(a)) if a.status == 200 => Ok(a.backend.unwrap_or_default()),
                Ok(Ok(a)) => Err(format!("HTTP {}", a.status)),
            };
            let _ = answers.send(Answer {
                due: due.into_std(),
                outcome,
            });
        });
    }
}

/// New flows lbx sent to each backend so far, from `lbx stats`.
fn new_flows(topo: &Topology) -> Vec<u64> {
    let stats = lbx::agent::socket::call(topo.socket(), &lbx::agent::api::Request::Stats)
        .unwrap_or_else(|e| panic!("the agent's stats: {e}"));
    let listed = vip_backends(&stats).unwrap_or_else(|e| panic!("{e:#}"));
    (1..=3)
        .map(|i| {
            let addr = topo.backend_addr(i, vip()).to_string();
            listed
                .iter()
                .find(|b| b["address"] == addr.as_str())
                .and_then(|b| b["new_flows"].as_u64())
                .unwrap_or_else(|| panic!("no new_flows for {addr} in the stats: {stats}"))
        })
        .collect()
}

#[test]
fn a_slow_backend_gets_less_load_and_its_weight_back_when_it_recovers() {
    let capacity_server = locate_binary(
        "LBX_CAPACITY_SERVER",
        "lbx-capacity-server",
        "build it with `cargo build -p lbx-tests --bins`",
    )
    .expect("the capacity server");
    let mut topo = Topology::builder()
        .backends(3)
        // The test network's plain servers take port 80 of this address; ours take PORT.
        .vip(SocketAddr::new(VIP_V4.into(), 80))
        .agent_args(&["--control-interval-ms", &CONTROL_INTERVAL_MS.to_string()])
        .build()
        .expect("failed to build the test network");
    let status = topo.lbx_json(&["status"]).expect("lbx status");
    assert_eq!(
        status["control_interval_ms"].as_u64(),
        Some(CONTROL_INTERVAL_MS),
        "`lbx run --control-interval-ms {CONTROL_INTERVAL_MS}`, but the status says: {}",
        status["control_interval_ms"]
    );
    let _servers = start_servers(&topo, &capacity_server).expect("the capacity servers");

    let vip_arg = vip().to_string();
    topo.add_vip(vip(), &[(1, 1), (2, 1), (3, 1)])
        .expect("lbx vip add, backend add");
    topo.lbx(&[
        "vip",
        "health",
        &vip_arg,
        "--kind",
        "http",
        "--port",
        &PORT.to_string(),
        "--path",
        "/health",
        "--interval-ms",
        HEALTH_INTERVAL_MS,
        "--timeout-ms",
        HEALTH_TIMEOUT_MS,
        "--fall",
        HEALTH_FALL,
        "--rise",
        "2",
        "--slow-start-s",
        SLOW_START_S,
    ])
    .expect("lbx vip health");
    topo.lbx(&["vip", "adaptive", &vip_arg])
        .expect("lbx vip adaptive");
    watch(
        &topo,
        "ready",
        "every backend active and up",
        READY_TIMEOUT,
        |bs| bs.iter().all(Backend::serving),
    );

    // Long enough for every wait below; dropped (stopped) when the test ends, also on failure.
    let longest = patience(LOWERED_WITHIN) + SHARE_WINDOW + patience(RECOVERED_WITHIN);
    let mut load = Load::start(
        &topo.client.netns.path(),
        OFFERED_RPS,
        longest + Duration::from_secs(10),
    )
    .expect("start the load");

    // 1. Backend-3 gets a lower weight, with its capacity estimated and a reason.
    let lowered = watch(
        &topo,
        "lowering",
        &format!(
            "backend-3's effective weight under {:.0}% of the others' mean",
            LOWERED * 100.0
        ),
        LOWERED_WITHIN,
        |bs| slow_ratio(bs).is_some_and(|r| r < LOWERED),
    );
    assert!(
        lowered.not_before <= LOWERED_WITHIN,
        "backend-3's weight came down only {:?} after the load started, not within \
         {LOWERED_WITHIN:?}",
        lowered.not_before
    );
    let adaptive = &lowered.backends[SLOW - 1].json["adaptive"];
    let capacity = adaptive["capacity_per_s"].as_f64();
    assert!(
        capacity.is_some_and(|c| c > 0.0),
        "backend-3's weight is lower, but the status shows no capacity estimate: {adaptive}"
    );
    let reason = adaptive["reason"].as_str().unwrap_or_default();
    assert!(
        !reason.is_empty(),
        "backend-3's weight is lower, but the status gives no reason: {adaptive}"
    );
    eprintln!(
        "backend-3: capacity {:.0}/s; {reason}",
        capacity.unwrap_or(0.0)
    );

    // 2. With its weight down, it gets and serves a clearly smaller share of the requests.
    let window_start = Instant::now();
    let flows_before = new_flows(&topo);
    let mut window_ratios = Vec::new();
    while window_start.elapsed() < SHARE_WINDOW {
        window_ratios.push(slow_ratio(&status_backends(&topo)));
        std::thread::sleep(POLL);
    }
    let window_end = Instant::now();
    let flows_after = new_flows(&topo);
    eprintln!(
        "backend-3's weight over the fast ones' during the window: {}",
        window_ratios
            .iter()
            .map(|r| r.map_or_else(|| "out".to_owned(), |r| format!("{r:.2}")))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Requests due in the window, whenever they were answered (up to the request timeout).
    std::thread::sleep(REQUEST_TIMEOUT + Duration::from_millis(200));
    let in_window: Vec<&Answer> = load
        .answers()
        .iter()
        .filter(|a| a.due >= window_start && a.due < window_end)
        .collect();
    let served: Vec<&str> = in_window
        .iter()
        .filter_map(|a| a.outcome.as_deref().ok())
        .collect();
    let failed = in_window.len() - served.len();
    let offered = OFFERED_RPS * (window_end - window_start).as_secs_f64();
    let by_slow = served.iter().filter(|b| **b == backend_name(SLOW)).count();
    let served_share = by_slow as f64 / served.len().max(1) as f64;
    let flows: Vec<u64> = flows_after
        .iter()
        .zip(&flows_before)
        .map(|(a, b)| a - b)
        .collect();
    let flow_share = flows[SLOW - 1] as f64 / flows.iter().sum::<u64>().max(1) as f64;
    eprintln!(
        "window of {:.1} s: {} requests due, {} served ({by_slow} by backend-3: {:.1}%), \
         {failed} failed; new flows per backend {flows:?} (backend-3: {:.1}%)",
        (window_end - window_start).as_secs_f64(),
        in_window.len(),
        served.len(),
        served_share * 100.0,
        flow_share * 100.0
    );
    assert!(
        served.len() as f64 >= MIN_ANSWERED * offered,
        "only {} of about {offered:.0} requests offered in the window were served",
        served.len()
    );
    assert!(
        served_share < MAX_SLOW_SHARE,
        "backend-3 served {:.1}% of the requests, not clearly below its equal share (under \
         {:.1}%)",
        served_share * 100.0,
        MAX_SLOW_SHARE * 100.0
    );
    assert!(
        flow_share < MAX_SLOW_SHARE,
        "lbx sent backend-3 {:.1}% of the new flows, not clearly below its equal share (under \
         {:.1}%)",
        flow_share * 100.0,
        MAX_SLOW_SHARE * 100.0
    );

    // 2b. An agent restarted under the load goes on from the weights it takes over (read
    // back from the rings), not from the operator's equal ones; its models start afresh,
    // and the step below is the new agent's.
    let weights = |bs: &[Backend]| -> Vec<f64> {
        let w: Vec<f64> = bs
            .iter()
            .map(|b| b.json["adaptive"]["weight"].as_f64().unwrap_or(0.0))
            .collect();
        let max = w.iter().copied().fold(0.0, f64::max).max(1.0);
        w.iter().map(|x| x / max).collect()
    };
    // The weights read must be those of the generation taken over: the old agent may
    // publish a step between the read and its stop, then the next agent's first
    // generation is not the read one's successor, and the handover is tried again.
    let status = |topo: &Topology| {
        lbx::agent::socket::call(topo.socket(), &lbx::agent::api::Request::Status)
            .unwrap_or_else(|e| panic!("the agent's status: {e}"))
    };
    let mut taken_over = None;
    for attempt in 1..=4 {
        let read = status(&topo);
        let before = weights(&backends(&topo, &read).expect("backends"));
        topo.restart_agent().expect("restart the agent under load");
        let next = status(&topo);
        let (was, now) = (read["generation"].as_u64(), next["generation"].as_u64());
        if now != was.map(|g| g + 1) {
            eprintln!(
                "restart {attempt}: generation {was:?} read, {now:?} after the handover: a \
                 publication came between; again"
            );
            continue;
        }
        let bs = backends(&topo, &next).expect("backends");
        let after = weights(&bs);
        eprintln!(
            "adaptive weights (of the largest) before a restart {before:.3?}, after {after:.3?}"
        );
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert!(
                (b - a).abs() <= 0.02,
                "backend-{}'s weight went from {b:.3} to {a:.3} of the largest in a restart: {}",
                i + 1,
                describe(&bs)
            );
        }
        taken_over = Some(bs);
        break;
    }
    let taken_over = taken_over.expect("four restarts, each with a publication in between");
    let reason = taken_over[SLOW - 1].json["adaptive"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("taken over"), "{reason}");

    // 3. As fast as the others, it gets its weight back.
    set_capacity(
        &topo.client.netns,
        topo.backend(SLOW),
        FAST_RPS,
        patience(Duration::from_secs(2)),
    )
    .expect("raise backend-3's capacity");
    let recovered = watch(
        &topo,
        "recovery",
        &format!(
            "backend-3's effective weight back to {:.0}% of the others' mean",
            RECOVERED * 100.0
        ),
        RECOVERED_WITHIN,
        |bs| slow_ratio(bs).is_some_and(|r| r >= RECOVERED),
    );
    assert!(
        recovered.not_before <= RECOVERED_WITHIN,
        "backend-3's weight came back only {:?} after its capacity, not within \
         {RECOVERED_WITHIN:?}",
        recovered.not_before
    );

    load.finish().expect("the load");
}
