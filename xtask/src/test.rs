//! `cargo xtask test`: every test tier this host can run, in order, with a summary.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    bootstrap::{self, Need},
    build::{TEST_PROFILE, TestBinaries},
    process::{self, Interrupted},
    workspace::Workspace,
};

/// The test tiers, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// Rustfmt check and clippy with warnings denied.
    Lint,
    /// Unit and doc tests of every crate.
    Unit,
    /// Integration tests of lbx-tests against the kernel (root).
    Kernel,
    /// The same integration tests inside VMs on the pinned kernels (`vm-test
    /// --self-check`).
    Vm,
}

impl Tier {
    const ALL: [Tier; 4] = [Tier::Lint, Tier::Unit, Tier::Kernel, Tier::Vm];

    fn name(self) -> &'static str {
        match self {
            Tier::Lint => "lint",
            Tier::Unit => "unit",
            Tier::Kernel => "kernel",
            Tier::Vm => "vm",
        }
    }

    fn about(self) -> &'static str {
        match self {
            Tier::Lint => "cargo fmt --check, cargo clippy -D warnings",
            Tier::Unit => "unit and doc tests of every crate",
            Tier::Kernel => "lbx-tests integration tests: XDP, BPF maps, network namespaces",
            Tier::Vm => {
                "a self-check, then the integration tests inside VMs on the kernels of \
                 xtask/kernels.toml"
            }
        }
    }
}

enum Outcome {
    Passed,
    Failed(Vec<String>),
}

/// `cargo xtask test [--only TIER]... [-- FILTER...]`; returns the exit code.
pub fn run(only: &[Tier], filter: &[String]) -> Result<i32> {
    let tiers: Vec<Tier> = Tier::ALL
        .into_iter()
        .filter(|t| only.is_empty() || only.contains(t))
        .collect();
    if tiers.contains(&Tier::Kernel) && !process::is_root() {
        bail!(
            "the kernel tests need root: they load XDP/BPF programs and create network \
             namespaces. Run as root (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask test`), \
             or run only the other tiers: `cargo xtask test --only lint --only unit`"
        );
    }
    let need = if tiers.contains(&Tier::Kernel) {
        Need::Run
    } else {
        Need::Build
    };
    let ws = bootstrap::run(need)?;

    let mut results = Vec::new();
    for (i, &tier) in tiers.iter().enumerate() {
        banner(&format!(
            "tier {}/{}: {} ({})",
            i + 1,
            tiers.len(),
            tier.name(),
            tier.about()
        ));
        let start = Instant::now();
        let outcome = match tier {
            Tier::Lint => lint(&ws)?,
            Tier::Unit => unit(&ws, filter)?,
            Tier::Kernel => kernel(&ws, filter)?,
            Tier::Vm => vm(&ws, filter)?,
        };
        let elapsed = start.elapsed();
        match &outcome {
            Outcome::Passed => println!("-- tier {}: passed", tier.name()),
            Outcome::Failed(why) => println!("-- tier {}: FAILED: {}", tier.name(), why.join("; ")),
        }
        results.push((tier, outcome, elapsed));
    }

    banner("summary");
    let mut failed = 0;
    for (tier, outcome, elapsed) in &results {
        let secs = elapsed.as_secs_f64();
        match outcome {
            Outcome::Passed => println!("  {:<7} ok      {secs:7.1} s", tier.name()),
            Outcome::Failed(why) => {
                failed += 1;
                println!("  {:<7} FAILED  {secs:7.1} s", tier.name());
                for w in why {
                    println!("          {w}");
                }
            }
        }
    }
    let total: Duration = results.iter().map(|(_, _, d)| *d).sum();
    if failed == 0 {
        println!(
            "all {} tiers passed ({:.1} s)",
            results.len(),
            total.as_secs_f64()
        );
        Ok(0)
    } else {
        println!(
            "{failed} of {} tiers FAILED ({:.1} s)",
            results.len(),
            total.as_secs_f64()
        );
        Ok(1)
    }
}

fn banner(title: &str) {
    println!();
    println!("{}", "=".repeat(78));
    println!("== {title}");
    println!("{}", "=".repeat(78));
}

/// Runs the steps of a tier, all of them even after a failure, and collects the failures.
/// Only Ctrl-C stops everything.
#[derive(Default)]
struct Steps {
    failures: Vec<String>,
}

impl Steps {
    /// Runs one command; returns whether it succeeded.
    fn run(&mut self, mut cmd: Command) -> Result<bool> {
        match process::run(&mut cmd) {
            Ok(()) => Ok(true),
            Err(e) if e.is::<Interrupted>() => Err(e),
            Err(e) => {
                self.failures.push(format!("{e:#}"));
                Ok(false)
            }
        }
    }

    fn outcome(self) -> Outcome {
        if self.failures.is_empty() {
            Outcome::Passed
        } else {
            Outcome::Failed(self.failures)
        }
    }
}

fn lint(ws: &Workspace) -> Result<Outcome> {
    let mut steps = Steps::default();
    steps.run(ws.cargo(["fmt", "--all", "--", "--check"]))?;
    steps.run(ws.cargo([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    Ok(steps.outcome())
}

/// `cargo <args> -- <filter>`.
fn cargo_test(ws: &Workspace, args: &[&str], filter: &[String]) -> Command {
    let mut cmd = ws.cargo(args);
    if !filter.is_empty() {
        cmd.arg("--").args(filter);
    }
    cmd
}

fn unit(ws: &Workspace, filter: &[String]) -> Result<Outcome> {
    let mut steps = Steps::default();
    steps.run(cargo_test(
        ws,
        &["test", "--workspace", "--lib", "--bins"],
        filter,
    ))?;
    steps.run(cargo_test(ws, &["test", "--workspace", "--doc"], filter))?;
    // On its own: in the workspace, lbx-user turns on lbx-common's `user` feature.
    steps.run(cargo_test(ws, &["test", "-p", "lbx-common"], filter))?;
    Ok(steps.outcome())
}

fn kernel(ws: &Workspace, filter: &[String]) -> Result<Outcome> {
    let bins = match TestBinaries::build(ws) {
        Ok(bins) => bins,
        Err(e) if e.is::<Interrupted>() => return Err(e),
        Err(e) => return Ok(Outcome::Failed(vec![format!("{e:#}")])),
    };
    let mut cmd = ws.cargo(["test", "-p", "lbx-tests", "--test", "*"]);
    cmd.args(TEST_PROFILE.flags());
    bins.set_env(&mut cmd);
    cmd.args(["--", "--test-threads=1"]).args(filter);
    let mut steps = Steps::default();
    steps.run(cmd)?;
    Ok(steps.outcome())
}

fn vm(ws: &Workspace, filter: &[String]) -> Result<Outcome> {
    match crate::vm::suite(ws, &crate::vm::Args::with_filter(filter)) {
        Ok(runs) if runs.iter().all(crate::vm::KernelRun::ok) => Ok(Outcome::Passed),
        Ok(runs) => Ok(Outcome::Failed(
            runs.iter().filter(|r| !r.ok()).map(|r| r.line()).collect(),
        )),
        Err(e) if e.is::<Interrupted>() => Err(e),
        Err(e) => Ok(Outcome::Failed(vec![format!("{e:#}")])),
    }
}
