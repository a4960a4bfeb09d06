//! `cargo xtask build`, and the builds the tests and the demo need.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{
    bootstrap::{self, Need},
    process,
    workspace::{Profile, Workspace},
};

/// The profile of the binaries the kernel tests and the demo run (quicker to build).
pub const TEST_PROFILE: Profile = Profile::Debug;

/// `cargo xtask build [--debug]`.
pub fn run(debug: bool) -> Result<()> {
    let ws = bootstrap::run(Need::Build)?;
    let profile = if debug {
        Profile::Debug
    } else {
        Profile::Release
    };
    println!("== build ({} profile)", profile.dir());
    let mut cargo = ws.cargo(["build", "--workspace", "--bins"]);
    cargo.args(profile.flags());
    process::run(&mut cargo)?;
    let lbx = ws.binary(profile, "lbx")?;
    println!("built {}", lbx.display());
    Ok(())
}

/// The binaries the kernel tests and the demo run.
pub struct TestBinaries {
    /// The `lbx` agent (LBX_BIN).
    pub lbx: PathBuf,
    /// lbx-tests' `lbx-test-server` (LBX_TEST_SERVER).
    pub test_server: PathBuf,
}

impl TestBinaries {
    /// Builds `lbx` and the binaries of lbx-tests with [`TEST_PROFILE`].
    pub fn build(ws: &Workspace) -> Result<Self> {
        let mut lbx = ws.cargo(["build", "-p", "lbx-user", "--bin", "lbx"]);
        lbx.args(TEST_PROFILE.flags());
        process::run(&mut lbx)?;
        let mut tests = ws.cargo(["build", "-p", "lbx-tests", "--bins"]);
        tests.args(TEST_PROFILE.flags());
        process::run(&mut tests)?;
        Ok(Self {
            lbx: ws.binary(TEST_PROFILE, "lbx")?,
            test_server: ws
                .binary(TEST_PROFILE, "lbx-test-server")
                .context("lbx-tests must provide the lbx-test-server binary")?,
        })
    }

    /// Sets LBX_BIN and LBX_TEST_SERVER for a command that runs tests or the demo.
    pub fn set_env(&self, cmd: &mut std::process::Command) {
        cmd.env("LBX_BIN", &self.lbx)
            .env("LBX_TEST_SERVER", &self.test_server);
    }
}
