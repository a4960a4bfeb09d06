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
    /// Another build of the XDP programs, for `lbx run --xdp-object`
    /// (LBX_TEST_XDP_VARIANT): see [`xdp_variant`].
    pub xdp_variant: PathBuf,
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
            xdp_variant: xdp_variant(ws)?,
        })
    }

    /// Sets LBX_BIN, LBX_TEST_SERVER and LBX_TEST_XDP_VARIANT for a command that runs
    /// tests or the demo.
    pub fn set_env(&self, cmd: &mut std::process::Command) {
        cmd.env("LBX_BIN", &self.lbx)
            .env("LBX_TEST_SERVER", &self.test_server)
            .env("LBX_TEST_XDP_VARIANT", &self.xdp_variant);
    }
}

/// The variant's optimisation level; the embedded object is built at 3 (cargo's release
/// default). The verifier accepts both on the kernels the tests run on.
const VARIANT_OPT_LEVEL: &str = "2";

/// Builds lbx-ebpf as lbx-user/build.rs does (aya-build: nightly, `-Z build-std=core`,
/// BTF), at [`VARIANT_OPT_LEVEL`], into `<target>/lbx-xdp-variant`: the same programs and
/// maps in other instructions, which the restart test swaps in as an upgrade. Cargo keeps
/// it until lbx-ebpf or lbx-common change. Returns the object's path.
pub fn xdp_variant(ws: &Workspace) -> Result<PathBuf> {
    let dir = ws.target_dir()?.join("lbx-xdp-variant");
    let endian = if cfg!(target_endian = "big") {
        "bpfeb"
    } else {
        "bpfel"
    };
    let target = format!("{endian}-unknown-none");
    let mut cargo = ws.cargo(["+nightly", "build", "--package", "lbx-ebpf", "--bins"]);
    cargo
        .args(["--release", "--target", &target, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&dir)
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", VARIANT_OPT_LEVEL)
        // aya-build's flags, in cargo's encoding (separated by 0x1f).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!(
                "--cfg=bpf_target_arch=\"{}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
                std::env::consts::ARCH
            ),
        )
        // The outer cargo's compiler is the stable one; +nightly picks its own.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let why = || {
        format!(
            "could not build the variant XDP object (lbx-ebpf at opt-level \
             {VARIANT_OPT_LEVEL}, into {}) that the restart test upgrades to",
            dir.display()
        )
    };
    process::run(&mut cargo).with_context(why)?;
    let object = dir.join(&target).join("release/lbx-xdp");
    anyhow::ensure!(
        object.is_file(),
        "{}: the build made no {}",
        why(),
        object.display()
    );
    Ok(object)
}
