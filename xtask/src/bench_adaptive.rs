//! `cargo xtask bench adaptive`: builds (release) what the adaptive-weights benchmark needs and
//! runs `lbx-bench-adaptive` as root: four scenarios, each under static equal weights, an
//! oracle's static weights and lbx's adaptive weights, in the namespace test network. Writes
//! <target>/lbx-bench/adaptive.json, adaptive.md and adaptive-<scenario>.png; with
//! `-- --cluster N`, through N lb nodes in cluster mode (etcd started by the benchmark), to
//! adaptive-cluster.json, adaptive-cluster.md and adaptive-cluster-<scenario>.png.

use anyhow::{Result, bail};

use crate::{
    bootstrap::{self, Need},
    process,
    workspace::Profile,
};

/// The binaries of lbx-tests the benchmark runs.
const TEST_BINS: [&str; 4] = [
    "lbx-test-server",
    "lbx-capacity-server",
    "lbx-loadgen",
    "lbx-bench-adaptive",
];

/// Runs the benchmark with `args` for lbx-bench-adaptive; returns its exit code.
pub fn run(args: &[String]) -> Result<i32> {
    if !process::is_root() {
        bail!(
            "the adaptive benchmark needs root: it loads XDP programs and creates network \
             namespaces. Run it as root (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask bench \
             adaptive`)"
        );
    }
    let ws = bootstrap::run(Need::Run)?;
    let profile = Profile::Release;
    println!("== build ({} profile)", profile.dir());
    let mut lbx = ws.cargo(["build", "-p", "lbx-user", "--bin", "lbx"]);
    lbx.args(profile.flags());
    process::run(&mut lbx)?;
    let mut tests = ws.cargo(["build", "-p", "lbx-tests"]);
    for bin in TEST_BINS {
        tests.args(["--bin", bin]);
    }
    tests.args(profile.flags());
    process::run(&mut tests)?;

    let out = ws.target_dir()?.join("lbx-bench");
    let mut cmd = ws.command(ws.binary(profile, "lbx-bench-adaptive")?);
    cmd.arg("--out").arg(&out).args(args);
    for (env, bin) in [
        ("LBX_BIN", "lbx"),
        ("LBX_TEST_SERVER", "lbx-test-server"),
        ("LBX_CAPACITY_SERVER", "lbx-capacity-server"),
        ("LBX_LOADGEN", "lbx-loadgen"),
    ] {
        cmd.env(env, ws.binary(profile, bin)?);
    }
    println!("== bench adaptive (about 10 minutes)");
    let status = process::status(&mut cmd)?;
    if !status.success() {
        eprintln!(
            "xtask: lbx-bench-adaptive ended with {}",
            process::describe(status)
        );
    }
    Ok(process::exit_code(status))
}
