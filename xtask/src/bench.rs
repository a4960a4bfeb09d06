//! `cargo xtask bench`: the control-plane benchmarks (criterion, lbx-user's
//! `benches/control.rs`), then the data-plane benchmark `lbx-bench` (release build), which
//! prints the table and writes `<target>/lbx-bench/results.json`.

use anyhow::{Result, bail};

use crate::{
    bootstrap::{self, Need},
    process,
    workspace::Profile,
};

pub struct Options {
    /// Rounds and runs per round of the data-plane benchmark (lbx-bench's defaults if None).
    pub rounds: Option<usize>,
    pub batch: Option<usize>,
    /// Skip criterion (the table then shows the control plane as not run).
    pub no_control: bool,
}

/// Returns lbx-bench's exit code.
pub fn run(opts: &Options) -> Result<i32> {
    if !process::is_root() {
        bail!(
            "the benchmark needs root: it loads the XDP programs and runs packets through them \
             with BPF_PROG_TEST_RUN. Run it as root (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask bench`)"
        );
    }
    let ws = bootstrap::run(Need::Run)?;
    let target = ws.target_dir()?;
    if opts.no_control {
        println!("== control plane: skipped (--no-control)");
    } else {
        println!("== control plane (criterion: Maglev builds, generation publication)");
        process::run(&mut ws.cargo(["bench", "-p", "lbx-user", "--bench", "control"]))?;
    }
    println!("== data plane (lbx-bench, release build)");
    let mut build = ws.cargo(["build", "-p", "lbx-tests", "--bin", "lbx-bench"]);
    build.args(Profile::Release.flags());
    process::run(&mut build)?;
    let bench = ws.binary(Profile::Release, "lbx-bench")?;
    let mut cmd = ws.command(&bench);
    cmd.arg("--out")
        .arg(target.join("lbx-bench/results.json"))
        .arg("--criterion")
        .arg(target.join("criterion"));
    if let Some(r) = opts.rounds {
        cmd.arg("--rounds").arg(r.to_string());
    }
    if let Some(b) = opts.batch {
        cmd.arg("--batch").arg(b.to_string());
    }
    let status = process::status(&mut cmd)?;
    if !status.success() {
        eprintln!("xtask: lbx-bench ended with {}", process::describe(status));
    }
    Ok(process::exit_code(status))
}
