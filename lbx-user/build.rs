//! Builds the XDP programs (lbx-ebpf) with the nightly toolchain and bpf-linker, and
//! embeds the object in the agent.

use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain, build_ebpf};

/// Where `cargo xtask` caches the bpf-linker it builds (see xtask/src/bootstrap.rs).
fn cached_bpf_linker_dir() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("LBX_CACHE_DIR") {
        return Some(PathBuf::from(dir).join("bpf-linker/bin"));
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("lbx/bpf-linker/bin"))
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LBX_CACHE_DIR");
    // Make a bpf-linker built by `cargo xtask` visible to the nested eBPF build, so a plain
    // `cargo build` works once xtask has bootstrapped the machine.
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if let Some(dir) = cached_bpf_linker_dir()
        && dir.join("bpf-linker").exists()
        && !dirs.contains(&dir)
    {
        dirs.insert(0, dir);
    }
    if !dirs.iter().any(|d| d.join("bpf-linker").exists()) {
        return Err(anyhow!(
            "bpf-linker not found on PATH nor in the lbx cache: run `cargo xtask build` once, \
             it builds one against the nightly toolchain's LLVM"
        ));
    }
    let path = env::join_paths(dirs).context("PATH")?;
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("PATH", path) };

    let ebpf = Package {
        name: "lbx-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lbx-ebpf"),
        ..Default::default()
    };
    build_ebpf([ebpf], Toolchain::Nightly)
}
