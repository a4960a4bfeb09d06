//! The open-loop load generator of `cargo xtask bench adaptive`.
//!
//! Sends `GET /` at the moments of a Poisson process whose rate follows `--schedule`, each on
//! its own new TCP connection (so each request is a new flow that lbx balances), whatever
//! happened to the earlier ones: a slow server does not slow the offered load. Every request
//! is recorded (when it was due, its latency from then, the backend that answered, how it
//! ended) and the records go to `--out` as CSV when the run ends.
//!
//! Everything is bounded: the schedule (count, rate, duration), the requests in flight
//! (`--max-in-flight`; past it a request is recorded as `client_busy`, not sent) and each
//! request (`--timeout-ms`, counted from when it was due).
//!
//! `lbx-loadgen --target 10.77.100.1:8080 --schedule 0:490,15:980,27:490 --duration-s 40 \
//!     --seed 1 --out run.csv`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use clap::Parser;
use lbx_tests::bench_adaptive::http;
use lbx_tests::bench_adaptive::raise_fd_limit;
use lbx_tests::bench_adaptive::records::{Outcome, Record, to_csv};
use lbx_tests::bench_adaptive::schedule::{Schedule, Steps};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Longest per-request timeout accepted.
const MAX_TIMEOUT_MS: u64 = 30_000;
/// Longest wait for a `--start-at-ms` in the future.
const MAX_START_DELAY: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(about = "Open-loop HTTP load generator: one new TCP connection per request")]
struct Args {
    /// Where to send: the VIP, `ADDR:PORT`.
    #[arg(long)]
    target: SocketAddr,
    /// Rate steps `FROM_S:RATE,...`, the first from 0: `0:490,15:980,27:490`.
    #[arg(long)]
    schedule: Steps,
    /// Length of the run in seconds.
    #[arg(long)]
    duration_s: f64,
    /// Per-request limit, from when the request was due.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Seed of the arrival times: the same seed gives the same requests at the same moments.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Start at this wall-clock time (ms since the Unix epoch), so another process can time
    /// events against the run; default: at once.
    #[arg(long)]
    start_at_ms: Option<u64>,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 4000)]
    max_in_flight: usize,
    /// The CSV file to write.
    #[arg(long)]
    out: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        (1..=MAX_TIMEOUT_MS).contains(&args.timeout_ms),
        "--timeout-ms must be 1 to {MAX_TIMEOUT_MS}"
    );
    ensure!(
        (1..=50_000).contains(&args.max_in_flight),
        "--max-in-flight must be 1 to 50000"
    );
    raise_fd_limit();
    let schedule = Schedule::new(args.schedule.0.clone(), args.duration_s)?;
    let arrivals = schedule.arrivals(args.seed);
    let timeout = Duration::from_millis(args.timeout_ms);
    println!(
        "ready: {} requests over {} s",
        arrivals.len(),
        args.duration_s
    );

    if let Some(at) = args.start_at_ms {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let wait = Duration::from_millis(at).saturating_sub(now);
        ensure!(
            wait <= MAX_START_DELAY,
            "--start-at-ms is {wait:?} away, more than {MAX_START_DELAY:?}"
        );
        tokio::time::sleep(wait).await;
    }
    let start = Instant::now();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (done, mut results) = mpsc::unbounded_channel::<Record>();
    let request = Arc::new(http::request("/", &args.target.to_string()));
    for &at_s in &arrivals {
        let due = start + Duration::from_secs_f64(at_s);
        tokio::time::sleep_until(due).await;
        let lateness_ms = due.elapsed().as_secs_f64() * 1e3;
        if in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
            let _ = done.send(Record {
                at_s,
                lateness_ms,
                latency_ms: 0.0,
                backend: String::new(),
                outcome: Outcome::ClientBusy,
            });
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (done, in_flight, request) = (done.clone(), in_flight.clone(), request.clone());
        let target = args.target;
        tokio::spawn(async move {
            let (outcome, backend) = match tokio::time::timeout_at(
                due + timeout,
                http::exchange(target, &request),
            )
            .await
            {
                Err(_) => (Outcome::Timeout, None),
                Ok(Err(e)) => (classify(&e), None),
                Ok(Ok(answer)) if answer.status == 200 => (Outcome::Ok, answer.backend),
                Ok(Ok(answer)) => (Outcome::Http(answer.status), answer.backend),
            };
            let latency_ms = due.elapsed().min(timeout).as_secs_f64() * 1e3;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = done.send(Record {
                at_s,
                lateness_ms,
                latency_ms,
                backend: backend.unwrap_or_default(),
                outcome,
            });
        });
    }
    drop(done);
    // Every task ends within its timeout; this bound only guards against a bug.
    let mut records = Vec::with_capacity(arrivals.len());
    let drain = async {
        while let Some(r) = results.recv().await {
            records.push(r);
        }
    };
    tokio::time::timeout(timeout + Duration::from_secs(10), drain)
        .await
        .context("requests still in flight long after their timeout")?;
    records.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    std::fs::write(&args.out, to_csv(&records))
        .with_context(|| format!("failed to write {}", args.out.display()))?;
    let ok = records.iter().filter(|r| r.outcome == Outcome::Ok).count();
    println!(
        "done: {} requests, {ok} ok, {} failed; wrote {}",
        records.len(),
        records.len() - ok,
        args.out.display()
    );
    Ok(())
}

fn classify(e: &std::io::Error) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Outcome::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Outcome::Reset,
        _ => Outcome::Io,
    }
}
