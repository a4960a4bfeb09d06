//! `cargo xtask bench adaptive` runs this: every scenario under every policy, then the report
//! (`adaptive.json`, a table, Markdown for the README) and one PNG per scenario in `--out`.
//! Needs root (it builds network namespaces). `--replot` redraws from a saved `adaptive.json`.
//! `--cluster N` runs the same through N lb nodes in cluster mode, with its own files
//! (`adaptive-cluster.json`, ...).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use lbx_tests::bench_adaptive::cpu;
use lbx_tests::bench_adaptive::harness::{self, Bins, RunResult};
use lbx_tests::bench_adaptive::plot;
use lbx_tests::bench_adaptive::report::{DISTURBED_PCT, Report, Settings};
use lbx_tests::bench_adaptive::scenario::{Policy, Scenario};

#[derive(Parser, Debug)]
#[command(about = "Adaptive weights against static ones, on real traffic through lbx")]
struct Args {
    /// Folder for adaptive.json, adaptive.md, the PNGs and the raw CSVs.
    #[arg(long, default_value = "target/lbx-bench")]
    out: PathBuf,
    /// Only these scenarios (heterogeneous, degradation, failure, surge); repeatable.
    #[arg(long)]
    scenario: Vec<String>,
    /// Only these policies (static-equal, static-equal-http, oracle, adaptive); repeatable.
    #[arg(long)]
    policy: Vec<String>,
    /// Multiply every scenario's times by this (0.5: half-length runs, for a quick look).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Balance through a cluster of N lb nodes (2 to 9) behind an ECMP router instead of one
    /// lb: cluster mode, with a 3-member etcd the benchmark starts. Its results go to
    /// OUT/adaptive-cluster.json, adaptive-cluster.md, adaptive-cluster-SCENARIO.png and
    /// OUT/adaptive-cluster/, beside the single lb's.
    #[arg(long, value_name = "N")]
    cluster: Option<usize>,
    /// Do not run anything: redraw the table and plots from OUT/adaptive.json (with
    /// --cluster, OUT/adaptive-cluster.json).
    #[arg(long)]
    replot: bool,
}

impl Args {
    /// How many lb nodes balance.
    fn lb_nodes(&self) -> usize {
        self.cluster.unwrap_or(1)
    }

    /// The start of every output's name: `adaptive`, or `adaptive-cluster`.
    fn stem(&self) -> &'static str {
        if self.cluster.is_some() {
            "adaptive-cluster"
        } else {
            "adaptive"
        }
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lbx-bench-adaptive: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether every run that was attempted succeeded.
fn real_main() -> anyhow::Result<bool> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    let stem = args.stem();
    let json_path = args.out.join(format!("{stem}.json"));
    let report = if args.replot {
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("failed to read {}", json_path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a report", json_path.display()))?
    } else {
        run(&args)?
    };
    if !args.replot {
        std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("failed to write {}", json_path.display()))?;
    }
    let md = args.out.join(format!("{stem}.md"));
    std::fs::write(&md, report.markdown())?;
    let mut pngs = Vec::new();
    for s in &report.scenarios {
        let png = args.out.join(format!("{stem}-{}.png", s.name));
        plot::scenario(&report, s, &png)?;
        pngs.push(png);
    }
    println!("\n{}", report.table());
    println!("results: {}", json_path.display());
    println!("table for the README: {}", md.display());
    for p in &pngs {
        println!("plot: {}", p.display());
    }
    Ok(report.runs.iter().all(|r| r.error.is_none()))
}

fn run(args: &Args) -> anyhow::Result<Report> {
    ensure!(
        lbx_tests::is_root(),
        "the benchmark must run as root (it creates network namespaces and loads XDP programs)"
    );
    ensure!(
        args.time_scale > 0.0 && args.time_scale <= 4.0,
        "--time-scale must be in (0, 4]"
    );
    let lb_nodes = args.lb_nodes();
    ensure!(
        args.cluster.is_none() || (2..=lbx_tests::fleet::MAX_NODES).contains(&lb_nodes),
        "--cluster takes 2 to {} nodes",
        lbx_tests::fleet::MAX_NODES
    );
    let scenarios: Vec<Scenario> = Scenario::all()
        .into_iter()
        .filter(|s| args.scenario.is_empty() || args.scenario.contains(&s.name))
        .map(|s| s.scaled(args.time_scale))
        .collect();
    if scenarios.is_empty() {
        bail!("no scenario is named {:?}", args.scenario);
    }
    let mut policies = Vec::new();
    for p in &args.policy {
        policies.push(Policy::parse(p).with_context(|| {
            format!("unknown policy {p:?}: use static-equal, static-equal-http, oracle or adaptive")
        })?);
    }
    if policies.is_empty() {
        policies = Policy::ALL.to_vec();
    }
    // Best effort: the load generator and the servers should not wait behind unrelated work
    // on the host (a compile, say); what the benchmark measures is their queues, not the host's.
    // SAFETY: setpriority has no memory effects; children inherit the priority.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) } != 0 {
        eprintln!(
            "warning: could not raise the benchmark's priority: {}",
            std::io::Error::last_os_error()
        );
    }
    let bins = Bins::locate()?;
    let adaptive = bins.lbx_has_adaptive();
    if !adaptive && policies.contains(&Policy::Adaptive) {
        println!(
            "adaptive: skipped in every scenario: {} has no `lbx vip adaptive` yet",
            bins.lbx.display()
        );
    }
    if let Some(busy) = cpu::host_busy_pct(Duration::from_secs(2))
        && busy > DISTURBED_PCT
    {
        println!(
            "warning: the host is already {busy:.0}% busy before the benchmark starts: other \
             work will disturb the numbers (each run reports how much)"
        );
    }
    let csv_dir = args.out.join(args.stem());
    std::fs::create_dir_all(&csv_dir)?;
    let started = Instant::now();
    let mut runs = Vec::new();
    for s in &scenarios {
        for &p in &policies {
            if p == Policy::Adaptive && !adaptive {
                runs.push(RunResult::skipped(
                    s,
                    p,
                    "this lbx has no `lbx vip adaptive` (adaptive weights not built yet)",
                ));
                continue;
            }
            println!(
                "== {} / {}{} ({:.0} s; {:.0} s so far)",
                s.name,
                p.name(),
                if lb_nodes > 1 {
                    format!(" / cluster of {lb_nodes}")
                } else {
                    String::new()
                },
                s.duration_s,
                started.elapsed().as_secs_f64()
            );
            let r = harness::run(&bins, s, p, lb_nodes, &csv_dir);
            match (&r.error, &r.summary) {
                (Some(e), _) => println!("   FAILED: {e}"),
                (None, Some(sum)) => println!(
                    "   p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, errors {:.2}%",
                    sum.p50_ms.unwrap_or(f64::NAN),
                    sum.p99_ms.unwrap_or(f64::NAN),
                    sum.p999_ms.unwrap_or(f64::NAN),
                    100.0 * sum.error_rate
                ),
                (None, None) => {}
            }
            runs.push(r);
        }
    }
    let mut report = Report {
        finished_unix_s: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        settings: Settings::current(adaptive, lb_nodes),
        scenarios,
        runs,
        targets: Vec::new(),
    };
    report.judge();
    println!("benchmark took {:.0} s", started.elapsed().as_secs_f64());
    Ok(report)
}
