//! `cargo xtask`: developer tasks for lbx (alias in .cargo/config.toml).
//!
//! Kept light on purpose (anyhow and clap only) so it compiles in seconds before anything
//! else; everything heavy happens in the child cargo commands it runs.

mod bench;
mod bench_adaptive;
mod bootstrap;
mod bpf_linker;
mod build;
mod demo;
mod install;
mod process;
mod test;
mod vm;
mod vm_fault;
mod vm_guest;
mod vm_initramfs;
mod vm_kernel;
mod vm_qemu;
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

    /// Build `lbx` and install it with its shell completions and man pages.
    ///
    /// Under PREFIX: bin/lbx, share/bash-completion/completions/lbx,
    /// share/zsh/site-functions/_lbx, share/fish/vendor_completions.d/lbx.fish and
    /// share/man/man1/lbx*.1 (one page per command). The systemd unit and the monitoring
    /// files are under deploy/.
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Stage the files under DIR (DIR/PREFIX/...), e.g. for a package.
        #[arg(long, value_name = "DIR")]
        destdir: Option<std::path::PathBuf>,
        /// Install the dev-profile build instead of release.
        #[arg(long)]
        debug: bool,
    },

    /// Bootstrap, then run the test tiers lint, unit, kernel and vm; summary at the end.
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
    ///   vm      the same integration tests inside VMs on every kernel pinned in
    ///           xtask/kernels.toml: `cargo xtask vm-test --self-check` (first a VM whose
    ///           balancer the verifier rejects must be reported failed, then each kernel's
    ///           run; about 20 minutes under TCG, see README "Test tiers")
    ///
    /// Arguments after `--` go to every test binary of the unit, kernel and vm tiers, e.g. a
    /// name filter: `cargo xtask test -- maglev`, or `-- --exact some::test`.
    #[command(verbatim_doc_comment)]
    Test {
        /// Run only this tier (repeat for several): lint, unit, kernel or vm.
        #[arg(long, value_enum, value_name = "TIER")]
        only: Vec<test::Tier>,

        /// Filter and options passed to the test binaries (after `--`).
        #[arg(last = true, value_name = "FILTER")]
        filter: Vec<String>,
    },

    /// Bootstrap, build, then run the integration tests inside VMs on other kernels.
    ///
    /// Boots each kernel pinned in xtask/kernels.toml (Debian's 6.1 and 6.12 cloud kernels)
    /// with qemu and runs the integration tests of lbx-tests in it, one at a time, with
    /// results from all kernels reported together at the end. Needs no root once the
    /// packages are there (qemu-system-x86, busybox-static, binutils; installed when root).
    ///
    ///   kernels     fetched once with `apt-get download` into <cache>/vm (see `bootstrap`),
    ///               checked against their sha256, reused offline afterwards;
    ///   initramfs   a cached base per kernel (busybox, ip, setpriv, the module closure of
    ///               veth, bridge, ipip, ip6_tunnel) plus the test binaries of this run;
    ///   binaries    lbx, lbx-test-server and the tests, release profile (--debug: dev),
    ///               stripped; LBX_TEST_SCALE=0.5 in the guests unless set here (the
    ///               tests make half the connections, flows and generations, never fewer
    ///               than their checks need);
    ///   decap       in the VMs, odd backends decapsulate with the kernel's tunl0/ip6tnl0,
    ///               even ones with `lbx decap` (--decap mixed); repeating --decap (kernel,
    ///               xdp, mixed) runs the suite once per mode;
    ///   CPU         KVM when kvm_intel or kvm_amd is loaded (or LBX_VM_KVM=1), else TCG
    ///               (LBX_VM_KVM=0 forces it);
    ///   limits      each test --test-timeout, each VM --timeout; a guest that panics,
    ///               hangs or stops without its final marker fails with its last console
    ///               lines (the whole console is in target/vm-test/<kernel>/console.log);
    ///               the tests wait LBX_TEST_TIME_SCALE (10 under TCG, 2 under KVM) times
    ///               longer for what must happen, never for what they assert;
    ///   faults      --fault verifier|panic|hang|exit (or LBX_VM_FAULT) breaks the guests on
    ///               purpose to show how that is reported: `verifier` gives lbx and the
    ///               tests a balancer the verifier rejects; --self-check first boots one
    ///               such VM and fails unless it is reported failed.
    ///
    /// One test in one VM (tests are named <binary>::<test>; `--exact` takes whole names):
    ///   cargo xtask vm-test --kernel 6.1 -- health::failed_backend_leaves_and_returns_v4
    ///   cargo xtask vm-test --kernel 6.1 --fault verifier -- dsr
    #[command(verbatim_doc_comment)]
    VmTest(vm::Args),

    /// Inside a test VM: run the plan's tests and report on the console (used by /init).
    #[command(hide = true)]
    VmGuest {
        /// The plan written by `vm-test`.
        plan: std::path::PathBuf,
    },

    /// Bootstrap, build (dev profile), then run the demo `lbx-demo` as root.
    ///
    /// Builds `lbx` and the binaries of lbx-tests, then runs target/debug/lbx-demo with
    /// LBX_BIN and LBX_TEST_SERVER set like for the kernel tests, and exits with its exit
    /// status. Arguments after `--` are passed to the demo.
    ///
    /// `cargo xtask demo cluster` runs instead the cluster demo (lbx-demo-cluster, about
    /// 20 s): a real 3-member etcd over TLS, three lb nodes in cluster mode behind an ECMP
    /// router; a change on one node timed until every node serves it, 200 connections over
    /// the nodes, a node taken out while they are open, etcd members killed and restarted.
    #[command(verbatim_doc_comment)]
    Demo {
        /// `cluster`: the cluster-mode demo instead of the single-node one.
        #[arg(value_parser = ["cluster"])]
        what: Option<String>,
        /// Arguments for the demo (after `--`).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },

    /// Bootstrap, then benchmark the control plane and the data plane (root).
    ///
    ///   control  criterion: Maglev table build for M = 65537 with 10, 100 and 1000
    ///            backends; publishing a whole generation (lbx-user/benches/control.rs)
    ///
    ///   data     lbx-bench (release): ns/packet of each fixture through BPF_PROG_TEST_RUN,
    ///            one run per call on a fresh frame (repeat = 1), rounds interleaved;
    ///            ratios to the floors measured the same way in the same run (an empty
    ///            program; a minimal forwarder without lookups)
    ///
    /// Prints the table; writes <target>/lbx-bench/results.json.
    ///
    /// `cargo xtask bench adaptive [-- ARGS]` runs instead the proof of adaptive weights
    /// (lbx-bench-adaptive, release, root): four scenarios in the namespace test network under
    /// static, oracle and adaptive weights; writes <target>/lbx-bench/adaptive.json, .md and
    /// adaptive-<scenario>.png. ARGS go to lbx-bench-adaptive (e.g. `-- --scenario failure`;
    /// `-- --cluster 3`: through three lb nodes in cluster mode, with etcd, to
    /// adaptive-cluster.json, .md and adaptive-cluster-<scenario>.png).
    #[command(verbatim_doc_comment)]
    Bench {
        /// `adaptive`: the adaptive-weights benchmark instead of control and data.
        #[arg(value_parser = ["adaptive"])]
        what: Option<String>,
        /// Rounds per data-plane fixture (default 31).
        #[arg(long)]
        rounds: Option<usize>,
        /// Timed runs per fixture and round (default 2000).
        #[arg(long)]
        batch: Option<usize>,
        /// Skip the criterion control-plane benchmarks.
        #[arg(long)]
        no_control: bool,
        /// Arguments for lbx-bench-adaptive (after `--`).
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
    ///   4. the Debian packages the build needs (protobuf-compiler: protoc, for the
    ///      etcd-client crate; missing it is an error for every task), then those the
    ///      tests and the demo use (installed with apt-get when root, otherwise the
    ///      missing ones are named);
    ///   5. for `vm-test` only (not done here): qemu-system-x86, busybox-static, binutils.
    #[command(verbatim_doc_comment)]
    Bootstrap,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Build { debug } => build::run(debug).map(|()| 0),
        Task::Install {
            prefix,
            destdir,
            debug,
        } => install::run(&install::Options {
            prefix,
            destdir,
            debug,
        })
        .map(|()| 0),
        Task::Test { only, filter } => test::run(&only, &filter),
        Task::Demo { what, args } => demo::run(what.as_deref(), &args),
        Task::VmTest(args) => vm::run(&args),
        Task::VmGuest { plan } => vm_guest::run(&plan),
        Task::Bootstrap => bootstrap::run(bootstrap::Need::Run).map(|_| 0),
        Task::Bench {
            what: Some(_),
            args,
            ..
        } => bench_adaptive::run(&args),
        Task::Bench {
            rounds,
            batch,
            no_control,
            ..
        } => bench::run(&bench::Options {
            rounds,
            batch,
            no_control,
        }),
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
