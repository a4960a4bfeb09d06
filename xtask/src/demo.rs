//! `cargo xtask demo`: builds everything the demo needs and runs `lbx-demo`.

use anyhow::{Result, bail};

use crate::{
    bootstrap::{self, Need},
    build::{TEST_PROFILE, TestBinaries},
    process,
};

/// Runs lbx-demo with `args`; returns its exit code.
pub fn run(args: &[String]) -> Result<i32> {
    if !process::is_root() {
        bail!(
            "the demo needs root: it loads XDP/BPF programs and creates network namespaces. \
             Run it as root (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask demo`)"
        );
    }
    let ws = bootstrap::run(Need::Run)?;
    println!("== build ({} profile)", TEST_PROFILE.dir());
    let bins = TestBinaries::build(&ws)?;
    let demo = ws.binary(TEST_PROFILE, "lbx-demo")?;
    println!("== demo");
    let mut cmd = ws.command(&demo);
    cmd.args(args);
    bins.set_env(&mut cmd);
    let status = process::status(&mut cmd)?;
    if !status.success() {
        eprintln!("xtask: lbx-demo ended with {}", process::describe(status));
    }
    Ok(process::exit_code(status))
}
