//! `cargo xtask`: developer tasks for lbx (alias in .cargo/config.toml).
//!
//! Kept light on purpose (anyhow and clap only) so it compiles in seconds before anything
//! else; everything heavy happens in the child cargo commands it runs.

mod bootstrap;
mod bpf_linker;
mod build;
mod demo;
mod process;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::process::Interrupted;

/// Developer tasks for lbx, an XDP layer-4 load balancer.
///
/// Every task first bootstraps the machine (nightly toolchain, rust-src, a cached
/// bpf-linker built against the nightly's LLVM, the Debian packages the tests use); that
/// is quick when nothing is missing. Run `cargo xtask <TASK> --help` for details.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Bootstrap, then build every binary of the workspace (release by default).
    ///
    /// Runs `cargo build --workspace --bins --release`. The XDP programs (lbx-ebpf) are
    /// compiled by lbx-user's build script (aya-build) with the nightly toolchain and
    /// bpf-linker, and embedded in the `lbx` binary.
    Build {
        /// Build the dev profile (target/debug) instead of release.
        #[arg(long)]
        debug: bool,
    },

    /// Bootstrap, then run every test tier: lint, unit, kernel; summary at the end.
    ///
    /// Tiers, in order (a failing tier does not stop the next ones; the exit status is
    /// non-zero if any failed):
    ///
    ///   lint    cargo fmt --all -- --check;
    ///           cargo clippy --workspace --all-targets -- -D warnings
    ///
    ///   unit    cargo test --workspace --lib --bins; cargo test --workspace --doc;
    ///           cargo test -p lbx-common (on its own, without the `user` feature)
    ///
    ///   kernel  the integration tests of lbx-tests (tests/tests/*.rs), one at a time
    ///           (--test-threads=1), with LBX_BIN and LBX_TEST_SERVER set to the freshly
    ///           built `lbx` and `lbx-test-server` (dev profile). They load XDP programs
    ///           and create network namespaces, so they need root.
    ///
    /// Arguments after `--` go to every test binary of the unit and kernel tiers, e.g. a
    /// name filter: `cargo xtask test -- maglev`, or `-- --exact some::test`.
    #[command(verbatim_doc_comment)]
    Test {
        /// Run only this tier (repeat for several): lint, unit or kernel.
        #[arg(long, value_enum, value_name = "TIER")]
        only: Vec<test::Tier>,

        /// Filter and options passed to the test binaries (after `--`).
        #[arg(last = true, value_name = "FILTER")]
        filter: Vec<String>,
    },

    /// Bootstrap, build (dev profile), then run the demo `lbx-demo` as root.
    ///
    /// Builds `lbx` and the binaries of lbx-tests, then runs target/debug/lbx-demo with
    /// LBX_BIN and LBX_TEST_SERVER set like for the kernel tests, and exits with its exit
    /// status. Arguments after `--` are passed to the demo.
    Demo {
        /// Arguments for lbx-demo (after `--`).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },

    /// Only bootstrap the machine (what every other task does first).
    ///
    /// Steps, each printing one line and quick when already satisfied:
    ///
    ///   1. the nightly toolchain (rustup toolchain install nightly --profile minimal);
    ///   2. its rust-src component (needed by -Z build-std=core);
    ///   3. bpf-linker in <cache>/bpf-linker/bin, where <cache> is $LBX_CACHE_DIR, else
    ///      $XDG_CACHE_HOME/lbx, else ~/.cache/lbx: built from crates.io against the
    ///      nightly's own libLLVM when missing or built for another LLVM major version
    ///      (about a minute; needs crates.io). Child cargo commands get it first on PATH;
    ///   4. the Debian packages the tests and the demo use (installed with apt-get when
    ///      root, otherwise the missing ones are named).
    #[command(verbatim_doc_comment)]
    Bootstrap,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Build { debug } => build::run(debug).map(|()| 0),
        Task::Test { only, filter } => test::run(&only, &filter),
        Task::Demo { args } => demo::run(&args),
        Task::Bootstrap => bootstrap::run(bootstrap::Need::Run).map(|_| 0),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("xtask: interrupted");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
