//! `cargo xtask demo`: lbx end to end on a throwaway network of namespaces, as a tutorial.
//!
//! Builds a client, a load balancer and three backends, configures a VIP through the CLI
//! (printing each command), sends real TCP connections and shows how they spread, changes a
//! weight live, and cleans everything up. Needs root; uses only addresses inside its own
//! namespaces (10.77.0.0/24, VIP 10.77.100.1).

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context as _;
use lbx_tests::{CLIENT_V4, Topology, VIP_V4, demo, prometheus, tally};

/// Where the agent serves Prometheus metrics, inside the lb's namespace.
const METRICS: &str = "127.0.0.1:9101";
/// Families whose lines the demo shows from a scrape.
const SHOWN: &[&str] = &[
    "lbx_build_info",
    "lbx_generation",
    "lbx_packets_total{reason=\"forwarded\"}",
    "lbx_vip_new_flows_total",
    "lbx_backend_new_flows_total",
    "lbx_backend_effective_weight",
    "lbx_backend_ring_slots",
];

/// Connections per round of traffic.
const CONNECTIONS: u16 = 300;

fn main() {
    demo::require_root();
    let started = Instant::now();
    let vip = SocketAddr::new(VIP_V4.into(), 80);
    println!("lbx demo: a layer-4 XDP load balancer with direct server return\n");
    println!("Building a test network of namespaces joined by a bridge:");
    println!("  client 10.77.0.1 --> lb 10.77.0.2 (lbx run, XDP) --> backends 10.77.0.11-13");
    println!("  backends answer the client directly (DSR); VIP {vip} lives on their lo\n");
    let mut topo = match Topology::builder()
        .backends(3)
        .vip(vip)
        .agent_args(&["--metrics-listen", METRICS])
        .build()
    {
        Ok(topo) => topo,
        Err(e) => {
            eprintln!("error: failed to build the demo network: {e:#}");
            std::process::exit(1);
        }
    };
    topo.set_report_on_drop(false);
    println!(
        "Ready. CLI commands below run in the lb's namespace as `lbx --socket {} ...`.\n",
        topo.socket().display()
    );
    match demo(&topo, vip) {
        Ok(()) => {
            println!(
                "Done in {:.1} s; removing the namespaces and processes.",
                started.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            eprintln!("error: {e:#}\n");
            eprintln!("{}", topo.log_tails());
            drop(topo);
            std::process::exit(1);
        }
    }
}

/// Prints a command like a tutorial step, runs it and prints its output, indented.
fn step(topo: &Topology, args: &[&str]) -> anyhow::Result<()> {
    demo::step(topo.cli(), "", args).map(drop)
}

/// Sends `CONNECTIONS` connections from source ports starting at `first_port` and prints
/// which backend answered how many.
fn traffic(
    topo: &Topology,
    vip: SocketAddr,
    first_port: u16,
    weights: &[u32],
) -> anyhow::Result<()> {
    let ports: Vec<u16> = (first_port..first_port + CONNECTIONS).collect();
    println!(
        "  client: {CONNECTIONS} TCP connections to {vip} from {CLIENT_V4}:{}-{}, each asking \
         \"which backend?\"",
        ports[0],
        ports[ports.len() - 1]
    );
    let t = Instant::now();
    let names = topo.client().ask_many(vip, &ports)?;
    println!(
        "  all {} answered in {} ms:\n",
        names.len(),
        t.elapsed().as_millis()
    );
    demo::print_spread(weights, &tally(&names), names.len());
    Ok(())
}

fn demo(topo: &Topology, vip: SocketAddr) -> anyhow::Result<()> {
    let vip_s = vip.to_string();
    let addr = |i: usize| topo.backend_addr(i, vip).to_string();

    println!("1. Add the VIP and three backends with equal weights (MACs come from the lb's");
    println!("   neighbour table):");
    step(topo, &["vip", "add", &vip_s])?;
    for i in 1..=3 {
        step(topo, &["backend", "add", &vip_s, &addr(i), "--weight", "1"])?;
    }
    println!();

    println!("2. Send traffic:");
    traffic(topo, vip, 20_000, &[1, 1, 1]).context("first round of traffic")?;

    println!("3. What the agent counted, and its state:");
    step(topo, &["stats"])?;
    println!();
    step(topo, &["status"])?;
    println!();

    println!("4. Give backend-3 four times the weight, live (open flows stay where they are):");
    step(topo, &["backend", "weight", &vip_s, &addr(3), "4"])?;
    println!();
    println!("   New connections (new source ports) follow the new weights:");
    traffic(topo, vip, 21_000, &[1, 1, 4]).context("second round of traffic")?;

    println!("5. Where does one flow go, and why?");
    step(
        topo,
        &[
            "flow",
            "--proto",
            "tcp",
            &format!("{CLIENT_V4}:20000"),
            &vip_s,
        ],
    )?;
    step(
        topo,
        &[
            "flow",
            "--proto",
            "tcp",
            &format!("{CLIENT_V4}:29999"),
            &vip_s,
        ],
    )?;
    println!("   (port 20000 was used above, so the connection table answers; 29999 never was,");
    println!("   so its Maglev slot decides)\n");

    println!("6. What Prometheus scrapes (`lbx run --metrics-listen {METRICS}`), a few lines:");
    let addr = METRICS.parse().expect("an address");
    let (status, _, body) = prometheus::http(&topo.lb.netns, addr, "GET", "/metrics", &[])?;
    anyhow::ensure!(status == 200, "GET /metrics answered {status}");
    for line in body
        .lines()
        .filter(|l| SHOWN.iter().any(|s| l.starts_with(s)))
    {
        println!("     {line}");
    }
    println!(
        "   ({} lines in all; deploy/grafana/lbx.json graphs them)\n",
        body.lines().filter(|l| !l.starts_with('#')).count()
    );
    Ok(())
}
