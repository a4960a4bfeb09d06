//! The agent's foreground loop: one thread owns the agent and handles requests, probe
//! results and control ticks in order; a tokio runtime serves the socket, runs the probes
//! and the ticks, and waits for the stop signal.

use std::{path::Path, thread};

use anyhow::{Context as _, Result};
use tokio::sync::{mpsc, watch};

use super::{
    Agent, Event, Options,
    api::{Job, Response},
    socket,
};
use crate::{
    balance::probe,
    metrics::{self, ScrapeRequest},
};

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// Waits for SIGTERM or SIGINT.
pub async fn stop_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Hands the probes the backends to check, when a change altered them.
fn refresh_targets(agent: &Agent, targets: &watch::Sender<Vec<probe::Target>>) {
    targets.send_if_modified(|t| {
        let now = agent.health_targets();
        let changed = *t != now;
        *t = now;
        changed
    });
}

/// Runs the agent in the foreground until SIGTERM or SIGINT: attaches the balancer,
/// serves the control socket, probes the backends and ticks the control loop.
pub fn run(opts: Options) -> Result<()> {
    let iface = opts.iface.clone();
    let socket = opts.socket.clone();
    let config_path = opts.config_path.clone();
    let pin_dir = opts.pin_dir.clone();
    let interval = opts.control_interval;
    let metrics_listen = opts.metrics_listen;
    // What the kernel says of another build's programs names the file they came from.
    let object = opts.object.path().map(Path::to_path_buf);
    let object_arg = object
        .as_ref()
        .map(|p| format!(" --xdp-object {}", p.display()))
        .unwrap_or_default();
    let rt = runtime()?;
    // Bind before attaching: a second agent on the same socket fails before it touches
    // the interface.
    let (listener, _socket_file) = rt
        .block_on(async { socket::bind(&socket) })
        .with_context(|| format!("cannot serve the control socket {}", socket.display()))?;
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(
            rt.block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("cannot serve metrics on {addr} (--metrics-listen)"))?,
        ),
        None => None,
    };
    let mut agent =
        Agent::start(opts).with_context(|| format!("lbx run --iface {iface}{object_arg}"))?;
    let live = agent.live_metrics();
    crate::say!(
        "lbx {} {} ({} mode), generation {}, config {}, socket {}, maps pinned under {}{}",
        if agent.adopted() {
            "took over the balancer serving"
        } else {
            "attached to"
        },
        iface,
        agent.mode(),
        agent.generation(),
        config_path.display(),
        socket.display(),
        pin_dir.as_deref().unwrap_or(Path::new("(none)")).display(),
        object
            .map(|p| format!(", XDP programs from {}", p.display()))
            .unwrap_or_default()
    );
    if let Some(l) = &metrics_listener {
        let addr = l
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        crate::say!("lbx serves Prometheus metrics at http://{addr}/metrics");
    }

    // The agent lives on its own thread: its map updates and grace-period waits block.
    // Requests, probe results and control ticks reach it through one queue, in order.
    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    agent.start_cluster(tx.clone());
    let (targets_tx, targets_rx) = watch::channel(agent.health_targets());
    let worker = thread::spawn(move || {
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Api((req, reply)) => {
                    let answer = match agent.handle(req) {
                        Ok(v) => Response::Ok(v),
                        Err(e) => Response::Error(e.failure()),
                    };
                    let _ = reply.send(answer);
                    // The change is in effect since its switch; the wait for packets
                    // of the generation before runs after the answer.
                    agent.settle();
                    refresh_targets(&agent, &targets_tx);
                }
                Event::Probe(p) => agent.on_probe(p.vip, p.backend, &p.result),
                Event::Scrape(ScrapeRequest(reply)) => {
                    let _ = reply.send(agent.scrape());
                }
                Event::Tick => agent.on_tick(),
                Event::Cluster(u) => {
                    agent.on_cluster(u);
                    agent.settle();
                    refresh_targets(&agent, &targets_tx);
                }
            }
        }
        // Dropping the agent closes the maps; a program serving through a pinned link
        // goes on.
        drop(agent);
    });
    let (api_tx, mut api_rx) = mpsc::channel::<Job>(64);
    let result = rt.block_on(async {
        let forward = {
            let tx = tx.clone();
            async move {
                while let Some(job) = api_rx.recv().await {
                    if tx.send(Event::Api(job)).await.is_err() {
                        break;
                    }
                }
            }
        };
        let ticks = {
            let tx = tx.clone();
            async move {
                let mut every = tokio::time::interval(interval);
                loop {
                    every.tick().await;
                    if tx.send(Event::Tick).await.is_err() {
                        break;
                    }
                }
            }
        };
        let metrics = {
            let tx = tx.clone();
            async move {
                match metrics_listener {
                    Some(l) => metrics::server::serve(l, tx, live).await,
                    None => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            r = stop_signal() => r,
            () = socket::serve(listener, api_tx) => Ok(()),
            () = metrics => Ok(()),
            () = forward => Ok(()),
            () = ticks => Ok(()),
            () = probe::run_probes(targets_rx, tx) => Ok(()),
        }
    });
    // The server task (holding the last sender) is gone: the worker drains and exits.
    drop(rt);
    let _ = worker.join();
    match &pin_dir {
        Some(dir) => crate::say!(
            "lbx stopped; the balancer goes on serving {iface} from {} for the next agent \
             (`lbx detach --iface {iface}` stops it)",
            dir.display()
        ),
        None => crate::say!("lbx detached from {iface}"),
    }
    result
}
