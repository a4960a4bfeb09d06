//! A backend with a set capacity, for `cargo xtask bench adaptive`: an HTTP/1.1 server that
//! answers at most N requests per second and queues the rest, so its latency grows with load
//! the way a saturated server's does.
//!
//! `GET /` (a request) and `GET /health` (lbx's probe) wait in the same queue for one worker
//! that spends a fixed 1/N s on each (a single-server queue with deterministic service), so a
//! probe's latency shows the load. The queue is bounded (`--queue`, default 10,000); a request
//! that finds it full gets 503 at once. A client that gives up while queued frees its place
//! without costing service time, as a server that notices the closed connection would.
//! Answers name the backend in an `X-Backend` header and in the body.
//!
//! `GET /admin/capacity?rps=N` on the `--admin` address (the backend's own address, never a
//! VIP) changes the capacity at once; `GET /admin/capacity` shows it. Prints `listening` once
//! every address is bound, and its counters when stopped (SIGTERM or Ctrl-C).
//!
//! `lbx-capacity-server --name backend-1 --rps 300 --listen 10.77.100.1:8080 \
//!     --listen 10.77.0.11:8080 --admin 10.77.0.11:8081`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use clap::Parser;
use lbx_tests::bench_adaptive::{http, raise_fd_limit};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};

/// Limit for a client to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Highest capacity accepted, requests per second.
const MAX_RPS: u64 = 100_000;

#[derive(Parser, Debug)]
#[command(about = "HTTP server with a set capacity (requests per second) and a queue")]
struct Args {
    /// The name in every answer.
    #[arg(long)]
    name: String,
    /// Requests per second it serves at most (its capacity).
    #[arg(long)]
    rps: u64,
    /// Requests that may wait; more get 503.
    #[arg(long, default_value_t = 10_000)]
    queue: usize,
    /// Address to serve `/` and `/health` on, `ADDR:PORT` or `[V6]:PORT`; repeat for several.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Address of the control endpoint `/admin/capacity?rps=N`.
    #[arg(long)]
    admin: Option<SocketAddr>,
}

/// A queued request: when it arrived, and where to say it has been served.
type Job = (Instant, oneshot::Sender<()>);

/// What every connection shares.
struct Server {
    name: String,
    /// Service time per request in nanoseconds: 1e9 / capacity.
    service_ns: AtomicU64,
    jobs: mpsc::Sender<Job>,
    served: AtomicU64,
    abandoned: AtomicU64,
    rejected: AtomicU64,
}

impl Server {
    fn set_capacity(&self, rps: u64) {
        self.service_ns
            .store(1_000_000_000 / rps, Ordering::Relaxed);
    }

    fn capacity(&self) -> u64 {
        1_000_000_000 / self.service_ns.load(Ordering::Relaxed).max(1)
    }
}

fn valid_rps(rps: u64) -> bool {
    (1..=MAX_RPS).contains(&rps)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(valid_rps(args.rps), "--rps must be 1 to {MAX_RPS}");
    ensure!(args.queue >= 1, "--queue must be at least 1");
    raise_fd_limit();
    let (jobs, queue) = mpsc::channel(args.queue);
    let server = Arc::new(Server {
        name: args.name.clone(),
        service_ns: AtomicU64::new(0),
        jobs,
        served: AtomicU64::new(0),
        abandoned: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
    });
    server.set_capacity(args.rps);

    let mut listeners = Vec::new();
    for addr in &args.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to listen on {addr}"))?;
        listeners.push((l, false));
    }
    if let Some(addr) = args.admin {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to listen on {addr}"))?;
        listeners.push((l, true));
    }
    println!("listening (capacity {} requests/s)", args.rps);

    tokio::spawn(worker(queue, server.clone()));
    for (listener, admin) in listeners {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, server.clone(), admin));
                    }
                    Err(e) => {
                        // Out of descriptors or similar: back off rather than spin.
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!(
        "stopped: served {} abandoned {} rejected {}",
        server.served.load(Ordering::Relaxed),
        server.abandoned.load(Ordering::Relaxed),
        server.rejected.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The one worker: takes queued requests in order and spends the service time on each.
///
/// Times follow the queue's own arithmetic, not the moments the worker happens to run: a
/// request starts when it arrived or when the one before it ended, whichever is later, and
/// ends one service time after. So a timer that fires late on a busy host, or a worker that
/// wakes late, costs no capacity: the server serves exactly N per second when saturated.
async fn worker(mut queue: mpsc::Receiver<Job>, server: Arc<Server>) {
    let mut free_at = Instant::now();
    while let Some((arrived, reply)) = queue.recv().await {
        if reply.is_closed() {
            server.abandoned.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let service = Duration::from_nanos(server.service_ns.load(Ordering::Relaxed));
        free_at = free_at.max(arrived) + service;
        sleep_until(free_at).await;
        if reply.send(()).is_ok() {
            server.served.fetch_add(1, Ordering::Relaxed);
        } else {
            server.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One connection: one request, one answer, then close.
async fn serve(mut stream: TcpStream, server: Arc<Server>, admin: bool) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let Ok(Ok(Some(head))) = timeout(HEAD_TIMEOUT, http::read_head(&mut stream, &mut buf)).await
    else {
        return;
    };
    let (status, reason, body) = match http::request_line(&buf[..head]) {
        None => (400, "Bad Request", "not an HTTP/1.x request\n".to_owned()),
        Some((method, target)) if admin => admin_answer(&server, method, target),
        Some(("GET", target)) if matches!(http::path(target), "/" | "/health") => {
            let (tx, rx) = oneshot::channel();
            match server.jobs.try_send((Instant::now(), tx)) {
                Err(mpsc::error::TrySendError::Full(_)) => {
                    server.rejected.fetch_add(1, Ordering::Relaxed);
                    (503, "Service Unavailable", "queue full\n".to_owned())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Ok(()) => {
                    // The client sends nothing more: a read that ends means it left, and
                    // dropping `rx` then tells the worker to skip this request.
                    let mut more = [0u8; 64];
                    tokio::select! {
                        served = rx => if served.is_err() { return },
                        _ = stream.read(&mut more) => return,
                    }
                    (200, "OK", format!("{}\n", server.name))
                }
            }
        }
        Some(_) => (404, "Not Found", "GET / or /health\n".to_owned()),
    };
    let answer = http::response(status, reason, &server.name, &body);
    if stream.write_all(&answer).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

fn admin_answer(server: &Server, method: &str, target: &str) -> (u16, &'static str, String) {
    if method != "GET" || http::path(target) != "/admin/capacity" {
        return (404, "Not Found", "GET /admin/capacity[?rps=N]\n".to_owned());
    }
    match http::query_param(target, "rps").map(str::parse::<u64>) {
        None => {}
        Some(Ok(rps)) if valid_rps(rps) => {
            server.set_capacity(rps);
            println!("capacity {rps} requests/s");
        }
        Some(_) => {
            return (
                400,
                "Bad Request",
                format!("rps must be a number from 1 to {MAX_RPS}\n"),
            );
        }
    }
    (200, "OK", format!("rps={}\n", server.capacity()))
}
