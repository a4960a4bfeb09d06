//! `cargo xtask demo [cluster]`: builds everything the demos need and runs `lbx-demo`, or
//! `lbx-demo-cluster`.

use anyhow::{Result, bail};

use crate::{
    bootstrap::{self, Need},
    build::{TEST_PROFILE, TestBinaries},
    process,
};

/// Runs lbx-demo (`what` none) or lbx-demo-cluster (`what` `cluster`) with `args`; returns
/// its exit code.
pub fn run(what: Option<&str>, args: &[String]) -> Result<i32> {
    let name = match what {
        None => "lbx-demo",
        Some("cluster") => "lbx-demo-cluster",
        Some(other) => bail!("no demo named {other:?}: `cargo xtask demo [cluster]`"),
    };
    if !process::is_root() {
        bail!(
            "the demo needs root: it loads XDP/BPF programs and creates network namespaces. \
             Run it as root (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask demo`)"
        );
    }
    let ws = bootstrap::run(Need::Run)?;
    println!("== build ({} profile)", TEST_PROFILE.dir());
    let bins = TestBinaries::build(&ws)?;
    let demo = ws.binary(TEST_PROFILE, name)?;
    println!("== demo");
    let mut cmd = ws.command(&demo);
    cmd.args(args);
    bins.set_env(&mut cmd);
    let status = process::status(&mut cmd)?;
    if !status.success() {
        eprintln!("xtask: {name} ended with {}", process::describe(status));
    }
    Ok(process::exit_code(status))
}
