//! Bootstrap: makes this machine able to build and test lbx. Idempotent; each step prints
//! one line and is quick when already satisfied.
//!
//! 1. the nightly toolchain (the eBPF crate is built with `-Z build-std=core`);
//! 2. its `rust-src` component;
//! 3. bpf-linker, built against the nightly's own LLVM and cached outside the source tree
//!    (see [`crate::bpf_linker`]);
//! 4. the Debian packages the build needs ([`BUILD_PACKAGES`]; missing ones are an error
//!    for every task), then those the tests and the demo run ([`PACKAGES`]);
//! 5. for `vm-test` only, the packages that boot test VMs ([`VM_PACKAGES`], [`vm_packages`]).

use std::{collections::BTreeSet, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{bpf_linker, process, workspace::Workspace};

/// Debian packages building the workspace needs, with a command each provides. Every task
/// builds lbx-user (clippy, tests, demo, benchmarks, install), so a missing one is an error
/// even for a task that only builds.
pub const BUILD_PACKAGES: &[(&str, &str)] = &[
    // The etcd-client crate's build script compiles etcd's gRPC definitions with protoc.
    ("protobuf-compiler", "protoc"),
];

/// Debian packages the kernel tests and the demo use, with a command each provides (checked
/// on machines without dpkg).
pub const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("tcpdump", "tcpdump"),
    ("iputils-ping", "ping"),
    ("procps", "sysctl"),
    // The metrics test scrapes lbx with a real Prometheus and checks with its promtool.
    ("prometheus", "promtool"),
    // The CLI test checks the generated zsh completions with `zsh -n`.
    ("zsh", "zsh"),
    // The cluster tests run a real etcd cluster (3.4) and write and read keys with etcdctl.
    ("etcd-server", "etcd"),
    ("etcd-client", "etcdctl"),
];

/// Debian packages `vm-test` needs on the host, with a command each provides: qemu, a
/// static busybox (the guest's shell and tools, and `depmod`/`xzcat` for the kernel's
/// modules) and `strip` (debug binaries are mostly debug information the guest needs not).
pub const VM_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "busybox"),
    ("binutils", "strip"),
];

/// What the caller needs from the machine besides the toolchains.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Building only: missing run-time packages are a warning when they cannot be installed.
    Build,
    /// Running the tests or the demo: missing packages are an error.
    Run,
}

/// Runs every bootstrap step and returns the workspace with the cached tools on PATH.
pub fn run(need: Need) -> Result<Workspace> {
    println!("== bootstrap");
    nightly_toolchain()?;
    rust_src()?;
    let linker_dir = bpf_linker::ensure()?;
    // A tool the build runs is needed whatever the task: an error, as for running tests.
    packages(
        BUILD_PACKAGES,
        Need::Run,
        "the build of lbx-user needs them: the etcd-client crate's build script runs protoc",
    )?;
    packages(PACKAGES, need, "the kernel tests and the demo use them")?;
    Workspace::new(&[linker_dir])
}

fn step(what: &str) {
    println!("-- {what}");
}

fn rustup() -> Command {
    Command::new("rustup")
}

/// Step 1: the nightly toolchain is installed.
fn nightly_toolchain() -> Result<()> {
    let list = process::stdout(rustup().args(["toolchain", "list"]))
        .context("could not list the Rust toolchains: is rustup installed? (https://rustup.rs)")?;
    if has_nightly(&list) {
        step("nightly toolchain: installed");
        return Ok(());
    }
    step("nightly toolchain: missing, installing it");
    process::run(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))
        .context(
            "could not install the nightly toolchain, which builds the eBPF programs \
             (-Z build-std=core). Check network access to static.rust-lang.org, or install \
             it by hand: rustup toolchain install nightly --profile minimal --component rust-src",
        )
}

/// Whether `rustup toolchain list` shows the host's plain `nightly` (not a dated one).
fn has_nightly(list: &str) -> bool {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| {
            name == "nightly"
                || name
                    .strip_prefix("nightly-")
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
}

/// Step 2: the nightly's `rust-src` component (needed by `-Z build-std=core`).
fn rust_src() -> Result<()> {
    let installed = process::stdout(rustup().args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("could not list the nightly toolchain's components")?;
    if installed.lines().any(|l| l.trim() == "rust-src") {
        step("nightly rust-src component: installed");
        return Ok(());
    }
    step("nightly rust-src component: missing, adding it");
    process::run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"])).context(
        "could not add rust-src to the nightly toolchain (needed by -Z build-std=core). \
             Check network access, or run: rustup component add rust-src --toolchain nightly",
    )
}

/// Step 5, for `vm-test` only: the packages in [`VM_PACKAGES`].
pub fn vm_packages() -> Result<()> {
    packages(VM_PACKAGES, Need::Run, "the VM tests use them")
}

/// Step 4: the Debian packages in `wanted`, installed with apt-get when root.
fn packages(wanted: &[(&str, &str)], need: Need, why: &str) -> Result<()> {
    let names: Vec<&str> = wanted.iter().map(|(p, _)| *p).collect();
    let missing = match missing_packages(&names)? {
        Some(missing) => missing,
        None => return commands_without_dpkg(wanted, need),
    };
    if missing.is_empty() {
        step(&format!("packages {}: installed", names.join(", ")));
        return Ok(());
    }
    let list = missing.join(" ");
    if !process::is_root() {
        let msg = format!(
            "packages {list} are missing and xtask is not root: install them with \
             `sudo apt-get install {list}` ({why})"
        );
        if need == Need::Build {
            step(&format!("warning: {msg}"));
            return Ok(());
        }
        bail!(msg);
    }
    step(&format!(
        "packages {list}: missing, installing them with apt-get"
    ));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null());
        cmd
    };
    process::run(&mut apt(&["-q", "update"]))
        .context("`apt-get update` failed: check network access to the Debian mirrors")?;
    let mut install = apt(&["-q", "install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    process::run(&mut install).with_context(|| format!("could not install {list}"))?;
    let still = missing_packages(&names)?.unwrap_or_default();
    if !still.is_empty() {
        bail!(
            "apt-get ran but {} are still not installed",
            still.join(" ")
        );
    }
    Ok(())
}

/// The packages dpkg does not list as installed; `None` when there is no dpkg-query.
fn missing_packages(names: &[&str]) -> Result<Option<Vec<String>>> {
    let mut query = Command::new("dpkg-query");
    query.args(["-W", "-f=${Package}\t${Status}\n"]).args(names);
    let out = match process::output(&mut query) {
        Ok(out) => out,
        Err(_) if which("dpkg-query").is_none() => return Ok(None),
        Err(e) => return Err(e),
    };
    // dpkg-query exits with 1 when some package is unknown: the listing is still valid.
    let installed: BTreeSet<&str> = std::str::from_utf8(&out.stdout)
        .context("dpkg-query output is not UTF-8")?
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| *status == "install ok installed")
        .map(|(name, _)| name)
        .collect();
    Ok(Some(
        names
            .iter()
            .filter(|n| !installed.contains(*n))
            .map(|n| n.to_string())
            .collect(),
    ))
}

/// Without dpkg (not Debian): check that the commands the packages provide are on PATH.
fn commands_without_dpkg(wanted: &[(&str, &str)], need: Need) -> Result<()> {
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(_, cmd)| which(cmd).is_none())
        .map(|(pkg, cmd)| format!("{cmd} (Debian package {pkg})"))
        .collect();
    if missing.is_empty() {
        step("no dpkg: the commands the tests use are all on PATH");
        return Ok(());
    }
    let msg = format!(
        "no dpkg on this machine and these commands are missing: {}; install them with \
         the system's package manager",
        missing.join(", ")
    );
    if need == Need::Build {
        step(&format!("warning: {msg}"));
        return Ok(());
    }
    bail!(msg)
}

/// The first file called `name` on PATH (or in the sbin folders root uses).
fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_is_found_only_as_the_plain_channel() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(has_nightly(
            "nightly-aarch64-unknown-linux-gnu (override)\n"
        ));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n"));
        assert!(!has_nightly(
            "nightly-2026-05-19-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_nightly("no installed toolchains\n"));
    }
}
